"""The real Deepgram and ElevenLabs LiveKit plugins in a call, against local servers speaking their
protocols: Deepgram's connection drops mid-call, the plugin reconnects, the call goes on, and an
event on the call says so; ElevenLabs speaks the agent's replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from domain import call as v
from gateways.telephony.phone import Turn
from gateways.telephony.twilio import call_id_for
from streams.factory import OpenStore
from tests.voice_fakes.speech import DeepgramFake, ElevenLabsFake
from tests.voice_support import VoiceRig, phone_call, voice_rig


@pytest_asyncio.fixture
async def fakes() -> AsyncIterator[tuple[DeepgramFake, ElevenLabsFake]]:
    deepgram = DeepgramFake(transcripts=["Where is my order ORD 78945?", "I want to speak to a human."], drop_after=1)
    eleven = ElevenLabsFake()
    await deepgram.start()
    await eleven.start()
    yield deepgram, eleven
    await deepgram.stop()
    await eleven.stop()


@pytest_asyncio.fixture
async def rig(
    open_test_store: OpenStore, pg_url: str, tmp_path: Path, fakes: tuple[DeepgramFake, ElevenLabsFake]
) -> AsyncIterator[VoiceRig]:
    deepgram, eleven = fakes
    env = {
        "DEEPGRAM_API_KEY": "dg-key",
        "DEEPGRAM_BASE_URL": f"{deepgram.url}/v1/listen",
        "ELEVEN_API_KEY": "xi-key",
        "ELEVENLABS_BASE_URL": f"{eleven.url}/v1",
    }
    async with voice_rig(open_test_store, pg_url, tmp_path, env) as r:
        yield r


async def test_deepgram_drops_mid_call_the_plugin_reconnects_and_elevenlabs_speaks(
    rig: VoiceRig, fakes: tuple[DeepgramFake, ElevenLabsFake]
) -> None:
    deepgram, eleven = fakes
    await rig.register_agent("mike", "Mike")
    record, device = await phone_call(rig, [Turn("Where is my order"), Turn("I want to speak to a human")], speed=1.5)
    events = await rig.events(call_id_for("acme", device.call_sid))
    said = [(e.text, e.stt_provider) for e in events if isinstance(e, v.CallerSpoke)]
    assert said == [("Where is my order ORD-78945?", "deepgram"), ("I want to speak to a human.", "deepgram")], said
    dropped = [e for e in events if isinstance(e, v.SpeechProviderInterrupted)]
    assert dropped and dropped[0].stage == "stt" and dropped[0].provider == "deepgram"
    assert dropped[0].recovered_by == "reconnected" and deepgram.connections >= 2
    assert deepgram.headers[0] == "Token dg-key" and deepgram.queries[0]["model"] == "nova-3"
    assert "keyterm" in deepgram.queries[0]
    tools = [e.tool for e in events if isinstance(e, v.ToolCallStarted)]
    assert tools == ["fetch_order_status"]
    assert any(isinstance(e, v.TransferRequested) for e in events)
    # The agent's words went through ElevenLabs (the key, the model, raw PCM) and reached the caller.
    assert eleven.keys and set(eleven.keys) == {"xi-key"} and "model_id=eleven_flash_v2_5" in eleven.paths[0]
    assert any("ORD-78945" in text for text in eleven.spoken), eleven.spoken
    assert len(record.agent_audio) > 8000
