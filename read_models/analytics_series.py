"""Conversations over time: the KPIs of a period, day by day, from the analytics tables.

One query for the whole period (``read_models.analytics`` owns the tables and the period's
figures; this module adds the series beside them). Each day of the period is in the answer, a
day without conversations as zeros. A conversation counts on the day (UTC) it *started*, with
what became of it since: closed, resolved, escalated. Rates are 0 when there is nothing to
divide, as in the KPIs.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import Any

import msgspec

from read_models.analytics import AnalyticsQueries, Period
from read_models.analytics_schema import FACTS


class Day(msgspec.Struct, frozen=True, kw_only=True):
    day: date
    conversations: int
    closed: int
    resolved: int
    escalated: int
    resolution_rate: float  # resolved / closed
    escalation_rate: float  # escalated / conversations


class Series(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    period: Period
    days: list[Day]


def daily(queries: AnalyticsQueries, tenant: str, start: datetime, end: datetime) -> Series:
    """The half-open period ``[start, end)`` (UTC) by day."""
    result = queries.client.query(
        f"""SELECT toDate(started_at) AS day, count() AS conversations,
            countIf(status = 'closed') AS closed,
            countIf(resolution = 'resolved') AS resolved,
            countIf(escalated) AS escalated
        FROM {queries.db}.{FACTS} FINAL
        WHERE tenant = {{tenant:String}}
          AND started_at >= {{start:DateTime64(3, 'UTC')}} AND started_at < {{end:DateTime64(3, 'UTC')}}
        GROUP BY day ORDER BY day""",
        parameters={"tenant": tenant, "start": start, "end": end},
    )
    found: dict[date, dict[str, Any]] = {
        row["day"]: row for row in (dict(zip(result.column_names, r, strict=True)) for r in result.result_rows)
    }
    period = Period.of(start, end)
    days = []
    day = period.start
    while day <= period.end:
        row = found.get(day, {})
        n, closed = int(row.get("conversations", 0)), int(row.get("closed", 0))
        resolved, escalated = int(row.get("resolved", 0)), int(row.get("escalated", 0))
        days.append(
            Day(
                day=day,
                conversations=n,
                closed=closed,
                resolved=resolved,
                escalated=escalated,
                resolution_rate=resolved / closed if closed else 0.0,
                escalation_rate=escalated / n if n else 0.0,
            )
        )
        day += timedelta(days=1)
    return Series(tenant=tenant, period=period, days=days)


async def adaily(queries: AnalyticsQueries, tenant: str, start: datetime, end: datetime) -> Series:
    return await asyncio.to_thread(daily, queries, tenant, start, end)
