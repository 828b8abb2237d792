"""The human agent pool aggregate for the command runner (its ``Decider`` lives in ``domain.agent_pool``)."""

from __future__ import annotations

from domain import agent_pool as p

AGENT_POOL = p.DECIDER
