"""API keys: made (the secret shown once, stored hashed), scoped, rotated with a grace period, revoked,
rate-limited by tier, in the audit history; and the web-chat session a tenant's site mints with one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from litestar.testing import AsyncTestClient

from gateways.channels.settings import ChannelOptions
from tests.api_support import api_client, bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

ADMIN = bearer(roles=("org_admin",), subject="admin")
KEYS = "/api/v1/api-keys"


@pytest_asyncio.fixture
async def client(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    stream = unique_stream()
    options = ChannelOptions(run_outbox=False)
    settings = settings_for(
        nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, run_agents=False, channels=options
    )
    try:
        async with api_client(settings) as c:
            yield c
    finally:
        await delete_stream(nats_url, stream)


async def make(client: AsyncTestClient[Any], scopes: list[str], tier: str = "standard") -> dict[str, Any]:
    response = await client.post(KEYS, json={"name": "crm", "scopes": scopes, "tier": tier}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


def key(secret: str) -> dict[str, str]:
    return {"X-API-Key": secret}


async def test_a_key_is_shown_once_and_listed_without_its_secret(client: AsyncTestClient[Any]) -> None:
    made = await make(client, ["chat_sessions"])
    secret = made["secret"]
    assert secret.startswith("pk_acme.") and made["key"]["prefix"] in secret
    listed = (await client.get(KEYS, headers=ADMIN)).json()
    assert [k["key_id"] for k in listed["api_keys"]] == [made["key"]["key_id"]]
    assert secret.rpartition(".")[2] not in str(listed)
    history = (await client.get("/api/v1/audit/api_keys/keyring/events", headers=ADMIN)).json()
    assert [e["type"] for e in history["events"]] == ["ApiKeyCreated"]
    assert secret.rpartition(".")[2] not in str(history)  # only its digest was stored
    # Keys do not manage keys, and a customer cannot either.
    assert (await client.get(KEYS, headers=key(secret))).status_code == 403
    assert (await client.get(KEYS, headers=bearer(roles=("customer",)))).status_code == 403


async def test_a_key_acts_within_its_scopes_by_header_or_bearer(client: AsyncTestClient[Any]) -> None:
    minting = (await make(client, ["chat_sessions"]))["secret"]
    session = await client.post("/api/v1/chat/sessions", json={"customer_id": "c-42"}, headers=key(minting))
    assert session.status_code == 201, session.text
    assert session.json()["customer"] == "web-c-42"
    by_bearer = await client.post("/api/v1/chat/sessions", json={}, headers={"Authorization": f"Bearer {minting}"})
    assert by_bearer.status_code == 201
    # Its customer token works on the customer's API, as the customer.
    token = {"Authorization": f"Bearer {session.json()['token']}"}
    assert (await client.get("/api/v1/orchestration/conversations", headers=token)).status_code == 200
    # Out of scope: a chat_sessions key cannot start conversations; a conversations key can, not mint.
    body = {"config_id": "support-bot", "channel": "api", "user_id": "u-1"}
    assert (
        await client.post("/api/v1/orchestration/conversations", json=body, headers=key(minting))
    ).status_code == 403
    service = (await make(client, ["conversations"]))["secret"]
    started = await client.post("/api/v1/orchestration/conversations", json=body, headers=key(service))
    assert started.status_code == 201, started.text
    assert (await client.post("/api/v1/chat/sessions", json={}, headers=key(service))).status_code == 403
    # Changing its scopes takes effect at once.
    made = (await client.get(KEYS, headers=ADMIN)).json()["api_keys"]
    service_id = next(k["key_id"] for k in made if k["scopes"] == ["conversations"])
    scoped = await client.patch(f"{KEYS}/{service_id}", json={"scopes": ["chat_sessions"]}, headers=ADMIN)
    assert scoped.status_code == 200 and scoped.json()["scopes"] == ["chat_sessions"]
    assert (await client.post("/api/v1/chat/sessions", json={}, headers=key(service))).status_code == 201
    bad = await client.patch(f"{KEYS}/{service_id}", json={"scopes": ["everything"]}, headers=ADMIN)
    assert bad.status_code == 400 and "scopes" in bad.json()["fields"]


async def test_wrong_and_malformed_keys_are_refused(client: AsyncTestClient[Any]) -> None:
    secret = (await make(client, ["chat_sessions"]))["secret"]
    for presented in (secret[:-2] + "xx", "pk_acme.0000000000000000." + "a" * 43, "pk_nope", "pk_globex" + secret[7:]):
        response = await client.post("/api/v1/chat/sessions", json={}, headers=key(presented))
        assert response.status_code == 401, presented


async def test_rotation_keeps_the_old_secret_for_its_grace_and_revocation_is_immediate(
    client: AsyncTestClient[Any],
) -> None:
    made = await make(client, ["chat_sessions"])
    old, key_id = made["secret"], made["key"]["key_id"]
    rotated = await client.post(f"{KEYS}/{key_id}/rotate", json={"grace_seconds": 3600}, headers=ADMIN)
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["secret"]
    assert rotated.json()["key"]["replaces"] == key_id
    for secret in (old, new):  # both work during the grace period
        assert (await client.post("/api/v1/chat/sessions", json={}, headers=key(secret))).status_code == 201
    new_id = rotated.json()["key"]["key_id"]
    again = await client.post(f"{KEYS}/{new_id}/rotate", json={"grace_seconds": 0}, headers=ADMIN)
    newest = again.json()["secret"]
    assert (await client.post("/api/v1/chat/sessions", json={}, headers=key(new))).status_code == 401  # no grace
    revoked = await client.delete(f"{KEYS}/{again.json()['key']['key_id']}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert (await client.post("/api/v1/chat/sessions", json={}, headers=key(newest))).status_code == 401
    history = (await client.get("/api/v1/audit/api_keys/keyring/events", headers=ADMIN)).json()
    assert [e["type"] for e in history["events"]] == [
        "ApiKeyCreated",
        "ApiKeyCreated",
        "ApiKeyRotated",
        "ApiKeyCreated",
        "ApiKeyRotated",
        "ApiKeyRevoked",
    ]


async def test_a_keys_tier_limits_its_requests_a_minute(client: AsyncTestClient[Any]) -> None:
    secret = (await make(client, ["chat_sessions"], tier="basic"))["secret"]
    codes = [(await client.post("/api/v1/chat/sessions", json={}, headers=key(secret))).status_code for _ in range(61)]
    assert codes[:60] == [201] * 60 and codes[60] == 429
    other = (await make(client, ["chat_sessions"], tier="basic"))["secret"]  # per key, not per tenant
    assert (await client.post("/api/v1/chat/sessions", json={}, headers=key(other))).status_code == 201
    # A bearer JWT is unaffected by keys.
    assert (await client.get(KEYS, headers=ADMIN)).status_code == 200
