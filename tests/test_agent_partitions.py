"""Several agent runtimes sharing the work stream's partitions: each message answered once, in order, by one of them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest_asyncio

from agents.config import DemoConfigs
from agents.demo_data import setup_demo_data
from agents.partitions import share
from agents.runtime import AgentRuntime
from agents.tools import connect_url, demo_registry
from commands.conversation import CONVERSATION
from commands.runner import CommandContext, CommandRunner
from domain import conversation as c
from domain import escalation as p
from domain.escalation import DECIDER as AGENT_POOL
from streams.factory import OpenStore, StoreSettings, open_store
from streams.subjects import StreamId
from tests.conftest import drop, fresh_database, unique_stream

T0 = datetime(2025, 10, 11, 10, 0, tzinfo=UTC)
PARTITIONS = 8


class Runtime:
    """One runtime as its own process would have it: its own NATS connection and database session."""

    def __init__(self, opened: OpenStore, url: str) -> None:
        self.opened, self.url = opened, url
        runner = CommandRunner.for_aggregates(opened.store, [CONVERSATION])
        self.rt = AgentRuntime(
            opened.store, runner, demo_registry(connect_url(url)), DemoConfigs(), {},
            durable="agents", partitions=PARTITIONS, idle_wait=0.2, rebalance_every=0.2,
        )  # fmt: skip
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.rt.start()
        self.task = asyncio.create_task(self.rt.run(self.url))

    async def stop(self) -> None:
        """A clean stop: the partitions are handed over once the batches in hand are answered."""
        await self.rt.stop()
        if self.task is not None:
            await self.task

    async def kill(self) -> None:
        """As if the process died: its connections drop, with whatever it had in hand."""
        await self.opened.nc.close()
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND objsubid = 2 AND objid::bigint = ANY(%s)",
                [[p + 1 for p in self.rt.working_on]],
            )
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest_asyncio.fixture
async def cluster(nats_url: str, pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[CommandRunner, list[Runtime]]]:
    """Three runtimes and a customer-side runner, all on one event stream and one database."""
    url = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await setup_demo_data(conn)
    settings = StoreSettings(nats_url=nats_url, data_dir=tmp_path, stream=unique_stream())
    customer = await open_store(settings, name="customers")
    runtimes = [Runtime(await open_store(settings, name=f"runtime-{n}"), url) for n in range(3)]
    try:
        yield CommandRunner.for_aggregates(customer.store, [CONVERSATION, AGENT_POOL]), runtimes
    finally:
        for runtime in runtimes:
            if runtime.task is not None and not runtime.task.done():
                await runtime.stop()
            await runtime.rt.close()
            if not runtime.opened.nc.is_closed:
                await runtime.opened.close()
        await drop(customer)


async def say(runner: CommandRunner, cid: str, message_id: str, text: str, *, start: bool = False) -> None:
    ctx = CommandContext(tenant="acme", actor="customer:u-1", command_id=uuid.uuid4().hex)
    if start:
        command: c.Command = c.StartConversation(
            conversation_id=cid, config_id="support-bot", config_version=1, channel="webchat", user_id="u-1",
            initial_message=text, message_id=message_id, at=T0,
        )  # fmt: skip
    else:
        command = c.ReceiveUserMessage(message_id=message_id, content=text, at=T0)
    await runner.handle(CONVERSATION, cid, command, ctx)


async def conversation(runner: CommandRunner, cid: str) -> list[c.Event]:
    return [e.event for e in await runner.store.read(StreamId("acme", "conversation", cid))]


async def until(check: Any, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Poll the event store (the runtimes tell nobody when they are done) until ``check()`` holds."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


def replies_in_order(events: list[c.Event]) -> bool:
    """One reply per customer message, each after its message and before the next one's."""
    asked = [e.message_id for e in events if isinstance(e, c.UserMessageReceived)]
    replied = [e.message_id for e in events if isinstance(e, c.AgentReplied)]
    return replied == [f"{m}-reply" for m in asked]


async def partitions_settled(runtimes: list[Runtime]) -> bool:
    """Every partition has one holder, and the shares are even."""
    held = [r.rt.working_on for r in runtimes]
    counts = [len(h) for h in held]
    return sorted(p for h in held for p in h) == list(range(PARTITIONS)) and max(counts) - min(counts) <= 1


def test_the_shares_are_even_and_add_up_to_every_partition() -> None:
    for members in range(1, 20):
        shares = [share(list(range(100, 100 + members)), me, 16) for me in range(100, 100 + members)]
        assert sum(shares) == 16 and max(shares) - min(shares) <= 1


async def test_runtimes_share_the_work_answering_each_message_once_and_in_order(
    cluster: tuple[CommandRunner, list[Runtime]],
) -> None:
    runner, runtimes = cluster
    for runtime in runtimes:
        await runtime.start()
    await until(lambda: partitions_settled(runtimes))  # 3, 3 and 2 of the 8

    ids = [uuid.uuid4().hex for _ in range(24)]
    lines = ["Where is my order ORD-78945?", "And ORD-12345?", "Thanks, that helps"]

    async def chat(cid: str) -> None:  # three messages sent at once: the answers must keep their order
        await say(runner, cid, f"{cid}-0", lines[0], start=True)
        for n, line in enumerate(lines[1:], 1):
            await say(runner, cid, f"{cid}-{n}", line)

    await asyncio.gather(*(chat(cid) for cid in ids))

    async def all_answered() -> bool:
        events = await asyncio.gather(*(conversation(runner, cid) for cid in ids))
        return all(sum(isinstance(e, c.AgentReplied) for e in conv) >= 3 for conv in events)

    await until(all_answered)
    await asyncio.sleep(0.5)  # time for a second answer, were there one
    for cid in ids:
        assert replies_in_order(await conversation(runner, cid)), cid
    assert all(r.rt.answered > 0 for r in runtimes)
    assert sum(r.rt.answered for r in runtimes) == 3 * len(ids)


async def test_when_runtimes_stop_or_die_mid_work_the_last_one_takes_their_partitions_and_answers_the_rest(
    cluster: tuple[CommandRunner, list[Runtime]],
) -> None:
    runner, runtimes = cluster
    stopping, dying, surviving = runtimes
    for runtime in runtimes:
        await runtime.start()
    await until(lambda: partitions_settled(runtimes))
    ids = [uuid.uuid4().hex for _ in range(24)]
    await asyncio.gather(*(say(runner, cid, f"{cid}-0", "Hello", start=True) for cid in ids))

    async def answered(count: int) -> bool:
        events = await asyncio.gather(*(conversation(runner, cid) for cid in ids))
        return all(sum(isinstance(e, c.AgentReplied) for e in conv) >= count for conv in events)

    await until(lambda: answered(1))
    sent = asyncio.gather(*(say(runner, cid, f"{cid}-1", "Where is my order ORD-78945?") for cid in ids))
    await asyncio.sleep(0.05)  # mid-batch
    await asyncio.gather(stopping.stop(), dying.kill())
    await sent
    await until(lambda: answered(2))
    assert surviving.rt.working_on == set(range(PARTITIONS))
    await asyncio.gather(*(say(runner, cid, f"{cid}-2", "Thanks, that helps") for cid in ids))
    await until(lambda: answered(3))
    await asyncio.sleep(0.5)
    for cid in ids:
        assert replies_in_order(await conversation(runner, cid)), cid


async def test_escalations_from_every_partition_are_routed_once_through_the_tenants_pool(
    cluster: tuple[CommandRunner, list[Runtime]],
) -> None:
    runner, runtimes = cluster
    for runtime in runtimes[:2]:
        await runtime.start()
    ctx = CommandContext(tenant="acme", actor="admin", command_id="register-lee")
    await runner.handle(AGENT_POOL, p.POOL_ID, p.RegisterHumanAgent(agent_id="lee", name="Lee", capacity=3, at=T0), ctx)
    ctx = CommandContext(tenant="acme", actor="admin", command_id="lee-on")
    await runner.handle(AGENT_POOL, p.POOL_ID, p.SetHumanAgentAvailability(agent_id="lee", available=True, at=T0), ctx)
    ids = [uuid.uuid4().hex for _ in range(10)]
    await asyncio.gather(*(say(runner, cid, f"{cid}-0", "I want to talk to a human", start=True) for cid in ids))

    async def settled() -> bool:
        events = await asyncio.gather(*(conversation(runner, cid) for cid in ids))
        done = (c.EscalationAssigned, c.EscalationAgentUnavailable)
        return all(any(isinstance(e, done) for e in conv) for conv in events)

    await until(settled)
    pool = (await runner.repository(AGENT_POOL).load("acme", p.POOL_ID)).state
    assert len(pool.agents["lee"].active) == 3 and len(pool.queue) == 7
    assert sorted(pool.conversations.values()) == sorted(ids)
    events = await asyncio.gather(*(conversation(runner, cid) for cid in ids))
    assert sum(isinstance(e, c.EscalationAssigned) for conv in events for e in conv) == 3
    assert sum(isinstance(e, c.EscalationAgentUnavailable) for conv in events for e in conv) == 7
