"""The conversations read model: its tables and the queries the API serves from them.

Filled by ``projections.conversations.ConversationsProjector`` from the conversation events;
read by the orchestration API ("Get Conversation State", "Handle Unavailable Human Agent").
Every query names the tenant: an id of another tenant reads as not found.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, TypedDict

from psycopg import AsyncConnection, sql

from read_models.migrations import PROJECTOR_TABLES, Migration, ReadModel

TABLES = (
    """
    CREATE TABLE conversations (
        tenant text NOT NULL,
        conversation_id text NOT NULL,
        config_id text NOT NULL,
        config_version integer NOT NULL,
        product_type text NOT NULL,
        channel text NOT NULL,
        user_id text NOT NULL,
        status text NOT NULL CHECK (status IN ('active', 'escalated', 'closed')),
        turn_count integer NOT NULL DEFAULT 0,
        pii_collected jsonb NOT NULL DEFAULT '{}',
        tools_executed jsonb NOT NULL DEFAULT '{}',
        sentiment_trajectory jsonb NOT NULL DEFAULT '[]',
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        last_seq bigint NOT NULL,
        version integer NOT NULL,
        PRIMARY KEY (tenant, conversation_id)
    ) WITH (fillfactor = 70)
    """,
    # Each event updates its conversation row (often several times in one batch) through the
    # primary key. No other index on this table: one on a column that changes per event would make
    # those updates non-HOT, and one on (tenant, ...) alone tempts the planner away from the key
    # while a new schema has no statistics. A list query brings its index with it.
    """
    CREATE TABLE messages (
        tenant text NOT NULL,
        conversation_id text NOT NULL,
        message_id text NOT NULL,
        role text NOT NULL CHECK (role IN ('user', 'assistant')),
        content text,
        tool_calls jsonb,
        intent text,
        confidence double precision,
        sentiment double precision,
        author text NOT NULL,
        "timestamp" timestamptz NOT NULL,
        seq bigint NOT NULL,
        version integer NOT NULL,
        PRIMARY KEY (tenant, conversation_id, message_id)
    )
    """,
    "CREATE INDEX messages_in_order ON messages (tenant, conversation_id, version)",
    """
    CREATE TABLE escalations (
        tenant text NOT NULL,
        escalation_id text NOT NULL,
        conversation_id text NOT NULL,
        trigger text NOT NULL,
        reason text NOT NULL,
        urgency text NOT NULL,
        requested_by text NOT NULL,
        status text NOT NULL CHECK (status IN ('pending', 'assigned', 'agent_unavailable', 'resolved')),
        agent_id text,
        agent_name text,
        fallback_action text,
        queue_position integer,
        resolution text,
        resolved_by text,
        requested_at timestamptz NOT NULL,
        assigned_at timestamptz,
        unavailable_at timestamptz,
        resolved_at timestamptz,
        PRIMARY KEY (tenant, escalation_id)
    )
    """,
    "CREATE INDEX escalations_by_conversation ON escalations (tenant, conversation_id)",
    "CREATE INDEX escalations_open ON escalations (tenant, status, requested_at) WHERE status <> 'resolved'",
    """
    CREATE TABLE surveys (
        tenant text NOT NULL,
        conversation_id text NOT NULL,
        survey_id text NOT NULL,
        questions jsonb NOT NULL,
        responses jsonb,
        nps_score integer,
        nps_category text,
        sent_at timestamptz NOT NULL,
        answered_at timestamptz,
        PRIMARY KEY (tenant, conversation_id, survey_id)
    )
    """,
    "CREATE INDEX surveys_answered ON surveys (tenant, answered_at) WHERE answered_at IS NOT NULL",
)

CONVERSATIONS = ReadModel(
    name="conversations",
    schema="rm_conversations",
    migrations=(
        Migration(1, "projector checkpoint and dead letters", PROJECTOR_TABLES),
        Migration(2, "conversations, messages, escalations, surveys", TABLES),
    ),
)

# How long a place in the human-agent queue is expected to take (the seed: #3 in queue, 15 minutes).
MINUTES_PER_QUEUE_POSITION = 5


# Shapes ---------------------------------------------------------------------------------------


class MessageView(TypedDict):
    message_id: str
    role: str
    content: str | None
    tool_calls: NotRequired[list[dict[str, Any]]]
    timestamp: str


class ToolCount(TypedDict):
    tool: str
    count: int


class ConversationView(TypedDict):
    conversation_id: str
    product_type: str
    thread_id: str
    config_id: str
    config_version: int
    status: str
    channel: str
    user_id: str
    turn_count: int
    messages: list[MessageView]
    pii_collected: dict[str, str]
    tools_executed: list[ToolCount]
    cross_sell_attempted: bool
    cross_sell_accepted: bool
    sentiment_trajectory: list[float]
    checkpoint_ids: list[str]
    created_at: str
    updated_at: str
    position: int


class CallbackOption(TypedDict):
    option: str
    description: str
    estimated_callback_time: NotRequired[str]


class AssignedAgent(TypedDict):
    agent_id: str
    name: str


class EscalationStatusView(TypedDict):
    escalation_id: str
    conversation_id: str
    product_type: str
    status: str
    fallback_action: str | None
    queue_position: int | None
    estimated_wait_time: str | None
    callback_options: list[CallbackOption]
    agent_message: str
    assigned_agent: NotRequired[AssignedAgent]


# Queries --------------------------------------------------------------------------------------


GET_CONVERSATION = """
    SELECT c.product_type, c.config_id, c.config_version, c.status, c.channel, c.user_id, c.turn_count,
        c.pii_collected, c.tools_executed, c.sentiment_trajectory, c.created_at, c.updated_at, c.last_seq,
        m.ids, m.roles, m.contents, m.tool_calls, m.times
    FROM {s}.conversations AS c
    CROSS JOIN LATERAL (
        SELECT array_agg(message_id ORDER BY version) AS ids, array_agg(role ORDER BY version) AS roles,
            array_agg(content ORDER BY version) AS contents, array_agg(tool_calls ORDER BY version) AS tool_calls,
            array_agg("timestamp" ORDER BY version) AS times
        FROM {s}.messages WHERE tenant = c.tenant AND conversation_id = c.conversation_id
    ) AS m
    WHERE c.tenant = %s AND c.conversation_id = %s
"""


def _q(query: str, schema: str) -> sql.Composed:
    return sql.SQL(query).format(s=sql.Identifier(schema))


async def get_conversation(
    conn: AsyncConnection[Any], tenant: str, conversation_id: str, *, schema: str = CONVERSATIONS.schema
) -> ConversationView | None:
    """A conversation with its messages, or None (also for another tenant's conversation).

    One statement, so the conversation and its messages come from one snapshot of the read model.
    """
    cur = await conn.execute(_q(GET_CONVERSATION, schema), [tenant, conversation_id])
    row = await cur.fetchone()
    if row is None:
        return None
    (product_type, config_id, config_version, status, channel, user_id, turn_count, pii, tools, sentiment) = row[:10]
    created_at, updated_at, last_seq, ids, roles, contents, tool_calls, times = row[10:]
    messages = [_message(*m) for m in zip(ids, roles, contents, tool_calls, times, strict=True)] if ids else []
    return {
        "conversation_id": conversation_id,
        "product_type": product_type,
        "thread_id": conversation_id,
        "config_id": config_id,
        "config_version": config_version,
        "status": status,
        "channel": channel,
        "user_id": user_id,
        "turn_count": turn_count,
        "messages": messages,
        "pii_collected": pii,
        "tools_executed": [{"tool": tool, "count": count} for tool, count in sorted(tools.items())],
        "cross_sell_attempted": False,
        "cross_sell_accepted": False,
        "sentiment_trajectory": sentiment,
        "checkpoint_ids": [],
        "created_at": iso(created_at),
        "updated_at": iso(updated_at),
        "position": last_seq,
    }


async def get_escalation_status(
    conn: AsyncConnection[Any], tenant: str, escalation_id: str, *, schema: str = CONVERSATIONS.schema
) -> EscalationStatusView | None:
    """Where an escalation stands, with the options offered while no agent is free."""
    cur = await conn.execute(
        _q(
            "SELECT e.conversation_id, c.product_type, e.status, e.fallback_action, e.queue_position,"
            " e.agent_id, e.agent_name, e.unavailable_at"
            " FROM {s}.escalations e JOIN {s}.conversations c USING (tenant, conversation_id)"
            " WHERE e.tenant = %s AND e.escalation_id = %s",
            schema,
        ),
        [tenant, escalation_id],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    conversation_id, product_type, status, fallback_action, queue_position, agent_id, agent_name, unavailable_at = row
    wait = timedelta(minutes=queue_position * MINUTES_PER_QUEUE_POSITION) if queue_position else None
    view: EscalationStatusView = {
        "escalation_id": escalation_id,
        "conversation_id": conversation_id,
        "product_type": product_type,
        "status": status,
        "fallback_action": fallback_action,
        "queue_position": queue_position,
        "estimated_wait_time": _minutes(wait) if wait is not None and status == "agent_unavailable" else None,
        "callback_options": [],
        "agent_message": _agent_message(status, queue_position, wait, agent_name),
    }
    if status == "agent_unavailable":
        view["callback_options"] = _callback_options(unavailable_at + wait if wait and unavailable_at else None)
    if agent_id is not None:
        view["assigned_agent"] = {"agent_id": agent_id, "name": agent_name or ""}
    return view


def _message(
    message_id: str, role: str, content: str | None, tool_calls: list[dict[str, Any]] | None, timestamp: datetime
) -> MessageView:
    if role == "assistant":
        return {
            "message_id": message_id,
            "role": role,
            "content": content,
            "tool_calls": tool_calls or [],
            "timestamp": iso(timestamp),
        }
    return {"message_id": message_id, "role": role, "content": content, "timestamp": iso(timestamp)}


def _callback_options(callback_at: datetime | None) -> list[CallbackOption]:
    callback: CallbackOption = {
        "option": "schedule_callback",
        "description": "We can call you back when an agent is available",
    }
    if callback_at is not None:
        callback["estimated_callback_time"] = iso(callback_at)
    return [
        callback,
        {
            "option": "email_support",
            "description": "Send your issue via email and we'll respond within 2 hours",
        },
        {"option": "continue_with_ai", "description": "Continue working with our AI assistant"},
    ]


def _agent_message(status: str, queue_position: int | None, wait: timedelta | None, agent_name: str | None) -> str:
    match status:
        case "agent_unavailable":
            place = f"You're #{queue_position} in queue" if queue_position else "You're in the queue"
            estimate = f" with an estimated wait time of {_minutes(wait)}" if wait is not None else ""
            return (
                f"I'm sorry, all our agents are currently assisting other customers. {place}{estimate}. "
                "Would you like to schedule a callback, email us, or continue working with me?"
            )
        case "assigned":
            return f"You're now connected with {agent_name or 'a support agent'}."
        case "resolved":
            return "Your request to speak with an agent has been resolved."
        case _:
            return "I'm connecting you with a member of our support team."


def _minutes(wait: timedelta) -> str:
    minutes = int(wait.total_seconds() // 60)
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` (fractions of a second only when there are any)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
