"""Email: in through an SMTP server of ours (aiosmtpd), out through the tenant's SMTP relay (aiosmtplib).

Threads: a message's thread is the first Message-ID of its ``References`` (else its
``In-Reply-To``, else its own Message-ID), so every message of a thread, ours included, lands on
one contact and conversation. What a customer wrote is the new text only: the quoted history
below it (``> ...``, "On ... wrote:") is stripped (mail-parser-reply). Replies carry
``In-Reply-To`` (the customer's last message) and ``References`` (the thread), ``Re:`` and the
thread's subject, and a Message-ID derived from the delivery: a second attempt of the same delivery
is the same message to the receiving side.

The inbound server finds the tenant by the recipient address (the sender the tenant set for its
email channel, through ``Mailboxes``) and hands each message to the same inbox as every channel.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session
from mailparser_reply import EmailReplyParser

from commands.channel import Inbound
from gateways.channels.port import Outgoing, Parsed, Provider, ProviderError, Recipient, Refused, Sent, Webhook

log = structlog.get_logger(__name__)

_IDS = re.compile(r"<[^<>\s]+>")
_PARSER = EmailReplyParser(languages=["en", "de", "fr", "es"])


def message_ids(header: str | None) -> list[str]:
    return _IDS.findall(header or "")


def new_text(body: str) -> str:
    """What the customer wrote in this message, without the quoted history."""
    text = _PARSER.parse_reply(text=body) or ""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith(">")]
    return "\n".join(lines).strip() or body.strip()


def parse_email(raw: bytes, *, received_at: datetime | None = None) -> Inbound | None:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    sender = email.utils.parseaddr(str(msg.get("From", "")))
    address = sender[1].lower()
    message_id = (message_ids(str(msg.get("Message-ID", ""))) or [""])[0]
    if not address or not message_id:
        return None
    references = message_ids(str(msg.get("References", "")))
    in_reply_to = message_ids(str(msg.get("In-Reply-To", "")))
    thread = (references or in_reply_to or [message_id])[0]
    part = msg.get_body(preferencelist=("plain", "html"))
    body = part.get_content() if part is not None else ""
    if part is not None and part.get_content_type() == "text/html":
        body = re.sub(r"<[^>]+>", " ", body)
    attachments = [a.get_filename() or "attachment" for a in msg.iter_attachments()]
    subject = str(msg.get("Subject", "")).strip()
    text = new_text(str(body))
    return Inbound(
        channel="email",
        address=address,
        message_id=message_id,
        text=text or subject or "[empty email]",
        attachments=[f"email-attachment:{name}" for name in attachments],
        thread=thread,
        name=sender[0] or None,
        context={"email_subject": subject[:300]},
        at=received_at or datetime.now(UTC),
    )


def reply_message(provider: Provider, recipient: Recipient, message: Outgoing) -> EmailMessage:
    out = EmailMessage()
    sender = provider.settings.sender
    domain = sender.rpartition("@")[2] or "parley.local"
    out["From"] = email.utils.formataddr((provider.credentials.get("from_name", "Support"), sender))
    out["To"] = recipient.address
    subject = recipient.subject or "Your message"
    out["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    out["Message-ID"] = f"<{message.delivery_id}@{domain}>"  # the same for every attempt of this delivery
    out["Date"] = email.utils.format_datetime(message.attempted_at)
    parent = recipient.last_inbound_ref or recipient.thread
    if parent:
        out["In-Reply-To"] = parent
        references = [recipient.thread] if recipient.thread and recipient.thread != parent else []
        out["References"] = " ".join([*references, parent])
    out["Auto-Submitted"] = "auto-replied"
    out.set_content(message.text)
    return out


class Email:
    name = "email"
    default_rate_per_minute = 600

    def verify(self, webhook: Webhook, provider: Provider) -> None:
        raise Refused(403, "email arrives over SMTP, not a webhook")

    def parse(self, webhook: Webhook, provider: Provider) -> list[Parsed]:
        return []

    async def send(self, provider: Provider, recipient: Recipient, message: Outgoing) -> Sent:
        relay = urlsplit(provider.base_url or "smtp://127.0.0.1:25")
        out = reply_message(provider, recipient, message)
        credentials = provider.credentials
        try:
            await aiosmtplib.send(
                out,
                hostname=relay.hostname or "127.0.0.1",
                port=relay.port or 25,
                username=credentials.get("smtp_username") or None,
                password=credentials.get("smtp_password") or None,
                start_tls=relay.scheme == "smtp+starttls",
                use_tls=relay.scheme == "smtps",
                timeout=10,
            )
        except aiosmtplib.SMTPResponseException as e:
            raise ProviderError(f"SMTP {e.code}: {e.message}", retryable=e.code < 500) from None
        except (aiosmtplib.SMTPConnectError, ConnectionRefusedError) as e:
            raise ProviderError(f"SMTP relay unreachable: {e}", retryable=True) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:  # the same Message-ID goes again
            raise ProviderError(f"SMTP relay failed: {type(e).__name__}: {e}", retryable=True) from None
        return Sent(provider_message_id=str(out["Message-ID"]))

    async def check(self, provider: Provider, recipient: Recipient, message: Outgoing) -> Sent | None:
        # SMTP cannot be asked what it relayed; a second attempt carries the same Message-ID.
        return None

    async def close(self) -> None:
        return None


# The inbound server ---------------------------------------------------------------------------

# (recipient address) -> the tenant whose email channel it is, or None
Mailboxes = Callable[[str], Awaitable[str | None]]
Deliver = Callable[[str, Inbound], Awaitable[Any]]


class InboundHandler:
    """aiosmtpd's handler: accepts mail for the tenants' addresses and hands it to the inbox."""

    def __init__(self, mailboxes: Mailboxes, deliver: Deliver, *, max_bytes: int = 10_000_000) -> None:
        self.mailboxes = mailboxes
        self.deliver = deliver
        self.max_bytes = max_bytes

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if await self.mailboxes(address.lower()) is None:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or (
            envelope.content if isinstance(envelope.content, bytes) else str(envelope.content or "").encode()
        )
        if len(raw) > self.max_bytes:
            return "552 5.3.4 message too big"
        message = parse_email(raw)
        if message is None:
            return "550 5.6.0 a message needs From and Message-ID"
        for rcpt in envelope.rcpt_tos:
            tenant = await self.mailboxes(rcpt.lower())
            if tenant is None:
                continue
            try:
                await self.deliver(tenant, message)
            except Exception as e:  # the sender's server keeps it and tries again
                log.warning("inbound email not taken", tenant=tenant, error=str(e))
                return "451 4.3.0 try again later"
        return "250 Message accepted"


class InboundServer:
    """aiosmtpd's SMTP protocol served on ``host:port`` (0: a free port) in this process's own loop."""

    def __init__(self, handler: InboundHandler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler, self.host, self.port = handler, host, port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self.handler, hostname="parley", data_size_limit=self.handler.max_bytes),
            self.host,
            self.port,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
