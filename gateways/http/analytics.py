"""The seed's Analytics Service (KPIs) and voice analytics, over HTTP, from ClickHouse; its rebuild.

Reads: the analytics projector fills the tables from the event stream (a second or so behind
it), ``read_models.analytics`` queries them. The tenant is always the caller's. Periods are
dates, both ends included (the seed's ``start_date=2025-10-01&end_date=2025-10-11``); without them,
the last 30 days up to today.

One admin command, for platform engineers: ``POST /api/v1/admin/projections/analytics/rebuild``
rebuilds the tables from the first event while the live ones keep answering
(``projections.analytics.rebuild``), in the process that runs the projector (with chDB, the one
that has the store).

The platform provides ``analytics`` (a ``read_models.analytics.AnalyticsQueries``) and
``analytics_service``, or None when this process has no ClickHouse (then 503).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter

from domain.errors import UnavailableError, ValidationError
from gateways.http.auth import Identity, requires
from projections.analytics.rebuild import RebuildReport
from read_models.analytics import AnalyticsQueries, Kpis, Period, ReasonCount, VoiceAnalytics

ANALYSTS = requires("analyst", "org_admin", "platform_engineer", "service")
# A rebuild spans every tenant's analytics and pauses the projector: not a tenant's admin's call.
PLATFORM_ADMINS = requires("platform_engineer")
DEFAULT_DAYS = 30


class EscalationReasons(msgspec.Struct, frozen=True):
    period: Period
    reasons: list[ReasonCount]


def period(start: date | None, end: date | None) -> tuple[datetime, datetime]:
    """Dates, both included, as the half-open UTC interval the queries take."""
    last = end or datetime.now(UTC).date()
    first = start or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise ValidationError("the period ends before it starts", fields={"start": "must not be after the end"})
    return datetime.combine(first, time(), UTC), datetime.combine(last + timedelta(days=1), time(), UTC)


def _queries(platform: Any) -> AnalyticsQueries:
    queries: AnalyticsQueries | None = getattr(platform, "analytics", None)
    if queries is None:
        raise UnavailableError("analytics are not available in this process (no ClickHouse)")
    return queries


Start = Annotated[date | None, Parameter(description="first day (UTC), included; default: 30 days before the end")]
End = Annotated[date | None, Parameter(description="last day (UTC), included; default: today")]


class AnalyticsController(Controller):
    path = "/api/v1"
    tags = ["analytics"]

    @get("/analytics/kpis", opt=ANALYSTS, summary="KPIs for a period")
    async def kpis(
        self,
        request: Request[Identity, Any, Any],
        platform: NamedDependency[Any],
        start: Start = None,
        end: End = None,
        top: Annotated[int, Parameter(ge=1, le=100, description="escalation reasons to list")] = 10,
    ) -> Kpis:
        """Conversations started in the period: resolution and escalation rates, turns, duration,
        sentiment, CSAT and NPS, in total, by channel and by config version; the top escalation reasons."""
        return await _queries(platform).akpis(request.user.tenant, *period(start, end), top=top)

    @get("/analytics/escalation-reasons", opt=ANALYSTS, summary="Top escalation reasons")
    async def escalation_reasons(
        self,
        request: Request[Identity, Any, Any],
        platform: NamedDependency[Any],
        start: Start = None,
        end: End = None,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 10,
    ) -> EscalationReasons:
        """Escalations requested in the period, by trigger, most frequent first."""
        first, last = period(start, end)
        reasons = await _queries(platform).aescalation_reasons(request.user.tenant, first, last, limit=limit)
        return EscalationReasons(Period(first, last), reasons)

    @get("/voice/analytics", opt=ANALYSTS, summary="Voice call analytics")
    async def voice(
        self,
        request: Request[Identity, Any, Any],
        platform: NamedDependency[Any],
        start_date: Start = None,
        end_date: End = None,
    ) -> VoiceAnalytics:
        """The seed's voice analytics: voicebot conversations as calls; speech and cost figures stay
        zero until voice calls record them."""
        return await _queries(platform).avoice(request.user.tenant, *period(start_date, end_date))


class AnalyticsAdminController(Controller):
    path = "/api/v1/admin/projections/analytics"
    tags = ["operations"]

    @post("/rebuild", opt=PLATFORM_ADMINS, status_code=200, summary="Rebuild the analytics tables without downtime")
    async def rebuild(self, platform: NamedDependency[Any]) -> RebuildReport:
        """Replay the whole stream into shadow tables while the live ones keep answering, pause the
        projector, let the shadow catch up, swap the tables, and go on from the new checkpoint.
        Answers when the new tables are live (409 while another rebuild runs)."""
        service = getattr(platform, "analytics_service", None)
        if service is None:
            raise UnavailableError("analytics are not available in this process (no ClickHouse)")
        report: RebuildReport = await service.rebuild()
        return report
