"""Rate limits (Redis token buckets) and idempotent requests (Redis-remembered responses)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from domain.errors import ParleyError, ValidationError

# Token buckets, all checked in one round trip and all-or-nothing: KEYS are the buckets, ARGV
# holds (rate tokens/s, burst) per bucket. Uses the server's clock, so every API process shares
# the buckets. Returns {index of the first empty bucket or 0, milliseconds until it has a token}.
_TOKEN_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  if tokens < 1 then
    return {i, math.ceil((1 - tokens) * 1000 / rate)}
  end
  levels[i] = tokens
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  redis.call('HSET', key, 'tokens', levels[i] - 1, 'ts', now)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
end
return {0, 0}
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
        self._buckets = redis.register_script(_TOKEN_BUCKETS)

    async def take(self, buckets: list[tuple[str, float, int, str]]) -> None:
        """Take a token from every bucket (key, rate, burst, what), or from none: 429 names the empty one."""
        args: list[float] = []
        for _, rate, burst, _ in buckets:
            args += [rate, burst]
        empty, wait = await self._buckets(keys=[b[0] for b in buckets], args=args)
        if empty:
            raise RateLimited(buckets[int(empty) - 1][3], int(wait))

    def tenant_bucket(self, tenant: str) -> tuple[str, float, int, str]:
        return (f"rl:t:{tenant}", self.tenant_rate, self.tenant_burst, f"tenant {tenant}")

    def conversation_bucket(self, tenant: str, conversation_id: str) -> tuple[str, float, int, str]:
        per_minute = self.messages_per_minute
        what = f"conversation {conversation_id} ({per_minute} messages a minute)"
        return (f"rl:c:{tenant}:{conversation_id}", per_minute / 60, per_minute, what)

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
