"""Reading the configuration: from TOML (or the built-in defaults) into the objects of `tollway.config.model`.

Lookup order: ``--config PATH``, then ``$TOLLWAY_CONFIG``, then ``./tollway.toml``, then the embedded
defaults. ``${VAR}`` inside any string value is replaced from the environment; a missing variable is an
error that names the file and the key, so a typo never turns into an empty upstream key.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from tollway.config.model import (
    ADMIN_TOKEN_MIN_LENGTH,
    DEFAULT_ANTHROPIC_URL,
    LIMIT_FIELDS,
    UPSTREAM_KINDS,
    AdminConfig,
    Config,
    KeyLimitConfig,
    LimitsConfig,
    LogConfig,
    ModelConfig,
    RateLimits,
    RetryConfig,
    ServerConfig,
    StorageConfig,
    TargetConfig,
    UpstreamConfig,
    storage_url_problem,
)
from tollway.config.proxy import proxy_for
from tollway.config.reader import Reader
from tollway.errors import ConfigError
from tollway.protocol.catalog import SEED_MODELS, Prices
from tollway.upstream_options import FAMILIES, OpenAIOptions, guess_family, options_for


def default_config(environ: Mapping[str, str]) -> Config:
    """The embedded defaults: every seed model to Anthropic when a key is set, else to the mock."""
    key = environ.get("ANTHROPIC_API_KEY", "")
    if key:
        try:
            proxy = proxy_for(DEFAULT_ANTHROPIC_URL, None, environ)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        upstream = UpstreamConfig(name="anthropic", kind="anthropic", base_url=DEFAULT_ANTHROPIC_URL,
                                  api_keys=(key,), proxy=proxy)
    else:
        upstream = UpstreamConfig(name="mock", kind="mock")
    models = tuple(ModelConfig(name=m.id, targets=(TargetConfig(upstream=upstream.name),)) for m in SEED_MODELS)
    return Config(upstreams=(upstream,), models=models)


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if environ.get("TOLLWAY_CONFIG"):
        return Path(environ["TOLLWAY_CONFIG"])
    local = Path("tollway.toml")
    return local if local.exists() else None


def load_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ
    path = find_config_path(explicit, env)
    if path is None:
        return default_config(env)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, str(path), env)


def parse_config(raw: Mapping[str, Any], source: str, environ: Mapping[str, str]) -> Config:
    root = Reader(source, environ, raw, "")
    root.check_keys({"server", "storage", "upstreams", "models", "key_limits", "admin", "limits", "log"})

    s = root.table("server")
    s.check_keys({"host", "port", "shutdown_timeout", "max_body_bytes", "workers"})
    server = ServerConfig(
        host=s.string("host", "127.0.0.1"),
        port=s.integer("port", 8080, minimum=0, maximum=65535),
        shutdown_timeout=s.number("shutdown_timeout", 60.0),
        max_body_bytes=s.integer("max_body_bytes", 32 * 1024 * 1024, minimum=1024),
        workers=s.integer("workers", 1, minimum=1, maximum=256),
    )

    st = root.table("storage")
    st.check_keys({"url", "flush_interval", "key_refresh_interval", "pool_size", "max_overflow"})
    url = st.string("url", "sqlite:///./tollway.db")
    problem = storage_url_problem(url)
    if problem is not None:
        raise st.fail("url", problem)
    storage = StorageConfig(
        url=url,
        flush_interval=st.number("flush_interval", 0.5, minimum=0.01),
        key_refresh_interval=st.number("key_refresh_interval", 2.0, minimum=0.05),
        pool_size=st.integer("pool_size", 10, minimum=1, maximum=1000),
        max_overflow=st.integer("max_overflow", 5, minimum=0, maximum=1000),
    )

    upstreams = tuple(_parse_upstream(u) for u in root.tables("upstreams"))
    names = [u.name for u in upstreams]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{source}: upstreams[{i}].name: duplicate upstream name {name!r}")

    models = tuple(_parse_model(m, set(names)) for m in root.tables("models"))
    seen: set[str] = set()
    for i, m in enumerate(models):
        if m.name in seen:
            raise ConfigError(f"{source}: models[{i}].name: duplicate model name {m.name!r}")
        seen.add(m.name)
    if not models:
        raise ConfigError(f"{source}: models: at least one [[models]] entry is required")
    key_limits = _parse_key_limits(root.tables("key_limits"), tuple(seen))
    limits = _parse_limits_backend(root.table("limits"))
    if server.workers > 1 and limits.url is None:
        raise ConfigError(workers_need_redis(source, server.workers))
    lg = root.table("log")
    lg.check_keys({"requests"})
    log = LogConfig(requests=lg.string("requests", "stderr"))
    if not log.requests.strip():
        raise lg.fail("requests", 'must be "stderr", "stdout", "off" or a file path')
    return Config(server=server, storage=storage, upstreams=upstreams, models=models, key_limits=key_limits,
                  admin=_parse_admin(root.table("admin"), server), limits=limits, log=log, source=source)


def workers_need_redis(source: str, workers: int) -> str:
    return (f"{source}: server.workers: {workers} processes need [limits] url (Redis), so that they share rate "
            f"limits and balances; without it each would keep its own")


def _parse_limits_backend(r: Reader) -> LimitsConfig:
    r.check_keys({"url", "prefix", "lease", "timeout", "retry_delay"})
    url = r.optional_string("url")
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise r.fail("url", "must be a redis://, rediss:// or unix:// URL")
    return LimitsConfig(url=url, prefix=r.string("prefix", "tollway:"), lease=r.number("lease", 900.0, minimum=1.0),
                        timeout=r.number("timeout", 1.0, minimum=0.01),
                        retry_delay=r.number("retry_delay", 5.0, minimum=0.1))


def _parse_admin(a: Reader, server: ServerConfig) -> AdminConfig:
    a.check_keys({"token", "host", "port"})
    token = a.optional_string("token")
    if token is None:
        for key in ("host", "port"):
            if key in a.data:
                raise a.fail(key, "the admin API is off without admin.token")
        return AdminConfig()
    # Header values carry visible ASCII only, and a token with spaces could never be sent whole.
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise a.fail("token", "must be printable ASCII with no spaces")
    if len(token) < ADMIN_TOKEN_MIN_LENGTH:
        raise a.fail("token", f"must be at least {ADMIN_TOKEN_MIN_LENGTH} characters (got {len(token)})")
    # A client key as the admin token would open /admin to whoever holds that key.
    if token.startswith("tw-"):
        raise a.fail("token", "must not be a client key (tw-...): make a separate secret, e.g. openssl rand -hex 32")
    if "host" in a.data and "port" not in a.data:
        raise a.fail("host", "needs admin.port: without one the admin API is served on the client port")
    port = a.integer("port", None, minimum=0, maximum=65535) if "port" in a.data else None
    if port is not None and port != 0 and port == server.port:
        raise a.fail("port", f"must differ from server.port ({port}): the point is a port of its own")
    host = a.string("host", "127.0.0.1")
    if not host.strip():
        raise a.fail("host", "must not be empty (0.0.0.0 listens on every interface)")
    return AdminConfig(token=token, host=host, port=port)


_OPENAI_SWITCHES: dict[str, tuple[str, ...] | None] = {
    "max_tokens_field": ("max_tokens", "max_completion_tokens"),
    "reasoning_field": ("reasoning_content", "reasoning", "none"),
    "reasoning_request": ("reasoning_effort", "deepseek", "openrouter", "none"),
    "schema_cleaning": ("none", "openai", "gemini"),
    "max_output_tokens": None,
    "send_top_k": None,
    "max_stop_sequences": None,
}


def _parse_upstream(u: Reader) -> UpstreamConfig:
    u.check_keys({"name", "kind", "base_url", "api_keys", "timeout", "max_concurrency", "proxy", "family",
                  *_OPENAI_SWITCHES})
    kind = u.string("kind")
    if kind not in UPSTREAM_KINDS:
        raise u.fail("kind", f"must be one of {', '.join(UPSTREAM_KINDS)} (got {kind!r})")
    keys_raw = u.data.get("api_keys", [])
    if not isinstance(keys_raw, list) or not all(isinstance(k, str) for k in keys_raw):
        raise u.fail("api_keys", "must be an array of strings")
    keys = tuple(u.expand(k, f"api_keys[{i}]") for i, k in enumerate(keys_raw))
    for i, key in enumerate(keys):
        # A key read from a file through ${VAR} often ends in a newline; sent as a header it would end the line.
        if any(c in key for c in "\r\n\0"):
            raise u.fail(f"api_keys[{i}]", "contains a line break or NUL (a trailing newline from a file?)")
    base_url = u.string("base_url", DEFAULT_ANTHROPIC_URL if kind == "anthropic" else "")
    if kind in ("anthropic", "openai") and not base_url.startswith(("http://", "https://")):
        raise u.fail("base_url", f"must start with http:// or https:// (got {base_url!r})")
    if kind == "anthropic" and (not keys or not all(keys)):
        raise u.fail("api_keys", "an anthropic upstream needs at least one non-empty key")
    openai = _parse_openai_options(u, base_url) if kind == "openai" else None
    if kind != "openai":
        for key in ("family", *_OPENAI_SWITCHES):
            if key in u.data:
                raise u.fail(key, 'only applies to kind = "openai"')
    t = u.table("timeout")
    t.check_keys({"connect", "first_byte", "idle"})
    proxy = None
    if kind != "mock":
        try:
            proxy = proxy_for(base_url, u.optional_string("proxy"), u.env)
        except ValueError as exc:  # its message never repeats the URL: it may carry a password
            raise u.fail("proxy", str(exc)) from None
    return UpstreamConfig(
        name=u.string("name"),
        kind=kind,
        base_url=base_url.rstrip("/"),
        api_keys=keys,
        timeout_connect=t.number("connect", 10.0, minimum=0.001),
        timeout_first_byte=t.number("first_byte", 600.0, minimum=0.001),
        timeout_idle=t.number("idle", 300.0, minimum=0.001),
        max_concurrency=u.integer("max_concurrency", None, minimum=1) if "max_concurrency" in u.data else None,
        proxy=proxy,
        openai=openai,
    )


def _parse_openai_options(u: Reader, base_url: str) -> OpenAIOptions:
    family = u.string("family", guess_family(base_url))
    if family not in FAMILIES:
        raise u.fail("family", f"must be one of {', '.join(FAMILIES)} (got {family!r})")
    overrides: dict[str, object] = {}
    for key, choices in _OPENAI_SWITCHES.items():
        if key not in u.data:
            continue
        if choices is not None:
            value = u.string(key)
            if value not in choices:
                raise u.fail(key, f"must be one of {', '.join(choices)} (got {value!r})")
            overrides[key] = value
        elif key == "send_top_k":
            if not isinstance(u.data[key], bool):
                raise u.fail(key, "must be true or false")
            overrides[key] = u.data[key]
        else:
            overrides[key] = u.integer(key, None, minimum=1)
    return options_for(family, overrides)


def _parse_model(m: Reader, upstream_names: set[str]) -> ModelConfig:
    m.check_keys({"name", "targets", "display_name", "created_at", "max_tokens", "retry", "prices", "limits"})
    name = m.string("name")
    targets = []
    for t in m.tables("targets"):
        t.check_keys({"upstream", "model", "weight", "priority", "prices"})
        upstream = t.string("upstream")
        if upstream not in upstream_names:
            known = ", ".join(sorted(upstream_names)) or "none is configured"
            raise t.fail("upstream", f"no upstream named {upstream!r} (known: {known})")
        weight = t.number("weight", 1.0, minimum=0.0)
        if weight <= 0:
            raise t.fail("weight", "must be greater than 0")
        targets.append(TargetConfig(upstream=upstream, model=t.optional_string("model"), weight=weight,
                                    priority=t.integer("priority", 1, minimum=1), prices=_parse_prices(t)))
    if not targets:
        raise m.fail("targets", "at least one target is required")
    max_tokens = m.integer("max_tokens", None, minimum=1) if "max_tokens" in m.data else None
    r = m.table("retry")
    r.check_keys({"attempts", "backoff"})
    retry = RetryConfig(attempts=r.integer("attempts", None, minimum=1, maximum=20) if "attempts" in r.data else None,
                        backoff=r.number("backoff", 0.5))
    return ModelConfig(name=name, targets=tuple(targets), display_name=m.optional_string("display_name"),
                       created_at=m.optional_string("created_at"), max_tokens=max_tokens, retry=retry,
                       prices=_parse_prices(m), limits=_parse_model_limits(m))


def _parse_model_limits(m: Reader) -> RateLimits | None:
    """``limits = { rpm = 10, otpm = 20000 }``: what every key may use of this model on its own."""
    if "limits" not in m.data:
        return None
    r = m.table("limits")
    r.check_keys(set(LIMIT_FIELDS))
    return _parse_limits(r)


def _parse_limits(r: Reader) -> RateLimits:
    """The limit fields of ``r``: each a positive integer (absent: not set), one at least."""
    if not any(name in r.data for name in LIMIT_FIELDS):
        # An empty override would be a rule that changes nothing, most likely a misspelt one.
        raise ConfigError(f"{r.source}: {r.where}: set at least one of {', '.join(LIMIT_FIELDS)}")
    values = {name: r.integer(name, None, minimum=1) for name in LIMIT_FIELDS if name in r.data}
    return RateLimits(**values)


def _parse_key_limits(rules: list[Reader], model_names: tuple[str, ...]) -> tuple[KeyLimitConfig, ...]:
    parsed: list[KeyLimitConfig] = []
    for r in rules:
        r.check_keys({"key", "model", *LIMIT_FIELDS})
        key, model = r.string("key"), r.string("model")
        if not key:
            raise r.fail("key", "must be a key id or name, not empty")
        limits = _parse_limits(r)
        # A pattern that matches no configured model could never apply: most likely a typo.
        if not any(fnmatch.fnmatchcase(name, model) for name in model_names):
            raise r.fail("model", f"matches no configured model (got {model!r})")
        for i, earlier in enumerate(parsed):
            if (earlier.key, earlier.model) == (key, model):
                raise r.fail("model", f"key_limits[{i}] already sets limits for key {key!r} and model {model!r}")
        parsed.append(KeyLimitConfig(key=key, model=model, limits=limits))
    return tuple(parsed)


def _parse_prices(r: Reader) -> Prices | None:
    """``prices = { input = 3, output = 15 }`` in dollars per million tokens; cache prices default to
    Anthropic's multipliers of the input price."""
    if "prices" not in r.data:
        return None
    p = r.table("prices")
    p.check_keys({"input", "output", "cache_write_5m", "cache_write_1h", "cache_read"})
    for required in ("input", "output"):
        if required not in p.data:
            raise p.fail(required, "is required")

    def price(key: str) -> Decimal:
        value = p.data[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise p.fail(key, "must be a number of dollars per million tokens, 0 or more")
        # Through str: TOML floats are binary, and 0.3 must stay 0.3.
        return Decimal(str(value))

    base = Prices.list(str(price("input")), str(price("output")))
    return Prices(base.input, base.output,
                  price("cache_write_5m") if "cache_write_5m" in p.data else base.cache_write_5m,
                  price("cache_write_1h") if "cache_write_1h" in p.data else base.cache_write_1h,
                  price("cache_read") if "cache_read" in p.data else base.cache_read)
