"""The human agent pool decider, given / when / then."""

from __future__ import annotations

from datetime import UTC, datetime

from domain import escalation as p
from tests.decider import DeciderSpec

T0 = datetime(2025, 10, 11, 10, 0, tzinfo=UTC)
spec = DeciderSpec(p.decide, p.evolve, p.initial())


def agent(agent_id: str, skills: list[str], capacity: int = 2) -> list[p.Event]:
    return [
        p.HumanAgentRegistered(agent_id=agent_id, name=agent_id.title(), skills=skills, capacity=capacity, at=T0),
        p.HumanAgentAvailabilitySet(agent_id=agent_id, available=True, at=T0),
    ]


def routed(esc: str, agent_id: str) -> p.EscalationRouted:
    return p.EscalationRouted(escalation_id=esc, conversation_id=f"c-{esc}", agent_id=agent_id, at=T0)


def test_an_escalation_goes_to_the_least_loaded_available_agent_with_the_skill() -> None:
    given = spec.given(*agent("sarah", ["billing"]), *agent("omar", ["billing", "refunds"]), routed("e1", "sarah"))
    given.when(p.RouteEscalation(escalation_id="e2", conversation_id="c-e2", skill="billing", at=T0)).then(
        routed("e2", "omar")
    )
    given.when(p.RouteEscalation(escalation_id="e3", conversation_id="c-e3", skill="refunds", at=T0)).then(
        routed("e3", "omar")
    )


def test_with_nobody_free_the_escalation_waits_in_the_queue_and_the_next_free_agent_takes_it() -> None:
    busy = spec.given(*agent("sarah", [], capacity=1), routed("e1", "sarah"))
    state = busy.when(p.RouteEscalation(escalation_id="e2", conversation_id="c-e2", at=T0)).then(
        p.EscalationQueued(escalation_id="e2", conversation_id="c-e2", position=1, at=T0)
    )
    assert p.queue_position(state, "e2") == 1
    queued = p.EscalationQueued(escalation_id="e2", conversation_id="c-e2", position=1, at=T0)
    spec.given(*agent("sarah", [], capacity=1), routed("e1", "sarah"), queued).when(
        p.ReleaseEscalation(escalation_id="e1", at=T0)
    ).then(p.HumanAgentReleased(escalation_id="e1", agent_id="sarah", at=T0), routed("e2", "sarah"))


def test_an_agent_coming_online_takes_the_oldest_waiting_escalation() -> None:
    offline = [p.HumanAgentRegistered(agent_id="lee", name="Lee", capacity=1, at=T0)]
    queued = p.EscalationQueued(escalation_id="e9", conversation_id="c-e9", position=1, at=T0)
    spec.given(*offline, queued).when(p.SetHumanAgentAvailability(agent_id="lee", available=True, at=T0)).then(
        p.HumanAgentAvailabilitySet(agent_id="lee", available=True, at=T0), routed("e9", "lee")
    )


def test_routing_the_same_escalation_twice_does_nothing() -> None:
    spec.given(*agent("sarah", []), routed("e1", "sarah")).when(
        p.RouteEscalation(escalation_id="e1", conversation_id="c-e1", at=T0)
    ).then()


def test_closing_a_conversation_frees_its_agent_for_the_next_in_the_queue() -> None:
    queued = p.EscalationQueued(escalation_id="e2", conversation_id="c-e2", position=1, at=T0)
    spec.given(*agent("sarah", [], capacity=1), routed("e1", "sarah"), queued).when(
        p.ReleaseConversation(conversation_id="c-e1", at=T0)
    ).then(p.HumanAgentReleased(escalation_id="e1", agent_id="sarah", at=T0), routed("e2", "sarah"))
    spec.given(*agent("sarah", [])).when(p.ReleaseConversation(conversation_id="c-none", at=T0)).then()


def test_an_agent_claims_a_waiting_escalation_even_beyond_capacity() -> None:
    queued = p.EscalationQueued(escalation_id="e2", conversation_id="c-e2", position=1, at=T0)
    given = spec.given(*agent("sarah", [], capacity=1), routed("e1", "sarah"), queued)
    state = given.when(p.ClaimEscalation(escalation_id="e2", agent_id="sarah", at=T0)).then(
        p.EscalationRouted(escalation_id="e2", conversation_id="c-e2", agent_id="sarah", claimed=True, at=T0)
    )
    assert p.queue_position(state, "e2") is None and state.routed["e2"] == "sarah"


def test_a_claim_of_an_escalation_not_waiting_or_by_a_stranger_is_refused() -> None:
    from domain.errors import IllegalStateError, NotFoundError

    given = spec.given(*agent("sarah", []), *agent("tom", []), routed("e1", "sarah"))
    given.when(p.ClaimEscalation(escalation_id="e1", agent_id="tom", at=T0)).then_raises(IllegalStateError)
    given.when(p.ClaimEscalation(escalation_id="e1", agent_id="sarah", at=T0)).then()
    given.when(p.ClaimEscalation(escalation_id="e9", agent_id="tom", at=T0)).then_raises(NotFoundError)
    given.when(p.ClaimEscalation(escalation_id="e1", agent_id="nobody", at=T0)).then_raises(NotFoundError)
