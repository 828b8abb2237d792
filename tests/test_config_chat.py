"""The seed's Client Configuration Portal over HTTP against the real stack: configuration by
conversation (classified, proposed with current and proposed values, previewed, applied through
versions, risk and approvals), the visual update, the portal's version history and rollback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from litestar.testing import AsyncTestClient

from agents.assistant import (
    ConfigAgent,
    ToolCatalog,
    answer_to_proposal,
    classify,
    config_agent_chain,
)
from agents.llm.chain import FallbackChain
from agents.llm.openai import OpenAIProvider
from tests.api_support import api_client, bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream
from tests.llm_fakes import openai_api
from tests.llm_fakes.server import FakeAPI, Reply

CHAT = "/api/v1/client-config/chat"
CONFIGS = "/api/v1/configs"
ADMIN = bearer(roles=("org_admin",), subject="jane")
OTHER_ADMIN = bearer(roles=("org_admin",), subject="omar")
MANAGER = bearer(roles=("config_manager",), subject="john")
VIEWER = bearer(roles=("config_viewer",), subject="vic")
SALES = yaml.safe_load((Path(__file__).resolve().parent.parent / "agents" / "configs" / "sales_bot.yaml").read_text())


@pytest_asyncio.fixture
async def client(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    stream = unique_stream()
    settings = settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, run_agents=False)
    try:
        async with api_client(settings) as c:
            yield c
    finally:
        await delete_stream(nats_url, stream)


async def say(client: AsyncTestClient[Any], message: str, headers: dict[str, str] = MANAGER, **more: Any) -> Any:
    answer = await client.post(CHAT, json={"config_id": "sales-bot", "message": message, **more}, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def versions(client: AsyncTestClient[Any], config_id: str = "sales-bot", position: int = 0) -> Any:
    for _ in range(100):  # the demo configs, made at start, reach the read model a moment later
        read = await client.get(f"{CONFIGS}/{config_id}/versions", params={"min_position": position}, headers=VIEWER)
        if read.status_code != 404:
            break
        await asyncio.sleep(0.05)
    assert read.status_code == 200, read.text
    return read.json()


async def test_the_chat_turns_make_it_more_formal_and_add_the_refund_tool_into_two_changes_and_applies_them(
    client: AsyncTestClient[Any],
) -> None:
    proposed = await say(client, "Make the bot more formal and add the refund tool", product_type="chatbot")
    assert proposed["status"] == "proposed", proposed
    tone, tool = proposed["detected_changes"]
    assert (tone["type"], tone["parameter"], tone["field"], tone["risk_level"]) == (
        "system_prompt_change",
        "system_prompt",
        "tone",
        "low",
    )
    assert tone["current_value"] == SALES["system_prompt"]
    assert tone["proposed_value"].startswith(SALES["system_prompt"]) and "formal" in tone["proposed_value"]
    assert (tool["type"], tool["action"], tool["tool_name"], tool["tool_status"], tool["risk_level"]) == (
        "tool_change",
        "add",
        "initiate_refund",
        "implemented",
        "medium",
    )
    assert tool["proposed_value"] == [*tool["current_value"], "initiate_refund"]
    assert all(c["confidence"] >= c["confidence_threshold"] for c in proposed["detected_changes"])
    assert {c["type"] for c in proposed["classification"]} == {"system_prompt_change", "tool_change"}
    assert proposed["requires_approval"] is True  # a tool attached: medium risk, an admin approves
    assert proposed["preview"]["risk_assessment"]["risk_level"] == "medium"
    assert "tool_attached:initiate_refund" in proposed["preview"]["changes"]
    assert "Would you like me to apply these changes?" in proposed["response"]
    assert (await versions(client))["total_versions"] == 1  # a proposal writes nothing

    applied = await say(client, "Yes, apply them", conversation_id=proposed["conversation_id"])
    assert (applied["status"], applied["conversation_id"]) == ("pending_approval", proposed["conversation_id"])
    assert applied["version"] == {
        "version": 2,
        "status": "pending_approval",
        "active_version": 1,
        "risk_level": "medium",
        "approvals_missing": ["org_admin"],
    }
    assert applied["requires_approval"] is True and "v2" in applied["response"]
    listed = await versions(client, position=applied["position"])
    v2 = listed["versions"][0]
    assert (v2["version"], v2["author_type"], v2["created_by"]) == (2, "ai_agent", "john")
    assert v2["commit_message"].startswith("Configuration assistant:")
    written = await client.get(
        f"{CONFIGS}/sales-bot", params={"version": 2, "min_position": applied["position"]}, headers=VIEWER
    )
    document = yaml.safe_load(written.json()["yaml_content"])
    assert "initiate_refund" in [t["name"] for t in document["tools"]] and "initiate_refund" in document["templates"]
    assert document["system_prompt"] == tone["proposed_value"]

    again = await say(client, "Yes, apply them", conversation_id=proposed["conversation_id"])
    assert again["status"] == "needs_clarification"  # nothing open: no second version
    approved = await client.post(f"{CONFIGS}/sales-bot/versions/2/approve", headers=ADMIN)
    assert approved.status_code == 200 and approved.json()["status"] == "active", approved.text


async def test_a_low_risk_change_applies_at_once_and_a_declined_proposal_writes_nothing(
    client: AsyncTestClient[Any],
) -> None:
    declined = await say(client, "Make it sound more casual")
    assert declined["status"] == "proposed" and declined["requires_approval"] is False
    instead = await say(client, "No, make it more professional instead", conversation_id=declined["conversation_id"])
    assert instead["status"] == "proposed" and "professional tone" in instead["detected_changes"][0]["proposed_value"]
    cancelled = await say(client, "No, don't", conversation_id=declined["conversation_id"])
    assert (cancelled["status"], cancelled["detected_changes"]) == ("cancelled", [])

    concise = await say(client, "Please keep the replies concise")
    assert [c["field"] for c in concise["detected_changes"]] == ["tone"]
    done = await say(client, "go ahead", conversation_id=concise["conversation_id"])
    assert done["status"] == "applied" and done["version"]["status"] == "active", done
    assert done["preview_url"] == "/console/configs/sales-bot/compare?a=1&b=2"
    listed = await versions(client, position=done["position"])
    assert [v["version"] for v in listed["versions"]] == [2, 1]  # the declined proposal made no version


async def test_the_seeds_own_voice_example_slower_and_a_refund_tool_it_already_has(
    client: AsyncTestClient[Any],
) -> None:
    body = {"config_id": "voice-bot", "message": "Make the voicebot speak slower and add a refund tool"}
    answer = (await client.post(CHAT, json={**body, "product_type": "voicebot"}, headers=MANAGER)).json()
    assert answer["status"] == "proposed", answer
    [speed] = answer["detected_changes"]
    assert (speed["type"], speed["parameter"], speed["current_value"], speed["proposed_value"]) == (
        "voice_parameter_change",
        "voice_config.model_settings.speed",
        1.0,
        0.8,
    )
    assert speed["risk_level"] == "low" and answer["requires_approval"] is False
    assert "already has the initiate_refund tool" in answer["response"]
    wrong = await client.post(CHAT, json={**body, "product_type": "chatbot"}, headers=MANAGER)
    assert wrong.status_code == 400 and "product_type" in wrong.json()["fields"]


async def test_a_conversation_with_the_agent_is_its_authors_and_a_stale_proposal_is_not_applied(
    client: AsyncTestClient[Any],
) -> None:
    proposed = await say(client, "Make the bot more empathetic")
    cid = proposed["conversation_id"]
    other = await client.post(
        CHAT, json={"config_id": "sales-bot", "message": "yes", "conversation_id": cid}, headers=ADMIN
    )
    assert other.status_code == 404  # another person's conversation
    elsewhere = bearer(tenant="globex", roles=("config_manager",), subject="john")
    body = {"config_id": "sales-bot", "message": "yes", "conversation_id": cid}
    theirs = await client.post(CHAT, json=body, headers=elsewhere)  # the same id in another tenant: another one
    assert theirs.status_code == 200 and theirs.json()["status"] == "needs_clarification", theirs.text
    moved = await say(client, "Make the bot more formal", headers=ADMIN)  # someone else changes the config
    assert (await say(client, "yes", headers=ADMIN, conversation_id=moved["conversation_id"]))["status"] == "applied"
    stale = await say(client, "Yes, apply it", conversation_id=cid)
    assert stale["status"] == "stale" and stale["version"] is None

    viewer = await client.post(CHAT, json={"config_id": "sales-bot", "message": "Make it casual"}, headers=VIEWER)
    assert viewer.status_code == 200 and viewer.json()["status"] == "not_permitted"
    assert viewer.json()["missing_permissions"] == ["edit_system_prompt"]
    customer = await client.post(CHAT, json={"config_id": "sales-bot", "message": "hi"}, headers=bearer())
    assert customer.status_code == 403
    long = await client.post(CHAT, json={"config_id": "sales-bot", "message": "x" * 10_001}, headers=MANAGER)
    assert long.status_code == 400 and "message" in long.json()["fields"]


async def test_the_visual_update_writes_a_version_or_a_draft_and_the_portal_lists_and_rolls_back(
    client: AsyncTestClient[Any],
) -> None:
    update = {
        "config_id": "voice-bot",
        "product_type": "voicebot",
        "changes": {"voice_settings": {"speed": 0.8, "stop_speaking_plan": {"number_of_words": 5}}},
        "commit_message": "Adjusted voice speed and interruption handling",
    }
    draft = await client.post("/api/v1/client-config/visual/update", json=update, headers=MANAGER)
    assert draft.status_code == 200, draft.text
    body = draft.json()
    assert (body["version"], body["status"], body["branch"]) == ("v2", "draft", "draft-v2")
    assert body["diff"] == {
        "voice_config.model_settings.speed": {"old": 1.0, "new": 0.8},
        "voice_config.stop_speaking_plan.number_of_words": {"old": 3, "new": 5},
    }
    assert body["validation"]["affected_conversations"] == 0 and body["risk_level"] == "low"

    applied = await client.post(
        "/api/v1/client-config/visual/update", json={**update, "apply_immediately": True}, headers=MANAGER
    )
    assert applied.status_code == 200, applied.text
    assert (applied.json()["version"], applied.json()["status"]) == ("v3", "applied")
    assert applied.json()["preview_url"] == "/console/configs/voice-bot/compare?a=1&b=3"

    portal = await client.get(
        "/api/v1/client-config/voice-bot/versions", params={"min_position": applied.json()["position"]}, headers=VIEWER
    )
    assert portal.status_code == 200, portal.text
    history = portal.json()
    assert (history["current_version"], history["total_versions"]) == ("v3", 3)
    v3 = history["versions"][0]
    assert (v3["version"], v3["author"]["user_id"], v3["risk_level"]) == ("v3", "john", "low")
    speed = next(c for c in v3["changes"] if c["field"] == "voice_config.model_settings.speed")
    assert (speed["type"], speed["action"], speed["old_value"], speed["new_value"]) == (
        "voice_parameter_change",
        "modify",
        1.0,
        0.8,
    )
    assert history["versions"][-1]["changes"] == [{"type": "initial_generation", "field": None, "action": None,
        "tool_name": None, "trigger": None, "old_value": None, "new_value": None, "risk_level": None}]  # fmt: skip

    rolled = await client.post(
        "/api/v1/client-config/voice-bot/rollback",
        json={"target_version": "v1", "reason": "New voice speed causing customer complaints", "notify_team": True},
        headers=MANAGER,
    )
    assert rolled.status_code == 200, rolled.text
    answer = rolled.json()
    assert (answer["rolled_back_from"], answer["rolled_back_to"], answer["new_current_version"]) == ("v3", "v1", "v4")
    assert answer["commit_message"] == "Rollback to v1: New voice speed causing customer complaints"
    assert answer["team_notified"] is False and answer["kafka_event_published"] is True
    bad = await client.post(
        "/api/v1/client-config/voice-bot/rollback", json={"target_version": "version one", "reason": "x"}, headers=ADMIN
    )
    assert bad.status_code == 400 and "target_version" in bad.json()["fields"]


# The agent alone -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("said", "types"),
    [
        ("make the bot more formal and add the refund tool", {"system_prompt_change", "tool_change"}),
        ("Make the voicebot speak slower", {"voice_parameter_change"}),
        ("Connect it to Salesforce", {"external_service_change"}),
        ("Escalate to a human when they mention a lawyer", {"escalation_rule_change"}),
        ("What's the weather?", set()),
    ],
)
def test_requests_are_classified_with_the_seeds_change_types(said: str, types: set[str]) -> None:
    assert {c.type for c in classify(said)} == types


@pytest.mark.parametrize(
    ("said", "answer"),
    [("Yes, apply them", "confirmed"), ("go ahead", "confirmed"), ("please apply the changes", "confirmed"),
     ("No thanks", "declined"), ("don't apply it", "declined"), ("and make it casual too", None)],
)  # fmt: skip
def test_an_answer_to_the_open_proposal_is_read_by_rules(said: str, answer: str | None) -> None:
    assert answer_to_proposal(said) == answer


async def test_escalation_keywords_and_a_tool_removal_are_proposed_offline() -> None:
    agent = ConfigAgent(config_agent_chain({}), ToolCatalog.from_configs())
    understood = await agent.understand(
        tenant="acme",
        config_id="sales-bot",
        conversation_id="c-1",
        current=SALES,
        history=[],
        message="Escalate when the customer mentions a refund, and remove the callback tool",
    )
    rule, removal = understood.changes
    assert (rule.type, rule.proposed_value[-1]) == ("escalation_rule_change", "refund")
    assert (removal.type, removal.action, removal.tool_name) == ("tool_change", "remove", "schedule_callback")
    assert "schedule_callback" not in [t["name"] for t in understood.candidate["tools"]]


@pytest_asyncio.fixture
async def openai_fake() -> AsyncIterator[tuple[FakeAPI, OpenAIProvider]]:
    api = openai_api.server()
    provider = OpenAIProvider(api_key="sk-test", base_url=f"{await api.start()}/v1")
    yield api, provider
    await provider.aclose()
    await api.close()
    assert api.violations == []


def completion(message: dict[str, Any]) -> Reply:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return Reply(
        body={
            "id": "chatcmpl-cfg1",
            "object": "chat.completion",
            "created": 1760000000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }
    )


async def test_with_a_provider_its_tool_calls_make_the_proposal(openai_fake: tuple[FakeAPI, OpenAIProvider]) -> None:
    """With a key, the model (here OpenAI's SDK against a local server speaking its API) chooses the
    tools and writes their arguments: a whole new prompt, which no offline rule could."""
    api, provider = openai_fake
    prompt = "You are Parley Shop's sales assistant. Write formally and never use emoji."
    call = {
        "id": "call_cfg_1",
        "type": "function",
        "function": {"name": "update_system_prompt", "arguments": f'{{"system_prompt": "{prompt}"}}'},
    }
    api.script(
        openai_api.PATH,
        completion({"content": None, "tool_calls": [call]}),
        completion({"content": "I've drafted a formal prompt."}),
    )
    agent = ConfigAgent(FallbackChain([provider, config_agent_chain({}).providers[-1]]), ToolCatalog.from_configs())
    understood = await agent.understand(
        tenant="acme", config_id="sales-bot", conversation_id="c-2", current=SALES, history=[], message="Be formal"
    )
    [change] = understood.changes
    assert (change.type, change.proposed_value, change.current_value) == (
        "system_prompt_change",
        prompt,
        SALES["system_prompt"],
    )
    sent = api.requests[0].body
    assert "update_system_prompt" in [t["function"]["name"] for t in sent["tools"]]
    assert "sales-bot" in sent["messages"][0]["content"]  # the system prompt names the config
    assert all("x-parley-patterns" not in str(t) for t in sent["tools"])
