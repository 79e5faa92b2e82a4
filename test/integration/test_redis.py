"""The Redis link: buffering while Redis is away, reconnecting, and sending
again what a broken connection lost, so that nothing accepted is dropped."""

import threading

from gracefuld_testlib import Gracefuld, Redis


def test_redis_absent_at_start_alive_not_ready_then_ready():
    r = Redis()  # a port, but no server yet
    g = Gracefuld(redis=r, env={"INCR_DELAY_MS": "0"}).start()
    try:
        g.wait_event("redis_down")
        assert g.get("/healthz") == 200
        assert g.get("/readyz") == 503
        for _ in range(5):
            assert g.get("/incr") == 200
        r.start()
        g.wait_event("redis_up")
        assert g.get("/readyz") == 200
        g.signal()
        assert g.wait(10) == 0
        assert r.counter() == 5
    finally:
        g.stop()
        r.cleanup()


def test_redis_outage_after_start_keeps_ready_and_buffers():
    r = Redis().start()
    g = Gracefuld(redis=r, env={"INCR_DELAY_MS": "0"}).start()
    try:
        g.wait_event("redis_up")
        mark = g.mark()
        r.stop()
        g.wait_event("redis_down", start=mark)
        # An outage must not take every replica out of the Service at once.
        assert g.get("/readyz") == 200
        for _ in range(7):
            assert g.get("/incr") == 200
        assert g.metric("gracefuld_increments_pending") == 7
        r.start()
        g.wait_event("redis_up", start=mark)
        g.signal()
        assert g.wait(10) == 0
        assert r.counter() == 7
        assert metric_from_exit(g)["done"] == 7
    finally:
        g.stop()
        r.cleanup()


def metric_from_exit(g):
    return g.wait_event("exit")


def test_incrs_in_flight_on_a_killed_connection_are_sent_again(redis, server):
    """With Redis paused for writes, INCRs sit in flight; killing the
    connection loses them on Redis's side, and gracefuld must send them
    again on the next connection: the count is exact."""
    g = server(env={"INCR_DELAY_MS": "0"})
    g.wait_event("redis_up")
    redis.cli("CLIENT", "PAUSE", "10000", "WRITE")
    for _ in range(10):
        assert g.get("/incr") == 200
    assert g.metric("gracefuld_increments_pending") == 10
    assert g.metric("gracefuld_increments_done_total") == 0
    mark = g.mark()
    redis.cli("CLIENT", "KILL", "TYPE", "normal")
    g.wait_event("redis_down", start=mark)
    redis.cli("CLIENT", "UNPAUSE")
    g.wait_event("redis_up", start=mark)
    g.signal()
    assert g.wait(10) == 0
    summary = g.wait_event("exit")
    assert summary["retried"] == 10 and summary["done"] == 10
    assert redis.counter() == 10


def test_connection_killed_while_increments_flow_loses_none(redis, server):
    g = server(env={"INCR_DELAY_MS": "10"})
    g.wait_event("redis_up")
    n = 3000
    ok = []

    def send():
        conn = g.connection()
        count = 0
        for _ in range(n):
            conn.request("GET", "/incr")
            resp = conn.getresponse()
            resp.read()
            count += resp.status == 200
        conn.close()
        ok.append(count)

    sender = threading.Thread(target=send)
    sender.start()
    kills = 0
    while sender.is_alive() and kills < 20:
        mark = g.mark()
        redis.cli("CLIENT", "KILL", "TYPE", "normal")
        g.wait_event("redis_up", start=mark)
        kills += 1
    sender.join(60)
    assert ok == [n]
    assert kills >= 2, "the connection was not killed while requests flowed"
    g.signal()
    assert g.wait(30) == 0
    summary = g.wait_event("exit")
    assert summary["accepted"] == n and summary["done"] == n
    counter = redis.counter()
    # At least once: an INCR that ran but whose reply was lost is counted
    # again. Never fewer.
    assert n <= counter <= n + summary["retried"]


def test_error_reply_counts_as_failed_not_done(redis, server):
    # Spoiled once running: a counter spoiled before is found by the
    # handshake's check (test_adverse_redis.py) and nothing is accepted.
    g = server(env={"INCR_DELAY_MS": "0"})
    g.wait_event("redis_up")
    redis.cli("SET", "counter", "not a number")
    for _ in range(3):
        assert g.get("/incr") == 200
    g.wait_event("incr_failed")
    g.signal()
    # No retry can fix a value that is not a number: failed, and the exit
    # status says increments were lost.
    assert g.wait(10) == 4
    summary = g.wait_event("exit")
    assert summary["failed"] == 3 and summary["done"] == 0
    assert redis.cli("GET", "counter") == "not a number"


def test_redis_host_name_is_resolved(redis, server):
    g = server(env={"REDIS_ADDR": f"localhost:{redis.port}",
                    "INCR_DELAY_MS": "0"})
    g.wait_event("redis_up", addr=f"localhost:{redis.port}")
    assert g.get("/incr") == 200
    g.signal()
    assert g.wait(10) == 0
    assert redis.counter() == 1


def test_unresolvable_redis_host_is_retried_not_fatal(server):
    g = server(env={"REDIS_ADDR": "no-such-host.invalid:6379"})
    down = g.wait_event("redis_down")
    assert "no-such-host.invalid" in down["reason"]
    assert g.get("/healthz") == 200 and g.get("/readyz") == 503
    g.signal()
    assert g.wait(10) == 0
