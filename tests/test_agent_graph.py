"""The agent graph: tools checked and time boxed, escalation from tool failures, whole turns
through the offline model and through the OpenAI adapter against its fake API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from agents.demo_data import setup_demo_data
from agents.graph import chain_for, offline_model, run_turn
from agents.llm.chain import FallbackChain
from agents.llm.openai import OpenAIProvider
from agents.llm.port import ChatMessage, Completion, ProviderUnavailable, ToolSpec, tool_specs
from agents.tools import ToolFailed, ToolRegistry, connect_url, demo_registry, validate_arguments
from domain.bot import AgentConfig, ToolDefinition, config_from_mapping, load_config
from tests.conftest import fresh_database
from tests.llm_fakes import openai_api
from tests.llm_fakes.server import FakeAPI

CONFIGS = Path(__file__).parent.parent / "agents" / "configs"
ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "pattern": "^ORD-\\d+$"},
        "amount": {"type": "number", "minimum": 0.01, "maximum": 1000},
        "count": {"type": "integer"},
        "express": {"type": "boolean"},
        "priority": {"type": "string", "enum": ["low", "high"]},
    },
    "required": ["order_id"],
}
ORDER = {"order_id": "ORD-78945", "status": "shipped", "expected_delivery": "2025-06-03"}


def support_bot() -> AgentConfig:
    return load_config((CONFIGS / "support_bot.yaml").read_text())


def bot(*tools: dict[str, Any], rules: list[dict[str, Any]] | None = None) -> AgentConfig:
    return config_from_mapping(
        {
            "product_type": "chatbot",
            "system_prompt": "You help with orders.",
            "tools": list(tools),
            "escalation_rules": rules or [],
            "external_integrations": [],
            "templates": {
                "fetch_order_status": "Order {{order_id}} is {{status}}.",
                "fetch_order_status.error": "Oops: {{error}}.",
            },
        }
    )


def fetch_tool(**changes: Any) -> dict[str, Any]:
    return {
        "name": "fetch_order_status",
        "description": "Retrieves order status by order ID",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        "x-parley-patterns": {"triggers": ["order"], "arguments": {"order_id": "ORD-\\d+"}},
        **changes,
    }


def offline_chain(config: AgentConfig) -> FallbackChain:
    return chain_for(config, {})


# -- arguments and time limits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "order_id: required"),
        ({"order_id": 78945}, "order_id: expected string"),
        ({"order_id": "78945"}, "order_id: does not match"),
        ({"order_id": "ORD-1", "amount": 0}, "amount: below the minimum"),
        ({"order_id": "ORD-1", "amount": 5000}, "amount: above the maximum"),
        ({"order_id": "ORD-1", "amount": "5"}, "amount: expected number"),
        ({"order_id": "ORD-1", "count": 1.5}, "count: expected integer"),
        ({"order_id": "ORD-1", "count": True}, "count: expected integer"),
        ({"order_id": "ORD-1", "express": "yes"}, "express: expected boolean"),
        ({"order_id": "ORD-1", "priority": "urgent"}, "priority: must be one of low, high"),
    ],
)
def test_arguments_are_checked_against_the_tool_schema(arguments: dict[str, Any], problem: str) -> None:
    assert any(found.startswith(problem) for found in validate_arguments(ORDER_SCHEMA, arguments))


def test_good_arguments_pass() -> None:
    assert validate_arguments(ORDER_SCHEMA, {"order_id": "ORD-1", "amount": 5, "count": 2, "express": False}) == []


async def test_invalid_arguments_never_reach_the_tool() -> None:
    called = []

    async def fetch(order_id: str) -> dict[str, Any]:
        called.append(order_id)
        return {}

    definition = ToolDefinition(name="fetch_order_status", parameters=ORDER_SCHEMA)
    call = await ToolRegistry({"fetch_order_status": fetch}).call(definition, {"order_id": 5})

    assert called == [] and call.error is not None and call.error.startswith("invalid arguments")


async def test_a_tool_slower_than_its_timeout_fails_with_a_timeout() -> None:
    async def slow(order_id: str) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    definition = ToolDefinition(name="fetch_order_status", parameters=ORDER_SCHEMA, timeout_seconds=0.05)
    call = await ToolRegistry({"fetch_order_status": slow}).call(definition, {"order_id": "ORD-1"})

    assert call.error == "timed out after 0.05s"
    assert call.output is None and call.execution_time_ms is not None and call.execution_time_ms < 1000


async def test_a_crashing_tool_or_a_missing_one_is_an_error_not_an_exception() -> None:
    async def broken(order_id: str) -> dict[str, Any]:
        raise KeyError("boom")

    definition = ToolDefinition(name="fetch_order_status", parameters=ORDER_SCHEMA)
    crashed = await ToolRegistry({"fetch_order_status": broken}).call(definition, {"order_id": "ORD-1"})
    missing = await ToolRegistry().call(definition, {"order_id": "ORD-1"})

    assert crashed.error == "fetch_order_status failed: KeyError"
    assert missing.error == "tool 'fetch_order_status' has no implementation"


# -- escalation from tools ---------------------------------------------------------------------------


async def failing(order_id: str) -> dict[str, Any]:
    raise ToolFailed("the order system is down")


async def test_a_failed_tool_with_on_failure_escalate_hands_off_after_explaining() -> None:
    config = bot(fetch_tool(on_failure="escalate"))

    result = await run_turn(
        config,
        [],
        "Where is order ORD-1?",
        chain=offline_chain(config),
        tools=ToolRegistry({"fetch_order_status": failing}),
    )

    assert result.escalation is not None
    assert (result.escalation.trigger, result.escalation.urgency) == ("tool_failure", "high")
    assert "the order system is down" in result.escalation.reason
    assert result.reply.startswith("Oops: the order system is down.")
    assert "member of our team" in result.reply
    assert [call.error for call in result.tool_calls] == ["the order system is down"]


async def test_a_failed_tool_with_on_failure_fallback_is_only_explained() -> None:
    config = bot(fetch_tool())

    result = await run_turn(
        config,
        [],
        "Where is order ORD-1?",
        chain=offline_chain(config),
        tools=ToolRegistry({"fetch_order_status": failing}),
    )

    assert result.escalation is None and result.reply == "Oops: the order system is down."


async def test_repeated_tool_failures_across_turns_escalate() -> None:
    config = bot(fetch_tool(), rules=[{"trigger": "repeated_tool_failure", "count": 2}])
    chain, tools = offline_chain(config), ToolRegistry({"fetch_order_status": failing})

    first = await run_turn(config, [], "Where is order ORD-1?", chain=chain, tools=tools)
    second = await run_turn(config, first.messages, "And order ORD-2?", chain=chain, tools=tools)

    assert first.escalation is None
    assert second.escalation is not None and second.escalation.trigger == "repeated_tool_failure"


# -- whole turns -------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def demo_url(pg_url: str) -> str:
    url = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await setup_demo_data(conn, reset=True)
    return url


async def test_a_tool_round_trip_through_the_offline_model_and_the_demo_database(demo_url: str) -> None:
    config = support_bot()

    result = await run_turn(
        config, [ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello!")], "Where is my order ORD-78945?",
        chain=offline_chain(config), tools=demo_registry(connect_url(demo_url)), conversation_id="c-1",
    )  # fmt: skip

    [call] = result.tool_calls
    assert (call.tool, call.input, call.error) == ("fetch_order_status", {"order_id": "ORD-78945"}, None)
    assert call.output is not None and call.output["status"] == "in_transit"
    assert "in transit" in result.reply and "2025-10-15" in result.reply
    assert (result.intent, result.provider, result.escalation, result.fallbacks) == ("support", "offline", None, [])
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    assert result.messages[-1].content == result.reply


async def test_a_refund_beyond_what_is_left_is_refused_by_the_demo_tool(demo_url: str) -> None:
    tools = demo_registry(connect_url(demo_url))
    refund = support_bot().tool("initiate_refund")
    assert refund is not None

    first = await tools.call(refund, {"order_id": "ORD-12345", "amount": 200})
    second = await tools.call(refund, {"order_id": "ORD-12345", "amount": 100})
    cancelled = await tools.call(refund, {"order_id": "ORD-99999"})

    assert first.error is None and first.output is not None and first.output["refund_id"] == "RF-000001"
    assert second.error == "order ORD-12345 has 49.00 left to refund"
    assert cancelled.error is not None and "cancelled" in cancelled.error


async def test_the_card_number_never_reaches_the_model_the_state_or_the_reply() -> None:
    config = bot(fetch_tool())
    seen: list[list[ChatMessage]] = []

    class Spy:
        name = "spy"

        async def complete(self, messages: list[ChatMessage], **_: Any) -> Completion:
            seen.append(messages)
            return Completion(text="Noted.", tool_calls=[], provider="spy", model="spy")

    history = [ChatMessage("user", "my card is 4111-1111-1111-1111")]
    result = await run_turn(
        config, history, "and 5500 0000 0000 0004 too", chain=FallbackChain([Spy()]), tools=ToolRegistry()
    )

    sent = " ".join(m.content for m in seen[0])
    assert "4111-1111" not in sent and "5500 0000" not in sent and "****-****-****-1111" in sent
    assert result.user_message == "and **** **** **** 0004 too"


async def test_every_provider_failing_gives_the_unavailable_reply_and_the_fallbacks() -> None:
    config = support_bot()

    class Down:
        def __init__(self, name: str) -> None:
            self.name = name

        async def complete(self, messages: list[ChatMessage], **_: Any) -> Completion:
            raise ProviderUnavailable("down", provider=self.name)

    result = await run_turn(config, [], "Hello", chain=FallbackChain([Down("a"), Down("b")]), tools=ToolRegistry())

    assert result.reply == config.templates["unavailable"]
    assert [(f.from_provider, f.to_provider) for f in result.fallbacks] == [("a", "b")]


async def test_turns_run_with_a_postgres_checkpointer(demo_url: str) -> None:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    config = support_bot()
    tools = demo_registry(connect_url(demo_url))
    async with AsyncPostgresSaver.from_conn_string(demo_url) as saver:
        await saver.setup()
        first = await run_turn(
            config, [], "Where is my order ORD-78945?", chain=offline_chain(config), tools=tools,
            checkpointer=saver, thread_id="conv-1",
        )  # fmt: skip
        second = await run_turn(
            config, first.messages, "Thanks! Can I talk to a human?", chain=offline_chain(config), tools=tools,
            checkpointer=saver, thread_id="conv-1",
        )  # fmt: skip
        checkpoint = await saver.aget_tuple({"configurable": {"thread_id": "conv-1"}})

    assert [c.tool for c in first.tool_calls] == ["fetch_order_status"]
    assert second.tool_calls == [] and second.escalation is not None
    assert checkpoint is not None
    assert checkpoint.checkpoint["channel_values"]["reply"] == second.reply


# -- through the OpenAI adapter ----------------------------------------------------------------------


@pytest_asyncio.fixture
async def openai_fake() -> AsyncIterator[tuple[FakeAPI, OpenAIProvider]]:
    api = openai_api.server()
    provider = OpenAIProvider(api_key="sk-test", base_url=f"{await api.start()}/v1")
    yield api, provider
    await provider.aclose()
    await api.close()
    assert api.violations == []


async def test_a_tool_round_trip_through_the_openai_adapter(openai_fake: tuple[FakeAPI, OpenAIProvider]) -> None:
    api, provider = openai_fake
    api.script(openai_api.PATH, openai_api.reply("tool_call"), openai_api.reply("after_tool"))
    config = bot(fetch_tool())
    asked: list[dict[str, Any]] = []

    async def fetch(order_id: str) -> dict[str, Any]:
        asked.append({"order_id": order_id})
        return ORDER

    result = await run_turn(
        config, [], "Hi, where is my order ORD-78945?",
        chain=FallbackChain([provider, offline_model(config)]), tools=ToolRegistry({"fetch_order_status": fetch}),
    )  # fmt: skip

    assert asked == [{"order_id": "ORD-78945"}]
    assert (result.provider, result.fallbacks) == ("openai", [])
    assert "ORD-78945" in result.reply and "2025-06-03" in result.reply
    sent = api.last(openai_api.PATH).body
    assert sent["messages"][0] == {"role": "system", "content": "You help with orders."}
    assert openai_api.sent_tool_exchange(sent)[0][:3] == (
        "call_62136354",
        "fetch_order_status",
        {"order_id": "ORD-78945"},
    )
    assert all("x-parley-patterns" not in str(tool) for tool in sent["tools"])
    assert [spec.name for spec in tool_specs(config)] == ["fetch_order_status"]
    assert isinstance(tool_specs(config)[0], ToolSpec)


async def test_a_failing_openai_falls_back_to_offline_and_says_so(openai_fake: tuple[FakeAPI, OpenAIProvider]) -> None:
    api, provider = openai_fake
    api.script(openai_api.PATH, *[openai_api.error(500, "The server had an error")] * 2)
    config = bot(fetch_tool())

    result = await run_turn(
        config, [], "Where is order ORD-78945?", chain=FallbackChain([provider, offline_model(config)]),
        tools=ToolRegistry({"fetch_order_status": lambda order_id: _async(ORDER)}),
    )  # fmt: skip

    assert result.provider == "offline" and result.reply == "Order ORD-78945 is shipped."
    # Two model calls (asking for the tool, answering its result), each falling back once.
    assert [(f.from_provider, f.to_provider, f.reason) for f in result.fallbacks] == [
        ("openai", "offline", "provider_unavailable")
    ] * 2


async def _async(value: dict[str, Any]) -> dict[str, Any]:
    return value
