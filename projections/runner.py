"""Running a projection: follow the stream, write each batch with its checkpoint.

One runner serves every projection, whatever its store: the PostgreSQL projectors and the
ClickHouse analytics. Per batch, inside the write its ``Checkpoints`` opens (``batch``): skip what
the checkpoint already accounts for, write the rest (``Projection.project``), move the checkpoint
to the batch's last sequence. With PostgreSQL that write is one transaction (batch lock,
checkpoint ``FOR UPDATE``, rows, checkpoint and its ``NOTIFY``); with ClickHouse the rows go first
and the checkpoint last. Either way a crash before the checkpoint moved leaves no rows once the
store is started again, and commits seen again after it are a no-op for the checkpoint: nothing is
lost or applied twice.

The store, not the consumer, is the source of truth for the position: at start the runner
recreates its durable consumer from the checkpoint (from the first event when the checkpoint or
the whole store is missing). So the stream is read with the bulk feed (``streams.bulk``) and
without acknowledgements: a redelivery would give nothing that starting again from the checkpoint
does not, and the server and the client do less per message (the projector process's CPU a
command under bench-api's load: 189-192 µs, against 231-317 µs through nats-py's ``fetch`` with
acknowledgements in runs alternating with it).
Only one runner per projection writes at a time (``Checkpoints.start``: PostgreSQL's leader
lock, chDB's one process per store).

**Pipelining** (``pipeline=Pipeline()``), for a projection that replays millions of events
(``Pipelined``): each batch is prepared a chunk at a time, the event loop turning between chunks
and the garbage collector held off until the batch is prepared (a batch makes hundreds of
thousands of short-lived objects); and a batch is written while the next one is fetched and
prepared. Writes happen one at a time, in order.

``run`` keeps going after failures (``infra.restart``: the runner closes what it holds, backs off
0.5 to 10 s, and starts again from the checkpoint). ``status`` reports where it stands.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from typing import Any, Generic

import msgspec
import structlog

from infra.restart import keep_running
from projections.batches import Message
from projections.checkpoints import B, BatchResult, CheckpointMissing, Checkpoints, Stopped
from projections.projector import Pipelined, Projection
from projections.status import ProjectorStatus, status_of
from streams.bulk import BulkBatch, BulkFeed
from streams.errors import UnavailableError
from streams.store import EventStore

log = structlog.get_logger(__name__)


class Pipeline(msgspec.Struct, frozen=True, kw_only=True):
    """The runner's pipelined mode (see the module's docstring)."""

    chunk: int = 1000  # commits prepared between two turns of the loop (2,000 measured 3 % slower)
    acks: bool = False  # acknowledge batches (the consumer redelivers what is not)


class Timings(msgspec.Struct):
    """Where a runner's time went, in seconds (a pipelined write runs beside the rest)."""

    fetch: float = 0.0
    fetch_cpu: float = 0.0  # of which the process's own work (reading the frames)
    prepare: float = 0.0
    wait_write: float = 0.0  # the loop waiting for a write to finish
    ack: float = 0.0
    commits: int = 0
    events: int = 0
    batches: int = 0


class _Prepared(msgspec.Struct):
    """A pipelined batch, prepared, and what the runner knows of it."""

    prepared: Any
    first_seq: int
    last_seq: int
    commits: int
    skipped: int


class _Writing:
    def __init__(self, future: asyncio.Future[BatchResult], batch: BulkBatch | None) -> None:
        self.future, self.batch = future, batch


class ProjectorRunner(Generic[B]):
    def __init__(
        self,
        projector: Projection[B],
        store: EventStore,
        checkpoints: Checkpoints[B],
        *,
        batch: int = 500,
        idle_wait: float = 0.5,
        linger: float = 0.0,
        pipeline: Pipeline | None = None,
    ) -> None:
        if pipeline is not None and not isinstance(projector, Pipelined):
            raise TypeError(f"{type(projector).__name__} is not a pipelined projection")
        self.projector = projector
        self.store = store
        self.checkpoints = checkpoints
        self.name = projector.name
        self.durable = f"proj_{self.name}"
        self.batch = batch
        self.idle_wait = idle_wait
        # After a short batch, wait this long before the next fetch so that it brings more: under
        # load the cost of a transaction is shared by more commits, for at most this much more lag.
        self.linger = linger
        self.pipeline = pipeline
        self.feed: BulkFeed | None = None
        self.checkpoint = 0  # what the store accounts for (the last batch written)
        self.timings = Timings()
        self._prepared = 0  # the last sequence prepared (ahead of the checkpoint while a write runs)
        self._writing: _Writing | None = None
        self._idle = False
        self._stop = asyncio.Event()
        self._log = log.bind(projector=self.name)

    # Life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Become the projection's writer, its store up to date, its consumer from the checkpoint."""
        if self.feed is not None:
            return
        checkpoint = await self.checkpoints.start(self.name, self._stop)
        self.checkpoint = self._prepared = checkpoint
        await self.projector.begin(self.store)
        subject = self.projector.subject
        feed = self.store.bulk_feed(
            self.durable,
            subject=subject,
            start_seq=checkpoint + 1,
            batch=self.batch,
            idle_wait=self.idle_wait,
            acks=self.pipeline.acks if self.pipeline is not None else False,
        )
        await feed.delete()  # whatever it had acknowledged, the checkpoint decides
        self.feed = feed
        self._log.info("projector started", checkpoint=checkpoint, subject=subject, store=self.checkpoints.where)

    async def close(self) -> None:
        """Let the write in hand end (unacknowledged), close the consumer, let go of the writer's place."""
        writing, self._writing = self._writing, None
        if writing is not None:  # a write cannot be interrupted halfway: let it end
            try:
                await writing.future
            except Exception as e:
                self._log.warning("a write failed while closing", error=f"{type(e).__name__}: {e}")
        if self.feed is not None:
            feed, self.feed = self.feed, None
            try:
                await feed.close()
            except Exception as e:  # the connection to NATS may be gone; the consumer is recreated at start
                self._log.warning("could not close the consumer", error=str(e))
        await self.checkpoints.stop()

    async def shutdown(self) -> None:
        """Close, and let go of everything the checkpoints hold (the runner does not start again)."""
        await self.close()
        await self.checkpoints.close()

    # Work ---------------------------------------------------------------------------------

    async def step(self) -> BatchResult | None:
        """Fetch one batch and write it (pipelined: start writing it); None when nothing arrived
        within ``idle_wait``. With ``Pipeline.acks`` a batch is acknowledged once written."""
        await self.start()
        assert self.feed is not None
        # Idle: where the stream ends before this fetch. If the fetch brings nothing, every event of
        # ours up to there is projected, and the checkpoint may say so (see ``_caught_up``).
        end = await self.store.last_seq() if self._idle else None
        started, cpu = time.perf_counter(), time.thread_time()
        batch = await self.feed.fetch()
        self.timings.fetch += time.perf_counter() - started
        self.timings.fetch_cpu += time.thread_time() - cpu
        if not batch.messages:
            await self._landed()
            self._idle = True
            if end is not None:
                await self._caught_up(end)
            return None
        self._idle = False
        if self.pipeline is None:
            result = await self.project(batch.messages)
            await batch.ack()
            if self.linger and len(batch.messages) < self.batch:
                await asyncio.sleep(self.linger)
            return result
        prepared = await self._prepare(batch.messages)
        await self._landed()
        if prepared is None:
            await batch.ack()
            return BatchResult(self.checkpoint, 0, 0, len(batch.messages), [])
        self._writing = _Writing(asyncio.ensure_future(self._write(prepared)), batch)
        return BatchResult(prepared.last_seq, prepared.commits, 0, prepared.skipped, [])

    async def project(self, messages: Sequence[Message]) -> BatchResult:
        """Write one batch and move the checkpoint, without acknowledging anything (tests, rebuilds)."""
        await self.start()
        if self.pipeline is not None:
            prepared = await self._prepare(messages)
            await self._landed()
            if prepared is None:
                return BatchResult(self.checkpoint, 0, 0, len(messages), [])
            result = await self._write(prepared)
        else:
            started = time.perf_counter()
            async with self.checkpoints.batch(self.name) as batch:
                result = await self.projector.project(batch, messages)
                batch.advance(result.checkpoint)
            self._count(result, messages[0].seq, messages[-1].seq, started)
        self.checkpoint = max(self.checkpoint, result.checkpoint)
        return result

    async def _caught_up(self, end: int) -> None:
        """Nothing of ours is pending up to stream position ``end``: move the checkpoint there.

        The checkpoint is a position in the whole stream, so a reader waiting for the position of
        another aggregate's event (an agent registered, then a list of agents read) is served as
        soon as this projector has nothing before it, not when its next event of its own comes.
        """
        async with self.checkpoints.batch(self.name) as batch:
            batch.advance(end)
        self.checkpoint = max(self.checkpoint, end)

    async def catch_up(self) -> int:
        """Project batches until none arrives within ``idle_wait``; returns the events written."""
        before = self.timings.events
        while await self.step() is not None:
            pass
        return self.timings.events - before

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Project until ``stop`` is set or ``stop()`` called (or the task cancelled); start again after failures."""
        if stop is not None:
            self._stop = stop
        try:
            await keep_running(
                self.step,
                self._stop,
                restart=self.close,
                log=self._log,
                what="projector",
                expected=(UnavailableError, CheckpointMissing, *self.checkpoints.expected),
                done=(Stopped,),
            )
        finally:
            await self.close()

    async def stop(self) -> None:
        """Ask ``run`` to return once the batch in hand is written and acknowledged."""
        self._stop.set()

    async def status(self) -> ProjectorStatus:
        return await status_of(self.checkpoints, self.store, self.name, self.projector.subject)

    # Pipelined ----------------------------------------------------------------------------

    async def _prepare(self, messages: Sequence[Message]) -> _Prepared | None:
        """The commits above what is prepared already, prepared a chunk at a time.

        The garbage collector waits until the batch is prepared: a batch allocates hundreds of
        thousands of objects, all freed by reference counting as the batch goes; collecting
        meanwhile cost a fifth of the projector's time, scanning what was about to go. A chunk's
        objects are gone before the next is prepared, so the memory they took is reused while still
        in the CPU's caches (a whole batch's objects at once cost a fifth more).
        """
        assert isinstance(self.projector, Pipelined) and self.pipeline is not None
        after = self._prepared
        fresh = [m for m in messages if m.seq > after]
        if not fresh:
            return None
        started = time.perf_counter()
        collecting = gc.isenabled()
        gc.disable()
        try:
            preparation = self.projector.preparing(self._landed)
            chunk = self.pipeline.chunk
            for i in range(0, len(fresh), chunk):
                await preparation.add(fresh[i : i + chunk])
                await asyncio.sleep(0)  # let the rest of the process breathe during a replay
            prepared = preparation.done()
        finally:
            if collecting:
                gc.enable()
        self._prepared = fresh[-1].seq
        self.timings.prepare += time.perf_counter() - started
        return _Prepared(prepared, fresh[0].seq, fresh[-1].seq, len(fresh), len(messages) - len(fresh))

    async def _write(self, prepared: _Prepared) -> BatchResult:
        assert isinstance(self.projector, Pipelined)
        started = time.perf_counter()
        async with self.checkpoints.batch(self.name) as batch:
            result = await self.projector.write(batch, prepared.prepared)
            batch.advance(prepared.last_seq)
        result = msgspec.structs.replace(
            result,
            checkpoint=prepared.last_seq,
            commits=prepared.commits - len(result.dead_letters),
            skipped=prepared.skipped,
        )
        self._count(result, prepared.first_seq, prepared.last_seq, started)
        return result

    async def _landed(self) -> None:
        """Wait for the write in flight, then move the runner's checkpoint and acknowledge its batch."""
        writing = self._writing
        if writing is None:
            return
        started = time.perf_counter()
        try:
            result = await writing.future
        finally:
            self._writing = None
        self.timings.wait_write += time.perf_counter() - started
        self.checkpoint = max(self.checkpoint, result.checkpoint)
        if writing.batch is not None:
            started = time.perf_counter()
            await writing.batch.ack()
            self.timings.ack += time.perf_counter() - started

    def _count(self, result: BatchResult, first_seq: int, last_seq: int, started: float) -> None:
        timings = self.timings
        timings.commits += result.commits
        timings.events += result.events
        timings.batches += 1
        self._log.info(
            "batch projected",
            first_seq=first_seq,
            last_seq=last_seq,
            commits=result.commits,
            events=result.events,
            skipped=result.skipped,
            dead_letters=len(result.dead_letters),
            checkpoint=result.checkpoint,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
