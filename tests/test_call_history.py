"""A call's history, turn by turn (``CallService.history``): what the caller said or typed, the
config version pinned to the call (the one that governed each answer) beside the version active at
that moment, the tools run and the replies, as far as the caller heard them. On the real event store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from commands.call import CALL, VOICE_LINE, CallService
from commands.config import AGENT_CONFIG, CONFIG_MEMBERS, ConfigService, ensure_demo_configs
from commands.runner import CommandRunner
from domain import call as v
from domain import config as a
from domain.errors import NotFoundError
from domain.escalation import DECIDER as AGENT_POOL
from domain.messages import Command
from streams.factory import OpenStore
from streams.store import EventMeta
from streams.subjects import StreamId

TENANT = "acme"


def now() -> datetime:
    return datetime.now(UTC)


async def rollout(opened: OpenStore, version: int) -> None:
    """The voice bot's next version made active (as a rollout does), mid-call."""
    stream = StreamId(TENANT, a.AGGREGATE_TYPE, "voice-bot")
    expected = len(await opened.store.read(stream))
    created = a.ConfigVersionCreated(
        config_id="voice-bot", version=version, based_on=version - 1, yaml_content=f"version: {version}",
        digest=f"d{version}", product_type="voicebot", author="admin-1", author_type="client_user",
        commit_message=f"v{version}", change_type="prompt", risk_level="low", at=now(),
    )  # fmt: skip
    activated = a.ConfigVersionActivated(version=version, previous=version - 1, reason="created", at=now())
    await opened.store.append(stream, [created, activated], expected_version=expected, meta=EventMeta(actor="admin-1"))


async def test_each_turn_of_a_call_names_the_config_version_that_governed_it(open_test_store: OpenStore) -> None:
    runner = CommandRunner.for_aggregates(
        open_test_store.store, [AGENT_CONFIG, CONFIG_MEMBERS, AGENT_POOL, CALL, VOICE_LINE]
    )
    configs = ConfigService(runner)
    await ensure_demo_configs(configs, TENANT)
    calls = CallService(runner, configs.catalog)
    await calls.answer(TENANT, call_id="call-1", config_id="voice-bot", phone_number="+15551234567",
                       transport="twilio", provider_call_id="CA1")  # fmt: skip

    async def record(command: Command, command_id: str) -> None:
        await calls.record(TENANT, "call-1", command, command_id)

    await record(v.RecordAgentUtterance(utterance_id="a0", text="Hello, how can I help?", at=now()), "a0")
    await record(v.RecordCallerUtterance(utterance_id="u1", text="where is my order", confidence=0.9, at=now()), "u1")
    await record(v.RecordAgentUtterance(utterance_id="a1", text="What's your order number?", in_reply_to="u1",
                                        e2e_latency_ms=420.0, at=now()), "a1")  # fmt: skip
    await rollout(open_test_store, 2)  # new calls now get version 2; this one stays on 1
    await record(v.RecordCallerUtterance(utterance_id="u2", text="ORD-78945", source="dtmf", at=now()), "u2")
    await record(v.StartToolCall(tool_call_id="t1", tool="fetch_order_status", arguments={"order_id": "ORD-78945"},
                                 at=now()), "t1")  # fmt: skip
    await record(v.FinishToolCall(tool_call_id="t1", output={"status": "in_transit"}, execution_time_ms=12,
                                  at=now()), "t1-done")  # fmt: skip
    await record(v.RecordAgentUtterance(utterance_id="a2", text="Your order is on its way with UPS, arriving Friday.",
                                        in_reply_to="u2", interrupted=True, heard_text="Your order is on its way",
                                        at=now()), "a2")  # fmt: skip

    found = await calls.history(TENANT, "call-1")
    assert (found.call_id, found.config_id, found.config_version, found.status) == (
        "call-1", "voice-bot", 1, "in_progress")  # fmt: skip
    assert [(t.turn, t.utterance_id, t.source, t.config_version, t.active_config_version) for t in found.turns] == [
        (0, None, None, 1, 1),  # the greeting, before the caller said anything
        (1, "u1", "speech", 1, 1),
        (2, "u2", "dtmf", 1, 2),  # still governed by the pinned version 1, while version 2 was active
    ]
    greeting, first, second = found.turns
    assert [r.text for r in greeting.replies] == ["Hello, how can I help?"]
    assert (first.text, first.confidence, first.command_id, first.actor) == ("where is my order", 0.9, "u1",
                                                                               "voice:platform")  # fmt: skip
    assert [(r.utterance_id, r.e2e_latency_ms) for r in first.replies] == [("a1", 420.0)]
    assert [(t.tool, t.ok, t.execution_time_ms) for t in second.tools] == [("fetch_order_status", True, 12)]
    assert [(r.text, r.interrupted) for r in second.replies] == [("Your order is on its way", True)], "as heard"
    assert found.version == second.replies[0].version and first.seq is not None and second.seq > first.seq  # type: ignore[operator]
    with pytest.raises(NotFoundError):
        await calls.history(TENANT, "no-such-call")
