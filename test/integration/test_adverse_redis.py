"""Journal mode against a Redis that is not private and well behaved, with
a real redis-server: a stall longer than a lease under two live replicas,
two deployments sharing a Redis and a KEY_PREFIX, and keys of the wrong
type. In each, every 200 is counted once, by a replica of its own
deployment, and no increment is held that could never be counted."""

import os
import signal
import threading
import time

import pytest

from gracefuld_testlib import Gracefuld, Redis, connected, poll_until

SCOPE = "gracefuld:{counter}:"  # the default prefix, scoped to "counter"


@pytest.fixture
def redis():
    with Redis() as r:
        yield r


def journal_mode(redis, **env):
    return connected(redis, {"DURABILITY": "redis", **env})


def incr(g, n):
    return sum(g.get("/incr") == 200 for _ in range(n))


def journal_total(redis, scope=SCOPE):
    total = 0
    for key in redis.cli("KEYS", scope + "journal:*").split():
        total += sum(int(v) for v in redis.cli("HVALS", key).split())
    return total


def test_a_stall_longer_than_a_lease_strands_nothing(redis):
    """Two replicas with the k8s/ settings (REDIS_TIMEOUT_MS=2000, the
    default lease of 3 s) hold increments in their journals; Redis stops
    for 4.5 s, longer than a lease and the timeout, so that both replicas
    drop their connections with commands buffered in Redis, and leases run
    out; the increments fall due after it. While both still live, the
    counter reaches the 200s within INCR_DELAY_MS plus a lease and two
    renewals."""
    env = {"INCR_DELAY_MS": "6000", "REDIS_TIMEOUT_MS": "2000"}
    a = journal_mode(redis, **env)
    b = journal_mode(redis, **env)
    try:
        began = time.monotonic()
        ok = incr(a, 20) + incr(b, 20)
        assert ok == 40
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            a.wait_event("redis_down", timeout=10)
            b.wait_event("redis_down", timeout=10)
            time.sleep(4.5 - 2.0)  # the stall itself, past both timeouts
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        assert redis.counter() == 0  # nothing fell due yet
        bound = 6 + 3 + 2 + 1  # and a second for this machine
        poll_until(lambda: redis.counter() >= ok,
                 began + bound - time.monotonic(),
                 f"the counter to reach {ok} (it is {redis.counter()})")
        print(f"\ncounted {ok} {time.monotonic() - began:.1f} s after the "
              "first request")
        assert a.proc.poll() is None and b.proc.poll() is None
        assert journal_total(redis) == 0
        for g in (a, b):
            g.signal()
        assert a.wait(20) == 0 and b.wait(20) == 0
        assert redis.counter() == ok
    finally:
        a.stop()
        b.stop()


def test_two_deployments_on_one_prefix_keep_to_their_own(redis):
    """Deployments X and Y count into different counters on one Redis with
    the default KEY_PREFIX. X's replica dies with 15 increments in its
    journal while only Y runs: Y never adopts them, however many leases
    pass; X's next replica does, into X's counter."""
    x = journal_mode(redis, COUNTER_KEY="x", INCR_DELAY_MS="2000",
                     LEASE_MS="300")
    y = journal_mode(redis, COUNTER_KEY="y", INCR_DELAY_MS="100",
                     LEASE_MS="300")
    try:
        def registered(scope):
            poll_until(lambda: redis.cli("ZRANGE", scope + "replicas", "0", "-1"),
                     5, f"a replica in {scope}replicas")
            return redis.cli("ZRANGE", scope + "replicas", "0", "-1")
        x_id, y_id = registered("gracefuld:{x}:"), registered("gracefuld:{y}:")
        assert incr(x, 15) == 15
        x.signal(signal.SIGKILL)
        x.wait(10)
        assert journal_total(redis, "gracefuld:{x}:") == 15

        def lease_end(scope, rid):
            score = redis.cli("ZSCORE", scope + "replicas", rid)
            return float(score) if score else None

        def redis_ms():
            s, us = redis.cli("TIME").split()
            return int(s) * 1000 + int(us) // 1000
        # X's lease runs out (by Redis's clock), then Y renews its own
        # twice more: each renewal would have adopted X's journal.
        poll_until(lambda: lease_end("gracefuld:{x}:", x_id) < redis_ms(), 5,
                 "X's lease to run out")
        for _ in range(2):
            before = lease_end("gracefuld:{y}:", y_id)
            poll_until(lambda: lease_end("gracefuld:{y}:", y_id) != before, 5,
                     "Y to renew its lease")
        assert incr(y, 10) == 10
        poll_until(lambda: redis.counter("y") == 10, 5, "Y's own 10")
        assert journal_total(redis, "gracefuld:{x}:") == 15
        assert redis.counter("x") == 0
        assert not [e for e in y.events() if e["event"] == "journal_adopted"]
        # X's next replica adopts them, and they count where they belong.
        x2 = journal_mode(redis, COUNTER_KEY="x", INCR_DELAY_MS="2000",
                          LEASE_MS="300")
        try:
            x2.wait_event("journal_adopted", increments=15)
            poll_until(lambda: redis.counter("x") == 15, 10, "X's 15")
            x2.signal()
            assert x2.wait(20) == 0
        finally:
            x2.stop()
        y.signal()
        assert y.wait(20) == 0
        assert redis.counter("x") == 15 and redis.counter("y") == 10
    finally:
        x.stop()
        y.stop()


@pytest.mark.parametrize("key,spoil", [
    ("counter", ("RPUSH", "counter", "x")),
    ("counter", ("SET", "counter", "not a number")),
    (SCOPE + "replicas", ("SET", SCOPE + "replicas", "x")),
])
def test_a_key_of_the_wrong_type_holds_no_increment(redis, key, spoil):
    """A counter that cannot be incremented, or a registry of another type:
    /incr answers 503 and holds nothing (no 200 that is not counted, no 503
    that is counted later, no journal growth); once the key is fixed, 200s
    count again."""
    g = journal_mode(redis, INCR_DELAY_MS="100", LEASE_MS="300")
    try:
        redis.cli(*spoil)
        codes = [g.get("/incr") for _ in range(10)]
        assert codes == [503] * 10
        assert journal_total(redis) == 0
        assert g.wait_event("journal_write_refused")["reply"].startswith(
            "WRONGTYPE " + key)
        redis.cli("DEL", key)
        poll_until(lambda: g.get("/incr") == 200, 10, "a 200 once fixed")
        assert incr(g, 4) == 4
        g.signal()
        assert g.wait(20) == 0
        assert redis.counter() == 5
    finally:
        g.stop()


@pytest.mark.parametrize("durability", ["memory", "redis"])
def test_a_counter_that_cannot_count_keeps_the_replica_unready(redis,
                                                               durability):
    """A counter of the wrong type before gracefuld starts: every
    connection's check finds it, /readyz stays 503 and one log line names
    the key; journal mode answers /incr 503 (memory mode holds them, as for
    a Redis that is down). Once the key is fixed, the replica becomes ready
    and counts every 200, once."""
    redis.cli("RPUSH", "counter", "not a counter")
    g = Gracefuld(redis=redis, env={"DURABILITY": durability,
                                    "INCR_DELAY_MS": "0"}).start()
    try:
        e = g.wait_event("redis_keys_unusable")
        assert e["reply"].startswith("WRONGTYPE counter") and \
            e["level"] == "error"
        assert g.get("/readyz") == 503
        codes = [g.get("/incr") for _ in range(5)]
        assert codes == [503 if durability == "redis" else 200] * 5
        redis.cli("DEL", "counter")
        g.wait_event("redis_up", timeout=10)
        g.wait_event("redis_keys_usable")
        assert g.get("/readyz") == 200
        ok = codes.count(200) + incr(g, 5)
        assert [e["event"] for e in g.events()].count(
            "redis_keys_unusable") == 1
        g.signal()
        assert g.wait(20) == 0
        assert redis.counter() == ok
    finally:
        g.stop()


FILL = ("for i = 1, 200 do redis.call('SET', ARGV[1] .. i, "
        "string.rep('x', 1000), 'EX', 3600) end")


@pytest.mark.parametrize("durability", ["memory", "redis"])
@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-random"])
def test_volatile_eviction_takes_no_gracefuld_key(redis, durability, policy):
    """Another tenant's keys with a TTL press on maxmemory under a volatile-*
    policy while gracefuld's connections are killed every 0.3 s (so that
    batches and writes are sent again, which only the fences keep from
    counting twice): Redis evicts, but none of gracefuld's keys, which carry
    no TTL; the counter equals the 200s."""
    used = int(redis.cli("INFO", "memory").split("used_memory:")[1]
               .split()[0])
    redis.cli("CONFIG", "SET", "maxmemory", str(used + 2_000_000))
    redis.cli("CONFIG", "SET", "maxmemory-policy", policy)
    g = Gracefuld(redis=redis, env={
        "DURABILITY": durability, "INCR_DELAY_MS": "100", "LEASE_MS": "600",
        "REDIS_TIMEOUT_MS": "500"}).start()
    g.wait_event("redis_up")
    stop = threading.Event()

    def press():
        n = 0
        while not stop.is_set():
            redis.cli("EVAL", FILL, "0", f"tenant:{n}:")
            redis.cli("CLIENT", "KILL", "TYPE", "normal")
            n += 1
            stop.wait(0.3)
    presser = threading.Thread(target=press)
    presser.start()
    try:
        ok = 0
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            ok += g.get("/incr") == 200
    finally:
        stop.set()
        presser.join()
    try:
        evicted = int(redis.cli("INFO", "stats").split("evicted_keys:")[1]
                      .split()[0])
        assert evicted > 0, "nothing pressed on maxmemory"
        ours = redis.cli("KEYS", "gracefuld:*").split()
        assert SCOPE + "fences" in ours
        for key in ours:  # no TTL (-1), or gone since (-2: an empty journal)
            assert int(redis.cli("PTTL", key)) < 0, key
        g.signal()
        assert g.wait(30) == 0
        assert ok > 0 and redis.counter() == ok
        print(f"\n{policy}, {durability}: {ok} x 200, {evicted} evicted")
    finally:
        g.stop()


def test_an_allkeys_eviction_policy_is_named_and_refused_on_request(redis):
    """Under allkeys-* Redis may evict the counter and the journals: one
    log line names the policy and the risk; REDIS_ALLKEYS_EVICTION=refuse
    keeps the replica unready on such a Redis until the policy changes."""
    quiet = Gracefuld(redis=redis).start()
    try:
        quiet.wait_event("redis_up")
        assert quiet.get("/readyz") == 200
        assert not [e for e in quiet.events()
                    if e["event"] == "redis_eviction_policy"]
    finally:
        quiet.stop()
    redis.cli("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    warned = Gracefuld(redis=redis).start()
    refusing = Gracefuld(redis=redis, env={
        "REDIS_ALLKEYS_EVICTION": "refuse"}).start()
    try:
        e = warned.wait_event("redis_eviction_policy")
        assert e["maxmemory_policy"] == "allkeys-lru" and e["refused"] == "no"
        assert "evict the counter" in e["risk"] and e["level"] == "warn"
        warned.wait_event("redis_up")
        assert warned.get("/readyz") == 200
        e = refusing.wait_event("redis_eviction_policy")
        assert e["refused"] == "yes"
        down = refusing.wait_event("redis_down")
        assert "allkeys" in down["reason"]
        assert refusing.get("/readyz") == 503
        redis.cli("CONFIG", "SET", "maxmemory-policy", "volatile-lru")
        refusing.wait_event("redis_up", timeout=10)
        assert refusing.get("/readyz") == 200
        # Said once, not at every reconnect in between.
        assert len([e for e in refusing.events()
                    if e["event"] == "redis_eviction_policy"]) == 1
    finally:
        warned.stop()
        refusing.stop()


def test_checks_a_managed_redis_does_not_allow_are_said_skipped():
    """INFO and CONFIG renamed away, as managed offerings do: one line says
    each check was skipped, and the replica counts as before."""
    with Redis(args=["--rename-command", "CONFIG", "",
                     "--rename-command", "INFO", ""]) as redis:
        g = Gracefuld(redis=redis, env={"INCR_DELAY_MS": "0"}).start()
        try:
            g.wait_event("redis_up")
            skipped = {e["check"] for e in g.events()
                       if e["event"] == "redis_check_skipped"}
            assert skipped == {"version", "maxmemory-policy"}
            assert g.get("/incr") == 200
            g.signal()
            assert g.wait(20) == 0
            assert redis.counter() == 1
        finally:
            g.stop()
