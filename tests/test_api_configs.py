"""Agent configs over HTTP against the real stack: versions, compare, rollback, pinning, permissions."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
import uvicorn
import yaml
from litestar.testing import AsyncTestClient

from commands.config import MonitorSettings
from gateways.http.app import create_app
from tests.api_support import api_client, bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

CONFIGS = "/api/v1/configs"
CHAT = "/api/v1/orchestration"
ADMIN = bearer(roles=("org_admin",), subject="jane")
OTHER_ADMIN = bearer(roles=("org_admin",), subject="omar")
MANAGER = bearer(roles=("config_manager",), subject="john")
VIEWER = bearer(roles=("config_viewer",), subject="vic")
CUSTOMER = bearer()
BASE_YAML = (Path(__file__).resolve().parent.parent / "agents" / "configs" / "support_bot.yaml").read_text()


def variant(**changes: Any) -> str:
    raw = yaml.safe_load(BASE_YAML)
    raw.update(changes)
    return yaml.safe_dump(raw, sort_keys=False)


@pytest_asyncio.fixture
async def client(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    stream = unique_stream()
    settings = settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream)
    try:
        async with api_client(settings) as c:
            yield c
    finally:
        await delete_stream(nats_url, stream)


async def create_config(client: AsyncTestClient[Any], config_id: str = "faq-bot") -> dict[str, Any]:
    created = await client.post(
        CONFIGS, json={"config_id": config_id, "yaml_content": BASE_YAML, "commit_message": "first"}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    return created.json()


async def new_version(client: AsyncTestClient[Any], text: str, headers: dict[str, str] = ADMIN, **more: Any) -> Any:
    return await client.post(
        f"{CONFIGS}/faq-bot/versions", json={"yaml_content": text, "commit_message": "change", **more}, headers=headers
    )


async def start(client: AsyncTestClient[Any], config_id: str = "faq-bot") -> dict[str, Any]:
    body = {"config_id": config_id, "channel": "webchat", "user_id": "user-1"}
    started = await client.post(f"{CHAT}/conversations", json=body, headers=CUSTOMER)
    assert started.status_code == 201, started.text
    return started.json()


async def conversation(client: AsyncTestClient[Any], cid: str, position: int = 0) -> dict[str, Any]:
    read = await client.get(f"{CHAT}/conversations/{cid}", params={"min_position": position}, headers=CUSTOMER)
    assert read.status_code == 200, read.text
    return read.json()


async def test_rolled_back_content_reaches_new_conversations_while_older_ones_stay_pinned(
    client: AsyncTestClient[Any],
) -> None:
    v1 = await create_config(client)
    assert (v1["version"], v1["status"], v1["active_version"]) == (1, "active", 1)
    a = await start(client)
    assert a["config_version"] == 1

    changed = await new_version(client, variant(system_prompt="You are a casual and friendly assistant."))
    assert changed.status_code == 201, changed.text
    v2 = changed.json()
    assert (v2["version"], v2["status"], v2["risk_level"], v2["change_type"]) == (2, "active", "low", "system_prompt")
    b = await start(client)
    assert b["config_version"] == 2

    compared = await client.post(
        f"{CONFIGS}/faq-bot/versions/compare", json={"version_a": 1, "version_b": 2}, headers=VIEWER
    )
    assert compared.status_code == 200, compared.text
    diff = compared.json()
    assert diff["diff"]["modified"]["system_prompt"]["new"] == "You are a casual and friendly assistant."
    assert diff["breaking_changes"] is False and diff["risk_assessment"]["risk_level"] == "low"

    await conversation(client, b["conversation_id"], b["position"])  # B is in the read model: the blast radius sees it
    rolled = await client.post(
        f"{CONFIGS}/faq-bot/rollback", json={"target_version": 1, "reason": "v2 too casual"}, headers=MANAGER
    )
    assert rolled.status_code == 200, rolled.text
    body = rolled.json()
    assert (body["rolled_back_from"], body["rolled_back_to"], body["new_current_version"]) == (2, 1, 3)
    assert body["active_version"] == 1  # the seed: the target is the active version (its content, as v3)
    assert body["pinned_conversations"] == [b["conversation_id"]]

    c = await start(client)
    assert c["config_version"] == 3
    read = await client.get(
        f"{CONFIGS}/faq-bot", params={"version": 3, "min_position": body["position"]}, headers=VIEWER
    )
    assert read.status_code == 200, read.text
    assert read.json()["yaml_content"] == BASE_YAML  # the restored content is v1's

    for cid, version in ((a["conversation_id"], 1), (b["conversation_id"], 2), (c["conversation_id"], 3)):
        sent = await client.post(
            f"{CHAT}/conversations/{cid}/messages", json={"message": "hello again"}, headers=CUSTOMER
        )
        assert sent.status_code in (200, 202), sent.text
        assert (await conversation(client, cid, sent.json()["position"]))["config_version"] == version

    versions = (await client.get(f"{CONFIGS}/faq-bot/versions", headers=VIEWER)).json()
    assert [(v["version"], v["status"]) for v in versions["versions"]] == [
        (3, "active"),
        (2, "archived"),
        (1, "archived"),
    ]
    assert versions["versions"][1]["rolled_back"] is True and versions["versions"][0]["restores_version"] == 1


async def test_config_reads_come_from_the_cache_and_never_serve_an_older_version(client: AsyncTestClient[Any]) -> None:
    position = (await create_config(client))["position"]
    first = (await client.get(f"{CONFIGS}/faq-bot", params={"min_position": position}, headers=VIEWER)).json()
    again = (await client.get(f"{CONFIGS}/faq-bot", headers=VIEWER)).json()
    assert (first["version"], first["cached"], again["cached"]) == (1, False, True)
    changed = await new_version(client, variant(system_prompt="Shorter answers."))
    read = (
        await client.get(f"{CONFIGS}/faq-bot", params={"min_position": changed.json()["position"]}, headers=VIEWER)
    ).json()
    assert read["version"] == 2 and read["cached"] is False


async def test_a_medium_risk_change_waits_for_another_admin(client: AsyncTestClient[Any]) -> None:
    await create_config(client)
    raw = yaml.safe_load(BASE_YAML)
    rules = raw["escalation_rules"]
    rules[0]["keywords"] = [*rules[0]["keywords"], "attorney"]
    pending = await new_version(client, variant(escalation_rules=rules))
    assert pending.status_code == 201, pending.text
    assert (pending.json()["status"], pending.json()["approvals_missing"]) == ("pending_approval", ["org_admin"])
    assert (await start(client))["config_version"] == 1  # not live yet

    own = await client.post(f"{CONFIGS}/faq-bot/versions/2/approve", headers=ADMIN)
    assert own.status_code == 403 and "own" in own.json()["message"]
    approved = await client.post(f"{CONFIGS}/faq-bot/versions/2/approve", headers=OTHER_ADMIN)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "active"
    assert (await start(client))["config_version"] == 2


async def test_what_a_caller_may_not_do_is_refused_with_403_and_appends_nothing(client: AsyncTestClient[Any]) -> None:
    position = (await create_config(client))["position"]
    text = variant(system_prompt="Viewer was here.")
    refused = await new_version(client, text, VIEWER)
    assert refused.status_code == 403 and refused.json()["missing"] == ["edit_system_prompt"]
    integrations = variant(external_integrations=[{"type": "zendesk", "credentials_ref": "zd"}])
    assert (await new_version(client, integrations, MANAGER)).status_code == 403  # no modify_integrations
    assert (await client.post(f"{CONFIGS}/faq-bot/rollback", json={"reason": "x"}, headers=VIEWER)).status_code == 403
    versions = (
        await client.get(f"{CONFIGS}/faq-bot/versions", params={"min_position": position}, headers=VIEWER)
    ).json()
    assert versions["total_versions"] == 1

    # Permission changes are events: the admin grants the viewer prompt editing.
    granted = await client.put(
        "/api/v1/client-config/permissions/vic",
        json={"config_permissions": {"edit_system_prompt": True}},
        headers=ADMIN,
    )
    assert granted.status_code == 200, granted.text
    assert (await new_version(client, text, VIEWER)).status_code == 201
    denied = await client.put(
        "/api/v1/client-config/permissions/john", json={"config_permissions": {"view_config": False}}, headers=MANAGER
    )
    assert denied.status_code == 403


async def test_invalid_configs_get_400_with_field_level_errors(client: AsyncTestClient[Any]) -> None:
    bad = (
        "product_type: voicebot\nsystem_prompt: ''\ntools:\n  - name: FetchOrder\nexternal_integrations: [{type: x}]\n"
    )
    refused = await client.post(CONFIGS, json={"config_id": "bad-bot", "yaml_content": bad}, headers=ADMIN)
    assert refused.status_code == 400, refused.text
    errors = {e["field"]: e for e in refused.json()["errors"]}
    assert {"system_prompt", "tools[0].name", "external_integrations", "escalation_rules"} <= set(errors)
    assert all(e["severity"] == "error" for e in errors.values())
    checked = await client.post(f"{CONFIGS}/validate", json={"yaml_content": BASE_YAML}, headers=VIEWER)
    assert checked.status_code == 200 and checked.json()["valid"] is True
    schema = await client.get(f"{CONFIGS}/schema", headers=VIEWER)
    assert schema.status_code == 200 and "product_type" in str(schema.json())


async def test_a_config_as_of_a_moment_history_by_author_and_branches(client: AsyncTestClient[Any]) -> None:
    await create_config(client)
    between = datetime.now(UTC)
    second = await new_version(client, variant(system_prompt="Be brief."), author_type="ai_agent")
    position = second.json()["position"]
    old = await client.get(
        f"{CONFIGS}/faq-bot", params={"at": between.isoformat(), "min_position": position}, headers=VIEWER
    )
    assert old.status_code == 200 and old.json()["version"] == 1
    history = (
        await client.get(f"{CONFIGS}/faq-bot/history", params={"author_type": "ai_agent"}, headers=VIEWER)
    ).json()
    assert [c["version"] for c in history["changes"]] == ["v2"]

    branch = await client.post(
        f"{CONFIGS}/faq-bot/branches", json={"branch_name": "staging", "base_version": 2}, headers=ADMIN
    )
    assert branch.status_code == 201, branch.text
    draft = await new_version(client, variant(system_prompt="Empathy first."), branch="staging")
    assert draft.status_code == 201 and draft.json()["status"] == "draft"
    assert (await start(client))["config_version"] == 2
    merged = await client.post(f"{CONFIGS}/faq-bot/branches/staging/merge", headers=ADMIN)
    assert merged.status_code == 200, merged.text
    assert merged.json()["new_version"] == 4 and merged.json()["status"] == "active"
    assert (await start(client))["config_version"] == 4


async def test_a_tenant_never_sees_another_tenants_configs(client: AsyncTestClient[Any]) -> None:
    position = (await create_config(client))["position"]
    assert (await client.get(f"{CONFIGS}/faq-bot", params={"min_position": position}, headers=ADMIN)).status_code == 200
    other = bearer(tenant="globex", roles=("org_admin",), subject="x")
    assert (await client.get(f"{CONFIGS}/faq-bot", headers=other)).status_code == 404
    assert (await client.get("/api/v1/tenants/acme/config", headers=other)).status_code == 404
    mine = await client.get("/api/v1/tenants/acme/config", headers=ADMIN)
    assert mine.status_code == 200 and mine.json()["tenant_slug"] == "acme"


async def test_preview_runs_scenarios_in_a_sandbox_and_appends_nothing(client: AsyncTestClient[Any]) -> None:
    created = await create_config(client)
    body = {
        "changes": {"system_prompt": "Friendlier."},
        "test_scenarios": [
            {"user_message": "Where is my order ORD-78945?", "expect_tool": "fetch_order_status"},
            {"user_message": "I want a refund for ORD-78945", "expected_behavior": "Should trigger refund tool"},
        ],
    }
    previewed = await client.post(f"{CONFIGS}/faq-bot/preview", json=body, headers=VIEWER)
    assert previewed.status_code == 200, previewed.text
    status, refund = previewed.json()["test_results"]
    assert status["success"] and "ORD-78945" in status["agent_response"]
    assert refund["tool_called"] == "initiate_refund" and refund["tool_errors"] == []
    assert previewed.json()["risk_assessment"]["risk_level"] == "low"
    versions = await client.get(
        f"{CONFIGS}/faq-bot/versions", params={"min_position": created["position"]}, headers=VIEWER
    )
    assert versions.json()["total_versions"] == 1


async def test_replaying_history_shows_exactly_the_conversations_whose_tool_calls_would_no_longer_happen(
    client: AsyncTestClient[Any],
) -> None:
    await create_config(client)
    said = {
        "order": "Where is my order ORD-78945?",
        "refund": "I want a refund for ORD-78945",
        "hello": "Hello there, what are your opening hours?",
    }
    ids: dict[str, str] = {}
    last = 0
    for name, text in said.items():
        body = {"config_id": "faq-bot", "channel": "webchat", "user_id": "user-1", "initial_message": text}
        started = await client.post(f"{CHAT}/conversations", json=body, headers=CUSTOMER)
        assert started.status_code == 201 and started.json()["agent_response"] is not None, started.text
        ids[name] = started.json()["conversation_id"]
        last = max(last, started.json()["position"])
    await conversation(client, ids["hello"], last + 1)  # the replies are in the read model

    raw = yaml.safe_load(BASE_YAML)
    raw["tools"] = [t for t in raw["tools"] if t["name"] != "fetch_order_status"]
    raw["templates"] = {k: v for k, v in raw.get("templates", {}).items() if not k.startswith("fetch_order_status")}
    raw["cross_sell"] = [r for r in raw.get("cross_sell", []) if r["when"].get("tool") != "fetch_order_status"]
    candidate = yaml.safe_dump(raw, sort_keys=False)
    previewed = await client.post(
        f"{CONFIGS}/faq-bot/preview", json={"yaml_content": candidate, "replay_recorded": 10}, headers=VIEWER
    )
    assert previewed.status_code == 200, previewed.text
    replay = previewed.json()["replay"]
    assert replay["conversations_replayed"] == 3
    assert replay["conversations_losing_tool_calls"] == [ids["order"]]
    lost = {r["conversation_id"]: r["tool_calls_lost"] for r in replay["conversations"]}
    assert lost == {ids["order"]: ["fetch_order_status"], ids["refund"]: [], ids["hello"]: []}

    # A change that needs approval carries the same evidence for its approvers.
    pending = await new_version(client, candidate)
    assert pending.status_code == 201 and pending.json()["status"] == "pending_approval", pending.text
    versions = await client.get(
        f"{CONFIGS}/faq-bot/versions", params={"min_position": pending.json()["position"]}, headers=VIEWER
    )
    evidence = versions.json()["versions"][0]["evidence"]
    assert evidence["conversations_losing_tool_calls"] == [ids["order"]]


@pytest_asyncio.fixture
async def monitored(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    stream = unique_stream()
    watch = MonitorSettings(threshold=0.10, min_sample=3, window_seconds=600, interval_seconds=0.2)
    settings = settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, auto_rollback=watch)
    try:
        async with api_client(settings) as c:
            yield c
    finally:
        await delete_stream(nats_url, stream)


async def test_a_new_version_whose_conversations_fail_is_rolled_back_by_the_monitor(
    monitored: AsyncTestClient[Any],
) -> None:
    client = monitored
    await create_config(client)
    raw = yaml.safe_load(BASE_YAML)
    broken = {
        "name": "check_warranty",  # declared, but the registry has no implementation: every call fails
        "description": "Checks a product's warranty.",
        "parameters": {"type": "object", "properties": {}},
        "x-parley-patterns": {"triggers": ["warranty"]},
    }
    raw["tools"] = [*raw["tools"], broken]
    added = await new_version(client, yaml.safe_dump(raw, sort_keys=False))
    assert added.status_code == 201 and added.json()["status"] == "pending_approval", added.text
    assert any("check_warranty" in w["message"] for w in added.json()["warnings"])
    approved = await client.post(f"{CONFIGS}/faq-bot/versions/2/approve", headers=OTHER_ADMIN)
    assert approved.json()["status"] == "active", approved.text

    on_v2 = []
    for _ in range(3):
        body = {
            "config_id": "faq-bot",
            "channel": "webchat",
            "user_id": "user-1",
            "initial_message": "Is my warranty ok?",
        }
        started = await client.post(f"{CHAT}/conversations", json=body, headers=CUSTOMER)
        assert started.status_code == 201 and started.json()["config_version"] == 2, started.text
        on_v2.append(started.json()["conversation_id"])

    deadline = asyncio.get_running_loop().time() + 20
    while True:
        history = (await client.get(f"{CONFIGS}/faq-bot/history", headers=VIEWER)).json()
        if history["rollbacks"] or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    (rollback,) = history["rollbacks"]
    assert (rollback["rolled_back_from"], rollback["rolled_back_to"], rollback["initiated_by"]) == (2, 1, "monitor")
    # The monitor may act before every reply is in: as soon as more than 10 % of the 3 have failed.
    assert re.match(r"[1-3] of 3 conversations on v2 failed", rollback["reason"]), rollback["reason"]
    # The monitor's rollback names its blast radius as the API's does: the conversations open on v2.
    assert sorted(rollback["pinned_conversations"]) == sorted(on_v2)
    assert (await start(client))["config_version"] == 3


async def test_each_conversation_is_answered_by_the_config_version_it_started_on(client: AsyncTestClient[Any]) -> None:
    await create_config(client)
    a = await start(client)
    raw = yaml.safe_load(BASE_YAML)
    for key in [k for k in raw["templates"] if k.split(".")[0] == "fetch_order_status"]:
        if key.split(".")[-1] not in ("error", "missing"):  # the base template and each status's
            raw["templates"][key] = "Version two here: order {{order_id}} is {{status_text}}."
    changed = await new_version(client, yaml.safe_dump(raw, sort_keys=False))
    assert changed.json()["status"] == "active", changed.text
    b = await start(client)

    async def ask(cid: str) -> str:
        sent = await client.post(
            f"{CHAT}/conversations/{cid}/messages", json={"message": "Where is my order ORD-78945?"}, headers=CUSTOMER
        )
        assert sent.status_code == 200, sent.text
        return str(sent.json()["agent_response"]["message"])

    assert (await ask(a["conversation_id"])).startswith("Your order ORD-78945")  # still v1
    assert (await ask(b["conversation_id"])).startswith("Version two here: order ORD-78945")


SEED_YAML = {  # seed 004's YAML examples, verbatim
    name: (Path(__file__).resolve().parent / "seed_configs" / f"{name}.yaml").read_text()
    for name in ("chatbot", "voicebot")
}
VOICE_BOT_YAML = (Path(__file__).resolve().parent.parent / "agents" / "configs" / "voice_bot.yaml").read_text()


async def test_the_seeds_own_example_configs_are_accepted_as_written(client: AsyncTestClient[Any]) -> None:
    for name, text in SEED_YAML.items():
        checked = await client.post(f"{CONFIGS}/validate", json={"yaml_content": text}, headers=VIEWER)
        assert checked.status_code == 200, checked.text
        assert (checked.json()["valid"], checked.json()["product_type"]) == (True, name)
        created = await client.post(CONFIGS, json={"config_id": f"seed-{name}", "yaml_content": text}, headers=ADMIN)
        assert created.status_code == 201, created.text
        assert (created.json()["product_type"], created.json()["status"]) == (name, "active")
        assert "tools[0].parameters" in {w["field"] for w in created.json()["warnings"]}
        read = await client.get(
            f"{CONFIGS}/seed-{name}", params={"min_position": created.json()["position"]}, headers=VIEWER
        )
        assert read.status_code == 200 and read.json()["yaml_content"] == text  # stored as its author wrote it


@pytest_asyncio.fixture
async def served(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The API served by uvicorn on a free port: requests really run at the same time (the test
    client's transport runs one at a time)."""
    stream = unique_stream()
    settings = settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, run_agents=False)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=0, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "the API did not start"
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        await serving
        await delete_stream(nats_url, stream)


async def test_creates_of_one_config_at_once_give_one_201_and_409s(served: httpx.AsyncClient) -> None:
    client = served
    for attempt in range(3):
        body = {"config_id": f"race-bot-{attempt}", "yaml_content": BASE_YAML, "commit_message": "first"}
        callers = (ADMIN, OTHER_ADMIN, ADMIN, OTHER_ADMIN)
        answers = await asyncio.gather(*(client.post(CONFIGS, json=body, headers=h) for h in callers))
        assert sorted(a.status_code for a in answers) == [201, 409, 409, 409], [a.text for a in answers]
        assert all("already exists" in a.json()["message"] for a in answers if a.status_code == 409)
        position = next(a for a in answers if a.status_code == 201).json()["position"]
        versions = await client.get(
            f"{CONFIGS}/race-bot-{attempt}/versions", params={"min_position": position}, headers=VIEWER
        )
        assert versions.json()["total_versions"] == 1
    missing = await client.post(
        f"{CONFIGS}/no-such-bot/versions", json={"yaml_content": BASE_YAML, "commit_message": "x"}, headers=ADMIN
    )
    assert missing.status_code == 404


async def test_a_config_managers_low_risk_change_applies_at_once_and_a_medium_one_waits(
    client: AsyncTestClient[Any],
) -> None:
    await create_config(client)
    tone = await new_version(client, variant(system_prompt="You are a casual and friendly assistant."), MANAGER)
    assert tone.status_code == 201, tone.text
    body = tone.json()
    assert (body["risk_level"], body["status"], body["active_version"]) == ("low", "active", 2)
    assert (body["requires_approval"], body["auto_approved"], body["approvals_missing"]) == (False, True, [])
    assert (await start(client))["config_version"] == 2

    raw = yaml.safe_load(BASE_YAML)
    raw["system_prompt"] = "You are a casual and friendly assistant."
    raw["escalation_rules"][0]["keywords"] = [*raw["escalation_rules"][0]["keywords"], "attorney"]
    rules = await new_version(client, yaml.safe_dump(raw, sort_keys=False), MANAGER)
    assert rules.status_code == 201, rules.text
    body = rules.json()
    assert (body["risk_level"], body["status"], body["active_version"]) == ("medium", "pending_approval", 2)
    assert (body["auto_approved"], body["approvals_missing"]) == (False, ["org_admin"])


async def test_the_rollback_answer_names_the_target_as_the_active_version(client: AsyncTestClient[Any]) -> None:
    """The seed: ``rolled_back_from: 4, rolled_back_to: 3, active_version: 3``; the rollback is
    recorded as a new version (``new_current_version``, the client portal's shape)."""
    await create_config(client)
    await new_version(client, variant(system_prompt="Version two."))
    rolled = await client.post(
        f"{CONFIGS}/faq-bot/rollback",
        json={"target_version": 1, "reason": "Version 2 causing high error rate", "initiated_by": "client_user"},
        headers=ADMIN,
    )
    assert rolled.status_code == 200, rolled.text
    body = rolled.json()
    assert (body["rolled_back_from"], body["rolled_back_to"], body["active_version"]) == (2, 1, 1)
    assert (body["new_current_version"], body["kafka_event_published"], body["initiated_by"]) == (
        3,
        True,
        "client_user",
    )
    assert body["product_type"] == "chatbot" and body["commit_message"].startswith("Rollback to v1")


async def test_preview_takes_the_seeds_body_and_judges_each_expected_behaviour(client: AsyncTestClient[Any]) -> None:
    await create_config(client)
    seed_body = {
        "config_id": "faq-bot",
        "changes": {"system_prompt": "You are a casual and friendly assistant...", "voice_settings": {"speed": 1.2}},
        "test_scenarios": [{"user_message": "I need a refund", "expected_behavior": "Should trigger refund tool"}],
    }
    previewed = await client.post(f"{CONFIGS}/faq-bot/preview", json=seed_body, headers=VIEWER)
    assert previewed.status_code == 200, previewed.text
    body = previewed.json()
    [refund] = body["test_results"]
    assert refund["tool_called"] is None and refund["success"] is False  # no order number: no refund started
    assert refund["checks"] == [{"check": "tool_called", "expected": "initiate_refund", "actual": [], "passed": False}]
    assert {"field": "changes.voice_settings", "message": "a chatbot has no voice settings: ignored",
            "severity": "warning"} in body["validation"]["warnings"]  # fmt: skip

    said = {
        "I want a refund for ORD-78945": ("Should trigger refund tool", True),
        "Where is my order ORD-78945?": ("Should not trigger the refund tool, and not escalate", True),
        "Refund ORD-78945 please": ("Should not call any tool", False),
        "I want to speak to a manager now": ("Should escalate to a human", True),
        "What's the status of ORD-78945?": ('Should mention "ORD-78945"', True),
        "Hello there": ("Should sound friendly", None),  # nothing it says can be checked
    }
    scenarios = [{"user_message": m, "expected_behavior": e} for m, (e, _) in said.items()]
    scenarios.append({"user_message": "Hi", "expected_behavior": "Should trigger refund tool", "expect_tool": "x"})
    judged = await client.post(f"{CONFIGS}/faq-bot/preview", json={"test_scenarios": scenarios}, headers=VIEWER)
    assert judged.status_code == 200, judged.text
    results = judged.json()["test_results"]
    assert {r["scenario"]: r["success"] for r in results[:-1]} == {m: ok for m, (_, ok) in said.items()}
    assert "[refund_id]" in results[0]["agent_response"]  # the sandbox's placeholder, never a blank
    assert results[-1]["success"] is False and results[-1]["checks"][0]["expected"] == "x"  # explicit wins

    bad = await client.post(
        f"{CONFIGS}/faq-bot/preview",
        json={"test_scenarios": [{"user_message": "hi", "expected_behaviour": "typo"}]},
        headers=VIEWER,
    )
    assert bad.status_code == 400, bad.text
    other = await client.post(f"{CONFIGS}/faq-bot/preview", json={**seed_body, "config_id": "x"}, headers=VIEWER)
    assert other.status_code == 400 and "config_id" in other.json()["fields"]


async def test_preview_of_a_voicebot_merges_the_seeds_voice_settings_into_its_voice(
    client: AsyncTestClient[Any],
) -> None:
    created = await client.post(CONFIGS, json={"config_id": "phone-bot", "yaml_content": VOICE_BOT_YAML}, headers=ADMIN)
    assert created.status_code == 201, created.text
    body = {"changes": {"voice_settings": {"speed": 1.2, "stop_speaking_plan": {"number_of_words": 5}}}}
    previewed = await client.post(f"{CONFIGS}/phone-bot/preview", json=body, headers=VIEWER)
    assert previewed.status_code == 200, previewed.text
    preview = previewed.json()
    assert preview["product_type"] == "voicebot" and preview["risk_assessment"]["risk_level"] == "low"
    assert set(preview["changes"]) == {
        "voice_param:model_settings.speed",
        "voice_param:stop_speaking_plan.number_of_words",
    }
    too_fast = await client.post(
        f"{CONFIGS}/phone-bot/preview", json={"changes": {"voice_settings": {"speed": 9}}}, headers=VIEWER
    )
    assert too_fast.status_code == 400 and "voice_config.model_settings.speed" in too_fast.json()["fields"]


async def test_the_config_list_gives_each_configs_versions_filters_and_pages_with_a_cursor(
    client: AsyncTestClient[Any],
) -> None:
    await create_config(client)  # faq-bot, beside the demo configs support-bot, sales-bot and voice-bot
    raw = yaml.safe_load(BASE_YAML)
    raw["escalation_rules"][0]["keywords"] = [*raw["escalation_rules"][0]["keywords"], "attorney"]
    pending = await new_version(client, yaml.safe_dump(raw, sort_keys=False))
    assert pending.json()["status"] == "pending_approval", pending.text
    position = pending.json()["position"]

    listed = await client.get(CONFIGS, params={"min_position": position}, headers=VIEWER)
    assert listed.status_code == 200, listed.text
    configs = {c["config_id"]: c for c in listed.json()["configs"]}
    assert list(configs) == ["faq-bot", "sales-bot", "support-bot", "voice-bot"]
    faq = configs["faq-bot"]
    assert (faq["product_type"], faq["active_version"], faq["latest_version"], faq["pending_approvals"]) == (
        "chatbot",
        1,
        2,
        1,
    )
    assert faq["updated_at"] >= faq["created_at"] and listed.json()["next_cursor"] is None

    voice = (await client.get(CONFIGS, params={"product_type": "voicebot"}, headers=VIEWER)).json()
    assert [c["config_id"] for c in voice["configs"]] == ["voice-bot"]
    waiting = (await client.get(CONFIGS, params={"pending_approval": "true"}, headers=VIEWER)).json()
    assert [c["config_id"] for c in waiting["configs"]] == ["faq-bot"]
    found = (await client.get(CONFIGS, params={"search": "bot", "pending_approval": "false"}, headers=VIEWER)).json()
    assert [c["config_id"] for c in found["configs"]] == ["sales-bot", "support-bot", "voice-bot"]

    seen, cursor = [], None
    while True:
        page = await client.get(CONFIGS, params={"limit": 3, **({"cursor": cursor} if cursor else {})}, headers=VIEWER)
        assert page.status_code == 200, page.text
        seen += [c["config_id"] for c in page.json()["configs"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == ["faq-bot", "sales-bot", "support-bot", "voice-bot"]

    bad = await client.get(CONFIGS, params={"cursor": "not-a-cursor"}, headers=VIEWER)
    assert bad.status_code == 400 and "cursor" in bad.json()["fields"]
    backwards = await client.get(CONFIGS, params={"start_date": "2030-01-02", "end_date": "2030-01-01"}, headers=VIEWER)
    assert backwards.status_code == 400 and "end_date" in backwards.json()["fields"]
    assert (await client.get(CONFIGS, headers=CUSTOMER)).status_code == 403
    other = (await client.get(CONFIGS, headers=bearer(tenant="globex", roles=("org_admin",)))).json()
    assert "faq-bot" not in {c["config_id"] for c in other["configs"]}  # another tenant's list


async def test_a_comparison_gives_each_change_its_own_risk_and_type(client: AsyncTestClient[Any]) -> None:
    await create_config(client)
    raw = yaml.safe_load(BASE_YAML)
    raw["system_prompt"] = "You are formal and courteous."
    raw["tools"] = [t for t in raw["tools"] if t["name"] != "schedule_callback"]
    raw["templates"] = {k: v for k, v in raw["templates"].items() if not k.startswith("schedule_callback")}
    raw["escalation_rules"][0]["keywords"] = [*raw["escalation_rules"][0]["keywords"], "attorney"]
    changed = await new_version(client, yaml.safe_dump(raw, sort_keys=False))
    assert changed.status_code == 201, changed.text
    compared = await client.post(
        f"{CONFIGS}/faq-bot/versions/compare", json={"version_a": 1, "version_b": 2}, headers=VIEWER
    )
    assert compared.status_code == 200, compared.text
    body = compared.json()
    risks = {(c["path"], c["item"]): c for c in body["change_risks"]}
    prompt = risks[("system_prompt", None)]
    assert (prompt["kind"], prompt["risk_level"], prompt["type"]) == ("modified", "low", "system_prompt_change")
    assert prompt["new"] == "You are formal and courteous."
    removed = risks[("tools", "schedule_callback")]
    assert (removed["kind"], removed["risk_level"], removed["breaking"]) == ("removed", "high", True)
    assert removed["reasons"] == ["tool 'schedule_callback' removed"] and removed["type"] == "tool_change"
    rule = next(c for c in body["change_risks"] if c["path"].startswith("escalation_rules"))
    assert (rule["risk_level"], rule["type"]) == ("medium", "escalation_rule_change")
    # The overall level is the highest of them, and every change named in ``changes`` has its line.
    assert body["risk_assessment"]["risk_level"] == "high"
    assert {c["change"] for c in body["change_risks"]} == set(body["changes"])


async def test_request_bodies_are_bounded_and_named_field_by_field(client: AsyncTestClient[Any]) -> None:
    position = (await create_config(client))["position"]
    refusals = [
        (CONFIGS, {"config_id": "Bad Id", "yaml_content": BASE_YAML}, "config_id"),
        (CONFIGS, {"config_id": "ok-bot", "yaml_content": ""}, "yaml_content"),
        (f"{CONFIGS}/faq-bot/versions", {"yaml_content": BASE_YAML, "commit_message": "a\u0000b"}, "commit_message"),
        (f"{CONFIGS}/faq-bot/rollback", {"reason": "x" * 2001}, "reason"),
        (f"{CONFIGS}/faq-bot/rollback", {"reason": "x", "target_version": 0}, "target_version"),
        (f"{CONFIGS}/faq-bot/versions/compare", {"version_a": 1, "version_b": -2}, "version_b"),
        (f"{CONFIGS}/faq-bot/branches", {"branch_name": "../x", "base_version": 1}, "branch_name"),
        (f"{CONFIGS}/faq-bot/preview", {"test_scenarios": [{"user_message": ""}]}, "test_scenarios[0].user_message"),
        (f"{CONFIGS}/faq-bot/preview", {"changes": {"Bad Key": 1}}, "changes"),
    ]
    for path, body, field in refusals:
        refused = await client.post(path, json=body, headers=ADMIN)
        assert refused.status_code == 400, (path, refused.text)
        assert any(name.startswith(field) for name in refused.json()["fields"]), (field, refused.json())
    unknown = await client.put(
        "/api/v1/client-config/permissions/vic", json={"config_permissions": {"fly": True}}, headers=ADMIN
    )
    assert unknown.status_code == 400 and any(k.startswith("config_permissions") for k in unknown.json()["fields"])
    versions = await client.get(f"{CONFIGS}/faq-bot/versions", params={"min_position": position}, headers=VIEWER)
    assert versions.json()["total_versions"] == 1  # nothing refused was written
