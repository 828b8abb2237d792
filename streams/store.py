"""Parley's event store: typed events on JetStream.

* ``append`` writes a command's events atomically, only if the aggregate is still at the
  expected version (optimistic concurrency through the subject's last sequence).
* Commands are idempotent: the command id rides as ``Nats-Msg-Id`` (the server's dedupe
  window) and its outcome is kept in a key-value bucket beyond that window, so a retried
  command returns its first outcome and appends nothing.
* ``read`` loads one aggregate from its own subject, optionally after a snapshot's position.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from hashlib import sha256

import msgspec
import nats.js.errors
import structlog
from eventsourcing.persistence import StoredEvent
from nats.js.kv import KeyValue

from domain.messages import Event
from streams.codec import EventMapper, Pending
from streams.errors import ConcurrencyError, EventDecodeError
from streams.jetstream import DuplicateMessage, JetStreamLog, OutMessage, RawMessage, WrongLastSequence
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

H_VERSION = "Parley-Version"
H_TOPIC = "Parley-Topic"
H_COMMAND_ID = "Parley-Command-Id"
H_COMMAND = "Parley-Command"
H_ACTOR = "Parley-Actor"
H_CORRELATION = "Parley-Correlation-Id"


class EventMeta(msgspec.Struct, frozen=True, omit_defaults=True):
    """Who and what caused an event; stored beside it, never inside the domain event."""

    command_id: str | None = None
    command: str | None = None
    actor: str | None = None
    correlation_id: str | None = None

    def headers(self) -> dict[str, str]:
        h = {}
        if self.command_id:
            h[H_COMMAND_ID] = self.command_id
        if self.command:
            h[H_COMMAND] = self.command
        if self.actor:
            h[H_ACTOR] = self.actor
        if self.correlation_id:
            h[H_CORRELATION] = self.correlation_id
        return h

    @classmethod
    def from_headers(cls, h: dict[str, str]) -> EventMeta:
        return cls(
            command_id=h.get(H_COMMAND_ID),
            command=h.get(H_COMMAND),
            actor=h.get(H_ACTOR),
            correlation_id=h.get(H_CORRELATION),
        )


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


_KEY_OK = re.compile(r"^[A-Za-z0-9_=-]{1,100}$")


def outcome_key(tenant: str, command_id: str) -> str:
    """A KV key for a command id (hashed when it has characters a key cannot hold)."""
    if not _KEY_OK.match(command_id):
        command_id = "h-" + sha256(command_id.encode()).hexdigest()
    return f"{tenant}.{command_id}"


class EventStore:
    def __init__(
        self,
        log: JetStreamLog,
        mapper: EventMapper,
        *,
        outcomes: KeyValue | None = None,
        position_cache_size: int = 100_000,
    ) -> None:
        self.log = log
        self.mapper = mapper
        self.outcomes = outcomes
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
        if meta.command_id and (known := await self.outcome(stream.tenant, meta.command_id)) is not None:
            return msgspec.structs.replace(known, duplicate=True)
        if not events:
            return AppendResult(stream.key, 0, 0, expected_version, 0)

        expected_seq = await self._expected_seq(stream, expected_version)
        base_headers = meta.headers()
        messages = []
        for i, event in enumerate(events, 1):
            stored = self.mapper.to_stored_event(Pending(stream.key, expected_version + i, event))
            headers = {H_VERSION: str(expected_version + i), H_TOPIC: stored.topic, **base_headers}
            messages.append(OutMessage(stream.subject, headers, stored.state))

        msg_id = f"{stream.tenant}:{meta.command_id}" if meta.command_id else None
        try:
            published = await self.log.publish(messages, expect={stream.subject: expected_seq}, msg_id=msg_id)
        except WrongLastSequence:
            self._positions.pop(stream.subject, None)
            raise ConcurrencyError(stream.key, expected_version) from None
        except DuplicateMessage:
            assert meta.command_id is not None
            found = await self._find_outcome_in_stream(stream, meta.command_id)
            if found is None:
                raise
            await self._remember(stream.tenant, meta.command_id, found)
            return msgspec.structs.replace(found, duplicate=True)

        version = expected_version + len(events)
        self._note_position(stream.subject, version, published.last_seq)
        result = AppendResult(stream.key, published.first_seq, published.last_seq, version, len(events))
        if meta.command_id:
            await self._remember(stream.tenant, meta.command_id, result)
        return result

    async def _expected_seq(self, stream: StreamId, expected_version: int) -> int:
        if expected_version == 0:
            return 0
        cached = self._positions.get(stream.subject)
        if cached is not None and cached[0] == expected_version:
            return cached[1]
        last = await self.log.last_on_subject(stream.subject)
        actual = int(last.headers[H_VERSION]) if last is not None else 0
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
        if self.outcomes is None:
            return None
        try:
            entry = await self.outcomes.get(outcome_key(tenant, command_id))
        except nats.js.errors.KeyNotFoundError:
            return None
        return msgspec.json.decode(entry.value, type=AppendResult) if entry.value else None

    async def _remember(self, tenant: str, command_id: str, result: AppendResult) -> None:
        if self.outcomes is not None:
            await self.outcomes.put(outcome_key(tenant, command_id), msgspec.json.encode(result))

    async def _find_outcome_in_stream(self, stream: StreamId, command_id: str) -> AppendResult | None:
        """Rebuild a command's outcome from the events it appended (crash before it was remembered)."""
        raws = [r for r in await self.log.read_subject(stream.subject) if r.headers.get(H_COMMAND_ID) == command_id]
        if not raws:
            return None
        return AppendResult(
            stream.key, raws[0].seq, raws[-1].seq, int(raws[-1].headers[H_VERSION]), len(raws)
        )

    # Reads --------------------------------------------------------------------------------

    async def read(self, stream: StreamId, *, after_seq: int = 0) -> list[RecordedEvent]:
        raws = await self.log.read_subject(stream.subject, after_seq=after_seq)
        events = [self.decode(raw) for raw in raws]
        if events:
            self._note_position(stream.subject, events[-1].version, events[-1].seq)
        return events

    async def read_all(self, *, after_seq: int = 0, limit: int = 1000, subject: str | None = None) -> list[RawMessage]:
        return await self.log.read(after_seq=after_seq, limit=limit, subject=subject)

    def decode(self, raw: RawMessage) -> RecordedEvent:
        """A raw stream message as a recorded event; ``EventDecodeError`` names its sequence."""
        try:
            stream = StreamId.from_subject(raw.subject)
            version = int(raw.headers[H_VERSION])
            pending = self.mapper.to_domain_event(
                StoredEvent(originator_id=stream.key, originator_version=version, topic=raw.headers[H_TOPIC], state=raw.data)
            )
            recorded_at = datetime.fromisoformat(raw.time) if raw.time else datetime.min
        except Exception as e:  # noqa: BLE001 - every failure is reported with its sequence
            raise EventDecodeError(raw.seq, raw.subject, f"{type(e).__name__}: {e}") from e
        return RecordedEvent(
            stream=stream,
            version=version,
            seq=raw.seq,
            event=pending.event,
            recorded_at=recorded_at,
            meta=EventMeta.from_headers(raw.headers),
        )
