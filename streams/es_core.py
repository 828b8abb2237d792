"""The engine under the eventsourcing module (``streams.es_jetstream``): one stream, its writes, its loop.

``LoopThread`` is the recorders' way from the application's threads onto the one event loop that
owns the NATS connection. ``StreamCore`` is one stream as the recorders see it: the subjects of
aggregates and tracking records, where each subject stands, and the writes.

**Writes.** A write states where each subject it touches stands, as the stream sequence of the
subject's last message (``Nats-Expected-Last-Subject-Sequence``); the server refuses the whole
write if any of them moved on. Versions (and tracking positions) only grow along a subject, so
"the new versions are above the last one recorded, and nothing was recorded since" is exactly
the library's uniqueness contract, checked atomically by the server. Where a subject stands is
remembered from the last read or write of it in this process; a new aggregate (first version 0
or 1) is presumed empty; anything else is looked up first. A refused write looks again, and
raises ``IntegrityError`` if its versions are taken, or tries again if they are still free.

**Many threads, shared turns.** Work handed over by threads while the loop is busy is taken
together in its next turn (``LoopThread``), and the threads whose work was settled in a turn
are woken at its end, once its writes have gone. A single-message write (a save of one
event: the common case) whose subject's position is known needs no coroutine: the writes of a
turn go together, as one atomic batch (one round trip, each message with its own expectation)
if ``batch_from`` (default 16) or more, else as single messages in one socket write, each with
a reply subject of its own on one inbox, whose acknowledgement releases its thread at the end
of the turn it is read in. ``max_bursts`` can hold writes back while that many sends are unanswered (default
0: never), so more of them go together. If the server refuses a batch because one of its writes
is stale, each goes again on its own, so one conflict never fails another thread's save.

Why not always a batch, whose messages share their fsyncs: nats-server stages an atomic batch of a stream
with one replica on file storage in a file store of its own, created and deleted for each batch
(measured on this version: ~150 system calls, mkdir, open, rename, unlink, and 3-4 fsyncs of
its own a batch of 8; about 2 ms of server CPU a batch, 270 us a message in batches of 8 against
133-160 us for a single message with its fsync, 25 us in batches of 200). It pays off from about
16 writes a batch; an application saving from 8 threads never has that many waiting. Single
messages are then bound by the server's fsync of each (sync_interval: always); holding writes
back to make bigger bursts (``max_bursts`` 1) measured 7 % slower than sending at once. The
non-atomic "fast batch" of nats-server 2.14 fsyncs each message too. Counted with strace on
nats-server 2.15.1 (sync_interval: always): a single message costs one fsync; an atomic batch
four whatever its size (2, 8 or 200 messages), and 3 mkdirs, 18 opens, 12 unlinks and 3 renames
for its staging store. So saves from 8 threads as batches (``JETSTREAM_BATCH_FROM`` 2 or 4,
with or without ``JETSTREAM_MAX_IN_FLIGHT`` 1) measured 2-5x slower than as single messages:
on a one-replica stream each save costs the server one fsync, and what saves from threads
share is the loop's turns, socket writes and wake-ups.

Writes of several messages (several events, or events and a tracking record) always go as one
atomic batch: they must be all or nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar
from uuid import UUID

import msgspec
import structlog
from eventsourcing.persistence import DataError, IntegrityError, OperationalError, StoredEvent, Tracking

from streams.errors import StoreError, UnavailableError
from streams.jetstream import (
    EXPECTED_LAST_SUBJECT_SEQ,
    MAX_BATCH,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_IN_BATCH,
    JetStreamLog,
    OutMessage,
    RawMessage,
    WrongLastSequence,
    _Client,
)

T = TypeVar("T")
log = structlog.get_logger(__name__)

H_VERSION = "Es-Version"  # an event's originator version; a tracking record's notification id
H_TOPIC = "Es-Topic"  # events only: a message without it is a tracking record
TRACKING = "tracking"
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_ATTEMPTS = 10


# From threads onto the loop ----------------------------------------------------------------


class _Waker:
    """How a thread waits for the loop: a lock of its own (one per thread), released by the loop.

    The loop holds its wake-ups to the end of its turn (``LoopThread``): it first reads every
    answer that came in and sends the writes they let go, then releases the waiting threads, and
    they take the GIL from it as it goes back to wait for the server. Releasing a lock does not
    release the GIL. A socket written to for each wake-up (the way before) did: the woken thread
    took the GIL at once and the loop waited for it to finish its work and block again (cProfile:
    ~140 us of the loop's time a wake-up, before the turn's writes went), so on a loaded machine
    the server waited on the loop. Measured side by side on the 2-core machine under load, saves
    from 8 threads with ``sync_interval: always``: ~20 % more a second, ~10 % less CPU a save,
    in this process and in nats-server.
    """

    __slots__ = ("_lock",)

    SLICE = 1.0  # seconds a single wait may block before the deadline is looked at again

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held: the next wait blocks until a wake-up releases it

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # released already: a wake-up is waiting to be taken
            self._lock.release()

    def wait(self, call: Call[Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not call.settled:
            # a wake-up left over from a call given up on is taken here too, and waited past
            if not self._lock.acquire(timeout=self.SLICE) and time.monotonic() >= deadline:
                return call.settled
        return True


_wakers = threading.local()


def _waker() -> _Waker:
    waker: _Waker | None = getattr(_wakers, "waker", None)
    if waker is None:
        waker = _wakers.waker = _Waker()
    return waker


class _LoopLocal(threading.local):
    runner: LoopThread | None = None  # on a loop's own thread: its LoopThread


_on_loop = _LoopLocal()


def _wake(waker: _Waker) -> None:
    """Wake a waiting thread: at the end of the loop's turn if called on a loop, else now."""
    runner = _on_loop.runner
    if runner is None:
        waker.wake()
    else:
        runner.wake_later(waker)


class Call(Generic[T]):
    """Work handed to the loop by a thread, and how that thread is woken once it is settled."""

    __slots__ = ("_error", "_result", "settled", "waker")

    def __init__(self) -> None:
        self.waker = _waker()
        self.settled = False
        self._result: T | None = None
        self._error: BaseException | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        """The caller stopped waiting (its timeout)."""

    def settle(self, result: T) -> None:
        self._result = result
        self.settled = True
        _wake(self.waker)

    def fail(self, error: BaseException) -> None:
        self._error = error
        self.settled = True
        _wake(self.waker)

    def settle_from(self, task: asyncio.Future[T]) -> None:
        if task.cancelled():
            self.fail(OperationalError("cancelled"))
        elif (error := task.exception()) is not None:
            self.fail(error)
        else:
            self.settle(task.result())

    def outcome(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # settled: T (None only where T allows it)


class CoroutineCall(Call[T]):
    __slots__ = ("coro", "task")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        super().__init__()
        self.coro = coro
        self.task: asyncio.Task[T] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.task = loop.create_task(self.coro)
        self.task.add_done_callback(self.settle_from)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        else:
            self.coro.close()


class FunctionCall(Call[T]):
    """``fn(call)`` on the loop; ``fn`` settles the call, now or later."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Call[T]], None]) -> None:
        super().__init__()
        self.fn = fn

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.fn(self)
        except Exception as e:
            self.fail(e)


class LoopThread:
    """An asyncio loop on a daemon thread: the sync facade's way into the async core.

    ``run`` hands a coroutine to the loop, ``call`` a function, and both block the calling thread
    until the work is settled. Many threads call at once (an application saved from a thread
    pool), so the hand-over is kept cheap: callers queue their work and only the first of a
    burst wakes the loop, which starts every queued call in the same turn; each caller waits
    on a lock of its own, released once its work is settled, after the writes of the loop's
    turn have gone (``_Waker``).

    A ``lazy`` call made while the loop is waiting for answers it was told to expect
    (``expect``) does not wake it at all: the loop takes the queue when the next answer comes in
    (``answered``), in the turn it wakes up for anyway. Under load that spares most wake-ups (a
    system call and a switch to the loop's thread each). It waits only while ``lazy_from``
    (default 2) or more answers are expected: with one, the server would sit idle between
    answering it and receiving the writes held back for it.
    """

    def __init__(self, name: str, *, timeout: float = 60.0, lazy_from: int = 2) -> None:
        self.timeout = timeout  # a call not settled by then is given up (its work is cancelled)
        self.lazy_from = lazy_from  # a lazy call waits for an answer only if this many are expected
        self.loop = asyncio.new_event_loop()
        self._queue: deque[Call[Any]] = deque()
        self._woken = False  # the loop will take the queue without being woken again
        self._expecting = 0  # answers the loop is waiting for (it takes the queue at each)
        self._mutex = threading.Lock()
        self._wakes: list[_Waker] = []  # threads to wake at the end of the loop's turn
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.loop.call_soon(self._on_thread)
        self._thread.start()

    def _on_thread(self) -> None:
        _on_loop.runner = self

    def wake_later(self, waker: _Waker) -> None:
        """(On the loop.) Wake a thread once the callbacks already due in this turn have run."""
        if not self._wakes:
            self.loop.call_soon(self._wake_all)
        self._wakes.append(waker)

    def _wake_all(self) -> None:
        wakes, self._wakes = self._wakes, []
        for waker in wakes:
            waker.wake()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        try:
            self._usable()
        except OperationalError:
            coro.close()
            raise
        return self._wait(CoroutineCall(coro), timeout or self.timeout)

    def call(self, fn: Callable[[Call[T]], None], timeout: float | None = None, *, lazy: bool = False) -> T:
        """``fn(call)`` on the loop; ``lazy``: it may wait for the loop's next expected answer to start."""
        self._usable()
        return self._wait(FunctionCall(fn), timeout or self.timeout, lazy=lazy)

    def _usable(self) -> None:
        if self.loop.is_closed():
            raise OperationalError("the JetStream recorders are closed")
        if threading.current_thread() is self._thread:
            raise OperationalError("the JetStream recorders cannot be called from their own event loop")

    def _wait(self, call: Call[T], timeout: float, *, lazy: bool = False) -> T:
        with self._mutex:
            self._queue.append(call)
            wake = not self._woken and not (lazy and self._expecting >= self.lazy_from)
            self._woken = True
        if wake:
            self.loop.call_soon_threadsafe(self._start)
        if not call.waker.wait(call, timeout):
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to cancel
                self.loop.call_soon_threadsafe(call.cancel)
            raise OperationalError(f"JetStream did not answer in {timeout} s")
        return call.outcome()

    def _start(self) -> None:
        with self._mutex:
            calls = list(self._queue)
            self._queue.clear()
            self._woken = False
        for call in calls:
            call.start(self.loop)

    def expect(self, answers: int) -> None:
        """(On the loop.) That many answers are on their way; each will be reported to ``answered``."""
        with self._mutex:
            self._expecting += answers

    def answered(self) -> None:
        """(On the loop.) One expected answer came (or was given up on): take the queue if work waits."""
        with self._mutex:
            self._expecting -= 1
            if not self._woken:
                return
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
            except OperationalError:
                pass  # a task that will not end: the loop stops all the same
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(5)
        self._wake_all()  # settled in the loop's last turn
        with self._mutex:  # work handed over too late: its threads are told now, not at their timeout
            calls = list(self._queue)
            self._queue.clear()
        for call in calls:
            call.fail(OperationalError("the JetStream recorders are closed"))
        if not self.loop.is_running():
            self.loop.close()

    @staticmethod
    async def _cancel_tasks() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# Subjects ----------------------------------------------------------------------------------


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


# Writes ------------------------------------------------------------------------------------


class Touch:
    """What one write does to one subject: the versions it adds, where its messages are."""

    __slots__ = ("first", "high", "last", "low")

    def __init__(self, index: int, version: int) -> None:
        self.first = self.last = index
        self.low = self.high = version


class Write:
    """One recorder call's messages (a tracking record first), and what they do to each subject."""

    __slots__ = ("events", "key", "messages", "touches")

    def __init__(self, messages: list[OutMessage], touches: dict[str, Touch], events: int) -> None:
        self.messages = messages
        self.touches = touches
        self.events = events  # the last ``events`` messages are events
        self.key = "\n".join(sorted(touches)) if len(touches) > 1 else next(iter(touches))


class _AckError(msgspec.Struct):
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct):
    seq: int = 0
    error: _AckError | None = None


_ACK = msgspec.json.Decoder(_Ack)


class _Burst:
    """Writes sent together; the next burst may go when they are all answered."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = 0


class _Pending:
    """A single-message write waiting for its acknowledgement."""

    __slots__ = ("burst", "call", "deadline", "message", "subject", "touch", "write")

    def __init__(self, write: Write, call: Call[list[int]], subject: str, message: OutMessage) -> None:
        self.write = write
        self.call = call
        self.subject = subject
        self.touch = write.touches[subject]
        self.message = message
        self.deadline = 0.0
        self.burst: _Burst | None = None


class StreamCore:
    """One stream, shared by every recorder a factory opens on it: the log, the write path, and
    where each subject stands as last seen by this process.

    Lives on the factory's loop: every method but the subject helpers runs there, so nothing
    here needs a lock.
    """

    def __init__(
        self,
        log: JetStreamLog,
        prefix: str,
        *,
        batch_from: int = 16,
        max_bursts: int = 0,
        timeout: float = 10.0,
        positions: int = 100_000,
    ) -> None:
        self.log = log
        self.prefix = prefix
        self.tracking_prefix = f"{prefix}.{TRACKING}."
        self.batch_from = batch_from
        self.timeout = timeout
        self._positions: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._positions_max = positions
        self._inbox: str | None = None
        self._tokens = itertools.count()
        self._waiting: dict[str, _Pending] = {}
        self._outbox: list[_Pending] = []
        self._flush_soon = False
        self._bursts = 0  # bursts of writes in flight
        self.max_bursts = max_bursts
        self._sweeping = False
        self.runner: LoopThread | None = None  # told of the answers the pipelined writes expect
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it runs on, from start()

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
        self._positions.pop(subject, None)
        if last is None:
            return None
        self.note_raw(last)
        return int(last.headers[H_VERSION]), last.seq

    def _expectation(self, subject: str, touch: Touch) -> int | None:
        """The sequence to expect ``subject`` at, if known here (None: look it up first).

        Raises ``IntegrityError`` if the subject is known to hold the versions already.
        """
        known = self._positions.get(subject)
        if known is None:
            return 0 if touch.low <= 1 else None
        if touch.low <= known[0]:
            what = "tracking position" if subject.startswith(self.tracking_prefix) else "version"
            raise IntegrityError(f"{what} {touch.low} is not above the last one recorded on {subject} ({known[0]})")
        return known[1]

    # The write path -----------------------------------------------------------------------

    def _running(self) -> asyncio.AbstractEventLoop:
        # asyncio.get_running_loop() asks the system for the process id every time
        assert self._loop is not None, "StreamCore.start() first"
        return self._loop

    async def start(self) -> None:
        """Subscribe the inbox that acknowledgements of pipelined writes come back to."""
        nc = self.log.nc
        if not isinstance(nc, _Client):
            raise StoreError("the eventsourcing module needs a connection made by streams.jetstream.connect")
        self._loop = asyncio.get_running_loop()
        inbox = nc.new_inbox()
        await nc.subscribe_inline(f"{inbox}.*", self._on_ack)
        self._inbox = inbox

    def begin(self, write: Write, call: Call[list[int]]) -> None:
        """Start a write on the loop; ``call`` is settled with the stream sequences of its events."""
        if len(write.messages) == 1:
            subject = write.messages[0].subject
            expect = self._expectation(subject, write.touches[subject])
            if expect is not None:
                message = write.messages[0]
                headers = dict(message.headers)
                headers[EXPECTED_LAST_SUBJECT_SEQ] = str(expect)
                self._queue(_Pending(write, call, subject, OutMessage(subject, headers, message.data)))
                return
        task = self._running().create_task(self.write(write))
        task.add_done_callback(call.settle_from)

    def _queue(self, pending: _Pending) -> None:
        self._outbox.append(pending)
        if not self._flush_soon:
            self._flush_soon = True
            self._running().call_soon(self._flush)

    def _flush(self) -> None:
        """Send the waiting writes as one burst: an atomic batch if there are enough, else each on
        its own. With ``max_bursts`` bursts already in flight, they wait for one to finish."""
        self._flush_soon = False
        if not self._outbox or (self.max_bursts and self._bursts >= self.max_bursts):
            return
        outbox, self._outbox = self._outbox, []
        if len(outbox) < self.batch_from:
            self._send(outbox)
            return
        batch: list[_Pending] = []
        alone: list[_Pending] = []
        subjects: set[str] = set()
        for pending in outbox:
            if pending.subject in subjects or len(batch) == MAX_BATCH:
                alone.append(pending)  # a batch holds one write a subject: the others expect its result
            else:
                subjects.add(pending.subject)
                batch.append(pending)
        self._send(alone)
        self._bursts += 1
        task = self._running().create_task(self._batch(batch))
        task.add_done_callback(self._batch_done)

    def _send(self, outbox: Sequence[_Pending]) -> None:
        """Each write as a message of its own, all in one socket write, each with its own reply subject."""
        if not outbox:
            return
        nc = self.log.nc
        assert isinstance(nc, _Client) and self._inbox is not None, "StreamCore.start() first"
        loop = self._running()
        deadline = loop.time() + self.timeout
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(1.0, self._sweep)
        burst = _Burst()
        frames = []
        for pending in outbox:
            token = str(next(self._tokens))
            try:
                frame = publish_frame(pending.message, f"{self._inbox}.{token}", nc.max_payload)
            except DataError as e:
                pending.call.fail(e)
                continue
            frames.append(frame)
            self._waiting[token] = pending
            pending.deadline = deadline
            pending.burst = burst
        if frames:
            burst.left = len(frames)
            self._bursts += 1
            if self.runner is not None:
                self.runner.expect(len(frames))
            transport = nc._transport
            if nc.is_connected and not nc._pending_data_size and transport is not None:
                # Straight onto the socket, in this turn: nats-py's way (its pending buffer,
                # then its flusher task) costs two more turns of the loop before the bytes go.
                # Only when nothing of nats-py's own is waiting to go, so frames keep their order.
                transport.writelines(frames)
            else:
                task = loop.create_task(nc.publish_frames(frames))
                task.add_done_callback(_log_failure)

    def _answered(self, token: str) -> _Pending | None:
        """The write waiting on ``token``, no longer waiting (None if it was not)."""
        pending = self._waiting.pop(token, None)
        if pending is not None and pending.burst is not None:
            if self.runner is not None:
                self.runner.answered()  # writes handed over meanwhile join the outbox first
            pending.burst.left -= 1
            if pending.burst.left == 0:
                self._burst_done()
        return pending

    def _burst_done(self) -> None:
        self._bursts -= 1
        if self._outbox and not self._flush_soon:
            self._flush()

    def _batch_done(self, task: asyncio.Future[None]) -> None:
        self._burst_done()
        _log_failure(task)

    def _on_ack(self, subject: str, headers: dict[str, str], data: bytes) -> None:
        pending = self._answered(subject[subject.rfind(".") + 1 :])
        if pending is None:
            return
        status = headers.get("Status")
        if status is not None:  # 503: no stream listens on the subject
            pending.call.fail(OperationalError(f"JetStream refused the write to {pending.subject}: status {status}"))
            return
        try:
            ack = _ACK.decode(data)
        except msgspec.DecodeError as e:
            pending.call.fail(OperationalError(f"unreadable acknowledgement from JetStream: {e}"))
            return
        if ack.error is None:
            self.note(pending.subject, pending.touch.high, ack.seq)
            pending.call.settle([ack.seq] if pending.write.events else [])
        elif ack.error.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_BATCH):
            self._retry(pending)
        else:
            text = f"JetStream refused the write to {pending.subject}: {ack.error.description} ({ack.error.err_code})"
            pending.call.fail(OperationalError(text))

    def _sweep(self) -> None:
        """Fail the writes whose acknowledgement is overdue (looked at every second while any wait)."""
        now = self._running().time()
        for token in [t for t, p in self._waiting.items() if p.deadline <= now]:
            pending = self._answered(token)
            assert pending is not None
            pending.call.fail(OperationalError(f"JetStream did not acknowledge the write to {pending.subject}"))
        if self._waiting:
            self._running().call_later(1.0, self._sweep)
        else:
            self._sweeping = False

    def _retry(self, pending: _Pending) -> None:
        """The subject moved on since it was last seen here: look again, through the general path."""
        self._positions.pop(pending.subject, None)
        task = self._running().create_task(self.write(pending.write, stale=True))
        task.add_done_callback(pending.call.settle_from)

    async def _batch(self, batch: list[_Pending]) -> None:
        try:
            published = await self.log.publish([p.message for p in batch])
        except WrongLastSequence:
            self._send(batch)  # one of them is stale: each on its own, so the others still go in
            return
        except Exception as e:
            error = e if isinstance(e, OperationalError) else OperationalError(str(e))
            for pending in batch:
                pending.call.fail(error)
            return
        for seq, pending in enumerate(batch, published.first_seq):
            self.note(pending.subject, pending.touch.high, seq)
            pending.call.settle([seq] if pending.write.events else [])

    async def write(self, write: Write, *, stale: bool = False) -> list[int]:
        """Record a write atomically (the general path); the stream sequences of its events."""
        fresh: set[str] = set()  # subjects looked up on the server for this write
        if stale:
            await asyncio.gather(*(self.position(s) for s in write.touches))
            fresh = set(write.touches)
        for _attempt in range(_ATTEMPTS):
            lookups = [s for s, t in write.touches.items() if s not in fresh and s not in self._positions and t.low > 1]
            if lookups:
                await asyncio.gather(*(self.position(s) for s in lookups))
                fresh.update(lookups)
            messages = list(write.messages)
            for subject, touch in write.touches.items():
                expect = self._expectation(subject, touch)
                first = messages[touch.first]
                headers = dict(first.headers)
                headers[EXPECTED_LAST_SUBJECT_SEQ] = str(expect or 0)
                messages[touch.first] = OutMessage(first.subject, headers, first.data)
            try:
                published = await self.log.append(messages, key=write.key)
            except WrongLastSequence:
                # Someone else wrote to one of these subjects: look at all of them again.
                await asyncio.gather(*(self.position(s) for s in write.touches))
                fresh = set(write.touches)
                continue
            except (StoreError, UnavailableError) as e:
                raise OperationalError(str(e)) from e
            for subject, touch in write.touches.items():
                self.note(subject, touch.high, published.first_seq + touch.last)
            first_event = published.first_seq + len(write.messages) - write.events
            return list(range(first_event, published.last_seq + 1))
        raise OperationalError("gave up recording events after repeated concurrent writes")

    def close(self) -> None:
        """(On the loop.) Fail the writes still waiting: their threads are told now, not at their timeout."""
        waiting = [*self._waiting.values(), *self._outbox]
        if self.runner is not None:
            for _ in self._waiting:
                self.runner.answered()
        self._waiting.clear()
        self._outbox.clear()
        for pending in waiting:
            pending.call.fail(OperationalError("the JetStream recorders are closed"))

    # Reads --------------------------------------------------------------------------------

    search_from = 15  # bisect when the versions to skip are this many times the steps it takes

    async def start_after(self, subject: str, version: int) -> int | None:
        """The stream sequence to read ``subject`` from for its versions above ``version``; None
        if it has none.

        Loading an aggregate after its snapshot would otherwise fetch every event before the
        snapshot too (~20 us each in the Python client). Versions grow with the sequence along a
        subject, so the first one above is found by bisecting the stream's sequences, one direct
        get a step: about 20 steps for a stream of a million messages. For a short aggregate it is
        not worth it, and the whole subject is read (1).
        """
        last = await self.position(subject)
        if last is None or last[0] <= version:
            return None
        if version < self.search_from * last[1].bit_length():
            return 1
        # The answer is ``best``, or a sequence in [lo, hi] (the first message of the subject from
        # there on is the answer if its version is above).
        best, lo, hi = last[1], 1, last[1] - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            [found] = await self.log.read(after_seq=mid - 1, limit=1, subject=subject)
            if int(found.headers[H_VERSION]) > version:
                best, hi = found.seq, mid - 1
            else:
                lo = found.seq + 1
        return best

    async def max_event_seq(self) -> int | None:
        """The stream sequence of the last event (tracking records may come after it)."""
        last_seq = await self.log.last_seq()
        if last_seq == 0:
            return None
        found = await self.log.read(after_seq=last_seq - 1, limit=1)
        if found and H_TOPIC in found[0].headers:
            return found[0].seq
        # The stream ends with tracking records: ask for the last message on any event subject.
        last = await self.log.last_on_subject(f"{self.prefix}.*")
        return last.seq if last is not None else None


def build_write(core: StreamCore, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> Write:
    """The messages of one recorder call (checked for what the library counts as bad data)."""
    if len(stored_events) + (tracking is not None) > MAX_BATCH:
        raise DataError(f"at most {MAX_BATCH} events can be recorded atomically, got {len(stored_events)}")
    messages: list[OutMessage] = []
    touches: dict[str, Touch] = {}
    if tracking is not None:
        subject = core.tracking_subject(tracking.application_name)
        messages.append(OutMessage(subject, {H_VERSION: str(tracking.notification_id)}, b""))
        touches[subject] = Touch(0, tracking.notification_id)
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
            touches[subject] = Touch(index, version)
        elif version <= touch.high:
            # Versions grow along a subject: that is what lets the server check uniqueness.
            if any(m.subject == subject and m.headers[H_VERSION] == str(version) for m in messages[:-1]):
                raise IntegrityError(f"stored events are not unique: ({s.originator_id}, {version})")
            raise DataError(f"the versions of {s.originator_id} must increase within one insert")
        else:
            touch.high, touch.last = version, index
    return Write(messages, touches, len(stored_events))


def publish_frame(message: OutMessage, reply: str, max_payload: int) -> bytes:
    """One NATS ``HPUB`` frame with a reply subject.

    Header names are ours and values are versions, sequences and the library's topics (module
    and class names); a value with a line break would corrupt the frame, so it is refused.
    """
    hdr = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in message.headers.items()) + "\r\n"
    if hdr.count("\n") != len(message.headers) + 2:
        raise DataError("a topic contains a line break")
    head = hdr.encode()
    size = len(head) + len(message.data)
    if size > max_payload:
        raise DataError(f"an event of {size} bytes is over the server's limit of {max_payload}")
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        message.subject.encode(),
        reply.encode(),
        len(head),
        size,
        head,
        message.data,
    )


def _log_failure(task: asyncio.Future[Any]) -> None:
    """A background send failed: say so (each write it carried fails when it is overdue)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("sending writes to JetStream failed", error=str(error) or type(error).__name__)
