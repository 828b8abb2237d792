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

**Writes.** Every write states where each subject it touches stands, as the stream sequence of
the subject's last message (``Nats-Expected-Last-Subject-Sequence``); the server refuses the
whole write if any subject moved on. Versions (and tracking positions) only grow along a
subject, so "the new versions are above the last recorded one, and nothing was recorded since"
is exactly the library's uniqueness contract, checked atomically. Where a subject stands is
remembered from the last read or write of it in this process; a new aggregate (first version
0 or 1) is presumed empty; anything else is looked up. A refused write looks again, and raises
``IntegrityError`` if the versions are taken.

Concurrent writes (from many threads: one ``Application`` saved from a thread pool) are
group-committed by ``JetStreamLog.append``: the writes waiting while one is in flight go out
together as one atomic batch, one round trip and one fsync, each with its own expectations.

**Tracking.** ``insert_events(events, tracking=t)`` puts the tracking message first and the
events after it in one atomic batch: events and tracking record are all or nothing. The tracking
message expects the last sequence of its subject, and its position must be above the last one
recorded for that upstream application, so a duplicate (or a lower) position raises
``IntegrityError``, even when two processes race.

Settings (read through the application's environment, so ``<APP>_NATS_URL`` works too):
``NATS_URL``, ``JETSTREAM_STREAM`` (default ``ES_<APPLICATION NAME>``), ``JETSTREAM_REPLICAS``,
``NATS_CONNECT_TIMEOUT`` (seconds to keep retrying an unreachable server at start-up, default 30),
``JETSTREAM_MAX_IN_FLIGHT`` and ``JETSTREAM_BATCH_FROM`` (group commit, see ``JetStreamLog``),
``CREATE_TABLE`` (the library's switch: ``no`` leaves the stream as it is), and the library's
``APPLICATION_RECORDER_TOPIC``, ``TRACKING_RECORDER_TOPIC``, ``PROCESS_RECORDER_TOPIC``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Coroutine, Sequence
from typing import Any, Generic, TypeVar
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
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import resolve_topic, strtobool
from nats.aio.client import Client as NATS

from domain.errors import ParleyError
from streams.jetstream import (
    EXPECTED_LAST_SUBJECT_SEQ,
    MAX_BATCH,
    JetStreamLog,
    OutMessage,
    RawMessage,
    WrongLastSequence,
    connect,
)

T = TypeVar("T")
TJetStreamTrackingRecorder = TypeVar("TJetStreamTrackingRecorder", bound="JetStreamTrackingRecorder")

H_VERSION = "Es-Version"  # an event's originator version; a tracking record's notification id
H_TOPIC = "Es-Topic"  # events only: a message without it is a tracking record
TRACKING = "tracking"
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_ATTEMPTS = 10


class LoopThread:
    """An asyncio loop on a daemon thread: the sync facade's way into the async core.

    ``run`` hands a coroutine to the loop and blocks the calling thread until it is done. Many
    threads call at once (an application saved from a thread pool), so the hand-over is kept
    cheap: callers queue their coroutines and only the first of a burst wakes the loop, which
    starts every queued one in the same turn; each caller waits on a lock of its own, released
    when its coroutine finishes.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._queue: deque[_Call[Any]] = deque()
        self._woken = False
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        if self.loop.is_closed() or threading.current_thread() is self._thread:
            coro.close()
            what = "closed" if self.loop.is_closed() else "called from their own event loop"
            raise OperationalError(f"the JetStream recorders are {what}")
        call = _Call(coro)
        with self._mutex:
            self._queue.append(call)
            wake, self._woken = not self._woken, True
        if wake:
            self.loop.call_soon_threadsafe(self._start)
        if not call.done.acquire(timeout=timeout):
            self.loop.call_soon_threadsafe(call.cancel)
            raise TimeoutError(f"no answer from the event loop in {timeout} s")
        return call.outcome()

    def _start(self) -> None:
        with self._mutex:
            calls = list(self._queue)
            self._queue.clear()
            self._woken = False
        for call in calls:
            call.start(self.loop)

    def stop(self) -> None:
        if threading.current_thread() is self._thread:  # dropped by a callback on the loop itself
            self.loop.call_soon(self.loop.stop)
            return
        if self.loop.is_running():
            try:
                self.run(self._cancel_tasks(), timeout=5)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()

    @staticmethod
    async def _cancel_tasks() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Call(Generic[T]):
    """One coroutine handed to the loop, and the lock its caller waits on."""

    __slots__ = ("coro", "done", "task")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.coro = coro
        self.done = threading.Lock()
        self.done.acquire()
        self.task: asyncio.Task[T] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.task = loop.create_task(self.coro)
        self.task.add_done_callback(self._finished)

    def _finished(self, _task: asyncio.Task[T]) -> None:
        self.done.release()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        else:
            self.coro.close()

    def outcome(self) -> T:
        assert self.task is not None
        return self.task.result()


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


class _Touch:
    """What one write does to one subject: the version range it adds, where its messages are."""

    __slots__ = ("first", "high", "last", "low")

    def __init__(self, index: int, version: int) -> None:
        self.first = self.last = index
        self.low = self.high = version


class _Write:
    """One recorder call's messages (the tracking message first), and what they do to each subject."""

    __slots__ = ("events", "key", "messages", "touches")

    def __init__(self, messages: list[OutMessage], touches: dict[str, _Touch], events: int) -> None:
        self.messages = messages
        self.touches = touches
        self.events = events  # the last ``events`` messages are events (the first may be a tracking record)
        self.key = "\n".join(sorted(touches)) if len(touches) > 1 else next(iter(touches))


class StreamCore:
    """One stream, shared by every recorder a factory opens on it: the log (and so one group
    commit queue) and where each subject stands, as last seen by this process.

    Lives on the factory's loop: every method runs there, so the positions need no lock.
    """

    def __init__(self, log: JetStreamLog, prefix: str, *, positions: int = 100_000) -> None:
        self.log = log
        self.prefix = prefix
        self.tracking_prefix = f"{prefix}.{TRACKING}."
        self._positions: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._positions_max = positions

    # Subjects -----------------------------------------------------------------------------

    def event_subject(self, originator_id: UUID | str) -> str:
        return f"{self.prefix}.{id_to_token(originator_id)}"

    def tracking_subject(self, application_name: str) -> str:
        return self.tracking_prefix + id_to_token(application_name)

    # Positions ----------------------------------------------------------------------------

    def note(self, subject: str, version: int, seq: int) -> None:
        """Remember that ``subject`` stood at ``version`` at stream sequence ``seq`` (unless a later one is known)."""
        known = self._positions.get(subject)
        if known is not None and known[1] >= seq:
            return
        self._positions[subject] = (version, seq)
        self._positions.move_to_end(subject)
        if len(self._positions) > self._positions_max:
            self._positions.popitem(last=False)

    def note_raw(self, raw: RawMessage) -> None:
        self.note(raw.subject, int(raw.headers[H_VERSION]), raw.seq)

    async def position(self, subject: str) -> tuple[int, int] | None:
        """Where a subject stands on the server: (version, sequence) of its last message."""
        last = await self.log.last_on_subject(subject)
        if last is None:
            self._positions.pop(subject, None)
            return None
        self._positions.pop(subject, None)
        self.note_raw(last)
        return int(last.headers[H_VERSION]), last.seq

    # Writes -------------------------------------------------------------------------------

    async def write(self, write: _Write) -> list[int]:
        """Record a write atomically; the stream sequences of its events."""
        fresh: set[str] = set()  # subjects looked up on the server for this write
        for _attempt in range(_ATTEMPTS):
            lookups = [
                s for s, touch in write.touches.items() if s not in fresh and s not in self._positions and touch.low > 1
            ]
            if lookups:
                await asyncio.gather(*(self.position(s) for s in lookups))
                fresh.update(lookups)
            messages = list(write.messages)
            for subject, touch in write.touches.items():
                known = self._positions.get(subject)
                if known is not None and touch.low <= known[0]:
                    what = "tracking position" if subject.startswith(self.tracking_prefix) else "version"
                    raise IntegrityError(f"{what} {touch.low} already recorded on {subject} (at {known[0]})")
                first = messages[touch.first]
                headers = dict(first.headers)
                headers[EXPECTED_LAST_SUBJECT_SEQ] = str(known[1] if known is not None else 0)
                messages[touch.first] = OutMessage(first.subject, headers, first.data)
            try:
                published = await self.log.append(messages, key=write.key)
            except WrongLastSequence:
                # Someone else wrote to one of these subjects: look at all of them again.
                await asyncio.gather(*(self.position(s) for s in write.touches))
                fresh = set(write.touches)
                continue
            for subject, touch in write.touches.items():
                self.note(subject, touch.high, published.first_seq + touch.last)
            first_event = published.first_seq + len(write.messages) - write.events
            return list(range(first_event, published.last_seq + 1))
        raise OperationalError("gave up recording events after repeated concurrent writes")

    # Reads --------------------------------------------------------------------------------

    async def max_event_seq(self) -> int | None:
        """The stream sequence of the last event (a tracking record may come after it)."""
        last_seq = await self.log.last_seq()
        if last_seq == 0:
            return None
        found = await self.log.read(after_seq=last_seq - 1, limit=1)
        if found and H_TOPIC in found[0].headers:
            return found[0].seq
        # The stream ends with tracking records: ask for the last message on any event subject.
        last = await self.log.last_on_subject(f"{self.prefix}.*")
        return last.seq if last is not None else None


def build_write(core: StreamCore, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> _Write:
    """The messages of one recorder call (checked for what the library counts as bad data)."""
    if len(stored_events) + (tracking is not None) > MAX_BATCH:
        raise DataError(f"at most {MAX_BATCH} events can be recorded atomically, got {len(stored_events)}")
    messages: list[OutMessage] = []
    touches: dict[str, _Touch] = {}
    if tracking is not None:
        subject = core.tracking_subject(tracking.application_name)
        messages.append(OutMessage(subject, {H_VERSION: str(tracking.notification_id)}, b""))
        touches[subject] = _Touch(0, tracking.notification_id)
    subjects: dict[UUID | str, str] = {}
    for s in stored_events:
        known = subjects.get(s.originator_id)
        if known is None:
            subject = subjects[s.originator_id] = core.event_subject(s.originator_id)
        else:
            subject = known
        version = s.originator_version
        index = len(messages)
        messages.append(OutMessage(subject, {H_VERSION: str(version), H_TOPIC: s.topic}, s.state))
        touch = touches.get(subject)
        if touch is None:
            touches[subject] = _Touch(index, version)
        elif version <= touch.high:
            # Versions grow along a subject: that is what lets the server check uniqueness.
            if any(m.subject == subject and m.headers[H_VERSION] == str(version) for m in messages[:-1]):
                raise IntegrityError(f"stored events are not unique: ({s.originator_id}, {version})")
            raise DataError(f"the versions of {s.originator_id} must increase within one insert")
        else:
            touch.high, touch.last = version, index
    return _Write(messages, touches, len(stored_events))


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
        except TimeoutError as e:
            raise OperationalError(f"JetStream did not answer in time: {e}") from e

    def _record(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        return self._run(self._core.write(build_write(self._core, stored_events, tracking)))


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
        self._max_in_flight = int(self.env.get(self.JETSTREAM_MAX_IN_FLIGHT, "1"))
        self._batch_from = int(self.env.get(self.JETSTREAM_BATCH_FROM, "2"))
        self._runner = LoopThread(f"jetstream-{self._stream}")
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
                max_in_flight=self._max_in_flight,
                batch_from=self._batch_from,
            )
            if self._create_stream():
                try:
                    self._runner.run(log.ensure())
                except ParleyError as e:
                    raise OperationalError(str(e)) from e
            core = self._cores[stream] = StreamCore(log, "es." + stream.lower())
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
        if self._runner.loop.is_closed() or not self._runner.loop.is_running():
            return
        try:
            for core in self._cores.values():
                self._runner.run(core.log.close(), timeout=5)
            self._runner.run(self._nc.drain(), timeout=10)
        except Exception:
            pass
        self._runner.stop()


Factory = JetStreamFactory
