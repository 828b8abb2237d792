"""Chat and voice in one log: a customer's chat conversation and their call, linked.

While the linked call is connected the chatbot answers nothing: the customer's chat messages are
recorded as usual and shared with the call (the seed's ``chatbot_data_shared`` cross-product event,
on the call's stream), and the voice agent uses them on its next turn ("I see you've sent ...").
When the call ends the chatbot answers again. The conversation's history shows the chat and voice
turns interleaved, each with its channel and config version. On the real services: the decider
rules given / when / then; the agent runtime and the call service on the real event store; and a
Twilio call over a real media-stream websocket against the platform's API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
import websockets

from agents.config import VersionedConfigs
from agents.demo_data import setup_demo_data
from agents.runtime import AgentRuntime
from agents.tools import connect_url, demo_registry
from commands.call import CALL, VOICE_LINE, CallService
from commands.config import AGENT_CONFIG, CONFIG_MEMBERS, ConfigService, ensure_demo_configs
from commands.conversation import CONVERSATION
from commands.runner import CommandContext, CommandRunner
from domain import call as v
from domain import conversation as c
from domain.errors import IllegalStateError, NotFoundError, ValidationError
from domain.escalation import DECIDER as AGENT_POOL
from gateways.telephony.phone import Phone, Turn
from gateways.telephony.twilio import call_id_for
from streams.factory import OpenStore
from streams.subjects import StreamId
from tests.api_support import bearer, served_app, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream
from tests.decider import DeciderSpec

T0 = datetime(2025, 10, 11, 11, 0, tzinfo=UTC)
TENANT = "acme"
CHAT_TEXT = "card **** **** **** 1111, ORD-78945"


# The rules ------------------------------------------------------------------------------------

conversation = DeciderSpec(c.decide, c.evolve, c.initial())
call = DeciderSpec(v.decide, v.evolve, v.initial())
STARTED = c.ConversationStarted(
    conversation_id="conv-1", config_id="support-bot", config_version=1, channel="webchat", user_id="C1",
    started_at=T0,
)  # fmt: skip
VOICE_ON = c.VoicebotSessionStarted(
    call_id="call-1", user_id="C1", config_id="voice-bot", config_version=1, started_at=T0 + timedelta(seconds=5)
)


def test_a_connected_linked_call_puts_the_conversation_on_call_until_it_ends() -> None:
    state = (
        conversation.given(STARTED)
        .when(c.StartVoicebotSession(call_id="call-1", config_id="voice-bot", config_version=1, at=VOICE_ON.started_at))
        .then(VOICE_ON)
    )
    assert state.on_call == "call-1" and state.status == "active"
    conversation.given(STARTED, VOICE_ON).when(
        c.StartVoicebotSession(call_id="call-1", config_id="voice-bot", config_version=1, at=T0)
    ).then()  # told twice: once
    conversation.given(STARTED, VOICE_ON).when(c.EndVoicebotSession(call_id="call-0", at=T0)).then()  # not that one
    ended = c.VoicebotSessionEnded(call_id="call-1", user_id="C1", duration_seconds=42.0, ended_at=T0)
    after = (
        conversation.given(STARTED, VOICE_ON)
        .when(c.EndVoicebotSession(call_id="call-1", duration_seconds=42.0, at=T0))
        .then(ended)
    )
    assert after.on_call is None
    conversation.given(STARTED, VOICE_ON, ended).when(c.EndVoicebotSession(call_id="call-1", at=T0)).then()
    closed = c.ConversationClosed(closed_at=T0)
    conversation.given(STARTED, closed).when(c.StartVoicebotSession(call_id="call-2", at=T0)).then_raises(
        IllegalStateError
    )


def test_what_the_chat_shares_with_a_live_call_is_recorded_once_and_never_after_it_ends() -> None:
    initiated = v.CallInitiated(
        call_id="call-1", config_id="voice-bot", config_version=1, direction="inbound", transport="twilio",
        user_id="C1", conversation_id="conv-1", initiated_at=T0,
    )  # fmt: skip
    connected = v.CallConnected(connected_at=T0)
    share = v.ShareChatData(
        conversation_id="conv-1", message_id="m-1", shared_data={"text": "card 4111 1111 1111 1111, ORD-78945"}, at=T0
    )
    shared = v.ChatbotDataShared(
        conversation_id="conv-1", message_id="m-1", user_id="C1", data_type="chat_message",
        shared_data={"text": CHAT_TEXT}, at=T0,
    )  # fmt: skip
    state = call.given(initiated, connected).when(share).then(shared)
    assert state.pii_collected.get("order_id") == "ORD-78945", state.pii_collected
    call.given(initiated, connected, shared).when(share).then()  # the same message: once
    empty = v.ShareChatData(conversation_id="conv-1", message_id="m-2", shared_data={"text": ""}, at=T0)
    call.given(initiated, connected).when(empty).then_raises(ValidationError)
    ended = v.CallEnded(ended_at=T0)
    call.given(initiated, connected, ended).when(share).then_raises(IllegalStateError)
    call.given().when(share).then_raises(NotFoundError)
    # On the call's live transcript socket, as a chat line of the caller's (masked for a customer).
    from gateways.http.call import transcript_messages

    [line] = transcript_messages(shared, [], True)
    assert (line["event"], line["speaker"], line["text"]) == ("chat_data_shared", "user", CHAT_TEXT)
    assert transcript_messages(shared, [], False)[0]["text"] != CHAT_TEXT
    assert v.shared_text({"attachment_2": "b.pdf", "text": "see these", "attachment_1": "a.pdf"}) == (
        "see these a.pdf b.pdf"
    )


# The agent runtime and the call service on the real event store ----------------------------


@pytest_asyncio.fixture
async def linked(open_test_store: OpenStore, pg_url: str) -> AsyncIterator[tuple[AgentRuntime, CallService]]:
    url = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await setup_demo_data(conn, tenants=(TENANT,))
    runner = CommandRunner.for_aggregates(
        open_test_store.store, [CONVERSATION, AGENT_CONFIG, CONFIG_MEMBERS, AGENT_POOL, CALL, VOICE_LINE]
    )
    configs = ConfigService(runner)
    await ensure_demo_configs(configs, TENANT)
    runtime = AgentRuntime(
        open_test_store.store, runner, demo_registry(connect_url(url)), VersionedConfigs(configs.catalog.state), {},
        durable="chat_link_test", partitions=2, idle_wait=0.2,
    )  # fmt: skip
    await runtime.start()
    yield runtime, CallService(runner, configs.catalog)
    await runtime.close()


async def write(runner: CommandRunner, cid: str, text: str, *, user: str = "C1", start: bool = False) -> str:
    message_id = uuid.uuid4().hex
    ctx = CommandContext(tenant=TENANT, actor=f"customer:{user}", command_id=message_id)
    command: c.Command = (
        c.StartConversation(conversation_id=cid, config_id="support-bot", config_version=1, channel="webchat",
                            user_id=user, initial_message=text, message_id=message_id, at=datetime.now(UTC))
        if start
        else c.ReceiveUserMessage(message_id=message_id, content=text, at=datetime.now(UTC))
    )  # fmt: skip
    await runner.handle(CONVERSATION, cid, command, ctx)
    return message_id


async def until(runtime: AgentRuntime, store: Any, stream: StreamId, kind: type, message_id: str) -> None:
    """The runtime steps until ``stream`` holds a ``kind`` event for ``message_id`` (a reply or a share)."""
    for _ in range(50):
        await runtime.step()
        for recorded in await store.read(stream):
            if isinstance(recorded.event, kind) and message_id in (getattr(recorded.event, "message_id", ""),):
                return
    raise AssertionError(f"no {kind.__name__} for {message_id} in {stream}")


async def test_the_chatbot_is_silent_during_a_linked_call_shares_what_comes_and_answers_again_after(
    linked: tuple[AgentRuntime, CallService], open_test_store: OpenStore
) -> None:
    runtime, calls = linked
    store = open_test_store.store
    cid = uuid.uuid4().hex
    chat_stream, call_stream_id = StreamId(TENANT, c.AGGREGATE_TYPE, cid), StreamId(TENANT, v.AGGREGATE_TYPE, "call-1")
    first = await write(calls.runner, cid, "Hi, I have a question about my order", start=True)
    await until(runtime, store, chat_stream, c.AgentReplied, f"{first}-reply")
    # Another customer's conversation cannot be linked to this customer's call.
    with pytest.raises(ValidationError) as refused:
        await calls.initiate(TENANT, config_id="voice-bot", phone_number="+15551234567",
                             context={"customer_id": "C2"}, conversation_id=cid)  # fmt: skip
    assert refused.value.fields == {"conversation_id": "belongs to another customer than context.customer_id"}
    await calls.answer(TENANT, call_id="call-1", config_id="voice-bot", phone_number="+15551234567",
                       transport="twilio", conversation_id=cid)  # fmt: skip
    during = await write(calls.runner, cid, "My order number is ORD-78945")
    await until(runtime, store, call_stream_id, v.ChatbotDataShared, during)
    chat = [e.event for e in await store.read(StreamId(TENANT, c.AGGREGATE_TYPE, cid))]
    replied_to = [e.message_id for e in chat if isinstance(e, c.AgentReplied)]
    assert replied_to == [f"{first}-reply"], "nothing answered in the chat during the call"
    assert [type(e).__name__ for e in chat][-2:] == ["VoicebotSessionStarted", "UserMessageReceived"]
    call_stream = await store.read(call_stream_id)
    assert call_stream[0].event.user_id == "C1", "the call is the conversation's customer's"  # type: ignore[union-attr]
    shared = [e for e in call_stream if isinstance(e.event, v.ChatbotDataShared)]
    assert len(shared) == 1 and shared[0].meta.command_id == f"share-{during}" and shared[0].meta.actor == "agent:ai"
    assert shared[0].event == v.ChatbotDataShared(
        conversation_id=cid, message_id=during, user_id="C1", data_type="chat_message",
        shared_data={"text": "My order number is ORD-78945"}, at=shared[0].event.at,  # type: ignore[union-attr]
    )  # fmt: skip
    # The call is heard and ends; the chatbot answers again.
    heard = v.RecordCallerUtterance(utterance_id="u1", text="can you check it", at=datetime.now(UTC))
    await calls.record(TENANT, "call-1", heard, "u1")
    said = v.RecordAgentUtterance(utterance_id="a1", text="It's on its way.", in_reply_to="u1", at=datetime.now(UTC))
    await calls.record(TENANT, "call-1", said, "a1")
    await calls.end(TENANT, "call-1")
    after = await write(calls.runner, cid, "Thanks! And where is ORD-12345?")
    await until(runtime, store, chat_stream, c.AgentReplied, f"{after}-reply")
    chat = [e.event for e in await store.read(StreamId(TENANT, c.AGGREGATE_TYPE, cid))]
    assert any(isinstance(e, c.VoicebotSessionEnded) and e.call_id == "call-1" for e in chat)
    assert [e.message_id for e in chat if isinstance(e, c.AgentReplied)] == [f"{first}-reply", f"{after}-reply"]
    # The conversation's history: chat and voice turns interleaved, each with its channel and config.
    timeline = await calls.timeline(TENANT, cid)
    assert timeline.calls == ["call-1"] and timeline.on_call is None
    assert [(t.channel, t.speaker, t.message_id) for t in timeline.turns] == [
        ("chat", "customer", first),
        ("chat", "agent", f"{first}-reply"),
        ("chat", "customer", during),
        ("voice", "customer", "u1"),
        ("voice", "agent", "a1"),
        ("chat", "customer", after),
        ("chat", "agent", f"{after}-reply"),
    ]
    assert {(t.channel, t.config_id, t.config_version) for t in timeline.turns} == {
        ("chat", "support-bot", 1), ("voice", "voice-bot", 1)
    }  # fmt: skip
    assert timeline.turns[2].call_id == "call-1", "the chat message names the call it went to"


async def test_a_call_linked_to_a_missing_or_closed_conversation_is_refused_or_answered_unlinked(
    linked: tuple[AgentRuntime, CallService],
) -> None:
    _runtime, calls = linked
    with pytest.raises(NotFoundError):
        await calls.initiate(TENANT, config_id="voice-bot", phone_number="+15551234567", conversation_id="nope")
    answered = await calls.answer(TENANT, call_id="call-9", config_id="voice-bot", phone_number="+15551234567",
                                  transport="twilio", conversation_id="nope")  # fmt: skip
    assert answered.state.conversation_id is None and answered.state.status == "in_progress"
    # A conversation that knows its customer's number is not linked to a call from another number.
    ctx = CommandContext(tenant=TENANT, actor="customer:C3", command_id="start-c3")
    start = c.StartConversation(conversation_id="conv-c3", config_id="support-bot", config_version=1,
                                channel="sms", user_id="C3", context={"phone": "+1 555 000 3333"}, at=T0)  # fmt: skip
    await calls.runner.handle(CONVERSATION, "conv-c3", start, ctx)
    stranger = await calls.answer(TENANT, call_id="call-10", config_id="voice-bot", phone_number="+15551234567",
                                  transport="twilio", conversation_id="conv-c3")  # fmt: skip
    assert stranger.state.conversation_id is None and stranger.state.user_id != "C3"
    owner = await calls.answer(TENANT, call_id="call-11", config_id="voice-bot", phone_number="+15550003333",
                               transport="twilio", conversation_id="conv-c3")  # fmt: skip
    assert (owner.state.conversation_id, owner.state.user_id) == ("conv-c3", "C3")


# The platform: a Twilio call and the chat, over HTTP ------------------------------------------


@pytest_asyncio.fixture
async def server(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[str]:
    stream = unique_stream()
    settings = settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, demo_tenants=(TENANT,))
    try:
        async with served_app(settings) as port:
            yield f"127.0.0.1:{port}"
    finally:
        await delete_stream(nats_url, stream)


class GatedPhone(Phone):
    """A caller who speaks only once ``gate`` is open (the test sends a chat message first)."""

    def __init__(self, *args: Any, gate: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate

    async def say(self, turn: Turn) -> None:
        await self.gate.wait()
        await super().say(turn)


async def test_on_a_linked_twilio_call_the_voice_agent_uses_what_the_customer_sent_in_the_chat(server: str) -> None:
    base = f"http://{server}"
    ana = bearer(roles=("customer",), subject="C-ana")
    admin = bearer(roles=("org_admin",), subject="admin-1")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        started = await http.post(
            "/api/v1/orchestration/conversations",
            json={"config_id": "support-bot", "channel": "webchat", "initial_message": "Hi, I need help"},
            headers=ana,
        )
        assert started.status_code == 201 and started.json()["agent_response"], started.text
        cid = started.json()["conversation_id"]
        form = {"CallSid": "CA" + uuid.uuid4().hex, "From": "+15551234567", "To": "+15559876543"}
        answered = await http.post("/api/v1/voice/twilio/inbound", params={"conversation_id": cid}, data=form)
        assert answered.status_code == 200 and "<Connect><Stream" in answered.text, answered.text
    stream_url = answered.text.split('url="')[1].split('"')[0]
    parameters = dict(
        (p.split('name="')[1].split('"')[0], p.split('value="')[1].split('"')[0])
        for p in answered.text.split("<Parameter ")[1:]
    )
    assert parameters["conversation_id"] == cid
    call_id = call_id_for(TENANT, form["CallSid"])
    gate, greeted = asyncio.Event(), asyncio.Event()
    async with websockets.connect(stream_url) as media, httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def send(message: dict[str, Any]) -> None:
            await media.send(json.dumps(message))

        async def receive() -> dict[str, Any] | None:
            try:
                return json.loads(await media.recv())  # type: ignore[no-any-return]
            except websockets.ConnectionClosed:
                return None

        phone = GatedPhone(send, receive, parameters=parameters, call_sid=form["CallSid"], speed=1.5,
                           on_agent_audio=greeted.set, gate=gate)  # fmt: skip
        calling = asyncio.create_task(phone.call([Turn("I want to check my order")]))
        await asyncio.wait_for(greeted.wait(), 30)  # the call is connected once the agent greets
        # In the chat, during the call: recorded, not answered (and the API does not wait for an answer).
        sent = await http.post(f"/api/v1/orchestration/conversations/{cid}/messages",
                               json={"message": "My order number is ORD-78945"}, headers=ana)  # fmt: skip
        assert sent.status_code == 200 and sent.json()["agent_response"] is None, sent.text
        # The cross-product event lands on the call's stream.
        shared: list[dict[str, Any]] = []
        for _ in range(100):
            audit = (await http.get(f"/api/v1/audit/call/{call_id}/events", headers=admin)).json()
            shared = [e for e in audit["events"] if e["type"] == "ChatbotDataShared"]
            if shared:
                break
            await asyncio.sleep(0.1)
        assert shared and shared[0]["event"]["shared_data"] == {"text": "My order number is ORD-78945"}, shared
        assert shared[0]["event"]["conversation_id"] == cid and shared[0]["actor"] == "agent:ai"
        gate.set()  # now the caller speaks
        await asyncio.wait_for(calling, 120)  # the caller hangs up: the call ends
        for _ in range(100):
            history = (await http.get(f"/api/v1/voice/calls/{call_id}/history", headers=admin)).json()
            linked = (await http.get(f"/api/v1/voice/conversations/{cid}/history", headers=admin)).json()
            if history["status"] == "ended" and linked["on_call"] is None:
                break
            await asyncio.sleep(0.1)
        assert history["status"] == "ended" and linked["on_call"] is None, (history["status"], linked["on_call"])
        # The voice agent's next reply acknowledged the chat and used it: the order tool ran on ORD-78945.
        assert history["conversation_id"] == cid
        replies = [r["text"] for t in history["turns"] for r in t["replies"]]
        acknowledged = [r for r in replies if r.startswith('I see you\'ve sent "My order number is ORD-78945"')]
        assert acknowledged and "in the chat." in acknowledged[0], replies
        tools = [tool["tool"] for t in history["turns"] for tool in t["tools"]]
        assert tools == ["fetch_order_status"] and "ORD-78945" in acknowledged[0].split("in the chat.")[1], replies
        # The call's transcript (its read model) shows the chat message as the caller's, from the chat.
        for _ in range(100):
            view = (await http.get(f"/api/v1/voice/calls/{call_id}", headers=admin)).json()
            if view["status"] == "ended":
                break
            await asyncio.sleep(0.1)
        lines = [(line["speaker"], line.get("source"), line["text"]) for line in view["transcript"]]
        assert ("user", "chat", "My order number is ORD-78945") in lines, lines
        # After the call, the chatbot answers again.
        again = await http.post(f"/api/v1/orchestration/conversations/{cid}/messages",
                                json={"message": "Thanks! Can you also check ORD-12345?"}, headers=ana)  # fmt: skip
        assert again.status_code == 200 and again.json()["agent_response"]["message"], again.text
        # The conversation's history: chat and voice interleaved in time, each with channel and config version.
        timeline = await http.get(f"/api/v1/voice/conversations/{cid}/history", headers=ana)
        assert timeline.status_code == 200, timeline.text
        body = timeline.json()
        assert body["calls"] == [call_id] and body["on_call"] is None
        turns = body["turns"]
        channels = [t["channel"] for t in turns]
        assert channels[:2] == ["chat", "chat"] and channels[-2:] == ["chat", "chat"], channels
        assert [t["at"] for t in turns] == sorted(t["at"] for t in turns)
        # During the call (greeted before or after the chat message came): the message, then the caller.
        during = [(t["channel"], t["speaker"], t["text"]) for t in turns[2:-2] if t["speaker"] == "customer"]
        assert during[0] == ("chat", "customer", "My order number is ORD-78945"), during
        assert [channel for channel, _, _ in during[1:]] == ["voice"], during
        assert next(t for t in turns if t["text"] == during[0][2])["call_id"] == call_id
        for turn in turns:
            expected = ("voice-bot", 1) if turn["channel"] == "voice" else ("support-bot", 1)
            assert (turn["config_id"], turn["config_version"]) == expected, turn
        assert any(t["speaker"] == "agent" and "I see you've sent" in (t["text"] or "") for t in turns)
        # Another customer of the tenant, or of another tenant, reaches none of it.
        for other in (bearer(roles=("customer",), subject="C-bob"), bearer("globex", ("org_admin",), "admin-2")):
            assert (await http.get(f"/api/v1/voice/conversations/{cid}/history", headers=other)).status_code == 404
        assert (await http.get(f"/api/v1/voice/calls/{call_id}/history", headers=ana)).status_code == 200
        schema = (await http.get("/schema/openapi.json")).json()
        assert "/api/v1/voice/conversations/{conversation_id}/history" in schema["paths"]
