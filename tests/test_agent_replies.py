"""Replies that are right (issue 15): what the conversation knows is used, no blank field or internal
error reaches the customer, tool failures count across turns, cross-sell offers are answered and
acted on, and tools act for the tenant's own data and the conversation's own customer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.demo_data import setup_demo_data
from agents.graph import chain_for, run_turn, well_formed
from agents.llm.offline import OfflineModel, correct_typos, detect_language, phrase
from agents.llm.port import ChatMessage, ToolCallRequest, tool_specs
from agents.rules import CrossSell, offer_response
from agents.tools import ToolContext, ToolFailed, ToolRegistry, connect_url, demo_registry
from domain.bot import AgentConfig, ToolDefinition, config_from_mapping, load_config
from tests.conftest import fresh_database

CONFIGS = Path(__file__).parent.parent / "agents" / "configs"
SUPPORT = load_config((CONFIGS / "support_bot.yaml").read_text())
SALES = load_config((CONFIGS / "sales_bot.yaml").read_text())
PREMIUM = CrossSell(
    product="Premium Shipping Upgrade",
    suggestion="For future orders, would you be interested in our Premium Shipping for guaranteed next-day delivery?",
    confidence=0.78,
)


def plan(config: AgentConfig, *turns: str) -> list[tuple[str, dict[str, Any]]]:
    """The tool calls the offline model makes for the last of ``turns`` (earlier ones answered "OK")."""
    messages: list[ChatMessage] = []
    for turn in turns[:-1]:
        messages += [ChatMessage("user", turn), ChatMessage("assistant", "OK")]
    calls, _ = OfflineModel(intents=config.intents, templates=config.templates).plan(
        [*messages, ChatMessage("user", turns[-1])], tool_specs(config)
    )
    return [(tool.name, arguments) for tool, arguments in calls]


# -- what the conversation knows ---------------------------------------------------------------------


def test_the_order_number_in_a_first_message_without_a_trigger_is_looked_up() -> None:
    assert plan(SUPPORT, "My package ORD-55555 is late") == [("fetch_order_status", {"order_id": "ORD-55555"})]
    assert plan(SUPPORT, "ORD-12345?") == [("fetch_order_status", {"order_id": "ORD-12345"})]


def test_a_required_argument_comes_from_an_earlier_turn_an_optional_one_does_not() -> None:
    assert plan(SUPPORT, "refund $20 on ORD-10001", "Thanks. Now please email me the tracking") == [
        ("send_tracking_email", {"order_id": "ORD-10001"})
    ]
    history = [
        ChatMessage("user", "refund $20 on ORD-10001"),
        ChatMessage("assistant", "", tool_calls=[]),
        ChatMessage("tool", '{"refund_id": "RF-1"}', tool_call_id="x", name="initiate_refund"),
        ChatMessage("assistant", "Done."),
        ChatMessage("user", "now refund ORD-10002 as well"),
    ]
    calls, _ = OfflineModel(intents=SUPPORT.intents).plan(history, tool_specs(SUPPORT))
    assert [(tool.name, arguments) for tool, arguments in calls] == [("initiate_refund", {"order_id": "ORD-10002"})]


def test_several_requests_in_one_message_each_take_their_own_clause() -> None:
    assert plan(SUPPORT, "refund $20 on ORD-12345 and email tracking for ORD-78945 to john@example.com") == [
        ("initiate_refund", {"order_id": "ORD-12345", "amount": 20.0}),
        ("send_tracking_email", {"order_id": "ORD-78945", "email": "john@example.com"}),
    ]
    assert plan(SUPPORT, "status of ORD-1, ORD-2 and ORD-3 please") == [
        ("fetch_order_status", {"order_id": order}) for order in ("ORD-1", "ORD-2", "ORD-3")
    ]


def test_a_lookup_asked_for_beside_an_effect_on_the_same_order_is_left_to_the_effect() -> None:
    assert plan(SUPPORT, "I want a refund, my order ORD-12345 arrived broken") == [
        ("initiate_refund", {"order_id": "ORD-12345"})
    ]


@pytest.mark.parametrize(
    ("turns", "order"),
    [
        (["Where's ORD-12345? Actually, not ORD-12345, I meant ORD-78945"], "ORD-78945"),
        (["status of ORD-1... sorry, ORD-2"], "ORD-2"),
        (["where is my order", "ORD-5, no wait, ORD-6"], "ORD-6"),
        (["Where is my order ORD-12345?", "oops I meant ORD-78945"], "ORD-78945"),
    ],
)
def test_a_change_of_mind_wins(turns: list[str], order: str) -> None:
    [(tool, arguments)] = plan(SUPPORT, *turns)
    assert (tool, arguments["order_id"]) == ("fetch_order_status", order)


@pytest.mark.parametrize(
    ("typed", "read"),
    [
        ("were is my ordr ORD-1", "where is my order ORD-1"),
        ("i want a refnd", "i want a refund"),
        ("trackng numbr", "tracking number"),
        ("my pakage is delayd", "my package is delayed"),
        ("there were older orders here", "there were older orders here"),  # real words stay
        ("when will it arrive", "when will it arrive"),  # an inflection is no typo
    ],
)
def test_typos_of_the_domain_words_are_read_as_meant(typed: str, read: str) -> None:
    assert correct_typos(typed) == read


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Hola, ¿dónde está mi pedido?", "es"),
        ("Bonjour, je voudrais un remboursement", "fr"),
        ("Guten Tag, wo ist meine Bestellung?", "de"),
        ("Olá, quero saber do meu pedido", "pt"),
        ("Ciao, dove è il mio ordine?", "it"),
        ("Hallo, waar is mijn bestelling?", "nl"),
        ("Hola", "es"),
        ("Где мой заказ?", "other"),
        ("Where is my order? Gracias!", "en"),
        ("ORD-12345", "en"),
    ],
)
def test_the_language_of_a_message_is_recognised(text: str, language: str) -> None:
    assert detect_language(text) == language


# -- replies -------------------------------------------------------------------------------------------


def test_no_missing_argument_template_reads_as_a_guessed_order_number() -> None:
    for config in (SUPPORT, SALES):
        for key, template in config.templates.items():
            if key.endswith(".missing") or key == "support":
                assert "looks like ORD-" not in template and "like ORD-12345" not in template, key


async def tool_reply(config: AgentConfig, registry: ToolRegistry, message: str) -> Any:
    return await run_turn(config, [], message, chain=chain_for(config, {}), tools=registry)


async def slow(order_id: str) -> dict[str, Any]:
    await asyncio.sleep(5)
    return {}


async def crashing(order_id: str) -> dict[str, Any]:
    raise KeyError("secret internals")


async def returns_nothing(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id}


@pytest.mark.parametrize(
    ("implementations", "message", "template"),
    [
        ({}, "Where is my order ORD-78945?", "fetch_order_status.unavailable"),  # declared, not implemented
        ({"fetch_order_status": crashing}, "Where is my order ORD-78945?", "fetch_order_status.unavailable"),
        ({"initiate_refund": returns_nothing}, "refund $20000 on ORD-78945", "tool_invalid"),  # above the maximum
    ],
)
async def test_an_internal_tool_failure_gets_the_configs_wording_never_its_message(
    implementations: dict[str, Any], message: str, template: str
) -> None:
    result = await tool_reply(SUPPORT, ToolRegistry(implementations), message)

    [call] = result.tool_calls
    assert call.error is not None  # the record keeps what went wrong, for operations
    assert result.reply == SUPPORT.templates[template]
    for leak in ("implementation", "KeyError", "secret", "invalid arguments", "maximum", "timed out", "'"):
        assert leak not in result.reply.replace("can't", "").replace("couldn't", "")


async def test_a_timed_out_tool_gets_the_wording_of_an_unavailable_one() -> None:
    config = config_from_mapping(
        {
            "product_type": "chatbot",
            "system_prompt": "Orders.",
            "external_integrations": [],
            "escalation_rules": [],
            "tools": [
                {
                    "name": "fetch_order_status",
                    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
                    "x-parley-patterns": {"triggers": ["order"], "arguments": {"order_id": "ORD-\\d+"}},
                    "timeout_seconds": 0.05,
                }
            ],
        }
    )

    result = await tool_reply(config, ToolRegistry({"fetch_order_status": slow}), "my order ORD-1?")

    assert result.tool_calls[0].error == "timed out after 0.05s"
    assert "timed out" not in result.reply and result.reply.startswith("Sorry, I can't do that right now")


async def test_a_tool_failure_meant_for_the_customer_is_explained() -> None:
    async def missing(order_id: str) -> dict[str, Any]:
        raise ToolFailed(f"no order {order_id} was found")

    result = await tool_reply(SUPPORT, ToolRegistry({"fetch_order_status": missing}), "Where is ORD-424242?")

    assert result.reply == "I couldn't look that up: no order ORD-424242 was found. Could you check the order number?"


@pytest.mark.parametrize(
    ("status", "fields", "says", "never"),
    [
        ("processing", {"expected_delivery": "2025-10-24"}, ["hasn't shipped yet", "2025-10-24"], ["Tracking"]),
        ("in_transit", {"expected_delivery": "2025-10-15", "tracking_number": "1Z9"}, ["in transit", "1Z9"], []),
        ("delivered", {"delivered_on": "2025-09-30"}, ["was delivered on 2025-09-30"], ["expected"]),
        ("delivered", {}, ["was delivered."], ["expected", " on ."]),
        ("cancelled", {"expected_delivery": None, "tracking_number": None}, ["was cancelled"], ["expected", ": ."]),
        ("on_hold", {}, ["is on hold."], ["Expected", "Tracking"]),
    ],
)
async def test_order_status_wording_follows_the_status_and_shows_no_empty_field(
    status: str, fields: dict[str, Any], says: list[str], never: list[str]
) -> None:
    async def fetch(order_id: str) -> dict[str, Any]:
        return {"order_id": order_id, "status": status, "status_text": status.replace("_", " "), **fields}

    result = await tool_reply(SUPPORT, ToolRegistry({"fetch_order_status": fetch}), "Where is my order ORD-1?")

    assert all(text in result.reply for text in says), result.reply
    assert not any(text in result.reply for text in never), result.reply
    assert "()" not in result.reply and "  " not in result.reply


# -- tool failures across turns -----------------------------------------------------------------------


async def test_failures_count_across_turns_with_the_full_history_and_old_ones_alone_escalate_nothing() -> None:
    async def missing(order_id: str) -> dict[str, Any]:
        raise ToolFailed(f"no order {order_id} was found")

    chain, tools = chain_for(SUPPORT, {}), ToolRegistry({"fetch_order_status": missing})
    first = await run_turn(SUPPORT, [], "Where is ORD-1?", chain=chain, tools=tools)
    between = await run_turn(SUPPORT, first.messages, "hmm", chain=chain, tools=tools)
    history = [*first.messages, *between.messages]
    second = await run_turn(SUPPORT, history, "what about ORD-2 then", chain=chain, tools=tools)

    assert [m.role for m in first.messages] == ["user", "assistant", "tool", "assistant"]
    assert first.escalation is None and between.escalation is None
    assert second.escalation is not None and second.escalation.trigger == "repeated_tool_failure"
    assert second.reply.endswith(SUPPORT.escalation_rules[-1].message or SUPPORT.templates["escalation"])


# -- cross-sell ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "response"),
    [
        ("Yes, I would like the Premium Shipping upgrade", "accepted"),
        ("yes please", "accepted"),
        ("Sure, sign me up", "accepted"),
        ("I'd like the premium shipping", "accepted"),
        ("That sounds great", "accepted"),
        ("no thanks", "declined"),
        ("No, where is my other order?", "declined"),
        ("not interested", "declined"),
        ("maybe later", "declined"),
        ("I don't want it", "declined"),
        ("How much is premium shipping?", None),
        ("Where is my order ORD-1?", None),
        ("thanks", None),
        ("ok", None),
    ],
)
def test_the_answer_to_an_open_offer_is_read(text: str, response: str | None) -> None:
    assert offer_response(text, PREMIUM) == response


@pytest_asyncio.fixture
async def demo_url(pg_url: str) -> str:
    url = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await setup_demo_data(conn, tenants=("acme", "globex"), reset=True)
    return url


async def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.cursor() as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def test_an_offer_is_made_in_the_reply_then_accepted_acknowledged_and_recorded(demo_url: str) -> None:
    chain, tools = chain_for(SALES, {}), demo_registry(connect_url(demo_url))
    kwargs: dict[str, Any] = {"chain": chain, "tools": tools, "tenant": "acme", "conversation_id": "c-1"}

    offered = await run_turn(SALES, [], "Where is my order ORD-78945?", **kwargs)
    accepted = await run_turn(
        SALES, offered.messages, "Yes, I would like the Premium Shipping upgrade", pending_offer=offered.cross_sell,
        **kwargs,
    )  # fmt: skip

    assert offered.cross_sell == PREMIUM and offered.reply.endswith(PREMIUM.suggestion)
    assert offered.cross_sell_response is None
    assert accepted.cross_sell_response == "accepted" and accepted.cross_sell is None
    assert [call.tool for call in accepted.tool_calls] == ["record_upgrade"]
    assert "Premium Shipping Upgrade" in accepted.reply and "UP-000001" in accepted.reply
    assert "Parley Plus" not in accepted.reply and "plans start" not in accepted.reply
    assert await rows(demo_url, "SELECT tenant, conversation_id, product FROM demo.upgrades") == [
        ("acme", "c-1", "Premium Shipping Upgrade")
    ]
    assert [m.role for m in accepted.messages] == ["user", "assistant", "tool", "assistant"]


async def test_an_offer_in_the_last_reply_is_the_open_one_when_none_is_given() -> None:
    history = [
        ChatMessage("user", "Where is my order?"),
        ChatMessage("assistant", f"It's coming. {PREMIUM.suggestion}"),
    ]

    result = await run_turn(SALES, history, "no thanks", chain=chain_for(SALES, {}), tools=ToolRegistry())

    assert result.cross_sell_response == "declined" and result.cross_sell is None
    assert result.reply == f"{SALES.templates['cross_sell.declined']} Is there anything else I can help you with?"


async def test_a_declined_product_is_never_offered_again_and_an_unrelated_message_leaves_the_offer_open() -> None:
    chain, tools = chain_for(SALES, {}), ToolRegistry()
    plus = CrossSell(product="Parley Plus Annual", suggestion=SALES.cross_sell[2].suggestion, confidence=0.65)
    history = [ChatMessage("user", "I want to upgrade my plan"), ChatMessage("assistant", f"Sure. {plus.suggestion}")]

    unrelated = await run_turn(SALES, history, "How much is the Business plan?", chain=chain, tools=tools,
                               pending_offer=plus)  # fmt: skip
    history += unrelated.messages
    declined = await run_turn(SALES, history, "no, not now", chain=chain, tools=tools, pending_offer=plus)
    history += declined.messages
    again = await run_turn(SALES, history, "I want to upgrade my subscription", chain=chain, tools=tools)

    assert unrelated.cross_sell_response is None and unrelated.cross_sell is None
    assert declined.cross_sell_response == "declined"
    assert again.cross_sell is None and plus.suggestion not in again.reply


async def test_no_offer_to_a_customer_being_handed_off() -> None:
    result = await run_turn(
        SALES, [], "I want to speak to a manager about my headphones, this is urgent",
        chain=chain_for(SALES, {}), tools=ToolRegistry(),
    )  # fmt: skip

    assert result.escalation is not None and result.cross_sell is None
    assert "Warranty" not in result.reply


# -- each customer's own data --------------------------------------------------------------------------


async def test_a_tool_gets_the_turns_context_when_it_takes_one() -> None:
    seen: list[ToolContext] = []

    async def fetch(order_id: str, *, context: ToolContext) -> dict[str, Any]:
        seen.append(context)
        return {"order_id": order_id, "status": "processing", "status_text": "processing"}

    await run_turn(
        SUPPORT, [ChatMessage("user", "I'm jo@example.com")], "Where is my order ORD-1?",
        chain=chain_for(SUPPORT, {}), tools=ToolRegistry({"fetch_order_status": fetch}), tenant="acme",
        conversation_id="c-9", user_id="u-9",
    )  # fmt: skip

    assert seen == [
        ToolContext(tenant="acme", conversation_id="c-9", user_id="u-9", customer_emails=("jo@example.com",))
    ]


async def test_demo_data_and_effects_are_per_tenant(demo_url: str) -> None:
    tools = demo_registry(connect_url(demo_url))
    refund = SUPPORT.tool("initiate_refund")
    fetch = SUPPORT.tool("fetch_order_status")
    assert refund is not None and fetch is not None

    acme = await tools.call(refund, {"order_id": "ORD-12345", "amount": 249}, ToolContext(tenant="acme"))
    globex = await tools.call(refund, {"order_id": "ORD-12345", "amount": 249}, ToolContext(tenant="globex"))
    elsewhere = await tools.call(fetch, {"order_id": "ORD-12345"}, ToolContext(tenant="initech"))

    assert acme.error is None and globex.error is None  # each tenant's order has its own refunds
    assert elsewhere.error == "no order ORD-12345 was found"
    assert await rows(demo_url, "SELECT DISTINCT tenant FROM demo.orders ORDER BY tenant") == [("acme",), ("globex",)]


async def test_the_tracking_email_goes_only_to_the_orders_address_and_never_reveals_it(demo_url: str) -> None:
    tools = demo_registry(connect_url(demo_url))
    send = SUPPORT.tool("send_tracking_email")
    assert send is not None
    acme = ToolContext(tenant="acme", conversation_id="c-1")
    owner = ToolContext(tenant="acme", conversation_id="c-2", customer_emails=("john@example.com", "j@work.example"))

    stranger = await tools.call(send, {"order_id": "ORD-78945", "email": "thief@evil.example"}, acme)
    on_file = await tools.call(send, {"order_id": "ORD-78945"}, acme)
    given = await tools.call(send, {"order_id": "ORD-78945", "email": "JOHN@example.com"}, acme)
    other_of_owner = await tools.call(send, {"order_id": "ORD-78945", "email": "j@work.example"}, owner)

    assert stranger.error is not None and "email address on the order" in stranger.error
    assert "john@" not in stranger.error
    assert on_file.output is not None and on_file.output["email"] is None and "john@" not in str(on_file.output)
    assert given.error is None and other_of_owner.error is None
    assert await rows(demo_url, "SELECT address FROM demo.emails ORDER BY email_id") == [
        ("john@example.com",), ("JOHN@example.com",), ("j@work.example",)
    ]  # fmt: skip


async def test_an_effect_or_a_lookup_for_a_customer_known_by_another_email_is_refused(demo_url: str) -> None:
    tools = demo_registry(connect_url(demo_url))
    refund, fetch = SUPPORT.tool("initiate_refund"), SUPPORT.tool("fetch_order_status")
    assert refund is not None and fetch is not None
    maria = ToolContext(tenant="acme", customer_emails=("maria@example.com",))

    refused = await tools.call(refund, {"order_id": "ORD-78945"}, maria)
    hidden = await tools.call(fetch, {"order_id": "ORD-78945"}, maria)
    own = await tools.call(refund, {"order_id": "ORD-12345", "amount": 10}, maria)

    assert refused.error is not None and "isn't linked to the email address" in refused.error
    assert hidden.error is not None and hidden.output is None
    assert own.error is None
    assert await rows(demo_url, "SELECT order_id FROM demo.refunds") == [("ORD-12345",)]


async def test_a_demo_schema_from_before_tenants_is_made_again(pg_url: str) -> None:
    url = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE SCHEMA demo; CREATE TABLE demo.orders (order_id text PRIMARY KEY, email text)")
        await setup_demo_data(conn)
        await setup_demo_data(conn)  # and again: nothing to do

    assert await rows(url, "SELECT count(*) FROM demo.orders WHERE tenant = 'demo'") == [(44,)]


def test_a_registry_passes_the_context_only_to_tools_that_take_it() -> None:
    async def plain(order_id: str) -> dict[str, Any]:
        return {"order_id": order_id}

    async def aware(order_id: str, *, context: ToolContext) -> dict[str, Any]:
        return {"order_id": order_id, "tenant": context.tenant}

    definition = ToolDefinition(name="fetch_order_status", parameters={"type": "object"})
    context = ToolContext(tenant="acme")

    async def both() -> tuple[Any, Any]:
        return (
            await ToolRegistry({"fetch_order_status": plain}).call(definition, {"order_id": "ORD-1"}, context),
            await ToolRegistry({"fetch_order_status": aware}).call(definition, {"order_id": "ORD-1"}, context),
        )

    first, second = asyncio.run(both())
    assert first.output == {"order_id": "ORD-1"} and second.output == {"order_id": "ORD-1", "tenant": "acme"}


def test_a_history_cut_inside_a_tool_exchange_is_mended_for_the_providers() -> None:
    call = ToolCallRequest("c1", "fetch_order_status", {"order_id": "ORD-1"})
    dangling = ToolCallRequest("c2", "fetch_order_status", {"order_id": "ORD-2"})
    history = [
        ChatMessage("tool", '{"status": "shipped"}', tool_call_id="c0", name="fetch_order_status"),  # its call cut
        ChatMessage("assistant", "Shipped."),
        ChatMessage("user", "and ORD-1?"),
        ChatMessage("assistant", "", tool_calls=[call]),
        ChatMessage("tool", '{"status": "delivered"}', tool_call_id="c1", name="fetch_order_status"),
        ChatMessage("assistant", "Let me check.", tool_calls=[dangling]),  # its result never came
    ]

    mended = well_formed(history)

    assert [(m.role, m.content, [c.id for c in m.tool_calls]) for m in mended] == [
        ("assistant", "Shipped.", []),
        ("user", "and ORD-1?", []),
        ("assistant", "", ["c1"]),
        ("tool", '{"status": "delivered"}', []),
        ("assistant", "Let me check.", []),
    ]
    assert well_formed(mended) == mended


@pytest.mark.parametrize(
    ("trigger", "text", "found"),
    [
        ("send the tracking", "could you send me tracking please", True),
        ("email the tracking", "email tracking for ORD-1", True),
        ("tracking email", "the tracking email", True),
        ("my order", "an order", False),  # the first and last words are always there
        ("where is my", "where is the shop", False),
        ("order", "my orders", True),
    ],
)
def test_trigger_phrases_allow_small_words_between_their_words(trigger: str, text: str, found: bool) -> None:
    assert (phrase(trigger).search(text) is not None) == found


async def test_a_message_that_only_gives_a_detail_is_acknowledged() -> None:
    completion = await OfflineModel(templates=SUPPORT.templates).complete(
        [ChatMessage("user", "my email is jo@example.com")], tools=tool_specs(SUPPORT)
    )

    assert completion.tool_calls == [] and completion.text == "Thanks, I've noted that. What can I help you with?"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=120), min_size=1, max_size=4))
def test_the_offline_model_answers_any_conversation(turns: list[str]) -> None:
    model = OfflineModel(intents=SUPPORT.intents, templates=SUPPORT.templates)
    messages: list[ChatMessage] = []
    for turn in turns[:-1]:
        messages += [ChatMessage("user", turn), ChatMessage("assistant", "OK")]

    completion = asyncio.run(model.complete([*messages, ChatMessage("user", turns[-1])], tools=tool_specs(SUPPORT)))

    assert completion.text.strip() or completion.tool_calls
    assert "{{" not in completion.text and "[[" not in completion.text


async def test_a_reset_empties_only_the_tenants_it_names(demo_url: str) -> None:
    tools = demo_registry(connect_url(demo_url))
    refund = SUPPORT.tool("initiate_refund")
    assert refund is not None
    for tenant in ("acme", "globex"):
        await tools.call(refund, {"order_id": "ORD-12345", "amount": 5}, ToolContext(tenant=tenant))

    async with await psycopg.AsyncConnection.connect(demo_url) as conn:
        await setup_demo_data(conn, tenants=("acme",), reset=True)
    after = await tools.call(refund, {"order_id": "ORD-12345", "amount": 5}, ToolContext(tenant="acme"))

    assert await rows(demo_url, "SELECT tenant, refund_id FROM demo.refunds ORDER BY refund_id") == [
        ("globex", "RF-000002"), ("acme", "RF-000003"),
    ]  # fmt: skip
    assert after.output is not None and after.output["refund_id"] == "RF-000003"  # no id given twice
