"""Rebuilding a read model from the first event, without downtime.

1. Build ``<schema>_shadow`` with the projector's migrations and replay the whole history into it
   with direct reads of the stream (pages of ``page`` commits, one transaction each), while the
   live schema keeps serving and its runner keeps projecting.
2. Once a page comes back short (the shadow reached the end of the stream), take the projector's
   batch lock, the one the live runner takes for every batch, so the live checkpoint stands still.
   Apply whatever the shadow still lacks up to that checkpoint, then in the same transaction
   rename the live schema to ``<schema>_old_<timestamp>`` and the shadow to the live name.
3. Drop the old schema in a transaction of its own, after readers still inside it are done.

The shadow may end up ahead of the live checkpoint; the live runner then skips what the new
schema already accounts for. Poison commits are dead-lettered again in the new schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from psycopg import AsyncConnection, errors, sql
from psycopg_pool import AsyncConnectionPool

from projections.batches import apply_batch
from projections.checkpoints import (
    ensure_checkpoint,
    lock_batch,
    read_checkpoint,
    set_checkpoint,
    try_lock,
    unlock,
)
from projections.projector import Projector
from read_models.migrations import migrate
from streams.jetstream import RawMessage
from streams.store import EventStore

log = structlog.get_logger(__name__)


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


async def rebuild(
    projector: Projector, store: EventStore, pool: AsyncConnectionPool[Any], *, page: int = 1000
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
            await migrate(conn, projector.read_model, schema=shadow)
            await ensure_checkpoint(conn, shadow, name)
            bound.info("rebuild started", shadow=shadow)

            position, commits, events, dead = 0, 0, 0, 0
            async with contextlib.aclosing(_pages(store, projector.subject, page)) as pages:
                async for messages in pages:
                    async with conn.transaction():
                        result = await apply_batch(conn, projector, store, shadow, messages, after=position)
                        await set_checkpoint(conn, shadow, name, result.checkpoint, announce=False)
                    position = result.checkpoint
                    commits, events = commits + result.commits, events + result.events
                    dead += len(result.dead_letters)
            await _analyze(conn, shadow)  # statistics for the readers of the new schema from its first query

            # The swap. The live runner waits on the batch lock meanwhile.
            locked = time.perf_counter()
            async with conn.transaction():
                await lock_batch(conn, name)
                target = await _live_checkpoint(conn, live, name)
                while position < target:
                    messages = await store.read_all(after_seq=position, limit=page, subject=projector.subject)
                    if not messages:
                        raise RuntimeError(f"the stream ends at {position}, before the live checkpoint {target}")
                    result = await apply_batch(conn, projector, store, shadow, messages, after=position)
                    position = result.checkpoint
                    commits, events = commits + result.commits, events + result.events
                    dead += len(result.dead_letters)
                await set_checkpoint(conn, shadow, name, position)
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
        commits=commits,
        events=events,
        dead_letters=dead,
        checkpoint=position,
        seconds=round(seconds, 3),
        events_per_second=round(events / seconds, 1) if seconds > 0 else 0.0,
        locked_ms=round(locked_ms, 1),
    )
    bound.info("rebuild swapped in", **msgspec.structs.asdict(report))
    return report


async def _pages(store: EventStore, subject: str, page: int) -> AsyncGenerator[list[RawMessage], None]:
    """Every commit on the subject, a page at a time, reading the next page while the caller applies one."""
    pending = asyncio.ensure_future(store.read_all(after_seq=0, limit=page, subject=subject))
    try:
        while messages := await pending:
            if len(messages) == page:
                pending = asyncio.ensure_future(store.read_all(after_seq=messages[-1].seq, limit=page, subject=subject))
            yield messages
            if len(messages) < page:
                return
    finally:
        pending.cancel()


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
