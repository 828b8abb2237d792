"""LiveKit's Twirp API (``POST /twirp/livekit.<Service>/<Method>``, protobuf bodies, a Bearer JWT
signed with the API secret), as far as Parley's SIP calls need: agent dispatches, SIP participants
and transfers, moving participants and sending data. Each request is kept, decoded, with the grants of its token."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from livekit import api
from livekit.protocol import agent_dispatch as dispatch_proto
from livekit.protocol import room as room_proto
from livekit.protocol import sip as sip_proto

REQUESTS: dict[str, tuple[type[Any], type[Any]]] = {
    "AgentDispatchService/CreateDispatch": (dispatch_proto.CreateAgentDispatchRequest, dispatch_proto.AgentDispatch),
    "SIP/CreateSIPParticipant": (sip_proto.CreateSIPParticipantRequest, sip_proto.SIPParticipantInfo),
    "SIP/TransferSIPParticipant": (sip_proto.TransferSIPParticipantRequest, sip_proto.TransferSIPParticipantResponse),
    "RoomService/MoveParticipant": (room_proto.MoveParticipantRequest, room_proto.MoveParticipantResponse),
    "RoomService/SendData": (room_proto.SendDataRequest, room_proto.SendDataResponse),
}


@dataclass
class TwirpFake:
    api_key: str = "devkey"
    api_secret: str = "devsecret-devsecret-devsecret-devsecret"
    calls: list[tuple[str, Any, Any]] = field(default_factory=list)  # (method, request, grants)
    failures: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    transfer_status: int = sip_proto.STS_TRANSFER_SUCCESSFUL
    url: str = ""
    _runner: web.AppRunner | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    async def start(self) -> str:
        """Serve on a thread of its own (the API under test may run its loop where this one waits)."""
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        caller = asyncio.get_running_loop()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            url = loop.run_until_complete(self._start())
            caller.call_soon_threadsafe(ready.set_result, url)
            loop.run_forever()
            loop.run_until_complete(self._cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="twirp-fake", daemon=True)
        self._thread.start()
        return await ready

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)  # type: ignore[union-attr]

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_post("/twirp/livekit.{service}/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def methods(self) -> list[str]:
        return [method for method, _, _ in self.calls]

    async def _handle(self, request: web.Request) -> web.Response:
        name = f"{request.match_info['service']}/{request.match_info['method']}"
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            claims = api.TokenVerifier(self.api_key, self.api_secret).verify(token)
        except Exception:
            return web.json_response({"code": "unauthenticated", "msg": "bad token"}, status=401)
        if name not in REQUESTS or request.content_type != "application/protobuf":
            return web.json_response({"code": "bad_route", "msg": name}, status=404)
        request_type, response_type = REQUESTS[name]
        message = request_type()
        message.ParseFromString(await request.read())
        self.calls.append((name, message, claims))
        if name in self.failures:
            status, body = self.failures.pop(name)
            return web.json_response(body, status=status)
        response = response_type()
        if name == "SIP/CreateSIPParticipant":
            response = sip_proto.SIPParticipantInfo(
                participant_id="PA_" + message.participant_identity, participant_identity=message.participant_identity,
                room_name=message.room_name, sip_call_id="SCL_" + message.room_name,
            )  # fmt: skip
        elif name == "AgentDispatchService/CreateDispatch":
            response = dispatch_proto.AgentDispatch(
                id="AD_" + message.room, agent_name=message.agent_name, room=message.room, metadata=message.metadata
            )
        elif name == "SIP/TransferSIPParticipant":
            response = sip_proto.TransferSIPParticipantResponse(transfer_id="TR_1", status=self.transfer_status)
        return web.Response(body=response.SerializeToString(), content_type="application/protobuf")
