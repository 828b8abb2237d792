"""The console's browser tests: the platform served on a free port with development sign-in, and
Debian's Chromium driven by Playwright (never a browser Playwright downloads).

A screenshot of each journey's end is kept under ``tests/artifacts/console/`` (ignored by git).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateways.http.app import create_app
from gateways.http.console import console_dir
from projections.analytics.sink import AnalyticsSettings
from tests.api_support import bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts" / "console"
AXE = REPO / "console" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TENANT = "demo"


def require_console() -> None:
    """The browser tests need what ``./parley test`` installs: Chromium, the built console, axe-core."""
    missing = [
        what
        for what, present in (
            (f"Debian's chromium ({CHROMIUM})", CHROMIUM.exists() or shutil.which("chromium")),
            (f"the built console ({console_dir() / 'index.html'})", (console_dir() / "index.html").is_file()),
            (f"axe-core ({AXE})", AXE.is_file()),
        )
        if not present
    ]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run ./parley test (it installs and builds them)")


@dataclass
class Served:
    url: str
    api: httpx.AsyncClient

    def headers(self, *roles: str, subject: str = "user-1") -> dict[str, str]:
        return bearer(TENANT, roles, subject=subject)


@asynccontextmanager
async def serve_platform(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, *, analytics: bool = False, **overrides: Any
) -> AsyncIterator[Served]:
    """The API (its projectors and agent runtime inside) on a free port, tenant ``demo`` with the demo configs."""
    stream = unique_stream()
    if analytics:
        overrides["analytics"] = AnalyticsSettings(data_dir=tmp_path / "analytics", batch=50)
    settings = settings_for(
        nats_url,
        fresh_database(pg_url),
        redis_url,
        tmp_path,
        stream,
        demo_tenants=(TENANT,),
        auto_rollback=None,
        **overrides,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,  # a browser may still hold a live event stream open
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "the API did not start"
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield Served(url, client)
    finally:
        server.should_exit = True
        await serving
        await delete_stream(nats_url, stream)


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium, headless; each launch gets a fresh profile directory from Playwright."""
    from playwright.async_api import async_playwright

    executable = str(CHROMIUM) if await asyncio.to_thread(CHROMIUM.exists) else shutil.which("chromium")
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        try:
            yield browser
        finally:
            await browser.close()


async def sign_in(browser: Any, served: Served, role_label: str, *, bypass_csp: bool = False) -> Any:
    """A new browser context signed in through the console's development sign-in, at 1024 px wide.

    ``bypass_csp``: let a test inject a script (axe-core) past the console's Content-Security-Policy."""
    from playwright.async_api import expect

    context = await browser.new_context(
        viewport={"width": 1024, "height": 900}, base_url=served.url, bypass_csp=bypass_csp
    )
    page = await context.new_page()
    await page.goto("/console/")
    await page.get_by_role("button", name=f"Sign in as {role_label}").click()
    await expect(page.get_by_role("navigation", name="Sections")).to_be_visible()
    return page


async def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core (from console/node_modules) run in the page: its serious and critical violations."""
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"][:5]]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]
