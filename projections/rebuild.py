"""Rebuilding a read model from the first event, without downtime.

1. Build ``<schema>_shadow`` with the projector's migrations and replay the whole history into it
   (``EventStore.replay``: pages of ``page`` commits read in bulk), while the live schema keeps serving
   and its runner keeps projecting. A projector with a bulk path (``Projector.replay``) folds the
   events in memory and writes its rows with COPY; should that path meet a history it cannot
   reproduce row for row, the shadow is made again and the history replayed with ``apply``, a page
   per transaction (``apply_batch``), as for a projector without one.
2. Once a page comes back short (the shadow reached the end of the stream), take the projector's
   batch lock, the one the live runner takes for every batch, so the live checkpoint stands still.
   Apply whatever the shadow still lacks up to that checkpoint, then in the same transaction
   rename the live schema to ``<schema>_old_<timestamp>`` and the shadow to the live name.
3. Drop the old schema in a transaction of its own, after readers still inside it are done.

The shadow may end up ahead of the live checkpoint; the live runner then skips what the new
schema already accounts for. Poison commits are dead-lettered again in the new schema.

The stream is read without a server-side filter (the replay's and the swap's reads filter locally):
a filtered read costs the server time in proportion to the subjects in the stream, and a rebuild
reads most of them anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg import AsyncConnection, errors, sql
from psycopg_pool import AsyncConnectionPool

from projections.batches import BatchResult, DeadLetter, apply_batch, decode, record_dead_letters
from projections.checkpoints import (
    ensure_checkpoint,
    lock_batch,
    read_checkpoint,
    set_checkpoint,
    try_lock,
    unlock,
)
from projections.projector import NotReplayable, Projector, Replay
from read_models.migrations import migrate
from streams.bulk import Delivered
from streams.store import EventStore

log = structlog.get_logger(__name__)

# Commits per read. Large pages keep the per-request costs of NATS and PostgreSQL small; two pages
# are in memory at most (one being applied, the next one being read).
PAGE = 10_000
# Commits the bulk replay folds between two turns of the event loop, in which the read of the next
# page and the write of the last one go on.
YIELD_EVERY = 200


class RebuildInProgress(Exception):
    """Another process is rebuilding this read model."""


class RebuildReport(msgspec.Struct, frozen=True):
    name: str
    schema: str
    commits: int
    events: int
    dead_letters: int
    checkpoint: int  # where the new live schema stands
    seconds: float
    events_per_second: float
    locked_ms: float  # how long the live projector was held for the swap


# Told after each page: the stream sequence the shadow has reached, and the stream's last one when
# the rebuild started (the command line draws it as a bar).
Progress = Callable[[int, int], None]


async def rebuild(
    projector: Projector,
    store: EventStore,
    pool: AsyncConnectionPool[Any],
    *,
    page: int = PAGE,
    progress: Progress | None = None,
) -> RebuildReport:
    name, live = projector.name, projector.schema
    shadow = f"{live}_shadow"
    bound = log.bind(projector=name)
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        if not await try_lock(conn, "rebuild", name):
            raise RebuildInProgress(f"{name} is already being rebuilt")
        try:
            started = time.perf_counter()
            await _drop_leftovers(conn, live)
            bound.info("rebuild started", shadow=shadow)
            last = await store.last_seq()
            told = _tell(progress, last)
            told(0)
            replayed = await _replay(conn, projector, store, shadow, page, told)
            await _analyze(conn, shadow)  # statistics for the readers of the new schema from its first query

            # The swap. The live runner waits on the batch lock meanwhile.
            locked = time.perf_counter()
            async with conn.transaction():
                await lock_batch(conn, name)
                target = await _live_checkpoint(conn, live, name)
                while replayed.position < target:
                    messages = await store.read_all(
                        after_seq=replayed.position, limit=page, subject=projector.subject, filter_locally=True
                    )
                    if not messages:
                        raise RuntimeError(
                            f"the stream ends at {replayed.position}, before the live checkpoint {target}"
                        )
                    replayed.add(await apply_batch(conn, projector, store, shadow, messages, after=replayed.position))
                await set_checkpoint(conn, shadow, name, replayed.position)
                told(last)
                old = f"{live}_old_{datetime.now(UTC):%Y%m%d%H%M%S%f}"
                if await _exists(conn, live):
                    await conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(_id(live), _id(old)))
                await conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(_id(shadow), _id(live)))
            locked_ms = (time.perf_counter() - locked) * 1000
            await _drop_old(conn, old)
        finally:
            if not conn.broken:
                await unlock(conn, "rebuild", name)
                await conn.set_autocommit(False)

    seconds = time.perf_counter() - started
    report = RebuildReport(
        name=name,
        schema=live,
        commits=replayed.commits,
        events=replayed.events,
        dead_letters=replayed.dead_letters,
        checkpoint=replayed.position,
        seconds=round(seconds, 3),
        events_per_second=round(replayed.events / seconds, 1) if seconds > 0 else 0.0,
        locked_ms=round(locked_ms, 1),
    )
    bound.info("rebuild swapped in", **msgspec.structs.asdict(report))
    return report


def _tell(progress: Progress | None, last: int) -> Callable[[int], None]:
    def told(position: int) -> None:
        if progress is not None:
            progress(min(position, last), last)  # commits after the start are the catch-up's

    return told


class _Progress(msgspec.Struct):
    """How far a replay has come, and what it applied."""

    position: int = 0
    commits: int = 0
    events: int = 0
    dead_letters: int = 0

    def add(self, result: BatchResult) -> None:
        self.position = result.checkpoint
        self.commits += result.commits
        self.events += result.events
        self.dead_letters += len(result.dead_letters)


async def _replay(
    conn: AsyncConnection[Any],
    projector: Projector,
    store: EventStore,
    shadow: str,
    page: int,
    told: Callable[[int], None],
) -> _Progress:
    """The whole history into a new shadow schema: in bulk if the projector can, else event by event."""
    await _new_schema(conn, projector, shadow)
    if (replay := projector.replay()) is not None:
        try:
            return await _replay_in_bulk(conn, projector, replay, store, shadow, page, told)
        except (NotReplayable, psycopg.DataError, psycopg.IntegrityError) as e:
            log.warning(
                "the bulk replay cannot reproduce this history row for row; replaying it event by event",
                projector=projector.name,
                error=f"{type(e).__name__}: {e}",
            )
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(_id(shadow)))
            await _new_schema(conn, projector, shadow)
    return await _replay_events(conn, projector, store, shadow, page, told)


async def _replay_in_bulk(
    conn: AsyncConnection[Any],
    projector: Projector,
    replay: Replay,
    store: EventStore,
    shadow: str,
    page: int,
    told: Callable[[int], None],
) -> _Progress:
    """Fold each page and write the rows it settled while folding the next; the rows still open and
    the checkpoint go last, together. A commit is folded as soon as it is decoded, so the objects
    decoding makes die young, before the cycle collector walks them."""
    progress = _Progress()
    writing: asyncio.Future[None] | None = None
    try:
        async with contextlib.aclosing(_pages(store, projector.subject, page)) as pages:
            async for messages in pages:
                commits, events, dead = 0, 0, []
                for i, raw in enumerate(messages, 1):
                    match decode(projector, store, raw):
                        case DeadLetter() as letter:
                            dead.append(letter)
                        case decoded:
                            for event in decoded:
                                replay.apply(event)
                            commits, events = commits + 1, events + len(decoded)
                    if i % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(_write(conn, shadow, replay.flush(conn, shadow), dead))
                progress.add(BatchResult(messages[-1].seq, commits, events, skipped=0, dead_letters=dead))
                told(progress.position)
        if writing is not None:
            await writing
    except BaseException:  # the connection is free again once the write in flight is over
        if writing is not None:
            await asyncio.wait([writing])
            if not writing.cancelled():
                writing.exception()  # seen; the error being raised tells what went wrong
        raise
    async with conn.transaction():
        await replay.flush(conn, shadow, final=True)
        await set_checkpoint(conn, shadow, projector.name, progress.position, announce=False)
    return progress


async def _write(conn: AsyncConnection[Any], shadow: str, rows: Awaitable[None], dead: list[DeadLetter]) -> None:
    async with conn.transaction():
        await rows
        await record_dead_letters(conn, shadow, dead)


async def _replay_events(
    conn: AsyncConnection[Any],
    projector: Projector,
    store: EventStore,
    shadow: str,
    page: int,
    told: Callable[[int], None],
) -> _Progress:
    """Each page with the projector's ``apply``, in one transaction with the checkpoint."""
    progress = _Progress()
    async with contextlib.aclosing(_pages(store, projector.subject, page)) as pages:
        async for messages in pages:
            async with conn.transaction():
                result = await apply_batch(conn, projector, store, shadow, messages, after=progress.position)
                await set_checkpoint(conn, shadow, projector.name, result.checkpoint, announce=False)
            progress.add(result)
            told(progress.position)
    return progress


async def _new_schema(conn: AsyncConnection[Any], projector: Projector, schema: str) -> None:
    await migrate(conn, projector.read_model, schema=schema)
    await ensure_checkpoint(conn, schema, projector.name)


async def _pages(store: EventStore, subject: str, page: int) -> AsyncGenerator[list[Delivered], None]:
    """Every commit on the subject up to the stream's end, a page at a time (``EventStore.replay``)."""
    async with contextlib.aclosing(store.replay(subject=subject, page=page)) as pages:
        async for messages in pages:
            yield messages


async def _analyze(conn: AsyncConnection[Any], schema: str) -> None:
    cur = await conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(%s) AND relkind = 'r'", [schema]
    )
    for (table,) in await cur.fetchall():
        await conn.execute(sql.SQL("ANALYZE {}.{}").format(_id(schema), _id(table)))


async def _live_checkpoint(conn: AsyncConnection[Any], live: str, name: str) -> int:
    if not await _exists(conn, live):
        return 0
    return await read_checkpoint(conn, live, name) or 0


async def _exists(conn: AsyncConnection[Any], schema: str) -> bool:
    cur = await conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", [schema])
    row = await cur.fetchone()
    return bool(row and row[0])


async def _drop_old(conn: AsyncConnection[Any], old: str) -> None:
    """Drop the replaced schema once the readers still inside it are done (a rebuild drops it later if not)."""
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '30s'")
            await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(_id(old)))
    except errors.LockNotAvailable:
        log.warning("the replaced schema is still in use; the next rebuild drops it", schema=old)


async def _drop_leftovers(conn: AsyncConnection[Any], live: str) -> None:
    """A shadow or an old schema left by a rebuild that died."""
    cur = await conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname = %s OR nspname LIKE %s",
        [f"{live}_shadow", live.replace("_", r"\_") + r"\_old\_%"],
    )
    for (schema,) in await cur.fetchall():
        log.info("dropping a leftover schema", schema=schema)
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(_id(schema)))


def _id(name: str) -> sql.Identifier:
    return sql.Identifier(name)
