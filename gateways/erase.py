"""``./parley erase TENANT CUSTOMER``: erase a customer against the running platform.

``python -m gateways.erase TENANT CUSTOMER`` does what ``POST /api/v1/customers/{id}/erase`` does
(``commands.customer.CustomerErasure``, assembled by ``gateways.http.customer.CustomerDesk``), from
the environment the platform's recipes read (``NATS_URL``, ``PARLEY_DATA``, ``DATABASE_URL``,
``REDIS_URL``), as the operator (actor ``cli:<user>``). It prints the erasure as JSON; running it
again prints the same erasure.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from commands.runner import CommandRunner
from domain import conversation as c
from domain import customer as u
from gateways.http.customer import CustomerDesk, _view
from streams.factory import StoreSettings, open_store


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set: run it through ./parley (the platform's run/env), or set it")
    return value


async def erase(tenant: str, customer_id: str) -> dict[str, Any]:
    database_url, redis_url = _required("DATABASE_URL"), _required("REDIS_URL")
    opened = await open_store(StoreSettings.from_env(), name="parley-erase")
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
    )
    redis = Redis.from_url(redis_url)
    try:
        await pool.open(wait=True, timeout=30)
        runner = CommandRunner.for_aggregates(
            opened.store,
            [c.DECIDER, u.DECIDER],
            snapshots=opened.snapshots,
            keys=opened.keys,
            snapshot_every=opened.settings.snapshot_every,
        )
        desk = CustomerDesk.assemble(runner, opened.store, opened.keys, pool, redis)
        erased = await desk.erasure.erase(tenant, customer_id, actor=f"cli:{getpass.getuser()}")
        result: dict[str, Any] = msgspec.to_builtins(_view(erased))
        return result
    finally:
        await redis.aclose()
        await pool.close()
        await opened.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parley erase", description="Erase a customer from every store.")
    parser.add_argument("tenant")
    parser.add_argument("customer_id")
    args = parser.parse_args(argv)
    result = asyncio.run(erase(args.tenant, args.customer_id))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
