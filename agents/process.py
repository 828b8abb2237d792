"""The agent runtime as a process of its own, or inside the API process: one way to compose it.

``AgentProcess`` holds what answering needs: the config versions the conversations are pinned to
(followed from the config commits and released when unused), the tools, the provider keys, the
runtime with its turn checkpoints. ``python -m agents`` opens the store and PostgreSQL itself and
runs it until stopped; the API process builds it on the resources it already has when
``PARLEY_INLINE_AGENTS`` is on. Either way its partitions are shared with every other runtime
on the same work stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from agents.checkpoints import TurnCheckpoints
from agents.config import VersionedConfigs
from agents.demo_data import setup_demo_data
from agents.llm.factory import ProviderKeys
from agents.runtime import AgentRuntime
from agents.settings import AgentSettings
from agents.tools import ToolRegistry
from commands.config import ConfigCatalog
from commands.runner import CommandRunner
from streams.store import EventStore

log = structlog.get_logger(__name__)

SWEEP_EVERY = 60.0


class AgentProcess:
    def __init__(
        self,
        store: EventStore,
        runner: CommandRunner,
        catalog: ConfigCatalog,
        tools: ToolRegistry,
        keys: ProviderKeys,
        settings: AgentSettings,
        *,
        database_url: str,
    ) -> None:
        self.store = store
        self.settings = settings
        self.database_url = database_url
        # The runtime answers each conversation with the config version it is pinned to.
        self.configs = VersionedConfigs(catalog.state)
        checkpoints = TurnCheckpoints(database_url) if settings.checkpoints == "postgres" else None
        self.runtime = AgentRuntime(
            store, runner, tools, self.configs, keys, checkpoints=checkpoints, partitions=settings.partitions
        )
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, pool: Any, *, demo_tenants: tuple[str, ...] = ()) -> None:
        """Ready to answer: the demo data seeded, config commits followed, the work stream there.

        Call it before the API takes requests: from then on every message waits in the work stream
        until a runtime answers it (a later start would miss the first ones).
        """
        async with pool.connection() as conn:
            await setup_demo_data(conn, tenants=demo_tenants or ("demo",))
        await self.configs.follow(self.store)
        await self.runtime.start()
        self._tasks.append(asyncio.create_task(self._sweep(), name="config-sweep"))
        self._tasks.append(asyncio.create_task(self.runtime.run(self.database_url), name="agent-runtime"))

    async def _sweep(self) -> None:
        """Release config versions no conversation has used for the grace period."""
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), SWEEP_EVERY)
            except TimeoutError:
                self.configs.sweep()

    async def close(self, *, hand_over_within: float = 10.0) -> None:
        """Hand the partitions over (the batches in hand are answered first), then let go."""
        self._stopping.set()
        await self.runtime.stop()
        running = [task for task in self._tasks if task.get_name() == "agent-runtime"]
        if running:
            await asyncio.wait(running, timeout=hand_over_within)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runtime.close()
        with contextlib.suppress(Exception):
            await self.configs.close()
