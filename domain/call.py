"""A phone call, as a pure decider; and the tenant's voice line that admits calls.

``decide(command, state) -> events`` checks the rules; ``evolve(state, event) -> state`` folds
history. Ids and the clock arrive with the command. Rules of a call:

* a call is pinned to its config version when it is initiated, and keeps it to the end;
* nothing is said on a call before it is initiated, nor after it ends;
* an utterance, a tool call, a transfer or a recording recorded twice (the same id) is recorded once;
* card numbers in what the caller says are masked before they become an event, and digits typed on
  the keypad are personal data (a card number can be typed too);
* one transfer at a time; it connects or fails once;
* chat and voice in one log: what the customer sends in the chat linked to a live call is shared with
  the call (``ChatbotDataShared``, the seed's ``chatbot_data_shared``), once per message, sealed
  under the caller's key; the voice agent uses it on its next turn.

Every figure a voice-analytics projection needs is in the events: per-stage timings on each turn
(``CallerSpoke.transcription_delay_ms``/``end_of_turn_delay_ms``, ``AgentSpoke.llm_ttft_ms``/
``tts_ttfb_ms``/``e2e_latency_ms``), cost inputs (``CallerSpoke.audio_seconds``,
``AgentSpoke.characters``, ``CallEnded``'s totals and ``cost``), direction, resolution, transfers and
the reason for each escalation.

The voice line (one per tenant) admits calls: no outbound call to a number on the do-not-call
list, at most ``outbound_per_hour`` outbound calls in any hour, at most ``max_concurrent`` calls at
once, and no outbound call once the day's cost reaches ``daily_budget_usd``. A refusal is an event
too (``CallAdmissionRefused``), so every refusal is recorded.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

import msgspec

from domain.errors import IllegalStateError, NotFoundError, ParleyError, ValidationError
from domain.messages import Command, Decider, Event
from domain.pii import extract_pii, mask_card_numbers

AGGREGATE_TYPE = "call"
LINE_TYPE = "voice_line"
LINE_ID = "default"

Direction = Literal["inbound", "outbound"]
Status = Literal["initiating", "ringing", "in_progress", "transferring", "transferred", "ended"]
TransferType = Literal["hot", "warm", "cold"]
Resolution = Literal["resolved", "unresolved", "transferred", "abandoned", "failed"]
Speaker = Literal["user", "agent"]
RefusalReason = Literal["do_not_call", "outbound_quota", "concurrent_limit", "budget_exhausted"]
CONTEXT_PII = ("customer_id", "email", "phone")


# Errors ---------------------------------------------------------------------------------------


class CallRefused(ParleyError):
    """A call the voice line would not place (quota, concurrency, budget): try later."""

    code = "call_refused"
    status: ClassVar[int] = 429


class DoNotCall(ParleyError):
    code = "do_not_call"
    status: ClassVar[int] = 403


def refusal_error(reason: str, detail: str) -> ParleyError:
    if reason == "do_not_call":
        return DoNotCall(detail, reason=reason, fields={"phone_number": "on the tenant's do-not-call list"})
    return CallRefused(detail, reason=reason, retry_after=60 if reason != "budget_exhausted" else 3600)


# Values ---------------------------------------------------------------------------------------


class UnitPrices(msgspec.Struct, frozen=True, kw_only=True):
    """What a call costs a tenant (USD): per minute of telephony, of transcribed audio, per 1,000
    characters spoken and per model request. Defaults: the seed's Twilio figures and list prices."""

    telephony_inbound_per_minute: float = 0.0085
    telephony_outbound_per_minute: float = 0.0100
    stt_per_minute: float = 0.0077
    tts_per_1k_characters: float = 0.05
    llm_per_request: float = 0.002


class CallCost(msgspec.Struct, frozen=True, kw_only=True):
    stt: float = 0.0
    tts: float = 0.0
    llm: float = 0.0
    telephony: float = 0.0

    @property
    def total(self) -> float:
        return round(self.stt + self.tts + self.llm + self.telephony, 6)


def call_cost(
    prices: UnitPrices,
    direction: str,
    *,
    duration_seconds: float,
    stt_seconds: float,
    tts_characters: int,
    llm_requests: int,
) -> CallCost:
    per_minute = (
        prices.telephony_outbound_per_minute if direction == "outbound" else prices.telephony_inbound_per_minute
    )
    return CallCost(
        stt=round(stt_seconds / 60 * prices.stt_per_minute, 6),
        tts=round(tts_characters / 1000 * prices.tts_per_1k_characters, 6),
        llm=round(llm_requests * prices.llm_per_request, 6),
        telephony=round(duration_seconds / 60 * per_minute, 6),
    )


# Call events ----------------------------------------------------------------------------------


class CallInitiated(Event, frozen=True, kw_only=True):
    call_id: str
    config_id: str
    config_version: int
    direction: Direction
    transport: str  # twilio, livekit_sip, local
    user_id: str
    phone_number: str | None = None
    caller_id: str | None = None
    context: dict[str, str] | None = None
    product_type: str = "voicebot"
    sip_session_id: str | None = None
    room_name: str | None = None
    provider_call_id: str | None = None
    # Chat and voice in one log: the customer's chat conversation, when known.
    conversation_id: str | None = None
    recording: bool = True
    initiated_at: datetime

    personal_fields = ("phone_number", "context")
    data_subject = "user_id"
    time_field = "initiated_at"


class CallRinging(Event, frozen=True, kw_only=True):
    at: datetime

    time_field = "at"


class CallConnected(Event, frozen=True, kw_only=True):
    provider_call_id: str | None = None
    connected_at: datetime

    time_field = "connected_at"


class RecordingNoticePlayed(Event, frozen=True, kw_only=True):
    text: str
    at: datetime

    time_field = "at"


class CallerSpoke(Event, frozen=True, kw_only=True):
    """A final transcript of the caller (``source``: speech, or digits typed on the keypad)."""

    utterance_id: str
    user_id: str
    text: str | None = None
    confidence: float | None = None
    language: str | None = None
    source: Literal["speech", "dtmf", "chat"] = "speech"
    stt_provider: str = ""
    started_speaking_at: datetime | None = None
    stopped_speaking_at: datetime | None = None
    audio_seconds: float = 0.0  # billed transcription
    transcription_delay_ms: float | None = None  # end of speech -> final transcript
    end_of_turn_delay_ms: float | None = None  # end of speech -> turn decided
    at: datetime

    personal_fields = ("text",)
    data_subject = "user_id"
    time_field = "at"


class AgentSpoke(Event, frozen=True, kw_only=True):
    """What the agent said (``interrupted``: the caller barged in; ``heard_text``: what was played)."""

    utterance_id: str
    user_id: str
    text: str | None = None
    in_reply_to: str | None = None
    intent: str | None = None
    provider: str | None = None
    characters: int = 0  # billed synthesis
    llm_ttft_ms: float | None = None
    tts_ttfb_ms: float | None = None
    e2e_latency_ms: float | None = None  # caller stopped speaking -> agent audio started
    interrupted: bool = False
    heard_text: str | None = None
    at: datetime

    personal_fields = ("text", "heard_text")
    data_subject = "user_id"
    time_field = "at"


class ToolCallStarted(Event, frozen=True, kw_only=True):
    tool_call_id: str
    tool: str
    user_id: str
    arguments: dict[str, object] | None = None
    at: datetime

    personal_fields = ("arguments",)
    data_subject = "user_id"
    time_field = "at"


class ToolCallFinished(Event, frozen=True, kw_only=True):
    tool_call_id: str
    tool: str
    user_id: str
    output: dict[str, object] | None = None
    error: str | None = None
    execution_time_ms: int | None = None
    at: datetime

    personal_fields = ("output",)
    data_subject = "user_id"
    time_field = "at"


class DtmfPressed(Event, frozen=True, kw_only=True):
    press_id: str
    user_id: str
    digit: str | None = None
    at: datetime

    personal_fields = ("digit",)
    data_subject = "user_id"
    time_field = "at"


class SentimentUpdated(Event, frozen=True, kw_only=True):
    score: float  # 0 (upset) .. 1 (happy), the seed's scale
    emotion: str = "neutral"
    escalation_suggested: bool = False
    at: datetime

    time_field = "at"


class TransferRequested(Event, frozen=True, kw_only=True):
    transfer_id: str
    transfer_type: TransferType
    agent_id: str | None = None
    agent_name: str = ""
    target: str | None = None  # the human's number or SIP URI
    reason: str = ""
    summary: str | None = None
    trigger: str | None = None  # the escalation rule that asked for it (None: a person did)
    requested_by: str = ""
    user_id: str = ""
    at: datetime

    personal_fields = ("summary",)
    data_subject = "user_id"
    time_field = "at"


class TransferConnected(Event, frozen=True, kw_only=True):
    transfer_id: str
    at: datetime

    time_field = "at"


class TransferFailed(Event, frozen=True, kw_only=True):
    transfer_id: str
    reason: str
    sip_status: str | None = None
    at: datetime

    time_field = "at"


class RecordingStored(Event, frozen=True, kw_only=True):
    recording_id: str
    track: Literal["caller", "agent", "mixed"]
    uri: str
    format: str = "wav"
    sample_rate: int = 8000
    duration_seconds: float = 0.0
    bytes: int = 0
    at: datetime

    time_field = "at"


class SpeechProviderInterrupted(Event, frozen=True, kw_only=True):
    """A speech provider's connection failed mid-call; the call went on (``recovered_by``)."""

    stage: Literal["stt", "tts"]
    provider: str
    error: str
    recovered_by: str  # reconnected, or fallback:<provider>
    at: datetime

    time_field = "at"


class CallEnded(Event, frozen=True, kw_only=True):
    reason: str = "completed"
    resolution_status: Resolution = "resolved"
    followup_required: bool = False
    ended_by: str = ""
    duration_seconds: float = 0.0
    stt_seconds: float = 0.0
    tts_characters: int = 0
    llm_requests: int = 0
    cost: CallCost = CallCost()
    ended_at: datetime

    time_field = "ended_at"


class ChatbotDataShared(Event, frozen=True, kw_only=True):
    """The seed's ``chatbot_data_shared`` (a cross-product event): what the customer sent in the chat
    linked to this call while it was in progress, which the chatbot did not answer; the voice agent
    takes it on its next turn. ``data_type``: ``chat_message`` (``shared_data["text"]``), or
    ``document`` (attachments: ``shared_data["attachment_1"]``, ...)."""

    conversation_id: str
    message_id: str
    user_id: str
    data_type: str = "chat_message"
    shared_data: dict[str, str] | None = None
    at: datetime

    personal_fields = ("shared_data",)
    data_subject = "user_id"
    time_field = "at"


def shared_text(shared: dict[str, str]) -> str:
    """What was shared from the chat, as one line: its text, then its attachments."""
    parts = [shared["text"]] if shared.get("text") else []
    parts += [value for key, value in sorted(shared.items()) if key.startswith("attachment")]
    return " ".join(parts)


class CallAttemptRefused(Event, frozen=True, kw_only=True):
    """An outbound call the voice line refused: the attempt is kept, the call never starts."""

    call_id: str
    reason: RefusalReason
    detail: str
    user_id: str
    phone_number: str | None = None
    at: datetime

    personal_fields = ("phone_number",)
    data_subject = "user_id"
    time_field = "at"


class CallErased(Event, frozen=True, kw_only=True):
    """The caller was erased (``domain.customer``): their key is destroyed, what it sealed reads blank."""

    user_id: str
    erased_at: datetime

    time_field = "erased_at"


CallEvent = (
    CallInitiated
    | CallRinging
    | CallConnected
    | RecordingNoticePlayed
    | CallerSpoke
    | AgentSpoke
    | ToolCallStarted
    | ToolCallFinished
    | DtmfPressed
    | SentimentUpdated
    | TransferRequested
    | TransferConnected
    | TransferFailed
    | RecordingStored
    | SpeechProviderInterrupted
    | CallEnded
    | CallAttemptRefused
    | CallErased
    | ChatbotDataShared
)


# Call commands --------------------------------------------------------------------------------


class InitiateCall(Command, frozen=True, kw_only=True):
    call_id: str
    config_id: str
    config_version: int
    direction: Direction
    transport: str
    user_id: str
    phone_number: str | None = None
    caller_id: str | None = None
    context: dict[str, str] | None = None
    sip_session_id: str | None = None
    room_name: str | None = None
    provider_call_id: str | None = None
    conversation_id: str | None = None
    recording: bool = True
    at: datetime


class RefuseCallAttempt(Command, frozen=True, kw_only=True):
    call_id: str
    reason: RefusalReason
    detail: str
    user_id: str
    phone_number: str | None = None
    at: datetime


class MarkRinging(Command, frozen=True, kw_only=True):
    at: datetime


class ConnectCall(Command, frozen=True, kw_only=True):
    provider_call_id: str | None = None
    at: datetime


class PlayRecordingNotice(Command, frozen=True, kw_only=True):
    text: str
    at: datetime


class RecordCallerUtterance(Command, frozen=True, kw_only=True):
    utterance_id: str
    text: str
    confidence: float | None = None
    language: str | None = None
    source: Literal["speech", "dtmf", "chat"] = "speech"
    stt_provider: str = ""
    started_speaking_at: datetime | None = None
    stopped_speaking_at: datetime | None = None
    audio_seconds: float = 0.0
    transcription_delay_ms: float | None = None
    end_of_turn_delay_ms: float | None = None
    at: datetime


class RecordAgentUtterance(Command, frozen=True, kw_only=True):
    utterance_id: str
    text: str
    in_reply_to: str | None = None
    intent: str | None = None
    provider: str | None = None
    llm_ttft_ms: float | None = None
    tts_ttfb_ms: float | None = None
    e2e_latency_ms: float | None = None
    interrupted: bool = False
    heard_text: str | None = None
    at: datetime


class StartToolCall(Command, frozen=True, kw_only=True):
    tool_call_id: str
    tool: str
    arguments: dict[str, object] = {}
    at: datetime


class FinishToolCall(Command, frozen=True, kw_only=True):
    tool_call_id: str
    output: dict[str, object] | None = None
    error: str | None = None
    execution_time_ms: int | None = None
    at: datetime


class PressDtmf(Command, frozen=True, kw_only=True):
    press_id: str
    digit: str
    at: datetime


class UpdateSentiment(Command, frozen=True, kw_only=True):
    score: float
    emotion: str = "neutral"
    escalation_suggested: bool = False
    at: datetime


class RequestTransfer(Command, frozen=True, kw_only=True):
    transfer_id: str
    transfer_type: TransferType
    agent_id: str | None = None
    agent_name: str = ""
    target: str | None = None
    reason: str = ""
    summary: str | None = None
    trigger: str | None = None
    requested_by: str = ""
    at: datetime


class ConnectTransfer(Command, frozen=True, kw_only=True):
    transfer_id: str
    at: datetime


class FailTransfer(Command, frozen=True, kw_only=True):
    transfer_id: str
    reason: str
    sip_status: str | None = None
    at: datetime


class StoreRecording(Command, frozen=True, kw_only=True):
    recording_id: str
    track: Literal["caller", "agent", "mixed"]
    uri: str
    format: str = "wav"
    sample_rate: int = 8000
    duration_seconds: float = 0.0
    bytes: int = 0
    at: datetime


class ReportSpeechProviderInterruption(Command, frozen=True, kw_only=True):
    stage: Literal["stt", "tts"]
    provider: str
    error: str
    recovered_by: str
    at: datetime


class ShareChatData(Command, frozen=True, kw_only=True):
    """What arrived in the linked chat while the call is live (the chat runtime shares it)."""

    conversation_id: str
    message_id: str
    data_type: str = "chat_message"
    shared_data: dict[str, str]
    at: datetime


class EndCall(Command, frozen=True, kw_only=True):
    reason: str = "completed"
    resolution_status: Resolution | None = None  # None: transferred if it was, else resolved
    followup_required: bool = False
    ended_by: str = ""
    prices: UnitPrices = UnitPrices()
    at: datetime


class EraseCall(Command, frozen=True, kw_only=True):
    """The caller was erased: their call forgets them (in any state)."""

    at: datetime


# Call state -----------------------------------------------------------------------------------

RECENT = 256


class Call(msgspec.Struct, frozen=True):
    started: bool = False
    refused: bool = False
    call_id: str = ""
    config_id: str = ""
    config_version: int = 0
    direction: str = "inbound"
    transport: str = ""
    user_id: str = ""
    status: Status = "initiating"
    initiated_at: datetime | None = None
    connected_at: datetime | None = None
    ended_at: datetime | None = None
    conversation_id: str | None = None
    recording: bool = True
    notice_played: bool = False
    open_transfer: str | None = None
    transfers: tuple[str, ...] = ()
    transferred_to: str | None = None
    open_tools: dict[str, str] = {}  # tool call id -> tool
    tools_used: tuple[str, ...] = ()
    sentiment_sum: float = 0.0
    sentiment_count: int = 0
    stt_seconds: float = 0.0
    tts_characters: int = 0
    llm_requests: int = 0
    pii_collected: dict[str, str] = {}
    recordings: tuple[str, ...] = ()
    recent_ids: tuple[str, ...] = ()


def initial() -> Call:
    return Call()


def data_subject(state: Call) -> str | None:
    return state.user_id or None


def decide(command: Command, state: Call) -> list[Event]:
    match command:
        case InitiateCall():
            if state.started or state.refused:
                raise IllegalStateError(f"call {state.call_id} already exists")
            return [
                CallInitiated(
                    call_id=command.call_id,
                    config_id=command.config_id,
                    config_version=command.config_version,
                    direction=command.direction,
                    transport=command.transport,
                    user_id=command.user_id,
                    phone_number=command.phone_number,
                    caller_id=command.caller_id,
                    context=command.context,
                    sip_session_id=command.sip_session_id,
                    room_name=command.room_name,
                    provider_call_id=command.provider_call_id,
                    conversation_id=command.conversation_id,
                    recording=command.recording,
                    initiated_at=command.at,
                )
            ]
        case RefuseCallAttempt():
            if state.started or state.refused:
                return []
            return [
                CallAttemptRefused(
                    call_id=command.call_id,
                    reason=command.reason,
                    detail=command.detail,
                    user_id=command.user_id,
                    phone_number=command.phone_number,
                    at=command.at,
                )
            ]
        case EraseCall():
            if not (state.started or state.refused):
                raise NotFoundError(f"call {state.call_id} not found")
            return [CallErased(user_id=state.user_id, erased_at=command.at)]
        case StoreRecording():
            # A recording may land after the call ended (its audio is written on hang-up).
            _require_started(state)
            if command.recording_id in state.recordings:
                return []
            return [
                RecordingStored(
                    recording_id=command.recording_id,
                    track=command.track,
                    uri=command.uri,
                    format=command.format,
                    sample_rate=command.sample_rate,
                    duration_seconds=command.duration_seconds,
                    bytes=command.bytes,
                    at=command.at,
                )
            ]
    _require_live(state)
    match command:
        case MarkRinging():
            return [CallRinging(at=command.at)] if state.status == "initiating" else []
        case ConnectCall():
            if state.connected_at is not None:
                return []
            return [CallConnected(provider_call_id=command.provider_call_id, connected_at=command.at)]
        case PlayRecordingNotice():
            return [] if state.notice_played else [RecordingNoticePlayed(text=command.text, at=command.at)]
        case RecordCallerUtterance():
            if command.utterance_id in state.recent_ids:
                return []
            text = mask_card_numbers(command.text).strip()
            if not text:
                raise ValidationError("an utterance needs words", fields={"text": "empty"})
            return [
                CallerSpoke(
                    utterance_id=command.utterance_id,
                    user_id=state.user_id,
                    text=text,
                    confidence=_unit(command.confidence, "confidence"),
                    language=command.language,
                    source=command.source,
                    stt_provider=command.stt_provider,
                    started_speaking_at=command.started_speaking_at,
                    stopped_speaking_at=command.stopped_speaking_at,
                    audio_seconds=max(0.0, command.audio_seconds),
                    transcription_delay_ms=command.transcription_delay_ms,
                    end_of_turn_delay_ms=command.end_of_turn_delay_ms,
                    at=command.at,
                )
            ]
        case RecordAgentUtterance():
            if command.utterance_id in state.recent_ids:
                return []
            text = mask_card_numbers(command.text)
            return [
                AgentSpoke(
                    utterance_id=command.utterance_id,
                    user_id=state.user_id,
                    text=text,
                    in_reply_to=command.in_reply_to,
                    intent=command.intent,
                    provider=command.provider,
                    characters=len(text),
                    llm_ttft_ms=command.llm_ttft_ms,
                    tts_ttfb_ms=command.tts_ttfb_ms,
                    e2e_latency_ms=command.e2e_latency_ms,
                    interrupted=command.interrupted,
                    heard_text=None if command.heard_text is None else mask_card_numbers(command.heard_text),
                    at=command.at,
                )
            ]
        case StartToolCall():
            if command.tool_call_id in state.recent_ids:
                return []
            return [
                ToolCallStarted(
                    tool_call_id=command.tool_call_id,
                    tool=command.tool,
                    user_id=state.user_id,
                    arguments=dict(command.arguments),
                    at=command.at,
                )
            ]
        case FinishToolCall():
            tool = state.open_tools.get(command.tool_call_id)
            if tool is None:
                if f"done:{command.tool_call_id}" in state.recent_ids:
                    return []
                raise NotFoundError(f"tool call {command.tool_call_id} was not started on this call")
            return [
                ToolCallFinished(
                    tool_call_id=command.tool_call_id,
                    tool=tool,
                    user_id=state.user_id,
                    output=command.output,
                    error=command.error,
                    execution_time_ms=command.execution_time_ms,
                    at=command.at,
                )
            ]
        case PressDtmf():
            if command.press_id in state.recent_ids:
                return []
            if command.digit not in DTMF_DIGITS:
                raise ValidationError(f"not a keypad digit: {command.digit!r}", fields={"digit": "0-9, *, # or A-D"})
            return [DtmfPressed(press_id=command.press_id, user_id=state.user_id, digit=command.digit, at=command.at)]
        case UpdateSentiment():
            return [
                SentimentUpdated(
                    score=_unit(command.score, "score") or 0.0,
                    emotion=command.emotion,
                    escalation_suggested=command.escalation_suggested,
                    at=command.at,
                )
            ]
        case RequestTransfer():
            if command.transfer_id in state.transfers:
                return []
            if state.open_transfer is not None:
                raise IllegalStateError(f"transfer {state.open_transfer} is under way", transfer_id=state.open_transfer)
            if state.status == "transferred":
                raise IllegalStateError(f"call {state.call_id} was transferred already")
            if command.transfer_type == "cold" and not (command.target or command.agent_id):
                raise ValidationError("a transfer needs someone to go to", fields={"agent_id": "required"})
            return [
                TransferRequested(
                    transfer_id=command.transfer_id,
                    transfer_type=command.transfer_type,
                    agent_id=command.agent_id,
                    agent_name=command.agent_name,
                    target=command.target,
                    reason=command.reason,
                    summary=command.summary,
                    trigger=command.trigger,
                    requested_by=command.requested_by,
                    user_id=state.user_id,
                    at=command.at,
                )
            ]
        case ConnectTransfer():
            _require_transfer(state, command.transfer_id)
            if state.open_transfer != command.transfer_id:
                return []  # settled already
            return [TransferConnected(transfer_id=command.transfer_id, at=command.at)]
        case FailTransfer():
            _require_transfer(state, command.transfer_id)
            if state.open_transfer != command.transfer_id:
                return []
            return [
                TransferFailed(
                    transfer_id=command.transfer_id, reason=command.reason, sip_status=command.sip_status, at=command.at
                )
            ]
        case ShareChatData():
            if command.message_id in state.recent_ids:
                return []
            shared = {key: mask_card_numbers(value) for key, value in command.shared_data.items() if value}
            if not shared:
                raise ValidationError("nothing to share", fields={"shared_data": "empty"})
            return [
                ChatbotDataShared(
                    conversation_id=command.conversation_id,
                    message_id=command.message_id,
                    user_id=state.user_id,
                    data_type=command.data_type,
                    shared_data=shared,
                    at=command.at,
                )
            ]
        case ReportSpeechProviderInterruption():
            return [
                SpeechProviderInterrupted(
                    stage=command.stage,
                    provider=command.provider,
                    error=command.error,
                    recovered_by=command.recovered_by,
                    at=command.at,
                )
            ]
        case EndCall():
            began = state.connected_at or state.initiated_at or command.at
            duration = max(0.0, (command.at - began).total_seconds()) if state.connected_at else 0.0
            resolution = command.resolution_status or ("transferred" if state.transferred_to else "resolved")
            return [
                CallEnded(
                    reason=command.reason,
                    resolution_status=resolution,
                    followup_required=command.followup_required,
                    ended_by=command.ended_by,
                    duration_seconds=round(duration, 3),
                    stt_seconds=round(state.stt_seconds, 3),
                    tts_characters=state.tts_characters,
                    llm_requests=state.llm_requests,
                    cost=call_cost(
                        command.prices,
                        state.direction,
                        duration_seconds=duration,
                        stt_seconds=state.stt_seconds,
                        tts_characters=state.tts_characters,
                        llm_requests=state.llm_requests,
                    ),
                    ended_at=command.at,
                )
            ]
    raise ValidationError(f"{type(command).__name__} is not a call command")


DTMF_DIGITS = frozenset("0123456789*#ABCD")


def _unit(value: float | None, field: str) -> float | None:
    if value is None:
        return None
    if not 0.0 <= value <= 1.0:
        raise ValidationError(f"{field} must be between 0 and 1", fields={field: "between 0 and 1"})
    return value


def _require_started(state: Call) -> None:
    if not state.started:
        raise NotFoundError("call not found")


def _require_live(state: Call) -> None:
    _require_started(state)
    if state.status == "ended":
        raise IllegalStateError(f"call {state.call_id} has ended")


def _require_transfer(state: Call, transfer_id: str) -> None:
    if transfer_id not in state.transfers:
        raise NotFoundError(f"transfer {transfer_id} not found")


def evolve(state: Call, event: Event) -> Call:
    replace = msgspec.structs.replace
    match event:
        case CallInitiated():
            context = event.context or {}
            return replace(
                state,
                started=True,
                call_id=event.call_id,
                config_id=event.config_id,
                config_version=event.config_version,
                direction=event.direction,
                transport=event.transport,
                user_id=event.user_id,
                status="initiating",
                initiated_at=event.initiated_at,
                conversation_id=event.conversation_id,
                recording=event.recording,
                pii_collected={
                    **{key: context[key] for key in CONTEXT_PII if context.get(key)},
                    **({"phone": event.phone_number} if event.phone_number else {}),
                },
            )
        case CallAttemptRefused():
            return replace(state, refused=True, call_id=event.call_id, user_id=event.user_id)
        case CallRinging():
            return replace(state, status="ringing")
        case CallConnected():
            return replace(state, status="in_progress", connected_at=event.connected_at)
        case RecordingNoticePlayed():
            return replace(state, notice_played=True)
        case CallerSpoke():
            pii = extract_pii(event.text) if event.text else {}
            return replace(
                state,
                stt_seconds=state.stt_seconds + event.audio_seconds,
                pii_collected={**state.pii_collected, **pii} if pii else state.pii_collected,
                recent_ids=_remember(state, event.utterance_id),
            )
        case AgentSpoke():
            return replace(
                state,
                tts_characters=state.tts_characters + event.characters,
                llm_requests=state.llm_requests + 1,
                recent_ids=_remember(state, event.utterance_id),
            )
        case ToolCallStarted():
            return replace(
                state,
                open_tools={**state.open_tools, event.tool_call_id: event.tool},
                tools_used=(*state.tools_used, event.tool),
                recent_ids=_remember(state, event.tool_call_id),
            )
        case ToolCallFinished():
            return replace(
                state,
                open_tools={k: v for k, v in state.open_tools.items() if k != event.tool_call_id},
                recent_ids=_remember(state, f"done:{event.tool_call_id}"),
            )
        case DtmfPressed():
            return replace(state, recent_ids=_remember(state, event.press_id))
        case ChatbotDataShared():
            text = (event.shared_data or {}).get("text")
            pii = extract_pii(text) if text else {}
            return replace(
                state,
                pii_collected={**state.pii_collected, **pii} if pii else state.pii_collected,
                recent_ids=_remember(state, event.message_id),
            )
        case SentimentUpdated():
            return replace(
                state, sentiment_sum=state.sentiment_sum + event.score, sentiment_count=state.sentiment_count + 1
            )
        case TransferRequested():
            return replace(
                state,
                status="transferring",
                open_transfer=event.transfer_id,
                transfers=(*state.transfers, event.transfer_id),
            )
        case TransferConnected():
            return replace(state, status="transferred", open_transfer=None, transferred_to=event.transfer_id)
        case TransferFailed():
            return replace(state, status="in_progress" if state.connected_at else "initiating", open_transfer=None)
        case RecordingStored():
            return replace(state, recordings=(*state.recordings, event.recording_id))
        case CallEnded():
            return replace(state, status="ended", ended_at=event.ended_at, open_transfer=None)
    return state


def _remember(state: Call, key: str) -> tuple[str, ...]:
    return (*state.recent_ids[-(RECENT - 1) :], key)


def sentiment_average(state: Call) -> float | None:
    return None if not state.sentiment_count else round(state.sentiment_sum / state.sentiment_count, 3)


# The voice line: admitting calls --------------------------------------------------------------


class LineSettings(msgspec.Struct, frozen=True, kw_only=True):
    outbound_per_hour: int = 100  # the seed's figure
    max_concurrent: int = 1000  # the seed's per-tenant cap
    daily_budget_usd: float = 500.0  # the seed's daily limit
    prices: UnitPrices = UnitPrices()


class LineSettingsChanged(Event, frozen=True, kw_only=True):
    settings: LineSettings
    at: datetime

    time_field = "at"


class NumberBlocked(Event, frozen=True, kw_only=True):
    """A number joined the do-not-call list (kept as a digest of the tenant and the number)."""

    number_digest: str
    at: datetime

    time_field = "at"


class NumberUnblocked(Event, frozen=True, kw_only=True):
    number_digest: str
    at: datetime

    time_field = "at"


class CallAdmitted(Event, frozen=True, kw_only=True):
    call_id: str
    direction: Direction
    at: datetime

    time_field = "at"


class CallAdmissionRefused(Event, frozen=True, kw_only=True):
    call_id: str
    direction: Direction
    reason: RefusalReason
    detail: str
    at: datetime

    time_field = "at"


class CallReleased(Event, frozen=True, kw_only=True):
    call_id: str
    cost_usd: float = 0.0
    at: datetime

    time_field = "at"


class ChangeLineSettings(Command, frozen=True, kw_only=True):
    settings: LineSettings
    at: datetime


class BlockNumber(Command, frozen=True, kw_only=True):
    number_digest: str
    at: datetime


class UnblockNumber(Command, frozen=True, kw_only=True):
    number_digest: str
    at: datetime


class AdmitCall(Command, frozen=True, kw_only=True):
    call_id: str
    direction: Direction
    number_digest: str | None = None
    at: datetime


class ReleaseCall(Command, frozen=True, kw_only=True):
    call_id: str
    cost_usd: float = 0.0
    at: datetime


class Line(msgspec.Struct, frozen=True):
    settings: LineSettings = LineSettings()
    blocked: frozenset[str] = frozenset()
    active: tuple[str, ...] = ()
    outbound_at: tuple[datetime, ...] = ()  # admissions of the last hour
    day: str = ""
    day_cost: float = 0.0
    admitted: tuple[str, ...] = ()  # recent admissions, to admit a call once


def line_initial() -> Line:
    return Line()


def decide_line(command: Command, line: Line) -> list[Event]:
    match command:
        case ChangeLineSettings():
            s = command.settings
            fields = {}
            if s.outbound_per_hour < 0:
                fields["outbound_per_hour"] = "0 or more"
            if s.max_concurrent < 1:
                fields["max_concurrent"] = "at least 1"
            if s.daily_budget_usd < 0:
                fields["daily_budget_usd"] = "0 or more"
            if fields:
                raise ValidationError("invalid voice line settings", fields=fields)
            return [LineSettingsChanged(settings=s, at=command.at)]
        case BlockNumber():
            return (
                []
                if command.number_digest in line.blocked
                else [NumberBlocked(number_digest=command.number_digest, at=command.at)]
            )
        case UnblockNumber():
            if command.number_digest not in line.blocked:
                return []
            return [NumberUnblocked(number_digest=command.number_digest, at=command.at)]
        case AdmitCall():
            if command.call_id in line.admitted:
                return []
            refusal = _refusal(line, command)
            if refusal is not None:
                reason, detail = refusal
                return [
                    CallAdmissionRefused(
                        call_id=command.call_id,
                        direction=command.direction,
                        reason=reason,
                        detail=detail,
                        at=command.at,
                    )
                ]
            return [CallAdmitted(call_id=command.call_id, direction=command.direction, at=command.at)]
        case ReleaseCall():
            if command.call_id not in line.active:
                return []
            return [CallReleased(call_id=command.call_id, cost_usd=command.cost_usd, at=command.at)]
    raise ValidationError(f"{type(command).__name__} is not a voice line command")


def _refusal(line: Line, command: AdmitCall) -> tuple[RefusalReason, str] | None:
    s = line.settings
    outbound = command.direction == "outbound"
    if outbound and command.number_digest is not None and command.number_digest in line.blocked:
        return "do_not_call", "the number is on the tenant's do-not-call list"
    if len(line.active) >= s.max_concurrent:
        return "concurrent_limit", f"the tenant has {len(line.active)} calls in progress (at most {s.max_concurrent})"
    if outbound:
        hour_ago = command.at - timedelta(hours=1)
        recent = sum(1 for at in line.outbound_at if at > hour_ago)
        if recent >= s.outbound_per_hour:
            return "outbound_quota", f"{recent} outbound calls in the last hour (at most {s.outbound_per_hour})"
        spent = line.day_cost if line.day == command.at.date().isoformat() else 0.0
        if spent >= s.daily_budget_usd:
            return (
                "budget_exhausted",
                f"today's calls cost ${spent:.2f} (budget ${s.daily_budget_usd:.2f}): outbound calls are paused",
            )
    return None


def evolve_line(line: Line, event: Event) -> Line:
    replace = msgspec.structs.replace
    match event:
        case LineSettingsChanged():
            return replace(line, settings=event.settings)
        case NumberBlocked():
            return replace(line, blocked=line.blocked | {event.number_digest})
        case NumberUnblocked():
            return replace(line, blocked=line.blocked - {event.number_digest})
        case CallAdmitted():
            hour_ago = event.at - timedelta(hours=1)
            outbound = tuple(at for at in line.outbound_at if at > hour_ago)
            if event.direction == "outbound":
                outbound = (*outbound, event.at)
            return replace(
                line,
                active=(*line.active, event.call_id),
                outbound_at=outbound,
                admitted=(*line.admitted[-(RECENT - 1) :], event.call_id),
            )
        case CallReleased():
            day = event.at.date().isoformat()
            spent = (line.day_cost if line.day == day else 0.0) + event.cost_usd
            return replace(
                line, active=tuple(c for c in line.active if c != event.call_id), day=day, day_cost=round(spent, 6)
            )
    return line


DECIDER = Decider(
    type_name=AGGREGATE_TYPE,
    state_type=Call,
    initial=initial,
    evolve=evolve,
    decide=decide,
    data_subject=data_subject,
)

LINE_DECIDER = Decider(
    type_name=LINE_TYPE, state_type=Line, initial=line_initial, evolve=evolve_line, decide=decide_line
)
