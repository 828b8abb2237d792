"""Which STT and TTS a call uses: the config's ``voice_config`` providers when their keys are set,
the offline pair otherwise.

- Deepgram Nova-3 streaming STT (livekit-plugins-deepgram) with ``DEEPGRAM_API_KEY``
  (``DEEPGRAM_BASE_URL`` for another endpoint, e.g. a local server speaking its protocol). It runs
  inside LiveKit's ``stt.FallbackAdapter`` with the offline recognizer behind it: a dropped
  connection is retried (reconnected), and if Deepgram stays down the call goes on offline.
- ElevenLabs TTS (livekit-plugins-elevenlabs) with ``ELEVEN_API_KEY`` (``ELEVENLABS_BASE_URL``),
  behind ``tts.FallbackAdapter`` with espeak-ng.
- Offline: ``PocketsphinxSTT`` biased to the config's vocabulary and ``EspeakTTS``.

``SpeechChoice`` names what was chosen, for the call's events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from livekit.agents import stt, tts, vad

from domain.bot import AgentConfig
from gateways.speech.offline import EspeakTTS, PocketsphinxSTT, Vocabulary


@dataclass
class SpeechChoice:
    stt: stt.STT
    tts: tts.TTS
    stt_name: str
    tts_name: str
    offline_stt: PocketsphinxSTT
    primary_stt: stt.STT | None = None  # the remote STT inside the fallback adapter, if any


def load_vad() -> vad.VAD:
    """Silero VAD, shipped inside its plugin (no download)."""
    from livekit.plugins import silero

    return silero.VAD.load(min_silence_duration=0.55, activation_threshold=0.5, sample_rate=8000)


def choose_speech(
    config: AgentConfig | None, env: Mapping[str, str], vad_model: vad.VAD, http: aiohttp.ClientSession | None = None
) -> SpeechChoice:
    """``http``: the session the remote plugins use (outside a LiveKit job there is none by default)."""
    voice = config.voice_config if config is not None else None
    offline_stt = PocketsphinxSTT(Vocabulary.from_config(config))
    speed = voice.model_settings.speed if voice is not None and voice.model_settings is not None else 1.0
    offline_tts = EspeakTTS(speed=float(speed or 1.0))
    chosen_stt: stt.STT = offline_stt
    stt_name = "offline"
    primary: stt.STT | None = None
    wants_deepgram = voice is None or (voice.stt_provider or "deepgram") == "deepgram"
    if wants_deepgram and env.get("DEEPGRAM_API_KEY"):
        primary = deepgram_stt(config, env, http)
        chosen_stt = stt.FallbackAdapter([primary, offline_stt], vad=vad_model, attempt_timeout=5.0, retry_interval=1.0)
        stt_name = "deepgram"
    chosen_tts: tts.TTS = offline_tts
    tts_name = "offline"
    wants_eleven = voice is None or (voice.tts_provider or "elevenlabs") == "elevenlabs"
    if wants_eleven and (env.get("ELEVEN_API_KEY") or env.get("ELEVENLABS_API_KEY")):
        chosen_tts = tts.FallbackAdapter([elevenlabs_tts(config, env, http), offline_tts])
        tts_name = "elevenlabs"
    return SpeechChoice(chosen_stt, chosen_tts, stt_name, tts_name, offline_stt, primary)


def deepgram_stt(
    config: AgentConfig | None, env: Mapping[str, str], http: aiohttp.ClientSession | None = None
) -> stt.STT:
    from livekit.plugins import deepgram

    vocabulary = Vocabulary.from_config(config)
    options: dict[str, Any] = {
        "api_key": env["DEEPGRAM_API_KEY"],
        "model": "nova-3",
        "keyterm": list(vocabulary.phrases[:50]),  # Nova-3 keyterm prompting: the bot's vocabulary
    }
    if http is not None:
        options["http_session"] = http
    if env.get("DEEPGRAM_BASE_URL"):
        options["base_url"] = env["DEEPGRAM_BASE_URL"]
    return deepgram.STT(**options)


def elevenlabs_tts(
    config: AgentConfig | None, env: Mapping[str, str], http: aiohttp.ClientSession | None = None
) -> tts.TTS:
    from livekit.plugins import elevenlabs

    voice = config.voice_config if config is not None else None
    options: dict[str, Any] = {
        "api_key": env.get("ELEVEN_API_KEY") or env.get("ELEVENLABS_API_KEY"),
        "model": "eleven_flash_v2_5",
        "encoding": "pcm_22050",  # raw PCM: nothing to decode before the first frame
    }
    if http is not None:
        options["http_session"] = http
    if voice is not None and voice.voice_id and not voice.voice_id.startswith("espeak:"):
        options["voice_id"] = voice.voice_id
    if env.get("ELEVENLABS_BASE_URL"):
        options["base_url"] = env["ELEVENLABS_BASE_URL"]
    return elevenlabs.TTS(**options)
