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
from litestar.params import FromPath, QueryParameter

from commands.audit import conversation_turns
from commands.runner import CommandRunner
from domain import conversation as c
from domain.errors import NotFoundError, PermissionDeniedError
from domain.messages import Decider
from domain.pii import mask_value
from gateways.http.auth import Identity, requires
from streams.history import AuditEvent, history, state_as_of
from streams.store import EventStore
from streams.subjects import StreamId

AUDITORS = requires("org_admin", "platform_engineer", "analyst", "support_agent", "supervisor")
# Who sees personal fields in clear in an audit trail.
PERSONAL_READERS = frozenset({"org_admin", "support_agent", "supervisor"})
# Support staff audit conversations (to find an escalation, see what happened): not configs or the rest.
CONVERSATION_ONLY = frozenset({"support_agent", "supervisor"})


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]
    opt = AUDITORS

    @get("/{aggregate_type:str}/{aggregate_id:str}/events", summary="An aggregate's full history")
    async def events(
        self,
        request: Request[Identity, Any, Any],
        aggregate_type: FromPath[str],
        aggregate_id: FromPath[str],
        runner: NamedDependency[CommandRunner],
        store: NamedDependency[EventStore],
    ) -> dict[str, Any]:
        """Every event, oldest first: stream sequence, version, type, when it was recorded and when it
        says it happened, who caused it and which command (name, id, correlation id)."""
        _spec(runner, aggregate_type)
        stream = _stream(request, aggregate_type, aggregate_id)
        found = await history(store, stream)
        clear = bool(request.user.roles & PERSONAL_READERS)
        return {
            "tenant": stream.tenant,
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "version": found[-1].version,
            "events": [_event(e, clear) for e in found],
        }

    @get("/{aggregate_type:str}/{aggregate_id:str}/state", summary="An aggregate's state at a version or moment")
    async def state(
        self,
        request: Request[Identity, Any, Any],
        aggregate_type: FromPath[str],
        aggregate_id: FromPath[str],
        runner: NamedDependency[CommandRunner],
        store: NamedDependency[EventStore],
        at: Annotated[datetime | None, QueryParameter(description="RFC 3339; UTC when no zone is given")] = None,
        version: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> dict[str, Any]:
        """The state after the last event recorded at or before ``at``, or at ``version`` (the latest
        with neither), reproduced by replaying the aggregate's events through its own ``evolve``."""
        spec = _spec(runner, aggregate_type)
        stream = _stream(request, aggregate_type, aggregate_id)
        past = await state_as_of(store, spec, stream, version=version, at=at)
        return {
            "tenant": stream.tenant,
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "as_of": {"at": at, "version": version},
            "version": past.version,
            "seq": past.seq,
            "recorded_at": past.recorded_at,
            "latest_version": past.latest_version,
            "events_folded": past.events_folded,
            "state": _state(past.state, bool(request.user.roles & PERSONAL_READERS)),
        }

    @get("/conversations/{conversation_id:str}/turns", summary="A conversation's turns and their config versions")
    async def turns(
        self,
        request: Request[Identity, Any, Any],
        conversation_id: FromPath[str],
        store: NamedDependency[EventStore],
    ) -> dict[str, Any]:
        """Each customer message, the config version that governed its answer (pinned to the
        conversation), the config's active version at that moment, and the replies."""
        stream = _stream(request, c.AGGREGATE_TYPE, conversation_id)
        found = await conversation_turns(store, stream)
        body: dict[str, Any] = msgspec.to_builtins(found)
        body.pop("stream")
        return {"tenant": stream.tenant, "conversation_id": conversation_id, **body}


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


def _state(state: Any, clear: bool) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(state)
    if not clear and isinstance(body.get("pii_collected"), dict):
        body["pii_collected"] = {kind: mask_value(value) for kind, value in body["pii_collected"].items()}
    return body


def _event(found: AuditEvent, clear: bool) -> dict[str, Any]:
    event = found.event
    personal = type(event).personal_fields
    redacted = [] if clear else list(personal)
    if redacted:
        event = msgspec.structs.replace(event, **dict.fromkeys(redacted))
    body: dict[str, Any] = msgspec.to_builtins(msgspec.structs.replace(found, event=event))
    if redacted:
        body["redacted"] = redacted
    return body
