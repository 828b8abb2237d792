"""The demo tools' data: a ``demo`` schema in PostgreSQL, seeded the same way every time.

``await setup_demo_data(conn)`` creates ``demo.orders``, ``demo.refunds``, ``demo.tickets`` and
``demo.callbacks`` if missing and (re)seeds the orders; ``reset=True`` empties every table first.
``python -m agents.demo_data [DATABASE_URL]`` does it from the shell.

Named orders the configs and scenarios rely on: ``ORD-78945`` (in transit, arriving 2025-10-15),
``ORD-12345`` (delivered), ``ORD-55555`` (processing, not shipped), ``ORD-99999`` (cancelled);
``ORD-10001`` to ``ORD-10040`` follow from a fixed random seed.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import structlog

log = structlog.get_logger(__name__)

SEED = 7
GENERATED = 40

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS demo;
CREATE TABLE IF NOT EXISTS demo.orders (
    order_id text PRIMARY KEY,
    customer_email text NOT NULL,
    email text NOT NULL,
    product text NOT NULL,
    total numeric(10, 2) NOT NULL,
    currency text NOT NULL DEFAULT 'USD',
    status text NOT NULL,
    carrier text,
    tracking_number text,
    expected_delivery date,
    ordered_on date NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS demo.refund_seq;
CREATE TABLE IF NOT EXISTS demo.refunds (
    refund_id text PRIMARY KEY DEFAULT 'RF-' || lpad(nextval('demo.refund_seq')::text, 6, '0'),
    order_id text NOT NULL REFERENCES demo.orders,
    amount numeric(10, 2) NOT NULL CHECK (amount > 0),
    reason text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE IF NOT EXISTS demo.ticket_seq;
CREATE TABLE IF NOT EXISTS demo.tickets (
    ticket_id text PRIMARY KEY DEFAULT 'TCK-' || lpad(nextval('demo.ticket_seq')::text, 6, '0'),
    subject text NOT NULL,
    description text NOT NULL,
    priority text NOT NULL DEFAULT 'normal',
    status text NOT NULL DEFAULT 'open',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE IF NOT EXISTS demo.callback_seq;
CREATE TABLE IF NOT EXISTS demo.callbacks (
    callback_id text PRIMARY KEY DEFAULT 'CB-' || lpad(nextval('demo.callback_seq')::text, 6, '0'),
    phone text NOT NULL,
    preferred_time text NOT NULL,
    status text NOT NULL DEFAULT 'scheduled',
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

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


async def setup_demo_data(conn: Any, *, reset: bool = False) -> int:
    """Create the ``demo`` schema and seed its orders on an ``AsyncConnection``; returns the order count."""
    async with conn.transaction():
        await conn.execute(SCHEMA)
        if reset:
            await conn.execute("TRUNCATE demo.refunds, demo.tickets, demo.callbacks, demo.orders")
            for sequence in ("refund_seq", "ticket_seq", "callback_seq"):
                await conn.execute(f"ALTER SEQUENCE demo.{sequence} RESTART WITH 1")
        orders = all_orders()
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO demo.orders (order_id, customer_email, email, product, total, status, carrier,"
                " tracking_number, expected_delivery, ordered_on)"
                " VALUES (%(order_id)s, %(email)s, %(email)s, %(product)s, %(total)s, %(status)s, %(carrier)s,"
                " %(tracking_number)s, %(expected_delivery)s, %(ordered_on)s)"
                " ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status,"
                " expected_delivery = EXCLUDED.expected_delivery, tracking_number = EXCLUDED.tracking_number",
                orders,
            )
    log.info("demo_data.ready", orders=len(orders), reset=reset)
    return len(orders)


async def _main(url: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url) as conn:
        count = await setup_demo_data(conn, reset=True)
    print(f"demo schema ready: {count} orders")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DATABASE_URL", "")
    if not target:
        sys.exit("usage: python -m agents.demo_data DATABASE_URL (or set DATABASE_URL)")
    asyncio.run(_main(target))
