"""Errors raised by the event store. No ``nats`` exception leaves ``streams/``."""

from __future__ import annotations

from domain.errors import ConcurrencyError, ParleyError, UnavailableError

__all__ = [
    "ConcurrencyError",
    "EventDecodeError",
    "StoreError",
    "UnavailableError",
]


class StoreError(ParleyError):
    code = "store_error"
    status = 500


class EventDecodeError(StoreError):
    """A stored event cannot be turned back into a domain event."""

    code = "event_decode_error"

    def __init__(self, seq: int, subject: str, reason: str) -> None:
        super().__init__(
            f"cannot decode the event at stream sequence {seq} ({subject}): {reason}",
            seq=seq,
            subject=subject,
        )
        self.seq = seq
        self.subject = subject
        self.reason = reason
