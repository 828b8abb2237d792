"""Request ids, access logs, health and metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Literal

import msgspec
import structlog
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from projections import registry
from projections.settings import AnalyticsSettings
from projections.status import metrics_text, projector_status

log = structlog.get_logger("parley.http")


def embedded(settings: AnalyticsSettings) -> bool:
    """chDB (no URL, or a ``chdb://`` one): only the process that opens the store reaches it."""
    return settings.clickhouse_url is None or settings.clickhouse_url.startswith("chdb:")


def request_context(app: ASGIApp) -> ASGIApp:
    """Give every request an id (``X-Request-ID`` or a new one) bound to every log line it causes."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        request_id = incoming if 0 < len(incoming) <= 100 else uuid.uuid4().hex
        header = (b"x-request-id", request_id.encode("latin-1"))
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()

    return middleware


class DependencyHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One dependency: reachable (``ms``: how long the probe took) or not (``error``)."""

    name: str
    ok: bool
    ms: float | None = None
    error: str | None = None


class ProjectorHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A projector's progress (``projections.status``): its checkpoint, the stream's last sequence
    and the last one among the events it follows, how far behind it is, its dead letters."""

    name: str
    schema: str
    checkpoint: int
    stream_last_seq: int
    last_event_seq: int
    lag: int
    dead_letters: int


class HealthReport(msgspec.Struct, frozen=True, kw_only=True):
    """``ok`` when every dependency answers and every projector keeps up; else ``degraded``, and
    ``problems`` says why (a dependency that does not answer, a projector that does not run, or
    one behind the stream whose checkpoint has not moved for ``Health.stall_seconds``)."""

    status: Literal["ok", "degraded"]
    dependencies: list[DependencyHealth]
    projectors: list[ProjectorHealth]
    problems: list[str] = msgspec.field(default_factory=list)


async def _check(name: str, probe: Any) -> DependencyHealth:
    started = time.perf_counter()
    try:
        await probe()
    except Exception as e:  # a health check reports, it does not raise
        return DependencyHealth(name=name, ok=False, error=f"{type(e).__name__}: {e}")
    return DependencyHealth(name=name, ok=True, ms=round((time.perf_counter() - started) * 1000, 2))


class Health:
    """Every dependency of the API process, and each projector's progress wherever it runs.

    A projector is stalled when it is behind the stream and its checkpoint has not moved for
    ``stall_seconds`` (between two reports of this process): whether it runs here, in a process of
    its own or nowhere at all, health then says so. The analytics projector with chDB can run only
    in the process that has the store: if that is this one and it does not run here, it runs nowhere.
    """

    stall_seconds = 60.0

    def __init__(self, services: Any) -> None:
        self.services = services  # the process's ``ApiServices``: pool, store, Redis, analytics, projectors
        self._seen: dict[str, tuple[int, float]] = {}  # projector -> (checkpoint, when it was first seen there)

    async def report(self) -> HealthReport:
        services = self.services

        async def postgres() -> None:
            async with services.pool.connection() as conn:
                await conn.execute("SELECT 1")

        dependencies = [
            await _check("nats", services.store.ping),
            await _check("postgres", postgres),
            await _check("redis", services.redis.ping),
        ]
        if (analytics := services.analytics) is not None:  # ClickHouse, when this process has it

            async def clickhouse() -> None:
                await asyncio.to_thread(analytics.client.command, "SELECT 1")

            dependencies.append(await _check("clickhouse", clickhouse))
        projectors = [msgspec.convert(p, ProjectorHealth) for p in await self.projector_statuses()]
        problems = [f"{d.name} does not answer: {d.error}" for d in dependencies if not d.ok]
        problems += self.not_running() + self.stalled(projectors)
        return HealthReport(
            status="degraded" if problems else "ok",
            dependencies=dependencies,
            projectors=projectors,
            problems=problems,
        )

    def not_running(self) -> list[str]:
        """Projectors this process should run and does not."""
        services = self.services
        problems = [
            f"the {task.get_name().removeprefix('projector-')} projector stopped"
            for task in getattr(services, "_tasks", [])
            if task.get_name().startswith("projector-") and task.done()
        ]
        analytics = services.analytics_service
        settings = getattr(services.settings, "analytics", None)
        if analytics is not None and analytics.runner is None and settings is not None and embedded(settings):
            problems.append("the analytics projector runs nowhere: this process has the chDB store and does not run it")
        return problems

    def stalled(self, projectors: list[ProjectorHealth]) -> list[str]:
        """Projectors behind the stream whose checkpoint has not moved for ``stall_seconds``."""
        now = time.monotonic()
        problems = []
        for p in projectors:
            checkpoint, since = self._seen.get(p.name, (None, now))
            if checkpoint != p.checkpoint or p.lag == 0:
                self._seen[p.name] = (p.checkpoint, now)
            elif now - since >= self.stall_seconds:
                problems.append(f"the {p.name} projector is {p.lag} behind and has not moved for {now - since:.0f} s")
        return problems

    async def projector_statuses(self) -> list[Any]:
        """Every projector's progress, wherever it runs (in this process or its own); the analytics
        projector's when this process has ClickHouse (with chDB, the process that has the store)."""
        services = self.services
        statuses = [await projector_status(services.pool, services.store, p) for p in registry.projectors()]
        if services.analytics_service is not None:
            try:
                analytics = await services.analytics_service.status()
            except Exception as e:  # a status reports, it does not raise (health checks ClickHouse itself)
                log.warning("analytics projector status unavailable", error=f"{type(e).__name__}: {e}")
            else:
                if analytics is not None:
                    statuses.append(analytics)
        return statuses


@get(
    "/health",
    tags=["operations"],
    summary="Dependencies and projector lag",
    exclude_from_auth=True,
    responses={503: ResponseSpec(data_container=HealthReport, description="Degraded: `problems` says why")},
)
async def health(health: NamedDependency[Health]) -> Response[HealthReport]:
    """200 when every dependency answers, 503 (the same body) when one does not."""
    report = await health.report()
    return Response(report, status_code=200 if report.status == "ok" else 503)


@get("/metrics", tags=["operations"], summary="Prometheus metrics", media_type="text/plain", exclude_from_auth=True)
async def metrics(health: NamedDependency[Health]) -> str:
    return metrics_text(await health.projector_statuses())
