"""The API process's settings, read once at the composition root."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from agents.llm.factory import ProviderKeys
from agents.settings import AgentSettings
from commands.config import MonitorSettings
from domain.errors import ValidationError
from gateways.channels.settings import ChannelOptions
from projections.analytics.sink import AnalyticsSettings
from streams.factory import DEFAULT_DATA, StoreSettings


class ApiSettings(msgspec.Struct, frozen=True, kw_only=True):
    jwt_secret: str
    database_url: str
    redis_url: str
    store: StoreSettings
    # Rate limits: a token bucket per tenant, and the seed's 100 messages a minute per conversation.
    tenant_rate: float = 500.0  # requests per second
    tenant_burst: int = 1000
    conversation_messages_per_minute: int = 100
    # Live event streams (server-sent events) a tenant may hold open in one API process.
    streams_per_tenant: int = 50
    # Read-your-writes: how long a query waits for the projection to pass a position.
    read_wait_seconds: float = 5.0
    idempotency_ttl_seconds: int = 24 * 3600
    run_projectors: bool = True
    # The agent runtime in this process (its partitions shared with every other runtime).
    run_agents: bool = True
    agent_settings: AgentSettings = msgspec.field(default_factory=AgentSettings)
    # The language-model providers' keys (none: the offline model answers).
    provider_keys: ProviderKeys = msgspec.field(default_factory=ProviderKeys)
    # The console's one-click development sign-in (a local platform only: ``./parley up`` sets it).
    dev_signin: bool = False
    # How long start/continue wait for the agent's reply before answering 202 (0: never wait,
    # whichever process answers: a deployment with no agent runtime at all).
    reply_wait_seconds: float = 10.0
    # Tenants that get the demo configs (support-bot, sales-bot) at start if they lack them.
    demo_tenants: tuple[str, ...] = ()
    # Automatic rollback of a newly activated config version that fails too often (None: off).
    auto_rollback: MonitorSettings | None = MonitorSettings()
    # ClickHouse analytics in this process (None: off). With chDB only one process can have it.
    analytics: AnalyticsSettings | None = None
    # Channels: providers' addresses, the outbox, inbound email, the web-chat demo.
    channels: ChannelOptions = msgspec.field(default_factory=ChannelOptions)

    @classmethod
    def from_env(cls, **overrides: object) -> ApiSettings:
        env = os.environ
        missing = [name for name in ("PARLEY_JWT_SECRET", "DATABASE_URL", "REDIS_URL") if not env.get(name)]
        if missing and not overrides:
            raise ValidationError(
                f"missing settings: {', '.join(missing)} (./parley up writes them to .data/run/env)",
                fields={name: "required" for name in missing},
            )
        values: dict[str, object] = {
            "jwt_secret": env.get("PARLEY_JWT_SECRET", ""),
            "database_url": env.get("DATABASE_URL", ""),
            "redis_url": env.get("REDIS_URL", ""),
            "store": StoreSettings.from_env(connect_retry_for=None),
            "run_projectors": env.get("PARLEY_INLINE_PROJECTORS", "1") not in ("0", "false", ""),
            "run_agents": env.get("PARLEY_INLINE_AGENTS", "1") not in ("0", "false", ""),
            "demo_tenants": tuple(t for t in env.get("PARLEY_DEMO_TENANTS", "demo").split(",") if t.strip()),
            "dev_signin": env.get("PARLEY_DEV_SIGNIN", "") in ("1", "true", "yes"),
        }
        for field, variable, convert in (
            ("tenant_rate", "PARLEY_TENANT_RATE", float),
            ("tenant_burst", "PARLEY_TENANT_BURST", int),
            ("conversation_messages_per_minute", "PARLEY_CONVERSATION_MESSAGES_PER_MINUTE", int),
            ("streams_per_tenant", "PARLEY_STREAMS_PER_TENANT", int),
            ("read_wait_seconds", "PARLEY_READ_WAIT_SECONDS", float),
            ("reply_wait_seconds", "PARLEY_REPLY_WAIT_SECONDS", float),
        ):
            if variable in env:
                values[field] = convert(env[variable])
        monitor: dict[str, object] = {}
        for field, variable, convert in (
            ("threshold", "PARLEY_AUTO_ROLLBACK_THRESHOLD", float),
            ("min_sample", "PARLEY_AUTO_ROLLBACK_MIN_SAMPLE", int),
            ("window_seconds", "PARLEY_AUTO_ROLLBACK_WINDOW_SECONDS", float),
            ("interval_seconds", "PARLEY_AUTO_ROLLBACK_INTERVAL_SECONDS", float),
        ):
            if variable in env:
                monitor[field] = convert(env[variable])
        off = env.get("PARLEY_AUTO_ROLLBACK", "1") in ("0", "false", "")
        values["auto_rollback"] = None if off else MonitorSettings(**monitor)  # type: ignore[arg-type]
        if env.get("PARLEY_ANALYTICS", "1") not in ("0", "false", ""):
            values["analytics"] = AnalyticsSettings.from_env()
        values["agent_settings"] = AgentSettings.from_env(env)
        values["provider_keys"] = ProviderKeys.from_env(env)
        channels = ChannelOptions.from_env(env, local=bool(values["dev_signin"]))
        values["channels"] = msgspec.structs.replace(channels, demo_page=channels.demo_page or values["dev_signin"])
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def agents(self) -> AgentSettings | None:
        """The agent runtime's settings when it runs in this process."""
        return self.agent_settings if self.run_agents else None


def data_dir() -> Path:
    return Path(os.environ.get("PARLEY_DATA", str(DEFAULT_DATA)))
