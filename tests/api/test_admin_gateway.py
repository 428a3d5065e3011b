"""The admin API's newer parts through a real server: a key's models changed, usage totals, upstream health, the
effective config with every secret masked, and failed token attempts rate limited per address."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_admin import MESSAGE, TOKEN, admin_gateway, create_key, error_of, ok
from tests.conftest import Gateway, Upstream
from tollway.api.admin.auth import BURST, INTERVAL, FailedAttempts, client_of
from tollway.api.admin.config_view import MASK, config_view, masked_url
from tollway.config import Config, parse_config


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = admin_gateway(upstream, tmp_path_factory.mktemp("admin-gateway") / "tollway.db")
    yield gateway
    gateway.server.close()


@pytest.fixture()
def admin(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, headers={"x-admin-token": TOKEN}, timeout=30) as client:
        yield client


def ask_model(gw: Gateway, secret: str, model: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/messages", json=MESSAGE | {"model": model}, headers={"x-api-key": secret},
                      timeout=30)


# -- a key's models --------------------------------------------------------------------------------------------------


def test_changing_a_keys_models_applies_to_the_next_request(gw: Gateway, admin: httpx.Client) -> None:
    key = create_key(admin)
    path = f"/admin/keys/{key['id']}"
    assert ask_model(gw, key["secret"], "claude-sonnet-4-6").status_code == 200
    changed = ok(admin.patch(path, json={"models": [" claude-haiku-* "]}))
    assert changed["models"] == ["claude-haiku-*"]
    error_of(ask_model(gw, key["secret"], "claude-sonnet-4-6"), 403, "permission_error")
    assert ask_model(gw, key["secret"], "claude-haiku-4-5-20251001").status_code == 200
    # null is a change here: every model again.
    assert ok(admin.patch(path, json={"models": None}))["models"] is None
    assert ask_model(gw, key["secret"], "claude-sonnet-4-6").status_code == 200
    both = ok(admin.patch(path, json={"models": ["claude-sonnet-*"], "rpm": 9}))
    assert (both["models"], both["limits"]["rpm"]) == (["claude-sonnet-*"], 9)
    assert ok(admin.get(path))["models"] == ["claude-sonnet-*"]


@pytest.mark.parametrize(("body", "message"), [
    ({"models": []}, "models: give at least one pattern, or null for every model"),
    ({"models": "claude-*"}, "models: must be an array of model name patterns, not a string"),
    ({"models": [" "]}, "models: every pattern must be a non-empty string"),
    ({"models": ["claude-*"], "rpm": -1}, "rpm: must be between 0"),
])
def test_a_refused_models_change_writes_nothing(admin: httpx.Client, body: dict[str, Any], message: str) -> None:
    key = create_key(admin, models=["claude-opus-*"])
    error_of(admin.patch(f"/admin/keys/{key['id']}", json=body), 400, "invalid_request_error", message)
    assert ok(admin.get(f"/admin/keys/{key['id']}"))["models"] == ["claude-opus-*"]


# -- usage totals ----------------------------------------------------------------------------------------------------


def test_usage_has_totals_over_its_groups(gw: Gateway, admin: httpx.Client) -> None:
    key = create_key(admin)
    for model in ("claude-sonnet-4-6", "claude-sonnet-4-6", "claude-haiku-4-5-20251001"):
        assert ask_model(gw, key["secret"], model).status_code == 200
    error_of(ask_model(gw, key["secret"], "claude-opus-4-6"), 502, "api_error")  # its upstream is down
    for by in ("model", "key,model,upstream,day", "day"):
        report = ok(admin.get("/admin/usage", params={"key": key["id"], "by": by}))
        data, totals = report["data"], report["totals"]
        assert (totals["requests"], totals["errors"]) == (4, 1)
        for field in ("requests", "errors", "input_tokens", "output_tokens", "cache_write_5m_tokens",
                      "cache_write_1h_tokens", "cache_read_tokens"):
            assert totals[field] == sum(r[field] for r in data), field
        assert Decimal(totals["cost_usd"]) == sum(Decimal(r["cost_usd"]) for r in data if r["cost_usd"] is not None)
    costs = [r.cost_nanousd for r in gw.usage() if r.key_id == key["id"] and r.cost_nanousd is not None]
    assert Decimal(totals["cost_usd"]) == Decimal(sum(costs)).scaleb(-9)
    empty = ok(admin.get("/admin/usage", params={"key": "nobody"}))
    assert empty == {"data": [], "totals": {"requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0,
                                            "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0,
                                            "cache_read_tokens": 0, "cost_usd": None}}
    # The CSV stays the CLI's: records only.
    csv = admin.get("/admin/usage", params={"key": key["id"], "format": "csv"}).text
    assert "total" not in csv and len(csv.splitlines()) == 1 + 3  # header, and the (key, model) groups


# -- upstreams -------------------------------------------------------------------------------------------------------


def test_upstreams_show_what_healthz_shows(gw: Gateway, admin: httpx.Client) -> None:
    key = create_key(admin)
    for _ in range(3):  # its upstream is down: failures to show
        assert ask_model(gw, key["secret"], "claude-opus-4-6").status_code >= 500
    shown = ok(admin.get("/admin/upstreams"))["data"]
    health = httpx.get(gw.url + "/healthz").json()["upstreams"]

    def steady(upstreams: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # resting_s counts down between the two reads.
        return [{k: v for k, v in u.items() if k != "resting_s"} | {"keys": [
            {k: v for k, v in key.items() if k != "resting_s"} for key in u["keys"]]} for u in upstreams]

    assert steady(shown) == steady(health)
    dead = next(u for u in shown if u["upstream"] == "dead")
    assert dead["errors"] >= 3 and dead["last_error"] and dead["in_flight"] == 0
    assert [u["upstream"] for u in shown] == ["fake", "mock", "dead"]


# -- the config ------------------------------------------------------------------------------------------------------

SECRETS = {"UPSTREAM-KEY-ONE", "UPSTREAM-KEY-TWO", "URL-PASSWORD", "URL-QUERY-KEY", "PG-PASSWORD", "PG-QUERY-PASS",
           "REDIS-PASSWORD", "TOKEN-IN-USER-PART", "ADMIN-TOKEN-0123456789", "PROXY-PASSWORD",
           base64.b64encode(b"relay:PROXY-PASSWORD").decode()}


def secret_config() -> Config:
    raw = {
        "server": {"port": 8080},
        "storage": {"url": "postgresql://tollway:PG-PASSWORD@db.internal:5432/tollway?sslmode=require"
                           "&password=PG-QUERY-PASS"},
        "limits": {"url": "redis://:REDIS-PASSWORD@cache.internal:6379/0"},
        "admin": {"token": "${ADMIN_TOKEN}", "host": "10.0.0.5", "port": 9090},
        "upstreams": [
            {"name": "a", "kind": "anthropic", "api_keys": ["${KEY_ONE}", "UPSTREAM-KEY-TWO"],
             "proxy": "http://relay:PROXY-PASSWORD@proxy.internal:3128"},
            {"name": "o", "kind": "openai", "base_url": "https://me:URL-PASSWORD@llm.example/v1?api_key=URL-QUERY-KEY",
             "api_keys": ["UPSTREAM-KEY-ONE"], "family": "deepseek"},
            {"name": "t", "kind": "openai", "base_url": "https://TOKEN-IN-USER-PART@llm.example/v1"},
        ],
        "models": [{"name": "claude-sonnet-4-6", "targets": [{"upstream": "a"}, {"upstream": "o", "model": "m"}],
                    "prices": {"input": 0.3, "output": 15}, "limits": {"rpm": 5}}],
        "key_limits": [{"key": "team-a", "model": "claude-*", "rpm": 2}],
    }
    return parse_config(raw, "secret.toml", {"ADMIN_TOKEN": "ADMIN-TOKEN-0123456789", "KEY_ONE": "UPSTREAM-KEY-ONE"})


def test_the_config_view_masks_every_secret() -> None:
    config = secret_config()
    view = config_view(config)
    text = json.dumps(view)
    for secret in SECRETS:
        assert secret not in text, secret
    digest = hashlib.sha256(b"ADMIN-TOKEN-0123456789").digest()
    assert digest.hex() not in text and str(digest) not in text
    assert view["storage"]["url"] == (f"postgresql://tollway:{MASK}@db.internal:5432/tollway?sslmode=require"
                                      f"&password={MASK}")
    assert view["limits"]["url"] == f"redis://:{MASK}@cache.internal:6379/0"
    assert view["admin"] == {"token_sha256": MASK, "host": "10.0.0.5", "port": 9090}
    a, o, t = view["upstreams"]
    assert a["api_keys"] == [MASK, MASK] and o["api_keys"] == [MASK] and t["api_keys"] == []
    assert a["proxy"] == {"host": "proxy.internal", "port": 3128, "authorization": MASK} and o["proxy"] is None
    assert o["base_url"] == f"https://me:{MASK}@llm.example/v1?api_key={MASK}"
    assert t["base_url"] == f"https://{MASK}@llm.example/v1"
    assert o["openai"]["family"] == "deepseek"
    # What is not secret is shown as it is, decimals exactly.
    model = view["models"][0]
    assert model["prices"]["input"] == "0.3" and model["limits"]["rpm"] == 5
    assert [t["upstream"] for t in model["targets"]] == ["a", "o"]
    assert view["key_limits"] == [{"key": "team-a", "model": "claude-*", "limits": {
        "rpm": 2, "itpm": None, "otpm": None, "max_concurrency": None}}]
    assert view["server"]["port"] == 8080 and view["source"] == "secret.toml"


@pytest.mark.parametrize(("url", "shown"), [
    ("sqlite:///./tollway.db", "sqlite:///./tollway.db"),
    ("https://api.anthropic.com", "https://api.anthropic.com"),
    ("redis://user:pw@h:1/0?ssl_keyfile=k&db=2", f"redis://user:{MASK}@h:1/0?ssl_keyfile={MASK}&db=2"),
    ("unix:///run/redis.sock?password=pw", f"unix:///run/redis.sock?password={MASK}"),
    ("postgresql://u:p@[::1]:5432/d", f"postgresql://u:{MASK}@[::1]:5432/d"),
    ("https://[::1", MASK),  # unparseable: nothing shown
    ("user:pw@host", MASK),
])
def test_masked_urls(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def config_fields(cls: type, seen: set[type] | None = None) -> set[str]:
    """Every ``Class.field`` reachable from ``cls`` through dataclass-typed fields."""
    import typing

    seen = set() if seen is None else seen
    seen.add(cls)
    names: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        names.add(f"{cls.__name__}.{f.name}")
        for inner in [hints[f.name], *typing.get_args(hints[f.name])]:
            for candidate in [inner, *typing.get_args(inner)]:
                if dataclasses.is_dataclass(candidate) and isinstance(candidate, type) and candidate not in seen:
                    names |= config_fields(candidate, seen)
    return names


def test_every_config_field_has_been_looked_at_for_secrets() -> None:
    """A field added to the config is shown by /admin/config at once: this fails until someone has decided whether
    it is a secret (named in SECRET_FIELDS or marked repr=False) and listed it here."""
    assert config_fields(Config) == {
        "Config.server", "Config.storage", "Config.upstreams", "Config.models", "Config.key_limits", "Config.admin",
        "Config.limits", "Config.log", "Config.source", "LogConfig.requests",
        "ServerConfig.host", "ServerConfig.port", "ServerConfig.shutdown_timeout", "ServerConfig.max_body_bytes",
        "ServerConfig.workers",
        "StorageConfig.url", "StorageConfig.flush_interval", "StorageConfig.key_refresh_interval",
        "StorageConfig.pool_size", "StorageConfig.max_overflow",
        "UpstreamConfig.name", "UpstreamConfig.kind", "UpstreamConfig.base_url", "UpstreamConfig.api_keys",
        "UpstreamConfig.timeout_connect", "UpstreamConfig.timeout_first_byte", "UpstreamConfig.timeout_idle",
        "UpstreamConfig.max_concurrency", "UpstreamConfig.openai", "UpstreamConfig.proxy",
        "Proxy.host", "Proxy.port", "Proxy.authorization",
        "OpenAIOptions.family", "OpenAIOptions.max_tokens_field", "OpenAIOptions.max_output_tokens",
        "OpenAIOptions.reasoning_field", "OpenAIOptions.reasoning_request", "OpenAIOptions.schema_cleaning",
        "OpenAIOptions.send_top_k", "OpenAIOptions.max_stop_sequences",
        "ModelConfig.name", "ModelConfig.targets", "ModelConfig.display_name", "ModelConfig.created_at",
        "ModelConfig.max_tokens", "ModelConfig.retry", "ModelConfig.prices", "ModelConfig.limits",
        "TargetConfig.upstream", "TargetConfig.model", "TargetConfig.weight", "TargetConfig.priority",
        "TargetConfig.prices",
        "Prices.input", "Prices.output", "Prices.cache_write_5m", "Prices.cache_write_1h", "Prices.cache_read",
        "RetryConfig.attempts", "RetryConfig.backoff",
        "RateLimits.rpm", "RateLimits.itpm", "RateLimits.otpm", "RateLimits.max_concurrency",
        "KeyLimitConfig.key", "KeyLimitConfig.model", "KeyLimitConfig.limits",
        "AdminConfig.token_sha256", "AdminConfig.host", "AdminConfig.port",
        "LimitsConfig.url", "LimitsConfig.prefix", "LimitsConfig.lease", "LimitsConfig.timeout",
        "LimitsConfig.retry_delay",
    }


def test_the_live_config_shows_no_secret(gw: Gateway, admin: httpx.Client) -> None:
    text = admin.get("/admin/config").text
    view = json.loads(text)
    assert "upstream-secret" not in text and TOKEN not in text
    assert hashlib.sha256(TOKEN.encode()).hexdigest() not in text
    assert [u["name"] for u in view["upstreams"]] == ["fake", "mock", "dead"]
    assert view["upstreams"][0]["api_keys"] == [MASK] and view["admin"]["token_sha256"] == MASK
    assert view["storage"]["url"] == gw.config.storage.url  # SQLite: nothing to hide
    assert view["storage"]["key_refresh_interval"] == 600


def test_the_token_is_kept_only_as_its_hash(gw: Gateway) -> None:
    config = gw.config
    assert config.admin.token_sha256 == hashlib.sha256(TOKEN.encode()).digest()
    assert TOKEN not in repr(config) and TOKEN not in str(dataclasses.asdict(config))


# -- failed token attempts -------------------------------------------------------------------------------------------


def test_failed_attempts_allow_a_burst_then_one_per_interval() -> None:
    now = [1000.0]
    attempts = FailedAttempts(burst=3, interval=10.0, clock=lambda: now[0])
    for _ in range(3):
        assert attempts.wait("a") == 0
        attempts.failed("a")
    assert attempts.wait("a") == pytest.approx(10.0)
    assert attempts.wait("b") == 0  # others have their own allowance
    now[0] += 9.5
    assert attempts.wait("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert attempts.wait("a") == 0
    attempts.failed("a")
    assert attempts.wait("a") == pytest.approx(10.0)
    now[0] += 30  # the whole burst back after burst * interval
    for _ in range(3):
        assert attempts.wait("a") == 0
        attempts.failed("a")
    assert attempts.wait("a") > 0


def test_past_capacity_newcomers_share_one_allowance() -> None:
    now = [0.0]
    attempts = FailedAttempts(burst=2, interval=10.0, capacity=2, clock=lambda: now[0])
    attempts.failed("a")
    attempts.failed("b")
    for client in ("c", "d"):  # both counted against the shared allowance
        attempts.failed(client)
    assert attempts.wait("e") > 0 and attempts.wait("a") == 0
    now[0] += 100  # every entry has expired: they are dropped, and newcomers get their own again
    attempts.failed("f")
    attempts.failed("g")
    assert attempts.wait("f") == 0 and attempts.wait("h") == 0


@pytest.mark.parametrize(("remote", "client"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    (None, "(unknown)"),
    ("/run/tollway.sock", "/run/tollway.sock"),
])
def test_failures_are_counted_per_address_and_per_ipv6_64(remote: str | None, client: str) -> None:
    assert client_of(remote) == client


def from_address(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def test_failed_token_attempts_are_rate_limited_per_address(upstream: Upstream, tmp_path: Path) -> None:
    gw = admin_gateway(upstream, tmp_path / "tollway.db")
    url = gw.url + "/admin/keys"
    try:
        with from_address("127.0.0.1") as one, from_address("127.0.0.2") as two:
            for i in range(BURST):
                headers = {"x-admin-token": "wrong-token-000000"} if i % 2 else {}
                error_of(one.get(url, headers=headers), 401, "authentication_error")
            r = one.get(url, headers={"x-admin-token": "wrong-token-000000"})
            message = error_of(r, 429, "rate_limit_error", "too many failed admin token attempts")
            assert r.headers["retry-after"] == str(int(INTERVAL)) and f"in {int(INTERVAL)} s" in message
            # The right token too: otherwise guessing would go on, and only a right guess would be told apart.
            error_of(one.get(url, headers={"x-admin-token": TOKEN}), 429, "rate_limit_error")
            # Another address has its own allowance, and its success gives the first one nothing back.
            assert ok(two.get(url, headers={"x-admin-token": TOKEN}))["data"] == []
            error_of(two.get(url, headers={"x-admin-token": "wrong-token-000000"}), 401, "authentication_error")
            error_of(one.get(url, headers={"x-admin-token": TOKEN}), 429, "rate_limit_error")
            # Client requests are none of its business.
            assert one.get(gw.url + "/healthz").status_code == 200
    finally:
        gw.server.close()
