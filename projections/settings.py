"""Settings of the projector process, read from the environment at its composition root."""

from __future__ import annotations

import os

import msgspec


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
