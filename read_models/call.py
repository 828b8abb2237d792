"""The calls read model: each call's state, its transcript with speakers and confidences, its tools
and recordings, as the seed's Voice API shows them (``GET /api/v1/voice/calls/{call_id}``).

Filled by ``projections.call`` from the call events. Every query names the tenant.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from read_models.migrations import PROJECTOR_TABLES, Migration, ReadModel

TABLES = (
    """
    CREATE TABLE calls (
        tenant text NOT NULL,
        call_id text NOT NULL,
        user_id text NOT NULL,
        config_id text NOT NULL,
        config_version integer NOT NULL,
        direction text NOT NULL,
        transport text NOT NULL,
        phone_number text,
        status text NOT NULL,
        initiated_at timestamptz NOT NULL,
        connected_at timestamptz,
        ended_at timestamptz,
        duration_seconds double precision,
        resolution_status text,
        end_reason text,
        sentiment_sum double precision NOT NULL DEFAULT 0,
        sentiment_count integer NOT NULL DEFAULT 0,
        sentiment_last double precision,
        room_name text,
        sip_session_id text,
        transfer jsonb,
        refusal text,
        analytics jsonb,
        cost jsonb,
        version integer NOT NULL,
        PRIMARY KEY (tenant, call_id)
    )
    """,
    """
    CREATE TABLE call_turns (
        tenant text NOT NULL,
        call_id text NOT NULL,
        version integer NOT NULL,
        ordinal integer NOT NULL,
        kind text NOT NULL,  -- user, agent, tool
        text text,
        confidence double precision,
        tool text,
        source text,
        e2e_latency_ms double precision,
        llm_ttft_ms double precision,
        tts_ttfb_ms double precision,
        stt_latency_ms double precision,
        interrupted boolean NOT NULL DEFAULT false,
        at timestamptz NOT NULL,
        PRIMARY KEY (tenant, call_id, version, ordinal)
    )
    """,
    """
    CREATE TABLE call_recordings (
        tenant text NOT NULL,
        call_id text NOT NULL,
        recording_id text NOT NULL,
        track text NOT NULL,
        uri text NOT NULL,
        duration_seconds double precision NOT NULL,
        at timestamptz NOT NULL,
        PRIMARY KEY (tenant, call_id, recording_id)
    )
    """,
    "CREATE INDEX calls_by_time ON calls (tenant, initiated_at DESC)",
)

CALLS = ReadModel(
    name="calls",
    schema="rm_calls",
    migrations=(
        Migration(1, "projector checkpoint and dead letters", PROJECTOR_TABLES),
        Migration(2, "calls, their turns and recordings", TABLES),
    ),
)

# The seed's status words for the call's states.
STATUS = {
    "initiating": "initiating",
    "ringing": "ringing",
    "in_progress": "in_progress",
    "transferring": "transferring",
    "transferred": "transferred",
    "ended": "ended",
    "refused": "refused",
}


class TranscriptLine(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    speaker: str
    text: str | None
    timestamp: str
    confidence: float | None = None
    source: str | None = None
    interrupted: bool = False


class ToolExecuted(msgspec.Struct, frozen=True):
    tool: str
    timestamp: str


class TransferView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    status: str
    transfer_id: str | None = None
    transfer_type: str | None = None
    agent_id: str | None = None
    agent_name: str | None = None
    reason: str | None = None
    failure: str | None = None


class RecordingView(msgspec.Struct, frozen=True, kw_only=True):
    recording_id: str
    track: str
    url: str
    duration_seconds: float


class CallLatencies(msgspec.Struct, frozen=True, kw_only=True):
    """A call's per-stage latencies (the seed's end-of-call ``analytics``)."""

    stt_latency_avg_ms: float | None = None
    tts_latency_avg_ms: float | None = None
    llm_latency_avg_ms: float | None = None
    total_latency_p95_ms: float | None = None


class CallCostView(msgspec.Struct, frozen=True, kw_only=True):
    stt: float = 0.0
    tts: float = 0.0
    llm: float = 0.0
    telephony: float = 0.0
    total: float = 0.0


class CallView(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's call status."""

    call_id: str
    product_type: str
    status: str
    phone_number: str | None
    direction: str
    started_at: str | None
    duration_seconds: int
    transcript: list[TranscriptLine]
    tools_executed: list[ToolExecuted]
    sentiment_score: float | None
    recording_url: str | None
    livekit_room_id: str | None
    participant_count: int
    config_id: str
    config_version: int
    user_id: str
    transfer: TransferView | None = None
    resolution_status: str | None = None
    ended_at: str | None = None
    recordings: list[RecordingView] = []
    analytics: CallLatencies | None = None
    cost: CallCostView | None = None


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _q(query: str) -> sql.Composed:
    return sql.SQL(query).format(s=sql.Identifier(CALLS.schema))


async def get_call(conn: AsyncConnection[Any], tenant: str, call_id: str, *, recording_url: str) -> CallView | None:
    cur = await conn.execute(
        _q(
            "SELECT user_id, config_id, config_version, direction, phone_number, status, initiated_at, connected_at,"
            " ended_at, duration_seconds, resolution_status, sentiment_sum, sentiment_count, room_name, transfer,"
            " analytics, cost FROM {s}.calls WHERE tenant = %s AND call_id = %s"
        ),
        [tenant, call_id],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    (user_id, config_id, version, direction, phone, status, initiated, connected, ended, duration, resolution,
     s_sum, s_count, room, transfer, analytics, cost) = row  # fmt: skip
    cur = await conn.execute(
        _q(
            "SELECT kind, text, confidence, tool, source, interrupted, at FROM {s}.call_turns"
            " WHERE tenant = %s AND call_id = %s ORDER BY version, ordinal"
        ),
        [tenant, call_id],
    )
    transcript, tools = [], []
    for kind, text, confidence, tool, source, interrupted, at in await cur.fetchall():
        if kind == "tool":
            tools.append(ToolExecuted(tool=tool, timestamp=iso(at) or ""))
        else:
            transcript.append(
                TranscriptLine(
                    speaker=kind,
                    text=text,
                    timestamp=iso(at) or "",
                    confidence=confidence,
                    source=source if source not in (None, "speech") else None,
                    interrupted=bool(interrupted),
                )
            )
    cur = await conn.execute(
        _q(
            "SELECT recording_id, track, uri, duration_seconds FROM {s}.call_recordings"
            " WHERE tenant = %s AND call_id = %s ORDER BY track"
        ),
        [tenant, call_id],
    )
    recordings = [
        RecordingView(recording_id=rid, track=track, url=recording_url.format(call_id=call_id, recording_id=rid),
                      duration_seconds=seconds)
        for rid, track, _uri, seconds in await cur.fetchall()
    ]  # fmt: skip
    live_end = ended or datetime.now(UTC)
    seconds = duration if duration is not None else ((live_end - connected).total_seconds() if connected else 0)
    return CallView(
        call_id=call_id,
        product_type="voicebot",
        status=STATUS.get(status, status),
        phone_number=phone,
        direction=direction,
        started_at=iso(connected or initiated),
        duration_seconds=round(seconds or 0),
        transcript=transcript,
        tools_executed=tools,
        sentiment_score=None if not s_count else round(s_sum / s_count, 3),
        recording_url=recordings[0].url if recordings else None,
        livekit_room_id=room,
        participant_count=0 if status in ("ended", "refused") else 2 if status in ("in_progress", "transferred") else 1,
        config_id=config_id,
        config_version=version,
        user_id=user_id,
        transfer=None if transfer is None else msgspec.convert(transfer, TransferView),
        resolution_status=resolution,
        ended_at=iso(ended),
        recordings=recordings,
        analytics=None if analytics is None else msgspec.convert(analytics, CallLatencies),
        cost=None if cost is None else msgspec.convert(cost, CallCostView),
    )


class CallQueries:
    """The calls read model's queries over a connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def get(self, tenant: str, call_id: str, *, recording_url: str) -> CallView | None:
        async with self.pool.connection() as conn:
            return await get_call(conn, tenant, call_id, recording_url=recording_url)


async def recording_uri(conn: AsyncConnection[Any], tenant: str, call_id: str, recording_id: str) -> str | None:
    cur = await conn.execute(
        _q("SELECT uri FROM {s}.call_recordings WHERE tenant = %s AND call_id = %s AND recording_id = %s"),
        [tenant, call_id, recording_id],
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])
