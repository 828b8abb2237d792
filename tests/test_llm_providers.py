"""LLM providers behind one port.

Every provider passes ``ProviderContract``. The Anthropic and OpenAI adapters run through their real
SDK clients against ``tests/llm_fakes``: a loopback server speaking each API's wire format from
recorded replies, which checks every request against the API's contract and can stall or fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import anthropic
import openai
import pytest
import pytest_asyncio
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agents.llm.anthropic import AnthropicProvider
from agents.llm.chain import TRANSIENT, Fallback, FallbackChain
from agents.llm.factory import chain_from_config, names_from_setting, providers_from_config
from agents.llm.offline import (
    DEFAULT_INTENTS,
    LAST_RESORT,
    OfflineModel,
    display,
    render,
    render_first,
    render_template,
)
from agents.llm.openai import OpenAIProvider
from agents.llm.port import (
    ChatMessage,
    Completion,
    LLMProvider,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    ToolCallRequest,
    ToolSpec,
)
from tests.llm_fakes import anthropic_api, openai_api, recorded
from tests.llm_fakes.server import FakeAPI

AGENT_YAML = r"""
product_type: chatbot
system_prompt: You are a helpful customer support agent for Parley Shop.
tools:
  - name: fetch_order_status
    description: Retrieves order status by order ID
    parameters:
      type: object
      properties:
        order_id: {type: string, description: "The order number, like ORD-12345"}
      required: [order_id]
    x-parley-patterns:
      intents: [order_status]
      triggers: [order, where is my, track]
      arguments: {order_id: 'ORD-\d+'}
  - name: initiate_refund
    description: Initiates refund process
    parameters:
      type: object
      properties:
        order_id: {type: string}
        amount: {type: number}
      required: [order_id]
    x-parley-patterns:
      triggers: [refund, money back]
      arguments: {order_id: 'ORD-\d+', amount: '\$(\d+(?:\.\d+)?)'}
  - name: lookup_warranty
    description: Looks up a product's warranty
    parameters: {type: object, properties: {sku: {type: string}}, required: [sku]}
offline:
  intents:
    order_status: ['\border status\b', '\bwhere is my (order|package|parcel)\b']
  templates:
    fetch_order_status: "Your order {{order_id}} is {{status}} and should arrive on {{expected_delivery}}."
    fetch_order_status.error: "I couldn't find order {{order_id}}: {{error}}."
    initiate_refund: "I've started a refund of ${{amount}} for order {{order_id}} (reference {{refund_id}})."
"""
AGENT = yaml.safe_load(AGENT_YAML)
SYSTEM = AGENT["system_prompt"]
TOOLS = [ToolSpec.from_mapping(tool) for tool in AGENT["tools"]]
FETCH_ORDER_STATUS, INITIATE_REFUND, LOOKUP_WARRANTY = TOOLS
ORDER = {"order_id": "ORD-78945", "status": "shipped", "expected_delivery": "2025-06-03"}
OK = 5.0  # a timeout no healthy call comes near


def offline_model() -> OfflineModel:
    return OfflineModel(intents=AGENT["offline"]["intents"], templates=AGENT["offline"]["templates"])


def user(text: str) -> ChatMessage:
    return ChatMessage("user", text)


def answered(history: list[ChatMessage], completion: Completion, result: dict[str, Any]) -> list[ChatMessage]:
    """The history after the assistant's tool call and the tool's result."""
    call = completion.tool_calls[0]
    return [
        *history,
        ChatMessage("assistant", completion.text, tool_calls=completion.tool_calls),
        ChatMessage("tool", json.dumps(result), tool_call_id=call.id, name=call.name),
    ]


# -- the contract ------------------------------------------------------------------------------------


@dataclass
class Harness:
    """A provider, and for a remote one the fake API behind it and that API's wire module."""

    provider: LLMProvider
    api: FakeAPI | None = None
    wire: ModuleType | None = None

    def model_will(self, reply: str, *, delay: float = 0.0) -> None:
        """Script the model's next reply (a recorded one); a model that decides for itself ignores this."""
        if self.api is not None and self.wire is not None:
            self.api.script(self.wire.PATH, self.wire.reply(reply, delay=delay))

    def api_will_fail(self, status: int, *, retry_after: int | None = None) -> None:
        assert self.api is not None and self.wire is not None
        self.api.script(self.wire.PATH, self.wire.error(status, f"scripted {status}", retry_after=retry_after))

    def sent(self) -> dict[str, Any]:
        assert self.api is not None and self.wire is not None
        body: dict[str, Any] = self.api.last(self.wire.PATH).body
        return body


class ProviderContract:
    """What every ``LLMProvider`` does. A subclass provides the ``harness`` fixture."""

    async def test_a_plain_message_gets_a_plain_reply(self, harness: Harness) -> None:
        harness.model_will("greeting")

        completion = await harness.provider.complete([user("Hi there")], system=SYSTEM, tools=[], timeout=OK)

        assert completion.text.strip()
        assert completion.tool_calls == []
        assert completion.provider == harness.provider.name
        assert completion.model
        assert completion.stop_reason == "end_turn"

    async def test_a_tool_round_trip_ends_in_a_reply_from_the_result(self, harness: Harness) -> None:
        history = [user("Hi, where is my order ORD-78945?")]
        harness.model_will("tool_call")

        asked = await harness.provider.complete(history, system=SYSTEM, tools=TOOLS, timeout=OK)

        assert [(c.name, c.arguments) for c in asked.tool_calls] == [("fetch_order_status", {"order_id": "ORD-78945"})]
        assert asked.stop_reason == "tool_use"
        harness.model_will("after_tool")

        final = await harness.provider.complete(answered(history, asked, ORDER), system=SYSTEM, tools=TOOLS, timeout=OK)

        assert final.tool_calls == []
        assert "ORD-78945" in final.text and "shipped" in final.text and "2025-06-03" in final.text
        self.then_the_model_was_sent_the_tool_result(harness, asked.tool_calls[0].id)

    def then_the_model_was_sent_the_tool_result(self, harness: Harness, call_id: str) -> None:
        """Remote providers check the wire; the offline model has none."""


class RemoteProviderContract(ProviderContract):
    """An SDK adapter against its fake API: wire format in both directions, and every failure translated."""

    wire: ClassVar[ModuleType]

    def make_provider(self, base_url: str) -> AnthropicProvider | OpenAIProvider:
        raise NotImplementedError

    @pytest_asyncio.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        api = self.wire.server()
        provider = self.make_provider(await api.start())
        yield Harness(provider, api, self.wire)
        await provider.aclose()
        await api.close()
        assert api.violations == []

    def then_the_model_was_sent_the_tool_result(self, harness: Harness, call_id: str) -> None:
        assert harness.wire is not None
        assert harness.wire.sent_tool_exchange(harness.sent()) == [
            (call_id, "fetch_order_status", {"order_id": "ORD-78945"}, json.dumps(ORDER))
        ]

    async def test_the_request_carries_the_system_prompt_and_tool_schemas_but_no_offline_patterns(
        self, harness: Harness
    ) -> None:
        harness.model_will("greeting")

        await harness.provider.complete([user("Hi")], system=SYSTEM, tools=TOOLS, timeout=OK)

        assert harness.wire is not None
        assert harness.wire.sent_system(harness.sent()) == SYSTEM
        assert harness.wire.sent_tools(harness.sent()) == [(t.name, t.description, t.parameters) for t in TOOLS]
        assert "x-parley-patterns" not in json.dumps(harness.sent())

    async def test_a_model_slower_than_the_timeout_raises_provider_timeout(self, harness: Harness) -> None:
        harness.model_will("greeting", delay=10)
        started = time.monotonic()

        with pytest.raises(ProviderTimeout) as raised:
            await harness.provider.complete([user("Hi")], system=SYSTEM, tools=[], timeout=0.3)

        assert time.monotonic() - started < 2
        assert raised.value.provider == harness.provider.name

    @pytest.mark.parametrize("status", [500, 503])
    async def test_a_server_error_raises_provider_unavailable_after_one_attempt(
        self, harness: Harness, status: int
    ) -> None:
        harness.api_will_fail(status)

        with pytest.raises(ProviderUnavailable) as raised:
            await harness.provider.complete([user("Hi")], system=SYSTEM, tools=[], timeout=OK)

        assert raised.value.details["http_status"] == status
        assert harness.api is not None and len(harness.api.requests) == 1  # the SDK did not retry

    async def test_a_rate_limit_raises_provider_rate_limited_with_the_retry_hint(self, harness: Harness) -> None:
        harness.api_will_fail(429, retry_after=7)

        with pytest.raises(ProviderRateLimited) as raised:
            await harness.provider.complete([user("Hi")], system=SYSTEM, tools=[], timeout=OK)

        assert raised.value.retry_after == 7.0
        assert harness.api is not None and len(harness.api.requests) == 1

    @pytest.mark.parametrize("status", [400, 401])
    async def test_a_client_error_raises_provider_rejected(self, harness: Harness, status: int) -> None:
        harness.api_will_fail(status)

        with pytest.raises(ProviderRejected) as raised:
            await harness.provider.complete([user("Hi")], system=SYSTEM, tools=[], timeout=OK)

        assert f"scripted {status}" in raised.value.message

    async def test_an_unreachable_server_raises_provider_unavailable(self, harness: Harness) -> None:
        assert harness.api is not None
        await harness.api.close()

        with pytest.raises(ProviderUnavailable):
            await harness.provider.complete([user("Hi")], system=SYSTEM, tools=[], timeout=OK)

    async def test_no_sdk_exception_escapes(self, harness: Harness) -> None:
        harness.api_will_fail(418)

        with pytest.raises(ProviderError) as raised:
            await harness.provider.complete([user("Hi")], system=SYSTEM, tools=[], timeout=OK)

        assert type(raised.value).__module__ == "agents.llm.port"
        assert not isinstance(raised.value, anthropic.AnthropicError | openai.OpenAIError)

    async def test_a_tool_message_without_its_call_id_is_rejected_before_sending(self, harness: Harness) -> None:
        with pytest.raises(ProviderRejected):
            await harness.provider.complete(
                [user("Hi"), ChatMessage("tool", "{}")], system=SYSTEM, tools=[], timeout=OK
            )
        assert harness.api is not None and harness.api.requests == []


class TestAnthropicProvider(RemoteProviderContract):
    wire: ClassVar[ModuleType] = anthropic_api

    def make_provider(self, base_url: str) -> AnthropicProvider:
        return AnthropicProvider(api_key="sk-ant-test", base_url=base_url)

    async def test_system_turns_join_the_system_field_and_tool_results_share_one_user_turn(
        self, harness: Harness
    ) -> None:
        harness.model_will("after_tool")
        calls = [ToolCallRequest(f"toolu_{n}", "fetch_order_status", {"order_id": f"ORD-{n}"}) for n in (1, 2)]
        history = [
            ChatMessage("system", "Answer in English."),
            user("Where are ORD-1 and ORD-2?"),
            ChatMessage("assistant", "Checking both.", tool_calls=calls),
            ChatMessage("tool", '{"status": "shipped"}', tool_call_id="toolu_1"),
            ChatMessage("tool", '{"status": "packed"}', tool_call_id="toolu_2"),
            ChatMessage("assistant", ""),  # an empty turn is dropped, not sent empty
        ]

        await harness.provider.complete(history, system=SYSTEM, tools=TOOLS, timeout=OK)

        sent = harness.sent()
        assert sent["system"] == f"{SYSTEM}\n\nAnswer in English."
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
        assert [b["tool_use_id"] for b in sent["messages"][2]["content"]] == ["toolu_1", "toolu_2"]

    async def test_usage_and_model_come_from_the_response(self, harness: Harness) -> None:
        harness.model_will("tool_call")

        completion = await harness.provider.complete([user("Where is ORD-78945?")], system="", tools=TOOLS, timeout=OK)

        assert (completion.model, completion.input_tokens, completion.output_tokens) == ("claude-haiku-5-5", 412, 64)
        assert completion.text == "I'll look up that order for you."
        assert "system" not in harness.sent()


class TestOpenAIProvider(RemoteProviderContract):
    wire: ClassVar[ModuleType] = openai_api

    def make_provider(self, base_url: str) -> OpenAIProvider:
        return OpenAIProvider(api_key="sk-test", base_url=f"{base_url}/v1")

    async def test_usage_model_and_stop_reason_are_normalised(self, harness: Harness) -> None:
        harness.model_will("tool_call")

        completion = await harness.provider.complete([user("Where is ORD-78945?")], system="", tools=TOOLS, timeout=OK)

        assert (completion.model, completion.input_tokens, completion.output_tokens) == (
            "gpt-5.4-mini-2026-03-17",
            82,
            17,
        )
        assert completion.stop_reason == "tool_use"
        assert [m["role"] for m in harness.sent()["messages"]] == ["user"]


class TestOfflineModelContract(ProviderContract):
    @pytest.fixture
    def harness(self) -> Harness:
        return Harness(offline_model())


def test_the_recorded_replies_are_valid_sdk_responses() -> None:
    for name in recorded.names("anthropic"):
        anthropic.types.Message.model_validate(recorded.load("anthropic", name), strict=False)
    for name in recorded.names("openai"):
        openai.types.chat.ChatCompletion.model_validate(recorded.load("openai", name), strict=False)
    assert recorded.names("anthropic") == recorded.names("openai") == ["after_tool", "greeting", "tool_call"]


# -- the fallback chain --------------------------------------------------------------------------------


class Scripted:
    """A provider that fails with ``error`` or answers ``text``: the chain's logic without a network."""

    def __init__(self, name: str, error: ProviderError | None = None, text: str = "ok") -> None:
        self.name, self.error, self.text, self.calls = name, error, text, 0

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        system: str,
        tools: list[ToolSpec],
        timeout: float,  # noqa: ASYNC109
    ) -> Completion:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return Completion(text=self.text, tool_calls=[], provider=self.name, model="scripted")


@pytest_asyncio.fixture
async def anthropic_fake() -> AsyncIterator[tuple[FakeAPI, AnthropicProvider]]:
    api = anthropic_api.server()
    provider = AnthropicProvider(api_key="sk-ant-test", base_url=await api.start())
    yield api, provider
    await provider.aclose()
    await api.close()
    assert api.violations == []


@pytest_asyncio.fixture
async def openai_fake() -> AsyncIterator[tuple[FakeAPI, OpenAIProvider]]:
    api = openai_api.server()
    provider = OpenAIProvider(api_key="sk-test", base_url=f"{await api.start()}/v1")
    yield api, provider
    await provider.aclose()
    await api.close()
    assert api.violations == []


async def test_the_chain_falls_back_from_a_slow_anthropic_through_a_failing_openai_to_offline(
    anthropic_fake: tuple[FakeAPI, AnthropicProvider], openai_fake: tuple[FakeAPI, OpenAIProvider]
) -> None:
    (claude, anthropic_provider), (gpt, openai_provider) = anthropic_fake, openai_fake
    claude.script(anthropic_api.PATH, anthropic_api.reply("tool_call", delay=10))
    gpt.script(openai_api.PATH, openai_api.error(500, "The server had an error while processing your request."))
    chain = FallbackChain([anthropic_provider, openai_provider, offline_model()], timeout=0.3)

    result = await chain.complete([user("Where is my order ORD-78945?")], system=SYSTEM, tools=TOOLS)

    assert result.completion.provider == "offline"
    assert [(c.name, c.arguments) for c in result.completion.tool_calls] == [
        ("fetch_order_status", {"order_id": "ORD-78945"})
    ]
    assert [(f.from_provider, f.to_provider, f.reason) for f in result.fallbacks] == [
        ("anthropic", "openai", "provider_timeout"),
        ("openai", "offline", "provider_unavailable"),
    ]
    assert "500" in result.fallbacks[1].error and result.fallbacks[0].elapsed_ms >= 250
    assert len(claude.requests) == len(gpt.requests) == 1


async def test_the_first_provider_that_answers_wins_with_no_fallbacks() -> None:
    first, second = Scripted("first"), Scripted("second")

    result = await FallbackChain([first, second]).complete([user("Hi")])

    assert (result.completion.provider, result.fallbacks, second.calls) == ("first", [], 0)


async def test_a_rejected_request_is_not_retried_elsewhere() -> None:
    rejected = Scripted("anthropic", ProviderRejected("bad tool schema", provider="anthropic"))
    backup = Scripted("openai")

    with pytest.raises(ProviderRejected) as raised:
        await FallbackChain([rejected, backup]).complete([user("Hi")])

    assert backup.calls == 0 and raised.value.fallbacks == []


async def test_a_chain_told_to_fall_back_on_rejection_moves_on() -> None:
    chain = FallbackChain(
        [Scripted("anthropic", ProviderRejected("400", provider="anthropic")), Scripted("offline")],
        fall_back_on=(*TRANSIENT, ProviderRejected),
    )

    result = await chain.complete([user("Hi")])

    assert [(f.from_provider, f.reason) for f in result.fallbacks] == [("anthropic", "provider_rejected")]


async def test_when_every_provider_fails_the_last_error_carries_the_fallbacks() -> None:
    chain = FallbackChain(
        [
            Scripted("anthropic", ProviderUnavailable("HTTP 529", provider="anthropic")),
            Scripted("openai", ProviderRateLimited("HTTP 429", provider="openai", retry_after=3)),
        ]
    )

    with pytest.raises(ProviderRateLimited) as raised:
        await chain.complete([user("Hi")])

    assert raised.value.fallbacks == [
        Fallback("anthropic", "openai", "provider_unavailable", "HTTP 529", raised.value.fallbacks[0].elapsed_ms)
    ]


def test_a_chain_needs_a_provider() -> None:
    with pytest.raises(ValueError, match="at least one"):
        FallbackChain([])


# -- choosing providers from settings ----------------------------------------------------------------


def test_with_no_keys_the_chain_is_the_offline_model_alone() -> None:
    providers = providers_from_config(["anthropic", "openai", "offline"], {})

    assert [type(p) for p in providers] == [OfflineModel]


def test_a_provider_whose_key_is_blank_is_skipped_and_offline_stands_in_when_nothing_is_left() -> None:
    providers = providers_from_config(["anthropic", "openai"], {"ANTHROPIC_API_KEY": " ", "OPENAI_API_KEY": ""})

    assert [p.name for p in providers] == ["offline"]


async def test_keys_enable_providers_in_the_configured_order_with_url_and_model_overrides(
    anthropic_fake: tuple[FakeAPI, AnthropicProvider], openai_fake: tuple[FakeAPI, OpenAIProvider]
) -> None:
    (claude, _), (gpt, _) = anthropic_fake, openai_fake
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": claude.base_url,
        "ANTHROPIC_MODEL": "claude-test-model",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": f"{gpt.base_url}/v1",
        "OPENAI_MODEL": "gpt-test-model",
    }
    chain = chain_from_config(names_from_setting("openai, anthropic,offline"), env, timeout=OK)
    gpt.script(openai_api.PATH, openai_api.error(503, "overloaded"))
    claude.script(anthropic_api.PATH, anthropic_api.reply("greeting"))
    try:
        result = await chain.complete([user("Hi")], system=SYSTEM)
    finally:
        await chain.aclose()

    assert chain.names == ["openai", "anthropic", "offline"]
    assert (result.completion.provider, [f.reason for f in result.fallbacks]) == ("anthropic", ["provider_unavailable"])
    assert gpt.last(openai_api.PATH).body["model"] == "gpt-test-model"
    assert claude.last(anthropic_api.PATH).body["model"] == "claude-test-model"


def test_an_unknown_provider_name_fails_fast_with_its_name() -> None:
    with pytest.raises(ValueError, match="'gemini'"):
        providers_from_config(["gemini"], {})


def test_importing_the_package_loads_no_sdk_and_opens_nothing() -> None:
    probe = "import sys, agents.llm; print(sorted({'anthropic', 'openai', 'httpx2'} & set(sys.modules)))"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True).stdout

    assert out.strip() == "[]"


# -- the offline model -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("Where is my order? It still hasn't arrived.", "support"),
        ("My package arrived damaged and I want a refund", "support"),
        ("I can't log in to my account", "support"),
        ("How much does the premium plan cost?", "sales"),
        ("Do you offer discounts for bulk purchases?", "sales"),
        ("I'm interested in a demo of your enterprise tier", "sales"),
        ("Hello there!", "general"),
        ("What are your opening hours?", "general"),
        ("Thanks, have a nice day", "general"),
        ("What's the weather like in Lisbon?", "general"),
        ("URGENT: someone hacked my account and made unauthorized purchases", "urgent"),
        ("I was charged twice, fix this immediately", "urgent"),
    ],
)
def test_the_offline_model_classifies_intent(text: str, intent: str) -> None:
    analysis = OfflineModel().analyze(text)

    assert analysis.intent == intent
    assert analysis.urgent == (intent == "urgent")


def test_a_message_no_rule_matches_is_general_with_low_confidence() -> None:
    matched, unmatched = OfflineModel().analyze("Hello!"), OfflineModel().analyze("Lisbon weather?")

    assert unmatched.intents == [] and unmatched.confidence < matched.confidence


@pytest.mark.parametrize(
    ("text", "sign"),
    [
        ("I love this, thank you so much!", 1),
        ("Great service, really helpful", 1),
        ("not bad at all", 1),
        ("no problem", 1),
        ("The package arrived today", 0),
        ("This is terrible, the worst service ever", -1),
        ("I am not happy with my order", -1),
        ("It doesn't work and I'm frustrated", -1),
        ("I have never been so disappointed", -1),
        ("The product is good but the delivery was awful", -1),
    ],
)
def test_the_offline_model_scores_sentiment_with_negations_and_intensifiers(text: str, sign: int) -> None:
    score = OfflineModel().sentiment(text)

    assert (score > 0) - (score < 0) == sign


def test_intensifiers_strengthen_and_negation_weakens_as_it_flips() -> None:
    model = OfflineModel()

    assert model.sentiment("I am very happy") > model.sentiment("I am happy") > 0
    assert -model.sentiment("I am happy") < model.sentiment("I am not happy") < 0


@given(st.text())
def test_analysis_never_fails_and_stays_in_range(text: str) -> None:
    analysis = OfflineModel().analyze(text)

    assert -1 <= analysis.sentiment <= 1 and 0 <= analysis.confidence <= 1
    assert analysis.intent in DEFAULT_INTENTS


@pytest.mark.parametrize(
    "text",
    ["Can I speak to a human?", "I want to talk to your manager", "real person please", "Please escalate this"],
)
def test_the_offline_model_notices_a_customer_asking_for_a_human(text: str) -> None:
    model = OfflineModel()

    assert model.analyze(text).wants_human
    assert not model.analyze("Where is my order?").wants_human


async def test_asking_for_a_human_is_answered_without_a_tool_call() -> None:
    completion = await offline_model().complete([user("Let me talk to a human about ORD-1")], tools=TOOLS)

    assert completion.tool_calls == [] and "speak with a person" in completion.text


def test_configured_intents_join_the_defaults() -> None:
    model = OfflineModel(intents={"order_status": [r"\border status\b"]})

    analysis = model.analyze("What's the order status for ORD-1?")

    assert analysis.intents[:2] == ["order_status", "support"]  # a tie goes to the configured intent
    assert model.analyze("How much is it?").intent == "sales"


async def test_a_tool_fires_from_its_yaml_patterns_with_the_extracted_argument() -> None:
    completion = await offline_model().complete([user("Hey, can you track ORD-78945 for me?")], tools=TOOLS)

    assert [(c.name, c.arguments) for c in completion.tool_calls] == [("fetch_order_status", {"order_id": "ORD-78945"})]
    assert completion.stop_reason == "tool_use" and completion.tool_calls[0].id.startswith("call_offline_")


async def test_a_tool_fires_from_a_configured_intent_alone() -> None:
    tool = ToolSpec(
        "fetch_order_status",
        "",
        FETCH_ORDER_STATUS.parameters,
        extra={"x-parley-patterns": {"intents": ["order_status"], "arguments": {"order_id": r"ORD-\d+"}}},
    )

    completion = await offline_model().complete([user("order status ORD-5 please")], tools=[tool])

    assert completion.tool_calls[0].arguments == {"order_id": "ORD-5"}


async def test_extracted_arguments_take_the_type_their_schema_declares() -> None:
    completion = await offline_model().complete([user("I want my money back: $25.50 for ORD-11")], tools=TOOLS)

    assert [(c.name, c.arguments) for c in completion.tool_calls] == [
        ("initiate_refund", {"order_id": "ORD-11", "amount": 25.5})
    ]


async def test_a_missing_argument_is_asked_for_and_the_next_turn_supplies_it() -> None:
    model = offline_model()
    history = [user("Where is my package?")]

    asked = await model.complete(history, tools=TOOLS)

    assert asked.tool_calls == [] and "order id" in asked.text
    history += [ChatMessage("assistant", asked.text), user("It's ORD-78945")]

    called = await model.complete(history, tools=TOOLS)

    assert [(c.name, c.arguments) for c in called.tool_calls] == [("fetch_order_status", {"order_id": "ORD-78945"})]


async def test_a_tool_result_closes_the_topic() -> None:
    model = offline_model()
    history = [user("Where is my order ORD-78945?")]
    asked = await model.complete(history, tools=TOOLS)
    history = answered(history, asked, ORDER)
    history += [ChatMessage("assistant", (await model.complete(history, tools=TOOLS)).text), user("Thanks!")]

    completion = await model.complete(history, tools=TOOLS)

    assert completion.tool_calls == [] and completion.text == model.templates["thanks"]


async def test_tools_without_patterns_or_without_a_trigger_are_left_alone() -> None:
    model = offline_model()

    warranty = await model.complete([user("What is the warranty on SKU-9?")], tools=[LOOKUP_WARRANTY])
    pricing = await model.complete([user("How much is the premium plan?")], tools=TOOLS)

    assert warranty.tool_calls == [] and pricing.tool_calls == []
    assert pricing.text == model.templates["sales"]


async def test_nothing_recognisable_gets_the_general_fallback() -> None:
    completion = await OfflineModel().complete([user("Lisbon weather?")], tools=[])

    assert completion.text.startswith("I can help with orders, refunds")


async def test_a_tool_error_renders_the_tools_error_template() -> None:
    model = offline_model()
    history = [user("Where is my order ORD-404?")]
    asked = await model.complete(history, tools=TOOLS)

    completion = await model.complete(answered(history, asked, {"error": "no such order"}), tools=TOOLS)

    assert completion.text == "I couldn't find order ORD-404: no such order."


async def test_a_tool_without_a_template_gets_the_raw_result() -> None:
    call = ToolCallRequest("call_1", "lookup_warranty", {"sku": "SKU-9"})
    history = [
        user("warranty?"),
        ChatMessage("assistant", "", tool_calls=[call]),
        ChatMessage("tool", "2 years", tool_call_id="call_1"),
    ]

    completion = await offline_model().complete(history, tools=TOOLS)

    assert completion.text == "Here's what I found: 2 years"


async def test_invalid_patterns_are_a_rejected_request() -> None:
    broken = ToolSpec("t", "", {"type": "object"}, extra={"x-parley-patterns": {"arguments": {"x": "("}}})

    with pytest.raises(ProviderRejected, match="x-parley-patterns"):
        await OfflineModel().complete([user("anything")], tools=[broken])


async def test_the_offline_model_is_deterministic() -> None:
    model, history = offline_model(), [user("Where is my order ORD-78945?")]

    assert await model.complete(history, tools=TOOLS) == await model.complete(history, tools=TOOLS)


# -- templates -----------------------------------------------------------------------------------------


def test_render_template_fills_variables_from_paths_lists_and_booleans() -> None:
    variables = {"order_id": "ORD-1", "order": {"items": ["mug", "tea"]}, "gift": True, "total": 12.5}

    rendered = render_template(
        "{{order_id}}: {{ order.items }} ({{order.items.0}}), gift {{gift}}, {{total}}.", variables
    )

    assert rendered == "ORD-1: mug, tea (mug), gift yes, 12.5."


@pytest.mark.parametrize("value", [None, "", [], {}, "  "])
def test_a_template_with_an_unknown_field_is_not_rendered_with_a_blank(value: Any) -> None:
    template = "Your order {{order_id}} is expected on {{expected_delivery}}."

    assert render(template, {"order_id": "ORD-1", "expected_delivery": value}) is None
    assert render(template, {"order_id": "ORD-1"}) is None
    assert render_template(template, {"order_id": "ORD-1"}, default="Your order is on its way.") == (
        "Your order is on its way."
    )


def test_the_first_alternative_whose_fields_are_known_is_used() -> None:
    template = "Expected on {{expected_delivery}}. || Delivered on {{delivered_on}}. || We have your order."

    assert render(template, {"expected_delivery": "2025-10-15"}) == "Expected on 2025-10-15."
    assert render(template, {"expected_delivery": None, "delivered_on": "2025-09-30"}) == "Delivered on 2025-09-30."
    assert render(template, {}) == "We have your order."


def test_an_optional_segment_is_left_out_when_a_field_in_it_is_unknown() -> None:
    template = "Order {{order_id}}[[ ({{product}})]] is in transit.[[ Tracking number: {{tracking_number}}.]]"

    assert render(template, {"order_id": "ORD-1", "product": "Mug", "tracking_number": "1Z"}) == (
        "Order ORD-1 (Mug) is in transit. Tracking number: 1Z."
    )
    assert render(template, {"order_id": "ORD-1", "tracking_number": None}) == "Order ORD-1 is in transit."
    assert render(template, {"product": "Mug"}) is None  # a field outside a segment is required


def test_render_first_falls_back_through_templates_to_a_sentence_that_needs_nothing() -> None:
    templates = [None, "Refund {{refund_id}}.", "Your refund has started."]

    assert render_first(templates, {"refund_id": "RF-1"}) == "Refund RF-1."
    assert render_first(templates, {}) == "Your refund has started."
    assert render_first(["{{x}}"], {}) == LAST_RESORT


def test_render_template_does_not_expand_what_a_value_contains() -> None:
    assert render_template("Hi {{name}}", {"name": "{{secret}}", "secret": "s3cr3t"}) == "Hi {{secret}}"
    assert render_template("Hi[[ {{name}}]]", {"name": "[[{{secret}}]]", "secret": "s"}) == "Hi [[{{secret}}]]"


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
VALUES = st.none() | st.booleans() | st.integers() | st.text(alphabet=st.characters(exclude_characters="{}"))
PLAIN = st.text(alphabet=st.characters(exclude_characters="{}[]|"), max_size=12)


@given(st.text(), st.dictionaries(st.text(), VALUES | st.lists(VALUES) | st.dictionaries(st.text(), VALUES)))
def test_render_template_never_raises(template: str, variables: dict[str, Any]) -> None:
    assert isinstance(render_template(template, variables), str)


@given(st.lists(st.tuples(PLAIN, NAMES), max_size=6), PLAIN, st.dictionaries(NAMES, VALUES))
def test_a_template_renders_whole_or_not_at_all(
    parts: list[tuple[str, str]], tail: str, variables: dict[str, Any]
) -> None:
    template = "".join(f"{text}{{{{{name}}}}}" for text, name in parts) + tail

    rendered = render(template, variables)

    known = all(name in variables and display(variables[name]).strip() for _, name in parts)
    if not known:
        assert rendered is None
    else:
        assert rendered is not None and "{{" not in rendered
        assert rendered == ("".join(text + display(variables[name]) for text, name in parts) + tail).strip()
