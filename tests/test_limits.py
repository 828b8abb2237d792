"""Token buckets in Redis, against a real Redis: concurrent requests share calls but not tokens."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateways.http.limits import Limits, RateLimited


@pytest.fixture
async def limits(redis_url: str) -> AsyncIterator[Limits]:
    redis = Redis.from_url(redis_url)
    yield Limits(redis, tenant_rate=1, tenant_burst=10, messages_per_minute=5, ttl=60)
    await redis.aclose()


async def test_concurrent_requests_take_exactly_the_tokens_there_are(limits: Limits) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    bucket = (f"rl:t:{tenant}", 0.001, 25, f"tenant {tenant}")

    async def one() -> bool:
        try:
            await limits.take([bucket])
        except RateLimited:
            return False
        return True

    outcomes = await asyncio.gather(*(one() for _ in range(100)))
    assert sum(outcomes) == 25


async def test_a_request_takes_from_all_its_buckets_or_from_none(limits: Limits) -> None:
    tenant, conversation = f"t-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    tenant_bucket = (f"rl:t:{tenant}", 0.001, 10, "tenant")
    conversation_bucket = limits.conversation_bucket(tenant, conversation)  # 5 a minute

    results = await asyncio.gather(
        *(limits.take([tenant_bucket, conversation_bucket]) for _ in range(8)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(refused) == 3
    assert all("conversation" in r.message and r.details["retry_after"] >= 1 for r in refused)
    # The refused requests took nothing from the tenant: 5 of its 10 tokens are left.
    others = await asyncio.gather(*(limits.take([tenant_bucket]) for _ in range(7)), return_exceptions=True)
    assert sum(1 for r in others if r is None) == 5


async def test_the_message_limit_is_exact_over_any_sixty_seconds(limits: Limits) -> None:
    """A window, not a bucket: a burst spent does not refill in part during the minute (the
    bucket used to let 100 a minute become 131 in the first minute)."""
    tenant, conversation = f"t-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    bucket = limits.conversation_bucket(tenant, conversation)  # 5 a minute

    results = []
    for _ in range(5):
        results.append(await asyncio.gather(limits.take([bucket]), return_exceptions=True))
        await asyncio.sleep(0.3)  # a bucket refilling at 5/60 per second would have let one more in by now
    sixth = await asyncio.gather(limits.take([bucket]), return_exceptions=True)

    assert all(r == [None] for r in results)
    [refused] = sixth
    assert isinstance(refused, RateLimited)
    assert 58 <= refused.details["retry_after"] <= 60  # the oldest message leaves the window in about a minute
