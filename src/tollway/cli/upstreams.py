"""``tollway upstreams``: the health of a running gateway's upstreams, read from its /healthz."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

from tollway.cli.common import SubParsers
from tollway.config import Config


def add_parser(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    upstreams = sub.add_parser("upstreams", parents=[common], help="health and rests of a running gateway's upstreams")
    upstreams.add_argument("--url", help="the gateway's base URL (default: from the config's server section)")


def run(args: argparse.Namespace, config: Config) -> int:
    return _upstreams(args.url or _local_url(config))


def _local_url(config: Config) -> str:
    host = config.server.host
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{config.server.port}"


def _upstreams(url: str) -> int:
    """One line per upstream and per key, from the running gateway's /healthz (the state lives there)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=5) as response:
            health = json.load(response)
    except (OSError, ValueError) as exc:
        print(f"tollway: cannot read {url}/healthz: {exc}", file=sys.stderr)
        return 1
    print("upstream            key  state    resting_s  failures  ok      errors  in_flight  last_error")
    for up in health.get("upstreams", []):
        print(f"{up['upstream']:<19} {'*':<4} {up['state']:<8} {up['resting_s']:>9}  {up['failures']:>8}  "
              f"{up['successes']:<7} {up['errors']:<7} {up['in_flight']:>9}  {up['last_error'] or ''}")
        for key in up["keys"]:
            state = "limited" if key["rate_limited"] else ("resting" if key["resting_s"] else "ok")
            print(f"{'':<19} {key['key']:<4} {state:<8} {key['resting_s']:>9}  {key['failures']:>8}  "
                  f"{key['successes']:<7} {key['errors']:<7} {'':>9}  {key['last_error'] or ''}")
    return 0


