"""The conversation endpoints of the seed's Agent Orchestration Service.

Each command endpoint: request struct -> command -> runner -> response carrying the
conversation's state and the stream position of its events. Queries read the PostgreSQL read
model, and wait (bounded) for a position given as ``min_position`` or ``X-Parley-Position``.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import structlog
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from commands.agent_pool import AGENT_POOL
from commands.conversation import CONVERSATION
from commands.runner import Aggregate, CommandContext, Outcome
from domain import agent_pool as p
from domain import conversation as c
from domain.errors import NotFoundError
from domain.messages import Command
from domain.pii import mask_value
from gateways.http.auth import Identity, requires
from gateways.http.platform import Platform
from streams.jetstream import RawMessage
from streams.store import RecordedEvent
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]
ANYONE = requires("customer", "support_agent", "org_admin", "service")
STAFF = requires("support_agent", "org_admin", "service")
READERS = requires("customer", "support_agent", "org_admin", "service", "analyst")
# Who sees collected personal data in clear; others see it masked (``domain.pii.mask_value``), except
# a customer reading their own conversation (the token's subject is the conversation's user).
PII_READERS = frozenset({"support_agent", "org_admin", "service"})


def shown_pii(identity: Identity, pii: dict[str, str], owner: str | None) -> dict[str, str]:
    if identity.roles & PII_READERS or (owner is not None and identity.subject == owner):
        return pii
    return {kind: mask_value(value) for kind, value in pii.items()}


class StartConversationRequest(msgspec.Struct, forbid_unknown_fields=True):
    config_id: NonEmpty
    channel: NonEmpty
    user_id: NonEmpty
    initial_message: Text | None = None
    context: dict[str, str] | None = None


class ContinueConversationRequest(msgspec.Struct, forbid_unknown_fields=True):
    message: Text
    attachments: list[str] = []


class EscalateRequest(msgspec.Struct, forbid_unknown_fields=True):
    trigger: NonEmpty
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    urgency: Literal["low", "medium", "high", "urgent"] = "medium"


class SurveyRequest(msgspec.Struct, forbid_unknown_fields=True):
    questions: Annotated[list[c.SurveyQuestion], msgspec.Meta(min_length=1, max_length=20)]


class SurveyResponsesRequest(msgspec.Struct, forbid_unknown_fields=True):
    responses: Annotated[list[c.SurveyAnswer], msgspec.Meta(min_length=1, max_length=20)]


class ResolveRequest(msgspec.Struct, forbid_unknown_fields=True):
    resolution: Literal["returned_to_ai", "closed"] = "returned_to_ai"


class RegisterAgentRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: NonEmpty
    agent_id: NonEmpty | None = None
    role: NonEmpty = "Support Agent"
    skills: list[str] = []
    capacity: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3


class AvailabilityRequest(msgspec.Struct, forbid_unknown_fields=True):
    available: bool


class CloseRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: NonEmpty = "completed"


def now() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def agent_response(reply: c.AgentReplied) -> dict[str, Any]:
    return {
        "message": reply.content,
        "message_id": reply.message_id,
        "metadata": {
            "intent": reply.intent,
            "confidence": reply.confidence,
            "tool_calls": [msgspec.to_builtins(t) for t in reply.tool_calls],
            "escalation_suggested": reply.escalation_suggested,
            "provider": reply.provider,
            "fallbacks": [msgspec.to_builtins(f) for f in reply.fallbacks],
        },
    }


ISSUE_CATEGORIES = {
    "fetch_order_status": "order_inquiry",
    "send_tracking_email": "order_inquiry",
    "initiate_refund": "refund",
    "create_support_ticket": "support_ticket",
    "schedule_callback": "callback",
}


async def handoff_summary(
    platform: Platform, identity: Identity, conversation_id: str, outcome: Outcome[c.Conversation]
) -> dict[str, Any] | None:
    """What a human agent needs on taking over, from the read model (waited for, briefly)."""
    await platform.wait_for(outcome.position - 1 if outcome.position else None)
    async with platform.pool.connection() as conn:
        view = await platform.queries.get_conversation(conn, identity.tenant, conversation_id)
    if view is None:
        return None
    said = [f"{m['role']}: {m['content']}" for m in view["messages"] if m.get("content")]
    tools = [t["tool"] for t in view["tools_executed"]]
    trajectory = view["sentiment_trajectory"]
    return {
        "conversation_history": " | ".join(said[-6:]),
        "pii_collected": shown_pii(identity, view["pii_collected"], view["user_id"]),
        "tools_used": tools,
        "sentiment_score": trajectory[-1] if trajectory else None,
        "issue_category": next((ISSUE_CATEGORIES[t] for t in reversed(tools) if t in ISSUE_CATEGORIES), "general"),
    }


def cross_sell_opportunity(reply: c.AgentReplied) -> dict[str, Any]:
    offer = reply.cross_sell
    if offer is None:
        return {"detected": False}
    return {"detected": True, "product": offer.product, "suggestion": offer.suggestion, "confidence": offer.confidence}


def conversation_state(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
    return {"turn_count": outcome.state.turn_count, "pii_collected": {}, "checkpoint_id": None}


class ConversationController(Controller):
    path = "/api/v1/orchestration"
    tags = ["conversations"]

    async def _run(
        self,
        platform: Platform,
        request: Request[Identity, Any, Any],
        conversation_id: str,
        command: Command,
        respond: Any,
        *,
        status: int = 200,
        message_limit: bool = False,
        new: bool = False,
        reply_to: str | None = None,
        aggregate: Aggregate[Any] = CONVERSATION,
    ) -> Response[dict[str, Any]]:
        identity = request.user
        limits = platform.limits
        buckets = [limits.tenant_bucket(identity.tenant)]
        if message_limit:
            buckets.append(limits.conversation_bucket(identity.tenant, conversation_id))
        await limits.take(buckets)
        key = request.headers.get("Idempotency-Key")
        structlog.contextvars.bind_contextvars(tenant=identity.tenant, conversation_id=conversation_id)

        async def run() -> tuple[int, dict[str, Any]]:
            ctx = CommandContext(
                tenant=identity.tenant,
                actor=f"{'+'.join(sorted(identity.roles))}:{identity.subject}",
                command_id=f"idem-{key}" if key else uuid.uuid4().hex,
                retry_possible=key is not None,
                correlation_id=request.state.get("request_id"),
            )
            waiter = None
            if reply_to is not None and platform.agents is not None:
                stream = StreamId(identity.tenant, c.AGGREGATE_TYPE, conversation_id)
                waiter = await platform.expect_reply(stream, reply_to)
            outcome = await platform.runner.handle(aggregate, conversation_id, command, ctx, new=new)
            # Carried by the request's log line (and by the projector's, through the event metadata).
            structlog.contextvars.bind_contextvars(
                command=type(command).__name__, command_id=ctx.command_id, seq=outcome.position
            )
            body = respond(outcome)
            if inspect.isawaitable(body):
                body = await body
            body["position"] = outcome.position
            code = status
            if waiter is not None:
                # The seed's synchronous API: the agent's answer inline, or 202 and a link to poll.
                answering = outcome.state.status == "active"
                reply = await waiter.reply(platform.settings.reply_wait_seconds if answering else 0)
                if reply is not None:
                    body["agent_response"] = agent_response(reply)
                    body["cross_sell_opportunity"] = cross_sell_opportunity(reply)
                elif answering:
                    code = 202
                    body["links"] = {"conversation": f"{ConversationController.path}/conversations/{conversation_id}"}
            return code, body

        fingerprint = f"{request.method} {request.url.path}".encode() + await request.body() if key else b""
        code, body = await platform.limits.idempotent(identity.tenant, key, fingerprint, run)
        return Response(body, status_code=code, headers={"X-Parley-Position": str(body.get("position", 0))})

    @post("/conversations", opt=ANYONE, status_code=201, summary="Start a conversation")
    async def start(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[StartConversationRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        key = request.headers.get("Idempotency-Key")
        # A retried start must land on the same conversation: derive its id from the key.
        conversation_id = (
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"parley:{request.user.tenant}:{key}")) if key else str(uuid.uuid4())
        )
        at = now()
        version = await platform.configs.latest_version(request.user.tenant, data.config_id)
        command = c.StartConversation(
            conversation_id=conversation_id,
            config_id=data.config_id,
            config_version=version,
            channel=data.channel,
            user_id=data.user_id,
            context=data.context,
            initial_message=data.initial_message,
            message_id=f"{conversation_id}-m0" if data.initial_message else None,
            at=at,
        )

        def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            return {
                "conversation_id": conversation_id,
                "product_type": outcome.state.product_type,
                "thread_id": conversation_id,
                "status": outcome.state.status,
                "config_id": data.config_id,
                "config_version": outcome.state.config_version,
                "agent_response": None,
                "conversation_state": conversation_state(outcome),
                "created_at": iso(at),
            }

        reply_to = command.message_id if data.initial_message else None
        return await self._run(
            platform, request, conversation_id, command, respond, status=201, new=key is None, reply_to=reply_to
        )

    @post("/conversations/{conversation_id:str}/messages", opt=ANYONE, summary="Continue a conversation")
    async def continue_conversation(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        data: JSONBody[ContinueConversationRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        message_id = str(uuid.uuid4())
        at = now()
        command = c.ReceiveUserMessage(message_id=message_id, content=data.message, attachments=data.attachments, at=at)

        def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            return {
                "conversation_id": conversation_id,
                "product_type": outcome.state.product_type,
                "message_id": message_id,
                "agent_response": None,
                "conversation_state": conversation_state(outcome),
                "updated_at": iso(at),
            }

        return await self._run(
            platform, request, conversation_id, command, respond, message_limit=True, reply_to=message_id
        )

    @post("/conversations/{conversation_id:str}/escalate", opt=ANYONE, status_code=200, summary="Escalate")
    async def escalate(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        data: JSONBody[EscalateRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        escalation_id = str(uuid.uuid4())
        at = now()
        command = c.RequestEscalation(
            escalation_id=escalation_id,
            trigger=data.trigger,
            reason=data.reason,
            urgency=data.urgency,
            requested_by=request.user.subject,
            at=at,
        )

        async def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            return {
                "conversation_id": conversation_id,
                "product_type": outcome.state.product_type,
                "escalation_id": outcome.state.open_escalation or escalation_id,
                "status": "escalated",
                "assigned_agent": None,
                "handoff_summary": await handoff_summary(platform, request.user, conversation_id, outcome),
                "escalated_at": iso(at),
            }

        return await self._run(platform, request, conversation_id, command, respond)

    @post("/conversations/{conversation_id:str}/survey", opt=ANYONE, status_code=200, summary="Send a survey")
    async def survey(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        data: JSONBody[SurveyRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        survey_id = str(uuid.uuid4())
        command = c.SendSurvey(survey_id=survey_id, questions=data.questions, at=now())

        def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            return {
                "conversation_id": conversation_id,
                "product_type": outcome.state.product_type,
                "survey_id": survey_id,
                "status": "sent",
                "agent_message": f"Before we finish, I'd love to get your quick feedback! {data.questions[0].question}",
                "survey_context": {"embedded_in_chat": True, "skippable": True},
            }

        return await self._run(platform, request, conversation_id, command, respond)

    @post(
        "/conversations/{conversation_id:str}/survey/{survey_id:str}/responses",
        opt=ANYONE,
        status_code=200,
        summary="Answer a survey",
    )
    async def answer_survey(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        survey_id: FromPath[str],
        data: JSONBody[SurveyResponsesRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        at = now()
        command = c.AnswerSurvey(survey_id=survey_id, responses=data.responses, at=at)

        def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            answered = next((e for e in outcome.events if isinstance(e, c.SurveyAnswered)), None)
            return {
                "survey_id": survey_id,
                "responses": msgspec.to_builtins(data.responses),
                "nps_score": answered.nps_score if answered else None,
                "nps_category": answered.nps_category if answered else None,
                "stored_at": iso(at),
            }

        return await self._run(platform, request, conversation_id, command, respond)

    @post("/conversations/{conversation_id:str}/close", opt=ANYONE, status_code=200, summary="Close")
    async def close(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        data: JSONBody[CloseRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        command = c.CloseConversation(reason=data.reason, at=now())

        def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            return {"conversation_id": conversation_id, "status": outcome.state.status}

        return await self._run(platform, request, conversation_id, command, respond)

    @post("/conversations/{conversation_id:str}/agent-replies", opt=STAFF, summary="A human agent replies")
    async def agent_reply(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        data: JSONBody[ContinueConversationRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        message_id = str(uuid.uuid4())
        command = c.RecordAgentReply(
            message_id=message_id, content=data.message, author=f"human:{request.user.subject}", at=now()
        )

        def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            return {"conversation_id": conversation_id, "message_id": message_id, "status": outcome.state.status}

        return await self._run(platform, request, conversation_id, command, respond)

    @post(
        "/conversations/{conversation_id:str}/escalations/{escalation_id:str}/resolve",
        opt=STAFF,
        status_code=200,
        summary="Hand back to the AI or close",
    )
    async def resolve(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        escalation_id: FromPath[str],
        data: JSONBody[ResolveRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        command = c.ResolveEscalation(
            escalation_id=escalation_id, resolution=data.resolution, resolved_by=request.user.subject, at=now()
        )

        def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            return {"conversation_id": conversation_id, "escalation_id": escalation_id, "status": outcome.state.status}

        return await self._run(platform, request, conversation_id, command, respond)

    @post("/agents", opt=requires("org_admin", "support_agent"), status_code=201, summary="Register a human agent")
    async def register_agent(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[RegisterAgentRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        agent_id = data.agent_id or str(uuid.uuid4())
        command = p.RegisterHumanAgent(
            agent_id=agent_id, name=data.name, role=data.role, skills=data.skills, capacity=data.capacity, at=now()
        )

        def respond(outcome: Outcome[p.Pool]) -> dict[str, Any]:
            return {"agent_id": agent_id, "name": data.name, "skills": data.skills, "capacity": data.capacity}

        return await self._run(platform, request, p.POOL_ID, command, respond, status=201, aggregate=AGENT_POOL)

    @post("/agents/{agent_id:str}/availability", opt=STAFF, status_code=200, summary="Set availability")
    async def availability(
        self,
        request: Request[Identity, Any, Any],
        agent_id: FromPath[str],
        data: JSONBody[AvailabilityRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        command = p.SetHumanAgentAvailability(agent_id=agent_id, available=data.available, at=now())

        def respond(outcome: Outcome[p.Pool]) -> dict[str, Any]:
            agent = outcome.state.agents[agent_id]
            return {"agent_id": agent_id, "available": agent.available, "active_escalations": len(agent.active)}

        return await self._run(platform, request, p.POOL_ID, command, respond, aggregate=AGENT_POOL)

    @get(
        "/conversations/{conversation_id:str}/events",
        opt=READERS,
        summary="The conversation's events, live (server-sent events)",
    )
    async def events(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        platform: NamedDependency[Platform],
    ) -> ServerSentEvent:
        """Every event so far, then each new one as it is committed: one SSE message per event,
        ``event`` its type, ``id`` its stream sequence and version, ``data`` the event as JSON."""
        stream = StreamId(request.user.tenant, c.AGGREGATE_TYPE, conversation_id)
        live: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)
        subscription = await platform.opened.nc.subscribe(stream.subjects, cb=live.put)
        history = await platform.opened.store.read(stream)
        if not history:
            await subscription.unsubscribe()
            raise NotFoundError(f"conversation {conversation_id} not found")

        async def messages() -> AsyncIterator[ServerSentEventMessage]:
            seen = history[-1].version
            try:
                for recorded in history:
                    yield _sse(recorded)
                while True:
                    msg = await live.get()
                    raw = RawMessage(seq=0, subject=msg.subject, headers=msg.headers or {}, data=msg.data, time="")
                    for recorded in platform.opened.store.decode(raw, stream):
                        if recorded.version > seen:
                            seen = recorded.version
                            yield _sse(recorded)
            finally:
                await subscription.unsubscribe()

        return ServerSentEvent(messages())

    @get("/conversations/{conversation_id:str}", opt=READERS, summary="Get conversation state")
    async def get_conversation(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        platform: NamedDependency[Platform],
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> Response[dict[str, Any]]:
        response = await _read(
            platform, request, min_position, platform.queries.get_conversation, conversation_id, "conversation"
        )
        view = response.content
        view["pii_collected"] = shown_pii(request.user, view["pii_collected"], view["user_id"])
        return response

    @get("/escalations/{escalation_id:str}/status", opt=READERS, summary="Escalation status")
    async def escalation_status(
        self,
        request: Request[Identity, Any, Any],
        escalation_id: FromPath[str],
        platform: NamedDependency[Platform],
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> Response[dict[str, Any]]:
        query = platform.queries.get_escalation_status
        return await _read(platform, request, min_position, query, escalation_id, "escalation")


def _sse(recorded: RecordedEvent) -> ServerSentEventMessage:
    data = msgspec.json.encode({"version": recorded.version, **msgspec.to_builtins(recorded.event)}).decode()
    return ServerSentEventMessage(
        data=data, event=type(recorded.event).__name__, id=f"{recorded.seq}.{recorded.version}"
    )


async def _read(
    platform: Platform,
    request: Request[Identity, Any, Any],
    min_position: int | None,
    query: Any,
    item_id: str,
    what: str,
) -> Response[dict[str, Any]]:
    """A read-model query for the caller's tenant, after waiting (bounded) for a position."""
    reached = await platform.wait_for(min_position or position_header(request))
    async with platform.pool.connection() as conn:
        found = await query(conn, request.user.tenant, item_id)
    if found is None:
        raise NotFoundError(f"{what} {item_id} not found")
    return Response(found, headers={"X-Parley-Position-Reached": "true" if reached else "false"})


def position_header(request: Request[Any, Any, Any]) -> int | None:
    """The position a query must wait for, from the ``X-Parley-Position`` header."""
    value = request.headers.get("X-Parley-Position")
    return int(value) if value and value.isdigit() else None
