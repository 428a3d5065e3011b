"""Configuration: read once from TOML (or built-in defaults) into frozen objects that are passed down.

`model` holds the objects, `parse` reads them (lookup order, ``${VAR}``s, the checks), `reader` the typed
access to a TOML table that names the file and the key in every error.
"""

from tollway.config.model import (
    ADMIN_TOKEN_MIN_LENGTH,
    DEFAULT_ANTHROPIC_URL,
    LIMIT_FIELDS,
    STORAGE_URL_PREFIXES,
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
    admin_token_digest,
    storage_url_problem,
)
from tollway.config.parse import default_config, find_config_path, load_config, parse_config, workers_need_redis

__all__ = [
    "ADMIN_TOKEN_MIN_LENGTH", "DEFAULT_ANTHROPIC_URL", "LIMIT_FIELDS", "STORAGE_URL_PREFIXES", "UPSTREAM_KINDS",
    "AdminConfig", "Config", "KeyLimitConfig", "LimitsConfig", "LogConfig", "ModelConfig", "RateLimits",
    "RetryConfig", "ServerConfig", "StorageConfig", "TargetConfig", "UpstreamConfig", "admin_token_digest",
    "default_config", "find_config_path", "load_config", "parse_config", "storage_url_problem",
    "workers_need_redis",
]
