"""The escalation endpoints: asking for a human, the queue, the human agents and their replies.

- A customer (or staff) escalates a conversation; the response names the agent assigned by the same
  request, or the place in the queue. While waiting, the customer may choose another way
  (``continue_with_ai``, ``schedule_callback``, ``email_support``), here or by saying so in chat.
- Support agents work the queue: list it, claim an escalation, reply, hand back to the AI or close.
  Only the agent an escalation is assigned to speaks for it, or a supervisor (``supervisor``,
  ``org_admin``, ``service``). A support agent is the human agent whose id is their token's subject.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from commands.escalation import Escalations, HandoffSummary
from commands.runner import CommandRunner, Outcome
from domain import conversation as c
from domain import escalation as p
from domain.errors import NotFoundError, PermissionDeniedError
from gateways.http.auth import Identity, requires
from gateways.http.common import (
    STAFF,
    Commands,
    is_customer,
    is_supervisor,
    iso,
    masked,
    new_id,
    now,
    own_conversation,
    position_header,
    require_own,
    sees_pii,
    shown_pii,
)
from gateways.http.fields import Id, MinPosition, Name, Note, Text
from gateways.http.limits import Limits
from gateways.http.positions import Positions
from read_models.escalation import AgentList, AssignedAgent, EscalationPage, EscalationQueries, EscalationStatusView

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


class EscalatedResponse(msgspec.Struct, kw_only=True):
    conversation_id: str
    product_type: str
    escalation_id: str
    status: str
    assigned_agent: AssignedAgent | None
    queue_position: int | None
    handoff_summary: HandoffSummary
    escalated_at: str
    position: int = 0


class FallbackChosenResponse(msgspec.Struct, kw_only=True):
    escalation_id: str
    conversation_id: str
    option: str
    status: str
    escalation_status: str
    position: int = 0


class ClaimedResponse(msgspec.Struct, kw_only=True):
    escalation_id: str
    status: str
    assigned_agent: AssignedAgent
    position: int = 0


class AgentRepliedResponse(msgspec.Struct, kw_only=True):
    conversation_id: str
    message_id: str
    role: str
    agent: dict[str, str]
    status: str
    position: int = 0


class ResolvedResponse(msgspec.Struct, kw_only=True):
    conversation_id: str
    escalation_id: str
    status: str
    position: int = 0


class AgentRegisteredResponse(msgspec.Struct, kw_only=True):
    agent_id: str
    name: str
    role: str
    skills: list[str]
    capacity: int
    position: int = 0


class AvailabilityResponse(msgspec.Struct, kw_only=True):
    agent_id: str
    available: bool
    active_escalations: int
    position: int = 0


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
        conversation_id: Id,
        data: JSONBody[EscalateRequest],
        commands: NamedDependency[Commands],
        runner: NamedDependency[CommandRunner],
        escalations: NamedDependency[Escalations],
    ) -> Response[EscalatedResponse]:
        identity = request.user
        await own_conversation(runner, identity, conversation_id)
        escalation_id = new_id(request, "escalation")
        at = now()
        command = c.RequestEscalation(
            escalation_id=escalation_id,
            trigger=data.trigger,
            reason=data.reason,
            urgency=data.urgency,
            requested_by=identity.subject,
            at=at,
        )

        async def respond(outcome: Outcome[c.Conversation]) -> EscalatedResponse:
            state = outcome.state
            opened = state.open_escalation or escalation_id
            assignment = await escalations.route(
                identity.tenant,
                opened,
                conversation_id,
                skill=data.skill,
                correlation_id=request.state.get("request_id"),
            )
            summary = handoff_for(identity, await escalations.handoff_summary(identity.tenant, conversation_id), state)
            assigned = None
            if assignment.agent_id is not None:
                assigned = AssignedAgent(
                    agent_id=assignment.agent_id,
                    name=assignment.agent_name,
                    role=assignment.agent_role or "Support Agent",
                )
            return EscalatedResponse(
                conversation_id=conversation_id,
                product_type=state.product_type,
                escalation_id=opened,
                status="escalated",
                assigned_agent=assigned,
                queue_position=assignment.queue_position,
                handoff_summary=summary,
                escalated_at=iso(at),
                position=assignment.position,
            )

        return await commands.run(
            request, c.DECIDER, conversation_id, command, respond, conversation_id=conversation_id
        )

    @get("/escalations/{escalation_id:str}/status", opt=READERS, summary="Escalation status")
    async def escalation_status(
        self,
        request: Request[Identity, Any, Any],
        escalation_id: Id,
        escalation_queries: NamedDependency[EscalationQueries],
        positions: NamedDependency[Positions],
        min_position: MinPosition = None,
    ) -> Response[EscalationStatusView]:
        identity = request.user
        reached = await positions.wait(min_position or position_header(request), "conversations", "escalation")
        view = await escalation_queries.status(identity.tenant, escalation_id)
        if view is None:
            raise NotFoundError(f"escalation {escalation_id} not found")
        require_own(identity, view.user_id, f"escalation {escalation_id}")
        return Response(view, headers={"X-Parley-Position-Reached": "true" if reached else "false"})

    @get("/escalations", opt=READERS, summary="The escalation queue and its history")
    async def list_escalations(
        self,
        request: Request[Identity, Any, Any],
        escalation_queries: NamedDependency[EscalationQueries],
        positions: NamedDependency[Positions],
        status: Annotated[
            Literal["queued", "assigned", "open", "resolved"] | None,
            QueryParameter(description="queued: waiting for an agent; open: queued or assigned"),
        ] = None,
        agent_id: Annotated[str | None, QueryParameter(max_length=200, description="an agent id, or `me`")] = None,
        skill: Annotated[str | None, QueryParameter(max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=500)] = None,
        min_position: MinPosition = None,
    ) -> EscalationPage:
        """Escalations oldest first, as they are worked: each with its wait, skill and place in the queue.
        A customer sees only their own."""
        identity = request.user
        await positions.wait(min_position or position_header(request), "conversations", "escalation")
        page = await escalation_queries.list(
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
        escalation_id: Id,
        data: JSONBody[FallbackRequest],
        commands: NamedDependency[Commands],
        runner: NamedDependency[CommandRunner],
        escalation_queries: NamedDependency[EscalationQueries],
    ) -> Response[FallbackChosenResponse]:
        """While no agent is free: go on with the AI, book a callback, or take it to email."""
        identity = request.user
        conversation_id = await _conversation_of(runner, escalation_queries, identity, escalation_id)
        command = c.ChooseEscalationFallback(
            escalation_id=escalation_id,
            option=data.option,
            phone=data.phone,
            email=data.email,
            preferred_time=data.preferred_time,
            chosen_by="customer" if is_customer(identity) else f"staff:{identity.subject}",
            at=now(),
        )

        def respond(outcome: Outcome[c.Conversation]) -> FallbackChosenResponse:
            return FallbackChosenResponse(
                escalation_id=escalation_id,
                conversation_id=conversation_id,
                option=data.option,
                status=outcome.state.status,
                escalation_status="resolved" if outcome.state.open_escalation is None else "agent_unavailable",
            )

        return await commands.run(
            request, c.DECIDER, conversation_id, command, respond, conversation_id=conversation_id
        )

    @post("/escalations/{escalation_id:str}/claim", opt=WORKERS, status_code=200, summary="Take from the queue")
    async def claim(
        self,
        request: Request[Identity, Any, Any],
        escalation_id: Id,
        data: JSONBody[ClaimRequest],
        escalations: NamedDependency[Escalations],
        limits: NamedDependency[Limits],
    ) -> ClaimedResponse:
        identity = request.user
        agent_id = _agent_id(identity, data.agent_id)
        await limits.take([limits.tenant_bucket(identity.tenant)])
        assignment = await escalations.claim(
            identity.tenant, escalation_id, agent_id, correlation_id=request.state.get("request_id")
        )
        return ClaimedResponse(
            escalation_id=escalation_id,
            status="assigned",
            assigned_agent=AssignedAgent(agent_id=agent_id, name=assignment.agent_name, role=assignment.agent_role),
            position=assignment.position,
        )

    @post("/conversations/{conversation_id:str}/agent-replies", opt=WORKERS, summary="A human agent replies")
    async def agent_reply(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: Id,
        data: JSONBody[AgentReplyRequest],
        commands: NamedDependency[Commands],
    ) -> Response[AgentRepliedResponse]:
        identity = request.user
        message_id = new_id(request, "reply")
        command = c.RecordAgentReply(
            message_id=message_id,
            content=data.message,
            author=c.human_author(identity.subject),
            supervisor=is_supervisor(identity),
            at=now(),
        )

        def respond(outcome: Outcome[c.Conversation]) -> AgentRepliedResponse:
            return AgentRepliedResponse(
                conversation_id=conversation_id,
                message_id=message_id,
                role="agent",
                agent={"agent_id": identity.subject, "name": outcome.state.assigned_agent_name},
                status=outcome.state.status,
            )

        return await commands.run(
            request, c.DECIDER, conversation_id, command, respond, conversation_id=conversation_id
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
        conversation_id: Id,
        escalation_id: Id,
        data: JSONBody[ResolveRequest],
        commands: NamedDependency[Commands],
    ) -> Response[ResolvedResponse]:
        identity = request.user
        command = c.ResolveEscalation(
            escalation_id=escalation_id,
            resolution=data.resolution,
            resolved_by=identity.subject,
            agent_id=identity.subject,
            supervisor=is_supervisor(identity),
            at=now(),
        )

        def respond(outcome: Outcome[c.Conversation]) -> ResolvedResponse:
            return ResolvedResponse(
                conversation_id=conversation_id, escalation_id=escalation_id, status=outcome.state.status
            )

        return await commands.run(
            request, c.DECIDER, conversation_id, command, respond, conversation_id=conversation_id
        )

    @post("/agents", opt=WORKERS, status_code=201, summary="Register a human agent")
    async def register_agent(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[RegisterAgentRequest],
        commands: NamedDependency[Commands],
    ) -> Response[AgentRegisteredResponse]:
        identity = request.user
        # A support agent registers themself (their id is their token's subject); a supervisor anyone.
        if is_supervisor(identity):
            agent_id = data.agent_id or new_id(request, "agent")
        else:
            agent_id = _agent_id(identity, data.agent_id)
        command = p.RegisterHumanAgent(
            agent_id=agent_id, name=data.name, role=data.role, skills=data.skills, capacity=data.capacity, at=now()
        )

        def respond(outcome: Outcome[p.Pool]) -> AgentRegisteredResponse:
            return AgentRegisteredResponse(
                agent_id=agent_id, name=data.name, role=data.role, skills=data.skills, capacity=data.capacity
            )

        return await commands.run(request, p.DECIDER, p.POOL_ID, command, respond, status=201)

    @post("/agents/{agent_id:str}/availability", opt=WORKERS, status_code=200, summary="Set availability")
    async def availability(
        self,
        request: Request[Identity, Any, Any],
        agent_id: Id,
        data: JSONBody[AvailabilityRequest],
        commands: NamedDependency[Commands],
    ) -> Response[AvailabilityResponse]:
        _agent_id(request.user, agent_id)
        command = p.SetHumanAgentAvailability(agent_id=agent_id, available=data.available, at=now())

        def respond(outcome: Outcome[p.Pool]) -> AvailabilityResponse:
            agent = outcome.state.agents[agent_id]
            return AvailabilityResponse(
                agent_id=agent_id, available=agent.available, active_escalations=len(agent.active)
            )

        return await commands.run(request, p.DECIDER, p.POOL_ID, command, respond)

    @get("/agents", opt=requires("analyst", *STAFF), summary="The human agents, their availability and load")
    async def list_agents(
        self,
        request: Request[Identity, Any, Any],
        escalation_queries: NamedDependency[EscalationQueries],
        positions: NamedDependency[Positions],
        min_position: MinPosition = None,
    ) -> AgentList:
        await positions.wait(min_position or position_header(request), "escalation")
        return await escalation_queries.agents(request.user.tenant)


def handoff_for(identity: Identity, summary: HandoffSummary, state: c.Conversation) -> HandoffSummary:
    """The hand-off summary as this reader may see it."""
    if sees_pii(identity, state.user_id):
        return summary
    return msgspec.structs.replace(
        summary,
        conversation_history=masked(summary.conversation_history),
        pii_collected=shown_pii(identity, summary.pii_collected, state.user_id),
    )


async def _conversation_of(
    runner: NamedDependency[CommandRunner], queries: EscalationQueries, identity: Identity, escalation_id: str
) -> str:
    """The escalation's conversation: from the pool while it is routed or queued, else the read model."""
    pool = await runner.repository(p.DECIDER).load(identity.tenant, p.POOL_ID, trust_cache=True)
    if (conversation_id := pool.state.conversations.get(escalation_id)) is not None:
        await own_conversation(runner, identity, conversation_id)
        return conversation_id
    view = await queries.status(identity.tenant, escalation_id)
    if view is None:
        raise NotFoundError(f"escalation {escalation_id} not found")
    require_own(identity, view.user_id, f"escalation {escalation_id}")
    return view.conversation_id


__all__ = ["EscalationController"]
