"""The admin API's OpenAPI document: it lists exactly the routes the server registers, it is served behind the
token, and schemathesis holds a live server to it (every operation, with the token: no 5xx, only documented
statuses, content types and headers, and bodies that match their schemas)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.test_admin import TOKEN, admin_gateway, error_of, ok
from tests.conftest import Gateway, PostgresDatabases, Upstream
from tollway.api.admin.openapi import DOCUMENT

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
METHODS = ("get", "post", "patch", "put", "delete")


KNOWN: dict[str, list[str]] = {"id": [], "ref": []}
"""Ids of keys, and names and ids of accounts, on the gateway under test: path parameters are drawn from these as
often as not, so that the operations on one key or account get past the 404 of a made-up one."""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(request: pytest.FixtureRequest, upstream: Upstream,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway on each store: PostgreSQL refuses what SQLite takes (a NUL in a string, for one), and a refusal
    the handlers do not expect is a 500."""
    gateway = admin_gateway(upstream, tmp_path_factory.mktemp("admin-openapi") / "tollway.db")
    if request.param == "postgres":
        gateway.server.close()
        databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
        config = gateway.config
        storage = dataclasses.replace(config.storage, url=databases.create_migrated("admin_openapi"))
        gateway = Gateway(dataclasses.replace(config, storage=storage))
    headers = {"x-admin-token": TOKEN}
    accounts = [ok(httpx.post(gateway.url + "/admin/accounts", json={"name": f"team-{i}", "budget_usd": "5"},
                              headers=headers), 201) for i in range(2)]
    keys = [ok(httpx.post(gateway.url + "/admin/keys", json={"name": f"key-{i}", "account": accounts[i % 2]["id"],
                                                              "budget_usd": "1"}, headers=headers), 201)
            for i in range(4)]
    KNOWN["id"] = [k["id"] for k in keys]
    KNOWN["ref"] = [a["id"] for a in accounts] + [a["name"] for a in accounts]
    yield gateway
    gateway.server.close()


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route of the admin sub-application, as the document writes paths."""
    admin = next(r for r in app.router.resources() if isinstance(r, web.PrefixedSubAppResource)
                 and r.canonical == "/admin")
    # aiohttp adds a HEAD beside each GET by itself: it answers as the GET does, without the body.
    return {(route.method.lower(), route.resource.canonical) for route in admin._app.router.routes()
            if route.method != "HEAD" and route.resource is not None}


def documented_routes() -> set[tuple[str, str]]:
    return {(method, path) for path, item in DOCUMENT["paths"].items() for method in item if method in METHODS}


def test_every_registered_route_is_documented_and_nothing_else(gw: Gateway) -> None:
    registered = registered_routes(gw.app)
    assert len(registered) == 16
    assert registered == documented_routes()


def test_the_document_is_valid_openapi_3_1() -> None:
    schemathesis.openapi.from_dict(DOCUMENT).validate()  # raises on a document that breaks the specification


def test_every_operation_answers_401_and_429_and_has_an_id() -> None:
    ids = []
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            assert {"401", "429"} <= set(op["responses"]), (method, path)
            assert any(status.startswith("2") for status in op["responses"]), (method, path)
            ids.append(op["operationId"])
    assert len(ids) == len(set(ids))


def test_the_document_is_served_behind_the_token(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/admin/openapi.json", headers={"x-admin-token": TOKEN})
    assert ok(r) == DOCUMENT and r.headers["request-id"].startswith("req_")
    assert DOCUMENT["openapi"].startswith("3.1")
    error_of(httpx.get(gw.url + "/admin/openapi.json"), 401, "authentication_error")


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/admin/keys", {"name": "a\x00b"}, 400, "name: must not contain NUL characters"),
    ("POST", "/admin/keys", {"name": "a\nb"}, 400, "name: must not contain control characters"),
    ("POST", "/admin/keys", {"name": "k", "models": ["claude-\x00"]}, 400, "models: must not contain NUL"),
    ("POST", "/admin/keys", {"name": "k", "account": "\x00"}, 400, "account: must not contain NUL"),
    ("POST", "/admin/accounts", {"name": "\x00x"}, 400, "name: must not contain NUL characters"),
    ("PATCH", "/admin/keys/{id}", {"models": ["a\tb"]}, 400, "models: must not contain control characters"),
    ("POST", "/admin/keys/{id}/topup", {"usd": "1", "note": "x\x00"}, 400, "note: must not contain NUL"),
    ("GET", "/admin/ledger?owner=a%00", None, 400, "owner: must not contain NUL characters"),
    ("GET", "/admin/usage?key=a%00", None, 400, "key: must not contain NUL characters"),
    ("GET", "/admin/keys/key_%00", None, 404, "no key with id"),
    ("GET", "/admin/accounts/team%00", None, 404, "no account named or with id"),
    ("PATCH", "/admin/accounts/%00", {"cap_usd": "1"}, 404, "no account named or with id"),
])
def test_text_postgresql_cannot_store_is_refused(gw: Gateway, method: str, path: str, body: Any, status: int,
                                                 message: str) -> None:
    """Found by schemathesis on PostgreSQL: a NUL in a name, pattern, note, query or path was a 500 there (asyncpg
    refuses it, SQLite stores it); now it is a 400 naming the field (or the 404 of a record that cannot exist) on
    both stores. Other control characters are refused in names and patterns, which are shown one a line."""
    r = httpx.request(method, gw.url + path.replace("{id}", KNOWN["id"][0]), json=body,
                      headers={"x-admin-token": TOKEN})
    error_of(r, status, "invalid_request_error" if status == 400 else "not_found_error", message)


def test_a_long_key_name_taken_by_an_account_still_gets_an_account_of_its_own(gw: Gateway) -> None:
    """Found by schemathesis on PostgreSQL: a key named as an existing account gets an account named after it and
    its id, which for a name of 200 characters was longer than the column, a 500 there."""
    name = "n" * 200
    first = ok(httpx.post(gw.url + "/admin/keys", json={"name": name}, headers={"x-admin-token": TOKEN}), 201)
    second = ok(httpx.post(gw.url + "/admin/keys", json={"name": name}, headers={"x-admin-token": TOKEN}), 201)
    assert first["account"]["name"] == name
    assert second["account"]["name"] == "n" * (200 - len(second["id"]) - 1) + "-" + second["id"]
    assert second["name"] == name  # the key keeps its whole name


def test_a_balance_cannot_grow_past_what_the_ledger_can_sum(gw: Gateway) -> None:
    """Found by schemathesis on SQLite: top-ups of billions of dollars in a row made the ledger's sum overflow its
    64-bit integers, a 500; now the top-up that would go past them is a 400, and nothing is written."""
    headers = {"x-admin-token": TOKEN}
    key = ok(httpx.post(gw.url + "/admin/keys", json={"name": "rich"}, headers=headers), 201)
    path = gw.url + f"/admin/keys/{key['id']}/topup"
    for _ in range(2):
        ok(httpx.post(path, json={"usd": 4_000_000_000}, headers=headers))
    error_of(httpx.post(path, json={"usd": "1300000000"}, headers=headers), 400, "invalid_request_error",
             "usd: would take the balance of rich")
    shown = ok(httpx.get(gw.url + f"/admin/keys/{key['id']}", headers=headers))["balance"]
    assert shown["balance_usd"] == "8000000000.000000000"
    ok(httpx.post(path, json={"usd": "1223372036.854775807"}, headers=headers))  # to the last nano-dollar
    error_of(httpx.post(path, json={"usd": "0.000000001"}, headers=headers), 400, "invalid_request_error")
    assert ok(httpx.post(path, json={"usd": "-1"}, headers=headers))["balance"]["balance_usd"] == \
        "9223372035.854775807"


def test_a_note_may_have_line_breaks(gw: Gateway) -> None:
    r = httpx.post(gw.url + f"/admin/keys/{KNOWN['id'][0]}/topup", json={"usd": "1", "note": "paid\nin full"},
                   headers={"x-admin-token": TOKEN})
    assert r.status_code == 200, r.text


# -- schemathesis ----------------------------------------------------------------------------------------------------


# Both header styles, so whichever scheme a case goes by carries the real token. Generated security values are off:
# wrong tokens would only spend the address's allowance of failures. The document is loaded as the module holds
# it (the test above shows the server serves exactly that), so the operations are known when tests are collected.
HEADERS = {"x-admin-token": TOKEN, "authorization": f"Bearer {TOKEN}"}
schema = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_dict({
    "headers": HEADERS,
    "generation": {"max-examples": 30, "with-security-parameters": False},
}))




@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    known = [(name, KNOWN[name]) for name in path_parameters or () if KNOWN.get(name)]
    if not known:
        return st.just(path_parameters)
    name, values = known[0]
    return st.just(path_parameters) | st.sampled_from(values).map(lambda v: {**(path_parameters or {}), name: v})


@schema.hook
def filter_query(context: Any, query: dict[str, Any] | None) -> bool:
    # aiohttp's HTTP parser refuses a request line past 8190 bytes itself, with a plain-text 400 and no request-id,
    # before any of Tollway's code runs (on /v1 as on /admin): a limit of the server, not of this API.
    return len(urlencode(query or {}, doseq=True)) < 6000


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis(case: Any, gw: Gateway) -> None:
    case.call_and_validate(base_url=gw.url, headers=HEADERS, checks=CHECKS)
