"""The usage report: what ``tollway usage`` prints and ``GET /admin/usage`` answers, built in one place so the
two never disagree."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from tollway.money import usd_exact
from tollway.store import UsageSummary
from tollway.store.sql import SUMMARY_GROUPS

DEFAULT_GROUPS = ("key", "model")


def parse_since(raw: str) -> datetime:
    """``24h``, ``7d``, ``30m`` back from now, or an ISO date or datetime (UTC unless it says)."""
    match = re.fullmatch(r"(\d+)([mhd])", raw)
    try:
        if match:
            amount, unit = int(match.group(1)), match.group(2)
            delta = {"m": timedelta(minutes=amount), "h": timedelta(hours=amount), "d": timedelta(days=amount)}[unit]
            return datetime.now(UTC) - delta
        parsed = datetime.fromisoformat(raw)
    except OverflowError:
        raise ValueError(f"too far back: {raw!r}") from None
    except ValueError:
        raise ValueError(f"not a duration (24h, 7d) or ISO date: {raw!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_groups(raw: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in raw.split(",") if g.strip())
    unknown = [g for g in groups if g not in SUMMARY_GROUPS]
    if unknown or not groups:
        raise ValueError(f"groups are among {', '.join(SUMMARY_GROUPS)} (got {raw!r})")
    return groups


def usage_records(rows: Sequence[UsageSummary], by: Sequence[str]) -> list[dict[str, object]]:
    """One flat record per summary row: its groups, then the counts, and the cost as an exact decimal string
    (the cost each request was given when it was served, summed)."""
    records = []
    for r in rows:
        record: dict[str, object] = {}
        if "key" in by:
            record["key"] = r.key_name or r.key_id or "(no key)"
            record["key_id"] = r.key_id
        for group in ("model", "upstream", "day"):
            if group in by:
                record[group] = getattr(r, group)
        record.update(requests=r.requests, errors=r.errors, input_tokens=r.input_tokens,
                      output_tokens=r.output_tokens, cache_write_5m_tokens=r.cache_creation_5m,
                      cache_write_1h_tokens=r.cache_creation_1h, cache_read_tokens=r.cache_read_input_tokens,
                      cost_usd=None if r.cost_nanousd is None else usd_exact(r.cost_nanousd))
        records.append(record)
    return records


def usage_csv(records: Sequence[dict[str, object]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]) if records else ["requests"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()
