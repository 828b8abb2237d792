"""Server-sent events through a real HTTP server (uvicorn on a free port), read with httpx."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import uvicorn

from gateways.http.app import create_app
from infra.services import free_port
from tests.api_support import bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

BASE = "/api/v1/orchestration"
CUSTOMER = bearer()


async def test_a_conversations_events_stream_live_as_server_sent_events(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    stream = unique_stream()
    app = create_app(settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=CUSTOMER, timeout=20) as http:
            body = {"config_id": "support-bot", "channel": "webchat", "user_id": "user-1", "initial_message": "Hello"}
            cid = (await http.post(f"{BASE}/conversations", json=body)).json()["conversation_id"]
            seen: list[str] = []
            history_read = asyncio.Event()

            async def listen() -> None:
                async with http.stream("GET", f"{BASE}/conversations/{cid}/events") as response:
                    assert response.status_code == 200
                    assert response.headers["content-type"].startswith("text/event-stream")
                    async for line in response.aiter_lines():
                        if line.startswith("event: "):
                            seen.append(line.removeprefix("event: "))
                            if len(seen) == 3:
                                history_read.set()
                        if seen.count("AgentReplied") == 2:
                            return

            listener = asyncio.create_task(listen())
            await asyncio.wait_for(history_read.wait(), 15)
            said = await http.post(f"{BASE}/conversations/{cid}/messages", json={"message": "Where is ORD-12345?"})
            assert said.status_code == 200, said.text
            await asyncio.wait_for(listener, 15)
        assert seen == [
            "ConversationStarted",
            "UserMessageReceived",
            "AgentReplied",
            "UserMessageReceived",
            "AgentReplied",
        ]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
        await delete_stream(nats_url, stream)


async def test_a_tenant_holds_a_bounded_number_of_live_streams(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    stream = unique_stream()
    settings = settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, streams_per_tenant=2)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    agent = {"Authorization": bearer(roles=("support_agent",), subject="sam")["Authorization"]}
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=agent, timeout=20) as http:
            async with http.stream("GET", f"{BASE}/events") as first, http.stream("GET", f"{BASE}/events") as second:
                assert first.status_code == second.status_code == 200
                third = await http.get(f"{BASE}/events")
                assert third.status_code == 429 and third.headers["Retry-After"] == "1"
            again = http.stream("GET", f"{BASE}/events")  # the two were given back when they closed
            async with again as response:
                assert response.status_code == 200
    finally:
        server.should_exit = True
        await serving
        await delete_stream(nats_url, stream)
