"""The configs projector: agent config events -> ``read_models.config`` tables.

As in the conversations projector, every statement first moves the config's row to the event's
version, and only if the row is behind it; the rest of the statement happens only when that
update did. Applying an event twice changes nothing, and no statement reads into Python.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncCursor

from domain import config as a
from projections.projector import Projector
from projections.sql import json_text, statement
from read_models.config import CONFIGS
from streams.store import RecordedEvent
from streams.subjects import type_subjects


def _advance(sets: str = "") -> str:
    return (
        "WITH c AS (UPDATE {s}.configs SET " + sets + " updated_at = %(at)s, last_seq = %(seq)s, version = %(ev)s"
        " WHERE tenant = %(tenant)s AND config_id = %(cid)s AND version < %(ev)s"
        " RETURNING tenant, config_id) "
    )


FIRST_VERSION = """
    WITH c AS (
        INSERT INTO {s}.configs (tenant, config_id, product_type, latest_version, created_at, updated_at, last_seq,
            version)
        VALUES (%(tenant)s, %(cid)s, %(product_type)s, %(version)s, %(at)s, %(at)s, %(seq)s, %(ev)s)
        ON CONFLICT (tenant, config_id) DO NOTHING
        RETURNING tenant, config_id)
"""

_INSERT_VERSION = """
    INSERT INTO {s}.config_versions (tenant, config_id, version, branch, based_on, yaml_content, digest, product_type,
        status, author, author_type, commit_message, change_type, changes, risk_level, risk_reasons, breaking,
        breaking_reasons, approvals_needed, approvals_missing, evidence, created_at)
    SELECT tenant, config_id, %(version)s, %(branch)s, %(based_on)s, %(yaml)s, %(digest)s, %(product_type)s,
        %(status)s, %(author)s, %(author_type)s, %(message)s, %(change_type)s, %(changes)s::jsonb, %(risk)s,
        %(risk_reasons)s::jsonb, %(breaking)s, %(breaking_reasons)s::jsonb, %(needed)s::jsonb, %(needed)s::jsonb,
        %(evidence)s::jsonb, %(at)s
    FROM c
    ON CONFLICT (tenant, config_id, version) DO NOTHING"""

CREATED_FIRST = FIRST_VERSION + _INSERT_VERSION
CREATED = _advance("latest_version = greatest(latest_version, %(version)s),") + _INSERT_VERSION
# A version on a branch moves the branch's head as well, in the same statement and under the same
# guard (so it happens once too).
CREATED_ON_BRANCH = (
    _advance("latest_version = greatest(latest_version, %(version)s),")
    + ", v AS ("
    + _INSERT_VERSION
    + """)
    UPDATE {s}.config_branches AS b SET head_version = %(version)s
    FROM c WHERE b.tenant = c.tenant AND b.config_id = c.config_id AND b.branch = %(branch)s
"""
)

_VERSION = " FROM c WHERE v.tenant = c.tenant AND v.config_id = c.config_id AND v.version = %(version)s"

APPROVED = (
    _advance()
    + """
    UPDATE {s}.config_versions AS v SET
        approvals = v.approvals || jsonb_build_array(jsonb_build_object('approver', %(approver)s::text,
            'role', %(role)s::text, 'at', %(at)s::timestamptz)),
        approvals_missing = v.approvals_missing - %(role)s::text,
        status = CASE WHEN (v.approvals_missing - %(role)s::text) = '[]'::jsonb THEN 'awaiting_reload' ELSE v.status END
"""
    + _VERSION
)

REJECTED = (
    _advance() + "UPDATE {s}.config_versions AS v SET status = 'rejected', rejected_reason = %(reason)s" + _VERSION
)

MARKED_BREAKING = (
    _advance()
    + "UPDATE {s}.config_versions AS v SET breaking = true,"
    + " breaking_reasons = v.breaking_reasons || to_jsonb(%(reason)s::text)"
    + _VERSION
)

ACTIVATED = (
    _advance("active_version = %(version)s, activated_at = %(at)s,")
    + """, a AS (
    INSERT INTO {s}.config_activations (tenant, config_id, seq, version, previous, reason, at)
    SELECT tenant, config_id, %(seq)s, %(version)s, %(previous)s, %(reason)s, %(at)s FROM c
    ON CONFLICT DO NOTHING)
    UPDATE {s}.config_versions AS v SET
        status = CASE WHEN v.version = %(version)s THEN 'active' ELSE 'archived' END,
        activated_at = CASE WHEN v.version = %(version)s THEN %(at)s ELSE v.activated_at END
    FROM c WHERE v.tenant = c.tenant AND v.config_id = c.config_id AND v.version IN (%(version)s, %(previous)s)
"""
)

ROLLED_BACK = (
    _advance()
    + """, r AS (
    INSERT INTO {s}.config_rollbacks (tenant, config_id, new_version, from_version, to_version, reason, initiated_by,
        user_id, pinned_conversations, at)
    SELECT tenant, config_id, %(new)s, %(from)s, %(to)s, %(reason)s, %(initiated_by)s, %(user_id)s,
        %(pinned)s::jsonb, %(at)s FROM c
    ON CONFLICT DO NOTHING)
    UPDATE {s}.config_versions AS v SET
        rolled_back = CASE WHEN v.version = %(from)s THEN true ELSE v.rolled_back END,
        rollback_reason = CASE WHEN v.version = %(from)s THEN %(reason)s ELSE v.rollback_reason END,
        restores_version = CASE WHEN v.version = %(new)s THEN %(to)s ELSE v.restores_version END
    FROM c WHERE v.tenant = c.tenant AND v.config_id = c.config_id AND v.version IN (%(from)s, %(new)s)
"""
)

BRANCH_CREATED = (
    _advance()
    + """
    INSERT INTO {s}.config_branches (tenant, config_id, branch, base_version, head_version, description, status,
        created_by, created_at)
    SELECT tenant, config_id, %(branch)s, %(base)s, %(base)s, %(description)s, 'active', %(by)s, %(at)s FROM c
    ON CONFLICT DO NOTHING
"""
)

BRANCH_MERGED = (
    _advance()
    + """
    UPDATE {s}.config_branches AS b SET status = 'merged', merged_into = %(new)s
    FROM c WHERE b.tenant = c.tenant AND b.config_id = c.config_id AND b.branch = %(branch)s
"""
)


class ConfigsProjector(Projector):
    read_model = CONFIGS
    subject = type_subjects(a.AGGREGATE_TYPE)

    async def apply(self, cur: AsyncCursor[Any], event: RecordedEvent, schema: str) -> None:
        p: dict[str, Any] = {
            "tenant": event.stream.tenant,
            "cid": event.stream.aggregate_id,
            "seq": event.seq,
            "ev": event.version,
        }
        match event.event:
            case a.ConfigVersionCreated() as e:
                status = (
                    "draft" if e.branch != a.MAIN else "pending_approval" if e.approvals_needed else "awaiting_reload"
                )
                p |= {
                    "version": e.version,
                    "branch": e.branch,
                    "based_on": e.based_on,
                    "yaml": e.yaml_content,
                    "digest": e.digest,
                    "product_type": e.product_type,
                    "status": status,
                    "author": e.author,
                    "author_type": e.author_type,
                    "message": e.commit_message,
                    "change_type": e.change_type,
                    "changes": json_text(e.changes),
                    "risk": e.risk_level,
                    "risk_reasons": json_text(e.risk_reasons),
                    "breaking": e.breaking,
                    "breaking_reasons": json_text(e.breaking_reasons),
                    "needed": json_text(e.approvals_needed),
                    "evidence": None if e.evidence is None else json_text(e.evidence),
                    "at": e.at,
                }
                template = CREATED_FIRST if event.version == 1 else CREATED if e.branch == a.MAIN else CREATED_ON_BRANCH
            case a.ConfigVersionApproved() as e:
                template = APPROVED
                p |= {"version": e.version, "approver": e.approver, "role": e.role, "at": e.at}
            case a.ConfigVersionRejected() as e:
                template = REJECTED
                p |= {"version": e.version, "reason": e.reason, "at": e.at}
            case a.ConfigVersionMarkedBreaking() as e:
                template = MARKED_BREAKING
                p |= {"version": e.version, "reason": e.reason, "at": e.at}
            case a.ConfigVersionActivated() as e:
                template = ACTIVATED
                p |= {"version": e.version, "previous": e.previous, "reason": e.reason, "at": e.at}
            case a.ConfigRolledBack() as e:
                template = ROLLED_BACK
                p |= {
                    "new": e.new_version,
                    "from": e.from_version,
                    "to": e.to_version,
                    "reason": e.reason,
                    "initiated_by": e.initiated_by,
                    "user_id": e.user_id,
                    "pinned": json_text(e.pinned_conversations),
                    "at": e.at,
                }
            case a.ConfigBranchCreated() as e:
                template = BRANCH_CREATED
                p |= {
                    "branch": e.branch,
                    "base": e.base_version,
                    "description": e.description,
                    "by": e.created_by,
                    "at": e.at,
                }
            case a.ConfigBranchMerged() as e:
                template = BRANCH_MERGED
                p |= {"branch": e.branch, "new": e.new_version, "at": e.at}
            case _:
                return
        await cur.execute(statement(template, schema), p)
