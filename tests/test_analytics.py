"""The analytics projection into ClickHouse (chDB in tmp_path) from a real nats-server, and its queries.

Exactly-once is checked three ways: a batch projected twice, a batch whose rows landed without
its checkpoint (the runner's sink fails between the two), and a projector process killed with
SIGKILL in the middle of batches and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import AsyncTestClient

from domain import call as v
from domain import conversation as c
from domain.messages import Command, Event, blank_check
from gateways.http.analytics import AnalyticsController
from gateways.http.auth import jwt_auth
from gateways.http.errors import EXCEPTION_HANDLERS
from infra.services import REPO_ROOT
from infra.tokens import make_token
from projections.analytics.facts import FactsFold
from projections.analytics.projection import analytics_runner
from projections.analytics.rebuild import rebuild, shadow_database
from projections.analytics.sink import AnalyticsSink, ClickHouseBatch
from projections.runner import ProjectorRunner
from projections.settings import AnalyticsSettings
from read_models.analytics import AnalyticsQueries, CallBreakdown
from read_models.analytics_schema import EventRow
from streams.bulk import Delivered
from streams.codec import EventMapper, blank_envelope_finder, envelope_at, envelope_key_at, topic_of
from streams.errors import EventDecodeError
from streams.factory import OpenStore
from streams.jetstream import OutMessage
from streams.store import EventStore, StoredItem, _quick_blank_check, encode_commit
from tests.support import History

T0 = datetime(2025, 10, 1, 10, 0, tzinfo=UTC)
OCTOBER = (datetime(2025, 10, 1, tzinfo=UTC), datetime(2025, 11, 1, tzinfo=UTC))
SURVEY = [
    c.SurveyQuestion(question_id="nps", question="Recommend us?", type="nps_scale"),
    c.SurveyQuestion(question_id="q2", question="Satisfied?", type="single_choice", options=["1", "2", "3", "4", "5"]),
]


@pytest.fixture
def settings(tmp_path: Path) -> AnalyticsSettings:
    return AnalyticsSettings(data_dir=tmp_path / "analytics")


@pytest.fixture
def sink(settings: AnalyticsSettings) -> Iterator[AnalyticsSink]:
    opened = AnalyticsSink.open(settings)
    yield opened
    opened.close()


@pytest_asyncio.fixture
async def store(open_test_store: OpenStore) -> AsyncIterator[OpenStore]:
    yield open_test_store


def at(seconds: float, base: datetime = T0) -> datetime:
    return base + timedelta(seconds=seconds)


# Conversations, through the decider, one commit per command as the API writes them (``History``).


async def do(h: History, cid: str, command: Command, actor: str = "u-1") -> None:
    await h.decide(c.DECIDER, cid, command, actor=actor, correlation_id=f"req-{cid}")


async def start(
    h: History, cid: str, t: datetime, *, channel: str, config: tuple[str, int], product: str = "chatbot"
) -> None:
    command = c.StartConversation(
        conversation_id=cid,
        config_id=config[0],
        config_version=config[1],
        channel=channel,
        user_id=f"user-{cid}",
        product_type=product,
        context={"email": f"{cid}@example.com"},
        initial_message="my card",
        message_id=f"{cid}-m0",
        at=t,
    )
    await do(h, cid, command)


async def message(h: History, cid: str, t: datetime) -> None:
    n = h.versions[h.stream(c.AGGREGATE_TYPE, cid)]
    await do(h, cid, c.ReceiveUserMessage(message_id=f"{cid}-m{n}", content="hello", at=t))


async def reply(
    h: History, cid: str, t: datetime, sentiment: float, *, tool: str | None = None, author: str = "ai"
) -> None:
    calls = [c.ToolCall(tool=tool, output={"ok": True})] if tool else []
    n = h.versions[h.stream(c.AGGREGATE_TYPE, cid)]
    command = c.RecordAgentReply(
        message_id=f"{cid}-r{n}",
        content="sure",
        sentiment=sentiment if author == "ai" else None,
        tool_calls=calls,
        author=author,
        at=t,
    )
    await do(h, cid, command, actor="agent-runtime")


async def escalate(h: History, cid: str, t: datetime, trigger: str) -> None:
    await do(h, cid, c.RequestEscalation(escalation_id=f"{cid}-e", trigger=trigger, reason=f"because {trigger}", at=t))


async def survey(h: History, cid: str, t: datetime, nps: int, csat: str) -> None:
    await do(h, cid, c.SendSurvey(survey_id=f"{cid}-s", questions=SURVEY, at=t))
    answers = [c.SurveyAnswer(question_id="nps", answer=nps), c.SurveyAnswer(question_id="q2", answer=csat)]
    await do(h, cid, c.AnswerSurvey(survey_id=f"{cid}-s", responses=answers, at=at(10, t)))


async def close(h: History, cid: str, t: datetime, reason: str = "completed") -> None:
    await do(h, cid, c.CloseConversation(reason=reason, at=t))


async def known_history(store: OpenStore) -> History:
    """Five conversations in October 2025 and one in September, with outcomes worked out by hand."""
    h = History(store)
    # A: webchat, support-bot v1, two turns, a tool, survey (NPS 10, CSAT 5), closed after 100 s.
    await start(h, "a", at(0), channel="webchat", config=("support-bot", 1))
    await reply(h, "a", at(10), 0.5, tool="fetch_order_status")
    await message(h, "a", at(60))
    await reply(h, "a", at(70), 0.7)
    await survey(h, "a", at(80), 10, "5")
    await close(h, "a", at(100))
    # B: webchat, support-bot v2, escalated (user_frustrated), assigned, closed by the agent after 200 s.
    b = at(3600)
    await start(h, "b", b, channel="webchat", config=("support-bot", 2))
    await reply(h, "b", at(5, b), -0.6)
    await escalate(h, "b", at(6, b), "user_frustrated")
    await do(h, "b", c.AssignEscalation(escalation_id="b-e", agent_id="agent-1", at=at(30, b)))
    await reply(h, "b", at(60, b), 0.0, author="agent-1")
    await do(h, "b", c.ResolveEscalation(escalation_id="b-e", resolution="closed", at=at(200, b)))  # and closes it
    # C: whatsapp, support-bot v1, two turns, escalated (explicit_request), nobody free, abandoned after 300 s.
    cc = at(7200)
    await start(h, "c", cc, channel="whatsapp", config=("support-bot", 1))
    await reply(h, "c", at(5, cc), 0.1)
    await message(h, "c", at(20, cc))
    await escalate(h, "c", at(25, cc), "explicit_request")
    await do(h, "c", c.MarkAgentUnavailable(escalation_id="c-e", at=at(26, cc)))
    await close(h, "c", at(300, cc), "abandoned")
    # D: whatsapp, support-bot v2, a turn, survey (NPS 6, CSAT 2), still open.
    d = at(10800)
    await start(h, "d", d, channel="whatsapp", config=("support-bot", 2))
    await reply(h, "d", at(20, d), 0.3)
    await survey(h, "d", at(30, d), 6, "2")
    # E: a voicebot call, escalated (explicit_request), handed back to the AI, closed after 120 s.
    e = at(14400)
    await start(h, "e", e, channel="phone", config=("voice-bot", 1), product="voicebot")
    await reply(h, "e", at(5, e), 0.2)
    await escalate(h, "e", at(10, e), "explicit_request")
    await do(h, "e", c.ResolveEscalation(escalation_id="e-e", resolution="returned_to_ai", at=at(60, e)))
    await close(h, "e", at(120, e))
    # F: September: outside the period.
    f = datetime(2025, 9, 15, 12, 0, tzinfo=UTC)
    await start(h, "f", f, channel="webchat", config=("support-bot", 1))
    await escalate(h, "f", at(5, f), "urgent_keywords")
    await close(h, "f", at(50, f))
    return h


async def project_all(store: OpenStore, sink: AnalyticsSink, **options: Any) -> ProjectorRunner[ClickHouseBatch]:
    runner = analytics_runner(store.store, sink, idle_wait=0.2, **options)
    await runner.catch_up()
    return runner


def rows(sink: AnalyticsSink, table: str, order: str, final: bool = False) -> list[tuple[Any, ...]]:
    return sink.client.query(f"SELECT * FROM {sink.db}.{table} {'FINAL' if final else ''} ORDER BY {order}").result_rows


def snapshot(sink: AnalyticsSink) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "events": rows(sink, "events", "aggregate_id, version"),
        "facts": rows(sink, "conversation_facts", "conversation_id", final=True),
        "escalations": rows(sink, "escalations", "escalation_id"),
    }


# Landing ---------------------------------------------------------------------------------------


async def test_every_event_lands_once_without_personal_data(store: OpenStore, sink: AnalyticsSink) -> None:
    h = await known_history(store)
    runner = await project_all(store, sink)
    await runner.shutdown()

    counts = sink.counts()
    assert counts == {"events": h.events, "escalations": 4, "dead_letters": 0, "conversation_facts": 6}
    assert sink.checkpoint("analytics") == await store.log.last_seq()
    distinct = sink.client.command("SELECT uniqExact(aggregate_id, version) FROM parley.events")
    assert distinct == h.events
    started = sink.client.query(
        "SELECT payload, command, actor, correlation_id, toString(time) FROM parley.events"
        " WHERE aggregate_id = 'a' AND version = 1"
    ).result_rows[0]
    payload = msgspec.json.decode(started[0])
    assert payload["context"] is None and payload["channel"] == "webchat" and "__pii__" not in payload
    assert started[1:] == ("StartConversation", "u-1", "req-a", "2025-10-01 10:00:00.000")
    contents = sink.client.query(
        "SELECT DISTINCT JSONExtractRaw(payload, 'content') FROM parley.events"
        " WHERE event_type IN ('UserMessageReceived', 'AgentReplied')"
    ).result_rows
    assert contents == [("null",)]


async def test_personal_data_stored_in_clear_is_blanked_too(store: OpenStore, sink: AnalyticsSink) -> None:
    """An event written before its fields were declared personal holds them in clear in the stream."""
    from eventsourcing.utils import get_topic

    from streams.store import StoredItem, encode_commit

    event = c.UserMessageReceived(message_id="m", user_id="u", content="my secret", received_at=at(0))
    item = StoredItem(get_topic(c.UserMessageReceived), msgspec.json.encode(event))
    await store.log.publish([OutMessage("parley.ev.acme.conversation.old.c-1", {}, encode_commit(1, [item]))])
    runner = await project_all(store, sink)
    await runner.shutdown()
    payload = sink.client.command("SELECT payload FROM parley.events")
    assert msgspec.json.decode(payload)["content"] is None and "secret" not in payload


async def test_a_field_sealed_only_since_is_blanked_in_an_older_sealed_event(
    store: OpenStore, sink: AnalyticsSink
) -> None:
    """An event sealed before one of its fields was declared personal has an envelope and that
    field in clear: the envelope alone does not make it blank."""
    from eventsourcing.utils import get_topic

    from streams.store import StoredItem, encode_commit

    older = c.AgentReplied(
        message_id="m-1",
        user_id="u",
        tool_calls=[c.ToolCall(tool="lookup", input={"card": "4111 1111 1111 1111"})],
        replied_at=at(0),
    )  # content sealed; tool inputs were not personal yet
    state = msgspec.json.encode(older)[:-1] + b',"__pii__":{"s":"u","k":1,"c":"QUJD"}}'
    item = StoredItem(get_topic(c.AgentReplied), state)
    await store.log.publish([OutMessage("parley.ev.acme.conversation.c-1.Reply", {}, encode_commit(1, [item]))])
    runner = await project_all(store, sink)
    await runner.shutdown()
    payload = sink.client.command("SELECT payload FROM parley.events")
    assert "4111" not in payload and msgspec.json.decode(payload)["tool_calls"][0]["input"] == {}


async def test_an_envelope_look_alike_in_clear_data_is_not_taken_for_one(store: OpenStore, sink: AnalyticsSink) -> None:
    """A value that looks like the sealed envelope, in an event stored in clear, is blanked with the
    rest: neither cut at (which would keep what precedes it) nor unsealed."""
    from eventsourcing.utils import get_topic

    from streams.store import StoredItem, encode_commit

    look_alike = {"holder": "Jo Secret", "__pii__": {"s": "u", "k": 1, "c": "QUJD"}}
    event = c.AgentReplied(
        message_id="m-1", user_id="u", tool_calls=[c.ToolCall(tool="lookup", output=look_alike)], replied_at=at(0)
    )
    item = StoredItem(get_topic(c.AgentReplied), msgspec.json.encode(event))
    await store.log.publish([OutMessage("parley.ev.acme.conversation.c-1.Reply", {}, encode_commit(1, [item]))])
    [raw] = await store.store.read_all(limit=10)
    [recorded] = store.store.decode(raw)
    assert recorded.event == event  # as stored: nothing was sealed
    runner = await project_all(store, sink)
    await runner.shutdown()
    payload = sink.client.command("SELECT payload FROM parley.events")
    assert msgspec.json.decode(payload)["tool_calls"] == [
        {"tool": "lookup", "input": {}, "output": None, "execution_time_ms": None, "error": None}
    ]
    assert "Jo Secret" not in payload


async def test_the_fast_decoder_gives_the_rows_of_the_event_store(store: OpenStore) -> None:
    await known_history(store)
    fast, slow = store.store.redacted(), store.store.redacted(fast=False)
    assert fast.fast and not slow.fast
    raws = await store.store.read_all(limit=1000)
    for raw in raws:
        recorded = round(datetime.fromisoformat(raw.time).timestamp() * 1000)
        assert fast.decode(raw.seq, raw.subject, raw.data, recorded, EventRow) == slow.decode(
            raw.seq, raw.subject, raw.data, recorded, EventRow
        )


def test_the_fast_decoders_blank_check_answers_as_the_domains() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    call = c.ToolCall(tool="lookup")
    replies = [
        c.AgentReplied(message_id="m", user_id="u", replied_at=at, **fields)
        for fields in (
            {},
            {"content": "hi"},
            {"agent_text": ""},
            {"tool_calls": [call]},
            {"tool_calls": [c.ToolCall(tool="lookup", input={"q": 1})]},
            {"tool_calls": [c.ToolCall(tool="lookup", output={})]},
            {"content": "hi", "tool_calls": [call]},
        )
    ]
    quick, slow = _quick_blank_check(c.AgentReplied), blank_check(c.AgentReplied)
    assert [quick(r) for r in replies] == [slow(r) for r in replies] == [True, False, False, True, False, False, False]


def test_the_fold_counts_what_replies_carry() -> None:
    def row(version: int) -> EventRow:
        return EventRow("acme", "conversation", "c-1", version, version, "", version * 1000, 0, "", "", "", "", b"")

    start = c.ConversationStarted(
        conversation_id="c-1", config_id="bot", config_version=1, channel="webchat", user_id="u", started_at=at(0)
    )
    replies = [
        c.AgentReplied(message_id="1", user_id="u", replied_at=at(1), sentiment=0.5),
        c.AgentReplied(
            message_id="2",
            user_id="u",
            replied_at=at(2),
            sentiment=-0.25,
            tool_calls=[c.ToolCall(tool="lookup"), c.ToolCall(tool="refund", error="down")],
            fallbacks=[c.ProviderFallback(from_provider="a", to_provider="b", reason="timeout")],
            cross_sell=c.CrossSellOffer(product="p", suggestion="s", confidence=0.9),
        ),
        c.AgentReplied(message_id="3", user_id="u", replied_at=at(3), author="human:agent-1"),
    ]
    fold = FactsFold()
    fold.apply([(row(1), start)] + [(row(i + 2), r) for i, r in enumerate(replies)])
    [facts] = fold.take_touched()
    assert (facts.version, facts.seq, facts.last_event_at) == (4, 4, 4000)
    assert (facts.agent_replies, facts.human_replies) == (2, 1)
    assert (facts.sentiment_sum, facts.sentiment_count) == (0.25, 2)
    assert (facts.sentiment_last, facts.sentiment_min) == (-0.25, -0.25)
    assert (facts.tool_calls, facts.tool_errors, facts.tools) == (2, 1, ["lookup", "refund"])
    assert (facts.llm_fallbacks, facts.cross_sell_offers) == (1, 1)


class _Annotated(Event, frozen=True, kw_only=True):
    """A sealed event with a free-form value in clear: a look-alike envelope key may be in it."""

    text: str | None = None
    labels: dict[str, str] = {}

    personal_fields = ("text",)


def test_a_blank_event_is_searched_for_look_alike_envelope_keys_only_where_it_can_hold_one() -> None:
    # Every free-form value of these is personal, so blank in a blank event: the last envelope key is the envelope.
    for cls in (c.ConversationStarted, c.AgentReplied, v.CallInitiated, v.ToolCallStarted, v.ToolCallFinished):
        assert blank_envelope_finder(cls) is envelope_key_at
    assert blank_envelope_finder(_Annotated) is envelope_at
    clear = msgspec.json.encode(_Annotated(labels={"__pii__": "x"}))[:-1] + b',"__pii__":{"s":"u","k":1,"c":""}}'
    assert blank_envelope_finder(_Annotated)(clear) == clear.rfind(b',"__pii__":')
    look_alike = msgspec.json.encode(_Annotated(labels={"a": "b", "__pii__": "x"}))  # a key, in clear
    assert look_alike.rfind(b',"__pii__":') > 0
    assert blank_envelope_finder(_Annotated)(look_alike) == -1


def test_decoding_many_commits_sorts_events_by_type_and_gives_nothing_of_a_commit_that_fails() -> None:
    store = EventStore(None, EventMapper())  # type: ignore[arg-type]  # decoding needs no server
    closed = StoredItem(topic_of(c.ConversationClosed), msgspec.json.encode(c.ConversationClosed(closed_at=at(1))))
    unknown = StoredItem("domain.conversation:NoSuchEvent", b"{}")
    commits = [
        Delivered(1, "parley.ev.acme.conversation.a.c-1", encode_commit(1, [closed]), 1000),
        Delivered(2, "parley.ev.acme.conversation.b.c-2", encode_commit(4, [closed, unknown]), 2000),
        Delivered(3, "parley.ev.acme.counter.x.c-3", encode_commit(1, [closed]), 3000),
        Delivered(4, "parley.ev.acme.conversation.b.c-4", encode_commit(6, [closed, closed]), 4000),
    ]
    for redacted in (store.redacted(), store.redacted(fast=False)):
        conversations: list[Any] = []
        rows, failed = redacted.decode_all(commits, EventRow, {"conversation": conversations})
        assert [(r.seq, r.aggregate_id, r.version) for r in rows] == [
            (1, "a", 1),
            (3, "x", 1),
            (4, "b", 6),
            (4, "b", 7),
        ]
        assert [(r.seq, r.version) for r, _ in conversations] == [(1, 1), (4, 6), (4, 7)]
        assert [(f.seq, f.subject) for f in failed] == [(2, "parley.ev.acme.conversation.b.c-2")]
        rest: list[Any] = []
        assert redacted.decode_all(commits[2:3], EventRow, {}, rest)[0] == [r for r, _ in rest] == rows[1:2]
        assert [r for r, _ in redacted.decode(4, commits[3].subject, commits[3].data, 4000, EventRow)] == rows[2:]
        with pytest.raises(EventDecodeError):
            redacted.decode(2, commits[1].subject, commits[1].data, 2000, EventRow)


async def test_a_commit_that_cannot_be_decoded_becomes_a_dead_letter(store: OpenStore, sink: AnalyticsSink) -> None:
    h = History(store)
    await start(h, "a", at(0), channel="webchat", config=("support-bot", 1))
    bad = await store.log.publish([OutMessage("parley.ev.acme.conversation.z.c-bad", {}, b"not a commit")])
    await close(h, "a", at(5))
    runner = await project_all(store, sink)
    await runner.shutdown()
    assert sink.counts()["events"] == 3
    letters = rows(sink, "dead_letters", "seq")
    assert [(r[0], r[1]) for r in letters] == [(bad.last_seq, "parley.ev.acme.conversation.z.c-bad")]
    assert sink.checkpoint("analytics") == await store.log.last_seq()


# Exactly once ----------------------------------------------------------------------------------


async def test_a_redelivered_batch_does_not_double_rows(store: OpenStore, sink: AnalyticsSink) -> None:
    await known_history(store)
    runner = analytics_runner(store.store, sink, idle_wait=0.2)
    await runner.start()
    assert runner.feed is not None
    batch = await runner.feed.fetch()
    await runner.project(batch.messages)
    before = snapshot(sink)

    again = await runner.project(batch.messages)  # delivered again before its acknowledgement
    assert again.skipped == len(batch.messages) and again.events == 0
    await runner.shutdown()
    # A new runner (a restart): the consumer starts after the checkpoint, nothing is written twice.
    restarted = await project_all(store, sink)
    await restarted.shutdown()
    assert snapshot(sink) == before


class _CrashBeforeCheckpoint(AnalyticsSink):
    """A sink whose process dies once between a batch's rows and its checkpoint."""

    crashed = False

    def set_checkpoint(self, projector: str, seq: int) -> None:
        if not self.crashed and seq > 20:
            self.crashed = True
            raise ConnectionError("killed before the checkpoint")
        super().set_checkpoint(projector, seq)


async def test_rows_written_without_their_checkpoint_are_written_again_once(
    store: OpenStore, sink: AnalyticsSink
) -> None:
    h = await known_history(store)
    crashing = _CrashBeforeCheckpoint(sink.client)
    runner = analytics_runner(store.store, crashing, batch=8, idle_wait=0.2)
    with pytest.raises(ConnectionError):
        await runner.catch_up()
    await runner.close()
    checkpoint = sink.checkpoint("analytics")
    above = sink.client.command(f"SELECT count() FROM parley.events WHERE seq > {checkpoint}")
    assert above > 0  # the batch's rows landed, its checkpoint did not

    await runner.catch_up()  # starts again: deletes what the checkpoint does not cover, replays it
    await runner.shutdown()
    assert sink.counts()["events"] == h.events
    assert sink.client.command("SELECT uniqExact(aggregate_id, version) FROM parley.events") == h.events
    assert snapshot(sink) == await reference(store, sink)


async def reference(store: OpenStore, sink: AnalyticsSink) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of a clean projection of the whole stream, in a database of their own."""
    clean = AnalyticsSink(sink.client, "reference")
    runner = await project_all(store, clean, name="reference")
    await runner.shutdown()
    return snapshot(clean)


async def test_sigkill_in_the_middle_of_batches_then_restart_gives_exact_counts(
    store: OpenStore, tmp_path: Path
) -> None:
    from bench.analytics import write_history

    written = await write_history(store.store, 6000, tenant="acme", days=30, concurrency=64)
    last = await store.log.last_seq()
    env = {
        **os.environ,
        "NATS_URL": store.settings.nats_url,
        "PARLEY_STREAM": store.settings.stream,
        "PARLEY_DATA": str(tmp_path),
        "PARLEY_ANALYTICS_BATCH": "300",
        "PARLEY_LOG_LEVEL": "DEBUG",  # a line per batch projected
    }
    deleted = []
    for kill, delay in enumerate((0.03, 0.06, None)):  # two kills at different depths into a batch, then to the end
        log = tmp_path / f"projector-{kill}.log"
        proc = _projector_process(env, log)
        try:
            while not _projected(log):  # until a batch is written, and the next one in hand
                await asyncio.sleep(0.005)
                assert proc.poll() is None, log.read_text()
            if delay is not None:
                await asyncio.sleep(delay)
                proc.send_signal(signal.SIGKILL)
            else:  # the last one finishes the stream, then stops cleanly
                while max(_projected(log)) < last:
                    await asyncio.sleep(0.05)
                    assert proc.poll() is None, log.read_text()
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        deleted += [line for line in log.read_text().splitlines() if "rows_deleted" in line]

    sink = AnalyticsSink.open(AnalyticsSettings(data_dir=tmp_path))
    try:
        assert sink.checkpoint("analytics") == last
        counts = sink.counts()
        assert counts["events"] == written["events"]
        assert sink.client.command("SELECT uniqExact(aggregate_id, version) FROM parley.events") == written["events"]
        assert counts["conversation_facts"] == written["conversations"]
        assert snapshot(sink) == await reference(store, sink)
        print("restarts:", *deleted, sep="\n  ")
    finally:
        sink.close()


def _projector_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "projections.analytics", "run"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )


def _projected(log: Path) -> list[int]:
    """The last sequences of the batches a projector process has written, from its log."""
    out = []
    for line in log.read_text().splitlines():
        if '"batch projected"' in line:
            with contextlib.suppress(ValueError):
                out.append(int(json.loads(line)["last_seq"]))
    return out


# Rebuild ---------------------------------------------------------------------------------------


async def test_facts_the_cache_lost_are_read_back_and_folded_on(store: OpenStore, sink: AnalyticsSink) -> None:
    """Interleaved conversations through a one-conversation cache, one commit a batch: every
    event but a start finds its conversation read back from ClickHouse, and the rows are those of
    one fold in memory."""
    h = History(store)
    await start(h, "x", at(0), channel="webchat", config=("support-bot", 1))
    await start(h, "y", at(1), channel="whatsapp", config=("sales-bot", 3))
    await reply(h, "x", at(2), 0.4, tool="lookup")
    await escalate(h, "y", at(3), "user_frustrated")
    await message(h, "x", at(4))
    await reply(h, "y", at(5), 0.0, author="human")
    await survey(h, "x", at(6), 9, "4")
    await close(h, "y", at(20), reason="resolved_by_agent")
    await close(h, "x", at(30))

    read_back: list[list[tuple[str, str]]] = []
    load_facts = sink.load_facts
    sink.load_facts = lambda keys: read_back.append(keys) or load_facts(keys)  # type: ignore[method-assign]
    runner = await project_all(store, sink, batch=1, cache_size=1)
    await runner.shutdown()
    assert len(read_back) >= 5 and all(len(keys) == 1 for keys in read_back), read_back
    one_fold = AnalyticsSink(sink.client, "one_fold")
    runner = await project_all(store, one_fold, name="one_fold")
    await runner.shutdown()
    assert snapshot(sink) == snapshot(one_fold)
    facts = {r[1]: r for r in rows(sink, "conversation_facts", "conversation_id", final=True)}
    assert set(facts) == {"x", "y"}
    assert snapshot(sink)["escalations"][0][-4:] == ("sales-bot", 3, "whatsapp", "chatbot")


async def test_a_rebuild_gives_the_same_rows(
    store: OpenStore, sink: AnalyticsSink, settings: AnalyticsSettings
) -> None:
    h = await known_history(store)
    runner = await project_all(store, sink, batch=7)
    await runner.shutdown()
    before = snapshot(sink)

    report = await rebuild(store.store, settings, batch=1000)
    assert report.checkpoint == sink.checkpoint("analytics") == await store.log.last_seq()
    assert (report.events, report.commits, report.dead_letters) == (h.events, h.commits, 0)
    assert snapshot(sink) == before
    assert _databases(sink) == {"parley"}  # the shadow, holding the old tables after the swap, is gone
    checkpoints = sink.client.query("SELECT projector FROM parley.checkpoint FINAL").result_rows
    assert checkpoints == [("analytics",)]
    consumers = [c.name for c in await store.log.js.consumers_info(store.settings.stream)]
    assert "proj_analytics_rebuild" not in consumers


async def test_the_status_command_reports_checkpoint_lag_and_rows(
    store: OpenStore,
    sink: AnalyticsSink,
    settings: AnalyticsSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m projections.analytics status``: the same status as /health gives, and row counts."""
    from projections.analytics.__main__ import _status

    h = await known_history(store)
    runner = await project_all(store, sink)
    await runner.shutdown()
    monkeypatch.setenv("NATS_URL", store.settings.nats_url)
    monkeypatch.setenv("PARLEY_STREAM", store.settings.stream)
    await _status(settings)
    status = json.loads(capsys.readouterr().out)
    last = await store.log.last_seq()
    assert (status["name"], status["checkpoint"], status["lag"], status["dead_letters"]) == ("analytics", last, 0, 0)
    assert status["rows"]["events"] == h.events


async def test_a_rebuild_of_a_new_store_swaps_in_tables_a_runner_goes_on_from(
    store: OpenStore, sink: AnalyticsSink, settings: AnalyticsSettings
) -> None:
    report = await rebuild(store.store, settings)  # no tables yet, no events
    assert (report.events, report.checkpoint) == (0, 0)
    h = await known_history(store)
    runner = await project_all(store, sink)
    await runner.shutdown()
    assert sink.counts()["events"] == h.events


async def test_with_no_api_running_the_projections_cli_rebuilds_in_its_own_process(
    store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``just projections-rebuild analytics`` with the platform down: nothing holds the store."""
    import socket

    from projections.__main__ import rebuild_analytics

    h = await known_history(store)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    for variable, value in {
        "NATS_URL": store.settings.nats_url,
        "PARLEY_STREAM": store.settings.stream,
        "PARLEY_DATA": str(tmp_path),
        "PARLEY_API_URL": f"http://127.0.0.1:{closed}",
        "PARLEY_JWT_SECRET": "cli-test-secret-" + "x" * 32,
    }.items():
        monkeypatch.setenv(variable, value)
    for variable in ("CLICKHOUSE_URL", "PARLEY_ANALYTICS_DB", "PARLEY_ANALYTICS_BATCH"):
        monkeypatch.delenv(variable, raising=False)
    await asyncio.to_thread(rebuild_analytics)
    out = capsys.readouterr()
    assert out.err.startswith(f"no API at http://127.0.0.1:{closed}: rebuilding here")
    assert out.out.startswith(f"rebuilt analytics (parley): {h.events} events in {h.commits} commits")
    assert f"live at sequence {await store.log.last_seq()}" in out.out and f"events {h.events}" in out.out


def _databases(sink: AnalyticsSink) -> set[str]:
    rows = sink.client.query("SELECT name FROM system.databases WHERE name LIKE 'parley%'").result_rows
    return {r[0] for r in rows}


async def test_a_rebuild_while_the_live_runner_projects_swaps_in_the_same_rows_and_queries_never_see_it_half_done(
    store: OpenStore, tmp_path: Path
) -> None:
    """The platform's case: the service's runner follows the stream, another tenant keeps writing,
    the KPI queries keep running; the rebuild replays into the shadow, pauses the runner, swaps."""
    from bench.analytics import write_history
    from projections.analytics.service import AnalyticsService

    written = await write_history(store.store, 3000, tenant="acme", days=20, concurrency=32)
    settings = AnalyticsSettings(data_dir=tmp_path / "live", batch=100)
    service = await AnalyticsService.open(store.store, settings)
    assert service is not None
    stop = asyncio.Event()
    live = asyncio.create_task(service.run(stop))
    period = (datetime.now(UTC) - timedelta(days=30), datetime.now(UTC) + timedelta(days=1))
    others = History(store, tenant="globex")
    try:
        await _caught_up(service)
        before = await service.queries.akpis("acme", *period)
        assert before.totals.conversations == written["conversations"]
        shadow = shadow_database(settings.database)
        samples: list[tuple[Any, int | None]] = []  # (the KPIs, rows in the shadow's events then)
        rebuilt = asyncio.Event()

        async def query() -> None:
            while not rebuilt.is_set():
                kpis = await service.queries.akpis("acme", *period)
                try:
                    filling = await asyncio.to_thread(
                        service.queries.client.command, f"SELECT count() FROM {shadow}.events"
                    )
                except Exception:  # no shadow (yet, or any more)
                    filling = None
                samples.append((kpis, filling))
                await asyncio.sleep(0.005)

        async def write() -> None:  # another tenant's conversations, while the rebuild runs
            for k in range(40):
                await start(others, f"g{k}", at(k), channel="webchat", config=("support-bot", 1))
                if k % 3 == 0:
                    await escalate(others, f"g{k}", at(k + 1), "explicit_request")
                await asyncio.sleep(0.01)

        readers = [asyncio.create_task(query()), asyncio.create_task(write())]
        try:
            report = await service.rebuild()
        finally:
            rebuilt.set()
            await asyncio.gather(*readers)
        assert report.checkpoint >= written["commits"] and report.paused_ms < 5000

        assert all(kpis == before for kpis, _ in samples), "a query saw something other than the live tables"
        filling = [n for _, n in samples if n is not None]
        assert any(0 < n < written["events"] for n in filling), f"no query ran while the shadow filled: {filling}"

        # After the swap the live runner goes on from the new checkpoint: nothing lost, nothing twice.
        for k in range(40, 60):
            await start(others, f"g{k}", at(k), channel="whatsapp", config=("support-bot", 2))
            await close(others, f"g{k}", at(k + 5))
        await _caught_up(service)
        assert service.sink.checkpoint("analytics") == await store.log.last_seq()
        events = written["events"] + others.events
        assert service.sink.counts()["events"] == events
        assert (
            service.sink.client.command("SELECT uniqExact(tenant, aggregate_id, version) FROM parley.events") == events
        )
        assert snapshot(service.sink) == await reference(store, service.sink)
        assert await service.queries.akpis("acme", *period) == before
        assert _databases(service.sink) == {"parley"}
    finally:
        stop.set()
        await live
        await service.close()


async def _caught_up(service: Any, seconds: float = 30.0) -> None:
    """Until the service's projector has the stream's last event."""
    for _ in range(int(seconds / 0.05)):
        status = await service.status()
        if status is not None and status["lag"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the analytics projector did not catch up: {status}")


async def test_rebuilds_one_at_a_time_ahead_of_a_paused_runner_and_a_failed_one_changes_nothing(
    store: OpenStore, tmp_path: Path
) -> None:
    from domain.errors import IllegalStateError, UnavailableError
    from projections.analytics.service import AnalyticsService

    h = await known_history(store)
    settings = AnalyticsSettings(data_dir=tmp_path / "live", batch=5)
    service = await AnalyticsService.open(store.store, settings)
    assert service is not None
    stop = asyncio.Event()
    live = asyncio.create_task(service.run(stop))
    try:
        await _caught_up(service)
        before = snapshot(service.sink)
        first = asyncio.create_task(service.rebuild())
        await asyncio.sleep(0)
        with pytest.raises(IllegalStateError):
            await service.rebuild()
        await first

        # The shadow ahead of the live tables: events arrive while the live runner stands still.
        async with service.live.paused():
            more = History(store, tenant="globex")
            await start(more, "g", at(0), channel="webchat", config=("support-bot", 1))
            await escalate(more, "g", at(1), "explicit_request")
            behind = service.sink.checkpoint("analytics")
            report = await rebuild(store.store, settings)
            assert report.checkpoint == await store.log.last_seq() > behind
        await _caught_up(service)  # from the swapped-in checkpoint: the new events once
        assert service.sink.counts()["events"] == h.events + more.events
        assert snapshot(service.sink) == await reference(store, service.sink)
        before = snapshot(service.sink)

        # A rebuild that cannot finish (the stream gone from under it) leaves the live tables as they were.
        await store.log.js.delete_stream(store.settings.stream)
        with pytest.raises(UnavailableError):
            await service.rebuild()
        assert snapshot(service.sink) == before and service.sink.counts()["events"] == h.events + more.events
        assert _databases(service.sink) == {"parley"}
    finally:
        stop.set()
        await live
        await service.close()


# Calls -----------------------------------------------------------------------------------------

PRICES = v.UnitPrices(
    telephony_inbound_per_minute=0.01,
    telephony_outbound_per_minute=0.02,
    stt_per_minute=0.006,
    tts_per_1k_characters=0.03,
    llm_per_request=0.001,
)


async def call(h: History, call_id: str, *commands: Command) -> list[Event]:
    """A call's commands through its decider, one commit each; the events decided."""
    events = []
    for command in commands:
        events += await h.decide(v.DECIDER, call_id, command, actor="voice-worker")
    return events


def initiate(call_id: str, t: datetime, direction: str) -> v.InitiateCall:
    return v.InitiateCall(
        call_id=call_id,
        config_id="voice-bot",
        config_version=2,
        direction=direction,  # type: ignore[arg-type]
        transport="twilio",
        user_id=f"caller-{call_id}",
        phone_number="+14155550100",
        at=t,
    )


def caller(n: int, t: datetime, *, confidence: float, stt: float, seconds: float) -> v.RecordCallerUtterance:
    return v.RecordCallerUtterance(
        utterance_id=f"u{n}",
        text="Where is my order ORD-7?",
        confidence=confidence,
        audio_seconds=seconds,
        transcription_delay_ms=stt,
        end_of_turn_delay_ms=stt + 100,
        at=t,
    )


def agent(
    n: int, t: datetime, *, llm: float, tts: float, e2e: float, interrupted: bool = False
) -> v.RecordAgentUtterance:
    return v.RecordAgentUtterance(
        utterance_id=f"a{n}",
        text="Let me look that up for you.",
        llm_ttft_ms=llm,
        tts_ttfb_ms=tts,
        e2e_latency_ms=e2e,
        interrupted=interrupted,
        at=t,
    )


async def known_calls(store: OpenStore) -> list[v.CallEnded]:
    """Three calls in October (two inbound, one outbound, one of them transferred, one abandoned
    before it connected), a refused attempt, and a call in September; the ends they recorded."""
    h = History(store)
    a, b, cc = at(0), at(3600), at(7200)
    ended = await call(
        h,
        "call-a",
        initiate("call-a", a, "inbound"),
        v.ConnectCall(at=at(2, a)),
        caller(1, at(5, a), confidence=0.9, stt=200, seconds=3),
        agent(1, at(6, a), llm=400, tts=150, e2e=800),
        caller(2, at(10, a), confidence=0.8, stt=300, seconds=2),
        agent(2, at(11, a), llm=600, tts=250, e2e=1200, interrupted=True),
        v.EndCall(prices=PRICES, at=at(62, a)),
    )
    ended += await call(
        h,
        "call-b",
        initiate("call-b", b, "outbound"),
        v.ConnectCall(at=at(1, b)),
        caller(1, at(4, b), confidence=1.0, stt=100, seconds=2),
        agent(1, at(5, b), llm=500, tts=200, e2e=1000),
        v.RequestTransfer(
            transfer_id="t-1",
            transfer_type="warm",
            agent_id="h-1",
            reason="angry",
            trigger="user_frustrated",
            at=at(6, b),
        ),
        v.ConnectTransfer(transfer_id="t-1", at=at(20, b)),
        v.EndCall(prices=PRICES, at=at(91, b)),
    )
    ended += await call(
        h,
        "call-c",
        initiate("call-c", cc, "inbound"),
        v.EndCall(resolution_status="abandoned", reason="caller_hung_up", prices=PRICES, at=at(15, cc)),
    )
    refusal = v.RefuseCallAttempt(
        call_id="call-d", reason="outbound_quota", detail="100 an hour", user_id="caller-d", at=at(9000)
    )
    await call(h, "call-d", refusal)
    september = datetime(2025, 9, 20, 9, 0, tzinfo=UTC)
    await call(h, "call-e", initiate("call-e", september, "inbound"), v.EndCall(prices=PRICES, at=at(30, september)))
    return [e for e in ended if isinstance(e, v.CallEnded)]


async def test_voice_analytics_of_known_calls_are_exact(store: OpenStore, sink: AnalyticsSink) -> None:
    ends = await known_calls(store)
    runner = await project_all(store, sink, batch=4)  # several batches: call rows rewritten as they change
    await runner.shutdown()
    voice = AnalyticsQueries(sink.client).voice("acme", *OCTOBER)

    assert (voice.total_calls, voice.call_breakdown) == (3, CallBreakdown(inbound=2, outbound=1))
    assert voice.completion_rate == pytest.approx(2 / 3)  # a and b; c was abandoned before it connected
    assert voice.transfer_rate == pytest.approx(1 / 3) and voice.resolution_rate == pytest.approx(1 / 3)
    assert voice.avg_call_duration_seconds == pytest.approx((60 + 90 + 0) / 3)

    performance = voice.performance_metrics
    assert performance.stt_accuracy == pytest.approx(0.9)  # (0.9 + 0.8 + 1.0) / 3
    assert performance.avg_latency_ms == pytest.approx(1000.0)  # (800 + 1200 + 1000) / 3
    latency = performance.latency_ms
    assert (latency.stt.p50, latency.llm.p50, latency.tts.p50, latency.end_to_end.p50) == (200, 500, 200, 1000)
    assert 290 <= latency.stt.p95 <= 300 and 1160 <= latency.end_to_end.p95 <= 1200  # type: ignore[operator]

    cost = voice.cost_analysis
    assert cost.breakdown.telephony == pytest.approx(
        60 / 60 * 0.01 + 90 / 60 * 0.02
    )  # the tenant's prices, by direction
    assert cost.breakdown.stt == pytest.approx((3 + 2 + 2) / 60 * 0.006, abs=1e-4)
    assert cost.breakdown.llm == pytest.approx(3 * 0.001)
    recorded = sum(e.cost.total for e in ends)
    assert cost.total_cost == pytest.approx(recorded, abs=1e-4) and cost.cost_per_call == pytest.approx(
        recorded / 3, abs=1e-4
    )
    assert [(r.reason, r.count, r.share) for r in voice.top_escalation_reasons] == [("user_frustrated", 1, 1.0)]

    facts = {
        r[0]: r[1:]
        for r in sink.client.query(
            "SELECT call_id, status, resolution, completed, caller_turns, agent_turns, barge_ins"
            " FROM parley.call_facts FINAL"
        ).result_rows
    }
    assert facts == {
        "call-a": ("ended", "resolved", True, 2, 2, 1),
        "call-b": ("ended", "transferred", True, 1, 1, 0),
        "call-c": ("ended", "abandoned", False, 0, 0, 0),
        "call-d": ("refused", "", False, 0, 0, 0),
        "call-e": ("ended", "resolved", False, 0, 0, 0),
    }
    assert AnalyticsQueries(sink.client).voice("nobody", *OCTOBER).total_calls == 0


# Queries ---------------------------------------------------------------------------------------


async def test_kpis_of_a_known_history_are_exact(store: OpenStore, sink: AnalyticsSink) -> None:
    await known_history(store)
    runner = await project_all(store, sink, batch=5)  # many batches: facts rewritten as they change
    await runner.shutdown()
    kpis = AnalyticsQueries(sink.client).kpis("acme", *OCTOBER)

    t = kpis.totals
    assert (t.conversations, t.closed, t.resolved, t.escalated) == (5, 4, 3, 3)
    assert t.resolution_rate == 0.75 and t.escalation_rate == 0.6
    assert t.avg_turns == pytest.approx(7 / 5)
    assert t.avg_duration_seconds == pytest.approx((100 + 200 + 300 + 120) / 4)
    assert t.avg_sentiment == pytest.approx((0.5 + 0.7 - 0.6 + 0.1 + 0.3 + 0.2) / 6)
    assert (t.csat.responses, t.csat.average) == (2, 3.5)
    assert (t.nps.responses, t.nps.score, t.nps.promoters, t.nps.passives, t.nps.detractors) == (2, 0.0, 1, 0, 1)

    channels = {o.channel: o for o in kpis.by_channel}
    assert {k: (o.conversations, o.closed, o.resolved, o.escalated) for k, o in channels.items()} == {
        "webchat": (2, 2, 2, 1),
        "whatsapp": (2, 1, 0, 1),
        "phone": (1, 1, 1, 1),
    }
    assert channels["webchat"].nps.score == 100.0 and channels["whatsapp"].csat.average == 2.0
    configs = {(o.config_id, o.config_version): o for o in kpis.by_config_version}
    assert {k: (o.conversations, o.resolved, o.escalated) for k, o in configs.items()} == {
        ("support-bot", 1): (2, 1, 1),
        ("support-bot", 2): (2, 1, 1),
        ("voice-bot", 1): (1, 1, 1),
    }
    assert configs[("support-bot", 1)].resolution_rate == 0.5
    assert [(r.reason, r.count) for r in kpis.top_escalation_reasons] == [
        ("explicit_request", 2),
        ("user_frustrated", 1),
    ]
    assert kpis.top_escalation_reasons[0].share == pytest.approx(2 / 3)

    facts = {
        r[0]: r[1:]
        for r in sink.client.query(
            "SELECT conversation_id, resolution, resolved_by, turns, tools, status FROM parley.conversation_facts FINAL"
        ).result_rows
    }
    assert facts["a"] == ("resolved", "ai", 2, ["fetch_order_status"], "closed")
    assert facts["b"] == ("resolved", "human", 1, [], "closed")
    assert facts["c"] == ("unresolved", "", 2, [], "closed")
    assert facts["d"] == ("open", "", 1, [], "active")
    assert facts["e"] == ("resolved", "ai", 1, [], "closed")

    voice = AnalyticsQueries(sink.client).voice("acme", *OCTOBER)  # a voicebot conversation is no phone call
    assert (voice.total_calls, voice.top_escalation_reasons) == (0, [])
    empty = AnalyticsQueries(sink.client).kpis("nobody", *OCTOBER)
    assert empty.totals.conversations == 0 and empty.totals.avg_turns is None and empty.by_channel == []


async def test_the_kpi_endpoints_answer_for_the_callers_tenant(store: OpenStore, sink: AnalyticsSink) -> None:
    await known_history(store)
    await known_calls(store)
    runner = await project_all(store, sink)
    await runner.shutdown()
    secret = "analytics-test-secret-of-at-least-32-bytes"
    platform = SimpleNamespace(analytics=AnalyticsQueries(sink.client))
    app = Litestar(
        route_handlers=[AnalyticsController],
        dependencies={
            "platform": Provide(lambda: platform, sync_to_thread=False),
            "analytics": Provide(lambda: platform.analytics, sync_to_thread=False),
        },
        on_app_init=[jwt_auth(secret).on_app_init],
        exception_handlers=EXCEPTION_HANDLERS,
    )

    def auth(roles: list[str], tenant: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(secret, subject='x', tenant=tenant, roles=roles)}"}

    october = {"start": date(2025, 10, 1).isoformat(), "end": date(2025, 10, 31).isoformat()}
    async with AsyncTestClient(app=app) as client:
        r = await client.get("/api/v1/analytics/kpis", params=october, headers=auth(["analyst"]))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["totals"]["conversations"] == 5 and body["period"] == {"start": "2025-10-01", "end": "2025-10-31"}
        assert body["top_escalation_reasons"][0] == {"reason": "explicit_request", "count": 2, "share": 2 / 3}
        r = await client.get("/api/v1/analytics/kpis", params=october, headers=auth(["analyst"], tenant="other"))
        assert r.json()["totals"]["conversations"] == 0
        r = await client.get("/api/v1/analytics/kpis", params=october, headers=auth(["customer"]))
        assert r.status_code == 403
        r = await client.get(
            "/api/v1/analytics/kpis", params={"start": "2025-10-05", "end": "2025-10-01"}, headers=auth(["analyst"])
        )
        assert r.status_code == 400 and r.json()["code"] == "validation_error"
        r = await client.get("/api/v1/analytics/escalation-reasons", params=october, headers=auth(["org_admin"]))
        assert [x["reason"] for x in r.json()["reasons"]] == ["explicit_request", "user_frustrated"]
        r = await client.get(
            "/api/v1/voice/analytics",
            params={"start_date": "2025-10-01", "end_date": "2025-10-11"},
            headers=auth(["analyst"]),
        )
        voice = r.json()
        assert voice["total_calls"] == 3 and voice["call_breakdown"] == {"inbound": 2, "outbound": 1}
        assert set(voice) >= {"performance_metrics", "cost_analysis", "completion_rate", "transfer_rate"}
        assert voice["performance_metrics"]["latency_ms"]["end_to_end"]["p50"] == 1000
        assert set(voice["cost_analysis"]["breakdown"]) == {"stt", "tts", "llm", "telephony"}
        assert voice["top_escalation_reasons"] == [{"reason": "user_frustrated", "count": 1, "share": 1.0}]
        platform.analytics = None
        r = await client.get("/api/v1/analytics/kpis", headers=auth(["analyst"]))
        assert r.status_code == 503


def test_encoded_rows_are_messagepack_arrays_one_after_another() -> None:
    """A guard on the wire format the sink relies on: an array per row, nothing around them,
    whatever the size of the list header cut off (1, 3 or 5 bytes)."""
    from projections.analytics.sink import encode_rows
    from read_models.analytics_schema import DeadLetterRow

    for n in (1, 15, 16, 65_535, 65_536):
        rows = [DeadLetterRow(i, "s", "e", 2_500) for i in range(n)]
        assert encode_rows(rows) == b"".join(msgspec.msgpack.encode(row) for row in rows), n
    assert encode_rows([]) == b""


async def test_the_bulk_feed_parser_reads_frames_split_anywhere() -> None:
    from streams.bulk import _LeanClient

    def hmsg(reply: bytes, headers: bytes, payload: bytes) -> bytes:
        args = b" ".join(
            [b"HMSG inbox 7", *([reply] if reply else []), b"%d %d" % (len(headers), len(headers) + len(payload))]
        )
        return args + b"\r\n" + headers + payload + b"\r\n"

    ack = b"$JS.ACK.S.C.1.10.1.1700000000000000000.5"
    ack2 = b"$JS.ACK.hub.ACCHASH.S.C.2.11.2.1700000000001000000.4.r4nd0m"  # with domain, account and token
    stored = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 3\r\n\r\n"
    status = b"NATS/1.0 404 No Messages\r\n\r\n"
    stream = b"".join(
        [
            hmsg(ack, stored, b"hello"),
            b"MSG inbox 7 r2 3\r\nabc\r\n",
            b"+OK\r\n",
            b"MSG inbox 7 " + ack2 + b" 2\r\nhi\r\n",
            hmsg(b"", status, b""),
            b"MSG inbox 7 r3 0\r\n\r\n",
        ]
    )
    expected = [
        ("delivery", b"inbox", ack, 10, 1, 1700000000000000000, b"hello"),
        ("frame", b"inbox", b"r2", None, b"abc"),
        ("delivery", b"inbox", ack2, 11, 2, 1700000000001000000, b"hi"),
        ("frame", b"inbox", b"", status, b""),
        ("frame", b"inbox", b"r3", None, b""),
    ]

    class Recorder:
        def __init__(self) -> None:
            self.got: list[tuple[Any, ...]] = []

        def on_delivery(self, *delivery: Any) -> None:
            self.got.append(("delivery", *delivery))

        def on_frame(self, *frame: Any) -> None:
            self.got.append(("frame", *frame))

    for cut in range(1, len(stream)):
        nc = _LeanClient()
        nc.routes[b"7"] = recorder = Recorder()
        await nc._ps.parse(stream[:cut])
        await nc._ps.parse(stream[cut:])
        assert recorder.got == expected, cut


async def test_the_bulk_feed_keeps_each_batch_under_its_byte_bound(store: OpenStore) -> None:
    """Pulls end at ``max_bytes`` (the server's 409 status): the batches stay small, none is lost."""
    from streams.bulk import BulkFeed

    body = b"x" * 1000
    published = await store.log.publish(
        [OutMessage(f"parley.ev.acme.conversation.b{i}.c-{i}", {}, body) for i in range(60)]
    )
    feed = BulkFeed(store.log, "bytes_bound", batch=1000, idle_wait=0.2, acks=False, max_bytes=10_000)
    await feed.delete()
    sizes, seqs = [], []
    try:
        while batch := (await feed.fetch()).messages:
            sizes.append(len(batch))
            seqs += [m.seq for m in batch]
    finally:
        await feed.close()
        await feed.delete()
    assert seqs == list(range(published.first_seq, published.last_seq + 1))
    assert len(sizes) >= 6 and max(sizes) <= 10, sizes  # about 1 kB a message, 10 kB a batch


SHARDED = ("events", "conversation_facts", "escalations", "call_facts", "call_turns")


def test_the_cluster_ddl_is_generated_from_the_schema_and_up_to_date() -> None:
    """infra/clickhouse/cluster.sql is what read_models.analytics_schema makes of the tables: one source."""
    from read_models import analytics_schema

    written = analytics_schema.CLUSTER_FILE.read_text()
    assert written == analytics_schema.cluster_sql(), "run: python -m read_models.analytics_schema"
    assert set(SHARDED) == {t.name for t in analytics_schema.TABLES.values() if t.shard_by}
    for table in SHARDED:  # local tables behind Distributed ones
        assert f"CREATE TABLE IF NOT EXISTS parley.{table}_local ON CLUSTER parley (" in written
        assert f"ENGINE = Distributed(parley, parley, {table}_local, cityHash64(tenant, " in written
        assert f"TO parley.{table} AS" in written  # the inputs write through the Distributed table
    checkpoint = (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/all/parley/checkpoint', '{shard}-{replica}', last_seq)"
    )
    assert checkpoint in written


def test_the_cluster_ddl_made_single_node_gives_the_tables_of_the_schema(sink: AnalyticsSink) -> None:
    """The generated cluster DDL, with its replication and distribution taken out, makes the very
    columns, keys, engines and inputs ``statements`` make on one node."""
    import re

    from read_models import analytics_schema

    sink.ensure_schema()
    sink.client.command("CREATE DATABASE IF NOT EXISTS cluster")
    for statement in analytics_schema.cluster_statements()[1:]:
        if "Distributed" in statement or statement.startswith("INSERT"):
            continue
        statement = statement.replace(" ON CLUSTER parley", "").replace("parley.", "cluster.")
        statement = re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'(?:, )?", r"\1(", statement)
        statement = statement.replace("cluster.conversation_facts FINAL", "cluster.conversation_facts_local FINAL")
        for table in SHARDED:  # the views write the shards' tables
            statement = statement.replace(f" TO cluster.{table} AS", f" TO cluster.{table}_local AS")
        sink.client.command(statement)

    def shape(db: str, table: str) -> list[tuple[Any, ...]]:
        return sink.client.query(
            "SELECT name, type, default_kind, default_expression, is_in_partition_key, is_in_sorting_key"
            " FROM system.columns WHERE database = {db:String} AND table = {t:String} ORDER BY position",
            parameters={"db": db, "t": table},
        ).result_rows

    def engine(db: str, table: str) -> list[tuple[Any, ...]]:
        where = "database = {db:String} AND %s = {t:String}"
        tables = sink.client.query(
            "SELECT engine, partition_key, sorting_key FROM system.tables WHERE " + where % "name",
            parameters={"db": db, "t": table},
        ).result_rows
        indexes = sink.client.query(
            "SELECT name, type_full, expr, granularity FROM system.data_skipping_indices WHERE "
            + where % "table"
            + " ORDER BY name",
            parameters={"db": db, "t": table},
        ).result_rows
        return tables + indexes

    for table in SHARDED:
        assert shape("cluster", f"{table}_local") == shape("parley", table), table
        assert engine("cluster", f"{table}_local") == engine("parley", table), table
    for table in ("checkpoint", "dead_letters", "schema_digest"):
        assert shape("cluster", table) == shape("parley", table), table
        assert engine("cluster", table) == engine("parley", table), table

    def view(db: str, table: str) -> str:
        rows = sink.client.query(
            "SELECT as_select FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": db, "t": table},
        ).result_rows
        assert rows, (db, table)
        return str(rows[0][0]).replace(f"{db}.", "")

    for table in analytics_schema.ROW_TYPES:
        assert shape("cluster", f"{table}_input") == shape("parley", f"{table}_input"), table
        assert view("cluster", f"{table}_rows") == view("parley", f"{table}_rows"), table
    assert view("cluster", "config_version_outcomes") == view("parley", "config_version_outcomes").replace(
        "conversation_facts FINAL", "conversation_facts_local FINAL"
    )


async def test_the_service_projects_live_events_and_answers_queries(store: OpenStore, tmp_path: Path) -> None:
    from projections.analytics.service import AnalyticsService

    settings = AnalyticsSettings(data_dir=tmp_path / "live", batch=100)
    service = await AnalyticsService.open(store.store, settings)
    assert service is not None and service.runner is not None
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await known_history(store)  # written while the projector follows the stream
        for _ in range(100):
            kpis = await service.queries.akpis("acme", *OCTOBER)
            if kpis.totals.conversations == 5 and kpis.totals.closed == 4:
                break
            await asyncio.sleep(0.1)
        assert (kpis.totals.conversations, kpis.totals.closed, kpis.totals.escalated) == (5, 4, 3)
        status = await service.status()
        assert status is not None and status["lag"] == 0
    finally:
        stop.set()
        await task
        await service.close()


async def test_a_second_process_gets_no_analytics_while_another_holds_chdb(store: OpenStore, tmp_path: Path) -> None:
    from projections.analytics.service import AnalyticsService

    path = tmp_path / "held" / "chdb"
    path.mkdir(parents=True)
    holder = _hold_chdb(path)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        assert await AnalyticsService.open(store.store, AnalyticsSettings(data_dir=tmp_path / "held")) is None
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def _hold_chdb(path: Path) -> subprocess.Popen[bytes]:
    code = (
        "import clickhouse_connect, time\n"
        f"client = clickhouse_connect.get_client(dsn='chdb://{path}')\n"
        "print('open', flush=True)\n"
        "time.sleep(60)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def test_every_event_says_which_of_its_fields_is_when_it_happened() -> None:
    """The analytics (and the audit history) read an event's own time from the field its class
    names: each domain event names one, a ``datetime``, so none is read by guessing."""
    import importlib
    import pkgutil

    import domain
    from domain.messages import Event

    classes = [
        cls
        for info in pkgutil.iter_modules(domain.__path__)
        for cls in vars(importlib.import_module(f"domain.{info.name}")).values()
        if isinstance(cls, type)
        and issubclass(cls, Event)
        and cls is not Event
        and cls.__module__.startswith("domain.")
    ]
    assert len(classes) > 40
    fields = {cls.__name__: {f.name: f.type for f in msgspec.structs.fields(cls)} for cls in classes}
    wrong = {
        cls.__name__: cls.time_field
        for cls in classes
        if fields[cls.__name__].get(cls.time_field or "") is not datetime
    }
    assert wrong == {}
    started = c.ConversationStarted(
        conversation_id="x", config_id="y", config_version=1, channel="sms", user_id="u", started_at=T0
    )
    assert started.occurred_at() == T0
