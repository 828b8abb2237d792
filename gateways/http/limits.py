"""Rate limits (Redis token buckets) and idempotent requests (Redis-remembered responses)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from domain.errors import IdempotencyKeyReused, ParleyError, ValidationError

# Token buckets, and sliding windows (a negative rate: the window's length in ms, ``burst`` the most
# requests any window of that length may hold). Each request takes one token from each of its
# buckets, all or nothing. Requests
# that arrive while a call is in flight go together in the next call: ARGV is, per request, its
# number of buckets and then (rate tokens/s, burst) per bucket; KEYS are all their buckets in the
# same order. Requests are served in order, so two in one call see each other's tokens. Uses the
# server's clock, so every API process shares the buckets. Returns, per request, 0 or the index of
# its first empty bucket, then the milliseconds until that bucket has a token.
_TOKEN_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local a, k = 1, 0
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local levels = {}
  local empty, wait = 0, 0
  for i = 1, n do
    local rate = tonumber(ARGV[a + 2 * i - 1])
    local burst = tonumber(ARGV[a + 2 * i])
    if rate < 0 then
      -- a sliding window of -rate ms holding at most burst requests: exact over any window
      redis.call('ZREMRANGEBYSCORE', KEYS[k + i], '-inf', now + rate)
      if redis.call('ZCARD', KEYS[k + i]) >= burst then
        local oldest = redis.call('ZRANGE', KEYS[k + i], 0, 0, 'WITHSCORES')
        empty, wait = i, math.max(1, tonumber(oldest[2]) - rate - now + 1)
        break
      end
    else
      local state = redis.call('HMGET', KEYS[k + i], 'tokens', 'ts')
      local tokens = tonumber(state[1]) or burst
      local ts = tonumber(state[2]) or now
      tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
      if tokens < 1 then
        empty, wait = i, math.ceil((1 - tokens) * 1000 / rate)
        break
      end
      levels[i] = tokens
    end
  end
  if empty == 0 then
    for i = 1, n do
      local rate = tonumber(ARGV[a + 2 * i - 1])
      local burst = tonumber(ARGV[a + 2 * i])
      if rate < 0 then
        local seq = redis.call('INCR', KEYS[k + i] .. ':n')  -- a member of its own for each request
        redis.call('ZADD', KEYS[k + i], now, seq)
        redis.call('PEXPIRE', KEYS[k + i], -rate + 1000)
        redis.call('PEXPIRE', KEYS[k + i] .. ':n', -rate + 1000)
      else
        redis.call('HSET', KEYS[k + i], 'tokens', levels[i] - 1, 'ts', now)
        redis.call('PEXPIRE', KEYS[k + i], math.ceil(burst * 1000 / rate) + 1000)
      end
    end
  end
  out[#out + 1] = empty
  out[#out + 1] = wait
  a, k = a + 1 + 2 * n, k + n
end
return out
"""


class RateLimited(ParleyError):
    code = "rate_limited"
    status = 429

    def __init__(self, what: str, retry_after_ms: int) -> None:
        seconds = max(1, -(-retry_after_ms // 1000))
        super().__init__(f"too many requests for {what}; retry after {seconds}s", retry_after=seconds, limit=what)


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
        self._waiting: list[tuple[list[tuple[str, float, int, str]], asyncio.Future[tuple[int, int]]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def take(self, buckets: list[tuple[str, float, int, str]]) -> None:
        """Take a token from every bucket (key, rate, burst, what), or from none: 429 names the empty one.

        One script call at a time per process; the requests that arrive meanwhile share the next
        one, so under load a round trip to Redis serves many requests.
        """
        done: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._waiting.append((buckets, done))
        if self._sending is None:
            self._sending = asyncio.create_task(self._send())
        empty, wait = await done
        if empty:
            raise RateLimited(buckets[empty - 1][3], wait)

    async def _send(self) -> None:
        try:
            while self._waiting:
                calls, self._waiting = self._waiting, []
                keys: list[str] = []
                args: list[float] = []
                for buckets, _ in calls:
                    args.append(len(buckets))
                    for key, rate, burst, _ in buckets:
                        keys.append(key)
                        args += [rate, burst]
                try:
                    out = await self._buckets(keys=keys, args=args)
                except BaseException as e:  # every request in the call gets the error (Redis down: 503)
                    for _, done in calls:
                        if not done.done():
                            done.set_exception(e if isinstance(e, Exception) else asyncio.CancelledError())
                    if not isinstance(e, Exception):
                        raise
                    continue
                for i, (_, done) in enumerate(calls):
                    if not done.done():
                        done.set_result((int(out[2 * i]), int(out[2 * i + 1])))
        finally:
            self._sending = None

    def tenant_bucket(self, tenant: str) -> tuple[str, float, int, str]:
        return (f"rl:t:{tenant}", self.tenant_rate, self.tenant_burst, f"tenant {tenant}")

    def conversation_bucket(self, tenant: str, conversation_id: str) -> tuple[str, float, int, str]:
        """At most ``messages_per_minute`` messages in any 60 seconds (a sliding window, not a bucket)."""
        per_minute = self.messages_per_minute
        what = f"conversation {conversation_id} ({per_minute} messages a minute)"
        return (f"rl:w:{tenant}:{conversation_id}", -60_000, per_minute, what)

    async def idempotent(
        self,
        tenant: str,
        key: str | None,
        fingerprint: bytes,
        run: Callable[[], Awaitable[tuple[int, Any]]],
    ) -> tuple[int, Any]:
        """Run a request once per Idempotency-Key; a retry gets the first response (the first's body
        as the JSON it was remembered as).

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
            if stored is None:  # ... and it has expired already: this response stands
                return status, body
        first = json.loads(stored)
        if first["fingerprint"] != digest:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used for a different request", fields={"Idempotency-Key": "reused"}
            )
        return int(first["status"]), first["body"]


def _json_default(value: Any) -> Any:
    return msgspec.to_builtins(value)


class StreamSlots:
    """How many live streams (server-sent events) each tenant holds in this process: at most
    ``per_tenant``, so no tenant's listeners can take a process's sockets from the others."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._held: dict[str, int] = {}

    def take(self, tenant: str) -> None:
        held = self._held.get(tenant, 0)
        if held >= self.per_tenant:
            raise RateLimited(f"live streams of tenant {tenant} ({self.per_tenant} at once)", 1000)
        self._held[tenant] = held + 1

    def give_back(self, tenant: str) -> None:
        held = self._held.get(tenant, 0) - 1
        if held > 0:
            self._held[tenant] = held
        else:
            self._held.pop(tenant, None)
