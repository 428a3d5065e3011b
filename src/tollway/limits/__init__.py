"""Short-window limits: rates (requests and tokens per minute) and concurrency, per key and per key on a model.

`Limiter` is the seam: `MemoryLimiter` keeps the counters in this process (exact: nothing awaits between
reading and writing a counter); a shared store for several replicas implements the same interface.
"""

from tollway.limits.base import Decision, Limiter, Quota, Take
from tollway.limits.memory import MemoryLimiter
from tollway.limits.rules import LimitRules, ModelScope

__all__ = ["Decision", "LimitRules", "Limiter", "MemoryLimiter", "ModelScope", "Quota", "Take"]
