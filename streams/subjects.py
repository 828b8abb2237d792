"""Where things live in the stream.

A command's events are one message on ``parley.ev.<tenant>.<type>.<aggregate id>.<command id>``;
an aggregate's history is every message on ``parley.ev.<tenant>.<type>.<aggregate id>.*``.
"""

from __future__ import annotations

import re
from hashlib import sha256

import msgspec

from domain.errors import ValidationError

EVENTS_PREFIX = "parley.ev"
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
        """The prefix of this aggregate's subjects (one per command)."""
        return f"{EVENTS_PREFIX}.{self.tenant}.{self.aggregate_type}.{self.aggregate_id}"

    @property
    def subjects(self) -> str:
        """The filter that matches every commit of this aggregate."""
        return f"{self.subject}.*"

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
        if len(parts) not in (prefix_len + 3, prefix_len + 4) or ".".join(parts[:prefix_len]) != EVENTS_PREFIX:
            raise ValidationError(f"not an event subject: {subject!r}")
        return cls(*parts[prefix_len : prefix_len + 3])


def tenant_subjects(tenant: str) -> str:
    """Filter subject for all of one tenant's events."""
    return f"{EVENTS_PREFIX}.{tenant}.>"


def type_subjects(aggregate_type: str, tenant: str = "*") -> str:
    return f"{EVENTS_PREFIX}.{tenant}.{aggregate_type}.*.*"


ALL_EVENTS = f"{EVENTS_PREFIX}.>"


_TOKEN = re.compile(r"^[A-Za-z0-9_=-]{1,100}$")


def command_token(command_id: str) -> str:
    """A command id as a subject token (ids a token cannot hold are hashed)."""
    if _TOKEN.match(command_id):
        return "c-" + command_id
    return "h-" + sha256(command_id.encode()).hexdigest()
