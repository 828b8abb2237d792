"""The agent config decider: versions, approvals, activation, rollback, branches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import config as a
from domain import permissions as perms
from domain.errors import IllegalStateError, NotFoundError, PermissionDeniedError, ValidationError
from tests.decider import DeciderSpec

T0 = datetime(2025, 10, 20, 10, 0, tzinfo=UTC)
spec = DeciderSpec(a.decide, a.evolve, a.initial())
ALL = frozenset(perms.PERMISSIONS)
ADMIN = a.Caller(user_id="jane", roles=frozenset({"org_admin"}), granted=ALL)
OTHER_ADMIN = a.Caller(user_id="omar", roles=frozenset({"org_admin"}), granted=ALL)
ENGINEER = a.Caller(user_id="pat", roles=frozenset({"platform_engineer"}), granted=ALL)
MANAGER = a.Caller(
    user_id="john",
    roles=frozenset({"config_manager"}),
    granted=frozenset(
        {"view_config", "edit_system_prompt", "add_remove_tools", "change_voice_params", "rollback_versions"}
    ),
)
VIEWER = a.Caller(user_id="vic", roles=frozenset({"config_viewer"}), granted=frozenset({"view_config"}))


def assessment(digest: str, risk: str = "low", *, breaking: bool = False, **more: object) -> a.Assessment:
    return a.Assessment(
        product_type="chatbot",
        digest=digest,
        change_type="system_prompt",
        risk_level=risk,
        breaking=breaking,
        required=frozenset({"edit_system_prompt"}),
        **more,  # type: ignore[arg-type]
    )


def create(digest: str, risk: str = "low", caller: a.Caller = ADMIN, **more: object) -> a.CreateConfigVersion:
    breaking = bool(more.pop("breaking", False))
    return a.CreateConfigVersion(
        config_id="support-bot",
        yaml_content=f"# {digest}",
        assessment=assessment(digest, risk, breaking=breaking),
        commit_message=f"make it {digest}",
        author_type="client_user",
        caller=caller,
        at=T0,
        **more,  # type: ignore[arg-type]
    )


def created(version: int, digest: str, *, based_on: int, risk: str = "low", **more: object) -> a.ConfigVersionCreated:
    fields: dict[str, object] = {
        "config_id": "support-bot",
        "version": version,
        "based_on": based_on,
        "yaml_content": f"# {digest}",
        "digest": digest,
        "product_type": "chatbot",
        "author": "jane",
        "author_type": "client_user",
        "commit_message": f"make it {digest}",
        "change_type": "system_prompt",
        "risk_level": risk,
        "at": T0,
    }
    return a.ConfigVersionCreated(**(fields | more))  # type: ignore[arg-type]


def activated(version: int, previous: int, reason: str = "created") -> a.ConfigVersionActivated:
    return a.ConfigVersionActivated(version=version, previous=previous, reason=reason, at=T0)  # type: ignore[arg-type]


V1 = (created(1, "one", based_on=0), activated(1, 0))
V2 = (created(2, "two", based_on=1), activated(2, 1))


def test_a_low_risk_version_applies_at_once() -> None:
    state = spec.given().when(create("one", first=True)).then(*V1)
    assert state.active == 1 and state.versions[1].status == "active"
    state = spec.given(*V1).when(create("two")).then(*V2)
    assert state.active == 2 and state.versions[1].status == "archived"


def test_a_first_version_needs_a_config_that_does_not_exist_and_a_next_one_a_config_that_does() -> None:
    spec.given(*V1).when(create("two", first=True)).then_raises(IllegalStateError, "already exists")
    spec.given().when(create("one")).then_raises(NotFoundError, "not found")


def test_an_unchanged_config_makes_no_version() -> None:
    spec.given(*V1).when(create("one")).then()


def test_a_medium_risk_version_waits_for_an_admin_who_is_not_its_author() -> None:
    pending = created(2, "two", based_on=1, risk="medium", approvals_needed=["org_admin"])
    state = spec.given(*V1).when(create("two", "medium")).then(pending)
    assert state.active == 1 and state.versions[2].status == "pending_approval"
    given = spec.given(*V1, pending)
    given.when(a.ApproveConfigVersion(version=2, caller=ADMIN, at=T0)).then_raises(PermissionDeniedError, "own")
    given.when(a.ApproveConfigVersion(version=2, caller=ENGINEER, at=T0)).then_raises(
        PermissionDeniedError, "org_admin"
    )
    state = given.when(a.ApproveConfigVersion(version=2, caller=OTHER_ADMIN, at=T0)).then(
        a.ConfigVersionApproved(version=2, approver="omar", role="org_admin", at=T0), activated(2, 1, "approved")
    )
    assert state.active == 2


def test_a_high_risk_version_needs_an_admin_and_a_platform_engineer() -> None:
    pending = created(2, "two", based_on=1, risk="high", approvals_needed=["org_admin", "platform_engineer"])
    given = spec.given(*V1, pending)
    state = given.when(a.ApproveConfigVersion(version=2, caller=OTHER_ADMIN, at=T0)).then(
        a.ConfigVersionApproved(version=2, approver="omar", role="org_admin", at=T0)
    )
    assert state.active == 1 and state.versions[2].approvals_missing == ("platform_engineer",)
    spec.given(*V1, pending, a.ConfigVersionApproved(version=2, approver="omar", role="org_admin", at=T0)).when(
        a.ApproveConfigVersion(version=2, caller=ENGINEER, at=T0)
    ).then(
        a.ConfigVersionApproved(version=2, approver="pat", role="platform_engineer", at=T0),
        activated(2, 1, "approved"),
    )


def test_one_person_holding_both_roles_cannot_approve_a_high_risk_version_alone() -> None:
    both = a.Caller(user_id="max", roles=frozenset({"org_admin", "platform_engineer"}), granted=ALL)
    pending = created(2, "two", based_on=1, risk="high", approvals_needed=["org_admin", "platform_engineer"])
    given = spec.given(*V1, pending, a.ConfigVersionApproved(version=2, approver="max", role="org_admin", at=T0))
    given.when(a.ApproveConfigVersion(version=2, caller=both, at=T0)).then_raises(
        PermissionDeniedError, match="platform_engineer must come from someone else"
    )
    given.when(a.ApproveConfigVersion(version=2, caller=ENGINEER, at=T0)).then(
        a.ConfigVersionApproved(version=2, approver="pat", role="platform_engineer", at=T0),
        activated(2, 1, "approved"),
    )


def test_a_config_managers_low_risk_change_is_auto_approved_and_applies_at_once() -> None:
    """The seed's approval workflow: low-risk changes are auto-approved, whoever may make them."""
    state = (
        spec.given(*V1)
        .when(create("two", caller=MANAGER))
        .then(created(2, "two", based_on=1, author="john"), activated(2, 1))
    )
    assert state.active == 2 and state.versions[2].status == "active"


def test_a_config_managers_medium_risk_change_still_waits_for_an_admin() -> None:
    pending = created(2, "two", based_on=1, risk="medium", author="john", approvals_needed=["org_admin"])
    state = spec.given(*V1).when(create("two", "medium", caller=MANAGER)).then(pending)
    assert state.active == 1 and state.versions[2].status == "pending_approval"


def test_a_change_the_caller_may_not_make_is_refused_and_appends_nothing() -> None:
    spec.given(*V1).when(create("two", caller=VIEWER)).then_raises(PermissionDeniedError, "edit_system_prompt")


def test_a_rejected_version_never_goes_live() -> None:
    pending = created(2, "two", based_on=1, risk="medium", approvals_needed=["org_admin"])
    state = (
        spec.given(*V1, pending)
        .when(a.RejectConfigVersion(version=2, reason="too casual", caller=OTHER_ADMIN, at=T0))
        .then(a.ConfigVersionRejected(version=2, rejected_by="omar", reason="too casual", at=T0))
    )
    assert state.active == 1 and state.versions[2].status == "rejected"


def test_a_breaking_version_waits_for_the_manual_reload() -> None:
    breaking = created(2, "two", based_on=1, breaking=True)
    state = spec.given(*V1).when(create("two", breaking=True)).then(breaking)
    assert state.active == 1 and state.versions[2].status == "awaiting_reload"
    spec.given(*V1, breaking).when(a.ReloadConfig(caller=MANAGER, at=T0)).then_raises(PermissionDeniedError)
    state = spec.given(*V1, breaking).when(a.ReloadConfig(caller=ADMIN, at=T0)).then(activated(2, 1, "reloaded"))
    assert state.active == 2


def test_a_platform_engineer_can_hold_back_a_pending_version_as_breaking() -> None:
    pending = created(2, "two", based_on=1, risk="medium", approvals_needed=["org_admin"])
    marked = a.ConfigVersionMarkedBreaking(version=2, marked_by="pat", reason="drops a PII field", at=T0)
    spec.given(*V1, pending).when(
        a.MarkConfigVersionBreaking(version=2, reason="drops a PII field", caller=ENGINEER, at=T0)
    ).then(marked)
    state = (
        spec.given(*V1, pending, marked)
        .when(a.ApproveConfigVersion(version=2, caller=OTHER_ADMIN, at=T0))
        .then(a.ConfigVersionApproved(version=2, approver="omar", role="org_admin", at=T0))
    )
    assert state.versions[2].status == "awaiting_reload" and state.active == 1


def test_a_rollback_creates_a_new_version_with_the_targets_content_and_names_its_blast_radius() -> None:
    command = a.RollbackConfig(
        target_version=1,
        reason="v2 causing high error rate",
        initiated_by="client_user",
        caller=MANAGER,
        pinned_conversations=["c-1", "c-2"],
        at=T0,
    )
    state = (
        spec.given(*V1, *V2)
        .when(command)
        .then(
            created(
                3,
                "one",
                based_on=2,
                author="john",
                commit_message="Rollback to v1: v2 causing high error rate",
                change_type="rollback",
                changes=["rollback:v2->v1"],
            ),
            a.ConfigRolledBack(
                from_version=2,
                to_version=1,
                new_version=3,
                reason="v2 causing high error rate",
                initiated_by="client_user",
                user_id="john",
                pinned_conversations=["c-1", "c-2"],
                at=T0,
            ),
            activated(3, 2, "rollback"),
        )
    )
    assert state.active == 3 and state.versions[3].yaml_content == state.versions[1].yaml_content
    assert state.versions[3].rolled_back_to == 1


def test_a_rollback_without_a_target_restores_the_previously_active_version() -> None:
    events = spec.decide(
        a.RollbackConfig(reason="errors", initiated_by="monitor", caller=ADMIN, at=T0), spec.given(*V1, *V2).state
    )
    assert isinstance(events[1], a.ConfigRolledBack) and events[1].to_version == 1


def test_rollbacks_need_the_permission_and_a_version_that_was_live() -> None:
    given = spec.given(*V1, *V2)
    given.when(
        a.RollbackConfig(target_version=1, reason="x", initiated_by="client_user", caller=VIEWER, at=T0)
    ).then_raises(PermissionDeniedError)
    given.when(
        a.RollbackConfig(target_version=2, reason="x", initiated_by="client_user", caller=ADMIN, at=T0)
    ).then_raises(IllegalStateError, "already active")
    pending = created(3, "three", based_on=2, risk="medium", approvals_needed=["org_admin"])
    spec.given(*V1, *V2, pending).when(
        a.RollbackConfig(target_version=3, reason="x", initiated_by="client_user", caller=ADMIN, at=T0)
    ).then_raises(IllegalStateError, "never active")


def test_a_rollback_of_a_version_no_longer_active_is_refused() -> None:
    """Its blast radius was read for the version it names: recorded against another, it would lie."""
    command = a.RollbackConfig(reason="errors", initiated_by="monitor", caller=ADMIN, from_version=1, at=T0)
    spec.given(*V1, *V2).when(command).then_raises(IllegalStateError, "no longer active")


def test_a_branch_collects_drafts_and_a_merge_makes_them_a_main_version() -> None:
    branch = a.ConfigBranchCreated(branch="staging", base_version=1, description="empathy", created_by="jane", at=T0)
    spec.given(*V1).when(
        a.CreateConfigBranch(branch="staging", base_version=1, description="empathy", caller=ADMIN, at=T0)
    ).then(branch)
    draft = created(2, "two", based_on=1, branch="staging")
    state = spec.given(*V1, branch).when(create("two", branch="staging")).then(draft)
    assert state.active == 1 and state.versions[2].status == "draft" and state.branches["staging"].head_version == 2
    merge = a.MergeConfigBranch(branch="staging", assessment=assessment("two"), caller=ADMIN, at=T0)
    state = (
        spec.given(*V1, branch, draft)
        .when(merge)
        .then(
            created(3, "two", based_on=1, commit_message="Merge branch staging", yaml_content="# two"),
            a.ConfigBranchMerged(branch="staging", head_version=2, new_version=3, merged_by="jane", at=T0),
            activated(3, 1, "merged"),
        )
    )
    assert state.active == 3 and state.branches["staging"].status == "merged"


def test_an_edit_against_a_stale_version_is_refused() -> None:
    spec.given(*V1, *V2).when(create("three", based_on=1)).then_raises(IllegalStateError, "against version 1")


def test_a_config_keeps_its_product_type() -> None:
    command = a.CreateConfigVersion(
        config_id="support-bot",
        yaml_content="# voice",
        assessment=a.Assessment(product_type="voicebot", digest="voice", change_type="hybrid"),
        commit_message="now a voicebot",
        author_type="client_user",
        caller=ADMIN,
        at=T0,
    )
    spec.given(*V1).when(command).then_raises(ValidationError, "chatbot")


def test_the_active_version_at_any_moment() -> None:
    later = T0 + timedelta(hours=1)
    state = spec.given(created(1, "one", based_on=0), activated(1, 0), created(2, "two", based_on=1)).state
    state = a.evolve(state, a.ConfigVersionActivated(version=2, previous=1, reason="created", at=later))
    assert state.active_at(T0 - timedelta(seconds=1)) == 0
    assert state.active_at(T0 + timedelta(minutes=5)) == 1
    assert state.active_at(later) == 2


# Random histories -------------------------------------------------------------------------------

Step = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(["low", "medium", "high"]), st.sampled_from("abcdef")),
    st.tuples(st.just("approve"), st.sampled_from([OTHER_ADMIN, ENGINEER]), st.integers(1, 12)),
    st.tuples(st.just("rollback"), st.none() | st.integers(1, 12), st.just("")),
    st.tuples(st.just("branch"), st.sampled_from(["staging", "exp"]), st.integers(1, 12)),
    st.tuples(st.just("draft"), st.sampled_from(["staging", "exp"]), st.sampled_from("abcdef")),
    st.tuples(st.just("merge"), st.sampled_from(["staging", "exp"]), st.just("")),
)


def _command(step: tuple[object, ...], state: a.AgentConfigState) -> a.Command:
    kind, x, y = step
    if kind == "create":
        return create(str(y), str(x), first=not state.exists)
    if kind == "approve":
        return a.ApproveConfigVersion(version=int(y), caller=x, at=T0)  # type: ignore[arg-type,call-overload]
    if kind == "rollback":
        return a.RollbackConfig(target_version=x, reason="r", initiated_by="client_user", caller=ADMIN, at=T0)  # type: ignore[arg-type]
    if kind == "branch":
        return a.CreateConfigBranch(branch=str(x), base_version=int(y), caller=ADMIN, at=T0)  # type: ignore[call-overload]
    if kind == "draft":
        return create(str(y), branch=str(x))
    return a.MergeConfigBranch(branch=str(x), assessment=assessment("merged"), caller=ADMIN, at=T0)


@settings(max_examples=200, deadline=None)
@given(st.lists(Step, max_size=25))
def test_random_histories_keep_the_version_history_consistent(steps: list[tuple[object, ...]]) -> None:
    state, history = a.initial(), []
    for step in steps:
        try:
            events = a.decide(_command(step, state), state)
        except (IllegalStateError, PermissionDeniedError, ValidationError, NotFoundError):
            continue
        for event in events:
            state = a.evolve(state, event)
            history.append(event)
            if isinstance(event, a.ConfigRolledBack):  # a rollback's content is its target's
                assert state.versions[event.new_version].digest == state.versions[event.to_version].digest
    numbers = sorted(state.versions)
    assert numbers == list(range(1, len(numbers) + 1))  # contiguous, never reused
    actives = [v for v in state.versions.values() if v.status == "active"]
    assert len(actives) == (1 if state.active else 0)
    if state.active:
        assert actives[0].version == state.active and actives[0].branch == a.MAIN
    assert all(v.branch == a.MAIN for v, _ in ((state.versions[n], t) for n, t in state.activations))
    for version in state.versions.values():
        if version.status in ("active", "archived"):
            assert not version.approvals_missing and version.activated_at is not None
    assert [n for n, _ in state.activations] == [e.version for e in history if isinstance(e, a.ConfigVersionActivated)]


@pytest.mark.parametrize(
    ("risk", "needed"),
    [("low", ()), ("medium", ("org_admin",)), ("high", ("org_admin", "platform_engineer"))],
)
def test_who_must_approve(risk: str, needed: tuple[str, ...]) -> None:
    assert a.approvals_for(risk) == needed
