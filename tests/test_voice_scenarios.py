"""Voice scenarios (tests/scenarios/voice): each story a phone call over the Twilio path to the
platform's voice session, with espeak-ng speech in (or a WAV, or keys), silero VAD, the offline
recognizer, the agent with the config's tools, espeak-ng speech out; checked against the call's
events in the stream, the audio the caller's phone played, and the call's read model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from agents.scenarios import ScenarioFile, load_scenarios, run_story, scenario_paths
from domain import call as v
from gateways.telephony.scenarios import _main, call_step, check_call_step, run_voice_scenarios
from streams.factory import OpenStore
from tests.api_support import SECRET, served_app, settings_for
from tests.conftest import delete_stream, fresh_database, unique_stream
from tests.voice_support import RigLine, voice_rig

VOICE = Path(__file__).parent / "scenarios" / "voice"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def line(open_test_store: OpenStore, pg_url: str, tmp_path: Path) -> AsyncIterator[RigLine]:
    async with voice_rig(open_test_store, pg_url, tmp_path) as rig:
        line = RigLine(rig, speed=2.0)
        try:
            yield line
        finally:
            await line.aclose()


def test_the_voice_stories_load_and_cover_speech_a_recording_and_the_keypad() -> None:
    [path] = scenario_paths([VOICE])
    scenario, config = load_scenarios(path)
    steps = [step for story in scenario.stories for step in story.steps]
    assert config.product_type == "voicebot" and len(scenario.stories) >= 5
    assert all(step.spoken for step in steps)
    assert {kind for step in steps for kind in ("say", "wav", "dtmf") if getattr(step, kind)} == {"say", "wav", "dtmf"}
    assert all((path.parent / step.wav).is_file() for step in steps if step.wav)


async def test_every_voice_scenario_passes_and_a_failing_expectation_is_reported_with_its_step(
    line: RigLine, tmp_path: Path
) -> None:
    config = (Path(__file__).parent.parent / "agents" / "configs" / "voice_bot.yaml").resolve()
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        f"config: {config}\n"
        "stories:\n"
        "  - name: expects a refund for an order lookup\n"
        "    steps:\n"
        "      - say: I want to check my order\n"
        "        expect: {tool_call: false}\n"
        "      - dtmf: '78945#'\n"
        "        expect: {tool_call: initiate_refund, reply_contains: nowhere, transfer: true}\n"
        "    expect_call: {resolution_status: transferred}\n"
    )

    report = await run_voice_scenarios([VOICE, wrong], line, concurrency=2)

    stories = [story for story in report.stories if story.file == "support_calls.yaml"]
    assert len(stories) >= 5 and all(story.passed for story in stories), report.render()
    [failed] = report.failed
    assert failed.name == "expects a refund for an order lookup"
    assert failed.failures == [
        "step 2 (dtmf '78945#'): tool calls ['fetch_order_status'], expected ['initiate_refund']",
        "step 2 (dtmf '78945#'): reply 'Your order ORD-78945 is on its way with UPS, and should arrive on "
        "2025-10-15.' lacks 'nowhere'",
        "step 2 (dtmf '78945#'): transfer missing",
        "after the call: resolution_status 'resolved', expected 'transferred'",
    ], failed.failures
    total = len(stories) + 1
    assert report.summary == f"{len(stories)}/{total} scenarios passed ({100 * len(stories) / total:.1f}%)"


def test_a_steps_expectations_are_checked_against_the_events_it_recorded() -> None:
    events = [
        v.CallerSpoke(utterance_id="u1", user_id="c", text="Where is my order ORD-12345", at=T0),
        v.ToolCallStarted(
            tool_call_id="t1", tool="fetch_order_status", user_id="c", arguments={"order_id": "ORD-12345"}, at=T0
        ),
        v.ToolCallFinished(tool_call_id="t1", tool="fetch_order_status", user_id="c", output={"status": "x"}, at=T0),
        v.AgentSpoke(utterance_id="a1", user_id="c", text="Your order ORD-12345 was delivered.", at=T0),
        v.TransferRequested(transfer_id="x1", transfer_type="hot", agent_id="mike", trigger="explicit_request", at=T0),
    ]
    step = call_step(events, agent_audio_seconds=2.5)

    assert (
        check_call_step(
            {
                "heard_contains": "ORD-12345",
                "heard_source": "speech",
                "tool_args": {"fetch_order_status": {"order_id": "ORD-12345"}},
                "reply_contains": "was delivered",
                "transfer": {"agent_id": "mike", "status": "requested"},
            },
            step,
        )
        == []
    )
    assert check_call_step({"heard_contains": "ORD-78945", "transfer": {"status": "connected"}, "dtmf": "1"}, step) == [
        "heard 'Where is my order ORD-12345', lacks 'ORD-78945'",
        "transfer status is 'requested', expected 'connected'",
        "keys '', expected '1'",
    ]
    # A reply the caller never heard (no audio reached the phone) fails the step, whatever it expects.
    assert check_call_step({}, call_step(events, agent_audio_seconds=0)) == [
        "the agent replied 'Your order ORD-12345 was delivered.' but no audio reached the caller"
    ]
    assert check_call_step({"heard_everything": True}, step) == ["unknown expectation 'heard_everything'"]


async def test_a_step_is_one_thing_and_a_chat_run_refuses_a_spoken_story() -> None:
    with pytest.raises(msgspec.ValidationError, match="a step is one of user, say, wav or dtmf"):
        msgspec.convert({"config": "x", "stories": [{"name": "n", "steps": [{"say": "a", "dtmf": "1"}]}]}, ScenarioFile)
    scenario = msgspec.convert({"config": "x", "stories": [{"name": "n", "steps": [{"say": "hello"}]}]}, ScenarioFile)

    result = await run_story("f.yaml", "c", scenario.stories[0], None, None, None)  # type: ignore[arg-type]

    assert result.failures == ["a story with spoken steps runs on a call (run_voice_scenarios)"]


@pytest_asyncio.fixture
async def platform(
    nats_url: str, pg_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, str]]:
    """The API served on a port, as ``./parley up`` runs it (Twilio's signature checked); the
    environment ``./parley test-conversations`` reads ($PARLEY_DATA/run/env) pointing at it."""
    stream, database = unique_stream(), fresh_database(pg_url)
    for name, value in {"TWILIO_AUTH_TOKEN": "twilio-token", "PARLEY_JWT_SECRET": SECRET, "NATS_URL": nats_url,
                        "PARLEY_DATA": str(tmp_path), "PARLEY_STREAM": stream}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    settings = settings_for(nats_url, database, redis_url, tmp_path, stream, demo_tenants=("acme",))
    try:
        async with served_app(settings) as port:
            yield f"http://127.0.0.1:{port}", database
    finally:
        await delete_stream(nats_url, stream)


async def test_test_conversations_calls_the_running_platform_over_its_twilio_path(
    platform: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``./parley test-conversations``: a spoken story is a call to the platform's Twilio webhook and
    media-stream websocket (signed), checked against the call's events in its stream and its status
    from the Voice API."""
    api, database = platform
    config = (Path(__file__).parent.parent / "agents" / "configs" / "voice_bot.yaml").resolve()
    story = tmp_path / "call.yaml"
    story.write_text(
        f"config: {config}\n"
        "agents: {mike: Mike}\n"
        "stories:\n"
        "  - name: an order number typed on the keypad is looked up\n"
        "    steps:\n"
        "      - say: I want to check my order\n"
        '        expect: {reply_contains: "What\'s your order number?"}\n'
        "      - dtmf: '78945#'\n"
        "        expect: {heard_contains: ORD-78945, tool_args: {fetch_order_status: {order_id: ORD-78945}}}\n"
        "    expect_call: {status: ended, tools_executed: [fetch_order_status], recordings: [agent, caller]}\n"
    )

    code = await _main([str(story)], database, api, "acme", speed=2.0)

    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.splitlines()[-2:] == [
        "PASS  call.yaml :: an order number typed on the keypad is looked up",
        "1/1 scenarios passed (100.0%)",
    ], printed
