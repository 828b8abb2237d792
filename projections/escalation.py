"""The escalation projection: the agent pool's events -> ``read_models.escalation`` tables.

A statement per event, each guarded so that applying it twice changes nothing: an agent's row moves
only forward (the pool's ``version``), and the queue is keyed by escalation.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncCursor

from domain import escalation as p
from projections.projector import Projector
from projections.sql import json_text, statement
from read_models.escalation import ESCALATION
from streams.store import RecordedEvent
from streams.subjects import type_subjects

REGISTERED = """
    INSERT INTO {s}.human_agents (tenant, agent_id, name, role, skills, capacity, registered_at, updated_at, version)
    VALUES (%(tenant)s, %(agent_id)s, %(name)s, %(role)s, %(skills)s::jsonb, %(capacity)s, %(at)s, %(at)s,
        %(version)s)
    ON CONFLICT (tenant, agent_id) DO UPDATE SET name = EXCLUDED.name, role = EXCLUDED.role,
        skills = EXCLUDED.skills, capacity = EXCLUDED.capacity, updated_at = EXCLUDED.updated_at,
        version = EXCLUDED.version
    WHERE human_agents.version < EXCLUDED.version
"""

_AGENT = " WHERE tenant = %(tenant)s AND agent_id = %(agent_id)s AND version < %(version)s"

AVAILABILITY = (
    "UPDATE {s}.human_agents SET available = %(available)s, updated_at = %(at)s, version = %(version)s" + _AGENT
)

ROUTED = (
    """
    WITH taken AS (DELETE FROM {s}.queue WHERE tenant = %(tenant)s AND escalation_id = %(escalation_id)s)
    UPDATE {s}.human_agents SET updated_at = %(at)s, version = %(version)s,
        active = CASE WHEN active ? %(escalation_id)s THEN active ELSE active || to_jsonb(%(escalation_id)s::text) END
    """
    + _AGENT
)

QUEUED = """
    INSERT INTO {s}.queue (tenant, escalation_id, conversation_id, skill, queued_at, version)
    VALUES (%(tenant)s, %(escalation_id)s, %(conversation_id)s, %(skill)s, %(at)s, %(version)s)
    ON CONFLICT (tenant, escalation_id) DO NOTHING
"""

RELEASED = (
    """
    WITH left_queue AS (DELETE FROM {s}.queue WHERE tenant = %(tenant)s AND escalation_id = %(escalation_id)s)
    UPDATE {s}.human_agents SET active = active - %(escalation_id)s::text, updated_at = %(at)s, version = %(version)s
    """
    + _AGENT
)


class EscalationProjector(Projector):
    read_model = ESCALATION
    subject = type_subjects(p.AGGREGATE_TYPE)

    async def apply(self, cur: AsyncCursor[Any], event: RecordedEvent, schema: str) -> None:
        params: dict[str, Any] = {"tenant": event.stream.tenant, "seq": event.seq, "version": event.version}
        match event.event:
            case p.HumanAgentRegistered() as e:
                template = REGISTERED
                params |= {
                    "agent_id": e.agent_id,
                    "name": e.name,
                    "role": e.role,
                    "skills": json_text(e.skills),
                    "capacity": e.capacity,
                    "at": e.at,
                }
            case p.HumanAgentAvailabilitySet() as e:
                template = AVAILABILITY
                params |= {"agent_id": e.agent_id, "available": e.available, "at": e.at}
            case p.EscalationRouted() as e:
                template = ROUTED
                params |= {"agent_id": e.agent_id, "escalation_id": e.escalation_id, "at": e.at}
            case p.EscalationQueued() as e:
                template = QUEUED
                params |= {
                    "escalation_id": e.escalation_id,
                    "conversation_id": e.conversation_id,
                    "skill": e.skill,
                    "at": e.at,
                }
            case p.HumanAgentReleased() as e:
                template = RELEASED
                params |= {"agent_id": e.agent_id or "", "escalation_id": e.escalation_id, "at": e.at}
            case _:
                return
        await cur.execute(statement(template, schema), params)
