"""Faults as a permanent test: the CI-sized runs of ``./parley chaos`` (``bench.chaos``).

Given the platform as separate processes (nats-server, PostgreSQL, Redis, the API with its
analytics, the projectors, the agent runtime) and customers chatting through the API with
idempotency keys and retries, when the API, the projectors, the agent runtime and nats-server are
killed with SIGKILL at random moments and Redis and PostgreSQL are restarted, then once it has
caught up: every acknowledged command is in the stream exactly once, every read model equals a
rebuild from the stream, every message the AI owns has one answer, the analytics hold the
stream's events once each, and there are no dead letters and no consumer stuck. The same on the
three-node NATS cluster with R3 streams while its nodes are killed in turn.

Each run has a random seed (``PARLEY_CHAOS_SEED`` fixes it); a failure names it, and
``./parley chaos --quick --seed N`` runs the same faults again (their timing differs).
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from bench.chaos import FAULTS, Plan, render, run


def seed() -> int:
    return int(os.environ.get("PARLEY_CHAOS_SEED") or random.randrange(1 << 30))


def chaos(*, cluster: bool) -> dict[str, Any]:
    plan = Plan.make(quick=True, cluster=cluster, seconds=None, seed=seed())
    report = run(plan)
    print(render(report))
    assert report["failures"] == [], f"seed {plan.seed}: {report['failures']}"
    return report


def assert_nothing_lost_or_doubled(report: dict[str, Any]) -> None:
    load, commands, answers = report["load"], report["commands"], report["answers"]
    assert load["acknowledged"] >= 50, load  # a load worth the name went through the faults
    assert load["retried"] > 0, load  # and the faults reached the clients
    assert commands["lost"] == []
    assert commands["doubled"] == []
    assert commands["wrong_ids"] == []
    assert answers["owned_by_ai"] > 0
    assert answers["unanswered"] == []
    assert answers["doubled"] == []
    models = report["read_models"]
    assert models["tables_compared"] >= 10
    assert models["differences"] == {}
    assert not any(models["dead_letters"].values())
    assert report["analytics"]["dead_letters"] == 0
    assert report["analytics"]["problems"] == []
    assert report["analytics"]["events"] == report["stream"]["events"] > 0


@pytest.mark.timeout(900)
def test_killing_every_process_and_restarting_the_databases_loses_and_doubles_nothing() -> None:
    report = chaos(cluster=False)
    assert_nothing_lost_or_doubled(report)
    assert set(report["kills"]) == set(FAULTS) - {"nats_outage"}  # each process killed, each database restarted
    assert set(report["stream"]["replicas"].values()) == {1}


@pytest.mark.timeout(900)
def test_killing_each_node_of_the_nats_cluster_in_turn_loses_and_doubles_nothing() -> None:
    report = chaos(cluster=True)
    assert_nothing_lost_or_doubled(report)
    assert report["kills"]["nats"] >= 3  # each node at least once (killed in turn)
    assert {"api", "projections", "agents"} <= set(report["kills"])
    assert set(report["stream"]["replicas"].values()) == {3}
