"""The LiveKit Agents worker: ``python -m voice_worker``, a process of its own that ``./parley up``
starts when ``LIVEKIT_URL`` (with ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET``) is set.

It registers with that LiveKit server as the agent ``parley`` (explicit dispatch: the server hands
it the rooms of Parley's calls) and, for each job, joins the call's room and runs the same
``CallSession`` the Twilio path runs (``gateways.telephony.session``: silero VAD or the provider's
endpointing, the STT, Parley's agent with the config's tools, the TTS), with the room's audio in
and out instead of a media stream. Every turn is a command on the call, as on the Twilio path, and
interim transcripts go to the call's live subject (the transcript socket's).

Which call a room is (``call_of``): an outbound call's job carries it in its dispatch metadata
(``parley.tenant``, ``parley.call_id``: the API recorded the call, dispatched the worker, then
dialed; the callee's attributes say the same); an inbound SIP caller is answered here, its tenant
found by the number it called (``sip.trunkPhoneNumber``, ``PARLEY_VOICE_NUMBERS``), its call id
derived from the SIP call id.

A job runs in a process of the worker's pool (LiveKit's), so it opens what it needs (the event
store, PostgreSQL for the tools) for the call's length; the VAD model is loaded when the process
is prewarmed, before any call.

A hot or warm transfer the agent decides on is made from here (``CallService.transfer`` through
``LiveKitSip``): the human is dialed into a consultation room, and ``ConsultBriefing`` joins that
room and speaks the call's summary with the call's TTS, to its last frame, before the human is
moved into the caller's room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from livekit import api, rtc
from livekit.agents import AgentServer, JobContext, JobProcess, tts

from gateways.telephony.livekit_sip import AGENT_NAME, LiveKitSip
from gateways.telephony.settings import VoiceSettings

if TYPE_CHECKING:
    from gateways.telephony.session import VoiceStack
    from streams.factory import StoreSettings

log = structlog.get_logger(__name__)

__all__ = [
    "AGENT_NAME",
    "CallRef",
    "ConsultBriefing",
    "agent_server",
    "brief_transfers",
    "call_of",
    "call_services",
    "entrypoint",
    "serve",
]


class CallRef(msgspec.Struct, frozen=True, kw_only=True):
    """Which call a room's caller is on."""

    tenant: str
    call_id: str
    direction: str  # outbound: recorded by the API before it dialed; inbound: answered here
    phone_number: str | None = None
    sip_call_id: str | None = None


def call_of(attributes: Mapping[str, str], settings: VoiceSettings, metadata: str = "") -> CallRef | None:
    """The call a room is for, from its job's dispatch metadata or its caller's attributes (None:
    not a call of ours)."""
    said: dict[str, Any] = {}
    if metadata:
        with contextlib.suppress(ValueError):
            loaded = json.loads(metadata)
            said = loaded if isinstance(loaded, dict) else {}
    tenant = str(said.get("parley.tenant") or attributes.get("parley.tenant") or "")
    call_id = str(said.get("parley.call_id") or attributes.get("parley.call_id") or "")
    if tenant and call_id:
        return CallRef(
            tenant=tenant,
            call_id=call_id,
            direction="outbound",
            phone_number=attributes.get("sip.phoneNumber") or None,
            sip_call_id=attributes.get("sip.callID") or None,
        )
    called = attributes.get("sip.trunkPhoneNumber", "")
    found = settings.tenant_of(called)
    sip_call_id = attributes.get("sip.callID") or attributes.get("sip.callIDFull")
    if found is None or not sip_call_id:
        return None
    return CallRef(
        tenant=found,
        call_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"livekit-sip:{found}:{sip_call_id}")),
        direction="inbound",
        phone_number=attributes.get("sip.phoneNumber") or None,
        sip_call_id=sip_call_id,
    )


@asynccontextmanager
async def call_services(
    env: Mapping[str, str], vad_model: Any = None, *, store: StoreSettings | None = None
) -> AsyncIterator[VoiceStack]:
    """What one call needs, opened for its length: the store (``store``, default from the
    environment), the runner, the configs, the tools, the call service and a session stack
    (recordings sealed as on the Twilio path, interim transcripts on the call's live subject)."""
    from psycopg_pool import AsyncConnectionPool

    from agents.config import VersionedConfigs
    from agents.tools import demo_registry
    from commands.call import CALL, VOICE_LINE, CallService
    from commands.config import AGENT_CONFIG, ConfigCatalog
    from commands.runner import CommandRunner
    from domain.escalation import DECIDER as AGENT_POOL
    from gateways.telephony.session import VoiceStack, live_publisher
    from streams.factory import StoreSettings, open_store

    settings = VoiceSettings.from_env(env)
    opened = await open_store(store or StoreSettings.from_env(), name="parley-voice-worker")
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        env.get("DATABASE_URL", ""), min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    )
    try:
        await pool.open(wait=True, timeout=30)
        runner = CommandRunner.for_aggregates(
            opened.store, [AGENT_CONFIG, AGENT_POOL, CALL, VOICE_LINE], keys=opened.keys, snapshots=opened.snapshots
        )
        catalog = ConfigCatalog(runner)
        calls = CallService(runner, catalog, telephony=settings.telephony())
        stack = VoiceStack(
            calls,
            demo_registry(pool.connection),
            VersionedConfigs(catalog.state),
            dict(env),
            recordings=settings.recordings(opened.settings.data_dir, opened.keys),
            publish=live_publisher(opened.store),
            vad_model=vad_model,
        )
        try:
            yield stack
        finally:
            await stack.aclose()
            await catalog.close()
    finally:
        await pool.close()
        await opened.close()


Join = Callable[[str, str, int], AbstractAsyncContextManager[rtc.AudioSource]]  # room, identity, sample rate


def room_joiner(url: str, api_key: str, api_secret: str) -> Join:
    """Into a room of the LiveKit server as ``identity``, a microphone track published: its source."""

    @asynccontextmanager
    async def join(room_name: str, identity: str, sample_rate: int) -> AsyncIterator[rtc.AudioSource]:
        grants = api.VideoGrants(room_join=True, room=room_name, can_publish=True, can_subscribe=False)
        token = api.AccessToken(api_key, api_secret).with_identity(identity).with_name("Parley")
        room = rtc.Room()
        await room.connect(url, token.with_grants(grants).to_jwt())
        source = rtc.AudioSource(sample_rate, 1)
        try:
            track = rtc.LocalAudioTrack.create_audio_track("call-summary", source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await room.local_participant.publish_track(track, options)
            yield source
        finally:
            await source.aclose()
            await room.disconnect()

    return join


class ConsultBriefing:
    """A hot transfer's briefing (``LiveKitSip.brief``): in the consultation room the human was dialed
    into, the call's summary spoken with the call's TTS; it returns once the last frame has played,
    so the human hears it all before being moved to the caller."""

    def __init__(self, speech: tts.TTS[Any], join: Join) -> None:
        self.speech, self.join = speech, join

    async def __call__(self, consult_room: str, human: str, summary: str) -> None:
        identity = f"parley-briefing-{consult_room}"
        async with self.join(consult_room, identity, self.speech.sample_rate) as source:
            async with self.speech.synthesize(summary) as stream:
                async for audio in stream:
                    await source.capture_frame(audio.frame)
            await source.wait_for_playout()
        log.info("voice_worker.briefed", room=consult_room, human=human, characters=len(summary))


def brief_transfers(telephony: object, speech: tts.TTS[Any], settings: VoiceSettings) -> bool:
    """The call's transfers through LiveKit SIP briefed by this worker (True), with the call's TTS."""
    if not isinstance(telephony, LiveKitSip):
        return False
    join = room_joiner(settings.livekit_url or "", settings.livekit_api_key or "", settings.livekit_api_secret or "")
    telephony.brief = ConsultBriefing(speech, join)
    return True


async def answered(room: rtc.Room, participant: rtc.RemoteParticipant, within: float = 60.0) -> bool:
    """Until a SIP callee picks up (``sip.callStatus`` is ``active``); any other participant is there."""
    if participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
        return True
    picked_up = asyncio.Event()

    def changed(_changed: Mapping[str, str], who: rtc.Participant) -> None:
        if who.identity == participant.identity and who.attributes.get("sip.callStatus") == "active":
            picked_up.set()

    if participant.attributes.get("sip.callStatus", "active") == "active":
        return True
    room.on("participant_attributes_changed", changed)
    try:
        await asyncio.wait_for(picked_up.wait(), within)
        return True
    except TimeoutError:
        return False
    finally:
        room.off("participant_attributes_changed", changed)


async def entrypoint(ctx: JobContext) -> None:
    """One call's room: join it, find the caller, run the call's session until the caller leaves."""
    from domain import call as v
    from gateways.telephony.session import CallSession

    env = dict(os.environ)
    settings = VoiceSettings.from_env(env)
    await ctx.connect()
    participant = await ctx.wait_for_participant()
    ref = call_of(participant.attributes, settings, ctx.job.metadata)
    if ref is None:
        log.warning("voice_worker.not_a_call", room=ctx.room.name, identity=participant.identity)
        return
    left = asyncio.Event()

    def gone(who: rtc.RemoteParticipant) -> None:
        if who.identity == participant.identity:
            left.set()

    ctx.room.on("participant_disconnected", gone)
    async with call_services(env, ctx.proc.userdata.get("vad")) as stack:
        if ref.direction == "inbound":
            outcome = await stack.calls.answer(
                ref.tenant,
                call_id=ref.call_id,
                config_id=settings.default_config,
                phone_number=ref.phone_number,
                transport="livekit_sip",
                provider_call_id=ref.sip_call_id,
                room_name=ctx.room.name,
            )
            call = outcome.state
        else:
            if not await answered(ctx.room, participant):
                await stack.calls.end(
                    ref.tenant, ref.call_id, reason="no_answer", resolution_status="failed", ended_by="telephony"
                )
                return
            connect = v.ConnectCall(provider_call_id=ref.sip_call_id, at=datetime.now(UTC))
            await stack.calls.record(ref.tenant, ref.call_id, connect, f"connect-{ref.call_id}")
            call = await stack.calls.state(ref.tenant, ref.call_id)
        config = await stack.configs.get(ref.tenant, call.config_id, call.config_version)
        session = CallSession(stack, ref.tenant, call, config, room=ctx.room, participant=participant.identity)
        brief_transfers(stack.calls.telephony, session.speech.tts, settings)
        await session.start()
        await left.wait()
        await session.close(reason="caller_hung_up", ended_by="caller")


def prewarm(proc: JobProcess) -> None:
    """Before any call: the VAD model in memory (the STT's decoder loads with its call's vocabulary)."""
    from gateways.speech.providers import load_vad

    proc.userdata["vad"] = load_vad()


def agent_server(
    settings: VoiceSettings, *, idle_processes: int = 1, port: int = 0, load_threshold: float = 0.7
) -> AgentServer:
    """The worker as LiveKit's ``AgentServer``: registered as ``parley`` (explicit dispatch), each
    job in a prewarmed process of its pool; above ``load_threshold`` (CPU) it takes no new call."""
    server = AgentServer(
        ws_url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret,
        setup_fnc=prewarm,
        num_idle_processes=idle_processes,
        load_threshold=load_threshold,
        port=port,
    )
    server.rtc_session(entrypoint, agent_name=AGENT_NAME)
    return server


async def serve(env: Mapping[str, str], stop: asyncio.Event | None = None) -> None:
    """Register with the LiveKit server and take calls until ``stop`` (default: SIGTERM or SIGINT)."""
    settings = VoiceSettings.from_env(env)
    if not settings.livekit:
        raise SystemExit("the voice worker needs LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    server = agent_server(
        settings,
        idle_processes=int(env.get("PARLEY_VOICE_IDLE_PROCESSES", "1")),
        port=int(env.get("PARLEY_VOICE_WORKER_PORT", "0")),
        load_threshold=float(env.get("PARLEY_VOICE_LOAD_THRESHOLD", "0.7")) or math.inf,
    )
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    running = asyncio.create_task(server.run(devmode=False))
    stopping = asyncio.create_task(stop.wait())
    log.info("voice_worker.started", livekit_url=settings.livekit_url, agent_name=AGENT_NAME)
    try:
        await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # it stopped by itself: say why
    finally:
        stopping.cancel()
        with contextlib.suppress(Exception):
            await server.aclose()
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running


def main() -> None:
    from infra.logs import configure_logging

    configure_logging()
    asyncio.run(serve(os.environ))
