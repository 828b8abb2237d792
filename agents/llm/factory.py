"""Which models a process talks to, from its settings: a provider without its key is skipped.

``providers_from_config(["anthropic", "openai", "offline"], os.environ)`` gives the providers in
that order; with no key set at all it gives the offline model alone. The SDK adapters are imported
only when their key is present.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from agents.llm.chain import FallbackChain
from agents.llm.offline import OfflineModel
from agents.llm.port import LLMProvider
from domain.bot import KNOWN_PROVIDERS

log = structlog.get_logger(__name__)

KNOWN = KNOWN_PROVIDERS


def providers_from_config(
    names: Sequence[str], env: Mapping[str, str], *, offline: OfflineModel | None = None
) -> list[LLMProvider]:
    """``ANTHROPIC_API_KEY``/``OPENAI_API_KEY`` enable a provider; ``*_BASE_URL`` and ``*_MODEL`` override."""
    offline = offline or OfflineModel()
    providers: list[LLMProvider] = []
    for name in (name.strip().lower() for name in names):
        match name:
            case "anthropic":
                if key := env.get("ANTHROPIC_API_KEY", "").strip():
                    from agents.llm import anthropic

                    providers.append(
                        anthropic.AnthropicProvider(
                            api_key=key,
                            base_url=env.get("ANTHROPIC_BASE_URL") or anthropic.DEFAULT_BASE_URL,
                            model=env.get("ANTHROPIC_MODEL") or anthropic.DEFAULT_MODEL,
                        )
                    )
                else:
                    log.info("llm.provider_skipped", provider=name, unset="ANTHROPIC_API_KEY")
            case "openai":
                if key := env.get("OPENAI_API_KEY", "").strip():
                    from agents.llm import openai

                    providers.append(
                        openai.OpenAIProvider(
                            api_key=key,
                            base_url=env.get("OPENAI_BASE_URL") or openai.DEFAULT_BASE_URL,
                            model=env.get("OPENAI_MODEL") or openai.DEFAULT_MODEL,
                        )
                    )
                else:
                    log.info("llm.provider_skipped", provider=name, unset="OPENAI_API_KEY")
            case "offline":
                providers.append(offline)
            case _:
                raise ValueError(f"unknown LLM provider {name!r}; known: {', '.join(KNOWN)}")
    if not providers:
        log.info("llm.offline_only", configured=list(names))
        providers.append(offline)
    return providers


def chain_from_config(
    names: Sequence[str], env: Mapping[str, str], *, timeout: float = 30.0, offline: OfflineModel | None = None
) -> FallbackChain:
    return FallbackChain(providers_from_config(names, env, offline=offline), timeout=timeout)


def names_from_setting(value: str) -> list[str]:
    """``"anthropic, openai,offline"`` as a list, for a settings field read from the environment."""
    return [name.strip() for name in value.split(",") if name.strip()]
