"""``./parley chaos``: faults as a permanent test.

The platform runs as separate processes on free ports in a temp directory (``bench.chaos_stack``):
nats-server, PostgreSQL, Redis, the API (with the ClickHouse analytics projector, as ``./parley up``
runs it), the PostgreSQL projectors and the agent runtime. Customers chat through the HTTP API as
real clients do (``bench.chaos_load``: ``Idempotency-Key`` on every command, retries on 5xx and
timeouts), while at random moments the API, the projectors, the agent runtime or nats-server is
killed with SIGKILL and started again, and Redis and PostgreSQL are restarted. Then the faults
stop, everything catches up, and the invariants are checked (``bench.chaos_check``): every
acknowledged command in the stream exactly once, every read model equal to a fresh rebuild, one
answer per customer message the AI owns, the analytics equal to the stream, no dead letters.

``--quick`` is the CI-sized run (``tests/test_chaos.py``); ``--cluster`` runs nats-server as the
three-node loopback cluster with R3 streams and kills one node at a time. Prints a table, writes
``bench/results/chaos[-cluster][-quick].json``, and exits 1 when an invariant fails (the temp
directory, with every process's log, is then kept).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from bench.chaos_check import (
    analytics_tables,
    check_analytics,
    check_answers,
    check_commands,
    compare_read_models,
    consumers,
    read_stream,
    stuck,
)
from bench.chaos_load import Load, LoadSettings, summary
from bench.chaos_stack import TENANT, Stack
from bench.common import table, write_results
from infra.logs import configure_logging
from infra.services import service_tmpdir
from infra.tokens import make_token
from streams.factory import StoreSettings, open_store
from streams.work import work_stream_name

FAULTS = ("api", "projections", "agents", "nats", "nats_outage", "redis", "postgres")


@dataclass
class Plan:
    seconds: float = 300.0  # the fault window
    customers: int = 20
    seed: int = 0
    cluster: bool = False
    quick: bool = False
    gap: tuple[float, float] = (2.0, 6.0)  # between two faults
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "api": 3,
            "projections": 2,
            "agents": 2,
            "nats": 2,
            "nats_outage": 0.5,
            "redis": 1,
            "postgres": 1,
        }
    )
    # Faults inflicted first, in random order, whatever the window (default: each kind once).
    first: tuple[str, ...] = ()
    settle_seconds: float = 120.0  # to catch up once the faults stop
    command_deadline: float = 120.0  # a client retries a command this long

    @classmethod
    def make(cls, *, quick: bool, cluster: bool, seconds: float | None, seed: int | None) -> Plan:
        plan = cls(quick=quick, cluster=cluster, seed=random.randrange(1 << 30) if seed is None else seed)
        if quick:  # each kind of fault once, then more while the window lasts
            plan.seconds, plan.customers, plan.gap = 35.0, 6, (1.0, 3.0)
        if cluster:  # one node at a time, most often
            plan.weights = {
                "nats": 4,
                "nats_outage": 1,
                "api": 2,
                "projections": 1,
                "agents": 1,
                "redis": 0.5,
                "postgres": 0.5,
            }
            if quick:  # each node once, and each Python process; Redis and PostgreSQL in the other run
                plan.seconds, plan.first = 20.0, ("nats", "nats", "nats", "api", "projections", "agents")
        if quick:  # no long outage
            plan.weights.pop("nats_outage")
        if seconds is not None:
            plan.seconds = seconds
        return plan

    @property
    def name(self) -> str:
        return "chaos" + ("-cluster" if self.cluster else "") + ("-quick" if self.quick else "")


def run(plan: Plan, *, log: Any = print, keep: bool = False) -> dict[str, Any]:
    """One chaos run; its report (``report["passed"]``: every invariant held)."""
    secret = "chaos-" + uuid.uuid4().hex
    rng = random.Random(plan.seed)
    root = service_tmpdir("parley-chaos-")
    stack = Stack(root, cluster=plan.cluster, secret=secret, log=log)
    began = time.monotonic()
    report: dict[str, Any] = {"plan": {**asdict(plan), "name": plan.name}, "root": str(root)}
    passed = False
    try:
        log(f"chaos: seed {plan.seed}; starting the platform in {root} ...")
        stack.start()
        started = time.monotonic()
        log(f"chaos: up in {started - began:.1f} s (API {stack.api_url}); load and faults for {plan.seconds:.0f} s")
        tokens = [
            make_token(secret, subject=f"customer-{i}", tenant=TENANT, roles=["customer"])
            for i in range(plan.customers)
        ]
        load = Load(
            stack.api_url,
            tokens,
            LoadSettings(customers=plan.customers, seed=plan.seed, deadline=plan.command_deadline),
        )
        load.start()
        faults = _inflict_faults(stack, plan, rng, log)
        faults_over = time.monotonic()
        load.stop()
        stack.ensure_services()
        stack.wait_api(120)
        if not load.join(plan.command_deadline + 60):
            raise RuntimeError("the load did not finish")
        if load.error is not None:
            raise RuntimeError(f"the load failed: {load.error!r}") from load.error
        log(f"chaos: faults over after {faults_over - started:.0f} s; {len(load.commands)} commands; catching up ...")
        settled = asyncio.run(_settle(stack, plan))
        caught_up = time.monotonic()
        log(
            f"chaos: {'caught up' if settled['settled'] else 'NOT caught up'} in {caught_up - faults_over:.0f} s; "
            "checking ..."
        )
        report.update(asyncio.run(_check(stack, load)))
        stack.procs["api"].stop()  # the analytics store (chDB) is the API's until it stops
        analytics = check_analytics_now(stack, report.pop("_view"))
        report.update(
            {
                "load": summary(load.commands),
                "sessions": load.sessions,
                "faults": faults,
                "kills": dict(stack.kills),
                "outage_seconds": {k: round(v, 1) for k, v in stack.outage_seconds.items()},
                "exited_on_their_own": dict(stack.exits),
                "exits": stack.exit_logs[:20],
                "starts": {name: proc.starts for name, proc in stack.procs.items()},
                "settle": settled,
                "analytics": analytics,
                "seconds": {
                    "start": round(started - began, 1),
                    "faults": round(faults_over - started, 1),
                    "catch_up": round(caught_up - faults_over, 1),
                    "checks": round(time.monotonic() - caught_up, 1),
                    "total": round(time.monotonic() - began, 1),
                },
            }
        )
        report["failures"] = failures(report)
        passed = not report["failures"]
    finally:
        stack.stop()
        report["passed"] = passed
        if passed and not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"chaos: the run's directory (logs in {root / 'logs'}) is kept")
    return report


def _inflict_faults(stack: Stack, plan: Plan, rng: random.Random, log: Any) -> list[dict[str, Any]]:
    """Faults at random moments until the window closes; every kind once first, in random order."""
    kinds = [k for k in FAULTS if plan.weights.get(k)]
    first = list(plan.first or kinds)
    rng.shuffle(first)
    done: list[dict[str, Any]] = []
    opened = time.monotonic()
    end = opened + plan.seconds
    while True:
        _wait_supervising(stack, rng.uniform(*plan.gap))
        if not first and time.monotonic() >= end:
            return done
        fault = first.pop(0) if first else rng.choices(kinds, [plan.weights[k] for k in kinds])[0]
        at = time.monotonic() - opened
        what = stack.inflict(fault, rng)
        log(f"  {at:6.1f} s  {what}")
        done.append({"at": round(at, 1), "fault": fault, "what": what})


def _wait_supervising(stack: Stack, seconds: float) -> None:
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        stack.supervise()
        time.sleep(min(left, 0.25))


def _store_settings(stack: Stack) -> StoreSettings:
    return StoreSettings(
        nats_url=stack.nats_url, data_dir=stack.root / "data", replicas=3 if stack.cluster else 1, connect_retry_for=60
    )


def _health(stack: Stack) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{stack.api_url}/health", timeout=10) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as e:
        with contextlib.suppress(ValueError):
            return dict(json.loads(e.read()))
    except OSError:
        pass
    return None


async def _settle(stack: Stack, plan: Plan, quiet: float = 3.0) -> dict[str, Any]:
    """Wait until the platform has caught up: every dependency answers, every projector (analytics
    too) at the stream's end, the stream still for ``quiet`` seconds, and every message the AI owns
    answered; or until ``plan.settle_seconds`` pass."""
    opened = await open_store(_store_settings(stack), name="parley-chaos")
    try:
        began = time.monotonic()
        last, still_since = -1, time.monotonic()
        lags: dict[str, int] = {}
        unanswered = -1
        left: dict[str, dict[str, int]] = {}
        while True:
            health = await asyncio.to_thread(_health, stack) or {}
            lags = {p["name"]: p["lag"] for p in health.get("projectors", [])}
            seq = await opened.store.last_seq()
            if seq != last:
                last, still_since = seq, time.monotonic()
            caught_up = health.get("status") == "ok" and "analytics" in lags and not any(lags.values())
            if caught_up and time.monotonic() - still_since >= quiet:
                unanswered = len(check_answers(await read_stream(opened.store))["unanswered"])
                left = stuck(await consumers(opened))
                if unanswered == 0 and not left:
                    return {"settled": True, "seconds": round(time.monotonic() - began, 1), "last_seq": seq}
            if time.monotonic() - began > plan.settle_seconds:
                return {
                    "settled": False,
                    "lags": lags,
                    "unanswered": unanswered,
                    "work_left": left,
                    "health": health.get("status"),
                }
            await asyncio.to_thread(stack.supervise)
            await asyncio.sleep(1.0)
    finally:
        await opened.close()


async def _check(stack: Stack, load: Load) -> dict[str, Any]:
    opened = await open_store(_store_settings(stack), name="parley-chaos")
    try:
        view = await read_stream(opened.store)
        replicas = {}
        for name in (opened.settings.stream, work_stream_name(opened.settings.stream)):
            replicas[name] = (await opened.log.js.stream_info(name)).config.num_replicas
        scratch = "chaos_rebuild"
        with psycopg.connect(stack.pg.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {scratch}")
            conn.execute(f"CREATE DATABASE {scratch}")
        scratch_url = stack.pg.url.rsplit("/", 1)[0] + f"/{scratch}"
        return {
            "stream": {
                "last_seq": view.last_seq,
                "commits": view.commits,
                "events": view.events,
                "conversations": len(view.conversations),
                "undecodable": view.undecodable,
                "replicas": replicas,
            },
            "commands": check_commands(load.commands, view),
            "answers": check_answers(view),
            "consumers": await consumers(opened),
            "read_models": await compare_read_models(stack.pg.url, scratch_url, opened.store),
            "_view": view,
        }
    finally:
        await opened.close()


def check_analytics_now(stack: Stack, view: Any) -> dict[str, Any]:
    return check_analytics(analytics_tables(stack.env()), view)


def failures(report: dict[str, Any]) -> list[str]:
    """Each invariant that did not hold, in a line."""
    out = []
    commands, answers, models = report["commands"], report["answers"], report["read_models"]
    analytics, stream = report["analytics"], report["stream"]
    if not report["settle"]["settled"]:
        out.append(f"the platform did not catch up: {report['settle']}")
    if commands["lost"]:
        out.append(f"{len(commands['lost'])} acknowledged commands lost: {commands['lost'][:5]}")
    if commands["doubled"]:
        out.append(f"{len(commands['doubled'])} doubled: {commands['doubled'][:5]}")
    if commands["wrong_ids"]:
        out.append(f"{len(commands['wrong_ids'])} answers naming what the stream lacks: {commands['wrong_ids'][:5]}")
    if answers["unanswered"]:
        out.append(f"{len(answers['unanswered'])} messages the AI owns unanswered: {answers['unanswered'][:5]}")
    if answers["doubled"]:
        out.append(f"{len(answers['doubled'])} messages answered twice: {answers['doubled'][:5]}")
    if answers["answered_while_not_the_ais"]:
        out.append(f"{answers['answered_while_not_the_ais']} messages answered by the AI while escalated")
    if models["differences"]:
        out.append(f"read models differ from a rebuild: {models['differences']} {models['samples']}")
    if dead := {k: v for k, v in models["dead_letters"].items() if v}:
        out.append(f"dead letters: {dead}")
    if analytics["dead_letters"]:
        out.append(f"{analytics['dead_letters']} analytics dead letters")
    if analytics["problems"]:
        out.append(f"analytics: {analytics['problems']}")
    if left := stuck(report["consumers"]):
        out.append(f"work never acknowledged (a consumer stuck): {left}")
    wanted = 3 if report["plan"]["cluster"] else 1
    if any(n != wanted for n in stream["replicas"].values()):
        out.append(f"the streams' replicas are {stream['replicas']}, not {wanted}")
    if stream["undecodable"]:
        out.append(f"undecodable commits: {stream['undecodable'][:5]}")
    return out


def render(report: dict[str, Any]) -> str:
    load, commands, answers = report["load"], report["commands"], report["answers"]
    models, analytics, seconds = report["read_models"], report["analytics"], report["seconds"]
    kills = report["kills"]
    dead = sum(models["dead_letters"].values()) + analytics["dead_letters"]
    rows: list[list[Any]] = [
        ["commands sent / acknowledged", f"{load['sent']:,} / {load['acknowledged']:,}"],
        ["  retried (same key) / gave up", f"{load['retried']:,} / {load['gave_up']:,}"],
        ["  by kind", ", ".join(f"{k} {v:,}" for k, v in load["by_kind"].items())],
        ["  refused (4xx)", json.dumps(load["refused"]) if load["refused"] else "0"],
        ["  answers seen", ", ".join(f"{k}: {v:,}" for k, v in load["answers"].items())],
        [
            "  500s / 503s without Retry-After",
            f"{load['server_errors_500']} / {load['unavailable_without_retry_after']}",
        ],
        [
            "kills (SIGKILL)",
            ", ".join(f"{k} {kills.get(k, 0)}" for k in ("api", "projections", "agents"))
            + f", nats-server {kills.get('nats', 0) + kills.get('nats_outage', 0)}"
            + f" ({kills.get('nats_outage', 0)} of them 10-15 s)",
        ],
        ["restarts", f"redis {kills.get('redis', 0)}, postgres {kills.get('postgres', 0)}"],
        ["exited on their own", json.dumps(report["exited_on_their_own"]) if report["exited_on_their_own"] else "0"],
        ["stream replicas", ", ".join(f"{k} R{v}" for k, v in report["stream"]["replicas"].items())],
        [
            "stream",
            f"{report['stream']['commits']:,} commits, {report['stream']['events']:,} events, "
            f"{report['stream']['conversations']:,} conversations",
        ],
        ["lost (acknowledged, not in the stream)", len(commands["lost"])],
        ["doubled", len(commands["doubled"]) + len(answers["doubled"])],
        ["answers naming what is not there", len(commands["wrong_ids"])],
        [
            "AI-owned messages / unanswered / closed first",
            f"{answers['owned_by_ai']:,} / {len(answers['unanswered'])} / {answers['closed_before_the_answer']}",
        ],
        [
            "read-model differences (tables compared)",
            f"{sum(models['differences'].values())} ({models['tables_compared']})",
        ],
        ["analytics events / stream events", f"{analytics['events']:,} / {analytics['stream_events']:,}"],
        ["analytics problems", len(analytics["problems"])],
        ["dead letters", dead],
        ["consumers with work left (stuck)", len(stuck(report["consumers"]))],
        [
            "duration",
            f"{seconds['total']:.0f} s (start {seconds['start']:.0f}, faults {seconds['faults']:.0f}, "
            f"catch-up {seconds['catch_up']:.0f}, checks {seconds['checks']:.0f})",
        ],
    ]
    return table(["measure", "value"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the CI-sized run (about a minute of faults)")
    parser.add_argument("--seconds", type=float, help="how long the faults go on (default 300, quick 35)")
    parser.add_argument("--seed", type=int, help="the faults' and the customers' random seed (default: random)")
    parser.add_argument("--cluster", action="store_true", help="the three-node NATS cluster, R3 streams")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory and its logs")
    args = parser.parse_args(argv)
    configure_logging(level="WARNING", json=False)
    plan = Plan.make(quick=args.quick, cluster=args.cluster, seconds=args.seconds, seed=args.seed)
    report = run(plan, keep=args.keep)
    print()
    print(render(report))
    path = write_results(plan.name, {k: v for k, v in report.items() if k != "root"})
    print(f"\nresults written to {path}")
    if report["failures"]:
        print("\nFAILED:", file=sys.stderr)
        for line in report["failures"]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"\npassed: 0 lost, 0 doubled, 0 dead letters (seed {plan.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
