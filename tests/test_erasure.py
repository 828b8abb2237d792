"""Erasing a customer, end to end on the real stack: after ``POST /customers/{id}/erase`` none of
their email, phone or words can be read anywhere (the API, every PostgreSQL table, ClickHouse,
Redis, the NATS files on disk, the logs, an audit export), the audit chain still verifies, a
rebuild from the stream gives the same rows, and every process forgets the key at once."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import pytest_asyncio
import structlog
from eventsourcing.persistence import StoredEvent
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from domain import conversation as c
from domain.messages import blank_personal
from infra.logs import configure_logging
from projections.analytics.service import AnalyticsService
from projections.conversation import ConversationsProjector
from projections.rebuild import rebuild
from projections.settings import AnalyticsSettings
from streams.audit import export, verify
from streams.codec import EventMapper
from streams.factory import StoreSettings, open_store
from streams.keys import LocalKeyStore, shred_everywhere
from streams.subjects import StreamId
from tests.api_support import api_client, bearer, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream

BASE = "/api/v1/orchestration"
CUSTOMER = "erin-42"
ERIN = bearer(roles=("customer",), subject=CUSTOMER)
ADMIN = bearer(roles=("org_admin",), subject="admin-1")
SARAH = bearer(roles=("support_agent",), subject="sarah")
EMAIL = "erin.quill@example.net"
PHONE = "+1 415 555 0199"
WORDS = "the blue heron statue"
NEEDLES = (EMAIL, PHONE, "4155550199", WORDS)
T0 = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)


class _Logs:
    """Where the stack's log lines go during a test (a file-like object that is never closed)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        return None


LOGS = _Logs()


class Stack(msgspec.Struct):
    client: Any
    database_url: str
    stream: str
    data_dir: Path


@pytest_asyncio.fixture
async def stack(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """The API with its projectors, agent runtime and analytics; its logs at DEBUG into ``LOGS``."""
    stream = unique_stream()
    database_url = fresh_database(pg_url)
    analytics = AnalyticsSettings(data_dir=tmp_path / "analytics", batch=50)
    settings = settings_for(nats_url, database_url, redis_url, tmp_path, stream, analytics=analytics)
    LOGS.lines.clear()
    structlog.configure(  # every log line the stack writes, to be scanned (loggers not cached meanwhile)
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=LOGS),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    try:
        async with api_client(settings) as client:
            yield Stack(client, database_url, stream, tmp_path)
    finally:
        configure_logging(level=os.environ.get("PARLEY_LOG_LEVEL", "WARNING"), json=False)
        await delete_stream(nats_url, stream)


# The story ------------------------------------------------------------------------------------


async def post(client: Any, path: str, body: dict[str, Any], headers: dict[str, str], key: str | None = None) -> Any:
    if key is not None:
        headers = {**headers, "Idempotency-Key": key}
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code < 300, response.text
    return response.json()


async def eventually(check: Callable[[], Any], what: str, seconds: float = 20.0) -> Any:
    for _ in range(int(seconds * 10)):
        if found := await check():
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


async def erins_conversation(client: Any) -> str:
    """Erin, with email, phone and an order id; a tool call that looks the order up, a callback
    booked by a tool, an escalation whose reason names her phone, and a human agent's reply."""
    await post(client, f"{BASE}/agents", {"name": "Sarah", "agent_id": "sarah"}, SARAH)
    await post(client, f"{BASE}/agents/sarah/availability", {"available": True}, SARAH)
    started = await post(
        client,
        f"{BASE}/conversations",
        {
            "config_id": "support-bot",
            "channel": "webchat",
            "initial_message": f"Hi, this is {EMAIL}. Where is my order ORD-78945?",
            "context": {"email": EMAIL, "phone": PHONE},
        },
        ERIN,
        key="erin-start",
    )
    cid = started["conversation_id"]
    await post(client, f"{BASE}/conversations/{cid}/messages", {"message": f"It was left by {WORDS}."}, ERIN, "erin-2")
    await post(
        client, f"{BASE}/conversations/{cid}/messages", {"message": f"Please call me back at {PHONE}"}, ERIN, "erin-3"
    )
    escalated = await post(
        client,
        f"{BASE}/conversations/{cid}/escalate",
        {"trigger": "user_requested", "reason": f"wants a call on {PHONE}"},
        ERIN,
    )
    assert escalated["assigned_agent"]["agent_id"] == "sarah"
    await post(
        client, f"{BASE}/conversations/{cid}/agent-replies", {"message": f"Hi Erin, I'll write to {EMAIL}."}, SARAH
    )

    async def told() -> Any:
        state = (await client.get(f"{BASE}/conversations/{cid}", headers=ADMIN)).json()
        return state if len(state.get("messages", [])) >= 7 and state.get("tools_executed") else None

    state = await eventually(told, "the conversation's messages and tools are projected")
    assert {t["tool"] for t in state["tools_executed"]} >= {"fetch_order_status", "schedule_callback"}
    return cid


# Where a trace could be -----------------------------------------------------------------------


async def api_responses(client: Any, cid: str) -> str:
    paths = [
        f"{BASE}/conversations/{cid}",
        f"{BASE}/conversations",
        f"{BASE}/escalations",
        f"/api/v1/audit/conversation/{cid}/events",
        f"/api/v1/audit/conversation/{cid}/state",
        f"/api/v1/customers/{CUSTOMER}/export",
    ]
    texts = []
    for path in paths:
        response = await client.get(path, headers=ADMIN)
        assert response.status_code == 200, (path, response.text)
        texts.append(response.text)
    return "\n".join(texts)


async def postgres_rows(database_url: str) -> str:
    """Every row of every table of the database, as text."""
    out = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        tables = await (
            await conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
                " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
        ).fetchall()
        assert len(tables) > 10
        for schema, table in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} AS t").format(sql.Identifier(schema), sql.Identifier(table))
            out += [row[0] for row in await (await conn.execute(query)).fetchall()]
    return "\n".join(out)


async def redis_contents(redis_url: str) -> str:
    redis = Redis.from_url(redis_url)
    out = []
    try:
        async for key in redis.scan_iter(count=500):
            out.append(key.decode(errors="replace"))
            kind = (await redis.type(key)).decode()
            if kind == "string":
                value: Any = await redis.get(key)
            elif kind == "hash":
                value = await redis.hgetall(key)
            elif kind == "zset":
                value = await redis.zrange(key, 0, -1)
            elif kind == "list":
                value = await redis.lrange(key, 0, -1)
            elif kind == "set":
                value = await redis.smembers(key)
            else:
                value = await redis.dump(key)
            out.append(repr(value))
    finally:
        await redis.aclose()
    return "\n".join(out)


def clickhouse_rows(client: Any) -> str:
    analytics: AnalyticsService = client.app.dependencies["analytics_service"].dependency()
    ch, db = analytics.queries.client, analytics.queries.db
    tables = [row[0] for row in ch.query(f"SELECT name FROM system.tables WHERE database = '{db}'").result_rows]
    assert "events" in tables
    out = []
    for table in tables:
        out += [repr(row) for row in ch.query(f"SELECT * FROM {db}.`{table}`").result_rows]
    return "\n".join(out)


def nats_files(stream: str, basetemp: Path) -> str:
    """The bytes of every file of the test stream, its snapshots and its work stream on disk (the
    session's nats-server keeps its store under the session's temp dir: ``conftest.nats_url``)."""
    roots = list(basetemp.glob("nats*"))
    found = [f for root in roots for f in root.rglob("*") if f.is_file() and stream.lower() in str(f).lower()]
    assert found, "the NATS store files of the stream"
    return "\n".join(f.read_bytes().decode("latin-1") for f in found)


def traces(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle in text]


# The tests ------------------------------------------------------------------------------------


async def test_after_an_erasure_no_store_holds_the_customers_email_phone_or_words(
    stack: Stack,
    redis_url: str,
    nats_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    client = stack.client
    cid = await erins_conversation(client)
    before = await postgres_rows(stack.database_url)
    assert EMAIL in before and PHONE in before and WORDS in before  # the scan sees them while they are there
    assert EMAIL in await api_responses(client, cid)

    erased = await client.post(f"/api/v1/customers/{CUSTOMER}/erase", headers=ADMIN)
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["status"] == "erased" and body["conversations"] == [cid] and body["erased_by"] == "org_admin:admin-1"
    again = await client.post(f"/api/v1/customers/{CUSTOMER}/erase", headers=ADMIN)
    assert again.status_code == 200 and again.json() == body  # the same erasure, whoever asks again
    assert (await client.post(f"/api/v1/customers/{CUSTOMER}/erase", headers=SARAH)).status_code == 403

    async def scrubbed() -> Any:
        state = (await client.get(f"{BASE}/conversations/{cid}", headers=ADMIN)).json()
        return state if all(m["content"] != f"It was left by {WORDS}." for m in state["messages"]) else None

    state = await eventually(scrubbed, "the read model shows the conversation erased")
    contents = [m["content"] for m in state["messages"]]
    assert "[erased]" in contents and state["pii_collected"] == {}
    human = [m for m in state["messages"] if m["role"] == "agent"]
    assert [m["content"] for m in human] == ["Hi Erin, I'll write to [customer data]."]  # the agent's words stay

    def analytics_caught_up() -> Any:
        rows = clickhouse_rows(client)
        return rows if "CustomerErased" in rows else None

    clickhouse = await eventually(lambda: asyncio.to_thread(analytics_caught_up), "analytics has the erasure")

    opened = await open_store(StoreSettings(nats_url=nats_url, data_dir=stack.data_dir, stream=stack.stream))
    try:
        report = await export(opened.store, "acme", tmp_path / "audit.jsonl")
    finally:
        await opened.close()
    assert verify(report.path).ok
    audit = await asyncio.to_thread(Path(report.path).read_text)
    assert '"erased":true' in audit

    scanned = {
        "api": await api_responses(client, cid),
        "postgres": await postgres_rows(stack.database_url),
        "clickhouse": clickhouse,
        "redis": await redis_contents(redis_url),
        "nats files": nats_files(stack.stream, tmp_path_factory.getbasetemp()),
        "audit export": audit,
        "logs": "".join(LOGS.lines) + caplog.text,
    }
    # Each scan read the customer's records (their conversation or its commits), not nothing.
    assert all(cid in text or where == "redis" for where, text in scanned.items()), [
        where for where, text in scanned.items() if cid not in text
    ]
    assert "rl:" in scanned["redis"] and "customer erased" in scanned["logs"]
    found = {where: traces(text) for where, text in scanned.items()}
    assert found == {where: [] for where in found}


async def test_a_rebuild_after_an_erasure_gives_the_same_rows(stack: Stack, nats_url: str) -> None:
    client = stack.client
    cid = await erins_conversation(client)
    assert (await client.post(f"/api/v1/customers/{CUSTOMER}/erase", headers=ADMIN)).status_code == 200

    async def scrubbed() -> Any:
        state = (await client.get(f"{BASE}/conversations/{cid}", headers=ADMIN)).json()
        return state if state["pii_collected"] == {} and "[erased]" in str(state["messages"]) else None

    await eventually(scrubbed, "the read model shows the conversation erased")
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(stack.database_url, open=False, kwargs={"autocommit": True})
    await pool.open()
    opened = await open_store(StoreSettings(nats_url=nats_url, data_dir=stack.data_dir, stream=stack.stream))
    try:
        live = await conversation_rows(pool)
        assert live["messages"] and EMAIL not in str(live)
        await rebuild(ConversationsProjector(), opened.store, pool, page=50)
        assert await conversation_rows(pool) == live
    finally:
        await opened.close()
        await pool.close()


async def conversation_rows(pool: AsyncConnectionPool[Any]) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    async with pool.connection() as conn:
        for table, key in (
            ("conversations", "tenant, conversation_id"),
            ("messages", "tenant, conversation_id, message_id"),
            ("escalations", "tenant, escalation_id"),
        ):
            query = sql.SQL(f"SELECT * FROM rm_conversations.{{}} ORDER BY {key}").format(sql.Identifier(table))
            out[table] = await (await conn.execute(query)).fetchall()
    return out


async def test_a_shred_in_one_process_is_forgotten_by_another_at_once(nats_url: str, tmp_path: Path) -> None:
    settings = StoreSettings(nats_url=nats_url, data_dir=tmp_path, stream=unique_stream())
    first, second = await open_store(settings, name="first"), await open_store(settings, name="second")
    try:
        stream = StreamId("acme", "conversation", "conv-1")
        said = c.UserMessageReceived(message_id="m1", user_id="cust-7", content=f"I am {EMAIL}", received_at=T0)
        await first.store.append(stream, [said], expected_version=0)
        (read,) = await second.store.read(stream)  # the second process caches the customer's key
        assert isinstance(read.event, c.UserMessageReceived) and read.event.content == f"I am {EMAIL}"

        await shred_everywhere(first.keys, first.store, "acme", "cust-7")

        async def forgotten() -> Any:
            (again,) = await second.store.read(stream)
            return isinstance(again.event, c.UserMessageReceived) and again.event.content is None

        await eventually(forgotten, "the second process forgets the key", seconds=2.0)  # its cache keeps 60 s
    finally:
        await first.close()
        await second.close()
        await delete_stream(nats_url, settings.stream)


# The seals ------------------------------------------------------------------------------------


def test_each_field_is_sealed_under_the_key_of_the_person_it_is_about(tmp_path: Path) -> None:
    keys = LocalKeyStore(tmp_path / "keys")
    mapper = EventMapper(keys=keys)
    reply = c.AgentReplied(
        message_id="r1",
        user_id="cust-7",
        content=f"I'll call {PHONE}",
        agent_text="I'll call [customer data]",
        author="human:sarah",
        tool_calls=[c.ToolCall(tool="schedule_callback", input={"phone": PHONE}, output={"ok": True})],
        replied_at=T0,
    )
    stored = mapper.to_stored_event(_pending(reply))
    assert PHONE.encode() not in stored.state and b"customer data" not in stored.state
    assert mapper.to_domain_event(stored).event == reply

    keys.shred("acme", "cust-7")  # the customer: their copy, the tool's input and output go; the agent's stays
    erased = mapper.to_domain_event(stored).event
    assert isinstance(erased, c.AgentReplied)
    assert (erased.content, erased.agent_text) == (None, "I'll call [customer data]")
    assert erased.tool_calls == [c.ToolCall(tool="schedule_callback")]
    keys.shred("acme", "agent:sarah")
    assert mapper.to_domain_event(stored).event == blank_personal(reply)


def test_an_event_stored_before_its_fields_were_sealed_reads_as_it_was_written(tmp_path: Path) -> None:
    mapper = EventMapper(keys=LocalKeyStore(tmp_path / "keys"))
    old = c.EscalationRequested(escalation_id="e1", trigger="user_requested", reason="late parcel", requested_at=T0)
    calls = [c.ToolCall(tool="fetch_order_status", input={"order_id": "ORD-1"}, output={"status": "late"})]
    reply = c.AgentReplied(message_id="r1", user_id="cust-7", content="Late.", tool_calls=calls, replied_at=T0)
    for event in (old, reply):  # as they were stored: plain JSON, no envelope
        plain = StoredEvent(
            originator_id="acme.conversation.c1",
            originator_version=1,
            topic=mapper.to_stored_event(_pending(event)).topic,
            state=msgspec.json.encode(event),
        )
        assert mapper.to_domain_event(plain).event == event


def _pending(event: Any) -> Any:
    from streams.codec import Pending

    return Pending("acme.conversation.c1", 1, event)


# Calls ----------------------------------------------------------------------------------------


async def test_an_erased_callers_call_rows_lose_their_phone_and_words_as_a_rebuild_shows_them(
    open_test_store: Any, pg_url: str
) -> None:
    from commands.customer import CustomerErasure
    from commands.runner import CommandRunner
    from domain import call as v
    from domain import customer as u
    from domain.customer import CustomerStreams
    from projections import registry
    from projections.call import CallsProjector

    store = open_test_store.store
    stream = StreamId("acme", v.AGGREGATE_TYPE, "call-1")
    initiated = v.CallInitiated(
        call_id="call-1", config_id="voice-bot", config_version=1, direction="inbound", transport="local",
        user_id="cust-7", phone_number=PHONE, initiated_at=T0,
    )  # fmt: skip
    spoke = v.CallerSpoke(utterance_id="u1", user_id="cust-7", text=f"It was left by {WORDS}", at=T0)
    await store.append(stream, [initiated], expected_version=0)
    await store.append(stream, [v.CallConnected(connected_at=T0), spoke], expected_version=1)
    database = fresh_database(pg_url)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database, open=False, kwargs={"autocommit": True})
    await pool.open()

    async def project() -> None:
        runner = registry.runner(CallsProjector(), store, pool, idle_wait=0.2)
        await registry.migrate(pool, [runner.projector])  # type: ignore[list-item]
        try:
            await runner.catch_up()
        finally:
            await runner.close()

    async def call_rows() -> list[Any]:
        async with pool.connection() as conn:
            calls = await (await conn.execute("SELECT * FROM rm_calls.calls ORDER BY call_id")).fetchall()
            turns = await (await conn.execute("SELECT * FROM rm_calls.call_turns ORDER BY call_id, version")).fetchall()
        return [calls, turns]

    try:
        await project()
        assert PHONE in str(await call_rows()) and WORDS in str(await call_rows())

        async def found(tenant: str, customer: str) -> CustomerStreams:
            return CustomerStreams(calls=["call-1"])

        runner = CommandRunner.for_aggregates(store, [v.DECIDER, u.DECIDER])
        erasure = CustomerErasure(runner, open_test_store.keys, store, found)
        erased = await erasure.erase("acme", "cust-7", actor="test")
        assert erased.calls == ["call-1"]
        await project()
        live = await call_rows()
        assert live[0] and live[1] and PHONE not in str(live) and WORDS not in str(live)
        await rebuild(CallsProjector(), store, pool, page=50)
        assert await call_rows() == live
    finally:
        await pool.close()


async def test_the_customer_routes_are_in_the_schema_with_their_errors_and_a_customer_exports_only_themself(
    stack: Stack,
) -> None:
    client = stack.client
    schema = (await client.get("/schema/openapi.json")).json()
    erase = schema["paths"]["/api/v1/customers/{customer_id}/erase"]["post"]
    export_ = schema["paths"]["/api/v1/customers/{customer_id}/export"]["get"]
    for route in (erase, export_):
        assert {"200", "400", "401", "403", "404", "503"} <= set(route["responses"])
    assert "ErasureView" in str(erase["responses"]["200"]) and "CustomerExport" in str(export_["responses"]["200"])

    mine = await client.get(f"/api/v1/customers/{CUSTOMER}/export", headers=ERIN)
    assert mine.status_code == 200 and mine.json()["customer_id"] == CUSTOMER
    theirs = await client.get("/api/v1/customers/someone-else/export", headers=ERIN)
    assert theirs.status_code == 404
    assert (await client.get(f"/api/v1/customers/{CUSTOMER}/export", headers=SARAH)).status_code == 403
