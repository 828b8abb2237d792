"""The conversation API against the real stack: commands, queries, auth, errors, limits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from projections import registry
from tests.api_support import api_client, bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

BASE = "/api/v1/orchestration"
CUSTOMER = bearer()
AGENT = bearer(roles=("support_agent",), subject="agent-7")
START = {
    "config_id": "support-bot",
    "channel": "webchat",
    "user_id": "user-1",
    "initial_message": "I want to check my order status",
    "context": {"customer_id": "C12345", "session_id": "s-1"},
}


@pytest_asyncio.fixture
async def client(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    stream = unique_stream()
    settings = settings_for(
        nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, conversation_messages_per_minute=5
    )
    try:
        async with api_client(settings) as c:
            yield c
    finally:
        await delete_stream(nats_url, stream)


async def start(client: AsyncTestClient[Any], headers: dict[str, str] = CUSTOMER, **body: Any) -> dict[str, Any]:
    response = await client.post(f"{BASE}/conversations", json={**START, **body}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_conversation_is_started_continued_escalated_and_read_with_the_seeds_field_names(
    client: AsyncTestClient[Any],
) -> None:
    started = await start(client)
    assert started["status"] == "active" and started["product_type"] == "chatbot"
    assert started["thread_id"] == started["conversation_id"]
    assert started["conversation_state"]["turn_count"] == 1 and started["position"] > 0
    cid = started["conversation_id"]

    continued = await client.post(
        f"{BASE}/conversations/{cid}/messages", json={"message": "My order number is ORD-78945"}, headers=CUSTOMER
    )
    assert continued.status_code == 200, continued.text
    assert continued.json()["conversation_state"]["turn_count"] == 2

    escalated = await client.post(
        f"{BASE}/conversations/{cid}/escalate",
        json={"trigger": "user_requested", "reason": "Customer wants a manager", "urgency": "high"},
        headers=CUSTOMER,
    )
    assert escalated.status_code == 200, escalated.text
    body = escalated.json()
    assert body["status"] == "escalated" and body["escalation_id"]

    state = await client.get(f"{BASE}/conversations/{cid}", params={"min_position": body["position"]}, headers=CUSTOMER)
    assert state.status_code == 200, state.text
    assert state.headers["X-Parley-Position-Reached"] == "true"
    view = state.json()
    assert view["status"] == "escalated" and view["turn_count"] == 2 and view["channel"] == "webchat"
    said = [m["content"] for m in view["messages"] if m["role"] == "user"]
    assert said == ["I want to check my order status", "My order number is ORD-78945"]
    assert all(m["timestamp"].endswith("Z") for m in view["messages"])
    assert {m["role"] for m in view["messages"]} == {"user", "assistant"}  # the offline agent answered

    status = await client.get(
        f"{BASE}/escalations/{body['escalation_id']}/status",
        headers={**CUSTOMER, "X-Parley-Position": str(body["position"])},
    )
    assert status.status_code == 200, status.text
    assert status.json()["conversation_id"] == cid


async def test_surveys_are_sent_and_answered_with_an_nps_category(client: AsyncTestClient[Any]) -> None:
    cid = (await start(client))["conversation_id"]
    questions = [
        {
            "question_id": "q1",
            "question": "How did you hear about us?",
            "type": "single_choice",
            "options": ["Google Search", "Friend Referral"],
        },
        {"question_id": "q2", "question": "How likely are you to recommend us?", "type": "nps_scale"},
    ]
    sent = await client.post(f"{BASE}/conversations/{cid}/survey", json={"questions": questions}, headers=CUSTOMER)
    assert sent.status_code == 200, sent.text
    survey_id = sent.json()["survey_id"]
    assert sent.json()["survey_context"] == {"embedded_in_chat": True, "skippable": True}
    bad = await client.post(
        f"{BASE}/conversations/{cid}/survey/{survey_id}/responses",
        json={"responses": [{"question_id": "q1", "answer": "Billboard"}]},
        headers=CUSTOMER,
    )
    assert bad.status_code == 400 and bad.json()["fields"] == {
        "responses[0].answer": "must be one of ['Google Search', 'Friend Referral']"
    }
    answered = await client.post(
        f"{BASE}/conversations/{cid}/survey/{survey_id}/responses",
        json={"responses": [{"question_id": "q1", "answer": "Google Search"}, {"question_id": "q2", "answer": 9}]},
        headers=CUSTOMER,
    )
    assert answered.status_code == 200, answered.text
    assert (answered.json()["nps_score"], answered.json()["nps_category"]) == (9, "promoter")


async def test_requests_without_a_valid_token_are_refused(client: AsyncTestClient[Any]) -> None:
    assert (await client.post(f"{BASE}/conversations", json=START)).status_code == 401
    bad = await client.post(f"{BASE}/conversations", json=START, headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401
    forbidden = await client.post(f"{BASE}/conversations", json=START, headers=bearer(roles=("analyst",)))
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"


async def test_a_tenant_never_sees_another_tenants_conversation(client: AsyncTestClient[Any]) -> None:
    started = await start(client)
    other = bearer(tenant="globex")
    cid = started["conversation_id"]
    read = await client.get(f"{BASE}/conversations/{cid}", params={"min_position": started["position"]}, headers=other)
    assert read.status_code == 404
    write = await client.post(f"{BASE}/conversations/{cid}/messages", json={"message": "hi"}, headers=other)
    assert write.status_code == 404
    mine = await client.get(
        f"{BASE}/conversations/{cid}", params={"min_position": started["position"]}, headers=CUSTOMER
    )
    assert mine.status_code == 200 and mine.json()["turn_count"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({k: v for k, v in START.items() if k != "config_id"}, "config_id"),
        ({**START, "channel": 7}, "channel"),
        ({**START, "user_id": ""}, "user_id"),
        ({**START, "surprise": True}, "surprise"),
        ({**START, "context": {"customer_id": 5}}, "context"),
    ],
)
async def test_malformed_bodies_get_400_with_the_field_and_change_nothing(
    client: AsyncTestClient[Any], body: dict[str, Any], field: str
) -> None:
    response = await client.post(f"{BASE}/conversations", json=body, headers=CUSTOMER)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_error"
    assert any(key.startswith(field) for key in response.json()["fields"]), response.json()


async def test_commands_on_a_closed_conversation_or_a_second_escalation_are_409(client: AsyncTestClient[Any]) -> None:
    cid = (await start(client))["conversation_id"]
    escalate = {"trigger": "user_requested", "reason": "manager"}
    assert (
        await client.post(f"{BASE}/conversations/{cid}/escalate", json=escalate, headers=CUSTOMER)
    ).status_code == 200
    again = await client.post(f"{BASE}/conversations/{cid}/escalate", json=escalate, headers=CUSTOMER)
    assert again.status_code == 409 and again.json()["code"] == "illegal_state"
    assert (await client.post(f"{BASE}/conversations/{cid}/close", json={}, headers=CUSTOMER)).status_code == 200
    late = await client.post(f"{BASE}/conversations/{cid}/messages", json={"message": "hello?"}, headers=CUSTOMER)
    assert late.status_code == 409 and "closed" in late.json()["message"]


async def test_a_message_to_an_unknown_conversation_is_404(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        f"{BASE}/conversations/{uuid.uuid4()}/messages", json={"message": "hi"}, headers=CUSTOMER
    )
    assert response.status_code == 404


async def test_too_many_messages_in_a_conversation_get_429_with_retry_after(client: AsyncTestClient[Any]) -> None:
    cid = (await start(client))["conversation_id"]
    codes = []
    for i in range(7):
        r = await client.post(f"{BASE}/conversations/{cid}/messages", json={"message": f"m{i}"}, headers=CUSTOMER)
        codes.append(r.status_code)
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["code"] == "rate_limited"


async def test_a_retried_request_with_the_same_idempotency_key_returns_the_first_response(
    client: AsyncTestClient[Any],
) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await client.post(f"{BASE}/conversations", json=START, headers={**CUSTOMER, **key})
    again = await client.post(f"{BASE}/conversations", json=START, headers={**CUSTOMER, **key})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    cid = first.json()["conversation_id"]
    message_key = {"Idempotency-Key": uuid.uuid4().hex}
    one = await client.post(
        f"{BASE}/conversations/{cid}/messages", json={"message": "once"}, headers={**CUSTOMER, **message_key}
    )
    two = await client.post(
        f"{BASE}/conversations/{cid}/messages", json={"message": "once"}, headers={**CUSTOMER, **message_key}
    )
    assert one.json() == two.json()
    view = (
        await client.get(
            f"{BASE}/conversations/{cid}", params={"min_position": two.json()["position"]}, headers=CUSTOMER
        )
    ).json()
    assert [m["content"] for m in view["messages"] if m["role"] == "user"].count("once") == 1
    assert view["turn_count"] == 2
    reused = await client.post(
        f"{BASE}/conversations/{cid}/messages", json={"message": "different"}, headers={**CUSTOMER, **message_key}
    )
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"


async def test_the_openapi_schema_lists_the_endpoints_and_health_reports_dependencies(
    client: AsyncTestClient[Any],
) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    for path in (
        f"{BASE}/conversations",
        f"{BASE}/conversations/{{conversation_id}}",
        f"{BASE}/conversations/{{conversation_id}}/messages",
        f"{BASE}/conversations/{{conversation_id}}/escalate",
        f"{BASE}/conversations/{{conversation_id}}/survey",
        f"{BASE}/escalations/{{escalation_id}}/status",
    ):
        assert path in schema["paths"], path
    health = await client.get("/health")
    assert health.status_code == 200, health.text
    report = health.json()
    assert {d["name"] for d in report["dependencies"]} == {"nats", "postgres", "redis"}
    assert all(d["ok"] for d in report["dependencies"])
    assert [p["name"] for p in report["projectors"]] == [p.name for p in registry.projectors()]
    assert all("lag" in p for p in report["projectors"])
    assert "parley_projector_lag" in (await client.get("/metrics")).text


async def test_with_no_api_keys_an_order_question_is_answered_inline_through_the_tool(
    client: AsyncTestClient[Any],
) -> None:
    started = await start(client, config_id="support-bot", initial_message="Hi, I need help")
    assert started["agent_response"] is not None and started["agent_response"]["message"]
    cid = started["conversation_id"]
    asked = await client.post(
        f"{BASE}/conversations/{cid}/messages", json={"message": "Where is my order ORD-78945?"}, headers=CUSTOMER
    )
    assert asked.status_code == 200, asked.text
    response = asked.json()["agent_response"]
    (call,) = response["metadata"]["tool_calls"]
    assert call["tool"] == "fetch_order_status" and call["output"]["status"] == "in_transit"
    assert "in transit" in response["message"].lower() or "in_transit" in response["message"]


async def test_something_urgent_is_escalated_and_the_status_shows_it(client: AsyncTestClient[Any]) -> None:
    started = await start(
        client, config_id="support-bot", initial_message="This is fraud! I want to speak to a manager"
    )
    cid = started["conversation_id"]
    view = (
        await client.get(
            f"{BASE}/conversations/{cid}", params={"min_position": started["position"] + 2}, headers=CUSTOMER
        )
    ).json()
    assert view["status"] == "escalated"


async def test_an_urgent_message_is_assigned_to_an_available_human_agent(client: AsyncTestClient[Any]) -> None:
    admin = bearer(roles=("org_admin", "support_agent"), subject="admin")
    registered = await client.post(
        f"{BASE}/agents",
        json={"agent_id": "sarah", "name": "Sarah Johnson", "role": "Senior Support Agent"},
        headers=admin,
    )
    assert registered.status_code == 201, registered.text
    online = await client.post(f"{BASE}/agents/sarah/availability", json={"available": True}, headers=admin)
    assert online.status_code == 200 and online.json()["available"] is True
    started = await start(
        client, config_id="support-bot", initial_message="This is fraud! I want to speak to a manager"
    )
    status = await _escalation_status(client, started["conversation_id"], until="assigned")
    assert status["assigned_agent"]["name"] == "Sarah Johnson"
    # The agent answers and hands the conversation back to the AI.
    cid = started["conversation_id"]
    reply = await client.post(
        f"{BASE}/conversations/{cid}/agent-replies", json={"message": "Hi, Sarah here."}, headers=admin
    )
    assert reply.status_code == 200, reply.text
    back = await client.post(
        f"{BASE}/conversations/{cid}/escalations/{status['escalation_id']}/resolve",
        json={"resolution": "returned_to_ai"},
        headers=admin,
    )
    assert back.status_code == 200 and back.json()["status"] == "active"


async def test_with_no_human_agent_available_the_seeds_fallback_options_are_offered(
    client: AsyncTestClient[Any],
) -> None:
    started = await start(client, config_id="support-bot", initial_message="I need to speak to a human right now")
    status = await _escalation_status(client, started["conversation_id"], until="agent_unavailable")
    assert status["fallback_action"] == "queue_callback" and status["queue_position"] == 1
    assert [o["option"] for o in status["callback_options"]] == [
        "schedule_callback",
        "email_support",
        "continue_with_ai",
    ]


async def _escalation_status(client: AsyncTestClient[Any], cid: str, *, until: str) -> dict[str, Any]:
    """Poll the escalation the agent runtime opened for the first message until it reaches ``until``."""
    import asyncio

    # The runtime names an escalation after the message that caused it (an idempotent command id).
    escalation = str(uuid.uuid5(uuid.NAMESPACE_URL, f"parley:acme.conversation.{cid}:{cid}-m0"))
    for _ in range(100):
        response = await client.get(f"{BASE}/escalations/{escalation}/status", headers=CUSTOMER)
        if response.status_code == 200 and response.json()["status"] == until:
            return response.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"escalation of {cid} never reached {until}")


async def test_the_sales_bot_offers_a_cross_sell_inline(client: AsyncTestClient[Any]) -> None:
    started = await start(client, config_id="sales-bot", initial_message="Where is my order ORD-78945?")
    offer = started["cross_sell_opportunity"]
    assert offer["detected"] is True and offer["product"] == "Premium Shipping Upgrade" and offer["confidence"] == 0.78
    assert started["agent_response"]["metadata"]["provider"] == "offline"
    assert started["agent_response"]["metadata"]["fallbacks"] == []


async def test_an_escalation_carries_a_handoff_summary_for_the_human_agent(client: AsyncTestClient[Any]) -> None:
    started = await start(client, config_id="support-bot", initial_message="Where is my order ORD-78945?")
    cid = started["conversation_id"]
    escalated = await client.post(
        f"{BASE}/conversations/{cid}/escalate", json={"trigger": "user_requested", "reason": "late"}, headers=CUSTOMER
    )
    assert escalated.status_code == 200, escalated.text
    summary = escalated.json()["handoff_summary"]
    assert summary["tools_used"] == ["fetch_order_status"] and summary["issue_category"] == "order_inquiry"
    assert summary["pii_collected"]["order_id"] == "ORD-78945"
    assert "ORD-78945" in summary["conversation_history"]


async def test_collected_personal_data_is_shown_in_clear_only_to_those_allowed(client: AsyncTestClient[Any]) -> None:
    started = await start(client, initial_message="I am jane@example.com, order ORD-78945, call +1 555 123 4567")
    cid, position = started["conversation_id"], started["position"]

    async def pii(headers: dict[str, str]) -> dict[str, str]:
        read = await client.get(f"{BASE}/conversations/{cid}", params={"min_position": position}, headers=headers)
        assert read.status_code == 200, read.text
        return read.json()["pii_collected"]

    clear = {"customer_id": "C12345", "email": "jane@example.com", "order_id": "ORD-78945", "phone": "+1 555 123 4567"}
    assert await pii(CUSTOMER) == clear  # the customer the conversation is about
    assert await pii(bearer(roles=("support_agent",), subject="agent-7")) == clear
    masked = {"customer_id": "***2345", "email": "j***@example.com", "order_id": "***8945", "phone": "***4567"}
    assert await pii(bearer(roles=("analyst",), subject="analyst-1")) == masked
    # Another customer of the same tenant does not reach it at all (it reads as not found).
    other = await client.get(f"{BASE}/conversations/{cid}", headers=bearer(roles=("customer",), subject="someone-else"))
    assert other.status_code == 404, other.text
