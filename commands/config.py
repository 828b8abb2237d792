"""Agent configs: the aggregate wired for the runner, and which version a new conversation gets.

``ConfigCatalog.latest_version`` answers from the config's own events (the repository's copy,
checked against the stream), not from a read model, so a conversation started right after an
activation or a rollback is pinned to it with no projection lag in between.

Checking the copy costs a round trip to the stream on every conversation start. A catalog that
follows config commits (``ConfigCatalog.follow``: every config commit is announced on its subject,
whichever process made it) skips it: a copy checked since the last commit announced for its config
is current. A commit announced while a check is in flight leaves the copy unchecked, and a copy is
checked again at least every ``trust_for`` seconds, in case an announcement was lost (a reconnect).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import msgspec
import structlog
import yaml
from psycopg_pool import AsyncConnectionPool

from commands.runner import CommandContext, CommandRunner, Outcome
from domain import bot_changes as rules
from domain import config as a
from domain import permissions as m
from domain import permissions as perms
from domain.bot import (
    AgentConfig,
    Issue,
    ValidationReport,
    apply_changes,
    config_document,
    config_from_mapping,
    load_config,
    parse_yaml,
    validate_config,
)
from domain.bot_changes import ChangeRisk, ConfigValue
from domain.errors import IllegalStateError, NotFoundError, ParleyError, PermissionDeniedError, ValidationError
from domain.time import iso
from read_models import config as q
from read_models.config import ReplayReport
from streams.store import EventStore
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

AGENT_CONFIG = a.DECIDER
CONFIG_MEMBERS = m.DECIDER

# (tenant, config id, candidate) -> a replay report of recorded conversations (``agents.preview``)
Evidence = Callable[[str, str, AgentConfig], Awaitable[ReplayReport]]
# (tenant, config id, version) -> the conversations still open on that version (a rollback's blast radius)
BlastRadius = Callable[[str, str, int], Awaitable[list[str]]]


class ConfigCatalog:
    """Configs as their events say: the active version, and any version's YAML (versions never change)."""

    def __init__(self, runner: CommandRunner, *, trust_for: float = 2.0) -> None:
        self.repository = runner.repository(AGENT_CONFIG)
        self.trust_for = trust_for
        self._subscription: Any = None
        self._checked: dict[str, tuple[float, int]] = {}  # stream key -> (when checked, generation then)
        self._generation: dict[str, int] = {}  # stream key -> commits announced

    async def follow(self, store: EventStore) -> None:
        """Trust a checked copy until a commit of its config is announced (see the module)."""

        def announced(stream: StreamId, version: int) -> None:
            self._generation[stream.key] = self._generation.get(stream.key, 0) + 1

        self._subscription = await store.follow(a.AGGREGATE_TYPE, announced)

    async def close(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.close()

    async def state(self, tenant: str, config_id: str) -> a.AgentConfigState:
        key = self.repository.stream(tenant, config_id).key
        now = time.monotonic()
        checked = self._checked.get(key)
        generation = self._generation.get(key, 0)
        trusted = (
            self._subscription is not None
            and checked is not None
            and checked[1] == generation
            and now - checked[0] < self.trust_for
        )
        loaded = await self.repository.load(tenant, config_id, trust_cache=trusted)
        if not trusted and self._subscription is not None and self._generation.get(key, 0) == generation:
            self._checked[key] = (now, generation)  # no commit announced while checking
        if not loaded.state.exists:
            raise NotFoundError(f"config {config_id} not found", config_id=config_id)
        return loaded.state

    async def latest_version(self, tenant: str, config_id: str) -> int:
        return active_version(await self.state(tenant, config_id), config_id)

    async def yaml(self, tenant: str, config_id: str, version: int) -> str:
        return (await self.state(tenant, config_id)).version(version).yaml_content


def active_version(state: a.AgentConfigState, config_id: str) -> int:
    """The config's active version; a config with none yet cannot be used."""
    if not state.active:
        raise IllegalStateError(f"config {config_id} has no active version yet", config_id=config_id)
    return state.active


# The configuration service: what the API asks of configs ------------------------------------


class Check(msgspec.Struct, frozen=True, kw_only=True):
    """One expectation of a test scenario: what was expected, what happened, whether it held."""

    check: str  # tool_called, tool_not_called, no_tool_calls, some_tool_call, escalation, reply_contains
    expected: str | bool | list[str]
    actual: str | bool | list[str]
    passed: bool


class ScenarioResult(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's test result of one scenario, run in a sandbox."""

    scenario: str
    expected_behavior: str
    agent_response: str
    intent: str
    tool_called: str | None
    tools_called: list[str]
    tool_errors: list[str]
    escalation_suggested: bool
    success: bool | None  # None: nothing the scenario expects could be checked
    checks: list[Check]
    note: str | None = None


class RiskAssessment(msgspec.Struct, frozen=True, kw_only=True):
    risk_level: str
    reasons: list[str]


class Validation(msgspec.Struct, frozen=True, kw_only=True):
    valid: bool
    errors: list[Issue]
    warnings: list[Issue]


class Preview(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's preview answer, with the candidate's risk and each of its changes."""

    preview_id: str
    config_id: str
    product_type: str
    expires_at: str
    test_results: list[ScenarioResult]
    replay: ReplayReport | None
    risk_assessment: RiskAssessment
    breaking_change: bool
    changes: list[str]
    change_risks: list[ChangeRisk]
    validation: Validation


class Modified(msgspec.Struct, frozen=True):
    old: ConfigValue
    new: ConfigValue


class Diff(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's diff: items and keys added and removed, by section or dotted path; values modified."""

    added: dict[str, ConfigValue]
    removed: dict[str, ConfigValue]
    modified: dict[str, Modified]


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's comparison of two versions, and each change with its own risk (``change_risks``)."""

    config_id: str
    product_type: str
    version_a: int
    version_b: int
    diff: Diff
    changes: list[str]
    change_type: str
    breaking_changes: bool
    breaking_reasons: list[str]
    risk_assessment: RiskAssessment
    change_risks: list[ChangeRisk]


class Written(msgspec.Struct, frozen=True, kw_only=True):
    """A version written (or not: ``created`` False when the candidate is what it was based on)."""

    outcome: Outcome[a.AgentConfigState]
    version: int  # the version created; unchanged: the version it would have replaced
    created: bool
    warnings: list[Issue] = []


class VisualUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """Changes made in the visual editor, written as a version (or a draft): what changed and its
    risk. No open conversation is affected (each stays on the version it started on);
    ``open_on_previous`` counts those still open on the version replaced."""

    written: Written
    based_on: int
    draft: bool
    change_risks: list[ChangeRisk]
    risk_assessment: RiskAssessment
    open_on_previous: int
    warnings: list[Issue]


class MemberPermissions(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    config_permissions: dict[str, bool]


class Previewer(Protocol):
    """Runs a candidate config without recording anything (``agents.preview.Previews``)."""

    async def scenarios(self, candidate: AgentConfig, scenarios: Sequence[Any], tenant: str) -> list[ScenarioResult]:
        """Each test scenario in a sandbox, judged against its expected behaviour."""

    async def replay_recorded(
        self, tenant: str, config_id: str, candidate: AgentConfig, limit: int = 20
    ) -> ReplayReport:
        """How the candidate would have answered the config's recent recorded conversations."""


class ConfigService:
    """Configs over commands: YAML is parsed, validated and compared here; the decider decides.

    ``implemented_tools`` names the tools the registry can run (a tool without one is a warning).
    ``evidence`` replays recorded conversations for a change that needs approval; ``blast_radius``
    names the conversations pinned to a version a rollback replaces (without it: none named).
    """

    def __init__(
        self,
        runner: CommandRunner,
        *,
        implemented_tools: frozenset[str] | None = None,
        evidence: Evidence | None = None,
        blast_radius: BlastRadius | None = None,
        previews: Previewer | None = None,
    ) -> None:
        self.runner = runner
        self.catalog = ConfigCatalog(runner)
        self.implemented_tools = implemented_tools
        self.evidence = evidence
        self.blast_radius = blast_radius
        self.previews = previews
        self.members = runner.repository(CONFIG_MEMBERS)

    # Who may do what ---------------------------------------------------------------------------

    async def caller(self, tenant: str, user_id: str, roles: frozenset[str]) -> a.Caller:
        loaded = await self.members.load(tenant, m.MEMBERS_ID)
        granted = perms.effective(roles, loaded.state.overrides.get(user_id))
        return a.Caller(user_id=user_id, roles=roles, granted=frozenset(granted))

    # Checking YAML --------------------------------------------------------------------------------

    def check(self, yaml_content: str) -> tuple[dict[str, Any], list[Issue]]:
        """The parsed config and every finding; ``ValidationError`` (400) lists them if one is an error."""
        raw = parse_yaml(yaml_content)
        issues = validate_config(raw, implemented_tools=self.implemented_tools)
        errors = [i for i in issues if i.severity == "error"]
        if errors:
            raise ValidationError(
                f"agent config has {len(errors)} error(s)",
                fields={i.field: i.message for i in errors},
                valid=False,
                errors=[msgspec.to_builtins(i) for i in errors],
                warnings=[msgspec.to_builtins(i) for i in issues if i.severity != "error"],
            )
        return raw, issues

    async def validate(self, tenant: str, yaml_content: str, config_id: str | None = None) -> ValidationReport:
        """The seed's validation: the findings (400 if one is an error) and, against the config's
        active version when one is named, whether the candidate would break what runs on it."""
        raw, issues = self.check(yaml_content)
        breaking = False
        if config_id:
            try:
                state = await self.catalog.state(tenant, config_id)
            except NotFoundError:
                state = None
            if state is not None and state.active:
                active = parse_yaml(state.version(state.active).yaml_content)
                breaking = self.assess(active, raw).breaking
        product = raw.get("product_type")
        return ValidationReport(
            valid=True,
            errors=[],
            warnings=[i for i in issues if i.severity != "error"],
            breaking_change_detected=breaking,
            product_type=product if isinstance(product, str) else None,
        )

    def assess(self, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> a.Assessment:
        """Compare canonical documents (defaults filled in): writing a default out is not a change."""
        new_doc = config_document(config_from_mapping(new))
        old_doc = config_document(config_from_mapping(old)) if old is not None else {}
        comparison = rules.compare(old_doc, new_doc)
        first = old is None
        return a.Assessment(
            product_type=str(new.get("product_type")),
            digest=hashlib.sha256(msgspec.json.encode(new_doc, order="sorted")).hexdigest(),
            change_type="initial_generation" if first else comparison.change_type,
            changes=["initial_generation"] if first else list(comparison.changes),
            risk_level="low" if first else comparison.risk_level,
            risk_reasons=["a new config"] if first else list(comparison.risk_reasons),
            breaking=False if first else comparison.breaking,
            breaking_reasons=[] if first else list(comparison.breaking_reasons),
            required=frozenset(perms.required_for(comparison)),
        )

    # Commands -------------------------------------------------------------------------------------

    async def _handle(
        self, tenant: str, config_id: str, command: Any, command_id: str | None, *, new: bool = False
    ) -> Outcome[a.AgentConfigState]:
        ctx = CommandContext(tenant=tenant, actor=command.caller.user_id, command_id=command_id)
        return await self.runner.handle(AGENT_CONFIG, config_id, command, ctx, new=new)

    async def create_version(
        self,
        tenant: str,
        config_id: str,
        yaml_content: str,
        caller: a.Caller,
        *,
        commit_message: str,
        author_type: str = "client_user",
        branch: str = a.MAIN,
        based_on: int | None = None,
        first: bool = False,
        command_id: str | None = None,
    ) -> Written:
        """A config's first version (``first``: the config must not exist) or its next one; the
        decider checks which on the stream's state (two creates of one id: one 409)."""
        raw, issues = self.check(yaml_content)
        base = None
        if not first:
            state = (await self.catalog.repository.load(tenant, config_id)).state
            if not state.exists:
                raise NotFoundError(f"config {config_id} not found", config_id=config_id)
            base = parse_yaml(state.version(self._head(state, branch)).yaml_content)
        assessment = self.assess(base, raw)
        if branch == a.MAIN and assessment.risk_level != "low" and self.evidence is not None:
            # The approvers see how the candidate would have answered the tenant's recorded conversations.
            report = await self.evidence(tenant, config_id, config_from_mapping(raw))
            assessment = msgspec.structs.replace(assessment, evidence=msgspec.to_builtins(report))
        command = a.CreateConfigVersion(
            config_id=config_id,
            yaml_content=yaml_content,
            assessment=assessment,
            commit_message=commit_message,
            author_type=author_type,
            caller=caller,
            branch=branch,
            based_on=based_on,
            first=first,
            at=_now(),
        )
        outcome = await self._handle(tenant, config_id, command, command_id, new=first)
        created = next((e.version for e in outcome.events if isinstance(e, a.ConfigVersionCreated)), None)
        if created is None and outcome.duplicate:  # a retried command: the version it made then
            created = max(
                (v.version for v in outcome.state.versions.values() if v.digest == assessment.digest), default=None
            )
        warnings = [i for i in issues if i.severity != "error"]
        if created is None:
            return Written(outcome=outcome, version=self._head(outcome.state, branch), created=False)
        return Written(outcome=outcome, version=created, created=True, warnings=warnings)

    @staticmethod
    def _head(state: a.AgentConfigState, branch: str) -> int:
        """The version a change to ``branch`` is written against."""
        found = state.branches.get(branch) if branch != a.MAIN else None
        return found.head_version if found is not None else state.active or state.latest

    async def write_draft(
        self, tenant: str, config_id: str, yaml_content: str, caller: a.Caller, *, commit_message: str, author_type: str
    ) -> Written:
        """A draft for review: the candidate as a version of a branch of its own (``draft-v<n>``),
        started at the active version; merging the branch applies it through the usual approvals."""
        raw, _ = self.check(yaml_content)
        state = await self.catalog.state(tenant, config_id)
        base = state.active or state.latest
        missing = self.assess(parse_yaml(state.version(base).yaml_content), raw).required - caller.granted
        if missing:  # refused before the branch is made (the decider checks again)
            raise PermissionDeniedError(
                f"needs the permission(s): {', '.join(sorted(missing))}", missing=sorted(missing)
            )
        branch = f"draft-v{state.latest + 1}"
        await self.create_branch(tenant, config_id, branch, base, caller, description=commit_message)
        return await self.create_version(
            tenant,
            config_id,
            yaml_content,
            caller,
            commit_message=commit_message,
            author_type=author_type,
            branch=branch,
        )

    async def update(
        self,
        tenant: str,
        config_id: str,
        changes: Mapping[str, Any],
        caller: a.Caller,
        *,
        commit_message: str,
        author_type: str = "client_user",
        apply_immediately: bool = True,
        product_type: str | None = None,
    ) -> VisualUpdate:
        """The seed's visual update: ``changes`` over the active version (the seed's
        ``voice_settings`` merged into the voice), written on main to go live through the usual
        risk and approvals, or (``apply_immediately`` false) as a draft for review (``write_draft``)."""
        state = await self.catalog.state(tenant, config_id)
        if product_type is not None and product_type != state.product_type:
            raise ValidationError(
                f"config {config_id} is a {state.product_type}",
                fields={"product_type": f"must be {state.product_type}"},
            )
        base = state.active or state.latest
        active = parse_yaml(state.version(base).yaml_content)
        changed, ignored = apply_changes(active, changes)
        text = yaml.safe_dump(changed, sort_keys=False, allow_unicode=True)
        raw, _ = self.check(text)
        assessment = self.assess(active, raw)
        if apply_immediately:
            done = await self.create_version(
                tenant, config_id, text, caller, commit_message=commit_message, author_type=author_type, based_on=base
            )
        else:
            done = await self.write_draft(
                tenant, config_id, text, caller, commit_message=commit_message, author_type=author_type
            )
        pinned = await self.blast_radius(tenant, config_id, state.active) if self.blast_radius and state.active else []
        canonical = config_document(config_from_mapping(active)), config_document(config_from_mapping(raw))
        return VisualUpdate(
            written=done,
            based_on=base,
            draft=not apply_immediately,
            change_risks=rules.change_risks(*canonical),
            risk_assessment=RiskAssessment(risk_level=assessment.risk_level, reasons=assessment.risk_reasons),
            open_on_previous=len(pinned),
            warnings=[*ignored, *done.warnings],
        )

    async def compare(self, tenant: str, config_id: str, version_a: int, version_b: int) -> Comparison:
        state = await self.catalog.state(tenant, config_id)
        old, new = (config_document(load_config(state.version(v).yaml_content)) for v in (version_a, version_b))
        comparison = rules.compare(old, new)
        return Comparison(
            config_id=config_id,
            product_type=state.product_type,
            version_a=version_a,
            version_b=version_b,
            diff=msgspec.convert(comparison.diff, Diff),
            changes=list(comparison.changes),
            change_type=comparison.change_type,
            breaking_changes=comparison.breaking,
            breaking_reasons=list(comparison.breaking_reasons),
            risk_assessment=RiskAssessment(risk_level=comparison.risk_level, reasons=list(comparison.risk_reasons)),
            change_risks=rules.change_risks(old, new),
        )

    async def merge(self, tenant: str, config_id: str, branch: str, caller: a.Caller) -> Outcome[a.AgentConfigState]:
        state = await self.catalog.state(tenant, config_id)
        found = state.branches.get(branch)
        if found is None:
            raise NotFoundError(f"branch {branch} not found")
        head = parse_yaml(state.version(found.head_version).yaml_content)
        active = parse_yaml(state.version(state.active).yaml_content) if state.active else None
        command = a.MergeConfigBranch(branch=branch, assessment=self.assess(active, head), caller=caller, at=_now())
        return await self._handle(tenant, config_id, command, None)

    async def rollback(
        self,
        tenant: str,
        config_id: str,
        caller: a.Caller,
        *,
        reason: str,
        initiated_by: str,
        target_version: int | None = None,
        from_version: int | None = None,
    ) -> tuple[Outcome[a.AgentConfigState], a.ConfigRolledBack]:
        """Roll back to ``target_version`` (None: the version active before the current one), naming
        the conversations still pinned to the version replaced. ``from_version``: roll back only
        if that version is the active one (the monitor's check, so it never rolls back a newer one).
        The one rollback the API and the monitor both use."""
        state = await self.catalog.state(tenant, config_id)
        replaced = state.active if from_version is None else from_version
        pinned = await self.blast_radius(tenant, config_id, replaced) if self.blast_radius and replaced else []
        command = a.RollbackConfig(
            target_version=target_version,
            reason=reason,
            initiated_by=initiated_by,
            caller=caller,
            pinned_conversations=pinned,
            from_version=replaced or None,
            at=_now(),
        )
        outcome = await self._handle(tenant, config_id, command, None)
        rolled = next(e for e in outcome.events if isinstance(e, a.ConfigRolledBack))
        return outcome, rolled

    async def preview(
        self,
        tenant: str,
        config_id: str,
        *,
        yaml_content: str | None,
        changes: Mapping[str, Any] | None,
        scenarios: Sequence[Any],
        replay_recorded: int = 0,
    ) -> Preview:
        """The seed's preview: the candidate (the YAML given, or the active version with ``changes``)
        checked and compared with the active version, each test scenario run in a sandbox, and
        optionally replayed against the recorded conversations. Nothing is recorded."""
        if self.previews is None:
            raise IllegalStateError("previews are not available in this process")
        if yaml_content is not None and changes is not None:
            raise ValidationError("give yaml_content or changes, not both", fields={"changes": "not with yaml_content"})
        state = await self.catalog.state(tenant, config_id)
        active = parse_yaml(state.version(state.active or state.latest).yaml_content)
        ignored: list[Issue] = []
        if yaml_content is not None:
            text = yaml_content
        else:
            changed, ignored = apply_changes(active, dict(changes or {}))
            text = yaml.safe_dump(changed, sort_keys=False)
        raw, issues = self.check(text)
        candidate = config_from_mapping(raw)
        assessment = self.assess(active, raw)
        results = await self.previews.scenarios(candidate, scenarios, tenant)
        replay = None
        if replay_recorded:
            replay = await self.previews.replay_recorded(tenant, config_id, candidate, replay_recorded)
        canonical = config_document(config_from_mapping(active)), config_document(candidate)
        return Preview(
            preview_id=str(uuid.uuid4()),
            config_id=config_id,
            product_type=candidate.product_type,
            expires_at=iso(datetime.now(UTC) + timedelta(hours=1)),
            test_results=results,
            replay=replay,
            risk_assessment=RiskAssessment(risk_level=assessment.risk_level, reasons=assessment.risk_reasons),
            breaking_change=assessment.breaking,
            changes=assessment.changes,
            change_risks=rules.change_risks(*canonical),
            validation=Validation(
                valid=True, errors=[], warnings=[i for i in [*ignored, *issues] if i.severity != "error"]
            ),
        )

    # Commands with nothing to parse: the decider decides --------------------------------------

    async def approve(self, tenant: str, config_id: str, version: int, caller: a.Caller) -> Outcome[a.AgentConfigState]:
        return await self.run(tenant, config_id, a.ApproveConfigVersion(version=version, caller=caller, at=_now()))

    async def reject(
        self, tenant: str, config_id: str, version: int, caller: a.Caller, *, reason: str
    ) -> Outcome[a.AgentConfigState]:
        command = a.RejectConfigVersion(version=version, reason=reason, caller=caller, at=_now())
        return await self.run(tenant, config_id, command)

    async def mark_breaking(
        self, tenant: str, config_id: str, version: int, caller: a.Caller, *, reason: str
    ) -> Outcome[a.AgentConfigState]:
        command = a.MarkConfigVersionBreaking(version=version, reason=reason, caller=caller, at=_now())
        return await self.run(tenant, config_id, command)

    async def reload(self, tenant: str, config_id: str, caller: a.Caller) -> Outcome[a.AgentConfigState]:
        """The seed's manual reload: the newest approved version waiting for it goes live."""
        return await self.run(tenant, config_id, a.ReloadConfig(caller=caller, at=_now()))

    async def create_branch(
        self, tenant: str, config_id: str, branch: str, base_version: int, caller: a.Caller, *, description: str = ""
    ) -> Outcome[a.AgentConfigState]:
        command = a.CreateConfigBranch(
            branch=branch, base_version=base_version, description=description, caller=caller, at=_now()
        )
        return await self.run(tenant, config_id, command)

    async def run(self, tenant: str, config_id: str, command: Any) -> Outcome[a.AgentConfigState]:
        return await self._handle(tenant, config_id, command, None)

    async def set_permissions(
        self, tenant: str, user_id: str, permissions: dict[str, bool], caller: a.Caller
    ) -> Outcome[m.Members]:
        command = m.SetMemberPermissions(
            user_id=user_id,
            permissions=permissions,
            known=frozenset(perms.PERMISSIONS),
            set_by=caller.user_id,
            set_by_permissions=caller.granted,
            at=_now(),
        )
        ctx = CommandContext(tenant=tenant, actor=caller.user_id)
        return await self.runner.handle(CONFIG_MEMBERS, m.MEMBERS_ID, command, ctx)

    async def permissions_of(self, tenant: str) -> list[MemberPermissions]:
        """Each member's overrides, by member."""
        overrides = (await self.members.load(tenant, m.MEMBERS_ID)).state.overrides
        return [MemberPermissions(user_id=u, config_permissions=dict(o)) for u, o in sorted(overrides.items())]

    @staticmethod
    def matrix(caller: a.Caller) -> MemberPermissions:
        """What the caller may do, as the seed's full permission matrix."""
        return MemberPermissions(
            user_id=caller.user_id, config_permissions={p: p in caller.granted for p in perms.PERMISSIONS}
        )


def _now() -> datetime:
    return datetime.now(UTC)


DEMO_CONFIGS = Path(__file__).resolve().parent.parent / "agents" / "configs"
SYSTEM = a.Caller(user_id="system", roles=frozenset({"platform_engineer"}), granted=frozenset(perms.PERMISSIONS))


async def ensure_demo_configs(service: ConfigService, tenant: str, directory: Path = DEMO_CONFIGS) -> list[str]:
    """Give a tenant the demo configs (``support_bot.yaml`` becomes ``support-bot``) it does not have yet.

    Idempotent, also across processes starting together: the command id names the demo config.
    """
    created = []
    demos = {path.stem.replace("_", "-"): path.read_text() for path in sorted(directory.glob("*.yaml"))}  # noqa: ASYNC240
    for config_id, text in demos.items():
        try:
            written = await service.create_version(
                tenant,
                config_id,
                text,
                SYSTEM,
                commit_message="demo config",
                author_type="system",
                first=True,
                command_id=f"demo-{config_id}",
            )
        except IllegalStateError:
            continue  # the tenant has it already
        if written.outcome.events:
            created.append(config_id)
    return created


# Automatic rollback --------------------------------------------------------------------------
#
# Automatic rollback: a newly activated config version that fails too often is rolled back.
#
# Every ``interval`` seconds the monitor looks at each config version activated within ``window``
# (not by a rollback: a restored version is never rolled back automatically, so two versions cannot
# flap). Once at least ``min_sample`` conversations have started on it, if more than ``threshold`` of
# them failed (an AI reply with a failed tool call), it appends a rollback to the previously active
# version, initiated by ``monitor``, and logs an alert. It is the API's rollback
# (``ConfigService.rollback``), blast radius included, for that version only: the decider refuses a
# second one (the version is no longer active), so two monitors cannot both act.


class MonitorSettings(msgspec.Struct, frozen=True, kw_only=True):
    threshold: float = 0.10  # the seed: more than 10 % of conversations failing
    min_sample: int = 20
    window_seconds: float = 600.0
    interval_seconds: float = 5.0


class ConfigMonitor:
    def __init__(self, service: ConfigService, pool: AsyncConnectionPool[Any], settings: MonitorSettings) -> None:
        self.service = service
        self.pool = pool
        self.settings = settings

    async def check(self) -> list[tuple[str, str, a.ConfigRolledBack]]:
        """One look at the recently activated versions; returns the rollbacks it made (tenant, config, rollback)."""
        since = datetime.now(UTC) - timedelta(seconds=self.settings.window_seconds)
        async with self.pool.connection() as conn:
            health = await q.version_health(conn, since)
        rolled = []
        for row in health:
            total, failed = row.conversations, row.failed
            if total < self.settings.min_sample or failed / total <= self.settings.threshold:
                continue
            limit = f"{self.settings.threshold:.0%}"
            reason = f"{failed} of {total} conversations on v{row.version} failed (more than {limit})"
            try:
                _, done = await self.service.rollback(
                    row.tenant,
                    row.config_id,
                    SYSTEM,
                    reason=reason,
                    initiated_by="monitor",
                    from_version=row.version,
                )
            except ParleyError as e:  # already rolled back, or nothing earlier to restore
                log.info("no automatic rollback", config_id=row.config_id, version=row.version, why=e.message)
                continue
            log.error(
                "ALERT: config version rolled back automatically",
                tenant=row.tenant,
                config_id=row.config_id,
                from_version=done.from_version,
                to_version=done.to_version,
                new_version=done.new_version,
                reason=reason,
            )
            rolled.append((row.tenant, row.config_id, done))
        return rolled

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except Exception:  # the monitor must outlive a bad moment of the database
                log.exception("config monitor check failed")
            try:
                await asyncio.wait_for(stop.wait(), self.settings.interval_seconds)
            except TimeoutError:
                pass
