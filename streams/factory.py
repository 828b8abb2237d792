"""Opening the event store from settings: the composition root of ``streams/``."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from streams.codec import EventMapper
from streams.jetstream import JetStreamLog, connect, ensure_kv
from streams.keys import LocalKeyStore, forget_when_announced
from streams.store import EventStore
from streams.subjects import EVENTS_PREFIX

DEFAULT_DATA = Path(__file__).resolve().parent.parent / ".data"


class StoreSettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    data_dir: Path = DEFAULT_DATA
    stream: str = "PARLEY_EVENTS"
    replicas: int = 1
    duplicate_window: float = 120.0
    snapshot_every: int = 200
    connect_retry_for: float | None = None
    # Group commit: writes outstanding at once, and the group size that goes as one atomic batch.
    max_in_flight: int = 1
    batch_from: int = 2

    @classmethod
    def from_env(cls, **overrides: object) -> StoreSettings:
        """Settings from ``NATS_URL``, ``PARLEY_DATA``, ``PARLEY_STREAM``, ``PARLEY_STREAM_REPLICAS``,
        ``PARLEY_SNAPSHOT_EVERY``; anything unset keeps its default."""
        env = os.environ
        values: dict[str, object] = {}
        for field, variable, convert in (
            ("nats_url", "NATS_URL", str),
            ("data_dir", "PARLEY_DATA", Path),
            ("stream", "PARLEY_STREAM", str),
            ("replicas", "PARLEY_STREAM_REPLICAS", int),
            ("snapshot_every", "PARLEY_SNAPSHOT_EVERY", int),
            ("max_in_flight", "PARLEY_MAX_IN_FLIGHT", int),
            ("batch_from", "PARLEY_BATCH_FROM", int),
        ):
            if variable in env:
                values[field] = convert(env[variable])
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


class OpenStore:
    """Everything a process needs to read and write events; close it when done."""

    def __init__(
        self,
        nc: NATS,
        log: JetStreamLog,
        store: EventStore,
        snapshots: KeyValue,
        keys: LocalKeyStore,
        settings: StoreSettings,
    ) -> None:
        self.nc = nc
        self.log = log
        self.store = store
        self.snapshots = snapshots
        self.keys = keys
        self.settings = settings

    async def close(self) -> None:
        await self.log.close()
        await self.nc.drain()
        self.keys.close()


async def open_store(settings: StoreSettings, *, name: str = "parley") -> OpenStore:
    nc = await connect(settings.nats_url, name=name, retry_for=settings.connect_retry_for)
    log = JetStreamLog(
        nc,
        stream=settings.stream,
        subjects=[f"{EVENTS_PREFIX}.>"],
        one_message_per_subject=True,
        replicas=settings.replicas,
        duplicate_window=settings.duplicate_window,
        max_in_flight=settings.max_in_flight,
        batch_from=settings.batch_from,
    )
    await log.ensure()
    prefix = settings.stream.lower()
    snapshots = await ensure_kv(log.js, bucket=f"{prefix}_snapshots", replicas=settings.replicas)
    keys = LocalKeyStore(settings.data_dir / "keys")
    store = EventStore(log, EventMapper(keys=keys))
    await forget_when_announced(keys, store)  # a shred anywhere: this process forgets the keys at once
    return OpenStore(nc, log, store, snapshots, keys, settings)
