"""Commits to analytics rows: the event, its place, its cause, and its payload without personal data.

Two paths give the same rows (the suite checks it):

* **the store's** (``EventStore.decode``): eventsourcing's mapper, decryption of personal fields
  and all; then the personal fields are blanked again. Used whenever the mapper has a cipher, a
  compressor or another transcoder.
* **the fast one**, for the default mapper (msgspec JSON, no cipher, no compressor): the commit is
  decoded with msgspec and each event straight into its class. A sealed event's stored JSON holds
  its personal fields as ``null`` beside the sealed envelope, which the typed decoder ignores, so
  nothing is decrypted, and the fields are blanked all the same. The payload is the stored JSON
  itself, cut before the envelope (always the last key), rather than the event encoded again;
  only an event whose personal fields were stored in clear is encoded again, blanked. About
  five times quicker.

Either way a commit that cannot be decoded raises ``EventDecodeError`` naming its sequence; the
runner records it as a dead letter.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from domain.messages import Event
from projections.analytics.schema import EventRow
from streams.codec import PII_KEY, MsgspecTranscoder, resolve_event
from streams.errors import EventDecodeError
from streams.jetstream import RawMessage
from streams.store import Commit, EventStore
from streams.subjects import EVENTS_PREFIX

_COMMIT = msgspec.msgpack.Decoder(Commit)
_ENCODE = msgspec.json.Encoder()
_ID_TOKEN = EVENTS_PREFIX.count(".") + 1  # parley.ev.<tenant>.<type>.<id>.<command>
_ENVELOPE = f',"{PII_KEY}":'.encode()  # where a sealed event's stored JSON has its envelope
_STREAMS = 100_000  # aggregates whose subject tokens are kept


class Decoded(msgspec.Struct, gc=False):
    row: EventRow
    event: Event


class _EventClass:
    """What decoding needs to know about one event class, worked out once."""

    def __init__(self, cls: type[Event]) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(cls)
        self.blank = dict.fromkeys(cls.personal_fields)
        # The personal fields' values (a tuple when several): all None once sealed by the mapper.
        self.personal = operator.attrgetter(*cls.personal_fields) if cls.personal_fields else None
        self.none = None if len(cls.personal_fields) < 2 else (None,) * len(cls.personal_fields)
        fields = msgspec.structs.fields(cls)
        self.time_field = next((f.name for f in fields if f.type is datetime), None)

    def time(self, event: Event, fallback: int) -> int:
        if self.time_field is None:
            return fallback
        return epoch(getattr(event, self.time_field))

    def without_personal_data(self, event: Event) -> Event:
        return msgspec.structs.replace(event, **self.blank) if self.blank else event


@functools.lru_cache(maxsize=1024)
def event_class(topic_or_class: str | type[Event]) -> _EventClass:
    cls = resolve_event(topic_or_class) if isinstance(topic_or_class, str) else topic_or_class
    return _EventClass(cls)


def epoch(value: datetime) -> int:
    """Epoch milliseconds, what a ``DateTime64(3)`` column keeps (a naive time is UTC)."""
    return round((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1000)


class CommitDecoder:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        mapper = store.mapper
        self.fast = (
            mapper.cipher is None and mapper.compressor is None and isinstance(mapper.transcoder, MsgspecTranscoder)
        )
        self.decode: Callable[[int, str, bytes, int], list[Decoded]] = (
            self.decode_fast if self.fast else self.decode_with_store
        )
        # (tenant, aggregate type, aggregate id) by subject less its command token: an aggregate's
        # commits share it, and a lookup costs half a split. Cleared when full.
        self._streams: dict[str, tuple[str, ...]] = {}

    def decode_with_store(self, seq: int, subject: str, data: bytes, recorded_at: int) -> list[Decoded]:
        """``recorded_at``: when the stream stored the commit, epoch milliseconds."""
        iso = datetime.fromtimestamp(recorded_at / 1000, UTC).isoformat()
        out = []
        for recorded in self.store.decode(RawMessage(seq, subject, {}, data, iso)):  # EventDecodeError
            info = event_class(type(recorded.event))
            event = info.without_personal_data(recorded.event)
            stream, meta = recorded.stream, recorded.meta
            row = EventRow(
                stream.tenant,
                stream.aggregate_type,
                stream.aggregate_id,
                recorded.version,
                seq,
                info.name,
                info.time(event, recorded_at),
                recorded_at,
                meta.command or "",
                meta.command_id or "",
                meta.actor or "",
                meta.correlation_id or "",
                _ENCODE.encode(event),
            )
            out.append(Decoded(row, event))
        return out

    def decode_fast(self, seq: int, subject: str, data: bytes, recorded_at: int) -> list[Decoded]:
        try:
            streams = self._streams
            stream = streams.get(prefix := subject[: subject.rfind(".")])
            if stream is None:
                if len(streams) >= _STREAMS:
                    streams.clear()
                stream = streams[prefix] = tuple(prefix.split(".")[_ID_TOKEN:])
            tenant, aggregate_type, aggregate_id = stream
            commit = _COMMIT.decode(data)
            meta = commit.meta
            command, command_id = meta.command or "", meta.command_id or ""
            actor, correlation_id = meta.actor or "", meta.correlation_id or ""
            out = []
            version = commit.first_version
            for item in commit.events:
                info = event_class(item.topic)
                state = item.state
                event = info.decoder.decode(state)
                if info.personal is None:
                    payload = state
                elif info.personal(event) == info.none:  # sealed (or empty): the stored JSON, cut
                    cut = state.rfind(_ENVELOPE)
                    payload = state[:cut] + b"}" if cut > 0 else state
                else:  # stored in clear (older): blanked and encoded again
                    event = msgspec.structs.replace(event, **info.blank)
                    payload = _ENCODE.encode(event)
                if (tf := info.time_field) is None:
                    at = recorded_at
                else:  # epoch(), inline
                    when = getattr(event, tf)
                    at = round((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
                row = EventRow(
                    tenant,
                    aggregate_type,
                    aggregate_id,
                    version,
                    seq,
                    info.name,
                    at,
                    recorded_at,
                    command,
                    command_id,
                    actor,
                    correlation_id,
                    payload,
                )
                out.append(Decoded(row, event))
                version += 1
        except Exception as e:
            raise EventDecodeError(seq, subject, f"{type(e).__name__}: {e}") from e
        return out
