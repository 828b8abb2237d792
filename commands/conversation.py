"""Conversation use cases: starting one (pinned to its config's active version), and the id of the
agent's reply to a message. The decider itself is ``domain.conversation.DECIDER``."""

from __future__ import annotations

import uuid
from datetime import datetime

from commands.config import ConfigCatalog, active_version
from domain import conversation as c

CONVERSATION = c.DECIDER  # the runner's name for it in the modules that predate ``Decider``


def reply_command_id(message_id: str) -> str:
    """The id of the command that records the agent's reply to a customer's message: one reply each."""
    return f"reply-{message_id}"


def conversation_id_for(tenant: str, idempotency_key: str | None) -> str:
    """A new conversation's id: derived from the request's idempotency key, so a retried start lands
    on the same conversation; random without one."""
    if idempotency_key:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"parley:{tenant}:{idempotency_key}"))
    return str(uuid.uuid4())


async def start_conversation(
    catalog: ConfigCatalog,
    tenant: str,
    *,
    conversation_id: str,
    config_id: str,
    channel: str,
    user_id: str,
    context: dict[str, str] | None,
    initial_message: str | None,
    at: datetime,
) -> c.StartConversation:
    """The command that starts a conversation on the config's active version (pinned for its life)
    and product type, read from the config's own events: no projection need catch up first."""
    config = await catalog.state(tenant, config_id)
    version = active_version(config, config_id)
    return c.StartConversation(
        conversation_id=conversation_id,
        config_id=config_id,
        config_version=version,
        channel=channel,
        user_id=user_id,
        product_type=config.product_type or "chatbot",
        context=context,
        initial_message=initial_message,
        message_id=f"{conversation_id}-m0" if initial_message else None,
        at=at,
    )
