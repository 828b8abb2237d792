"""Parley's event store: typed events on JetStream.

* ``append`` writes a command's events atomically, only if the aggregate is still at the
  expected version (optimistic concurrency through the subject's last sequence). Concurrent
  appends from one process are group-committed: one atomic batch, one fsync.
* Commands are idempotent. A command's events are written together with an outcome record on
  ``parley.cmd.<tenant>.<command id>`` that must not exist yet (expected last subject sequence
  0), in the same atomic batch: the server itself guarantees a command id takes effect at most
  once, with no window to fall through and no second write to lose. A retried command finds
  the record and returns the first outcome. Records expire after ``command_retention``
  (per-message TTL), after which the id could be used again.
* ``read`` loads one aggregate from its own subject, optionally after a snapshot's position.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime

import msgspec
import structlog
from eventsourcing.persistence import StoredEvent

from domain.messages import Event
from streams.codec import EventMapper, Pending
from streams.errors import ConcurrencyError, EventDecodeError
from streams.jetstream import MSG_ID, DuplicateMessage, JetStreamLog, OutMessage, RawMessage, WrongLastSequence
from streams.subjects import StreamId, command_subject

log = structlog.get_logger(__name__)

H_TTL = "Nats-TTL"


class EventMeta(msgspec.Struct, frozen=True, omit_defaults=True):
    """Who and what caused an event; stored beside it, never inside the domain event."""

    command_id: str | None = None
    command: str | None = None
    actor: str | None = None
    correlation_id: str | None = None


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    """The body of an event message: its version, type, cause, and the mapper's bytes.

    Kept in the body (MessagePack) rather than in headers: headers are parsed per message by
    the client and cost more than the event itself on every load.
    """

    version: int
    topic: str
    meta: EventMeta
    state: bytes


_ENVELOPE = msgspec.msgpack.Encoder()
_UNENVELOPE = msgspec.msgpack.Decoder(Envelope)


def envelope(version: int, topic: str, state: bytes, meta: EventMeta | None = None) -> bytes:
    return _ENVELOPE.encode(Envelope(version, topic, meta or _NO_META, state))


_NO_META = EventMeta()


class RecordedEvent(msgspec.Struct, frozen=True):
    stream: StreamId
    version: int
    seq: int
    event: Event
    recorded_at: datetime
    meta: EventMeta


class AppendResult(msgspec.Struct, frozen=True):
    """Where a command's events landed. ``duplicate``: a retry, nothing was appended."""

    stream: str
    first_seq: int
    last_seq: int
    version: int
    count: int
    duplicate: bool = False


class EventStore:
    def __init__(
        self,
        log: JetStreamLog,
        mapper: EventMapper,
        *,
        command_retention: float = 30 * 24 * 3600.0,
        position_cache_size: int = 100_000,
    ) -> None:
        self.log = log
        self.mapper = mapper
        self.command_retention = command_retention
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
            return AppendResult(stream.key, 0, 0, expected_version, 0)
        expected_seq = await self._expected_seq(stream, expected_version)
        messages = []
        for i, event in enumerate(events, 1):
            stored = self.mapper.to_stored_event(Pending(stream.key, expected_version + i, event))
            body = _ENVELOPE.encode(Envelope(expected_version + i, stored.topic, meta, stored.state))
            messages.append(OutMessage(stream.subject, {}, body))
        version = expected_version + len(events)
        expect = {stream.subject: expected_seq}
        if meta.command_id:
            record = _OutcomeRecord(stream.key, version, len(events))
            subject = command_subject(stream.tenant, meta.command_id)
            headers = {MSG_ID: f"{stream.tenant}:{meta.command_id}", H_TTL: f"{int(self.command_retention)}s"}
            messages.append(OutMessage(subject, headers, msgspec.json.encode(record)))
            expect[subject] = 0

        try:
            published = await self.log.append(messages, expect=expect)
        except (WrongLastSequence, DuplicateMessage):
            self._positions.pop(stream.subject, None)
            if meta.command_id and (known := await self.outcome(stream.tenant, meta.command_id)) is not None:
                return known
            raise ConcurrencyError(stream.key, expected_version) from None

        self._note_position(stream.subject, version, published.first_seq + len(events) - 1)
        return AppendResult(
            stream.key, published.first_seq, published.first_seq + len(events) - 1, version, len(events)
        )

    async def _expected_seq(self, stream: StreamId, expected_version: int) -> int:
        if expected_version == 0:
            return 0
        cached = self._positions.get(stream.subject)
        if cached is not None and cached[0] == expected_version:
            return cached[1]
        last = await self.log.last_on_subject(stream.subject)
        actual = _UNENVELOPE.decode(last.data).version if last is not None else 0
        if last is None or actual != expected_version:
            raise ConcurrencyError(stream.key, expected_version, actual)
        self._note_position(stream.subject, actual, last.seq)
        return last.seq

    def _note_position(self, subject: str, version: int, seq: int) -> None:
        self._positions[subject] = (version, seq)
        self._positions.move_to_end(subject)
        if len(self._positions) > self._position_cache_size:
            self._positions.popitem(last=False)

    def note_position(self, stream: StreamId, version: int, seq: int) -> None:
        """Tell the store where an aggregate stands (a repository that loaded it from a snapshot)."""
        self._note_position(stream.subject, version, seq)

    # Command outcomes ---------------------------------------------------------------------

    async def outcome(self, tenant: str, command_id: str) -> AppendResult | None:
        """What a command id did, if it took effect (within ``command_retention``)."""
        raw = await self.log.last_on_subject(command_subject(tenant, command_id))
        if raw is None:
            return None
        record = msgspec.json.decode(raw.data, type=_OutcomeRecord)
        # The record is written right after the command's events, in the same batch.
        return AppendResult(
            record.stream, raw.seq - record.count, raw.seq - 1, record.version, record.count, duplicate=True
        )

    # Reads --------------------------------------------------------------------------------

    async def read(self, stream: StreamId, *, after_seq: int = 0) -> list[RecordedEvent]:
        raws = await self.log.read_subject(stream.subject, after_seq=after_seq)
        events = [self.decode(raw, stream) for raw in raws]
        if events:
            self._note_position(stream.subject, events[-1].version, events[-1].seq)
        return events

    async def read_all(self, *, after_seq: int = 0, limit: int = 1000, subject: str | None = None) -> list[RawMessage]:
        return await self.log.read(after_seq=after_seq, limit=limit, subject=subject)

    def decode(self, raw: RawMessage, stream: StreamId | None = None) -> RecordedEvent:
        """A raw stream message as a recorded event; ``EventDecodeError`` names its sequence."""
        try:
            stream = stream or StreamId.from_subject(raw.subject)
            env = _UNENVELOPE.decode(raw.data)
            pending = self.mapper.to_domain_event(
                StoredEvent(originator_id=stream.key, originator_version=env.version, topic=env.topic, state=env.state)
            )
            recorded_at = datetime.fromisoformat(raw.time) if raw.time else datetime.min
        except Exception as e:
            raise EventDecodeError(raw.seq, raw.subject, f"{type(e).__name__}: {e}") from e
        return RecordedEvent(
            stream=stream,
            version=env.version,
            seq=raw.seq,
            event=pending.event,
            recorded_at=recorded_at,
            meta=env.meta,
        )


class _OutcomeRecord(msgspec.Struct, frozen=True):
    stream: str
    version: int
    count: int
