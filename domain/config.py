"""A tenant's agent config as a pure decider: versions, approvals, activation, rollback, branches.

Every change to a config is an event, so its whole history can be read, compared and restored.

- A version holds the full YAML (``ConfigVersionCreated``). Versions are numbered 1, 2, 3 ... per
  config, on ``main`` or on a branch; only a ``main`` version can become the active one.
- The *active* version is the one new conversations are pinned to. It changes only through
  ``ConfigVersionActivated``, which is what runtimes follow to hot-reload.
- Risk decides who must approve before a version goes live (the seed's approval workflow): low
  (voice parameters, wording) is auto-approved and applies at once, whoever may make it (a config
  manager's tone change too); medium needs an organization admin; high needs an admin and a
  platform engineer. Authors do not approve their own versions.
- A breaking version is not activated automatically, even once approved: it waits for a manual
  reload (``ReloadConfig``), as in the seed's hot-reload strategy.
- A rollback creates a new version whose content is the target's (``ConfigRolledBack`` names both,
  and the conversations pinned to the version being rolled back: its blast radius).

The caller's permissions come in the command (``granted``), computed by the command handler from
the caller's roles and the tenant's permission overrides; the decider refuses what they do not
allow (403) before anything is written. YAML parsing, validation and comparison happen in the
handler too (they are not pure I/O-free code here): a command carries their results.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from domain.errors import IllegalStateError, NotFoundError, PermissionDeniedError, ValidationError
from domain.messages import Command, Decider, Event

# Its events were first stored from ``domain.agent_config`` (their topics keep that name: ``streams.codec``).
STORED_AS = "domain.agent_config"
AGGREGATE_TYPE = "agent_config"
MAIN = "main"

RiskLevel = Literal["low", "medium", "high"]
AuthorType = Literal["client_user", "platform_engineer", "ai_agent", "automation", "monitor", "system"]
Status = Literal["pending_approval", "awaiting_reload", "active", "archived", "rejected", "draft"]

ADMIN, ENGINEER = "org_admin", "platform_engineer"
DEPLOY, ROLLBACK = "deploy_to_production", "rollback_versions"


def approvals_for(risk_level: str) -> tuple[str, ...]:
    """The roles that must approve a version before it goes live (one approval per role); none
    for a low-risk change, which the seed auto-approves."""
    return {"low": (), "medium": (ADMIN,), "high": (ADMIN, ENGINEER)}[risk_level]


# Events ---------------------------------------------------------------------------------------


class ConfigVersionCreated(Event, frozen=True, kw_only=True):
    config_id: str
    version: int
    branch: str = MAIN
    based_on: int = 0  # the version it was written against (0: the first)
    yaml_content: str
    digest: str
    product_type: str
    author: str
    author_type: str
    commit_message: str
    change_type: str
    changes: list[str] = []
    risk_level: str
    risk_reasons: list[str] = []
    breaking: bool = False
    breaking_reasons: list[str] = []
    approvals_needed: list[str] = []
    # For a change that needs approval: how the candidate answers the tenant's recorded conversations.
    evidence: dict[str, object] | None = None
    at: datetime

    time_field = "at"


class ConfigVersionApproved(Event, frozen=True, kw_only=True):
    version: int
    approver: str
    role: str
    at: datetime

    time_field = "at"


class ConfigVersionRejected(Event, frozen=True, kw_only=True):
    version: int
    rejected_by: str
    reason: str
    at: datetime

    time_field = "at"


class ConfigVersionMarkedBreaking(Event, frozen=True, kw_only=True):
    version: int
    marked_by: str
    reason: str
    at: datetime

    time_field = "at"


class ConfigVersionActivated(Event, frozen=True, kw_only=True):
    """New conversations now start on ``version``; ``previous`` was active until now (0: none)."""

    version: int
    previous: int
    reason: Literal["created", "approved", "reloaded", "rollback", "merged"]
    at: datetime

    time_field = "at"


class ConfigRolledBack(Event, frozen=True, kw_only=True):
    from_version: int
    to_version: int
    new_version: int
    reason: str
    initiated_by: str  # client_user | platform_engineer | monitor
    user_id: str | None = None
    pinned_conversations: list[str] = []  # the blast radius: still on ``from_version``
    at: datetime

    time_field = "at"


class ConfigBranchCreated(Event, frozen=True, kw_only=True):
    branch: str
    base_version: int
    description: str = ""
    created_by: str
    at: datetime

    time_field = "at"


class ConfigBranchMerged(Event, frozen=True, kw_only=True):
    branch: str
    head_version: int
    new_version: int
    changes_applied: list[str] = []
    merged_by: str
    at: datetime

    time_field = "at"


# Commands -------------------------------------------------------------------------------------


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who asks, and what they may do (the seed's permission matrix, resolved by the handler)."""

    user_id: str
    roles: frozenset[str] = frozenset()
    granted: frozenset[str] = frozenset()


class Assessment(msgspec.Struct, frozen=True, kw_only=True):
    """What the handler found comparing the candidate with the version it is based on."""

    product_type: str
    digest: str
    change_type: str
    changes: list[str] = []
    risk_level: str = "low"
    risk_reasons: list[str] = []
    breaking: bool = False
    breaking_reasons: list[str] = []
    required: frozenset[str] = frozenset()  # the edit permissions the change needs
    evidence: dict[str, object] | None = None  # a replay of recorded conversations (medium or high risk)


class CreateConfigVersion(Command, frozen=True, kw_only=True):
    """``first``: the config's version 1, so the config must not exist yet (409 if it does); else
    its next version, so it must (404). Decided here, on the stream's state: of two creates racing
    for one id, one is appended and the other refused."""

    config_id: str
    yaml_content: str
    assessment: Assessment
    commit_message: str
    author_type: str
    caller: Caller
    branch: str = MAIN
    based_on: int | None = None  # optimistic check by the client: the version it edited
    first: bool = False
    at: datetime


class ApproveConfigVersion(Command, frozen=True, kw_only=True):
    version: int
    caller: Caller
    at: datetime


class RejectConfigVersion(Command, frozen=True, kw_only=True):
    version: int
    reason: str
    caller: Caller
    at: datetime


class MarkConfigVersionBreaking(Command, frozen=True, kw_only=True):
    version: int
    reason: str
    caller: Caller
    at: datetime


class ReloadConfig(Command, frozen=True, kw_only=True):
    """The seed's manual reload: activate the newest approved version waiting for it."""

    caller: Caller
    at: datetime


class RollbackConfig(Command, frozen=True, kw_only=True):
    """``pinned_conversations`` are those open on ``from_version`` (the version to roll back, when
    the caller names it): if another version became active meanwhile, the rollback is refused
    rather than recorded with the wrong blast radius."""

    target_version: int | None = None  # None: the version active before the current one
    reason: str
    initiated_by: str
    caller: Caller
    pinned_conversations: list[str] = []
    from_version: int | None = None
    at: datetime


class CreateConfigBranch(Command, frozen=True, kw_only=True):
    branch: str
    base_version: int
    description: str = ""
    caller: Caller
    at: datetime


class MergeConfigBranch(Command, frozen=True, kw_only=True):
    branch: str
    assessment: Assessment  # the branch head compared with the active version
    caller: Caller
    at: datetime


# State ----------------------------------------------------------------------------------------


class Version(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    branch: str
    based_on: int
    yaml_content: str
    digest: str
    product_type: str
    author: str
    author_type: str
    commit_message: str
    change_type: str
    changes: tuple[str, ...]
    risk_level: str
    risk_reasons: tuple[str, ...]
    breaking: bool
    breaking_reasons: tuple[str, ...]
    approvals_needed: tuple[str, ...]
    approvals: tuple[tuple[str, str], ...] = ()  # (approver, role)
    status: str
    created_at: datetime
    activated_at: datetime | None = None
    rolled_back_to: int | None = None  # a rollback's new version: whose content it restored
    rejected_reason: str | None = None

    @property
    def approvals_missing(self) -> tuple[str, ...]:
        given = {role for _, role in self.approvals}
        return tuple(role for role in self.approvals_needed if role not in given)


class Branch(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    base_version: int
    head_version: int
    description: str
    status: Literal["active", "merged"] = "active"
    created_at: datetime


class AgentConfigState(msgspec.Struct, frozen=True):
    config_id: str = ""
    product_type: str = ""
    versions: dict[int, Version] = {}
    active: int = 0
    activations: tuple[tuple[int, datetime], ...] = ()  # (version, when), oldest first
    branches: dict[str, Branch] = {}

    @property
    def exists(self) -> bool:
        return bool(self.versions)

    @property
    def latest(self) -> int:
        return max(self.versions, default=0)

    def version(self, number: int) -> Version:
        found = self.versions.get(number)
        if found is None:
            raise NotFoundError(f"config {self.config_id} has no version {number}")
        return found

    def active_at(self, moment: datetime) -> int:
        """The version new conversations got at ``moment`` (0: none was active yet)."""
        active = 0
        for version, when in self.activations:
            if when > moment:
                break
            active = version
        return active


def initial() -> AgentConfigState:
    return AgentConfigState()


# Deciding -------------------------------------------------------------------------------------


def _require(caller: Caller, *permissions: str) -> None:
    missing = sorted(set(permissions) - caller.granted)
    if missing:
        raise PermissionDeniedError(f"needs the permission(s): {', '.join(missing)}", missing=missing)


def _activation(state: AgentConfigState, version: int, reason: str, at: datetime) -> ConfigVersionActivated:
    return ConfigVersionActivated(version=version, previous=state.active, reason=reason, at=at)  # type: ignore[arg-type]


def decide(command: Command, state: AgentConfigState) -> list[Event]:
    match command:
        case CreateConfigVersion():
            return _create(command, state)
        case ApproveConfigVersion():
            return _approve(command, state)
        case RejectConfigVersion():
            version = state.version(command.version)
            if version.status != "pending_approval":
                raise IllegalStateError(f"version {command.version} is {version.status}, not pending approval")
            if not command.caller.roles & {ADMIN, ENGINEER}:
                raise PermissionDeniedError("only an organization admin or a platform engineer may reject")
            return [
                ConfigVersionRejected(
                    version=command.version, rejected_by=command.caller.user_id, reason=command.reason, at=command.at
                )
            ]
        case MarkConfigVersionBreaking():
            version = state.version(command.version)
            if ENGINEER not in command.caller.roles:
                raise PermissionDeniedError("only a platform engineer marks a version breaking")
            if version.breaking:
                return []
            if version.status in ("active", "archived", "rejected"):
                raise IllegalStateError(f"version {command.version} is {version.status}; it cannot be held back now")
            return [
                ConfigVersionMarkedBreaking(
                    version=command.version, marked_by=command.caller.user_id, reason=command.reason, at=command.at
                )
            ]
        case ReloadConfig():
            _require(command.caller, DEPLOY)
            waiting = [v for v in state.versions.values() if v.status == "awaiting_reload"]
            if not waiting:
                raise IllegalStateError(f"config {state.config_id} has no version waiting for a reload")
            return [_activation(state, max(v.version for v in waiting), "reloaded", command.at)]
        case RollbackConfig():
            return _rollback(command, state)
        case CreateConfigBranch():
            _require(command.caller, "view_config")
            if not state.exists:
                raise NotFoundError("config not found")
            if command.branch == MAIN or command.branch in state.branches:
                raise IllegalStateError(f"branch {command.branch} already exists")
            base = state.version(command.base_version)
            if base.branch != MAIN:
                raise ValidationError("a branch starts from a main version", fields={"base_version": "not on main"})
            return [
                ConfigBranchCreated(
                    branch=command.branch,
                    base_version=command.base_version,
                    description=command.description,
                    created_by=command.caller.user_id,
                    at=command.at,
                )
            ]
        case MergeConfigBranch():
            return _merge(command, state)
    raise ValidationError(f"{type(command).__name__} is not an agent config command")


def _create(command: CreateConfigVersion, state: AgentConfigState) -> list[Event]:
    a = command.assessment
    _require(command.caller, "view_config", *a.required)
    if command.first and state.exists:
        raise IllegalStateError(f"config {command.config_id} already exists", config_id=command.config_id)
    if not command.first and not state.exists:
        raise NotFoundError(f"config {command.config_id} not found", config_id=command.config_id)
    if state.exists and a.product_type != state.product_type:
        raise ValidationError(
            f"config {state.config_id} is a {state.product_type}; a version cannot make it a {a.product_type}",
            fields={"product_type": f"must stay {state.product_type}"},
        )
    if command.branch != MAIN:
        branch = state.branches.get(command.branch)
        if branch is None or branch.status != "active":
            raise NotFoundError(f"branch {command.branch} not found")
        head = branch.head_version
    else:
        head = state.active or state.latest
    if command.based_on is not None and command.based_on != head:
        raise IllegalStateError(
            f"the change was written against version {command.based_on}, but {command.branch} is at {head}",
            based_on=command.based_on,
            current=head,
        )
    if state.exists and state.versions[head].digest == a.digest:
        return []  # nothing changed
    needed = approvals_for(a.risk_level)
    created = ConfigVersionCreated(
        config_id=command.config_id,
        version=state.latest + 1,
        branch=command.branch,
        based_on=head,
        yaml_content=command.yaml_content,
        digest=a.digest,
        product_type=a.product_type,
        author=command.caller.user_id,
        author_type=command.author_type,
        commit_message=command.commit_message,
        change_type=a.change_type,
        changes=list(a.changes),
        risk_level=a.risk_level,
        risk_reasons=list(a.risk_reasons),
        breaking=a.breaking,
        breaking_reasons=list(a.breaking_reasons),
        approvals_needed=list(needed) if command.branch == MAIN else [],
        evidence=a.evidence if needed else None,
        at=command.at,
    )
    if command.branch != MAIN or needed or a.breaking:
        return [created]
    return [created, _activation(state, created.version, "created", command.at)]


def _approve(command: ApproveConfigVersion, state: AgentConfigState) -> list[Event]:
    version = state.version(command.version)
    if version.status != "pending_approval":
        raise IllegalStateError(f"version {command.version} is {version.status}, not pending approval")
    caller = command.caller
    if caller.user_id == version.author:
        raise PermissionDeniedError("authors do not approve their own versions")
    if any(approver == caller.user_id for approver, _ in version.approvals):
        # Distinct roles are distinct people: one person holding both approves once.
        raise PermissionDeniedError(
            f"version {command.version} already has your approval; "
            f"{', '.join(version.approvals_missing)} must come from someone else"
        )
    role = next((r for r in version.approvals_missing if r in caller.roles), None)
    if role is None:
        missing = ", ".join(version.approvals_missing)
        raise PermissionDeniedError(f"version {command.version} waits for the approval of: {missing}")
    approved = ConfigVersionApproved(version=command.version, approver=caller.user_id, role=role, at=command.at)
    if len(version.approvals_missing) > 1 or version.breaking:
        return [approved]
    return [approved, _activation(state, command.version, "approved", command.at)]


def _rollback(command: RollbackConfig, state: AgentConfigState) -> list[Event]:
    _require(command.caller, ROLLBACK)
    if not state.active:
        raise IllegalStateError(f"config {state.config_id or '?'} has no active version to roll back")
    if command.from_version is not None and command.from_version != state.active:
        raise IllegalStateError(
            f"version {command.from_version} is no longer active (version {state.active} is)",
            from_version=command.from_version,
            active_version=state.active,
        )
    target_number = command.target_version
    if target_number is None:
        earlier = [v for v, _ in state.activations if v != state.active]
        if not earlier:
            raise IllegalStateError("there is no earlier active version to roll back to")
        target_number = earlier[-1]
    target = state.version(target_number)
    if target.branch != MAIN or target.activated_at is None:
        raise IllegalStateError(f"version {target_number} was never active; only a version that was can be restored")
    if target_number == state.active:
        raise IllegalStateError(f"version {target_number} is already active")
    new = state.latest + 1
    created = ConfigVersionCreated(
        config_id=state.config_id,
        version=new,
        based_on=state.active,
        yaml_content=target.yaml_content,
        digest=target.digest,
        product_type=target.product_type,
        author=command.caller.user_id,
        author_type=command.initiated_by,
        commit_message=f"Rollback to v{target_number}: {command.reason}",
        change_type="rollback",
        changes=[f"rollback:v{state.active}->v{target_number}"],
        risk_level="low",
        at=command.at,
    )
    rolled = ConfigRolledBack(
        from_version=state.active,
        to_version=target_number,
        new_version=new,
        reason=command.reason,
        initiated_by=command.initiated_by,
        user_id=command.caller.user_id,
        pinned_conversations=command.pinned_conversations,
        at=command.at,
    )
    return [created, rolled, _activation(state, new, "rollback", command.at)]


def _merge(command: MergeConfigBranch, state: AgentConfigState) -> list[Event]:
    branch = state.branches.get(command.branch)
    if branch is None or branch.status != "active":
        raise NotFoundError(f"branch {command.branch} not found")
    if branch.head_version == branch.base_version:
        raise IllegalStateError(f"branch {command.branch} has no versions of its own to merge")
    head = state.version(branch.head_version)
    a = command.assessment
    _require(command.caller, "view_config", *a.required)
    needed = approvals_for(a.risk_level)
    created = ConfigVersionCreated(
        config_id=state.config_id,
        version=state.latest + 1,
        based_on=state.active,
        yaml_content=head.yaml_content,
        digest=head.digest,
        product_type=head.product_type,
        author=command.caller.user_id,
        author_type="client_user",
        commit_message=f"Merge branch {command.branch}",
        change_type=a.change_type,
        changes=list(a.changes),
        risk_level=a.risk_level,
        risk_reasons=list(a.risk_reasons),
        breaking=a.breaking,
        breaking_reasons=list(a.breaking_reasons),
        approvals_needed=list(needed),
        evidence=a.evidence if needed else None,
        at=command.at,
    )
    merged = ConfigBranchMerged(
        branch=command.branch,
        head_version=branch.head_version,
        new_version=created.version,
        changes_applied=list(a.changes),
        merged_by=command.caller.user_id,
        at=command.at,
    )
    if needed or a.breaking:
        return [created, merged]
    return [created, merged, _activation(state, created.version, "merged", command.at)]


# Evolving -------------------------------------------------------------------------------------


def _with_version(state: AgentConfigState, version: Version) -> AgentConfigState:
    return msgspec.structs.replace(state, versions={**state.versions, version.version: version})


def evolve(state: AgentConfigState, event: Event) -> AgentConfigState:
    match event:
        case ConfigVersionCreated() as e:
            status = "draft" if e.branch != MAIN else "pending_approval" if e.approvals_needed else "awaiting_reload"
            version = Version(
                version=e.version,
                branch=e.branch,
                based_on=e.based_on,
                yaml_content=e.yaml_content,
                digest=e.digest,
                product_type=e.product_type,
                author=e.author,
                author_type=e.author_type,
                commit_message=e.commit_message,
                change_type=e.change_type,
                changes=tuple(e.changes),
                risk_level=e.risk_level,
                risk_reasons=tuple(e.risk_reasons),
                breaking=e.breaking,
                breaking_reasons=tuple(e.breaking_reasons),
                approvals_needed=tuple(e.approvals_needed),
                status=status,
                created_at=e.at,
            )
            state = _with_version(state, version)
            if not state.config_id:
                state = msgspec.structs.replace(state, config_id=e.config_id, product_type=e.product_type)
            if e.branch != MAIN and e.branch in state.branches:
                branch = msgspec.structs.replace(state.branches[e.branch], head_version=e.version)
                state = msgspec.structs.replace(state, branches={**state.branches, e.branch: branch})
            return state
        case ConfigVersionApproved() as e:
            version = state.versions[e.version]
            approvals = (*version.approvals, (e.approver, e.role))
            version = msgspec.structs.replace(version, approvals=approvals)
            if not version.approvals_missing:
                version = msgspec.structs.replace(version, status="awaiting_reload")
            return _with_version(state, version)
        case ConfigVersionRejected() as e:
            version = msgspec.structs.replace(state.versions[e.version], status="rejected", rejected_reason=e.reason)
            return _with_version(state, version)
        case ConfigVersionMarkedBreaking() as e:
            version = state.versions[e.version]
            reasons = (*version.breaking_reasons, e.reason)
            return _with_version(state, msgspec.structs.replace(version, breaking=True, breaking_reasons=reasons))
        case ConfigVersionActivated() as e:
            versions = dict(state.versions)
            if e.previous in versions:
                versions[e.previous] = msgspec.structs.replace(versions[e.previous], status="archived")
            versions[e.version] = msgspec.structs.replace(versions[e.version], status="active", activated_at=e.at)
            return msgspec.structs.replace(
                state, versions=versions, active=e.version, activations=(*state.activations, (e.version, e.at))
            )
        case ConfigRolledBack() as e:
            version = msgspec.structs.replace(state.versions[e.new_version], rolled_back_to=e.to_version)
            return _with_version(state, version)
        case ConfigBranchCreated() as e:
            branch = Branch(
                name=e.branch,
                base_version=e.base_version,
                head_version=e.base_version,
                description=e.description,
                created_at=e.at,
            )
            return msgspec.structs.replace(state, branches={**state.branches, e.branch: branch})
        case ConfigBranchMerged() as e:
            branch = msgspec.structs.replace(state.branches[e.branch], status="merged")
            return msgspec.structs.replace(state, branches={**state.branches, e.branch: branch})
    return state


def evolve_all(state: AgentConfigState, events: list[Event]) -> AgentConfigState:
    for event in events:
        state = evolve(state, event)
    return state


DECIDER = Decider(type_name=AGGREGATE_TYPE, state_type=AgentConfigState, initial=initial, evolve=evolve, decide=decide)
