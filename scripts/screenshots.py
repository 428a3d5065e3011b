"""Screenshots of the dashboard for the README: docs/screenshots/*.png.

Starts a real ``tollway serve`` on a fresh SQLite database holding sample data (accounts, keys with budgets and
limits, 30 days of usage rows over three upstreams), sends it a few live requests through the built-in mock
upstream (and a dead upstream, so one shows resting), then logs in with Debian's Chromium and photographs each
page. Run from the repository: ``.venv/bin/python scripts/screenshots.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anthropic
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser.chromium import browser, problem  # noqa: E402
from tollway.accounting.keys import new_account, new_key  # noqa: E402
from tollway.store import Budget, UsageRecord, open_store  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
TOKEN = "screenshots-admin-token-0123456789"
USD = 1_000_000_000
MODELS = {  # name -> (share of traffic, $ per million input, output, upstream choices)
    "claude-sonnet-4-6": (0.55, 3, 15, ["anthropic", "anthropic", "anthropic", "anthropic-eu"]),
    "claude-haiku-4-5": (0.3, 1, 5, ["anthropic"]),
    "claude-opus-4-6": (0.1, 5, 25, ["anthropic", "anthropic-eu"]),
    "deepseek-chat": (0.05, 0.27, 1.1, ["deepseek"]),
}
CONFIG = """
[server]
host = "127.0.0.1"
port = {port}
[storage]
url = "sqlite:///{db}"
flush_interval = 0.2
[admin]
token = "{token}"
[[upstreams]]
name = "anthropic"
kind = "mock"
[[upstreams]]
name = "anthropic-eu"
kind = "anthropic"
base_url = "http://127.0.0.1:9"
api_keys = ["sk-eu-1", "sk-eu-2"]
timeout = {{ connect = 1 }}
[[upstreams]]
name = "deepseek"
kind = "mock"
[[models]]
name = "claude-sonnet-4-6"
targets = [{{ upstream = "anthropic", weight = 3 }}, {{ upstream = "anthropic-eu", weight = 1 }}]
[[models]]
name = "claude-haiku-4-5"
targets = [{{ upstream = "anthropic" }}]
[[models]]
name = "claude-opus-4-6"
targets = [{{ upstream = "anthropic-eu" }}, {{ upstream = "anthropic", priority = 2 }}]
[[models]]
name = "deepseek-chat"
targets = [{{ upstream = "deepseek", model = "deepseek-chat" }}]
"""


async def seed(url: str) -> str:
    """Accounts, keys and usage rows; the secret of the key the live requests use."""
    store = open_store(url)
    await store.migrate()
    now = datetime.now(UTC)
    rng = random.Random(7)
    accounts = {}
    for name, budget, topup in (("acme", Budget(True, 10 * USD, "day"), 50), ("globex", Budget(True), 200),
                                ("research-lab", Budget(), 0)):
        account = dataclasses.replace(new_account(name, now - timedelta(days=40)), budget=budget)
        await store.insert_account(account)
        if topup:
            await store.topup(account.id, topup * USD, "opening balance")
        accounts[name] = account
    keys = []
    secret = ""
    for name, owner, limits, budget in (
            ("acme-ci", "acme", {"rpm": 60, "otpm": 20_000}, Budget()),
            ("acme-prod", "acme", {"rpm": 600, "max_concurrency": 20}, Budget(False, 5 * USD, "day")),
            ("globex-app", "globex", {}, Budget(True)),
            ("claude-code-alice", "research-lab", {"rpm": 50, "itpm": 30_000, "otpm": 8_000}, Budget()),
            ("notebook-bob", "research-lab", {}, Budget(False, 40 * USD, "month")),
            ("old-intern", "research-lab", {}, Budget())):
        record, key_secret = new_key(name, None)
        record = dataclasses.replace(record, account_id=accounts[owner].id, budget=budget,
                                     created_at=now - timedelta(days=35), rpm=limits.get("rpm"),
                                     itpm=limits.get("itpm"), otpm=limits.get("otpm"),
                                     max_concurrency=limits.get("max_concurrency"))
        await store.insert_key(record)
        if name == "globex-app":
            await store.topup(record.id, 25 * USD)
        if name == "old-intern":
            await store.revoke_key(record.id)
        if name == "claude-code-alice":
            secret = key_secret
        keys.append(record)
    weights = [8, 5, 3, 6, 2, 1]
    rows = []
    start = now - timedelta(days=30)
    for i in range(4300):
        # More traffic in working hours and on later days: a gateway being adopted; the last 100 in the last hour.
        at = start + timedelta(seconds=rng.random() * 30 * 86400) if i < 4200 else now - timedelta(
            seconds=rng.random() * 3500)
        if i < 4200 and rng.random() > (0.35 + 0.65 * (at - start).days / 30) * (1.0 if 7 <= at.hour <= 19 else 0.4):
            continue
        key = rng.choices(keys, weights)[0]
        model = rng.choices(list(MODELS), [m[0] for m in MODELS.values()])[0]
        _, price_in, price_out, upstreams = MODELS[model]
        upstream = rng.choice(upstreams)
        inp, out = int(rng.lognormvariate(7.5, 1.0)), int(rng.lognormvariate(5.5, 0.9))
        status, error, tries = 200, None, None
        roll = rng.random()
        if roll < 0.015:
            status, error, out = 429, "rate_limit_error", 0
        elif roll < 0.025:
            status, error, out = 529, "overloaded_error", 0
        elif upstream == "anthropic-eu" and roll < 0.08:
            tries = json.dumps([{"upstream": "anthropic-eu", "key": 0, "status": 529, "error": "overloaded_error",
                                 "ms": 210.0}, {"upstream": "anthropic", "key": 0, "status": 200, "error": None,
                                                "ms": 900.0}])
            upstream = "anthropic"
        latency = rng.lognormvariate(7.0 if upstream != "anthropic-eu" else 7.3, 0.5)
        cost = (inp * price_in + out * price_out) * 1000 if status == 200 else 0
        rows.append(UsageRecord(
            request_id=f"req_sample{i:014x}", created_at=at, key_id=key.id, endpoint="messages", model=model,
            upstream=upstream, upstream_model=model, stream=rng.random() < 0.7, status=status, error_type=error,
            input_tokens=inp if status == 200 else 0, output_tokens=out, latency_ms=latency,
            ttfb_ms=latency * rng.uniform(0.1, 0.4), tries=tries, cost_nanousd=int(cost)))
    rows.sort(key=lambda r: r.created_at)
    await store.insert_usage(rows)
    await store.close()
    return secret


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    why = problem()
    if why is not None:
        print(f"screenshots: {why}", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "tollway.db"
        secret = asyncio.run(seed(f"sqlite:///{db}"))
        port = free_port()
        config = Path(tmp) / "tollway.toml"
        config.write_text(CONFIG.format(port=port, db=db, token=TOKEN))
        env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "TOLLWAY_CONFIG")}
        proc = subprocess.Popen([sys.executable, "-m", "tollway", "serve", "--config", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            client = anthropic.Anthropic(base_url=url, api_key=secret, max_retries=0)

            def ask(*models: str) -> None:
                for model in models:
                    client.messages.create(model=model, max_tokens=64,
                                           messages=[{"role": "user", "content": "Summarise the release notes."}])

            ask("claude-sonnet-4-6", "claude-haiku-4-5", "deepseek-chat")
            shoot(url, ask)
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


def shoot(url: str, ask: Callable[..., None]) -> None:
    with browser((1360, 860)) as context:
        page = context.new_page()
        page.goto(url + "/dashboard/")
        page.screenshot(path=OUT / "login.png")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("svg.chart")
        page.screenshot(path=OUT / "overview.png", full_page=True)
        page.goto(url + "/dashboard/?range=30d")
        page.screenshot(path=OUT / "overview-30d.png", full_page=True)
        page.goto(url + "/dashboard/keys")
        page.screenshot(path=OUT / "keys.png", full_page=True)
        page.fill("#create-key input[name=name]", "mobile-app")
        page.select_option("#create-key select[name=account]", label="globex")
        page.fill("#create-key input[name=rpm]", "120")
        page.click("#create-key button[type=submit]")
        page.wait_for_selector("#secret")
        page.screenshot(path=OUT / "key-created.png", full_page=True)
        # Opus goes to anthropic-eu first, which is down: it fails over, and after three failures in a row rests.
        for _ in range(12):
            ask("claude-opus-4-6")
            time.sleep(0.25)
        page.goto(url + "/dashboard/upstreams")
        page.screenshot(path=OUT / "upstreams.png", full_page=True)
        page.goto(url + "/dashboard/requests")
        page.set_viewport_size({"width": 1440, "height": 1100})
        page.screenshot(path=OUT / "requests.png")


if __name__ == "__main__":
    sys.exit(main())
