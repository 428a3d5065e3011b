"""Rate limits a key has on one model, from the config, next to the limits it has across all models.

A model's ``limits`` give every key its own buckets for that model (``{key.id}:{model}:rpm`` and so on,
concurrency included). A ``[[key_limits]]`` rule changes them for one key (named by id or by name) on the
models its glob matches, **field by field**: a field the rule sets replaces the model's value, a field it
leaves out keeps the model's value (or no limit, when the model sets none). When several rules match the
same key and model they are applied in file order, so a later rule wins on the fields it sets: write the
broad patterns first. A rule cannot remove a model's limit; set a high one instead.

The key's own limits (on its record, across every model) still hold: a request must fit both scopes.

Resolution runs once per (key id, model) and is cached; the hot path is then one dict lookup, with no glob
matched. Rules name keys, whose names do not change, so a cached answer stays right for the process's life.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from operator import itemgetter

from tollway.config import Config, KeyLimitConfig, RateLimits
from tollway.limits.base import Quota
from tollway.store import KeyRecord

RATE_KINDS = ("rpm", "itpm", "otpm")


@dataclass(frozen=True, slots=True)
class ModelScope:
    """One key's effective limits on one model, with its bucket names made once."""

    model: str
    limits: RateLimits
    buckets: tuple[tuple[str, str, Quota], ...]
    """(kind, bucket name, quota) for each rate limit that is set."""
    slot: tuple[str, int] | None
    """The concurrency counter's name and limit, when ``limits.max_concurrency`` is set."""

    @classmethod
    def build(cls, key_id: str, model: str, limits: RateLimits) -> ModelScope:
        prefix = f"{key_id}:{model}"
        rates = ((kind, getattr(limits, kind)) for kind in RATE_KINDS)
        buckets = tuple((kind, f"{prefix}:{kind}", Quota(limit)) for kind, limit in rates if limit is not None)
        slot = None if limits.max_concurrency is None else (f"{prefix}:concurrency", limits.max_concurrency)
        return cls(model, limits, buckets, slot)


def overlay(base: RateLimits | None, rule: RateLimits) -> RateLimits:
    """``base`` with every field ``rule`` sets replaced."""
    if base is None:
        return rule
    values = {f.name: getattr(base, f.name) if getattr(rule, f.name) is None else getattr(rule, f.name)
              for f in fields(RateLimits)}
    return RateLimits(**values)


class LimitRules:
    """The model-scoped limits of every key, built once from the config."""

    # The cache holds one entry per key and model that came by; past this many (keys made and dropped over
    # a long run), it starts again rather than grow without end.
    MAX_CACHED = 100_000

    def __init__(self, models: Mapping[str, RateLimits] | None = None, key_limits: Iterable[KeyLimitConfig] = ()
                 ) -> None:
        self._defaults = dict(models or {})
        # By the key they name, each with its place in the file, since the order decides between them.
        self._rules: dict[str, list[tuple[int, KeyLimitConfig]]] = {}
        for i, rule in enumerate(key_limits):
            self._rules.setdefault(rule.key, []).append((i, rule))
        self._empty = not self._defaults and not self._rules
        self._scopes: dict[tuple[str, str], ModelScope | None] = {}

    @classmethod
    def from_config(cls, config: Config) -> LimitRules:
        return cls({m.name: m.limits for m in config.models if m.limits is not None}, config.key_limits)

    def applies(self, key: KeyRecord, model: str) -> bool:
        """Whether a request of ``key`` for ``model`` has any limit to pass: else skip the limiter."""
        return key.limited or self.scope(key, model) is not None

    def scope(self, key: KeyRecord, model: str) -> ModelScope | None:
        """The key's limits on ``model`` beyond its own, or None when it has none there."""
        if self._empty:
            return None
        try:
            return self._scopes[key.id, model]
        except KeyError:
            pass
        if len(self._scopes) >= self.MAX_CACHED:
            self._scopes.clear()
        found = self._scopes[key.id, model] = self._resolve(key, model)
        return found

    def _resolve(self, key: KeyRecord, model: str) -> ModelScope | None:
        limits = self._defaults.get(model)
        mine = [*self._rules.get(key.id, ()), *(self._rules.get(key.name, ()) if key.name != key.id else ())]
        for _, rule in sorted(mine, key=itemgetter(0)):
            if fnmatch.fnmatchcase(model, rule.model):
                limits = overlay(limits, rule.limits)
        return None if limits is None else ModelScope.build(key.id, model, limits)
