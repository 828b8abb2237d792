"""The agent configs read model: versions, activations, rollbacks and branches, and their queries.

Filled by ``projections.config.ConfigsProjector`` from the agent config events; read by the
configuration API. Every query names the tenant: another tenant's config reads as not found.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import structlog
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from domain import config as a
from domain.bot import ProductType, config_document, config_from_mapping, parse_yaml
from domain.bot_changes import ConfigValue, change_risks
from domain.errors import ValidationError
from read_models.migrations import PROJECTOR_TABLES, Migration, ReadModel
from streams.store import EventStore
from streams.subjects import StreamId

log = structlog.get_logger(__name__)

TABLES = (
    """
    CREATE TABLE configs (
        tenant text NOT NULL,
        config_id text NOT NULL,
        product_type text NOT NULL,
        active_version integer NOT NULL DEFAULT 0,
        latest_version integer NOT NULL,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        activated_at timestamptz,
        last_seq bigint NOT NULL,
        version integer NOT NULL,
        PRIMARY KEY (tenant, config_id)
    )
    """,
    "CREATE INDEX configs_latest_activation ON configs (tenant, activated_at DESC NULLS LAST)",
    """
    CREATE TABLE config_versions (
        tenant text NOT NULL,
        config_id text NOT NULL,
        version integer NOT NULL,
        branch text NOT NULL,
        based_on integer NOT NULL,
        yaml_content text NOT NULL,
        digest text NOT NULL,
        product_type text NOT NULL,
        status text NOT NULL
            CHECK (status IN ('pending_approval', 'awaiting_reload', 'active', 'archived', 'rejected', 'draft')),
        author text NOT NULL,
        author_type text NOT NULL,
        commit_message text NOT NULL,
        change_type text NOT NULL,
        changes jsonb NOT NULL,
        risk_level text NOT NULL,
        risk_reasons jsonb NOT NULL,
        breaking boolean NOT NULL,
        breaking_reasons jsonb NOT NULL,
        approvals_needed jsonb NOT NULL,
        approvals_missing jsonb NOT NULL,
        approvals jsonb NOT NULL DEFAULT '[]',
        evidence jsonb,
        rejected_reason text,
        rolled_back boolean NOT NULL DEFAULT false,
        rollback_reason text,
        restores_version integer,
        created_at timestamptz NOT NULL,
        activated_at timestamptz,
        PRIMARY KEY (tenant, config_id, version)
    )
    """,
    """
    CREATE TABLE config_activations (
        tenant text NOT NULL,
        config_id text NOT NULL,
        seq bigint NOT NULL,
        version integer NOT NULL,
        previous integer NOT NULL,
        reason text NOT NULL,
        at timestamptz NOT NULL,
        PRIMARY KEY (tenant, config_id, seq, version)
    )
    """,
    "CREATE INDEX config_activations_by_time ON config_activations (tenant, config_id, at)",
    """
    CREATE TABLE config_rollbacks (
        tenant text NOT NULL,
        config_id text NOT NULL,
        new_version integer NOT NULL,
        from_version integer NOT NULL,
        to_version integer NOT NULL,
        reason text NOT NULL,
        initiated_by text NOT NULL,
        user_id text,
        pinned_conversations jsonb NOT NULL,
        at timestamptz NOT NULL,
        PRIMARY KEY (tenant, config_id, new_version)
    )
    """,
    """
    CREATE TABLE config_branches (
        tenant text NOT NULL,
        config_id text NOT NULL,
        branch text NOT NULL,
        base_version integer NOT NULL,
        head_version integer NOT NULL,
        description text NOT NULL,
        status text NOT NULL CHECK (status IN ('active', 'merged')),
        merged_into integer,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (tenant, config_id, branch)
    )
    """,
)

CONFIGS = ReadModel(
    name="configs",
    schema="rm_configs",
    migrations=(
        Migration(1, "projector checkpoint and dead letters", PROJECTOR_TABLES),
        Migration(2, "configs, versions, activations, rollbacks, branches", TABLES),
    ),
)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _q(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text).format(s=sql.Identifier(schema))


# Shapes ----------------------------------------------------------------------------------------
#
# What the queries answer, as the seed's Configuration Management API names it. The replay report
# (``ReplayReport``) is the evidence a medium or high risk version carries for its approvers, made
# by ``agents.preview`` and recorded in ``ConfigVersionCreated.evidence``.


class TurnAnswer(msgspec.Struct, frozen=True, kw_only=True):
    reply: str | None = None
    tool_calls: list[str] = []
    escalated: bool = False


class TurnSkipped(msgspec.Struct, frozen=True, kw_only=True):
    turn: int
    reason: str


class TurnDifference(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded turn the candidate answers differently: ``changed`` names what (reply, tool_calls,
    escalation); ``unrecorded_tool_calls`` are tools the recording has no result of (placeholders)."""

    turn: int
    user_message: str
    changed: list[str]
    recorded: TurnAnswer
    candidate: TurnAnswer
    unrecorded_tool_calls: list[str] = []


class ConversationReplay(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: str
    turns: int = 0
    turns_compared: int = 0
    turns_changed: int = 0
    turns_skipped: list[TurnSkipped] = []
    escalated_by_people: list[str] = []
    tool_calls_lost: list[str] = []
    tool_calls_added: list[str] = []
    differences: list[TurnDifference] = []


class ReplayReport(msgspec.Struct, frozen=True, kw_only=True):
    """How a candidate config answers recorded conversations, compared with what the AI answered."""

    conversations_replayed: int = 0
    conversations_changed: list[str] = []
    conversations_losing_tool_calls: list[str] = []
    conversations: list[ConversationReplay] = []


class Approval(msgspec.Struct, frozen=True, kw_only=True):
    approver: str
    role: str
    at: str


class ConfigMetadata(msgspec.Struct, frozen=True, kw_only=True):
    created_at: str | None
    updated_at: str | None
    status: a.Status
    breaking_change: bool
    digest: str


class ConfigView(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's "Get Config by ID" (and by tenant slug: ``tenant_slug``, ``cached``)."""

    config_id: str
    organization_id: str
    tenant_slug: str
    product_type: ProductType
    version: int
    active_version: int
    latest_version: int
    yaml_content: str
    metadata: ConfigMetadata
    revision: int  # events in the config's history so far
    position: int
    cached: bool = False  # served from the Redis cache


class VersionView(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    branch: str
    based_on: int
    status: a.Status
    created_at: str | None
    activated_at: str | None
    created_by: str
    author_type: a.AuthorType
    commit_message: str
    change_type: str
    changes: list[str]
    risk_level: a.RiskLevel
    risk_reasons: list[str]
    breaking_change: bool
    breaking_reasons: list[str]
    approvals_needed: list[str]
    approvals_missing: list[str]
    approvals: list[Approval]
    evidence: ReplayReport | None
    rejected_reason: str | None
    rolled_back: bool
    restores_version: int | None
    rollback_available: bool


class Pagination(msgspec.Struct, frozen=True, kw_only=True):
    has_more: bool
    next_offset: int


class VersionsPage(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's "Get Config Versions"."""

    config_id: str
    product_type: ProductType
    current_version: int
    latest_version: int
    versions: list[VersionView]
    total_versions: int
    pagination: Pagination
    position: int


class BranchView(msgspec.Struct, frozen=True, kw_only=True):
    branch_name: str
    config_id: str
    base_version: int
    current_version: int
    description: str
    status: Literal["active", "merged"]
    merged_into: int | None
    created_by: str
    created_at: str | None


class RollbackView(msgspec.Struct, frozen=True, kw_only=True):
    rolled_back_from: int
    rolled_back_to: int
    new_version: int
    reason: str
    initiated_by: str
    user_id: str | None
    pinned_conversations: list[str]
    at: str | None


class HistoryChange(msgspec.Struct, frozen=True, kw_only=True):
    """One version as the seed's client history lists it."""

    change_id: str
    version: str  # "v5"
    author: str
    author_type: a.AuthorType
    change_type: str
    commit_message: str
    risk_level: a.RiskLevel
    approved_by: str | None
    applied_at: str | None
    status: a.Status
    rolled_back: bool


class History(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's "Get Config Change History", with the rollbacks."""

    config_id: str
    product_type: ProductType
    total_changes: int
    changes: list[HistoryChange]
    rollbacks: list[RollbackView]


class ConfigSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A config in the tenant's list."""

    config_id: str
    product_type: ProductType
    active_version: int
    latest_version: int
    pending_approvals: int  # versions waiting for an approval
    created_at: str | None
    updated_at: str | None
    activated_at: str | None


class ConfigPage(msgspec.Struct, frozen=True):
    configs: list[ConfigSummary]
    next_cursor: str | None


class ConfigFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What a list of configs is narrowed to (None: any)."""

    product_type: str | None = None
    search: str | None = None  # a part of the config id
    pending_approval: bool | None = None  # has (or has not) a version waiting for an approval
    updated_from: datetime | None = None
    updated_to: datetime | None = None


class ClientChange(msgspec.Struct, frozen=True, kw_only=True):
    """A change of a version as the client portal's history lists it: its seed change type and,
    as it applies, the field, the action, the tool, the old and new values."""

    type: str
    field: str | None = None
    action: str | None = None  # add | remove | modify
    tool_name: str | None = None
    trigger: str | None = None  # an escalation rule's
    old_value: ConfigValue = None
    new_value: ConfigValue = None
    risk_level: str | None = None


class Author(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    email: str | None = None  # not recorded: the token names a user, not their address
    role: str | None = None  # not recorded with the version
    author_type: str


class ClientVersion(msgspec.Struct, frozen=True, kw_only=True):
    version: str  # "v48"
    commit_message: str
    author: Author
    changes: list[ClientChange]
    risk_level: str
    status: str
    applied_at: str | None
    created_at: str | None
    rollback_available: bool


class ClientVersions(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's client portal "Get Version History"."""

    config_id: str
    product_type: ProductType
    current_version: str | None
    versions: list[ClientVersion]
    total_versions: int
    pagination: Pagination
    position: int


class VersionHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A recently activated version and how its conversations went (the automatic rollback's input)."""

    tenant: str
    config_id: str
    version: int
    activated_at: datetime
    conversations: int
    failed: int


# Queries ---------------------------------------------------------------------------------------

_VERSION_COLUMNS = """v.version, v.branch, v.based_on, v.yaml_content, v.digest, v.product_type, v.status, v.author,
    v.author_type, v.commit_message, v.change_type, v.changes, v.risk_level, v.risk_reasons, v.breaking,
    v.breaking_reasons, v.approvals_needed, v.approvals_missing, v.approvals, v.evidence, v.rejected_reason,
    v.rolled_back, v.rollback_reason, v.restores_version, v.created_at, v.activated_at"""


def _version_view(row: dict[str, Any]) -> VersionView:
    evidence = row["evidence"]
    return VersionView(
        version=row["version"],
        branch=row["branch"],
        based_on=row["based_on"],
        status=row["status"],
        created_at=iso(row["created_at"]),
        activated_at=iso(row["activated_at"]),
        created_by=row["author"],
        author_type=row["author_type"],
        commit_message=row["commit_message"],
        change_type=row["change_type"],
        changes=row["changes"],
        risk_level=row["risk_level"],
        risk_reasons=row["risk_reasons"],
        breaking_change=row["breaking"],
        breaking_reasons=row["breaking_reasons"],
        approvals_needed=row["approvals_needed"],
        approvals_missing=row["approvals_missing"],
        approvals=msgspec.convert(row["approvals"], list[Approval]),
        evidence=None if evidence is None else msgspec.convert(evidence, ReplayReport),
        rejected_reason=row["rejected_reason"],
        rolled_back=row["rolled_back"],
        restores_version=row["restores_version"],
        rollback_available=row["status"] in ("archived",) and row["branch"] == "main",
    )


async def get_config(
    conn: AsyncConnection[Any],
    tenant: str,
    config_id: str,
    *,
    version: int | None = None,
    at: datetime | None = None,
    schema: str = CONFIGS.schema,
) -> ConfigView | None:
    """A config as the seed's "Get Config by ID": its active version, or a given version, or the
    version that was active at a moment (``at``)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _q("SELECT * FROM {s}.configs WHERE tenant = %s AND config_id = %s", schema), [tenant, config_id]
        )
        config = await cur.fetchone()
        if config is None:
            return None
        if at is not None:
            await cur.execute(
                _q(
                    "SELECT version FROM {s}.config_activations WHERE tenant = %s AND config_id = %s AND at <= %s"
                    " ORDER BY at DESC, seq DESC LIMIT 1",
                    schema,
                ),
                [tenant, config_id, at],
            )
            found = await cur.fetchone()
            if found is None:
                return None
            version = found["version"]
        number = version if version is not None else config["active_version"] or config["latest_version"]
        await cur.execute(
            _q(
                f"SELECT {_VERSION_COLUMNS} FROM {{s}}.config_versions v"
                " WHERE v.tenant = %s AND v.config_id = %s AND v.version = %s",
                schema,
            ),
            [tenant, config_id, number],
        )
        row = await cur.fetchone()
    if row is None:
        return None
    return ConfigView(
        config_id=config_id,
        organization_id=tenant,
        tenant_slug=tenant,
        product_type=config["product_type"],
        version=row["version"],
        active_version=config["active_version"],
        latest_version=config["latest_version"],
        yaml_content=row["yaml_content"],
        metadata=ConfigMetadata(
            created_at=iso(row["created_at"]),
            updated_at=iso(config["updated_at"]),
            status=row["status"],
            breaking_change=row["breaking"],
            digest=row["digest"],
        ),
        revision=config["version"],
        position=config["last_seq"],
    )


async def latest_config_id(conn: AsyncConnection[Any], tenant: str, *, schema: str = CONFIGS.schema) -> str | None:
    """The tenant's most recently activated config (the seed's "latest for an organization")."""
    cur = await conn.execute(
        _q(
            "SELECT config_id FROM {s}.configs WHERE tenant = %s AND active_version > 0"
            " ORDER BY activated_at DESC NULLS LAST, config_id LIMIT 1",
            schema,
        ),
        [tenant],
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


LIST_CONFIGS = """
    SELECT c.config_id, c.product_type, c.active_version, c.latest_version, c.created_at, c.updated_at,
        c.activated_at,
        (SELECT count(*) FROM {s}.config_versions v
         WHERE v.tenant = c.tenant AND v.config_id = c.config_id AND v.status = 'pending_approval') AS pending
    FROM {s}.configs AS c
    WHERE c.tenant = %(tenant)s
        AND (%(product_type)s::text IS NULL OR c.product_type = %(product_type)s)
        AND (%(search)s::text IS NULL OR strpos(c.config_id, %(search)s) > 0)
        AND (%(pending_approval)s::boolean IS NULL OR EXISTS (
            SELECT 1 FROM {s}.config_versions v
            WHERE v.tenant = c.tenant AND v.config_id = c.config_id AND v.status = 'pending_approval'
        ) = %(pending_approval)s)
        AND (%(updated_from)s::timestamptz IS NULL OR c.updated_at >= %(updated_from)s)
        AND (%(updated_to)s::timestamptz IS NULL OR c.updated_at < %(updated_to)s)
        AND (%(after)s::text IS NULL OR c.config_id > %(after)s)
    ORDER BY c.config_id
    LIMIT %(limit)s
"""


async def list_configs(
    conn: AsyncConnection[Any],
    tenant: str,
    where: ConfigFilter,
    *,
    limit: int = 50,
    cursor: str | None = None,
    schema: str = CONFIGS.schema,
) -> ConfigPage:
    """The tenant's configs by id, ``limit`` a page; ``cursor`` (the last page's ``next_cursor``)
    continues after the page it ended."""
    params = {
        **msgspec.structs.asdict(where),
        "tenant": tenant,
        "after": decode_cursor(cursor) if cursor else None,
        "limit": limit + 1,
    }
    cur = await conn.execute(_q(LIST_CONFIGS, schema), params)
    rows = await cur.fetchall()
    page = [
        ConfigSummary(
            config_id=r[0],
            product_type=r[1],
            active_version=r[2],
            latest_version=r[3],
            created_at=iso(r[4]),
            updated_at=iso(r[5]),
            activated_at=iso(r[6]),
            pending_approvals=r[7],
        )
        for r in rows[:limit]
    ]
    return ConfigPage(page, encode_cursor(rows[limit - 1][0]) if len(rows) > limit else None)


def encode_cursor(config_id: str) -> str:
    """An opaque position in the list: after this config id."""
    return base64.urlsafe_b64encode(msgspec.json.encode(["config", config_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        kind, config_id = msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, msgspec.DecodeError) as e:
        raise ValidationError("not a cursor this list gave", fields={"cursor": "not a cursor this list gave"}) from e
    if kind != "config" or not isinstance(config_id, str):
        raise ValidationError("not a cursor this list gave", fields={"cursor": "not a cursor this list gave"})
    return config_id


async def list_versions(
    conn: AsyncConnection[Any],
    tenant: str,
    config_id: str,
    *,
    limit: int = 50,
    offset: int = 0,
    author_type: str | None = None,
    schema: str = CONFIGS.schema,
) -> VersionsPage | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _q("SELECT * FROM {s}.configs WHERE tenant = %s AND config_id = %s", schema), [tenant, config_id]
        )
        config = await cur.fetchone()
        if config is None:
            return None
        where = "v.tenant = %s AND v.config_id = %s"
        params: list[Any] = [tenant, config_id]
        if author_type is not None:
            where += " AND v.author_type = %s"
            params.append(author_type)
        await cur.execute(_q(f"SELECT count(*) AS n FROM {{s}}.config_versions v WHERE {where}", schema), params)
        total = (await cur.fetchone() or {"n": 0})["n"]
        await cur.execute(
            _q(
                f"SELECT {_VERSION_COLUMNS} FROM {{s}}.config_versions v WHERE {where}"
                " ORDER BY v.version DESC LIMIT %s OFFSET %s",
                schema,
            ),
            [*params, limit, offset],
        )
        rows = await cur.fetchall()
    return VersionsPage(
        config_id=config_id,
        product_type=config["product_type"],
        current_version=config["active_version"],
        latest_version=config["latest_version"],
        versions=[_version_view(r) for r in rows],
        total_versions=total,
        pagination=Pagination(has_more=offset + len(rows) < total, next_offset=offset + len(rows)),
        position=config["last_seq"],
    )


async def get_version_yaml(
    conn: AsyncConnection[Any], tenant: str, config_id: str, version: int, *, schema: str = CONFIGS.schema
) -> str | None:
    cur = await conn.execute(
        _q(
            "SELECT yaml_content FROM {s}.config_versions WHERE tenant = %s AND config_id = %s AND version = %s", schema
        ),
        [tenant, config_id, version],
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def list_branches(
    conn: AsyncConnection[Any], tenant: str, config_id: str, *, schema: str = CONFIGS.schema
) -> list[BranchView]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _q(
                "SELECT * FROM {s}.config_branches WHERE tenant = %s AND config_id = %s ORDER BY created_at, branch",
                schema,
            ),
            [tenant, config_id],
        )
        rows = await cur.fetchall()
    return [
        BranchView(
            branch_name=r["branch"],
            config_id=config_id,
            base_version=r["base_version"],
            current_version=r["head_version"],
            description=r["description"],
            status=r["status"],
            merged_into=r["merged_into"],
            created_by=r["created_by"],
            created_at=iso(r["created_at"]),
        )
        for r in rows
    ]


async def rollbacks(
    conn: AsyncConnection[Any], tenant: str, config_id: str, *, schema: str = CONFIGS.schema
) -> list[RollbackView]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _q("SELECT * FROM {s}.config_rollbacks WHERE tenant = %s AND config_id = %s ORDER BY new_version", schema),
            [tenant, config_id],
        )
        rows = await cur.fetchall()
    return [
        RollbackView(
            rolled_back_from=r["from_version"],
            rolled_back_to=r["to_version"],
            new_version=r["new_version"],
            reason=r["reason"],
            initiated_by=r["initiated_by"],
            user_id=r["user_id"],
            pinned_conversations=r["pinned_conversations"],
            at=iso(r["at"]),
        )
        for r in rows
    ]


async def client_versions(
    conn: AsyncConnection[Any],
    tenant: str,
    config_id: str,
    *,
    limit: int = 20,
    offset: int = 0,
    schema: str = CONFIGS.schema,
) -> ClientVersions | None:
    """The versions as the client portal shows them: each with its changes against the version it
    was written on (compared here, from the two YAML documents)."""
    page = await list_versions(conn, tenant, config_id, limit=limit, offset=offset, schema=schema)
    if page is None:
        return None
    wanted = sorted({n for v in page.versions for n in (v.version, v.based_on) if n})
    cur = await conn.execute(
        _q(
            "SELECT version, yaml_content FROM {s}.config_versions"
            " WHERE tenant = %s AND config_id = %s AND version = ANY(%s)",
            schema,
        ),
        [tenant, config_id, wanted],
    )
    documents = {number: _document(text) for number, text in await cur.fetchall()}
    versions = [
        ClientVersion(
            version=f"v{v.version}",
            commit_message=v.commit_message,
            author=Author(user_id=v.created_by, author_type=v.author_type),
            changes=_client_changes(documents.get(v.based_on), documents.get(v.version)),
            risk_level=v.risk_level,
            status=v.status,
            applied_at=v.activated_at,
            created_at=v.created_at,
            rollback_available=v.rollback_available,
        )
        for v in page.versions
    ]
    return ClientVersions(
        config_id=config_id,
        product_type=page.product_type,
        current_version=f"v{page.current_version}" if page.current_version else None,
        versions=versions,
        total_versions=page.total_versions,
        pagination=page.pagination,
        position=page.position,
    )


def _document(text: str) -> dict[str, ConfigValue] | None:
    try:
        return config_document(config_from_mapping(parse_yaml(text)))
    except ValidationError:  # written before a rule it breaks existed: shown without its changes
        return None


ACTIONS = {"added": "add", "removed": "remove", "modified": "modify"}


def _client_changes(old: dict[str, ConfigValue] | None, new: dict[str, ConfigValue] | None) -> list[ClientChange]:
    if new is None:
        return []
    if old is None:
        return [ClientChange(type="initial_generation")]
    out = []
    for change in change_risks(old, new):
        top, *rest = change.path.split(".")
        item = change.item or (rest[0] if rest and top in ("tools", "escalation_rules") else None)
        out.append(
            ClientChange(
                type=change.type,
                field=change.path if change.item is None else None,
                action=ACTIONS[change.kind],
                tool_name=item if top == "tools" else None,
                trigger=item if top == "escalation_rules" else None,
                old_value=change.old,
                new_value=change.new,
                risk_level=change.risk_level,
            )
        )
    return out


def history_of(config_id: str, versions: VersionsPage, rolled: list[RollbackView]) -> History:
    """The seed's client history: each version as a change (its approvers, when it went live)."""
    changes = [
        HistoryChange(
            change_id=f"{config_id}-v{v.version}",
            version=f"v{v.version}",
            author=v.created_by,
            author_type=v.author_type,
            change_type=v.change_type,
            commit_message=v.commit_message,
            risk_level=v.risk_level,
            approved_by=", ".join(x.approver for x in v.approvals) or None,
            applied_at=v.activated_at,
            status=v.status,
            rolled_back=v.rolled_back,
        )
        for v in versions.versions
    ]
    return History(
        config_id=config_id,
        product_type=versions.product_type,
        total_changes=versions.total_versions,
        changes=changes,
        rollbacks=rolled,
    )


async def pinned_conversations(
    conn: AsyncConnection[Any], tenant: str, config_id: str, version: int, *, limit: int = 10_000
) -> list[str]:
    """The conversations still open on a config version: a rollback's blast radius.

    Read from the conversations read model (the conversations this config's versions govern).
    """
    cur = await conn.execute(
        "SELECT conversation_id FROM rm_conversations.conversations WHERE tenant = %s AND config_id = %s"
        " AND config_version = %s AND status <> 'closed' ORDER BY created_at, conversation_id LIMIT %s",
        [tenant, config_id, version, limit],
    )
    return [str(row[0]) for row in await cur.fetchall()]


def blast_radius(pool: AsyncConnectionPool[Any]) -> Callable[[str, str, int], Awaitable[list[str]]]:
    """``pinned_conversations`` over a pool: what ``commands.config.ConfigService`` asks a rollback's
    blast radius of."""

    async def pinned(tenant: str, config_id: str, version: int) -> list[str]:
        async with pool.connection() as conn:
            return await pinned_conversations(conn, tenant, config_id, version)

    return pinned


async def recent_conversations(conn: AsyncConnection[Any], tenant: str, config_id: str, limit: int) -> list[str]:
    """The config's most recent conversations with at least one customer turn: a replay sample."""
    cur = await conn.execute(
        "SELECT conversation_id FROM rm_conversations.conversations WHERE tenant = %s AND config_id = %s"
        " AND turn_count > 0 ORDER BY created_at DESC, conversation_id LIMIT %s",
        [tenant, config_id, limit],
    )
    return [str(row[0]) for row in await cur.fetchall()]


async def version_health(
    conn: AsyncConnection[Any], since: datetime, *, schema: str = CONFIGS.schema
) -> list[VersionHealth]:
    """Per config activated since ``since`` (not by a rollback): its active version's conversations
    started since the activation, and how many of them failed (a reply with a failed tool call)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _q(
                """
                SELECT c.tenant, c.config_id, c.active_version AS version, c.activated_at,
                    count(v.conversation_id) AS conversations,
                    count(v.conversation_id) FILTER (WHERE EXISTS (
                        SELECT 1 FROM rm_conversations.messages m, jsonb_array_elements(m.tool_calls) t
                        WHERE m.tenant = v.tenant AND m.conversation_id = v.conversation_id
                            AND m.tool_calls IS NOT NULL AND t ? 'error')) AS failed
                FROM {s}.configs c
                JOIN {s}.config_activations a ON a.tenant = c.tenant AND a.config_id = c.config_id
                    AND a.version = c.active_version AND a.reason <> 'rollback'
                LEFT JOIN rm_conversations.conversations v ON v.tenant = c.tenant AND v.config_id = c.config_id
                    AND v.config_version = c.active_version AND v.created_at >= c.activated_at
                WHERE c.activated_at >= %s
                GROUP BY c.tenant, c.config_id, c.active_version, c.activated_at
                """,
                schema,
            ),
            [since],
        )
        return [VersionHealth(**row) for row in await cur.fetchall()]


class ConfigQueries:
    """The configs read model's queries, on a pool (the API's dependency)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def recent_conversations(self, tenant: str, config_id: str, limit: int) -> list[str]:
        async with self.pool.connection() as conn:
            return await recent_conversations(conn, tenant, config_id, limit)

    async def latest(self, tenant: str) -> ConfigView | None:
        """The tenant's most recently activated config, as ``get_config`` gives it."""
        async with self.pool.connection() as conn:
            config_id = await latest_config_id(conn, tenant)
            return await get_config(conn, tenant, config_id) if config_id else None

    async def list(self, tenant: str, where: ConfigFilter, *, limit: int = 50, cursor: str | None = None) -> ConfigPage:
        async with self.pool.connection() as conn:
            return await list_configs(conn, tenant, where, limit=limit, cursor=cursor)

    async def versions(
        self, tenant: str, config_id: str, *, limit: int = 50, offset: int = 0, author_type: str | None = None
    ) -> VersionsPage | None:
        async with self.pool.connection() as conn:
            return await list_versions(conn, tenant, config_id, limit=limit, offset=offset, author_type=author_type)

    async def history(
        self, tenant: str, config_id: str, *, limit: int = 50, offset: int = 0, author_type: str | None = None
    ) -> History | None:
        """The versions as the seed's change history, and the rollbacks, from one connection."""
        async with self.pool.connection() as conn:
            found = await list_versions(conn, tenant, config_id, limit=limit, offset=offset, author_type=author_type)
            if found is None:
                return None
            return history_of(config_id, found, await rollbacks(conn, tenant, config_id))

    async def client_versions(
        self, tenant: str, config_id: str, *, limit: int = 20, offset: int = 0
    ) -> ClientVersions | None:
        async with self.pool.connection() as conn:
            return await client_versions(conn, tenant, config_id, limit=limit, offset=offset)

    async def branches(self, tenant: str, config_id: str) -> list[BranchView]:
        async with self.pool.connection() as conn:
            return await list_branches(conn, tenant, config_id)


# Reads through Redis ---------------------------------------------------------------------------
#
# Config reads from Redis, kept current by the config events (the seed's target: p95 under 50 ms).
#
# A config's active document is cached in Redis with its *revision* (how many events its history
# had). Every config commit published on NATS raises the config's revision mark in Redis to the
# commit's last revision. A cached document is served only while its revision is at least the mark;
# otherwise the read goes to the read model, and the document it gets is cached again only if it is
# as new as the mark. So the cache never serves a config older than an event already announced,
# whichever API process wrote it or reads it; a TTL bounds how long a missed announcement matters.
# Reads of a given version or of a past moment go to the read model (versions never change).
TTL_SECONDS = 300

# KEYS: the mark. ARGV: a revision. The mark only goes up.
_RAISE_MARK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 0
"""
# KEYS: the document, the mark. ARGV: the document, its revision. Cached only if not older than the mark.
_FILL = """
local mark = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) >= mark then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3]) end
return 0
"""


class ConfigReads:
    def __init__(self, redis: Redis, pool: AsyncConnectionPool[Any], store: EventStore) -> None:
        """The cache is named after the event stream: another stream is another history."""
        self.namespace = store.name
        self.redis = redis
        self.pool = pool
        self.store = store
        self._raise = redis.register_script(_RAISE_MARK)
        self._fill = redis.register_script(_FILL)
        self._subscription: Any = None
        self.hits = self.misses = 0

    def _keys(self, tenant: str, config_id: str) -> tuple[str, str]:
        return f"cfg:{self.namespace}:doc:{tenant}:{config_id}", f"cfg:{self.namespace}:rev:{tenant}:{config_id}"

    async def start(self) -> None:
        self._subscription = await self.store.follow(a.AGGREGATE_TYPE, self._announced)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()

    async def _announced(self, stream: StreamId, revision: int) -> None:
        _, mark = self._keys(stream.tenant, stream.aggregate_id)
        await self._raise(keys=[mark], args=[revision, TTL_SECONDS * 2])

    async def get(
        self, tenant: str, config_id: str, *, version: int | None = None, at: datetime | None = None
    ) -> ConfigView | None:
        if version is not None or at is not None:
            async with self.pool.connection() as conn:
                return await get_config(conn, tenant, config_id, version=version, at=at)
        doc_key, mark_key = self._keys(tenant, config_id)
        cached, mark = await self.redis.mget(doc_key, mark_key)
        if cached is not None:
            found = _VIEW.decode(cached)
            if found.revision >= int(mark or 0):
                self.hits += 1
                return msgspec.structs.replace(found, cached=True)
        self.misses += 1
        async with self.pool.connection() as conn:
            fresh = await get_config(conn, tenant, config_id)
        if fresh is not None:
            await self._fill(keys=[doc_key, mark_key], args=[_ENCODE(fresh), fresh.revision, TTL_SECONDS])
        return fresh


_VIEW = msgspec.json.Decoder(ConfigView)
_ENCODE = msgspec.json.Encoder().encode
