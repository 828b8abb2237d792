"""How far behind a projection is, for operators and for Prometheus."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, TypedDict

from psycopg_pool import AsyncConnectionPool

from projections.checkpoints import Checkpoints, PostgresCheckpoints
from projections.projector import Projector
from streams.store import EventStore


class ProjectorStatus(TypedDict):
    name: str
    schema: str  # where its rows are: a PostgreSQL schema, a ClickHouse database
    checkpoint: int  # the last stream sequence its rows account for
    stream_last_seq: int  # the last sequence in the whole stream
    last_event_seq: int  # the last sequence among the events it follows
    lag: int  # sequences between its checkpoint and the last event it follows (0: caught up)
    dead_letters: int


async def status_of(
    checkpoints: Checkpoints[Any], store: EventStore, name: str, subject: str | None
) -> ProjectorStatus:
    """A projection's status, from its checkpoints and the stream (``subject``: the commits it follows)."""
    checkpoint = await checkpoints.position(name)
    dead = await checkpoints.dead_letter_count()
    stream_last_seq = await store.last_seq()
    if subject is None:  # it follows every commit
        last_event_seq = stream_last_seq
    else:
        last_event = await store.last_on(subject)
        last_event_seq = last_event.seq if last_event is not None else 0
    return {
        "name": name,
        "schema": checkpoints.where,
        "checkpoint": checkpoint,
        "stream_last_seq": stream_last_seq,
        "last_event_seq": last_event_seq,
        "lag": max(0, last_event_seq - checkpoint),
        "dead_letters": dead,
    }


async def projector_status(pool: AsyncConnectionPool[Any], store: EventStore, projector: Projector) -> ProjectorStatus:
    """A PostgreSQL projector's status, wherever its runner runs."""
    return await status_of(PostgresCheckpoints(pool, projector.read_model), store, projector.name, projector.subject)


def metrics_text(statuses: Iterable[ProjectorStatus]) -> str:
    """The statuses in Prometheus' text exposition format."""
    statuses = list(statuses)
    gauges: tuple[tuple[str, str, Literal["lag", "checkpoint", "dead_letters"]], ...] = (
        ("parley_projector_lag", "Stream sequences between the checkpoint and the last event followed.", "lag"),
        ("parley_projector_checkpoint", "Last stream sequence the read model accounts for.", "checkpoint"),
        ("parley_projector_dead_letters", "Commits the projector could not apply.", "dead_letters"),
    )
    lines = []
    for metric, help_text, field in gauges:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        lines += [f'{metric}{{projector="{s["name"]}"}} {s[field]}' for s in statuses]
    return "\n".join(lines) + "\n"
