"""Analytics queries over the ClickHouse tables the analytics projector fills.

A period is half-open, ``[start, end)``, in UTC. Conversations count in the period they *started*
in; escalation reasons in the period the escalation was *requested* in. Facts rows are read with
``FINAL`` (one row per conversation, its latest version).

Definitions (each figure is over the conversations started in the period):

* ``resolution_rate``: resolved / closed (of the conversations that ended, the share whose issue
  was settled; see ``projections.analytics.facts``); ``escalation_rate``: escalated / all;
* ``avg_turns``: customer messages per conversation; ``avg_duration_seconds``: start to close,
  over the closed ones; ``avg_sentiment``: over every turn the AI scored;
* CSAT: the average answer (1 to 5) and the number of answers; NPS: promoters minus detractors
  (the category each answer recorded, ``SurveyAnswered.nps_category``), as a percentage of the
  answers, with the three counts.

Rates are 0 when there is nothing to divide; averages are None.

Voice analytics take the seed's shape, from the calls' own events (``call_facts``, ``call_turns``).
Calls count in the period they were initiated (refused attempts are not calls); turns in the period
they were spoken. Over the calls of the period:

* ``call_breakdown``: inbound and outbound; ``avg_call_duration_seconds``: connected to ended, over
  the ended ones; ``completion_rate``: completed / all (connected, and ended neither abandoned nor
  failed); ``transfer_rate``: transferred to a human / all; ``resolution_rate``: resolved / ended;
* ``performance_metrics``: per stage, p50 and p95 in ms (``latency_ms``: speech to text, the model's
  first token, synthesis' first byte, and end to end: the caller stops speaking to the agent's audio
  starting), ``avg_latency_ms`` the end to end average; ``stt_accuracy`` the transcripts' average
  confidence; ``tts_naturalness`` (a listener's score, 1 to 5) is not measured: 0;
* ``cost_analysis``: each ended call's cost as its end recorded it, at the tenant's unit prices then
  (telephony per minute by direction, transcription per minute, synthesis per 1,000 characters, a
  model request each), summed by part; ``cost_per_call`` over the ended calls;
* ``top_escalation_reasons``: the calls transferred to a human, by the first transfer's trigger (its
  reason when a person asked).
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import Any

import msgspec

from read_models.analytics_schema import CALL_TURNS, CALLS, ESCALATIONS, FACTS

# Shapes ----------------------------------------------------------------------------------------


class Period(msgspec.Struct, frozen=True):
    """The seed's ``period``: the first and the last day, both included."""

    start: date
    end: date

    @classmethod
    def of(cls, start: datetime, end: datetime) -> Period:
        """The days of the half-open interval ``[start, end)``."""
        return cls(start.date(), (end - timedelta(microseconds=1)).date())


class Csat(msgspec.Struct, frozen=True):
    responses: int
    average: float | None


class Nps(msgspec.Struct, frozen=True):
    responses: int
    score: float | None
    promoters: int
    passives: int
    detractors: int


class Outcomes(msgspec.Struct, frozen=True, kw_only=True):
    conversations: int
    closed: int
    resolved: int
    escalated: int
    resolution_rate: float
    escalation_rate: float
    avg_turns: float | None
    avg_duration_seconds: float | None
    avg_sentiment: float | None
    csat: Csat
    nps: Nps


class ChannelOutcomes(Outcomes, frozen=True, kw_only=True):
    channel: str


class ConfigOutcomes(Outcomes, frozen=True, kw_only=True):
    config_id: str
    config_version: int


class ReasonCount(msgspec.Struct, frozen=True):
    reason: str
    count: int
    share: float


class Kpis(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    period: Period
    totals: Outcomes
    by_channel: list[ChannelOutcomes]
    by_config_version: list[ConfigOutcomes]
    top_escalation_reasons: list[ReasonCount]


class CallBreakdown(msgspec.Struct, frozen=True):
    inbound: int = 0
    outbound: int = 0


class Percentiles(msgspec.Struct, frozen=True):
    p50: float | None = None  # None: nothing measured
    p95: float | None = None


class StageLatencies(msgspec.Struct, frozen=True):
    """Milliseconds per stage of a turn (see the module's docstring)."""

    stt: Percentiles = Percentiles()
    llm: Percentiles = Percentiles()
    tts: Percentiles = Percentiles()
    end_to_end: Percentiles = Percentiles()


class VoicePerformance(msgspec.Struct, frozen=True):
    avg_latency_ms: float = 0
    stt_accuracy: float = 0.0
    tts_naturalness: float = 0.0
    latency_ms: StageLatencies = StageLatencies()


class CostBreakdown(msgspec.Struct, frozen=True):
    stt: float = 0.0
    tts: float = 0.0
    llm: float = 0.0
    telephony: float = 0.0


class CostAnalysis(msgspec.Struct, frozen=True):
    total_cost: float = 0.0
    cost_per_call: float = 0.0
    breakdown: CostBreakdown = CostBreakdown()


class VoiceAnalytics(msgspec.Struct, frozen=True, kw_only=True):
    period: Period
    total_calls: int
    call_breakdown: CallBreakdown
    avg_call_duration_seconds: float
    completion_rate: float
    transfer_rate: float
    resolution_rate: float
    performance_metrics: VoicePerformance
    cost_analysis: CostAnalysis
    top_escalation_reasons: list[ReasonCount]


# Queries ---------------------------------------------------------------------------------------

_OUTCOMES = """
    count() AS conversations,
    countIf(status = 'closed') AS closed,
    countIf(resolution = 'resolved') AS resolved,
    countIf(escalated) AS escalated,
    sum(turns) AS turns,
    avgIf(duration_seconds, status = 'closed') AS avg_duration,
    sum(sentiment_sum) AS sentiment_sum,
    sum(sentiment_count) AS sentiment_count,
    countIf(csat_score IS NOT NULL) AS csat_responses,
    avgIf(csat_score, csat_score IS NOT NULL) AS csat_average,
    countIf(nps_category != '') AS nps_responses,
    countIf(nps_category = 'promoter') AS promoters,
    countIf(nps_category = 'passive') AS passives,
    countIf(nps_category = 'detractor') AS detractors"""

_PERIOD = (
    "tenant = {tenant:String}"
    " AND started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}"
)


def _outcomes(row: dict[str, Any]) -> dict[str, Any]:
    n, closed, nps_n = row["conversations"], row["closed"], row["nps_responses"]
    return {
        "conversations": n,
        "closed": closed,
        "resolved": row["resolved"],
        "escalated": row["escalated"],
        "resolution_rate": row["resolved"] / closed if closed else 0.0,
        "escalation_rate": row["escalated"] / n if n else 0.0,
        "avg_turns": row["turns"] / n if n else None,
        "avg_duration_seconds": _number(row["avg_duration"]),
        "avg_sentiment": row["sentiment_sum"] / row["sentiment_count"] if row["sentiment_count"] else None,
        "csat": Csat(row["csat_responses"], _number(row["csat_average"])),
        "nps": Nps(
            nps_n,
            (row["promoters"] - row["detractors"]) * 100 / nps_n if nps_n else None,
            row["promoters"],
            row["passives"],
            row["detractors"],
        ),
    }


def _percentiles(values: list[Any]) -> Percentiles:
    p50, p95 = (_number(v) for v in values)
    return Percentiles(None if p50 is None else round(p50, 1), None if p95 is None else round(p95, 1))


def _number(value: Any) -> float | None:
    """ClickHouse's average of nothing is nan (or NULL): None."""
    if value is None or value != value:
        return None
    return float(value)


class AnalyticsQueries:
    """Blocking queries on a clickhouse-connect client; the ``a``-prefixed ones run in a thread."""

    def __init__(self, client: Any, database: str = "parley") -> None:
        self.client = client
        self.db = database

    def _rows(self, sql: str, **parameters: Any) -> list[dict[str, Any]]:
        result = self.client.query(sql, parameters=parameters, settings={"group_by_use_nulls": 1})
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def kpis(self, tenant: str, start: datetime, end: datetime, *, top: int = 10) -> Kpis:
        rows = self._rows(
            f"""SELECT channel, config_id, config_version, {_OUTCOMES}
            FROM {self.db}.{FACTS} FINAL WHERE {_PERIOD}
            GROUP BY GROUPING SETS ((), (channel), (config_id, config_version))
            ORDER BY conversations DESC, channel, config_id, config_version""",
            tenant=tenant,
            start=start,
            end=end,
        )
        totals = Outcomes(**_outcomes(_EMPTY))
        channels, configs = [], []
        for row in rows:
            if row["channel"] is not None:
                channels.append(ChannelOutcomes(channel=row["channel"], **_outcomes(row)))
            elif row["config_id"] is not None:
                configs.append(
                    ConfigOutcomes(config_id=row["config_id"], config_version=row["config_version"], **_outcomes(row))
                )
            else:
                totals = Outcomes(**_outcomes(row))
        return Kpis(
            tenant=tenant,
            period=Period.of(start, end),
            totals=totals,
            by_channel=channels,
            by_config_version=configs,
            top_escalation_reasons=self.escalation_reasons(tenant, start, end, limit=top),
        )

    def escalation_reasons(
        self, tenant: str, start: datetime, end: datetime, *, limit: int = 10, product_type: str | None = None
    ) -> list[ReasonCount]:
        """Escalations requested in the period, by trigger (the rule or request that raised them)."""
        only = " AND product_type = {product:String}" if product_type else ""
        rows = self._rows(
            f"""SELECT trigger AS reason, count() AS n, sum(n) OVER () AS total
            FROM {self.db}.{ESCALATIONS}
            WHERE tenant = {{tenant:String}} AND time >= {{start:DateTime64(3, 'UTC')}}
              AND time < {{end:DateTime64(3, 'UTC')}}{only}
            GROUP BY trigger ORDER BY n DESC, reason LIMIT {{limit:UInt32}}""",
            tenant=tenant,
            start=start,
            end=end,
            limit=limit,
            product=product_type or "",
        )
        return [ReasonCount(r["reason"], r["n"], r["n"] / r["total"]) for r in rows]

    def voice(self, tenant: str, start: datetime, end: datetime, *, top: int = 10) -> VoiceAnalytics:
        period = {"tenant": tenant, "start": start, "end": end}
        calls = self._rows(
            f"""SELECT count() AS calls,
                countIf(direction = 'inbound') AS inbound,
                countIf(direction = 'outbound') AS outbound,
                countIf(status = 'ended') AS ended,
                countIf(completed) AS completed,
                countIf(transferred) AS transferred,
                countIf(resolution = 'resolved') AS resolved,
                avgIf(duration_seconds, status = 'ended') AS duration,
                sum(stt_confidence_sum) / nullIf(sum(stt_confidence_count), 0) AS stt_accuracy,
                sum(cost_stt) AS stt, sum(cost_tts) AS tts, sum(cost_llm) AS llm,
                sum(cost_telephony) AS telephony, sum(cost_total) AS total
            FROM {self.db}.{CALLS} FINAL WHERE {_PERIOD} AND status != 'refused'""",
            **period,
        )[0]
        latency = self._rows(
            f"""SELECT quantiles(0.5, 0.95)(stt_ms) AS stt, quantiles(0.5, 0.95)(llm_ms) AS llm,
                quantiles(0.5, 0.95)(tts_ms) AS tts, quantiles(0.5, 0.95)(e2e_ms) AS end_to_end,
                avg(e2e_ms) AS average
            FROM {self.db}.{CALL_TURNS}
            WHERE tenant = {{tenant:String}} AND time >= {{start:DateTime64(3, 'UTC')}}
              AND time < {{end:DateTime64(3, 'UTC')}}""",
            **period,
        )[0]
        reasons = self._rows(
            f"""SELECT escalation_reason AS reason, count() AS n, sum(n) OVER () AS total
            FROM {self.db}.{CALLS} FINAL WHERE {_PERIOD} AND transfers > 0
            GROUP BY escalation_reason ORDER BY n DESC, reason LIMIT {{limit:UInt32}}""",
            **period,
            limit=top,
        )
        n, ended = calls["calls"], calls["ended"]
        return VoiceAnalytics(
            period=Period.of(start, end),
            total_calls=n,
            call_breakdown=CallBreakdown(calls["inbound"], calls["outbound"]),
            avg_call_duration_seconds=_number(calls["duration"]) or 0.0,
            completion_rate=calls["completed"] / n if n else 0.0,
            transfer_rate=calls["transferred"] / n if n else 0.0,
            resolution_rate=calls["resolved"] / ended if ended else 0.0,
            performance_metrics=VoicePerformance(
                avg_latency_ms=round(_number(latency["average"]) or 0.0, 1),
                stt_accuracy=round(_number(calls["stt_accuracy"]) or 0.0, 4),
                latency_ms=StageLatencies(
                    *(_percentiles(latency[stage]) for stage in ("stt", "llm", "tts", "end_to_end"))
                ),
            ),
            cost_analysis=CostAnalysis(
                total_cost=round(calls["total"], 4),
                cost_per_call=round(calls["total"] / ended, 4) if ended else 0.0,
                breakdown=CostBreakdown(*(round(calls[part], 4) for part in ("stt", "tts", "llm", "telephony"))),
            ),
            top_escalation_reasons=[ReasonCount(r["reason"], r["n"], r["n"] / r["total"]) for r in reasons],
        )

    # From a running event loop ------------------------------------------------------------

    async def akpis(self, tenant: str, start: datetime, end: datetime, *, top: int = 10) -> Kpis:
        return await asyncio.to_thread(self.kpis, tenant, start, end, top=top)

    async def aescalation_reasons(
        self, tenant: str, start: datetime, end: datetime, *, limit: int = 10
    ) -> list[ReasonCount]:
        return await asyncio.to_thread(self.escalation_reasons, tenant, start, end, limit=limit)

    async def avoice(self, tenant: str, start: datetime, end: datetime) -> VoiceAnalytics:
        return await asyncio.to_thread(self.voice, tenant, start, end)


_EMPTY: dict[str, Any] = {
    "conversations": 0,
    "closed": 0,
    "resolved": 0,
    "escalated": 0,
    "turns": 0,
    "avg_duration": None,
    "sentiment_sum": 0.0,
    "sentiment_count": 0,
    "csat_responses": 0,
    "csat_average": None,
    "nps_responses": 0,
    "promoters": 0,
    "passives": 0,
    "detractors": 0,
}
