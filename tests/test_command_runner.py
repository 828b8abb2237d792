"""The command runner against the real store: retries on conflict, idempotency, the new-aggregate path."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from commands.conversation import CONVERSATION
from commands.runner import CommandContext, CommandRunner
from domain import conversation as c
from domain.errors import ConcurrencyError, IllegalStateError
from streams.factory import OpenStore

T0 = datetime(2025, 10, 11, 10, 0, tzinfo=UTC)


def start(cid: str) -> c.StartConversation:
    return c.StartConversation(
        conversation_id=cid, config_id="cfg", config_version=1, channel="web", user_id="u-1", at=T0
    )


def ctx(command_id: str | None = None, *, retry: bool = False) -> CommandContext:
    return CommandContext(tenant="acme", actor="test", command_id=command_id or uuid.uuid4().hex, retry_possible=retry)


async def test_concurrent_commands_on_one_conversation_all_land_after_retries(open_test_store: OpenStore) -> None:
    runner = CommandRunner.for_aggregates(open_test_store.store, [CONVERSATION], max_attempts=30)
    other = CommandRunner.for_aggregates(open_test_store.store, [CONVERSATION], max_attempts=30)  # another cache
    cid = uuid.uuid4().hex
    await runner.handle(CONVERSATION, cid, start(cid), ctx(), new=True)
    says = [c.ReceiveUserMessage(message_id=f"m{i}", content=f"hello {i}", at=T0) for i in range(20)]
    outcomes = await asyncio.gather(
        *(r.handle(CONVERSATION, cid, say, ctx()) for r, say in zip([runner, other] * 10, says, strict=True))
    )
    assert sorted(o.version for o in outcomes) == list(range(2, 22))
    loaded = await runner.repository(CONVERSATION).load("acme", cid)
    assert loaded.state.turn_count == 20 and loaded.version == 21


async def test_a_new_aggregate_that_already_exists_is_refused_by_the_decider(open_test_store: OpenStore) -> None:
    runner = CommandRunner.for_aggregates(open_test_store.store, [CONVERSATION])
    cid = uuid.uuid4().hex
    await runner.handle(CONVERSATION, cid, start(cid), ctx(), new=True)
    fresh = CommandRunner.for_aggregates(open_test_store.store, [CONVERSATION])
    with pytest.raises(IllegalStateError, match="already exists"):
        await fresh.handle(CONVERSATION, cid, start(cid), ctx(), new=True)


async def test_a_retried_command_id_returns_the_first_outcome_without_deciding_again(
    open_test_store: OpenStore,
) -> None:
    runner = CommandRunner.for_aggregates(open_test_store.store, [CONVERSATION])
    cid = uuid.uuid4().hex
    await runner.handle(CONVERSATION, cid, start(cid), ctx())
    close = c.CloseConversation(at=T0)
    first = await runner.handle(CONVERSATION, cid, close, ctx("close-1", retry=True))
    again = await runner.handle(CONVERSATION, cid, close, ctx("close-1", retry=True))  # closed now: deciding would fail
    assert again.duplicate and (again.position, again.version) == (first.position, first.version)


async def test_retries_are_bounded_and_the_loser_gets_the_conflict(open_test_store: OpenStore) -> None:
    runner = CommandRunner.for_aggregates(open_test_store.store, [CONVERSATION], max_attempts=1)
    cid = uuid.uuid4().hex
    await runner.handle(CONVERSATION, cid, start(cid), ctx(), new=True)
    says = [c.ReceiveUserMessage(message_id=f"m{i}", content="hi", at=T0) for i in range(8)]
    outcomes = await asyncio.gather(*(runner.handle(CONVERSATION, cid, s, ctx()) for s in says), return_exceptions=True)
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, ConcurrencyError)]
    assert len(won) >= 1 and len(won) + len(lost) == 8
    assert (await runner.repository(CONVERSATION).load("acme", cid)).state.turn_count == len(won)


async def test_a_stale_cached_copy_never_causes_a_wrong_refusal(open_test_store: OpenStore) -> None:
    here = CommandRunner.for_aggregates(open_test_store.store, [CONVERSATION])
    there = CommandRunner.for_aggregates(open_test_store.store, [CONVERSATION])  # another process
    cid = uuid.uuid4().hex
    await here.handle(CONVERSATION, cid, start(cid), ctx(), new=True)
    first = c.RequestEscalation(escalation_id="e1", trigger="user_requested", reason="r", at=T0)
    await here.handle(CONVERSATION, cid, first, ctx())  # `here` caches: escalation e1 open
    await there.handle(
        CONVERSATION, cid, c.ResolveEscalation(escalation_id="e1", resolution="returned_to_ai", at=T0), ctx()
    )
    second = c.RequestEscalation(escalation_id="e2", trigger="urgent", reason="again", at=T0)
    outcome = await here.handle(CONVERSATION, cid, second, ctx())  # stale copy says e1 is open
    assert outcome.state.open_escalation == "e2" and outcome.version == 4
