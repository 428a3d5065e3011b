"""What Tollway knows of Anthropic's models: names, output caps and release dates.

The seed page lists these ten models; their caps and dates come from the reference (section 9).
Configured models that are not in here are served too, with no cap of Tollway's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    display_name: str
    created_at: str
    max_tokens: int
    max_input_tokens: int


SEED_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z", 128_000, 1_000_000),
    ModelInfo("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z", 128_000, 1_000_000),
    ModelInfo("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-01T00:00:00Z", 64_000, 200_000),
    ModelInfo("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z", 64_000, 200_000),
    ModelInfo("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z", 64_000, 1_000_000),
    ModelInfo("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z", 32_000, 200_000),
    ModelInfo("claude-opus-4-20250514", "Claude Opus 4", "2025-05-14T00:00:00Z", 32_000, 200_000),
    ModelInfo("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-14T00:00:00Z", 64_000, 1_000_000),
    # 128K with the output-128k beta: Tollway cannot see betas per model here, so it allows the larger cap.
    ModelInfo("claude-3-7-sonnet-20250219", "Claude Sonnet 3.7", "2025-02-19T00:00:00Z", 128_000, 200_000),
    ModelInfo("claude-3-5-sonnet-20241022", "Claude Sonnet 3.5 (New)", "2024-10-22T00:00:00Z", 8_192, 200_000),
)

CATALOG: dict[str, ModelInfo] = {m.id: m for m in SEED_MODELS}

# Claude Code puts this attribution block first in `system`; it is meant for Anthropic only.
BILLING_HEADER = "x-anthropic-billing-header"



@dataclass(frozen=True, slots=True)
class Prices:
    """US dollars per million tokens."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal

    @classmethod
    def list(cls, input_usd: str, output_usd: str) -> Prices:
        # Anthropic's fixed cache multipliers: a 5-minute write is 1.25x input, a 1-hour write 2x, a read 0.1x.
        i = Decimal(input_usd)
        return cls(i, Decimal(output_usd), i * Decimal("1.25"), i * 2, i / 10)


LIST_PRICES: dict[str, Prices] = {
    "claude-opus-4-6": Prices.list("5", "25"),
    "claude-sonnet-4-6": Prices.list("3", "15"),
    "claude-opus-4-5-20251101": Prices.list("5", "25"),
    "claude-haiku-4-5-20251001": Prices.list("1", "5"),
    "claude-sonnet-4-5-20250929": Prices.list("3", "15"),
    "claude-opus-4-1-20250805": Prices.list("15", "75"),
    "claude-opus-4-20250514": Prices.list("15", "75"),
    "claude-sonnet-4-20250514": Prices.list("3", "15"),
    "claude-3-7-sonnet-20250219": Prices.list("3", "15"),
    "claude-3-5-sonnet-20241022": Prices.list("3", "15"),
}
