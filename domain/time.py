"""How Parley writes a moment: ISO 8601 in UTC with a ``Z``. Pure."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime) -> str:
    """``2025-10-11T10:00:00Z`` (fractions of a second only when there are any)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else iso(moment)
