"""The Litestar application and the API process's composition root.

``create_app(settings)`` for uvicorn; ``python -m gateways.http`` serves it. ``ApiServices`` opens
everything the process needs once, in the lifespan, from one typed settings object
(``ApiSettings``): the event store, PostgreSQL, Redis, the command runner and the use cases, the
read models' queries, and the work the process hosts besides requests (the projectors, the agent
runtime, the analytics projector and the config monitor, each when its setting says so).
Controllers do not see this container: each handler names the narrow services it needs
(``commands``, ``runner``, ``catalog``, ``conversations``, ``positions``, ...), and Litestar
provides them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from agents.assistant import ConfigAgent, ConfigChat, RedisSessions, ToolCatalog, config_agent_chain
from agents.config import VersionedConfigs
from agents.preview import Previews
from agents.process import AgentProcess
from agents.tools import ToolRegistry, demo_registry
from commands.api_key import ApiKeys
from commands.config import ConfigCatalog, ConfigMonitor, ConfigService, ensure_demo_configs
from commands.escalation import Escalations
from commands.runner import CommandRunner
from domain import api_key as k
from domain import call as v
from domain import channel as ch
from domain import config as a
from domain import conversation as c
from domain import customer as u
from domain import escalation as p
from domain import permissions as m
from gateways.http.analytics import AnalyticsAdminController, AnalyticsController
from gateways.http.analytics_series import AnalyticsSeriesController
from gateways.http.api_key import ApiKeyController, key_authority
from gateways.http.audit import AuditController
from gateways.http.auth import jwt_auth
from gateways.http.call import CallController, VoiceDesk
from gateways.http.channel import (
    ChannelServices,
    ChannelSettingsController,
    ChatController,
    ChatPages,
    DeliveryController,
    WebhookController,
)
from gateways.http.client_config import ClientConfigController
from gateways.http.common import Commands
from gateways.http.config import ConfigController
from gateways.http.console import console_router
from gateways.http.contract import StrictRequest, StructSchemas
from gateways.http.conversation import ConversationController
from gateways.http.customer import CustomerController, CustomerDesk
from gateways.http.errors import EXCEPTION_HANDLERS, document_errors
from gateways.http.escalation import EscalationController
from gateways.http.limits import Limits, StreamSlots
from gateways.http.observability import Health, embedded, health, metrics, request_context
from gateways.http.positions import Positions
from gateways.http.settings import ApiSettings
from infra import heap
from infra.logs import configure_logging
from projections import registry
from projections.analytics.service import AnalyticsService
from read_models import config as config_queries
from read_models.analytics import AnalyticsQueries
from read_models.call import CALLS, CallQueries
from read_models.config import CONFIGS, ConfigQueries, ConfigReads
from read_models.conversation import CONVERSATIONS, ConversationQueries
from read_models.escalation import ESCALATION, EscalationQueries
from streams.factory import OpenStore, open_store
from streams.store import EventStore

log = structlog.get_logger(__name__)

# The largest request body the API reads (a config's YAML is the largest thing anyone sends).
REQUEST_MAX_BYTES = 1024 * 1024


class ApiServices:
    """What one API process holds: opened in ``open``, closed in ``close``."""

    def __init__(self, settings: ApiSettings, opened: OpenStore, pool: AsyncConnectionPool[Any], redis: Redis) -> None:
        self.settings = settings
        self.opened = opened
        self.store: EventStore = opened.store
        self.pool = pool
        self.redis = redis
        self.runner = CommandRunner.for_aggregates(
            opened.store,
            [c.DECIDER, p.DECIDER, a.DECIDER, m.DECIDER, k.DECIDER, *ch.DECIDERS, v.DECIDER, v.LINE_DECIDER, u.DECIDER],
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
        self.stream_slots = StreamSlots(settings.streams_per_tenant)
        self.commands = Commands(self.runner, self.limits, opened.store, reply_wait_seconds=settings.reply_wait_seconds)
        self.keys = settings.provider_keys
        # One tool registry for the runtime, config validation (which tools exist) and previews.
        self.tools: ToolRegistry = demo_registry(pool.connection)
        self.configs = ConfigCatalog(self.runner)  # conversation starts read the active version from memory
        self.config_queries = ConfigQueries(pool)
        self.previews = Previews(self.tools, self.keys, opened.store, self.config_queries)
        self.config_service = ConfigService(
            self.runner,
            implemented_tools=frozenset(self.tools.names),
            evidence=self.previews.replay_recorded,
            blast_radius=config_queries.blast_radius(pool),
            previews=self.previews,
        )
        self.config_reads = ConfigReads(redis, pool, opened.store)
        # Configuration by conversation: the config agent's models, the tool catalog, its conversations in Redis.
        catalog = ToolCatalog.from_configs(implemented=frozenset(self.tools.names))
        self.config_chat = ConfigChat(
            self.config_service,
            ConfigAgent(config_agent_chain(self.keys), catalog),
            RedisSessions(redis, opened.store.name),
        )
        self.escalations = Escalations(self.runner, opened.store)
        self.customers = CustomerDesk.assemble(self.runner, opened.store, opened.keys, pool, redis)  # erasure, export
        self.conversations = ConversationQueries(pool)
        self.escalation_queries = EscalationQueries(pool)
        self.positions = Positions.of(
            settings.database_url, [CONVERSATIONS, CONFIGS, ESCALATION, CALLS], pool, timeout=settings.read_wait_seconds
        )
        self.projectors = registry.runners(opened.store, pool) if settings.run_projectors else []
        self.agents = (
            AgentProcess(
                opened.store,
                self.runner,
                self.configs,
                self.tools,
                self.keys,
                settings.agents,
                database_url=settings.database_url,
            )
            if settings.agents is not None
            else None
        )
        self.analytics_service: AnalyticsService | None = None
        self.analytics: AnalyticsQueries | None = None
        self.health = Health(self)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Voice calls: the call service and the sessions of this process.
        self.call_queries = CallQueries(pool)
        self.calls = VoiceDesk.assemble(
            self.runner,
            self.configs,
            self.tools,
            self.agents.configs if self.agents is not None else VersionedConfigs(self.configs.state),
            opened.store,
            opened.keys,
            data_dir=opened.settings.data_dir,
            jwt_secret=settings.jwt_secret,
            demo_tenants=settings.demo_tenants,
            env=os.environ,
        )
        # Channels and API keys: webhooks in, the outbox out, web chat, the tenants' keys.
        self.api_keys = ApiKeys(self.runner)
        self.key_authority = key_authority(self.api_keys, self.limits)
        self.channels = ChannelServices(
            opened.store,
            self.runner,
            self.configs,
            opened.keys,
            pool,
            self.limits,
            self.api_keys,
            settings.channels,
            jwt_secret=settings.jwt_secret,
            demo_tenant=settings.demo_tenants[0] if settings.demo_tenants else None,
        )

    @classmethod
    async def open(cls, settings: ApiSettings) -> ApiServices:
        opened = await open_store(settings.store, name="parley-api")
        # Reads run in autocommit: no BEGIN/COMMIT round trips around a single SELECT.
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url, min_size=4, max_size=20, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True, timeout=30)
        await registry.migrate(pool)
        redis = Redis.from_url(settings.redis_url)
        await redis.ping()
        services = cls(settings, opened, pool, redis)
        await services.start()
        return services

    async def start(self) -> None:
        settings = self.settings
        await self.positions.start()
        await self.configs.follow(self.store)
        await self.config_reads.start()
        for tenant in settings.demo_tenants:
            await ensure_demo_configs(self.config_service, tenant)
        if self.agents is not None:
            await self.agents.start(self.pool, demo_tenants=settings.demo_tenants)
        for runner in self.projectors:
            self._tasks.append(asyncio.create_task(runner.run(), name=f"projector-{runner.projector.name}"))
        if settings.analytics is not None:
            # Embedded chDB (no URL or a chdb:// one) opens in one process only: the projector runs
            # where the queries are.
            service = await AnalyticsService.open(
                self.store, settings.analytics, run_projector=settings.run_projectors or embedded(settings.analytics)
            )
            if service is not None:  # None: another process has the embedded store
                self.analytics_service, self.analytics = service, service.queries
                self._tasks.append(asyncio.create_task(service.run(self._stopping), name="projector-analytics"))
        if settings.auto_rollback is not None:
            monitor = ConfigMonitor(self.config_service, self.pool, settings.auto_rollback)
            self._tasks.append(asyncio.create_task(monitor.run(self._stopping), name="config-monitor"))
        await self.api_keys.follow(self.store)
        await self.channels.start()

    async def close(self) -> None:
        self._stopping.set()
        await self.channels.close()
        await self.api_keys.close()
        await self.calls.close()
        if self.agents is not None:
            await self.agents.close(hand_over_within=self.settings.reply_wait_seconds or 10.0)
        for runner in self.projectors:
            await runner.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.analytics_service is not None:
            await self.analytics_service.close()
        await self.positions.close()
        await self.config_reads.close()
        await self.config_chat.agent.chain.aclose()
        await self.configs.close()
        await self.redis.aclose()
        await self.pool.close()
        await self.opened.close()


# What handlers ask for by name, and the attribute of ``ApiServices`` that answers.
DEPENDENCIES = {
    "settings": "settings",
    "commands": "commands",
    "runner": "runner",
    "limits": "limits",
    "store": "store",
    "stream_slots": "stream_slots",
    "positions": "positions",
    "catalog": "configs",
    "config_service": "config_service",
    "config_reads": "config_reads",
    "config_queries": "config_queries",
    "config_chat": "config_chat",
    "escalations": "escalations",
    "conversations": "conversations",
    "escalation_queries": "escalation_queries",
    "analytics": "analytics",
    "analytics_service": "analytics_service",
    "health": "health",
    "voice": "calls",
    "call_queries": "call_queries",
    "channels": "channels",
    "api_keys": "api_keys",
    "customers": "customers",
}


def create_app(settings: ApiSettings | None = None, *, settle_heap: bool = False) -> Litestar:
    """The API. ``settle_heap``: the app is its process's (``infra.heap.settle`` once it is open)."""
    settings = settings or ApiSettings.from_env()
    holder: list[ApiServices] = []

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        services = await ApiServices.open(settings)
        holder.append(services)
        _app.state["api_key_authority"] = services.key_authority
        if settle_heap:
            heap.settle()
        try:
            yield
        finally:
            await services.close()

    def provider(attribute: str) -> Provide:
        def provide() -> Any:
            return getattr(holder[0], attribute) if attribute else holder[0]

        return Provide(provide, sync_to_thread=False)

    handlers: list[Any] = [
        ConversationController,
        EscalationController,
        ConfigController,
        ClientConfigController,
        AuditController,
        AnalyticsController,
        AnalyticsAdminController,
        AnalyticsSeriesController,
        CallController,
        WebhookController,
        ChannelSettingsController,
        DeliveryController,
        ChatController,
        ChatPages,
        ApiKeyController,
        CustomerController,
        console_router,
        health,
        metrics,
    ]
    app = Litestar(
        route_handlers=handlers,
        dependencies={name: provider(attribute) for name, attribute in DEPENDENCIES.items()},
        lifespan=[lifespan],
        on_app_init=[jwt_auth(settings.jwt_secret).on_app_init],
        middleware=[request_context],
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=StrictRequest,
        plugins=[StructSchemas()],
        request_max_body_size=REQUEST_MAX_BYTES,
        openapi_config=OpenAPIConfig(
            title="Parley",
            version="0.1.0",
            description="Event-sourced conversations: commands append events, queries read projections.",
            path="/schema",
        ),
    )
    document_errors(app)
    _resolve_dependencies_in_turn(app)
    return app


def _resolve_dependencies_in_turn(app: Litestar) -> None:
    """Each handler's dependencies resolved one after another rather than together.

    Litestar resolves a handler's independent dependencies (a "batch" of more than one) in an anyio
    task group, a task each; ours are plain reads of the process's services (``provider``), so the
    task group cost more than everything else a command's dependencies do (py-spy under bench-api:
    about 7% of the API process's time for handlers naming two of them). Resolving a batch's
    members in turn gives each the same kwargs, in the same order of batches.
    """
    for route in app.routes:
        for _handler, model in getattr(route, "route_handler_map", {}).values():
            if any(len(batch) > 1 for batch in model.dependency_batches):
                model.dependency_batches = [{d} for batch in model.dependency_batches for d in batch]


def app_from_env() -> Any:
    """The app that ``python -m gateways.http`` serves: a process of its own, its heap settled."""
    configure_logging()
    return create_app(settle_heap=True)
