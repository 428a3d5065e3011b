"""The background reload shared by the key cache and the funds: a failure is logged and the beat goes on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tollway.accounting.refresher import Refresher


async def test_a_failed_reload_is_logged_and_the_next_one_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def refresh() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database is restarting")

    reloads = Refresher("test-refresh", 0.01, refresh, logging.getLogger("tollway.test"), "reload failed")
    reloads.start()
    for _ in range(200):
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    await reloads.close()
    assert calls >= 3
    assert [r.message for r in caplog.records if r.name == "tollway.test"] == ["reload failed"]
