"""The API on the real stack, for tests and benchmarks: NATS, PostgreSQL and Redis, no mocks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from litestar.testing import AsyncTestClient

from gateways.http.app import create_app
from gateways.http.settings import ApiSettings
from infra.tokens import make_token
from streams.factory import StoreSettings

SECRET = "test-secret-" + "x" * 32


def settings_for(
    nats_url: str, database_url: str, redis_url: str, data_dir: Path, stream: str, **overrides: Any
) -> ApiSettings:
    store = StoreSettings(nats_url=nats_url, data_dir=data_dir, stream=stream)
    overrides.setdefault("demo_tenants", ("acme", "globex"))
    if overrides.get("run_agents") is False:
        overrides.setdefault("reply_wait_seconds", 0)  # nobody answers: do not wait for a reply
    return ApiSettings(jwt_secret=SECRET, database_url=database_url, redis_url=redis_url, store=store, **overrides)


def bearer(tenant: str = "acme", roles: tuple[str, ...] = ("customer",), subject: str = "user-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(SECRET, subject=subject, tenant=tenant, roles=list(roles))}"}


@asynccontextmanager
async def api_client(settings: ApiSettings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings), timeout=30) as client:
        yield client


@asynccontextmanager
async def served_app(settings: ApiSettings) -> AsyncIterator[int]:
    """The API served by uvicorn on a free local port (websockets too), as ``./parley up`` serves it.

    Yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on", ws="websockets-sansio")
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve(sockets=[sock]))
    while not served.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield sock.getsockname()[1]
    finally:
        served.should_exit = True
        await asyncio.wait_for(task, 30)
