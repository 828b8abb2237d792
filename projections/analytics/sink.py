"""ClickHouse as the projector's sink: embedded chDB by default, a server with ``CLICKHOUSE_URL``.

Both go through clickhouse-connect, so the code is the same: ``chdb:///<data dir>/chdb`` (from
``infra.services.ensure_chdb``) or ``http://host:8123``. chDB runs inside the process and one
process at a time may open a data directory (``infra.services.chdb_lock_holder`` names the one
that has it); clients of one process share the engine.

The calls are blocking: the runner makes them from a worker thread (the engine releases the GIL
while it works). A batch is written table by table, the checkpoint last (``write``); at start,
``recover`` deletes the rows of a batch that was written but never checkpointed. A sink writes
the database it is given: a rebuild fills ``<database>_shadow`` and ``exchange`` swaps its tables
with the live ones (``projections.analytics.rebuild``).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import msgspec

from domain.errors import ValidationError
from infra.services import chdb_lock_holder, ensure_chdb
from projections.analytics import schema
from projections.analytics.schema import ConversationFacts
from streams.errors import UnavailableError
from streams.factory import DEFAULT_DATA

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# One parsing thread: parallel parsing cost more CPU than it saved here, and the projector's own
# thread needs the other core. The token of an insert into an input table applies to the table
# its view writes (``schema.input_statements``).
_INSERT_SETTINGS = {
    "input_format_parallel_parsing": 0,
    "async_insert": 0,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


class AnalyticsSettings(msgspec.Struct, frozen=True, kw_only=True):
    clickhouse_url: str | None = None  # None: chDB under data_dir
    data_dir: Path = Path(".data")
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


def connect(settings: AnalyticsSettings) -> Any:
    """A clickhouse-connect client (``chdb://`` or ``http(s)://``). Blocking; close it when done."""
    import clickhouse_connect

    url = settings.dsn()
    if url.startswith("chdb:///"):
        path = Path(url.removeprefix("chdb://").split("?", 1)[0])
        holder = chdb_lock_holder(path)
        if holder is not None and holder != os.getpid():
            raise UnavailableError(f"the chDB store {path} is open in process {holder}; stop it or set CLICKHOUSE_URL")
    if url.startswith("chdb:"):
        return clickhouse_connect.get_client(dsn=url)
    # A server: no session, so that threads sharing the client may query at once.
    return clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)


class Encoded(msgspec.Struct, frozen=True):
    """A batch ready to insert: each table's rows as ``encode_rows`` gives them (empty: none)."""

    first_seq: int
    last_seq: int
    events: bytes
    facts: bytes
    escalations: bytes
    dead_letters: bytes


# The order of ``exchange``: every table, the checkpoint last (the position is the last thing to move).
_SWAP_ORDER = (*(t for t in schema.TABLES if t != schema.CHECKPOINT), schema.CHECKPOINT)

_ENCODE = msgspec.json.Encoder()
_PACK = msgspec.msgpack.Encoder()
_LIST_HEADER = {0xDC: 3, 0xDD: 5}  # the size of a list's header by its first byte (else 1: fixarray)
_TIMES = ("started_at", "last_event_at", "closed_at")


def encode_rows(rows: list[Any]) -> bytes:
    """Rows (array-like Structs) for an input table (``MsgPack``): one array each, one after another.

    Encoded as one list, whose array header is then cut off (1, 3 or 5 bytes by its first). Two
    encodings of rows, joined, are the encoding of both.
    """
    if not rows:
        return b""
    packed = _PACK.encode(rows)
    return packed[_LIST_HEADER.get(packed[0], 1) :]


class AnalyticsSink:
    def __init__(self, client: Any, database: str = "parley") -> None:
        self.client = client
        self.db = database

    @classmethod
    def open(cls, settings: AnalyticsSettings) -> AnalyticsSink:
        return cls(connect(settings), settings.database)

    def close(self) -> None:
        self.client.close()

    # Schema --------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        for statement in schema.statements(self.db):
            self.client.command(statement)

    def drop(self) -> None:
        for statement in schema.drop_statements(self.db):
            self.client.command(statement)

    def drop_database(self) -> None:
        """Drop the whole database (a rebuild's shadow). Queries still reading its tables finish first."""
        self.client.command(f"DROP DATABASE IF EXISTS {self.db}")

    def exchange(self, other: str) -> None:
        """Swap each table with its namesake in database ``other``, the checkpoint last.

        ``EXCHANGE TABLES`` swaps two names atomically (Atomic databases, chDB's and a server's
        default): a reader sees one table or the other, never none. The tables go one at a time, the
        checkpoint last, so a crash in between leaves the checkpoint of the tables not swapped, and
        the runner's ``recover`` and replay make the rest right. Should one exchange fail, those
        already done are swapped back.
        """
        done: list[str] = []
        try:
            for table in _SWAP_ORDER:
                self.client.command(f"EXCHANGE TABLES {self.db}.{table} AND {other}.{table}")
                done.append(table)
        except BaseException:
            for table in reversed(done):
                self.client.command(f"EXCHANGE TABLES {self.db}.{table} AND {other}.{table}")
            raise

    # Position ------------------------------------------------------------------------------

    def checkpoint(self, projector: str) -> int:
        rows = self.client.query(
            f"SELECT max(last_seq) FROM {self.db}.{schema.CHECKPOINT} WHERE projector = {{p:String}}",
            parameters={"p": projector},
        ).result_rows
        return int(rows[0][0] or 0) if rows else 0

    def forget(self, projector: str) -> None:
        """Delete a projector's checkpoint row (a rebuild's own, before its tables go live)."""
        self.client.command(
            f"DELETE FROM {self.db}.{schema.CHECKPOINT} WHERE projector = {{p:String}}",
            parameters={"p": projector},
            settings={"lightweight_deletes_sync": 2},
        )

    def recover(self, projector: str) -> tuple[int, int]:
        """The checkpoint, after deleting the rows above it (a batch written, never checkpointed).

        Returns (checkpoint, rows deleted). Facts need nothing: their fold skips what a row has.
        """
        checkpoint = self.checkpoint(projector)
        deleted = 0
        for table in (schema.EVENTS, schema.ESCALATIONS):
            above = self.client.query(
                f"SELECT count() FROM {self.db}.{table} WHERE seq > {{c:UInt64}}", parameters={"c": checkpoint}
            ).result_rows[0][0]
            if above:
                self.client.command(
                    f"DELETE FROM {self.db}.{table} WHERE seq > {{c:UInt64}}",
                    parameters={"c": checkpoint},
                    settings={"lightweight_deletes_sync": 2},
                )
                deleted += int(above)
        return checkpoint, deleted

    # Writes --------------------------------------------------------------------------------

    def write(self, projector: str, batch: Encoded, token: str) -> None:
        """The batch's rows, table by table, then the checkpoint at its last sequence.

        ``token`` names the batch for ``insert_deduplication_token``: an insert retried by the
        HTTP client after it had landed is dropped by the server. It must change when the runner
        starts again (rows deleted by ``recover`` are written again under a new token).
        """
        for table, rows in (
            (schema.EVENTS, batch.events),
            (schema.ESCALATIONS, batch.escalations),
            (schema.FACTS, batch.facts),
            (schema.DEAD_LETTERS, batch.dead_letters),
        ):
            if rows:
                self.client.raw_insert(
                    f"{self.db}.{schema.input_table(table)}",
                    ["row"],
                    rows,
                    fmt="MsgPack",
                    settings={**_INSERT_SETTINGS, "insert_deduplication_token": f"{token}:{table}"},
                )
        self.set_checkpoint(projector, batch.last_seq)

    def set_checkpoint(self, projector: str, seq: int) -> None:
        self.client.raw_insert(
            f"{self.db}.{schema.CHECKPOINT}",
            ["projector", "last_seq", "updated_at"],
            _ENCODE.encode([projector, seq, time.time()]),
            fmt="JSONCompactEachRow",
            settings={"async_insert": 0},
        )

    # Reads for the fold --------------------------------------------------------------------

    def load_facts(self, keys: list[tuple[str, str]]) -> list[ConversationFacts]:
        """The current facts rows of some conversations (those that have one)."""
        if not keys:
            return []
        select = ", ".join(
            f"toUnixTimestamp64Milli({c})" if c in _TIMES else c for c in schema.columns(ConversationFacts)
        )
        out: list[ConversationFacts] = []
        for tenant in sorted({t for t, _ in keys}):
            ids = [cid for t, cid in keys if t == tenant]
            result = self.client.query(
                f"SELECT {select} FROM {self.db}.{schema.FACTS} FINAL"
                " WHERE tenant = {t:String} AND conversation_id IN {ids:Array(String)}",
                parameters={"t": tenant, "ids": ids},
            )
            out += [msgspec.convert(list(row), ConversationFacts) for row in result.result_rows]
        return out

    # Status --------------------------------------------------------------------------------

    def dead_letters(self) -> int:
        return int(self.client.command(f"SELECT count() FROM {self.db}.{schema.DEAD_LETTERS} FINAL"))

    def counts(self) -> dict[str, int]:
        """Rows per table (facts: conversations, after replacement)."""
        out = {}
        for table in (schema.EVENTS, schema.ESCALATIONS, schema.DEAD_LETTERS):
            out[table] = int(self.client.command(f"SELECT count() FROM {self.db}.{table}"))
        out[schema.FACTS] = int(self.client.command(f"SELECT count() FROM {self.db}.{schema.FACTS} FINAL"))
        return out
