"""``./parley call "I want to check my order" "ORD-78945" ...``: a phone call in a terminal.

Plays a caller over the Twilio path against the running platform: asks its Twilio webhook for
TwiML (signed like Twilio when ``TWILIO_AUTH_TOKEN`` is set), opens the media stream it names, and
speaks each argument with espeak-ng (``wav:FILE`` plays a file, ``dtmf:78945#`` presses keys,
``!words`` talks over the agent). An identifier such as ``ORD-78945`` is typed on the keypad
(``78945#``), as IVR callers do: the agent reads the digits as the identifier it just asked for.
The live transcript is printed as it happens (the transcript websocket) and the agent's audio is
saved to a WAV file. Once the call is over, it prints what the platform shows of it: the call's
status and stored transcript, its recordings (fetched), the voice analytics with the call counted,
and its history turn by turn with the config version of each.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import websockets

from gateways.telephony.phone import Phone, Turn, save_wav
from gateways.telephony.twilio import call_id_for

IDENTIFIER = re.compile(r"^([A-Z]{2,5})-(\d+)$")


def turns(items: list[str]) -> list[Turn]:
    out: list[Turn] = []
    for item in items:
        if m := IDENTIFIER.match(item.strip()):
            out.append(Turn(keys=f"{m.group(2)}#"))  # typed: the agent asked for it, prefix and all
        else:
            out.append(Turn.parse(item))
    return out


def signature(token: str, url: str, params: dict[str, str]) -> str:
    payload = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


async def call(
    api: str, token: str, items: list[str], out: Path, tenant: str, number: str, speed: float, agent: str | None = None
) -> int:
    call_sid = "CA" + uuid.uuid4().hex
    if agent:
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
            await register_agent(http, api, agent)
    form = {"CallSid": call_sid, "From": number, "To": "+15550000000", "AccountSid": "AC" + "0" * 32}
    url = f"{api}/api/v1/voice/twilio/inbound"
    headers = {"X-Tenant-Slug": tenant}
    if twilio := os.environ.get("TWILIO_AUTH_TOKEN"):
        headers["X-Twilio-Signature"] = signature(twilio, url, form)
    async with httpx.AsyncClient(timeout=30) as http:
        answered = await http.post(url, data=form, headers=headers)
    if answered.status_code != 200 or "<Stream" not in answered.text:
        print(f"the platform did not answer the call: {answered.status_code} {answered.text[:300]}", file=sys.stderr)
        return 1
    stream_url = re.search(r'url="([^"]+)"', answered.text).group(1)  # type: ignore[union-attr]
    parameters = dict(re.findall(r'<Parameter name="([^"]+)" value="([^"]*)"', answered.text))
    call_id = call_id_for(tenant, call_sid)
    print(f"call {call_id} ({number} -> {tenant})")
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        before = await _analytics_before(http, api)
    ws_api = api.replace("http", "ws", 1)
    greeted = asyncio.Event()
    async with websockets.connect(stream_url, max_size=None) as media:

        async def send(message: dict[str, Any]) -> None:
            await media.send(json.dumps(message))

        async def receive() -> dict[str, Any] | None:
            try:
                return json.loads(await media.recv())  # type: ignore[no-any-return]
            except websockets.ConnectionClosed:
                return None

        phone = Phone(send, receive, parameters=parameters, call_sid=call_sid, from_number=number, speed=speed,
                      on_agent_audio=greeted.set)  # fmt: skip
        calling = asyncio.create_task(phone.call(turns(items)))
        await asyncio.wait_for(greeted.wait(), 60)
        printer = asyncio.create_task(print_transcript(f"{ws_api}/api/v1/voice/calls/{call_id}/transcript", token))
        record = await calling
        try:
            await asyncio.wait_for(printer, 15)
        except TimeoutError:
            printer.cancel()
    save_wav(out, bytes(record.agent_audio))
    latencies = ", ".join(f"{s * 1000:.0f} ms" for s in record.turn_latencies)
    print(f"agent audio: {out} ({len(record.agent_audio) / 16000:.1f} s); turn latencies: {latencies or '-'}")
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        await report(http, api, call_id, before)
    return 0


async def register_agent(http: httpx.AsyncClient, api: str, name: str) -> None:
    """A human agent in the tenant's pool, available, to take a transfer (already there: made available)."""
    agent_id = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "agent"
    made = await http.post(f"{api}/api/v1/orchestration/agents",
                           json={"name": name, "agent_id": agent_id, "role": "Support"})  # fmt: skip
    online = await http.post(f"{api}/api/v1/orchestration/agents/{agent_id}/availability", json={"available": True})
    if online.status_code != 200:
        print(f"could not register agent {name}: {made.status_code} {made.text[:200]}; {online.text[:200]}",
              file=sys.stderr)  # fmt: skip
    else:
        print(f"human agent {name} ({agent_id}) is available for transfers")


async def report(http: httpx.AsyncClient, api: str, call_id: str, before: tuple[float, float] | None) -> None:
    """What the platform now shows of the call: its status and transcript, its recordings (fetched),
    the voice analytics with it counted, and its history turn by turn with the config versions."""
    base = f"{api}/api/v1/voice"
    status: dict[str, Any] = {}
    for _ in range(100):  # the read model catches up with the call's end and its recordings
        status = (await http.get(f"{base}/calls/{call_id}")).json()
        if status.get("status") == "ended" and status.get("recordings"):
            break
        await asyncio.sleep(0.2)
    transfer = status.get("transfer") or {}
    print(f"\n== status (GET /api/v1/voice/calls/{call_id})")
    print(f"status: {status.get('status')}, resolution: {status.get('resolution_status')}, "
          f"duration: {status.get('duration_seconds')} s, config: {status.get('config_id')} "
          f"v{status.get('config_version')}, sentiment: {status.get('sentiment_score')}")  # fmt: skip
    print(f"tools executed: {', '.join(t['tool'] for t in status.get('tools_executed', [])) or '-'}")
    print(f"transfer: {transfer.get('status', '-')} to {transfer.get('agent_name') or transfer.get('agent_id') or '-'}"
          f" ({transfer.get('transfer_type', '-')}, {transfer.get('reason') or '-'})")  # fmt: skip
    print("transcript:")
    for line in status.get("transcript", []):
        confidence = f"  [{line['confidence']}]" if line.get("confidence") is not None else ""
        source = f" ({line['source']})" if line.get("source") else ""
        print(f"  {line['speaker']}{source}: {line.get('text')}{confidence}")
    print("recordings:")
    for recording in status.get("recordings", []):
        fetched = await http.get(f"{api}{recording['url']}")
        kind = fetched.headers.get("content-type", "?")
        print(f"  {recording['track']}: {api}{recording['url']}  ({recording['duration_seconds']} s; "
              f"GET {fetched.status_code} {kind}, {len(fetched.content):,} bytes)")  # fmt: skip
    analytics: dict[str, Any] = {}
    for _ in range(100):  # the analytics projection counts the call, and its end (duration, cost)
        analytics = (await http.get(f"{base}/analytics")).json()
        if before is None or all(now > then for now, then in zip(_analytics_figures(analytics), before, strict=True)):
            break
        await asyncio.sleep(0.2)
    latency = (analytics.get("performance_metrics") or {}).get("latency_ms") or {}
    stages = ", ".join(f"{stage} {v.get('p50')}/{v.get('p95')}" for stage, v in latency.items())
    breakdown = analytics.get("call_breakdown") or {}
    cost = analytics.get("cost_analysis") or {}
    reasons = ", ".join(f"{r['reason']} ({r['count']})" for r in analytics.get("top_escalation_reasons", []))
    print("\n== voice analytics (GET /api/v1/voice/analytics)")
    print(f"calls: {analytics.get('total_calls')} ({breakdown.get('inbound')} in, {breakdown.get('outbound')} out), "
          f"avg duration {round(float(analytics.get('avg_call_duration_seconds') or 0), 1)} s, "
          f"completion {analytics.get('completion_rate')}, "
          f"transfer {analytics.get('transfer_rate')}, resolution {analytics.get('resolution_rate')}")  # fmt: skip
    print(f"latency p50/p95 ms: {stages or '-'}")
    print(f"cost: {cost.get('total_cost')} total, {cost.get('cost_per_call')} per call {cost.get('breakdown')}; "
          f"escalation reasons: {reasons or '-'}")  # fmt: skip
    history = (await http.get(f"{base}/calls/{call_id}/history")).json()
    print(f"\n== history (GET /api/v1/voice/calls/{call_id}/history)")
    for turn in history.get("turns", []):
        said = f"caller ({turn['source']}): {turn['text']}" if turn.get("utterance_id") else "(the agent first)"
        print(f"  turn {turn['turn']} [{turn['config_id']} v{turn['config_version']}, "
              f"active v{turn.get('active_config_version')}] {said}")  # fmt: skip
        for tool in turn.get("tools", []):
            print(f"      tool {tool['tool']}: {'ok' if tool['ok'] else tool.get('error')}")
        for reply in turn.get("replies", []):
            print(f"      agent: {reply['text']}")


async def _analytics_before(http: httpx.AsyncClient, api: str) -> tuple[float, float] | None:
    with contextlib.suppress(Exception):
        return _analytics_figures((await http.get(f"{api}/api/v1/voice/analytics")).json())
    return None


def _analytics_figures(analytics: dict[str, Any]) -> tuple[float, float]:
    """Calls counted, and their cost (counted when a call ends): both grow once a call is in whole."""
    cost = (analytics.get("cost_analysis") or {}).get("total_cost") or 0
    return float(analytics.get("total_calls") or 0), float(cost)


async def print_transcript(url: str, token: str) -> None:
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as live:
        async for raw in live:
            message = json.loads(raw)
            match message.get("event"):
                case "transcript_final":
                    source = " (keypad)" if message.get("source") == "dtmf" else ""
                    print(f"  caller{source}: {message.get('text')}  [{message.get('confidence')}]")
                case "agent_response":
                    tools = ", ".join(t["tool"] for t in message.get("tool_calls", []))
                    cut = " (interrupted)" if message.get("interrupted") else ""
                    print(f"  agent{cut}: {message.get('text')}" + (f"  [tools: {tools}]" if tools else ""))
                case "transfer":
                    print(f"  -- transfer {message.get('status')} {message.get('target_agent_id') or ''}")
                case "call_ended":
                    print(f"  -- call ended: {message.get('resolution_status')}")
                    return


def main() -> int:
    parser = argparse.ArgumentParser(prog="parley call", description=__doc__.split("\n\n")[0])
    parser.add_argument("turns", nargs="+", help='what the caller says, in order ("dtmf:123#", "wav:file.wav")')
    parser.add_argument(
        "--api",
        default=os.environ.get("PARLEY_API_URL", f"http://127.0.0.1:{os.environ.get('PARLEY_API_PORT', '8000')}"),
    )
    parser.add_argument("--token", default=os.environ.get("PARLEY_TOKEN"))
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--from", dest="number", default="+15551234567")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("PARLEY_DATA", ".data")) / "call-agent.wav")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--agent", help="register this human agent (available) before the call, to take a transfer")
    args = parser.parse_args()
    token = args.token
    if not token:
        from infra.platform import data_root, jwt_secret
        from infra.tokens import make_token

        token = make_token(jwt_secret(data_root()), subject="dev", tenant=args.tenant, roles=["org_admin"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return asyncio.run(
        call(args.api.rstrip("/"), token, args.turns, args.out, args.tenant, args.number, args.speed, args.agent)
    )


if __name__ == "__main__":
    sys.exit(main())
