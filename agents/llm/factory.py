"""Which models a process talks to, from its settings: a provider without its key is skipped.

``providers_from_config(["anthropic", "openai", "offline"], keys)`` gives the providers in that
order; with no key set at all it gives the offline model alone. The SDK adapters are imported only
when their key is present. ``ProviderKeys`` is read once, at a process's composition root; a plain
mapping is read as an environment (tests, scripts).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import msgspec
import structlog

from agents.llm.chain import FallbackChain
from agents.llm.offline import OfflineModel
from agents.llm.port import LLMProvider
from domain.bot import KNOWN_PROVIDERS

log = structlog.get_logger(__name__)

KNOWN = KNOWN_PROVIDERS


class ProviderKeys(msgspec.Struct, frozen=True, kw_only=True):
    """The keys, endpoints and models of the remote providers (empty key: that provider is skipped)."""

    anthropic_api_key: str = ""
    anthropic_base_url: str = ""
    anthropic_model: str = ""
    openai_api_key: str = ""
    openai_base_url: str = ""
    openai_model: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProviderKeys:
        """``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``, ``ANTHROPIC_MODEL`` and the same for ``OPENAI_``."""
        env = os.environ if env is None else env
        return cls(**{field: env.get(field.upper(), "").strip() for field in cls.__struct_fields__})


def _keys(keys: ProviderKeys | Mapping[str, str]) -> ProviderKeys:
    return keys if isinstance(keys, ProviderKeys) else ProviderKeys.from_env(keys)


def providers_from_config(
    names: Sequence[str], keys: ProviderKeys | Mapping[str, str], *, offline: OfflineModel | None = None
) -> list[LLMProvider]:
    """The named providers whose keys are set, in order (the offline model needs none)."""
    keys = _keys(keys)
    offline = offline or OfflineModel()
    providers: list[LLMProvider] = []
    for name in (name.strip().lower() for name in names):
        match name:
            case "anthropic":
                if keys.anthropic_api_key:
                    from agents.llm import anthropic

                    providers.append(
                        anthropic.AnthropicProvider(
                            api_key=keys.anthropic_api_key,
                            base_url=keys.anthropic_base_url or anthropic.DEFAULT_BASE_URL,
                            model=keys.anthropic_model or anthropic.DEFAULT_MODEL,
                        )
                    )
                else:
                    log.info("llm.provider_skipped", provider=name, unset="ANTHROPIC_API_KEY")
            case "openai":
                if keys.openai_api_key:
                    from agents.llm import openai

                    providers.append(
                        openai.OpenAIProvider(
                            api_key=keys.openai_api_key,
                            base_url=keys.openai_base_url or openai.DEFAULT_BASE_URL,
                            model=keys.openai_model or openai.DEFAULT_MODEL,
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
    names: Sequence[str],
    keys: ProviderKeys | Mapping[str, str],
    *,
    timeout: float = 30.0,
    offline: OfflineModel | None = None,
) -> FallbackChain:
    return FallbackChain(providers_from_config(names, keys, offline=offline), timeout=timeout)


def names_from_setting(value: str) -> list[str]:
    """``"anthropic, openai,offline"`` as a list, for a settings field read from the environment."""
    return [name.strip() for name in value.split(",") if name.strip()]
