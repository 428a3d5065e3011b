"""The money side of a request: reserve what it may cost before relaying, settle what it did cost after.

Balances and caps are held in memory by a `MemoryWallet`, started from the store and kept in step with
it in the background: budgets set by the CLI or the admin API and top-ups (ledger entries written by
another process) are picked up every ``refresh_interval`` seconds. With several replicas and Redis they
are held in Redis by a `SharedWallet` instead, seeded from the store owner by owner; the budgets and the
top-ups still come from the store the same way. The request path never queries the store; the wallet's
own ledger entries go out in the usage ledger's batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from tollway.accounting.pricing import reserve_nanousd
from tollway.accounting.refresher import Refresher
from tollway.accounting.wallet import (
    Hold,
    MemoryWallet,
    Purse,
    Refusal,
    Seed,
    SeedSource,
    Wallet,
    period_of,
    period_start,
)
from tollway.errors import BillingError, InvalidRequest, Overloaded
from tollway.protocol.catalog import Prices
from tollway.store import Budget, KeyRecord, LedgerEntry, SQLStore

if TYPE_CHECKING:  # the Redis client is imported only where it is configured
    from tollway.accounting.shared_wallet import SharedWallet

log = logging.getLogger("tollway.funds")
NANO = Decimal(1_000_000_000)


def usd(nano: int) -> str:
    return f"${Decimal(nano) / NANO:.6f}"


class Funds:
    # Reloads look back this far past the last one, so a write committed late is still seen.
    OVERLAP = timedelta(seconds=5)
    ORPHAN_AGE = 3600.0
    """With a store shared by replicas, a reserve left open this long (seconds) is taken for one whose replica
    died: a running request on another replica must not be released under it. Longer than any request."""
    SWEEP_EVERY = 60.0
    MAX_BACKLOG = 400_000
    """Ledger entries waiting for the database past which money-limited requests are turned away (529): they
    are never dropped, unlike usage rows, so a long database outage must not let them grow without bound."""

    def __init__(self, store: SQLStore, sink: Callable[[LedgerEntry], None], refresh_interval: float,
                 clock: Callable[[], float] | None = None,
                 shared: Callable[[SeedSource], SharedWallet] | None = None,
                 backlog: Callable[[], int] = lambda: 0) -> None:
        self._store = store
        self._backlog = backlog
        self._memory: MemoryWallet | None = None
        self.shared: SharedWallet | None = None
        self._money: Wallet
        if shared is None:
            self._money = self._memory = MemoryWallet(sink) if clock is None else MemoryWallet(sink, clock)
        else:
            self._money = self.shared = shared(self._seed)
        self._last_sweep = 0.0
        self._totals: tuple[float, dict[str, dict[str, int]]] = (0.0, {})
        """When the spend was last summed, and its sums by period label and owner (see `_spend`)."""
        self._names: dict[str, str] = {}
        self._accounts_of: dict[str, str] = {}
        """Key id to account id, to add up an account's spend over its keys."""
        self._last_entry = 0
        self._ahead: list[tuple[str, int]] = []
        """Top-ups this process applied before writing them (see `take_back`): skipped once when read back."""
        self._needs_spend: set[str] = set()
        """Owners whose spend must be loaded; kept until a load succeeds."""
        self._last_sync: datetime | None = None
        self._reloads = Refresher("tollway-funds-refresh", refresh_interval, self.refresh, log,
                                  "reloading budgets and top-ups failed; using what is already loaded")
        # One refresh at a time: two reading the same new top-ups would both credit them.
        self._refreshing = asyncio.Lock()

    # -- keeping in step with the store --------------------------------------------------------------

    @property
    def wallet(self) -> MemoryWallet:
        """The in-process wallet (tests and tools); there is none when balances are shared."""
        assert self._memory is not None, "balances are kept in Redis"
        return self._memory

    @property
    def _many_processes(self) -> bool:
        return self._store.dialect != "sqlite" or self.shared is not None

    async def start(self) -> None:
        await self._release_orphans()
        await self.refresh()
        self._reloads.start()

    async def close(self) -> None:
        await self._reloads.close()
        if self.shared is not None:
            await self.shared.close()

    def reload_soon(self) -> None:
        """Another process changed what this reloads: do it now, in the background."""
        self._reloads.poke()

    async def _release_orphans(self) -> None:
        """Give back what requests cut off by a stop still hold. Their usage rows were lost with them (rows
        and entries are written together), so there is no cost to keep.

        With one process on SQLite, at its start every open reserve is such an orphan. Where several processes
        may share the store (PostgreSQL, or workers with Redis), others may be serving those requests still:
        only reserves older than
        ``ORPHAN_AGE`` are released, by whichever replica sweeps first (the store keeps one closing entry
        per request, Redis one settle)."""
        self._last_sweep = time.monotonic()
        orphans = await self._store.open_reserves()
        if self._many_processes:
            before = round((time.time() - self.ORPHAN_AGE) * 1_000_000)
            orphans = [e for e in orphans if e.at_us < before]
        if orphans:
            at_us = round(time.time() * 1_000_000)
            await self._store.insert_usage([], [
                LedgerEntry(at_us, e.owner, "release", -e.amount_nanousd, e.request_id,
                            "the gateway stopped before the request ended") for e in orphans])
            if self.shared is not None:
                for entry in orphans:
                    await self.shared.release_orphan(entry)
            log.warning("released %d reserves left by requests a stop cut off", len(orphans))

    async def refresh(self) -> None:
        async with self._refreshing:
            await self._refresh()
        if self._many_processes and time.monotonic() - self._last_sweep > self.SWEEP_EVERY:
            await self._release_orphans()

    async def _refresh(self) -> None:
        started = datetime.now(UTC)
        since = None if self._last_sync is None else self._last_sync - self.OVERLAP
        money, memory = self._money, self._memory
        keys = await self._store.keys_changed_since(since)
        owners: list[tuple[str, str, Budget]] = [(k.id, k.name, k.budget) for k in keys]
        for key in keys:
            if key.account_id is not None:
                self._accounts_of[key.id] = key.account_id
        owners += [(a.id, a.name, a.budget) for a in await self._store.accounts_changed_since(since)]
        budgets: dict[str, Budget] = {}
        for owner, name, budget in owners:
            self._names[owner] = name
            if budget.limited:
                if memory is not None:
                    purse = memory.purses.get(owner)
                    if purse is None or not purse.tracked:
                        # Its spend was not followed while it had no limit: load it before the limit applies.
                        self._needs_spend.add(owner)
                elif money.known(owner) and not money.budget(owner).limited:
                    self._needs_spend.add(owner)  # a new owner's spend comes with its seed
            budgets[owner] = budget
        if memory is None:
            assert self.shared is not None
            # Each top-up is applied to Redis once whichever replicas read it (the hash keeps a mark), so
            # a replica starting reads them all: one that came while no replica ran is not missed.
            topups = await self._store.ledger_entries(kinds=("topup",), after_id=self._last_entry)
            if topups:
                await self.shared.credit(topups)
                self._last_entry = topups[-1][0]
        elif self._last_sync is None:
            balances, self._last_entry = await self._store.balances()
            for owner, balance in balances.items():
                memory.purse(owner).balance = balance
        else:
            for entry_id, entry in await self._store.ledger_entries(kinds=("topup",), after_id=self._last_entry):
                applied = (entry.owner, entry.amount_nanousd)
                if applied in self._ahead:
                    self._ahead.remove(applied)  # already in the balance (an entry alike counts the same)
                else:
                    memory.credit(entry.owner, entry.amount_nanousd)
                self._last_entry = entry_id
        spend = await self._spend(self._needs_spend) if self._needs_spend else {}
        # Budgets and the spend they are checked against take effect together, with no await between, so no
        # request sees a new cap against a spend not yet loaded.
        for owner, budget in budgets.items():
            money.set_budget(owner, budget)
        for owner, figures in spend.items():
            if memory is not None:
                memory.set_spent(owner, figures)
            else:
                assert self.shared is not None
                await self.shared.set_spent(owner, figures)
            self._needs_spend.discard(owner)
        self._last_sync = started

    async def _spend(self, owners: set[str], reuse: float = 0.0) -> dict[str, dict[str, int]]:
        """What these owners spent in the current day and month, from the stored usage rows (rows still
        waiting for the next batch are not in it: at most ``flush_interval`` of traffic). With ``reuse``, a
        reading up to that many seconds old does: after Redis restarts, every owner is seeded at once, and
        each would otherwise sum the month's rows."""
        now = datetime.now(UTC) if self._memory is None else self._memory.now()
        taken, totals = self._totals
        if not reuse or time.monotonic() - taken > reuse or set(totals) != {period_of(now, "day"),
                                                                             period_of(now, "month")}:
            totals = {}
            for period in ("day", "month"):
                start = period_start(now, period)
                per_key = await self._store.spend_by_key(start)
                owned = dict(per_key)
                for key_id, cost in per_key.items():
                    account = self._accounts_of.get(key_id)
                    if account is not None:
                        owned[account] = owned.get(account, 0) + cost
                totals[period_of(start, period)] = owned
            self._totals = (time.monotonic(), totals)
        return {owner: {label: owned.get(owner, 0) for label, owned in totals.items()} for owner in owners}

    async def _load(self, key: KeyRecord) -> None:
        """Bring a key (and its account) this process has not loaded yet, made since the last refresh, into
        the wallet before its first request: its budget, its balance and its spend."""
        async with self._refreshing:
            missing = [o for o in (key.id, key.account_id) if o is not None and not self._money.known(o)]
            if not missing:
                return  # another request of the same key loaded it meanwhile
            budgets: dict[str, Budget] = {}
            if key.id in missing:
                budgets[key.id] = key.budget
                self._names[key.id] = key.name
            if key.account_id is not None:
                self._accounts_of[key.id] = key.account_id
                if key.account_id in missing:
                    account = await self._store.account(key.account_id)
                    budgets[key.account_id] = account.budget if account is not None else Budget()
                    if account is not None:
                        self._names[account.id] = account.name
            if self._memory is None:
                for owner in missing:  # balances and spend come with each owner's seed
                    self._money.set_budget(owner, budgets[owner])
                return
            # Entries up to the top-up watermark only: later ones are the next refresh's to credit.
            balances = {owner: sum(e.amount_nanousd for i, e in await self._store.ledger_entries(owner=owner)
                                   if i <= self._last_entry) for owner in missing}
            spend = await self._spend({o for o in missing if budgets[o].limited})
            wallet = self._memory
            for owner in missing:
                wallet.set_budget(owner, budgets[owner])
                wallet.purse(owner).balance = balances[owner]
            for owner, figures in spend.items():
                wallet.set_spent(owner, figures)

    # -- the request path ------------------------------------------------------------------------------

    async def _seed(self, owner: str, late: Sequence[str]) -> Seed:
        """What a shared wallet needs to start ``owner``'s hash (see `SharedWallet`).

        Which late requests the store already counts is read from the very entries the balance is summed
        from, where the owner pays from a balance: a late request of a prepaid owner always has its reserve
        there (it reserved before Redis was lost, and the seed waits until such entries are written), and it
        is counted in the balance exactly when its closing entry is there too. Asked separately, a request
        closing between the two reads was counted twice (the rebuilt balance came out short). For an owner
        with only a cap (no entries per request), the usage rows say, looked up before the spend is summed:
        a request stored between the two is counted twice in the spend, erring on the side of less room."""
        entries = await self._store.ledger_entries(owner=owner)
        closed = {e.request_id for _, e in entries if e.kind in ("settle", "release")}
        reserved = {e.request_id for _, e in entries if e.kind == "reserve"}
        capped_only = [r for r in late if r not in reserved]
        plain = await self._store.stored_requests(capped_only) if capped_only else frozenset()
        stored = {r for r in late if (r in closed if r in reserved else r in plain)}
        balance = sum(e.amount_nanousd for _, e in entries if e.kind != "reserve" or e.request_id in closed)
        mark = max((i for i, e in entries if e.kind == "topup"), default=0)
        spent = (await self._spend({owner}, reuse=0.25))[owner]
        return Seed(balance, mark, spent, frozenset(stored), await self._store.newest_request_entry_at())

    def _unloaded(self, key: KeyRecord) -> bool:
        """A key (or its account) this process has not loaded yet: made a moment ago by another process."""
        known = self._money.known
        return not known(key.id) or (key.account_id is not None and not known(key.account_id))

    def limited(self, key: KeyRecord) -> bool:
        """Whether the request must go through the wallet: a money limit on its key or account, or a key
        not loaded yet."""
        return self._unloaded(key) or self._money.limited((key.id, key.account_id))

    def now(self) -> datetime:
        return self.shared.now() if self.shared is not None else self.wallet.now()

    async def snapshot(self, owners: Iterable[str]) -> dict[str, Purse]:
        """The live purses of these owners (for reports), where the wallet has them."""
        if self.shared is not None:
            return await self.shared.snapshot(owners)
        purses = self.wallet.purses
        return {owner: purses[owner] for owner in owners if owner in purses}

    async def reserve(self, request_id: str, key: KeyRecord, prices: Prices | None, body_size: int, fetches: bool,
                      max_tokens: int, max_input_tokens: int | None, images: int = 0) -> Hold | None:
        """Reserve the most this request can cost, or raise the error Anthropic gives when money runs out,
        having reserved nothing. None when the request costs nothing (its model has no price)."""
        if self._unloaded(key):
            await self._load(key)
        if prices is None:
            return None
        if self._backlog() >= self.MAX_BACKLOG:
            raise Overloaded("The gateway cannot record spending right now (its database is not taking writes); "
                             "please retry shortly.", headers={"retry-after": "5"})
        amount = reserve_nanousd(prices, body_size, fetches, max_tokens, max_input_tokens, images)
        owners = (key.id,) if key.account_id is None else (key.id, key.account_id)
        result = await self._money.reserve(request_id, owners, amount)
        if isinstance(result, Refusal):
            raise self._refused(result)
        return result

    async def settle(self, hold: Hold, cost: int) -> None:
        await self._money.settle(hold, cost)

    async def take_back(self, owner: str, amount: int, write: Callable[[], Awaitable[object]]) -> bool:
        """Take ``amount`` back from a live balance in one step with the check, so requests running meanwhile
        cannot take it below zero; then ``write`` the (negative) top-up to the store. False, with nothing
        taken, when the balance (less what running requests hold) is smaller."""
        if self.shared is not None:
            return await self.shared.take_back(owner, amount, write)
        purse = self.wallet.purses.get(owner)
        if purse is None or purse.balance < amount:
            return False
        purse.balance -= amount
        self._ahead.append((owner, -amount))
        try:
            await write()
        except BaseException:
            purse.balance += amount
            self._ahead.remove((owner, -amount))
            raise
        return True

    def _refused(self, r: Refusal) -> BillingError | InvalidRequest:
        whose = f"the {'key' if r.owner.startswith('key_') else 'account'} {self._names.get(r.owner, r.owner)!r}"
        if r.reason == "balance":
            return BillingError(f"Your credit balance is too low to access this model: this request may cost up "
                                f"to {usd(r.needed)} and {whose} has {usd(r.available)} left. Please top up.")
        # A spending cap is what Anthropic calls a usage limit, and it answers those with a 400.
        budget = self._money.budget(r.owner)
        assert r.resets_at is not None and budget.cap_nanousd is not None
        return InvalidRequest(
            f"You have reached your specified API usage limits: {whose} may spend {usd(budget.cap_nanousd)} a "
            f"{budget.cap_period or 'month'}, {usd(r.available)} is left and this request may cost up to "
            f"{usd(r.needed)}. You will regain access on {r.resets_at:%Y-%m-%d at %H:%M} UTC.")
