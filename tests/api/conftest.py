from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Gateway


@pytest.fixture(autouse=True)
def fresh_health(gateway: Gateway) -> Iterator[None]:
    # The gateway is shared by the module's tests, and an upstream error one test asks for (a 429 with
    # retry-after: 7) would rest the upstream for the next test: each test starts with no rests.
    yield
    gateway.services.health.reset()
