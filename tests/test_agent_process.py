"""The agent runtime as a process of its own: the API's inline reply does not depend on where it runs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.api_support import api_client, bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

ROOT = Path(__file__).resolve().parent.parent
BASE = "/api/v1/orchestration"


async def test_a_runtime_in_another_process_answers_inline(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    stream = unique_stream()
    database = fresh_database(pg_url)
    api = settings_for(nats_url, database, redis_url, tmp_path, stream, run_agents=False, reply_wait_seconds=10)
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "PARLEY_STREAM": stream,
        "PARLEY_DATA": str(tmp_path),  # the same key store: personal fields decrypt in both processes
        "DATABASE_URL": database,
        "PARLEY_DEMO_TENANTS": "acme",
        "PARLEY_LOG_LEVEL": "INFO",
        "PARLEY_LOG_JSON": "0",
    }
    log = tmp_path / "agents.log"
    try:
        async with api_client(api) as client:  # the API first: it makes the demo configs
            with log.open("wb") as out:
                runtime = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "agents", cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
                )
            try:
                for _ in range(300):  # it holds its partitions once the claims come round
                    if "partition taken" in log.read_text():
                        break
                    await asyncio.sleep(0.1)
                started = await client.post(
                    f"{BASE}/conversations",
                    json={"config_id": "support-bot", "channel": "webchat", "initial_message": "Where is ORD-78945?"},
                    headers=bearer(roles=("customer",), subject="alice"),
                )
            finally:
                runtime.send_signal(signal.SIGTERM)
                await asyncio.wait_for(runtime.wait(), 30)
        assert runtime.returncode == 0, log.read_text()[-2000:]
        assert started.status_code == 201, started.text
        reply = started.json()["agent_response"]
        assert reply is not None and "ORD-78945" in reply["message"]
        assert reply["metadata"]["tool_calls"][0]["tool"] == "fetch_order_status"
    finally:
        await delete_stream(nats_url, stream)
