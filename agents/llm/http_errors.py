"""HTTP status codes of a provider's API, translated once into the port's errors."""

from __future__ import annotations

from collections.abc import Mapping

from agents.llm.port import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)


def error_from_status(provider: str, status: int, message: str, headers: Mapping[str, str]) -> ProviderError:
    """429 is a rate limit, 408 a timeout, other 4xx a rejection, 5xx (and anything odd) unavailability."""
    detail = f"{provider} answered HTTP {status}: {message}"
    if status == 429:
        return ProviderRateLimited(detail, provider=provider, retry_after=retry_after(headers), http_status=status)
    if status == 408:
        return ProviderTimeout(detail, provider=provider, http_status=status)
    if 400 <= status < 500:
        return ProviderRejected(detail, provider=provider, http_status=status)
    return ProviderUnavailable(detail, provider=provider, http_status=status)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (an HTTP date is ignored)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) / scale, 0.0)
        except ValueError:
            continue
    return None
