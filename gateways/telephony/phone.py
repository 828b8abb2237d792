"""A phone for developers and tests: Twilio's side of a Media Stream, with a caller who speaks.

``Phone`` plays a script of caller turns against a media-stream endpoint exactly as Twilio would:
``connected`` and ``start``, then a ``media`` frame every 20 ms (silence between turns: Twilio sends
continuous audio), ``dtmf`` for keypad turns, the agent's ``media`` played back in real time, each
``mark`` echoed once the audio before it has played, and ``clear`` honoured (unplayed audio
dropped, pending marks echoed at once). It measures what the caller experiences: the time from the
end of each caller turn to the first agent audio (turn latency), and how late each agent frame
arrived for its playback slot (a frame is late when the caller's playback ran dry waiting for it).

Caller speech is synthesized with espeak-ng (or read from a WAV file) and sent as 8 kHz mu-law.
``speed`` > 1 runs the clock faster (tests); benchmarks use 1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateways.speech.audio import pcm16_to_ulaw, resample_pcm16, ulaw_to_pcm16
from gateways.speech.offline import espeak_pcm

FRAME = 160  # bytes of mu-law: 20 ms
SILENCE = b"\xff" * FRAME
SPOKEN = b"\x00"  # in the outgoing queue: the caller's last voiced frame was just sent


@dataclass
class Turn:
    """A caller turn: words to say, a WAV file, or keys to press (``keys``, e.g. ``78945#``).
    ``barge_in``: say it while the agent is still talking."""

    text: str = ""
    wav: Path | None = None
    keys: str = ""
    barge_in: bool = False
    pause: float = 0.0  # seconds of silence after it

    @classmethod
    def parse(cls, item: str) -> Turn:
        """``dtmf:78945#`` presses keys, ``wav:path`` plays a file, ``!text`` barges in, else speech."""
        if item.startswith("dtmf:"):
            return cls(keys=item.removeprefix("dtmf:"))
        if item.startswith("wav:"):
            return cls(wav=Path(item.removeprefix("wav:")))
        if item.startswith("!"):
            return cls(text=item[1:], barge_in=True)
        return cls(text=item)


@dataclass
class CallRecord:
    agent_audio: bytearray = field(default_factory=bytearray)  # 8 kHz PCM16 as played
    turn_latencies: list[float] = field(default_factory=list)  # seconds, end of caller turn -> agent audio
    frame_lateness: list[float] = field(default_factory=list)  # seconds per agent frame
    frames_received: int = 0
    clears: int = 0
    marks_echoed: int = 0


_SPOKEN: dict[tuple[str, str], bytes] = {}  # (text or WAV path, kind) -> mu-law: each phrase synthesized once


async def speech_ulaw(turn: Turn) -> bytes:
    """The caller's turn as 8 kHz mu-law. Kept once made: a benchmark's many callers saying the same
    lines synthesize each line once, not once per caller (each espeak-ng child started stalls this
    process's loop, which would be counted against the platform sharing the process)."""
    key = (str(turn.wav), "wav") if turn.wav is not None else (turn.text, "text")
    if key not in _SPOKEN:
        _SPOKEN[key] = await _speech_ulaw(turn)
    return _SPOKEN[key]


async def _speech_ulaw(turn: Turn) -> bytes:
    if turn.wav is not None:
        with wave.open(str(turn.wav), "rb") as w:
            rate, channels, pcm = w.getframerate(), w.getnchannels(), w.readframes(w.getnframes())
        if channels > 1:
            pcm = b"".join(pcm[i : i + 2] for i in range(0, len(pcm), 2 * channels))
    else:
        # The command, not the in-process engine, whose state carries over from other callers' lines: a
        # line must sound the same (and be heard the same) whatever was said before it.
        pcm, rate = await espeak_pcm(spoken(turn.text), words_per_minute=150, in_process=False), 22050
    return pcm16_to_ulaw(resample_pcm16(pcm, rate, 8000))


def spoken(text: str) -> str:
    """How a caller says an identifier: "ORD-78945" letter by letter and digit by digit."""
    words = []
    for word in text.split():
        head, sep, tail = word.partition("-")
        if sep and head.isalpha() and head.isupper() and tail.rstrip(".,?!").isdigit():
            words.append(" ".join(head) + " " + " ".join(tail.rstrip(".,?!")))
        else:
            words.append(word)
    return " ".join(words)


class Phone:
    def __init__(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        receive: Callable[[], Awaitable[dict[str, Any] | None]],
        *,
        parameters: dict[str, str] | None = None,
        speed: float = 1.0,
        call_sid: str | None = None,
        from_number: str = "+15551234567",
        on_agent_audio: Callable[[], None] | None = None,
    ) -> None:
        self._send, self._receive = send, receive
        self.parameters = dict(parameters or {})
        self.speed = speed
        self.call_sid = call_sid or "CA" + uuid.uuid4().hex
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.from_number = from_number
        self.record = CallRecord()
        self._outgoing: asyncio.Queue[bytes] = asyncio.Queue()  # frames, SPOKEN and b"" markers
        self._playback: list[tuple[bytes, float]] = []  # (frame, arrival)
        self._pending_marks: list[tuple[str, int]] = []  # (name, frames before it)
        self._queued_frames = 0
        self._played_frames = 0
        self._segment_start: float | None = None
        self._segment_frames = 0
        self._last_agent_frame = 0.0
        self._turn_ended_at: float | None = None
        self._agent_spoke = asyncio.Event()
        self._seq = 0
        self._stopped = asyncio.Event()
        self._on_agent_audio = on_agent_audio
        self._awaiting_reply = False
        self._last_sent = 0.0

    @property
    def tick(self) -> float:
        return 0.02 / self.speed

    async def _emit(self, message: dict[str, Any]) -> None:
        self._seq += 1
        message = {**message, "sequenceNumber": str(self._seq)}
        if message["event"] != "connected":
            message["streamSid"] = self.stream_sid
        await self._send(message)

    async def call(self, script: list[Turn], *, settle: float = 2.0, max_wait: float = 30.0) -> CallRecord:
        await self._emit({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._emit(
            {
                "event": "start",
                "start": {
                    "accountSid": "AC" + "0" * 32,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": {"from": self.from_number, **self.parameters},
                },
            }
        )
        tasks = [
            asyncio.create_task(self._mouth()),
            asyncio.create_task(self._ear()),
            asyncio.create_task(self._speaker()),
        ]
        try:
            with contextlib.suppress(TimeoutError):  # the agent greets first (a bot that does not: go on)
                await asyncio.wait_for(self._agent_spoke.wait(), max_wait / self.speed)
            for turn in script:
                if not turn.barge_in:
                    await self.wait_quiet(settle, max_wait)
                else:
                    await asyncio.wait_for(self._agent_spoke.wait(), max_wait / self.speed)
                    await asyncio.sleep(0.3 / self.speed)
                await self.say(turn)
                if turn.pause:
                    await asyncio.sleep(turn.pause / self.speed)
            await self.wait_quiet(settle, max_wait)
        finally:
            with contextlib.suppress(Exception):
                await self._emit({"event": "stop", "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}})
            self._stopped.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.record

    async def say(self, turn: Turn) -> None:
        if turn.keys:
            for number, key in enumerate(turn.keys):
                await self._emit({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": key}})
                if number == len(turn.keys) - 1:
                    self._turn_done()  # the last key: the caller waits for the answer from here
                await asyncio.sleep(0.1 / self.speed)
            return
        audio = await speech_ulaw(turn)
        frames = [audio[i : i + FRAME].ljust(FRAME, b"\xff") for i in range(0, len(audio), FRAME)]
        voiced = [i for i, frame in enumerate(frames) if _voiced(frame)]
        last = voiced[-1] if voiced else len(frames) - 1
        self._agent_spoke.clear()
        done = asyncio.get_running_loop().create_future()
        for i, frame in enumerate(frames):
            self._outgoing.put_nowait(frame)
            if i == last:
                self._outgoing.put_nowait(SPOKEN)  # the caller's last sound: the turn ends here
        self._outgoing.put_nowait(b"")  # the end of what was queued (espeak-ng's trailing silence too)
        self._turn_future = done
        await done

    def _turn_done(self, at: float | None = None) -> None:
        """The caller's turn ended (``at``, default now): the next agent audio answers it."""
        self._turn_ended_at = at if at is not None else time.perf_counter()
        self._awaiting_reply = True
        self._agent_spoke.clear()

    async def wait_quiet(self, quiet: float, max_wait: float) -> None:
        """Until the agent has said something since the caller's last turn and then been silent for
        ``quiet`` seconds (or ``max_wait`` passes)."""
        deadline = time.perf_counter() + max_wait / self.speed
        while time.perf_counter() < deadline:
            idle = time.perf_counter() - max(self._last_agent_frame, self._turn_ended_at or 0.0)
            playing = self._queued_frames > self._played_frames
            if (
                not playing
                and idle >= quiet / self.speed
                and (self._agent_spoke.is_set() or idle >= 3 * quiet / self.speed)
            ):
                return
            await asyncio.sleep(self.tick)

    async def _mouth(self) -> None:
        """A media frame every 20 ms: the caller's speech when there is some, silence otherwise."""
        next_at = time.perf_counter()
        chunk = 0
        while not self._stopped.is_set():
            try:
                frame = self._outgoing.get_nowait()
            except asyncio.QueueEmpty:
                frame = SILENCE
            if frame is SPOKEN:
                self._turn_done(self._last_sent)  # the turn ends with the caller's last sound
                continue
            if frame == b"":
                future = getattr(self, "_turn_future", None)
                if future is not None and not future.done():
                    future.set_result(None)
                continue
            chunk += 1
            self._last_sent = time.perf_counter()
            await self._emit(
                {
                    "event": "media",
                    "media": {
                        "track": "inbound",
                        "chunk": str(chunk),
                        "timestamp": str(chunk * 20),
                        "payload": base64.b64encode(frame).decode(),
                    },
                }
            )
            next_at += self.tick
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    async def _ear(self) -> None:
        while (message := await self._receive()) is not None:
            match message.get("event"):
                case "media":
                    now = time.perf_counter()
                    frame = base64.b64decode(message["media"]["payload"])
                    self.record.frames_received += 1
                    if self._awaiting_reply and self._turn_ended_at is not None:  # the answer's first audio
                        self.record.turn_latencies.append(now - self._turn_ended_at)
                        self._awaiting_reply = False
                    if self._queued_frames == self._played_frames:  # playback was idle: a segment starts
                        self._segment_start, self._segment_frames = now, 0
                    else:
                        due = (self._segment_start or now) + self._segment_frames * self.tick
                        self.record.frame_lateness.append(max(0.0, now - due))
                    self._segment_frames += 1
                    self._agent_spoke.set()
                    self._last_agent_frame = now
                    self._playback.append((frame, now))
                    self._queued_frames += 1
                    if self._on_agent_audio is not None:
                        self._on_agent_audio()
                case "mark":
                    self._pending_marks.append((message["mark"]["name"], self._queued_frames))
                case "clear":
                    self.record.clears += 1
                    dropped = self._queued_frames - self._played_frames
                    self._playback.clear()
                    self._queued_frames -= dropped
                    for name, _ in self._pending_marks:
                        await self._echo_mark(name)
                    self._pending_marks.clear()

    async def _speaker(self) -> None:
        """Plays the agent's audio in real time and echoes each mark once the audio before it has played."""
        while not self._stopped.is_set():
            if self._playback:
                frame, _arrival = self._playback.pop(0)
                self.record.agent_audio.extend(ulaw_to_pcm16(frame))
                self._played_frames += 1
                self._last_agent_frame = max(self._last_agent_frame, time.perf_counter())
            while self._pending_marks and self._pending_marks[0][1] <= self._played_frames:
                name, _ = self._pending_marks.pop(0)
                await self._echo_mark(name)
            await asyncio.sleep(self.tick)

    async def _echo_mark(self, name: str) -> None:
        self.record.marks_echoed += 1
        with contextlib.suppress(Exception):
            await self._emit({"event": "mark", "mark": {"name": name}})


def _voiced(frame: bytes) -> bool:
    """A frame with speech in it (not the silence espeak-ng leaves around words)."""
    samples = np.frombuffer(ulaw_to_pcm16(frame), dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) > 300


def save_wav(path: Path, pcm16: bytes, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
