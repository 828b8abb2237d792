"""Settings of the projector processes, read from the environment at their composition root:
the PostgreSQL projectors' (``ProjectionSettings``) and the ClickHouse analytics projection's
(``AnalyticsSettings``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from domain.errors import ValidationError
from infra.chdb import ensure_chdb
from streams.factory import DEFAULT_DATA


class ProjectionSettings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = "postgresql://parley@127.0.0.1:5433/parley"
    batch: int = 500  # commits per batch (one transaction)
    pool_size: int = 8
    linger_ms: float = 10.0  # after a short batch, wait before the next fetch (bigger batches under load)

    @classmethod
    def from_env(cls, **overrides: object) -> ProjectionSettings:
        """From ``DATABASE_URL``, ``PARLEY_PROJECTION_BATCH``, ``PARLEY_PROJECTION_POOL``; unset keeps defaults."""
        env = os.environ
        values: dict[str, object] = {}
        for field, variable, convert in (
            ("database_url", "DATABASE_URL", str),
            ("batch", "PARLEY_PROJECTION_BATCH", int),
            ("pool_size", "PARLEY_PROJECTION_POOL", int),
            ("linger_ms", "PARLEY_PROJECTION_LINGER_MS", float),
        ):
            if variable in env:
                values[field] = convert(env[variable])
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class AnalyticsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The analytics projection's: ClickHouse (chDB under ``data_dir`` unless ``clickhouse_url``) and its batches."""

    clickhouse_url: str | None = None  # None: chDB under data_dir
    data_dir: Path = DEFAULT_DATA
    database: str = "parley"
    batch: int = 50_000  # commits per pull at most; one insert per table (fewer, larger parts: less merging)

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.database):
            raise ValidationError("invalid analytics database name", fields={"PARLEY_ANALYTICS_DB": self.database})
        if self.batch < 1:
            raise ValidationError(
                "the analytics batch must be positive", fields={"PARLEY_ANALYTICS_BATCH": str(self.batch)}
            )

    @classmethod
    def from_env(cls, **overrides: object) -> AnalyticsSettings:
        """From ``CLICKHOUSE_URL``, ``PARLEY_DATA``, ``PARLEY_ANALYTICS_DB``, ``PARLEY_ANALYTICS_BATCH``."""
        env = os.environ
        values: dict[str, object] = {
            "clickhouse_url": env.get("CLICKHOUSE_URL") or None,
            "data_dir": Path(env.get("PARLEY_DATA") or DEFAULT_DATA),
        }
        if "PARLEY_ANALYTICS_DB" in env:
            values["database"] = env["PARLEY_ANALYTICS_DB"]
        if "PARLEY_ANALYTICS_BATCH" in env:
            values["batch"] = int(env["PARLEY_ANALYTICS_BATCH"])
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def dsn(self) -> str:
        """The URL to give clickhouse-connect (for chDB, the store is created if missing)."""
        if self.clickhouse_url:
            return self.clickhouse_url
        return ensure_chdb(self.data_dir / "chdb")
