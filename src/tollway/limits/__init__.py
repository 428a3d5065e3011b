"""Short-window limits: rates (requests and tokens per minute) and concurrency, per key.

`Limiter` is the seam: `MemoryLimiter` keeps the counters in this process (exact: nothing awaits between
reading and writing a counter); a shared store for several replicas implements the same interface.
"""

from tollway.limits.base import Decision, Limiter, Quota, Take
from tollway.limits.memory import MemoryLimiter

__all__ = ["Decision", "Limiter", "MemoryLimiter", "Quota", "Take"]
