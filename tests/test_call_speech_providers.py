"""The real Deepgram and ElevenLabs LiveKit plugins in a call, against local servers speaking their
protocols: Deepgram's connection drops mid-call, the plugin reconnects, the call goes on, and an
event on the call says so; ElevenLabs speaks the agent's replies. The offline voice, espeak-ng, speaks
in this process (libespeak-ng) as its command does."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest_asyncio

from domain import call as v
from gateways.speech.espeak import Espeak
from gateways.speech.offline import espeak_chunks, espeak_pcm
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


def _envelope(pcm: bytes) -> np.ndarray:
    samples = np.frombuffer(pcm, np.int16).astype(np.float64)
    frames = samples[: len(samples) // 441 * 441].reshape(-1, 441)  # 20 ms at 22,050 Hz
    return np.sqrt((frames**2).mean(axis=1))


async def test_espeak_ng_speaks_in_this_process_as_its_command_does() -> None:
    engine = Espeak.shared()
    assert engine is not None and engine.sample_rate == 22050
    command = shutil.which("espeak-ng")
    assert command is not None
    text = "Your order ORD-78945 is on its way with the courier."
    chunks = [pcm async for pcm in espeak_chunks(text)]
    # Streamed as it is made: many small chunks (about 40 ms each), whole samples.
    assert len(chunks) > 20 and all(0 < len(c) <= 22050 * 2 // 20 and len(c) % 2 == 0 for c in chunks)
    mine = b"".join(chunks)
    theirs = b"".join([pcm async for pcm in espeak_chunks(text, binary=command)])  # the command
    assert abs(len(mine) - len(theirs)) <= 22050 * 2 // 50, (len(mine), len(theirs))
    a, b = _envelope(mine), _envelope(theirs)
    n = min(len(a), len(b))
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.95  # the same speech, word for word


async def test_a_synthesis_cut_short_leaves_nothing_in_the_next() -> None:
    command = shutil.which("espeak-ng")
    assert command is not None
    long = "I can check an order, start a refund, or connect you with a person. " * 3
    stream = espeak_chunks(long)
    first = await anext(stream)
    await stream.aclose()  # a barge-in
    assert first
    after = await espeak_pcm("Thank you.")
    expected = await espeak_pcm("Thank you.", binary=command)
    # Its own words from the first frame (nothing of the cut sentence before them); the engine's
    # pause after a sentence may run some tens of ms longer in a process that spoke before.
    a, b = _envelope(after), _envelope(expected)
    n = min(len(a), len(b))
    assert np.allclose(a[:10], b[:10], rtol=0.05, atol=50), (a[:10], b[:10])
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.95
    assert abs(len(after) - len(expected)) <= 22050 * 2 // 10, (len(after), len(expected))
