"""``python -m projections.analytics run|rebuild|status``: the analytics projector and its admin commands.

Settings come from the environment: ``NATS_URL``, ``PARLEY_STREAM``, ``PARLEY_DATA`` (the event
store) and ``CLICKHOUSE_URL`` (unset: chDB under ``$PARLEY_DATA/chdb``), ``PARLEY_ANALYTICS_DB``,
``PARLEY_ANALYTICS_BATCH`` (``projections.analytics.sink.AnalyticsSettings``). With chDB only one
process may open the store: stop the platform (or its analytics runner) before a rebuild.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator

import structlog

from infra.logs import configure_logging
from projections.analytics.runner import AnalyticsRunner, rebuild
from projections.analytics.sink import AnalyticsSettings, AnalyticsSink
from streams.factory import OpenStore, StoreSettings, open_store

log = structlog.get_logger("projections.analytics")


@contextlib.asynccontextmanager
async def _opened(settings: AnalyticsSettings) -> AsyncIterator[tuple[OpenStore, AnalyticsSink]]:
    store = await open_store(StoreSettings.from_env(), name="parley-analytics")
    try:
        sink = AnalyticsSink.open(settings)
        try:
            yield store, sink
        finally:
            sink.close()
    finally:
        await store.close()


async def _run(settings: AnalyticsSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with _opened(settings) as (store, sink):
        runner = AnalyticsRunner(store.store, sink, batch=settings.batch)
        log.info("analytics projector running", database=settings.database, batch=settings.batch)
        try:
            await runner.run(stop)
        finally:
            await runner.shutdown()
    log.info("analytics projector stopped")


async def _rebuild(settings: AnalyticsSettings) -> None:
    async with _opened(settings) as (store, sink):
        report = await rebuild(store.store, sink, batch=settings.batch)
        counts = sink.counts()
    print(
        f"rebuilt analytics: {report.events:,} events in {report.commits:,} commits, {report.seconds:.2f} s "
        f"({report.events_per_second:,.0f} events/s); live at sequence {report.checkpoint}; "
        + ", ".join(f"{table} {n:,}" for table, n in counts.items())
    )


async def _status(settings: AnalyticsSettings) -> None:
    async with _opened(settings) as (store, sink):
        runner = AnalyticsRunner(store.store, sink)
        try:
            status = await runner.status()
            status["rows"] = sink.counts() if status["checkpoint"] else {}
        finally:
            await runner.shutdown()
    print(json.dumps(status))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m projections.analytics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="project the stream into ClickHouse until interrupted")
    commands.add_parser("rebuild", help="drop the analytics tables and replay the stream into them")
    commands.add_parser("status", help="checkpoint, lag and row counts")
    args = parser.parse_args(argv)

    configure_logging()
    settings = AnalyticsSettings.from_env()
    match args.command:
        case "run":
            asyncio.run(_run(settings))
        case "rebuild":
            asyncio.run(_rebuild(settings))
        case "status":
            asyncio.run(_status(settings))


if __name__ == "__main__":
    main()
