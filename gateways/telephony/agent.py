"""Parley's agent inside a LiveKit ``AgentSession``: the session's LLM and the config's tools.

``ParleyLLM`` is a ``livekit.agents.llm.LLM`` over the config's provider chain (``agents.graph.chain_for``:
the remote providers with keys, the offline model last). Each caller turn is read the way the
chatbot reads one (the offline analyzer's intent, sentiment and request for a human; the config's
escalation rules); a rule that hands off answers with the handoff message and asks for a transfer.
Otherwise the chain answers; a completion that asks for tools becomes LiveKit ``FunctionToolCall``
chunks, so the session runs the config's tools (``config_tools``: each YAML tool a raw-schema
LiveKit function tool running the same ``ToolRegistry`` as chat) and asks again with their output.

Spoken input is read loosely: a transcript drops words, so a caller who names a human ("a human",
"an agent", "a person") asks for one, and keypad digits answer a question about an identifier
("It starts with O R D": ``78945#`` is ``ORD-78945``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import structlog
from livekit.agents import llm
from livekit.agents.llm import function_tool
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr
from livekit.agents.voice import Agent, RunContext

from agents.graph import handoff_text, offline_model
from agents.llm.chain import FallbackChain
from agents.llm.port import ChatMessage, ProviderError, ToolCallRequest, tool_specs
from agents.rules import Escalation, TurnSignals, evaluate_message_rules
from agents.tools import ToolContext, ToolRegistry, ToolRun
from domain.bot import AgentConfig, ToolDefinition

log = structlog.get_logger(__name__)

HUMAN_WORDS = re.compile(r"\b(human|person|agent|representative|operator|someone real|real person)\b", re.I)
UNAVAILABLE = "Sorry, I'm having trouble right now. Please try again in a moment."


class TurnHooks(msgspec.Struct, frozen=True, kw_only=True):
    """What the agent tells the call about (the session wires these to call commands)."""

    sentiment: Callable[[float, str, bool], None]
    escalate: Callable[[Escalation], None]
    tool_started: Callable[[str, str, dict[str, Any]], Awaitable[None]]
    tool_finished: Callable[[str, ToolRun], Awaitable[None]]


class AgentBrain:
    """One call's turn logic: the config, its chain, its tools, and what the caller said so far."""

    def __init__(
        self,
        config: AgentConfig,
        chain: FallbackChain,
        tools: ToolRegistry,
        context: ToolContext,
        hooks: TurnHooks,
    ) -> None:
        self.config = config
        self.chain = chain
        self.tools = tools
        self.context = context
        self.hooks = hooks
        self.analyzer = offline_model(config)
        self.specs = tool_specs(config)
        self.sentiments: list[float] = []
        self.handed_off = False
        self.provider = ""
        self.llm_requests = 0

    async def respond(self, messages: list[ChatMessage]) -> tuple[str, list[ToolCallRequest]]:
        """The agent's next step after ``messages``: words to say, or tools to run first."""
        if self.handed_off:
            return "", []
        rounds = _tool_rounds(messages)
        if messages and messages[-1].role == "user":
            escalation = self._read_turn(messages)
            if escalation is not None and escalation.action == "human_handoff":
                self.handed_off = True
                self.hooks.escalate(escalation)
                return handoff_text(self.config, msgspec.to_builtins(escalation), {"pii_collected": {}}), []
        offer = self.specs if rounds < self.config.max_tool_rounds else []
        self.llm_requests += 1
        try:
            answer = await self.chain.complete(messages, system=self.config.system_prompt, tools=offer)
        except ProviderError as e:
            log.error("voice.llm_failed", code=e.code, provider=e.provider)
            return self.config.templates.get("unavailable", UNAVAILABLE), []
        completion = answer.completion
        self.provider = completion.provider
        if completion.tool_calls and offer:
            return completion.text, completion.tool_calls
        return completion.text.strip(), []

    def _read_turn(self, messages: list[ChatMessage]) -> Escalation | None:
        said = [m.content for m in messages if m.role == "user"]
        text = said[-1]
        analysis = self.analyzer.analyze(text)
        wants_human = analysis.wants_human or bool(HUMAN_WORDS.search(text))
        self.sentiments.append(analysis.sentiment)
        signals = TurnSignals(
            text=text,
            sentiment=analysis.sentiment,
            wants_human=wants_human,
            sentiments=self.sentiments,
            tool_failures=0,
        )
        escalation = evaluate_message_rules(self.config, signals)
        score = round((analysis.sentiment + 1) / 2, 3)  # the seed's 0..1 scale
        emotion = "frustrated" if analysis.sentiment < -0.3 else "positive" if analysis.sentiment > 0.3 else "neutral"
        self.hooks.sentiment(score, emotion, escalation is not None)
        return escalation

    async def run_tool(self, name: str, call_id: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        definition = self.config.tool(name)
        if definition is None:
            return {"error": "temporarily unavailable", "error_type": "unavailable"}
        await self.hooks.tool_started(call_id, name, dict(arguments))
        run = await self.tools.run(definition, arguments, self.context)
        await self.hooks.tool_finished(call_id, run)
        return run.content


def _tool_rounds(messages: list[ChatMessage]) -> int:
    """Tool rounds since the caller last spoke."""
    rounds = 0
    for message in reversed(messages):
        if message.role == "user":
            break
        if message.tool_calls:
            rounds += 1
    return rounds


def to_messages(chat_ctx: llm.ChatContext) -> list[ChatMessage]:
    """LiveKit's chat context as the LLM port's messages (tool exchanges included)."""
    messages: list[ChatMessage] = []
    for item in chat_ctx.items:
        match item.type:
            case "message" if item.role in ("user", "assistant"):
                text = item.text_content or ""
                if text:
                    messages.append(ChatMessage(item.role, text))
            case "function_call":
                try:
                    arguments = json.loads(item.arguments or "{}")
                except ValueError:
                    arguments = {}
                request = ToolCallRequest(id=item.call_id, name=item.name, arguments=arguments)
                if messages and messages[-1].role == "assistant" and not messages[-1].content:
                    last = messages[-1]
                    messages[-1] = msgspec.structs.replace(last, tool_calls=[*last.tool_calls, request])
                else:
                    messages.append(ChatMessage("assistant", "", tool_calls=[request]))
            case "function_call_output":
                messages.append(ChatMessage("tool", item.output, tool_call_id=item.call_id, name=item.name))
    return messages


class ParleyLLM(llm.LLM):
    def __init__(self, brain: AgentBrain) -> None:
        super().__init__()
        self.brain = brain

    @property
    def model(self) -> str:
        return self.brain.provider or "parley"

    @property
    def provider(self) -> str:
        return "parley"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return _ParleyStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _ParleyStream(llm.LLMStream):
    def __init__(self, parley: ParleyLLM, **kwargs: Any) -> None:
        super().__init__(parley, **kwargs)
        self._brain = parley.brain

    async def _run(self) -> None:
        started = time.perf_counter()
        text, calls = await self._brain.respond(to_messages(self._chat_ctx))
        request_id = f"parley-{int(started * 1000)}"
        if calls:
            tool_calls = [
                llm.FunctionToolCall(name=call.name, arguments=json.dumps(call.arguments), call_id=call.id)
                for call in calls
            ]
            delta = llm.ChoiceDelta(role="assistant", content=text or None, tool_calls=tool_calls)
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=delta))
            return
        if text:
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=text))
            )


def config_tools(brain: AgentBrain) -> list[Any]:
    """The config's YAML tools as LiveKit function tools (raw JSON schemas), running the registry."""
    return [_tool(brain, definition) for definition in brain.config.tools]


def _tool(brain: AgentBrain, definition: ToolDefinition) -> Any:
    schema = {"name": definition.name, "description": definition.description, "parameters": definition.parameters}

    async def run(raw_arguments: dict[str, object], context: RunContext) -> str:
        content = await brain.run_tool(definition.name, context.function_call.call_id, raw_arguments)
        return json.dumps(content, default=str)

    return function_tool(run, raw_schema=schema)


class ParleyAgent(Agent):
    def __init__(self, brain: AgentBrain, *, normalize: Callable[[str, str], str] | None = None) -> None:
        super().__init__(instructions=brain.config.system_prompt, tools=config_tools(brain))
        self.brain = brain
        self._normalize = normalize

    async def on_user_turn_completed(self, turn_ctx: llm.ChatContext, new_message: llm.ChatMessage) -> None:
        """What the tools read: spoken forms as they are written ("o r d seven ..." -> "ORD-7...")."""
        if self._normalize is None:
            return
        text = new_message.text_content or ""
        last_reply = next(
            (m.text_content or "" for m in reversed(turn_ctx.items) if m.type == "message" and m.role == "assistant"),
            "",
        )
        normalized = self._normalize(text, last_reply)
        if normalized != text:
            new_message.content = [normalized]
