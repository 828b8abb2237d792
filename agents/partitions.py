"""Runtime processes dividing the work stream's partitions among themselves, with PostgreSQL advisory locks.

Each process keeps one database session while it runs. On it, a shared lock on the stream's member
key says "I work on this stream", and an exclusive lock per partition says "this partition is
mine". ``pg_locks`` lists who holds what, so counting the live processes needs no heartbeat
table: a process that dies loses its session, and its locks with it.

Every ``every`` seconds a process reads the locks and takes its fair share. The members sorted by
backend pid, the i-th is owed ``N // m`` partitions, plus one while ``i < N % m``. A process
holding more hands the surplus over: it stops fetching, finishes and acknowledges the batch in
hand, then unlocks. One holding fewer takes free partitions. Within a few rounds of a process
joining or leaving, every partition has one holder again and the shares are even.

If the session fails, its locks are gone and another process may already have the partitions:
this one stops working on all of them at once and joins again on a new session. A process taking
a partition starts its consumer afresh, from the oldest message not acknowledged, so the messages
a dead holder had in hand come first, in order (see ``AgentRuntime._work_on``).

The locks use PostgreSQL's two-key form: the stream's key (``hashtext`` of its name) and 0 for
membership, ``p + 1`` for partition ``p``, so ``pg_locks`` shows the partition itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog

log = structlog.get_logger(__name__)

MEMBER = 0

# (pid, lock number, shared) of every lock held on one stream's key in this database.
_HOLDERS = """
SELECT pid, objid::bigint, mode = 'ShareLock'
FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid = hashtext(%s)::oid
"""


def share(members: list[int], me: int, partitions: int) -> int:
    """How many partitions the member ``me`` is owed: an even split, the first pids taking the rest."""
    index = sorted(members).index(me)
    return partitions // len(members) + (1 if index < partitions % len(members) else 0)


class PartitionClaims:
    """One process's claims on a stream's partitions; ``take`` and ``release`` start and stop its work on one."""

    def __init__(
        self,
        database_url: str,
        *,
        stream: str,
        partitions: int,
        take: Callable[[int], None],
        release: Callable[[int], Awaitable[None]],
        every: float = 1.0,
    ) -> None:
        self.database_url = database_url
        self.key = f"parley.agent:{stream}"
        self.partitions = partitions
        self.take, self.release = take, release
        self.every = every
        self.held: set[int] = set()
        self.me = 0  # this session's backend pid

    async def run(self, stop: asyncio.Event) -> None:
        """Hold a fair share of the partitions until ``stop`` is set, then hand them all over.

        The session is a connection of its own, never a pooled one: closing it is what lets go of
        every lock, whichever way ``run`` ends.
        """
        delay = 0.5
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True, application_name="parley-agent-runtime"
                ) as conn:
                    try:
                        await self._member(conn, stop)
                    finally:  # the work ends before the session, and its locks, do
                        await asyncio.gather(*(self.release(p) for p in self.held))
                        self.held.clear()
                delay = 0.5
            except psycopg.Error as e:
                log.warning("partition claims lost their database session", error=str(e), retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)

    async def _member(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        await conn.execute("SELECT pg_advisory_lock_shared(hashtext(%s), %s::int)", [self.key, MEMBER])
        cur = await conn.execute("SELECT pg_backend_pid()")
        self.me = (await cur.fetchone())[0]  # type: ignore[index]
        while not stop.is_set():
            await self.balance(conn)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)

    async def balance(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """One round: hand over the surplus, or take free partitions up to the share owed."""
        cur = await conn.execute(_HOLDERS, [self.key])
        members, taken = [], set()
        for pid, number, shared in await cur.fetchall():
            if shared and number == MEMBER:
                members.append(pid)
            elif not shared and number > MEMBER:
                taken.add(number - 1)
        owed = share(members, self.me, self.partitions)
        if len(self.held) > owed:
            await self._hand_over(conn, set(sorted(self.held)[owed:]))
            return
        start = sorted(members).index(self.me) * self.partitions // len(members)  # newcomers start apart
        for partition in sorted(set(range(self.partitions)) - taken, key=lambda p: (p - start) % self.partitions):
            if len(self.held) >= owed:
                break
            cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s::int)", [self.key, partition + 1])
            if (await cur.fetchone())[0]:  # type: ignore[index]
                self.held.add(partition)
                log.info("partition taken", stream=self.key, partition=partition, member=self.me)
                self.take(partition)

    async def _hand_over(self, conn: psycopg.AsyncConnection[Any], partitions: set[int]) -> None:
        """Hand partitions over: their work ends (the batch in hand is finished), then their locks go."""
        await asyncio.gather(*(self.release(p) for p in partitions))
        for partition in sorted(partitions):
            await conn.execute("SELECT pg_advisory_unlock(hashtext(%s), %s::int)", [self.key, partition + 1])
            self.held.discard(partition)
            log.info("partition handed over", stream=self.key, partition=partition, member=self.me)
