"""Faults under a running cluster: a replica killed (SIGKILL) or stopped (SIGTERM) mid-load, Redis stopped and
started again, PostgreSQL stopped and started again. The servers are this machine's own, always started again
(see `tests.cluster.conftest.Services`); the replicas are ``tollway serve`` processes."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import orjson
import redis

from tests.cluster.conftest import ADMIN_TOKEN, Cluster, Replica, Sent, Services, Traffic, run, wait_for
from tests.conftest import Upstream
from tests.limits.conftest import REDIS_URL

# What a row may still be waiting on, past flush_interval, when its replica is killed: the write in flight
# (milliseconds on this machine) and the event loop's lag under the test's load.
WRITE_MARGIN = 0.3


def prefix(request_id: str | None) -> str:
    """The part of a request id that names the process that made it."""
    assert request_id is not None
    return request_id[:16]


def test_a_replica_killed_mid_load_loses_only_its_last_flush_interval_and_doubles_nothing(cluster: Cluster) -> None:
    _, secret = cluster.add_key("load")
    replicas = cluster.start(3)
    victim = replicas[1]
    survivors = [r for r in replicas if r is not victim]
    killed_at = 0.0

    async def load() -> Traffic:
        nonlocal killed_at
        traffic = Traffic()
        started = time.monotonic()

        async def worker(w: int) -> None:  # until 1.5 s after the kill, at most 150 requests each
            for i in range(150):
                if killed_at and time.monotonic() > killed_at + 1.5:
                    return
                stream = i % 3 == 0
                await traffic.send(replicas[(w + i) % 3], secret, "load", stream=stream,
                                   scenario="slow:40" if stream else None)

        async def killer() -> None:
            nonlocal killed_at
            await asyncio.sleep(2.5)
            killed_at = time.monotonic()
            victim.signal(signal.SIGKILL)

        try:
            await asyncio.gather(*(worker(w) for w in range(6)), killer())
        finally:
            await traffic.close()
        assert time.monotonic() - started < 60
        return traffic

    traffic = run(load())
    assert victim.wait(10) == -signal.SIGKILL
    rows = cluster.wait_for_settled(survivors, traffic.sent)
    assert all(len(found) == 1 for found in rows.values()), "a request id with two usage rows"

    on_victim = traffic.by(replica=victim.name)
    before = [s for s in on_victim if s.complete and s.finished < killed_at - cluster.flush_interval - WRITE_MARGIN]
    assert len(before) >= 10, "too little load reached the victim before the kill for the test to mean anything"
    lost = [s.request_id for s in before if s.request_id not in rows]
    assert lost == [], f"{len(lost)} of {len(before)} requests finished before the last flush interval lost"
    # Streams open at the kill were cut: their clients saw the connection drop.
    assert any(s.stream and not s.complete for s in on_victim), "no stream was cut by the kill"

    # The survivors lost nothing and wrote nothing else: one row for each request they answered.
    for replica in survivors:
        answered = {str(s.request_id) for s in traffic.by(replica=replica.name) if s.complete}
        mine = {prefix(s.request_id) for s in traffic.by(replica=replica.name) if s.request_id}
        assert len(mine) == 1
        assert {i for i in rows if prefix(i) in mine} == answered

    # Started again on its port, the killed replica serves at once; its new rows are written as ever.
    cluster.restart(victim)

    async def after() -> Sent:
        traffic = Traffic()
        try:
            return await traffic.send(victim, secret, "load")
        finally:
            await traffic.close()

    again = run(after())
    assert again.status == 200
    assert str(again.request_id) in cluster.wait_for_settled([victim], [again])


def test_sigterm_mid_stream_loses_nothing(cluster: Cluster) -> None:
    # Writes only every 30 s: the rows can only have been written by the shutdown's flush.
    cluster.write_config(flush_interval=30)
    _, secret = cluster.add_key("drain")
    (replica,) = cluster.start(1)

    async def streams() -> Traffic:
        traffic = Traffic()
        try:
            running = [asyncio.create_task(traffic.send(replica, secret, "drain", stream=True, scenario="slow:250"))
                       for _ in range(4)]
            # SIGTERM once all four are streaming (about 1.75 s each).
            while (await traffic.client.get(replica.url + "/healthz")).json()["open_streams"] < 4:
                assert not any(t.done() for t in running), "a stream ended before the signal"
                await asyncio.sleep(0.02)
            replica.signal(signal.SIGTERM)
            await asyncio.gather(*running)
        finally:
            await traffic.close()
        return traffic

    traffic = run(streams())
    assert replica.wait(30) == 0
    assert all(s.status == 200 and s.complete for s in traffic.sent), [s.error for s in traffic.sent]
    rows = cluster.wait_for_rows([str(s.request_id) for s in traffic.sent], timeout=2)
    assert sorted(rows) == sorted(str(s.request_id) for s in traffic.sent)
    assert [(r.status, r.error_type, r.output_tokens) for (r,) in rows.values()] == [(200, None, 7)] * 4


def test_redis_stopped_and_started_again(cluster: Cluster, services: Services, upstream: Upstream) -> None:
    _, limited = cluster.add_key("limited", rpm=10_000)
    _, alone = cluster.add_key("alone", rpm=3)
    _, shared = cluster.add_key("shared", rpm=4)
    first, second = replicas = cluster.start(2)

    def status(replica: Replica, secret: str) -> int:
        r = httpx.post(f"{replica.url}/v1/messages", headers={"x-api-key": secret}, timeout=10,
                       json={"model": "claude-sonnet-4-6", "max_tokens": 16,
                             "messages": [{"role": "user", "content": "hi"}]})
        return r.status_code

    assert [status(r, limited) for r in replicas] == [200, 200]
    with services.redis_down():
        # Served all the same, on each replica's own limits, and each says so.
        assert [status(r, limited) for r in replicas] == [200, 200]
        for replica in replicas:
            assert replica.healthz()["limits"] == {"backend": "redis", "shared": False, "outages": 1}
            assert "rate limits: the shared store is unreachable" in replica.log_text()
        # A key's limit then holds on each replica alone: 3 requests a minute on each, 6 in all.
        statuses = [status(replicas[i % 2], alone) for i in range(8)]
        assert sorted(statuses) == [200] * 6 + [429] * 2
    # Redis back: the next try (after retry_delay) finds it, and limits are shared again.
    deadline = time.monotonic() + 10
    while not all(r.healthz()["limits"]["shared"] for r in replicas):
        assert time.monotonic() < deadline, "limits never shared again:\n" + cluster.logs()
        for replica in replicas:
            status(replica, limited)
        time.sleep(0.2)
    for replica in replicas:
        assert replica.healthz()["limits"] == {"backend": "redis", "shared": True, "outages": 1}
        assert "rate limits: the shared store is back" in replica.log_text()
    statuses = [status(replicas[i % 2], shared) for i in range(8)]
    assert sorted(statuses) == [200] * 4 + [429] * 4

    # Rests are told across replicas again once both listen on Redis once more.
    client = redis.Redis.from_url(REDIS_URL)
    try:
        wait_for(lambda: dict(client.pubsub_numsub(f"{cluster.prefix}rests")).get(
            f"{cluster.prefix}rests".encode(), 0) == 2, "the replicas never listened for rests again")
    finally:
        client.close()
    upstream.fake.force, upstream.fake.force_count = "error:429:error_429_rate_limit", 1  # retry-after: 7
    try:
        assert status(first, limited) == 429

        def rested() -> bool:
            fake = next(u for u in second.healthz()["upstreams"] if u["upstream"] == "fake")
            return bool(fake["keys"][0]["resting_s"] > 0)

        wait_for(rested, "the other replica never heard of the rest", timeout=5)
    finally:
        upstream.fake.reset()
    for replica in replicas:  # the listener said it lost Redis once, not at every try, and that it hears again
        log = replica.log_text()
        assert log.count("messages from other replicas unavailable") == 1, log
        assert "messages from other replicas arrive again" in log


def test_postgresql_stopped_and_started_again(cluster: Cluster, services: Services) -> None:
    _, known = cluster.add_key("known")
    revokee_id, revokee = cluster.add_key("revokee")
    _, paid = cluster.cli_key("paid", "--budget-usd", "1")
    replicas = cluster.start(2)
    unknown = "tw-" + "x" * 43  # well formed, in no database

    async def warm(traffic: Traffic) -> None:
        for replica in replicas:
            for secret, key in ((known, "known"), (revokee, "revokee")):
                assert (await traffic.send(replica, secret, key)).status == 200
            assert (await traffic.send_retrying(replica, paid, "paid")).status == 200

    async def outage(traffic: Traffic) -> list[Sent]:
        refused = []
        for replica in replicas:
            for stream in (False, True, False, True):
                sent = await traffic.send(replica, known, "known", stream=stream)
                assert (sent.status, sent.complete) == (200, True), sent
            assert (await traffic.send(replica, known, "known", endpoint="count_tokens")).status == 200
            assert (await traffic.send_retrying(replica, paid, "paid")).status == 200
            # What needs the database (a key this replica has not seen) is refused at once, as Anthropic
            # refuses when overloaded.
            refused.append(await traffic.send(replica, unknown, "unknown"))
        return refused

    async def scenario() -> tuple[Traffic, list[Sent], list[httpx.Response], list[int]]:
        traffic = Traffic()
        try:
            await warm(traffic)
            with services.postgres_down():  # blocks this loop while it stops and starts: nothing else runs on it
                went_down = time.monotonic()
                refused = await outage(traffic)
                admin = [await traffic.client.get(f"{r.url}/admin/keys",
                                                  headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
                         for r in replicas]
                pending = [r.healthz()["usage_pending"] for r in replicas]
                # Long enough for the key and budget reloads (every 0.5 s) to fail a few times.
                await asyncio.sleep(max(0.0, went_down + 2.0 - time.monotonic()))
                assert all(r.alive() for r in replicas)
        finally:
            await traffic.close()
        return traffic, refused, admin, pending

    traffic, refused, admin, pending = run(scenario())

    for sent in refused:
        assert (sent.status, sent.headers["content-type"]) == (529, "application/json"), sent
        assert sent.finished - sent.started < 6, "a request waited on the database"
        body = orjson.loads(sent.body)
        assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
        assert sent.request_id and body["request_id"] == sent.request_id and "retry-after" in sent.headers
    for r in admin:
        assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error" and r.headers["request-id"]
    assert all(p > 0 for p in pending), pending

    # PostgreSQL back: every row kept in memory is written, once.
    rows = cluster.wait_for_settled(replicas, traffic.sent)
    assert sorted(rows) == sorted(str(s.request_id) for s in traffic.sent)
    assert all(len(found) == 1 for found in rows.values())
    for replica in replicas:
        log = replica.log_text()
        assert "Traceback" not in log, log
        assert "the database is unreachable" in log
        assert "usage written to the database" in log
        assert replica.healthz()["usage_pending"] == 0
    # The reloads live on: a key revoked now is refused by both replicas within moments.
    cluster.cli("keys", "revoke", revokee_id)

    def refused_everywhere() -> bool:
        return all(httpx.post(f"{r.url}/v1/messages", headers={"x-api-key": revokee}, json={}, timeout=10)
                   .status_code == 401 for r in replicas)

    wait_for(refused_everywhere, "a key revoked after the outage is still accepted", timeout=5)
