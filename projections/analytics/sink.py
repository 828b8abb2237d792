"""ClickHouse as the analytics projection's store: its writes, and its ``Checkpoints``.

Embedded chDB by default, a server with ``CLICKHOUSE_URL``; both through clickhouse-connect
(``infra.chdb.client``), so the code is the same. The tables are ``read_models.analytics_schema``'s.

The client's calls are blocking: a sink makes them in a thread of its own, one at a time and in
order (``call``; the engine releases the GIL while it works), so a read for the fold queued after
an insert sees it. A batch is written table by table, the checkpoint last
(``ClickHouseCheckpoints``); at start, ``recover`` deletes the rows of a batch that was written but
never checkpointed. A sink writes the database it is given: a rebuild fills ``<database>_shadow``
and ``exchange`` swaps its tables with the live ones (``projections.analytics.rebuild``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import msgspec
import structlog

from infra import chdb
from projections.checkpoints import Batch, Checkpoints, DeadLetter
from projections.settings import AnalyticsSettings
from read_models import analytics_schema as schema
from read_models.analytics_schema import CallFacts, ConversationFacts, DeadLetterRow
from streams.errors import UnavailableError

log = structlog.get_logger(__name__)

__all__ = ["AnalyticsSettings", "AnalyticsSink", "ClickHouseCheckpoints", "Encoded", "connect", "encode_rows"]

T = TypeVar("T")
R = TypeVar("R", bound=msgspec.Struct)

# One parsing thread: parallel parsing cost more CPU than it saved here, and the projector's own
# thread needs the other core. The token of an insert into an input table applies to the table
# its view writes (``analytics_schema.input_statements``).
_INSERT_SETTINGS = {
    "input_format_parallel_parsing": 0,
    "async_insert": 0,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


def connect(settings: AnalyticsSettings) -> Any:
    """A clickhouse-connect client (``chdb://`` or ``http(s)://``). Blocking; close it when done.

    ``UnavailableError`` when another process has the chDB store open.
    """
    try:
        return chdb.client(settings.dsn())
    except chdb.ChdbBusy as e:
        raise UnavailableError(str(e)) from e


class Encoded(msgspec.Struct, frozen=True):
    """A batch ready to insert: each table's rows as ``encode_rows`` gives them (empty: none)."""

    first_seq: int
    last_seq: int
    events: bytes
    facts: bytes
    escalations: bytes
    dead_letters: bytes
    calls: bytes = b""
    call_turns: bytes = b""
    event_count: int = 0
    dead: list[DeadLetter] = []


# The order of ``exchange``: every table, the checkpoint last (the position is the last thing to move).
_SWAP_ORDER = (*(t for t in schema.TABLES if t != schema.CHECKPOINT), schema.CHECKPOINT)

_ENCODE = msgspec.json.Encoder()
_PACK = msgspec.msgpack.Encoder()
_LIST_HEADER = {0xDC: 3, 0xDD: 5}  # the size of a list's header by its first byte (else 1: fixarray)


def encode_rows(rows: Sequence[Any]) -> bytes:
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
        self._worker: ThreadPoolExecutor | None = None

    @classmethod
    def open(cls, settings: AnalyticsSettings) -> AnalyticsSink:
        return cls(connect(settings), settings.database)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking call, in the sink's one thread: calls run one at a time, in the order made."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clickhouse-{self.db}")
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def stop_worker(self) -> None:
        """Let the sink's thread go once its calls are done (a later ``call`` starts another)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)

    def close(self) -> None:
        self.stop_worker()
        self.client.close()

    # Schema --------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """The tables, made if missing. Tables of another shape (``analytics_schema.digest``) are
        dropped first: the projection fills them again from the first event."""
        digest = schema.digest()
        recorded = self._recorded_digest()
        if recorded not in (None, digest):
            log.warning(
                "the analytics tables have another shape: dropped, to be filled again from the first event",
                database=self.db,
                recorded=recorded or "none",
                current=digest,
            )
            self.drop()
        for statement in schema.statements(self.db):
            self.client.command(statement)
        if recorded != digest:
            self.client.command(f"INSERT INTO {self.db}.{schema.DIGEST} (digest) VALUES ({{d:String}})", {"d": digest})

    def _recorded_digest(self) -> str | None:
        """The shape the tables were made with ("": tables of an older shape; None: no tables)."""
        tables = {
            row[0]
            for row in self.client.query(
                "SELECT name FROM system.tables WHERE database = {db:String} AND name IN ({e:String}, {d:String})",
                parameters={"db": self.db, "e": schema.EVENTS, "d": schema.DIGEST},
            ).result_rows
        }
        if schema.DIGEST in tables:
            rows = self.client.query(f"SELECT argMax(digest, at) FROM {self.db}.{schema.DIGEST}").result_rows
            return str(rows[0][0]) if rows and rows[0][0] else ""
        return "" if schema.EVENTS in tables else None

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

    def recover(self, projector: str, tables: Sequence[str] = schema.SEQ_TABLES) -> tuple[int, int]:
        """The checkpoint, after deleting the rows above it (a batch written, never checkpointed).

        ``tables``: those whose rows carry their commit's ``seq``. Returns (checkpoint, rows deleted).
        Facts need nothing: their fold skips what a row has.
        """
        checkpoint = self.checkpoint(projector)
        deleted = 0
        for table in tables:
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

    def set_checkpoint(self, projector: str, seq: int) -> None:
        self.client.raw_insert(
            f"{self.db}.{schema.CHECKPOINT}",
            ["projector", "last_seq", "updated_at"],
            _ENCODE.encode([projector, seq, time.time()]),
            fmt="JSONCompactEachRow",
            settings={"async_insert": 0},
        )

    # Writes --------------------------------------------------------------------------------

    def write(self, batch: Encoded, token: str) -> None:
        """The batch's rows, table by table (the checkpoint is its ``ClickHouseCheckpoints``' to move).

        ``token`` names the batch for ``insert_deduplication_token``: an insert retried by the
        HTTP client after it had landed is dropped by the server. It must change when the runner
        starts again (rows deleted by ``recover`` are written again under a new token).
        """
        for table, rows in (
            (schema.EVENTS, batch.events),
            (schema.ESCALATIONS, batch.escalations),
            (schema.CALL_TURNS, batch.call_turns),
            (schema.FACTS, batch.facts),
            (schema.CALLS, batch.calls),
            (schema.DEAD_LETTERS, batch.dead_letters),
        ):
            self.insert(table, rows, f"{token}:{table}")

    def insert(self, table: str, rows: bytes, token: str | None = None) -> None:
        """Encoded rows (``encode_rows``) into a table, through its input."""
        if not rows:
            return
        settings: dict[str, Any] = dict(_INSERT_SETTINGS)
        if token is not None:
            settings["insert_deduplication_token"] = token
        self.client.raw_insert(
            f"{self.db}.{schema.input_table(table)}", ["row"], rows, fmt="MsgPack", settings=settings
        )

    # Reads for the fold --------------------------------------------------------------------

    def load_facts(self, keys: list[tuple[str, str]]) -> list[ConversationFacts]:
        """The current facts rows of some conversations (those that have one)."""
        return self._load(schema.FACTS, ConversationFacts, "conversation_id", keys)

    def load_calls(self, keys: list[tuple[str, str]]) -> list[CallFacts]:
        """The current facts rows of some calls (those that have one)."""
        return self._load(schema.CALLS, CallFacts, "call_id", keys)

    def _load(self, table: str, row_type: type[R], id_column: str, keys: list[tuple[str, str]]) -> list[R]:
        if not keys:
            return []
        types = schema.TABLES[table]
        select = ", ".join(
            f"toUnixTimestamp64Milli({c})" if "DateTime64" in types.column_type(c) else c
            for c in schema.columns(row_type)
        )
        out: list[R] = []
        for tenant in sorted({t for t, _ in keys}):
            ids = [aggregate_id for t, aggregate_id in keys if t == tenant]
            result = self.client.query(
                f"SELECT {select} FROM {self.db}.{table} FINAL"
                f" WHERE tenant = {{t:String}} AND {id_column} IN {{ids:Array(String)}}",
                parameters={"t": tenant, "ids": ids},
            )
            out += [msgspec.convert(list(row), row_type) for row in result.result_rows]
        return out

    # Status --------------------------------------------------------------------------------

    def dead_letters(self) -> int:
        return int(self.client.command(f"SELECT count() FROM {self.db}.{schema.DEAD_LETTERS} FINAL"))

    def counts(self) -> dict[str, int]:
        """Rows per table (facts: conversations and calls, after replacement)."""
        out = {}
        for table in (schema.EVENTS, schema.ESCALATIONS, schema.DEAD_LETTERS):
            out[table] = int(self.client.command(f"SELECT count() FROM {self.db}.{table}"))
        out[schema.FACTS] = int(self.client.command(f"SELECT count() FROM {self.db}.{schema.FACTS} FINAL"))
        if calls := int(self.client.command(f"SELECT count() FROM {self.db}.{schema.CALLS} FINAL")):
            out[schema.CALLS] = calls
        return out


# Checkpoints ----------------------------------------------------------------------------------


class ClickHouseBatch(Batch):
    """A batch's write into a sink's database: rows first (``call``), the checkpoint when it ends."""

    def __init__(self, sink: AnalyticsSink, after: int) -> None:
        super().__init__(after)
        self.sink = sink

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking call of the batch's writes, in the sink's thread (in order with the checkpoint)."""
        return await self.sink.call(fn, *args)

    async def dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        rows = [DeadLetterRow(d.seq, d.subject, d.error, round(time.time() * 1000)) for d in letters]
        await self.sink.call(self.sink.insert, schema.DEAD_LETTERS, encode_rows(rows))


class ClickHouseCheckpoints(Checkpoints[ClickHouseBatch]):
    """Checkpoints in a ClickHouse database (``analytics_schema.CHECKPOINT``), with the tables they account for.

    ``start`` makes the tables (``ensure_schema``) and deletes the rows above the checkpoint from the
    tables whose rows carry their commit's sequence (``seq_tables``): a batch whose rows landed and
    whose checkpoint did not. A batch's checkpoint is written after its rows, in the same thread.
    ClickHouse has no transaction across tables: exactly-once rests on that order and on ``start``.
    One writer per database: with chDB the engine's own lock makes sure of it (one process per
    store); with a ClickHouse server, run one.
    """

    def __init__(
        self, sink: AnalyticsSink, *, reader: AnalyticsSink | None = None, seq_tables: Sequence[str] = schema.SEQ_TABLES
    ) -> None:
        self.sink = sink
        # Reads for status through another client if given: not queued behind the writer's inserts.
        self.reader = reader or sink
        self.where = sink.db
        self.seq_tables = tuple(seq_tables)
        self._at: dict[str, int] = {}  # the checkpoint of each projector started, as last written

    @property
    def expected(self) -> tuple[type[Exception], ...]:  # type: ignore[override]
        from clickhouse_connect.driver.exceptions import ClickHouseError

        return (ClickHouseError, OSError)

    async def start(self, projector: str, stop: asyncio.Event) -> int:
        await self.sink.call(self.sink.ensure_schema)
        checkpoint, deleted = await self.sink.call(self.sink.recover, projector, self.seq_tables)
        self._at[projector] = checkpoint
        log.info("checkpoint recovered", projector=projector, checkpoint=checkpoint, rows_deleted=deleted)
        return checkpoint

    async def stop(self) -> None:
        self._at.clear()

    async def close(self) -> None:
        await self.stop()
        await asyncio.to_thread(self.sink.stop_worker)

    @contextlib.asynccontextmanager
    async def batch(self, projector: str) -> AsyncIterator[ClickHouseBatch]:
        after = self._at.get(projector)
        if after is None:
            after = await self.sink.call(self.sink.checkpoint, projector)
        batch = ClickHouseBatch(self.sink, after)
        yield batch
        if batch.position > after:
            await self.sink.call(self.sink.set_checkpoint, projector, batch.position)
            self._at[projector] = batch.position

    async def position(self, projector: str) -> int:
        try:
            return await asyncio.to_thread(self.reader.checkpoint, projector)
        except Exception as e:
            if _missing(e):
                return 0
            raise

    async def dead_letter_count(self) -> int:
        try:
            return await asyncio.to_thread(self.reader.dead_letters)
        except Exception as e:
            if _missing(e):
                return 0
            raise


def _missing(error: Exception) -> bool:
    """ClickHouse's unknown table or database: no tables yet."""
    return "UNKNOWN_TABLE" in str(error) or "UNKNOWN_DATABASE" in str(error)
