"""LangGraph checkpoints in PostgreSQL: a turn in progress survives a crash. A cache; events are the truth.

``AsyncPostgresSaver`` (langgraph-checkpoint-postgres) keeps its tables in their own schema,
``agent_checkpoints``, set up by ``open()``. A conversation is one thread
(``<tenant>:<conversation id>``); the graph checkpoints after every step of a turn, tagged with the
turn it belongs to (the customer message's conversation version and id). When a turn is run again
(the process crashed or was stopped mid-turn and JetStream delivered the message again), a
checkpoint of that very turn is resumed: the steps it finished are not run again, so the model is
not asked twice; a turn that finished but whose reply was not recorded yet is not run at all. A
checkpoint of any other turn (an older message, one the conversation moved past) is ignored and
the turn starts from the events (``agents.graph.run_turn``): the events are what the
conversation is, and a checkpoint is only ever a shortcut to the same answer. Once the reply is
recorded the thread is deleted, so the tables hold turns in progress and nothing else.

Each step is checkpointed before the next one starts (``durability="sync"``). Writes skip the wait
for the WAL flush (``synchronous_commit=off``): a checkpoint lost to a database crash costs a
re-run, not an answer.
"""

from __future__ import annotations

import contextlib
from typing import Any

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from streams.subjects import StreamId

SCHEMA = "agent_checkpoints"
_SETUP_LOCK = f"parley.agent.checkpoints.setup:{SCHEMA}"


def thread_id(stream: StreamId) -> str:
    return f"{stream.tenant}:{stream.aggregate_id}"


class TurnCheckpoints:
    """The checkpoint saver and the connections it uses; nothing connects before ``open()``."""

    def __init__(self, database_url: str, *, max_connections: int = 8) -> None:
        self.database_url = database_url
        self.max_connections = max_connections
        self._pool: AsyncConnectionPool[Any] | None = None
        self._saver: AsyncPostgresSaver | None = None

    @property
    def saver(self) -> AsyncPostgresSaver:
        if self._saver is None:
            raise RuntimeError("TurnCheckpoints.open() was not called")
        return self._saver

    async def open(self) -> None:
        """Connect, and create or migrate the tables (one process at a time: the migrations are not
        safe to run twice at once)."""
        if self._saver is not None:
            return
        async with await AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [_SETUP_LOCK])
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self.database_url,
                min_size=1,
                max_size=self.max_connections,
                open=False,
                kwargs={
                    "autocommit": True,
                    "prepare_threshold": 0,
                    "row_factory": dict_row,
                    "options": f"-c search_path={SCHEMA} -c synchronous_commit=off",
                },
            )
            await pool.open(wait=True, timeout=30)
            saver = _PooledSaver(pool)
            try:
                await saver.setup()
            except BaseException:
                await pool.close()
                raise
        self._pool, self._saver = pool, saver

    async def forget(self, thread: str) -> None:
        """Drop a conversation's checkpoints: its turn is recorded in the events."""
        await self.saver.adelete_thread(thread)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool, self._saver = self._pool, None, None
            await pool.close()


class _PooledSaver(AsyncPostgresSaver):
    """``AsyncPostgresSaver`` without its instance-wide lock.

    The saver holds an ``asyncio.Lock`` around every statement, which a single shared connection
    needs; over a pool each statement has a connection of its own, and the lock would only make
    every concurrent turn of the process wait for the others' checkpoints.
    """

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        super().__init__(pool)
        self.lock = contextlib.nullcontext()  # type: ignore[assignment]


_TABLES = ("checkpoint_writes", "checkpoint_blobs", "checkpoints")


async def erase_threads(conn: AsyncConnection[Any], threads: list[str]) -> None:
    """Drop these conversations' checkpoints (their customer was erased), whichever process wrote
    them; nothing when no runtime ever made the tables."""
    for table in _TABLES:
        cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{SCHEMA}.{table}"])
        row = await cur.fetchone()
        if row and row[0]:
            await conn.execute(
                sql.SQL("DELETE FROM {}.{} WHERE thread_id = ANY(%s)").format(
                    sql.Identifier(SCHEMA), sql.Identifier(table)
                ),
                [threads],
            )
