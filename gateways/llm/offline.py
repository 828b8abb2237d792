"""The offline model: deterministic, no network, no key. The default, and the last link of every chain.

It reads the latest customer turn with rules rather than weights:

- ``analyze(text)``: intent (``support``, ``sales``, ``general``, ``urgent`` or any configured one) from
  regex rules, sentiment in [-1, 1] from a lexicon with negations and intensifiers, and whether the
  customer is urgent or asks for a human.
- ``complete()``: calls a tool when the agent config's ``x-parley-patterns`` for it fire and every
  required argument can be extracted, asks for what is missing otherwise, and answers a tool result
  or an intent from ``{{variable}}`` templates.

A tool's patterns, as the agent YAML declares them::

    - name: fetch_order_status
      parameters: {type: object, properties: {order_id: {type: string}}, required: [order_id]}
      x-parley-patterns:
        intents: [order_status]          # fires when the message matches one of these intents' rules,
        triggers: [order, where is my]   # or contains one of these phrases (at a word start, any case)
        arguments: {order_id: "ORD-\\d+"}  # regex; a group named like the argument, else group 1, else all

A tool fired by an earlier customer turn is still chosen when the latest turn supplies one of its
arguments ("Where is my order?" / "What's the number?" / "ORD-78945"), until a tool result closes
the topic.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import structlog

from gateways.llm.port import ChatMessage, Completion, ProviderRejected, ToolCallRequest, ToolSpec

log = structlog.get_logger(__name__)

PATTERNS_KEY = "x-parley-patterns"

# Regex rules per intent, searched case-insensitively; each rule that matches scores one point.
# ``urgent`` wins whenever it matches; otherwise the highest score wins, ties going to the earlier intent.
DEFAULT_INTENTS: dict[str, list[str]] = {
    "urgent": [
        r"\burgent(ly)?\b",
        r"\bemergency\b",
        r"\basap\b",
        r"\bimmediately\b",
        r"\bright (now|away)\b",
        r"\b(fraud(ulent)?|scam(med)?)\b",
        r"\b(hacked|stolen|unauthori[sz]ed)\b",
        r"\bcharged (me )?(twice|two times|double)\b",
        r"\b(lawyer|legal action|sue you)\b",
        r"\b(dangerous|injur(ed|y)|on fire|smoke)\b",
        r"\bsecurity (breach|issue)\b",
    ],
    "support": [
        r"\border(s|ed)?\b",
        r"\b(refund|return|exchange|replacement)(s|ed|ing)?\b",
        r"\b(broken|damaged|defective|faulty)\b",
        r"\b(not|isn'?t|doesn'?t|won'?t|can'?t|cannot) (work|load|log ?in|sign ?in|connect|open)",
        r"\b(deliver(y|ed)?|shipping|shipment|package|parcel|track(ing)?)\b",
        r"\b(problem|issue|error|bug|trouble)s?\b",
        r"\b(password|log ?in|account|sign ?in)\b",
        r"\b(help|support|assist(ance)?)\b",
        r"\bcancel(l?ed|lation|ling)?\b",
        r"\bwhere is my\b",
        r"\b(late|delayed|missing|lost|never arrived|hasn'?t arrived)\b",
    ],
    "sales": [
        r"\b(price|prices|pricing|cost|costs)\b",
        r"\bhow much\b",
        r"\b(buy|purchase|purchasing)\b",
        r"\b(discount|coupon|promo(tion)?|deal|offer|sale)s?\b",
        r"\b(plan|plans|subscription|subscribe|upgrade|tier)\b",
        r"\b(quote|demo|trial)\b",
        r"\b(interested in|looking for|recommend)\b",
        r"\b(enterprise|bulk|wholesale|licen[cs]e)\b",
        r"\b(in stock|availab(le|ility))\b",
    ],
    "general": [
        r"^\W*(hi|hello|hey|good (morning|afternoon|evening))\b",
        r"\b(thanks|thank you|thx)\b",
        r"\b(opening hours|open(ing)? times?|business hours|are you open)\b",
        r"\b(who are you|are you (a )?(bot|human|real))\b",
        r"\b(where are you located|your address|contact you)\b",
        r"\bhow are you\b",
    ],
}

DEFAULT_HUMAN_PATTERNS: list[str] = [
    r"\b(talk|speak|chat)\s+(to|with)\s+(a\s+|an\s+|the\s+|your\s+)?"
    r"(human|person|agent|representative|rep|manager|supervisor|some\s?one|somebody|operator)\b",
    r"\b(real|live|actual)\s+(person|human|agent)\b",
    r"\bhuman\s+(please|agent|support|being)\b",
    r"\bescalate\b",
]

DEFAULT_TEMPLATES: dict[str, str] = {
    "fallback": "I can help with orders, refunds, deliveries, pricing and your account. "
    "Could you tell me a bit more about what you need?",
    "general": "Hello! I can help with orders, refunds, deliveries, pricing and your account. What can I do for you?",
    "support": "I'm sorry for the trouble. Could you share your order number or a few details so I can look into it?",
    "sales": "Happy to help with products, plans and pricing. What are you looking for?",
    "urgent": "I understand this is urgent. I'm flagging it for our team right away.",
    "human": "Of course. I'm handing this conversation to a member of our team.",
    "missing_arguments": "I can look into that. Could you tell me your {{missing}}?",
    "tool_result": "Here's what I found: {{result}}",
    "tool_error": "Sorry, I couldn't complete that: {{error}}",
}

LEXICON: dict[str, float] = {
    # positive
    "good": 1.9, "great": 3.1, "excellent": 3.2, "amazing": 2.8, "awesome": 3.1, "fantastic": 2.6,
    "wonderful": 2.7, "perfect": 2.7, "best": 3.2, "love": 3.2, "loved": 2.9, "happy": 2.7, "glad": 2.0,
    "pleased": 1.9, "satisfied": 1.8, "thanks": 1.9, "thank": 1.5, "thankful": 2.0, "appreciate": 2.0,
    "helpful": 1.8, "nice": 1.8, "fine": 0.8, "fast": 1.0, "quick": 1.0, "easy": 1.5, "resolved": 1.5,
    "fixed": 1.2, "works": 1.0, "working": 1.0, "recommend": 1.5, "cool": 1.3, "ok": 0.9, "okay": 0.9,
    # negative
    "bad": -2.5, "terrible": -3.0, "awful": -3.0, "horrible": -3.0, "worst": -3.1, "hate": -2.7,
    "hated": -2.7, "angry": -2.3, "annoyed": -1.8, "annoying": -1.8, "frustrated": -2.0, "frustrating": -2.0,
    "disappointed": -2.0, "disappointing": -2.0, "upset": -1.9, "unhappy": -1.9, "sad": -2.1,
    "furious": -3.0, "ridiculous": -2.0, "unacceptable": -2.6, "useless": -2.4, "poor": -2.1,
    "broken": -1.9, "damaged": -1.8, "wrong": -1.6, "slow": -1.0, "late": -1.0, "delayed": -1.2,
    "missing": -1.2, "lost": -1.4, "problem": -1.4, "problems": -1.4, "issue": -1.0, "issues": -1.0,
    "error": -1.3, "fail": -2.0, "failed": -2.0, "failure": -2.2, "scam": -3.0, "rude": -2.0,
    "waste": -1.8, "sucks": -2.5, "complaint": -1.6, "disaster": -3.0, "nightmare": -2.8,
}  # fmt: skip
NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "hardly", "cannot"}
    | {"dont", "doesnt", "didnt", "isnt", "wasnt", "arent", "werent", "wont", "cant", "couldnt", "wouldnt"}
)
INTENSIFIERS: dict[str, float] = {
    "very": 1.5, "really": 1.4, "so": 1.3, "extremely": 1.8, "super": 1.5, "totally": 1.4, "absolutely": 1.6,
    "incredibly": 1.7, "quite": 1.2, "too": 1.3, "slightly": 0.6, "somewhat": 0.7, "barely": 0.5,
}  # fmt: skip
NEGATION_SCOPE = 3  # words after a negation that it can flip
NEGATED = -0.75  # a negated word flips and weakens: "not happy" is milder than "unhappy"
_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?|[.!?;,]")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*\}\}")
_JSON = msgspec.json.Decoder()


class Analysis(msgspec.Struct, frozen=True):
    """``intents`` lists every intent whose rules matched, strongest first; ``intent`` is the one chosen."""

    intent: str
    confidence: float
    sentiment: float
    urgent: bool
    wants_human: bool
    intents: list[str] = []


class ToolPatterns(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tool's ``x-parley-patterns`` block."""

    intents: list[str] = []
    triggers: list[str] = []
    arguments: dict[str, str] = {}


def render_template(template: str, variables: Mapping[str, Any]) -> str:
    """Fill ``{{name}}`` (or ``{{order.status}}``, ``{{items.0}}``) from ``variables``, in one pass.

    A missing variable renders as empty; values are inserted as they are, never expanded again.
    """

    def fill(match: re.Match[str]) -> str:
        value: Any = variables
        for part in match.group(1).split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list | tuple) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return ""
        return display(value)

    return _PLACEHOLDER.sub(fill, template)


def display(value: Any) -> str:
    """How a variable reads in a reply: nothing for None, yes/no, lists joined, objects as JSON."""
    match value:
        case None:
            return ""
        case str():
            return value
        case bool():
            return "yes" if value else "no"
        case list() | tuple():
            return ", ".join(display(item) for item in value)
        case dict():
            try:
                return msgspec.json.encode(value).decode()
            except (TypeError, msgspec.EncodeError):
                return str(value)
        case _:
            return str(value)


class OfflineModel:
    """A rule-based ``LLMProvider``. ``intents`` and ``templates`` are merged over the defaults by key."""

    def __init__(
        self,
        *,
        intents: Mapping[str, Sequence[str]] | None = None,
        templates: Mapping[str, str] | None = None,
        human_patterns: Sequence[str] | None = None,
        lexicon: Mapping[str, float] | None = None,
        name: str = "offline",
        model: str = "parley-offline-1",
    ) -> None:
        self.name = name
        self.model = model
        rules = {**DEFAULT_INTENTS, **(intents or {})}
        self._intents = {intent: [re.compile(p, re.IGNORECASE) for p in patterns] for intent, patterns in rules.items()}
        self._human = [re.compile(p, re.IGNORECASE) for p in (human_patterns or DEFAULT_HUMAN_PATTERNS)]
        self._lexicon = {**LEXICON, **(lexicon or {})}
        self.templates = {**DEFAULT_TEMPLATES, **(templates or {})}

    # -- reading a message -------------------------------------------------------------------------

    def analyze(self, text: str) -> Analysis:
        scores = {intent: sum(1 for rule in rules if rule.search(text)) for intent, rules in self._intents.items()}
        order = list(scores)
        matched = sorted((i for i, s in scores.items() if s), key=lambda i: (-scores[i], order.index(i)))
        urgent = scores.get("urgent", 0) > 0
        intent = "urgent" if urgent else matched[0] if matched else "general"
        total = sum(scores.values())
        confidence = scores[intent] / total * (1 - 0.5 ** (scores[intent] + 1)) if total else 0.2
        return Analysis(
            intent=intent,
            confidence=round(confidence, 3),
            sentiment=self.sentiment(text),
            urgent=urgent,
            wants_human=any(rule.search(text) for rule in self._human),
            intents=matched,
        )

    def sentiment(self, text: str) -> float:
        """Lexicon sum with negation (flip, weaken), intensifiers, ``but`` shifting weight, ``!`` amplifying."""
        total, weight, boost = 0.0, 1.0, 1.0
        negation, scope = "", 0
        for word in _WORDS.findall(text.lower().replace("\u2019", "'")):
            if word in ".!?;,":
                negation, scope, boost = "", 0, 1.0
            elif word in NEGATIONS or word.endswith("n't"):
                negation, scope = word, NEGATION_SCOPE
            elif word == "but":
                total, weight = total * 0.5, 1.5
            elif word in INTENSIFIERS:
                boost *= INTENSIFIERS[word]
                if negation == "never" and scope:  # "never so disappointed" amplifies rather than negates
                    negation, scope = "", 0
            elif (value := self._lexicon.get(word)) is not None:
                total += value * boost * (NEGATED if scope else 1.0) * weight
                negation, scope, boost = "", 0, 1.0
            else:
                scope, boost = max(scope - 1, 0), 1.0
        total *= 1 + 0.1 * min(text.count("!"), 3)
        return round(total / math.sqrt(total * total + 15), 4)

    # -- answering ---------------------------------------------------------------------------------

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        system: str = "",
        tools: Sequence[ToolSpec] = (),
        timeout: float = 0.0,  # noqa: ASYNC109  (the port's; it answers at once)
    ) -> Completion:
        del system, timeout  # rules, not a prompt; and it answers at once
        if messages and messages[-1].role == "tool":
            return self._reply(self._answer_tool_results(messages))
        window = topic(messages)
        if not window:
            return self._reply(self.templates["fallback"])
        analysis = self.analyze(window[-1])
        if analysis.wants_human:
            return self._reply(self.templates["human"])
        choice = self._choose_tool(window, analysis, tools)
        if choice is not None:
            tool, arguments, missing = choice
            if not missing:
                call = ToolCallRequest(
                    id=call_id(len(messages), tool.name, arguments), name=tool.name, arguments=arguments
                )
                log.debug("llm.offline.tool_call", tool=tool.name, arguments=sorted(arguments))
                return Completion(
                    text="", tool_calls=[call], provider=self.name, model=self.model, stop_reason="tool_use"
                )
            wanted = " and ".join(name.replace("_", " ") for name in missing)
            template = self.templates.get(f"{tool.name}.missing", self.templates["missing_arguments"])
            return self._reply(render_template(template, {**arguments, "missing": wanted, "tool": tool.name}))
        key = analysis.intent if analysis.intents or analysis.urgent else "fallback"
        template = self.templates.get(key, self.templates["fallback"])
        return self._reply(render_template(template, {"intent": analysis.intent}))

    def _reply(self, text: str) -> Completion:
        return Completion(text=text, tool_calls=[], provider=self.name, model=self.model, stop_reason="end_turn")

    def _answer_tool_results(self, messages: list[ChatMessage]) -> str:
        """One rendered sentence per trailing tool result: arguments of the call, then the result's fields."""
        calls = {call.id: call for message in messages for call in message.tool_calls}
        trailing: list[ChatMessage] = []
        for message in reversed(messages):
            if message.role != "tool":
                break
            trailing.insert(0, message)
        replies = []
        for result in trailing:
            call = calls.get(result.tool_call_id or "")
            tool = result.name or (call.name if call else "")
            variables = {**(call.arguments if call else {}), **result_variables(result.content), "tool": tool}
            if variables.get("error"):
                template = self.templates.get(f"{tool}.error", self.templates["tool_error"])
            else:
                template = self.templates.get(tool, self.templates["tool_result"])
            replies.append(render_template(template, variables))
        return " ".join(reply for reply in replies if reply)

    def _choose_tool(
        self, window: list[str], analysis: Analysis, tools: Sequence[ToolSpec]
    ) -> tuple[ToolSpec, dict[str, Any], list[str]] | None:
        """The fired tool with all its required arguments, else the strongest fired one; None if none fired."""
        best: tuple[tuple[bool, int, int], ToolSpec, dict[str, Any], list[str]] | None = None
        for position, tool in enumerate(tools):
            patterns = tool_patterns(tool)
            if patterns is None:
                continue
            hits = self._hits(patterns, window[-1], analysis)
            if not hits:
                fired_earlier = any(self._hits(patterns, text, self.analyze(text)) for text in window[:-1])
                if not (fired_earlier and extract(tool, patterns, window[-1:])):
                    continue
            arguments = extract(tool, patterns, window)
            missing = [name for name in tool.parameters.get("required", []) if name not in arguments]
            rank = (not missing, hits, -position)
            if best is None or rank > best[0]:
                best = (rank, tool, arguments, missing)
        return None if best is None else best[1:]

    def _hits(self, patterns: ToolPatterns, text: str, analysis: Analysis) -> int:
        triggers = sum(1 for trigger in patterns.triggers if phrase(trigger).search(text))
        return triggers + sum(1 for intent in patterns.intents if intent in analysis.intents)


def topic(messages: Sequence[ChatMessage]) -> list[str]:
    """The customer's turns since the last tool result: what the next tool call may draw on."""
    texts: list[str] = []
    for message in reversed(messages):
        if message.role == "tool":
            break
        if message.role == "user":
            texts.insert(0, message.content)
    return texts


def tool_patterns(tool: ToolSpec) -> ToolPatterns | None:
    raw = tool.extra.get(PATTERNS_KEY)
    if raw is None:
        return None
    try:
        patterns = msgspec.convert(raw, ToolPatterns)
        for regex in [*patterns.arguments.values(), *map(re.escape, patterns.triggers)]:
            re.compile(regex)
    except (msgspec.ValidationError, re.error) as exc:
        raise ProviderRejected(f"tool {tool.name!r} has invalid {PATTERNS_KEY}: {exc}", provider="offline") from exc
    return patterns


def phrase(trigger: str) -> re.Pattern[str]:
    """A trigger phrase matches at the start of a word, in any case ("order" finds "orders")."""
    return re.compile(r"(?<!\w)" + re.escape(trigger.strip()), re.IGNORECASE)


def extract(tool: ToolSpec, patterns: ToolPatterns, texts: Sequence[str]) -> dict[str, Any]:
    """Each argument from the latest text that has it, typed by the tool's JSON schema."""
    properties = tool.parameters.get("properties", {})
    found: dict[str, Any] = {}
    for name, regex in patterns.arguments.items():
        rule = re.compile(regex)
        for text in reversed(texts):
            match = rule.search(text)
            if match is None:
                continue
            raw = match.group(name) if name in rule.groupindex else match.group(1) if rule.groups else match.group(0)
            value = typed(raw, properties.get(name, {}))
            if value is not None:
                found[name] = value
                break
    return found


def typed(raw: str | None, schema: Mapping[str, Any]) -> Any:
    """``raw`` as the schema's ``integer``, ``number`` or ``boolean``; None when it is not one."""
    if raw is None:
        return None
    try:
        match schema.get("type"):
            case "integer":
                return int(raw)
            case "number":
                return float(raw)
            case "boolean":
                return raw.strip().lower() in {"yes", "true", "y", "1"}
            case _:
                return raw
    except ValueError:
        return None


def result_variables(content: str) -> dict[str, Any]:
    """A tool result's fields when it is a JSON object; always ``result``, the content as it came."""
    try:
        decoded = _JSON.decode(content)
    except msgspec.DecodeError:
        return {"result": content}
    if isinstance(decoded, dict):
        return {"result": content, **decoded}
    return {"result": decoded}


def call_id(position: int, tool: str, arguments: Mapping[str, Any]) -> str:
    """Deterministic: the same conversation asks for the same call with the same id."""
    digest = hashlib.sha256(f"{position}:{tool}:{msgspec.json.encode(arguments).decode()}".encode()).hexdigest()
    return f"call_offline_{digest[:16]}"
