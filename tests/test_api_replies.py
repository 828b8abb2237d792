"""Replies that are right, end to end: the API, the agent runtime and the read model together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from litestar.testing import AsyncTestClient

from tests.api_support import api_client, bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

BASE = "/api/v1/orchestration"
ALICE = bearer(roles=("customer",), subject="alice")


@pytest_asyncio.fixture
async def client(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    stream = unique_stream()
    settings = settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream)
    try:
        async with api_client(settings) as c:
            yield c
    finally:
        await delete_stream(nats_url, stream)


async def say(client: AsyncTestClient[Any], cid: str, text: str) -> dict[str, Any]:
    response = await client.post(f"{BASE}/conversations/{cid}/messages", json={"message": text}, headers=ALICE)
    assert response.status_code == 200, response.text
    return response.json()


async def start(client: AsyncTestClient[Any], config_id: str, text: str) -> dict[str, Any]:
    response = await client.post(
        f"{BASE}/conversations",
        json={"config_id": config_id, "channel": "webchat", "initial_message": text},
        headers=ALICE,
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_an_accepted_cross_sell_is_acknowledged_and_recorded(client: AsyncTestClient[Any]) -> None:
    started = await start(client, "sales-bot", "Where is my order ORD-78945?")
    assert started["cross_sell_opportunity"]["product"] == "Premium Shipping Upgrade"
    cid = started["conversation_id"]

    accepted = await say(client, cid, "Yes, I would like the Premium Shipping upgrade")

    reply = accepted["agent_response"]["message"]
    assert "Premium Shipping" in reply
    assert accepted["cross_sell_opportunity"]["detected"] is False  # no new offer on top of the answer
    state = await client.get(
        f"{BASE}/conversations/{cid}", params={"min_position": accepted["position"]}, headers=ALICE
    )
    await asyncio.sleep(0)
    body = await eventually(client, cid, lambda s: s["cross_sell_accepted"])
    assert state.status_code == 200 and body["cross_sell_attempted"] is True


async def test_tool_failures_count_across_turns_and_escalate(client: AsyncTestClient[Any]) -> None:
    started = await start(client, "support-bot", "What's the status of ORD-424242?")
    cid = started["conversation_id"]
    assert started["status"] == "active"
    assert (
        "tool" not in started["agent_response"]["message"].lower() or "no order" in started["agent_response"]["message"]
    )

    await say(client, cid, "Then check ORD-434343 please")

    body = await eventually(client, cid, lambda s: s["status"] == "escalated")
    assert body["escalation"] is not None


async def test_a_conversation_takes_its_configs_product_type(client: AsyncTestClient[Any]) -> None:
    """The demo voicebot (created at start beside the chat bots) makes voicebot conversations."""
    started = await start(client, "voice-bot", "Hello")

    assert started["product_type"] == "voicebot"
    body = await eventually(client, started["conversation_id"], lambda s: True)
    assert body["product_type"] == "voicebot"


async def eventually(client: AsyncTestClient[Any], cid: str, ok: Any, seconds: float = 10.0) -> dict[str, Any]:
    for _ in range(int(seconds * 10)):
        state = await client.get(f"{BASE}/conversations/{cid}", headers=ALICE)
        if state.status_code == 200 and ok(body := state.json()):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"conversation {cid} never got there: {(await client.get(f'{BASE}/conversations/{cid}', headers=ALICE)).text}"
    )


async def test_a_customer_never_sees_a_tools_internal_error(client: AsyncTestClient[Any]) -> None:
    started = await start(client, "support-bot", "What's the status of ORD-424242?")
    [call] = started["agent_response"]["metadata"]["tool_calls"]
    assert call["error"] == "failed"
    body = await eventually(client, started["conversation_id"], lambda s: len(s["messages"]) == 2)
    assert [c["error"] for m in body["messages"] for c in m.get("tool_calls", [])] == ["failed"]
    staff = await client.get(
        f"{BASE}/conversations/{started['conversation_id']}", headers=bearer(roles=("support_agent",), subject="s")
    )
    [seen] = [c for m in staff.json()["messages"] for c in m.get("tool_calls", [])]
    assert "ORD-424242" in seen["error"]
