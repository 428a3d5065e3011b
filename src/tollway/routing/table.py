"""Which upstreams serve a model: the routing table built once from the config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tollway.config import Config, ModelConfig, RetryConfig
from tollway.protocol.catalog import CATALOG, LIST_PRICES, Prices
from tollway.providers import Provider, build_provider


@dataclass(frozen=True, slots=True)
class Target:
    provider: Provider
    model: str
    """The model name sent upstream."""
    rewrite: bool
    """Whether that name differs from the client's, so the body must be re-encoded."""
    weight: float = 1.0
    priority: int = 1
    prices: Prices | None = None
    """What a request to this target costs: the target's own price, else the model's, else none."""


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    targets: tuple[Target, ...]
    max_tokens: int | None
    display_name: str
    created_at: str
    max_input_tokens: int | None
    retry: RetryConfig = field(default_factory=RetryConfig)
    ceiling: Prices | None = None
    """The dearest of each price over the targets, for reserving what a request may cost before its target
    is chosen; None when no target has a price."""


def ceiling(prices: list[Prices]) -> Prices | None:
    if not prices:
        return None
    return Prices(*(max(values) for values in zip(*(dataclasses.astuple(p) for p in prices), strict=True)))


class RoutingTable:
    def __init__(self, config: Config) -> None:
        self.providers: dict[str, Provider] = {u.name: build_provider(u) for u in config.upstreams}
        self.routes: dict[str, Route] = {m.name: self._route(m) for m in config.models}
        # An upstream with no keys (the mock) still has one slot, so every target has a key to choose.
        self._keys: dict[str, tuple[str, ...]] = {u.name: u.api_keys or ("",) for u in config.upstreams}

    def _route(self, model: ModelConfig) -> Route:
        info = CATALOG.get(model.name)
        model_prices = model.prices or LIST_PRICES.get(model.name)
        targets = tuple(
            Target(provider=self.providers[t.upstream], model=t.model or model.name,
                   rewrite=bool(t.model) and t.model != model.name, weight=t.weight, priority=t.priority,
                   prices=t.prices or model_prices)
            for t in model.targets
        )
        return Route(
            name=model.name,
            targets=targets,
            max_tokens=model.max_tokens or (info.max_tokens if info else None),
            display_name=model.display_name or (info.display_name if info else model.name),
            created_at=model.created_at or (info.created_at if info else "1970-01-01T00:00:00Z"),
            max_input_tokens=info.max_input_tokens if info else None,
            retry=model.retry,
            ceiling=ceiling([t.prices for t in targets if t.prices is not None]),
        )

    def keys(self, provider: Provider) -> tuple[str, ...]:
        return self._keys[provider.name]

    def key_counts(self) -> dict[str, int]:
        return {name: len(keys) for name, keys in self._keys.items()}

    async def start(self) -> None:
        for provider in self.providers.values():
            await provider.start()

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()
