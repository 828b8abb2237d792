"""Running the analytics projector: follow the stream, write each batch to ClickHouse.

Per batch: skip what the checkpoint accounts for, decode the commits (``decode``), fold the
conversations (``facts``), encode every table's rows, insert them, move the checkpoint to the
batch's last sequence. The consumer takes no acknowledgements (``AckPolicy.NONE``): the runner
recreates it from the checkpoint at every start, which is all a redelivery would have given, and
the server does less per message. ClickHouse has no transaction across
tables, so exactly-once rests on the order of the writes and on what ``AnalyticsSink.recover``
does at every start:

* a crash before the checkpoint moved leaves rows above it; they are deleted at start and the
  batch comes again (its consumer is recreated from the checkpoint), so they are written once;
* a crash after it leaves a redelivery that the checkpoint turns into a no-op;
* facts rows are keyed by conversation and versioned: written twice, they are one row.

ClickHouse, not the consumer, is the source of truth for the position: at start the runner
recreates its durable consumer from the checkpoint (from the first event when the tables are
new). Batches are large (``batch`` commits, thousands of rows per insert) and pipelined: the next
batch is fetched, decoded and encoded while the previous one is inserted, in a worker thread.
Inserts happen one at a time, in order.

One runner per database: with chDB the engine's own lock makes sure of it (one process per data
directory); with a ClickHouse server, run one.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import structlog

from domain.conversation import AGGREGATE_TYPE as CONVERSATION
from projections.analytics.decode import CommitDecoder, Decoded
from projections.analytics.facts import FactsFold
from projections.analytics.schema import DeadLetterRow, EscalationRow, EventRow
from projections.analytics.sink import AnalyticsSink, Encoded, encode_rows
from streams.bulk import BulkBatch, BulkFeed, Delivered
from streams.errors import EventDecodeError
from streams.store import EventStore

log = structlog.get_logger(__name__)
_CHUNK = 1000  # commits decoded between two turns of the event loop (fewer stay in the caches: 2,000 was 3 % slower)


class BatchReport(msgspec.Struct, frozen=True):
    first_seq: int
    last_seq: int
    commits: int
    events: int
    skipped: int  # commits at or below the checkpoint
    dead_letters: int


class Timings(msgspec.Struct):
    """Where a runner's time went, in seconds (``write`` runs beside the rest, in its thread)."""

    fetch: float = 0.0
    fetch_cpu: float = 0.0  # of which the process's own work (reading the frames)
    decode: float = 0.0
    fold: float = 0.0
    encode: float = 0.0
    write: float = 0.0
    write_cpu: float = 0.0  # CPU of the inserting thread (the engine's own threads not counted)
    wait_write: float = 0.0  # the loop waiting for an insert to finish
    ack: float = 0.0
    commits: int = 0
    events: int = 0
    batches: int = 0


class _Pending:
    def __init__(self, future: asyncio.Future[None], batch: BulkBatch | None, report: BatchReport) -> None:
        self.future, self.batch, self.report = future, batch, report


class AnalyticsRunner:
    def __init__(
        self,
        store: EventStore,
        sink: AnalyticsSink,
        *,
        name: str = "analytics",
        batch: int = 50_000,
        idle_wait: float = 0.5,
        cache_size: int = 100_000,
        fast_decode: bool = True,
    ) -> None:
        self.store = store
        self.sink = sink
        self.name = name
        self.durable = f"proj_{name}"
        self.batch = batch
        self.idle_wait = idle_wait
        self.cache_size = cache_size
        self.decoder = CommitDecoder(store)
        if not fast_decode:
            self.decoder.decode = self.decoder.decode_with_store
        self.feed: BulkFeed | None = None
        self.checkpoint = 0  # what ClickHouse accounts for
        self.timings = Timings()
        self._prepared = 0  # the last sequence decoded (ahead of the checkpoint while an insert runs)
        self._fold = FactsFold(cache_size)
        self._pending: _Pending | None = None
        self._run_id = ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clickhouse-{name}")
        self._stop = asyncio.Event()
        self._log = log.bind(projector=name)

    async def _call(self, fn: Any, *args: Any) -> Any:
        """A blocking ClickHouse call, in the runner's one worker thread (so calls stay in order)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # Life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Schema up to date, rows above the checkpoint deleted, consumer from the checkpoint."""
        if self.feed is not None:
            return
        await self._call(self.sink.ensure_schema)
        checkpoint, deleted = await self._call(self.sink.recover, self.name)
        self.checkpoint = self._prepared = checkpoint
        self._fold = FactsFold(self.cache_size)
        self._run_id = uuid.uuid4().hex[:12]
        feed = self.store.bulk_feed(
            self.durable,
            start_seq=checkpoint + 1,
            batch=self.batch,
            idle_wait=self.idle_wait,
            acks=False,
        )
        await feed.delete()  # wherever it was, the checkpoint decides
        self.feed = feed
        self._log.info("analytics projector started", checkpoint=checkpoint, rows_deleted=deleted)

    async def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:  # an insert cannot be interrupted: let it end, unacknowledged
            try:
                await pending.future
            except Exception as e:
                self._log.warning("an insert failed while closing", error=f"{type(e).__name__}: {e}")
        if self.feed is not None:
            feed, self.feed = self.feed, None
            try:
                await feed.close()
            except Exception as e:  # NATS may be gone; the consumer is recreated at start
                self._log.warning("could not close the consumer", error=str(e))

    async def shutdown(self) -> None:
        """Close, and release the worker thread (the runner cannot start again)."""
        await self.close()
        self._executor.shutdown(wait=True)

    # Work ---------------------------------------------------------------------------------

    async def project(self, messages: list[Delivered]) -> BatchReport:
        """Write one batch and move the checkpoint, without acknowledging anything (tests, rebuilds)."""
        await self.start()
        encoded, report = await self._prepare(messages)
        if encoded is not None:
            await self._call(self._write, encoded)
            self.checkpoint = encoded.last_seq
        return report

    async def step(self) -> BatchReport | None:
        """Fetch one batch, write it, acknowledge it; None when nothing arrived within ``idle_wait``."""
        await self.start()
        assert self.feed is not None
        batch = await self.feed.fetch()
        if not batch.messages:
            return None
        report = await self.project(batch.messages)
        await batch.ack()
        return report

    async def catch_up(self) -> int:
        """Project until nothing arrives within ``idle_wait``; returns the events written."""
        return await self._loop(asyncio.Event(), until_idle=True)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Project until ``stop`` is set or ``stop()`` called; start again after failures."""
        if stop is not None:
            self._stop = stop
        stop = self._stop
        delay = 0.5
        try:
            while not stop.is_set():
                try:
                    await self._loop(stop, until_idle=False)
                except Exception as e:
                    self._log.warning(
                        "analytics projector interrupted; starting again from the checkpoint",
                        error=f"{type(e).__name__}: {e}",
                        exc_info=not _expected(e),
                        retry_in=delay,
                    )
                    await self.close()
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except TimeoutError:
                        pass
                    delay = min(delay * 2, 10.0)
                else:
                    delay = 0.5
        finally:
            await self.close()

    async def stop(self) -> None:
        """Ask ``run`` to return once the batch in hand is written and acknowledged."""
        self._stop.set()

    async def _loop(self, stop: asyncio.Event, *, until_idle: bool) -> int:
        await self.start()
        assert self.feed is not None
        events = 0
        while not stop.is_set():
            started, cpu = time.perf_counter(), time.thread_time()
            batch = await self.feed.fetch()
            self.timings.fetch += time.perf_counter() - started
            self.timings.fetch_cpu += time.thread_time() - cpu
            if not batch.messages:
                await self._finish()
                if until_idle:
                    break
                continue
            encoded, report = await self._prepare(batch.messages)
            await self._finish()
            events += report.events
            if encoded is None:
                await batch.ack()
                continue
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._write, encoded)
            self._pending = _Pending(future, batch, report)
        await self._finish()
        return events

    async def _finish(self) -> None:
        """Wait for the insert in flight, then move the checkpoint and acknowledge its batch."""
        pending = self._pending
        if pending is None:
            return
        started = time.perf_counter()
        try:
            await pending.future
        finally:
            self._pending = None
        self.timings.wait_write += time.perf_counter() - started
        self.checkpoint = pending.report.last_seq
        if pending.batch is not None:
            started = time.perf_counter()
            await pending.batch.ack()
            self.timings.ack += time.perf_counter() - started
        r = pending.report
        self._log.debug(
            "batch projected", first_seq=r.first_seq, last_seq=r.last_seq, commits=r.commits, events=r.events
        )

    def _write(self, encoded: Encoded) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        self.sink.write(self.name, encoded, f"{self._run_id}:{encoded.first_seq}-{encoded.last_seq}")
        self.timings.write += time.perf_counter() - started
        self.timings.write_cpu += time.thread_time() - cpu

    async def _prepare(self, messages: list[Delivered]) -> tuple[Encoded | None, BatchReport]:
        """Decode, fold and encode the commits above what is already prepared.

        The garbage collector waits until the batch is prepared: a batch allocates hundreds of
        thousands of objects, all freed by reference counting when ``_prepare_batch`` returns;
        collecting meanwhile cost a fifth of the projector's time, scanning what was about to go.
        """
        if not gc.isenabled():
            return await self._prepare_batch(messages)
        gc.disable()
        try:
            return await self._prepare_batch(messages)
        finally:
            gc.enable()

    async def _prepare_batch(self, messages: list[Delivered]) -> tuple[Encoded | None, BatchReport]:
        """Chunk by chunk: decode, fold, encode, let the rest of the process run.

        A chunk's objects are gone before the next is decoded, so the memory they took is reused
        while still in the CPU's caches (a whole batch's objects at once cost a fifth more).
        """
        after = self._prepared
        fresh = [m for m in messages if m.seq > after]
        report = BatchReport(messages[0].seq, messages[-1].seq, len(fresh), 0, len(messages) - len(fresh), 0)
        if not fresh:
            return None, report
        timings = self.timings
        encoded_events: list[bytes] = []
        escalations: list[EscalationRow] = []
        dead: list[DeadLetterRow] = []
        events = 0
        decode = self.decoder.decode
        for start in range(0, len(fresh), _CHUNK):
            t0 = time.perf_counter()
            rows: list[EventRow] = []
            conversations: list[Decoded] = []
            for m in fresh[start : start + _CHUNK]:
                try:
                    decoded = decode(m.seq, m.subject, m.data, m.time)
                except EventDecodeError as e:
                    self._log.error("dead letter", seq=m.seq, subject=m.subject, error=e.reason)
                    dead.append(DeadLetterRow(m.seq, m.subject, e.reason, round(time.time() * 1000)))
                    continue
                for d in decoded:
                    rows.append(d.row)
                    if d.row.aggregate_type == CONVERSATION:
                        conversations.append(d)
            t1 = time.perf_counter()
            made, deferred = self._fold.apply(conversations)
            escalations += made
            if deferred:  # conversations the cache lost: read back what earlier batches wrote
                started = time.perf_counter()
                await self._finish()  # every earlier insert must have landed
                self._fold.load(await self._call(self.sink.load_facts, self._fold.unknown(deferred)))
                t1 += time.perf_counter() - started
                escalations += self._fold.apply(deferred, defer_unknown=False)[0]
            t2 = time.perf_counter()
            if rows:
                encoded_events.append(encode_rows(rows))
                events += len(rows)
            t3 = time.perf_counter()
            timings.decode += t1 - t0
            timings.fold += t2 - t1
            timings.encode += t3 - t2
            await asyncio.sleep(0)  # let the rest of the process breathe during a replay
        t2 = time.perf_counter()
        facts = self._fold.take_touched()
        encoded = Encoded(
            fresh[0].seq,
            fresh[-1].seq,
            b"".join(encoded_events),
            encode_rows(facts),
            encode_rows(escalations),
            encode_rows(dead),
        )
        timings.encode += time.perf_counter() - t2
        self._prepared = fresh[-1].seq
        timings.commits += len(fresh)
        timings.events += events
        timings.batches += 1
        report = msgspec.structs.replace(report, events=events, dead_letters=len(dead))
        return encoded, report


def _expected(error: Exception) -> bool:
    """Failures of a service (NATS, ClickHouse), not bugs: logged without a traceback."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from streams.errors import UnavailableError

    return isinstance(error, UnavailableError | ClickHouseError | OSError)
