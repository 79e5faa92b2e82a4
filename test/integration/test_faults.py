"""Faults around the service: Redis paused, gone for a long while, or
answering with errors; and storms of signals. What test_redis.py and
test_shutdown.py already prove (a killed connection, the second signal) is
not repeated here; these go further.

Nothing accepted may be lost while the process lives, requests are answered
at once whatever Redis does, and the process ends the way the README says,
with the exit status it says."""

import datetime
import os
import re
import signal
import time

from gracefuld_testlib import Gracefuld, Redis, poll_until


def log_time(event):
    return datetime.datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")


def batch_calls(redis):
    """How many batch scripts (EVAL or EVALSHA) Redis has been sent: run
    (with errors or not), or rejected before they ran. Each handshake of
    gracefuld also sends one EVAL, the probe of its commands, beside one
    CONFIG GET (maxmemory-policy), which nothing else here sends: those are
    left out."""
    stats = redis.cli("INFO", "commandstats")

    def calls(cmd):
        m = re.search(rf"cmdstat_{cmd}:calls=(\d+),.*?rejected_calls=(\d+)",
                      stats)
        return int(m.group(1)) + int(m.group(2)) if m else 0
    return calls("eval") + calls("evalsha") - calls(r"config\|get")


# ---- Redis paused ----------------------------------------------------------

def test_redis_paused_requests_answered_at_once_increments_land_after(
        redis, server):
    g = server(env={"INCR_DELAY_MS": "0", "REDIS_TIMEOUT_MS": "60000"})
    g.wait_event("redis_up")
    redis.cli("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        worst = g.incrs(50)
        assert worst < 0.25, f"an /incr took {worst * 1000:.0f} ms"
        m = g.metrics()
        assert m["gracefuld_increments_pending"] == 50
        assert m["gracefuld_increments_done_total"] == 0
        assert redis.counter() == 0  # a read: not held by a WRITE pause
        # Shutting down now must wait for Redis, not give up on it.
        mark = g.mark()
        g.signal()
        g.wait_event("phase", start=mark, phase="flushing", pending=50)
        assert g.proc.poll() is None
    finally:
        redis.cli("CLIENT", "UNPAUSE")
    assert g.wait(10) == 0
    summary = g.wait_event("exit")
    assert summary["done"] == 50 and summary["retried"] == 0
    assert redis.counter() == 50


def test_redis_paused_past_redis_timeout_reconnects_and_counts_once(
        redis, server):
    """Batches unanswered for REDIS_TIMEOUT_MS: the connection is dropped
    and they are sent again on a new one, with their numbers. Redis, once
    unpaused, executes both the originals and the copies: each batch counts
    once."""
    n = 10
    g = server(env={"INCR_DELAY_MS": "0", "REDIS_TIMEOUT_MS": "300"})
    g.wait_event("redis_up")
    mark = g.mark()
    redis.cli("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        assert g.incrs(n) < 0.25
        timeout = g.wait_event("redis_timeout", start=mark)
        assert 1 <= timeout["in_flight"] <= n
        down = g.wait_event("redis_down", start=mark)
        assert down["reason"].startswith("no reply for")
        g.wait_event("redis_up", start=mark)
        assert g.metrics()["gracefuld_increments_pending"] == n
    finally:
        redis.cli("CLIENT", "UNPAUSE")
    g.signal()
    assert g.wait(20) == 0
    summary = g.wait_event("exit")
    assert summary["accepted"] == n and summary["done"] == n
    assert summary["retried"] >= n
    assert redis.counter() == n


def test_redis_stopped_under_load_counts_each_increment_once(redis, server):
    """The case that used to count 1,638 for 992 200s: 200 requests a
    second, REDIS_TIMEOUT_MS=500, redis-server stopped (SIGSTOP) for 2 s,
    then resumed with the first batches and their copies all in its socket
    buffers. The counter equals the 200s."""
    g = server(env={"INCR_DELAY_MS": "100", "REDIS_TIMEOUT_MS": "500"})
    g.wait_event("redis_up")
    mark = g.mark()
    conn = g.connection()
    ok = 0
    start = time.monotonic()
    stopped = resumed = False
    for i in range(1000):  # 5 s at 200 a second
        due = start + i / 200
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)  # the pace of the load, not a wait
        if not stopped and now - start >= 1.0:
            os.kill(redis.proc.pid, signal.SIGSTOP)
            stopped = True
        if stopped and not resumed and now - start >= 3.0:
            os.kill(redis.proc.pid, signal.SIGCONT)
            resumed = True
        conn.request("GET", "/incr")
        resp = conn.getresponse()
        resp.read()
        ok += resp.status == 200
    conn.close()
    assert resumed
    assert ok == 1000  # memory mode answers at once, whatever Redis does
    g.wait_event("redis_timeout", start=mark)
    g.signal()
    assert g.wait(30) == 0
    summary = g.wait_event("exit")
    assert summary["accepted"] == ok and summary["done"] == ok
    assert summary["retried"] > 0  # copies were sent: the case happened
    assert redis.counter() == ok


def test_script_cache_flushed_mid_run_counts_each_increment_once(
        redis, server):
    """Batches go by their script's SHA-1 once it was sent whole on a
    connection. Redis forgetting its scripts (SCRIPT FLUSH, as after a
    restart) answers NOSCRIPT: the batch is sent whole again, not failed."""
    g = server(env={"INCR_DELAY_MS": "0"})
    g.wait_event("redis_up")
    # Two batches, each counted before the next is asked for (increments
    # that fall due together go as one batch).
    for n, done in ((1, 1), (4, 5)):
        assert g.incrs(n) < 0.25
        poll_until(lambda: g.metrics()[
            "gracefuld_increments_done_total"] >= done, 10, f"{done} counted")
    stats = redis.cli("INFO", "commandstats")
    assert "cmdstat_evalsha:" in stats  # the later batches went by SHA-1
    redis.cli("SCRIPT", "FLUSH")
    assert g.incrs(5) < 0.25
    g.signal()
    assert g.wait(10) == 0
    summary = g.wait_event("exit")
    assert summary["done"] == 10 and summary["failed"] == 0
    assert redis.counter() == 10
    assert re.search(r"errorstat_NOSCRIPT:count=\d+",
                     redis.cli("INFO", "errorstats"))


# ---- Redis gone for long ----------------------------------------------------------

def test_long_outage_backoff_quiet_logs_and_max_pending_503():
    """Redis goes away after start. gracefuld keeps answering /incr until
    MAX_PENDING are pending, then 503 with Retry-After; it reconnects with
    capped backoff (no tighter than the floor, no looser than the cap, so
    an outage of minutes costs one attempt every 1-2 s); it logs the state
    changes (one redis_down, one redis_up) and each attempt only at debug;
    and when Redis is back every accepted increment lands."""
    r = Redis().start()
    g = Gracefuld(redis=r, env={"INCR_DELAY_MS": "0", "MAX_PENDING": "20",
                                "LOG_LEVEL": "debug"}).start()
    try:
        g.wait_event("redis_up")
        mark = g.mark()
        r.stop()
        g.wait_event("redis_down", start=mark)
        assert g.get("/readyz") == 200  # an outage does not unready
        assert g.incrs(20) < 0.25
        status, headers, body = g.request("/incr")
        assert status == 503 and headers["Retry-After"] == "1"
        assert body == b"too many pending increments\n"
        assert g.get("/healthz") == 200
        assert g.metrics()["gracefuld_increments_pending"] == 20

        # Seven failed attempts take the backoff to its cap.
        g.wait_event("redis_retry", start=mark, timeout=30, failures=7)
        r.start()
        up = g.wait_event("redis_up", start=mark, timeout=10)
        events = [e for e in g.events(mark)
                  if e["event"].startswith("redis")]
        attempts = [e for e in events if e["event"] == "redis_retry"]
        assert all(e["level"] == "debug" for e in attempts)
        loud = [e["event"] for e in events if e["level"] != "debug"]
        assert loud == ["redis_down", "redis_up"], loud
        assert up["attempts"] >= 8 and up["down_ms"] >= 3000
        gaps = [(log_time(b) - log_time(a)).total_seconds()
                for a, b in zip(attempts, attempts[1:])]
        assert min(gaps) >= 0.04, gaps  # never back to back
        capped = gaps[4:]  # from the fifth failure on: 1000..2000 ms
        assert capped and all(0.9 <= gap <= 2.5 for gap in capped), gaps

        # Once Redis has replied, /incr is served again.
        deadline = time.monotonic() + 10
        while g.get("/incr") != 200:
            assert time.monotonic() < deadline, "still 503 after recovery"
            time.sleep(0.02)
        g.signal()
        assert g.wait(10) == 0
        summary = g.wait_event("exit")
        assert summary["done"] == summary["accepted"] >= 21
        assert r.counter() == summary["accepted"]
    finally:
        g.stop()
        r.cleanup()


# ---- error replies ---------------------------------------------------------------

def test_wrongtype_reply_is_failed_logged_and_never_retried(redis, server):
    # Spoiled once running (before, the handshake's check finds it).
    g = server(env={"INCR_DELAY_MS": "0"})
    g.wait_event("redis_up")
    redis.cli("LPUSH", "counter", "not a counter")
    assert g.incrs(4) < 0.25
    # One batch or several: the four may fall due together.
    first = g.wait_event("incr_failed")
    assert first["level"] == "error" and "WRONGTYPE" in first["reply"]
    g.wait_event("incr_failed", failed=4)
    m = g.metrics()
    assert m["gracefuld_increments_failed_total"] == 4
    assert m["gracefuld_increments_done_total"] == 0  # not success
    assert m["gracefuld_increments_retried_total"] == 0
    assert m["gracefuld_increments_pending"] == 0  # nothing left to retry
    batches = m["gracefuld_redis_batches_total"]
    assert 1 <= batches <= 4
    assert batch_calls(redis) == batches  # each sent once

    # The link works on once the key is fixed; the failed ones stay failed.
    redis.cli("DEL", "counter")
    assert g.incrs(2) < 0.25
    g.signal()
    assert g.wait(10) == 4  # increments were lost: not a clean exit
    summary = g.wait_event("exit")
    assert summary["failed"] == 4 and summary["done"] == 2
    assert summary["retried"] == 0 and summary["abandoned"] == 0
    assert redis.counter() == 2
    assert batch_calls(redis) <= batches + 2


# ---- signals -------------------------------------------------------------------

STORM = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def storm_until_exit(g):
    """Sends SIGTERM, SIGINT and SIGHUP in turn, without pause, until the
    process has exited; returns its status and how many were sent."""
    sent = 0
    while g.proc.poll() is None:
        try:
            os.kill(g.proc.pid, STORM[sent % len(STORM)])
        except ProcessLookupError:
            break
        sent += 1
    rc = g.proc.wait()
    g.log.join()
    return rc, sent


def test_signal_storm_while_pending_abandons_once_and_exits_3(redis, server):
    """The second signal forces the exit, and the ones after it change
    nothing: exit status 3 from the summary, never death by the signal's
    default action while the process winds down."""
    for _ in range(3):
        g = server(env={"INCR_DELAY_MS": "60000"})
        g.wait_event("redis_up")
        assert g.incrs(5) < 0.25
        rc, sent = storm_until_exit(g)
        assert sent >= 2
        assert rc == 3, f"exit status {rc} after a storm of {sent} signals"
        exits = [e for e in g.events() if e["event"] == "exit"]
        assert len(exits) == 1
        assert exits[0]["reason"] == "second-signal"
        assert exits[0]["abandoned"] == 5
    assert redis.counter() == 0


def test_signal_storm_with_nothing_pending_exits_0(server):
    for _ in range(3):
        g = server()
        g.wait_event("redis_up")
        rc, sent = storm_until_exit(g)
        assert rc == 0, f"exit status {rc} after a storm of {sent} signals"
        exits = [e for e in g.events() if e["event"] == "exit"]
        assert len(exits) == 1 and exits[0]["abandoned"] == 0


def test_sighup_storm_is_ignored(redis, server):
    g = server(env={"INCR_DELAY_MS": "0"})
    g.wait_event("redis_up")
    for _ in range(200):
        g.signal(signal.SIGHUP)
    g.wait_event("signal", signal="SIGHUP", action="ignored")
    assert g.incrs(3) < 0.25
    assert g.get("/readyz") == 200
    assert g.proc.poll() is None
    g.signal(signal.SIGTERM)
    assert g.wait(10) == 0
    assert redis.counter() == 3


def test_signal_dispositions_sigpipe_ignored_others_caught(server):
    """SIGPIPE ignored (a vanished client costs an EPIPE, not the process);
    SIGTERM, SIGINT and SIGHUP handled by the loop."""
    g = server()
    with open(f"/proc/{g.proc.pid}/status") as f:
        status = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    ignored = int(status["SigIgn"], 16)
    caught = int(status["SigCgt"], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        assert caught & (1 << (sig - 1)), sig.name
    g.signal()
    assert g.wait(10) == 0
