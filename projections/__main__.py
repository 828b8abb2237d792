"""``python -m projections run|rebuild NAME|status|migrate``: the projector process and its admin commands.

Settings come from the environment: ``NATS_URL``, ``PARLEY_STREAM``, ``PARLEY_DATA`` (the event
store, ``streams.factory.StoreSettings``) and ``DATABASE_URL`` (``projections.settings``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from infra.logs import configure_logging
from projections import registry
from projections.rebuild import rebuild
from projections.runner import ProjectorRunner
from projections.settings import ProjectionSettings
from projections.status import metrics_text, projector_status
from streams.factory import OpenStore, StoreSettings, open_store

log = structlog.get_logger("projections")


@contextlib.asynccontextmanager
async def _opened(settings: ProjectionSettings) -> AsyncIterator[tuple[OpenStore, AsyncConnectionPool[Any]]]:
    store = await open_store(StoreSettings.from_env(), name="parley-projections")
    size = max(settings.pool_size, len(registry.projectors()) + 2)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(settings.database_url, min_size=1, max_size=size, open=False)
    try:
        await pool.open(wait=True, timeout=30)
        yield store, pool
    finally:
        await pool.close()
        await store.close()


async def _run(settings: ProjectionSettings, names: list[str]) -> None:
    chosen = [registry.projector(n) for n in names] if names else registry.projectors()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with _opened(settings) as (store, pool):
        await registry.migrate(pool, chosen)
        runners = [
            ProjectorRunner(p, store.store, pool, batch=settings.batch, linger=settings.linger_ms / 1000)
            for p in chosen
        ]
        log.info("projectors running", projectors=[p.name for p in chosen])
        await asyncio.gather(*(runner.run(stop) for runner in runners))
    log.info("projectors stopped")


async def _rebuild(settings: ProjectionSettings, name: str) -> None:
    projector = registry.projector(name)
    async with _opened(settings) as (store, pool):
        report = await rebuild(projector, store.store, pool)
    print(
        f"rebuilt {report.name}: {report.events:,} events in {report.commits:,} commits, {report.seconds:.2f} s "
        f"({report.events_per_second:,.0f} events/s); {report.dead_letters} dead letters; "
        f"live at sequence {report.checkpoint}; projector held {report.locked_ms:.1f} ms for the swap"
    )


async def _status(settings: ProjectionSettings, metrics: bool) -> None:
    async with _opened(settings) as (store, pool):
        statuses = [await projector_status(pool, store.store, p) for p in registry.projectors()]
    if metrics:
        sys.stdout.write(metrics_text(statuses))
    else:
        for status in statuses:
            print(json.dumps(status))


async def _migrate(settings: ProjectionSettings) -> None:
    async with _opened(settings) as (_, pool):
        for name, versions in (await registry.migrate(pool)).items():
            print(f"{name}: applied {versions or 'nothing (up to date)'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m projections", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run projectors until interrupted")
    run.add_argument("names", nargs="*", help="projectors to run (default: all)")
    again = commands.add_parser("rebuild", help="rebuild a read model from the first event, without downtime")
    again.add_argument("name")
    status = commands.add_parser("status", help="checkpoint, lag and dead letters of each projector")
    status.add_argument("--metrics", action="store_true", help="Prometheus text format")
    commands.add_parser("migrate", help="create or update the read models' schemas")
    args = parser.parse_args(argv)

    configure_logging()
    settings = ProjectionSettings.from_env()
    match args.command:
        case "run":
            asyncio.run(_run(settings, args.names))
        case "rebuild":
            asyncio.run(_rebuild(settings, args.name))
        case "status":
            asyncio.run(_status(settings, args.metrics))
        case "migrate":
            asyncio.run(_migrate(settings))


if __name__ == "__main__":
    main()
