"""``./parley bench-console``: the console in Debian's Chromium against the platform on this machine.

nats-server, PostgreSQL, Redis, the API (serving the built console) and its projector as
``bench-api`` runs them; Playwright drives headless Chromium (``/usr/bin/chromium``).

- **First load of the inbox**: a signed-in support agent opens ``/console/inbox`` in a new browser
  context (empty cache); the time from navigation start to the queue and the agent's list drawn
  from the API (``performance.now()`` in the page). p50/p95 over the runs (target: under 1 s).
- **Initial JavaScript**: the JavaScript that first load fetched, gzipped as the API sends it
  (target: under 300 KB).
- **Customer message to the open inbox**: the agent has the escalated conversation open; the
  customer sends messages one at a time; the time from sending each (``POST …/messages``) to its
  text in the page, carried by the tenant's live event stream (SSE), p50/p95 (target: p95 under
  200 ms). Both clocks are this machine's wall clock.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from bench.api import SECRET, start_api
from bench.common import percentile, table, write_results
from gateways.http.console import console_dir
from infra.logs import configure_logging
from infra.services import NatsServer, Postgres, Redis, service_tmpdir
from infra.tokens import make_token

TENANT = "bench"
AGENT = "bench-agent"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN_KEY = "parley.console.token"  # console/src/api/session.ts


def _token(roles: list[str], subject: str) -> str:
    return make_token(SECRET, subject=subject, tenant=TENANT, roles=roles)


def _headers(roles: list[str], subject: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(roles, subject)}"}


async def _escalated_conversation(api: httpx.AsyncClient) -> str:
    """A conversation escalated to the benchmark's agent (registered and available)."""
    agent = _headers(["support_agent"], AGENT)
    registered = await api.post("/api/v1/orchestration/agents", json={"name": "Bench Agent"}, headers=agent)
    assert registered.status_code == 201, registered.text
    available = await api.post(
        f"/api/v1/orchestration/agents/{AGENT}/availability", json={"available": True}, headers=agent
    )
    assert available.status_code == 200, available.text
    customer = _headers(["customer"], "bench-customer")
    body = {"config_id": "support-bot", "channel": "webchat", "user_id": "bench-customer", "initial_message": "hi"}
    started = await api.post("/api/v1/orchestration/conversations", json=body, headers=customer)
    assert started.status_code in (201, 202), started.text
    cid = str(started.json()["conversation_id"])
    escalated = await api.post(
        f"/api/v1/orchestration/conversations/{cid}/escalate",
        json={"trigger": "explicit_request", "reason": "benchmark"},
        headers=customer,
    )
    assert escalated.status_code == 200, escalated.text
    return cid


async def _context(browser: Any, base: str) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, base_url=base)
    token = json.dumps(_token(["support_agent"], AGENT))
    await context.add_init_script(f"window.localStorage.setItem({json.dumps(TOKEN_KEY)}, {token});")
    return context


# The inbox is drawn: both lists answered (a table, or the sentence saying it is empty).
INBOX_DRAWN = """() => {
  if (!document.body) return false;
  const text = document.body.innerText;
  const queue = text.includes('Nobody is waiting.') || !!document.querySelector('table[aria-label="Queue"]');
  const mine = text.includes('Nothing assigned to you.')
    || !!document.querySelector('table[aria-label="My conversations"]');
  return queue && mine;
}"""


async def first_loads(browser: Any, base: str, runs: int) -> dict[str, Any]:
    times: list[float] = []
    scripts: set[str] = set()
    for _ in range(runs):
        context = await _context(browser, base)
        page = await context.new_page()
        loaded: list[str] = []
        page.on("response", lambda r, seen=loaded: seen.append(r.url) if r.url.endswith(".js") else None)
        await page.goto("/console/inbox", wait_until="commit")
        await page.wait_for_function(INBOX_DRAWN, polling="raf", timeout=30_000)
        times.append(await page.evaluate("performance.now()"))
        scripts.update(loaded)
        await context.close()
    root = console_dir()
    raw = gz = 0
    for url in sorted(scripts):
        path = root / urlparse(url).path.removeprefix("/console/")
        data = path.read_bytes()
        raw += len(data)
        gz += len(gzip.compress(data, compresslevel=9, mtime=0))
    return {
        "runs": runs,
        "p50_ms": round(percentile(times, 50), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "max_ms": round(max(times), 1),
        "js_files": len(scripts),
        "js_bytes": raw,
        "js_gzip_bytes": gz,
    }


async def message_to_inbox(browser: Any, base: str, api: httpx.AsyncClient, messages: int) -> dict[str, Any]:
    cid = await _escalated_conversation(api)
    context = await _context(browser, base)
    page = await context.new_page()
    await page.goto(f"/console/inbox/{cid}")
    await page.get_by_text("Live", exact=True).wait_for(timeout=30_000)
    await page.get_by_role("list", name="Messages").wait_for(timeout=30_000)
    # The page notes (wall clock, ms) when each message's text first appears.
    await page.evaluate(
        """() => {
      window.__seen = {};
      new MutationObserver(() => {
        if (!document.body) return false;
  const text = document.body.innerText;
        for (const m of text.matchAll(/bench message (\\d+) end/g)) window.__seen[m[1]] ??= Date.now();
      }).observe(document.body, { childList: true, subtree: true, characterData: true });
    }"""
    )
    customer = _headers(["customer"], "bench-customer")
    sent: dict[str, float] = {}
    for i in range(messages):
        sent[str(i)] = time.time() * 1000
        wrote = await api.post(
            f"/api/v1/orchestration/conversations/{cid}/messages",
            json={"message": f"bench message {i} end"},
            headers=customer,
        )
        assert wrote.status_code in (200, 202), wrote.text
        await page.wait_for_function(f"() => window.__seen['{i}'] !== undefined", timeout=10_000)
        await asyncio.sleep(0.05)
    seen: dict[str, float] = await page.evaluate("window.__seen")
    await context.close()
    latencies = [seen[k] - sent[k] for k in sent]
    return {
        "messages": messages,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "max_ms": round(max(latencies), 1),
    }


async def run(port: int, loads: int, messages: int, executable: str) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as api, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            return {
                "first_load": await first_loads(browser, base, loads),
                "message_to_inbox": await message_to_inbox(browser, base, api, messages),
            }
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run, to check the benchmark itself")
    args = parser.parse_args()
    configure_logging(level="WARNING", json=False)
    if not (console_dir() / "index.html").is_file():
        raise SystemExit("the console is not built: run ./parley bench-console (it builds it)")
    executable = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if executable is None:
        raise SystemExit("Debian's chromium is missing: run ./parley bench-console (it installs it)")
    loads, messages = (3, 10) if args.quick else (20, 100)
    root = service_tmpdir("parley-bench-console-")
    nats, pg, redis = NatsServer(root / "nats", sync_always=True), Postgres(root / "pg"), Redis(root / "redis")
    api = projector = None
    try:
        nats_url, pg_url, redis_url = nats.start(), pg.start(), redis.start()
        api, projector, port = start_api(root, nats_url, pg_url, redis_url)
        print(f"api on :{port}; {loads} first loads, {messages} customer messages ...", flush=True)
        results = asyncio.run(run(port, loads, messages, executable))
    finally:
        for proc in (api, projector):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
        for srv in (redis, pg, nats):
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)

    load, live = results["first_load"], results["message_to_inbox"]
    rows = [
        [
            "first load of the inbox (signed in, empty cache)",
            f"p50 {load['p50_ms']} / p95 {load['p95_ms']} ms",
            "< 1,000 ms",
            f"{load['runs']} loads; max {load['max_ms']} ms",
        ],
        [
            "initial JavaScript, gzipped",
            f"{load['js_gzip_bytes'] / 1024:,.1f} KB",
            "< 300 KB",
            f"{load['js_files']} files, {load['js_bytes'] / 1024:,.1f} KB unzipped",
        ],
        [
            "customer message -> visible in the open inbox",
            f"p50 {live['p50_ms']} / p95 {live['p95_ms']} ms",
            "p95 < 200 ms",
            f"{live['messages']} messages over the tenant's SSE; max {live['max_ms']} ms",
        ],
    ]
    print()
    print(table(["measure", "value", "target", "notes"], rows))
    path = write_results("console-quick" if args.quick else "console", {"results": results})
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
