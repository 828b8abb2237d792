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

CREATE DATABASE IF NOT EXISTS parley ON CLUSTER parley;

CREATE TABLE IF NOT EXISTS parley.events_local ON CLUSTER parley (
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
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/parley/events', '{replica}')
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, time, aggregate_type, aggregate_id, version);

CREATE TABLE IF NOT EXISTS parley.events ON CLUSTER parley AS parley.events_local
ENGINE = Distributed(parley, parley, events_local, cityHash64(tenant, aggregate_id));

CREATE TABLE IF NOT EXISTS parley.conversation_facts_local ON CLUSTER parley (
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
    nps_category LowCardinality(String),
    csat_score Nullable(UInt8),
    csat_questions Array(String),
    duration_seconds Float64 ALIAS dateDiff('millisecond', started_at, ifNull(closed_at, last_event_at)) / 1000,
    INDEX conversation conversation_id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/parley/conversation_facts', '{replica}', version)
PARTITION BY toYYYYMM(started_at)
ORDER BY (tenant, started_at, conversation_id);

CREATE TABLE IF NOT EXISTS parley.conversation_facts ON CLUSTER parley AS parley.conversation_facts_local
ENGINE = Distributed(parley, parley, conversation_facts_local, cityHash64(tenant, conversation_id));

CREATE TABLE IF NOT EXISTS parley.escalations_local ON CLUSTER parley (
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
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/parley/escalations', '{replica}')
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, time, conversation_id, escalation_id);

CREATE TABLE IF NOT EXISTS parley.escalations ON CLUSTER parley AS parley.escalations_local
ENGINE = Distributed(parley, parley, escalations_local, cityHash64(tenant, conversation_id));

CREATE TABLE IF NOT EXISTS parley.call_facts_local ON CLUSTER parley (
    tenant LowCardinality(String),
    call_id String,
    version UInt32,
    seq UInt64,
    started_at DateTime64(3, 'UTC'),
    last_event_at DateTime64(3, 'UTC'),
    connected_at Nullable(DateTime64(3, 'UTC')),
    ended_at Nullable(DateTime64(3, 'UTC')),
    config_id LowCardinality(String),
    config_version UInt32,
    direction LowCardinality(String),
    transport LowCardinality(String),
    product_type LowCardinality(String),
    status LowCardinality(String),
    end_reason LowCardinality(String),
    resolution LowCardinality(String),
    completed Bool,
    duration_seconds Float64,
    caller_turns UInt32,
    agent_turns UInt32,
    barge_ins UInt32,
    stt_confidence_sum Float64,
    stt_confidence_count UInt32,
    transfers UInt16,
    transferred Bool,
    transfer_failures UInt16,
    escalation_reason LowCardinality(String),
    tool_calls UInt32,
    tool_errors UInt32,
    speech_interruptions UInt16,
    sentiment_sum Float64,
    sentiment_count UInt32,
    stt_seconds Float64,
    tts_characters UInt32,
    llm_requests UInt32,
    cost_stt Float64,
    cost_tts Float64,
    cost_llm Float64,
    cost_telephony Float64,
    cost_total Float64,
    INDEX call call_id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/parley/call_facts', '{replica}', version)
PARTITION BY toYYYYMM(started_at)
ORDER BY (tenant, started_at, call_id);

CREATE TABLE IF NOT EXISTS parley.call_facts ON CLUSTER parley AS parley.call_facts_local
ENGINE = Distributed(parley, parley, call_facts_local, cityHash64(tenant, call_id));

CREATE TABLE IF NOT EXISTS parley.call_turns_local ON CLUSTER parley (
    tenant LowCardinality(String),
    call_id String,
    seq UInt64,
    version UInt32,
    time DateTime64(3, 'UTC'),
    speaker LowCardinality(String),
    stt_ms Nullable(Float64),
    end_of_turn_ms Nullable(Float64),
    llm_ms Nullable(Float64),
    tts_ms Nullable(Float64),
    e2e_ms Nullable(Float64),
    interrupted Bool,
    INDEX seq_range seq TYPE minmax GRANULARITY 1
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/parley/call_turns', '{replica}')
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, time, call_id, version);

CREATE TABLE IF NOT EXISTS parley.call_turns ON CLUSTER parley AS parley.call_turns_local
ENGINE = Distributed(parley, parley, call_turns_local, cityHash64(tenant, call_id));

CREATE TABLE IF NOT EXISTS parley.checkpoint ON CLUSTER parley (
    projector LowCardinality(String),
    last_seq UInt64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/parley/checkpoint', '{shard}-{replica}', last_seq)
ORDER BY projector;

CREATE TABLE IF NOT EXISTS parley.dead_letters ON CLUSTER parley (
    seq UInt64,
    subject String,
    error String,
    at DateTime64(3, 'UTC')
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/parley/dead_letters', '{shard}-{replica}')
ORDER BY seq;

CREATE TABLE IF NOT EXISTS parley.schema_digest ON CLUSTER parley (
    digest String,
    at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/parley/schema_digest', '{shard}-{replica}', at)
ORDER BY digest;

CREATE VIEW IF NOT EXISTS parley.config_version_outcomes ON CLUSTER parley AS
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
    countIf(nps_category != '') AS nps_responses,
    (countIf(nps_category = 'promoter') - countIf(nps_category = 'detractor')) * 100
        / nullIf(countIf(nps_category != ''), 0) AS nps,
    min(started_at) AS first_conversation_at,
    max(started_at) AS last_conversation_at
FROM parley.conversation_facts FINAL
GROUP BY tenant, config_id, config_version;

CREATE TABLE IF NOT EXISTS parley.events_input ON CLUSTER parley (row Tuple(
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
    payload String
)) ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS parley.events_rows ON CLUSTER parley TO parley.events AS
SELECT
    tupleElement(row, 'tenant') AS `tenant`,
    tupleElement(row, 'aggregate_type') AS `aggregate_type`,
    tupleElement(row, 'aggregate_id') AS `aggregate_id`,
    tupleElement(row, 'version') AS `version`,
    tupleElement(row, 'seq') AS `seq`,
    tupleElement(row, 'event_type') AS `event_type`,
    tupleElement(row, 'time') AS `time`,
    tupleElement(row, 'recorded_at') AS `recorded_at`,
    tupleElement(row, 'command') AS `command`,
    tupleElement(row, 'command_id') AS `command_id`,
    tupleElement(row, 'actor') AS `actor`,
    tupleElement(row, 'correlation_id') AS `correlation_id`,
    tupleElement(row, 'payload') AS `payload`
FROM parley.events_input;

CREATE TABLE IF NOT EXISTS parley.conversation_facts_input ON CLUSTER parley (row Tuple(
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
    sentiment_min Nullable(Float64),
    sentiment_last Nullable(Float64),
    tools Array(LowCardinality(String)),
    tool_calls UInt32,
    tool_errors UInt32,
    llm_fallbacks UInt32,
    cross_sell_offers UInt32,
    surveys_sent UInt16,
    surveys_answered UInt16,
    nps_score Nullable(UInt8),
    nps_category LowCardinality(String),
    csat_score Nullable(UInt8),
    csat_questions Array(String)
)) ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS parley.conversation_facts_rows ON CLUSTER parley TO parley.conversation_facts AS
SELECT
    tupleElement(row, 'tenant') AS `tenant`,
    tupleElement(row, 'conversation_id') AS `conversation_id`,
    tupleElement(row, 'version') AS `version`,
    tupleElement(row, 'seq') AS `seq`,
    tupleElement(row, 'started_at') AS `started_at`,
    tupleElement(row, 'last_event_at') AS `last_event_at`,
    tupleElement(row, 'closed_at') AS `closed_at`,
    tupleElement(row, 'config_id') AS `config_id`,
    tupleElement(row, 'config_version') AS `config_version`,
    tupleElement(row, 'channel') AS `channel`,
    tupleElement(row, 'product_type') AS `product_type`,
    tupleElement(row, 'status') AS `status`,
    tupleElement(row, 'close_reason') AS `close_reason`,
    tupleElement(row, 'resolution') AS `resolution`,
    tupleElement(row, 'resolved_by') AS `resolved_by`,
    tupleElement(row, 'turns') AS `turns`,
    tupleElement(row, 'agent_replies') AS `agent_replies`,
    tupleElement(row, 'human_replies') AS `human_replies`,
    tupleElement(row, 'escalated') AS `escalated`,
    tupleElement(row, 'escalations') AS `escalations`,
    tupleElement(row, 'escalation_trigger') AS `escalation_trigger`,
    tupleElement(row, 'escalation_reason') AS `escalation_reason`,
    tupleElement(row, 'agent_assigned') AS `agent_assigned`,
    tupleElement(row, 'agent_unavailable') AS `agent_unavailable`,
    tupleElement(row, 'sentiment_sum') AS `sentiment_sum`,
    tupleElement(row, 'sentiment_count') AS `sentiment_count`,
    tupleElement(row, 'sentiment_min') AS `sentiment_min`,
    tupleElement(row, 'sentiment_last') AS `sentiment_last`,
    tupleElement(row, 'tools') AS `tools`,
    tupleElement(row, 'tool_calls') AS `tool_calls`,
    tupleElement(row, 'tool_errors') AS `tool_errors`,
    tupleElement(row, 'llm_fallbacks') AS `llm_fallbacks`,
    tupleElement(row, 'cross_sell_offers') AS `cross_sell_offers`,
    tupleElement(row, 'surveys_sent') AS `surveys_sent`,
    tupleElement(row, 'surveys_answered') AS `surveys_answered`,
    tupleElement(row, 'nps_score') AS `nps_score`,
    tupleElement(row, 'nps_category') AS `nps_category`,
    tupleElement(row, 'csat_score') AS `csat_score`,
    tupleElement(row, 'csat_questions') AS `csat_questions`
FROM parley.conversation_facts_input;

CREATE TABLE IF NOT EXISTS parley.escalations_input ON CLUSTER parley (row Tuple(
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
    product_type LowCardinality(String)
)) ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS parley.escalations_rows ON CLUSTER parley TO parley.escalations AS
SELECT
    tupleElement(row, 'tenant') AS `tenant`,
    tupleElement(row, 'conversation_id') AS `conversation_id`,
    tupleElement(row, 'escalation_id') AS `escalation_id`,
    tupleElement(row, 'seq') AS `seq`,
    tupleElement(row, 'version') AS `version`,
    tupleElement(row, 'time') AS `time`,
    tupleElement(row, 'trigger') AS `trigger`,
    tupleElement(row, 'reason') AS `reason`,
    tupleElement(row, 'urgency') AS `urgency`,
    tupleElement(row, 'config_id') AS `config_id`,
    tupleElement(row, 'config_version') AS `config_version`,
    tupleElement(row, 'channel') AS `channel`,
    tupleElement(row, 'product_type') AS `product_type`
FROM parley.escalations_input;

CREATE TABLE IF NOT EXISTS parley.call_facts_input ON CLUSTER parley (row Tuple(
    tenant LowCardinality(String),
    call_id String,
    version UInt32,
    seq UInt64,
    started_at DateTime64(3, 'UTC'),
    last_event_at DateTime64(3, 'UTC'),
    connected_at Nullable(DateTime64(3, 'UTC')),
    ended_at Nullable(DateTime64(3, 'UTC')),
    config_id LowCardinality(String),
    config_version UInt32,
    direction LowCardinality(String),
    transport LowCardinality(String),
    product_type LowCardinality(String),
    status LowCardinality(String),
    end_reason LowCardinality(String),
    resolution LowCardinality(String),
    completed Bool,
    duration_seconds Float64,
    caller_turns UInt32,
    agent_turns UInt32,
    barge_ins UInt32,
    stt_confidence_sum Float64,
    stt_confidence_count UInt32,
    transfers UInt16,
    transferred Bool,
    transfer_failures UInt16,
    escalation_reason LowCardinality(String),
    tool_calls UInt32,
    tool_errors UInt32,
    speech_interruptions UInt16,
    sentiment_sum Float64,
    sentiment_count UInt32,
    stt_seconds Float64,
    tts_characters UInt32,
    llm_requests UInt32,
    cost_stt Float64,
    cost_tts Float64,
    cost_llm Float64,
    cost_telephony Float64,
    cost_total Float64
)) ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS parley.call_facts_rows ON CLUSTER parley TO parley.call_facts AS
SELECT
    tupleElement(row, 'tenant') AS `tenant`,
    tupleElement(row, 'call_id') AS `call_id`,
    tupleElement(row, 'version') AS `version`,
    tupleElement(row, 'seq') AS `seq`,
    tupleElement(row, 'started_at') AS `started_at`,
    tupleElement(row, 'last_event_at') AS `last_event_at`,
    tupleElement(row, 'connected_at') AS `connected_at`,
    tupleElement(row, 'ended_at') AS `ended_at`,
    tupleElement(row, 'config_id') AS `config_id`,
    tupleElement(row, 'config_version') AS `config_version`,
    tupleElement(row, 'direction') AS `direction`,
    tupleElement(row, 'transport') AS `transport`,
    tupleElement(row, 'product_type') AS `product_type`,
    tupleElement(row, 'status') AS `status`,
    tupleElement(row, 'end_reason') AS `end_reason`,
    tupleElement(row, 'resolution') AS `resolution`,
    tupleElement(row, 'completed') AS `completed`,
    tupleElement(row, 'duration_seconds') AS `duration_seconds`,
    tupleElement(row, 'caller_turns') AS `caller_turns`,
    tupleElement(row, 'agent_turns') AS `agent_turns`,
    tupleElement(row, 'barge_ins') AS `barge_ins`,
    tupleElement(row, 'stt_confidence_sum') AS `stt_confidence_sum`,
    tupleElement(row, 'stt_confidence_count') AS `stt_confidence_count`,
    tupleElement(row, 'transfers') AS `transfers`,
    tupleElement(row, 'transferred') AS `transferred`,
    tupleElement(row, 'transfer_failures') AS `transfer_failures`,
    tupleElement(row, 'escalation_reason') AS `escalation_reason`,
    tupleElement(row, 'tool_calls') AS `tool_calls`,
    tupleElement(row, 'tool_errors') AS `tool_errors`,
    tupleElement(row, 'speech_interruptions') AS `speech_interruptions`,
    tupleElement(row, 'sentiment_sum') AS `sentiment_sum`,
    tupleElement(row, 'sentiment_count') AS `sentiment_count`,
    tupleElement(row, 'stt_seconds') AS `stt_seconds`,
    tupleElement(row, 'tts_characters') AS `tts_characters`,
    tupleElement(row, 'llm_requests') AS `llm_requests`,
    tupleElement(row, 'cost_stt') AS `cost_stt`,
    tupleElement(row, 'cost_tts') AS `cost_tts`,
    tupleElement(row, 'cost_llm') AS `cost_llm`,
    tupleElement(row, 'cost_telephony') AS `cost_telephony`,
    tupleElement(row, 'cost_total') AS `cost_total`
FROM parley.call_facts_input;

CREATE TABLE IF NOT EXISTS parley.call_turns_input ON CLUSTER parley (row Tuple(
    tenant LowCardinality(String),
    call_id String,
    seq UInt64,
    version UInt32,
    time DateTime64(3, 'UTC'),
    speaker LowCardinality(String),
    stt_ms Nullable(Float64),
    end_of_turn_ms Nullable(Float64),
    llm_ms Nullable(Float64),
    tts_ms Nullable(Float64),
    e2e_ms Nullable(Float64),
    interrupted Bool
)) ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS parley.call_turns_rows ON CLUSTER parley TO parley.call_turns AS
SELECT
    tupleElement(row, 'tenant') AS `tenant`,
    tupleElement(row, 'call_id') AS `call_id`,
    tupleElement(row, 'seq') AS `seq`,
    tupleElement(row, 'version') AS `version`,
    tupleElement(row, 'time') AS `time`,
    tupleElement(row, 'speaker') AS `speaker`,
    tupleElement(row, 'stt_ms') AS `stt_ms`,
    tupleElement(row, 'end_of_turn_ms') AS `end_of_turn_ms`,
    tupleElement(row, 'llm_ms') AS `llm_ms`,
    tupleElement(row, 'tts_ms') AS `tts_ms`,
    tupleElement(row, 'e2e_ms') AS `e2e_ms`,
    tupleElement(row, 'interrupted') AS `interrupted`
FROM parley.call_turns_input;

CREATE TABLE IF NOT EXISTS parley.dead_letters_input ON CLUSTER parley (row Tuple(
    seq UInt64,
    subject String,
    error String,
    at DateTime64(3, 'UTC')
)) ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS parley.dead_letters_rows ON CLUSTER parley TO parley.dead_letters AS
SELECT
    tupleElement(row, 'seq') AS `seq`,
    tupleElement(row, 'subject') AS `subject`,
    tupleElement(row, 'error') AS `error`,
    tupleElement(row, 'at') AS `at`
FROM parley.dead_letters_input;

INSERT INTO parley.schema_digest (digest) VALUES ('6e82ee085c1aaf10');
