"""The escalation read model: the human agents of each tenant, the queue, and what the people
working it read (the queue with waits and positions, the agent pool, one escalation's status).

Its own tables (``rm_escalation``: ``human_agents``, ``queue``) are filled by
``projections.escalation`` from the agent pool's events; an escalation's own row lives with its
conversation (``rm_conversations.escalations``, from the conversation's events). The queries join
the two. Every query names the tenant: an id of another tenant reads as not found.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from read_models.conversation import CONVERSATIONS, Person, decode_cursor, encode_cursor, iso
from read_models.migrations import PROJECTOR_TABLES, Migration, ReadModel

TABLES = (
    """
    CREATE TABLE human_agents (
        tenant text NOT NULL,
        agent_id text NOT NULL,
        name text NOT NULL,
        role text NOT NULL,
        skills jsonb NOT NULL DEFAULT '[]',
        capacity integer NOT NULL,
        available boolean NOT NULL DEFAULT false,
        active jsonb NOT NULL DEFAULT '[]',
        registered_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        version integer NOT NULL,
        PRIMARY KEY (tenant, agent_id)
    )
    """,
    """
    CREATE TABLE queue (
        tenant text NOT NULL,
        escalation_id text NOT NULL,
        conversation_id text NOT NULL,
        skill text,
        queued_at timestamptz NOT NULL,
        version integer NOT NULL,  -- the pool's, at queueing: the queue's order
        PRIMARY KEY (tenant, escalation_id)
    )
    """,
    "CREATE INDEX queue_in_order ON queue (tenant, version)",
)

ESCALATION = ReadModel(
    name="escalation",
    schema="rm_escalation",
    migrations=(
        Migration(1, "projector checkpoint and dead letters", PROJECTOR_TABLES),
        Migration(2, "human agents and the queue", TABLES),
    ),
)

# How long a place in the human-agent queue is expected to take (the seed: #3 in queue, 15 minutes).
MINUTES_PER_QUEUE_POSITION = 5

EscalationState = Literal["queued", "assigned", "open", "resolved"]


# Shapes ---------------------------------------------------------------------------------------


class HumanAgentView(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    name: str
    role: str
    skills: list[str]
    capacity: int
    available: bool
    active_escalations: int
    status: str  # available, busy (at capacity), offline


class AgentList(msgspec.Struct, frozen=True):
    agents: list[HumanAgentView]


class AssignedAgent(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's ``assigned_agent``."""

    agent_id: str
    name: str
    role: str = "Support Agent"
    status: str = "available"
    estimated_response_time: str = "2 minutes"


class CallbackOption(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    option: str
    description: str
    estimated_callback_time: str | None = None


class EscalationStatusView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    escalation_id: str
    conversation_id: str
    product_type: str
    status: str
    fallback_action: str | None
    queue_position: int | None
    estimated_wait_time: str | None
    callback_options: list[CallbackOption]
    agent_message: str
    user_id: str = ""
    fallback_option: str | None = None
    assigned_agent: AssignedAgent | None = None


class QueuedEscalation(msgspec.Struct, frozen=True, kw_only=True):
    escalation_id: str
    conversation_id: str
    user_id: str
    channel: str
    status: str
    trigger: str
    reason: str
    urgency: str
    skill: str | None
    queue_position: int | None
    wait_seconds: int
    fallback_option: str | None
    requested_at: str
    assigned_agent: Person | None


class EscalationPage(msgspec.Struct, frozen=True):
    escalations: list[QueuedEscalation]
    next_cursor: str | None


# Queries --------------------------------------------------------------------------------------


def _q(query: str, schema: str = ESCALATION.schema, conversations: str = CONVERSATIONS.schema) -> sql.Composed:
    return sql.SQL(query).format(s=sql.Identifier(schema), c=sql.Identifier(conversations))  # type: ignore[arg-type]


# The queue with each waiting escalation's place (1: next), per tenant.
_POSITIONS = """
    SELECT escalation_id, skill, row_number() OVER (ORDER BY version) AS position
    FROM {s}.queue WHERE tenant = %(tenant)s
"""


async def list_agents(conn: AsyncConnection[Any], tenant: str) -> AgentList:
    cur = await conn.execute(
        _q(
            "SELECT agent_id, name, role, skills, capacity, available, jsonb_array_length(active)"
            " FROM {s}.human_agents WHERE tenant = %s ORDER BY registered_at, agent_id"
        ),
        [tenant],
    )
    agents = []
    for agent_id, name, role, skills, capacity, available, active in await cur.fetchall():
        status = "offline" if not available else "busy" if active >= capacity else "available"
        agents.append(
            HumanAgentView(
                agent_id=agent_id,
                name=name,
                role=role,
                skills=skills,
                capacity=capacity,
                available=available,
                active_escalations=active,
                status=status,
            )
        )
    return AgentList(agents)


LIST_ESCALATIONS = (
    "WITH q AS (" + _POSITIONS + ")"
    """
    SELECT e.escalation_id, e.conversation_id, c.user_id, c.channel, e.status, e.trigger, e.reason, e.urgency,
        q.skill, coalesce(q.position, e.queue_position), e.fallback_option, e.requested_at, e.assigned_at,
        e.resolved_at, e.agent_id, e.agent_name
    FROM {c}.escalations AS e
    JOIN {c}.conversations AS c ON c.tenant = e.tenant AND c.conversation_id = e.conversation_id
    LEFT JOIN q ON q.escalation_id = e.escalation_id
    WHERE e.tenant = %(tenant)s
        AND (%(state)s::text IS NULL
            OR (%(state)s = 'queued' AND e.status IN ('pending', 'agent_unavailable'))
            OR (%(state)s = 'assigned' AND e.status = 'assigned')
            OR (%(state)s = 'open' AND e.status <> 'resolved')
            OR (%(state)s = 'resolved' AND e.status = 'resolved'))
        AND (%(agent_id)s::text IS NULL OR e.agent_id = %(agent_id)s)
        AND (%(skill)s::text IS NULL OR q.skill = %(skill)s)
        AND (%(user_id)s::text IS NULL OR c.user_id = %(user_id)s)
        AND (%(after_at)s::timestamptz IS NULL
            OR (e.requested_at, e.escalation_id) > (%(after_at)s::timestamptz, %(after_id)s::text))
    ORDER BY e.requested_at, e.escalation_id
    LIMIT %(limit)s
    """
)


async def list_escalations(
    conn: AsyncConnection[Any],
    tenant: str,
    *,
    state: EscalationState | None = None,
    agent_id: str | None = None,
    skill: str | None = None,
    user_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    now: datetime | None = None,
) -> EscalationPage:
    """Escalations oldest first (the order they are worked in), with place in the queue and wait."""
    after_at, after_id = decode_cursor(cursor) if cursor else (None, None)
    params = {
        "tenant": tenant,
        "state": state,
        "agent_id": agent_id,
        "skill": skill,
        "user_id": user_id,
        "after_at": after_at,
        "after_id": after_id,
        "limit": limit + 1,
    }
    cur = await conn.execute(_q(LIST_ESCALATIONS), params)
    rows = await cur.fetchall()
    moment = now or datetime.now(UTC)
    page = []
    for r in rows[:limit]:
        (escalation_id, conversation_id, user, channel, status, trigger, reason, urgency, skill_, position) = r[:10]
        fallback_option, requested_at, assigned_at, resolved_at, agent, agent_name = r[10:]
        until = assigned_at or resolved_at or moment
        page.append(
            QueuedEscalation(
                escalation_id=escalation_id,
                conversation_id=conversation_id,
                user_id=user,
                channel=channel,
                status=status,
                trigger=trigger,
                reason=reason,
                urgency=urgency,
                skill=skill_,
                queue_position=position if status not in ("assigned", "resolved") else None,
                wait_seconds=max(0, int((until - requested_at).total_seconds())),
                fallback_option=fallback_option,
                requested_at=iso(requested_at),
                assigned_agent=Person(agent, agent_name or "") if agent else None,
            )
        )
    more = len(rows) > limit
    return EscalationPage(page, encode_cursor(rows[limit - 1][11], rows[limit - 1][0]) if more else None)


ESCALATION_STATUS = (
    "WITH q AS (" + _POSITIONS + ")"
    """
    SELECT e.conversation_id, c.product_type, c.user_id, e.status, e.fallback_action,
        coalesce(q.position, e.queue_position), e.agent_id,
        e.agent_name, e.unavailable_at, e.fallback_option, a.role
    FROM {c}.escalations e
    JOIN {c}.conversations c USING (tenant, conversation_id)
    LEFT JOIN q ON q.escalation_id = e.escalation_id
    LEFT JOIN {s}.human_agents a ON a.tenant = e.tenant AND a.agent_id = e.agent_id
    WHERE e.tenant = %(tenant)s AND e.escalation_id = %(escalation_id)s
    """
)


async def get_escalation_status(
    conn: AsyncConnection[Any], tenant: str, escalation_id: str, *, conversations: str = CONVERSATIONS.schema
) -> EscalationStatusView | None:
    """Where an escalation stands, with the options offered while no agent is free."""
    cur = await conn.execute(
        _q(ESCALATION_STATUS, conversations=conversations), {"tenant": tenant, "escalation_id": escalation_id}
    )
    row = await cur.fetchone()
    if row is None:
        return None
    (conversation_id, product_type, user_id, status, fallback_action, position, agent_id, agent_name) = row[:8]
    unavailable_at, fallback_option, agent_role = row[8:]
    waiting = status in ("pending", "agent_unavailable")
    position = position if waiting else None
    wait = timedelta(minutes=position * MINUTES_PER_QUEUE_POSITION) if position else None
    unavailable = status == "agent_unavailable"
    return EscalationStatusView(
        escalation_id=escalation_id,
        conversation_id=conversation_id,
        product_type=product_type,
        status=status,
        fallback_action=fallback_action if waiting else None,
        queue_position=position,
        estimated_wait_time=_minutes(wait) if wait is not None and unavailable else None,
        callback_options=_callback_options(unavailable_at + wait if wait and unavailable_at else None)
        if unavailable and fallback_option is None
        else [],
        agent_message=_agent_message(status, position, wait, agent_name, fallback_option),
        user_id=user_id,
        fallback_option=fallback_option,
        assigned_agent=AssignedAgent(
            agent_id=agent_id,
            name=agent_name or "",
            role=agent_role or "Support Agent",
            status="available" if status == "assigned" else "done",
        )
        if agent_id is not None
        else None,
    )


class EscalationQueries:
    """The escalation read model's queries, on a pool (the API's dependency)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def status(self, tenant: str, escalation_id: str) -> EscalationStatusView | None:
        async with self.pool.connection() as conn:
            return await get_escalation_status(conn, tenant, escalation_id)

    async def list(self, tenant: str, **filters: Any) -> EscalationPage:
        async with self.pool.connection() as conn:
            return await list_escalations(conn, tenant, **filters)

    async def agents(self, tenant: str) -> AgentList:
        async with self.pool.connection() as conn:
            return await list_agents(conn, tenant)


def _callback_options(callback_at: datetime | None) -> list[CallbackOption]:
    return [
        CallbackOption(
            option="schedule_callback",
            description="We can call you back when an agent is available",
            estimated_callback_time=iso(callback_at) if callback_at is not None else None,
        ),
        CallbackOption(
            option="email_support", description="Send your issue via email and we'll respond within 2 hours"
        ),
        CallbackOption(option="continue_with_ai", description="Continue working with our AI assistant"),
    ]


def _agent_message(
    status: str, position: int | None, wait: timedelta | None, agent_name: str | None, fallback: str | None
) -> str:
    match status, fallback:
        case "agent_unavailable", "schedule_callback":
            return "You're booked for a callback: an agent will call you as soon as one is free."
        case "agent_unavailable", _:
            place = f"You're #{position} in queue" if position else "You're in the queue"
            estimate = f" with an estimated wait time of {_minutes(wait)}" if wait is not None else ""
            return (
                f"I'm sorry, all our agents are currently assisting other customers. {place}{estimate}. "
                "Would you like to schedule a callback, email us, or continue working with me?"
            )
        case "assigned", _:
            return f"You're now connected with {agent_name or 'a support agent'}."
        case "resolved", "continue_with_ai":
            return "You're back with our AI assistant."
        case "resolved", "email_support":
            return "Our support team will answer you by email within 2 hours."
        case "resolved", _:
            return "Your request to speak with an agent has been resolved."
    return "I'm connecting you with a member of our support team."


def _minutes(wait: timedelta) -> str:
    minutes = int(wait.total_seconds() // 60)
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"
