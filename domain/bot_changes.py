"""Two versions of an agent config compared: the diff, the kinds of change, what breaks, the risk.

Pure. ``compare(old, new)`` takes mappings in the config's canonical form (``config_document`` of a
loaded ``AgentConfig``: defaults filled in, so a default spelled out does not read as a change; a
key set to null counts as absent) and returns a ``ConfigComparison``.

The diff has the seed's shape: ``{"added": {...}, "removed": {...}, "modified": {path: {"old",
"new"}}}``, keyed by dotted path (``voice_config.model_settings.speed``). Tools are matched by
name, escalation rules by trigger, integrations by type and cross-sell rules by product; whole
items attached or dropped are listed under the section (``added["tools"] == [{...}]``), changes
inside a matched item go by path (``tools.initiate_refund.description``).

Breaking (the change can break what runs against the config): the product type changed; a tool
removed; a tool gains a required parameter (or an optional one becomes required), loses one, or a
parameter changes type; an integration removed.

Risk (the seed's approval workflow: low applies at once, medium needs an organization admin, high
an admin and a platform engineer):

- high: anything breaking, and any change to the external integrations (the seed's "integration
  modifications"; an integration is an outside service that sees the conversation).
- medium: a tool attached or changed compatibly (the seed's "tool additions"); escalation rules;
  LLM settings and the tool-round limit; cross-sell rules; any key these rules do not know.
- low: wording (system prompt, reply templates, intent phrases, name) and voice parameters.

Sections are the permission areas a change touches: prompt (system prompt, templates, intents,
name, cross-sell), tools (tools, tool-round limit), integrations (external integrations, LLM
providers: both send the conversation to an outside service), voice, escalation. A product type
change touches them all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import msgspec

ChangeType = Literal["system_prompt", "tool", "voice_param", "integration", "escalation_rule", "hybrid", "none"]
RiskLevel = Literal["low", "medium", "high"]
Section = Literal["prompt", "tools", "integrations", "voice", "escalation"]
Verb = Literal["added", "removed", "modified"]

SECTIONS: tuple[Section, ...] = ("prompt", "tools", "integrations", "voice", "escalation")
RISK_LEVELS: tuple[RiskLevel, ...] = ("low", "medium", "high")
CHANGE_TYPE_OF: Mapping[Section, ChangeType] = {
    "prompt": "system_prompt",
    "tools": "tool",
    "integrations": "integration",
    "voice": "voice_param",
    "escalation": "escalation_rule",
}
KEYED: Mapping[str, str] = {  # list sections whose items are matched by a key, not by position
    "tools": "name",
    "escalation_rules": "trigger",
    "external_integrations": "type",
    "cross_sell": "product",
}


class _Field(NamedTuple):
    section: Section
    risk: RiskLevel
    reason: str
    noun: str | None = None  # names a keyed item or a mapping key in changes: "template_changed:greeting"


FIELDS: Mapping[str, _Field] = {
    "system_prompt": _Field("prompt", "low", "system prompt wording changed"),
    "name": _Field("prompt", "low", "name changed"),
    "templates": _Field("prompt", "low", "reply templates changed", "template"),
    "intents": _Field("prompt", "low", "intent phrases changed", "intent"),
    "cross_sell": _Field("prompt", "medium", "cross-sell rules changed", "cross_sell"),
    "tools": _Field("tools", "medium", "tools changed", "tool"),
    "max_tool_rounds": _Field("tools", "medium", "tool-round limit changed"),
    "external_integrations": _Field("integrations", "high", "integrations changed", "integration"),
    "llm": _Field("integrations", "medium", "LLM settings changed"),
    "voice_config": _Field("voice", "low", "voice parameters changed"),
    "escalation_rules": _Field("escalation", "medium", "escalation rules changed", "escalation_rule"),
}
SCALARS = frozenset({"product_type", "system_prompt", "name", "max_tool_rounds"})  # "<key>_changed", whatever the verb


class ConfigComparison(msgspec.Struct, frozen=True, kw_only=True):
    """What changed from one config version to the next; ``compare(x, x)`` changes nothing."""

    diff: dict[str, dict[str, Any]]
    changes: tuple[str, ...] = ()  # "tool_attached:initiate_refund", "voice_param:model_settings.speed", ...
    change_type: ChangeType = "none"
    sections: tuple[Section, ...] = ()  # in SECTIONS order
    breaking: bool = False
    breaking_reasons: tuple[str, ...] = ()
    risk_level: RiskLevel = "low"
    risk_reasons: tuple[str, ...] = ()  # the reasons for the level reached, not the lesser ones

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def changed_sections(self) -> frozenset[Section]:
        return frozenset(self.sections)


class Entry(NamedTuple):
    """One difference: a key or a matched item added, removed or modified at ``path``."""

    verb: Verb
    path: tuple[str, ...]
    old: Any
    new: Any
    item: bool = False  # a whole item of a keyed list section (path: section, key)


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> ConfigComparison:
    entries = differences(old, new)
    if not entries:
        return ConfigComparison(diff={"added": {}, "removed": {}, "modified": {}})
    breaks = _breaking_reasons(old, new, entries)
    sections = _sections(entries)
    risks: list[tuple[RiskLevel, str]] = [*(("high", reason) for reason in breaks), *_risks(entries, breaks)]
    level: RiskLevel = max((level for level, _ in risks), key=RISK_LEVELS.index, default="low")
    return ConfigComparison(
        diff=_diff(entries),
        changes=_unique(_change_name(entry) for entry in entries),
        change_type=CHANGE_TYPE_OF[sections[0]] if len(sections) == 1 else "hybrid",
        sections=sections,
        breaking=bool(breaks),
        breaking_reasons=breaks,
        risk_level=level,
        risk_reasons=_unique(reason for at, reason in risks if at == level),
    )


# -- the walk -------------------------------------------------------------------------------------


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Entry]:
    """Every difference, in document order (old's keys, then those only new has), level by level."""
    entries: list[Entry] = []
    _walk_mapping(old, new, (), entries)
    return entries


def _walk_mapping(old: Mapping[Any, Any], new: Mapping[Any, Any], path: tuple[str, ...], out: list[Entry]) -> None:
    for key in dict.fromkeys([*old, *new]):
        before, after, at = old.get(key), new.get(key), (*path, str(key))
        if not path and key in KEYED and (items := _items(before)) is not None and (later := _items(after)) is not None:
            _walk_keyed(key, items, later, out)
        elif after is None:
            if before is not None:
                out.append(Entry("removed", at, before, None))
        elif before is None:
            out.append(Entry("added", at, None, after))
        else:
            _walk_value(before, after, at, out)


def _walk_value(old: Any, new: Any, path: tuple[str, ...], out: list[Entry]) -> None:
    if same(old, new):
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        _walk_mapping(old, new, path, out)
    else:
        out.append(Entry("modified", path, old, new))


def _walk_keyed(section: str, old: list[Any], new: list[Any], out: list[Entry]) -> None:
    old_items, new_items = _index(old, KEYED[section]), _index(new, KEYED[section])
    if old_items is None or new_items is None:  # an item without its key: compare the lists whole
        _walk_value(old, new, (section,), out)
        return
    for key in dict.fromkeys([*old_items, *new_items]):
        if key not in new_items:
            out.append(Entry("removed", (section, key), old_items[key], None, item=True))
        elif key not in old_items:
            out.append(Entry("added", (section, key), None, new_items[key], item=True))
        else:
            _walk_value(old_items[key], new_items[key], (section, key), out)


def _items(value: Any) -> list[Any] | None:
    """A keyed section's items (absent or null: none), or None when it is not a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else None


def _index(items: Sequence[Any], key: str) -> dict[str, Mapping[str, Any]] | None:
    """Items by their key; a repeated key gets ``#2``, ``#3``... in order. None if an item has no key."""
    index: dict[str, Mapping[str, Any]] = {}
    for item in items:
        value = item.get(key) if isinstance(item, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return None
        name, seen = str(value), 1
        while (name if seen == 1 else f"{name}#{seen}") in index:
            seen += 1
        index[name if seen == 1 else f"{name}#{seen}"] = item
    return index


def same(a: Any, b: Any) -> bool:
    """Equal as config values: ``True`` is not ``1``, NaN is NaN, a null key is an absent one."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = {k for k, v in a.items() if v is not None} | {k for k, v in b.items() if v is not None}
        return all(same(a.get(k), b.get(k)) for k in keys)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping | list | tuple) or isinstance(b, Mapping | list | tuple):
        return False
    return bool(a == b)


# -- reading the entries --------------------------------------------------------------------------


def _diff(entries: list[Entry]) -> dict[str, dict[str, Any]]:
    added: dict[str, Any] = {}
    removed: dict[str, Any] = {}
    modified: dict[str, Any] = {}
    for entry in entries:
        at = ".".join(entry.path)
        match entry:
            case Entry(verb="added", item=True):
                added.setdefault(entry.path[0], []).append(entry.new)
            case Entry(verb="removed", item=True):
                removed.setdefault(entry.path[0], []).append(entry.old)
            case Entry(verb="added"):
                added[at] = entry.new
            case Entry(verb="removed"):
                removed[at] = entry.old
            case _:
                modified[at] = {"old": entry.old, "new": entry.new}
    return {"added": added, "removed": removed, "modified": modified}


def _change_name(entry: Entry) -> str:
    top, rest = entry.path[0], entry.path[1:]
    verb = {"added": "added", "removed": "removed", "modified": "changed"}[entry.verb]
    noun = FIELDS[top].noun if top in FIELDS else None
    if not rest:
        return f"{top}_changed" if top in SCALARS else f"{top}_{verb}"
    if top == "voice_config":
        return f"voice_param:{'.'.join(rest)}"
    if top == "llm":
        return f"llm_setting:{'.'.join(rest)}"
    if noun is None:
        return f"{top}_changed:{'.'.join(rest)}"
    if len(rest) > 1:
        verb = "changed"
    return f"{noun}_{'attached' if (noun, verb) == ('tool', 'added') else verb}:{rest[0]}"


def _sections(entries: list[Entry]) -> tuple[Section, ...]:
    touched: set[Section] = set()
    for entry in entries:
        top = entry.path[0]
        if top == "product_type":
            touched.update(SECTIONS)
        else:
            touched.add(FIELDS[top].section if top in FIELDS else "prompt")
    return tuple(section for section in SECTIONS if section in touched)


def _breaking_reasons(old: Mapping[str, Any], new: Mapping[str, Any], entries: list[Entry]) -> tuple[str, ...]:
    reasons: list[str] = []
    for entry in entries:
        match entry:
            case Entry(path=("product_type",)):
                reasons.append(f"product_type changed from {entry.old!r} to {entry.new!r}")
            case Entry(verb="removed", item=True, path=("tools", name)):
                reasons.append(f"tool '{name}' removed")
            case Entry(verb="removed", item=True, path=("external_integrations", kind)):
                reasons.append(f"integration '{kind}' removed")
    old_tools, new_tools = (_index(_items(c.get("tools")) or [], "name") for c in (old, new))
    if old_tools is not None and new_tools is not None:
        for name, tool in old_tools.items():
            if name in new_tools:
                reasons.extend(parameter_breaks(name, tool.get("parameters"), new_tools[name].get("parameters")))
    return _unique(reasons)


def parameter_breaks(tool: str, old: Any, new: Any) -> list[str]:
    """Why a tool's new parameter schema can break its callers: a parameter removed or retyped, a new
    required one. Adding an optional parameter or changing descriptions is compatible."""
    old_properties, old_required = _parameters(old)
    new_properties, new_required = _parameters(new)
    reasons: list[str] = []
    for name, prop in old_properties.items():
        if name not in new_properties:
            reasons.append(f"tool '{tool}': parameter '{name}' removed")
        elif not same(_type_of(prop), _type_of(new_properties[name])):
            old_type, new_type = _type_of(prop), _type_of(new_properties[name])
            reasons.append(f"tool '{tool}': parameter '{name}' changed type from {old_type} to {new_type}")
    for name in sorted(new_required - old_required):
        if name in old_properties:
            reasons.append(f"tool '{tool}': parameter '{name}' became required")
        else:
            reasons.append(f"tool '{tool}': new required parameter '{name}'")
    return reasons


def _parameters(schema: Any) -> tuple[Mapping[str, Any], set[str]]:
    if not isinstance(schema, Mapping):
        return {}, set()
    properties = schema.get("properties")
    required = schema.get("required")
    return (
        {str(k): v for k, v in properties.items()} if isinstance(properties, Mapping) else {},
        {str(name) for name in required} if isinstance(required, list) else set(),
    )


def _type_of(prop: Any) -> Any:
    return prop.get("type") if isinstance(prop, Mapping) else None


def _risks(entries: list[Entry], breaks: Sequence[str]) -> list[tuple[RiskLevel, str]]:
    risks: list[tuple[RiskLevel, str]] = []
    broken = {reason.split("'")[1] for reason in breaks if reason.startswith("tool '")}
    for entry in entries:
        top = entry.path[0]
        match entry:
            case (
                Entry(path=("product_type",))
                | Entry(verb="removed", item=True, path=("tools", _))
                | Entry(verb="removed", item=True, path=("external_integrations", _))
            ):
                continue  # breaking: high already
            case Entry(item=True, path=("tools", name)):
                risks.append(("medium", f"tool '{name}' attached: a new capability"))
            case Entry(path=("tools", name, *_)):
                if name not in broken:
                    risks.append(("medium", f"tool '{name}' changed compatibly"))
            case Entry(path=("external_integrations", kind, *_)):
                risks.append(("high", f"integration '{kind}' {'added' if entry.item else 'changed'}"))
            case _ if top in FIELDS:
                risks.append((FIELDS[top].risk, FIELDS[top].reason))
            case _:
                risks.append(("medium", f"setting '{top}' changed"))
    return risks


def _unique(items: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# -- each change with its own risk --------------------------------------------------------------


# A value in a config document: whatever its YAML holds (text, number, boolean, null, list, mapping).
ConfigValue = Any

# The seed's change classification (Client Configuration Portal): the type of each change.
SeedChangeType = Literal[
    "system_prompt_change",
    "tool_change",
    "voice_parameter_change",
    "external_service_change",
    "escalation_rule_change",
    "product_type_change",
]
SEED_CHANGE_TYPES: Mapping[Section, SeedChangeType] = {
    "prompt": "system_prompt_change",
    "tools": "tool_change",
    "integrations": "external_service_change",
    "voice": "voice_parameter_change",
    "escalation": "escalation_rule_change",
}


def seed_change_type(key: str) -> SeedChangeType:
    """The seed's change type of a change to the config's top-level ``key``."""
    if key == "product_type":
        return "product_type_change"
    return SEED_CHANGE_TYPES[FIELDS[key].section if key in FIELDS else "prompt"]


class ChangeRisk(msgspec.Struct, frozen=True, kw_only=True):
    """One change of a comparison with its own risk: ``path`` is the diff's key (a whole item added
    or removed: its section, with the item's key in ``item``), ``change`` its name in ``changes``,
    ``type`` the seed's change type. ``reasons`` are why it has its level (a breaking change: what
    breaks)."""

    kind: Verb
    path: str
    item: str | None = None
    change: str
    type: SeedChangeType
    old: ConfigValue = None
    new: ConfigValue = None
    risk_level: RiskLevel
    reasons: tuple[str, ...] = ()
    breaking: bool = False


def change_risks(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ChangeRisk]:
    """Every difference of ``compare(old, new)``, in its order, each with the level the rules give
    it alone: the comparison's ``risk_level`` is the highest of them."""
    entries = differences(old, new)
    breaks = _breaking_reasons(old, new, entries)
    out: list[ChangeRisk] = []
    for entry in entries:
        own = _own_breaks(entry, breaks)
        risks: list[tuple[RiskLevel, str]] = [("high", reason) for reason in own] or _risks([entry], ())
        level: RiskLevel = max((at for at, _ in risks), key=RISK_LEVELS.index, default="low")
        out.append(
            ChangeRisk(
                kind=entry.verb,
                path=entry.path[0] if entry.item else ".".join(entry.path),
                item=entry.path[1] if entry.item else None,
                change=_change_name(entry),
                type=seed_change_type(entry.path[0]),
                old=entry.old,
                new=entry.new,
                risk_level=level,
                reasons=_unique(reason for at, reason in risks if at == level),
                breaking=bool(own),
            )
        )
    return out


def _own_breaks(entry: Entry, breaks: Sequence[str]) -> list[str]:
    """The breaking reasons that are this change's."""
    match entry:
        case Entry(path=("product_type",)):
            return [reason for reason in breaks if reason.startswith("product_type ")]
        case Entry(verb="removed", item=True, path=("tools", name)):
            return [f"tool '{name}' removed"]
        case Entry(verb="removed", item=True, path=("external_integrations", kind)):
            return [f"integration '{kind}' removed"]
        case Entry(path=("tools", name, "parameters", *_)):
            return [reason for reason in breaks if reason.startswith(f"tool '{name}': ")]
    return []
