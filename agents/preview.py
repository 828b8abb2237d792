"""Previewing a candidate config before it goes live: test scenarios, and replays of real history.

Both run the real agent (``agents.graph.run_turn``: the same graph, models and tool checks as the
runtime) and append nothing to any stream: ``run_turn`` decides, only the runtime records.

- **Scenarios** (the seed's ``test_scenarios``): each user message starts a fresh conversation.
  Tools that only read (``fetch_order_status``) run for real against the demo data; tools that
  would change something (refunds, emails, tickets, callbacks) are sandboxed: their arguments are
  checked against the schema as usual and they answer ``{"sandbox": true, ...}`` without acting.
- **Replays**: recorded conversations are played again against the candidate, their customer turns
  in order, and every tool the candidate calls answers with what the recording says that tool
  answered (its next unused recorded result in that conversation), so nothing is looked up or done
  again. Per conversation the report shows, turn by turn, where the candidate's reply, tool calls or
  escalation decision differ from what happened, and which recorded tool calls would no longer
  happen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from agents.config import AgentConfig, ToolDefinition
from agents.graph import TurnResult, chain_for, run_turn
from agents.tools import ToolFailed, ToolImpl, ToolRegistry
from domain import conversation as c
from gateways.llm.port import ChatMessage
from streams.store import RecordedEvent

READ_ONLY_TOOLS = frozenset({"fetch_order_status"})


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    user_message: str
    expected_behavior: str = ""
    expect_tool: str | None = None
    expect_escalation: bool | None = None
    expect_reply_contains: str | None = None


def sandbox_registry(
    real: ToolRegistry, config: AgentConfig, read_only: frozenset[str] = READ_ONLY_TOOLS
) -> ToolRegistry:
    """The config's tools: read-only ones as they are, the others answering without acting."""
    registry = ToolRegistry()
    for tool in config.tools:
        if tool.name in read_only and tool.name in real:
            registry.register(tool.name, _through(real, tool))
        else:
            registry.register(tool.name, _sandboxed(tool.name))
    return registry


def _through(real: ToolRegistry, tool: ToolDefinition) -> ToolImpl:
    async def call(**arguments: Any) -> Mapping[str, Any]:
        done = await real.call(tool, arguments)
        if done.error is not None or done.output is None:
            raise ToolFailed(done.error or f"{tool.name} gave nothing")
        return done.output

    return call


def _sandboxed(name: str) -> ToolImpl:
    async def act(**arguments: Any) -> Mapping[str, Any]:
        return {"sandbox": True, "tool": name, "status": "would_run", **arguments}

    return act


async def run_scenarios(
    config: AgentConfig, scenarios: Sequence[Scenario], tools: ToolRegistry, env: Mapping[str, str]
) -> list[dict[str, Any]]:
    chain = chain_for(config, env)
    sandbox = sandbox_registry(tools, config)
    results = []
    for scenario in scenarios:
        turn = await run_turn(config, [], scenario.user_message, chain=chain, tools=sandbox)
        called = [call.tool for call in turn.tool_calls]
        checks = {
            "tool": scenario.expect_tool is None or scenario.expect_tool in called,
            "escalation": scenario.expect_escalation is None or scenario.expect_escalation == turn.escalation_suggested,
            "reply": scenario.expect_reply_contains is None
            or scenario.expect_reply_contains.lower() in turn.reply.lower(),
        }
        results.append(
            {
                "scenario": scenario.user_message,
                "expected_behavior": scenario.expected_behavior,
                "agent_response": turn.reply,
                "intent": turn.intent,
                "tool_called": called[0] if called else None,
                "tools_called": called,
                "tool_errors": [call.error for call in turn.tool_calls if call.error],
                "escalation_suggested": turn.escalation_suggested,
                "success": all(checks.values()) and not any(call.error for call in turn.tool_calls),
                "checks": checks,
            }
        )
    return results


# Replays ----------------------------------------------------------------------------------------


class RecordedTurn(msgspec.Struct, frozen=True, kw_only=True):
    user_message: str
    reply: str | None
    tools: list[str]
    escalated: bool


def recorded_turns(events: Sequence[RecordedEvent]) -> list[RecordedTurn]:
    """A conversation's customer turns with what followed each: the AI's reply, its tools, an escalation."""
    turns: list[dict[str, Any]] = []
    for recorded in events:
        match recorded.event:
            case c.UserMessageReceived(content=content):
                turns.append({"user_message": content or "", "reply": None, "tools": [], "escalated": False})
            case c.AgentReplied() as reply if turns and reply.author != "human" and turns[-1]["reply"] is None:
                turns[-1]["reply"] = reply.content
                turns[-1]["tools"] = [call.tool for call in reply.tool_calls]
            case c.EscalationRequested() if turns:
                turns[-1]["escalated"] = True
    return [RecordedTurn(**turn) for turn in turns]


class _Recording:
    """The tool results of one recorded conversation, handed out in the order they were recorded."""

    def __init__(self, events: Sequence[RecordedEvent]) -> None:
        self.results: dict[str, list[c.ToolCall]] = defaultdict(list)
        for recorded in events:
            if isinstance(recorded.event, c.AgentReplied):
                for call in recorded.event.tool_calls:
                    self.results[call.tool].append(call)

    def registry(self, config: AgentConfig) -> ToolRegistry:
        registry = ToolRegistry()
        for tool in config.tools:
            registry.register(tool.name, self._replay(tool.name))
        return registry

    def _replay(self, name: str) -> ToolImpl:
        async def replay(**arguments: Any) -> Mapping[str, Any]:
            queue = self.results.get(name)
            if not queue:
                return {"replayed": False, "note": f"the recording has no result of {name}"}
            call = queue.pop(0)
            if call.error or call.output is None:
                raise ToolFailed(call.error or f"{name} failed")
            return call.output

        return replay


async def replay_conversation(
    config: AgentConfig, conversation_id: str, events: Sequence[RecordedEvent], env: Mapping[str, str]
) -> dict[str, Any]:
    """Play a recorded conversation's customer turns against ``config``; what differs, turn by turn."""
    chain = chain_for(config, env)
    tools = _Recording(events).registry(config)
    history: list[ChatMessage] = []
    differences, lost, new = [], [], []
    turns = recorded_turns(events)
    for index, before in enumerate(turns, 1):
        after: TurnResult = await run_turn(config, history, before.user_message, chain=chain, tools=tools)
        history += [
            ChatMessage("user", after.user_message or before.user_message),
            ChatMessage("assistant", after.reply),
        ]
        called = [call.tool for call in after.tool_calls]
        changed = []
        if before.reply is not None and after.reply != before.reply:
            changed.append("reply")
        if called != before.tools:
            changed.append("tool_calls")
        if after.escalation_suggested != before.escalated:
            changed.append("escalation")
        gone = [tool for tool in before.tools if tool not in called]
        added = [tool for tool in called if tool not in before.tools]
        lost += gone
        new += added
        if changed:
            differences.append(
                {
                    "turn": index,
                    "user_message": before.user_message,
                    "changed": changed,
                    "recorded": {"reply": before.reply, "tool_calls": before.tools, "escalated": before.escalated},
                    "candidate": {
                        "reply": after.reply,
                        "tool_calls": called,
                        "escalated": after.escalation_suggested,
                    },
                }
            )
    return {
        "conversation_id": conversation_id,
        "turns": len(turns),
        "turns_changed": len(differences),
        "tool_calls_lost": lost,
        "tool_calls_added": new,
        "differences": differences,
    }


async def replay_history(
    config: AgentConfig, recordings: Mapping[str, Sequence[RecordedEvent]], env: Mapping[str, str]
) -> dict[str, Any]:
    reports = [await replay_conversation(config, cid, events, env) for cid, events in recordings.items()]
    return {
        "conversations_replayed": len(reports),
        "conversations_changed": [r["conversation_id"] for r in reports if r["turns_changed"]],
        "conversations_losing_tool_calls": [r["conversation_id"] for r in reports if r["tool_calls_lost"]],
        "conversations": reports,
    }
