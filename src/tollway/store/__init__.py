"""Durable state: keys and the usage ledger."""

from __future__ import annotations

from tollway.store.records import KeyRecord, UsageRecord, UsageSummary
from tollway.store.sql import SQLStore


def open_store(url: str) -> SQLStore:
    return SQLStore.open(url)


__all__ = ["KeyRecord", "SQLStore", "UsageRecord", "UsageSummary", "open_store"]
