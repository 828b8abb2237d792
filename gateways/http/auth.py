"""Who is calling: a bearer JWT (HS256) carrying the tenant and the caller's roles, or an API key.

An API key (``pk_...``, made through ``/api/v1/api-keys``) comes as ``X-API-Key`` or as the bearer
value; it acts with the roles of its scopes, within its tier's rate (``KeyAuthority``, which the
API process puts in the app's state as ``api_key_authority``)."""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

ROLES = ("customer", "support_agent", "supervisor", "org_admin", "platform_engineer", "analyst", "service")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Paths anyone may read, matched whole (a config named "healthcare-bot" is not public).
PUBLIC_PATHS = [r"^/health$", r"^/metrics$", r"^/schema(?:/.*)?$"]


class Identity(msgspec.Struct, frozen=True):
    subject: str
    tenant: str
    roles: frozenset[str]


API_KEY_HEADER = "x-api-key"
_API_KEY_HEADER = API_KEY_HEADER.encode()
API_KEY_PREFIX = "pk_"
# A presented API key -> who it is (None: not a valid key); raises a 429 past the key's rate.
KeyAuthority = Callable[[str], Awaitable[Identity | None]]


async def identity_from_token(token: Token, _connection: ASGIConnection[Any, Any, Any, Any]) -> Identity:
    tenant = token.extras.get("tenant")
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise NotAuthorizedException("the token carries no valid tenant")
    roles = token.extras.get("roles") or []
    if not isinstance(roles, list):
        raise NotAuthorizedException("roles must be a list")
    return Identity(token.sub, tenant, frozenset(str(r) for r in roles))


class CachingJWTMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware, remembering verified tokens until they expire.

    Verifying an HS256 signature costs more than the rest of a small request; a client sends the
    same token many times. Only a token that verified is remembered, keyed by its exact bytes.
    """

    cache_size = 10_000
    _verified: OrderedDict[str, tuple[float, AuthenticationResult]]

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        # The two headers read straight from the ASGI scope (names are lower-case there; the first
        # of each counts, as with ``connection.headers``): building Litestar's headers object and
        # looking the bearer up twice cost more than a cached token's check.
        presented: str | None = None
        authorization: str | None = None
        for name, raw in connection.scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = raw.decode("latin-1")
            elif name == _API_KEY_HEADER and presented is None:
                presented = raw.decode("latin-1")
        if presented is None and authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.startswith(API_KEY_PREFIX):
                presented = value
        if presented is None:
            if not authorization:
                raise NotAuthorizedException("No JWT token found in request header")
            return await self.authenticate_token(authorization.partition(" ")[-1], connection)
        authority: KeyAuthority | None = connection.app.state.get("api_key_authority")
        identity = await authority(presented) if authority is not None else None
        if identity is None:
            raise NotAuthorizedException("invalid API key")
        _authorize(identity, connection)
        return AuthenticationResult(user=identity, auth=None)

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        verified: OrderedDict[str, tuple[float, AuthenticationResult]] = self.__dict__.setdefault(
            "_verified", OrderedDict()
        )
        hit = verified.get(encoded_token)
        if hit is not None and hit[0] > time.time():
            _authorize(hit[1].user, connection)
            return hit[1]
        result = await super().authenticate_token(encoded_token, connection)
        token = result.auth
        expires = token.exp.timestamp() if isinstance(token, Token) else time.time() + 60
        verified[encoded_token] = (expires, result)
        if len(verified) > self.cache_size:
            verified.popitem(last=False)
        _authorize(result.user, connection)
        return result


def _authorize(identity: Identity, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """The route's roles (``requires``), checked here rather than in a guard: Litestar copies the
    handler for every guard call, which costs more than the check."""
    roles = connection.scope["route_handler"].opt.get("roles")
    if roles is not None and not identity.roles & roles:
        raise PermissionDeniedException(f"needs one of the roles: {', '.join(sorted(roles))}")


def jwt_auth(secret: str) -> JWTAuth[Identity, Token]:
    return JWTAuth[Identity, Token](
        token_secret=secret,
        retrieve_user_handler=identity_from_token,
        algorithm="HS256",
        exclude=PUBLIC_PATHS,
        description="Bearer JWT (HS256) with claims `sub`, `tenant` and `roles`.",
        authentication_middleware_class=CachingJWTMiddleware,
    )


def requires(*roles: str) -> dict[str, frozenset[str]]:
    """A route's ``opt``: the caller needs one of ``roles`` (403 otherwise), checked right after the token."""
    return {"roles": frozenset(roles)}
