"""Client keys: their format and hashing, model globs, and the in-memory KeyCache kept in step with the store."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import re
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tollway.accounting.keys import PREFIX, KeyCache, hash_secret, may_use, new_key
from tollway.store import KeyRecord, SQLStore, open_store
from tollway.store.sql import StoreUnavailable

URLSAFE = set(string.ascii_letters + string.digits + "-_")



@pytest.fixture
async def cache(store: SQLStore) -> AsyncIterator[KeyCache]:
    # A long interval: the tests call refresh() themselves.
    c = KeyCache(store, refresh_interval=3600)
    yield c
    await c.close()


# -- new_key ------------------------------------------------------------------------------------------------------


def test_new_key_format() -> None:
    record, secret = new_key("ci", ("claude-*",))
    assert PREFIX == "tw-"
    assert secret.startswith("tw-")
    body = secret.removeprefix("tw-")
    assert set(body) <= URLSAFE
    # Each URL-safe base64 character carries 6 bits.
    assert len(body) * 6 >= 128
    assert record.name == "ci"
    assert record.models == ("claude-*",)
    assert record.active and record.revoked_at is None
    assert record.created_at.tzinfo is not None
    assert abs((datetime.now(UTC) - record.created_at).total_seconds()) < 60
    assert re.fullmatch(r"key_[0-9a-f]{16}", record.id)


def test_new_key_randomness() -> None:
    pairs = [new_key("k", None) for _ in range(200)]
    secrets_ = [s for _, s in pairs]
    assert len(set(secrets_)) == 200
    assert len({r.id for r, _ in pairs}) == 200
    assert len({r.secret_hash for r, _ in pairs}) == 200
    # Character entropy over many secrets: a constant or low-entropy secret would show far fewer symbols.
    symbols = "".join(s.removeprefix("tw-") for s in secrets_)
    counts = {c: symbols.count(c) for c in set(symbols)}
    entropy = -sum(n / len(symbols) * math.log2(n / len(symbols)) for n in counts.values())
    assert entropy > 5.9  # close to log2(64) = 6 bits a character


def test_only_the_hash_is_stored() -> None:
    record, secret = new_key("x", None)
    assert record.secret_hash == hashlib.sha256(secret.encode()).hexdigest() == hash_secret(secret)
    assert re.fullmatch(r"[0-9a-f]{64}", record.secret_hash)
    body = secret.removeprefix("tw-")
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if isinstance(value, str):
            assert body not in value, field.name
    assert body not in repr(record)


def test_hint_does_not_reveal_the_secret() -> None:
    record, secret = new_key("x", None)
    assert secret not in record.hint
    assert record.hint.startswith("tw-")
    assert record.hint.endswith(secret[-4:])
    # At most 8 secret characters are shown (48 of 256 bits), never enough to guess the rest.
    shown = record.hint.replace("...", "").removeprefix("tw-")
    assert len(shown) <= 8
    assert len(record.hint) <= 40  # fits the column


async def test_secret_never_reaches_the_database_file(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db' / 'k.db'}")
    await store.migrate()
    record, secret = new_key("x", None)
    await store.insert_key(record)
    await store.close()
    files = list((tmp_path / "db").iterdir())
    assert files
    raw = b"".join(f.read_bytes() for f in files)  # the database and any WAL beside it
    assert record.secret_hash.encode() in raw
    assert secret.removeprefix("tw-").encode() not in raw


def test_hash_secret_is_sha256_hex() -> None:
    assert hash_secret("tw-abc") == "66698c4e2523c7d7779bd23862a4e52a2c932fb872877c9b46effbc44de1d5b3"
    assert hash_secret("tw-abc") != hash_secret("tw-abd")
    # Lone surrogates (from a mangled header) still hash rather than crash.
    assert len(hash_secret("tw-\udcff")) == 64


# -- may_use ------------------------------------------------------------------------------------------------------


def record_with(models: tuple[str, ...] | None) -> KeyRecord:
    return dataclasses.replace(new_key("m", None)[0], models=models)


@pytest.mark.parametrize(
    ("models", "model", "allowed"),
    [
        (None, "claude-opus-4-6", True),
        (None, "anything-at-all", True),
        ((), "claude-opus-4-6", False),
        (("claude-sonnet-*",), "claude-sonnet-4-6", True),
        (("claude-sonnet-*",), "claude-sonnet-4-5-20250929", True),
        (("claude-sonnet-*",), "claude-opus-4-6", False),
        (("claude-sonnet-*",), "my-claude-sonnet-4-6", False),  # the whole name must match
        (("claude-sonnet-4-6",), "claude-sonnet-4-6", True),
        (("claude-sonnet-4-6",), "claude-sonnet-4-6-extra", False),
        (("claude-haiku-4-5-2025100?",), "claude-haiku-4-5-20251001", True),
        (("claude-haiku-4-5-2025100?",), "claude-haiku-4-5-202510011", False),
        (("claude-opus-4-[56]",), "claude-opus-4-6", True),
        (("claude-opus-4-[56]",), "claude-opus-4-1-20250805", False),
        (("Claude-*",), "claude-opus-4-6", False),  # case-sensitive
        (("claude-opus-*", "claude-haiku-*"), "claude-haiku-4-5-20251001", True),
        (("claude-opus-*", "claude-haiku-*"), "claude-sonnet-4-6", False),
        (("*",), "x", True),
    ],
)
def test_may_use(models: tuple[str, ...] | None, model: str, allowed: bool) -> None:
    assert may_use(record_with(models), model) is allowed


# -- KeyCache -----------------------------------------------------------------------------------------------------


class Queries:
    """Counts the store look-ups a KeyCache makes on its miss path."""

    def __init__(self, store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = store.key_by_hash

        async def counting(secret_hash: str) -> KeyRecord | None:
            self.count += 1
            return await real(secret_hash)

        monkeypatch.setattr(store, "key_by_hash", counting)


async def test_lookup_hit_and_miss(store: SQLStore, cache: KeyCache, monkeypatch: pytest.MonkeyPatch) -> None:
    record, secret = new_key("a", None)
    await store.insert_key(record)
    await cache.start()
    queries = Queries(store, monkeypatch)
    assert await cache.lookup(secret) == record
    assert queries.count == 0  # loaded by start(): a hit needs no query
    assert await cache.lookup(secret + "x") is None
    assert await cache.lookup("tw-" + "A" * 43) is None
    assert await cache.lookup("") is None


async def test_key_created_after_start_is_found(store: SQLStore, cache: KeyCache,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    queries = Queries(store, monkeypatch)
    await cache.start()
    record, secret = new_key("late", ("claude-*",))
    await store.insert_key(record)
    assert await cache.lookup(secret) == record  # not loaded yet: the miss goes to the store
    assert queries.count == 1
    assert await cache.lookup(secret) == record  # now from memory
    assert queries.count == 1


async def test_revoked_key_stops_working_after_refresh(store: SQLStore, cache: KeyCache) -> None:
    record, secret = new_key("a", None)
    other, other_secret = new_key("b", None)
    await store.insert_key(record)
    await store.insert_key(other)
    await cache.start()
    assert await cache.lookup(secret) == record
    assert await store.revoke_key(record.id)
    await cache.refresh()
    assert await cache.lookup(secret) is None
    assert await cache.lookup(other_secret) == other  # the others are untouched


async def test_revoked_key_found_on_the_miss_path_is_refused(store: SQLStore, cache: KeyCache) -> None:
    await cache.start()
    record, secret = new_key("a", None)
    await store.insert_key(record)
    await store.revoke_key(record.id)
    assert await cache.lookup(secret) is None


async def test_key_revoked_long_after_it_was_created(store: SQLStore, cache: KeyCache) -> None:
    # A key from long ago is not in the "changed since" window until its revoke moves updated_at.
    record, secret = new_key("old", None)
    record = dataclasses.replace(record, created_at=datetime(2020, 1, 1, tzinfo=UTC))
    await store.insert_key(record)
    await cache.start()
    await cache.refresh()
    assert await cache.lookup(secret) == record
    await store.revoke_key(record.id)
    await cache.refresh()
    assert await cache.lookup(secret) is None


async def test_negative_cache_cleared_on_refresh(store: SQLStore, cache: KeyCache,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    queries = Queries(store, monkeypatch)
    await cache.start()
    record, secret = new_key("n", None)
    # An old created_at keeps the key out of refresh()'s "changed since" window: only the miss path finds it.
    record = dataclasses.replace(record, created_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert await cache.lookup(secret) is None  # a miss, remembered
    assert queries.count == 1
    await store.insert_key(record)
    for _ in range(5):
        assert await cache.lookup(secret) is None  # still remembered as missing: no query per attempt
    assert queries.count == 1
    await cache.refresh()
    assert await cache.lookup(secret) == record
    assert queries.count == 2


async def test_refresh_loads_keys_changed_since_the_last_pass(store: SQLStore, cache: KeyCache,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    await cache.start()
    record, secret = new_key("r", None)
    await store.insert_key(record)
    await cache.refresh()
    queries = Queries(store, monkeypatch)
    assert await cache.lookup(secret) == record
    assert queries.count == 0  # loaded by the refresh, not by the miss path


async def test_background_refresh_picks_up_a_revoke(store: SQLStore) -> None:
    record, secret = new_key("bg", None)
    await store.insert_key(record)
    cache = KeyCache(store, refresh_interval=0.02)
    await cache.start()
    try:
        assert await cache.lookup(secret) == record
        await store.revoke_key(record.id)
        for _ in range(250):
            if await cache.lookup(secret) is None:
                break
            await asyncio.sleep(0.02)
        assert await cache.lookup(secret) is None
    finally:
        await cache.close()


class Outage:
    """Makes the store's key reads fail as an unreachable database does, while ``down``."""

    def __init__(self, store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = False
        self.refused = 0
        for name in ("keys_changed_since", "key_by_hash"):
            monkeypatch.setattr(store, name, self._guard(getattr(store, name)))

    def _guard(self, real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def guarded(*args: Any) -> Any:
            if self.down:
                self.refused += 1
                raise StoreUnavailable(ConnectionRefusedError(111, "Connection refused"))
            return await real(*args)

        return guarded


async def test_with_the_database_away_loaded_keys_work_and_a_miss_is_refused_as_overloaded(
        store: SQLStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    kept, kept_secret = new_key("kept", None)
    await store.insert_key(kept)
    outage = Outage(store, monkeypatch)
    cache = KeyCache(store, refresh_interval=0.01)
    await cache.start()
    try:
        outage.down = True
        for _ in range(500):  # background reloads failing
            if outage.refused >= 5:
                break
            await asyncio.sleep(0.01)
        assert outage.refused >= 5
        assert await cache.lookup(kept_secret) == kept
        made, made_secret = new_key("made meanwhile", None)  # by another process, which still reaches it
        await store.insert_key(made)
        with pytest.raises(StoreUnavailable):
            await cache.lookup(made_secret)
        assert await store.revoke_key(kept.id)
        outage.down = False
        # Back: the key made meanwhile is found (its miss was not remembered), the revoke is seen by the next
        # reload (which looks back from the last one that worked).
        assert await cache.lookup(made_secret) == made
        for _ in range(500):
            if await cache.lookup(kept_secret) is None:
                break
            await asyncio.sleep(0.01)
        assert await cache.lookup(kept_secret) is None
    finally:
        await cache.close()
    said = [r for r in caplog.records if r.name == "tollway.keys"]
    assert len(said) == 1 and said[0].exc_info is None
    assert said[0].getMessage().startswith("reloading keys failed; serving the keys already loaded: the database is "
                                           "unreachable")
