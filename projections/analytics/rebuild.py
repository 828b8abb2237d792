"""Rebuilding the analytics tables from the first event, without downtime.

1. Replay the whole stream into a shadow database (``<database>_shadow``, the same tables) with a
   runner of its own (``analytics_rebuild``, its own durable consumer), while the live runner keeps
   projecting into the live tables and the queries keep reading them.
2. Once the shadow has reached the end of the stream as it was when the replay began, pause the
   live runner (``LiveRun.paused``: the batch in hand is written and checkpointed, then it stops),
   read its checkpoint, and let the shadow reach it. Write the live projector's checkpoint into
   the shadow at the shadow's position, then exchange each shadow table with its live namesake
   (``AnalyticsSink.exchange``: ``EXCHANGE TABLES``, atomic per table, the checkpoint last) and let
   the live runner go on: it starts from the swapped-in checkpoint, its consumer recreated from
   it, its fold cache empty.
3. Drop the shadow database, which now holds the old tables (queries still reading them finish).

Readers see the old tables until the exchange and the new ones after it, never an empty or half
filled table. The shadow may end up ahead of the live checkpoint (it goes on projecting until the
live runner has stopped); the live runner then starts after it. A rebuild that fails before the
exchange leaves the live tables as they were and drops the shadow; a crash during the exchange
leaves the live checkpoint of the tables not yet swapped, and the live runner's ``recover`` and
replay make the swapped ones right (``AnalyticsSink.exchange``).

Without a live runner (``live=None``: ``python -m projections.analytics rebuild``, the store held
by this process alone) the same steps run with nothing to pause. One rebuild at a time: with chDB
the store's lock and ``AnalyticsService`` make sure of it; with a ClickHouse server, rebuild from
the process that runs the projector (``POST /api/v1/admin/projections/analytics/rebuild``), or with
the projector stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec
import structlog

from projections.analytics.projection import NAME, analytics_runner
from projections.analytics.sink import AnalyticsSink, ClickHouseBatch, connect
from projections.runner import ProjectorRunner
from projections.settings import AnalyticsSettings
from streams.errors import UnavailableError
from streams.store import EventStore

log = structlog.get_logger(__name__)

POLL = 0.02  # seconds between two looks at the shadow runner's checkpoint


class RebuildReport(msgspec.Struct, frozen=True):
    database: str
    events: int
    commits: int
    dead_letters: int
    checkpoint: int  # where the new live tables stood when swapped in
    seconds: float
    events_per_second: float
    paused_ms: float  # how long the live runner was held: its last batch, the shadow's catch-up, the swap


class Pausable(Protocol):
    def paused(self) -> contextlib.AbstractAsyncContextManager[None]: ...


def shadow_database(database: str) -> str:
    return f"{database}_shadow"


async def rebuild(
    store: EventStore,
    settings: AnalyticsSettings,
    *,
    live: Pausable | None = None,
    name: str = NAME,
    batch: int | None = None,
    idle_wait: float = 0.1,
    stall: float = 60.0,
) -> RebuildReport:
    """Replay the stream into shadow tables, then swap them in (see the module's docstring).

    ``live`` pauses the live runner for the swap (None: no runner writes the live tables).
    ``stall``: give up when the shadow runner makes no progress for that long.
    """
    shadow_db = shadow_database(settings.database)
    bound = log.bind(projector=name, shadow=shadow_db)
    started = time.perf_counter()
    # Two clients: the shadow runner's, and one for the rest (not queued behind the runner's inserts).
    clients = [await asyncio.to_thread(connect, settings)]
    try:
        clients.append(await asyncio.to_thread(connect, settings))
        live_tables = AnalyticsSink(clients[1], settings.database)
        shadow_tables = AnalyticsSink(clients[1], shadow_db)
        runner = analytics_runner(
            store,
            AnalyticsSink(clients[0], shadow_db),
            name=f"{name}_rebuild",
            batch=batch or settings.batch,
            idle_wait=idle_wait,
        )
        try:
            await asyncio.to_thread(shadow_tables.drop_database)  # what an interrupted rebuild left
            await asyncio.to_thread(shadow_tables.ensure_schema)
            await asyncio.to_thread(live_tables.ensure_schema)  # something to exchange with, on a new store
            position, paused_ms = await _replay_and_swap(
                store, runner, live, live_tables, shadow_tables, name=name, stall=stall, bound=bound
            )
        finally:
            await runner.shutdown()  # its thread done: nothing writes to the shadow any more
            try:
                await store.bulk_feed(runner.durable).delete()
            except UnavailableError as e:  # NATS gone: the next rebuild's runner deletes it at start
                bound.warning("could not delete the rebuild's consumer", error=str(e))
            try:  # the old tables after the swap; the new ones when the rebuild failed before it
                await asyncio.to_thread(shadow_tables.drop_database)
            except Exception as e:  # the next rebuild drops it at start
                bound.warning("could not drop the shadow database", error=f"{type(e).__name__}: {e}")
        dead_letters = await asyncio.to_thread(live_tables.dead_letters)
    finally:
        for client in clients:
            await asyncio.to_thread(client.close)

    seconds = time.perf_counter() - started
    events = runner.timings.events
    report = RebuildReport(
        database=settings.database,
        events=events,
        commits=runner.timings.commits,
        dead_letters=dead_letters,
        checkpoint=position,
        seconds=round(seconds, 3),
        events_per_second=round(events / seconds, 1) if seconds > 0 else 0.0,
        paused_ms=round(paused_ms, 1),
    )
    bound.info("analytics rebuild swapped in", **msgspec.structs.asdict(report))
    return report


async def _replay_and_swap(
    store: EventStore,
    runner: ProjectorRunner[ClickHouseBatch],
    live: Pausable | None,
    live_tables: AnalyticsSink,
    shadow_tables: AnalyticsSink,
    *,
    name: str,
    stall: float,
    bound: Any,
) -> tuple[int, float]:
    """Steps 1 and 2; returns the new live checkpoint and how long the live runner was paused (ms)."""
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop), name=f"projector-{runner.name}")
    try:
        head = await store.last_seq()
        bound.info("analytics rebuild started", stream_last_seq=head)
        await _reach(runner, task, head, stall)
        paused = time.perf_counter()
        async with live.paused() if live is not None else contextlib.nullcontext():
            await _reach(runner, task, await asyncio.to_thread(live_tables.checkpoint, name), stall)
            stop.set()
            await task  # the batch in hand is written and checkpointed
            position = runner.checkpoint
            await asyncio.to_thread(shadow_tables.set_checkpoint, name, position)
            await asyncio.to_thread(shadow_tables.exchange, live_tables.db)
        paused_ms = (time.perf_counter() - paused) * 1000
        try:  # the rebuild runner's own checkpoint row, now in the live table (a delete takes a while)
            await asyncio.to_thread(live_tables.forget, runner.name)
        except Exception as e:
            bound.warning("could not delete the rebuild's checkpoint row", error=f"{type(e).__name__}: {e}")
        return position, paused_ms
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _reach(runner: ProjectorRunner[ClickHouseBatch], task: asyncio.Task[None], target: int, stall: float) -> None:
    """Wait until the runner's checkpoint is at ``target`` or past it.

    The runner starts again by itself after a failure (``ProjectorRunner.run``); a rebuild that
    stands still for ``stall`` seconds gives up.
    """
    last, moved = runner.checkpoint, time.monotonic()
    while runner.checkpoint < target:
        if task.done():
            task.result()
            raise RuntimeError("the rebuild's runner stopped before the end of the stream")
        await asyncio.wait([task], timeout=POLL)
        if runner.checkpoint != last:
            last, moved = runner.checkpoint, time.monotonic()
        elif time.monotonic() - moved > stall:
            raise UnavailableError(f"the analytics rebuild made no progress for {stall:.0f} s (at sequence {last})")


class LiveRun:
    """A runner run until stopped, which a rebuild can pause for its swap.

    ``run`` runs the runner until ``stop`` is set; ``paused`` stops it (the batch in hand is
    written and checkpointed first) and starts it again on leaving, from the checkpoint it then
    finds in ClickHouse, with a new consumer.
    """

    def __init__(self, runner: ProjectorRunner[ClickHouseBatch]) -> None:
        self.runner = runner
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._idle = asyncio.Event()  # set while the runner is not running
        self._idle.set()
        self._halt: asyncio.Event | None = None
        self._pausing = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self._resumed.is_set():
                await _first(stop, self._resumed)
                continue
            halt = self._halt = asyncio.Event()
            relay = asyncio.create_task(_relay(stop, halt))
            self._idle.clear()
            try:
                await self.runner.run(halt)
            finally:
                relay.cancel()
                self._halt = None
                self._idle.set()

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        async with self._pausing:
            self._resumed.clear()
            try:
                if self._halt is not None:
                    self._halt.set()
                await self._idle.wait()
                yield
            finally:
                self._resumed.set()


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
