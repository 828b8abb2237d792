"""Voice calls: turn latency and concurrent calls, over the Twilio media-stream path in real time.

Each call is a caller (``gateways.telephony.phone.Phone``) speaking Twilio's side of a media stream
with 20 ms mu-law frames in real time, joined to ``MediaStreamBridge`` and the call's LiveKit
``AgentSession`` (silero VAD, STT, Parley's agent with the voice bot's config and tools, TTS), with
every turn recorded on the call in JetStream. Measured as the caller experiences it:

- turn latency: from the end of the caller's speech to the first agent audio frame, p50 / p95,
  with the offline pipeline (silero VAD ending the turn after the config's 300 ms of silence,
  pocketsphinx decoding while the caller speaks, espeak-ng) and with instant remote stand-ins (an STT
  that ends turns itself as Deepgram does, a TTS that answers at once): the platform's own share is
  LiveKit's end-to-end less the endpointing wait (``end_of_turn_delay_ms``), i.e. the turn decision
  to the first agent frame: the agent, the session, the bridge;
- concurrent calls on this machine with no late outbound frame: each agent frame must reach the
  caller before its playback slot (p99 lateness < 20 ms), with remote STT/TTS stand-ins (no local
  CPU for speech, as with Deepgram and ElevenLabs) and with the offline pipeline; CPU per call-minute.

``--quick`` runs a small version to check the benchmark itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from livekit.agents import stt, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr

from bench.common import percentile, table, write_results
from infra.logs import configure_logging
from infra.services import NatsServer, Postgres, service_tmpdir

SCRIPT = ["Where is my order?", "dtmf:78945#", "I want a refund", "Thank you"]
TRANSCRIPTS = ["Where is my order?", "I want a refund", "Thank you"]


class RemoteSTT(stt.STT):
    """A remote streaming STT (Deepgram's shape): it ends the caller's turns itself, as the provider's
    endpointing does (so the call runs no local VAD), and answers each with the next line of the
    caller's script, at once. Its endpointing is the energy one (``Endpointer``): next to no CPU here,
    as a remote provider's costs this machine nothing."""

    def __init__(self, lines: list[str], silence: float = 0.3) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self.lines = list(lines)
        self.silence = silence

    async def _recognize_impl(self, buffer: Any, *, language: Any = NOT_GIVEN, conn_options: Any = None) -> Any:
        raise NotImplementedError

    def stream(
        self, *, language: NotGivenOr[str] = NOT_GIVEN, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> stt.RecognizeStream:
        return _RemoteStream(self, conn_options=conn_options)


class _RemoteStream(stt.RecognizeStream):
    def __init__(self, remote: RemoteSTT, *, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=remote, conn_options=conn_options)
        self._remote = remote

    def _emit(self, kind: stt.SpeechEventType, text: str = "") -> None:
        alternatives = [stt.SpeechData(language="en", text=text, confidence=0.99)] if text else []
        self._event_ch.send_nowait(stt.SpeechEvent(type=kind, alternatives=alternatives))

    async def _run(self) -> None:
        from gateways.speech.offline import Endpointer

        endpointer = Endpointer(self._remote.silence)
        async for data in self._input_ch:
            if isinstance(data, self._FlushSentinel):
                continue
            match endpointer.push(data):
                case "start":
                    self._emit(stt.SpeechEventType.START_OF_SPEECH)
                case "end":
                    line = self._remote.lines.pop(0) if self._remote.lines else ""
                    if line:
                        self._emit(stt.SpeechEventType.FINAL_TRANSCRIPT, line)
                    self._emit(stt.SpeechEventType.END_OF_SPEECH)


class InstantTTS(tts.TTS):
    """Speaks any text at once: a tone as long as the text would take to say."""

    def __init__(self) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False), sample_rate=8000, num_channels=1)

    def synthesize(self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> Any:
        return _Instant(tts=self, input_text=text, conn_options=conn_options)


class _Instant(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        import numpy as np

        seconds = min(6.0, 0.06 * len(self.input_text))
        t = np.arange(int(8000 * seconds)) / 8000
        pcm = (np.sin(2 * np.pi * 220 * t) * 6000).astype(np.int16).tobytes()
        output_emitter.initialize(
            request_id=uuid.uuid4().hex[:8], sample_rate=8000, num_channels=1, mime_type="audio/pcm", frame_size_ms=20
        )
        output_emitter.push(pcm)
        output_emitter.flush()


async def run(args: argparse.Namespace, nats_url: str, pg_url: str, data: Path) -> dict[str, Any]:
    from psycopg_pool import AsyncConnectionPool

    from agents.config import VersionedConfigs
    from agents.demo_data import setup_demo_data
    from agents.tools import demo_registry
    from commands.call import CALL, VOICE_LINE, CallService
    from commands.config import AGENT_CONFIG, CONFIG_MEMBERS, ConfigService, ensure_demo_configs
    from commands.runner import CommandRunner
    from domain import call as v
    from gateways.speech.offline import PocketsphinxSTT, Vocabulary
    from gateways.speech.providers import SpeechChoice
    from gateways.telephony.phone import Phone, Turn, speech_ulaw
    from gateways.telephony.session import VoiceStack, answer_stream
    from gateways.telephony.twilio import MediaStreamBridge, call_id_for
    from streams.factory import StoreSettings, open_store
    from streams.subjects import StreamId

    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await setup_demo_data(conn, tenants=("bench",))
    opened = await open_store(StoreSettings(nats_url=nats_url, data_dir=data, stream="BENCH_VOICE"))
    await opened.log.ensure()
    runner = CommandRunner.for_aggregates(opened.store, [AGENT_CONFIG, CONFIG_MEMBERS, CALL, VOICE_LINE])
    configs = ConfigService(runner)
    await ensure_demo_configs(configs, "bench")
    calls = CallService(runner, configs.catalog)
    await calls.configure_line("bench", v.LineSettings(max_concurrent=10_000), "bench")
    # The tools read the demo data through a connection pool, as the API process's do.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(pg_url, min_size=2, max_size=10, open=False,
                                                         kwargs={"autocommit": True})  # fmt: skip
    await pool.open(wait=True)
    registry = demo_registry(pool.connection)

    def stack_for(instant: bool) -> VoiceStack:
        def speech(config: Any) -> SpeechChoice:
            offline = PocketsphinxSTT(Vocabulary.from_config(config))
            return SpeechChoice(RemoteSTT(TRANSCRIPTS), InstantTTS(), "remote", "instant", offline, endpointing=True)

        return VoiceStack(calls, registry, VersionedConfigs(configs.catalog.state), {},
                          speech=speech if instant else None)  # fmt: skip

    async def one_call(stack: VoiceStack) -> tuple[Any, list[Any]]:
        to_bridge: asyncio.Queue[Any] = asyncio.Queue()
        to_phone: asyncio.Queue[Any] = asyncio.Queue()

        async def on_start(start: dict[str, Any], audio_in: Any, audio_out: Any) -> Any:
            return await answer_stream(stack, "bench", "voice-bot", start, audio_in, audio_out)

        async def put_bridge(m: dict[str, Any]) -> None:
            await to_bridge.put(m)

        async def put_phone(m: dict[str, Any]) -> None:
            await to_phone.put(m)

        bridge = asyncio.create_task(MediaStreamBridge(to_bridge.get, put_phone, on_start).run())
        phone = Phone(put_bridge, to_phone.get, speed=1.0)
        try:
            record = await phone.call([Turn.parse(s) for s in SCRIPT], settle=1.0, max_wait=20)
        finally:
            await to_bridge.put(None)
            await asyncio.wait_for(bridge, 60)
            await to_phone.put(None)
        events = await opened.store.read(StreamId("bench", v.AGGREGATE_TYPE, call_id_for("bench", phone.call_sid)))
        return record, [e.event for e in events]

    async def wave(instant: bool, n: int) -> dict[str, Any]:
        stack = stack_for(instant)
        load_before = os.getloadavg()[0]
        cpu0, wall0 = _cpu(), time.perf_counter()
        done = await asyncio.gather(*(one_call(stack) for _ in range(n)), return_exceptions=True)
        cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
        ok = [d for d in done if not isinstance(d, BaseException)]
        failed = [d for d in done if isinstance(d, BaseException)]
        latencies = [lat for record, _ in ok for lat in record.turn_latencies]
        lateness = [x for record, _ in ok for x in record.frame_lateness]
        endpointing = [e.end_of_turn_delay_ms for _, evs in ok for e in evs
                       if isinstance(e, v.CallerSpoke) and e.end_of_turn_delay_ms is not None]  # fmt: skip
        # The platform's share of a turn: LiveKit's end-to-end (end of speech -> agent audio) less
        # the endpointing wait of the caller's turn it answers.
        share = []
        for _, evs in ok:
            waits = {e.utterance_id: e.end_of_turn_delay_ms for e in evs if isinstance(e, v.CallerSpoke)}
            for e in evs:
                if isinstance(e, v.AgentSpoke) and e.e2e_latency_ms is not None and waits.get(e.in_reply_to or ""):
                    share.append(e.e2e_latency_ms - (waits[e.in_reply_to or ""] or 0.0))
        e2e = [e.e2e_latency_ms for _, evs in ok for e in evs
               if isinstance(e, v.AgentSpoke) and e.e2e_latency_ms is not None]  # fmt: skip
        call_minutes = sum(len(record.agent_audio) / 16000 for record, _ in ok) / 60 or 1e-9
        await stack.aclose()
        return {
            "calls": n,
            "completed": len(ok),
            "errors": [repr(e)[:200] for e in failed],
            "turn_latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "turn_latency_p95_ms": round(percentile(latencies, 95) * 1000, 1),
            "endpointing_p50_ms": round(percentile(endpointing, 50), 1) if endpointing else None,
            "livekit_e2e_p95_ms": round(percentile(e2e, 95), 1) if e2e else None,
            "platform_share_p50_ms": round(percentile(share, 50), 1) if share else None,
            "platform_share_p95_ms": round(percentile(share, 95), 1) if share else None,
            "frame_lateness_p99_ms": round(percentile(lateness, 99) * 1000, 1) if lateness else None,
            "frames": len(lateness),
            "cpu_seconds": round(cpu, 1),
            "wall_seconds": round(wall, 1),
            "cpu_seconds_per_call_minute": round(cpu / max(1e-9, wall * n / 60), 2),
            "agent_audio_minutes": round(call_minutes, 2),
            # The machine's 1-minute load average around the wave (2 cores: above 2, other work competed).
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }

    # The callers' lines are synthesized before any call: the callers share this process with the
    # platform, and their synthesis would otherwise count against it.
    for line in SCRIPT:
        if not line.startswith("dtmf:"):
            await speech_ulaw(Turn.parse(line))
    results: dict[str, Any] = {}
    try:
        print("turn latency, offline pipeline ...", flush=True)
        results["offline_one"] = await wave(False, 1 if args.quick else 3)
        print("turn latency, instant STT/TTS stand-ins ...", flush=True)
        results["instant_one"] = await wave(True, 1 if args.quick else 3)
        results["concurrent_instant"] = []
        for n in [4] if args.quick else args.instant_calls:
            print(f"{n} concurrent calls, remote STT/TTS stand-ins ...", flush=True)
            results["concurrent_instant"].append(await wave(True, n))
        results["concurrent_offline"] = []
        for n in [2] if args.quick else args.offline_calls:
            print(f"{n} concurrent calls, offline pipeline ...", flush=True)
            results["concurrent_offline"].append(await wave(False, n))
    finally:
        await opened.log.delete()
        await opened.close()
        await pool.close()
    return results


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--instant-calls", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--offline-calls", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()
    configure_logging(level="ERROR", json=False)
    root = service_tmpdir("parley-bench-voice-")
    nats, pg = NatsServer(root / "nats"), Postgres(root / "pg")
    try:
        nats_url, pg_url = nats.start(), pg.start()
        results = asyncio.run(run(args, nats_url, pg_url, root / "data"))
    finally:
        for srv in (pg, nats):
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for key, name in (("offline_one", "offline pipeline"), ("instant_one", "instant STT/TTS stand-ins")):
        r = results[key]
        rows.append([f"turn latency, {name} (p50 / p95 ms)", f"{r['turn_latency_p50_ms']} / {r['turn_latency_p95_ms']}",
                     "p95 < 500" if key == "offline_one" else "-"])  # fmt: skip
        rows.append(["  of which endpointing (VAD silence + min delay, p50 ms); platform share p95",
                     f"{r['endpointing_p50_ms']}; {r['platform_share_p95_ms']}",
                     "" if key == "offline_one" else "share <= 30"])  # fmt: skip
    for key, name in (("concurrent_instant", "remote stand-ins"), ("concurrent_offline", "offline pipeline")):
        for r in results[key]:
            rows.append([f"{r['calls']} concurrent calls, {name}: frame lateness p99 ms (frames)",
                         f"{r['frame_lateness_p99_ms']} ({r['frames']:,}), {r['completed']}/{r['calls']} done",
                         "< 20"])  # fmt: skip
            rows.append(["  turn p95 ms; CPU s per call-minute", f"{r['turn_latency_p95_ms']}; "
                         f"{r['cpu_seconds_per_call_minute']}", ""])  # fmt: skip
    print()
    print(table(["measure", "value", "target"], rows))
    loads = [load for r in [results["offline_one"], results["instant_one"], *results["concurrent_instant"],
                            *results["concurrent_offline"]] for load in r["load_average"]]  # fmt: skip
    print(f"\nthe machine's load average during the run: {min(loads)} to {max(loads)} (2 cores)")
    path = write_results("voice-quick" if args.quick else "voice", {"results": results})
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
