"""The seed's Configuration Management Service: agent configs as events, over HTTP.

Writes are commands on the config's aggregate (``commands.config.ConfigService``); what a caller
may do follows the seed's permission matrix from their roles and the tenant's overrides, and a
refusal is a 403 that appends nothing. Reads come from the ``configs`` read model and wait, like
every query, for a ``min_position`` or ``X-Parley-Position`` when one is given.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from agents.preview import Scenario
from commands.config import ConfigService
from commands.runner import Outcome
from domain import config as a
from domain import permissions as perms
from domain.bot import config_json_schema, parse_yaml
from domain.errors import NotFoundError, PermissionDeniedError, ValidationError
from gateways.http.auth import Identity, requires
from gateways.http.common import iso as _iso
from gateways.http.common import now as _now
from gateways.http.common import position_header
from gateways.http.positions import Positions
from read_models.config import ConfigQueries, ConfigReads

ConfigId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Yaml = Annotated[str, msgspec.Meta(min_length=1, max_length=200_000)]
Message = Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]
AuthorType = Literal["client_user", "platform_engineer", "ai_agent", "automation"]
# Anyone who works on configs reaches these endpoints; what each may do is the permission matrix's.
CONFIG_ROLES = requires("org_admin", "config_manager", "config_viewer", "platform_engineer", "support_agent", "service")


class CreateConfigRequest(msgspec.Struct, forbid_unknown_fields=True):
    config_id: ConfigId
    yaml_content: Yaml
    commit_message: Message = "initial_generation"
    author_type: AuthorType = "client_user"


class NewVersionRequest(msgspec.Struct, forbid_unknown_fields=True):
    yaml_content: Yaml
    commit_message: Message
    author_type: AuthorType = "client_user"
    based_on: int | None = None
    branch: str = a.MAIN


class ValidateRequest(msgspec.Struct, forbid_unknown_fields=True):
    yaml_content: Yaml
    config_id: str | None = None


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Message
    target_version: int | None = None
    initiated_by: Literal["client_user", "platform_engineer"] = "client_user"
    user_id: str | None = None
    notify_team: bool = False


class CompareRequest(msgspec.Struct, forbid_unknown_fields=True):
    version_a: int
    version_b: int


class ReasonRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Message


class BranchRequest(msgspec.Struct, forbid_unknown_fields=True):
    branch_name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    base_version: int
    description: str = ""


class PreviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A candidate (full YAML, or ``changes`` over the active version: top-level keys, and the
    seed's ``voice_settings`` merged into the voice) and what to try on it."""

    yaml_content: Yaml | None = None
    changes: dict[str, Any] | None = None
    test_scenarios: Annotated[list[Scenario], msgspec.Meta(max_length=50)] = []
    replay_recorded: Annotated[int, msgspec.Meta(ge=0, le=200)] = 0  # how many recorded conversations to replay
    config_id: str | None = None


class PermissionsRequest(msgspec.Struct, forbid_unknown_fields=True):
    config_permissions: dict[str, bool]
    organization_id: str | None = None


def _version_body(outcome: Outcome[a.AgentConfigState], number: int) -> dict[str, Any]:
    v = outcome.state.version(number)
    return {
        "config_id": outcome.state.config_id,
        "product_type": outcome.state.product_type,
        "version": v.version,
        "branch": v.branch,
        "status": v.status,
        "active_version": outcome.state.active,
        "change_type": v.change_type,
        "changes": list(v.changes),
        "risk_level": v.risk_level,
        "risk_reasons": list(v.risk_reasons),
        "breaking_change": v.breaking,
        "breaking_reasons": list(v.breaking_reasons),
        "requires_approval": bool(v.approvals_missing),
        "auto_approved": v.branch == a.MAIN and not v.approvals_needed,
        "approvals_missing": list(v.approvals_missing),
        "position": outcome.position,
    }


def _created(outcome: Outcome[a.AgentConfigState]) -> int:
    created = [e for e in outcome.events if isinstance(e, a.ConfigVersionCreated)]
    return created[0].version if created else outcome.state.latest


class ConfigController(Controller):
    path = "/api/v1"
    tags = ["configs"]
    opt = CONFIG_ROLES

    async def _caller(
        self, config_service: NamedDependency[ConfigService], request: Request[Identity, Any, Any]
    ) -> a.Caller:
        who = request.user
        return await config_service.caller(who.tenant, who.subject, who.roles)

    async def _read(
        self,
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        request: Request[Identity, Any, Any],
        min_position: int | None,
    ) -> None:
        caller = await self._caller(config_service, request)
        if "view_config" not in caller.granted:
            raise perms_denied("view_config")
        await positions.wait(min_position or position_header(request), "configs")

    # Writes -------------------------------------------------------------------------------------

    @post("/configs", status_code=201, summary="Create a config (its version 1)")
    async def create(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[CreateConfigRequest],
        config_service: NamedDependency[ConfigService],
    ) -> Response[dict[str, Any]]:
        service = config_service
        caller = await self._caller(config_service, request)
        outcome, issues = await service.create_version(
            request.user.tenant,
            data.config_id,
            data.yaml_content,
            caller,
            commit_message=data.commit_message,
            author_type=data.author_type,
            first=True,
        )
        body = _version_body(outcome, _created(outcome))
        body["warnings"] = [msgspec.to_builtins(i) for i in issues if i.severity != "error"]
        return Response(body, status_code=201)

    @post("/configs/{config_id:str}/versions", status_code=201, summary="Create a config's next version")
    async def new_version(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        data: JSONBody[NewVersionRequest],
        config_service: NamedDependency[ConfigService],
    ) -> Response[dict[str, Any]]:
        caller = await self._caller(config_service, request)
        outcome, issues = await config_service.create_version(
            request.user.tenant,
            config_id,
            data.yaml_content,
            caller,
            commit_message=data.commit_message,
            author_type=data.author_type,
            branch=data.branch,
            based_on=data.based_on,
            command_id=request.headers.get("Idempotency-Key"),
        )
        if not outcome.events:
            body = _version_body(outcome, outcome.state.active or outcome.state.latest)
            body["unchanged"] = True
            return Response(body, status_code=200)
        body = _version_body(outcome, _created(outcome))
        body["warnings"] = [msgspec.to_builtins(i) for i in issues if i.severity != "error"]
        return Response(body, status_code=201)

    @post("/configs/validate", status_code=200, summary="Validate a config")
    async def validate(
        self,
        request: Request[Identity, Any, Any],
        data: JSONBody[ValidateRequest],
        config_service: NamedDependency[ConfigService],
    ) -> dict[str, Any]:
        raw, issues = config_service.check(data.yaml_content)
        breaking = False
        if data.config_id:
            try:
                state = await config_service.catalog.state(request.user.tenant, data.config_id)
            except NotFoundError:
                state = None
            if state is not None and state.active:
                assessed = config_service.assess(parse_yaml(state.version(state.active).yaml_content), raw)
                breaking = assessed.breaking
        return {
            "valid": True,
            "errors": [],
            "warnings": [msgspec.to_builtins(i) for i in issues if i.severity != "error"],
            "schema_version": "1.0",
            "breaking_change_detected": breaking,
            "product_type": raw.get("product_type"),
        }

    @post("/configs/{config_id:str}/rollback", status_code=200, summary="Roll back to an earlier version")
    async def rollback(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        data: JSONBody[RollbackRequest],
        config_service: NamedDependency[ConfigService],
    ) -> dict[str, Any]:
        """The seed's rollback answer: ``active_version`` is the version whose content is now live
        (``rolled_back_to``); the rollback records it as a new version, ``new_current_version``."""
        caller = await self._caller(config_service, request)
        outcome, rolled = await config_service.rollback(
            request.user.tenant,
            config_id,
            caller,
            reason=data.reason,
            initiated_by=data.initiated_by,
            target_version=data.target_version,
        )
        return {
            "config_id": config_id,
            "product_type": outcome.state.product_type,
            "rolled_back_from": rolled.from_version,
            "rolled_back_to": rolled.to_version,
            "active_version": rolled.to_version,
            "new_current_version": rolled.new_version,
            "kafka_event_published": True,  # the seed's name: the rollback's events are on the stream
            "initiated_by": rolled.initiated_by,
            "commit_message": outcome.state.version(rolled.new_version).commit_message,
            "pinned_conversations": rolled.pinned_conversations,
            "applied_at": _iso(rolled.at),
            "position": outcome.position,
        }

    @post("/configs/{config_id:str}/versions/{version:int}/approve", status_code=200, summary="Approve a version")
    async def approve(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        version: FromPath[int],
        config_service: NamedDependency[ConfigService],
    ) -> dict[str, Any]:
        caller = await self._caller(config_service, request)
        command = a.ApproveConfigVersion(version=version, caller=caller, at=_now())
        return _version_body(await config_service.run(request.user.tenant, config_id, command), version)

    @post("/configs/{config_id:str}/versions/{version:int}/reject", status_code=200, summary="Reject a version")
    async def reject(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        version: FromPath[int],
        data: JSONBody[ReasonRequest],
        config_service: NamedDependency[ConfigService],
    ) -> dict[str, Any]:
        caller = await self._caller(config_service, request)
        command = a.RejectConfigVersion(version=version, reason=data.reason, caller=caller, at=_now())
        return _version_body(await config_service.run(request.user.tenant, config_id, command), version)

    @post(
        "/configs/{config_id:str}/versions/{version:int}/breaking",
        status_code=200,
        summary="Mark a version breaking (it then waits for a manual reload)",
    )
    async def mark_breaking(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        version: FromPath[int],
        data: JSONBody[ReasonRequest],
        config_service: NamedDependency[ConfigService],
    ) -> dict[str, Any]:
        caller = await self._caller(config_service, request)
        command = a.MarkConfigVersionBreaking(version=version, reason=data.reason, caller=caller, at=_now())
        return _version_body(await config_service.run(request.user.tenant, config_id, command), version)

    @post("/orchestration/reload-config/{config_id:str}", status_code=200, summary="Manual reload (breaking versions)")
    async def reload(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        config_service: NamedDependency[ConfigService],
    ) -> dict[str, Any]:
        caller = await self._caller(config_service, request)
        outcome = await config_service.run(request.user.tenant, config_id, a.ReloadConfig(caller=caller, at=_now()))
        return _version_body(outcome, outcome.state.active)

    @post("/configs/{config_id:str}/versions/compare", status_code=200, summary="Compare two versions")
    async def compare(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        data: JSONBody[CompareRequest],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
    ) -> dict[str, Any]:
        await self._read(config_service, positions, request, None)
        return await config_service.compare(request.user.tenant, config_id, data.version_a, data.version_b)

    @post("/configs/{config_id:str}/preview", status_code=200, summary="Preview a candidate config (appends nothing)")
    async def preview(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        data: JSONBody[PreviewRequest],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
    ) -> dict[str, Any]:
        """The seed's preview: each test scenario run on the candidate in a sandbox and judged against
        its expected behaviour (``success`` null when nothing it says can be checked)."""
        if data.config_id is not None and data.config_id != config_id:
            raise ValidationError("the body names another config", fields={"config_id": f"must be {config_id}"})
        if data.yaml_content is not None and data.changes is not None:
            raise ValidationError("give yaml_content or changes, not both", fields={"changes": "not with yaml_content"})
        await self._read(config_service, positions, request, None)
        return await config_service.preview(
            request.user.tenant,
            config_id,
            yaml_content=data.yaml_content,
            changes=data.changes,
            scenarios=data.test_scenarios,
            replay_recorded=data.replay_recorded,
        )

    @post("/configs/{config_id:str}/branches", status_code=201, summary="Create a branch")
    async def create_branch(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        data: JSONBody[BranchRequest],
        config_service: NamedDependency[ConfigService],
    ) -> dict[str, Any]:
        caller = await self._caller(config_service, request)
        command = a.CreateConfigBranch(
            branch=data.branch_name,
            base_version=data.base_version,
            description=data.description,
            caller=caller,
            at=_now(),
        )
        outcome = await config_service.run(request.user.tenant, config_id, command)
        branch = outcome.state.branches[data.branch_name]
        return {
            "config_id": config_id,
            "branch_name": branch.name,
            "base_version": branch.base_version,
            "current_version": branch.head_version,
            "description": branch.description,
            "created_at": _iso(branch.created_at),
            "status": branch.status,
            "position": outcome.position,
        }

    @post("/configs/{config_id:str}/branches/{branch:str}/merge", status_code=200, summary="Merge a branch into main")
    async def merge(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        branch: FromPath[str],
        config_service: NamedDependency[ConfigService],
    ) -> dict[str, Any]:
        caller = await self._caller(config_service, request)
        outcome = await config_service.merge(request.user.tenant, config_id, branch, caller)
        merged = next(e for e in outcome.events if isinstance(e, a.ConfigBranchMerged))
        return {
            "config_id": config_id,
            "branch_name": branch,
            "merged_into": a.MAIN,
            "new_version": merged.new_version,
            "changes_applied": merged.changes_applied,
            **{k: v for k, v in _version_body(outcome, merged.new_version).items() if k in ("status", "position")},
        }

    @put("/client-config/permissions/{user_id:str}", status_code=200, summary="Update a member's config permissions")
    async def set_permissions(
        self,
        request: Request[Identity, Any, Any],
        user_id: FromPath[str],
        data: JSONBody[PermissionsRequest],
        config_service: NamedDependency[ConfigService],
    ) -> dict[str, Any]:
        caller = await self._caller(config_service, request)
        outcome = await config_service.set_permissions(request.user.tenant, user_id, data.config_permissions, caller)
        return {
            "user_id": user_id,
            "organization_id": request.user.tenant,
            "config_permissions": outcome.state.overrides.get(user_id, {}),
            "updated_at": _iso(_now()),
            "updated_by": caller.user_id,
            "position": outcome.position,
        }

    @get("/client-config/permissions", summary="Members' config permission overrides")
    async def get_permissions(
        self, request: Request[Identity, Any, Any], config_service: NamedDependency[ConfigService]
    ) -> dict[str, Any]:
        caller = await self._caller(config_service, request)
        overrides = await config_service.permissions_of(request.user.tenant)
        return {
            "organization_id": request.user.tenant,
            "you": {
                "user_id": caller.user_id,
                "config_permissions": {p: p in caller.granted for p in perms.PERMISSIONS},
            },
            "members": [{"user_id": u, "config_permissions": o} for u, o in sorted(overrides.items())],
        }

    # Reads --------------------------------------------------------------------------------------

    @get("/configs/schema", summary="The config format as JSON Schema")
    async def schema(self) -> dict[str, Any]:
        return config_json_schema()

    @get("/configs/latest", summary="The organization's most recently activated config")
    async def latest(
        self,
        request: Request[Identity, Any, Any],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
        organization_id: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        return await self._latest(
            request, config_service, positions, config_queries, organization_id or request.user.tenant
        )

    @get("/tenants/{tenant_slug:str}/config", summary="A tenant's config by its slug")
    async def by_tenant(
        self,
        request: Request[Identity, Any, Any],
        tenant_slug: FromPath[str],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
    ) -> dict[str, Any]:
        return await self._latest(request, config_service, positions, config_queries, tenant_slug)

    async def _latest(
        self,
        request: Request[Identity, Any, Any],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
        tenant: str,
    ) -> dict[str, Any]:
        if tenant != request.user.tenant:
            raise NotFoundError(f"organization {tenant} not found")
        await self._read(config_service, positions, request, None)
        found = await config_queries.latest(tenant)
        if found is None:
            raise NotFoundError(f"organization {tenant} has no active config")
        return found

    @get("/configs/{config_id:str}", summary="Get a config (active, a version, or as of a moment)")
    async def get_config(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_reads: NamedDependency[ConfigReads],
        version: Annotated[int | None, QueryParameter(ge=1)] = None,
        at: FromQuery[datetime | None] = None,
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> dict[str, Any]:
        if version is not None and at is not None:
            raise ValidationError("give a version or a moment, not both", fields={"at": "not with version"})
        await self._read(config_service, positions, request, min_position)
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
        config_id: FromPath[str],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        offset: Annotated[int, QueryParameter(ge=0)] = 0,
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> dict[str, Any]:
        await self._read(config_service, positions, request, min_position)
        found = await config_queries.versions(request.user.tenant, config_id, limit=limit, offset=offset)
        if found is None:
            raise NotFoundError(f"config {config_id} not found")
        return found

    @get("/configs/{config_id:str}/history", summary="A config's change history")
    async def history(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
        author_type: FromQuery[
            Literal["client_user", "platform_engineer", "ai_agent", "automation", "monitor", "all"]
        ] = "all",
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        offset: Annotated[int, QueryParameter(ge=0)] = 0,
        min_position: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> dict[str, Any]:
        await self._read(config_service, positions, request, min_position)
        chosen = None if author_type == "all" else author_type
        found, rolled = await config_queries.history(
            request.user.tenant, config_id, limit=limit, offset=offset, author_type=chosen
        )
        if found is None:
            raise NotFoundError(f"config {config_id} not found")
        changes = [
            {
                "change_id": f"{config_id}-v{v['version']}",
                "version": f"v{v['version']}",
                "author": v["created_by"],
                "author_type": v["author_type"],
                "change_type": v["change_type"],
                "commit_message": v["commit_message"],
                "risk_level": v["risk_level"],
                "approved_by": ", ".join(x["approver"] for x in v["approvals"]) or None,
                "applied_at": v["activated_at"],
                "status": v["status"],
                "rolled_back": v["rolled_back"],
            }
            for v in found["versions"]
        ]
        return {
            "config_id": config_id,
            "product_type": found["product_type"],
            "total_changes": found["total_versions"],
            "changes": changes,
            "rollbacks": rolled,
        }

    @get("/configs/{config_id:str}/branches", summary="A config's branches")
    async def branches(
        self,
        request: Request[Identity, Any, Any],
        config_id: FromPath[str],
        config_service: NamedDependency[ConfigService],
        positions: NamedDependency[Positions],
        config_queries: NamedDependency[ConfigQueries],
    ) -> dict[str, Any]:
        await self._read(config_service, positions, request, None)
        return {"config_id": config_id, "branches": await config_queries.branches(request.user.tenant, config_id)}


def perms_denied(permission: str) -> Exception:
    return PermissionDeniedError(f"needs the permission: {permission}", missing=[permission])
