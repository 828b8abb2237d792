"""Audit history and time travel, replayed from a real nats-server: who, when, which command; state
as of a version or a moment; the config version behind each conversation turn; the HTTP endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import AsyncTestClient

from commands.audit import conversation_turns
from commands.config import AGENT_CONFIG
from commands.conversation import CONVERSATION
from commands.runner import CommandContext, CommandRunner
from domain import config as a
from domain import conversation as c
from domain.errors import NotFoundError, ValidationError
from domain.escalation import DECIDER as AGENT_POOL
from gateways.http.audit import AuditController
from gateways.http.auth import jwt_auth
from gateways.http.errors import EXCEPTION_HANDLERS
from streams.factory import OpenStore, open_store
from streams.history import history, replay, state_as_of
from streams.store import EventMeta
from streams.subjects import StreamId
from tests.api_support import SECRET, bearer
from tests.support import COUNTER, Incremented

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def runner_for(opened: OpenStore) -> CommandRunner:
    return CommandRunner.for_aggregates(opened.store, [CONVERSATION, AGENT_POOL, AGENT_CONFIG])


def ctx(command_id: str, actor: str = "user-1", tenant: str = "acme") -> CommandContext:
    return CommandContext(tenant=tenant, actor=actor, command_id=command_id, correlation_id=f"req-{command_id}")


def config_created(version: int) -> a.ConfigVersionCreated:
    return a.ConfigVersionCreated(
        config_id="support-bot",
        version=version,
        based_on=version - 1,
        yaml_content=f"version: {version}",
        digest=f"d{version}",
        product_type="chatbot",
        author="admin-1",
        author_type="client_user",
        commit_message=f"v{version}",
        change_type="initial_generation" if version == 1 else "prompt",
        risk_level="low",
        at=T0,
    )


async def activate(opened: OpenStore, tenant: str, version: int, expected: int) -> None:
    stream = StreamId(tenant, a.AGGREGATE_TYPE, "support-bot")
    events = [config_created(version), a.ConfigVersionActivated(version=version, previous=version - 1,
                                                               reason="created", at=T0)]  # fmt: skip
    await opened.store.append(stream, events, expected_version=expected, meta=EventMeta(actor="admin-1"))


async def start_conversation(runner: CommandRunner, conversation_id: str, tenant: str = "acme") -> None:
    start = c.StartConversation(
        conversation_id=conversation_id,
        config_id="support-bot",
        config_version=1,
        channel="web",
        user_id="cust-1",
        context={"order": "ORD-1"},
        initial_message="where is my order?",
        message_id="m1",
        at=T0,
    )
    await runner.handle(CONVERSATION, conversation_id, start, ctx(f"start-{conversation_id}", tenant=tenant), new=True)


async def reply(runner: CommandRunner, conversation_id: str, message_id: str, text: str) -> None:
    command = c.RecordAgentReply(message_id=f"reply-{message_id}", content=text, provider="offline", at=T0)
    await runner.handle(CONVERSATION, conversation_id, command, ctx(f"reply-{message_id}", actor="agent-runtime"))


async def say(runner: CommandRunner, conversation_id: str, message_id: str, text: str) -> None:
    command = c.ReceiveUserMessage(message_id=message_id, content=text, at=T0 + timedelta(minutes=1))
    await runner.handle(CONVERSATION, conversation_id, command, ctx(f"msg-{message_id}", actor="cust-1"))


# History --------------------------------------------------------------------------------------


async def test_history_lists_every_event_in_order_with_who_when_and_which_command(open_test_store: OpenStore) -> None:
    runner = runner_for(open_test_store)
    await start_conversation(runner, "conv-1")
    await reply(runner, "conv-1", "m1", "It ships tomorrow.")
    events = await history(open_test_store.store, StreamId("acme", "conversation", "conv-1"))

    assert [e.type for e in events] == ["ConversationStarted", "UserMessageReceived", "AgentReplied"]
    assert [e.version for e in events] == [1, 2, 3]
    assert events[0].seq == events[1].seq < events[2].seq  # the start's two events are one commit
    assert [(e.command, e.command_id, e.actor) for e in events] == [
        ("StartConversation", "start-conv-1", "user-1"),
        ("StartConversation", "start-conv-1", "user-1"),
        ("RecordAgentReply", "reply-m1", "agent-runtime"),
    ]
    assert events[0].correlation_id == "req-start-conv-1"
    assert events[0].occurred_at == T0  # the event's own time, beside the stream's
    assert all(e.recorded_at.tzinfo is not None for e in events)
    assert events[0].recorded_at <= events[2].recorded_at


async def test_history_of_an_aggregate_without_events_is_not_found(open_test_store: OpenStore) -> None:
    with pytest.raises(NotFoundError):
        await history(open_test_store.store, StreamId("acme", "conversation", "nobody"))


# Time travel ----------------------------------------------------------------------------------


async def test_state_as_of_a_version_is_the_replay_up_to_that_version(open_test_store: OpenStore) -> None:
    runner = runner_for(open_test_store)
    await start_conversation(runner, "conv-2")
    await say(runner, "conv-2", "m2", "hello?")
    await runner.handle(CONVERSATION, "conv-2", c.CloseConversation(at=T0), ctx("close"))
    store, stream = open_test_store.store, StreamId("acme", "conversation", "conv-2")

    latest = await state_as_of(store, CONVERSATION, stream)
    assert (latest.version, latest.state.status, latest.state.turn_count) == (4, "closed", 2)
    one = await state_as_of(store, CONVERSATION, stream, version=1)  # inside the start's commit
    assert (one.version, one.state.started, one.state.turn_count, one.events_folded) == (1, True, 0, 1)
    three = await state_as_of(store, CONVERSATION, stream, version=3)
    assert (three.state.status, three.state.turn_count, three.latest_version) == ("active", 2, 4)
    zero = await state_as_of(store, CONVERSATION, stream, version=0)
    assert zero.state == c.initial() and zero.version == 0 and zero.recorded_at is None
    with pytest.raises(NotFoundError):
        await state_as_of(store, CONVERSATION, stream, version=5)
    with pytest.raises(ValidationError):
        await state_as_of(store, CONVERSATION, stream, version=1, at=T0)


async def test_state_as_of_a_moment_holds_the_commits_recorded_by_then(open_test_store: OpenStore) -> None:
    runner = runner_for(open_test_store)
    store, stream = open_test_store.store, StreamId("acme", "conversation", "conv-3")
    await start_conversation(runner, "conv-3")
    await asyncio.sleep(0.01)
    await say(runner, "conv-3", "m2", "anyone there?")
    await asyncio.sleep(0.01)
    await say(runner, "conv-3", "m3", "hello??")
    recorded = await store.read(stream)
    second = recorded[2].recorded_at  # the commit of m2

    at_second = await state_as_of(store, CONVERSATION, stream, at=second)
    assert (at_second.version, at_second.state.turn_count, at_second.recorded_at) == (3, 2, second)
    just_before = await state_as_of(store, CONVERSATION, stream, at=second - timedelta(microseconds=1))
    assert (just_before.version, just_before.state.turn_count) == (2, 1)  # a moment cuts between commits
    before_all = await state_as_of(store, CONVERSATION, stream, at=recorded[0].recorded_at - timedelta(days=1))
    assert before_all.version == 0 and not before_all.state.started
    naive = await state_as_of(store, CONVERSATION, stream, at=second.astimezone(UTC).replace(tzinfo=None))
    assert naive.version == 3  # a moment without a zone is UTC


async def test_time_travel_works_for_any_aggregate_through_its_own_evolve(open_test_store: OpenStore) -> None:
    store, stream = open_test_store.store, StreamId("acme", "counter", "c-1")
    for i in range(5):
        await store.append(stream, [Incremented(amount=i + 1)], expected_version=i)
    recorded = await store.read(stream)
    assert [replay(COUNTER, stream, recorded, version=v).state.total for v in range(6)] == [0, 1, 3, 6, 10, 15]
    with pytest.raises(ValidationError):
        await state_as_of(store, CONVERSATION, stream)  # a counter is not a conversation


# Conversation turns ---------------------------------------------------------------------------


async def test_each_turn_names_the_config_version_that_governed_it(open_test_store: OpenStore) -> None:
    opened, runner = open_test_store, runner_for(open_test_store)
    await activate(opened, "acme", 1, expected=0)
    await start_conversation(runner, "conv-4")  # pinned to version 1
    await reply(runner, "conv-4", "m1", "Let me check.")
    await activate(opened, "acme", 2, expected=2)  # new conversations now get version 2
    await say(runner, "conv-4", "m2", "thanks")
    await reply(runner, "conv-4", "m2", "You're welcome.")

    found = await conversation_turns(opened.store, StreamId("acme", "conversation", "conv-4"))
    assert (found.config_id, found.config_version, found.version) == ("support-bot", 1, 5)
    assert [(t.turn, t.message_id, t.config_version, t.active_config_version) for t in found.turns] == [
        (1, "m1", 1, 1),
        (2, "m2", 1, 2),  # still governed by the pinned version 1, while version 2 was active
    ]
    first, second = found.turns
    assert (first.command, first.command_id, first.actor, first.status) == (
        "StartConversation", "start-conv-4", "user-1", "active")  # fmt: skip
    assert [(r.message_id, r.author, r.provider, r.command_id) for r in first.replies] == [
        ("reply-m1", "ai", "offline", "reply-m1")
    ]
    assert [r.message_id for r in second.replies] == ["reply-m2"]
    assert second.received_at == T0 + timedelta(minutes=1) and second.version == 4


async def test_turns_of_a_conversation_whose_config_has_no_history_leave_its_active_version_unknown(
    open_test_store: OpenStore,
) -> None:
    runner = runner_for(open_test_store)
    await start_conversation(runner, "conv-5")
    found = await conversation_turns(open_test_store.store, StreamId("acme", "conversation", "conv-5"))
    assert [(t.config_version, t.active_config_version) for t in found.turns] == [(1, None)]


# HTTP -----------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def audit_client(open_test_store: OpenStore) -> AsyncIterator[AsyncTestClient[Any]]:
    """The audit controller on the test's stream, with the two services it asks for (the store and
    the runner), opened in the app's lifespan (the app runs on its own event loop)."""
    opened: list[OpenStore] = []

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        opened.append(await open_store(open_test_store.settings, name="audit-test"))
        runner = runner_for(opened[0])
        services["runner"], services["store"] = runner, opened[0].store
        try:
            yield
        finally:
            await opened[0].close()

    services: dict[str, Any] = {}
    app = Litestar(
        route_handlers=[AuditController],
        dependencies={
            "runner": Provide(lambda: services["runner"], sync_to_thread=False),
            "store": Provide(lambda: services["store"], sync_to_thread=False),
        },
        lifespan=[lifespan],
        on_app_init=[jwt_auth(SECRET).on_app_init],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    async with AsyncTestClient(app=app) as client:
        yield client


ADMIN = bearer("acme", ("org_admin",))
ANALYST = bearer("acme", ("analyst",))


async def test_the_events_endpoint_shows_history_and_hides_personal_fields_from_non_admins(
    open_test_store: OpenStore, audit_client: AsyncTestClient[Any]
) -> None:
    await start_conversation(runner_for(open_test_store), "conv-h")
    admin = await audit_client.get("/api/v1/audit/conversation/conv-h/events", headers=ADMIN)
    assert admin.status_code == 200, admin.text
    body = admin.json()
    assert (body["tenant"], body["version"]) == ("acme", 2)
    started, message = body["events"]
    assert started["type"] == "ConversationStarted" and started["command"] == "StartConversation"
    assert started["command_id"] == "start-conv-h" and started["actor"] == "user-1"
    assert started["event"]["context"] == {"order": "ORD-1"} and "redacted" not in started
    assert message["event"]["content"] == "where is my order?"

    analyst = (await audit_client.get("/api/v1/audit/conversation/conv-h/events", headers=ANALYST)).json()
    started, message = analyst["events"]
    assert started["event"]["context"] is None and started["redacted"] == ["context"]
    assert message["event"]["content"] is None and message["event"]["message_id"] == "m1"


async def test_the_state_endpoint_travels_by_version_and_by_moment(
    open_test_store: OpenStore, audit_client: AsyncTestClient[Any]
) -> None:
    runner = runner_for(open_test_store)
    await start_conversation(runner, "conv-s")
    await runner.handle(CONVERSATION, "conv-s", c.CloseConversation(at=T0), ctx("close-s"))
    url = "/api/v1/audit/conversation/conv-s/state"

    latest = (await audit_client.get(url, headers=ANALYST)).json()
    assert (latest["version"], latest["state"]["status"]) == (3, "closed")
    then = (await audit_client.get(url, params={"version": 2}, headers=ANALYST)).json()
    assert (then["version"], then["state"]["status"], then["latest_version"]) == (2, "active", 3)
    recorded = await open_test_store.store.read(StreamId("acme", "conversation", "conv-s"))
    moment = recorded[0].recorded_at.isoformat()
    at = (await audit_client.get(url, params={"at": moment}, headers=ANALYST)).json()
    assert (at["version"], at["state"]["status"]) == (2, "active")
    missing = await audit_client.get(url, params={"version": 9}, headers=ANALYST)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_the_turns_endpoint_names_each_turns_config_version(
    open_test_store: OpenStore, audit_client: AsyncTestClient[Any]
) -> None:
    runner = runner_for(open_test_store)
    await start_conversation(runner, "conv-t")
    await reply(runner, "conv-t", "m1", "On its way.")
    response = await audit_client.get("/api/v1/audit/conversations/conv-t/turns", headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["conversation_id"], body["config_id"], body["config_version"]) == ("conv-t", "support-bot", 1)
    assert [(t["turn"], t["config_version"], len(t["replies"])) for t in body["turns"]] == [(1, 1, 1)]


async def test_another_tenants_aggregate_reads_as_not_found_and_other_roles_are_refused(
    open_test_store: OpenStore, audit_client: AsyncTestClient[Any]
) -> None:
    await start_conversation(runner_for(open_test_store), "conv-x")
    other = bearer("globex", ("org_admin",))
    for url in (
        "/api/v1/audit/conversation/conv-x/events",
        "/api/v1/audit/conversation/conv-x/state",
        "/api/v1/audit/conversations/conv-x/turns",
    ):
        assert (await audit_client.get(url, headers=other)).status_code == 404
        assert (await audit_client.get(url, headers=bearer("acme", ("customer",)))).status_code == 403
        assert (await audit_client.get(url, headers=bearer("acme", ("platform_engineer",)))).status_code == 200
    unknown = await audit_client.get("/api/v1/audit/spaceship/x/events", headers=ADMIN)
    assert unknown.status_code == 404
    assert (await audit_client.get("/api/v1/audit/conversation/conv-x/events")).status_code == 401
