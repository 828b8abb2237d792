"""A tenant's pool of human support agents, as a pure decider.

Agents register with skills and a capacity and set themselves available or not. An escalation is
assigned to the least-loaded available agent that has the skill it needs (ties: the agent who
registered first); when nobody can take it, it waits in the queue and is handed to the next agent
who frees up or comes online.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.errors import IllegalStateError, NotFoundError, ValidationError
from domain.messages import Command, Decider, Event

# Its events were first stored from ``domain.agent_pool`` (their topics keep that name: ``streams.codec``).
STORED_AS = "domain.agent_pool"
AGGREGATE_TYPE = "agent_pool"
POOL_ID = "default"


# Events ---------------------------------------------------------------------------------------


class HumanAgentRegistered(Event, frozen=True, kw_only=True):
    agent_id: str
    name: str
    role: str = "Support Agent"
    skills: list[str] = []
    capacity: int = 3
    at: datetime

    time_field = "at"


class HumanAgentAvailabilitySet(Event, frozen=True, kw_only=True):
    agent_id: str
    available: bool
    at: datetime

    time_field = "at"


class EscalationRouted(Event, frozen=True, kw_only=True):
    """An escalation went to an agent (``claimed``: the agent took it from the queue)."""

    escalation_id: str
    conversation_id: str
    agent_id: str
    claimed: bool = False
    at: datetime

    time_field = "at"


class EscalationQueued(Event, frozen=True, kw_only=True):
    escalation_id: str
    conversation_id: str
    skill: str | None = None
    position: int
    at: datetime

    time_field = "at"


class HumanAgentReleased(Event, frozen=True, kw_only=True):
    escalation_id: str
    agent_id: str | None = None
    at: datetime

    time_field = "at"


# Commands -------------------------------------------------------------------------------------


class RegisterHumanAgent(Command, frozen=True, kw_only=True):
    agent_id: str
    name: str
    role: str = "Support Agent"
    skills: list[str] = []
    capacity: int = 3
    at: datetime


class SetHumanAgentAvailability(Command, frozen=True, kw_only=True):
    agent_id: str
    available: bool
    at: datetime


class RouteEscalation(Command, frozen=True, kw_only=True):
    escalation_id: str
    conversation_id: str
    skill: str | None = None
    at: datetime


class ClaimEscalation(Command, frozen=True, kw_only=True):
    """An agent takes a waiting escalation from the queue (even beyond their usual capacity)."""

    escalation_id: str
    agent_id: str
    at: datetime


class ReleaseEscalation(Command, frozen=True, kw_only=True):
    escalation_id: str
    at: datetime


class ReleaseConversation(Command, frozen=True, kw_only=True):
    """The conversation ended: free whoever had, or was waiting for, its escalations."""

    conversation_id: str
    at: datetime


# State ----------------------------------------------------------------------------------------


class HumanAgent(msgspec.Struct, frozen=True):
    agent_id: str
    name: str
    role: str
    skills: tuple[str, ...]
    capacity: int
    available: bool = False
    active: tuple[str, ...] = ()


class Waiting(msgspec.Struct, frozen=True):
    escalation_id: str
    conversation_id: str
    skill: str | None


class Pool(msgspec.Struct, frozen=True):
    agents: dict[str, HumanAgent] = {}
    queue: tuple[Waiting, ...] = ()
    routed: dict[str, str] = {}  # escalation id -> agent id
    conversations: dict[str, str] = {}  # escalation id -> conversation id, while routed or queued


def initial() -> Pool:
    return Pool()


def choose(pool: Pool, skill: str | None) -> HumanAgent | None:
    """The least-loaded available agent with the skill and room for one more."""
    fit = [
        a
        for a in pool.agents.values()
        if a.available and len(a.active) < a.capacity and (skill is None or skill in a.skills)
    ]
    return min(fit, key=lambda a: len(a.active) / a.capacity, default=None)


def queue_position(pool: Pool, escalation_id: str) -> int | None:
    for i, waiting in enumerate(pool.queue, 1):
        if waiting.escalation_id == escalation_id:
            return i
    return None


def decide(command: Command, pool: Pool) -> list[Event]:
    match command:
        case RegisterHumanAgent():
            if command.capacity < 1:
                raise ValidationError("capacity must be at least 1", fields={"capacity": "at least 1"})
            return [HumanAgentRegistered(**msgspec.structs.asdict(command))]
        case SetHumanAgentAvailability():
            if command.agent_id not in pool.agents:
                raise NotFoundError(f"agent {command.agent_id} not found")
            events: list[Event] = [HumanAgentAvailabilitySet(**msgspec.structs.asdict(command))]
            if command.available:
                events += _drain_queue(evolve_all(pool, events), command.at)
            return events
        case RouteEscalation():
            if command.escalation_id in pool.routed or queue_position(pool, command.escalation_id):
                return []  # already handled
            agent = choose(pool, command.skill)
            if agent is None:
                return [
                    EscalationQueued(
                        escalation_id=command.escalation_id,
                        conversation_id=command.conversation_id,
                        skill=command.skill,
                        position=len(pool.queue) + 1,
                        at=command.at,
                    )
                ]
            return [
                EscalationRouted(
                    escalation_id=command.escalation_id,
                    conversation_id=command.conversation_id,
                    agent_id=agent.agent_id,
                    at=command.at,
                )
            ]
        case ClaimEscalation():
            if command.agent_id not in pool.agents:
                raise NotFoundError(f"agent {command.agent_id} is not registered")
            owner = pool.routed.get(command.escalation_id)
            if owner == command.agent_id:
                return []
            if owner is not None:
                raise IllegalStateError(f"escalation {command.escalation_id} is assigned to another agent")
            waiting = next((w for w in pool.queue if w.escalation_id == command.escalation_id), None)
            if waiting is None:
                raise NotFoundError(f"escalation {command.escalation_id} is not waiting in the queue")
            return [
                EscalationRouted(
                    escalation_id=command.escalation_id,
                    conversation_id=waiting.conversation_id,
                    agent_id=command.agent_id,
                    claimed=True,
                    at=command.at,
                )
            ]
        case ReleaseEscalation():
            agent_id = pool.routed.get(command.escalation_id)
            if agent_id is None and not queue_position(pool, command.escalation_id):
                return []
            released: list[Event] = [
                HumanAgentReleased(escalation_id=command.escalation_id, agent_id=agent_id, at=command.at)
            ]
            return released + _drain_queue(evolve_all(pool, released), command.at)
        case ReleaseConversation():
            events = []
            for escalation_id, conversation_id in pool.conversations.items():
                if conversation_id == command.conversation_id:
                    agent_id = pool.routed.get(escalation_id)
                    events.append(HumanAgentReleased(escalation_id=escalation_id, agent_id=agent_id, at=command.at))
            return events + _drain_queue(evolve_all(pool, events), command.at) if events else []
    raise ValidationError(f"{type(command).__name__} is not an agent pool command")


def _drain_queue(pool: Pool, at: datetime) -> list[Event]:
    """Hand waiting escalations, oldest first, to agents who have room."""
    events: list[Event] = []
    for waiting in pool.queue:
        agent = choose(pool, waiting.skill)
        if agent is None:
            continue
        routed = EscalationRouted(
            escalation_id=waiting.escalation_id, conversation_id=waiting.conversation_id, agent_id=agent.agent_id, at=at
        )
        events.append(routed)
        pool = evolve(pool, routed)
    return events


def evolve_all(pool: Pool, events: list[Event]) -> Pool:
    for event in events:
        pool = evolve(pool, event)
    return pool


def evolve(pool: Pool, event: Event) -> Pool:
    replace = msgspec.structs.replace
    match event:
        case HumanAgentRegistered():
            agent = HumanAgent(event.agent_id, event.name, event.role, tuple(event.skills), event.capacity)
            return replace(pool, agents={**pool.agents, event.agent_id: agent})
        case HumanAgentAvailabilitySet():
            agent = replace(pool.agents[event.agent_id], available=event.available)
            return replace(pool, agents={**pool.agents, event.agent_id: agent})
        case EscalationRouted():
            agent = pool.agents[event.agent_id]
            agent = replace(agent, active=(*agent.active, event.escalation_id))
            return replace(
                pool,
                agents={**pool.agents, agent.agent_id: agent},
                queue=tuple(w for w in pool.queue if w.escalation_id != event.escalation_id),
                routed={**pool.routed, event.escalation_id: agent.agent_id},
                conversations={**pool.conversations, event.escalation_id: event.conversation_id},
            )
        case EscalationQueued():
            waiting = Waiting(event.escalation_id, event.conversation_id, event.skill)
            conversations = {**pool.conversations, event.escalation_id: event.conversation_id}
            return replace(pool, queue=(*pool.queue, waiting), conversations=conversations)
        case HumanAgentReleased():
            agents = dict(pool.agents)
            if event.agent_id and event.agent_id in agents:
                a = agents[event.agent_id]
                agents[a.agent_id] = replace(a, active=tuple(e for e in a.active if e != event.escalation_id))
            routed = {k: v for k, v in pool.routed.items() if k != event.escalation_id}
            conversations = {k: v for k, v in pool.conversations.items() if k != event.escalation_id}
            queue = tuple(w for w in pool.queue if w.escalation_id != event.escalation_id)
            return replace(pool, agents=agents, routed=routed, queue=queue, conversations=conversations)
    return pool


DECIDER = Decider(type_name=AGGREGATE_TYPE, state_type=Pool, initial=initial, evolve=evolve, decide=decide)
