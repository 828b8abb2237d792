"""Conversation scenarios, in the manner of Rasa's test stories: YAML turns and what each must produce.

A scenario file names the agent config (relative to the file), the tenants whose demo data its
stories expect, and its stories::

    config: ../../agents/configs/support_bot.yaml
    tenants: [demo]                              # seeded with the demo orders (default: demo)
    stories:
      - name: order status through the tool
        tenant: demo                             # the conversation's tenant (default: demo)
        user_id: john@example.com                # its customer (default: scenario)
        steps:
          - user: "Where is my order ORD-78945?"
            expect:
              intent: support
              tool_call: fetch_order_status      # a name, a list of names, or false for none
              tools_exactly: [fetch_order_status]  # these calls, in this order, and no other
              tool_args: {fetch_order_status: {order_id: ORD-78945}}  # a call of the tool with these inputs
              tool_error: false                  # whether a tool failed
              reply_contains: "in transit"       # a string or a list
              reply_not_contains: "4111"
              reply_matches: "expected on \\d{4}-\\d{2}-\\d{2}"  # a regex (or a list of them)
              escalation: false                  # true, false, or {trigger: ..., urgency: ...}
              pii: {order_id: ORD-78945}         # these keys at least
              cross_sell: {product: ...}         # true, false, or fields to match
              cross_sell_response: accepted      # accepted, declined, or false for neither
              user_message_not_contains: "4111"  # the stored (masked) customer text

A story is one conversation: each turn gets the history the earlier turns produced (tool exchanges
included) and the offer still open, as the runtime gives them.

``run_scenarios(paths, tools=...)`` runs every story with the offline model (or the providers
``env`` enables) and returns a ``ScenarioReport``, whose last line is the pass rate.
``python -m agents.scenarios tests/scenarios`` does it against ``DATABASE_URL``'s demo schema,
prints the report and exits 1 when a story fails.

Voice scenarios: a step may be spoken instead (``say:`` synthesized with espeak-ng, ``wav:`` a
recording, ``dtmf:`` keys; ``barge_in: true`` over the agent), and such a story is a phone call,
its steps checked against what the call recorded (``heard_contains``, replies, tools, keys,
``transfer``) and the ended call against its read model (``expect_call``). This module holds their
format; playing them is the telephony gateway's (``gateways.telephony.scenarios``, whose
``python -m gateways.telephony.scenarios tests/scenarios tests/scenarios/voice`` runs both kinds
against the running platform: ``./parley test-conversations``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import yaml

from agents.graph import TurnResult, chain_for, run_turn
from agents.llm.port import ChatMessage
from agents.rules import CrossSell
from agents.tools import DEFAULT_TENANT, ToolRegistry
from domain.bot import AgentConfig, load_config


class Step(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A chat message (``user``), or a caller's turn on a call: words spoken with espeak-ng (``say``),
    a WAV file (``wav``, relative to the scenario file) or keys pressed (``dtmf``)."""

    user: str | None = None
    say: str | None = None
    wav: str | None = None
    dtmf: str | None = None
    barge_in: bool = False  # spoken while the agent is still talking
    expect: dict[str, Any] = {}

    def __post_init__(self) -> None:
        given = [name for name in ("user", "say", "wav", "dtmf") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a step is one of user, say, wav or dtmf (got {given or 'none'})")

    @property
    def spoken(self) -> bool:
        return self.user is None

    def describe(self) -> str:
        if self.user is not None:
            return repr(self.user)
        kind, value = next((k, getattr(self, k)) for k in ("say", "wav", "dtmf") if getattr(self, k) is not None)
        return f"{kind} {value!r}"


class Story(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    steps: list[Step]
    tenant: str = DEFAULT_TENANT
    user_id: str = "scenario"
    expect_call: dict[str, Any] = {}  # a call's story: what its status shows once it has ended

    @property
    def spoken(self) -> bool:
        return any(step.spoken for step in self.steps)


class ScenarioFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    config: str
    stories: list[Story]
    tenants: list[str] = msgspec.field(default_factory=lambda: [DEFAULT_TENANT])
    agents: dict[str, str] = {}  # calls: the human agents (id: name) available for transfers


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
        lines.append(self.summary)
        return "\n".join(lines)

    @property
    def summary(self) -> str:
        """The pass rate: ``62/62 scenarios passed (100.0%)``."""
        total, passed = len(self.stories), len(self.stories) - len(self.failed)
        return f"{passed}/{total} scenarios passed ({100 * passed / total if total else 0:.1f}%)"


def scenario_paths(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        found += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return found


def scenario_tenants(paths: Iterable[str | Path]) -> list[str]:
    """The tenants whose demo data the scenario files expect."""
    tenants = [tenant for path in scenario_paths(paths) for tenant in load_scenarios(path)[0].tenants]
    return list(dict.fromkeys(tenants))


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
    offer: CrossSell | None = None
    if story.spoken:
        return StoryResult(file, story.name, ["a story with spoken steps runs on a call (run_voice_scenarios)"])
    for number, step in enumerate(story.steps, 1):
        assert step.user is not None
        result = await run_turn(
            config, history, step.user, chain=chain, tools=tools, conversation_id=conversation_id,
            user_id=story.user_id, tenant=story.tenant, pending_offer=offer,
        )  # fmt: skip
        failures += [f"step {number} ({step.describe()}): {problem}" for problem in check(step.expect, result)]
        history += result.messages
        if result.cross_sell_response is not None:
            offer = None
        if result.cross_sell is not None:
            offer = result.cross_sell
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
            case "tools_exactly":
                if tools != list(wanted):
                    problems.append(f"tool calls {tools}, expected exactly {list(wanted)}")
            case "tool_args":
                for tool, inputs in wanted.items():
                    calls = [call.input for call in result.tool_calls if call.tool == tool]
                    if not any(all(call.get(k) == v for k, v in inputs.items()) for call in calls):
                        problems.append(f"no {tool} call with {inputs}; calls: {calls}")
            case "reply_matches":
                problems += unmatched(f"reply {reply!r}", reply, wanted)
            case "cross_sell_response":
                if result.cross_sell_response != (wanted or None):
                    problems.append(f"cross-sell response {result.cross_sell_response!r}, expected {wanted or None!r}")
            case "tool_error":
                failed = [call.tool for call in result.tool_calls if call.error]
                if bool(failed) != bool(wanted):
                    problems.append(f"failed tools {failed}, expected {'a failure' if wanted else 'none'}")
            case "reply_contains":
                problems += lacking(f"reply {reply!r}", reply, wanted)
            case "reply_not_contains":
                problems += containing(f"reply {reply!r}", reply, wanted)
            case "user_message_not_contains":
                problems += containing(f"stored message {result.user_message!r}", result.user_message, wanted)
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


def expected_texts(wanted: str | Sequence[str]) -> list[str]:
    """An expectation's text or texts (``reply_contains: "x"`` or ``reply_contains: [x, y]``)."""
    return [wanted] if isinstance(wanted, str) else list(wanted)


def lacking(shown: str, text: str, wanted: str | Sequence[str]) -> list[str]:
    """``"<shown> lacks 'x'"`` for each expected text not in ``text``."""
    return [f"{shown} lacks {t!r}" for t in expected_texts(wanted) if t not in text]


def containing(shown: str, text: str, wanted: str | Sequence[str]) -> list[str]:
    """``"<shown> contains 'x'"`` for each unwanted text found in ``text``."""
    return [f"{shown} contains {t!r}" for t in expected_texts(wanted) if t in text]


def unmatched(shown: str, text: str, wanted: str | Sequence[str]) -> list[str]:
    """``"<shown> does not match 'rx'"`` for each pattern not found in ``text``."""
    return [f"{shown} does not match {rx!r}" for rx in expected_texts(wanted) if not re.search(rx, text)]


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


# The command line ------------------------------------------------------------------------------


async def seed_demo_data(database_url: str, paths: Iterable[str | Path]) -> None:
    """The demo data (reset) of the tenants the scenario files expect, in ``database_url``."""
    import psycopg

    from agents.demo_data import setup_demo_data

    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await setup_demo_data(conn, tenants=scenario_tenants(paths), reset=True)


async def run_chat_files(paths: Sequence[str | Path], database_url: str) -> list[StoryResult]:
    """The stories of the chat files, with the demo tools on ``database_url``."""
    from agents.tools import connect_url, demo_registry

    if not paths:
        return []
    return (await run_scenarios(paths, tools=demo_registry(connect_url(database_url)))).stories


async def _main(paths: Sequence[str], database_url: str) -> int:
    files = scenario_paths(paths)
    await seed_demo_data(database_url, files)
    report = ScenarioReport(await run_chat_files(files, database_url))
    print(report.render())
    return 0 if report.passed else 1


def argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("paths", nargs="+", help="scenario files or directories of them")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""), help="default: $DATABASE_URL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The chat scenarios; ``python -m gateways.telephony.scenarios`` runs the spoken ones too."""
    assert __doc__ is not None
    parser = argument_parser("python -m agents.scenarios", __doc__.split("\n")[0])
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("the demo tools need PostgreSQL: pass --database-url or set DATABASE_URL")
    return asyncio.run(_main(args.paths, args.database_url))


if __name__ == "__main__":
    from infra.logs import configure_logging

    configure_logging(level=os.environ.get("PARLEY_LOG_LEVEL", "WARNING"), json=False)  # stdout is the report
    sys.exit(main())
