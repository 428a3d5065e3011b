"""A clock the tests move by hand, so bucket arithmetic is exact."""

from __future__ import annotations

import pytest


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()
