"""SMS through Twilio's Messages API, with the twilio package.

* Inbound: Twilio's form-encoded webhook, ``X-Twilio-Signature`` checked with the tenant's auth
  token (twilio's ``RequestValidator``, over the URL Twilio called and the form). A status callback
  (``MessageStatus``: queued, sent, delivered, undelivered, failed, read) reports on ours; the
  status callback URL we give carries our delivery id.
* Keywords (carriers' rules, as Twilio's opt-out handling has them): ``STOP`` (and ``STOPALL``,
  ``UNSUBSCRIBE``, ``CANCEL``, ``END``, ``QUIT``, ``REVOKE``, ``OPTOUT``) opts the number out:
  nothing more is sent to it; ``START`` (``YES``, ``UNSTOP``) opts it back in; ``HELP`` (``INFO``)
  is answered with the tenant's help text. A keyword is not a message for the bot.
* Sending: ``client.messages.create`` from the tenant's number, with a status callback (the
  package's requests-based client, in a thread: its aiohttp one warns on the aiohttp installed).
* An attempt in doubt: Twilio keeps every message; the attempt went out if the account has a
  message to that number from ours with the same body, created since the attempt was recorded.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from commands.channel import Inbound
from gateways.channels.port import (
    Keyword,
    Outgoing,
    Parsed,
    Provider,
    ProviderError,
    Recipient,
    Refused,
    Sent,
    StatusReport,
    Webhook,
)

STOP = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START = {"START", "YES", "UNSTOP"}
HELP = {"HELP", "INFO"}
_STATUS = {"sent": "sent", "delivered": "delivered", "read": "read", "undelivered": "failed", "failed": "failed"}
# Twilio error codes another attempt will not fix (a wrong or blocked number, an opted-out one).
_PERMANENT = {21211, 21212, 21408, 21610, 21612, 21614, 30003, 30004, 30005, 30006, 30007}


def keyword_of(text: str) -> str | None:
    word = text.strip().upper()
    return word if word in STOP | START | HELP else None


class TwilioSms:
    name = "sms"
    default_rate_per_minute = 60  # a long code sends one message a second

    def __init__(self, *, timeout: float = 15.0) -> None:
        self.timeout = timeout
        self._clients: dict[tuple[str, str, str], Client] = {}

    def _client(self, provider: Provider) -> Client:
        sid = provider.credentials.get("account_sid", "")
        token = provider.credentials.get("auth_token", "")
        key = (sid, token, provider.base_url)
        client = self._clients.get(key)
        if client is None:
            client = Client(sid, token, http_client=TwilioHttpClient(timeout=self.timeout))
            if provider.base_url:
                client.api.base_url = provider.base_url
            self._clients[key] = client
        return client

    def verify(self, webhook: Webhook, provider: Provider) -> None:
        signature = webhook.headers.get("x-twilio-signature")
        if not signature:
            raise Refused(401, "missing X-Twilio-Signature")
        token = provider.credentials.get("auth_token", "")
        if not token or not RequestValidator(token).validate(webhook.url, dict(webhook.form), signature):
            raise Refused(403, "invalid X-Twilio-Signature")

    def parse(self, webhook: Webhook, provider: Provider) -> list[Parsed]:
        form = webhook.form
        sid = form.get("MessageSid") or form.get("SmsSid") or ""
        now = datetime.now(UTC)
        if "MessageStatus" in form and "Body" not in form:
            status = _STATUS.get(form["MessageStatus"])
            if status is None:
                return []  # queued, accepted, sending: nothing settled yet
            reason = f"Twilio error {form['ErrorCode']}" if form.get("ErrorCode") else ""
            delivery = webhook.query.get("delivery") or None
            return [StatusReport(provider_message_id=sid, status=status, delivery_id=delivery, reason=reason, at=now)]
        sender = form.get("From", "")
        if not sender or not sid:
            return []
        body = form.get("Body", "")
        word = keyword_of(body)
        if word is not None:
            action = "stop" if word in STOP else "start" if word in START else "help"
            return [Keyword(action=action, keyword=word, address=sender, message_id=sid, at=now)]
        media = [form[f"MediaUrl{i}"] for i in range(int(form.get("NumMedia", "0") or 0)) if form.get(f"MediaUrl{i}")]
        return [
            Inbound(channel="sms", address=sender, message_id=sid, text=body or "[media]", attachments=media, at=now)
        ]

    async def send(self, provider: Provider, recipient: Recipient, message: Outgoing) -> Sent:
        client = self._client(provider)
        callback = (
            f"{provider.public_url}/webhooks/sms/{provider.tenant}?delivery={message.delivery_id}"
            if provider.public_url
            else None
        )
        try:
            created = await asyncio.to_thread(
                client.messages.create,
                to=recipient.address, from_=provider.settings.sender, body=message.text[:1600],
                status_callback=callback,
            )  # fmt: skip
        except TwilioRestException as e:
            retryable = e.status == 429 or e.status >= 500 or (e.status < 400)
            if e.code in _PERMANENT:
                retryable = False
            raise ProviderError(f"Twilio {e.status}: {e.msg} (code {e.code})", retryable=retryable) from None
        except requests.ConnectionError as e:  # it never left (or the connection broke: asked first)
            ambiguous = not isinstance(e.__context__, ConnectionRefusedError) and "refused" not in str(e).lower()
            raise ProviderError(
                f"Twilio unreachable: {type(e).__name__}", retryable=True, ambiguous=ambiguous
            ) from None
        except (TwilioException, requests.RequestException, OSError, TimeoutError) as e:  # its answer was lost
            raise ProviderError(f"no answer from Twilio: {type(e).__name__}", retryable=True, ambiguous=True) from None
        return Sent(provider_message_id=str(created.sid))

    async def check(self, provider: Provider, recipient: Recipient, message: Outgoing) -> Sent | None:
        client = self._client(provider)
        since = message.attempted_at - timedelta(seconds=5)
        try:
            found = await asyncio.to_thread(
                client.messages.list,
                to=recipient.address,
                from_=provider.settings.sender,
                date_sent_after=since,
                limit=50,
            )
        except TwilioRestException as e:
            raise ProviderError(f"Twilio {e.status} on a look-up: {e.msg}", retryable=True) from None
        except (TwilioException, requests.RequestException, OSError, TimeoutError) as e:
            raise ProviderError(f"Twilio unreachable on a look-up: {type(e).__name__}", retryable=True) from None
        body = message.text[:1600]
        for sent in found:
            if sent.body == body and (sent.date_created is None or sent.date_created >= since):
                return Sent(provider_message_id=str(sent.sid))
        return None

    def help_text(self, provider: Provider) -> str:
        return provider.credentials.get(
            "help_text", "Reply with your question and our assistant will answer. Reply STOP to opt out."
        )

    async def close(self) -> None:
        self._clients.clear()
