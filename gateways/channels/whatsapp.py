"""WhatsApp through Meta's Cloud API (Graph API).

* Webhook verification: ``GET`` with ``hub.mode=subscribe``, ``hub.verify_token`` (the tenant's
  ``verify_token``) and ``hub.challenge``, answered with the challenge.
* Notifications: ``POST`` signed with ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body
  under the app secret>``; ``entry[].changes[].value.messages[]`` are customers' messages (text,
  and media by id with its caption), ``statuses[]`` what became of ours (sent, delivered, read,
  failed), carrying back ``biz_opaque_callback_data``: our delivery id.
* Sending: ``POST /{version}/{phone number id}/messages`` with the tenant's access token. Inside
  the customer-service window (24 hours after the customer's last message) a text; outside it only
  an approved template (``template`` credential, default ``hello_world``) may be sent.
* An attempt in doubt: the Cloud API has no look-up of sent messages, but it reports every message
  it took with a ``sent`` status webhook carrying our delivery id, which settles the attempt. So an
  attempt in doubt waits ``status_grace`` seconds for that webhook before it is attempted again.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
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

GRAPH_URL = "https://graph.facebook.com"
VERSION = "v21.0"
WINDOW = timedelta(hours=24)
# Graph API error codes that another attempt will not fix.
_PERMANENT = {100, 131008, 131009, 131026, 131047, 131051, 132000, 132001, 190, 10}


def _at(timestamp: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(timestamp), UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


class WhatsApp:
    name = "whatsapp"
    default_rate_per_minute = 1_000
    status_grace = 30.0

    def __init__(self) -> None:
        self._http = httpx.AsyncClient(timeout=10.0)

    def challenge(self, query: dict[str, str], provider: Provider) -> str:
        """The answer to Meta's verification request."""
        expected = provider.credentials.get("verify_token", "")
        if query.get("hub.mode") != "subscribe" or not expected:
            raise Refused(403, "not a subscription request")
        if not hmac.compare_digest(query.get("hub.verify_token", ""), expected):
            raise Refused(403, "wrong hub.verify_token")
        return query.get("hub.challenge", "")

    def verify(self, webhook: Webhook, provider: Provider) -> None:
        signature = webhook.headers.get("x-hub-signature-256")
        if not signature:
            raise Refused(401, "missing X-Hub-Signature-256")
        secret = provider.credentials.get("app_secret", "").encode()
        expected = "sha256=" + hmac.new(secret, webhook.body, hashlib.sha256).hexdigest()
        if not secret or not hmac.compare_digest(signature, expected):
            raise Refused(403, "invalid X-Hub-Signature-256")

    def parse(self, webhook: Webhook, provider: Provider) -> list[Parsed]:
        try:
            body = msgspec.json.decode(webhook.body)
        except msgspec.DecodeError:
            return []
        out: list[Parsed] = []
        for entry in body.get("entry") or []:
            for change in entry.get("changes") or []:
                value = change.get("value") or {}
                names = {c.get("wa_id"): (c.get("profile") or {}).get("name") for c in value.get("contacts") or []}
                for message in value.get("messages") or []:
                    parsed = _message(message, names)
                    if parsed is not None:
                        out.append(parsed)
                for status in value.get("statuses") or []:
                    kind = status.get("status")
                    if kind not in ("sent", "delivered", "read", "failed"):
                        continue
                    errors = status.get("errors") or []
                    out.append(
                        StatusReport(
                            provider_message_id=str(status.get("id", "")),
                            status=kind,
                            delivery_id=status.get("biz_opaque_callback_data") or None,
                            reason="; ".join(f"{e.get('code')}: {e.get('title')}" for e in errors),
                            at=_at(status.get("timestamp")),
                        )
                    )
        return out

    async def send(self, provider: Provider, recipient: Recipient, message: Outgoing) -> Sent:
        phone_number_id = provider.settings.sender
        url = f"{provider.base_url or GRAPH_URL}/{VERSION}/{phone_number_id}/messages"
        in_window = recipient.last_inbound_at is not None and message.attempted_at - recipient.last_inbound_at < WINDOW
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": recipient.address,
            "biz_opaque_callback_data": message.delivery_id,
        }
        if in_window:
            payload |= {"type": "text", "text": {"preview_url": False, "body": message.text[:4096]}}
            kind = "text"
        else:
            template = provider.credentials.get("template", "hello_world")
            language = provider.credentials.get("template_language", "en_US")
            payload |= {"type": "template", "template": {"name": template, "language": {"code": language}}}
            kind = "template"
        headers = {"Authorization": f"Bearer {provider.credentials.get('access_token', '')}"}
        try:
            response = await self._http.post(url, json=payload, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # it never left
            raise ProviderError(f"unreachable: {type(e).__name__}", retryable=True) from None
        except httpx.HTTPError as e:  # it left, and its answer was lost
            raise ProviderError(f"no answer: {type(e).__name__}", retryable=True, ambiguous=True) from None
        if response.status_code >= 400:
            raise _error(response)
        messages = response.json().get("messages") or [{}]
        return Sent(provider_message_id=str(messages[0].get("id", "")), kind=kind)

    async def check(self, provider: Provider, recipient: Recipient, message: Outgoing) -> Sent | None:
        waited = (datetime.now(UTC) - message.attempted_at).total_seconds()
        if waited < self.status_grace:
            raise ProviderError(
                "waiting for the status webhook of an attempt in doubt",
                retryable=True,
                retry_after=self.status_grace - waited,
            )
        return None  # no status came: it was not taken

    async def close(self) -> None:
        await self._http.aclose()


def _message(message: dict[str, Any], names: dict[Any, Any]) -> Inbound | None:
    kind = message.get("type")
    attachments: list[str] = []
    match kind:
        case "text":
            text = (message.get("text") or {}).get("body", "")
        case "image" | "video" | "audio" | "document" | "sticker":
            media = message.get(kind) or {}
            text = media.get("caption") or f"[{kind}]"
            attachments = [f"whatsapp-media:{media.get('id', '')}"]
        case "button":
            text = (message.get("button") or {}).get("text", "")
        case "interactive":
            reply = message.get("interactive") or {}
            chosen = reply.get("button_reply") or reply.get("list_reply") or {}
            text = chosen.get("title", "")
        case "location":
            location = message.get("location") or {}
            text = f"[location {location.get('latitude')},{location.get('longitude')}]"
        case _:
            return None
    sender = str(message.get("from", ""))
    if not sender or not message.get("id"):
        return None
    return Inbound(
        channel="whatsapp",
        address=sender,
        message_id=str(message["id"]),
        text=text or f"[{kind}]",
        attachments=attachments,
        name=names.get(sender),
        at=_at(message.get("timestamp")),
    )


def _error(response: httpx.Response) -> ProviderError:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    code = error.get("code")
    reason = f"Graph API {response.status_code}: {error.get('message') or response.text[:200]}"
    if code is not None:
        reason += f" (code {code})"
    retry_after = float(response.headers.get("retry-after", 0) or 0) or None
    if response.status_code == 429 or response.status_code >= 500 or code in (4, 80007, 130429, 131048, 131056):
        return ProviderError(reason, retryable=True, retry_after=retry_after)
    return ProviderError(reason, retryable=code not in _PERMANENT and response.status_code == 408)
