"""Folding an aggregate's events into its facts row: a conversation's (``conversation_facts``), a
call's (``call_facts``).

A row is a pure function of the aggregate's events up to its ``version``, and ``apply`` folds an
event only when its version is above the row's: replaying an event the row already accounts for
changes nothing, so a batch projected twice writes the same rows twice (``ReplacingMergeTree``
keeps one). Rows per event are not per fold: ``apply`` makes an escalation row for every
``EscalationRequested`` it is given, a turn row for every utterance of a call, and the runner gives
it each event once.

What the KPIs read from a row:

* **resolution**: ``open`` until the conversation closes; then ``unresolved`` when the close
  reason says the customer's issue was not settled (``UNRESOLVED_REASONS``), else ``resolved``,
  by a human when an agent closed it or it closed while escalated, else by the AI;
* **escalated**: any escalation was requested; the first one's trigger and reason are kept;
* **turns**: customer messages; **sentiment**: the AI's reading of each turn (sum and count, so
  averages over many conversations stay exact);
* **NPS**: the score and category (``SurveyAnswered.nps_category``) of the last answered survey's
  ``nps_scale`` question; **CSAT**: the answer,
  1 to 5, to a question whose id says ``csat`` or whose options are exactly 1 to 5.

What the voice analytics read from a call's row: its direction; ``completed`` (connected, and
ended neither abandoned nor failed); its duration and cost as the end recorded them (the cost at
the tenant's unit prices); whether a transfer to a human connected, and the first transfer's
trigger as the call's escalation reason; the transcripts' confidence.

Closed conversations and ended calls leave the in-memory cache once written (nothing may follow
an end); the others stay, bounded by an LRU. An aggregate missing from the cache is read back from
ClickHouse by the projection before its events are folded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from domain import call as v
from domain import conversation as c
from domain.messages import Event
from read_models.analytics_schema import CallFacts, CallTurnRow, ConversationFacts, EscalationRow, EventRow

Decoded = tuple[EventRow, Event]  # an event and its row, as the store's redacted decoder gives them

UNRESOLVED_REASONS = frozenset({"abandoned", "timeout", "expired", "unresolved", "customer_left", "no_response"})
CSAT_OPTIONS = ["1", "2", "3", "4", "5"]

Key = tuple[str, str]  # (tenant, aggregate id)
F = TypeVar("F", ConversationFacts, CallFacts)


class _Fold(Generic[F]):
    """Facts rows by aggregate: an LRU cache of them, the rows changed since last taken."""

    id_field: str  # the row's field naming its aggregate

    def __init__(self, cache_size: int = 100_000) -> None:
        self.cache_size = cache_size
        self._facts: OrderedDict[Key, F] = OrderedDict()
        self._touched: dict[Key, F] = {}

    @property
    def cached(self) -> Mapping[Key, F]:
        """The facts in memory, by aggregate (read only)."""
        return self._facts

    def __len__(self) -> int:
        return len(self._facts)

    def load(self, rows: Iterable[F]) -> None:
        """Facts read back from ClickHouse, for aggregates the cache had lost."""
        for row in rows:
            self._facts[(row.tenant, getattr(row, self.id_field))] = row

    def unknown(self, deferred: Iterable[Decoded]) -> list[Key]:
        """The aggregates of deferred events, to read back."""
        return list(dict.fromkeys((row.tenant, row.aggregate_id) for row, _ in deferred))

    def take_touched(self) -> list[F]:
        """The rows changed since the last call; those of ended aggregates leave the cache."""
        touched = list(self._touched.values())
        self._touched.clear()
        for facts in touched:
            if facts.status in ("closed", "ended", "refused"):
                self._facts.pop((facts.tenant, getattr(facts, self.id_field)), None)
        while len(self._facts) > self.cache_size:
            self._facts.popitem(last=False)
        return touched


class FactsFold(_Fold[ConversationFacts]):
    """Conversations into their facts."""

    id_field = "conversation_id"

    def apply(
        self, decoded: Iterable[Decoded], *, defer_unknown: bool = True
    ) -> tuple[list[EscalationRow], list[Decoded]]:
        """Fold conversation events, in stream order; returns the escalation rows they make, and
        the events deferred.

        An event of a conversation the cache does not hold, other than its start, is deferred
        with every later event of that conversation here (``defer_unknown``): its facts may be in
        ClickHouse, for the caller to ``load`` before applying the deferred events with
        ``defer_unknown=False``, which starts a row from the event when there was none (its start
        was a dead letter, or the history begins later).

        An escalation row comes whether or not the facts already account for its event: it is a
        row of its own, written once per event by the runner (the facts row may be ahead of it,
        written by a batch whose escalation rows were deleted as uncheckpointed).

        The hot loop of a replay: written for speed (names bound once, the commonest event
        folded inline, the next commonest, a reply, folded without ``_evolve``'s match), with the
        same meaning as ``_evolve`` for every event.
        """
        cache, touched = self._facts, self._touched
        get, to_end = cache.get, cache.move_to_end
        started, message, reply, escalation = (
            c.ConversationStarted,
            c.UserMessageReceived,
            c.AgentReplied,
            c.EscalationRequested,
        )
        escalations: list[EscalationRow] = []
        deferred: list[Decoded] = []
        unknown: set[Key] = set()
        for d in decoded:
            row, event = d
            key = (row.tenant, row.aggregate_id)
            at = row.time
            facts = get(key)
            if facts is None:
                if defer_unknown and (type(event) is not started or key in unknown):
                    unknown.add(key)
                    deferred.append(d)
                    continue
                facts = cache[key] = ConversationFacts(row.tenant, row.aggregate_id, started_at=at, last_event_at=at)
            else:
                to_end(key)
            kind = type(event)
            if row.version > facts.version:
                facts.version = row.version
                facts.seq = row.seq
                if at > facts.last_event_at:
                    facts.last_event_at = at
                touched[key] = facts
                if kind is message:
                    facts.turns += 1
                elif kind is reply:
                    _replied(facts, event)  # type: ignore[arg-type]  # an AgentReplied, by its type
                else:
                    _evolve(facts, event, at)
            if kind is escalation and isinstance(event, escalation):  # (the second test for the type checker)
                escalations.append(
                    EscalationRow(
                        row.tenant,
                        row.aggregate_id,
                        event.escalation_id,
                        row.seq,
                        row.version,
                        at,
                        event.trigger,
                        event.reason or "",
                        event.urgency,
                        facts.config_id,
                        facts.config_version,
                        facts.channel,
                        facts.product_type,
                    )
                )
        return escalations, deferred


def _evolve(f: ConversationFacts, event: Event, at: int) -> None:
    match event:  # the commonest first
        case c.UserMessageReceived():
            f.turns += 1
        case c.AgentReplied():
            _replied(f, event)
        case c.ConversationStarted():
            f.started_at = at
            f.config_id = event.config_id
            f.config_version = event.config_version
            f.channel = event.channel
            f.product_type = event.product_type
            f.status = "active"
        case c.EscalationRequested():
            if not f.escalated:
                f.escalation_trigger = event.trigger
                f.escalation_reason = event.reason or ""
            f.escalated = True
            f.escalations += 1
            f.status = "escalated"
        case c.EscalationAssigned():
            f.agent_assigned = True
        case c.EscalationAgentUnavailable():
            f.agent_unavailable = True
        case c.EscalationResolved():
            if event.resolution == "returned_to_ai" and f.status == "escalated":
                f.status = "active"
        case c.SurveySent():
            f.surveys_sent += 1
            csat = [q.question_id for q in event.questions if is_csat_question(q)]
            if csat:
                f.csat_questions = [*f.csat_questions, *csat]
        case c.SurveyAnswered():
            f.surveys_answered += 1
            if event.nps_score is not None:
                f.nps_score = event.nps_score
                f.nps_category = event.nps_category or c.nps_category(event.nps_score) or ""  # older events: the rule
            for answer in event.responses:
                if answer.question_id in f.csat_questions and (score := csat_score(answer.answer)) is not None:
                    f.csat_score = score
        case c.ConversationClosed():
            by_human = event.reason == "resolved_by_agent" or f.status == "escalated"
            f.status = "closed"
            f.closed_at = at
            f.close_reason = event.reason
            if event.reason in UNRESOLVED_REASONS:
                f.resolution, f.resolved_by = "unresolved", ""
            else:
                f.resolution, f.resolved_by = "resolved", "human" if by_human else "ai"


def _replied(f: ConversationFacts, event: c.AgentReplied) -> None:
    if event.author == "ai":
        f.agent_replies += 1
    else:
        f.human_replies += 1
    if (sentiment := event.sentiment) is not None:
        f.sentiment_sum += sentiment
        f.sentiment_count += 1
        f.sentiment_last = sentiment
        if f.sentiment_min is None or sentiment < f.sentiment_min:
            f.sentiment_min = sentiment
    if event.tool_calls:
        for call in event.tool_calls:
            f.tool_calls += 1
            if call.error is not None:
                f.tool_errors += 1
            if call.tool not in f.tools:
                f.tools = sorted([*f.tools, call.tool])
    if event.fallbacks:
        f.llm_fallbacks += len(event.fallbacks)
    if event.cross_sell is not None:
        f.cross_sell_offers += 1


def is_csat_question(question: c.SurveyQuestion) -> bool:
    return "csat" in question.question_id.lower() or (
        question.type == "single_choice" and question.options == CSAT_OPTIONS
    )


def csat_score(answer: str | int) -> int | None:
    try:
        score = int(answer)
    except ValueError:
        return None
    return score if 1 <= score <= 5 else None


class CallFold(_Fold[CallFacts]):
    """Phone calls into their facts, and their utterances into turn rows with their latencies."""

    id_field = "call_id"

    def apply(
        self, decoded: Iterable[Decoded], *, defer_unknown: bool = True
    ) -> tuple[list[CallTurnRow], list[Decoded]]:
        """Fold call events, in stream order (as ``FactsFold.apply``); returns the turn rows they
        make, and the events deferred."""
        cache, touched = self._facts, self._touched
        turns: list[CallTurnRow] = []
        deferred: list[Decoded] = []
        unknown: set[Key] = set()
        for d in decoded:
            row, event = d
            key = (row.tenant, row.aggregate_id)
            at = row.time
            facts = cache.get(key)
            if facts is None:
                starts = type(event) is v.CallInitiated or type(event) is v.CallAttemptRefused
                if defer_unknown and (not starts or key in unknown):
                    unknown.add(key)
                    deferred.append(d)
                    continue
                facts = cache[key] = CallFacts(row.tenant, row.aggregate_id, started_at=at, last_event_at=at)
            else:
                cache.move_to_end(key)
            if row.version > facts.version:
                facts.version, facts.seq = row.version, row.seq
                facts.last_event_at = max(facts.last_event_at, at)
                touched[key] = facts
                _evolve_call(facts, event, at)
            match event:
                case v.CallerSpoke():
                    turn = CallTurnRow(
                        row.tenant, row.aggregate_id, row.seq, row.version, at, "caller",
                        event.transcription_delay_ms, event.end_of_turn_delay_ms, None, None, None, False,
                    )  # fmt: skip
                    turns.append(turn)
                case v.AgentSpoke():
                    turn = CallTurnRow(
                        row.tenant, row.aggregate_id, row.seq, row.version, at, "agent",
                        None, None, event.llm_ttft_ms, event.tts_ttfb_ms, event.e2e_latency_ms, event.interrupted,
                    )  # fmt: skip
                    turns.append(turn)
        return turns, deferred


def _evolve_call(f: CallFacts, event: Event, at: int) -> None:
    match event:
        case v.CallerSpoke():
            f.caller_turns += 1
            if event.confidence is not None:
                f.stt_confidence_sum += event.confidence
                f.stt_confidence_count += 1
            f.stt_seconds += event.audio_seconds
        case v.AgentSpoke():
            f.agent_turns += 1
            f.barge_ins += event.interrupted
            f.tts_characters += event.characters
            f.llm_requests += 1
        case v.CallInitiated():
            f.started_at = at
            f.config_id, f.config_version = event.config_id, event.config_version
            f.direction, f.transport, f.product_type = event.direction, event.transport, event.product_type
            f.status = "initiating"
        case v.CallAttemptRefused():
            f.started_at, f.direction, f.status = at, "outbound", "refused"
        case v.CallRinging():
            if f.status == "initiating":
                f.status = "ringing"
        case v.CallConnected():
            f.connected_at, f.status = at, "in_progress"
        case v.ToolCallFinished():
            f.tool_calls += 1
            f.tool_errors += event.error is not None
        case v.SentimentUpdated():
            f.sentiment_sum += event.score
            f.sentiment_count += 1
        case v.TransferRequested():
            if not f.transfers:
                f.escalation_reason = event.trigger or event.reason
            f.transfers += 1
            f.status = "transferring"
        case v.TransferConnected():
            f.transferred, f.status = True, "transferred"
        case v.TransferFailed():
            f.transfer_failures += 1
            f.status = "in_progress" if f.connected_at is not None else "initiating"
        case v.SpeechProviderInterrupted():
            f.speech_interruptions += 1
        case v.CallEnded():
            f.status, f.ended_at = "ended", at
            f.end_reason, f.resolution = event.reason, event.resolution_status
            f.completed = f.connected_at is not None and event.resolution_status not in ("abandoned", "failed")
            f.duration_seconds = event.duration_seconds
            f.stt_seconds, f.tts_characters, f.llm_requests = (
                event.stt_seconds,
                event.tts_characters,
                event.llm_requests,
            )
            cost = event.cost
            f.cost_stt, f.cost_tts, f.cost_llm, f.cost_telephony = cost.stt, cost.tts, cost.llm, cost.telephony
            f.cost_total = cost.total
