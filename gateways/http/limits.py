"""Rate limits (Redis token buckets) and idempotent requests (Redis-remembered responses)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from domain.errors import ParleyError, ValidationError

# KEYS[1]: bucket; ARGV: rate (tokens/s), burst, cost. Uses the server's clock, so every API
# process shares one bucket. Returns {allowed, milliseconds until a token is back}.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""


class RateLimited(ParleyError):
    code = "rate_limited"
    status = 429

    def __init__(self, what: str, retry_after_ms: int) -> None:
        seconds = max(1, -(-retry_after_ms // 1000))
        super().__init__(f"too many requests for {what}; retry after {seconds}s", retry_after=seconds, limit=what)


class IdempotencyKeyReused(ParleyError):
    code = "idempotency_key_reused"
    status = 422


class Limits:
    def __init__(
        self, redis: Redis, *, tenant_rate: float, tenant_burst: int, messages_per_minute: int, ttl: int
    ) -> None:
        self.redis = redis
        self.tenant_rate = tenant_rate
        self.tenant_burst = tenant_burst
        self.messages_per_minute = messages_per_minute
        self.ttl = ttl
        self._bucket = redis.register_script(_TOKEN_BUCKET)

    async def take(self, key: str, *, rate: float, burst: int, what: str) -> None:
        allowed, wait = await self._bucket(keys=[key], args=[rate, burst, 1])
        if not allowed:
            raise RateLimited(what, int(wait))

    async def tenant(self, tenant: str) -> None:
        await self.take(f"rl:t:{tenant}", rate=self.tenant_rate, burst=self.tenant_burst, what=f"tenant {tenant}")

    async def conversation_message(self, tenant: str, conversation_id: str) -> None:
        per_minute = self.messages_per_minute
        await self.take(
            f"rl:c:{tenant}:{conversation_id}",
            rate=per_minute / 60,
            burst=per_minute,
            what=f"conversation {conversation_id} ({per_minute} messages a minute)",
        )

    async def idempotent(
        self,
        tenant: str,
        key: str | None,
        fingerprint: bytes,
        run: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
    ) -> tuple[int, dict[str, Any]]:
        """Run a request once per Idempotency-Key; a retry gets the first response.

        The command id derived from the key makes the store refuse a second effect even when
        two retries race or Redis forgot the key; this remembers the first *response*.
        """
        if key is None:
            return await run()
        if len(key) > 200:
            raise ValidationError("Idempotency-Key is too long", fields={"Idempotency-Key": "at most 200 characters"})
        redis_key = f"idem:{tenant}:{key}"
        digest = hashlib.sha256(fingerprint).hexdigest()
        stored = await self.redis.get(redis_key)
        if stored is None:
            status, body = await run()
            if status >= 300:
                return status, body
            record = json.dumps({"fingerprint": digest, "status": status, "body": body}, default=_json_default)
            if await self.redis.set(redis_key, record, nx=True, ex=self.ttl):
                return status, body
            stored = await self.redis.get(redis_key)  # a racing retry remembered its response first
        first = json.loads(stored)
        if first["fingerprint"] != digest:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used for a different request", fields={"Idempotency-Key": "reused"}
            )
        return int(first["status"]), first["body"]


def _json_default(value: Any) -> Any:
    return msgspec.to_builtins(value)
