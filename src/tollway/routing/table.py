"""Which upstream serves a model: the routing table built once from the config."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from tollway.config import Config, ModelConfig
from tollway.protocol.catalog import CATALOG
from tollway.providers import Provider, build_provider


@dataclass(frozen=True, slots=True)
class Target:
    provider: Provider
    model: str
    """The model name sent upstream."""
    rewrite: bool
    """Whether that name differs from the client's, so the body must be re-encoded."""


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    targets: tuple[Target, ...]
    max_tokens: int | None
    display_name: str
    created_at: str
    max_input_tokens: int | None


class RoutingTable:
    def __init__(self, config: Config) -> None:
        self.providers: dict[str, Provider] = {u.name: build_provider(u) for u in config.upstreams}
        self.routes: dict[str, Route] = {m.name: self._route(m) for m in config.models}
        # Upstream keys are spread round-robin; a pool with cooldowns comes with the routing issue.
        self._keys: dict[str, Iterator[str]] = {
            u.name: itertools.cycle(u.api_keys or ("",)) for u in config.upstreams
        }

    def _route(self, model: ModelConfig) -> Route:
        info = CATALOG.get(model.name)
        targets = tuple(
            Target(provider=self.providers[t.upstream], model=t.model or model.name,
                   rewrite=bool(t.model) and t.model != model.name)
            for t in model.targets
        )
        return Route(
            name=model.name,
            targets=targets,
            max_tokens=model.max_tokens or (info.max_tokens if info else None),
            display_name=model.display_name or (info.display_name if info else model.name),
            created_at=model.created_at or (info.created_at if info else "1970-01-01T00:00:00Z"),
            max_input_tokens=info.max_input_tokens if info else None,
        )

    def pick(self, route: Route) -> Target:
        return route.targets[0]

    def api_key(self, provider: Provider) -> str:
        return next(self._keys[provider.name])

    async def start(self) -> None:
        for provider in self.providers.values():
            await provider.start()

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()
