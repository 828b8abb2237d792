"""Loading aggregates: fold their events, starting from a snapshot when there is one.

An aggregate is described by its ``Decider`` (``domain.messages``): its type name, its state
type, the initial state and the pure ``evolve`` function, from its module in ``domain/``.
Loading reads only the aggregate's own subject after the snapshot's stream position, so load
time stays flat as the stream grows. When a load had to fold ``snapshot_every`` events or more,
it writes a fresh snapshot.

Snapshots are a cache: they live in a key-value bucket, sealed under the aggregate's
data-subject key (so destroying that key also voids the snapshot), and a snapshot that cannot
be read is ignored and rebuilt from the events.

Hot aggregates are also kept in memory (a bounded LRU of state, version and sequence, written
through by the command runner). A cached aggregate is still checked against the stream on every
load: one request for the sequence of its last commit, and the commits after the cached one if
another process wrote since.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Generic, TypeVar

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from domain.messages import Decider, Event
from streams.keys import KeyStore
from streams.store import EventStore, RecordedEvent
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

S = TypeVar("S")


class Loaded(msgspec.Struct, Generic[S], frozen=True):
    stream: StreamId
    state: S
    version: int
    seq: int
    events_folded: int
    from_snapshot: bool
    from_cache: bool = False


class Snapshot(msgspec.Struct, frozen=True):
    schema: int
    version: int
    seq: int
    subject: str
    epoch: int
    sealed: bytes


class Repository(Generic[S]):
    def __init__(
        self,
        store: EventStore,
        decider: Decider[S],
        *,
        snapshots: KeyValue | None = None,
        keys: KeyStore | None = None,
        snapshot_every: int = 200,
        cache_size: int = 10_000,
    ) -> None:
        self.store = store
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[S, int, int]] = OrderedDict()
        self.decider = decider
        self.snapshots = snapshots if keys is not None else None
        self.keys = keys
        self.snapshot_every = snapshot_every
        self._state_decoder = msgspec.msgpack.Decoder(decider.state_type)

    def stream(self, tenant: str, aggregate_id: str) -> StreamId:
        return StreamId(tenant, self.decider.type_name, aggregate_id)

    async def load(
        self, tenant: str, aggregate_id: str, *, use_snapshot: bool = True, trust_cache: bool = False
    ) -> Loaded[S]:
        """The aggregate as of its last commit.

        ``trust_cache``: return the in-memory copy without asking the stream whether another
        process wrote since. Only for a caller that appends with the loaded version and so has
        the server check it (the command runner), and that reloads before believing a refusal.
        """
        stream = self.stream(tenant, aggregate_id)
        if use_snapshot and (hit := self._cache.get(stream.key)) is not None:
            if trust_cache:
                state, version, seq = hit
                self.store.note_position(stream, version, seq)
                return Loaded(stream, state, version, seq, 0, from_snapshot=False, from_cache=True)
            return await self._load_cached(stream, *hit)
        state, version, seq, from_snapshot = self.decider.initial(), 0, 0, False
        if use_snapshot and (snap := await self._read_snapshot(stream)) is not None:
            state, version, seq, from_snapshot = snap[0], snap[1], snap[2], True
        events = await self.store.read(stream, after_seq=seq)
        state = self.fold(state, events)
        if events:
            version, seq = events[-1].version, events[-1].seq
        elif from_snapshot:
            self.store.note_position(stream, version, seq)
        loaded = Loaded(stream, state, version, seq, len(events), from_snapshot)
        if self.snapshots is not None and len(events) >= self.snapshot_every:
            await self.write_snapshot(loaded)
        if version:
            self.remember(stream, state, version, seq)
        return loaded

    async def _load_cached(self, stream: StreamId, state: S, version: int, seq: int) -> Loaded[S]:
        last = await self.store.last_on(stream.subjects)
        if last is None or last.seq == seq:
            self.store.note_position(stream, version, seq)
            return Loaded(stream, state, version, seq, 0, from_snapshot=False, from_cache=True)
        events = await self.store.read(stream, after_seq=seq)
        state = self.fold(state, events)
        if events:
            version, seq = events[-1].version, events[-1].seq
        self.remember(stream, state, version, seq)
        return Loaded(stream, state, version, seq, len(events), from_snapshot=False, from_cache=True)

    def remember(self, stream: StreamId, state: S, version: int, seq: int) -> None:
        """Keep an aggregate's state in memory (the runner calls this after each append)."""
        self._cache[stream.key] = (state, version, seq)
        self._cache.move_to_end(stream.key)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def forget(self, stream: StreamId) -> None:
        self._cache.pop(stream.key, None)

    def fold_events(self, state: S, events: list[Event]) -> S:
        evolve = self.decider.evolve
        for event in events:
            state = evolve(state, event)
        return state

    def fold(self, state: S, events: list[RecordedEvent]) -> S:
        return self.fold_events(state, [recorded.event for recorded in events])

    async def write_snapshot(self, loaded: Loaded[S]) -> None:
        assert self.snapshots is not None and self.keys is not None
        subject = self.decider.data_subject(loaded.state) or ""
        epoch, cipher = self.keys.current(loaded.stream.tenant, subject)
        sealed = cipher.encrypt(msgspec.msgpack.encode(loaded.state))
        snap = Snapshot(self.decider.snapshot_schema, loaded.version, loaded.seq, subject, epoch, sealed)
        await self.snapshots.put(loaded.stream.key, msgspec.msgpack.encode(snap))

    async def _read_snapshot(self, stream: StreamId) -> tuple[S, int, int] | None:
        if self.snapshots is None or self.keys is None:
            return None
        try:
            entry = await self.snapshots.get(stream.key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            snap = msgspec.msgpack.decode(entry.value, type=Snapshot)
            if snap.schema != self.decider.snapshot_schema:
                return None
            cipher = self.keys.get(stream.tenant, snap.subject, snap.epoch)
            if cipher is None:
                return None
            state: Any = self._state_decoder.decode(cipher.decrypt(snap.sealed))
        except Exception as e:
            log.warning("snapshot ignored", stream=stream.key, error=str(e))
            return None
        return state, snap.version, snap.seq
