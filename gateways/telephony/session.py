"""One call's LiveKit ``AgentSession``, and everything it records on the call.

``VoiceStack`` is what a process needs to hold calls: the call service, the tool registry, the
config versions, the VAD model, the recording store and where live transcripts go. ``CallSession``
runs one call over any audio input and output (the Twilio bridge's, a LiveKit room's, a test's):
silero VAD, the chosen STT (``gateways.speech``), Parley's agent as the session's LLM with the
config's tools, and the chosen TTS.

Every final transcript, reply, tool call, keypad digit, sentiment and transfer becomes a command on
the call. ``CallRecorder`` appends them in order beside the audio path, so a slow store delays a
transcript, never a frame; a tool call's start and end and a transfer are awaited before the
agent goes on (their effect happens once, after the record). Interim transcripts are published
live only (``publish``). Both sides' audio is kept and stored, encrypted under the caller's key,
when the call ends.

When the config has a ``recording_notice`` template, it is played before anything is listened
to: the caller's audio is not transcribed until it has played.

Chat and voice in one log: on a call linked to a chat conversation, what the customer sent in the
chat meanwhile (the call's ``ChatbotDataShared`` events, read from the call's stream when the caller
has spoken) is given to the agent on its next turn, as the customer's words before what they just
said, and the reply begins by saying so: "I see you've sent ... in the chat." (``ChatAwareBrain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import structlog
from livekit import rtc
from livekit.agents import AgentSession, io, room_io, vad
from livekit.agents.types import NOT_GIVEN
from livekit.agents.voice.transcription.synchronizer import TranscriptSynchronizer

from agents.config import ConfigProvider
from agents.graph import chain_for, handoff_text
from agents.llm.port import ChatMessage, ToolCallRequest
from agents.rules import Escalation
from agents.tools import ToolContext, ToolRegistry, ToolRun
from commands.call import CallService, Connected
from domain import call as v
from domain.bot import AgentConfig, IvrMenu
from domain.errors import ParleyError
from gateways.speech.offline import normalize_spoken
from gateways.speech.providers import SpeechChoice, choose_speech, load_vad
from gateways.telephony.agent import AgentBrain, ParleyAgent, ParleyLLM, TurnHooks
from gateways.telephony.recordings import RecordingStore
from streams.store import LIVE_PREFIX, EventStore
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

Publish = Callable[[str, str, str, dict[str, Any]], Awaitable[None]]  # tenant, call id, event, body


DEFAULT_SILENCE = 0.3  # seconds of silence that end a caller's turn, when the config names none


def now() -> datetime:
    return datetime.now(UTC)


def _at(timestamp: float | None) -> datetime | None:
    return None if not timestamp else datetime.fromtimestamp(timestamp, UTC)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class VoiceStack:
    """A process's means to hold calls (one per process, shared by its calls)."""

    def __init__(
        self,
        calls: CallService,
        tools: ToolRegistry,
        configs: ConfigProvider,
        env: Mapping[str, str],
        *,
        recordings: RecordingStore | None = None,
        publish: Publish | None = None,
        vad_model: vad.VAD | None = None,
        speech: Callable[[AgentConfig], SpeechChoice] | None = None,
    ) -> None:
        self.calls = calls
        self.tools = tools
        self.configs = configs
        self.env = env
        self.recordings = recordings
        self.publish = publish
        self._vad = vad_model  # one for every call (tests, benchmarks); else one per turn threshold
        self._vads: dict[float, vad.VAD] = {}
        self.speech = speech  # chooses each call's STT and TTS (default: ``choose_speech`` from the env)
        self._chains: dict[int, Any] = {}
        self.sessions: dict[str, CallSession] = {}
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        """The HTTP session the remote speech plugins share (made on first use, in the running loop)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def vad(self) -> vad.VAD:
        return self.vad_for(DEFAULT_SILENCE)

    def vad_for(self, silence_seconds: float) -> vad.VAD:
        """The VAD that ends a turn after ``silence_seconds`` (one per threshold, shared by calls)."""
        if self._vad is not None:
            return self._vad
        key = round(silence_seconds, 3)
        if key not in self._vads:
            self._vads[key] = load_vad(key)
        return self._vads[key]

    def chain(self, config: AgentConfig) -> Any:
        key = id(config)
        if key not in self._chains:
            self._chains[key] = chain_for(config, self.env)
        return self._chains[key]

    async def live(self, tenant: str, call_id: str, event: str, body: dict[str, Any]) -> None:
        if self.publish is not None:
            with contextlib.suppress(Exception):
                await self.publish(tenant, call_id, event, body)


def live_subject(tenant: str, call_id: str) -> str:
    """The subject of a call's live messages (the transcript socket's)."""
    return f"{LIVE_PREFIX}.{tenant}.call.{call_id}"


def live_publisher(store: EventStore) -> Publish:
    """Where a session's interim transcripts go: live messages on the call's subject, never stored."""

    async def publish(tenant: str, call_id: str, event: str, body: dict[str, Any]) -> None:
        await store.publish_live(live_subject(tenant, call_id), msgspec.json.encode({"event": event, **body}))

    return publish


class CallRecorder:
    """Commands on one call, appended in order by a task of their own.

    While the agent prepares a reply (``hold``: from the end of the caller's turn to the reply's
    first audio, ``release``, at most ``HOLD`` seconds) the appends wait: the store's work (encoding,
    sealing, the round trip) shares the process's loop, and would otherwise run on the turn's time.
    Nothing is lost or reordered; an awaited command (``now``) releases the hold."""

    HOLD = 2.0

    def __init__(self, calls: CallService, tenant: str, call_id: str) -> None:
        self.calls, self.tenant, self.call_id = calls, tenant, call_id
        self._queue: asyncio.Queue[tuple[v.Command, str, asyncio.Future[Any] | None] | None] = asyncio.Queue()
        self._open = asyncio.Event()
        self._open.set()
        self._held_until = 0.0
        self._task = asyncio.create_task(self._run(), name=f"call-recorder-{call_id}")

    def send(self, command: v.Command, command_id: str) -> None:
        self._queue.put_nowait((command, command_id, None))

    async def now(self, command: v.Command, command_id: str) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.release()
        self._queue.put_nowait((command, command_id, future))
        return await future

    def hold(self) -> None:
        self._held_until = time.monotonic() + self.HOLD
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def close(self) -> None:
        self.release()
        self._queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await self._task

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            if not self._open.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._open.wait(), max(0.0, self._held_until - time.monotonic()))
            command, command_id, future = item
            try:
                outcome = await self.calls.record(self.tenant, self.call_id, command, command_id)
            except (ParleyError, Exception) as e:
                log.warning("call.record_failed", call_id=self.call_id, command=type(command).__name__, error=str(e))
                if future is not None and not future.done():
                    future.set_exception(e)
                continue
            if future is not None and not future.done():
                future.set_result(outcome)


class TappedInput(io.AudioInput):
    """The caller's audio as it arrives, kept for the recording."""

    def __init__(self, source: io.AudioInput, sink: bytearray) -> None:
        super().__init__(label="parley-tap", source=source)
        self._sink = sink
        self.sample_rate: int | None = getattr(source, "sample_rate", None)

    async def __anext__(self) -> rtc.AudioFrame:
        frame = await self.source.__anext__()  # type: ignore[union-attr]
        self.sample_rate = frame.sample_rate
        self._sink.extend(bytes(frame.data))
        return frame


class TappedOutput(io.AudioOutput):
    """The agent's audio on its way out (a room's output), kept for the recording (first channel)."""

    def __init__(self, next_in_chain: io.AudioOutput) -> None:
        super().__init__(
            label="parley-tap",
            next_in_chain=next_in_chain,
            sample_rate=next_in_chain.sample_rate,
            capabilities=io.AudioOutputCapabilities(pause=next_in_chain.can_pause),
        )
        self.recorded = bytearray()
        self.recorded_rate: int | None = next_in_chain.sample_rate

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self.recorded_rate = frame.sample_rate
        pcm = bytes(frame.data)
        if frame.num_channels > 1:
            pcm = b"".join(pcm[i : i + 2] for i in range(0, len(pcm), 2 * frame.num_channels))
        self.recorded.extend(pcm)
        if self.next_in_chain is not None:
            await self.next_in_chain.capture_frame(frame)

    def flush(self) -> None:
        super().flush()
        if self.next_in_chain is not None:
            self.next_in_chain.flush()

    def clear_buffer(self) -> None:
        if self.next_in_chain is not None:
            self.next_in_chain.clear_buffer()


class CallSession:
    def __init__(
        self,
        stack: VoiceStack,
        tenant: str,
        call: v.Call,
        config: AgentConfig,
        *,
        audio_input: io.AudioInput | None = None,
        audio_output: io.AudioOutput | None = None,
        room: rtc.Room | None = None,
        participant: str | None = None,
        sample_rate: int = 8000,
        connect_human: Callable[[v.TransferRequested, str], Awaitable[Connected]] | None = None,
        greet: bool = True,
    ) -> None:
        self.stack, self.tenant, self.call, self.config = stack, tenant, call, config
        self.call_id = call.call_id
        self.sample_rate = sample_rate
        self.greet = greet
        self.connect_human = connect_human
        # The call's audio: a media stream's input and output (the Twilio path), or a LiveKit room's.
        self.room, self.participant = room, participant
        self.caller_audio = bytearray()
        self.agent_audio: bytearray | None = getattr(audio_output, "recorded", None)
        self._input = TappedInput(audio_input, self.caller_audio) if audio_input is not None else None
        self._output = audio_output
        self.recorder = CallRecorder(stack.calls, tenant, self.call_id)
        remote = any(stack.env.get(k) for k in ("DEEPGRAM_API_KEY", "ELEVEN_API_KEY", "ELEVENLABS_API_KEY"))
        voice = config.voice_config
        self.silence = (voice.turn_detection_threshold_ms if voice else DEFAULT_SILENCE * 1000) / 1000
        self.speech: SpeechChoice = (
            stack.speech(config)
            if stack.speech is not None
            else choose_speech(config, stack.env, stack.http if remote else None, silence=self.silence)
        )
        context = ToolContext(tenant=tenant, conversation_id=self.call_id, user_id=call.user_id)
        hooks = TurnHooks(
            sentiment=self._sentiment,
            escalate=self._escalate,
            tool_started=self._tool_started,
            tool_finished=self._tool_finished,
        )
        inbox = ChatInbox(stack.calls.store, tenant, self.call_id) if call.conversation_id else None
        self.brain: AgentBrain = ChatAwareBrain(config, stack.chain(config), stack.tools, context, hooks, inbox=inbox)
        self.session: AgentSession[None] | None = None
        self._heard: TranscriptSynchronizer | None = None
        self.closed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keypad = ""
        self._keypad_entries: set[str] = set()
        self._menu: IvrMenu | None = None  # the keypad menu the caller is in
        self._last_caller: str | None = None
        self._transfer: v.TransferRequested | None = None
        self.listening = asyncio.Event()

    # Lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        voice = self.config.voice_config
        barge_in = voice.stop_speaking_plan.voice_seconds if voice else 0.5
        # The STT ends turns itself (a remote provider's endpointing), or a local VAD does.
        endpointing = self.speech.endpointing
        session: AgentSession[None] = AgentSession(
            stt=self.speech.stt,
            vad=None if endpointing else self.stack.vad_for(self.silence),
            llm=ParleyLLM(self.brain),
            tts=self.speech.tts,
            turn_handling={
                "turn_detection": "stt" if endpointing else "vad",
                # The turn ends once the caller has been silent for the config's threshold: the VAD's
                # (or the provider's) silence is that threshold, and the endpointing adds nothing to it.
                "endpointing": {"min_delay": 0.0 if endpointing else self.silence, "max_delay": 3.0},
                "interruption": {
                    "enabled": True,
                    "mode": "vad",
                    "min_duration": max(0.2, barge_in),
                    "min_words": 1 if endpointing else 0,
                    # Twilio cannot pause what it is playing: a barge-in cuts the reply (``clear``).
                    "resume_false_interruption": False,
                },
                "preemptive_generation": {"enabled": False},
            },
            max_tool_steps=self.config.max_tool_rounds,
            user_away_timeout=None,
            # No echo-cancellation warm-up: the phone network sends the caller alone, so a caller who
            # talks over the first words of the greeting interrupts it at once.
            aec_warmup_duration=None,
        )
        self.session = session
        if self._input is not None and self._output is not None:
            session.input.audio = self._input
            # What the caller heard: the agent's words timed against the audio Twilio played (its
            # marks), so a reply cut short is kept, in the chat and on the call, as far as it was heard.
            heard = TranscriptSynchronizer(next_in_chain_audio=self._output, next_in_chain_text=None)
            self._heard = heard
            session.output.audio = heard.audio_output
            session.output.transcription = heard.text_output
        session.on("conversation_item_added", self._item_added)
        session.on("user_input_transcribed", self._transcribed)
        session.on("close", lambda _ev: self.closed.set())
        session.on("user_state_changed", self._user_state)
        session.on("agent_state_changed", self._agent_state)
        self._watch_stt()
        agent = ParleyAgent(self.brain, normalize=self._normalize)
        if self.room is not None:  # the room's audio (RoomIO), tapped for the recordings; its keypad
            options = room_io.RoomOptions(participant_identity=self.participant or NOT_GIVEN, close_on_disconnect=False)
            await session.start(agent, room=self.room, room_options=options, record=False)
            if session.input.audio is not None:
                self._input = TappedInput(session.input.audio, self.caller_audio)
                session.input.audio = self._input
            if session.output.audio is not None:
                tapped = TappedOutput(session.output.audio)
                self.agent_audio = tapped.recorded
                session.output.audio = tapped
            self.room.on("sip_dtmf_received", lambda ev: self.dtmf(ev.digit))
        else:
            await session.start(agent, record=False)
        self.stack.sessions[self.call_id] = self
        notice = self.config.templates.get("recording_notice")
        if notice and self.call.recording:
            session.input.set_audio_enabled(False)  # nothing is transcribed before the notice has played
            handle = session.say(notice, allow_interruptions=False, add_to_chat_ctx=False)
            await handle.wait_for_playout()
            self.recorder.send(v.PlayRecordingNotice(text=notice, at=now()), f"notice-{self.call_id}")
            session.input.set_audio_enabled(True)
        self.listening.set()
        menus = self.config.voice_config.ivr_menus if self.config.voice_config else []
        if menus:  # a keypad menu answers the call; speaking to the agent works as well
            self._open_menu(menus[0])
        elif self.greet:
            greeting = self.config.templates.get("greeting") or self.config.templates.get("general")
            if greeting:
                session.say(greeting)

    async def close(
        self, *, reason: str = "completed", ended_by: str = "caller", resolution: v.Resolution | None = None
    ) -> None:
        """Hang up: the session stops, what is pending is recorded, the audio stored, the call ended."""
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self.session.aclose()
        if self._heard is not None:  # its segment tasks end with it (else they are left pending)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._heard.aclose(), 5)
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        await self.recorder.close()
        self.stack.sessions.pop(self.call_id, None)
        await self._store_recordings()
        await self.stack.calls.end(
            self.tenant, self.call_id, reason=reason, resolution_status=resolution, ended_by=ended_by
        )
        self.closed.set()

    async def human_connected(self, requested: v.TransferRequested) -> Connected:
        """A transfer a person asked for on this call: the human hears the summary, then takes it."""
        if self.connect_human is not None:
            return await self.connect_human(requested, requested.summary or "")
        return Connected(ok=True)

    async def _store_recordings(self) -> None:
        store = self.stack.recordings
        if store is None or not self.call.recording:
            return
        tracks = [("caller", self.caller_audio, self._input_rate()), ("agent", self.agent_audio, self._output_rate())]
        for track, pcm, rate in tracks:
            if not pcm:
                continue
            try:
                stored = await store.put(self.tenant, self.call.user_id, self.call_id, track, bytes(pcm), rate)
                await self.stack.calls.record(
                    self.tenant,
                    self.call_id,
                    v.StoreRecording(
                        recording_id=stored.recording_id,
                        track=track,  # type: ignore[arg-type]
                        uri=stored.uri,
                        format="wav",
                        sample_rate=rate,
                        duration_seconds=round(len(pcm) / 2 / rate, 2),
                        bytes=stored.size,
                        at=now(),
                    ),
                    f"recording-{stored.recording_id}",
                )
            except Exception as e:  # the call is over either way; its recording is reported missing
                log.warning("call.recording_failed", call_id=self.call_id, track=track, error=str(e))

    def _input_rate(self) -> int:
        return int(getattr(self._input, "sample_rate", None) or self.sample_rate)

    def _output_rate(self) -> int:
        return int(
            getattr(self.session.output.audio if self.session else None, "recorded_rate", None) or self.sample_rate
        )

    # The keypad -------------------------------------------------------------------------------

    def dtmf(self, digit: str) -> None:
        """A key pressed: recorded; in a menu, the option of that key; else ``#`` ends an entry (digits
        the agent asked for) and ``*`` clears it."""
        self.recorder.send(v.PressDtmf(press_id=uuid.uuid4().hex, digit=digit, at=now()), f"dtmf-{uuid.uuid4().hex}")
        if self._menu is not None:
            self._choose(self._menu, digit)
        elif digit == "*":
            self._keypad = ""
        elif digit == "#":
            entry, self._keypad = self._keypad, ""
            if entry and self.session is not None:
                self._keyed(keypad_text(entry, self._last_reply(), self.speech.offline_stt.vocabulary.prefixes))
        elif digit.isdigit():
            self._keypad += digit

    def _keyed(self, text: str) -> None:
        """What the caller typed, taken as said: recorded as theirs (from the keypad) and answered."""
        if self.session is None:
            return
        self._keypad_entries.add(text)
        utterance_id = f"keypad-{uuid.uuid4().hex}"
        self.recorder.send(
            v.RecordCallerUtterance(utterance_id=utterance_id, text=text, confidence=1.0, source="dtmf", at=now()),
            utterance_id,
        )
        self._last_caller = utterance_id
        self.recorder.hold()
        self.session.interrupt()
        self.session.generate_reply(user_input=text)

    def _open_menu(self, menu: IvrMenu) -> None:
        self._menu = menu
        if self.session is not None:
            self.session.interrupt()
            self.session.say(menu.prompt)

    def _choose(self, menu: IvrMenu, digit: str) -> None:
        """A key in a menu: its option (another menu, a human, or a request the agent answers)."""
        option = next((o for o in menu.options if o.digit == digit), None)
        if option is None:
            if self.session is not None:
                self.session.interrupt()
                self.session.say(f"Sorry, that key is not an option. {menu.prompt}")
            return
        if option.menu is not None:
            target = next((m for m in self._menus() if m.name == option.menu), None)
            if target is not None:
                self._open_menu(target)
            return
        self._menu = None
        if option.transfer:
            if self.session is not None and not self.brain.handed_off:
                self.brain.handed_off = True
                escalation = Escalation(trigger="ivr_transfer", reason=f"keypad {digit} in menu {menu.name}")
                self.session.interrupt()
                self.session.say(handoff_text(self.config, msgspec.to_builtins(escalation), {"pii_collected": {}}))
                self._escalate(escalation)
            return
        self._keyed(option.say)

    def _menus(self) -> list[IvrMenu]:
        return self.config.voice_config.ivr_menus if self.config.voice_config else []

    def _last_reply(self) -> str:
        if self.session is None:
            return ""
        for item in reversed(self.session.history.items):
            if item.type == "message" and item.role == "assistant":
                return item.text_content or ""
        return ""

    def _normalize(self, text: str, _last_reply: str) -> str:
        return normalize_spoken(text, self.speech.offline_stt.vocabulary.prefixes)

    # Session events -> call commands ------------------------------------------------------------

    def _item_added(self, ev: Any) -> None:
        item = ev.item
        if getattr(item, "type", None) != "message" or item.role not in ("user", "assistant"):
            return
        text = item.text_content or ""
        if not text.strip():
            return
        metrics: Mapping[str, Any] = item.metrics or {}
        if item.role == "user":
            if text in self._keypad_entries:
                self._keypad_entries.discard(text)
                return
            self._menu = None  # the caller spoke instead of pressing a key: the agent takes it from here
            started, stopped = metrics.get("started_speaking_at"), metrics.get("stopped_speaking_at")
            utterance_id = item.id
            self._last_caller = utterance_id
            self.recorder.send(
                v.RecordCallerUtterance(
                    utterance_id=utterance_id,
                    text=text,
                    confidence=_unit(item.transcript_confidence),
                    language="en",
                    stt_provider=self.speech.stt_name,
                    started_speaking_at=_at(started),
                    stopped_speaking_at=_at(stopped),
                    audio_seconds=round(max(0.0, (stopped or 0) - (started or 0)), 3) if started and stopped else 0.0,
                    transcription_delay_ms=_ms(metrics.get("transcription_delay")),
                    end_of_turn_delay_ms=_ms(metrics.get("end_of_turn_delay")),
                    at=now(),
                ),
                utterance_id,
            )
            return
        self.recorder.send(
            v.RecordAgentUtterance(
                utterance_id=item.id,
                text=text,
                in_reply_to=self._last_caller,
                provider=self.brain.provider or "offline",
                llm_ttft_ms=_ms(metrics.get("llm_node_ttft")),
                tts_ttfb_ms=_ms(metrics.get("tts_node_ttfb")),
                e2e_latency_ms=_ms(metrics.get("e2e_latency")),
                interrupted=bool(item.interrupted),
                heard_text=text if item.interrupted else None,
                at=now(),
            ),
            item.id,
        )

    def _user_state(self, ev: Any) -> None:
        if ev.new_state == "listening":  # the caller stopped: a reply may be on its way
            self.recorder.hold()

    def _agent_state(self, ev: Any) -> None:
        if ev.new_state in ("speaking", "listening"):  # the reply's first audio is out (or none comes)
            self.recorder.release()

    def _transcribed(self, ev: Any) -> None:
        if not ev.is_final and ev.transcript:
            body = {"speaker": "user", "text": ev.transcript, "is_final": False, "timestamp": now().isoformat()}
            self._spawn(self.stack.live(self.tenant, self.call_id, "transcript_interim", body))

    def _watch_stt(self) -> None:
        primary = self.speech.primary_stt
        if primary is None:
            return
        name = self.speech.stt_name

        def errored(error: Any) -> None:
            if getattr(error, "recoverable", False):
                self._interrupted(name, str(getattr(error, "error", error)), "reconnected")

        def availability(ev: Any) -> None:
            if ev.stt is not None and not ev.available and "offline" not in ev.stt.label.lower():
                self._interrupted(name, "unavailable", "fallback:offline")

        primary.on("error", errored)
        self.speech.stt.on("stt_availability_changed", availability)

    def _interrupted(self, provider: str, error: str, recovered_by: str) -> None:
        log.warning("call.stt_interrupted", call_id=self.call_id, provider=provider, recovered_by=recovered_by)
        self.recorder.send(
            v.ReportSpeechProviderInterruption(
                stage="stt", provider=provider, error=error[:500], recovered_by=recovered_by, at=now()
            ),
            f"stt-{uuid.uuid4().hex}",
        )

    # Agent hooks ------------------------------------------------------------------------------

    def _sentiment(self, score: float, emotion: str, escalation: bool) -> None:
        self.recorder.send(
            v.UpdateSentiment(score=score, emotion=emotion, escalation_suggested=escalation, at=now()),
            f"sentiment-{uuid.uuid4().hex}",
        )

    async def _tool_started(self, call_id: str, tool: str, arguments: dict[str, Any]) -> None:
        # Beside the audio path: queued in order, appended by the recorder while the tool runs (a
        # tool's effect is not held back behind a reply's first audio).
        self.recorder.release()
        self.recorder.send(
            v.StartToolCall(tool_call_id=call_id, tool=tool, arguments=arguments, at=now()), f"tool-{call_id}"
        )

    async def _tool_finished(self, call_id: str, run: ToolRun) -> None:
        self.recorder.send(
            v.FinishToolCall(
                tool_call_id=call_id,
                output=run.call.output,
                error=run.call.error,
                execution_time_ms=run.call.execution_time_ms,
                at=now(),
            ),
            f"tool-done-{call_id}",
        )

    def _escalate(self, escalation: Escalation) -> None:
        self._spawn(self._hand_off(escalation))

    async def _hand_off(self, escalation: Escalation) -> None:
        """After the handoff message has played: a hot transfer to a human of the tenant's pool."""
        await asyncio.sleep(0)
        deadline = time.monotonic() + 30
        while self.session is not None and time.monotonic() < deadline:
            speech = self.session.current_speech
            if speech is None and self.session.agent_state != "speaking":
                break
            if speech is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(speech.wait_for_playout(), 30)
            await asyncio.sleep(0.05)
        try:
            requested, target, _summary, outcome = await self.stack.calls.transfer(
                self.tenant,
                self.call_id,
                transfer_type="hot",
                reason=escalation.trigger,
                trigger=escalation.trigger,
                requested_by="agent:ai",
            )
        except ParleyError as e:
            log.warning("call.transfer_refused", call_id=self.call_id, error=e.message)
            return
        self._transfer = requested
        if outcome.state.open_transfer == requested.transfer_id and target.target is not None:
            connected = (
                await self.connect_human(requested, requested.summary or "")
                if self.connect_human is not None
                else Connected(ok=True)
            )
            await self.stack.calls.settle_transfer(self.tenant, self.call_id, requested.transfer_id, connected)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class ChatInbox:
    """What the customer sent in the chat linked to a call: its ``ChatbotDataShared`` events, each
    taken once (the call's stream read from where the last read ended)."""

    def __init__(self, store: EventStore, tenant: str, call_id: str) -> None:
        self.store = store
        self.stream = StreamId(tenant, v.AGGREGATE_TYPE, call_id)
        self._after = 0
        self._taken: set[str] = set()

    async def take(self) -> list[v.ChatbotDataShared]:
        try:
            found = await self.store.read(self.stream, after_seq=self._after)
        except Exception as e:  # the call goes on without it; the next turn reads again
            log.warning("call.chat_inbox_unreadable", stream=self.stream.key, error=str(e))
            return []
        if found:
            self._after = found[-1].seq
        new = [
            e.event for e in found if isinstance(e.event, v.ChatbotDataShared) and e.event.message_id not in self._taken
        ]
        self._taken |= {e.message_id for e in new}
        return new


class ChatAwareBrain(AgentBrain):
    """The call's agent, told on its next turn what the customer sent in the linked chat: those
    messages join the conversation before the caller's latest words (so a tool may draw on them: an
    order number sent in the chat), and the reply opens by acknowledging them."""

    def __init__(self, *args: Any, inbox: ChatInbox | None = None) -> None:
        super().__init__(*args)
        self.inbox = inbox
        self.shared: list[tuple[int, ChatMessage]] = []  # (before the caller's n-th turn, the message)
        self._unacknowledged: list[str] = []

    async def respond(self, messages: list[ChatMessage]) -> tuple[str, list[ToolCallRequest]]:
        if self.inbox is not None and messages and messages[-1].role == "user" and not self.handed_off:
            turn = sum(1 for m in messages if m.role == "user") - 1
            for shared in await self.inbox.take():
                text = v.shared_text(shared.shared_data or {})
                if text:
                    self.shared.append((turn, ChatMessage("user", f"(sent in the chat) {text}")))
                    self._unacknowledged.append(text)
        text, calls = await super().respond(with_shared(messages, self.shared))
        if text and self._unacknowledged and not self.handed_off:
            text = f"{acknowledgement(self._unacknowledged)} {text}"
            self._unacknowledged = []
        return text, calls


def with_shared(messages: list[ChatMessage], shared: list[tuple[int, ChatMessage]]) -> list[ChatMessage]:
    """``messages`` with each chat message placed before the caller turn it came before (pure)."""
    if not shared:
        return messages
    out: list[ChatMessage] = []
    turn = 0
    for message in messages:
        if message.role == "user":
            out += [chat for before, chat in shared if before == turn]
            turn += 1
        out.append(message)
    out += [chat for before, chat in shared if before >= turn]
    return out


def acknowledgement(texts: list[str], limit: int = 160) -> str:
    """What the agent says of what the customer sent in the chat (the seed's "I see you've ...")."""
    said = " and ".join(f'"{text}"' for text in texts)
    if len(said) > limit:
        said = said[: limit - 3].rsplit(" ", 1)[0] + '..."'
    return f"I see you've sent {said} in the chat."


def keypad_text(digits: str, last_reply: str, prefixes: tuple[str, ...] = ()) -> str:
    """Digits typed on the keypad as the caller means them: the identifier the agent just asked for
    ("It starts with O R D" + 78945 -> "ORD-78945"), else the digits. The prefix counts as its own
    letters, spelled or not ("O R D", "ORD"), never inside a word: after "...check an order" keyed
    digits stay digits (a card number is not an order number)."""
    asked = last_reply.upper()
    for prefix in prefixes:
        if re.search(r"\b" + r"\s*".join(map(re.escape, prefix)) + r"\b", asked):
            return f"{prefix}-{digits}"
    return digits


def _unit(value: float | None) -> float | None:
    if value is None:
        return None
    return max(0.0, min(1.0, float(value)))


async def answer_stream(
    stack: VoiceStack,
    tenant: str,
    config_id: str,
    start: Mapping[str, Any],
    audio_input: io.AudioInput,
    audio_output: io.AudioOutput,
) -> tuple[Callable[[str], None], Callable[[str], Awaitable[None]]]:
    """A Twilio media stream's call: answered (admitted, pinned to the config's active version) and
    its session started. Returns the stream's keypad and hang-up handlers."""
    from gateways.telephony.twilio import call_id_for

    parameters = dict(start.get("customParameters") or {})
    call_sid = str(start.get("callSid") or uuid.uuid4().hex)
    call_id = call_id_for(tenant, call_sid)
    outcome = await stack.calls.answer(
        tenant,
        call_id=call_id,
        config_id=config_id,
        phone_number=parameters.get("from") or None,
        transport="twilio",
        provider_call_id=call_sid,
        conversation_id=parameters.get("conversation_id") or None,
    )
    call = outcome.state
    config = await stack.configs.get(tenant, call.config_id, call.config_version)
    session = CallSession(stack, tenant, call, config, audio_input=audio_input, audio_output=audio_output)
    await session.start()

    async def hang_up(reason: str) -> None:
        await session.close(reason=reason, ended_by="caller")

    return session.dtmf, hang_up
