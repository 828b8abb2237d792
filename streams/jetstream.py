"""The JetStream adapter: the one async core behind every event store in Parley.

It speaks raw messages (subject, headers, bytes) and translates everything JetStream says:
an expected version becomes ``Nats-Expected-Last-Subject-Sequence``, a command id becomes
``Nats-Msg-Id``, a batch of events becomes one atomic batch publish (ADR-50, all or nothing),
and JetStream's error codes become Parley errors. No ``nats`` exception leaves this module.

Reads use batched direct gets (``$JS.API.DIRECT.GET``): loading one aggregate asks the server
for the messages of its own subject only, through the stream's subject index.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from streams.errors import ConcurrencyError, StoreError, UnavailableError

log = structlog.get_logger(__name__)

# JetStream API error codes we translate.
WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_SEQUENCE_IN_BATCH = 10164
DUPLICATE_MSG_ID_IN_BATCH = 10201
MAX_MESSAGES_PER_SUBJECT = 10077
STREAM_NAME_IN_USE = 10058

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQ = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"

# The server's limit on messages in one atomic batch.
MAX_BATCH = 1000


class RawMessage(msgspec.Struct, frozen=True):
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes
    time: str


class OutMessage(msgspec.Struct, frozen=True):
    subject: str
    headers: dict[str, str]
    data: bytes


class Published(msgspec.Struct, frozen=True):
    first_seq: int
    last_seq: int


class _Queued(msgspec.Struct):
    messages: list[OutMessage]
    key: str
    future: asyncio.Future[Published]


class WrongLastSequence(ConcurrencyError):
    """The subject moved on since the caller read it."""

    def __init__(self, subject: str) -> None:
        super().__init__(subject, expected=-1)
        self.message = f"subject {subject!r} has moved on: wrong last sequence"
        self.args = (self.message,)


class SubjectTaken(StoreError):
    """The subject already holds its one message (a stream that keeps one per subject)."""

    code = "subject_taken"

    def __init__(self, subject: str) -> None:
        super().__init__(f"subject {subject!r} already holds a message", subject=subject)
        self.subject = subject


class TooManyResults(StoreError):
    """A direct get matched more messages than the server returns in one answer."""


class DuplicateMessage(StoreError):
    """The message id was already published within the duplicate window."""

    code = "duplicate_message"

    def __init__(self, msg_id: str, seq: int | None) -> None:
        super().__init__(f"message id {msg_id!r} was already published", msg_id=msg_id, seq=seq)
        self.msg_id = msg_id
        self.seq = seq


_InlineHandler = Callable[[str, dict[str, str], bytes], None]


class _Client(NATS):
    """nats-py's client with a leaner header parser, and replies handed over as they are read.

    Every event read carries a dozen headers; nats-py's parser checks each header name
    character by character and dominated the cost of loading an aggregate. This one keeps its
    behaviour for well-formed headers (the server writes them) and skips that scan.

    A batched direct get answers with thousands of messages. nats-py would wrap each in a ``Msg``,
    queue it, and switch to the subscription's task to hand it over; a subscription made with
    ``subscribe_inline`` gets each one as soon as it is parsed instead (a sixth of the client's
    cost of reading the stream).
    """

    def __init__(self) -> None:
        super().__init__()
        self._inline: dict[int, _InlineHandler] = {}

    async def subscribe_inline(self, subject: str, handler: _InlineHandler) -> None:
        """``handler(subject, headers, data)`` for each message on ``subject``, called by the reader itself."""
        sub = await self.subscribe(subject)
        self._inline[sub._id] = handler

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self._inline.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        try:
            handler(subject.decode(), await self._process_headers(headers) or {}, data)
        except Exception as e:  # as from a callback: reported, and the reading goes on
            await self._error_cb(e)

    async def publish_frames(self, frames: list[bytes]) -> None:
        """Queue pre-encoded HPUB frames in one write (see ``hpub_frame``)."""
        await self._send_command(b"".join(frames))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                out[name.strip()] = value.strip()
        return out


def hpub_frame(subject: str, headers: Mapping[str, str], payload: bytes) -> bytes:
    """One NATS ``HPUB`` protocol frame (no reply subject).

    Header names are our constants and values our own numbers and tokens; a value with a line
    break would corrupt the frame, so it is refused.
    """
    hdr = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    if hdr.count("\n") != len(headers) + 2:
        raise StoreError("a header value contains a line break")
    head = hdr.encode()
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (subject.encode(), len(head), len(head) + len(payload), head, payload)


async def connect(url: str, *, name: str, retry_for: float | None = None, variable: str = "NATS_URL") -> NATS:
    """Connect to NATS, retrying with exponential backoff while the server is unreachable.

    ``retry_for`` bounds the wait in seconds (None waits forever). One clear line is logged per
    failed attempt, naming the variable that holds the URL.
    """
    loop = asyncio.get_running_loop()
    deadline = None if retry_for is None else loop.time() + retry_for
    delay = 0.1
    connected = False

    async def on_error(e: Exception) -> None:
        if connected:  # failures of the first connect are reported once per attempt below
            log.warning("nats connection error", url=url, error=str(e) or type(e).__name__)

    for attempt in itertools.count(1):
        try:
            nc = _Client()
            await nc.connect(
                servers=url.split(","),
                name=name,
                connect_timeout=2,
                allow_reconnect=False,  # our loop retries the first connect, with backoff
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,  # type: ignore[arg-type]  # seconds; floats work
                pending_size=64 * 1024 * 1024,
                error_cb=on_error,
            )
        except (TimeoutError, OSError, nats.errors.Error) as e:
            if deadline is not None and loop.time() + delay > deadline:
                raise UnavailableError(
                    f"NATS is unreachable at {url} (set by {variable}); gave up after {attempt} attempts: {e}",
                    variable=variable,
                    url=url,
                ) from None
            log.warning(
                "nats unreachable, retrying", url=url, variable=variable, attempt=attempt, retry_in=delay, error=str(e)
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        # Once connected, ride out server restarts and failovers forever.
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 1
        connected = True
        return nc
    raise AssertionError("unreachable")


class JetStreamLog:
    """One JetStream stream used as an append-only log with per-subject concurrency control."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str,
        subjects: Sequence[str],
        replicas: int = 1,
        duplicate_window: float = 120.0,
        request_timeout: float = 10.0,
        max_in_flight: int = 1,
        batch_from: int = 2,
        one_message_per_subject: bool = False,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=request_timeout)
        self.stream = stream
        self.subjects = list(subjects)
        self.replicas = replicas
        self.duplicate_window = duplicate_window
        self.request_timeout = request_timeout
        self._direct_subject = f"$JS.API.DIRECT.GET.{stream}"
        self._inbox: str | None = None
        self._waiting: dict[str, _DirectRequest] = {}
        self._tokens = itertools.count()
        self.max_in_flight = max_in_flight
        self.batch_from = batch_from
        self.one_message_per_subject = one_message_per_subject
        self._queue: list[_Queued] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    # Set-up -------------------------------------------------------------------------------

    def stream_config(self) -> StreamConfig:
        # An event log never drops old messages to make room: when a limit is reached, new
        # writes are refused. With ``one_message_per_subject`` a subject can be written once.
        return StreamConfig(
            name=self.stream,
            subjects=self.subjects,
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=self.one_message_per_subject,
            max_msgs_per_subject=1 if self.one_message_per_subject else -1,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
            allow_direct=True,
            allow_atomic=True,
            max_msgs=-1,
            max_bytes=-1,
            max_age=0,
        )

    async def ensure(self) -> None:
        """Create the stream, or bring its settings up to date. Safe to call at every start."""
        await ensure_stream(self.js, self.stream_config())

    async def delete(self) -> None:
        try:
            await self.js.delete_stream(self.stream)
        except nats.js.errors.NotFoundError:
            pass

    async def close(self) -> None:
        for pending in self._waiting.values():
            if not pending.done.done():
                pending.done.set_exception(UnavailableError("the event store is closing"))
        for task in list(self._in_flight):
            task.cancel()

    # Group commit -------------------------------------------------------------------------

    async def append(self, messages: Sequence[OutMessage], *, key: str) -> Published:
        """``publish``, with concurrent callers committed together (group commit).

        Up to ``max_in_flight`` writes are outstanding at once. Appends that arrive while those are
        in flight wait in a queue; the next free slot takes every queued append that guards a
        different ``key`` (an aggregate) and fits the batch limit. A group of ``batch_from`` or more
        goes out as one atomic batch (one round trip, one fsync, but the server stages a batch,
        which costs a couple of milliseconds); a smaller one goes out message by message. The
        messages carry their own expectation headers. If a batch is refused because one member's
        expectation failed, each member is retried on its own, so one conflict never fails
        another caller's append.
        """
        future: asyncio.Future[Published] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(list(messages), key, future))
        self._start_commits()
        return await future

    def _start_commits(self) -> None:
        while self._queue and len(self._in_flight) < self.max_in_flight:
            group = self._take_group()
            if len(group) >= self.batch_from:
                self._spawn(group)
            else:  # a few commits: each on its own is quicker than staging an atomic batch
                for item in group:
                    self._spawn([item])

    def _spawn(self, group: list[_Queued]) -> None:
        task = asyncio.create_task(self._commit(group))
        self._in_flight.add(task)
        task.add_done_callback(self._commit_done)

    def _commit_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._start_commits()

    def _take_group(self) -> list[_Queued]:
        group: list[_Queued] = []
        keys: set[str] = set()
        size = 0
        rest: list[_Queued] = []
        for item in self._queue:
            if group and (item.key in keys or size + len(item.messages) > MAX_BATCH):
                rest.append(item)
                continue
            group.append(item)
            keys.add(item.key)
            size += len(item.messages)
        self._queue = rest
        return group

    async def _commit(self, group: list[_Queued]) -> None:
        if len(group) == 1:
            item = group[0]
            try:
                _settle(item.future, await self.publish(item.messages))
            except Exception as e:
                _settle(item.future, e)
            return
        messages = [m for item in group for m in item.messages]
        try:
            published = await self.publish(messages)
        except (WrongLastSequence, DuplicateMessage, SubjectTaken):
            outcomes = await asyncio.gather(*(self.publish(item.messages) for item in group), return_exceptions=True)
            for item, outcome in zip(group, outcomes, strict=True):
                _settle(item.future, outcome)
            return
        except Exception as e:
            for item in group:
                _settle(item.future, e)
            return
        first = published.first_seq
        for item in group:
            _settle(item.future, Published(first, first + len(item.messages) - 1))
            first += len(item.messages)

    # Writes -------------------------------------------------------------------------------

    async def publish(
        self,
        messages: Sequence[OutMessage],
        *,
        expect: Mapping[str, int] | None = None,
    ) -> Published:
        """Append messages atomically.

        ``expect`` maps a subject to the stream sequence of its last message (0: no message yet);
        if any subject has moved on, nothing is written and ``WrongLastSequence`` is raised.
        A message carrying a ``Nats-Msg-Id`` seen within the duplicate window makes the server
        refuse the whole batch: ``DuplicateMessage``, nothing written.
        """
        if not messages:
            raise ValueError("nothing to publish")
        if len(messages) > MAX_BATCH:
            raise StoreError(f"a batch holds at most {MAX_BATCH} events, got {len(messages)}")
        expect = dict(expect or {})
        outgoing: list[tuple[str, dict[str, str], bytes]] = []
        for m in messages:
            headers = dict(m.headers)
            if m.subject in expect:
                headers[EXPECTED_LAST_SUBJECT_SEQ] = str(expect.pop(m.subject))
            outgoing.append((m.subject, headers, m.data))
        msg_id = next((h[MSG_ID] for _, h, _ in outgoing if MSG_ID in h), None)

        if len(outgoing) == 1:
            subject, headers, data = outgoing[0]
            reply = await self._request(subject, data, headers)
            seq = self._check_ack(reply, msg_id, subject)
            return Published(seq, seq)

        batch_id = uuid.uuid4().hex
        last = len(outgoing)
        for i, (_, headers, _) in enumerate(outgoing, 1):
            headers[BATCH_ID] = batch_id
            headers[BATCH_SEQ] = str(i)
        # All but the commit go out in one write, without replies; the commit asks for the ack.
        if isinstance(self.nc, _Client):
            await self.nc.publish_frames([hpub_frame(*m) for m in outgoing[:-1]])
        else:
            for subject, headers, data in outgoing[:-1]:
                await self.nc.publish(subject, data, headers=headers)
        subject, headers, data = outgoing[-1]
        headers[BATCH_COMMIT] = "1"
        reply = await self._request(subject, data, headers)
        seq = self._check_ack(reply, msg_id, outgoing[0][0])
        return Published(seq - last + 1, seq)

    async def _request(self, subject: str, data: bytes, headers: dict[str, str]) -> dict[str, Any]:
        try:
            msg = await self.nc.request(subject, data, headers=headers, timeout=self.request_timeout)
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            raise UnavailableError(
                f"JetStream did not acknowledge the write to {subject} (stream {self.stream}): {type(e).__name__}",
                stream=self.stream,
            ) from None
        except nats.errors.Error as e:
            raise UnavailableError(f"NATS error writing to {subject}: {e}", stream=self.stream) from None
        reply: dict[str, Any] = json.loads(msg.data)
        return reply

    def _check_ack(self, reply: dict[str, Any], msg_id: str | None, subject: str) -> int:
        error = reply.get("error")
        if error:
            code = error.get("err_code")
            if code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_BATCH):
                raise WrongLastSequence(subject)
            if code == DUPLICATE_MSG_ID_IN_BATCH:
                raise DuplicateMessage(msg_id or "", None)
            if code == MAX_MESSAGES_PER_SUBJECT:
                raise SubjectTaken(subject)
            raise StoreError(
                f"JetStream refused the write to {subject}: {error.get('description')} (code {code})",
                err_code=code,
            )
        if reply.get("duplicate"):
            raise DuplicateMessage(msg_id or "", int(reply["seq"]))
        return int(reply["seq"])

    # Reads --------------------------------------------------------------------------------

    async def last_on_subject(self, subject: str) -> RawMessage | None:
        msgs = await self._direct({"last_by_subj": subject}, single=True)
        return msgs[0] if msgs else None

    async def read_subject(self, subject: str, *, after_seq: int = 0, page: int = 1000) -> list[RawMessage]:
        """Every message of one subject (or subject filter) after a stream sequence, oldest first.

        From the start, a filter is answered with ``multi_last`` (the last message of every matching
        subject, found through the server's subject index); from a later sequence, with
        ``next_by_subj``, which the server answers by scanning forward from that sequence.
        """
        if after_seq == 0 and ("*" in subject or ">" in subject):
            try:
                found = await self._direct({"multi_last": [subject]})
            except TooManyResults:  # more subjects match than the server answers at once: scan
                pass
            else:
                return sorted(found, key=_by_seq)
        out: list[RawMessage] = []
        start = after_seq + 1
        while True:
            msgs = await self._direct({"seq": start, "next_by_subj": subject, "batch": page})
            out.extend(msgs)
            if len(msgs) < page:
                return out
            start = msgs[-1].seq + 1

    async def read(
        self, *, after_seq: int = 0, limit: int = 1000, subject: str | None = None, filter_locally: bool = False
    ) -> list[RawMessage]:
        """Up to ``limit`` messages after a stream sequence, in stream order; fewer only at the end of the stream.

        The server answers a batch asked with a subject filter by first counting every message the
        filter matches (the ``Nats-Num-Pending`` header), in time that grows with the number of
        subjects in the stream: about 40 ms a request at 100,000 subjects, whatever the batch size.
        A reader whose filter matches most of the stream (a rebuild) does better to ask for every
        message and keep the matching ones here (``filter_locally``); one that wants a small part of
        the stream had better let the server filter.
        """
        if subject is None or not filter_locally:
            request: dict[str, Any] = {"seq": after_seq + 1, "batch": limit}
            if subject is not None:
                request["next_by_subj"] = subject
            return await self._direct(request)
        matches = _subject_pattern(subject).fullmatch
        out: list[RawMessage] = []
        start = after_seq + 1
        while True:
            msgs = await self._direct({"seq": start, "batch": limit})
            out += [m for m in msgs if matches(m.subject)]
            if len(out) >= limit or len(msgs) < limit:
                return out[:limit]
            start = msgs[-1].seq + 1

    async def last_seq(self) -> int:
        info = await self._info()
        return int(info.state.last_seq)

    async def _info(self) -> Any:
        try:
            return await self.js.stream_info(self.stream)
        except nats.errors.Error as e:
            raise UnavailableError(f"cannot read stream {self.stream}: {e}") from None

    async def _direct(self, request: dict[str, Any], *, single: bool = False) -> list[RawMessage]:
        if self._inbox is None:
            self._inbox = self.nc.new_inbox()
            if isinstance(self.nc, _Client):
                await self.nc.subscribe_inline(f"{self._inbox}.*", self._on_direct_reply)
            else:
                await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_direct_msg)
        token = str(next(self._tokens))
        pending = _DirectRequest(single)
        self._waiting[token] = pending
        try:
            await self.nc.publish(self._direct_subject, json.dumps(request).encode(), reply=f"{self._inbox}.{token}")
            status, description = await asyncio.wait_for(pending.done, self.request_timeout)
        except TimeoutError:
            raise UnavailableError(f"direct get on stream {self.stream} timed out") from None
        finally:
            del self._waiting[token]
        if status == "413":
            raise TooManyResults(f"direct get on {self.stream}: {description}")
        if status not in (None, "204", "404"):  # 204: end of batch, 404: nothing there
            raise StoreError(f"direct get on {self.stream} failed: {status} {description}")
        return pending.messages

    async def _on_direct_msg(self, msg: Msg) -> None:
        self._on_direct_reply(msg.subject, msg.headers or {}, msg.data)

    def _on_direct_reply(self, subject: str, headers: dict[str, str], data: bytes) -> None:
        pending = self._waiting.get(subject[subject.rfind(".") + 1 :])
        if pending is None or pending.done.done():
            return
        status = headers.get("Status")
        if status is not None:
            pending.done.set_result((status, headers.get("Description", "")))
            return
        pending.messages.append(
            RawMessage(
                seq=int(headers["Nats-Sequence"]),
                subject=headers["Nats-Subject"],
                headers=headers,
                data=data,
                time=headers.get("Nats-Time-Stamp", ""),
            )
        )
        if pending.single:
            pending.done.set_result((None, ""))


def _settle(future: asyncio.Future[Published], outcome: Published | BaseException) -> None:
    """Hand a commit's outcome to its caller, unless the caller has gone (cancelled)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _by_seq(message: RawMessage) -> int:
    return message.seq


def subject_matcher(subject_filter: str) -> Callable[[str], object]:
    """Whether a subject matches a NATS subject filter (truthy when it does), as the server would."""
    return _subject_pattern(subject_filter).fullmatch


@functools.lru_cache(maxsize=64)
def _subject_pattern(subject_filter: str) -> re.Pattern[str]:
    """A NATS subject filter as a pattern: ``*`` is one token, ``>`` the tokens that remain."""
    tokens = ("[^.]+" if t == "*" else ".+" if t == ">" else re.escape(t) for t in subject_filter.split("."))
    return re.compile(r"\.".join(tokens))


class _DirectRequest:
    __slots__ = ("done", "messages", "single")

    def __init__(self, single: bool) -> None:
        self.single = single
        self.messages: list[RawMessage] = []
        self.done: asyncio.Future[tuple[str | None, str]] = asyncio.get_running_loop().create_future()


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as e:
        if e.err_code != STREAM_NAME_IN_USE:
            raise StoreError(f"cannot create stream {config.name}: {e.description}") from None
        await js.update_stream(config)
    log.debug("stream ready", stream=config.name)


async def ensure_kv(
    js: JetStreamContext, *, bucket: str, replicas: int = 1, ttl: float | None = None, history: int = 1
) -> KeyValue:
    """Create a key-value bucket if it does not exist; return it."""
    config = KeyValueConfig(
        bucket=bucket,
        history=history,
        ttl=ttl,
        storage=StorageType.FILE,
        replicas=replicas,
        direct=True,
    )
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as e:
        if e.err_code != STREAM_NAME_IN_USE:
            raise StoreError(f"cannot create bucket {bucket}: {e.description}") from None
        return await js.key_value(bucket)
