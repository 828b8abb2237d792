"""The channels' settings for a process, read once at the composition root."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

# Where each provider is: ``PARLEY_<NAME>_URL`` (tests and the demo point them at local servers).
ENDPOINT_VARIABLES = {
    "whatsapp": "PARLEY_WHATSAPP_URL",
    "sms": "PARLEY_TWILIO_URL",
    "email": "PARLEY_SMTP_RELAY",
    "tiktok": "PARLEY_TIKTOK_URL",
    "linkedin": "PARLEY_LINKEDIN_URL",
}


# The local provider servers of the platform ``./parley up`` starts (``./parley channels-demo``).
LOCAL_ENDPOINTS = {
    "whatsapp": "http://127.0.0.1:8701",
    "sms": "http://127.0.0.1:8702",
    "tiktok": "http://127.0.0.1:8703",
    "linkedin": "http://127.0.0.1:8704",
    "email": "smtp://127.0.0.1:8725",
}
LOCAL_SMTP_PORT = 2525


class ChannelOptions(msgspec.Struct, frozen=True, kw_only=True):
    # The platform's public base URL (webhooks' addresses; what providers sign). "": the request's own.
    public_url: str = ""
    # Provider base URLs by channel ("": the real provider's).
    endpoints: dict[str, str] = {}
    # Deliver replies through the providers from this process (the outbox).
    run_outbox: bool = True
    # The inbound SMTP server's port (None: no inbound email in this process; 0: a free port).
    smtp_port: int | None = None
    smtp_host: str = "127.0.0.1"
    # The outbox's retry schedule (seconds) and how long an attempt may wait for its answer.
    backoff: tuple[float, ...] = (1.0, 4.0, 15.0, 60.0)
    attempt_timeout: float = 30.0
    sweep_every: float = 5.0
    # Web-chat customer sessions: how long a session token lasts.
    session_hours: float = 12.0
    # The web-chat demo page (/chat/demo) for the first demo tenant, with an API key of its own.
    demo_page: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, local: bool = False) -> ChannelOptions:
        """``local``: the platform ``./parley up`` starts, whose providers are the local servers of
        ``./parley channels-demo`` on fixed ports (``LOCAL_ENDPOINTS``), unless set otherwise."""
        env = os.environ if env is None else env
        endpoints = dict(LOCAL_ENDPOINTS) if local else {}
        endpoints |= {name: env[var] for name, var in ENDPOINT_VARIABLES.items() if env.get(var)}
        smtp = env.get("PARLEY_SMTP_PORT") or (str(LOCAL_SMTP_PORT) if local else None)
        public = f"http://127.0.0.1:{env.get('PARLEY_API_PORT', '8000')}" if local else ""
        return cls(
            public_url=env.get("PARLEY_PUBLIC_URL", public).rstrip("/"),
            endpoints=endpoints,
            run_outbox=env.get("PARLEY_OUTBOX", "1") not in ("0", "false", ""),
            smtp_port=int(smtp) if smtp else None,
            demo_page=env.get("PARLEY_CHAT_DEMO", "") in ("1", "true", "yes"),
        )
