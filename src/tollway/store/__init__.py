"""Durable state: keys, accounts, usage rows and the money ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tollway.store.records import (
    UNLIMITED,
    AccountRecord,
    Budget,
    KeyRecord,
    LedgerEntry,
    UsageRecord,
    UsageSummary,
)
from tollway.store.sql import SQLStore

if TYPE_CHECKING:
    from tollway.config import StorageConfig


def open_store(storage: str | StorageConfig) -> SQLStore:
    """A store on a URL, or on the ``[storage]`` table (its URL and pool sizes)."""
    if isinstance(storage, str):
        return SQLStore.open(storage)
    return SQLStore.open(storage.url, pool_size=storage.pool_size, max_overflow=storage.max_overflow)


__all__ = ["UNLIMITED", "AccountRecord", "Budget", "KeyRecord", "LedgerEntry", "SQLStore", "UsageRecord",
           "UsageSummary", "open_store"]
