"""Read-your-writes for many requests at once: one LISTEN connection per API process.

The projector announces each checkpoint with ``NOTIFY parley_checkpoint '<name>:<seq>'`` in the
transaction that moves it. The watcher keeps the latest position per projector in memory, so a
query waiting for its position holds no database connection while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import structlog
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from projections.checkpoints import CHANNEL, read_checkpoint, wait_for_position
from read_models.migrations import ReadModel

log = structlog.get_logger(__name__)


class PositionWatcher:
    def __init__(self, database_url: str, read_model: ReadModel, pool: AsyncConnectionPool[Any]) -> None:
        self.database_url = database_url
        self.read_model = read_model
        self.pool = pool  # to ask the database directly if the listener is lost
        self.position = 0
        self._changed = asyncio.Event()
        self._conn: AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._conn = await AsyncConnection.connect(self.database_url, autocommit=True)
        await self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        await self._refresh()
        self._task = asyncio.create_task(self._listen(), name=f"positions-{self.read_model.name}")

    async def _refresh(self) -> None:
        assert self._conn is not None
        try:
            found = await read_checkpoint(self._conn, self.read_model.schema, self.read_model.name)
        except psycopg.errors.UndefinedTable:
            found = None
        self._advance(found or 0)

    def _advance(self, seq: int) -> None:
        if seq > self.position:
            self.position = seq
            self._changed.set()
            self._changed = asyncio.Event()

    async def _listen(self) -> None:
        assert self._conn is not None
        prefix = f"{self.read_model.name}:"
        try:
            async for notice in self._conn.notifies():
                if notice.payload.startswith(prefix):
                    self._advance(int(notice.payload[len(prefix) :]))
        except psycopg.Error as e:
            log.warning("checkpoint listener lost; waits fall back to polling", error=str(e))

    async def wait(self, position: int, timeout: float) -> bool:  # noqa: ASYNC109 - the bound is the answer
        """True once the read model accounts for ``position``; False after ``timeout`` seconds."""
        if self.position >= position:
            return True
        if self._task is None or self._task.done():  # listener gone: ask the database directly
            return await wait_for_position(self.pool, self.read_model, position, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.position < position:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await self._task
        if self._conn is not None:
            await self._conn.close()


class Positions:
    """Read-your-writes for every read model this process serves: wait until they pass a position."""

    def __init__(self, watchers: dict[str, PositionWatcher], *, timeout: float) -> None:
        self.watchers = watchers
        self.timeout = timeout

    @classmethod
    def of(
        cls, database_url: str, read_models: list[ReadModel], pool: AsyncConnectionPool[Any], *, timeout: float
    ) -> Positions:
        return cls({rm.name: PositionWatcher(database_url, rm, pool) for rm in read_models}, timeout=timeout)

    async def start(self) -> None:
        for watcher in self.watchers.values():
            await watcher.start()

    async def close(self) -> None:
        for watcher in self.watchers.values():
            await watcher.close()

    async def wait(self, position: int | None, *read_models: str) -> bool:
        """Wait, bounded, until the read models (default: conversations) have passed ``position``."""
        if not position:
            return True
        reached = [await self.watchers[name].wait(position, self.timeout) for name in read_models or ("conversations",)]
        return all(reached)
