"""Tools an agent may call: names bound to async implementations, arguments checked, time boxed.

``ToolRegistry.run(definition, arguments, context)`` never raises for a tool's own failure: it
returns a ``ToolRun``, the domain ``ToolCall`` (``error`` set on failure, as operations need it)
and what kind of failure it was. Only a ``ToolFailed`` message is meant for the customer ("no order
ORD-424242 was found"); bad arguments, a missing implementation, a timeout or a crash are internal,
and the model is told no more than that the tool is unavailable (``ToolRun.content``).
``ToolRegistry.call`` is the same, giving the ``ToolCall`` alone.

Every call carries a ``ToolContext``: the tenant, the conversation and its customer (the email
addresses the customer gave in it). An implementation that takes a ``context`` keyword gets it.

``demo_registry(connect)`` binds the built-in demo tools to PostgreSQL's ``demo`` schema
(``agents.demo_data``); ``connect`` is any callable giving an async connection context, such as
``AsyncConnectionPool.connection``. Nothing connects until a tool runs. The demo tools read and
write the context's tenant's rows only, and act for the conversation's own customer only: an
effect (a refund, an upgrade on an order) is refused when the customer's known email is not the
order's, a lookup of such an order tells nothing, and a tracking email goes only to the order's
address (or another one the order's owner gave in this conversation).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec
import structlog

from domain.bot import ToolDefinition
from domain.conversation import ToolCall
from domain.patterns import compile_pattern

log = structlog.get_logger(__name__)

ToolImpl = Callable[..., Awaitable[Mapping[str, Any]]]
Failure = Literal["failed", "invalid_arguments", "unavailable"]
DEFAULT_TENANT = "demo"
UNAVAILABLE = "temporarily unavailable"


class ToolFailed(Exception):
    """A tool's expected failure; its message is shown to the model (and may reach the customer)."""


class ToolContext(msgspec.Struct, frozen=True, kw_only=True):
    """Whom a tool acts for: the tenant, the conversation, and its customer.

    ``customer_emails`` are the addresses the customer gave in this conversation (and the user id
    when it is one): the conversation's known customer.
    """

    tenant: str = DEFAULT_TENANT
    conversation_id: str = ""
    user_id: str = ""
    customer_emails: tuple[str, ...] = ()

    def knows(self, email: str | None) -> bool:
        """``email`` is one the customer gave (any case)."""
        return email is not None and email.strip().lower() in {known.strip().lower() for known in self.customer_emails}

    def contradicts(self, email: str | None) -> bool:
        """The customer is known by email, and not by this one."""
        return bool(self.customer_emails) and not self.knows(email)


def customer_emails(user_id: str, emails: Iterable[str]) -> tuple[str, ...]:
    """The addresses that identify a conversation's customer: those given in it, and the user id if one."""
    found: list[str] = []
    for email in [*emails, user_id]:
        if email and "@" in email and email.lower() not in (known.lower() for known in found):
            found.append(email)
    return tuple(found)


class ToolRun(msgspec.Struct, frozen=True):
    """A tool call and, when it failed, how: ``failed`` (a ``ToolFailed`` the customer may hear about),
    ``invalid_arguments`` or ``unavailable`` (internal: no implementation, a timeout, a crash)."""

    call: ToolCall
    failure: Failure | None = None

    @property
    def content(self) -> dict[str, Any]:
        """What the model is told: the output, or an error it may repeat to the customer."""
        match self.failure:
            case None:
                return dict(self.call.output or {})
            case "failed":
                return {"error": self.call.error}
            case "invalid_arguments":
                return {"error": self.call.error, "error_type": "invalid_arguments"}
            case _:
                return {"error": UNAVAILABLE, "error_type": "unavailable"}


class ToolRegistry:
    def __init__(self, implementations: Mapping[str, ToolImpl] | None = None) -> None:
        self._implementations: dict[str, ToolImpl] = {}
        self._takes_context: set[str] = set()
        for name, implementation in (implementations or {}).items():
            self.register(name, implementation)

    def register(self, name: str, implementation: ToolImpl) -> None:
        self._implementations[name] = implementation
        self._takes_context.discard(name)
        try:
            parameter = inspect.signature(implementation).parameters.get("context")
        except (TypeError, ValueError):  # a builtin or a callable without a signature
            parameter = None
        if parameter is not None and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            self._takes_context.add(name)

    def __contains__(self, name: object) -> bool:
        return name in self._implementations

    @property
    def names(self) -> list[str]:
        return sorted(self._implementations)

    async def call(
        self, definition: ToolDefinition, arguments: Mapping[str, Any], context: ToolContext | None = None
    ) -> ToolCall:
        return (await self.run(definition, arguments, context)).call

    async def run(
        self, definition: ToolDefinition, arguments: Mapping[str, Any], context: ToolContext | None = None
    ) -> ToolRun:
        started = time.perf_counter()
        arguments = dict(arguments)

        def result(
            output: Mapping[str, Any] | None = None, error: str | None = None, failure: Failure | None = None
        ) -> ToolRun:
            elapsed = round((time.perf_counter() - started) * 1000)
            log.info("agent.tool", tool=definition.name, ms=elapsed, ok=error is None, error=error, failure=failure)
            call = ToolCall(
                tool=definition.name,
                input=arguments,
                output=None if output is None else jsonable(output),
                execution_time_ms=elapsed,
                error=error,
            )
            return ToolRun(call, failure)

        implementation = self._implementations.get(definition.name)
        if implementation is None:
            return result(error=f"tool {definition.name!r} has no implementation", failure="unavailable")
        if problems := validate_arguments(definition.parameters, arguments):
            return result(error="invalid arguments: " + "; ".join(problems), failure="invalid_arguments")
        extra = {"context": context or ToolContext()} if definition.name in self._takes_context else {}
        try:
            async with asyncio.timeout(definition.timeout_seconds):
                output = await implementation(**arguments, **extra)
        except TimeoutError:
            return result(error=f"timed out after {definition.timeout_seconds:g}s", failure="unavailable")
        except ToolFailed as exc:
            return result(error=str(exc), failure="failed")
        except Exception as exc:  # a tool's bug must not end the conversation
            log.exception("agent.tool_crashed", tool=definition.name)
            return result(error=f"{definition.name} failed: {type(exc).__name__}", failure="unavailable")
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
        if (pattern := schema.get("pattern")) and not compile_pattern(pattern).search(value):
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
ORDER_COLUMNS = "order_id, status, total, currency, email, product, tracking_number, carrier, expected_delivery"


class DemoTools:
    """The built-in tools. ``connect()`` yields an ``AsyncConnection`` (a pool's ``connection``).

    Every query names the context's tenant; an order of another tenant is "not found".
    """

    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    def registry(self) -> ToolRegistry:
        return ToolRegistry(
            {
                "fetch_order_status": self.fetch_order_status,
                "initiate_refund": self.initiate_refund,
                "send_tracking_email": self.send_tracking_email,
                "create_support_ticket": self.create_support_ticket,
                "schedule_callback": self.schedule_callback,
                "record_upgrade": self.record_upgrade,
            }
        )

    async def _one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        async with self._connect() as conn, conn.cursor() as cur:
            await cur.execute(sql, params)
            row = await cur.fetchone()
            if row is None:
                return None
            return {column.name: value for column, value in zip(cur.description, row, strict=True)}

    async def _order(self, order_id: str, context: ToolContext) -> dict[str, Any]:
        order = await self._one(
            f"SELECT {ORDER_COLUMNS} FROM demo.orders WHERE tenant = %s AND order_id = %s",
            (context.tenant, order_id.upper()),
        )
        if order is None:
            raise ToolFailed(f"no order {order_id.upper()} was found")
        return order

    @staticmethod
    def _not_theirs(order_id: str) -> ToolFailed:
        return ToolFailed(
            f"order {order_id.upper()} isn't linked to the email address you've given me, so I can't help with it"
            " here. If it's yours, please tell me the email address you used when ordering"
        )

    async def fetch_order_status(self, order_id: str, *, context: ToolContext | None = None) -> dict[str, Any]:
        """The order's status, and only what fits it: a delivery date for what is on its way, the
        day it came for what was delivered, nothing more for what was cancelled."""
        context = context or ToolContext()
        order = await self._order(order_id, context)
        if context.contradicts(order["email"]):
            raise self._not_theirs(order_id)
        status = order["status"]
        shipped = status in ("shipped", "in_transit", "out_for_delivery", "delivered")
        return {
            "order_id": order["order_id"],
            "status": status,
            "status_text": status.replace("_", " "),
            "product": order["product"],
            "expected_delivery": order["expected_delivery"] if status not in ("delivered", "cancelled") else None,
            "delivered_on": order["expected_delivery"] if status == "delivered" else None,
            "tracking_number": order["tracking_number"] if shipped else None,
            "carrier": order["carrier"] if shipped else None,
        }

    async def initiate_refund(
        self,
        order_id: str,
        amount: float | None = None,
        reason: str | None = None,
        *,
        context: ToolContext | None = None,
    ) -> dict[str, Any]:
        context = context or ToolContext()
        order_id = order_id.upper()
        async with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "SELECT total, status, email FROM demo.orders WHERE tenant = %s AND order_id = %s FOR UPDATE",
                (context.tenant, order_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise ToolFailed(f"no order {order_id} was found")
            total, status, email = row
            if context.contradicts(email):
                raise self._not_theirs(order_id)
            if status == "cancelled":
                raise ToolFailed(f"order {order_id} was cancelled and has nothing to refund")
            await cur.execute(
                "SELECT coalesce(sum(amount), 0) FROM demo.refunds WHERE tenant = %s AND order_id = %s",
                (context.tenant, order_id),
            )
            refunded = (await cur.fetchone())[0]
            remaining = Decimal(total) - Decimal(refunded)
            wanted = remaining if amount is None else Decimal(str(amount)).quantize(Decimal("0.01"))
            if remaining <= 0:
                raise ToolFailed(f"order {order_id} has already been refunded in full")
            if wanted <= 0 or wanted > remaining:
                raise ToolFailed(f"order {order_id} has {remaining:.2f} left to refund")
            await cur.execute(
                "INSERT INTO demo.refunds (tenant, order_id, amount, reason, conversation_id)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING refund_id",
                (context.tenant, order_id, wanted, reason or "customer request", context.conversation_id),
            )
            refund_id = (await cur.fetchone())[0]
        return {
            "refund_id": refund_id,
            "order_id": order_id,
            "amount": f"{wanted:.2f}",
            "status": "pending",
            "estimated_days": "5-7",
        }

    async def send_tracking_email(
        self, order_id: str, email: str | None = None, *, context: ToolContext | None = None
    ) -> dict[str, Any]:
        """To the order's address; to another only when the order's owner gave it in this conversation.
        The order's address is never shown: without ``email`` the reply says "the address on the order"."""
        context = context or ToolContext()
        order = await self._order(order_id, context)
        if email is not None and email.strip().lower() != order["email"].lower():
            if not (context.knows(order["email"]) and context.knows(email)):
                raise ToolFailed(
                    f"I can only send the tracking details for {order['order_id']} to the email address on the"
                    " order, and that's not the one you gave. If the order is yours, please tell me the email"
                    " address you used when ordering, or I can send them to the address on the order"
                )
        elif email is None and context.contradicts(order["email"]):
            raise self._not_theirs(order_id)
        if not order["tracking_number"]:
            raise ToolFailed(f"order {order['order_id']} has not shipped yet, so there is no tracking number")
        address = email.strip() if email is not None else order["email"]
        sent = await self._one(
            "INSERT INTO demo.emails (tenant, order_id, address, conversation_id) VALUES (%s, %s, %s, %s)"
            " RETURNING email_id",
            (context.tenant, order["order_id"], address, context.conversation_id),
        )
        assert sent is not None
        return {
            "order_id": order["order_id"],
            "email": email.strip() if email is not None else None,
            "tracking_number": order["tracking_number"],
            "carrier": order["carrier"],
            "sent": True,
            "email_id": sent["email_id"],
        }

    async def create_support_ticket(
        self, subject: str, description: str, priority: str = "normal", *, context: ToolContext | None = None
    ) -> dict[str, Any]:
        context = context or ToolContext()
        ticket = await self._one(
            "INSERT INTO demo.tickets (tenant, conversation_id, user_id, subject, description, priority)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING ticket_id, priority, status",
            (context.tenant, context.conversation_id, context.user_id, subject, description, priority),
        )
        assert ticket is not None
        return ticket

    async def schedule_callback(
        self, phone: str, preferred_time: str | None = None, *, context: ToolContext | None = None
    ) -> dict[str, Any]:
        context = context or ToolContext()
        when = preferred_time or "the next business day"
        callback = await self._one(
            "INSERT INTO demo.callbacks (tenant, conversation_id, user_id, phone, preferred_time)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING callback_id, status",
            (context.tenant, context.conversation_id, context.user_id, phone, when),
        )
        assert callback is not None
        return {**callback, "phone": phone, "preferred_time": when}

    async def record_upgrade(
        self, product: str, order_id: str | None = None, *, context: ToolContext | None = None
    ) -> dict[str, Any]:
        """A cross-sell the customer accepted, once per conversation and product (asking again gives
        the same record); on an order, only the customer's own."""
        context = context or ToolContext()
        if order_id is not None:
            order = await self._order(order_id, context)
            if context.contradicts(order["email"]):
                raise self._not_theirs(order_id)
            order_id = order["order_id"]
        upgrade = await self._one(
            "INSERT INTO demo.upgrades (tenant, conversation_id, user_id, product, order_id)"
            " VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (tenant, conversation_id, product) DO UPDATE SET product = EXCLUDED.product"
            " RETURNING upgrade_id, product, order_id, status",
            (context.tenant, context.conversation_id, context.user_id, product, order_id),
        )
        assert upgrade is not None
        return upgrade


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
    "DEFAULT_TENANT",
    "Connect",
    "DemoTools",
    "Failure",
    "ToolContext",
    "ToolFailed",
    "ToolImpl",
    "ToolRegistry",
    "ToolRun",
    "connect_url",
    "customer_emails",
    "demo_registry",
    "validate_arguments",
]


ERASED = "[erased]"
# The demo tools' rows that hold what a customer told them, and the columns that hold it.
_SCRUB = (
    ("callbacks", ("phone", "preferred_time"), "(user_id = %(customer)s OR conversation_id = ANY(%(conversations)s))"),
    ("tickets", ("subject", "description"), "(user_id = %(customer)s OR conversation_id = ANY(%(conversations)s))"),
    ("emails", ("address",), "conversation_id = ANY(%(conversations)s)"),
    ("refunds", ("reason",), "conversation_id = ANY(%(conversations)s)"),
)


async def erase_customer_from_demo_tables(
    connect: Connect, tenant: str, customer_id: str, conversations: list[str]
) -> int:
    """The demo tools' records of an erased customer keep their ids and statuses (the business's
    records) and lose what the customer told them: phone, times, texts, addresses. Returns the rows
    changed."""
    changed = 0
    params = {"tenant": tenant, "customer": customer_id, "conversations": conversations, "erased": ERASED}
    async with connect() as conn, conn.cursor() as cur:
        await cur.execute("SELECT to_regclass('demo.callbacks') IS NOT NULL")
        row = await cur.fetchone()
        if not row or not row[0]:
            return 0  # no demo tables in this database
        for table, columns, which in _SCRUB:
            sets = ", ".join(f"{column} = %(erased)s" for column in columns)
            await cur.execute(f"UPDATE demo.{table} SET {sets} WHERE tenant = %(tenant)s AND {which}", params)
            changed += cur.rowcount
    return changed
