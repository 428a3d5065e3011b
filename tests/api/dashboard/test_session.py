"""Sessions and charts without a server: cookies that expire, are tampered with, or outlive a logout or a new
admin token; and the charts' axes."""

from __future__ import annotations

import re
import socket

import pytest

from tollway.api.dashboard.charts import Series, bar_chart, nice_ticks
from tollway.api.dashboard.session import Sessions, SharedLogouts
from tollway.config import admin_token_digest
from tollway.limits.redis import connect


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lasts_its_lifetime_and_no_longer() -> None:
    clock = Clock()
    sessions = Sessions(admin_token_digest("a" * 20), lifetime=60, clock=clock)
    session, cookie = sessions.start()
    assert sessions.check(cookie) == session
    clock.now += 59
    assert sessions.check(cookie) == session
    clock.now += 1
    assert sessions.check(cookie) is None


def test_a_tampered_cookie_or_another_tokens_cookie_is_no_session() -> None:
    sessions = Sessions(admin_token_digest("a" * 20))
    session, cookie = sessions.start()
    sid, expires, signature = cookie.split(".")
    flipped = signature[:-1] + ("1" if signature.endswith("0") else "0")  # one hex digit changed, whichever it was
    for forged in (f"{sid}.{int(expires) + 3600}.{signature}", f"x{sid}.{expires}.{signature}",
                   f"{sid}.{expires}.{flipped}", f"{sid}.{expires}", "", "a.b.c.d", f"{sid}.{expires}.é"):
        assert sessions.check(forged) is None, forged
    # Changing the admin token ends every session.
    assert Sessions(admin_token_digest("b" * 20)).check(cookie) is None
    # A second process with the same token (a worker, a replica) accepts it, with the same CSRF token.
    other = Sessions(admin_token_digest("a" * 20))
    assert other.check(cookie) == session and other.csrf_ok(session, session.csrf)


def test_logout_ends_one_session_and_csrf_tokens_are_per_session() -> None:
    sessions = Sessions(admin_token_digest("a" * 20))
    first, first_cookie = sessions.start()
    second, second_cookie = sessions.start()
    assert first.csrf != second.csrf
    assert not sessions.csrf_ok(first, second.csrf) and not sessions.csrf_ok(first, None)
    assert not sessions.csrf_ok(first, "")
    sessions.end(first)
    assert sessions.check(first_cookie) is None and sessions.check(second_cookie) == second


def test_ticks_are_round_and_cover_the_top() -> None:
    assert nice_ticks(0) == [0, 1]
    assert nice_ticks(1, whole=True) == [0, 1]
    assert nice_ticks(9) == [0, 2.5, 5, 7.5, 10]
    assert nice_ticks(9, whole=True) == [0, 3, 6, 9]
    assert nice_ticks(100) == [0, 25, 50, 75, 100]
    assert nice_ticks(1234) == [0, 500, 1000, 1500]


def test_a_chart_carries_its_figures_and_escapes_its_labels() -> None:
    svg = bar_chart("requests", ["<b>", "02:00"], [Series("ok", [3, 0], "s-main"), Series("errors", [1, 2], "s-bad")],
                    str, str)
    assert 'data-chart="requests" data-total="6"' in svg
    assert [m for m in re.findall(r'data-series="(\w+)" data-label="[^"]*" data-value="(\d+)"', svg)] == [
        ("ok", "3"), ("errors", "1"), ("errors", "2")]
    assert "<b>" not in svg and "&lt;b&gt;" in svg


async def test_with_redis_away_a_process_still_knows_its_own_logouts(caplog: pytest.LogCaptureFixture) -> None:
    # A port nothing listens on: Redis is away, not misconfigured.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shared = SharedLogouts(connect(f"redis://127.0.0.1:{port}/0", timeout=0.5), "tollway-test:", owns_client=True)
    sessions = Sessions(admin_token_digest("a" * 20), shared=shared)
    other = Sessions(admin_token_digest("a" * 20), shared=shared)
    try:
        first, first_cookie = sessions.start()
        second, second_cookie = sessions.start()
        assert await sessions.find(first_cookie) == first  # the door stays open to a live session
        await sessions.log_out(first)
        assert await sessions.find(first_cookie) is None and await sessions.find(second_cookie) == second
        # Another process cannot learn of it until Redis is back: it says so.
        assert await other.find(first_cookie) == first
        assert "could not reach Redis" in caplog.text and "cannot ask Redis for logouts" in caplog.text
    finally:
        await shared.close()
