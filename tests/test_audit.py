"""The tamper-evident audit export against a real nats-server: the file verifies, and any edit,
deletion, insertion, reordering or truncation is reported at its line."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import conversation as c
from domain.errors import ValidationError
from streams.audit import (
    FORMAT,
    ExportReport,
    canonical,
    entry_hash,
    export,
    parse_when,
    verify,
    verify_bytes,
    verify_live,
)
from streams.factory import OpenStore
from streams.store import EventMeta
from streams.subjects import StreamId
from tests.support import EmailNoted, Incremented

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


async def seed(opened: OpenStore, conversations: int = 3) -> int:
    """A few conversations and counters for tenant ``acme``, interleaved with ``globex``'s; returns
    the number of ``acme`` events."""
    store, count = opened.store, 0
    for i in range(conversations):
        for tenant in ("acme", "globex"):
            stream = StreamId(tenant, "conversation", f"conv-{i}")
            started = c.ConversationStarted(
                conversation_id=f"conv-{i}", config_id="support-bot", config_version=2, channel="web",
                user_id=f"cust-{i}", context={"email": f"cust-{i}@example.com"}, started_at=T0,
            )  # fmt: skip
            message = c.UserMessageReceived(message_id="m1", user_id=f"cust-{i}", content="Où est ma commande ?",
                                            received_at=T0)  # fmt: skip
            meta = EventMeta(command_id=f"start-{i}", command="StartConversation", actor="user-1", correlation_id="r")
            await store.append(stream, [started, message], expected_version=0, meta=meta)
            answer = c.AgentReplied(message_id="reply-m1", user_id=f"cust-{i}", content="Demain.", confidence=0.1 + 0.2,
                                    sentiment=-0.25, replied_at=T0 + timedelta(seconds=1))  # fmt: skip
            await store.append(stream, [answer], expected_version=2, meta=EventMeta(command="RecordAgentReply"))
            if tenant == "acme":
                count += 3
    counter = StreamId("acme", "counter", "k")
    for v in range(4):
        await store.append(counter, [Incremented(amount=v)], expected_version=v)
    await store.append(counter, [EmailNoted(customer_id="cust-9", email="nine@example.com", note="vip")],
                       expected_version=4)  # fmt: skip
    return count + 5


async def exported(opened: OpenStore, tmp_path: Path, **options: object) -> tuple[ExportReport, bytes]:
    await seed(opened)
    report = await export(opened.store, "acme", tmp_path / "acme.jsonl", **options)  # type: ignore[arg-type]
    return report, content(report.path)


def content(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def decoded(data: bytes) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in data.splitlines()]


# The file -------------------------------------------------------------------------------------


async def test_an_exported_file_verifies_and_holds_only_the_tenants_events(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    expected = await seed(open_test_store)
    report = await export(open_test_store.store, "acme", tmp_path / "acme.jsonl")
    assert (report.entries, report.commits) == (expected, 3 * 2 + 5)
    assert report.rate > 0 and report.first_seq == 1

    checked = verify(report.path)
    assert checked.ok and checked.problem is None, checked.summary(report.path)
    assert (checked.entries, checked.lines, checked.head, checked.tenant) == (
        expected,
        expected + 2,
        report.head,
        "acme",
    )
    assert "intact" in checked.summary(report.path)

    header, *events, trailer = decoded(content(report.path))
    assert header["kind"] == "header" and header["format"] == FORMAT and header["tenant"] == "acme"
    assert header["personal"] == "clear" and header["first_seq"] == 1 and header["last_seq"] == report.last_seq
    assert trailer == {"kind": "trailer", "count": expected, "head": report.head, "hash": trailer["hash"]}
    assert [e["n"] for e in events] == list(range(1, expected + 1))
    assert all(e["aggregate_id"] != "globex" for e in events)
    assert {(e["aggregate_type"], e["aggregate_id"]) for e in events} == {
        ("conversation", "conv-0"), ("conversation", "conv-1"), ("conversation", "conv-2"), ("counter", "k")
    }  # fmt: skip
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    first = events[0]
    assert (first["type"], first["version"], first["command"], first["command_id"], first["actor"]) == (
        "ConversationStarted", 1, "StartConversation", "start-0", "user-1")  # fmt: skip
    assert str(first["recorded_at"]).endswith("Z") and first["personal_fields"] == ["context"]


async def test_each_line_is_canonical_json_chained_to_the_one_before(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    report, data = await exported(open_test_store, tmp_path)
    prev = None
    for raw in data.splitlines():
        obj = msgspec.json.decode(raw)
        assert canonical(obj) == raw  # keys sorted, no whitespace: re-encoding gives the same bytes
        body = {k: v for k, v in obj.items() if k != "hash"}
        assert obj["hash"] == hashlib.sha256(canonical(body)).hexdigest() == entry_hash(obj)
        if obj["kind"] == "event":
            assert obj["prev"] == prev
        if obj["kind"] == "trailer":
            assert obj["head"] == prev == report.head
        prev = obj["hash"]
    reply = next(e for e in decoded(data) if e.get("type") == "AgentReplied")
    assert reply["event"]["confidence"] == 0.1 + 0.2  # floats survive the canonical round trip
    assert "Où est ma commande ?" in data.decode()


async def test_a_line_written_with_other_whitespace_or_key_order_still_verifies(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    # The hashes are over the content's canonical encoding, not over the bytes of the line.
    _, data = await exported(open_test_store, tmp_path)
    lines = lines_of(data)
    for index in (0, 3, len(lines) - 1):
        obj = msgspec.json.decode(lines[index])
        spaced = json.dumps(dict(reversed(list(obj.items()))), indent=None, ensure_ascii=True).encode() + b"\n"
        assert spaced != lines[index]
        report = verify_bytes(b"".join([*lines[:index], spaced, *lines[index + 1 :]]))
        assert report.ok, report.problem


async def test_a_period_holds_only_the_events_recorded_in_it(open_test_store: OpenStore, tmp_path: Path) -> None:
    store = open_test_store.store
    stream = StreamId("acme", "counter", "p")
    times = []
    for v in range(6):
        result = await store.append(stream, [Incremented(amount=v)], expected_version=v)
        times.append((await store.read_all(after_seq=result.seq - 1, limit=1))[0].time)
        await asyncio.sleep(0.005)
    start, end = datetime.fromisoformat(times[2]), datetime.fromisoformat(times[5])
    report = await export(store, "acme", tmp_path / "p.jsonl", start=start, end=end)
    assert (report.entries, report.first_seq, report.last_seq) == (3, 3, 5)
    header, *events, _ = decoded(content(report.path))
    assert [e["version"] for e in events] == [3, 4, 5]
    assert header["from"] == start.isoformat().replace("+00:00", "Z")
    assert verify(report.path).ok
    empty = await export(store, "acme", tmp_path / "none.jsonl", start=end + timedelta(days=1))
    assert empty.entries == 0 and verify(empty.path).ok


# Tampering ------------------------------------------------------------------------------------


def mutate(value: object) -> object:
    """A different value of the same kind."""
    match value:
        case bool():
            return not value
        case int() | float():
            return value + 1
        case str():
            return value + "x"
        case None:
            return "x"
        case list():
            return [*value, "x"]
        case dict():
            return {**value, "x": 1}
    raise AssertionError(value)


async def test_editing_any_field_of_any_line_is_reported_as_edited_at_that_line(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    _, data = await exported(open_test_store, tmp_path)
    lines = lines_of(data)

    @PROPERTY
    @given(st.data())
    def check(draw: st.DataObject) -> None:
        index = draw.draw(st.integers(0, len(lines) - 1), label="line")
        obj = msgspec.json.decode(lines[index])
        key = draw.draw(st.sampled_from(sorted(obj)), label="field")
        obj[key] = mutate(obj[key])
        tampered = b"".join([*lines[:index], canonical(obj) + b"\n", *lines[index + 1 :]])
        report = verify_bytes(tampered)
        assert not report.ok and report.problem is not None
        assert (report.problem.kind, report.problem.line) == ("edited", index + 1), report.problem

    check()


async def test_an_edit_whose_line_was_re_hashed_is_still_reported_at_that_line(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    _, data = await exported(open_test_store, tmp_path)
    lines = lines_of(data)

    @PROPERTY
    @given(st.integers(0, len(lines) - 2))
    def check(index: int) -> None:
        obj = msgspec.json.decode(lines[index])
        obj["tampered"] = True
        obj["hash"] = entry_hash(obj)  # the forger fixes the line's own hash, not the next line's link
        tampered = b"".join([*lines[:index], canonical(obj) + b"\n", *lines[index + 1 :]])
        problem = verify_bytes(tampered).problem
        assert problem is not None and (problem.kind, problem.line) == ("edited", index + 1), problem

    check()


async def test_deleting_any_line_is_reported_as_dropped_at_its_place(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    _, data = await exported(open_test_store, tmp_path)
    lines = lines_of(data)

    @PROPERTY
    @given(st.integers(0, len(lines) - 1))
    def check(index: int) -> None:
        problem = verify_bytes(b"".join(lines[:index] + lines[index + 1 :])).problem
        assert problem is not None and problem.line == index + 1, problem
        # The trailer is the end of the file: without it the file reads as cut short.
        assert problem.kind == ("truncated" if index == len(lines) - 1 else "dropped"), problem

    check()


async def test_inserting_a_line_anywhere_is_reported_as_inserted_at_its_line(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    _, data = await exported(open_test_store, tmp_path)
    lines = lines_of(data)
    events = [msgspec.json.decode(line) for line in lines[1:-1]]
    forged = {**events[0], "n": 2, "event": {"amount": 1000}}
    forged["hash"] = entry_hash(forged)
    fabricated = [b"not json\n", b"\n", b'{"kind":"event"}\n', canonical(forged) + b"\n"]

    @PROPERTY
    @given(st.integers(0, len(lines)), st.one_of(st.sampled_from(fabricated), st.sampled_from(lines)))
    def check(index: int, line: bytes) -> None:
        tampered = [*lines[:index], line, *lines[index:]]
        problem = verify_bytes(b"".join(tampered)).problem
        assert problem is not None and problem.kind == "inserted", problem
        # A copy next to its original: the two are the same bytes, and the later one is reported.
        where = index
        while where + 1 < len(tampered) and tampered[where + 1] == line:
            where += 1
        assert problem.line == where + 1, problem

    check()


async def test_swapping_any_two_lines_is_reported_as_reordered_at_the_first(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    _, data = await exported(open_test_store, tmp_path)
    lines = lines_of(data)

    @PROPERTY
    @given(st.lists(st.integers(0, len(lines) - 1), min_size=2, max_size=2, unique=True))
    def check(pair: list[int]) -> None:
        first, second = sorted(pair)
        tampered = list(lines)
        tampered[first], tampered[second] = tampered[second], tampered[first]
        problem = verify_bytes(b"".join(tampered)).problem
        assert problem is not None and (problem.kind, problem.line) == ("reordered", first + 1), problem

    check()


async def test_truncating_the_end_is_reported_at_the_first_missing_line(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    _, data = await exported(open_test_store, tmp_path)
    lines = lines_of(data)
    for keep in range(len(lines)):
        problem = verify_bytes(b"".join(lines[:keep])).problem
        assert problem is not None and (problem.kind, problem.line) == ("truncated", keep + 1), problem
    cut = verify_bytes(data[: len(data) - len(lines[-1]) // 2]).problem  # cut inside the trailer
    assert cut is not None and (cut.kind, cut.line) == ("truncated", len(lines))


async def test_a_consistently_rewritten_file_fails_against_its_head_and_against_the_stream(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    report, data = await exported(open_test_store, tmp_path)
    objs = decoded(data)
    objs[3]["actor"] = "someone-else"  # then every hash after it recomputed, as a careful forger would
    prev = None
    for obj in objs:
        if prev is not None:
            obj["prev" if obj["kind"] == "event" else "head"] = prev
        obj["hash"] = entry_hash(obj)
        prev = obj["hash"]
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"".join(canonical(o) + b"\n" for o in objs))

    assert verify(forged).ok  # the chain alone cannot tell
    against_head = verify(forged, expect_head=report.head)
    assert against_head.problem is not None and against_head.problem.kind == "head_mismatch"
    live = await verify_live(open_test_store.store, forged)
    assert live.problem is not None and (live.problem.kind, live.problem.line) == ("edited", 4), live.problem
    assert (await verify_live(open_test_store.store, report.path)).ok


async def test_verify_live_names_an_event_the_file_lacks_or_the_stream_lacks(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    report, data = await exported(open_test_store, tmp_path)
    objs = decoded(data)

    def rechained(kept: list[dict[str, Any]]) -> Path:
        prev = None
        for n, obj in enumerate(kept):
            if obj["kind"] == "event":
                obj["n"], obj["prev"] = n, prev
            elif obj["kind"] == "trailer":
                obj["count"], obj["head"] = len(kept) - 2, prev
            obj["hash"] = entry_hash(obj)
            prev = obj["hash"]
        path = tmp_path / "rechained.jsonl"
        path.write_bytes(b"".join(canonical(o) + b"\n" for o in kept))
        return path

    dropped = await verify_live(open_test_store.store, rechained([dict(o) for o in objs[:5] + objs[6:]]))
    assert dropped.problem is not None and (dropped.problem.kind, dropped.problem.line) == ("dropped", 6)
    doubled = await verify_live(open_test_store.store, rechained([dict(o) for o in objs[:5] + objs[4:]]))
    assert doubled.problem is not None and (doubled.problem.kind, doubled.problem.line) == ("inserted", 6)
    assert (await verify_live(open_test_store.store, report.path)).live


# Personal data --------------------------------------------------------------------------------


async def test_personal_fields_are_in_clear_while_the_key_exists_and_null_once_it_is_destroyed(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    await seed(open_test_store)
    store, keys = open_test_store.store, open_test_store.keys
    before = await export(store, "acme", tmp_path / "before.jsonl")
    keys.shred("acme", "cust-9")
    after = await export(store, "acme", tmp_path / "after.jsonl")

    def noted(path: str) -> dict[str, Any]:
        return next(e for e in decoded(Path(path).read_bytes()) if e.get("type") == "EmailNoted")

    assert noted(before.path)["event"]["email"] == "nine@example.com"
    assert "erased" not in noted(before.path)
    shredded = noted(after.path)
    assert shredded["event"] == {"customer_id": "cust-9", "email": None, "phone": None, "note": "vip"}
    assert shredded["erased"] is True and shredded["personal_fields"] == ["email", "phone"]
    assert shredded["commit_sha256"] == noted(before.path)["commit_sha256"]  # the stored bytes did not change
    assert verify(after.path).ok
    # The file made before the erasure still matches the stream: its personal fields are set aside.
    assert (await verify_live(store, before.path)).ok


async def test_a_redacted_export_writes_every_personal_field_as_null(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    report, data = await exported(open_test_store, tmp_path, redact_personal=True)
    text = data.decode()
    assert "nine@example.com" not in text and "Où est ma commande" not in text and "cust-0@example.com" not in text
    assert decoded(data)[0]["personal"] == "redacted"
    assert verify(report.path).ok and (await verify_live(open_test_store.store, report.path)).ok


# Command line and helpers ---------------------------------------------------------------------


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.audit", *args, cwd=ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_line_exports_then_verifies_with_exit_codes(
    open_test_store: OpenStore, nats_url: str, tmp_path: Path
) -> None:
    await seed(open_test_store)
    settings = open_test_store.settings
    env = {"NATS_URL": nats_url, "PARLEY_STREAM": settings.stream, "PARLEY_DATA": str(settings.data_dir)}
    output = tmp_path / "cli.jsonl"
    code, out, err = await run_cli("export", "--tenant", "acme", "--from", "", "--output", str(output), env=env)
    assert code == 0, err
    assert "exported 14 events" in out and "head sha256" in out
    head = out.split("head sha256 ")[1].split()[0]

    code, out, _ = await run_cli("verify", str(output), "--expect-head", head, "--live", env=env)
    assert code == 0 and "intact and matches the stream: 14 events of tenant acme" in out

    lines = lines_of(output.read_bytes())
    lines[3], lines[4] = lines[4], lines[3]
    output.write_bytes(b"".join(lines))
    code, _, err = await run_cli("verify", str(output), env=env)
    assert code == 1 and "line 4: reordered" in err
    assert (await run_cli("verify", str(tmp_path / "missing.jsonl"), env=env))[0] == 2

    default = await run_cli("export", "--tenant", "globex", env=env)
    assert default[0] == 0 and str(settings.data_dir / "audit" / "globex-") in default[1]


def test_periods_are_read_as_rfc_3339_times_or_spans_ago() -> None:
    now = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_when("", now=now) is None
    assert parse_when("now", now=now) == now
    assert parse_when("7d", now=now) == now - timedelta(days=7)
    assert parse_when("90m", now=now) == now - timedelta(minutes=90)
    assert parse_when("2025-04-01", now=now) == datetime(2025, 4, 1, tzinfo=UTC)
    assert parse_when("2025-04-01T10:00:00+02:00", now=now) == datetime(2025, 4, 1, 8, tzinfo=UTC)
    with pytest.raises(ValidationError):
        parse_when("last tuesday")
