"""Language models behind one port: Anthropic, OpenAI, and an offline rule-based model, in a fallback chain.

The SDK adapters live in ``agents.llm.anthropic`` and ``agents.llm.openai`` and are imported
only by whoever builds them (``factory``), so importing this package loads neither SDK.
"""

from agents.llm.chain import ChainResult, Fallback, FallbackChain
from agents.llm.factory import chain_from_config, names_from_setting, providers_from_config
from agents.llm.offline import Analysis, OfflineModel, render_template
from agents.llm.port import (
    ChatMessage,
    Completion,
    LLMProvider,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    ToolCallRequest,
    ToolSpec,
)

__all__ = [
    "Analysis",
    "ChainResult",
    "ChatMessage",
    "Completion",
    "Fallback",
    "FallbackChain",
    "LLMProvider",
    "OfflineModel",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "ToolCallRequest",
    "ToolSpec",
    "chain_from_config",
    "names_from_setting",
    "providers_from_config",
    "render_template",
]
