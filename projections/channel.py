"""The channels projection: the ``delivery`` aggregates' events -> ``read_models.channel`` rows.

A statement per event, each guarded by the delivery's version, so applying one twice changes nothing.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncCursor

from domain import channel as ch
from projections.projector import Projector
from projections.sql import statement
from read_models.channel import CHANNELS
from streams.store import RecordedEvent
from streams.subjects import type_subjects

REQUESTED = """
    INSERT INTO {s}.deliveries (tenant, delivery_id, conversation_id, message_id, channel, author, status,
        requested_at, updated_at, version)
    VALUES (%(tenant)s, %(id)s, %(conversation_id)s, %(message_id)s, %(channel)s, %(author)s, 'requested',
        %(at)s, %(at)s, %(version)s)
    ON CONFLICT (tenant, delivery_id) DO NOTHING
"""
_WHERE = " WHERE tenant = %(tenant)s AND delivery_id = %(id)s AND version < %(version)s"
ATTEMPTED = (
    "UPDATE {s}.deliveries SET status = 'attempting', attempts = %(attempt)s, retry_at = NULL,"
    " updated_at = %(at)s, version = %(version)s" + _WHERE
)
SENT = (
    "UPDATE {s}.deliveries SET status = 'sent', provider_message_id = %(provider_message_id)s, kind = %(kind)s,"
    " updated_at = %(at)s, version = %(version)s" + _WHERE
)
STATUS = (
    "UPDATE {s}.deliveries SET status = %(status)s,"
    " provider_message_id = COALESCE(NULLIF(%(provider_message_id)s, ''), provider_message_id),"
    " updated_at = %(at)s, version = %(version)s" + _WHERE
)
FAILED = (
    "UPDATE {s}.deliveries SET status = %(status)s, last_error = %(reason)s, retry_at = %(retry_at)s,"
    " updated_at = %(at)s, version = %(version)s" + _WHERE
)


class ChannelsProjector(Projector):
    read_model = CHANNELS
    subject = type_subjects(ch.DELIVERY_TYPE)

    async def apply(self, cur: AsyncCursor[Any], event: RecordedEvent, schema: str) -> None:
        params: dict[str, Any] = {
            "tenant": event.stream.tenant,
            "id": event.stream.aggregate_id,
            "version": event.version,
        }
        match event.event:
            case ch.DeliveryRequested() as e:
                template = REQUESTED
                params |= {
                    "conversation_id": e.conversation_id,
                    "message_id": e.message_id,
                    "channel": e.channel,
                    "author": e.author,
                    "at": e.requested_at,
                }
            case ch.DeliveryAttempted() as e:
                template = ATTEMPTED
                params |= {"attempt": e.attempt, "at": e.attempted_at}
            case ch.DeliverySent() as e:
                template = SENT
                params |= {"provider_message_id": e.provider_message_id, "kind": e.kind, "at": e.sent_at}
            case ch.DeliveryStatusChanged() as e:
                template = STATUS
                params |= {"status": e.status, "provider_message_id": e.provider_message_id, "at": e.at}
            case ch.DeliveryFailed() as e:
                template = FAILED
                status = "retrying" if e.retryable else "failed"
                params |= {"status": status, "reason": e.reason, "retry_at": e.retry_at, "at": e.failed_at}
            case ch.DeliveryDeadLettered() as e:
                template = FAILED
                params |= {"status": "dead_lettered", "reason": e.reason, "retry_at": None, "at": e.at}
            case ch.DeliverySkipped() as e:
                template = FAILED
                params |= {"status": "skipped", "reason": e.reason, "retry_at": None, "at": e.at}
            case _:
                return
        await cur.execute(statement(template, schema), params)
