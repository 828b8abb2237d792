"""OpenAI's Chat Completions API (``POST /v1/chat/completions``): its contract, errors, recorded replies."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.llm_fakes import recorded
from tests.llm_fakes.server import FakeAPI, Reply, Request

API = "openai"
PATH = "/v1/chat/completions"
FUNCTION_KEYS = {"name", "description", "parameters", "strict"}
ROLES = {"system", "developer", "user", "assistant", "tool"}
ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def server() -> FakeAPI:
    return FakeAPI(check=check, reject=lambda problems: error(400, "; ".join(problems)))


def reply(name: str, delay: float = 0.0) -> Reply:
    return Reply(body=recorded.load(API, name), headers={"x-request-id": "req_7f3c1bd2a1e04c0c9d2e"}, delay=delay)


def error(status: int, message: str, *, retry_after: int | None = None) -> Reply:
    headers = {"x-request-id": "req_7f3c1bd2a1e04c0c9d2e", "x-should-retry": "false"}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    kind, code = ERRORS.get(status, ("server_error", None))
    return Reply(
        status=status, body={"error": {"message": message, "type": kind, "param": None, "code": code}}, headers=headers
    )


def check(request: Request) -> list[str]:
    problems = []
    if (request.method, request.path) != ("POST", PATH):
        return [f"no such endpoint {request.method} {request.path}"]
    if not request.headers.get("authorization", "").startswith("Bearer "):
        problems.append("missing bearer authorization")
    body = request.body
    if not isinstance(body, dict):
        return [*problems, "body is not a JSON object"]
    if not isinstance(body.get("model"), str):
        problems.append("model: required string")
    if "tools" in body:
        problems += check_tools(body["tools"])
    problems += check_messages(body.get("messages"))
    return problems


def check_tools(tools: Any) -> list[str]:
    if not isinstance(tools, list) or not tools:
        return ["tools: must be a non-empty list when given"]
    problems = []
    for index, tool in enumerate(tools):
        function = tool.get("function", {})
        if tool.get("type") != "function" or set(tool) != {"type", "function"}:
            problems.append(f"tools[{index}]: expected {{type: function, function: ...}}")
        if unknown := set(function) - FUNCTION_KEYS:
            problems.append(f"tools[{index}].function: Unrecognized request arguments {sorted(unknown)}")
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", str(function.get("name", ""))):
            problems.append(f"tools[{index}].function.name: invalid")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            problems.append(f"tools[{index}].function.parameters: must be an object")
    return problems


def check_messages(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["messages: required non-empty list"]
    problems = []
    pending: list[str] = []  # tool_call ids that must be answered by the tool messages that follow
    for index, message in enumerate(messages):
        role = message.get("role")
        where = f"messages[{index}]"
        if role not in ROLES:
            problems.append(f"{where}.role: {role!r} is not one of {sorted(ROLES)}")
            continue
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                problems.append(f"{where}: role 'tool' must answer a preceding message with 'tool_calls'")
            else:
                pending.remove(message["tool_call_id"])
            if not isinstance(message.get("content"), str | list):
                problems.append(f"{where}.content: required")
            continue
        if pending:
            problems.append(f"{where}: tool_call_ids {pending} did not have response messages")
            pending = []
        if role == "assistant" and message.get("tool_calls"):
            for call_index, call in enumerate(message["tool_calls"]):
                function = call.get("function", {})
                if call.get("type") != "function" or not isinstance(call.get("id"), str):
                    problems.append(f"{where}.tool_calls[{call_index}]: needs an id and type function")
                try:
                    if not isinstance(json.loads(function.get("arguments", "")), dict):
                        raise ValueError
                except ValueError:
                    problems.append(
                        f"{where}.tool_calls[{call_index}].function.arguments: must be a JSON object string"
                    )
                pending.append(call.get("id"))
        elif not isinstance(message.get("content"), str | list):
            problems.append(f"{where}.content: required for role {role!r}")
    if pending:
        problems.append(f"tool_call_ids {pending} did not have response messages")
    return problems


# -- what the SDK sent, in the port's terms ---------------------------------------------------------


def sent_tools(body: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (tool["function"]["name"], tool["function"].get("description", ""), tool["function"].get("parameters", {}))
        for tool in body.get("tools", [])
    ]


def sent_system(body: dict[str, Any]) -> str:
    return "\n\n".join(m["content"] for m in body["messages"] if m["role"] == "system")


def sent_tool_exchange(body: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    calls = {
        call["id"]: call["function"]
        for message in body["messages"]
        if message["role"] == "assistant"
        for call in message.get("tool_calls") or []
    }
    return [
        (
            m["tool_call_id"],
            calls[m["tool_call_id"]]["name"],
            json.loads(calls[m["tool_call_id"]]["arguments"]),
            m["content"],
        )
        for m in body["messages"]
        if m["role"] == "tool" and m["tool_call_id"] in calls
    ]
