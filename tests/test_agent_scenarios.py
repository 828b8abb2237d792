"""Every scenario in tests/scenarios, through the graph with the offline model and the demo tools on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from agents.demo_data import setup_demo_data
from agents.scenarios import load_scenarios, main, run_scenarios, scenario_paths, scenario_tenants
from agents.tools import connect_url, demo_registry
from tests.conftest import fresh_database

SCENARIOS = Path(__file__).parent / "scenarios"


@pytest.fixture
async def demo_url(pg_url: str) -> str:
    url = fresh_database(pg_url)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await setup_demo_data(conn, tenants=scenario_tenants([SCENARIOS]), reset=True)
    return url


def test_there_are_scenarios_for_both_bots_and_every_file_loads() -> None:
    files = scenario_paths([SCENARIOS])
    stories = {path.stem: len(load_scenarios(path)[0].stories) for path in files}

    assert set(stories) >= {"support_bot", "sales_bot"}
    assert stories["support_bot"] + stories["sales_bot"] >= 60 and stories["sales_bot"] >= 20


async def test_every_scenario_passes(demo_url: str) -> None:
    report = await run_scenarios([SCENARIOS], tools=demo_registry(connect_url(demo_url)))

    assert report.passed, report.render()
    assert len(report.stories) >= 60
    assert report.render().splitlines()[-1] == f"{len(report.stories)}/{len(report.stories)} scenarios passed (100.0%)"


async def test_a_failing_expectation_is_reported_with_its_step(demo_url: str, tmp_path: Path) -> None:
    config = (Path(__file__).parent.parent / "agents" / "configs" / "support_bot.yaml").resolve()
    story = tmp_path / "wrong.yaml"
    story.write_text(
        f"config: {config}\n"
        "stories:\n"
        "  - name: expects the wrong tool\n"
        "    steps:\n"
        "      - user: 'Where is my order ORD-78945?'\n"
        "        expect: {tool_call: initiate_refund, reply_contains: 'nowhere'}\n"
    )

    report = await run_scenarios([story], tools=demo_registry(connect_url(demo_url)))

    assert not report.passed and report.summary == "0/1 scenarios passed (0.0%)"
    [failed] = report.failed
    assert any("tool calls ['fetch_order_status'], expected ['initiate_refund']" in f for f in failed.failures)
    assert any("lacks 'nowhere'" in f for f in failed.failures)
    assert "FAIL" in report.render()


def test_the_cli_exits_non_zero_on_failure_and_zero_on_success(demo_url: str, tmp_path: Path) -> None:
    config = (Path(__file__).parent.parent / "agents" / "configs" / "sales_bot.yaml").resolve()
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        f"config: {config}\nstories:\n  - name: wrong\n    steps:\n"
        "      - user: Hello\n        expect: {intent: sales}\n"
    )

    assert main([str(SCENARIOS / "sales_bot.yaml"), "--database-url", demo_url]) == 0
    assert main([str(failing), "--database-url", demo_url]) == 1
