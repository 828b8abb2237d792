"""Providers tried in order: a transient failure moves on to the next one, and says so.

Each move is a ``Fallback`` on the result, for the caller to append as an event. A rejected
request (``ProviderRejected``) is not retried elsewhere unless ``fall_back_on`` says so: a bad
request stays bad. The offline model never fails, so it is the natural last link.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec
import structlog

from agents.llm.port import (
    ChatMessage,
    Completion,
    Fallback,
    LLMProvider,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    ToolSpec,
)

log = structlog.get_logger(__name__)

TRANSIENT: tuple[type[ProviderError], ...] = (ProviderTimeout, ProviderUnavailable, ProviderRateLimited)


class ChainResult(msgspec.Struct, frozen=True):
    completion: Completion
    fallbacks: list[Fallback] = []


class FallbackChain:
    """``timeout`` is each provider's deadline in seconds, unless ``complete`` is given another."""

    def __init__(
        self,
        providers: Sequence[LLMProvider],
        *,
        timeout: float = 30.0,
        fall_back_on: tuple[type[ProviderError], ...] = TRANSIENT,
    ) -> None:
        if not providers:
            raise ValueError("a fallback chain needs at least one provider")
        self.providers = list(providers)
        self.timeout = timeout
        self.fall_back_on = fall_back_on

    @property
    def names(self) -> list[str]:
        return [provider.name for provider in self.providers]

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        system: str = "",
        tools: Sequence[ToolSpec] = (),
        timeout: float | None = None,  # noqa: ASYNC109  (the port's per-call deadline)
    ) -> ChainResult:
        """The first provider's answer that succeeds; the last error (with ``fallbacks`` set) if none does."""
        fallbacks: list[Fallback] = []
        for provider, after in zip(self.providers, [*self.providers[1:], None], strict=True):
            started = time.perf_counter()
            try:
                completion = await provider.complete(
                    messages, system=system, tools=list(tools), timeout=timeout or self.timeout
                )
            except ProviderError as exc:
                if after is None or not isinstance(exc, self.fall_back_on):
                    exc.fallbacks = fallbacks
                    raise
                fallback = Fallback(
                    from_provider=provider.name,
                    to_provider=after.name,
                    reason=exc.code,
                    error=exc.message,
                    elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
                )
                log.warning("llm.fallback", **msgspec.structs.asdict(fallback))
                fallbacks.append(fallback)
                continue
            return ChainResult(completion=completion, fallbacks=fallbacks)
        raise AssertionError("unreachable: the last provider either answers or raises")

    async def aclose(self) -> None:
        """Close every provider that holds a client."""
        for provider in self.providers:
            close = getattr(provider, "aclose", None)
            if close is not None:
                await close()
