"""Base types for commands and events: frozen msgspec Structs.

An event names the fields that hold personal data (``personal_fields``), the field that names
the person they belong to (``data_subject``), and the field that says when it happened
(``time_field``: the command's clock, not when the store recorded it). The event store encrypts
the personal fields under that person's key, so destroying the key erases the person from the log
without rewriting it.
Personal fields must accept ``None``: that is what they read as once their key is destroyed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A fact, named in the past tense."""

    personal_fields: ClassVar[tuple[str, ...]] = ()
    data_subject: ClassVar[str | None] = None
    time_field: ClassVar[str | None] = None  # a ``datetime`` field; None: only the store knows when

    def occurred_at(self) -> datetime | None:
        """When it happened, by its own clock (None: it does not say)."""
        if self.time_field is None:
            return None
        value: datetime = getattr(self, self.time_field)
        return value

    def data_subject_id(self) -> str | None:
        if self.data_subject is None:
            return None
        value = getattr(self, self.data_subject)
        return None if value is None else str(value)


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """An intention, named in the imperative."""


S = TypeVar("S")


def _nobody(state: Any) -> str | None:
    return None


class Decider(msgspec.Struct, Generic[S], frozen=True, kw_only=True):
    """An aggregate as one value (Emmett's decider): its type, its state's type and initial value,
    how it folds its events (``evolve``) and decides a command (``decide``), and whose personal data
    its state holds (``data_subject``: snapshots are sealed under that person's key).

    ``snapshot_schema`` names the state's shape: bump it when the state changes shape, so stored
    snapshots of the old shape are ignored and rebuilt from the events.
    """

    type_name: str
    state_type: type[S]
    initial: Callable[[], S]
    evolve: Callable[[S, Event], S]
    decide: Callable[[Command, S], list[Event]]
    data_subject: Callable[[S], str | None] = _nobody
    snapshot_schema: int = 1

    def fold(self, state: S, events: Iterable[Event]) -> S:
        for event in events:
            state = self.evolve(state, event)
        return state
