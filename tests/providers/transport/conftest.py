"""The pool's tests run on asyncio's own loop and on uvloop, the one `tollway serve` runs: their transports are
different classes with different details (uvloop's is no ``asyncio.Transport`` subclass)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
