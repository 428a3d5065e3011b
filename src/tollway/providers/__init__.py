"""Upstream kinds, chosen by the ``kind`` of each ``[[upstreams]]`` entry.

Kinds are named by import string and loaded on first use, so a gateway that relays only to Anthropic
never imports the OpenAI translation or its tokenizer.
"""

from __future__ import annotations

import importlib

from tollway.config import UpstreamConfig
from tollway.providers.base import Provider, UpstreamCall, UpstreamReply

PROVIDER_KINDS: dict[str, str] = {
    "anthropic": "tollway.providers.anthropic:AnthropicProvider",
    "openai": "tollway.providers.openai.provider:OpenAIProvider",
    "mock": "tollway.providers.mock:MockProvider",
}


def build_provider(config: UpstreamConfig) -> Provider:
    module, _, name = PROVIDER_KINDS[config.kind].partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, Provider)
    provider: Provider = cls(config)
    return provider


__all__ = ["PROVIDER_KINDS", "Provider", "UpstreamCall", "UpstreamReply", "build_provider"]
