"""Conversations over time (``GET /api/v1/analytics/kpis/daily``): one request for a period, a row a
day, from the analytics tables the projector fills (chDB in tmp_path) on the real stack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest_asyncio
from litestar.testing import AsyncTestClient

from projections.settings import AnalyticsSettings
from tests.api_support import api_client, bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

DAILY = "/api/v1/analytics/kpis/daily"
ANALYST = bearer("acme", ("analyst",))


@pytest_asyncio.fixture
async def client(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    stream = unique_stream()
    settings = settings_for(
        nats_url,
        fresh_database(pg_url),
        redis_url,
        tmp_path,
        stream,
        run_agents=False,
        auto_rollback=None,
        analytics=AnalyticsSettings(data_dir=tmp_path / "analytics", batch=50),
    )
    try:
        async with api_client(settings) as c:
            yield c
    finally:
        await delete_stream(nats_url, stream)


async def caught_up(client: AsyncTestClient[Any]) -> None:
    for _ in range(300):
        health = (await client.get("/health")).json()
        found = [p for p in health["projectors"] if p["name"] == "analytics"]
        if found and found[0]["lag"] == 0 and found[0]["checkpoint"] > 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the analytics projector did not catch up: {health}")


async def test_the_conversations_of_a_period_come_day_by_day_with_empty_days_as_zeros(
    client: AsyncTestClient[Any],
) -> None:
    for k in range(4):
        customer = bearer("acme", subject=f"u-{k}")
        body = {"config_id": "support-bot", "channel": "webchat", "user_id": f"u-{k}", "initial_message": "hello"}
        started = await client.post("/api/v1/orchestration/conversations", json=body, headers=customer)
        assert started.status_code == 201, started.text
        if k == 0:
            cid = started.json()["conversation_id"]
            escalated = await client.post(
                f"/api/v1/orchestration/conversations/{cid}/escalate",
                json={"trigger": "user_requested", "reason": "a person"},
                headers=customer,
            )
            assert escalated.status_code == 200, escalated.text
    await caught_up(client)

    today = datetime.now(UTC).date()
    first = today - timedelta(days=2)
    answer = await client.get(
        DAILY, params={"start_date": first.isoformat(), "end_date": today.isoformat()}, headers=ANALYST
    )
    assert answer.status_code == 200, answer.text
    series = answer.json()
    assert series["period"] == {"start": first.isoformat(), "end": today.isoformat()}
    assert [d["day"] for d in series["days"]] == [(first + timedelta(days=n)).isoformat() for n in range(3)]
    assert [d["conversations"] for d in series["days"]] == [0, 0, 4]
    last = series["days"][-1]
    assert (last["escalated"], last["escalation_rate"]) == (1, 0.25)
    assert series["days"][0] == {
        "day": first.isoformat(), "conversations": 0, "closed": 0, "resolved": 0, "escalated": 0,
        "resolution_rate": 0.0, "escalation_rate": 0.0,
    }  # fmt: skip
    totals = await client.get("/api/v1/analytics/kpis", params={"start_date": first.isoformat()}, headers=ANALYST)
    assert sum(d["conversations"] for d in series["days"]) == totals.json()["totals"]["conversations"]

    default = (await client.get(DAILY, headers=ANALYST)).json()
    assert len(default["days"]) == 30 and default["days"][-1]["conversations"] == 4
    other = (await client.get(DAILY, headers=bearer("globex", ("analyst",)))).json()
    assert sum(d["conversations"] for d in other["days"]) == 0  # another tenant's
    bad = await client.get(DAILY, params={"start_date": "yesterday"}, headers=ANALYST)
    assert bad.status_code == 400 and "start_date" in bad.json()["fields"]
    unknown = await client.get(DAILY, params={"by": "hour"}, headers=ANALYST)
    assert unknown.status_code == 400 and "by" in unknown.json()["fields"]
    assert (await client.get(DAILY, headers=bearer("acme"))).status_code == 403
