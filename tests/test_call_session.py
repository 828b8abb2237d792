"""Calls through the real LiveKit ``AgentSession`` on a Twilio media stream: espeak-ng speech in,
silero VAD, the offline recognizer, Parley's agent with the config's tools, espeak-ng speech out;
every turn an event on the call and the recordings stored encrypted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from domain import call as v
from gateways.telephony.phone import Turn
from gateways.telephony.session import keypad_text
from gateways.telephony.twilio import call_id_for
from streams.factory import OpenStore
from tests.voice_support import VoiceRig, phone_call, voice_rig


@pytest_asyncio.fixture
async def rig(open_test_store: OpenStore, pg_url: str, tmp_path: Path) -> AsyncIterator[VoiceRig]:
    async with voice_rig(open_test_store, pg_url, tmp_path) as r:
        yield r


def of(events: list[object], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


async def test_a_spoken_order_question_runs_the_order_tool_and_the_caller_hears_the_answer(rig: VoiceRig) -> None:
    await rig.register_agent("mike", "Technical Support - Mike")
    record, device = await phone_call(
        rig,
        [Turn("Where is my order?"), Turn(keys="78945#"), Turn("I want to speak to a human")],
        speed=1.5,
    )
    events = await rig.events(call_id_for("acme", device.call_sid))
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["CallInitiated", "CallConnected"], kinds
    spoken = [e.text for e in of(events, v.CallerSpoke)]
    assert any("order" in (t or "").lower() for t in spoken), spoken
    started = of(events, v.ToolCallStarted)
    assert [(s.tool, s.arguments) for s in started][:1] == [("fetch_order_status", {"order_id": "ORD-78945"})], started
    finished = of(events, v.ToolCallFinished)
    assert finished and finished[0].output and finished[0].output["status"] == "in_transit"
    replies = [e.text or "" for e in of(events, v.AgentSpoke)]
    assert any("ORD-78945" in r for r in replies), replies
    # The caller asked for a human: a hot transfer to the pool's agent, the summary for the human.
    transfers = of(events, v.TransferRequested)
    assert transfers and transfers[0].agent_id == "mike" and transfers[0].transfer_type == "hot", (kinds, spoken)
    assert "ORD-78945" in (transfers[0].summary or "")
    assert of(events, v.TransferConnected)
    # The caller heard the agent; both sides are recorded, encrypted; the call ended transferred.
    assert len(record.agent_audio) > 8000 * 2 and record.turn_latencies
    recordings = of(events, v.RecordingStored)
    assert sorted(r.track for r in recordings) == ["agent", "caller"]
    wav = await rig.stack.recordings.open("acme", recordings[0].uri)  # type: ignore[union-attr]
    assert wav[:4] == b"RIFF"
    ended = of(events, v.CallEnded)
    assert ended and ended[0].resolution_status == "transferred" and ended[0].tts_characters > 0
    timed = [e for e in of(events, v.AgentSpoke) if e.e2e_latency_ms is not None]
    assert timed, "per-stage timings are recorded on the agent's turns"


async def test_a_caller_who_talks_over_the_greeting_cuts_it_short_and_is_answered(rig: VoiceRig) -> None:
    record, device = await phone_call(rig, [Turn("I want to check my order", barge_in=True)], speed=1.0)
    events = await rig.events(call_id_for("acme", device.call_sid))
    greeting = (await rig.stack.configs.get("acme", "voice-bot", 1)).templates["general"]
    replies = of(events, v.AgentSpoke)
    # Twilio was told to drop what it had not played (``clear``) ...
    assert record.clears == 1, record
    # ... and the greeting is recorded as far as the caller heard it: a beginning, cut short.
    first = replies[0]
    assert first.interrupted and first.heard_text == first.text, first
    assert first.text and greeting.startswith(first.text.rstrip(".,")) and len(first.text) < len(greeting) / 2, first
    # What the caller said over it was heard and answered, after the cut.
    said = of(events, v.CallerSpoke)
    assert said and "order" in (said[0].text or "").lower(), said
    assert len(replies) == 2 and not replies[1].interrupted and replies[1].in_reply_to == said[0].utterance_id
    assert events.index(said[0]) > events.index(first)


def test_keypad_digits_answer_the_identifier_the_agent_asked_for() -> None:
    asked = "Sure. What's your order number? It starts with O R D."
    assert keypad_text("78945", asked, ("ORD",)) == "ORD-78945"
    assert keypad_text("5551234567", "What number should we call?", ("ORD",)) == "5551234567"
    assert keypad_text("78945", "Your order number starts with ORD.", ("ORD",)) == "ORD-78945"


def test_keypad_digits_after_a_reply_that_says_order_are_not_an_order_number() -> None:
    """The prefix "ORD" as letters, not three letters inside "order": a card number keyed after
    the greeting stays digits (it was "ORD-4111..." and looked up as an order)."""
    greeting = "Hello, this is Parley Shop. I can check an order, start a refund or book a callback. How can I help?"
    assert keypad_text("4111111111111111", greeting, ("ORD",)) == "4111111111111111"
    assert keypad_text("78945", "Sorry, I couldn't find that order.", ("ORD",)) == "78945"
    assert keypad_text("78945", "What are the digits after O R D in your ORDER number?", ("ORD",)) == "ORD-78945"


IVR = """
  ivr_menus:
    - name: main
      prompt: "Welcome to Parley Shop. For an order's status, press 1. For a person, press 0. For more, press 9."
      options:
        - {digit: "1", label: order status, say: "I want to check my order"}
        - {digit: "0", label: a person, transfer: true}
        - {digit: "9", label: more, menu: more}
    - name: more
      prompt: "For a refund, press 2. To go back, press star."
      options:
        - {digit: "2", say: "I want a refund"}
        - {digit: "*", menu: main}
"""


async def ivr_bot(rig: VoiceRig) -> None:
    yaml_text = (Path(__file__).parent.parent / "agents" / "configs" / "voice_bot.yaml").read_text()
    assert yaml_text.rstrip().endswith("back_off_seconds: 2")
    await rig.add_config("voice-ivr", yaml_text.rstrip() + "\n" + IVR.strip("\n") + "\n")


async def test_keypad_menus_declared_in_the_config_drive_the_call(rig: VoiceRig) -> None:
    await ivr_bot(rig)
    keys = ["5", "9", "*", "1", "78945#"]
    record, device = await phone_call(rig, [Turn(keys=k) for k in keys], config_id="voice-ivr", speed=1.5)
    events = await rig.events(call_id_for("acme", device.call_sid))
    assert [e.digit for e in of(events, v.DtmfPressed)] == list("59*178945#")
    said = [e.text or "" for e in of(events, v.AgentSpoke)]
    # The menu answered the call; a wrong key was refused with the menu again; 9 and * moved between menus.
    assert said[0].startswith("Welcome to Parley Shop. For an order's status, press 1."), said
    assert said[1].startswith("Sorry, that key is not an option. Welcome"), said
    assert said[2] == "For a refund, press 2. To go back, press star." and said[3].startswith("Welcome"), said
    # 1 is the caller asking for their order: the agent asks which, the keypad answers, the tool runs.
    callers = [(e.text, e.source) for e in of(events, v.CallerSpoke)]
    assert callers == [("I want to check my order", "dtmf"), ("ORD-78945", "dtmf")], callers
    assert [(e.tool, e.arguments) for e in of(events, v.ToolCallStarted)] == [
        ("fetch_order_status", {"order_id": "ORD-78945"})
    ]
    assert any("ORD-78945" in text for text in said[4:]), said
    assert record.frames_received > 0


async def test_a_menu_key_transfers_the_caller_to_a_person(rig: VoiceRig) -> None:
    await ivr_bot(rig)
    await rig.register_agent("mike", "Mike")
    _record, device = await phone_call(rig, [Turn(keys="0")], config_id="voice-ivr", speed=1.5)
    events = await rig.events(call_id_for("acme", device.call_sid))
    transfers = of(events, v.TransferRequested)
    assert [(t.trigger, t.agent_id, t.transfer_type) for t in transfers] == [("ivr_transfer", "mike", "hot")]
    assert of(events, v.TransferConnected) and of(events, v.CallEnded)[0].resolution_status == "transferred"
    assert "transferring you" in (of(events, v.AgentSpoke)[-1].text or "")
