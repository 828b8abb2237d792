"""Agent configs: the demo configs load, and every rule names the field it rejects (seed 004's
Schema Validator Agent rules, the voicebot YAML and the voicebot panel's slider ranges)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.llm.port import ToolSpec
from agents.tools import demo_registry
from domain.bot import (
    DEFAULT_FRUSTRATION_THRESHOLD,
    AgentConfig,
    Issue,
    VoiceConfig,
    config_digest,
    config_document,
    config_from_mapping,
    config_json_schema,
    load_config,
    validate_config,
    validation_report,
)
from domain.errors import ValidationError

CONFIGS = Path(__file__).parent.parent / "agents" / "configs"
SEED_CONFIGS = Path(__file__).parent / "seed_configs"  # seed 004's two YAML examples, verbatim
DEMO_TOOLS = frozenset(demo_registry(None).names)  # type: ignore[arg-type]  # nothing connects until a tool runs
MINIMAL: dict[str, Any] = {
    "product_type": "chatbot",
    "system_prompt": "You help.",
    "tools": [
        {
            "name": "fetch_order_status",
            "description": "Order status",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
            "x-parley-patterns": {"triggers": ["order"], "arguments": {"order_id": "ORD-\\d+"}},
        }
    ],
    "templates": {"fetch_order_status": "{{status}}"},
    "external_integrations": [],
    "escalation_rules": [],
}


def errors_for(**changes: Any) -> dict[str, str]:
    raw = {**MINIMAL, **changes}
    with pytest.raises(ValidationError) as raised:
        config_from_mapping(raw)
    assert raised.value.details["issues"]
    return raised.value.fields


PATTERNS = "x-parley-patterns"
BAD_CROSS_SELL = {"when": {"intent": "sales"}, "product": "P", "suggestion": "S", "confidence": 2}


def tool(**changes: Any) -> list[dict[str, Any]]:
    return [{**MINIMAL["tools"][0], **changes}]


@pytest.mark.parametrize(
    ("name", "product_type"), [("support_bot", "chatbot"), ("sales_bot", "chatbot"), ("voice_bot", "voicebot")]
)
def test_the_demo_configs_load_without_findings(name: str, product_type: str) -> None:
    text = (CONFIGS / f"{name}.yaml").read_text()

    config = load_config(text)

    assert validate_config(yaml.safe_load(text), implemented_tools=DEMO_TOOLS) == []
    assert config.product_type == product_type and config.tools
    assert config_digest(config) == config_digest(load_config(text))


def test_the_demo_voicebot_is_the_seeds_voicebot_with_the_demo_tools() -> None:
    config = load_config((CONFIGS / "voice_bot.yaml").read_text())
    seed = load_config((SEED_CONFIGS / "voicebot.yaml").read_text())

    assert config.voice_config == seed.voice_config and config.external_integrations is None
    names = {t.name for t in config.tools}
    assert "fetch_order_status" in names and names <= DEMO_TOOLS
    assert ("user_frustrated", "human_handoff") in {(r.trigger, r.action) for r in config.escalation_rules}


def test_a_minimal_config_loads_with_defaults() -> None:
    config = config_from_mapping(MINIMAL)

    [fetch] = config.tools
    assert (fetch.timeout_seconds, fetch.on_failure) == (30.0, "fallback")
    assert ToolSpec.of(fetch).extra["x-parley-patterns"]["triggers"] == ["order"]
    assert config.llm.providers == ["offline"]


def test_digests_differ_when_configs_do() -> None:
    other = config_from_mapping({**MINIMAL, "system_prompt": "You sell."})
    assert config_digest(other) != config_digest(config_from_mapping(MINIMAL))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"product_type": "fax"}, "product_type"),
        ({"system_prompt": ""}, "system_prompt"),
        ({"tools": tool(name="FetchOrder")}, "tools[0].name"),
        ({"tools": [*tool(), *tool()]}, "tools[1].name"),
        ({"tools": tool(parameters={"type": "string"})}, "tools[0].parameters.type"),
        ({"tools": tool(parameters={"type": "object", "required": ["x"]})}, "tools[0].parameters.required"),
        ({"tools": tool(timeout_seconds=0)}, "tools[0].timeout_seconds"),
        ({"tools": tool(on_failure="retry")}, "tools[0].on_failure"),
        ({"tools": tool(**{PATTERNS: {"arguments": {"order_id": "("}}})}, f"tools[0].{PATTERNS}.arguments.order_id"),
        ({"tools": tool(**{PATTERNS: {"arguments": {"sku": "\\d+"}}})}, f"tools[0].{PATTERNS}.arguments.sku"),
        ({"product_type": "voicebot", "external_integrations": [{"type": "stripe"}]}, "external_integrations"),
        ({"escalation_rules": [{"trigger": "moon_phase"}]}, "escalation_rules[0].trigger"),
        ({"escalation_rules": [{"trigger": "user_frustrated", "threshold": -3}]}, "escalation_rules[0].threshold"),
        ({"escalation_rules": [{"trigger": "urgent_keywords", "keywords": []}]}, "escalation_rules[0].keywords"),
        ({"escalation_rules": [{"trigger": "repeated_tool_failure", "count": 0}]}, "escalation_rules[0].count"),
        ({"escalation_rules": [{"trigger": "negative_turns"}]}, "escalation_rules[0].turns"),
        ({"escalation_rules": [{"trigger": "explicit_request", "action": "shrug"}]}, "escalation_rules[0].action"),
        ({"templates": {"greeting": "Hi {{name"}}, "templates.greeting"),
        ({"cross_sell": [{"when": {}, "product": "P", "suggestion": "S"}]}, "cross_sell[0].when"),
        ({"cross_sell": [{"when": {"tool": "nope"}, "product": "P", "suggestion": "S"}]}, "cross_sell[0].when.tool"),
        ({"cross_sell": [BAD_CROSS_SELL]}, "cross_sell[0].confidence"),
        ({"cross_sell": [{**BAD_CROSS_SELL, "confidence": 1, "accept_tool": "nope"}]}, "cross_sell[0].accept_tool"),
        ({"llm": {"providers": ["anthropic", "skynet"]}}, "llm.providers[1]"),
        ({"intents": {"billing": ["(unclosed"]}}, "intents.billing[0]"),
        ({"colour": "blue"}, "colour"),
    ],
)  # fmt: skip
def test_each_rule_names_the_field_it_rejects(changes: dict[str, Any], field: str) -> None:
    assert field in errors_for(**changes)


def test_every_error_is_reported_at_once_with_its_severity() -> None:
    with pytest.raises(ValidationError) as raised:
        config_from_mapping({"product_type": "x", "system_prompt": "", "tools": tool(name="Bad", on_failure="no")})

    issues = raised.value.details["issues"]
    assert {issue["field"] for issue in issues} >= {
        "product_type",
        "system_prompt",
        "tools[0].name",
        "tools[0].on_failure",
    }
    assert {issue["severity"] for issue in issues} <= {"error", "warning"}
    assert raised.value.status == 400


def test_a_tool_without_patterns_or_template_is_a_warning_not_an_error() -> None:
    bare = {"name": "lookup_warranty", "parameters": {"type": "object", "properties": {}}}
    issues = validate_config({**MINIMAL, "tools": [*MINIMAL["tools"], bare]})

    assert {(i.field, i.severity) for i in issues} == {
        ("tools[1]", "warning"),
        ("templates.lookup_warranty", "warning"),
    }
    assert config_from_mapping({**MINIMAL, "tools": [*MINIMAL["tools"], bare]}).tool("lookup_warranty") is not None


def test_yaml_that_is_not_a_mapping_is_rejected() -> None:
    with pytest.raises(ValidationError):
        load_config("- just\n- a list\n")
    with pytest.raises(ValidationError):
        load_config("product_type: [unclosed\n")


# -- seed 004: the product rules ------------------------------------------------------------------

VOICEBOT_YAML = """
product_type: voicebot  # Required: differentiates from chatbot
system_prompt: "You are a helpful voice assistant..."
tools:
  - name: fetch_account_info
    description: "Retrieves account information"
    parameters: {type: object, properties: {account_id: {type: string}}, required: [account_id]}
  - name: schedule_appointment
    description: "Schedules an appointment"
    parameters: {type: object, properties: {time: {type: string}}, required: [time]}
# NO external_integrations field (unlike chatbot)
escalation_rules:
  - trigger: "user_frustrated"
    threshold: -0.6  # the seed leaves it out; our rule needs one
    action: "human_handoff"  # the seed says human_transfer; ours is human_handoff
voice_config:
  stt_provider: deepgram
  tts_provider: elevenlabs
  voice_id: "sarah_professional"
  turn_detection_threshold_ms: 300
  background_sound:
    type: "office"  # office | cafe | silence | custom
    custom_url: null
  input_min_characters: 10
  punctuation_boundaries: [".", "!", "?", "..."]
  model_settings:
    model: "gpt-4"
    clarity_similarity: 0.75
    speed: 1.0
    style_exaggeration: 0
    optimize_streaming_latency: 4
    use_speaker_boost: true
    auto_mode: false
  max_tokens: 150
  stop_speaking_plan:
    number_of_words: 3
    voice_seconds: 0.5
    back_off_seconds: 2
"""
VOICEBOT: dict[str, Any] = yaml.safe_load(VOICEBOT_YAML)


NOT_ALLOWED = "Field not allowed for product_type: "
NON_EMPTY = "required: a non-empty string"


def without(key: str, base: dict[str, Any] = MINIMAL) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != key}


def error_issues(raw: dict[str, Any]) -> dict[str, str]:
    return {i.field: i.message for i in validate_config(raw) if i.severity == "error"}


V = "voice_config."


def voice(*path: str, value: Any) -> dict[str, Any]:
    """The seed's voicebot with one voice_config value replaced."""
    raw = copy.deepcopy(VOICEBOT)
    section = raw["voice_config"]
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = value
    return raw


def test_the_seeds_voicebot_example_is_valid() -> None:
    assert error_issues(VOICEBOT) == {}
    config = load_config(VOICEBOT_YAML)

    assert config.product_type == "voicebot" and config.external_integrations is None
    assert config.voice_config is not None
    assert config.voice_config.model_settings.optimize_streaming_latency == 4
    assert config.voice_config.background_sound.type == "office"


@pytest.mark.parametrize("name", ["chatbot", "voicebot"])
def test_the_seeds_own_example_configs_validate_as_written(name: str) -> None:
    text = (SEED_CONFIGS / f"{name}.yaml").read_text()

    issues = validate_config(yaml.safe_load(text))
    config = load_config(text)

    assert [i for i in issues if i.severity == "error"] == []
    assert {i.field for i in issues if i.message.startswith("elided")} == {"tools[0].parameters", "tools[1].parameters"}
    assert config.product_type == name
    [rule] = config.escalation_rules
    assert (rule.trigger, rule.action, rule.threshold) == (
        "user_frustrated",
        "human_handoff",  # the voicebot says human_transfer: the same action
        DEFAULT_FRUSTRATION_THRESHOLD,
    )
    assert all(t.parameters == {"type": "object", "properties": {}} for t in config.tools)
    assert validation_report(yaml.safe_load(text)).valid
    assert config_from_mapping(config_document(config)) == config  # the normal form loads as itself


def test_the_seeds_voicebot_keeps_every_voice_value_it_gives() -> None:
    config = load_config((SEED_CONFIGS / "voicebot.yaml").read_text())

    assert config.external_integrations is None and config.voice_config is not None
    voice = config.voice_config
    assert (voice.stt_provider, voice.tts_provider, voice.voice_id) == ("deepgram", "elevenlabs", "sarah_professional")
    assert (voice.turn_detection_threshold_ms, voice.input_min_characters, voice.max_tokens) == (300, 10, 150)
    assert (voice.background_sound.type, voice.background_sound.custom_url) == ("office", None)
    assert voice.model_settings.model == "gpt-4" and voice.model_settings.optimize_streaming_latency == 4
    assert (voice.stop_speaking_plan.number_of_words, voice.stop_speaking_plan.back_off_seconds) == (3, 2.0)


@pytest.mark.parametrize(
    ("action", "canonical"),
    [("human_transfer", "human_handoff"), ("transfer", "human_handoff"), ("handoff", "human_handoff"),
     ("human_handoff", "human_handoff"), ("flag", "flag")],
)  # fmt: skip
def test_an_escalation_actions_other_names_mean_the_canonical_action(action: str, canonical: str) -> None:
    rule = {"trigger": "explicit_request", "action": action}
    config = config_from_mapping({**MINIMAL, "escalation_rules": [rule]})

    assert config.escalation_rules[0].action == canonical
    assert action in config_json_schema()["$defs"]["EscalationRule"]["properties"]["action"]["enum"]


def test_a_frustration_rule_keeps_its_own_threshold_and_a_schema_without_type_is_an_object() -> None:
    rule = {"trigger": "user_frustrated", "threshold": -0.8}
    untyped = tool(parameters={"properties": {"order_id": {"type": "string"}}, "required": ["order_id"]})
    config = config_from_mapping({**MINIMAL, "escalation_rules": [rule], "tools": untyped})

    assert config.escalation_rules[0].threshold == -0.8
    assert config.tools[0].parameters["type"] == "object"
    assert "escalation_rules[0].threshold" in errors_for(escalation_rules=[{**rule, "threshold": 2}])


def test_a_voicebot_without_voice_config_gets_none_and_a_chatbot_its_integrations() -> None:
    assert load_config(yaml.safe_dump(without("voice_config", VOICEBOT))).voice_config is None
    assert config_from_mapping(MINIMAL).external_integrations == []


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        (without("product_type"), "product_type", "Required field missing. Must be 'chatbot' or 'voicebot'"),
        ({**MINIMAL, "product_type": "fax"}, "product_type", "Must be 'chatbot' or 'voicebot', not 'fax'"),
        (without("system_prompt"), "system_prompt", "Required field missing"),
        ({**MINIMAL, "system_prompt": "  "}, "system_prompt", "Must be a non-empty string"),
        (without("tools"), "tools", "Required field missing"),
        (without("escalation_rules"), "escalation_rules", "Required field missing"),
        ({**VOICEBOT, "tools": None}, "tools", "Required field missing"),
        (without("escalation_rules", VOICEBOT), "escalation_rules", "Required field missing"),
        (
            without("external_integrations"),
            "external_integrations",
            "Required field missing: product_type chatbot needs a list (it may be empty)",
        ),
        ({**MINIMAL, "external_integrations": {"type": "stripe"}}, "external_integrations", "must be a list"),
        ({**MINIMAL, "external_integrations": [{"type": ""}]}, "external_integrations[0].type", NON_EMPTY),
        ({**VOICEBOT, "external_integrations": []}, "external_integrations", f"{NOT_ALLOWED}voicebot"),
        ({**MINIMAL, "voice_config": VOICEBOT["voice_config"]}, "voice_config", f"{NOT_ALLOWED}chatbot"),
        ({**MINIMAL, "tools": tool(name="FetchOrder")}, "tools[0].name", "Tool name must be snake_case"),
        ({**MINIMAL, "tools": tool(name="fetch-order")}, "tools[0].name", "Tool name must be snake_case"),
        ({**MINIMAL, "tools": tool(name="2fetch")}, "tools[0].name", "Tool name must be snake_case"),
        ({**MINIMAL, "tools": tool(name="f" * 65)}, "tools[0].name", "Tool name must be at most 64 characters"),
        ({**MINIMAL, "tools": [{"description": "nameless"}]}, "tools[0].name", "Required field missing"),
    ],
)  # fmt: skip
def test_each_product_rule_names_its_field_with_the_seeds_message(
    raw: dict[str, Any], field: str, message: str
) -> None:
    assert error_issues(raw)[field] == message
    with pytest.raises(ValidationError) as raised:
        config_from_mapping(raw)
    assert raised.value.fields[field] == message


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("input_min_characters",), 9, V + "input_min_characters"),
        (("input_min_characters",), 101, V + "input_min_characters"),
        (("input_min_characters",), 12.5, V + "input_min_characters"),
        (("model_settings", "clarity_similarity"), 1.01, V + "model_settings.clarity_similarity"),
        (("model_settings", "clarity_similarity"), -0.1, V + "model_settings.clarity_similarity"),
        (("model_settings", "speed"), 2.1, V + "model_settings.speed"),
        (("model_settings", "speed"), -0.5, V + "model_settings.speed"),
        (("model_settings", "speed"), "fast", V + "model_settings.speed"),
        (("model_settings", "style_exaggeration"), 1.5, V + "model_settings.style_exaggeration"),
        (("model_settings", "optimize_streaming_latency"), 5, V + "model_settings.optimize_streaming_latency"),
        (("model_settings", "optimize_streaming_latency"), 2.5, V + "model_settings.optimize_streaming_latency"),
        (("model_settings", "optimize_streaming_latency"), True, V + "model_settings.optimize_streaming_latency"),
        (("model_settings", "use_speaker_boost"), "yes", V + "model_settings.use_speaker_boost"),
        (("model_settings", "auto_mode"), 1, V + "model_settings.auto_mode"),
        (("model_settings", "model"), 4, V + "model_settings.model"),
        (("model_settings", "timbre"), 0.3, V + "model_settings.timbre"),
        (("stop_speaking_plan", "number_of_words"), 11, V + "stop_speaking_plan.number_of_words"),
        (("stop_speaking_plan", "number_of_words"), 2.5, V + "stop_speaking_plan.number_of_words"),
        (("stop_speaking_plan", "voice_seconds"), 1.5, V + "stop_speaking_plan.voice_seconds"),
        (("stop_speaking_plan", "back_off_seconds"), 10.5, V + "stop_speaking_plan.back_off_seconds"),
        (("background_sound", "type"), "forest", V + "background_sound.type"),
        (("background_sound",), {"type": "custom"}, V + "background_sound.custom_url"),
        (("background_sound", "custom_url"), "ftp://sounds", V + "background_sound.custom_url"),
        (("background_sound",), "office", "voice_config.background_sound"),
        (("max_tokens",), 0, V + "max_tokens"),
        (("max_tokens",), 1.5, V + "max_tokens"),
        (("punctuation_boundaries",), [".", 3], V + "punctuation_boundaries[1]"),
        (("punctuation_boundaries",), ".", V + "punctuation_boundaries"),
        (("stt_provider",), 7, V + "stt_provider"),
        (("tts_provider",), ["elevenlabs"], V + "tts_provider"),
        (("voice_id",), 42, V + "voice_id"),
        (("turn_detection_threshold_ms",), 0, V + "turn_detection_threshold_ms"),
        (("turn_detection_threshold_ms",), -300, V + "turn_detection_threshold_ms"),
        (("pitch",), 1, V + "pitch"),
    ],
)  # fmt: skip
def test_each_voice_rule_names_its_field(path: tuple[str, ...], value: Any, field: str) -> None:
    raw = voice(*path, value=value)

    assert field in error_issues(raw)
    with pytest.raises(ValidationError) as raised:
        config_from_mapping(raw)
    assert field in raw_fields(raised.value)


def raw_fields(error: ValidationError) -> set[str]:
    return {issue["field"] for issue in error.details["issues"]}


def test_voice_config_must_be_a_mapping() -> None:
    assert error_issues({**VOICEBOT, "voice_config": "loud"}) == {"voice_config": "must be a mapping"}


def test_the_panels_slider_ends_are_valid() -> None:
    ends = [
        (("input_min_characters",), 100),
        (("model_settings", "clarity_similarity"), 1),
        (("model_settings", "speed"), 0),
        (("model_settings", "speed"), 2),
        (("model_settings", "optimize_streaming_latency"), 0),
        (("stop_speaking_plan", "number_of_words"), 10),
        (("stop_speaking_plan", "voice_seconds"), 1.0),
        (("stop_speaking_plan", "back_off_seconds"), 0),
        (("background_sound",), {"type": "custom", "custom_url": "https://www.soundjay.com/office.mp3"}),
    ]
    for path, value in ends:
        assert error_issues(voice(*path, value=value)) == {}, path


def test_a_tool_not_yet_implemented_is_a_warning_on_its_name() -> None:
    issues = validate_config(MINIMAL, implemented_tools={"initiate_refund"})

    assert issues == [Issue("tools[0].name", "Tool 'fetch_order_status' not yet implemented", "warning")]
    assert validate_config(MINIMAL, implemented_tools={"fetch_order_status"}) == []
    assert validate_config(MINIMAL) == []


# -- canonical form, report, schema ---------------------------------------------------------------


@pytest.mark.parametrize("text", [(CONFIGS / "support_bot.yaml").read_text(), VOICEBOT_YAML])
def test_a_loaded_configs_canonical_form_validates_again(text: str) -> None:
    config = load_config(text)
    document = config_document(config)

    assert error_issues(document) == {}
    assert config_from_mapping(document) == config


def test_the_validation_report_has_the_seeds_shape() -> None:
    bad = validation_report({**MINIMAL, "product_type": "voicebot"})
    good = validation_report(MINIMAL, implemented_tools=set())

    assert (bad.valid, bad.product_type, [e.field for e in bad.errors]) == (
        False,
        "voicebot",
        ["external_integrations"],
    )
    assert (good.valid, good.schema_version, good.breaking_change_detected) == (True, "1.0", False)
    assert [w.message for w in good.warnings] == ["Tool 'fetch_order_status' not yet implemented"]


def test_the_validation_report_flags_a_breaking_change_against_the_previous_version() -> None:
    previous = config_from_mapping(MINIMAL)

    assert validation_report({**MINIMAL, "tools": []}, previous=previous).breaking_change_detected
    assert not validation_report(MINIMAL, previous=previous).breaking_change_detected


def test_the_json_schema_states_the_required_keys_enums_and_product_rules() -> None:
    schema = config_json_schema()
    defs = schema["$defs"]

    assert set(schema["required"]) == {"product_type", "system_prompt", "tools", "escalation_rules"}
    assert schema["properties"]["product_type"]["enum"] == ["chatbot", "voicebot"]
    assert schema["additionalProperties"] is False
    chatbot, voicebot = schema["allOf"]
    assert chatbot["then"]["required"] == ["external_integrations"]
    assert voicebot["then"]["properties"]["external_integrations"] == {"type": "null"}
    assert defs["ToolDefinition"]["properties"]["name"]["pattern"] == "^[a-z][a-z0-9_]*$"
    assert set(defs["BackgroundSound"]["properties"]["type"]["enum"]) == {"office", "cafe", "silence", "custom"}
    assert defs["BackgroundSound"]["allOf"][0]["then"]["required"] == ["custom_url"]
    assert defs["ModelSettings"]["properties"]["speed"] | {"default": 1.0} == {
        "type": "number",
        "minimum": 0,
        "maximum": 2,
        "default": 1.0,
    }
    assert set(AgentConfig.__struct_fields__) == set(schema["properties"])
    assert set(VoiceConfig.__struct_fields__) == set(defs["VoiceConfig"]["properties"])


VOICE_DEFS = {
    "VoiceConfig": (),
    "ModelSettings": ("model_settings",),
    "StopSpeakingPlan": ("stop_speaking_plan",),
}


def numeric_bounds() -> list[tuple[tuple[str, ...], str, float, float]]:
    """(path, type, value at a bound, value past it) for every bounded voice number in the schema."""
    cases = []
    defs = config_json_schema()["$defs"]
    for name, prefix in VOICE_DEFS.items():
        for field, prop in defs[name]["properties"].items():
            step = 1 if prop.get("type") == "integer" else 0.01
            if "minimum" in prop:
                cases.append(((*prefix, field), prop["type"], prop["minimum"], prop["minimum"] - step))
            if "maximum" in prop:
                cases.append(((*prefix, field), prop["type"], prop["maximum"], prop["maximum"] + step))
            if "exclusiveMinimum" in prop:
                cases.append(
                    ((*prefix, field), prop["type"], prop["exclusiveMinimum"] + step, prop["exclusiveMinimum"])
                )
    return cases


@pytest.mark.parametrize(("path", "kind", "inside", "outside"), numeric_bounds())
def test_the_schema_and_the_validator_agree_on_every_voice_range(
    path: tuple[str, ...], kind: str, inside: float, outside: float
) -> None:
    field = ".".join(("voice_config", *path))

    assert error_issues(voice(*path, value=inside)) == {}
    assert field in error_issues(voice(*path, value=outside))


def test_every_bounded_slider_of_the_panel_is_in_the_schema() -> None:
    bounded = {".".join(path) for path, *_ in numeric_bounds()}

    assert bounded >= {
        "input_min_characters",
        "max_tokens",
        "turn_detection_threshold_ms",
        "model_settings.clarity_similarity",
        "model_settings.speed",
        "model_settings.style_exaggeration",
        "model_settings.optimize_streaming_latency",
        "stop_speaking_plan.number_of_words",
        "stop_speaking_plan.voice_seconds",
        "stop_speaking_plan.back_off_seconds",
    }
