"""Channel use cases: a customer's message from a channel onto the right conversation, the tenant's
channel settings with their credentials sealed, and the steps of a reply's delivery.

Inbound (``Inbox.receive``): the contact (channel + the customer's address, and the thread for
email) names the conversation its messages go to; with none, or the last one closed, a new one is
started on the config the tenant set for the channel. Every effect is an idempotent command whose
id derives from the channel's own message id, so a redelivered webhook appends nothing: the
message lands with ``in-<channel>-<message id>`` as its command id, and a new conversation's id is
derived from the contact and the message that opened it.

Deliveries (``Deliveries``) are the outbox's commands; the outbox itself (the consumer that calls
the providers) is an edge: ``gateways.channels.outbox``.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

from commands.config import ConfigCatalog
from commands.conversation import start_conversation
from commands.runner import CommandContext, CommandRunner, Outcome
from domain import channel as ch
from domain import conversation as c
from domain.errors import IllegalStateError, NotFoundError, ValidationError
from domain.messages import Command, Decider
from streams.keys import KeyStore
from streams.store import EventStore
from streams.subjects import StreamId

S = TypeVar("S")

ACTOR = "channel:inbound"
# The key subject channel credentials are sealed under (a tenant's; never a person's).
CREDENTIALS_SUBJECT = "channel-credentials"
# A conversation started from a channel, when the tenant set no config for it.
DEFAULT_CONFIG = "support-bot"
_JSON = msgspec.json.Encoder()
_CREDENTIALS = msgspec.json.Decoder(dict[str, str])


class Inbound(msgspec.Struct, frozen=True, kw_only=True):
    """A customer's message as every adapter normalizes it."""

    channel: str
    address: str  # who wrote: a phone number, a WhatsApp id, an email address, a platform user id
    message_id: str  # the channel's own id for the message (its redeliveries carry the same)
    text: str
    attachments: list[str] = []
    thread: str | None = None  # an email thread's first Message-ID
    name: str | None = None
    user_id: str | None = None  # who the conversation belongs to (default: the contact)
    context: dict[str, str] = {}  # what the adapter needs to answer (an email's subject)
    at: datetime


class Received(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: str
    message_id: str
    position: int
    started: bool
    duplicate: bool


class Followed(Generic[S]):
    """An aggregate's in-memory copy, trusted until a commit of it is announced (``EventStore.follow``)
    and for at most ``trust_for`` seconds, in case an announcement was lost."""

    def __init__(self, runner: CommandRunner, decider: Decider[S], *, trust_for: float = 5.0) -> None:
        self.repository = runner.repository(decider)
        self.decider = decider
        self.trust_for = trust_for
        self._subscription: Any = None
        self._checked: dict[str, tuple[float, int]] = {}
        self._generation: dict[str, int] = {}

    async def follow(self, store: EventStore) -> None:
        def announced(stream: StreamId, version: int) -> None:
            self._generation[stream.key] = self._generation.get(stream.key, 0) + 1

        self._subscription = await store.follow(self.decider.type_name, announced)

    async def close(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.close()

    async def state(self, tenant: str, aggregate_id: str) -> S:
        key = self.repository.stream(tenant, aggregate_id).key
        now = time.monotonic()
        checked = self._checked.get(key)
        generation = self._generation.get(key, 0)
        trusted = (
            self._subscription is not None
            and checked is not None
            and checked[1] == generation
            and now - checked[0] < self.trust_for
        )
        loaded = await self.repository.load(tenant, aggregate_id, trust_cache=trusted)
        if not trusted and self._subscription is not None and self._generation.get(key, 0) == generation:
            self._checked[key] = (now, generation)
        return loaded.state


# Channel settings ---------------------------------------------------------------------------


class ChannelBook:
    """A tenant's channel settings: credentials sealed on the way in, opened only for a provider call."""

    def __init__(self, runner: CommandRunner, keys: KeyStore) -> None:
        self.runner = runner
        self.keys = keys
        self.settings = Followed(runner, ch.CHANNEL)
        self._opened: dict[tuple[str, str, str], dict[str, str]] = {}

    async def configure(
        self,
        tenant: str,
        channel: str,
        *,
        config_id: str,
        sender: str,
        credentials: Mapping[str, str] | None,
        rate_per_minute: int,
        actor: str,
        at: datetime,
    ) -> Outcome[ch.ChannelSettings]:
        """Set a channel up. ``credentials`` None keeps the ones set before; given, they replace them."""
        current = await self.settings.state(tenant, channel) if channel in ch.CHANNELS else ch.ChannelSettings()
        if credentials is None:
            sealed, epoch, names = current.sealed_credentials, current.key_epoch, list(current.credential_names)
        else:
            sealed, epoch = self.seal(tenant, dict(credentials))
            names = sorted(credentials)
        command = ch.ConfigureChannel(
            channel=channel,
            config_id=config_id,
            sender=sender,
            sealed_credentials=sealed,
            key_epoch=epoch,
            credential_names=names,
            rate_per_minute=rate_per_minute,
            configured_by=actor,
            at=at,
        )
        return await self.runner.handle(ch.CHANNEL, channel, command, CommandContext(tenant=tenant, actor=actor))

    async def disable(self, tenant: str, channel: str, *, actor: str, at: datetime) -> Outcome[ch.ChannelSettings]:
        command = ch.DisableChannel(disabled_by=actor, at=at)
        return await self.runner.handle(ch.CHANNEL, channel, command, CommandContext(tenant=tenant, actor=actor))

    async def get(self, tenant: str, channel: str) -> ch.ChannelSettings:
        if channel not in ch.CHANNELS:
            raise NotFoundError(f"no channel {channel}")
        return await self.settings.state(tenant, channel)

    async def enabled(self, tenant: str, channel: str) -> ch.ChannelSettings:
        """The channel's settings, or ``NotFoundError`` when the tenant has not set it up (or turned it off)."""
        settings = await self.get(tenant, channel)
        if not settings.configured or not settings.enabled:
            raise NotFoundError(f"channel {channel} is not set up for this tenant")
        return settings

    def seal(self, tenant: str, credentials: dict[str, str]) -> tuple[str, int]:
        if not credentials:
            return "", 0
        epoch, cipher = self.keys.current(tenant, CREDENTIALS_SUBJECT)
        return base64.b64encode(cipher.encrypt(_JSON.encode(credentials))).decode(), epoch

    def credentials(self, tenant: str, settings: ch.ChannelSettings) -> dict[str, str]:
        """The channel's credentials in clear (kept in memory only)."""
        if not settings.sealed_credentials:
            return {}
        key = (tenant, settings.channel, settings.sealed_credentials)
        found = self._opened.get(key)
        if found is None:
            cipher = self.keys.get(tenant, CREDENTIALS_SUBJECT, settings.key_epoch)
            if cipher is None:
                raise IllegalStateError(f"the credentials of channel {settings.channel} were destroyed: set them again")
            found = _CREDENTIALS.decode(cipher.decrypt(base64.b64decode(settings.sealed_credentials)))
            self._opened[key] = found
        return found


# Inbound ------------------------------------------------------------------------------------


def inbound_command_id(channel: str, message_id: str) -> str:
    return f"in-{channel}-{message_id}"


def opened_conversation_id(tenant: str, contact: str, message_id: str) -> str:
    """The conversation a message opens: derived from its cause, so a redelivery opens the same one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"parley:{tenant}:{contact}:{message_id}"))


class Inbox:
    def __init__(self, runner: CommandRunner, catalog: ConfigCatalog, book: ChannelBook) -> None:
        self.runner = runner
        self.catalog = catalog
        self.book = book
        self.contacts = runner.repository(ch.CONTACT)
        self.conversations = runner.repository(c.DECIDER)

    async def contact(self, tenant: str, channel: str, address: str, thread: str | None = None) -> ch.Contact:
        loaded = await self.contacts.load(tenant, ch.contact_id(channel, address, thread))
        return loaded.state

    async def receive(self, tenant: str, message: Inbound, *, config_id: str | None = None) -> Received:
        """The message on its contact's conversation (a new one if needed), once however often it comes."""
        if not message.text.strip() and not message.attachments:
            raise ValidationError("an empty message", fields={"text": "required"})
        contact_id = ch.contact_id(message.channel, message.address, message.thread)
        command_id = inbound_command_id(message.channel, message.message_id)
        for _ in range(3):
            contact = (await self.contacts.load(tenant, contact_id, trust_cache=True)).state
            current = contact.conversation_id
            if current is not None:
                conversation = (await self.conversations.load(tenant, current, trust_cache=True)).state
                if conversation.started and conversation.status != "closed":
                    try:
                        outcome = await self._continue(tenant, current, message, command_id)
                    except IllegalStateError:
                        continue  # closed meanwhile (the copy was stale): open another
                    return Received(
                        conversation_id=current,
                        message_id=message.message_id,
                        position=outcome.position,
                        started=False,
                        duplicate=outcome.duplicate or not outcome.events,
                    )
                if not conversation.started:  # opened, then the start was lost (a crash): start it now
                    return await self._start(tenant, current, contact_id, message, config_id)
            new_id = opened_conversation_id(tenant, contact_id, message.message_id)
            open_it = ch.OpenContactConversation(
                channel=message.channel, conversation_id=new_id, replacing=current, at=message.at
            )
            try:
                await self.runner.handle(
                    ch.CONTACT,
                    contact_id,
                    open_it,
                    CommandContext(tenant=tenant, actor=ACTOR, command_id=f"open-{new_id}"),
                )
            except IllegalStateError:
                self.contacts.forget(self.contacts.stream(tenant, contact_id))
                continue  # another message opened one first: go to it
            return await self._start(tenant, new_id, contact_id, message, config_id)
        raise IllegalStateError("the contact's conversation keeps changing; try again")

    async def _continue(self, tenant: str, conversation_id: str, message: Inbound, command_id: str) -> Outcome[Any]:
        command = c.ReceiveUserMessage(
            message_id=message.message_id, content=message.text, attachments=message.attachments, at=message.at
        )
        ctx = CommandContext(tenant=tenant, actor=f"{ACTOR}:{message.channel}", command_id=command_id)
        return await self.runner.handle(c.DECIDER, conversation_id, command, ctx)

    async def _start(
        self, tenant: str, conversation_id: str, contact_id: str, message: Inbound, config_id: str | None
    ) -> Received:
        if config_id is None:
            settings = await self.book.get(tenant, message.channel)
            config_id = settings.config_id if settings.configured else DEFAULT_CONFIG
        context = {"channel_address": message.address, **message.context}
        if message.name:
            context["name"] = message.name
        if message.thread:
            context["email_thread"] = message.thread
        command = await start_conversation(
            self.catalog,
            tenant,
            conversation_id=conversation_id,
            config_id=config_id,
            channel=message.channel,
            user_id=message.user_id or contact_id,
            context=context,
            initial_message=message.text,
            at=message.at,
        )
        command = msgspec.structs.replace(command, message_id=message.message_id)
        ctx = CommandContext(
            tenant=tenant,
            actor=f"{ACTOR}:{message.channel}",
            command_id=inbound_command_id(message.channel, message.message_id),
            retry_possible=True,
        )
        try:
            outcome = await self.runner.handle(c.DECIDER, conversation_id, command, ctx)
        except IllegalStateError:  # started by a racing delivery of another message: add this one to it
            outcome = await self._continue(tenant, conversation_id, message, ctx.command_id or "")
            return Received(
                conversation_id=conversation_id,
                message_id=message.message_id,
                position=outcome.position,
                started=False,
                duplicate=outcome.duplicate or not outcome.events,
            )
        return Received(
            conversation_id=conversation_id,
            message_id=message.message_id,
            position=outcome.position,
            started=not outcome.duplicate,
            duplicate=outcome.duplicate,
        )

    async def opt_out(self, tenant: str, channel: str, address: str, keyword: str, at: datetime) -> bool:
        """The address opts out of the channel (SMS ``STOP``); True when it was opted in until now."""
        return await self._contact(tenant, channel, address, ch.OptOut(channel=channel, keyword=keyword, at=at))

    async def opt_in(self, tenant: str, channel: str, address: str, keyword: str, at: datetime) -> bool:
        return await self._contact(tenant, channel, address, ch.OptIn(channel=channel, keyword=keyword, at=at))

    async def _contact(self, tenant: str, channel: str, address: str, command: Command) -> bool:
        ctx = CommandContext(tenant=tenant, actor=f"{ACTOR}:{channel}")
        outcome = await self.runner.handle(ch.CONTACT, ch.contact_id(channel, address), command, ctx)
        return bool(outcome.events)


# Deliveries ---------------------------------------------------------------------------------


class Deliveries:
    """The steps of a reply's delivery, each an idempotent command on its ``delivery`` aggregate."""

    ACTOR = "channel:outbox"

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner
        self.repository = runner.repository(ch.DELIVERY)

    async def load(self, tenant: str, delivery_id: str, *, trust_cache: bool = False) -> ch.Delivery:
        """The delivery. ``trust_cache``: this process's copy as it is (its next command's append checks
        the version, and a conflict drops the copy)."""
        return (await self.repository.load(tenant, delivery_id, trust_cache=trust_cache)).state

    async def request(
        self, tenant: str, conversation_id: str, message_id: str, channel: str, author: str, at: datetime
    ) -> str:
        delivery_id = ch.delivery_id(message_id)
        command = ch.RequestDelivery(
            conversation_id=conversation_id, message_id=message_id, channel=channel, author=author, at=at
        )
        # A new aggregate as a rule: no read before the append (one already there makes it a duplicate).
        await self._run(tenant, delivery_id, command, f"request-{delivery_id}", new=True)
        return delivery_id

    async def attempt(self, tenant: str, delivery_id: str, attempt: int, reference: str, at: datetime) -> bool:
        """Claim attempt ``attempt``: False when another sender recorded it first (it sends, not us)."""
        command = ch.RecordAttempt(attempt=attempt, reference=reference, at=at)
        try:
            outcome = await self._run(tenant, delivery_id, command, f"attempt-{delivery_id}-{attempt}", first=True)
        except IllegalStateError:
            return False
        return not outcome.duplicate and bool(outcome.events)

    async def sent(
        self,
        tenant: str,
        delivery_id: str,
        attempt: int,
        provider_message_id: str,
        *,
        kind: str = "text",
        recovered: bool = False,
        at: datetime,
    ) -> None:
        command = ch.RecordSent(
            attempt=attempt, provider_message_id=provider_message_id, kind=kind, recovered=recovered, at=at
        )
        await self._run(tenant, delivery_id, command, f"sent-{delivery_id}-{attempt}")

    async def failed(
        self,
        tenant: str,
        delivery_id: str,
        attempt: int,
        reason: str,
        *,
        retryable: bool,
        retry_at: datetime | None,
        at: datetime,
    ) -> ch.Delivery:
        command = ch.RecordFailure(attempt=attempt, reason=reason, retryable=retryable, retry_at=retry_at, at=at)
        outcome = await self._run(tenant, delivery_id, command, f"failed-{delivery_id}-{attempt}")
        state: ch.Delivery = outcome.state
        return state

    async def skip(self, tenant: str, delivery_id: str, reason: str, at: datetime) -> None:
        await self._run(tenant, delivery_id, ch.SkipDelivery(reason=reason, at=at), f"skip-{delivery_id}")

    async def provider_status(
        self, tenant: str, delivery_id: str, status: str, provider_message_id: str, reason: str, at: datetime
    ) -> Outcome[ch.Delivery]:
        if status not in ("sent", "delivered", "read", "failed"):
            raise ValidationError(f"unknown delivery status {status}", fields={"status": status})
        command = ch.RecordProviderStatus(
            status=status,  # type: ignore[arg-type]
            provider_message_id=provider_message_id,
            reason=reason,
            at=at,
        )
        ctx = CommandContext(tenant=tenant, actor="channel:status")
        return await self.runner.handle(ch.DELIVERY, delivery_id, command, ctx)

    async def _run(
        self,
        tenant: str,
        delivery_id: str,
        command: Command,
        command_id: str,
        *,
        new: bool = False,
        first: bool = False,
    ) -> Outcome[ch.Delivery]:
        """``new``: the aggregate is expected not to exist; ``first``: the command id cannot have been used
        yet (the decider refuses a second attempt n anyway). Either way no look-up of its outcome first."""
        ctx = CommandContext(tenant=tenant, actor=self.ACTOR, command_id=command_id, retry_possible=not (new or first))
        return await self.runner.handle(ch.DELIVERY, delivery_id, command, ctx, new=new)
