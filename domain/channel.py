"""Channels: where a tenant's customers write from, and the delivery of replies back to them.

Three aggregates, each a pure decider:

* ``channel`` (one per tenant and channel, its id the channel's name): the tenant's settings for a
  channel (the bot that answers, the sender identity, credentials sealed by the caller: the
  decider sees only their names and the ciphertext).
* ``contact`` (one per customer address on a channel, and per email thread): the conversation the
  customer's messages go to, and whether they opted out (SMS ``STOP``). A new conversation is
  opened when there is none or the last one closed.
* ``delivery`` (one per reply to deliver): requested, then attempts each recorded *before* the
  provider is called, then sent, delivered, read, or failed; a delivery that fails for good is
  dead-lettered. An attempt with no outcome is *in doubt*: whoever resumes it checks with the
  provider before attempting again (``in_doubt``), so a crash between the call and its outcome
  does not send twice.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

import msgspec

from domain.errors import IllegalStateError, NotFoundError, ValidationError
from domain.messages import Command, Decider, Event

# The channels with an adapter. "api" (or anything else) is a conversation started over the HTTP API:
# its replies go back in the API's responses and events, not through a channel.
CHANNELS: tuple[str, ...] = ("webchat", "whatsapp", "sms", "email", "tiktok", "linkedin")
# Channels whose replies the outbox delivers through a provider (web chat pushes to its sockets).
DELIVERED: tuple[str, ...] = ("whatsapp", "sms", "email", "tiktok", "linkedin")
# The credentials each channel needs (values sealed by the caller, never seen here).
CREDENTIALS: dict[str, tuple[str, ...]] = {
    "webchat": (),
    "whatsapp": ("access_token", "app_secret", "verify_token"),
    "sms": ("account_sid", "auth_token"),
    "email": (),
    "tiktok": ("client_secret", "access_token"),
    "linkedin": ("client_secret", "access_token"),
}
MAX_ATTEMPTS = 5

CHANNEL_TYPE = "channel"
CONTACT_TYPE = "contact"
DELIVERY_TYPE = "delivery"


def contact_id(channel: str, address: str, thread: str | None = None) -> str:
    """A contact's aggregate id: its address is personal data, so the id is a digest of it."""
    digest = hashlib.sha256(f"{channel}\x00{address}\x00{thread or ''}".encode()).hexdigest()[:40]
    return f"{channel}-{digest}"


def delivery_id(message_id: str) -> str:
    """The delivery of a reply: one per reply message."""
    return "d-" + hashlib.sha256(message_id.encode()).hexdigest()[:40]


# Channel settings ---------------------------------------------------------------------------


class ChannelConfigured(Event, frozen=True, kw_only=True):
    channel: str
    config_id: str
    # Who the replies come from: a WhatsApp phone number id, a Twilio number, an email address, a page id.
    sender: str = ""
    enabled: bool = True
    # The credentials, sealed (base64 AES-GCM under the tenant's channel key, ``key_epoch``); their names.
    sealed_credentials: str = ""
    key_epoch: int = 0
    credential_names: list[str] = []
    # Outbound messages a minute to this channel's provider (0: the platform's default for it).
    rate_per_minute: int = 0
    configured_by: str = ""
    at: datetime

    time_field = "at"


class ChannelDisabled(Event, frozen=True, kw_only=True):
    channel: str
    disabled_by: str = ""
    at: datetime

    time_field = "at"


class ConfigureChannel(Command, frozen=True, kw_only=True):
    channel: str
    config_id: str
    sender: str = ""
    sealed_credentials: str = ""
    key_epoch: int = 0
    credential_names: list[str] = []
    rate_per_minute: int = 0
    configured_by: str = ""
    at: datetime


class DisableChannel(Command, frozen=True, kw_only=True):
    disabled_by: str = ""
    at: datetime


class ChannelSettings(msgspec.Struct, frozen=True):
    configured: bool = False
    channel: str = ""
    enabled: bool = False
    config_id: str = ""
    sender: str = ""
    sealed_credentials: str = ""
    key_epoch: int = 0
    credential_names: tuple[str, ...] = ()
    rate_per_minute: int = 0
    updated_at: datetime | None = None


def decide_channel(command: Command, state: ChannelSettings) -> list[Event]:
    match command:
        case ConfigureChannel():
            fields: dict[str, str] = {}
            if command.channel not in CHANNELS:
                fields["channel"] = f"one of {', '.join(CHANNELS)}"
            missing = [n for n in CREDENTIALS.get(command.channel, ()) if n not in command.credential_names]
            if missing:
                fields["credentials"] = f"needs {', '.join(missing)}"
            if not command.config_id:
                fields["config_id"] = "required"
            if command.rate_per_minute < 0:
                fields["rate_per_minute"] = "must not be negative"
            if command.channel in ("sms", "email", "whatsapp") and not command.sender:
                fields["sender"] = "required: the number, phone number id or address replies come from"
            if fields:
                raise ValidationError(f"invalid settings for channel {command.channel}", fields=fields)
            return [
                ChannelConfigured(
                    channel=command.channel,
                    config_id=command.config_id,
                    sender=command.sender,
                    sealed_credentials=command.sealed_credentials,
                    key_epoch=command.key_epoch,
                    credential_names=sorted(command.credential_names),
                    rate_per_minute=command.rate_per_minute,
                    configured_by=command.configured_by,
                    at=command.at,
                )
            ]
        case DisableChannel():
            if not state.configured:
                raise NotFoundError("channel not configured")
            if not state.enabled:
                return []
            return [ChannelDisabled(channel=state.channel, disabled_by=command.disabled_by, at=command.at)]
    raise ValidationError(f"{type(command).__name__} is not a channel command")


def evolve_channel(state: ChannelSettings, event: Event) -> ChannelSettings:
    match event:
        case ChannelConfigured():
            return ChannelSettings(
                configured=True,
                channel=event.channel,
                enabled=event.enabled,
                config_id=event.config_id,
                sender=event.sender,
                sealed_credentials=event.sealed_credentials,
                key_epoch=event.key_epoch,
                credential_names=tuple(event.credential_names),
                rate_per_minute=event.rate_per_minute,
                updated_at=event.at,
            )
        case ChannelDisabled():
            return msgspec.structs.replace(state, enabled=False, updated_at=event.at)
    return state


# Contacts -----------------------------------------------------------------------------------


class ContactConversationOpened(Event, frozen=True, kw_only=True):
    channel: str
    conversation_id: str
    opened_at: datetime

    time_field = "opened_at"


class ContactOptedOut(Event, frozen=True, kw_only=True):
    channel: str
    keyword: str
    at: datetime

    time_field = "at"


class ContactOptedIn(Event, frozen=True, kw_only=True):
    channel: str
    keyword: str
    at: datetime

    time_field = "at"


class OpenContactConversation(Command, frozen=True, kw_only=True):
    channel: str
    conversation_id: str
    # The conversation the caller found current (None: none): another is opened only in its place.
    replacing: str | None = None
    at: datetime


class OptOut(Command, frozen=True, kw_only=True):
    channel: str
    keyword: str
    at: datetime


class OptIn(Command, frozen=True, kw_only=True):
    channel: str
    keyword: str
    at: datetime


class Contact(msgspec.Struct, frozen=True):
    channel: str = ""
    conversation_id: str | None = None
    conversations: int = 0
    opted_out: bool = False


def decide_contact(command: Command, state: Contact) -> list[Event]:
    match command:
        case OpenContactConversation():
            if state.conversation_id == command.conversation_id:
                return []  # opened already (a retry)
            if state.conversation_id != command.replacing:
                raise IllegalStateError("another conversation was opened for this contact meanwhile")
            return [
                ContactConversationOpened(
                    channel=command.channel, conversation_id=command.conversation_id, opened_at=command.at
                )
            ]
        case OptOut():
            return (
                []
                if state.opted_out
                else [ContactOptedOut(channel=command.channel, keyword=command.keyword, at=command.at)]
            )
        case OptIn():
            return (
                [ContactOptedIn(channel=command.channel, keyword=command.keyword, at=command.at)]
                if state.opted_out
                else []
            )
    raise ValidationError(f"{type(command).__name__} is not a contact command")


def evolve_contact(state: Contact, event: Event) -> Contact:
    replace = msgspec.structs.replace
    match event:
        case ContactConversationOpened():
            return replace(
                state,
                channel=event.channel,
                conversation_id=event.conversation_id,
                conversations=state.conversations + 1,
            )
        case ContactOptedOut():
            return replace(state, channel=event.channel, opted_out=True)
        case ContactOptedIn():
            return replace(state, channel=event.channel, opted_out=False)
    return state


# Deliveries ---------------------------------------------------------------------------------

DeliveryStatus = Literal[
    "none", "requested", "attempting", "retrying", "sent", "delivered", "read", "dead_lettered", "skipped", "failed"
]
# Where a delivery stands after the provider took it: each step only forward.
_PROGRESS = {"sent": 1, "delivered": 2, "read": 3}
FINAL: frozenset[str] = frozenset({"sent", "delivered", "read", "dead_lettered", "skipped", "failed"})


class DeliveryRequested(Event, frozen=True, kw_only=True):
    conversation_id: str
    message_id: str
    channel: str
    author: str = "ai"
    requested_at: datetime

    time_field = "requested_at"


class DeliveryAttempted(Event, frozen=True, kw_only=True):
    attempt: int
    # What the provider may be asked about this attempt (an idempotency key it honours, a reference).
    reference: str
    attempted_at: datetime

    time_field = "attempted_at"


class DeliverySent(Event, frozen=True, kw_only=True):
    attempt: int
    provider_message_id: str
    # How it was sent: "text", or "template" (WhatsApp outside the 24-hour window).
    kind: str = "text"
    # True when the outcome was found by asking the provider about an attempt in doubt.
    recovered: bool = False
    sent_at: datetime

    time_field = "sent_at"


class DeliveryStatusChanged(Event, frozen=True, kw_only=True):
    """The provider reported the message delivered or read (status webhooks)."""

    status: Literal["delivered", "read"]
    provider_message_id: str = ""
    at: datetime

    time_field = "at"


class DeliveryFailed(Event, frozen=True, kw_only=True):
    """An attempt failed (``final``: no more attempts; a dead letter follows unless reported after sending)."""

    attempt: int
    reason: str
    retryable: bool
    retry_at: datetime | None = None
    failed_at: datetime

    time_field = "failed_at"


class DeliveryDeadLettered(Event, frozen=True, kw_only=True):
    conversation_id: str
    message_id: str
    channel: str
    reason: str
    attempts: int
    at: datetime

    time_field = "at"


class DeliverySkipped(Event, frozen=True, kw_only=True):
    """Nothing is sent: the customer opted out, or the channel is off."""

    reason: str
    at: datetime

    time_field = "at"


class RequestDelivery(Command, frozen=True, kw_only=True):
    conversation_id: str
    message_id: str
    channel: str
    author: str = "ai"
    at: datetime


class RecordAttempt(Command, frozen=True, kw_only=True):
    attempt: int
    reference: str
    at: datetime


class RecordSent(Command, frozen=True, kw_only=True):
    attempt: int
    provider_message_id: str
    kind: str = "text"
    recovered: bool = False
    at: datetime


class RecordProviderStatus(Command, frozen=True, kw_only=True):
    status: Literal["sent", "delivered", "read", "failed"]
    provider_message_id: str = ""
    reason: str = ""
    at: datetime


class RecordFailure(Command, frozen=True, kw_only=True):
    attempt: int
    reason: str
    retryable: bool
    retry_at: datetime | None = None
    at: datetime


class SkipDelivery(Command, frozen=True, kw_only=True):
    reason: str
    at: datetime


class Delivery(msgspec.Struct, frozen=True):
    status: DeliveryStatus = "none"
    conversation_id: str = ""
    message_id: str = ""
    channel: str = ""
    attempts: int = 0
    # The last attempt's reference and when it was made; whether it has an outcome yet.
    reference: str = ""
    attempted_at: datetime | None = None
    outcome_known: bool = True
    provider_message_id: str = ""
    retry_at: datetime | None = None
    last_error: str = ""
    kind: str = ""

    @property
    def in_doubt(self) -> bool:
        """An attempt was recorded and nothing came of it yet: it may or may not have been sent."""
        return self.status == "attempting" and not self.outcome_known

    @property
    def final(self) -> bool:
        return self.status in FINAL


def decide_delivery(command: Command, state: Delivery) -> list[Event]:
    match command:
        case RequestDelivery():
            if state.status != "none":
                return []
            return [
                DeliveryRequested(
                    conversation_id=command.conversation_id,
                    message_id=command.message_id,
                    channel=command.channel,
                    author=command.author,
                    requested_at=command.at,
                )
            ]
    if state.status == "none":
        raise NotFoundError("delivery not found")
    match command:
        case RecordAttempt():
            if state.final:
                raise IllegalStateError(f"the delivery is {state.status}")
            if command.attempt != state.attempts + 1:
                raise IllegalStateError(f"attempt {command.attempt} is not the next one ({state.attempts + 1})")
            return [DeliveryAttempted(attempt=command.attempt, reference=command.reference, attempted_at=command.at)]
        case RecordSent():
            if state.status in ("sent", "delivered", "read"):
                return []
            if state.status in ("dead_lettered", "skipped", "failed") and not command.recovered:
                raise IllegalStateError(f"the delivery is {state.status}")
            return [
                DeliverySent(
                    attempt=command.attempt,
                    provider_message_id=command.provider_message_id,
                    kind=command.kind,
                    recovered=command.recovered,
                    sent_at=command.at,
                )
            ]
        case RecordProviderStatus():
            return _provider_status(command, state)
        case RecordFailure():
            if state.final or command.attempt != state.attempts or state.outcome_known:
                return []  # an outcome for an attempt that has one already (a retry of this command)
            failed = DeliveryFailed(
                attempt=command.attempt,
                reason=command.reason,
                retryable=command.retryable and command.attempt < MAX_ATTEMPTS,
                retry_at=command.retry_at if command.retryable and command.attempt < MAX_ATTEMPTS else None,
                failed_at=command.at,
            )
            if failed.retryable:
                return [failed]
            return [failed, _dead_letter(state, command.reason, command.attempt, command.at)]
        case SkipDelivery():
            if state.final:
                return []
            return [DeliverySkipped(reason=command.reason, at=command.at)]
    raise ValidationError(f"{type(command).__name__} is not a delivery command")


def _provider_status(command: RecordProviderStatus, state: Delivery) -> list[Event]:
    if command.status == "sent":
        if state.status in ("sent", "delivered", "read"):
            return []
        return [
            DeliverySent(
                attempt=state.attempts,
                provider_message_id=command.provider_message_id or state.provider_message_id,
                recovered=True,
                sent_at=command.at,
            )
        ]
    if command.status == "failed":
        # The provider took it and then could not deliver it (an undeliverable number): no retry.
        if state.status in ("dead_lettered", "failed", "skipped"):
            return []
        reason = command.reason or "the provider could not deliver it"
        return [
            DeliveryFailed(attempt=state.attempts, reason=reason, retryable=False, failed_at=command.at),
            _dead_letter(state, reason, state.attempts, command.at),
        ]
    if _PROGRESS.get(state.status, 0) >= _PROGRESS[command.status] or state.status in ("dead_lettered", "skipped"):
        return []  # statuses arrive out of order: never backwards
    events: list[Event] = []
    if state.status not in ("sent", "delivered", "read"):  # the status came before our record of the send
        events.append(
            DeliverySent(
                attempt=state.attempts,
                provider_message_id=command.provider_message_id,
                recovered=True,
                sent_at=command.at,
            )
        )
    events.append(
        DeliveryStatusChanged(status=command.status, provider_message_id=command.provider_message_id, at=command.at)
    )
    return events


def _dead_letter(state: Delivery, reason: str, attempts: int, at: datetime) -> DeliveryDeadLettered:
    return DeliveryDeadLettered(
        conversation_id=state.conversation_id,
        message_id=state.message_id,
        channel=state.channel,
        reason=reason,
        attempts=attempts,
        at=at,
    )


def evolve_delivery(state: Delivery, event: Event) -> Delivery:
    replace = msgspec.structs.replace
    match event:
        case DeliveryRequested():
            return replace(
                state,
                status="requested",
                conversation_id=event.conversation_id,
                message_id=event.message_id,
                channel=event.channel,
            )
        case DeliveryAttempted():
            return replace(
                state,
                status="attempting",
                attempts=event.attempt,
                reference=event.reference,
                attempted_at=event.attempted_at,
                outcome_known=False,
                retry_at=None,
            )
        case DeliverySent():
            return replace(
                state,
                status="sent",
                provider_message_id=event.provider_message_id,
                outcome_known=True,
                kind=event.kind,
            )
        case DeliveryStatusChanged():
            return replace(
                state,
                status=event.status,
                provider_message_id=event.provider_message_id or state.provider_message_id,
                outcome_known=True,
            )
        case DeliveryFailed():
            return replace(
                state,
                status="retrying" if event.retryable else "failed",
                outcome_known=True,
                last_error=event.reason,
                retry_at=event.retry_at,
            )
        case DeliveryDeadLettered():
            return replace(state, status="dead_lettered", last_error=event.reason)
        case DeliverySkipped():
            return replace(state, status="skipped", last_error=event.reason, outcome_known=True)
    return state


CHANNEL = Decider(
    type_name=CHANNEL_TYPE,
    state_type=ChannelSettings,
    initial=ChannelSettings,
    evolve=evolve_channel,
    decide=decide_channel,
)
CONTACT = Decider(
    type_name=CONTACT_TYPE, state_type=Contact, initial=Contact, evolve=evolve_contact, decide=decide_contact
)
DELIVERY = Decider(
    type_name=DELIVERY_TYPE, state_type=Delivery, initial=Delivery, evolve=evolve_delivery, decide=decide_delivery
)
DECIDERS = (CHANNEL, CONTACT, DELIVERY)
