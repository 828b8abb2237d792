"""Base types for commands and events: frozen msgspec Structs.

An event names the fields that hold personal data (``personal_fields``) and the field that
names the person they belong to (``data_subject``). The event store encrypts those fields under
that person's key, so destroying the key erases the person from the log without rewriting it.
Personal fields must accept ``None``: that is what they read as once their key is destroyed.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A fact, named in the past tense."""

    personal_fields: ClassVar[tuple[str, ...]] = ()
    data_subject: ClassVar[str | None] = None

    def data_subject_id(self) -> str | None:
        if self.data_subject is None:
            return None
        value = getattr(self, self.data_subject)
        return None if value is None else str(value)


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """An intention, named in the imperative."""
