"""The LiveKit Agents worker (``voice_worker``), as far as it runs without a LiveKit server: which
call a room is for, the services a job opens for its call (on the real NATS and PostgreSQL), and the
worker registering with a server that speaks LiveKit's agent protocol (protobuf over a websocket at
``/agent``) and accepting the job of a call's room.

A room-based call (joining the room over WebRTC) needs a LiveKit server, which is not available
here: the session it runs is the Twilio path's ``CallSession`` (tests/test_call_session.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web
from livekit import api, rtc
from livekit.protocol import agent as agent_proto
from livekit.protocol import models as models_proto

from agents.demo_data import setup_demo_data
from agents.tools import ToolContext
from commands.config import AGENT_CONFIG, CONFIG_MEMBERS, ConfigService, ensure_demo_configs
from commands.runner import CommandRunner
from domain import call as v
from gateways.telephony.livekit_sip import call_metadata
from gateways.telephony.session import live_subject
from gateways.telephony.settings import VoiceSettings
from streams.factory import OpenStore, StoreSettings
from streams.subjects import StreamId
from tests.conftest import fresh_database
from voice_worker.worker import AGENT_NAME, CallRef, agent_server, call_of, call_services, serve

SETTINGS = VoiceSettings(numbers={"+15550001111": "globex"})


def test_an_outbound_calls_room_is_found_by_its_dispatch_metadata_or_the_callees_attributes() -> None:
    by_dispatch = call_of({"sip.phoneNumber": "+15551234567"}, SETTINGS, call_metadata("acme", "c-1"))
    assert by_dispatch == CallRef(tenant="acme", call_id="c-1", direction="outbound", phone_number="+15551234567")
    by_attributes = call_of({"parley.tenant": "acme", "parley.call_id": "c-2", "sip.callID": "SCL_9"}, SETTINGS)
    assert by_attributes == CallRef(tenant="acme", call_id="c-2", direction="outbound", sip_call_id="SCL_9")
    # Metadata that is not ours (or not JSON) falls back to the attributes.
    assert call_of({"parley.tenant": "acme", "parley.call_id": "c-3"}, SETTINGS, "not json").call_id == "c-3"  # type: ignore[union-attr]


def test_an_inbound_sip_caller_is_a_call_of_the_tenant_that_owns_the_called_number() -> None:
    attributes = {"sip.trunkPhoneNumber": "+1 555 000 1111", "sip.callID": "SCL_abc", "sip.phoneNumber": "+15557654321"}
    ref = call_of(attributes, SETTINGS)
    assert ref is not None and ref.tenant == "globex" and ref.direction == "inbound"
    assert ref.phone_number == "+15557654321" and ref.sip_call_id == "SCL_abc"
    assert call_of(attributes, SETTINGS) == ref, "the same SIP call is the same call (a redelivered job)"
    other = call_of({**attributes, "sip.callID": "SCL_def"}, SETTINGS)
    assert other is not None and other.call_id != ref.call_id
    # A number no tenant owns, a participant with no SIP call: not a call of ours.
    assert call_of({**attributes, "sip.trunkPhoneNumber": "+15550009999"}, SETTINGS) is None
    assert call_of({"sip.trunkPhoneNumber": "+15550001111"}, SETTINGS) is None
    assert call_of({}, SETTINGS) is None


async def test_a_jobs_services_answer_a_call_pinned_to_its_config_with_tools_recordings_and_live_transcripts(
    open_test_store: OpenStore, pg_url: str, tmp_path: Path
) -> None:
    tenant = "globex"
    database = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await setup_demo_data(conn, tenants=(tenant,))
    configs = ConfigService(CommandRunner.for_aggregates(open_test_store.store, [AGENT_CONFIG, CONFIG_MEMBERS]))
    await ensure_demo_configs(configs, tenant)
    store = StoreSettings(
        nats_url=open_test_store.settings.nats_url, data_dir=tmp_path, stream=open_test_store.settings.stream
    )
    env = {"DATABASE_URL": database, "PARLEY_VOICE_NUMBERS": "+15550001111=globex"}
    ref = call_of({"sip.trunkPhoneNumber": "+15550001111", "sip.callID": "SCL_1", "sip.phoneNumber": "+15557654321"},
                  VoiceSettings.from_env(env))  # fmt: skip
    assert ref is not None
    heard: list[dict[str, Any]] = []

    async def received(data: bytes) -> None:
        heard.append(json.loads(data))

    stop_listening = await open_test_store.store.listen_live(live_subject(tenant, ref.call_id), received)
    try:
        async with call_services(env, store=store) as stack:
            assert stack.calls.telephony is None, "no LiveKit settings: no SIP"
            answered = await stack.calls.answer(
                tenant, call_id=ref.call_id, config_id="voice-bot", phone_number=ref.phone_number,
                transport="livekit_sip", provider_call_id=ref.sip_call_id, room_name="call-room",
            )  # fmt: skip
            call = answered.state
            assert call.status == "in_progress" and call.transport == "livekit_sip" and call.config_version == 1
            config = await stack.configs.get(tenant, call.config_id, call.config_version)
            assert config.product_type == "voicebot" and config.tool("fetch_order_status") is not None
            # The tools read the tenant's demo data in PostgreSQL, as the API's do.
            definition = config.tool("fetch_order_status")
            assert definition is not None
            context = ToolContext(tenant=tenant, conversation_id=call.call_id, user_id=call.user_id)
            run = await stack.tools.run(definition, {"order_id": "ORD-78945"}, context)
            assert run.failure is None and run.content["status"] == "in_transit", run.content
            assert run.content["carrier"] == "UPS"
            # Recordings are sealed in the data directory; interim transcripts go live.
            assert stack.recordings is not None
            assert getattr(stack.recordings.blobs, "root", None) == tmp_path / "recordings"
            await stack.live(tenant, ref.call_id, "transcript_interim", {"text": "where is"})
            for _ in range(100):
                if heard:
                    break
                await asyncio.sleep(0.05)
    finally:
        await stop_listening()
    assert heard == [{"event": "transcript_interim", "text": "where is"}]
    events = await open_test_store.store.read(StreamId(tenant, v.AGGREGATE_TYPE, ref.call_id))
    assert [type(e.event).__name__ for e in events] == ["CallInitiated", "CallConnected"]


@dataclass
class AgentEndpoint:
    """LiveKit's agent endpoint as far as a worker's registration and a job offer go: the worker's
    ``WorkerMessage``s are kept, ``register`` is answered, then the call's room is offered."""

    api_key: str = "devkey"
    api_secret: str = "devsecret-devsecret-devsecret-devsecret"
    job: agent_proto.Job | None = None
    messages: list[agent_proto.WorkerMessage] = field(default_factory=list)
    grants: list[Any] = field(default_factory=list)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.grants.append(api.TokenVerifier(self.api_key, self.api_secret).verify(token))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for frame in ws:
            if frame.type != WSMsgType.BINARY:
                continue
            message = agent_proto.WorkerMessage()
            message.ParseFromString(frame.data)
            self.messages.append(message)
            match message.WhichOneof("message"):
                case "register":
                    reply = agent_proto.ServerMessage(register=agent_proto.RegisterWorkerResponse(worker_id="AW_test"))
                    await ws.send_bytes(reply.SerializeToString())
                    if self.job is not None:
                        offer = agent_proto.ServerMessage(availability=agent_proto.AvailabilityRequest(job=self.job))
                        await ws.send_bytes(offer.SerializeToString())
                case "availability":
                    self.answered.set()
        return ws


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[AgentEndpoint]:
    server = AgentEndpoint()
    app = web.Application()
    app.router.add_get("/agent", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"ws://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


def test_the_worker_is_livekits_agent_server_registered_for_explicit_dispatch() -> None:
    settings = VoiceSettings(livekit_url="ws://127.0.0.1:7880", livekit_api_key="k", livekit_api_secret="s")
    server = agent_server(settings, idle_processes=0)
    assert server._agent_name == AGENT_NAME == "parley"
    assert server._ws_url == "ws://127.0.0.1:7880" and server._api_key == "k"


async def test_the_worker_needs_a_livekit_server() -> None:
    with pytest.raises(SystemExit, match="LIVEKIT_URL"):
        await serve({})


async def test_the_worker_registers_with_the_livekit_server_and_accepts_a_calls_room(
    endpoint: AgentEndpoint,
) -> None:
    endpoint.job = agent_proto.Job(
        id="AJ_1",
        dispatch_id="AD_1",
        type=agent_proto.JobType.JT_ROOM,
        room=models_proto.Room(sid="RM_1", name="call-c-1"),
        agent_name=AGENT_NAME,
        metadata=call_metadata("acme", "c-1"),
    )
    env = {
        "LIVEKIT_URL": endpoint.url,
        "LIVEKIT_API_KEY": endpoint.api_key,
        "LIVEKIT_API_SECRET": endpoint.api_secret,
        "PARLEY_VOICE_IDLE_PROCESSES": "0",  # no job will be assigned: no process to prewarm
        "PARLEY_VOICE_LOAD_THRESHOLD": "inf",  # a busy test machine still takes the offer
    }
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(env, stop))
    try:
        await asyncio.wait_for(endpoint.answered.wait(), 30)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 30)
    assert endpoint.grants[0].video.agent, "the worker connects with an agent grant"
    register = endpoint.messages[0].register
    assert register.agent_name == "parley" and register.type == agent_proto.JobType.JT_ROOM
    availability = next(m.availability for m in endpoint.messages if m.WhichOneof("message") == "availability")
    assert availability.job_id == "AJ_1" and availability.available
    assert availability.participant_attributes["lk.agent.name"] == "parley"
    assert serving.done() and serving.exception() is None


async def test_up_starts_the_worker_as_its_own_process_when_livekit_is_configured(
    endpoint: AgentEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.platform import VoiceWorker

    for name, value in {
        "LIVEKIT_URL": endpoint.url,
        "LIVEKIT_API_KEY": endpoint.api_key,
        "LIVEKIT_API_SECRET": endpoint.api_secret,
        "PARLEY_VOICE_IDLE_PROCESSES": "0",
        "PARLEY_VOICE_LOAD_THRESHOLD": "inf",
        # What the platform's environment adds (set here so that the test leaves none of it behind).
        "PARLEY_DATA": str(tmp_path),
        "PARLEY_JWT_SECRET": "test-secret",
        "PARLEY_LOG_JSON": "1",
        "PARLEY_DEV_SIGNIN": "1",
    }.items():
        monkeypatch.setenv(name, value)
    room = models_proto.Room(sid="RM_2", name="call-c-2")
    endpoint.job = agent_proto.Job(id="AJ_2", type=agent_proto.JobType.JT_ROOM, room=room, agent_name=AGENT_NAME)
    assert VoiceWorker.wanted(tmp_path)
    worker = VoiceWorker(tmp_path)
    try:
        await asyncio.to_thread(worker.start, 1.0)
        assert worker.is_running()
        await asyncio.wait_for(endpoint.answered.wait(), 60)
    finally:
        await asyncio.to_thread(worker.stop, 30)
    assert not worker.is_running()
    register = endpoint.messages[0].register
    assert register.agent_name == "parley", "the process registered as the agent 'parley'"
    assert any(m.availability.job_id == "AJ_2" and m.availability.available for m in endpoint.messages)


async def test_a_hot_transfer_speaks_the_summary_in_the_consultation_room_before_the_human_is_moved() -> None:
    """The worker's briefing on ``LiveKitSip``'s hot transfer against LiveKit's Twirp API: the human is
    dialed into the consultation room, the summary is synthesized (espeak-ng) into that room's
    microphone and played to its last frame, and only then is the human moved to the caller. The
    room itself is the SDK's ``AudioSource`` unpublished (joining over WebRTC needs a LiveKit server)."""
    from datetime import UTC, datetime

    from gateways.speech.offline import EspeakTTS, espeak_pcm
    from gateways.telephony.livekit_sip import LiveKitSip
    from tests.voice_fakes.livekit_twirp import TwirpFake
    from voice_worker.worker import ConsultBriefing, brief_transfers

    fake = TwirpFake()
    url = await fake.start()
    summary = "Caller asked about order ORD-78945."
    joined: list[tuple[str, str, int]] = []
    played: list[int] = []  # samples of each frame the room's microphone took
    methods_when_played: list[list[str]] = []

    class Microphone(rtc.AudioSource):
        async def capture_frame(self, frame: rtc.AudioFrame) -> None:
            played.append(frame.samples_per_channel)
            await super().capture_frame(frame)

    @contextlib.asynccontextmanager
    async def consult_room(room: str, identity: str, sample_rate: int) -> AsyncIterator[rtc.AudioSource]:
        joined.append((room, identity, sample_rate))
        source = Microphone(sample_rate, 1)
        try:
            yield source
        finally:
            methods_when_played.append(fake.methods())  # the briefing is over: what LiveKit was asked by then
            await source.aclose()

    briefing = ConsultBriefing(EspeakTTS(), consult_room)
    sip = LiveKitSip(url, fake.api_key, fake.api_secret, trunk_id="ST_out", brief=briefing)
    call = v.Call(started=True, call_id="c-9", transport="livekit_sip", status="in_progress")
    transfer = v.TransferRequested(
        transfer_id="t-1", transfer_type="hot", agent_id="mike", agent_name="Mike", at=datetime.now(UTC)
    )
    try:
        started = asyncio.get_running_loop().time()
        connected = await sip.transfer("acme", call, transfer, "sip:mike@agents.parley.local", summary)
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        await fake.stop()

    assert connected.ok, connected
    assert joined == [("call-c-9-human", "parley-briefing-call-c-9-human", 22050)]
    # The whole summary was spoken into the room, in real time, before the human was moved.
    expected = len(await espeak_pcm(summary, words_per_minute=165)) // 2
    assert abs(sum(played) - expected) <= 22050 // 50, (sum(played), expected)
    assert elapsed >= 0.9 * expected / 22050, elapsed
    assert methods_when_played == [["SIP/CreateSIPParticipant", "RoomService/SendData"]]
    assert fake.methods() == ["SIP/CreateSIPParticipant", "RoomService/SendData", "RoomService/MoveParticipant"]
    move = fake.calls[-1][1]
    assert (move.room, move.identity, move.destination_room) == ("call-c-9-human", "human-mike", "call-c-9")
    # The worker gives its call's transfers this briefing, with the call's TTS; the Twilio path has none.
    settings = VoiceSettings(livekit_url="ws://127.0.0.1:7880", livekit_api_key="k", livekit_api_secret="s")
    mine = LiveKitSip("http://127.0.0.1:7880", "k", "s", trunk_id="ST_out")
    assert brief_transfers(mine, EspeakTTS(), settings) and isinstance(mine.brief, ConsultBriefing)
    assert not brief_transfers(None, EspeakTTS(), settings)
