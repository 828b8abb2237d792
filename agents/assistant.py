"""The configuration agent: a client asks for a config change in their own words.

The seed's Client Configuration Portal agent ("Client requests config change via chat -> Agent
classifies -> Shows preview -> Client approves -> Hot-reload applied"):

1. **Classify** (``classify``): the seed's change classification model, keyword rules per change
   type (system prompt, tool, voice parameter, external service, escalation rule), each with its
   confidence threshold and risk. A type's confidence grows with the distinct keywords the request
   uses: ``1 - 0.5 ** (hits + 2)`` (one keyword 0.875, two 0.94, three 0.97).
2. **Propose**: the two-node LangGraph of ``agents.graph`` (agent and tools). The agent node asks
   the model chain (the offline model by default, Anthropic or OpenAI first when their keys are
   set) with the config agent's tools: ``update_system_prompt`` (a tone, instructions, or a whole
   prompt a model wrote), ``add_tool`` and ``remove_tool`` (from the tool catalog: the tool
   definitions of the demo configs, each marked implemented or not by the tool registry),
   ``update_voice_parameters`` and ``add_escalation_keywords``. The tools node applies each call
   to a copy of the config, so every detected change carries its current and proposed value. The
   offline model picks the tools by the ``x-parley-patterns`` declared here, one per clause of the
   request ("make the bot more formal and add the refund tool" is two calls).
3. **Preview**: ``ConfigService.preview`` checks the candidate and gives its risk and each change's;
   a detected change's own risk is that of its part of the diff.
4. **Apply**, when the client confirms ("yes, apply them"): ``ConfigService.create_version``, the
   normal versioning path, written against the version the proposal was made on (a config that
   moved on meanwhile is not overwritten) with a command id derived from the proposal, so a
   repeated confirmation makes one version. A low-risk change applies at once; a medium or high
   one waits for its approvals (``requires_approval``). A confirmation or a refusal of the open
   proposal is read by rules, whichever model answers, like a customer's answer to an offer.

A conversation with the agent (``conversation_id``) is a draft, not a fact: its messages and its
open proposal are kept in Redis for a day (the seed's "conversational state, config draft
cache"), under the tenant and the person who started it; the version it applies is an event.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict

import msgspec
import structlog
import yaml
from langgraph.graph import END, START, StateGraph

from agents.graph import well_formed
from agents.llm.chain import FallbackChain
from agents.llm.factory import ProviderKeys, chain_from_config
from agents.llm.offline import OfflineModel
from agents.llm.port import ChatMessage, ProviderError, ToolCallRequest, ToolSpec
from commands.config import DEMO_CONFIGS, ConfigService, Preview
from domain import bot_changes as rules
from domain import config as a
from domain.bot import PATTERNS_KEY, parse_yaml
from domain.bot_changes import ConfigValue, SeedChangeType
from domain.errors import IllegalStateError, NotFoundError, PermissionDeniedError, ValidationError

log = structlog.get_logger(__name__)

RiskLevel = Literal["low", "medium", "high"]
Status = Literal[
    "proposed",  # changes proposed and previewed: confirm to apply
    "applied",  # a version was made and is live
    "pending_approval",  # a version was made and waits for its approvals
    "awaiting_reload",  # a breaking version, approved, waits for a manual reload
    "unchanged",  # the proposal turned out to be the config as it is
    "cancelled",  # the client declined the open proposal
    "stale",  # the config changed since the proposal: ask again
    "not_permitted",  # the caller may not make these changes
    "invalid",  # the proposal would not be a valid config
    "needs_clarification",  # nothing to change was understood
]
MAX_ROUNDS = 2
SESSION_TTL_SECONDS = 24 * 3600
MAX_HISTORY = 40


# The change classification model ---------------------------------------------------------------


class ChangeTypeRule(msgspec.Struct, frozen=True, kw_only=True):
    keywords: tuple[str, ...]
    confidence_threshold: float
    risk_level: RiskLevel


# The seed's model, its keywords as written plus a few of the same kind ("formal" is a tone).
CHANGE_TYPES: Mapping[SeedChangeType, ChangeTypeRule] = {
    "system_prompt_change": ChangeTypeRule(
        keywords=(
            "tone", "casual", "professional", "friendly", "instructions", "behavior", "personality",
            "formal", "polite", "empathetic", "concise", "friendlier", "warmer", "behaviour", "prompt",
        ),
        confidence_threshold=0.85,
        risk_level="low",
    ),
    "tool_change": ChangeTypeRule(
        keywords=("add tool", "remove tool", "enable", "disable", "refund", "payment", "integration"),
        confidence_threshold=0.90,
        risk_level="medium",
    ),
    "voice_parameter_change": ChangeTypeRule(
        keywords=("speed", "slower", "faster", "clarity", "latency", "voice", "interruption"),
        confidence_threshold=0.88,
        risk_level="low",
    ),
    "external_service_change": ChangeTypeRule(
        keywords=("salesforce", "zendesk", "integration", "connect", "api", "webhook"),
        confidence_threshold=0.92,
        risk_level="high",
    ),
    "escalation_rule_change": ChangeTypeRule(
        keywords=("escalate", "human", "transfer", "handoff", "trigger"),
        confidence_threshold=0.87,
        risk_level="medium",
    ),
}  # fmt: skip


class Classification(msgspec.Struct, frozen=True, kw_only=True):
    """A change type the request reads as, how sure, and the words that said so."""

    type: SeedChangeType
    confidence: float
    confidence_threshold: float
    keywords: list[str]
    risk_level: RiskLevel


def keyword_pattern(keyword: str) -> re.Pattern[str]:
    """A keyword at the start of a word; a two-word one with up to three words between ("add the
    refund tool" says "add tool")."""
    words = keyword.split()
    between = r"\W+(?:\w+\W+){0,3}?"
    return re.compile(r"\b" + between.join(map(re.escape, words)), re.IGNORECASE)


_KEYWORDS = {kind: [(k, keyword_pattern(k)) for k in rule.keywords] for kind, rule in CHANGE_TYPES.items()}


def confidence(hits: int) -> float:
    return round(1 - 0.5 ** (hits + 2), 3) if hits else 0.0


def classify(text: str) -> list[Classification]:
    """The change types ``text`` asks for, most confident first."""
    found = []
    for kind, patterns in _KEYWORDS.items():
        hits = [keyword for keyword, pattern in patterns if pattern.search(text)]
        if hits:
            rule = CHANGE_TYPES[kind]
            found.append(
                Classification(
                    type=kind,
                    confidence=confidence(len(hits)),
                    confidence_threshold=rule.confidence_threshold,
                    keywords=hits,
                    risk_level=rule.risk_level,
                )
            )
    return sorted(found, key=lambda c: -c.confidence)


# The tool catalog ------------------------------------------------------------------------------


class CatalogTool(msgspec.Struct, frozen=True, kw_only=True):
    """A tool definition a config may take, with the reply templates written for it."""

    name: str
    definition: dict[str, ConfigValue]
    templates: dict[str, str]
    implemented: bool  # the tool registry can run it
    source: str  # the config it comes from


_STOP = frozenset("a an the to of for and or tool tools bot it its our my new one that this with".split())


def _words(text: str) -> set[str]:
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in re.findall(r"[a-z0-9]+", text.lower())} - _STOP


class ToolCatalog:
    """The tools a config can be given: those the demo configs define (``agents/configs``)."""

    def __init__(self, tools: Sequence[CatalogTool]) -> None:
        self.tools = {tool.name: tool for tool in tools}

    @classmethod
    def from_configs(cls, directory: Path = DEMO_CONFIGS, *, implemented: frozenset[str] = frozenset()) -> ToolCatalog:
        found: dict[str, CatalogTool] = {}
        for path in sorted(directory.glob("*.yaml")):
            raw = parse_yaml(path.read_text())
            templates = raw.get("templates") or {}
            for tool in raw.get("tools") or []:
                name = tool.get("name")
                if not isinstance(name, str) or name in found:
                    continue
                own = {k: v for k, v in templates.items() if k == name or k.startswith(f"{name}.")}
                found[name] = CatalogTool(
                    name=name, definition=tool, templates=own, implemented=name in implemented, source=path.stem
                )
        return cls(list(found.values()))

    def search(self, query: str) -> CatalogTool | None:
        """The tool a few words name: its name's words count double, its description's once."""
        if query in self.tools:
            return self.tools[query]
        wanted = _words(query.replace("_", " "))
        if not wanted:
            return None
        best, score = None, 0
        for tool in self.tools.values():
            name = _words(tool.name.replace("_", " "))
            description = _words(str(tool.definition.get("description", "")))
            points = sum(2 if word in name else 1 if word in description else 0 for word in wanted)
            if points > score or (points == score and best is not None and tool.implemented and not best.implemented):
                best, score = tool, points
        return best if score >= len(wanted) else None


# What the agent proposes ----------------------------------------------------------------------


class DetectedChange(msgspec.Struct, frozen=True, kw_only=True):
    """One change the agent understood, in the seed's shape: its type and what it does, the
    value now and the value proposed, how sure the classification is, its own risk."""

    type: SeedChangeType
    action: Literal["set", "add", "remove"]
    parameter: str  # the config key it changes: system_prompt, tools, voice_config.model_settings.speed, ...
    field: str | None = None  # what of it: the tone
    tool_name: str | None = None
    tool_status: Literal["implemented", "not_implemented"] | None = None
    current_value: ConfigValue = None
    proposed_value: ConfigValue = None
    confidence: float
    confidence_threshold: float
    risk_level: RiskLevel = "low"
    summary: str


class Proposal(msgspec.Struct, frozen=True, kw_only=True):
    proposal_id: str
    based_on: int  # the version the changes were written against
    yaml_content: str
    commit_message: str
    changes: list[DetectedChange]


class ChatSession(msgspec.Struct, kw_only=True):
    conversation_id: str
    tenant: str
    user_id: str
    config_id: str
    messages: list[ChatMessage] = []
    pending: Proposal | None = None


class AppliedVersion(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    status: str
    active_version: int
    risk_level: str
    approvals_missing: list[str]


class ChatAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's chat answer (``response``, ``detected_changes``, ``preview_url``,
    ``requires_approval``, ``conversation_id``), and what the agent did (``status``), how it read the
    request, its preview, the version it made and the stream position of that version's events."""

    response: str
    detected_changes: list[DetectedChange]
    preview_url: str | None
    requires_approval: bool
    conversation_id: str
    status: Status
    config_id: str
    product_type: str
    classification: list[Classification] = []
    preview: Preview | None = None
    missing_permissions: list[str] = []
    version: AppliedVersion | None = None
    position: int = 0


# The agent's tools -----------------------------------------------------------------------------

TONES: Mapping[str, str] = {
    "formal": "Use a formal, courteous tone: address customers respectfully, in complete sentences, without slang"
    " or emoji.",
    "casual": "Use a casual, relaxed tone, as you would with a friend.",
    "friendly": "Use a warm, friendly tone.",
    "professional": "Use a professional tone: clear, precise and polite.",
    "empathetic": "Be empathetic: acknowledge how the customer feels before solving the problem.",
    "concise": "Keep every reply short and to the point.",
}
TONE_WORDS: Mapping[str, str] = {
    **{tone: tone for tone in TONES},
    "polite": "formal",
    "courteous": "formal",
    "informal": "casual",
    "relaxed": "casual",
    "friendlier": "friendly",
    "warm": "friendly",
    "warmer": "friendly",
    "brief": "concise",
    "shorter": "concise",
    "empathic": "empathetic",
}
_TONE_RE = "|".join(sorted(TONE_WORDS, key=len, reverse=True))


def _spec(name: str, description: str, properties: dict[str, Any], patterns: dict[str, Any], required=()) -> ToolSpec:
    parameters = {"type": "object", "properties": properties, "required": list(required)}
    return ToolSpec(name=name, description=description, parameters=parameters, extra={PATTERNS_KEY: patterns})


TOOLS = [
    _spec(
        "update_system_prompt",
        "Change the bot's system prompt: set its tone, add an instruction, or replace the whole prompt.",
        {
            "tone": {"type": "string", "enum": sorted(TONES), "description": "the tone the bot should take"},
            "instruction": {"type": "string", "description": "a sentence to add to the prompt"},
            "system_prompt": {"type": "string", "description": "the whole new prompt"},
        },
        {
            "triggers": ["tone", *TONE_WORDS, "personality", "system prompt", "instructions", "sound more"],
            "arguments": {"tone": rf"(?i)\b({_TONE_RE})\b"},
        },
    ),
    _spec(
        "add_tool",
        "Give the bot a tool from the catalog, by its name or by what it does (refund, tracking email, ticket...).",
        {"tool": {"type": "string", "description": "the tool's name or a few words saying what it does"}},
        {
            "triggers": ["add", "enable", "attach", "turn on", "give it"],
            "arguments": {
                "tool": r"(?i)\b(?:add|enable|attach|turn on|give it)\s+(?:the\s+|a\s+|an\s+)?([a-z][a-z_ ]{1,40}?)"
                r"\s+(?:tool|capability|function)\b"
            },
        },
        required=["tool"],
    ),
    _spec(
        "remove_tool",
        "Take a tool away from the bot, by its name or by what it does.",
        {"tool": {"type": "string", "description": "the tool's name or a few words saying what it does"}},
        {
            "triggers": ["remove", "disable", "drop", "delete", "turn off"],
            "arguments": {
                "tool": r"(?i)\b(?:remove|disable|drop|delete|turn off)\s+(?:the\s+|a\s+|an\s+)?"
                r"([a-z][a-z_ ]{1,40}?)\s+(?:tool|capability|function)\b"
            },
        },
        required=["tool"],
    ),
    _spec(
        "update_voice_parameters",
        "Change a voicebot's voice: its speed (slower, faster or a number from 0.5 to 2) or its clarity.",
        {
            "parameter": {"type": "string", "enum": ["speed", "clarity_similarity"]},
            "direction": {"type": "string", "enum": ["slower", "faster", "clearer"]},
            "value": {"type": "number"},
        },
        {
            "triggers": ["speed", "slower", "faster", "clarity", "clearer", "speak", "talk"],
            "arguments": {
                "direction": r"(?i)\b(slower|faster|clearer)\b",
                "parameter": r"(?i)\b(speed|clarity)\b",
                "value": r"(?i)\b(?:to|at)\s+(\d+(?:\.\d+)?)\s*x?\b",
            },
        },
    ),
    _spec(
        "add_escalation_keywords",
        "Hand the conversation to a person when the customer uses one of these words or phrases.",
        {"keywords": {"type": "string", "description": "the words or phrases, separated by commas"}},
        {
            "triggers": ["escalate", "hand over", "handoff", "transfer", "human"],
            "arguments": {"keywords": r"(?i)\b(?:mentions?|says?|writes?|uses?|types?)\s+['\"]?([^'\".!?]{2,60})"},
        },
        required=["keywords"],
    ),
]
OFFLINE_TEMPLATES = {
    "fallback": "I can change how the bot sounds (formal, casual, friendly, professional, empathetic, concise),"
    " add or remove its tools, change a voicebot's speed or clarity, or add escalation keywords. What would you"
    " like to change?",
    "general": "Hello! Tell me what to change in this config: its tone, its tools, its voice or when it hands over"
    " to a person.",
    "thanks": "You're welcome! Anything else to change?",
    "add_tool.missing": "Which tool should I add? Name it or say what it does, for example: add the refund tool.",
    "remove_tool.missing": "Which tool should I remove? Name it or say what it does.",
    "add_escalation_keywords.missing": "Which words should hand the conversation to a person? For example: escalate"
    " when the customer mentions a lawyer.",
    "missing_arguments": "Could you tell me the {{missing}}?",
    "tool_result": "{{summary}}",
}
SYSTEM_PROMPT = """You are Parley's configuration assistant. A client asks, in their own words, for a change to \
their {product_type} "{config_id}". Call the tools that make the changes they ask for, one call per change; never \
invent a change they did not ask for. When a request is unclear, ask one short question instead.

The config now:
- system prompt: {system_prompt}
- tools: {tools}
{voice}"""


class ChangeMade(msgspec.Struct, frozen=True, kw_only=True):
    """What one tool call did to the candidate (or why it did nothing)."""

    change: DetectedChange | None = None
    note: str = ""


def _tone_prompt(prompt: str, tone: str) -> str:
    """``prompt`` with the tone's sentence in place of any tone sentence it had."""
    kept = prompt
    for sentence in TONES.values():
        kept = kept.replace(sentence, "")
    return f"{' '.join(kept.split())} {TONES[tone]}".strip()


def update_system_prompt(candidate: dict[str, Any], arguments: Mapping[str, Any]) -> ChangeMade:
    current = str(candidate.get("system_prompt") or "")
    tone = TONE_WORDS.get(str(arguments.get("tone") or "").lower())
    field = None
    if isinstance(arguments.get("system_prompt"), str) and arguments["system_prompt"].strip():
        proposed, summary = arguments["system_prompt"].strip(), "a new system prompt"
    elif tone is not None:
        proposed, summary, field = _tone_prompt(current, tone), f"a {tone} tone", "tone"
    elif isinstance(arguments.get("instruction"), str) and arguments["instruction"].strip():
        proposed, summary = f"{current} {arguments['instruction'].strip()}".strip(), "a new instruction"
    else:
        return ChangeMade(note="say how the bot should sound (formal, casual, friendly...) or what it should do")
    if proposed == current:
        return ChangeMade(note=f"the system prompt already asks for {summary}")
    candidate["system_prompt"] = proposed
    return ChangeMade(
        change=_change(
            "system_prompt_change", "set", "system_prompt", current, proposed, f"System prompt: {summary}", field=field
        )
    )


def add_tool(candidate: dict[str, Any], arguments: Mapping[str, Any], catalog: ToolCatalog) -> ChangeMade:
    query = str(arguments.get("tool") or "").strip()
    found = catalog.search(query)
    if found is None:
        return ChangeMade(note=f"no tool in the catalog does {query!r}; the catalog has {', '.join(catalog.tools)}")
    tools = list(candidate.get("tools") or [])
    names = [str(t.get("name")) for t in tools if isinstance(t, Mapping)]
    if found.name in names:
        return ChangeMade(note=f"the bot already has the {found.name} tool")
    candidate["tools"] = [*tools, found.definition]
    templates = dict(candidate.get("templates") or {})
    for key, text in found.templates.items():
        templates.setdefault(key, text)  # its replies, so the offline model answers its results
    if templates:
        candidate["templates"] = templates
    status: Literal["implemented", "not_implemented"] = "implemented" if found.implemented else "not_implemented"
    summary = f"Add the {found.name} tool ({found.definition.get('description', '').strip()})"
    return ChangeMade(
        change=_change(
            "tool_change", "add", "tools", names, [*names, found.name], summary, tool=found.name, status=status
        )
    )


def remove_tool(candidate: dict[str, Any], arguments: Mapping[str, Any]) -> ChangeMade:
    query = str(arguments.get("tool") or "").strip()
    tools = [t for t in candidate.get("tools") or [] if isinstance(t, Mapping)]
    names = [str(t.get("name")) for t in tools]
    own = ToolCatalog(
        [
            CatalogTool(name=n, definition=dict(t), templates={}, implemented=True, source="")
            for n, t in zip(names, tools, strict=True)
        ]
    )
    found = own.search(query)
    if found is None:
        return ChangeMade(note=f"the bot has no tool that does {query!r}; it has {', '.join(names) or 'none'}")
    candidate["tools"] = [t for t in tools if t.get("name") != found.name]
    templates = candidate.get("templates") or {}
    candidate["templates"] = {
        k: v for k, v in templates.items() if k != found.name and not k.startswith(f"{found.name}.")
    }
    rest = [n for n in names if n != found.name]
    return ChangeMade(
        change=_change("tool_change", "remove", "tools", names, rest, f"Remove the {found.name} tool", tool=found.name)
    )


def update_voice_parameters(candidate: dict[str, Any], arguments: Mapping[str, Any]) -> ChangeMade:
    if candidate.get("product_type") != "voicebot":
        return ChangeMade(note="a chatbot has no voice to change")
    direction = str(arguments.get("direction") or "").lower()
    parameter = str(arguments.get("parameter") or "").lower()
    parameter = "clarity_similarity" if parameter.startswith("clarity") or direction == "clearer" else "speed"
    voice = dict(candidate.get("voice_config") or {})
    settings = dict(voice.get("model_settings") or {})
    current = float(settings.get(parameter, 1.0 if parameter == "speed" else 0.75))
    value = arguments.get("value")
    if isinstance(value, int | float) and not isinstance(value, bool):
        proposed = float(value)
    elif direction in ("slower", "faster"):
        proposed = round(max(0.5, min(2.0, current + (-0.2 if direction == "slower" else 0.2))), 2)
    elif direction == "clearer":
        proposed = round(min(1.0, current + 0.1), 2)
    else:
        return ChangeMade(note="say slower, faster, clearer, or the value to set")
    if proposed == current:
        return ChangeMade(note=f"the {parameter.replace('_', ' ')} is {current} already")
    settings[parameter] = proposed
    voice["model_settings"] = settings
    candidate["voice_config"] = voice
    summary = f"Voice {parameter.replace('_', ' ')} from {current} to {proposed}"
    path = f"voice_config.model_settings.{parameter}"
    return ChangeMade(
        change=_change("voice_parameter_change", "set", path, current, proposed, summary, field=parameter)
    )


def add_escalation_keywords(candidate: dict[str, Any], arguments: Mapping[str, Any]) -> ChangeMade:
    said = re.split(r",|\bor\b|\band\b", str(arguments.get("keywords") or ""))
    words = [w.strip(" '\"").lower() for w in said if w.strip(" '\"")]
    words = [re.sub(r"^(?:a|an|the)\s+", "", w) for w in words]
    if not words:
        return ChangeMade(note="say which words should hand the conversation to a person")
    rules_ = [dict(r) for r in candidate.get("escalation_rules") or [] if isinstance(r, Mapping)]
    rule = next((r for r in rules_ if r.get("trigger") == "urgent_keywords"), None)
    current = list(rule.get("keywords") or []) if rule else []
    proposed = [*current, *(w for w in words if w not in current)]
    if proposed == current:
        return ChangeMade(note="those words hand over to a person already")
    if rule is None:
        rules_.append({"trigger": "urgent_keywords", "keywords": proposed, "action": "human_handoff"})
    else:
        rule["keywords"] = proposed
    candidate["escalation_rules"] = rules_
    summary = f"Hand over to a person on: {', '.join(words)}"
    return ChangeMade(
        change=_change(
            "escalation_rule_change", "add", "escalation_rules", current, proposed, summary, field="keywords"
        )
    )


def _change(
    kind: SeedChangeType,
    action: Literal["set", "add", "remove"],
    parameter: str,
    current: ConfigValue,
    proposed: ConfigValue,
    summary: str,
    *,
    field: str | None = None,
    tool: str | None = None,
    status: Literal["implemented", "not_implemented"] | None = None,
) -> DetectedChange:
    rule = CHANGE_TYPES[kind]
    return DetectedChange(
        type=kind,
        action=action,
        parameter=parameter,
        field=field,
        tool_name=tool,
        tool_status=status,
        current_value=current,
        proposed_value=proposed,
        confidence=0.0,
        confidence_threshold=rule.confidence_threshold,
        risk_level=rule.risk_level,
        summary=summary,
    )


# The graph -------------------------------------------------------------------------------------


class ConfigurationAgentState(TypedDict):
    """The seed's ``ConfigurationAgentState``, JSON-ready, and the turn's working parts."""

    messages: list[dict[str, Any]]
    config_id: str
    organization_id: str
    product_type: str
    current_config: dict[str, Any]
    detected_changes: list[dict[str, Any]]
    classification_confidence: float
    preview_generated: bool
    approval_status: str  # pending | approved | rejected
    conversation_id: str
    candidate: dict[str, Any]  # the current config with the changes so far
    notes: list[str]  # what a tool could not do, and why
    pending: list[dict[str, Any]]  # tool calls the model asked for, not yet run
    rounds: int
    reply: str


class Understood(msgspec.Struct, frozen=True, kw_only=True):
    """What the agent made of one request."""

    changes: list[DetectedChange]
    candidate: dict[str, ConfigValue]
    classification: list[Classification]
    notes: list[str]
    reply: str  # the model's own words (used when it changed nothing)
    messages: list[ChatMessage]  # this turn's messages: the request, tool exchanges, the reply


class ConfigAgent:
    """The two-node graph, compiled once for its chain and catalog."""

    def __init__(self, chain: FallbackChain, catalog: ToolCatalog) -> None:
        self.chain = chain
        self.catalog = catalog
        self.graph = self._build()

    def _build(self) -> Any:
        chain, catalog = self.chain, self.catalog

        async def agent(state: ConfigurationAgentState) -> dict[str, Any]:
            messages = msgspec.convert(state["messages"], list[ChatMessage])
            offer = TOOLS if state["rounds"] < MAX_ROUNDS else []
            try:
                answer = await chain.complete(well_formed(messages), system=_system(state), tools=offer)
            except ProviderError as exc:
                log.error("config_agent.llm_failed", code=exc.code, provider=exc.provider)
                return {"reply": "Sorry, I can't think right now. Please try again in a moment.", "pending": []}
            completion = answer.completion
            if completion.tool_calls and offer:
                asked = ChatMessage("assistant", completion.text, tool_calls=completion.tool_calls)
                return {
                    "messages": [*state["messages"], msgspec.to_builtins(asked)],
                    "pending": [msgspec.to_builtins(call) for call in completion.tool_calls],
                    "rounds": state["rounds"] + 1,
                }
            reply = completion.text.strip()
            final = ChatMessage("assistant", reply)
            return {"reply": reply, "pending": [], "messages": [*state["messages"], msgspec.to_builtins(final)]}

        async def tools(state: ConfigurationAgentState) -> dict[str, Any]:
            candidate = msgspec.json.decode(msgspec.json.encode(state["candidate"]))  # a copy to change
            messages, changes, notes = list(state["messages"]), list(state["detected_changes"]), list(state["notes"])
            for request in msgspec.convert(state["pending"], list[ToolCallRequest]):
                made = run_tool(request.name, request.arguments, candidate, catalog)
                if made.change is not None:
                    changes.append(msgspec.to_builtins(made.change))
                    result = {"done": True, "summary": made.change.summary}
                else:
                    notes.append(made.note)
                    result = {"done": False, "summary": made.note}
                reply = ChatMessage(
                    "tool", msgspec.json.encode(result).decode(), tool_call_id=request.id, name=request.name
                )
                messages.append(msgspec.to_builtins(reply))
            return {
                "messages": messages,
                "candidate": candidate,
                "detected_changes": changes,
                "notes": notes,
                "pending": [],
                "preview_generated": False,
            }

        def route(state: ConfigurationAgentState) -> str:
            return "tools" if state["pending"] else END

        graph = StateGraph(ConfigurationAgentState)
        graph.add_node("agent", agent)
        graph.add_node("tools", tools)
        graph.add_edge(START, "agent")
        graph.add_conditional_edges("agent", route, {"tools": "tools", END: END})
        graph.add_edge("tools", "agent")
        return graph.compile()

    async def understand(
        self,
        *,
        tenant: str,
        config_id: str,
        conversation_id: str,
        current: Mapping[str, Any],
        history: Sequence[ChatMessage],
        message: str,
    ) -> Understood:
        past = well_formed(list(history))
        state: ConfigurationAgentState = {
            "messages": [msgspec.to_builtins(m) for m in [*past, ChatMessage("user", message)]],
            "config_id": config_id,
            "organization_id": tenant,
            "product_type": str(current.get("product_type", "")),
            "current_config": dict(current),
            "detected_changes": [],
            "classification_confidence": 0.0,
            "preview_generated": False,
            "approval_status": "pending",
            "conversation_id": conversation_id,
            "candidate": dict(current),
            "notes": [],
            "pending": [],
            "rounds": 0,
            "reply": "",
        }
        final = await self.graph.ainvoke(state, config={"recursion_limit": 4 * MAX_ROUNDS + 4})
        classification = classify(message)
        by_type = {c.type: c for c in classification}
        changes = []
        for change in msgspec.convert(final["detected_changes"], list[DetectedChange]):
            found = by_type.get(change.type)
            changes.append(msgspec.structs.replace(change, confidence=found.confidence if found else 0.5))
        return Understood(
            changes=changes,
            candidate=final["candidate"],
            classification=classification,
            notes=final["notes"],
            reply=final["reply"],
            messages=msgspec.convert(final["messages"][len(past) :], list[ChatMessage]),
        )


def run_tool(name: str, arguments: Mapping[str, Any], candidate: dict[str, Any], catalog: ToolCatalog) -> ChangeMade:
    match name:
        case "update_system_prompt":
            return update_system_prompt(candidate, arguments)
        case "add_tool":
            return add_tool(candidate, arguments, catalog)
        case "remove_tool":
            return remove_tool(candidate, arguments)
        case "update_voice_parameters":
            return update_voice_parameters(candidate, arguments)
        case "add_escalation_keywords":
            return add_escalation_keywords(candidate, arguments)
    return ChangeMade(note=f"there is no {name!r} tool")


def _system(state: ConfigurationAgentState) -> str:
    current = state["current_config"]
    tools = ", ".join(str(t.get("name")) for t in current.get("tools") or [] if isinstance(t, Mapping)) or "none"
    voice = ""
    if isinstance(current.get("voice_config"), Mapping):
        voice = f"- voice: {msgspec.json.encode(current['voice_config']).decode()}\n"
    return SYSTEM_PROMPT.format(
        product_type=state["product_type"],
        config_id=state["config_id"],
        system_prompt=current.get("system_prompt", ""),
        tools=tools,
        voice=voice,
    )


def config_agent_chain(keys: ProviderKeys | Mapping[str, str], *, timeout: float = 20.0) -> FallbackChain:
    """The providers that have keys, the offline model (with the config agent's wording) last."""
    offline = OfflineModel(templates=OFFLINE_TEMPLATES, human_patterns=[r"a\Ab"])  # never: nobody asks it for a human
    return chain_from_config(["anthropic", "openai", "offline"], keys, timeout=timeout, offline=offline)


# Conversations with the agent ------------------------------------------------------------------


class Sessions(Protocol):
    """Where conversations with the agent are kept between requests (``RedisSessions``)."""

    async def load(self, tenant: str, conversation_id: str) -> ChatSession | None: ...

    async def save(self, session: ChatSession) -> None: ...


class RedisSessions:
    """Each conversation as one JSON document in Redis, for ``ttl`` seconds after its last message."""

    def __init__(self, redis: Any, namespace: str, *, ttl: int = SESSION_TTL_SECONDS) -> None:
        self.redis = redis
        self.namespace = namespace
        self.ttl = ttl

    def _key(self, tenant: str, conversation_id: str) -> str:
        return f"cfgchat:{self.namespace}:{tenant}:{conversation_id}"

    async def load(self, tenant: str, conversation_id: str) -> ChatSession | None:
        raw = await self.redis.get(self._key(tenant, conversation_id))
        return None if raw is None else _SESSION.decode(raw)

    async def save(self, session: ChatSession) -> None:
        await self.redis.set(self._key(session.tenant, session.conversation_id), _ENCODE(session), ex=self.ttl)


_SESSION = msgspec.json.Decoder(ChatSession)
_ENCODE = msgspec.json.Encoder().encode

CONFIRM = re.compile(
    r"^\W*(?:yes|yep|yeah|sure|ok(?:ay)?|apply|go ahead|do it|confirm|sounds good|looks good|please do|ship it)\b"
    r"|\bapply (?:them|these|it|this|the(?: proposed)? changes?|those)\b",
    re.IGNORECASE,
)
DECLINE = re.compile(
    r"^\W*(?:no|nope|cancel|don'?t|do not|stop|never ?mind|discard|forget it)\b|\b(?:don'?t|do not) apply\b",
    re.IGNORECASE,
)


def answer_to_proposal(message: str) -> Literal["confirmed", "declined"] | None:
    """A client's answer to the open proposal, read by rules whichever model answers."""
    if DECLINE.search(message):
        return "declined"
    if CONFIRM.search(message):
        return "confirmed"
    return None


class ConfigChat:
    """The seed's ``POST /client-config/chat`` use case (see the module)."""

    def __init__(self, configs: ConfigService, agent: ConfigAgent, sessions: Sessions) -> None:
        self.configs = configs
        self.agent = agent
        self.sessions = sessions

    async def chat(
        self,
        tenant: str,
        caller: a.Caller,
        *,
        config_id: str,
        message: str,
        conversation_id: str | None = None,
        product_type: str | None = None,
    ) -> ChatAnswer:
        if "view_config" not in caller.granted:
            raise PermissionDeniedError("needs the permission: view_config", missing=["view_config"])
        state = await self.configs.catalog.state(tenant, config_id)
        if product_type is not None and product_type != state.product_type:
            raise ValidationError(
                f"config {config_id} is a {state.product_type}",
                fields={"product_type": f"must be {state.product_type}"},
            )
        session = await self._session(tenant, caller, config_id, conversation_id)
        base = state.active or state.latest
        said = ChatMessage("user", message)
        if session.pending is not None:
            match answer_to_proposal(message):
                case "confirmed":
                    return await self._apply(tenant, caller, state, session, said)
                case "declined" if not classify(message):
                    session.pending = None
                    text = "All right, I won't change anything. What else would you like to change?"
                    return await self._answer(session, state, said, text, status="cancelled")
                # "no, make it casual instead": the open proposal goes, the new request is read below
        current = parse_yaml(state.version(base).yaml_content)
        understood = await self.agent.understand(
            tenant=tenant,
            config_id=config_id,
            conversation_id=session.conversation_id,
            current=current,
            history=session.messages,
            message=message,
        )
        turn = understood.messages
        if turn and turn[-1].role == "assistant" and not turn[-1].tool_calls:
            turn = turn[:-1]  # the model's last words: the answer below says it (or says more)
        session.messages = [*session.messages, *turn]
        session.pending = None
        if not understood.changes:
            text = understood.reply or OFFLINE_TEMPLATES["fallback"]
            if understood.notes:
                text = f"I couldn't make that change: {'; '.join(understood.notes)}."
            return await self._answer(
                session, state, None, text, status="needs_clarification", classification=understood.classification
            )
        return await self._propose(tenant, caller, state, session, base, current, understood)

    async def _session(self, tenant: str, caller: a.Caller, config_id: str, conversation_id: str | None) -> ChatSession:
        conversation_id = conversation_id or str(uuid.uuid4())
        session = await self.sessions.load(tenant, conversation_id)
        if session is None:
            return ChatSession(
                conversation_id=conversation_id, tenant=tenant, user_id=caller.user_id, config_id=config_id
            )
        if session.user_id != caller.user_id:
            raise NotFoundError(f"conversation {conversation_id} not found")
        if session.config_id != config_id:
            raise ValidationError(
                f"conversation {conversation_id} is about config {session.config_id}",
                fields={"config_id": f"must be {session.config_id} in this conversation"},
            )
        return session

    async def _propose(
        self,
        tenant: str,
        caller: a.Caller,
        state: a.AgentConfigState,
        session: ChatSession,
        base: int,
        current: Mapping[str, Any],
        understood: Understood,
    ) -> ChatAnswer:
        text = yaml.safe_dump(understood.candidate, sort_keys=False, allow_unicode=True)
        try:
            preview = await self.configs.preview(tenant, state.config_id, yaml_content=text, changes=None, scenarios=[])
        except ValidationError as e:
            problems = "; ".join(f"{field}: {why}" for field, why in e.fields.items()) or e.message
            return await self._answer(
                session,
                state,
                None,
                f"I can't propose that: the config would not be valid ({problems}).",
                status="invalid",
                changes=understood.changes,
                classification=understood.classification,
            )
        changes = [self._own_risk(change, preview) for change in understood.changes]
        missing = sorted(self.configs.assess(current, understood.candidate).required - caller.granted)
        requires_approval = preview.risk_assessment.risk_level != "low"
        if missing:
            reply = _proposal_text(changes, understood.notes, requires_approval, missing=missing)
            return await self._answer(
                session,
                state,
                None,
                reply,
                status="not_permitted",
                changes=changes,
                classification=understood.classification,
                preview=preview,
                missing=missing,
                requires_approval=requires_approval,
            )
        session.pending = Proposal(
            proposal_id=uuid.uuid4().hex,
            based_on=base,
            yaml_content=text,
            commit_message=_commit_message(changes),
            changes=changes,
        )
        reply = _proposal_text(changes, understood.notes, requires_approval)
        return await self._answer(
            session,
            state,
            None,
            reply,
            status="proposed",
            changes=changes,
            classification=understood.classification,
            preview=preview,
            requires_approval=requires_approval,
        )

    @staticmethod
    def _own_risk(change: DetectedChange, preview: Preview) -> DetectedChange:
        """The change's own risk: the highest of its part of the preview's diff."""
        top = change.parameter.split(".")[0]

        def mine(path: str, item: str | None) -> bool:
            if top == "tools":
                name = change.tool_name or ""
                return (path == "tools" and item == name) or path.startswith(f"tools.{name}.")
            if top == "voice_config":
                return path == change.parameter
            return path == top or path.startswith(f"{top}.")

        levels = [c.risk_level for c in preview.change_risks if mine(c.path, c.item)]
        if not levels:
            return change
        return msgspec.structs.replace(change, risk_level=max(levels, key=rules.RISK_LEVELS.index))

    async def _apply(
        self, tenant: str, caller: a.Caller, state: a.AgentConfigState, session: ChatSession, said: ChatMessage
    ) -> ChatAnswer:
        proposal = session.pending
        assert proposal is not None
        session.pending = None
        try:
            written = await self.configs.create_version(
                tenant,
                state.config_id,
                proposal.yaml_content,
                caller,
                commit_message=proposal.commit_message,
                author_type="ai_agent",
                based_on=proposal.based_on,
                command_id=f"config-chat-{session.conversation_id}-{proposal.proposal_id}",
            )
        except IllegalStateError as e:
            if "written against" not in e.message:
                raise
            text = (
                "The config changed since I proposed this, so I haven't applied it. Ask me again and I'll start"
                " from its current version."
            )
            return await self._answer(session, state, said, text, status="stale", changes=proposal.changes)
        outcome = written.outcome
        version = outcome.state.version(written.version)
        applied = AppliedVersion(
            version=version.version,
            status=version.status,
            active_version=outcome.state.active,
            risk_level=version.risk_level,
            approvals_missing=list(version.approvals_missing),
        )
        if not written.created:
            status: Status = "unchanged"
            text = f"Nothing to apply: v{version.version} is already like that."
        elif version.status == "active":
            status, text = "applied", f"Done: v{version.version} is live. New conversations start on it now."
        elif version.status == "pending_approval":
            waiting = " and ".join(ROLE_NAMES.get(r, r) for r in version.approvals_missing)
            status = "pending_approval"
            text = (
                f"Saved as v{version.version}. It is {version.risk_level} risk, so it goes live once {waiting}"
                " approves it."
            )
        else:
            status = "awaiting_reload"
            text = f"Saved as v{version.version}. It is breaking, so it waits for a manual reload."
        return await self._answer(
            session,
            state,
            said,
            text,
            status=status,
            changes=proposal.changes,
            requires_approval=bool(version.approvals_missing),
            version=applied,
            preview_url=f"/console/configs/{state.config_id}/compare?a={proposal.based_on}&b={version.version}",
            position=outcome.position,
        )

    async def _answer(
        self,
        session: ChatSession,
        state: a.AgentConfigState,
        said: ChatMessage | None,
        text: str,
        *,
        status: Status,
        changes: list[DetectedChange] | None = None,
        classification: list[Classification] | None = None,
        preview: Preview | None = None,
        missing: list[str] | None = None,
        requires_approval: bool = False,
        version: AppliedVersion | None = None,
        preview_url: str | None = None,
        position: int = 0,
    ) -> ChatAnswer:
        """Record the turn in the conversation and answer it."""
        turn = [said] if said is not None else []
        session.messages = [*session.messages, *turn, ChatMessage("assistant", text)][-MAX_HISTORY:]
        await self.sessions.save(session)
        log.info(
            "config_agent.turn",
            config_id=state.config_id,
            conversation_id=session.conversation_id,
            status=status,
            changes=[c.type for c in changes or []],
        )
        return ChatAnswer(
            response=text,
            detected_changes=changes or [],
            preview_url=preview_url,
            requires_approval=requires_approval,
            conversation_id=session.conversation_id,
            status=status,
            config_id=state.config_id,
            product_type=state.product_type,
            classification=classification or [],
            preview=preview,
            missing_permissions=missing or [],
            version=version,
            position=position,
        )


ROLE_NAMES = {a.ADMIN: "an organization admin", a.ENGINEER: "a platform engineer"}


def _commit_message(changes: Sequence[DetectedChange]) -> str:
    return "Configuration assistant: " + "; ".join(change.summary for change in changes)


def _shown(value: ConfigValue) -> str:
    if isinstance(value, str):
        return value if len(value) <= 400 else f"{value[:400]}…"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _proposal_text(
    changes: Sequence[DetectedChange], notes: Sequence[str], requires_approval: bool, *, missing: Sequence[str] = ()
) -> str:
    count = {1: "one change", 2: "two changes", 3: "three changes"}.get(len(changes), f"{len(changes)} changes")
    lines = [f"I'll help you with that. I've detected {count}:", ""]
    for number, change in enumerate(changes, 1):
        lines.append(f"{number}. **{change.summary}** ({change.type}, {change.risk_level} risk)")
        if change.type == "tool_change" and change.action == "add":
            status = "implemented and ready" if change.tool_status == "implemented" else "not implemented yet"
            lines.append(f"   - Found '{change.tool_name}' in our catalog: {status}")
        else:
            lines.append(f"   - Current: {_shown(change.current_value)}")
            lines.append(f"   - Proposed: {_shown(change.proposed_value)}")
        if change.confidence < change.confidence_threshold:
            lines.append(f"   - I'm not fully sure this is what you meant ({change.confidence:.0%} confident).")
    if notes:
        lines += ["", f"I couldn't do everything: {'; '.join(notes)}."]
    lines.append("")
    if missing:
        lines.append(f"You can't make these changes yourself: they need {', '.join(missing)}.")
    else:
        if requires_approval:
            lines.append("Once applied, an approver must accept it before it goes live.")
        lines.append("Would you like me to apply these changes?")
    return "\n".join(lines)
