"""``GET /v1/models`` through the SDK: the configured models, newest first, paginated as Anthropic does."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.conftest import Gateway

CONFIGURED = {"claude-sonnet-4-6", "claude-haiku-4-5-20251001", "claude-opus-4-6", "mock-model"}


def test_list_all_pages(client: anthropic.Anthropic) -> None:
    first = client.models.list(limit=1)
    assert len(first.data) == 1 and first.has_more
    ids = [m.id for m in client.models.list(limit=1)]  # the SDK follows after_id page by page
    assert set(ids) == CONFIGURED and len(ids) == len(CONFIGURED)
    # Newest first: the catalog's release dates order the known models; unknown ones sort last.
    assert ids == ["claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5-20251001", "mock-model"]


def test_page_fields_and_before_id(gateway: Gateway, secret: str) -> None:
    headers = {"x-api-key": secret}
    page = httpx.get(f"{gateway.url}/v1/models", params={"limit": 2}, headers=headers).json()
    assert [m["id"] for m in page["data"]] == ["claude-sonnet-4-6", "claude-opus-4-6"]
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("claude-sonnet-4-6", "claude-opus-4-6", True)
    nxt = httpx.get(f"{gateway.url}/v1/models", params={"limit": 2, "after_id": page["last_id"]},
                    headers=headers).json()
    assert [m["id"] for m in nxt["data"]] == ["claude-haiku-4-5-20251001", "mock-model"]
    assert nxt["has_more"] is False
    back = httpx.get(f"{gateway.url}/v1/models", params={"limit": 1, "before_id": "claude-haiku-4-5-20251001"},
                     headers=headers).json()
    assert [m["id"] for m in back["data"]] == ["claude-opus-4-6"] and back["has_more"] is True
    model = page["data"][0]
    assert model == {"type": "model", "id": "claude-sonnet-4-6", "display_name": "Claude Sonnet 4.6",
                     "created_at": model["created_at"], "max_tokens": 128000, "max_input_tokens": 1000000}


def test_retrieve(client: anthropic.Anthropic) -> None:
    info = client.models.retrieve("claude-haiku-4-5-20251001")
    assert (info.id, info.display_name, info.type) == ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "model")
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nope")


@pytest.mark.parametrize("limit", ["0", "1001", "x"])
def test_bad_limit(gateway: Gateway, secret: str, limit: str) -> None:
    r = httpx.get(f"{gateway.url}/v1/models", params={"limit": limit}, headers={"x-api-key": secret})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_models_need_a_key(gateway: Gateway) -> None:
    r = httpx.get(f"{gateway.url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
