"""Offline speech: pocketsphinx STT biased to a config's vocabulary, espeak-ng TTS. No keys, no download.

``Vocabulary.from_config`` collects what callers of that bot say: its tools' trigger phrases, its
intents' literal phrases, its escalation keywords, a few phrases every call has (yes, no, asking
for a human), digits and the spelled prefixes of identifiers its tools take (``ORD-\\d+``: "o r
d"). ``PocketsphinxSTT`` decodes each VAD segment with a bigram language model of those phrases
(``bigram_arpa``; pocketsphinx 5 ships its en-us acoustic model inside the wheel): what a caller
says is read as the nearest words of the bot's vocabulary, which is the trade a small offline
recognizer makes (telephone audio is 8 kHz; digits are better typed on the keypad). ``normalize_spoken`` turns spoken
forms back into what the tools expect ("o r d seven eight nine four five" -> "ORD-78945").

``EspeakTTS`` synthesizes with espeak-ng in this process (libespeak-ng, ``gateways.speech.espeak``;
``espeak-ng --stdout`` where the library is missing) and streams its PCM in 20 ms frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import re
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from livekit import rtc
from livekit.agents import stt, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr

from domain.bot import AgentConfig
from gateways.speech.audio import read_wav, resample_pcm16
from gateways.speech.espeak import Espeak

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_WORDS = {word: str(i) for i, word in enumerate(DIGITS)} | {"oh": "0"}
COMMON_PHRASES = (
    "yes", "yes please", "no", "no thanks", "thank you", "thanks", "goodbye", "hello", "hi",
    "that's all", "that's it", "i want to speak to a human", "speak to a human", "talk to a person",
    "a real person", "an agent please", "i want to check my order", "check my order", "where is my order",
    "my order", "order status", "my order number is", "it's", "can you help me", "please", "okay",
    "i need help", "this is urgent", "i want a refund", "call me back", "email me the tracking",
)  # fmt: skip
_WORD = re.compile(r"[a-z][a-z']*")
_REGEX_META = re.compile(r"\\[bdswBDSW]|[\^$()\[\]{}|?*+.]")


@dataclass(frozen=True)
class Vocabulary:
    phrases: tuple[str, ...]
    prefixes: tuple[str, ...] = ()  # identifier prefixes spelled letter by letter (ORD)
    extra_words: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: AgentConfig | None) -> Vocabulary:
        phrases: list[str] = list(COMMON_PHRASES)
        prefixes: list[str] = []
        if config is not None:
            for tool in config.tools:
                if tool.patterns is None:
                    continue
                phrases += tool.patterns.triggers
                for pattern in tool.patterns.arguments.values():
                    if m := re.match(r"^\(?([A-Z]{2,5})-\\d", pattern):
                        prefixes.append(m.group(1))
            for patterns in config.intents.values():
                phrases += [_literal(p) for p in patterns]
            for rule in config.escalation_rules:
                phrases += list(rule.keywords)
        words = [_clean(p) for p in phrases]
        return cls(tuple(dict.fromkeys(p for p in words if p)), tuple(dict.fromkeys(prefixes)))

    def sentences(self, known: Callable[[str], bool] = lambda word: True) -> list[str]:
        """What the language model learns from: the phrases (those whose every word the recognizer
        knows), identifiers spelled out with digits, and digit runs."""
        spelled = [" ".join(prefix.lower()) for prefix in self.prefixes]
        runs = [" ".join(DIGITS[(k * 3 + i) % 10] for i in range(5)) for k in range(4)]
        said = [*self.phrases, *spelled, *(f"{p} {r}" for p in spelled for r in runs), " ".join(DIGITS)]
        return [s for s in said if all(known(word) for word in s.split())]

    def arpa(self, known: Callable[[str], bool] = lambda word: True) -> str:
        return bigram_arpa(self.sentences(known))


def bigram_arpa(sentences: Iterable[str]) -> str:
    """A bigram language model in ARPA format: add-one unigrams, Witten-Bell interpolated bigrams,
    with the backoff weights that make each history's distribution sum to one."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for sentence in sentences:
        words = ["<s>", *sentence.split(), "</s>"]
        unigrams.update(words)
        bigrams.update(itertools.pairwise(words))
    total, size = sum(unigrams.values()), len(unigrams)
    p1 = {word: (count + 1) / (total + size) for word, count in unigrams.items()}
    followers: dict[str, list[str]] = {}
    seen: Counter[str] = Counter()
    for (a, b), count in bigrams.items():
        followers.setdefault(a, []).append(b)
        seen[a] += count
    p2: dict[tuple[str, str], float] = {}
    backoff: dict[str, float] = {}
    for a, after in followers.items():
        weight = seen[a] / (seen[a] + len(after))
        for b in after:
            p2[(a, b)] = weight * bigrams[(a, b)] / seen[a] + (1 - weight) * p1[b]
        left = 1 - sum(p2[(a, b)] for b in after)
        backoff[a] = left / max(1e-9, 1 - sum(p1[b] for b in after))
    lines = ["\\data\\", f"ngram 1={len(p1)}", f"ngram 2={len(p2)}", "", "\\1-grams:"]
    for word, p in sorted(p1.items()):
        logp = -99.0 if word == "<s>" else math.log10(p)
        lines.append(f"{logp:.4f} {word} {math.log10(max(backoff.get(word, 1.0), 1e-9)):.4f}")
    lines += ["", "\\2-grams:"]
    lines += [f"{math.log10(p):.4f} {a} {b}" for (a, b), p in sorted(p2.items())]
    return "\n".join([*lines, "", "\\end\\", ""])


def _literal(pattern: str) -> str:
    """The words of a simple regex (``\\bwhere is my (order|package)\\b`` -> "where is my order")."""
    first = re.sub(r"\([^)]*\)\?", " ", pattern)  # optional groups go
    first = re.sub(r"\(([^)|]*)\|[^)]*\)", r"\1", first)
    return _REGEX_META.sub(" ", first)


def _clean(phrase: str) -> str:
    return " ".join(_WORD.findall(phrase.lower().replace("'s ", "'s ")))


def normalize_spoken(text: str, prefixes: Iterable[str] = ("ORD",)) -> str:
    """Spoken forms as the tools read them: a spelled prefix and digits become an identifier
    ("o r d seven eight" and "ORD 78" -> "ORD-78"), and runs of digit words become digits. Other
    words, their case and punctuation are kept; an all-lowercase transcript (the offline
    recognizer's) gets a capital first letter."""
    tokens = text.split()
    bare = [t.lower().strip(".,?!;:") for t in tokens]
    spelled = {tuple(p.lower()): p for p in prefixes} | {(p.lower(),): p for p in prefixes}
    out: list[str] = []
    i = 0
    while i < len(tokens):
        hit = next(
            (
                (key, name)
                for key, name in spelled.items()
                if tuple(bare[i : i + len(key)]) == key and i + len(key) < len(tokens) and _digit(bare[i + len(key)])
            ),
            None,
        )
        start = i + len(hit[0]) if hit is not None else i
        if hit is not None or (_digit(bare[i]) is not None and not tokens[i].isdigit()):
            digits, j = "", start
            while j < len(tokens) and (d := _digit(bare[j])) is not None:
                digits, j = digits + d, j + 1
            tail = tokens[j - 1][len(bare[j - 1].rstrip("_")) :] if tokens[j - 1][-1:] in ".,?!;:" else ""
            out.append((f"{hit[1]}-{digits}" if hit is not None else digits) + tail)
            i = j
            continue
        out.append(tokens[i].replace("_", ""))
        i += 1
    result = " ".join(out)
    return result[:1].upper() + result[1:] if result == result.lower() else result


def _digit(word: str) -> str | None:
    if word.isdigit():
        return word
    return DIGIT_WORDS.get(word)


# STT ------------------------------------------------------------------------------------------


class PocketsphinxSTT(stt.STT):
    """Streaming, decoding as the caller speaks: each stretch of speech is fed to the decoder while it
    arrives (in a worker thread, a fifth of a second at a time), and the session's flush at the end of
    the turn (the VAD heard the caller stop) only decodes the last fraction and reads the result.
    Silence before the caller starts is never decoded (a cheap energy gate with a short pre-roll).
    With ``endpointing`` it ends utterances itself (``Endpointer``), as a remote STT does."""

    def __init__(
        self, vocabulary: Vocabulary | None = None, *, sample_rate: int = 16000, endpointing: float | None = None
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False, manual_flush=True))
        self.vocabulary = vocabulary or Vocabulary.from_config(None)
        self.endpointing = endpointing  # seconds of silence that end an utterance (None: the session's flush)
        self.sample_rate = sample_rate
        self._decoder: object | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return "pocketsphinx-en-us"

    @property
    def provider(self) -> str:
        return "offline"

    def _ensure_decoder(self) -> object:
        if self._decoder is None:
            import pocketsphinx

            probe = pocketsphinx.Decoder(samprate=self.sample_rate, lm=None, loglevel="FATAL")
            model = self.vocabulary.arpa(lambda word: probe.lookup_word(word) is not None)
            words = sorted({w for line in self.vocabulary.sentences() for w in line.split()})
            lexicon = "".join(f"{w} {probe.lookup_word(w)}\n" for w in words if probe.lookup_word(w) is not None)
            # Only the vocabulary's words in the dictionary: the decoder starts in a fraction of a second.
            digest = hashlib.sha256((model + lexicon).encode()).hexdigest()[:16]
            lm, lex = _cached(f"{digest}.arpa", model), _cached(f"{digest}.dict", lexicon)
            # No second (flat-lexicon) pass: it ran at the end of each utterance, on the turn's time and
            # holding the GIL (15-80 ms, measured), for the same words on this small vocabulary's bigrams.
            self._decoder = pocketsphinx.Decoder(
                samprate=self.sample_rate, lm=lm, dict=lex, fwdflat=False, loglevel="FATAL"
            )
        return self._decoder

    def prewarm(self) -> None:
        with self._lock:
            self._ensure_decoder()

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _SphinxStream(self, conn_options=conn_options)

    def begin(self) -> None:
        """A new utterance (blocking)."""
        with self._lock:
            self._ensure_decoder().start_utt()  # type: ignore[attr-defined]

    def feed(self, pcm16: bytes) -> None:
        """More of the utterance, 16 kHz mono PCM (blocking: a worker thread's)."""
        with self._lock:
            self._ensure_decoder().process_raw(pcm16, False, False)  # type: ignore[attr-defined]

    def finish(self, pcm16: bytes, samples: int) -> tuple[str, float]:
        """The rest of the utterance and its text and confidence (``samples``: its whole length)."""
        with self._lock:
            decoder = self._ensure_decoder()
            if pcm16:
                decoder.process_raw(pcm16, False, False)  # type: ignore[attr-defined]
            decoder.end_utt()  # type: ignore[attr-defined]
            hyp = decoder.hyp()  # type: ignore[attr-defined]
        return self._result(hyp, samples)

    def _result(self, hyp: object, samples: int) -> tuple[str, float]:
        if hyp is None or not hyp.hypstr:  # type: ignore[attr-defined]
            return "", 0.0
        # The best path's score per 10 ms frame, mapped to 0..1: a rough confidence.
        frames = max(1, samples // (self.sample_rate // 100))
        confidence = 1.0 / (1.0 + math.exp(-(hyp.score / frames + 60) / 15))  # type: ignore[attr-defined]
        return normalize_spoken(hyp.hypstr, self.vocabulary.prefixes), round(confidence, 3)  # type: ignore[attr-defined]

    def decode(self, pcm16: bytes) -> tuple[str, float]:
        """Text and confidence of one utterance of 16 kHz mono PCM (blocking: run it in a thread)."""
        with self._lock:
            decoder = self._ensure_decoder()
            decoder.start_utt()  # type: ignore[attr-defined]
            decoder.process_raw(pcm16, False, True)  # type: ignore[attr-defined]
            decoder.end_utt()  # type: ignore[attr-defined]
            hyp = decoder.hyp()  # type: ignore[attr-defined]
        return self._result(hyp, len(pcm16) // 2)

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        pcm = bytes(frame.data)
        if frame.num_channels > 1:
            pcm = np.frombuffer(pcm, np.int16).reshape(-1, frame.num_channels)[:, 0].tobytes()
        pcm = resample_pcm16(pcm, frame.sample_rate, self.sample_rate)
        text, confidence = await asyncio.to_thread(self.decode, pcm)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=uuid.uuid4().hex[:12],
            alternatives=[stt.SpeechData(language="en", text=text, confidence=confidence)],
        )


class Endpointer:
    """Where a caller's speech starts and ends, by its energy: speech starts at the first voiced 20 ms,
    and ends after ``silence`` seconds without a voiced frame. What a remote STT's own endpointing
    does, for almost no CPU: used when no VAD runs (a remote STT that ends turns itself, and the
    offline recognizer standing in for it when it is down)."""

    VOICED_RMS = 200.0

    def __init__(self, silence: float | None) -> None:
        self.silence = silence
        self.speaking = False
        self.quiet = 0.0

    def push(self, frame: rtc.AudioFrame) -> Literal["start", "end"] | None:
        voiced = _rms(frame) >= self.VOICED_RMS
        if not self.speaking:
            if voiced:
                self.speaking, self.quiet = True, 0.0
                return "start"
            return None
        self.quiet = 0.0 if voiced else self.quiet + frame.duration
        if self.silence is not None and self.quiet >= self.silence:
            self.speaking = False
            return "end"
        return None


class _SphinxStream(stt.RecognizeStream):
    """Frames in (the phone's 8 kHz, decoded at 16 kHz); the utterance ends with a final transcript at
    a flush (the session's VAD heard the caller stop) or, with ``endpointing``, after the silence."""

    STEP = 16000 // 5 * 2  # bytes fed to the decoder at a time: 200 ms
    PRE_ROLL = 16000 // 2 * 2  # what is kept before the first voiced frame: 500 ms

    def __init__(self, recognizer: PocketsphinxSTT, *, conn_options: APIConnectOptions) -> None:
        # Resampled here, not by the stream (its resampler is flushed, and so restarted, at each turn's end).
        super().__init__(stt=recognizer, conn_options=conn_options)
        self._recognizer = recognizer

    def _emit(self, kind: stt.SpeechEventType, text: str = "", confidence: float = 0.0) -> None:
        alternatives = [stt.SpeechData(language="en", text=text, confidence=confidence)] if text else []
        self._event_ch.send_nowait(
            stt.SpeechEvent(type=kind, request_id=uuid.uuid4().hex[:12], alternatives=alternatives)
        )

    async def _run(self) -> None:
        recognizer = self._recognizer
        endpointer = Endpointer(recognizer.endpointing)
        pending = bytearray()  # not yet fed
        samples = 0  # of the utterance
        speaking = False

        async def finish() -> None:
            nonlocal speaking, samples
            chunk = bytes(pending)
            pending.clear()
            text, confidence = await asyncio.to_thread(recognizer.finish, chunk, samples + len(chunk) // 2)
            speaking, samples = False, 0
            endpointer.speaking = False
            if text:
                self._emit(stt.SpeechEventType.FINAL_TRANSCRIPT, text, confidence)

        await asyncio.to_thread(recognizer.prewarm)  # the decoder's first start is slow: not on a turn's time
        async for data in self._input_ch:
            if isinstance(data, self._FlushSentinel):
                if speaking:
                    await finish()
                else:
                    pending.clear()
                continue
            pcm = bytes(data.data)
            if data.num_channels > 1:
                pcm = np.frombuffer(pcm, np.int16).reshape(-1, data.num_channels)[:, 0].tobytes()
            pending.extend(resample_pcm16(pcm, data.sample_rate, recognizer.sample_rate))
            edge = endpointer.push(data)
            if not speaking:
                if edge != "start":
                    del pending[: max(0, len(pending) - self.PRE_ROLL)]
                    continue
                speaking = True
                await asyncio.to_thread(recognizer.begin)
                if recognizer.endpointing is not None:
                    self._emit(stt.SpeechEventType.START_OF_SPEECH)
            if edge == "end":
                await finish()
                self._emit(stt.SpeechEventType.END_OF_SPEECH)
            elif len(pending) >= self.STEP:
                chunk = bytes(pending)
                pending.clear()
                samples += len(chunk) // 2
                await asyncio.to_thread(recognizer.feed, chunk)


def _rms(frame: rtc.AudioFrame) -> float:
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


def _cached(name: str, text: str) -> str:
    path = Path(tempfile.gettempdir()) / "parley-speech" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        partial.write_text(text)
        partial.replace(path)
    return str(path)


# TTS ------------------------------------------------------------------------------------------


class EspeakTTS(tts.TTS):
    def __init__(self, *, voice: str = "en-us", speed: float = 1.0, binary: str = "espeak-ng") -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False), sample_rate=22050, num_channels=1)
        self.voice = voice
        self.words_per_minute = max(80, min(450, round(165 * speed)))
        self.binary = binary

    @property
    def model(self) -> str:
        return "espeak-ng"

    @property
    def provider(self) -> str:
        return "offline"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _EspeakStream(tts=self, input_text=text, conn_options=conn_options)


class _EspeakStream(tts.ChunkedStream):
    def __init__(self, *, tts: EspeakTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._espeak = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=uuid.uuid4().hex[:12],
            sample_rate=22050,
            num_channels=1,
            mime_type="audio/pcm",
            frame_size_ms=20,
        )
        espeak = self._espeak
        async for pcm in espeak_chunks(self.input_text, espeak.voice, espeak.words_per_minute, espeak.binary):
            output_emitter.push(pcm)  # as espeak-ng writes it: the first words play before the last are made
        output_emitter.flush()


async def espeak_chunks(
    text: str, voice: str = "en-us", words_per_minute: int = 165, binary: str = "espeak-ng"
) -> AsyncIterator[bytes]:
    """espeak-ng's speech for ``text`` as it is synthesized: 22,050 Hz mono PCM16, in pieces. Made in
    this process by libespeak-ng (``gateways.speech.espeak``), or by the command where the library is
    missing (or another ``binary`` is named)."""
    engine = Espeak.shared() if binary == "espeak-ng" else None
    if engine is not None:
        async for pcm in engine.chunks(text, voice, words_per_minute):
            yield pcm
        return
    async for pcm in _command_chunks(text, voice, words_per_minute, binary):
        yield pcm


async def _command_chunks(text: str, voice: str, words_per_minute: int, binary: str) -> AsyncIterator[bytes]:
    """``espeak-ng --stdout``'s PCM as the command writes it."""
    process = await asyncio.create_subprocess_exec(
        binary, "-v", voice, "-s", str(words_per_minute), "--stdout", text,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    head: bytes | None = b""
    odd = b""
    finished = False
    try:
        while chunk := await process.stdout.read(8192):
            if head is not None:  # the WAV header (sizes unset: espeak-ng streams) comes first
                head += chunk
                at = head.find(b"data", 12)
                if at < 0 or len(head) < at + 8:
                    continue
                chunk, head = head[at + 8 :], None
            data = odd + chunk
            whole = len(data) - len(data) % 2
            odd = data[whole:]
            if whole:
                yield data[:whole]
        err = await process.stderr.read()
        await process.wait()
        finished = True
    finally:
        if not finished and process.returncode is None:  # cut short (a barge-in): stop synthesizing
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({process.returncode}): {err.decode(errors='replace')[:200]}")


async def espeak_pcm(
    text: str, voice: str = "en-us", words_per_minute: int = 165, binary: str = "espeak-ng", *, in_process: bool = True
) -> bytes:
    """espeak-ng's speech for ``text``: 22,050 Hz mono PCM16 (in this process where libespeak-ng is,
    unless ``in_process`` is false: the in-process engine carries state from one sentence to the
    next, the command starts afresh each time)."""
    if in_process and binary == "espeak-ng" and Espeak.shared() is not None:
        return b"".join([pcm async for pcm in espeak_chunks(text, voice, words_per_minute)])
    process = await asyncio.create_subprocess_exec(
        binary, "-v", voice, "-s", str(words_per_minute), "--stdout", text,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({process.returncode}, {text!r}): {err.decode(errors='replace')[:200]}")
    pcm, _rate, _channels = read_wav(out)
    return pcm
