"""Tamper-evident audit export: a tenant's events for a period as a hash-chained JSON Lines file.

``python -m streams.audit export --tenant T [--from WHEN] [--to WHEN] [--output FILE]`` writes the
file; ``python -m streams.audit verify FILE [--expect-head HASH] [--live]`` checks it and exits 0
with a summary when it is intact, 1 naming the first line that was edited, dropped, inserted or
reordered (or where the file was cut short).

Format ``parley-audit/1``
-------------------------
UTF-8, one JSON object per line, each written in the *canonical encoding*: no whitespace, object
keys sorted (recursively), strings as UTF-8, numbers as the shortest text that reads back to the
same value (``msgspec.json.encode(obj, order="sorted")``). Every line carries ``hash``: the
lowercase hex SHA-256 of the canonical encoding of the line's object *without* its ``hash`` key.

1. Line 1, the header: ``{"kind": "header", "format": "parley-audit/1", "tenant", "stream",
   "from", "to" (the period asked, RFC 3339 or null), "first_seq", "last_seq" (the stream
   sequences the period spans: the commits read), "personal" ("clear" or "redacted"),
   "exported_at", "hash"}``.
2. Then one line per event, in stream order (a commit's events in version order):
   ``{"kind": "event", "n" (1, 2, 3 ...), "seq" (the commit's stream sequence), "recorded_at"
   (the commit's JetStream timestamp, exactly as the server wrote it, nanoseconds), "aggregate_type",
   "aggregate_id", "version", "type" (the event's class), "event" (its fields), "command",
   "command_id", "actor", "correlation_id" (from the commit's ``EventMeta``), "commit_sha256" (SHA-256
   of the commit's stored bytes, as in the stream: personal data still sealed), "prev" (the
   ``hash`` of the line before: the header's for ``n`` 1), "hash"}``; an event with personal fields
   also carries ``"personal_fields": [...]`` and ``"erased": true`` when they read as null because
   the data subject's key was destroyed.
3. Last line, the trailer: ``{"kind": "trailer", "count" (events), "head" (the ``hash`` of the
   last event line, the header's when there is none), "hash"}``. ``head`` is the export's head
   hash: ``export`` prints it; keep it apart from the file (a ticket, a log) and ``--expect-head``
   proves the file is the one exported. Without such an anchor, someone who rewrites the file
   from the edit onwards can rebuild a consistent chain: the chain shows a careless or partial
   edit, the anchor or ``--live`` (which compares every line with the stream) a thorough one.

Personal data
-------------
Personal fields appear as the store reads them: in clear when the data subject's key exists, null
(with ``"erased": true``) once it has been destroyed. The file holds no key. Being in clear, an
export is personal data itself: keep it like the database, and re-export after an erasure rather
than keep old files. ``--redact-personal`` writes every personal field as null instead (header
``"personal": "redacted"``), for a file to hand out. ``commit_sha256`` covers the sealed bytes, so
a live check matches the stream before and after an erasure.

Verification
------------
``verify`` recomputes each line's hash and checks that every ``prev`` is the hash of the line
before and that ``n`` counts up from 1, and names the first problem: ``edited`` (a line whose
content no longer hashes to its ``hash``, or, re-hashed, no longer matches what the next line was
chained to), ``dropped`` (an entry, or the header, missing: the next one's ``n`` skips), ``inserted``
(a line the chain does not account for, or a copy of another), ``reordered`` (an entry found later
than its place), ``truncated`` (the file ends before its trailer), ``head_mismatch`` (intact, but
not the head expected). ``verify_live`` then re-reads the header's span of the stream and compares
each line with the event the stream holds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Literal

import msgspec

from domain.errors import ValidationError
from domain.messages import blank_personal
from streams.codec import PII_KEY
from streams.jetstream import RawMessage
from streams.keys import KeyStore
from streams.store import Commit, EventStore, RecordedEvent
from streams.subjects import EVENTS_PREFIX, StreamId

FORMAT = "parley-audit/1"
PAGE = 1000

ProblemKind = Literal["edited", "dropped", "inserted", "reordered", "truncated", "head_mismatch"]

_ENCODER = msgspec.json.Encoder(order="sorted")
_DECODER = msgspec.json.Decoder()


def canonical(obj: object) -> bytes:
    """The canonical JSON encoding the hashes are taken over (see the module docstring)."""
    return _ENCODER.encode(obj)


def entry_hash(obj: dict[str, Any]) -> str:
    """The hash of an entry: SHA-256 of its canonical encoding without its own ``hash``."""
    body = {k: v for k, v in obj.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def _sealed(obj: dict[str, Any]) -> bytes:
    obj["hash"] = hashlib.sha256(canonical(obj)).hexdigest()
    return canonical(obj) + b"\n"


# Export ---------------------------------------------------------------------------------------


class ExportReport(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    tenant: str
    entries: int  # event lines
    commits: int
    first_seq: int
    last_seq: int
    head: str
    seconds: float

    @property
    def rate(self) -> float:
        """Entries exported per second."""
        return self.entries / self.seconds if self.seconds > 0 else 0.0


async def export(
    store: EventStore,
    tenant: str,
    path: Path | str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    redact_personal: bool = False,
    filter_locally: bool = True,
    page: int = PAGE,
    progress: Callable[[int, int, int], None] | None = None,
) -> ExportReport:
    """Write ``tenant``'s events recorded in ``[start, end)`` (the whole stream when unbounded).

    The span of stream sequences is fixed first (events appended during the export are not in it).
    ``filter_locally``: read every commit of the span and keep the tenant's here (quick when the
    tenant owns much of the stream); otherwise the server filters by subject. ``progress(seq,
    first_seq, last_seq)`` is told the stream sequence reached after each page.
    """
    began = time.perf_counter()
    StreamId(tenant, "audit", "x")  # the tenant's name must be a subject token: no '.', '*' or '>'
    path = Path(path)
    prefix = f"{EVENTS_PREFIX}.{tenant}."
    last = await store.last_seq()
    first_seq = await _first_seq_at(store, start, last) if start is not None else 1
    last_seq = (await _first_seq_at(store, end, last)) - 1 if end is not None else last
    header: dict[str, Any] = {
        "kind": "header",
        "format": FORMAT,
        "tenant": tenant,
        "stream": store.name,
        "from": _iso(start),
        "to": _iso(end),
        "first_seq": first_seq,
        "last_seq": last_seq,
        "personal": "redacted" if redact_personal else "clear",
        "exported_at": _iso(datetime.now(UTC)),
    }
    line = _sealed(header)
    prev: str = header["hash"]
    n = commits = 0
    keys = store.mapper.keys
    out = await asyncio.to_thread(_create, path)
    try:
        out.write(line)
        if progress is not None:
            progress(first_seq - 1, first_seq, last_seq)
        async for raws in _pages(store, prefix, first_seq, last_seq, filter_locally=filter_locally, page=page):
            lines = []
            for raw in raws:
                commits += 1
                digest = hashlib.sha256(raw.data).hexdigest()
                for recorded in store.decode(raw):
                    n += 1
                    entry = _entry(recorded, raw, digest, n, redact_personal, keys)
                    entry["prev"] = prev
                    lines.append(_sealed(entry))
                    prev = entry["hash"]
            await asyncio.to_thread(out.writelines, lines)
            if progress is not None and raws:
                progress(raws[-1].seq, first_seq, last_seq)
        out.write(_sealed({"kind": "trailer", "count": n, "head": prev}))
    finally:
        await asyncio.to_thread(out.close)
    return ExportReport(
        path=str(path),
        tenant=tenant,
        entries=n,
        commits=commits,
        first_seq=first_seq,
        last_seq=last_seq,
        head=prev,
        seconds=time.perf_counter() - began,
    )


def _create(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


def _entry(
    recorded: RecordedEvent, raw: RawMessage, digest: str, n: int, redact: bool, keys: KeyStore | None
) -> dict[str, Any]:
    event = recorded.event
    meta = recorded.meta
    entry: dict[str, Any] = {
        "kind": "event",
        "n": n,
        "seq": raw.seq,
        "recorded_at": raw.time,
        "aggregate_type": recorded.stream.aggregate_type,
        "aggregate_id": recorded.stream.aggregate_id,
        "version": recorded.version,
        "type": type(event).__name__,
        "command": meta.command,
        "command_id": meta.command_id,
        "actor": meta.actor,
        "correlation_id": meta.correlation_id,
        "commit_sha256": digest,
    }
    personal = type(event).personal_fields
    if personal:
        entry["personal_fields"] = list(personal)
        if _erased(recorded, raw, keys):
            entry["erased"] = True
        if redact:
            event = blank_personal(event)
    entry["event"] = msgspec.to_builtins(event)
    return entry


class _Key(msgspec.Struct, frozen=True):
    s: str
    k: int


class _Sealed(msgspec.Struct, frozen=True):
    pii: _Key | None = msgspec.field(default=None, name=PII_KEY)


_SEALED = msgspec.json.Decoder(_Sealed)
_COMMIT = msgspec.msgpack.Decoder(Commit)


def _erased(recorded: RecordedEvent, raw: RawMessage, keys: KeyStore | None) -> bool:
    """Whether the event's personal fields were sealed under a key that has since been destroyed."""
    if keys is None:
        return False
    try:
        commit = _COMMIT.decode(raw.data)
        sealed = _SEALED.decode(commit.events[recorded.version - commit.first_version].state).pii
    except (msgspec.DecodeError, IndexError):  # a compressed or enciphered payload: cannot tell
        return False
    return sealed is not None and keys.get(recorded.stream.tenant, sealed.s, sealed.k) is None


async def _first_seq_at(store: EventStore, moment: datetime, last: int) -> int:
    """The first stream sequence recorded at or after ``moment`` (``last + 1`` if none), by bisection
    (about twenty direct gets for a million messages).

    It relies on JetStream stamping messages in sequence order; a clock stepped back on a new stream
    leader could only misplace the boundary by that step.
    """
    moment = _aware(moment)
    lo, hi = 1, last + 1
    while lo < hi:
        mid = (lo + hi) // 2
        found = await store.read_all(after_seq=mid - 1, limit=1)
        if not found or found[0].seq > last:
            hi = mid
            continue
        message = found[0]
        if datetime.fromisoformat(message.time) >= moment:
            hi = mid
        else:
            lo = message.seq + 1
    return lo


async def _pages(
    store: EventStore, prefix: str, first_seq: int, last_seq: int, *, filter_locally: bool, page: int
) -> AsyncIterator[list[RawMessage]]:
    """The tenant's commits in ``[first_seq, last_seq]``, a page at a time; the next page is read
    while the caller works on this one."""
    cursor = first_seq - 1

    async def fetch(after: int) -> list[RawMessage]:
        if after >= last_seq:
            return []
        if filter_locally:
            return await store.read_all(after_seq=after, limit=min(page, last_seq - after))
        return await store.read_all(after_seq=after, limit=page, subject=prefix + ">")

    pending = asyncio.ensure_future(fetch(cursor))
    try:
        while True:
            raws = [r for r in await pending if r.seq <= last_seq]
            if not raws:
                return
            cursor = raws[-1].seq
            pending = asyncio.ensure_future(fetch(cursor))
            keep = [r for r in raws if r.subject.startswith(prefix)] if filter_locally else raws
            if keep:
                yield keep
    finally:
        pending.cancel()


# Verify ---------------------------------------------------------------------------------------


class Problem(msgspec.Struct, frozen=True):
    kind: ProblemKind
    line: int  # 1-based
    message: str


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    lines: int
    entries: int  # event lines checked
    head: str | None  # the trailer's head hash, when the chain held up to it
    tenant: str | None
    seconds: float
    problem: Problem | None = None
    live: bool = False  # also compared with the stream

    @property
    def rate(self) -> float:
        """Entries verified per second."""
        return self.entries / self.seconds if self.seconds > 0 else 0.0

    def summary(self, path: str) -> str:
        if self.problem is not None:
            p = self.problem
            return f"{path}: line {p.line}: {p.kind}: {p.message}"
        where = " and matches the stream" if self.live else ""
        return (
            f"{path}: intact{where}: {self.entries} events of tenant {self.tenant}, head {self.head}; "
            f"verified in {self.seconds:.3f} s ({self.rate:,.0f} events/s)"
        )


class _Line(msgspec.Struct, gc=False):
    parsed: bool  # a JSON object
    kind: str | None = None
    ok: bool = False  # the line hashes to its own ``hash``
    hash: str | None = None
    n: int | None = None
    prev: str | None = None
    obj: dict[str, Any] | None = None  # the fields of a line that is not an event (header, trailer)


class _EventFields(msgspec.Struct, gc=False):
    kind: str | None = None
    n: int | None = None
    prev: str | None = None
    hash: str | None = None


_EVENT_FIELDS = msgspec.json.Decoder(_EventFields)


def _parse(raw: bytes) -> _Line:
    """A line's chain fields, and whether it hashes to its ``hash``.

    An event line written in the canonical encoding is checked without decoding its content: taking
    its ``"hash":"…"`` pair out of the bytes leaves the canonical encoding of the rest (the keys are
    sorted). Any other line is decoded and re-encoded.
    """
    try:
        fields = _EVENT_FIELDS.decode(raw)
    except msgspec.DecodeError:
        return _parse_any(raw)
    stated = fields.hash
    if fields.kind != "event" or stated is None:
        return _parse_any(raw)
    pair = b',"hash":"' + stated.encode() + b'"'
    at = raw.find(pair)
    if at < 0 or hashlib.sha256(raw[:at] + raw[at + len(pair) :]).hexdigest() != stated:
        return _parse_any(raw)
    return _Line(True, "event", True, stated, fields.n, fields.prev)


def _parse_any(raw: bytes) -> _Line:
    try:
        obj = _DECODER.decode(raw)
    except msgspec.DecodeError:
        return _Line(False)
    if not isinstance(obj, dict):
        return _Line(False)
    stated = obj.pop("hash", None)
    ok = isinstance(stated, str) and hashlib.sha256(canonical(obj)).hexdigest() == stated
    n, prev, kind = obj.get("n"), obj.get("prev"), obj.get("kind")
    return _Line(
        True,
        kind if isinstance(kind, str) else None,
        ok,
        stated if isinstance(stated, str) else None,
        n if isinstance(n, int) and not isinstance(n, bool) else None,
        prev if isinstance(prev, str) else None,
        None if kind == "event" else obj,
    )


def verify(path: Path | str, *, expect_head: str | None = None) -> VerifyReport:
    """Check an export's chain; the report names the first problem, if any.

    The file is read a line at a time and only each line's chain fields are kept (about a hundred
    bytes a line), so a file of millions of events verifies in little memory.
    """
    began = time.perf_counter()
    with Path(path).open("rb") as f:
        return _verify(f, began, expect_head)


def verify_bytes(data: bytes, *, expect_head: str | None = None) -> VerifyReport:
    """``verify`` for an export held in memory."""
    return _verify(io.BytesIO(data), time.perf_counter(), expect_head)  # lines split as a file's are


def _verify(raw_lines: Iterable[bytes], began: float, expect_head: str | None) -> VerifyReport:
    lines: list[_Line] = []
    cut = False  # the last line has no end: the file may have been cut mid-line
    for raw in raw_lines:
        cut = not raw.endswith(b"\n")
        lines.append(_parse(raw.rstrip(b"\n")))
    checker = _Checker(lines, cut=cut)
    problem, entries = checker.run()
    head = checker.head
    if problem is None and expect_head is not None and head != expect_head:
        problem = Problem("head_mismatch", len(lines), f"the head is {head}, not the {expect_head} expected")
    tenant = lines[0].obj.get("tenant") if lines and lines[0].obj else None
    return VerifyReport(
        ok=problem is None,
        lines=len(lines),
        entries=entries,
        head=head if problem is None else None,
        tenant=tenant if isinstance(tenant, str) else None,
        seconds=time.perf_counter() - began,
        problem=problem,
    )


_TRAILER_KEYS = {"kind", "count", "head"}


class _Checker:
    """Walks the chain; at the first line that breaks it, works out what was done to the file."""

    def __init__(self, lines: list[_Line], *, cut: bool) -> None:
        self.lines = lines
        self.cut = cut
        self.head: str | None = None
        self.header_hash = ""
        self.by_n: dict[int, list[int]] = {}
        self.by_hash: dict[str, list[int]] = {}
        for i, line in enumerate(lines):
            if line.ok and line.hash is not None:
                self.by_hash.setdefault(line.hash, []).append(i)
                if line.kind == "event" and line.n is not None:
                    self.by_n.setdefault(line.n, []).append(i)

    def run(self) -> tuple[Problem | None, int]:
        lines = self.lines
        if not lines:
            return Problem("truncated", 1, "the file is empty"), 0
        problem = self._header()
        if problem is not None:
            return problem, 0
        header_hash = lines[0].hash
        assert header_hash is not None
        self.header_hash = header_hash
        expected, prev = 1, header_hash
        for i in range(1, len(lines)):
            line = lines[i]
            if line.kind == "event" and line.ok and line.n == expected and line.prev == prev:
                expected += 1
                prev = line.hash or ""
                continue
            if line.kind == "trailer" and line.ok and line.obj is not None:
                count, head = line.obj.get("count"), line.obj.get("head")
                if count == expected - 1 and head == prev and line.obj.keys() == _TRAILER_KEYS:
                    if i + 1 < len(lines):
                        return Problem("inserted", i + 2, "a line after the trailer"), expected - 1
                    self.head = prev
                    return None, expected - 1
            if self.cut and i == len(lines) - 1 and not line.parsed:
                return Problem("truncated", i + 1, "the last line was cut short"), expected - 1
            return self._diagnose(i, expected, prev), expected - 1
        if self.cut and not lines[-1].parsed:
            return Problem("truncated", len(lines), "the last line was cut short"), expected - 1
        return Problem(
            "truncated", len(lines) + 1, f"the file ends after entry {expected - 1} without its trailer"
        ), expected - 1

    def _header(self) -> Problem | None:
        lines = self.lines
        first = lines[0]
        if first.kind == "header" and first.ok and first.obj is not None:
            if first.obj.get("format") != FORMAT:
                return Problem("edited", 1, f"the header's format is not {FORMAT}")
            return None
        if self._duplicate(0):
            return Problem("inserted", 1, f"a copy of line {self._duplicate(0)}")
        elsewhere = [i for i, line in enumerate(lines) if line.kind == "header" and line.ok]
        if elsewhere:
            self.header_hash = lines[elsewhere[0]].hash or ""
            if elsewhere[0] == 1 and not self._genuine(0):
                return Problem("inserted", 1, "a line before the header")
            return Problem("reordered", 1, f"the header is at line {elsewhere[0] + 1}")
        if first.kind == "event" and first.ok and first.n == 1:
            return Problem("dropped", 1, "the header is missing")
        if self.cut and len(lines) == 1 and not first.parsed:
            return Problem("truncated", 1, "the header was cut short")
        return Problem("edited", 1, "the header does not hash to its hash")

    def _duplicate(self, i: int) -> int | None:
        """The 1-based number of another line identical in content to line ``i``, if any."""
        line = self.lines[i]
        if not line.ok or line.hash is None:
            return None
        others = [j for j in self.by_hash.get(line.hash, []) if j != i]
        return others[0] + 1 if others else None

    def _chains(self, j: int, n: int, prev: str) -> bool:
        """Whether line ``j`` carries on the chain as entry ``n`` after ``prev`` (or ends it there)."""
        if j >= len(self.lines):
            return False
        line = self.lines[j]
        if line.kind == "trailer" and line.ok and line.obj is not None:
            return line.obj.get("count") == n - 1 and line.obj.get("head") == prev
        return line.kind == "event" and line.ok and line.n == n and line.prev == prev

    def _hash_of_entry(self, n: int) -> set[str]:
        if n == 0:
            return {self.header_hash}
        return {self.lines[j].hash or "" for j in self.by_n.get(n, [])}

    def _genuine(self, i: int) -> bool:
        """Whether line ``i`` is an intact line of this export, in its place or not: it hashes to its
        hash and is chained to an entry present in the file (a trailer: it seals one)."""
        line = self.lines[i]
        if not line.ok:
            return False
        if line.kind == "event" and line.n is not None:
            return line.prev in self._hash_of_entry(line.n - 1)
        if line.kind == "trailer" and line.obj is not None:
            count = line.obj.get("count")
            return isinstance(count, int) and line.obj.get("head") in self._hash_of_entry(count)
        return line.kind == "header"

    def _diagnose(self, i: int, expected: int, prev: str) -> Problem:
        line, number = self.lines[i], i + 1
        if (copy := self._duplicate(i)) is not None:
            return Problem("inserted", number, f"a copy of line {copy}")
        if not self._genuine(i) and self._chains(i + 1, expected, prev):
            return Problem("inserted", number, "a line the chain does not account for")
        if not line.parsed or line.kind not in ("event", "trailer"):
            return Problem("edited", number, "not an entry of this export")
        if line.kind == "trailer" or line.n != expected:
            later = [j for j in self.by_n.get(expected, []) if j > i]
            if later:
                return Problem("reordered", number, f"entry {expected} is at line {later[0] + 1}")
        if line.kind == "trailer":
            if not line.ok or line.obj is None or line.obj.keys() != _TRAILER_KEYS:
                return Problem("edited", number, "the trailer does not hash to its hash, or has other fields")
            count = line.obj.get("count")
            if isinstance(count, int) and count > expected - 1:
                missing = _span(expected, count)
                return Problem("dropped", number, f"{missing} missing before the trailer")
            if isinstance(count, int) and count < expected - 1:
                return Problem("inserted", self.by_n[count + 1][0] + 1, f"the trailer seals {count} entries")
            return Problem("edited", i, f"line {i} does not hash to the head the trailer seals (re-hashed)")
        if not line.ok or line.n is None:
            return Problem("edited", number, "the line does not hash to its hash")
        if line.n == expected:  # intact, but chained to something else than the line before
            return Problem("edited", i, f"line {i} was changed and re-hashed: line {number} was chained to another")
        if line.n > expected:
            return Problem("dropped", number, f"{_span(expected, line.n - 1)} missing before this line")
        return Problem("inserted", number, f"a second entry {line.n}")


def _span(first: int, last: int) -> str:
    return f"entry {first}" if first == last else f"entries {first} to {last}"


# Verify against the stream --------------------------------------------------------------------


_CHAIN_KEYS = ("n", "prev", "hash")


async def verify_live(store: EventStore, path: Path | str, *, expect_head: str | None = None) -> VerifyReport:
    """``verify``, then compare every event line with the event the stream holds at its place.

    Personal fields are compared only where both the file and the stream still have them (an
    erasure since the export leaves them null in the stream); ``commit_sha256`` still covers them.
    """
    data = await asyncio.to_thread(Path(path).read_bytes)
    report = verify_bytes(data, expect_head=expect_head)
    if not report.ok:
        return report
    began = time.perf_counter()
    lines = data.splitlines()
    header = _DECODER.decode(lines[0])
    events = [_DECODER.decode(line) for line in lines[1:-1]]
    tenant = header["tenant"]
    live = _live_entries(store, tenant, header)
    index = 0
    async for entry in live:
        if index >= len(events):
            return _failed(report, began, Problem("dropped", index + 2, f"the stream has more: {_where(entry)}"))
        found = events[index]
        if _place(found) != _place(entry):
            later = any(_place(e) == _place(entry) for e in events[index + 1 :])
            kind: ProblemKind = "inserted" if later else "dropped"
            what = f"the stream has {_where(entry)} here" if kind == "dropped" else "not in the stream here"
            return _failed(report, began, Problem(kind, index + 2, what))
        if _content(found, entry) != _content(entry, found):
            return _failed(report, began, Problem("edited", index + 2, f"differs from the stream's {_where(entry)}"))
        index += 1
    if index < len(events):
        return _failed(report, began, Problem("inserted", index + 2, "the stream has no such event"))
    return msgspec.structs.replace(report, seconds=report.seconds + time.perf_counter() - began, live=True)


def _failed(report: VerifyReport, began: float, problem: Problem) -> VerifyReport:
    seconds = report.seconds + time.perf_counter() - began
    return msgspec.structs.replace(report, ok=False, head=None, problem=problem, seconds=seconds, live=True)


async def _live_entries(store: EventStore, tenant: str, header: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    redact = header.get("personal") == "redacted"
    keys = store.mapper.keys
    prefix = f"{EVENTS_PREFIX}.{tenant}."
    async for raws in _pages(store, prefix, header["first_seq"], header["last_seq"], filter_locally=True, page=PAGE):
        for raw in raws:
            digest = hashlib.sha256(raw.data).hexdigest()
            for recorded in store.decode(raw):
                # Through the same encoding as the file, so both sides compare as JSON values.
                yield _DECODER.decode(canonical(_entry(recorded, raw, digest, 0, redact, keys)))


def _place(entry: dict[str, Any]) -> tuple[Any, ...]:
    return entry.get("seq"), entry.get("aggregate_type"), entry.get("aggregate_id"), entry.get("version")


def _where(entry: dict[str, Any]) -> str:
    return f"{entry['aggregate_type']} {entry['aggregate_id']} version {entry['version']} (seq {entry['seq']})"


def _content(entry: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in entry.items() if k not in _CHAIN_KEYS and k != "erased"}
    if entry.get("erased") or other.get("erased"):  # erased on one side: its personal fields are not compared
        event = dict(out.get("event") or {})
        for name in entry.get("personal_fields") or ():
            event.pop(name.partition("[]")[0], None)  # a field of a list's items: the list
        out["event"] = event
    return out


# Command line ---------------------------------------------------------------------------------


_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str | None, *, now: datetime | None = None) -> datetime | None:
    """An RFC 3339 time or date (UTC when it names no zone), ``now``, or a span ago (``90m``, ``7d``)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    now = now or datetime.now(UTC)
    if text == "now":
        return now
    if match := _RELATIVE.match(text):
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        return _aware(datetime.fromisoformat(text))
    except ValueError:
        raise ValidationError(f"not a time: {text!r}", fields={"when": "RFC 3339, 'now' or a span like 7d"}) from None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return _aware(moment).astimezone(UTC).isoformat().replace("+00:00", "Z")


def default_output(data_dir: Path, tenant: str, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return data_dir / "audit" / f"{tenant}-{stamp}.jsonl"


async def _export_command(args: argparse.Namespace) -> int:
    from streams.factory import StoreSettings, open_store

    settings = StoreSettings.from_env(connect_retry_for=30.0)
    start, end = parse_when(args.from_), parse_when(args.to) or datetime.now(UTC)
    output = Path(args.output) if args.output else default_output(settings.data_dir, args.tenant)
    opened = await open_store(settings, name="parley-audit")
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f} %"))
    try:
        with Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task(f"exporting {args.tenant}'s events", total=None)

            def reached(seq: int, first: int, last: int) -> None:
                bar.update(task, total=max(last - first + 1, 1), completed=max(seq - first + 1, 0))

            report = await export(
                opened.store,
                args.tenant,
                output,
                start=start,
                end=end,
                redact_personal=args.redact_personal,
                filter_locally=not args.server_filter,
                progress=reached,
            )
    finally:
        await opened.close()
    print(
        f"exported {report.entries} events ({report.commits} commits) of tenant {report.tenant}, "
        f"stream sequences {report.first_seq} to {report.last_seq}, to {report.path} "
        f"in {report.seconds:.3f} s ({report.rate:,.0f} events/s)"
    )
    print(f"head sha256 {report.head}  (keep it apart from the file: audit-verify FILE --expect-head HEAD)")
    return 0


async def _verify_command(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if args.live:
        from streams.factory import StoreSettings, open_store

        opened = await open_store(StoreSettings.from_env(connect_retry_for=30.0), name="parley-audit")
        try:
            report = await verify_live(opened.store, path, expect_head=args.expect_head)
        finally:
            await opened.close()
    else:
        report = verify(path, expect_head=args.expect_head)
    print(report.summary(str(path)), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.audit", description="Tamper-evident audit export of a tenant's events."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ex = commands.add_parser("export", help="write a tenant's events for a period as hash-chained JSON Lines")
    ex.add_argument("--tenant", default="demo")
    ex.add_argument("--from", dest="from_", default="", help="RFC 3339 time or date, or a span ago (7d)")
    ex.add_argument("--to", default="", help="RFC 3339 time or date, or a span ago; default: now")
    ex.add_argument("--output", default="", help="default: $PARLEY_DATA/audit/<tenant>-<time>.jsonl")
    ex.add_argument("--redact-personal", action="store_true", help="write personal fields as null")
    ex.add_argument("--server-filter", action="store_true", help="let the server pick the tenant's commits")
    ve = commands.add_parser("verify", help="check an export's hash chain; exit 1 naming the first bad line")
    ve.add_argument("file")
    ve.add_argument("--expect-head", default=None, help="the head hash printed at export")
    ve.add_argument("--live", action="store_true", help="also compare every line with the stream (NATS_URL)")
    args = parser.parse_args(None if argv is None else list(argv))
    from infra.logs import configure_logging

    configure_logging(level="WARNING")
    if args.command == "verify" and not Path(args.file).is_file():
        print(f"{args.file}: no such file", file=sys.stderr)
        return 2
    run = _export_command if args.command == "export" else _verify_command
    try:
        return asyncio.run(run(args))
    except ValidationError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
