"""Anthropic's Messages API behind the port, through the official SDK's ``AsyncAnthropic``.

Tools go out as ``tools`` with an ``input_schema``; the model's ``tool_use`` blocks come back as
``ToolCallRequest``; our ``tool`` turns go back as ``tool_result`` blocks in a user turn. The SDK
never retries (``max_retries=0``): the fallback chain decides what happens after a failure.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import anthropic
import structlog
from anthropic.types import Message, MessageParam, ToolParam

from agents.llm.http_errors import error_from_status
from agents.llm.port import (
    ChatMessage,
    Completion,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    ToolCallRequest,
    ToolSpec,
)

log = structlog.get_logger(__name__)

DEFAULT_MODEL = "claude-haiku-5-5"
DEFAULT_BASE_URL = "https://api.anthropic.com"
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


class AnthropicProvider:
    def __init__(
        self,
        *,
        api_key: str,
        model: str = DEFAULT_MODEL,
        base_url: str = DEFAULT_BASE_URL,
        max_tokens: int = 1024,
        name: str = "anthropic",
    ) -> None:
        self.name = name
        self.model = model
        self.max_tokens = max_tokens
        self._client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0)

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        system: str,
        tools: list[ToolSpec],
        timeout: float,  # noqa: ASYNC109
    ) -> Completion:
        system_text, wire_messages = self._wire_messages(messages, system)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):  # a deadline for the whole call, not per socket read
                reply = await self._client.messages.create(
                    model=self.model,
                    max_tokens=self.max_tokens,
                    messages=wire_messages,
                    system=system_text or anthropic.omit,
                    tools=[wire_tool(tool) for tool in tools] or anthropic.omit,
                    timeout=timeout,
                )
        except TimeoutError as exc:
            raise ProviderTimeout(f"{self.name} gave no answer within {timeout}s", provider=self.name) from exc
        except anthropic.AnthropicError as exc:
            raise self._translate(exc, timeout) from exc
        completion = self._completion(reply)
        log.debug(
            "llm.completed",
            provider=self.name,
            model=completion.model,
            ms=round((time.perf_counter() - started) * 1000, 1),
            tool_calls=len(completion.tool_calls),
        )
        return completion

    async def aclose(self) -> None:
        await self._client.close()

    def _wire_messages(self, messages: list[ChatMessage], system: str) -> tuple[str, list[MessageParam]]:
        """System turns join the ``system`` text; consecutive turns of one role merge, as the API wants."""
        system_parts = [system] if system else []
        wire: list[dict[str, Any]] = []
        for message in messages:
            if message.role == "system":
                system_parts.append(message.content)
                continue
            role, blocks = self._blocks(message)
            if not blocks:
                continue
            if wire and wire[-1]["role"] == role:
                wire[-1]["content"].extend(blocks)
            else:
                wire.append({"role": role, "content": blocks})
        return "\n\n".join(system_parts), cast(list[MessageParam], wire)

    def _blocks(self, message: ChatMessage) -> tuple[str, list[dict[str, Any]]]:
        if message.role == "tool":
            if not message.tool_call_id:
                raise ProviderRejected("a tool message needs the tool_call_id it answers", provider=self.name)
            return "user", [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}]
        text = [{"type": "text", "text": message.content}] if message.content else []
        if message.role == "assistant":
            calls = [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in message.tool_calls]
            return "assistant", text + calls
        return "user", text

    def _completion(self, reply: Message) -> Completion:
        texts: list[str] = []
        calls: list[ToolCallRequest] = []
        for block in reply.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                calls.append(ToolCallRequest(id=block.id, name=block.name, arguments=dict(block.input)))
        usage = reply.usage
        input_tokens = (
            usage.input_tokens + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
        )
        return Completion(
            text="".join(texts),
            tool_calls=calls,
            provider=self.name,
            model=reply.model,
            input_tokens=input_tokens,
            output_tokens=usage.output_tokens,
            stop_reason=reply.stop_reason,
        )

    def _translate(self, exc: anthropic.AnthropicError, timeout: float) -> ProviderError:
        match exc:
            case anthropic.APITimeoutError():
                return ProviderTimeout(f"{self.name} gave no answer within {timeout}s", provider=self.name)
            case anthropic.APIConnectionError():
                return ProviderUnavailable(f"{self.name} unreachable: {exc.message}", provider=self.name)
            case anthropic.APIStatusError():
                message = exc.api_message or exc.message
                return error_from_status(self.name, exc.status_code, message, exc.response.headers)
            case anthropic.APIResponseValidationError():
                return ProviderUnavailable(f"{self.name} sent a malformed response: {exc.message}", provider=self.name)
            case _:
                return ProviderError(f"{self.name} client failed: {exc}", provider=self.name)


def wire_tool(tool: ToolSpec) -> ToolParam:
    return {"name": tool.name, "description": tool.description, "input_schema": tool.parameters or EMPTY_SCHEMA}
