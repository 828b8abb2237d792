"""An agent config's escalation and cross-sell rules, evaluated over one turn. Pure functions.

Escalation rules run in the order the config lists them; the first that fires decides
(``Escalation``: trigger, reason, urgency, action). Seed 003's flow: urgent keywords, then
sentiment; here the config chooses the order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

from agents.config import AgentConfig, EscalationRule, ToolDefinition
from domain.conversation import ToolCall

NEGATIVE_DEFAULT = -0.05  # a turn is negative below this sentiment when a rule gives no threshold


class Escalation(msgspec.Struct, frozen=True, kw_only=True):
    trigger: str
    reason: str
    urgency: str = "medium"
    action: str = "human_handoff"
    message: str | None = None


class CrossSell(msgspec.Struct, frozen=True, kw_only=True):
    detected: bool = True
    product: str
    suggestion: str
    confidence: float


class TurnSignals(msgspec.Struct, frozen=True, kw_only=True):
    """What the rules read: the latest customer text and its analysis, and the conversation so far."""

    text: str
    sentiment: float
    wants_human: bool
    sentiments: list[float]  # every customer turn's sentiment, oldest first, this one last
    tool_failures: int  # consecutive failed tool calls, most recent last


def phrase_in(keyword: str, text: str) -> bool:
    """``keyword`` in ``text`` at word boundaries, any case, any spacing ("speak to a  human")."""
    words = [re.escape(word) for word in keyword.split()]
    return re.search(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", text, re.IGNORECASE) is not None


def evaluate_message_rules(config: AgentConfig, signals: TurnSignals) -> Escalation | None:
    """The first escalation rule the customer's turn fires, if any (tool failures included)."""
    for rule in config.escalation_rules:
        if (reason := _fires(rule, signals)) is not None:
            return _escalation(rule, reason)
    return None


def _fires(rule: EscalationRule, signals: TurnSignals) -> str | None:
    match rule.trigger:
        case "urgent_keywords":
            hit = next((keyword for keyword in rule.keywords if phrase_in(keyword, signals.text)), None)
            return None if hit is None else f"the customer said {hit!r}"
        case "user_frustrated":
            threshold = rule.threshold if rule.threshold is not None else -0.5
            if signals.sentiment < threshold:
                return f"sentiment {signals.sentiment:.2f} is below {threshold:.2f}"
        case "explicit_request":
            if signals.wants_human:
                return "the customer asked for a human"
        case "negative_turns":
            turns = rule.turns or 3
            threshold = rule.threshold if rule.threshold is not None else NEGATIVE_DEFAULT
            recent = signals.sentiments[-turns:]
            if len(recent) == turns and all(value < threshold for value in recent):
                return f"{turns} negative turns in a row"
        case "repeated_tool_failure":
            count = rule.count or 2
            if signals.tool_failures >= count:
                return f"{signals.tool_failures} tool calls failed in a row"
    return None


def _escalation(rule: EscalationRule, reason: str) -> Escalation:
    return Escalation(trigger=rule.trigger, reason=reason, urgency=rule.level, action=rule.action, message=rule.message)


def evaluate_tool_failure(
    config: AgentConfig, failed: Sequence[tuple[ToolDefinition, ToolCall]], consecutive_failures: int
) -> Escalation | None:
    """After tools ran: a failed tool with ``on_failure: escalate``, else ``repeated_tool_failure``."""
    for definition, call in failed:
        if definition.on_failure == "escalate":
            return Escalation(
                trigger="tool_failure",
                reason=f"{definition.name} failed: {call.error}",
                urgency="high",
                action="human_handoff",
            )
    for rule in config.escalation_rules:
        if rule.trigger == "repeated_tool_failure" and consecutive_failures >= (rule.count or 2):
            return _escalation(rule, f"{consecutive_failures} tool calls failed in a row")
    return None


def evaluate_cross_sell(
    config: AgentConfig, *, text: str, intent: str, intents: Sequence[str], tools_succeeded: Sequence[str]
) -> CrossSell | None:
    """The first cross-sell rule whose every condition holds this turn."""
    for rule in config.cross_sell:
        when = rule.when
        if when.intent is not None and when.intent != intent and when.intent not in intents:
            continue
        if when.keywords and not any(phrase_in(keyword, text) for keyword in when.keywords):
            continue
        if when.tool is not None and when.tool not in tools_succeeded:
            continue
        return CrossSell(product=rule.product, suggestion=rule.suggestion, confidence=rule.confidence)
    return None
