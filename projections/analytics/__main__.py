"""``python -m projections.analytics run|rebuild|status``: the analytics projector and its admin commands.

Settings come from the environment: ``NATS_URL``, ``PARLEY_STREAM``, ``PARLEY_DATA`` (the event
store) and ``CLICKHOUSE_URL`` (unset: chDB under ``$PARLEY_DATA/chdb``), ``PARLEY_ANALYTICS_DB``,
``PARLEY_ANALYTICS_BATCH`` (``projections.settings.AnalyticsSettings``).

``rebuild`` runs here, with nothing to pause (``projections.analytics.rebuild``): with chDB, when
no other process has the store open. The running platform's analytics are rebuilt inside it:
``just projections-rebuild analytics`` (``POST /api/v1/admin/projections/analytics/rebuild``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import structlog

from infra import heap
from infra.logs import configure_logging
from infra.loop import run as run_loop
from projections.analytics.projection import analytics_runner
from projections.analytics.rebuild import RebuildReport, rebuild
from projections.analytics.service import projector_status
from projections.analytics.sink import AnalyticsSink
from projections.settings import AnalyticsSettings
from streams.errors import UnavailableError
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
        runner = analytics_runner(store.store, sink, batch=settings.batch)
        heap.settle()
        log.info("analytics projector running", database=settings.database, batch=settings.batch)
        try:
            await runner.run(stop)
        finally:
            await runner.shutdown()
    log.info("analytics projector stopped")


async def rebuild_here(settings: AnalyticsSettings) -> None:
    """Rebuild in this process (no runner to pause) and print the report."""
    try:
        sink = AnalyticsSink.open(settings)  # fails when another process has the chDB store
    except UnavailableError as e:
        raise SystemExit(
            f"{e}; to rebuild the running platform's analytics: just projections-rebuild analytics"
        ) from None
    try:
        store = await open_store(StoreSettings.from_env(), name="parley-analytics")
        try:
            report = await rebuild(store.store, settings)
        finally:
            await store.close()
        counts = sink.counts()
    finally:
        sink.close()
    print(describe(report) + "; " + ", ".join(f"{table} {n:,}" for table, n in counts.items()))


def describe(report: RebuildReport) -> str:
    return (
        f"rebuilt analytics ({report.database}): {report.events:,} events in {report.commits:,} commits, "
        f"{report.seconds:.2f} s ({report.events_per_second:,.0f} events/s); {report.dead_letters} dead letters; "
        f"live at sequence {report.checkpoint}; projector held {report.paused_ms:.1f} ms for the swap"
    )


async def _status(settings: AnalyticsSettings) -> None:
    async with _opened(settings) as (store, sink):
        status: dict[str, Any] = dict(await projector_status(store.store, sink))
        status["rows"] = sink.counts() if status["checkpoint"] else {}
    print(json.dumps(status))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m projections.analytics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="project the stream into ClickHouse until interrupted")
    commands.add_parser("rebuild", help="replay the stream into shadow tables, then swap them in (store not in use)")
    commands.add_parser("status", help="checkpoint, lag and row counts")
    args = parser.parse_args(argv)

    configure_logging()
    settings = AnalyticsSettings.from_env()
    match args.command:
        case "run":
            run_loop(_run(settings))
        case "rebuild":
            run_loop(rebuild_here(settings))
        case "status":
            run_loop(_status(settings))


if __name__ == "__main__":
    main()
