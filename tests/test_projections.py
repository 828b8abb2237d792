"""Projections against a real nats-server and PostgreSQL.

Given conversation events appended to the store, when the projector runs, then the read model
answers the API's queries in the seed's shapes; redeliveries, poison, crashes, dropped tables and
rebuilds leave exactly the rows a clean, full projection gives.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import pytest_asyncio
from psycopg import errors, sql
from psycopg_pool import AsyncConnectionPool

from domain import conversation as c
from domain.conversation import (
    AgentReplied,
    ConversationStarted,
    EscalationAgentUnavailable,
    EscalationAssigned,
    EscalationRequested,
    EscalationResolved,
    SurveyAnswer,
    SurveyQuestion,
    SurveySent,
    ToolCall,
    UserMessageReceived,
)
from domain.escalation import EscalationRouted, HumanAgentRegistered
from domain.messages import Command
from projections import registry
from projections.batches import DeadLetter, decode, record_dead_letters
from projections.checkpoints import wait_for_position
from projections.conversation import ConversationsProjector
from projections.projector import NotReplayable, Replay
from projections.rebuild import rebuild
from projections.runner import ProjectorRunner
from projections.status import metrics_text
from read_models import conversation as conversation_queries
from read_models import escalation as escalation_queries
from read_models.conversation import CONVERSATIONS
from read_models.migrations import applied_versions, migrate
from streams.factory import OpenStore
from streams.store import RecordedEvent
from streams.subjects import StreamId
from tests.conftest import fresh_database
from tests.support import History, ProjectionSpec

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 10, 11, 10, 0, tzinfo=UTC)
SCHEMA = CONVERSATIONS.schema
TABLES = {  # table: (the columns two projections of the same events must agree on, key)
    "conversations": ("*", "tenant, conversation_id"),
    "messages": ("*", "tenant, conversation_id, message_id"),
    "escalations": ("*", "tenant, escalation_id"),
    "surveys": ("*", "tenant, conversation_id, survey_id"),
    "dead_letters": ("seq, subject, error", "seq"),  # not recorded_at: when it was written
}


async def get_conversation(conn: Any, tenant: str, conversation_id: str) -> Any:
    view = await conversation_queries.get_conversation(conn, tenant, conversation_id)
    return None if view is None else msgspec.to_builtins(view)


async def get_escalation_status(conn: Any, tenant: str, escalation_id: str) -> Any:
    await migrate(conn, escalation_queries.ESCALATION)  # the queue's schema (its projector does not run here)
    view = await escalation_queries.get_escalation_status(conn, tenant, escalation_id)
    return None if view is None else msgspec.to_builtins(view)


def at(minutes: float, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


# Fixtures and helpers -------------------------------------------------------------------------


async def open_pool(url: str) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, min_size=1, max_size=8, open=False)
    await pool.open(wait=True, timeout=30)
    return pool


@pytest_asyncio.fixture
async def pool(pg_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    opened = await open_pool(fresh_database(pg_url))
    yield opened
    await opened.close()


def runner_for(
    opened: OpenStore, pool: AsyncConnectionPool[Any], projector: ConversationsProjector | None = None, **options: Any
) -> ProjectorRunner:
    options.setdefault("idle_wait", 0.2)
    return registry.runner(projector or ConversationsProjector(), opened.store, pool, **options)


RunnerFactory = Callable[..., ProjectorRunner]


@pytest_asyncio.fixture
async def new_runner(open_test_store: OpenStore, pool: AsyncConnectionPool[Any]) -> AsyncIterator[RunnerFactory]:
    """Runners on the test's store and database, closed (consumers and leader locks let go) at the end."""
    made: list[ProjectorRunner] = []

    def make(projector: ConversationsProjector | None = None, **options: Any) -> ProjectorRunner:
        made.append(runner_for(open_test_store, pool, projector, **options))
        return made[-1]

    yield make
    for runner in made:
        await runner.close()


async def project(opened: OpenStore, pool: AsyncConnectionPool[Any], **options: Any) -> int:
    runner = runner_for(opened, pool, **options)
    try:
        return await runner.catch_up()
    finally:
        await runner.close()


async def rows(pool: AsyncConnectionPool[Any], schema: str = SCHEMA) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the read model and its dead letters, table by table in key order: what two
    projections of the same events must agree on."""
    out = {}
    async with pool.connection() as conn:
        for table, (columns, key) in TABLES.items():
            query = sql.SQL(f"SELECT {columns} FROM {{}}.{{}} ORDER BY {key}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            out[table] = await (await conn.execute(query)).fetchall()
    return out


async def reference_rows(opened: OpenStore, pg_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """A clean, full projection of the same stream into a new database."""
    pool = await open_pool(fresh_database(pg_url))
    try:
        await project(opened, pool, batch=1000)
        return await rows(pool)
    finally:
        await pool.close()


async def scalar(pool: AsyncConnectionPool[Any], query: str) -> Any:
    async with pool.connection() as conn:
        row = await (await conn.execute(query.encode())).fetchone()
        return row[0] if row else None


# The seed's stories ---------------------------------------------------------------------------

QUESTIONS = [
    SurveyQuestion(
        question_id="q1",
        question="How did you hear about us?",
        type="single_choice",
        options=["Google Search", "Social Media", "Friend Referral", "Advertisement"],
    ),
    SurveyQuestion(question_id="q2", question="How likely are you to recommend us?", type="nps_scale"),
]


def conv(tenant: str, cid: str) -> StreamId:
    return StreamId(tenant, c.AGGREGATE_TYPE, cid)


async def order_status_story(history: History, tenant: str = "acme", cid: str = "conv-1") -> None:
    """Order status with tools, an escalation to Sarah and back to the AI, then a survey."""

    async def do(command: Command, **options: Any) -> None:
        await history.decide(c.DECIDER, cid, command, tenant=tenant, **options)

    start = c.StartConversation(
        conversation_id=cid,
        config_id="cfg-1",
        config_version=3,
        channel="webchat",
        user_id="user-1",
        context={"customer_id": "C12345", "session_id": "s-1", "ip_address": "192.168.1.1"},
        initial_message="I want to check my order status",
        message_id="m1",
        at=at(0),
    )
    await do(start, correlation_id="req-1")
    await do(
        c.RecordAgentReply(
            message_id="m2",
            content="I'd be happy to help...",
            intent="order_inquiry",
            confidence=0.92,
            sentiment=0.8,
            at=at(0, 15),
        )
    )
    await do(c.ReceiveUserMessage(message_id="m3", content="ORD-78945", at=at(2)))
    lookup = ToolCall(
        tool="fetch_order_status",
        input={"order_id": "ORD-78945"},
        output={"status": "in_transit"},
        execution_time_ms=345,
    )
    await do(
        c.RecordAgentReply(
            message_id="m4", content="It's in transit.", tool_calls=[lookup], sentiment=0.7, at=at(2, 10)
        )
    )
    await do(c.ReceiveUserMessage(message_id="m5", content="Email me", at=at(3)))
    email = ToolCall(tool="send_tracking_email", input={"order_id": "ORD-78945"})
    await do(
        c.RecordAgentReply(message_id="m6", content="Sent.", tool_calls=[email, lookup], sentiment=0.65, at=at(3, 5))
    )
    await do(c.ReceiveUserMessage(message_id="m7", content="A manager!", at=at(5)))
    await do(
        c.RequestEscalation(
            escalation_id="esc-1",
            trigger="user_requested",
            reason="Customer wants a manager about a late delivery",
            urgency="high",
            at=at(5),
        )
    )
    await do(c.AssignEscalation(escalation_id="esc-1", agent_id="agent-7", agent_name="Sarah Johnson", at=at(5, 30)))
    await do(c.RecordAgentReply(message_id="m8", content="Sarah here.", author="agent-7", at=at(6)))
    await do(c.ResolveEscalation(escalation_id="esc-1", resolution="returned_to_ai", resolved_by="agent-7", at=at(8)))
    await do(c.SendSurvey(survey_id="sv-1", questions=QUESTIONS, at=at(9)))
    answers = [SurveyAnswer(question_id="q1", answer="Google Search"), SurveyAnswer(question_id="q2", answer=9)]
    await do(c.AnswerSurvey(survey_id="sv-1", responses=answers, at=at(10)))


async def unavailable_agent_story(history: History, tenant: str = "acme", cid: str = "conv-2") -> None:
    start = c.StartConversation(
        conversation_id=cid,
        config_id="cfg-1",
        config_version=3,
        channel="voice",
        user_id="user-2",
        product_type="voice_agent",
        initial_message="Agent please",
        message_id="u1",
        at=at(0),
    )
    for command in (
        start,
        c.RequestEscalation(escalation_id="esc-2", trigger="user_requested", reason="wants a human", at=at(1)),
        c.MarkAgentUnavailable(escalation_id="esc-2", fallback_action="queue_callback", queue_position=3, at=at(5)),
    ):
        await history.decide(c.DECIDER, cid, command, tenant=tenant)


async def closed_by_agent_story(history: History, tenant: str = "acme", cid: str = "conv-3") -> None:
    for command in (
        c.StartConversation(
            conversation_id=cid, config_id="cfg-2", config_version=1, channel="webchat", user_id="u3", at=at(0)
        ),
        c.RequestEscalation(escalation_id="esc-3", trigger="sentiment", reason="angry", at=at(1)),
        c.ResolveEscalation(escalation_id="esc-3", resolution="closed", resolved_by="agent-1", at=at(2)),
    ):
        await history.decide(c.DECIDER, cid, command, tenant=tenant)


async def random_story(history: History, tenant: str, cid: str, turns: int, seed: int) -> None:
    """A conversation of ``turns`` exchanges with an escalation now and then, for volume."""
    rng = random.Random(seed)

    async def do(command: Command) -> None:
        await history.decide(c.DECIDER, cid, command, tenant=tenant)

    start = c.StartConversation(
        conversation_id=cid,
        config_id="cfg-1",
        config_version=1,
        channel="webchat",
        user_id=f"user-{seed % 7}",
        context={"customer_id": f"C{seed}"},
        at=at(0),
    )
    await do(start)
    open_escalation: str | None = None
    for turn in range(turns):
        when = at(turn)
        await do(c.ReceiveUserMessage(message_id=f"{cid}-u{turn}", content=f"q{turn}", at=when))
        tools = [ToolCall(tool=rng.choice(["lookup", "refund", "track"])) for _ in range(rng.randint(0, 2))]
        sentiment = round(rng.random(), 2) if rng.random() < 0.7 else None
        reply = c.RecordAgentReply(
            message_id=f"{cid}-a{turn}",
            content=f"a{turn}",
            tool_calls=tools,
            sentiment=sentiment,
            at=when + timedelta(seconds=5),
        )
        await do(reply)
        if open_escalation is None and rng.random() < 0.15:
            open_escalation = f"{cid}-e{turn}"
            await do(c.RequestEscalation(escalation_id=open_escalation, trigger="t", reason="r", at=when))
        elif open_escalation is not None and rng.random() < 0.5:
            await do(c.AssignEscalation(escalation_id=open_escalation, agent_id="ag", agent_name="Ann", at=when))
            await do(c.ResolveEscalation(escalation_id=open_escalation, resolution="returned_to_ai", at=when))
            open_escalation = None
    if seed % 3 == 0:
        await do(c.CloseConversation(at=at(turns)))


async def volume(history: History, conversations: int, turns: int, tenant: str = "acme") -> None:
    await asyncio.gather(*(random_story(history, tenant, f"bulk-{i}", turns, seed=i) for i in range(conversations)))


async def all_stories(history: History) -> None:
    await order_status_story(history)
    await unavailable_agent_story(history)
    await closed_by_agent_story(history)


async def personal_data_story(history: History, tenant: str = "globex", cid: str = "conv-1") -> None:
    """Personal data over several messages (a later mention wins), tools counted over replies,
    sentiments ``to_jsonb`` writes its own way, a message delivered twice, two events in one commit,
    a second escalation left open and a survey not answered yet."""
    user = "user-5"
    await history.add(
        conv(tenant, cid),
        ConversationStarted(
            conversation_id=cid,
            config_id="cfg-9",
            config_version=2,
            channel="sms",
            user_id=user,
            context={"customer_id": "C777", "locale": "de"},
            started_at=at(0),
        ),
    )
    await history.add(
        conv(tenant, cid),
        UserMessageReceived(
            message_id="p1", user_id=user, content="I'm jane.doe@example.com, call +44 20 7946 0958", received_at=at(1)
        ),
    )
    lookup = ToolCall(
        tool="lookup_customer",
        input={"email": "jane.doe@example.com"},
        output={"tier": "gold", "score": 0.5},
        execution_time_ms=12,
    )
    await history.add(
        conv(tenant, cid),
        AgentReplied(
            message_id="p2",
            user_id=user,
            content="Found you.",
            intent="identify",
            confidence=1.0,
            tool_calls=[lookup, lookup],
            sentiment=1.0,
            replied_at=at(1, 5),
        ),
    )
    again = "Orders ORD-111 and ord-222; new mail: j.doe@example.org"
    for second in (0, 1):  # the same message delivered twice: a turn each time, one message row
        await history.add(
            conv(tenant, cid),
            UserMessageReceived(message_id="p3", user_id=user, content=again, received_at=at(2, second)),
        )
    await history.add(
        conv(tenant, cid),
        AgentReplied(
            message_id="p4",
            user_id=user,
            content="Refund declined.",
            tool_calls=[ToolCall(tool="refund", error="declined"), lookup],
            sentiment=0.0,
            replied_at=at(2, 5),
        ),
        AgentReplied(message_id="p5", user_id=user, sentiment=-0.35, replied_at=at(2, 6)),
    )
    await history.add(
        conv(tenant, cid),
        AgentReplied(message_id="p6", user_id=user, content="Tiny.", sentiment=1e-07, replied_at=at(3)),
        AgentReplied(message_id="p7", user_id=user, content="Huge.", sentiment=123456789.125, replied_at=at(3)),
    )
    await history.add(
        conv(tenant, cid), EscalationRequested(escalation_id="esc-1", trigger="t", reason="r", requested_at=at(4))
    )
    await history.add(
        conv(tenant, cid), EscalationAgentUnavailable(escalation_id="esc-1", queue_position=2, at=at(4, 10))
    )
    await history.add(
        conv(tenant, cid),
        EscalationAssigned(escalation_id="esc-1", agent_id="agent-3", agent_name="Kim", assigned_at=at(5)),
    )
    await history.add(
        conv(tenant, cid),
        EscalationResolved(
            escalation_id="esc-1", resolution="returned_to_ai", resolved_by="agent-3", resolved_at=at(6)
        ),
    )
    await history.add(
        conv(tenant, cid),
        EscalationRequested(
            escalation_id="esc-5b", trigger="sentiment", reason="upset", urgency="urgent", requested_at=at(7)
        ),
    )
    await history.add(conv(tenant, cid), SurveySent(survey_id="sv-5", questions=QUESTIONS, sent_at=at(8)))


async def stale_commit_story(history: History, tenant: str = "acme", cid: str = "conv-6") -> None:
    """A commit of an event at a version the conversation is already past: the guard skips it."""
    start = c.StartConversation(
        conversation_id=cid,
        config_id="cfg-1",
        config_version=1,
        channel="webchat",
        user_id="u6",
        initial_message="first",
        message_id="s1",
        at=at(0),
    )
    await history.decide(c.DECIDER, cid, start, tenant=tenant)
    await history.decide(
        c.DECIDER, cid, c.ReceiveUserMessage(message_id="s2", content="second", at=at(2)), tenant=tenant
    )
    late = UserMessageReceived(message_id="s3", user_id="u6", content="late ORD-9", received_at=at(3))
    await history.add_stale(conv(tenant, cid), late, 2)


POOL = StreamId("acme", "agent_pool", "pool")


async def every_event_history(history: History) -> None:
    """Every conversation event, in open and closed conversations of two tenants, with another
    aggregate's events in between, a poison commit and a stale one."""
    await history.add(POOL, HumanAgentRegistered(agent_id="agent-7", name="Sarah Johnson", at=at(0)))
    await all_stories(history)
    await history.add_poison(conv("acme", "conv-1"))
    await personal_data_story(history)
    await stale_commit_story(history)
    await history.add(
        POOL, EscalationRouted(escalation_id="esc-1", conversation_id="conv-1", agent_id="agent-7", at=at(5))
    )
    await volume(history, conversations=6, turns=5)


async def meanwhile(history: History) -> None:
    """More of the conversations ``every_event_history`` leaves open, and a new one."""
    for tenant, cid, command in (
        ("acme", "conv-1", c.ReceiveUserMessage(message_id="m9", content="Also ORD-99, mail me at a@b.co", at=at(20))),
        (
            "acme",
            "conv-1",
            c.RecordAgentReply(
                message_id="m10",
                content="Done.",
                tool_calls=[ToolCall(tool="fetch_order_status")],
                sentiment=0.25,
                at=at(20, 5),
            ),
        ),
        ("acme", "conv-2", c.AssignEscalation(escalation_id="esc-2", agent_id="agent-9", agent_name="Lee", at=at(21))),
        (
            "globex",
            "conv-1",
            c.AnswerSurvey(survey_id="sv-5", responses=[SurveyAnswer(question_id="q2", answer=4)], at=at(22)),
        ),
        (
            "globex",
            "conv-1",
            c.AssignEscalation(escalation_id="esc-5b", agent_id="agent-3", agent_name="Kim", at=at(22)),
        ),
        (
            "acme",
            "conv-7",
            c.StartConversation(
                conversation_id="conv-7",
                config_id="cfg-1",
                config_version=3,
                channel="webchat",
                user_id="u7",
                initial_message="Hi, +1 415 555 0100 here",
                message_id="n1",
                at=at(23),
            ),
        ),
    ):
        await history.decide(c.DECIDER, cid, command, tenant=tenant)


async def afterwards(history: History) -> None:
    """The conversations ``meanwhile`` touched, once more: resolved, closed, answered."""
    for tenant, cid, command in (
        (
            "acme",
            "conv-2",
            c.ResolveEscalation(escalation_id="esc-2", resolution="closed", resolved_by="agent-9", at=at(30)),
        ),
        ("globex", "conv-1", c.CloseConversation(at=at(31))),
        ("acme", "conv-7", c.RecordAgentReply(message_id="n2", content="Hello!", sentiment=0.9, at=at(32))),
        ("acme", "conv-1", c.ReceiveUserMessage(message_id="m11", content="Thanks", at=at(33))),
    ):
        await history.decide(c.DECIDER, cid, command, tenant=tenant)


# Spec: the seed's shapes ----------------------------------------------------------------------


async def test_a_conversation_reads_back_in_the_seed_shape(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any]
) -> None:
    history = History(open_test_store)
    await order_status_story(history)
    await project(open_test_store, pool)

    async with pool.connection() as conn:
        view = await get_conversation(conn, "acme", "conv-1")
    assert view == {
        "conversation_id": "conv-1",
        "product_type": "chatbot",
        "thread_id": "conv-1",
        "config_id": "cfg-1",
        "config_version": 3,
        "status": "active",
        "channel": "webchat",
        "user_id": "user-1",
        "turn_count": 4,
        "messages": [
            {
                "message_id": "m1",
                "role": "user",
                "content": "I want to check my order status",
                "timestamp": "2025-10-11T10:00:00Z",
            },
            {
                "message_id": "m2",
                "role": "assistant",
                "content": "I'd be happy to help...",
                "tool_calls": [],
                "timestamp": "2025-10-11T10:00:15Z",
            },
            {"message_id": "m3", "role": "user", "content": "ORD-78945", "timestamp": "2025-10-11T10:02:00Z"},
            {
                "message_id": "m4",
                "role": "assistant",
                "content": "It's in transit.",
                "tool_calls": [
                    {
                        "tool": "fetch_order_status",
                        "input": {"order_id": "ORD-78945"},
                        "output": {"status": "in_transit"},
                        "execution_time_ms": 345,
                    }
                ],
                "timestamp": "2025-10-11T10:02:10Z",
            },
            {"message_id": "m5", "role": "user", "content": "Email me", "timestamp": "2025-10-11T10:03:00Z"},
            {
                "message_id": "m6",
                "role": "assistant",
                "content": "Sent.",
                "tool_calls": [
                    {"tool": "send_tracking_email", "input": {"order_id": "ORD-78945"}},
                    {
                        "tool": "fetch_order_status",
                        "input": {"order_id": "ORD-78945"},
                        "output": {"status": "in_transit"},
                        "execution_time_ms": 345,
                    },
                ],
                "timestamp": "2025-10-11T10:03:05Z",
            },
            {"message_id": "m7", "role": "user", "content": "A manager!", "timestamp": "2025-10-11T10:05:00Z"},
            {
                "message_id": "m8",
                "role": "assistant",
                "content": "Sarah here.",
                "tool_calls": [],
                "timestamp": "2025-10-11T10:06:00Z",
            },
        ],
        "pii_collected": {"customer_id": "C12345", "order_id": "ORD-78945"},
        "tools_executed": [{"tool": "fetch_order_status", "count": 2}, {"tool": "send_tracking_email", "count": 1}],
        "cross_sell_attempted": False,
        "cross_sell_accepted": False,
        "sentiment_trajectory": [0.8, 0.7, 0.65],
        "checkpoint_ids": [],
        "escalation": None,
        "created_at": "2025-10-11T10:00:00Z",
        "updated_at": "2025-10-11T10:10:00Z",
        "position": history.last_seq,
    }


async def test_an_assigned_then_resolved_escalation_and_the_survey_are_recorded(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any]
) -> None:
    history = History(open_test_store)
    await order_status_story(history)
    await project(open_test_store, pool)

    async with pool.connection() as conn:
        status = await get_escalation_status(conn, "acme", "esc-1")
        survey = await (
            await conn.execute(
                f"SELECT questions, responses, nps_score, nps_category, sent_at, answered_at FROM {SCHEMA}.surveys"
            )
        ).fetchall()
        escalation = await (
            await conn.execute(f"SELECT trigger, urgency, resolution, resolved_by FROM {SCHEMA}.escalations")
        ).fetchall()
    assert status == {
        "escalation_id": "esc-1",
        "conversation_id": "conv-1",
        "product_type": "chatbot",
        "status": "resolved",
        "fallback_action": None,
        "queue_position": None,
        "estimated_wait_time": None,
        "callback_options": [],
        "agent_message": "Your request to speak with an agent has been resolved.",
        "user_id": "user-1",
        "assigned_agent": {
            "agent_id": "agent-7",
            "name": "Sarah Johnson",
            "role": "Support Agent",
            "status": "done",
            "estimated_response_time": "2 minutes",
        },
    }
    assert escalation == [("user_requested", "high", "returned_to_ai", "agent-7")]
    questions, responses, nps_score, nps_category, sent_at, answered_at = survey[0]
    assert [q["question_id"] for q in questions] == ["q1", "q2"]
    assert questions[0]["options"][0] == "Google Search"
    assert responses == [{"question_id": "q1", "answer": "Google Search"}, {"question_id": "q2", "answer": 9}]
    assert (nps_score, nps_category, sent_at, answered_at) == (9, "promoter", at(9), at(10))


async def test_an_unavailable_agent_reads_back_with_the_queue_and_callback_options(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any]
) -> None:
    history = History(open_test_store)
    await unavailable_agent_story(history)
    await project(open_test_store, pool)

    async with pool.connection() as conn:
        status = await get_escalation_status(conn, "acme", "esc-2")
        conversation = await get_conversation(conn, "acme", "conv-2")
    assert status == {
        "escalation_id": "esc-2",
        "conversation_id": "conv-2",
        "product_type": "voice_agent",
        "status": "agent_unavailable",
        "fallback_action": "queue_callback",
        "queue_position": 3,
        "estimated_wait_time": "15 minutes",
        "callback_options": [
            {
                "option": "schedule_callback",
                "description": "We can call you back when an agent is available",
                "estimated_callback_time": "2025-10-11T10:20:00Z",
            },
            {
                "option": "email_support",
                "description": "Send your issue via email and we'll respond within 2 hours",
            },
            {"option": "continue_with_ai", "description": "Continue working with our AI assistant"},
        ],
        "agent_message": "I'm sorry, all our agents are currently assisting other customers. You're #3 in queue "
        "with an estimated wait time of 15 minutes. Would you like to schedule a callback, email us, or continue "
        "working with me?",
        "user_id": "user-2",
    }
    assert conversation is not None and conversation["status"] == "escalated"
    assert conversation["pii_collected"] == {}


async def test_an_escalation_resolved_by_closing_leaves_the_conversation_closed(pool: AsyncConnectionPool[Any]) -> None:
    spec = ProjectionSpec(ConversationsProjector, pool)
    await closed_by_agent_story(spec.history)
    await spec.then_rows(
        "conversations",
        [
            {
                "conversation_id": "conv-3",
                "status": "closed",
                "turn_count": 0,
                "open_escalation_id": None,
                "updated_at": at(2),
            }
        ],
    )
    await spec.then_rows(
        "escalations",
        [{"escalation_id": "esc-3", "status": "resolved", "resolution": "closed", "resolved_by": "agent-1"}],
    )
    await spec.then_rows("messages", [])


async def test_each_batch_moves_the_rows_on_and_a_redelivered_one_changes_nothing(
    pool: AsyncConnectionPool[Any],
) -> None:
    spec = ProjectionSpec(ConversationsProjector, pool)
    start = c.StartConversation(
        conversation_id="conv-9",
        config_id="cfg-1",
        config_version=2,
        channel="sms",
        user_id="u9",
        initial_message="Is ORD-5 shipped? I'm at jo@example.com",
        message_id="q1",
        at=at(0),
    )
    await spec.history.decide(c.DECIDER, "conv-9", start)
    await spec.then_rows(
        "conversations",
        [
            {
                "turn_count": 1,
                "status": "active",
                "pii_collected": {"email": "jo@example.com", "order_id": "ORD-5"},
                "version": 2,
            }
        ],
    )
    reply = c.RecordAgentReply(
        message_id="a1", content="Yes.", tool_calls=[ToolCall(tool="fetch_order_status")], sentiment=0.5, at=at(1)
    )
    await spec.history.decide(c.DECIDER, "conv-9", reply)
    await spec.history.decide(
        c.DECIDER, "conv-9", c.RequestEscalation(escalation_id="e9", trigger="t", reason="r", at=at(2))
    )
    columns = {"status": "escalated", "tools_executed": {"fetch_order_status": 1}, "open_escalation_id": "e9"}
    await spec.then_rows("conversations", [{**columns, "sentiment_trajectory": [0.5], "version": 4}])
    await spec.then_rows("messages", [{"message_id": "a1", "role": "assistant"}, {"message_id": "q1", "role": "user"}])

    before = {table: await spec.rows(table, ["*"], order_by="1, 2, 3") for table in ("conversations", "messages")}
    await spec.redeliver()
    assert {table: await spec.rows(table, ["*"], order_by="1, 2, 3") for table in before} == before


async def test_a_conversation_is_started_once_and_nothing_is_shown_before_it_starts(
    pool: AsyncConnectionPool[Any],
) -> None:
    """Histories no decider writes (another process's stream, an event redelivered out of its story),
    given as they are: a message without its conversation shows nothing, a second start changes nothing."""
    spec = ProjectionSpec(ConversationsProjector, pool)
    orphan = StreamId("acme", c.AGGREGATE_TYPE, "conv-orphan")
    stream = StreamId("acme", c.AGGREGATE_TYPE, "conv-once")

    def started(config_version: int, minutes: float) -> c.ConversationStarted:
        return c.ConversationStarted(
            conversation_id="conv-once", config_id="cfg-1", config_version=config_version, channel="sms",
            user_id="u1", started_at=at(minutes),
        )  # fmt: skip

    message = c.UserMessageReceived(message_id="m1", user_id="u1", content="Hello", received_at=at(1))
    await spec.given(orphan, message).then_rows("conversations", [])
    await spec.then_rows("messages", [])

    expected = {"conversation_id": "conv-once", "config_version": 1, "turn_count": 1, "version": 2, "updated_at": at(1)}
    await spec.given(stream, started(1, 0), message).given(stream, started(2, 5)).then_rows("conversations", [expected])
    await spec.then_rows("messages", [{"conversation_id": "conv-once", "message_id": "m1", "content": "Hello"}])


async def test_the_escalation_projection_keeps_the_agents_and_the_queue(pool: AsyncConnectionPool[Any]) -> None:
    from domain import escalation as e
    from projections.escalation import EscalationProjector

    spec = ProjectionSpec(EscalationProjector, pool)
    for command in (
        e.RegisterHumanAgent(agent_id="ann", name="Ann", capacity=1, at=at(0)),
        e.SetHumanAgentAvailability(agent_id="ann", available=True, at=at(1)),
        e.RouteEscalation(escalation_id="e1", conversation_id="c1", at=at(2)),
        e.RouteEscalation(escalation_id="e2", conversation_id="c2", at=at(3)),  # Ann is full: it waits
    ):
        await spec.history.decide(e.DECIDER, "pool", command)
    await spec.then_rows("human_agents", [{"agent_id": "ann", "available": True, "active": ["e1"]}])
    await spec.then_rows("queue", [{"escalation_id": "e2", "conversation_id": "c2"}])

    await spec.history.decide(
        e.DECIDER, "pool", e.ReleaseEscalation(escalation_id="e1", at=at(4))
    )  # the next one goes to Ann
    await spec.then_rows("human_agents", [{"agent_id": "ann", "available": True, "active": ["e2"]}])
    await spec.then_rows("queue", [])


async def test_another_tenants_ids_read_as_not_found(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any]
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    start = c.StartConversation(
        conversation_id="conv-1", config_id="g", config_version=1, channel="sms", user_id="g-1", at=at(0)
    )
    await history.decide(c.DECIDER, "conv-1", start, tenant="globex")
    await project(open_test_store, pool)
    async with pool.connection() as conn:
        theirs = await get_conversation(conn, "globex", "conv-1")
        assert theirs is not None and (theirs["channel"], theirs["messages"]) == ("sms", [])
        assert await get_conversation(conn, "globex", "conv-2") is None
        assert await get_escalation_status(conn, "globex", "esc-1") is None
        assert await get_escalation_status(conn, "globex", "esc-2") is None
        assert await get_conversation(conn, "acme", "nope") is None


async def test_erased_personal_data_projects_as_erased(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any]
) -> None:
    history = History(open_test_store)
    await order_status_story(history)
    open_test_store.keys.shred("acme", "user-1")
    await project(open_test_store, pool)
    async with pool.connection() as conn:
        view = await get_conversation(conn, "acme", "conv-1")
    assert view is not None and view["pii_collected"] == {}
    assert [m["content"] for m in view["messages"]] == ["[erased]"] * 8
    assert view["turn_count"] == 4 and view["tools_executed"][0] == {"tool": "fetch_order_status", "count": 2}


# Delivery: redelivery, poison, crashes --------------------------------------------------------


async def test_a_redelivered_batch_is_a_no_op(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], new_runner: RunnerFactory
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    runner = new_runner()
    await runner.start()
    assert runner.feed is not None
    batch = await runner.feed.fetch()
    first = await runner.project(batch.messages)  # committed
    before = await rows(pool)

    # The same commits again (a reader started from an older position, a batch retried after its
    # write was in doubt): the checkpoint skips every one.
    again = batch
    assert len(again.messages) == history.last_seq
    replay = await runner.project(again.messages)
    assert (replay.commits, replay.events, replay.skipped) == (0, 0, len(batch.messages))
    assert replay.checkpoint == first.checkpoint == history.last_seq
    assert await rows(pool) == before
    await runner.close()

    assert await project(open_test_store, pool) == 0  # a new runner: nothing left to do
    assert await rows(pool) == before


async def test_a_poison_commit_is_dead_lettered_and_later_events_still_project(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], new_runner: RunnerFactory
) -> None:
    history = History(open_test_store)
    await unavailable_agent_story(history)
    poison = await history.add_poison(conv("acme", "conv-2"))
    assign = c.AssignEscalation(escalation_id="esc-2", agent_id="agent-9", agent_name="Lee", at=at(9))
    await history.decide(c.DECIDER, "conv-2", assign)
    runner = new_runner()
    await runner.catch_up()

    async with pool.connection() as conn:
        dead = await (await conn.execute(f"SELECT seq, subject, error FROM {SCHEMA}.dead_letters")).fetchall()
        status = await get_escalation_status(conn, "acme", "esc-2")
    assert len(dead) == 1
    seq, subject, error = dead[0]
    assert (seq, subject) == (poison, "parley.ev.acme.conversation.conv-2.c-poison-5")
    assert "EventDecodeError" in error and "nowhere:Missing" in error
    assert status is not None and status["status"] == "assigned"
    assert (status["assigned_agent"]["agent_id"], status["assigned_agent"]["name"]) == ("agent-9", "Lee")
    projector_status = await runner.status()
    assert (projector_status["checkpoint"], projector_status["lag"], projector_status["dead_letters"]) == (
        history.last_seq,
        0,
        1,
    )
    await runner.close()


async def test_an_event_the_database_refuses_is_dead_lettered_alone(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any]
) -> None:
    history = History(open_test_store)
    await unavailable_agent_story(history)
    refused = await history.add(
        conv("acme", "conv-2"),
        AgentReplied(message_id="bad", user_id="user-2", content="nul\x00byte", replied_at=at(6)),
    )
    await history.add(
        conv("acme", "conv-2"),
        UserMessageReceived(message_id="u2", user_id="user-2", content="hello?", received_at=at(7)),
    )
    await project(open_test_store, pool)  # all of it in one batch
    async with pool.connection() as conn:
        view = await get_conversation(conn, "acme", "conv-2")
        dead = await (await conn.execute(f"SELECT seq, error FROM {SCHEMA}.dead_letters")).fetchall()
    # PostgreSQL reads a batch's rows from their JSON, where the NUL is \u0000
    assert [(seq, "\\u0000 cannot be converted to text" in error) for seq, error in dead] == [(refused.seq, True)]
    assert view is not None and [m["message_id"] for m in view["messages"]] == ["u1", "u2"]
    assert view["turn_count"] == 2 and view["position"] == history.last_seq


class Crash(BaseException):
    """The process dies: nothing after this point runs, not even an ``except Exception``."""


class CrashingProjector(ConversationsProjector):
    def __init__(self, applies_before_crash: int) -> None:
        self.left = applies_before_crash

    async def apply_events(self, cur: Any, events: Any, schema: str) -> None:
        if self.left < len(events):  # dies partway through this batch
            raise Crash
        self.left -= len(events)
        await super().apply_events(cur, events, schema)


@pytest.mark.parametrize("applies_before_crash", [0, 1, 37, 120])
async def test_a_crash_mid_batch_neither_loses_nor_doubles_a_row(
    open_test_store: OpenStore,
    pool: AsyncConnectionPool[Any],
    pg_url: str,
    applies_before_crash: int,
    new_runner: RunnerFactory,
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    await volume(history, conversations=8, turns=8)
    crashing = new_runner(CrashingProjector(applies_before_crash), batch=50)
    with pytest.raises(Crash):
        await crashing.catch_up()
    checkpoint_at_crash = await scalar(pool, f"SELECT last_seq FROM {SCHEMA}.checkpoint")
    assert checkpoint_at_crash < history.last_seq and checkpoint_at_crash % 50 == 0  # only whole batches
    await crashing.close()

    await project(open_test_store, pool, batch=50)
    assert await rows(pool) == await reference_rows(open_test_store, pg_url)
    messages = await scalar(pool, f"SELECT count(*) FROM {SCHEMA}.messages")
    assert messages == 8 + 1 + 8 * 8 * 2


async def test_a_dropped_schema_is_rebuilt_from_the_first_event_by_the_running_projector(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], pg_url: str, new_runner: RunnerFactory
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    stop = asyncio.Event()
    runner = new_runner()
    task = asyncio.create_task(runner.run(stop))
    try:
        assert await wait_for_position(pool, CONVERSATIONS, history.last_seq, timeout=10)
        async with pool.connection() as conn:
            await conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        await closed_by_agent_story(history, cid="conv-4")
        assert await wait_for_position(pool, CONVERSATIONS, history.last_seq, timeout=15)
    finally:
        stop.set()
        await task
    assert await rows(pool) == await reference_rows(open_test_store, pg_url)


async def test_a_lost_checkpoint_replays_everything_without_doubling(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], pg_url: str
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    await volume(history, conversations=3, turns=5)
    await project(open_test_store, pool)
    async with pool.connection() as conn:
        await conn.execute(f"DELETE FROM {SCHEMA}.checkpoint")
    await project(open_test_store, pool)  # from the first event again, over the existing rows
    assert await scalar(pool, f"SELECT last_seq FROM {SCHEMA}.checkpoint") == history.last_seq
    assert await rows(pool) == await reference_rows(open_test_store, pg_url)


async def test_only_one_runner_projects_at_a_time(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], new_runner: RunnerFactory
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    first = new_runner()
    await first.start()
    second = new_runner(standby_poll=0.05)
    waiting = asyncio.create_task(second.start())
    await asyncio.sleep(0.3)
    assert not waiting.done()  # standing by
    await first.close()
    await asyncio.wait_for(waiting, 5)
    assert await second.catch_up() > 0

    stop = asyncio.Event()
    third = asyncio.create_task(new_runner(standby_poll=0.05).run(stop))
    await asyncio.sleep(0.2)
    stop.set()  # a runner standing by stops when asked
    await asyncio.wait_for(third, 2)


# Rebuild --------------------------------------------------------------------------------------


async def schemas(pool: AsyncConnectionPool[Any]) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rm\\_%' ORDER BY 1")
        return [name for (name,) in await cur.fetchall()]


async def replayed_rows(
    opened: OpenStore, pool: AsyncConnectionPool[Any], schema: str = "rm_replayed", *, flush_every: int = 20
) -> dict[str, list[tuple[Any, ...]]]:
    """The history folded by the bulk replay alone into a schema of its own (no fallback), and its rows."""
    projector = ConversationsProjector()
    replay = projector.replay()
    async with pool.connection() as conn:
        await migrate(conn, CONVERSATIONS, schema=schema)
        commits = await opened.store.read_all(limit=100_000, subject=projector.subject, filter_locally=True)
        dead = []
        for i, raw in enumerate(commits, 1):
            match decode(projector, opened.store, raw):
                case DeadLetter() as letter:
                    dead.append(letter)
                case events:
                    for event in events:
                        replay.apply(event)
            if i % flush_every == 0:
                async with conn.transaction():
                    await replay.flush(conn, schema)
        async with conn.transaction():
            await replay.flush(conn, schema, final=True)
            await record_dead_letters(conn, schema, dead)
    return await rows(pool, schema)


async def test_the_bulk_replay_writes_exactly_the_rows_the_statements_write(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], pg_url: str
) -> None:
    history = History(open_test_store)
    await every_event_history(history)
    expected = await reference_rows(open_test_store, pg_url)
    assert len(expected["conversations"]) == 3 + 1 + 1 + 6 and len(expected["surveys"]) == 2
    assert len(expected["messages"]) == history.count(UserMessageReceived, AgentReplied) - 1  # one was delivered twice
    assert len(expected["dead_letters"]) == 1
    assert await replayed_rows(open_test_store, pool) == expected


async def test_a_rebuild_tells_its_progress_page_by_page_up_to_the_streams_end(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any]
) -> None:
    history = History(open_test_store)
    await every_event_history(history)
    seen: list[tuple[int, int]] = []

    report = await rebuild(
        ConversationsProjector(), open_test_store.store, pool, page=7, progress=lambda *p: seen.append(p)
    )

    last = history.last_seq
    assert {total for _, total in seen} == {last}  # the bar's length: the stream's end when it started
    assert seen[0] == (0, last) and seen[-1] == (last, last) == (report.checkpoint, last)
    positions = [position for position, _ in seen]
    assert positions == sorted(positions) and len(set(positions)) > 3  # page by page, never backwards


STORIES = [("acme", "conv-1"), ("acme", "conv-2"), ("acme", "conv-3"), ("globex", "conv-1"), ("acme", "conv-6")]


async def test_a_rebuild_gives_the_same_read_model(open_test_store: OpenStore, pool: AsyncConnectionPool[Any]) -> None:
    history = History(open_test_store)
    await every_event_history(history)
    await project(open_test_store, pool)
    before = await rows(pool)
    async with pool.connection() as conn:
        views = [await get_conversation(conn, tenant, c) for tenant, c in STORIES]

    report = await rebuild(ConversationsProjector(), open_test_store.store, pool, page=40)

    assert report.checkpoint == history.last_seq and report.dead_letters == 1
    assert report.events == history.aggregates[c.AGGREGATE_TYPE]
    assert report.events_per_second > 0
    after = await rows(pool)
    for table in TABLES:  # table by table, row by row
        assert after[table] == before[table], table
    async with pool.connection() as conn:
        assert [await get_conversation(conn, tenant, c) for tenant, c in STORIES] == views
        assert await applied_versions(conn, SCHEMA) == [1, 2, 3]
    assert await schemas(pool) == [SCHEMA]  # no shadow, no old schema left behind
    assert await project(open_test_store, pool) == 0  # the live projector has nothing to redo


class PausingProjector(ConversationsProjector):
    """Its bulk replay, having read the whole stream, waits for ``meanwhile`` before its last rows go in."""

    def __init__(self, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self.meanwhile = meanwhile

    def replay(self) -> Replay:
        return PausingReplay(super().replay(), self.meanwhile)


class PausingReplay:
    def __init__(self, replay: Replay, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self.replay, self.meanwhile = replay, meanwhile

    def apply(self, event: RecordedEvent) -> None:
        self.replay.apply(event)

    def flush(self, conn: Any, schema: str, *, final: bool = False) -> Awaitable[None]:
        rows = self.replay.flush(conn, schema, final=final)
        return self._pause_then(rows) if final else rows

    async def _pause_then(self, rows: Awaitable[None]) -> None:
        await self.meanwhile()
        await rows


async def test_conversations_open_at_a_rebuild_go_on_in_the_new_schema(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], pg_url: str, new_runner: RunnerFactory
) -> None:
    history = History(open_test_store)
    await every_event_history(history)
    stop = asyncio.Event()
    live_task = asyncio.create_task(new_runner(batch=10).run(stop))
    read_up_to = 0

    async def during_the_rebuild() -> None:  # the live schema moves on while the shadow stands still
        nonlocal read_up_to
        read_up_to = history.last_seq
        await meanwhile(history)
        assert await wait_for_position(pool, CONVERSATIONS, history.last_seq, timeout=15)

    try:
        assert await wait_for_position(pool, CONVERSATIONS, history.last_seq, timeout=15)
        report = await rebuild(PausingProjector(during_the_rebuild), open_test_store.store, pool, page=30)
        await afterwards(history)
        assert await wait_for_position(pool, CONVERSATIONS, history.last_seq, timeout=15)
    finally:
        stop.set()
        await live_task
    assert read_up_to < report.checkpoint < history.last_seq  # the swap caught up with the live schema
    assert await rows(pool) == await reference_rows(open_test_store, pg_url)
    assert await schemas(pool) == [SCHEMA]


async def refused_text(history: History) -> None:
    await history.add(
        conv("acme", "conv-2"),
        AgentReplied(message_id="bad", user_id="user-2", content="nul\x00byte", replied_at=at(6)),
    )
    await history.add(
        conv("acme", "conv-2"),
        UserMessageReceived(message_id="u2", user_id="user-2", content="hello?", received_at=at(7)),
    )


async def escalation_id_of_another_conversation(history: History) -> None:
    await history.add(
        conv("acme", "conv-2"), EscalationRequested(escalation_id="esc-1", trigger="t", reason="r", requested_at=at(9))
    )


async def message_after_the_close(history: History) -> None:
    await history.add(
        conv("acme", "conv-3"),
        UserMessageReceived(message_id="late", user_id="u3", content="hello?", received_at=at(9)),
    )


async def start_after_the_close(history: History) -> None:
    await history.add(
        conv("acme", "conv-3"),
        ConversationStarted(
            conversation_id="conv-3", config_id="cfg-7", config_version=7, channel="sms", user_id="u3", started_at=at(9)
        ),
    )


@pytest.mark.parametrize(
    "story", [refused_text, escalation_id_of_another_conversation, message_after_the_close, start_after_the_close]
)
async def test_a_history_the_bulk_replay_cannot_reproduce_is_rebuilt_event_by_event(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], story: Callable[[History], Awaitable[None]]
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    await volume(history, conversations=3, turns=3)
    await story(history)
    await project(open_test_store, pool)
    before = await rows(pool)
    with pytest.raises((NotReplayable, psycopg.DataError, psycopg.IntegrityError)):
        await replayed_rows(open_test_store, pool)

    report = await rebuild(ConversationsProjector(), open_test_store.store, pool, page=10)

    assert await rows(pool) == before
    assert report.checkpoint == history.last_seq and report.dead_letters == len(before["dead_letters"])
    assert await schemas(pool) == [SCHEMA, "rm_replayed"]


async def test_a_rebuild_while_events_keep_arriving_hands_over_to_the_live_projector(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], pg_url: str, new_runner: RunnerFactory
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    await volume(history, conversations=10, turns=10)
    writing = asyncio.Event()
    writing.set()

    async def keep_writing() -> int:
        n = 0
        while writing.is_set():
            await random_story(history, "acme", f"late-{n}", turns=3, seed=1000 + n)
            n += 1
        return n

    stop = asyncio.Event()
    live = new_runner(batch=100)
    live_task = asyncio.create_task(live.run(stop))
    writer = asyncio.create_task(keep_writing())
    try:
        await asyncio.sleep(0.3)
        report = await rebuild(ConversationsProjector(), open_test_store.store, pool, page=200)
        await asyncio.sleep(0.5)  # the live projector goes on in the new schema
        writing.clear()
        late_conversations = await writer
        assert await wait_for_position(pool, CONVERSATIONS, history.last_seq, timeout=15)
    finally:
        writing.clear()
        stop.set()
        await live_task
    assert late_conversations > 0 and report.checkpoint < history.last_seq
    assert await rows(pool) == await reference_rows(open_test_store, pg_url)
    assert await schemas(pool) == [SCHEMA]


# Read-your-writes, status, migrations ---------------------------------------------------------


async def test_wait_for_position_returns_once_the_projector_passes_it_and_false_on_timeout(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], new_runner: RunnerFactory
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    position = history.last_seq
    stop = asyncio.Event()
    runner = new_runner()

    waiter = asyncio.create_task(wait_for_position(pool, CONVERSATIONS, position, timeout=10))
    await asyncio.sleep(0.2)
    assert not waiter.done()  # nothing projects yet (and the schema does not even exist)
    task = asyncio.create_task(runner.run(stop))
    try:
        assert await waiter
        async with pool.connection() as conn:
            started = time.perf_counter()
            assert not await wait_for_position(conn, CONVERSATIONS, position + 1000, timeout=0.3)
            assert 0.3 <= time.perf_counter() - started < 2.0
            view = await get_conversation(conn, "acme", "conv-3")
            assert view is not None and view["position"] == position  # read your write
            assert not conn.autocommit  # the connection is left as it was found
    finally:
        stop.set()
        await task


async def test_status_reports_lag_and_dead_letters_and_metrics(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any], new_runner: RunnerFactory
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    await history.add_poison(conv("acme", "conv-3"))
    runner = new_runner()
    before = await runner.status()
    assert (before["checkpoint"], before["lag"], before["stream_last_seq"]) == (0, history.last_seq, history.last_seq)
    await runner.catch_up()
    after = await runner.status()
    assert (after["checkpoint"], after["lag"], after["dead_letters"]) == (history.last_seq, 0, 1)
    text = metrics_text([after])
    assert 'parley_projector_lag{projector="conversations"} 0\n' in text
    assert 'parley_projector_dead_letters{projector="conversations"} 1\n' in text
    assert "# TYPE parley_projector_lag gauge" in text
    await runner.close()


async def test_the_registry_migrates_and_runs_every_projector_until_stopped(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any]
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    names = [p.name for p in registry.projectors()]
    applied = await registry.migrate(pool)
    assert list(applied) == names and applied["conversations"] == [1, 2, 3]
    runners = registry.runners(open_test_store.store, pool, idle_wait=0.2)
    tasks = [asyncio.create_task(runner.run()) for runner in runners]
    try:
        assert await wait_for_position(pool, CONVERSATIONS, history.last_seq, timeout=10)
    finally:
        for runner in runners:
            await runner.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [(s["name"], s["lag"]) for s in [await r.status() for r in runners]] == [(name, 0) for name in names]


async def test_migrations_are_recorded_once_and_build_any_schema(pool: AsyncConnectionPool[Any]) -> None:
    async with pool.connection() as conn:
        assert await migrate(conn, CONVERSATIONS) == [1, 2, 3]
        assert await migrate(conn, CONVERSATIONS) == []
        assert await migrate(conn, CONVERSATIONS, schema="rm_elsewhere") == [1, 2, 3]
        assert await applied_versions(conn, SCHEMA) == [1, 2, 3]
        cur = await conn.execute(
            "SELECT table_schema, count(*) FROM information_schema.tables"
            " WHERE table_schema LIKE 'rm\\_%' GROUP BY 1 ORDER BY 1"
        )
        assert await cur.fetchall() == [("rm_conversations", 7), ("rm_elsewhere", 7)]


async def test_concurrent_start_ups_migrate_once(pool: AsyncConnectionPool[Any]) -> None:
    async def one() -> list[int]:
        async with pool.connection() as conn:
            return await migrate(conn, CONVERSATIONS)

    outcomes = await asyncio.gather(*(one() for _ in range(4)))
    assert sorted(outcomes) == [[], [], [], [1, 2, 3]]


# The process: killed mid-batch, restarted; the CLI ---------------------------------------------


def cli(
    opened: OpenStore, database_url: str, *args: str, log_to: Path, output: bool = False
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NATS_URL": opened.settings.nats_url,
        "PARLEY_STREAM": opened.settings.stream,
        "PARLEY_DATA": str(opened.settings.data_dir),
        "DATABASE_URL": database_url,
        "PARLEY_PROJECTION_BATCH": "100",
        "PARLEY_LOG_JSON": "1",
    }
    with open(log_to, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "projections", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE if output else subprocess.DEVNULL,
            stderr=log,
        )


async def in_transaction(pool: AsyncConnectionPool[Any]) -> bool:
    """Whether another session of this database is inside a transaction (a batch being applied)."""
    return bool(
        await scalar(
            pool,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
        )
    )


async def until_mid_batch(pool: AsyncConnectionPool[Any], past: int) -> None:
    """Until the checkpoint is past a sequence and the projector is inside a batch's transaction."""
    while True:
        try:
            checkpoint = await scalar(pool, f"SELECT last_seq FROM {SCHEMA}.checkpoint") or 0
        except (errors.UndefinedTable, errors.InvalidSchemaName):
            checkpoint = 0  # the process is still starting
        if checkpoint >= past and await in_transaction(pool):
            return
        await asyncio.sleep(0.002)


async def test_a_killed_projector_process_restarts_without_losing_or_doubling_a_row(
    open_test_store: OpenStore, pg_url: str, tmp_path: Path
) -> None:
    history = History(open_test_store)
    await all_stories(history)
    await volume(history, conversations=50, turns=12)
    database_url = fresh_database(pg_url)
    pool = await open_pool(database_url)
    log = tmp_path / "projections.log"
    try:
        kills = []
        for threshold in (history.last_seq // 4, history.last_seq // 2):
            process = cli(open_test_store, database_url, "run", log_to=log)
            try:
                await asyncio.wait_for(until_mid_batch(pool, past=threshold), 30)
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait()
            kills.append(await scalar(pool, f"SELECT last_seq FROM {SCHEMA}.checkpoint"))
        assert 0 < kills[0] <= kills[1] < history.last_seq, kills

        process = cli(open_test_store, database_url, "run", log_to=log)
        try:
            assert await wait_for_position(pool, CONVERSATIONS, history.last_seq, timeout=60)
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 30) == 0  # a clean stop

        expected = await reference_rows(open_test_store, pg_url)
        assert await rows(pool) == expected
        assert len(expected["messages"]) == history.count(UserMessageReceived, AgentReplied)
        assert len(expected["conversations"]) == 3 + 50

        status = cli(open_test_store, database_url, "status", log_to=log, output=True)
        out, _ = await asyncio.to_thread(status.communicate, timeout=60)
        assert msgspec.json.decode(out.splitlines()[0])["lag"] == 0

        rebuilt = cli(open_test_store, database_url, "rebuild", "conversations", log_to=log, output=True)
        out, _ = await asyncio.to_thread(rebuilt.communicate, timeout=60)
        assert rebuilt.returncode == 0 and out.startswith(b"rebuilt conversations: ")
        assert await rows(pool) == expected
    finally:
        await pool.close()
