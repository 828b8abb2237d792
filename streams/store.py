"""Parley's event store: typed events on JetStream, one message per command.

A command's events travel together in one message, its *commit*, on the subject
``parley.ev.<tenant>.<type>.<aggregate id>.<command id>``. That single message gives every
guarantee the store makes, enforced by the server:

* **All or nothing.** One message is written whole or not at all; no reader ever sees part of
  a command's events.
* **Optimistic concurrency.** The commit is published with the sequence of the aggregate's last
  commit as ``Nats-Expected-Last-Subject-Sequence``, checked over the aggregate's subjects
  (``Nats-Expected-Last-Subject-Sequence-Subject: parley.ev.<tenant>.<type>.<id>.*``). A writer
  with a stale version gets ``ConcurrencyError`` and writes nothing.
* **Idempotent commands, with no window.** The stream keeps one message per subject and refuses
  a second (``discard_new_per_subject``), and the subject names the command id: a command id
  takes effect at most once per aggregate, for as long as the event is kept. A retried command
  finds its commit and returns the first outcome.

Concurrent appends from one process are group-committed (``JetStreamLog.append``): many
commits, one atomic batch, one fsync.
"""

from __future__ import annotations

import functools
import operator
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS

from domain.errors import ValidationError
from domain.messages import Event, blank_check, blank_personal
from streams.bulk import BulkFeed, Delivered
from streams.codec import ENVELOPE_KEY, EventMapper, Pending, blank_envelope_finder, envelope_key_at, resolve_event
from streams.errors import ConcurrencyError, EventDecodeError
from streams.feed import Feed
from streams.jetstream import (
    EXPECTED_LAST_SUBJECT_SEQ,
    EXPECTED_LAST_SUBJECT_SEQ_SUBJECT,
    JetStreamLog,
    OutMessage,
    RawMessage,
    SubjectTaken,
    WrongLastSequence,
    subject_matcher,
)
from streams.subjects import EVENTS_PREFIX, StreamId, command_token
from streams.watch import Expected, Following, Seen, Watch
from streams.work import WorkStream, ensure_work_stream

log = structlog.get_logger(__name__)

# The most a command's events may take, encoded (a commit is one NATS message; the server's default
# max_payload is 1 MiB). Requests are bounded well below it at the edge.
MAX_COMMIT_BYTES = 512 * 1024
# Messages for live listeners only (never stored): ``publish_live``.
LIVE_PREFIX = "parley.live"


# Commits hold strings, bytes and numbers only, so the garbage collector need not track them
# (``gc=False``): a replay decodes millions, and tracking cost a tenth of decoding one.


class EventMeta(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Who and what caused a commit; stored beside its events, never inside a domain event."""

    command_id: str | None = None
    command: str | None = None
    actor: str | None = None
    correlation_id: str | None = None
    # What the caller asked, for a command named by the caller's idempotency key: a digest of the
    # request, so a retry with another body is told so even when every cache has forgotten the key.
    request: str | None = None


class StoredItem(msgspec.Struct, frozen=True, array_like=True, gc=False):
    topic: str
    state: bytes


class Commit(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The body of a message: a command's events (MessagePack), from ``first_version`` on."""

    first_version: int
    meta: EventMeta
    events: list[StoredItem]


_ENCODE = msgspec.msgpack.Encoder()
_DECODE = msgspec.msgpack.Decoder(Commit)


def encode_commit(first_version: int, items: list[StoredItem], meta: EventMeta | None = None) -> bytes:
    return _ENCODE.encode(Commit(first_version, meta or EventMeta(), items))


def commit_items(data: bytes) -> list[StoredItem]:
    """A commit's stored events (topic and stored state, personal fields still sealed), not decoded."""
    return _DECODE.decode(data).events


def commit_version(data: bytes) -> int:
    """The aggregate's version after a commit (the version of its last event), from the message body."""
    commit = _DECODE.decode(data)
    return commit.first_version + len(commit.events) - 1


class RecordedEvent(msgspec.Struct, frozen=True):
    stream: StreamId
    version: int
    seq: int  # the stream sequence of the commit that holds it
    event: Event
    recorded_at: datetime
    meta: EventMeta


class AppendResult(msgspec.Struct, frozen=True):
    """Where a command's events landed. ``duplicate``: a retry, nothing was appended (``meta``: what
    the first one recorded)."""

    stream: str
    seq: int
    version: int
    count: int
    duplicate: bool = False
    meta: EventMeta | None = None


class EventStore:
    def __init__(self, log: JetStreamLog, mapper: EventMapper, *, position_cache_size: int = 100_000) -> None:
        self._log = log
        self.mapper = mapper
        self._positions: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._position_cache_size = position_cache_size

    # Writes -------------------------------------------------------------------------------

    async def append(
        self,
        stream: StreamId,
        events: Sequence[Event],
        *,
        expected_version: int,
        meta: EventMeta | None = None,
    ) -> AppendResult:
        meta = meta or EventMeta()
        if not events:
            return AppendResult(stream.key, 0, expected_version, 0)
        expected_seq = await self._expected_seq(stream, expected_version)
        items = []
        for i, event in enumerate(events, 1):
            stored = self.mapper.to_stored_event(Pending(stream.key, expected_version + i, event))
            items.append(StoredItem(stored.topic, stored.state))
        token = command_token(meta.command_id) if meta.command_id else "x-" + uuid.uuid4().hex
        headers = {EXPECTED_LAST_SUBJECT_SEQ: str(expected_seq), EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: stream.subjects}
        data = encode_commit(expected_version + 1, items, meta)
        if len(data) > MAX_COMMIT_BYTES:
            raise ValidationError(
                f"a command's events may take {MAX_COMMIT_BYTES // 1024} KiB at most; these take {len(data) // 1024}",
                fields={"body": f"too large: at most {MAX_COMMIT_BYTES // 1024} KiB of events a command"},
            )
        message = OutMessage(f"{stream.subject}.{token}", headers, data)
        try:
            published = await self._log.append([message], key=stream.subjects)
        except (WrongLastSequence, SubjectTaken):
            self._positions.pop(stream.subjects, None)
            if meta.command_id and (known := await self.outcome(stream, meta.command_id)) is not None:
                return known
            raise ConcurrencyError(stream.key, expected_version) from None
        version = expected_version + len(events)
        self._note_position(stream.subjects, version, published.last_seq)
        return AppendResult(stream.key, published.last_seq, version, len(events))

    async def _expected_seq(self, stream: StreamId, expected_version: int) -> int:
        if expected_version == 0:
            return 0
        cached = self._positions.get(stream.subjects)
        if cached is not None and cached[0] == expected_version:
            return cached[1]
        last = await self._log.last_on_subject(stream.subjects)
        actual = 0
        if last is not None:
            commit = _DECODE.decode(last.data)
            actual = commit.first_version + len(commit.events) - 1
        if last is None or actual != expected_version:
            raise ConcurrencyError(stream.key, expected_version, actual)
        self._note_position(stream.subjects, actual, last.seq)
        return last.seq

    def _note_position(self, key: str, version: int, seq: int) -> None:
        self._positions[key] = (version, seq)
        self._positions.move_to_end(key)
        if len(self._positions) > self._position_cache_size:
            self._positions.popitem(last=False)

    def note_position(self, stream: StreamId, version: int, seq: int) -> None:
        """Tell the store where an aggregate stands (a repository that loaded it from a snapshot)."""
        self._note_position(stream.subjects, version, seq)

    async def outcome(self, stream: StreamId, command_id: str) -> AppendResult | None:
        """What a command id did to an aggregate, if it took effect."""
        raw = await self._log.last_on_subject(f"{stream.subject}.{command_token(command_id)}")
        if raw is None:
            return None
        commit = _DECODE.decode(raw.data)
        version = commit.first_version + len(commit.events) - 1
        return AppendResult(stream.key, raw.seq, version, len(commit.events), duplicate=True, meta=commit.meta)

    # Reads --------------------------------------------------------------------------------

    async def read(self, stream: StreamId, *, after_seq: int = 0) -> list[RecordedEvent]:
        """The aggregate's events, oldest first, from the commits after a stream sequence."""
        raws = await self._log.read_subject(stream.subjects, after_seq=after_seq)
        events = [event for raw in raws for event in self.decode(raw, stream)]
        if events:
            self._note_position(stream.subjects, events[-1].version, events[-1].seq)
        return events

    async def read_all(
        self, *, after_seq: int = 0, limit: int = 1000, subject: str | None = None, filter_locally: bool = False
    ) -> list[RawMessage]:
        """Commits after a stream sequence, in stream order (``JetStreamLog.read``)."""
        return await self._log.read(after_seq=after_seq, limit=limit, subject=subject, filter_locally=filter_locally)

    @property
    def name(self) -> str:
        """The JetStream stream that holds the events."""
        return self._log.stream

    async def last_seq(self) -> int:
        """The stream's last position (0 when empty)."""
        return await self._log.last_seq()

    async def last_on(self, subjects: str) -> RawMessage | None:
        """The last commit on a subject filter, raw (None: none)."""
        return await self._log.last_on_subject(subjects)

    # Following ----------------------------------------------------------------------------

    def feed(self, durable: str, **options: Any) -> Feed:
        """A durable pull consumer over this store's stream (``Feed``; ``subject`` filters it)."""
        return Feed(self._log, durable, **options)

    async def replay(self, *, subject: str | None = None, page: int = 10_000) -> AsyncIterator[list[Delivered]]:
        """Every commit on ``subject`` (all: None) up to the stream's last one when called, a page at
        a time, in stream order: the read of a rebuild.

        Read in bulk (``streams.bulk``) through a consumer of its own, made for this read and
        deleted after it (or dropped by the server a minute after its reader is gone), without
        acknowledgements: a third of the CPU a commit that direct reads take. The next page is on
        its way while the caller works on one. Other subjects are skipped here, not by the server.
        """
        last = await self.last_seq()
        if last == 0:
            return
        feed = BulkFeed(
            self._log, f"replay-{uuid.uuid4().hex[:16]}", batch=page, idle_wait=0.05, acks=False, inactive_threshold=60
        )
        matches = subject_matcher(subject) if subject else None
        try:
            while got := (await feed.fetch()).messages:
                end = got[-1].seq >= last
                if end or matches:
                    got = [m for m in got if m.seq <= last and (matches is None or matches(m.subject))]
                if got:
                    yield got
                if end:
                    return
        finally:
            await feed.close()
            await feed.delete()

    def bulk_feed(self, durable: str, **options: Any) -> BulkFeed:
        """A fast reader of the whole stream for a replay (``streams.bulk.BulkFeed``)."""
        return BulkFeed(self._log, durable, **options)

    async def work_stream(self, *, partitions: int) -> WorkStream:
        """The agent work stream sourced from this store's stream (``streams.work``)."""
        return await ensure_work_stream(self._log, partitions=partitions)

    def work_feed(self, work: WorkStream, durable: str, partition: int, **options: Any) -> Feed:
        return work.feed(self._log, durable, partition, **options)

    async def watch(self, subjects: str) -> Watch:
        """Commits published on ``subjects`` from now on (close it when done)."""
        return await Watch(self, subjects).open()

    async def expect(self, stream: StreamId, command_id: str) -> Expected:
        """Wait for the commit ``command_id`` will make: open it before sending what causes it."""
        return await Expected(self, stream, command_id).open()

    async def follow(self, aggregate_type: str, seen: Seen) -> Following:
        """``seen(stream, version)`` for each commit of ``aggregate_type`` from now on."""
        return await Following(self, aggregate_type, seen).open()

    async def publish_live(self, subject: str, data: bytes) -> None:
        """A message for whoever listens now (``parley.live.>``: a call's interim transcript), never
        kept: it is not an event and stays out of the event stream."""
        if not subject.startswith(LIVE_PREFIX + "."):
            raise ValidationError(f"live subjects start with {LIVE_PREFIX}.", fields={"subject": subject})
        await self._log.nc.publish(subject, data)

    async def listen_live(
        self, subject: str, received: Callable[[bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """``received(data)`` for each live message on ``subject`` from now on; returns the stop."""

        async def arrived(msg: Any) -> None:
            await received(msg.data)

        subscription = await self._log.nc.subscribe(subject, cb=arrived)
        return subscription.unsubscribe

    async def ping(self) -> None:
        """A round trip to the server: raises if it cannot be reached."""
        await self._log.nc.flush(timeout=2)

    @property
    def nats(self) -> NATS:
        """The client (``streams.watch`` subscribes with it; nothing outside ``streams/`` uses it)."""
        return self._log.nc

    def decode(self, raw: RawMessage | Delivered, stream: StreamId | None = None) -> list[RecordedEvent]:
        """A commit's events; ``EventDecodeError`` names the stream sequence of a bad one."""
        try:
            stream = stream or _stream_of(raw.subject)
            commit = _DECODE.decode(raw.data)
            recorded_at, meta, seq, tenant = _recorded_at(raw.time), commit.meta, raw.seq, stream.tenant
            decode_event = self.mapper.decode_event
            out = []
            version = commit.first_version
            for item in commit.events:
                event = decode_event(tenant, item.topic, item.state)
                out.append(RecordedEvent(stream, version, seq, event, recorded_at, meta))
                version += 1
        except Exception as e:
            raise EventDecodeError(raw.seq, raw.subject, f"{type(e).__name__}: {e}") from e
        return out

    def redacted(self, *, fast: bool = True) -> Redacted:
        """A decoder of commits into events without personal data (``Redacted``)."""
        return Redacted(self, fast=fast)


def _recorded_at(time: str | int) -> datetime:
    """When the stream stored a commit: an ISO time (``RawMessage``) or epoch milliseconds (``Delivered``)."""
    if isinstance(time, int):
        return datetime.fromtimestamp(time / 1000, UTC)
    return datetime.fromisoformat(time) if time else datetime.min


def _stream_of(subject: str) -> StreamId:
    """The aggregate a commit's subject names. An aggregate's commits tend to come close together in a
    read of the stream, so the last aggregates are remembered rather than parsed and checked again."""
    found = _AGGREGATES.get(prefix := subject[: subject.rfind(".")])
    if found is not None:
        return found
    if subject.count(".") != _COMMIT_DOTS:
        return StreamId.from_subject(subject)
    if len(_AGGREGATES) >= _AGGREGATES_KEPT:
        _AGGREGATES.clear()
    found = _AGGREGATES[prefix] = StreamId.from_subject(prefix)
    return found


_COMMIT_DOTS = EVENTS_PREFIX.count(".") + 4  # <prefix>.<tenant>.<type>.<id>.<command>
_AGGREGATES: dict[str, StreamId] = {}  # by a commit subject less its command token; cleared when full
_AGGREGATES_KEPT = 100_000


# Reading without personal data -----------------------------------------------------------------

R_co = TypeVar("R_co", covariant=True)


class RowOf(Protocol[R_co]):
    """Makes a reader's row of one event (``Redacted.decode``), from its place, its cause and its payload."""

    def __call__(
        self,
        tenant: str,
        aggregate_type: str,
        aggregate_id: str,
        version: int,
        seq: int,
        event_type: str,
        time: int,  # when it happened (its ``time_field``, else ``recorded_at``), epoch milliseconds
        recorded_at: int,  # when the stream stored its commit, epoch milliseconds
        command: str,
        command_id: str,
        actor: str,
        correlation_id: str,
        payload: bytes,  # the event as JSON, personal fields null
        /,
    ) -> R_co: ...


R = TypeVar("R")


class _EventClass:
    """What reading one event class without its personal data needs, worked out once."""

    def __init__(self, cls: type[Event]) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(cls)
        self.blank: dict[str, None] = dict.fromkeys(cls.personal_fields)
        # Whether an event's personal fields are all blank (sealed away, erased or never given).
        self.is_blank: Callable[[Event], bool] | None = _quick_blank_check(cls) if cls.personal_fields else None
        # Where a blank event's envelope is: None for the last envelope key's place (``rfind``, inline).
        finder = blank_envelope_finder(cls)
        self.envelope_at: Callable[[bytes], int] | None = None if finder is envelope_key_at else finder
        self.time_field = cls.time_field


def _quick_blank_check(cls: type[Event]) -> Callable[[Event], bool]:
    """``blank_check(cls)``, answered in C for the common event: fields that blank to None all None,
    and each list with personal items (``"items[].field"``) empty; else asked of ``blank_check``."""
    check = blank_check(cls)
    paths = cls.personal_fields
    fields = [path for path in paths if "[]." not in path]
    lists = list(dict.fromkeys(path.partition("[].")[0] for path in paths if "[]." in path))
    if not fields or not lists or not all(_blanks_to_none(cls, name) for name in fields):
        return check
    values, outers = operator.attrgetter(*fields), operator.attrgetter(*lists)
    none = None if len(fields) == 1 else (None,) * len(fields)
    if len(lists) == 1:
        return lambda event: (values(event) == none and not outers(event)) or check(event)
    return lambda event: (values(event) == none and not any(outers(event))) or check(event)


def _blanks_to_none(cls: type[Event], name: str) -> bool:
    """Whether a field reads as None once blank: its default is None, or it has none
    (``domain.messages.blank_personal``)."""
    for info in msgspec.structs.fields(cls):
        if info.name == name:
            return info.default is None or (
                info.default is msgspec.NODEFAULT and info.default_factory is msgspec.NODEFAULT
            )
    return False


@functools.lru_cache(maxsize=1024)
def _event_class(topic_or_class: str | type[Event]) -> _EventClass:
    cls = resolve_event(topic_or_class) if isinstance(topic_or_class, str) else topic_or_class
    return _EventClass(cls)


def epoch_ms(value: datetime) -> int:
    """Epoch milliseconds (a naive time is UTC)."""
    return round((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1000)


_STREAMS = 100_000  # aggregates whose subject tokens ``Redacted`` keeps
_ID_TOKEN = EVENTS_PREFIX.count(".") + 1  # parley.ev.<tenant>.<type>.<id>.<command>
_PAYLOAD = msgspec.json.Encoder()


class Redacted:
    """Commits to their events with personal fields blank, and each event's row for a reader.

    For readers that must hold no personal data (analytics). ``decode`` gives each event of a commit
    with the row ``row`` makes of it (``RowOf``): its place, its cause, when it happened, and its
    payload as JSON without personal data. Two paths give the same rows:

    * **through the mapper** (``EventStore.decode``): decryption of sealed fields and all, then the
      personal fields blanked again and the event encoded. Always right; used when the mapper has
      a cipher, a compressor or another transcoder.
    * **the fast one**, for a mapper that stores plain msgspec JSON: each event decoded straight
      into its class. A sealed event's stored JSON holds its personal fields as null beside the
      sealed envelope, which the typed decoder ignores, so nothing is decrypted, and the payload is
      the stored JSON itself, less the envelope (``codec.envelope_at``); only an event whose
      personal fields were stored in clear (older ones) is blanked and encoded again. About five
      times quicker.

    A commit that cannot be decoded raises ``EventDecodeError`` naming its sequence. ``decode_all``
    reads many commits in one call (a replay's hot path), sorting the events by aggregate type and
    giving back the commits it could not decode.
    """

    def __init__(self, store: EventStore, *, fast: bool = True) -> None:
        self._store = store
        self.fast = fast and store.mapper.stores_plain_json
        # (tenant, aggregate type, aggregate id) by subject less its command token: an aggregate's
        # commits share it, and a lookup costs half a split. Cleared when full.
        self._streams: dict[str, tuple[str, ...]] = {}
        self._classes: dict[str, _EventClass] = {}  # by topic (``_event_class``'s, without its call)

    def decode(self, seq: int, subject: str, data: bytes, recorded_at: int, row: RowOf[R]) -> list[tuple[R, Event]]:
        """A commit's events, each with its row. ``recorded_at``: when the stream stored it, epoch ms."""
        out: list[tuple[R, Event]] = []
        failed = self.decode_all((Delivered(seq, subject, data, recorded_at),), row, {}, out)[1]
        if failed:
            raise failed[0]
        return out

    def decode_all(
        self,
        commits: Iterable[Delivered],
        row: RowOf[R],
        groups: Mapping[str, list[tuple[R, Event]]],
        rest: list[tuple[R, Event]] | None = None,
    ) -> tuple[list[R], list[EventDecodeError]]:
        """Many commits' events (``decode`` of each, in one call): every event's row, in stream order,
        and the commits that could not be decoded, of which nothing is given. Each event goes with its
        row to the list of ``groups`` for its aggregate type, else to ``rest`` (if given)."""
        if not self.fast:
            return self._decode_all_with_mapper(commits, row, groups, rest)
        rows: list[R] = []
        failed: list[EventDecodeError] = []
        streams, classes = self._streams, self._classes
        decode_commit = _DECODE.decode
        for message in commits:
            seq, subject = message.seq, message.subject
            group = None
            made_here = 0
            try:
                stream = streams.get(prefix := subject[: subject.rfind(".")])
                if stream is None:
                    if len(streams) >= _STREAMS:
                        streams.clear()
                    stream = streams[prefix] = tuple(prefix.split(".")[_ID_TOKEN:])
                tenant, aggregate_type, aggregate_id = stream
                group = groups.get(aggregate_type, rest)
                commit = decode_commit(message.data)
                meta = commit.meta
                command, command_id = meta.command or "", meta.command_id or ""
                actor, correlation_id = meta.actor or "", meta.correlation_id or ""
                recorded_at = message.time
                version = commit.first_version
                for item in commit.events:
                    info = classes.get(item.topic)
                    if info is None:
                        info = classes[item.topic] = _event_class(item.topic)
                    state = item.state
                    event = info.decoder.decode(state)
                    if info.is_blank is None:
                        payload = state
                    elif info.is_blank(event):  # sealed (or none given): the stored JSON, less the envelope
                        cut = state.rfind(ENVELOPE_KEY) if (find := info.envelope_at) is None else find(state)
                        payload = state[:cut] + b"}" if cut > 0 else state
                    else:  # stored in clear (older, or before the field was personal): blanked and encoded again
                        event = blank_personal(event)
                        payload = _PAYLOAD.encode(event)
                    if (tf := info.time_field) is None:
                        at = recorded_at
                    else:  # epoch_ms(), inline
                        when = getattr(event, tf)
                        at = round((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
                    made = row(
                        tenant,
                        aggregate_type,
                        aggregate_id,
                        version,
                        seq,
                        info.name,
                        at,
                        recorded_at,
                        command,
                        command_id,
                        actor,
                        correlation_id,
                        payload,
                    )
                    rows.append(made)
                    made_here += 1
                    if group is not None:
                        group.append((made, event))
                    version += 1
            except Exception as e:  # nothing of the commit is given
                if made_here:
                    del rows[-made_here:]
                    if group is not None:
                        del group[-made_here:]
                failed.append(EventDecodeError(seq, subject, f"{type(e).__name__}: {e}"))
        return rows, failed

    def _decode_all_with_mapper(
        self,
        commits: Iterable[Delivered],
        row: RowOf[R],
        groups: Mapping[str, list[tuple[R, Event]]],
        rest: list[tuple[R, Event]] | None,
    ) -> tuple[list[R], list[EventDecodeError]]:
        rows: list[R] = []
        failed: list[EventDecodeError] = []
        for m in commits:
            try:
                decoded = self._decode_with_mapper(m.seq, m.subject, m.data, m.time, row)
            except EventDecodeError as e:
                failed.append(e)
                continue
            if decoded:
                group = groups.get(_stream_of(m.subject).aggregate_type, rest)
                for made, event in decoded:
                    rows.append(made)
                    if group is not None:
                        group.append((made, event))
        return rows, failed

    def _decode_with_mapper(
        self, seq: int, subject: str, data: bytes, recorded_at: int, row: RowOf[R]
    ) -> list[tuple[R, Event]]:
        out = []
        for recorded in self._store.decode(Delivered(seq, subject, data, recorded_at)):  # EventDecodeError
            info = _event_class(type(recorded.event))
            event = blank_personal(recorded.event) if info.blank else recorded.event
            stream, meta = recorded.stream, recorded.meta
            at = event.occurred_at()
            made = row(
                stream.tenant,
                stream.aggregate_type,
                stream.aggregate_id,
                recorded.version,
                seq,
                info.name,
                recorded_at if at is None else epoch_ms(at),
                recorded_at,
                meta.command or "",
                meta.command_id or "",
                meta.actor or "",
                meta.correlation_id or "",
                _PAYLOAD.encode(event),
            )
            out.append((made, event))
        return out
