"""Conversations over time, day by day, for the console's chart: one request for a period.

Beside the KPI endpoints (``gateways.http.analytics``): the same period parameters and rules
(``start_date``/``end_date`` or ``start``/``end``, both days included, the last 30 days by
default; anything else a 400 naming it), the same readers, the caller's tenant.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency

from domain.errors import UnavailableError
from gateways.http.analytics import ANALYSTS, End, EndDate, Start, StartDate, period
from gateways.http.auth import Identity
from read_models.analytics import AnalyticsQueries
from read_models.analytics_series import Series, adaily


class AnalyticsSeriesController(Controller):
    path = "/api/v1/analytics"
    tags = ["analytics"]

    @get("/kpis/daily", opt=ANALYSTS, summary="Conversations over time, by day")
    async def daily(
        self,
        request: Request[Identity, Any, Any],
        analytics: NamedDependency[AnalyticsQueries | None],
        start_date: StartDate = None,
        end_date: EndDate = None,
        start: Start = None,
        end: End = None,
    ) -> Series:
        """Each day of the period (UTC): the conversations started that day, how many of them
        closed, were resolved and were escalated, and the rates."""
        if analytics is None:
            raise UnavailableError("analytics are not available in this process (no ClickHouse)")
        return await adaily(analytics, request.user.tenant, *period(request))
