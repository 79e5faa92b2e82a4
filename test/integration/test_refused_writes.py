"""A Redis that refuses writes for a while, against a real redis-server:
min-replicas-to-write with no replica (NOREPLICAS) and a failed snapshot
(MISCONF) refuse a script's first write, so nothing changed; gracefuld
retries them as it retries OOM, and once Redis takes writes again the
counter equals the 200s, nothing failed, exit 0."""

import shutil
import time

import pytest

from gracefuld_testlib import Gracefuld, Redis, poll_until


@pytest.fixture
def redis():
    with Redis() as r:
        yield r


def incr(g, n):
    return sum(g.get("/incr") == 200 for _ in range(n))


def refuse_writes(redis, how):
    """Makes Redis refuse writes; returns a function that lifts it."""
    if how == "noreplicas":
        redis.cli("CONFIG", "SET", "min-replicas-max-lag", "10")
        redis.cli("CONFIG", "SET", "min-replicas-to-write", "1")
        return lambda: redis.cli("CONFIG", "SET", "min-replicas-to-write", "0")
    # A snapshot that cannot be written, its folder gone: Redis refuses
    # writes for it where snapshots are configured.
    redis.cli("CONFIG", "SET", "save", "3600 1")
    redis.cli("CONFIG", "SET", "stop-writes-on-bgsave-error", "yes")
    shutil.rmtree(redis.dir)
    redis.cli("BGSAVE")
    poll_until(lambda: "rdb_last_bgsave_status:err" in redis.cli(
        "INFO", "persistence"), 10, "the snapshot to fail")
    return lambda: redis.cli("CONFIG", "SET", "stop-writes-on-bgsave-error",
                             "no")


@pytest.mark.parametrize("durability", ["memory", "redis"])
@pytest.mark.parametrize("how", ["noreplicas", "misconf"])
def test_writes_refused_for_a_while_are_retried_not_failed(redis, durability,
                                                           how):
    g = Gracefuld(redis=redis, env={
        "DURABILITY": durability, "INCR_DELAY_MS": "100", "LEASE_MS": "600",
        "REDIS_TIMEOUT_MS": "500"}).start()
    try:
        g.wait_event("redis_up")
        ok = incr(g, 10)
        assert ok == 10
        poll_until(lambda: redis.counter() == ok, 10, "the first increments")
        lift = refuse_writes(redis, how)
        mark = g.mark()
        during = incr(g, 10)
        if durability == "memory":
            assert during == 10  # answered at once, counted later
            # Its batch was refused, and is retried, not failed.
            g.wait_event("redis_retiring", timeout=10, start=mark)
        else:
            assert during == 0  # nothing recorded: 503, never a lost 200
        ok += during
        time.sleep(2.0)  # refused for 2 s: the scenario, not a wait
        lift()
        ok += incr(g, 10)
        poll_until(lambda: redis.counter() == ok, 15, "every 200 counted")
        g.signal()
        assert g.wait(30) == 0
        summary = g.wait_event("exit")
        assert summary["failed"] == 0
        assert summary["done"] == summary["accepted"] == ok
    finally:
        g.stop()
    assert redis.counter() == ok
