"""Audio helpers shared by the speech providers and the telephony bridges: G.711 mu-law (Twilio's
``audio/x-mulaw``) and WAV, on numpy (stdlib ``audioop`` is deprecated and gone in Python 3.13).
"""

from __future__ import annotations

import functools
import io
import wave

import numpy as np

_BIAS = 0x84
_CLIP = 32635


def _build_decode_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32)
    u = ~codes & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


_DECODE = _build_decode_table()


def _build_encode_table() -> np.ndarray:
    """mu-law code for every 16-bit sample (64 K entries: encoding is one lookup)."""
    samples = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(samples < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(samples), _CLIP) + _BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


_ENCODE = _build_encode_table()


def ulaw_to_pcm16(data: bytes) -> bytes:
    return _DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def pcm16_to_ulaw(data: bytes) -> bytes:
    samples = np.frombuffer(data, dtype=np.int16).astype(np.int32) + 32768
    return _ENCODE[samples].tobytes()


def resample_pcm16(data: bytes, rate_in: int, rate_out: int) -> bytes:
    """Mono 16-bit PCM at another rate: low-passed below the new Nyquist frequency when going down
    (a windowed-sinc filter, so nothing aliases), then interpolated."""
    if rate_in == rate_out or not data:
        return data
    samples = np.frombuffer(data, dtype=np.int16).astype(np.float32)
    if rate_out < rate_in:
        samples = np.convolve(samples, _lowpass(0.45 * rate_out / rate_in), mode="same")
    count = max(1, round(len(samples) * rate_out / rate_in))
    positions = np.arange(count) * (rate_in / rate_out)
    out = np.interp(positions, np.arange(len(samples)), samples)
    return np.clip(out, -32768, 32767).astype(np.int16).tobytes()


@functools.lru_cache(maxsize=16)
def _lowpass(cutoff: float, taps: int = 63) -> np.ndarray:
    """A Hamming-windowed sinc low-pass filter (``cutoff``: a fraction of the input rate)."""
    n = np.arange(taps) - (taps - 1) / 2
    kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
    return (kernel / kernel.sum()).astype(np.float32)


def wav_bytes(pcm: bytes, sample_rate: int, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return out.getvalue()


def read_wav(data: bytes) -> tuple[bytes, int, int]:
    """(PCM16 frames, sample rate, channels) of a WAV file; espeak-ng's ``--stdout`` leaves the sizes
    unset (it streams), so the frames are everything after the ``data`` chunk's header."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    channels = int.from_bytes(data[22:24], "little")
    rate = int.from_bytes(data[24:28], "little")
    at = data.find(b"data", 12)
    if at < 0:
        raise ValueError("a WAV file without a data chunk")
    pcm = data[at + 8 :]
    return pcm[: len(pcm) - len(pcm) % (2 * channels)], rate, channels
