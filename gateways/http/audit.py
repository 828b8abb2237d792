"""Audit history and time travel over HTTP: what happened to an aggregate, and what it was then.

Answers come from the event stream itself (``streams.history``: the aggregate's commits replayed
through its own ``evolve``), never from a read model. The tenant is the caller's; another tenant's
aggregate reads as 404, like one that does not exist. Any aggregate type the command runner knows
can be asked for (``conversation``, ``agent_pool``, ``agent_config``, ...).

Personal fields (``Event.personal_fields``: what a customer wrote, a conversation's context) are
shown to an organization admin; for other callers they read as null and the event lists them in
``redacted``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from commands.audit import Turn, conversation_turns
from commands.runner import CommandRunner
from domain import conversation as c
from domain.errors import NotFoundError, PermissionDeniedError
from domain.messages import Decider, Event, blank_personal
from domain.pii import mask_value
from gateways.http.auth import Identity, requires
from gateways.http.fields import Id, Slug
from streams.history import AuditEvent, history, state_as_of
from streams.store import EventStore
from streams.subjects import StreamId

AUDITORS = requires("org_admin", "platform_engineer", "analyst", "support_agent", "supervisor")
# Who sees personal fields in clear in an audit trail.
PERSONAL_READERS = frozenset({"org_admin", "support_agent", "supervisor"})
# Support staff audit conversations (to find an escalation, see what happened): not configs or the rest.
CONVERSATION_ONLY = frozenset({"support_agent", "supervisor"})


class AuditEventView(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the history: its stream sequence and version, when it was recorded and when it
    says it happened, who caused it and which command; ``redacted`` names the personal fields shown
    as null to this reader."""

    seq: int
    version: int
    type: str
    recorded_at: datetime
    occurred_at: datetime | None
    command: str | None
    command_id: str | None
    actor: str | None
    correlation_id: str | None
    event: Event  # the event's own fields (its class is ``type``)
    redacted: list[str] | msgspec.UnsetType = msgspec.UNSET  # given only when some are


class AuditHistory(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    aggregate_type: str
    aggregate_id: str
    version: int
    events: list[AuditEventView]


class AsOf(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime | None
    version: int | None


class AuditState(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    aggregate_type: str
    aggregate_id: str
    as_of: AsOf
    version: int
    seq: int
    recorded_at: datetime | None
    latest_version: int
    events_folded: int
    state: Any  # the aggregate's state as its own decider folds it (its shape is the aggregate type's)


class AuditTurns(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    conversation_id: str
    config_id: str
    config_version: int
    version: int
    turns: list[Turn]


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]
    opt = AUDITORS

    @get("/{aggregate_type:str}/{aggregate_id:str}/events", summary="An aggregate's full history")
    async def events(
        self,
        request: Request[Identity, Any, Any],
        aggregate_type: Slug,
        aggregate_id: Id,
        runner: NamedDependency[CommandRunner],
        store: NamedDependency[EventStore],
    ) -> AuditHistory:
        """Every event, oldest first: stream sequence, version, type, when it was recorded and when it
        says it happened, who caused it and which command (name, id, correlation id)."""
        _spec(runner, aggregate_type)
        stream = _stream(request, aggregate_type, aggregate_id)
        found = await history(store, stream)
        clear = bool(request.user.roles & PERSONAL_READERS)
        return AuditHistory(
            tenant=stream.tenant,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            version=found[-1].version,
            events=[_event(e, clear) for e in found],
        )

    @get("/{aggregate_type:str}/{aggregate_id:str}/state", summary="An aggregate's state at a version or moment")
    async def state(
        self,
        request: Request[Identity, Any, Any],
        aggregate_type: Slug,
        aggregate_id: Id,
        runner: NamedDependency[CommandRunner],
        store: NamedDependency[EventStore],
        at: Annotated[datetime | None, QueryParameter(description="RFC 3339; UTC when no zone is given")] = None,
        version: Annotated[int | None, QueryParameter(ge=0, le=2_147_483_647, schema_extra={"minimum": 0})] = None,
    ) -> AuditState:
        """The state after the last event recorded at or before ``at``, or at ``version`` (the latest
        with neither), reproduced by replaying the aggregate's events through its own ``evolve``."""
        spec = _spec(runner, aggregate_type)
        stream = _stream(request, aggregate_type, aggregate_id)
        past = await state_as_of(store, spec, stream, version=version, at=at)
        return AuditState(
            tenant=stream.tenant,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            as_of=AsOf(at=at, version=version),
            version=past.version,
            seq=past.seq,
            recorded_at=past.recorded_at,
            latest_version=past.latest_version,
            events_folded=past.events_folded,
            state=_state(past.state, bool(request.user.roles & PERSONAL_READERS)),
        )

    @get("/conversations/{conversation_id:str}/turns", summary="A conversation's turns and their config versions")
    async def turns(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: Id,
        store: NamedDependency[EventStore],
    ) -> AuditTurns:
        """Each customer message, the config version that governed its answer (pinned to the
        conversation), the config's active version at that moment, and the replies."""
        stream = _stream(request, c.AGGREGATE_TYPE, conversation_id)
        found = await conversation_turns(store, stream)
        return AuditTurns(
            tenant=stream.tenant,
            conversation_id=conversation_id,
            config_id=found.config_id,
            config_version=found.config_version,
            version=found.version,
            turns=found.turns,
        )


def _spec(runner: NamedDependency[CommandRunner], aggregate_type: str) -> Decider[Any]:
    repository = runner.repositories.get(aggregate_type)
    if repository is None:
        raise NotFoundError(f"no aggregate type {aggregate_type!r}", aggregate_type=aggregate_type)
    return repository.decider


def _stream(request: Request[Identity, Any, Any], aggregate_type: str, aggregate_id: str) -> StreamId:
    roles = request.user.roles
    if aggregate_type != c.AGGREGATE_TYPE and not roles - CONVERSATION_ONLY:
        raise PermissionDeniedError("support staff audit conversations only", aggregate_type=aggregate_type)
    return StreamId(request.user.tenant, aggregate_type, aggregate_id)


def _state(state: Any, clear: bool) -> Any:
    """The state as this reader may see it: collected personal data masked unless theirs to see."""
    pii = getattr(state, "pii_collected", None)
    if clear or not isinstance(pii, dict):
        return state
    return msgspec.structs.replace(state, pii_collected={kind: mask_value(value) for kind, value in pii.items()})


def _event(found: AuditEvent, clear: bool) -> AuditEventView:
    event = found.event
    redacted = [] if clear else list(type(event).personal_fields)
    if redacted:
        event = blank_personal(event)
    return AuditEventView(
        seq=found.seq,
        version=found.version,
        type=found.type,
        recorded_at=found.recorded_at,
        occurred_at=found.occurred_at,
        command=found.command,
        command_id=found.command_id,
        actor=found.actor,
        correlation_id=found.correlation_id,
        event=event,
        redacted=redacted or msgspec.UNSET,
    )
