"""Config reads from Redis, kept current by the config events (the seed's target: p95 under 50 ms).

A config's active document is cached in Redis with its *revision* (how many events its history
had). Every config commit published on NATS raises the config's revision mark in Redis to the
commit's last revision. A cached document is served only while its revision is at least the mark;
otherwise the read goes to the read model, and the document it gets is cached again only if it is
as new as the mark. So the cache never serves a config older than an event already announced,
whichever API process wrote it or reads it; a TTL bounds how long a missed announcement matters.
Reads of a given version or of a past moment go to the read model (versions never change).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from domain import agent_config as a
from read_models import configs as q
from streams.store import EventStore
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

TTL_SECONDS = 300

# KEYS: the mark. ARGV: a revision. The mark only goes up.
_RAISE_MARK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 0
"""
# KEYS: the document, the mark. ARGV: the document, its revision. Cached only if not older than the mark.
_FILL = """
local mark = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) >= mark then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3]) end
return 0
"""


class ConfigReads:
    def __init__(self, redis: Redis, pool: AsyncConnectionPool[Any], store: EventStore) -> None:
        """The cache is named after the event stream: another stream is another history."""
        self.namespace = store.name
        self.redis = redis
        self.pool = pool
        self.store = store
        self._raise = redis.register_script(_RAISE_MARK)
        self._fill = redis.register_script(_FILL)
        self._subscription: Any = None
        self.hits = self.misses = 0

    def _keys(self, tenant: str, config_id: str) -> tuple[str, str]:
        return f"cfg:{self.namespace}:doc:{tenant}:{config_id}", f"cfg:{self.namespace}:rev:{tenant}:{config_id}"

    async def start(self) -> None:
        self._subscription = await self.store.follow(a.AGGREGATE_TYPE, self._announced)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()

    async def _announced(self, stream: StreamId, revision: int) -> None:
        _, mark = self._keys(stream.tenant, stream.aggregate_id)
        await self._raise(keys=[mark], args=[revision, TTL_SECONDS * 2])

    async def get(
        self, tenant: str, config_id: str, *, version: int | None = None, at: datetime | None = None
    ) -> dict[str, Any] | None:
        if version is not None or at is not None:
            async with self.pool.connection() as conn:
                return await q.get_config(conn, tenant, config_id, version=version, at=at)
        doc_key, mark_key = self._keys(tenant, config_id)
        cached, mark = await self.redis.mget(doc_key, mark_key)
        if cached is not None:
            found: dict[str, Any] = json.loads(cached)
            if found["revision"] >= int(mark or 0):
                self.hits += 1
                found["cached"] = True
                return found
        self.misses += 1
        async with self.pool.connection() as conn:
            fresh = await q.get_config(conn, tenant, config_id)
        if fresh is not None:
            await self._fill(keys=[doc_key, mark_key], args=[json.dumps(fresh), fresh["revision"], TTL_SECONDS])
            fresh["cached"] = False
        return fresh
