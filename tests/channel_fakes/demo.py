"""``./parley channels-demo``: WhatsApp, SMS and email conversations on the platform ``./parley up``
started, through local servers speaking each provider's protocol.

It starts the local Graph API, Twilio and SMTP relay on the ports the local platform sends to
(``gateways.channels.settings.LOCAL_ENDPOINTS``), sets the demo tenant's channels up through the
API, and then, as three customers: writes on WhatsApp (a signed webhook), texts by SMS (a signed
Twilio webhook) and sends an email to the platform's SMTP server; prints each bot reply as the
provider received it; then a human agent takes the SMS conversation and answers, and that reply is
printed as Twilio got it. The providers' status callbacks go to the platform as they would.
With ``--serve`` the provider servers stay up afterwards (Ctrl-C to stop).
"""

from __future__ import annotations

import argparse
import asyncio
import email.message
import email.utils
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx

from gateways.channels.settings import LOCAL_ENDPOINTS, LOCAL_SMTP_PORT
from infra.platform import data_root, jwt_secret
from infra.tokens import make_token
from tests.channel_fakes.providers import FakeGraph, FakeTwilio, SmtpRelay

TENANT = os.environ.get("PARLEY_DEMO_TENANT", "demo")
API = f"http://127.0.0.1:{os.environ.get('PARLEY_API_PORT', '8000')}"
NUMBER = "+15550001111"


def port_of(url: str) -> int:
    return int(url.rpartition(":")[2])


async def wait_for(what: str, check: Any, within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if found := check():
            return found
        await asyncio.sleep(0.2)
    raise SystemExit(f"no {what} within {within:.0f} s: is the platform up (./parley up) with its agent runtime?")


async def main(serve: bool) -> None:
    secret = jwt_secret(Path(data_root()))
    admin = {"Authorization": "Bearer " + make_token(secret, subject="admin", tenant=TENANT, roles=["org_admin"])}
    sarah = {"Authorization": "Bearer " + make_token(secret, subject="sarah", tenant=TENANT, roles=["support_agent"])}
    graph = FakeGraph(access_token="demo-wa-token", app_secret="demo-app-secret", tenant=TENANT, phone_number_id="1055")
    twilio = FakeTwilio(account_sid="AC" + "d" * 32, auth_token="demo-twilio-token", public_url=API)
    relay = SmtpRelay(port=port_of(LOCAL_ENDPOINTS["email"]))
    await graph.start(port_of(LOCAL_ENDPOINTS["whatsapp"]))
    await twilio.start(port_of(LOCAL_ENDPOINTS["sms"]))
    await relay.start()
    for server in (graph, twilio):
        server.deliver_to = API  # their status callbacks reach the platform
    async with httpx.AsyncClient(base_url=API, timeout=30) as api:
        try:
            (await api.get("/health")).raise_for_status()
        except httpx.HTTPError:
            raise SystemExit(f"the platform does not answer at {API}: ./parley up first") from None
        wa = {"access_token": graph.access_token, "app_secret": graph.app_secret, "verify_token": "demo-verify"}
        sms = {"account_sid": twilio.account_sid, "auth_token": twilio.auth_token}
        for channel, body in (
            ("whatsapp", {"sender": graph.phone_number_id, "credentials": wa}),
            ("sms", {"sender": NUMBER, "credentials": sms}),
            ("email", {"sender": "support@demo.test"}),
        ):
            response = await api.put(
                f"/api/v1/channels/{channel}", json={"config_id": "support-bot", **body}, headers=admin
            )
            response.raise_for_status()
            view = response.json()
            print(f"{channel:9} set up; webhook {view['webhook_url'] or view['inbound_address']}")

        print("\nWhatsApp: Ana writes 'Where is my order ORD-78945?'")
        hook = graph.customer_writes("34600111222", "Where is my order ORD-78945?")
        (await api.post(hook.path, content=hook.body, headers=hook.headers)).raise_for_status()
        sent = await wait_for("WhatsApp reply", lambda: graph.sent)
        print(f"  Graph API got: {sent[0].get('text', sent[0].get('template'))}")

        print("\nSMS: Bob texts 'What's the status of ORD-12345?'")
        hook = twilio.customer_texts(TENANT, "+34600333444", NUMBER, "What's the status of ORD-12345?")
        (await api.post(hook.path, content=hook.body, headers=hook.headers)).raise_for_status()
        texts = await wait_for("SMS reply", lambda: twilio.sent_to("+34600333444"))
        print(f"  Twilio got: {texts[0]}")

        print("\nEmail: Carla writes to demo@127.0.0.1:2525 'Order ORD-78945'")
        msg = email.message.EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "Carla <carla@example.com>", f"{TENANT}@demo.test", "Order ORD-78945"
        msg["Message-ID"] = email.utils.make_msgid(domain="example.com")
        msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
        msg.set_content("Hello, where is my order ORD-78945?")
        await aiosmtplib.send(msg, hostname="127.0.0.1", port=LOCAL_SMTP_PORT)
        mails = await wait_for("email reply", lambda: relay.messages)
        reply = mails[0]
        print(f"  the SMTP relay got: {reply['Subject']!r} In-Reply-To {reply['In-Reply-To']}")
        print("  " + reply.get_body().get_content().strip().replace("\n", "\n  "))  # type: ignore[union-attr]

        print("\nA human agent answers Bob on SMS:")
        contact = await api.get(
            "/api/v1/orchestration/conversations", params={"channel": "sms", "status": "active"}, headers=sarah
        )
        cid = contact.json()["conversations"][0]["conversation_id"]
        await api.post("/api/v1/orchestration/agents", json={"name": "Sarah", "agent_id": "sarah"}, headers=sarah)
        await api.post("/api/v1/orchestration/agents/sarah/availability", json={"available": True}, headers=sarah)
        escalated = await api.post(
            f"/api/v1/orchestration/conversations/{cid}/escalate", json={"trigger": "demo"}, headers=sarah
        )
        escalated.raise_for_status()
        for _ in range(50):
            answer = await api.post(
                f"/api/v1/orchestration/conversations/{cid}/agent-replies",
                json={"message": "Hi Bob, Sarah here: I'm on it."},
                headers=sarah,
            )
            if answer.status_code < 300:
                break
            await asyncio.sleep(0.2)
        texts = await wait_for("the agent's SMS", lambda: [t for t in twilio.sent_to("+34600333444") if "Sarah" in t])
        print(f"  Twilio got: {texts[0]}")
        # Sarah closes it: Bob's next text (another run of this demo) opens a new conversation
        escalation_id = escalated.json()["escalation_id"]
        closed = await api.post(
            f"/api/v1/orchestration/conversations/{cid}/escalations/{escalation_id}/resolve",
            json={"resolution": "closed"},
            headers=sarah,
        )
        closed.raise_for_status()
        print("  Sarah closed the conversation")
    if serve:
        print("\nprovider servers up (Ctrl-C to stop)")
        await asyncio.Event().wait()
    for server in (graph, twilio, relay):
        await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="keep the provider servers up afterwards")
    asyncio.run(main(parser.parse_args().serve))
