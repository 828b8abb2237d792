"""Channels end to end: providers' webhooks in, the bot's and human agents' replies out through local
servers speaking each provider's protocol (the real twilio package against a local Twilio)."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import pytest_asyncio
from litestar.testing import AsyncTestClient

from commands.runner import CommandContext, CommandRunner
from domain import channel as ch
from domain import conversation as c
from gateways.channels.settings import ChannelOptions
from streams.factory import StoreSettings, open_store
from streams.subjects import StreamId
from tests.api_support import api_client, bearer, settings_for
from tests.channel_fakes.providers import Callback, FakeGraph, FakeSocial, FakeTwilio, SmtpRelay
from tests.conftest import delete_stream, fresh_database, unique_stream

PUBLIC = "http://parley.test"
ADMIN = bearer(roles=("org_admin",), subject="admin")
STAFF = bearer(roles=("support_agent", "supervisor"), subject="sarah")
TENANT = "acme"
T = TypeVar("T")


class Stack:
    def __init__(self, client: AsyncTestClient[Any], graph: FakeGraph, twilio: FakeTwilio, relay: SmtpRelay,
                 tiktok: FakeSocial, linkedin: FakeSocial, runner: CommandRunner, settings: Any) -> None:  # fmt: skip
        self.client, self.graph, self.twilio, self.relay = client, graph, twilio, relay
        self.tiktok, self.linkedin, self.runner, self.settings = tiktok, linkedin, runner, settings

    async def post(self, callback: Callback) -> Any:
        return await self.client.post(callback.path, content=callback.body, headers=callback.headers)

    async def flush(self, server: Any) -> None:
        """Deliver the provider's status callbacks (the network between it and us)."""
        while server.callbacks:
            response = await self.post(server.callbacks.pop(0))
            assert response.status_code == 200, response.text

    async def configure(self, channel: str, **body: Any) -> dict[str, Any]:
        response = await self.client.put(f"/api/v1/channels/{channel}", json=body, headers=ADMIN)
        assert response.status_code == 200, response.text
        return response.json()

    async def events(self, conversation_id: str) -> list[Any]:
        stream = StreamId(TENANT, c.AGGREGATE_TYPE, conversation_id)
        return [r.event for r in await self.runner.store.read(stream)]


async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 20.0) -> T:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = await check()
        if found:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.1)


@pytest_asyncio.fixture
async def stack(nats_url: str, pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    graph = FakeGraph(access_token="EAAG-token", app_secret="app-secret", tenant=TENANT, phone_number_id="1055")
    twilio = FakeTwilio(account_sid="AC" + "1" * 32, auth_token="twilio-token", public_url=PUBLIC)
    tiktok = FakeSocial("tiktok", access_token="tt-token", client_secret="tt-secret", tenant=TENANT)
    linkedin = FakeSocial("linkedin", access_token="li-token", client_secret="li-secret", tenant=TENANT)
    relay = SmtpRelay()
    endpoints = {
        "whatsapp": await graph.start(),
        "sms": await twilio.start(),
        "tiktok": await tiktok.start(),
        "linkedin": await linkedin.start(),
        "email": f"smtp://127.0.0.1:{await relay.start()}",
    }
    options = ChannelOptions(
        public_url=PUBLIC, endpoints=endpoints, smtp_port=0, backoff=(0.05,), attempt_timeout=1.0, sweep_every=0.3
    )
    stream = unique_stream()
    settings = settings_for(nats_url, fresh_database(pg_url), redis_url, tmp_path, stream, channels=options)
    opened = await open_store(StoreSettings(nats_url=nats_url, data_dir=tmp_path, stream=stream))
    runner = CommandRunner.for_aggregates(opened.store, [c.DECIDER, *ch.DECIDERS])
    try:
        async with api_client(settings) as client:
            yield Stack(client, graph, twilio, relay, tiktok, linkedin, runner, settings)
    finally:
        await opened.close()
        for server in (graph, twilio, tiktok, linkedin, relay):
            await server.stop()
        await delete_stream(nats_url, stream)


async def whatsapp(stack: Stack) -> None:
    await stack.configure(
        "whatsapp",
        config_id="support-bot",
        sender="1055",
        credentials={"access_token": "EAAG-token", "app_secret": "app-secret", "verify_token": "verify-me"},
    )


async def sms(stack: Stack) -> None:
    await stack.configure(
        "sms",
        config_id="support-bot",
        sender="+15550001111",
        credentials={"account_sid": stack.twilio.account_sid, "auth_token": "twilio-token"},
    )


async def conversation_of(stack: Stack, channel: str, address: str, thread: str | None = None) -> str:
    contact = ch.contact_id(channel, address, thread)

    async def opened() -> str | None:
        state = (await stack.runner.repository(ch.CONTACT).load(TENANT, contact)).state
        return state.conversation_id

    return await eventually(opened)


async def test_whatsapp_verifies_its_webhook_and_the_bots_reply_goes_back_through_the_graph_api(stack: Stack) -> None:
    await whatsapp(stack)
    listed = (await stack.client.get("/api/v1/channels/whatsapp", headers=ADMIN)).json()
    assert listed["webhook_url"] == f"{PUBLIC}/webhooks/whatsapp/{TENANT}"
    assert listed["credentials"] == ["access_token", "app_secret", "verify_token"]
    assert "EAAG-token" not in str(listed)  # never shown again
    challenge = await stack.client.get(
        f"/webhooks/whatsapp/{TENANT}",
        params={"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"},
    )
    assert challenge.status_code == 200 and challenge.text == "1158201444"
    wrong = await stack.client.get(
        f"/webhooks/whatsapp/{TENANT}", params={"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "1"}
    )
    assert wrong.status_code == 403

    response = await stack.post(stack.graph.customer_writes("34600111222", "Where is my order ORD-78945?"))
    assert response.status_code == 200, response.text
    cid = await conversation_of(stack, "whatsapp", "34600111222")
    sent = await eventually(lambda: _async(stack.graph.sent))
    assert sent[0]["to"] == "34600111222" and sent[0]["type"] == "text"
    assert "ORD-78945" in sent[0]["text"]["body"]
    await stack.flush(stack.graph)  # Meta's sent and delivered statuses

    async def delivered() -> dict[str, Any] | None:
        found = (await stack.client.get(f"/api/v1/orchestration/conversations/{cid}/deliveries", headers=STAFF)).json()
        rows = found["deliveries"]
        return rows[0] if rows and rows[0]["status"] == "delivered" else None

    row = await eventually(delivered)
    assert row["channel"] == "whatsapp" and row["attempts"] == 1 and row["provider_message_id"] == sent[0]["id"]
    started = next(e for e in await stack.events(cid) if isinstance(e, c.ConversationStarted))
    assert started.channel == "whatsapp" and started.config_id == "support-bot"


async def test_outside_the_24_hour_window_only_a_template_is_sent(stack: Stack) -> None:
    await whatsapp(stack)
    # The customer wrote 25 hours ago (the webhook comes late): the window has closed, so the reply
    # goes as the approved template; a free-form text would be refused by Meta (131047).
    await stack.post(stack.graph.customer_writes("34600999888", "hello", at=time.time() - 25 * 3600))
    await conversation_of(stack, "whatsapp", "34600999888")
    sent = await eventually(lambda: _async(stack.graph.sent))
    assert sent[0]["type"] == "template" and sent[0]["template"]["name"] == "hello_world"
    assert stack.graph.requests == 1


async def test_signatures_are_checked_and_a_refused_webhook_appends_nothing(stack: Stack) -> None:
    await whatsapp(stack)
    await sms(stack)
    await stack.configure("tiktok", credentials={"client_secret": "tt-secret", "access_token": "tt-token"})
    await stack.configure("linkedin", credentials={"client_secret": "li-secret", "access_token": "li-token"})
    before = await stack.runner.store.last_seq()
    good = stack.graph.customer_writes("34600111333", "hi")
    unsigned = await stack.client.post(good.path, content=good.body, headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 401
    forged = await stack.client.post(good.path, content=good.body.replace(b"hi", b"ho"), headers=good.headers)
    assert forged.status_code == 403
    text = stack.twilio.customer_texts(TENANT, "+34600111333", "+15550001111", "hello")
    tampered = {**text.headers, "X-Twilio-Signature": "bm9wZQ=="}
    assert (await stack.client.post(text.path, content=text.body, headers=tampered)).status_code == 403
    no_sig = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await stack.client.post(text.path, content=text.body, headers=no_sig)).status_code == 401
    old = stack.tiktok.user_writes("tt-user", "hi", stamp=1_000_000_000)  # a replayed, old signature
    assert (await stack.post(old)).status_code == 403
    li = stack.linkedin.user_writes("li-user", "hi")
    assert (await stack.client.post(li.path, content=li.body + b" ", headers=li.headers)).status_code == 403
    assert (await stack.post(Callback("/webhooks/whatsapp/globex", good.headers, good.body))).status_code == 404
    assert await stack.runner.store.last_seq() == before  # nothing appended
    assert (await stack.post(li)).status_code == 200  # the genuine ones are taken
    assert (await stack.post(stack.tiktok.user_writes("tt-user", "hi"))).status_code == 200


async def test_a_redelivered_webhook_is_appended_once(stack: Stack) -> None:
    await sms(stack)
    first = stack.twilio.customer_texts(TENANT, "+34600222333", "+15550001111", "Hi, where is ORD-78945?", sid="SM1")
    for _ in range(3):
        assert (await stack.post(first)).status_code == 200
    cid = await conversation_of(stack, "sms", "+34600222333")
    again = stack.twilio.customer_texts(TENANT, "+34600222333", "+15550001111", "And ORD-11111?", sid="SM2")
    await asyncio.gather(*(stack.post(again) for _ in range(3)))
    events = await stack.events(cid)
    received = [e.message_id for e in events if isinstance(e, c.UserMessageReceived)]
    assert received == ["SM1", "SM2"]
    assert sum(isinstance(e, c.ConversationStarted) for e in events) == 1


async def test_sms_replies_go_through_twilio_and_stop_is_honoured(stack: Stack) -> None:
    await sms(stack)
    customer = "+34600333444"
    await stack.post(stack.twilio.customer_texts(TENANT, customer, "+15550001111", "Where is my order ORD-78945?"))
    cid = await conversation_of(stack, "sms", customer)
    replies = await eventually(lambda: _async(stack.twilio.sent_to(customer)))
    assert "ORD-78945" in replies[0]
    await stack.flush(stack.twilio)

    stop = await stack.post(stack.twilio.customer_texts(TENANT, customer, "+15550001111", "STOP"))
    assert (
        stop.status_code == 200
        and "unsubscribed" in stop.text
        and stop.headers["content-type"].startswith("application/xml")
    )
    events = await stack.events(cid)
    assert not any(isinstance(e, c.UserMessageReceived) and e.content == "STOP" for e in events)
    # A reply recorded after the customer opted out is not sent: the delivery is skipped.
    message_id = await _human_reply(stack, cid, "One more thing about your order")

    async def skipped() -> dict[str, Any] | None:
        rows = (await stack.client.get(f"/api/v1/orchestration/conversations/{cid}/deliveries", headers=STAFF)).json()
        return next((r for r in rows["deliveries"] if r["message_id"] == message_id and r["status"] == "skipped"), None)

    row = await eventually(skipped)
    assert "opted out" in row["last_error"]
    assert len(stack.twilio.sent_to(customer)) == 1
    help_ = await stack.post(stack.twilio.customer_texts(TENANT, customer, "+15550001111", "help"))
    assert "STOP" in help_.text
    start = await stack.post(stack.twilio.customer_texts(TENANT, customer, "+15550001111", "START"))
    assert "resubscribed" in start.text


async def test_a_human_agents_reply_reaches_the_customer_on_their_channel(stack: Stack) -> None:
    await sms(stack)
    customer = "+34600444555"
    await stack.post(stack.twilio.customer_texts(TENANT, customer, "+15550001111", "I need a person please"))
    cid = await conversation_of(stack, "sms", customer)
    await eventually(lambda: _async(stack.twilio.sent_to(customer)))
    await _human_reply(stack, cid, "Hi, this is Sarah from support. I can help.")
    texts = await eventually(lambda: _async([t for t in stack.twilio.sent_to(customer) if "Sarah" in t]))
    assert texts == ["Hi, this is Sarah from support. I can help."]


async def test_a_provider_outage_is_retried_and_then_dead_lettered(stack: Stack) -> None:
    await sms(stack)
    customer = "+34600555666"
    stack.twilio.fail_next = [(503, {"code": 20500, "message": "Service unavailable", "status": 503})] * 2
    await stack.post(stack.twilio.customer_texts(TENANT, customer, "+15550001111", "Where is ORD-78945?"))
    cid = await conversation_of(stack, "sms", customer)
    replies = await eventually(lambda: _async(stack.twilio.sent_to(customer)))  # the third attempt goes through
    assert len(replies) == 1 and stack.twilio.requests == 3

    stack.twilio.fail_next = [(503, {"code": 20500, "message": "Service unavailable", "status": 503})] * 10
    message_id = await _human_reply(stack, cid, "Are you still there?")

    async def dead() -> dict[str, Any] | None:
        rows = (await stack.client.get("/api/v1/channels/dead-letters", headers=STAFF)).json()["deliveries"]
        return next((r for r in rows if r["message_id"] == message_id), None)

    row = await eventually(dead)
    assert row["attempts"] == ch.MAX_ATTEMPTS and "503" in row["last_error"] and row["conversation_id"] == cid
    on_conversation = (
        await stack.client.get(f"/api/v1/orchestration/conversations/{cid}/deliveries", headers=STAFF)
    ).json()
    assert [r["status"] for r in on_conversation["deliveries"]] == ["sent", "dead_lettered"]
    assert len(stack.twilio.sent_to(customer)) == 1


async def test_email_threads_by_message_id_strips_quoted_history_and_replies_with_threading_headers(
    stack: Stack,
) -> None:
    await stack.configure("email", config_id="support-bot", sender="support@acme.test")
    view = (await stack.client.get("/api/v1/channels/email", headers=ADMIN)).json()
    port = int(view["inbound_address"].rpartition(":")[2])

    async def write(subject: str, body: str, message_id: str, references: str | None = None) -> None:
        msg = email.message.EmailMessage()
        msg["From"] = "Ana Diaz <ana@example.com>"
        msg["To"] = "acme@parley.test"
        msg["Subject"] = subject
        msg["Message-ID"] = message_id
        msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
        if references:
            msg["In-Reply-To"] = references.split()[-1]
            msg["References"] = references
        msg.set_content(body)
        await aiosmtplib.send(msg, hostname="127.0.0.1", port=port)

    await write("Order status", "Where is my order ORD-78945?", "<m1@example.com>")
    cid = await conversation_of(stack, "email", "ana@example.com", "<m1@example.com>")
    replies = await eventually(lambda: _async(stack.relay.messages))
    reply = replies[0]
    assert reply["Subject"] == "Re: Order status" and reply["In-Reply-To"] == "<m1@example.com>"
    assert "ORD-78945" in reply.get_body().get_content()  # type: ignore[union-attr]
    quoted = "Thanks! And when will it arrive?\n\nOn Mon, Oct 13, 2025 Support <support@acme.test> wrote:\n> " + (
        reply.get_body().get_content().replace("\n", "\n> ")  # type: ignore[union-attr]
    )
    await write("Re: Order status", quoted, "<m2@example.com>", f"<m1@example.com> {reply['Message-ID']}")
    await eventually(lambda: _async(stack.relay.messages[1:]))
    events = await stack.events(cid)
    texts = [e.content for e in events if isinstance(e, c.UserMessageReceived)]
    assert texts == ["Where is my order ORD-78945?", "Thanks! And when will it arrive?"]
    second = stack.relay.messages[1]
    assert second["In-Reply-To"] == "<m2@example.com>" and "<m1@example.com>" in second["References"]


async def _human_reply(stack: Stack, conversation_id: str, text: str) -> str:
    """A human agent takes the conversation and answers (the escalation path's commands)."""
    repo = stack.runner.repository(c.DECIDER)
    state = (await repo.load(TENANT, conversation_id)).state
    ctx = CommandContext(tenant=TENANT, actor="support_agent:sarah")
    now = datetime.now(UTC)
    escalation = state.open_escalation
    if escalation is None:
        escalation = f"esc-{conversation_id[:8]}-{now.timestamp()}".replace(".", "-")
        await stack.runner.handle(
            c.DECIDER,
            conversation_id,
            c.RequestEscalation(escalation_id=escalation, trigger="test", reason="t", at=now),
            ctx,
        )
    state = (await repo.load(TENANT, conversation_id)).state
    if state.assigned_agent != "sarah":
        await stack.runner.handle(
            c.DECIDER,
            conversation_id,
            c.AssignEscalation(escalation_id=escalation, agent_id="sarah", agent_name="Sarah", at=now),
            ctx,
        )
    message_id = f"human-{now.timestamp()}".replace(".", "-")
    await stack.runner.handle(
        c.DECIDER,
        conversation_id,
        c.RecordAgentReply(message_id=message_id, content=text, author=c.human_author("sarah"), at=now),
        ctx,
    )
    return message_id


async def _async(value: T) -> T:
    return value


async def test_a_social_platforms_message_is_answered_through_its_api_with_our_delivery_as_idempotency_key(
    stack: Stack,
) -> None:
    await stack.configure("linkedin", credentials={"client_secret": "li-secret", "access_token": "li-token"})
    view = (await stack.client.get("/api/v1/channels/linkedin", headers=ADMIN)).json()
    assert view["rate_per_minute"] == 100  # seed 003's LinkedIn limit, the default
    response = await stack.post(stack.linkedin.user_writes("li-42", "Where is my order ORD-78945?", message_id="li-m1"))
    assert response.status_code == 200 and response.json() == {"received": 1}
    sent = await eventually(lambda: _async(list(stack.linkedin.sent.items())))
    key, message = sent[0]
    assert key == ch.delivery_id("li-m1-reply") and message["recipient"] == "li-42" and "ORD-78945" in message["text"]
