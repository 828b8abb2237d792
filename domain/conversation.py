"""The conversation: Parley's central aggregate, as a pure decider.

``decide(command, state) -> events`` checks the rules; ``evolve(state, event) -> state`` folds
history. Ids and the clock arrive with the command, so both are deterministic. Rules:

* nothing happens to a conversation before it starts, and nothing is said after it closes;
* one open escalation at a time; assignment and resolution name the open one;
* survey answers must match the survey's questions (known ids, allowed options, NPS 0-10);
* card numbers in what a customer writes are masked before they become an event;
* what may hold personal data is sealed under the key of the person it is about: the customer's
  words, context, tool inputs and outputs, escalation reasons under the customer's; a human
  agent's reply twice, in full under the customer's (it is their conversation) and as
  ``agent_text`` under the agent's own (``agent:<id>``), with the customer's email, phone numbers,
  order ids and collected details replaced by ``[customer data]``: erasing the customer leaves
  the agent's words without the customer in them, erasing the agent leaves the customer's copy;
* ``EraseConversation`` (the customer was erased: ``domain.customer``) forgets the personal data
  the state collected; it may come in any state, closed included;
* chat and voice in one log: a call linked to the conversation (``domain.call``) marks it while the
  call is connected (the seed's ``voicebot_session_started`` / ``voicebot_session_ended``); meanwhile
  the chatbot answers nothing (``Conversation.on_call``): what the customer writes goes to the call.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from domain.errors import IllegalStateError, NotFoundError, PermissionDeniedError, ValidationError
from domain.messages import Command, Decider, Event
from domain.pii import EMAIL, ORDER_ID, extract_pii, find_phones, mask_card_numbers

AGGREGATE_TYPE = "conversation"

Status = Literal["active", "escalated", "closed"]
# What a customer waiting for a human may choose instead (the seed's ``callback_options``).
FallbackOption = Literal["continue_with_ai", "schedule_callback", "email_support"]
FALLBACK_OPTIONS: tuple[str, ...] = FallbackOption.__args__  # type: ignore[attr-defined]
CrossSellResponse = Literal["accepted", "declined"]
# Context keys of a started conversation that are personal data worth showing to an agent.
PII_CONTEXT_KEYS = ("customer_id", "email", "phone")
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
    time_field = "started_at"


class UserMessageReceived(Event, frozen=True, kw_only=True):
    message_id: str
    user_id: str
    content: str | None = None
    attachments: list[str] = []
    received_at: datetime

    personal_fields = ("content",)
    data_subject = "user_id"
    time_field = "received_at"


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
    # A human agent's reply: the agent's name as assigned (``author`` is ``human:<agent id>``).
    agent_name: str = ""

    # A human agent's words with the customer's data taken out, sealed under the agent's key.
    agent_text: str | None = None

    # A tool error stays in clear (the tool's own words; analytics counts failures from it).
    personal_fields = ("content", "tool_calls[].input", "tool_calls[].output", "agent_text")
    data_subject = "user_id"
    time_field = "replied_at"

    @property
    def by_human(self) -> bool:
        return self.author.startswith(HUMAN)

    def seal_subject(self, field: str) -> str | None:
        if field == "agent_text" and self.by_human:
            return agent_subject(self.author.removeprefix(HUMAN))
        return self.data_subject_id()


HUMAN = "human:"
CUSTOMER_DATA = "[customer data]"


def human_author(agent_id: str) -> str:
    return f"{HUMAN}{agent_id}"


def agent_subject(agent_id: str) -> str:
    """The data subject a human agent's own words are sealed under (never a customer's id)."""
    return f"agent:{agent_id}"


def without_customer_data(text: str, collected: dict[str, str]) -> str:
    """``text`` with the customer's details it repeats (what the conversation collected, and any
    email, phone number or order id) replaced by ``[customer data]``."""
    for value in sorted(collected.values(), key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, CUSTOMER_DATA)
    text = EMAIL.sub(CUSTOMER_DATA, text)
    for phone in find_phones(text):
        text = text.replace(phone, CUSTOMER_DATA)
    return ORDER_ID.sub(CUSTOMER_DATA, text)


class CrossSellOffered(Event, frozen=True, kw_only=True):
    """The AI offered a product in its reply ``message_id``."""

    message_id: str
    product: str
    suggestion: str
    confidence: float
    offered_at: datetime

    time_field = "offered_at"


class CrossSellAccepted(Event, frozen=True, kw_only=True):
    """The customer said yes to the open offer (``message_id``: the reply that acknowledged it)."""

    message_id: str
    product: str
    accepted_at: datetime

    time_field = "accepted_at"


class CrossSellDeclined(Event, frozen=True, kw_only=True):
    message_id: str
    product: str
    declined_at: datetime

    time_field = "declined_at"


class EscalationRequested(Event, frozen=True, kw_only=True):
    escalation_id: str
    trigger: str
    reason: str | None = None  # None: erased with the customer
    urgency: Urgency = "medium"
    requested_by: str = "user"
    requested_at: datetime
    user_id: str = ""  # the customer (older events: "", their reason in clear)

    personal_fields = ("reason",)
    data_subject = "user_id"
    time_field = "requested_at"


class EscalationAssigned(Event, frozen=True, kw_only=True):
    escalation_id: str
    agent_id: str
    agent_name: str = ""
    assigned_at: datetime

    time_field = "assigned_at"


class EscalationAgentUnavailable(Event, frozen=True, kw_only=True):
    escalation_id: str
    fallback_action: str = "queue_callback"
    queue_position: int | None = None
    at: datetime

    time_field = "at"


class EscalationResolved(Event, frozen=True, kw_only=True):
    escalation_id: str
    resolution: str
    resolved_by: str = ""
    resolved_at: datetime

    time_field = "resolved_at"


class EscalationFallbackChosen(Event, frozen=True, kw_only=True):
    """While no agent was free the customer chose another way: the AI, a callback, or email."""

    escalation_id: str
    option: FallbackOption
    user_id: str
    phone: str | None = None
    email: str | None = None
    preferred_time: str | None = None
    chosen_by: str = "customer"
    chosen_at: datetime

    personal_fields = ("phone", "email", "preferred_time")
    data_subject = "user_id"
    time_field = "chosen_at"


class SurveySent(Event, frozen=True, kw_only=True):
    survey_id: str
    questions: list[SurveyQuestion]
    sent_at: datetime

    time_field = "sent_at"


class SurveyAnswered(Event, frozen=True, kw_only=True):
    survey_id: str
    responses: list[SurveyAnswer]
    nps_score: int | None = None
    nps_category: str | None = None
    answered_at: datetime

    time_field = "answered_at"


class ConversationClosed(Event, frozen=True, kw_only=True):
    reason: str = "completed"
    closed_at: datetime

    time_field = "closed_at"


class ConversationErased(Event, frozen=True, kw_only=True):
    """The customer was erased (``domain.customer``): their key is destroyed, so everything sealed
    under it reads blank from now on, and whatever was derived from it is forgotten too."""

    user_id: str
    erased_at: datetime

    time_field = "erased_at"


class VoicebotSessionStarted(Event, frozen=True, kw_only=True):
    """The seed's ``voicebot_session_started``: a call with the customer, linked to this conversation,
    is connected; the chatbot stays silent (what is written goes to the call) until it ends."""

    call_id: str
    user_id: str
    config_id: str = ""
    config_version: int = 0
    phone_number: str | None = None
    started_at: datetime

    personal_fields = ("phone_number",)
    data_subject = "user_id"
    time_field = "started_at"


class VoicebotSessionEnded(Event, frozen=True, kw_only=True):
    """The seed's ``voicebot_session_ended``: the linked call ended; the chatbot answers again."""

    call_id: str
    user_id: str = ""
    duration_seconds: float = 0.0
    ended_at: datetime

    time_field = "ended_at"


ConversationEvent = (
    ConversationStarted
    | UserMessageReceived
    | AgentReplied
    | EscalationRequested
    | EscalationAssigned
    | EscalationAgentUnavailable
    | EscalationResolved
    | EscalationFallbackChosen
    | CrossSellOffered
    | CrossSellAccepted
    | CrossSellDeclined
    | SurveySent
    | SurveyAnswered
    | ConversationClosed
    | ConversationErased
    | VoicebotSessionStarted
    | VoicebotSessionEnded
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
    # What the customer's message did with the open cross-sell offer.
    cross_sell_response: CrossSellResponse | None = None
    # A supervisor may reply to an escalation assigned to someone else.
    supervisor: bool = False
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
    # The human agent resolving it (None: the platform or a customer's choice); only the assigned
    # agent may, or a supervisor.
    agent_id: str | None = None
    supervisor: bool = False
    at: datetime


class ChooseEscalationFallback(Command, frozen=True, kw_only=True):
    """A waiting customer takes one of the options offered while no agent is free."""

    escalation_id: str
    option: FallbackOption
    phone: str | None = None
    email: str | None = None
    preferred_time: str | None = None
    chosen_by: str = "customer"
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


class EraseConversation(Command, frozen=True, kw_only=True):
    """The conversation's customer was erased: forget what was derived from their data."""

    at: datetime


class StartVoicebotSession(Command, frozen=True, kw_only=True):
    """A linked call was connected (``commands.call``): the chatbot goes silent while it lasts."""

    call_id: str
    config_id: str = ""
    config_version: int = 0
    phone_number: str | None = None
    at: datetime


class EndVoicebotSession(Command, frozen=True, kw_only=True):
    call_id: str
    duration_seconds: float = 0.0
    at: datetime


ConversationCommand = (
    StartConversation
    | ReceiveUserMessage
    | RecordAgentReply
    | RequestEscalation
    | AssignEscalation
    | MarkAgentUnavailable
    | ResolveEscalation
    | ChooseEscalationFallback
    | SendSurvey
    | AnswerSurvey
    | CloseConversation
    | EraseConversation
    | StartVoicebotSession
    | EndVoicebotSession
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
    # The open escalation's human agent, once one is assigned; whether it waits in the queue.
    assigned_agent: str | None = None
    assigned_agent_name: str = ""
    queued: bool = False
    # The fallback the waiting customer chose (a callback or email keeps them in the queue).
    fallback: str | None = None
    surveys: dict[str, Survey] = {}
    # What the customer told us that identifies them (email, phone, order id, ...): the latest of each.
    pii_collected: dict[str, str] = {}
    # The cross-sell offer the customer has not answered yet, and the products already answered.
    open_cross_sell: CrossSellOffer | None = None
    cross_sell_answered: tuple[str, ...] = ()
    # The latest message ids, to recognise a message delivered twice (bounded: state stays small).
    recent_message_ids: tuple[str, ...] = ()
    # Erased with its customer, and nothing said since.
    erased: bool = False
    # The linked call in progress (chat and voice in one log): the chatbot is silent while it lasts.
    on_call: str | None = None


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
        case EraseConversation():
            if not state.started:
                raise NotFoundError("conversation not found")
            if state.erased:
                return []  # erased already, nothing said since
            return [ConversationErased(user_id=state.user_id, erased_at=command.at)]
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
            agent_name, agent_text = "", None
            if command.author.startswith(HUMAN):
                agent_id = command.author.removeprefix(HUMAN)
                _require_human_agent(state, agent_id, command.supervisor)
                agent_name = state.assigned_agent_name if state.assigned_agent == agent_id else ""
                agent_text = without_customer_data(command.content, state.pii_collected)
            replied: list[Event] = [
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
                    agent_name=agent_name,
                    agent_text=agent_text,
                    replied_at=command.at,
                )
            ]
            return replied + _cross_sell_events(state, command)
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
                    user_id=state.user_id,
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
            if command.agent_id is not None:
                _require_human_agent(state, command.agent_id, command.supervisor)
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
        case ChooseEscalationFallback():
            _require_escalation(state, command.escalation_id)
            if state.assigned_agent is not None:
                raise IllegalStateError(
                    f"escalation {command.escalation_id} is already with an agent", escalation_id=command.escalation_id
                )
            fields = {}
            if command.option == "schedule_callback" and not (command.phone or state.pii_collected.get("phone")):
                fields["phone"] = "a callback needs a phone number"
            if command.option == "email_support" and not (command.email or state.pii_collected.get("email")):
                fields["email"] = "email support needs an email address"
            if fields:
                raise ValidationError(f"{command.option} needs contact details", fields=fields)
            chosen: list[Event] = [
                EscalationFallbackChosen(
                    escalation_id=command.escalation_id,
                    option=command.option,
                    user_id=state.user_id,
                    phone=(command.phone or state.pii_collected.get("phone"))
                    if command.option == "schedule_callback"
                    else None,
                    email=(command.email or state.pii_collected.get("email"))
                    if command.option == "email_support"
                    else None,
                    preferred_time=command.preferred_time,
                    chosen_by=command.chosen_by,
                    chosen_at=command.at,
                )
            ]
            if command.option == "continue_with_ai":
                # Back to the AI. A callback or an email keeps the request in the queue: the agent who
                # takes it calls or writes back.
                chosen.append(
                    EscalationResolved(
                        escalation_id=command.escalation_id,
                        resolution="returned_to_ai",
                        resolved_by=f"{command.chosen_by}:{command.option}",
                        resolved_at=command.at,
                    )
                )
            return chosen
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
        case StartVoicebotSession():
            if state.on_call == command.call_id:
                return []  # told twice
            # The latest call is the one in progress (a call whose end was never told gives way).
            return [
                VoicebotSessionStarted(
                    call_id=command.call_id,
                    user_id=state.user_id,
                    config_id=command.config_id,
                    config_version=command.config_version,
                    phone_number=command.phone_number,
                    started_at=command.at,
                )
            ]
        case EndVoicebotSession():
            if state.on_call != command.call_id:
                return []  # ended already, or another call is the one in progress
            return [
                VoicebotSessionEnded(
                    call_id=command.call_id,
                    user_id=state.user_id,
                    duration_seconds=max(0.0, command.duration_seconds),
                    ended_at=command.at,
                )
            ]
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


def _require_human_agent(state: Conversation, agent_id: str, supervisor: bool) -> None:
    """Only the agent the open escalation is assigned to speaks for it, or a supervisor."""
    if state.open_escalation is None:
        raise IllegalStateError(f"conversation {state.conversation_id} has no open escalation")
    if supervisor or state.assigned_agent == agent_id:
        return
    if state.assigned_agent is None:
        raise IllegalStateError(
            f"escalation {state.open_escalation} is waiting for an agent: claim it first",
            escalation_id=state.open_escalation,
        )
    raise PermissionDeniedError(
        f"escalation {state.open_escalation} is assigned to another agent", escalation_id=state.open_escalation
    )


def _cross_sell_events(state: Conversation, command: RecordAgentReply) -> list[Event]:
    """The answer to the open offer, then a new offer: never one already answered or still open."""
    events: list[Event] = []
    offer, answered = state.open_cross_sell, set(state.cross_sell_answered)
    if offer is not None and command.cross_sell_response is not None:
        answered.add(offer.product)
        if command.cross_sell_response == "accepted":
            events.append(
                CrossSellAccepted(message_id=command.message_id, product=offer.product, accepted_at=command.at)
            )
        else:
            events.append(
                CrossSellDeclined(message_id=command.message_id, product=offer.product, declined_at=command.at)
            )
        offer = None
    new = command.cross_sell
    if new is not None and new.product not in answered and (offer is None or offer.product != new.product):
        events.append(
            CrossSellOffered(
                message_id=command.message_id,
                product=new.product,
                suggestion=new.suggestion,
                confidence=new.confidence,
                offered_at=command.at,
            )
        )
    return events


def conversation_pii(context: dict[str, str] | None) -> dict[str, str]:
    """The personal data a conversation's start context carries that an agent may need."""
    context = context or {}
    return {key: context[key] for key in PII_CONTEXT_KEYS if context.get(key)}


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
                pii_collected=conversation_pii(event.context),
            )
        case UserMessageReceived():
            pii = extract_pii(event.content) if event.content else {}
            return replace(
                state,
                turn_count=state.turn_count + 1,
                recent_message_ids=_remember(state, event.message_id),
                pii_collected={**state.pii_collected, **pii} if pii else state.pii_collected,
                erased=False,
            )
        case AgentReplied():
            return replace(state, recent_message_ids=_remember(state, event.message_id), erased=False)
        case ConversationErased():
            return replace(state, pii_collected={}, erased=True)
        case CrossSellOffered():
            offer = CrossSellOffer(product=event.product, suggestion=event.suggestion, confidence=event.confidence)
            return replace(state, open_cross_sell=offer)
        case CrossSellAccepted() | CrossSellDeclined():
            return replace(state, open_cross_sell=None, cross_sell_answered=(*state.cross_sell_answered, event.product))
        case EscalationRequested():
            return replace(
                state,
                status="escalated",
                erased=False,
                open_escalation=event.escalation_id,
                escalations=(*state.escalations, event.escalation_id),
                assigned_agent=None,
                assigned_agent_name="",
                queued=False,
                fallback=None,
            )
        case EscalationAssigned():
            return replace(state, assigned_agent=event.agent_id, assigned_agent_name=event.agent_name, queued=False)
        case EscalationAgentUnavailable():
            return replace(state, queued=True)
        case EscalationFallbackChosen():
            return replace(state, fallback=event.option)
        case EscalationResolved():
            return replace(
                state, status="active", open_escalation=None, assigned_agent=None, assigned_agent_name="", queued=False
            )
        case SurveySent():
            return replace(state, surveys={**state.surveys, event.survey_id: Survey(event.questions)})
        case SurveyAnswered():
            survey = state.surveys[event.survey_id]
            return replace(state, surveys={**state.surveys, event.survey_id: replace(survey, answered=True)})
        case ConversationClosed():
            return replace(
                state,
                status="closed",
                open_escalation=None,
                assigned_agent=None,
                assigned_agent_name="",
                queued=False,
                on_call=None,
            )
        case VoicebotSessionStarted():
            return replace(state, on_call=event.call_id)
        case VoicebotSessionEnded():
            return replace(state, on_call=None if state.on_call == event.call_id else state.on_call)
    return state


RECENT_MESSAGES = 64


def _remember(state: Conversation, message_id: str) -> tuple[str, ...]:
    return (*state.recent_message_ids[-(RECENT_MESSAGES - 1) :], message_id)


# The snapshot schema is 2 since the state collects personal data, the assigned agent and offers; 3
# since it knows it was erased.
DECIDER = Decider(
    type_name=AGGREGATE_TYPE,
    state_type=Conversation,
    initial=initial,
    evolve=evolve,
    decide=decide,
    data_subject=data_subject,
    snapshot_schema=3,
)
