"""Escalation use cases: route a conversation's escalation to the tenant's human agents, and the
hand-off summary an agent reads on taking over.

``Escalations.route`` is the one way an escalation reaches the pool, for the API (so the escalate
response names the agent assigned by the same request) and for the agent runtime (which routes the
escalations the AI raised, and is the safety net for any the API did not finish). Every command it
sends has an id derived from the escalation, so routing twice, from two processes or after a
crash, assigns once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from commands.conversation import CONVERSATION
from commands.runner import CommandContext, CommandRunner, Outcome
from domain import conversation as c
from domain import escalation as p
from domain.errors import IllegalStateError, NotFoundError
from domain.escalation import DECIDER as AGENT_POOL
from domain.messages import Command
from streams.store import EventStore, RecordedEvent
from streams.subjects import StreamId

ROUTER = "agent:router"

# What a human agent is told the conversation is about, from the last tool the AI used.
ISSUE_CATEGORIES = {
    "fetch_order_status": "order_inquiry",
    "send_tracking_email": "order_inquiry",
    "initiate_refund": "refund",
    "create_support_ticket": "support_ticket",
    "schedule_callback": "callback",
}


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    """Where routing left an escalation: with an agent, or waiting in the queue."""

    escalation_id: str
    agent_id: str | None = None
    agent_name: str = ""
    agent_role: str = ""
    queue_position: int | None = None
    position: int = 0  # stream position of the conversation's commit that says so (0: none written)


class HandoffSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's ``handoff_summary``."""

    conversation_history: str
    pii_collected: dict[str, str]
    tools_used: list[str]
    sentiment_score: float | None
    issue_category: str


def route_command_id(escalation_id: str) -> str:
    return f"route-{escalation_id}"


def assign_command_id(escalation_id: str, agent_id: str) -> str:
    return f"assign-{escalation_id}-{agent_id}"


def unavailable_command_id(escalation_id: str) -> str:
    return f"unavailable-{escalation_id}"


class Escalations:
    def __init__(self, runner: CommandRunner, store: EventStore, *, pool_runner: CommandRunner | None = None) -> None:
        self.runner = runner
        # The pool is one aggregate per tenant that many escalations touch at once: retry longer.
        self.pool_runner = pool_runner or runner.with_attempts(20)
        self.store = store

    async def route(
        self,
        tenant: str,
        escalation_id: str,
        conversation_id: str,
        *,
        skill: str | None = None,
        correlation_id: str | None = None,
        at: datetime | None = None,
    ) -> Assignment:
        """Send the escalation to the least-loaded fitting agent, or queue it, and tell the conversation."""
        at = at or datetime.now(UTC)
        route = p.RouteEscalation(escalation_id=escalation_id, conversation_id=conversation_id, skill=skill, at=at)
        pooled = await self.pool_runner.handle(
            AGENT_POOL, p.POOL_ID, route, self._ctx(tenant, route_command_id(escalation_id), correlation_id)
        )
        pool = pooled.state
        agent_id = pool.routed.get(escalation_id)
        if agent_id is not None:
            agent = pool.agents.get(agent_id)
            name, role = (agent.name, agent.role) if agent else ("", "")
            told = await self.assign(tenant, conversation_id, escalation_id, agent_id, name, correlation_id, at)
            return Assignment(
                escalation_id=escalation_id, agent_id=agent_id, agent_name=name, agent_role=role, position=told
            )
        position = p.queue_position(pool, escalation_id)
        if position is not None:
            unavailable = c.MarkAgentUnavailable(
                escalation_id=escalation_id, fallback_action="queue_callback", queue_position=position, at=at
            )
            outcome = await self._conversation(
                tenant, conversation_id, unavailable, unavailable_command_id(escalation_id), correlation_id
            )
            return Assignment(
                escalation_id=escalation_id, queue_position=position, position=outcome.position if outcome else 0
            )
        return Assignment(escalation_id=escalation_id)

    async def assign(
        self,
        tenant: str,
        conversation_id: str,
        escalation_id: str,
        agent_id: str,
        agent_name: str,
        correlation_id: str | None = None,
        at: datetime | None = None,
    ) -> int:
        """Tell the conversation who has its escalation (nothing if it was resolved or closed meanwhile);
        the position of the commit that says so (0: none)."""
        assign = c.AssignEscalation(
            escalation_id=escalation_id, agent_id=agent_id, agent_name=agent_name, at=at or datetime.now(UTC)
        )
        outcome = await self._conversation(
            tenant, conversation_id, assign, assign_command_id(escalation_id, agent_id), correlation_id
        )
        return outcome.position if outcome is not None else 0

    async def claim(
        self, tenant: str, escalation_id: str, agent_id: str, *, correlation_id: str | None = None
    ) -> Assignment:
        """An agent takes a waiting escalation from the queue."""
        at = datetime.now(UTC)
        claim = p.ClaimEscalation(escalation_id=escalation_id, agent_id=agent_id, at=at)
        pooled = await self.pool_runner.handle(
            AGENT_POOL, p.POOL_ID, claim, self._ctx(tenant, f"claim-{escalation_id}-{agent_id}", correlation_id)
        )
        agent = pooled.state.agents[agent_id]
        conversation_id = pooled.state.conversations[escalation_id]
        told = await self.assign(tenant, conversation_id, escalation_id, agent_id, agent.name, correlation_id, at)
        return Assignment(
            escalation_id=escalation_id,
            agent_id=agent_id,
            agent_name=agent.name,
            agent_role=agent.role,
            position=told,
        )

    async def handoff_summary(self, tenant: str, conversation_id: str, upto: int | None = None) -> HandoffSummary:
        """What a human agent needs on taking over, from the conversation's events."""
        events = await self.store.read(StreamId(tenant, c.AGGREGATE_TYPE, conversation_id))
        return handoff_summary([e for e in events if upto is None or e.version <= upto])

    async def _conversation(
        self, tenant: str, conversation_id: str, command: Command, command_id: str, correlation_id: str | None
    ) -> Outcome[c.Conversation] | None:
        try:
            return await self.runner.handle(
                CONVERSATION, conversation_id, command, self._ctx(tenant, command_id, correlation_id)
            )
        except (IllegalStateError, NotFoundError):  # resolved or closed meanwhile: nothing to tell it
            return None

    @staticmethod
    def _ctx(tenant: str, command_id: str, correlation_id: str | None) -> CommandContext:
        return CommandContext(
            tenant=tenant, actor=ROUTER, command_id=command_id, correlation_id=correlation_id, retry_possible=True
        )


def handoff_summary(events: Sequence[RecordedEvent]) -> HandoffSummary:
    """The summary of a conversation's history: its last turns, personal data, tools and mood."""
    state = c.initial()
    said: list[str] = []
    tools: list[str] = []
    sentiment: float | None = None
    for recorded in events:
        event = recorded.event
        state = c.evolve(state, event)
        match event:
            case c.UserMessageReceived(content=content) if content:
                said.append(f"user: {content}")
            case c.AgentReplied(content=content) as reply:
                if content:
                    said.append(f"{'agent' if reply.by_human else 'assistant'}: {content}")
                tools += [call.tool for call in reply.tool_calls]
                if reply.sentiment is not None:
                    sentiment = reply.sentiment
    return HandoffSummary(
        conversation_history=" | ".join(said[-6:]),
        pii_collected=dict(state.pii_collected),
        tools_used=tools,
        sentiment_score=sentiment,
        issue_category=next((ISSUE_CATEGORIES[t] for t in reversed(tools) if t in ISSUE_CATEGORIES), "general"),
    )
