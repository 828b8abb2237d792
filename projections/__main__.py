"""``python -m projections run|rebuild NAME|status|migrate``: the projector process and its admin commands.

Settings come from the environment: ``NATS_URL``, ``PARLEY_STREAM``, ``PARLEY_DATA`` (the event
store, ``streams.factory.StoreSettings``) and ``DATABASE_URL`` (``projections.settings``).

``rebuild analytics`` asks the running API to rebuild its analytics tables
(``POST /api/v1/admin/projections/analytics/rebuild`` at ``PARLEY_API_URL``, default
``http://127.0.0.1:$PARLEY_API_PORT``, with ``PARLEY_TOKEN`` or a platform engineer's token signed
with the data directory's secret): with chDB the API process has the store, and its projector is
the one to pause. When no API answers, the rebuild runs here (``projections.analytics.rebuild``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import structlog
from psycopg_pool import AsyncConnectionPool

from infra import heap
from infra.logs import configure_logging
from infra.loop import run as run_loop
from projections import registry
from projections.rebuild import rebuild
from projections.settings import AnalyticsSettings, ProjectionSettings
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
            registry.runner(p, store.store, pool, batch=settings.batch, linger=settings.linger_ms / 1000)
            for p in chosen
        ]
        heap.settle()
        log.info("projectors running", projectors=[p.name for p in chosen])
        await asyncio.gather(*(runner.run(stop) for runner in runners))
    log.info("projectors stopped")


async def _rebuild(settings: ProjectionSettings, name: str) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    projector = registry.projector(name)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f} %"))
    async with _opened(settings) as (store, pool):
        # on stderr: stdout holds the report alone
        with Progress(
            *columns, TimeElapsedColumn(), TimeRemainingColumn(), transient=True, console=Console(stderr=True)
        ) as bar:
            task = bar.add_task(f"rebuilding {name} from the stream", total=None)

            def reached(position: int, last: int) -> None:
                bar.update(task, total=max(last, 1), completed=position)

            report = await rebuild(projector, store.store, pool, progress=reached)
    print(
        f"rebuilt {report.name}: {report.events:,} events in {report.commits:,} commits, {report.seconds:.2f} s "
        f"({report.events_per_second:,.0f} events/s); {report.dead_letters} dead letters; "
        f"live at sequence {report.checkpoint}; projector held {report.locked_ms:.1f} ms for the swap"
    )


async def _status(settings: ProjectionSettings, metrics: bool) -> None:
    async with _opened(settings) as (store, pool):
        statuses: list[Any] = [await projector_status(pool, store.store, p) for p in registry.projectors()]
    statuses += await asyncio.to_thread(analytics_statuses)
    if metrics:
        sys.stdout.write(metrics_text(statuses))
    else:
        for status in statuses:
            print(json.dumps(status))


async def _migrate(settings: ProjectionSettings) -> None:
    async with _opened(settings) as (_, pool):
        for name, versions in (await registry.migrate(pool)).items():
            print(f"{name}: applied {versions or 'nothing (up to date)'}")


def _api_base() -> str:
    """The running API's address: ``PARLEY_API_URL``, else the local one ``up`` starts."""
    from infra.platform import API_PORT

    return os.environ.get("PARLEY_API_URL") or f"http://127.0.0.1:{API_PORT}"


def analytics_statuses() -> list[dict[str, Any]]:
    """The analytics projector's status, from the running API's ``/health`` (with chDB, only the
    API can open the store); nothing when no API answers."""
    base = _api_base()
    try:
        with urllib.request.urlopen(f"{base.rstrip('/')}/health", timeout=5) as response:
            health = json.loads(response.read())
    except urllib.error.HTTPError as e:  # 503: degraded, the report is in the body
        health = json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError):
        print(f"no API at {base}: the analytics projector's status is not shown", file=sys.stderr)
        return []
    return [p for p in health.get("projectors", []) if p.get("name") == "analytics"]


def rebuild_analytics() -> None:
    """Through the running API if one answers, else here (see the module's docstring)."""
    from infra.platform import data_root, jwt_secret
    from infra.tokens import make_token
    from projections.analytics.__main__ import describe, rebuild_here
    from projections.analytics.rebuild import RebuildReport

    base = _api_base()
    token = os.environ.get("PARLEY_TOKEN") or make_token(
        jwt_secret(data_root()), subject="projections-cli", tenant="platform", roles=["platform_engineer"], hours=1
    )
    url = f"{base.rstrip('/')}/api/v1/admin/projections/analytics/rebuild"
    try:
        body = request_rebuild(url, token)
    except urllib.error.URLError as e:  # an error answer is a SystemExit: this is no answer at all
        if not isinstance(e.reason, ConnectionRefusedError):
            raise
        print(f"no API at {base}: rebuilding here", file=sys.stderr)
        run_loop(rebuild_here(AnalyticsSettings.from_env()))
        return
    print(describe(msgspec.convert(body, RebuildReport)) + f" (through {base})")


def request_rebuild(url: str, token: str, *, attempts: int = 20) -> dict[str, Any]:
    """POST the rebuild command; the report. Retries a 503 (with several API workers, the one that
    has analytics may not be the one that answered); raises ``SystemExit`` on an error answer."""
    request = urllib.request.Request(url, method="POST", headers={"Authorization": f"Bearer {token}"})
    attempt = 0
    while True:
        attempt += 1
        try:
            with urllib.request.urlopen(request, timeout=24 * 3600) as response:  # answers once swapped in
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt >= attempts:
                detail = e.read().decode(errors="replace")
                raise SystemExit(f"the API refused the rebuild: {e.code} {detail}") from None
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m projections", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run projectors until interrupted")
    run.add_argument("names", nargs="*", help="projectors to run (default: all)")
    again = commands.add_parser("rebuild", help="rebuild a read model from the first event, without downtime")
    again.add_argument("name", help="a projector (conversations, configs) or analytics")
    status = commands.add_parser("status", help="checkpoint, lag and dead letters of each projector")
    status.add_argument("--metrics", action="store_true", help="Prometheus text format")
    commands.add_parser("migrate", help="create or update the read models' schemas")
    args = parser.parse_args(argv)

    configure_logging()
    settings = ProjectionSettings.from_env()
    match args.command:
        case "run":
            run_loop(_run(settings, args.names))
        case "rebuild" if args.name == "analytics":
            rebuild_analytics()
        case "rebuild":
            run_loop(_rebuild(settings, args.name))
        case "status":
            run_loop(_status(settings, args.metrics))
        case "migrate":
            run_loop(_migrate(settings))


if __name__ == "__main__":
    main()
