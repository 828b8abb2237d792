"""Conversation scenarios, in the manner of Rasa's test stories: YAML turns and what each must produce.

A scenario file names the agent config (relative to the file) and its stories::

    config: ../../agents/configs/support_bot.yaml
    stories:
      - name: order status through the tool
        steps:
          - user: "Where is my order ORD-78945?"
            expect:
              intent: support
              tool_call: fetch_order_status      # a name, a list of names, or false for none
              reply_contains: "in transit"       # a string or a list
              reply_not_contains: "4111"
              escalation: false                  # true, false, or {trigger: ..., urgency: ...}
              pii: {order_id: ORD-78945}         # these keys at least
              cross_sell: {product: ...}         # true, false, or fields to match
              user_message_not_contains: "4111"  # the stored (masked) customer text

``run_scenarios(paths, tools=...)`` runs every story as its own conversation with the offline
model (or the providers ``env`` enables) and returns a ``ScenarioReport``.
``python -m agents.scenarios tests/scenarios`` does it against ``DATABASE_URL``'s demo schema,
prints the report and exits 1 when a story fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import yaml

from agents.config import AgentConfig, load_config
from agents.graph import TurnResult, chain_for, run_turn
from agents.tools import ToolRegistry
from gateways.llm.port import ChatMessage


class Step(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user: str
    expect: dict[str, Any] = {}


class Story(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    steps: list[Step]


class ScenarioFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    config: str
    stories: list[Story]


class StoryResult(msgspec.Struct, frozen=True):
    file: str
    name: str
    failures: list[str] = []

    @property
    def passed(self) -> bool:
        return not self.failures


class ScenarioReport(msgspec.Struct, frozen=True):
    stories: list[StoryResult]

    @property
    def passed(self) -> bool:
        return all(story.passed for story in self.stories)

    @property
    def failed(self) -> list[StoryResult]:
        return [story for story in self.stories if not story.passed]

    def render(self) -> str:
        lines = []
        for story in self.stories:
            lines.append(f"{'PASS' if story.passed else 'FAIL'}  {story.file} :: {story.name}")
            lines += [f"      {failure}" for failure in story.failures]
        lines.append(f"{len(self.stories) - len(self.failed)}/{len(self.stories)} stories passed")
        return "\n".join(lines)


def scenario_paths(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        found += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return found


def load_scenarios(path: Path) -> tuple[ScenarioFile, AgentConfig]:
    scenario = msgspec.convert(yaml.safe_load(path.read_text()), ScenarioFile)
    return scenario, load_config((path.parent / scenario.config).read_text())


async def run_scenarios(
    paths: Iterable[str | Path], *, tools: ToolRegistry, env: Mapping[str, str] | None = None
) -> ScenarioReport:
    """Every story of every file (a directory means its ``*.yaml``), each a fresh conversation."""
    results: list[StoryResult] = []
    for path in scenario_paths(paths):
        scenario, config = load_scenarios(path)
        chain = chain_for(config, env or {})
        try:
            for index, story in enumerate(scenario.stories):
                results.append(await run_story(path.name, f"{path.stem}-{index}", story, config, chain, tools))
        finally:
            await chain.aclose()
    return ScenarioReport(results)


async def run_story(
    file: str, conversation_id: str, story: Story, config: AgentConfig, chain: Any, tools: ToolRegistry
) -> StoryResult:
    history: list[ChatMessage] = []
    failures: list[str] = []
    for number, step in enumerate(story.steps, 1):
        result = await run_turn(
            config, history, step.user, chain=chain, tools=tools, conversation_id=conversation_id, user_id="scenario"
        )
        failures += [f"step {number} ({step.user!r}): {problem}" for problem in check(step.expect, result)]
        history += result.messages
    return StoryResult(file, story.name, failures)


def check(expect: Mapping[str, Any], result: TurnResult) -> list[str]:
    """What differs between ``expect`` and the turn; empty when the turn meets it."""
    problems: list[str] = []
    reply = result.reply
    tools = [call.tool for call in result.tool_calls]
    for key, wanted in expect.items():
        match key:
            case "intent":
                if result.intent != wanted:
                    problems.append(f"intent {result.intent!r}, expected {wanted!r}")
            case "tool_call":
                names = [] if wanted in (False, None) else [wanted] if isinstance(wanted, str) else list(wanted)
                if (names and not all(name in tools for name in names)) or (not names and tools):
                    problems.append(f"tool calls {tools}, expected {names or 'none'}")
            case "tool_error":
                failed = [call.tool for call in result.tool_calls if call.error]
                if bool(failed) != bool(wanted):
                    problems.append(f"failed tools {failed}, expected {'a failure' if wanted else 'none'}")
            case "reply_contains":
                problems += [f"reply {reply!r} lacks {text!r}" for text in _texts(wanted) if text not in reply]
            case "reply_not_contains":
                problems += [f"reply {reply!r} contains {text!r}" for text in _texts(wanted) if text in reply]
            case "user_message_not_contains":
                problems += [
                    f"stored message {result.user_message!r} contains {text!r}"
                    for text in _texts(wanted)
                    if text in result.user_message
                ]
            case "escalation":
                problems += _compare("escalation", wanted, result.escalation)
            case "cross_sell":
                problems += _compare("cross-sell", wanted, result.cross_sell)
            case "pii":
                for name, value in wanted.items():
                    if result.pii_collected.get(name) != value:
                        problems.append(f"pii {name} is {result.pii_collected.get(name)!r}, expected {value!r}")
            case "sentiment_below":
                if result.sentiment >= wanted:
                    problems.append(f"sentiment {result.sentiment} is not below {wanted}")
            case _:
                problems.append(f"unknown expectation {key!r}")
    return problems


def _texts(wanted: str | Sequence[str]) -> list[str]:
    return [wanted] if isinstance(wanted, str) else list(wanted)


def _compare(what: str, wanted: Any, actual: msgspec.Struct | None) -> list[str]:
    if isinstance(wanted, bool):
        if wanted != (actual is not None):
            return [f"{what} {'missing' if wanted else f'unexpected: {actual}'}"]
        return []
    if actual is None:
        return [f"{what} missing, expected {wanted}"]
    fields = msgspec.to_builtins(actual)
    return [
        f"{what} {name} is {fields.get(name)!r}, expected {value!r}"
        for name, value in wanted.items()
        if fields.get(name) != value
    ]


async def _main(paths: Sequence[str], database_url: str) -> int:
    import psycopg

    from agents.demo_data import setup_demo_data
    from agents.tools import connect_url, demo_registry

    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await setup_demo_data(conn, reset=True)
    report = await run_scenarios(paths, tools=demo_registry(connect_url(database_url)))
    print(report.render())
    return 0 if report.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.scenarios", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="scenario files or directories of them")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""), help="default: $DATABASE_URL")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("the demo tools need PostgreSQL: pass --database-url or set DATABASE_URL")
    return asyncio.run(_main(args.paths, args.database_url))


if __name__ == "__main__":
    sys.exit(main())
