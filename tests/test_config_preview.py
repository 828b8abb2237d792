"""Previews and the approvals' replay evidence (``agents.preview``), with the real graph and the
offline model: what a scenario's expected behaviour says is checked, and a replay compares the
AI's turns with the AI's turns only."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.graph import chain_for, run_turn
from agents.llm.port import ChatMessage
from agents.preview import Expectation, Scenario, expectations, recorded_turns, replay_conversation
from agents.tools import ToolRegistry
from domain import conversation as c
from domain.bot import AgentConfig, load_config
from domain.messages import Event
from read_models.config import TurnSkipped
from streams.store import EventMeta, RecordedEvent
from streams.subjects import StreamId

SUPPORT = load_config((Path(__file__).parent.parent / "agents" / "configs" / "support_bot.yaml").read_text())
TOOLS = [tool.name for tool in SUPPORT.tools]
LOOKUP, EMAIL = "fetch_order_status", "send_tracking_email"
T0 = datetime(2025, 10, 20, 10, 0, tzinfo=UTC)
ORDER = {
    "order_id": "ORD-78945",
    "status": "shipped",
    "status_text": "shipped",
    "expected_delivery": "2025-10-24",
    "tracking_number": "1Z999AA10123456784",
    "carrier": "UPS",
    "product": "Coffee Grinder",
}


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Should trigger refund tool", Expectation(tools=("initiate_refund",))),
        ("Should not trigger the refund tool", Expectation(not_tools=("initiate_refund",))),
        ("Should call fetch_order_status", Expectation(tools=("fetch_order_status",))),
        ("should look up the order status and not escalate", Expectation(tools=(LOOKUP,), escalation=False)),
        ("Should send a tracking email without escalating", Expectation(tools=(EMAIL,), escalation=False)),
        ("Should open a support ticket", Expectation(tools=("create_support_ticket",))),
        ("Should not call any tool", Expectation(no_tools=True)),
        ("Should use a tool", Expectation(no_tools=False)),
        ("Should escalate to a human", Expectation(escalation=True)),
        ("Should hand off to a live agent", Expectation(escalation=True)),
        ('Should mention "ORD-78945"', Expectation(reply_contains=("ORD-78945",))),
        ("Should trigger warranty tool", Expectation(tools=("warranty",))),  # no such tool: it cannot pass
        ("Should be friendly", Expectation()),
    ],
)  # fmt: skip
def test_what_an_expected_behaviour_sentence_expects(sentence: str, expected: Expectation) -> None:
    assert expectations(Scenario(user_message="x", expected_behavior=sentence), TOOLS) == expected


def test_explicit_expectations_take_precedence_over_the_sentence() -> None:
    scenario = Scenario(
        user_message="x",
        expected_behavior="Should trigger refund tool and escalate",
        expect_tool="fetch_order_status",
        expect_escalation=False,
        expect_no_tool_calls=False,
    )
    assert expectations(scenario, TOOLS) == Expectation(tools=("fetch_order_status",), no_tools=False, escalation=False)


# Replays ---------------------------------------------------------------------------------------


def _recorded(events: list[Event]) -> list[RecordedEvent]:
    stream = StreamId("acme", c.AGGREGATE_TYPE, "c-1")
    return [
        RecordedEvent(stream, n, n, event, T0 + timedelta(seconds=n), EventMeta()) for n, event in enumerate(events, 1)
    ]


def _answering(outputs: Mapping[str, Mapping[str, Any]]) -> ToolRegistry:
    registry = ToolRegistry()
    for name, output in outputs.items():

        async def answer(_output: Mapping[str, Any] = output, **_: Any) -> Mapping[str, Any]:
            return _output

        registry.register(name, answer)
    return registry


async def _ai_reply(config: AgentConfig, history: list[ChatMessage], said: str, n: int) -> c.AgentReplied:
    """What ``config`` answers, as the runtime records it (``author`` ai); ``history`` gains the
    turn's messages, tool exchanges included, as the runtime's history has them."""
    tools = _answering({"fetch_order_status": ORDER})
    turn = await run_turn(config, history, said, chain=chain_for(config, {}), tools=tools, user_id="user-1")
    history += turn.messages
    return c.AgentReplied(
        message_id=f"a-{n}",
        user_id="user-1",
        content=turn.reply,
        intent=turn.intent,
        tool_calls=turn.tool_calls,
        escalation_suggested=turn.escalation_suggested,
        replied_at=T0,
    )


def _said(n: int, text: str) -> c.UserMessageReceived:
    return c.UserMessageReceived(message_id=f"u-{n}", user_id="user-1", content=text, received_at=T0)


async def test_a_replay_compares_the_ais_turns_only_and_never_blames_it_for_a_persons_escalation() -> None:
    """The customer asks the AI, then escalates by hand; a human agent answers the next turn (and
    refunds); back with the AI, the customer says goodbye. Replayed against the config that answered,
    nothing of the AI's changed: the human's turn is skipped and the escalation is not the AI's."""
    history: list[ChatMessage] = []
    first = await _ai_reply(SUPPORT, history, "Where is my order ORD-78945?", 1)
    assert first.tool_calls[0].tool == "fetch_order_status"  # the AI looked it up
    human = "Sure, I've refunded ORD-78945 for you."
    history += [ChatMessage("user", "Can you refund it instead?"), ChatMessage("assistant", human)]
    last = await _ai_reply(SUPPORT, history, "Thanks, that's all", 3)
    events = _recorded(
        [
            c.ConversationStarted(
                conversation_id="c-1", config_id="support-bot", config_version=1, channel="webchat",
                user_id="user-1", started_at=T0,
            ),
            _said(1, "Where is my order ORD-78945?"),
            first,
            c.EscalationRequested(
                escalation_id="e-1", trigger="user_requested", reason="a person, please", requested_by="user-1",
                requested_at=T0,
            ),
            c.EscalationAssigned(escalation_id="e-1", agent_id="sarah", assigned_at=T0),
            _said(2, "Can you refund it instead?"),
            c.AgentReplied(message_id="h-2", user_id="user-1", content=human, author="human:sarah", replied_at=T0),
            c.EscalationResolved(escalation_id="e-1", resolution="returned_to_ai", resolved_by="sarah", resolved_at=T0),
            _said(3, "Thanks, that's all"),
            last,
        ]
    )  # fmt: skip

    turns = recorded_turns(events)
    assert [(t.answered_by_ai, t.escalated, t.escalated_by) for t in turns] == [
        (True, False, "user-1"),
        (False, False, None),
        (True, False, None),
    ]
    assert turns[1].human_reply == human and turns[1].reply is None

    report = await replay_conversation(SUPPORT, "c-1", events, {})
    assert report.differences == []
    assert (report.turns, report.turns_compared, report.turns_changed) == (3, 2, 0)
    assert report.turns_skipped == [TurnSkipped(turn=2, reason="answered by a person")]
    assert report.escalated_by_people == ["user-1"]
    assert report.tool_calls_lost == [] and report.tool_calls_added == []


async def test_a_tool_call_the_recording_cannot_answer_reads_with_placeholders_not_blanks() -> None:
    """The recorded AI had no tracking-email tool; the candidate has one and calls it. The recording
    has no result of it, so its reply shows which values a real run would give."""
    older = load_config(
        (Path(__file__).parent.parent / "agents" / "configs" / "support_bot.yaml")
        .read_text()
        .replace("  - name: send_tracking_email", "  - name: send_tracking_mail")
        .replace("  send_tracking_email", "  send_tracking_mail")
    )
    said = "Please send the tracking email for ORD-78945 to jo@example.com"
    before = await _ai_reply(older, [], said, 1)  # the customer's email is in what they said
    assert "send_tracking_email" not in [call.tool for call in before.tool_calls]
    events = _recorded([_said(1, said), before])

    report = await replay_conversation(SUPPORT, "c-1", events, {})
    [difference] = report.differences
    reply = difference.candidate.reply or ""
    assert difference.candidate.tool_calls == ["send_tracking_email"]
    assert difference.unrecorded_tool_calls == ["send_tracking_email"]
    assert "[tracking_number]" in reply and "jo@example.com" in reply and "  " not in reply
    assert report.tool_calls_added == ["send_tracking_email"]
