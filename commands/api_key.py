"""API keys: made, scoped, rotated and revoked through the tenant's keyring, and recognised on requests.

A key reads ``pk_<tenant>.<key id>.<secret>``: the tenant and key id say which keyring and entry to
check, the secret is compared by its sha256 digest (a random 256-bit secret needs no slow hash),
in constant time. The secret is returned once, by ``create`` and ``rotate``, and stored nowhere.
Keyrings are cached in memory until a commit of theirs is announced (``Followed``), so a revocation
in any process takes effect everywhere at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

import msgspec

from commands.channel import Followed
from commands.runner import CommandContext, CommandRunner
from domain import api_key as k
from domain.errors import NotFoundError
from streams.store import EventStore

PREFIX = "pk_"
_KEY = re.compile(r"^pk_([a-z0-9][a-z0-9_-]{0,63})\.([a-f0-9]{16})\.([A-Za-z0-9_-]{32,64})$")


class IssuedKey(msgspec.Struct, frozen=True, kw_only=True):
    key: ApiKeyView
    secret: str  # the whole key: shown once


class ApiKeyView(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    name: str
    scopes: list[str]
    tier: str
    requests_per_minute: int
    prefix: str
    status: str
    created_at: datetime
    valid_until: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    revoked_at: datetime | None = None


class KeyHolder(msgspec.Struct, frozen=True, kw_only=True):
    """Who a request made with a key is."""

    tenant: str
    key_id: str
    roles: frozenset[str]
    tier: str


def view(key: k.ApiKey) -> ApiKeyView:
    return ApiKeyView(
        key_id=key.key_id,
        name=key.name,
        scopes=list(key.scopes),
        tier=key.tier,
        requests_per_minute=k.TIERS.get(key.tier, 0),
        prefix=key.prefix,
        status=key.status,
        created_at=key.created_at,
        valid_until=key.valid_until,
        replaced_by=key.replaced_by,
        replaces=key.replaces,
        revoked_at=key.revoked_at,
    )


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_key(tenant: str) -> tuple[str, str, str, str]:
    """A new key: (key id, the whole key, its digest, the prefix shown in lists)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    whole = f"{PREFIX}{tenant}.{key_id}.{secret}"
    return key_id, whole, digest(secret), f"{PREFIX}{tenant}.{key_id}"


class ApiKeys:
    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner
        self.keyrings = Followed(runner, k.DECIDER, trust_for=2.0)

    async def follow(self, store: EventStore) -> None:
        await self.keyrings.follow(store)

    async def close(self) -> None:
        await self.keyrings.close()

    async def create(
        self,
        tenant: str,
        *,
        name: str,
        scopes: list[str],
        tier: str,
        actor: str,
        at: datetime,
        expires_at: datetime | None = None,
        command_id: str | None = None,
    ) -> IssuedKey:
        key_id, whole, secret_digest, prefix = _new_key(tenant)
        command = k.CreateApiKey(
            key_id=key_id,
            name=name,
            scopes=scopes,
            tier=tier,
            secret_digest=secret_digest,
            prefix=prefix,
            created_by=actor,
            expires_at=expires_at,
            at=at,
        )
        outcome = await self.runner.handle(
            k.DECIDER, k.KEYRING, command, CommandContext(tenant=tenant, actor=actor, command_id=command_id)
        )
        return IssuedKey(key=view(outcome.state.keys[key_id]), secret=whole)

    async def listed(self, tenant: str) -> list[ApiKeyView]:
        keyring = await self.keyrings.state(tenant, k.KEYRING)
        return [view(key) for key in sorted(keyring.keys.values(), key=lambda key: key.created_at, reverse=True)]

    async def get(self, tenant: str, key_id: str) -> ApiKeyView:
        keyring = await self.keyrings.state(tenant, k.KEYRING)
        found = keyring.keys.get(key_id)
        if found is None:
            raise NotFoundError(f"API key {key_id} not found")
        return view(found)

    async def scope(
        self, tenant: str, key_id: str, *, scopes: list[str], tier: str, actor: str, at: datetime
    ) -> ApiKeyView:
        command = k.ScopeApiKey(key_id=key_id, scopes=scopes, tier=tier, changed_by=actor, at=at)
        outcome = await self.runner.handle(k.DECIDER, k.KEYRING, command, CommandContext(tenant=tenant, actor=actor))
        return view(outcome.state.keys[key_id])

    async def rotate(self, tenant: str, key_id: str, *, grace: timedelta, actor: str, at: datetime) -> IssuedKey:
        new_id, whole, secret_digest, prefix = _new_key(tenant)
        command = k.RotateApiKey(
            key_id=key_id,
            new_key_id=new_id,
            secret_digest=secret_digest,
            prefix=prefix,
            valid_until=at + grace,
            rotated_by=actor,
            at=at,
        )
        outcome = await self.runner.handle(k.DECIDER, k.KEYRING, command, CommandContext(tenant=tenant, actor=actor))
        return IssuedKey(key=view(outcome.state.keys[new_id]), secret=whole)

    async def revoke(self, tenant: str, key_id: str, *, reason: str, actor: str, at: datetime) -> ApiKeyView:
        command = k.RevokeApiKey(key_id=key_id, reason=reason, revoked_by=actor, at=at)
        outcome = await self.runner.handle(k.DECIDER, k.KEYRING, command, CommandContext(tenant=tenant, actor=actor))
        return view(outcome.state.keys[key_id])

    async def authenticate(self, presented: str, at: datetime) -> KeyHolder | None:
        """The key's holder, or None: malformed, unknown, revoked, expired or a wrong secret alike."""
        match = _KEY.match(presented)
        if match is None:
            return None
        tenant, key_id, secret = match.groups()
        keyring = await self.keyrings.state(tenant, k.KEYRING)
        key = keyring.keys.get(key_id)
        if key is None or not hmac.compare_digest(key.secret_digest, digest(secret)) or not key.usable_at(at):
            return None
        return KeyHolder(tenant=tenant, key_id=key_id, roles=key.roles, tier=key.tier)


def looks_like_key(value: str) -> bool:
    return value.startswith(PREFIX)
