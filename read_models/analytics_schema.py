"""The analytics tables in ClickHouse, the rows the projector writes into them, and their cluster form.

Every event lands once in ``events``; the projector also folds each conversation into one row of
``conversation_facts`` and writes a row per escalation into ``escalations``, and folds each phone
call into one row of ``call_facts`` and writes a row per utterance, with its stages' latencies, into
``call_turns``. ``config_version_outcomes`` is a view over the conversation facts. Two kinds of
table, two ways of staying exact under replays:

* **Immutable rows, one per event** (``events``, ``escalations``, ``call_turns``): plain
  ``MergeTree``. A row carries the stream sequence of its commit (``seq``, with a min-max index).
  Rows are written before the checkpoint moves, so after a crash every row above the checkpoint
  belongs to a batch that was never checkpointed: the projector deletes them at start
  (``DELETE ... WHERE seq > checkpoint``, ``SEQ_TABLES``) and the replay writes them again, once.
* **One row per aggregate, rewritten as it changes** (``conversation_facts``, ``call_facts``):
  ``ReplacingMergeTree(version)``, keyed by conversation (call). A row is a pure function of the
  conversation's events up to ``version``, and the fold applies an event only when its version is
  above the row's, so a replayed event is a no-op and a re-written row is the same row. Queries
  read it with ``FINAL``.

``checkpoint`` holds the last stream sequence the tables account for, written after a batch's rows
(``ReplacingMergeTree(last_seq)``, read with ``max``). ``dead_letters`` keeps the commits that could
not be decoded, by sequence. ``schema_digest`` names the shape the tables were made with: tables of
another shape are dropped and filled again from the first event (``AnalyticsSink.ensure_schema``).

Times are the domain's (an event class's ``time_field``: when a message was received, a
conversation started), not when the commit reached the stream: a history written later still lands
in its months. Personal fields are blank in ``payload``: analytics needs no personal data.

One source for both deployments: ``statements(db)`` makes the tables on chDB or a single server;
``cluster_sql()`` writes the same tables as replicated shards behind ``Distributed`` ones, into
``infra/clickhouse/cluster.sql`` (``python -m read_models.analytics_schema``; a test keeps the file
up to date).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

# Rows ------------------------------------------------------------------------------------------
# ``array_like`` Structs encode as MessagePack arrays in column order; a batch is those arrays one
# after another, each read by ClickHouse as one ``Tuple`` value (``MsgPack`` format) into the
# table's input (``input_statements``). Times are epoch milliseconds, which MessagePack gives a
# ``DateTime64(3)`` as is. Rows hold no cycles, so the garbage collector does not track them
# (``gc=False``): a replay makes millions, and scanning them cost as much as decoding.


class EventRow(msgspec.Struct, array_like=True, gc=False):
    tenant: str
    aggregate_type: str
    aggregate_id: str
    version: int
    seq: int
    event_type: str
    time: int  # epoch milliseconds
    recorded_at: int
    command: str
    command_id: str
    actor: str
    correlation_id: str
    payload: bytes  # JSON


class EscalationRow(msgspec.Struct, array_like=True, gc=False):
    tenant: str
    conversation_id: str
    escalation_id: str
    seq: int
    version: int
    time: int  # epoch milliseconds
    trigger: str
    reason: str
    urgency: str
    config_id: str
    config_version: int
    channel: str
    product_type: str


class ConversationFacts(msgspec.Struct, array_like=True, gc=False):
    """One conversation, folded from its events (see ``projections.analytics.facts``)."""

    tenant: str
    conversation_id: str
    version: int = 0  # the conversation's version this row accounts for
    seq: int = 0  # the stream sequence of the last commit folded in
    started_at: int = 0  # epoch milliseconds
    last_event_at: int = 0
    closed_at: int | None = None
    config_id: str = ""
    config_version: int = 0
    channel: str = ""
    product_type: str = ""
    status: str = "active"  # active | escalated | closed
    close_reason: str = ""
    resolution: str = "open"  # open | resolved | unresolved
    resolved_by: str = ""  # ai | human, once resolved
    turns: int = 0  # customer messages
    agent_replies: int = 0  # answers from the AI
    human_replies: int = 0  # answers from a human agent
    escalated: bool = False
    escalations: int = 0
    escalation_trigger: str = ""  # the first escalation's
    escalation_reason: str = ""
    agent_assigned: bool = False
    agent_unavailable: bool = False
    sentiment_sum: float = 0.0
    sentiment_count: int = 0
    sentiment_min: float | None = None
    sentiment_last: float | None = None
    tools: list[str] = []
    tool_calls: int = 0
    tool_errors: int = 0
    llm_fallbacks: int = 0
    cross_sell_offers: int = 0
    surveys_sent: int = 0
    surveys_answered: int = 0
    nps_score: int | None = None
    nps_category: str = ""  # the answered survey's (``SurveyAnswered.nps_category``); "" without one
    csat_score: int | None = None
    csat_questions: list[str] = []  # ids of the CSAT questions in the surveys sent


class CallFacts(msgspec.Struct, array_like=True, gc=False):
    """One phone call, folded from its events (see ``projections.analytics.facts``)."""

    tenant: str
    call_id: str
    version: int = 0  # the call's version this row accounts for
    seq: int = 0
    started_at: int = 0  # when it was initiated, epoch milliseconds
    last_event_at: int = 0
    connected_at: int | None = None
    ended_at: int | None = None
    config_id: str = ""
    config_version: int = 0
    direction: str = ""  # inbound | outbound
    transport: str = ""
    product_type: str = ""
    status: str = "initiating"  # initiating | ringing | in_progress | transferring | transferred | ended | refused
    end_reason: str = ""
    resolution: str = ""  # the end's: resolved | unresolved | transferred | abandoned | failed ("" until it ends)
    completed: bool = False  # connected, and ended neither abandoned nor failed
    duration_seconds: float = 0.0  # connected to ended, as the end recorded it
    caller_turns: int = 0
    agent_turns: int = 0
    barge_ins: int = 0  # agent turns the caller interrupted
    stt_confidence_sum: float = 0.0
    stt_confidence_count: int = 0
    transfers: int = 0  # transfers requested
    transferred: bool = False  # one connected
    transfer_failures: int = 0
    escalation_reason: str = ""  # the first transfer's trigger (its reason when a person asked)
    tool_calls: int = 0
    tool_errors: int = 0
    speech_interruptions: int = 0  # a speech provider's connection lost mid-call
    sentiment_sum: float = 0.0
    sentiment_count: int = 0
    stt_seconds: float = 0.0
    tts_characters: int = 0
    llm_requests: int = 0
    cost_stt: float = 0.0  # the end's cost, at the tenant's unit prices then (USD)
    cost_tts: float = 0.0
    cost_llm: float = 0.0
    cost_telephony: float = 0.0
    cost_total: float = 0.0


class CallTurnRow(msgspec.Struct, array_like=True, gc=False):
    """One utterance of a call, with the latencies of the stages it went through (ms; None: not measured)."""

    tenant: str
    call_id: str
    seq: int
    version: int
    time: int  # epoch milliseconds
    speaker: str  # caller | agent
    stt_ms: float | None  # end of speech -> final transcript
    end_of_turn_ms: float | None  # end of speech -> turn decided
    llm_ms: float | None  # time to the model's first token
    tts_ms: float | None  # time to the synthesis' first byte
    e2e_ms: float | None  # the caller stopped speaking -> the agent's audio started
    interrupted: bool


class DeadLetterRow(msgspec.Struct, array_like=True, gc=False):
    seq: int
    subject: str
    error: str
    at: int  # epoch milliseconds


def columns(row_type: type[msgspec.Struct]) -> list[str]:
    return list(row_type.__struct_fields__)


# Tables ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A table, described once for both forms (single node and cluster).

    ``columns``: ``name type`` lines (a codec, an ``ALIAS`` or an ``INDEX`` may follow); ``row``:
    the Struct its input takes (its fields are the first columns, in order); ``shard_by``: the
    cluster's sharding key (None: a small table, one replication group over every node).
    """

    name: str
    columns: tuple[str, ...]
    engine: str  # MergeTree, ReplacingMergeTree(version), ...
    keys: str  # PARTITION BY / ORDER BY
    row: type[msgspec.Struct] | None = None
    shard_by: str | None = None
    dedup: bool = False  # remember the tokens of recent inserts (single node; replicated tables do anyway)

    def column_type(self, column: str) -> str:
        """A column's type as declared, codec left out."""
        for line in self.columns:
            name, _, rest = line.partition(" ")
            if name == column:
                return rest.split(" CODEC(")[0]
        raise KeyError(f"{self.name} has no column {column}")


EVENTS = "events"
FACTS = "conversation_facts"
ESCALATIONS = "escalations"
CALLS = "call_facts"
CALL_TURNS = "call_turns"
CHECKPOINT = "checkpoint"
DEAD_LETTERS = "dead_letters"
DIGEST = "schema_digest"
OUTCOMES = "config_version_outcomes"

# Tables whose rows carry the sequence of their commit: the rows of a batch never checkpointed are
# deleted from them at start.
SEQ_TABLES = (EVENTS, ESCALATIONS, CALL_TURNS)

_TABLES = (
    Table(
        EVENTS,
        (
            "tenant LowCardinality(String)",
            "aggregate_type LowCardinality(String)",
            "aggregate_id String",
            "version UInt32",
            "seq UInt64",
            "event_type LowCardinality(String)",
            "time DateTime64(3, 'UTC')",
            "recorded_at DateTime64(3, 'UTC')",
            "command LowCardinality(String)",
            "command_id String",
            "actor String",
            "correlation_id String",
            "payload String CODEC(ZSTD(1))",
            "INDEX seq_range seq TYPE minmax GRANULARITY 1",
            "INDEX aggregate aggregate_id TYPE bloom_filter(0.01) GRANULARITY 4",
        ),
        "MergeTree",
        "PARTITION BY toYYYYMM(time)\nORDER BY (tenant, time, aggregate_type, aggregate_id, version)",
        row=EventRow,
        shard_by="cityHash64(tenant, aggregate_id)",
        dedup=True,
    ),
    Table(
        FACTS,
        (
            "tenant LowCardinality(String)",
            "conversation_id String",
            "version UInt32",
            "seq UInt64",
            "started_at DateTime64(3, 'UTC')",
            "last_event_at DateTime64(3, 'UTC')",
            "closed_at Nullable(DateTime64(3, 'UTC'))",
            "config_id LowCardinality(String)",
            "config_version UInt32",
            "channel LowCardinality(String)",
            "product_type LowCardinality(String)",
            "status LowCardinality(String)",
            "close_reason LowCardinality(String)",
            "resolution LowCardinality(String)",
            "resolved_by LowCardinality(String)",
            "turns UInt32",
            "agent_replies UInt32",
            "human_replies UInt32",
            "escalated Bool",
            "escalations UInt16",
            "escalation_trigger LowCardinality(String)",
            "escalation_reason String",
            "agent_assigned Bool",
            "agent_unavailable Bool",
            "sentiment_sum Float64",
            "sentiment_count UInt32",
            "sentiment_min Nullable(Float32)",
            "sentiment_last Nullable(Float32)",
            "tools Array(LowCardinality(String))",
            "tool_calls UInt32",
            "tool_errors UInt32",
            "llm_fallbacks UInt32",
            "cross_sell_offers UInt32",
            "surveys_sent UInt16",
            "surveys_answered UInt16",
            "nps_score Nullable(UInt8)",
            "nps_category LowCardinality(String)",
            "csat_score Nullable(UInt8)",
            "csat_questions Array(String)",
            "duration_seconds Float64 ALIAS"
            " dateDiff('millisecond', started_at, ifNull(closed_at, last_event_at)) / 1000",
            "INDEX conversation conversation_id TYPE bloom_filter(0.01) GRANULARITY 4",
        ),
        "ReplacingMergeTree(version)",
        "PARTITION BY toYYYYMM(started_at)\nORDER BY (tenant, started_at, conversation_id)",
        row=ConversationFacts,
        shard_by="cityHash64(tenant, conversation_id)",
    ),
    Table(
        ESCALATIONS,
        (
            "tenant LowCardinality(String)",
            "conversation_id String",
            "escalation_id String",
            "seq UInt64",
            "version UInt32",
            "time DateTime64(3, 'UTC')",
            "trigger LowCardinality(String)",
            "reason String",
            "urgency LowCardinality(String)",
            "config_id LowCardinality(String)",
            "config_version UInt32",
            "channel LowCardinality(String)",
            "product_type LowCardinality(String)",
            "INDEX seq_range seq TYPE minmax GRANULARITY 1",
        ),
        "MergeTree",
        "PARTITION BY toYYYYMM(time)\nORDER BY (tenant, time, conversation_id, escalation_id)",
        row=EscalationRow,
        shard_by="cityHash64(tenant, conversation_id)",
        dedup=True,
    ),
    Table(
        CALLS,
        (
            "tenant LowCardinality(String)",
            "call_id String",
            "version UInt32",
            "seq UInt64",
            "started_at DateTime64(3, 'UTC')",
            "last_event_at DateTime64(3, 'UTC')",
            "connected_at Nullable(DateTime64(3, 'UTC'))",
            "ended_at Nullable(DateTime64(3, 'UTC'))",
            "config_id LowCardinality(String)",
            "config_version UInt32",
            "direction LowCardinality(String)",
            "transport LowCardinality(String)",
            "product_type LowCardinality(String)",
            "status LowCardinality(String)",
            "end_reason LowCardinality(String)",
            "resolution LowCardinality(String)",
            "completed Bool",
            "duration_seconds Float64",
            "caller_turns UInt32",
            "agent_turns UInt32",
            "barge_ins UInt32",
            "stt_confidence_sum Float64",
            "stt_confidence_count UInt32",
            "transfers UInt16",
            "transferred Bool",
            "transfer_failures UInt16",
            "escalation_reason LowCardinality(String)",
            "tool_calls UInt32",
            "tool_errors UInt32",
            "speech_interruptions UInt16",
            "sentiment_sum Float64",
            "sentiment_count UInt32",
            "stt_seconds Float64",
            "tts_characters UInt32",
            "llm_requests UInt32",
            "cost_stt Float64",
            "cost_tts Float64",
            "cost_llm Float64",
            "cost_telephony Float64",
            "cost_total Float64",
            "INDEX call call_id TYPE bloom_filter(0.01) GRANULARITY 4",
        ),
        "ReplacingMergeTree(version)",
        "PARTITION BY toYYYYMM(started_at)\nORDER BY (tenant, started_at, call_id)",
        row=CallFacts,
        shard_by="cityHash64(tenant, call_id)",
    ),
    Table(
        CALL_TURNS,
        (
            "tenant LowCardinality(String)",
            "call_id String",
            "seq UInt64",
            "version UInt32",
            "time DateTime64(3, 'UTC')",
            "speaker LowCardinality(String)",
            "stt_ms Nullable(Float64)",
            "end_of_turn_ms Nullable(Float64)",
            "llm_ms Nullable(Float64)",
            "tts_ms Nullable(Float64)",
            "e2e_ms Nullable(Float64)",
            "interrupted Bool",
            "INDEX seq_range seq TYPE minmax GRANULARITY 1",
        ),
        "MergeTree",
        "PARTITION BY toYYYYMM(time)\nORDER BY (tenant, time, call_id, version)",
        row=CallTurnRow,
        shard_by="cityHash64(tenant, call_id)",
        dedup=True,
    ),
    Table(
        CHECKPOINT,
        ("projector LowCardinality(String)", "last_seq UInt64", "updated_at DateTime64(3, 'UTC') DEFAULT now64(3)"),
        "ReplacingMergeTree(last_seq)",
        "ORDER BY projector",
    ),
    Table(
        DEAD_LETTERS,
        ("seq UInt64", "subject String", "error String", "at DateTime64(3, 'UTC')"),
        "ReplacingMergeTree",
        "ORDER BY seq",
        row=DeadLetterRow,
    ),
    Table(
        DIGEST,
        ("digest String", "at DateTime64(3, 'UTC') DEFAULT now64(3)"),
        "ReplacingMergeTree(at)",
        "ORDER BY digest",
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in _TABLES}
ROW_TYPES: dict[str, type[msgspec.Struct]] = {t.name: t.row for t in _TABLES if t.row is not None}

VIEWS: dict[str, str] = {
    OUTCOMES: f"""SELECT
    tenant,
    config_id,
    config_version,
    count() AS conversations,
    countIf(resolution = 'resolved') AS resolved,
    countIf(escalated) AS escalated,
    countIf(status = 'closed') AS closed,
    avg(turns) AS avg_turns,
    avg(duration_seconds) AS avg_duration_seconds,
    sum(sentiment_sum) / nullIf(sum(sentiment_count), 0) AS avg_sentiment,
    avgIf(csat_score, csat_score IS NOT NULL) AS csat,
    countIf(nps_category != '') AS nps_responses,
    (countIf(nps_category = 'promoter') - countIf(nps_category = 'detractor')) * 100
        / nullIf(countIf(nps_category != ''), 0) AS nps,
    min(started_at) AS first_conversation_at,
    max(started_at) AS last_conversation_at
FROM {{db}}.{FACTS} FINAL
GROUP BY tenant, config_id, config_version""",
}

# An HTTP insert retried by the client after it actually landed is dropped by its token
# (``insert_deduplication_token``); a non-replicated table remembers the last tokens only with this.
_DEDUP = "non_replicated_deduplication_window = 1000"


def input_table(table: str) -> str:
    return f"{table}_input"


def input_view(table: str) -> str:
    return f"{table}_rows"


def input_type(table: str, column: str) -> str:
    """The type a row's value is read as: the column's, but a Python float is a MessagePack float64,
    which ClickHouse does not read as ``Float32`` (the view narrows it)."""
    return TABLES[table].column_type(column).replace("Float32", "Float64")


def _body(table: Table) -> str:
    return ",\n".join(f"    {line}" for line in table.columns)


def _create(table: Table, db: str) -> str:
    settings = f"\nSETTINGS {_DEDUP}" if table.dedup else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {db}.{table.name} (\n{_body(table)}\n) ENGINE = {table.engine}\n"
        f"{table.keys}{settings}"
    )


# Inputs ----------------------------------------------------------------------------------------
# MessagePack has no rows: ClickHouse reads one value per column, and an encoded row is one array.
# So a row table is written through an input that takes each row as one ``Tuple`` value: a
# ``Null`` table (it keeps nothing) and a materialized view that spreads the tuple over the
# table's columns. The engine reads MessagePack for about half the CPU ``JSONCompactEachRow``
# took (no JSON text to scan, no escapes), and msgspec writes it faster too. An insert's
# ``insert_deduplication_token`` reaches the table through the view
# (``deduplicate_blocks_in_dependent_materialized_views``).


def _input(table: Table, db: str, on_cluster: str = "") -> list[str]:
    assert table.row is not None
    names = columns(table.row)
    fields = ",\n".join(f"    {name} {input_type(table.name, name)}" for name in names)
    spread = ",\n".join(f"    tupleElement(row, '{name}') AS `{name}`" for name in names)
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{input_table(table.name)}{on_cluster}"
        f" (row Tuple(\n{fields}\n)) ENGINE = Null",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{input_view(table.name)}{on_cluster} TO {db}.{table.name} AS\n"
        f"SELECT\n{spread}\nFROM {db}.{input_table(table.name)}",
    ]


def input_statements(db: str) -> list[str]:
    """Each row table's input table and view (see above)."""
    return [statement for t in _TABLES if t.row is not None for statement in _input(t, db)]


def statements(db: str) -> list[str]:
    """Everything to create on chDB or a single server, in order (idempotent)."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        *(_create(t, db) for t in _TABLES),
        *(f"CREATE VIEW IF NOT EXISTS {db}.{name} AS\n{view.format(db=db)}" for name, view in VIEWS.items()),
        *input_statements(db),
    ]


def drop_statements(db: str) -> list[str]:
    return (
        [f"DROP VIEW IF EXISTS {db}.{input_view(name)}" for name in ROW_TYPES]
        + [f"DROP TABLE IF EXISTS {db}.{input_table(name)}" for name in ROW_TYPES]
        + [f"DROP VIEW IF EXISTS {db}.{name}" for name in VIEWS]
        + [f"DROP TABLE IF EXISTS {db}.{name}" for name in TABLES]
    )


def digest() -> str:
    """The shape of the tables: it changes whenever a statement does."""
    return hashlib.sha256("\n;\n".join(statements("db")).encode()).hexdigest()[:16]


# Cluster ---------------------------------------------------------------------------------------

CLUSTER = "parley"
CLUSTER_DB = "parley"
CLUSTER_FILE = Path(__file__).resolve().parent.parent / "infra" / "clickhouse" / "cluster.sql"

_CLUSTER_HEADER = """\
-- Parley's analytics tables on a ClickHouse cluster: replicated local tables behind Distributed ones.
-- Generated from read_models/analytics_schema.py (python -m read_models.analytics_schema): do not edit.
--
-- For when one machine is no longer enough (chDB, or a single server through CLICKHOUSE_URL,
-- runs read_models/analytics_schema.py's statements as they are). Columns, partitions, sort keys
-- and engines are the same; each table with a sharding key becomes
--
--   parley.<table>_local   Replicated*MergeTree on every node (one copy per replica of its shard)
--   parley.<table>         Distributed over <table>_local: what the projector writes and the
--                          queries (read_models/analytics.py) read, under the names they use today
--
-- Assumed: a cluster named `parley` in remote_servers (e.g. 3 shards x 2 replicas), ClickHouse
-- Keeper, and the macros {shard} and {replica} on each node. Apply with
-- `clickhouse-client --multiquery < infra/clickhouse/cluster.sql`.
--
-- Sharding keeps what must meet on one shard together:
--   * conversation_facts by (tenant, conversation_id): every version of a conversation's row lands
--     on the same shard, so ReplacingMergeTree and FINAL (applied shard by shard) still keep one;
--   * escalations by the same key, events by (tenant, aggregate_id): an aggregate's history
--     stays on one shard (an audit of one aggregate reads one shard); call_facts and call_turns
--     by (tenant, call_id) likewise;
--   * checkpoint and dead_letters are small: one replication group spanning every node (the
--     same Keeper path everywhere), read and written as ordinary tables.
-- A tenant big enough to need its own machines gets a cluster of its own (another
-- CLICKHOUSE_URL and database); the sharding above spreads one tenant's conversations.
--
-- What the projector must do differently on a cluster (projections/analytics/sink.py):
--   * insert synchronously through the Distributed tables, so that a batch's rows are on their
--     shards before its checkpoint is written: SETTINGS distributed_foreground_insert = 1,
--     insert_quorum = 'auto' (a majority of each shard's replicas), insert_quorum_parallel = 1;
--   * at start, delete the rows above the checkpoint from the local tables on every node:
--     DELETE FROM parley.<table>_local ON CLUSTER parley WHERE seq > {checkpoint}
--     for each table with a seq column (events, escalations, ...; a Distributed table takes no DELETE);
--   * keep insert_deduplication_token per batch and table: replicated tables deduplicate
--     retried inserts by it (replicated_deduplication_window), so an HTTP retry is dropped.
-- Queries are unchanged (FINAL on a Distributed table is done on each shard, which is right with
-- this sharding; add SETTINGS distributed_group_by_no_merge = 0, the default).
"""


def _replicated(table: Table, path: str, replica: str) -> str:
    """The engine's replicated form, e.g. ``ReplacingMergeTree(version)`` ->
    ``ReplicatedReplacingMergeTree('<path>', '<replica>', version)``."""
    name, _, args = table.engine.partition("(")
    args = args.rstrip(")")
    return f"Replicated{name}('{path}', '{replica}'{', ' + args if args else ''})"


def _cluster_table(table: Table) -> list[str]:
    on, db = f" ON CLUSTER {CLUSTER}", CLUSTER_DB
    if table.shard_by is None:  # small: one replication group over every node
        engine = _replicated(table, f"/clickhouse/tables/all/{db}/{table.name}", "{shard}-{replica}")
        return [
            f"CREATE TABLE IF NOT EXISTS {db}.{table.name}{on} (\n{_body(table)}\n) ENGINE = {engine}\n{table.keys}"
        ]
    local = f"{table.name}_local"
    engine = _replicated(table, f"/clickhouse/tables/{{shard}}/{db}/{table.name}", "{replica}")
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{local}{on} (\n{_body(table)}\n) ENGINE = {engine}\n{table.keys}",
        f"CREATE TABLE IF NOT EXISTS {db}.{table.name}{on} AS {db}.{local}\n"
        f"ENGINE = Distributed({CLUSTER}, {db}, {local}, {table.shard_by})",
    ]


def cluster_statements() -> list[str]:
    """The tables, views and inputs of ``statements`` on a cluster (see ``_CLUSTER_HEADER``)."""
    on, db = f" ON CLUSTER {CLUSTER}", CLUSTER_DB
    out = [f"CREATE DATABASE IF NOT EXISTS {db}{on}"]
    for table in _TABLES:
        out += _cluster_table(table)
    for name, view in VIEWS.items():
        out.append(f"CREATE VIEW IF NOT EXISTS {db}.{name}{on} AS\n{view.format(db=db)}")
    for table in _TABLES:
        if table.row is not None:
            out += _input(table, db, on)
    out.append(f"INSERT INTO {db}.{DIGEST} (digest) VALUES ('{digest()}')")
    return out


def cluster_sql() -> str:
    """The text of ``infra/clickhouse/cluster.sql``."""
    return _CLUSTER_HEADER + "".join(f"\n{statement};\n" for statement in cluster_statements())


if __name__ == "__main__":
    CLUSTER_FILE.write_text(cluster_sql())
    print(f"wrote {CLUSTER_FILE.relative_to(Path.cwd()) if CLUSTER_FILE.is_relative_to(Path.cwd()) else CLUSTER_FILE}")
    sys.exit(0)
