"""Durable state: keys, accounts, usage rows and the money ledger."""

from __future__ import annotations

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


def open_store(url: str) -> SQLStore:
    return SQLStore.open(url)


__all__ = ["UNLIMITED", "AccountRecord", "Budget", "KeyRecord", "LedgerEntry", "SQLStore", "UsageRecord",
           "UsageSummary", "open_store"]
