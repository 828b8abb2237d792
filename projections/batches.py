"""Applying a batch of commits to a projector's schema, inside the caller's transaction.

Commits at or below the checkpoint are skipped (a redelivery is a no-op). The rest are decoded
and applied in one savepoint, sent as a single pipeline. If one of them is poison (it cannot be
decoded, or its rows are refused), the savepoint is rolled back and the batch is applied again
one commit per savepoint: each poison commit is rolled back alone and recorded in the schema's
``dead_letters`` with its sequence, subject and error, and the projector goes on.

Errors of the database itself (connection lost, timeouts, deadlocks, a missing table) are not
poison: they abort the batch and the caller retries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from psycopg import AsyncConnection

from projections.checkpoints import BatchResult, DeadLetter, record_dead_letters
from streams.bulk import Delivered
from streams.errors import EventDecodeError
from streams.jetstream import RawMessage
from streams.store import EventStore, RecordedEvent

if TYPE_CHECKING:
    from projections.projector import Projector

log = structlog.get_logger(__name__)

Message = RawMessage | Delivered  # a commit as a feed delivers it

__all__ = ["BatchResult", "DeadLetter", "Message", "apply_batch", "decode", "is_poison", "record_dead_letters"]


def is_poison(error: Exception) -> bool:
    """An error that belongs to the event, not to the database: retrying would fail the same way."""
    return not isinstance(error, psycopg.Error) or isinstance(error, psycopg.DataError | psycopg.IntegrityError)


async def apply_batch(
    conn: AsyncConnection[Any],
    projector: Projector,
    store: EventStore,
    schema: str,
    messages: Sequence[Message],
    *,
    after: int,
) -> BatchResult:
    fresh = [m for m in messages if m.seq > after]
    decoded: list[tuple[Message, list[RecordedEvent]]] = []
    dead: list[DeadLetter] = []
    for raw in fresh:
        match decode(projector, store, raw):
            case DeadLetter() as letter:
                dead.append(letter)
            case events:
                decoded.append((raw, events))
    try:
        async with conn.transaction(), conn.pipeline(), conn.cursor() as cur:
            await _apply(projector, cur, [event for _, events in decoded for event in events], schema)
    except Exception as e:
        if not is_poison(e):
            raise
        log.warning("poison in batch, applying its commits one by one", projector=projector.name, error=str(e))
        decoded = await _apply_one_by_one(conn, projector, schema, decoded, dead)
    await record_dead_letters(conn, schema, dead)
    return BatchResult(
        checkpoint=max([after, *(m.seq for m in fresh)]),
        commits=len(decoded),
        events=sum(len(events) for _, events in decoded),
        skipped=len(messages) - len(fresh),
        dead_letters=dead,
    )


def decode(projector: Projector, store: EventStore, raw: Message) -> list[RecordedEvent] | DeadLetter:
    """A commit's events, or the dead letter of a commit that cannot be decoded."""
    try:
        return store.decode(raw)
    except EventDecodeError as e:
        return _dead(projector, raw, e)


async def _apply_one_by_one(
    conn: AsyncConnection[Any],
    projector: Projector,
    schema: str,
    decoded: list[tuple[Message, list[RecordedEvent]]],
    dead: list[DeadLetter],
) -> list[tuple[Message, list[RecordedEvent]]]:
    applied = []
    for raw, events in decoded:
        try:
            async with conn.transaction(), conn.cursor() as cur:
                await _apply(projector, cur, events, schema)
        except Exception as e:
            if not is_poison(e):
                raise
            dead.append(_dead(projector, raw, e, events[0] if events else None))
        else:
            applied.append((raw, events))
    return applied


async def _apply(projector: Projector, cur: psycopg.AsyncCursor[Any], events: list[RecordedEvent], schema: str) -> None:
    for event in events:
        log.debug(
            "apply",
            projector=projector.name,
            seq=event.seq,
            version=event.version,
            event_type=type(event.event).__name__,
            tenant=event.stream.tenant,
            **{f"{event.stream.aggregate_type}_id": event.stream.aggregate_id},
            correlation_id=event.meta.correlation_id,
        )
    await projector.apply_events(cur, events, schema)


def _dead(projector: Projector, raw: Message, error: Exception, event: RecordedEvent | None = None) -> DeadLetter:
    reason = f"{type(error).__name__}: {error}"
    context: dict[str, Any] = {}
    if event is not None:
        context = {
            "tenant": event.stream.tenant,
            f"{event.stream.aggregate_type}_id": event.stream.aggregate_id,
            "correlation_id": event.meta.correlation_id,
        }
    log.error("dead letter", projector=projector.name, seq=raw.seq, subject=raw.subject, error=reason, **context)
    return DeadLetter(raw.seq, raw.subject, reason)
