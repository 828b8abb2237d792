"""OpenAI's Chat Completions API behind the port, through the official SDK's ``AsyncOpenAI``.

Tools go out as ``function`` tools; the model's ``tool_calls`` (arguments as a JSON string) come
back as ``ToolCallRequest``; our ``tool`` turns go back as ``role: tool`` messages. Any server
that speaks this API (``OPENAI_BASE_URL``) works. The SDK never retries (``max_retries=0``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import msgspec
import openai
import structlog
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolUnionParam

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

DEFAULT_MODEL = "gpt-5.4-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens"}
_arguments = msgspec.json.Decoder(dict[str, Any])


class OpenAIProvider:
    def __init__(
        self,
        *,
        api_key: str,
        model: str = DEFAULT_MODEL,
        base_url: str = DEFAULT_BASE_URL,
        max_tokens: int | None = None,
        name: str = "openai",
    ) -> None:
        self.name = name
        self.model = model
        self.max_tokens = max_tokens
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        system: str,
        tools: list[ToolSpec],
        timeout: float,  # noqa: ASYNC109
    ) -> Completion:
        wire_messages = self._wire_messages(messages, system)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):  # a deadline for the whole call, not per socket read
                reply = await self._client.chat.completions.create(
                    model=self.model,
                    messages=wire_messages,
                    tools=[wire_tool(tool) for tool in tools] or openai.omit,
                    max_completion_tokens=self.max_tokens if self.max_tokens is not None else openai.omit,
                    timeout=timeout,
                )
        except TimeoutError as exc:
            raise ProviderTimeout(f"{self.name} gave no answer within {timeout}s", provider=self.name) from exc
        except openai.OpenAIError as exc:
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

    def _wire_messages(self, messages: list[ChatMessage], system: str) -> list[ChatCompletionMessageParam]:
        wire: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        for message in messages:
            match message.role:
                case "tool":
                    if not message.tool_call_id:
                        raise ProviderRejected("a tool message needs the tool_call_id it answers", provider=self.name)
                    wire.append({"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content})
                case "assistant" if message.tool_calls:
                    calls = [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": msgspec.json.encode(call.arguments).decode()},
                        }
                        for call in message.tool_calls
                    ]
                    wire.append({"role": "assistant", "content": message.content or None, "tool_calls": calls})
                case _:
                    named = {"name": message.name} if message.name and message.role == "user" else {}
                    wire.append({"role": message.role, "content": message.content, **named})
        return cast(list[ChatCompletionMessageParam], wire)

    def _completion(self, reply: ChatCompletion) -> Completion:
        if not reply.choices:
            raise ProviderUnavailable(f"{self.name} answered with no choices", provider=self.name)
        choice = reply.choices[0]
        calls: list[ToolCallRequest] = []
        for call in choice.message.tool_calls or []:
            if call.type != "function":
                continue
            try:
                arguments = _arguments.decode(call.function.arguments or "{}")
            except msgspec.DecodeError as exc:
                raise ProviderUnavailable(
                    f"{self.name} sent tool arguments that are not a JSON object: {call.function.arguments!r}",
                    provider=self.name,
                ) from exc
            calls.append(ToolCallRequest(id=call.id, name=call.function.name, arguments=arguments))
        usage = reply.usage
        return Completion(
            text=choice.message.content or "",
            tool_calls=calls,
            provider=self.name,
            model=reply.model,
            input_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens if usage else None,
            stop_reason=STOP_REASONS.get(choice.finish_reason, choice.finish_reason),
        )

    def _translate(self, exc: openai.OpenAIError, timeout: float) -> ProviderError:
        match exc:
            case openai.APITimeoutError():
                return ProviderTimeout(f"{self.name} gave no answer within {timeout}s", provider=self.name)
            case openai.APIConnectionError():
                return ProviderUnavailable(f"{self.name} unreachable: {exc.message}", provider=self.name)
            case openai.APIStatusError():
                return error_from_status(self.name, exc.status_code, api_message(exc), exc.response.headers)
            case openai.APIResponseValidationError():
                return ProviderUnavailable(f"{self.name} sent a malformed response: {exc.message}", provider=self.name)
            case _:
                return ProviderError(f"{self.name} client failed: {exc}", provider=self.name)


def wire_tool(tool: ToolSpec) -> ChatCompletionToolUnionParam:
    function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters or EMPTY_SCHEMA}
    return cast(ChatCompletionToolUnionParam, {"type": "function", "function": function})


def api_message(exc: openai.APIStatusError) -> str:
    """``error.message`` from the body when there is one, else the SDK's summary."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return exc.message
