"""Schema migrations for read models: ordered, recorded, idempotent, applied at start-up.

A read model lives in a PostgreSQL schema of its own (``rm_conversations``) that holds its
tables, its projector's checkpoint and dead letters, and ``schema_migrations``: the versions
applied to *that* schema. Keeping the record inside the schema is what lets a rebuild build a
shadow schema with the very same migrations and swap it in with ``ALTER SCHEMA ... RENAME``: the
record travels with the tables it describes.

Migrations are plain SQL written without a schema name; they run with ``search_path`` set to the
target schema, so the same statements build the live schema and any shadow. A migration never
changes once released; a change is a new migration. A change whose new columns must be filled
from history ships with a rebuild (``python -m projections rebuild NAME``) instead of a backfill.
"""

from __future__ import annotations

from typing import Any

import msgspec
from psycopg import AsyncConnection, sql


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    statements: tuple[str, ...]


class ReadModel(msgspec.Struct, frozen=True):
    """A read model: the projector that fills it (``name``), its schema and its migrations."""

    name: str
    schema: str
    migrations: tuple[Migration, ...]

    def __post_init__(self) -> None:
        versions = [m.version for m in self.migrations]
        if versions != sorted(set(versions)):
            raise ValueError(f"migrations of {self.name} must have increasing, unique versions: {versions}")


# Every projector's schema starts with these: where it stands, and what it could not apply.
PROJECTOR_TABLES = (
    """
    CREATE TABLE checkpoint (
        projector text PRIMARY KEY,
        last_seq bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE dead_letters (
        seq bigint PRIMARY KEY,
        subject text NOT NULL,
        error text NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
    )
    """,
)


async def migrate(conn: AsyncConnection[Any], read_model: ReadModel, *, schema: str | None = None) -> list[int]:
    """Bring a read model's schema (by default its live one) up to date; returns the versions applied.

    Safe to call at every start and from several processes at once: one transaction, serialized
    by an advisory lock per schema.
    """
    target = schema or read_model.schema
    name = sql.Identifier(target)
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"parley.migrate:{target}"])
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(name)
        )
        cur = await conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(name))
        done = {row[0] for row in await cur.fetchall()}
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(name))
        for migration in read_model.migrations:
            if migration.version in done:
                continue
            for statement in migration.statements:
                await conn.execute(statement.encode())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", [migration.version, migration.name]
            )
            applied.append(migration.version)
    return applied


async def applied_versions(conn: AsyncConnection[Any], schema: str) -> list[int]:
    cur = await conn.execute(
        sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY version").format(sql.Identifier(schema))
    )
    return [row[0] for row in await cur.fetchall()]
