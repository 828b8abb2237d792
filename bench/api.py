"""``just bench-api``: the HTTP command path, queries, projection lag and rebuild speed.

Everything runs on this machine in one go: nats-server (``sync_interval: always``), PostgreSQL,
Redis and the API as its own process (uvicorn, with its projector inline), exactly as ``up``
runs it. wrk drives the HTTP load; a paced asyncio client measures the lag from a command's
response to its position being in the read model (PostgreSQL ``NOTIFY`` of the checkpoint).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import percentile, table, write_results
from bench.http import Connection
from infra.logs import configure_logging
from infra.loop import run as run_loop
from infra.services import REPO_ROOT, NatsServer, Postgres, Redis, free_port, service_tmpdir

SECRET = "bench-" + uuid.uuid4().hex
BASE = "/api/v1/orchestration"


@dataclass
class Sizes:
    conversations: int = 1000
    seconds: int = 15
    concurrency: int = 64
    lag_rate: int = 500
    lag_seconds: int = 10
    rebuild_events: int = 100_000


def ensure_wrk() -> str:
    if found := shutil.which("wrk"):
        return found
    print("installing wrk (Debian package) for the HTTP load ...", flush=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "wrk"], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    )
    return shutil.which("wrk") or "wrk"


def start_api(
    root: Path, nats_url: str, pg_url: str, redis_url: str, *, agents: bool = False
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "PARLEY_DATA": str(root / "data"),
        "PARLEY_JWT_SECRET": SECRET,
        "PARLEY_API_PORT": str(port),
        "PARLEY_LOG_LEVEL": "WARNING",
        "PARLEY_TENANT_RATE": "1000000",
        "PARLEY_TENANT_BURST": "1000000",
        "PARLEY_CONVERSATION_MESSAGES_PER_MINUTE": "1000000",
        "PARLEY_INLINE_PROJECTORS": "0",  # the projector runs as its own process
        "PARLEY_INLINE_AGENTS": "1" if agents else "0",  # bench-api: the CQRS loop alone
        "PARLEY_REPLY_WAIT_SECONDS": "10" if agents else "0",  # with no runtime, nobody waits for a reply
        "PARLEY_ANALYTICS": "0",  # the ClickHouse projector has its own benchmark (bench-analytics)
        "PARLEY_DEMO_TENANTS": "bench",  # the demo configs (support-bot, sales-bot) for the bench tenant
        "PARLEY_API_WORKERS": os.environ.get("PARLEY_API_WORKERS", "1"),
    }
    log = open(root / "api.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "gateways.http"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    projector = subprocess.Popen(
        [sys.executable, "-m", "projections", "run"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, projector, port
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    raise RuntimeError(f"the API did not start; see {root / 'api.log'}")


def cpu_by_process() -> dict[str, float]:
    """CPU seconds used so far, by process kind (API, projector, nats, postgres, redis, wrk)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        kind = next(
            (
                name
                for name, marker in (
                    ("api", "gateways.http"),
                    ("api", "multiprocessing.spawn"),
                    ("projector", "projections run"),
                    ("nats", "nats-server"),
                    ("postgres", "postgres"),
                    ("redis", "redis-server"),
                    ("wrk", "wrk "),
                    ("bench client", "bench.api"),
                )
                if marker in cmdline
            ),
            None,
        )
        if kind:
            out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    # The whole machine, busy time of every core (a load generator's share shows only here).
    cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    out["machine"] = (sum(int(v) for v in cpu) - int(cpu[3]) - int(cpu[4])) / tick
    return out


def cpu_share(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores used by each kind over a phase (1.0 = one core busy the whole time)."""
    return {k: round((after.get(k, 0) - before.get(k, 0)) / seconds, 2) for k in sorted(after)}


def token() -> str:
    from infra.tokens import make_token

    return make_token(SECRET, subject="bench", tenant="bench", roles=["customer", "support_agent"])


async def create_conversations(port: int, n: int) -> list[str]:
    headers = {"Authorization": f"Bearer {token()}"}
    conns = [await Connection("127.0.0.1", port, headers).open() for _ in range(16)]
    ids: list[str] = []

    async def worker(conn: Connection, count: int) -> None:
        for _ in range(count):
            status, body = await conn.request(
                "POST", f"{BASE}/conversations", {"config_id": "support-bot", "channel": "webchat", "user_id": "u-1"}
            )
            assert status == 201, body
            ids.append(body["conversation_id"])

    await asyncio.gather(*(worker(c, n // len(conns)) for c in conns))
    for c in conns:
        await c.close()
    return ids


def run_wrk(wrk: str, script: str, port: int, ids_file: Path, s: Sizes) -> dict[str, Any]:
    env = {**os.environ, "PARLEY_IDS": str(ids_file), "PARLEY_TOKEN": token()}
    out = subprocess.run(
        [
            wrk,
            "-t2",
            f"-c{s.concurrency}",
            f"-d{s.seconds}s",
            "--latency",
            "-s",
            str(REPO_ROOT / "bench" / "wrk" / script),
            f"http://127.0.0.1:{port}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    lat = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    return {
        "requests_per_s": rps,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
        "raw": out,
    }


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    return (
        value / 1000
        if text.endswith("us")
        else value * 1000
        if text.endswith("s") and not text.endswith("ms")
        else value
    )


async def measure_lag(port: int, pg_url: str, ids: list[str], s: Sizes) -> dict[str, Any]:
    import psycopg

    seen: list[tuple[int, float]] = []  # (checkpoint, when it was announced)
    listener = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    await listener.execute("LISTEN parley_checkpoint")
    stop = asyncio.Event()

    async def listen() -> None:
        while not stop.is_set():
            async for notice in listener.notifies(timeout=0.2):
                name, _, seq = notice.payload.rpartition(":")
                if name == "conversations":
                    seen.append((int(seq), time.perf_counter()))

    listen_task = asyncio.create_task(listen())
    headers = {"Authorization": f"Bearer {token()}"}
    conns = [await Connection("127.0.0.1", port, headers).open() for _ in range(32)]
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    done: list[tuple[int, float]] = []  # (position, response time)
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        conn = await free.get()
        try:
            status, body = await conn.request(
                "POST", f"{BASE}/conversations/{ids[i % len(ids)]}/messages", {"message": f"lag {i}"}
            )
        finally:
            free.put_nowait(conn)
        if status != 200:
            failures += 1
            return
        done.append((body["position"], time.perf_counter()))

    total = s.lag_rate * s.lag_seconds
    interval = 1 / s.lag_rate
    started = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = started + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    achieved = total / (time.perf_counter() - started)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(listen_task, 5)
    await listener.close()
    for c in conns:
        await c.close()

    lags = []
    for position, responded in done:
        announced = next((t for seq, t in seen if seq >= position), None)
        if announced is not None:
            lags.append(max(0.0, announced - responded) * 1000)
    return {
        "rate_requested": s.lag_rate,
        "rate_achieved": achieved,
        "commands": len(done),
        "failures": failures,
        "unprojected": len(done) - len(lags),
        "lag_p50_ms": percentile(lags, 50),
        "lag_p99_ms": percentile(lags, 99),
        "lag_max_ms": max(lags) if lags else None,
    }


async def seed_and_rebuild(nats_url: str, pg_url: str, data: Path, s: Sizes) -> dict[str, Any]:
    """Write ``rebuild_events`` conversation events straight to the stream, then rebuild the read model."""
    from datetime import UTC, datetime

    from psycopg_pool import AsyncConnectionPool

    from domain import conversation as c
    from projections import rebuild as _rebuild_module

    rebuild = _rebuild_module.rebuild
    from projections.registry import projector
    from streams.factory import StoreSettings, open_store
    from streams.subjects import StreamId

    opened = await open_store(StoreSettings(nats_url=nats_url, data_dir=data))
    now = datetime.now(UTC)
    per = 10
    conversations = s.rebuild_events // per

    async def one(k: int) -> None:
        cid = uuid.uuid4().hex
        sid = StreamId("bench", "conversation", cid)
        started = c.ConversationStarted(
            conversation_id=cid,
            config_id="bench",
            config_version=1,
            channel="webchat",
            user_id=f"u-{k}",
            started_at=now,
        )
        await opened.store.append(sid, [started], expected_version=0)
        for v in range(1, per):
            msg = c.UserMessageReceived(
                message_id=f"m-{v}", user_id=f"u-{k}", content=f"message {v} about ORD-{k}", received_at=now
            )
            await opened.store.append(sid, [msg], expected_version=v)

    t0 = time.perf_counter()
    sem = asyncio.Semaphore(64)

    async def bounded(k: int) -> None:
        async with sem:
            await one(k)

    await asyncio.gather(*(bounded(k) for k in range(conversations)))
    seeded = time.perf_counter() - t0
    total_events = await opened.log.last_seq()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(pg_url, min_size=1, max_size=4, open=False)
    await pool.open()
    report = await rebuild(projector("conversations"), opened.store, pool)
    await pool.close()
    await opened.close()
    return {
        "events_written": conversations * per,
        "write_seconds": seeded,
        "stream_events": total_events,
        "rebuild_events": report.events,
        "rebuild_seconds": report.seconds,
        "rebuild_events_per_s": report.events_per_second,
        "swap_locked_ms": report.locked_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run, to check the benchmark itself")
    args = parser.parse_args()
    configure_logging(level="WARNING", json=False)
    s = Sizes(conversations=200, seconds=5, lag_seconds=3, rebuild_events=10_000) if args.quick else Sizes()
    wrk = ensure_wrk()
    root = service_tmpdir("parley-bench-api-")
    nats, pg, redis = NatsServer(root / "nats", sync_always=True), Postgres(root / "pg"), Redis(root / "redis")
    api = projector_proc = None
    results: dict[str, Any] = {}
    try:
        nats_url, pg_url, redis_url = nats.start(), pg.start(), redis.start()
        api, projector_proc, port = start_api(root, nats_url, pg_url, redis_url)
        print(f"api on :{port}; creating {s.conversations} conversations ...", flush=True)
        ids = asyncio.run(create_conversations(port, s.conversations))
        ids_file = root / "ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        print(f"commands at concurrency {s.concurrency} for {s.seconds}s ...", flush=True)
        before = cpu_by_process()
        results["commands"] = run_wrk(wrk, "commands.lua", port, ids_file, s)
        results["commands"]["cores"] = cpu_share(before, cpu_by_process(), s.seconds)
        print(f"queries at concurrency {s.concurrency} for {s.seconds}s ...", flush=True)
        before = cpu_by_process()
        results["queries"] = run_wrk(wrk, "queries.lua", port, ids_file, s)
        results["queries"]["cores"] = cpu_share(before, cpu_by_process(), s.seconds)
        print(f"lag under a steady {s.lag_rate} commands/s for {s.lag_seconds}s ...", flush=True)
        results["lag"] = asyncio.run(measure_lag(port, pg_url, ids, s))
        for proc in (api, projector_proc):
            proc.terminate()
            proc.wait(30)
        api = None
        print(f"writing {s.rebuild_events:,} events and rebuilding the read model ...", flush=True)
        # On the loop of ``python -m projections rebuild`` (infra.loop).
        results["rebuild"] = run_loop(seed_and_rebuild(nats_url, pg_url, root / "data", s))
    finally:
        if api is not None:
            api.kill()
            projector_proc.kill()
        for srv in (redis, pg, nats):
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)

    cmd, qry, lag, reb = results["commands"], results["queries"], results["lag"], results["rebuild"]
    rows = [
        [
            "commands/s at concurrency 64 (start + message)",
            cmd["requests_per_s"],
            ">= 2,000",
            f"p50 {cmd['p50_ms']} ms, p99 {cmd['p99_ms']} ms, non-2xx {cmd['non_2xx']}",
        ],
        [
            "query latency p50 / p99 ms",
            f"{qry['p50_ms']} / {qry['p99_ms']}",
            "",
            f"{qry['requests_per_s']:,.0f} queries/s, non-2xx {qry['non_2xx']}",
        ],
        [
            f"lag p50 / p99 ms at {s.lag_rate}/s",
            f"{lag['lag_p50_ms']:.1f} / {lag['lag_p99_ms']:.1f}",
            "p99 < 100",
            f"achieved {lag['rate_achieved']:.0f}/s, failures {lag['failures']}",
        ],
        [
            f"rebuild events/s over {reb['rebuild_events']:,} events",
            reb["rebuild_events_per_s"],
            ">= 20,000",
            f"swap held the live projector {reb['swap_locked_ms']:.1f} ms",
        ],
    ]
    print()
    print(table(["measure", "value", "target", "notes"], rows))
    print(f"\ncores used during the command run: {cmd['cores']}")
    print(f"cores used during the query run: {qry['cores']}")
    for part in ("commands", "queries"):
        results[part].pop("raw", None)
    path = write_results("api-quick" if args.quick else "api", {"sizes": s.__dict__, "results": results})
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
