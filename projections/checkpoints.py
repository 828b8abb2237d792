"""Where a projection stands: the ``Checkpoints`` port, and its PostgreSQL implementation.

A projection's checkpoint is the last stream sequence its rows account for, kept in the same
store as the rows and moved by the same write. The runner (``projections.runner``) drives any
projection through this port:

* ``start(projector, stop)``: become the projection's only writer, bring its tables up to date,
  undo what a batch left without its checkpoint; returns the checkpoint;
* ``batch(projector)``: one batch's write, as a context: ``after`` is the checkpoint at its start
  (what is at or below it is done already), ``advance(seq)`` says how far the batch goes, and the
  checkpoint moves there when the context ends without an error, after the batch's rows. A batch
  that fails moves nothing, and leaves no rows once the store is started again;
* ``position``, ``dead_letter_count``, ``wait`` (read-your-writes) for readers and for status.

``tests/contracts/test_checkpoints.py`` holds the contract both implementations pass: this
module's ``PostgresCheckpoints`` (one transaction per batch) and ClickHouse's
(``projections.analytics.sink.ClickHouseCheckpoints``: rows first, checkpoint last, rows above the
checkpoint deleted at start).

PostgreSQL: the checkpoint is one row in the projector's own schema (``<schema>.checkpoint``),
written in the same transaction as the rows it accounts for. Every change of a *live* checkpoint
is announced with ``NOTIFY parley_checkpoint, '<projector>:<seq>'`` in that transaction, so a
waiter hears it exactly when the rows become visible. Locks (advisory locks, keyed by projector
name):

* ``leader``, held by a runner's session for as long as it runs: one runner per projector;
* ``batch``, taken first in every transaction that writes the live schema (a runner's batch, a
  rebuild's swap), so a swap never interleaves with a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import Any, Generic, Literal, TypeVar

import msgspec
import psycopg
import structlog
from psycopg import AsyncConnection, errors, sql
from psycopg_pool import AsyncConnectionPool

from projections.sql import statement
from read_models.migrations import ReadModel, migrate

log = structlog.get_logger(__name__)

CHANNEL = "parley_checkpoint"

LockKind = Literal["leader", "batch", "rebuild"]


class DeadLetter(msgspec.Struct, frozen=True):
    """A commit a projection could not apply, kept by its sequence."""

    seq: int
    subject: str
    error: str


class BatchResult(msgspec.Struct, frozen=True):
    """What a batch did."""

    checkpoint: int  # the position the store accounts for after the batch
    commits: int  # commits applied
    events: int  # events applied
    skipped: int  # commits at or below the checkpoint
    dead_letters: list[DeadLetter]


class Stopped(Exception):
    """Asked to stop while standing by for the projection's writer's place."""


class CheckpointMissing(Exception):
    """The checkpoint vanished under a running projector: start again from the first event."""


# The port -------------------------------------------------------------------------------------


class Batch:
    """One batch's write (``Checkpoints.batch``): where it starts, how far it goes, its dead letters."""

    def __init__(self, after: int) -> None:
        self.after = after  # the checkpoint when the batch started
        self.position = after  # where the checkpoint moves when the batch ends well

    def advance(self, seq: int) -> None:
        """The batch accounts for the stream up to ``seq`` (a checkpoint never moves back)."""
        self.position = max(self.position, seq)

    async def dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Record commits the projection could not apply (written with the batch; once per sequence)."""
        raise NotImplementedError


B = TypeVar("B", bound=Batch)


class Checkpoints(ABC, Generic[B]):
    """Where projections stand in one store (a PostgreSQL schema, a ClickHouse database)."""

    where: str  # the schema or database, as status reports it
    # Failures of the store that are not bugs: the runner logs them without a traceback.
    expected: tuple[type[Exception], ...] = ()

    @abstractmethod
    async def start(self, projector: str, stop: asyncio.Event) -> int:
        """Become ``projector``'s only writer (``Stopped`` if ``stop`` is set meanwhile), its tables up
        to date and the rows of a batch left without its checkpoint gone; the checkpoint."""

    @abstractmethod
    async def stop(self) -> None:
        """Let go of the writer's place (``start`` may be called again)."""

    async def close(self) -> None:
        """Let go of everything; the store is not started again."""
        await self.stop()

    @abstractmethod
    def batch(self, projector: str) -> contextlib.AbstractAsyncContextManager[B]:
        """One batch's write: the checkpoint moves to the batch's ``position`` after its rows, when
        the context ends without an error (``CheckpointMissing`` if it vanished)."""

    @abstractmethod
    async def position(self, projector: str) -> int:
        """The checkpoint (0: nothing projected, or no tables yet)."""

    @abstractmethod
    async def dead_letter_count(self) -> int:
        """Commits recorded as dead letters in this store."""

    async def wait(self, projector: str, position: int, timeout: float) -> bool:  # noqa: ASYNC109
        """True once the checkpoint is at ``position`` or past it; False after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.position(projector) < position:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(0.02, max(deadline - loop.time(), 0)))
        return True


# PostgreSQL -----------------------------------------------------------------------------------


def lock_key(kind: LockKind, projector: str) -> str:
    return f"parley.projector.{kind}:{projector}"


async def lock_batch(conn: AsyncConnection[Any], projector: str) -> None:
    """Take the projector's batch lock until the end of the current transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [lock_key("batch", projector)])


async def try_lock(conn: AsyncConnection[Any], kind: LockKind, projector: str) -> bool:
    """Take a session lock if it is free."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [lock_key(kind, projector)])
    row = await cur.fetchone()
    return bool(row and row[0])


async def unlock(conn: AsyncConnection[Any], kind: LockKind, projector: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [lock_key(kind, projector)])


async def read_checkpoint(
    conn: AsyncConnection[Any], schema: str, projector: str, *, for_update: bool = False
) -> int | None:
    """The last stream sequence the schema accounts for; None when there is no checkpoint row."""
    query = "SELECT last_seq FROM {s}.checkpoint WHERE projector = %s" + (" FOR UPDATE" if for_update else "")
    cur = await conn.execute(statement(query, schema), [projector])
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def ensure_checkpoint(conn: AsyncConnection[Any], schema: str, projector: str) -> int:
    """The checkpoint, creating it at 0 (nothing projected) when the row is missing."""
    await conn.execute(
        sql.SQL("INSERT INTO {}.checkpoint (projector, last_seq) VALUES (%s, 0) ON CONFLICT DO NOTHING").format(
            sql.Identifier(schema)
        ),
        [projector],
    )
    return await read_checkpoint(conn, schema, projector) or 0


async def set_checkpoint(
    conn: AsyncConnection[Any], schema: str, projector: str, seq: int, *, announce: bool = True
) -> None:
    """Move the checkpoint (inside the caller's transaction) and, for a live schema, announce it
    (one statement: it runs once a batch, and a round trip is a good part of a small batch's time)."""
    if announce:
        await conn.execute(statement(_MOVE_AND_ANNOUNCE, schema), [seq, projector, CHANNEL, f"{projector}:{seq}"])
    else:
        await conn.execute(statement(_MOVE, schema), [seq, projector])


_MOVE = "UPDATE {s}.checkpoint SET last_seq = %s, updated_at = now() WHERE projector = %s"
_MOVE_AND_ANNOUNCE = f"WITH moved AS ({_MOVE} RETURNING 1) SELECT pg_notify(%s, %s) FROM moved"


async def record_dead_letters(conn: AsyncConnection[Any], schema: str, dead: Sequence[DeadLetter]) -> None:
    if not dead:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            sql.SQL(
                "INSERT INTO {}.dead_letters (seq, subject, error) VALUES (%s, %s, %s)"
                " ON CONFLICT (seq) DO UPDATE SET subject = excluded.subject, error = excluded.error,"
                " recorded_at = now()"
            ).format(sql.Identifier(schema)),
            [(d.seq, d.subject, d.error) for d in dead],
        )


async def wait_for_position(
    db: AsyncConnectionPool[Any] | AsyncConnection[Any],
    read_model: ReadModel,
    position: int,
    timeout: float,  # noqa: ASYNC109 (running out of time is an answer, False, not an error)
) -> bool:
    """True as soon as a read model accounts for the stream sequence ``position``; False after ``timeout`` s.

    Read-your-writes: a command returns the sequence of its commit, the API waits for it before
    reading. Listens first, then reads the checkpoint, so a change in between is not missed. A
    connection passed in must be idle (not inside a transaction); it is left as it was found.
    """
    if isinstance(db, AsyncConnectionPool):
        async with db.connection() as conn:
            return await _wait(conn, read_model.schema, read_model.name, position, timeout)
    return await _wait(db, read_model.schema, read_model.name, position, timeout)


async def _wait(conn: AsyncConnection[Any], schema: str, projector: str, position: int, timeout: float) -> bool:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    autocommit = conn.autocommit
    await conn.set_autocommit(True)
    try:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        if await _current(conn, schema, projector) >= position:
            return True
        while (remaining := deadline - loop.time()) > 0:
            async for notice in conn.notifies(timeout=remaining):
                name, _, seq = notice.payload.rpartition(":")
                if name == projector and int(seq) >= position:
                    return True
        return await _current(conn, schema, projector) >= position
    finally:
        if not conn.broken:
            await conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(CHANNEL)))
            await conn.set_autocommit(autocommit)


async def _current(conn: AsyncConnection[Any], schema: str, projector: str) -> int:
    try:
        return await read_checkpoint(conn, schema, projector) or 0
    except (errors.UndefinedTable, errors.InvalidSchemaName):  # not migrated yet
        return 0


class PostgresBatch(Batch):
    """A batch inside one transaction of the leader's connection, on the projector's schema."""

    def __init__(self, conn: AsyncConnection[Any], schema: str, after: int) -> None:
        super().__init__(after)
        self.conn = conn
        self.schema = schema

    async def dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        await record_dead_letters(self.conn, self.schema, letters)


class PostgresCheckpoints(Checkpoints[PostgresBatch]):
    """Checkpoints in a read model's PostgreSQL schema (see the module's docstring).

    ``start`` takes a connection from the pool for as long as the writer runs (its session holds the
    leader lock; another writer of the same projector stands by, polling every ``standby_poll``
    seconds), migrates the schema and creates the checkpoint row if missing. Each batch is one
    transaction: batch lock, checkpoint ``FOR UPDATE``, the rows, the checkpoint and its ``NOTIFY``.
    """

    expected = (
        psycopg.OperationalError,
        psycopg.InterfaceError,
        errors.UndefinedTable,
        errors.InvalidSchemaName,
    )

    def __init__(self, pool: AsyncConnectionPool[Any], read_model: ReadModel, *, standby_poll: float = 1.0) -> None:
        self.pool = pool
        self.read_model = read_model
        self.where = read_model.schema
        self.standby_poll = standby_poll
        self._conn: AsyncConnection[Any] | None = None
        self._leads: str | None = None

    async def start(self, projector: str, stop: asyncio.Event) -> int:
        if self._conn is None:
            conn = await self.pool.getconn()
            try:
                await conn.set_autocommit(True)
                await self._lead(conn, projector, stop)
            except BaseException:
                await self.pool.putconn(conn)
                raise
            self._conn, self._leads = conn, projector
        await migrate(self._conn, self.read_model)
        return await ensure_checkpoint(self._conn, self.where, projector)

    async def _lead(self, conn: AsyncConnection[Any], projector: str, stop: asyncio.Event) -> None:
        announced = False
        while not await try_lock(conn, "leader", projector):
            if not announced:
                log.info("another runner leads this projector; standing by", projector=projector)
                announced = True
            try:
                await asyncio.wait_for(stop.wait(), self.standby_poll)
            except TimeoutError:
                continue
            raise Stopped

    async def stop(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        projector, self._leads = self._leads, None
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            try:
                if projector is not None:
                    await unlock(conn, "leader", projector)
                await conn.set_autocommit(False)
            except psycopg.Error:
                await conn.close()
        else:
            await conn.close()  # the session ends, and with it the leader lock
        await self.pool.putconn(conn)

    @contextlib.asynccontextmanager
    async def batch(self, projector: str) -> AsyncIterator[PostgresBatch]:
        conn = self._conn
        if conn is None:
            raise RuntimeError("start the checkpoints before writing a batch")
        async with conn.transaction():
            await lock_batch(conn, projector)
            checkpoint = await read_checkpoint(conn, self.where, projector, for_update=True)
            if checkpoint is None:
                raise CheckpointMissing(f"{self.where}.checkpoint has no row for {projector}")
            batch = PostgresBatch(conn, self.where, checkpoint)
            yield batch
            if batch.position > checkpoint:
                await set_checkpoint(conn, self.where, projector, batch.position)

    async def position(self, projector: str) -> int:
        async with self.pool.connection() as conn:
            try:
                return await read_checkpoint(conn, self.where, projector) or 0
            except (errors.UndefinedTable, errors.InvalidSchemaName):  # not migrated yet
                await conn.rollback()
                return 0

    async def dead_letter_count(self) -> int:
        async with self.pool.connection() as conn:
            try:
                cur = await conn.execute(
                    sql.SQL("SELECT count(*) FROM {}.dead_letters").format(sql.Identifier(self.where))
                )
            except (errors.UndefinedTable, errors.InvalidSchemaName):  # not migrated yet
                await conn.rollback()
                return 0
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def wait(self, projector: str, position: int, timeout: float) -> bool:  # noqa: ASYNC109
        async with self.pool.connection() as conn:
            return await _wait(conn, self.where, projector, position, timeout)
