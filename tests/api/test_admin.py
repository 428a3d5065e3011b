"""The admin API through a real server on loopback, with httpx as the client: the token, every route's answers
and refusals, money that applies to the very next request, the usage report the CLI prints, and fuzzed
bodies and paths that never get a 500."""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.conftest import Gateway, Upstream, gateway_config
from tollway.cli import main as cli_main
from tollway.config import AdminConfig, LimitsConfig
from tollway.usage_report import usage_csv, usage_records

TOKEN = "adm-" + secrets.token_hex(16)
MODEL = "claude-sonnet-4-6"
MESSAGE = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def admin_gateway(upstream: Upstream, db: Path, limits: LimitsConfig | None = None) -> Gateway:
    config = gateway_config(upstream.url, db)
    # No background reload within a test: whatever the admin API changes must apply through its own reload.
    storage = dataclasses.replace(config.storage, key_refresh_interval=600)
    return Gateway(dataclasses.replace(config, storage=storage, admin=AdminConfig(token=TOKEN),
                                       limits=limits or config.limits))


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = admin_gateway(upstream, tmp_path_factory.mktemp("admin") / "tollway.db")
    yield gateway
    gateway.server.close()


@pytest.fixture()
def admin(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def error_of(r: httpx.Response, status: int, error_type: str, message: str | None = None) -> str:
    """The error's message, once the answer is checked to be Anthropic's error shape."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    assert body["request_id"] == r.headers["request-id"] and body["request_id"].startswith("req_")
    if message is not None:
        assert message in body["error"]["message"], body
    return str(body["error"]["message"])


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def ask(gw: Gateway, secret: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/messages", json=MESSAGE, headers={"x-api-key": secret}, timeout=30)


def create_key(admin: httpx.Client, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = ok(admin.post("/admin/keys", json={"name": unique("key"), **fields}), 201)
    return body


# -- the token -------------------------------------------------------------------------------------------------------


def test_without_a_token_in_the_config_there_is_no_admin_api(gateway: Gateway) -> None:
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/usage"), ("GET", "/admin"),
                         ("POST", "/admin/accounts/x/topup")):
        r = httpx.request(method, gateway.url + path, headers={"authorization": f"Bearer {TOKEN}",
                                                               "x-admin-token": TOKEN})
        assert error_of(r, 404, "not_found_error") == "Not found"


def test_a_missing_or_wrong_token_is_a_401(gw: Gateway) -> None:
    url = gw.url + "/admin/keys"
    error_of(httpx.get(url), 401, "authentication_error", "an admin token is required")
    error_of(httpx.get(url, headers={"authorization": "Bearer"}), 401, "authentication_error", "is required")
    error_of(httpx.get(url, headers={"authorization": f"Basic {TOKEN}"}), 401, "authentication_error", "is required")
    token = TOKEN.encode()
    for headers in ({b"authorization": b"Bearer " + token[:-1] + b"x"}, {b"x-admin-token": token + b"x"},
                    {b"x-admin-token": token[:16]}, {b"x-admin-token": "é".encode() * 40}):
        error_of(httpx.get(url, headers=headers), 401, "authentication_error", "invalid admin token")
    # Without the token nothing is told about the paths: an unknown one and a wrong method are a 401 too.
    error_of(httpx.get(gw.url + "/admin/nothing-here"), 401, "authentication_error")
    error_of(httpx.delete(url), 401, "authentication_error")


def test_both_header_styles_open_it_and_then_routing_errors_show(gw: Gateway) -> None:
    for headers in ({"authorization": f"Bearer {TOKEN}"}, {"authorization": f"bearer  {TOKEN}"},
                    {"x-admin-token": TOKEN}):
        assert ok(httpx.get(gw.url + "/admin/keys", headers=headers))["data"] is not None
    headers = {"x-admin-token": TOKEN}
    error_of(httpx.get(gw.url + "/admin/nothing-here", headers=headers), 404, "not_found_error")
    error_of(httpx.delete(gw.url + "/admin/keys", headers=headers), 405, "invalid_request_error")


def test_a_client_key_does_not_open_admin_and_the_token_is_no_client_key(gw: Gateway, admin: httpx.Client) -> None:
    secret = create_key(admin)["secret"]
    assert ask(gw, secret).status_code == 200
    for headers in ({"x-api-key": secret}, {"authorization": f"Bearer {secret}"}, {"x-admin-token": secret}):
        error_of(httpx.get(gw.url + "/admin/keys", headers=headers), 401, "authentication_error")
    error_of(ask(gw, TOKEN), 401, "authentication_error", "invalid x-api-key")
    r = httpx.post(gw.url + "/v1/messages", json=MESSAGE, headers={"authorization": f"Bearer {TOKEN}"})
    error_of(r, 401, "authentication_error", "Invalid bearer token")
    r = httpx.post(gw.url + "/v1/messages", json=MESSAGE, headers={"x-admin-token": TOKEN})
    error_of(r, 401, "authentication_error", "x-api-key header is required")


# -- keys ------------------------------------------------------------------------------------------------------------


def test_create_a_key_with_defaults(gw: Gateway, admin: httpx.Client) -> None:
    name = unique("plain")
    key = ok(admin.post("/admin/keys", json={"name": f"  {name} "}), 201)
    assert key["secret"].startswith("tw-") and key["hint"] == f"{key['secret'][:7]}...{key['secret'][-4:]}"
    assert key["id"].startswith("key_") and key["name"] == name and key["type"] == "key"
    assert (key["models"], key["state"], key["revoked_at"]) == (None, "active", None)
    assert key["created_at"].endswith("Z")
    assert key["limits"] == {"rpm": None, "itpm": None, "otpm": None, "max_concurrency": None}
    assert key["budget"] == {"prepaid": False, "cap_usd": None, "cap_nanousd": None, "period": None}
    assert key["balance"] == {"source": "live", "balance_usd": "0.000000000", "balance_nanousd": 0,
                              "held_usd": "0.000000000", "held_nanousd": 0, "spent_usd": None,
                              "spent_nanousd": None, "period": None}
    # A key of its own account, named after it, as the CLI does.
    assert key["account"]["name"] == name and key["account"]["id"].startswith("acct_")
    assert ask(gw, key["secret"]).status_code == 200
    # The secret is shown once: never again.
    shown = ok(admin.get(f"/admin/keys/{key['id']}"))
    assert "secret" not in shown and shown == {k: v for k, v in key.items() if k != "secret"}
    listed = ok(admin.get("/admin/keys"))["data"]
    assert [k for k in listed if k["id"] == key["id"]] == [shown]
    assert all("secret" not in k for k in listed)


def test_create_a_key_with_everything(gw: Gateway, admin: httpx.Client) -> None:
    team = ok(admin.post("/admin/accounts", json={"name": unique("team")}), 201)
    key = create_key(admin, models=["claude-sonnet-*"], account=team["name"], rpm=50, itpm=0, otpm=8000,
                     max_concurrency=None, budget_usd="5", cap_usd="1.5", period="day")
    assert key["models"] == ["claude-sonnet-*"]
    assert key["account"] == {"id": team["id"], "name": team["name"]}
    assert key["limits"] == {"rpm": 50, "itpm": None, "otpm": 8000, "max_concurrency": None}
    assert key["budget"] == {"prepaid": True, "cap_usd": "1.500000000", "cap_nanousd": 1_500_000_000,
                             "period": "day"}
    balance = key["balance"]
    assert (balance["source"], balance["balance_usd"], balance["balance_nanousd"]) == ("live", "5.000000000",
                                                                                       5_000_000_000)
    assert (balance["spent_nanousd"], len(balance["period"])) == (0, len("2026-01-01"))
    assert ask(gw, key["secret"]).status_code == 200
    haiku = MESSAGE | {"model": "claude-haiku-4-5-20251001"}
    r = httpx.post(gw.url + "/v1/messages", json=haiku, headers={"x-api-key": key["secret"]})
    error_of(r, 403, "permission_error")
    assert ok(admin.get(f"/admin/accounts/{team['id']}"))["keys"] == {"active": 1, "revoked": 0}


def test_a_key_named_like_an_existing_account_gets_an_account_of_its_own(admin: httpx.Client) -> None:
    taken = ok(admin.post("/admin/accounts", json={"name": unique("taken")}), 201)
    key = ok(admin.post("/admin/keys", json={"name": taken["name"]}), 201)
    assert key["account"]["name"] == f"{taken['name']}-{key['id']}"


@pytest.mark.parametrize(("body", "message"), [
    ({}, "name: is required"),
    ({"name": None}, "name: is required"),
    ({"name": "   "}, "name: must not be empty"),
    ({"name": 5}, "name: must be a string, not a number"),
    ({"name": "x" * 201}, "name: must be at most 200 characters"),
    ({"name": "k", "colour": "red"}, "colour: unknown field (expected: account, budget_usd, cap_usd, itpm, log_bodies, "
                                     "max_concurrency, models, name, otpm, period, rpm)"),
    ({"name": "k", "models": []}, "models: give at least one pattern, or null for every model"),
    ({"name": "k", "models": "claude-*"}, "models: must be an array of model name patterns, not a string"),
    ({"name": "k", "models": ["claude-*", ""]}, "models: every pattern must be a non-empty string"),
    ({"name": "k", "rpm": -1}, "rpm: must be between 0 (no limit) and 2147483647 (got -1)"),
    ({"name": "k", "rpm": 2**31}, "rpm: must be between 0 (no limit) and 2147483647"),
    ({"name": "k", "itpm": 1.5}, "itpm: must be a whole number, 0 for no limit, not a number"),
    ({"name": "k", "otpm": True}, "otpm: must be a whole number, 0 for no limit, not a boolean"),
    ({"name": "k", "max_concurrency": "3"}, "max_concurrency: must be a whole number"),
    ({"name": "k", "budget_usd": "abc"}, "budget_usd: not an amount of dollars: 'abc'"),
    ({"name": "k", "budget_usd": "0.0000000001"}, "budget_usd: '0.0000000001': the smallest unit is $0.000000001"),
    ({"name": "k", "budget_usd": 0.5}, 'budget_usd: must be dollars as a string such as "0.15", or a whole number'),
    ({"name": "k", "budget_usd": "-1"}, "budget_usd: must be 0 or more (got '-1')"),
    ({"name": "k", "budget_usd": "1e10"}, "budget_usd: '1e10': too large"),
    ({"name": "k", "cap_usd": "NaN"}, "cap_usd: not an amount of dollars"),
    ({"name": "k", "period": "day"}, "period: needs a cap: give cap_usd above 0"),
    ({"name": "k", "cap_usd": "0", "period": "day"}, "period: needs a cap"),
    ({"name": "k", "cap_usd": "1", "period": "week"}, "period: must be one of day, month, not a string"),
])
def test_create_key_refusals(admin: httpx.Client, body: dict[str, Any], message: str) -> None:
    before = len(ok(admin.get("/admin/keys"))["data"])
    error_of(admin.post("/admin/keys", json=body), 400, "invalid_request_error", message)
    assert len(ok(admin.get("/admin/keys"))["data"]) == before  # nothing written


def test_create_key_for_an_unknown_account_is_a_404(admin: httpx.Client) -> None:
    error_of(admin.post("/admin/keys", json={"name": "k", "account": "nobody-here"}), 404, "not_found_error",
             "no account named or with id 'nobody-here'")


@pytest.mark.parametrize("raw", [b"{", b"not json", b'{"name": "k",}', b"\xff\xfe", b'["name"]', b'"k"', b"null",
                                 b'{"name": "\\ud800"}', b"1e999"])
def test_malformed_bodies_are_a_400(admin: httpx.Client, raw: bytes) -> None:
    for path in ("/admin/keys", "/admin/accounts"):
        message = error_of(admin.post(path, content=raw), 400, "invalid_request_error")
        assert message.startswith(("the body is not valid JSON", "the body must be a JSON object"))


def test_unknown_keys_are_a_404(admin: httpx.Client) -> None:
    for method, path in (("GET", ""), ("PATCH", ""), ("POST", "/revoke"), ("POST", "/topup")):
        body = {"usd": "1"} if path == "/topup" else {"rpm": 1} if method == "PATCH" else None
        r = admin.request(method, f"/admin/keys/key_0000{path}", json=body)
        error_of(r, 404, "not_found_error", "no key with id 'key_0000'")


def test_update_limits_apply_to_the_next_request(gw: Gateway, admin: httpx.Client) -> None:
    key = create_key(admin, rpm=100, otpm=500)
    assert ask(gw, key["secret"]).status_code == 200
    changed = ok(admin.patch(f"/admin/keys/{key['id']}", json={"rpm": 1, "otpm": 0, "itpm": None,
                                                               "max_concurrency": 4}))
    assert changed["limits"] == {"rpm": 1, "itpm": None, "otpm": None, "max_concurrency": 4}
    # One request a minute, and one was made: the new limit holds at once, not after the next reload (there is
    # none in these tests).
    error_of(ask(gw, key["secret"]), 429, "rate_limit_error")
    assert ok(admin.patch(f"/admin/keys/{key['id']}", json={"rpm": 0}))["limits"]["rpm"] is None
    assert ask(gw, key["secret"]).status_code == 200
    assert ok(admin.get(f"/admin/keys/{key['id']}"))["limits"]["max_concurrency"] == 4


def test_a_keys_bodies_are_logged_only_when_turned_on(admin: httpx.Client) -> None:
    assert create_key(admin)["log_bodies"] is False
    key = create_key(admin, log_bodies=True)
    assert key["log_bodies"] is True
    path = f"/admin/keys/{key['id']}"
    assert ok(admin.patch(path, json={"log_bodies": False}))["log_bodies"] is False
    assert ok(admin.get(path))["log_bodies"] is False
    error_of(admin.patch(path, json={"log_bodies": "yes"}), 400, "invalid_request_error",
             "log_bodies: must be true or false, not a string")


def test_update_a_keys_budget(admin: httpx.Client) -> None:
    key = create_key(admin, budget_usd="2", cap_usd="10", period="day")
    path = f"/admin/keys/{key['id']}"
    # A new amount keeps the period; a period alone changes the present cap's.
    assert ok(admin.patch(path, json={"cap_usd": "20"}))["budget"]["period"] == "day"
    budget = ok(admin.patch(path, json={"period": "month"}))["budget"]
    assert (budget["cap_usd"], budget["period"]) == ("20.000000000", "month")
    off = ok(admin.patch(path, json={"prepaid": False, "cap_usd": "0"}))
    assert off["budget"] == {"prepaid": False, "cap_usd": None, "cap_nanousd": None, "period": None}
    assert off["balance"]["balance_nanousd"] == 2_000_000_000  # kept, only not drawn on
    assert ok(admin.patch(path, json={"prepaid": True}))["budget"]["prepaid"] is True
    error_of(admin.patch(path, json={"period": "day"}), 400, "invalid_request_error", "period: needs a cap")
    error_of(admin.patch(path, json={}), 400, "invalid_request_error",
             "nothing to change: give any of models, rpm, itpm")
    error_of(admin.patch(path, json={"prepaid": None}), 400, "invalid_request_error", "nothing to change")
    error_of(admin.patch(path, json={"name": "x"}), 400, "invalid_request_error", "name: unknown field")
    error_of(admin.patch(path, json={"prepaid": "no"}), 400, "invalid_request_error",
             "prepaid: must be true or false, not a string")


def test_a_refused_update_changes_nothing(admin: httpx.Client) -> None:
    key = create_key(admin, rpm=7)
    error_of(admin.patch(f"/admin/keys/{key['id']}", json={"rpm": 9, "cap_usd": "-1"}), 400, "invalid_request_error",
             "cap_usd: must be 0 or more")
    assert ok(admin.get(f"/admin/keys/{key['id']}"))["limits"]["rpm"] == 7


def test_revoke_applies_at_once(gw: Gateway, admin: httpx.Client) -> None:
    key = create_key(admin)
    assert ask(gw, key["secret"]).status_code == 200
    revoked = ok(admin.post(f"/admin/keys/{key['id']}/revoke"))
    assert revoked["state"] == "revoked" and revoked["revoked_at"].endswith("Z")
    error_of(ask(gw, key["secret"]), 401, "authentication_error")
    error_of(admin.post(f"/admin/keys/{key['id']}/revoke"), 400, "invalid_request_error", "revoked already")
    other = create_key(admin)
    error_of(admin.post(f"/admin/keys/{other['id']}/revoke", json={"now": True}), 400, "invalid_request_error",
             "now: unknown field (expected: none)")
    assert ok(admin.post(f"/admin/keys/{other['id']}/revoke", json={}))["state"] == "revoked"


# -- money -----------------------------------------------------------------------------------------------------------


def test_a_topup_applies_to_the_next_request(gw: Gateway, admin: httpx.Client) -> None:
    key = create_key(admin, budget_usd="0")
    assert key["budget"]["prepaid"] is True and key["balance"]["balance_nanousd"] == 0
    error_of(ask(gw, key["secret"]), 402, "billing_error", "credit balance is too low")
    topped = ok(admin.post(f"/admin/keys/{key['id']}/topup", json={"usd": "5", "note": "first"}))
    assert topped["balance"]["balance_usd"] == "5.000000000"
    r = ask(gw, key["secret"])
    assert r.status_code == 200, r.text
    cost = gw.row(r.headers["request-id"]).cost_nanousd
    assert cost is not None and cost > 0
    after = ok(admin.get(f"/admin/keys/{key['id']}"))["balance"]
    assert (after["balance_nanousd"], after["held_nanousd"], after["spent_nanousd"]) == (5_000_000_000 - cost, 0,
                                                                                         cost)
    entries = ok(admin.get("/admin/ledger", params={"owner": key["id"]}))
    assert [(e["kind"], e["note"]) for e in entries["data"]] == [("settle", None), ("reserve", None),
                                                                  ("topup", "first")]
    assert entries["data"][2] | {"id": 0, "created_at": ""} == {
        "id": 0, "created_at": "", "owner": key["id"], "kind": "topup", "amount_usd": "5.000000000",
        "amount_nanousd": 5_000_000_000, "request_id": None, "note": "first"}
    assert sum(e["amount_nanousd"] for e in entries["data"]) == 5_000_000_000 - cost


def test_taking_money_back(admin: httpx.Client) -> None:
    key = create_key(admin, budget_usd="1")
    path = f"/admin/keys/{key['id']}/topup"
    assert ok(admin.post(path, json={"usd": "-0.25"}))["balance"]["balance_usd"] == "0.750000000"
    error_of(admin.post(path, json={"usd": "-1"}), 400, "invalid_request_error",
             "usd: cannot take back 1.000000000 USD from")
    assert ok(admin.post(path, json={"usd": 2}))["balance"]["balance_nanousd"] == 2_750_000_000


@pytest.mark.parametrize(("body", "message"), [
    ({}, "usd: is required"),
    ({"usd": "0"}, "usd: must not be 0"),
    ({"usd": "-0.000"}, "usd: must not be 0"),
    ({"usd": 1.25}, "usd: must be dollars as a string"),
    ({"usd": "1.0000000001"}, "the smallest unit is $0.000000001"),
    ({"usd": "5", "note": 3}, "note: must be a string, not a number"),
    ({"usd": "5", "note": "n" * 1001}, "note: must be at most 1000 characters"),
    ({"dollars": "5"}, "dollars: unknown field (expected: note, usd)"),
])
def test_topup_refusals(admin: httpx.Client, body: dict[str, Any], message: str) -> None:
    key = create_key(admin)
    error_of(admin.post(f"/admin/keys/{key['id']}/topup", json=body), 400, "invalid_request_error", message)
    assert ok(admin.get(f"/admin/keys/{key['id']}"))["budget"]["prepaid"] is False  # no top-up happened


def test_a_key_not_yet_loaded_shows_the_stores_balance(gw: Gateway, admin: httpx.Client) -> None:
    name = unique("quiet")
    gw.create_key(name)  # straight into the store: the gateway has not reloaded since
    key_id = gw.key_id(name)
    gw.server.thread.run(gw.services.store.topup(key_id, 1_500_000_000))
    shown = ok(admin.get(f"/admin/keys/{key_id}"))["balance"]
    assert shown == {"source": "store", "balance_usd": "1.500000000", "balance_nanousd": 1_500_000_000,
                     "held_usd": None, "held_nanousd": None, "spent_usd": None, "spent_nanousd": None,
                     "period": None}


# -- accounts --------------------------------------------------------------------------------------------------------


def test_accounts(gw: Gateway, admin: httpx.Client) -> None:
    name = unique("acme")
    account = ok(admin.post("/admin/accounts", json={"name": name, "budget_usd": "0", "cap_usd": "3"}), 201)
    assert account["id"].startswith("acct_") and account["name"] == name and account["type"] == "account"
    assert account["budget"] == {"prepaid": True, "cap_usd": "3.000000000", "cap_nanousd": 3_000_000_000,
                                 "period": "month"}
    assert account["keys"] == {"active": 0, "revoked": 0}
    assert ok(admin.get(f"/admin/accounts/{name}")) == ok(admin.get(f"/admin/accounts/{account['id']}")) == account
    assert account in ok(admin.get("/admin/accounts"))["data"]

    # A key paid by the account: refused while the account has nothing, served once it is topped up.
    key = create_key(admin, account=name)
    error_of(ask(gw, key["secret"]), 402, "billing_error", f"the account {name!r}")
    topped = ok(admin.post(f"/admin/accounts/{name}/topup", json={"usd": "2.5"}))
    assert topped["balance"]["balance_nanousd"] == 2_500_000_000
    assert ask(gw, key["secret"]).status_code == 200
    ok(admin.post(f"/admin/keys/{key['id']}/revoke"))
    assert ok(admin.get(f"/admin/accounts/{name}"))["keys"] == {"active": 0, "revoked": 1}

    changed = ok(admin.patch(f"/admin/accounts/{name}", json={"cap_usd": "0", "prepaid": False}))
    assert changed["budget"] == {"prepaid": False, "cap_usd": None, "cap_nanousd": None, "period": None}
    error_of(admin.patch(f"/admin/accounts/{name}", json={"period": "day"}), 400, "invalid_request_error",
             "period: needs a cap")
    error_of(admin.patch(f"/admin/accounts/{name}", json={"rpm": 1}), 400, "invalid_request_error",
             "rpm: unknown field (expected: cap_usd, period, prepaid)")


@pytest.mark.parametrize(("body", "message"), [
    ({}, "name: is required"),
    ({"name": "acct_x"}, "name: must not start with 'acct_'"),
    ({"name": "x", "budget_usd": "1", "models": ["m"]}, "models: unknown field"),
    ({"name": "x", "cap_usd": "1", "period": "year"}, "period: must be one of day, month"),
])
def test_create_account_refusals(admin: httpx.Client, body: dict[str, Any], message: str) -> None:
    error_of(admin.post("/admin/accounts", json=body), 400, "invalid_request_error", message)


def test_account_names_are_unique_and_unknown_ones_are_a_404(admin: httpx.Client) -> None:
    name = unique("once")
    ok(admin.post("/admin/accounts", json={"name": name}), 201)
    error_of(admin.post("/admin/accounts", json={"name": name}), 400, "invalid_request_error",
             f"name: an account named {name!r} exists already")
    for method, path in (("GET", ""), ("PATCH", ""), ("POST", "/topup")):
        body = {"usd": "1"} if path else {"cap_usd": "1"} if method == "PATCH" else None
        error_of(admin.request(method, f"/admin/accounts/nobody{path}", json=body), 404, "not_found_error",
                 "no account named or with id 'nobody'")


# -- the ledger and usage --------------------------------------------------------------------------------------------


def test_ledger_newest_first_with_a_limit(admin: httpx.Client) -> None:
    account = ok(admin.post("/admin/accounts", json={"name": unique("ledger"), "budget_usd": "1"}), 201)
    for usd in ("2", "3", "-0.5"):
        ok(admin.post(f"/admin/accounts/{account['id']}/topup", json={"usd": usd}))
    page = ok(admin.get("/admin/ledger", params={"owner": account["name"], "limit": "2"}))
    assert [e["amount_usd"] for e in page["data"]] == ["-0.500000000", "3.000000000"] and page["has_more"] is True
    whole = ok(admin.get("/admin/ledger", params={"owner": account["id"]}))
    assert [e["amount_nanousd"] for e in whole["data"]] == [-500_000_000, 3 * 10**9, 2 * 10**9, 10**9]
    assert whole["has_more"] is False and whole["data"][-1]["note"] == "initial budget"
    ids = [e["id"] for e in whole["data"]]
    assert ids == sorted(ids, reverse=True)
    assert whole["data"][0] in ok(admin.get("/admin/ledger", params={"limit": "1000"}))["data"]


@pytest.mark.parametrize(("params", "status", "message"), [
    ({"limit": "0"}, 400, "limit: must be a whole number from 1 to 1000 (got '0')"),
    ({"limit": "1001"}, 400, "limit: must be a whole number from 1 to 1000"),
    ({"limit": "ten"}, 400, "limit: must be a whole number"),
    ({"limit": "\u0661\u0660"}, 400, "limit: must be a whole number"),
    ({"owner": "key_nobody"}, 404, "no key with id 'key_nobody'"),
    ({"owner": "nobody"}, 404, "no account named or with id 'nobody'"),
    ({"kind": "topup"}, 400, "kind: unknown query parameter (expected: limit, owner)"),
])
def test_ledger_refusals(admin: httpx.Client, params: dict[str, str], status: int, message: str) -> None:
    error_of(admin.get("/admin/ledger", params=params), status,
             "not_found_error" if status == 404 else "invalid_request_error", message)


def test_ledger_query_given_twice(admin: httpx.Client) -> None:
    error_of(admin.get("/admin/ledger?limit=1&limit=2"), 400, "invalid_request_error", "limit: given more than once")


def cli_usage(gw: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """What ``tollway usage`` prints for the gateway's database."""
    config = tmp_path / "cli.toml"
    config.write_text(f'[storage]\nurl = "{gw.config.storage.url}"\n[[upstreams]]\nname = "mock"\nkind = "mock"\n'
                      '[[models]]\nname = "m"\ntargets = [{ upstream = "mock" }]\n', encoding="utf-8")
    capsys.readouterr()
    assert cli_main(["usage", "--config", str(config), *args]) == 0
    return capsys.readouterr().out


def test_usage_is_the_clis_report(gw: Gateway, admin: httpx.Client, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    key = create_key(admin)
    for _ in range(3):
        assert ask(gw, key["secret"]).status_code == 200
    # claude-opus-4-6 goes to an upstream that is down: an error row.
    r = httpx.post(gw.url + "/v1/messages", json=MESSAGE | {"model": "claude-opus-4-6"},
                   headers={"x-api-key": key["secret"]}, timeout=30)
    error_of(r, 502, "api_error")
    by = "key,model,upstream,day"
    answer = ok(admin.get("/admin/usage", params={"by": by}))["data"]
    assert answer == json.loads(cli_usage(gw, tmp_path, capsys, "--by", by, "--format", "json"))
    mine = [r for r in answer if r["key_id"] == key["id"]]
    assert sorted((r["model"], r["requests"], r["errors"]) for r in mine) == [("claude-opus-4-6", 1, 1),
                                                                            (MODEL, 3, 0)]
    default = ok(admin.get("/admin/usage", params={"key": key["name"], "since": "1h", "format": "json"}))["data"]
    assert default == json.loads(cli_usage(gw, tmp_path, capsys, "--key", key["name"], "--since", "1h",
                                           "--format", "json"))
    assert [(r["key_id"], r["model"]) for r in default] == [(key["id"], "claude-opus-4-6"), (key["id"], MODEL)]
    rows = gw.server.thread.run(gw.services.store.usage_summary(key=key["id"], by=("model",)))
    assert ok(admin.get("/admin/usage", params={"key": key["id"], "by": "model"}))["data"] == usage_records(
        rows, ("model",))
    csv = admin.get("/admin/usage", params={"key": key["id"], "by": "model", "format": "csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text == usage_csv(usage_records(rows, ("model",))) == cli_usage(
        gw, tmp_path, capsys, "--key", key["id"], "--by", "model", "--format", "csv")
    assert ok(admin.get("/admin/usage", params={"key": "nobody", "since": ""}))["data"] == []


@pytest.mark.parametrize(("params", "message"), [
    ({"since": "yesterday"}, "since: not a duration (24h, 7d) or ISO date: 'yesterday'"),
    ({"since": "99999999999d"}, "since: too far back"),
    ({"by": "week"}, "by: groups are among key, model, upstream, day (got 'week')"),
    ({"by": ","}, "by: groups are among"),
    ({"format": "table"}, "format: must be json or csv (got 'table')"),
    ({"owner": "x"}, "owner: unknown query parameter (expected: by, format, key, since)"),
])
def test_usage_refusals(admin: httpx.Client, params: dict[str, str], message: str) -> None:
    error_of(admin.get("/admin/usage", params=params), 400, "invalid_request_error", message)


# -- fuzzed ----------------------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
# Values that pass some field's checks, so that bodies get past a first refusal as often as not.
LIKELY = st.sampled_from(["5", "0.25", "0", "-1", "0.000000001", "1e9", 3, 0, None, True, False, "day", "month",
                          ["claude-*"], "team", "acct_x", "key_x"])
FIELDS = ("name", "models", "account", "rpm", "itpm", "otpm", "max_concurrency", "budget_usd", "cap_usd", "period",
          "prepaid", "usd", "note")
BODIES = (st.dictionaries(st.sampled_from(FIELDS), LIKELY | JSON, max_size=3).map(lambda d: json.dumps(d).encode())
          | JSON.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=40))
ROUTES = (("GET", "keys"), ("POST", "keys"), ("GET", "keys/{key}"), ("PATCH", "keys/{key}"),
          ("POST", "keys/{key}/topup"), ("POST", "keys/{key}/revoke"), ("GET", "accounts"), ("POST", "accounts"),
          ("GET", "accounts/{account}"), ("PATCH", "accounts/{account}"), ("POST", "accounts/{account}/topup"),
          ("GET", "usage"), ("GET", "ledger"))
SEGMENT = st.text(max_size=12) | st.sampled_from(["keys", "accounts", "usage", "ledger", "topup", "revoke", "%",
                                                  "..", "{key}", "{account}"])
ANY_REQUEST = st.tuples(st.sampled_from(["GET", "POST", "PATCH", "DELETE"]),
                        st.lists(SEGMENT, min_size=1, max_size=4).map(lambda parts: "/".join(
                            quote(p, safe="{}") for p in parts)))
QUERY = st.dictionaries(st.sampled_from(["key", "since", "by", "format", "owner", "limit", "x"]),
                        st.sampled_from(["24h", "7d", "2026-01-01", "key,model", "day", "csv", "json", "5", "team"])
                        | st.text(max_size=12), max_size=3)


@pytest.fixture(scope="module")
def fuzz_target(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str, str]]:
    """A gateway of its own, so that what the fuzzing creates and changes stays out of the other tests' way, and
    a key and an account on it for the routes that name one."""
    gateway = admin_gateway(upstream, tmp_path_factory.mktemp("admin-fuzz") / "tollway.db")
    key = httpx.post(gateway.url + "/admin/keys", json={"name": "fuzz"}, headers={"x-admin-token": TOKEN}).json()
    yield gateway, key["id"], key["account"]["id"]
    gateway.server.close()


@settings(max_examples=300, deadline=None)
@given(request=st.sampled_from(ROUTES) | ANY_REQUEST, query=QUERY, body=BODIES)
def test_fuzzed_admin_requests_never_get_a_500(fuzz_target: tuple[Gateway, str, str], request: tuple[str, str],
                                               query: dict[str, str], body: bytes) -> None:
    gw, key_id, account_id = fuzz_target
    method, path = request
    url = "/admin/" + path.replace("{key}", key_id).replace("{account}", account_id)
    r = httpx.request(method, gw.url + url, params=query, content=body,
                      headers={"x-admin-token": TOKEN, "content-type": "application/json"}, timeout=30)
    assert r.status_code < 500, (method, url, query, body, r.text)
    event(f"status {r.status_code}")  # shown by --hypothesis-show-statistics: the fuzzing reaches past 400s
    assert r.headers["request-id"].startswith("req_")
    if r.status_code >= 400:
        error_of(r, r.status_code, r.json()["error"]["type"])
    elif not r.headers["content-type"].startswith("text/csv"):
        assert isinstance(r.json(), dict)
