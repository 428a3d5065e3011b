"""The configuration's shape: frozen objects, made once at startup and passed down (see `tollway.config.parse`
for how they are read)."""

from __future__ import annotations

import hashlib
from dataclasses import InitVar, dataclass, field

from tollway.config.proxy import Proxy
from tollway.protocol.catalog import Prices
from tollway.upstream_options import OpenAIOptions

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
    proxy: Proxy | None = None
    """The HTTP proxy it is reached through (its ``proxy`` setting, else the environment's); None: directly."""
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
