"""What a process needs to know to take and place calls, read once from the environment.

- ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET`` (and ``LIVEKIT_SIP_OUTBOUND_TRUNK``):
  calls go out through LiveKit SIP, and ``up`` starts the LiveKit worker (``voice_worker``);
- ``TWILIO_AUTH_TOKEN``: Twilio's webhook signature is checked;
- ``PARLEY_VOICE_NUMBERS`` (``+15550001111=acme,+15550002222=globex``): the tenant of a called number;
- ``PARLEY_VOICE_CONFIG``: the voicebot config an inbound call uses (default ``voice-bot``);
- ``PARLEY_RECORDINGS_URL``: where recordings go (``s3://bucket/prefix?endpoint_url=...``), else the
  data directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from commands.call import Telephony
from gateways.telephony.recordings import RecordingStore, recording_store
from streams.keys import KeyStore

DEFAULT_VOICE_CONFIG = "voice-bot"


class VoiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    livekit_url: str | None = None
    livekit_api_key: str | None = None
    livekit_api_secret: str | None = None
    sip_outbound_trunk: str = ""
    twilio_auth_token: str | None = None
    numbers: dict[str, str] = {}
    default_config: str = DEFAULT_VOICE_CONFIG
    recordings_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VoiceSettings:
        return cls(
            livekit_url=env.get("LIVEKIT_URL") or None,
            livekit_api_key=env.get("LIVEKIT_API_KEY") or None,
            livekit_api_secret=env.get("LIVEKIT_API_SECRET") or None,
            sip_outbound_trunk=env.get("LIVEKIT_SIP_OUTBOUND_TRUNK", ""),
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
            numbers=called_numbers(env.get("PARLEY_VOICE_NUMBERS", "")),
            default_config=env.get("PARLEY_VOICE_CONFIG") or DEFAULT_VOICE_CONFIG,
            recordings_url=env.get("PARLEY_RECORDINGS_URL") or None,
        )

    @property
    def livekit(self) -> bool:
        return bool(self.livekit_url and self.livekit_api_key and self.livekit_api_secret)

    def telephony(self) -> Telephony | None:
        """LiveKit SIP when a LiveKit server is configured; None: calls come in over Twilio only."""
        if not self.livekit:
            return None
        from gateways.telephony.livekit_sip import LiveKitSip

        return LiveKitSip(
            self.livekit_url or "",
            self.livekit_api_key or "",
            self.livekit_api_secret or "",
            trunk_id=self.sip_outbound_trunk,
        )

    def recordings(self, data_dir: Path, keys: KeyStore) -> RecordingStore:
        return recording_store(self.recordings_url or str(Path(data_dir) / "recordings"), keys)

    def tenant_of(self, called: str) -> str | None:
        """The tenant a called number belongs to (digits compared: ``+1 555-000-1111`` is ``+15550001111``)."""
        wanted = _digits(called)
        return next((tenant for number, tenant in self.numbers.items() if wanted and _digits(number) == wanted), None)


def called_numbers(spec: str) -> dict[str, str]:
    """``+15550001111=acme,+15550002222=globex``: which tenant a called number belongs to."""
    pairs = (item.split("=", 1) for item in spec.split(",") if "=" in item)
    return {number.strip(): tenant.strip() for number, tenant in pairs if number.strip() and tenant.strip()}


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())
