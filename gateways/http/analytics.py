"""The seed's Analytics Service (KPIs) and voice analytics, over HTTP, from ClickHouse; its rebuild.

Reads: the analytics projector fills the tables from the event stream (a second or so behind
it), ``read_models.analytics`` queries them. The tenant is always the caller's. Periods are
dates, both ends included (the seed's ``start_date=2025-10-01&end_date=2025-10-11``, or ``start``
and ``end`` for short); without them, the last 30 days up to today. A date that is not one, a
period that ends before it starts, the two names of one end given different days, or a query
parameter an endpoint does not take is a 400 naming the parameter: never silently ignored. So is a
day outside what the analytics tables hold (ClickHouse's DateTime64: 1900 to 2299).

One admin command, for platform engineers: ``POST /api/v1/admin/projections/analytics/rebuild``
rebuilds the tables from the first event while the live ones keep answering
(``projections.analytics.rebuild``), in the process that runs the projector (with chDB, the one
that has the store).

The API provides ``analytics`` (a ``read_models.analytics.AnalyticsQueries``) and
``analytics_service``, or None when this process has no ClickHouse (then 503).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter, ParameterKwarg

from domain.errors import UnavailableError, ValidationError
from gateways.http.auth import Identity, requires
from projections.analytics.rebuild import RebuildReport
from read_models.analytics import AnalyticsQueries, Kpis, Period, ReasonCount, VoiceAnalytics

ANALYSTS = requires("analyst", "org_admin", "platform_engineer", "service")
# A rebuild spans every tenant's analytics and pauses the projector: not a tenant's admin's call.
PLATFORM_ADMINS = requires("platform_engineer")
DEFAULT_DAYS = 30
# The days a period may name: ClickHouse's DateTime64 holds 1900-01-01 to 2299-12-31, and a period
# ends at midnight after its last day.
FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date(2299, 12, 30)
DAY_PATTERN = r"^(19[0-9]{2}|2[0-2][0-9]{2})-[0-9]{2}-[0-9]{2}$"


class EscalationReasons(msgspec.Struct, frozen=True):
    period: Period
    reasons: list[ReasonCount]


def period(request: Request[Identity, Any, Any], *, also: tuple[str, ...] = ()) -> tuple[datetime, datetime]:
    """The request's period (dates, both included) as the half-open UTC interval the queries take.

    Every query parameter must be ``start_date``/``start``, ``end_date``/``end`` or one of ``also``
    (the endpoint's others); anything else is refused, by name."""
    query = request.query_params
    known = (*PERIOD_NAMES, *also)
    unknown = sorted(name for name in query if name not in known)
    if unknown:
        raise ValidationError(
            f"unknown query parameter(s): {', '.join(unknown)}",
            fields={name: f"not a parameter of this endpoint; it takes: {', '.join(known)}" for name in unknown},
        )
    first, first_name = _day(query, "start_date", "start")
    last, last_name = _day(query, "end_date", "end")
    last = last or datetime.now(UTC).date()
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise ValidationError(
            f"the period ends ({last}) before it starts ({first})",
            fields={first_name or "start_date": f"must not be after {last_name or 'end_date'} ({last})"},
        )
    return datetime.combine(first, time(), UTC), datetime.combine(last + timedelta(days=1), time(), UTC)


PERIOD_NAMES = ("start_date", "end_date", "start", "end")


def _day(query: Any, *names: str) -> tuple[date | None, str | None]:
    """The day one end of the period names, and the parameter that named it (its names must agree)."""
    found: dict[str, date] = {}
    for name in names:
        for text in query.getall(name, []):
            try:
                day = date.fromisoformat(text)
            except ValueError:
                raise ValidationError(
                    f"{name} is not a date", fields={name: f"expected a date as YYYY-MM-DD, got {text!r}"}
                ) from None
            if not FIRST_DAY <= day <= LAST_DAY:
                raise ValidationError(
                    f"{name} is out of range", fields={name: f"a day from {FIRST_DAY} to {LAST_DAY}, got {text!r}"}
                )
            if found.get(name, day) != day:
                raise ValidationError(f"{name} is given twice", fields={name: "give it once"})
            found[name] = day
    if len(set(found.values())) > 1:
        raise ValidationError(
            f"{' and '.join(found)} name different days",
            fields={names[1]: f"an alias of {names[0]}: give one, or the same day"},
        )
    given = next(iter(found), None)
    return (found[given], given) if given else (None, None)


def _queries(queries: AnalyticsQueries | None) -> AnalyticsQueries:
    if queries is None:
        raise UnavailableError("analytics are not available in this process (no ClickHouse)")
    return queries


# Declared on each endpoint for the schema and the type check; ``period`` reads them, aliases and all.
def _day_parameter(description: str) -> ParameterKwarg:
    return Parameter(description=description, schema_extra={"pattern": DAY_PATTERN})


StartDate = Annotated[date | None, _day_parameter("first day (UTC), included; default: 30 days before the end")]
EndDate = Annotated[date | None, _day_parameter("last day (UTC), included; default: today")]
Start = Annotated[date | None, _day_parameter("start_date's short name")]
End = Annotated[date | None, _day_parameter("end_date's short name")]


class AnalyticsController(Controller):
    path = "/api/v1"
    tags = ["analytics"]

    @get("/analytics/kpis", opt=ANALYSTS, summary="KPIs for a period")
    async def kpis(
        self,
        request: Request[Identity, Any, Any],
        analytics: NamedDependency[AnalyticsQueries | None],
        start_date: StartDate = None,
        end_date: EndDate = None,
        start: Start = None,
        end: End = None,
        top: Annotated[int, Parameter(ge=1, le=100, description="escalation reasons to list")] = 10,
    ) -> Kpis:
        """Conversations started in the period: resolution and escalation rates, turns, duration,
        sentiment, CSAT and NPS, in total, by channel and by config version; the top escalation reasons."""
        return await _queries(analytics).akpis(request.user.tenant, *period(request, also=("top",)), top=top)

    @get("/analytics/escalation-reasons", opt=ANALYSTS, summary="Top escalation reasons")
    async def escalation_reasons(
        self,
        request: Request[Identity, Any, Any],
        analytics: NamedDependency[AnalyticsQueries | None],
        start_date: StartDate = None,
        end_date: EndDate = None,
        start: Start = None,
        end: End = None,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 10,
    ) -> EscalationReasons:
        """Escalations requested in the period, by trigger, most frequent first."""
        first, last = period(request, also=("limit",))
        reasons = await _queries(analytics).aescalation_reasons(request.user.tenant, first, last, limit=limit)
        return EscalationReasons(Period.of(first, last), reasons)

    @get("/voice/analytics", opt=ANALYSTS, summary="Voice call analytics")
    async def voice(
        self,
        request: Request[Identity, Any, Any],
        analytics: NamedDependency[AnalyticsQueries | None],
        start_date: StartDate = None,
        end_date: EndDate = None,
        start: Start = None,
        end: End = None,
    ) -> VoiceAnalytics:
        """The seed's voice analytics, from the calls initiated in the period: inbound and outbound,
        duration, completion, transfer and resolution rates, latency per stage (p50/p95), cost by
        part at the tenant's unit prices, and the reasons calls were transferred to a human."""
        return await _queries(analytics).avoice(request.user.tenant, *period(request))


class AnalyticsAdminController(Controller):
    path = "/api/v1/admin/projections/analytics"
    tags = ["operations"]

    @post("/rebuild", opt=PLATFORM_ADMINS, status_code=200, summary="Rebuild the analytics tables without downtime")
    async def rebuild(self, analytics_service: NamedDependency[Any]) -> RebuildReport:
        """Replay the whole stream into shadow tables while the live ones keep answering, pause the
        projector, let the shadow catch up, swap the tables, and go on from the new checkpoint.
        Answers when the new tables are live (409 while another rebuild runs)."""
        service = analytics_service
        if service is None:
            raise UnavailableError("analytics are not available in this process (no ClickHouse)")
        report: RebuildReport = await service.rebuild()
        return report
