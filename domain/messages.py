"""Base types for commands and events: frozen msgspec Structs.

An event names the fields that hold personal data (``personal_fields``), the field that names
the person they belong to (``data_subject``), and the field that says when it happened
(``time_field``: the command's clock, not when the store recorded it). The event store encrypts
the personal fields under that person's key, so destroying the key erases the person from the log
without rewriting it.
Personal fields must accept ``None`` (or have a default): that is what they read as once their key
is destroyed. A personal field may also be a field of each item of a list (``"tool_calls[].input"``):
the items stay, that field of each is sealed. Each personal field is sealed under the key of the
person it is about (``seal_subject``): by default the event's data subject.
"""

from __future__ import annotations

import functools
import operator
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

    def seal_subject(self, field: str) -> str | None:
        """The person a personal field is about, whose key seals it (default: the data subject)."""
        return self.data_subject_id()


E = TypeVar("E", bound=Event)


# Personal fields as values: taken out of an event to be sealed, put back once unsealed -------------


@functools.lru_cache(maxsize=1024)
def _blank(cls: Any, name: str) -> Any:
    """What a personal field reads as when it is sealed away or erased: its default, else None."""
    for info in msgspec.structs.fields(cls):
        if info.name == name:
            if info.default is not msgspec.NODEFAULT:
                return info.default
            if info.default_factory is not msgspec.NODEFAULT:
                return info.default_factory()
            return None
    raise AttributeError(f"{cls.__name__} has no field {name}")


def _path(path: str) -> tuple[str, str | None]:
    outer, _, inner = path.partition("[].")
    return outer, inner or None


def take_personal(event: E, path: str) -> tuple[Any, E]:
    """The value at a personal field (a list of the items' values for ``"items[].field"``) and the
    event with it blank."""
    outer, inner = _path(path)
    value = getattr(event, outer)
    if inner is None:
        return value, msgspec.structs.replace(event, **{outer: _blank(type(event), outer)})
    items = value or []
    values = [getattr(item, inner) for item in items]
    blanked = [msgspec.structs.replace(item, **{inner: _blank(item.__class__, inner)}) for item in items]
    return values, msgspec.structs.replace(event, **{outer: blanked})


def put_personal(event: E, path: str, value: Any) -> E:
    """``event`` with a personal field's value put back (``take_personal``'s inverse)."""
    outer, inner = _path(path)
    if inner is None:
        return msgspec.structs.replace(event, **{outer: value})
    items = getattr(event, outer) or []
    if not isinstance(value, list) or len(value) != len(items):
        return event
    restored = [msgspec.structs.replace(item, **{inner: v}) for item, v in zip(items, value, strict=True)]
    return msgspec.structs.replace(event, **{outer: restored})


def put_all_personal(event: E, values: dict[str, Any]) -> E:
    """``event`` with several personal fields put back at once (``put_personal`` for each)."""
    fields = {}
    for path, value in values.items():
        if "[]." in path:
            if value:  # no items (or none kept): nothing to put back
                event = put_personal(event, path, value)
        else:
            fields[path] = value
    return msgspec.structs.replace(event, **fields) if fields else event


def blank_personal(event: E) -> E:
    """``event`` with every personal field blank: as it reads once its keys are destroyed."""
    for path in event.personal_fields:
        _, event = take_personal(event, path)
    return event


def personal_is_blank(event: Event) -> bool:
    """Whether every personal field of ``event`` is blank (sealed away, erased, or never given)."""
    return blank_check(type(event))(event)


@functools.lru_cache(maxsize=1024)
def blank_check(cls: type[Event]) -> Callable[[Event], bool]:
    """``personal_is_blank`` for the events of ``cls``, its fields and their blanks worked out once."""
    fields = [(path, _blank(cls, path)) for path in cls.personal_fields if "[]." not in path]
    items = [_path(path) for path in cls.personal_fields if "[]." in path]
    if fields and not items and all(blank is None for _, blank in fields):  # the common case, in C
        values = operator.attrgetter(*(name for name, _ in fields))
        none = None if len(fields) == 1 else (None,) * len(fields)
        return lambda event: values(event) == none

    def check(event: Event) -> bool:
        for name, blank in fields:
            if getattr(event, name) != blank:
                return False
        for outer, inner in items:
            for item in getattr(event, outer) or ():
                if getattr(item, inner) != _blank(item.__class__, inner):  # type: ignore[arg-type]
                    return False
        return True

    return check


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
