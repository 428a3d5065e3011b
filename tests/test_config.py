"""Configuration: defaults, TOML parsing, ${VAR} expansion, errors that name the file and key, lookup order."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest

from tollway.config import (
    DEFAULT_ANTHROPIC_URL,
    AdminConfig,
    Config,
    KeyLimitConfig,
    ModelConfig,
    RateLimits,
    ServerConfig,
    StorageConfig,
    TargetConfig,
    UpstreamConfig,
    default_config,
    load_config,
    parse_config,
)
from tollway.errors import ConfigError

SEED_MODEL_IDS = [
    "claude-opus-4-6",
    "claude-sonnet-4-6",
    "claude-opus-4-5-20251101",
    "claude-haiku-4-5-20251001",
    "claude-sonnet-4-5-20250929",
    "claude-opus-4-1-20250805",
    "claude-opus-4-20250514",
    "claude-sonnet-4-20250514",
    "claude-3-7-sonnet-20250219",
    "claude-3-5-sonnet-20241022",
]

MINIMAL_TOML = """
[[upstreams]]
name = "mock"
kind = "mock"

[[models]]
name = "m"
targets = [{ upstream = "mock" }]
"""


def minimal(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "upstreams": [{"name": "mock", "kind": "mock"}],
        "models": [{"name": "m", "targets": [{"upstream": "mock"}]}],
    }
    raw.update(extra)
    return raw


def parse(raw: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return parse_config(raw, "conf.toml", env or {})


def config_error(raw: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(raw, env)
    return str(caught.value)


# -- defaults ---------------------------------------------------------------------------------------------------


def test_defaults_without_api_key_use_the_mock() -> None:
    config = default_config({})
    assert config.upstreams == (UpstreamConfig(name="mock", kind="mock"),)
    assert [m.name for m in config.models] == SEED_MODEL_IDS
    assert all(m.targets == (TargetConfig(upstream="mock"),) for m in config.models)
    assert config.uses_mock is True
    assert config.source == "<built-in defaults>"
    assert config.server == ServerConfig()
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.storage == StorageConfig()
    assert config.storage.url == "sqlite:///./tollway.db"


def test_defaults_with_api_key_use_anthropic() -> None:
    config = default_config({"ANTHROPIC_API_KEY": "sk-ant-test"})
    assert config.upstreams == (UpstreamConfig(name="anthropic", kind="anthropic",
                                               base_url="https://api.anthropic.com", api_keys=("sk-ant-test",)),)
    assert [m.name for m in config.models] == SEED_MODEL_IDS
    assert all(m.targets == (TargetConfig(upstream="anthropic"),) for m in config.models)
    assert all(m.max_tokens is None and m.display_name is None for m in config.models)
    assert config.uses_mock is False
    assert config.upstream("anthropic").api_keys == ("sk-ant-test",)
    with pytest.raises(KeyError):
        config.upstream("mock")


def test_empty_api_key_counts_as_unset() -> None:
    assert default_config({"ANTHROPIC_API_KEY": ""}).upstreams[0].kind == "mock"


def test_load_config_without_any_file_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, {}) == default_config({})
    assert load_config(None, {"ANTHROPIC_API_KEY": "k"}).upstreams[0].kind == "anthropic"


def test_load_config_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOLLWAY_CONFIG", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    assert load_config().upstreams[0].api_keys == ("from-env",)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert load_config().upstreams[0].kind == "mock"


# -- parsing ----------------------------------------------------------------------------------------------------


def test_full_config() -> None:
    raw = {
        "server": {"host": "0.0.0.0", "port": 9000, "shutdown_timeout": 5, "max_body_bytes": 2048},
        "storage": {"url": "sqlite:////var/lib/tollway.db", "flush_interval": 1, "key_refresh_interval": 0.5},
        "upstreams": [
            {"name": "main", "kind": "anthropic", "base_url": "https://proxy.example/", "api_keys": ["k1", "k2"],
             "timeout": {"connect": 2, "first_byte": 30.5, "idle": 60}},
            {"name": "mock", "kind": "mock"},
        ],
        "models": [
            {"name": "claude-sonnet-4-6", "targets": [{"upstream": "main"}, {"upstream": "mock", "model": "m2"}],
             "display_name": "Sonnet", "created_at": "2026-02-17T00:00:00Z", "max_tokens": 1000},
        ],
    }
    config = parse(raw)
    assert config.server == ServerConfig(host="0.0.0.0", port=9000, shutdown_timeout=5.0, max_body_bytes=2048)
    assert config.storage == StorageConfig(url="sqlite:////var/lib/tollway.db", flush_interval=1.0,
                                           key_refresh_interval=0.5)
    assert config.upstreams == (
        UpstreamConfig(name="main", kind="anthropic", base_url="https://proxy.example", api_keys=("k1", "k2"),
                       timeout_connect=2.0, timeout_first_byte=30.5, timeout_idle=60.0),
        UpstreamConfig(name="mock", kind="mock"),
    )
    assert config.models == (
        ModelConfig(name="claude-sonnet-4-6",
                    targets=(TargetConfig(upstream="main"), TargetConfig(upstream="mock", model="m2")),
                    display_name="Sonnet", created_at="2026-02-17T00:00:00Z", max_tokens=1000),
    )
    assert config.source == "conf.toml"
    assert config.uses_mock is True


@pytest.mark.parametrize("url", ["postgresql://tollway:pw@db.internal:5432/tollway", "postgres://db/tollway",
                                 "postgresql://db/tollway?sslmode=require"])
def test_storage_on_postgres_with_its_pool(url: str) -> None:
    config = parse(minimal(storage={"url": url, "pool_size": 20, "max_overflow": 0}))
    assert config.storage == StorageConfig(url=url, pool_size=20, max_overflow=0)


def test_storage_pool_defaults() -> None:
    storage = parse(minimal(storage={"url": "postgres://db/tollway"})).storage
    assert (storage.pool_size, storage.max_overflow) == (10, 5)


def test_storage_url_password_from_the_environment() -> None:
    config = parse(minimal(storage={"url": "postgresql://tollway:${PGPASS}@db/tollway"}), {"PGPASS": "s3cret"})
    assert config.storage.url == "postgresql://tollway:s3cret@db/tollway"


def test_minimal_config_gets_default_sections() -> None:
    config = parse(minimal())
    assert config.server == ServerConfig()
    assert config.storage == StorageConfig()
    assert config.upstreams == (UpstreamConfig(name="mock", kind="mock"),)
    assert config.models == (ModelConfig(name="m", targets=(TargetConfig(upstream="mock"),)),)


def test_anthropic_upstream_gets_the_default_url() -> None:
    config = parse(minimal(upstreams=[{"name": "a", "kind": "anthropic", "api_keys": ["k"]}],
                           models=[{"name": "m", "targets": [{"upstream": "a"}]}]))
    assert config.upstreams[0].base_url == DEFAULT_ANTHROPIC_URL


def test_env_var_expansion() -> None:
    raw = minimal(
        server={"host": "${HOST}"},
        storage={"url": "sqlite:///${DATA}/t.db"},
        upstreams=[{"name": "a", "kind": "anthropic", "base_url": "https://${DOMAIN}/v",
                    "api_keys": ["${KEY}", "x${KEY}y"]}],
        models=[{"name": "${MODEL}", "targets": [{"upstream": "a", "model": "up-${MODEL}"}]}],
    )
    env = {"HOST": "10.0.0.1", "DATA": "/srv", "DOMAIN": "api.example", "KEY": "secret", "MODEL": "claude-x"}
    config = parse(raw, env)
    assert config.server.host == "10.0.0.1"
    assert config.storage.url == "sqlite:////srv/t.db"
    assert config.upstreams[0].base_url == "https://api.example/v"
    assert config.upstreams[0].api_keys == ("secret", "xsecrety")
    assert config.models[0] == ModelConfig(name="claude-x", targets=(TargetConfig(upstream="a", model="up-claude-x"),))


def test_only_braced_references_expand() -> None:
    config = parse(minimal(server={"host": "$HOST"}), {"HOST": "nope"})
    assert config.server.host == "$HOST"


def test_env_var_set_to_empty_string_expands_to_empty() -> None:
    assert parse(minimal(server={"host": "a${EMPTY}b"}), {"EMPTY": ""}).server.host == "ab"


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (minimal(upstreams=[{"name": "a", "kind": "anthropic", "api_keys": ["${NOPE}"]}],
                 models=[{"name": "m", "targets": [{"upstream": "a"}]}]), "upstreams[0].api_keys[0]"),
        (minimal(upstreams=[{"name": "mock", "kind": "mock"},
                            {"name": "a", "kind": "anthropic", "api_keys": ["ok", "also-${NOPE}"]}]),
         "upstreams[1].api_keys[1]"),
        (minimal(upstreams=[{"name": "a", "kind": "anthropic", "base_url": "https://${NOPE}", "api_keys": ["k"]}],
                 models=[{"name": "m", "targets": [{"upstream": "a"}]}]), "upstreams[0].base_url"),
        (minimal(server={"host": "${NOPE}"}), "server.host"),
        (minimal(storage={"url": "sqlite:///${NOPE}"}), "storage.url"),
        (minimal(models=[{"name": "m", "targets": [{"upstream": "mock", "model": "${NOPE}"}]}]),
         "models[0].targets[0].model"),
    ],
)
def test_missing_env_var_names_file_and_key(raw: dict[str, Any], where: str) -> None:
    message = config_error(raw, {"OTHER": "x"})
    assert message == f"conf.toml: {where}: environment variable NOPE is not set"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (minimal(listen=1), "conf.toml: listen: unknown key (expected one of: admin, key_limits, limits, log, models, "
                            "server, storage, upstreams)"),
        (minimal(server={"hots": "x"}), "conf.toml: server.hots: unknown key (expected one of: host, "
                                        "max_body_bytes, port, shutdown_timeout, workers)"),
        (minimal(storage={"path": "x"}), "conf.toml: storage.path: unknown key"),
        (minimal(upstreams=[{"name": "mock", "kind": "mock", "key": "x"}]), "conf.toml: upstreams[0].key: unknown key"),
        (minimal(upstreams=[{"name": "mock", "kind": "mock", "timeout": {"read": 1}}]),
         "conf.toml: upstreams[0].timeout.read: unknown key"),
        (minimal(models=[{"name": "m", "targets": [{"upstream": "mock", "cost": 2}]}]),
         "conf.toml: models[0].targets[0].cost: unknown key"),
        (minimal(models=[{"name": "m", "targets": [{"upstream": "mock"}], "alias": "x"}]),
         "conf.toml: models[0].alias: unknown key"),
    ],
)
def test_unknown_keys(raw: dict[str, Any], message: str) -> None:
    assert config_error(raw).startswith(message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (minimal(server={"port": "8080"}), "conf.toml: server.port: must be an integer, not str"),
        (minimal(server={"port": True}), "conf.toml: server.port: must be an integer, not bool"),
        (minimal(server={"port": 8080.0}), "conf.toml: server.port: must be an integer, not float"),
        (minimal(server={"port": 70000}), "conf.toml: server.port: must be between 0 and 65535 (got 70000)"),
        (minimal(server={"port": -1}), "conf.toml: server.port: must be between 0 and 65535 (got -1)"),
        (minimal(server={"max_body_bytes": 10}), "conf.toml: server.max_body_bytes: must be at least 1024 (got 10)"),
        (minimal(server={"host": 1}), "conf.toml: server.host: must be a string, not int"),
        (minimal(server={"shutdown_timeout": "60"}), "conf.toml: server.shutdown_timeout: must be a number, not str"),
        (minimal(server={"shutdown_timeout": False}), "conf.toml: server.shutdown_timeout: must be a number, not bool"),
        (minimal(server={"shutdown_timeout": -1}), "conf.toml: server.shutdown_timeout: must be at least 0.0"),
        (minimal(server="localhost"), "conf.toml: server: must be a table"),
        (minimal(storage={"url": "mysql://root:hunter2@db/tollway"}),
         "conf.toml: storage.url: must start with sqlite:///, postgresql://, postgres:// (got 'mysql://')"),
        (minimal(storage={"url": "./tollway.db"}),
         "conf.toml: storage.url: must start with sqlite:///, postgresql://, postgres:// (got './tollway.db')"),
        (minimal(storage={"pool_size": 0}), "conf.toml: storage.pool_size: must be between 1 and 1000 (got 0)"),
        (minimal(storage={"pool_size": 2.5}), "conf.toml: storage.pool_size: must be an integer, not float"),
        (minimal(storage={"max_overflow": -1}),
         "conf.toml: storage.max_overflow: must be between 0 and 1000 (got -1)"),
        (minimal(storage={"max_overflow": "5"}), "conf.toml: storage.max_overflow: must be an integer, not str"),
        (minimal(storage={"flush_interval": 0}), "conf.toml: storage.flush_interval: must be at least 0.01"),
        (minimal(storage={"key_refresh_interval": 0.01}),
         "conf.toml: storage.key_refresh_interval: must be at least 0.05"),
        (minimal(upstreams={"name": "mock"}), "conf.toml: upstreams: must be an array of tables"),
        (minimal(upstreams=["mock"]), "conf.toml: upstreams: must be an array of tables"),
        (minimal(upstreams=[{"kind": "mock"}]), "conf.toml: upstreams[0].name: is required"),
        (minimal(upstreams=[{"name": "mock"}]), "conf.toml: upstreams[0].kind: is required"),
        (minimal(upstreams=[{"name": "mock", "kind": "mock", "api_keys": "k"}]),
         "conf.toml: upstreams[0].api_keys: must be an array of strings"),
        (minimal(upstreams=[{"name": "mock", "kind": "mock", "api_keys": [1]}]),
         "conf.toml: upstreams[0].api_keys: must be an array of strings"),
        (minimal(upstreams=[{"name": "mock", "kind": "mock", "timeout": 5}]),
         "conf.toml: upstreams[0].timeout: must be a table"),
        (minimal(upstreams=[{"name": "mock", "kind": "mock", "timeout": {"connect": 0}}]),
         "conf.toml: upstreams[0].timeout.connect: must be at least 0.001"),
        (minimal(upstreams=[{"name": "a", "kind": "anthropic"}]),
         "conf.toml: upstreams[0].api_keys: an anthropic upstream needs at least one non-empty key"),
        (minimal(upstreams=[{"name": "a", "kind": "anthropic", "api_keys": ["k", "sk-ant-x\n"]}]),
         "conf.toml: upstreams[0].api_keys[1]: contains a line break or NUL (a trailing newline from a file?)"),
        (minimal(upstreams=[{"name": "a", "kind": "anthropic", "api_keys": ["k", ""]}]),
         "conf.toml: upstreams[0].api_keys: an anthropic upstream needs at least one non-empty key"),
        (minimal(upstreams=[{"name": "a", "kind": "anthropic", "api_keys": ["k"], "base_url": "api.anthropic.com"}]),
         "conf.toml: upstreams[0].base_url: must start with http:// or https:// (got 'api.anthropic.com')"),
        (minimal(models="m"), "conf.toml: models: must be an array of tables"),
        (minimal(models=[]), "conf.toml: models: at least one [[models]] entry is required"),
        (minimal(models=[{"targets": [{"upstream": "mock"}]}]), "conf.toml: models[0].name: is required"),
        (minimal(models=[{"name": "m"}]), "conf.toml: models[0].targets: at least one target is required"),
        (minimal(models=[{"name": "m", "targets": [{}]}]), "conf.toml: models[0].targets[0].upstream: is required"),
        (minimal(models=[{"name": "m", "targets": [{"upstream": "mock"}], "max_tokens": 0}]),
         "conf.toml: models[0].max_tokens: must be at least 1 (got 0)"),
        (minimal(models=[{"name": "m", "targets": [{"upstream": "mock"}], "max_tokens": "big"}]),
         "conf.toml: models[0].max_tokens: must be an integer, not str"),
    ],
)
def test_wrong_values(raw: dict[str, Any], message: str) -> None:
    assert config_error(raw) == message


def test_config_without_upstreams_has_no_target() -> None:
    raw = {"models": [{"name": "m", "targets": [{"upstream": "mock"}]}]}
    assert config_error(raw) == ("conf.toml: models[0].targets[0].upstream: no upstream named 'mock' "
                                 "(known: none is configured)")


def test_unknown_upstream_in_a_target() -> None:
    raw = minimal(upstreams=[{"name": "mock", "kind": "mock"}, {"name": "alt", "kind": "mock"}],
                  models=[{"name": "a", "targets": [{"upstream": "mock"}]},
                          {"name": "b", "targets": [{"upstream": "mock"}, {"upstream": "missing"}]}])
    assert config_error(raw) == ("conf.toml: models[1].targets[1].upstream: no upstream named 'missing' "
                                 "(known: alt, mock)")


def test_duplicate_upstream_names() -> None:
    raw = minimal(upstreams=[{"name": "mock", "kind": "mock"}, {"name": "b", "kind": "mock"},
                             {"name": "mock", "kind": "mock"}])
    assert config_error(raw) == "conf.toml: upstreams[2].name: duplicate upstream name 'mock'"


def test_duplicate_model_names() -> None:
    raw = minimal(models=[{"name": "m", "targets": [{"upstream": "mock"}]},
                          {"name": "m", "targets": [{"upstream": "mock"}]}])
    assert config_error(raw) == "conf.toml: models[1].name: duplicate model name 'm'"


def test_bad_kind() -> None:
    assert config_error(minimal(upstreams=[{"name": "mock", "kind": "grpc"}])) == (
        "conf.toml: upstreams[0].kind: must be one of anthropic, openai, mock (got 'grpc')")


def test_mock_upstream_may_have_no_keys() -> None:
    assert parse(minimal()).upstreams[0].api_keys == ()


# -- files and lookup order ---------------------------------------------------------------------------------------


def write(path: Path, model: str) -> Path:
    path.write_text(MINIMAL_TOML.replace('name = "m"', f'name = "{model}"'), encoding="utf-8")
    return path


def test_load_explicit_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", "from-explicit")
    config = load_config(str(path), {})
    assert [m.name for m in config.models] == ["from-explicit"]
    assert config.source == str(path)


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    explicit = write(tmp_path / "explicit.toml", "explicit")
    env_file = write(tmp_path / "env.toml", "env")
    env = {"TOLLWAY_CONFIG": str(env_file)}

    # Nothing: built-in defaults.
    assert load_config(None, {}).source == "<built-in defaults>"
    # ./tollway.toml is found in the working directory.
    write(cwd / "tollway.toml", "local")
    assert [m.name for m in load_config(None, {}).models] == ["local"]
    assert load_config(None, {}).source == "tollway.toml"
    # $TOLLWAY_CONFIG beats ./tollway.toml.
    assert [m.name for m in load_config(None, env).models] == ["env"]
    # --config beats both.
    assert [m.name for m in load_config(str(explicit), env).models] == ["explicit"]
    # An empty TOLLWAY_CONFIG is as good as unset.
    assert [m.name for m in load_config(None, {"TOLLWAY_CONFIG": ""}).models] == ["local"]


def test_local_file_beats_api_key_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "tollway.toml", "local")
    config = load_config(None, {"ANTHROPIC_API_KEY": "k"})
    assert [m.name for m in config.models] == ["local"]
    assert config.upstreams[0].kind == "mock"


def test_explicit_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(missing), {})
    assert str(caught.value) == f"{missing}: file not found"


def test_tollway_config_file_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "tollway.toml", "local")  # a missing $TOLLWAY_CONFIG does not fall back to it
    missing = tmp_path / "gone.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"TOLLWAY_CONFIG": str(missing)})
    assert str(caught.value) == f"{missing}: file not found"


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert str(caught.value).startswith(f"{path}: not valid TOML: ")


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(MINIMAL_TOML + '\n[server]\nport = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert str(caught.value) == f"{path}: server.port: must be an integer, not str"


def test_env_expansion_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[[upstreams]]\nname = "a"\nkind = "anthropic"\napi_keys = ["${UPSTREAM_KEY}"]\n'
                    '[[models]]\nname = "m"\ntargets = [{ upstream = "a" }]\n', encoding="utf-8")
    assert load_config(str(path), {"UPSTREAM_KEY": "sk-1"}).upstreams[0].api_keys == ("sk-1",)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert str(caught.value) == f"{path}: upstreams[0].api_keys[0]: environment variable UPSTREAM_KEY is not set"


def test_openai_upstream_family_defaults_and_overrides() -> None:
    deepseek = parse(minimal(upstreams=[{"name": "mock", "kind": "openai", "base_url": "https://api.deepseek.com/v1"}]))
    options = deepseek.upstreams[0].openai
    assert options is not None
    assert (options.family, options.reasoning_request, options.max_output_tokens) == ("deepseek", "deepseek", 8192)
    custom = parse(minimal(upstreams=[{"name": "mock", "kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                                       "family": "openai", "max_tokens_field": "max_tokens", "send_top_k": True,
                                       "max_output_tokens": 1000}]))
    options = custom.upstreams[0].openai
    assert options is not None
    assert (options.family, options.max_tokens_field, options.send_top_k, options.max_output_tokens,
            options.schema_cleaning) == ("openai", "max_tokens", True, 1000, "openai")


@pytest.mark.parametrize(("extra", "message"), [
    ({"family": "grok"}, "upstreams[0].family: must be one of"),
    ({"reasoning_field": "thoughts"}, "upstreams[0].reasoning_field: must be one of"),
    ({"send_top_k": "yes"}, "upstreams[0].send_top_k: must be true or false"),
    ({"max_output_tokens": 0}, "upstreams[0].max_output_tokens: must be at least 1"),
])
def test_openai_switch_errors(extra: dict[str, object], message: str) -> None:
    raw = minimal(upstreams=[{"name": "mock", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", **extra}])
    assert message in config_error(raw)


def test_openai_switches_refused_on_other_kinds() -> None:
    raw = minimal(upstreams=[{"name": "mock", "kind": "mock", "family": "openai"}])
    assert config_error(raw) == 'conf.toml: upstreams[0].family: only applies to kind = "openai"'


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "tollway.example.toml"
    config = load_config(str(example), {"ANTHROPIC_API_KEY": "a", "DEEPSEEK_API_KEY": "d"})
    assert {u.kind for u in config.upstreams} == {"anthropic", "openai", "mock"}
    assert config.upstream("deepseek").openai is not None


def test_routing_keys() -> None:
    raw = minimal(models=[{"name": "m", "retry": {"attempts": 3, "backoff": 0.2},
                           "targets": [{"upstream": "mock", "weight": 3}, {"upstream": "mock", "priority": 2}]}])
    model = parse(raw).models[0]
    assert [(t.weight, t.priority) for t in model.targets] == [(3.0, 1), (1.0, 2)]
    assert (model.retry.attempts, model.retry.backoff) == (3, 0.2)
    assert parse(minimal()).models[0].retry.attempts is None


@pytest.mark.parametrize(("target", "message"), [
    ({"weight": 0}, "models[0].targets[0].weight: must be greater than 0"),
    ({"priority": 0}, "models[0].targets[0].priority: must be at least 1"),
])
def test_routing_key_errors(target: dict[str, object], message: str) -> None:
    raw = minimal(models=[{"name": "m", "targets": [{"upstream": "mock", **target}]}])
    assert message in config_error(raw)


def test_prices_on_models_and_targets() -> None:
    raw = minimal(models=[{"name": "m", "prices": {"input": 0.3, "output": 1.2},
                           "targets": [{"upstream": "mock"}, {"upstream": "mock", "priority": 2,
                                                              "prices": {"input": 2, "output": 8, "cache_read": 0}}]}])
    model = parse(raw).models[0]
    assert model.prices is not None and model.targets[0].prices is None
    assert (str(model.prices.input), str(model.prices.output), str(model.prices.cache_read)) == ("0.3", "1.2", "0.03")
    target = model.targets[1].prices
    assert target is not None and (str(target.input), str(target.cache_write_5m), str(target.cache_read)) == (
        "2", "2.50", "0")


@pytest.mark.parametrize(("prices", "message"), [
    ({"output": 1}, "models[0].prices.input: is required"),
    ({"input": -1, "output": 1}, "models[0].prices.input: must be a number"),
    ({"input": 1, "output": 1, "vat": 2}, "models[0].prices.vat: unknown key"),
])
def test_price_errors(prices: dict[str, object], message: str) -> None:
    raw = minimal(models=[{"name": "m", "prices": prices, "targets": [{"upstream": "mock"}]}])
    assert message in config_error(raw)


# -- rate limits per model and per key and model -------------------------------------------------------------------


def two_models(**extra: Any) -> dict[str, Any]:
    return minimal(models=[{"name": "claude-opus-4-6", "targets": [{"upstream": "mock"}]},
                           {"name": "claude-sonnet-4-6", "targets": [{"upstream": "mock"}]}], **extra)


def test_model_limits_and_key_limits() -> None:
    raw = two_models(key_limits=[{"key": "key_abc", "model": "claude-opus-4-6", "rpm": 100, "max_concurrency": 2},
                                 {"key": "team-a", "model": "claude-*", "otpm": 5000}])
    raw["models"][0]["limits"] = {"rpm": 10, "otpm": 20000}
    config = parse(raw)
    assert config.models[0].limits == RateLimits(rpm=10, otpm=20000)
    assert config.models[1].limits is None
    assert config.key_limits == (
        KeyLimitConfig(key="key_abc", model="claude-opus-4-6", limits=RateLimits(rpm=100, max_concurrency=2)),
        KeyLimitConfig(key="team-a", model="claude-*", limits=RateLimits(otpm=5000)),
    )


def test_no_limits_by_default() -> None:
    config = parse(minimal())
    assert config.models[0].limits is None and config.key_limits == ()
    assert default_config({}).key_limits == ()


def test_limits_from_a_file_in_both_table_styles(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(MINIMAL_TOML + "limits = { rpm = 10, itpm = 30000 }\n"
                    '[[models]]\nname = "n"\ntargets = [{ upstream = "mock" }]\n'
                    "[models.limits]\notpm = 20000\nmax_concurrency = 3\n"
                    '[[key_limits]]\nkey = "${TEAM}"\nmodel = "*"\nitpm = 50000\n', encoding="utf-8")
    config = load_config(str(path), {"TEAM": "team-a"})
    assert [m.limits for m in config.models] == [RateLimits(rpm=10, itpm=30000),
                                                 RateLimits(otpm=20000, max_concurrency=3)]
    assert config.key_limits == (KeyLimitConfig(key="team-a", model="*", limits=RateLimits(itpm=50000)),)


@pytest.mark.parametrize(("limits", "message"), [
    ({"rpm": 0}, "conf.toml: models[0].limits.rpm: must be at least 1 (got 0)"),
    ({"otpm": -5}, "conf.toml: models[0].limits.otpm: must be at least 1 (got -5)"),
    ({"itpm": "1000"}, "conf.toml: models[0].limits.itpm: must be an integer, not str"),
    ({"rpm": 1.5}, "conf.toml: models[0].limits.rpm: must be an integer, not float"),
    ({"max_concurrency": True}, "conf.toml: models[0].limits.max_concurrency: must be an integer, not bool"),
    ({"tpm": 10}, "conf.toml: models[0].limits.tpm: unknown key (expected one of: itpm, max_concurrency, otpm, rpm)"),
    ({}, "conf.toml: models[0].limits: set at least one of rpm, itpm, otpm, max_concurrency"),
    (10, "conf.toml: models[0].limits: must be a table"),
])
def test_model_limit_errors(limits: object, message: str) -> None:
    raw = minimal(models=[{"name": "m", "targets": [{"upstream": "mock"}], "limits": limits}])
    assert config_error(raw) == message


@pytest.mark.parametrize(("rules", "message"), [
    ({"key": "k"}, "conf.toml: key_limits: must be an array of tables"),
    ([{"model": "claude-opus-4-6", "rpm": 1}], "conf.toml: key_limits[0].key: is required"),
    ([{"key": "k", "rpm": 1}], "conf.toml: key_limits[0].model: is required"),
    ([{"key": "", "model": "*", "rpm": 1}], "conf.toml: key_limits[0].key: must be a key id or name, not empty"),
    ([{"key": 7, "model": "*", "rpm": 1}], "conf.toml: key_limits[0].key: must be a string, not int"),
    ([{"key": "k", "model": "*"}],
     "conf.toml: key_limits[0]: set at least one of rpm, itpm, otpm, max_concurrency"),
    ([{"key": "k", "model": "*", "rpm": 1}, {"key": "k", "model": "claude-opus-4-6", "rpm": 0}],
     "conf.toml: key_limits[1].rpm: must be at least 1 (got 0)"),
    ([{"key": "k", "model": "*", "max_concurrency": -1}],
     "conf.toml: key_limits[0].max_concurrency: must be at least 1 (got -1)"),
    ([{"key": "k", "model": "*", "rpms": 1}], "conf.toml: key_limits[0].rpms: unknown key (expected one of: itpm, "
                                              "key, max_concurrency, model, otpm, rpm)"),
    ([{"key": "k", "model": "claude-opsu-*", "rpm": 1}],
     "conf.toml: key_limits[0].model: matches no configured model (got 'claude-opsu-*')"),
    ([{"key": "k", "model": "claude-opus-4-6", "rpm": 1}, {"key": "j", "model": "claude-opus-4-6", "rpm": 1},
      {"key": "k", "model": "claude-opus-4-6", "otpm": 1}],
     "conf.toml: key_limits[2].model: key_limits[0] already sets limits for key 'k' and model 'claude-opus-4-6'"),
])
def test_key_limit_errors(rules: object, message: str) -> None:
    assert config_error(two_models(key_limits=rules)) == message


def test_key_limits_expand_env_vars_and_name_missing_ones() -> None:
    raw = two_models(key_limits=[{"key": "${KEY_ID}", "model": "claude-opus-4-6", "rpm": 5}])
    assert parse(raw, {"KEY_ID": "key_1"}).key_limits[0].key == "key_1"
    assert config_error(raw) == "conf.toml: key_limits[0].key: environment variable KEY_ID is not set"


# -- the admin API --------------------------------------------------------------------------------------------------

ADMIN_TOKEN = "0123456789abcdef0123"
ADMIN_DIGEST = hashlib.sha256(ADMIN_TOKEN.encode()).digest()


def test_no_admin_token_by_default() -> None:
    assert parse(minimal()).admin == AdminConfig(token=None) == AdminConfig()
    assert not parse(minimal(admin={})).admin.enabled
    assert not default_config({"TOLLWAY_ADMIN_TOKEN": ADMIN_TOKEN}).admin.enabled  # only a config turns it on


def test_admin_token_from_the_environment_is_kept_hashed() -> None:
    config = parse(minimal(admin={"token": "${TOLLWAY_ADMIN_TOKEN}"}), {"TOLLWAY_ADMIN_TOKEN": ADMIN_TOKEN})
    assert config.admin.enabled and config.admin.token_sha256 == ADMIN_DIGEST
    assert config.admin == AdminConfig(token=ADMIN_TOKEN)
    # Neither a logged config nor anything in it holds the token itself.
    assert ADMIN_TOKEN not in repr(config) and ADMIN_TOKEN not in str(dataclasses.asdict(config))
    assert ADMIN_DIGEST.hex() not in repr(config)
    assert config_error(minimal(admin={"token": "${TOLLWAY_ADMIN_TOKEN}"})) == \
        "conf.toml: admin.token: environment variable TOLLWAY_ADMIN_TOKEN is not set"


def test_admin_token_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(MINIMAL_TOML + '\n[admin]\ntoken = "${TOLLWAY_ADMIN_TOKEN}"\nport = 9090\n', encoding="utf-8")
    admin = load_config(str(path), {"TOLLWAY_ADMIN_TOKEN": ADMIN_TOKEN}).admin
    assert (admin.token_sha256, admin.host, admin.port) == (ADMIN_DIGEST, "127.0.0.1", 9090)


@pytest.mark.parametrize(("admin", "env", "message"), [
    ({"token": "short-token"}, {}, "admin.token: must be at least 16 characters (got 11)"),
    ({"token": "x" * 15}, {}, "admin.token: must be at least 16 characters (got 15)"),
    # An empty variable is a mistake, never an admin API with an empty token.
    ({"token": "${TOLLWAY_ADMIN_TOKEN}"}, {"TOLLWAY_ADMIN_TOKEN": ""}, "admin.token: must be at least 16 characters"),
    ({"token": "with a space 0123456"}, {}, "admin.token: must be printable ASCII with no spaces"),
    ({"token": "0123456789abcdef\n"}, {}, "admin.token: must be printable ASCII with no spaces"),
    ({"token": "0123456789abcdéf0"}, {}, "admin.token: must be printable ASCII with no spaces"),
    ({"token": "tw-0123456789abcdef"}, {}, "admin.token: must not be a client key (tw-...)"),
    ({"token": 1234567890123456789}, {}, "admin.token: must be a string, not int"),
    ({"tokens": ["x"]}, {}, "admin.tokens: unknown key (expected one of: host, port, token)"),
])
def test_admin_token_errors(admin: dict[str, Any], env: dict[str, str], message: str) -> None:
    error = config_error(minimal(admin=admin), env)
    assert error.startswith("conf.toml: " + message)
    # The message names the key, never the value, since it may be most of a secret.
    token = admin.get("token")
    if isinstance(token, str) and token:
        assert token.strip() not in error


def test_admin_must_be_a_table() -> None:
    assert config_error(minimal(admin="token")) == "conf.toml: admin: must be a table"


def test_a_token_of_sixteen_characters_is_enough() -> None:
    assert parse(minimal(admin={"token": "x" * 16})).admin.token_sha256 == hashlib.sha256(b"x" * 16).digest()


def test_the_admin_api_on_a_port_of_its_own() -> None:
    admin = parse(minimal(admin={"token": ADMIN_TOKEN})).admin
    assert (admin.host, admin.port) == ("127.0.0.1", None)  # on the client port, under /admin
    admin = parse(minimal(admin={"token": ADMIN_TOKEN, "port": 9090})).admin
    assert (admin.host, admin.port) == ("127.0.0.1", 9090)  # loopback unless told otherwise
    admin = parse(minimal(admin={"token": ADMIN_TOKEN, "host": "0.0.0.0", "port": 0})).admin
    assert (admin.host, admin.port) == ("0.0.0.0", 0)
    # Both on port 0 get two different free ports.
    assert parse(minimal(server={"port": 0}, admin={"token": ADMIN_TOKEN, "port": 0})).admin.port == 0


@pytest.mark.parametrize(("raw", "message"), [
    (minimal(admin={"port": 9090}), "admin.port: the admin API is off without admin.token"),
    (minimal(admin={"host": "0.0.0.0"}), "admin.host: the admin API is off without admin.token"),
    (minimal(admin={"token": ADMIN_TOKEN, "host": "0.0.0.0"}),
     "admin.host: needs admin.port: without one the admin API is served on the client port"),
    (minimal(admin={"token": ADMIN_TOKEN, "port": 8080}),
     "admin.port: must differ from server.port (8080): the point is a port of its own"),
    (minimal(server={"port": 9000}, admin={"token": ADMIN_TOKEN, "port": 9000}), "admin.port: must differ"),
    (minimal(admin={"token": ADMIN_TOKEN, "port": 70000}), "admin.port: must be between 0 and 65535 (got 70000)"),
    (minimal(admin={"token": ADMIN_TOKEN, "port": "9090"}), "admin.port: must be an integer, not str"),
    (minimal(admin={"token": ADMIN_TOKEN, "host": " ", "port": 9090}), "admin.host: must not be empty"),
])
def test_admin_listener_errors(raw: dict[str, Any], message: str) -> None:
    assert config_error(raw).startswith("conf.toml: " + message)


def test_shared_limits_config() -> None:
    assert parse(minimal()).limits.url is None  # in-process by default
    limits = parse(minimal(limits={"url": "redis://127.0.0.1:6379/0", "lease": 60, "retry_delay": 2})).limits
    assert (limits.url, limits.prefix, limits.lease, limits.retry_delay) == (
        "redis://127.0.0.1:6379/0", "tollway:", 60.0, 2.0)
    assert "redis://" not in repr(limits)  # it may carry a password
    assert config_error(minimal(limits={"url": "http://x"})) == (
        "conf.toml: limits.url: must be a redis://, rediss:// or unix:// URL")


def test_the_request_log_goes_to_stderr_unless_told() -> None:
    assert parse_config(minimal(), "conf.toml", {}).log.requests == "stderr"
    assert parse_config(minimal(log={"requests": "/var/log/tollway.jsonl"}), "conf.toml", {}).log.requests == \
        "/var/log/tollway.jsonl"
    assert config_error(minimal(log={"requests": " "})) == \
        'conf.toml: log.requests: must be "stderr", "stdout", "off" or a file path'
    assert config_error(minimal(log={"level": "debug"})).startswith("conf.toml: log.level: unknown key")
