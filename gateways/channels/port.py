"""The channel port: what every channel adapter does, so adding a channel is one adapter.

Inbound, an adapter checks a webhook's signature (``verify``: ``Refused`` with 401 when none is
given, 403 when it is wrong) and normalizes its body (``parse``) into customers' messages
(``commands.channel.Inbound``), delivery statuses (``StatusReport``) and keywords the carrier
requires us to honour (``Keyword``: STOP, START, HELP). Outbound, ``send`` delivers one reply
through the provider's API and ``check`` asks the provider whether an attempt in doubt (recorded,
no outcome: the sender died mid-call) went out, before it is attempted again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal, Protocol

import msgspec

from commands.channel import Inbound
from domain.channel import ChannelSettings


class Refused(Exception):
    """A webhook that does not prove it comes from the provider: 401 (no proof) or 403 (a wrong one)."""

    def __init__(self, status: Literal[401, 403], reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ProviderError(Exception):
    """The provider did not take the message. ``retryable``: worth another attempt (an outage, a 429).
    ``ambiguous``: the request went out and its answer was lost (a timeout, a dropped connection):
    the provider may have taken it, so it is asked before another attempt."""

    def __init__(
        self, reason: str, *, retryable: bool, retry_after: float | None = None, ambiguous: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.ambiguous = ambiguous


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's request as it reached us: ``url`` as the provider addressed it (its signature covers it)."""

    method: str
    url: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    form: Mapping[str, str] = {}


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """The provider's word on a message we sent: ``delivery_id`` when it carries ours back."""

    provider_message_id: str
    status: Literal["sent", "delivered", "read", "failed"]
    delivery_id: str | None = None
    reason: str = ""
    at: datetime


class Keyword(msgspec.Struct, frozen=True, kw_only=True):
    """A carrier keyword from a customer (SMS): ``stop``, ``start`` or ``help``."""

    action: Literal["stop", "start", "help"]
    keyword: str
    address: str
    message_id: str
    at: datetime


Parsed = Inbound | StatusReport | Keyword


class Recipient(msgspec.Struct, frozen=True, kw_only=True):
    """Whom a reply goes to, from the conversation's own events."""

    address: str
    name: str | None = None
    last_inbound_at: datetime | None = None  # the customer's last message (WhatsApp's 24-hour window)
    last_inbound_ref: str | None = None  # its channel message id (an email's Message-ID)
    thread: str | None = None  # an email thread's first Message-ID
    subject: str | None = None


class Outgoing(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: str
    conversation_id: str
    text: str
    attempt: int
    reference: str  # this attempt's reference: what the provider is asked about it later
    attempted_at: datetime


class Sent(msgspec.Struct, frozen=True, kw_only=True):
    provider_message_id: str
    kind: str = "text"


class Provider(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant's channel as an adapter needs it: settings and the credentials opened."""

    tenant: str
    settings: ChannelSettings
    credentials: Mapping[str, str]
    # Where the provider is (tests and the demo point it at a local server speaking its protocol).
    base_url: str
    # Our public base URL, for status callbacks the provider should call.
    public_url: str = ""


class ChannelAdapter(Protocol):
    name: str
    # Outbound messages a minute when the tenant set none (seed 003: TikTok 60, LinkedIn 100).
    default_rate_per_minute: int

    def verify(self, webhook: Webhook, provider: Provider) -> None:
        """Raise ``Refused`` unless the webhook is signed by the provider with the tenant's secret."""

    def parse(self, webhook: Webhook, provider: Provider) -> list[Parsed]: ...

    async def send(self, provider: Provider, recipient: Recipient, message: Outgoing) -> Sent: ...

    async def check(self, provider: Provider, recipient: Recipient, message: Outgoing) -> Sent | None:
        """Whether an attempt in doubt reached the provider (None: it did not, or cannot be known yet)."""

    async def close(self) -> None: ...
