"""``python -m bench.chaos_analytics``: what the analytics tables hold, as JSON on stdout.

A process of its own because chDB is one store per process, open in one process at a time: the
chaos run stops the API that had it, then asks this. Settings from the environment
(``PARLEY_DATA``, ``CLICKHOUSE_URL``, ``PARLEY_ANALYTICS_DB``: ``projections.settings``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from projections.analytics.projection import NAME
from projections.analytics.sink import AnalyticsSink
from projections.settings import AnalyticsSettings
from read_models import analytics_schema as schema


def tables(sink: AnalyticsSink) -> dict[str, Any]:
    at = sink.checkpoint(NAME)
    events, facts, escalations = (f"{sink.db}.{t}" for t in (schema.EVENTS, schema.FACTS, schema.ESCALATIONS))

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in sink.client.query(sql).result_rows]

    return {
        "checkpoint": at,
        "events": rows(
            f"SELECT count(), uniqExact(aggregate_type, aggregate_id, version) FROM {events} WHERE seq <= {at}"
        )[0],
        "events_above_checkpoint": rows(f"SELECT count() FROM {events} WHERE seq > {at}")[0][0],
        "by_type": dict(rows(f"SELECT event_type, count() FROM {events} WHERE seq <= {at} GROUP BY event_type")),
        "conversations": rows(f"SELECT count() FROM {facts} FINAL")[0][0],
        "escalations": rows(f"SELECT count(), uniqExact(escalation_id) FROM {escalations} WHERE seq <= {at}")[0],
        "dead_letters": sink.dead_letters(),
    }


def main() -> None:
    sink = AnalyticsSink.open(AnalyticsSettings.from_env())
    try:
        json.dump(tables(sink), sys.stdout, default=str)
    finally:
        sink.close()


if __name__ == "__main__":
    main()
