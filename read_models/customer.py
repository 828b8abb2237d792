"""A customer across the read models: what they have (for an erasure), and all of it as one
document (their GDPR access request).

No tables of its own: it reads the conversations' and the calls' read models by the customer's id
(``user_id``). The export holds what those models show: their conversations with every message,
their escalations, their calls with their transcripts. Once the customer is erased it shows what
is left: ``[erased]`` where their words were.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from domain.customer import CustomerStreams
from read_models.call import CALLS, CallView, get_call
from read_models.conversation import CONVERSATIONS, ConversationView, get_conversation


class EscalationRecord(msgspec.Struct, frozen=True, kw_only=True):
    escalation_id: str
    conversation_id: str
    trigger: str
    reason: str
    urgency: str
    status: str
    requested_at: str
    resolved_at: str | None = None
    resolution: str | None = None


class CustomerExport(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the platform shows about one customer, as one JSON document."""

    tenant: str
    customer_id: str
    exported_at: str
    conversations: list[ConversationView]
    escalations: list[EscalationRecord]
    calls: list[CallView]


def _q(query: str) -> sql.Composed:
    return sql.SQL(query).format(c=sql.Identifier(CONVERSATIONS.schema), v=sql.Identifier(CALLS.schema))


CONVERSATION_IDS = (
    "SELECT conversation_id FROM {c}.conversations WHERE tenant = %s AND user_id = %s ORDER BY created_at"
)
CALL_IDS = "SELECT call_id FROM {v}.calls WHERE tenant = %s AND user_id = %s ORDER BY initiated_at"
ESCALATIONS = """
    SELECT escalation_id, conversation_id, trigger, reason, urgency, status, requested_at, resolved_at, resolution
    FROM {c}.escalations WHERE tenant = %s AND conversation_id = ANY(%s) ORDER BY requested_at
"""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def customer_streams(conn: AsyncConnection[Any], tenant: str, customer_id: str) -> CustomerStreams:
    conversations = await (await conn.execute(_q(CONVERSATION_IDS), [tenant, customer_id])).fetchall()
    calls = await (await conn.execute(_q(CALL_IDS), [tenant, customer_id])).fetchall()
    return CustomerStreams(conversations=[r[0] for r in conversations], calls=[r[0] for r in calls])


async def customer_export(
    conn: AsyncConnection[Any], tenant: str, customer_id: str, *, recording_url: str
) -> CustomerExport:
    found = await customer_streams(conn, tenant, customer_id)
    conversations = [
        view for cid in found.conversations if (view := await get_conversation(conn, tenant, cid)) is not None
    ]
    rows = await (await conn.execute(_q(ESCALATIONS), [tenant, found.conversations])).fetchall()
    escalations = [
        EscalationRecord(
            escalation_id=r[0],
            conversation_id=r[1],
            trigger=r[2],
            reason=r[3],
            urgency=r[4],
            status=r[5],
            requested_at=_iso(r[6]) or "",
            resolved_at=_iso(r[7]),
            resolution=r[8],
        )
        for r in rows
    ]
    calls = [
        call
        for call_id in found.calls
        if (call := await get_call(conn, tenant, call_id, recording_url=recording_url)) is not None
    ]
    return CustomerExport(
        tenant=tenant,
        customer_id=customer_id,
        exported_at=_iso(datetime.now(UTC)) or "",
        conversations=conversations,
        escalations=escalations,
        calls=calls,
    )


class CustomerQueries:
    """The customer's queries over a connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def streams(self, tenant: str, customer_id: str) -> CustomerStreams:
        async with self.pool.connection() as conn:
            return await customer_streams(conn, tenant, customer_id)

    async def export(self, tenant: str, customer_id: str, *, recording_url: str) -> CustomerExport:
        async with self.pool.connection() as conn:
            return await customer_export(conn, tenant, customer_id, recording_url=recording_url)
