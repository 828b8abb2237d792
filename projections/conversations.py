"""The conversations projector: conversation events -> ``read_models.conversations`` tables.

One SQL statement per event. Every statement after ``ConversationStarted`` first moves the
conversation row to the event's version, and only if the row is behind it (``version < %s``);
the rest of the statement (a message, an escalation, a survey) happens only when that update did.
So applying an event twice changes nothing, a late replay cannot undo a newer state, and the
statements need no reads in Python: a whole batch goes to PostgreSQL as one pipeline.

A rebuild replays the whole history with ``ConversationsReplay`` instead, which does what these
statements do in Python and writes the rows with COPY (see the end of this module).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
from msgspec.structs import astuple
from psycopg import AsyncConnection, AsyncCursor, sql

from domain.conversation import (
    AGGREGATE_TYPE,
    AgentReplied,
    ConversationClosed,
    ConversationStarted,
    EscalationAgentUnavailable,
    EscalationAssigned,
    EscalationRequested,
    EscalationResolved,
    SurveyAnswered,
    SurveySent,
    ToolCall,
    UserMessageReceived,
)
from domain.pii import extract_pii
from projections.projector import NotReplayable, Projector
from read_models.conversations import CONVERSATIONS
from streams.store import RecordedEvent
from streams.subjects import type_subjects

# Context keys of a started conversation that are personal data worth showing to an agent.
PII_CONTEXT_KEYS = ("customer_id",)


def _advance(sets: str = "") -> str:
    """Move the conversation to this event's version; yields the row (``c``) only if it moved."""
    return (
        "WITH c AS (UPDATE {s}.conversations SET " + sets + " updated_at = %(at)s, last_seq = %(seq)s,"
        " version = %(version)s"
        " WHERE tenant = %(tenant)s AND conversation_id = %(cid)s AND version < %(version)s"
        " RETURNING tenant, conversation_id) "
    )


STARTED = """
    INSERT INTO {s}.conversations (tenant, conversation_id, config_id, config_version, product_type, channel,
        user_id, status, pii_collected, created_at, updated_at, last_seq, version)
    VALUES (%(tenant)s, %(cid)s, %(config_id)s, %(config_version)s, %(product_type)s, %(channel)s,
        %(user_id)s, 'active', %(pii)s::jsonb, %(at)s, %(at)s, %(seq)s, %(version)s)
    ON CONFLICT (tenant, conversation_id) DO NOTHING
"""

USER_MESSAGE = (
    _advance("turn_count = turn_count + 1, pii_collected = pii_collected || %(pii)s::jsonb,")
    + """
    INSERT INTO {s}.messages (tenant, conversation_id, message_id, role, content, author, "timestamp", seq, version)
    SELECT tenant, conversation_id, %(message_id)s, 'user', %(content)s, %(author)s, %(at)s, %(seq)s, %(version)s
    FROM c
    ON CONFLICT (tenant, conversation_id, message_id) DO NOTHING
"""
)

AGENT_REPLY = (
    _advance("""
    sentiment_trajectory = CASE WHEN %(sentiment)s::float8 IS NULL THEN sentiment_trajectory
        ELSE sentiment_trajectory || to_jsonb(%(sentiment)s::float8) END,
    tools_executed = CASE WHEN %(tools)s::jsonb IS NULL THEN tools_executed ELSE (
        SELECT jsonb_object_agg(key, total) FROM (
            SELECT key, sum(value::integer) AS total FROM (
                SELECT key, value FROM jsonb_each_text(tools_executed)
                UNION ALL SELECT key, value FROM jsonb_each_text(%(tools)s::jsonb)
            ) AS counts GROUP BY key
        ) AS totals) END,
""")
    + """
    INSERT INTO {s}.messages (tenant, conversation_id, message_id, role, content, tool_calls, intent, confidence,
        sentiment, author, "timestamp", seq, version)
    SELECT tenant, conversation_id, %(message_id)s, 'assistant', %(content)s, %(tool_calls)s::jsonb, %(intent)s,
        %(confidence)s::float8, %(sentiment)s::float8, %(author)s, %(at)s, %(seq)s, %(version)s
    FROM c
    ON CONFLICT (tenant, conversation_id, message_id) DO NOTHING
"""
)

ESCALATION_REQUESTED = (
    _advance("status = 'escalated',")
    + """
    INSERT INTO {s}.escalations (tenant, escalation_id, conversation_id, trigger, reason, urgency, requested_by,
        status, requested_at)
    SELECT tenant, %(escalation_id)s, conversation_id, %(trigger)s, %(reason)s, %(urgency)s, %(requested_by)s,
        'pending', %(at)s
    FROM c
    ON CONFLICT (tenant, escalation_id) DO NOTHING
"""
)

_ESCALATION = (
    " FROM c WHERE e.tenant = c.tenant AND e.conversation_id = c.conversation_id"
    " AND e.escalation_id = %(escalation_id)s"
)

ESCALATION_ASSIGNED = (
    _advance()
    + """
    UPDATE {s}.escalations AS e SET status = 'assigned', agent_id = %(agent_id)s, agent_name = %(agent_name)s,
        assigned_at = %(at)s
"""
    + _ESCALATION
)

ESCALATION_AGENT_UNAVAILABLE = (
    _advance()
    + """
    UPDATE {s}.escalations AS e SET status = 'agent_unavailable', fallback_action = %(fallback_action)s,
        queue_position = %(queue_position)s, unavailable_at = %(at)s
"""
    + _ESCALATION
)

ESCALATION_RESOLVED = (
    _advance("status = 'active',")
    + """
    UPDATE {s}.escalations AS e SET status = 'resolved', resolution = %(resolution)s, resolved_by = %(resolved_by)s,
        resolved_at = %(at)s
"""
    + _ESCALATION
)

SURVEY_SENT = (
    _advance()
    + """
    INSERT INTO {s}.surveys (tenant, conversation_id, survey_id, questions, sent_at)
    SELECT tenant, conversation_id, %(survey_id)s, %(questions)s::jsonb, %(at)s FROM c
    ON CONFLICT (tenant, conversation_id, survey_id) DO NOTHING
"""
)

SURVEY_ANSWERED = (
    _advance()
    + """
    UPDATE {s}.surveys AS v SET responses = %(responses)s::jsonb, nps_score = %(nps_score)s,
        nps_category = %(nps_category)s, answered_at = %(at)s
    FROM c WHERE v.tenant = c.tenant AND v.conversation_id = c.conversation_id AND v.survey_id = %(survey_id)s
"""
)

CLOSED = _advance("status = 'closed',") + "SELECT count(*) FROM c"


@functools.cache
def _statement(template: str, schema: str) -> bytes:
    return sql.SQL(template).format(s=sql.Identifier(schema)).as_string().encode()


_json = msgspec.json.Encoder()


def _to_json(value: object) -> str:
    return _json.encode(value).decode()


def _tool_call(call: ToolCall) -> dict[str, object]:
    return {k: v for k, v in msgspec.structs.asdict(call).items() if v is not None}


def statement(event: RecordedEvent) -> tuple[str, dict[str, Any]] | None:
    """The statement that projects an event, and its parameters (None: an event this read model does not show)."""
    p: dict[str, Any] = {
        "tenant": event.stream.tenant,
        "cid": event.stream.aggregate_id,
        "seq": event.seq,
        "version": event.version,
    }
    match event.event:
        case ConversationStarted() as e:
            context = e.context or {}
            pii = {key: context[key] for key in PII_CONTEXT_KEYS if key in context}
            template = STARTED
            p |= {
                "config_id": e.config_id,
                "config_version": e.config_version,
                "product_type": e.product_type,
                "channel": e.channel,
                "user_id": e.user_id,
                "pii": _to_json(pii),
                "at": e.started_at,
            }
        case UserMessageReceived() as e:
            template = USER_MESSAGE
            p |= {
                "message_id": e.message_id,
                "content": e.content,
                "author": e.user_id,
                "at": e.received_at,
                "pii": _to_json(extract_pii(e.content or "")),
            }
        case AgentReplied() as e:
            template = AGENT_REPLY
            tools = Counter(call.tool for call in e.tool_calls)
            p |= {
                "message_id": e.message_id,
                "content": e.content,
                "tool_calls": _to_json([_tool_call(call) for call in e.tool_calls]),
                "tools": _to_json(tools) if tools else None,
                "intent": e.intent,
                "confidence": e.confidence,
                "sentiment": e.sentiment,
                "author": e.author,
                "at": e.replied_at,
            }
        case EscalationRequested() as e:
            template = ESCALATION_REQUESTED
            p |= {
                "escalation_id": e.escalation_id,
                "trigger": e.trigger,
                "reason": e.reason,
                "urgency": e.urgency,
                "requested_by": e.requested_by,
                "at": e.requested_at,
            }
        case EscalationAssigned() as e:
            template = ESCALATION_ASSIGNED
            p |= {
                "escalation_id": e.escalation_id,
                "agent_id": e.agent_id,
                "agent_name": e.agent_name,
                "at": e.assigned_at,
            }
        case EscalationAgentUnavailable() as e:
            template = ESCALATION_AGENT_UNAVAILABLE
            p |= {
                "escalation_id": e.escalation_id,
                "fallback_action": e.fallback_action,
                "queue_position": e.queue_position,
                "at": e.at,
            }
        case EscalationResolved() as e:
            template = ESCALATION_RESOLVED
            p |= {
                "escalation_id": e.escalation_id,
                "resolution": e.resolution,
                "resolved_by": e.resolved_by,
                "at": e.resolved_at,
            }
        case SurveySent() as e:
            template = SURVEY_SENT
            p |= {"survey_id": e.survey_id, "questions": _to_json(e.questions), "at": e.sent_at}
        case SurveyAnswered() as e:
            template = SURVEY_ANSWERED
            p |= {
                "survey_id": e.survey_id,
                "responses": _to_json(e.responses),
                "nps_score": e.nps_score,
                "nps_category": e.nps_category,
                "at": e.answered_at,
            }
        case ConversationClosed() as e:
            template = CLOSED
            p |= {"at": e.closed_at}
        case _:
            return None  # an event this read model does not show
    return template, p


class ConversationsProjector(Projector):
    read_model = CONVERSATIONS
    subject = type_subjects(AGGREGATE_TYPE)

    async def apply(self, cur: AsyncCursor[Any], event: RecordedEvent, schema: str) -> None:
        if found := statement(event):
            template, p = found
            await cur.execute(_statement(template, schema), p)

    def replay(self) -> ConversationsReplay:
        return ConversationsReplay()


# The bulk replay ------------------------------------------------------------------------------
#
# A rebuild replays the whole history into an empty shadow schema. ``ConversationsReplay`` runs
# each event's statement in Python instead of in PostgreSQL: it takes the very parameters
# ``statement`` gives, keeps the rows they would produce in memory, and writes the settled ones
# with COPY, several times faster than a statement per event.
#
# A row is a msgspec Struct whose fields are its table's columns, in order. Rows stay out of the
# cycle collector (``gc=False``): nothing they hold refers back to them, and a replay keeps tens
# of thousands alive, which each full collection would otherwise walk.


class _Message(msgspec.Struct, kw_only=True, gc=False):
    """A ``messages`` row, its fields in column order."""

    tenant: str
    conversation_id: str
    message_id: str
    role: str
    content: str | None
    tool_calls: str | None = None  # jsonb text
    intent: str | None = None
    confidence: float | None = None
    sentiment: float | None = None
    author: str
    timestamp: datetime
    seq: int
    version: int


class _Escalation(msgspec.Struct, kw_only=True, gc=False):
    """An ``escalations`` row, its fields in column order."""

    tenant: str
    escalation_id: str
    conversation_id: str
    trigger: str
    reason: str
    urgency: str
    requested_by: str
    status: str = "pending"
    agent_id: str | None = None
    agent_name: str | None = None
    fallback_action: str | None = None
    queue_position: int | None = None
    resolution: str | None = None
    resolved_by: str | None = None
    requested_at: datetime
    assigned_at: datetime | None = None
    unavailable_at: datetime | None = None
    resolved_at: datetime | None = None


class _Survey(msgspec.Struct, kw_only=True, gc=False):
    """A ``surveys`` row, its fields in column order."""

    tenant: str
    conversation_id: str
    survey_id: str
    questions: str  # jsonb text
    responses: str | None = None  # jsonb text
    nps_score: int | None = None
    nps_category: str | None = None
    sent_at: datetime
    answered_at: datetime | None = None


CONVERSATION_COLUMNS = (
    "tenant",
    "conversation_id",
    "config_id",
    "config_version",
    "product_type",
    "channel",
    "user_id",
    "status",
    "turn_count",
    "pii_collected",
    "tools_executed",
    "sentiment_trajectory",
    "created_at",
    "updated_at",
    "last_seq",
    "version",
)


class _Conversation(msgspec.Struct, kw_only=True, gc=False):
    """An open conversation: its row, and the keys of its rows that later events look up."""

    tenant: str
    conversation_id: str
    config_id: str
    config_version: int
    product_type: str
    channel: str
    user_id: str
    status: str = "active"
    turn_count: int = 0
    pii_collected: dict[str, Any]
    tools_executed: dict[str, int] = {}
    sentiment_trajectory: list[str] = []  # each number as PostgreSQL's to_jsonb writes it
    created_at: datetime
    updated_at: datetime
    last_seq: int
    version: int
    message_ids: set[str] = set()
    escalations: dict[str, _Escalation] = {}
    surveys: dict[str, _Survey] = {}

    def row(self) -> tuple[Any, ...]:
        """Its ``conversations`` row, in the order of ``CONVERSATION_COLUMNS``."""
        return (
            self.tenant,
            self.conversation_id,
            self.config_id,
            self.config_version,
            self.product_type,
            self.channel,
            self.user_id,
            self.status,
            self.turn_count,
            _to_json(self.pii_collected),
            _to_json(self.tools_executed),
            "[" + ", ".join(self.sentiment_trajectory) + "]",
            self.created_at,
            self.updated_at,
            self.last_seq,
            self.version,
        )


Fold = Callable[["ConversationsReplay", _Conversation, dict[str, Any]], None]


class ConversationsReplay:
    """Folds conversation events into rows and writes them with COPY: exactly the rows ``apply`` gives.

    Each event goes through ``statement``, and what the statement would do with its parameters is
    done here: the guard (the conversation exists and is behind the event's version), ``ON CONFLICT
    DO NOTHING`` within a conversation, the jsonb merges of ``pii_collected`` and ``tools_executed``,
    the numbers of ``sentiment_trajectory`` written the way ``to_jsonb`` writes them.

    Messages are insert-only: each flush writes those folded so far. A conversation's row, its
    escalations and surveys are written once it is closed (the domain says nothing after
    ``ConversationClosed``), and the final flush writes the conversations still open. Memory is
    therefore bounded by the open conversations (with their escalations, surveys and message ids)
    plus the messages of one flush, not by the length of the history.

    Where it cannot be sure to give the same rows, it refuses, and the rebuild replays event by event:
    ``NotReplayable`` for a parameter PostgreSQL refuses whatever the rows (the per-event path
    dead-letters that commit), for a sentiment ``to_jsonb`` may write with other digits, and for an
    event of a conversation not open here (never started, so the statement does nothing, or closed
    and written already, so it would change the row: neither happens in a history the domain
    decided); the COPY itself fails on a key taken twice across conversations (an escalation id, or
    a conversation started again after it closed).
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], _Conversation] = {}
        self._closed: list[_Conversation] = []
        self._messages: list[_Message] = []
        self._checked_float_format = False

    def apply(self, event: RecordedEvent) -> None:
        found = statement(event)
        if found is None:
            return
        template, p = found
        _check_parameters(p)
        key = (p["tenant"], p["cid"])
        conversation = self._open.get(key)
        if template == STARTED:
            if conversation is None:  # else ON CONFLICT DO NOTHING
                self._open[key] = _started(p)
            return
        if conversation is None:
            raise NotReplayable(
                f"{type(event.event).__name__} at {event.seq} is for a conversation that is not open"
                f" ({p['tenant']}/{p['cid']}): never started, or closed before it"
            )
        if conversation.version >= p["version"]:
            return  # the row is already past this event
        conversation.updated_at, conversation.last_seq, conversation.version = p["at"], p["seq"], p["version"]
        _FOLDS[template](self, conversation, p)
        if template == CLOSED:
            del self._open[key]
            self._closed.append(conversation)

    def flush(self, conn: AsyncConnection[Any], schema: str, *, final: bool = False) -> Awaitable[None]:
        messages, settled = self._messages, self._closed
        if final:
            settled += self._open.values()
            self._open = {}
        self._messages, self._closed = [], []
        return self._write(conn, schema, messages, settled)

    async def _write(
        self, conn: AsyncConnection[Any], schema: str, messages: list[_Message], settled: list[_Conversation]
    ) -> None:
        if not self._checked_float_format:
            await _check_float_format(conn)
            self._checked_float_format = True
        async with conn.cursor() as cur:
            await _copy(cur, schema, "messages", _Message.__struct_fields__, map(astuple, messages))
            await _copy(cur, schema, "conversations", CONVERSATION_COLUMNS, (c.row() for c in settled))
            escalations = (astuple(e) for c in settled for e in c.escalations.values())
            await _copy(cur, schema, "escalations", _Escalation.__struct_fields__, escalations)
            surveys = (astuple(s) for c in settled for s in c.surveys.values())
            await _copy(cur, schema, "surveys", _Survey.__struct_fields__, surveys)

    # What each statement does to the row of a conversation that is behind the event ----------

    def _user_message(self, c: _Conversation, p: dict[str, Any]) -> None:
        c.turn_count += 1
        c.pii_collected.update(_from_json(p["pii"]))
        self._message(c, p, role="user")

    def _agent_reply(self, c: _Conversation, p: dict[str, Any]) -> None:
        if p["sentiment"] is not None:
            c.sentiment_trajectory.append(_numeric(p["sentiment"]))
        if p["tools"] is not None:
            for tool, count in _from_json(p["tools"]).items():
                c.tools_executed[tool] = c.tools_executed.get(tool, 0) + count
        self._message(c, p, role="assistant")

    def _message(self, c: _Conversation, p: dict[str, Any], *, role: str) -> None:
        if p["message_id"] in c.message_ids:
            return
        c.message_ids.add(p["message_id"])
        self._messages.append(
            _Message(
                tenant=c.tenant,
                conversation_id=c.conversation_id,
                message_id=p["message_id"],
                role=role,
                content=p["content"],
                tool_calls=p.get("tool_calls"),
                intent=p.get("intent"),
                confidence=p.get("confidence"),
                sentiment=p.get("sentiment"),
                author=p["author"],
                timestamp=p["at"],
                seq=p["seq"],
                version=p["version"],
            )
        )

    def _escalation_requested(self, c: _Conversation, p: dict[str, Any]) -> None:
        c.status = "escalated"
        if p["escalation_id"] not in c.escalations:
            c.escalations[p["escalation_id"]] = _Escalation(
                tenant=c.tenant,
                escalation_id=p["escalation_id"],
                conversation_id=c.conversation_id,
                trigger=p["trigger"],
                reason=p["reason"],
                urgency=p["urgency"],
                requested_by=p["requested_by"],
                requested_at=p["at"],
            )

    def _escalation_assigned(self, c: _Conversation, p: dict[str, Any]) -> None:
        if e := c.escalations.get(p["escalation_id"]):
            e.status = "assigned"
            e.agent_id, e.agent_name, e.assigned_at = p["agent_id"], p["agent_name"], p["at"]

    def _escalation_agent_unavailable(self, c: _Conversation, p: dict[str, Any]) -> None:
        if e := c.escalations.get(p["escalation_id"]):
            e.status = "agent_unavailable"
            e.fallback_action, e.queue_position, e.unavailable_at = p["fallback_action"], p["queue_position"], p["at"]

    def _escalation_resolved(self, c: _Conversation, p: dict[str, Any]) -> None:
        c.status = "active"
        if e := c.escalations.get(p["escalation_id"]):
            e.status = "resolved"
            e.resolution, e.resolved_by, e.resolved_at = p["resolution"], p["resolved_by"], p["at"]

    def _survey_sent(self, c: _Conversation, p: dict[str, Any]) -> None:
        if p["survey_id"] not in c.surveys:
            c.surveys[p["survey_id"]] = _Survey(
                tenant=c.tenant,
                conversation_id=c.conversation_id,
                survey_id=p["survey_id"],
                questions=p["questions"],
                sent_at=p["at"],
            )

    def _survey_answered(self, c: _Conversation, p: dict[str, Any]) -> None:
        if s := c.surveys.get(p["survey_id"]):
            s.responses, s.nps_score, s.nps_category = p["responses"], p["nps_score"], p["nps_category"]
            s.answered_at = p["at"]

    def _conversation_closed(self, c: _Conversation, p: dict[str, Any]) -> None:
        c.status = "closed"


_FOLDS: dict[str, Fold] = {
    USER_MESSAGE: ConversationsReplay._user_message,
    AGENT_REPLY: ConversationsReplay._agent_reply,
    ESCALATION_REQUESTED: ConversationsReplay._escalation_requested,
    ESCALATION_ASSIGNED: ConversationsReplay._escalation_assigned,
    ESCALATION_AGENT_UNAVAILABLE: ConversationsReplay._escalation_agent_unavailable,
    ESCALATION_RESOLVED: ConversationsReplay._escalation_resolved,
    SURVEY_SENT: ConversationsReplay._survey_sent,
    SURVEY_ANSWERED: ConversationsReplay._survey_answered,
    CLOSED: ConversationsReplay._conversation_closed,
}


def _started(p: dict[str, Any]) -> _Conversation:
    return _Conversation(
        tenant=p["tenant"],
        conversation_id=p["cid"],
        config_id=p["config_id"],
        config_version=p["config_version"],
        product_type=p["product_type"],
        channel=p["channel"],
        user_id=p["user_id"],
        pii_collected=_from_json(p["pii"]),
        created_at=p["at"],
        updated_at=p["at"],
        last_seq=p["seq"],
        version=p["version"],
    )


# Parameters PostgreSQL refuses whatever rows a statement touches (psycopg refuses a NUL in text,
# jsonb a \u0000 escape, an integer column a number out of its range when it plans the statement).
_JSON_PARAMETERS = frozenset({"pii", "tool_calls", "tools", "questions", "responses"})
_INTEGER_PARAMETERS = frozenset({"version", "config_version", "queue_position", "nps_score"})
_INTEGER = range(-(2**31), 2**31)


def _check_parameters(p: dict[str, Any]) -> None:
    for name, value in p.items():
        if isinstance(value, str):
            if "\x00" in value or (name in _JSON_PARAMETERS and "\\u0000" in value):
                raise NotReplayable(f"{name} holds a NUL character, which PostgreSQL refuses")
        elif name in _INTEGER_PARAMETERS and value is not None and value not in _INTEGER:
            raise NotReplayable(f"{name} {value} is out of the range of an integer column")


_from_json = msgspec.json.Decoder().decode


def _numeric(value: float) -> str:
    """A float8 as ``to_jsonb`` stores it: float8out's shortest round-trip digits, read as a numeric.

    Python's ``repr`` finds the same shortest digits, except where they fall exactly halfway between
    two doubles, which takes integers beyond 2**53; below 1e15 the two agree. Written out in full
    without trailing zeros, they make the same numeric (``1.0`` is ``1``, ``1e-05`` is ``0.00001``).
    """
    if not -1e15 < value < 1e15:
        raise NotReplayable(f"to_jsonb may write {value!r} with other digits than Python")
    return format(Decimal(repr(value)).normalize(), "f")


async def _check_float_format(conn: AsyncConnection[Any]) -> None:
    """``_numeric`` holds while float8out writes shortest round-trip digits (``extra_float_digits`` > 0)."""
    cur = await conn.execute("SELECT current_setting('extra_float_digits')::integer > 0")
    row = await cur.fetchone()
    if not (row and row[0]):
        raise NotReplayable("extra_float_digits <= 0: to_jsonb writes floats with fewer digits than the replay")


async def _copy(
    cur: AsyncCursor[Any], schema: str, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    statement = sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
        sql.Identifier(schema), sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    async with cur.copy(statement) as copy:
        for row in rows:
            await copy.write_row(row)
