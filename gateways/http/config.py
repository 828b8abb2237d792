"""The seed's Configuration Management Service: agent configs as events, over HTTP.

Writes are commands on the config's aggregate (``commands.config.ConfigService``); what a caller
may do follows the seed's permission matrix from their roles and the tenant's overrides, and a
refusal is a 403 that appends nothing. Reads come from the ``configs`` read model and wait, like
every query, for a ``min_position`` or ``X-Parley-Position`` when one is given.

Each route is request struct -> service call -> response struct. The seed's Client Configuration
Portal shapes of the same use cases (chat, visual update, versions, rollback) are in
``gateways.http.client_config``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, Parameter, QueryParameter

from agents.preview import Scenario
from commands.config import Comparison, ConfigService, MemberPermissions, Preview, Written
from commands.runner import Outcome
from domain import config as a
from domain import permissions as perms
from domain.bot import Issue, ProductType, ValidationReport, config_json_schema
from domain.bot_changes import ConfigValue
from domain.errors import NotFoundError, PermissionDeniedError, ValidationError
from gateways.http.auth import Identity, requires
from gateways.http.common import iso, now, position_header
from gateways.http.conversation import moment, moment_parameter
from gateways.http.fields import MinPosition, Name, Note, Slug, Text
from gateways.http.positions import Positions
from read_models.config import (
    BranchView,
    ConfigFilter,
    ConfigPage,
    ConfigQueries,
    ConfigReads,
    ConfigView,
    History,
    VersionsPage,
)

ConfigId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="lowercase, digits, - and _")]
BranchName = ConfigId
# A YAML document: any printable text, line ends included.
Yaml = Annotated[str, msgspec.Meta(min_length=1, max_length=200_000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]
Message = Annotated[Note, msgspec.Meta(min_length=1)]  # a commit message, a reason
Version = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
AuthorType = Literal["client_user", "platform_engineer", "ai_agent", "automation"]
ChangeKey = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
# Anyone who works on configs reaches these endpoints; what each may do is the permission matrix's.
CONFIG_ROLES = requires("org_admin", "config_manager", "config_viewer", "platform_engineer", "support_agent", "service")


# Requests -------------------------------------------------------------------------------------


class CreateConfigRequest(msgspec.Struct, forbid_unknown_fields=True):
    config_id: ConfigId
    yaml_content: Yaml
    commit_message: Message = "initial_generation"
    author_type: AuthorType = "client_user"


class NewVersionRequest(msgspec.Struct, forbid_unknown_fields=True):
    yaml_content: Yaml
    commit_message: Message
    author_type: AuthorType = "client_user"
    based_on: Version | None = None
    branch: BranchName = a.MAIN


class ValidateRequest(msgspec.Struct, forbid_unknown_fields=True):
    yaml_content: Yaml
    config_id: ConfigId | None = None


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Message
    target_version: Version | None = None
    initiated_by: Literal["client_user", "platform_engineer"] = "client_user"
    user_id: Name | None = None
    notify_team: bool = False


class CompareRequest(msgspec.Struct, forbid_unknown_fields=True):
    version_a: Version
    version_b: Version


class ReasonRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Message


class BranchRequest(msgspec.Struct, forbid_unknown_fields=True):
    branch_name: BranchName
    base_version: Version
    description: Note = ""


class TestScenario(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The seed's test scenario, and explicit expectations (``agents.preview.Scenario``)."""

    user_message: Text
    expected_behavior: Note = ""
    expect_tool: Name | None = None
    expect_no_tool_calls: bool | None = None
    expect_escalation: bool | None = None
    expect_reply_contains: Name | None = None


class PreviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A candidate (full YAML, or ``changes`` over the active version: top-level keys, and the
    seed's ``voice_settings`` merged into the voice) and what to try on it."""

    yaml_content: Yaml | None = None
    changes: Annotated[dict[ChangeKey, ConfigValue], msgspec.Meta(max_length=50)] | None = None
    test_scenarios: Annotated[list[TestScenario], msgspec.Meta(max_length=50)] = []
    replay_recorded: Annotated[int, msgspec.Meta(ge=0, le=200)] = 0  # how many recorded conversations to replay
    config_id: ConfigId | None = None


class PermissionsRequest(msgspec.Struct, forbid_unknown_fields=True):
    config_permissions: Annotated[dict[perms.Permission, bool], msgspec.Meta(min_length=1)]
    organization_id: ConfigId | None = None


# Responses ------------------------------------------------------------------------------------


class VersionOutcome(msgspec.Struct, kw_only=True):
    """A command's answer on a config version (create, approve, reject, breaking, reload)."""

    config_id: str
    product_type: ProductType
    version: int
    branch: str
    status: a.Status
    active_version: int
    change_type: str
    changes: list[str]
    risk_level: a.RiskLevel
    risk_reasons: list[str]
    breaking_change: bool
    breaking_reasons: list[str]
    requires_approval: bool
    auto_approved: bool
    approvals_missing: list[str]
    position: int
    warnings: list[Issue] = []  # what the YAML check found short of an error
    unchanged: bool = False  # the candidate is the version it was based on: nothing was written


class RollbackAnswer(msgspec.Struct, kw_only=True):
    """The seed's rollback answer: ``active_version`` is the version whose content is now live
    (``rolled_back_to``); the rollback records it as a new version, ``new_current_version``."""

    config_id: str
    product_type: str
    rolled_back_from: int
    rolled_back_to: int
    active_version: int
    new_current_version: int
    kafka_event_published: bool  # the seed's name: the rollback's events are on the stream
    initiated_by: str
    commit_message: str
    pinned_conversations: list[str]  # the blast radius: conversations still open on the version replaced
    applied_at: str
    position: int


class BranchAnswer(msgspec.Struct, kw_only=True):
    config_id: str
    branch_name: str
    base_version: int
    current_version: int
    description: str
    created_at: str
    status: str
    position: int


class MergeAnswer(msgspec.Struct, kw_only=True):
    config_id: str
    branch_name: str
    merged_into: str
    new_version: int
    changes_applied: list[str]
    status: str
    position: int


class PermissionsAnswer(msgspec.Struct, kw_only=True):
    user_id: str
    organization_id: str
    config_permissions: dict[str, bool]
    updated_at: str
    updated_by: str
    position: int


class PermissionsView(msgspec.Struct, kw_only=True):
    """The members' overrides, and the caller's own full matrix (``you``)."""

    organization_id: str
    you: MemberPermissions
    members: list[MemberPermissions]


class Branches(msgspec.Struct, kw_only=True):
    config_id: str
    branches: list[BranchView]


def version_outcome(
    outcome: Outcome[a.AgentConfigState], number: int, *, warnings: list[Issue] | None = None, unchanged: bool = False
) -> VersionOutcome:
    state = outcome.state
    v = state.version(number)
    return VersionOutcome(
        config_id=state.config_id,
        product_type=state.product_type,
        version=v.version,
        branch=v.branch,
        status=v.status,
        active_version=state.active,
        change_type=v.change_type,
        changes=list(v.changes),
        risk_level=v.risk_level,
        risk_reasons=list(v.risk_reasons),
        breaking_change=v.breaking,
        breaking_reasons=list(v.breaking_reasons),
        requires_approval=bool(v.approvals_missing),
        auto_approved=v.branch == a.MAIN and not v.approvals_needed,
        approvals_missing=list(v.approvals_missing),
        position=outcome.position,
        warnings=warnings or [],
        unchanged=unchanged,
    )


def written(done: Written) -> VersionOutcome:
    return version_outcome(done.outcome, done.version, warnings=done.warnings, unchanged=not done.created)


def perms_denied(permission: str) -> Exception:
    return PermissionDeniedError(f"needs the permission: {permission}", missing=[permission])


async def caller_of(config_service: ConfigService, request: Request[Identity, Any, Any]) -> a.Caller:
    who = request.user
    return await config_service.caller(who.tenant, who.subject, who.roles)


async def may_read(
    config_service: ConfigService, positions: Positions, request: Request[Identity, Any, Any], min_position: int | None
) -> None:
    """The caller may view configs (403 otherwise); the read model has passed the position asked for."""
    caller = await caller_of(config_service, request)
    if "view_config" not in caller.granted:
        raise perms_denied("view_config")
    await positions.wait(min_position or position_header(request), "configs")


Limit = Annotated[int, QueryParameter(ge=1, le=200)]
PathVersion = Annotated[int, Parameter(ge=1, le=1_000_000)]
Offset = Annotated[int, QueryParameter(ge=0, le=1_000_000, schema_extra={"minimum": 0})]


class ConfigController(Controller):
    path = "/api/v1"
    tags = ["configs"]
    opt = CONFIG_ROLES

    # Writes -------------------------------------------------------------------------------------

    @post("/configs", status_code=201, summary="Create a config (its version 1)")
    async def create(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[CreateConfigRequest],
        config_service: NamedDependency[ConfigService],
    ) -> VersionOutcome:
        done = await config_service.create_version(
            request.user.tenant,
            data.config_id,
            data.yaml_content,
            await caller_of(config_service, request),
            commit_message=data.commit_message,
            author_type=data.author_type,
            first=True,
        )
        return written(done)

    @post(
        "/configs/{config_id:str}/versions",
        status_code=201,
        summary="Create a config's next version",
        responses={200: ResponseSpec(data_container=VersionOutcome, description="Unchanged: the YAML of its base")},
    )
    async def new_version(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        data: JSONBody[NewVersionRequest],
        config_service: NamedDependency[ConfigService],
    ) -> Response[VersionOutcome]:
        """201 with the new version; 200 and ``unchanged`` when the YAML is the version it is based on."""
        done = await config_service.create_version(
            request.user.tenant,
            config_id,
            data.yaml_content,
            await caller_of(config_service, request),
            commit_message=data.commit_message,
            author_type=data.author_type,
            branch=data.branch,
            based_on=data.based_on,
            command_id=request.headers.get("Idempotency-Key"),
        )
        return Response(written(done), status_code=201 if done.created else 200)

    @post("/configs/validate", status_code=200, summary="Validate a config")
    async def validate(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[ValidateRequest],
        config_service: NamedDependency[ConfigService],
    ) -> ValidationReport:
        """200 with the warnings, and whether it would break the active version of ``config_id``;
        400 with every error, field by field."""
        return await config_service.validate(request.user.tenant, data.yaml_content, data.config_id)

    @post("/configs/{config_id:str}/rollback", status_code=200, summary="Roll back to an earlier version")
    async def rollback(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        data: JSONBody[RollbackRequest],
        config_service: NamedDependency[ConfigService],
    ) -> RollbackAnswer:
        outcome, rolled = await config_service.rollback(
            request.user.tenant,
            config_id,
            await caller_of(config_service, request),
            reason=data.reason,
            initiated_by=data.initiated_by,
            target_version=data.target_version,
        )
        return RollbackAnswer(
            config_id=config_id,
            product_type=outcome.state.product_type,
            rolled_back_from=rolled.from_version,
            rolled_back_to=rolled.to_version,
            active_version=rolled.to_version,
            new_current_version=rolled.new_version,
            kafka_event_published=True,
            initiated_by=rolled.initiated_by,
            commit_message=outcome.state.version(rolled.new_version).commit_message,
            pinned_conversations=rolled.pinned_conversations,
            applied_at=iso(rolled.at),
            position=outcome.position,
        )

    @post("/configs/{config_id:str}/versions/{version:int}/approve", status_code=200, summary="Approve a version")
    async def approve(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        version: PathVersion,
        config_service: NamedDependency[ConfigService],
    ) -> VersionOutcome:
        caller = await caller_of(config_service, request)
        return version_outcome(await config_service.approve(request.user.tenant, config_id, version, caller), version)

    @post("/configs/{config_id:str}/versions/{version:int}/reject", status_code=200, summary="Reject a version")
    async def reject(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        version: PathVersion,
        data: JSONBody[ReasonRequest],
        config_service: NamedDependency[ConfigService],
    ) -> VersionOutcome:
        caller = await caller_of(config_service, request)
        outcome = await config_service.reject(request.user.tenant, config_id, version, caller, reason=data.reason)
        return version_outcome(outcome, version)

    @post(
        "/configs/{config_id:str}/versions/{version:int}/breaking",
        status_code=200,
        summary="Mark a version breaking (it then waits for a manual reload)",
    )
    async def mark_breaking(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        version: PathVersion,
        data: JSONBody[ReasonRequest],
        config_service: NamedDependency[ConfigService],
    ) -> VersionOutcome:
        caller = await caller_of(config_service, request)
        outcome = await config_service.mark_breaking(
            request.user.tenant, config_id, version, caller, reason=data.reason
        )
        return version_outcome(outcome, version)

    @post("/orchestration/reload-config/{config_id:str}", status_code=200, summary="Manual reload (breaking versions)")
    async def reload(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        config_service: NamedDependency[ConfigService],
    ) -> VersionOutcome:
        caller = await caller_of(config_service, request)
        outcome = await config_service.reload(request.user.tenant, config_id, caller)
        return version_outcome(outcome, outcome.state.active)

    @post("/configs/{config_id:str}/versions/compare", status_code=200, summary="Compare two versions")
    async def compare(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        data: JSONBody[CompareRequest],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
    ) -> Comparison:
        """The seed's diff and risk, and each change with its own risk and type (``change_risks``)."""
        await may_read(config_service, positions, request, None)
        return await config_service.compare(request.user.tenant, config_id, data.version_a, data.version_b)

    @post("/configs/{config_id:str}/preview", status_code=200, summary="Preview a candidate config (appends nothing)")
    async def preview(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        data: JSONBody[PreviewRequest],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
    ) -> Preview:
        """The seed's preview: each test scenario run on the candidate in a sandbox and judged against
        its expected behaviour (``success`` null when nothing it says can be checked)."""
        if data.config_id is not None and data.config_id != config_id:
            raise ValidationError("the body names another config", fields={"config_id": f"must be {config_id}"})
        await may_read(config_service, positions, request, None)
        return await config_service.preview(
            request.user.tenant,
            config_id,
            yaml_content=data.yaml_content,
            changes=data.changes,
            scenarios=[Scenario(**msgspec.structs.asdict(s)) for s in data.test_scenarios],
            replay_recorded=data.replay_recorded,
        )

    @post("/configs/{config_id:str}/branches", status_code=201, summary="Create a branch")
    async def create_branch(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        data: JSONBody[BranchRequest],
        config_service: NamedDependency[ConfigService],
    ) -> BranchAnswer:
        caller = await caller_of(config_service, request)
        outcome = await config_service.create_branch(
            request.user.tenant, config_id, data.branch_name, data.base_version, caller, description=data.description
        )
        branch = outcome.state.branches[data.branch_name]
        return BranchAnswer(
            config_id=config_id,
            branch_name=branch.name,
            base_version=branch.base_version,
            current_version=branch.head_version,
            description=branch.description,
            created_at=iso(branch.created_at),
            status=branch.status,
            position=outcome.position,
        )

    @post("/configs/{config_id:str}/branches/{branch:str}/merge", status_code=200, summary="Merge a branch into main")
    async def merge(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        branch: Slug,
        config_service: NamedDependency[ConfigService],
    ) -> MergeAnswer:
        caller = await caller_of(config_service, request)
        outcome = await config_service.merge(request.user.tenant, config_id, branch, caller)
        merged = next(e for e in outcome.events if isinstance(e, a.ConfigBranchMerged))
        return MergeAnswer(
            config_id=config_id,
            branch_name=branch,
            merged_into=a.MAIN,
            new_version=merged.new_version,
            changes_applied=merged.changes_applied,
            status=outcome.state.version(merged.new_version).status,
            position=outcome.position,
        )

    @put("/client-config/permissions/{user_id:str}", status_code=200, summary="Update a member's config permissions")
    async def set_permissions(
        self,
        request: Request[Identity, Any, Any],
        user_id: FromPath[str],
        data: JSONBody[PermissionsRequest],
        config_service: NamedDependency[ConfigService],
    ) -> PermissionsAnswer:
        caller = await caller_of(config_service, request)
        permissions = dict(data.config_permissions)
        outcome = await config_service.set_permissions(request.user.tenant, user_id, permissions, caller)
        return PermissionsAnswer(
            user_id=user_id,
            organization_id=request.user.tenant,
            config_permissions=dict(outcome.state.overrides.get(user_id, {})),
            updated_at=iso(now()),
            updated_by=caller.user_id,
            position=outcome.position,
        )

    @get("/client-config/permissions", summary="Members' config permission overrides")
    async def get_permissions(
        self, request: Request[Identity, Any, Any], config_service: NamedDependency[ConfigService]
    ) -> PermissionsView:
        caller = await caller_of(config_service, request)
        return PermissionsView(
            organization_id=request.user.tenant,
            you=config_service.matrix(caller),
            members=await config_service.permissions_of(request.user.tenant),
        )

    # Reads --------------------------------------------------------------------------------------

    @get("/configs", summary="The tenant's configs")
    async def list_configs(
        self,
        request: Request[Identity, Any, Any],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
        product_type: FromQuery[Literal["chatbot", "voicebot"] | None] = None,
        search: Annotated[str | None, QueryParameter(min_length=1, max_length=64, description="part of the id")] = None,
        pending_approval: Annotated[
            bool | None, QueryParameter(description="has (true) or has not (false) a version waiting for approval")
        ] = None,
        start_date: Annotated[str | None, moment_parameter("updated at or after (a date or a moment)")] = None,
        end_date: Annotated[str | None, moment_parameter("updated before the end of this date (or moment)")] = None,
        limit: Limit = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=500)] = None,
        min_position: MinPosition = None,
    ) -> ConfigPage:
        """The tenant's configs by id, a page at a time (``next_cursor`` gives the next): product
        type, active and latest version, versions waiting for approval, when each last changed."""
        where = ConfigFilter(
            product_type=product_type,
            search=search,
            pending_approval=pending_approval,
            updated_from=moment("start_date", start_date),
            updated_to=moment("end_date", end_date, end=True),
        )
        if where.updated_from and where.updated_to and where.updated_from >= where.updated_to:
            raise ValidationError("the period ends before it starts", fields={"end_date": "must be after start_date"})
        await may_read(config_service, positions, request, min_position)
        return await config_queries.list(request.user.tenant, where, limit=limit, cursor=cursor)

    @get("/configs/schema", summary="The config format as JSON Schema")
    async def schema(self) -> dict[str, Any]:
        return config_json_schema()  # a JSON Schema document: its own shape is the standard's

    @get("/configs/latest", summary="The organization's most recently activated config")
    async def latest(
        self,
        request: Request[Identity, Any, Any],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
        organization_id: FromQuery[str | None] = None,
    ) -> ConfigView:
        return await self._latest(
            request, config_service, positions, config_queries, organization_id or request.user.tenant
        )

    @get("/tenants/{tenant_slug:str}/config", summary="A tenant's config by its slug")
    async def by_tenant(
        self,
        request: Request[Identity, Any, Any],
        tenant_slug: Slug,
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
    ) -> ConfigView:
        return await self._latest(request, config_service, positions, config_queries, tenant_slug)

    async def _latest(
        self,
        request: Request[Identity, Any, Any],
        config_service: ConfigService,
        positions: Positions,
        config_queries: ConfigQueries,
        tenant: str,
    ) -> ConfigView:
        if tenant != request.user.tenant:
            raise NotFoundError(f"organization {tenant} not found")
        await may_read(config_service, positions, request, None)
        found = await config_queries.latest(tenant)
        if found is None:
            raise NotFoundError(f"organization {tenant} has no active config")
        return found

    @get("/configs/{config_id:str}", summary="Get a config (active, a version, or as of a moment)")
    async def get_config(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_reads: NamedDependency[ConfigReads],
        version: Annotated[int | None, QueryParameter(ge=1, le=1_000_000)] = None,
        at: FromQuery[datetime | None] = None,
        min_position: MinPosition = None,
    ) -> ConfigView:
        if version is not None and at is not None:
            raise ValidationError("give a version or a moment, not both", fields={"at": "not with version"})
        await may_read(config_service, positions, request, min_position)
        found = await config_reads.get(request.user.tenant, config_id, version=version, at=at)
        if found is None:
            raise NotFoundError(
                f"config {config_id} not found" + (f" as asked ({version or at})" if version or at else "")
            )
        return found

    @get("/configs/{config_id:str}/versions", summary="A config's versions")
    async def versions(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
        limit: Limit = 50,
        offset: Offset = 0,
        min_position: MinPosition = None,
    ) -> VersionsPage:
        await may_read(config_service, positions, request, min_position)
        found = await config_queries.versions(request.user.tenant, config_id, limit=limit, offset=offset)
        if found is None:
            raise NotFoundError(f"config {config_id} not found")
        return found

    @get("/configs/{config_id:str}/history", summary="A config's change history")
    async def history(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
        author_type: FromQuery[
            Literal["client_user", "platform_engineer", "ai_agent", "automation", "monitor", "all"]
        ] = "all",
        limit: Limit = 50,
        offset: Offset = 0,
        min_position: MinPosition = None,
    ) -> History:
        await may_read(config_service, positions, request, min_position)
        chosen = None if author_type == "all" else author_type
        found = await config_queries.history(
            request.user.tenant, config_id, limit=limit, offset=offset, author_type=chosen
        )
        if found is None:
            raise NotFoundError(f"config {config_id} not found")
        return found

    @get("/configs/{config_id:str}/branches", summary="A config's branches")
    async def branches(
        self,
        request: Request[Identity, Any, Any],
        config_id: Slug,
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
    ) -> Branches:
        await may_read(config_service, positions, request, None)
        return Branches(config_id=config_id, branches=await config_queries.branches(request.user.tenant, config_id))
