"""The chatbot: a two-node LangGraph (agent and tools) driven by an ``AgentConfig``.

``run_turn(config, history, user_message, chain=..., tools=...)`` is the one entry point. Before
anything else sees the customer's text its card numbers are masked. The agent node reads the turn
with the offline model's ``analyze`` (intent, sentiment, a request for a human) whatever model
answers, collects PII, checks the escalation rules, then asks the model chain, with the config's
system prompt and tools. A completion with tool calls goes to the tools node, which runs them
through the ``ToolRegistry`` and comes back; a completion without ends the turn. A rule with
``action: human_handoff`` answers with the handoff message instead of the model; a tool failure
that escalates lets the model explain the failure, then hands off.

``history`` is the conversation so far as ``TurnResult.messages`` lists it, tool exchanges included:
tool failures count across turns for ``repeated_tool_failure``, and what earlier turns said (an
order number, an email) is there for the model. Tools run with a ``ToolContext`` (the tenant, the
conversation, the email addresses its customer gave), and the model is told of an internal tool
failure only that the tool is unavailable, so no internal message reaches the customer.

Cross-sell: an offer is made in the reply's text (and in ``TurnResult.cross_sell``), unless the
customer is being handed off, a tool failed, or the product was offered before in the conversation.
The customer's answer to ``pending_offer`` (the open offer; when not given, one the last reply
carries) is ``TurnResult.cross_sell_response``: an acceptance is acknowledged (the
``cross_sell.accepted`` template) and acted on (the rule's ``accept_tool``), a refusal acknowledged
(``cross_sell.declined``); the model answers the rest of the message only when it asks for more.

State is plain JSON-ready data (``ChatbotState``), so a LangGraph checkpointer such as
``AsyncPostgresSaver`` can keep it (``agents.checkpoints``). Checkpoints are a cache, since the
history passed in rebuilds any turn: with a checkpointer, ``run_turn`` resumes the thread's
checkpoint only when it is tagged with the same ``turn``, and otherwise starts from the history.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

import msgspec
import structlog
from langgraph.graph import END, START, StateGraph

from agents.llm.chain import FallbackChain
from agents.llm.factory import ProviderKeys, chain_from_config
from agents.llm.offline import OfflineModel, render_first
from agents.llm.port import ChatMessage, Fallback, ProviderError, ToolCallRequest, tool_specs
from agents.rules import (
    CrossSell,
    Escalation,
    TurnSignals,
    cross_sell_rule,
    evaluate_cross_sell,
    evaluate_message_rules,
    evaluate_tool_failure,
    offer_response,
    offers_made,
)
from agents.tools import DEFAULT_TENANT, ToolContext, ToolRegistry, ToolRun, customer_emails
from domain.bot import AgentConfig
from domain.conversation import ToolCall
from domain.pii import EMAIL, collect_pii, mask_card_numbers

log = structlog.get_logger(__name__)

HANDOFF = "I'm connecting you with a member of our team who can help further."
UNAVAILABLE = "Sorry, I'm having trouble answering right now. Please try again in a moment."
_JSON = msgspec.json.Decoder()
CrossSellResponse = Literal["accepted", "declined"]
UPSET = -0.5  # no offer to a customer whose message reads below this sentiment


class ChatbotState(TypedDict):
    """The seed's ``ChatbotState``, JSON-ready: messages and tool calls as builtins."""

    messages: list[dict[str, Any]]
    conversation_id: str
    user_id: str
    config_id: str
    config_version: int
    tenant: str
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
    pending_offer: dict[str, Any] | None  # the open offer the customer may be answering
    cross_sell_response: str | None
    preface: str  # said before the model's reply (the answer to an offer)
    language: str
    start: int  # where this turn's messages begin
    fallbacks: list[dict[str, Any]]
    provider: str
    model: str


class TurnResult(msgspec.Struct, frozen=True, kw_only=True):
    """One turn's outcome. ``user_message`` is the customer's text as stored (cards masked);
    ``messages`` are this turn's messages in order (that text, tool exchanges, the reply): the next
    turn's ``history`` is the earlier history plus these. ``cross_sell`` is the offer this reply
    makes; ``cross_sell_response`` what the customer's message did with the open one."""

    reply: str
    intent: str
    confidence: float
    sentiment: float
    tool_calls: list[ToolCall] = []
    escalation: Escalation | None = None
    pii_collected: dict[str, str] = {}
    cross_sell: CrossSell | None = None
    cross_sell_response: CrossSellResponse | None = None  # what the customer's message did with ``pending_offer``
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


def chain_for(
    config: AgentConfig, keys: ProviderKeys | Mapping[str, str], *, timeout: float | None = None
) -> FallbackChain:
    """The config's providers (``llm.providers``) that have keys, the config-aware offline model last."""
    return chain_from_config(
        config.llm.providers,
        keys,
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
    tenant: str = "",
    pending_offer: CrossSell | None = None,
    known_pii: Mapping[str, str] | None = None,
) -> TurnResult:
    """Answer ``user_message`` after ``history`` (earlier turns, oldest first, tool exchanges included).

    ``tenant`` scopes the tools (empty: the demo tenant). ``pending_offer`` is the offer an earlier
    reply made that the customer has not answered yet. ``known_pii`` is what the conversation knew
    of the customer before its messages (its start context: email, phone, order id).

    With a ``checkpointer``, the graph checkpoints every step on ``thread_id``, tagged with
    ``turn`` (what identifies this answer: the message's conversation version and id), and a turn
    run again picks up from the thread's checkpoint of the same turn (see ``_resume_or_start``).
    """
    masked = mask_card_numbers(user_message)
    past = well_formed([_masked(message) for message in history])
    messages = [*past, ChatMessage("user", masked)]
    if pending_offer is None:  # the offer the last reply carries, if any
        replies = [message.content for message in past if message.role == "assistant" and message.content]
        pending_offer = next(iter(offers_made(config, replies[-1:])), None)
    state: ChatbotState = {
        "messages": [msgspec.to_builtins(message) for message in messages],
        "conversation_id": conversation_id,
        "user_id": user_id,
        "config_id": config_id,
        "config_version": config_version,
        "tenant": tenant or DEFAULT_TENANT,
        "pii_collected": dict(known_pii or {}),
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
        "pending_offer": None if pending_offer is None else msgspec.to_builtins(pending_offer),
        "cross_sell_response": None,
        "preface": "",
        "language": "en",
        "start": len(past),
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
        cross_sell_response=final.get("cross_sell_response"),
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
        cross_sell=None if result.cross_sell is None else result.cross_sell.product,
        cross_sell_response=result.cross_sell_response,
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
    specs = tool_specs(config)

    async def agent(state: ChatbotState) -> dict[str, Any]:
        update: dict[str, Any] = {} if state["analyzed"] else analyze_turn(config, analyzer, state)
        current: dict[str, Any] = {**state, **update}
        if not state["analyzed"] and current["cross_sell_response"] is not None:
            answered = await answer_offer(config, analyzer, tools, current)
            update |= answered
            current |= answered
        messages = msgspec.convert(current["messages"], list[ChatMessage])
        escalation = current["escalation"]
        handoff = escalation is not None and escalation["action"] == "human_handoff"
        if handoff and current["rounds"] == 0:
            return {**update, **finish(config, current, handoff_text(config, escalation, current), messages)}
        if not state["analyzed"] and current["cross_sell_response"] is not None:
            if not asks_for_more(analyzer, specs, messages[: current["start"] + 1]):
                return {**update, **finish(config, current, analyzer.templates["anything_else"], messages)}
        offer = specs if not handoff and current["rounds"] < config.max_tool_rounds else []
        fallbacks = list(current["fallbacks"])
        try:
            answer = await chain.complete(_for_model(messages, current), system=config.system_prompt, tools=offer)
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
        context = tool_context(state)
        for request in msgspec.convert(state["pending"], list[ToolCallRequest]):
            definition = config.tool(request.name)
            if definition is None:
                error = f"unknown tool {request.name!r}"
                run = ToolRun(ToolCall(tool=request.name, input=request.arguments, error=error), "unavailable")
            else:
                run = await tools.run(definition, request.arguments, context)
                if run.failure is not None:
                    failed.append((definition, run.call))
            history.append(msgspec.to_builtins(run.call))
            reply = ChatMessage(
                "tool", msgspec.json.encode(run.content).decode(), tool_call_id=request.id, name=request.name
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
    """Intent, sentiment, PII, the escalation rules and the answer to an open offer, over the latest
    customer turn.

    ``repeated_tool_failure`` is not a message rule: it fires when a tool fails (``run_tools``),
    counting the failures of earlier turns too, so old failures alone never escalate a new message.
    """
    messages = msgspec.convert(state["messages"], list[ChatMessage])
    said = [message.content for message in messages if message.role == "user"]
    text = said[-1] if said else ""
    analysis = analyzer.analyze(text)
    signals = TurnSignals(
        text=text,
        sentiment=analysis.sentiment,
        wants_human=analysis.wants_human,
        sentiments=[analyzer.sentiment(turn) for turn in said],
        tool_failures=0,
    )
    escalation = evaluate_message_rules(config, signals)
    offer = state.get("pending_offer")
    response = None if offer is None else offer_response(text, msgspec.convert(offer, CrossSell))
    return {
        "analyzed": True,
        "intent": analysis.intent,
        "intents": analysis.intents,
        "confidence": analysis.confidence,
        "sentiment": analysis.sentiment,
        "pii_collected": {**state.get("pii_collected", {}), **collect_pii(said)},
        "escalation": None if escalation is None else msgspec.to_builtins(escalation),
        "escalation_triggered": escalation is not None,
        "cross_sell_response": response,
        "language": analysis.language,
    }


def tool_context(state: Mapping[str, Any]) -> ToolContext:
    """Whom the turn's tools act for: the tenant, the conversation, and the customer's email addresses."""
    messages = msgspec.convert(state["messages"], list[ChatMessage])
    given = [
        match.group(0) for message in messages if message.role == "user" for match in EMAIL.finditer(message.content)
    ]
    known = state.get("pii_collected", {}).get("email")
    return ToolContext(
        tenant=state.get("tenant") or DEFAULT_TENANT,
        conversation_id=state.get("conversation_id", ""),
        user_id=state.get("user_id", ""),
        customer_emails=customer_emails(state.get("user_id", ""), [*([known] if known else []), *given]),
    )


async def answer_offer(
    config: AgentConfig, analyzer: OfflineModel, tools: ToolRegistry, state: Mapping[str, Any]
) -> dict[str, Any]:
    """The customer answered the open offer: acknowledge it, and on an acceptance run the rule's
    ``accept_tool`` (its exchange joins this turn's messages, after the customer's)."""
    offer = msgspec.convert(state["pending_offer"], CrossSell)
    templates = analyzer.templates
    variables: dict[str, Any] = {**state["pii_collected"], "product": offer.product}
    if state["cross_sell_response"] == "declined":
        return {"preface": render_first([templates.get("cross_sell.declined")], variables, default="")}
    rule = cross_sell_rule(config, offer)
    definition = None if rule is None or rule.accept_tool is None else config.tool(rule.accept_tool)
    if rule is not None and rule.accept_tool is not None and definition is None:
        log.warning("agent.accept_tool_undeclared", tool=rule.accept_tool, product=offer.product)
        text = render_first([templates.get("cross_sell.accept_failed")], variables, default="")
        return {"preface": text}
    if definition is None:
        return {"preface": render_first([templates.get("cross_sell.accepted")], variables, default="")}
    required = set(definition.parameters.get("required", []))
    arguments = {name: value for name, value in variables.items() if name in required}
    run = await tools.run(definition, arguments, tool_context(state))
    request = ToolCallRequest(id=f"call_accept_{uuid.uuid5(uuid.NAMESPACE_URL, offer.product).hex[:16]}",
                              name=definition.name, arguments=arguments)  # fmt: skip
    exchange = [
        ChatMessage("assistant", "", tool_calls=[request]),
        ChatMessage("tool", msgspec.json.encode(run.content).decode(), tool_call_id=request.id, name=request.name),
    ]
    start = state["start"] + 1
    messages = [*state["messages"][:start], *map(msgspec.to_builtins, exchange), *state["messages"][start:]]
    key = "cross_sell.accepted" if run.failure is None else "cross_sell.accept_failed"
    text = render_first([templates.get(key)], {**variables, **(run.call.output or {})}, default="")
    return {
        "preface": text,
        "messages": messages,
        "start": state["start"],
        "tool_history": [*state["tool_history"], msgspec.to_builtins(run.call)],
    }


def asks_for_more(analyzer: OfflineModel, specs: Sequence[Any], messages: Sequence[ChatMessage]) -> bool:
    """The customer's message, besides answering an offer, asks for something a tool does."""
    calls, ask = analyzer.plan(list(messages), specs)
    return bool(calls) or ask is not None


def _for_model(messages: list[ChatMessage], state: Mapping[str, Any]) -> list[ChatMessage]:
    """The messages the model sees: an accepted offer's tool exchange is the agent's own business."""
    start = state["start"] + 1
    return [message for index, message in enumerate(messages) if not (index >= start and _accept_call(message))]


def _accept_call(message: ChatMessage) -> bool:
    if any(call.id.startswith("call_accept_") for call in message.tool_calls):
        return True
    return message.role == "tool" and (message.tool_call_id or "").startswith("call_accept_")


def finish(config: AgentConfig, state: Mapping[str, Any], reply: str, messages: list[ChatMessage]) -> dict[str, Any]:
    """The turn's last update: the reply appended, and a cross-sell offer in it when one fits.

    One offer at a time, once a conversation: none while the customer is being handed off or is upset,
    while an offer is open, on the turn they answer one, after a tool failed, to a customer writing in another
    language (the offer is in English), or of a product offered before in this conversation.
    """
    reply = " ".join(part for part in (state.get("preface", ""), reply) if part)
    cross_sell = None
    quiet = (
        state["escalation"] is not None
        or state.get("sentiment", 0.0) < UPSET
        or state.get("pending_offer") is not None
        or any(call.get("error") is not None for call in state["tool_history"])
        or state.get("language", "en") != "en"
    )
    if not quiet:
        said = [message.content for message in messages if message.role == "user"]
        replies = [message.content for message in messages if message.role == "assistant"]
        offered = {offer.product for offer in offers_made(config, replies)}
        succeeded = [call["tool"] for call in state["tool_history"] if call.get("error") is None]
        found = evaluate_cross_sell(
            config, text=said[-1] if said else "", intent=state["intent"], intents=state["intents"],
            tools_succeeded=succeeded, exclude=offered,
        )  # fmt: skip
        if found is not None:
            cross_sell = msgspec.to_builtins(found)
            if found.suggestion not in reply:
                reply = f"{reply} {found.suggestion}".strip()
    final = ChatMessage("assistant", reply)
    return {
        "reply": reply,
        "pending": [],
        "cross_sell": cross_sell,
        "messages": [*state["messages"], msgspec.to_builtins(final)],
    }


def handoff_text(config: AgentConfig, escalation: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """The handoff message: the rule's, else the trigger's or the config's template, else ours; the first
    whose fields are all known."""
    templates = [
        escalation.get("message"),
        config.templates.get(f"escalation.{escalation['trigger']}"),
        config.templates.get("escalation"),
    ]
    return render_first(templates, {**state["pii_collected"], **escalation}, default=HANDOFF)


def consecutive_tool_failures(messages: Sequence[ChatMessage]) -> int:
    """Failed tool results since the last one that succeeded, across turns (the history holds them)."""
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


def well_formed(history: Sequence[ChatMessage]) -> list[ChatMessage]:
    """``history`` with every tool call answered and every tool result asked for: a history cut short
    (the last N messages) may start inside a tool exchange, which the providers' APIs refuse."""
    asked = {call.id for message in history for call in message.tool_calls}
    answered = {message.tool_call_id for message in history if message.role == "tool"}
    kept: list[ChatMessage] = []
    for message in history:
        if message.role == "tool" and message.tool_call_id not in asked:
            continue
        if message.tool_calls and any(call.id not in answered for call in message.tool_calls):
            if not message.content:
                continue
            message = msgspec.structs.replace(message, tool_calls=[])
        kept.append(message)
    if len(kept) == len(history):
        return list(history)
    asked = {call.id for message in kept for call in message.tool_calls}
    return [message for message in kept if message.role != "tool" or message.tool_call_id in asked]


def _masked(message: ChatMessage) -> ChatMessage:
    masked = mask_card_numbers(message.content)
    return message if masked == message.content else msgspec.structs.replace(message, content=masked)
