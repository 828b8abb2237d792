"""Anthropic's Messages API (``POST /v1/messages``): its contract, its errors, its recorded replies."""

from __future__ import annotations

import re
from typing import Any

from tests.llm_fakes import recorded
from tests.llm_fakes.server import FakeAPI, Reply, Request

API = "anthropic"
PATH = "/v1/messages"
TOOL_KEYS = {"name", "description", "input_schema", "cache_control", "type", "strict", "input_examples"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def server() -> FakeAPI:
    return FakeAPI(check=check, reject=lambda problems: error(400, "; ".join(problems)))


def reply(name: str, delay: float = 0.0) -> Reply:
    return Reply(body=recorded.load(API, name), headers={"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"}, delay=delay)


def error(status: int, message: str, *, retry_after: int | None = None) -> Reply:
    headers = {"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy", "x-should-retry": "false"}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
    return Reply(status=status, body=body | {"request_id": headers["request-id"]}, headers=headers)


def check(request: Request) -> list[str]:
    """What the API refuses, as far as this adapter can get it wrong."""
    problems = []
    if (request.method, request.path) != ("POST", PATH):
        return [f"no such endpoint {request.method} {request.path}"]
    if not (request.headers.get("x-api-key") or request.headers.get("authorization", "").startswith("Bearer ")):
        problems.append("missing x-api-key or bearer authorization")
    if not request.headers.get("anthropic-version"):
        problems.append("missing anthropic-version header")
    body = request.body
    if not isinstance(body, dict):
        return [*problems, "body is not a JSON object"]
    if not isinstance(body.get("model"), str):
        problems.append("model: required string")
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        problems.append("max_tokens: required positive integer")
    if "system" in body and not isinstance(body["system"], str | list):
        problems.append("system: must be a string or text blocks")
    problems += check_tools(body.get("tools", []))
    problems += check_messages(body.get("messages"))
    return problems


def check_tools(tools: Any) -> list[str]:
    if not isinstance(tools, list):
        return ["tools: must be a list"]
    problems = []
    for index, tool in enumerate(tools):
        if unknown := set(tool) - TOOL_KEYS:
            problems.append(f"tools.{index}: Extra inputs are not permitted: {sorted(unknown)}")
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,128}", str(tool.get("name", ""))):
            problems.append(f"tools.{index}.name: invalid")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            problems.append(f"tools.{index}.input_schema: must be a JSON schema of type object")
    return problems


def check_messages(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["messages: required non-empty list"]
    problems = []
    pending: set[str] = set()  # tool_use ids the next user turn must answer
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            problems.append(f"messages.{index}.role: {role!r} (system goes in the top-level system field)")
            continue
        if index == 0 and role != "user":
            problems.append("messages.0: the first message must use the user role")
        if index and messages[index - 1].get("role") == role:
            problems.append(f"messages.{index}: roles must alternate between user and assistant")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            problems.append(f"messages.{index}.content: must be a string or a non-empty list of blocks")
            continue
        answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if pending and answered != pending:
            problems.append(f"messages.{index}: tool_use ids {sorted(pending)} need tool_result blocks here")
        if answered and [b.get("type") for b in blocks[: len(answered)]] != ["tool_result"] * len(answered):
            problems.append(f"messages.{index}: tool_result blocks must come first")
        pending = set()
        for block_index, block in enumerate(blocks):
            where = f"messages.{index}.content.{block_index}"
            match block.get("type"):
                case "text" if not isinstance(block.get("text"), str) or not block["text"]:
                    problems.append(f"{where}: text content blocks must be non-empty")
                case "tool_use" if role != "assistant":
                    problems.append(f"{where}: tool_use only in assistant messages")
                case "tool_use":
                    if not (isinstance(block.get("id"), str) and isinstance(block.get("input"), dict)):
                        problems.append(f"{where}: tool_use needs an id and an input object")
                    pending.add(block.get("id"))
                case "tool_result" if role != "user":
                    problems.append(f"{where}: tool_result only in user messages")
                case "tool_result" if not isinstance(block.get("content", ""), str | list):
                    problems.append(f"{where}: tool_result content must be a string or blocks")
                case "text" | "tool_use" | "tool_result":
                    pass
                case other:
                    problems.append(f"{where}: unexpected block type {other!r}")
    return problems


# -- what the SDK sent, in the port's terms ---------------------------------------------------------


def sent_tools(body: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(tool["name"], tool.get("description", ""), tool["input_schema"]) for tool in body.get("tools", [])]


def sent_system(body: dict[str, Any]) -> str:
    return str(body.get("system", ""))


def sent_tool_exchange(body: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(call id, tool, arguments, result) for each tool_use answered by a tool_result in the request."""
    uses = {
        block["id"]: block
        for message in body["messages"]
        if message["role"] == "assistant" and isinstance(message["content"], list)
        for block in message["content"]
        if block["type"] == "tool_use"
    }
    return [
        (
            block["tool_use_id"],
            uses[block["tool_use_id"]]["name"],
            uses[block["tool_use_id"]]["input"],
            block["content"],
        )
        for message in body["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for block in message["content"]
        if block["type"] == "tool_result" and block["tool_use_id"] in uses
    ]
