"""``just bench-configs``: how fast a rollback reaches new conversations, and config read latency.

Everything runs on this machine: nats-server (``sync_interval: always``), PostgreSQL, Redis, and
the API as its own process with its projectors in a separate one, as ``bench-api`` runs them.

- **Rollback to first conversation**: a config alternates between two versions by rollbacks; after
  each rollback command is sent, a client starts conversations back to back until one is pinned to
  the restored version. The time from sending the rollback to that conversation's response is the
  figure (the seed's target: under 1 s).
- **Config reads**: ``GET /api/v1/configs/{id}`` (the Redis-cached path) from 16 concurrent
  clients; p50/p95/p99 (the seed's target: p95 under 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from bench.api import SECRET, start_api
from bench.common import percentile, table, write_results
from bench.http import Connection
from infra.logs import configure_logging
from infra.services import NatsServer, Postgres, Redis, service_tmpdir
from infra.tokens import make_token

CONFIGS = "/api/v1/configs"
CHAT = "/api/v1/orchestration"
SUPPORT_BOT = Path(__file__).resolve().parent.parent / "agents" / "configs" / "support_bot.yaml"


def _headers(roles: list[str], subject: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(SECRET, subject=subject, tenant='bench', roles=roles)}"}


async def rollbacks(port: int, rounds: int) -> dict[str, Any]:
    admin = await Connection("127.0.0.1", port, _headers(["org_admin"], "admin")).open()
    customer = await Connection("127.0.0.1", port, _headers(["customer"], "u-1")).open()
    base = SUPPORT_BOT.read_text()
    status, body = await admin.request("POST", CONFIGS, {"config_id": "bench-bot", "yaml_content": base})
    assert status == 201, body
    changed = yaml.safe_load(base) | {"system_prompt": "You are brief."}
    status, body = await admin.request(
        "POST", f"{CONFIGS}/bench-bot/versions", {"yaml_content": yaml.safe_dump(changed), "commit_message": "brief"}
    )
    assert status == 201 and body["status"] == "active", body
    start = {"config_id": "bench-bot", "channel": "webchat", "user_id": "u-1"}
    times, attempts = [], []
    for i in range(rounds):
        sent = time.perf_counter()
        status, rolled = await admin.request("POST", f"{CONFIGS}/bench-bot/rollback", {"reason": f"round {i}"})
        assert status == 200, rolled
        target = rolled["new_current_version"]
        tries = 0
        while True:
            tries += 1
            status, started = await customer.request("POST", f"{CHAT}/conversations", start)
            assert status == 201, started
            if started["config_version"] == target:
                break
        times.append((time.perf_counter() - sent) * 1000)
        attempts.append(tries)
    await admin.close()
    await customer.close()
    return {
        "rounds": rounds,
        "p50_ms": round(percentile(times, 50), 2),
        "p95_ms": round(percentile(times, 95), 2),
        "max_ms": round(max(times), 2),
        "conversations_before_the_restored_version": max(attempts) - 1,
    }


async def reads(port: int, seconds: float, concurrency: int = 16) -> dict[str, Any]:
    headers = _headers(["config_viewer"], "viewer")
    conns = [await Connection("127.0.0.1", port, headers).open() for _ in range(concurrency)]
    latencies: list[float] = []
    cached = 0
    deadline = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        nonlocal cached
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            status, body = await conn.request("GET", f"{CONFIGS}/bench-bot")
            latencies.append((time.perf_counter() - t) * 1000)
            assert status == 200, body
            cached += bool(body.get("cached"))

    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        await c.close()
    return {
        "reads": len(latencies),
        "reads_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "from_cache": round(cached / max(len(latencies), 1), 4),
        "concurrency": concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run, to check the benchmark itself")
    args = parser.parse_args()
    configure_logging(level="WARNING", json=False)
    rounds, seconds = (10, 3.0) if args.quick else (100, 10.0)
    root = service_tmpdir("parley-bench-configs-")
    nats, pg, redis = NatsServer(root / "nats", sync_always=True), Postgres(root / "pg"), Redis(root / "redis")
    api = projector = None
    results: dict[str, Any] = {}
    try:
        nats_url, pg_url, redis_url = nats.start(), pg.start(), redis.start()
        api, projector, port = start_api(root, nats_url, pg_url, redis_url)
        print(f"api on :{port}; {rounds} rollbacks ...", flush=True)
        results["rollback"] = asyncio.run(rollbacks(port, rounds))
        print(f"config reads for {seconds:.0f}s ...", flush=True)
        results["reads"] = asyncio.run(reads(port, seconds))
    finally:
        for proc in (api, projector):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
        for srv in (redis, pg, nats):
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)

    rb, rd = results["rollback"], results["reads"]
    rows = [
        [
            "rollback -> first new conversation on the restored version",
            f"p50 {rb['p50_ms']} / p95 {rb['p95_ms']} ms",
            "< 1,000 ms",
            f"{rb['rounds']} rollbacks; max {rb['max_ms']} ms; "
            f"{rb['conversations_before_the_restored_version']} conversations started on the old version",
        ],
        [
            "config read (GET /configs/{id})",
            f"p50 {rd['p50_ms']} / p95 {rd['p95_ms']} / p99 {rd['p99_ms']} ms",
            "p95 < 50 ms",
            f"{rd['reads_per_s']:,.0f} reads/s at concurrency {rd['concurrency']}; {rd['from_cache']:.1%} from Redis",
        ],
    ]
    print()
    print(table(["measure", "value", "target", "notes"], rows))
    path = write_results("configs-quick" if args.quick else "configs", {"results": results})
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
