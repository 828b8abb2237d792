"""The agent runtime's settings, read once where the runtime is composed (the API process today)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import msgspec

from domain.errors import ValidationError
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
