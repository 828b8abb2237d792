"""One command runner: load, fold, decide, append with the expected version, retry on conflict.

The tenant and actor come from the caller's identity (``CommandContext``), never from a body.
A command id makes the command idempotent: the store refuses a second commit with the same id on
the same aggregate, and a retry returns the first outcome without deciding again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
import structlog

from domain.errors import ConcurrencyError, ParleyError
from domain.messages import Command, Event
from streams.repository import AggregateSpec, Loaded, Repository
from streams.store import EventMeta, EventStore

log = structlog.get_logger(__name__)

S = TypeVar("S")


class CommandContext(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    actor: str
    command_id: str | None = None
    correlation_id: str | None = None
    # The command id came from the caller (an Idempotency-Key): it may be a retry, so look for
    # its first outcome before deciding. A fresh id made here cannot have been used before.
    retry_possible: bool = False


class Aggregate(msgspec.Struct, Generic[S], frozen=True):
    """A decider: how to fold an aggregate's events, and how it decides."""

    spec: AggregateSpec[S]
    decide: Callable[[Command, S], list[Event]]


class Outcome(msgspec.Struct, Generic[S], frozen=True):
    state: S
    version: int
    position: int  # stream sequence of the commit (0: nothing was written)
    events: list[Event]
    duplicate: bool = False


class CommandRunner:
    def __init__(self, store: EventStore, repositories: dict[str, Repository[Any]], *, max_attempts: int = 4) -> None:
        self.store = store
        self.repositories = repositories
        self.max_attempts = max_attempts

    @classmethod
    def for_aggregates(
        cls, store: EventStore, aggregates: list[Aggregate[Any]], *, max_attempts: int = 4, **repo_options: Any
    ) -> CommandRunner:
        repositories = {a.spec.type_name: Repository(store, a.spec, **repo_options) for a in aggregates}
        return cls(store, repositories, max_attempts=max_attempts)

    def repository(self, aggregate: Aggregate[S]) -> Repository[S]:
        return self.repositories[aggregate.spec.type_name]

    async def handle(
        self, aggregate: Aggregate[S], aggregate_id: str, command: Command, ctx: CommandContext, *, new: bool = False
    ) -> Outcome[S]:
        """Run a command. ``new``: the id was just made, so the aggregate cannot exist yet; the first
        attempt skips loading (an existing one would still be caught: its append conflicts)."""
        repo = self.repository(aggregate)
        stream = repo.stream(ctx.tenant, aggregate_id)
        meta = EventMeta(
            command_id=ctx.command_id,
            command=type(command).__name__,
            actor=ctx.actor,
            correlation_id=ctx.correlation_id,
        )
        for attempt in range(1, self.max_attempts + 1):
            if new and attempt == 1 and not ctx.retry_possible:
                loaded = Loaded(stream, aggregate.spec.initial(), 0, 0, 0, from_snapshot=False)
            elif ctx.command_id and ctx.retry_possible:
                loaded, known = await asyncio.gather(
                    repo.load(ctx.tenant, aggregate_id), self.store.outcome(stream, ctx.command_id)
                )
                if known is not None:
                    return Outcome(loaded.state, known.version, known.seq, [], duplicate=True)
            else:
                # The first attempt may decide on the in-memory copy unchecked: the append carries
                # its version, so the server refuses it if another process wrote since.
                loaded = await repo.load(ctx.tenant, aggregate_id, trust_cache=attempt == 1)
            try:
                events = aggregate.decide(command, loaded.state)
            except ParleyError:
                if not loaded.from_cache:
                    raise
                # A refusal must rest on the stream's truth, not on a copy that may be stale.
                loaded = await repo.load(ctx.tenant, aggregate_id)
                events = aggregate.decide(command, loaded.state)
            if not events:
                return Outcome(loaded.state, loaded.version, loaded.seq, [])
            try:
                result = await self.store.append(stream, events, expected_version=loaded.version, meta=meta)
            except ConcurrencyError:
                repo.forget(stream)
                if attempt == self.max_attempts:
                    raise
                log.debug("concurrency conflict, retrying", stream=stream.key, attempt=attempt)
                continue
            if result.duplicate:
                return Outcome(loaded.state, result.version, result.seq, [], duplicate=True)
            state = repo.fold_events(loaded.state, events)
            repo.remember(stream, state, result.version, result.seq)
            return Outcome(state, result.version, result.seq, events)
        raise AssertionError("unreachable")
