"""``python -m agents``: the agent runtime as a process of its own (``AgentProcessSettings``).

It answers the conversations of the partitions it holds, sharing them with every other runtime on
the same work stream (the API processes' own runtimes included, when ``PARLEY_INLINE_AGENTS`` is
on), until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from agents.process import AgentProcess
from agents.settings import AgentProcessSettings
from agents.tools import demo_registry
from commands.config import ConfigCatalog
from commands.runner import CommandRunner
from domain import config as a
from domain import conversation as c
from domain import escalation as p
from infra import heap
from infra.logs import configure_logging
from infra.loop import run as run_loop
from streams.factory import open_store

log = structlog.get_logger(__name__)


async def serve(
    settings: AgentProcessSettings, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None
) -> None:
    """Answer until ``stop`` is set (by default: until SIGTERM or SIGINT); ``ready`` once answering."""
    opened = await open_store(settings.store, name="parley-agents")
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url, min_size=2, max_size=10, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True, timeout=30)
    runner = CommandRunner.for_aggregates(
        opened.store,
        [c.DECIDER, p.DECIDER, a.DECIDER],
        snapshots=opened.snapshots,
        keys=opened.keys,
        snapshot_every=opened.settings.snapshot_every,
    )
    catalog = ConfigCatalog(runner)
    await catalog.follow(opened.store)
    process = AgentProcess(
        opened.store,
        runner,
        catalog,
        demo_registry(pool.connection),
        settings.keys,
        settings.agent,
        database_url=settings.database_url,
    )
    own_signals = stop is None
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        await process.start(pool, demo_tenants=settings.demo_tenants)
        if own_signals:
            heap.settle()  # a process of its own: its start-up heap frozen, young collections rarer
        log.info("agent runtime started", partitions=settings.agent.partitions)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await process.close()
        await catalog.close()
        await pool.close()
        await opened.close()


def main() -> None:
    configure_logging()
    run_loop(serve(AgentProcessSettings.from_env()))


if __name__ == "__main__":
    main()
