"""Previewing a candidate config before it goes live: test scenarios, and replays of real history.

Both run the real agent (``agents.graph.run_turn``: the same graph, models and tool checks as the
runtime) and append nothing to any stream: ``run_turn`` decides, only the runtime records.

- **Scenarios** (the seed's ``test_scenarios``): each user message starts a fresh conversation.
  Tools that only read (``fetch_order_status``) run for real against the demo data; tools that
  would change something (refunds, emails, tickets, callbacks) are sandboxed: their arguments are
  checked against the schema as usual and they answer ``{"sandbox": true, ...}`` without acting,
  with a ``[name]`` placeholder for every value their reply template needs and only a real run
  would give (a refund's id), so no reply reads with a blank.
  A scenario is judged against what it expects (``expectations``): the explicit ``expect_*``
  fields, and what its ``expected_behavior`` sentence says ("Should trigger refund tool", "should
  not escalate", "should mention \"ORD-1\""). ``success`` is true only when every expectation
  holds, false when one does not, and null when nothing it says could be checked.
- **Replays**: recorded conversations are played again against the candidate, their customer turns
  in order, and every tool the candidate calls answers with what the recording says that tool
  answered (the recorded call with the same arguments, else its next unused one), so nothing is
  looked up or done again; a call the recording cannot answer gets the sandbox's placeholders and
  is listed. Only the AI's turns are compared: a turn a person answered (a human agent's reply,
  ``author`` other than the AI, while an escalation held the conversation) is skipped, though
  what was said stays in the history; an escalation a person asked for is not the AI's decision.
  Per conversation the report shows, turn by turn, where the candidate's reply, tool calls or
  escalation decision differ from the AI's, and which recorded tool calls would no longer happen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from agents.graph import TurnResult, chain_for, run_turn
from agents.llm.factory import ProviderKeys
from agents.llm.port import ChatMessage
from agents.tools import ToolContext, ToolFailed, ToolImpl, ToolRegistry
from commands.config import Check, ScenarioResult
from domain import conversation as c
from domain.bot import AgentConfig, ToolDefinition
from read_models.config import ConversationReplay, ReplayReport, TurnAnswer, TurnDifference, TurnSkipped
from streams.store import EventStore, RecordedEvent
from streams.subjects import StreamId

READ_ONLY_TOOLS = frozenset({"fetch_order_status"})
AI_AUTHORS = frozenset({"ai", "agent:ai"})  # ``AgentReplied.author`` of the AI's own replies
AI_ACTOR = "agent:ai"  # ``EscalationRequested.requested_by`` when the AI escalated
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][\w-]*)")


class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The seed's test scenario (``user_message``, ``expected_behavior``) and explicit expectations,
    which take precedence over what the sentence says about the same thing."""

    user_message: str
    expected_behavior: str = ""
    expect_tool: str | None = None
    expect_no_tool_calls: bool | None = None
    expect_escalation: bool | None = None
    expect_reply_contains: str | None = None


# Expectations ----------------------------------------------------------------------------------


class Expectation(msgspec.Struct, frozen=True, kw_only=True):
    tools: tuple[str, ...] = ()  # each must be called, and succeed
    not_tools: tuple[str, ...] = ()  # none of these may be called
    no_tools: bool | None = None  # True: no tool at all; False: at least one
    escalation: bool | None = None
    reply_contains: tuple[str, ...] = ()


_NEGATION = re.compile(r"\b(?:not|never|no|none|without|nor)\b|n't\b")
_ESCALATION = re.compile(
    r"\b(?:escalat\w*|hand(?:s|ed|ing)?[ -]?off|handoff|transfer\w*|human|person|live agent|real agent|manager)\b"
)
_TOOL_VERB = re.compile(
    r"\b(?:tools?|trigger\w*|call\w*|use[sd]?|using|invok\w*|run\w*|fir\w*|execut\w*|start\w*|initiat\w*|"
    r"open\w*|creat\w*|schedul\w*|book\w*|send\w*|look\w* up|fetch\w*|check\w*|process\w*|issu\w*)\b"
)
_NAMED_TOOL = re.compile(r"\b([a-z]+)\s+tools?\b")
_NOT_A_NAME = frozenset({"a", "an", "any", "the", "no", "some", "one", "of", "other", "single", "its", "right"})
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201d]+)[\"\u201d]")
_CLAUSES = re.compile(r"[.;,!?]|\b(?:and|but|then|while|also)\b")
_GENERIC = frozenset(
    {"fetch", "get", "initiate", "send", "create", "schedule", "check", "lookup", "update", "add", "remove", "start"}
)


def _keywords(tool: str) -> frozenset[str]:
    """The words that name a tool in a sentence: ``initiate_refund`` is the refund tool."""
    words = [word for word in tool.split("_") if word]
    distinctive = [word for word in words if word not in _GENERIC]
    return frozenset(_words(" ".join(distinctive or words)))


def _words(text: str) -> set[str]:
    """Lower-case words, a plural's final s dropped ("refunds" is "refund")."""
    return {word[:-1] if word.endswith("s") and len(word) > 3 else word for word in re.findall(r"[a-z]+", text)}


def expectations(scenario: Scenario, tool_names: Sequence[str]) -> Expectation:
    """What a scenario expects: its ``expected_behavior`` sentence read clause by clause (a clause
    with a negation expects the opposite), then its explicit ``expect_*`` fields over that."""
    text = scenario.expected_behavior.lower().replace("without", ", not ")
    tools: list[str] = []
    not_tools: list[str] = []
    no_tools: bool | None = None
    escalation: bool | None = None
    for clause in _CLAUSES.split(text):
        negated = _NEGATION.search(clause) is not None
        named = [name for name in tool_names if name in clause or name.replace("_", " ") in clause]
        if not named and _TOOL_VERB.search(clause):
            words = _words(clause)
            named = [name for name in tool_names if _keywords(name) <= words]
        if not named and (unknown := _NAMED_TOOL.search(clause)) and unknown.group(1) not in _NOT_A_NAME:
            named = [unknown.group(1)]  # "the warranty tool": a tool this config does not have
        if named:
            (not_tools if negated else tools).extend(n for n in named if n not in tools and n not in not_tools)
        elif re.search(r"\btools?\b", clause):
            no_tools = negated  # "should not call any tool", "no tools"; "should use a tool"
        if _ESCALATION.search(clause):
            escalation = not negated
    reply = [quoted.strip() for quoted in _QUOTED.findall(scenario.expected_behavior) if quoted.strip()]
    if scenario.expect_tool is not None:
        tools, not_tools = [scenario.expect_tool], [t for t in not_tools if t != scenario.expect_tool]
    if scenario.expect_no_tool_calls is not None:
        no_tools = scenario.expect_no_tool_calls
    if scenario.expect_escalation is not None:
        escalation = scenario.expect_escalation
    if scenario.expect_reply_contains is not None:
        reply = [scenario.expect_reply_contains]
    return Expectation(
        tools=tuple(tools),
        not_tools=tuple(not_tools),
        no_tools=no_tools,
        escalation=escalation,
        reply_contains=tuple(reply),
    )


def judge(expected: Expectation, turn: TurnResult) -> list[Check]:
    """One check per expectation: what was expected, what happened, whether it held."""
    called = [call.tool for call in turn.tool_calls]
    succeeded = [call.tool for call in turn.tool_calls if call.error is None]
    checks: list[Check] = []

    def check(name: str, wanted: str | bool | list[str], actual: str | bool | list[str], passed: bool) -> None:
        checks.append(Check(check=name, expected=wanted, actual=actual, passed=passed))

    for tool in expected.tools:
        check("tool_called", tool, called, tool in succeeded)
    for tool in expected.not_tools:
        check("tool_not_called", tool, called, tool not in called)
    if expected.no_tools is True:
        check("no_tool_calls", [], called, not called)
    elif expected.no_tools is False:
        check("some_tool_call", "any", called, bool(called))
    if expected.escalation is not None:
        escalated = turn.escalation_suggested
        check("escalation", expected.escalation, escalated, expected.escalation == escalated)
    for text in expected.reply_contains:
        check("reply_contains", text, turn.reply, text.lower() in turn.reply.lower())
    return checks


def sandbox_registry(
    real: ToolRegistry, config: AgentConfig, read_only: frozenset[str] = READ_ONLY_TOOLS
) -> ToolRegistry:
    """The config's tools: read-only ones as they are, the others answering without acting."""
    registry = ToolRegistry()
    for tool in config.tools:
        if tool.name in read_only and tool.name in real:
            registry.register(tool.name, _through(real, tool))
        else:
            registry.register(tool.name, _sandboxed(tool.name, template_variables(config, tool.name)))
    return registry


def template_variables(config: AgentConfig, tool: str) -> tuple[str, ...]:
    """The top-level variables the reply template of ``tool``'s result reads."""
    template = config.templates.get(tool, "")
    return tuple(dict.fromkeys(_VARIABLE.findall(template)))


def _through(real: ToolRegistry, tool: ToolDefinition) -> ToolImpl:
    async def call(*, context: ToolContext | None = None, **arguments: Any) -> Mapping[str, Any]:
        done = await real.call(tool, arguments, context)  # the turn's tenant and customer
        if done.error is not None or done.output is None:
            raise ToolFailed(done.error or f"{tool.name} gave nothing")
        return done.output

    return call


def _sandboxed(name: str, variables: Sequence[str] = ()) -> ToolImpl:
    async def act(**arguments: Any) -> Mapping[str, Any]:
        placeholders = {variable: f"[{variable}]" for variable in variables}
        return {**placeholders, "sandbox": True, "tool": name, "status": "would_run", **arguments}

    return act


async def run_scenarios(
    config: AgentConfig,
    scenarios: Sequence[Scenario],
    tools: ToolRegistry,
    env: ProviderKeys | Mapping[str, str],
    *,
    tenant: str = "",
) -> list[ScenarioResult]:
    """Each scenario as a fresh conversation of ``tenant`` (whose data the read-only tools read)."""
    chain = chain_for(config, env)
    sandbox = sandbox_registry(tools, config)
    names = [tool.name for tool in config.tools]
    results = []
    for scenario in scenarios:
        turn = await run_turn(config, [], scenario.user_message, chain=chain, tools=sandbox, tenant=tenant)
        called = [call.tool for call in turn.tool_calls]
        checks = judge(expectations(scenario, names), turn)
        note = None
        if not checks:
            note = (
                "nothing in the expected behaviour could be checked: name a tool, an escalation or a quoted"
                " phrase, or use expect_tool, expect_no_tool_calls, expect_escalation, expect_reply_contains"
                if scenario.expected_behavior
                else "no expected behaviour given"
            )
        results.append(
            ScenarioResult(
                scenario=scenario.user_message,
                expected_behavior=scenario.expected_behavior,
                agent_response=turn.reply,
                intent=turn.intent,
                tool_called=called[0] if called else None,
                tools_called=called,
                tool_errors=[call.error for call in turn.tool_calls if call.error],
                escalation_suggested=turn.escalation_suggested,
                success=all(check.passed for check in checks) if checks else None,
                checks=checks,
                note=note,
            )
        )
    return results


# Replays ----------------------------------------------------------------------------------------


class RecordedTurn(msgspec.Struct, frozen=True, kw_only=True):
    """A customer turn and what the AI did with it. ``answered_by_ai`` False: a person answered it
    (``human_reply``), or nobody did, so there is nothing of the AI's to compare it with."""

    user_message: str
    reply: str | None
    tools: list[str]
    escalated: bool  # the AI escalated (or flagged) on this turn
    answered_by_ai: bool = False
    human_reply: str | None = None
    escalated_by: str | None = None  # a person who escalated after this turn: not the AI's decision


def is_ai(author: str) -> bool:
    return author in AI_AUTHORS


def recorded_turns(events: Sequence[RecordedEvent]) -> list[RecordedTurn]:
    """A conversation's customer turns with what followed each: the AI's reply, its tools, its
    escalation; or a person's reply, and an escalation someone asked for by hand."""
    turns: list[RecordedTurn] = []
    replace = msgspec.structs.replace
    for recorded in events:
        match recorded.event:
            case c.UserMessageReceived(content=content):
                turns.append(RecordedTurn(user_message=content or "", reply=None, tools=[], escalated=False))
            case c.AgentReplied() as reply if turns:
                turn = turns[-1]
                if not is_ai(reply.author):
                    if turn.human_reply is None:
                        turns[-1] = replace(turn, human_reply=reply.content)
                elif not turn.answered_by_ai:
                    turns[-1] = replace(
                        turn,
                        reply=reply.content,
                        tools=[call.tool for call in reply.tool_calls],
                        escalated=turn.escalated or reply.escalation_suggested,
                        answered_by_ai=True,
                    )
            case c.EscalationRequested(requested_by=by) if turns:
                turn = turns[-1]
                turns[-1] = replace(turn, escalated=True) if by == AI_ACTOR else replace(turn, escalated_by=by)
    return turns


class _Recording:
    """The tool results of one recorded conversation: the call with the same arguments if there is
    one, else the next unused call of that tool; a call it cannot answer gets placeholders."""

    def __init__(self, events: Sequence[RecordedEvent], config: AgentConfig) -> None:
        self.calls: dict[str, list[c.ToolCall]] = {}
        self.config = config
        self.unanswered: list[str] = []
        for recorded in events:
            if isinstance(recorded.event, c.AgentReplied) and is_ai(recorded.event.author):
                for call in recorded.event.tool_calls:
                    self.calls.setdefault(call.tool, []).append(call)

    def registry(self) -> ToolRegistry:
        registry = ToolRegistry()
        for tool in self.config.tools:
            registry.register(tool.name, self._replay(tool.name))
        return registry

    def _replay(self, name: str) -> ToolImpl:
        sandboxed = _sandboxed(name, template_variables(self.config, name))

        async def replay(**arguments: Any) -> Mapping[str, Any]:
            queue = self.calls.get(name) or []
            call = next((call for call in queue if call.input == arguments), queue[0] if queue else None)
            if call is None:
                self.unanswered.append(name)
                return await sandboxed(**arguments)
            queue.remove(call)
            if call.error or call.output is None:
                raise ToolFailed(call.error or f"{name} failed")
            return call.output

        return replay


async def replay_conversation(
    config: AgentConfig, conversation_id: str, events: Sequence[RecordedEvent], env: ProviderKeys | Mapping[str, str]
) -> ConversationReplay:
    """Play a recorded conversation's customer turns against ``config``; what differs from the AI's
    answers, turn by turn (turns a person answered are skipped, their words kept in the history)."""
    chain = chain_for(config, env)
    recording = _Recording(events, config)
    tools = recording.registry()
    tenant = events[0].stream.tenant if events else ""
    user_id = next((r.event.user_id for r in events if isinstance(r.event, c.ConversationStarted)), "")
    history: list[ChatMessage] = []
    differences: list[TurnDifference] = []
    lost: list[str] = []
    new: list[str] = []
    skipped: list[TurnSkipped] = []
    turns = recorded_turns(events)
    for index, before in enumerate(turns, 1):
        if not before.answered_by_ai:
            history.append(ChatMessage("user", before.user_message))
            if before.human_reply is not None:
                history.append(ChatMessage("assistant", before.human_reply))
            reason = "answered by a person" if before.human_reply is not None else "not answered by the AI"
            skipped.append(TurnSkipped(turn=index, reason=reason))
            continue
        unanswered = len(recording.unanswered)
        after: TurnResult = await run_turn(
            config,
            history,
            before.user_message,
            chain=chain,
            tools=tools,
            tenant=tenant,
            conversation_id=conversation_id,
            user_id=user_id,
        )
        history += after.messages or [ChatMessage("user", before.user_message), ChatMessage("assistant", after.reply)]
        called = [call.tool for call in after.tool_calls]
        changed = []
        if before.reply is not None and after.reply != before.reply:
            changed.append("reply")
        if called != before.tools:
            changed.append("tool_calls")
        if after.escalation_suggested != before.escalated:
            changed.append("escalation")
        gone = [tool for tool in before.tools if tool not in called]
        added = [tool for tool in called if tool not in before.tools]
        lost += gone
        new += added
        if changed:
            differences.append(
                TurnDifference(
                    turn=index,
                    user_message=before.user_message,
                    changed=changed,
                    recorded=TurnAnswer(reply=before.reply, tool_calls=before.tools, escalated=before.escalated),
                    candidate=TurnAnswer(reply=after.reply, tool_calls=called, escalated=after.escalation_suggested),
                    # The candidate called a tool the recording has no result of: its values are placeholders.
                    unrecorded_tool_calls=recording.unanswered[unanswered:],
                )
            )
    return ConversationReplay(
        conversation_id=conversation_id,
        turns=len(turns),
        turns_compared=len(turns) - len(skipped),
        turns_changed=len(differences),
        turns_skipped=skipped,
        escalated_by_people=sorted({t.escalated_by for t in turns if t.escalated_by}),
        tool_calls_lost=lost,
        tool_calls_added=new,
        differences=differences,
    )


async def replay_history(
    config: AgentConfig, recordings: Mapping[str, Sequence[RecordedEvent]], env: ProviderKeys | Mapping[str, str]
) -> ReplayReport:
    reports = [await replay_conversation(config, cid, events, env) for cid, events in recordings.items()]
    return ReplayReport(
        conversations_replayed=len(reports),
        conversations_changed=[r.conversation_id for r in reports if r.turns_changed],
        conversations_losing_tool_calls=[r.conversation_id for r in reports if r.tool_calls_lost],
        conversations=reports,
    )


class Previews:
    """Previews for the config use cases (``commands.config.Previewer``): scenarios run against the
    tools in a sandbox, and replays of a config's recent recorded conversations."""

    def __init__(
        self, tools: ToolRegistry, keys: ProviderKeys | Mapping[str, str], store: EventStore, queries: Any
    ) -> None:
        self.tools = tools
        self.keys = keys
        self.store = store
        self.queries = queries  # ``read_models.config.ConfigQueries``: which conversations to replay

    async def scenarios(
        self, candidate: AgentConfig, scenarios: Sequence[Scenario], tenant: str
    ) -> list[ScenarioResult]:
        return await run_scenarios(candidate, scenarios, self.tools, self.keys, tenant=tenant)

    async def replay_recorded(
        self, tenant: str, config_id: str, candidate: AgentConfig, limit: int = 20
    ) -> ReplayReport:
        """How ``candidate`` would have answered the config's recent recorded conversations."""
        ids = await self.queries.recent_conversations(tenant, config_id, limit)
        recordings = {cid: await self.store.read(StreamId(tenant, c.AGGREGATE_TYPE, cid)) for cid in ids}
        return await replay_history(candidate, recordings, self.keys)
