"""An agent's YAML config: parsed into frozen msgspec structs, checked rule by rule.

``load_config(text)`` returns an ``AgentConfig`` or raises ``ValidationError`` whose ``fields`` map
each bad field path to its reason and whose ``issues`` list every finding as
``{field, message, severity}`` (warnings included). ``validate_config(raw)`` gives the findings
without raising; ``validation_report`` shapes them as the seed's validate endpoint does.
``config_json_schema()`` is the same format as JSON Schema: the ranges and enums live on the
struct fields (``msgspec.Meta``) and the validator reads them from there, so the two agree.
``config_digest`` names a config's content, for version pinning and caches.

The product rules (seed 004, the Schema Validator Agent): ``product_type`` is chatbot or voicebot;
every config has ``system_prompt``, ``tools`` and ``escalation_rules``; a chatbot carries
``external_integrations`` (a list, possibly empty) and no ``voice_config``; a voicebot carries no
``external_integrations`` and may carry a ``voice_config``. A key set to null counts as absent.

The seed's own spellings are read as their canonical form before any rule runs (``normalize``):
an escalation action such as ``human_transfer`` (the seed's voicebot) is ``human_handoff``; a
``user_frustrated`` rule without a threshold gets ``DEFAULT_FRUSTRATION_THRESHOLD``; a tool whose
``parameters`` are elided (``{...}``, as the seed writes them) takes no declared parameters (a
warning says so), and a parameters schema without a ``type`` is an object schema. The stored YAML
keeps what its author wrote; the loaded config and its canonical document are the normal form.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect as mi
import yaml

from domain.bot_changes import compare
from domain.errors import ValidationError
from domain.patterns import pattern_problem

SCHEMA_VERSION = "1.0"
ProductType = Literal["chatbot", "voicebot"]
OnFailure = Literal["fallback", "escalate"]
Trigger = Literal["user_frustrated", "urgent_keywords", "explicit_request", "repeated_tool_failure", "negative_turns"]
Action = Literal["human_handoff", "flag"]
# Other names the seed and common practice give the two actions (the seed's voicebot: human_transfer).
ACTION_ALIASES: dict[str, Action] = {
    "human_transfer": "human_handoff",
    "transfer_to_human": "human_handoff",
    "transfer": "human_handoff",
    "handoff": "human_handoff",
    "human_escalation": "human_handoff",
    "escalate": "human_handoff",
    "flag_for_review": "flag",
}
# The seed names no threshold for user_frustrated; sentiment (-1 to 1) below this is frustrated.
DEFAULT_FRUSTRATION_THRESHOLD = -0.5
ELIDED = "..."  # the seed's ``parameters: {...}``: YAML reads it as ``{"...": None}``
Urgency = Literal["low", "medium", "high", "urgent"]
Severity = Literal["error", "warning"]
BackgroundSoundType = Literal["office", "cafe", "silence", "custom"]

TRIGGERS: tuple[str, ...] = Trigger.__args__  # type: ignore[attr-defined]
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_TOOL_NAME = 64
SCHEMA_TYPES = {"object", "string", "integer", "number", "boolean", "array", "null"}
DEFAULT_URGENCY: dict[str, Urgency] = {
    "user_frustrated": "medium",
    "urgent_keywords": "high",
    "explicit_request": "medium",
    "repeated_tool_failure": "high",
    "negative_turns": "medium",
    "tool_failure": "high",
}

# The language-model providers a config may name, in the order of a chain's default preference.
KNOWN_PROVIDERS: tuple[str, ...] = ("anthropic", "openai", "offline")

# The constrained scalars: each is the JSON schema's bound and the validator's rule at once.
ToolName = Annotated[str, msgspec.Meta(pattern=SNAKE_CASE.pattern, max_length=MAX_TOOL_NAME)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=300)]
Sentiment = Annotated[float, msgspec.Meta(ge=-1, le=1)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
Unit = Annotated[float, msgspec.Meta(ge=0, le=1)]
Provider = Annotated[str, msgspec.Meta(extra_json_schema={"enum": list(KNOWN_PROVIDERS)})]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")]


# The offline model's instructions for a tool, kept in the tool's YAML under this key.
PATTERNS_KEY = "x-parley-patterns"


class ToolPatterns(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tool's ``x-parley-patterns`` block."""

    intents: list[str] = []
    triggers: list[str] = []
    arguments: dict[str, str] = {}
    default_for: list[str] = []


class ToolDefinition(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: ToolName
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    patterns: ToolPatterns | None = msgspec.field(default=None, name=PATTERNS_KEY)
    timeout_seconds: Seconds = 30.0
    on_failure: OnFailure = "fallback"


class ExternalIntegration(msgspec.Struct, frozen=True, kw_only=True):
    type: Annotated[str, msgspec.Meta(min_length=1)]
    credentials_ref: str = ""
    enabled: bool = True


class EscalationRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``threshold``: sentiment below it is frustrated/negative. ``count``: failures. ``turns``: negative turns."""

    trigger: Trigger
    action: Action = "human_handoff"
    threshold: Sentiment | None = None
    keywords: list[str] = []
    count: AtLeastOne | None = None
    turns: AtLeastOne | None = None
    urgency: Urgency | None = None
    message: str | None = None

    @property
    def level(self) -> Urgency:
        return self.urgency or DEFAULT_URGENCY[self.trigger]


class CrossSellWhen(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every condition given must hold: the turn's intent, one of the keywords, a tool that succeeded."""

    intent: str | None = None
    keywords: list[str] = []
    tool: str | None = None


class CrossSellRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An offer: made in the reply when ``when`` holds, at most once a conversation. ``accept_tool``
    names a declared tool run when the customer accepts (``product`` and what the conversation
    knows fill its arguments)."""

    when: CrossSellWhen
    product: str
    suggestion: str
    confidence: Unit = 0.5
    accept_tool: str | None = None


class LLMSettings(msgspec.Struct, frozen=True, kw_only=True):
    providers: Annotated[list[Provider], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["offline"]
    )
    timeout_seconds: float = 30.0


# -- the voicebot's voice (seed 004: the voicebot YAML and the VoicebotConfigPanel's sliders) ----


class BackgroundSound(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``custom_url`` is required when ``type`` is custom."""

    type: BackgroundSoundType = "office"
    custom_url: HttpUrl | None = None


class ModelSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: str | None = None
    clarity_similarity: Unit = 0.75
    speed: Annotated[float, msgspec.Meta(ge=0, le=2)] = 1.0
    style_exaggeration: Unit = 0.0
    optimize_streaming_latency: Annotated[int, msgspec.Meta(ge=0, le=4)] = 4
    use_speaker_boost: bool = True
    auto_mode: bool = False


class StopSpeakingPlan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When the caller talks over the bot: after this many words or seconds of voice, it stops, and
    waits ``back_off_seconds`` before speaking again."""

    number_of_words: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    voice_seconds: Unit = 0.5
    back_off_seconds: Annotated[float, msgspec.Meta(ge=0, le=10)] = 2.0


class IvrOption(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A key of an IVR menu, and what pressing it does: exactly one of ``say`` (the caller's request,
    as if spoken: the agent answers it), ``menu`` (another menu's name) or ``transfer`` (a human)."""

    digit: Annotated[str, msgspec.Meta(pattern=r"^[0-9*#]$")]
    label: str = ""
    say: str = ""
    menu: str | None = None
    transfer: bool = False


class IvrMenu(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A keypad menu a call plays (the first of ``ivr_menus`` when the call is answered)."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_-]{1,40}$")]
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    options: Annotated[list[IvrOption], msgspec.Meta(min_length=1, max_length=12)]


class VoiceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    stt_provider: str = "deepgram"
    tts_provider: str = "elevenlabs"
    voice_id: str = ""  # empty: the TTS provider's default voice
    turn_detection_threshold_ms: Annotated[int, msgspec.Meta(gt=0)] = 300
    background_sound: BackgroundSound = msgspec.field(default_factory=BackgroundSound)
    input_min_characters: Annotated[int, msgspec.Meta(ge=10, le=100)] = 10
    punctuation_boundaries: list[str] = msgspec.field(default_factory=lambda: [".", "!", "?", "..."])
    model_settings: ModelSettings = msgspec.field(default_factory=ModelSettings)
    max_tokens: Annotated[int, msgspec.Meta(gt=0)] = 150
    stop_speaking_plan: StopSpeakingPlan = msgspec.field(default_factory=StopSpeakingPlan)
    ivr_menus: list[IvrMenu] = []  # keypad menus; the first plays when a call is answered


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    product_type: ProductType
    system_prompt: Annotated[str, msgspec.Meta(min_length=1)]
    tools: list[ToolDefinition]
    escalation_rules: list[EscalationRule]
    name: str = ""
    external_integrations: list[ExternalIntegration] | None = None  # chatbot: required; voicebot: absent
    voice_config: VoiceConfig | None = None  # voicebot only
    templates: dict[str, str] = {}
    intents: dict[str, list[str]] = {}
    cross_sell: list[CrossSellRule] = []
    llm: LLMSettings = msgspec.field(default_factory=LLMSettings)
    max_tool_rounds: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3

    def tool(self, name: str) -> ToolDefinition | None:
        return next((tool for tool in self.tools if tool.name == name), None)


class Issue(msgspec.Struct, frozen=True):
    field: str
    message: str
    severity: Severity = "error"


class ValidationReport(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's ``POST /configs/validate`` answer."""

    valid: bool
    errors: list[Issue]
    warnings: list[Issue]
    schema_version: str = SCHEMA_VERSION
    breaking_change_detected: bool = False
    product_type: str | None = None


# -- loading -------------------------------------------------------------------------------------


def parse_yaml(text: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError(
            "agent config is not valid YAML",
            fields={"$": str(exc)},
            issues=[msgspec.to_builtins(Issue("$", f"invalid YAML: {exc}"))],
        ) from exc
    if not isinstance(raw, dict):
        raise ValidationError(
            "agent config must be a mapping",
            fields={"$": "expected a mapping at the top level"},
            issues=[msgspec.to_builtins(Issue("$", "expected a mapping at the top level"))],
        )
    return raw


def load_config(text: str) -> AgentConfig:
    """Parse and validate a YAML agent config; ``ValidationError`` lists every error."""
    return config_from_mapping(parse_yaml(text))


def config_from_mapping(raw: Mapping[str, Any]) -> AgentConfig:
    issues = validate_config(raw)
    errors = [issue for issue in issues if issue.severity == "error"]
    if errors:
        raise ValidationError(
            f"agent config has {len(errors)} error(s)",
            fields={issue.field: issue.message for issue in errors},
            issues=[msgspec.to_builtins(issue) for issue in issues],
        )
    try:
        return msgspec.convert(normalize(raw), AgentConfig)
    except msgspec.ValidationError as exc:  # a shape the rules below did not anticipate
        field, message = _msgspec_issue(str(exc))
        raise ValidationError(
            "agent config has 1 error(s)",
            fields={field: message},
            issues=[msgspec.to_builtins(Issue(field, message))],
        ) from exc


def config_document(config: AgentConfig) -> dict[str, Any]:
    """The config's canonical form: every default filled in, nulls for absent optional sections."""
    document: dict[str, Any] = msgspec.to_builtins(config)
    return document


def config_digest(config: AgentConfig) -> str:
    """sha256 of the config's canonical JSON: equal configs, equal digests."""
    return hashlib.sha256(msgspec.json.encode(config_document(config), order="sorted")).hexdigest()


def validation_report(
    raw: Mapping[str, Any],
    *,
    implemented_tools: Collection[str] | None = None,
    previous: AgentConfig | None = None,
) -> ValidationReport:
    """``validate_config`` as the seed's validate endpoint answers; with ``previous`` (the version
    this one would replace) it also says whether the change is breaking."""
    issues = validate_config(raw, implemented_tools=implemented_tools)
    raw = normalize(raw)
    errors = [issue for issue in issues if issue.severity == "error"]
    breaking = False
    if not errors:
        try:
            config = msgspec.convert(raw, AgentConfig)
        except msgspec.ValidationError as exc:  # a shape the rules did not anticipate
            errors.append(Issue(*_msgspec_issue(str(exc))))
        else:
            breaking = previous is not None and compare(config_document(previous), config_document(config)).breaking
    product = raw.get("product_type")
    return ValidationReport(
        valid=not errors,
        errors=errors,
        warnings=[issue for issue in issues if issue.severity == "warning"],
        breaking_change_detected=breaking,
        product_type=product if product in ("chatbot", "voicebot") else None,
    )


def config_json_schema() -> dict[str, Any]:
    """The config format as a JSON Schema (2020-12): shapes, required keys, ranges, enums and the
    product rules. Cross-references (template placeholders, regexes, cross-sell tools, duplicate
    tool names) are ``validate_config``'s alone."""
    generated = msgspec.json.schema(AgentConfig)
    defs: dict[str, Any] = generated["$defs"]
    root = defs.pop("AgentConfig")
    defs["BackgroundSound"]["allOf"] = [
        {
            "if": {"properties": {"type": {"const": "custom"}}, "required": ["type"]},
            "then": {"required": ["custom_url"], "properties": {"custom_url": {"type": "string"}}},
        }
    ]
    action = defs["EscalationRule"]["properties"]["action"]
    action["enum"] = sorted({*action["enum"], *ACTION_ALIASES})
    action["description"] = "; ".join(f"{alias}: {canonical}" for alias, canonical in ACTION_ALIASES.items())
    defs["EscalationRule"]["allOf"] = [
        {"if": {"properties": {"trigger": {"const": trigger}}}, "then": then}
        for trigger, then in (
            ("urgent_keywords", {"required": ["keywords"], "properties": {"keywords": {"minItems": 1}}}),
            ("repeated_tool_failure", {"required": ["count"], "properties": {"count": {"type": "integer"}}}),
            ("negative_turns", {"required": ["turns"], "properties": {"turns": {"type": "integer"}}}),
        )
    ]
    product_rules = [
        {
            "if": {"properties": {"product_type": {"const": "chatbot"}}, "required": ["product_type"]},
            "then": {
                "required": ["external_integrations"],
                "properties": {"external_integrations": {"type": "array"}, "voice_config": {"type": "null"}},
            },
        },
        {
            "if": {"properties": {"product_type": {"const": "voicebot"}}, "required": ["product_type"]},
            "then": {"properties": {"external_integrations": {"type": "null"}}},
        },
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://parley.dev/schemas/agent-config/{SCHEMA_VERSION}",
        **root,
        "title": "Parley agent config",
        "allOf": product_rules,
        "$defs": defs,
    }


def _msgspec_issue(text: str) -> tuple[str, str]:
    match = re.search(r" - at `([^`]*)`$", text)
    if match is None:
        return "$", text
    return match.group(1), text[: match.start()]


# -- the seed's spellings -------------------------------------------------------------------------


def _elided(parameters: Any) -> bool:
    return parameters == ELIDED or (isinstance(parameters, dict) and list(parameters) == [ELIDED])


def normalize(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with the seed's spellings in canonical form (see the module); anything this does not
    recognise is left as it is, for the rules to judge. ``raw`` itself is not changed."""
    document = dict(raw)
    tools = document.get("tools")
    if isinstance(tools, list):
        document["tools"] = [_normal_tool(tool) if isinstance(tool, dict) else tool for tool in tools]
    rules = document.get("escalation_rules")
    if isinstance(rules, list):
        document["escalation_rules"] = [_normal_rule(rule) if isinstance(rule, dict) else rule for rule in rules]
    return document


def _normal_tool(tool: dict[str, Any]) -> dict[str, Any]:
    parameters = tool.get("parameters")
    if "parameters" in tool and (parameters is None or _elided(parameters)):
        return {**tool, "parameters": {"type": "object", "properties": {}}}
    if isinstance(parameters, dict) and "type" not in parameters:
        return {**tool, "parameters": {"type": "object", **parameters}}
    return tool


def _normal_rule(rule: dict[str, Any]) -> dict[str, Any]:
    rule = dict(rule)
    action = rule.get("action")
    if isinstance(action, str) and action in ACTION_ALIASES:
        rule["action"] = ACTION_ALIASES[action]
    if rule.get("trigger") == "user_frustrated" and rule.get("threshold") is None:
        rule["threshold"] = DEFAULT_FRUSTRATION_THRESHOLD
    return rule


# -- changes over a document (the seed's preview and visual update bodies) ---------------------------

VOICE_SETTINGS = "voice_settings"  # the seed's API name for a voicebot's voice_config
_VOICE_KEYS = frozenset(VoiceConfig.__struct_fields__)
_MODEL_KEYS = frozenset(ModelSettings.__struct_fields__) - _VOICE_KEYS


def apply_changes(document: Mapping[str, Any], changes: Mapping[str, Any]) -> tuple[dict[str, Any], list[Issue]]:
    """``document`` (a config mapping) with ``changes`` applied, and warnings about what was not.

    A top-level key replaces the document's, except the voice: ``voice_settings`` (the seed's
    request bodies) and ``voice_config`` are merged into the voicebot's ``voice_config`` key by key,
    a flat model setting (``speed``, ``clarity_similarity``, ...) into its ``model_settings``. A
    chatbot has no voice: its ``voice_settings`` are ignored with a warning (``voice_config``
    stays, for the rules to refuse).
    """
    merged = dict(document)
    warnings: list[Issue] = []
    for key, value in changes.items():
        if key not in (VOICE_SETTINGS, "voice_config"):
            merged[key] = value
        elif merged.get("product_type") != "voicebot" and key == VOICE_SETTINGS:
            warnings.append(Issue(f"changes.{key}", "a chatbot has no voice settings: ignored", "warning"))
        elif isinstance(value, Mapping):
            current = merged.get("voice_config")
            merged["voice_config"] = _merge_voice(current if isinstance(current, Mapping) else {}, value)
        else:
            merged["voice_config"] = value  # not a mapping: the rules say so
    return merged, warnings


def _merge_voice(current: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _MODEL_KEYS:
            nested.setdefault("model_settings", {})[key] = value
        elif key == "model_settings" and isinstance(value, Mapping):
            nested.setdefault("model_settings", {}).update(value)
        else:
            nested[key] = value
    return _deep_merge(current, nested)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        inner = merged.get(key)
        merged[key] = _deep_merge(inner, value) if isinstance(inner, Mapping) and isinstance(value, Mapping) else value
    return merged


# -- the rules ----------------------------------------------------------------------------------

REQUIRED = "Required field missing"
Report = Callable[[str, str], None]  # the ``error``/``warn`` callbacks: (field, message) -> None


def validate_config(raw: Mapping[str, Any], *, implemented_tools: Collection[str] | None = None) -> list[Issue]:
    """Every finding, errors and warnings, in document order.

    ``implemented_tools``: the tool names the runtime can execute; a declared tool missing from it
    is a warning (the config may be saved before its tool ships), not an error.
    """
    issues: list[Issue] = []

    def error(field: str, message: str) -> None:
        issues.append(Issue(field, message))

    def warn(field: str, message: str) -> None:
        issues.append(Issue(field, message, "warning"))

    tools = raw.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else []):
        if isinstance(tool, dict) and _elided(tool.get("parameters")):
            warn(f"tools[{index}].parameters", "elided ({...}): the tool declares no parameters")
    raw = normalize(raw)

    known = set(AgentConfig.__struct_fields__)
    for key in raw:
        if key not in known:
            error(str(key), f"unknown key; known keys: {', '.join(sorted(known))}")

    product = raw.get("product_type")
    if product is None:
        error("product_type", f"{REQUIRED}. Must be 'chatbot' or 'voicebot'")
    elif product not in ("chatbot", "voicebot"):
        error("product_type", f"Must be 'chatbot' or 'voicebot', not {product!r}")
    prompt = raw.get("system_prompt")
    if prompt is None:
        error("system_prompt", REQUIRED)
    elif not isinstance(prompt, str) or not prompt.strip():
        error("system_prompt", "Must be a non-empty string")

    for key in ("tools", "escalation_rules"):
        if raw.get(key) is None:
            error(key, REQUIRED)
    tool_names = _check_tools(raw.get("tools", []), implemented_tools, error, warn)

    integrations = raw.get("external_integrations")
    if integrations is None:
        if product == "chatbot":
            error("external_integrations", f"{REQUIRED}: product_type chatbot needs a list (it may be empty)")
    elif product == "voicebot":
        error("external_integrations", "Field not allowed for product_type: voicebot")
    elif not isinstance(integrations, list):
        error("external_integrations", "must be a list")
    else:
        for index, item in enumerate(integrations):
            if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not item["type"]:
                error(f"external_integrations[{index}].type", "required: a non-empty string")

    voice = raw.get("voice_config")
    if voice is not None:
        if product == "chatbot":
            error("voice_config", "Field not allowed for product_type: chatbot")
        else:
            _check_voice(voice, error)

    _check_escalation(raw.get("escalation_rules", []), error)
    _check_templates(raw.get("templates", {}), tool_names, error, warn)
    _check_intents(raw.get("intents", {}), error)
    _check_cross_sell(raw.get("cross_sell", []), tool_names, error)
    _check_llm(raw.get("llm", {}), error)
    rounds = raw.get("max_tool_rounds", 3)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or not 1 <= rounds <= 10:
        error("max_tool_rounds", "must be an integer from 1 to 10")
    return issues


def _check_tools(tools: Any, implemented: Collection[str] | None, error: Report, warn: Report) -> set[str]:
    names: set[str] = set()
    if tools is None:
        return names
    if not isinstance(tools, list):
        error("tools", "must be a list")
        return names
    allowed = {*ToolDefinition.__struct_fields__, PATTERNS_KEY} - {"patterns"}
    for index, tool in enumerate(tools):
        at = f"tools[{index}]"
        if not isinstance(tool, dict):
            error(at, "must be a mapping")
            continue
        for key in tool:
            if key not in allowed:
                error(f"{at}.{key}", "unknown key")
        name = tool.get("name")
        if name is None:
            error(f"{at}.name", REQUIRED)
        elif not isinstance(name, str) or not SNAKE_CASE.fullmatch(name):
            error(f"{at}.name", "Tool name must be snake_case")
        elif len(name) > MAX_TOOL_NAME:
            error(f"{at}.name", f"Tool name must be at most {MAX_TOOL_NAME} characters")
        elif name in names:
            error(f"{at}.name", f"duplicate tool name {name!r}")
        else:
            names.add(name)
            if implemented is not None and name not in implemented:
                warn(f"{at}.name", f"Tool '{name}' not yet implemented")
        if not isinstance(tool.get("description", ""), str):
            error(f"{at}.description", "must be a string")
        _check_schema(tool.get("parameters", {"type": "object"}), f"{at}.parameters", error)
        timeout = tool.get("timeout_seconds", 30)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 300:
            error(f"{at}.timeout_seconds", "must be a number of seconds above 0 and at most 300")
        if tool.get("on_failure", "fallback") not in ("fallback", "escalate"):
            error(f"{at}.on_failure", "must be fallback or escalate")
        patterns = tool.get(PATTERNS_KEY)
        if patterns is None:
            warn(at, f"no {PATTERNS_KEY}: the offline model will never call this tool")
        else:
            _check_patterns(patterns, tool.get("parameters", {}), f"{at}.{PATTERNS_KEY}", error)
    return names


def _check_voice(voice: Any, error: Report) -> None:
    """The voice section, checked against ``VoiceConfig``'s own field types and ranges."""
    _check_against(voice, mi.type_info(VoiceConfig), "voice_config", error)
    sound = voice.get("background_sound") if isinstance(voice, dict) else None
    if isinstance(sound, dict) and sound.get("type") == "custom" and sound.get("custom_url") is None:
        error("voice_config.background_sound.custom_url", "Required when background_sound.type is custom")
    menus = voice.get("ivr_menus") if isinstance(voice, dict) else None
    if isinstance(menus, list):
        _check_ivr_menus(menus, error)


def _check_ivr_menus(menus: list[Any], error: Report) -> None:
    """Menu names unique, each key once per menu, each option doing one thing, menus named exist."""
    names = [m.get("name") for m in menus if isinstance(m, dict)]
    for index, menu in enumerate(menus):
        if not isinstance(menu, dict):
            continue
        at = f"voice_config.ivr_menus[{index}]"
        if names.count(menu.get("name")) > 1:
            error(f"{at}.name", f"another menu is named {menu.get('name')!r}")
        raw = menu.get("options")
        options: list[Any] = raw if isinstance(raw, list) else []
        digits = [o.get("digit") for o in options if isinstance(o, dict)]
        for number, option in enumerate(options):
            if not isinstance(option, dict):
                continue
            where = f"{at}.options[{number}]"
            if digits.count(option.get("digit")) > 1:
                error(f"{where}.digit", f"key {option.get('digit')!r} is used twice in this menu")
            actions = [key for key in ("say", "menu", "transfer") if option.get(key)]
            if len(actions) != 1:
                error(where, "must do exactly one thing: say, menu or transfer")
            target = option.get("menu")
            if target and target not in names:
                error(f"{where}.menu", f"no menu is named {target!r}")


def _check_against(value: Any, kind: mi.Type, at: str, error: Report) -> None:
    """One value against a msgspec type: the rule the JSON schema states, with a readable message."""
    if isinstance(kind, mi.Metadata):
        kind = kind.type
    match kind:
        case mi.UnionType(types=types) if any(isinstance(t, mi.NoneType) for t in types):
            if value is not None:
                [inner] = [t for t in types if not isinstance(t, mi.NoneType)]
                _check_against(value, inner, at, error)
        case mi.StructType(cls=cls, fields=fields):
            if not isinstance(value, dict):
                error(at, "must be a mapping")
                return
            by_name = {field.encode_name: field for field in fields}
            for key in value:
                if key not in by_name:
                    error(f"{at}.{key}", f"unknown key; known keys: {', '.join(by_name)}")
            for name, field in by_name.items():
                if name in value:
                    _check_against(value[name], field.type, f"{at}.{name}", error)
                elif field.required:
                    error(f"{at}.{name}", f"{REQUIRED} ({cls.__name__})")
        case mi.BoolType():
            if not isinstance(value, bool):
                error(at, "must be true or false")
        case mi.IntType(gt=gt, ge=ge, lt=lt, le=le):
            if not isinstance(value, int) or isinstance(value, bool) or not _within(value, gt, ge, lt, le):
                error(at, f"must be {_describe('an integer', gt, ge, lt, le)}")
        case mi.FloatType(gt=gt, ge=ge, lt=lt, le=le):
            if not isinstance(value, int | float) or isinstance(value, bool) or not _within(value, gt, ge, lt, le):
                error(at, f"must be {_describe('a number', gt, ge, lt, le)}")
        case mi.StrType(min_length=shortest, max_length=longest, pattern=pattern):
            if not isinstance(value, str):
                error(at, "must be a string")
            elif pattern is not None and re.search(pattern, value) is None:
                error(at, f"must match {pattern}")
            elif (shortest is not None and len(value) < shortest) or (longest is not None and len(value) > longest):
                error(at, f"must be from {shortest or 0} to {longest or 'any number of'} characters long")
        case mi.LiteralType(values=values):
            if value not in values:
                error(at, f"must be one of {', '.join(map(str, values))}")
        case mi.ListType(item_type=item):
            if not isinstance(value, list):
                error(at, "must be a list")
                return
            for index, element in enumerate(value):
                _check_against(element, item, f"{at}[{index}]", error)
        case _:  # a type this walker does not describe: msgspec.convert in config_from_mapping decides
            pass


def _within(value: float, gt: float | None, ge: float | None, lt: float | None, le: float | None) -> bool:
    return (
        (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (lt is None or value < lt)
        and (le is None or value <= le)
    )


def _describe(noun: str, gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    if ge is not None and le is not None:
        return f"{noun} from {ge} to {le}"
    if gt == 0 and ge is None and lt is None and le is None:
        return "a positive integer" if noun == "an integer" else "a positive number"
    bounds = [
        text
        for text, bound in (
            (f"above {gt}", gt),
            (f"at least {ge}", ge),
            (f"below {lt}", lt),
            (f"at most {le}", le),
        )
        if bound is not None
    ]
    return f"{noun} {' and '.join(bounds)}" if bounds else noun


def _check_schema(schema: Any, at: str, error: Report) -> None:
    if not isinstance(schema, dict):
        error(at, "must be a JSON schema object")
        return
    if schema.get("type") != "object":
        error(f"{at}.type", "tool parameters must be a JSON schema of type object")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        error(f"{at}.properties", "must be a mapping")
        properties = {}
    for name, prop in properties.items():
        if not isinstance(prop, dict) or prop.get("type", "string") not in SCHEMA_TYPES:
            error(f"{at}.properties.{name}.type", f"must be one of {', '.join(sorted(SCHEMA_TYPES))}")
        elif "pattern" in prop and (problem := pattern_problem(prop["pattern"])):
            error(f"{at}.properties.{name}.pattern", problem)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        error(f"{at}.required", "must be a list of property names")
    else:
        for name in required:
            if name not in properties:
                error(f"{at}.required", f"{name!r} is required but not a property")


def _check_patterns(patterns: Any, parameters: Any, at: str, error: Report) -> None:
    try:
        parsed = msgspec.convert(patterns, ToolPatterns)
    except msgspec.ValidationError as exc:
        error(at, str(exc))
        return
    properties = parameters.get("properties", {}) if isinstance(parameters, dict) else {}
    for name, regex in parsed.arguments.items():
        if name not in properties:
            error(f"{at}.arguments.{name}", "not a parameter of this tool")
        if problem := pattern_problem(regex):
            error(f"{at}.arguments.{name}", problem)


def _check_escalation(rules: Any, error: Report) -> None:
    if not isinstance(rules, list):
        error("escalation_rules", "must be a list")
        return
    for index, rule in enumerate(rules):
        at = f"escalation_rules[{index}]"
        if not isinstance(rule, dict):
            error(at, "must be a mapping")
            continue
        trigger = rule.get("trigger")
        if trigger not in TRIGGERS:
            error(f"{at}.trigger", f"must be one of {', '.join(TRIGGERS)}")
        if rule.get("action", "human_handoff") not in ("human_handoff", "flag"):
            aliases = ", ".join(ACTION_ALIASES)
            error(f"{at}.action", f"must be human_handoff or flag (or one of their other names: {aliases})")
        if rule.get("urgency") not in (None, "low", "medium", "high", "urgent"):
            error(f"{at}.urgency", "must be low, medium, high or urgent")
        threshold = rule.get("threshold")
        if threshold is not None and (
            not isinstance(threshold, int | float) or isinstance(threshold, bool) or not -1 <= threshold <= 1
        ):
            error(f"{at}.threshold", "a sentiment threshold must be a number from -1 to 1")
        match trigger:
            case "urgent_keywords":
                keywords = rule.get("keywords")
                if (
                    not isinstance(keywords, list)
                    or not keywords
                    or not all(isinstance(k, str) and k for k in keywords)
                ):
                    error(f"{at}.keywords", "urgent_keywords needs a non-empty list of keywords")
            case "repeated_tool_failure":
                count = rule.get("count")
                if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                    error(f"{at}.count", "repeated_tool_failure needs a count of at least 1")
            case "negative_turns":
                turns = rule.get("turns")
                if not isinstance(turns, int) or isinstance(turns, bool) or turns < 1:
                    error(f"{at}.turns", "negative_turns needs a number of turns of at least 1")


def _check_templates(templates: Any, tool_names: set[str], error: Report, warn: Report) -> None:
    if not isinstance(templates, dict):
        error("templates", "must be a mapping of intent or tool name to template")
        return
    for key, template in templates.items():
        if not isinstance(template, str):
            error(f"templates.{key}", "must be a string")
        elif template.count("{{") != template.count("}}"):
            error(f"templates.{key}", "unbalanced {{ }} placeholders")
    for name in sorted(tool_names):
        if name not in templates:
            warn(f"templates.{name}", "no template: the offline model will answer this tool's result generically")


def _check_intents(intents: Any, error: Report) -> None:
    if not isinstance(intents, dict):
        error("intents", "must be a mapping of intent to a list of regexes")
        return
    for intent, rules in intents.items():
        if not isinstance(rules, list):
            error(f"intents.{intent}", "must be a list of regexes")
            continue
        for index, rule in enumerate(rules):
            if problem := pattern_problem(rule):
                error(f"intents.{intent}[{index}]", problem)


def _check_cross_sell(rules: Any, tool_names: set[str], error: Report) -> None:
    if not isinstance(rules, list):
        error("cross_sell", "must be a list")
        return
    for index, rule in enumerate(rules):
        at = f"cross_sell[{index}]"
        if not isinstance(rule, dict):
            error(at, "must be a mapping")
            continue
        when = rule.get("when")
        if not isinstance(when, dict) or not any(when.get(key) for key in ("intent", "keywords", "tool")):
            error(f"{at}.when", "needs at least one of intent, keywords, tool")
        elif (tool := when.get("tool")) and tool not in tool_names:
            error(f"{at}.when.tool", f"{tool!r} is not a declared tool")
        for key in ("product", "suggestion"):
            if not isinstance(rule.get(key), str) or not rule[key].strip():
                error(f"{at}.{key}", "required: a non-empty string")
        if (accept := rule.get("accept_tool")) is not None and accept not in tool_names:
            error(f"{at}.accept_tool", f"{accept!r} is not a declared tool")
        confidence = rule.get("confidence", 0.5)
        if not isinstance(confidence, int | float) or isinstance(confidence, bool) or not 0 <= confidence <= 1:
            error(f"{at}.confidence", "must be a number from 0 to 1")


def _check_llm(llm: Any, error: Report) -> None:
    if not isinstance(llm, dict):
        error("llm", "must be a mapping")
        return
    providers = llm.get("providers", ["offline"])
    if not isinstance(providers, list) or not providers:
        error("llm.providers", "must be a non-empty list")
        return
    for index, name in enumerate(providers):
        if name not in KNOWN_PROVIDERS:
            error(f"llm.providers[{index}]", f"unknown provider {name!r}; known: {', '.join(KNOWN_PROVIDERS)}")
