"""The invariants ``./parley chaos`` checks once the faults stop and everything has caught up.

1. Every command the client saw acknowledged is in the stream exactly once (its commit, by the
   command id its ``Idempotency-Key`` gives, on the conversation the API named), and what the API
   said it created (conversation, message, escalation) is there exactly once; nothing is in the
   stream twice for one key.
2. Every PostgreSQL read model equals a fresh rebuild from the stream (``projections.rebuild``
   into a scratch database), table by table, row by row.
3. Every customer message the AI owned (the conversation active once it was received) has exactly
   one answer from the AI (``<message id>-reply``, command ``reply-<message id>``); a message
   received while the conversation was escalated has none.
4. The analytics tables hold the stream's events, per type, each once; a conversation's facts
   once each; the checkpoint at the stream's end.
5. No dead letters, in any projector's schema or in ClickHouse.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.js.errors
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from bench.chaos_load import Command
from domain import conversation as c
from infra.services import REPO_ROOT
from projections import registry
from projections.rebuild import rebuild
from streams.errors import EventDecodeError
from streams.factory import OpenStore
from streams.store import EventStore, RecordedEvent
from streams.work import work_stream_name

# Tables every projector's schema has that two projections of the same events need not agree on.
NOT_COMPARED = {"checkpoint", "schema_migrations"}
DEAD_LETTER_COLUMNS = ("seq", "subject", "error")  # not recorded_at: when it was written


@dataclass
class StreamView:
    """The whole stream, read once."""

    last_seq: int = 0
    commits: int = 0
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    # (aggregate id, command id) -> commits; command id -> commits (any aggregate)
    by_aggregate_command: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_command: Counter[str] = field(default_factory=Counter)
    conversations: dict[str, list[RecordedEvent]] = field(default_factory=lambda: defaultdict(list))
    undecodable: list[str] = field(default_factory=list)


async def read_stream(store: EventStore) -> StreamView:
    view = StreamView(last_seq=await store.last_seq())
    after = 0
    while after < view.last_seq:
        page = await store.read_all(after_seq=after, limit=1000)
        if not page:
            break
        for raw in page:
            after = raw.seq
            if raw.seq > view.last_seq:
                break
            try:
                recorded = store.decode(raw)
            except EventDecodeError as e:
                view.undecodable.append(f"{e.seq} {e.subject}: {e.reason}")
                continue
            view.commits += 1
            if not recorded:
                continue
            stream, meta = recorded[0].stream, recorded[0].meta
            if meta.command_id:
                view.by_aggregate_command[(stream.aggregate_id, meta.command_id)] += 1
                view.by_command[meta.command_id] += 1
            for r in recorded:
                view.events += 1
                view.by_type[type(r.event).__name__] += 1
            if stream.aggregate_type == c.AGGREGATE_TYPE:
                view.conversations[stream.aggregate_id].extend(recorded)
    return view


async def consumers(opened: OpenStore) -> dict[str, dict[str, int]]:
    """Every durable consumer of the event stream and the agent work stream: what it has not been
    given yet (``pending``) and what it was given but has not acknowledged (``unacknowledged``)."""
    out = {}
    for stream in (opened.settings.stream, work_stream_name(opened.settings.stream)):
        try:
            found = await opened.log.js.consumers_info(stream)
        except nats.js.errors.NotFoundError:
            continue
        for info in found:
            out[f"{stream}/{info.name}"] = {
                "pending": int(info.num_pending or 0),
                "unacknowledged": int(info.num_ack_pending or 0),
            }
    return out


def stuck(found: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Consumers with work left once everything has caught up: a projector, the outbox or an agent
    partition stuck on a commit it cannot get past."""
    return {name: n for name, n in found.items() if n["pending"] or n["unacknowledged"]}


# 1. Acknowledged commands ----------------------------------------------------------------------


def check_commands(commands: list[Command], view: StreamView) -> dict[str, Any]:
    lost: list[str] = []
    doubled: list[str] = []
    wrong_ids: list[str] = []
    unacked_recorded = 0
    for cmd in commands:
        command_id = f"idem-{cmd.key}"
        on_aggregate = view.by_aggregate_command[(cmd.conversation_id or "", command_id)]
        anywhere = view.by_command[command_id]
        if anywhere > max(on_aggregate, 1):  # twice on one aggregate is counted below, with every command
            doubled.append(f"{cmd.kind} {cmd.key}: {anywhere} commits on several aggregates")
        if not cmd.acked:
            unacked_recorded += anywhere > 0
            continue
        if on_aggregate == 0:
            lost.append(f"{cmd.kind} {cmd.key} on {cmd.conversation_id}: acknowledged {cmd.status}, not in the stream")
            continue
        problem = _named_ids(cmd, view)
        if problem:
            wrong_ids.append(problem)
    # Nothing twice in the stream, whoever sent it: a command id, a conversation's start, a message.
    doubled += [f"command {cid} on {agg}: {n} commits" for (agg, cid), n in view.by_aggregate_command.items() if n > 1]
    for cid, events in view.conversations.items():
        starts = sum(isinstance(r.event, c.ConversationStarted) for r in events)
        messages = Counter(r.event.message_id for r in events if isinstance(r.event, c.UserMessageReceived))
        if starts > 1:
            doubled.append(f"conversation {cid} started {starts} times")
        doubled += [f"message {m} in {cid} received {n} times" for m, n in messages.items() if n > 1]
    return {
        "lost": lost,
        "doubled": doubled,
        "wrong_ids": wrong_ids,
        "unacknowledged_but_recorded": unacked_recorded,
    }


def _named_ids(cmd: Command, view: StreamView) -> str | None:
    """What the API's answer named is in the stream, once, where it said."""
    ids = cmd.ids
    events = view.conversations.get(cmd.conversation_id or "", [])
    match cmd.kind:
        case "start":
            if ids.get("conversation_id") != cmd.conversation_id or not any(
                isinstance(r.event, c.ConversationStarted) for r in events
            ):
                return f"start {cmd.key}: answered conversation {ids.get('conversation_id')}, not started"
        case "message":
            found = [
                r
                for r in events
                if isinstance(r.event, c.UserMessageReceived) and r.event.message_id == ids.get("message_id")
            ]
            if len(found) != 1:
                return f"message {cmd.key}: answered message {ids.get('message_id')}, {len(found)} in the stream"
        case "escalate":
            found = [
                r
                for r in events
                if isinstance(r.event, c.EscalationRequested) and r.event.escalation_id == ids.get("escalation_id")
            ]
            if len(found) != 1:
                return f"escalate {cmd.key}: answered {ids.get('escalation_id')}, {len(found)} in the stream"
        case "close":
            if not any(isinstance(r.event, c.ConversationClosed) for r in events):
                return f"close {cmd.key}: acknowledged, the conversation {cmd.conversation_id} is not closed"
    return None


# 3. One answer per message the AI owns ---------------------------------------------------------


def check_answers(view: StreamView) -> dict[str, Any]:
    owned = answered_while_escalated = closed_first = 0
    unanswered: list[str] = []
    doubled: list[str] = []
    for cid, events in view.conversations.items():
        closed_at = next((r.version for r in events if isinstance(r.event, c.ConversationClosed)), None)
        replies = Counter(
            r.event.message_id for r in events if isinstance(r.event, c.AgentReplied) and not r.event.by_human
        )
        state = c.initial()
        for r in events:
            state = c.evolve(state, r.event)
            if not isinstance(r.event, c.UserMessageReceived):
                continue
            n = replies[f"{r.event.message_id}-reply"]
            if state.status == "active":
                owned += 1
                if n == 0 and closed_at is not None and closed_at > r.version:
                    closed_first += 1  # closed before the answer: nobody can answer it now
                elif n == 0:
                    unanswered.append(f"{cid}/{r.event.message_id} (seq {r.seq}, conversation now {state.status})")
                elif n > 1:
                    doubled.append(f"{cid}/{r.event.message_id}: {n} answers")
            elif n:
                answered_while_escalated += 1
    return {
        "owned_by_ai": owned,
        "closed_before_the_answer": closed_first,
        "unanswered": unanswered,
        "doubled": doubled,
        "answered_while_not_the_ais": answered_while_escalated,
    }


# 2 and 5. Read models and dead letters ----------------------------------------------------------


async def compare_read_models(pg_url: str, scratch_url: str, store: EventStore) -> dict[str, Any]:
    """Each projector's schema against a rebuild from the first event into a scratch database."""
    differences: dict[str, int] = {}
    samples: dict[str, list[str]] = {}
    dead: dict[str, int] = {}
    tables = 0
    live: AsyncConnectionPool[Any] = AsyncConnectionPool(pg_url, min_size=1, max_size=4, open=False)
    fresh: AsyncConnectionPool[Any] = AsyncConnectionPool(scratch_url, min_size=1, max_size=4, open=False)
    await live.open(wait=True, timeout=60)
    await fresh.open(wait=True, timeout=60)
    try:
        for projector in registry.projectors():
            report = await rebuild(projector, store, fresh)
            schema = projector.read_model.schema
            async with live.connection() as a, fresh.connection() as b:
                dead[schema] = await _count(a, schema, "dead_letters")
                dead[f"{schema} (rebuilt)"] = report.dead_letters
                for table in await _tables(a, schema):
                    if table in NOT_COMPARED:
                        continue
                    tables += 1
                    columns = DEAD_LETTER_COLUMNS if table == "dead_letters" else None
                    ours, theirs = await _rows(a, schema, table, columns), await _rows(b, schema, table, columns)
                    if ours != theirs:
                        extra, missing = ours - theirs, theirs - ours
                        key = f"{schema}.{table}"
                        differences[key] = sum(extra.values()) + sum(missing.values())
                        samples[key] = [f"live only: {r}" for r in list(extra)[:3]] + [
                            f"rebuild only: {r}" for r in list(missing)[:3]
                        ]
    finally:
        await live.close()
        await fresh.close()
    return {"tables_compared": tables, "differences": differences, "samples": samples, "dead_letters": dead}


async def _tables(conn: psycopg.AsyncConnection[Any], schema: str) -> list[str]:
    cur = await conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'"
        " ORDER BY 1",
        [schema],
    )
    return [name for (name,) in await cur.fetchall()]


async def _rows(
    conn: psycopg.AsyncConnection[Any], schema: str, table: str, columns: tuple[str, ...] | None
) -> Counter[str]:
    chosen = sql.SQL("*") if columns is None else sql.SQL(", ").join(map(sql.Identifier, columns))
    query = sql.SQL("SELECT {} FROM {}.{}").format(chosen, sql.Identifier(schema), sql.Identifier(table))
    cur = await conn.execute(query)
    return Counter(repr(row) for row in await cur.fetchall())


async def _count(conn: psycopg.AsyncConnection[Any], schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    row = await (await conn.execute(query)).fetchone()
    return int(row[0]) if row else 0


# 4. Analytics ---------------------------------------------------------------------------------


def analytics_tables(env: dict[str, str]) -> dict[str, Any]:
    """What ClickHouse holds (``bench.chaos_analytics``, a process of its own: chDB's one store)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.chaos_analytics"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"reading the analytics tables failed:\n{done.stderr[-3000:]}")
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def check_analytics(found: dict[str, Any], view: StreamView) -> dict[str, Any]:
    rows, distinct = found["events"]
    by_type = {k: int(v) for k, v in found["by_type"].items()}
    expected = dict(view.by_type)
    type_differences = {
        name: {"stream": expected.get(name, 0), "analytics": by_type.get(name, 0)}
        for name in sorted(set(expected) | set(by_type))
        if expected.get(name, 0) != by_type.get(name, 0)
    }
    escalation_rows, escalation_ids = found["escalations"]
    conversations = view.by_type.get("ConversationStarted", 0)
    problems = []
    if found["checkpoint"] != view.last_seq:
        problems.append(f"checkpoint {found['checkpoint']}, the stream ends at {view.last_seq}")
    if rows != view.events:
        problems.append(f"{rows} event rows, the stream has {view.events} events")
    if distinct != rows:
        problems.append(f"{rows - distinct} event rows doubled")
    if type_differences:
        problems.append(f"counts per type differ: {type_differences}")
    if found["conversations"] != conversations:
        problems.append(f"{found['conversations']} conversations' facts, the stream started {conversations}")
    if escalation_rows != escalation_ids or escalation_rows != view.by_type.get("EscalationRequested", 0):
        problems.append(
            f"{escalation_rows} escalation rows ({escalation_ids} distinct) for "
            f"{view.by_type.get('EscalationRequested', 0)} requested"
        )
    return {
        "events": rows,
        "stream_events": view.events,
        "conversations": found["conversations"],
        "dead_letters": int(found["dead_letters"]),
        "rows_above_checkpoint": found["events_above_checkpoint"],
        "problems": problems,
    }


def to_json(value: Any) -> Any:
    return msgspec.to_builtins(value)
