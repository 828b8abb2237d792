"""What a projector is: a read model to fill, the events it follows, and how each one lands.

A projector owns one PostgreSQL schema (its ``read_model``). ``apply`` writes one event into a
schema named by the caller, so the same code fills the live schema and a rebuild's shadow.
``apply`` runs inside the runner's transaction. It should only write (no commit; a read whose result
decides what to write costs a round trip, as a batch is sent as one pipeline), and it must be
safe to apply an event twice, even though the checkpoint already keeps replays away.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from psycopg import AsyncCursor

from read_models.migrations import Migration, ReadModel
from streams.store import RecordedEvent


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
