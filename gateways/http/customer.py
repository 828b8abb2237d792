"""A customer's rights over HTTP: erasure (``POST /api/v1/customers/{id}/erase``, organization
admins) and access (``GET /api/v1/customers/{id}/export``: an organization admin, or the customer
themself, gets everything the platform shows about them as one JSON document).

The erasure is ``commands.customer.CustomerErasure``; ``CustomerDesk.assemble`` gives it the
stores outside the stream that hold a customer's data: the demo tools' tables, the agent runtime's
LangGraph checkpoints and the responses Redis remembers for idempotent retries.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from agents.checkpoints import erase_threads
from agents.tools import erase_customer_from_demo_tables
from commands.customer import CustomerErasure, Erasure, Scrubber
from commands.runner import CommandRunner
from domain.customer import CustomerStreams
from domain.errors import NotFoundError
from gateways.http.auth import Identity, requires
from gateways.http.common import actor, is_customer
from gateways.http.fields import SubjectId
from read_models.customer import CustomerExport, CustomerQueries
from streams.keys import KeyStore
from streams.store import EventStore

RECORDING_URL = "/api/v1/voice/calls/{call_id}/recordings/{recording_id}"
SCAN_PAGE = 500


class CustomerDesk:
    """The customer use cases of an API process (or of ``python -m gateways.erase``)."""

    def __init__(self, erasure: CustomerErasure, queries: CustomerQueries) -> None:
        self.erasure = erasure
        self.queries = queries

    @classmethod
    def assemble(
        cls, runner: CommandRunner, store: EventStore, keys: KeyStore, pool: AsyncConnectionPool[Any], redis: Redis
    ) -> CustomerDesk:
        queries = CustomerQueries(pool)

        async def demo_tables(tenant: str, customer_id: str, found: CustomerStreams) -> None:
            await erase_customer_from_demo_tables(pool.connection, tenant, customer_id, found.conversations)

        async def checkpoints(tenant: str, customer_id: str, found: CustomerStreams) -> None:
            async with pool.connection() as conn:
                await erase_threads(conn, [f"{tenant}:{cid}" for cid in found.conversations])

        async def remembered_responses(tenant: str, customer_id: str, found: CustomerStreams) -> None:
            await forget_remembered_responses(redis, tenant, found)

        scrubbers: list[Scrubber] = [demo_tables, checkpoints, remembered_responses]
        return cls(CustomerErasure(runner, keys, store, queries.streams, scrubbers), queries)


async def forget_remembered_responses(redis: Redis, tenant: str, found: CustomerStreams) -> int:
    """Drop the responses Redis keeps for idempotent retries (``idem:<tenant>:<key>``) that name one
    of the customer's conversations or calls: they may quote what was said. Returns how many."""
    names = [n.encode() for n in (*found.conversations, *found.calls)]
    if not names:
        return 0
    dropped = 0
    async for key in redis.scan_iter(match=f"idem:{tenant}:*", count=SCAN_PAGE):
        value = await redis.get(key)
        if value is not None and any(name in value for name in names):
            dropped += await redis.delete(key)
    return dropped


class ErasureView(msgspec.Struct, frozen=True, kw_only=True):
    """The erasure, the same for every call that asks for it (the first one's record)."""

    customer_id: str
    status: str  # "erased"
    erased_at: str
    erased_by: str
    conversations: list[str]
    calls: list[str]
    position: int


def _view(erasure: Erasure) -> ErasureView:
    return ErasureView(
        customer_id=erasure.customer_id,
        status="erased",
        erased_at=erasure.erased_at.isoformat().replace("+00:00", "Z"),
        erased_by=erasure.erased_by,
        conversations=erasure.conversations,
        calls=erasure.calls,
        position=erasure.position,
    )


class CustomerController(Controller):
    path = "/api/v1/customers"
    tags = ["customers"]

    @post("/{customer_id:str}/erase", summary="Erase a customer", status_code=200, opt=requires("org_admin"))
    async def erase(
        self,
        request: Request[Identity, Any, Any],
        customer_id: SubjectId,
        customers: NamedDependency[CustomerDesk],
    ) -> ErasureView:
        """Destroy the customer's key (every process forgets it at once) and every readable trace of
        them: the read models show ``[erased]`` where their words were, the tools' records lose what
        they told them, checkpoints and remembered responses go. Recorded as ``CustomerErased``;
        asking again answers the first erasure."""
        identity = request.user
        erased = await customers.erasure.erase(identity.tenant, customer_id, actor=actor(identity))
        return _view(erased)

    @get(
        "/{customer_id:str}/export",
        summary="Everything about a customer (GDPR access)",
        opt=requires("org_admin", "customer"),
    )
    async def export(
        self,
        request: Request[Identity, Any, Any],
        customer_id: SubjectId,
        customers: NamedDependency[CustomerDesk],
    ) -> CustomerExport:
        """The customer's conversations with every message, their escalations and their calls with
        transcripts, as one document. A customer may export only themself (anyone else reads as 404)."""
        identity = request.user
        if is_customer(identity) and identity.subject != customer_id:
            raise NotFoundError(f"customer {customer_id} not found")
        return await customers.queries.export(identity.tenant, customer_id, recording_url=RECORDING_URL)
