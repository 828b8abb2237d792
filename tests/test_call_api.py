"""The Voice API on the real stack: outbound calls through LiveKit SIP (a local server speaking its
Twirp API), the voice line's refusals, transfers to the human-agent pool, and a Twilio call over a
real media-stream websocket with its live transcript."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import websockets
from litestar.testing import AsyncTestClient

from gateways.http.call import stream_tenant
from gateways.telephony.phone import Phone, Turn
from projections.analytics.sink import AnalyticsSettings
from tests.api_support import SECRET, api_client, bearer, served_app, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream
from tests.voice_fakes.livekit_twirp import TwirpFake

BASE = "/api/v1/voice"
ADMIN = bearer(roles=("org_admin",), subject="admin-1")
CUSTOMER = bearer(roles=("customer",), subject="someone-else")
TWILIO_TOKEN = "twilio-auth-token-for-tests"


@pytest_asyncio.fixture
async def twirp() -> AsyncIterator[TwirpFake]:
    fake = TwirpFake()
    await fake.start()
    yield fake
    await fake.stop()


@pytest_asyncio.fixture
async def client(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, twirp: TwirpFake, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AsyncTestClient[Any]]:
    monkeypatch.setenv("LIVEKIT_URL", twirp.url.replace("http", "ws"))
    monkeypatch.setenv("LIVEKIT_API_KEY", twirp.api_key)
    monkeypatch.setenv("LIVEKIT_API_SECRET", twirp.api_secret)
    monkeypatch.setenv("LIVEKIT_SIP_OUTBOUND_TRUNK", "ST_trunk")
    stream = unique_stream()
    settings = settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, demo_tenants=("acme",))
    try:
        async with api_client(settings) as c:
            yield c
    finally:
        await delete_stream(nats_url, stream)


async def initiate(client: AsyncTestClient[Any], number: str = "+15551234567", **more: Any) -> Any:
    body = {"config_id": "voice-bot", "phone_number": number, "context": {"customer_id": "C12345"}, **more}
    return await client.post(f"{BASE}/calls/initiate", json=body, headers=ADMIN)


async def register(client: AsyncTestClient[Any], agent: str) -> None:
    made = await client.post(
        "/api/v1/orchestration/agents", json={"name": "Mike", "agent_id": agent, "role": "Technical Support"},
        headers=ADMIN,
    )  # fmt: skip
    assert made.status_code == 201, made.text
    online = await client.post(f"/api/v1/orchestration/agents/{agent}/availability", json={"available": True},
                               headers=ADMIN)  # fmt: skip
    assert online.status_code == 200, online.text


async def test_an_outbound_call_is_dialed_through_livekit_sip_and_pinned_to_the_config_version(
    client: AsyncTestClient[Any], twirp: TwirpFake
) -> None:
    started = await initiate(client)
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["product_type"] == "voicebot" and body["status"] == "initiating" and body["config_version"] == 1
    # The voice worker is sent to the call's room (explicit dispatch, the call in its metadata), then
    # the callee is dialed into it.
    assert twirp.methods() == ["AgentDispatchService/CreateDispatch", "SIP/CreateSIPParticipant"]
    _, dispatch, dispatch_grants = twirp.calls[0]
    assert dispatch.agent_name == "parley" and dispatch.room == f"call-{body['call_id']}"
    assert json.loads(dispatch.metadata) == {"parley.tenant": "acme", "parley.call_id": body["call_id"]}
    assert dispatch_grants.video.room_admin and dispatch_grants.video.room == dispatch.room
    _, request, grants = twirp.calls[1]
    assert request.sip_call_to == "+15551234567" and request.sip_trunk_id == "ST_trunk"
    assert request.room_name == f"call-{body['call_id']}"
    assert request.participant_attributes["parley.call_id"] == body["call_id"]
    assert grants.sip.call, "the token grants sip.call"
    status = await client.get(f"{BASE}/calls/{body['call_id']}", params={"min_position": body["position"]},
                              headers=ADMIN)  # fmt: skip
    assert status.status_code == 200, status.text
    view = status.json()
    assert view["status"] == "ringing" and view["direction"] == "outbound" and view["phone_number"] == "+15551234567"
    assert view["config_version"] == 1 and view["transcript"] == []
    # A customer reaches only their own calls.
    assert (await client.get(f"{BASE}/calls/{body['call_id']}", headers=CUSTOMER)).status_code == 404


async def test_the_voice_line_refuses_do_not_call_numbers_and_over_quota_calls_and_records_each_refusal(
    client: AsyncTestClient[Any], twirp: TwirpFake
) -> None:
    blocked = await client.post(f"{BASE}/do-not-call", json={"phone_number": "+15550000001"}, headers=ADMIN)
    assert blocked.status_code == 201, blocked.text
    refused = await initiate(client, "+15550000001")
    assert refused.status_code == 403 and refused.json()["reason"] == "do_not_call", refused.text
    bad = await initiate(client, "not a number")
    assert bad.status_code == 400 and "phone_number" in bad.json()["fields"]
    line = await client.put(f"{BASE}/line", json={"outbound_per_hour": 1}, headers=ADMIN)
    assert line.status_code == 200, line.text
    assert (await initiate(client, "+15550000002")).status_code == 202
    over = await initiate(client, "+15550000003")
    assert over.status_code == 429 and over.json()["reason"] == "outbound_quota", over.text
    assert over.headers.get("Retry-After") == "60"
    # Only the admitted call was dialed.
    assert [r.sip_call_to for m, r, _ in twirp.calls if m == "SIP/CreateSIPParticipant"] == ["+15550000002"]


async def test_hot_and_cold_transfers_go_to_an_agent_of_the_pool_through_sip(
    client: AsyncTestClient[Any], twirp: TwirpFake
) -> None:
    await register(client, "mike")
    call_id = (await initiate(client)).json()["call_id"]
    hot = await client.post(
        f"{BASE}/calls/{call_id}/transfer",
        json={"agent_id": "mike", "transfer_type": "hot", "reason": "complex_technical_issue",
              "summary": "Customer needs help with API integration issue"},
        headers=ADMIN,
    )  # fmt: skip
    assert hot.status_code == 200, hot.text
    body = hot.json()
    assert body["status"] == "transferred" and body["target_agent"]["agent_id"] == "mike"
    assert body["call_summary"]["pii_collected"]["phone"] == "+15551234567"
    methods = twirp.methods()[2:]
    assert methods == ["SIP/CreateSIPParticipant", "RoomService/SendData", "RoomService/MoveParticipant"], methods
    consult = twirp.calls[2][1]
    assert consult.room_name == f"call-{call_id}-human" and consult.wait_until_answered
    assert twirp.calls[3][1].data.decode() == "Customer needs help with API integration issue"
    assert twirp.calls[4][1].destination_room == f"call-{call_id}"
    # A cold transfer of another call: a SIP REFER; a busy human fails it, with the SIP status.
    other = (await initiate(client, "+15557654321")).json()["call_id"]
    twirp.failures["SIP/TransferSIPParticipant"] = (
        409, {"code": "aborted", "msg": "busy", "meta": {"sip_status_code": "486", "sip_status": "Busy Here"}}
    )  # fmt: skip
    cold = await client.post(f"{BASE}/calls/{other}/transfer", json={"agent_id": "mike", "transfer_type": "cold"},
                             headers=ADMIN)  # fmt: skip
    assert cold.status_code == 200 and cold.json()["status"] == "failed", cold.text
    refer = twirp.calls[-1][1]
    assert twirp.calls[-1][0] == "SIP/TransferSIPParticipant" and refer.transfer_to.startswith("sip:mike@")
    again = await client.post(f"{BASE}/calls/{other}/transfer", json={"agent_id": "mike", "transfer_type": "cold"},
                              headers=ADMIN)  # fmt: skip
    assert again.json()["status"] == "transferred", again.text
    ended = await client.post(f"{BASE}/calls/{other}/end", json={"reason": "completed"}, headers=ADMIN)
    assert ended.status_code == 200, ended.text
    assert ended.json()["summary"]["resolution_status"] == "transferred"
    status = await client.get(f"{BASE}/calls/{other}", params={"min_position": ended.json()["position"]},
                              headers=ADMIN)  # fmt: skip
    assert status.json()["status"] == "ended" and status.json()["transfer"]["status"] == "connected"


async def test_twilios_webhook_finds_the_tenant_by_the_called_number(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_VOICE_NUMBERS", "+15550001111=globex,+15550002222=acme")
    stream = unique_stream()
    settings = settings_for(
        nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, demo_tenants=("acme", "globex")
    )
    try:
        async with api_client(settings) as client:

            async def answer(to: str, **headers: str) -> Any:
                form = {"CallSid": "CA" + "2" * 32, "From": "+15551234567", "To": to}
                return await client.post(f"{BASE}/twilio/inbound", data=form, headers=headers)

            for to, tenant in (("+15550001111", "globex"), ("+1 555 000 2222", "acme")):
                twiml = (await answer(to)).text
                token = twiml.split('name="token" value="')[1].split('"')[0]
                assert stream_tenant(SECRET, token) == tenant, (to, twiml)
            # The seed's header names the tenant whatever the number; an unknown number with no
            # header (and more than one tenant here) is not in service.
            slugged = (await answer("+15550001111", **{"X-Tenant-Slug": "acme"})).text
            assert stream_tenant(SECRET, slugged.split('name="token" value="')[1].split('"')[0]) == "acme"
            unknown = await answer("+15559999999")
            assert unknown.status_code == 200 and "not in service" in unknown.text and "<Stream" not in unknown.text
    finally:
        await delete_stream(nats_url, stream)


# A Twilio call over the real server ------------------------------------------------------------


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    payload = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


@pytest_asyncio.fixture
async def server(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
    stream = unique_stream()
    analytics = AnalyticsSettings(data_dir=tmp_path / "analytics")  # the voice analytics, in this process
    settings = settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, demo_tenants=("acme",),
                            analytics=analytics)  # fmt: skip
    try:
        async with served_app(settings) as port:
            yield f"127.0.0.1:{port}"
    finally:
        await delete_stream(nats_url, stream)


async def test_a_twilio_call_runs_over_the_media_stream_with_its_live_transcript(server: str) -> None:
    import httpx

    url = f"http://{server}{BASE}/twilio/inbound"
    form = {"CallSid": "CA" + "1" * 32, "From": "+15551234567", "To": "+15559876543", "AccountSid": "AC" + "0" * 32}
    async with httpx.AsyncClient() as http:
        forged = await http.post(url, data=form, headers={"X-Twilio-Signature": "forged"})
        assert forged.status_code == 401
        answered = await http.post(
            url, data=form, headers={"X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, url, form)}
        )
    assert answered.status_code == 200 and "<Connect><Stream" in answered.text, answered.text
    stream_url = answered.text.split('url="')[1].split('"')[0]
    parameters = dict(
        (p.split('name="')[1].split('"')[0], p.split('value="')[1].split('"')[0])
        for p in answered.text.split("<Parameter ")[1:]
    )
    assert stream_url == f"ws://{server}{BASE}/twilio/stream" and parameters["from"] == "+15551234567"
    from gateways.telephony.twilio import call_id_for

    call_id = call_id_for("acme", form["CallSid"])
    heard: list[dict[str, Any]] = []
    async with websockets.connect(stream_url) as media:

        async def send(message: dict[str, Any]) -> None:
            await media.send(json.dumps(message))

        async def receive() -> dict[str, Any] | None:
            try:
                return json.loads(await media.recv())  # type: ignore[no-any-return]
            except websockets.ConnectionClosed:
                return None

        greeted = asyncio.Event()
        phone = Phone(send, receive, parameters=parameters, call_sid=form["CallSid"], speed=1.5,
                      on_agent_audio=greeted.set)  # fmt: skip
        calling = asyncio.create_task(phone.call([Turn("I want to check my order"), Turn(keys="78945#")]))
        await asyncio.wait_for(greeted.wait(), 30)  # the call exists once the agent greets
        headers = ADMIN
        async with websockets.connect(
            f"ws://{server}{BASE}/calls/{call_id}/transcript", additional_headers=headers
        ) as transcript:
            await calling

            async def collect() -> None:
                async for raw in transcript:
                    heard.append(json.loads(raw))

            await asyncio.wait_for(collect(), 20)
    kinds = [m["event"] for m in heard]
    assert "transcript_final" in kinds and "agent_response" in kinds and kinds[-1] == "call_ended", kinds
    answer = next(m for m in heard if m["event"] == "agent_response" and "ORD-78945" in (m["text"] or ""))
    assert answer["tool_calls"] == [{"tool": "fetch_order_status", "status": "executing"}]
    async with httpx.AsyncClient(base_url=f"http://{server}", headers=ADMIN) as http:
        for _ in range(100):
            view = (await http.get(f"{BASE}/calls/{call_id}")).json()
            if view["status"] == "ended" and view["recordings"]:
                break
            await asyncio.sleep(0.1)
        assert view["direction"] == "inbound" and [t["tool"] for t in view["tools_executed"]] == ["fetch_order_status"]
        speakers = {line["speaker"] for line in view["transcript"]}
        assert speakers == {"user", "agent"} and view["analytics"]["total_latency_p95_ms"] is not None
        recording = await http.get(view["recording_url"])
        assert recording.status_code == 200 and recording.content[:4] == b"RIFF"
        # Its history: turn by turn, each with the config version that governed it.
        history = (await http.get(f"{BASE}/calls/{call_id}/history")).json()
        assert history["config_id"] == "voice-bot" and history["config_version"] == 1
        turns = history["turns"]
        assert [t["turn"] for t in turns] == [0, 1, 2] and turns[0]["replies"], "the greeting, then the caller"
        assert {(t["config_version"], t["active_config_version"]) for t in turns} == {(1, 1)}
        assert turns[2]["source"] == "dtmf" and turns[2]["text"] == "ORD-78945"
        assert [tool["tool"] for tool in turns[2]["tools"]] == ["fetch_order_status"] and turns[2]["tools"][0]["ok"]
        assert "ORD-78945" in turns[2]["replies"][0]["text"]
        # A customer reaches only their own call's history.
        assert (await http.get(f"{BASE}/calls/{call_id}/history", headers=CUSTOMER)).status_code == 404


async def test_the_developer_phone_holds_a_call_and_prints_what_the_platform_shows_of_it(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``./parley call``: a human agent made available, the caller asks for a human and is
    transferred; then the call's status, transcript, recordings, the voice analytics and its
    history with config versions, as the platform serves them."""
    from infra.tokens import make_token
    from voice_worker.phone import call

    token = make_token(SECRET, subject="dev", tenant="acme", roles=["org_admin"])
    out = tmp_path / "agent.wav"
    code = await call(f"http://{server}", token, ["I want to talk to a human"], out, "acme", "+15551234567", 1.0,
                      agent="Ana Lopez")  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "human agent Ana Lopez (ana-lopez) is available" in printed
    assert "-- transfer connected" in printed and "-- call ended: transferred" in printed
    assert "status: ended, resolution: transferred" in printed and "config: voice-bot v1" in printed
    assert "transfer: connected to Ana Lopez (hot, explicit_request)" in printed, printed
    assert printed.count("GET 200 audio/wav") == 2, "both sides' recordings are served"
    assert "calls: 1 (1 in, 0 out)" in printed and "transfer 1.0" in printed and "end_to_end" in printed
    assert "turn 0 [voice-bot v1, active v1] (the agent first)" in printed
    assert "turn 1 [voice-bot v1, active v1] caller (speech):" in printed
    assert out.stat().st_size > 8000, "the agent's audio is saved"
