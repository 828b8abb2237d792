"""The conversations read model: its tables and the queries the API serves from them.

Filled by ``projections.conversation.ConversationsProjector`` from the conversation events;
read by the orchestration API ("Get Conversation State", "Handle Unavailable Human Agent").
Every query names the tenant: an id of another tenant reads as not found.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from domain.errors import ValidationError
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

# Who has a conversation now, cross-sell outcomes, human agents' replies, the customer's fallback
# choice; and the index the list query pages through (on columns an event never changes).
LISTS_AND_PEOPLE = (
    """
    ALTER TABLE conversations ADD COLUMN open_escalation_id text, ADD COLUMN assigned_agent_id text,
        ADD COLUMN assigned_agent_name text, ADD COLUMN cross_sell_attempted boolean NOT NULL DEFAULT false,
        ADD COLUMN cross_sell_accepted boolean NOT NULL DEFAULT false, ADD COLUMN last_message_at timestamptz
    """,
    "CREATE INDEX conversations_listed ON conversations (tenant, created_at DESC, conversation_id DESC)",
    """
    ALTER TABLE messages DROP CONSTRAINT messages_role_check,
        ADD CONSTRAINT messages_role_check CHECK (role IN ('user', 'assistant', 'agent')),
        ADD COLUMN agent_name text
    """,
    "ALTER TABLE escalations ADD COLUMN fallback_option text, ADD COLUMN fallback_chosen_at timestamptz",
)

CONVERSATIONS = ReadModel(
    name="conversations",
    schema="rm_conversations",
    migrations=(
        Migration(1, "projector checkpoint and dead letters", PROJECTOR_TABLES),
        Migration(2, "conversations, messages, escalations, surveys", TABLES),
        Migration(3, "assigned agents, cross-sell, human replies, fallbacks, list index", LISTS_AND_PEOPLE),
    ),
)

# How long a place in the human-agent queue is expected to take (the seed: #3 in queue, 15 minutes).
MINUTES_PER_QUEUE_POSITION = 5


# Shapes ---------------------------------------------------------------------------------------


class Person(msgspec.Struct, frozen=True):
    agent_id: str
    name: str


class MessageView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    message_id: str
    role: str  # user, assistant (the AI), agent (a human agent)
    content: str | None
    timestamp: str
    tool_calls: list[dict[str, Any]] | msgspec.UnsetType = msgspec.UNSET
    agent: Person | msgspec.UnsetType = msgspec.UNSET


class ToolCount(msgspec.Struct, frozen=True):
    tool: str
    count: int


class OpenEscalation(msgspec.Struct, frozen=True, kw_only=True):
    escalation_id: str
    status: str
    assigned_agent: Person | None = None


class ConversationView(msgspec.Struct, frozen=True, kw_only=True):
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
    escalation: OpenEscalation | None
    created_at: str
    updated_at: str
    position: int


class LastMessage(msgspec.Struct, frozen=True):
    role: str
    content: str | None
    timestamp: str


class ConversationSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation in a list."""

    conversation_id: str
    user_id: str
    channel: str
    product_type: str
    config_id: str
    config_version: int
    status: str
    turn_count: int
    open_escalation_id: str | None
    assigned_agent: Person | None
    last_message: LastMessage | None
    created_at: str
    updated_at: str


class ConversationPage(msgspec.Struct, frozen=True):
    conversations: list[ConversationSummary]
    next_cursor: str | None


class ConversationFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What a list of conversations is narrowed to (None: any)."""

    user_id: str | None = None
    status: str | None = None
    channel: str | None = None
    config_id: str | None = None
    config_version: int | None = None
    assigned_agent: str | None = None
    escalated: bool | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


# Queries --------------------------------------------------------------------------------------


GET_CONVERSATION = """
    SELECT c.product_type, c.config_id, c.config_version, c.status, c.channel, c.user_id, c.turn_count,
        c.pii_collected, c.tools_executed, c.sentiment_trajectory, c.created_at, c.updated_at, c.last_seq,
        c.cross_sell_attempted, c.cross_sell_accepted, c.open_escalation_id, c.assigned_agent_id,
        c.assigned_agent_name, e.status,
        m.ids, m.roles, m.contents, m.tool_calls, m.times, m.authors, m.agent_names
    FROM {s}.conversations AS c
    LEFT JOIN {s}.escalations AS e ON e.tenant = c.tenant AND e.escalation_id = c.open_escalation_id
    CROSS JOIN LATERAL (
        SELECT array_agg(message_id) AS ids, array_agg(role) AS roles, array_agg(content) AS contents,
            array_agg(tool_calls) AS tool_calls, array_agg("timestamp") AS times, array_agg(author) AS authors,
            array_agg(agent_name) AS agent_names
        FROM (
            SELECT message_id, role, content, tool_calls, "timestamp", author, agent_name, version
            FROM {s}.messages WHERE tenant = c.tenant AND conversation_id = c.conversation_id
            ORDER BY version
        ) AS in_order
    ) AS m
    WHERE c.tenant = %s AND c.conversation_id = %s
"""
# The messages are put in order once, by the subquery (read in index order), and every array is
# aggregated in that order: an ``ORDER BY`` in each of the seven aggregates sorted them seven times
# (PostgreSQL 15), which made the read take 239 us rather than 185 us here.


def _q(query: str, schema: str) -> sql.Composed:
    return sql.SQL(query).format(s=sql.Identifier(schema))  # type: ignore[arg-type]


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
    created_at, updated_at, last_seq, attempted, accepted, escalation_id, agent_id, agent_name, escalation_status = row[
        10:19
    ]
    ids, roles, contents, tool_calls, times, authors, agent_names = row[19:]
    messages = (
        [_message(*m) for m in zip(ids, roles, contents, tool_calls, times, authors, agent_names, strict=True)]
        if ids
        else []
    )
    escalation = None
    if escalation_id is not None:
        assigned = Person(agent_id, agent_name or "") if agent_id else None
        escalation = OpenEscalation(escalation_id=escalation_id, status=escalation_status, assigned_agent=assigned)
    return ConversationView(
        conversation_id=conversation_id,
        product_type=product_type,
        thread_id=conversation_id,
        config_id=config_id,
        config_version=config_version,
        status=status,
        channel=channel,
        user_id=user_id,
        turn_count=turn_count,
        messages=messages,
        pii_collected=pii,
        tools_executed=[ToolCount(tool, count) for tool, count in sorted(tools.items())],
        cross_sell_attempted=attempted,
        cross_sell_accepted=accepted,
        sentiment_trajectory=sentiment,
        checkpoint_ids=[],
        escalation=escalation,
        created_at=iso(created_at),
        updated_at=iso(updated_at),
        position=last_seq,
    )


LIST_CONVERSATIONS = """
    SELECT c.conversation_id, c.user_id, c.channel, c.product_type, c.config_id, c.config_version, c.status,
        c.turn_count, c.open_escalation_id, c.assigned_agent_id, c.assigned_agent_name, c.created_at, c.updated_at,
        m.role, m.content, m."timestamp"
    FROM {s}.conversations AS c
    LEFT JOIN LATERAL (
        SELECT role, content, "timestamp" FROM {s}.messages
        WHERE tenant = c.tenant AND conversation_id = c.conversation_id ORDER BY version DESC LIMIT 1
    ) AS m ON true
    WHERE c.tenant = %(tenant)s
        AND (%(user_id)s::text IS NULL OR c.user_id = %(user_id)s)
        AND (%(status)s::text IS NULL OR c.status = %(status)s)
        AND (%(channel)s::text IS NULL OR c.channel = %(channel)s)
        AND (%(config_id)s::text IS NULL OR c.config_id = %(config_id)s)
        AND (%(config_version)s::integer IS NULL OR c.config_version = %(config_version)s)
        AND (%(assigned_agent)s::text IS NULL OR c.assigned_agent_id = %(assigned_agent)s)
        AND (%(escalated)s::boolean IS NULL OR (c.open_escalation_id IS NOT NULL) = %(escalated)s)
        AND (%(created_from)s::timestamptz IS NULL OR c.created_at >= %(created_from)s)
        AND (%(created_to)s::timestamptz IS NULL OR c.created_at < %(created_to)s)
        AND (%(after_at)s::timestamptz IS NULL
            OR (c.created_at, c.conversation_id) < (%(after_at)s::timestamptz, %(after_id)s::text))
    ORDER BY c.created_at DESC, c.conversation_id DESC
    LIMIT %(limit)s
"""


async def list_conversations(
    conn: AsyncConnection[Any],
    tenant: str,
    where: ConversationFilter,
    *,
    limit: int = 50,
    cursor: str | None = None,
    schema: str = CONVERSATIONS.schema,
) -> ConversationPage:
    """The tenant's conversations, newest first, ``limit`` a page; ``cursor`` continues a page."""
    after_at, after_id = decode_cursor(cursor) if cursor else (None, None)
    params = {
        **msgspec.structs.asdict(where),
        "tenant": tenant,
        "after_at": after_at,
        "after_id": after_id,
        "limit": limit + 1,
    }
    cur = await conn.execute(_q(LIST_CONVERSATIONS, schema), params)
    rows = await cur.fetchall()
    page = [
        ConversationSummary(
            conversation_id=r[0],
            user_id=r[1],
            channel=r[2],
            product_type=r[3],
            config_id=r[4],
            config_version=r[5],
            status=r[6],
            turn_count=r[7],
            open_escalation_id=r[8],
            assigned_agent=Person(r[9], r[10] or "") if r[9] else None,
            last_message=LastMessage(r[13], r[14], iso(r[15])) if r[13] is not None else None,
            created_at=iso(r[11]),
            updated_at=iso(r[12]),
        )
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return ConversationPage(page, encode_cursor(rows[limit - 1][11], rows[limit - 1][0]) if more else None)


class ConversationQueries:
    """The conversation read model's queries, on a pool (the API's dependency)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def get(self, tenant: str, conversation_id: str) -> ConversationView | None:
        async with self.pool.connection() as conn:
            return await get_conversation(conn, tenant, conversation_id)

    async def list(
        self, tenant: str, where: ConversationFilter, *, limit: int = 50, cursor: str | None = None
    ) -> ConversationPage:
        async with self.pool.connection() as conn:
            return await list_conversations(conn, tenant, where, limit=limit, cursor=cursor)


def encode_cursor(at: datetime, key: str) -> str:
    """An opaque position in a list ordered by (time, key), newest first."""
    return base64.urlsafe_b64encode(msgspec.json.encode([at.isoformat(), key])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, key = msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), str(key)
    except (ValueError, TypeError, msgspec.DecodeError) as e:
        raise ValidationError("not a cursor this list gave", fields={"cursor": "not a cursor this list gave"}) from e


def _message(
    message_id: str,
    role: str,
    content: str | None,
    tool_calls: list[dict[str, Any]] | None,
    timestamp: datetime,
    author: str,
    agent_name: str | None,
) -> MessageView:
    match role:
        case "assistant":
            return MessageView(
                message_id=message_id, role=role, content=content, timestamp=iso(timestamp), tool_calls=tool_calls or []
            )
        case "agent":
            agent = Person(author.removeprefix("human:"), agent_name or "")
            return MessageView(message_id=message_id, role=role, content=content, timestamp=iso(timestamp), agent=agent)
    return MessageView(message_id=message_id, role=role, content=content, timestamp=iso(timestamp))


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` (fractions of a second only when there are any)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
