"""The analytics projection: every event into ClickHouse, and the facts the KPIs are computed from.

``projection`` the projection (a pipelined projection of ``projections.runner``) and its runner ·
``facts`` the conversation and call folds · ``sink`` ClickHouse (chDB embedded, or a server with
``CLICKHOUSE_URL``): its writes and its checkpoints · ``rebuild`` shadow tables swapped in without
downtime · ``service`` the runner and the queries inside the API process ·
``python -m projections.analytics run|rebuild|status``. The tables and their rows are
``read_models.analytics_schema`` (and, generated from it, ``infra/clickhouse/cluster.sql``); the
queries over them ``read_models.analytics``.
"""
