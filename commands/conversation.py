"""The conversation aggregate for the command runner (its ``Decider`` lives in ``domain.conversation``)."""

from __future__ import annotations

from domain import conversation as c

CONVERSATION = c.DECIDER


def reply_command_id(message_id: str) -> str:
    """The id of the command that records the agent's reply to a customer's message: one reply each."""
    return f"reply-{message_id}"
