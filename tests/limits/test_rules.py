"""Resolving a key's limits on a model: the model's default, the key's rules over it, and the cache."""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from tollway.config import KeyLimitConfig, RateLimits, parse_config
from tollway.limits import LimitRules, ModelScope, Quota
from tollway.store import KeyRecord

OPUS, SONNET = "claude-opus-4-6", "claude-sonnet-4-6"


def make_key(key_id: str = "key_a", name: str = "team-a", *, rpm: int | None = None, itpm: int | None = None,
             otpm: int | None = None, max_concurrency: int | None = None) -> KeyRecord:
    return KeyRecord(id=key_id, name=name, secret_hash="h" + key_id, hint="tw-...", models=None,
                     created_at=datetime(2026, 1, 1, tzinfo=UTC), rpm=rpm, itpm=itpm, otpm=otpm,
                     max_concurrency=max_concurrency)


def rule(key: str, model: str, **limits: int) -> KeyLimitConfig:
    return KeyLimitConfig(key=key, model=model, limits=RateLimits(**limits))


def limits_of(rules: LimitRules, key: KeyRecord, model: str) -> RateLimits | None:
    scope = rules.scope(key, model)
    return None if scope is None else scope.limits


def test_no_rules_means_only_the_key_record_decides() -> None:
    rules = LimitRules()
    assert rules.scope(make_key(), OPUS) is None
    assert not rules.applies(make_key(), OPUS)
    assert rules.applies(make_key(rpm=5), OPUS)
    assert rules.applies(make_key(max_concurrency=1), OPUS)


def test_a_model_default_gives_every_key_its_own_buckets() -> None:
    rules = LimitRules({OPUS: RateLimits(rpm=10, otpm=20000, max_concurrency=2)})
    scope = rules.scope(make_key("key_a"), OPUS)
    assert scope == ModelScope(OPUS, RateLimits(rpm=10, otpm=20000, max_concurrency=2),
                               (("rpm", f"key_a:{OPUS}:rpm", Quota(10)), ("otpm", f"key_a:{OPUS}:otpm", Quota(20000))),
                               (f"key_a:{OPUS}:concurrency", 2))
    other = rules.scope(make_key("key_b", "team-b"), OPUS)
    assert other is not None and other.buckets[0][1] == f"key_b:{OPUS}:rpm"
    assert rules.scope(make_key(), SONNET) is None
    assert rules.applies(make_key(), OPUS) and not rules.applies(make_key(), SONNET)


def test_a_key_rule_overrides_the_model_default_field_by_field() -> None:
    rules = LimitRules({OPUS: RateLimits(rpm=10, otpm=20000)}, [rule("key_a", OPUS, rpm=100, itpm=5000)])
    assert limits_of(rules, make_key("key_a"), OPUS) == RateLimits(rpm=100, itpm=5000, otpm=20000)
    assert limits_of(rules, make_key("key_b", "team-b"), OPUS) == RateLimits(rpm=10, otpm=20000)


def test_a_rule_names_a_key_by_id_or_by_name() -> None:
    rules = LimitRules(key_limits=[rule("team-a", OPUS, rpm=3), rule("key_z", OPUS, otpm=7)])
    assert limits_of(rules, make_key("key_a", "team-a"), OPUS) == RateLimits(rpm=3)
    assert limits_of(rules, make_key("key_z", "zed"), OPUS) == RateLimits(otpm=7)
    assert limits_of(rules, make_key("key_b", "team-b"), OPUS) is None


def test_a_rule_on_a_model_without_defaults_still_limits_that_key() -> None:
    rules = LimitRules(key_limits=[rule("key_a", SONNET, max_concurrency=1)])
    assert rules.applies(make_key("key_a"), SONNET)
    scope = rules.scope(make_key("key_a"), SONNET)
    assert scope is not None and scope.buckets == () and scope.slot == (f"key_a:{SONNET}:concurrency", 1)
    assert not rules.applies(make_key("key_a"), OPUS)


def test_globs_and_file_order_later_rules_win_on_the_fields_they_set() -> None:
    rules = LimitRules({OPUS: RateLimits(rpm=10, itpm=1000)},
                       [rule("team-a", "claude-*", rpm=50, otpm=500), rule("key_a", "claude-opus-*", rpm=70),
                        rule("team-a", "claude-sonnet-*", otpm=900)])
    assert limits_of(rules, make_key("key_a", "team-a"), OPUS) == RateLimits(rpm=70, itpm=1000, otpm=500)
    assert limits_of(rules, make_key("key_a", "team-a"), SONNET) == RateLimits(rpm=50, otpm=900)
    # The same rules the other way round: the broad one, now last, sets rpm over the narrow one.
    backwards = LimitRules({OPUS: RateLimits(rpm=10, itpm=1000)},
                           [rule("key_a", "claude-opus-*", rpm=70), rule("team-a", "claude-*", rpm=50, otpm=500)])
    assert limits_of(backwards, make_key("key_a", "team-a"), OPUS) == RateLimits(rpm=50, itpm=1000, otpm=500)


def test_resolution_is_cached_and_matches_no_glob_after_the_first_request(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = fnmatch.fnmatchcase

    def counting(name: str, pattern: str) -> bool:
        calls.append((name, pattern))
        return real(name, pattern)

    monkeypatch.setattr(fnmatch, "fnmatchcase", counting)
    rules = LimitRules({OPUS: RateLimits(rpm=10)}, [rule("key_a", "claude-*", otpm=5)])
    key = make_key("key_a")
    first = rules.scope(key, OPUS)
    assert calls == [(OPUS, "claude-*")]
    for _ in range(100):
        assert rules.scope(key, OPUS) is first
        assert rules.applies(key, OPUS)
    # A reloaded record of the same key (new limits, same id) is served from the cache too.
    assert rules.scope(replace(key, rpm=3), OPUS) is first
    assert len(calls) == 1


def test_the_cache_starts_again_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LimitRules, "MAX_CACHED", 3)
    rules = LimitRules({OPUS: RateLimits(rpm=10)})
    scopes = [rules.scope(make_key(f"key_{i}"), OPUS) for i in range(3)]
    assert rules.scope(make_key("key_0"), OPUS) is scopes[0]
    rules.scope(make_key("key_3"), OPUS)  # the fourth: the cache is emptied first
    again = rules.scope(make_key("key_0"), OPUS)
    assert again == scopes[0] and again is not scopes[0]


def test_from_config() -> None:
    raw: dict[str, Any] = {
        "upstreams": [{"name": "mock", "kind": "mock"}],
        "models": [{"name": OPUS, "targets": [{"upstream": "mock"}], "limits": {"rpm": 10, "otpm": 20000}},
                   {"name": SONNET, "targets": [{"upstream": "mock"}]}],
        "key_limits": [{"key": "team-a", "model": "claude-opus-*", "otpm": 40000}],
    }
    rules = LimitRules.from_config(parse_config(raw, "conf.toml", {}))
    assert limits_of(rules, make_key("key_a", "team-a"), OPUS) == RateLimits(rpm=10, otpm=40000)
    assert limits_of(rules, make_key("key_b", "team-b"), OPUS) == RateLimits(rpm=10, otpm=20000)
    assert not rules.applies(make_key("key_a", "team-a"), SONNET)
