"""An eventsourcing persistence module on JetStream.

    PERSISTENCE_MODULE=streams.es_jetstream NATS_URL=nats://127.0.0.1:4222

With that, an unmodified ``eventsourcing.application.Application`` keeps its events in a
JetStream stream of its own (one subject per aggregate, notification id = stream sequence).
The recorders are a synchronous facade: each call runs on one background event loop that owns
the NATS connection, through the same ``JetStreamLog`` core Parley's own store uses.

Settings (read through the application's environment, so ``<APP>_NATS_URL`` works too):
``NATS_URL``, ``JETSTREAM_STREAM`` (default ``ES_<APPLICATION NAME>``), ``JETSTREAM_REPLICAS``,
``NATS_CONNECT_TIMEOUT`` (seconds to keep retrying an unreachable server at start-up, default 30).

Not provided: tracking and process recorders (event-processing applications need a tracking
record committed with their events; use the PostgreSQL module for those).
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    InfrastructureFactory,
    IntegrityError,
    ListenNotifySubscription,
    Notification,
    NotSupportedError,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    TrackingRecorder,
)

from domain.errors import ParleyError
from streams.jetstream import MAX_BATCH, JetStreamLog, OutMessage, RawMessage, WrongLastSequence, connect

T = TypeVar("T")

H_VERSION = "Es-Version"
H_TOPIC = "Es-Topic"
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


class LoopThread:
    """An asyncio loop on a daemon thread: the sync facade's way into the async core."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            try:
                self.run(self._cancel_tasks(), timeout=5)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(5)
        self.loop.close()

    @staticmethod
    async def _cancel_tasks() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def id_to_token(originator_id: UUID | str) -> str:
    if isinstance(originator_id, UUID):
        return "u-" + originator_id.hex
    if _SAFE.match(originator_id):
        return "s-" + originator_id
    return "b-" + base64.b32encode(originator_id.encode()).decode().rstrip("=").lower()


def token_to_id(token: str) -> UUID | str:
    kind, value = token[:2], token[2:]
    if kind == "u-":
        return UUID(hex=value)
    if kind == "s-":
        return value
    padded = value.upper() + "=" * (-len(value) % 8)
    return base64.b32decode(padded).decode()


class JetStreamAggregateRecorder(AggregateRecorder):
    def __init__(self, runner: LoopThread, log: JetStreamLog, prefix: str) -> None:
        self._runner = runner
        self._log = log
        self._prefix = prefix
        self._listeners: set[threading.Event] = set()

    def _subject(self, originator_id: UUID | str) -> str:
        return f"{self._prefix}.{id_to_token(originator_id)}"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._runner.run(coro)
        except (IntegrityError, DataError, NotSupportedError):
            raise
        except ParleyError as e:
            raise OperationalError(str(e)) from e

    # Writes -------------------------------------------------------------------------------

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return None
        self._run(self._insert(stored_events))
        return None

    async def _insert(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        if len(stored_events) > MAX_BATCH:
            raise DataError(f"at most {MAX_BATCH} events can be recorded atomically, got {len(stored_events)}")
        by_subject: dict[str, list[int]] = {}
        seen = set()
        for s in stored_events:
            key = (str(s.originator_id), s.originator_version)
            if key in seen:
                raise IntegrityError(f"stored events are not unique: {key}")
            seen.add(key)
            by_subject.setdefault(self._subject(s.originator_id), []).append(s.originator_version)
        messages = [
            OutMessage(
                self._subject(s.originator_id),
                {H_VERSION: str(s.originator_version), H_TOPIC: s.topic},
                s.state,
            )
            for s in stored_events
        ]
        # Unique (originator_id, version) is the library's contract: each subject's new versions
        # must be above its last recorded one. JetStream enforces it atomically through the
        # expected last sequence of every subject in the batch; a concurrent writer that got in
        # first makes us look again.
        for _attempt in range(10):
            expect = {}
            for subject, versions in by_subject.items():
                last = await self._log.last_on_subject(subject)
                if last is not None and min(versions) <= int(last.headers[H_VERSION]):
                    raise IntegrityError(f"version {min(versions)} already recorded on {subject}")
                expect[subject] = last.seq if last is not None else 0
            try:
                published = await self._log.publish(messages, expect=expect)
            except WrongLastSequence:
                continue
            return list(range(published.first_seq, published.last_seq + 1))
        raise OperationalError("gave up recording events after repeated concurrent writes")

    # Reads --------------------------------------------------------------------------------

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        return self._run(self._select(originator_id, gt, lte, desc, limit))

    async def _select(
        self, originator_id: UUID | str, gt: int | None, lte: int | None, desc: bool, limit: int | None
    ) -> list[StoredEvent]:
        subject = self._subject(originator_id)
        if desc and limit == 1 and lte is None:
            last = await self._log.last_on_subject(subject)
            raws = [last] if last is not None else []
        else:
            raws = await self._log.read_subject(subject)
        events = [self._stored(originator_id, r) for r in raws]
        events = [
            e
            for e in events
            if (gt is None or e.originator_version > gt) and (lte is None or e.originator_version <= lte)
        ]
        if desc:
            events.reverse()
        return events[:limit] if limit is not None else events

    @staticmethod
    def _stored(originator_id: UUID | str, raw: RawMessage) -> StoredEvent:
        return StoredEvent(
            originator_id=originator_id,
            originator_version=int(raw.headers[H_VERSION]),
            topic=raw.headers[H_TOPIC],
            state=raw.data,
        )


class JetStreamApplicationRecorder(JetStreamAggregateRecorder, ApplicationRecorder):
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return []
        return self._run(self._insert(stored_events))

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        if start is None:
            start, inclusive_of_start = 1, True
        first = max(start if inclusive_of_start else start + 1, 1)
        return self._run(self._notifications(first, limit, stop, set(topics)))

    async def _notifications(self, first: int, limit: int, stop: int | None, topics: set[str]) -> list[Notification]:
        out: list[Notification] = []
        after = first - 1
        page = max(limit, 100)
        while len(out) < limit:
            raws = await self._log.read(after_seq=after, limit=page)
            for raw in raws:
                if stop is not None and raw.seq > stop:
                    return out
                topic = raw.headers[H_TOPIC]
                if topics and topic not in topics:
                    continue
                out.append(
                    Notification(
                        id=raw.seq,
                        originator_id=token_to_id(raw.subject.rsplit(".", 1)[1]),
                        originator_version=int(raw.headers[H_VERSION]),
                        topic=topic,
                        state=raw.data,
                    )
                )
                if len(out) == limit:
                    return out
            if len(raws) < page:
                return out
            after = raws[-1].seq
        return out

    def max_notification_id(self) -> int | None:
        return self._run(self._log.last_seq()) or None

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        return JetStreamSubscription(self, gt=gt, topics=topics)

    # Wake-ups for subscriptions: every message published to the stream's subjects is also
    # seen by core NATS subscribers; a wake-up only makes a subscription query again.
    def listen(self, event: threading.Event) -> None:
        if not self._listeners:
            self._run(self._watch())
        self._listeners.add(event)

    def unlisten(self, event: threading.Event) -> None:
        self._listeners.discard(event)

    async def _watch(self) -> None:
        async def wake(_msg: Any) -> None:
            for listener in list(self._listeners):
                listener.set()

        await self._log.nc.subscribe(f"{self._prefix}.>", cb=wake)


class JetStreamSubscription(ListenNotifySubscription[JetStreamApplicationRecorder]):
    def __init__(
        self, recorder: JetStreamApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        recorder.listen(self._has_been_notified)

    def stop(self) -> None:
        super().stop()
        self._recorder.unlisten(self._has_been_notified)


class JetStreamFactory(InfrastructureFactory[TrackingRecorder]):
    NATS_URL = "NATS_URL"
    JETSTREAM_STREAM = "JETSTREAM_STREAM"
    JETSTREAM_REPLICAS = "JETSTREAM_REPLICAS"
    NATS_CONNECT_TIMEOUT = "NATS_CONNECT_TIMEOUT"

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self._url = self.env.get(self.NATS_URL, "nats://127.0.0.1:4222")
        default = "ES_" + re.sub(r"[^A-Za-z0-9_-]", "_", self.env.name or "APP").upper()
        self._stream = self.env.get(self.JETSTREAM_STREAM) or default
        self._replicas = int(self.env.get(self.JETSTREAM_REPLICAS, "1"))
        self._runner = LoopThread(f"jetstream-{self._stream}")
        try:
            retry_for = float(self.env.get(self.NATS_CONNECT_TIMEOUT, "30"))
            self._nc = self._runner.run(
                connect(self._url, name=self._stream, retry_for=retry_for, variable=self.NATS_URL),
                timeout=retry_for + 10,
            )
        except ParleyError as e:
            self._runner.stop()
            raise OperationalError(str(e)) from e
        self._logs: list[JetStreamLog] = []

    def _open_log(self, stream: str) -> tuple[JetStreamLog, str]:
        prefix = "es." + stream.lower()
        log = JetStreamLog(self._nc, stream=stream, subjects=[f"{prefix}.>"], replicas=self._replicas)
        self._runner.run(log.ensure())
        self._logs.append(log)
        return log, prefix

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        stream = self._stream if purpose == "events" else f"{self._stream}_{purpose.upper()}"
        log, prefix = self._open_log(stream)
        return JetStreamAggregateRecorder(self._runner, log, prefix)

    def application_recorder(self) -> ApplicationRecorder:
        log, prefix = self._open_log(self._stream)
        return JetStreamApplicationRecorder(self._runner, log, prefix)

    def tracking_recorder(self, tracking_recorder_class: type[TrackingRecorder] | None = None) -> TrackingRecorder:
        raise NotSupportedError("the JetStream module has no tracking recorder; use eventsourcing.postgres")

    def process_recorder(self) -> ProcessRecorder:
        raise NotSupportedError("the JetStream module has no process recorder; use eventsourcing.postgres")

    def delete_streams(self) -> None:
        """Delete every stream this factory opened (for tests)."""
        for log in self._logs:
            self._runner.run(log.delete())

    def close(self) -> None:
        if self._runner.loop.is_closed():
            return
        try:
            self._runner.run(self._nc.drain(), timeout=10)
        except Exception:
            pass
        self._runner.stop()


Factory = JetStreamFactory
