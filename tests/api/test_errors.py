"""Every way a request can fail reaches the client as an Anthropic error, with the right status and type."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import FIXTURES, Gateway

VALID = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def post(gateway: Gateway, body: bytes | dict[str, Any], headers: dict[str, str] | None = None,
         path: str = "/v1/messages") -> httpx.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(gateway.url + path, content=data, headers={"content-type": "application/json", **(headers or {})},
                      timeout=30)


def assert_error(r: httpx.Response, status: int, error_type: str, message: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if message is not None:
        assert body["error"]["message"] == message
    assert r.headers["request-id"].startswith("req_")
    assert body["request_id"] == r.headers["request-id"]
    return body


def test_missing_key(gateway: Gateway) -> None:
    assert_error(post(gateway, VALID), 401, "authentication_error", "x-api-key header is required")


def test_wrong_key(gateway: Gateway) -> None:
    assert_error(post(gateway, VALID, {"x-api-key": "tw-nope"}), 401, "authentication_error", "invalid x-api-key")
    assert_error(post(gateway, VALID, {"authorization": "Bearer tw-nope"}), 401, "authentication_error",
                 "Invalid bearer token")


def test_sdk_raises_authentication_error(gateway: Gateway) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        gateway.client("tw-wrong").messages.create(**VALID)  # type: ignore[call-overload]


def test_revoked_key_stops_working(gateway: Gateway) -> None:
    secret = gateway.create_key("to-revoke")
    assert post(gateway, VALID | {"model": "mock-model"}, {"x-api-key": secret}).status_code == 200
    key_id = gateway.key_id("to-revoke")
    assert gateway.server.thread.run(gateway.services.store.revoke_key(key_id))
    gateway.server.thread.run(gateway.services.keys.refresh())
    assert_error(post(gateway, VALID, {"x-api-key": secret}), 401, "authentication_error")


def test_unknown_model(gateway: Gateway, secret: str) -> None:
    r = post(gateway, VALID | {"model": "sonnet4"}, {"x-api-key": secret})
    assert_error(r, 404, "not_found_error", "model: sonnet4")
    with pytest.raises(anthropic.NotFoundError):
        gateway.client(secret).messages.create(model="claude-nope", max_tokens=5, messages=[{"role": "user",
                                                                                              "content": "x"}])


def test_model_not_allowed_for_key(gateway: Gateway) -> None:
    secret = gateway.create_key("sonnet-only", ("claude-sonnet-*",))
    assert post(gateway, VALID, {"x-api-key": secret}).status_code == 200
    r = post(gateway, VALID | {"model": "claude-haiku-4-5-20251001"}, {"x-api-key": secret})
    assert_error(r, 403, "permission_error")
    with pytest.raises(anthropic.PermissionDeniedError):
        gateway.client(secret).messages.create(model="mock-model", max_tokens=5,
                                               messages=[{"role": "user", "content": "x"}])
    models = gateway.client(secret).models.list()
    assert [m.id for m in models.data] == ["claude-sonnet-4-6"]


def test_body_over_32_mb(gateway: Gateway, secret: str) -> None:
    big = b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"' + \
        b"a" * (32 * 1024 * 1024) + b'"}]}'
    assert_error(post(gateway, big, {"x-api-key": secret}), 413, "request_too_large")


def test_malformed_json(gateway: Gateway, secret: str) -> None:
    for raw in (b"{", b"", b"not json", b'{"model": "x",}', b"\xff\xfe"):
        assert_error(post(gateway, raw, {"x-api-key": secret}), 400, "invalid_request_error")


@pytest.mark.parametrize(("patch", "message"), [
    ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
    ({"max_tokens": "10"}, "max_tokens: Input should be a valid integer"),
    ({"messages": []}, "messages: List should have at least 1 item after validation, not 0"),
    ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
    ({"top_p": -0.1}, "top_p: Input should be greater than or equal to 0"),
    ({"top_k": -1}, "top_k: Input should be greater than or equal to 0"),
    ({"max_tokens": 128_001}, "max_tokens: 128001 > 128000, which is the maximum allowed number of output tokens "
                              "for claude-sonnet-4-6"),
    ({"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1000}},
     "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"),
    ({"messages": [{"role": "user", "content": ""}]},
     "messages.0: all messages must have non-empty content except for the optional final assistant message"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.tool.name: Field required"),
])
def test_validation_errors(gateway: Gateway, secret: str, patch: dict[str, Any], message: str) -> None:
    assert_error(post(gateway, VALID | patch, {"x-api-key": secret}), 400, "invalid_request_error", message)


def test_validation_error_through_the_sdk(gateway: Gateway, secret: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        gateway.client(secret).messages.create(model="claude-sonnet-4-6", max_tokens=1024,
                                               thinking={"type": "enabled", "budget_tokens": 1024},
                                               messages=[{"role": "user", "content": "x"}])
    assert "`max_tokens` must be greater than `thinking.budget_tokens`" in str(info.value)


def test_bad_anthropic_version(gateway: Gateway, secret: str) -> None:
    r = post(gateway, VALID, {"x-api-key": secret, "anthropic-version": "2023-06-01, 2023-06-01"})
    assert_error(r, 400, "invalid_request_error", 'anthropic-version: "2023-06-01, 2023-06-01" is not a valid version')


@pytest.mark.parametrize(("status", "fixture", "error_type", "sdk_error"), [
    (529, "error_529_overloaded", "overloaded_error", anthropic.OverloadedError),
    (429, "error_429_rate_limit", "rate_limit_error", anthropic.RateLimitError),
    (400, "error_400_invalid_request_prompt_too_long", "invalid_request_error", anthropic.BadRequestError),
    (404, "error_404_not_found_model", "not_found_error", anthropic.NotFoundError),
])
def test_upstream_errors_are_forwarded_unchanged(gateway: Gateway, secret: str, status: int, fixture: str,
                                                 error_type: str, sdk_error: type[Exception]) -> None:
    r = post(gateway, VALID, {"x-api-key": secret, "x-fake-scenario": f"error:{status}:{fixture}"})
    assert r.status_code == status
    assert r.content == (FIXTURES / "anthropic" / f"{fixture}.json").read_bytes()
    assert r.headers["retry-after"] == "7"
    assert r.headers["request-id"].startswith("req_")
    row = gateway.row(r.headers["request-id"])
    assert (row.status, row.error_type) == (status, error_type)
    with pytest.raises(sdk_error):
        gateway.client(secret).messages.create(**VALID, extra_headers={  # type: ignore[call-overload]
            "x-fake-scenario": f"error:{status}:{fixture}"})


def test_upstream_credentials_refused_is_not_the_clients_fault(gateway: Gateway, secret: str) -> None:
    r = post(gateway, VALID, {"x-api-key": secret, "x-fake-scenario": "error:401:error_401_authentication"})
    body = assert_error(r, 502, "api_error")
    assert "upstream-secret" not in r.text and "credentials" in body["error"]["message"]


def test_upstream_answer_in_no_anthropic_shape(gateway: Gateway, secret: str) -> None:
    r = post(gateway, VALID, {"x-api-key": secret, "x-fake-scenario": "html:503"})
    assert_error(r, 502, "api_error", "upstream 'fake' answered HTTP 503")


def test_upstream_down(gateway: Gateway, secret: str) -> None:
    r = post(gateway, VALID | {"model": "claude-opus-4-6"}, {"x-api-key": secret})
    body = assert_error(r, 502, "api_error")
    assert "unreachable" in body["error"]["message"]
    row = gateway.row(r.headers["request-id"])
    assert (row.status, row.error_type, row.upstream) == (502, "api_error", "dead")


def test_unknown_path_and_method(gateway: Gateway, secret: str) -> None:
    assert_error(httpx.get(gateway.url + "/v1/nothing", headers={"x-api-key": secret}), 404, "not_found_error")
    assert_error(httpx.get(gateway.url + "/v1/messages", headers={"x-api-key": secret}), 405,
                 "invalid_request_error")


def test_every_failed_request_leaves_a_usage_row(gateway: Gateway, secret: str) -> None:
    r = post(gateway, VALID | {"max_tokens": -1}, {"x-api-key": secret})
    row = gateway.row(r.headers["request-id"])
    assert (row.status, row.error_type, row.model) == (400, "invalid_request_error", None)
    r = post(gateway, VALID, {"x-api-key": "tw-bad"})
    row = gateway.row(r.headers["request-id"])
    assert (row.status, row.key_id) == (401, None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["model", "max_tokens", "messages", "system", "metadata", "stop_sequences", "temperature", "top_p",
          "top_k", "stream", "tools", "tool_choice", "thinking"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=json_values, drop=st.booleans())
def test_fuzzed_fields_never_give_a_server_error(gateway: Gateway, secret: str, field: str, value: Any,
                                                 drop: bool) -> None:
    body: dict[str, Any] = dict(VALID) | {"model": "mock-model"}
    if drop:
        body.pop(field, None)
    else:
        body[field] = value
    r = httpx.post(gateway.url + "/v1/messages", content=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
                   if _encodable(body) else b"{", headers={"x-api-key": secret}, timeout=30)
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code != 200:
        assert_error(r, r.status_code, "invalid_request_error" if r.status_code == 400 else "not_found_error")


def _encodable(body: Any) -> bool:
    try:
        orjson.dumps(body)
    except TypeError:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values | st.binary(max_size=60).map(lambda b: b))
def test_fuzzed_bodies_never_give_a_server_error(gateway: Gateway, secret: str, value: Any) -> None:
    data = value if isinstance(value, bytes) else orjson.dumps(value) if _encodable(value) else b"[]"
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        r = post(gateway, data, {"x-api-key": secret}, path=path)
        assert r.status_code == 400, r.text
        assert_error(r, 400, "invalid_request_error")


def test_body_nested_too_deep_to_re_encode_is_a_400(gateway: Gateway, secret: str) -> None:
    deep: Any = "leaf"
    for _ in range(300):
        deep = {"x": deep}
    # The haiku route renames the model, so Tollway must encode the body again before sending it on.
    body = VALID | {"model": "claude-haiku-4-5-20251001", "extra": deep}
    assert_error(post(gateway, _encode_deep(body), {"x-api-key": secret}), 400, "invalid_request_error")


def test_a_type_error_in_the_gateway_is_its_own_500_not_the_clients_400(
        gateway: Gateway, secret: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: Any) -> Any:
        raise TypeError("a bug in the gateway")  # orjson's encode error is a TypeError too

    monkeypatch.setattr(gateway.services.router, "send", broken)
    r = post(gateway, VALID, {"x-api-key": secret})
    assert_error(r, 500, "api_error")
    assert "a bug in the gateway" not in r.text and "request-id" in r.headers


def _encode_deep(body: Any) -> bytes:
    import json
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        return json.dumps(body).encode()
    finally:
        sys.setrecursionlimit(limit)


def test_chunked_body_over_the_limit(gateway: Gateway, secret: str) -> None:
    def chunks() -> Any:
        yield b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"'
        for _ in range(33):
            yield b"a" * (1024 * 1024)
        yield b'"}]}'

    r = httpx.post(gateway.url + "/v1/messages", content=chunks(), timeout=60,
                   headers={"x-api-key": secret, "content-type": "application/json"})
    assert_error(r, 413, "request_too_large")
    assert gateway.row(r.headers["request-id"]).status == 413
