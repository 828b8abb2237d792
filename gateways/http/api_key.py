"""API keys over HTTP (``/api/v1/api-keys``): an organization admin makes, lists, scopes, rotates and
revokes the tenant's keys. A key's secret is in the answer to ``POST`` and to a rotation only.
The keys' history is the audit trail of the ``api_keys`` aggregate
(``/api/v1/audit/api_keys/keyring/events``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from commands.api_key import ApiKeys, ApiKeyView, IssuedKey
from domain.api_key import SCOPES, TIERS
from gateways.http.auth import Identity, KeyAuthority, requires
from gateways.http.common import actor
from gateways.http.fields import Name
from gateways.http.limits import Limits

ADMINS = requires("org_admin")
# The schema names the scopes and tiers there are (the key's decider refuses others, by name).
Scope = Annotated[str, msgspec.Meta(min_length=1, max_length=50, extra_json_schema={"enum": list(SCOPES)})]
Tier = Annotated[str, msgspec.Meta(extra_json_schema={"enum": list(TIERS)})]


class CreateKeyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=10)]
    tier: Tier = "standard"
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class ScopeKeyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=10)]
    tier: Tier | None = None


class RotateKeyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # How long the old secret keeps working (0: not at all).
    grace_seconds: Annotated[int, msgspec.Meta(ge=0, le=30 * 24 * 3600)] = 3600


class KeyList(msgspec.Struct):
    api_keys: list[ApiKeyView]
    tiers: dict[str, int]


class ApiKeyController(Controller):
    path = "/api/v1/api-keys"
    tags = ["api keys"]
    opt = ADMINS

    @post("/", status_code=201, summary="Make an API key (its secret is shown this once)")
    async def create(
        self, request: Request[Identity, Any, Any], data: JSONBody[CreateKeyRequest], api_keys: NamedDependency[ApiKeys]
    ) -> IssuedKey:
        at = datetime.now(UTC)
        expires = at + timedelta(days=data.expires_in_days) if data.expires_in_days else None
        key = request.headers.get("Idempotency-Key")
        return await api_keys.create(
            request.user.tenant,
            name=data.name,
            scopes=data.scopes,
            tier=data.tier,
            actor=actor(request.user),
            at=at,
            expires_at=expires,
            command_id=f"idem-{key}" if key else None,
        )

    @get("/", summary="The tenant's API keys (never their secrets)")
    async def list_keys(self, request: Request[Identity, Any, Any], api_keys: NamedDependency[ApiKeys]) -> KeyList:
        return KeyList(await api_keys.listed(request.user.tenant), dict(TIERS))

    @get("/{key_id:str}", summary="An API key")
    async def get_key(
        self, request: Request[Identity, Any, Any], key_id: FromPath[str], api_keys: NamedDependency[ApiKeys]
    ) -> ApiKeyView:
        return await api_keys.get(request.user.tenant, key_id)

    @patch("/{key_id:str}", summary="Change a key's scopes or tier")
    async def scope(
        self,
        request: Request[Identity, Any, Any],
        key_id: FromPath[str],
        data: JSONBody[ScopeKeyRequest],
        api_keys: NamedDependency[ApiKeys],
    ) -> ApiKeyView:
        tenant = request.user.tenant
        tier = data.tier or (await api_keys.get(tenant, key_id)).tier
        return await api_keys.scope(
            tenant, key_id, scopes=data.scopes, tier=tier, actor=actor(request.user), at=datetime.now(UTC)
        )

    @post("/{key_id:str}/rotate", status_code=201, summary="Replace a key (the new secret is shown this once)")
    async def rotate(
        self,
        request: Request[Identity, Any, Any],
        key_id: FromPath[str],
        data: JSONBody[RotateKeyRequest],
        api_keys: NamedDependency[ApiKeys],
    ) -> IssuedKey:
        return await api_keys.rotate(
            request.user.tenant,
            key_id,
            grace=timedelta(seconds=data.grace_seconds),
            actor=actor(request.user),
            at=datetime.now(UTC),
        )

    @delete("/{key_id:str}", status_code=200, summary="Revoke a key (at once, in every process)")
    async def revoke(
        self, request: Request[Identity, Any, Any], key_id: FromPath[str], api_keys: NamedDependency[ApiKeys]
    ) -> ApiKeyView:
        return await api_keys.revoke(
            request.user.tenant, key_id, reason="revoked", actor=actor(request.user), at=datetime.now(UTC)
        )


def key_authority(api_keys: ApiKeys, limits: Limits) -> KeyAuthority:
    """Who a request made with an API key is (None: not a valid key), within the key's tier's rate:
    at most ``TIERS[tier]`` requests in any minute per key (429 past it)."""

    async def identify(presented: str) -> Identity | None:
        holder = await api_keys.authenticate(presented, datetime.now(UTC))
        if holder is None:
            return None
        per_minute = TIERS.get(holder.tier, TIERS["basic"])
        what = f"API key {holder.key_id} ({holder.tier}: {per_minute} requests a minute)"
        await limits.take([(f"rl:k:{holder.tenant}:{holder.key_id}", -60_000, per_minute, what)])
        return Identity(f"api-key:{holder.key_id}", holder.tenant, holder.roles)

    return identify
