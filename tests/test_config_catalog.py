"""Which version a new conversation gets: the catalog that follows config commits, across processes.

Two stores on one stream stand for two API processes: one (``here``) starts conversations with a
catalog that follows config commits, the other (``there``) rolls the config back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest_asyncio

from commands.config import AGENT_CONFIG, CONFIG_MEMBERS, SYSTEM, ConfigCatalog, ConfigService, ensure_demo_configs
from commands.runner import CommandRunner
from domain import config as a
from streams.factory import OpenStore, StoreSettings, open_store
from tests.conftest import drop, unique_stream

TENANT = "acme"


@pytest_asyncio.fixture
async def two_processes(nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[OpenStore, OpenStore]]:
    settings = StoreSettings(nats_url=nats_url, data_dir=tmp_path, stream=unique_stream())
    here, there = await open_store(settings, name="here"), await open_store(settings, name="there")
    yield here, there
    await there.close()
    await drop(here)


def catalog(opened: OpenStore) -> ConfigCatalog:
    return ConfigCatalog(CommandRunner.for_aggregates(opened.store, [AGENT_CONFIG]), trust_for=60.0)


async def roll_back(service: ConfigService) -> int:
    outcome = await service.run(
        TENANT,
        "support-bot",
        a.RollbackConfig(reason="bad answers", initiated_by="jane", caller=SYSTEM, at=datetime.now(UTC)),
    )
    return outcome.state.active


async def until(predicate: object, within: float = 2.0) -> float:
    """Seconds until ``predicate()`` (a coroutine function) returns true."""
    started = time.monotonic()
    while not await predicate():  # type: ignore[operator]
        assert time.monotonic() - started < within, "not in time"
        await asyncio.sleep(0.001)
    return time.monotonic() - started


async def test_a_following_catalog_sees_another_processes_rollback_without_asking_the_stream_each_time(
    two_processes: tuple[OpenStore, OpenStore],
) -> None:
    here, there = two_processes
    service = ConfigService(CommandRunner.for_aggregates(there.store, [AGENT_CONFIG, CONFIG_MEMBERS]))
    await ensure_demo_configs(service, TENANT)
    await service.create_version(
        TENANT, "support-bot", _changed(), SYSTEM, commit_message="v2", author_type="client_user"
    )

    following = catalog(here)
    await following.follow(here.store)
    try:
        assert await following.latest_version(TENANT, "support-bot") == 2  # checked against the stream
        checks = _count_checks(following)
        for _ in range(20):
            assert await following.latest_version(TENANT, "support-bot") == 2
        assert checks() == 0  # trusted: no commit was announced since the check

        restored = await roll_back(service)  # in the other process
        assert restored == 3  # a rollback makes a new version with the old content
        # The commit's announcement reaches this process about as soon as the append's ack does.
        seconds = await until(lambda: _is(following, restored))
        assert seconds < 0.5
        assert checks() >= 1  # the announcement made the next read check
    finally:
        await following.close()


async def test_without_announcements_a_copy_is_checked_again_after_trust_for(
    two_processes: tuple[OpenStore, OpenStore],
) -> None:
    here, there = two_processes
    service = ConfigService(CommandRunner.for_aggregates(there.store, [AGENT_CONFIG, CONFIG_MEMBERS]))
    await ensure_demo_configs(service, TENANT)
    await service.create_version(
        TENANT, "support-bot", _changed(), SYSTEM, commit_message="v2", author_type="client_user"
    )

    following = catalog(here)
    following.trust_for = 0.3
    await following.follow(here.store)
    assert await following.latest_version(TENANT, "support-bot") == 2
    await following._subscription.close()  # announcements lost (a reconnect): still following, deaf
    restored = await roll_back(service)
    assert await following.latest_version(TENANT, "support-bot") == 2  # trusted, stale
    seconds = await until(lambda: _is(following, restored), within=3.0)
    assert 0.1 < seconds < 1.5  # checked again once trust_for ran out


async def test_a_catalog_that_does_not_follow_checks_every_read(two_processes: tuple[OpenStore, OpenStore]) -> None:
    here, there = two_processes
    service = ConfigService(CommandRunner.for_aggregates(there.store, [AGENT_CONFIG, CONFIG_MEMBERS]))
    await ensure_demo_configs(service, TENANT)
    plain = catalog(here)
    assert await plain.latest_version(TENANT, "support-bot") == 1
    await service.create_version(
        TENANT, "support-bot", _changed(), SYSTEM, commit_message="v2", author_type="client_user"
    )
    assert await plain.latest_version(TENANT, "support-bot") == 2  # at once: the read asked the stream


async def _is(catalog: ConfigCatalog, version: int) -> bool:
    return await catalog.latest_version(TENANT, "support-bot") == version


def _count_checks(catalog: ConfigCatalog) -> object:
    """How many reads since now asked the stream whether the copy was current."""
    store = catalog.repository.store
    original = store.last_on
    calls = [0]

    async def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    store.last_on = counted  # type: ignore[method-assign,assignment]
    return lambda: calls[0]


def _changed() -> str:
    """The demo support bot with another system prompt."""
    text = (Path(__file__).resolve().parent.parent / "agents" / "configs" / "support_bot.yaml").read_text()
    return text.replace("system_prompt: >-", "system_prompt: >-\n  Be brief.", 1)
