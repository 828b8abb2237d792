"""Analytics inside a long-running process (the API): the projector's runner, the queries, rebuilds.

With chDB only one process may open the store, so the runner and the queries live together, in
the first process that opens it; ``open`` returns None in the others (their analytics endpoints
answer 503), and a process that should not run the projector passes ``run_projector=False``. With
``CLICKHOUSE_URL`` every process can query, and one of them (or ``python -m projections.analytics
run``) projects.

``rebuild`` rebuilds the tables without downtime (``projections.analytics.rebuild``), pausing the
runner of this process for the swap; only the process that runs the projector can do it.
"""

from __future__ import annotations

import asyncio

import structlog

from domain.errors import IllegalStateError
from projections.analytics.projection import NAME, analytics_runner
from projections.analytics.rebuild import LiveRun, RebuildReport, rebuild
from projections.analytics.sink import AnalyticsSink, ClickHouseBatch, ClickHouseCheckpoints, connect
from projections.runner import ProjectorRunner
from projections.settings import AnalyticsSettings
from projections.status import ProjectorStatus, status_of
from read_models.analytics import AnalyticsQueries
from streams.errors import UnavailableError
from streams.store import EventStore

log = structlog.get_logger(__name__)


async def projector_status(store: EventStore, tables: AnalyticsSink, name: str = NAME) -> ProjectorStatus:
    """The analytics projection's checkpoint, lag and dead letters in ClickHouse, wherever it runs."""
    return await status_of(ClickHouseCheckpoints(tables), store, name, None)


class AnalyticsService:
    def __init__(
        self,
        sink: AnalyticsSink,
        queries: AnalyticsQueries,
        runner: ProjectorRunner[ClickHouseBatch] | None,
        *,
        store: EventStore | None = None,
        settings: AnalyticsSettings | None = None,
    ) -> None:
        self.sink = sink
        self.queries = queries
        self.runner = runner
        self.store = store
        self.settings = settings
        self.live = LiveRun(runner) if runner is not None else None
        self._rebuilding: asyncio.Task[RebuildReport] | None = None

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
        runner = None
        if run_projector:  # its status read through the queries' client, not behind an insert
            runner = analytics_runner(store, sink, batch=settings.batch, reader=AnalyticsSink(queries.client, sink.db))
        return cls(sink, queries, runner, store=store, settings=settings)

    async def run(self, stop: asyncio.Event) -> None:
        """Project until ``stop`` is set (returns at once without a runner); a rebuild pauses it."""
        if self.live is not None:
            await self.live.run(stop)

    async def status(self) -> ProjectorStatus | None:
        """The projector's checkpoint, lag and dead letters, as the other projectors report them: its
        runner's, or read from ClickHouse where another process runs it (None without a store).
        Read through the queries' client, not behind an insert."""
        if self.runner is not None:
            return await self.runner.status()
        if self.store is None:
            return None
        return await projector_status(self.store, AnalyticsSink(self.queries.client, self.queries.db))

    async def rebuild(self) -> RebuildReport:
        """Rebuild the tables from the first event into shadow tables and swap them in.

        The rebuild runs as a task of the service: a caller that goes away does not stop it, a
        second caller meanwhile gets ``IllegalStateError``.
        """
        if self.live is None or self.store is None or self.settings is None:
            raise IllegalStateError(
                "the analytics projector does not run in this process: rebuild where it runs, or stop it"
                " and run python -m projections.analytics rebuild"
            )
        if self._rebuilding is not None and not self._rebuilding.done():
            raise IllegalStateError("the analytics tables are already being rebuilt")
        self._rebuilding = asyncio.create_task(
            rebuild(self.store, self.settings, live=self.live, name=self.live.runner.name), name="analytics-rebuild"
        )
        return await asyncio.shield(self._rebuilding)

    async def close(self) -> None:
        if self._rebuilding is not None and not self._rebuilding.done():
            self._rebuilding.cancel()
            await asyncio.gather(self._rebuilding, return_exceptions=True)
        if self.runner is not None:
            await self.runner.stop()
            await self.runner.shutdown()
        await asyncio.to_thread(self.queries.client.close)
        await asyncio.to_thread(self.sink.close)
