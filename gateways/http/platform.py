"""The API process's composition root: every client it needs, opened once in the lifespan."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from commands.configs import ConfigCatalog, FirstVersionCatalog
from commands.conversation import CONVERSATION
from commands.runner import CommandRunner
from gateways.http.limits import Limits
from gateways.http.positions import PositionWatcher
from gateways.http.settings import ApiSettings
from streams.factory import OpenStore, open_store

log = structlog.get_logger(__name__)


class Platform:
    def __init__(
        self,
        settings: ApiSettings,
        opened: OpenStore,
        pool: AsyncConnectionPool[Any],
        redis: Redis,
        configs: ConfigCatalog,
    ) -> None:
        from projections import registry
        from read_models import conversations as queries

        self.settings = settings
        self.opened = opened
        self.pool = pool
        self.redis = redis
        self.configs = configs
        self.queries: ModuleType = queries
        self.runner = CommandRunner.for_aggregates(
            opened.store,
            [CONVERSATION],
            snapshots=opened.snapshots,
            keys=opened.keys,
            snapshot_every=opened.settings.snapshot_every,
        )
        self.limits = Limits(
            redis,
            tenant_rate=settings.tenant_rate,
            tenant_burst=settings.tenant_burst,
            messages_per_minute=settings.conversation_messages_per_minute,
            ttl=settings.idempotency_ttl_seconds,
        )
        self.projectors = registry.runners(opened.store, pool) if settings.run_projectors else []
        self.projector_defs = registry.projectors()
        self.positions = PositionWatcher(settings.database_url, queries.CONVERSATIONS)
        self.positions.database_url_pool = pool
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, settings: ApiSettings) -> Platform:
        from projections import registry

        opened = await open_store(settings.store, name="parley-api")
        # Reads run in autocommit: no BEGIN/COMMIT round trips around a single SELECT.
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url, min_size=4, max_size=20, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True, timeout=30)
        await registry.migrate(pool)
        redis = Redis.from_url(settings.redis_url)
        await redis.ping()
        platform = cls(settings, opened, pool, redis, FirstVersionCatalog())
        await platform.positions.start()
        for runner in platform.projectors:
            platform._tasks.append(asyncio.create_task(runner.run(), name=f"projector-{runner.projector.name}"))
        return platform

    async def close(self) -> None:
        for runner in self.projectors:
            await runner.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.positions.close()
        await self.redis.aclose()
        await self.pool.close()
        await self.opened.close()

    async def projector_statuses(self) -> list[Any]:
        """Every projector's progress, wherever it runs (in this process or its own)."""
        from projections.status import projector_status

        return [await projector_status(self.pool, self.opened.store, p) for p in self.projector_defs]

    async def wait_for(self, position: int | None) -> bool:
        """Wait, bounded, until the conversation read model has passed ``position``."""
        if not position:
            return True
        return await self.positions.wait(position, self.settings.read_wait_seconds)
