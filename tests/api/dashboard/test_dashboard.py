"""The dashboard through a real server on loopback, as a browser's forms would use it: the login and its brake,
the session cookie, CSRF refusals, a secret shown once, escaping, each page with data, the changes its forms
make, and where it is served."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.api.dashboard.client import Operator, field
from tests.api.test_admin import TOKEN, admin_gateway
from tests.api.test_admin_listener import TwoSites
from tests.conftest import REDIS_URL, Gateway, Upstream, delete_prefix, redis_problem
from tollway.api.admin.auth import BURST
from tollway.config import LimitsConfig
from tollway.store import UsageRecord

MODEL = "claude-sonnet-4-6"
PAGES = ("/dashboard/", "/dashboard/?range=30d", "/dashboard/keys", "/dashboard/upstreams", "/dashboard/requests")


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = admin_gateway(upstream, tmp_path_factory.mktemp("dashboard") / "tollway.db")
    yield gateway
    gateway.server.close()


@pytest.fixture()
def op(gw: Gateway) -> Iterator[Operator]:
    operator = Operator(gw.url)
    assert operator.login(TOKEN).status_code == 303
    yield operator
    operator.close()


def ask(gw: Gateway, secret: str, model: str = MODEL) -> str:
    """A request through the gateway with the SDK; its request-id."""
    raw = gw.client(secret).messages.with_raw_response.create(
        model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    return str(raw.headers["request-id"])


def create_key(op: Operator, **fields: str) -> tuple[httpx.Response, str]:
    r = op.post("/dashboard/keys", {"csrf": op.csrf(), **fields})
    assert r.status_code == 200, r.text
    match = re.search(r'id="secret">([^<]+)<', r.text)
    assert match is not None
    return r, match.group(1)


def alert(r: httpx.Response) -> str:
    match = re.search(r'role="alert">([^<]*)<', r.text)
    assert match is not None, r.text
    return match.group(1)


# -- the login -------------------------------------------------------------------------------------------------------


def test_no_page_is_reachable_without_a_login(gw: Gateway) -> None:
    anonymous = Operator(gw.url)
    for path in (*PAGES, "/dashboard", "/dashboard/nothing-here", "/dashboard/requests?bad=1"):
        r = anonymous.get(path)
        assert r.status_code in (302, 303) and r.headers["location"].startswith("/dashboard"), path
        if path != "/dashboard":
            assert r.headers["location"] == "/dashboard/login"
    for path in ("/dashboard/keys", "/dashboard/logout", "/dashboard/keys/key_x/revoke"):
        r = anonymous.post(path, {"name": "sneaky", "csrf": "x"})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert "sneaky" not in {k.name for k in gw.server.thread.run(gw.services.store.list_keys())}
    # A forged or expired session cookie is no session either.
    anonymous.cookies["tollway_session"] = "abc.9999999999.0123"
    assert anonymous.get("/dashboard/keys").headers["location"] == "/dashboard/login"
    assert anonymous.get("/dashboard/static/dashboard.css").status_code == 200


def test_the_right_token_gives_a_session_cookie_that_opens_every_page(op: Operator) -> None:
    cookie = op.set_cookies["tollway_session"].lower()
    for attribute in ("httponly", "secure", "samesite=strict", "path=/dashboard", "max-age=28800"):
        assert attribute in cookie
    for path in PAGES:
        r = op.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "<script" not in r.text
    # The login page, and the bare prefix, send a logged-in browser on.
    assert op.get("/dashboard/login").headers["location"] == "/dashboard/"
    assert op.get("/dashboard").headers["location"] == "/dashboard/"
    r = op.request("DELETE", "/dashboard/keys")
    assert r.status_code == 405 and r.headers["content-type"].startswith("text/html")


def test_logout_ends_the_session(gw: Gateway) -> None:
    op = Operator(gw.url)
    op.login(TOKEN)
    stolen = op.cookies["tollway_session"]
    r = op.post("/dashboard/logout", {"csrf": op.csrf()})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert "tollway_session" not in op.cookies
    # The cookie, kept by someone, is no good after the logout either.
    op.cookies["tollway_session"] = stolen
    assert op.get("/dashboard/keys").headers["location"] == "/dashboard/login"


def test_wrong_tokens_are_401_pages_and_use_up_the_admin_apis_allowance(upstream: Upstream, tmp_path: Path) -> None:
    gateway = admin_gateway(upstream, tmp_path / "tollway.db")
    try:
        op = Operator(gateway.url)
        r = op.login("not-the-token-at-all")
        assert r.status_code == 401 and alert(r) == "That is not the admin token."
        assert "tollway_session" not in op.cookies
        # A login form that did not come from this site is refused without counting as a guess.
        r = op.post("/dashboard/login", {"nonce": "forged", "token": "still-wrong"})
        assert r.status_code == 403
        for _ in range(BURST - 2):
            assert op.login("x" * 20).status_code == 401
        # The admin API still answers: one failure of the burst is left, then both are shut for this address.
        assert httpx.get(gateway.url + "/admin/keys", headers={"x-admin-token": TOKEN}).status_code == 200
        assert op.login("x" * 20).status_code == 401
        r = op.login(TOKEN)
        assert r.status_code == 429 and "too many failed admin token attempts" in alert(r).lower()
        assert int(r.headers["retry-after"]) >= 1
        assert httpx.get(gateway.url + "/admin/keys", headers={"x-admin-token": TOKEN}).status_code == 429
    finally:
        gateway.server.close()


# -- CSRF ------------------------------------------------------------------------------------------------------------


def test_every_form_wants_the_sessions_csrf_token(gw: Gateway, op: Operator) -> None:
    secret = gw.create_key("csrf-target")
    key_id = gw.key_id("csrf-target")
    csrf = op.csrf()
    for data in ({}, {"csrf": ""}, {"csrf": csrf[:-1] + ("0" if csrf[-1] != "0" else "1")}, {"csrf": "x" * 64}):
        for path, extra in (("/dashboard/keys", {"name": "csrf-made"}), (f"/dashboard/keys/{key_id}/revoke", {}),
                            (f"/dashboard/keys/{key_id}/topup", {"usd": "5"}), ("/dashboard/logout", {})):
            r = op.post(path, {**data, **extra})
            assert r.status_code == 403, (path, data)
            assert "security token" in alert(r)
    # Another session's token is no good here either.
    other = Operator(gw.url)
    other.login(TOKEN)
    assert op.post(f"/dashboard/keys/{key_id}/revoke", {"csrf": other.csrf()}).status_code == 403
    # A form posted from another site is refused by its Origin even with the right token.
    r = op.post(f"/dashboard/keys/{key_id}/revoke", {"csrf": csrf}, headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and "another site" in alert(r)
    assert "csrf-made" not in {k.name for k in gw.server.thread.run(gw.services.store.list_keys())}
    assert ask(gw, secret)
    assert op.get("/dashboard/keys").status_code == 200  # the session is still good


# -- keys and accounts -----------------------------------------------------------------------------------------------


def test_a_new_keys_secret_is_shown_once_and_works(gw: Gateway, op: Operator) -> None:
    r, secret = create_key(op, name="from-the-form", rpm="7", budget_usd="2.5", cap_usd="1", period="day",
                           models="claude-sonnet-*, claude-haiku-*")
    assert secret.startswith("tw-") and "only time the secret is shown" in r.text
    key_id = re.search(r'id="key-id">([^<]+)<', r.text).group(1)  # type: ignore[union-attr]
    key = gw.server.thread.run(gw.services.store.key(key_id))
    assert (key.name, key.rpm, key.models, key.budget.cap_nanousd) == (
        "from-the-form", 7, ("claude-sonnet-*", "claude-haiku-*"), 1_000_000_000)
    request_id = ask(gw, secret)
    for path in (*PAGES, f"/dashboard/requests?key={key_id}"):
        assert secret not in op.get(path).text
    assert request_id in op.get(f"/dashboard/requests?key={key_id}").text


def test_a_bad_form_is_a_400_page_that_says_why(op: Operator) -> None:
    for fields, message in (({"name": ""}, "name: is required"), ({"name": "n", "rpm": "many"}, "rpm: must be"),
                            ({"name": "n", "account": "no-such"}, "no account named"),
                            ({"name": "n", "period": "day"}, "period: needs a cap")):
        r = op.post("/dashboard/keys", {"csrf": op.csrf(), **fields})
        assert r.status_code in (400, 404) and message in alert(r), fields
    r = op.get("/dashboard/requests?status=teapot")
    assert r.status_code == 400 and "status: must be" in alert(r)
    assert op.get("/dashboard/requests?nope=1").status_code == 400
    assert op.get("/dashboard/nothing-here").status_code == 404


def test_names_are_escaped_everywhere(gw: Gateway, op: Operator) -> None:
    name = '<script>alert("x")</script>'
    _, secret = create_key(op, name=name)
    ask(gw, secret)
    for path in ("/dashboard/keys", "/dashboard/", "/dashboard/requests",
                 "/dashboard/keys?q=" + httpx.QueryParams({"q": name})["q"]):
        text = op.get(path, params={"q": name} if "q=" in path else None).text
        assert "<script" not in text and "&lt;script&gt;" in text, path


def test_search_revoke_and_top_up(gw: Gateway, op: Operator) -> None:
    _, secret = create_key(op, name="findme-unique", budget_usd="1")
    key_id = gw.key_id("findme-unique")
    page = op.get("/dashboard/keys", params={"q": "FINDME"}).text
    table = page[page.index('<table id="keys">'):].split("</table>")[0]
    assert "findme-unique" in table and "from-the-form" not in table
    assert "No keys match" in op.get("/dashboard/keys", params={"q": "zzz-nothing"}).text
    r = op.post(f"/dashboard/keys/{key_id}/topup", {"csrf": op.csrf(), "usd": "4"})
    assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/keys?done=topup-key")
    assert "The balance of key" in op.get(r.headers["location"]).text
    assert gw.balance(key_id)[1] == 5_000_000_000
    r = op.post(f"/dashboard/keys/{key_id}/topup", {"csrf": op.csrf(), "usd": "-99"})
    assert r.status_code == 400 and "cannot take back" in alert(r)
    account = gw.server.thread.run(gw.services.store.key(key_id)).account_id
    r = op.post(f"/dashboard/accounts/{account}/topup", {"csrf": op.csrf(), "usd": "3"})
    assert r.status_code == 303 and gw.balance(account)[1] == 3_000_000_000
    assert ask(gw, secret)
    r = op.post(f"/dashboard/keys/{key_id}/revoke", {"csrf": op.csrf()})
    assert r.status_code == 303 and "was revoked" in op.get(r.headers["location"]).text
    # The revoke reached the gateway at once, not at the next reload.
    with pytest.raises(anthropic.AuthenticationError):
        ask(gw, secret)
    r = op.post(f"/dashboard/keys/{key_id}/revoke", {"csrf": op.csrf()})
    assert r.status_code == 400 and "revoked already" in alert(r)


# -- the pages with data ---------------------------------------------------------------------------------------------


def test_pages_show_the_traffic(gw: Gateway, op: Operator) -> None:
    secret = gw.create_key("traffic")
    request_ids = [ask(gw, secret) for _ in range(3)]
    with pytest.raises(anthropic.APIStatusError):
        ask(gw, secret, "claude-opus-4-6")  # its only upstream is down
    overview = op.get("/dashboard/").text
    total = re.search(r'data-chart="requests" data-total="(\d+)"', overview)
    assert total is not None and int(total.group(1)) >= 4
    assert int(re.search(r'data-chart="errors" data-total="(\d+)"', overview).group(1)) >= 1  # type: ignore[union-attr]
    assert "traffic" in overview and MODEL in overview
    requests = op.get("/dashboard/requests", params={"key": "traffic"}).text
    assert all(rid in requests for rid in request_ids)
    errors = op.get("/dashboard/requests", params={"key": "traffic", "status": "error"}).text
    assert not any(rid in errors for rid in request_ids) and "claude-opus-4-6" in errors
    assert request_ids[0] in op.get("/dashboard/requests", params={"model": MODEL, "upstream": "fake"}).text
    upstreams = op.get("/dashboard/upstreams").text
    for name in ("fake", "mock", "dead"):
        assert f'data-upstream="{name}"' in upstreams
    dead_row = upstreams[upstreams.index('data-upstream="dead"'):].split("</tr>")[0]
    assert "100.0%" in dead_row
    keys = op.get("/dashboard/keys").text
    row = keys[keys.index(f'data-key-id="{gw.key_id("traffic")}"'):].split("</tr>")[0]
    assert ">4</a>" in row  # its requests over 30 days


# -- where it is served ----------------------------------------------------------------------------------------------


def test_without_an_admin_token_there_is_no_dashboard(gateway: Gateway) -> None:
    assert httpx.get(gateway.url + "/dashboard/login").status_code == 404


def test_with_an_admin_port_the_dashboard_is_there_only(upstream: Upstream, tmp_path: Path) -> None:
    sites = TwoSites(upstream, tmp_path / "tollway.db")
    try:
        assert httpx.get(sites.client_url + "/dashboard/login").status_code == 404
        op = Operator(sites.admin_url)
        assert op.login(TOKEN).status_code == 303
        assert op.get("/dashboard/keys").status_code == 200
        assert field(op.get("/dashboard/keys"), "csrf")
    finally:
        sites.close()


def test_requests_come_a_hundred_a_page_with_a_link_to_older_ones(gw: Gateway, op: Operator) -> None:
    now = datetime.now(UTC)
    rows = [UsageRecord(request_id=f"req_paging{i:04d}", created_at=now - timedelta(seconds=i), key_id=None,
                        endpoint="messages", model="paging-model", upstream="fake", upstream_model=None, stream=False,
                        status=200, error_type=None) for i in range(150)]
    gw.server.thread.run(gw.services.store.insert_usage(rows[::-1]))
    first = op.get("/dashboard/requests", params={"model": "paging-model"})
    assert first.text.count("data-request-id=") == 100 and "req_paging0000" in first.text
    link = re.search(r'href="(/dashboard/requests\?[^"]+)">Older requests', first.text)
    assert link is not None and "model=paging-model" in link.group(1)
    older = op.get(link.group(1).replace("&amp;", "&"))
    assert older.text.count("data-request-id=") == 50 and "req_paging0149" in older.text
    assert "req_paging0099" not in older.text and "Older requests" not in older.text


def test_the_login_page_warns_when_the_secure_cookie_cannot_stick(gw: Gateway) -> None:
    anonymous = Operator(gw.url)
    warning = "the browser will not keep it"
    assert warning not in anonymous.get("/dashboard/login").text
    assert warning not in anonymous.get("/dashboard/login", headers={"host": "localhost:8080"}).text
    assert warning in anonymous.get("/dashboard/login", headers={"host": "10.1.2.3:8080"}).text
    assert warning not in anonymous.get("/dashboard/login", headers={"host": "gw.example",
                                                                     "x-forwarded-proto": "https"}).text


def test_a_logout_holds_on_every_replica_sharing_redis(upstream: Upstream, tmp_path: Path) -> None:
    problem = redis_problem()
    if problem:
        pytest.fail(problem)
    prefix = f"tollway-test-dash-{secrets.token_hex(4)}:"
    limits = LimitsConfig(url=REDIS_URL, prefix=prefix)
    one, two = (admin_gateway(upstream, tmp_path / "tollway.db", limits) for _ in range(2))
    try:
        op = Operator(one.url)
        op.login(TOKEN)
        cookie = op.cookies["tollway_session"]
        elsewhere = Operator(two.url)
        elsewhere.cookies["tollway_session"] = cookie
        assert elsewhere.get("/dashboard/keys").status_code == 200  # one signing key: a session on every replica
        assert op.post("/dashboard/logout", {"csrf": op.csrf()}).status_code == 303
        # The cookie, kept by someone, opens no page on the other replica either.
        r = elsewhere.get("/dashboard/keys")
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
        elsewhere.close()
        op.close()
    finally:
        one.server.close()
        two.server.close()
        delete_prefix(REDIS_URL, prefix)
