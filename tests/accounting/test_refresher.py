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


async def test_a_poke_reloads_at_once_and_pokes_during_a_reload_make_one_more() -> None:
    calls = 0
    release = asyncio.Event()

    async def refresh() -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    reloads = Refresher("test-refresh", 3600, refresh, logging.getLogger("tollway.test"), "reload failed")
    reloads.start()
    await asyncio.sleep(0.05)
    assert calls == 0  # an hour's beat: nothing yet
    reloads.poke()
    for _ in range(100):
        if calls:
            break
        await asyncio.sleep(0.01)
    assert calls == 1
    reloads.poke()
    reloads.poke()
    release.set()
    await asyncio.sleep(0.1)
    assert calls == 2
    await reloads.close()
