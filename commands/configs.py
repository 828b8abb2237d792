"""Which config version a new conversation is pinned to.

Agent configs become event-sourced aggregates later; until then every config has version 1.
"""

from __future__ import annotations

from typing import Protocol


class ConfigCatalog(Protocol):
    async def latest_version(self, tenant: str, config_id: str) -> int: ...


class FirstVersionCatalog:
    async def latest_version(self, tenant: str, config_id: str) -> int:
        return 1
