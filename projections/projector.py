"""What a projector is: a read model to fill, the events it follows, and how each one lands.

A projector owns one PostgreSQL schema (its ``read_model``). ``apply_events`` writes a batch of
events into a schema named by the caller, so the same code fills the live schema and a rebuild's
shadow. It runs inside the runner's transaction, in a pipeline: it should not commit, and it must be
safe to apply an event twice, even though the checkpoint already keeps replays away. By default it
applies each event with ``apply`` (a statement per event); a projector that folds documents reads
the batch's documents back once and writes what changed.

A projector may also offer a bulk path for replaying a whole history into an empty schema
(``replay``): a rebuild uses it before its swap, and falls back to ``apply`` without it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from psycopg import AsyncConnection, AsyncCursor

from read_models.migrations import Migration, ReadModel
from streams.store import RecordedEvent


class NotReplayable(Exception):
    """The history holds something a bulk replay cannot reproduce row for row; replay it event by event."""


class Replay(Protocol):
    """Folds a history in memory, oldest event first, and writes the rows it settled in bulk.

    The rows must be exactly those ``Projector.apply`` gives for the same events. Where that cannot
    be guaranteed, ``apply`` (or the write ``flush`` returns) raises ``NotReplayable``, or the write
    fails with a data or integrity error of the database (a key taken twice, a value refused).
    Either way the caller starts over with ``Projector.apply``.
    """

    def apply(self, event: RecordedEvent) -> None: ...

    def flush(self, conn: AsyncConnection[Any], schema: str, *, final: bool = False) -> Awaitable[None]:
        """Write the rows no later event can change (``final``: every row), inside the caller's transaction.

        The rows are taken out when ``flush`` is called, not when its result is awaited: the caller
        may go on applying events while they are written.
        """


class Projector(ABC):
    read_model: ReadModel
    subject: str  # the subject filter of the events it follows

    @property
    def name(self) -> str:
        return self.read_model.name

    @property
    def schema(self) -> str:
        return self.read_model.schema

    @property
    def ddl(self) -> tuple[Migration, ...]:
        """The migrations that build its schema, live or shadow."""
        return self.read_model.migrations

    @abstractmethod
    async def apply(self, cur: AsyncCursor[Any], event: RecordedEvent, schema: str) -> None: ...

    async def apply_events(self, cur: AsyncCursor[Any], events: Sequence[RecordedEvent], schema: str) -> None:
        """A batch's events, oldest first."""
        for event in events:
            await self.apply(cur, event, schema)

    def replay(self) -> Replay | None:
        """A new bulk replay for an empty schema, or None to replay with ``apply``."""
        return None
