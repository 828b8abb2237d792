"""The outbox across a crash: a reply whose sender died mid-delivery is sent exactly once after restart.

The outbox, the delivery projection (whose unfinished rows the restarted outbox sweeps) and a local
Twilio run for real; the "crash" is the first outbox closed while its request waits at Twilio (Twilio
took the message, its answer never came) or before Twilio could be reached at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio
from psycopg_pool import AsyncConnectionPool

from commands.channel import ChannelBook
from commands.runner import CommandContext, CommandRunner
from domain import channel as ch
from domain import conversation as c
from gateways.channels.outbox import Outbox
from gateways.channels.twilio_sms import TwilioSms
from projections import registry
from projections.channel import ChannelsProjector
from read_models.channel import DeliveryQueries
from streams.factory import OpenStore
from streams.subjects import StreamId, type_subjects
from tests.channel_fakes.providers import FakeTwilio
from tests.conftest import fresh_database

TENANT = "acme"
CUSTOMER = "+34600777888"


@pytest_asyncio.fixture
async def pool(pg_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        fresh_database(pg_url), min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)
    await registry.migrate(pool, [ChannelsProjector()])
    yield pool
    await pool.close()


async def eventually(check: Any, within: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)
    return found


async def setup(opened: OpenStore, twilio: FakeTwilio) -> tuple[CommandRunner, ChannelBook, str]:
    runner = CommandRunner.for_aggregates(opened.store, [c.DECIDER, *ch.DECIDERS])
    book = ChannelBook(runner, opened.keys)
    at = datetime.now(UTC)
    credentials = {"account_sid": twilio.account_sid, "auth_token": twilio.auth_token}
    await book.configure(
        TENANT, "sms", config_id="support-bot", sender="+15550001111", credentials=credentials,
        rate_per_minute=0, actor="test", at=at,
    )  # fmt: skip
    contact = ch.contact_id("sms", CUSTOMER)
    ctx = CommandContext(tenant=TENANT, actor="test")
    start = c.StartConversation(
        conversation_id="conv-1", config_id="support-bot", config_version=1, channel="sms", user_id=contact,
        context={"channel_address": CUSTOMER}, initial_message="Where is ORD-78945?", message_id="SM-in-1", at=at,
    )  # fmt: skip
    await runner.handle(c.DECIDER, "conv-1", start, ctx)
    return runner, book, contact


def outbox(
    opened: OpenStore, runner: CommandRunner, book: ChannelBook, twilio: FakeTwilio, queries: DeliveryQueries
) -> Outbox:
    async def pending() -> list[tuple[str, str]]:
        return await queries.unfinished(older_than_seconds=0.2)

    return Outbox(
        opened.store, runner, book, {"sms": TwilioSms()}, endpoints={"sms": twilio.url}, pending=pending,
        backoff=(0.05,), attempt_timeout=0.5, sweep_every=0.2, idle_wait=0.1,
    )  # fmt: skip


async def test_a_reply_whose_sender_died_waiting_for_twilio_is_sent_exactly_once_after_restart(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any]
) -> None:
    twilio = FakeTwilio(account_sid="AC" + "2" * 32, auth_token="tok", public_url="")
    await twilio.start()
    projector = registry.runner(ChannelsProjector(), open_test_store.store, pool, idle_wait=0.1)
    projecting = asyncio.create_task(projector.run())
    queries = DeliveryQueries(pool)
    runner, book, _ = await setup(open_test_store, twilio)
    first = outbox(open_test_store, runner, book, twilio, queries)
    running = asyncio.create_task(first.run())
    try:
        await asyncio.sleep(0.3)  # the outbox follows replies from now on
        twilio.hold = True  # Twilio takes the message and its answer never comes back
        reply = c.RecordAgentReply(
            message_id="SM-in-1-reply", content="Your order ships tomorrow.", at=datetime.now(UTC)
        )
        await runner.handle(c.DECIDER, "conv-1", reply, CommandContext(tenant=TENANT, actor="agent:ai"))
        await eventually(lambda: _now(twilio.messages))
        await first.close()  # the process dies while it waits
        running.cancel()
        delivery = ch.delivery_id("SM-in-1-reply")
        state = (await runner.repository(ch.DELIVERY).load(TENANT, delivery)).state
        assert state.in_doubt and state.attempts == 1

        twilio.hold = False
        restarted = outbox(
            open_test_store,
            CommandRunner.for_aggregates(open_test_store.store, [c.DECIDER, *ch.DECIDERS]),
            book,
            twilio,
            queries,
        )
        again = asyncio.create_task(restarted.run())

        async def settled() -> ch.Delivery | None:
            found = (await runner.repository(ch.DELIVERY).load(TENANT, delivery)).state
            return found if found.status == "sent" else None

        done = await eventually(settled)
        assert done.provider_message_id == twilio.messages[0]["sid"] and done.attempts == 1
        await asyncio.sleep(0.5)  # and nothing more goes out
        assert twilio.sent_to(CUSTOMER) == ["Your order ships tomorrow."]
        events = [
            r.event for r in await open_test_store.store.read(runner.repository(ch.DELIVERY).stream(TENANT, delivery))
        ]
        assert [type(e).__name__ for e in events] == ["DeliveryRequested", "DeliveryAttempted", "DeliverySent"]
        assert isinstance(events[-1], ch.DeliverySent) and events[-1].recovered
        await restarted.close()
        again.cancel()
    finally:
        await projector.stop()
        await asyncio.gather(projecting, return_exceptions=True)
        await twilio.stop()


async def test_a_reply_whose_sender_died_before_twilio_had_it_is_sent_once_after_restart(
    open_test_store: OpenStore, pool: AsyncConnectionPool[Any]
) -> None:
    twilio = FakeTwilio(account_sid="AC" + "3" * 32, auth_token="tok", public_url="")
    url = await twilio.start()
    port = int(url.rpartition(":")[2])
    projector = registry.runner(ChannelsProjector(), open_test_store.store, pool, idle_wait=0.1)
    projecting = asyncio.create_task(projector.run())
    queries = DeliveryQueries(pool)
    runner, book, _ = await setup(open_test_store, twilio)
    first = outbox(open_test_store, runner, book, twilio, queries)
    running = asyncio.create_task(first.run())
    try:
        await asyncio.sleep(0.3)
        await twilio.stop()  # Twilio cannot be reached: the attempt is recorded, the request never lands
        reply = c.RecordAgentReply(
            message_id="SM-in-1-reply", content="Your order ships tomorrow.", at=datetime.now(UTC)
        )
        await runner.handle(c.DECIDER, "conv-1", reply, CommandContext(tenant=TENANT, actor="agent:ai"))
        delivery = ch.delivery_id("SM-in-1-reply")

        async def attempted() -> bool:
            return (await runner.repository(ch.DELIVERY).load(TENANT, delivery)).state.attempts >= 1

        await eventually(attempted)
        await first.close()
        running.cancel()
        assert twilio.messages == []

        await twilio.start(port)
        restarted = outbox(
            open_test_store,
            CommandRunner.for_aggregates(open_test_store.store, [c.DECIDER, *ch.DECIDERS]),
            book,
            twilio,
            queries,
        )
        again = asyncio.create_task(restarted.run())
        await eventually(lambda: _now(twilio.messages))
        await asyncio.sleep(0.5)
        assert twilio.sent_to(CUSTOMER) == ["Your order ships tomorrow."]
        state = (await runner.repository(ch.DELIVERY).load(TENANT, delivery)).state
        assert state.status == "sent"
        await restarted.close()
        again.cancel()
    finally:
        await projector.stop()
        await asyncio.gather(projecting, return_exceptions=True)
        await twilio.stop()


async def _now(value: Any) -> Any:
    return value


async def test_the_outbox_decodes_only_the_commits_that_concern_it(open_test_store: OpenStore) -> None:
    """A start on a delivered channel, a reply, and a customer's message in a conversation whose
    recipient it keeps; not a web-chat start (its sealed context stays sealed) nor its messages."""
    twilio = FakeTwilio(account_sid="AC" + "3" * 32, auth_token="tok", public_url="")
    runner, book, _ = await setup(open_test_store, twilio)  # conv-1: an SMS start
    ctx = CommandContext(tenant=TENANT, actor="test")
    at = datetime.now(UTC)
    web = c.StartConversation(
        conversation_id="conv-web", config_id="support-bot", config_version=1, channel="webchat", user_id="u-9",
        context={"name": "Ana", "email": "ana@example.com"}, initial_message="Hi", message_id="m-web-0", at=at,
    )  # fmt: skip
    await runner.handle(c.DECIDER, "conv-web", web, ctx)
    said = c.ReceiveUserMessage(message_id="m-web-1", content="My card is 4111 1111 1111 1111", at=at)
    await runner.handle(c.DECIDER, "conv-web", said, ctx)
    reply = c.RecordAgentReply(message_id="m-web-1-reply", content="Thanks", at=at)
    await runner.handle(c.DECIDER, "conv-web", reply, ctx)
    said_sms = c.ReceiveUserMessage(message_id="SM-in-2", content="And ORD-1?", at=at)
    await runner.handle(c.DECIDER, "conv-1", said_sms, ctx)
    box = outbox(open_test_store, runner, book, twilio, DeliveryQueries(None))  # type: ignore[arg-type]
    pages = [page async for page in open_test_store.store.replay(subject=type_subjects(c.AGGREGATE_TYPE))]
    commits = [m for page in pages for m in page]
    assert [StreamId.from_subject(m.subject).aggregate_id for m in commits] == [
        "conv-1", "conv-web", "conv-web", "conv-web", "conv-1"
    ]  # fmt: skip
    sms_start, web_start, web_said, web_reply, sms_said = commits
    assert box._may_matter(sms_start) and not box._may_matter(web_start)
    assert not box._may_matter(web_said) and box._may_matter(web_reply)
    assert not box._may_matter(sms_said)  # its recipient is not kept yet: the start came before the outbox
    started = [r for r in open_test_store.store.decode(sms_start) if isinstance(r.event, c.ConversationStarted)]
    box._started(started[0].stream, started[0].event)  # as ``step`` does with a start it decodes
    assert box._may_matter(sms_said)  # now it is: the customer's last message moves its reply window
