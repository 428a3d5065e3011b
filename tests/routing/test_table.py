"""The routing table built from the config: targets, keys, and what each target costs."""

from __future__ import annotations

from decimal import Decimal

from tollway.config import parse_config
from tollway.protocol.catalog import LIST_PRICES
from tollway.routing.table import RoutingTable


def test_prices_target_over_model_over_list() -> None:
    raw = {
        "upstreams": [{"name": "m", "kind": "mock"}],
        "models": [
            {"name": "claude-sonnet-4-6", "targets": [
                {"upstream": "m"}, {"upstream": "m", "prices": {"input": 1, "output": 2}}]},
            {"name": "claude-haiku-4-5-20251001", "prices": {"input": 9, "output": 9},
             "targets": [{"upstream": "m"}]},
            {"name": "local-model", "targets": [{"upstream": "m"}]},
        ],
    }
    table = RoutingTable(parse_config(raw, "t", {}))
    sonnet = table.routes["claude-sonnet-4-6"].targets
    assert sonnet[0].prices == LIST_PRICES["claude-sonnet-4-6"]
    assert sonnet[1].prices is not None and sonnet[1].prices.input == Decimal(1)
    haiku = table.routes["claude-haiku-4-5-20251001"].targets[0].prices
    assert haiku is not None and haiku.output == Decimal(9)
    assert table.routes["local-model"].targets[0].prices is None
    assert table.keys(table.providers["m"]) == ("",)
