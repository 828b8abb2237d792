"""The conversation aggregate for the command runner (its ``Decider`` lives in ``domain.conversation``)."""

from __future__ import annotations

from domain import conversation as c

CONVERSATION = c.DECIDER
