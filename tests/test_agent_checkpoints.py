"""LangGraph checkpoints in PostgreSQL: an interrupted turn resumes where it was; without them, events give the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
import pytest_asyncio

from agents.checkpoints import SCHEMA, TurnCheckpoints
from agents.config import DemoConfigs
from agents.demo_data import setup_demo_data
from agents.runtime import AgentRuntime
from agents.tools import DemoTools, ToolRegistry, connect_url
from commands.conversation import CONVERSATION
from commands.runner import CommandContext, CommandRunner
from domain import conversation as c
from streams.factory import OpenStore
from streams.store import RecordedEvent
from streams.subjects import StreamId
from tests.conftest import fresh_database
from tests.llm_fakes import openai_api

T0 = datetime(2025, 10, 11, 10, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def database(pg_url: str) -> str:
    url = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await setup_demo_data(conn, tenants=("acme", "demo"))  # the conversations' tenant; "demo" for HangingOnce
    return url


class HangingOnce:
    """The demo tools, but the first order lookup hangs, as a process stopped mid-tool would."""

    def __init__(self, url: str) -> None:
        demo = DemoTools(connect_url(url))
        self.registry: ToolRegistry = demo.registry()
        self.lookups = 0
        self.hanging = asyncio.Event()

        async def fetch_order_status(order_id: str) -> Mapping[str, Any]:
            self.lookups += 1
            if self.lookups == 1:
                self.hanging.set()
                await asyncio.Event().wait()
            return await demo.fetch_order_status(order_id)

        self.registry.register("fetch_order_status", fetch_order_status)


def runtime(opened: OpenStore, url: str, tools: ToolRegistry, env: Mapping[str, str] = {}) -> AgentRuntime:
    """A runtime process of its own: its own checkpoint connections."""
    runner = CommandRunner.for_aggregates(opened.store, [CONVERSATION])
    return AgentRuntime(opened.store, runner, tools, DemoConfigs(), env, checkpoints=TurnCheckpoints(url), partitions=2)


@pytest_asyncio.fixture
async def fake_openai() -> AsyncIterator[tuple[Any, dict[str, str]]]:
    api = openai_api.server()
    base_url = await api.start()
    yield api, {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{base_url}/v1"}
    await api.close()
    assert api.violations == []


async def say(opened: OpenStore, cid: str, text: str) -> RecordedEvent:
    """The customer's message, as the runtime receives it."""
    runner = CommandRunner.for_aggregates(opened.store, [CONVERSATION])
    stream = StreamId("acme", "conversation", cid)
    ctx = CommandContext(tenant="acme", actor="customer:u-1", command_id=uuid.uuid4().hex)
    command: c.Command
    if not await opened.store.read(stream):
        command = c.StartConversation(
            conversation_id=cid, config_id="support-bot", config_version=1, channel="webchat", user_id="u-1",
            initial_message=text, message_id=f"{cid}-m0", at=T0,
        )  # fmt: skip
    else:
        command = c.ReceiveUserMessage(message_id=uuid.uuid4().hex, content=text, at=T0)
    await runner.handle(CONVERSATION, cid, command, ctx)
    return [e for e in await opened.store.read(stream) if isinstance(e.event, c.UserMessageReceived)][-1]


async def interrupt(rt: AgentRuntime, message: RecordedEvent, tools: HangingOnce) -> None:
    """Answer until the order lookup hangs (the agent step is checkpointed by then), then stop the
    process: the turn is cancelled and its connections closed."""
    turn = asyncio.create_task(rt.answer(message))
    await tools.hanging.wait()
    turn.cancel()
    await asyncio.gather(turn, return_exceptions=True)
    await rt.close()


async def replies(opened: OpenStore, cid: str) -> list[c.AgentReplied]:
    events = await opened.store.read(StreamId("acme", "conversation", cid))
    return [e.event for e in events if isinstance(e.event, c.AgentReplied)]


def comparable(reply: c.AgentReplied) -> Any:
    """A reply without its ids and timings."""
    calls = [(t.tool, t.input, t.output, t.error) for t in reply.tool_calls]
    return reply.content, reply.intent, reply.escalation_suggested, calls, msgspec.to_builtins(reply.cross_sell)


async def checkpoint_rows(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            f"SELECT (SELECT count(*) FROM {SCHEMA}.checkpoints) + (SELECT count(*) FROM {SCHEMA}.checkpoint_writes)"
        )
        return int((await cur.fetchone())[0])  # type: ignore[index]


async def test_a_turn_interrupted_mid_graph_resumes_from_its_checkpoint_without_asking_the_model_again(
    open_test_store: OpenStore, database: str, fake_openai: tuple[Any, dict[str, str]]
) -> None:
    api, env = fake_openai
    api.script(openai_api.PATH, openai_api.reply("tool_call"), openai_api.reply("after_tool"))
    tools = HangingOnce(database)
    first = runtime(open_test_store, database, tools.registry, env)
    await first.start()
    message = await say(open_test_store, uuid.uuid4().hex, "Where is my order ORD-78945?")
    await interrupt(first, message, tools)
    assert len(api.requests) == 1  # the agent step asked the model for the tool call

    again = runtime(open_test_store, database, tools.registry, env)  # the message delivered again, elsewhere
    await again.start()
    try:
        assert await again.answer(message) == 1
    finally:
        await again.close()
    assert len(api.requests) == 2  # only the step after the tool: the agent step was not run again
    assert tools.lookups == 2
    (reply,) = await replies(open_test_store, message.stream.aggregate_id)
    assert reply.provider == "openai" and [t.tool for t in reply.tool_calls] == ["fetch_order_status"]
    assert reply.tool_calls[0].output and reply.tool_calls[0].output["status"] == "in_transit"
    assert await checkpoint_rows(database) == 0  # the reply is in the events: its checkpoints are gone


class CrashingBeforeTheReply(CommandRunner):
    """The command runner of a process that dies just before it records its first reply."""

    crashed = False

    async def handle(self, aggregate: Any, aggregate_id: str, command: Any, ctx: CommandContext, **kw: Any) -> Any:
        if isinstance(command, c.RecordAgentReply) and not self.crashed:
            self.crashed = True
            raise asyncio.CancelledError
        return await super().handle(aggregate, aggregate_id, command, ctx, **kw)


async def test_a_finished_turn_whose_reply_was_not_recorded_is_answered_from_its_checkpoint(
    open_test_store: OpenStore, database: str, fake_openai: tuple[Any, dict[str, str]]
) -> None:
    api, env = fake_openai
    api.script(openai_api.PATH, openai_api.reply("tool_call"), openai_api.reply("after_tool"))
    tools = DemoTools(connect_url(database)).registry()
    first = runtime(open_test_store, database, tools, env)
    first.runner = CrashingBeforeTheReply.for_aggregates(open_test_store.store, [CONVERSATION])
    await first.start()
    message = await say(open_test_store, uuid.uuid4().hex, "Where is my order ORD-78945?")
    try:
        await first.answer(message)
    except asyncio.CancelledError:
        pass
    finally:
        await first.close()
    assert len(api.requests) == 2 and await replies(open_test_store, message.stream.aggregate_id) == []

    again = runtime(open_test_store, database, tools, env)
    await again.start()
    try:
        await again.answer(message)
    finally:
        await again.close()
    assert len(api.requests) == 2  # the graph did not run again
    (reply,) = await replies(open_test_store, message.stream.aggregate_id)
    assert reply.provider == "openai" and [t.tool for t in reply.tool_calls] == ["fetch_order_status"]


async def test_with_every_checkpoint_deleted_the_events_alone_give_the_same_replies(
    open_test_store: OpenStore, database: str
) -> None:
    lines = ["Where is my order ORD-78945?", "Can you check ORD-12345 too?", "Thanks, that helps"]
    plain = runtime(open_test_store, database, DemoTools(connect_url(database)).registry())
    await plain.start()
    told = uuid.uuid4().hex
    try:
        for line in lines:
            await plain.answer(await say(open_test_store, told, line))
    finally:
        await plain.close()

    tools = HangingOnce(database)
    interrupted = runtime(open_test_store, database, tools.registry)
    await interrupted.start()
    retold = uuid.uuid4().hex
    first = await say(open_test_store, retold, lines[0])
    await interrupt(interrupted, first, tools)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(f"TRUNCATE {SCHEMA}.checkpoints, {SCHEMA}.checkpoint_blobs, {SCHEMA}.checkpoint_writes")
    again = runtime(open_test_store, database, tools.registry)
    await again.start()
    try:
        await again.answer(first)
        for line in lines[1:]:
            await again.answer(await say(open_test_store, retold, line))
    finally:
        await again.close()
    assert [comparable(r) for r in await replies(open_test_store, retold)] == [
        comparable(r) for r in await replies(open_test_store, told)
    ]


async def test_a_checkpoint_of_another_turn_is_ignored_and_the_turn_runs_from_the_events(
    open_test_store: OpenStore, database: str
) -> None:
    tools = HangingOnce(database)
    first = runtime(open_test_store, database, tools.registry)
    await first.start()
    cid = uuid.uuid4().hex
    await interrupt(first, await say(open_test_store, cid, "Where is my order ORD-78945?"), tools)
    later = await say(open_test_store, cid, "Can you check ORD-12345?")  # the events moved on

    again = runtime(open_test_store, database, tools.registry)
    await again.start()
    try:
        await again.answer(later)
    finally:
        await again.close()
    (reply,) = await replies(open_test_store, cid)
    assert reply.message_id == f"{later.event.message_id}-reply"  # type: ignore[union-attr]
    assert [t.input for t in reply.tool_calls] == [{"order_id": "ORD-12345"}]
    assert await checkpoint_rows(database) == 0
