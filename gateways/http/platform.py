"""The API process's composition root: every client it needs, opened once in the lifespan."""

from __future__ import annotations

import asyncio
import os
from types import ModuleType
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from agents.checkpoints import TurnCheckpoints
from agents.config import VersionedConfigs
from agents.demo_data import setup_demo_data
from agents.preview import replay_history
from agents.runtime import AgentRuntime
from agents.settings import AgentSettings
from agents.tools import demo_registry
from commands.config import (
    AGENT_CONFIG,
    CONFIG_MEMBERS,
    ConfigCatalog,
    ConfigMonitor,
    ConfigService,
    ensure_demo_configs,
)
from commands.conversation import CONVERSATION, reply_command_id
from commands.escalation import Escalations
from commands.runner import CommandRunner
from domain import conversation as c
from domain.escalation import DECIDER as AGENT_POOL
from gateways.http.limits import Limits
from gateways.http.positions import PositionWatcher
from gateways.http.settings import ApiSettings
from projections.analytics.service import AnalyticsService
from read_models import config as config_queries
from read_models.analytics import AnalyticsQueries
from read_models.config import CONFIGS, ConfigReads
from streams.factory import OpenStore, open_store
from streams.subjects import StreamId
from streams.watch import Expected

log = structlog.get_logger(__name__)


class Platform:
    def __init__(
        self,
        settings: ApiSettings,
        opened: OpenStore,
        pool: AsyncConnectionPool[Any],
        redis: Redis,
    ) -> None:
        from projections import registry
        from read_models import conversation as queries
        from read_models import escalation as escalation_queries

        self.settings = settings
        self.opened = opened
        self.pool = pool
        self.redis = redis
        self.queries: ModuleType = queries
        self.escalation_queries: ModuleType = escalation_queries
        self.runner = CommandRunner.for_aggregates(
            opened.store,
            [CONVERSATION, AGENT_POOL, AGENT_CONFIG, CONFIG_MEMBERS],
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
        self.configs = ConfigCatalog(self.runner)
        self.escalations = Escalations(self.runner, opened.store)
        # The runtime answers each conversation with the config version it is pinned to.
        self.agent_configs = VersionedConfigs(self.configs.state)
        # One tool registry for the runtime, config validation (which tools exist) and previews.
        self.tools = demo_registry(pool.connection)
        self.agents: AgentRuntime | None = None
        if settings.run_agents:
            agent_settings = AgentSettings.from_env()
            checkpoints = TurnCheckpoints(settings.database_url) if agent_settings.checkpoints == "postgres" else None
            self.agents = AgentRuntime(
                opened.store,
                self.runner,
                self.tools,
                self.agent_configs,
                dict(os.environ),
                checkpoints=checkpoints,
                partitions=agent_settings.partitions,
            )
        self.config_service = ConfigService(
            self.runner,
            implemented_tools=frozenset(self.tools.names),
            evidence=self.replay_recorded,
            blast_radius=config_queries.blast_radius(pool),
        )
        self.config_reads = ConfigReads(redis, pool, opened.store)
        self.projector_defs = registry.projectors()
        self.positions = PositionWatcher(settings.database_url, queries.CONVERSATIONS, pool)
        self.config_positions = PositionWatcher(settings.database_url, CONFIGS, pool)
        self.escalation_positions = PositionWatcher(settings.database_url, escalation_queries.ESCALATION, pool)
        self._stopping = asyncio.Event()
        # ClickHouse analytics: its queries (``analytics``) and the projector feeding them.
        self.analytics_service: AnalyticsService | None = None
        self.analytics: AnalyticsQueries | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._agent_task: asyncio.Task[None] | None = None
        from gateways.http.call import VoiceDesk  # voice calls: the call service and the sessions of this process

        self.calls = VoiceDesk(self)

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
        platform = cls(settings, opened, pool, redis)
        await platform.positions.start()
        await platform.config_positions.start()
        await platform.escalation_positions.start()
        await platform.configs.follow(opened.store)  # conversation starts read the active version from memory
        await platform.config_reads.start()
        for tenant in settings.demo_tenants:
            await ensure_demo_configs(platform.config_service, tenant)
        if platform.agents is not None:
            async with pool.connection() as conn:
                await setup_demo_data(conn, tenants=settings.demo_tenants or ("demo",))
            # The work stream exists before the API takes a request: every message from here on
            # waits there for an answer (a later start would skip the first ones).
            await platform.agent_configs.follow(opened.store)
            platform._tasks.append(asyncio.create_task(platform._sweep_configs(), name="config-sweep"))
            await platform.agents.start()
            # Its partitions are shared with the runtimes of the other API processes.
            platform._agent_task = asyncio.create_task(platform.agents.run(settings.database_url), name="agent-runtime")
            platform._tasks.append(platform._agent_task)
        for runner in platform.projectors:
            platform._tasks.append(asyncio.create_task(runner.run(), name=f"projector-{runner.projector.name}"))
        if settings.analytics is not None:
            # Embedded chDB opens in one process only: the projector runs where the queries are.
            embedded = settings.analytics.clickhouse_url is None
            service = await AnalyticsService.open(
                opened.store, settings.analytics, run_projector=settings.run_projectors or embedded
            )
            if service is not None:  # None: another process has the embedded store
                platform.analytics_service, platform.analytics = service, service.queries
                platform._tasks.append(asyncio.create_task(service.run(platform._stopping), name="projector-analytics"))
        if settings.auto_rollback is not None:
            monitor = ConfigMonitor(platform.config_service, pool, settings.auto_rollback)
            platform._tasks.append(asyncio.create_task(monitor.run(platform._stopping), name="config-monitor"))
        return platform

    async def close(self) -> None:
        self._stopping.set()
        await self.calls.close()
        if self.agents is not None:
            await self.agents.stop()
            if self._agent_task is not None:  # hand the partitions over: the batches in hand end first
                await asyncio.wait([self._agent_task], timeout=self.settings.reply_wait_seconds)
            await self.agents.close()
        for runner in self.projectors:
            await runner.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.analytics_service is not None:
            await self.analytics_service.close()
        await self.positions.close()
        await self.config_positions.close()
        await self.escalation_positions.close()
        await self.config_reads.close()
        await self.configs.close()
        await self.agent_configs.close()
        await self.redis.aclose()
        await self.pool.close()
        await self.opened.close()

    async def projector_statuses(self) -> list[Any]:
        """Every projector's progress, wherever it runs (in this process or its own); the analytics
        projector's when this process has ClickHouse (with chDB, the process that has the store)."""
        from projections.status import projector_status

        statuses = [await projector_status(self.pool, self.opened.store, p) for p in self.projector_defs]
        if self.analytics_service is not None:
            try:
                analytics = await self.analytics_service.status()
            except Exception as e:  # a status reports, it does not raise (health checks ClickHouse itself)
                log.warning("analytics projector status unavailable", error=f"{type(e).__name__}: {e}")
            else:
                if analytics is not None:
                    statuses.append(analytics)
        return statuses

    async def expect_reply(self, stream: StreamId, message_id: str) -> ReplyWait:
        """Start listening for the agent's reply to a message (before the message is appended)."""
        return ReplyWait(await self.opened.store.expect(stream, reply_command_id(message_id)))

    async def _sweep_configs(self, every: float = 60.0) -> None:
        """Release config versions no conversation has used for the grace period."""
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), every)
            except TimeoutError:
                self.agent_configs.sweep()

    async def recordings(self, tenant: str, config_id: str, limit: int) -> dict[str, list[Any]]:
        """The events of the config's most recent conversations, by conversation id."""
        async with self.pool.connection() as conn:
            ids = await config_queries.recent_conversations(conn, tenant, config_id, limit)
        store = self.opened.store
        return {cid: await store.read(StreamId(tenant, c.AGGREGATE_TYPE, cid)) for cid in ids}

    async def replay_recorded(self, tenant: str, config_id: str, candidate: Any, limit: int = 20) -> dict[str, Any]:
        """How ``candidate`` would have answered the config's recent recorded conversations."""
        return await replay_history(candidate, await self.recordings(tenant, config_id, limit), dict(os.environ))

    async def wait_for_configs(self, position: int | None) -> bool:
        """Wait, bounded, until the configs read model has passed ``position``."""
        if not position:
            return True
        return await self.config_positions.wait(position, self.settings.read_wait_seconds)

    async def wait_for(self, position: int | None, *projectors: str) -> bool:
        """Wait, bounded, until the read models (default: conversations) have passed ``position``."""
        if not position:
            return True
        watchers = {"conversations": self.positions, "escalation": self.escalation_positions}
        reached = [
            await watchers[name].wait(position, self.settings.read_wait_seconds)
            for name in projectors or ("conversations",)
        ]
        return all(reached)


class ReplyWait:
    """The agent's reply to one message, as soon as its commit is published."""

    def __init__(self, expected: Expected) -> None:
        self.expected = expected

    async def reply(self, timeout: float) -> c.AgentReplied | None:  # noqa: ASYNC109 - the bound is the answer
        events = await self.expected.events(timeout)
        return next((e.event for e in events or [] if isinstance(e.event, c.AgentReplied)), None)
