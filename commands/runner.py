"""One command runner: load, fold, decide, append with the expected version, retry on conflict.

The tenant and actor come from the caller's identity (``CommandContext``), never from a body.
A command id makes the command idempotent: the store refuses a second commit with the same id on
the same aggregate, and a retry returns the first outcome without deciding again.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

import msgspec
import structlog

from domain.errors import ConcurrencyError, IdempotencyKeyReused, ParleyError
from domain.messages import Command, Decider, Event
from streams.repository import Loaded, Repository
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
    # A digest of the request the command id was given for: recorded with the commit, so that a
    # retry carrying another request is refused from the store alone.
    request: str | None = None


class Outcome(msgspec.Struct, Generic[S], frozen=True):
    state: S
    version: int
    position: int  # stream sequence of the commit (0: nothing was written)
    events: list[Event]
    duplicate: bool = False


class CommandRunner:
    def __init__(
        self,
        store: EventStore,
        repositories: dict[str, Repository[Any]] | None = None,
        *,
        max_attempts: int = 4,
        **repo_options: Any,
    ) -> None:
        self.store = store
        # Shared by runners made from one another (``with_attempts``): one in-memory copy per aggregate.
        self.repositories = {} if repositories is None else repositories
        self.max_attempts = max_attempts
        self._options = repo_options

    def with_attempts(self, max_attempts: int) -> CommandRunner:
        """This runner, retrying conflicts up to ``max_attempts`` times (for a hot aggregate)."""
        return CommandRunner(self.store, self.repositories, max_attempts=max_attempts, **self._options)

    @classmethod
    def for_aggregates(
        cls, store: EventStore, deciders: list[Decider[Any]], *, max_attempts: int = 4, **repo_options: Any
    ) -> CommandRunner:
        runner = cls(store, max_attempts=max_attempts, **repo_options)
        for decider in deciders:
            runner.repository(decider)
        return runner

    def repository(self, decider: Decider[S]) -> Repository[S]:
        """The decider's repository (made on first use, sharing the options of the others)."""
        found = self.repositories.get(decider.type_name)
        if found is None:
            found = self.repositories[decider.type_name] = Repository(self.store, decider, **self._options)
        return found

    async def handle(
        self, decider: Decider[S], aggregate_id: str, command: Command, ctx: CommandContext, *, new: bool = False
    ) -> Outcome[S]:
        """Run a command. ``new``: the id was just made, so the aggregate cannot exist yet; the first
        attempt skips loading (an existing one would still be caught: its append conflicts)."""
        repo = self.repository(decider)
        stream = repo.stream(ctx.tenant, aggregate_id)
        meta = EventMeta(
            command_id=ctx.command_id,
            command=type(command).__name__,
            actor=ctx.actor,
            correlation_id=ctx.correlation_id,
            request=ctx.request,
        )
        for attempt in range(1, self.max_attempts + 1):
            if new and attempt == 1 and not ctx.retry_possible:
                loaded = Loaded(stream, decider.initial(), 0, 0, 0, from_snapshot=False)
            elif ctx.command_id and ctx.retry_possible:
                loaded, known = await asyncio.gather(
                    repo.load(ctx.tenant, aggregate_id), self.store.outcome(stream, ctx.command_id)
                )
                if known is not None:
                    _same_request(ctx, known.meta)
                    return Outcome(loaded.state, known.version, known.seq, [], duplicate=True)
            else:
                # The first attempt may decide on the in-memory copy unchecked: the append carries
                # its version, so the server refuses it if another process wrote since.
                loaded = await repo.load(ctx.tenant, aggregate_id, trust_cache=attempt == 1)
            try:
                events = decider.decide(command, loaded.state)
            except ParleyError:
                if not loaded.from_cache:
                    raise
                # A refusal must rest on the stream's truth, not on a copy that may be stale.
                loaded = await repo.load(ctx.tenant, aggregate_id)
                events = decider.decide(command, loaded.state)
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
                _same_request(ctx, result.meta)
                return Outcome(loaded.state, result.version, result.seq, [], duplicate=True)
            state = repo.fold_events(loaded.state, events)
            repo.remember(stream, state, result.version, result.seq)
            return Outcome(state, result.version, result.seq, events)
        raise AssertionError("unreachable")


def _same_request(ctx: CommandContext, first: EventMeta | None) -> None:
    """A retry must ask what the first did: the same key with another request changes nothing."""
    if ctx.request and first is not None and first.request and first.request != ctx.request:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used for a different request", fields={"Idempotency-Key": "reused"}
        )
