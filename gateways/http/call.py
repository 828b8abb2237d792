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
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import structlog
from litestar import Controller, Request, Response, WebSocket, delete, get, post, put, websocket
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, WebSocketDisconnect
from litestar.params import FromPath, JSONBody, QueryParameter

from commands.call import CallService, summarize
from domain import call as v
from domain.errors import NotFoundError, ValidationError
from gateways.http.auth import Identity, requires
from gateways.http.common import STAFF, actor, is_customer, iso, position_header, require_own, sees_pii, shown_pii
from gateways.telephony.recordings import RecordingStore
from gateways.telephony.twilio import MediaStreamBridge, twiml_connect, twiml_say, valid_signature
from infra.tokens import make_token
from streams.jetstream import RawMessage
from streams.subjects import StreamId
from voice_worker.session import VoiceStack, answer_stream

Platform = Any  # the API process's services (gateways.http.app.ApiServices), until this asks for narrow ones

log = structlog.get_logger(__name__)

Phone = Annotated[str, msgspec.Meta(pattern=r"^\+?[1-9]\d{6,14}$", description="E.164, like +15551234567")]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
CALLERS = requires("org_admin", "supervisor", "service", "support_agent")
READERS = requires("customer", "analyst", *STAFF)
ADMINS = requires("org_admin", "supervisor", "service")
LIVE_PREFIX = "parley.live"
DEFAULT_VOICE_CONFIG = "voice-bot"


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
    """The API process's voice side: the call service, the session stack, the telephony port."""

    def __init__(self, platform: Platform) -> None:
        env = dict(os.environ)
        telephony = None
        if env.get("LIVEKIT_URL") and env.get("LIVEKIT_API_KEY") and env.get("LIVEKIT_API_SECRET"):
            from gateways.telephony.livekit_sip import LiveKitSip

            telephony = LiveKitSip(
                env["LIVEKIT_URL"],
                env["LIVEKIT_API_KEY"],
                env["LIVEKIT_API_SECRET"],
                trunk_id=env.get("LIVEKIT_SIP_OUTBOUND_TRUNK", ""),
            )
        self.service = CallService(platform.runner, platform.configs, telephony=telephony)
        nc = platform.opened.nc

        async def publish(tenant: str, call_id: str, event: str, body: dict[str, Any]) -> None:
            await nc.publish(live_subject(tenant, call_id), msgspec.json.encode({"event": event, **body}))

        self.recordings = RecordingStore(Path(platform.opened.settings.data_dir) / "recordings", platform.opened.keys)
        self.stack = VoiceStack(
            self.service, platform.tools, platform.agent_configs, env, recordings=self.recordings, publish=publish
        )
        self.secret = platform.settings.jwt_secret
        self.twilio_token = env.get("TWILIO_AUTH_TOKEN") or None
        self.numbers = _numbers(env.get("PARLEY_VOICE_NUMBERS", ""))
        self.default_config = env.get("PARLEY_VOICE_CONFIG", DEFAULT_VOICE_CONFIG)
        self.demo_tenants = platform.settings.demo_tenants

    async def close(self) -> None:
        for session in list(self.stack.sessions.values()):
            with contextlib.suppress(Exception):
                await session.close(reason="platform_stopping", ended_by="platform", resolution="unresolved")
        await self.stack.aclose()


def _numbers(spec: str) -> dict[str, str]:
    """``+15550001111=acme,+15550002222=globex``: which tenant a called number belongs to."""
    pairs = (item.split("=", 1) for item in spec.split(",") if "=" in item)
    return {number.strip(): tenant.strip() for number, tenant in pairs}


def live_subject(tenant: str, call_id: str) -> str:
    return f"{LIVE_PREFIX}.{tenant}.call.{call_id}"


def _desk(platform: Platform) -> VoiceDesk:
    desk = getattr(platform, "calls", None)
    if desk is None:
        raise NotFoundError("voice calls are not enabled in this process")
    return desk  # type: ignore[no-any-return]


async def _own_call(platform: Platform, identity: Identity, call_id: str) -> v.Call:
    state = await _desk(platform).service.state(identity.tenant, call_id)
    require_own(identity, state.user_id, f"call {call_id}")
    return state


class CallController(Controller):
    path = "/api/v1/voice"
    tags = ["voice"]

    @post("/calls/initiate", opt=CALLERS, status_code=202, summary="Place an outbound call")
    async def initiate(
        self, request: Request[Identity, Any, Any], data: JSONBody[InitiateRequest], platform: NamedDependency[Platform]
    ) -> Response[dict[str, Any]]:
        identity = request.user
        await platform.limits.take([platform.limits.tenant_bucket(identity.tenant)])
        desk = _desk(platform)
        outcome = await desk.service.initiate(
            identity.tenant,
            config_id=data.config_id,
            phone_number=data.phone_number,
            caller_id=data.caller_id,
            context=data.context,
            actor=actor(identity),
            conversation_id=data.conversation_id,
        )
        state = outcome.state
        body = {
            "call_id": state.call_id,
            "product_type": "voicebot",
            "status": "initiating",
            "sip_session_id": state.call_id,
            "estimated_connect_time": "5 seconds",
            "config_version": state.config_version,
            "position": outcome.position,
        }
        return Response(body, status_code=202, headers={"X-Parley-Position": str(outcome.position)})

    @get("/calls/{call_id:str}", opt=READERS, summary="A call's status and transcript")
    async def status(
        self,
        request: Request[Identity, Any, Any],
        call_id: FromPath[str],
        platform: NamedDependency[Platform],
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> dict[str, Any]:
        from read_models.call import get_call

        identity = request.user
        position = min_position or position_header(request)
        if position:
            await _wait(platform, position)
        async with platform.pool.connection() as conn:
            view = await get_call(
                conn,
                identity.tenant,
                call_id,
                recording_url="/api/v1/voice/calls/{call_id}/recordings/{recording_id}",
            )
        if view is None:
            raise NotFoundError(f"call {call_id} not found")
        require_own(identity, view.user_id, f"call {call_id}")
        body: dict[str, Any] = msgspec.to_builtins(view)
        if not sees_pii(identity, view.user_id):
            body["phone_number"] = shown_pii(identity, {"phone": view.phone_number or ""}, view.user_id)["phone"]
            for line in body["transcript"]:
                line["text"] = shown_pii(identity, {"t": line.get("text") or ""}, None)["t"]
        return body

    @post("/calls/{call_id:str}/transfer", opt=CALLERS, status_code=200, summary="Transfer to a human agent")
    async def transfer(
        self,
        request: Request[Identity, Any, Any],
        call_id: FromPath[str],
        data: JSONBody[TransferRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        identity = request.user
        await _own_call(platform, identity, call_id)
        desk = _desk(platform)
        requested, target, summary, outcome = await desk.service.transfer(
            identity.tenant,
            call_id,
            transfer_type=data.transfer_type,
            agent_id=data.agent_id,
            reason=data.reason,
            summary=data.summary,
            requested_by=actor(identity),
        )
        session = desk.stack.sessions.get(call_id)
        if session is not None and outcome.state.open_transfer == requested.transfer_id and target.target:
            # On a Twilio stream the human takes the call from the console: the AI goes quiet.
            session.brain.handed_off = True
            outcome = await desk.service.settle_transfer(
                identity.tenant, call_id, requested.transfer_id, await _connected(session, requested)
            )
        state = outcome.state
        status = (
            "transferred"
            if state.transferred_to == requested.transfer_id
            else "transferring"
            if state.open_transfer
            else "failed"
        )
        body = {
            "call_id": call_id,
            "product_type": "voicebot",
            "transfer_id": requested.transfer_id,
            "status": status,
            "target_agent": {
                "agent_id": target.agent_id,
                "name": target.name,
                "phone_number": target.target,
                "estimated_connect_time": "10 seconds",
            },
            "call_summary": {
                "transcript": summary.transcript,
                "pii_collected": shown_pii(identity, summary.pii_collected, None),
                "tools_used": summary.tools_used,
            },
            "position": outcome.position,
        }
        return Response(body, headers={"X-Parley-Position": str(outcome.position)})

    @post("/calls/{call_id:str}/end", opt=CALLERS, status_code=200, summary="End a call")
    async def end(
        self,
        request: Request[Identity, Any, Any],
        call_id: FromPath[str],
        data: JSONBody[EndRequest],
        platform: NamedDependency[Platform],
    ) -> Response[dict[str, Any]]:
        identity = request.user
        await _own_call(platform, identity, call_id)
        desk = _desk(platform)
        session = desk.stack.sessions.get(call_id)
        if session is not None:
            await session.close(reason=data.reason, ended_by=actor(identity), resolution=data.resolution_status)
        outcome = await desk.service.end(
            identity.tenant,
            call_id,
            reason=data.reason,
            resolution_status=data.resolution_status,
            followup_required=data.followup_required,
            ended_by=actor(identity),
        )
        events = await desk.service.events(identity.tenant, call_id)
        body = end_summary(identity, call_id, events)
        body["position"] = max(outcome.position, events[-1].seq if events else 0)
        return Response(body, headers={"X-Parley-Position": str(body["position"])})

    @get("/calls/{call_id:str}/recordings/{recording_id:str}", opt=READERS, summary="A call recording (WAV)")
    async def recording(
        self,
        request: Request[Identity, Any, Any],
        call_id: FromPath[str],
        recording_id: FromPath[str],
        platform: NamedDependency[Platform],
    ) -> Response[bytes]:
        identity = request.user
        state = await _own_call(platform, identity, call_id)
        if not sees_pii(identity, state.user_id):
            raise NotFoundError("recording not found")
        desk = _desk(platform)
        events = await desk.service.events(identity.tenant, call_id)
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
        audio = await desk.recordings.open(identity.tenant, stored.uri)
        return Response(audio, media_type="audio/wav")

    @websocket("/calls/{call_id:str}/transcript", opt=READERS)
    async def transcript(
        self, socket: WebSocket[Identity, Any, Any], call_id: FromPath[str], platform: NamedDependency[Platform]
    ) -> None:
        identity = socket.user
        await socket.accept()
        try:
            await _own_call(platform, identity, call_id)
        except NotFoundError:
            await socket.close(code=4404, reason="call not found")
            return
        clear = sees_pii(identity, None) or not is_customer(identity)
        stream = StreamId(identity.tenant, v.AGGREGATE_TYPE, call_id)
        live: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)
        nc = platform.opened.nc
        commits = await nc.subscribe(stream.subjects, cb=live.put)
        interim = await nc.subscribe(live_subject(identity.tenant, call_id), cb=live.put)
        store = platform.opened.store
        try:
            history = await store.read(stream)
            seen = 0
            tools: list[dict[str, str]] = []
            for recorded in history:
                seen = recorded.version
                for message in transcript_messages(recorded.event, tools, clear):
                    await socket.send_json(message)
            while True:
                msg = await live.get()
                if msg.subject.startswith(LIVE_PREFIX):
                    await socket.send_json(msgspec.json.decode(msg.data))
                    continue
                raw = RawMessage(seq=0, subject=msg.subject, headers=msg.headers or {}, data=msg.data, time="")
                for recorded in store.decode(raw, stream):
                    if recorded.version <= seen:
                        continue
                    seen = recorded.version
                    for message in transcript_messages(recorded.event, tools, clear):
                        await socket.send_json(message)
                    if isinstance(recorded.event, v.CallEnded):
                        await socket.close()
                        return
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await commits.unsubscribe()
                await interim.unsubscribe()

    @post("/do-not-call", opt=ADMINS, status_code=201, summary="Add a number to the do-not-call list")
    async def block(
        self, request: Request[Identity, Any, Any], data: JSONBody[NumberRequest], platform: NamedDependency[Platform]
    ) -> dict[str, Any]:
        await _desk(platform).service.block(request.user.tenant, data.phone_number, actor(request.user))
        return {"phone_number": data.phone_number, "do_not_call": True}

    @delete("/do-not-call/{phone_number:str}", opt=ADMINS, status_code=200, summary="Take a number off the list")
    async def unblock(
        self, request: Request[Identity, Any, Any], phone_number: FromPath[str], platform: NamedDependency[Platform]
    ) -> dict[str, Any]:
        await _desk(platform).service.unblock(request.user.tenant, phone_number, actor(request.user))
        return {"phone_number": phone_number, "do_not_call": False}

    @put("/line", opt=ADMINS, summary="The tenant's call limits and unit prices")
    async def line(
        self, request: Request[Identity, Any, Any], data: JSONBody[LineRequest], platform: NamedDependency[Platform]
    ) -> dict[str, Any]:
        settings = v.LineSettings(
            outbound_per_hour=data.outbound_per_hour,
            max_concurrent=data.max_concurrent,
            daily_budget_usd=data.daily_budget_usd,
            prices=data.prices or v.UnitPrices(),
        )
        await _desk(platform).service.configure_line(request.user.tenant, settings, actor(request.user))
        return msgspec.to_builtins(settings)  # type: ignore[no-any-return]

    # Twilio -----------------------------------------------------------------------------------

    @post("/twilio/inbound", opt={"exclude_from_auth": True}, status_code=200, summary="Twilio voice webhook")
    async def twilio_inbound(
        self, request: Request[Any, Any, Any], platform: NamedDependency[Platform]
    ) -> Response[str]:
        desk = _desk(platform)
        form = {key: str(value) for key, value in (await request.form()).items()}
        if desk.twilio_token is not None:
            url = str(request.url)
            if not valid_signature(desk.twilio_token, url, form, request.headers.get("X-Twilio-Signature")):
                raise NotAuthorizedException("invalid X-Twilio-Signature")
        tenant = request.headers.get("X-Tenant-Slug") or desk.numbers.get(form.get("To", ""))
        if tenant is None and len(desk.demo_tenants) == 1:
            tenant = desk.demo_tenants[0]
        if tenant is None:
            return Response(twiml_say("Sorry, this number is not in service."), media_type="application/xml")
        config_id = request.query_params.get("config_id") or desk.default_config
        token = make_token(
            desk.secret, subject=form.get("CallSid", "call"), tenant=tenant, roles=["telephony"], hours=1
        )
        scheme = "wss" if request.url.scheme == "https" else "ws"
        stream_url = f"{scheme}://{request.url.netloc}/api/v1/voice/twilio/stream"
        parameters = {"token": token, "config_id": config_id, "from": form.get("From", ""), "to": form.get("To", "")}
        return Response(twiml_connect(stream_url, parameters), media_type="application/xml")

    @websocket("/twilio/stream", opt={"exclude_from_auth": True})
    async def twilio_stream(self, socket: WebSocket[Any, Any, Any], platform: NamedDependency[Platform]) -> None:
        desk = _desk(platform)
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
            tenant = stream_tenant(desk.secret, str(parameters.get("token", "")))
            config_id = str(parameters.get("config_id") or desk.default_config)
            return await answer_stream(desk.stack, tenant, config_id, start, audio_in, audio_out)

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


async def _connected(session: Any, requested: v.TransferRequested) -> Any:
    from commands.call import Connected

    if session.connect_human is not None:
        return await session.connect_human(requested, requested.summary or "")
    return Connected(ok=True)


async def _wait(platform: Platform, position: int) -> None:
    watcher = getattr(platform, "call_positions", None)
    if watcher is not None:
        await watcher.wait(position, platform.settings.read_wait_seconds)
        return
    from read_models.call import CALLS

    deadline = asyncio.get_running_loop().time() + platform.settings.read_wait_seconds
    while asyncio.get_running_loop().time() < deadline:
        async with platform.pool.connection() as conn:
            cur = await conn.execute(f"SELECT coalesce(max(last_seq), 0) FROM {CALLS.schema}.checkpoint")
            row = await cur.fetchone()
        if row and row[0] >= position:
            return
        await asyncio.sleep(0.05)


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


def end_summary(identity: Identity, call_id: str, events: list[Any]) -> dict[str, Any]:
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
    return {
        "call_id": call_id,
        "product_type": "voicebot",
        "status": "ended",
        "ended_at": iso(ended.ended_at),
        "duration_seconds": round(ended.duration_seconds),
        "summary": {
            "transcript_url": f"/api/v1/voice/calls/{call_id}",
            "recording_url": recording,
            "pii_collected": shown_pii(identity, summary.pii_collected, state.user_id),
            "tools_executed": list(dict.fromkeys(summary.tools_used)),
            "sentiment_avg": v.sentiment_average(state),
            "resolution_status": ended.resolution_status,
            "csat_score": None,
        },
        "analytics": {
            "stt_latency_avg_ms": _avg(latencies["stt"]),
            "tts_latency_avg_ms": _avg(latencies["tts"]),
            "llm_latency_avg_ms": _avg(latencies["llm"]),
            "total_latency_p95_ms": _p95(latencies["e2e"]),
        },
        "cost": {**msgspec.to_builtins(ended.cost), "total": ended.cost.total},
    }


def _avg(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)


__all__ = ["CallController", "VoiceDesk", "VoiceStack"]
