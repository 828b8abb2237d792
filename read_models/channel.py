"""The channels read model: every reply's delivery, where it stands, and the dead letters.

Filled by ``projections.channel`` from the ``delivery`` aggregates' events. What reads it: a
conversation's deliveries (a dead-lettered reply shows on its conversation), the tenant's dead
letters, and the outbox's sweep for deliveries not finished (a crash, a retry waiting).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool

from read_models.migrations import PROJECTOR_TABLES, Migration, ReadModel

TABLES = (
    """
    CREATE TABLE deliveries (
        tenant text NOT NULL,
        delivery_id text NOT NULL,
        conversation_id text NOT NULL,
        message_id text NOT NULL,
        channel text NOT NULL,
        author text NOT NULL DEFAULT 'ai',
        status text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        provider_message_id text,
        kind text,
        last_error text,
        retry_at timestamptz,
        requested_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        version integer NOT NULL,
        PRIMARY KEY (tenant, delivery_id)
    )
    """,
    "CREATE INDEX deliveries_of_conversation ON deliveries (tenant, conversation_id, requested_at)",
    """CREATE INDEX deliveries_unfinished ON deliveries (updated_at)
       WHERE status IN ('requested', 'attempting', 'retrying')""",
    "CREATE INDEX deliveries_dead ON deliveries (tenant, updated_at) WHERE status = 'dead_lettered'",
)

CHANNELS = ReadModel(
    name="channels",
    schema="rm_channels",
    migrations=(
        Migration(1, "projector checkpoint and dead letters", PROJECTOR_TABLES),
        Migration(2, "deliveries", TABLES),
    ),
)
UNFINISHED = ("requested", "attempting", "retrying")


class DeliveryView(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: str
    conversation_id: str
    message_id: str
    channel: str
    author: str
    status: str
    attempts: int
    provider_message_id: str | None
    kind: str | None
    last_error: str | None
    retry_at: datetime | None
    requested_at: datetime
    updated_at: datetime


class DeliveryList(msgspec.Struct, frozen=True):
    deliveries: list[DeliveryView]


_COLUMNS = (
    "delivery_id, conversation_id, message_id, channel, author, status, attempts, provider_message_id, kind,"
    " last_error, retry_at, requested_at, updated_at"
)


def _view(row: tuple[Any, ...]) -> DeliveryView:
    names = [n.strip() for n in _COLUMNS.split(",")]
    return DeliveryView(**dict(zip(names, row, strict=True)))


class DeliveryQueries:
    def __init__(self, pool: AsyncConnectionPool[Any], schema: str = CHANNELS.schema) -> None:
        self.pool = pool
        self.schema = schema

    async def of_conversation(self, tenant: str, conversation_id: str) -> DeliveryList:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM {self.schema}.deliveries WHERE tenant = %s AND conversation_id = %s"
                " ORDER BY requested_at",
                [tenant, conversation_id],
            )
            return DeliveryList([_view(row) for row in await cur.fetchall()])

    async def dead_letters(self, tenant: str, limit: int = 100) -> DeliveryList:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM {self.schema}.deliveries WHERE tenant = %s AND status = 'dead_lettered'"
                " ORDER BY updated_at DESC LIMIT %s",
                [tenant, limit],
            )
            return DeliveryList([_view(row) for row in await cur.fetchall()])

    async def unfinished(self, *, older_than_seconds: float = 0.0, limit: int = 500) -> list[tuple[str, str]]:
        """Deliveries not finished whose last change is older than ``older_than_seconds``, or whose retry is due."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT tenant, delivery_id FROM {self.schema}.deliveries"
                " WHERE status IN ('requested', 'attempting', 'retrying')"
                " AND (updated_at < now() - make_interval(secs => %s) OR retry_at <= now())"
                " ORDER BY updated_at LIMIT %s",
                [older_than_seconds, limit],
            )
            return [(row[0], row[1]) for row in await cur.fetchall()]
