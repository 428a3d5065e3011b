"""Errors from OpenAI-compatible upstreams, as the Anthropic errors clients act on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tollway.errors import (
    InternalError,
    InvalidRequest,
    NotFound,
    Overloaded,
    RateLimited,
    RequestTooLarge,
    TollwayError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollway.providers.openai.errors import error_message, map_upstream_error, scrub, stream_error_type

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "openai"

# Each recorded error body with the status it came with -> (status, error.type, message) the client gets.
RECORDED = {
    "error_400_context_length_exceeded.json": (
        400, "invalid_request_error", "prompt is too long: 4120 tokens > 4097 maximum"),
    "error_400_unsupported_parameter.json": (
        400, "invalid_request_error",
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."),
    "error_401_invalid_api_key.json": (502, "api_error", "upstream 'oa' refused the gateway's credentials"),
    "error_404_model_not_found.json": (
        404, "not_found_error", "The model `does-not-exist` does not exist or you do not have access to it."),
    "error_429_openrouter_provider_rate_limited.json": (
        429, "rate_limit_error",
        "Provider returned error: google/gemini-2.0-flash-exp:free is temporarily rate-limited upstream. Please "
        "retry shortly, or add your own key to accumulate your rate limits: https://openrouter.ai/settings/integrations"),
    "error_500_server_error.json": (
        500, "api_error",
        "The server had an error processing your request. Sorry about that! You can retry your request, or contact us "
        "through our help center at help.openai.com if you keep seeing this error. (Please include the request ID "
        "req_540c6eaab7f4556b2baa22bcba915d51 in your email.)"),
}


def status_of(name: str) -> int:
    return int(name.split("_")[1])


def test_every_recorded_error_is_covered() -> None:
    assert sorted(RECORDED) == sorted(p.name for p in FIXTURES.glob("error_*.json"))


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_error(name: str) -> None:
    error = map_upstream_error(status_of(name), (FIXTURES / name).read_bytes(), {}, "oa")
    assert (error.status, error.error_type, error.message) == RECORDED[name]
    # OpenRouter's 429 came without retry-after: none is made up.
    assert error.headers == {}


def test_the_refused_key_never_reaches_the_client() -> None:
    body = (FIXTURES / "error_401_invalid_api_key.json").read_bytes()
    assert b"DEADBEEF" in body
    error = map_upstream_error(401, body, {}, "oa")
    assert "DEADBEEF" not in error.message
    assert isinstance(error, UpstreamUnavailable)
    # The same body on another status is scrubbed rather than hidden.
    other = map_upstream_error(400, body, {}, "oa")
    assert "DEADBEEF" not in other.message
    assert other.message.startswith("Incorrect API key provided: [redacted]")


@pytest.mark.parametrize(("status", "cls"), [
    (400, InvalidRequest), (401, UpstreamUnavailable), (402, UpstreamUnavailable), (403, UpstreamUnavailable),
    (404, NotFound), (405, InvalidRequest), (408, UpstreamTimeout), (409, InvalidRequest), (413, RequestTooLarge),
    (422, InvalidRequest), (429, RateLimited), (500, InternalError), (501, InternalError), (502, Overloaded),
    (503, Overloaded), (504, UpstreamTimeout), (520, InternalError), (302, UpstreamUnavailable),
])
def test_status_mapping(status: int, cls: type[TollwayError]) -> None:
    error = map_upstream_error(status, b'{"error": {"message": "boom"}}', {}, "oa")
    assert type(error) is cls
    refused = status in (401, 402, 403)
    assert error.message == ("upstream 'oa' refused the gateway's credentials" if refused else "boom")
    assert error.key_fault is refused


def test_status_codes_seen_by_the_client() -> None:
    assert map_upstream_error(503, b"", {}, "oa").status == 529
    assert map_upstream_error(403, b"", {}, "oa").status == 502
    assert map_upstream_error(504, b"", {}, "oa").error_type == "timeout_error"


@pytest.mark.parametrize(("body", "message"), [
    (b'{"error": {"message": "from error.message", "type": "x"}}', "from error.message"),
    (b'{"error": "a plain error string"}', "a plain error string"),
    (b'{"message": "top-level message"}', "top-level message"),
    (b'{"detail": "Not Found"}', "Not Found"),
    (b'{"object": "error", "message": "vLLM style", "type": "BadRequestError", "code": 400}', "vLLM style"),
    (b'{"detail": [{"loc": ["body", "messages"], "msg": "field required", "type": "missing"}]}',
     "body.messages: field required"),
    (b"upstream connect error or disconnect/reset before headers",
     "upstream connect error or disconnect/reset before headers"),
    (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "upstream 'oa' answered HTTP 400"),
    (b"", "upstream 'oa' answered HTTP 400"),
    (b"[1, 2]", "upstream 'oa' answered HTTP 400"),
    (b'{"error": {"message": "   "}}', "upstream 'oa' answered HTTP 400"),
])
def test_message_from_body(body: bytes, message: str) -> None:
    assert map_upstream_error(400, body, {}, "oa").message == message


def test_long_messages_are_cut() -> None:
    error = map_upstream_error(400, json.dumps({"error": {"message": "x" * 5000}}).encode(), {}, "oa")
    assert len(error.message) == 1003
    assert error.message.endswith("...")


def test_unnamed_upstream() -> None:
    assert map_upstream_error(401, b"", {}, "").message == "the upstream refused the gateway's credentials"


# -- context overflow --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "body", "message"), [
    (400, {"error": {"message": "This model's maximum context length is 8192 tokens. However, your messages resulted "
                                "in 12345 tokens. Please reduce the length of the messages.",
                     "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
     "prompt is too long: 12345 tokens > 8192 maximum"),
    # llama.cpp server
    (400, {"error": {"code": 400, "message": "request (70000 tokens) exceeds the available context size (65536 "
                                             "tokens), try increasing it", "type": "exceed_context_size_error",
                     "n_prompt_tokens": 70000, "n_ctx": 65536}},
     "prompt is too long: 70000 tokens > 65536 maximum"),
    (400, {"error": {"code": 400, "message": "request (9000 tokens) exceeds the available context size (8192 tokens)",
                     "type": "exceed_context_size_error"}},
     "prompt is too long: 9000 tokens > 8192 maximum"),
    # vLLM
    (400, {"object": "error", "message": "This model's maximum context length is 4096 tokens. However, your request "
                                         "has 5000 input tokens. Please reduce the length of the input messages.",
           "type": "BadRequestError", "code": 400},
     "prompt is too long: 5000 tokens > 4096 maximum"),
    # OpenRouter
    (400, {"error": {"message": "This endpoint's maximum context length is 163840 tokens. However, you requested about "
                                "200000 tokens (190000 of text input, 10000 in the output). Please reduce the length "
                                "of either one.", "code": 400}},
     "prompt is too long: 200000 tokens > 163840 maximum"),
    # The numbers cannot be read: the upstream's words, after the phrase Claude Code looks for.
    (400, {"error": {"message": "Input exceeds the context window", "code": "context_length_exceeded"}},
     "prompt is too long: Input exceeds the context window"),
    (400, {"error": {"code": "context_length_exceeded"}},
     "prompt is too long: the prompt does not fit the upstream model's context"),
    # Numbers that do not show an overflow (here max_tokens is the problem) are not passed off as one.
    (400, {"object": "error", "message": "'max_tokens' is too large: 4096. This model's maximum context length is "
                                         "8192 tokens and your request has 5000 input tokens (4096 > 8192 - 5000).",
           "code": 400},
     "prompt is too long: 'max_tokens' is too large: 4096. This model's maximum context length is 8192 tokens and "
     "your request has 5000 input tokens (4096 > 8192 - 5000)."),
    (413, {"error": {"message": "Request too large: context length 131072 exceeded", "code": 413}},
     "prompt is too long: Request too large: context length 131072 exceeded"),
])
def test_context_overflow_reads_as_prompt_too_long(status: int, body: object, message: str) -> None:
    error = map_upstream_error(status, json.dumps(body).encode(), {}, "oa")
    assert isinstance(error, InvalidRequest)
    assert error.message == message


def test_a_413_that_is_not_about_context_stays_request_too_large() -> None:
    error = map_upstream_error(413, b'{"error": {"message": "Payload Too Large"}}', {}, "oa")
    assert isinstance(error, RequestTooLarge)


# -- retry headers -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "20"}, {"retry-after": "20"}),
    ({"retry-after-ms": "1500"}, {"retry-after-ms": "1500", "retry-after": "2"}),
    ({"retry-after-ms": "200", "retry-after": "1"}, {"retry-after-ms": "200", "retry-after": "1"}),
    ({"retry-after-ms": "soon"}, {"retry-after-ms": "soon"}),
    ({"x-ratelimit-remaining-requests": "0"}, {}),
])
def test_rate_limit_keeps_retry_after(headers: dict[str, str], expected: dict[str, str]) -> None:
    body = b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}'
    error = map_upstream_error(429, body, headers, "oa")
    assert isinstance(error, RateLimited)
    assert error.headers == expected


def test_retry_after_kept_on_overload_but_not_on_client_errors() -> None:
    assert map_upstream_error(503, b"", {"retry-after": "5"}, "oa").headers == {"retry-after": "5"}
    assert map_upstream_error(400, b"", {"retry-after": "5"}, "oa").headers == {}


def test_exhausted_quota_is_not_a_rate_limit() -> None:
    body = b'{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", ' \
           b'"code": "insufficient_quota"}}'
    error = map_upstream_error(429, body, {}, "oa")
    assert isinstance(error, UpstreamUnavailable) and error.key_fault
    assert error.message == "upstream 'oa' says the gateway's account is out of quota"


# -- errors inside streams -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "expected"), [
    # Groq's "event: error"
    ({"message": "Tool call validation failed", "type": "invalid_request_error", "code": "tool_use_failed",
      "status_code": 400}, "invalid_request_error"),
    # OpenRouter's in-chunk error
    ({"code": 400, "message": "Token limit reached"}, "invalid_request_error"),
    ({"code": 429, "message": "Rate limited"}, "rate_limit_error"),
    ({"code": 502, "message": "Provider returned error"}, "overloaded_error"),
    ({"code": 503}, "overloaded_error"),
    ({"code": 504}, "timeout_error"),
    ({"code": 500}, "api_error"),
    ({"code": 401}, "api_error"),
    ({"status": 404}, "not_found_error"),
    ({"code": "context_length_exceeded"}, "invalid_request_error"),
    ({"code": "rate_limit_exceeded"}, "rate_limit_error"),
    ({"type": "server_error", "code": None}, "api_error"),
    ({"type": "overloaded_error"}, "overloaded_error"),
    ({"type": "tokens"}, "rate_limit_error"),
    ({"code": True}, "api_error"),
    ({"code": 200}, "api_error"),
    ({}, "api_error"),
    ("just a string", "api_error"),
    (None, "api_error"),
])
def test_stream_error_type(error: object, expected: str) -> None:
    assert stream_error_type(error) == expected


def test_error_message() -> None:
    assert error_message({"message": "Token limit reached", "code": 400}) == "Token limit reached"
    assert error_message({"message": "Provider returned error", "metadata": {"raw": "upstream overloaded"}}) == \
        "Provider returned error: upstream overloaded"
    assert error_message({"message": "same", "metadata": {"raw": "same"}}) == "same"
    assert error_message("  text  ") == "text"
    assert error_message({"code": 500}) is None
    assert error_message({"message": ""}) is None
    assert error_message(None) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("Incorrect API key provided: sk-proj-abcdefgh1234. You can", "Incorrect API key provided: [redacted] You can"),
    ("Invalid api_key: gsk_abcdefghijklmnop", "Invalid api_key: [redacted]"),
    ("bad header Authorization: Bearer abc.def.ghi", "bad header Authorization: Bearer [redacted]"),
    ("key sk-or-v1-0123456789abcdef is disabled", "key [redacted] is disabled"),
    ("The model `gpt-4o` does not exist", "The model `gpt-4o` does not exist"),
])
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text) == expected
