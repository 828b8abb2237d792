"""The chatbot: a two-node LangGraph (agent and tools) driven by an ``AgentConfig``.

``run_turn(config, history, user_message, chain=..., tools=...)`` is the one entry point. Before
anything else sees the customer's text its card numbers are masked. The agent node reads the turn
with the offline model's ``analyze`` (intent, sentiment, a request for a human) whatever model
answers, collects PII, checks the escalation rules, then asks the model chain, with the config's
system prompt and tools. A completion with tool calls goes to the tools node, which runs them
through the ``ToolRegistry`` and comes back; a completion without ends the turn. A rule with
``action: human_handoff`` answers with the handoff message instead of the model; a tool failure
that escalates lets the model explain the failure, then hands off.

State is plain JSON-ready data (``ChatbotState``), so a LangGraph checkpointer such as
``AsyncPostgresSaver`` can keep it (``agents.checkpoints``). Checkpoints are a cache, since the
history passed in rebuilds any turn: with a checkpointer, ``run_turn`` resumes the thread's
checkpoint only when it is tagged with the same ``turn``, and otherwise starts from the history.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import msgspec
import structlog
from langgraph.graph import END, START, StateGraph

from agents.config import AgentConfig
from agents.rules import (
    CrossSell,
    Escalation,
    TurnSignals,
    evaluate_cross_sell,
    evaluate_message_rules,
    evaluate_tool_failure,
)
from agents.tools import ToolRegistry
from domain.conversation import ToolCall
from domain.pii import collect_pii, mask_card_numbers
from gateways.llm.chain import Fallback, FallbackChain
from gateways.llm.factory import chain_from_config
from gateways.llm.offline import OfflineModel, render_template
from gateways.llm.port import ChatMessage, ProviderError, ToolCallRequest

log = structlog.get_logger(__name__)

HANDOFF = "I'm connecting you with a member of our team who can help further."
UNAVAILABLE = "Sorry, I'm having trouble answering right now. Please try again in a moment."
_JSON = msgspec.json.Decoder()


class ChatbotState(TypedDict):
    """The seed's ``ChatbotState``, JSON-ready: messages and tool calls as builtins."""

    messages: list[dict[str, Any]]
    conversation_id: str
    user_id: str
    config_id: str
    config_version: int
    pii_collected: dict[str, str]
    tool_history: list[dict[str, Any]]  # this turn's domain ToolCalls
    escalation_triggered: bool
    escalation: dict[str, Any] | None
    intent: str
    intents: list[str]
    confidence: float
    sentiment: float
    analyzed: bool
    pending: list[dict[str, Any]]  # tool calls the model asked for, not yet run
    rounds: int
    reply: str
    cross_sell: dict[str, Any] | None
    fallbacks: list[dict[str, Any]]
    provider: str
    model: str


class TurnResult(msgspec.Struct, frozen=True, kw_only=True):
    """One turn's outcome. ``user_message`` is the customer's text as stored (cards masked);
    ``messages`` are this turn's messages in order (that text, tool exchanges, the reply)."""

    reply: str
    intent: str
    confidence: float
    sentiment: float
    tool_calls: list[ToolCall] = []
    escalation: Escalation | None = None
    pii_collected: dict[str, str] = {}
    cross_sell: CrossSell | None = None
    fallbacks: list[Fallback] = []
    user_message: str = ""
    messages: list[ChatMessage] = []
    provider: str = ""
    model: str = ""

    @property
    def escalation_suggested(self) -> bool:
        return self.escalation is not None


def offline_model(config: AgentConfig) -> OfflineModel:
    """The offline model with the config's intents and templates."""
    return OfflineModel(intents=config.intents, templates=config.templates)


def chain_for(config: AgentConfig, env: Mapping[str, str], *, timeout: float | None = None) -> FallbackChain:
    """The config's providers (``llm.providers``), keyed from ``env``, the config-aware offline model last."""
    return chain_from_config(
        config.llm.providers,
        env,
        timeout=timeout or config.llm.timeout_seconds,
        offline=offline_model(config),
    )


async def run_turn(
    config: AgentConfig,
    history: Sequence[ChatMessage],
    user_message: str,
    *,
    chain: FallbackChain,
    tools: ToolRegistry,
    checkpointer: Any = None,
    thread_id: str | None = None,
    turn: str = "",
    conversation_id: str = "",
    user_id: str = "",
    config_id: str = "",
    config_version: int = 0,
) -> TurnResult:
    """Answer ``user_message`` after ``history`` (earlier turns, oldest first).

    With a ``checkpointer``, the graph checkpoints every step on ``thread_id``, tagged with
    ``turn`` (what identifies this answer: the message's conversation version and id), and a turn
    run again picks up from the thread's checkpoint of the same turn (see ``_resume_or_start``).
    """
    masked = mask_card_numbers(user_message)
    past = [_masked(message) for message in history]
    messages = [*past, ChatMessage("user", masked)]
    state: ChatbotState = {
        "messages": [msgspec.to_builtins(message) for message in messages],
        "conversation_id": conversation_id,
        "user_id": user_id,
        "config_id": config_id,
        "config_version": config_version,
        "pii_collected": {},
        "tool_history": [],
        "escalation_triggered": False,
        "escalation": None,
        "intent": "general",
        "intents": [],
        "confidence": 0.0,
        "sentiment": 0.0,
        "analyzed": False,
        "pending": [],
        "rounds": 0,
        "reply": "",
        "cross_sell": None,
        "fallbacks": [],
        "provider": "",
        "model": "",
    }
    graph = _compiled(config, chain, tools, checkpointer)
    run_config: dict[str, Any] = {"recursion_limit": 4 * config.max_tool_rounds + 8}
    final: dict[str, Any]
    if checkpointer is None:
        final = await graph.ainvoke(state, config=run_config)
    else:
        run_config["configurable"] = {"thread_id": thread_id or conversation_id or str(uuid.uuid4())}
        run_config["metadata"] = {"turn": turn}
        final = await _resume_or_start(graph, state, run_config, turn)
    result = TurnResult(
        reply=final["reply"],
        intent=final["intent"],
        confidence=final["confidence"],
        sentiment=final["sentiment"],
        tool_calls=msgspec.convert(final["tool_history"], list[ToolCall]),
        escalation=None if final["escalation"] is None else msgspec.convert(final["escalation"], Escalation),
        pii_collected=final["pii_collected"],
        cross_sell=None if final["cross_sell"] is None else msgspec.convert(final["cross_sell"], CrossSell),
        fallbacks=msgspec.convert(final["fallbacks"], list[Fallback]),
        user_message=masked,
        messages=msgspec.convert(final["messages"][len(past) :], list[ChatMessage]),
        provider=final["provider"],
        model=final["model"],
    )
    log.info(
        "agent.turn",
        conversation_id=conversation_id,
        intent=result.intent,
        tools=[call.tool for call in result.tool_calls],
        escalation=None if result.escalation is None else result.escalation.trigger,
        provider=result.provider,
        fallbacks=len(result.fallbacks),
    )
    return result


async def _resume_or_start(graph: Any, state: ChatbotState, run_config: dict[str, Any], turn: str) -> dict[str, Any]:
    """The turn's final state: from the thread's checkpoint when it is this very turn, else from ``state``.

    Each step's checkpoint is written before the next step starts (``durability="sync"``), so a
    turn stopped in a step resumes at that step. A checkpoint of this turn with steps left resumes
    there (``ainvoke(None)``), without running the finished steps again; a finished one is the
    answer already (the caller had not recorded it). A checkpoint of any other turn is ignored:
    given an input, LangGraph starts from the first step and drops whatever the thread had pending.
    """
    saved = await graph.aget_state(run_config)
    if turn and saved.values and saved.metadata and saved.metadata.get("turn") == turn:
        if not saved.next:
            return dict(saved.values)
        log.info("agent.turn_resumed", turn=turn, next=list(saved.next))
        resumed: dict[str, Any] = await graph.ainvoke(None, config=run_config, durability="sync")
        return resumed
    final: dict[str, Any] = await graph.ainvoke(state, config=run_config, durability="sync")
    return final


_GRAPHS: dict[tuple[int, int, int, int], tuple[Any, tuple[Any, ...]]] = {}


def _compiled(config: AgentConfig, chain: FallbackChain, tools: ToolRegistry, checkpointer: Any) -> Any:
    """The compiled graph for these collaborators, built once: compiling costs more than a turn."""
    key = (id(config), id(chain), id(tools), id(checkpointer))
    hit = _GRAPHS.get(key)
    if hit is None or any(a is not b for a, b in zip(hit[1], (config, chain, tools, checkpointer), strict=True)):
        if len(_GRAPHS) > 256:
            _GRAPHS.clear()
        hit = (
            build_graph(config, chain=chain, tools=tools, checkpointer=checkpointer),
            (config, chain, tools, checkpointer),
        )
        _GRAPHS[key] = hit
    return hit[0]


def build_graph(config: AgentConfig, *, chain: FallbackChain, tools: ToolRegistry, checkpointer: Any = None) -> Any:
    """The compiled two-node graph for one config, chain and tool registry."""
    analyzer = offline_model(config)
    specs = config.tool_specs()

    async def agent(state: ChatbotState) -> dict[str, Any]:
        update: dict[str, Any] = {} if state["analyzed"] else analyze_turn(config, analyzer, state)
        current: dict[str, Any] = {**state, **update}
        messages = msgspec.convert(current["messages"], list[ChatMessage])
        escalation = current["escalation"]
        handoff = escalation is not None and escalation["action"] == "human_handoff"
        if handoff and current["rounds"] == 0:
            return {**update, **finish(config, current, handoff_text(config, escalation, current), messages)}
        offer = specs if not handoff and current["rounds"] < config.max_tool_rounds else []
        fallbacks = list(current["fallbacks"])
        try:
            answer = await chain.complete(messages, system=config.system_prompt, tools=offer)
        except ProviderError as exc:
            log.error("agent.llm_failed", code=exc.code, provider=exc.provider)
            fallbacks += [msgspec.to_builtins(fallback) for fallback in exc.fallbacks]
            reply = config.templates.get("unavailable", UNAVAILABLE)
            return {**update, "fallbacks": fallbacks, **finish(config, current, reply, messages)}
        completion = answer.completion
        fallbacks += [msgspec.to_builtins(fallback) for fallback in answer.fallbacks]
        seen = {"fallbacks": fallbacks, "provider": completion.provider, "model": completion.model}
        if completion.tool_calls and offer:
            asked = ChatMessage("assistant", completion.text, tool_calls=completion.tool_calls)
            return {
                **update,
                **seen,
                "messages": [*current["messages"], msgspec.to_builtins(asked)],
                "pending": [msgspec.to_builtins(call) for call in completion.tool_calls],
                "rounds": current["rounds"] + 1,
            }
        reply = completion.text.strip()
        if handoff:
            reply = f"{reply} {handoff_text(config, escalation, current)}".strip()
        return {**update, **seen, **finish(config, current, reply, messages)}

    async def run_tools(state: ChatbotState) -> dict[str, Any]:
        messages = list(state["messages"])
        history = list(state["tool_history"])
        failed = []
        for request in msgspec.convert(state["pending"], list[ToolCallRequest]):
            definition = config.tool(request.name)
            if definition is None:
                call = ToolCall(tool=request.name, input=request.arguments, error=f"unknown tool {request.name!r}")
            else:
                call = await tools.call(definition, request.arguments)
                if call.error is not None:
                    failed.append((definition, call))
            history.append(msgspec.to_builtins(call))
            content = {"error": call.error} if call.error is not None else call.output or {}
            reply = ChatMessage(
                "tool", msgspec.json.encode(content).decode(), tool_call_id=request.id, name=request.name
            )
            messages.append(msgspec.to_builtins(reply))
        update: dict[str, Any] = {"messages": messages, "tool_history": history, "pending": []}
        if state["escalation"] is None and failed:
            chat = msgspec.convert(messages, list[ChatMessage])
            escalation = evaluate_tool_failure(config, failed, consecutive_tool_failures(chat))
            if escalation is not None:
                update |= {"escalation": msgspec.to_builtins(escalation), "escalation_triggered": True}
        return update

    def route(state: ChatbotState) -> str:
        return "tools" if state["pending"] else END

    graph = StateGraph(ChatbotState)
    graph.add_node("agent", agent)
    graph.add_node("tools", run_tools)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, {"tools": "tools", END: END})
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=checkpointer)


def analyze_turn(config: AgentConfig, analyzer: OfflineModel, state: Mapping[str, Any]) -> dict[str, Any]:
    """Intent, sentiment, PII and the escalation rules over the latest customer turn."""
    messages = msgspec.convert(state["messages"], list[ChatMessage])
    said = [message.content for message in messages if message.role == "user"]
    text = said[-1] if said else ""
    analysis = analyzer.analyze(text)
    signals = TurnSignals(
        text=text,
        sentiment=analysis.sentiment,
        wants_human=analysis.wants_human,
        sentiments=[analyzer.sentiment(turn) for turn in said],
        tool_failures=consecutive_tool_failures(messages),
    )
    escalation = evaluate_message_rules(config, signals)
    return {
        "analyzed": True,
        "intent": analysis.intent,
        "intents": analysis.intents,
        "confidence": analysis.confidence,
        "sentiment": analysis.sentiment,
        "pii_collected": collect_pii(said),
        "escalation": None if escalation is None else msgspec.to_builtins(escalation),
        "escalation_triggered": escalation is not None,
    }


def finish(config: AgentConfig, state: Mapping[str, Any], reply: str, messages: list[ChatMessage]) -> dict[str, Any]:
    """The turn's last update: the reply appended, and a cross-sell unless the customer is being handed off."""
    cross_sell = None
    if state["escalation"] is None:
        said = [message.content for message in messages if message.role == "user"]
        succeeded = [call["tool"] for call in state["tool_history"] if call.get("error") is None]
        found = evaluate_cross_sell(
            config, text=said[-1] if said else "", intent=state["intent"], intents=state["intents"],
            tools_succeeded=succeeded,
        )  # fmt: skip
        cross_sell = None if found is None else msgspec.to_builtins(found)
    final = ChatMessage("assistant", reply)
    return {
        "reply": reply,
        "pending": [],
        "cross_sell": cross_sell,
        "messages": [*state["messages"], msgspec.to_builtins(final)],
    }


def handoff_text(config: AgentConfig, escalation: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    template = (
        escalation.get("message")
        or config.templates.get(f"escalation.{escalation['trigger']}")
        or config.templates.get("escalation")
        or HANDOFF
    )
    return render_template(template, {**state["pii_collected"], **escalation})


def consecutive_tool_failures(messages: Sequence[ChatMessage]) -> int:
    """Failed tool results since the last one that succeeded."""
    count = 0
    for message in reversed(messages):
        if message.role != "tool":
            continue
        if not tool_failed(message):
            break
        count += 1
    return count


def tool_failed(message: ChatMessage) -> bool:
    try:
        content = _JSON.decode(message.content)
    except msgspec.DecodeError:
        return False
    return isinstance(content, dict) and bool(content.get("error"))


def _masked(message: ChatMessage) -> ChatMessage:
    masked = mask_card_numbers(message.content)
    return message if masked == message.content else msgspec.structs.replace(message, content=masked)
