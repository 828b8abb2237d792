"""The conversation endpoints of the seed's Agent Orchestration Service.

Each command endpoint: request struct -> command -> runner -> response carrying the
conversation's state and the stream position of its events. Queries read the PostgreSQL read
model, and wait (bounded) for a position given as ``min_position`` or ``X-Parley-Position``.

A customer (a token with no staff role) reaches only the conversations whose user is the token's
subject: anyone else's reads as 404, and a write to it is refused the same way. Personal data is
shown in clear to staff and to the customer it is about, masked to anyone else, in the collected
fields and in the message text alike. Escalation endpoints are in ``gateways.http.escalation``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, JSONBody, ParameterKwarg, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from commands.config import ConfigCatalog
from commands.conversation import conversation_id_for, start_conversation
from commands.runner import CommandRunner, Outcome
from domain import conversation as c
from domain.errors import NotFoundError, PermissionDeniedError, ValidationError
from gateways.http.auth import Identity, requires
from gateways.http.common import (
    STAFF,
    AgentResponse,
    Commands,
    CrossSellOpportunity,
    Links,
    is_customer,
    iso,
    masked,
    new_id,
    now,
    own_conversation,
    position_header,
    require_own,
    sees_pii,
    shown_pii,
    shown_text,
    shown_tool_calls,
)
from gateways.http.fields import Attachments, Context, Id, MinPosition, Name, Text
from gateways.http.limits import StreamSlots
from gateways.http.positions import Positions
from read_models.conversation import ConversationFilter, ConversationPage, ConversationQueries, ConversationView
from streams.store import EventStore, RecordedEvent
from streams.subjects import StreamId, type_subjects

NonEmpty = Name
ANYONE = requires("customer", "support_agent", "supervisor", "org_admin", "service")
READERS = requires("customer", "support_agent", "supervisor", "org_admin", "service", "analyst")
LISTERS = requires("customer", "support_agent", "supervisor", "org_admin", "service", "analyst")

__all__ = ["ConversationController", "iso", "now", "position_header"]
SSE = "text/event-stream"
NO_REPLY_YET = "Accepted; the agent's reply did not come within the wait: poll `links.conversation`"


class StartConversationRequest(msgspec.Struct, forbid_unknown_fields=True):
    config_id: NonEmpty
    channel: NonEmpty
    # A customer starts conversations as themselves: their token's subject (given or not).
    user_id: NonEmpty | None = None
    initial_message: Text | None = None
    context: Context | None = None


class ContinueConversationRequest(msgspec.Struct, forbid_unknown_fields=True):
    message: Text
    attachments: Attachments = []


class SurveyRequest(msgspec.Struct, forbid_unknown_fields=True):
    questions: Annotated[list[c.SurveyQuestion], msgspec.Meta(min_length=1, max_length=20)]


class SurveyResponsesRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The seed's "Survey Response Handling" body: ``survey_id`` and ``responses``; the score and
    category it shows are computed here, so when sent they are accepted and must agree."""

    responses: Annotated[list[c.SurveyAnswer], msgspec.Meta(min_length=1, max_length=20)]
    survey_id: NonEmpty | None = None
    nps_score: int | None = None
    nps_category: str | None = None
    stored_at: str | None = None


class CloseRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: NonEmpty = "completed"


class ConversationState(msgspec.Struct, kw_only=True):
    turn_count: int
    pii_collected: dict[str, str]
    checkpoint_id: str | None = None


class EscalationState(msgspec.Struct, kw_only=True):
    """Where the conversation's open escalation stands: what a customer writing meanwhile is told."""

    escalation_id: str
    status: str
    assigned_agent: dict[str, str] | None
    fallback_option: str | None
    waiting_for_agent: bool
    status_url: str


class StartedResponse(msgspec.Struct, kw_only=True):
    conversation_id: str
    product_type: str
    thread_id: str
    status: str
    config_id: str
    config_version: int
    agent_response: AgentResponse | None = None
    conversation_state: ConversationState
    created_at: str
    position: int = 0
    cross_sell_opportunity: CrossSellOpportunity | msgspec.UnsetType = msgspec.UNSET
    links: Links | msgspec.UnsetType = msgspec.UNSET


class ContinuedResponse(msgspec.Struct, kw_only=True):
    conversation_id: str
    product_type: str
    message_id: str
    status: str
    agent_response: AgentResponse | None = None
    escalation: EscalationState | None
    conversation_state: ConversationState
    updated_at: str
    position: int = 0
    cross_sell_opportunity: CrossSellOpportunity | msgspec.UnsetType = msgspec.UNSET
    links: Links | msgspec.UnsetType = msgspec.UNSET


class SurveyContext(msgspec.Struct):
    embedded_in_chat: bool
    skippable: bool


class SurveySentResponse(msgspec.Struct, kw_only=True):
    conversation_id: str
    product_type: str
    survey_id: str
    status: str
    agent_message: str
    survey_context: SurveyContext
    position: int = 0


class SurveyAnsweredResponse(msgspec.Struct, kw_only=True):
    survey_id: str
    responses: list[c.SurveyAnswer]
    nps_score: int | None
    nps_category: str | None
    stored_at: str
    position: int = 0


class ClosedResponse(msgspec.Struct, kw_only=True):
    conversation_id: str
    status: str
    position: int = 0


def conversation_state(identity: Identity, state: c.Conversation) -> ConversationState:
    return ConversationState(
        turn_count=state.turn_count, pii_collected=shown_pii(identity, state.pii_collected, state.user_id)
    )


def escalation_state(state: c.Conversation) -> EscalationState | None:
    if state.open_escalation is None:
        return None
    agent = (
        {"agent_id": state.assigned_agent, "name": state.assigned_agent_name}
        if state.assigned_agent is not None
        else None
    )
    return EscalationState(
        escalation_id=state.open_escalation,
        status="assigned" if agent else "agent_unavailable" if state.queued else "pending",
        assigned_agent=agent,
        fallback_option=state.fallback,
        waiting_for_agent=agent is None,
        status_url=f"/api/v1/orchestration/escalations/{state.open_escalation}/status",
    )


class ConversationController(Controller):
    path = "/api/v1/orchestration"
    tags = ["conversations"]

    @post(
        "/conversations",
        opt=ANYONE,
        status_code=201,
        summary="Start a conversation",
        responses={202: ResponseSpec(data_container=StartedResponse, description=NO_REPLY_YET)},
    )
    async def start(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[StartConversationRequest],
        commands: NamedDependency[Commands],
        catalog: NamedDependency[ConfigCatalog],
    ) -> Response[StartedResponse]:
        identity = request.user
        user_id = data.user_id
        if is_customer(identity):
            if user_id is not None and user_id != identity.subject:
                raise PermissionDeniedError(
                    "a customer starts conversations as themselves",
                    fields={"user_id": "must be the token's subject (or left out)"},
                )
            user_id = identity.subject
        if user_id is None:
            raise ValidationError("user_id is required", fields={"user_id": "required"})
        key = request.headers.get("Idempotency-Key")
        conversation_id = conversation_id_for(identity.tenant, key)
        at = now()
        command = await start_conversation(
            catalog,
            identity.tenant,
            conversation_id=conversation_id,
            config_id=data.config_id,
            channel=data.channel,
            user_id=user_id,
            context=data.context,
            initial_message=data.initial_message,
            at=at,
        )

        def respond(outcome: Outcome[c.Conversation]) -> StartedResponse:
            return StartedResponse(
                conversation_id=conversation_id,
                product_type=outcome.state.product_type,
                thread_id=conversation_id,
                status=outcome.state.status,
                config_id=data.config_id,
                config_version=outcome.state.config_version,
                conversation_state=conversation_state(identity, outcome.state),
                created_at=iso(at),
            )

        return await commands.run(
            request,
            c.DECIDER,
            conversation_id,
            command,
            respond,
            status=201,
            conversation_id=conversation_id,
            new=key is None,
            reply_to=command.message_id,
        )

    @post(
        "/conversations/{conversation_id:str}/messages",
        opt=ANYONE,
        summary="Continue a conversation",
        responses={202: ResponseSpec(data_container=ContinuedResponse, description=NO_REPLY_YET)},
    )
    async def continue_conversation(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: Id,
        data: JSONBody[ContinueConversationRequest],
        commands: NamedDependency[Commands],
        runner: NamedDependency[CommandRunner],
    ) -> Response[ContinuedResponse]:
        identity = request.user
        await own_conversation(runner, identity, conversation_id)
        message_id = new_id(request, "message")
        at = now()
        command = c.ReceiveUserMessage(message_id=message_id, content=data.message, attachments=data.attachments, at=at)

        def respond(outcome: Outcome[c.Conversation]) -> ContinuedResponse:
            return ContinuedResponse(
                conversation_id=conversation_id,
                product_type=outcome.state.product_type,
                message_id=message_id,
                status=outcome.state.status,
                escalation=escalation_state(outcome.state),
                conversation_state=conversation_state(identity, outcome.state),
                updated_at=iso(at),
            )

        return await commands.run(
            request,
            c.DECIDER,
            conversation_id,
            command,
            respond,
            conversation_id=conversation_id,
            message_limit=True,
            reply_to=message_id,
        )

    @post("/conversations/{conversation_id:str}/survey", opt=ANYONE, status_code=200, summary="Send a survey")
    async def survey(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: Id,
        data: JSONBody[SurveyRequest],
        commands: NamedDependency[Commands],
        runner: NamedDependency[CommandRunner],
    ) -> Response[SurveySentResponse]:
        await own_conversation(runner, request.user, conversation_id)
        survey_id = new_id(request, "survey")
        command = c.SendSurvey(survey_id=survey_id, questions=data.questions, at=now())

        def respond(outcome: Outcome[c.Conversation]) -> SurveySentResponse:
            return SurveySentResponse(
                conversation_id=conversation_id,
                product_type=outcome.state.product_type,
                survey_id=survey_id,
                status="sent",
                agent_message=f"Before we finish, I'd love to get your quick feedback! {data.questions[0].question}",
                survey_context=SurveyContext(embedded_in_chat=True, skippable=True),
            )

        return await commands.run(
            request, c.DECIDER, conversation_id, command, respond, conversation_id=conversation_id
        )

    @post(
        "/conversations/{conversation_id:str}/survey/{survey_id:str}/responses",
        opt=ANYONE,
        status_code=200,
        summary="Answer a survey",
    )
    async def answer_survey(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: Id,
        survey_id: Id,
        data: JSONBody[SurveyResponsesRequest],
        commands: NamedDependency[Commands],
        runner: NamedDependency[CommandRunner],
    ) -> Response[SurveyAnsweredResponse]:
        if data.survey_id is not None and data.survey_id != survey_id:
            raise ValidationError("the body names another survey", fields={"survey_id": "must match the path"})
        return await _answer(request, commands, runner, conversation_id, survey_id, data)

    @post(
        "/conversations/{conversation_id:str}/survey/responses",
        opt=ANYONE,
        status_code=200,
        summary="Answer a survey (the survey named in the body)",
    )
    async def answer_survey_by_body(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: Id,
        data: JSONBody[SurveyResponsesRequest],
        commands: NamedDependency[Commands],
        runner: NamedDependency[CommandRunner],
    ) -> Response[SurveyAnsweredResponse]:
        if data.survey_id is None:
            raise ValidationError("which survey is answered?", fields={"survey_id": "required"})
        return await _answer(request, commands, runner, conversation_id, data.survey_id, data)

    @post("/conversations/{conversation_id:str}/close", opt=ANYONE, status_code=200, summary="Close")
    async def close(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: Id,
        data: JSONBody[CloseRequest],
        commands: NamedDependency[Commands],
        runner: NamedDependency[CommandRunner],
    ) -> Response[ClosedResponse]:
        await own_conversation(runner, request.user, conversation_id)
        command = c.CloseConversation(reason=data.reason, at=now())

        def respond(outcome: Outcome[c.Conversation]) -> ClosedResponse:
            return ClosedResponse(conversation_id=conversation_id, status=outcome.state.status)

        return await commands.run(
            request, c.DECIDER, conversation_id, command, respond, conversation_id=conversation_id
        )

    @get(
        "/conversations/{conversation_id:str}/events",
        opt=READERS,
        summary="The conversation's events, live (server-sent events)",
        media_type=SSE,
    )
    async def events(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: Id,
        store: NamedDependency[EventStore],
        stream_slots: NamedDependency[StreamSlots],
    ) -> ServerSentEvent:
        """Every event so far, then each new one as it is committed: one SSE message per event,
        ``event`` its type, ``id`` its stream sequence and version, ``data`` the event as JSON."""
        identity = request.user
        stream = StreamId(identity.tenant, c.AGGREGATE_TYPE, conversation_id)
        history = await store.read(stream)
        owner = next((e.event.user_id for e in history if isinstance(e.event, c.ConversationStarted)), None)
        if not history or (is_customer(identity) and owner != identity.subject):
            raise NotFoundError(f"conversation {conversation_id} not found")
        stream_slots.take(identity.tenant)
        watch = await store.watch(stream.subjects)
        history = [*history, *(e for e in await store.read(stream, after_seq=history[-1].seq))]  # since watching
        clear = sees_pii(identity, owner)

        async def messages() -> AsyncIterator[ServerSentEventMessage]:
            seen = history[-1].version
            try:
                for recorded in history:
                    yield _sse(recorded, clear)
                async for commit in watch:
                    for recorded in commit:
                        if recorded.version > seen:
                            seen = recorded.version
                            yield _sse(recorded, clear)
            finally:
                await watch.close()
                stream_slots.give_back(identity.tenant)

        return ServerSentEvent(messages())

    @get(
        "/events",
        opt=requires(*STAFF),
        summary="The tenant's conversation events, live (server-sent events)",
        media_type=SSE,
    )
    async def tenant_events(
        self,
        request: Request[Identity, Any, Any],
        store: NamedDependency[EventStore],
        stream_slots: NamedDependency[StreamSlots],
    ) -> ServerSentEvent:
        """Each conversation event of the tenant as it is committed (from now on): what an inbox
        follows. ``event`` its type, ``id`` its stream position, ``data`` the event with its
        ``conversation_id`` and ``version``."""
        tenant = request.user.tenant
        stream_slots.take(tenant)
        watch = await store.watch(type_subjects(c.AGGREGATE_TYPE, tenant))

        async def messages() -> AsyncIterator[ServerSentEventMessage]:
            try:
                yield ServerSentEventMessage(comment="following")
                async for commit in watch:
                    for recorded in commit:
                        yield _sse(recorded, True, conversation_id=recorded.stream.aggregate_id)
            finally:
                await watch.close()
                stream_slots.give_back(tenant)

        return ServerSentEvent(messages())

    @get("/conversations/{conversation_id:str}", opt=READERS, summary="Get conversation state")
    async def get_conversation(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: Id,
        conversations: NamedDependency[ConversationQueries],
        positions: NamedDependency[Positions],
        min_position: MinPosition = None,
    ) -> Response[ConversationView]:
        identity = request.user
        reached = await positions.wait(min_position or position_header(request))
        view = await conversations.get(identity.tenant, conversation_id)
        if view is None:
            raise NotFoundError(f"conversation {conversation_id} not found")
        require_own(identity, view.user_id, f"conversation {conversation_id}")
        return Response(
            shown_view(identity, view), headers={"X-Parley-Position-Reached": "true" if reached else "false"}
        )

    @get("/conversations", opt=LISTERS, summary="List conversations")
    async def list_conversations(
        self,
        request: Request[Identity, Any, Any],
        conversations: NamedDependency[ConversationQueries],
        positions: NamedDependency[Positions],
        status: FromQuery[Literal["active", "escalated", "closed"] | None] = None,
        channel: Annotated[str | None, QueryParameter(max_length=200)] = None,
        config_id: Annotated[str | None, QueryParameter(max_length=200)] = None,
        config_version: Annotated[int | None, QueryParameter(ge=1, le=1_000_000)] = None,
        assigned_agent: Annotated[
            str | None, QueryParameter(max_length=200, description="an agent id, or `me` (the caller)")
        ] = None,
        escalated: FromQuery[bool | None] = None,
        user_id: Annotated[str | None, QueryParameter(max_length=200)] = None,
        start_date: Annotated[str | None, moment_parameter("created at or after (a date or a moment)")] = None,
        end_date: Annotated[str | None, moment_parameter("created before the end of this date (or moment)")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=500)] = None,
        min_position: MinPosition = None,
    ) -> ConversationPage:
        """The tenant's conversations, newest first, a page at a time (``next_cursor`` gives the next).
        A customer sees only their own."""
        identity = request.user
        if is_customer(identity):
            if user_id is not None and user_id != identity.subject:
                raise NotFoundError("no such conversations")
            user_id = identity.subject
        where = ConversationFilter(
            user_id=user_id,
            status=status,
            channel=channel,
            config_id=config_id,
            config_version=config_version,
            assigned_agent=identity.subject if assigned_agent == "me" else assigned_agent,
            escalated=escalated,
            created_from=moment("start_date", start_date),
            created_to=moment("end_date", end_date, end=True),
        )
        if where.created_from and where.created_to and where.created_from >= where.created_to:
            raise ValidationError("the period ends before it starts", fields={"end_date": "must be after start_date"})
        await positions.wait(min_position or position_header(request))
        page = await conversations.list(identity.tenant, where, limit=limit, cursor=cursor)
        if sees_pii(identity, None):
            return page
        return msgspec.structs.replace(
            page,
            conversations=[
                msgspec.structs.replace(
                    s,
                    last_message=msgspec.structs.replace(
                        s.last_message, content=shown_text(identity, s.last_message.content, s.user_id)
                    )
                    if s.last_message is not None
                    else None,
                )
                for s in page.conversations
            ],
        )


async def _answer(
    request: Request[Identity, Any, Any],
    commands: NamedDependency[Commands],
    runner: NamedDependency[CommandRunner],
    conversation_id: str,
    survey_id: str,
    data: SurveyResponsesRequest,
) -> Response[SurveyAnsweredResponse]:
    await own_conversation(runner, request.user, conversation_id)
    at = now()
    command = c.AnswerSurvey(survey_id=survey_id, responses=data.responses, at=at)

    def respond(outcome: Outcome[c.Conversation]) -> SurveyAnsweredResponse:
        answered = next((e for e in outcome.events if isinstance(e, c.SurveyAnswered)), None)
        return SurveyAnsweredResponse(
            survey_id=survey_id,
            responses=data.responses,
            nps_score=answered.nps_score if answered else None,
            nps_category=answered.nps_category if answered else None,
            stored_at=iso(at),
        )

    scores = {a.answer for a in data.responses if isinstance(a.answer, int) and not isinstance(a.answer, bool)}
    if data.nps_score is not None and data.nps_score not in scores:
        raise ValidationError("nps_score is computed from the answers", fields={"nps_score": "not among them"})
    return await commands.run(request, c.DECIDER, conversation_id, command, respond, conversation_id=conversation_id)


def shown_view(identity: Identity, view: ConversationView) -> ConversationView:
    """The conversation as this reader may see it: personal data masked unless theirs to see."""
    if sees_pii(identity, view.user_id) and identity.roles & STAFF:
        return view
    messages = [
        msgspec.structs.replace(
            m,
            content=shown_text(identity, m.content, view.user_id),
            **(
                {"tool_calls": shown_tool_calls(identity, m.tool_calls, view.user_id)}
                if isinstance(m.tool_calls, list)
                else {}
            ),
        )
        for m in view.messages
    ]
    return msgspec.structs.replace(
        view, messages=messages, pii_collected=shown_pii(identity, view.pii_collected, view.user_id)
    )


def moment(field: str, value: str | None, *, end: bool = False) -> datetime | None:
    """A query's date (``2025-10-01``: the whole day) or moment (``2025-10-01T10:00:00Z``), in UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        raise ValidationError(
            f"{field} is not a date", fields={field: "a date (YYYY-MM-DD) or an ISO 8601 moment"}
        ) from None
    if len(value) <= 10:  # a date: from its start, or to its end (the last day there is: its end)
        day = parsed.replace(tzinfo=UTC)
        return (day + timedelta(days=1) if day.date() < date.max else datetime.max.replace(tzinfo=UTC)) if end else day
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# What ``moment`` reads, as the schema states it: a date, or an RFC 3339 moment (from the year 1000).
MOMENT_SCHEMA = {
    "oneOf": [
        {"type": "string", "format": "date", "pattern": "^[1-9][0-9]{3}-"},
        {"type": "string", "format": "date-time", "pattern": "^[1-9][0-9]{3}-"},
        {"type": "null"},
    ]
}


def moment_parameter(description: str) -> ParameterKwarg:
    return QueryParameter(max_length=40, description=description, schema_extra=MOMENT_SCHEMA)


def _sse(recorded: RecordedEvent, clear: bool, **extra: Any) -> ServerSentEventMessage:
    event = msgspec.to_builtins(recorded.event)
    data = msgspec.json.encode({**extra, "version": recorded.version, **(event if clear else masked(event))}).decode()
    return ServerSentEventMessage(
        data=data, event=type(recorded.event).__name__, id=f"{recorded.seq}.{recorded.version}"
    )
