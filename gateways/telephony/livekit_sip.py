"""LiveKit SIP: dialing out and transferring calls through livekit-api's Twirp services.

- ``dial``: ``CreateDispatch`` sends the voice worker registered with the same server (the agent
  ``parley``, explicit dispatch) to the call's room (``call-<call id>``), with the call in the job's
  metadata; then ``CreateSIPParticipant`` puts the callee in that room through the outbound trunk.
- ``transfer`` cold: ``TransferSIPParticipant`` (a SIP REFER: the caller leaves the room for the
  human's number); a status other than successful is a failure even when nothing was raised.
- ``transfer`` hot and warm: the human is dialed into a consultation room (``<room>-human``,
  ``wait_until_answered``), hears the summary there (``brief``: the voice worker holding the call
  speaks it into that room, ``voice_worker.worker.ConsultBriefing``; it is also sent to the room as
  ``parley.call_summary`` data), then is moved into the caller's room (``MoveParticipant``). A SIP
  error (busy, no answer) fails the transfer with its status; a briefing that fails does not.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog
from google.protobuf.duration_pb2 import Duration
from livekit import api
from livekit.protocol import agent_dispatch as dispatch_proto
from livekit.protocol import models as models_proto
from livekit.protocol import room as room_proto
from livekit.protocol import sip as sip_proto

from commands.call import Connected, Dialed
from domain import call as v

log = structlog.get_logger(__name__)

AGENT_NAME = "parley"  # the voice worker's name with the LiveKit server (explicit dispatch)

Brief = Callable[[str, str, str], Awaitable[None]]  # consultation room, the human's identity, the summary


def room_name(call_id: str) -> str:
    return f"call-{call_id}"


def caller_identity(call_id: str) -> str:
    return f"caller-{call_id}"


def call_metadata(tenant: str, call_id: str) -> str:
    """What the worker's job says about the room's call (its dispatch metadata)."""
    return json.dumps({"parley.tenant": tenant, "parley.call_id": call_id})


class LiveKitSip:
    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str,
        *,
        trunk_id: str,
        ringing_timeout: float = 30.0,
        brief: Brief | None = None,
    ) -> None:
        self.url, self.api_key, self.api_secret = url, api_key, api_secret
        self.trunk_id = trunk_id
        self.ringing_timeout = ringing_timeout
        self.brief = brief  # speaks the summary to the human in the consultation room, before the move

    def _api(self) -> api.LiveKitAPI:
        return api.LiveKitAPI(url=self.url, api_key=self.api_key, api_secret=self.api_secret)

    async def dial(self, tenant: str, call_id: str, phone_number: str, caller_id: str | None) -> Dialed:
        request = sip_proto.CreateSIPParticipantRequest(
            sip_trunk_id=self.trunk_id,
            sip_call_to=phone_number,
            sip_number=caller_id or "",
            room_name=room_name(call_id),
            participant_identity=caller_identity(call_id),
            participant_name="Caller",
            participant_attributes={"parley.tenant": tenant, "parley.call_id": call_id},
            play_dialtone=False,
        )
        lk = self._api()
        try:
            await lk.agent_dispatch.create_dispatch(
                dispatch_proto.CreateAgentDispatchRequest(
                    agent_name=AGENT_NAME, room=room_name(call_id), metadata=call_metadata(tenant, call_id)
                )
            )
            info = await lk.sip.create_sip_participant(request)
        finally:
            await lk.aclose()
        return Dialed(
            sip_session_id=info.sip_call_id, room_name=info.room_name, participant_identity=info.participant_identity
        )

    async def transfer(
        self, tenant: str, call: v.Call, transfer: v.TransferRequested, target: str, summary: str
    ) -> Connected:
        lk = self._api()
        try:
            if transfer.transfer_type == "cold":
                return await self._cold(lk, call, target)
            return await self._consult_then_move(lk, call, transfer, target, summary)
        except api.SipCallError as e:
            log.warning("sip.transfer_failed", call_id=call.call_id, status=e.sip_status_code, error=str(e))
            status = None if e.sip_status_code is None else str(e.sip_status_code)
            return Connected(ok=False, reason=e.sip_status or str(e.message), sip_status=status)
        except api.TwirpError as e:
            return Connected(ok=False, reason=f"{e.code}: {e.message}")
        finally:
            await lk.aclose()

    async def _cold(self, lk: api.LiveKitAPI, call: v.Call, target: str) -> Connected:
        response = await lk.sip.transfer_sip_participant(
            sip_proto.TransferSIPParticipantRequest(
                participant_identity=caller_identity(call.call_id),
                room_name=room_name(call.call_id),
                transfer_to=target,
                play_dialtone=True,
            )
        )
        if response.status != sip_proto.STS_TRANSFER_SUCCESSFUL:
            # Both are protobuf values: the reason an enum (STR_REJECTED: "rejected"), the status a message.
            reasons = {
                n: name.removeprefix("STR_").lower().replace("_", " ")
                for name, n in sip_proto.SIPTransferReason.items()
            }
            reason = reasons.get(response.reason, "") if response.reason != sip_proto.STR_UNSPECIFIED else ""
            code = response.sip_status.code if response.HasField("sip_status") else 0
            return Connected(
                ok=False, reason=reason or "transfer not completed", sip_status=str(code) if code else None
            )
        return Connected(ok=True)

    async def _consult_then_move(
        self, lk: api.LiveKitAPI, call: v.Call, transfer: v.TransferRequested, target: str, summary: str
    ) -> Connected:
        consult = f"{room_name(call.call_id)}-human"
        human = f"human-{transfer.agent_id or transfer.transfer_id}"
        await lk.sip.create_sip_participant(
            sip_proto.CreateSIPParticipantRequest(
                sip_trunk_id=self.trunk_id,
                sip_call_to=target,
                room_name=consult,
                participant_identity=human,
                participant_name=transfer.agent_name or "Agent",
                wait_until_answered=True,
                ringing_timeout=_duration(self.ringing_timeout),
            )
        )
        await lk.room.send_data(
            room_proto.SendDataRequest(
                room=consult,
                data=summary.encode(),
                kind=models_proto.DataPacket.Kind.RELIABLE,
                topic="parley.call_summary",
            )
        )
        if self.brief is not None and summary.strip():
            try:
                await self.brief(consult, human, summary)
            except Exception as e:  # the human takes the call unbriefed rather than not at all
                log.warning("sip.briefing_failed", call_id=call.call_id, error=str(e))
        await lk.room.move_participant(
            room_proto.MoveParticipantRequest(room=consult, identity=human, destination_room=room_name(call.call_id))
        )
        return Connected(ok=True)


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration
