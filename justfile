# Parley tasks. Use ./parley <recipe> on a fresh machine (it bootstraps .venv,
# system packages and then runs just); `just <recipe>` works once bootstrapped.

set dotenv-load := false
set shell := ["bash", "-euo", "pipefail", "-c"]

export PARLEY_DATA := env("PARLEY_DATA", justfile_directory() / ".data")
python := justfile_directory() / ".venv/bin/python"

# List the recipes
[private]
default:
    @{{ just_executable() }} --justfile {{ justfile() }} --list --unsorted

# Start the platform: NATS JetStream, PostgreSQL, Redis, chDB, the event stream, and the API with its projectors (idempotent)
up:
    @{{ python }} -m infra.services up
    @set -a; . "$PARLEY_DATA/run/env"; set +a; {{ python }} -m streams ensure
    @{{ python }} -m infra.platform start

# Stop the services started by `up`
down:
    @{{ python }} -m infra.platform stop
    @{{ python }} -m infra.services down

# Show each service, its URL and whether it is running
status:
    @{{ python }} -m infra.services status
    @{{ python }} -m infra.platform status

# Print a development JWT (tenant "demo", all roles) for the running platform
token:
    @{{ python }} -m infra.platform token

# Stop the services and delete the data dir ($PARLEY_DATA)
wipe:
    @{{ python }} -m infra.platform stop
    @{{ python }} -m infra.services wipe

# Run the checks and the test suite: ruff, mypy (strict on domain, streams, commands), then pytest; with arguments, only pytest with them (e.g. ./parley test -k nats -x)
[positional-arguments]
test *ARGS:
    @if [ "$#" -eq 0 ]; then {{ justfile_directory() }}/.venv/bin/ruff check . && {{ justfile_directory() }}/.venv/bin/mypy && {{ python }} -m pytest; else {{ python }} -m pytest "$@"; fi

# Lint with ruff
lint:
    @{{ justfile_directory() }}/.venv/bin/ruff check .

# Rebuild a read model from the first event into shadow tables, then swap them in (no downtime); NAME: conversations, configs, or analytics (through the running API)
projections-rebuild NAME:
    @set -a; . "$PARLEY_DATA/run/env"; set +a; {{ python }} -m projections rebuild {{ NAME }}

# Each projector's checkpoint, lag and dead letters (analytics: from the running API's /health)
projections-status:
    @set -a; . "$PARLEY_DATA/run/env"; set +a; {{ python }} -m projections status

# Run the conversation scenarios (tests/scenarios, offline model) against the platform's PostgreSQL, and the voice ones (tests/scenarios/voice) as calls over its Twilio path
test-conversations *ARGS:
    @set -a; . "$PARLEY_DATA/run/env"; set +a; {{ python }} -m gateways.telephony.scenarios tests/scenarios tests/scenarios/voice {{ ARGS }}

# Show the event stream's state (messages, last sequence, replicas)
stream-info:
    @set -a; . "$PARLEY_DATA/run/env"; set +a; {{ python }} -m streams info

# Benchmark the event store against eventsourcing's PostgreSQL module (--quick for a small run)
[positional-arguments]
bench-store *ARGS:
    @{{ python }} -m bench.store "$@"

# Benchmark the HTTP API: command throughput, query latency, projection lag, rebuild speed (--quick)
[positional-arguments]
bench-api *ARGS:
    @{{ python }} -m bench.api "$@"

# Benchmark chat turns with the offline model: turn latency and concurrent conversations (--quick)
[positional-arguments]
bench-chat *ARGS:
    @{{ python }} -m bench.chat "$@"

# Benchmark configs: rollback to the first conversation on the restored version, config read latency (--quick)
[positional-arguments]
bench-configs *ARGS:
    @{{ python }} -m bench.config "$@"

# Export a tenant's events for a period as hash-chained JSON Lines (FROM/TO: RFC 3339, or a span ago like 7d; OUTPUT: default $PARLEY_DATA/audit/TENANT-TIME.jsonl)
[positional-arguments]
audit-export TENANT="demo" FROM="" TO="" OUTPUT="" *ARGS:
    @set -a; . "$PARLEY_DATA/run/env"; set +a; {{ python }} -m streams.audit export --tenant "$1" --from "$2" --to "$3" --output "$4" "${@:5}"

# Verify an audit export's hash chain: exits 1 naming the first edited, dropped, inserted or reordered line (--expect-head HASH, --live)
[positional-arguments]
audit-verify FILE *ARGS:
    @if [ -f "$PARLEY_DATA/run/env" ]; then set -a; . "$PARLEY_DATA/run/env"; set +a; fi; {{ python }} -m streams.audit verify "$@"

# Erase a customer from every store (their key destroyed, every process told; read models, tools' tables, checkpoints and caches scrubbed); prints the erasure as JSON
[positional-arguments]
erase TENANT CUSTOMER:
    @set -a; . "$PARLEY_DATA/run/env"; set +a; {{ python }} -m gateways.erase "$1" "$2"

# Benchmark analytics: ClickHouse projection of 1,000,000 events, KPI latency over 10,000,000, audit export/verify (--quick)
[positional-arguments]
bench-analytics *ARGS:
    @{{ python }} -m bench.analytics "$@"

# Write a synthetic history of about N conversation events to the platform's stream (--tenant, --days)
seed-history N *ARGS:
    @set -a; . "$PARLEY_DATA/run/env"; set +a; {{ python }} -m bench.analytics seed {{ N }} {{ ARGS }}

# Benchmark the console in Chromium: first load of the inbox, initial JavaScript gzipped, customer message -> open inbox (--quick)
[positional-arguments]
bench-console *ARGS:
    @{{ python }} -m bench.console "$@"

# Phone the running platform over the Twilio path: each argument a caller turn ("dtmf:78945#", "wav:FILE", "!barge in"); prints the live transcript, saves the agent's audio
[positional-arguments]
call *ARGS:
    @set -a; . "$PARLEY_DATA/run/env"; set +a; {{ python }} -m voice_worker.phone "$@"

# Benchmark voice calls over the Twilio path: turn latency (offline pipeline, instant STT/TTS stand-ins), concurrent calls without late frames (--quick)
[positional-arguments]
bench-voice *ARGS:
    @{{ python }} -m bench.voice "$@"

# Faults as a permanent test: load through the API while the API, projectors, agent runtime and nats-server are killed and Redis and PostgreSQL restarted; then every invariant checked (--quick, --seconds N, --seed N, --cluster, --keep)
[positional-arguments]
chaos *ARGS:
    @{{ python }} -m bench.chaos "$@"

# The OpenAPI schema as the contract: schemathesis (examples, boundaries, random valid and invalid requests, stateful chains) against the running platform, or one of its own; prints cases, server errors and schema violations (--quick, --max-examples N, --seed N, --own)
[positional-arguments]
fuzz *ARGS:
    @if [ -f "$PARLEY_DATA/run/env" ]; then set -a; . "$PARLEY_DATA/run/env"; set +a; fi; {{ python }} -m bench.fuzz "$@"

# Benchmark channels: webhook intake -> commit at a steady rate, inbound webhooks/s, reply -> provider request, 5,000 web-chat sockets (--quick, --sockets N)
[positional-arguments]
bench-channels *ARGS:
    @{{ python }} -m bench.channels "$@"

# Channels on the running platform: local WhatsApp (Graph API), Twilio and SMTP servers, a conversation on each with the demo support bot, and a human agent's SMS reply (--serve keeps the servers up)
[positional-arguments]
channels-demo *ARGS:
    @set -a; . "$PARLEY_DATA/run/env"; set +a; {{ python }} -m tests.channel_fakes.demo "$@"
