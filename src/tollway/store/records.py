"""The rows Tollway keeps: keys, accounts, usage and the money ledger. Plain values, shared by every
storage backend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

PERIODS = ("day", "month")
NAME_LENGTH = 200
"""The width of the name columns of keys and accounts (PostgreSQL refuses a longer value)."""


@dataclass(frozen=True, slots=True)
class Budget:
    """The money limits of a key or an account. Both may have them; a request must fit both."""

    prepaid: bool = False
    """Requests are paid from a balance (topped up in advance) and refused once it cannot cover them."""
    cap_nanousd: int | None = None
    """Most that may be spent per ``cap_period``; None: no cap."""
    cap_period: str | None = None
    """``day`` or ``month`` (UTC calendar periods), when there is a cap."""

    @property
    def limited(self) -> bool:
        return self.prepaid or self.cap_nanousd is not None


UNLIMITED = Budget()


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """A customer, team or app: one bill for all its keys."""

    id: str
    name: str
    created_at: datetime
    budget: Budget = UNLIMITED


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    secret_hash: str
    """SHA-256 of the secret, hex. The secret itself is never stored."""
    hint: str
    """The secret's prefix and last four characters, to recognise it in listings."""
    models: tuple[str, ...] | None
    """Glob patterns of the models the key may use; None means every configured model."""
    created_at: datetime
    revoked_at: datetime | None = None
    rpm: int | None = None
    """Requests per minute; None: no limit."""
    itpm: int | None = None
    """Input tokens per minute."""
    otpm: int | None = None
    """Output tokens per minute."""
    max_concurrency: int | None = None
    """Requests in flight at once."""
    account_id: str | None = None
    budget: Budget = UNLIMITED
    log_bodies: bool = False
    """The request log carries this key's requests and answers (never its secret). Off unless the operator
    turns it on, for one key at a time."""

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def limited(self) -> bool:
        return (self.rpm, self.itpm, self.otpm, self.max_concurrency) != (None, None, None, None)


class UsageRecord(NamedTuple):
    """One request's row in the ledger.

    A named tuple, not a dataclass: thousands wait in memory between batch writes, and a tuple of plain
    values is cheap to build and is left alone by the garbage collector.
    """

    request_id: str
    created_at: datetime
    key_id: str | None
    endpoint: str
    """``messages`` or ``count_tokens``."""
    model: str | None
    """The model the client asked for."""
    upstream: str | None
    upstream_model: str | None
    stream: bool
    status: int
    error_type: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_5m: int = 0
    cache_creation_1h: int = 0
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    tries: str | None = None
    """JSON list of the upstream tries when there was more than one or the request failed."""
    cost_nanousd: int | None = None
    """What the request cost, in 1e-9 US dollars; None when its model has no price."""


@dataclass(frozen=True, slots=True)
class UsageSummary:
    key_id: str | None
    key_name: str | None
    model: str | None
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cache_creation_5m: int
    cache_creation_1h: int
    cache_read_input_tokens: int
    cost_nanousd: int | None = None
    """Summed over the rows that have a cost; None when none has."""
    upstream: str | None = None
    day: str | None = None
    """YYYY-MM-DD (UTC), when grouped by day."""


LEDGER_KINDS = ("topup", "reserve", "settle", "release")


class LedgerEntry(NamedTuple):
    """One change to a balance. A balance is the sum of its entries.

    A request writes ``reserve`` (minus the most it can cost) and, once it has ended, ``settle`` (plus what
    the reserve held beyond the real cost) or ``release`` (plus the whole reserve, when it cost nothing).
    ``topup`` adds money; a negative top-up takes it back.
    """

    at_us: int
    """When, in microseconds since the Unix epoch: an integer, since two are written per request and a
    datetime's text form costs more to make than the rest of the row."""
    owner: str
    """The key's or account's id."""
    kind: str
    amount_nanousd: int
    request_id: str | None = None
    note: str | None = None

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.at_us / 1_000_000, UTC)
