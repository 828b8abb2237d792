"""Automatic rollback: a newly activated config version that fails too often is rolled back.

Every ``interval`` seconds the monitor looks at each config version activated within ``window``
(not by a rollback: a restored version is never rolled back automatically, so two versions cannot
flap). Once at least ``min_sample`` conversations have started on it, if more than ``threshold`` of
them failed (an AI reply with a failed tool call), it appends a rollback to the previously active
version, initiated by ``monitor``, and logs an alert. It is the API's rollback
(``ConfigService.rollback``), blast radius included, for that version only: the decider refuses a
second one (the version is no longer active), so two monitors cannot both act.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import structlog
from psycopg_pool import AsyncConnectionPool

from commands.configs import SYSTEM, ConfigService
from domain.errors import ParleyError
from read_models import configs as q

log = structlog.get_logger(__name__)


class MonitorSettings(msgspec.Struct, frozen=True, kw_only=True):
    threshold: float = 0.10  # the seed: more than 10 % of conversations failing
    min_sample: int = 20
    window_seconds: float = 600.0
    interval_seconds: float = 5.0


class ConfigMonitor:
    def __init__(self, service: ConfigService, pool: AsyncConnectionPool[Any], settings: MonitorSettings) -> None:
        self.service = service
        self.pool = pool
        self.settings = settings

    async def check(self) -> list[dict[str, Any]]:
        """One look at the recently activated versions; returns the rollbacks it made."""
        since = datetime.now(UTC) - timedelta(seconds=self.settings.window_seconds)
        async with self.pool.connection() as conn:
            health = await q.version_health(conn, since)
        rolled = []
        for row in health:
            total, failed = row["conversations"], row["failed"]
            if total < self.settings.min_sample or failed / total <= self.settings.threshold:
                continue
            limit = f"{self.settings.threshold:.0%}"
            reason = f"{failed} of {total} conversations on v{row['version']} failed (more than {limit})"
            try:
                _, done = await self.service.rollback(
                    row["tenant"],
                    row["config_id"],
                    SYSTEM,
                    reason=reason,
                    initiated_by="monitor",
                    from_version=row["version"],
                )
            except ParleyError as e:  # already rolled back, or nothing earlier to restore
                log.info("no automatic rollback", config_id=row["config_id"], version=row["version"], why=e.message)
                continue
            log.error(
                "ALERT: config version rolled back automatically",
                tenant=row["tenant"],
                config_id=row["config_id"],
                from_version=done.from_version,
                to_version=done.to_version,
                new_version=done.new_version,
                reason=reason,
            )
            rolled.append({"tenant": row["tenant"], "config_id": row["config_id"], **msgspec.to_builtins(done)})
        return rolled

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except Exception:  # the monitor must outlive a bad moment of the database
                log.exception("config monitor check failed")
            try:
                await asyncio.wait_for(stop.wait(), self.settings.interval_seconds)
            except TimeoutError:
                pass
