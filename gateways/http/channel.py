"""Channels over HTTP: the providers' webhooks, the tenant's channel settings, deliveries, and web chat.

* ``POST /webhooks/{platform}/{tenant}`` (``whatsapp``, ``sms``, ``tiktok``, ``linkedin``), and
  Meta's ``GET /webhooks/whatsapp/{tenant}`` verification. Not behind the bearer token: each is
  proven by the provider's signature over the tenant's secret (401 without one, 403 with a wrong
  one; nothing is appended either way). The tenant is in the path because the secret is the
  tenant's; the settings show each channel's webhook URL.
* ``/api/v1/channels``: list, set up (``PUT``, credentials sealed, never shown again), turn off.
* ``/api/v1/orchestration/conversations/{id}/deliveries`` and ``/api/v1/channels/dead-letters``.
* Web chat: ``POST /api/v1/chat/sessions`` (a tenant's site, with an API key of scope
  ``chat_sessions``, mints a customer's session token), ``/api/v1/chat/ws?token=`` (a websocket:
  history on (re)connect, typing while the bot answers, each message as it is committed), and where
  websockets are blocked ``GET /api/v1/chat/events?token=`` (server-sent events) with
  ``POST /api/v1/chat/messages``. ``/chat/widget.js`` is the embeddable widget, ``/chat/demo`` a
  page with it talking to the demo support bot (when the demo is on).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

import msgspec
import structlog
from litestar import Controller, Request, Response, WebSocket, delete, get, post, put, websocket
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, WebSocketDisconnect
from litestar.params import FromPath, JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.security.jwt import Token
from psycopg_pool import AsyncConnectionPool
from twilio.twiml.messaging_response import MessagingResponse

from commands.api_key import ApiKeys
from commands.channel import ChannelBook, Deliveries, Inbound, Inbox
from commands.config import ConfigCatalog
from commands.runner import CommandRunner
from domain import channel as ch
from domain import conversation as c
from domain.errors import NotFoundError, ValidationError
from gateways.channels.email import Email, InboundHandler, InboundServer
from gateways.channels.outbox import Outbox
from gateways.channels.port import ChannelAdapter, Keyword, Provider, Refused, StatusReport, Webhook
from gateways.channels.settings import ChannelOptions
from gateways.channels.social import linkedin, tiktok
from gateways.channels.twilio_sms import TwilioSms
from gateways.channels.whatsapp import WhatsApp
from gateways.http.auth import Identity, requires
from gateways.http.common import STAFF, actor, is_customer, iso, require_own
from gateways.http.fields import Id, Name, Text
from gateways.http.limits import Limits, RateLimited
from infra.tokens import make_token
from read_models.channel import DeliveryList, DeliveryQueries
from streams.keys import KeyStore
from streams.store import EventStore, RecordedEvent
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

PUBLIC = {"exclude_from_auth": True}
ADMINS = requires("org_admin")
SESSION_MINTERS = requires("chat_sessions", "org_admin")
CUSTOMERS = requires("customer")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
WIDGET = Path(__file__).resolve().parent.parent / "channels" / "webchat" / "widget.js"
DEMO_PAGE = Path(__file__).resolve().parent.parent / "channels" / "webchat" / "demo.html"


# The channels of one API process ----------------------------------------------------------------


class ChannelServices:
    """What the channels need in one process: settings, the inbox, deliveries, the outbox, chat, SMTP."""

    def __init__(
        self,
        store: EventStore,
        runner: CommandRunner,
        catalog: ConfigCatalog,
        keys: KeyStore,
        pool: AsyncConnectionPool[Any],
        limits: Limits,
        api_keys: ApiKeys,
        options: ChannelOptions,
        *,
        jwt_secret: str,
        demo_tenant: str | None = None,
    ) -> None:
        self.store = store
        self.options = options
        self.limits = limits
        self.api_keys = api_keys
        self.jwt_secret = jwt_secret
        self.book = ChannelBook(runner, keys)
        self.inbox = Inbox(runner, catalog, self.book)
        self.deliveries = Deliveries(runner)
        self.queries = DeliveryQueries(pool)
        self.adapters: dict[str, ChannelAdapter] = {
            "whatsapp": WhatsApp(),
            "sms": TwilioSms(),
            "email": Email(),
            "tiktok": tiktok(),
            "linkedin": linkedin(),
        }
        self.outbox = (
            Outbox(
                store,
                runner,
                self.book,
                self.adapters,
                endpoints=options.endpoints,
                public_url=options.public_url,
                throttle=self.throttle,
                pending=self._pending,
                backoff=options.backoff,
                attempt_timeout=options.attempt_timeout,
                sweep_every=options.sweep_every,
            )
            if options.run_outbox
            else None
        )
        self.smtp: InboundServer | None = None
        self.smtp_port: int | None = None
        self.demo_tenant = demo_tenant
        self.demo_key: str | None = None  # the demo site's API key (the demo page's "backend" holds it)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.book.settings.follow(self.store)
        if self.outbox is not None:
            self._tasks.append(asyncio.create_task(self._lead_outbox(), name="channel-outbox"))
        if self.options.smtp_port is not None:
            handler = InboundHandler(self.mailbox, self.receive_email)
            smtp = InboundServer(handler, host=self.options.smtp_host, port=self.options.smtp_port)
            try:
                self.smtp_port = await smtp.start()
                self.smtp = smtp
            except OSError as e:  # the port is taken: no inbound email in this process, the rest works
                log.warning("inbound SMTP server not started", port=self.options.smtp_port, error=str(e))
        if self.demo_tenant is not None and self.options.demo_page:
            issued = await self.api_keys.create(
                self.demo_tenant,
                name="chat demo site",
                scopes=["chat_sessions"],
                tier="standard",
                actor="platform:demo",
                at=datetime.now(UTC),
            )
            self.demo_key = issued.secret

    async def close(self) -> None:
        if self.smtp is not None:
            await self.smtp.stop()
        if self.outbox is not None:
            await self.outbox.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.book.settings.close()

    async def _lead_outbox(self) -> None:
        """Run the outbox in one process of the deployment at a time: the holder of a PostgreSQL
        advisory lock (its consumer restarts from its acknowledged position, which two would undo for
        each other). When the holder dies its session ends, the lock is free, and another takes over."""
        assert self.outbox is not None
        key = "parley.channel_outbox"
        while True:
            try:
                async with self.queries.pool.connection() as conn:
                    while True:
                        cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [key])
                        row = await cur.fetchone()
                        if row is not None and row[0]:
                            break
                        await asyncio.sleep(2.0)
                    try:
                        await self.outbox.run()
                        return
                    finally:
                        with contextlib.suppress(Exception):
                            await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("the outbox lost its database session; taking the lead again", exc_info=True)
                await asyncio.sleep(2.0)

    async def _pending(self) -> list[tuple[str, str]]:
        return await self.queries.unfinished(older_than_seconds=self.options.attempt_timeout)

    async def throttle(self, tenant: str, channel: str, per_minute: int) -> None:
        """Wait until the tenant's channel may send one more message this minute (seed 003's limits)."""
        bucket = (f"rl:ch:{tenant}:{channel}", -60_000.0, per_minute, f"{channel} outbound ({per_minute}/minute)")
        while True:
            try:
                await self.limits.take([bucket])  # type: ignore[list-item]
                return
            except RateLimited as e:
                await asyncio.sleep(float(e.details.get("retry_after", 1)))

    def provider(self, tenant: str, settings: ch.ChannelSettings) -> Provider:
        return Provider(
            tenant=tenant,
            settings=settings,
            credentials=self.book.credentials(tenant, settings),
            base_url=self.options.endpoints.get(settings.channel, ""),
            public_url=self.options.public_url,
        )

    async def mailbox(self, address: str) -> str | None:
        """The tenant an inbound address is for: ``<tenant>@…``, when the tenant's email channel is on."""
        tenant = address.partition("@")[0].lower()
        if not _TENANT.match(tenant):
            return None
        try:
            await self.book.enabled(tenant, "email")
        except NotFoundError:
            return None
        return tenant

    async def receive_email(self, tenant: str, message: Inbound) -> None:
        await self.inbox.receive(tenant, message)

    def session_token(self, tenant: str, subject: str) -> tuple[str, datetime]:
        hours = self.options.session_hours
        token = make_token(self.jwt_secret, subject=subject, tenant=tenant, roles=["customer"], hours=hours)
        return token, datetime.now(UTC) + timedelta(hours=hours)

    def customer(self, token: str) -> Identity:
        """A web-chat session token's customer (401 when it is not one)."""
        try:
            decoded = Token.decode(token, self.jwt_secret, "HS256")
        except Exception:
            raise NotAuthorizedException("the session token is not valid") from None
        tenant = decoded.extras.get("tenant")
        roles = decoded.extras.get("roles") or []
        if not isinstance(tenant, str) or not _TENANT.match(tenant) or "customer" not in roles:
            raise NotAuthorizedException("not a customer session")
        return Identity(decoded.sub, tenant, frozenset(str(r) for r in roles))


# Webhooks ---------------------------------------------------------------------------------------


class WebhookController(Controller):
    path = "/webhooks"
    tags = ["channels"]
    opt = PUBLIC

    @get("/{channel:str}/{tenant:str}", summary="Meta's webhook verification (hub.challenge)", media_type="text/plain")
    async def whatsapp_verify(
        self,
        request: Request[Any, Any, Any],
        channel: FromPath[str],
        tenant: FromPath[str],
        channels: NamedDependency[ChannelServices],
    ) -> str:
        if channel != "whatsapp":
            raise NotFoundError(f"no verification for {channel}")
        settings = await _enabled(channels, tenant, "whatsapp")
        adapter = channels.adapters["whatsapp"]
        assert isinstance(adapter, WhatsApp)
        try:
            return adapter.challenge(dict(request.query_params), channels.provider(tenant, settings))
        except Refused as e:
            raise PermissionDeniedException(e.reason) from None

    @post("/{channel:str}/{tenant:str}", summary="A provider's webhook (signed)", status_code=200)
    async def receive(
        self,
        request: Request[Any, Any, Any],
        channel: FromPath[str],
        tenant: FromPath[str],
        channels: NamedDependency[ChannelServices],
    ) -> Response[Any]:
        platform = channel
        adapter = channels.adapters.get(platform)
        if adapter is None or platform == "email":
            raise NotFoundError(f"no webhook for {platform}")
        settings = await _enabled(channels, tenant, platform)
        provider = channels.provider(tenant, settings)
        body = await request.body()
        query = dict(request.query_params)
        form: dict[str, str] = {}
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        url = str(request.url)
        if channels.options.public_url:
            url = channels.options.public_url + request.url.path + (f"?{urlencode(query)}" if query else "")
        webhook = Webhook(
            method=request.method, url=url, headers=dict(request.headers), query=query, body=body, form=form
        )
        try:
            adapter.verify(webhook, provider)
        except Refused as e:
            log.warning("webhook refused", platform=platform, tenant=tenant, reason=e.reason)
            if e.status == 401:
                raise NotAuthorizedException(e.reason) from None
            raise PermissionDeniedException(e.reason) from None
        replies: list[str] = []
        received = 0
        for item in adapter.parse(webhook, provider):
            match item:
                case Inbound():
                    await channels.inbox.receive(tenant, item, config_id=settings.config_id)
                    received += 1
                case StatusReport():
                    if item.delivery_id:
                        with contextlib.suppress(NotFoundError):
                            await channels.deliveries.provider_status(
                                tenant, item.delivery_id, item.status, item.provider_message_id, item.reason, item.at
                            )
                case Keyword():
                    replies.append(await _keyword(channels, tenant, platform, item, provider))
        if platform == "sms":  # Twilio expects TwiML: the keyword's answer, or nothing
            twiml = MessagingResponse()
            for text in replies:
                twiml.message(text)
            return Response(str(twiml), media_type="application/xml")
        return Response({"received": received})


async def _enabled(channels: ChannelServices, tenant: str, channel: str) -> ch.ChannelSettings:
    if not _TENANT.match(tenant):
        raise NotFoundError("no such tenant")
    return await channels.book.enabled(tenant, channel)


async def _keyword(channels: ChannelServices, tenant: str, channel: str, keyword: Keyword, provider: Provider) -> str:
    """A carrier keyword: opt out or in (confirmed, as carriers require), or the help text."""
    match keyword.action:
        case "stop":
            await channels.inbox.opt_out(tenant, channel, keyword.address, keyword.keyword, keyword.at)
            return "You have been unsubscribed and will receive no more messages. Reply START to resubscribe."
        case "start":
            await channels.inbox.opt_in(tenant, channel, keyword.address, keyword.keyword, keyword.at)
            return "You have been resubscribed. Reply HELP for help, STOP to unsubscribe."
    adapter = channels.adapters[channel]
    return adapter.help_text(provider) if isinstance(adapter, TwilioSms) else "Reply STOP to unsubscribe."


# Channel settings -------------------------------------------------------------------------------


class ChannelSettingsRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    config_id: Name = "support-bot"
    sender: Annotated[str, msgspec.Meta(max_length=320, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""
    # Given: they replace the stored ones; left out: the stored ones are kept.
    credentials: (
        Annotated[dict[Name, Annotated[str, msgspec.Meta(max_length=4_096)]], msgspec.Meta(max_length=20)] | None
    ) = None
    rate_per_minute: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0


class ChannelView(msgspec.Struct, kw_only=True):
    channel: str
    configured: bool
    enabled: bool
    config_id: str | None
    sender: str
    # The names of the credentials set (their values are never shown).
    credentials: list[str]
    rate_per_minute: int
    webhook_url: str | None
    inbound_address: str | None = None
    updated_at: str | None = None
    position: int = 0


class ChannelList(msgspec.Struct):
    channels: list[ChannelView]


def _view(
    request: Request[Any, Any, Any], channels: ChannelServices, tenant: str, s: ch.ChannelSettings, channel: str
) -> ChannelView:
    base = channels.options.public_url or str(request.base_url).rstrip("/")
    webhook: str | None = f"{base}/webhooks/{channel}/{tenant}"
    inbound = None
    if channel == "email":
        webhook = None
        inbound = f"{tenant}@{channels.options.smtp_host}" + (f":{channels.smtp_port}" if channels.smtp_port else "")
    elif channel == "webchat":
        webhook = None
    adapter = channels.adapters.get(channel)
    return ChannelView(
        channel=channel,
        configured=s.configured,
        enabled=s.enabled,
        config_id=s.config_id or None,
        sender=s.sender,
        credentials=list(s.credential_names),
        rate_per_minute=s.rate_per_minute or (adapter.default_rate_per_minute if adapter else 0),
        webhook_url=webhook,
        inbound_address=inbound,
        updated_at=iso(s.updated_at) if s.updated_at else None,
    )


class ChannelSettingsController(Controller):
    path = "/api/v1/channels"
    tags = ["channels"]

    @get("/", opt=requires("org_admin", "supervisor", "platform_engineer"), summary="The tenant's channels")
    async def list_channels(
        self, request: Request[Identity, Any, Any], channels: NamedDependency[ChannelServices]
    ) -> ChannelList:
        tenant = request.user.tenant
        found = [(name, await channels.book.get(tenant, name)) for name in ch.CHANNELS]
        return ChannelList([_view(request, channels, tenant, s, name) for name, s in found])

    @get("/dead-letters", opt=requires(*STAFF), summary="Replies that could not be delivered")
    async def dead_letters(
        self, request: Request[Identity, Any, Any], channels: NamedDependency[ChannelServices]
    ) -> DeliveryList:
        return await channels.queries.dead_letters(request.user.tenant)

    @get("/{channel:str}", opt=requires("org_admin", "supervisor", "platform_engineer"), summary="A channel")
    async def get_channel(
        self, request: Request[Identity, Any, Any], channel: FromPath[str], channels: NamedDependency[ChannelServices]
    ) -> ChannelView:
        tenant = request.user.tenant
        return _view(request, channels, tenant, await channels.book.get(tenant, channel), channel)

    @put("/{channel:str}", opt=ADMINS, summary="Set a channel up (credentials sealed, never shown again)")
    async def configure(
        self,
        request: Request[Identity, Any, Any],
        channel: FromPath[str],
        data: JSONBody[ChannelSettingsRequest],
        channels: NamedDependency[ChannelServices],
        catalog: NamedDependency[ConfigCatalog],
    ) -> Response[ChannelView]:
        tenant = request.user.tenant
        if channel not in ch.CHANNELS:
            raise NotFoundError(f"no channel {channel}", known=list(ch.CHANNELS))
        try:
            await catalog.latest_version(tenant, data.config_id)
        except NotFoundError:
            raise ValidationError("no such config", fields={"config_id": "not a config of this tenant"}) from None
        outcome = await channels.book.configure(
            tenant,
            channel,
            config_id=data.config_id,
            sender=data.sender,
            credentials=data.credentials,
            rate_per_minute=data.rate_per_minute,
            actor=actor(request.user),
            at=datetime.now(UTC),
        )
        view = _view(request, channels, tenant, outcome.state, channel)
        view.position = outcome.position
        return Response(view, headers={"X-Parley-Position": str(outcome.position)})

    @delete("/{channel:str}", opt=ADMINS, status_code=200, summary="Turn a channel off")
    async def disable(
        self, request: Request[Identity, Any, Any], channel: FromPath[str], channels: NamedDependency[ChannelServices]
    ) -> ChannelView:
        tenant = request.user.tenant
        await channels.book.get(tenant, channel)
        outcome = await channels.book.disable(tenant, channel, actor=actor(request.user), at=datetime.now(UTC))
        return _view(request, channels, tenant, outcome.state, channel)


class DeliveryController(Controller):
    path = "/api/v1/orchestration/conversations"
    tags = ["channels"]

    @get(
        "/{conversation_id:str}/deliveries",
        opt=requires("customer", *STAFF, "analyst"),
        summary="How the conversation's replies were delivered (dead letters included)",
    )
    async def deliveries(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: Id,
        channels: NamedDependency[ChannelServices],
        runner: NamedDependency[CommandRunner],
    ) -> DeliveryList:
        identity = request.user
        state = (await runner.repository(c.DECIDER).load(identity.tenant, conversation_id, trust_cache=True)).state
        if not state.started:
            raise NotFoundError(f"conversation {conversation_id} not found")
        require_own(identity, state.user_id, f"conversation {conversation_id}")
        return await channels.queries.of_conversation(identity.tenant, conversation_id)


# Web chat ---------------------------------------------------------------------------------------


class SessionRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # The site's own id for the visitor (a signed-in customer); left out: a new anonymous visitor.
    customer_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@:-]+$")] | None = (
        None
    )


class SessionResponse(msgspec.Struct, kw_only=True):
    token: str
    customer: str
    expires_at: str
    ws_url: str
    events_url: str
    messages_url: str


class ChatMessageRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    text: Text
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")] | None = None


class ChatAck(msgspec.Struct, kw_only=True):
    id: str
    conversation_id: str
    duplicate: bool


def _session(channels: ChannelServices, tenant: str, customer_id: str | None) -> SessionResponse:
    subject = f"web-{customer_id}" if customer_id else f"web-{uuid.uuid4().hex}"
    token, expires = channels.session_token(tenant, subject)
    return SessionResponse(
        token=token,
        customer=subject,
        expires_at=iso(expires),
        ws_url="/api/v1/chat/ws",
        events_url="/api/v1/chat/events",
        messages_url="/api/v1/chat/messages",
    )


def frames(recorded: RecordedEvent) -> list[dict[str, Any]]:
    """What the widget is told of one conversation event."""
    match recorded.event:
        case c.UserMessageReceived() as e:
            return [
                {"type": "message", "role": "customer", "id": e.message_id, "text": e.content, "at": iso(e.received_at)}
            ]
        case c.AgentReplied() as e:
            role = "human" if e.by_human else "agent"
            return [
                {"type": "typing", "on": False},
                {
                    "type": "message",
                    "role": role,
                    "id": e.message_id,
                    "text": e.content,
                    "author": e.agent_name or None,
                    "at": iso(e.replied_at),
                },
            ]
        case c.EscalationRequested():
            return [{"type": "status", "status": "waiting_for_agent"}]
        case c.EscalationAssigned() as e:
            return [{"type": "status", "status": "with_agent", "agent": e.agent_name or "an agent"}]
        case c.EscalationResolved():
            return [{"type": "status", "status": "active"}]
        case c.ConversationClosed():
            return [{"type": "status", "status": "closed"}]
    return []


class ChatSession:
    """One customer's chat: their conversation's messages as they are committed, and theirs sent on."""

    def __init__(
        self, channels: ChannelServices, identity: Identity, send: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        self.channels = channels
        self.identity = identity
        self.send = send
        self.conversation_id: str | None = None
        self._follow: asyncio.Task[None] | None = None
        self._ai_answers = True

    async def open(self) -> None:
        """The history (on every connect: a reconnect gets what it missed), then live events."""
        contact = await self.channels.inbox.contact(self.identity.tenant, "webchat", self.identity.subject)
        await self._switch(contact.conversation_id, history=True)

    async def _switch(self, conversation_id: str | None, *, history: bool) -> None:
        if conversation_id == self.conversation_id and self._follow is not None:
            return
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follow
        self.conversation_id = conversation_id
        if conversation_id is None:
            await self.send({"type": "history", "conversation_id": None, "messages": []})
            return
        stream = StreamId(self.identity.tenant, c.AGGREGATE_TYPE, conversation_id)
        watch = await self.channels.store.watch(stream.subjects)
        past = await self.channels.store.read(stream)
        messages: list[dict[str, Any]] = []
        status = "active"
        for recorded in past:
            for frame in frames(recorded):
                if frame["type"] == "message":
                    messages.append(frame)
                elif frame["type"] == "status":
                    status = frame["status"]
        self._ai_answers = status == "active"
        if history:
            await self.send(
                {"type": "history", "conversation_id": conversation_id, "messages": messages, "status": status}
            )
        else:  # a conversation the customer's message just opened: what it holds so far, as live frames
            for recorded in past:
                for frame in frames(recorded):
                    await self.send(frame)
        seen = past[-1].version if past else 0
        if past and isinstance(past[-1].event, c.UserMessageReceived) and self._ai_answers:
            await self.send({"type": "typing", "on": True})
        self._follow = asyncio.create_task(self._forward(watch, seen, stream))

    async def _forward(self, watch: Any, seen: int, stream: StreamId) -> None:
        try:
            async for commit in watch:
                for recorded in commit:
                    if recorded.version <= seen:
                        continue
                    seen = recorded.version
                    for frame in frames(recorded):
                        if frame["type"] == "status":
                            self._ai_answers = frame["status"] == "active"
                        await self.send(frame)
                    if isinstance(recorded.event, c.UserMessageReceived) and self._ai_answers:
                        await self.send({"type": "typing", "on": True})
        finally:
            await watch.close()

    async def say(self, text: str, client_id: str | None) -> ChatAck:
        message_id = client_id or uuid.uuid4().hex
        inbound = Inbound(
            channel="webchat",
            address=self.identity.subject,
            user_id=self.identity.subject,
            message_id=message_id,
            text=text,
            at=datetime.now(UTC),
        )
        received = await self.channels.inbox.receive(self.identity.tenant, inbound)
        if received.conversation_id != self.conversation_id:
            await self._switch(received.conversation_id, history=False)
        return ChatAck(id=message_id, conversation_id=received.conversation_id, duplicate=received.duplicate)

    async def close(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follow


class ChatController(Controller):
    path = "/api/v1/chat"
    tags = ["web chat"]

    @post("/sessions", opt=SESSION_MINTERS, status_code=201, summary="Mint a web-chat customer session")
    async def session(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[SessionRequest],
        channels: NamedDependency[ChannelServices],
    ) -> SessionResponse:
        return _session(channels, request.user.tenant, data.customer_id)

    @websocket("/ws", opt=PUBLIC)
    async def socket(self, socket: WebSocket[Any, Any, Any], channels: NamedDependency[ChannelServices]) -> None:
        await socket.accept()
        try:
            identity = channels.customer(socket.query_params.get("token", ""))
        except NotAuthorizedException:
            await socket.close(code=4401, reason="a valid session token is needed")
            return
        lock = asyncio.Lock()

        async def send(frame: dict[str, Any]) -> None:
            async with lock:
                await socket.send_json(frame)

        session = ChatSession(channels, identity, send)
        try:
            await session.open()
            while True:
                frame = await socket.receive_json()
                kind = frame.get("type") if isinstance(frame, dict) else None
                if kind == "message":
                    try:
                        request = msgspec.convert(
                            {"text": frame.get("text"), "id": frame.get("id")}, ChatMessageRequest
                        )
                        ack = await session.say(request.text, request.id)
                        await send({"type": "ack", **msgspec.to_builtins(ack)})
                    except (msgspec.ValidationError, ValidationError) as e:
                        await send({"type": "error", "id": frame.get("id"), "error": str(e)})
                    except RateLimited as e:
                        await send({"type": "error", "id": frame.get("id"), "error": e.message})
                elif kind == "ping":
                    await send({"type": "pong"})
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            await session.close()

    @get(
        "/events",
        opt=PUBLIC,
        summary="Web chat over server-sent events (where websockets are blocked)",
        media_type="text/event-stream",
    )
    async def events(
        self, request: Request[Any, Any, Any], channels: NamedDependency[ChannelServices]
    ) -> ServerSentEvent:
        identity = channels.customer(request.query_params.get("token", ""))
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)

        async def send(frame: dict[str, Any]) -> None:
            await queue.put(frame)

        session = ChatSession(channels, identity, send)
        await session.open()
        contact_watch = _contact_watcher(channels, identity, session)

        async def messages() -> AsyncIterator[ServerSentEventMessage]:
            task = asyncio.create_task(contact_watch)
            try:
                while True:
                    frame = await queue.get()
                    yield ServerSentEventMessage(data=msgspec.json.encode(frame).decode(), event=frame["type"])
            finally:
                task.cancel()
                await session.close()

        return ServerSentEvent(messages())

    @post("/messages", opt=CUSTOMERS, status_code=202, summary="Send a web chat message (with the SSE fallback)")
    async def message(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[ChatMessageRequest],
        channels: NamedDependency[ChannelServices],
    ) -> ChatAck:
        identity = request.user
        if not is_customer(identity):
            raise PermissionDeniedException("web chat messages come from customers")
        await channels.limits.take([channels.limits.tenant_bucket(identity.tenant)])
        session = ChatSession(channels, identity, _discard)
        message_id = data.id or uuid.uuid4().hex
        inbound = Inbound(
            channel="webchat",
            address=identity.subject,
            user_id=identity.subject,
            message_id=message_id,
            text=data.text,
            at=datetime.now(UTC),
        )
        received = await session.channels.inbox.receive(identity.tenant, inbound)
        return ChatAck(id=message_id, conversation_id=received.conversation_id, duplicate=received.duplicate)


async def _discard(frame: dict[str, Any]) -> None:
    return None


async def _contact_watcher(channels: ChannelServices, identity: Identity, session: ChatSession) -> None:
    """Follow the customer's contact: when a message (posted apart) opens a conversation, switch to it."""
    stream = StreamId(identity.tenant, ch.CONTACT_TYPE, ch.contact_id("webchat", identity.subject))
    watch = await channels.store.watch(stream.subjects)
    try:
        async for commit in watch:
            for recorded in commit:
                if isinstance(recorded.event, ch.ContactConversationOpened):
                    await session._switch(recorded.event.conversation_id, history=True)
    finally:
        await watch.close()


class ChatPages(Controller):
    path = "/chat"
    tags = ["web chat"]
    include_in_schema = False
    opt = PUBLIC

    @get("/widget.js", media_type="application/javascript", cache_control=None)
    async def widget(self) -> Response[bytes]:
        return Response(
            WIDGET.read_bytes(), media_type="application/javascript", headers={"Cache-Control": "max-age=300"}
        )

    @get("/demo", media_type="text/html")
    async def demo(self, channels: NamedDependency[ChannelServices]) -> Response[bytes]:
        if channels.demo_key is None:
            raise NotFoundError("the chat demo is off")
        return Response(DEMO_PAGE.read_bytes(), media_type="text/html")

    @post("/demo/session", status_code=201)
    async def demo_session(
        self, request: Request[Any, Any, Any], channels: NamedDependency[ChannelServices]
    ) -> SessionResponse:
        """The demo site's backend: it holds an API key and mints its visitor's session with it."""
        if channels.demo_key is None:
            raise NotFoundError("the chat demo is off")
        holder = await channels.api_keys.authenticate(channels.demo_key, datetime.now(UTC))
        if holder is None or "chat_sessions" not in holder.roles:
            raise PermissionDeniedException("the demo site's key cannot mint sessions")
        return _session(channels, holder.tenant, None)  # a new visitor (the widget keeps its session)
