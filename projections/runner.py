"""Running a projector: follow the stream, apply each batch in one transaction, then acknowledge.

Per batch, in one PostgreSQL transaction: take the projector's batch lock, read the checkpoint
``FOR UPDATE``, skip what it already accounts for, apply the rest (``projections.batches``), move
the checkpoint to the batch's last sequence and announce it; commit; then acknowledge the batch
to JetStream. A crash before the commit leaves neither rows nor checkpoint; a crash after it
leaves a redelivery that the checkpoint turns into a no-op. Nothing is lost or applied twice.

PostgreSQL is the source of truth for the position, not the consumer: at start the runner
recreates its durable consumer from the checkpoint (from the first event when the checkpoint row
or the whole schema is missing). Only one runner per projector works at a time: the others wait
for its leader lock, which PostgreSQL frees when its session ends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import structlog
from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool

from projections.batches import BatchResult, apply_batch
from projections.checkpoints import ensure_checkpoint, lock_batch, read_checkpoint, set_checkpoint, try_lock, unlock
from projections.projector import Projector
from projections.status import ProjectorStatus, projector_status
from read_models.migrations import migrate
from streams.errors import UnavailableError
from streams.feed import Feed
from streams.jetstream import RawMessage
from streams.store import EventStore

log = structlog.get_logger(__name__)


class Stopped(Exception):
    """Asked to stop while standing by for the leader lock."""


class CheckpointMissing(Exception):
    """The checkpoint row vanished under a running projector: start again from the first event."""


# Expected failures: the runner starts again (new connection, consumer from the checkpoint).
RESTARTABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    errors.UndefinedTable,
    errors.InvalidSchemaName,
    UnavailableError,
    CheckpointMissing,
)


class ProjectorRunner:
    def __init__(
        self,
        projector: Projector,
        store: EventStore,
        pool: AsyncConnectionPool[Any],
        *,
        batch: int = 500,
        idle_wait: float = 0.5,
        ack_wait: float = 30.0,
        standby_poll: float = 1.0,
        linger: float = 0.0,
    ) -> None:
        self.projector = projector
        self.store = store
        self.pool = pool
        self.durable = f"proj_{projector.name}"
        self.batch = batch
        self.idle_wait = idle_wait
        self.ack_wait = ack_wait
        self.standby_poll = standby_poll
        # After a short batch, wait this long before the next fetch so that it brings more: under
        # load the cost of a transaction is shared by more commits, for at most this much more lag.
        self.linger = linger
        self.feed: Feed | None = None
        self._idle = False
        self._conn: AsyncConnection[Any] | None = None
        self._stop = asyncio.Event()
        self._log = log.bind(projector=projector.name)

    # Life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Become the projector's runner: leader lock, schema up to date, consumer from the checkpoint."""
        if self.feed is not None:
            return
        if self._conn is None:
            conn = await self.pool.getconn()
            try:
                await conn.set_autocommit(True)
                await self._lead(conn)
            except BaseException:
                await self.pool.putconn(conn)
                raise
            self._conn = conn
        await migrate(self._conn, self.projector.read_model)
        checkpoint = await ensure_checkpoint(self._conn, self.projector.schema, self.projector.name)
        feed = self.store.feed(
            self.durable,
            subject=self.projector.subject,
            start_seq=checkpoint + 1,
            batch=self.batch,
            idle_wait=self.idle_wait,
            ack_wait=self.ack_wait,
        )
        await feed.delete()  # whatever it had acknowledged, the checkpoint decides
        self.feed = feed
        self._log.info("projector started", checkpoint=checkpoint, subject=self.projector.subject)

    async def _lead(self, conn: AsyncConnection[Any]) -> None:
        announced = False
        while not await try_lock(conn, "leader", self.projector.name):
            if not announced:
                self._log.info("another runner leads this projector; standing by")
                announced = True
            try:
                await asyncio.wait_for(self._stop.wait(), self.standby_poll)
            except TimeoutError:
                continue
            raise Stopped

    async def close(self) -> None:
        if self.feed is not None:
            feed, self.feed = self.feed, None
            try:
                await feed.close()
            except Exception as e:  # the connection to NATS may be gone; the consumer is recreated at start
                self._log.warning("could not close the consumer", error=str(e))
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                try:
                    await unlock(conn, "leader", self.projector.name)
                    await conn.set_autocommit(False)
                except psycopg.Error:
                    await conn.close()
            else:
                await conn.close()  # the session ends, and with it the leader lock
            await self.pool.putconn(conn)

    # Work ---------------------------------------------------------------------------------

    async def step(self) -> BatchResult | None:
        """Fetch one batch, project it, acknowledge it; None when nothing arrived within ``idle_wait``."""
        await self.start()
        assert self.feed is not None
        # Idle: where the stream ends before this fetch. If the fetch brings nothing, every event of
        # ours up to there is projected, and the checkpoint may say so (see ``_caught_up``).
        end = await self.store.last_seq() if self._idle else None
        batch = await self.feed.fetch()
        if not batch.messages:
            self._idle = True
            if end is not None:
                await self._caught_up(end)
            return None
        self._idle = False
        result = await self.project(batch.messages)
        await batch.ack()
        if self.linger and len(batch.messages) < self.batch:
            await asyncio.sleep(self.linger)
        return result

    async def _caught_up(self, end: int) -> None:
        """Nothing of ours is pending up to stream position ``end``: move the checkpoint there.

        The checkpoint is a position in the whole stream, so a reader waiting for the position of
        another aggregate's event (an agent registered, then a list of agents read) is served as
        soon as this projector has nothing before it, not when its next event of its own comes.
        """
        assert self._conn is not None
        conn, name, schema = self._conn, self.projector.name, self.projector.schema
        async with conn.transaction():
            await lock_batch(conn, name)
            checkpoint = await read_checkpoint(conn, schema, name, for_update=True)
            if checkpoint is not None and end > checkpoint:
                await set_checkpoint(conn, schema, name, end)

    async def project(self, messages: list[RawMessage]) -> BatchResult:
        """One transaction: lock, checkpoint, apply what is new, move the checkpoint. No acknowledgement."""
        await self.start()
        assert self._conn is not None
        conn, name, schema = self._conn, self.projector.name, self.projector.schema
        started = time.perf_counter()
        async with conn.transaction():
            await lock_batch(conn, name)
            checkpoint = await read_checkpoint(conn, schema, name, for_update=True)
            if checkpoint is None:
                raise CheckpointMissing(f"{schema}.checkpoint has no row for {name}")
            result = await apply_batch(conn, self.projector, self.store, schema, messages, after=checkpoint)
            if result.checkpoint > checkpoint:
                await set_checkpoint(conn, schema, name, result.checkpoint)
        self._log.info(
            "batch projected",
            first_seq=messages[0].seq,
            last_seq=messages[-1].seq,
            commits=result.commits,
            events=result.events,
            skipped=result.skipped,
            dead_letters=len(result.dead_letters),
            checkpoint=result.checkpoint,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return result

    async def catch_up(self) -> int:
        """Project batches until none arrives within ``idle_wait``; returns the events applied."""
        events = 0
        while (result := await self.step()) is not None:
            events += result.events
        return events

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Project until ``stop`` is set or ``stop()`` called (or the task cancelled); start again after failures."""
        if stop is not None:
            self._stop = stop
        stop = self._stop
        delay = 0.5
        try:
            while not stop.is_set():
                try:
                    while not stop.is_set():
                        await self.step()
                        delay = 0.5
                except Stopped:
                    break
                except Exception as e:
                    if isinstance(e, RESTARTABLE):
                        self._log.warning("projector interrupted; starting again", error=f"{type(e).__name__}: {e}")
                    else:  # a bug, or an error nobody translated: logged in full, retried all the same
                        self._log.error("projector failed; starting again", exc_info=True, retry_in=delay)
                    await self.close()
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except TimeoutError:
                        pass
                    delay = min(delay * 2, 10.0)
        finally:
            await self.close()

    async def stop(self) -> None:
        """Ask ``run`` to return once the batch in hand is committed and acknowledged."""
        self._stop.set()

    async def status(self) -> ProjectorStatus:
        return await projector_status(self.pool, self.store, self.projector)
