"""The conversation decider, given / when / then."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain import conversation as c
from domain.errors import IllegalStateError, NotFoundError, PermissionDeniedError, ValidationError
from tests.decider import DeciderSpec

T0 = datetime(2025, 10, 11, 10, 0, tzinfo=UTC)
spec = DeciderSpec(c.decide, c.evolve, c.initial())

STARTED = c.ConversationStarted(
    conversation_id="conv-1",
    config_id="cfg-1",
    config_version=3,
    channel="webchat",
    user_id="user-1",
    context={"customer_id": "C12345"},
    started_at=T0,
)
HELLO = c.UserMessageReceived(message_id="m-0", user_id="user-1", content="I want to check my order", received_at=T0)
ESCALATED = c.EscalationRequested(
    escalation_id="esc-1", trigger="user_requested", reason="wants a manager", urgency="high", requested_at=T0
)
CLOSED = c.ConversationClosed(reason="completed", closed_at=T0)
QUESTIONS = [
    c.SurveyQuestion(
        question_id="q1", question="How did you hear about us?", type="single_choice", options=["Google", "Friend"]
    ),
    c.SurveyQuestion(question_id="q2", question="How likely are you to recommend us?", type="nps_scale"),
]
SURVEYED = c.SurveySent(survey_id="s-1", questions=QUESTIONS, sent_at=T0)


def test_starting_a_conversation_pins_its_config_version_and_records_the_first_message() -> None:
    state = (
        spec.given()
        .when(
            c.StartConversation(
                conversation_id="conv-1",
                config_id="cfg-1",
                config_version=3,
                channel="webchat",
                user_id="user-1",
                context={"customer_id": "C12345"},
                initial_message="I want to check my order",
                message_id="m-0",
                at=T0,
            )
        )
        .then(STARTED, HELLO)
    )
    assert (state.config_version, state.turn_count, state.status) == (3, 1, "active")


def test_a_conversation_cannot_start_twice() -> None:
    spec.given(STARTED).when(
        c.StartConversation(
            conversation_id="conv-1", config_id="x", config_version=1, channel="web", user_id="u", at=T0
        )
    ).then_raises(IllegalStateError, match="already exists")


def test_a_message_to_a_conversation_that_never_started_is_not_found() -> None:
    spec.given().when(c.ReceiveUserMessage(message_id="m-1", content="hi", at=T0)).then_raises(NotFoundError)


def test_a_user_message_counts_a_turn_and_the_same_message_twice_counts_once() -> None:
    message = c.ReceiveUserMessage(message_id="m-1", content="My order is ORD-1", at=T0)
    received = c.UserMessageReceived(message_id="m-1", user_id="user-1", content="My order is ORD-1", received_at=T0)
    state = spec.given(STARTED, HELLO).when(message).then(received)
    assert state.turn_count == 2
    spec.given(STARTED, HELLO, received).when(message).then()


def test_no_messages_after_close() -> None:
    spec.given(STARTED, CLOSED).when(c.ReceiveUserMessage(message_id="m-9", content="hello?", at=T0)).then_raises(
        IllegalStateError, match="closed"
    )
    spec.given(STARTED, CLOSED).when(c.RecordAgentReply(message_id="a-9", content="hi", at=T0)).then_raises(
        IllegalStateError
    )


def test_one_open_escalation_at_a_time() -> None:
    request = c.RequestEscalation(escalation_id="esc-2", trigger="urgent", reason="again", at=T0)
    spec.given(STARTED, ESCALATED).when(request).then_raises(IllegalStateError, match="esc-1")
    resolved = c.EscalationResolved(escalation_id="esc-1", resolution="returned_to_ai", resolved_at=T0)
    state = (
        spec.given(STARTED, ESCALATED, resolved)
        .when(request)
        .then(
            c.EscalationRequested(
                escalation_id="esc-2", trigger="urgent", reason="again", requested_at=T0, user_id="user-1"
            )
        )
    )
    assert state.status == "escalated" and state.open_escalation == "esc-2"


def test_assigning_names_the_open_escalation() -> None:
    spec.given(STARTED, ESCALATED).when(
        c.AssignEscalation(escalation_id="esc-1", agent_id="agent-7", agent_name="Sarah Johnson", at=T0)
    ).then(c.EscalationAssigned(escalation_id="esc-1", agent_id="agent-7", agent_name="Sarah Johnson", assigned_at=T0))
    spec.given(STARTED, ESCALATED).when(
        c.AssignEscalation(escalation_id="esc-404", agent_id="agent-7", at=T0)
    ).then_raises(NotFoundError)


def test_resolving_by_closing_closes_the_conversation() -> None:
    state = (
        spec.given(STARTED, ESCALATED)
        .when(c.ResolveEscalation(escalation_id="esc-1", resolution="closed", resolved_by="agent-7", at=T0))
        .then(
            c.EscalationResolved(escalation_id="esc-1", resolution="closed", resolved_by="agent-7", resolved_at=T0),
            c.ConversationClosed(reason="resolved_by_agent", closed_at=T0),
        )
    )
    assert state.status == "closed" and state.open_escalation is None


def test_survey_answers_must_match_its_questions() -> None:
    given = spec.given(STARTED, SURVEYED)
    given.when(
        c.AnswerSurvey(
            survey_id="s-1",
            responses=[c.SurveyAnswer(question_id="q1", answer="Radio"), c.SurveyAnswer(question_id="q2", answer=11)],
            at=T0,
        )
    ).then_raises(
        ValidationError,
        fields={
            "responses[0].answer": "must be one of ['Google', 'Friend']",
            "responses[1].answer": "must be a whole number from 0 to 10",
        },
    )
    given.when(
        c.AnswerSurvey(survey_id="s-1", responses=[c.SurveyAnswer(question_id="q9", answer="x")], at=T0)
    ).then_raises(ValidationError, fields={"responses[0].question_id": "not a question of this survey"})
    spec.given(STARTED).when(
        c.AnswerSurvey(survey_id="s-1", responses=[c.SurveyAnswer(question_id="q1", answer="Google")], at=T0)
    ).then_raises(NotFoundError)


@pytest.mark.parametrize(
    ("score", "category"),
    [(10, "promoter"), (9, "promoter"), (8, "passive"), (7, "passive"), (6, "detractor"), (0, "detractor")],
)
def test_an_nps_answer_is_scored_and_categorised(score: int, category: str) -> None:
    responses = [c.SurveyAnswer(question_id="q1", answer="Google"), c.SurveyAnswer(question_id="q2", answer=score)]
    spec.given(STARTED, SURVEYED).when(c.AnswerSurvey(survey_id="s-1", responses=responses, at=T0)).then(
        c.SurveyAnswered(survey_id="s-1", responses=responses, nps_score=score, nps_category=category, answered_at=T0)
    )


def test_a_survey_is_answered_once() -> None:
    answered = c.SurveyAnswered(
        survey_id="s-1", responses=[c.SurveyAnswer(question_id="q1", answer="Google")], answered_at=T0
    )
    spec.given(STARTED, SURVEYED, answered).when(
        c.AnswerSurvey(survey_id="s-1", responses=[c.SurveyAnswer(question_id="q1", answer="Friend")], at=T0)
    ).then_raises(IllegalStateError)


def test_a_single_choice_question_needs_options() -> None:
    spec.given(STARTED).when(
        c.SendSurvey(
            survey_id="s-2", questions=[c.SurveyQuestion(question_id="q", question="?", type="single_choice")], at=T0
        )
    ).then_raises(ValidationError, fields={"questions[0].options": "a single_choice question needs options"})


def test_a_card_number_a_customer_types_is_masked_before_it_becomes_an_event() -> None:
    events = c.decide(
        c.ReceiveUserMessage(message_id="m-5", content="my card is 4111 1111 1111 1111", at=T0),
        spec.given(STARTED).state,
    )
    (received,) = events
    assert isinstance(received, c.UserMessageReceived)
    assert (
        received.content is not None
        and "4111 1111 1111 1111" not in received.content
        and received.content.endswith("1111")
    )


# Who speaks for an escalation, the customer's fallback choices, cross-sell, what the customer told us

ASSIGNED = c.EscalationAssigned(escalation_id="esc-1", agent_id="sarah", agent_name="Sarah", assigned_at=T0)
QUEUED = c.EscalationAgentUnavailable(escalation_id="esc-1", queue_position=1, at=T0)


def test_the_assigned_agent_replies_in_their_own_name() -> None:
    spec.given(STARTED, ESCALATED, ASSIGNED).when(
        c.RecordAgentReply(message_id="r-1", content="Sarah here.", author="human:sarah", at=T0)
    ).then(
        c.AgentReplied(
            message_id="r-1",
            user_id="user-1",
            content="Sarah here.",
            author="human:sarah",
            agent_name="Sarah",
            agent_text="Sarah here.",
            replied_at=T0,
        )
    )


def test_another_agent_may_not_reply_to_an_escalation_assigned_to_someone_else_but_a_supervisor_may() -> None:
    given = spec.given(STARTED, ESCALATED, ASSIGNED)
    given.when(c.RecordAgentReply(message_id="r-1", content="Tom.", author="human:tom", at=T0)).then_raises(
        PermissionDeniedError, match="assigned to another agent"
    )
    given.when(c.ResolveEscalation(escalation_id="esc-1", resolution="closed", agent_id="tom", at=T0)).then_raises(
        PermissionDeniedError
    )
    given.when(c.RecordAgentReply(message_id="r-2", content="Boss.", author="human:boss", supervisor=True, at=T0)).then(
        c.AgentReplied(
            message_id="r-2", user_id="user-1", content="Boss.", author="human:boss", agent_text="Boss.", replied_at=T0
        )
    )


def test_no_human_replies_before_an_escalation_is_claimed_or_when_there_is_none() -> None:
    spec.given(STARTED, ESCALATED, QUEUED).when(
        c.RecordAgentReply(message_id="r-1", content="Hi", author="human:tom", at=T0)
    ).then_raises(IllegalStateError, match="claim it first")
    spec.given(STARTED).when(c.RecordAgentReply(message_id="r-1", content="Hi", author="human:tom", at=T0)).then_raises(
        IllegalStateError, match="no open escalation"
    )


def test_a_waiting_customer_who_continues_with_the_ai_ends_the_escalation() -> None:
    state = (
        spec.given(STARTED, ESCALATED, QUEUED)
        .when(c.ChooseEscalationFallback(escalation_id="esc-1", option="continue_with_ai", at=T0))
        .then(
            c.EscalationFallbackChosen(
                escalation_id="esc-1", option="continue_with_ai", user_id="user-1", chosen_at=T0
            ),
            c.EscalationResolved(
                escalation_id="esc-1",
                resolution="returned_to_ai",
                resolved_by="customer:continue_with_ai",
                resolved_at=T0,
            ),
        )
    )
    assert (state.status, state.open_escalation, state.fallback) == ("active", None, "continue_with_ai")


def test_a_callback_needs_a_number_and_keeps_the_customer_in_the_queue() -> None:
    given = spec.given(STARTED, ESCALATED, QUEUED)
    given.when(c.ChooseEscalationFallback(escalation_id="esc-1", option="schedule_callback", at=T0)).then_raises(
        ValidationError, fields={"phone": "a callback needs a phone number"}
    )
    state = given.when(
        c.ChooseEscalationFallback(escalation_id="esc-1", option="schedule_callback", phone="+1 555 123 4567", at=T0)
    ).then(
        c.EscalationFallbackChosen(
            escalation_id="esc-1", option="schedule_callback", user_id="user-1", phone="+1 555 123 4567", chosen_at=T0
        )
    )
    assert (state.status, state.open_escalation, state.queued) == ("escalated", "esc-1", True)


def test_the_number_or_address_the_customer_gave_earlier_is_used_for_a_fallback() -> None:
    said = c.UserMessageReceived(message_id="m-1", user_id="user-1", content="mail me: li@example.com", received_at=T0)
    spec.given(STARTED, said, ESCALATED, QUEUED).when(
        c.ChooseEscalationFallback(escalation_id="esc-1", option="email_support", at=T0)
    ).then(
        c.EscalationFallbackChosen(
            escalation_id="esc-1", option="email_support", user_id="user-1", email="li@example.com", chosen_at=T0
        )
    )


def test_no_fallback_once_an_agent_has_the_escalation() -> None:
    spec.given(STARTED, ESCALATED, ASSIGNED).when(
        c.ChooseEscalationFallback(escalation_id="esc-1", option="continue_with_ai", at=T0)
    ).then_raises(IllegalStateError, match="already with an agent")


OFFER = c.CrossSellOffer(product="Premium Shipping", suggestion="Next-day delivery?", confidence=0.8)


def test_a_cross_sell_is_offered_then_accepted_and_never_offered_again() -> None:
    offered = (
        spec.given(STARTED)
        .when(c.RecordAgentReply(message_id="r-1", content="It's on its way.", cross_sell=OFFER, at=T0))
        .then(
            c.AgentReplied(
                message_id="r-1", user_id="user-1", content="It's on its way.", cross_sell=OFFER, replied_at=T0
            ),
            c.CrossSellOffered(
                message_id="r-1",
                product="Premium Shipping",
                suggestion="Next-day delivery?",
                confidence=0.8,
                offered_at=T0,
            ),
        )
    )
    assert offered.open_cross_sell == OFFER
    accepted = (
        spec.given(*spec_events(offered))
        .when(
            c.RecordAgentReply(
                message_id="r-2", content="Added!", cross_sell=OFFER, cross_sell_response="accepted", at=T0
            )
        )
        .then(
            c.AgentReplied(message_id="r-2", user_id="user-1", content="Added!", cross_sell=OFFER, replied_at=T0),
            c.CrossSellAccepted(message_id="r-2", product="Premium Shipping", accepted_at=T0),
        )
    )
    assert accepted.open_cross_sell is None and accepted.cross_sell_answered == ("Premium Shipping",)


def test_a_declined_offer_is_recorded() -> None:
    offer = c.CrossSellOffered(
        message_id="r-1", product="Warranty", suggestion="2 years?", confidence=0.7, offered_at=T0
    )
    spec.given(STARTED, offer).when(
        c.RecordAgentReply(message_id="r-2", content="No problem.", cross_sell_response="declined", at=T0)
    ).then(
        c.AgentReplied(message_id="r-2", user_id="user-1", content="No problem.", replied_at=T0),
        c.CrossSellDeclined(message_id="r-2", product="Warranty", declined_at=T0),
    )


def test_what_the_customer_told_us_is_collected_in_the_state() -> None:
    said = c.UserMessageReceived(
        message_id="m-1", user_id="user-1", content="I'm jo@example.com, order ORD-12345", received_at=T0
    )
    state = spec.given(STARTED, said).state
    assert state.pii_collected == {"customer_id": "C12345", "email": "jo@example.com", "order_id": "ORD-12345"}


def spec_events(state: c.Conversation) -> list[c.Event]:
    """The events that lead to ``state`` in these tests: started, then the open offer."""
    assert state.open_cross_sell is not None
    offer = state.open_cross_sell
    return [
        STARTED,
        c.CrossSellOffered(
            message_id="r-1",
            product=offer.product,
            suggestion=offer.suggestion,
            confidence=offer.confidence,
            offered_at=T0,
        ),
    ]
