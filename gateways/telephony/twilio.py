"""Twilio Media Streams: phone calls into the agent session with no LiveKit server.

``POST /api/v1/voice/twilio/inbound`` answers TwiML ``<Connect><Stream>`` (``twiml_connect``); Twilio
then opens the stream websocket and sends JSON text frames: ``connected``, ``start`` (stream and call
sids, ``customParameters``), ``media`` (20 ms of 8 kHz mu-law, base64), ``dtmf``, ``mark`` and
``stop``. ``MediaStreamBridge`` feeds ``media`` to the session through ``TwilioAudioInput`` and
plays the agent through ``TwilioAudioOutput``, which sends ``media`` back (160-byte payloads), a
``mark`` after each segment (Twilio echoes it once the caller has heard everything before it: the
segment's playback is finished then), and ``clear`` when the caller barges in (Twilio drops what it
had not played; the playback position is what played until then).

The stream's ``token`` parameter (a short-lived JWT the webhook signed) says which tenant and config
the call is for, so nobody else can open a stream. ``valid_signature`` checks Twilio's
``X-Twilio-Signature`` on the webhook when an auth token is configured (twilio's RequestValidator).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog
from livekit import rtc
from livekit.agents import io
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from gateways.speech.audio import pcm16_to_ulaw, ulaw_to_pcm16

log = structlog.get_logger(__name__)

RATE = 8000
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law


def twiml_connect(stream_url: str, parameters: Mapping[str, str]) -> str:
    response = VoiceResponse()
    connect = response.connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    return str(response)


def twiml_say(text: str) -> str:
    response = VoiceResponse()
    response.say(text)
    return str(response)


def valid_signature(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    return bool(signature) and RequestValidator(auth_token).validate(url, dict(params), signature or "")


class TwilioAudioInput(io.AudioInput):
    """The caller's 8 kHz audio, decoded from Twilio's ``media`` frames."""

    sample_rate = RATE

    def __init__(self) -> None:
        super().__init__(label="twilio-media-stream")
        self._frames: asyncio.Queue[rtc.AudioFrame | None] = asyncio.Queue(maxsize=3000)
        self.received = 0

    def push(self, payload_b64: str) -> None:
        pcm = ulaw_to_pcm16(base64.b64decode(payload_b64))
        if not pcm:
            return
        self.received += 1
        frame = rtc.AudioFrame(data=pcm, sample_rate=RATE, num_channels=1, samples_per_channel=len(pcm) // 2)
        with contextlib.suppress(asyncio.QueueFull):  # a stalled session drops audio rather than memory
            self._frames.put_nowait(frame)

    def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._frames.put_nowait(None)

    async def __anext__(self) -> rtc.AudioFrame:
        frame = await self._frames.get()
        if frame is None:
            self._frames.put_nowait(None)
            raise StopAsyncIteration
        return frame


class Sender(Protocol):
    async def __call__(self, message: dict[str, Any]) -> None: ...


class TwilioAudioOutput(io.AudioOutput):
    """The agent's audio to Twilio: ``media`` as it is synthesized, a ``mark`` per segment, ``clear``
    on barge-in. Keeps what it sent (``recorded``, 8 kHz PCM16) for the call's recording."""

    def __init__(self, send: Sender, stream_sid: str) -> None:
        super().__init__(
            label="twilio-media-stream", capabilities=io.AudioOutputCapabilities(pause=False), sample_rate=RATE
        )
        self._send = send
        self.stream_sid = stream_sid
        self.recorded = bytearray()
        self._carry = b""
        self._segment = 0
        self._pushed = 0.0
        self._started_at: float | None = None
        self._interrupted = asyncio.Event()
        self._cleared_at = 0.0
        self._marks: dict[str, asyncio.Event] = {}
        self._playout: asyncio.Task[None] | None = None
        self.frames_sent = 0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._playout is not None and not self._playout.done():
            await self._playout
        pcm = bytes(frame.data)
        if frame.num_channels > 1:
            pcm = b"".join(pcm[i : i + 2] for i in range(0, len(pcm), 2 * frame.num_channels))
        self.recorded.extend(pcm)
        if self._started_at is None:
            self._started_at = time.time()
            self.on_playback_started(created_at=self._started_at)
        self._pushed += len(pcm) / 2 / RATE
        data = self._carry + pcm16_to_ulaw(pcm)
        whole = len(data) - len(data) % FRAME_BYTES
        self._carry = data[whole:]
        for at in range(0, whole, FRAME_BYTES):
            await self._media(data[at : at + FRAME_BYTES])

    async def _media(self, chunk: bytes) -> None:
        self.frames_sent += 1
        await self._send(
            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": base64.b64encode(chunk).decode()}}
        )

    def flush(self) -> None:
        super().flush()
        if not self._pushed:
            return
        self._segment += 1
        name = f"parley-{self._segment}"
        self._marks[name] = asyncio.Event()
        carry, self._carry = self._carry, b""
        self._playout = asyncio.create_task(self._play_out(name, carry))

    async def _play_out(self, name: str, carry: bytes) -> None:
        with contextlib.suppress(Exception):
            if carry:
                await self._media(carry + b"\xff" * (FRAME_BYTES - len(carry)))
            await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
        heard = asyncio.ensure_future(self._marks[name].wait())
        cut = asyncio.ensure_future(self._interrupted.wait())
        await asyncio.wait([heard, cut], return_when=asyncio.FIRST_COMPLETED)
        heard.cancel()
        cut.cancel()
        # Twilio echoes the marks of what ``clear`` dropped too: once cleared, the segment was cut,
        # whatever mark follows, and it played until the clear.
        interrupted = self._interrupted.is_set()
        played = self._cleared_at if interrupted else self._pushed
        self._marks.pop(name, None)
        self._reset()
        self.on_playback_finished(playback_position=played, interrupted=interrupted)

    def _reset(self) -> None:
        self._pushed = 0.0
        self._started_at = None
        self._interrupted.clear()

    def clear_buffer(self) -> None:
        if not self._pushed or self._interrupted.is_set():
            return
        if self._playout is not None and self._playout.done() is False and self._heard_all():
            return  # the caller heard it all: there is nothing left to clear
        self._cleared_at = min(self._pushed, max(0.0, time.time() - (self._started_at or time.time())))
        self._carry = b""
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().create_task(self._send({"event": "clear", "streamSid": self.stream_sid}))
        self._interrupted.set()
        if self._playout is None or self._playout.done():
            # cleared before the segment was flushed: it ends here
            played = self._cleared_at
            self._segment += 1
            self._reset()
            self.on_playback_finished(playback_position=played, interrupted=True)

    def _heard_all(self) -> bool:
        name = f"parley-{self._segment}"
        return name in self._marks and self._marks[name].is_set()

    def mark_heard(self, name: str) -> None:
        event = self._marks.get(name)
        if event is not None:
            event.set()


class StreamStart(Protocol):
    stream_sid: str
    call_sid: str
    parameters: dict[str, str]


class MediaStreamBridge:
    """One Twilio media stream: its messages in, the session's audio out.

    ``on_start(start, audio_in, audio_out)`` creates the call's session once the ``start`` message
    arrives and returns (dtmf, close) handlers.
    """

    def __init__(
        self,
        receive: Callable[[], Awaitable[dict[str, Any] | None]],
        send: Sender,
        on_start: Callable[
            [dict[str, Any], TwilioAudioInput, TwilioAudioOutput],
            Awaitable[tuple[Callable[[str], None], Callable[[str], Awaitable[None]]]],
        ],
    ) -> None:
        self.receive, self.send, self.on_start = receive, send, on_start

    async def run(self) -> None:
        audio_in: TwilioAudioInput | None = None
        audio_out: TwilioAudioOutput | None = None
        dtmf: Callable[[str], None] | None = None
        close: Callable[[str], Awaitable[None]] | None = None
        reason = "caller_hung_up"
        try:
            while (message := await self.receive()) is not None:
                match message.get("event"):
                    case "start":
                        start = message.get("start") or {}
                        audio_in = TwilioAudioInput()
                        audio_out = TwilioAudioOutput(
                            self.send, str(message.get("streamSid") or start.get("streamSid"))
                        )
                        dtmf, close = await self.on_start(start, audio_in, audio_out)
                    case "media" if audio_in is not None:
                        media = message.get("media") or {}
                        if media.get("track", "inbound") in ("inbound", "inbound_track"):
                            audio_in.push(str(media.get("payload", "")))
                    case "dtmf" if dtmf is not None:
                        digit = str((message.get("dtmf") or {}).get("digit", ""))
                        if digit:
                            dtmf(digit)
                    case "mark" if audio_out is not None:
                        audio_out.mark_heard(str((message.get("mark") or {}).get("name", "")))
                    case "stop":
                        break
        except Exception as e:
            reason = "stream_error"
            log.warning("twilio.stream_failed", error=f"{type(e).__name__}: {e}")
        finally:
            if audio_in is not None:
                audio_in.close()
            if close is not None:
                await close(reason)


def call_id_for(tenant: str, call_sid: str) -> str:
    """The call id of a Twilio call: derived from its sid, so a retried stream is the same call."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"twilio:{tenant}:{call_sid}"))
