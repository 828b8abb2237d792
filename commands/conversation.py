"""The conversation aggregate, wired for the command runner."""

from __future__ import annotations

from commands.runner import Aggregate
from domain import conversation as c
from streams.repository import AggregateSpec

CONVERSATION: Aggregate[c.Conversation] = Aggregate(
    AggregateSpec(
        type_name=c.AGGREGATE_TYPE,
        state_type=c.Conversation,
        initial=c.initial,
        evolve=c.evolve,
        data_subject=c.data_subject,
    ),
    decide=c.decide,
)
