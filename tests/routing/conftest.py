from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.loop_thread import AppServer


class Fake:
    def __init__(self, name: str) -> None:
        self.fake = FakeAnthropic()
        self.server = AppServer(self.fake.app(), name)
        self.url = self.server.url

    @property
    def count(self) -> int:
        return len(self.fake.received)


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Fake]]:
    made = {name: Fake(name) for name in ("a", "b", "c")}
    yield made
    for f in made.values():
        f.server.close()


@pytest.fixture
def reset(fakes: dict[str, Fake]) -> None:
    """Every fake back to answering normally; tests that force failures use it."""
    for f in fakes.values():
        f.fake.reset()
