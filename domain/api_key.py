"""API keys: how a tenant's own services call Parley (seed 001's service-to-service keys).

One aggregate per tenant (``api_keys``, id ``keyring``) holds every key the tenant made: its name,
scopes, rate-limit tier, the digest of its secret (the secret itself is shown once, at creation or
rotation, and never stored), and whether it is active, rotated (with a grace period during which
the old secret still works) or revoked. Its events are the keys' audit history.

Scopes name what a key may do, each the roles it acts with (``SCOPES``); a key never manages keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from domain.errors import IllegalStateError, NotFoundError, ValidationError
from domain.messages import Command, Decider, Event

AGGREGATE_TYPE = "api_keys"
KEYRING = "keyring"

# A scope, and the roles a request made with a key of that scope acts with.
SCOPES: dict[str, tuple[str, ...]] = {
    "conversations": ("service",),  # start, continue and read the tenant's conversations
    "analytics": ("analyst",),  # read analytics and conversations
    "chat_sessions": ("chat_sessions",),  # mint web-chat customer session tokens
    "configs": ("platform_engineer",),  # read and change bot configs
}
Tier = Literal["basic", "standard", "enterprise"]
# Requests a minute per key for each tier (seed 004: 1,000 API requests a minute per tenant).
TIERS: dict[str, int] = {"basic": 60, "standard": 1_000, "enterprise": 10_000}
MAX_KEYS = 100


class ApiKeyCreated(Event, frozen=True, kw_only=True):
    key_id: str
    name: str
    scopes: list[str]
    tier: str
    # sha256 of the secret, hex; and the key's first characters, to recognise it in a list.
    secret_digest: str
    prefix: str
    created_by: str = ""
    # The key this one replaced (a rotation).
    replaces: str | None = None
    expires_at: datetime | None = None
    created_at: datetime

    time_field = "created_at"


class ApiKeyScoped(Event, frozen=True, kw_only=True):
    key_id: str
    scopes: list[str]
    tier: str
    changed_by: str = ""
    at: datetime

    time_field = "at"


class ApiKeyRotated(Event, frozen=True, kw_only=True):
    """The key was replaced by ``replaced_by``; its secret still works until ``valid_until``."""

    key_id: str
    replaced_by: str
    valid_until: datetime
    rotated_by: str = ""
    at: datetime

    time_field = "at"


class ApiKeyRevoked(Event, frozen=True, kw_only=True):
    key_id: str
    reason: str = ""
    revoked_by: str = ""
    at: datetime

    time_field = "at"


class CreateApiKey(Command, frozen=True, kw_only=True):
    key_id: str
    name: str
    scopes: list[str]
    tier: str = "standard"
    secret_digest: str
    prefix: str
    created_by: str = ""
    expires_at: datetime | None = None
    at: datetime


class ScopeApiKey(Command, frozen=True, kw_only=True):
    key_id: str
    scopes: list[str]
    tier: str
    changed_by: str = ""
    at: datetime


class RotateApiKey(Command, frozen=True, kw_only=True):
    key_id: str
    new_key_id: str
    secret_digest: str
    prefix: str
    valid_until: datetime  # the old secret's grace period (``at``: none)
    rotated_by: str = ""
    at: datetime


class RevokeApiKey(Command, frozen=True, kw_only=True):
    key_id: str
    reason: str = ""
    revoked_by: str = ""
    at: datetime


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    name: str
    scopes: tuple[str, ...]
    tier: str
    secret_digest: str
    prefix: str
    created_at: datetime
    status: Literal["active", "rotated", "revoked"] = "active"
    valid_until: datetime | None = None  # rotated: the end of its grace; or the key's own expiry
    replaced_by: str | None = None
    replaces: str | None = None
    revoked_at: datetime | None = None

    def usable_at(self, at: datetime) -> bool:
        if self.status == "revoked":
            return False
        return self.valid_until is None or at < self.valid_until

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(role for scope in self.scopes for role in SCOPES.get(scope, ()))


class Keyring(msgspec.Struct, frozen=True):
    keys: dict[str, ApiKey] = {}


def _check(scopes: list[str], tier: str) -> dict[str, str]:
    fields = {}
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        fields["scopes"] = f"unknown: {', '.join(unknown)} (known: {', '.join(SCOPES)})"
    elif not scopes:
        fields["scopes"] = "at least one"
    if tier not in TIERS:
        fields["tier"] = f"one of {', '.join(TIERS)}"
    return fields


def _key(state: Keyring, key_id: str) -> ApiKey:
    found = state.keys.get(key_id)
    if found is None:
        raise NotFoundError(f"API key {key_id} not found")
    return found


def decide(command: Command, state: Keyring) -> list[Event]:
    match command:
        case CreateApiKey():
            if command.key_id in state.keys:
                return []  # a retry
            fields = _check(command.scopes, command.tier)
            if not command.name.strip():
                fields["name"] = "required"
            if fields:
                raise ValidationError("invalid API key", fields=fields)
            if sum(1 for k in state.keys.values() if k.status != "revoked") >= MAX_KEYS:
                raise IllegalStateError(f"a tenant has at most {MAX_KEYS} keys: revoke one first")
            return [
                ApiKeyCreated(
                    key_id=command.key_id,
                    name=command.name,
                    scopes=sorted(set(command.scopes)),
                    tier=command.tier,
                    secret_digest=command.secret_digest,
                    prefix=command.prefix,
                    created_by=command.created_by,
                    expires_at=command.expires_at,
                    created_at=command.at,
                )
            ]
        case ScopeApiKey():
            key = _key(state, command.key_id)
            if key.status == "revoked":
                raise IllegalStateError(f"API key {command.key_id} is revoked")
            fields = _check(command.scopes, command.tier)
            if fields:
                raise ValidationError("invalid scopes", fields=fields)
            if sorted(set(command.scopes)) == list(key.scopes) and command.tier == key.tier:
                return []
            return [
                ApiKeyScoped(
                    key_id=command.key_id,
                    scopes=sorted(set(command.scopes)),
                    tier=command.tier,
                    changed_by=command.changed_by,
                    at=command.at,
                )
            ]
        case RotateApiKey():
            key = _key(state, command.key_id)
            if key.replaced_by == command.new_key_id:
                return []  # a retry
            if key.status != "active":
                raise IllegalStateError(f"API key {command.key_id} is {key.status}: only an active key rotates")
            if command.valid_until < command.at:
                raise ValidationError("the grace period cannot end before now", fields={"grace_seconds": ">= 0"})
            return [
                ApiKeyCreated(
                    key_id=command.new_key_id,
                    name=key.name,
                    scopes=list(key.scopes),
                    tier=key.tier,
                    secret_digest=command.secret_digest,
                    prefix=command.prefix,
                    created_by=command.rotated_by,
                    replaces=command.key_id,
                    created_at=command.at,
                ),
                ApiKeyRotated(
                    key_id=command.key_id,
                    replaced_by=command.new_key_id,
                    valid_until=command.valid_until,
                    rotated_by=command.rotated_by,
                    at=command.at,
                ),
            ]
        case RevokeApiKey():
            key = _key(state, command.key_id)
            if key.status == "revoked":
                return []
            return [
                ApiKeyRevoked(
                    key_id=command.key_id, reason=command.reason, revoked_by=command.revoked_by, at=command.at
                )
            ]
    raise ValidationError(f"{type(command).__name__} is not an API key command")


def evolve(state: Keyring, event: Event) -> Keyring:
    replace = msgspec.structs.replace
    match event:
        case ApiKeyCreated():
            key = ApiKey(
                key_id=event.key_id,
                name=event.name,
                scopes=tuple(event.scopes),
                tier=event.tier,
                secret_digest=event.secret_digest,
                prefix=event.prefix,
                created_at=event.created_at,
                valid_until=event.expires_at,
                replaces=event.replaces,
            )
            return Keyring({**state.keys, event.key_id: key})
        case ApiKeyScoped():
            key = replace(state.keys[event.key_id], scopes=tuple(event.scopes), tier=event.tier)
            return Keyring({**state.keys, event.key_id: key})
        case ApiKeyRotated():
            key = replace(
                state.keys[event.key_id], status="rotated", valid_until=event.valid_until, replaced_by=event.replaced_by
            )
            return Keyring({**state.keys, event.key_id: key})
        case ApiKeyRevoked():
            key = replace(state.keys[event.key_id], status="revoked", revoked_at=event.at)
            return Keyring({**state.keys, event.key_id: key})
    return state


DECIDER = Decider(type_name=AGGREGATE_TYPE, state_type=Keyring, initial=Keyring, evolve=evolve, decide=decide)
