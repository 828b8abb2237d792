"""Errors to HTTP, in one place: every ``ParleyError`` and every validation failure."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import structlog
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from domain.errors import ParleyError

log = structlog.get_logger(__name__)
_AT = re.compile(r" - at (?:`key` in )?`\$\.?(?P<path>[^`]*)`$")
_FIELD = re.compile(r"(?:missing required|unknown) field `(?P<field>[^`]+)`")


def parley_error(_request: Request[Any, Any, Any], exc: ParleyError) -> Response[dict[str, Any]]:
    headers = {}
    if retry_after := exc.details.get("retry_after"):
        headers["Retry-After"] = str(retry_after)
    elif exc.status == 503:  # an outage: tell the client when to come back
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if exc.status >= 500:
        log.error("request failed", code=exc.code, error=exc.message)
    return Response(exc.to_dict(), status_code=exc.status, headers=headers)


def validation_error(_request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    fields: dict[str, str] = {}
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid"))
        key = item.get("key")
        path = ""
        if match := _AT.search(message):
            path = match.group("path")
            message = message[: match.start()]
        if named := _FIELD.search(message):  # the message names the field: point at it
            path = f"{path}.{named.group('field')}" if path else named.group("field")
        elif not path and key not in (None, "data"):
            path = str(key)
        fields[path or "body"] = message
    message = "the request is not valid" if fields else (exc.detail or "the request is not valid")
    return Response({"code": "validation_error", "message": message, "fields": fields}, status_code=400)


def http_error(_request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    return Response({"code": code, "message": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def too_deep(_request: Request[Any, Any, Any], exc: RecursionError) -> Response[dict[str, Any]]:
    """A body (JSON, or YAML inside it) nested deeper than any real request: refused, not a crash."""
    log.warning("request nested too deeply", error=str(exc))
    return Response(
        {"code": "validation_error", "message": "the request is nested too deeply", "fields": {"body": "too deep"}},
        status_code=400,
    )


# Exceptions of these libraries that mean "the service cannot be reached right now" (the adapters
# translate what they know; these are the ones that slip through mid-outage, such as a request
# that finds the connection closed before the client noticed the server was gone).
UNREACHABLE = {
    ("nats", "Error"),
    ("nats", "ConnectionClosedError"),
    ("nats", "NoServersError"),
    ("nats", "TimeoutError"),
    ("nats", "OutboundBufferLimitError"),
    ("psycopg", "OperationalError"),
    ("psycopg_pool", "PoolTimeout"),
    ("redis", "ConnectionError"),
    ("redis", "TimeoutError"),
    ("redis", "BusyLoadingError"),
}
RETRY_AFTER_SECONDS = 1


def unreachable(exc: BaseException) -> bool:
    for cls in type(exc).__mro__:
        library = cls.__module__.split(".")[0]
        if (library, cls.__name__) in UNREACHABLE:
            return True
    return False


def unexpected_error(_request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if unreachable(exc):
        log.warning("a service is unreachable", error=f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
        return Response(
            {"code": "unavailable", "message": "a service the platform needs cannot be reached; retry shortly"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    log.exception("unexpected error", error=str(exc))
    return Response(
        {"code": "internal_error", "message": "something went wrong; it was logged"},
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error answer: a stable ``code``, a ``message``, and for invalid input ``fields`` naming
    each bad field with its reason; some errors add details of their own (``retry_after``, ...)."""

    code: str
    message: str
    fields: dict[str, str] | msgspec.UnsetType = msgspec.UNSET


# What any API route may answer besides its success: documented on every route of the schema.
ERRORS = {
    400: "The request is not valid: `fields` names each bad field",
    401: "No valid bearer token (or API key)",
    403: "The caller may not do this",
    404: "Not found (also another tenant's or another customer's)",
    409: "The aggregate's state forbids it, or another writer came first",
    413: "The body is larger than the API reads",
    422: "The Idempotency-Key was used for a different request",
    429: "Too many requests: see Retry-After",
    503: "A service the platform needs cannot be reached: see Retry-After",
}


def document_errors(app: Litestar) -> None:
    """Add the error answers (``ERRORS``, as ``ErrorBody``) to every HTTP route of the app's schema,
    and mark the routes the bearer token does not guard (``exclude_from_auth``) as open to anyone
    (before the schema is first built)."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if isinstance(handler, HTTPRouteHandler):
                if handler.opt.get("exclude_from_auth") and not handler.security:
                    handler.security = [{}]  # no security requirement: the route checks what it needs itself
                given = dict(handler.responses or {})
                for status, description in ERRORS.items():
                    given.setdefault(status, ResponseSpec(data_container=ErrorBody, description=description))
                handler.responses = given


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ParleyError: parley_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    RecursionError: too_deep,
    Exception: unexpected_error,
}
