"""What the PostgreSQL projectors share to write their rows: statements per schema, JSON values."""

from __future__ import annotations

import functools

import msgspec
from psycopg import sql

_JSON = msgspec.json.Encoder()


@functools.cache
def statement(template: str, schema: str) -> bytes:
    """A statement template (``{s}`` stands for the schema) made for one schema, once."""
    return sql.SQL(template).format(s=sql.Identifier(schema)).as_string().encode()


def json_text(value: object) -> str:
    """A value as JSON text (for a ``jsonb`` parameter: ``%s::jsonb``)."""
    return _JSON.encode(value).decode()
