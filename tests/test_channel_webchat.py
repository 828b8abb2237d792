"""The web chat widget in a real browser (Debian's Chromium through Playwright): a tenant's page with
one script tag chats with the demo support bot, over a websocket and over the SSE + POST fallback, and
a reload shows the history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import websockets
from playwright.async_api import expect

from gateways.channels.settings import ChannelOptions
from infra.tokens import make_token
from tests.api_support import SECRET
from tests.console_support import CHROMIUM, chromium, screenshot, serve_platform

expect.set_options(timeout=20_000)


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"missing Debian's chromium ({CHROMIUM}): run ./parley test (it installs it)")


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as launched:
        yield launched


async def chat(page: Any, text: str) -> None:
    await page.get_by_role("textbox", name="Your message").fill(text)
    await page.get_by_role("button", name="Send").click()


async def test_a_visitor_chats_with_the_support_bot_and_a_reload_shows_the_history(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, browser: Any
) -> None:
    options = ChannelOptions(demo_page=True, run_outbox=False)
    async with serve_platform(nats_url, pg_url, redis_url, tmp_path, channels=options) as served:
        context = await browser.new_context(base_url=served.url, viewport={"width": 1024, "height": 800})
        page = await context.new_page()
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto("/chat/demo")
        await page.get_by_role("button", name="Acme support").click()
        log = page.get_by_role("log", name="Conversation")
        await expect(page.get_by_text("online")).to_be_visible()
        await chat(page, "Where is my order ORD-78945?")
        await expect(log.get_by_text("Where is my order ORD-78945?")).to_be_visible()
        reply = log.locator(".agent")
        await expect(reply.first).to_contain_text("ORD-78945")
        assert sockets and "/api/v1/chat/ws" in sockets[0]

        await page.reload()  # the session is kept: the history comes back
        await page.get_by_role("button", name="Acme support").click()
        await expect(log.get_by_text("Where is my order ORD-78945?")).to_be_visible()
        await expect(log.locator(".agent").first).to_contain_text("ORD-78945")
        await chat(page, "Thanks, and ORD-12345?")
        await expect(log.locator(".agent")).to_have_count(2)
        await screenshot(page, "webchat-widget")
        await context.close()


async def test_where_websockets_are_blocked_the_widget_chats_over_server_sent_events(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, browser: Any
) -> None:
    options = ChannelOptions(demo_page=True, run_outbox=False)
    async with serve_platform(nats_url, pg_url, redis_url, tmp_path, channels=options) as served:
        context = await browser.new_context(base_url=served.url)
        page = await context.new_page()
        page_html = (
            "<!doctype html><html lang=en><title>Shop</title><body><h1>Shop</h1>"
            '<script src="/chat/widget.js" data-session-url="/chat/demo/session" data-transport="sse"'
            ' data-title="Help"></script></body></html>'
        )
        await page.route(f"{served.url}/shop", lambda route: route.fulfill(body=page_html, content_type="text/html"))
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto("/shop")
        await page.get_by_role("button", name="Help").click()
        await expect(page.get_by_text("online")).to_be_visible()
        await chat(page, "Where is my order ORD-78945?")
        await expect(page.get_by_role("log", name="Conversation").locator(".agent").first).to_contain_text("ORD-78945")
        assert sockets == []
        await context.close()


async def test_the_socket_shows_typing_while_the_bot_answers_and_a_resent_message_is_taken_once(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    options = ChannelOptions(run_outbox=False)
    async with serve_platform(nats_url, pg_url, redis_url, tmp_path, channels=options) as served:
        token = make_token(SECRET, subject="web-typing", tenant="demo", roles=["customer"], hours=1)
        url = served.url.replace("http", "ws") + f"/api/v1/chat/ws?token={token}"
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv()) == {"type": "history", "conversation_id": None, "messages": []}
            for _ in range(2):  # sent again after a dropped ack: the same id, taken once
                await ws.send(json.dumps({"type": "message", "id": "m-1", "text": "Where is my order ORD-78945?"}))
            frames = []
            while not any(f.get("role") == "agent" for f in frames):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        kinds = [(f["type"], f.get("role") or f.get("on")) for f in frames if f["type"] != "ack"]
        assert kinds == [("message", "customer"), ("typing", True), ("typing", False), ("message", "agent")]
        acks = [f for f in frames if f["type"] == "ack"]
        assert [a["duplicate"] for a in acks] == [False, True]
        async with websockets.connect(url) as ws:  # a reconnect: the history
            history = json.loads(await ws.recv())
            assert [m["role"] for m in history["messages"]] == ["customer", "agent"]
        refused = served.url.replace("http", "ws") + "/api/v1/chat/ws?token=not-a-token"
        async with websockets.connect(refused) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
