"""The agent runtime: JetStream consumers that answer customer messages and route escalations.

It follows the agent work stream (``streams.work``): every conversation and agent-pool commit,
in partitions by conversation. For each ``UserMessageReceived`` in a conversation that the AI
still owns (active, not escalated or closed), it rebuilds the conversation from its events, runs
the LangGraph agent with the config version the conversation is pinned to, and appends the reply,
and an escalation when the rules call for one, through the command runner.

Every effect is an idempotent command whose id derives from the customer's message
(``reply-<message id>``, ``escalate-<message id>``), so a redelivered message, a restart, or a
partition changing hands produce one reply. A partition's batches are handled one after the
other, a conversation's messages one at a time, in order; different conversations are answered
concurrently. Several runtime processes share the partitions (``agents.partitions``): all of a
conversation's commits are in one partition, so one process answers it at a time and its turns
stay in order.

With ``TurnCheckpoints``, LangGraph checkpoints every step of a turn in PostgreSQL, so a turn
interrupted mid-graph resumes where it was when its message comes again; the checkpoint is used
only for that same turn, and dropped once the reply is recorded (``agents.checkpoints``).

While a call linked to the conversation is in progress (``Conversation.on_call``, chat and voice in
one log) the chatbot answers nothing: the customer's message is shared with the call instead
(``ShareChatData``: the seed's ``chatbot_data_shared`` cross-product event, ``share-<message id>``),
and the voice agent takes it on its next turn. A call that ended before the message reached it
leaves the message to the chatbot.

It also routes escalations to the tenant's human agents: an ``EscalationRequested`` becomes a
``RouteEscalation`` on the agent pool; the pool's ``EscalationRouted`` becomes the conversation's
``AssignEscalation``, its ``EscalationQueued`` the conversation's ``MarkAgentUnavailable`` (the
seed's fallback options); a resolved escalation frees its agent for the next one in the queue.
The pool is one aggregate per tenant that commands from every partition touch: they go through
it one at a time per process, and the runner retries a conflict with another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from agents.checkpoints import TurnCheckpoints, thread_id
from agents.config import ConfigProvider
from agents.graph import chain_for, run_turn
from agents.llm.chain import FallbackChain
from agents.llm.factory import ProviderKeys
from agents.llm.port import ChatMessage, ToolCallRequest
from agents.partitions import PartitionClaims
from agents.rules import CrossSell
from agents.tools import ToolRegistry
from commands.conversation import CONVERSATION, reply_command_id
from commands.escalation import Escalations
from commands.runner import CommandContext, CommandRunner
from domain import call as v
from domain import conversation as c
from domain import escalation as p
from domain.bot import AgentConfig
from domain.errors import IllegalStateError, NotFoundError, ValidationError
from domain.escalation import DECIDER as AGENT_POOL
from domain.pii import find_emails, find_phones
from infra.restart import keep_running
from streams.errors import EventDecodeError
from streams.feed import Feed
from streams.jetstream import RawMessage
from streams.store import EventStore, RecordedEvent
from streams.subjects import StreamId
from streams.work import DEFAULT_PARTITIONS, WorkStream

log = structlog.get_logger(__name__)

ACTOR = "agent:ai"
MAX_HISTORY = 40  # chat turns given to the model; older ones stay in the events


def reply_id(message_id: str) -> str:
    return f"{message_id}-reply"


class AgentRuntime:
    def __init__(
        self,
        store: EventStore,
        runner: CommandRunner,
        tools: ToolRegistry,
        configs: ConfigProvider,
        env: ProviderKeys | Mapping[str, str],
        *,
        checkpoints: TurnCheckpoints | None = None,
        durable: str = "agent_runtime",
        partitions: int = DEFAULT_PARTITIONS,
        batch: int = 200,
        idle_wait: float = 1.0,
        concurrency: int = 32,
        rebalance_every: float = 1.0,
    ) -> None:
        self.store = store
        self.runner = runner
        # The pool is one aggregate per tenant that many escalations touch at once: retry longer.
        self.pool_runner = runner.with_attempts(20)
        self.escalations = Escalations(runner, store, pool_runner=self.pool_runner)
        self.tools = tools
        self.configs = configs
        self.env = env
        self.checkpoints = checkpoints
        self.durable, self.partitions, self.batch, self.idle_wait = durable, partitions, batch, idle_wait
        self.rebalance_every = rebalance_every
        self.work: WorkStream | None = None
        self.answered = 0  # customer messages this runtime answered
        self._feeds: dict[int, Feed] = {}
        self._workers: dict[int, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self._pool_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._chains: dict[int, FallbackChain] = {}
        self._conversations: OrderedDict[str, _Known] = OrderedDict()
        self.cache_size = 10_000
        self._stop = asyncio.Event()

    @property
    def working_on(self) -> set[int]:
        """The partitions this runtime is answering now."""
        return set(self._workers)

    async def start(self) -> WorkStream:
        """Ensure the work stream, and open the checkpoint tables.

        Call it before the API takes requests: from then on every commit waits in the work stream
        until a runtime answers it (a later start would miss the first messages). The first time,
        the work stream starts at the end of the event stream: a new runtime answers new messages;
        it does not reply to history.
        """
        if self.work is None:
            if self.checkpoints is not None:
                await self.checkpoints.open()
            self.work = await self.store.work_stream(partitions=self.partitions)
        return self.work

    async def run(self, database_url: str | None = None) -> None:
        """Answer messages until ``stop()``.

        With a PostgreSQL ``database_url``, share the partitions with the other runtime processes on
        the same work stream (``agents.partitions``); without, work on every partition.
        """
        work = await self.start()
        try:
            if database_url is None:
                for partition in range(work.partitions):
                    self._take(partition)
                await self._stop.wait()
            else:
                claims = PartitionClaims(
                    database_url,
                    stream=work.name,
                    partitions=work.partitions,
                    take=self._take,
                    release=self._release,
                    every=self.rebalance_every,
                )
                await claims.run(self._stop)
        finally:
            await asyncio.gather(*(self._release(p) for p in list(self._workers)))

    async def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        """Stop, and let go of the consumers and the checkpoint connections."""
        await self.stop()
        await asyncio.gather(*(self._release(p) for p in list(self._workers)))
        for feed in self._feeds.values():
            with contextlib.suppress(Exception):
                await feed.close()
        self._feeds.clear()
        if self.checkpoints is not None:
            await self.checkpoints.close()

    def _take(self, partition: int) -> None:
        """Start answering a partition, from its first message not acknowledged."""
        leaving = asyncio.Event()
        task = asyncio.create_task(self._work_on(partition, leaving), name=f"agent-partition-{partition}")
        self._workers[partition] = (leaving, task)

    async def _release(self, partition: int) -> None:
        """Stop answering a partition: no new fetch; the batch in hand is answered and acknowledged."""
        worker = self._workers.pop(partition, None)
        if worker is not None:
            leaving, task = worker
            leaving.set()
            await asyncio.gather(task, return_exceptions=True)

    async def _work_on(self, partition: int, leaving: asyncio.Event) -> None:
        feed = self._feed(partition)
        restart = True

        async def step() -> None:
            nonlocal restart
            if restart:
                # What was fetched but not acknowledged (by a holder that died mid-batch, or by a
                # batch of ours that failed) comes again first, in order; the consumer would
                # redeliver it only after the ack wait, behind later messages.
                await feed.restart()
                restart = False
            await self._step(feed)

        async def after_failure() -> None:
            nonlocal restart
            restart = True

        try:
            await keep_running(
                step, leaving, restart=after_failure, log=log.bind(partition=partition), what="agent runtime"
            )
        finally:
            self._feeds.pop(partition, None)
            with contextlib.suppress(Exception):
                await feed.close()

    def _feed(self, partition: int) -> Feed:
        assert self.work is not None
        if partition not in self._feeds:
            self._feeds[partition] = self.store.work_feed(
                self.work, self.durable, partition, batch=self.batch, idle_wait=self.idle_wait
            )
        return self._feeds[partition]

    async def step(self) -> int:
        """One batch from every partition; returns how many customer messages it answered (tests,
        and a runtime driven by hand rather than by ``run``)."""
        work = await self.start()
        return sum(await asyncio.gather(*(self._step(self._feed(p)) for p in range(work.partitions))))

    async def _step(self, feed: Feed) -> int:
        """Answer one batch of a partition's commits, then acknowledge it."""
        batch = await feed.fetch()
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
                        | c.EscalationFallbackChosen()
                        | c.ConversationClosed()
                        | c.ConversationErased()
                        | p.EscalationRouted()
                        | p.EscalationQueued()
                    ):
                        routing.append(recorded)
        answered = await asyncio.gather(*(self._answer_in_order(msgs) for msgs in by_conversation.values()))
        for recorded in routing:  # in stream order
            await self.route(recorded)
        await batch.ack()
        return sum(answered)

    async def route(self, recorded: RecordedEvent) -> None:
        """Escalations between conversations and the human agent pool, and the customer's choices."""
        tenant, event, now = recorded.stream.tenant, recorded.event, datetime.now(UTC)
        correlation = recorded.meta.correlation_id
        match event:
            case c.EscalationRequested():
                async with self._pool_locks[tenant]:  # partitions of this process take turns on the pool
                    await self.escalations.route(
                        tenant, event.escalation_id, recorded.stream.aggregate_id, correlation_id=correlation, at=now
                    )
            case c.EscalationResolved():
                command: Any = p.ReleaseEscalation(escalation_id=event.escalation_id, at=now)
                await self._pool_command(tenant, command, f"release-{event.escalation_id}", recorded)
                if event.resolved_by.endswith(":continue_with_ai"):
                    await self._back_to_ai(recorded)
            case c.EscalationFallbackChosen():
                await self._acknowledge_fallback(recorded, event)
            case c.ConversationErased():  # its customer was erased: forget the turns remembered of it
                self._conversations.pop(recorded.stream.key, None)
                if self.checkpoints is not None:
                    await self.checkpoints.forget(thread_id(recorded.stream))
            case c.ConversationClosed():
                cid = recorded.stream.aggregate_id
                command = p.ReleaseConversation(conversation_id=cid, at=now)
                await self._pool_command(tenant, command, f"closed-{cid}", recorded)
            case p.EscalationRouted():
                pool = (await self.pool_runner.repository(AGENT_POOL).load(tenant, p.POOL_ID)).state
                agent = pool.agents.get(event.agent_id)
                await self.escalations.assign(
                    tenant,
                    event.conversation_id,
                    event.escalation_id,
                    event.agent_id,
                    agent.name if agent else "",
                    correlation,
                    now,
                )
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

    async def _acknowledge_fallback(self, recorded: RecordedEvent, chosen: c.EscalationFallbackChosen) -> None:
        """Tell the customer what their choice does (continuing with the AI is answered by the AI)."""
        match chosen.option:
            case "schedule_callback":
                text = (
                    f"You're booked for a callback: one of our agents will call you at {chosen.phone} as soon as "
                    "one is free. You can keep writing here meanwhile."
                )
            case "email_support":
                text = (
                    f"Our support team will answer you by email at {chosen.email} within 2 hours. "
                    "You can keep writing here meanwhile."
                )
            case _:
                return
        reply = c.RecordAgentReply(
            message_id=f"fallback-{chosen.escalation_id}-{chosen.option}",
            content=text,
            intent="escalation_fallback",
            at=datetime.now(UTC),
        )
        with contextlib.suppress(IllegalStateError, NotFoundError):
            await self._command(recorded.stream, reply, reply.message_id, recorded)

    async def _back_to_ai(self, recorded: RecordedEvent) -> None:
        """The customer chose to go on with the AI: answer what they asked while they waited, if anything."""
        stream = recorded.stream
        events = await self.store.read(stream)
        pending: RecordedEvent | None = None
        for earlier in events:
            match earlier.event:
                case c.UserMessageReceived(content=content) if content and not _choice_in(content):
                    pending = earlier
                case c.AgentReplied() | c.EscalationRequested():
                    pending = None
        if pending is not None:
            await self.answer(pending, now=True)
            return
        hello = c.RecordAgentReply(
            message_id=f"back-to-ai-{recorded.seq}",
            content="Of course, I'm here to help. What can I do for you?",
            intent="escalation_fallback",
            at=datetime.now(UTC),
        )
        with contextlib.suppress(IllegalStateError, NotFoundError):
            await self._command(stream, hello, hello.message_id, recorded)

    async def _pool_command(self, tenant: str, command: Any, command_id: str, cause: RecordedEvent) -> None:
        ctx = CommandContext(
            tenant=tenant,
            actor=ACTOR,
            command_id=command_id,
            correlation_id=cause.meta.correlation_id,
            retry_possible=True,
        )
        async with self._pool_locks[tenant]:  # partitions of this process take turns on the pool
            await self.pool_runner.handle(AGENT_POOL, p.POOL_ID, command, ctx)

    def _decode(self, raw: RawMessage) -> list[RecordedEvent]:
        assert self.work is not None
        try:
            return self.store.decode(self.work.to_commit(raw))
        except EventDecodeError as e:  # the projectors dead-letter it; the agent has nothing to say
            log.warning("undecodable commit skipped", seq=e.seq, subject=e.subject, error=e.reason)
            return []

    async def _answer_in_order(self, messages: list[RecordedEvent]) -> int:
        async with self._limit:
            count = 0
            for recorded in messages:
                count += await self.answer(recorded)
            return count

    async def answer(self, recorded: RecordedEvent, *, now: bool = False) -> int:
        """Answer a customer's message with the AI. ``now``: as the conversation stands now (the
        message came while it was escalated, and it is back with the AI), not as it stood then."""
        message = recorded.event
        assert isinstance(message, c.UserMessageReceived)
        stream = recorded.stream
        state, turns = await self._conversation(stream, upto=recorded.version)
        if now:
            state = await self._current(stream)
        if state.status == "escalated" and state.assigned_agent is None and not now:
            return await self._while_waiting(recorded, state)
        if state.status != "active":
            return 0  # a human has the conversation, or it is over
        if state.on_call is not None and await self._share_with_call(recorded, state.on_call):
            return 0  # the voice agent takes it: the chatbot stays silent during the call
        bound = log.bind(tenant=stream.tenant, conversation_id=stream.aggregate_id, seq=recorded.seq,
                         correlation_id=recorded.meta.correlation_id)  # fmt: skip
        config = await self.configs.get(stream.tenant, state.config_id, state.config_version)
        history = turns[-MAX_HISTORY:]
        while history and history[0].role != "user":  # never start inside a tool exchange
            history = history[1:]
        thread = thread_id(stream)
        result = await run_turn(
            config,
            history,
            message.content or "",
            chain=self._chain(config),
            tools=self.tools,
            checkpointer=None if self.checkpoints is None else self.checkpoints.saver,
            thread_id=thread,
            turn=f"{recorded.version}:{message.message_id}",
            conversation_id=stream.aggregate_id,
            user_id=state.user_id,
            config_id=state.config_id,
            config_version=state.config_version,
            tenant=stream.tenant,
            pending_offer=None
            if state.open_cross_sell is None
            else CrossSell(
                product=state.open_cross_sell.product,
                suggestion=state.open_cross_sell.suggestion,
                confidence=state.open_cross_sell.confidence,
            ),
            known_pii=state.pii_collected,
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
            cross_sell_response=result.cross_sell_response,
            at=now,
        )
        try:
            await self._command(stream, reply, reply_command_id(message.message_id), recorded)
        except IllegalStateError:  # closed while the answer was on its way: nobody is there to answer
            bound.info("conversation closed before the answer", message_id=message.message_id)
            if self.checkpoints is not None:
                await self.checkpoints.forget(thread)
            return 0
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
        if self.checkpoints is not None:
            await self.checkpoints.forget(thread)  # the events hold the turn now
        self.answered += 1
        bound.info("message answered", intent=result.intent, tools=[t.tool for t in result.tool_calls],
                   escalation=result.escalation.trigger if result.escalation else None)  # fmt: skip
        return 1

    async def _share_with_call(self, recorded: RecordedEvent, call_id: str) -> bool:
        """The customer's message given to the call in progress (False: that call has ended)."""
        message = recorded.event
        assert isinstance(message, c.UserMessageReceived)
        shared = {"text": message.content or ""}
        shared |= {f"attachment_{i}": name for i, name in enumerate(message.attachments, 1)}
        share = v.ShareChatData(
            conversation_id=recorded.stream.aggregate_id,
            message_id=message.message_id,
            data_type="document" if message.attachments else "chat_message",
            shared_data=shared,
            at=datetime.now(UTC),
        )
        ctx = CommandContext(
            tenant=recorded.stream.tenant,
            actor=ACTOR,
            command_id=f"share-{message.message_id}",
            correlation_id=recorded.meta.correlation_id,
            retry_possible=True,
        )
        try:
            await self.runner.handle(v.DECIDER, call_id, share, ctx)
        except (IllegalStateError, NotFoundError, ValidationError):
            return False
        log.info("message shared with the call", conversation_id=recorded.stream.aggregate_id, call_id=call_id)
        return True

    async def _while_waiting(self, recorded: RecordedEvent, state: c.Conversation) -> int:
        """A message while the customer waits for an agent: a choice of the options offered, or nothing
        (the API told them they are waiting; an agent will answer)."""
        message = recorded.event
        assert isinstance(message, c.UserMessageReceived)
        option = _choice_in(message.content or "")
        if option is None or state.open_escalation is None or state.fallback == option:
            return 0
        text = message.content or ""
        phones, emails = find_phones(text), find_emails(text)
        choose = c.ChooseEscalationFallback(
            escalation_id=state.open_escalation,
            option=option,  # type: ignore[arg-type]
            phone=phones[-1] if phones else None,
            email=emails[-1] if emails else None,
            at=datetime.now(UTC),
        )
        try:
            await self._command(recorded.stream, choose, f"choose-{message.message_id}", recorded)
        except ValidationError as e:  # the contact detail it needs: ask for it
            wanted = "phone number" if "phone" in e.fields else "email address"
            ask = c.RecordAgentReply(
                message_id=f"{message.message_id}-ask",
                content=f"Sure. What {wanted} should we use?",
                intent="escalation_fallback",
                at=datetime.now(UTC),
            )
            await self._command(recorded.stream, ask, f"ask-{message.message_id}", recorded)
        except (IllegalStateError, NotFoundError):
            return 0
        return 1

    async def _current(self, stream: StreamId) -> c.Conversation:
        state = c.initial()
        for recorded in await self.store.read(stream):
            state = c.evolve(state, recorded.event)
        return state

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
            known.turns += [(recorded.version, turn) for turn in _turns(recorded.event)]
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


def _turns(event: c.Event) -> list[ChatMessage]:
    """An event as chat turns: customer and assistant text, and the tool calls a reply made with
    their results (so the model sees what was looked up, and failures count across turns)."""
    match event:
        case c.UserMessageReceived(content=content) if content:
            return [ChatMessage("user", content)]
        case c.AgentReplied(content=content, tool_calls=calls, message_id=message_id):
            turns: list[ChatMessage] = []
            if calls:
                requests = [
                    ToolCallRequest(id=f"{message_id}-{i}", name=call.tool, arguments=dict(call.input))
                    for i, call in enumerate(calls)
                ]
                turns.append(ChatMessage("assistant", "", tool_calls=requests))
                for request, call in zip(requests, calls, strict=True):
                    result = {"error": call.error} if call.error is not None else call.output or {}
                    turns.append(
                        ChatMessage(
                            "tool", msgspec.json.encode(result).decode(), tool_call_id=request.id, name=call.tool
                        )
                    )
            if content:
                turns.append(ChatMessage("assistant", content))
            return turns
    return []


# What a waiting customer says to take one of the options offered (the seed's callback_options).
_CHOICES: dict[str, tuple[str, ...]] = {
    "continue_with_ai": (
        "continue with ai", "continue with the ai", "continue with you", "keep chatting", "continue chatting",
        "stay with the bot", "talk to the bot", "continue with the assistant", "continue working with",
        "i'll continue with", "ill continue with", "continue_with_ai", "option 3", "the third option",
    ),
    "schedule_callback": (
        "call me back", "callback", "call back", "schedule a call", "phone me", "schedule_callback",
        "option 1", "the first option",
    ),
    "email_support": ("email me", "by email", "via email", "email support", "send an email", "email_support",
                      "option 2", "the second option"),
}  # fmt: skip


def _choice_in(text: str) -> str | None:
    lowered = " ".join(text.lower().split())
    for option, phrases in _CHOICES.items():
        if any(phrase in lowered for phrase in phrases):
            return option
    return None
