"""One error tree for Parley, with stable codes.

Every error the platform raises on purpose is a ``ParleyError``. The gateways map the
``status`` of each class to HTTP once; nothing else needs to know about HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ParleyError(Exception):
    """Root of every error Parley raises on purpose."""

    code: ClassVar[str] = "parley_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class ValidationError(ParleyError):
    """Input that breaks a rule; ``fields`` maps a field path to its reason."""

    code = "validation_error"
    status = 400

    def __init__(self, message: str, fields: dict[str, str] | None = None, **details: Any) -> None:
        super().__init__(message, fields=fields or {}, **details)
        self.fields = fields or {}


class NotFoundError(ParleyError):
    code = "not_found"
    status = 404


class PermissionDeniedError(ParleyError):
    """The caller is known but not allowed to do this. Nothing was written."""

    code = "forbidden"
    status = 403


class IllegalStateError(ParleyError):
    """The command is well formed but the aggregate's state forbids it."""

    code = "illegal_state"
    status = 409


class IdempotencyKeyReused(ParleyError):
    """An idempotency key already named another request: nothing was done for this one."""

    code = "idempotency_key_reused"
    status = 422


class ConcurrencyError(ParleyError):
    """Another writer appended first: the expected version is stale. Nothing was written."""

    code = "concurrency_conflict"
    status = 409

    def __init__(self, stream: str, expected: int, actual: int | None = None) -> None:
        message = f"stream {stream!r} is not at version {expected}"
        if actual is not None:
            message += f" (it is at version {actual})"
        super().__init__(message, stream=stream, expected_version=expected, actual_version=actual)
        self.stream = stream
        self.expected = expected
        self.actual = actual


class UnavailableError(ParleyError):
    """A dependency (NATS, PostgreSQL, ...) cannot be reached."""

    code = "unavailable"
    status = 503
