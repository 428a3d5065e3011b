"""What the handlers share: built once at startup, reached through the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from tollway.accounting.funds import Funds
from tollway.accounting.keys import KeyCache
from tollway.accounting.ledger import UsageLedger
from tollway.config import Config
from tollway.limits import Limiter, LimitRules
from tollway.routing.health import HealthBoard
from tollway.routing.router import Router
from tollway.routing.table import RoutingTable
from tollway.store import SQLStore
from tollway.telemetry import AccessLog, RequestStats

if TYPE_CHECKING:  # the Redis client is imported only where it is configured
    from tollway.pubsub import Bus


@dataclass(slots=True)
class Services:
    config: Config
    store: SQLStore
    keys: KeyCache
    ledger: UsageLedger
    table: RoutingTable
    health: HealthBoard
    router: Router
    limiter: Limiter
    limit_rules: LimitRules
    funds: Funds
    stats: RequestStats
    access_log: AccessLog | None = None
    """The one JSON line per request; None when ``[log] requests = "off"``."""
    bus: Bus | None = None
    """Messages to and from the other replicas, when there is Redis."""
    open_streams: int = 0

    def announce_change(self) -> None:
        """Keys, budgets or balances changed here: have the other replicas reload them now."""
        if self.bus is not None:
            self.bus.announce_change()


SERVICES = web.AppKey("services", Services)
