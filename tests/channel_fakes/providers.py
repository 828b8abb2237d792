"""Local servers speaking the providers' protocols, for the channel tests and the demo.

Each behaves as the real service does where the platform depends on it:

* ``FakeGraph``: Meta's Cloud API. ``POST /{version}/{phone number id}/messages`` with a bearer
  token; a free-form text outside the 24-hour customer-service window is refused with error 131047
  (templates are accepted); each accepted message is reported by status webhooks (``sent`` then
  ``delivered``) signed with ``X-Hub-Signature-256`` and carrying ``biz_opaque_callback_data``.
* ``FakeTwilio``: the Messages API (``/2010-04-01/Accounts/{sid}/Messages.json``, basic auth with the
  account sid and auth token): create, and list filtered by ``To``, ``From`` and ``DateSent>``; status
  callbacks signed with ``X-Twilio-Signature`` (twilio's ``RequestValidator``).
* ``FakeSocial``: TikTok's or LinkedIn's messaging API, honouring ``Idempotency-Key``.
* ``SmtpRelay``: an SMTP server (aiosmtpd) that keeps what it relays.

A provider's callbacks cannot reach an in-process test client by network, so they wait in
``callbacks`` (path, headers, body) for the test to deliver; the demo posts them itself (``deliver_to``).
Outages: ``fail_next`` answers the next requests with an error; ``hold`` takes a message and never
answers (the caller dies waiting, the message is kept: an attempt in doubt).
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session
from twilio.request_validator import RequestValidator


@dataclass
class Callback:
    path: str
    headers: dict[str, str]
    body: bytes


class _Server:
    def __init__(self) -> None:
        self.url = ""
        self.callbacks: list[Callback] = []
        self.fail_next: list[tuple[int, dict[str, Any]]] = []
        self.hold = False
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.deliver_to: str | None = None  # post callbacks to this base URL at once (the demo)
        self._http: httpx.AsyncClient | None = None
        self._released = asyncio.Event()

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self, port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        self._released.set()  # held requests end (their callers have given up)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._released = asyncio.Event()

    async def _callback(self, callback: Callback) -> None:
        if self.deliver_to is None:
            self.callbacks.append(callback)
            return
        self._http = self._http or httpx.AsyncClient(timeout=10)
        try:
            await self._http.post(self.deliver_to + callback.path, content=callback.body, headers=callback.headers)
        except httpx.HTTPError:
            pass

    async def _held(self) -> web.Response:
        await self._released.wait()  # no answer until the server stops: the caller gives up or dies
        raise web.HTTPServiceUnavailable()


class FakeGraph(_Server):
    """Meta's WhatsApp Cloud API."""

    def __init__(self, *, access_token: str, app_secret: str, tenant: str, phone_number_id: str) -> None:
        super().__init__()
        self.access_token = access_token
        self.app_secret = app_secret
        self.tenant = tenant
        self.phone_number_id = phone_number_id
        self.sent: list[dict[str, Any]] = []
        self.last_inbound: dict[str, float] = {}
        self.window = 24 * 3600.0
        self.on_request: Any = None  # called with each accepted message (the benchmark's clock)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{phone}/messages", self._messages)
        return app

    def signed(self, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = msgspec.json.encode(payload)
        signature = "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()
        return body, {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}

    def customer_writes(
        self, wa_id: str, text: str, *, message_id: str | None = None, name: str = "Ana", at: float | None = None
    ) -> Callback:
        """The webhook Meta sends when a customer writes (the test posts it); ``at``: when they wrote."""
        at = time.time() if at is None else at
        self.last_inbound[wa_id] = at
        message = {
            "from": wa_id,
            "id": message_id or f"wamid.{uuid.uuid4().hex}",
            "timestamp": str(int(at)),
            "type": "text",
            "text": {"body": text},
        }
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": self.phone_number_id},
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [message],
        }
        body, headers = self.signed(
            {
                "object": "whatsapp_business_account",
                "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}],
            }
        )
        return Callback(f"/webhooks/whatsapp/{self.tenant}", headers, body)

    async def _messages(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return web.json_response({"error": {"message": "Invalid OAuth access token", "code": 190}}, status=401)
        if self.fail_next:
            status, body = self.fail_next.pop(0)
            return web.json_response(body, status=status)
        payload = await request.json()
        if self.on_request is not None:
            self.on_request(payload)
        to = payload.get("to", "")
        if payload.get("type") == "text" and time.time() - self.last_inbound.get(to, 0) > self.window:
            error = {"message": "Re-engagement message", "code": 131047, "error_subcode": 2494010}
            return web.json_response({"error": error}, status=400)
        wamid = f"wamid.{uuid.uuid4().hex}"
        self.sent.append({**payload, "id": wamid})
        if self.hold:
            return await self._held()
        for status in ("sent", "delivered"):
            await self._status(wamid, to, status, payload.get("biz_opaque_callback_data"))
        return web.json_response(
            {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": wamid}]}
        )

    async def _status(self, wamid: str, to: str, status: str, opaque: str | None) -> None:
        entry: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": to}
        if opaque:
            entry["biz_opaque_callback_data"] = opaque
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"phone_number_id": self.phone_number_id},
            "statuses": [entry],
        }
        body, headers = self.signed(
            {
                "object": "whatsapp_business_account",
                "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}],
            }
        )
        await self._callback(Callback(f"/webhooks/whatsapp/{self.tenant}", headers, body))


class FakeTwilio(_Server):
    """Twilio's Messages API."""

    def __init__(self, *, account_sid: str, auth_token: str, public_url: str) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.public_url = public_url  # the platform's public base URL (what signatures cover)
        self.messages: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        base = "/2010-04-01/Accounts/{sid}/Messages.json"
        app.router.add_post(base, self._create)
        app.router.add_get(base, self._list)
        return app

    def signed(self, path: str, form: dict[str, str]) -> Callback:
        signature = RequestValidator(self.auth_token).compute_signature(self.public_url + path, form)
        headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
        return Callback(path, headers, urlencode(form).encode())

    def customer_texts(self, tenant: str, sender: str, to: str, body: str, *, sid: str | None = None) -> Callback:
        form = {
            "MessageSid": sid or "SM" + uuid.uuid4().hex,
            "AccountSid": self.account_sid,
            "From": sender,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
        }
        return self.signed(f"/webhooks/sms/{tenant}", form)

    def _authorized(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return (
            request.headers.get("Authorization") == f"Basic {expected}"
            and request.match_info["sid"] == self.account_sid
        )

    async def _create(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self._authorized(request):
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        if self.fail_next:
            status, body = self.fail_next.pop(0)
            return web.json_response(body, status=status)
        form = dict(await request.post())
        now = datetime.now(UTC)
        message = {
            "sid": "SM" + uuid.uuid4().hex,
            "account_sid": self.account_sid,
            "to": form.get("To"),
            "from": form.get("From"),
            "body": form.get("Body"),
            "status": "queued",
            "date_created": now.strftime("%a, %d %b %Y %H:%M:%S +0000"),
            "date_sent": now.strftime("%a, %d %b %Y %H:%M:%S +0000"),
            "_created": now.timestamp(),
            "_callback": form.get("StatusCallback"),
            "direction": "outbound-api",
            "num_segments": "1",
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/x.json",
        }
        self.messages.append(message)
        if self.hold:
            return await self._held()
        callback = message["_callback"]
        if isinstance(callback, str) and callback.startswith(self.public_url):
            for status in ("sent", "delivered"):
                form_cb = {"MessageSid": message["sid"], "MessageStatus": status, "AccountSid": self.account_sid,
                           "To": str(message["to"]), "From": str(message["from"])}  # fmt: skip
                path = callback.removeprefix(self.public_url)
                await self._callback(self.signed(path, form_cb))
        return web.json_response(_public(message), status=201)

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        query = request.query
        since = query.get("DateSent>")
        after = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp() if since else 0
        found = [
            _public(m)
            for m in self.messages
            if (not query.get("To") or m["to"] == query["To"])
            and (not query.get("From") or m["from"] == query["From"])
            and m["_created"] >= after - 1
        ]
        page = {"messages": found, "page": 0, "page_size": 50, "first_page_uri": "", "next_page_uri": None,
                "previous_page_uri": None, "uri": str(request.rel_url), "start": 0, "end": len(found)}  # fmt: skip
        return web.json_response(page)

    def sent_to(self, number: str) -> list[str]:
        return [str(m["body"]) for m in self.messages if m["to"] == number]


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if not k.startswith("_")}


class FakeSocial(_Server):
    """A social platform's messaging API (seed 003: TikTok, LinkedIn), honouring Idempotency-Key."""

    def __init__(self, name: str, *, access_token: str, client_secret: str, tenant: str) -> None:
        super().__init__()
        self.name = name
        self.access_token = access_token
        self.client_secret = client_secret
        self.tenant = tenant
        self.sent: dict[str, dict[str, Any]] = {}  # by idempotency key
        self.times: list[float] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/messages", self._send)
        return app

    def user_writes(
        self, sender: str, text: str, *, message_id: str | None = None, stamp: int | None = None
    ) -> Callback:
        payload = {"event": "message", "message": {"id": message_id or uuid.uuid4().hex, "from": sender, "text": text}}
        body = msgspec.json.encode(payload)
        if self.name == "tiktok":
            t = str(stamp or int(time.time()))
            signature = hmac.new(self.client_secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
            headers = {"TikTok-Signature": f"t={t},s={signature}"}
        else:
            signature = hmac.new(self.client_secret.encode(), body, hashlib.sha256).hexdigest()
            headers = {"X-LI-Signature": f"hmacsha256={signature}"}
        return Callback(f"/webhooks/{self.name}/{self.tenant}", {**headers, "Content-Type": "application/json"}, body)

    async def _send(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.fail_next:
            status, body = self.fail_next.pop(0)
            return web.json_response(body, status=status)
        key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        if key in self.sent:
            return web.json_response(self.sent[key])
        payload = await request.json()
        message = {"id": uuid.uuid4().hex, "recipient": payload.get("recipient"), "text": payload.get("text")}
        self.sent[key] = message
        self.times.append(time.monotonic())
        return web.json_response(message, status=201)


@dataclass
class SmtpRelay:
    """An SMTP server that keeps every message it is given (a tenant's relay)."""

    messages: list[email.message.EmailMessage] = field(default_factory=list)
    port: int = 0
    fail_next: int = 0
    _server: asyncio.Server | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.fail_next:
            self.fail_next -= 1
            return "451 4.3.0 try again later"
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SMTP(self, hostname="relay"), "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
