"""What a projection is: the events it follows, and how a batch of their commits lands in its store.

A ``Projection`` is what the runner (``projections.runner``) drives: a name, a subject filter, and
``project(batch, messages)``, which writes a batch of commits inside the write its checkpoint store
opened (``Checkpoints.batch``). A projection whose batches are worth preparing while the previous
one is written (``Pipelined``: the analytics projection, a replay of millions of events) splits
that in two: ``preparing`` (decode, fold, encode; no I/O but reading back what earlier batches
wrote) and ``write``; the runner's ``Pipeline`` option overlaps them.

A ``Projector`` is a projection into PostgreSQL: it owns one schema (its ``read_model``), and
``apply_events`` writes a batch of events into a schema named by the caller, so the same code fills
the live schema and a rebuild's shadow. It runs inside the batch's transaction, in a pipeline: it
should not commit, and it must be safe to apply an event twice, even though the checkpoint already
keeps replays away. By default it applies each event with ``apply`` (a statement per event); a
projector that folds documents reads the batch's documents back once and writes what changed.

A projector may also offer a bulk path for replaying a whole history into an empty schema
(``replay``): a rebuild uses it before its swap, and falls back to ``apply`` without it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from psycopg import AsyncConnection, AsyncCursor

from projections.batches import Message, apply_batch
from projections.checkpoints import B, BatchResult, PostgresBatch
from read_models.migrations import Migration, ReadModel
from streams.store import EventStore, RecordedEvent

P = TypeVar("P")
P_co = TypeVar("P_co", covariant=True)


class Projection(ABC, Generic[B]):
    """Commits of the stream into a store, batch by batch (see the module's docstring)."""

    name: str
    subject: str | None  # the subject filter of the commits it follows (None: every commit)

    async def begin(self, store: EventStore) -> None:
        """Called each time the runner starts (again) from the checkpoint: forget what is in memory."""

    @abstractmethod
    async def project(self, batch: B, messages: Sequence[Message]) -> BatchResult:
        """Write the commits above ``batch.after`` (the rest are done); the batch's result."""


class Preparation(Protocol[P_co]):
    """A batch being prepared (``Pipelined.preparing``), a chunk of commits at a time, in stream order."""

    async def add(self, messages: Sequence[Message]) -> None: ...

    def done(self) -> P_co: ...


class Pipelined(Projection[B], Generic[B, P]):
    """A projection whose batches are prepared apart from their writes (the runner's ``Pipeline``)."""

    @abstractmethod
    def preparing(self, landed: Callable[[], Awaitable[None]]) -> Preparation[P]:
        """A new batch to prepare. ``landed()`` waits until every batch written before is in the
        store, for a preparation that must read back what they wrote."""

    @abstractmethod
    async def write(self, batch: B, prepared: P) -> BatchResult:
        """Write a prepared batch inside ``batch`` (the commits it holds are all above ``batch.after``)."""

    async def project(self, batch: B, messages: Sequence[Message]) -> BatchResult:
        fresh = [m for m in messages if m.seq > batch.after]
        if not fresh:
            return BatchResult(batch.after, 0, 0, len(messages), [])
        preparation = self.preparing(_nothing_in_flight)
        await preparation.add(fresh)
        result = await self.write(batch, preparation.done())
        return BatchResult(
            result.checkpoint,
            len(fresh) - len(result.dead_letters),
            result.events,
            len(messages) - len(fresh),
            result.dead_letters,
        )


async def _nothing_in_flight() -> None:
    return None


class NotReplayable(Exception):
    """The history holds something a bulk replay cannot reproduce row for row; replay it event by event."""


class Replay(Protocol):
    """Folds a history in memory, oldest event first, and writes the rows it settled in bulk.

    The rows must be exactly those ``Projector.apply`` gives for the same events. Where that cannot
    be guaranteed, ``apply`` (or the write ``flush`` returns) raises ``NotReplayable``, or the write
    fails with a data or integrity error of the database (a key taken twice, a value refused).
    Either way the caller starts over with ``Projector.apply``.
    """

    def apply(self, event: RecordedEvent) -> None: ...

    def flush(self, conn: AsyncConnection[Any], schema: str, *, final: bool = False) -> Awaitable[None]:
        """Write the rows no later event can change (``final``: every row), inside the caller's transaction.

        The rows are taken out when ``flush`` is called, not when its result is awaited: the caller
        may go on applying events while they are written.
        """


class Projector(Projection[PostgresBatch]):
    """A projection into a PostgreSQL schema of its own (see the module's docstring)."""

    read_model: ReadModel
    subject: str  # the subject filter of the events it follows
    _store: EventStore | None = None  # the store it decodes with, from ``begin``

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.read_model.name

    @property
    def schema(self) -> str:
        return self.read_model.schema

    @property
    def ddl(self) -> tuple[Migration, ...]:
        """The migrations that build its schema, live or shadow."""
        return self.read_model.migrations

    async def begin(self, store: EventStore) -> None:
        self._store = store

    async def project(self, batch: PostgresBatch, messages: Sequence[Message]) -> BatchResult:
        assert self._store is not None, "begin() before project()"
        return await apply_batch(batch.conn, self, self._store, batch.schema, messages, after=batch.after)

    @abstractmethod
    async def apply(self, cur: AsyncCursor[Any], event: RecordedEvent, schema: str) -> None: ...

    async def apply_events(self, cur: AsyncCursor[Any], events: Sequence[RecordedEvent], schema: str) -> None:
        """A batch's events, oldest first."""
        for event in events:
            await self.apply(cur, event, schema)

    def replay(self) -> Replay | None:
        """A new bulk replay for an empty schema, or None to replay with ``apply``."""
        return None
