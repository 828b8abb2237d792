"""The conversations projection: conversation events -> ``read_models.conversation`` tables.

One definition, used by the live projector and by a rebuild alike: ``evolve(view, event)`` folds an
event into a conversation's *view* (its ``conversations`` row, its escalations and surveys, and the
messages the event adds), in plain Python. Only the writing differs:

* **live** (``ConversationsProjector.apply_events``): a batch's conversations are read back in one
  round trip, the batch is folded over them, and the rows that changed are written by upsert in
  one pipeline;
* **rebuild** (``ConversationsReplay``): the whole history is folded in memory and the rows are
  written with COPY, messages every page, a conversation once it is closed (nothing can change it
  after), the rest at the end.

Personal data the customer's key sealed reads blank once the customer is erased: a message's text,
an escalation's reason show ``[erased]`` (a human agent's reply shows its ``agent_text``: the
agent's words without the customer's data), tool inputs and outputs are gone. When the live
projector meets ``ConversationErased`` it folds the conversation again from its stream (its key is
destroyed by then) and rewrites its rows: the rows a rebuild from the stream gives (the event itself
changes nothing else, not even the row's version).

Every event after ``ConversationStarted`` applies only to a view behind its version, so applying an
event twice changes nothing and a late replay cannot undo a newer state. Values are written the
same way by both paths (JSON columns from the same Python encoder), so a rebuild gives the very
rows the live projector gave.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
from msgspec.structs import astuple
from psycopg import AsyncConnection, AsyncCursor, sql

from domain import conversation as c
from domain.pii import extract_pii
from projections.projector import NotReplayable, Projector
from projections.sql import json_text, statement
from read_models.conversation import CONVERSATIONS
from streams.store import RecordedEvent
from streams.subjects import type_subjects

# Rows: msgspec Structs whose fields are their table's columns, in order. JSON columns hold the
# JSON text. Out of the cycle collector (``gc=False``): nothing they hold refers back to them, and a
# replay keeps tens of thousands alive.


class ConversationRow(msgspec.Struct, kw_only=True, gc=False):
    tenant: str
    conversation_id: str
    config_id: str
    config_version: int
    product_type: str
    channel: str
    user_id: str
    status: str = "active"
    turn_count: int = 0
    pii_collected: str = "{}"
    tools_executed: str = "{}"
    sentiment_trajectory: str = "[]"
    created_at: datetime
    updated_at: datetime
    last_seq: int
    version: int
    open_escalation_id: str | None = None
    assigned_agent_id: str | None = None
    assigned_agent_name: str | None = None
    cross_sell_attempted: bool = False
    cross_sell_accepted: bool = False
    last_message_at: datetime | None = None


class MessageRow(msgspec.Struct, kw_only=True, gc=False):
    tenant: str
    conversation_id: str
    message_id: str
    role: str
    content: str | None
    tool_calls: str | None = None
    intent: str | None = None
    confidence: float | None = None
    sentiment: float | None = None
    author: str
    timestamp: datetime
    seq: int
    version: int
    agent_name: str | None = None


class EscalationRow(msgspec.Struct, kw_only=True, gc=False):
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
    fallback_option: str | None = None
    fallback_chosen_at: datetime | None = None


class SurveyRow(msgspec.Struct, kw_only=True, gc=False):
    tenant: str
    conversation_id: str
    survey_id: str
    questions: str
    responses: str | None = None
    nps_score: int | None = None
    nps_category: str | None = None
    sent_at: datetime
    answered_at: datetime | None = None


class View(msgspec.Struct, kw_only=True, gc=False):
    """A conversation as the read model shows it, and what an event changed since it was last written."""

    row: ConversationRow
    escalations: dict[str, EscalationRow] = {}
    surveys: dict[str, SurveyRow] = {}
    messages: list[MessageRow] = []  # added since the last write
    changed: set[str] = set()  # keys of escalations ("e:<id>") and surveys ("s:<id>") changed since
    message_ids: set[str] = set()  # the replay's: a message delivered twice is written once
    refolded: bool = False  # folded again after an erasure: its messages are written anew


_from_json = msgspec.json.Decoder().decode

ERASED = "[erased]"  # what a text sealed under an erased person's key shows


def _tool_call(call: c.ToolCall) -> dict[str, object]:
    return {k: v for k, v in msgspec.structs.asdict(call).items() if v is not None}


# The definition -------------------------------------------------------------------------------


def evolve(view: View | None, recorded: RecordedEvent) -> View | None:
    """``view`` after ``recorded`` (None: no such conversation, and the event does not start one)."""
    event = recorded.event
    if isinstance(event, c.ConversationStarted):
        if view is not None:
            return view  # started once only
        pii = c.conversation_pii(event.context)
        row = ConversationRow(
            tenant=recorded.stream.tenant,
            conversation_id=recorded.stream.aggregate_id,
            config_id=event.config_id,
            config_version=event.config_version,
            product_type=event.product_type,
            channel=event.channel,
            user_id=event.user_id,
            pii_collected=json_text(pii),
            created_at=event.started_at,
            updated_at=event.started_at,
            last_seq=recorded.seq,
            version=recorded.version,
        )
        return View(row=row)
    if view is None or view.row.version >= recorded.version or not _shown(event):
        return view
    row = view.row
    row.last_seq, row.version = recorded.seq, recorded.version
    match event:
        case c.UserMessageReceived():
            row.updated_at = row.last_message_at = event.received_at
            row.turn_count += 1
            if pii := extract_pii(event.content or ""):
                row.pii_collected = json_text({**_from_json(row.pii_collected), **pii})
            content = ERASED if event.content is None else event.content
            _message(view, recorded, role="user", content=content, author=event.user_id, at=event.received_at)
        case c.AgentReplied():
            row.updated_at = row.last_message_at = event.replied_at
            if event.sentiment is not None:
                row.sentiment_trajectory = json_text([*_from_json(row.sentiment_trajectory), event.sentiment])
            if event.tool_calls:
                tools = Counter(_from_json(row.tools_executed))
                tools.update(call.tool for call in event.tool_calls)
                row.tools_executed = json_text(dict(sorted(tools.items())))
            if event.cross_sell is not None:
                row.cross_sell_attempted = True
            _message(
                view,
                recorded,
                role="agent" if event.by_human else "assistant",
                content=_reply_text(event),
                author=event.author,
                at=event.replied_at,
                tool_calls=json_text([_tool_call(call) for call in event.tool_calls]),
                intent=event.intent,
                confidence=event.confidence,
                sentiment=event.sentiment,
                agent_name=event.agent_name or None if event.by_human else None,
            )
        case c.CrossSellOffered():
            row.updated_at, row.cross_sell_attempted = event.offered_at, True
        case c.CrossSellAccepted():
            row.updated_at, row.cross_sell_accepted = event.accepted_at, True
        case c.CrossSellDeclined():
            row.updated_at = event.declined_at
        case c.EscalationRequested():
            row.updated_at, row.status = event.requested_at, "escalated"
            row.open_escalation_id, row.assigned_agent_id, row.assigned_agent_name = event.escalation_id, None, None
            if event.escalation_id not in view.escalations:
                view.escalations[event.escalation_id] = EscalationRow(
                    tenant=row.tenant,
                    escalation_id=event.escalation_id,
                    conversation_id=row.conversation_id,
                    trigger=event.trigger,
                    reason=ERASED if event.reason is None else event.reason,
                    urgency=event.urgency,
                    requested_by=event.requested_by,
                    requested_at=event.requested_at,
                )
                view.changed.add(f"e:{event.escalation_id}")
        case c.EscalationAssigned():
            row.updated_at = event.assigned_at
            if escalation := _escalation(view, event.escalation_id):
                escalation.status, escalation.queue_position = "assigned", None
                escalation.agent_id, escalation.agent_name = event.agent_id, event.agent_name
                escalation.assigned_at = event.assigned_at
                if row.open_escalation_id == event.escalation_id:
                    row.assigned_agent_id, row.assigned_agent_name = event.agent_id, event.agent_name
        case c.EscalationAgentUnavailable():
            row.updated_at = event.at
            if escalation := _escalation(view, event.escalation_id):
                escalation.status = "agent_unavailable"
                escalation.fallback_action, escalation.queue_position = event.fallback_action, event.queue_position
                escalation.unavailable_at = event.at
        case c.EscalationFallbackChosen():
            row.updated_at = event.chosen_at
            if escalation := _escalation(view, event.escalation_id):
                escalation.fallback_option, escalation.fallback_chosen_at = event.option, event.chosen_at
        case c.EscalationResolved():
            row.updated_at, row.status = event.resolved_at, "active"
            row.open_escalation_id, row.assigned_agent_id, row.assigned_agent_name = None, None, None
            if escalation := _escalation(view, event.escalation_id):
                escalation.status, escalation.queue_position = "resolved", None
                escalation.resolution, escalation.resolved_by = event.resolution, event.resolved_by
                escalation.resolved_at = event.resolved_at
        case c.SurveySent():
            row.updated_at = event.sent_at
            if event.survey_id not in view.surveys:
                view.surveys[event.survey_id] = SurveyRow(
                    tenant=row.tenant,
                    conversation_id=row.conversation_id,
                    survey_id=event.survey_id,
                    questions=json_text(event.questions),
                    sent_at=event.sent_at,
                )
                view.changed.add(f"s:{event.survey_id}")
        case c.SurveyAnswered():
            row.updated_at = event.answered_at
            if survey := view.surveys.get(event.survey_id):
                survey.responses = json_text(event.responses)
                survey.nps_score, survey.nps_category = event.nps_score, event.nps_category
                survey.answered_at = event.answered_at
                view.changed.add(f"s:{event.survey_id}")
        case c.ConversationClosed():
            row.updated_at, row.status = event.closed_at, "closed"
            if row.open_escalation_id and (escalation := _escalation(view, row.open_escalation_id)):
                escalation.status, escalation.queue_position = "resolved", None
                escalation.resolution, escalation.resolved_at = "conversation_closed", event.closed_at
            row.open_escalation_id, row.assigned_agent_id, row.assigned_agent_name = None, None, None
    return view


def _reply_text(event: c.AgentReplied) -> str:
    if event.content is not None:
        return event.content
    return ERASED if event.agent_text is None else event.agent_text


_SHOWN = (
    c.UserMessageReceived,
    c.AgentReplied,
    c.CrossSellOffered,
    c.CrossSellAccepted,
    c.CrossSellDeclined,
    c.EscalationRequested,
    c.EscalationAssigned,
    c.EscalationAgentUnavailable,
    c.EscalationFallbackChosen,
    c.EscalationResolved,
    c.SurveySent,
    c.SurveyAnswered,
    c.ConversationClosed,
)


def _shown(event: object) -> bool:
    return isinstance(event, _SHOWN)


def _projected(event: object) -> bool:
    return isinstance(event, (c.ConversationStarted, *_SHOWN))


def _escalation(view: View, escalation_id: str) -> EscalationRow | None:
    escalation = view.escalations.get(escalation_id)
    if escalation is not None:
        view.changed.add(f"e:{escalation_id}")
    return escalation


def _message(
    view: View, recorded: RecordedEvent, *, role: str, content: str | None, author: str, at: datetime, **more: Any
) -> None:
    view.messages.append(
        MessageRow(
            tenant=view.row.tenant,
            conversation_id=view.row.conversation_id,
            message_id=recorded.event.message_id,  # type: ignore[attr-defined]
            role=role,
            content=content,
            author=author,
            timestamp=at,
            seq=recorded.seq,
            version=recorded.version,
            **more,
        )
    )


# Live: read back, fold, upsert ----------------------------------------------------------------


def _columns(row_type: type[msgspec.Struct]) -> tuple[str, ...]:
    return row_type.__struct_fields__


def _select(table: str, row_type: type[msgspec.Struct]) -> str:
    """The rows of some conversations, a JSON column as its text (the row keeps the text; psycopg
    would decode it and the row encode it again). ``load_views`` runs it unprepared."""
    columns = ", ".join(f"{c}::text" if c in _JSON_COLUMNS else c for c in _columns(row_type))
    return (
        f"SELECT {columns} FROM {{s}}.{table}"
        " WHERE (tenant, conversation_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
    )


_JSON_COLUMNS = frozenset(
    {"pii_collected", "tools_executed", "sentiment_trajectory", "tool_calls", "questions", "responses"}
)


def _record_type(field: msgspec.structs.FieldInfo) -> str:
    """The column's type as ``json_to_recordset`` reads it (a JSON column is read as its text)."""
    if field.name in _JSON_COLUMNS:
        return "text"
    kinds = {t for t in (getattr(field.type, "__args__", None) or (field.type,)) if t is not type(None)}
    [kind] = kinds
    return {str: "text", int: "bigint", float: "float8", bool: "boolean", datetime: "timestamptz"}[kind]


def _insert(table: str, row_type: type[msgspec.Struct], *, one_row: bool = False) -> str:
    """Insert rows. A batch's rows are one parameter, their JSON (``_rows_json``): msgspec writes it
    in one call, where an array per column cost psycopg a Python call per value; PostgreSQL reads it
    back with the columns' own types (``json_to_recordset``), so the rows are the same."""
    columns = ", ".join(_columns(row_type))
    if one_row:
        values = ", ".join("%s::jsonb" if column in _JSON_COLUMNS else "%s" for column in _columns(row_type))
        return f"INSERT INTO {{s}}.{table} ({columns}) VALUES ({values})"
    fields = msgspec.structs.fields(row_type)
    record = ", ".join(f"{f.name} {_record_type(f)}" for f in fields)
    values = ", ".join(f"r.{f.name}::jsonb" if f.name in _JSON_COLUMNS else f"r.{f.name}" for f in fields)
    return f"INSERT INTO {{s}}.{table} ({columns}) SELECT {values} FROM json_to_recordset(%s::json) AS r({record})"


def _upsert(table: str, row_type: type[msgspec.Struct], key: Sequence[str], *, one_row: bool = False) -> str:
    """Insert or update rows; never another conversation's (an id taken twice keeps its first owner).
    One key at most once in a statement (``_firsts``)."""
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in _columns(row_type) if column not in key)
    return (
        f"{_insert(table, row_type, one_row=one_row)} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        f" WHERE {table}.conversation_id = EXCLUDED.conversation_id"
    )


_rows_json = msgspec.json.Encoder().encode  # rows (Structs) as a JSON array of objects (text: decode it)


SELECT_CONVERSATIONS = _select("conversations", ConversationRow)
SELECT_ESCALATIONS = _select("escalations", EscalationRow)
SELECT_SURVEYS = _select("surveys", SurveyRow)
UPSERT_CONVERSATION = _upsert("conversations", ConversationRow, ("tenant", "conversation_id"))
UPSERT_ESCALATION = _upsert("escalations", EscalationRow, ("tenant", "escalation_id"))
UPSERT_ESCALATION_ROW = _upsert("escalations", EscalationRow, ("tenant", "escalation_id"), one_row=True)
UPSERT_SURVEY = _upsert("surveys", SurveyRow, ("tenant", "conversation_id", "survey_id"))
INSERT_MESSAGE = f"{_insert('messages', MessageRow)} ON CONFLICT (tenant, conversation_id, message_id) DO NOTHING"


DELETE_MESSAGES = "DELETE FROM {s}.messages WHERE tenant = %s AND conversation_id = %s"


def _row(row_type: type[msgspec.Struct], values: Sequence[Any]) -> Any:
    return row_type(**dict(zip(_columns(row_type), values, strict=True)))


async def load_views(
    cur: AsyncCursor[Any],
    schema: str,
    keys: Iterable[tuple[str, str]],
    *,
    escalations: Iterable[tuple[str, str]] | None = None,
    surveys: Iterable[tuple[str, str]] | None = None,
) -> dict[tuple[str, str], View]:
    """The views of these conversations as the schema holds them (absent ones are missing).

    Each read is planned anew (``prepare=False``): the projector's connection lives as long as the
    projector, and a plan PostgreSQL would cache while the table is new and small (a hash join over a
    scan of the whole table) would stay after it has grown, until autovacuum next analyzes the table.
    Measured after bench-api's command phase (17,000 conversations in under a minute): 5-7 ms a batch
    with the cached plan, 0.3 ms looked up by the key.

    Their escalations and surveys are read too, for the conversations named in ``escalations`` and
    ``surveys`` (None: all of them); the others' views hold none, for events that add to them or
    leave them alone."""
    keys = list(keys)
    if not keys:
        return {}
    await cur.execute(statement(SELECT_CONVERSATIONS, schema), _key_params(keys), prepare=False)
    views = {(r[0], r[1]): View(row=_row(ConversationRow, r)) for r in await cur.fetchall()}
    if not views:
        return views
    if wanted := _loaded(views, keys if escalations is None else escalations):
        await cur.execute(statement(SELECT_ESCALATIONS, schema), _key_params(wanted), prepare=False)
        for r in await cur.fetchall():
            escalation = _row(EscalationRow, r)
            if view := views.get((escalation.tenant, escalation.conversation_id)):
                view.escalations[escalation.escalation_id] = escalation
    if wanted := _loaded(views, keys if surveys is None else surveys):
        await cur.execute(statement(SELECT_SURVEYS, schema), _key_params(wanted), prepare=False)
        for r in await cur.fetchall():
            survey = _row(SurveyRow, r)
            if view := views.get((survey.tenant, survey.conversation_id)):
                view.surveys[survey.survey_id] = survey
    return views


def _key_params(keys: Sequence[tuple[str, str]]) -> list[list[str]]:
    return [[k[0] for k in keys], [k[1] for k in keys]]


def _loaded(views: dict[tuple[str, str], View], keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [key for key in keys if key in views]


# Events that change an escalation or a survey already written (a request or a survey sent adds one).
_READS_ESCALATIONS = (
    c.EscalationAssigned,
    c.EscalationAgentUnavailable,
    c.EscalationFallbackChosen,
    c.EscalationResolved,
    c.ConversationClosed,  # resolves the open one
)
_READS_SURVEYS = (c.SurveyAnswered,)


async def write_views(cur: AsyncCursor[Any], schema: str, views: Iterable[View]) -> None:
    """Upsert each view's row and what changed in it; insert its new messages (all of them, in place
    of those written, for a view folded again after an erasure). One statement per table, the rows
    as one JSON parameter: a batch costs PostgreSQL one plan and the client one message per table."""
    conversations: list[ConversationRow] = []
    messages: list[MessageRow] = []
    escalations: list[EscalationRow] = []
    surveys: list[SurveyRow] = []
    views = list(views)
    if refolded := [(v.row.tenant, v.row.conversation_id) for v in views if v.refolded]:
        await cur.executemany(statement(DELETE_MESSAGES, schema), refolded)
    for view in views:
        view.refolded = False
        conversations.append(view.row)
        messages += view.messages
        for key in view.changed:
            kind, _, item = key.partition(":")
            if kind == "e":
                escalations.append(view.escalations[item])
            else:
                surveys.append(view.surveys[item])
        view.messages, view.changed = [], set()
    firsts = _firsts(escalations)
    for template, rows in (
        (UPSERT_CONVERSATION, conversations),
        (INSERT_MESSAGE, messages),
        (UPSERT_ESCALATION, firsts),
        (UPSERT_SURVEY, surveys),
    ):
        if rows:
            await cur.execute(statement(template, schema), [_rows_json(rows).decode()])
    if escalations:  # an escalation id two conversations took: each row in turn, as one statement can't
        await cur.executemany(statement(UPSERT_ESCALATION_ROW, schema), [astuple(e) for e in escalations])


def _firsts(rows: list[EscalationRow]) -> list[EscalationRow]:
    """The first row of each escalation id, taken out of ``rows`` (what is left has an id seen before)."""
    seen: set[tuple[str, str]] = set()
    firsts, rest = [], []
    for row in rows:
        key = (row.tenant, row.escalation_id)
        (rest if key in seen else firsts).append(row)
        seen.add(key)
    rows[:] = rest
    return firsts


class ConversationsProjector(Projector):
    read_model = CONVERSATIONS
    subject = type_subjects(c.AGGREGATE_TYPE)

    async def apply(self, cur: AsyncCursor[Any], event: RecordedEvent, schema: str) -> None:
        await self.apply_events(cur, [event], schema)

    async def apply_events(self, cur: AsyncCursor[Any], events: Sequence[RecordedEvent], schema: str) -> None:
        keys: set[tuple[str, str]] = set()
        escalations: set[tuple[str, str]] = set()
        surveys: set[tuple[str, str]] = set()
        for e in events:
            event = e.event
            if _projected(event) or isinstance(event, c.ConversationErased):
                key = (e.stream.tenant, e.stream.aggregate_id)
                keys.add(key)
                if isinstance(event, _READS_ESCALATIONS):
                    escalations.add(key)
                elif isinstance(event, _READS_SURVEYS):
                    surveys.add(key)
        views = await load_views(cur, schema, keys, escalations=escalations, surveys=surveys)
        touched: dict[tuple[str, str], View] = {}
        for recorded in events:
            key = (recorded.stream.tenant, recorded.stream.aggregate_id)
            if isinstance(recorded.event, c.ConversationErased):  # not a change of the rows by itself
                if key in views:
                    views[key] = touched[key] = await self._refold(recorded)
                continue
            view = evolve(views.get(key), recorded)
            if view is not None and view.row.last_seq == recorded.seq:  # this event changed it
                views[key] = touched[key] = view
        await write_views(cur, schema, touched.values())

    async def _refold(self, erased: RecordedEvent) -> View:
        """The conversation folded again from its stream up to its erasure (the customer's key is
        destroyed by then, so their data reads blank), every row of it to be written again."""
        assert self._store is not None, "begin() before apply_events()"
        view: View | None = None
        for recorded in await self._store.read(erased.stream):
            if recorded.version > erased.version:
                break
            view = evolve(view, recorded)
        assert view is not None, f"{erased.stream} has no ConversationStarted"
        view.refolded = True
        view.changed = {f"e:{e}" for e in view.escalations} | {f"s:{s}" for s in view.surveys}
        return view

    def replay(self) -> ConversationsReplay:
        return ConversationsReplay()


# Rebuild: fold in memory, COPY ----------------------------------------------------------------


class ConversationsReplay:
    """Folds a whole history with ``evolve`` and writes the rows with COPY: the rows ``apply_events`` gives.

    Messages are insert-only: each flush writes those folded so far. A conversation's row, its
    escalations and surveys are written once it is closed (nothing changes it after), and the final
    flush writes the conversations still open. Memory is bounded by the open conversations plus the
    messages of one flush, not by the length of the history.

    Where it cannot be sure to give the same rows it refuses (``NotReplayable``), and the rebuild
    replays event by event: an event for a conversation closed and written already (the live
    projector would still fold it: the domain never records one), or a text PostgreSQL refuses.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], View] = {}
        self._closed: list[View] = []
        self._written: set[tuple[str, str]] = set()
        self._messages: list[MessageRow] = []

    def apply(self, recorded: RecordedEvent) -> None:
        if isinstance(recorded.event, c.ConversationErased):
            return  # what it erased reads blank already: the rows are those of the events before it
        key = (recorded.stream.tenant, recorded.stream.aggregate_id)
        view = self._open.get(key)
        if view is None and key in self._written:
            raise NotReplayable(f"{type(recorded.event).__name__} at {recorded.seq} follows its conversation's close")
        after = evolve(view, recorded)
        if after is None:
            return
        if after.messages:
            for message in after.messages:
                if message.content is not None and "\x00" in message.content:
                    raise NotReplayable("a message holds a NUL character, which PostgreSQL refuses")
                if message.message_id not in after.message_ids:  # as ON CONFLICT DO NOTHING would
                    after.message_ids.add(message.message_id)
                    self._messages.append(message)
            after.messages = []
        self._open[key] = after
        if after.row.status == "closed":
            del self._open[key]
            self._written.add(key)
            self._closed.append(after)

    def flush(self, conn: AsyncConnection[Any], schema: str, *, final: bool = False) -> Awaitable[None]:
        messages, settled = self._messages, self._closed
        if final:
            settled += self._open.values()
            self._open = {}
        self._messages, self._closed = [], []
        return self._write(conn, schema, messages, settled)

    async def _write(
        self, conn: AsyncConnection[Any], schema: str, messages: list[MessageRow], settled: list[View]
    ) -> None:
        async with conn.cursor() as cur:
            await _copy(cur, schema, "messages", _columns(MessageRow), map(astuple, messages))
            await _copy(cur, schema, "conversations", _columns(ConversationRow), (astuple(v.row) for v in settled))
            escalations = (astuple(e) for v in settled for e in v.escalations.values())
            await _copy(cur, schema, "escalations", _columns(EscalationRow), escalations)
            surveys = (astuple(s) for v in settled for s in v.surveys.values())
            await _copy(cur, schema, "surveys", _columns(SurveyRow), surveys)


async def _copy(
    cur: AsyncCursor[Any], schema: str, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    statement = sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
        sql.Identifier(schema), sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    async with cur.copy(statement) as copy:
        for row in rows:
            await copy.write_row(row)
