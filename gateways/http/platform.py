"""The API process's composition root: every client it needs, opened once in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import os
from types import ModuleType
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from agents.demo_data import setup_demo_data
from agents.runtime import AgentRuntime, ConfigSource
from agents.tools import demo_registry
from commands.agent_pool import AGENT_POOL
from commands.configs import ConfigCatalog, FirstVersionCatalog
from commands.conversation import CONVERSATION
from commands.runner import CommandRunner
from domain import conversation as c
from gateways.http.limits import Limits
from gateways.http.positions import PositionWatcher
from gateways.http.settings import ApiSettings
from streams.factory import OpenStore, open_store
from streams.jetstream import RawMessage
from streams.subjects import StreamId, command_token

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
            [CONVERSATION, AGENT_POOL],
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
        self.agents: AgentRuntime | None = None
        if settings.run_agents:
            tools = demo_registry(pool.connection)
            self.agents = AgentRuntime(opened.store, self.runner, tools, ConfigSource(), dict(os.environ))
        self.projector_defs = registry.projectors()
        self.positions = PositionWatcher(settings.database_url, queries.CONVERSATIONS, pool)
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
        if platform.agents is not None:
            async with pool.connection() as conn:
                await setup_demo_data(conn)
            # Fix where the runtime starts before the API takes a request: a new runtime answers
            # every message from here on (a later start would skip the first ones).
            await platform.agents.start()
            runtime = platform.agents.run(leader=pool)
            platform._tasks.append(asyncio.create_task(runtime, name="agent-runtime"))
        for runner in platform.projectors:
            platform._tasks.append(asyncio.create_task(runner.run(), name=f"projector-{runner.projector.name}"))
        return platform

    async def close(self) -> None:
        if self.agents is not None:
            await self.agents.stop()
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

    async def expect_reply(self, stream: StreamId, message_id: str) -> ReplyWait:
        """Start listening for the agent's reply to a message (before the message is appended)."""
        subject = f"{stream.subject}.{command_token(f'reply-{message_id}')}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def arrived(msg: Any) -> None:
            if not future.done():
                future.set_result(msg)

        subscription = await self.opened.nc.subscribe(subject, cb=arrived)
        return ReplyWait(self, stream, subject, subscription, future)

    async def wait_for(self, position: int | None) -> bool:
        """Wait, bounded, until the conversation read model has passed ``position``."""
        if not position:
            return True
        return await self.positions.wait(position, self.settings.read_wait_seconds)


class ReplyWait:
    """The agent's reply to one message, as soon as its commit is published (core NATS sees it)."""

    def __init__(self, platform: Platform, stream: StreamId, subject: str, subscription: Any, future: Any) -> None:
        self.platform, self.stream, self.subject = platform, stream, subject
        self.subscription, self.future = subscription, future

    async def reply(self, timeout: float) -> c.AgentReplied | None:  # noqa: ASYNC109 - the bound is the answer
        store = self.platform.opened.store
        try:
            try:
                msg = await asyncio.wait_for(asyncio.shield(self.future), timeout)
                raw = RawMessage(seq=0, subject=self.subject, headers=msg.headers or {}, data=msg.data, time="")
            except TimeoutError:
                found = await store.log.last_on_subject(self.subject)  # committed before we listened?
                if found is None:
                    return None
                raw = found
            return next((e.event for e in store.decode(raw, self.stream) if isinstance(e.event, c.AgentReplied)), None)
        finally:
            with contextlib.suppress(Exception):
                await self.subscription.unsubscribe()
