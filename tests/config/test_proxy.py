"""Which proxy an upstream goes through: its own setting, else the environment's as curl reads it (NO_PROXY
included); what a proxy URL may be; and the config errors, which never repeat a password."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.config import default_config, parse_config
from tollway.config.proxy import Proxy, parse_proxy, proxy_for
from tollway.errors import ConfigError

API = "https://api.anthropic.com"


def test_a_proxy_url_gives_host_port_and_basic_credentials() -> None:
    assert parse_proxy("http://proxy.corp:3128") == Proxy("proxy.corp", 3128)
    assert parse_proxy("proxy.corp") == Proxy("proxy.corp", 80)  # no scheme: http, as curl takes it
    assert parse_proxy("http://[::1]:8080/") == Proxy("::1", 8080)
    with_user = parse_proxy("http://me%40corp:s%2Fcret@proxy:3128")
    assert with_user.authorization == "Basic " + base64.b64encode(b"me@corp:s/cret").decode()
    assert "s%2Fcret" not in repr(with_user) and "Basic" not in repr(with_user)


@pytest.mark.parametrize(("url", "problem"), [
    ("https://proxy:443", "only http:// proxies"),
    ("socks5://proxy:1080", "only http:// proxies"),
    ("http://:3128", "no host"),
    ("http://proxy:3128/path", "no path or query"),
    ("http://proxy:3128?x=1", "no path or query"),
    ("http://proxy:port", "not a port number"),
    ("http://proxy:99999", "not a port number"),
])
def test_what_a_proxy_url_may_not_be(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_proxy(url)


def test_the_setting_wins_over_the_environment_and_direct_means_none() -> None:
    env = {"HTTPS_PROXY": "http://env-proxy:3128"}
    assert proxy_for(API, "http://mine:8080", env) == Proxy("mine", 8080)
    assert proxy_for(API, "direct", env) is None
    assert proxy_for(API, None, env) == Proxy("env-proxy", 3128)
    assert proxy_for(API, None, {}) is None


def test_the_environment_by_scheme_then_all_proxy_lower_case_first() -> None:
    env = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2", "HTTP_PROXY": "http://plain:3",
           "ALL_PROXY": "http://all:4"}
    assert proxy_for(API, None, env) == Proxy("lower", 1)
    assert proxy_for("http://vllm.internal:8000/v1", None, env) == Proxy("plain", 3)
    assert proxy_for(API, None, {"ALL_PROXY": "http://all:4", "HTTP_PROXY": "http://plain:3"}) == Proxy("all", 4)


@pytest.mark.parametrize(("no_proxy", "base_url", "bypassed"), [
    ("*", API, True),
    ("api.anthropic.com", API, True),
    ("anthropic.com", API, True),
    (".anthropic.com", API, True),
    ("thropic.com", API, False),
    ("api.anthropic.com:443", API, True),
    ("api.anthropic.com:8443", API, False),
    ("localhost, 127.0.0.0/8", "http://127.0.0.1:8000", True),
    ("10.0.0.0/8", "http://127.0.0.1:8000", False),
    ("[::1]:8000", "http://[::1]:8000", True),
    ("::1", "http://[::1]:9000", True),
    ("", API, False),
    (" , ,", API, False),
])
def test_no_proxy_lists_hosts_domains_addresses_and_ports(no_proxy: str, base_url: str, bypassed: bool) -> None:
    env = {"ALL_PROXY": "http://proxy:3128", "NO_PROXY": no_proxy}
    assert (proxy_for(base_url, None, env) is None) == bypassed


def _raw(**upstream: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "up", "kind": "anthropic", "api_keys": ["k"], **upstream}],
            "models": [{"name": "claude-sonnet-4-6", "targets": [{"upstream": "up"}]}]}


def test_the_config_resolves_each_upstreams_proxy_once() -> None:
    env = {"HTTPS_PROXY": "http://env-proxy:3128"}
    assert parse_config(_raw(), "t.toml", env).upstreams[0].proxy == Proxy("env-proxy", 3128)
    assert parse_config(_raw(proxy="direct"), "t.toml", env).upstreams[0].proxy is None
    assert parse_config(_raw(proxy="http://p:1"), "t.toml", env).upstreams[0].proxy == Proxy("p", 1)
    assert default_config({"ANTHROPIC_API_KEY": "k", **env}).upstreams[0].proxy == Proxy("env-proxy", 3128)
    # The mock upstream is not reached over the network at all.
    assert default_config(env).upstreams[0].proxy is None


def test_a_bad_proxy_is_a_config_error_without_its_password() -> None:
    with pytest.raises(ConfigError, match=r"t.toml: upstreams\[0\].proxy: proxy: only http:// proxies") as err:
        parse_config(_raw(proxy="https://me:hunter2@proxy:443"), "t.toml", {})
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match=r"environment's proxy \(HTTPS_PROXY and the like\): only http://"):
        parse_config(_raw(), "t.toml", {"HTTPS_PROXY": "socks5://me:hunter2@proxy:1080"})
    with pytest.raises(ConfigError, match="environment's proxy"):
        default_config({"ANTHROPIC_API_KEY": "k", "ALL_PROXY": "socks5://proxy"})


@given(st.text(max_size=60))
def test_any_proxy_setting_is_a_proxy_direct_or_a_config_error(setting: str) -> None:
    try:
        upstream = parse_config(_raw(proxy=setting), "t.toml", {}).upstreams[0]
    except ConfigError:
        return  # anything else raised (a ValueError from urlsplit, say) fails the test
    assert upstream.proxy is None or isinstance(upstream.proxy, Proxy)
    assert (upstream.proxy is None) == (setting in ("", "direct"))
