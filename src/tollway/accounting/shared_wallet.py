"""Balances and spending caps kept in Redis, so that every replica draws on the same money: requests on
different replicas can no more overspend a balance than requests in one process can.

Each owner (key or account) is one hash, ``{prefix}w:{owner}``: the live balance, what running requests
hold, the day's and the month's spend with their labels, the id of the last top-up applied, and a seed
token. Reserving and settling are one Lua script each, so the check and the change are one step for every
owner of a request together, whichever replica runs them. The ledger in the store stays the record: each
replica still writes its own entries there in batches; Redis holds only the live sum of them.

**Seeding.** An owner's hash is made from the store the first time a request needs it, and again whenever
Redis has lost it (a restart: Redis here keeps nothing on disk). The store's ledger lags the live balance
by what replicas have not flushed yet, so a seed counts only requests that have closed (a reserve with no
settle or release in the store is left out) and each request still running when its owner is seeded is
settled at its whole cost instead of at its reserve's change; each hold carries the seed token it was
reserved under to tell which. Requests that closed while their owner had no hash are kept aside in
``{prefix}w:late:{owner}`` and counted into the seed unless the store already has them.

What a seed cannot see is a request that closed against the Redis that was lost and whose entries are not
in the store yet. So after Redis comes back empty no owner is seeded for ``grace`` seconds (longer than a
flush), and money-limited requests get 529 ``overloaded_error`` with ``retry-after`` meanwhile; the SDKs and
Claude Code retry those on their own. The wait is skipped when the store shows no request entry in the last
``grace`` seconds (a new cluster, or one that was idle): then no replica has any left to write. Redis
unreachable gets the same answer: spending money that no one can check is not an option for a prepaid key.

**Settling** never fails a request: a settle that cannot reach Redis is kept and retried, and each request
settles at most once (a marker key, so a retry after a lost reply cannot count twice).

Amounts go to Redis as decimal strings and change with HINCRBY (exact 64-bit integers); only comparisons
are made on Lua's doubles, exact up to 2^53 nano-dollars (about 9 million dollars) per owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tollway.accounting.wallet import Hold, Purse, Refusal, SeedSource, next_period, period_of
from tollway.errors import Overloaded
from tollway.limits.batch import Batcher
from tollway.store import UNLIMITED, Budget, LedgerEntry

log = logging.getLogger("tollway.wallet")

DONE_TTL = 86_400
"""Seconds a request's 'settled' marker is kept: longer than any request plus its retries."""
LATE_TTL = 7 * 86_400

_RESERVE = """
local amount = tonumber(ARGV[1])
local tokens = {'ok'}
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'e', 'bal', 'held', 'd', 'sd', 'm', 'sm')
  if not h[1] then return {'missing', tostring(i)} end
  local b = 4 + (i - 1) * 3
  if ARGV[b + 1] == '1' and tonumber(h[2]) < amount then return {'balance', tostring(i), h[2]} end
  local cap = tonumber(ARGV[b + 2])
  if cap then
    local spent = 0
    if ARGV[b + 3] == 'day' then
      if h[4] == ARGV[3] then spent = tonumber(h[5]) end
    elseif h[6] == ARGV[4] then spent = tonumber(h[7]) end
    local left = cap - spent - tonumber(h[3])
    if left < amount then return {'cap', tostring(i), string.format('%.0f', left)} end
  end
  tokens[i + 1] = h[1]
end
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'held', ARGV[1])
  if ARGV[4 + (i - 1) * 3 + 1] == '1' then redis.call('HINCRBY', KEYS[i], 'bal', ARGV[2]) end
end
return tokens
"""

# KEYS: n owner hashes, their n late hashes, the request's marker. ARGV: amount, -amount, cost, amount - cost,
# -cost, day, month, request id, then (prepaid, token) per owner. (Negatives are sent ready-made: Redis reads
# no "-0".)
_SETTLE = """
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'EX', DONE_TTL) then return 0 end
local n = (#KEYS - 1) / 2
for i = 1, n do
  local key, b = KEYS[i], 8 + (i - 1) * 2
  local prepaid = ARGV[b + 1] == '1'
  local h = redis.call('HMGET', key, 'e', 'd', 'm')
  if not h[1] then
    redis.call('HSET', KEYS[n + i], ARGV[8], ARGV[3] .. ':' .. ARGV[5] .. ':' .. ARGV[b + 1])
    redis.call('EXPIRE', KEYS[n + i], LATE_TTL)
  else
    if h[2] ~= ARGV[6] then redis.call('HSET', key, 'd', ARGV[6], 'sd', '0') end
    if h[3] ~= ARGV[7] then redis.call('HSET', key, 'm', ARGV[7], 'sm', '0') end
    redis.call('HINCRBY', key, 'sd', ARGV[3])
    redis.call('HINCRBY', key, 'sm', ARGV[3])
    if h[1] == ARGV[b + 2] then
      redis.call('HINCRBY', key, 'held', ARGV[2])
      if prepaid then redis.call('HINCRBY', key, 'bal', ARGV[4]) end
    elseif prepaid then
      redis.call('HINCRBY', key, 'bal', ARGV[5])
    end
  end
end
return 1
""".replace("DONE_TTL", str(DONE_TTL)).replace("LATE_TTL", str(LATE_TTL))

# KEYS: the owner's hash, its late hash, the epoch key. ARGV: token, balance, top-up mark, day, day's spend,
# month, month's spend, grace, the number n of late requests the seed looked up, those n ids, then the ids of
# those the store already has. A late request noted since the lookup sends the seed back to look again: its
# entries may have reached the store after the lookup, and before the sums were read.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local seen, stored = {}, {}
local n = tonumber(ARGV[9])
for i = 10, 9 + n do seen[ARGV[i]] = true end
for i = 10 + n, #ARGV do stored[ARGV[i]] = true end
local late = redis.call('HGETALL', KEYS[2])
for i = 1, #late, 2 do
  if not seen[late[i]] then return {'again'} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('SET', KEYS[3], string.format('%.6f', now), 'NX')
local waited = now - tonumber(redis.call('GET', KEYS[3]))
local grace = tonumber(ARGV[8])
if waited < grace then return {'wait', string.format('%.3f', grace - waited)} end
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'bal', ARGV[2], 'held', '0', 't', ARGV[3], 'd', ARGV[4], 'sd', ARGV[5],
           'm', ARGV[6], 'sm', ARGV[7])
for i = 1, #late, 2 do
  if not stored[late[i]] then
    local cost, minus, prepaid = string.match(late[i + 1], '^(%d+):(-?%d+):(%d)$')
    redis.call('HINCRBY', KEYS[1], 'sd', cost)
    redis.call('HINCRBY', KEYS[1], 'sm', cost)
    if prepaid == '1' then redis.call('HINCRBY', KEYS[1], 'bal', minus) end
  end
end
redis.call('DEL', KEYS[2])
return {'ok'}
"""

# A top-up read from the store, applied once: top-ups commit in id order, so a mark is enough. A negative one
# that `take_back` already took is only struck off. ARGV: entry id, amount, -amount.
_CREDIT = """
local h = redis.call('HMGET', KEYS[1], 'e', 't')
if not h[1] or tonumber(ARGV[1]) <= tonumber(h[2]) then return 0 end
redis.call('HSET', KEYS[1], 't', ARGV[1])
if tonumber(ARGV[2]) < 0 then
  local ahead = 'a:' .. ARGV[3]
  if tonumber(redis.call('HGET', KEYS[1], ahead) or '0') > 0 then
    redis.call('HINCRBY', KEYS[1], ahead, -1)
    return 2
  end
end
redis.call('HINCRBY', KEYS[1], 'bal', ARGV[2])
return 1
"""

# ARGV: amount, -amount, and 1 to take or -1 to give back a take that could not be written.
_TAKE_BACK = """
local bal = redis.call('HGET', KEYS[1], 'bal')
if not bal then return -1 end
if ARGV[3] == '1' then
  if tonumber(bal) < tonumber(ARGV[1]) then return 0 end
  redis.call('HINCRBY', KEYS[1], 'bal', ARGV[2])
else
  redis.call('HINCRBY', KEYS[1], 'bal', ARGV[1])
end
redis.call('HINCRBY', KEYS[1], 'a:' .. ARGV[1], ARGV[3])
return 1
"""

_SET_SPENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'sd', ARGV[2], 'm', ARGV[3], 'sm', ARGV[4])
return 1
"""


class Unsettled(NamedTuple):
    hold: Hold
    cost: int
    day: str
    month: str
    entries: tuple[LedgerEntry, ...] = ()
    """The request's closing ledger entries, written once Redis has the settle (see `SharedWallet.settle`)."""


class SharedWallet:
    def __init__(self, client: Redis, seed: SeedSource, sink: Callable[[LedgerEntry], None], *,
                 prefix: str = "tollway:", grace: float = 5.0, retry_delay: float = 0.5,
                 clock: Callable[[], float] = time.time, owns_client: bool = False) -> None:
        self.client = client
        self._seed_source = seed
        self._sink = sink
        self._prefix = prefix
        self.grace = grace
        self._retry_delay = retry_delay
        self._clock = clock
        self._owns_client = owns_client
        self._budgets: dict[str, Budget] = {}
        batcher = Batcher(client)
        self._reserve = batcher.script(_RESERVE)
        self._settle = batcher.script(_SETTLE)
        self._seed = batcher.script(_SEED)
        self._credit = batcher.script(_CREDIT)
        self._take_back = batcher.script(_TAKE_BACK)
        self._set_spent = batcher.script(_SET_SPENT)
        self._unsettled: list[Unsettled] = []
        self._seeding: dict[str, asyncio.Future[None]] = {}
        self._retrying: asyncio.Task[None] | None = None
        self.outages = 0

    def _key(self, owner: str) -> str:
        return f"{self._prefix}w:{owner}"

    def _late(self, owner: str) -> str:
        return f"{self._prefix}w:late:{owner}"

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _labels(self, ts: float) -> tuple[str, str]:
        when = datetime.fromtimestamp(ts, UTC)
        return period_of(when, "day"), period_of(when, "month")

    async def close(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
        await self._retry_unsettled()
        if self._unsettled:
            log.error("%d settles never reached Redis: those holds stay reserved there until their owners are "
                      "seeded again", len(self._unsettled))
            # The ledger is the record: what the requests cost is written, Redis or not.
            for job in self._unsettled:
                self._write(job.entries)
        if self._owns_client:
            await self.client.aclose()

    # -- budgets (local: every replica loads them from the store) --------------------------------------

    def set_budget(self, owner: str, budget: Budget) -> None:
        self._budgets[owner] = budget

    def budget(self, owner: str) -> Budget:
        return self._budgets.get(owner, UNLIMITED)

    def known(self, owner: str) -> bool:
        return owner in self._budgets

    def limited(self, owners: Iterable[str | None]) -> bool:
        budgets = self._budgets
        for owner in owners:
            budget = budgets.get(owner) if owner is not None else None
            if budget is not None and budget.limited:
                return True
        return False

    # -- the request path ------------------------------------------------------------------------------

    async def reserve(self, request_id: str, owners: Sequence[str], amount: int) -> Hold | Refusal:
        limited = [(o, b) for o in owners if (b := self._budgets.get(o)) is not None and b.limited]
        if not limited:  # a key just loaded that turned out to have no money limit
            return Hold(request_id, amount, ())
        ts = self._clock()
        day, month = self._labels(ts)
        args: list[str | int] = [amount, -amount, day, month]
        for _, budget in limited:
            args += ("1" if budget.prepaid else "0", "" if budget.cap_nanousd is None else budget.cap_nanousd,
                     budget.cap_period or "month")
        keys = [self._key(owner) for owner, _ in limited]
        for _ in range(len(limited) + 1):
            raw = await self._call(self._reserve, keys, args)
            verdict = raw[0]
            if verdict == b"ok":
                break
            owner, budget = limited[int(raw[1]) - 1]
            if verdict == b"missing":
                await self.seed(owner)
                continue
            available = max(0, int(raw[2]))
            if verdict == b"balance":
                return Refusal(owner, "balance", available, amount)
            return Refusal(owner, "cap", available, amount,
                           next_period(datetime.fromtimestamp(ts, UTC), budget.cap_period))
        else:  # pragma: no cover - a hash deleted again between its seed and the retry, every time
            raise Overloaded("Balances are being rebuilt; please retry.", headers={"retry-after": "1"})
        at_us = round(ts * 1_000_000)
        tokens = tuple(t.decode() for t in raw[1:])
        for (owner, budget), token in zip(limited, tokens, strict=True):
            if budget.prepaid:
                # The token lets a later sweep of this reserve, were its replica to die, release it in Redis
                # only if the hash it was taken from still stands.
                self._sink(LedgerEntry(at_us, owner, "reserve", -amount, request_id, f"seed {token}"))
        return Hold(request_id, amount, tuple((o, b.prepaid) for o, b in limited), tokens)

    async def settle(self, hold: Hold, cost: int) -> None:
        ts = self._clock()
        day, month = self._labels(ts)
        if cost > hold.amount:
            log.warning("request %s cost %d nano-USD, more than the %d it reserved", hold.request_id, cost,
                        hold.amount)
        at_us = round(ts * 1_000_000)
        entries = tuple(LedgerEntry(at_us, owner, "settle" if cost else "release", hold.amount - cost,
                                    hold.request_id) for owner, prepaid in hold.owners if prepaid)
        if not hold.owners:
            return
        job = Unsettled(hold, cost, day, month, entries)
        sent = asyncio.ensure_future(self._send_settle(job))

        def sent_off(_: asyncio.Future[None]) -> None:
            # The request's entries reach the ledger only once Redis has its settle: a seed that finds the request
            # closed in the store must not then see its settle arrive under the new seed's token too, and count
            # it a second time (seen: a balance rebuilt mid-load came out one or two requests short). A settle
            # that failed is kept, and its entries go with it once it has gone through.
            exc = None if sent.cancelled() else sent.exception()
            if isinstance(exc, RedisError):
                log.warning("settling %s in Redis failed; retrying in the background", hold.request_id)
                self._keep(job)
                return
            self._write(entries)

        # Here, not after the await: the request's task may be cancelled (its client left) while the settle is on
        # the wire, and the entries must be written and a failed settle kept all the same.
        sent.add_done_callback(sent_off)
        # Shielded: a settle cut on the wire would leave the hold reserved in Redis.
        with contextlib.suppress(RedisError):
            await asyncio.shield(sent)

    async def release_orphan(self, entry: LedgerEntry) -> None:
        """Give back in Redis what a reserve left by a stopped process holds (its release is in the store)."""
        token = (entry.note or "").removeprefix("seed ")
        hold = Hold(entry.request_id or "", -entry.amount_nanousd, ((entry.owner, True),), (token,))
        day, month = self._labels(self._clock())
        job = Unsettled(hold, 0, day, month)
        try:
            await self._send_settle(job)
        except RedisError:
            self._keep(job)

    async def _send_settle(self, job: Unsettled) -> None:
        hold, cost = job.hold, job.cost
        owners = [owner for owner, _ in hold.owners]
        keys = ([self._key(o) for o in owners] + [self._late(o) for o in owners]
                + [f"{self._prefix}w:done:{hold.request_id}"])
        args: list[str | int] = [hold.amount, -hold.amount, cost, hold.amount - cost, -cost, job.day, job.month,
                                 hold.request_id]
        tokens = hold.tokens or ("",) * len(owners)
        for (_, prepaid), token in zip(hold.owners, tokens, strict=True):
            args += ("1" if prepaid else "0", token)
        await self._settle(keys=keys, args=args)

    def _keep(self, job: Unsettled) -> None:
        self._unsettled.append(job)
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.create_task(self._retry_loop(), name="tollway-wallet-settles")

    async def _retry_loop(self) -> None:
        while self._unsettled:
            await asyncio.sleep(self._retry_delay)
            await self._retry_unsettled()

    async def _retry_unsettled(self) -> None:
        while self._unsettled:
            try:
                await self._send_settle(self._unsettled[0])
            except RedisError:
                return
            self._write(self._unsettled.pop(0).entries)

    def _write(self, entries: Iterable[LedgerEntry]) -> None:
        for entry in entries:
            self._sink(entry)

    @property
    def unsettled(self) -> int:
        return len(self._unsettled)

    async def _call(self, script: Any, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        return await self._guard(script(keys=keys, args=args))

    # -- seeding and keeping in step with the store ----------------------------------------------------

    async def seed(self, owner: str) -> None:
        """Make ``owner``'s hash from the store, unless another replica has just made it. Requests of one
        owner arriving together wait for one seed rather than each reading the store."""
        pending = self._seeding.get(owner)
        if pending is None:
            pending = self._seeding[owner] = asyncio.ensure_future(self._seed_once(owner))
            pending.add_done_callback(lambda _: self._seeding.pop(owner, None))
        await asyncio.shield(pending)

    async def _seed_once(self, owner: str) -> None:
        keys = [self._key(owner), self._late(owner), f"{self._prefix}w:epoch"]
        for _ in range(10):
            late = [k.decode() for k in await self._guard(self.client.hkeys(self._late(owner)))]
            seed = await self._seed_source(owner, late)
            day, month = self._labels(self._clock())
            args: list[str | int | float] = [uuid.uuid4().hex[:12], seed.balance, seed.topup_mark, day,
                                             seed.spent.get(day, 0), month, seed.spent.get(month, 0), self.grace,
                                             len(late), *late, *seed.stored]
            raw = await self._call(self._seed, keys, args)
            quiet = seed.last_request_us is None or seed.last_request_us < (self._clock() - self.grace) * 1_000_000
            if raw[0] == b"wait" and quiet:
                args[7] = 0
                raw = await self._call(self._seed, keys, args)
            if raw[0] != b"again":
                break
        else:  # pragma: no cover - requests ending faster than ten reads of the store
            raise Overloaded("Balances are being rebuilt; please retry.", headers={"retry-after": "1"})
        if raw[0] == b"wait":
            wait = float(raw[1])
            raise Overloaded(f"Balances are being rebuilt after a restart of the shared store; retry in "
                             f"{wait:.1f} s.", headers={"retry-after": str(max(1, math.ceil(wait)))})

    async def _guard(self, call: Awaitable[Any]) -> Any:
        """Await a Redis call; Redis out of reach is a 529 for the request (spending unchecked money is not
        an option), counted and logged."""
        try:
            return await call
        except RedisError as exc:
            self.outages += 1
            log.warning("Redis unreachable for balances (%s): money-limited requests get 529 until it answers",
                        exc)
            raise Overloaded("Balances cannot be checked right now; please retry shortly.",
                             headers={"retry-after": "1"}) from exc

    async def credit(self, topups: Sequence[tuple[int, LedgerEntry]]) -> None:
        """Top-ups read from the store, in id order, in one round trip. Owners with no hash yet get them in
        their seed."""
        pipe = self.client.pipeline(transaction=False)
        for entry_id, entry in topups:
            await self._credit(keys=[self._key(entry.owner)], args=[entry_id, entry.amount_nanousd,
                                                                    -entry.amount_nanousd], client=pipe)
        await pipe.execute()

    async def take_back(self, owner: str, amount: int, write: Callable[[], Awaitable[object]]) -> bool:
        """As `tollway.accounting.funds.Funds.take_back`, on the shared balance."""
        key = self._key(owner)
        taken = await self._call(self._take_back, [key], [amount, -amount, 1])
        if taken == -1:
            await self.seed(owner)
            taken = await self._call(self._take_back, [key], [amount, -amount, 1])
        if taken != 1:
            return False
        try:
            await write()
        except BaseException:
            await self._take_back(keys=[key], args=[amount, -amount, -1])
            raise
        return True

    async def set_spent(self, owner: str, spent: dict[str, int]) -> None:
        """A cap has just been set on ``owner``: its spend, as the store counts it, replaces the counters,
        which did not follow its requests while it had no limit."""
        day, month = self._labels(self._clock())
        await self._set_spent(keys=[self._key(owner)], args=[day, spent.get(day, 0), month, spent.get(month, 0)])

    async def snapshot(self, owners: Iterable[str]) -> dict[str, Purse]:
        """The live purses of these owners that have a hash."""
        owners = list(owners)
        pipe = self.client.pipeline(transaction=False)
        for owner in owners:
            pipe.hmget(self._key(owner), "bal", "held", "d", "sd", "m", "sm")
        purses: dict[str, Purse] = {}
        for owner, (bal, held, day, sd, month, sm) in zip(owners, await self._guard(pipe.execute()), strict=True):
            if bal is None:
                continue
            purses[owner] = Purse(budget=self.budget(owner), balance=int(bal), held=int(held), spent_day=int(sd),
                                  spent_month=int(sm), day=day.decode(), month=month.decode(), tracked=True)
        return purses
