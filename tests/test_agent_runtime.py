"""The agent runtime as a consumer: customer messages in, replies and escalations out, exactly once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import psycopg
import pytest_asyncio

from agents.config import DemoConfigs
from agents.demo_data import setup_demo_data
from agents.runtime import AgentRuntime
from agents.tools import connect_url, demo_registry
from commands.conversation import CONVERSATION
from commands.runner import CommandContext, CommandRunner
from domain import conversation as c
from streams.factory import OpenStore
from tests.conftest import fresh_database

T0 = datetime(2025, 10, 11, 10, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def runtime(open_test_store: OpenStore, pg_url: str) -> AsyncIterator[tuple[AgentRuntime, CommandRunner]]:
    url = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await setup_demo_data(conn, tenants=("acme",))
    runner = CommandRunner.for_aggregates(open_test_store.store, [CONVERSATION])
    rt = AgentRuntime(
        open_test_store.store, runner, demo_registry(connect_url(url)), DemoConfigs(), {},
        durable="agents_test", partitions=4, idle_wait=0.2,
    )  # fmt: skip
    await rt.start()  # before the conversations below: it answers what comes after it
    yield rt, runner
    await rt.close()


async def say(runner: CommandRunner, cid: str, text: str, *, start: bool = False) -> None:
    ctx = CommandContext(tenant="acme", actor="customer:u-1", command_id=uuid.uuid4().hex)
    if start:
        command: c.Command = c.StartConversation(
            conversation_id=cid, config_id="support-bot", config_version=1, channel="webchat", user_id="u-1",
            initial_message=text, message_id=f"{cid}-m0", at=T0,
        )  # fmt: skip
    else:
        command = c.ReceiveUserMessage(message_id=uuid.uuid4().hex, content=text, at=T0)
    await runner.handle(CONVERSATION, cid, command, ctx)


async def events_of(open_test_store: OpenStore, cid: str) -> list[c.Event]:
    from streams.subjects import StreamId

    return [e.event for e in await open_test_store.store.read(StreamId("acme", "conversation", cid))]


async def drain(rt: AgentRuntime) -> int:
    answered = 0
    while (n := await rt.step()) or answered == 0:
        answered += n
        if n == 0:
            break
    return answered


async def test_an_order_question_is_answered_through_the_tool(
    runtime: tuple[AgentRuntime, CommandRunner], open_test_store: OpenStore
) -> None:
    rt, runner = runtime
    cid = uuid.uuid4().hex
    await say(runner, cid, "Where is my order ORD-78945?", start=True)
    assert await drain(rt) == 1
    replies = [e for e in await events_of(open_test_store, cid) if isinstance(e, c.AgentReplied)]
    assert len(replies) == 1 and replies[0].message_id == f"{cid}-m0-reply"
    assert [t.tool for t in replies[0].tool_calls] == ["fetch_order_status"]
    assert replies[0].tool_calls[0].output and replies[0].tool_calls[0].output["status"] == "in_transit"


async def test_something_urgent_escalates_and_the_ai_stops_answering(
    runtime: tuple[AgentRuntime, CommandRunner], open_test_store: OpenStore
) -> None:
    rt, runner = runtime
    cid = uuid.uuid4().hex
    await say(runner, cid, "This is fraud, I need to speak to a manager now!", start=True)
    await drain(rt)
    await say(runner, cid, "hello?")
    await drain(rt)
    events = await events_of(open_test_store, cid)
    assert sum(isinstance(e, c.EscalationRequested) for e in events) == 1
    assert sum(isinstance(e, c.AgentReplied) for e in events) == 1  # none after the handoff


async def test_a_redelivered_message_is_answered_once(
    runtime: tuple[AgentRuntime, CommandRunner], open_test_store: OpenStore
) -> None:
    rt, runner = runtime
    cid = uuid.uuid4().hex
    await say(runner, cid, "Where is my order ORD-12345?", start=True)
    from streams.subjects import StreamId

    recorded = next(e for e in await open_test_store.store.read(StreamId("acme", "conversation", cid))
                if isinstance(e.event, c.UserMessageReceived))  # fmt: skip
    assert await rt.answer(recorded) == 1
    await rt.answer(recorded)  # as if JetStream delivered it again
    await drain(rt)
    assert sum(isinstance(e, c.AgentReplied) for e in await events_of(open_test_store, cid)) == 1


async def test_the_history_given_to_the_model_holds_every_earlier_turn_in_order(
    runtime: tuple[AgentRuntime, CommandRunner], open_test_store: OpenStore
) -> None:
    rt, runner = runtime
    cid = uuid.uuid4().hex
    await say(runner, cid, "Hello", start=True)
    await drain(rt)
    await say(runner, cid, "Where is my order ORD-12345?")
    await drain(rt)
    await say(runner, cid, "Thanks")
    from streams.subjects import StreamId

    last = (await open_test_store.store.read(StreamId("acme", "conversation", cid)))[-1]
    _, turns = await rt._conversation(last.stream, upto=last.version)
    said = [t.content for t in turns if t.role == "user"]
    assert said == ["Hello", "Where is my order ORD-12345?"]
    # The tool call the second reply made is in the history too, with its result, before the reply.
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert [call.name for call in turns[3].tool_calls] == ["fetch_order_status"]
    assert turns[4].tool_call_id == turns[3].tool_calls[0].id and "ORD-12345" in turns[4].content


async def test_a_provider_that_fails_is_recorded_with_the_reply_and_the_next_one_answers(
    open_test_store: OpenStore, pg_url: str
) -> None:
    from tests.llm_fakes import openai_api

    api = openai_api.server()
    base_url = await api.start()
    for _ in range(4):
        api.script(openai_api.PATH, openai_api.error(500, "the model is down"))
    url = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await setup_demo_data(conn, tenants=("acme",))
    runner = CommandRunner.for_aggregates(open_test_store.store, [CONVERSATION])
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{base_url}/v1"}
    rt = AgentRuntime(
        open_test_store.store, runner, demo_registry(connect_url(url)), DemoConfigs(), env,
        durable="fb", partitions=4, idle_wait=0.2,
    )  # fmt: skip
    await rt.start()
    try:
        cid = uuid.uuid4().hex
        await say(runner, cid, "Hello", start=True)
        await drain(rt)
        (reply,) = [e for e in await events_of(open_test_store, cid) if isinstance(e, c.AgentReplied)]
        assert reply.provider == "offline" and reply.content
        assert [(f.from_provider, f.to_provider, f.reason) for f in reply.fallbacks] == [
            ("openai", "offline", "provider_unavailable")
        ]
    finally:
        await rt.close()
        await api.close()
