"""The analytics projection: every event into ClickHouse, and the facts the KPIs are computed from.

``schema`` the tables and their rows · ``decode`` commits to rows, personal data blanked ·
``facts`` the conversation fold · ``sink`` ClickHouse
(chDB embedded, or a server with ``CLICKHOUSE_URL``) · ``runner`` batches, checkpoint,
exactly-once · ``rebuild`` shadow tables swapped in without downtime · ``service`` the runner and
the queries inside the API process · ``python -m projections.analytics run|rebuild|status``.
Queries over the tables are in ``read_models.analytics``; the cluster form of the tables in
``infra/clickhouse/cluster.sql``.
"""
