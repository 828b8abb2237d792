"""An agent's YAML config: parsed into frozen msgspec structs, checked rule by rule.

``load_config(text)`` returns an ``AgentConfig`` or raises ``ValidationError`` whose ``fields`` map
each bad field path to its reason and whose ``issues`` list every finding as
``{field, message, severity}`` (warnings included). ``validate_config(raw)`` gives the findings
without raising. ``config_digest`` names a config's content, for version pinning and caches.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal

import msgspec
import yaml

from domain.errors import ValidationError
from gateways.llm.factory import KNOWN as KNOWN_PROVIDERS
from gateways.llm.offline import PATTERNS_KEY, ToolPatterns
from gateways.llm.port import ToolSpec

ProductType = Literal["chatbot", "voicebot"]
OnFailure = Literal["fallback", "escalate"]
Trigger = Literal["user_frustrated", "urgent_keywords", "explicit_request", "repeated_tool_failure", "negative_turns"]
Action = Literal["human_handoff", "flag"]
Urgency = Literal["low", "medium", "high", "urgent"]
Severity = Literal["error", "warning"]

TRIGGERS: tuple[str, ...] = Trigger.__args__  # type: ignore[attr-defined]
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
SCHEMA_TYPES = {"object", "string", "integer", "number", "boolean", "array", "null"}
DEFAULT_URGENCY: dict[str, Urgency] = {
    "user_frustrated": "medium",
    "urgent_keywords": "high",
    "explicit_request": "medium",
    "repeated_tool_failure": "high",
    "negative_turns": "medium",
    "tool_failure": "high",
}


class ToolDefinition(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    patterns: ToolPatterns | None = msgspec.field(default=None, name=PATTERNS_KEY)
    timeout_seconds: float = 30.0
    on_failure: OnFailure = "fallback"

    def spec(self) -> ToolSpec:
        """The tool as the LLM port sees it (patterns in ``extra`` for the offline model)."""
        extra = {} if self.patterns is None else {PATTERNS_KEY: msgspec.to_builtins(self.patterns)}
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters, extra=extra)


class ExternalIntegration(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    credentials_ref: str = ""
    enabled: bool = True


class EscalationRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``threshold``: sentiment below it is frustrated/negative. ``count``: failures. ``turns``: negative turns."""

    trigger: Trigger
    action: Action = "human_handoff"
    threshold: float | None = None
    keywords: list[str] = []
    count: int | None = None
    turns: int | None = None
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
    when: CrossSellWhen
    product: str
    suggestion: str
    confidence: float = 0.5


class LLMSettings(msgspec.Struct, frozen=True, kw_only=True):
    providers: list[str] = msgspec.field(default_factory=lambda: ["offline"])
    timeout_seconds: float = 30.0


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    product_type: ProductType
    system_prompt: str
    name: str = ""
    tools: list[ToolDefinition] = []
    external_integrations: list[ExternalIntegration] = []
    escalation_rules: list[EscalationRule] = []
    templates: dict[str, str] = {}
    intents: dict[str, list[str]] = {}
    cross_sell: list[CrossSellRule] = []
    llm: LLMSettings = msgspec.field(default_factory=LLMSettings)
    max_tool_rounds: int = 3

    def tool(self, name: str) -> ToolDefinition | None:
        return next((tool for tool in self.tools if tool.name == name), None)

    def tool_specs(self) -> list[ToolSpec]:
        return [tool.spec() for tool in self.tools]


class Issue(msgspec.Struct, frozen=True):
    field: str
    message: str
    severity: Severity = "error"


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
        return msgspec.convert(dict(raw), AgentConfig)
    except msgspec.ValidationError as exc:  # a shape the rules below did not anticipate
        field, message = _msgspec_issue(str(exc))
        raise ValidationError(
            "agent config has 1 error(s)",
            fields={field: message},
            issues=[msgspec.to_builtins(Issue(field, message))],
        ) from exc


def config_digest(config: AgentConfig) -> str:
    """sha256 of the config's canonical JSON: equal configs, equal digests."""
    return hashlib.sha256(msgspec.json.encode(msgspec.to_builtins(config), order="sorted")).hexdigest()


def _msgspec_issue(text: str) -> tuple[str, str]:
    match = re.search(r" - at `([^`]*)`$", text)
    if match is None:
        return "$", text
    return match.group(1), text[: match.start()]


# -- the rules ----------------------------------------------------------------------------------


def validate_config(raw: Mapping[str, Any]) -> list[Issue]:
    """Every finding, errors and warnings, in document order."""
    issues: list[Issue] = []

    def error(field: str, message: str) -> None:
        issues.append(Issue(field, message))

    def warn(field: str, message: str) -> None:
        issues.append(Issue(field, message, "warning"))

    known = set(AgentConfig.__struct_fields__)
    for key in raw:
        if key not in known:
            error(str(key), f"unknown key; known keys: {', '.join(sorted(known))}")

    product = raw.get("product_type")
    if product not in ("chatbot", "voicebot"):
        error("product_type", "required: chatbot or voicebot")
    prompt = raw.get("system_prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        error("system_prompt", "required: a non-empty string")

    tool_names = _check_tools(raw.get("tools", []), error, warn)

    integrations = raw.get("external_integrations", [])
    if integrations and product == "voicebot":
        error("external_integrations", "only chatbot configs may declare external integrations")
    if not isinstance(integrations, list):
        error("external_integrations", "must be a list")
    else:
        for index, item in enumerate(integrations):
            if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                error(f"external_integrations[{index}].type", "required string")

    _check_escalation(raw.get("escalation_rules", []), error)
    _check_templates(raw.get("templates", {}), tool_names, error, warn)
    _check_intents(raw.get("intents", {}), error)
    _check_cross_sell(raw.get("cross_sell", []), tool_names, error)
    _check_llm(raw.get("llm", {}), error)
    rounds = raw.get("max_tool_rounds", 3)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or not 1 <= rounds <= 10:
        error("max_tool_rounds", "must be an integer from 1 to 10")
    return issues


Report = Any  # the ``error``/``warn`` callbacks: (field, message) -> None


def _check_tools(tools: Any, error: Report, warn: Report) -> set[str]:
    names: set[str] = set()
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
        if not isinstance(name, str) or not SNAKE_CASE.fullmatch(name):
            error(f"{at}.name", "required: snake_case, starting with a letter, at most 64 characters")
        elif name in names:
            error(f"{at}.name", f"duplicate tool name {name!r}")
        else:
            names.add(name)
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
        elif "pattern" in prop:
            try:
                re.compile(prop["pattern"])
            except (re.error, TypeError) as exc:
                error(f"{at}.properties.{name}.pattern", f"invalid regex: {exc}")
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
        try:
            re.compile(regex)
        except re.error as exc:
            error(f"{at}.arguments.{name}", f"invalid regex: {exc}")


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
            error(f"{at}.action", "must be human_handoff or flag")
        if rule.get("urgency") not in (None, "low", "medium", "high", "urgent"):
            error(f"{at}.urgency", "must be low, medium, high or urgent")
        threshold = rule.get("threshold")
        if threshold is not None and (
            not isinstance(threshold, int | float) or isinstance(threshold, bool) or not -1 <= threshold <= 1
        ):
            error(f"{at}.threshold", "a sentiment threshold must be a number from -1 to 1")
        match trigger:
            case "user_frustrated" if threshold is None:
                error(f"{at}.threshold", "user_frustrated needs a sentiment threshold (from -1 to 1)")
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
            try:
                re.compile(rule)
            except (re.error, TypeError) as exc:
                error(f"intents.{intent}[{index}]", f"invalid regex: {exc}")


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
