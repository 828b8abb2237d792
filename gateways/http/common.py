"""What the conversation and escalation controllers share: who may see what, and running a command.

A command route is: request struct -> command -> ``run_command`` -> response. ``run_command`` takes
the rate-limit tokens, makes the command id (from ``Idempotency-Key`` when given, so a retry gets
the first outcome), binds the log context, runs the command, and for the seed's synchronous
conversation API waits for the agent's reply.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import structlog
from litestar import Request, Response

from commands.conversation import reply_command_id
from commands.runner import CommandContext, CommandRunner, Outcome
from domain import conversation as c
from domain.errors import NotFoundError
from domain.messages import Command, Decider
from domain.pii import mask_text, mask_value
from gateways.http.auth import Identity
from gateways.http.limits import Limits
from streams.store import EventStore
from streams.subjects import StreamId

S = TypeVar("S")

# Roles that work a tenant's conversations; a caller with none of them is a customer (or a reader).
STAFF = frozenset({"support_agent", "supervisor", "org_admin", "service"})
# Who may speak for an escalation assigned to someone else.
SUPERVISORS = frozenset({"supervisor", "org_admin", "service"})
# Who sees collected personal data in clear; others see it masked (``domain.pii.mask_value``), except
# a customer reading their own conversation (the token's subject is the conversation's user).
PII_READERS = STAFF


def now() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def position_header(request: Request[Any, Any, Any]) -> int | None:
    """The position a query must wait for, from the ``X-Parley-Position`` header."""
    value = request.headers.get("X-Parley-Position")
    return int(value) if value and value.isdigit() else None


def is_customer(identity: Identity) -> bool:
    """A caller who reaches only their own conversations: no staff role."""
    return not identity.roles & (STAFF | {"analyst", "platform_engineer"})


def is_supervisor(identity: Identity) -> bool:
    return bool(identity.roles & SUPERVISORS)


def sees_pii(identity: Identity, owner: str | None) -> bool:
    return bool(identity.roles & PII_READERS) or (owner is not None and identity.subject == owner)


def shown_pii(identity: Identity, pii: Mapping[str, str], owner: str | None) -> dict[str, str]:
    if sees_pii(identity, owner):
        return dict(pii)
    return {kind: mask_value(value) for kind, value in pii.items()}


def shown_text(identity: Identity, text: str | None, owner: str | None) -> str | None:
    """Free text as this reader may see it: personal data in it masked unless they may see it."""
    if text is None or sees_pii(identity, owner):
        return text
    return mask_text(text)


def masked(value: Any) -> Any:
    """Every string inside a JSON-like value with its personal data masked."""
    match value:
        case str():
            return mask_text(value)
        case dict():
            return {key: masked(item) for key, item in value.items()}
        case list():
            return [masked(item) for item in value]
    return value


def require_own(identity: Identity, owner: str, what: str) -> None:
    """A customer reaches only their own conversations: anyone else's reads as not found."""
    if is_customer(identity) and identity.subject != owner:
        raise NotFoundError(f"{what} not found")


def actor(identity: Identity) -> str:
    return f"{'+'.join(sorted(identity.roles))}:{identity.subject}"


async def own_conversation(runner: CommandRunner, identity: Identity, conversation_id: str) -> c.Conversation:
    """The conversation's state (from the runner's copy), refused as not found to a customer not its user."""
    loaded = await runner.repository(c.DECIDER).load(identity.tenant, conversation_id, trust_cache=True)
    if not loaded.state.started:
        raise NotFoundError(f"conversation {conversation_id} not found")
    require_own(identity, loaded.state.user_id, f"conversation {conversation_id}")
    return loaded.state


B = TypeVar("B", bound=msgspec.Struct)


class Commands:
    """Runs one command for a request: rate limits, idempotency, log context, and for the seed's
    synchronous conversation API the agent's reply (inline within ``reply_wait_seconds``, else 202).

    Whether a reply is awaited is a setting, not where the agent runtime runs: with
    ``reply_wait_seconds`` 0 nobody waits, whichever process answers.
    """

    def __init__(
        self,
        runner: CommandRunner,
        limits: Limits,
        store: EventStore,
        *,
        reply_wait_seconds: float,
    ) -> None:
        self.runner = runner
        self.limits = limits
        self.store = store
        self.reply_wait_seconds = reply_wait_seconds

    async def run(
        self,
        request: Request[Identity, Any, Any],
        decider: Decider[S],
        aggregate_id: str,
        command: Command,
        respond: Callable[[Outcome[S]], Awaitable[B] | B],
        *,
        status: int = 200,
        conversation_id: str | None = None,
        message_limit: bool = False,
        new: bool = False,
        reply_to: str | None = None,
        command_id: str | None = None,
    ) -> Response[B]:
        """Run one command for the caller and answer with ``respond(outcome)`` and the stream position."""
        identity = request.user
        limits = self.limits
        buckets = [limits.tenant_bucket(identity.tenant)]
        if message_limit and conversation_id is not None:
            buckets.append(limits.conversation_bucket(identity.tenant, conversation_id))
        await limits.take(buckets)
        key = request.headers.get("Idempotency-Key")
        structlog.contextvars.bind_contextvars(tenant=identity.tenant, conversation_id=conversation_id)

        async def run() -> tuple[int, Any]:
            ctx = CommandContext(
                tenant=identity.tenant,
                actor=actor(identity),
                command_id=f"idem-{key}" if key else command_id or uuid.uuid4().hex,
                retry_possible=key is not None or command_id is not None,
                correlation_id=request.state.get("request_id"),
                request=hashlib.sha256(fingerprint).hexdigest() if key else None,
            )
            expected = None
            if reply_to is not None and conversation_id is not None and self.reply_wait_seconds > 0:
                stream = StreamId(identity.tenant, c.AGGREGATE_TYPE, conversation_id)
                expected = await self.store.expect(stream, reply_command_id(reply_to))
            try:
                outcome = await self.runner.handle(decider, aggregate_id, command, ctx, new=new)
            except BaseException:
                if expected is not None:
                    await expected.close()
                raise
            # Carried by the request's log line (and by the projector's, through the event metadata).
            structlog.contextvars.bind_contextvars(
                command=type(command).__name__, command_id=ctx.command_id, seq=outcome.position
            )
            made = respond(outcome)
            body = made if isinstance(made, msgspec.Struct) else await made
            # A use case may have written more than the command (its position is then the later one).
            body = msgspec.structs.replace(body, position=max(getattr(body, "position", 0), outcome.position))
            code = status
            if expected is not None:
                # The seed's synchronous API: the agent's answer inline, or 202 and a link to poll.
                state = outcome.state
                # During a linked call the chatbot is silent (its voice agent takes the message).
                answering = isinstance(state, c.Conversation) and state.status == "active" and state.on_call is None
                events = await expected.events(
                    self.reply_wait_seconds if answering else 0, look_first=outcome.duplicate
                )
                reply = next((e.event for e in events or [] if isinstance(e.event, c.AgentReplied)), None)
                if reply is not None:
                    owner = getattr(state, "user_id", None)
                    body = msgspec.structs.replace(
                        body,
                        agent_response=agent_response(identity, reply, owner),
                        cross_sell_opportunity=cross_sell_opportunity(reply),
                    )
                elif answering:
                    code = 202
                    link = Links(conversation=f"/api/v1/orchestration/conversations/{conversation_id}")
                    body = msgspec.structs.replace(body, links=link)
            return code, body

        fingerprint = f"{request.method} {request.url.path}".encode() + canonical(await request.body()) if key else b""
        code, body = await limits.idempotent(identity.tenant, key, fingerprint, run)
        position = body["position"] if isinstance(body, dict) else body.position
        return Response(body, status_code=code, headers={"X-Parley-Position": str(position)})


def new_id(request: Request[Identity, Any, Any], kind: str) -> str:
    """A new id for what a request creates (a message, an escalation, a survey): derived from its
    ``Idempotency-Key`` when it has one, so a retry names the same thing even once every cache has
    forgotten the first response; random otherwise."""
    key = request.headers.get("Idempotency-Key")
    if key:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"parley:{request.user.tenant}:{key}:{kind}"))
    return str(uuid.uuid4())


def canonical(body: bytes) -> bytes:
    """A JSON body as its canonical form (keys sorted, no insignificant whitespace), so a retry that
    spells the same request differently is the same request."""
    try:
        return msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except msgspec.DecodeError:
        return body


def shown_tool_calls(identity: Identity, tool_calls: list[dict[str, Any]], owner: str | None) -> list[dict[str, Any]]:
    """Tool calls as this reader may see them: a failure's inner detail is for staff (a customer is
    told it failed); personal data masked unless theirs to see."""
    if not identity.roles & STAFF:
        tool_calls = [{**call, "error": "failed"} if call.get("error") else call for call in tool_calls]
    return tool_calls if sees_pii(identity, owner) else masked(tool_calls)


class ReplyMetadata(msgspec.Struct, kw_only=True):
    intent: str | None
    confidence: float | None
    tool_calls: list[dict[str, Any]]
    escalation_suggested: bool
    provider: str | None
    fallbacks: list[dict[str, Any]]


class AgentResponse(msgspec.Struct, kw_only=True):
    """The seed's ``agent_response``."""

    message: str | None
    message_id: str
    metadata: ReplyMetadata


class CrossSellOpportunity(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The seed's ``cross_sell_opportunity``."""

    detected: bool
    product: str | None = None
    suggestion: str | None = None
    confidence: float | None = None


class Links(msgspec.Struct):
    conversation: str


def agent_response(identity: Identity, reply: c.AgentReplied, owner: str | None) -> AgentResponse:
    tool_calls = [msgspec.to_builtins(t) for t in reply.tool_calls]
    return AgentResponse(
        message=shown_text(identity, reply.content, owner),
        message_id=reply.message_id,
        metadata=ReplyMetadata(
            intent=reply.intent,
            confidence=reply.confidence,
            tool_calls=shown_tool_calls(identity, tool_calls, owner),
            escalation_suggested=reply.escalation_suggested,
            provider=reply.provider,
            fallbacks=[msgspec.to_builtins(f) for f in reply.fallbacks],
        ),
    )


def cross_sell_opportunity(reply: c.AgentReplied) -> CrossSellOpportunity:
    offer = reply.cross_sell
    if offer is None:
        return CrossSellOpportunity(detected=False)
    return CrossSellOpportunity(
        detected=True, product=offer.product, suggestion=offer.suggestion, confidence=offer.confidence
    )


def to_body(value: msgspec.Struct) -> dict[str, Any]:
    """A response Struct as the JSON-ready dict ``run_command`` bodies are."""
    body: dict[str, Any] = msgspec.to_builtins(value)
    return body
