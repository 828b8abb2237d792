"""The command line's long jobs say how far they are (rich progress bars) instead of going silent."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from domain import conversation as c
from streams.audit import export, verify
from streams.factory import OpenStore
from streams.store import EventMeta
from streams.subjects import StreamId

ROOT = Path(__file__).resolve().parent.parent


async def conversations(opened: OpenStore, n: int) -> None:
    for i in range(n):
        started = c.ConversationStarted(
            conversation_id=f"conv-{i}", config_id="support-bot", config_version=1, channel="webchat",
            user_id=f"u-{i}", started_at=datetime.now(UTC),
        )  # fmt: skip
        await opened.store.append(
            StreamId("acme", "conversation", f"conv-{i}"), [started], expected_version=0, meta=EventMeta()
        )


async def test_an_export_tells_its_progress_page_by_page_up_to_the_last_sequence(
    open_test_store: OpenStore, tmp_path: Path
) -> None:
    await conversations(open_test_store, 7)
    seen: list[tuple[int, int, int]] = []
    report = await export(
        open_test_store.store, "acme", tmp_path / "a.jsonl", page=2, progress=lambda *p: seen.append(p)
    )
    first, last = report.first_seq, report.last_seq
    assert seen[0] == (first - 1, first, last)  # the span, before anything is read
    assert seen[-1] == (last, first, last)  # all of it
    assert [s for s, _, _ in seen] == sorted(s for s, _, _ in seen) and len(seen) > 3  # page by page
    assert verify(report.path).ok


async def test_the_export_command_draws_a_progress_bar_on_a_terminal(
    open_test_store: OpenStore, nats_url: str, tmp_path: Path
) -> None:
    await conversations(open_test_store, 3)
    settings = open_test_store.settings
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "PARLEY_STREAM": settings.stream,
        "PARLEY_DATA": str(settings.data_dir),
        "FORCE_COLOR": "1",  # rich draws as on a terminal
        "COLUMNS": "120",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.audit", "export", "--tenant", "acme", "--output", str(tmp_path / "b.jsonl"),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "exporting acme's events" in text and "100.0 %" in text
    assert "exported 3 events" in text
