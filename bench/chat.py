"""``just bench-chat``: chat turns with the offline model, through the whole platform.

The platform runs as ``up`` runs it (nats-server with ``sync_interval: always``, PostgreSQL,
Redis, the API with the agent runtime inline, the projector as its own process). A turn is one
``POST …/messages`` answered inline: the command, the agent runtime consuming it, the LangGraph
turn (offline model, tools on PostgreSQL demo data), the reply appended, the API seeing it.

1. Turn latency, one conversation at a time (the platform's own overhead: no LLM call).
2. Concurrent conversations: N simulated customers, each sending a message, waiting for the
   inline answer, then thinking 1-3 s, for a fixed time; errors and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import time
from typing import Any

from bench.api import cpu_by_process, cpu_share, start_api, token
from bench.common import percentile, table, write_results
from bench.http import Connection
from infra.logs import configure_logging
from infra.services import NatsServer, Postgres, Redis, service_tmpdir

BASE = "/api/v1/orchestration"
LINES = [
    "Where is my order ORD-78945?",
    "Can you check order ORD-12345 for me?",
    "What is the status of ORD-55555?",
    "Thanks, that helps",
    "Do you have a warranty on headphones?",
]


async def open_conns(port: int, n: int) -> list[Connection]:
    headers = {"Authorization": f"Bearer {token()}"}
    return [await Connection("127.0.0.1", port, headers).open() for _ in range(n)]


async def start_conversation(conn: Connection) -> str:
    status, body = await conn.request(
        "POST", f"{BASE}/conversations", {"config_id": "support-bot", "channel": "webchat", "user_id": "u-bench"}
    )
    assert status == 201, body
    return str(body["conversation_id"])


async def sequential_turns(port: int, turns: int) -> list[float]:
    (conn,) = await open_conns(port, 1)
    cid = await start_conversation(conn)
    latencies = []
    for i in range(turns):
        started = time.perf_counter()
        status, body = await conn.request("POST", f"{BASE}/conversations/{cid}/messages", {"message": LINES[i % 3]})
        latencies.append((time.perf_counter() - started) * 1000)
        assert status == 200 and body["agent_response"], body
    await conn.close()
    return latencies


async def concurrent_conversations(port: int, users: int, seconds: float, connections: int) -> dict[str, Any]:
    conns = await open_conns(port, connections)
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        pool.put_nowait(conn)
    ids: list[str] = []
    for _ in range(users):
        conn = await pool.get()
        try:
            ids.append(await start_conversation(conn))
        finally:
            pool.put_nowait(conn)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    rng = random.Random(7)

    async def customer(cid: str) -> None:
        await asyncio.sleep(rng.uniform(0, 3))
        turn = 0
        while time.perf_counter() < deadline:
            conn = await pool.get()
            started = time.perf_counter()
            try:
                status, body = await conn.request(
                    "POST", f"{BASE}/conversations/{cid}/messages", {"message": LINES[turn % 5]}
                )
            finally:
                pool.put_nowait(conn)
            if status == 200 and body.get("agent_response"):
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
            turn += 1
            await asyncio.sleep(rng.uniform(1, 3))

    before = cpu_by_process()
    started = time.perf_counter()
    await asyncio.gather(*(customer(cid) for cid in ids))
    elapsed = time.perf_counter() - started
    cores = cpu_share(before, cpu_by_process(), elapsed)
    for conn in conns:
        await conn.close()
    return {
        "conversations": users,
        "turns": len(latencies),
        "turns_per_s": len(latencies) / elapsed,
        "errors": errors,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "cores": cores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run, to check the benchmark itself")
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    configure_logging(level="WARNING", json=False)
    users, seconds, turns = (100, 8.0, 50) if args.quick else (args.conversations, args.seconds, 300)
    root = service_tmpdir("parley-bench-chat-")
    nats, pg, redis = NatsServer(root / "nats", sync_always=True), Postgres(root / "pg"), Redis(root / "redis")
    procs: list[Any] = []
    results: dict[str, Any] = {}
    try:
        nats_url, pg_url, redis_url = nats.start(), pg.start(), redis.start()
        api, projector, port = start_api(root, nats_url, pg_url, redis_url, agents=True)
        procs = [api, projector]
        print(f"sequential turns ({turns}) ...", flush=True)
        latencies = asyncio.run(sequential_turns(port, turns))
        results["sequential"] = {
            "turns": turns,
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
        }
        print(f"{users} concurrent conversations for {seconds:.0f}s ...", flush=True)
        results["concurrent"] = asyncio.run(concurrent_conversations(port, users, seconds, connections=64))
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for srv in (redis, pg, nats):
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)
    seq, con = results["sequential"], results["concurrent"]
    rows = [
        ["turn latency, one conversation (p50 / p95 ms)", f"{seq['p50_ms']:.1f} / {seq['p95_ms']:.1f}", "p95 < 50"],
        [
            f"{con['conversations']:,} concurrent conversations: turn p50 / p95 / p99 ms",
            f"{con['p50_ms']:.1f} / {con['p95_ms']:.1f} / {con['p99_ms']:.1f}",
            "no errors",
        ],
        [
            "  turns answered, turns/s, errors",
            f"{con['turns']:,}, {con['turns_per_s']:.0f}/s, {con['errors'] or 0}",
            "",
        ],
    ]
    print()
    print(table(["measure", "value", "target"], rows))
    print(f"\ncores used during the concurrent run: {con['cores']}")
    path = write_results("chat-quick" if args.quick else "chat", {"results": results})
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
