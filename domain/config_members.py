"""A tenant's config permission overrides, as a pure decider: permission changes are events too.

Each member's permissions start from their roles' defaults (``domain.config_permissions``); an
organization admin (anyone holding ``manage_permissions``) may grant or revoke single permissions
per member, as in the seed's "Update Member Permissions". Those overrides live here, one
aggregate per tenant, so who could do what at any moment can be read back from the history.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.errors import PermissionDeniedError, ValidationError
from domain.messages import Command, Decider, Event

AGGREGATE_TYPE = "config_members"
MEMBERS_ID = "members"
MANAGE = "manage_permissions"


class MemberPermissionsSet(Event, frozen=True, kw_only=True):
    user_id: str
    permissions: dict[str, bool]
    set_by: str
    at: datetime


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
