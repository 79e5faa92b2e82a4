"""Idempotency-Key (draft-ietf-httpapi-idempotency-key-header) against a
real redis-server and real clients: a key counts once per COUNTER_KEY
across the deployment's replicas, a retry answers 200 with
Idempotency-Replayed and counts nothing, a key still in progress here is
409 (journal mode) or a replay (memory mode), a bad key is 400, and keys
are forgotten after IDEMPOTENCY_TTL_MS without Redis TTLs."""

import http.client
import socket
import threading

import pytest

from gracefuld_testlib import (Gracefuld, Redis, connected, poll_until,
                               read_http_responses)

IDEM = "gracefuld:{counter}:idempotency"


@pytest.fixture
def redis():
    with Redis() as r:
        yield r


def journal_mode(redis, **env):
    return connected(redis, {"DURABILITY": "redis", "INCR_DELAY_MS": "200",
                             "LEASE_MS": "600", **env})


def incr(g, key, method="GET"):
    """One /incr with an Idempotency-Key; (status, headers, body)."""
    return g.request("/incr", method=method,
                     headers={"Idempotency-Key": key})


def replayed(headers):
    return headers.get("Idempotency-Replayed") == "true"


def counted_keys(redis):
    return int(redis.cli("ZCARD", IDEM))


@pytest.mark.parametrize("value", [
    "", "a b", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_bad_key_is_400_with_a_clear_body(redis, value):
    with Gracefuld(redis=redis, env={"DURABILITY": "redis"}) as g:
        s = g.raw()
        head = (b"POST /incr HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
                b"Idempotency-Key: " + value.encode("utf-8") + b"\r\n\r\n")
        s.sendall(head + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        (status, _, body), (after, _, _) = read_http_responses(s, 2)
        s.close()
        assert status == 400
        assert b"Idempotency-Key" in body and b"255" in body
        assert after == 200  # the connection goes on
        assert g.metric("gracefuld_increments_accepted_total") == 0


def test_two_keys_in_one_request_are_400(redis):
    with Gracefuld(redis=redis, env={"DURABILITY": "redis"}) as g:
        s = g.raw()
        s.sendall(b"GET /incr HTTP/1.1\r\nHost: t\r\nIdempotency-Key: a\r\n"
                  b"Idempotency-Key: a\r\n\r\n")
        [(status, _, _)] = read_http_responses(s, 1)
        s.close()
        assert status == 400


def test_replays_on_the_same_and_another_replica_count_nothing(redis):
    a = journal_mode(redis)
    b = journal_mode(redis)
    try:
        longest = "k" * 254 + "~"  # 255 visible characters: taken
        status, headers, body = incr(a, longest, method="POST")
        assert (status, replayed(headers), body) == (200, False, b"ok\n")
        for g in (a, b, a):
            status, headers, body = incr(g, longest)
            assert (status, replayed(headers), body) == (200, True, b"ok\n")
        # Case matters: another key.
        assert not replayed(incr(b, longest.upper())[1])
        # Without a key, as before: each counts.
        assert a.get("/incr") == 200 and a.get("/incr") == 200
        poll_until(lambda: redis.counter() >= 4, 10, "the counter")
        assert a.metric("gracefuld_idempotency_replays_total") == 2
        assert b.metric("gracefuld_idempotency_replays_total") == 1
        for g in (a, b):
            g.signal()
            assert g.wait(15) == 0
    finally:
        a.stop()
        b.stop()
    assert redis.counter() == 4  # two keys, two plain
    assert counted_keys(redis) == 2
    assert redis.cli("PTTL", IDEM) == "-1"  # no Redis TTL


def test_a_duplicate_in_progress_is_409_never_a_second_count(redis):
    """The same key pipelined 50 times on one connection and sent at once
    from 8 more on each of two replicas: exactly one 200 counts it, every
    other answer is a replay or a 409 with Retry-After."""
    a = journal_mode(redis)
    b = journal_mode(redis)
    answers = []
    lock = threading.Lock()

    def pipelined(g):
        s = g.raw()
        s.sendall(b"GET /incr HTTP/1.1\r\nHost: t\r\nIdempotency-Key: dup\r\n"
                  b"\r\n" * 50)
        got = read_http_responses(s, 50)
        s.close()
        with lock:
            answers.extend((st, h.get("idempotency-replayed"),
                            h.get("retry-after")) for st, h, _ in got)

    def single(g):
        status, headers, _ = incr(g, "dup")
        with lock:
            answers.append((status, headers.get("Idempotency-Replayed"),
                            headers.get("Retry-After")))

    try:
        threads = [threading.Thread(target=pipelined, args=(g,))
                   for g in (a, b)]
        threads += [threading.Thread(target=single, args=(g,))
                    for g in (a, b) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(answers) == 116
        first = [x for x in answers if x == (200, None, None)]
        assert len(first) == 1, answers
        for x in answers:
            assert x in ((200, None, None), (200, "true", None),
                         (409, None, "1")), x
        conflicts = sum(x[0] == 409 for x in answers)
        assert (a.metric("gracefuld_idempotency_conflicts_total") +
                b.metric("gracefuld_idempotency_conflicts_total")) == conflicts
        for g in (a, b):
            g.signal()
            assert g.wait(15) == 0
    finally:
        a.stop()
        b.stop()
    assert redis.counter() == 1


def test_a_key_whose_write_is_in_flight_is_409_with_retry_after(redis):
    """Redis holds the write back (CLIENT PAUSE WRITE): the same key from
    another connection meanwhile is still in progress here, 409 with
    Retry-After; once the write is answered, the retry is a replay. A key
    pipelined behind itself on one connection waits for its turn and is a
    replay."""
    g = journal_mode(redis)
    try:
        redis.cli("CLIENT", "PAUSE", "10000", "WRITE")
        first = g.raw()
        first.sendall(b"GET /incr HTTP/1.1\r\nHost: t\r\n"
                      b"Idempotency-Key: p\r\n\r\n")
        poll_until(lambda: g.metric("gracefuld_journal_writes_total") == 1,
                   5, "the write sent")
        status, headers, body = incr(g, "p")
        assert (status, headers.get("Retry-After")) == (409, "1")
        assert b"in progress" in body
        redis.cli("CLIENT", "UNPAUSE")
        [(status, headers, _)] = read_http_responses(first, 1)
        assert (status, headers.get("idempotency-replayed")) == (200, None)
        status, headers, _ = incr(g, "p")
        assert (status, replayed(headers)) == (200, True)
        first.sendall(b"GET /incr HTTP/1.1\r\nHost: t\r\n"
                      b"Idempotency-Key: q\r\n\r\n" * 3)
        got = read_http_responses(first, 3)
        first.close()
        assert [(st, h.get("idempotency-replayed")) for st, h, _ in got] == [
            (200, None), (200, "true"), (200, "true")]
        assert g.metric("gracefuld_idempotency_conflicts_total") == 1
        assert g.metric("gracefuld_idempotency_replays_total") == 3
        poll_until(lambda: redis.counter() == 2, 10, "the counter")
    finally:
        redis.cli("CLIENT", "UNPAUSE")
        g.stop()


def memory_mode(redis, **env):
    return connected(redis, {"INCR_DELAY_MS": "200", **env})


def done(g):
    return g.metric("gracefuld_increments_done_total")


def test_memory_mode_replays_on_the_same_and_another_replica_count_nothing(
        redis):
    """Memory mode: a key pending or counted here is a replay at once
    (nothing queued); another replica answers it 200 and queues it, and its
    batch skips the key that Redis holds already."""
    a = memory_mode(redis)
    b = memory_mode(redis)
    try:
        status, headers, body = incr(a, "m1", method="POST")
        assert (status, replayed(headers), body) == (200, False, b"ok\n")
        # Still pending here: the 200 was given, it will count: a replay.
        assert replayed(incr(a, "m1")[1])
        assert a.metric("gracefuld_increments_accepted_total") == 1
        poll_until(lambda: done(a) == 1, 10, "a's batch")
        assert redis.counter() == 1 and counted_keys(redis) == 1
        # Counted here: a replay still.
        assert replayed(incr(a, "m1")[1])
        # b never saw it: a 200 that counts nothing when its batch applies.
        status, headers, _ = incr(b, "m1")
        assert (status, replayed(headers)) == (200, False)
        assert replayed(incr(b, "m1")[1])  # pending on b: a replay there
        assert b.get("/incr") == 200  # a plain one rides in the same batch
        poll_until(lambda: done(b) == 2, 10, "b's batch")
        assert redis.counter() == 2  # the plain one, not m1 again
        assert a.metric("gracefuld_idempotency_replays_total") == 2
        assert b.metric("gracefuld_idempotency_replays_total") == 1
        for g in (a, b):
            g.signal()
            assert g.wait(15) == 0
    finally:
        a.stop()
        b.stop()
    assert redis.counter() == 2
    assert counted_keys(redis) == 1
    assert redis.cli("PTTL", IDEM) == "-1"  # no Redis TTL


def test_memory_mode_rollout_under_keyed_retries_counts_each_key_once(redis):
    """Memory mode, two replicas; a is SIGTERMed mid-load (a graceful
    rollout). Every request whose answer was not seen, or not 200, is sent
    again to b until answered: the counter equals the distinct keys, and a
    user pressing again on b counts nothing, whichever replica counted."""
    a = memory_mode(redis, INCR_DELAY_MS="300")
    b = memory_mode(redis, INCR_DELAY_MS="300")
    keys_per_client, clients = 150, 6
    retried = []
    answered = []
    again = []
    started = threading.Barrier(clients + 1)
    lock = threading.Lock()

    def send(g, key):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5)
            conn.request("POST", "/incr", headers={"Idempotency-Key": key})
            r = conn.getresponse()
            r.read()
            conn.close()
            return r.status
        except (OSError, http.client.HTTPException):
            return None  # the outcome unseen: unknown, until retried

    def client(c):
        started.wait()
        for i in range(keys_per_client):
            key = f"c{c}-{i}"
            status = send(a if (c + i) % 2 else b, key)
            while status != 200:
                with lock:
                    retried.append(key)
                status = send(b, key)
            with lock:
                answered.append(key)
            if i % 3 == 0:  # a user pressing again
                status = send(b, key)
                with lock:
                    again.append(status)

    threads = [threading.Thread(target=client, args=(c,))
               for c in range(clients)]
    try:
        for t in threads:
            t.start()
        started.wait()
        poll_until(lambda: len(answered) >= 150, 20, "keys answered")
        a.signal()
        for t in threads:
            t.join()
        assert a.wait(30) == 0
        b.signal()
        assert b.wait(30) == 0
    finally:
        a.stop()
        b.stop()
    total = keys_per_client * clients
    assert retried, "the rollout cut no request short: nothing was proven"
    assert again and all(x == 200 for x in again)
    assert redis.counter() == total
    assert counted_keys(redis) == total


def test_sigkilled_replicas_under_keyed_retries_count_each_key_once(redis):
    """Clients send keyed increments to a and b; a is SIGKILLed mid-load.
    Every request whose answer was lost (or 409, or 503) is retried, on b,
    until answered 200: the counter then equals the distinct keys, exactly,
    although some increments a recorded were never answered."""
    a = journal_mode(redis, INCR_DELAY_MS="300")
    b = journal_mode(redis, INCR_DELAY_MS="300")
    keys_per_client, clients = 150, 6
    retried = []
    started = threading.Barrier(clients + 1)
    lock = threading.Lock()

    pressed_again = []

    def send(g, key):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5)
            conn.request("POST", "/incr", headers={"Idempotency-Key": key})
            r = conn.getresponse()
            r.read()
            conn.close()
            return r.status, replayed(dict(r.getheaders()))
        except (OSError, http.client.HTTPException):
            return None, False  # the outcome unseen: unknown, until retried

    def client(c):
        started.wait()
        for i in range(keys_per_client):
            key = f"c{c}-{i}"
            status, _ = send(a if (c + i) % 2 else b, key)
            while status != 200:
                with lock:
                    retried.append(key)
                status, _ = send(b, key)
            if i % 3 == 0:  # a user pressing again, answered or not
                status, again = send(b, key)
                with lock:
                    pressed_again.append((status, again))

    threads = [threading.Thread(target=client, args=(c,))
               for c in range(clients)]
    try:
        for t in threads:
            t.start()
        started.wait()
        poll_until(lambda: counted_keys(redis) >= 200, 20, "keys counted")
        a.proc.kill()
        for t in threads:
            t.join()
        b.wait_event("journal_adopted", timeout=15)
        b.signal()
        assert b.wait(30) == 0
    finally:
        a.stop()
        b.stop()
    total = keys_per_client * clients
    assert retried, "the kill cut no request short: nothing was proven"
    assert pressed_again and all(x == (200, True) for x in pressed_again)
    assert redis.counter() == total
    assert counted_keys(redis) == total


def test_keys_expire_and_redis_memory_returns_to_its_baseline(redis):
    """IDEMPOTENCY_TTL_MS short: the keys go (pruned by the lease renewals,
    no Redis TTL), the memory Redis used for them with them, and a key
    retried after the TTL counts again, as the setting says. The baseline
    is taken after a first round of keys has come and gone, so that what
    Redis keeps anyway (buffers, the scripts) is in it."""
    g = journal_mode(redis, IDEMPOTENCY_TTL_MS="3000", INCR_DELAY_MS="0")
    n = 2000

    def used():
        """Redis's memory but its clients' buffers (which a pipelined write
        of many keys grows, and Redis shrinks in its own time) and its slow
        log (which keeps the arguments of the writes with many keys)."""
        redis.cli("SLOWLOG", "RESET")
        info = dict(line.strip().split(":", 1) for line in
                    redis.cli("INFO", "memory").split("\n") if ":" in line)
        return int(info["used_memory"]) - int(info["mem_clients_normal"])

    def keyed_round(tag):
        s = g.raw()
        s.sendall(b"".join(b"GET /incr HTTP/1.1\r\nHost: t\r\n"
                           b"Idempotency-Key: %s-%08d\r\n\r\n" % (tag, i)
                           for i in range(n)))
        got = read_http_responses(s, n)
        s.close()
        assert [st for st, h, _ in got if "idempotency-replayed" not in h] \
            == [200] * n

    def pruned():
        poll_until(lambda: redis.cli("EXISTS", IDEM) == "0", 20,
                   "the keys pruned")

    try:
        keyed_round(b"warm")
        pruned()
        baseline = used()
        keyed_round(b"key")
        grown = used() - baseline
        per_key = int(redis.cli("MEMORY", "USAGE", IDEM)) / n
        print(f"redis memory: {grown / n:.0f} B per key (used_memory), "
              f"{per_key:.0f} B per key (MEMORY USAGE)")
        assert grown > n * 16
        status, headers, _ = incr(g, "key-00000007")
        assert status == 200 and replayed(headers)
        pruned()
        # What stays is not the keys' (about an eighth of what they took:
        # Redis keeps per-client arrays sized for the largest command).
        assert used() - baseline < grown / 4
        # Forgotten: the key counts again.
        status, headers, _ = incr(g, "key-00000007")
        assert status == 200 and not replayed(headers)
        poll_until(lambda: redis.counter() == 2 * n + 1, 10, "the counter")
    finally:
        g.stop()


def test_a_key_set_of_another_type_keeps_the_replica_unready(redis):
    """The Idempotency-Keys' set of another type (an operator's mistake,
    another program): every connection's check names it, /readyz stays
    503 and no /incr is held; once it is gone, keys count again."""
    redis.cli("SET", IDEM, "not a set")
    g = Gracefuld(redis=redis, env={"DURABILITY": "redis",
                                    "INCR_DELAY_MS": "0"}).start()
    try:
        e = g.wait_event("redis_keys_unusable")
        assert e["reply"].startswith("WRONGTYPE " + IDEM)
        assert g.get("/readyz") == 503
        assert incr(g, "w")[0] == 503
        redis.cli("DEL", IDEM)
        g.wait_event("redis_keys_usable")
        assert incr(g, "w")[0] == 200
        assert replayed(incr(g, "w")[1])
        poll_until(lambda: redis.counter() == 1, 10, "the counter")
    finally:
        g.stop()


def test_a_key_set_spoiled_while_running_holds_nothing(redis):
    g = journal_mode(redis)
    try:
        assert incr(g, "s1")[0] == 200
        redis.cli("DEL", IDEM)
        redis.cli("HSET", IDEM, "f", "v")
        # Every write checks it first: nothing is held, keyed or not.
        assert incr(g, "s2")[0] == 503
        assert g.get("/incr") == 503
        assert g.wait_event("journal_write_refused")["reply"].startswith(
            "WRONGTYPE " + IDEM)
        redis.cli("DEL", IDEM)
        poll_until(lambda: incr(g, "s2")[0] == 200, 10, "a 200 once fixed")
        g.signal()
        assert g.wait(20) == 0
    finally:
        g.stop()
    assert redis.counter() == 2


def test_keys_are_scoped_to_the_counter(redis):
    """Two deployments on one Redis and KEY_PREFIX, counting into x and y:
    the same key counts once in each, neither replays the other's."""
    x = journal_mode(redis, COUNTER_KEY="x")
    y = journal_mode(redis, COUNTER_KEY="y")
    try:
        for g in (x, y):
            status, headers, _ = incr(g, "shared")
            assert status == 200 and not replayed(headers)
        for g in (x, y):
            assert replayed(incr(g, "shared")[1])
            g.signal()
            assert g.wait(20) == 0
    finally:
        x.stop()
        y.stop()
    assert redis.counter("x") == 1 and redis.counter("y") == 1
    assert redis.cli("ZRANGE", "gracefuld:{x}:idempotency", "0",
                     "-1") == "shared"
