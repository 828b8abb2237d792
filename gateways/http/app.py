"""The Litestar application: ``create_app()`` for uvicorn, ``python -m gateways.http`` to serve."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from gateways.http.analytics import AnalyticsAdminController, AnalyticsController
from gateways.http.audit import AuditController
from gateways.http.auth import jwt_auth
from gateways.http.call import CallController
from gateways.http.config import ConfigController
from gateways.http.console import console_router
from gateways.http.conversation import ConversationController
from gateways.http.errors import EXCEPTION_HANDLERS
from gateways.http.escalation import EscalationController
from gateways.http.observability import health, metrics, request_context
from gateways.http.platform import Platform
from gateways.http.settings import ApiSettings
from infra import heap
from infra.logs import configure_logging


def create_app(settings: ApiSettings | None = None, *, settle_heap: bool = False) -> Litestar:
    """The API. ``settle_heap``: the app is its process's (``infra.heap.settle`` once it is open)."""
    holder: dict[str, Platform] = {}

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        platform = await Platform.open(settings or ApiSettings.from_env())
        holder["platform"] = platform
        if settle_heap:
            heap.settle()
        try:
            yield
        finally:
            await platform.close()

    def provide_platform() -> Platform:
        return holder["platform"]

    auth_secret = (settings or _settings_for_schema()).jwt_secret
    return Litestar(
        route_handlers=[
            ConversationController,
            EscalationController,
            ConfigController,
            AuditController,
            AnalyticsController,
            AnalyticsAdminController,
            CallController,
            health,
            metrics,
            console_router,
        ],
        dependencies={"platform": Provide(provide_platform, sync_to_thread=False)},
        lifespan=[lifespan],
        on_app_init=[jwt_auth(auth_secret).on_app_init],
        middleware=[request_context],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Parley",
            version="0.1.0",
            description="Event-sourced conversations: commands append events, queries read projections.",
            path="/schema",
        ),
    )


def _settings_for_schema() -> ApiSettings:
    return ApiSettings.from_env()


def app_from_env() -> Any:
    """The app that ``python -m gateways.http`` serves: a process of its own, its heap settled."""
    configure_logging()
    return create_app(settle_heap=True)
