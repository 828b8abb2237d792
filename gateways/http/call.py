"""The seed's Voice API and Twilio's webhooks.

- ``POST /api/v1/voice/calls/initiate`` (202): an outbound call, admitted by the tenant's voice line
  (a do-not-call number is a 403, a quota, the concurrent cap or the day's budget a 429; each
  refusal is recorded on the call), pinned to the config's active version, dialed by LiveKit SIP.
- ``GET /api/v1/voice/calls/{call_id}``: its status with the transcript (speakers, confidences),
  the tools executed, the sentiment and the recordings, from the calls read model.
- ``POST .../transfer``: hot, warm or cold, to an agent of the tenant's human-agent pool, with the
  seed's ``call_summary``; ``POST .../end``: its summary and per-stage latency analytics.
- ``WS .../transcript``: the seed's live events (``transcript_interim``, ``transcript_final``,
  ``agent_response``, ``sentiment_update``, plus ``transfer``, ``call_ended``), past ones first.
- ``GET .../history``: the call turn by turn, each with the config version that governed it.
- ``GET /api/v1/voice/conversations/{conversation_id}/history``: a chat conversation and the calls
  linked to it (``conversation_id`` at initiation, or on Twilio's webhook URL), their turns
  interleaved in time, each with its channel (chat or voice) and config version.
- ``GET .../recordings/{recording_id}``: a recording, decrypted, for staff or the caller.
- ``POST /api/v1/voice/do-not-call``, ``DELETE`` (a number on or off the list), ``PUT .../line``
  (quota, concurrent cap, daily budget, unit prices).
- ``POST /api/v1/voice/twilio/inbound``: TwiML that connects the call's audio to
  ``/api/v1/voice/twilio/stream`` (a websocket speaking Twilio Media Streams), where the call's
  agent session runs in this process. The tenant comes from ``X-Tenant-Slug``, the called number
  (``PARLEY_VOICE_NUMBERS``) or the only demo tenant; ``X-Twilio-Signature`` is checked when
  ``TWILIO_AUTH_TOKEN`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import structlog
from litestar import Controller, Request, Response, WebSocket, delete, get, post, put, websocket
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, WebSocketDisconnect
from litestar.params import FromPath, JSONBody, QueryParameter

from agents.config import ConfigProvider
from agents.tools import ToolRegistry
from commands.call import CallHistory, CallService, ConversationTimeline, summarize
from commands.config import ConfigCatalog
from commands.runner import CommandRunner
from domain import call as v
from domain.errors import NotFoundError, ValidationError
from gateways.http.auth import Identity, requires
from gateways.http.common import (
    STAFF,
    actor,
    is_customer,
    iso,
    position_header,
    require_own,
    sees_pii,
    shown_pii,
    shown_text,
)
from gateways.http.fields import Id
from gateways.http.limits import Limits
from gateways.http.positions import Positions
from gateways.telephony.recordings import RecordingStore
from gateways.telephony.session import VoiceStack, answer_stream, live_publisher, live_subject
from gateways.telephony.settings import VoiceSettings
from gateways.telephony.twilio import MediaStreamBridge, twiml_connect, twiml_say, valid_signature
from infra.tokens import make_token
from read_models.call import CALLS, CallCostView, CallLatencies, CallQueries, CallView
from streams.keys import KeyStore
from streams.store import EventStore
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

Phone = Annotated[str, msgspec.Meta(pattern=r"^\+?[1-9]\d{6,14}$", description="E.164, like +15551234567")]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
CALLERS = requires("org_admin", "supervisor", "service", "support_agent")
READERS = requires("customer", "analyst", *STAFF)
ADMINS = requires("org_admin", "supervisor", "service")
RECORDING_URL = "/api/v1/voice/calls/{call_id}/recordings/{recording_id}"


class InitiateRequest(msgspec.Struct, forbid_unknown_fields=True):
    config_id: NonEmpty
    phone_number: Phone
    caller_id: Phone | None = None
    context: dict[str, Annotated[str, msgspec.Meta(max_length=500)]] | None = None
    conversation_id: NonEmpty | None = None


class TransferRequest(msgspec.Struct, forbid_unknown_fields=True):
    transfer_type: Literal["hot", "warm", "cold"] = "hot"
    agent_id: NonEmpty | None = None
    reason: Annotated[str, msgspec.Meta(max_length=200)] = ""
    summary: Annotated[str, msgspec.Meta(max_length=4000)] | None = None


class EndRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=200)] = "completed"
    resolution_status: Literal["resolved", "unresolved", "transferred", "abandoned", "failed"] | None = None
    followup_required: bool = False


class NumberRequest(msgspec.Struct, forbid_unknown_fields=True):
    phone_number: Phone


class LineRequest(msgspec.Struct, forbid_unknown_fields=True):
    outbound_per_hour: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 100
    max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    daily_budget_usd: Annotated[float, msgspec.Meta(ge=0)] = 500.0
    prices: v.UnitPrices | None = None


class VoiceDesk:
    """The API process's voice side: the call service, the session stack, where recordings are, the
    telephony settings, and the store (commits and live messages for the transcript socket)."""

    def __init__(
        self,
        service: CallService,
        stack: VoiceStack,
        recordings: RecordingStore,
        store: EventStore,
        settings: VoiceSettings,
        *,
        jwt_secret: str,
        demo_tenants: tuple[str, ...] = (),
    ) -> None:
        self.service = service
        self.stack = stack
        self.recordings = recordings
        self.store = store
        self.settings = settings
        self.secret = jwt_secret
        self.demo_tenants = demo_tenants

    @classmethod
    def assemble(
        cls,
        runner: CommandRunner,
        catalog: ConfigCatalog,
        tools: ToolRegistry,
        configs: ConfigProvider,
        store: EventStore,
        keys: KeyStore,
        *,
        data_dir: Path,
        jwt_secret: str,
        demo_tenants: tuple[str, ...] = (),
        env: Mapping[str, str],
    ) -> VoiceDesk:
        """The desk from its collaborators: the runner and config catalog (the call service), the
        tool registry and config versions (the sessions), the store (commits, live transcripts) and
        its keys (recordings sealed under the caller's), the environment (``VoiceSettings``)."""
        settings = VoiceSettings.from_env(env)
        service = CallService(runner, catalog, telephony=settings.telephony())
        recordings = settings.recordings(data_dir, keys)
        stack = VoiceStack(service, tools, configs, dict(env), recordings=recordings, publish=live_publisher(store))
        return cls(service, stack, recordings, store, settings, jwt_secret=jwt_secret, demo_tenants=demo_tenants)

    @property
    def twilio_token(self) -> str | None:
        return self.settings.twilio_auth_token

    @property
    def default_config(self) -> str:
        return self.settings.default_config

    def tenant_for(self, slug: str | None, called: str) -> str | None:
        """An inbound call's tenant: ``X-Tenant-Slug``, else the called number's, else the only demo tenant."""
        tenant = slug or self.settings.tenant_of(called)
        if tenant is None and len(self.demo_tenants) == 1:
            tenant = self.demo_tenants[0]
        return tenant

    async def close(self) -> None:
        for session in list(self.stack.sessions.values()):
            with contextlib.suppress(Exception):
                await session.close(reason="platform_stopping", ended_by="platform", resolution="unresolved")
        await self.stack.aclose()


async def _own_call(voice: VoiceDesk, identity: Identity, call_id: str) -> v.Call:
    state = await voice.service.state(identity.tenant, call_id)
    require_own(identity, state.user_id, f"call {call_id}")
    return state


class CallStarted(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's answer to an outbound call's initiation."""

    call_id: str
    product_type: str
    status: str
    sip_session_id: str
    estimated_connect_time: str
    config_version: int
    position: int


class TargetAgent(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str | None
    name: str
    phone_number: str | None
    estimated_connect_time: str


class CallSummaryView(msgspec.Struct, frozen=True, kw_only=True):
    transcript: str
    pii_collected: dict[str, str]
    tools_used: list[str]


class TransferStarted(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's answer to a transfer: to whom, and what they are told."""

    call_id: str
    product_type: str
    transfer_id: str
    status: Literal["transferred", "transferring", "failed"]
    target_agent: TargetAgent
    call_summary: CallSummaryView
    position: int


class EndSummary(msgspec.Struct, frozen=True, kw_only=True):
    transcript_url: str
    recording_url: str | None
    pii_collected: dict[str, str]
    tools_executed: list[str]
    sentiment_avg: float | None
    resolution_status: str
    csat_score: float | None = None


class CallFinished(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's end-of-call answer: the summary, the per-stage latencies and the cost."""

    call_id: str
    product_type: str
    status: str
    ended_at: str | None
    duration_seconds: int
    summary: EndSummary
    analytics: CallLatencies
    cost: CallCostView
    position: int = 0


class NumberListed(msgspec.Struct, frozen=True, kw_only=True):
    phone_number: str
    do_not_call: bool


class CallController(Controller):
    path = "/api/v1/voice"
    tags = ["voice"]

    @post("/calls/initiate", opt=CALLERS, status_code=202, summary="Place an outbound call")
    async def initiate(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[InitiateRequest],
        voice: NamedDependency[VoiceDesk],
        limits: NamedDependency[Limits],
    ) -> Response[CallStarted]:
        identity = request.user
        await limits.take([limits.tenant_bucket(identity.tenant)])
        outcome = await voice.service.initiate(
            identity.tenant,
            config_id=data.config_id,
            phone_number=data.phone_number,
            caller_id=data.caller_id,
            context=data.context,
            actor=actor(identity),
            conversation_id=data.conversation_id,
        )
        state = outcome.state
        body = CallStarted(
            call_id=state.call_id,
            product_type="voicebot",
            status="initiating",
            sip_session_id=state.call_id,
            estimated_connect_time="5 seconds",
            config_version=state.config_version,
            position=outcome.position,
        )
        return Response(body, status_code=202, headers={"X-Parley-Position": str(outcome.position)})

    @get("/calls/{call_id:str}", opt=READERS, summary="A call's status and transcript")
    async def status(
        self,
        request: Request[Identity, Any, Any],
        call_id: FromPath[str],
        call_queries: NamedDependency[CallQueries],
        positions: NamedDependency[Positions],
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> CallView:
        identity = request.user
        await positions.wait(min_position or position_header(request), CALLS.name)
        view = await call_queries.get(identity.tenant, call_id, recording_url=RECORDING_URL)
        if view is None:
            raise NotFoundError(f"call {call_id} not found")
        require_own(identity, view.user_id, f"call {call_id}")
        if sees_pii(identity, view.user_id):
            return view
        phone = shown_pii(identity, {"phone": view.phone_number or ""}, view.user_id)["phone"]
        transcript = [
            msgspec.structs.replace(line, text=shown_pii(identity, {"t": line.text or ""}, None)["t"])
            for line in view.transcript
        ]
        return msgspec.structs.replace(view, phone_number=phone, transcript=transcript)

    @get("/calls/{call_id:str}/history", opt=READERS, summary="A call turn by turn, with its config versions")
    async def history(
        self, request: Request[Identity, Any, Any], call_id: FromPath[str], voice: NamedDependency[VoiceDesk]
    ) -> CallHistory:
        """Each thing the caller said or typed, the config version that governed the answer (pinned to
        the call) beside the version active then, the tools run and the agent's replies."""
        identity = request.user
        state = await _own_call(voice, identity, call_id)
        found = await voice.service.history(identity.tenant, call_id)
        if sees_pii(identity, state.user_id):
            return found
        masked = [
            msgspec.structs.replace(
                turn,
                text=shown_text(identity, turn.text, None),
                replies=[msgspec.structs.replace(r, text=shown_text(identity, r.text, None)) for r in turn.replies],
            )
            for turn in found.turns
        ]
        return msgspec.structs.replace(found, turns=masked)

    @get(
        "/conversations/{conversation_id:str}/history",
        opt=READERS,
        summary="A conversation's chat and voice turns, interleaved",
    )
    async def conversation_history(
        self, request: Request[Identity, Any, Any], conversation_id: Id, voice: NamedDependency[VoiceDesk]
    ) -> ConversationTimeline:
        """The chat conversation's messages and the turns of the calls linked to it, in the order they
        happened, each with its channel (``chat`` or ``voice``) and the config version that governed
        it; a chat message sent during a call names the call it went to. From the event streams."""
        identity = request.user
        found = await voice.service.timeline(identity.tenant, conversation_id)
        require_own(identity, found.user_id, f"conversation {conversation_id}")
        if sees_pii(identity, found.user_id):
            return found
        masked = [msgspec.structs.replace(turn, text=shown_text(identity, turn.text, None)) for turn in found.turns]
        return msgspec.structs.replace(found, turns=masked)

    @post("/calls/{call_id:str}/transfer", opt=CALLERS, status_code=200, summary="Transfer to a human agent")
    async def transfer(
        self,
        request: Request[Identity, Any, Any],
        call_id: FromPath[str],
        data: JSONBody[TransferRequest],
        voice: NamedDependency[VoiceDesk],
    ) -> Response[TransferStarted]:
        identity = request.user
        await _own_call(voice, identity, call_id)
        requested, target, summary, outcome = await voice.service.transfer(
            identity.tenant,
            call_id,
            transfer_type=data.transfer_type,
            agent_id=data.agent_id,
            reason=data.reason,
            summary=data.summary,
            requested_by=actor(identity),
        )
        session = voice.stack.sessions.get(call_id)
        if session is not None and outcome.state.open_transfer == requested.transfer_id and target.target:
            # On a Twilio stream the human takes the call from the console: the AI goes quiet.
            session.brain.handed_off = True
            outcome = await voice.service.settle_transfer(
                identity.tenant, call_id, requested.transfer_id, await session.human_connected(requested)
            )
        state = outcome.state
        status: Literal["transferred", "transferring", "failed"] = (
            "transferred"
            if state.transferred_to == requested.transfer_id
            else "transferring"
            if state.open_transfer
            else "failed"
        )
        body = TransferStarted(
            call_id=call_id,
            product_type="voicebot",
            transfer_id=requested.transfer_id,
            status=status,
            target_agent=TargetAgent(
                agent_id=target.agent_id,
                name=target.name,
                phone_number=target.target,
                estimated_connect_time="10 seconds",
            ),
            call_summary=CallSummaryView(
                transcript=summary.transcript,
                pii_collected=shown_pii(identity, summary.pii_collected, None),
                tools_used=summary.tools_used,
            ),
            position=outcome.position,
        )
        return Response(body, headers={"X-Parley-Position": str(outcome.position)})

    @post("/calls/{call_id:str}/end", opt=CALLERS, status_code=200, summary="End a call")
    async def end(
        self,
        request: Request[Identity, Any, Any],
        call_id: FromPath[str],
        data: JSONBody[EndRequest],
        voice: NamedDependency[VoiceDesk],
    ) -> Response[CallFinished]:
        identity = request.user
        await _own_call(voice, identity, call_id)
        session = voice.stack.sessions.get(call_id)
        if session is not None:
            await session.close(reason=data.reason, ended_by=actor(identity), resolution=data.resolution_status)
        outcome = await voice.service.end(
            identity.tenant,
            call_id,
            reason=data.reason,
            resolution_status=data.resolution_status,
            followup_required=data.followup_required,
            ended_by=actor(identity),
        )
        events = await voice.service.events(identity.tenant, call_id)
        position = max(outcome.position, events[-1].seq if events else 0)
        body = msgspec.structs.replace(end_summary(identity, call_id, events), position=position)
        return Response(body, headers={"X-Parley-Position": str(position)})

    @get("/calls/{call_id:str}/recordings/{recording_id:str}", opt=READERS, summary="A call recording (WAV)")
    async def recording(
        self,
        request: Request[Identity, Any, Any],
        call_id: FromPath[str],
        recording_id: FromPath[str],
        voice: NamedDependency[VoiceDesk],
    ) -> Response[bytes]:
        identity = request.user
        state = await _own_call(voice, identity, call_id)
        if not sees_pii(identity, state.user_id):
            raise NotFoundError("recording not found")
        events = await voice.service.events(identity.tenant, call_id)
        stored = next(
            (
                e.event
                for e in events
                if isinstance(e.event, v.RecordingStored) and e.event.recording_id == recording_id
            ),
            None,
        )
        if stored is None:
            raise NotFoundError("recording not found")
        audio = await voice.recordings.open(identity.tenant, stored.uri)
        return Response(audio, media_type="audio/wav")

    @websocket("/calls/{call_id:str}/transcript", opt=READERS)
    async def transcript(
        self, socket: WebSocket[Identity, Any, Any], call_id: FromPath[str], voice: NamedDependency[VoiceDesk]
    ) -> None:
        identity = socket.user
        await socket.accept()
        try:
            await _own_call(voice, identity, call_id)
        except NotFoundError:
            await socket.close(code=4404, reason="call not found")
            return
        clear = sees_pii(identity, None) or not is_customer(identity)
        stream = StreamId(identity.tenant, v.AGGREGATE_TYPE, call_id)
        store = voice.store
        # Listen first, then read the history: nothing committed in between is missed.
        interim: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)

        async def heard(data: bytes) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                interim.put_nowait(data)

        stop_live = await store.listen_live(live_subject(identity.tenant, call_id), heard)
        commits = await store.watch(stream.subjects)
        pending: set[asyncio.Task[Any]] = set()
        try:
            seen = 0
            tools: list[dict[str, str]] = []
            for recorded in await store.read(stream):
                seen = recorded.version
                for message in transcript_messages(recorded.event, tools, clear):
                    await socket.send_json(message)
            next_commit = asyncio.ensure_future(anext(commits))
            next_interim = asyncio.ensure_future(interim.get())
            pending = {next_commit, next_interim}
            while True:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if next_interim in done:
                    await socket.send_json(msgspec.json.decode(next_interim.result()))
                    next_interim = asyncio.ensure_future(interim.get())
                if next_commit in done:
                    for recorded in next_commit.result():
                        if recorded.version <= seen:
                            continue
                        seen = recorded.version
                        for message in transcript_messages(recorded.event, tools, clear):
                            await socket.send_json(message)
                        if isinstance(recorded.event, v.CallEnded):
                            await socket.close()
                            return
                    next_commit = asyncio.ensure_future(anext(commits))
                pending = {next_commit, next_interim}
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass
        finally:
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await commits.close()
                await stop_live()

    @post("/do-not-call", opt=ADMINS, status_code=201, summary="Add a number to the do-not-call list")
    async def block(
        self, request: Request[Identity, Any, Any], data: JSONBody[NumberRequest], voice: NamedDependency[VoiceDesk]
    ) -> NumberListed:
        await voice.service.block(request.user.tenant, data.phone_number, actor(request.user))
        return NumberListed(phone_number=data.phone_number, do_not_call=True)

    @delete("/do-not-call/{phone_number:str}", opt=ADMINS, status_code=200, summary="Take a number off the list")
    async def unblock(
        self, request: Request[Identity, Any, Any], phone_number: FromPath[str], voice: NamedDependency[VoiceDesk]
    ) -> NumberListed:
        await voice.service.unblock(request.user.tenant, phone_number, actor(request.user))
        return NumberListed(phone_number=phone_number, do_not_call=False)

    @put("/line", opt=ADMINS, summary="The tenant's call limits and unit prices")
    async def line(
        self, request: Request[Identity, Any, Any], data: JSONBody[LineRequest], voice: NamedDependency[VoiceDesk]
    ) -> v.LineSettings:
        settings = v.LineSettings(
            outbound_per_hour=data.outbound_per_hour,
            max_concurrent=data.max_concurrent,
            daily_budget_usd=data.daily_budget_usd,
            prices=data.prices or v.UnitPrices(),
        )
        await voice.service.configure_line(request.user.tenant, settings, actor(request.user))
        return settings

    # Twilio -----------------------------------------------------------------------------------

    @post("/twilio/inbound", opt={"exclude_from_auth": True}, status_code=200, summary="Twilio voice webhook")
    async def twilio_inbound(self, request: Request[Any, Any, Any], voice: NamedDependency[VoiceDesk]) -> Response[str]:
        form = {key: str(value) for key, value in (await request.form()).items()}
        if voice.twilio_token is not None:
            url = str(request.url)
            if not valid_signature(voice.twilio_token, url, form, request.headers.get("X-Twilio-Signature")):
                raise NotAuthorizedException("invalid X-Twilio-Signature")
        tenant = voice.tenant_for(request.headers.get("X-Tenant-Slug"), form.get("To", ""))
        if tenant is None:
            return Response(twiml_say("Sorry, this number is not in service."), media_type="application/xml")
        config_id = request.query_params.get("config_id") or voice.default_config
        token = make_token(
            voice.secret, subject=form.get("CallSid", "call"), tenant=tenant, roles=["telephony"], hours=1
        )
        scheme = "wss" if request.url.scheme == "https" else "ws"
        stream_url = f"{scheme}://{request.url.netloc}/api/v1/voice/twilio/stream"
        parameters = {"token": token, "config_id": config_id, "from": form.get("From", ""), "to": form.get("To", "")}
        if conversation := request.query_params.get("conversation_id"):
            parameters["conversation_id"] = conversation
        return Response(twiml_connect(stream_url, parameters), media_type="application/xml")

    @websocket("/twilio/stream", opt={"exclude_from_auth": True})
    async def twilio_stream(self, socket: WebSocket[Any, Any, Any], voice: NamedDependency[VoiceDesk]) -> None:
        await socket.accept()

        async def receive() -> dict[str, Any] | None:
            try:
                return await socket.receive_json()  # type: ignore[no-any-return]
            except WebSocketDisconnect:
                return None

        async def send(message: dict[str, Any]) -> None:
            with contextlib.suppress(Exception):
                await socket.send_json(message)

        async def on_start(start: dict[str, Any], audio_in: Any, audio_out: Any) -> Any:
            parameters = start.get("customParameters") or {}
            tenant = stream_tenant(voice.secret, str(parameters.get("token", "")))
            config_id = str(parameters.get("config_id") or voice.default_config)
            return await answer_stream(voice.stack, tenant, config_id, start, audio_in, audio_out)

        await MediaStreamBridge(receive, send, on_start).run()
        with contextlib.suppress(Exception):
            await socket.close()


def stream_tenant(secret: str, token: str) -> str:
    """The tenant a media stream is for, from the token the webhook put in its TwiML."""
    from litestar.security.jwt import Token

    try:
        decoded = Token.decode(token, secret, "HS256")
    except Exception as e:
        raise NotAuthorizedException("the media stream's token is not valid") from e
    tenant = decoded.extras.get("tenant")
    if "telephony" not in (decoded.extras.get("roles") or []) or not isinstance(tenant, str):
        raise NotAuthorizedException("the media stream's token is not a telephony token")
    return tenant


def transcript_messages(event: Any, tools: list[dict[str, str]], clear: bool) -> list[dict[str, Any]]:
    """A call event as the seed's live transcript events."""
    from domain.pii import mask_text

    def shown(text: str | None) -> str | None:
        return text if clear or text is None else mask_text(text)

    match event:
        case v.CallerSpoke():
            return [
                {"event": "transcript_final", "speaker": "user", "text": shown(event.text),
                 "confidence": event.confidence, "source": event.source, "timestamp": iso(event.at)}
            ]  # fmt: skip
        case v.ToolCallStarted():
            tools.append({"tool": event.tool, "status": "executing"})
            return []
        case v.AgentSpoke():
            calls, tools[:] = list(tools), []
            return [
                {"event": "agent_response", "speaker": "agent", "text": shown(event.text), "tool_calls": calls,
                 "interrupted": event.interrupted, "timestamp": iso(event.at)}
            ]  # fmt: skip
        case v.ChatbotDataShared():
            return [
                {"event": "chat_data_shared", "speaker": "user", "data_type": event.data_type,
                 "text": shown(v.shared_text(event.shared_data) if event.shared_data else None),
                 "conversation_id": event.conversation_id, "timestamp": iso(event.at)}
            ]  # fmt: skip
        case v.SentimentUpdated():
            return [
                {"event": "sentiment_update", "sentiment_score": event.score, "emotion": event.emotion,
                 "escalation_suggested": event.escalation_suggested, "timestamp": iso(event.at)}
            ]  # fmt: skip
        case v.TransferRequested():
            return [{"event": "transfer", "status": "transferring", "transfer_type": event.transfer_type,
                     "target_agent_id": event.agent_id, "timestamp": iso(event.at)}]  # fmt: skip
        case v.TransferConnected():
            return [{"event": "transfer", "status": "connected", "timestamp": iso(event.at)}]
        case v.CallEnded():
            return [{"event": "call_ended", "resolution_status": event.resolution_status,
                     "duration_seconds": event.duration_seconds, "timestamp": iso(event.ended_at)}]  # fmt: skip
    return []


def end_summary(identity: Identity, call_id: str, events: list[Any]) -> CallFinished:
    """The seed's end-of-call answer, from the call's events."""
    state = v.initial()
    ended: v.CallEnded | None = None
    recording: str | None = None
    latencies: dict[str, list[float]] = {"stt": [], "llm": [], "tts": [], "e2e": []}
    for recorded in events:
        event = recorded.event
        state = v.evolve(state, event)
        match event:
            case v.CallEnded():
                ended = event
            case v.RecordingStored(track="caller"):
                recording = f"/api/v1/voice/calls/{call_id}/recordings/{event.recording_id}"
            case v.CallerSpoke() if event.transcription_delay_ms is not None:
                latencies["stt"].append(event.transcription_delay_ms)
            case v.AgentSpoke():
                for key, value in (
                    ("llm", event.llm_ttft_ms),
                    ("tts", event.tts_ttfb_ms),
                    ("e2e", event.e2e_latency_ms),
                ):
                    if value is not None:
                        latencies[key].append(value)
    if ended is None:
        raise ValidationError("the call has not ended", fields={"call_id": "still in progress"})
    summary = summarize(events)
    cost = ended.cost
    return CallFinished(
        call_id=call_id,
        product_type="voicebot",
        status="ended",
        ended_at=iso(ended.ended_at),
        duration_seconds=round(ended.duration_seconds),
        summary=EndSummary(
            transcript_url=f"/api/v1/voice/calls/{call_id}",
            recording_url=recording,
            pii_collected=shown_pii(identity, summary.pii_collected, state.user_id),
            tools_executed=list(dict.fromkeys(summary.tools_used)),
            sentiment_avg=v.sentiment_average(state),
            resolution_status=ended.resolution_status,
        ),
        analytics=CallLatencies(
            stt_latency_avg_ms=_avg(latencies["stt"]),
            tts_latency_avg_ms=_avg(latencies["tts"]),
            llm_latency_avg_ms=_avg(latencies["llm"]),
            total_latency_p95_ms=_p95(latencies["e2e"]),
        ),
        cost=CallCostView(stt=cost.stt, tts=cost.tts, llm=cost.llm, telephony=cost.telephony, total=cost.total),
    )


def _avg(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)


__all__ = ["CallController", "VoiceDesk", "VoiceStack"]
