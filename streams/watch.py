"""Seeing commits as they are published, without a consumer: core NATS on the commit subjects.

JetStream publishes every stored message on its subject, so a plain subscription sees each commit
the moment it is acknowledged. Three uses, one mechanism, all here so no NATS client or message
leaves ``streams/``:

* ``Watch``: a live feed of decoded commits on some subjects (server-sent events).
* ``Expected``: the commit one command will make (the agent's reply to a message), subscribed
  before the command that causes it, and looked up in the stream if it came before that.
* ``Following``: a callback for each commit of an aggregate type (``stream``, its last version),
  for caches that must notice changes (the config catalogs).

Core NATS does not buffer for a slow subscriber: a watcher that falls far behind loses messages.
Readers that must not lose any use a durable ``Feed``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from streams.jetstream import RawMessage
from streams.subjects import StreamId, command_token, type_subjects

if TYPE_CHECKING:
    from streams.store import EventStore, RecordedEvent

log = structlog.get_logger(__name__)


class Watch:
    """Each commit published on ``subjects`` from now on, decoded (``async for events in watch``)."""

    def __init__(self, store: EventStore, subjects: str, *, capacity: int = 1000) -> None:
        self._store = store
        self.subjects = subjects
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=capacity)
        self._subscription: Any = None

    async def open(self) -> Watch:
        self._subscription = await self._store.nats.subscribe(self.subjects, cb=self._arrived)
        return self

    async def _arrived(self, msg: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a watcher this far behind misses commits
            self._queue.put_nowait(msg)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> list[RecordedEvent]:
        msg = await self._queue.get()
        raw = RawMessage(seq=0, subject=msg.subject, headers=msg.headers or {}, data=msg.data, time="")
        return self._store.decode(raw)

    async def close(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def __aenter__(self) -> Watch:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Expected:
    """The commit a command will make on an aggregate, as soon as it is published."""

    def __init__(self, store: EventStore, stream: StreamId, command_id: str) -> None:
        self._store = store
        self.stream = stream
        self.subject = f"{stream.subject}.{command_token(command_id)}"
        self._future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._subscription: Any = None

    async def open(self) -> Expected:
        async def arrived(msg: Any) -> None:
            if not self._future.done():
                self._future.set_result(msg)

        self._subscription = await self._store.nats.subscribe(self.subject, cb=arrived)
        return self

    async def events(
        self,
        timeout: float,  # noqa: ASYNC109 - the bound is the answer
        *,
        look_first: bool = False,
    ) -> list[RecordedEvent] | None:
        """The commit's events within ``timeout`` (None if it was not made by then); closes the wait.
        ``look_first``: it may well be made already (a retried command): look in the stream first."""
        try:
            if look_first and not self._future.done() and (found := await self._store.last_on(self.subject)):
                return self._store.decode(found, self.stream)
            try:
                msg = await asyncio.wait_for(asyncio.shield(self._future), timeout)
                raw = RawMessage(seq=0, subject=self.subject, headers=msg.headers or {}, data=msg.data, time="")
            except TimeoutError:
                found = await self._store.last_on(self.subject)  # committed before we listened?
                if found is None:
                    return None
                raw = found
            return self._store.decode(raw, self.stream)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()


Seen = Callable[[StreamId, int], Awaitable[None] | None]


class Following:
    """Calls ``seen(stream, version)`` for each commit of an aggregate type (any tenant)."""

    def __init__(self, store: EventStore, aggregate_type: str, seen: Seen) -> None:
        self._store = store
        self.aggregate_type = aggregate_type
        self._seen = seen
        self._subscription: Any = None

    async def open(self) -> Following:
        self._subscription = await self._store.nats.subscribe(type_subjects(self.aggregate_type), cb=self._arrived)
        return self

    async def _arrived(self, msg: Any) -> None:
        from streams.store import commit_version

        try:
            outcome = self._seen(StreamId.from_subject(msg.subject), commit_version(msg.data))
            if outcome is not None:
                await outcome
        except Exception as e:  # one bad announcement must not stop the others
            log.warning("a commit announcement could not be handled", subject=msg.subject, error=str(e))

    async def close(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
