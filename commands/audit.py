"""Auditing a conversation: which config version governed each of its turns, from the events alone.

Each customer message, the config version that answered it (the version the conversation is pinned
to), the config's active version at that moment (from the config's own events), and the replies.
"""

from __future__ import annotations

import bisect
from datetime import datetime

import msgspec

from domain import config as a
from domain import conversation as c
from domain.errors import ValidationError
from streams.history import read_aggregate
from streams.store import EventStore, RecordedEvent
from streams.subjects import StreamId


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
    events = await read_aggregate(store, stream)
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
