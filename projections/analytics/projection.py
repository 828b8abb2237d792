"""The analytics projection: every event into ClickHouse, and the facts the KPIs are computed from.

A pipelined projection of the one runner (``projections.runner``, ``Pipeline``). Per batch: the
commits are decoded without personal data by the store (``EventStore.redacted``: each event with
its ``events`` row), the conversations and the calls folded (``facts``), every table's rows
encoded (``sink.encode_rows``); then written table by table, and the checkpoint moved after them
(``sink.ClickHouseCheckpoints``). Facts rows are keyed by aggregate and versioned: written twice,
they are one row.

``analytics_runner`` makes its runner: batches of 50,000 commits from the bulk feed, no
acknowledgements, prepared while the previous batch is inserted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime

import msgspec
import structlog

from domain.call import AGGREGATE_TYPE as CALL
from domain.conversation import AGGREGATE_TYPE as CONVERSATION
from projections.analytics.facts import CallFold, Decoded, FactsFold
from projections.analytics.sink import AnalyticsSink, ClickHouseBatch, ClickHouseCheckpoints, Encoded, encode_rows
from projections.batches import Message
from projections.checkpoints import BatchResult, DeadLetter
from projections.projector import Pipelined
from projections.runner import Pipeline, ProjectorRunner
from read_models.analytics_schema import CallTurnRow, DeadLetterRow, EscalationRow, EventRow
from streams.bulk import Delivered
from streams.errors import EventDecodeError
from streams.store import EventStore, RowOf

log = structlog.get_logger(__name__)

# ``Redacted.decode_all``: commits into every event's row and the events by aggregate type, and the failures.
DecodeAll = Callable[
    [Sequence[Delivered], RowOf[EventRow], Mapping[str, list[Decoded]]],
    tuple[list[EventRow], list[EventDecodeError]],
]

NAME = "analytics"
BATCH = 50_000  # commits per pull at most; one insert per table (fewer, larger parts: less merging)


class Timings(msgspec.Struct):
    """Where the projection's time went, in seconds (``write`` in the sink's thread, beside the rest)."""

    decode: float = 0.0
    fold: float = 0.0
    encode: float = 0.0
    write: float = 0.0
    write_cpu: float = 0.0  # CPU of the inserting thread (the engine's own threads not counted)


class AnalyticsProjection(Pipelined[ClickHouseBatch, Encoded]):
    """Every commit of the stream into the analytics tables (see the module's docstring)."""

    subject = None  # every commit

    def __init__(
        self, sink: AnalyticsSink, *, name: str = NAME, cache_size: int = 100_000, fast_decode: bool = True
    ) -> None:
        self.name = name
        self.sink = sink
        self.cache_size = cache_size
        self.fast_decode = fast_decode
        self.fold = FactsFold(cache_size)
        self.calls = CallFold(cache_size)
        self.timings = Timings()
        self._decode: DecodeAll | None = None
        self._run_id = ""

    async def begin(self, store: EventStore) -> None:
        """From the checkpoint: an empty fold cache, and new insert tokens (rows ``recover`` deleted are new)."""
        self._decode = store.redacted(fast=self.fast_decode).decode_all
        self.fold = FactsFold(self.cache_size)
        self.calls = CallFold(self.cache_size)
        self._run_id = uuid.uuid4().hex[:12]

    def preparing(self, landed: Callable[[], Awaitable[None]]) -> _Preparation:
        assert self._decode is not None, "begin() before preparing()"
        return _Preparation(self, self._decode, landed)

    async def write(self, batch: ClickHouseBatch, prepared: Encoded) -> BatchResult:
        await batch.call(self._write, prepared)
        # The runner knows the batch's commits; the events and dead letters are the preparation's.
        return BatchResult(prepared.last_seq, 0, prepared.event_count, 0, prepared.dead)

    def _write(self, encoded: Encoded) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        self.sink.write(encoded, f"{self._run_id}:{encoded.first_seq}-{encoded.last_seq}")
        self.timings.write += time.perf_counter() - started
        self.timings.write_cpu += time.thread_time() - cpu


class _Preparation:
    """One batch, prepared chunk by chunk: decoded, folded, encoded."""

    def __init__(
        self,
        projection: AnalyticsProjection,
        decode: DecodeAll,
        landed: Callable[[], Awaitable[None]],
    ) -> None:
        self.projection = projection
        self.decode = decode
        self.landed = landed
        self.events: list[bytes] = []
        self.escalations: list[EscalationRow] = []
        self.call_turns: list[CallTurnRow] = []
        self.dead: list[DeadLetter] = []
        self.count = 0
        self.first_seq = 0
        self.last_seq = 0

    async def add(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        if not isinstance(messages[0], Delivered):  # from a consumer feed: its times as epoch milliseconds
            messages = [Delivered(m.seq, m.subject, m.data, _epoch_ms(m.time)) for m in messages]
        self.first_seq = self.first_seq or messages[0].seq
        self.last_seq = messages[-1].seq
        projection = self.projection
        timings, fold, decode = projection.timings, projection.fold, self.decode
        t0 = time.perf_counter()
        conversations: list[Decoded] = []
        calls: list[Decoded] = []
        rows, failed = decode(messages, EventRow, {CONVERSATION: conversations, CALL: calls})  # type: ignore[arg-type]
        for e in failed:
            log.error("dead letter", projector=projection.name, seq=e.seq, subject=e.subject, error=e.reason)
            self.dead.append(DeadLetter(e.seq, e.subject, e.reason))
        t1 = time.perf_counter()
        made, deferred = fold.apply(conversations)
        self.escalations += made
        if deferred:  # conversations the cache lost: read back what earlier batches wrote
            started = time.perf_counter()
            await self.landed()  # every earlier insert must have landed
            fold.load(await projection.sink.call(projection.sink.load_facts, fold.unknown(deferred)))
            t1 += time.perf_counter() - started
            self.escalations += fold.apply(deferred, defer_unknown=False)[0]
        if calls:
            turns, deferred = projection.calls.apply(calls)
            self.call_turns += turns
            if deferred:  # calls the cache lost, likewise
                await self.landed()
                loaded = await projection.sink.call(projection.sink.load_calls, projection.calls.unknown(deferred))
                projection.calls.load(loaded)
                self.call_turns += projection.calls.apply(deferred, defer_unknown=False)[0]
        t2 = time.perf_counter()
        if rows:
            self.events.append(encode_rows(rows))
            self.count += len(rows)
        t3 = time.perf_counter()
        timings.decode += t1 - t0
        timings.fold += t2 - t1
        timings.encode += t3 - t2

    def done(self) -> Encoded:
        started = time.perf_counter()
        facts = self.projection.fold.take_touched()
        calls = self.projection.calls.take_touched()
        at = round(time.time() * 1000)
        encoded = Encoded(
            self.first_seq,
            self.last_seq,
            b"".join(self.events),
            encode_rows(facts),
            encode_rows(self.escalations),
            encode_rows([DeadLetterRow(d.seq, d.subject, d.error, at) for d in self.dead]),
            encode_rows(calls),
            encode_rows(self.call_turns),
            self.count,
            self.dead,
        )
        self.projection.timings.encode += time.perf_counter() - started
        return encoded


def _epoch_ms(time: str | int) -> int:
    if isinstance(time, int):
        return time
    return round(datetime.fromisoformat(time).timestamp() * 1000) if time else 0


def analytics_runner(
    store: EventStore,
    sink: AnalyticsSink,
    *,
    name: str = NAME,
    batch: int = BATCH,
    idle_wait: float = 0.5,
    cache_size: int = 100_000,
    fast_decode: bool = True,
    reader: AnalyticsSink | None = None,
) -> ProjectorRunner[ClickHouseBatch]:
    """The analytics projection's runner: pipelined, from the bulk feed, its checkpoints in ``sink``'s
    database (read for status through ``reader``'s client, if given)."""
    projection = AnalyticsProjection(sink, name=name, cache_size=cache_size, fast_decode=fast_decode)
    checkpoints = ClickHouseCheckpoints(sink, reader=reader)
    return ProjectorRunner(projection, store, checkpoints, batch=batch, idle_wait=idle_wait, pipeline=Pipeline())
