"""An eventsourcing persistence module on JetStream.

    PERSISTENCE_MODULE=streams.es_jetstream NATS_URL=nats://127.0.0.1:4222

With that, an unmodified ``eventsourcing.application.Application`` keeps its events in a
JetStream stream of its own, and a ``ProcessApplication`` or projection keeps its tracking
records there too. The recorders are a synchronous facade: each call runs on one background
event loop that owns the NATS connection, through the same ``JetStreamLog`` core Parley's own
store uses.

Layout of a stream (``ES_<APPLICATION NAME>`` unless ``JETSTREAM_STREAM`` says otherwise):

* an aggregate's events on ``es.<stream>.<originator id token>``, one message each, headers
  ``Es-Version`` and ``Es-Topic``, the stored state as the body; the notification id of an event
  is its stream sequence;
* tracking records on ``es.<stream>.tracking.<upstream application token>``, one message per
  record, ``Es-Version`` holding the upstream notification id, no body.

**Writes** (``streams.es_core``). Every write states where each subject it touches stands (the
stream sequence of its last message, ``Nats-Expected-Last-Subject-Sequence``), so the server
checks the library's uniqueness contract atomically; a refused write looks again and raises
``IntegrityError`` if its versions are taken. Where a subject stands is remembered from the
last read or write of it, so a save after a load is one round trip. Saves from many threads
share the loop's turns: the ones handed over in one turn go together, as one atomic batch (one
round trip) if 16 or more, else as single messages in one socket write, each released by its
own acknowledgement.

**Tracking.** ``insert_events(events, tracking=t)`` puts the tracking message first and the
events after it in one atomic batch: events and tracking record are all or nothing. The tracking
message expects the last sequence of its subject, and its position must be above the last one
recorded for that upstream application, so a duplicate (or a lower) position raises
``IntegrityError``, even when two processes race.

Settings (read through the application's environment, so ``<APP>_NATS_URL`` works too):
``NATS_URL``, ``JETSTREAM_STREAM`` (default ``ES_<APPLICATION NAME>``), ``JETSTREAM_REPLICAS``,
``NATS_CONNECT_TIMEOUT`` (seconds to keep retrying an unreachable server at start-up, default 30),
``JETSTREAM_TIMEOUT`` (seconds to wait for the server's answer, default 10),
``JETSTREAM_MAX_IN_FLIGHT`` (bursts of writes outstanding at once, default 0: no limit) and
``JETSTREAM_BATCH_FROM`` (writes of a turn that go as one atomic batch, default 16),
``CREATE_TABLE`` (the library's switch: ``no`` leaves the stream as it is), and the library's
``APPLICATION_RECORDER_TOPIC``, ``TRACKING_RECORDER_TOPIC``, ``PROCESS_RECORDER_TOPIC``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar
from uuid import UUID

import nats.errors
import structlog
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
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import resolve_topic, strtobool
from nats.aio.client import Client as NATS

from domain.errors import ParleyError
from streams.es_core import (
    H_TOPIC,
    H_VERSION,
    Call,
    LoopThread,
    StreamCore,
    build_write,
    id_to_token,
    token_to_id,
)
from streams.jetstream import JetStreamLog, connect

__all__ = [
    "Factory",
    "JetStreamAggregateRecorder",
    "JetStreamApplicationRecorder",
    "JetStreamFactory",
    "JetStreamProcessRecorder",
    "JetStreamTrackingRecorder",
    "LoopThread",
    "id_to_token",
    "token_to_id",
]

T = TypeVar("T")
log = structlog.get_logger(__name__)


class JetStreamRecorder:
    """What every recorder of this module shares: the way onto the loop, and the stream."""

    def __init__(self, runner: LoopThread, core: StreamCore) -> None:
        self._runner = runner
        self._core = core

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._runner.run(coro)
        except (IntegrityError, DataError, NotSupportedError, OperationalError):
            raise
        except ParleyError as e:
            raise OperationalError(str(e)) from e

    def _record(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        write = build_write(self._core, stored_events, tracking)
        core = self._core

        def begin(call: Call[list[int]]) -> None:
            core.begin(write, call)

        try:
            return self._runner.call(begin, lazy=True)
        except (IntegrityError, DataError, NotSupportedError, OperationalError):
            raise
        except ParleyError as e:
            raise OperationalError(str(e)) from e


class JetStreamAggregateRecorder(JetStreamRecorder, AggregateRecorder):
    # Writes -------------------------------------------------------------------------------

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if stored_events:
            self._record(stored_events, None)
        return None

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
        core = self._core
        subject = core.event_subject(originator_id)
        if desc and limit == 1 and lte is None:
            last = await core.log.last_on_subject(subject)
            raws = [last] if last is not None else []
        elif gt is not None and gt >= core.search_from * 16:  # after a snapshot: skip the events before it
            start = await core.start_after(subject, gt)
            raws = await core.log.read_subject(subject, after_seq=start - 1) if start is not None else []
        else:
            raws = await core.log.read_subject(subject)
        if raws:
            core.note_raw(raws[-1])
        events = [
            StoredEvent(
                originator_id=originator_id,
                originator_version=int(r.headers[H_VERSION]),
                topic=r.headers[H_TOPIC],
                state=r.data,
            )
            for r in raws
        ]
        if gt is not None or lte is not None:
            events = [
                e
                for e in events
                if (gt is None or e.originator_version > gt) and (lte is None or e.originator_version <= lte)
            ]
        if desc:
            events.reverse()
        return events[:limit] if limit is not None else events


class JetStreamApplicationRecorder(JetStreamAggregateRecorder, ApplicationRecorder):
    def __init__(self, runner: LoopThread, core: StreamCore) -> None:
        super().__init__(runner, core)
        self._listeners: set[threading.Event] = set()
        self._watching = False

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return []
        return self._record(stored_events, None)

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
            raws = await self._core.log.read(after_seq=after, limit=page)
            for raw in raws:
                if stop is not None and raw.seq > stop:
                    return out
                topic = raw.headers.get(H_TOPIC)
                if topic is None or (topics and topic not in topics):
                    continue  # a tracking record, or a topic not asked for
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
        return self._run(self._core.max_event_seq())

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        return JetStreamSubscription(self, gt=gt, topics=topics)

    # Wake-ups for subscriptions: every event published to the stream is also seen by core
    # NATS subscribers; a wake-up only makes a subscription query again.
    def listen(self, event: threading.Event) -> None:
        if not self._watching:
            self._run(self._watch())
            self._watching = True
        self._listeners.add(event)

    def unlisten(self, event: threading.Event) -> None:
        self._listeners.discard(event)

    async def _watch(self) -> None:
        async def wake(_msg: Any) -> None:
            for listener in list(self._listeners):
                listener.set()

        await self._core.log.nc.subscribe(f"{self._core.prefix}.*", cb=wake)


class JetStreamSubscription(ListenNotifySubscription[JetStreamApplicationRecorder]):
    def __init__(
        self, recorder: JetStreamApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        recorder.listen(self._has_been_notified)

    def stop(self) -> None:
        super().stop()
        self._recorder.unlisten(self._has_been_notified)


class JetStreamTrackingRecorder(JetStreamRecorder, TrackingRecorder):
    """Tracking records on ``es.<stream>.tracking.<upstream>``: one message each, positions only growing."""

    def insert_tracking(self, tracking: Tracking) -> None:
        self._record((), tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        position = self._run(self._core.position(self._core.tracking_subject(application_name)))
        return position[0] if position is not None else None


class JetStreamProcessRecorder(JetStreamTrackingRecorder, JetStreamApplicationRecorder, ProcessRecorder):
    """Events and the tracking record of the upstream event they answer, in one atomic batch."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        tracking: Tracking | None = kwargs.get("tracking")
        if not stored_events and tracking is None:
            return []
        return self._record(stored_events, tracking)


class JetStreamFactory(InfrastructureFactory[JetStreamTrackingRecorder]):
    NATS_URL = "NATS_URL"
    JETSTREAM_STREAM = "JETSTREAM_STREAM"
    JETSTREAM_REPLICAS = "JETSTREAM_REPLICAS"
    JETSTREAM_MAX_IN_FLIGHT = "JETSTREAM_MAX_IN_FLIGHT"
    JETSTREAM_BATCH_FROM = "JETSTREAM_BATCH_FROM"
    NATS_CONNECT_TIMEOUT = "NATS_CONNECT_TIMEOUT"
    JETSTREAM_TIMEOUT = "JETSTREAM_TIMEOUT"
    CREATE_TABLE = "CREATE_TABLE"

    aggregate_recorder_class: type[JetStreamAggregateRecorder] = JetStreamAggregateRecorder
    application_recorder_class: type[JetStreamApplicationRecorder] = JetStreamApplicationRecorder
    tracking_recorder_class: type[JetStreamTrackingRecorder] = JetStreamTrackingRecorder
    process_recorder_class: type[JetStreamProcessRecorder] = JetStreamProcessRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self._url = self.env.get(self.NATS_URL, "nats://127.0.0.1:4222")
        default = "ES_" + re.sub(r"[^A-Za-z0-9_-]", "_", self.env.name or "APP").upper()
        self._stream = self.env.get(self.JETSTREAM_STREAM) or default
        self._replicas = int(self.env.get(self.JETSTREAM_REPLICAS, "1"))
        self._max_in_flight = int(self.env.get(self.JETSTREAM_MAX_IN_FLIGHT, "0"))
        self._batch_from = int(self.env.get(self.JETSTREAM_BATCH_FROM, "16"))
        self._timeout = float(self.env.get(self.JETSTREAM_TIMEOUT, "10"))
        self._runner = LoopThread(f"jetstream-{self._stream}", timeout=self._timeout * 3)
        try:
            retry_for = float(self.env.get(self.NATS_CONNECT_TIMEOUT, "30"))
            self._nc: NATS = self._runner.run(
                connect(self._url, name=self._stream, retry_for=retry_for, variable=self.NATS_URL),
                timeout=retry_for + 10,
            )
        except ParleyError as e:
            self._runner.stop()
            raise OperationalError(str(e)) from e
        self._cores: dict[str, StreamCore] = {}
        self._closing = threading.Lock()

    def _create_stream(self) -> bool:
        return bool(strtobool(self.env.get(self.CREATE_TABLE) or "yes"))

    def _open(self, stream: str) -> StreamCore:
        core = self._cores.get(stream)
        if core is None:
            log = JetStreamLog(
                self._nc,
                stream=stream,
                subjects=[f"es.{stream.lower()}.>"],
                replicas=self._replicas,
                max_in_flight=max(1, self._max_in_flight),
                batch_from=self._batch_from,
                request_timeout=self._timeout,
            )
            core = StreamCore(
                log,
                "es." + stream.lower(),
                batch_from=self._batch_from,
                max_bursts=self._max_in_flight,
                timeout=self._timeout,
            )
            core.runner = self._runner
            try:
                if self._create_stream():
                    self._runner.run(log.ensure())
                self._runner.run(core.start())
            except ParleyError as e:
                raise OperationalError(str(e)) from e
            self._cores[stream] = core
        return core

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        stream = self._stream if purpose == "events" else f"{self._stream}_{purpose.upper()}"
        return type(self).aggregate_recorder_class(self._runner, self._open(stream))

    def application_recorder(self) -> ApplicationRecorder:
        cls = self._class(self.APPLICATION_RECORDER_TOPIC, type(self).application_recorder_class)
        return cls(self._runner, self._open(self._stream))

    def tracking_recorder(
        self, tracking_recorder_class: type[JetStreamTrackingRecorder] | None = None
    ) -> JetStreamTrackingRecorder:
        cls = tracking_recorder_class or self._class(self.TRACKING_RECORDER_TOPIC, type(self).tracking_recorder_class)
        if not issubclass(cls, JetStreamTrackingRecorder):
            raise NotSupportedError(f"{cls.__name__} is not a JetStreamTrackingRecorder")
        return cls(self._runner, self._open(self._stream))

    def process_recorder(self) -> ProcessRecorder:
        cls = self._class(self.PROCESS_RECORDER_TOPIC, type(self).process_recorder_class)
        return cls(self._runner, self._open(self._stream))

    def _class(self, variable: str, default: type[T]) -> type[T]:
        topic = self.env.get(variable)
        if not topic:
            return default
        cls = resolve_topic(topic)
        if not (isinstance(cls, type) and issubclass(cls, default)):
            raise NotSupportedError(f"{variable}={topic} is not a {default.__name__}")
        return cls

    def delete_streams(self) -> None:
        """Delete every stream this factory opened (for tests)."""
        for core in self._cores.values():
            self._runner.run(core.log.delete())

    def close(self) -> None:
        with self._closing:
            self._close()

    def _close(self) -> None:
        if self._runner.loop.is_closed() or not self._runner.loop.is_running():
            return
        with contextlib.suppress(Exception):
            for core in self._cores.values():
                self._runner.call(_fail_waiting(core), timeout=5)
                self._runner.run(core.log.close(), timeout=5)
        try:
            self._runner.run(self._drain(), timeout=2 * self._timeout + 1)
        except Exception as e:
            log.warning("closing the NATS connection failed", stream=self._stream, error=str(e))
        self._runner.stop()

    async def _drain(self) -> None:
        """Drain the connection; a server that does not answer in time gets it closed instead."""
        try:
            await asyncio.wait_for(self._nc.drain(), self._timeout)
        except (TimeoutError, nats.errors.Error):
            await asyncio.wait_for(self._nc.close(), self._timeout)


def _fail_waiting(core: StreamCore) -> Callable[[Call[None]], None]:
    def close(call: Call[None]) -> None:
        core.close()
        call.settle(None)

    return close


Factory = JetStreamFactory
