"""The agent runtime: a durable JetStream consumer that answers customer messages and routes escalations.

It follows every conversation commit in order. For each ``UserMessageReceived`` in a conversation
that the AI still owns (active, not escalated or closed), it rebuilds the conversation from its
events, runs the LangGraph agent with the config version the conversation is pinned to, and
appends the reply, and an escalation when the rules call for one, through the command runner.

Every effect is an idempotent command whose id derives from the customer's message
(``reply-<message id>``, ``escalate-<message id>``), so a redelivered message, a restart, or two
runtimes racing produce one reply. A conversation's messages are answered one at a time, in
order; different conversations are answered concurrently.

It also routes escalations to the tenant's human agents: an ``EscalationRequested`` becomes a
``RouteEscalation`` on the agent pool; the pool's ``EscalationRouted`` becomes the conversation's
``AssignEscalation``, its ``EscalationQueued`` the conversation's ``MarkAgentUnavailable`` (the
seed's fallback options); a resolved escalation frees its agent for the next one in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from agents.config import AgentConfig, load_config
from agents.graph import chain_for, run_turn
from agents.tools import ToolRegistry
from commands.agent_pool import AGENT_POOL
from commands.conversation import CONVERSATION
from commands.runner import CommandContext, CommandRunner
from domain import agent_pool as p
from domain import conversation as c
from domain.errors import IllegalStateError, NotFoundError
from gateways.llm.chain import FallbackChain
from gateways.llm.port import ChatMessage
from projections.checkpoints import try_lock, unlock
from streams.errors import EventDecodeError
from streams.feed import Feed
from streams.jetstream import RawMessage
from streams.store import EventStore, RecordedEvent
from streams.subjects import ALL_EVENTS, StreamId

log = structlog.get_logger(__name__)

CONFIGS = Path(__file__).resolve().parent / "configs"
ACTOR = "agent:ai"
MAX_HISTORY = 40  # chat turns given to the model; older ones stay in the events


def reply_id(message_id: str) -> str:
    return f"{message_id}-reply"


class ConfigSource:
    """Agent configs by id. Until configs are event-sourced: the demo YAML files, by file stem
    (``support-bot`` is ``support_bot.yaml``); an unknown id gets the support bot."""

    def __init__(self, directory: Path = CONFIGS, default: str = "support-bot") -> None:
        self._configs = {p.stem.replace("_", "-"): load_config(p.read_text()) for p in sorted(directory.glob("*.yaml"))}
        self._default = default

    def get(self, config_id: str, version: int) -> AgentConfig:
        return self._configs.get(config_id) or self._configs[self._default]


class AgentRuntime:
    def __init__(
        self,
        store: EventStore,
        runner: CommandRunner,
        tools: ToolRegistry,
        configs: ConfigSource,
        env: Mapping[str, str],
        *,
        durable: str = "agent_runtime",
        batch: int = 200,
        idle_wait: float = 0.2,
        concurrency: int = 32,
    ) -> None:
        self.store = store
        self.runner = runner
        # The pool is one aggregate per tenant that many escalations touch at once: retry longer.
        self.pool_runner = CommandRunner.for_aggregates(store, [AGENT_POOL], max_attempts=20)
        self.tools = tools
        self.configs = configs
        self.env = env
        self.durable, self.batch, self.idle_wait = durable, batch, idle_wait
        self.feed: Feed | None = None
        self._limit = asyncio.Semaphore(concurrency)
        self._chains: dict[int, FallbackChain] = {}
        self._conversations: OrderedDict[str, _Known] = OrderedDict()
        self.cache_size = 10_000
        self._stop = asyncio.Event()
        self.leading = False

    async def run(self, leader: AsyncConnectionPool[Any] | None = None) -> None:
        """Answer messages until ``stop()``; start again after a failure.

        With ``leader`` (a PostgreSQL pool), only one runtime among the processes sharing the
        durable consumer works at a time: the others stand by on a session advisory lock and take
        over when its holder's session ends. One conversation is then never answered twice at once.
        """
        conn = None
        try:
            if leader is not None:
                conn = await leader.getconn()
                await conn.set_autocommit(True)
                while not await try_lock(conn, "leader", self.durable):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), 1.0)
                    if self._stop.is_set():
                        return
            self.leading = True
            await self._work()
        finally:
            self.leading = False
            if self.feed is not None:
                with contextlib.suppress(Exception):
                    await self.feed.close()
            if conn is not None and leader is not None:
                with contextlib.suppress(Exception):
                    await unlock(conn, "leader", self.durable)
                await leader.putconn(conn)

    async def _work(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self.step()
                delay = 0.5
            except Exception:
                log.exception("agent runtime failed; starting again", retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 10.0)

    async def stop(self) -> None:
        self._stop.set()

    async def start(self) -> Feed:
        """The runtime's durable consumer: where it left off, or, the first time, the end of the stream
        (a new runtime answers new messages; it does not reply to history)."""
        if self.feed is None:
            self.feed = await Feed.from_where_it_left(
                self.store.log,
                self.durable,
                subject=ALL_EVENTS,
                batch=self.batch,
                idle_wait=self.idle_wait,
            )
        return self.feed

    async def step(self) -> int:
        """Answer one batch of commits; returns how many customer messages it answered."""
        batch = await (await self.start()).fetch()
        if not batch.messages:
            return 0
        by_conversation: dict[str, list[RecordedEvent]] = defaultdict(list)
        routing: list[RecordedEvent] = []
        for raw in batch.messages:
            for recorded in self._decode(raw):
                match recorded.event:
                    case c.UserMessageReceived():
                        by_conversation[recorded.stream.key].append(recorded)
                    case (
                        c.EscalationRequested()
                        | c.EscalationResolved()
                        | c.ConversationClosed()
                        | p.EscalationRouted()
                        | p.EscalationQueued()
                    ):
                        routing.append(recorded)
        answered = await asyncio.gather(*(self._answer_in_order(msgs) for msgs in by_conversation.values()))
        for recorded in routing:  # in stream order: the pool is one aggregate per tenant
            await self.route(recorded)
        await batch.ack()
        return sum(answered)

    async def route(self, recorded: RecordedEvent) -> None:
        """Escalations between conversations and the human agent pool."""
        tenant, event, now = recorded.stream.tenant, recorded.event, datetime.now(UTC)
        match event:
            case c.EscalationRequested():
                command: Any = p.RouteEscalation(
                    escalation_id=event.escalation_id, conversation_id=recorded.stream.aggregate_id, at=now
                )
                await self._pool_command(tenant, command, f"route-{event.escalation_id}", recorded)
            case c.EscalationResolved():
                command = p.ReleaseEscalation(escalation_id=event.escalation_id, at=now)
                await self._pool_command(tenant, command, f"release-{event.escalation_id}", recorded)
            case c.ConversationClosed():
                cid = recorded.stream.aggregate_id
                command = p.ReleaseConversation(conversation_id=cid, at=now)
                await self._pool_command(tenant, command, f"closed-{cid}", recorded)
            case p.EscalationRouted():
                pool = (await self.pool_runner.repository(AGENT_POOL).load(tenant, p.POOL_ID)).state
                agent = pool.agents.get(event.agent_id)
                assign = c.AssignEscalation(
                    escalation_id=event.escalation_id,
                    agent_id=event.agent_id,
                    agent_name=agent.name if agent else "",
                    at=now,
                )
                stream = StreamId(tenant, c.AGGREGATE_TYPE, event.conversation_id)
                with contextlib.suppress(IllegalStateError, NotFoundError):  # resolved or closed meanwhile
                    await self._command(stream, assign, f"assign-{event.escalation_id}-{event.agent_id}", recorded)
            case p.EscalationQueued():
                unavailable = c.MarkAgentUnavailable(
                    escalation_id=event.escalation_id,
                    fallback_action="queue_callback",
                    queue_position=event.position,
                    at=now,
                )
                stream = StreamId(tenant, c.AGGREGATE_TYPE, event.conversation_id)
                with contextlib.suppress(IllegalStateError, NotFoundError):
                    await self._command(stream, unavailable, f"unavailable-{event.escalation_id}", recorded)

    async def _pool_command(self, tenant: str, command: Any, command_id: str, cause: RecordedEvent) -> None:
        ctx = CommandContext(
            tenant=tenant,
            actor=ACTOR,
            command_id=command_id,
            correlation_id=cause.meta.correlation_id,
            retry_possible=True,
        )
        await self.pool_runner.handle(AGENT_POOL, p.POOL_ID, command, ctx)

    def _decode(self, raw: RawMessage) -> list[RecordedEvent]:
        try:
            return self.store.decode(raw)
        except EventDecodeError as e:  # the projectors dead-letter it; the agent has nothing to say
            log.warning("undecodable commit skipped", seq=e.seq, subject=e.subject, error=e.reason)
            return []

    async def _answer_in_order(self, messages: list[RecordedEvent]) -> int:
        async with self._limit:
            count = 0
            for recorded in messages:
                count += await self.answer(recorded)
            return count

    async def answer(self, recorded: RecordedEvent) -> int:
        message = recorded.event
        assert isinstance(message, c.UserMessageReceived)
        stream = recorded.stream
        state, turns = await self._conversation(stream, upto=recorded.version)
        if state.status != "active":
            return 0  # a human has the conversation, or it is over
        bound = log.bind(tenant=stream.tenant, conversation_id=stream.aggregate_id, seq=recorded.seq,
                         correlation_id=recorded.meta.correlation_id)  # fmt: skip
        config = self.configs.get(state.config_id, state.config_version)
        history = turns[-MAX_HISTORY:]
        result = await run_turn(
            config,
            history,
            message.content or "",
            chain=self._chain(config),
            tools=self.tools,
            conversation_id=stream.aggregate_id,
            user_id=state.user_id,
            config_id=state.config_id,
            config_version=state.config_version,
        )
        now = datetime.now(UTC)
        reply = c.RecordAgentReply(
            message_id=reply_id(message.message_id),
            content=result.reply,
            intent=result.intent,
            confidence=result.confidence,
            tool_calls=result.tool_calls,
            escalation_suggested=result.escalation is not None,
            sentiment=result.sentiment,
            provider=result.provider or None,
            fallbacks=[
                c.ProviderFallback(
                    from_provider=f.from_provider, to_provider=f.to_provider, reason=f.reason, error=f.error
                )
                for f in result.fallbacks
            ],
            cross_sell=None
            if result.cross_sell is None
            else c.CrossSellOffer(
                product=result.cross_sell.product,
                suggestion=result.cross_sell.suggestion,
                confidence=result.cross_sell.confidence,
            ),
            at=now,
        )
        await self._command(stream, reply, f"reply-{message.message_id}", recorded)
        if result.escalation is not None and result.escalation.action == "human_handoff":
            escalate = c.RequestEscalation(
                escalation_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"parley:{stream.key}:{message.message_id}")),
                trigger=result.escalation.trigger,
                reason=result.escalation.reason,
                urgency=result.escalation.urgency,  # type: ignore[arg-type]
                requested_by=ACTOR,
                at=now,
            )
            with contextlib.suppress(IllegalStateError):  # one is already open: nothing to add
                await self._command(stream, escalate, f"escalate-{message.message_id}", recorded)
        bound.info("message answered", intent=result.intent, tools=[t.tool for t in result.tool_calls],
                   escalation=result.escalation.trigger if result.escalation else None)  # fmt: skip
        return 1

    async def _conversation(self, stream: StreamId, *, upto: int) -> tuple[c.Conversation, list[ChatMessage]]:
        """The conversation's state and chat turns before version ``upto``.

        Kept in memory per conversation and extended with the commits after the last one seen, so a
        long conversation costs one short read per turn, not a read of its whole history.
        """
        known = self._conversations.get(stream.key)
        if known is None or known.version > upto:
            known = _Known()
        for recorded in await self.store.read(stream, after_seq=known.seq):
            if recorded.version > upto:
                break
            known.state = c.evolve(known.state, recorded.event)
            known.version, known.seq = recorded.version, recorded.seq
            if (turn := _turn(recorded.event)) is not None:
                known.turns.append((recorded.version, turn))
        self._conversations[stream.key] = known
        self._conversations.move_to_end(stream.key)
        if len(self._conversations) > self.cache_size:
            self._conversations.popitem(last=False)
        return known.state, [turn for version, turn in known.turns if version < upto]

    async def _command(self, stream: StreamId, command: c.Command, command_id: str, cause: RecordedEvent) -> None:
        ctx = CommandContext(
            tenant=stream.tenant,
            actor=ACTOR,
            command_id=command_id,
            correlation_id=cause.meta.correlation_id,
            retry_possible=True,
        )
        await self.runner.handle(CONVERSATION, stream.aggregate_id, command, ctx)

    def _chain(self, config: AgentConfig) -> FallbackChain:
        key = id(config)
        if key not in self._chains:
            self._chains[key] = chain_for(config, self.env)
        return self._chains[key]


class _Known:
    """What the runtime remembers of a conversation: its state and turns up to a version."""

    def __init__(self) -> None:
        self.state = c.initial()
        self.turns: list[tuple[int, ChatMessage]] = []  # (version, turn)
        self.version = 0
        self.seq = 0


def _turn(event: c.Event) -> ChatMessage | None:
    """An event as a chat turn: customer and assistant text (tool results live in the replies)."""
    match event:
        case c.UserMessageReceived(content=content) if content:
            return ChatMessage("user", content)
        case c.AgentReplied(content=content) if content:
            return ChatMessage("assistant", content)
    return None
