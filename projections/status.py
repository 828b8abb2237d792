"""How far behind a projector is, for operators and for Prometheus."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, TypedDict

from psycopg import AsyncConnection, errors, sql
from psycopg_pool import AsyncConnectionPool

from projections.checkpoints import read_checkpoint
from projections.projector import Projector
from streams.store import EventStore


class ProjectorStatus(TypedDict):
    name: str
    schema: str
    checkpoint: int  # the last stream sequence its schema accounts for
    stream_last_seq: int  # the last sequence in the whole stream
    last_event_seq: int  # the last sequence among the events it follows
    lag: int  # sequences between its checkpoint and the last event it follows (0: caught up)
    dead_letters: int


async def projector_status(
    db: AsyncConnectionPool[Any] | AsyncConnection[Any], store: EventStore, projector: Projector
) -> ProjectorStatus:
    if isinstance(db, AsyncConnectionPool):
        async with db.connection() as conn:
            checkpoint, dead = await _progress(conn, projector)
    else:
        checkpoint, dead = await _progress(db, projector)
    stream_last_seq = await store.last_seq()
    last_event = await store.last_on(projector.subject)
    last_event_seq = last_event.seq if last_event is not None else 0
    return {
        "name": projector.name,
        "schema": projector.schema,
        "checkpoint": checkpoint,
        "stream_last_seq": stream_last_seq,
        "last_event_seq": last_event_seq,
        "lag": max(0, last_event_seq - checkpoint),
        "dead_letters": dead,
    }


async def _progress(conn: AsyncConnection[Any], projector: Projector) -> tuple[int, int]:
    try:
        checkpoint = await read_checkpoint(conn, projector.schema, projector.name) or 0
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}.dead_letters").format(sql.Identifier(projector.schema))
        )
        row = await cur.fetchone()
        return checkpoint, int(row[0]) if row else 0
    except (errors.UndefinedTable, errors.InvalidSchemaName):  # not migrated yet
        await conn.rollback()
        return 0, 0


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
