"""Upstream kinds, chosen by the ``kind`` of each ``[[upstreams]]`` entry."""

from __future__ import annotations

from tollway.config import UpstreamConfig
from tollway.providers.anthropic import AnthropicProvider
from tollway.providers.base import Provider, UpstreamCall, UpstreamReply
from tollway.providers.mock import MockProvider

PROVIDER_KINDS: dict[str, type[Provider]] = {"anthropic": AnthropicProvider, "mock": MockProvider}


def build_provider(config: UpstreamConfig) -> Provider:
    return PROVIDER_KINDS[config.kind](config)


__all__ = ["PROVIDER_KINDS", "Provider", "UpstreamCall", "UpstreamReply", "build_provider"]
