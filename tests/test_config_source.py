"""The runtime's config source: pinned versions from the config's history, released when unused."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml

from agents.config import VersionedConfigs
from domain import config as a
from streams.subjects import StreamId
from tests.support import History

T0 = datetime(2025, 10, 20, tzinfo=UTC)
BASE = (Path(__file__).resolve().parent.parent / "agents" / "configs" / "support_bot.yaml").read_text()


def version(n: int, prompt: str) -> list[a.Event]:
    text = yaml.safe_dump(yaml.safe_load(BASE) | {"system_prompt": prompt})
    return [
        a.ConfigVersionCreated(
            config_id="bot", version=n, based_on=n - 1, yaml_content=text, digest=prompt, product_type="chatbot",
            author="jane", author_type="client_user", commit_message=prompt, change_type="system_prompt",
            risk_level="low", at=T0,
        ),
        a.ConfigVersionActivated(version=n, previous=n - 1, reason="created", at=T0),
    ]  # fmt: skip


BOT = StreamId("acme", a.AGGREGATE_TYPE, "bot")


async def test_each_conversation_gets_its_pinned_version_and_unused_old_versions_are_released() -> None:
    history, now = History(), [0.0]  # the config's history, in memory, folded as the repository would
    configs = VersionedConfigs(history.loader(a.DECIDER), grace_seconds=300, clock=lambda: now[0])
    await history.add(BOT, *version(1, "v1"))
    assert (await configs.get("acme", "bot", 1)).system_prompt == "v1"
    await history.add(BOT, *version(2, "v2"))
    assert await configs.preload_active("acme", "bot") == 2  # a new version, loaded before anyone asks
    loads = history.loads
    assert (await configs.get("acme", "bot", 2)).system_prompt == "v2"
    assert (await configs.get("acme", "bot", 1)).system_prompt == "v1"  # a conversation still on v1
    assert history.loads == loads  # both from memory

    now[0] = 200.0
    await configs.get("acme", "bot", 2)
    now[0] = 400.0  # v1 unused for 400 s, v2 for 200 s
    assert configs.sweep() == [("acme", "bot", 1)]
    now[0] = 1000.0
    assert configs.sweep() == []  # v2 is the active version: kept however long it idles
    assert configs.loaded() == [("acme", "bot", 2)]
    assert (await configs.get("acme", "bot", 1)).system_prompt == "v1"  # back from the events if asked again
