"""The human agent pool aggregate, wired for the command runner."""

from __future__ import annotations

from commands.runner import Aggregate
from domain import agent_pool as p
from streams.repository import AggregateSpec

AGENT_POOL: Aggregate[p.Pool] = Aggregate(
    AggregateSpec(type_name=p.AGGREGATE_TYPE, state_type=p.Pool, initial=p.initial, evolve=p.evolve),
    decide=p.decide,
)
