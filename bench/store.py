"""``just bench-store``: Parley's JetStream event store against eventsourcing's PostgreSQL module.

Every side runs in this one process, on this machine, in the same run:

* ``parley``: Parley's own store (typed msgspec events through the mapper, optimistic
  concurrency, command ids remembered for idempotency) on a nats-server with
  ``sync_interval: always`` (fsync before every acknowledgement) and one with the default
  (fsync every two minutes);
* ``es/jetstream``: eventsourcing's recorder interface on JetStream (this repo's
  ``streams.es_jetstream``), both sync modes;
* ``es/postgres``: eventsourcing's own PostgreSQL module, PostgreSQL's default durable settings
  (``fsync=on``, ``synchronous_commit=on``).

Workloads: appends/s with optimistic concurrency across 1,000 aggregates (one event per
append); sequential single-aggregate append latency; the load time of a 10,000-event aggregate
with and without a snapshot.

Then an unmodified ``eventsourcing.application.Application`` on each eventsourcing side, saved
from 8 threads (``app_threads``): each thread registers its aggregates and keeps changing them,

* **save**: the thread holds its aggregates, changes one and saves it (``app.save``: the
  library's optimistic concurrency on the aggregate's version, one event a save);
* **get, change, save**: the same, reading the aggregate back from the repository first.

The Application sides take turns (``app_rounds`` rounds, the order reversed each round) and
each measured run starts after a PostgreSQL ``CHECKPOINT`` and an ``os.sync()``, so no side
pays for what another left to be written, nor gains from the moment it ran at on a shared
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, DomainEvent, event
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DatetimeAsISO,
    DecimalAsStr,
    InfrastructureFactory,
    JSONTranscoder,
    Mapper,
    UUIDAsHex,
)
from eventsourcing.utils import Environment

from bench.common import percentile, table, write_results
from domain.errors import ValidationError
from domain.messages import Command, Decider, Event
from infra.logs import configure_logging
from infra.services import NatsServer, Postgres, service_tmpdir
from streams.factory import OpenStore, StoreSettings, open_store
from streams.repository import Repository
from streams.store import EventMeta
from streams.subjects import StreamId

# The workload's aggregate, on both sides -------------------------------------------------


class Incremented(Event, frozen=True):
    amount: int
    note: str = ""


class Counter(msgspec.Struct, frozen=True):
    total: int = 0
    count: int = 0


def evolve(state: Counter, event: Event) -> Counter:
    assert isinstance(event, Incremented)
    return Counter(state.total + event.amount, state.count + 1)


def decide(command: Command, state: Counter) -> list[Event]:
    raise ValidationError(f"{type(command).__name__} is not a counter command")


COUNTER = Decider(type_name="counter", state_type=Counter, initial=Counter, evolve=evolve, decide=decide)


@dataclass(frozen=True, kw_only=True)
class EsIncremented(DomainEvent):
    amount: int
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class EsSnapshot(DomainEvent):
    total: int
    count: int


NOTE = "order ORD-78945 checked"


@dataclass
class Sizes:
    aggregates: int = 1000
    appends: int = 20_000
    concurrency: int = 64
    threads: int = 64  # the eventsourcing sides' writer threads: the same concurrency as ours
    latency_appends: int = 2000
    load_events: int = 10_000
    load_repeats: int = 5
    app_threads: int = 8  # an unmodified Application saved from a thread pool
    app_saves: int = 12_000  # per workload and side, across the threads and rounds
    app_aggregates: int = 1_200  # registered first (those saves count), then changed in turn
    app_rounds: int = 6  # the sides take turns, a round each

    @property
    def app_round_saves(self) -> int:
        return self.app_saves // self.app_rounds

    @property
    def app_round_aggregates(self) -> int:
        return self.app_aggregates // self.app_rounds


# Parley's store --------------------------------------------------------------------------


async def parley_appends(opened: OpenStore, s: Sizes) -> float:
    store = opened.store
    tenant = "bench"
    ids = [uuid.uuid4().hex for _ in range(s.aggregates)]
    versions = [0] * s.aggregates
    per_task = s.appends // s.concurrency

    async def worker(t: int) -> None:
        mine = list(range(t, s.aggregates, s.concurrency))
        for n in range(per_task):
            a = mine[n % len(mine)]
            sid = StreamId(tenant, "counter", ids[a])
            await store.append(
                sid,
                [Incremented(amount=1, note=NOTE)],
                expected_version=versions[a],
                meta=EventMeta(command_id=uuid.uuid4().hex, actor="bench"),
            )
            versions[a] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(t) for t in range(s.concurrency)))
    return per_task * s.concurrency / (time.perf_counter() - started)


async def parley_latency(opened: OpenStore, s: Sizes) -> list[float]:
    sid = StreamId("bench", "counter", uuid.uuid4().hex)
    latencies = []
    for version in range(s.latency_appends):
        started = time.perf_counter()
        await opened.store.append(
            sid,
            [Incremented(amount=1, note=NOTE)],
            expected_version=version,
            meta=EventMeta(command_id=uuid.uuid4().hex),
        )
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def parley_load(opened: OpenStore, s: Sizes) -> tuple[float, float]:
    repo = Repository(opened.store, COUNTER, snapshots=opened.snapshots, keys=opened.keys, snapshot_every=10**9)
    sid = repo.stream("bench", uuid.uuid4().hex)
    for version in range(s.load_events):  # one command, one event: the aggregate's commits
        await opened.store.append(sid, [Incremented(amount=1, note=NOTE)], expected_version=version)
    plain = []
    for _ in range(s.load_repeats):
        started = time.perf_counter()
        loaded = await repo.load("bench", sid.aggregate_id, use_snapshot=False)
        plain.append((time.perf_counter() - started) * 1000)
        assert loaded.state.count == s.load_events
    await repo.write_snapshot(loaded)
    for version in range(s.load_events, s.load_events + 100):
        await opened.store.append(sid, [Incremented(amount=1, note=NOTE)], expected_version=version)
    snap = []
    for _ in range(s.load_repeats):
        repo.forget(sid)  # a cold load, as in a process that has not seen this aggregate
        started = time.perf_counter()
        loaded = await repo.load("bench", sid.aggregate_id)
        snap.append((time.perf_counter() - started) * 1000)
        assert loaded.from_snapshot and loaded.events_folded == 100 and loaded.state.count == s.load_events + 100
    return percentile(plain, 50), percentile(snap, 50)


async def run_parley(nats_url: str, data: Path, s: Sizes) -> dict[str, Any]:
    opened = await open_store(
        StoreSettings(nats_url=nats_url, data_dir=data, stream="BENCH_" + uuid.uuid4().hex[:8].upper())
    )
    try:
        appends = await parley_appends(opened, s)
        latencies = await parley_latency(opened, s)
        load_plain, load_snap = await parley_load(opened, s)
    finally:
        await opened.log.delete()
        await opened.close()
    return {
        "appends_per_s": appends,
        "append_p50_ms": percentile(latencies, 50),
        "append_p99_ms": percentile(latencies, 99),
        "load_10k_ms": load_plain,
        "load_10k_snapshot_ms": load_snap,
    }


# eventsourcing's recorders (PostgreSQL module, and ours on JetStream) --------------------


def es_mapper() -> Mapper[Any]:
    transcoder = JSONTranscoder()
    for t in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(t)
    return Mapper(transcoder=transcoder)


def es_event(mapper: Mapper[Any], originator: uuid.UUID, version: int) -> Any:
    e = EsIncremented(
        originator_id=originator,
        originator_version=version,
        timestamp=DomainEvent.create_timestamp(),
        amount=1,
        note=NOTE,
    )
    return mapper.to_stored_event(e)


def run_es(factory: InfrastructureFactory[Any], s: Sizes) -> dict[str, Any]:
    mapper = es_mapper()
    recorder: ApplicationRecorder = factory.application_recorder()
    snapshots: AggregateRecorder = factory.aggregate_recorder("snapshots")

    # Appends across aggregates, each thread owning its own aggregates.
    ids = [uuid.uuid4() for _ in range(s.aggregates)]
    versions = [0] * s.aggregates
    per_thread = s.appends // s.threads

    def worker(t: int) -> None:
        mine = list(range(t, s.aggregates, s.threads))
        for n in range(per_thread):
            a = mine[n % len(mine)]
            versions[a] += 1
            recorder.insert_events([es_event(mapper, ids[a], versions[a])])

    started = time.perf_counter()
    with ThreadPoolExecutor(s.threads) as pool:
        list(pool.map(worker, range(s.threads)))
    appends = per_thread * s.threads / (time.perf_counter() - started)

    one = uuid.uuid4()
    latencies = []
    for version in range(1, s.latency_appends + 1):
        started = time.perf_counter()
        recorder.insert_events([es_event(mapper, one, version)])
        latencies.append((time.perf_counter() - started) * 1000)

    big = uuid.uuid4()
    for v in range(1, s.load_events + 1):
        recorder.insert_events([es_event(mapper, big, v)])

    def load(use_snapshot: bool) -> Counter:
        state, after = Counter(), None
        if use_snapshot:
            found = snapshots.select_events(big, desc=True, limit=1)
            if found:
                snap = cast(EsSnapshot, mapper.to_domain_event(found[0]))
                state, after = Counter(snap.total, snap.count), snap.originator_version
        for stored in recorder.select_events(big, gt=after):
            event = cast(EsIncremented, mapper.to_domain_event(stored))
            state = Counter(state.total + event.amount, state.count + 1)
        return state

    plain = []
    for _ in range(s.load_repeats):
        started = time.perf_counter()
        state = load(False)
        plain.append((time.perf_counter() - started) * 1000)
    assert state.count == s.load_events
    snap_event = EsSnapshot(
        originator_id=big,
        originator_version=s.load_events,
        timestamp=DomainEvent.create_timestamp(),
        total=state.total,
        count=state.count,
    )
    snapshots.insert_events([mapper.to_stored_event(snap_event)])
    for i in range(100):
        recorder.insert_events([es_event(mapper, big, s.load_events + 1 + i)])
    snapped = []
    for _ in range(s.load_repeats):
        started = time.perf_counter()
        state = load(True)
        snapped.append((time.perf_counter() - started) * 1000)
    assert state.count == s.load_events + 100
    return {
        "appends_per_s": appends,
        "append_p50_ms": percentile(latencies, 50),
        "append_p99_ms": percentile(latencies, 99),
        "load_10k_ms": percentile(plain, 50),
        "load_10k_snapshot_ms": percentile(snapped, 50),
    }


# An unmodified eventsourcing Application, saved from threads ----------------------------


class Tally(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 0

    @event("Added")
    def add(self, amount: int, note: str) -> None:
        self.total += amount


class Tallies(Application[uuid.UUID]):
    """A plain application: nothing here knows where its events are kept."""

    def register(self, name: str) -> Tally:
        tally = Tally(name)
        self.save(tally)
        return tally

    def add(self, tally: Tally) -> None:
        tally.add(1, NOTE)
        self.save(tally)

    def get_and_add(self, tally_id: uuid.UUID) -> None:
        tally: Tally = self.repository.get(tally_id)
        tally.add(1, NOTE)
        self.save(tally)


def app_worker(app: Tallies, workload: str, t: int, *, saves: int, aggregates: int) -> None:
    """One thread: register its aggregates, then change them in turn, ``saves`` saves in all."""
    mine: list[Tally] = []
    for n in range(saves):
        if len(mine) < aggregates:
            mine.append(app.register(f"tally-{t}-{n}"))
        elif workload == "save":
            app.add(mine[n % aggregates])
        else:
            app.get_and_add(mine[n % aggregates].id)


def run_es_app_once(env: dict[str, str], workload: str, s: Sizes, pg: Postgres | None = None) -> float:
    """One measured run of a workload on a fresh application: its seconds for ``app_round_saves`` saves.

    The application gets a name of its own (so its own PostgreSQL tables; the JetStream side gets
    a fresh stream too) and starts empty.
    """
    cls = type(f"Tallies_{workload}_{uuid.uuid4().hex[:6]}", (Tallies,), {})
    app_env = dict(env)
    if "JETSTREAM_STREAM" in app_env:
        app_env["JETSTREAM_STREAM"] = "ESAPP_" + uuid.uuid4().hex[:8].upper()
    app = cls(env=app_env)
    try:
        per_thread = s.app_round_saves // s.app_threads
        worker = functools.partial(
            app_worker, app, workload, saves=per_thread, aggregates=s.app_round_aggregates // s.app_threads
        )
        with ThreadPoolExecutor(s.app_threads) as pool:
            settle(pg)
            started = time.perf_counter()
            list(pool.map(worker, range(s.app_threads)))
            elapsed = time.perf_counter() - started
        events = app.recorder.max_notification_id()
        assert events is not None and events >= per_thread * s.app_threads
    finally:
        if hasattr(app.factory, "delete_streams"):
            app.factory.delete_streams()
        app.close()
    return elapsed


def run_es_apps(sides: dict[str, dict[str, str]], s: Sizes, pg: Postgres | None = None) -> dict[str, dict[str, Any]]:
    """Saves/s of an unmodified Application from ``app_threads`` threads on each side, both workloads.

    The sides take turns: ``app_rounds`` rounds, each running every side once per workload, one
    side right after the other, in the opposite order to the round before (A B C, C B A, ...),
    so a side is not favoured by when it runs on a machine whose load changes. A side's figure
    is all its saves over all its measured time; the rounds' own figures are kept beside it.
    """
    spent: dict[str, dict[str, list[float]]] = {name: {"save": [], "get_change_save": []} for name in sides}
    order = list(sides)
    for round_ in range(s.app_rounds):
        for workload in ("save", "get_change_save"):
            for name in order if round_ % 2 == 0 else order[::-1]:
                print(f"  round {round_ + 1}/{s.app_rounds}: {workload}, {name} ...", flush=True)
                spent[name][workload].append(run_es_app_once(sides[name], workload, s, pg))
    saves = s.app_round_saves // s.app_threads * s.app_threads
    out: dict[str, dict[str, Any]] = {}
    for name, workloads in spent.items():
        row: dict[str, Any] = {}
        for workload, seconds in workloads.items():
            row[f"app_{workload}_per_s"] = saves * len(seconds) / sum(seconds)
            row[f"app_{workload}_rounds_per_s"] = [saves / t for t in seconds]
        out[name] = row
    return out


def settle(pg: Postgres | None = None) -> None:
    """Write out what earlier runs left behind, so a run's fsyncs are its own.

    On ext4 (data=ordered) an fsync commits the journal, which first writes out the dirty
    data of every file: a run right after a server that does not fsync (JetStream's default
    sync) would otherwise pay for that server's writes, and a run after PostgreSQL for the
    pages its background writer puts out meanwhile. So PostgreSQL checkpoints (its dirty
    buffers written and synced), then everything in the page cache is synced.
    """
    if pg is not None:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    os.sync()


def postgres_env(pg: Postgres, s: Sizes) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": "parley",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(pg.port),
        "POSTGRES_USER": "parley",
        "POSTGRES_PASSWORD": "unused-trust-auth",
        "POSTGRES_POOL_SIZE": str(max(s.threads, s.app_threads)),
        "POSTGRES_MAX_OVERFLOW": "0",
    }


def jetstream_env(url: str) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "streams.es_jetstream",
        "NATS_URL": url,
        "JETSTREAM_STREAM": "ESBENCH_" + uuid.uuid4().hex[:8].upper(),
    }


def postgres_factory(pg: Postgres, s: Sizes) -> InfrastructureFactory[Any]:
    return InfrastructureFactory.construct(Environment(name="bench_" + uuid.uuid4().hex[:8], env=postgres_env(pg, s)))


def jetstream_factory(url: str) -> InfrastructureFactory[Any]:
    return InfrastructureFactory.construct(jetstream_env(url))


def with_factory(make: Callable[[], InfrastructureFactory[Any]], s: Sizes) -> dict[str, Any]:
    factory = make()
    try:
        return run_es(factory, s)
    finally:
        if hasattr(factory, "delete_streams"):
            factory.delete_streams()
        factory.close()


# The run ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run, to check the benchmark itself")
    parser.add_argument("--app-only", action="store_true", help="only the eventsourcing Application workloads")
    args = parser.parse_args()
    configure_logging(level="WARNING", json=False)
    s = Sizes()
    if args.quick:
        s = Sizes(
            aggregates=100,
            appends=1280,
            concurrency=64,
            threads=16,
            latency_appends=200,
            load_events=2000,
            load_repeats=2,
            app_saves=2400,
            app_aggregates=240,
            app_rounds=2,
        )

    results: dict[str, dict[str, Any]] = {}
    apps: dict[str, dict[str, Any]] = {}
    root = service_tmpdir("parley-bench-")  # reachable by the postgres OS user
    try:
        always = NatsServer(root / "nats-always", sync_always=True)
        default = NatsServer(root / "nats-default", sync_always=False)
        pg = Postgres(root / "postgres")
        servers = [always, default, pg]
        try:
            threads = [threading.Thread(target=srv.start) for srv in servers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(
                f"servers up: nats (sync always) {always.url}, nats (default sync) {default.url}, postgres {pg.url}",
                flush=True,
            )
            for label, server in (("always", always), ("default", default)):
                if args.app_only:
                    break
                print(f"parley store, sync {label} ...", flush=True)
                settle(pg)
                results[f"parley (jetstream, sync {label})"] = asyncio.run(
                    run_parley(server.url, root / f"data-{label}", s)
                )
                print(f"eventsourcing recorders on jetstream, sync {label} ...", flush=True)
                settle(pg)
                make = functools.partial(jetstream_factory, server.url)
                results[f"es/jetstream (sync {label})"] = with_factory(make, s)
            if not args.app_only:
                print("eventsourcing postgres module ...", flush=True)
                settle(pg)
                results[PG] = with_factory(lambda: postgres_factory(pg, s), s)
            # The Application rows side by side, the sides taking turns.
            print(f"eventsourcing Application from {s.app_threads} threads, {s.app_rounds} rounds ...", flush=True)
            apps = run_es_apps(
                {
                    APP_JS: jetstream_env(always.url),
                    APP_PG: postgres_env(pg, s),
                    APP_JS_DEFAULT: jetstream_env(default.url),
                },
                s,
                pg,
            )
        finally:
            for srv in servers:
                srv.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    sizes = dict(s.__dict__, app_round_saves=s.app_round_saves, app_round_aggregates=s.app_round_aggregates)
    summary: dict[str, Any] = {"sizes": sizes, "results": results}
    if results:
        summary.update(print_store_table(results, s))
    summary.update(print_app_table(apps, s))
    path = write_results("store" if not (args.quick or args.app_only) else "store-quick", summary)
    print(f"results written to {path}")


PG = "es/postgres (fsync, synchronous_commit=on)"
APP_JS = "es/jetstream (sync always)"
APP_PG = "es/postgres (fsync, synchronous_commit=on)"
APP_JS_DEFAULT = "es/jetstream (sync default)"


def print_store_table(results: dict[str, dict[str, Any]], s: Sizes) -> dict[str, Any]:
    pg_row = results[PG]
    rows = []
    for name, r in results.items():
        r["appends_ratio_vs_postgres"] = r["appends_per_s"] / pg_row["appends_per_s"]
        rows.append(
            [
                name,
                r["appends_per_s"],
                r["appends_ratio_vs_postgres"],
                r["append_p50_ms"],
                r["append_p99_ms"],
                r["load_10k_ms"],
                r["load_10k_snapshot_ms"],
            ]
        )
    print()
    print(
        table(
            [
                "store",
                "appends/s",
                "x postgres",
                "append p50 ms",
                "append p99 ms",
                f"load {s.load_events} ms",
                "load w/ snapshot ms",
            ],
            rows,
        )
    )
    durable = results["parley (jetstream, sync always)"]["appends_ratio_vs_postgres"]
    fast = results["parley (jetstream, sync default)"]["appends_ratio_vs_postgres"]
    print(
        f"\nratio, both durable (JetStream sync always vs PostgreSQL synchronous commit): {durable:.2f}x (target >= 5x)"
    )
    print(f"ratio, JetStream default sync vs PostgreSQL synchronous commit: {fast:.2f}x")
    return {"ratio_durable": durable, "ratio_default_sync": fast}


def print_app_table(apps: dict[str, dict[str, Any]], s: Sizes) -> dict[str, Any]:
    pg_row = apps[APP_PG]
    rows = []
    for name, r in apps.items():
        for workload in ("save", "get_change_save"):
            r[f"app_{workload}_ratio_vs_postgres"] = r[f"app_{workload}_per_s"] / pg_row[f"app_{workload}_per_s"]
        rows.append(
            [
                name,
                r["app_save_per_s"],
                r["app_save_ratio_vs_postgres"],
                r["app_get_change_save_per_s"],
                r["app_get_change_save_ratio_vs_postgres"],
            ]
        )
    print()
    print(
        f"eventsourcing Application, {s.app_threads} threads "
        f"({s.app_saves:,} saves a workload and side, in {s.app_rounds} rounds taking turns)"
    )
    print(table(["store", "saves/s", "x postgres", "get+change+save/s", "x postgres"], rows))
    ratio = apps[APP_JS]["app_save_ratio_vs_postgres"]
    commands = apps[APP_JS]["app_get_change_save_ratio_vs_postgres"]
    rounds = zip(apps[APP_JS]["app_save_rounds_per_s"], pg_row["app_save_rounds_per_s"], strict=True)
    paired = [js / pg for js, pg in rounds]
    print(
        f"\nratio, Application from {s.app_threads} threads, both durable (JetStream sync always vs PostgreSQL): "
        f"{ratio:.2f}x saves/s (target >= 3x), {commands:.2f}x get+change+save/s"
    )
    print("saves/s ratio round by round (the two runs side by side): " + ", ".join(f"{r:.2f}x" for r in paired))
    return {"apps": apps, "ratio_app_durable": ratio, "ratio_app_durable_rounds": paired}


if __name__ == "__main__":
    main()
