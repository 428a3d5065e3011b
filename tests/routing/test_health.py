"""Rests and streaks, with an injected clock."""

from __future__ import annotations

from tollway.routing.health import STREAK, HealthBoard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_429_rests_the_key_at_once_and_an_older_success_does_not_end_it() -> None:
    clock = Clock()
    board = HealthBoard(clock)
    started_earlier = clock.now
    clock.now += 1
    board.failed("u", 0, scope="key", error="rate_limit_error", retry_after=30, rate_limited=True)
    clock.now += 1
    board.succeeded("u", 0, started_earlier)  # a long stream that began before the 429 ends well
    assert board.resting_for("u", 0) == 29 and board.rate_limited("u", 0)
    board.succeeded("u", 0, clock.now)  # a request that began after it does end the rest
    assert board.resting_for("u", 0) == 0


def test_an_upstream_rests_after_a_streak_then_backs_off() -> None:
    clock = Clock()
    board = HealthBoard(clock)
    for _ in range(STREAK - 1):
        assert board.failed("u", 0, scope="upstream", error="api_error") == 0
    assert board.resting_for("u", 1) == 0
    assert board.failed("u", 0, scope="upstream", error="api_error") == 1.0
    assert board.resting_for("u", 1) == 1.0  # every key of the upstream rests
    assert board.failed("u", 0, scope="upstream", error="api_error") == 2.0
    clock.now += 5
    assert board.resting_for("u", 0) == 0


def test_retry_after_rests_an_upstream_at_once() -> None:
    board = HealthBoard(Clock())
    assert board.failed("u", 0, scope="upstream", error="overloaded_error", retry_after=7) == 7
    assert board.resting_for("u", 3) == 7


def test_capacity() -> None:
    board = HealthBoard(Clock())
    board.acquire("u")
    assert board.at_capacity("u", 1) and not board.at_capacity("u", 2) and not board.at_capacity("u", None)
    board.release("u")
    assert not board.at_capacity("u", 1)


def test_rests_decided_here_are_told_and_rests_told_by_peers_are_taken() -> None:
    clock = [100.0]
    board = HealthBoard(clock=lambda: clock[0])
    told: list[tuple[str, int | None, float, bool, str]] = []
    board.on_rest = lambda *rest: told.append(rest)
    board.failed("a", 0, scope="key", error="rate_limit_error", retry_after=7, rate_limited=True)
    assert told == [("a", 0, 7, True, "rate_limit_error")]
    board.failed("a", 0, scope="upstream", error="api_error")  # first of a streak: no rest, nothing told
    assert len(told) == 1
    peer = HealthBoard(clock=lambda: clock[0])
    peer.rest_from_peer("a", 0, 7.0, True, "rate_limit_error")
    assert peer.resting_for("a", 0) == 7.0 and peer.rate_limited("a", 0)
    peer.rest_from_peer("a", None, 3.0, False, "overloaded_error")  # the whole upstream, shorter
    assert peer.resting_for("a", 1) == 3.0 and peer.resting_for("a", 0) == 7.0
