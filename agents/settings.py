"""The agent runtime's settings, read once where the runtime is composed: its own process or the API's."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import msgspec

from agents.llm.factory import ProviderKeys
from domain.errors import ValidationError
from streams.factory import StoreSettings
from streams.work import DEFAULT_PARTITIONS, partitions_from_env

CHECKPOINTS = ("postgres", "off")


class AgentSettings(msgspec.Struct, frozen=True, kw_only=True):
    # LangGraph checkpoints of turns in progress (``agents.checkpoints``); ``off`` saves their cost,
    # and a turn interrupted mid-graph then runs again from the start.
    checkpoints: Literal["postgres", "off"] = "postgres"
    # Partitions of a new work stream (``streams.work``); an existing stream keeps its own.
    partitions: int = DEFAULT_PARTITIONS

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> AgentSettings:
        """``PARLEY_AGENT_CHECKPOINTS`` (postgres or off), ``PARLEY_AGENT_PARTITIONS``."""
        checkpoints = env.get("PARLEY_AGENT_CHECKPOINTS", "postgres")
        if checkpoints not in CHECKPOINTS:
            raise ValidationError(
                f"PARLEY_AGENT_CHECKPOINTS must be one of {', '.join(CHECKPOINTS)}, got {checkpoints!r}",
                fields={"PARLEY_AGENT_CHECKPOINTS": "postgres or off"},
            )
        return cls(checkpoints=checkpoints, partitions=partitions_from_env(env))  # type: ignore[arg-type]


class AgentProcessSettings(msgspec.Struct, frozen=True, kw_only=True):
    """``python -m agents``: everything the agent runtime needs as a process of its own."""

    database_url: str
    store: StoreSettings
    agent: AgentSettings = msgspec.field(default_factory=AgentSettings)
    keys: ProviderKeys = msgspec.field(default_factory=ProviderKeys)
    # Tenants whose demo data the demo tools read.
    demo_tenants: tuple[str, ...] = ("demo",)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> AgentProcessSettings:
        """``DATABASE_URL`` (required), the store's (``NATS_URL``, ...), the runtime's, the providers' keys,
        ``PARLEY_DEMO_TENANTS``."""
        if not env.get("DATABASE_URL"):
            raise ValidationError("missing setting DATABASE_URL", fields={"DATABASE_URL": "required"})
        return cls(
            database_url=env["DATABASE_URL"],
            store=StoreSettings.from_env(),
            agent=AgentSettings.from_env(env),
            keys=ProviderKeys.from_env(env),
            demo_tenants=tuple(t.strip() for t in env.get("PARLEY_DEMO_TENANTS", "demo").split(",") if t.strip()),
        )
