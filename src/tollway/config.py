"""Configuration: read once from TOML (or built-in defaults) into frozen objects that are passed down.

Lookup order: ``--config PATH``, then ``$TOLLWAY_CONFIG``, then ``./tollway.toml``, then the embedded
defaults. ``${VAR}`` inside any string value is replaced from the environment; a missing variable is an
error that names the file and the key, so a typo never turns into an empty upstream key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tollway.errors import ConfigError
from tollway.protocol.catalog import SEED_MODELS, Prices
from tollway.upstream_options import FAMILIES, OpenAIOptions, guess_family, options_for

UPSTREAM_KINDS = ("anthropic", "openai", "mock")
STORAGE_URL_PREFIXES = ("sqlite:///", "postgresql://", "postgres://")


def storage_url_problem(url: str) -> str | None:
    """What is wrong with a ``storage.url``, or None."""
    if url.startswith(STORAGE_URL_PREFIXES):
        return None
    # Only the scheme is shown: the rest of a database URL may hold a password.
    scheme = url.split("://", 1)[0] + "://" if "://" in url else url[:12]
    return f"must start with {', '.join(STORAGE_URL_PREFIXES)} (got {scheme!r})"
DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_timeout: float = 60.0
    """Seconds a SIGTERM waits for open streams to finish before closing them."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Anthropic's own limit for /v1/messages; larger bodies get 413 request_too_large."""
    workers: int = 1
    """Processes serving the port; more than one needs ``[limits] url`` (Redis), where they share limits and
    balances."""


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str = "sqlite:///./tollway.db"
    flush_interval: float = 0.5
    """Seconds between usage-row batch writes."""
    key_refresh_interval: float = 2.0
    """Seconds between reloads of changed keys; bounds how long a revoked key keeps working."""
    pool_size: int = 10
    """PostgreSQL connections kept open per process (SQLite ignores it)."""
    max_overflow: int = 5
    """PostgreSQL connections opened beyond ``pool_size`` at a peak, and closed after it."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    requests: str = "stderr"
    """Where the one JSON line per request goes: ``stderr``, ``stdout``, a file path (appended to), or ``off``."""


ADMIN_TOKEN_MIN_LENGTH = 16


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    url: str | None = field(default=None, repr=False)
    """``redis://`` (or ``rediss://``, ``unix://``) for rate limits shared by every replica; None keeps them in
    this process. Kept out of the repr: it may carry a password."""
    prefix: str = "tollway:"
    lease: float = 900.0
    """Seconds a concurrency slot counts at most, so a replica killed mid-request frees its slots: longer than
    the longest stream."""
    timeout: float = 1.0
    retry_delay: float = 5.0
    """Seconds between tries of an unreachable Redis; limits are this replica's own meanwhile."""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    token: InitVar[str | None] = None
    """What ``/admin`` requires (``Authorization: Bearer`` or ``x-admin-token``); None turns the admin API off.
    Only its SHA-256 is kept, so neither a logged config nor a memory dump shows the token itself."""
    token_sha256: bytes | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    """Where the admin API listens when it has a port of its own."""
    port: int | None = None
    """A port for the admin API alone (0: any free one); None serves it under ``/admin`` on the client port."""

    def __post_init__(self, token: str | None) -> None:
        if token is not None:
            object.__setattr__(self, "token_sha256", admin_token_digest(token))

    @property
    def enabled(self) -> bool:
        return self.token_sha256 is not None


def admin_token_digest(token: str) -> bytes:
    """What an admin token is stored and compared as: digests of one length, whatever was sent."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    kind: str
    base_url: str = ""
    api_keys: tuple[str, ...] = ()
    timeout_connect: float = 10.0
    timeout_first_byte: float = 600.0
    timeout_idle: float = 300.0
    max_concurrency: int | None = None
    """Requests in flight to this upstream at most; past it, other targets are tried."""
    openai: OpenAIOptions | None = None
    """For ``kind = "openai"``: the switches for that server family."""


@dataclass(frozen=True, slots=True)
class TargetConfig:
    upstream: str
    model: str | None = None
    """The name the upstream knows the model by; None keeps the client's name."""
    weight: float = 1.0
    """Share of traffic among the targets of the same priority."""
    priority: int = 1
    """Lower goes first; a priority is used only when every target of the ones before has no capacity left."""
    prices: Prices | None = None
    """What this target costs, when it is not the model's price (another upstream's rates)."""


@dataclass(frozen=True, slots=True)
class RetryConfig:
    attempts: int | None = None
    """Tries in all; None means each healthy target once."""
    backoff: float = 0.5
    """Seconds before a second round over the same targets, doubled each round."""


LIMIT_FIELDS = ("rpm", "itpm", "otpm", "max_concurrency")


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests, input and output tokens per minute, requests in flight; None leaves one unset."""

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class KeyLimitConfig:
    """One ``[[key_limits]]`` rule: a key's own limits on the models its pattern matches."""

    key: str
    """The key's id or its name."""
    model: str
    """A glob of model names, as clients send them."""
    limits: RateLimits


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    targets: tuple[TargetConfig, ...]
    display_name: str | None = None
    created_at: str | None = None
    max_tokens: int | None = None
    """Largest max_tokens accepted; defaults to the catalog's cap for known models."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    prices: Prices | None = None
    """Overrides the list price of a known model; None keeps it (and unknown models cost nothing)."""
    limits: RateLimits | None = None
    """Every key's own limits on this model, on top of the key's limits across all models."""


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    upstreams: tuple[UpstreamConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()
    key_limits: tuple[KeyLimitConfig, ...] = ()
    """Per key and model overrides of the models' limits, in file order."""
    admin: AdminConfig = field(default_factory=AdminConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "<built-in defaults>"
    """Where this config came from, for messages and the startup banner."""

    def upstream(self, name: str) -> UpstreamConfig:
        for u in self.upstreams:
            if u.name == name:
                return u
        raise KeyError(name)

    @property
    def uses_mock(self) -> bool:
        return any(u.kind == "mock" for u in self.upstreams)


def default_config(environ: Mapping[str, str]) -> Config:
    """The embedded defaults: every seed model to Anthropic when a key is set, else to the mock."""
    key = environ.get("ANTHROPIC_API_KEY", "")
    if key:
        upstream = UpstreamConfig(name="anthropic", kind="anthropic", base_url=DEFAULT_ANTHROPIC_URL,
                                  api_keys=(key,))
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


class _Reader:
    """Typed access to one TOML table, with errors that name the file and the dotted key."""

    def __init__(self, source: str, env: Mapping[str, str], data: Mapping[str, Any], where: str) -> None:
        self.source, self.env, self.data, self.where = source, env, data, where

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._path(key)}: {problem}")

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.fail(key, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def string(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {type(value).__name__}")
        return self.expand(value, key)

    def optional_string(self, key: str) -> str | None:
        return self.string(key) if key in self.data else None

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, not {type(value).__name__}")
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}")
        return float(value)

    def integer(self, key: str, default: int | None, *, minimum: int, maximum: int | None = None) -> int:
        value = self.data.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {type(value).__name__}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise self.fail(key, f"must be {bound} (got {value})")
        return value

    def table(self, key: str) -> _Reader:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return _Reader(self.source, self.env, value, self._path(key))

    def tables(self, key: str) -> list[_Reader]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, "must be an array of tables")
        return [_Reader(self.source, self.env, v, f"{self._path(key)}[{i}]") for i, v in enumerate(value)]

    def expand(self, value: str, key: str) -> str:
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.env:
                raise self.fail(key, f"environment variable {name} is not set")
            return self.env[name]

        return _ENV_REF.sub(sub, value)


def parse_config(raw: Mapping[str, Any], source: str, environ: Mapping[str, str]) -> Config:
    root = _Reader(source, environ, raw, "")
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


def _parse_limits_backend(r: _Reader) -> LimitsConfig:
    r.check_keys({"url", "prefix", "lease", "timeout", "retry_delay"})
    url = r.optional_string("url")
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise r.fail("url", "must be a redis://, rediss:// or unix:// URL")
    return LimitsConfig(url=url, prefix=r.string("prefix", "tollway:"), lease=r.number("lease", 900.0, minimum=1.0),
                        timeout=r.number("timeout", 1.0, minimum=0.01),
                        retry_delay=r.number("retry_delay", 5.0, minimum=0.1))


def _parse_admin(a: _Reader, server: ServerConfig) -> AdminConfig:
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


def _parse_upstream(u: _Reader) -> UpstreamConfig:
    u.check_keys({"name", "kind", "base_url", "api_keys", "timeout", "max_concurrency", "family", *_OPENAI_SWITCHES})
    kind = u.string("kind")
    if kind not in UPSTREAM_KINDS:
        raise u.fail("kind", f"must be one of {', '.join(UPSTREAM_KINDS)} (got {kind!r})")
    keys_raw = u.data.get("api_keys", [])
    if not isinstance(keys_raw, list) or not all(isinstance(k, str) for k in keys_raw):
        raise u.fail("api_keys", "must be an array of strings")
    keys = tuple(u.expand(k, f"api_keys[{i}]") for i, k in enumerate(keys_raw))
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
    return UpstreamConfig(
        name=u.string("name"),
        kind=kind,
        base_url=base_url.rstrip("/"),
        api_keys=keys,
        timeout_connect=t.number("connect", 10.0, minimum=0.001),
        timeout_first_byte=t.number("first_byte", 600.0, minimum=0.001),
        timeout_idle=t.number("idle", 300.0, minimum=0.001),
        max_concurrency=u.integer("max_concurrency", None, minimum=1) if "max_concurrency" in u.data else None,
        openai=openai,
    )


def _parse_openai_options(u: _Reader, base_url: str) -> OpenAIOptions:
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


def _parse_model(m: _Reader, upstream_names: set[str]) -> ModelConfig:
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


def _parse_model_limits(m: _Reader) -> RateLimits | None:
    """``limits = { rpm = 10, otpm = 20000 }``: what every key may use of this model on its own."""
    if "limits" not in m.data:
        return None
    r = m.table("limits")
    r.check_keys(set(LIMIT_FIELDS))
    return _parse_limits(r)


def _parse_limits(r: _Reader) -> RateLimits:
    """The limit fields of ``r``: each a positive integer (absent: not set), one at least."""
    if not any(name in r.data for name in LIMIT_FIELDS):
        # An empty override would be a rule that changes nothing, most likely a misspelt one.
        raise ConfigError(f"{r.source}: {r.where}: set at least one of {', '.join(LIMIT_FIELDS)}")
    values = {name: r.integer(name, None, minimum=1) for name in LIMIT_FIELDS if name in r.data}
    return RateLimits(**values)


def _parse_key_limits(rules: list[_Reader], model_names: tuple[str, ...]) -> tuple[KeyLimitConfig, ...]:
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


def _parse_prices(r: _Reader) -> Prices | None:
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
