"""Audit history and time travel: what happened to an aggregate, and what it was at any moment.

Everything here is a replay of the aggregate's own commits (``EventStore.read``) through its own
``evolve`` (the ``Decider`` the command runner uses), from the initial state: no snapshot
and no read model is involved, so the answer is what the log proves.

* ``history``: every event, oldest first, with its stream sequence and version, when it was
  recorded (the commit's JetStream timestamp) and when it says it happened (its own time field),
  who caused it (``EventMeta.actor``) and which command (name, id, correlation id).
* ``state_as_of``: the state after the last event at or before a version, or recorded at or
  before a moment. A moment cuts between commits (a command's events share one timestamp); a
  version may cut inside one. Before the first event the state is the initial one, version 0.
* ``conversation_turns``: each customer message of a conversation, the config version that
  governed its answer (the conversation's pinned ``config_version`` as the replay stood at that
  message: what the agent runtime used), the config's active version at that moment (from the
  config's own commits, recorded up to that message: it shows a conversation running on an older
  version than new ones get), and the replies that followed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Generic, TypeVar

import msgspec

from domain.errors import NotFoundError, ValidationError
from domain.messages import Decider, Event
from streams.store import EventStore, RecordedEvent
from streams.subjects import StreamId

S = TypeVar("S")


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event of an aggregate's history, with who, when and why."""

    seq: int  # the stream sequence of the commit that holds it
    version: int
    type: str
    recorded_at: datetime  # when JetStream stored the commit (the server's clock)
    occurred_at: datetime | None  # the event's own time (the command's clock), if it has one
    command: str | None
    command_id: str | None
    actor: str | None
    correlation_id: str | None
    event: Event


def audit_event(recorded: RecordedEvent) -> AuditEvent:
    meta = recorded.meta
    return AuditEvent(
        seq=recorded.seq,
        version=recorded.version,
        type=type(recorded.event).__name__,
        recorded_at=recorded.recorded_at,
        occurred_at=occurred_at(recorded.event),
        command=meta.command,
        command_id=meta.command_id,
        actor=meta.actor,
        correlation_id=meta.correlation_id,
        event=recorded.event,
    )


def occurred_at(event: Event) -> datetime | None:
    """The event's own time: the field its class names (``time_field``), if it names one."""
    return event.occurred_at()


async def history(store: EventStore, stream: StreamId) -> list[AuditEvent]:
    """The aggregate's whole history, oldest first; ``NotFoundError`` if it has none."""
    recorded = await read_aggregate(store, stream)
    return [audit_event(r) for r in recorded]


# Time travel ----------------------------------------------------------------------------------


class PastState(msgspec.Struct, Generic[S], frozen=True, kw_only=True):
    """An aggregate as it stood at some point of its history."""

    stream: StreamId
    state: S
    version: int  # the version of the last event folded (0: none)
    seq: int  # the stream sequence of its commit (0: none)
    recorded_at: datetime | None  # when that commit was recorded
    latest_version: int  # the aggregate's version now
    events_folded: int


def replay(
    spec: Decider[S],
    stream: StreamId,
    events: list[RecordedEvent],
    *,
    version: int | None = None,
    at: datetime | None = None,
) -> PastState[S]:
    """Fold ``events`` (oldest first) from the initial state up to a version or a moment (pure)."""
    if version is not None and at is not None:
        raise ValidationError("ask for a version or a moment, not both", fields={"version": "with at"})
    latest = events[-1].version if events else 0
    if version is not None and not 0 <= version <= latest:
        raise NotFoundError(f"{stream} has no version {version}; its versions are 0 to {latest}", latest=latest)
    moment = _aware(at) if at is not None else None
    state, last = spec.initial(), None
    evolve = spec.evolve
    folded = 0
    for recorded in events:
        if version is not None and recorded.version > version:
            break
        if moment is not None and recorded.recorded_at > moment:
            break
        state = evolve(state, recorded.event)
        last = recorded
        folded += 1
    return PastState(
        stream=stream,
        state=state,
        version=last.version if last else 0,
        seq=last.seq if last else 0,
        recorded_at=last.recorded_at if last else None,
        latest_version=latest,
        events_folded=folded,
    )


async def state_as_of(
    store: EventStore,
    spec: Decider[S],
    stream: StreamId,
    *,
    version: int | None = None,
    at: datetime | None = None,
) -> PastState[S]:
    """The aggregate as of a version or a moment (its latest state when given neither), by replay.

    ``NotFoundError`` when the aggregate has no events or no such version.
    """
    if stream.aggregate_type != spec.type_name:
        raise ValidationError(f"{stream} is not a {spec.type_name}", fields={"aggregate_type": spec.type_name})
    return replay(spec, stream, await read_aggregate(store, stream), version=version, at=at)


def _aware(moment: datetime) -> datetime:
    """A moment without a timezone is taken as UTC (the stream's clock)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def read_aggregate(store: EventStore, stream: StreamId) -> list[RecordedEvent]:
    """An aggregate's events; not found when it has none."""
    recorded = await store.read(stream)
    if not recorded:
        raise NotFoundError(f"{stream.aggregate_type} {stream.aggregate_id} not found")
    return recorded
