"""Call use cases: place and take calls, record what is said and done on them, transfer, end.

``CallService`` is what the Voice API, the Twilio bridge and the voice worker share:

- ``initiate`` (outbound) asks the tenant's voice line to admit the call (do-not-call list, hourly
  quota, concurrent cap, daily budget), pins the config's active version, records the call, and
  dials it through the telephony port (LiveKit SIP). A refusal is recorded on the call's own stream
  before the 4xx/429 is raised.
- ``answer`` (inbound) does the same for a call that rang in (the Twilio bridge, a SIP dispatch).
- ``record`` runs any call command with an id derived from its cause (an utterance id, a tool call
  id), so a retry records once.
- ``transfer`` finds a human of the tenant's agent pool (the one named, or the pool's choice),
  records the request before acting, then connects (or fails) through the telephony port: cold
  moves the caller at once, hot and warm first give the human the ``call_summary``.
- ``end`` records the end with its cost (the line's unit prices), frees the line and the human.
- ``history`` is the call turn by turn: each thing the caller said (or typed), the config version
  that governed the answer (pinned to the call) beside the version active at that moment, the
  tools run and the agent's replies, each with its place in the call's stream.

Chat and voice in one log. A call started with a ``conversation_id`` is linked to that chat
conversation: it must be the tenant's, open, and the same customer's (the call's personal data is
then sealed under that customer's key, so erasing them shreds the call too). Nothing is linked by
guesswork: a customer may have several conversations, and a phone number is no proof of which one
they mean. Once the call is connected the conversation is told (``StartVoicebotSession``, the seed's
``voicebot_session_started``) and the chatbot stays silent; what the customer writes meanwhile is
shared with the call (``ChatbotDataShared``, by ``agents.runtime``); when the call ends the
conversation is told again (``EndVoicebotSession``) and the chatbot answers again. Both are
commands with ids derived from the call, sent whenever its connection or end is recorded (a
retry tells again, once). ``timeline`` is the conversation's chat and voice turns interleaved.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol

import msgspec
import structlog

from commands.audit import active_versions
from commands.config import ConfigCatalog
from commands.runner import CommandContext, CommandRunner, Outcome
from domain import call as v
from domain import config as a
from domain import conversation as c
from domain import escalation as p
from domain.errors import IllegalStateError, NotFoundError, ValidationError
from domain.escalation import DECIDER as AGENT_POOL
from domain.messages import Command
from streams.store import EventStore, RecordedEvent
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

CALL = v.DECIDER
VOICE_LINE = v.LINE_DECIDER

ACTOR = "voice:platform"


def now() -> datetime:
    return datetime.now(UTC)


def number_digest(tenant: str, phone_number: str) -> str:
    """A number as the do-not-call list keeps it: digits only, hashed with the tenant."""
    digits = "".join(ch for ch in phone_number if ch.isdigit())
    return hashlib.sha256(f"{tenant}:{digits}".encode()).hexdigest()[:32]


def caller_subject(tenant: str, phone_number: str | None, context: dict[str, str] | None) -> str:
    """Whose personal data a call holds: the customer id when known, else a pseudonym of the number."""
    if context and context.get("customer_id"):
        return context["customer_id"]
    if phone_number:
        return "caller-" + number_digest(tenant, phone_number)[:20]
    return "caller-unknown"


class Dialed(msgspec.Struct, frozen=True, kw_only=True):
    sip_session_id: str
    room_name: str
    participant_identity: str


class Connected(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    reason: str = ""
    sip_status: str | None = None


class Telephony(Protocol):
    """How calls reach the phone network (``gateways.telephony``)."""

    async def dial(self, tenant: str, call_id: str, phone_number: str, caller_id: str | None) -> Dialed: ...

    async def transfer(
        self, tenant: str, call: v.Call, transfer: v.TransferRequested, target: str, summary: str
    ) -> Connected: ...


class TransferTarget(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str | None
    name: str
    role: str
    target: str | None


class CallSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's ``call_summary``."""

    transcript: str
    pii_collected: dict[str, str]
    tools_used: list[str]


class CallTurnTool(msgspec.Struct, frozen=True, kw_only=True):
    tool_call_id: str
    tool: str
    ok: bool
    error: str | None = None
    execution_time_ms: int | None = None
    seq: int


class CallTurnReply(msgspec.Struct, frozen=True, kw_only=True):
    utterance_id: str
    text: str | None
    provider: str | None
    interrupted: bool
    e2e_latency_ms: float | None
    at: datetime
    seq: int
    version: int


class CallTurn(msgspec.Struct, frozen=True, kw_only=True):
    """What the caller said (turn 0: what the agent said before, its greeting) and what answered it."""

    turn: int
    utterance_id: str | None
    source: str | None  # speech, dtmf
    text: str | None
    confidence: float | None
    at: datetime
    seq: int | None
    version: int | None
    actor: str | None
    command_id: str | None
    config_id: str
    config_version: int  # pinned to the call at its start: the version that governed this turn
    active_config_version: int | None  # the config's active version at that moment (None: unknown)
    tools: list[CallTurnTool]
    replies: list[CallTurnReply]


class CallHistory(msgspec.Struct, frozen=True, kw_only=True):
    call_id: str
    config_id: str
    config_version: int
    status: str
    version: int
    turns: list[CallTurn]
    conversation_id: str | None = None  # the chat conversation the call is linked to


class TimelineTurn(msgspec.Struct, frozen=True, kw_only=True):
    """One thing said in a conversation, in its chat or on a call linked to it, with the config
    version that governed it (the conversation's, or the call's, each pinned at its start)."""

    channel: Literal["chat", "voice"]
    speaker: Literal["customer", "agent"]
    text: str | None
    at: datetime
    source: str  # chat: the conversation's channel; voice: speech or dtmf
    message_id: str  # the chat message's id, or the call utterance's
    call_id: str | None  # voice: the call; chat: the call it was shared with (sent during that call)
    author: str | None  # an agent's turn: ai, human:<agent id>, or the voice model's provider
    config_id: str
    config_version: int
    seq: int


class ConversationTimeline(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: str
    user_id: str
    status: str
    config_id: str
    config_version: int
    calls: list[str]  # the calls linked to it, in the order they were connected
    on_call: str | None  # the call in progress (its chatbot is silent meanwhile)
    turns: list[TimelineTurn]


class CallService:
    def __init__(
        self,
        runner: CommandRunner,
        configs: ConfigCatalog,
        *,
        telephony: Telephony | None = None,
        agent_sip_domain: str = "agents.parley.local",
    ) -> None:
        store = runner.store
        # The line and the pool are one aggregate per tenant that every call touches: retry longer.
        self.runner = runner.with_attempts(20)
        self.store: EventStore = store
        self.configs = configs
        self.telephony = telephony
        self.agent_sip_domain = agent_sip_domain

    # Running commands -----------------------------------------------------------------------

    async def record(
        self, tenant: str, call_id: str, command: Command, command_id: str, *, actor: str = ACTOR, new: bool = False
    ) -> Outcome[v.Call]:
        ctx = CommandContext(tenant=tenant, actor=actor, command_id=command_id, retry_possible=not new)
        outcome = await self.runner.handle(CALL, call_id, command, ctx, new=new)
        if outcome.state.conversation_id and isinstance(command, (v.ConnectCall, v.EndCall)):
            await self._tell_chat(tenant, outcome.state, outcome.events)
        return outcome

    async def _tell_chat(self, tenant: str, call: v.Call, events: Sequence[object]) -> None:
        """The linked conversation learns that the call is connected (its chatbot goes silent) or over
        (it answers again). A conversation closed or gone meanwhile has nothing to learn."""
        conversation_id = call.conversation_id
        assert conversation_id is not None
        command: Command
        if call.status == "ended":
            ended = next((e for e in events if isinstance(e, v.CallEnded)), None)
            duration = ended.duration_seconds if ended is not None else 0.0
            command = c.EndVoicebotSession(call_id=call.call_id, duration_seconds=duration, at=now())
            command_id = f"voice-ended-{call.call_id}"
        elif call.connected_at is not None:
            command = c.StartVoicebotSession(
                call_id=call.call_id,
                config_id=call.config_id,
                config_version=call.config_version,
                phone_number=call.pii_collected.get("phone"),
                at=call.connected_at,
            )
            command_id = f"voice-started-{call.call_id}"
        else:
            return
        ctx = CommandContext(tenant=tenant, actor=ACTOR, command_id=command_id, retry_possible=True)
        try:
            await self.runner.handle(c.DECIDER, conversation_id, command, ctx)
        except (IllegalStateError, NotFoundError) as e:
            log.info("call.chat_not_told", call_id=call.call_id, conversation_id=conversation_id, error=str(e))

    async def linked_customer(self, tenant: str, conversation_id: str, customer_id: str | None) -> c.Conversation:
        """The chat conversation a call is to be linked to: the tenant's, open, and (when the call names
        its customer) that customer's."""
        state = (await self.runner.repository(c.DECIDER).load(tenant, conversation_id)).state
        if not state.started:
            raise NotFoundError(
                f"conversation {conversation_id} not found", fields={"conversation_id": "no such conversation"}
            )
        if state.status == "closed":
            raise IllegalStateError(f"conversation {conversation_id} is closed", fields={"conversation_id": "closed"})
        if customer_id and customer_id != state.user_id:
            raise ValidationError(
                "the conversation is another customer's",
                fields={"conversation_id": "belongs to another customer than context.customer_id"},
            )
        return state

    async def line(self, tenant: str, command: Command, command_id: str, actor: str = ACTOR) -> Outcome[v.Line]:
        ctx = CommandContext(tenant=tenant, actor=actor, command_id=command_id, retry_possible=True)
        return await self.runner.handle(VOICE_LINE, v.LINE_ID, command, ctx)

    async def state(self, tenant: str, call_id: str) -> v.Call:
        loaded = await self.runner.repository(CALL).load(tenant, call_id, trust_cache=True)
        if not loaded.state.started:
            raise NotFoundError(f"call {call_id} not found", call_id=call_id)
        return loaded.state

    async def events(self, tenant: str, call_id: str) -> list[RecordedEvent]:
        return await self.store.read(StreamId(tenant, v.AGGREGATE_TYPE, call_id))

    async def line_state(self, tenant: str) -> v.Line:
        return (await self.runner.repository(VOICE_LINE).load(tenant, v.LINE_ID)).state

    async def history(self, tenant: str, call_id: str) -> CallHistory:
        """The call turn by turn, each with its config version (see ``call_turns``)."""
        events = await self.events(tenant, call_id)
        first = events[0].event if events else None
        if not isinstance(first, v.CallInitiated):
            raise NotFoundError(f"call {call_id} not found", call_id=call_id)
        try:
            config_stream = StreamId(tenant, a.AGGREGATE_TYPE, first.config_id)
        except ValidationError:  # a config id no stream can name: no config history to consult
            config_events = None
        else:
            config_events = await self.store.read(config_stream)
        state, turns = call_turns(events, config_events)
        return CallHistory(
            call_id=call_id,
            config_id=state.config_id,
            config_version=state.config_version,
            status=state.status,
            version=events[-1].version,
            turns=turns,
            conversation_id=state.conversation_id,
        )

    async def timeline(self, tenant: str, conversation_id: str) -> ConversationTimeline:
        """The conversation's chat turns and its linked calls' voice turns, interleaved in time."""
        events = await self.store.read(StreamId(tenant, c.AGGREGATE_TYPE, conversation_id))
        if not events or not isinstance(events[0].event, c.ConversationStarted):
            raise NotFoundError(f"conversation {conversation_id} not found", conversation_id=conversation_id)
        call_ids = list(dict.fromkeys(e.event.call_id for e in events if isinstance(e.event, c.VoicebotSessionStarted)))
        calls = await asyncio.gather(*(self.events(tenant, call_id) for call_id in call_ids))
        return conversation_timeline(events, dict(zip(call_ids, calls, strict=True)))

    # Starting calls -------------------------------------------------------------------------

    async def initiate(
        self,
        tenant: str,
        *,
        config_id: str,
        phone_number: str,
        caller_id: str | None = None,
        context: dict[str, str] | None = None,
        actor: str = ACTOR,
        call_id: str | None = None,
        conversation_id: str | None = None,
    ) -> Outcome[v.Call]:
        """An outbound call: admitted by the line, pinned to the config's active version, dialed."""
        call_id = call_id or str(uuid.uuid4())
        version = await self._active_voicebot(tenant, config_id)
        user_id = caller_subject(tenant, phone_number, context)
        if conversation_id is not None:  # linked: the conversation's customer is the one called
            customer = (context or {}).get("customer_id")
            user_id = (await self.linked_customer(tenant, conversation_id, customer)).user_id
        at = now()
        await self._admit(tenant, call_id, "outbound", user_id, phone_number, at)
        outcome = await self.record(
            tenant,
            call_id,
            v.InitiateCall(
                call_id=call_id,
                config_id=config_id,
                config_version=version,
                direction="outbound",
                transport="livekit_sip",
                user_id=user_id,
                phone_number=phone_number,
                caller_id=caller_id,
                context=context,
                conversation_id=conversation_id,
                at=at,
            ),
            f"initiate-{call_id}",
            actor=actor,
        )
        if self.telephony is not None:
            try:
                dialed = await self.telephony.dial(tenant, call_id, phone_number, caller_id)
            except Exception as e:
                log.warning("call.dial_failed", call_id=call_id, error=str(e))
                await self.end(tenant, call_id, reason="dial_failed", resolution_status="failed", ended_by="telephony")
                raise
            outcome = await self.record(tenant, call_id, v.MarkRinging(at=now()), f"ringing-{call_id}")
            log.info("call.dialed", call_id=call_id, sip_session_id=dialed.sip_session_id, room=dialed.room_name)
        return outcome

    async def answer(
        self,
        tenant: str,
        *,
        call_id: str,
        config_id: str,
        phone_number: str | None,
        transport: str,
        provider_call_id: str | None = None,
        context: dict[str, str] | None = None,
        room_name: str | None = None,
        conversation_id: str | None = None,
    ) -> Outcome[v.Call]:
        """An inbound call: admitted (the concurrent cap), pinned, connected. A ``conversation_id`` that
        cannot be linked (unknown, closed, another customer's, or one that knows the customer's phone
        number and it is not the caller's) is dropped: the call is answered anyway."""
        version = await self._active_voicebot(tenant, config_id)
        user_id = caller_subject(tenant, phone_number, context)
        if conversation_id is not None:
            try:
                customer = (context or {}).get("customer_id")
                linked = await self.linked_customer(tenant, conversation_id, customer)
                known = linked.pii_collected.get("phone")
                if known and phone_number and number_digest(tenant, known) != number_digest(tenant, phone_number):
                    raise ValidationError("the caller is not the conversation's customer", fields={"from": "other"})
                user_id = linked.user_id
            except (NotFoundError, IllegalStateError, ValidationError) as e:
                log.warning("call.not_linked", call_id=call_id, conversation_id=conversation_id, error=e.message)
                conversation_id = None
        at = now()
        await self._admit(tenant, call_id, "inbound", user_id, phone_number, at)
        await self.record(
            tenant,
            call_id,
            v.InitiateCall(
                call_id=call_id,
                config_id=config_id,
                config_version=version,
                direction="inbound",
                transport=transport,
                user_id=user_id,
                phone_number=phone_number,
                context=context,
                provider_call_id=provider_call_id,
                room_name=room_name,
                conversation_id=conversation_id,
                at=at,
            ),
            f"initiate-{call_id}",
        )
        return await self.record(
            tenant, call_id, v.ConnectCall(provider_call_id=provider_call_id, at=at), f"connect-{call_id}"
        )

    async def _active_voicebot(self, tenant: str, config_id: str) -> int:
        state = await self.configs.state(tenant, config_id)
        if state.product_type != "voicebot":
            raise ValidationError(
                f"config {config_id} is a {state.product_type}, not a voicebot",
                fields={"config_id": "must be a voicebot config"},
            )
        return await self.configs.latest_version(tenant, config_id)

    async def _admit(
        self, tenant: str, call_id: str, direction: v.Direction, user_id: str, phone_number: str | None, at: datetime
    ) -> None:
        digest = number_digest(tenant, phone_number) if phone_number else None
        admitted = await self.line(
            tenant, v.AdmitCall(call_id=call_id, direction=direction, number_digest=digest, at=at), f"admit-{call_id}"
        )
        refused = next((e for e in admitted.events if isinstance(e, v.CallAdmissionRefused)), None)
        if refused is None and admitted.duplicate:  # a retry: was it refused the first time?
            refused = await self._refusal_of(tenant, call_id)
        if refused is None:
            return
        await self.record(
            tenant,
            call_id,
            v.RefuseCallAttempt(
                call_id=call_id,
                reason=refused.reason,
                detail=refused.detail,
                user_id=user_id,
                phone_number=phone_number,
                at=at,
            ),
            f"refuse-{call_id}",
        )
        log.info("call.refused", call_id=call_id, reason=refused.reason)
        raise v.refusal_error(refused.reason, refused.detail)

    async def _refusal_of(self, tenant: str, call_id: str) -> v.CallAdmissionRefused | None:
        for recorded in reversed(await self.store.read(StreamId(tenant, v.LINE_TYPE, v.LINE_ID))):
            if isinstance(recorded.event, v.CallAdmissionRefused) and recorded.event.call_id == call_id:
                return recorded.event
        return None

    # Transfers ------------------------------------------------------------------------------

    async def transfer(
        self,
        tenant: str,
        call_id: str,
        *,
        transfer_type: v.TransferType,
        agent_id: str | None = None,
        reason: str = "",
        summary: str | None = None,
        trigger: str | None = None,
        requested_by: str = ACTOR,
        transfer_id: str | None = None,
    ) -> tuple[v.TransferRequested, TransferTarget, CallSummary, Outcome[v.Call]]:
        """Hand the call to a human of the tenant's pool (``agent_id``, or the pool's choice)."""
        state = await self.state(tenant, call_id)
        transfer_id = transfer_id or str(uuid.uuid4())
        target = await self._human(tenant, call_id, transfer_id, agent_id)
        call_summary = summarize(await self.events(tenant, call_id))
        spoken = summary or spoken_summary(call_summary, reason)
        outcome = await self.record(
            tenant,
            call_id,
            v.RequestTransfer(
                transfer_id=transfer_id,
                transfer_type=transfer_type,
                agent_id=target.agent_id,
                agent_name=target.name,
                target=target.target,
                reason=reason,
                summary=spoken,
                trigger=trigger,
                requested_by=requested_by,
                at=now(),
            ),
            f"transfer-{transfer_id}",
        )
        requested = next(
            (e for e in outcome.events if isinstance(e, v.TransferRequested)),
            None,
        ) or v.TransferRequested(
            transfer_id=transfer_id,
            transfer_type=transfer_type,
            agent_id=target.agent_id,
            agent_name=target.name,
            target=target.target,
            reason=reason,
            summary=spoken,
            at=now(),
        )
        if target.target is None:
            outcome = await self.record(
                tenant,
                call_id,
                v.FailTransfer(transfer_id=transfer_id, reason="no human agent is available", at=now()),
                f"transfer-failed-{transfer_id}",
            )
        elif self.telephony is not None and state.transport == "livekit_sip":
            connected = await self.telephony.transfer(tenant, outcome.state, requested, target.target, spoken)
            outcome = await self.settle_transfer(tenant, call_id, transfer_id, connected)
        return requested, target, call_summary, outcome

    async def settle_transfer(
        self, tenant: str, call_id: str, transfer_id: str, connected: Connected
    ) -> Outcome[v.Call]:
        if connected.ok:
            command: Command = v.ConnectTransfer(transfer_id=transfer_id, at=now())
            command_id = f"transfer-connected-{transfer_id}"
        else:
            command = v.FailTransfer(
                transfer_id=transfer_id, reason=connected.reason, sip_status=connected.sip_status, at=now()
            )
            command_id = f"transfer-failed-{transfer_id}"
        return await self.record(tenant, call_id, command, command_id)

    async def _human(self, tenant: str, call_id: str, transfer_id: str, agent_id: str | None) -> TransferTarget:
        """The human who takes the call: the one named (registered and available), else the pool's pick."""
        if agent_id is not None:
            pool = (await self.runner.repository(AGENT_POOL).load(tenant, p.POOL_ID)).state
            agent = pool.agents.get(agent_id)
            if agent is None:
                raise NotFoundError(f"agent {agent_id} is not registered", fields={"agent_id": "unknown agent"})
            if not agent.available:
                raise IllegalStateError(f"agent {agent_id} is not available", fields={"agent_id": "not available"})
            # Named by a person: that agent takes it (the pool routes only the AI's own transfers).
            return TransferTarget(
                agent_id=agent_id, name=agent.name, role=agent.role, target=self._sip_target(tenant, agent_id)
            )
        routed = await self._pool(
            tenant,
            p.RouteEscalation(escalation_id=transfer_id, conversation_id=call_id, at=now()),
            f"route-{transfer_id}",
        )
        chosen = routed.state.routed.get(transfer_id)
        if chosen is None:
            return TransferTarget(agent_id=None, name="", role="", target=None)
        agent = routed.state.agents[chosen]
        return TransferTarget(
            agent_id=chosen, name=agent.name, role=agent.role, target=self._sip_target(tenant, chosen)
        )

    async def _pool(self, tenant: str, command: Command, command_id: str) -> Outcome[p.Pool]:
        ctx = CommandContext(tenant=tenant, actor=ACTOR, command_id=command_id, retry_possible=True)
        return await self.runner.handle(AGENT_POOL, p.POOL_ID, command, ctx)

    def _sip_target(self, tenant: str, agent_id: str) -> str:
        return f"sip:{agent_id}@{tenant}.{self.agent_sip_domain}"

    # Ending ---------------------------------------------------------------------------------

    async def end(
        self,
        tenant: str,
        call_id: str,
        *,
        reason: str = "completed",
        resolution_status: v.Resolution | None = None,
        followup_required: bool = False,
        ended_by: str = ACTOR,
    ) -> Outcome[v.Call]:
        line = await self.line_state(tenant)
        try:
            outcome = await self.record(
                tenant,
                call_id,
                v.EndCall(
                    reason=reason,
                    resolution_status=resolution_status,
                    followup_required=followup_required,
                    ended_by=ended_by,
                    prices=line.settings.prices,
                    at=now(),
                ),
                f"end-{call_id}",
            )
        except IllegalStateError:  # ended already: the first end stands
            loaded = await self.runner.repository(CALL).load(tenant, call_id)
            if loaded.state.conversation_id and loaded.state.status == "ended":
                await self._tell_chat(tenant, loaded.state, [])  # in case the first end could not
            return Outcome(loaded.state, loaded.version, loaded.seq, [])
        ended = next((e for e in outcome.events if isinstance(e, v.CallEnded)), None)
        cost = ended.cost.total if ended is not None else 0.0
        await self.line(tenant, v.ReleaseCall(call_id=call_id, cost_usd=cost, at=now()), f"release-{call_id}")
        if outcome.state.transfers:
            await self._pool(tenant, p.ReleaseConversation(conversation_id=call_id, at=now()), f"release-{call_id}")
        return outcome

    # The do-not-call list and the line's settings --------------------------------------------

    async def block(self, tenant: str, phone_number: str, actor: str) -> Outcome[v.Line]:
        digest = number_digest(tenant, phone_number)
        return await self.line(
            tenant, v.BlockNumber(number_digest=digest, at=now()), f"block-{digest}-{uuid.uuid4().hex}", actor
        )

    async def unblock(self, tenant: str, phone_number: str, actor: str) -> Outcome[v.Line]:
        digest = number_digest(tenant, phone_number)
        return await self.line(
            tenant, v.UnblockNumber(number_digest=digest, at=now()), f"unblock-{digest}-{uuid.uuid4().hex}", actor
        )

    async def configure_line(self, tenant: str, settings: v.LineSettings, actor: str) -> Outcome[v.Line]:
        return await self.line(
            tenant, v.ChangeLineSettings(settings=settings, at=now()), f"settings-{uuid.uuid4().hex}", actor
        )


def call_turns(
    events: Sequence[RecordedEvent], config_events: list[RecordedEvent] | None = None
) -> tuple[v.Call, list[CallTurn]]:
    """Replay a call's events, noting each caller turn with the config version pinned to the call and
    the one active when it was recorded (``config_events``: the config's history), then the tools
    and replies that followed it (pure)."""
    actives = active_versions(config_events) if config_events else None

    def active_at(moment: datetime) -> int | None:
        if actives is None:
            return None
        index = bisect.bisect_right(actives, moment, key=lambda item: item[0])
        return actives[index - 1][1] if index else 0

    state = v.initial()
    turns: list[CallTurn] = []
    for recorded in events:
        event = recorded.event
        state = v.evolve(state, event)
        match event:
            case v.CallerSpoke():
                turns.append(
                    CallTurn(
                        turn=len([t for t in turns if t.utterance_id is not None]) + 1,
                        utterance_id=event.utterance_id,
                        source=event.source,
                        text=event.text,
                        confidence=event.confidence,
                        at=event.at,
                        seq=recorded.seq,
                        version=recorded.version,
                        actor=recorded.meta.actor,
                        command_id=recorded.meta.command_id,
                        config_id=state.config_id,
                        config_version=state.config_version,
                        active_config_version=active_at(recorded.recorded_at),
                        tools=[],
                        replies=[],
                    )
                )
            case v.AgentSpoke() | v.ToolCallFinished() if not turns:
                turns.append(  # the agent spoke first (its greeting): turn 0
                    CallTurn(
                        turn=0, utterance_id=None, source=None, text=None, confidence=None, at=recorded.recorded_at,
                        seq=None, version=None, actor=None, command_id=None, config_id=state.config_id,
                        config_version=state.config_version, active_config_version=active_at(recorded.recorded_at),
                        tools=[], replies=[],
                    )
                )  # fmt: skip
        if not turns:
            continue
        match event:
            case v.AgentSpoke():
                turns[-1].replies.append(
                    CallTurnReply(
                        utterance_id=event.utterance_id,
                        text=event.heard_text if event.interrupted and event.heard_text else event.text,
                        provider=event.provider,
                        interrupted=event.interrupted,
                        e2e_latency_ms=event.e2e_latency_ms,
                        at=event.at,
                        seq=recorded.seq,
                        version=recorded.version,
                    )
                )
            case v.ToolCallFinished():
                turns[-1].tools.append(
                    CallTurnTool(
                        tool_call_id=event.tool_call_id,
                        tool=event.tool,
                        ok=event.error is None,
                        error=event.error,
                        execution_time_ms=event.execution_time_ms,
                        seq=recorded.seq,
                    )
                )
    return state, turns


def conversation_timeline(
    events: Sequence[RecordedEvent], calls: dict[str, list[RecordedEvent]]
) -> ConversationTimeline:
    """A conversation's chat turns and its calls' voice turns, in the order they happened (their own
    clocks; the stream order breaks ties), each with the config version that governed it (pure)."""
    state = c.initial()
    turns: list[TimelineTurn] = []
    shared: dict[str, str] = {}  # chat message id -> the call it was shared with
    for call_id, call_events in calls.items():
        for recorded in call_events:
            if isinstance(recorded.event, v.ChatbotDataShared):
                shared[recorded.event.message_id] = call_id
    for recorded in events:
        event = recorded.event
        state = c.evolve(state, event)
        chat = {"channel": "chat", "source": state.channel, "config_id": state.config_id,
                "config_version": state.config_version, "seq": recorded.seq}  # fmt: skip
        match event:
            case c.UserMessageReceived():
                turns.append(
                    TimelineTurn(
                        speaker="customer", text=event.content, at=event.received_at, message_id=event.message_id,
                        call_id=shared.get(event.message_id), author=None, **chat,  # type: ignore[arg-type]
                    )
                )  # fmt: skip
            case c.AgentReplied():
                turns.append(
                    TimelineTurn(
                        speaker="agent", text=event.content, at=event.replied_at, message_id=event.message_id,
                        call_id=None, author=event.author, **chat,  # type: ignore[arg-type]
                    )
                )  # fmt: skip
    for call_id, call_events in calls.items():
        call = v.initial()
        for recorded in call_events:
            event = recorded.event
            call = v.evolve(call, event)
            voice = {"channel": "voice", "call_id": call_id, "config_id": call.config_id,
                     "config_version": call.config_version, "seq": recorded.seq}  # fmt: skip
            match event:
                case v.CallerSpoke():
                    turns.append(
                        TimelineTurn(speaker="customer", text=event.text, at=event.at, source=event.source,
                                     message_id=event.utterance_id, author=None, **voice)  # type: ignore[arg-type]
                    )  # fmt: skip
                case v.AgentSpoke():
                    text = event.heard_text if event.interrupted and event.heard_text else event.text
                    turns.append(
                        TimelineTurn(speaker="agent", text=text, at=event.at, source="speech",
                                     message_id=event.utterance_id, author=event.provider, **voice)  # type: ignore[arg-type]
                    )  # fmt: skip
    turns.sort(key=lambda turn: (turn.at, turn.seq))
    return ConversationTimeline(
        conversation_id=state.conversation_id,
        user_id=state.user_id,
        status=state.status,
        config_id=state.config_id,
        config_version=state.config_version,
        calls=list(calls),
        on_call=state.on_call,
        turns=turns,
    )


def summarize(events: Sequence[RecordedEvent]) -> CallSummary:
    """The seed's ``call_summary`` from a call's events: its last turns, personal data and tools."""
    state = v.initial()
    said: list[str] = []
    for recorded in events:
        event = recorded.event
        state = v.evolve(state, event)
        match event:
            case v.CallerSpoke(text=text) if text:
                said.append(f"caller: {text}")
            case v.AgentSpoke(text=text) if text:
                said.append(f"agent: {text}")
            case v.ChatbotDataShared(shared_data=shared) if shared:
                said.append(f"caller (chat): {v.shared_text(shared)}")
    return CallSummary(
        transcript=" | ".join(said[-8:]), pii_collected=dict(state.pii_collected), tools_used=list(state.tools_used)
    )


def spoken_summary(summary: CallSummary, reason: str) -> str:
    """What a human hears before a hot transfer connects them."""
    why = reason.replace("_", " ")
    parts = [f"Incoming transfer ({why})." if why else "Incoming transfer."]
    if summary.pii_collected:
        parts.append("Caller details: " + ", ".join(f"{k} {val}" for k, val in summary.pii_collected.items()) + ".")
    if summary.tools_used:
        parts.append("Already done: " + ", ".join(t.replace("_", " ") for t in dict.fromkeys(summary.tools_used)) + ".")
    last = [turn for turn in summary.transcript.split(" | ") if turn.startswith("caller: ")][-1:]
    if last:
        parts.append(f"They last said: {last[0].removeprefix('caller: ')}")
    return " ".join(parts)
