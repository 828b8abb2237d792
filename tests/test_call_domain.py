"""The call decider and the voice line, given / when / then."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain import call as v
from domain.errors import IllegalStateError, NotFoundError, ValidationError
from tests.decider import DeciderSpec

T0 = datetime(2025, 10, 11, 11, 0, tzinfo=UTC)
spec = DeciderSpec(v.decide, v.evolve, v.initial())
line = DeciderSpec(v.decide_line, v.evolve_line, v.line_initial())

INITIATED = v.CallInitiated(
    call_id="call-1",
    config_id="voice-bot",
    config_version=2,
    direction="outbound",
    transport="livekit_sip",
    user_id="C12345",
    phone_number="+15551234567",
    context={"customer_id": "C12345"},
    initiated_at=T0,
)
CONNECTED = v.CallConnected(connected_at=T0 + timedelta(seconds=5))
ASKED = v.CallerSpoke(utterance_id="u-1", user_id="C12345", text="where is my order ORD-78945", at=T0)


def test_initiating_a_call_pins_its_config_version() -> None:
    state = (
        spec.given()
        .when(
            v.InitiateCall(
                call_id="call-1",
                config_id="voice-bot",
                config_version=2,
                direction="outbound",
                transport="livekit_sip",
                user_id="C12345",
                phone_number="+15551234567",
                context={"customer_id": "C12345"},
                at=T0,
            )
        )
        .then(INITIATED)
    )
    assert (state.config_version, state.status, state.pii_collected["phone"]) == (2, "initiating", "+15551234567")


def test_a_call_cannot_start_twice_and_nothing_is_said_on_a_call_that_never_started() -> None:
    spec.given(INITIATED).when(
        v.InitiateCall(
            call_id="call-1", config_id="x", config_version=1, direction="inbound", transport="t", user_id="u", at=T0
        )
    ).then_raises(IllegalStateError)
    spec.given().when(v.RecordCallerUtterance(utterance_id="u", text="hi", at=T0)).then_raises(NotFoundError)


def test_card_numbers_spoken_are_masked_before_they_become_an_event() -> None:
    spoken = v.RecordCallerUtterance(
        utterance_id="u-9", text="my card is 4111 1111 1111 1111", confidence=0.9, audio_seconds=2.5, at=T0
    )
    events = spec.decide(spoken, spec.given(INITIATED, CONNECTED).state)
    assert isinstance(events[0], v.CallerSpoke)
    assert "4111 1111 1111 1111" not in (events[0].text or "") and (events[0].text or "").endswith("1111")
    assert events[0].audio_seconds == 2.5


def test_an_utterance_delivered_twice_is_recorded_once_and_collects_personal_data() -> None:
    state = spec.given(INITIATED, CONNECTED, ASKED).state
    assert state.pii_collected["order_id"] == "ORD-78945"
    assert spec.decide(v.RecordCallerUtterance(utterance_id="u-1", text="again", at=T0), state) == []


def test_a_tool_call_is_started_before_it_finishes_and_finishes_once() -> None:
    started = v.ToolCallStarted(
        tool_call_id="t-1", tool="fetch_order_status", user_id="C12345", arguments={"order_id": "ORD-78945"}, at=T0
    )
    spec.given(INITIATED, CONNECTED).when(
        v.StartToolCall(tool_call_id="t-1", tool="fetch_order_status", arguments={"order_id": "ORD-78945"}, at=T0)
    ).then(started)
    finished = v.ToolCallFinished(
        tool_call_id="t-1", tool="fetch_order_status", user_id="C12345", output={"status": "shipped"}, at=T0
    )
    state = (
        spec.given(INITIATED, CONNECTED, started)
        .when(v.FinishToolCall(tool_call_id="t-1", output={"status": "shipped"}, at=T0))
        .then(finished)
    )
    assert state.tools_used == ("fetch_order_status",) and state.open_tools == {}
    assert spec.decide(v.FinishToolCall(tool_call_id="t-1", at=T0), state) == []
    spec.given(INITIATED).when(v.FinishToolCall(tool_call_id="nope", at=T0)).then_raises(NotFoundError)


def test_keypad_digits_are_checked_and_kept_as_personal_data() -> None:
    spec.given(INITIATED).when(v.PressDtmf(press_id="d-1", digit="x", at=T0)).then_raises(ValidationError)
    spec.given(INITIATED).when(v.PressDtmf(press_id="d-1", digit="7", at=T0)).then(
        v.DtmfPressed(press_id="d-1", user_id="C12345", digit="7", at=T0)
    )
    assert "digit" in v.DtmfPressed.personal_fields


def test_one_transfer_at_a_time_and_it_settles_once() -> None:
    requested = v.TransferRequested(
        transfer_id="x-1", transfer_type="hot", agent_id="mike", target="sip:mike@x", user_id="C12345", at=T0
    )
    state = spec.given(INITIATED, CONNECTED, requested).state
    assert state.status == "transferring"
    spec.given(INITIATED, CONNECTED, requested).when(
        v.RequestTransfer(transfer_id="x-2", transfer_type="cold", target="sip:y", at=T0)
    ).then_raises(IllegalStateError)
    state = (
        spec.given(INITIATED, CONNECTED, requested)
        .when(v.ConnectTransfer(transfer_id="x-1", at=T0))
        .then(v.TransferConnected(transfer_id="x-1", at=T0))
    )
    assert state.status == "transferred"
    assert spec.decide(v.FailTransfer(transfer_id="x-1", reason="late", at=T0), state) == []
    failed = spec.given(INITIATED, CONNECTED, requested).when(
        v.FailTransfer(transfer_id="x-1", reason="busy", sip_status="486", at=T0)
    )
    assert failed.then(v.TransferFailed(transfer_id="x-1", reason="busy", sip_status="486", at=T0)).status == (
        "in_progress"
    )


def test_ending_a_call_records_its_duration_totals_and_cost_and_nothing_is_said_after() -> None:
    spoke = v.AgentSpoke(utterance_id="a-1", user_id="C12345", text="x" * 1000, characters=1000, at=T0)
    heard = v.CallerSpoke(utterance_id="u-2", user_id="C12345", text="hello", audio_seconds=60.0, at=T0)
    end = T0 + timedelta(seconds=65)
    prices = v.UnitPrices()
    events = spec.decide(v.EndCall(at=end, prices=prices), spec.given(INITIATED, CONNECTED, spoke, heard).state)
    ended = events[0]
    assert isinstance(ended, v.CallEnded)
    assert (ended.duration_seconds, ended.stt_seconds, ended.tts_characters, ended.llm_requests) == (
        60.0,
        60.0,
        1000,
        1,
    )
    assert ended.cost.telephony == pytest.approx(0.01) and ended.cost.stt == pytest.approx(0.0077)
    assert ended.cost.tts == pytest.approx(0.05) and ended.resolution_status == "resolved"
    after = spec.given(INITIATED, CONNECTED, ended)
    after.when(v.RecordCallerUtterance(utterance_id="u-3", text="hello?", at=end)).then_raises(IllegalStateError)
    # A recording written on hang-up still lands.
    after.when(v.StoreRecording(recording_id="r-1", track="caller", uri="file://x", at=end)).then(
        v.RecordingStored(recording_id="r-1", track="caller", uri="file://x", at=end)
    )


def test_the_line_refuses_a_number_on_the_do_not_call_list_and_admits_inbound_calls_from_it() -> None:
    blocked = v.NumberBlocked(number_digest="abc", at=T0)
    line.given(blocked).when(v.AdmitCall(call_id="c1", direction="outbound", number_digest="abc", at=T0)).then(
        v.CallAdmissionRefused(
            call_id="c1",
            direction="outbound",
            reason="do_not_call",
            detail="the number is on the tenant's do-not-call list",
            at=T0,
        )
    )
    line.given(blocked).when(v.AdmitCall(call_id="c1", direction="inbound", number_digest="abc", at=T0)).then(
        v.CallAdmitted(call_id="c1", direction="inbound", at=T0)
    )


def test_the_line_keeps_the_hourly_quota_the_concurrent_cap_and_the_daily_budget() -> None:
    settings = v.LineSettingsChanged(
        settings=v.LineSettings(outbound_per_hour=2, max_concurrent=3, daily_budget_usd=1.0), at=T0
    )
    two = [v.CallAdmitted(call_id=f"c{i}", direction="outbound", at=T0 + timedelta(minutes=i)) for i in range(2)]
    third = v.AdmitCall(call_id="c3", direction="outbound", at=T0 + timedelta(minutes=30))
    assert line.decide(third, line.given(settings, *two).state)[0].reason == "outbound_quota"  # type: ignore[attr-defined]
    # An hour after the first, a place is free again; an inbound call never counts against the quota.
    later = v.AdmitCall(call_id="c3", direction="outbound", at=T0 + timedelta(minutes=61))
    assert isinstance(line.decide(later, line.given(settings, *two).state)[0], v.CallAdmitted)
    inbound = v.CallAdmitted(call_id="c9", direction="inbound", at=T0)
    full = line.given(settings, *two, inbound).state
    refused = line.decide(v.AdmitCall(call_id="c4", direction="inbound", at=T0), full)[0]
    assert refused.reason == "concurrent_limit"  # type: ignore[attr-defined]
    # Calls that cost the day's budget pause outbound calls until the next day.
    spent = [v.CallReleased(call_id=f"c{i}", cost_usd=0.6, at=T0) for i in range(2)]
    budget = line.given(settings, *two, *spent).state
    assert budget.active == () and budget.day_cost == pytest.approx(1.2)
    paused = line.decide(v.AdmitCall(call_id="c5", direction="outbound", at=T0 + timedelta(hours=2)), budget)[0]
    assert paused.reason == "budget_exhausted"  # type: ignore[attr-defined]
    tomorrow = v.AdmitCall(call_id="c5", direction="outbound", at=T0 + timedelta(days=1))
    assert isinstance(line.decide(tomorrow, budget)[0], v.CallAdmitted)
    # Admitting the same call twice admits it once.
    assert line.decide(v.AdmitCall(call_id="c0", direction="outbound", at=T0), line.given(*two).state) == []


def test_refusals_map_to_clear_errors() -> None:
    assert v.refusal_error("do_not_call", "x").status == 403
    assert v.refusal_error("outbound_quota", "x").status == 429
    assert v.refusal_error("budget_exhausted", "x").details["retry_after"] == 3600


def test_a_voicebots_keypad_menus_are_checked_field_by_field() -> None:
    from pathlib import Path

    import yaml

    from domain.bot import load_config, validation_report

    raw = yaml.safe_load((Path(__file__).parent.parent / "agents" / "configs" / "voice_bot.yaml").read_text())
    menus = [
        {"name": "main", "prompt": "Press 1 for orders, 9 for more.", "options": [
            {"digit": "1", "say": "I want to check my order"}, {"digit": "9", "menu": "more"},
            {"digit": "1", "menu": "nowhere", "transfer": True}, {"digit": "x", "say": "?"}]},
        {"name": "more", "prompt": "Press 0 for a person.", "options": [{"digit": "0", "transfer": True}]},
        {"name": "more", "prompt": "Again.", "options": [{"digit": "0", "transfer": True}]},
    ]  # fmt: skip
    raw["voice_config"]["ivr_menus"] = menus
    errors = {(issue.field, issue.message) for issue in validation_report(raw).errors}
    at = "voice_config.ivr_menus"
    assert errors >= {
        (f"{at}[0].options[0].digit", "key '1' is used twice in this menu"),
        (f"{at}[0].options[2]", "must do exactly one thing: say, menu or transfer"),
        (f"{at}[0].options[2].menu", "no menu is named 'nowhere'"),
        (f"{at}[1].name", "another menu is named 'more'"),
    }, errors
    assert any(field == f"{at}[0].options[3].digit" for field, _ in errors), errors
    raw["voice_config"]["ivr_menus"] = [menus[0] | {"options": menus[0]["options"][:2]}, menus[1]]
    assert validation_report(raw).valid
    config = load_config(yaml.safe_dump(raw))
    assert [(o.digit, o.say, o.menu) for o in config.voice_config.ivr_menus[0].options] == [  # type: ignore[union-attr]
        ("1", "I want to check my order", None),
        ("9", "", "more"),
    ]
