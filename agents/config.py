"""Which agent config answers a conversation: the version it is pinned to, loaded from the config's events.

Hot reload with pinning, as in the seed's strategy:

- A conversation is pinned at its start to the config's active version (the API asks the config's
  events, ``commands.config.ConfigCatalog``); this source hands the runtime exactly that version,
  so a conversation in flight keeps its version to the end whatever is activated meanwhile.
- Versions never change, so a parsed version is cached by (tenant, config, version) and never
  invalidated. The runtime follows config commits (``follow``) and loads a newly activated version
  before the first conversation on it asks, so a rollback or a new version costs that conversation
  nothing.
- A version nobody has used for the grace period (the seed: 5 minutes), and that is not the active
  one, is released from memory (``sweep``). A conversation that comes back to it later loads it
  again from the events: releasing is about memory, never about correctness.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from domain import config as a
from domain.bot import AgentConfig, load_config
from streams.store import EventStore
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

CONFIGS = Path(__file__).resolve().parent / "configs"
GRACE_SECONDS = 300.0

StateLoader = Callable[[str, str], Awaitable[a.AgentConfigState]]


class ConfigProvider(Protocol):
    async def get(self, tenant: str, config_id: str, version: int) -> AgentConfig: ...


class DemoConfigs:
    """The demo YAML files by file stem (``support-bot`` is ``support_bot.yaml``), whatever the tenant
    and version, an unknown id getting ``default``: for tests of the runtime's mechanics and tools
    that run without the config service. The platform uses ``VersionedConfigs``."""

    def __init__(self, directory: Path = CONFIGS, default: str = "support-bot") -> None:
        self._configs = {p.stem.replace("_", "-"): load_config(p.read_text()) for p in sorted(directory.glob("*.yaml"))}
        self._default = default

    async def get(self, tenant: str, config_id: str, version: int) -> AgentConfig:
        return self._configs.get(config_id) or self._configs[self._default]


class VersionedConfigs:
    """Any version of any tenant's config, from its events, kept in memory while it is in use."""

    def __init__(
        self,
        load_state: StateLoader,
        *,
        grace_seconds: float = GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load_state = load_state
        self.grace_seconds = grace_seconds
        self._clock = clock
        self._versions: dict[tuple[str, str, int], tuple[AgentConfig, float]] = {}
        self._active: dict[tuple[str, str], int] = {}
        self._subscription: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, tenant: str, config_id: str, version: int) -> AgentConfig:
        key = (tenant, config_id, version)
        hit = self._versions.get(key)
        if hit is None:
            state = await self._load_state(tenant, config_id)
            config = load_config(state.version(version).yaml_content)
            self._note_active(tenant, config_id, state.active)
        else:
            config = hit[0]
        self._versions[key] = (config, self._clock())
        return config

    def loaded(self) -> list[tuple[str, str, int]]:
        return sorted(self._versions)

    def _note_active(self, tenant: str, config_id: str, active: int) -> None:
        if active:
            self._active[(tenant, config_id)] = active

    async def preload_active(self, tenant: str, config_id: str) -> int:
        """Load the config's active version now (a config commit was seen); returns it (0: none)."""
        state = await self._load_state(tenant, config_id)
        self._note_active(tenant, config_id, state.active)
        if state.active and (tenant, config_id, state.active) not in self._versions:
            config = load_config(state.version(state.active).yaml_content)
            self._versions[(tenant, config_id, state.active)] = (config, self._clock())
            log.info("config version loaded", tenant=tenant, config_id=config_id, version=state.active)
        return state.active

    def sweep(self) -> list[tuple[str, str, int]]:
        """Release the versions unused for the grace period, except each config's active one."""
        now = self._clock()
        released = [
            key
            for key, (_, used) in self._versions.items()
            if now - used >= self.grace_seconds and self._active.get(key[:2]) != key[2]
        ]
        for key in released:
            del self._versions[key]
            log.info("config version released", tenant=key[0], config_id=key[1], version=key[2])
        return released

    # Following config commits -------------------------------------------------------------------

    async def follow(self, store: EventStore) -> None:
        """Preload each config's newly active version as soon as its commit is published."""

        def seen(stream: StreamId, version: int) -> None:
            task = asyncio.create_task(self._preload_quietly(stream.tenant, stream.aggregate_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._subscription = await store.follow(a.AGGREGATE_TYPE, seen)

    async def _preload_quietly(self, tenant: str, config_id: str) -> None:
        try:
            await self.preload_active(tenant, config_id)
        except Exception as e:  # the conversation that needs it loads it itself
            log.warning("could not preload a config version", tenant=tenant, config_id=config_id, error=str(e))

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
        for task in list(self._tasks):
            task.cancel()
