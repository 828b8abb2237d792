"""Who may change an agent config, and whose approval a change needs; members' overrides. Pure.

The seed's permission matrix (Client Configuration Portal): eight permissions, granted by role and
overridable per member. A member's grants are ``effective(roles, overrides)``; the
overrides are what an organization admin set for that member (permission changes are events, so
the overrides are their fold), ``True`` granting and ``False`` revoking. A full matrix, as the
seed's ``PUT /client-config/permissions/{user_id}`` sends it, is an override of every permission.

Approvals (the issue, after the seed's approval workflow): low-risk changes apply at once; medium
need an organization admin's approval; high need an organization admin and a platform engineer,
two different people.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Literal, get_args

import msgspec

from domain.bot_changes import ConfigComparison, RiskLevel, Section
from domain.errors import PermissionDeniedError, ValidationError
from domain.messages import Command, Decider, Event

Permission = Literal[
    "view_config",
    "edit_system_prompt",
    "add_remove_tools",
    "modify_integrations",
    "change_voice_params",
    "deploy_to_production",
    "rollback_versions",
    "manage_permissions",
]
PERMISSIONS: tuple[Permission, ...] = get_args(Permission)
ALL: frozenset[Permission] = frozenset(PERMISSIONS)
ORG_ADMIN = "org_admin"
PLATFORM_ENGINEER = "platform_engineer"

ROLE_DEFAULTS: Mapping[str, frozenset[Permission]] = MappingProxyType(
    {
        ORG_ADMIN: ALL,
        PLATFORM_ENGINEER: ALL,
        "config_manager": frozenset(
            {"view_config", "edit_system_prompt", "add_remove_tools", "change_voice_params", "rollback_versions"}
        ),
        "config_viewer": frozenset({"view_config"}),
        "support_agent": frozenset({"view_config"}),
    }
)  # any other role: nothing

# The permission each section of a change needs. Escalation rules are conversation behaviour, edited
# with the prompt (the seed's config manager adds them and has no integration rights).
SECTION_PERMISSION: Mapping[Section, Permission] = MappingProxyType(
    {
        "prompt": "edit_system_prompt",
        "tools": "add_remove_tools",
        "integrations": "modify_integrations",
        "voice": "change_voice_params",
        "escalation": "edit_system_prompt",
    }
)

APPROVALS: Mapping[RiskLevel, frozenset[frozenset[str]]] = MappingProxyType(
    {
        "low": frozenset(),
        "medium": frozenset({frozenset({ORG_ADMIN})}),
        "high": frozenset({frozenset({ORG_ADMIN}), frozenset({PLATFORM_ENGINEER})}),
    }
)


def role_defaults_of(roles: Iterable[str]) -> frozenset[Permission]:
    """What a member holding these roles may do before any override (an unknown role: nothing)."""
    return frozenset(p for role in roles for p in ROLE_DEFAULTS.get(role, ()))


def effective(role_defaults: Iterable[str], overrides: Mapping[str, bool] | None = None) -> frozenset[Permission]:
    """A member's grants: ``role_defaults`` (permission names, or role names standing for their
    defaults; the two never share a name) with the member's overrides applied. An unknown
    permission name in the overrides is refused."""
    overrides = overrides or {}
    unknown = sorted(name for name in overrides if name not in ALL)
    if unknown:
        raise ValidationError(
            f"unknown permission(s): {', '.join(unknown)}",
            fields={f"config_permissions.{name}": f"not one of {', '.join(PERMISSIONS)}" for name in unknown},
        )
    given = set(role_defaults)
    base = {p for p in PERMISSIONS if p in given} | role_defaults_of(given)
    return frozenset(p for p in PERMISSIONS if (p in base or overrides.get(p)) and overrides.get(p, True))


def matrix(granted: Iterable[Permission]) -> dict[Permission, bool]:
    """The seed's ``config_permissions`` object: every permission, true or false."""
    held = set(granted)
    return {permission: permission in held for permission in PERMISSIONS}


def required_for(comparison: ConfigComparison) -> set[Permission]:
    """The edit permissions a change needs (none when nothing changed). Deploying it is a further
    ``deploy_to_production``; that is the deploy command's to ask."""
    return {SECTION_PERMISSION[section] for section in comparison.sections}


def missing_permissions(granted: Iterable[Permission], comparison: ConfigComparison) -> frozenset[Permission]:
    return frozenset(required_for(comparison) - set(granted))


def approvals_needed(risk_level: RiskLevel) -> frozenset[frozenset[str]]:
    """One role set per approval: each needs a different approver holding one of its roles."""
    return APPROVALS[risk_level]


def missing_approvals(risk_level: RiskLevel, approvers: Mapping[str, Iterable[str]]) -> frozenset[frozenset[str]]:
    """The approvals still owed, given who approved (approver id -> roles); one approver gives one
    approval, so an admin who is also a platform engineer does not approve a high-risk change alone."""
    needed = sorted(approvals_needed(risk_level), key=sorted)
    holders = [frozenset(roles) for _, roles in sorted(approvers.items())]
    slot_of: dict[int, int] = {}  # approver index -> approval index: a maximum matching (Kuhn)

    def place(slot: int, tried: set[int]) -> bool:
        for who, roles in enumerate(holders):
            if who not in tried and needed[slot] & roles:
                tried.add(who)
                if who not in slot_of or place(slot_of[who], tried):
                    slot_of[who] = slot
                    return True
        return False

    for slot in range(len(needed)):
        place(slot, set())
    filled = set(slot_of.values())
    return frozenset(approval for index, approval in enumerate(needed) if index not in filled)


# The members' overrides: one aggregate per tenant ---------------------------------------------
#
# A tenant's config permission overrides, as a pure decider: permission changes are events too.
#
# Each member's permissions start from their roles' defaults (``domain.permissions``); an
# organization admin (anyone holding ``manage_permissions``) may grant or revoke single permissions
# per member, as in the seed's "Update Member Permissions". Those overrides live here, one
# aggregate per tenant, so who could do what at any moment can be read back from the history.
# Its events were first stored from ``domain.config_members`` (their topics keep that name: ``streams.codec``).
STORED_AS = "domain.config_members"
AGGREGATE_TYPE = "config_members"
MEMBERS_ID = "members"
MANAGE = "manage_permissions"


class MemberPermissionsSet(Event, frozen=True, kw_only=True):
    user_id: str
    permissions: dict[str, bool]
    set_by: str
    at: datetime

    time_field = "at"


class SetMemberPermissions(Command, frozen=True, kw_only=True):
    user_id: str
    permissions: dict[str, bool]
    known: frozenset[str]  # the permission names there are
    set_by: str
    set_by_permissions: frozenset[str]
    at: datetime


class Members(msgspec.Struct, frozen=True):
    overrides: dict[str, dict[str, bool]] = {}


def initial() -> Members:
    return Members()


def decide(command: Command, state: Members) -> list[Event]:
    if not isinstance(command, SetMemberPermissions):
        raise ValidationError(f"{type(command).__name__} is not a config members command")
    if MANAGE not in command.set_by_permissions:
        raise PermissionDeniedError("only a member with manage_permissions may change permissions", missing=[MANAGE])
    unknown = sorted(set(command.permissions) - command.known)
    if unknown:
        raise ValidationError(
            "unknown permissions", fields={f"config_permissions.{name}": "unknown permission" for name in unknown}
        )
    if state.overrides.get(command.user_id) == command.permissions:
        return []
    return [
        MemberPermissionsSet(
            user_id=command.user_id, permissions=dict(command.permissions), set_by=command.set_by, at=command.at
        )
    ]


def evolve(state: Members, event: Event) -> Members:
    if isinstance(event, MemberPermissionsSet):
        return Members(overrides={**state.overrides, event.user_id: dict(event.permissions)})
    return state


DECIDER = Decider(type_name=AGGREGATE_TYPE, state_type=Members, initial=initial, evolve=evolve, decide=decide)
