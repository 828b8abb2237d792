"""``just bench-channels``: webhook intake, inbound webhooks per second, reply -> provider, web-chat sockets.

Everything on this machine: nats-server (``sync_interval: always``), PostgreSQL, Redis, the API as its
own process (uvicorn; the agent runtime off, so the bot's CPU does not blur the channel path; the
projectors in their own process), a local server speaking the WhatsApp Cloud API in this process,
and this process as the load. Measured:

1. **Webhook intake to the conversation's commit**: signed WhatsApp webhooks paced at a steady rate,
   each a customer's next message; the API answers once the message is committed to the stream, so
   the request's round trip is intake -> commit (signature, parse, contact, append, fsync).
2. **Inbound webhooks per second**: the same webhooks from many connections as fast as they go.
3. **Reply -> provider**: replies appended to the conversations (as the agent runtime appends them)
   at a steady rate; from just before the append to the Graph API request arriving at the local
   server (the outbox's feed, the delivery's request and attempt commits, the send).
4. **Web-chat sockets**: N websockets held open on the API, each with its conversation; a reply
   appended to every conversation and the time until each socket has it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import re
import resource
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import websockets

from bench.api import SECRET, _ms, cpu_by_process, cpu_share, ensure_wrk, start_api
from bench.common import percentile, table, write_results
from commands.runner import CommandContext, CommandRunner
from domain import channel as ch
from domain import conversation as c
from infra.logs import configure_logging
from infra.services import NatsServer, Postgres, Redis, service_tmpdir
from infra.tokens import make_token
from streams.factory import StoreSettings, open_store
from tests.channel_fakes.providers import FakeGraph

TENANT = "bench"
APP_SECRET = "bench-app-secret"
PHONE = "1055"


@dataclass
class Sizes:
    customers: int = 1000
    intake_rate: int = 200
    intake_seconds: int = 10
    flood_seconds: int = 10
    flood_connections: int = 64
    reply_rate: int = 50
    reply_seconds: int = 10
    sockets: int = 5000


class Raw:
    """A keep-alive HTTP/1.1 connection sending prepared bodies with headers of their own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Raw:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=2**20)
        return self

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        assert self.reader is not None and self.writer is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def webhook(wa_id: str, text: str) -> tuple[bytes, dict[str, str]]:
    message = {"from": wa_id, "id": f"wamid.{uuid.uuid4().hex}", "timestamp": str(int(time.time())), "type": "text",
               "text": {"body": text}}  # fmt: skip
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": PHONE},
             "contacts": [{"profile": {"name": "Bench"}, "wa_id": wa_id}], "messages": [message]}  # fmt: skip
    body = msgspec.json.encode({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": value}]}]})
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}


def customer(i: int) -> str:
    return f"3460{i:07d}"


async def configure(port: int, graph: FakeGraph) -> None:
    admin = make_token(SECRET, subject="admin", tenant=TENANT, roles=["org_admin"])
    credentials = {"access_token": graph.access_token, "app_secret": APP_SECRET, "verify_token": "v"}
    body = {"config_id": "support-bot", "sender": PHONE, "rate_per_minute": 100_000, "credentials": credentials}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.put(
            "/api/v1/channels/whatsapp", json=body, headers={"Authorization": f"Bearer {admin}"}
        )
        response.raise_for_status()


async def first_messages(port: int, n: int) -> None:
    """Each customer's first message (it opens their conversation), from 32 connections."""
    queue = list(range(n))

    async def worker() -> None:
        conn = await Raw(port).open()
        while queue:
            i = queue.pop()
            body, headers = webhook(customer(i), "Hello, where is my order ORD-78945?")
            assert await conn.post(f"/webhooks/whatsapp/{TENANT}", body, headers) == 200
        await conn.close()

    await asyncio.gather(*(worker() for _ in range(32)))


async def intake(port: int, s: Sizes) -> dict[str, Any]:
    """Paced: one webhook every 1/rate s, each on a free connection; the round trip is intake -> commit."""
    pool = [await Raw(port).open() for _ in range(32)]
    free: asyncio.Queue[Raw] = asyncio.Queue()
    for conn in pool:
        free.put_nowait(conn)
    latencies: list[float] = []
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        body, headers = webhook(customer(i % s.customers), f"message {i}")
        conn = await free.get()
        t0 = time.perf_counter()
        status = await conn.post(f"/webhooks/whatsapp/{TENANT}", body, headers)
        latencies.append((time.perf_counter() - t0) * 1000)
        failures += status != 200
        free.put_nowait(conn)

    total = s.intake_rate * s.intake_seconds
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = start + i / s.intake_rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for conn in pool:
        await conn.close()
    return {
        "rate": s.intake_rate,
        "achieved": round(total / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "failures": failures,
    }


def flood_wrk(port: int, root: Path, s: Sizes) -> dict[str, Any]:
    """wrk (C, two threads) sending prepared signed webhooks, each a new message, as fast as they go."""
    wrk = ensure_wrk()
    lines = root / "webhooks.tsv"
    with lines.open("w") as out:
        for i in range(60_000):
            body, headers = webhook(customer(i % s.customers), f"flood {i}")
            out.write(f"/webhooks/whatsapp/{TENANT}\t{headers['X-Hub-Signature-256']}\t{body.decode()}\n")
    env = {**os.environ, "PARLEY_WEBHOOKS": str(lines)}
    script = Path(__file__).resolve().parent / "wrk" / "webhooks.lua"
    args = [wrk, "-t2", f"-c{s.flood_connections}", f"-d{s.flood_seconds}s", "--latency", "-s", str(script)]
    out = subprocess.run([*args, f"http://127.0.0.1:{port}"], env=env, capture_output=True, text=True, check=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out.stdout)
    lat = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)", out.stdout, re.M)}
    return {
        "webhooks_per_s": rps,
        "connections": s.flood_connections,
        "failures": int(errors.group(1)) if errors else 0,
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
        "client": "wrk",
    }


async def flood(port: int, s: Sizes) -> dict[str, Any]:
    done = failures = 0
    deadline = time.perf_counter() + s.flood_seconds
    bodies = [webhook(customer(i % s.customers), f"flood {i}") for i in range(20_000)]

    async def worker(k: int) -> None:
        nonlocal done, failures
        conn = await Raw(port).open()
        i = k
        while time.perf_counter() < deadline:
            body, headers = bodies[i % len(bodies)] if i < len(bodies) else webhook(customer(i % s.customers), "x")
            status = await conn.post(f"/webhooks/whatsapp/{TENANT}", body, headers)
            done += status == 200
            failures += status != 200
            i += s.flood_connections
        await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(s.flood_connections)))
    elapsed = time.perf_counter() - start
    return {"webhooks_per_s": round(done / elapsed, 1), "connections": s.flood_connections, "failures": failures}


async def replies(settings: StoreSettings, graph: FakeGraph, s: Sizes) -> dict[str, Any]:
    """Replies appended at a steady rate; each one's time from the append to the Graph API request."""
    opened = await open_store(settings)
    runner = CommandRunner.for_aggregates(opened.store, [c.DECIDER, *ch.DECIDERS])
    conversations = []
    for i in range(min(s.customers, 500)):
        contact = (await runner.repository(ch.CONTACT).load(TENANT, ch.contact_id("whatsapp", customer(i)))).state
        if contact.conversation_id:
            conversations.append(contact.conversation_id)
    sent_at: dict[str, float] = {}
    arrived: dict[str, float] = {}
    graph.on_request = lambda payload: arrived.setdefault(payload.get("text", {}).get("body", ""), time.time())
    total = s.reply_rate * s.reply_seconds

    async def one(i: int) -> None:
        text = f"reply {i} {uuid.uuid4().hex[:8]}"
        command = c.RecordAgentReply(message_id=f"bench-{uuid.uuid4().hex}", content=text, at=datetime.now(UTC))
        sent_at[text] = time.time()
        await runner.handle(c.DECIDER, conversations[i % len(conversations)], command,
                            CommandContext(tenant=TENANT, actor="agent:ai"))  # fmt: skip

    start = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = start + i / s.reply_rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    deadline = time.perf_counter() + 30
    while len(arrived) < total and time.perf_counter() < deadline:  # noqa: ASYNC110 (a bounded poll)
        await asyncio.sleep(0.1)
    latencies = [(arrived[t] - sent_at[t]) * 1000 for t in sent_at if t in arrived]
    await opened.close()
    return {
        "rate": s.reply_rate,
        "replies": total,
        "delivered": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
    }


async def sockets(port: int, settings: StoreSettings, s: Sizes) -> dict[str, Any]:
    """N websockets held, each with a conversation; a reply appended to each; time until each socket has it."""
    opened = await open_store(settings)
    runner = CommandRunner.for_aggregates(opened.store, [c.DECIDER, *ch.DECIDERS])
    got: dict[str, float] = {}
    conversation_of: dict[int, str] = {}
    ready = asyncio.Event()
    held = 0
    failures = 0

    async def client(i: int) -> None:
        nonlocal held, failures
        token = make_token(SECRET, subject=f"web-bench-{i}", tenant=TENANT, roles=["customer"], hours=1)
        try:
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/api/v1/chat/ws?token={token}", open_timeout=120, ping_interval=None,
                max_queue=64,
            ) as ws:  # fmt: skip
                await ws.recv()  # the history
                await ws.send(msgspec.json.encode({"type": "message", "id": f"m{i}", "text": "hello"}).decode())
                while True:
                    frame = msgspec.json.decode(await ws.recv())
                    if frame.get("type") == "ack":
                        conversation_of[i] = frame["conversation_id"]
                        break
                held += 1
                await ready.wait()
                while True:
                    frame = msgspec.json.decode(await ws.recv())
                    if frame.get("type") == "message" and frame.get("role") == "agent":
                        got[frame["text"]] = time.time()
                        return
        except Exception:
            failures += 1

    start = time.perf_counter()
    clients = []
    for i in range(s.sockets):
        clients.append(asyncio.create_task(client(i)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # a ramp, not a stampede of handshakes
    while held + failures < s.sockets and time.perf_counter() - start < 600:  # noqa: ASYNC110 (a bounded poll)
        await asyncio.sleep(0.2)
    opened_in = time.perf_counter() - start
    held_at_peak = held
    ready.set()
    sent_at: dict[str, float] = {}

    async def reply(i: int, cid: str) -> None:
        text = f"socket reply {i}"
        sent_at[text] = time.time()
        command = c.RecordAgentReply(message_id=f"sock-{i}", content=text, at=datetime.now(UTC))
        await runner.handle(c.DECIDER, cid, command, CommandContext(tenant=TENANT, actor="agent:ai"))

    semaphore = asyncio.Semaphore(64)

    async def limited(i: int, cid: str) -> None:
        async with semaphore:
            await reply(i, cid)

    t0 = time.perf_counter()
    await asyncio.gather(*(limited(i, cid) for i, cid in conversation_of.items()))
    await asyncio.wait(clients, timeout=120)
    all_in = time.perf_counter() - t0
    latencies = [(got[t] - sent_at[t]) * 1000 for t in sent_at if t in got]
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    await opened.close()
    return {
        "sockets": s.sockets,
        "held": held_at_peak,
        "failures": failures,
        "opened_in_s": round(opened_in, 1),
        "replies_delivered": len(latencies),
        "all_delivered_in_s": round(all_in, 1),
        "reply_p50_ms": round(percentile(latencies, 50), 1),
        "reply_p95_ms": round(percentile(latencies, 95), 1),
    }


async def run(s: Sizes, root: Path, nats_url: str, pg_url: str, redis_url: str) -> dict[str, Any]:
    graph = FakeGraph(access_token="bench-token", app_secret=APP_SECRET, tenant=TENANT, phone_number_id=PHONE)
    graph.window = 10**9
    os.environ["PARLEY_WHATSAPP_URL"] = await graph.start()
    os.environ["PARLEY_PUBLIC_URL"] = ""
    api, projector, port = await asyncio.to_thread(start_api, root, nats_url, pg_url, redis_url)
    store = StoreSettings.from_env(nats_url=nats_url, data_dir=root / "data")
    results: dict[str, Any] = {}
    try:
        await configure(port, graph)
        print(f"api on :{port}; {s.customers} customers write their first message ...", flush=True)
        await first_messages(port, s.customers)
        print(f"webhook intake at a steady {s.intake_rate}/s for {s.intake_seconds}s ...", flush=True)
        before = cpu_by_process()
        results["intake"] = await intake(port, s)
        results["intake"]["cores"] = cpu_share(before, cpu_by_process(), s.intake_seconds)
        print(f"inbound webhooks as fast as they go, {s.flood_connections} connections, {s.flood_seconds}s ...",
              flush=True)  # fmt: skip
        before = cpu_by_process()
        results["flood"] = await asyncio.to_thread(flood_wrk, port, root, s)
        results["flood"]["cores"] = cpu_share(before, cpu_by_process(), s.flood_seconds)
        await asyncio.sleep(3)  # the outbox settles the bot-less conversations' backlog (none: no replies)
        print(f"reply -> provider at a steady {s.reply_rate}/s for {s.reply_seconds}s ...", flush=True)
        results["replies"] = await replies(store, graph, s)
        print(f"{s.sockets} web-chat sockets ...", flush=True)
        results["sockets"] = await sockets(port, store, s)
    finally:
        for proc in (api, projector):
            proc.terminate()
            try:
                proc.wait(30)
            except Exception:
                proc.kill()
        await graph.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run, to check the benchmark itself")
    parser.add_argument("--sockets", type=int, default=None, help="web-chat sockets to hold (default 5,000)")
    args = parser.parse_args()
    configure_logging(level="WARNING", json=False)
    s = Sizes(customers=200, intake_seconds=3, flood_seconds=3, reply_seconds=3, sockets=300) if args.quick else Sizes()
    if args.sockets:
        s.sockets = args.sockets
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * s.sockets + 4096)), hard))
    load_before = os.getloadavg()
    root = service_tmpdir("parley-bench-channels-")
    nats, pg, redis = NatsServer(root / "nats", sync_always=True), Postgres(root / "pg"), Redis(root / "redis")
    try:
        nats_url, pg_url, redis_url = nats.start(), pg.start(), redis.start()
        results = asyncio.run(run(s, root, nats_url, pg_url, redis_url))
    finally:
        for srv in (redis, pg, nats):
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)

    i, f, r, w = results["intake"], results["flood"], results["replies"], results["sockets"]
    rows = [
        [f"webhook intake -> commit p50 / p95 ms at {i['rate']}/s", f"{i['p50_ms']} / {i['p95_ms']}", "p95 < 20",
         f"p99 {i['p99_ms']} ms, achieved {i['achieved']}/s, failures {i['failures']}"],
        ["inbound webhooks/s sustained", f["webhooks_per_s"], ">= 2,000",
         f"{f['connections']} connections, failures {f['failures']}"],
        [f"reply event -> provider request p50 / p95 ms at {r['rate']}/s", f"{r['p50_ms']} / {r['p95_ms']}", "p95 < 50",
         f"p99 {r['p99_ms']} ms, delivered {r['delivered']}/{r['replies']}"],
        ["web-chat sockets held, replies delivered", f"{w['held']} / {w['replies_delivered']}", "5,000",
         f"opened in {w['opened_in_s']} s; reply p50/p95 {w['reply_p50_ms']}/{w['reply_p95_ms']} ms, "
         f"all in {w['all_delivered_in_s']} s; failures {w['failures']}"],
    ]  # fmt: skip
    print()
    print(table(["measure", "value", "target", "notes"], rows))
    print(f"\ncores during intake: {i['cores']}\ncores during the flood: {f['cores']}")
    load = {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]}
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']} (2 cores, shared)")
    payload = {"sizes": s.__dict__, "load_average": load, "results": results}
    path = write_results("channels-quick" if args.quick else "channels", payload)
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
