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

import bisect
import functools
from datetime import UTC, datetime
from typing import Generic, TypeVar

import msgspec

from domain import config as a
from domain import conversation as c
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
    """The event's own time: its first field holding a datetime (``started_at``, ``at``, ...)."""
    for name in _time_fields(type(event)):
        value = getattr(event, name)
        if isinstance(value, datetime):
            return value
    return None


@functools.lru_cache(maxsize=512)
def _time_fields(cls: type[Event]) -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(cls) if "datetime" in repr(f.type))


async def history(store: EventStore, stream: StreamId) -> list[AuditEvent]:
    """The aggregate's whole history, oldest first; ``NotFoundError`` if it has none."""
    recorded = await _read(store, stream)
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
    return replay(spec, stream, await _read(store, stream), version=version, at=at)


def _aware(moment: datetime) -> datetime:
    """A moment without a timezone is taken as UTC (the stream's clock)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def _read(store: EventStore, stream: StreamId) -> list[RecordedEvent]:
    recorded = await store.read(stream)
    if not recorded:
        raise NotFoundError(f"{stream.aggregate_type} {stream.aggregate_id} not found")
    return recorded


# Conversations: the config version behind each turn ------------------------------------------


class TurnReply(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    seq: int
    version: int
    author: str  # "ai", or the human agent's id
    provider: str | None
    recorded_at: datetime
    replied_at: datetime
    actor: str | None
    command_id: str | None


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """A customer message and what answered it."""

    turn: int
    message_id: str
    seq: int
    version: int
    recorded_at: datetime
    received_at: datetime
    actor: str | None
    command: str | None
    command_id: str | None
    status: str  # the conversation's status when the message came: "active" (the AI answers), "escalated"
    config_id: str
    config_version: int  # the version pinned to the conversation at this turn: the one that governed it
    active_config_version: int | None  # the config's active version at that moment (None: config unknown)
    replies: list[TurnReply]


class ConversationTurns(msgspec.Struct, frozen=True, kw_only=True):
    stream: StreamId
    config_id: str
    config_version: int
    version: int
    turns: list[Turn]


def active_versions(config_events: list[RecordedEvent]) -> list[tuple[datetime, int]]:
    """A config's active version after each of its commits, with the commit's time (pure)."""
    state, out = a.initial(), list[tuple[datetime, int]]()
    for recorded in config_events:
        state = a.evolve(state, recorded.event)
        if not out or out[-1][0] != recorded.recorded_at:
            out.append((recorded.recorded_at, state.active))
        else:
            out[-1] = (recorded.recorded_at, state.active)
    return out


def _active_at(actives: list[tuple[datetime, int]], moment: datetime) -> int:
    index = bisect.bisect_right(actives, moment, key=lambda item: item[0])
    return actives[index - 1][1] if index else 0


def turns_of(
    events: list[RecordedEvent], config_events: list[RecordedEvent] | None = None
) -> tuple[c.Conversation, list[Turn]]:
    """Replay a conversation's events, noting each turn as the state stood when its message came (pure).

    ``config_events``: the history of the conversation's config, to tell which version was active
    when each message was recorded.
    """
    actives = active_versions(config_events) if config_events else None
    state = c.initial()
    turns: list[Turn] = []
    for recorded in events:
        event = recorded.event
        if isinstance(event, c.UserMessageReceived):
            turns.append(
                Turn(
                    turn=state.turn_count + 1,
                    message_id=event.message_id,
                    seq=recorded.seq,
                    version=recorded.version,
                    recorded_at=recorded.recorded_at,
                    received_at=event.received_at,
                    actor=recorded.meta.actor,
                    command=recorded.meta.command,
                    command_id=recorded.meta.command_id,
                    status=state.status,
                    config_id=state.config_id,
                    config_version=state.config_version,
                    active_config_version=_active_at(actives, recorded.recorded_at) if actives is not None else None,
                    replies=[],
                )
            )
        elif isinstance(event, c.AgentReplied) and turns:
            turns[-1].replies.append(
                TurnReply(
                    message_id=event.message_id,
                    seq=recorded.seq,
                    version=recorded.version,
                    author=event.author,
                    provider=event.provider,
                    recorded_at=recorded.recorded_at,
                    replied_at=event.replied_at,
                    actor=recorded.meta.actor,
                    command_id=recorded.meta.command_id,
                )
            )
        state = c.evolve(state, event)
    return state, turns


async def conversation_turns(store: EventStore, stream: StreamId) -> ConversationTurns:
    """A conversation's turns, each with the config version that governed it."""
    if stream.aggregate_type != c.AGGREGATE_TYPE:
        raise ValidationError(f"{stream} is not a conversation", fields={"aggregate_type": c.AGGREGATE_TYPE})
    events = await _read(store, stream)
    first = events[0].event
    config_events = None
    if isinstance(first, c.ConversationStarted):
        try:
            config_stream = StreamId(stream.tenant, a.AGGREGATE_TYPE, first.config_id)
        except ValidationError:  # a config id no stream can name: no config history to consult
            pass
        else:
            config_events = await store.read(config_stream)
    state, turns = turns_of(events, config_events)
    return ConversationTurns(
        stream=stream,
        config_id=state.config_id,
        config_version=state.config_version,
        version=events[-1].version,
        turns=turns,
    )
