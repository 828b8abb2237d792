"""The conversations projector: conversation events -> ``read_models.conversations`` tables.

One SQL statement per event. Every statement after ``ConversationStarted`` first moves the
conversation row to the event's version, and only if the row is behind it (``version < %s``);
the rest of the statement (a message, an escalation, a survey) happens only when that update did.
So applying an event twice changes nothing, a late replay cannot undo a newer state, and the
statements need no reads in Python: a whole batch goes to PostgreSQL as one pipeline.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import msgspec
from psycopg import AsyncCursor, sql

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
from projections.projector import Projector
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


class ConversationsProjector(Projector):
    read_model = CONVERSATIONS
    subject = type_subjects(AGGREGATE_TYPE)

    async def apply(self, cur: AsyncCursor[Any], event: RecordedEvent, schema: str) -> None:
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
                return  # an event this read model does not show
        await cur.execute(_statement(template, schema), p)
