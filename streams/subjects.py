"""Where things live in the stream.

* an aggregate's events: ``parley.ev.<tenant>.<aggregate_type>.<aggregate_id>``, one subject each;
* a command's outcome record: ``parley.cmd.<tenant>.<command_id>``, written in the same atomic
  batch as the command's events, at most once (see ``streams.store``).
"""

from __future__ import annotations

import re
from hashlib import sha256

import msgspec

from domain.errors import ValidationError

EVENTS_PREFIX = "parley.ev"
COMMANDS_PREFIX = "parley.cmd"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class StreamId(msgspec.Struct, frozen=True):
    """Identity of one aggregate's event stream."""

    tenant: str
    aggregate_type: str
    aggregate_id: str

    def __post_init__(self) -> None:
        problems = {}
        if not _NAME.match(self.tenant):
            problems["tenant"] = "lowercase letters, digits, '_' or '-', at most 64"
        if not _NAME.match(self.aggregate_type):
            problems["aggregate_type"] = "lowercase letters, digits, '_' or '-', at most 64"
        if not _ID.match(self.aggregate_id):
            problems["aggregate_id"] = "letters, digits, '_' or '-', at most 128"
        if problems:
            raise ValidationError("invalid stream id", fields=problems)

    @property
    def subject(self) -> str:
        return f"{EVENTS_PREFIX}.{self.tenant}.{self.aggregate_type}.{self.aggregate_id}"

    @property
    def key(self) -> str:
        """A key usable in a JetStream KV bucket."""
        return f"{self.tenant}.{self.aggregate_type}.{self.aggregate_id}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def from_subject(cls, subject: str) -> StreamId:
        prefix_len = EVENTS_PREFIX.count(".") + 1
        parts = subject.split(".")
        if len(parts) != prefix_len + 3 or ".".join(parts[:prefix_len]) != EVENTS_PREFIX:
            raise ValidationError(f"not an event subject: {subject!r}")
        return cls(*parts[prefix_len:])


def tenant_subjects(tenant: str) -> str:
    """Filter subject for all of one tenant's events."""
    return f"{EVENTS_PREFIX}.{tenant}.>"


def type_subjects(aggregate_type: str, tenant: str = "*") -> str:
    return f"{EVENTS_PREFIX}.{tenant}.{aggregate_type}.*"


ALL_EVENTS = f"{EVENTS_PREFIX}.>"


_TOKEN = re.compile(r"^[A-Za-z0-9_=-]{1,100}$")


def command_subject(tenant: str, command_id: str) -> str:
    """The subject of a command's outcome record (ids a subject cannot hold are hashed)."""
    if not _TOKEN.match(command_id):
        command_id = "h-" + sha256(command_id.encode()).hexdigest()
    return f"{COMMANDS_PREFIX}.{tenant}.{command_id}"
