"""The outbox: every reply on a conversation whose channel has a provider, delivered through it.

A durable consumer follows the conversations' commits (``EventStore.feed``, resumed from its
acknowledged position). For each ``AgentReplied`` (the AI's or a human agent's) on a WhatsApp,
SMS, email or social conversation it requests the reply's delivery (an idempotent command on the
``delivery`` aggregate, its id from the reply's), acknowledges the batch, and delivers:

1. the customer opted out (``STOP``) or the channel is off: the delivery is skipped, nothing sent;
2. an attempt in doubt (recorded, no outcome: its sender died, or the call broke after the
   request went out) is first settled by asking the provider (``ChannelAdapter.check``);
3. the platform's outbound rate for the channel is respected (``throttle``);
4. the attempt is recorded *before* the provider is called: only one sender can record attempt n
   (optimistic concurrency on the delivery), so two processes never send the same attempt;
5. the provider's answer becomes ``DeliverySent``, or ``DeliveryFailed`` with a retry time
   (exponential backoff) or, when it fails for good or out of attempts, a dead letter.

Deliveries not finished (a crash, a retry waiting) are found again by a sweep over the deliveries
read model (``pending``) every few seconds, and resumed from their events. Statuses the provider
reports later (delivered, read, failed) arrive by webhook (``gateways.http.channel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

import msgspec
import structlog

from commands.channel import ChannelBook, Deliveries, Followed
from commands.runner import CommandRunner
from domain import channel as ch
from domain import conversation as c
from domain.errors import NotFoundError
from gateways.channels.port import ChannelAdapter, Outgoing, Provider, ProviderError, Recipient
from infra.restart import keep_running
from streams.bulk import BulkFeed, Delivered
from streams.codec import resolve_event
from streams.errors import UnavailableError
from streams.store import EventStore, RecordedEvent, commit_items
from streams.subjects import StreamId, type_subjects

log = structlog.get_logger(__name__)


# A stored start's channel, read from its clear fields without decoding (or unsealing) the event.
class _Channel(msgspec.Struct):
    channel: str = ""


_CHANNEL = msgspec.json.Decoder(_Channel)


def _delivered(state: bytes) -> bool:
    """Whether a stored start is on a channel the outbox delivers to, read from its clear fields
    (the channel is not personal): a web-chat start is not unsealed. Unreadable: decoded, to be sure."""
    try:
        return _CHANNEL.decode(state).channel in ch.DELIVERED
    except msgspec.DecodeError:
        return True


@functools.lru_cache(maxsize=512)
def _kind(topic: str) -> type | None:
    """The event class of a stored topic (None: not one this code knows)."""
    try:
        return resolve_event(topic)
    except Exception:
        return None


# (tenant, channel, messages a minute): returns once a message may go.
Throttle = Callable[[str, str, int], Awaitable[None]]
# The deliveries not finished yet: (tenant, delivery id).
Pending = Callable[[], Awaitable[list[tuple[str, str]]]]


async def no_throttle(tenant: str, channel: str, per_minute: int) -> None:
    return None


class Outbox:
    def __init__(
        self,
        store: EventStore,
        runner: CommandRunner,
        book: ChannelBook,
        adapters: Mapping[str, ChannelAdapter],
        *,
        endpoints: Mapping[str, str] | None = None,
        public_url: str = "",
        throttle: Throttle = no_throttle,
        pending: Pending | None = None,
        durable: str = "channel_outbox",
        backoff: tuple[float, ...] = (1.0, 4.0, 15.0, 60.0),
        attempt_timeout: float = 30.0,
        sweep_every: float = 5.0,
        idle_wait: float = 0.5,
        linger: float = 0.05,
    ) -> None:
        self.store = store
        self.runner = runner
        self.book = book
        self.deliveries = Deliveries(runner)
        self.adapters = adapters
        self.endpoints = dict(endpoints or {})
        self.public_url = public_url
        self.throttle = throttle
        self.pending = pending
        self.durable = durable
        self.backoff = backoff
        self.attempt_timeout = attempt_timeout
        self.sweep_every = sweep_every
        self.idle_wait = idle_wait
        # After a batch that did not fill, wait this long before the next fetch: under load a fetch
        # then brings many commits, not a handful (each fetch is a pull request and a wake-up: they
        # cost the API process more than reading the commits), for at most this much more delay.
        self.linger = linger
        self.conversations = runner.repository(c.DECIDER)
        # Opt-outs as announced: a STOP committed in any process is seen here at once.
        self.contacts = Followed(runner, ch.CONTACT)
        # What the feed already told us, so a delivery needs no read of its conversation: each
        # conversation's recipient (kept up to date with the customer's messages), each reply's text.
        self._recipients: OrderedDict[str, Recipient] = OrderedDict()
        self._texts: OrderedDict[str, str] = OrderedDict()
        self.cache_size = 20_000
        self.sent = 0
        self._active: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Deliveries whose last attempt this process made: in doubt, it settles them at once.
        self._mine: set[str] = set()
        self._stop = asyncio.Event()
        self._feed: BulkFeed | None = None

    # Running ----------------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event | None = None) -> None:
        """Follow replies and sweep unfinished deliveries until ``stop()`` (or ``stopping`` is set)."""
        if stopping is not None:
            asyncio.get_running_loop().create_task(self._stop_when(stopping))
        await self.contacts.follow(self.store)
        start_seq = await self.store.last_seq() + 1  # the first time: replies from now on
        # Its position is what it acknowledged (``restart``); a batch is acknowledged once its
        # deliveries are requested, and a redelivered reply asks again for the same delivery.
        self._feed = self.store.bulk_feed(
            self.durable,
            subject=type_subjects(c.AGGREGATE_TYPE),
            start_seq=start_seq,
            batch=500,
            idle_wait=self.idle_wait,
            max_bytes=8 * 1024 * 1024,
        )
        restart = True

        async def step() -> None:
            nonlocal restart
            assert self._feed is not None
            if restart:
                await self._feed.restart()  # resume after the last batch acknowledged
                restart = False
            await self.step(self._feed)

        async def again() -> None:
            nonlocal restart
            restart = True

        tasks = [
            asyncio.create_task(
                keep_running(
                    step, self._stop, restart=again, log=log, what="channel outbox", expected=(UnavailableError,)
                )
            )
        ]
        if self.pending is not None:
            tasks.append(asyncio.create_task(self._sweep()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop_when(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._stop.set()

    async def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        """Stop, and let the deliveries in hand finish their current step (they resume on the next start)."""
        self._stop.set()
        for task in list(self._active.values()):
            task.cancel()
        await asyncio.gather(*self._active.values(), return_exceptions=True)
        if self._feed is not None:
            with contextlib.suppress(Exception):
                await self._feed.close()
        for adapter in self.adapters.values():
            with contextlib.suppress(Exception):
                await adapter.close()
        await self.contacts.close()

    async def step(self, feed: BulkFeed) -> int:
        """One batch of conversation commits: request a delivery for each reply to deliver, then ack."""
        batch = await feed.fetch()
        if not batch.messages:
            return 0
        replies: dict[str, list[RecordedEvent]] = {}
        for raw in batch.messages:
            if not self._may_matter(raw):
                continue
            for recorded in self.store.decode(raw):
                match recorded.event:
                    case c.ConversationStarted() as started:
                        self._started(recorded.stream, started)
                    case c.UserMessageReceived() as said:
                        known = self._recipients.get(recorded.stream.key)
                        if known is not None:
                            self._recipients[recorded.stream.key] = msgspec.structs.replace(
                                known, last_inbound_at=said.received_at, last_inbound_ref=said.message_id
                            )
                    case c.AgentReplied():
                        replies.setdefault(recorded.stream.key, []).append(recorded)

        async def in_order(conversation: list[RecordedEvent]) -> int:
            """One conversation's replies requested in order; each goes as soon as it is requested."""
            count = 0
            for recorded in conversation:
                found = await self._request(recorded)
                if found is not None:
                    count += 1
                    self.start_delivery(*found)
            return count

        requested = sum(await asyncio.gather(*(in_order(r) for r in replies.values())))
        await batch.ack()
        if self.linger and len(batch.messages) < feed.batch:
            await asyncio.sleep(self.linger)
        return requested

    def _may_matter(self, raw: Delivered) -> bool:
        """Whether a commit can change what the outbox does: a reply, a start on a channel it delivers
        to, or a customer's message in a conversation whose recipient it keeps. Only those are
        decoded: decoding (and unsealing) every conversation commit cost the API process ~80 us a
        command under bench-api's load."""
        try:
            items = commit_items(raw.data)
            kinds = [_kind(item.topic) for item in items]
            if any(kind is None or kind is c.AgentReplied for kind in kinds):
                return True  # an unknown topic is decoded, so a bad commit fails as it always did
            if any(k is c.ConversationStarted and _delivered(i.state) for k, i in zip(kinds, items, strict=True)):
                return True  # a start on a channel the outbox delivers to: its recipient is kept
            return (
                bool(self._recipients)
                and c.UserMessageReceived in kinds
                and StreamId.from_subject(raw.subject).key in self._recipients
            )
        except Exception:
            return True

    def _started(self, stream: StreamId, started: c.ConversationStarted) -> None:
        context = started.context or {}
        if started.channel not in ch.DELIVERED or not context.get("channel_address"):
            return
        self._recipients[stream.key] = Recipient(
            address=context["channel_address"],
            name=context.get("name"),
            last_inbound_at=started.started_at,
            thread=context.get("email_thread"),
            subject=context.get("email_subject"),
        )
        self._recipients.move_to_end(stream.key)
        if len(self._recipients) > self.cache_size:
            self._recipients.popitem(last=False)

    async def _request(self, recorded: RecordedEvent) -> tuple[str, str] | None:
        event = recorded.event
        assert isinstance(event, c.AgentReplied)
        tenant, conversation_id = recorded.stream.tenant, recorded.stream.aggregate_id
        conversation = (await self.conversations.load(tenant, conversation_id, trust_cache=True)).state
        if conversation.channel not in ch.DELIVERED or conversation.channel not in self.adapters:
            return None
        at = datetime.now(UTC)
        delivery_id = await self.deliveries.request(
            tenant, conversation_id, event.message_id, conversation.channel, event.author, at
        )
        if event.content:
            self._texts[delivery_id] = event.content
            if len(self._texts) > self.cache_size:
                self._texts.popitem(last=False)
        return tenant, delivery_id

    async def _sweep(self) -> None:
        assert self.pending is not None
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.sweep_every)
            if self._stop.is_set():
                return
            try:
                for tenant, delivery_id in await self.pending():
                    self.start_delivery(tenant, delivery_id)
            except Exception:
                log.warning("could not list the deliveries to resume", exc_info=True)

    def start_delivery(self, tenant: str, delivery_id: str) -> None:
        key = (tenant, delivery_id)
        if key in self._active or self._stop.is_set():
            return
        task = asyncio.create_task(self._deliver_logged(tenant, delivery_id), name=f"delivery-{delivery_id}")
        self._active[key] = task
        task.add_done_callback(lambda _: self._active.pop(key, None))

    async def _deliver_logged(self, tenant: str, delivery_id: str) -> None:
        try:
            state = await self.deliver(tenant, delivery_id)
            if state.final:
                self._mine.discard(delivery_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # the sweep takes it up again
            log.warning("delivery interrupted", tenant=tenant, delivery_id=delivery_id, exc_info=True)

    # Delivering -------------------------------------------------------------------------------

    async def deliver(self, tenant: str, delivery_id: str) -> ch.Delivery:
        """Take a delivery to an outcome (or to a retry that waits past this process's life)."""
        trust = True  # the first look: this process's copy (it just requested it, as a rule)
        while True:
            state = await self.deliveries.load(tenant, delivery_id, trust_cache=trust)
            trust = False
            now = datetime.now(UTC)
            if state.final or state.status == "none" or self._stop.is_set():
                return state
            if state.status == "retrying" and state.retry_at is not None and state.retry_at > now:
                if not await self._wait((state.retry_at - now).total_seconds()):
                    return state
                continue
            if state.in_doubt and state.attempted_at is not None:
                age = (now - state.attempted_at).total_seconds()
                if age < self.attempt_timeout and delivery_id not in self._mine:
                    # Another sender may still be waiting for the provider's answer.
                    if not await self._wait(self.attempt_timeout - age):
                        return state
                    continue
            adapter = self.adapters.get(state.channel)
            try:
                settings = await self.book.enabled(tenant, state.channel)
            except NotFoundError:
                await self.deliveries.skip(tenant, delivery_id, f"channel {state.channel} is not set up", now)
                continue
            if adapter is None:
                await self.deliveries.skip(tenant, delivery_id, f"no adapter for {state.channel}", now)
                continue
            provider = Provider(
                tenant=tenant,
                settings=settings,
                credentials=self.book.credentials(tenant, settings),
                base_url=self.endpoints.get(state.channel, ""),
                public_url=self.public_url,
            )
            found = await self._recipient(tenant, state)
            if found is None:
                await self.deliveries.skip(tenant, delivery_id, "the reply or its recipient is gone (erased)", now)
                continue
            recipient, text, contact = found
            if contact is not None:
                opted = await self.contacts.state(tenant, contact)
                if opted.opted_out:
                    await self.deliveries.skip(tenant, delivery_id, "the customer opted out (STOP)", now)
                    continue
            if state.in_doubt and state.attempted_at is not None:
                if not await self._settle(provider, adapter, recipient, state, delivery_id, text):
                    continue
                return await self.deliveries.load(tenant, delivery_id)
            await self.throttle(tenant, state.channel, settings.rate_per_minute or adapter.default_rate_per_minute)
            attempt, at = state.attempts + 1, datetime.now(UTC)
            if not await self.deliveries.attempt(tenant, delivery_id, attempt, delivery_id, at):
                continue  # another sender took this attempt
            self._mine.add(delivery_id)
            outgoing = Outgoing(
                delivery_id=delivery_id,
                conversation_id=state.conversation_id,
                text=text,
                attempt=attempt,
                reference=delivery_id,
                attempted_at=at,
            )
            try:
                sent = await adapter.send(provider, recipient, outgoing)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not isinstance(e, ProviderError):  # nobody knows whether it went: ask before again
                    log.warning("delivery attempt broke", delivery_id=delivery_id, exc_info=True)
                    continue
                if e.ambiguous:
                    continue  # it may have gone: settled by asking the provider first
                backoff = e.retry_after or self.backoff[min(attempt - 1, len(self.backoff) - 1)]
                retry_at = datetime.now(UTC) + timedelta(seconds=backoff)
                log.info("delivery attempt failed", delivery_id=delivery_id, attempt=attempt, reason=e.reason)
                await self.deliveries.failed(
                    tenant,
                    delivery_id,
                    attempt,
                    e.reason,
                    retryable=e.retryable,
                    retry_at=retry_at,
                    at=datetime.now(UTC),
                )
                continue
            await self.deliveries.sent(
                tenant, delivery_id, attempt, sent.provider_message_id, kind=sent.kind, at=datetime.now(UTC)
            )
            self._mine.discard(delivery_id)
            self.sent += 1
            return await self.deliveries.load(tenant, delivery_id)

    async def _settle(
        self,
        provider: Provider,
        adapter: ChannelAdapter,
        recipient: Recipient,
        state: ch.Delivery,
        delivery_id: str,
        text: str,
    ) -> bool:
        """Ask the provider about an attempt in doubt: True when it went (now recorded as sent)."""
        assert state.attempted_at is not None
        outgoing = Outgoing(
            delivery_id=delivery_id,
            conversation_id=state.conversation_id,
            text=text,
            attempt=state.attempts,
            reference=state.reference or delivery_id,
            attempted_at=state.attempted_at,
        )
        try:
            sent = await adapter.check(provider, recipient, outgoing)
        except ProviderError as e:
            await self._wait(e.retry_after or self.backoff[0])
            return False
        now = datetime.now(UTC)
        if sent is not None:
            await self.deliveries.sent(
                provider.tenant,
                delivery_id,
                state.attempts,
                sent.provider_message_id,
                kind=sent.kind,
                recovered=True,
                at=now,
            )
            return True
        # It never reached the provider: that attempt failed, and the next one goes now.
        await self.deliveries.failed(
            provider.tenant,
            delivery_id,
            state.attempts,
            "the attempt was interrupted before the provider took it",
            retryable=True,
            retry_at=now,
            at=now,
        )
        return False

    async def _recipient(self, tenant: str, state: ch.Delivery) -> tuple[Recipient, str, str | None] | None:
        """Whom to send the reply to and its text: from the feed when it told us, else the conversation's events."""
        stream = StreamId(tenant, c.AGGREGATE_TYPE, state.conversation_id)
        known, text = self._recipients.get(stream.key), self._texts.pop(ch.delivery_id(state.message_id), None)
        if known is not None and text is not None:
            conversation = (await self.conversations.load(tenant, state.conversation_id, trust_cache=True)).state
            user = conversation.user_id
            return known, text, user if user.startswith(f"{state.channel}-") else None
        events = await self.store.read(stream)
        started: c.ConversationStarted | None = None
        last_in: c.UserMessageReceived | None = None
        reply: c.AgentReplied | None = None
        for recorded in events:
            match recorded.event:
                case c.ConversationStarted() as e:
                    started = e
                case c.UserMessageReceived() as e if reply is None:
                    last_in = e
                case c.AgentReplied() as e if e.message_id == state.message_id:
                    reply = e
        if started is None or reply is None or not reply.content or not started.context:
            return None
        context = started.context
        address = context.get("channel_address")
        if not address:
            return None
        recipient = Recipient(
            address=address,
            name=context.get("name"),
            last_inbound_at=last_in.received_at if last_in is not None else started.started_at,
            last_inbound_ref=last_in.message_id if last_in is not None else None,
            thread=context.get("email_thread"),
            subject=context.get("email_subject"),
        )
        contact = started.user_id if started.user_id.startswith(f"{state.channel}-") else None
        return recipient, reply.content, contact

    async def _wait(self, seconds: float) -> bool:
        """Sleep, unless stopping: False when the outbox stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))
        return not self._stop.is_set()
