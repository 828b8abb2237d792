"""Config versions compared (the diff, change type, breaking changes, risk) and who may make them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import permissions as perms
from domain.bot import config_document, load_config
from domain.bot_changes import RISK_LEVELS, ConfigComparison, change_risks, compare
from domain.errors import ValidationError

CONFIGS = Path(__file__).parent.parent / "agents" / "configs"
SUPPORT_YAML = (CONFIGS / "support_bot.yaml").read_text()
SUPPORT: dict[str, Any] = yaml.safe_load((CONFIGS / "support_bot.yaml").read_text())
REFUND = {"name": "initiate_refund", "description": "Process customer refund requests"}
V3: dict[str, Any] = {
    "product_type": "chatbot",
    "system_prompt": "You are a helpful assistant...",
    "tools": [
        {
            "name": "fetch_order_status",
            "description": "Retrieves order status",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        }
    ],
    "external_integrations": [{"type": "stripe", "credentials_ref": "stripe_test", "enabled": False}],
    "escalation_rules": [{"trigger": "user_frustrated", "threshold": -0.7}, {"trigger": "explicit_request"}],
    "templates": {"fallback": "Sorry?"},
    "llm": {"providers": ["offline"]},
}
VOICE: dict[str, Any] = {
    "product_type": "voicebot",
    "system_prompt": "You are a helpful voice assistant...",
    "tools": [],
    "escalation_rules": [],
    "voice_config": {
        "voice_id": "sarah_professional",
        "background_sound": {"type": "office", "custom_url": None},
        "model_settings": {"speed": 1.0, "clarity_similarity": 0.75},
        "stop_speaking_plan": {"number_of_words": 3},
    },
}


def changed(base: dict[str, Any], *path: Any, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the value at ``path`` (keys and list indexes) replaced."""
    new = copy.deepcopy(base)
    at: Any = new
    for key in path[:-1]:
        at = at[key]
    at[path[-1]] = value
    return new


def with_tools(*tools: dict[str, Any]) -> dict[str, Any]:
    return {**V3, "tools": list(tools)}


FETCH = V3["tools"][0]


def fetch(**parameters: Any) -> dict[str, Any]:
    return {**FETCH, "parameters": {**FETCH["parameters"], **parameters}}


ZENDESK = {**V3, "external_integrations": [*V3["external_integrations"], {"type": "zendesk"}]}
NO_INTEGRATIONS = {**V3, "external_integrations": []}
ORDER_AND_EMAIL = {"order_id": {"type": "string"}, "email": {"type": "string"}}
MORE_RULES = {**V3, "escalation_rules": [*V3["escalation_rules"], {"trigger": "negative_turns", "turns": 2}]}


# -- the diff --------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [SUPPORT, V3, VOICE], ids=["support_bot", "v3", "voicebot"])
def test_a_config_compared_with_itself_has_no_changes(config: dict[str, Any]) -> None:
    comparison = compare(config, copy.deepcopy(config))

    assert comparison == ConfigComparison(diff={"added": {}, "removed": {}, "modified": {}})
    assert (comparison.change_type, comparison.risk_level, comparison.breaking, comparison.changed) == (
        "none",
        "low",
        False,
        False,
    )


def test_the_seeds_compare_example_gives_the_seeds_diff() -> None:
    v4 = {**with_tools(FETCH, REFUND), "system_prompt": "You are a helpful and empathetic assistant..."}

    comparison = compare(V3, v4)

    assert comparison.diff == {
        "added": {"tools": [REFUND]},
        "removed": {},
        "modified": {
            "system_prompt": {
                "old": "You are a helpful assistant...",
                "new": "You are a helpful and empathetic assistant...",
            }
        },
    }
    assert comparison.changes == ("system_prompt_changed", "tool_attached:initiate_refund")
    assert (comparison.change_type, comparison.breaking) == ("hybrid", False)


def test_removed_items_are_listed_under_their_section() -> None:
    comparison = compare(V3, {**V3, "external_integrations": [], "escalation_rules": V3["escalation_rules"][:1]})

    assert comparison.diff["removed"] == {
        "external_integrations": [V3["external_integrations"][0]],
        "escalation_rules": [{"trigger": "explicit_request"}],
    }
    assert comparison.diff["added"] == comparison.diff["modified"] == {}
    assert comparison.changes == ("integration_removed:stripe", "escalation_rule_removed:explicit_request")


def test_items_are_matched_by_key_and_nested_changes_go_by_dotted_path() -> None:
    new = changed(V3, "escalation_rules", 0, "threshold", value=-0.5)
    new = changed(new, "external_integrations", 0, "enabled", value=True)
    new = changed(new, "tools", 0, "description", value="Looks up an order")
    new["escalation_rules"].reverse()  # order alone is no change: rules are matched by trigger

    assert compare(V3, new).diff["modified"] == {
        "tools.fetch_order_status.description": {"old": "Retrieves order status", "new": "Looks up an order"},
        "external_integrations.stripe.enabled": {"old": False, "new": True},
        "escalation_rules.user_frustrated.threshold": {"old": -0.7, "new": -0.5},
    }


def test_nested_mappings_go_by_dotted_path() -> None:
    new = changed(VOICE, "voice_config", "model_settings", "speed", value=0.8)
    new = changed(new, "voice_config", "background_sound", "custom_url", value="https://sounds.example/cafe.mp3")
    del new["voice_config"]["stop_speaking_plan"]

    comparison = compare(VOICE, new)

    assert comparison.diff == {
        "added": {"voice_config.background_sound.custom_url": "https://sounds.example/cafe.mp3"},
        "removed": {"voice_config.stop_speaking_plan": {"number_of_words": 3}},
        "modified": {"voice_config.model_settings.speed": {"old": 1.0, "new": 0.8}},
    }
    assert comparison.changes == (
        "voice_param:background_sound.custom_url",
        "voice_param:model_settings.speed",
        "voice_param:stop_speaking_plan",
    )


def test_a_null_key_is_an_absent_key() -> None:
    assert not compare({**V3, "voice_config": None}, V3).changed
    assert not compare(without(V3, "external_integrations"), {**V3, "external_integrations": []}).changed


def test_repeated_keys_are_told_apart_in_order() -> None:
    turns = [{"trigger": "negative_turns", "turns": 3}, {"trigger": "negative_turns", "turns": 5}]
    new = {**V3, "escalation_rules": [turns[0], {**turns[1], "turns": 6}]}

    comparison = compare({**V3, "escalation_rules": turns}, new)

    assert comparison.diff["modified"] == {"escalation_rules.negative_turns#2.turns": {"old": 5, "new": 6}}


def test_template_and_llm_changes_are_named() -> None:
    new = {**V3, "templates": {"fallback": "Pardon?", "greeting": "Hi"}, "llm": {"providers": ["anthropic"]}}

    assert compare(V3, new).changes == (
        "template_changed:fallback",
        "template_added:greeting",
        "llm_setting:providers",
    )


def without(config: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != key}


# -- change types, breaking changes, risk ----------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "change_type", "sections"),
    [
        ({**V3, "system_prompt": "Be casual."}, "system_prompt", ("prompt",)),
        ({**V3, "templates": {"fallback": "Eh?"}}, "system_prompt", ("prompt",)),
        (with_tools(FETCH, REFUND), "tool", ("tools",)),
        ({**V3, "max_tool_rounds": 5}, "tool", ("tools",)),
        (ZENDESK, "integration", ("integrations",)),
        ({**V3, "llm": {"providers": ["anthropic", "offline"]}}, "integration", ("integrations",)),
        ({**V3, "escalation_rules": [{"trigger": "explicit_request"}]}, "escalation_rule", ("escalation",)),
        ({**V3, "system_prompt": "Be casual.", "tools": []}, "hybrid", ("prompt", "tools")),
        ({**V3, "product_type": "voicebot"}, "hybrid", perms.SECTION_PERMISSION.keys()),
        (V3, "none", ()),
    ],
)  # fmt: skip
def test_each_change_type(new: dict[str, Any], change_type: str, sections: Any) -> None:
    comparison = compare(V3, new)

    assert comparison.change_type == change_type
    assert comparison.changed_sections() == frozenset(sections)


def test_a_voice_parameter_change_is_a_voice_param_change() -> None:
    comparison = compare(VOICE, changed(VOICE, "voice_config", "model_settings", "speed", value=1.2))

    assert (comparison.change_type, comparison.sections, comparison.risk_level) == ("voice_param", ("voice",), "low")


@pytest.mark.parametrize(
    ("new", "reason"),
    [
        ({**V3, "product_type": "voicebot"}, "product_type changed from 'chatbot' to 'voicebot'"),
        (with_tools(REFUND), "tool 'fetch_order_status' removed"),
        ({**V3, "external_integrations": []}, "integration 'stripe' removed"),
        (
            with_tools(fetch(properties=ORDER_AND_EMAIL, required=["order_id", "email"])),
            "tool 'fetch_order_status': new required parameter 'email'",
        ),
        (
            with_tools(fetch(properties={"id": {"type": "string"}}, required=[])),
            "tool 'fetch_order_status': parameter 'order_id' removed",
        ),
        (
            with_tools(fetch(properties={"order_id": {"type": "integer"}})),
            "tool 'fetch_order_status': parameter 'order_id' changed type from string to integer",
        ),
    ],
)  # fmt: skip
def test_each_breaking_change_is_high_risk_with_its_reason(new: dict[str, Any], reason: str) -> None:
    comparison = compare(V3, new)

    assert comparison.breaking and reason in comparison.breaking_reasons
    assert (comparison.risk_level, reason in comparison.risk_reasons) == ("high", True)


def test_an_optional_parameter_that_becomes_required_is_breaking() -> None:
    base = with_tools(fetch(properties=ORDER_AND_EMAIL))
    new = with_tools(fetch(properties=base["tools"][0]["parameters"]["properties"], required=["order_id", "email"]))

    assert compare(base, new).breaking_reasons == ("tool 'fetch_order_status': parameter 'email' became required",)


def test_an_optional_parameter_added_is_a_compatible_medium_risk_tool_change() -> None:
    new = with_tools(fetch(properties=ORDER_AND_EMAIL))

    comparison = compare(V3, new)

    assert (comparison.breaking, comparison.risk_level) == (False, "medium")
    assert comparison.risk_reasons == ("tool 'fetch_order_status' changed compatibly",)
    assert comparison.changes == ("tool_changed:fetch_order_status",)


@pytest.mark.parametrize(
    ("base", "new", "level"),
    [
        (V3, {**V3, "system_prompt": "Be warm."}, "low"),
        (V3, {**V3, "templates": {"fallback": "Eh?"}, "intents": {"pricing": ["price"]}, "name": "bot"}, "low"),
        (VOICE, changed(VOICE, "voice_config", "stop_speaking_plan", "number_of_words", value=5), "low"),
        (V3, with_tools(FETCH, REFUND), "medium"),
        (V3, with_tools({**FETCH, "description": "Looks up an order", "timeout_seconds": 5}), "medium"),
        (V3, MORE_RULES, "medium"),
        (V3, {**V3, "llm": {"providers": ["anthropic", "offline"]}}, "medium"),
        (V3, {**V3, "max_tool_rounds": 4}, "medium"),
        (V3, ZENDESK, "high"),
        (V3, changed(V3, "external_integrations", 0, "enabled", value=True), "high"),
        (V3, with_tools(), "high"),
    ],
)  # fmt: skip
def test_each_risk_level(base: dict[str, Any], new: dict[str, Any], level: str) -> None:
    comparison = compare(base, new)

    assert comparison.risk_level == level
    assert comparison.risk_reasons


def test_risk_reasons_are_those_of_the_level_reached() -> None:
    new = {**with_tools(FETCH, REFUND), "system_prompt": "Be warm.", "external_integrations": []}

    comparison = compare(V3, new)

    assert comparison.risk_reasons == ("integration 'stripe' removed",)


def test_the_canonical_forms_of_the_demo_configs_compare_cleanly() -> None:
    support = config_document(load_config((CONFIGS / "support_bot.yaml").read_text()))
    sales = config_document(load_config((CONFIGS / "sales_bot.yaml").read_text()))

    assert not compare(support, copy.deepcopy(support)).changed
    comparison = compare(support, sales)
    assert comparison.breaking and "tool 'initiate_refund' removed" in comparison.breaking_reasons


# -- properties ------------------------------------------------------------------------------------

NAMES = st.sampled_from(["fetch_order_status", "initiate_refund", "lookup_warranty"])
PROPERTIES = st.dictionaries(
    st.sampled_from(["a", "b", "c"]), st.fixed_dictionaries({"type": st.sampled_from(["string", "number"])})
)
PARAMETERS = st.fixed_dictionaries(
    {"type": st.just("object"), "properties": PROPERTIES},
    optional={"required": st.lists(st.sampled_from(["a", "b"]), unique=True)},
)
TOOL = st.fixed_dictionaries({"name": NAMES}, optional={"description": st.text(max_size=3), "parameters": PARAMETERS})
RULE = st.fixed_dictionaries(
    {"trigger": st.sampled_from(["user_frustrated", "negative_turns", "explicit_request"])},
    optional={"threshold": st.floats(-1, 1), "turns": st.integers(1, 3)},
)
INTEGRATION = st.fixed_dictionaries({"type": st.sampled_from(["stripe", "zendesk"]), "enabled": st.booleans()})
SETTINGS = st.fixed_dictionaries(
    {}, optional={"speed": st.floats(0, 2), "auto_mode": st.booleans(), "model": st.none() | st.just("gpt-4")}
)
VOICE_CONFIG = st.fixed_dictionaries(
    {}, optional={"model_settings": SETTINGS, "max_tokens": st.integers(1, 200), "voice_id": st.text(max_size=2)}
)
CONFIG = st.fixed_dictionaries(
    {"product_type": st.sampled_from(["chatbot", "voicebot"])},
    optional={
        "system_prompt": st.sampled_from(["Help.", "Sell."]),
        "tools": st.lists(TOOL, max_size=3),
        "escalation_rules": st.lists(RULE, max_size=3),
        "external_integrations": st.none() | st.lists(INTEGRATION, max_size=2),
        "voice_config": st.none() | VOICE_CONFIG,
        "templates": st.dictionaries(st.sampled_from(["fallback", "greeting"]), st.sampled_from(["Hi", "Eh?"])),
        "max_tool_rounds": st.integers(1, 3),
    },
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)
TOP_KEYS = st.sampled_from(["product_type", "tools", "escalation_rules", "external_integrations", "llm", "x"])
ANYTHING = st.dictionaries(TOP_KEYS, JSON, max_size=4)


# Generation is timed: on a shared machine under load it can be slow without anything being wrong.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_mirrored(a: dict[str, Any], b: dict[str, Any]) -> None:
    forward, backward = compare(a, b), compare(b, a)

    assert forward.diff["added"] == backward.diff["removed"]
    assert forward.diff["removed"] == backward.diff["added"]
    assert forward.diff["modified"] == {
        path: {"old": change["new"], "new": change["old"]} for path, change in backward.diff["modified"].items()
    }
    assert (forward.change_type, forward.sections) == (backward.change_type, backward.sections)
    assert forward.changed == bool(forward.diff["added"] or forward.diff["removed"] or forward.diff["modified"])


@PROPERTY
@given(CONFIG, CONFIG)
def test_comparing_the_other_way_swaps_added_and_removed(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert_mirrored(a, b)


@PROPERTY
@given(ANYTHING, ANYTHING)
def test_compare_takes_any_mapping_and_still_mirrors(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert_mirrored(a, b)
    assert not compare(a, copy.deepcopy(a)).changed


@PROPERTY
@given(CONFIG)
def test_a_generated_config_compared_with_itself_is_unchanged_and_low(a: dict[str, Any]) -> None:
    comparison = compare(a, copy.deepcopy(a))

    assert (comparison.changes, comparison.change_type, comparison.risk_level) == ((), "none", "low")


@PROPERTY
@given(CONFIG, CONFIG)
def test_each_change_has_its_own_risk_and_the_comparison_has_the_highest(a: dict[str, Any], b: dict[str, Any]) -> None:
    comparison, each = compare(a, b), change_risks(a, b)

    assert {c.change for c in each} == set(comparison.changes)
    highest = max((c.risk_level for c in each), key=RISK_LEVELS.index, default="low")
    assert highest == comparison.risk_level
    assert {r for c in each if c.breaking for r in c.reasons} == set(comparison.breaking_reasons)


def test_each_change_of_the_seeds_compare_example_with_its_risk() -> None:
    v4 = {**with_tools(FETCH, REFUND), "system_prompt": "You are a helpful and empathetic assistant..."}
    each = {(c.path, c.item): c for c in change_risks(V3, v4)}
    assert (each["tools", "initiate_refund"].risk_level, each["tools", "initiate_refund"].kind) == ("medium", "added")
    assert each["tools", "initiate_refund"].type == "tool_change"
    assert each["tools", "initiate_refund"].new == REFUND
    prompt = each["system_prompt", None]
    assert (prompt.risk_level, prompt.type, prompt.old, prompt.new) == (
        "low",
        "system_prompt_change",
        "You are a helpful assistant...",
        "You are a helpful and empathetic assistant...",
    )


# -- permissions ----------------------------------------------------------------------------------

SEED_CONFIG_MANAGER = {
    "view_config": True,
    "edit_system_prompt": True,
    "add_remove_tools": True,
    "modify_integrations": False,
    "change_voice_params": True,
    "deploy_to_production": False,
    "rollback_versions": True,
    "manage_permissions": False,
}


@pytest.mark.parametrize(
    ("roles", "granted"),
    [
        (["org_admin"], perms.ALL),
        (["platform_engineer"], perms.ALL),
        (["config_manager"], {p for p, on in SEED_CONFIG_MANAGER.items() if on}),
        (["config_viewer"], {"view_config"}),
        (["support_agent"], {"view_config"}),
        (["customer"], set()),
        (["analyst", "service"], set()),
        (["config_viewer", "config_manager"], {p for p, on in SEED_CONFIG_MANAGER.items() if on}),
    ],
)
def test_the_default_grants_of_each_role(roles: list[str], granted: set[str]) -> None:
    assert perms.role_defaults_of(roles) == granted
    assert perms.effective(roles) == granted


def test_the_matrix_of_a_config_manager_is_the_seeds() -> None:
    assert perms.matrix(perms.effective(["config_manager"])) == SEED_CONFIG_MANAGER
    assert perms.matrix(perms.effective(["org_admin"])) == dict.fromkeys(perms.PERMISSIONS, True)


def test_overrides_grant_and_revoke_per_member() -> None:
    revoked = perms.effective(["config_manager"], {"add_remove_tools": False, "rollback_versions": False})
    granted = perms.effective(["config_viewer"], {"change_voice_params": True})
    full_matrix = perms.effective(["org_admin"], {**SEED_CONFIG_MANAGER, "add_remove_tools": False})

    assert revoked == {"view_config", "edit_system_prompt", "change_voice_params"}
    assert granted == {"view_config", "change_voice_params"}
    assert full_matrix == revoked | {"rollback_versions"}
    assert perms.effective({"view_config", "deploy_to_production"}, {}) == {"view_config", "deploy_to_production"}


def test_an_unknown_permission_override_is_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        perms.effective(["org_admin"], {"launch_rockets": True})

    assert "config_permissions.launch_rockets" in raised.value.fields


@pytest.mark.parametrize(
    ("new", "required"),
    [
        ({**V3, "system_prompt": "Be warm."}, {"edit_system_prompt"}),
        ({**V3, "escalation_rules": []}, {"edit_system_prompt"}),
        (with_tools(FETCH, REFUND), {"add_remove_tools"}),
        ({**V3, "external_integrations": []}, {"modify_integrations"}),
        ({**V3, "llm": {"providers": ["anthropic"]}}, {"modify_integrations"}),
        ({**V3, "voice_config": {"max_tokens": 100}}, {"change_voice_params"}),
        ({**V3, "system_prompt": "Be warm.", "tools": []}, {"edit_system_prompt", "add_remove_tools"}),
        (
            {**V3, "product_type": "voicebot"},
            {"edit_system_prompt", "add_remove_tools", "modify_integrations", "change_voice_params"},
        ),
        (V3, set()),
    ],
)
def test_the_permissions_a_change_needs(new: dict[str, Any], required: set[str]) -> None:
    assert perms.required_for(compare(V3, new)) == required


def test_a_config_manager_may_not_touch_integrations() -> None:
    manager = perms.effective(["config_manager"])

    assert perms.missing_permissions(manager, compare(V3, NO_INTEGRATIONS)) == {"modify_integrations"}
    assert perms.missing_permissions(manager, compare(V3, with_tools(FETCH, REFUND))) == frozenset()


def test_the_approvals_each_risk_level_needs() -> None:
    assert perms.approvals_needed("low") == frozenset()
    assert perms.approvals_needed("medium") == {frozenset({"org_admin"})}
    assert perms.approvals_needed("high") == {frozenset({"org_admin"}), frozenset({"platform_engineer"})}


def test_high_risk_needs_two_different_approvers() -> None:
    both = {"ana": ["org_admin", "platform_engineer"]}

    assert perms.missing_approvals("high", both) in ({frozenset({"org_admin"})}, {frozenset({"platform_engineer"})})
    assert perms.missing_approvals("high", {**both, "bo": ["platform_engineer"]}) == frozenset()
    assert perms.missing_approvals("high", {"bo": ["platform_engineer"]}) == {frozenset({"org_admin"})}
    assert perms.missing_approvals("medium", {"bo": ["platform_engineer"]}) == {frozenset({"org_admin"})}
    assert perms.missing_approvals("medium", {"ana": ["org_admin"]}) == frozenset()
    assert perms.missing_approvals("low", {}) == frozenset()


@pytest.mark.timeout(30)
async def test_a_configs_catastrophic_pattern_runs_in_linear_time() -> None:
    """``(a+)+$`` doubles its time with each character under backtracking (25 characters stalled the
    API for 2.45 s); in the linear-time engine a long message is answered at once."""
    from agents.graph import chain_for, run_turn
    from agents.tools import ToolRegistry
    from domain.bot import load_config

    text = SUPPORT_YAML.replace("intents:\n", "intents:\n  greedy: ['(a+)+$']\n", 1)
    config = load_config(text)
    said = "a" * 5_000 + "!"

    result = await run_turn(config, [], said, chain=chain_for(config, {}), tools=ToolRegistry())

    assert result.reply


def test_a_pattern_the_linear_time_engine_cannot_run_is_refused_naming_the_field() -> None:
    from domain.bot import validate_config

    raw = yaml.safe_load(SUPPORT_YAML)
    raw["intents"]["lookbehind"] = [r"(?<!not )urgent"]
    raw["tools"][0]["parameters"]["properties"]["order_id"]["pattern"] = r"^(\d)\1$"
    issues = {i.field: i.message for i in validate_config(raw) if i.severity == "error"}
    assert "RE2" in issues["intents.lookbehind[0]"]
    assert "RE2" in issues["tools[0].parameters.properties.order_id.pattern"]


def test_removing_an_escalation_or_cross_sell_rule_is_a_medium_risk_change() -> None:
    from domain.bot_changes import compare

    raw = yaml.safe_load(SUPPORT_YAML)
    fewer_rules = {**raw, "escalation_rules": raw["escalation_rules"][1:]}
    assert compare(raw, fewer_rules).risk_level == "medium"
    sales = yaml.safe_load((CONFIGS / "sales_bot.yaml").read_text())
    fewer_offers = {**sales, "cross_sell": sales["cross_sell"][1:]}
    assert compare(sales, fewer_offers).risk_level == "medium"
