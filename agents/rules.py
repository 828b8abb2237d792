"""An agent config's escalation and cross-sell rules, evaluated over one turn. Pure functions.

Escalation rules run in the order the config lists them; the first that fires decides
(``Escalation``: trigger, reason, urgency, action). Seed 003's flow: urgent keywords, then
sentiment; here the config chooses the order.

Cross-sell: ``evaluate_cross_sell`` finds the offer a turn may make (never a product already
offered in the conversation); ``offer_response`` reads what the customer's next message does with
an open offer: ``accepted`` ("Yes, I would like the Premium Shipping upgrade"), ``declined`` ("no
thanks"), or None (about something else: the offer stays open).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Literal

import msgspec

from domain.bot import AgentConfig, CrossSellRule, EscalationRule, ToolDefinition
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
    config: AgentConfig,
    *,
    text: str,
    intent: str,
    intents: Sequence[str],
    tools_succeeded: Sequence[str],
    exclude: Collection[str] = (),
) -> CrossSell | None:
    """The first cross-sell rule whose every condition holds this turn, of a product not in ``exclude``."""
    for rule in config.cross_sell:
        if rule.product in exclude:
            continue
        when = rule.when
        if when.intent is not None and when.intent != intent and when.intent not in intents:
            continue
        if when.keywords and not any(phrase_in(keyword, text) for keyword in when.keywords):
            continue
        if when.tool is not None and when.tool not in tools_succeeded:
            continue
        return CrossSell(product=rule.product, suggestion=rule.suggestion, confidence=rule.confidence)
    return None


def cross_sell_rule(config: AgentConfig, offer: CrossSell) -> CrossSellRule | None:
    """The config's rule that made ``offer`` (by product)."""
    return next((rule for rule in config.cross_sell if rule.product == offer.product), None)


def offers_made(config: AgentConfig, replies: Sequence[str]) -> list[CrossSell]:
    """The config's offers whose suggestion one of ``replies`` (the assistant's, oldest first) carries."""
    return [
        CrossSell(product=rule.product, suggestion=rule.suggestion, confidence=rule.confidence)
        for rule in config.cross_sell
        if any(rule.suggestion in reply for reply in replies)
    ]


OfferResponse = Literal["accepted", "declined"]
_DECLINE = re.compile(
    r"\b(no,? thanks?|no thank you|not interested|not for me|not (right )?now|maybe (later|another time|next time)"
    r"|i'?ll pass|pass on (it|that|this)|no need|not today|i'?m (good|fine|ok|okay)( thanks?)?|nah|nope"
    r"|(do ?n[o']t|do not|don'?t really) (want|need)( it| that| this| one)?|rather not|skip (it|that))\b",
    re.IGNORECASE,
)
_NO = re.compile(r"^\W*(no|nope|nah|not really)\b(?!\s+(problem|worries))", re.IGNORECASE)
_ACCEPT = re.compile(
    r"^\W*(yes|yeah|yep|yup|yea|sure|absolutely|definitely|of course|certainly|ok(ay)?,? (sure|yes|please|let'?s)"
    r"|please do|go (for it|ahead)|sounds (good|great)|why not|let'?s do (it|that)|i'?m in|deal)\b"
    r"|\b(sign me up|sounds (good|great|perfect)|that would be (great|good|nice)"
    r"|add (it|that|this)|i'?ll take (it|that|one)|count me in|i'?d love (it|that|to)"
    r"|(i would|i'?d) like (it|that|this|one|to (add|get|have|take) (it|that|this|one))\b"
    r"|yes,? please)\b",
    re.IGNORECASE,
)
_WANT = re.compile(
    r"\b(i would like|i'?d like|i want|i'?ll (take|have|get)|add|get me|sign me up for)\b", re.IGNORECASE
)
_STOPWORDS = frozenset({"the", "a", "an", "our", "your", "for", "of", "and", "with", "to", "in", "on"})


def offer_response(text: str, offer: CrossSell) -> OfferResponse | None:
    """What the customer's message does with an open offer: accepts it, declines it, or neither."""
    if _DECLINE.search(text) or _NO.search(text):
        return "declined"
    if _ACCEPT.search(text):
        return "accepted"
    if _WANT.search(text) and _names(text, offer.product):
        return "accepted"
    return None


def _names(text: str, product: str) -> bool:
    """``text`` names the product: one of its significant words ("Premium", "Shipping", "warranty")."""
    words = [word for word in re.findall(r"[A-Za-z0-9]+", product.lower()) if word not in _STOPWORDS]
    return any(phrase_in(word, text) for word in words if len(word) > 2)
