"""Minting a bearer token the API accepts: HS256, ``sub``, and the tenant and roles as the API's
``extras`` (the layout Litestar's JWT middleware reads). For development sign-in, the command
line and tests; a deployment's tokens come from its identity provider."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jwt


def make_token(secret: str, *, subject: str, tenant: str, roles: Sequence[str], hours: float = 24 * 30) -> str:
    now = int(time.time())
    payload = {
        "exp": now + int(hours * 3600),
        "iat": now,
        "sub": subject,
        "extras": {"tenant": tenant, "roles": list(roles)},
    }
    return jwt.encode(payload, secret, algorithm="HS256")
