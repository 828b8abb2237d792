"""The API process with analytics on (chDB in tmp_path): the rebuild command, /health and /metrics.

The app is served by a real uvicorn server on a free port, so that ``python -m projections rebuild
analytics`` (``projections.__main__``) can be run against it as an operator runs it against the
platform. chDB allows one store path per process at a time: the app's is closed with the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn

from gateways.http.app import create_app
from projections.settings import AnalyticsSettings
from tests.api_support import SECRET, bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

CUSTOMER = bearer("acme")
ANALYST = bearer("acme", ("analyst",))
ADMIN = bearer("acme", ("org_admin",))
ENGINEER = bearer("acme", ("platform_engineer",), subject="pat")
REBUILD = "/api/v1/admin/projections/analytics/rebuild"


@pytest_asyncio.fixture
async def api(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    analytics = AnalyticsSettings(data_dir=tmp_path / "analytics", batch=50)
    async with serve(nats_url, pg_url, redis_url, tmp_path, analytics=analytics) as client:
        yield client


@asynccontextmanager
async def serve(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    stream = unique_stream()
    settings = settings_for(
        nats_url,
        fresh_database(pg_url),
        redis_url,
        tmp_path,
        stream,
        run_agents=False,
        auto_rollback=None,
        **overrides,
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=0, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "the API did not start"
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        await serving
        await delete_stream(nats_url, stream)


async def conversations(api: httpx.AsyncClient, n: int) -> None:
    for k in range(n):
        customer = bearer("acme", subject=f"u-{k}")  # a customer starts conversations as themselves
        body = {"config_id": "support-bot", "channel": "webchat", "user_id": f"u-{k}", "initial_message": "hello"}
        started = await api.post("/api/v1/orchestration/conversations", json=body, headers=customer)
        assert started.status_code == 201, started.text
        if k % 2:
            cid = started.json()["conversation_id"]
            escalated = await api.post(
                f"/api/v1/orchestration/conversations/{cid}/escalate",
                json={"trigger": "user_requested", "reason": "a manager", "urgency": "high"},
                headers=customer,
            )
            assert escalated.status_code == 200, escalated.text


async def analytics_status(api: httpx.AsyncClient, lag: int = 0) -> dict[str, Any]:
    """The analytics projector's entry in /health, once its lag is down to ``lag``."""
    for _ in range(200):
        health = (await api.get("/health")).json()
        found = [p for p in health["projectors"] if p["name"] == "analytics"]
        if found and found[0]["lag"] <= lag:
            return dict(found[0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"the analytics projector did not catch up: {health}")


def last_month() -> dict[str, str]:
    today = datetime.now(UTC).date()
    return {"start": (today - timedelta(days=30)).isoformat(), "end": (today + timedelta(days=1)).isoformat()}


async def test_health_and_metrics_report_the_analytics_projector_and_clickhouse(api: httpx.AsyncClient) -> None:
    await conversations(api, 3)
    status = await analytics_status(api)
    assert status["checkpoint"] == status["stream_last_seq"] > 0
    assert status["schema"] == "parley" and status["dead_letters"] == 0

    health = (await api.get("/health")).json()
    assert health["status"] == "ok"
    assert {d["name"]: d["ok"] for d in health["dependencies"]} == {
        "nats": True,
        "postgres": True,
        "redis": True,
        "clickhouse": True,
    }
    names = [p["name"] for p in health["projectors"]]
    assert names[:2] == ["conversations", "configs"] and names[-1] == "analytics"
    metrics = (await api.get("/metrics")).text
    assert 'parley_projector_lag{projector="analytics"} 0' in metrics
    assert f'parley_projector_checkpoint{{projector="analytics"}} {status["checkpoint"]}' in metrics


async def test_only_a_platform_engineer_rebuilds_the_analytics_and_the_kpis_stay_the_same(
    api: httpx.AsyncClient,
) -> None:
    await conversations(api, 6)
    await analytics_status(api)
    kpis = await api.get("/api/v1/analytics/kpis", params=last_month(), headers=ANALYST)
    assert kpis.status_code == 200, kpis.text
    before = kpis.json()
    assert before["totals"]["conversations"] == 6 and before["totals"]["escalated"] == 3

    for refused in (CUSTOMER, ANALYST, ADMIN):
        response = await api.post(REBUILD, headers=refused)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "forbidden"
    assert (await api.post(REBUILD)).status_code == 401

    response = await api.post(REBUILD, headers=ENGINEER)
    assert response.status_code == 200, response.text
    report = response.json()
    status = await analytics_status(api)
    assert report["database"] == "parley" and report["dead_letters"] == 0
    assert report["events"] > 0 and report["seconds"] > 0 and report["checkpoint"] == status["checkpoint"]
    assert (await api.get("/api/v1/analytics/kpis", params=last_month(), headers=ANALYST)).json() == before

    await conversations(api, 2)  # the live projector goes on after the swap
    await analytics_status(api)
    after = (await api.get("/api/v1/analytics/kpis", params=last_month(), headers=ANALYST)).json()
    assert after["totals"]["conversations"] == 8 and after["totals"]["escalated"] == 4


async def test_the_projections_cli_rebuilds_the_analytics_through_the_running_api(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``just projections-rebuild analytics``: the CLI signs a platform engineer's token with the
    data directory's secret and posts the command to the API, which holds the chDB store."""
    from projections.__main__ import rebuild_analytics

    await conversations(api, 2)
    status = await analytics_status(api)
    monkeypatch.setenv("PARLEY_API_URL", str(api.base_url))
    monkeypatch.setenv("PARLEY_JWT_SECRET", SECRET)
    await asyncio.to_thread(rebuild_analytics)
    out = capsys.readouterr().out
    assert out.startswith("rebuilt analytics (parley): ") and f"live at sequence {status['checkpoint']}" in out
    assert f"(through {api.base_url})" in out


async def test_the_projections_status_cli_shows_the_analytics_projector_of_the_running_api(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``just projections-status``: the analytics projector's line comes from the API's /health."""
    from projections.__main__ import analytics_statuses

    await conversations(api, 1)
    status = await analytics_status(api)
    monkeypatch.setenv("PARLEY_API_URL", str(api.base_url))
    shown = await asyncio.to_thread(analytics_statuses)
    assert [s["name"] for s in shown] == ["analytics"]
    assert shown[0]["checkpoint"] >= status["checkpoint"]
    monkeypatch.setenv("PARLEY_API_URL", "http://127.0.0.1:9")  # nothing listens: no line, no failure
    assert await asyncio.to_thread(analytics_statuses) == []


async def test_the_kpi_endpoints_take_the_seeds_period_and_refuse_what_they_do_not_know(
    api: httpx.AsyncClient,
) -> None:
    await conversations(api, 2)
    await analytics_status(api)
    today = datetime.now(UTC).date()
    seed = {"start_date": (today - timedelta(days=10)).isoformat(), "end_date": today.isoformat()}
    short = {"start": seed["start_date"], "end": seed["end_date"]}
    later = {"start_date": (today + timedelta(days=1)).isoformat(), "end_date": (today + timedelta(days=2)).isoformat()}
    for path in ("/api/v1/analytics/kpis", "/api/v1/analytics/escalation-reasons", "/api/v1/voice/analytics"):
        by_seed = await api.get(path, params=seed, headers=ANALYST)
        assert by_seed.status_code == 200, by_seed.text
        assert by_seed.json()["period"] == {"start": seed["start_date"], "end": seed["end_date"]}  # days, included
        assert (await api.get(path, params=short, headers=ANALYST)).json() == by_seed.json()

        refused = {
            "start_date": {**seed, "start_date": later["end_date"]},  # ends before it starts
            "end_date": {**seed, "end_date": "2025-10-32"},
            "start": {**seed, "start": later["start_date"]},  # an alias naming another day
            "from": {**seed, "from": "2025-10-01"},
            "startdate": {"startdate": "2025-10-01"},
        }
        for field, params in refused.items():
            answer = await api.get(path, params=params, headers=ANALYST)
            assert answer.status_code == 400, (path, field, answer.text)
            assert answer.json()["code"] == "validation_error" and field in answer.json()["fields"], answer.text

    kpis = (await api.get("/api/v1/analytics/kpis", params=seed, headers=ANALYST)).json()
    assert kpis["totals"]["conversations"] == 2
    none_yet = (await api.get("/api/v1/analytics/kpis", params=later, headers=ANALYST)).json()
    assert none_yet["totals"]["conversations"] == 0 and none_yet["period"]["start"] == later["start_date"]


async def test_a_period_before_the_year_1000_is_refused_by_name(api: httpx.AsyncClient) -> None:
    """Dates ClickHouse cannot hold (its DateTime64 starts in 1900) are a 400 naming the parameter, not a 500."""
    for path in (
        "/api/v1/analytics/kpis",
        "/api/v1/analytics/escalation-reasons",
        "/api/v1/voice/analytics",
        "/api/v1/analytics/kpis/daily",
    ):
        for params, field in (
            ({"start_date": "0999-12-31", "end_date": "2025-01-01"}, "start_date"),
            ({"start": "0001-01-01", "end": "0001-01-02"}, "start"),
            ({"end_date": "0500-06-01"}, "end_date"),
            ({"start_date": "1850-01-01", "end_date": "1850-01-02"}, "start_date"),
            ({"start_date": "2025-01-01", "end": "2300-01-01"}, "end"),
        ):
            answer = await api.get(path, params=params, headers=ANALYST)
            assert answer.status_code == 400, (path, params, answer.text)
            assert answer.json()["code"] == "validation_error" and field in answer.json()["fields"], answer.text


async def test_with_the_chdb_url_up_writes_and_the_projectors_on_their_own_the_api_runs_the_analytics(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """``./parley up`` writes ``CLICKHOUSE_URL=chdb:///...``: that store, too, opens in one process
    only, so the API that has it runs the analytics projector even when the other projectors run
    in a process of their own (it ran nowhere, and /health said ok)."""
    from infra.chdb import ensure_chdb

    url = ensure_chdb(tmp_path / "chdb")
    assert url.startswith("chdb://")
    analytics = AnalyticsSettings(clickhouse_url=url, data_dir=tmp_path, batch=50)
    async with serve(nats_url, pg_url, redis_url, tmp_path, analytics=analytics, run_projectors=False) as api:
        await conversations(api, 2)
        status = await analytics_status(api)
        assert status["checkpoint"] == status["stream_last_seq"] > 0
        kpis = await api.get("/api/v1/analytics/kpis", params=last_month(), headers=ANALYST)
        assert kpis.json()["totals"]["conversations"] == 2, kpis.text


async def test_health_is_degraded_while_a_projector_behind_the_stream_does_not_move(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No projector runs (none here, none elsewhere): once the events wait longer than the stall
    window, /health answers 503 and names the projectors, whatever the dependencies say."""
    from gateways.http.observability import Health

    monkeypatch.setattr(Health, "stall_seconds", 0.5)
    async with serve(nats_url, pg_url, redis_url, tmp_path, run_projectors=False) as api:
        first = await api.get("/health")
        assert first.status_code == 200 and first.json()["problems"] == [], first.text
        await conversations(api, 1)
        await api.get("/health")  # the checkpoints behind the stream, as first seen
        await asyncio.sleep(0.6)
        stalled = await api.get("/health")
        assert stalled.status_code == 503, stalled.text
        body = stalled.json()
        assert body["status"] == "degraded" and all(d["ok"] for d in body["dependencies"])
        assert any("conversations projector" in p and "has not moved" in p for p in body["problems"]), body
