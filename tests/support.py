"""What tests (and benchmarks) share: a ``History`` of events written as the API writes them, a
``ProjectionSpec`` (given events, then rows, against the real PostgreSQL), and a small aggregate for
the event-store tests (a counter with a customer's email).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from domain import call, config, conversation, escalation, permissions
from domain.errors import ValidationError
from domain.messages import Command, Decider, Event
from projections.projector import Projector
from read_models.migrations import migrate
from streams.codec import Pending
from streams.factory import OpenStore
from streams.jetstream import OutMessage
from streams.store import AppendResult, EventMeta, EventStore, RecordedEvent, StoredItem, encode_commit
from streams.subjects import StreamId

# The history ------------------------------------------------------------------------------------

DECIDERS: tuple[Decider[Any], ...] = (
    conversation.DECIDER,
    escalation.DECIDER,
    config.DECIDER,
    call.DECIDER,
    call.LINE_DECIDER,
    permissions.DECIDER,
)
RECORDED_AT = datetime(2025, 1, 1, tzinfo=UTC)  # in memory, an event that says no time of its own


class History:
    """Events written as the API writes them: one commit per command, each where its aggregate stands.

    ``decide`` goes through the aggregate's decider, as the command runner does: the state is
    folded from what this history wrote, and a story the domain would refuse raises. ``add``
    writes events as they are, around the deciders (another process's aggregate, events a test
    needs exactly so); ``add_stale`` and ``add_poison`` write what no decider would, past the
    store's checks.

    With a store the commits are appended to it (``OpenStore`` for the raw ones too); without one
    they are recorded in memory with stream sequences from 1 (``recorded``), for a
    ``ProjectionSpec``, or folded for a test that only needs the states (``state``, ``loader``).
    """

    def __init__(
        self,
        store: OpenStore | EventStore | None = None,
        *,
        tenant: str = "acme",
        deciders: Iterable[Decider[Any]] = DECIDERS,
    ) -> None:
        self.opened = store if isinstance(store, OpenStore) else None
        self.store = store.store if isinstance(store, OpenStore) else store
        self.tenant = tenant
        self.deciders: Mapping[str, Decider[Any]] = {d.type_name: d for d in deciders}
        self.versions: dict[StreamId, int] = {}
        self.states: dict[StreamId, Any] = {}
        self.recorded: list[RecordedEvent] = []  # without a store: every event, as a store would give it back
        self.types: Counter[str] = Counter()  # events written, by type
        self.aggregates: Counter[str] = Counter()  # events written, by aggregate type
        self.events = 0
        self.commits = 0
        self.last_seq = 0
        self.loads = 0  # states handed out by ``loader``s

    def stream(self, aggregate_type: str, aggregate_id: str, tenant: str | None = None) -> StreamId:
        return StreamId(tenant or self.tenant, aggregate_type, aggregate_id)

    def count(self, *types: type[Event]) -> int:
        """Events of these types written so far."""
        return sum(self.types[t.__name__] for t in types)

    async def decide(
        self,
        decider: Decider[Any],
        aggregate_id: str,
        command: Command,
        *,
        tenant: str | None = None,
        actor: str = "test",
        correlation_id: str | None = None,
        command_id: str | None = None,
    ) -> list[Event]:
        """The events ``decider`` decides for ``command`` on the aggregate as it stands, written as one commit."""
        stream = self.stream(decider.type_name, aggregate_id, tenant)
        events = decider.decide(command, self.state(stream))
        if events:
            await self.add(
                stream,
                *events,
                command=type(command).__name__,
                actor=actor,
                correlation_id=correlation_id,
                command_id=command_id,
            )
        return events

    async def add(
        self,
        stream: StreamId,
        *events: Event,
        command: str | None = None,
        actor: str = "test",
        correlation_id: str | None = None,
        command_id: str | None = None,
        meta: EventMeta | None = None,
    ) -> AppendResult:
        """One commit of ``events`` on ``stream``, as they are."""
        version = self.versions.get(stream, 0)
        meta = meta or EventMeta(
            command_id=command_id or uuid.uuid4().hex, command=command, actor=actor, correlation_id=correlation_id
        )
        if self.store is None:
            return self.record(stream, *events, meta=meta)
        result = await self.store.append(stream, list(events), expected_version=version, meta=meta)
        self._written(stream, result.version, result.seq, events)
        return result

    def record(self, stream: StreamId, *events: Event, meta: EventMeta | None = None) -> AppendResult:
        """One commit of ``events`` on ``stream``, as they are, in memory (a history without a store)."""
        if self.store is not None:
            raise RuntimeError("this history writes to its store: add() the events")
        version = self.versions.get(stream, 0)
        meta = meta or EventMeta(command_id=uuid.uuid4().hex, actor="test")
        seq = self.last_seq + 1
        for i, event in enumerate(events, 1):
            at = event.occurred_at() or RECORDED_AT
            self.recorded.append(RecordedEvent(stream, version + i, seq, event, at, meta))
        self._written(stream, version + len(events), seq, events)
        return AppendResult(stream.key, seq, version + len(events), len(events))

    def _written(self, stream: StreamId, version: int, seq: int, events: Sequence[Event]) -> None:
        self.versions[stream] = version
        self.last_seq = max(self.last_seq, seq)
        self.events += len(events)
        self.commits += 1
        self.types.update(type(e).__name__ for e in events)
        self.aggregates[stream.aggregate_type] += len(events)
        decider = self.deciders.get(stream.aggregate_type)
        if decider is not None:
            self.states[stream] = decider.fold(self.state(stream), events)

    def state(self, stream: StreamId) -> Any:
        """The aggregate's state after what this history wrote (its decider's initial state before)."""
        if stream not in self.states:
            return self.deciders[stream.aggregate_type].initial()
        return self.states[stream]

    def loader(self, decider: Decider[Any]) -> Any:
        """``async (tenant, aggregate id) -> state``: what a repository would load (counted in ``loads``)."""

        async def load(tenant: str, aggregate_id: str) -> Any:
            self.loads += 1
            return self.state(StreamId(tenant, decider.type_name, aggregate_id))

        return load

    # Around the store's checks -------------------------------------------------------------

    def _log(self) -> Any:
        if self.opened is None:
            raise RuntimeError("raw commits need the store opened with its log (History(OpenStore))")
        return self.opened.log

    async def add_stale(self, stream: StreamId, event: Event, version: int) -> None:
        """A commit of an event at an old version, past the store's checks (the aggregate takes no more commits)."""
        assert self.store is not None
        stored = self.store.mapper.to_stored_event(Pending(stream.key, version, event))
        commit = encode_commit(version, [StoredItem(stored.topic, stored.state)])
        published = await self._log().publish([OutMessage(f"{stream.subject}.c-stale-{version}", {}, commit)])
        self.last_seq = published.last_seq
        self.events += 1  # a stale event is written, never applied: not in ``types``
        self.aggregates[stream.aggregate_type] += 1

    async def add_poison(self, stream: StreamId) -> int:
        """A commit of an event type nobody knows, on the aggregate's subjects; its stream sequence."""
        version = self.versions.get(stream, 0) + 1
        commit = encode_commit(version, [StoredItem("nowhere:Missing", b"{}")])
        published = await self._log().publish([OutMessage(f"{stream.subject}.c-poison-{version}", {}, commit)])
        self.versions[stream] = version
        self.last_seq = published.last_seq
        return int(published.last_seq)


# Projection spec --------------------------------------------------------------------------------


class ProjectionSpec:
    """Given events, then rows: a PostgreSQL projector's definition against the real database.

    In the manner of Emmett's ``PostgreSQLProjectionSpec``::

        await ProjectionSpec(ConversationsProjector, pool).given(stream, *events).then_rows("conversations", [...])

    The events go to ``history`` (a ``History`` in memory): ``given`` writes them as they are, one
    commit; ``history.decide`` writes what a decider decides, for stories the domain tells. Then
    ``then_rows`` applies those not applied yet as one batch, as the runner would (in one
    transaction, in a pipeline), and reads the table: the columns the expected rows name, in the
    order of ``order_by`` (by default those columns). No stream is involved: what is checked is the
    projector, not the feed.
    """

    def __init__(self, projector: Projector | type[Projector], pool: AsyncConnectionPool[Any]) -> None:
        self.projector = projector() if isinstance(projector, type) else projector
        self.pool = pool
        self.history = History()
        self._applied = 0

    def given(self, stream: StreamId, *events: Event) -> ProjectionSpec:
        """These events on ``stream``, as they are (one commit), after what was given before."""
        self.history.record(stream, *events)
        return self

    async def apply(self) -> None:
        events = self.history.recorded[self._applied :]
        async with self.pool.connection() as conn:
            await migrate(conn, self.projector.read_model)
            async with conn.transaction(), conn.pipeline(), conn.cursor() as cur:
                await self.projector.apply_events(cur, events, self.projector.schema)
        self._applied += len(events)

    async def redeliver(self) -> None:
        """Apply every event given so far once more, as one batch (a redelivery the checkpoint missed)."""
        self._applied = 0
        await self.apply()

    async def rows(
        self, table: str, columns: Sequence[str] = ("*",), *, order_by: str | None = None
    ) -> list[dict[str, Any]]:
        """The table's rows (after the events given so far), as dicts of ``columns`` (``*``: all of them)."""
        await self.apply()
        every = list(columns) == ["*"]
        query = sql.SQL("SELECT {} FROM {}.{} ORDER BY {}").format(
            sql.SQL("*") if every else sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.Identifier(self.projector.schema),
            sql.Identifier(table),
            sql.SQL(order_by or ("1" if every else ", ".join(columns))),  # the test's own text
        )
        async with self.pool.connection() as conn:
            cur = await conn.execute(query)
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]

    async def then_rows(self, table: str, expected: list[dict[str, Any]], *, order_by: str | None = None) -> None:
        """After the events given so far, ``table`` holds exactly ``expected`` (in the columns they name)."""
        columns = list(expected[0]) if expected else ["*"]
        if not expected:
            async with self.pool.connection() as conn:
                await self.apply()
                cur = await conn.execute(
                    sql.SQL("SELECT count(*) FROM {}.{}").format(
                        sql.Identifier(self.projector.schema), sql.Identifier(table)
                    )
                )
                row = await cur.fetchone()
                assert row is not None and row[0] == 0, f"{table} has {row[0] if row else '?'} rows, expected none"
            return
        actual = await self.rows(table, columns, order_by=order_by)
        assert actual == expected, f"{table}:\n  actual   {actual}\n  expected {expected}"


# A small aggregate for the event-store tests ----------------------------------------------------


class Incremented(Event, frozen=True):
    amount: int


class EmailNoted(Event, frozen=True):
    customer_id: str
    email: str | None = None
    phone: str | None = None
    note: str = ""

    personal_fields = ("email", "phone")
    data_subject = "customer_id"


class CounterState(msgspec.Struct, frozen=True):
    total: int = 0
    customer_id: str | None = None
    email: str | None = None


def evolve(state: CounterState, event: Event) -> CounterState:
    match event:
        case Incremented(amount=amount):
            return msgspec.structs.replace(state, total=state.total + amount)
        case EmailNoted(customer_id=customer_id, email=email):
            return msgspec.structs.replace(state, customer_id=customer_id, email=email)
    return state


def decide(command: Command, state: CounterState) -> list[Event]:
    raise ValidationError(f"{type(command).__name__} is not a counter command")


COUNTER = Decider(
    type_name="counter",
    state_type=CounterState,
    initial=CounterState,
    evolve=evolve,
    decide=decide,
    data_subject=lambda s: s.customer_id,
)
