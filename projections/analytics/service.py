"""Analytics inside a long-running process (the API): the projector's runner and the queries.

With chDB only one process may open the store, so the runner and the queries live together, in
the first process that opens it; ``open`` returns None in the others (their analytics endpoints
answer 503), and a process that should not run the projector passes ``run_projector=False``. With
``CLICKHOUSE_URL`` every process can query, and one of them (or ``python -m projections.analytics
run``) projects.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from projections.analytics.runner import AnalyticsRunner
from projections.analytics.sink import AnalyticsSettings, AnalyticsSink, connect
from read_models.analytics import AnalyticsQueries
from streams.errors import UnavailableError
from streams.store import EventStore

log = structlog.get_logger(__name__)


class AnalyticsService:
    def __init__(self, sink: AnalyticsSink, queries: AnalyticsQueries, runner: AnalyticsRunner | None) -> None:
        self.sink = sink
        self.queries = queries
        self.runner = runner

    @classmethod
    async def open(
        cls, store: EventStore, settings: AnalyticsSettings, *, run_projector: bool = True
    ) -> AnalyticsService | None:
        """Open ClickHouse and bring the tables up to date; None when another process has chDB."""
        try:
            sink = await asyncio.to_thread(AnalyticsSink.open, settings)
        except UnavailableError as e:
            log.warning("analytics unavailable in this process", error=str(e))
            return None
        try:
            await asyncio.to_thread(sink.ensure_schema)
            queries = AnalyticsQueries(await asyncio.to_thread(connect, settings), settings.database)
        except BaseException:
            sink.close()
            raise
        runner = AnalyticsRunner(store, sink, batch=settings.batch) if run_projector else None
        return cls(sink, queries, runner)

    async def run(self, stop: asyncio.Event) -> None:
        """Project until ``stop`` is set (returns at once without a runner)."""
        if self.runner is not None:
            await self.runner.run(stop)

    async def status(self) -> dict[str, Any] | None:
        """The projector's checkpoint and lag, when it runs here."""
        return None if self.runner is None else await self.runner.status()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
            await self.runner.shutdown()
        await asyncio.to_thread(self.queries.client.close)
        await asyncio.to_thread(self.sink.close)
