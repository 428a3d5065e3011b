"""Three replicas (``tollway serve`` processes) on one PostgreSQL database and one Redis, under a load spread
over all of them: the limits hold across the cluster, a prepaid balance does not go below zero, and the ledger
has exactly one usage row for each request."""

from __future__ import annotations

import asyncio
import time

from tests.cluster.conftest import Cluster, Replica, Traffic, run

RPM = 10
CONCURRENCY = 2
BUDGET_USD = "0.05"  # about 90 requests' worth at their cost, while one request reserves half of it


def test_three_replicas_hold_global_limits_and_write_one_row_per_request(cluster: Cluster) -> None:
    free_id, free = cluster.add_key("free")
    rpm_id, rpm = cluster.add_key("rpm", rpm=RPM)
    conc_id, conc = cluster.add_key("conc", max_concurrency=CONCURRENCY)
    paid_id, paid = cluster.cli_key("paid", "--budget-usd", BUDGET_USD)
    replicas = cluster.start(3)

    async def load() -> tuple[Traffic, float]:
        traffic = Traffic()
        started = time.monotonic()

        async def free_load(worker: int) -> None:  # mixed streams and bodies, round robin over the replicas
            for i in range(12):
                replica = replicas[(worker + i) % 3]
                await traffic.send(replica, free, "free", stream=i % 2 == 0)
                if i % 4 == 0:
                    await traffic.send(replica, free, "free", endpoint="count_tokens")

        async def paid_load(replica: Replica) -> None:  # 40 one after the other on each replica
            for _ in range(40):
                await traffic.send_retrying(replica, paid, "paid")

        async def concurrent_streams() -> None:  # six slow streams at once, two on each replica
            await asyncio.gather(*(traffic.send(replicas[i % 3], conc, "conc", stream=True, scenario="slow:300")
                                   for i in range(6)))

        try:
            await asyncio.gather(
                *(free_load(w) for w in range(6)),
                *(traffic.send(replicas[i % 3], rpm, "rpm") for i in range(3 * RPM)),
                *(paid_load(r) for r in replicas),
                concurrent_streams())
        finally:
            await traffic.close()
        return traffic, time.monotonic() - started

    traffic, elapsed = run(load())

    # Every request was answered in full: no replica failed a connection.
    assert [s for s in traffic.sent if not s.complete] == []
    free_sent = traffic.by(key="free")
    assert {s.status for s in free_sent} == {200} and {s.replica for s in free_sent} == {r.name for r in replicas}

    # Requests per minute across the cluster, not per replica: the bucket starts full with RPM and regains one
    # request every 60 / RPM seconds.
    ok = [s for s in traffic.by(key="rpm") if s.status == 200]
    assert RPM <= len(ok) <= RPM + int(elapsed * RPM / 60), (len(ok), elapsed)
    assert {s.status for s in traffic.by(key="rpm")} == {200, 429}

    # Concurrency across the cluster: two streams at once in all, the four others refused while they ran.
    streams = traffic.by(key="conc")
    assert sorted(s.status or 0 for s in streams) == [200] * CONCURRENCY + [429] * (6 - CONCURRENCY)
    assert all(b"event: message_stop" in s.body for s in streams if s.status == 200)

    # The prepaid key: served while its balance lasted, refused with billing_error after.
    paid_statuses = {s.status for s in traffic.by(key="paid")}
    assert 200 in paid_statuses and paid_statuses <= {200, 402, 529}

    rows = cluster.wait_for_settled(replicas, traffic.sent)

    # Exactly one usage row per request, with the status its client saw and its key.
    keys = {"free": free_id, "rpm": rpm_id, "conc": conc_id, "paid": paid_id}
    ids = [s.request_id for s in traffic.sent]
    assert None not in ids and len(set(ids)) == len(ids)
    assert sorted(rows) == sorted(str(i) for i in ids), "usage rows missing or extra"
    for s in traffic.sent:
        (row,) = rows[str(s.request_id)]
        assert (row.status, row.key_id) == (s.status, keys[s.key]), s

    # The prepaid balance, as the ledger in PostgreSQL has it: not below zero, and equal to the top-up less
    # the cost of every request the key made.
    balance = cluster.balances()[paid_id]
    spent = sum(row.cost_nanousd or 0 for (row,) in rows.values() if row.key_id == paid_id)
    assert balance == 50_000_000 - spent
    assert balance >= 0, f"the balance went to {balance} nano-USD: spent on each replica, not once"
    assert all(r.healthz()["balances"]["backend"] == "redis" for r in replicas)
    # Each request it was served holds one reserve and one closing entry, and nothing is left open.
    entries = [e for e in cluster.ledger() if e.owner == paid_id and e.kind != "topup"]
    served = sorted(str(s.request_id) for s in traffic.by(key="paid") if s.status == 200)
    assert sorted(e.request_id or "" for e in entries if e.kind == "reserve") == served
    assert sorted(e.request_id or "" for e in entries if e.kind != "reserve") == served
    assert cluster.open_reserves() == []

    for replica in replicas:
        health = replica.healthz()
        assert health["limits"] == {"backend": "redis", "shared": True, "outages": 0}
        assert health["usage_pending"] == 0
