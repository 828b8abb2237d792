"""Voice scenarios played as phone calls over the telephony gateway, and ``./parley test-conversations``.

The scenario format is ``agents.scenarios``'s: a story whose steps are spoken (``say:`` synthesized
with espeak-ng, ``wav:`` a recording, ``dtmf:`` keys; ``barge_in: true`` over the agent) is a phone
call. ``run_voice_scenarios(paths, line)`` plays each such story on a ``VoiceLine``: each step's
words (or its WAV, or its keys) go as 8 kHz mu-law media frames, 20 ms apart, down a Twilio media
stream to the call's voice session (VAD, STT, the agent, TTS back), as a caller's phone would
(``gateways.telephony.phone``). A step ends when the agent has answered it and gone quiet; what the
call recorded meanwhile (its events) is what the step's expectations are checked against
(``check_call_step``: ``heard_contains``, replies, tools, keys, ``transfer``). Once the caller hangs
up, the story's ``expect_call`` is checked against the call's status in the read model
(``check_call``).

The suite's line is the platform in process (``tests/voice_support.RigLine``); the command line's is
the running platform (``PlatformLine``)::

    python -m gateways.telephony.scenarios tests/scenarios tests/scenarios/voice

runs the chat files through the graph on ``DATABASE_URL``'s demo data (``agents.scenarios``) and
the spoken ones as calls to the platform at ``--api``, prints the report and exits 1 when a story
fails. It is ``./parley test-conversations``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import msgspec
import websockets

from agents.scenarios import (
    ScenarioReport,
    Story,
    StoryResult,
    argument_parser,
    containing,
    lacking,
    load_scenarios,
    run_chat_files,
    scenario_paths,
    seed_demo_data,
    unmatched,
)
from agents.tools import DEFAULT_TENANT
from commands.config import DEMO_CONFIGS
from domain import call as v
from gateways.telephony.phone import Phone, Turn
from gateways.telephony.twilio import call_id_for
from streams.subjects import StreamId


class HeardTool(msgspec.Struct, frozen=True):
    tool: str
    arguments: dict[str, Any] | None = None
    output: Any = None
    error: str | None = None


class CallStep(msgspec.Struct, frozen=True, kw_only=True):
    """What one caller turn brought about on the call."""

    heard: list[str] = []  # the caller's utterances as recorded: recognized (or keyed), card numbers masked
    sources: list[str] = []  # speech or dtmf, each
    replies: list[str] = []  # the agent's utterances
    tools: list[HeardTool] = []
    dtmf: str = ""  # keys pressed
    transfer: dict[str, Any] | None = None  # the transfer requested: its type, agent, trigger, status
    sentiment: float | None = None
    agent_audio_seconds: float = 0.0  # agent audio the caller's phone played


class CallOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """A call's status once it has ended (the seed's ``GET /voice/calls/{id}``, from the read model)."""

    status: str
    resolution_status: str | None = None
    transcript: list[dict[str, Any]] = []  # speaker, text, source, confidence
    tools_executed: list[str] = []
    recordings: list[str] = []  # their tracks
    transfer: dict[str, Any] | None = None

    @classmethod
    def from_status(cls, view: Mapping[str, Any]) -> CallOutcome:
        return cls(
            status=str(view.get("status")),
            resolution_status=view.get("resolution_status"),
            transcript=list(view.get("transcript") or []),
            tools_executed=[t["tool"] for t in view.get("tools_executed") or []],
            recordings=sorted(r["track"] for r in view.get("recordings") or []),
            transfer=view.get("transfer"),
        )


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any] | None]]


class VoiceLine(Protocol):
    """Where a call's story is played: the platform in this process (the tests), or a running one."""

    speed: float  # the caller's clock (1: real time)

    async def prepare(self, name: str, config: Path, agents: Mapping[str, str]) -> str:
        """The config (file) the calls of scenario file ``name`` are answered with, as the id they are
        answered with; and its human agents registered and available."""
        ...

    def media(self, config_id: str, call_sid: str) -> AbstractAsyncContextManager[tuple[Send, Receive, dict[str, str]]]:
        """A media stream of the call ``call_sid``, answered with ``config_id``: what the phone sends and
        receives on it, and the custom parameters of its ``start``."""
        ...

    async def events(self, call_sid: str) -> list[Any]:
        """The events of the call with Twilio's ``call_sid``, so far."""
        ...

    async def outcome(self, call_sid: str) -> CallOutcome:
        """The call's status once its end is in the read model."""
        ...


async def run_voice_scenarios(paths: Iterable[str | Path], line: VoiceLine, *, concurrency: int = 1) -> ScenarioReport:
    """Every story of every file, each a phone call on ``line``, ``concurrency`` calls at a time."""
    calls: list[Awaitable[StoryResult]] = []
    limit = asyncio.Semaphore(concurrency)

    async def held(path: Path, story: Story, config_id: str) -> StoryResult:
        async with limit:
            return await run_call_story(path, story, line, config_id)

    for path in scenario_paths(paths):
        scenario, _config = load_scenarios(path)
        config_id = await line.prepare(path.stem, path.parent / scenario.config, scenario.agents)
        calls += [held(path, story, config_id) for story in scenario.stories]
    return ScenarioReport(list(await asyncio.gather(*calls)))


async def run_call_story(path: Path, story: Story, line: VoiceLine, config_id: str) -> StoryResult:
    if not all(step.spoken for step in story.steps):
        return StoryResult(path.name, story.name, ["a call's steps are spoken (say, wav or dtmf), not typed (user)"])
    turns = [
        Turn(
            text=step.say or "",
            wav=None if step.wav is None else path.parent / step.wav,
            keys=step.dtmf or "",
            barge_in=step.barge_in,
        )
        for step in story.steps
    ]
    snapshots: list[tuple[int, float]] = []  # (events recorded, agent audio played) at each step's start
    seen: list[Any] = []

    class StepPhone(Phone):
        """The phone, stopping at each step's end (its next turn, or the hang-up) to note the call's state."""

        async def say(self, turn: Turn) -> None:
            await checkpoint(self)
            await super().say(turn)

        async def _emit(self, message: dict[str, Any]) -> None:
            if message.get("event") == "stop":
                await checkpoint(self)
            await super()._emit(message)

    async def checkpoint(phone: Phone) -> None:
        seen[:] = await _settled(line, phone.call_sid)
        snapshots.append((len(seen), len(phone.record.agent_audio) / 2 / 8000))

    failures: list[str] = []
    try:
        call_sid = "CA" + uuid.uuid4().hex
        async with line.media(config_id, call_sid) as (send, receive, parameters):
            phone = StepPhone(send, receive, parameters=parameters, speed=line.speed, call_sid=call_sid)
            await phone.call(turns)
        outcome: CallOutcome | None = await line.outcome(call_sid)
    except Exception as e:  # the call could not be held: the story fails, saying why
        failures.append(f"the call failed: {type(e).__name__}: {e}")
        outcome = None
    for number, step in enumerate(story.steps, 1):
        if number >= len(snapshots):
            failures.append(f"step {number} ({step.describe()}): not reached")
            continue
        (start, audio_start), (end, audio_end) = snapshots[number - 1], snapshots[number]
        observed = call_step(seen[start:end], audio_end - audio_start)
        heard = f", heard {' | '.join(observed.heard)!r}" if step.say is not None or step.wav is not None else ""
        failures += [
            f"step {number} ({step.describe()}{heard}): {problem}" for problem in check_call_step(step.expect, observed)
        ]
    if outcome is not None:
        failures += [f"after the call: {problem}" for problem in check_call(story.expect_call, outcome)]
    return StoryResult(path.name, story.name, failures)


async def _settled(line: VoiceLine, call_sid: str, quiet: float = 0.4, limit: float = 10.0) -> list[Any]:
    """The call's events once no more have come for ``quiet`` seconds (what the step set going is
    recorded beside the audio path, a moment after it was heard)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    events = await line.events(call_sid)
    while loop.time() < deadline:
        await asyncio.sleep(quiet)
        again = await line.events(call_sid)
        if len(again) == len(events):
            break
        events = again
    return events


def call_step(events: Sequence[Any], agent_audio_seconds: float = 0.0) -> CallStep:
    """A step's events as what the caller and the agent did."""
    heard: list[str] = []
    sources: list[str] = []
    replies: list[str] = []
    tools: dict[str, HeardTool] = {}
    dtmf = ""
    transfer: dict[str, Any] | None = None
    sentiment: float | None = None
    for event in events:
        match event:
            case v.CallerSpoke():
                heard.append(event.text or "")
                sources.append(event.source)
            case v.AgentSpoke():
                replies.append(event.text or "")
            case v.ToolCallStarted():
                tools[event.tool_call_id] = HeardTool(event.tool, event.arguments)
            case v.ToolCallFinished():
                started = tools.get(event.tool_call_id, HeardTool(event.tool))
                tools[event.tool_call_id] = msgspec.structs.replace(started, output=event.output, error=event.error)
            case v.DtmfPressed():
                dtmf += event.digit or ""
            case v.SentimentUpdated():
                sentiment = event.score
            case v.TransferRequested():
                transfer = {
                    "status": "requested",
                    "transfer_type": event.transfer_type,
                    "agent_id": event.agent_id,
                    "trigger": event.trigger,
                    "reason": event.reason,
                    "summary": event.summary,
                }
            case v.TransferConnected() if transfer is not None:
                transfer["status"] = "connected"
            case v.TransferFailed() if transfer is not None:
                transfer |= {"status": "failed", "failure": event.reason}
    return CallStep(
        heard=heard,
        sources=sources,
        replies=replies,
        tools=list(tools.values()),
        dtmf=dtmf,
        transfer=transfer,
        sentiment=sentiment,
        agent_audio_seconds=round(agent_audio_seconds, 2),
    )


def check_call_step(expect: Mapping[str, Any], step: CallStep) -> list[str]:
    """What differs between a spoken step's ``expect`` and what the call recorded for it::

        heard_contains: "ORD-78945"     # what the recognizer heard (or the keypad gave); a string or a list
        heard_not_contains: "4111"      # ... with card numbers masked
        heard_source: dtmf              # speech or dtmf
        reply_contains / reply_not_contains / reply_matches   # the agent's replies in this step
        tool_call / tools_exactly / tool_args / tool_error    # as in a chat step
        dtmf: "78945#"                  # the keys recorded
        transfer: true                  # or false, or fields: {trigger: urgent_keywords, agent_id: mike,
                                        #   transfer_type: hot, status: connected}
        sentiment_below: 0.4

    Every reply must also have been heard: agent audio reached the caller's phone in the step.
    """
    problems: list[str] = []
    heard = " | ".join(step.heard)
    reply = " ".join(step.replies)
    tools = [t.tool for t in step.tools]
    if step.replies and step.agent_audio_seconds <= 0:
        problems.append(f"the agent replied {reply!r} but no audio reached the caller")
    for key, wanted in expect.items():
        match key:
            case "heard_contains":
                problems += lacking(f"heard {heard!r},", heard, wanted)
            case "heard_not_contains":
                problems += containing(f"heard {heard!r},", heard, wanted)
            case "heard_source":
                if wanted not in step.sources:
                    problems.append(f"heard from {step.sources}, expected {wanted!r}")
            case "reply_contains":
                problems += lacking(f"reply {reply!r}", reply, wanted)
            case "reply_not_contains":
                problems += containing(f"reply {reply!r}", reply, wanted)
            case "reply_matches":
                problems += unmatched(f"reply {reply!r}", reply, wanted)
            case "tool_call":
                names = [] if wanted in (False, None) else [wanted] if isinstance(wanted, str) else list(wanted)
                if (names and not all(name in tools for name in names)) or (not names and tools):
                    problems.append(f"tool calls {tools}, expected {names or 'none'}")
            case "tools_exactly":
                if tools != list(wanted):
                    problems.append(f"tool calls {tools}, expected exactly {list(wanted)}")
            case "tool_args":
                for tool, inputs in wanted.items():
                    calls = [t.arguments or {} for t in step.tools if t.tool == tool]
                    if not any(all(call.get(k) == v for k, v in inputs.items()) for call in calls):
                        problems.append(f"no {tool} call with {inputs}; calls: {calls}")
            case "tool_error":
                failed = [t.tool for t in step.tools if t.error]
                if bool(failed) != bool(wanted):
                    problems.append(f"failed tools {failed}, expected {'a failure' if wanted else 'none'}")
            case "dtmf":
                if step.dtmf != str(wanted):
                    problems.append(f"keys {step.dtmf!r}, expected {wanted!r}")
            case "transfer":
                problems += _compare_fields("transfer", wanted, step.transfer)
            case "sentiment_below":
                if step.sentiment is None or step.sentiment >= wanted:
                    problems.append(f"sentiment {step.sentiment} is not below {wanted}")
            case _:
                problems.append(f"unknown expectation {key!r}")
    return problems


def check_call(expect: Mapping[str, Any], outcome: CallOutcome) -> list[str]:
    """What differs between a story's ``expect_call`` and the ended call's status::

    status: ended
    resolution_status: transferred
    transcript_contains: "ORD-78945"     # a line of the stored transcript, any speaker
    transcript_not_contains: "4111 1111"
    tools_executed: [fetch_order_status]  # at least these
    recordings: [agent, caller]
    transfer: {status: connected, agent_id: mike}
    """
    problems: list[str] = []
    lines = [f"{line.get('speaker')}: {line.get('text') or ''}" for line in outcome.transcript]
    text = "\n".join(lines)
    for key, wanted in expect.items():
        match key:
            case "status" | "resolution_status":
                if getattr(outcome, key) != wanted:
                    problems.append(f"{key} {getattr(outcome, key)!r}, expected {wanted!r}")
            case "transcript_contains":
                problems += lacking(f"transcript {lines}", text, wanted)
            case "transcript_not_contains":
                problems += containing(f"transcript {lines}", text, wanted)
            case "tools_executed":
                if not set(wanted) <= set(outcome.tools_executed):
                    problems.append(f"tools executed {outcome.tools_executed}, expected {list(wanted)}")
            case "recordings":
                if outcome.recordings != sorted(wanted):
                    problems.append(f"recordings {outcome.recordings}, expected {sorted(wanted)}")
            case "transfer":
                problems += _compare_fields("transfer", wanted, outcome.transfer)
            case _:
                problems.append(f"unknown expectation {key!r}")
    return problems


def _compare_fields(what: str, wanted: Any, actual: Mapping[str, Any] | None) -> list[str]:
    if isinstance(wanted, bool):
        return [f"{what} {'missing' if wanted else f'unexpected: {actual}'}"] if wanted != (actual is not None) else []
    if actual is None:
        return [f"{what} missing, expected {wanted}"]
    return [
        f"{what} {name} is {actual.get(name)!r}, expected {value!r}"
        for name, value in wanted.items()
        if actual.get(name) != value
    ]


class PlatformLine:
    """A running platform's phone line, as Twilio would use it: its webhook answers the call with
    TwiML naming the media stream (signed when ``TWILIO_AUTH_TOKEN`` is set), the stream is a
    websocket; the call's events are read from the platform's event stream, its status from the
    Voice API (``token``: an admin of ``tenant``). A config of the platform's demo set
    (``agents/configs``) is called by its id; another is created through the config API."""

    def __init__(self, api: str, token: str, store: Any, *, tenant: str = DEFAULT_TENANT, speed: float = 1.0) -> None:
        self.api, self.token, self.store, self.tenant, self.speed = api.rstrip("/"), token, store, tenant, speed

    def _http(self) -> Any:
        return httpx.AsyncClient(base_url=self.api, timeout=30, headers={"Authorization": f"Bearer {self.token}"})

    async def prepare(self, name: str, config: Path, agents: Mapping[str, str]) -> str:
        demo = config.resolve().parent == DEMO_CONFIGS.resolve()  # noqa: ASYNC240 (no I/O)
        async with self._http() as http:
            if demo:
                config_id = config.stem.replace("_", "-")
            else:
                config_id = f"scenario-{name}".replace("_", "-")
                body = {"config_id": config_id, "yaml_content": config.read_text()}  # noqa: ASYNC240 (small, once)
                made = await http.post("/api/v1/configs", json=body)
                if made.status_code not in (201, 409):
                    raise RuntimeError(f"config {config_id} not created: {made.status_code} {made.text[:300]}")
            for agent_id, agent_name in agents.items():
                await http.post("/api/v1/orchestration/agents", json={"agent_id": agent_id, "name": agent_name})
                online = await http.post(f"/api/v1/orchestration/agents/{agent_id}/availability",
                                         json={"available": True})  # fmt: skip
                if online.status_code != 200:
                    raise RuntimeError(f"agent {agent_id} not available: {online.status_code} {online.text[:300]}")
        return config_id

    @asynccontextmanager
    async def media(self, config_id: str, call_sid: str) -> AsyncIterator[tuple[Send, Receive, dict[str, str]]]:
        url = f"{self.api}/api/v1/voice/twilio/inbound?config_id={quote(config_id)}"  # as signed: with its query
        form = {"CallSid": call_sid, "From": "+15551234567", "To": "+15550000000", "AccountSid": "AC" + "0" * 32}
        headers = {"X-Tenant-Slug": self.tenant}
        if secret := os.environ.get("TWILIO_AUTH_TOKEN"):
            headers["X-Twilio-Signature"] = _twilio_signature(secret, url, form)
        async with httpx.AsyncClient(timeout=30) as http:
            answered = await http.post(url, data=form, headers=headers)
        found = re.search(r'<Stream url="([^"]+)"', answered.text)
        if answered.status_code != 200 or found is None:
            raise RuntimeError(f"the platform did not answer: {answered.status_code} {answered.text[:300]}")
        parameters = dict(re.findall(r'<Parameter name="([^"]+)" value="([^"]*)"', answered.text))
        async with websockets.connect(found.group(1).replace("&amp;", "&"), max_size=None) as stream:

            async def send(message: dict[str, Any]) -> None:
                await stream.send(json.dumps(message))

            async def receive() -> dict[str, Any] | None:
                try:
                    return json.loads(await stream.recv())  # type: ignore[no-any-return]
                except websockets.ConnectionClosed:
                    return None

            yield send, receive, parameters

    def _call_id(self, call_sid: str) -> str:
        return call_id_for(self.tenant, call_sid)

    async def events(self, call_sid: str) -> list[Any]:
        stream = StreamId(self.tenant, v.AGGREGATE_TYPE, self._call_id(call_sid))
        return [e.event for e in await self.store.read(stream)]

    async def outcome(self, call_sid: str) -> CallOutcome:
        view: dict[str, Any] = {}
        async with self._http() as http:
            for _ in range(150):  # the read model catches up with the call's end and its recordings
                got = await http.get(f"/api/v1/voice/calls/{self._call_id(call_sid)}")
                view = got.json() if got.status_code == 200 else {}
                if view.get("status") == "ended" and view.get("recordings"):
                    break
                await asyncio.sleep(0.2)
        if not view:
            raise RuntimeError(f"call {self._call_id(call_sid)} is not in the Voice API")
        return CallOutcome.from_status(view)


def _twilio_signature(token: str, url: str, params: Mapping[str, str]) -> str:
    payload = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


async def _main(
    paths: Sequence[str], database_url: str, api: str = "", tenant: str = DEFAULT_TENANT, speed: float = 1.0
) -> int:
    """The chat files through the graph on ``database_url``'s demo data; the files whose stories are
    spoken as calls to the platform at ``api`` (its Twilio path), their events from its stream."""
    from infra.platform import data_root, jwt_secret
    from infra.tokens import make_token
    from streams.factory import StoreSettings, open_store

    files = scenario_paths(paths)
    spoken = [path for path in files if any(story.spoken for story in load_scenarios(path)[0].stories)]
    await seed_demo_data(database_url, files)
    stories = await run_chat_files([path for path in files if path not in spoken], database_url)
    if spoken:
        token = make_token(jwt_secret(data_root()), subject="scenarios", tenant=tenant, roles=["org_admin"])
        opened = await open_store(StoreSettings.from_env(), name="parley-scenarios")
        try:
            line = PlatformLine(api, token, opened.store, tenant=tenant, speed=speed)
            stories += (await run_voice_scenarios(spoken, line)).stories
        finally:
            await opened.close()
    report = ScenarioReport(stories)
    print(report.render())
    return 0 if report.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    assert __doc__ is not None
    parser = argument_parser("python -m gateways.telephony.scenarios", __doc__.split("\n")[0])
    port = os.environ.get("PARLEY_API_PORT", "8000")
    parser.add_argument(
        "--api",
        default=os.environ.get("PARLEY_API_URL", f"http://127.0.0.1:{port}"),
        help="the running platform the spoken stories call (its Twilio path)",
    )
    parser.add_argument("--tenant", default=DEFAULT_TENANT, help="the tenant the spoken stories call")
    parser.add_argument("--speed", type=float, default=1.0, help="the caller's clock (1: real time)")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("the demo tools need PostgreSQL: pass --database-url or set DATABASE_URL")
    return asyncio.run(_main(args.paths, args.database_url, args.api, args.tenant, args.speed))


if __name__ == "__main__":
    from infra.logs import configure_logging

    configure_logging(level=os.environ.get("PARLEY_LOG_LEVEL", "WARNING"), json=False)  # stdout is the report
    sys.exit(main())
