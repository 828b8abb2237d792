"""The escalation endpoints: asking for a human, the queue, the human agents and their replies.

- A customer (or staff) escalates a conversation; the response names the agent assigned by the same
  request, or the place in the queue. While waiting, the customer may choose another way
  (``continue_with_ai``, ``schedule_callback``, ``email_support``), here or by saying so in chat.
- Support agents work the queue: list it, claim an escalation, reply, hand back to the AI or close.
  Only the agent an escalation is assigned to speaks for it, or a supervisor (``supervisor``,
  ``org_admin``, ``service``). A support agent is the human agent whose id is their token's subject.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from commands.conversation import CONVERSATION
from commands.runner import Outcome
from domain import conversation as c
from domain import escalation as p
from domain.errors import NotFoundError, PermissionDeniedError
from domain.escalation import DECIDER as AGENT_POOL
from gateways.http.auth import Identity, requires
from gateways.http.common import (
    STAFF,
    is_customer,
    is_supervisor,
    iso,
    masked,
    now,
    own_conversation,
    position_header,
    require_own,
    run_command,
    sees_pii,
    shown_pii,
    to_body,
)
from gateways.http.fields import Name, Note, Text
from gateways.http.platform import Platform
from read_models.escalation import AgentList, EscalationPage

NonEmpty = Name
Phone = Annotated[str, msgspec.Meta(pattern=r"^\+?[\d\s().-]{7,25}$")]
Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$", max_length=254)]
ANYONE = requires("customer", *STAFF)
READERS = requires("customer", "analyst", *STAFF)
WORKERS = requires("support_agent", "supervisor", "org_admin", "service")
ADMINS = requires("supervisor", "org_admin", "service")


class EscalateRequest(msgspec.Struct, forbid_unknown_fields=True):
    trigger: NonEmpty
    reason: Note = ""
    urgency: Literal["low", "medium", "high", "urgent"] = "medium"
    skill: NonEmpty | None = None  # routes to an agent with this skill


class FallbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    option: Literal["continue_with_ai", "schedule_callback", "email_support"]
    phone: Phone | None = None
    email: Email | None = None
    preferred_time: Name | None = None


class ClaimRequest(msgspec.Struct, forbid_unknown_fields=True):
    agent_id: NonEmpty | None = None  # a supervisor may hand it to someone; an agent claims it for themselves


class AgentReplyRequest(msgspec.Struct, forbid_unknown_fields=True):
    message: Text


class ResolveRequest(msgspec.Struct, forbid_unknown_fields=True):
    resolution: Literal["returned_to_ai", "closed"] = "returned_to_ai"


class RegisterAgentRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: NonEmpty
    agent_id: NonEmpty | None = None
    role: NonEmpty = "Support Agent"
    skills: list[NonEmpty] = []
    capacity: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3


class AvailabilityRequest(msgspec.Struct, forbid_unknown_fields=True):
    available: bool


def _agent_id(identity: Identity, given: str | None) -> str:
    """Whom an agent command is about: a supervisor names anyone; a support agent is themself."""
    if given is None or given == identity.subject:
        return identity.subject
    if not is_supervisor(identity):
        raise PermissionDeniedError("a support agent acts for themself only", fields={"agent_id": "not yours"})
    return given


class EscalationController(Controller):
    path = "/api/v1/orchestration"
    tags = ["escalations"]

    @post("/conversations/{conversation_id:str}/escalate", opt=ANYONE, status_code=200, summary="Escalate")
    async def escalate(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        data: JSONBody[EscalateRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        identity = request.user
        await own_conversation(platform, identity, conversation_id)
        escalation_id = str(uuid.uuid4())
        at = now()
        command = c.RequestEscalation(
            escalation_id=escalation_id,
            trigger=data.trigger,
            reason=data.reason,
            urgency=data.urgency,
            requested_by=identity.subject,
            at=at,
        )

        async def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            state = outcome.state
            opened = state.open_escalation or escalation_id
            assignment = await platform.escalations.route(
                identity.tenant,
                opened,
                conversation_id,
                skill=data.skill,
                correlation_id=request.state.get("request_id"),
            )
            summary = await platform.escalations.handoff_summary(identity.tenant, conversation_id)
            clear = sees_pii(identity, state.user_id)
            assigned = None
            if assignment.agent_id is not None:
                assigned = {
                    "agent_id": assignment.agent_id,
                    "name": assignment.agent_name,
                    "role": assignment.agent_role or "Support Agent",
                    "status": "available",
                    "estimated_response_time": "2 minutes",
                }
            return {
                "conversation_id": conversation_id,
                "product_type": state.product_type,
                "escalation_id": opened,
                "status": "escalated",
                "assigned_agent": assigned,
                "queue_position": assignment.queue_position,
                "handoff_summary": {
                    "conversation_history": summary.conversation_history
                    if clear
                    else masked(summary.conversation_history),
                    "pii_collected": shown_pii(identity, summary.pii_collected, state.user_id),
                    "tools_used": summary.tools_used,
                    "sentiment_score": summary.sentiment_score,
                    "issue_category": summary.issue_category,
                },
                "escalated_at": iso(at),
                "position": assignment.position,
            }

        return await run_command(
            platform, request, CONVERSATION, conversation_id, command, respond, conversation_id=conversation_id
        )

    @get("/escalations/{escalation_id:str}/status", opt=READERS, summary="Escalation status")
    async def escalation_status(
        self,
        request: Request[Identity, Any, Any],
        escalation_id: FromPath[str],
        platform: NamedDependency[Platform],
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> Response[dict[str, Any]]:
        identity = request.user
        reached = await platform.wait_for(min_position or position_header(request), "conversations", "escalation")
        async with platform.pool.connection() as conn:
            view = await platform.escalation_queries.get_escalation_status(conn, identity.tenant, escalation_id)
        if view is None:
            raise NotFoundError(f"escalation {escalation_id} not found")
        require_own(identity, view.user_id, f"escalation {escalation_id}")
        return Response(to_body(view), headers={"X-Parley-Position-Reached": "true" if reached else "false"})

    @get("/escalations", opt=READERS, summary="The escalation queue and its history")
    async def list_escalations(
        self,
        request: Request[Identity, Any, Any],
        platform: NamedDependency[Platform],
        status: Annotated[
            Literal["queued", "assigned", "open", "resolved"] | None,
            QueryParameter(description="queued: waiting for an agent; open: queued or assigned"),
        ] = None,
        agent_id: Annotated[str | None, QueryParameter(max_length=200, description="an agent id, or `me`")] = None,
        skill: Annotated[str | None, QueryParameter(max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=500)] = None,
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> EscalationPage:
        """Escalations oldest first, as they are worked: each with its wait, skill and place in the queue.
        A customer sees only their own."""
        identity = request.user
        await platform.wait_for(min_position or position_header(request), "conversations", "escalation")
        async with platform.pool.connection() as conn:
            page = await platform.escalation_queries.list_escalations(
                conn,
                identity.tenant,
                state=status,
                agent_id=identity.subject if agent_id == "me" else agent_id,
                skill=skill,
                user_id=identity.subject if is_customer(identity) else None,
                limit=limit,
                cursor=cursor,
            )
        if sees_pii(identity, None):
            return page
        return msgspec.structs.replace(
            page, escalations=[msgspec.structs.replace(e, reason=masked(e.reason)) for e in page.escalations]
        )

    @post("/escalations/{escalation_id:str}/fallback", opt=ANYONE, status_code=200, summary="Choose a fallback")
    async def choose_fallback(
        self,
        request: Request[Identity, Any, Any],
        escalation_id: FromPath[str],
        data: JSONBody[FallbackRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        """While no agent is free: go on with the AI, book a callback, or take it to email."""
        identity = request.user
        conversation_id = await self._conversation_of(platform, identity, escalation_id)
        command = c.ChooseEscalationFallback(
            escalation_id=escalation_id,
            option=data.option,
            phone=data.phone,
            email=data.email,
            preferred_time=data.preferred_time,
            chosen_by="customer" if is_customer(identity) else f"staff:{identity.subject}",
            at=now(),
        )

        def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            return {
                "escalation_id": escalation_id,
                "conversation_id": conversation_id,
                "option": data.option,
                "status": outcome.state.status,
                "escalation_status": "resolved" if outcome.state.open_escalation is None else "agent_unavailable",
            }

        return await run_command(
            platform, request, CONVERSATION, conversation_id, command, respond, conversation_id=conversation_id
        )

    @post("/escalations/{escalation_id:str}/claim", opt=WORKERS, status_code=200, summary="Take from the queue")
    async def claim(
        self,
        request: Request[Identity, Any, Any],
        escalation_id: FromPath[str],
        data: JSONBody[ClaimRequest],
        platform: NamedDependency[Platform],
    ) -> dict[str, Any]:
        identity = request.user
        agent_id = _agent_id(identity, data.agent_id)
        await platform.limits.take([platform.limits.tenant_bucket(identity.tenant)])
        assignment = await platform.escalations.claim(
            identity.tenant, escalation_id, agent_id, correlation_id=request.state.get("request_id")
        )
        return {
            "escalation_id": escalation_id,
            "status": "assigned",
            "assigned_agent": {"agent_id": agent_id, "name": assignment.agent_name, "role": assignment.agent_role},
            "position": assignment.position,
        }

    @post("/conversations/{conversation_id:str}/agent-replies", opt=WORKERS, summary="A human agent replies")
    async def agent_reply(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        data: JSONBody[AgentReplyRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        identity = request.user
        message_id = str(uuid.uuid4())
        command = c.RecordAgentReply(
            message_id=message_id,
            content=data.message,
            author=c.human_author(identity.subject),
            supervisor=is_supervisor(identity),
            at=now(),
        )

        def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            return {
                "conversation_id": conversation_id,
                "message_id": message_id,
                "role": "agent",
                "agent": {"agent_id": identity.subject, "name": outcome.state.assigned_agent_name},
                "status": outcome.state.status,
            }

        return await run_command(
            platform, request, CONVERSATION, conversation_id, command, respond, conversation_id=conversation_id
        )

    @post(
        "/conversations/{conversation_id:str}/escalations/{escalation_id:str}/resolve",
        opt=WORKERS,
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
        identity = request.user
        command = c.ResolveEscalation(
            escalation_id=escalation_id,
            resolution=data.resolution,
            resolved_by=identity.subject,
            agent_id=identity.subject,
            supervisor=is_supervisor(identity),
            at=now(),
        )

        def respond(outcome: Outcome[c.Conversation]) -> dict[str, Any]:
            return {"conversation_id": conversation_id, "escalation_id": escalation_id, "status": outcome.state.status}

        return await run_command(
            platform, request, CONVERSATION, conversation_id, command, respond, conversation_id=conversation_id
        )

    @post("/agents", opt=WORKERS, status_code=201, summary="Register a human agent")
    async def register_agent(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[RegisterAgentRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        identity = request.user
        # A support agent registers themself (their id is their token's subject); a supervisor anyone.
        if is_supervisor(identity):
            agent_id = data.agent_id or str(uuid.uuid4())
        else:
            agent_id = _agent_id(identity, data.agent_id)
        command = p.RegisterHumanAgent(
            agent_id=agent_id, name=data.name, role=data.role, skills=data.skills, capacity=data.capacity, at=now()
        )

        def respond(outcome: Outcome[p.Pool]) -> dict[str, Any]:
            return {
                "agent_id": agent_id,
                "name": data.name,
                "role": data.role,
                "skills": data.skills,
                "capacity": data.capacity,
            }

        return await run_command(platform, request, AGENT_POOL, p.POOL_ID, command, respond, status=201)

    @post("/agents/{agent_id:str}/availability", opt=WORKERS, status_code=200, summary="Set availability")
    async def availability(
        self,
        request: Request[Identity, Any, Any],
        agent_id: FromPath[str],
        data: JSONBody[AvailabilityRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        _agent_id(request.user, agent_id)
        command = p.SetHumanAgentAvailability(agent_id=agent_id, available=data.available, at=now())

        def respond(outcome: Outcome[p.Pool]) -> dict[str, Any]:
            agent = outcome.state.agents[agent_id]
            return {"agent_id": agent_id, "available": agent.available, "active_escalations": len(agent.active)}

        return await run_command(platform, request, AGENT_POOL, p.POOL_ID, command, respond)

    @get("/agents", opt=requires("analyst", *STAFF), summary="The human agents, their availability and load")
    async def list_agents(
        self,
        request: Request[Identity, Any, Any],
        platform: NamedDependency[Platform],
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> AgentList:
        await platform.wait_for(min_position or position_header(request), "escalation")
        async with platform.pool.connection() as conn:
            return await platform.escalation_queries.list_agents(conn, request.user.tenant)

    async def _conversation_of(self, platform: Platform, identity: Identity, escalation_id: str) -> str:
        """The escalation's conversation: from the pool while it is routed or queued, else the read model."""
        pool = await platform.runner.repository(AGENT_POOL).load(identity.tenant, p.POOL_ID, trust_cache=True)
        if (conversation_id := pool.state.conversations.get(escalation_id)) is not None:
            await own_conversation(platform, identity, conversation_id)
            return conversation_id
        async with platform.pool.connection() as conn:
            view = await platform.escalation_queries.get_escalation_status(conn, identity.tenant, escalation_id)
        if view is None:
            raise NotFoundError(f"escalation {escalation_id} not found")
        require_own(identity, view.user_id, f"escalation {escalation_id}")
        return view.conversation_id


__all__ = ["EscalationController"]
