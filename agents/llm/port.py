"""The port every language model sits behind: provider-neutral messages, tools and errors.

The agent runtime speaks only these types. Each adapter (``anthropic``, ``openai``, ``offline``)
translates them to its wire format and translates every failure into a ``ProviderError``, so
no SDK type or exception leaves ``gateways/llm``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Protocol

import msgspec

from domain.bot import PATTERNS_KEY, AgentConfig, ToolDefinition
from domain.errors import ParleyError

Role = Literal["system", "user", "assistant", "tool"]


class ToolCallRequest(msgspec.Struct, frozen=True):
    """The model asks for tool ``name`` to be run with ``arguments``; ``id`` pairs it with its result."""

    id: str
    name: str
    arguments: dict[str, Any]


class ChatMessage(msgspec.Struct, frozen=True):
    """One turn. An assistant turn may carry ``tool_calls``; a ``tool`` turn answers one by ``tool_call_id``."""

    role: Role
    content: str
    tool_calls: list[ToolCallRequest] = []
    tool_call_id: str | None = None
    name: str | None = None


class ToolSpec(msgspec.Struct, frozen=True):
    """A tool the model may call. ``parameters`` is a JSON schema for its arguments.

    ``extra`` holds the agent config's ``x-...`` keys (e.g. ``x-parley-patterns`` for the offline
    model); the remote adapters never send it.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    extra: dict[str, Any] = {}

    @classmethod
    def of(cls, tool: ToolDefinition) -> ToolSpec:
        """A config's tool as the model sees it (its offline patterns in ``extra``)."""
        extra = {} if tool.patterns is None else {PATTERNS_KEY: msgspec.to_builtins(tool.patterns)}
        return cls(name=tool.name, description=tool.description, parameters=tool.parameters, extra=extra)

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> ToolSpec:
        """A tool as the agent YAML declares it: ``name``, ``description``, ``parameters`` and any ``x-`` keys."""
        return cls(
            name=str(spec["name"]),
            description=str(spec.get("description", "")),
            parameters=dict(spec.get("parameters") or {"type": "object", "properties": {}}),
            extra={key: value for key, value in spec.items() if key.startswith("x-")},
        )


class Completion(msgspec.Struct, frozen=True):
    """What the model said. ``stop_reason`` is normalised (``end_turn``, ``tool_use``, ``max_tokens``) or raw."""

    text: str
    tool_calls: list[ToolCallRequest]
    provider: str
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None


class LLMProvider(Protocol):
    name: str

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        system: str,
        tools: list[ToolSpec],
        timeout: float,  # noqa: ASYNC109  (a deadline the adapter enforces itself)
    ) -> Completion: ...


class Fallback(msgspec.Struct, frozen=True):
    """``from_provider`` failed with ``reason`` (its error code) after ``elapsed_ms``; ``to_provider`` went next."""

    from_provider: str
    to_provider: str
    reason: str
    error: str
    elapsed_ms: float = 0.0


class ProviderError(ParleyError):
    """A model provider failed. ``provider`` names it; the chain fills ``fallbacks`` when it gives up."""

    code: ClassVar[str] = "provider_error"
    status: ClassVar[int] = 502

    def __init__(self, message: str, *, provider: str, **details: Any) -> None:
        super().__init__(message, provider=provider, **details)
        self.provider = provider
        self.fallbacks: list[Fallback] = []  # what the chain tried before giving up with this error


class ProviderTimeout(ProviderError):
    """No answer within the deadline."""

    code = "provider_timeout"
    status = 504


class ProviderUnavailable(ProviderError):
    """The provider could not serve: 5xx, overloaded, connection refused or reset, unusable response."""

    code = "provider_unavailable"
    status = 503


class ProviderRejected(ProviderError):
    """The provider refused the request (4xx other than 408/429): asking another one will not help."""

    code = "provider_rejected"
    status = 502


class ProviderRateLimited(ProviderError):
    """HTTP 429; ``retry_after`` is the provider's hint in seconds, when it gave one."""

    code = "provider_rate_limited"
    status = 503

    def __init__(self, message: str, *, provider: str, retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message, provider=provider, retry_after=retry_after, **details)
        self.retry_after = retry_after


def tool_specs(config: AgentConfig) -> list[ToolSpec]:
    """The config's tools as the model sees them."""
    return [ToolSpec.of(tool) for tool in config.tools]
