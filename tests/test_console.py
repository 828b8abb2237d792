"""The console in a browser: each test one journey a person makes, located by role and accessible
name, ending in a screenshot under tests/artifacts/console/. Playwright drives Debian's Chromium
against the platform started on free ports."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import expect

from tests.console_support import (
    Served,
    axe_violations,
    chromium,
    require_console,
    screenshot,
    serve_platform,
    sign_in,
)

expect.set_options(timeout=20_000)
CUSTOMER = ("customer",)


@pytest.fixture(autouse=True)
def _console_built() -> None:
    require_console()


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as launched:
        yield launched


async def start(served: Served, config_id: str, user: str, message: str, channel: str = "webchat") -> str:
    body = {"config_id": config_id, "channel": channel, "user_id": user, "initial_message": message}
    started = await served.api.post(
        "/api/v1/orchestration/conversations", json=body, headers=served.headers(*CUSTOMER, subject=user)
    )
    assert started.status_code in (201, 202), started.text
    return str(started.json()["conversation_id"])


async def test_a_config_manager_slows_the_voicebot_an_admin_approves_with_the_replay_and_rolls_it_back(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, browser: Any
) -> None:
    async with serve_platform(nats_url, pg_url, redis_url, tmp_path, dev_signin=True) as served:
        for k in range(2):  # recorded conversations for the what-if replay
            await start(served, "voice-bot", f"caller-{k}", "Where is my order ORD-12345?", channel="voice")

        manager = await sign_in(browser, served, "Config manager")
        await manager.goto("/console/configs/voice-bot")
        speed = manager.get_by_role("spinbutton", name="Speed value")
        await speed.fill("2.5")
        await expect(manager.get_by_text("must be a number from 0 to 2").first).to_be_visible()
        await speed.fill("0.8")
        await expect(manager.get_by_label("Validation")).to_contain_text("Valid")
        # and a new escalation rule, which makes the change medium risk: an admin must approve it
        await manager.get_by_role("button", name="Add escalation rule").click()
        rule = manager.get_by_role("group", name=re.compile(r"^rule \d+$")).last
        await rule.get_by_label("Trigger").select_option("urgent_keywords")
        await expect(rule.get_by_text("urgent_keywords needs a non-empty list of keywords")).to_be_visible()
        await rule.get_by_label("Keywords").fill("supervisor, complaint")
        await rule.get_by_label("Keywords").press("Tab")
        await expect(manager.get_by_label("Validation")).to_contain_text("Valid")
        await manager.get_by_role("button", name="Review changes").click()
        await expect(manager.get_by_label("Risk of the draft")).to_contain_text("medium risk")
        await expect(manager.get_by_text("This change needs approval")).to_be_visible()
        await expect(manager.get_by_role("table", name=re.compile("YAML of v1 and Draft"))).to_contain_text("0.8")
        await manager.get_by_label("Commit message").fill("A slower voice for older callers")
        await manager.get_by_role("button", name="Request approval").click()
        await expect(manager.get_by_role("status").filter(has_text="Saved as")).to_contain_text(
            re.compile(r"v2.*pending approval")
        )
        await screenshot(manager, "config-manager-requests-approval")

        admin = await sign_in(browser, served, "Organization admin")
        await admin.goto("/console/configs/voice-bot/approvals")
        request = admin.get_by_role("region", name=re.compile("Approval request: v2"))
        await expect(request.get_by_label("Replay of recorded conversations")).to_contain_text(
            re.compile(r"[1-9]\d* conversations? replayed")
        )
        changes = request.get_by_role("table", name="Changes")
        await expect(changes).to_contain_text("voice_config.model_settings.speed")
        await expect(changes).to_contain_text("low risk")  # the speed
        await expect(changes).to_contain_text("medium risk")  # the escalation rule
        await screenshot(admin, "admin-approval-with-replay")
        await request.get_by_role("button", name="Approve v2").click()
        await expect(admin.get_by_role("status").filter(has_text="Approved")).to_contain_text("v2")

        on_v2 = await start(served, "voice-bot", "caller-9", "Hello", channel="voice")  # stays on v2
        await admin.get_by_role("link", name="Versions").click()
        await admin.get_by_role("button", name="Roll back to v1").click()
        radius = admin.get_by_role("region", name=re.compile("blast radius"))
        affected = radius.get_by_label("Conversations affected")
        await expect(affected).to_contain_text(re.compile(r"[1-9]\d* conversations? still open on v2"))
        await expect(radius.get_by_role("table", name="Changes")).to_contain_text("0.8")
        await radius.get_by_label("Reason for the rollback").fill("Callers found it too slow")
        await radius.get_by_role("button", name="Confirm rollback to v1").click()
        done = radius.get_by_role("status").filter(has_text="Rolled back")
        await expect(done).to_contain_text("Rolled back from v2 to v1")
        await expect(done).to_contain_text(on_v2)
        await screenshot(admin, "admin-rollback-blast-radius")


async def test_the_configuration_chat_turns_more_formal_and_the_refund_tool_into_two_changes_and_applies_them(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, browser: Any
) -> None:
    async with serve_platform(nats_url, pg_url, redis_url, tmp_path, dev_signin=True, run_agents=False) as served:
        manager = await sign_in(browser, served, "Config manager")
        await manager.goto("/console/configs/sales-bot")
        chat = manager.get_by_role("complementary", name="Configuration assistant")
        await chat.get_by_label("Message to the assistant").fill("Make the bot more formal and add the refund tool")
        await chat.get_by_role("button", name="Send").click()
        changes = chat.get_by_role("list", name="Proposed changes")
        await expect(changes.get_by_role("listitem")).to_have_count(2)
        tone, tool = changes.get_by_role("listitem").first, changes.get_by_role("listitem").last
        await expect(tone).to_contain_text("System prompt: a formal tone")
        await expect(tone).to_contain_text("low risk")
        await expect(tone).to_contain_text("Use a formal, courteous tone")  # the proposed prompt
        await expect(tool).to_contain_text("Add the initiate_refund tool")
        await expect(tool).to_contain_text("medium risk")
        await expect(tool).to_contain_text("implemented and ready")
        await expect(chat).to_contain_text("an approver must accept it")
        await screenshot(manager, "config-chat-proposes-two-changes")

        await chat.get_by_role("button", name="Apply these changes").click()
        applied = chat.get_by_role("status")
        await expect(applied).to_contain_text("Saved as v2")
        await expect(applied).to_contain_text("medium risk")
        await manager.get_by_role("link", name=re.compile(r"^Approvals")).click()
        request = manager.get_by_role("region", name=re.compile("Approval request: v2"))
        await expect(request.get_by_role("table", name="Changes")).to_contain_text("initiate_refund")
        await expect(request.get_by_role("table", name="Changes")).to_contain_text("system_prompt")
        await screenshot(manager, "config-chat-applied-waiting-for-approval")


async def test_the_analytics_page_draws_its_charts_from_the_platforms_data(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, browser: Any
) -> None:
    async with serve_platform(
        nats_url, pg_url, redis_url, tmp_path, dev_signin=True, analytics=True, run_agents=False
    ) as served:
        ids = [await start(served, "support-bot", f"shopper-{k}", "hello") for k in range(6)]
        for cid in ids[:2]:
            escalated = await served.api.post(
                f"/api/v1/orchestration/conversations/{cid}/escalate",
                json={"trigger": "explicit_request", "reason": "wants a person"},
                headers=served.headers("org_admin"),
            )
            assert escalated.status_code == 200, escalated.text
        await _analytics_caught_up(served)

        analyst = await sign_in(browser, served, "Analyst")
        await analyst.get_by_role("link", name="Analytics").click()
        totals = analyst.get_by_label("Totals")
        await expect(totals).to_contain_text("Conversations6")
        for title in ("Conversations over time", "By channel", "By config version", "Escalation reasons"):
            figure = analyst.get_by_role("figure", name=title)
            await expect(figure.locator("svg.recharts-surface").first).to_be_visible()
        bars = analyst.get_by_role("figure", name="By channel").locator(".recharts-bar-rectangle")
        await expect(bars.first).to_be_visible()
        reasons = analyst.get_by_role("figure", name="Escalation reasons").locator(".recharts-bar-rectangle")
        await expect(reasons).to_have_count(1)
        await analyst.get_by_text("By channel: the numbers", exact=True).click()
        await expect(analyst.get_by_role("table", name="By channel")).to_contain_text(re.compile(r"webchat\s*6"))
        await screenshot(analyst, "analytics-charts")


async def _analytics_caught_up(served: Served) -> None:
    for _ in range(300):
        health = (await served.api.get("/health")).json()
        found = [p for p in health["projectors"] if p["name"] == "analytics"]
        if found and found[0]["lag"] == 0 and found[0]["checkpoint"] > 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the analytics projector did not catch up: {health}")


async def test_an_agent_takes_a_conversation_from_the_queue_and_resolves_it_while_the_customer_writes(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, browser: Any
) -> None:
    async with serve_platform(nats_url, pg_url, redis_url, tmp_path, dev_signin=True) as served:
        agent_id = "dev-support-agent"  # the development sign-in's subject for the role
        agent = served.headers("support_agent", subject=agent_id)
        registered = await served.api.post(
            "/api/v1/orchestration/agents", json={"name": "Dana", "skills": ["billing"]}, headers=agent
        )
        assert registered.status_code == 201, registered.text
        away = await served.api.post(
            f"/api/v1/orchestration/agents/{agent_id}/availability", json={"available": False}, headers=agent
        )
        assert away.status_code == 200, away.text
        cid = await start(served, "support-bot", "maria", "My refund for ORD-555 never came")
        customer = served.headers(*CUSTOMER, subject="maria")
        escalated = await served.api.post(
            f"/api/v1/orchestration/conversations/{cid}/escalate",
            json={"trigger": "explicit_request", "reason": "refund missing", "urgency": "high"},
            headers=customer,
        )
        assert escalated.status_code == 200, escalated.text

        page = await sign_in(browser, served, "Support agent")
        await expect(page).to_have_url(re.compile(r"/console/inbox$"))
        queue = page.get_by_role("table", name="Queue")
        await expect(queue).to_contain_text("refund missing")
        await queue.get_by_role("button", name="Take maria").click()
        await expect(page).to_have_url(re.compile(f"/console/inbox/{cid}$"))
        await expect(page.get_by_role("table", name="My conversations")).to_contain_text("maria")
        conversation = page.get_by_role("region", name=re.compile("maria"))
        await expect(conversation.get_by_label("Handoff summary")).to_contain_text("refund missing")
        await expect(page.get_by_text("Live", exact=True)).to_be_visible()

        wrote = await served.api.post(
            f"/api/v1/orchestration/conversations/{cid}/messages",
            json={"message": "Are you still there? It was 40 dollars."},
            headers=customer,
        )
        assert wrote.status_code in (200, 202), wrote.text
        messages = conversation.get_by_role("list", name="Messages")
        await expect(messages).to_contain_text("It was 40 dollars.")  # no reload: it came over SSE

        await conversation.get_by_label("Your reply").fill("I see it: the refund is on its way today.")
        await conversation.get_by_role("button", name="Send reply").click()
        await expect(messages).to_contain_text("the refund is on its way today")
        await screenshot(page, "agent-inbox-live")
        await conversation.get_by_role("button", name="Resolve and close").click()
        await expect(page).to_have_url(re.compile(r"/console/inbox$"))
        await expect(page.get_by_text("Nothing assigned to you.")).to_be_visible()
        state = await served.api.get(f"/api/v1/orchestration/conversations/{cid}", headers=agent)
        assert state.json()["status"] == "closed"
        await screenshot(page, "agent-inbox-resolved")


PAGES_BY_ROLE = {
    "Organization admin": [
        ("/console/inbox", "Inbox"),
        ("/console/conversations", "Conversations"),
        ("/console/conversations/{cid}", "Conversation"),
        ("/console/configs", "Configs"),
        ("/console/configs/voice-bot", "Config voice-bot"),
        ("/console/configs/support-bot", "Config support-bot"),
        ("/console/configs/support-bot/versions", "Config support-bot"),
        ("/console/configs/support-bot/compare", "Config support-bot"),
        ("/console/configs/support-bot/approvals", "Config support-bot"),
        ("/console/configs/support-bot/branches", "Config support-bot"),
        ("/console/configs/support-bot/history", "Config support-bot"),
        ("/console/configs/permissions", "Config permissions"),
        ("/console/analytics", "Analytics"),
    ],
    "Platform engineer": [("/console/operations", "Operations")],
}


async def test_no_page_has_serious_or_critical_accessibility_violations(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, browser: Any
) -> None:
    async with serve_platform(nats_url, pg_url, redis_url, tmp_path, dev_signin=True, analytics=True) as served:
        cid = await start(served, "support-bot", "ana", "Where is my order ORD-12345?")
        found: dict[str, list[dict[str, Any]]] = {}
        context = await browser.new_context(
            viewport={"width": 1024, "height": 900}, base_url=served.url, bypass_csp=True
        )
        signin = await context.new_page()
        await signin.goto("/console/")
        await expect(signin.get_by_role("heading", name="Development sign-in")).to_be_visible()
        found["/console/ (sign-in)"] = await axe_violations(signin)
        for role, pages in PAGES_BY_ROLE.items():
            page = await sign_in(browser, served, role, bypass_csp=True)
            for path, heading in pages:
                await page.goto(path.format(cid=cid))
                await expect(page.get_by_role("heading", level=1).first).to_contain_text(heading)
                await expect(page.get_by_text(re.compile(r"^Loading .*…$"))).to_have_count(
                    0
                )  # (live streams stay open)
                found[f"{path} ({role})"] = await axe_violations(page)
            await screenshot(page, f"axe-{role.lower().replace(' ', '-')}")
        bad = {page: v for page, v in found.items() if v}
        assert not bad, f"serious or critical accessibility violations: {bad}"
        assert len(found) == 1 + sum(len(p) for p in PAGES_BY_ROLE.values())
