"""Which STT and TTS a call uses: the config's ``voice_config`` providers when their keys are set,
the offline pair otherwise.

- Deepgram Nova-3 streaming STT (livekit-plugins-deepgram) with ``DEEPGRAM_API_KEY``
  (``DEEPGRAM_BASE_URL`` for another endpoint, e.g. a local server speaking its protocol). It runs
  inside LiveKit's ``stt.FallbackAdapter`` with the offline recognizer behind it: a dropped
  connection is retried (reconnected), and if Deepgram stays down the call goes on offline.
  Deepgram's endpointing ends the caller's turns (after the config's silence threshold), so these
  calls run no local VAD: a call costs the machine the audio relay and the agent, not inference.
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
    # The STT ends the caller's turns itself (a remote provider's endpointing): no local VAD runs.
    endpointing: bool = False


def load_vad(silence_seconds: float = 0.3) -> vad.VAD:
    """Silero VAD, shipped inside its plugin (no download), on the phone's 8 kHz audio. The caller's
    turn ends after ``silence_seconds`` of silence: the config's ``turn_detection_threshold_ms``.

    Silence is where the (smoothed) speech probability is below the activation threshold, 0.5, not
    below the plugin's default exit threshold of 0.35: measured on espeak-ng speech over the phone,
    silero's probability stays high for 30-90 ms into digital silence, and the lower exit threshold
    started the silence count one more 32 ms window later still: the VAD ended turns 340-500 ms after
    the caller's last voiced frame for the config's 300 ms. The count now starts a window earlier
    (measured: 310-440 ms after the last voiced frame); it is still the config's silence that ends
    the turn, never less."""
    from livekit.plugins import silero

    return silero.VAD.load(
        min_silence_duration=silence_seconds,
        prefix_padding_duration=0.3,
        activation_threshold=0.5,
        deactivation_threshold=0.5,
        sample_rate=8000,
    )


def choose_speech(
    config: AgentConfig | None,
    env: Mapping[str, str],
    http: aiohttp.ClientSession | None = None,
    *,
    silence: float = 0.3,
) -> SpeechChoice:
    """``http``: the session the remote plugins use (outside a LiveKit job there is none by default);
    ``silence``: the seconds of silence that end a caller's turn.

    With Deepgram the provider ends turns (its ``endpointing``), so a call runs no local VAD; the
    offline recognizer behind it ends them by energy if Deepgram goes down."""
    voice = config.voice_config if config is not None else None
    vocabulary = Vocabulary.from_config(config)
    offline_stt = PocketsphinxSTT(vocabulary)
    speed = voice.model_settings.speed if voice is not None and voice.model_settings is not None else 1.0
    offline_tts = EspeakTTS(speed=float(speed or 1.0))
    chosen_stt: stt.STT = offline_stt
    stt_name = "offline"
    primary: stt.STT | None = None
    wants_deepgram = voice is None or (voice.stt_provider or "deepgram") == "deepgram"
    endpointing = False
    if wants_deepgram and env.get("DEEPGRAM_API_KEY"):
        primary = deepgram_stt(config, env, http, silence=silence)
        offline_stt = PocketsphinxSTT(vocabulary, endpointing=silence)
        chosen_stt = stt.FallbackAdapter([primary, offline_stt], attempt_timeout=5.0, retry_interval=1.0)
        stt_name = "deepgram"
        endpointing = True
    chosen_tts: tts.TTS = offline_tts
    tts_name = "offline"
    wants_eleven = voice is None or (voice.tts_provider or "elevenlabs") == "elevenlabs"
    if wants_eleven and (env.get("ELEVEN_API_KEY") or env.get("ELEVENLABS_API_KEY")):
        chosen_tts = tts.FallbackAdapter([elevenlabs_tts(config, env, http), offline_tts])
        tts_name = "elevenlabs"
    return SpeechChoice(chosen_stt, chosen_tts, stt_name, tts_name, offline_stt, primary, endpointing)


def deepgram_stt(
    config: AgentConfig | None,
    env: Mapping[str, str],
    http: aiohttp.ClientSession | None = None,
    *,
    silence: float = 0.3,
) -> stt.STT:
    from livekit.plugins import deepgram

    vocabulary = Vocabulary.from_config(config)
    options: dict[str, Any] = {
        "api_key": env["DEEPGRAM_API_KEY"],
        "model": "nova-3",
        "endpointing_ms": round(silence * 1000),  # the config's turn threshold: Deepgram ends the turn
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
