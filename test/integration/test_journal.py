"""DURABILITY=redis, the journal mode, against a real redis-server: a 200
only once Redis holds the increment, 503 when it cannot, pipelined answers
in order, a SIGKILLed replica's journal adopted by another, a shutdown cut
short handed over, and nothing left behind in Redis but the fences."""

import os
import signal
import socket
import time

import pytest

from gracefuld_testlib import (Gracefuld, Redis, parse_responses,
                               read_http_responses, read_to_end)

INCR = b"GET /incr HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture
def redis():
    with Redis() as r:
        yield r


def journal_mode(redis, **env):
    settings = {"DURABILITY": "redis", "INCR_DELAY_MS": "1000",
                "LEASE_MS": "600"}
    settings.update(env)
    return Gracefuld(redis=redis, env=settings).start()


def journal_total(redis):
    """Increments every journal in Redis holds."""
    total = 0
    pattern = "gracefuld:{counter}:journal:*"
    for key in filter(None, redis.cli("--scan", "--pattern",
                                      pattern).split("\n")):
        values = redis.cli("HVALS", key).split("\n")
        total += sum(int(v) for v in values if v)
    return total


def keys(redis):
    return sorted(filter(None, redis.cli("KEYS", "*").split("\n")))


def test_a_200_means_the_journal_holds_it(redis):
    g = journal_mode(redis, INCR_DELAY_MS="60000")
    try:
        g.wait_event("redis_up")
        for i in range(1, 6):
            assert g.get("/incr") == 200
            # Answered: Redis has it already, in this replica's journal.
            assert journal_total(redis) == i
        assert redis.counter() == 0  # not due yet
        m = g.metrics()
        assert m["gracefuld_journal_writes_total"] == 5
        assert m["gracefuld_journal_written_increments_total"] == 5
        assert m["gracefuld_increments_pending"] == 5
        assert g.get("/readyz") == 200
    finally:
        g.stop()


def commandstats(redis):
    """Calls per command since the last CONFIG RESETSTAT."""
    calls = {}
    for line in redis.cli("INFO", "commandstats").split("\n"):
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            calls[name] = int(rest.split(",")[0].split("=")[1])
    return calls


def test_writes_note_the_fences_use_once_a_second_not_each_time(redis):
    """A fence unused for a day is forgotten, so its use is noted; one
    journal write a second notes it (a ZADD), not every write: two commands
    fewer for Redis on all the others."""
    g = journal_mode(redis, INCR_DELAY_MS="60000", LEASE_MS="60000")
    uses = "gracefuld:{counter}:fence_uses"

    def noted():
        return float(redis.cli("ZRANGE", uses, "0", "-1",
                               "WITHSCORES").split("\n")[1])
    try:
        g.wait_event("redis_up")
        assert g.get("/incr") == 200
        first = noted()
        redis.cli("CONFIG", "RESETSTAT")
        t0 = time.monotonic()
        writes = 0
        while writes < 50 or noted() == first:
            assert g.get("/incr") == 200
            writes += 1
            assert time.monotonic() - t0 < 20, "the use was noted again"
        elapsed = time.monotonic() - t0
        calls = commandstats(redis)
        scripts = calls.get("eval", 0) + calls.get("evalsha", 0)
        assert scripts >= writes
        # Each script takes its lease with one ZADD; noting the use is one
        # more, once a second.
        notes = calls["zadd"] - scripts
        assert 1 <= notes <= 2 + elapsed, (notes, writes, elapsed)
    finally:
        g.stop()


def test_due_increments_move_to_the_counter_and_the_journal_goes(redis):
    g = journal_mode(redis, INCR_DELAY_MS="200")
    try:
        g.wait_event("redis_up")
        for _ in range(7):
            assert g.get("/incr") == 200
        g.signal()
        assert g.wait(15) == 0
        summary = g.wait_event("exit")
        assert summary["accepted"] == summary["done"] == 7
        assert summary["handed_over"] == 0
    finally:
        g.stop()
    assert redis.counter() == 7
    # The journal, the lease and the registry went with the replica; its
    # fence stays (no TTL) until unused for a day.
    assert keys(redis) == ["counter", "gracefuld:{counter}:fence_uses",
                           "gracefuld:{counter}:fences"]
    assert redis.cli("PTTL", "gracefuld:{counter}:fences") == "-1"


def test_pipelined_requests_are_answered_in_order(redis):
    g = journal_mode(redis, INCR_DELAY_MS="60000")
    try:
        g.wait_event("redis_up")
        s = socket.create_connection(("127.0.0.1", g.port))
        s.sendall(INCR + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + INCR
                  + INCR + b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
        got = read_http_responses(s, 5)
        s.close()
        assert [r[0] for r in got] == [200, 200, 200, 200, 404]
        assert [r[2] for r in got][:4] == [b"ok\n"] * 4
        assert journal_total(redis) == 3
    finally:
        g.stop()


def unread_bytes(server_port, client_port):
    """Bytes the kernel holds for the server's end of a connection that
    the server has not read yet (rx_queue in /proc/net/tcp)."""
    want = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                return int(fields[4].split(":")[1], 16)
    raise AssertionError("the connection is not in /proc/net/tcp")


def test_a_client_waiting_for_its_200_is_read_ahead_in_order(redis):
    """While a 200 waits for Redis, what the client sends next is read
    (not left in the kernel), and answered in order once the 200 is out,
    a buffer's worth and more, then the client's FIN."""
    g = journal_mode(redis, INCR_DELAY_MS="60000", REDIS_TIMEOUT_MS="30000")
    s = None
    try:
        g.wait_event("redis_up")
        os.kill(redis.proc.pid, signal.SIGSTOP)
        s = socket.create_connection(("127.0.0.1", g.port))
        s.sendall(INCR)
        deadline = time.monotonic() + 10
        while g.metric("gracefuld_journal_writes_total") < 1:
            assert time.monotonic() < deadline, "the write was never sent"
            time.sleep(0.01)
        healthz = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        first = (INCR + healthz) * 20  # well inside one read buffer
        s.sendall(first)
        port = s.getsockname()[1]
        while unread_bytes(g.port, port) > 0:
            assert time.monotonic() < deadline, \
                "a held connection left what followed unread"
            time.sleep(0.01)
        assert g.metric("gracefuld_journal_writes_total") == 1
        # More than the buffer holds: reading stops, and goes on later.
        s.sendall((INCR + healthz) * 100)
        s.shutdown(socket.SHUT_WR)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    try:
        data, end = read_to_end(s, 30)
        got = parse_responses(data)
        assert end == "eof"
        assert len(got) == 1 + 2 * 120
        assert all(r[0] == 200 and r[2] == b"ok\n" for r in got)
        assert journal_total(redis) == 121
    finally:
        s.close()
        g.stop()


def test_no_redis_no_200(redis):
    g = journal_mode(redis)
    try:
        g.wait_event("redis_up")
        redis.stop()
        g.wait_event("redis_down")
        status, headers, body = g.request("/incr")
        assert status == 503
        assert headers.get("Retry-After") == "1"
        assert b"not recorded" in body
        m = g.metrics()
        assert m["gracefuld_increments_accepted_total"] == 0
    finally:
        g.stop()


def test_writes_in_flight_when_redis_stops_are_resolved_not_guessed(redis):
    """Redis stopped (SIGSTOP) while writes are on their way: the 200s wait.
    REDIS_TIMEOUT_MS passes, the connection is dropped; once Redis runs
    again each write is resolved before it is answered. Every 200 is
    counted, and nothing answered 503 is."""
    g = journal_mode(redis, INCR_DELAY_MS="100", REDIS_TIMEOUT_MS="300")
    try:
        g.wait_event("redis_up")
        socks = []
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(8):
                s = socket.create_connection(("127.0.0.1", g.port))
                s.sendall(INCR)
                socks.append(s)
            g.wait_event("redis_timeout")
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        statuses = [read_http_responses(s, 1, timeout=20)[0][0]
                    for s in socks]
        for s in socks:
            s.close()
        assert set(statuses) <= {200, 503}
        ok = statuses.count(200)
        m = g.metrics()
        assert m["gracefuld_journal_resolutions_total"] >= 1  # asked, not guessed
        assert m["gracefuld_journal_written_increments_total"] == ok
        assert m["gracefuld_journal_refused_increments_total"] == 8 - ok
        g.signal()
        assert g.wait(20) == 0
        summary = g.wait_event("exit")
        assert summary["accepted"] == ok == summary["done"]
        ups = [e for e in g.events() if e.get("event") == "redis_up"]
        assert len(ups) >= 2  # it reconnected
    finally:
        g.stop()
    assert redis.counter() == ok
    print(f"{ok} of 8 answered 200 after the stop, the rest 503")


def test_a_sigkilled_replica_is_adopted_by_another(redis):
    a = journal_mode(redis, INCR_DELAY_MS="4000")
    b = journal_mode(redis, INCR_DELAY_MS="4000")
    try:
        a.wait_event("redis_up")
        b.wait_event("redis_up")
        for _ in range(12):
            assert a.get("/incr") == 200
        a.proc.kill()  # SIGKILL: nothing is handed over
        a.wait()
        # A lease of 600 ms lapses and b, renewing every 200 ms, adopts.
        adopted = b.wait_event("journal_adopted", timeout=10)
        assert adopted["increments"] == 12
        m = b.metrics()
        assert m["gracefuld_journal_adoptions_total"] == 1
        assert m["gracefuld_journal_adopted_increments_total"] == 12
        # Adopted increments are b's own pending work now, due at the
        # deadlines a gave them.
        assert m["gracefuld_increments_pending"] == 12
        b.signal(signal.SIGTERM)
        b.wait_event("phase", phase="flushing")  # it would wait seconds
        b.signal(signal.SIGTERM)  # cut short: handed over, not drained
        assert b.wait(15) == 0
        assert b.wait_event("exit")["handed_over"] == 12
        c = journal_mode(redis, INCR_DELAY_MS="100")
        try:
            # b gave its lease back: c adopts at its first renewal.
            t0 = time.monotonic()
            c.wait_event("journal_adopted", timeout=10)
            assert time.monotonic() - t0 < 0.6 + 1.0
            c.signal()
            assert c.wait(20) == 0
            summary = c.wait_event("exit")
            # At a's deadlines, still: judged by Redis's clock.
            assert summary["adopted"] == 12 and summary["done"] == 12
            assert time.monotonic() - t0 < 4.0 + 2.0
        finally:
            c.stop()
    finally:
        a.stop()
        b.stop()
    assert redis.counter() == 12
    assert not [k for k in keys(redis) if "journal" in k or "lease" in k]
