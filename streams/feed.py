"""Following a stream in order: the agent runtime's durable JetStream consumers.

A ``Feed`` is a durable pull consumer over a subject filter. It yields batches of raw messages
in stream order; the reader acknowledges a batch once what it did with it is committed
(``AckPolicy.ALL``: acknowledging the last message acknowledges the batch). Unacknowledged
messages are delivered again, so readers must treat a redelivered sequence as a no-op; the
agent runtime does that with idempotent commands (one reply command id per message). Readers of
the whole event stream, the projectors and the channel outbox, read it faster with
``streams.bulk.BulkFeed``.

A feed reads the event stream unless told another (the agent work stream, ``streams.work``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from streams.errors import UnavailableError
from streams.jetstream import JetStreamLog, RawMessage


async def resume_point(log: JetStreamLog, stream: str, durable: str) -> int | None:
    """The stream sequence after what consumer ``durable`` has acknowledged (None: no such consumer)."""
    try:
        info = await log.js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return None
    except nats.errors.Error as e:
        raise UnavailableError(f"cannot read consumer {durable}: {e}") from None
    return (info.ack_floor.stream_seq if info.ack_floor else 0) + 1


class Batch:
    def __init__(self, messages: list[RawMessage], last: object = None) -> None:
        self.messages = messages
        self._last = last

    async def ack(self) -> None:
        if self._last is not None:
            try:
                await self._last.ack_sync()  # type: ignore[attr-defined]
            except (TimeoutError, nats.errors.Error) as e:
                raise UnavailableError(f"could not acknowledge a batch: {e}") from None


class Feed:
    def __init__(
        self,
        log: JetStreamLog,
        durable: str,
        *,
        subject: str | None = None,
        stream: str | None = None,
        start_seq: int = 1,
        batch: int = 500,
        ack_wait: float = 30.0,
        idle_wait: float = 0.5,
    ) -> None:
        self.log = log
        self.durable = durable
        self.subject = subject
        self.stream = stream or log.stream
        self.start_seq = max(start_seq, 1)
        self.batch = batch
        self.ack_wait = ack_wait
        self.idle_wait = idle_wait
        self._sub: object | None = None

    async def _subscribe(self) -> object:
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=-1,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.start_seq,
            filter_subject=self.subject,
        )
        try:
            return await self.log.js.pull_subscribe(
                self.subject or "", durable=self.durable, stream=self.stream, config=config
            )
        except nats.errors.Error as e:
            raise UnavailableError(f"cannot open consumer {self.durable} on {self.stream}: {e}") from None

    @classmethod
    async def from_where_it_left(cls, log: JetStreamLog, durable: str, **options: Any) -> Feed:
        """A feed that resumes its durable consumer, or, the first time, starts after the stream's end."""
        try:
            info = await log.js.consumer_info(log.stream, durable)
            start_seq = info.config.opt_start_seq or 1
        except nats.js.errors.NotFoundError:
            start_seq = await log.last_seq() + 1
        except nats.errors.Error as e:
            raise UnavailableError(f"cannot read consumer {durable}: {e}") from None
        return cls(log, durable, start_seq=start_seq, **options)

    async def restart(self) -> None:
        """Start the durable consumer afresh from its acknowledged position.

        A message delivered but never acknowledged (its reader died mid-batch) is delivered again
        only after the ack wait, behind the messages that came after it; a new reader that must
        keep the order starts here instead, and gets it first.
        """
        start = await resume_point(self.log, self.stream, self.durable)
        if start is None:
            return  # it does not exist yet: the first fetch creates it at ``start_seq``
        await self.close()
        await self.delete()
        self.start_seq = start

    async def delete(self) -> None:
        try:
            await self.log.js.delete_consumer(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        except nats.errors.Error as e:
            raise UnavailableError(f"cannot delete consumer {self.durable}: {e}") from None

    async def fetch(self) -> Batch:
        """The next batch; empty when nothing arrived within ``idle_wait``."""
        if self._sub is None:
            self._sub = await self._subscribe()
        try:
            msgs = await self._sub.fetch(self.batch, timeout=self.idle_wait)  # type: ignore[attr-defined]
        except (TimeoutError, nats.errors.TimeoutError):
            return Batch([])
        out = []
        for m in msgs:
            md = m.metadata
            headers = m.headers or {}
            out.append(
                RawMessage(
                    seq=md.sequence.stream,
                    subject=m.subject,
                    headers=headers,
                    data=m.data,
                    time=md.timestamp.isoformat() if md.timestamp else "",
                )
            )
        return Batch(out, msgs[-1] if msgs else None)

    async def __aiter__(self) -> AsyncIterator[Batch]:
        while True:
            batch = await self.fetch()
            if batch.messages:
                yield batch

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()  # type: ignore[attr-defined]
            except nats.errors.Error as e:
                raise UnavailableError(f"could not close consumer {self.durable}: {e}") from None
