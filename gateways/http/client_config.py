"""The seed's Client Configuration Portal: configuration by conversation, the visual update, the
version history and the rollback, in the portal's shapes (versions as ``"v48"``).

Thin adapters: the configuration agent (``agents.assistant.ConfigChat``) and the config use
cases (``commands.config.ConfigService``) decide; the same permission matrix, versioning, risk and
approvals as ``gateways.http.config`` apply. The permission endpoints of the portal are in that
controller.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from agents.assistant import ChatAnswer, ConfigChat
from commands.config import ConfigService
from domain.bot import Issue
from domain.bot_changes import ConfigValue
from domain.errors import NotFoundError
from gateways.http.auth import Identity
from gateways.http.common import iso
from gateways.http.config import CONFIG_ROLES, ChangeKey, ConfigId, Message, caller_of, may_read
from gateways.http.fields import Text
from gateways.http.positions import Positions
from read_models.config import ClientVersions, ConfigQueries

ProductType = Literal["chatbot", "voicebot"]
ConversationId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
VersionName = Annotated[str, msgspec.Meta(pattern=r"^v?[1-9][0-9]{0,6}$", description='"v47" (or 47)')]


class ChatRequest(msgspec.Struct, forbid_unknown_fields=True):
    config_id: ConfigId
    message: Text
    conversation_id: ConversationId | None = None  # keeps the context across messages
    product_type: ProductType | None = None


class VisualUpdateRequest(msgspec.Struct, forbid_unknown_fields=True):
    config_id: ConfigId
    changes: Annotated[dict[ChangeKey, ConfigValue], msgspec.Meta(min_length=1, max_length=50)]
    commit_message: Message
    product_type: ProductType | None = None
    apply_immediately: bool = False  # the seed: false creates a draft for review


class ClientRollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    target_version: VersionName | int
    reason: Message
    notify_team: bool = False


class Change(msgspec.Struct):
    old: ConfigValue
    new: ConfigValue


class VisualValidation(msgspec.Struct, kw_only=True):
    valid: bool
    warnings: list[Issue]
    estimated_impact: str
    affected_conversations: int  # open conversations keep the version they started on: none is affected
    conversations_on_previous_version: int


class VisualUpdateAnswer(msgspec.Struct, kw_only=True):
    """The seed's visual update answer: the version made, its status (applied, pending_approval,
    draft; awaiting_reload for a breaking one; unchanged when there was nothing to change)."""

    config_id: str
    version: str
    status: Literal["applied", "pending_approval", "draft", "awaiting_reload", "unchanged"]
    risk_level: str
    requires_approval: bool
    branch: str
    preview_url: str
    test_call_url: str | None  # a voicebot's: the console has no test call yet
    validation: VisualValidation
    diff: dict[str, Change]  # dotted path (a whole tool: tools.<name>) -> old and new
    created_at: str
    position: int


class ClientRollbackAnswer(msgspec.Struct, kw_only=True):
    config_id: str
    rolled_back_from: str
    rolled_back_to: str
    new_current_version: str  # a rollback is a new version with the target's content
    commit_message: str
    applied_at: str
    kafka_event_published: bool  # the seed's name: the rollback's events are on the stream
    estimated_propagation_time: str
    pinned_conversations: list[str]  # still open on the version rolled back: they keep it
    team_notified: bool  # no notification channel yet: always false
    position: int


STATUS = {"active": "applied", "pending_approval": "pending_approval", "draft": "draft"}


def version_number(name: str | int) -> int:
    return name if isinstance(name, int) else int(name.lstrip("v"))


class ClientConfigController(Controller):
    path = "/api/v1/client-config"
    tags = ["client-config"]
    opt = CONFIG_ROLES

    @post("/chat", status_code=200, summary="Configure by conversation")
    async def chat(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[ChatRequest],
        config_service: NamedDependency[ConfigService],
        config_chat: NamedDependency[ConfigChat],
    ) -> ChatAnswer:
        """The configuration agent: it classifies the request with the seed's change types, proposes
        the changes with their current and proposed values, previews them, and on "yes, apply them"
        writes the version (low risk goes live; medium and high wait for their approvals)."""
        return await config_chat.chat(
            request.user.tenant,
            await caller_of(config_service, request),
            config_id=data.config_id,
            message=data.message,
            conversation_id=data.conversation_id,
            product_type=data.product_type,
        )

    @post("/visual/update", status_code=200, summary="Update a config from the visual editor")
    async def visual_update(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[VisualUpdateRequest],
        config_service: NamedDependency[ConfigService],
    ) -> VisualUpdateAnswer:
        """``changes`` over the active version (top-level keys; a voicebot's ``voice_settings``
        merged into its voice): written on main (``apply_immediately``) or as a draft branch."""
        done = await config_service.update(
            request.user.tenant,
            data.config_id,
            data.changes,
            await caller_of(config_service, request),
            commit_message=data.commit_message,
            apply_immediately=data.apply_immediately,
            product_type=data.product_type,
        )
        written = done.written
        state = written.outcome.state
        version = state.version(written.version)
        risk = done.risk_assessment
        return VisualUpdateAnswer(
            config_id=data.config_id,
            version=f"v{version.version}",
            status="unchanged" if not written.created else STATUS.get(version.status, version.status),  # type: ignore[arg-type]
            risk_level=version.risk_level if written.created else "low",
            requires_approval=bool(version.approvals_missing) if written.created else False,
            branch=version.branch,
            preview_url=f"/console/configs/{data.config_id}/compare?a={done.based_on}&b={version.version}",
            test_call_url=None,
            validation=VisualValidation(
                valid=True,
                warnings=done.warnings,
                estimated_impact=f"{risk.risk_level.capitalize()} - {'; '.join(risk.reasons) or 'no change'}",
                affected_conversations=0,
                conversations_on_previous_version=done.open_on_previous,
            ),
            diff={
                c.path if c.item is None else f"{c.path}.{c.item}": Change(old=c.old, new=c.new)
                for c in done.change_risks
            },
            created_at=iso(version.created_at),
            position=written.outcome.position,
        )

    @get("/{config_id:str}/versions", summary="A config's version history, as the portal shows it")
    async def versions(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> ClientVersions:
        """Newest first: each version's commit message, author, changes (type, field, old and new
        values; tools by name), risk, when it went live, whether it can be rolled back to."""
        await may_read(config_service, positions, request, min_position)
        found = await config_queries.client_versions(request.user.tenant, config_id, limit=limit, offset=offset)
        if found is None:
            raise NotFoundError(f"config {config_id} not found")
        return found

    @post("/{config_id:str}/rollback", status_code=200, summary="Roll back to an earlier version")
    async def rollback(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        data: JSONBody[ClientRollbackRequest],
        config_service: NamedDependency[ConfigService],
    ) -> Response[ClientRollbackAnswer]:
        outcome, rolled = await config_service.rollback(
            request.user.tenant,
            config_id,
            await caller_of(config_service, request),
            reason=data.reason,
            initiated_by="client_user",
            target_version=version_number(data.target_version),
        )
        answer = ClientRollbackAnswer(
            config_id=config_id,
            rolled_back_from=f"v{rolled.from_version}",
            rolled_back_to=f"v{rolled.to_version}",
            new_current_version=f"v{rolled.new_version}",
            commit_message=outcome.state.version(rolled.new_version).commit_message,
            applied_at=iso(rolled.at),
            kafka_event_published=True,
            estimated_propagation_time="immediate: new conversations start on it at once",
            pinned_conversations=rolled.pinned_conversations,
            team_notified=False,
            position=outcome.position,
        )
        return Response(answer, headers={"X-Parley-Position": str(outcome.position)})
