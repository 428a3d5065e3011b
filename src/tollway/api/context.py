"""What the handlers share: built once at startup, reached through the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass

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
    open_streams: int = 0


SERVICES = web.AppKey("services", Services)
