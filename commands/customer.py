"""Erasing a customer (the right to be forgotten), and what it takes to leave no readable trace.

``CustomerErasure.erase`` runs in this order, every step safe to run again:

1. **The key.** The customer's keys are destroyed and the shred is announced on the store's live
   messages (``streams.keys.shred_everywhere``): every process forgets them at once. From then on
   everything sealed under them, in the stream, the snapshots and the work stream, reads blank,
   in every process, for every reader: the projectors, the analytics, an audit export.
2. **What was derived from it.** The customer's conversations (``find``: from the read models;
   one not projected yet will be projected from blank events) each get ``EraseConversation``:
   its projector folds it again from its stream and rewrites its rows, the agent runtime drops
   its LangGraph checkpoints, its state forgets the personal data it collected. Their calls get
   ``EraseCall``: the calls' rows lose the phone number and the words.
3. **The stores outside the stream** (``scrubbers``, given by the composition root: the tools'
   tables, the agent's checkpoints, Redis's remembered responses): each removes what it holds of
   the customer's conversations.
4. **The record.** ``CustomerErased`` on the customer's own stream (``domain.customer``): who
   erased them, when, which conversations and calls. A second erasure answers that first record
   (its steps run again: a key made since, for a customer who came back, is destroyed too).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import msgspec
import structlog

from commands.runner import CommandContext, CommandRunner
from domain import call as v
from domain import conversation as c
from domain import customer as u
from domain.customer import CustomerStreams
from domain.errors import ValidationError
from streams.keys import KeyStore, LiveMessages, shred_everywhere

log = structlog.get_logger(__name__)


# The customer's conversations and calls (the composition root reads them from the read models).
Find = Callable[[str, str], Awaitable[CustomerStreams]]
# A store outside the stream forgets a customer: (tenant, customer id, what they have).
Scrubber = Callable[[str, str, CustomerStreams], Awaitable[None]]

_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_CUSTOMER_ID = 256


def customer_aggregate_id(customer_id: str) -> str:
    """The customer's stream id: the customer id itself when a stream id can be it, else its hash."""
    if _ID.match(customer_id):
        return customer_id
    return "h-" + hashlib.sha256(customer_id.encode()).hexdigest()


def check_customer_id(customer_id: str) -> None:
    if not customer_id or len(customer_id) > MAX_CUSTOMER_ID or not customer_id.isprintable():
        raise ValidationError(
            "invalid customer id", fields={"customer_id": f"1 to {MAX_CUSTOMER_ID} printable characters"}
        )


class Erasure(msgspec.Struct, frozen=True, kw_only=True):
    """An erasure's outcome: the first erasure's record, whichever call asks."""

    customer_id: str
    erased_at: datetime
    erased_by: str
    conversations: list[str]
    calls: list[str]
    position: int


class CustomerErasure:
    def __init__(
        self,
        runner: CommandRunner,
        keys: KeyStore,
        live: LiveMessages,
        find: Find,
        scrubbers: Sequence[Scrubber] = (),
    ) -> None:
        self.runner = runner
        self.keys = keys
        self.live = live
        self.find = find
        self.scrubbers = list(scrubbers)

    async def erase(self, tenant: str, customer_id: str, *, actor: str, at: datetime | None = None) -> Erasure:
        check_customer_id(customer_id)
        at = at or datetime.now(UTC)
        await shred_everywhere(self.keys, self.live, tenant, customer_id)
        found = await self.find(tenant, customer_id)
        for conversation_id in found.conversations:
            ctx = CommandContext(tenant=tenant, actor=actor)
            await self.runner.handle(c.DECIDER, conversation_id, c.EraseConversation(at=at), ctx)
        for call_id in found.calls:
            ctx = CommandContext(tenant=tenant, actor=actor, command_id=f"erase-{call_id}-{at.isoformat()}")
            await self.runner.handle(v.DECIDER, call_id, v.EraseCall(at=at), ctx)
        for scrub in self.scrubbers:
            await scrub(tenant, customer_id, found)
        command = u.EraseCustomer(
            customer_id=customer_id,
            erased_by=actor,
            conversations=found.conversations,
            calls=found.calls,
            at=at,
        )
        ctx = CommandContext(tenant=tenant, actor=actor)
        outcome = await self.runner.handle(u.DECIDER, customer_aggregate_id(customer_id), command, ctx)
        erased = outcome.state.erased
        assert erased is not None
        log.info("customer erased", tenant=tenant, conversations=len(found.conversations), calls=len(found.calls))
        return Erasure(
            customer_id=customer_id,
            erased_at=erased.erased_at,
            erased_by=erased.erased_by,
            conversations=erased.conversations,
            calls=erased.calls,
            position=outcome.position,
        )
