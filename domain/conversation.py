"""The conversation: Parley's central aggregate, as a pure decider.

``decide(command, state) -> events`` checks the rules; ``evolve(state, event) -> state`` folds
history. Ids and the clock arrive with the command, so both are deterministic. Rules:

* nothing happens to a conversation before it starts, and nothing is said after it closes;
* one open escalation at a time; assignment and resolution name the open one;
* survey answers must match the survey's questions (known ids, allowed options, NPS 0-10);
* card numbers in what a customer writes are masked before they become an event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from domain.errors import IllegalStateError, NotFoundError, ValidationError
from domain.messages import Command, Event
from domain.pii import mask_card_numbers

AGGREGATE_TYPE = "conversation"

Status = Literal["active", "escalated", "closed"]
Urgency = Literal["low", "medium", "high", "urgent"]
QuestionType = Literal["single_choice", "nps_scale", "free_text"]


# Values ---------------------------------------------------------------------------------------


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    tool: str
    input: dict[str, object] = {}
    output: dict[str, object] | None = None
    execution_time_ms: int | None = None
    error: str | None = None


class CrossSellOffer(msgspec.Struct, frozen=True, kw_only=True):
    product: str
    suggestion: str
    confidence: float


class ProviderFallback(msgspec.Struct, frozen=True, kw_only=True):
    """An LLM provider failed during the turn and the next one answered."""

    from_provider: str
    to_provider: str
    reason: str
    error: str = ""


class SurveyQuestion(msgspec.Struct, frozen=True, kw_only=True):
    question_id: str
    question: str
    type: QuestionType
    options: list[str] | None = None


class SurveyAnswer(msgspec.Struct, frozen=True, kw_only=True):
    question_id: str
    answer: str | int


# Events ---------------------------------------------------------------------------------------


class ConversationStarted(Event, frozen=True, kw_only=True):
    conversation_id: str
    config_id: str
    config_version: int
    channel: str
    user_id: str
    product_type: str = "chatbot"
    context: dict[str, str] | None = None
    started_at: datetime

    personal_fields = ("context",)
    data_subject = "user_id"


class UserMessageReceived(Event, frozen=True, kw_only=True):
    message_id: str
    user_id: str
    content: str | None = None
    attachments: list[str] = []
    received_at: datetime

    personal_fields = ("content",)
    data_subject = "user_id"


class AgentReplied(Event, frozen=True, kw_only=True):
    message_id: str
    user_id: str
    content: str | None = None
    intent: str | None = None
    confidence: float | None = None
    tool_calls: list[ToolCall] = []
    escalation_suggested: bool = False
    sentiment: float | None = None
    replied_at: datetime
    # Who answered: the AI, or a human agent's id during an escalation.
    author: str = "ai"
    provider: str | None = None
    fallbacks: list[ProviderFallback] = []
    cross_sell: CrossSellOffer | None = None

    personal_fields = ("content",)
    data_subject = "user_id"


class EscalationRequested(Event, frozen=True, kw_only=True):
    escalation_id: str
    trigger: str
    reason: str
    urgency: Urgency = "medium"
    requested_by: str = "user"
    requested_at: datetime


class EscalationAssigned(Event, frozen=True, kw_only=True):
    escalation_id: str
    agent_id: str
    agent_name: str = ""
    assigned_at: datetime


class EscalationAgentUnavailable(Event, frozen=True, kw_only=True):
    escalation_id: str
    fallback_action: str = "queue_callback"
    queue_position: int | None = None
    at: datetime


class EscalationResolved(Event, frozen=True, kw_only=True):
    escalation_id: str
    resolution: str
    resolved_by: str = ""
    resolved_at: datetime


class SurveySent(Event, frozen=True, kw_only=True):
    survey_id: str
    questions: list[SurveyQuestion]
    sent_at: datetime


class SurveyAnswered(Event, frozen=True, kw_only=True):
    survey_id: str
    responses: list[SurveyAnswer]
    nps_score: int | None = None
    nps_category: str | None = None
    answered_at: datetime


class ConversationClosed(Event, frozen=True, kw_only=True):
    reason: str = "completed"
    closed_at: datetime


ConversationEvent = (
    ConversationStarted
    | UserMessageReceived
    | AgentReplied
    | EscalationRequested
    | EscalationAssigned
    | EscalationAgentUnavailable
    | EscalationResolved
    | SurveySent
    | SurveyAnswered
    | ConversationClosed
)


# Commands -------------------------------------------------------------------------------------


class StartConversation(Command, frozen=True, kw_only=True):
    conversation_id: str
    config_id: str
    config_version: int
    channel: str
    user_id: str
    product_type: str = "chatbot"
    context: dict[str, str] | None = None
    initial_message: str | None = None
    message_id: str | None = None
    at: datetime


class ReceiveUserMessage(Command, frozen=True, kw_only=True):
    message_id: str
    content: str
    attachments: list[str] = []
    at: datetime


class RecordAgentReply(Command, frozen=True, kw_only=True):
    message_id: str
    content: str
    intent: str | None = None
    confidence: float | None = None
    tool_calls: list[ToolCall] = []
    escalation_suggested: bool = False
    sentiment: float | None = None
    author: str = "ai"
    provider: str | None = None
    fallbacks: list[ProviderFallback] = []
    cross_sell: CrossSellOffer | None = None
    at: datetime


class RequestEscalation(Command, frozen=True, kw_only=True):
    escalation_id: str
    trigger: str
    reason: str
    urgency: Urgency = "medium"
    requested_by: str = "user"
    at: datetime


class AssignEscalation(Command, frozen=True, kw_only=True):
    escalation_id: str
    agent_id: str
    agent_name: str = ""
    at: datetime


class MarkAgentUnavailable(Command, frozen=True, kw_only=True):
    escalation_id: str
    fallback_action: str = "queue_callback"
    queue_position: int | None = None
    at: datetime


class ResolveEscalation(Command, frozen=True, kw_only=True):
    """Hand the conversation back to the AI (``returned_to_ai``) or close it (``closed``)."""

    escalation_id: str
    resolution: Literal["returned_to_ai", "closed"]
    resolved_by: str = ""
    at: datetime


class SendSurvey(Command, frozen=True, kw_only=True):
    survey_id: str
    questions: list[SurveyQuestion]
    at: datetime


class AnswerSurvey(Command, frozen=True, kw_only=True):
    survey_id: str
    responses: list[SurveyAnswer]
    at: datetime


class CloseConversation(Command, frozen=True, kw_only=True):
    reason: str = "completed"
    at: datetime


ConversationCommand = (
    StartConversation
    | ReceiveUserMessage
    | RecordAgentReply
    | RequestEscalation
    | AssignEscalation
    | MarkAgentUnavailable
    | ResolveEscalation
    | SendSurvey
    | AnswerSurvey
    | CloseConversation
)


# State ----------------------------------------------------------------------------------------


class Survey(msgspec.Struct, frozen=True):
    questions: list[SurveyQuestion]
    answered: bool = False


class Conversation(msgspec.Struct, frozen=True):
    started: bool = False
    conversation_id: str = ""
    config_id: str = ""
    config_version: int = 0
    product_type: str = "chatbot"
    channel: str = ""
    user_id: str = ""
    status: Status = "active"
    turn_count: int = 0
    open_escalation: str | None = None
    escalations: tuple[str, ...] = ()
    surveys: dict[str, Survey] = {}
    # The latest message ids, to recognise a message delivered twice (bounded: state stays small).
    recent_message_ids: tuple[str, ...] = ()


INITIAL = Conversation()


def initial() -> Conversation:
    return INITIAL


def data_subject(state: Conversation) -> str | None:
    return state.user_id or None


# Decide ---------------------------------------------------------------------------------------


def decide(command: Command, state: Conversation) -> list[Event]:
    match command:
        case StartConversation():
            if state.started:
                raise IllegalStateError(f"conversation {state.conversation_id} already exists")
            events: list[Event] = [
                ConversationStarted(
                    conversation_id=command.conversation_id,
                    config_id=command.config_id,
                    config_version=command.config_version,
                    channel=command.channel,
                    user_id=command.user_id,
                    product_type=command.product_type,
                    context=command.context,
                    started_at=command.at,
                )
            ]
            if command.initial_message:
                events.append(
                    UserMessageReceived(
                        message_id=command.message_id or f"{command.conversation_id}-0",
                        user_id=command.user_id,
                        content=mask_card_numbers(command.initial_message),
                        received_at=command.at,
                    )
                )
            return events
    _require_open(state)
    match command:
        case ReceiveUserMessage():
            if command.message_id in state.recent_message_ids:
                return []  # the same message delivered twice
            return [
                UserMessageReceived(
                    message_id=command.message_id,
                    user_id=state.user_id,
                    content=mask_card_numbers(command.content),
                    attachments=command.attachments,
                    received_at=command.at,
                )
            ]
        case RecordAgentReply():
            if command.message_id in state.recent_message_ids:
                return []
            return [
                AgentReplied(
                    message_id=command.message_id,
                    user_id=state.user_id,
                    content=command.content,
                    intent=command.intent,
                    confidence=command.confidence,
                    tool_calls=command.tool_calls,
                    escalation_suggested=command.escalation_suggested,
                    sentiment=command.sentiment,
                    author=command.author,
                    provider=command.provider,
                    fallbacks=command.fallbacks,
                    cross_sell=command.cross_sell,
                    replied_at=command.at,
                )
            ]
        case RequestEscalation():
            if state.open_escalation is not None:
                raise IllegalStateError(
                    f"escalation {state.open_escalation} is still open", escalation_id=state.open_escalation
                )
            return [
                EscalationRequested(
                    escalation_id=command.escalation_id,
                    trigger=command.trigger,
                    reason=command.reason,
                    urgency=command.urgency,
                    requested_by=command.requested_by,
                    requested_at=command.at,
                )
            ]
        case AssignEscalation():
            _require_escalation(state, command.escalation_id)
            return [
                EscalationAssigned(
                    escalation_id=command.escalation_id,
                    agent_id=command.agent_id,
                    agent_name=command.agent_name,
                    assigned_at=command.at,
                )
            ]
        case MarkAgentUnavailable():
            _require_escalation(state, command.escalation_id)
            return [
                EscalationAgentUnavailable(
                    escalation_id=command.escalation_id,
                    fallback_action=command.fallback_action,
                    queue_position=command.queue_position,
                    at=command.at,
                )
            ]
        case ResolveEscalation():
            _require_escalation(state, command.escalation_id)
            resolved: list[Event] = [
                EscalationResolved(
                    escalation_id=command.escalation_id,
                    resolution=command.resolution,
                    resolved_by=command.resolved_by,
                    resolved_at=command.at,
                )
            ]
            if command.resolution == "closed":
                resolved.append(ConversationClosed(reason="resolved_by_agent", closed_at=command.at))
            return resolved
        case SendSurvey():
            if command.survey_id in state.surveys:
                raise IllegalStateError(f"survey {command.survey_id} was already sent")
            _check_questions(command.questions)
            return [SurveySent(survey_id=command.survey_id, questions=command.questions, sent_at=command.at)]
        case AnswerSurvey():
            survey = state.surveys.get(command.survey_id)
            if survey is None:
                raise NotFoundError(f"survey {command.survey_id} was not sent in this conversation")
            if survey.answered:
                raise IllegalStateError(f"survey {command.survey_id} was already answered")
            score = _check_answers(survey.questions, command.responses)
            return [
                SurveyAnswered(
                    survey_id=command.survey_id,
                    responses=command.responses,
                    nps_score=score,
                    nps_category=nps_category(score),
                    answered_at=command.at,
                )
            ]
        case CloseConversation():
            return [ConversationClosed(reason=command.reason, closed_at=command.at)]
    raise ValidationError(f"{type(command).__name__} is not a conversation command")


def _require_open(state: Conversation) -> None:
    if not state.started:
        raise NotFoundError("conversation not found")
    if state.status == "closed":
        raise IllegalStateError(f"conversation {state.conversation_id} is closed")


def _require_escalation(state: Conversation, escalation_id: str) -> None:
    if escalation_id not in state.escalations:
        raise NotFoundError(f"escalation {escalation_id} not found")
    if state.open_escalation != escalation_id:
        raise IllegalStateError(f"escalation {escalation_id} is not open", escalation_id=escalation_id)


def _check_questions(questions: list[SurveyQuestion]) -> None:
    fields: dict[str, str] = {}
    if not questions:
        fields["questions"] = "a survey needs at least one question"
    seen: set[str] = set()
    for i, q in enumerate(questions):
        if q.question_id in seen:
            fields[f"questions[{i}].question_id"] = "duplicate question id"
        seen.add(q.question_id)
        if q.type == "single_choice" and not q.options:
            fields[f"questions[{i}].options"] = "a single_choice question needs options"
    if fields:
        raise ValidationError("invalid survey", fields=fields)


def _check_answers(questions: list[SurveyQuestion], responses: list[SurveyAnswer]) -> int | None:
    by_id = {q.question_id: q for q in questions}
    fields: dict[str, str] = {}
    seen: set[str] = set()
    score: int | None = None
    for i, r in enumerate(responses):
        q = by_id.get(r.question_id)
        where = f"responses[{i}].answer"
        if q is None:
            fields[f"responses[{i}].question_id"] = "not a question of this survey"
            continue
        if r.question_id in seen:
            fields[f"responses[{i}].question_id"] = "answered twice"
        seen.add(r.question_id)
        if q.type == "single_choice" and r.answer not in (q.options or []):
            fields[where] = f"must be one of {q.options}"
        elif q.type == "nps_scale":
            if not isinstance(r.answer, int) or isinstance(r.answer, bool) or not 0 <= r.answer <= 10:
                fields[where] = "must be a whole number from 0 to 10"
            else:
                score = r.answer
        elif q.type == "free_text" and not isinstance(r.answer, str):
            fields[where] = "must be text"
    if not responses:
        fields["responses"] = "at least one answer"
    if fields:
        raise ValidationError("survey answers do not match its questions", fields=fields)
    return score


def nps_category(score: int | None) -> str | None:
    if score is None:
        return None
    return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"


# Evolve ---------------------------------------------------------------------------------------


def evolve(state: Conversation, event: Event) -> Conversation:
    replace = msgspec.structs.replace
    match event:
        case ConversationStarted():
            return replace(
                state,
                started=True,
                conversation_id=event.conversation_id,
                config_id=event.config_id,
                config_version=event.config_version,
                product_type=event.product_type,
                channel=event.channel,
                user_id=event.user_id,
                status="active",
            )
        case UserMessageReceived():
            return replace(
                state, turn_count=state.turn_count + 1, recent_message_ids=_remember(state, event.message_id)
            )
        case AgentReplied():
            return replace(state, recent_message_ids=_remember(state, event.message_id))
        case EscalationRequested():
            return replace(
                state,
                status="escalated",
                open_escalation=event.escalation_id,
                escalations=(*state.escalations, event.escalation_id),
            )
        case EscalationResolved():
            return replace(state, status="active", open_escalation=None)
        case SurveySent():
            return replace(state, surveys={**state.surveys, event.survey_id: Survey(event.questions)})
        case SurveyAnswered():
            survey = state.surveys[event.survey_id]
            return replace(state, surveys={**state.surveys, event.survey_id: replace(survey, answered=True)})
        case ConversationClosed():
            return replace(state, status="closed", open_escalation=None)
    return state


RECENT_MESSAGES = 64


def _remember(state: Conversation, message_id: str) -> tuple[str, ...]:
    return (*state.recent_message_ids[-(RECENT_MESSAGES - 1) :], message_id)
