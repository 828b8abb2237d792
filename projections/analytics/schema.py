"""The analytics tables in ClickHouse, and the rows the projector writes into them.

Every event lands once in ``events``; the projector also folds each conversation into one row of
``conversation_facts`` and writes a row per escalation into ``escalations``. ``config_version_outcomes``
is a view over the facts. Two kinds of table, two ways of staying exact under replays:

* **Immutable rows, one per event** (``events``, ``escalations``): plain ``MergeTree``. A row carries
  the stream sequence of its commit (``seq``, with a min-max index). Rows are written before the
  checkpoint moves, so after a crash every row above the checkpoint belongs to a batch that was
  never acknowledged: the runner deletes them at start (``DELETE ... WHERE seq > checkpoint``)
  and the replay writes them again, once.
* **One row per aggregate, rewritten as it changes** (``conversation_facts``):
  ``ReplacingMergeTree(version)``, keyed by conversation. A row is a pure function of the
  conversation's events up to ``version``, and the fold applies an event only when its version is
  above the row's, so a replayed event is a no-op and a re-written row is the same row. Queries
  read it with ``FINAL``.

``checkpoint`` holds the last stream sequence the tables account for, written after a batch's rows
(``ReplacingMergeTree(last_seq)``, read with ``max``). ``dead_letters`` keeps the commits that could
not be decoded, by sequence.

Times are the domain's (when a message was received, a conversation started), not when the
commit reached the stream (``recorded_at``): a history written later still lands in its months.
Personal fields (an event class's ``personal_fields``) are blank in ``payload``: analytics needs
no personal data.
"""

from __future__ import annotations

import re

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
    csat_score: int | None = None
    csat_questions: list[str] = []  # ids of the CSAT questions in the surveys sent


class DeadLetterRow(msgspec.Struct, array_like=True, gc=False):
    seq: int
    subject: str
    error: str
    at: int  # epoch milliseconds


def columns(row_type: type[msgspec.Struct]) -> list[str]:
    return list(row_type.__struct_fields__)


# Tables ----------------------------------------------------------------------------------------
# ``{db}`` is the database. The same statements run on chDB and on a single ClickHouse server;
# ``infra/clickhouse/cluster.sql`` has their replicated, sharded form.

EVENTS = "events"
FACTS = "conversation_facts"
ESCALATIONS = "escalations"
CHECKPOINT = "checkpoint"
DEAD_LETTERS = "dead_letters"
OUTCOMES = "config_version_outcomes"

TABLES = (EVENTS, FACTS, ESCALATIONS, CHECKPOINT, DEAD_LETTERS)

# An HTTP insert retried by the client after it actually landed is dropped by its token
# (``insert_deduplication_token``); a non-replicated table remembers the last tokens only with this.
_DEDUP = "non_replicated_deduplication_window = 1000"

DDL: dict[str, str] = {
    EVENTS: f"""
CREATE TABLE IF NOT EXISTS {{db}}.{EVENTS} (
    tenant LowCardinality(String),
    aggregate_type LowCardinality(String),
    aggregate_id String,
    version UInt32,
    seq UInt64,
    event_type LowCardinality(String),
    time DateTime64(3, 'UTC'),
    recorded_at DateTime64(3, 'UTC'),
    command LowCardinality(String),
    command_id String,
    actor String,
    correlation_id String,
    payload String CODEC(ZSTD(1)),
    INDEX seq_range seq TYPE minmax GRANULARITY 1,
    INDEX aggregate aggregate_id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, time, aggregate_type, aggregate_id, version)
SETTINGS {_DEDUP}""",
    FACTS: f"""
CREATE TABLE IF NOT EXISTS {{db}}.{FACTS} (
    tenant LowCardinality(String),
    conversation_id String,
    version UInt32,
    seq UInt64,
    started_at DateTime64(3, 'UTC'),
    last_event_at DateTime64(3, 'UTC'),
    closed_at Nullable(DateTime64(3, 'UTC')),
    config_id LowCardinality(String),
    config_version UInt32,
    channel LowCardinality(String),
    product_type LowCardinality(String),
    status LowCardinality(String),
    close_reason LowCardinality(String),
    resolution LowCardinality(String),
    resolved_by LowCardinality(String),
    turns UInt32,
    agent_replies UInt32,
    human_replies UInt32,
    escalated Bool,
    escalations UInt16,
    escalation_trigger LowCardinality(String),
    escalation_reason String,
    agent_assigned Bool,
    agent_unavailable Bool,
    sentiment_sum Float64,
    sentiment_count UInt32,
    sentiment_min Nullable(Float32),
    sentiment_last Nullable(Float32),
    tools Array(LowCardinality(String)),
    tool_calls UInt32,
    tool_errors UInt32,
    llm_fallbacks UInt32,
    cross_sell_offers UInt32,
    surveys_sent UInt16,
    surveys_answered UInt16,
    nps_score Nullable(UInt8),
    csat_score Nullable(UInt8),
    csat_questions Array(String),
    duration_seconds Float64 ALIAS dateDiff('millisecond', started_at, ifNull(closed_at, last_event_at)) / 1000,
    nps_category LowCardinality(String) ALIAS multiIf(
        nps_score IS NULL, '', nps_score >= 9, 'promoter', nps_score >= 7, 'passive', 'detractor'),
    INDEX conversation conversation_id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(started_at)
ORDER BY (tenant, started_at, conversation_id)""",
    ESCALATIONS: f"""
CREATE TABLE IF NOT EXISTS {{db}}.{ESCALATIONS} (
    tenant LowCardinality(String),
    conversation_id String,
    escalation_id String,
    seq UInt64,
    version UInt32,
    time DateTime64(3, 'UTC'),
    trigger LowCardinality(String),
    reason String,
    urgency LowCardinality(String),
    config_id LowCardinality(String),
    config_version UInt32,
    channel LowCardinality(String),
    product_type LowCardinality(String),
    INDEX seq_range seq TYPE minmax GRANULARITY 1
) ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, time, conversation_id, escalation_id)
SETTINGS {_DEDUP}""",
    CHECKPOINT: f"""
CREATE TABLE IF NOT EXISTS {{db}}.{CHECKPOINT} (
    projector LowCardinality(String),
    last_seq UInt64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(last_seq)
ORDER BY projector""",
    DEAD_LETTERS: f"""
CREATE TABLE IF NOT EXISTS {{db}}.{DEAD_LETTERS} (
    seq UInt64,
    subject String,
    error String,
    at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree
ORDER BY seq""",
}

VIEWS: dict[str, str] = {
    OUTCOMES: f"""
CREATE VIEW IF NOT EXISTS {{db}}.{OUTCOMES} AS
SELECT
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
    countIf(nps_score IS NOT NULL) AS nps_responses,
    (countIf(nps_score >= 9) - countIf(nps_score <= 6)) * 100 / nullIf(countIf(nps_score IS NOT NULL), 0) AS nps,
    min(started_at) AS first_conversation_at,
    max(started_at) AS last_conversation_at
FROM {{db}}.{FACTS} FINAL
GROUP BY tenant, config_id, config_version""",
}


# Inputs ----------------------------------------------------------------------------------------
# MessagePack has no rows: ClickHouse reads one value per column, and an encoded row is one array.
# So a row table is written through an input that takes each row as one ``Tuple`` value: a
# ``Null`` table (it keeps nothing) and a materialized view that spreads the tuple over the
# table's columns. The engine reads MessagePack for about half the CPU ``JSONCompactEachRow``
# took (no JSON text to scan, no escapes), and msgspec writes it faster too. An insert's
# ``insert_deduplication_token`` reaches the table through the view
# (``deduplicate_blocks_in_dependent_materialized_views``).

ROW_TYPES: dict[str, type[msgspec.Struct]] = {
    EVENTS: EventRow,
    FACTS: ConversationFacts,
    ESCALATIONS: EscalationRow,
    DEAD_LETTERS: DeadLetterRow,
}


def input_table(table: str) -> str:
    return f"{table}_input"


def input_view(table: str) -> str:
    return f"{table}_rows"


def column_type(table: str, column: str) -> str:
    """A column's type as the table's DDL declares it, codec left out."""
    found = re.search(rf"^    {column} (.+?)(?: CODEC\(.*\))?,?$", DDL[table], re.MULTILINE)
    if found is None:
        raise KeyError(f"{table} has no column {column}")
    return found[1]


def input_type(table: str, column: str) -> str:
    """The type a row's value is read as: the column's, but a Python float is a MessagePack float64,
    which ClickHouse does not read as ``Float32`` (the view narrows it)."""
    return column_type(table, column).replace("Float32", "Float64")


def input_statements(db: str) -> list[str]:
    """Each row table's input table and view (see above)."""
    out = []
    for table, row_type in ROW_TYPES.items():
        names = columns(row_type)
        fields = ", ".join(f"{name} {input_type(table, name)}" for name in names)
        spread = ", ".join(f"tupleElement(row, '{name}') AS `{name}`" for name in names)
        out += [
            f"CREATE TABLE IF NOT EXISTS {db}.{input_table(table)} (row Tuple({fields})) ENGINE = Null",
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{input_view(table)} TO {db}.{table}"
            f" AS SELECT {spread} FROM {db}.{input_table(table)}",
        ]
    return out


def statements(db: str) -> list[str]:
    """Everything to create, in order (idempotent)."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        *(ddl.format(db=db) for ddl in DDL.values()),
        *(view.format(db=db) for view in VIEWS.values()),
        *input_statements(db),
    ]


def drop_statements(db: str) -> list[str]:
    return (
        [f"DROP VIEW IF EXISTS {db}.{input_view(table)}" for table in ROW_TYPES]
        + [f"DROP TABLE IF EXISTS {db}.{input_table(table)}" for table in ROW_TYPES]
        + [f"DROP VIEW IF EXISTS {db}.{name}" for name in VIEWS]
        + [f"DROP TABLE IF EXISTS {db}.{name}" for name in TABLES]
    )
