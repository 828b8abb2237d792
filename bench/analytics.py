"""``just bench-analytics``: the ClickHouse projection's throughput and the KPI query latency.

``python -m bench.analytics [--quick]`` runs the benchmark; ``python -m bench.analytics seed N``
(``just seed-history N``) writes a synthetic history of about N events to the platform's stream.

The history is realistic conversation traffic written through ``EventStore.append``, one commit
per command as the API writes them (a start with its first message, replies with sentiment and
tool calls, escalations with their triggers, human agents, surveys with NPS and CSAT, closes), over
several channels and config versions, spread over the last ``days`` days. Personal fields
(messages, context) are sealed per customer as the API does.

The benchmark, on its own nats-server (default sync: the writes only feed the measure), chDB and
PostgreSQL:

1. **Projection throughput**: seed ``events``, then replay the stream into empty analytics tables
   with the runner (pull from NATS, decode, fold, insert, checkpoint), timed from start to the
   checkpoint reaching the stream's end; then each part alone: pulling the stream through the bulk
   feed and through ``streams.feed.Feed``, decoding with the fast path and through
   ``EventStore.decode``, inserting the encoded rows.
2. **KPI latency over 10,000,000 events**: the rows are generated inside ClickHouse
   (``INSERT ... SELECT FROM numbers()``) in the shape the projector writes (10 events per
   conversation; each conversation's facts row written twice, an intermediate and a final
   version, in consecutive inserts of a hundred, in the order the conversations started; not
   merged beforehand), then ``AnalyticsQueries.kpis`` (facts by channel and config version, top
   escalation reasons) runs for the whole period and for the last 30 days.
3. **Conversation rebuild**: the conversations read model rebuilt into PostgreSQL from the same
   history (``projections.rebuild``: the conversation projection's one definition, ``evolve``,
   folded in memory and written with COPY), timed from start to swap.
4. **Audit export and verify** (``streams.audit``, when present): the bench tenant's whole history
   exported as a hash-chained file, then verified against its head hash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import percentile, table, write_results
from domain import conversation as c
from domain.messages import Event
from infra import heap
from infra.logs import configure_logging
from infra.loop import run as run_loop
from infra.services import NatsServer, Postgres, service_tmpdir
from streams.store import EventMeta, EventStore
from tests.support import History

# Synthetic history -----------------------------------------------------------------------------

URGENCIES: list[c.Urgency] = ["medium", "high", "urgent"]

CHANNELS = [("webchat", "chatbot", 45), ("whatsapp", "chatbot", 20), ("sms", "chatbot", 10), ("email", "chatbot", 10)]
VOICE = ("phone", "voicebot", 15)
# (config id, version): how often it escalates, and how happy its customers are.
CONFIGS = {
    ("support-bot", 1): (0.22, -0.1),
    ("support-bot", 2): (0.15, 0.05),
    ("support-bot", 3): (0.08, 0.2),
    ("sales-bot", 1): (0.12, 0.0),
    ("sales-bot", 2): (0.10, 0.1),
    ("voice-bot", 1): (0.18, 0.0),
}
TRIGGERS = [
    ("user_frustrated", "sentiment -0.62 is below -0.50", 30),
    ("explicit_request", "the customer asked for a human", 25),
    ("urgent_keywords", "the customer said 'lawyer'", 10),
    ("negative_turns", "3 negative turns in a row", 15),
    ("repeated_tool_failure", "2 tool calls failed in a row", 8),
    ("billing_dispute", "the customer disputes a charge", 12),
]
TOOLS = ["fetch_order_status", "initiate_refund", "send_tracking_email", "create_support_ticket", "schedule_callback"]
INTENTS = ["order_status", "refund", "tracking", "support", "callback", "product_question"]
MESSAGES = [
    "Where is my order ORD-{n}?",
    "I want a refund for ORD-{n}",
    "Can you email me the tracking number? I'm at user{n}@example.com",
    "This is the third time I ask, call me on +1-555-{n:04d}",
    "Thanks, that helps",
]
SURVEY = [
    c.SurveyQuestion(question_id="nps", question="How likely are you to recommend us?", type="nps_scale"),
    c.SurveyQuestion(
        question_id="csat", question="How satisfied are you?", type="single_choice", options=["1", "2", "3", "4", "5"]
    ),
]

Commit = tuple[list[Event], EventMeta]
EVENTS_PER_CONVERSATION = 10.4  # what ``conversation_history`` averages
BATCH = 50_000  # commits per batch: the runner's default
FACT_BATCHES = 100  # inserts the generated facts rows arrive in


def conversation_history(rng: random.Random, k: int, start: datetime) -> tuple[str, list[Commit]]:
    """One conversation's commits, oldest first (deterministic for a given ``rng`` state)."""
    cid = f"c{k:08d}{rng.getrandbits(32):08x}"
    user = f"u-{rng.randrange(200_000)}"
    if rng.random() < VOICE[2] / 100:
        channel, product, config = VOICE[0], VOICE[1], ("voice-bot", 1)
    else:
        channel, product, _ = rng.choices(CHANNELS, weights=[w for *_, w in CHANNELS])[0]
        config = rng.choice([key for key in CONFIGS if key[0] != "voice-bot"])
    escalation_rate, mood = CONFIGS[config]
    t = start
    correlation = uuid.UUID(int=rng.getrandbits(128)).hex
    commits: list[Commit] = []

    def commit(command: str, actor: str, *events: Event) -> None:
        commits.append((list(events), EventMeta(uuid.UUID(int=rng.getrandbits(128)).hex, command, actor, correlation)))

    def tick(low: float, high: float) -> datetime:
        nonlocal t
        t += timedelta(seconds=rng.uniform(low, high))
        return t

    def say() -> str:
        return rng.choice(MESSAGES).format(n=rng.randrange(10_000))

    message = 0
    started = c.ConversationStarted(
        conversation_id=cid,
        config_id=config[0],
        config_version=config[1],
        channel=channel,
        user_id=user,
        product_type=product,
        context={"customer_tier": rng.choice(["free", "pro", "enterprise"]), "email": f"{user}@example.com"},
        started_at=t,
    )
    first = c.UserMessageReceived(message_id=f"{cid}-0", user_id=user, content=say(), received_at=t)
    commit("StartConversation", user, started, first)
    turns = rng.choices(range(1, 9), weights=[10, 20, 22, 18, 12, 8, 6, 4])[0]
    sentiment = mood + rng.uniform(-0.4, 0.5)
    for turn in range(turns):
        sentiment = max(-1.0, min(1.0, sentiment + rng.uniform(-0.3, 0.25)))
        calls = []
        if rng.random() < 0.35:
            failed = rng.random() < 0.08
            calls.append(
                c.ToolCall(
                    tool=rng.choice(TOOLS),
                    input={"order_id": f"ORD-{rng.randrange(10_000)}"},
                    output=None if failed else {"status": "shipped"},
                    execution_time_ms=rng.randrange(20, 900),
                    error="timeout" if failed else None,
                )
            )
        fallbacks = []
        if rng.random() < 0.02:
            fallbacks.append(c.ProviderFallback(from_provider="anthropic", to_provider="openai", reason="timeout"))
        offer = None
        if config[0] == "sales-bot" and rng.random() < 0.1:
            offer = c.CrossSellOffer(product="premium_support", suggestion="Add premium support?", confidence=0.7)
        reply = c.AgentReplied(
            message_id=f"{cid}-r{turn}",
            user_id=user,
            content="Let me check that for you.",
            intent=rng.choice(INTENTS),
            confidence=round(rng.uniform(0.5, 0.99), 2),
            tool_calls=calls,
            sentiment=round(sentiment, 3),
            replied_at=tick(1, 6),
            provider="offline",
            fallbacks=fallbacks,
            cross_sell=offer,
        )
        commit("RecordAgentReply", "agent-runtime", reply)
        if turn < turns - 1:
            message += 1
            msg = c.UserMessageReceived(
                message_id=f"{cid}-{message}", user_id=user, content=say(), received_at=tick(8, 90)
            )
            commit("ReceiveUserMessage", user, msg)
    closed = False
    if rng.random() < escalation_rate:
        trigger, reason, _ = rng.choices(TRIGGERS, weights=[w for *_, w in TRIGGERS])[0]
        eid = uuid.UUID(int=rng.getrandbits(128)).hex
        urgency = rng.choice(URGENCIES)
        commit(
            "RequestEscalation",
            "agent-runtime",
            c.EscalationRequested(
                escalation_id=eid, trigger=trigger, reason=reason, urgency=urgency, requested_at=tick(1, 3)
            ),
        )
        if rng.random() < 0.8:
            agent = f"agent-{rng.randrange(40)}"
            commit(
                "AssignEscalation",
                "agent-pool",
                c.EscalationAssigned(escalation_id=eid, agent_id=agent, assigned_at=tick(5, 120)),
            )
            for n in range(rng.randrange(1, 4)):
                human = c.AgentReplied(
                    message_id=f"{cid}-h{n}",
                    user_id=user,
                    content="Hi, I'm taking over.",
                    author=agent,
                    replied_at=tick(20, 240),
                )
                commit("RecordAgentReply", agent, human)
            if rng.random() < 0.7:
                at = tick(30, 300)
                resolved = c.EscalationResolved(
                    escalation_id=eid, resolution="closed", resolved_by=agent, resolved_at=at
                )
                commit(
                    "ResolveEscalation", agent, resolved, c.ConversationClosed(reason="resolved_by_agent", closed_at=at)
                )
                closed = True
            else:
                back = c.EscalationResolved(
                    escalation_id=eid, resolution="returned_to_ai", resolved_by=agent, resolved_at=tick(30, 300)
                )
                commit("ResolveEscalation", agent, back)
        else:
            unavailable = c.EscalationAgentUnavailable(
                escalation_id=eid, queue_position=rng.randrange(1, 9), at=tick(1, 5)
            )
            commit("MarkAgentUnavailable", "agent-pool", unavailable)
            if rng.random() < 0.5:
                commit("CloseConversation", user, c.ConversationClosed(reason="abandoned", closed_at=tick(60, 900)))
                closed = True
    if not closed and rng.random() < 0.45:
        sid = uuid.UUID(int=rng.getrandbits(128)).hex
        commit("SendSurvey", "agent-runtime", c.SurveySent(survey_id=sid, questions=SURVEY, sent_at=tick(1, 5)))
        if rng.random() < 0.7:
            happy = sentiment + rng.uniform(-0.3, 0.3)
            nps = max(0, min(10, round(7 + happy * 4 + rng.uniform(-2, 2))))
            csat = max(1, min(5, round(3.6 + happy * 1.8 + rng.uniform(-1, 1))))
            answers = [
                c.SurveyAnswer(question_id="nps", answer=nps),
                c.SurveyAnswer(question_id="csat", answer=str(csat)),
            ]
            answered = c.SurveyAnswered(
                survey_id=sid,
                responses=answers,
                nps_score=nps,
                nps_category=c.nps_category(nps),
                answered_at=tick(5, 60),
            )
            commit("AnswerSurvey", user, answered)
    if not closed and rng.random() < 0.9:
        reason = rng.choices(["completed", "abandoned", "timeout"], weights=[85, 10, 5])[0]
        commit("CloseConversation", user, c.ConversationClosed(reason=reason, closed_at=tick(5, 120)))
    return cid, commits


async def write_history(
    store: EventStore,
    events: int,
    *,
    tenant: str = "demo",
    days: float = 90.0,
    seed: int = 7,
    concurrency: int = 256,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Append conversations until about ``events`` events are written (the last may stop early).

    Conversations start one after another over the last ``days`` days, as a live stream would
    have recorded them (a conversation's later turns interleave with the next ones' starts). The
    commits go through the suite's ``History`` (each where its conversation stands), without
    folding states: the generator decides them.
    """
    now = datetime.now(UTC)
    step = days * 86400 / max(events / EVENTS_PER_CONVERSATION, 1)  # seconds between starts
    first = now - timedelta(days=days)
    history = History(store, tenant=tenant, deciders=())
    budget = {"events": events, "conversations": 0}
    counter = iter(range(10**12))

    async def worker() -> None:
        while budget["events"] > 0:
            k = next(counter)
            rng = random.Random(seed * 1_000_003 + k)
            start = first + timedelta(seconds=step * (k + rng.random()))
            cid, commits = conversation_history(rng, k, start)
            stream = history.stream(c.AGGREGATE_TYPE, cid)
            budget["conversations"] += 1
            for evs, meta in commits:
                if budget["events"] <= 0:
                    break
                budget["events"] -= len(evs)
                await history.add(stream, *evs, meta=meta)
                if progress and history.commits % 50_000 == 0:
                    progress(history.events)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"events": history.events, "commits": history.commits, "conversations": budget["conversations"]}


# Benchmark -------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def projection(nats: NatsServer, pg_url: str, root: Path, events: int) -> tuple[dict[str, Any], Any]:
    from projections.analytics.projection import AnalyticsProjection, analytics_runner
    from projections.analytics.sink import AnalyticsSink
    from projections.settings import AnalyticsSettings
    from read_models.analytics_schema import EventRow
    from streams.bulk import BulkFeed, Delivered
    from streams.factory import StoreSettings, open_store
    from streams.feed import Feed

    out: dict[str, Any] = {}
    print(f"writing a history of {events:,} events through EventStore.append ...", flush=True)
    t = time.perf_counter()
    # By a process of its own, as the platform writes it: the replay then runs in a process that
    # starts from the stream, as the projector's does (``python -m projections.analytics``), not in
    # one whose heap holds what writing a million events left behind (it took up to twice the CPU
    # an event there, varying from run to run).
    summary = root / "history.json"
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.analytics", "write", nats.url, str(root / "data"), str(events), str(summary)
    )
    if await writer.wait() != 0:
        raise RuntimeError(f"writing the history failed (exit {writer.returncode})")
    written = json.loads(summary.read_text())
    out["history"] = {**written, "seconds": round(time.perf_counter() - t, 1)}
    print(f"  {written} in {out['history']['seconds']} s", flush=True)
    opened = await open_store(
        StoreSettings(nats_url=nats.url, data_dir=root / "data", max_in_flight=4), name="bench-analytics"
    )
    try:
        last = await opened.log.last_seq()

        sink = AnalyticsSink.open(AnalyticsSettings(data_dir=root))
        runner = analytics_runner(opened.store, sink, batch=BATCH, idle_wait=0.1)
        heap.settle()  # as the projector process does once it is built (python -m projections.analytics run)
        nats_pid = int((nats.data_dir / "nats.pid").read_text()) if (nats.data_dir / "nats.pid").exists() else None
        cpu0, nats0 = time.process_time(), _cpu_seconds(nats_pid) if nats_pid else 0.0
        main0 = time.thread_time()
        t = time.perf_counter()
        await runner.catch_up()
        seconds = time.perf_counter() - t - runner.idle_wait  # the last, empty pull
        assert runner.checkpoint == last, (runner.checkpoint, last)
        cpu, nats_cpu = time.process_time() - cpu0, (_cpu_seconds(nats_pid) - nats0) if nats_pid else 0.0
        main_cpu = time.thread_time() - main0
        assert isinstance(runner.projector, AnalyticsProjection)
        tm, pt = runner.timings, runner.projector.timings  # the runner's and the projection's
        counts = sink.counts()
        out["replay"] = {
            "events": tm.events,
            "commits": tm.commits,
            "seconds": round(seconds, 2),
            "events_per_s": round(tm.events / seconds),
            "commits_per_s": round(tm.commits / seconds),
            "batch_commits": runner.batch,
            "cpu_cores_projector": round(cpu / seconds, 2),
            "cpu_cores_nats": round(nats_cpu / seconds, 2),
            "cpu_us_per_event_projector": round(cpu / tm.events * 1e6, 1),
            "cpu_us_per_event_nats": round(nats_cpu / tm.events * 1e6, 1),
            "cpu_us_per_event_main_thread": round(main_cpu / tm.events * 1e6, 1),
            "cpu_us_per_event_insert_thread": round(pt.write_cpu / tm.events * 1e6, 1),
            "cpu_us_per_event_engine_threads": round((cpu - main_cpu - pt.write_cpu) / tm.events * 1e6, 1),
            "load_average_after": os.getloadavg()[0],
            "loop_seconds": {
                **{k: round(getattr(tm, k), 2) for k in ("fetch", "fetch_cpu")},
                **{k: round(getattr(pt, k), 2) for k in ("decode", "fold", "encode")},
                **{k: round(getattr(tm, k), 2) for k in ("wait_write", "ack")},
            },
            "insert_thread_seconds": round(pt.write, 2),
            "rows": counts,
        }
        print(f"  replay: {out['replay']}", flush=True)
        await runner.shutdown()
        assert counts["events"] == tm.events, counts

        # Each part alone.
        feed = BulkFeed(opened.log, "bench_fetch", batch=BATCH, idle_wait=0.2)
        await feed.delete()
        sample: list[Delivered] = []
        n, t = 0, time.perf_counter()
        while batch := (await feed.fetch()).messages:
            n += len(batch)
            if len(sample) < 100_000:
                sample += batch[: 100_000 - len(sample)]
        fetch_s = time.perf_counter() - t - feed.idle_wait
        await feed.close()
        await feed.delete()
        old = Feed(opened.log, "bench_feed", batch=5000, idle_wait=0.2)
        await old.delete()
        m, t = 0, time.perf_counter()
        while m < min(100_000, last) and (got := (await old.fetch()).messages):
            m += len(got)
        feed_s = time.perf_counter() - t
        await old.close()
        await old.delete()
        rates = {}
        for name, fast in (("fast", True), ("store", False)):
            decode_all = opened.store.redacted(fast=fast).decode_all  # as the projection calls it
            t = time.perf_counter()
            k = len(decode_all(sample, EventRow, {})[0])
            rates[name] = k / (time.perf_counter() - t)
        out["parts"] = {
            "pull_bulk_feed_msgs_per_s": round(n / fetch_s),
            "pull_streams_feed_msgs_per_s": round(m / feed_s),
            "decode_fast_events_per_s": round(rates["fast"]),
            "decode_store_events_per_s": round(rates["store"]),
            "insert_events_per_s": round(tm.events / pt.write) if pt.write else None,
            "events_per_commit": round(tm.events / tm.commits, 2),
        }
        print(f"  parts: {out['parts']}", flush=True)
        print("rebuilding the conversations read model from the same history ...", flush=True)
        out["conversation_rebuild"] = await conversation_rebuild(opened.store, pg_url)
        print(f"  conversation rebuild: {out['conversation_rebuild']}", flush=True)
        print("exporting and verifying the audit file ...", flush=True)
        out["audit"] = await audit_rate(opened.store, "bench", root / "audit.jsonl")
        print(f"  audit: {out['audit']}", flush=True)
        return out, sink
    finally:
        await opened.close()


async def conversation_rebuild(store: EventStore, pg_url: str) -> dict[str, Any]:
    """The conversations read model rebuilt from the stream into an empty database: its rate, and
    whether the bulk path (fold with ``evolve``, COPY) reproduced the history or fell back to the
    per-event statements."""
    from psycopg_pool import AsyncConnectionPool
    from structlog.testing import capture_logs

    from projections.rebuild import rebuild
    from projections.registry import projector

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(pg_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        with capture_logs() as logs:
            report = await rebuild(projector("conversations"), store, pool)
    finally:
        await pool.close()
    fell_back = any("event by event" in str(entry.get("event")) for entry in logs)
    return {
        "events": report.events,
        "commits": report.commits,
        "seconds": report.seconds,
        "events_per_s": round(report.events_per_second),
        "dead_letters": report.dead_letters,
        "bulk": not fell_back,
        "load_average_after": os.getloadavg()[0],
    }


KPI_PERIODS = {"all 180 days": 180, "last 30 days": 30}


def kpi_latency(sink: Any, events: int, runs: int) -> dict[str, Any]:
    """Generate ``events`` events' worth of rows in ClickHouse, then time the KPI queries."""
    from projections.analytics.sink import AnalyticsSink
    from read_models.analytics import AnalyticsQueries
    from read_models.analytics_schema import ConversationFacts, columns

    db = "kpi_bench"
    client = sink.client

    big = AnalyticsSink(client, db)
    big.drop()
    big.ensure_schema()
    conversations = events // 10
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=180)
    step = 180 * 86400 / conversations  # seconds between conversation starts
    base = f"toDateTime64('{start:%Y-%m-%d %H:%M:%S}', 3, 'UTC')"
    conv = "intDiv(number, 10)"
    print(f"generating {events:,} events, {conversations:,} conversations in ClickHouse ...", flush=True)
    t = time.perf_counter()
    types = (
        "['ConversationStarted','UserMessageReceived','AgentReplied','UserMessageReceived','AgentReplied',"
        "'UserMessageReceived','AgentReplied','SurveySent','SurveyAnswered','ConversationClosed']"
    )
    client.command(
        f"""INSERT INTO {db}.events
        SELECT 'bench', 'conversation', hex(cityHash64({conv})), number % 10 + 1, number + 1,
            {types}[number % 10 + 1] AS event_type,
            {base} + toIntervalMillisecond(toUInt64({conv} * {step * 1000:.0f} + (number % 10) * 30000)),
            now64(3), 'Command', hex(cityHash64(number, 1)), concat('u-', toString({conv} % 200000)),
            hex(cityHash64({conv}, 2)),
            concat('{{"message_id":"m-', toString(number), '","user_id":"u-', toString({conv} % 200000),
                   '","content":null,"sentiment":', toString(round((number % 200) / 100 - 1, 2)),
                   ',"tool_calls":[],"at":"2025-01-01T00:00:00Z"}}')
        FROM numbers({events})""",
        settings={"max_insert_threads": 2},
    )
    facts_cols = ", ".join(columns(ConversationFacts))

    def facts(version: int, final: bool, first: int, count: int) -> str:
        return f"""SELECT 'bench', hex(cityHash64(number)), {version}, number * 10 + {version},
              {base} + toIntervalMillisecond(toUInt64(number * {step * 1000:.0f})) AS s,
              s + toIntervalSecond({version} * 30),
              if({int(final)} AND number % 10 < 9, s + toIntervalSecond(300), NULL),
              ['support-bot','sales-bot','voice-bot'][number % 3 + 1], number % 3 + 1,
              ['webchat','whatsapp','sms','email','phone'][number % 5 + 1], if(number % 5 = 4, 'voicebot', 'chatbot'),
              if({int(final)} AND number % 10 < 9, 'closed', if(number % 7 = 0, 'escalated', 'active')),
              if({int(final)} AND number % 10 < 9, 'completed', ''),
              if({int(final)}, multiIf(number % 10 < 8, 'resolved', number % 10 < 9, 'unresolved', 'open'), 'open'),
              if({int(final)} AND number % 10 < 8, 'ai', ''),
              {version // 2}, {version // 2}, 0, number % 7 = 0, number % 7 = 0,
              if(number % 7 = 0, ['user_frustrated','explicit_request','urgent_keywords'][number % 3 + 1], ''), '',
              number % 14 = 0, number % 14 = 7, (number % 100) / 100.0, {version // 2}, -0.2, 0.1,
              ['fetch_order_status'], 1, 0, 0, 0, number % 3 = 0, {int(final)} AND number % 3 = 0,
              if({int(final)} AND number % 3 = 0, number % 11, NULL),
              if({int(final)} AND number % 3 = 0,
                 multiIf(number % 11 >= 9, 'promoter', number % 11 >= 7, 'passive', 'detractor'), ''),
              if({int(final)} AND number % 3 = 0, number % 5 + 1, NULL),
              ['csat']
            FROM numbers({first}, {count})"""

    # As the projector writes them: batch after batch, in the order conversations started; each
    # batch holds the final rows of the conversations of one window and the first rows of the next.
    chunk = max(conversations // FACT_BATCHES, 1)
    for first in range(0, conversations, chunk):
        following = min(chunk, conversations - first - chunk)
        rows = facts(10, True, first, min(chunk, conversations - first))
        if following > 0:
            rows += " UNION ALL " + facts(5, False, first + chunk, following)
        client.command(f"INSERT INTO {db}.conversation_facts ({facts_cols}) {rows}")
    client.command(
        f"INSERT INTO {db}.conversation_facts ({facts_cols}) {facts(5, False, 0, min(chunk, conversations))}"
    )
    client.command(
        f"""INSERT INTO {db}.escalations
        SELECT 'bench', hex(cityHash64(number * 7)), hex(cityHash64(number, 3)), number * 70 + 5, 5,
          {base} + toIntervalMillisecond(toUInt64(number * 7 * {step * 1000:.0f} + 100000)),
          ['user_frustrated','explicit_request','urgent_keywords','negative_turns','billing_dispute'][number % 5 + 1],
          'reason', 'high', ['support-bot','sales-bot','voice-bot'][number % 3 + 1], 1, 'webchat', 'chatbot'
        FROM numbers({conversations // 7})"""
    )
    generated = time.perf_counter() - t
    parts = client.query(
        f"SELECT table, count() FROM system.parts WHERE active AND database = '{db}' GROUP BY table"
    ).result_rows
    print(f"  generated in {generated:.1f} s; active parts {dict(parts)}", flush=True)
    queries = AnalyticsQueries(client, db)
    now = datetime.now(UTC)
    out: dict[str, Any] = {"events": events, "conversations": conversations, "generate_seconds": round(generated, 1)}
    for label, days in KPI_PERIODS.items():
        period = (now - timedelta(days=days + 1), now)
        queries.kpis("bench", *period)  # warm
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            report = queries.kpis("bench", *period)
            times.append((time.perf_counter() - t) * 1000)
        out[label] = {
            "conversations": report.totals.conversations,
            "p50_ms": round(percentile(times, 50), 1),
            "p95_ms": round(percentile(times, 95), 1),
            "p99_ms": round(percentile(times, 99), 1),
            "runs": runs,
        }
        print(f"  KPIs, {label}: {out[label]}", flush=True)
    big.drop()
    return out


async def audit_rate(store: EventStore, tenant: str, path: Path) -> dict[str, Any] | None:
    """Export the tenant's events as a hash-chained file and verify it (``streams.audit``), if present."""
    try:
        from streams import audit
    except ImportError:
        return None
    exported = await audit.export(store, tenant, path)
    verified = await asyncio.to_thread(audit.verify, path, expect_head=exported.head)
    assert verified.ok, verified
    return {
        "events": exported.entries,
        "export_seconds": round(exported.seconds, 2),
        "export_events_per_s": round(exported.rate),
        "verify_seconds": round(verified.seconds, 2),
        "verify_events_per_s": round(verified.rate),
        "file_mib": round(await asyncio.to_thread(os.path.getsize, path) / 2**20, 1),
    }


def bench(quick: bool) -> None:
    events = 50_000 if quick else 1_000_000
    kpi_events = 1_000_000 if quick else 10_000_000
    runs = 10 if quick else 40
    root = service_tmpdir("parley-bench-analytics-")
    nats = NatsServer(root / "nats", sync_always=False)
    pg = Postgres(root / "pg")
    results: dict[str, Any] = {"quick": quick, "load_average_before": os.getloadavg()[0]}
    try:
        nats.start()
        pg_url = pg.start()
        out, sink = run_loop(projection(nats, pg_url, root, events))  # as the projector's process runs
        results.update(out)
        try:
            results["kpi"] = kpi_latency(sink, kpi_events, runs)
        finally:
            sink.close()
    finally:
        pg.stop()
        nats.stop()
        shutil.rmtree(root, ignore_errors=True)
    replay, parts, kpi = results["replay"], results["parts"], results["kpi"]
    rebuilt = results["conversation_rebuild"]
    rows: list[list[Any]] = [
        [
            "history written (EventStore.append)",
            f"{results['history']['events']:,} events, {results['history']['commits']:,} commits",
            f"{results['history']['seconds']} s",
            "",
        ],
        [
            "projection replay into chDB",
            f"{replay['events_per_s']:,} events/s ({replay['commits_per_s']:,} commits/s)",
            f"{replay['seconds']} s",
            "≥ 100,000 events/s",
        ],
        ["  pull, bulk feed alone", f"{parts['pull_bulk_feed_msgs_per_s']:,} commits/s", "", ""],
        ["  pull, streams.feed.Feed alone", f"{parts['pull_streams_feed_msgs_per_s']:,} commits/s", "", ""],
        ["  decode, fast path alone", f"{parts['decode_fast_events_per_s']:,} events/s", "", ""],
        ["  decode, EventStore.decode alone", f"{parts['decode_store_events_per_s']:,} events/s", "", ""],
        ["  insert (worker thread)", f"{parts['insert_events_per_s']:,} events/s", "", ""],
        [
            "  CPU per event: main thread, insert thread, engine",
            f"{replay['cpu_us_per_event_main_thread']} / {replay['cpu_us_per_event_insert_thread']}"
            f" / {replay['cpu_us_per_event_engine_threads']} µs",
            "",
            "",
        ],
        [
            "  CPU during replay",
            f"projector {replay['cpu_cores_projector']} cores, nats-server {replay['cpu_cores_nats']}",
            f"{replay['cpu_us_per_event_projector']} + {replay['cpu_us_per_event_nats']} µs/event",
            "",
        ],
    ]
    rows.append(
        [
            "conversation read model rebuilt (PostgreSQL)",
            f"{rebuilt['events_per_s']:,} events/s" + ("" if rebuilt["bulk"] else " (per event: bulk refused)"),
            f"{rebuilt['events']:,} events, {rebuilt['seconds']} s",
            "≥ 20,000 events/s",
        ]
    )
    for label in KPI_PERIODS:
        k = kpi[label]
        rows.append(
            [
                f"KPIs over {kpi['events']:,} events, {label}",
                f"p50 {k['p50_ms']} ms, p95 {k['p95_ms']} ms",
                f"{k['conversations']:,} conversations",
                "p95 < 200 ms",
            ]
        )
    audit = results["audit"]
    if audit is None:
        rows.append(["audit export / verify", "streams.audit not present: skipped", "", ""])
    else:
        size = f"{audit['events']:,} events, {audit['file_mib']} MiB"
        rows.append(["audit export (streams.audit)", f"{audit['export_events_per_s']:,} events/s", size, ""])
        rows.append(["audit verify", f"{audit['verify_events_per_s']:,} events/s", f"{audit['verify_seconds']} s", ""])
    print()
    print(table(["measure", "figure", "", "target"], rows))
    path = write_results("analytics-quick" if quick else "analytics", results)
    print(f"\nresults: {path}")


async def write(nats_url: str, data_dir: Path, events: int, summary: Path) -> None:
    """The benchmark's history (``write_history``, tenant bench, 180 days), its summary to ``summary``."""
    from streams.factory import StoreSettings, open_store

    opened = await open_store(StoreSettings(nats_url=nats_url, data_dir=data_dir, max_in_flight=4), name="bench-write")
    try:
        written = await write_history(
            opened.store, events, tenant="bench", days=180, progress=lambda n: print(f"  {n:,} events", flush=True)
        )
    finally:
        await opened.close()
    await asyncio.to_thread(summary.write_text, json.dumps(written))


async def seed(events: int, tenant: str, days: float) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from streams.factory import StoreSettings, open_store

    opened = await open_store(StoreSettings.from_env(max_in_flight=4), name="parley-seed-history")
    try:
        t = time.perf_counter()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task(f"writing events (tenant {tenant})", total=events)
            written = await write_history(
                opened.store,
                events,
                tenant=tenant,
                days=days,
                seed=random.randrange(1 << 30),
                progress=lambda n: bar.update(task, completed=n),
            )
        print(
            f"wrote {written['events']:,} events in {written['commits']:,} commits "
            f"({written['conversations']:,} conversations, tenant {tenant}) in {time.perf_counter() - t:.1f} s"
        )
    finally:
        await opened.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.analytics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small run, to check the benchmark itself")
    commands = parser.add_subparsers(dest="command")
    history = commands.add_parser("seed", help="write a synthetic history to the platform's stream (NATS_URL)")
    history.add_argument("events", type=int)
    history.add_argument("--tenant", default="demo")
    history.add_argument("--days", type=float, default=90.0, help="spread the conversations over this many days")
    writing = commands.add_parser("write", help="(used by the benchmark) write its history, a summary to a file")
    writing.add_argument("nats_url")
    writing.add_argument("data_dir", type=Path)
    writing.add_argument("events", type=int)
    writing.add_argument("summary", type=Path)
    args = parser.parse_args()
    configure_logging(level="WARNING", json=False)
    if args.command == "write":
        run_loop(write(args.nats_url, args.data_dir, args.events, args.summary))
    elif args.command == "seed":
        asyncio.run(seed(args.events, args.tenant, args.days))
    else:
        bench(args.quick)


if __name__ == "__main__":
    main()
