"""Agent configs: the demo configs load, and every rule names the field it rejects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.config import config_digest, config_from_mapping, load_config, validate_config
from domain.errors import ValidationError

CONFIGS = Path(__file__).parent.parent / "agents" / "configs"
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


@pytest.mark.parametrize("name", ["support_bot", "sales_bot"])
def test_the_demo_configs_load_without_findings(name: str) -> None:
    text = (CONFIGS / f"{name}.yaml").read_text()

    config = load_config(text)

    assert validate_config(yaml.safe_load(text)) == []
    assert config.product_type == "chatbot" and config.tools
    assert config_digest(config) == config_digest(load_config(text))


def test_a_minimal_config_loads_with_defaults() -> None:
    config = config_from_mapping(MINIMAL)

    [fetch] = config.tools
    assert (fetch.timeout_seconds, fetch.on_failure) == (30.0, "fallback")
    assert fetch.spec().extra["x-parley-patterns"]["triggers"] == ["order"]
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
        ({"escalation_rules": [{"trigger": "user_frustrated"}]}, "escalation_rules[0].threshold"),
        ({"escalation_rules": [{"trigger": "user_frustrated", "threshold": -3}]}, "escalation_rules[0].threshold"),
        ({"escalation_rules": [{"trigger": "urgent_keywords", "keywords": []}]}, "escalation_rules[0].keywords"),
        ({"escalation_rules": [{"trigger": "repeated_tool_failure", "count": 0}]}, "escalation_rules[0].count"),
        ({"escalation_rules": [{"trigger": "negative_turns"}]}, "escalation_rules[0].turns"),
        ({"escalation_rules": [{"trigger": "explicit_request", "action": "shrug"}]}, "escalation_rules[0].action"),
        ({"templates": {"greeting": "Hi {{name"}}, "templates.greeting"),
        ({"cross_sell": [{"when": {}, "product": "P", "suggestion": "S"}]}, "cross_sell[0].when"),
        ({"cross_sell": [{"when": {"tool": "nope"}, "product": "P", "suggestion": "S"}]}, "cross_sell[0].when.tool"),
        ({"cross_sell": [BAD_CROSS_SELL]}, "cross_sell[0].confidence"),
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
