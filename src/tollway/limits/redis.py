"""Limits kept in Redis, so that every replica draws from the same buckets: a 60 RPM key gets 60 requests a
minute in all, however many gateways serve it.

Each call is one Lua script, run by Redis as a single step (EVALSHA, one round trip): a ``take`` reads every
bucket, decides, and writes all of them or none, with no other client in between, which is what makes it
exact across connections and replicas. The arithmetic is `tollway.limits.base.gcra`'s, in the same order
of operations on the same doubles, so both backends give the same decisions for the same inputs.

Time is the Redis server's (``TIME`` in the script), so replicas whose clocks disagree still agree on every
bucket. A ``clock`` may be injected instead (tests move time by hand); it is passed to the scripts.

Keys are ``{prefix}rate:{name}`` (a TAT, as a string of 17 significant digits so it reads back exactly) and
``{prefix}slot:{name}`` (concurrency leases). Every key expires: a bucket once it has refilled, when it is
no different from a missing one, and a slot's leases once the longest of them has run out.

Concurrency is counted in leases rather than a bare counter. A replica killed mid-request never releases
its slots; a lease frees such a slot ``lease`` seconds after it was taken. The trade-off: a request that
outlives its lease stops counting, so a key can briefly run more than its limit; so ``lease`` should be
longer than the longest stream (the default is 15 minutes, past Claude Code's 32,000 output tokens at
usual speeds), and the longer it is, the longer a crashed replica's slots stay taken.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tollway.limits.base import Decision, Take
from tollway.limits.batch import Batcher
from tollway.limits.memory import _unspent

DEFAULT_PREFIX = "tollway:"
DEFAULT_LEASE = 900.0
# Milliseconds a key outlives the moment it stops mattering: covers rounding to whole milliseconds and
# a server clock a little ahead of the one that wrote the TTL.
TTL_MARGIN_MS = 1000

# ARGV[1] is the time in seconds, or empty for the server's own.
_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local margin = tonumber(ARGV[2])
local function num(x) return string.format('%.17g', x) end
local function ttl(until_) return math.ceil((until_ - now) * 1000) + margin end
"""

# The GCRA over n buckets whose arguments start at ARGV[first]: fills `out` (allowed, remaining, reset_at,
# retry_after for each) and `tats`, and sets `refused`. Writes nothing.
_BUCKETS = """
local out, tats, refused = {}, {}, false
for i = 1, n do
  local j = first + (i - 1) * 4
  local cost, limit = tonumber(ARGV[j]), tonumber(ARGV[j + 1])
  local period, interval = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local base = math.max(tonumber(redis.call('GET', KEYS[i])) or now, now)
  local tat = base + cost * interval
  local allow_at = tat - period
  local o = (i - 1) * 4
  if allow_at > now + 1e-9 then
    refused = true
    -- A cost larger than the whole bucket can never fit: its wait is one full period.
    local wait = allow_at - now
    if cost > limit then wait = period end
    out[o + 1] = 0
    out[o + 2] = math.max(0, math.floor((now + period - base) / interval + 1e-9))
    out[o + 3], out[o + 4] = num(base), num(wait)
  else
    tats[i] = tat
    out[o + 1] = 1
    out[o + 2] = math.max(0, math.floor((now + period - tat) / interval + 1e-9))
    out[o + 3], out[o + 4] = num(tat), '0'
  end
end
"""

# KEYS: the buckets. ARGV[3..]: cost, limit, period, interval for each. Returns, for each bucket: allowed
# (1/0), remaining, reset_at, retry_after. Writes only when every bucket allows.
_TAKE = _NOW + """
local n, first = #KEYS, 3
""" + _BUCKETS + """
if not refused then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], num(tats[i]), 'PX', ttl(tats[i]))
  end
end
return out
"""

# Refunds to n buckets whose arguments (seconds to give back, and the take's reset_at or empty) start at
# ARGV[first].
_REFUNDS = """
for i = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    local j = first + (i - 1) * 2
    local seconds, until_ = tonumber(ARGV[j]), tonumber(ARGV[j + 1])
    if until_ then seconds = math.min(seconds, math.max(0, until_ - now)) end
    tat = math.max(now, tat - seconds)
    redis.call('SET', KEYS[i], num(tat), 'PX', ttl(tat))
  end
end
"""

# KEYS: the buckets. ARGV[3..]: seconds to give back, and the take's reset_at (or empty) for each.
_REFUND = _NOW + """
local n, first = #KEYS, 3
""" + _REFUNDS + """
return 0
"""

# KEYS[1]: the slot's leases, a sorted set of lease ids scored by when each runs out. ARGV[3..]: limit,
# lease seconds, this lease's id.
_ACQUIRE = _NOW + """
local key = KEYS[1]
redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now))
if redis.call('ZCARD', key) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', key, num(now + tonumber(ARGV[4])), ARGV[5])
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', key, ttl(tonumber(last[2])))
return 1
"""


# KEYS: n buckets, then m slots. ARGV[3], ARGV[4]: n and m; then cost, limit, period, interval for each bucket;
# then limit, lease seconds and lease id for each slot. A take and a request's concurrency slots in one step:
# the buckets' answers as _TAKE gives them, then the number (from 1) of the first slot found full, or 0.
# Nothing is written unless every bucket allows and every slot has room.
_ADMIT = _NOW + """
local n, m, first = tonumber(ARGV[3]), tonumber(ARGV[4]), 5
""" + _BUCKETS + """
local full = 0
if not refused then
  for s = 1, m do
    local key = KEYS[n + s]
    redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now))
    if redis.call('ZCARD', key) >= tonumber(ARGV[5 + n * 4 + (s - 1) * 3]) then
      full = s
      break
    end
  end
  if full == 0 then
    for i = 1, n do
      redis.call('SET', KEYS[i], num(tats[i]), 'PX', ttl(tats[i]))
    end
    for s = 1, m do
      local j = 5 + n * 4 + (s - 1) * 3
      local key = KEYS[n + s]
      redis.call('ZADD', key, num(now + tonumber(ARGV[j + 1])), ARGV[j + 2])
      local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      redis.call('PEXPIRE', key, ttl(tonumber(last[2])))
    end
  end
end
out[#out + 1] = full
return out
"""
# KEYS: n buckets to refund, then slots. ARGV[3]: n; then seconds and reset_at (or empty) for each bucket; then
# the lease id held in each slot. A request's refunds and the end of its leases, in one step.
_FINISH = _NOW + """
local n, first = tonumber(ARGV[3]), 4
""" + _REFUNDS + """
for s = n + 1, #KEYS do
  redis.call('ZREM', KEYS[s], ARGV[4 + n * 2 + (s - n - 1)])
end
return 0
"""


def connect(url: str, *, timeout: float = 1.0, max_connections: int = 256) -> Redis:
    """A client for calls on the request path (see `RedisLimiter.from_url` for the choices). The pool is large:
    a request waits for a free connection at most ``timeout`` and then fails (a 529 for a balance), and at 256
    requests at once a pool of 50 made some wait that long (measured: 14 of 27,500 requests)."""
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout,
                                           socket_timeout=timeout, socket_connect_timeout=timeout,
                                           retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    return Redis.from_pool(pool)


class RedisLimiter:
    def __init__(self, client: Redis, *, prefix: str = DEFAULT_PREFIX, clock: Callable[[], float] | None = None,
                 lease: float = DEFAULT_LEASE, owns_client: bool = False) -> None:
        if lease <= 0:
            raise ValueError("lease must be positive")
        self.client = client
        self.prefix = prefix
        self.lease = lease
        self._clock = clock
        self._owns_client = owns_client
        batcher = Batcher(client)
        self._take = batcher.script(_TAKE)
        self._refund = batcher.script(_REFUND)
        self._acquire = batcher.script(_ACQUIRE)
        self._admit = batcher.script(_ADMIT)
        self._finish = batcher.script(_FINISH)
        # Lease ids are unique across replicas; each replica releases only the leases it holds itself.
        self._lease_ids = (f"{uuid.uuid4().hex[:12]}:{n}" for n in itertools.count())
        self._held: dict[str, list[str]] = {}

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 1.0, max_connections: int = 256, **kwargs: Any) -> RedisLimiter:
        """A limiter with a client of its own, closed by `close`.

        Limits sit on the request path: a call fails after ``timeout`` seconds rather than the client's
        default of five. A broken connection (a pooled one, after a Redis restart) is retried once at once,
        rather than ten times with backoff; a timeout is not retried, since the script may have run and a
        second take would charge twice. The pool waits for a free connection (up to ``timeout``) where the
        default one would fail a burst of more calls than it has connections."""
        return cls(connect(url, timeout=timeout, max_connections=max_connections), owns_client=True, **kwargs)

    async def close(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def take(self, takes: Sequence[Take]) -> list[Decision]:
        args: list[str | int | float] = [self._now(), TTL_MARGIN_MS]
        for t in takes:
            args += (t.cost, t.quota.limit, t.quota.period, t.quota.interval)
        raw = await self._take(keys=[f"{self.prefix}rate:{t.name}" for t in takes], args=args)
        return self._decisions(raw, takes)

    @staticmethod
    def _decisions(raw: list[Any], takes: Sequence[Take]) -> list[Decision]:
        decisions = [Decision(raw[i] == 1, t.quota.limit, int(raw[i + 1]), float(raw[i + 2]), float(raw[i + 3]))
                     for i, t in zip(range(0, len(raw), 4), takes, strict=True)]
        allowed = sum(d.allowed for d in decisions)
        if allowed and allowed < len(decisions):
            # As in MemoryLimiter: the limits that would have allowed report what they still hold.
            decisions = [_unspent(d, t) if d.allowed else d for d, t in zip(decisions, takes, strict=True)]
        return decisions

    async def admit(self, takes: Sequence[Take], slots: Sequence[tuple[str, int]]) -> tuple[list[Decision], int | None]:
        leases = [next(self._lease_ids) for _ in slots]
        args: list[str | int | float] = [self._now(), TTL_MARGIN_MS, len(takes), len(slots)]
        for t in takes:
            args += (t.cost, t.quota.limit, t.quota.period, t.quota.interval)
        for (_, limit), lease_id in zip(slots, leases, strict=True):
            args += (limit, self.lease, lease_id)
        keys = [f"{self.prefix}rate:{t.name}" for t in takes] + [f"{self.prefix}slot:{name}" for name, _ in slots]
        raw = await self._admit(keys=keys, args=args)
        full = int(raw[-1])
        decisions = self._decisions(raw[:-1], takes)
        if full or not all(d.allowed for d in decisions):
            return decisions, full - 1 if full else None
        for (name, _), lease_id in zip(slots, leases, strict=True):
            self._held.setdefault(name, []).append(lease_id)
        return decisions, None

    async def finish(self, refunds: Sequence[Take], slots: Sequence[str]) -> None:
        refunds = [t for t in refunds if t.cost > 0]
        held = [(name, self._held[name].pop()) for name in slots if self._held.get(name)]
        if not refunds and not held:
            return
        args: list[str | int | float] = [self._now(), TTL_MARGIN_MS, len(refunds)]
        for t in refunds:
            args += (t.cost * t.quota.interval, "" if t.until is None else t.until)
        args += [lease_id for _, lease_id in held]
        keys = [f"{self.prefix}rate:{t.name}" for t in refunds] + [f"{self.prefix}slot:{name}" for name, _ in held]
        await self._finish(keys=keys, args=args)

    async def refund(self, takes: Sequence[Take]) -> None:
        takes = [t for t in takes if t.cost > 0]
        if not takes:
            return
        args: list[str | int | float] = [self._now(), TTL_MARGIN_MS]
        for t in takes:
            args += (t.cost * t.quota.interval, "" if t.until is None else t.until)
        await self._refund(keys=[f"{self.prefix}rate:{t.name}" for t in takes], args=args)

    async def acquire(self, name: str, limit: int) -> bool:
        lease_id = next(self._lease_ids)
        got = await self._acquire(keys=[f"{self.prefix}slot:{name}"],
                                  args=[self._now(), TTL_MARGIN_MS, limit, self.lease, lease_id])
        if got == 1:
            self._held.setdefault(name, []).append(lease_id)
            return True
        return False

    async def release(self, name: str) -> None:
        # An emptied list stays, as MemoryLimiter's counters do: one per slot name, which is per key and model.
        held = self._held.get(name)
        if not held:
            return
        lease_id = held.pop()
        await self.client.zrem(f"{self.prefix}slot:{name}", lease_id)
