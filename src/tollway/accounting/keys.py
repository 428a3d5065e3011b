"""Client keys: how they are made, hashed and looked up on the hot path.

A key is ``tw-`` followed by 256 random bits. Only its SHA-256 is stored, so a leaked database leaks no
usable key; a fast hash is enough because the secret has full entropy (no password to brute-force).
Lookups come from memory. A background task reloads keys changed since its last pass, so a revoke
takes effect within ``key_refresh_interval`` seconds on every process, with no query per request.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import secrets
from datetime import UTC, datetime, timedelta

from tollway.accounting.refresher import Refresher
from tollway.store import UNLIMITED, AccountRecord, Budget, KeyRecord, SQLStore
from tollway.store.records import NAME_LENGTH

PREFIX = "tw-"
ACCOUNT_PREFIX = "acct_"
log = logging.getLogger("tollway.keys")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_key(name: str, models: tuple[str, ...] | None) -> tuple[KeyRecord, str]:
    """A fresh key record and its secret, which is shown once and never stored."""
    secret = PREFIX + secrets.token_urlsafe(32)
    record = KeyRecord(id="key_" + secrets.token_hex(8), name=name, secret_hash=hash_secret(secret),
                       hint=f"{secret[:7]}...{secret[-4:]}", models=models, created_at=datetime.now(UTC))
    return record, secret


def new_account(name: str, created_at: datetime, budget: Budget = UNLIMITED) -> AccountRecord:
    return AccountRecord(id=ACCOUNT_PREFIX + secrets.token_hex(8), name=name, created_at=created_at, budget=budget)


def own_account_name(key: KeyRecord, taken: bool) -> str:
    """The name of the account made for a key that names none: the key's own, or where an account has that
    already, the key's cut short so that its id still fits after it."""
    if not taken:
        return key.name
    suffix = f"-{key.id}"
    return key.name[:NAME_LENGTH - len(suffix)] + suffix


def may_use(key: KeyRecord, model: str) -> bool:
    return key.models is None or any(fnmatch.fnmatchcase(model, p) for p in key.models)


class KeyCache:
    """Active keys by hash, kept in step with the store."""

    # Reloads look back this far past the last one, so a write committed late is still seen.
    OVERLAP = timedelta(seconds=5)
    MAX_NEGATIVE = 10_000

    def __init__(self, store: SQLStore, refresh_interval: float) -> None:
        self._store = store
        self._by_hash: dict[str, KeyRecord] = {}
        self._missing: set[str] = set()
        self._last: datetime | None = None
        self._reloads = Refresher("tollway-key-refresh", refresh_interval, self.refresh, log,
                                  "reloading keys failed; serving the keys already loaded")

    async def start(self) -> None:
        await self.refresh()
        self._reloads.start()

    async def close(self) -> None:
        await self._reloads.close()

    def reload_soon(self) -> None:
        """Another process changed what this reloads: do it now, in the background."""
        self._reloads.poke()

    async def refresh(self) -> None:
        started = datetime.now(UTC)
        since = None if self._last is None else self._last - self.OVERLAP
        for key in await self._store.keys_changed_since(since):
            if key.active:
                self._by_hash[key.secret_hash] = key
            else:
                self._by_hash.pop(key.secret_hash, None)
        self._last = started
        # Hashes that missed are forgotten on each pass, so a key created meanwhile is found.
        self._missing.clear()

    async def lookup(self, secret: str) -> KeyRecord | None:
        digest = hash_secret(secret)
        key = self._by_hash.get(digest)
        if key is not None or digest in self._missing:
            return key
        # A miss goes to the store once per refresh period, so a key made a moment ago works at once
        # while a flood of wrong keys costs one query each at most.
        key = await self._store.key_by_hash(digest)
        if key is not None and key.active:
            self._by_hash[digest] = key
            return key
        if len(self._missing) < self.MAX_NEGATIVE:
            self._missing.add(digest)
        return None
