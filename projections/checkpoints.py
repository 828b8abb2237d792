"""Where a projector stands, the locks that order its writers, and waiting for a position.

A projector's checkpoint is one row in its own schema (``<schema>.checkpoint``), written in the
same transaction as the rows it accounts for. Every change of a *live* checkpoint is announced
with ``NOTIFY parley_checkpoint, '<projector>:<seq>'`` in that transaction, so a waiter hears it
exactly when the rows become visible.

Locks (PostgreSQL advisory locks, keyed by projector name):

* ``leader``, held by a runner's session for as long as it runs: one runner per projector;
* ``batch``, taken first in every transaction that writes the live schema (a runner's batch, a
  rebuild's swap), so a swap never interleaves with a batch.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from psycopg import AsyncConnection, errors, sql
from psycopg_pool import AsyncConnectionPool

from read_models.migrations import ReadModel

CHANNEL = "parley_checkpoint"

LockKind = Literal["leader", "batch", "rebuild"]


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
    query = "SELECT last_seq FROM {}.checkpoint WHERE projector = %s" + (" FOR UPDATE" if for_update else "")
    cur = await conn.execute(sql.SQL(query).format(sql.Identifier(schema)), [projector])
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
    """Move the checkpoint (inside the caller's transaction) and, for a live schema, announce it."""
    await conn.execute(
        sql.SQL("UPDATE {}.checkpoint SET last_seq = %s, updated_at = now() WHERE projector = %s").format(
            sql.Identifier(schema)
        ),
        [seq, projector],
    )
    if announce:
        await conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, f"{projector}:{seq}"])


async def wait_for_position(
    db: AsyncConnectionPool[Any] | AsyncConnection[Any],
    projector: ReadModel | str,
    position: int,
    timeout: float,  # noqa: ASYNC109 (running out of time is an answer, False, not an error)
) -> bool:
    """True as soon as a read model accounts for the stream sequence ``position``; False after ``timeout`` s.

    Read-your-writes: a command returns the sequence of its commit, the API waits for it before
    reading. ``projector`` is the read model or its projector's name. Listens first, then reads
    the checkpoint, so a change in between is not missed. A connection passed in must be idle (not
    inside a transaction); it is left as it was found.
    """
    if isinstance(projector, str):
        from projections.registry import projector as by_name  # the registry imports this module

        projector = by_name(projector).read_model
    read_model = projector
    if isinstance(db, AsyncConnectionPool):
        async with db.connection() as conn:
            return await _wait(conn, read_model, position, timeout)
    return await _wait(db, read_model, position, timeout)


async def _wait(conn: AsyncConnection[Any], read_model: ReadModel, position: int, timeout: float) -> bool:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    autocommit = conn.autocommit
    await conn.set_autocommit(True)
    try:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        if await _current(conn, read_model) >= position:
            return True
        while (remaining := deadline - loop.time()) > 0:
            async for notice in conn.notifies(timeout=remaining):
                name, _, seq = notice.payload.rpartition(":")
                if name == read_model.name and int(seq) >= position:
                    return True
        return await _current(conn, read_model) >= position
    finally:
        if not conn.broken:
            await conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(CHANNEL)))
            await conn.set_autocommit(autocommit)


async def _current(conn: AsyncConnection[Any], read_model: ReadModel) -> int:
    try:
        return await read_checkpoint(conn, read_model.schema, read_model.name) or 0
    except (errors.UndefinedTable, errors.InvalidSchemaName):  # not migrated yet
        return 0
