"""Tools an agent may call: names bound to async implementations, arguments checked, time boxed.

``ToolRegistry.call(definition, arguments)`` never raises for a tool's own failure: it returns a
domain ``ToolCall`` with ``error`` set (bad arguments, no implementation, timeout, an exception).
A tool raises ``ToolFailed`` for a failure the customer may hear about ("order not found").

``demo_registry(connect)`` binds the built-in demo tools to PostgreSQL's ``demo`` schema
(``agents.demo_data``); ``connect`` is any callable giving an async connection context, such as
``AsyncConnectionPool.connection``. Nothing connects until a tool runs.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import structlog

from agents.config import ToolDefinition
from domain.conversation import ToolCall

log = structlog.get_logger(__name__)

ToolImpl = Callable[..., Awaitable[Mapping[str, Any]]]


class ToolFailed(Exception):
    """A tool's expected failure; its message is shown to the model (and may reach the customer)."""


class ToolRegistry:
    def __init__(self, implementations: Mapping[str, ToolImpl] | None = None) -> None:
        self._implementations: dict[str, ToolImpl] = dict(implementations or {})

    def register(self, name: str, implementation: ToolImpl) -> None:
        self._implementations[name] = implementation

    def __contains__(self, name: object) -> bool:
        return name in self._implementations

    @property
    def names(self) -> list[str]:
        return sorted(self._implementations)

    async def call(self, definition: ToolDefinition, arguments: Mapping[str, Any]) -> ToolCall:
        started = time.perf_counter()
        arguments = dict(arguments)

        def result(output: Mapping[str, Any] | None = None, error: str | None = None) -> ToolCall:
            elapsed = round((time.perf_counter() - started) * 1000)
            log.info("agent.tool", tool=definition.name, ms=elapsed, ok=error is None, error=error)
            return ToolCall(
                tool=definition.name,
                input=arguments,
                output=None if output is None else jsonable(output),
                execution_time_ms=elapsed,
                error=error,
            )

        implementation = self._implementations.get(definition.name)
        if implementation is None:
            return result(error=f"tool {definition.name!r} has no implementation")
        if problems := validate_arguments(definition.parameters, arguments):
            return result(error="invalid arguments: " + "; ".join(problems))
        try:
            async with asyncio.timeout(definition.timeout_seconds):
                output = await implementation(**arguments)
        except TimeoutError:
            return result(error=f"timed out after {definition.timeout_seconds:g}s")
        except ToolFailed as exc:
            return result(error=str(exc))
        except Exception as exc:  # a tool's bug must not end the conversation
            log.exception("agent.tool_crashed", tool=definition.name)
            return result(error=f"{definition.name} failed: {type(exc).__name__}")
        return result(output=output)


def jsonable(value: Any) -> Any:
    """Tool output as JSON-ready builtins: decimals as floats, dates as ISO strings."""
    match value:
        case Mapping():
            return {str(key): jsonable(item) for key, item in value.items()}
        case list() | tuple():
            return [jsonable(item) for item in value]
        case Decimal():
            return float(value)
        case datetime() | date():
            return value.isoformat()
        case _:
            return value


# -- arguments against a JSON schema (the subset tool parameters use) ----------------------------

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate_arguments(schema: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """Problems with ``value`` under ``schema``: type, required, properties, enum, pattern, bounds, lengths."""
    at = path or "arguments"
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES.get(k, lambda _: True)(value) for k in kinds):
            return [f"{at}: expected {' or '.join(kinds)}"]
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{at}: must be one of {', '.join(map(str, schema['enum']))}")
    if isinstance(value, str):
        if (pattern := schema.get("pattern")) and not re.search(pattern, value):
            problems.append(f"{at}: does not match {pattern}")
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{at}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{at}: longer than {schema['maxLength']}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{at}: below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{at}: above the maximum {schema['maximum']}")
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{name}: required")
        for name, item in value.items():
            if name in properties:
                problems += validate_arguments(properties[name], item, name if not path else f"{path}.{name}")
            elif schema.get("additionalProperties", True) is False:
                problems.append(f"{name}: not allowed")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problems += validate_arguments(schema["items"], item, f"{at}[{index}]")
    return problems


# -- the demo tools, over PostgreSQL's ``demo`` schema ---------------------------------------------

Connect = Callable[[], AbstractAsyncContextManager[Any]]


class DemoTools:
    """The built-in tools. ``connect()`` yields an ``AsyncConnection`` (a pool's ``connection``)."""

    def __init__(self, connect: Connect, *, today: date | None = None) -> None:
        self._connect = connect
        self._today = today

    def registry(self) -> ToolRegistry:
        return ToolRegistry(
            {
                "fetch_order_status": self.fetch_order_status,
                "initiate_refund": self.initiate_refund,
                "send_tracking_email": self.send_tracking_email,
                "create_support_ticket": self.create_support_ticket,
                "schedule_callback": self.schedule_callback,
            }
        )

    async def _one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        async with self._connect() as conn, conn.cursor() as cur:
            await cur.execute(sql, params)
            row = await cur.fetchone()
            if row is None:
                return None
            return {column.name: value for column, value in zip(cur.description, row, strict=True)}

    async def _order(self, order_id: str) -> dict[str, Any]:
        order = await self._one(
            "SELECT order_id, status, total, currency, email, product, tracking_number, carrier, expected_delivery"
            " FROM demo.orders WHERE order_id = %s",
            (order_id.upper(),),
        )
        if order is None:
            raise ToolFailed(f"no order {order_id.upper()} was found")
        return order

    async def fetch_order_status(self, order_id: str) -> dict[str, Any]:
        order = await self._order(order_id)
        return {
            "order_id": order["order_id"],
            "status": order["status"],
            "status_text": order["status"].replace("_", " "),
            "expected_delivery": order["expected_delivery"],
            "tracking_number": order["tracking_number"],
            "carrier": order["carrier"],
            "product": order["product"],
        }

    async def initiate_refund(
        self, order_id: str, amount: float | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        async with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "SELECT total, status FROM demo.orders WHERE order_id = %s FOR UPDATE", (order_id.upper(),)
            )
            row = await cur.fetchone()
            if row is None:
                raise ToolFailed(f"no order {order_id.upper()} was found")
            total, status = row
            if status == "cancelled":
                raise ToolFailed(f"order {order_id.upper()} was cancelled and has nothing to refund")
            await cur.execute(
                "SELECT coalesce(sum(amount), 0) FROM demo.refunds WHERE order_id = %s", (order_id.upper(),)
            )
            refunded = (await cur.fetchone())[0]
            remaining = Decimal(total) - Decimal(refunded)
            wanted = remaining if amount is None else Decimal(str(amount)).quantize(Decimal("0.01"))
            if wanted <= 0 or wanted > remaining:
                raise ToolFailed(f"order {order_id.upper()} has {remaining:.2f} left to refund")
            await cur.execute(
                "INSERT INTO demo.refunds (order_id, amount, reason) VALUES (%s, %s, %s) RETURNING refund_id",
                (order_id.upper(), wanted, reason or "customer request"),
            )
            refund_id = (await cur.fetchone())[0]
        return {
            "refund_id": refund_id,
            "order_id": order_id.upper(),
            "amount": f"{wanted:.2f}",
            "status": "pending",
            "estimated_days": "5-7",
        }

    async def send_tracking_email(self, order_id: str, email: str) -> dict[str, Any]:
        order = await self._order(order_id)
        if not order["tracking_number"]:
            raise ToolFailed(f"order {order['order_id']} has not shipped yet, so there is no tracking number")
        return {
            "order_id": order["order_id"],
            "email": email,
            "tracking_number": order["tracking_number"],
            "sent": True,
        }

    async def create_support_ticket(self, subject: str, description: str, priority: str = "normal") -> dict[str, Any]:
        ticket = await self._one(
            "INSERT INTO demo.tickets (subject, description, priority) VALUES (%s, %s, %s)"
            " RETURNING ticket_id, priority, status",
            (subject, description, priority),
        )
        assert ticket is not None
        return ticket

    async def schedule_callback(self, phone: str, preferred_time: str | None = None) -> dict[str, Any]:
        when = preferred_time or (self._today or date.today()).isoformat() + " next business day"
        callback = await self._one(
            "INSERT INTO demo.callbacks (phone, preferred_time) VALUES (%s, %s) RETURNING callback_id, status",
            (phone, when),
        )
        assert callback is not None
        return {**callback, "phone": phone, "preferred_time": when}


def demo_registry(connect: Connect) -> ToolRegistry:
    return DemoTools(connect).registry()


def connect_url(url: str) -> Connect:
    """A connection factory that opens a fresh connection per call (tests, the scenario CLI)."""
    import psycopg

    def connect() -> AbstractAsyncContextManager[Any]:
        return _Connection(psycopg, url)

    return connect


class _Connection:
    def __init__(self, psycopg: Any, url: str) -> None:
        self._psycopg = psycopg
        self._url = url
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        self._conn = await self._psycopg.AsyncConnection.connect(self._url, autocommit=True)
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        await self._conn.close()


__all__ = [
    "Connect",
    "DemoTools",
    "ToolFailed",
    "ToolImpl",
    "ToolRegistry",
    "connect_url",
    "demo_registry",
    "validate_arguments",
]
