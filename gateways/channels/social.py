"""Social platforms of seed 003 (TikTok and LinkedIn): webhooks signed by the platform, messages
back through its messaging API, each within the platform's outbound rate limit.

* TikTok signs with ``TikTok-Signature: t=<unix time>,s=<HMAC-SHA256 of "<t>.<raw body>" under the
  client secret>``; a signature older than five minutes is refused (a replay).
* LinkedIn signs with ``X-LI-Signature: hmacsha256=<HMAC-SHA256 of the raw body under the client
  secret>``.
* Both take a message with ``POST /v2/messages`` (bearer access token) and honour an
  ``Idempotency-Key``: our delivery id, the same for every attempt, so an attempt in doubt is simply
  made again and the platform answers with the message it already has.
* Outbound rate limits (seed 003): TikTok 60 a minute, LinkedIn 100 a minute (the outbox waits).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from commands.channel import Inbound
from gateways.channels.port import (
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

REPLAY_WINDOW = 300.0


def _hmac(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def _at(value: Any) -> datetime:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return datetime.now(UTC)
    return datetime.fromtimestamp(number / 1000 if number > 1e11 else number, UTC)


class SocialPlatform:
    """One platform: how it signs, what its events look like, where it takes messages."""

    def __init__(self, name: str, *, rate_per_minute: int, base_url: str) -> None:
        self.name = name
        self.default_rate_per_minute = rate_per_minute
        self.base_url = base_url
        self._http = httpx.AsyncClient(timeout=10.0)

    def verify(self, webhook: Webhook, provider: Provider) -> None:
        secret = provider.credentials.get("client_secret", "")
        if self.name == "tiktok":
            header = webhook.headers.get("tiktok-signature")
            if not header:
                raise Refused(401, "missing TikTok-Signature")
            parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
            stamp, signature = parts.get("t", ""), parts.get("s", "")
            if not stamp.isdigit() or abs(time.time() - int(stamp)) > REPLAY_WINDOW:
                raise Refused(403, "TikTok-Signature is too old or has no time")
            expected = _hmac(secret, stamp.encode() + b"." + webhook.body)
        else:
            header = webhook.headers.get("x-li-signature")
            if not header:
                raise Refused(401, "missing X-LI-Signature")
            signature = header.removeprefix("hmacsha256=")
            expected = _hmac(secret, webhook.body)
        if not secret or not hmac.compare_digest(signature, expected):
            raise Refused(403, f"invalid {self.name} signature")

    def parse(self, webhook: Webhook, provider: Provider) -> list[Parsed]:
        try:
            body = msgspec.json.decode(webhook.body)
        except msgspec.DecodeError:
            return []
        if not isinstance(body, dict):
            return []
        events = body.get("events") if isinstance(body.get("events"), list) else [body]
        out: list[Parsed] = []
        for event in events:
            kind = event.get("event") or event.get("type")
            data = event.get("message") or event.get("content") or {}
            if kind in ("message", "receive_msg", "MESSAGE_EVENT"):
                sender = str(data.get("from") or data.get("from_user_id") or "")
                message_id = str(data.get("id") or data.get("message_id") or "")
                if sender and message_id:
                    out.append(
                        Inbound(
                            channel=self.name,
                            address=sender,
                            message_id=message_id,
                            text=str(data.get("text") or "[attachment]"),
                            name=data.get("sender_name"),
                            at=_at(data.get("created_at") or data.get("create_time")),
                        )
                    )
            elif kind in ("message_status", "msg_status", "MESSAGE_STATUS"):
                status = data.get("status")
                if status in ("sent", "delivered", "read", "failed"):
                    out.append(
                        StatusReport(
                            provider_message_id=str(data.get("id", "")),
                            status=status,
                            delivery_id=data.get("client_reference") or None,
                            reason=str(data.get("error") or ""),
                            at=_at(data.get("at")),
                        )
                    )
        return out

    async def send(self, provider: Provider, recipient: Recipient, message: Outgoing) -> Sent:
        url = f"{provider.base_url or self.base_url}/v2/messages"
        headers = {
            "Authorization": f"Bearer {provider.credentials.get('access_token', '')}",
            "Idempotency-Key": message.reference,
        }
        payload = {"recipient": recipient.address, "text": message.text, "client_reference": message.delivery_id}
        try:
            response = await self._http.post(url, json=payload, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # it never left
            raise ProviderError(f"unreachable: {type(e).__name__}", retryable=True) from None
        except httpx.HTTPError as e:  # it left, and its answer was lost
            raise ProviderError(f"no answer: {type(e).__name__}", retryable=True, ambiguous=True) from None
        if response.status_code >= 400:
            retry_after = float(response.headers.get("retry-after", 0) or 0) or None
            retryable = response.status_code in (408, 409, 425, 429) or response.status_code >= 500
            reason = f"{self.name} {response.status_code}: {response.text[:200]}"
            raise ProviderError(reason, retryable=retryable, retry_after=retry_after)
        return Sent(provider_message_id=str(response.json().get("id", "")))

    async def check(self, provider: Provider, recipient: Recipient, message: Outgoing) -> Sent | None:
        return None  # the idempotency key makes another attempt safe

    async def close(self) -> None:
        await self._http.aclose()


def tiktok() -> SocialPlatform:
    return SocialPlatform("tiktok", rate_per_minute=60, base_url="https://open.tiktokapis.com")


def linkedin() -> SocialPlatform:
    return SocialPlatform("linkedin", rate_per_minute=100, base_url="https://api.linkedin.com")
