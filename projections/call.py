"""The calls projection: call events -> ``read_models.call`` tables.

A statement per event, each safe to apply twice: the call's row moves only forward (its
``version``), a turn or a recording is keyed by the event's place in the call's stream.

``CallErased`` (the caller was erased, their key destroyed) blanks what the caller's key sealed:
the phone number and the turns' words, as a rebuild from the stream would show them (it changes
nothing else, not the row's version: a rebuild skips it).
"""

from __future__ import annotations

from typing import Any

import msgspec
from psycopg import AsyncCursor

from domain import call as v
from projections.projector import Projector
from projections.sql import json_text, statement
from read_models.call import CALLS
from streams.store import RecordedEvent
from streams.subjects import type_subjects

INITIATED = """
    INSERT INTO {s}.calls (tenant, call_id, user_id, config_id, config_version, direction, transport, phone_number,
        status, initiated_at, room_name, sip_session_id, version)
    VALUES (%(tenant)s, %(call_id)s, %(user_id)s, %(config_id)s, %(config_version)s, %(direction)s, %(transport)s,
        %(phone_number)s, 'initiating', %(at)s, %(room_name)s, %(sip_session_id)s, %(version)s)
    ON CONFLICT (tenant, call_id) DO NOTHING
"""

REFUSED = """
    INSERT INTO {s}.calls (tenant, call_id, user_id, config_id, config_version, direction, transport, phone_number,
        status, initiated_at, refusal, version)
    VALUES (%(tenant)s, %(call_id)s, %(user_id)s, '', 0, 'outbound', '', %(phone_number)s, 'refused', %(at)s,
        %(reason)s, %(version)s)
    ON CONFLICT (tenant, call_id) DO NOTHING
"""

_CALL = " WHERE tenant = %(tenant)s AND call_id = %(call_id)s AND version < %(version)s"

STATUS = "UPDATE {s}.calls SET status = %(status)s, version = %(version)s" + _CALL
CONNECTED = "UPDATE {s}.calls SET status = 'in_progress', connected_at = %(at)s, version = %(version)s" + _CALL
SENTIMENT = (
    "UPDATE {s}.calls SET sentiment_sum = sentiment_sum + %(score)s, sentiment_count = sentiment_count + 1,"
    " sentiment_last = %(score)s, version = %(version)s" + _CALL
)
TRANSFER = (
    "UPDATE {s}.calls SET status = %(status)s, transfer = coalesce(transfer, '{{}}'::jsonb) || %(transfer)s::jsonb,"
    " version = %(version)s" + _CALL
)
ENDED = (
    "UPDATE {s}.calls SET status = 'ended', ended_at = %(at)s, duration_seconds = %(duration)s,"
    " resolution_status = %(resolution)s, end_reason = %(reason)s, cost = %(cost)s::jsonb, version = %(version)s"
    + _CALL
)
ANALYTICS = """
    UPDATE {s}.calls SET analytics = (
        SELECT jsonb_build_object(
            'stt_latency_avg_ms', round(avg(stt_latency_ms)::numeric, 1),
            'llm_latency_avg_ms', round(avg(llm_ttft_ms)::numeric, 1),
            'tts_latency_avg_ms', round(avg(tts_ttfb_ms)::numeric, 1),
            'total_latency_p95_ms', round((percentile_cont(0.95) WITHIN GROUP (ORDER BY e2e_latency_ms))::numeric, 1))
        FROM {s}.call_turns WHERE tenant = %(tenant)s AND call_id = %(call_id)s)
    WHERE tenant = %(tenant)s AND call_id = %(call_id)s
"""
TURN = """
    INSERT INTO {s}.call_turns (tenant, call_id, version, ordinal, kind, text, confidence, tool, source,
        e2e_latency_ms, llm_ttft_ms, tts_ttfb_ms, stt_latency_ms, interrupted, at)
    VALUES (%(tenant)s, %(call_id)s, %(version)s, 0, %(kind)s, %(text)s, %(confidence)s, %(tool)s, %(source)s,
        %(e2e)s, %(llm)s, %(tts)s, %(stt)s, %(interrupted)s, %(at)s)
    ON CONFLICT DO NOTHING
"""
RECORDING = """
    INSERT INTO {s}.call_recordings (tenant, call_id, recording_id, track, uri, duration_seconds, at)
    VALUES (%(tenant)s, %(call_id)s, %(recording_id)s, %(track)s, %(uri)s, %(duration)s, %(at)s)
    ON CONFLICT DO NOTHING
"""

ERASED = [
    "UPDATE {s}.calls SET phone_number = NULL WHERE tenant = %(tenant)s AND call_id = %(call_id)s",
    "UPDATE {s}.call_turns SET text = NULL WHERE tenant = %(tenant)s AND call_id = %(call_id)s",
]

_TURN_DEFAULTS = {"confidence": None, "tool": None, "source": None, "e2e": None, "llm": None, "tts": None,
                  "stt": None, "interrupted": False, "text": None}  # fmt: skip


class CallsProjector(Projector):
    read_model = CALLS
    subject = type_subjects(v.AGGREGATE_TYPE)

    async def apply(self, cur: AsyncCursor[Any], event: RecordedEvent, schema: str) -> None:
        params: dict[str, Any] = {"tenant": event.stream.tenant, "call_id": event.stream.aggregate_id,
                                  "version": event.version}  # fmt: skip
        statements: list[str] = []
        match event.event:
            case v.CallInitiated() as e:
                statements = [INITIATED]
                params |= {
                    "user_id": e.user_id, "config_id": e.config_id, "config_version": e.config_version,
                    "direction": e.direction, "transport": e.transport, "phone_number": e.phone_number,
                    "at": e.initiated_at, "room_name": e.room_name, "sip_session_id": e.sip_session_id,
                }  # fmt: skip
            case v.CallAttemptRefused() as e:
                statements = [REFUSED]
                params |= {"user_id": e.user_id, "phone_number": e.phone_number, "at": e.at, "reason": e.reason}
            case v.CallRinging():
                statements = [STATUS]
                params["status"] = "ringing"
            case v.CallConnected() as e:
                statements = [CONNECTED]
                params["at"] = e.connected_at
            case v.CallerSpoke() as e:
                statements = [TURN]
                params |= _TURN_DEFAULTS | {
                    "kind": "user", "text": e.text, "confidence": e.confidence, "source": e.source,
                    "stt": e.transcription_delay_ms, "at": e.at,
                }  # fmt: skip
            case v.AgentSpoke() as e:
                statements = [TURN]
                params |= _TURN_DEFAULTS | {
                    "kind": "agent", "text": e.text, "e2e": e.e2e_latency_ms, "llm": e.llm_ttft_ms,
                    "tts": e.tts_ttfb_ms, "interrupted": e.interrupted, "at": e.at,
                }  # fmt: skip
            case v.ChatbotDataShared() as e:  # what the caller sent in the linked chat: theirs, from the chat
                statements = [TURN]
                text = v.shared_text(e.shared_data) if e.shared_data else None
                params |= _TURN_DEFAULTS | {"kind": "user", "text": text, "source": "chat", "at": e.at}
            case v.ToolCallStarted() as e:
                statements = [TURN]
                params |= _TURN_DEFAULTS | {"kind": "tool", "tool": e.tool, "at": e.at}
            case v.SentimentUpdated() as e:
                statements = [SENTIMENT]
                params["score"] = e.score
            case v.TransferRequested() as e:
                statements = [TRANSFER]
                transfer = {"transfer_id": e.transfer_id, "transfer_type": e.transfer_type, "agent_id": e.agent_id,
                            "agent_name": e.agent_name, "reason": e.reason, "status": "transferring"}  # fmt: skip
                params |= {"status": "transferring", "transfer": json_text(transfer)}
            case v.TransferConnected():
                statements = [TRANSFER]
                params |= {"status": "transferred", "transfer": '{"status": "connected"}'}
            case v.TransferFailed() as e:
                statements = [TRANSFER]
                failed = {"status": "failed", "failure": e.reason}
                params |= {"status": "in_progress", "transfer": json_text(failed)}
            case v.RecordingStored() as e:
                statements = [RECORDING]
                params |= {"recording_id": e.recording_id, "track": e.track, "uri": e.uri,
                           "duration": e.duration_seconds, "at": e.at}  # fmt: skip
            case v.CallErased():
                statements = ERASED
            case v.CallEnded() as e:
                statements = [ENDED, ANALYTICS]
                params |= {
                    "at": e.ended_at, "duration": e.duration_seconds, "resolution": e.resolution_status,
                    "reason": e.reason,
                    "cost": json_text({**msgspec.to_builtins(e.cost), "total": e.cost.total}),
                }  # fmt: skip
            case _:
                return
        for template in statements:
            await cur.execute(statement(template, schema), params)
