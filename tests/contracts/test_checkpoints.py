"""The ``Checkpoints`` contract, run against every implementation (PostgreSQL and ClickHouse).

In the manner of eventsourcing's ``AggregateRecorderTestCase``: ``CheckpointsContract`` states what
any checkpoint store does; a store's test class subclasses it and provides, in a few lines, a
``store`` fixture: how to open its checkpoints (a new instance is what another process, or the same
one started again, would open), and how a batch writes a row that carries its commit's sequence.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import pytest_asyncio
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from projections.analytics.sink import AnalyticsSink, ClickHouseBatch, ClickHouseCheckpoints
from projections.checkpoints import Checkpoints, DeadLetter, PostgresBatch, PostgresCheckpoints
from projections.settings import AnalyticsSettings
from read_models.migrations import PROJECTOR_TABLES, Migration, ReadModel
from tests.conftest import fresh_database


class Store(Protocol):
    """A checkpoint store under test, with a table whose rows carry their commit's sequence."""

    def checkpoints(self) -> Checkpoints[Any]: ...

    async def write_row(self, batch: Any, seq: int) -> None: ...

    async def rows(self) -> list[int]: ...


class Crash(Exception):
    """The process dies in the middle of a batch."""


class CheckpointsContract:
    """What every ``Checkpoints`` does. Subclasses provide the ``store`` fixture."""

    async def test_a_new_projection_starts_from_the_first_event(self, store: Store) -> None:
        checkpoints = store.checkpoints()
        assert await checkpoints.position("p") == 0  # no tables yet
        assert await checkpoints.start("p", asyncio.Event()) == 0
        assert (await checkpoints.position("p"), await checkpoints.dead_letter_count()) == (0, 0)
        await checkpoints.close()

    async def test_a_batch_moves_the_checkpoint_after_its_rows_and_the_next_starts_there(self, store: Store) -> None:
        checkpoints = store.checkpoints()
        await checkpoints.start("p", asyncio.Event())
        async with checkpoints.batch("p") as batch:
            assert batch.after == 0
            for seq in (1, 2, 3):
                await store.write_row(batch, seq)
            batch.advance(3)
        assert await checkpoints.position("p") == 3
        assert await store.rows() == [1, 2, 3]
        async with checkpoints.batch("p") as batch:
            assert batch.after == 3
        await checkpoints.close()

        again = store.checkpoints()  # started again, elsewhere
        assert await again.start("p", asyncio.Event()) == 3
        assert await store.rows() == [1, 2, 3]
        await again.close()

    async def test_a_checkpoint_never_moves_back(self, store: Store) -> None:
        checkpoints = store.checkpoints()
        await checkpoints.start("p", asyncio.Event())
        async with checkpoints.batch("p") as batch:
            batch.advance(5)
        async with checkpoints.batch("p") as batch:
            batch.advance(2)  # a redelivery of older commits
        assert await checkpoints.position("p") == 5
        await checkpoints.close()

    async def test_a_failed_batch_moves_nothing_and_leaves_no_rows_once_started_again(self, store: Store) -> None:
        checkpoints = store.checkpoints()
        await checkpoints.start("p", asyncio.Event())
        async with checkpoints.batch("p") as batch:
            await store.write_row(batch, 1)
            batch.advance(1)
        with pytest.raises(Crash):
            async with checkpoints.batch("p") as batch:
                for seq in (2, 3):
                    await store.write_row(batch, seq)
                batch.advance(3)
                raise Crash
        assert await checkpoints.position("p") == 1
        await checkpoints.close()

        again = store.checkpoints()
        assert await again.start("p", asyncio.Event()) == 1
        assert await store.rows() == [1]  # the failed batch's rows are gone; the replay writes them once
        async with again.batch("p") as batch:
            assert batch.after == 1
            for seq in (2, 3):
                await store.write_row(batch, seq)
            batch.advance(3)
        assert await store.rows() == [1, 2, 3]
        await again.close()

    async def test_each_projection_has_its_own_checkpoint(self, store: Store) -> None:
        first, second = store.checkpoints(), store.checkpoints()
        await first.start("a", asyncio.Event())
        await second.start("b", asyncio.Event())
        async with first.batch("a") as batch:
            batch.advance(7)
        assert (await first.position("a"), await second.position("b")) == (7, 0)
        async with second.batch("b") as batch:
            batch.advance(3)
        assert (await second.position("a"), await first.position("b")) == (7, 3)
        await first.close()
        await second.close()

    async def test_dead_letters_are_kept_once_per_sequence(self, store: Store) -> None:
        checkpoints = store.checkpoints()
        await checkpoints.start("p", asyncio.Event())
        async with checkpoints.batch("p") as batch:
            await batch.dead_letters([DeadLetter(5, "parley.ev.acme.conversation.c.x", "EventDecodeError: bad")])
            batch.advance(5)
        async with checkpoints.batch("p") as batch:  # the same commit, dead again after a restart
            await batch.dead_letters([DeadLetter(5, "parley.ev.acme.conversation.c.x", "EventDecodeError: bad")])
            await batch.dead_letters([DeadLetter(6, "parley.ev.acme.conversation.c.y", "EventDecodeError: worse")])
            batch.advance(6)
        assert await checkpoints.dead_letter_count() == 2
        await checkpoints.close()

    async def test_wait_answers_once_the_checkpoint_reaches_a_position_and_false_after_its_timeout(
        self, store: Store
    ) -> None:
        checkpoints = store.checkpoints()
        await checkpoints.start("p", asyncio.Event())
        reader = store.checkpoints()  # another process reading
        waiter = asyncio.create_task(reader.wait("p", 4, timeout=10))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        async with checkpoints.batch("p") as batch:
            batch.advance(4)
        assert await asyncio.wait_for(waiter, 10)
        assert await reader.wait("p", 4, timeout=0.1)
        assert not await reader.wait("p", 5, timeout=0.2)
        await checkpoints.close()


# PostgreSQL ------------------------------------------------------------------------------------

PROBE = ReadModel(
    name="probe",
    schema="rm_probe",
    migrations=(Migration(1, "probe", (*PROJECTOR_TABLES, "CREATE TABLE probe (seq bigint PRIMARY KEY)")),),
)


class PostgresStore:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    def checkpoints(self) -> PostgresCheckpoints:
        return PostgresCheckpoints(self.pool, PROBE)

    async def write_row(self, batch: PostgresBatch, seq: int) -> None:
        await batch.conn.execute(
            sql.SQL("INSERT INTO {}.probe VALUES (%s)").format(sql.Identifier(batch.schema)), [seq]
        )

    async def rows(self) -> list[int]:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT seq FROM rm_probe.probe ORDER BY seq")
            return [row[0] for row in await cur.fetchall()]


class TestPostgresCheckpoints(CheckpointsContract):
    @pytest_asyncio.fixture
    async def store(self, pg_url: str) -> AsyncIterator[PostgresStore]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(fresh_database(pg_url), min_size=1, max_size=6, open=False)
        await pool.open(wait=True, timeout=30)
        yield PostgresStore(pool)
        await pool.close()


# ClickHouse ------------------------------------------------------------------------------------


class ClickHouseStore:
    def __init__(self, client: Any, database: str) -> None:
        self.client, self.db = client, database
        self.sinks: list[AnalyticsSink] = []

    def checkpoints(self) -> ClickHouseCheckpoints:
        self.client.command(f"CREATE DATABASE IF NOT EXISTS {self.db}")
        self.client.command(f"CREATE TABLE IF NOT EXISTS {self.db}.probe (seq UInt64) ENGINE = MergeTree ORDER BY seq")
        self.sinks.append(AnalyticsSink(self.client, self.db))
        return ClickHouseCheckpoints(self.sinks[-1], seq_tables=("probe",))

    async def write_row(self, batch: ClickHouseBatch, seq: int) -> None:
        await batch.call(self.client.command, f"INSERT INTO {self.db}.probe VALUES ({seq})")

    async def rows(self) -> list[int]:
        rows = self.client.query(f"SELECT seq FROM {self.db}.probe ORDER BY seq").result_rows
        return [row[0] for row in rows]


class TestClickHouseCheckpoints(CheckpointsContract):
    @pytest_asyncio.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[ClickHouseStore]:
        sink = AnalyticsSink.open(AnalyticsSettings(data_dir=tmp_path))
        store = ClickHouseStore(sink.client, f"probe_{uuid.uuid4().hex[:8]}")
        yield store
        for made in store.sinks:
            made.stop_worker()
        sink.close()
