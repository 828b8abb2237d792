"""The demo tools' data: a ``demo`` schema in PostgreSQL, seeded the same way every time, per tenant.

``await setup_demo_data(conn, tenants=("demo",))`` creates ``demo.orders``, ``demo.refunds``,
``demo.tickets``, ``demo.callbacks``, ``demo.emails`` (tracking emails sent) and ``demo.upgrades``
(cross-sell offers accepted) if missing, and (re)seeds the same orders for each tenant: every row
has a ``tenant``, and the demo tools read and write their context's tenant's rows only.
``reset=True`` first deletes those tenants' rows (their orders, refunds, tickets, callbacks,
emails and upgrades; other tenants' stay), and numbers refunds and the rest from 1 again when no
tenant has any left. A ``demo`` schema of the layout
before tenants is dropped and made again (it is demo data). ``python -m agents.demo_data
[DATABASE_URL] [TENANT ...]`` does it from the shell.

Named orders the configs and scenarios rely on: ``ORD-78945`` (in transit, arriving 2025-10-15,
john@example.com), ``ORD-12345`` (delivered 2025-09-30, maria@example.com), ``ORD-55555``
(processing, not shipped, li@example.com), ``ORD-99999`` (cancelled, sam@example.com);
``ORD-10001`` to ``ORD-10040`` follow from a fixed random seed.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import Sequence
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import structlog

log = structlog.get_logger(__name__)

SEED = 7
GENERATED = 40
DEFAULT_TENANTS = ("demo",)
LOCK = 0x70A4_1E7D  # pg_advisory_xact_lock key: API processes starting together set up one at a time

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS demo;
CREATE TABLE IF NOT EXISTS demo.orders (
    tenant text NOT NULL,
    order_id text NOT NULL,
    customer_email text NOT NULL,
    email text NOT NULL,
    product text NOT NULL,
    total numeric(10, 2) NOT NULL,
    currency text NOT NULL DEFAULT 'USD',
    status text NOT NULL,
    carrier text,
    tracking_number text,
    expected_delivery date,
    ordered_on date NOT NULL,
    PRIMARY KEY (tenant, order_id)
);
CREATE SEQUENCE IF NOT EXISTS demo.refund_seq;
CREATE TABLE IF NOT EXISTS demo.refunds (
    refund_id text PRIMARY KEY DEFAULT 'RF-' || lpad(nextval('demo.refund_seq')::text, 6, '0'),
    tenant text NOT NULL,
    order_id text NOT NULL,
    amount numeric(10, 2) NOT NULL CHECK (amount > 0),
    reason text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    conversation_id text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant, order_id) REFERENCES demo.orders
);
CREATE SEQUENCE IF NOT EXISTS demo.ticket_seq;
CREATE TABLE IF NOT EXISTS demo.tickets (
    ticket_id text PRIMARY KEY DEFAULT 'TCK-' || lpad(nextval('demo.ticket_seq')::text, 6, '0'),
    tenant text NOT NULL,
    conversation_id text NOT NULL DEFAULT '',
    user_id text NOT NULL DEFAULT '',
    subject text NOT NULL,
    description text NOT NULL,
    priority text NOT NULL DEFAULT 'normal',
    status text NOT NULL DEFAULT 'open',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE IF NOT EXISTS demo.callback_seq;
CREATE TABLE IF NOT EXISTS demo.callbacks (
    callback_id text PRIMARY KEY DEFAULT 'CB-' || lpad(nextval('demo.callback_seq')::text, 6, '0'),
    tenant text NOT NULL,
    conversation_id text NOT NULL DEFAULT '',
    user_id text NOT NULL DEFAULT '',
    phone text NOT NULL,
    preferred_time text NOT NULL,
    status text NOT NULL DEFAULT 'scheduled',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE IF NOT EXISTS demo.email_seq;
CREATE TABLE IF NOT EXISTS demo.emails (
    email_id text PRIMARY KEY DEFAULT 'EM-' || lpad(nextval('demo.email_seq')::text, 6, '0'),
    tenant text NOT NULL,
    order_id text NOT NULL,
    address text NOT NULL,
    conversation_id text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE IF NOT EXISTS demo.upgrade_seq;
CREATE TABLE IF NOT EXISTS demo.upgrades (
    upgrade_id text PRIMARY KEY DEFAULT 'UP-' || lpad(nextval('demo.upgrade_seq')::text, 6, '0'),
    tenant text NOT NULL,
    conversation_id text NOT NULL DEFAULT '',
    user_id text NOT NULL DEFAULT '',
    product text NOT NULL,
    order_id text,
    status text NOT NULL DEFAULT 'active',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, conversation_id, product)
);
"""
TABLES = ("upgrades", "emails", "refunds", "tickets", "callbacks", "orders")
SEQUENCES = ("refund_seq", "ticket_seq", "callback_seq", "email_seq", "upgrade_seq")

NAMED: list[dict[str, Any]] = [
    {
        "order_id": "ORD-78945", "email": "john@example.com", "product": "Wireless Headphones",
        "total": Decimal("129.99"), "status": "in_transit", "carrier": "UPS",
        "tracking_number": "1Z999AA10123456784", "expected_delivery": date(2025, 10, 15),
        "ordered_on": date(2025, 10, 9),
    },
    {
        "order_id": "ORD-12345", "email": "maria@example.com", "product": "Smart Watch",
        "total": Decimal("249.00"), "status": "delivered", "carrier": "FedEx",
        "tracking_number": "7489 2211 0043", "expected_delivery": date(2025, 9, 30), "ordered_on": date(2025, 9, 24),
    },
    {
        "order_id": "ORD-55555", "email": "li@example.com", "product": "Standing Desk",
        "total": Decimal("499.00"), "status": "processing", "carrier": None,
        "tracking_number": None, "expected_delivery": date(2025, 10, 24), "ordered_on": date(2025, 10, 10),
    },
    {
        "order_id": "ORD-99999", "email": "sam@example.com", "product": "Coffee Grinder",
        "total": Decimal("89.50"), "status": "cancelled", "carrier": None,
        "tracking_number": None, "expected_delivery": None, "ordered_on": date(2025, 10, 1),
    },
]  # fmt: skip

PRODUCTS = ["USB-C Hub", "Mechanical Keyboard", "4K Monitor", "Laptop Stand", "Webcam", "Desk Lamp", "Phone Case"]
STATUSES = ["processing", "shipped", "in_transit", "delivered", "delivered"]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS"]


def generated_orders(seed: int = SEED, count: int = GENERATED) -> list[dict[str, Any]]:
    """The same ``count`` orders for the same ``seed``."""
    rng = random.Random(seed)
    orders = []
    for number in range(10001, 10001 + count):
        status = rng.choice(STATUSES)
        ordered = date(2025, 9, 1) + timedelta(days=rng.randrange(40))
        shipped = status != "processing"
        orders.append(
            {
                "order_id": f"ORD-{number}",
                "email": f"customer{number}@example.com",
                "product": rng.choice(PRODUCTS),
                "total": Decimal(rng.randrange(1500, 60000)) / 100,
                "status": status,
                "carrier": rng.choice(CARRIERS) if shipped else None,
                "tracking_number": f"TRK{rng.randrange(10**9, 10**10)}" if shipped else None,
                "expected_delivery": ordered + timedelta(days=rng.randrange(3, 10)),
                "ordered_on": ordered,
            }
        )
    return orders


def all_orders() -> list[dict[str, Any]]:
    return [*NAMED, *generated_orders()]


async def setup_demo_data(conn: Any, *, tenants: Sequence[str] = DEFAULT_TENANTS, reset: bool = False) -> int:
    """Create the ``demo`` schema and seed the orders of each tenant on an ``AsyncConnection``;
    returns the order count of one tenant."""
    orders = all_orders()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
        if await _before_tenants(conn):
            log.warning("demo_data.relayout", reason="the demo schema predates tenants; made again")
            await conn.execute("DROP SCHEMA demo CASCADE")
        await conn.execute(SCHEMA)
        if reset:
            for table in TABLES:  # dependents first
                await conn.execute(f"DELETE FROM demo.{table} WHERE tenant = ANY(%s)", (list(tenants),))
            if not await _rows_left(conn):
                for sequence in SEQUENCES:
                    await conn.execute(f"ALTER SEQUENCE demo.{sequence} RESTART WITH 1")
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO demo.orders (tenant, order_id, customer_email, email, product, total, status, carrier,"
                " tracking_number, expected_delivery, ordered_on)"
                " VALUES (%(tenant)s, %(order_id)s, %(email)s, %(email)s, %(product)s, %(total)s, %(status)s,"
                " %(carrier)s, %(tracking_number)s, %(expected_delivery)s, %(ordered_on)s)"
                " ON CONFLICT (tenant, order_id) DO UPDATE SET status = EXCLUDED.status,"
                " expected_delivery = EXCLUDED.expected_delivery, tracking_number = EXCLUDED.tracking_number",
                [{**order, "tenant": tenant} for tenant in dict.fromkeys(tenants) for order in orders],
            )
    log.info("demo_data.ready", orders=len(orders), tenants=list(tenants), reset=reset)
    return len(orders)


async def _rows_left(conn: Any) -> bool:
    """Any tenant has a refund, ticket, callback, email or upgrade (their ids must not be given again)."""
    async with conn.cursor() as cur:
        await cur.execute(" UNION ALL ".join(f"(SELECT 1 FROM demo.{table} LIMIT 1)" for table in TABLES[:-1]))
        return await cur.fetchone() is not None


async def _before_tenants(conn: Any) -> bool:
    """The ``demo`` schema exists in its layout without tenants."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT count(*) FILTER (WHERE column_name = 'tenant'), count(*) FROM information_schema.columns"
            " WHERE table_schema = 'demo' AND table_name = 'orders'"
        )
        with_tenant, columns = await cur.fetchone()
    return bool(columns) and not with_tenant


async def _main(url: str, tenants: Sequence[str]) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url) as conn:
        count = await setup_demo_data(conn, tenants=tenants, reset=True)
    print(f"demo schema ready: {count} orders for each of {', '.join(tenants)}")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DATABASE_URL", "")
    if not target:
        sys.exit("usage: python -m agents.demo_data DATABASE_URL [TENANT ...] (or set DATABASE_URL)")
    asyncio.run(_main(target, sys.argv[2:] or DEFAULT_TENANTS))
