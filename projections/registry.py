"""The projectors Parley runs, their runners, and bringing their schemas up to date at start-up."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from projections.call import CallsProjector
from projections.channel import ChannelsProjector
from projections.checkpoints import PostgresBatch, PostgresCheckpoints
from projections.config import ConfigsProjector
from projections.conversation import ConversationsProjector
from projections.escalation import EscalationProjector
from projections.projector import Projector
from projections.runner import ProjectorRunner
from read_models import migrations
from streams.store import EventStore


def projectors() -> list[Projector]:
    return [ConversationsProjector(), ConfigsProjector(), EscalationProjector(), CallsProjector(), ChannelsProjector()]


def projector(name: str) -> Projector:
    found = {p.name: p for p in projectors()}
    if name not in found:
        raise KeyError(f"no projector named {name!r}; known: {', '.join(sorted(found))}")
    return found[name]


def runner(
    projector: Projector,
    store: EventStore,
    pool: AsyncConnectionPool[Any],
    *,
    standby_poll: float = 1.0,
    **options: Any,
) -> ProjectorRunner[PostgresBatch]:
    """A projector's runner, its checkpoints in its schema (``options`` go to ``ProjectorRunner``)."""
    checkpoints = PostgresCheckpoints(pool, projector.read_model, standby_poll=standby_poll)
    return ProjectorRunner(projector, store, checkpoints, **options)


def runners(store: EventStore, pool: AsyncConnectionPool[Any], **options: Any) -> list[ProjectorRunner[PostgresBatch]]:
    """One runner per projector (``options`` go to each ``ProjectorRunner``)."""
    return [runner(p, store, pool, **options) for p in projectors()]


async def migrate(pool: AsyncConnectionPool[Any], chosen: list[Projector] | None = None) -> dict[str, list[int]]:
    """Create or update every projector's schema; returns the migration versions applied to each."""
    applied = {}
    async with pool.connection() as conn:
        for p in chosen or projectors():
            applied[p.name] = await migrations.migrate(conn, p.read_model)
    return applied
