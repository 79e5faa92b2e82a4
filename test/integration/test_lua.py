"""The scripts of src/redis/lua, run against a real redis-server exactly as the
binary sends them: each batch counted once however often it is sent, a
journal write either held or fenced off for good, adoption judged by
Redis's clock, moves that cannot count twice."""

import os
import signal
import socket

import pytest

from gracefuld_testlib import Redis, poll_until

LUA = os.path.join(os.environ.get("GRACEFULD_SOURCE_DIR", "."), "src", "redis", "lua")
AGE = 86400000  # a fence unused this long is forgotten
FENCES = ["p:fences", "p:fence_uses", "p:skips"]
IDEM = "p:idempotency"  # the Idempotency-Keys counted
TTL = 86400000  # IDEMPOTENCY_TTL_MS


def script(name):
    """The script as the binary sends it: the prelude, then the script (but
    a script that opens with a shebang, which must stay first)."""
    with open(os.path.join(LUA, name + ".lua"), "rb") as f:
        text = f.read()
    if text.startswith(b"#!"):
        return text
    with open(os.path.join(LUA, "prelude.lua"), "rb") as f:
        return f.read() + text


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """One Redis connection speaking RESP2, enough for these scripts."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, *args):
        self.sock.sendall(encode(*args))

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError(f"unexpected reply {line!r}")

    def call(self, *args):
        self.send(*args)
        return self.read()

    def eval(self, name, keys, *argv):
        return self.call("EVAL", script(name), len(keys), *keys, *argv)


class RedisError(str):
    pass


@pytest.fixture
def redis():
    with Redis() as r:
        yield r


@pytest.fixture
def conn(redis):
    c = Conn(redis.port)
    yield c
    c.close()


def batch(conn, seq, n, counter="counter", rid="a", floor=1, age=AGE,
          idem=(), ttl=TTL):
    return conn.eval("batch", [counter, *FENCES, IDEM], seq, n, age, floor,
                     rid, ttl, *idem)


def fence(conn, rid="a"):
    v = conn.call("HGET", "p:fences", rid)
    return None if v is None else int(v)


def skips(conn):
    return conn.call("ZRANGE", "p:skips", 0, -1)


def write_keys(rid="a"):
    return [f"p:journal:{rid}", *FENCES,
            "p:replicas", "counter", IDEM]


def write(conn, seq, deadline, n, known=0, lease=3000, rid="a", due=(),
          idem=(), ttl=TTL, age=AGE):
    return conn.eval("journal_write", write_keys(rid), seq, deadline, n,
                     known, lease, age, rid, ttl, len(idem), *idem, *due)


def move(conn, *due, rid="a"):
    """A move alone: a write numbered 0, which records nothing; returns the
    increments moved (or the counter's error)."""
    r = write(conn, 0, 0, 0, rid=rid, due=due)
    if isinstance(r, RedisError):
        return r
    recorded, moved = r
    assert recorded == 0
    return moved


def resolve(conn, seq, rid="a"):
    return conn.eval("journal_resolve", FENCES, seq, AGE, rid)


def journal(conn, rid="a"):
    flat = conn.call("HGETALL", f"p:journal:{rid}")
    return {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def renew(conn, due, rid="a", lease=3000, ttl=TTL):
    return conn.eval("journal_renew", [f"p:journal:{rid}", "p:replicas",
                                       "counter", IDEM], rid, lease, due, ttl)


def adopt(conn, rid, other, mine):
    return conn.eval("journal_adopt", [f"p:journal:{rid}",
                                       f"p:journal:{other}", "p:replicas"],
                     rid, other, mine)


def lease_left(conn, rid="a"):
    score = conn.call("ZSCORE", "p:replicas", rid)
    return None if score is None else int(float(score)) - redis_ms(conn)


def redis_ms(conn):
    s, us = conn.call("TIME")
    return int(s) * 1000 + int(us) // 1000


def test_batch_counts_once_however_often_it_is_sent(conn):
    assert batch(conn, 1, 5) == 1
    assert batch(conn, 1, 5) == 0  # a retry
    assert batch(conn, 3, 7) == -1  # 2 is missing: nothing applied
    assert batch(conn, 2, 4) == 1
    assert batch(conn, 3, 7) == 1
    assert batch(conn, 2, 4) == 0  # a late copy
    assert int(conn.call("GET", "counter")) == 16
    assert fence(conn) == 3
    # No TTL an eviction policy could cut short: its last use instead.
    assert conn.call("PTTL", "p:fences") == -1
    assert abs(int(conn.call("ZSCORE", "p:fence_uses", "a")) -
               redis_ms(conn)) < 5000


def test_batch_fences_of_two_replicas_are_independent(conn):
    assert batch(conn, 1, 2, rid="a") == 1
    assert batch(conn, 1, 3, rid="b") == 1
    assert int(conn.call("GET", "counter")) == 5


def test_batch_refused_by_the_counter_consumes_its_number(conn):
    conn.call("SET", "counter", "not a number")
    r = batch(conn, 1, 5)
    assert isinstance(r, RedisError) and "not an integer" in r
    conn.call("SET", "counter", "10")
    assert batch(conn, 1, 5) == 0  # never applied later
    assert batch(conn, 2, 1) == 1  # the next one goes on
    assert int(conn.call("GET", "counter")) == 11


def test_batch_passes_over_batches_failed_before_it_ran(conn):
    """Batch 1 was refused before the script ran (NOPERM, say): the replica
    counts it failed and says so with the next one's floor."""
    assert batch(conn, 2, 5) == -1  # 1 is not settled yet
    assert batch(conn, 2, 5, floor=2) == 1
    assert batch(conn, 1, 3, floor=2) == 0  # never applied later
    assert int(conn.call("GET", "counter")) == 5


def test_batch_refused_for_memory_is_sent_again_with_its_number(conn):
    conn.call("CONFIG", "SET", "maxmemory", "1")
    conn.call("CONFIG", "SET", "maxmemory-policy", "noeviction")
    r = batch(conn, 1, 5)
    assert isinstance(r, RedisError) and r.startswith("OOM")
    conn.call("CONFIG", "SET", "maxmemory", "0")
    assert batch(conn, 1, 5) == 1
    assert int(conn.call("GET", "counter")) == 5


def test_write_records_once_and_takes_the_lease(conn):
    assert write(conn, 1, 1000, 3) == 1
    assert write(conn, 2, 1000, 2) == 1
    assert write(conn, 2, 1000, 2) == 0  # a late copy is never applied
    assert write(conn, 3, 1001, 4) == 1
    assert journal(conn) == {1000: 5, 1001: 4}
    # The lease: the registry's score, the end of it by Redis's clock.
    assert 2000 < lease_left(conn) <= 3000
    assert conn.call("ZRANGE", "p:replicas", 0, -1) == ["a"]
    # No key has a TTL that an eviction policy could act on early.
    for key in ("p:journal:a", "p:replicas", *FENCES[:2]):
        assert conn.call("PTTL", key) == -1


def test_fences_unused_for_their_age_are_forgotten_with_their_ranges(conn):
    """Fences have no TTL (an eviction policy could cut it short): a fence
    unused for the age given is forgotten, with its fenced-off ranges, by
    the next script that moves a fence, so nothing grows without bound."""
    assert write(conn, 3, 1000, 1, rid="old") == 1  # 1-2 fenced off
    assert resolve(conn, 5, rid="old") == 0         # 4-5 fenced off
    assert len(skips(conn)) == 2
    # Not yet stale: a batch of another replica forgets nothing.
    assert batch(conn, 1, 1, rid="b", age=60000) == 1
    assert fence(conn, "old") == 5
    # Stale by the age the scripts are given: forgotten, ranges and all.
    conn.call("ZADD", "p:fence_uses", 1, "old")
    assert batch(conn, 2, 1, rid="b", age=60000) == 1
    assert fence(conn, "old") is None
    assert conn.call("ZSCORE", "p:fence_uses", "old") is None
    assert skips(conn) == []
    assert fence(conn, "b") == 2


def test_a_write_that_does_not_note_the_use_moves_the_fence_alone(conn):
    """Age 0 (the replica noted its fence's use less than a second ago):
    the write moves the fence and takes the lease, but neither notes the
    use nor forgets a stale fence; the next write that notes does both."""
    conn.call("ZADD", "p:fence_uses", 1, "old")
    conn.call("HSET", "p:fences", "old", 9)
    assert write(conn, 1, 1000, 3) == 1
    assert fence(conn, "old") is None  # stale: forgotten
    noted = conn.call("ZSCORE", "p:fence_uses", "a")
    conn.call("ZADD", "p:fence_uses", 1, "old")
    conn.call("HSET", "p:fences", "old", 9)
    conn.call("ZADD", "p:fence_uses", 5, "a")
    assert write(conn, 2, 1000, 2, age=0) == 1
    assert fence(conn) == 2
    assert journal(conn) == {1000: 5}
    assert 2000 < lease_left(conn) <= 3000
    assert conn.call("ZSCORE", "p:fence_uses", "a") == "5"
    assert fence(conn, "old") == 9
    assert write(conn, 3, 1000, 1) == 1
    assert int(conn.call("ZSCORE", "p:fence_uses", "a")) >= int(noted)
    assert fence(conn, "old") is None


def test_resolve_tells_applied_from_fenced_off_for_good(conn):
    assert write(conn, 1, 1000, 3) == 1
    assert resolve(conn, 1) == 1  # its reply was lost, but it is held
    assert resolve(conn, 2) == 0  # never arrived: fenced off
    assert resolve(conn, 2) == 0  # the answer to a second ask is the same
    assert write(conn, 2, 1000, 9) == 0  # the late copy changes nothing
    assert journal(conn) == {1000: 3}
    assert resolve(conn, 1) == 1
    # Later writes prune what was fenced off once its outcome is known.
    assert write(conn, 3, 1002, 1, known=2) == 1
    assert skips(conn) == []


def test_writes_passed_over_are_fenced_off_in_any_order(conn):
    """Write 2 is lost on its way (or still in a paused Redis's buffers)
    while write 4 applies: 2 and 3 can never apply after that, and their
    resolution says so, however late it is asked."""
    assert write(conn, 1, 1000, 1) == 1
    assert write(conn, 4, 1000, 4) == 1
    assert write(conn, 2, 1000, 2) == 0  # late: refused
    assert resolve(conn, 2) == 0
    assert resolve(conn, 3) == 0
    assert resolve(conn, 4) == 1
    assert resolve(conn, 1) == 1
    assert resolve(conn, 6) == 0  # 5 and 6 fenced off together
    assert resolve(conn, 5) == 0
    assert write(conn, 5, 1000, 5) == 0
    assert write(conn, 7, 1000, 7) == 1
    assert journal(conn) == {1000: 12}
    # Once the replica knows every outcome up to 6, the ranges go.
    assert write(conn, 8, 1000, 1, known=6) == 1
    assert skips(conn) == []


def test_a_late_write_and_its_resolution_always_agree(redis):
    """Redis paused with a write in the buffer of a connection that is gone
    and a resolution on a new one: whichever it runs first, the resolution's
    answer says whether the journal holds the write."""
    outcomes = set()
    for seq in range(1, 21):
        write_cmd = ("EVAL", script("journal_write"), len(write_keys()),
                     *write_keys(), seq,
                     5000 + seq, 1, 0, 3000, AGE, "a", TTL, 0)
        resolve_cmd = ("EVAL", script("journal_resolve"), len(FENCES),
                       *FENCES, seq, AGE, "a")
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            # Redis accepts and reads them in the order they came: alternate
            # it, so that both orders of execution occur. Half the old
            # connections are gone before Redis reads them.
            if seq % 2:
                old, new = Conn(redis.port), Conn(redis.port)
            else:
                new, old = Conn(redis.port), Conn(redis.port)
            old.send(*write_cmd)
            new.send(*resolve_cmd)
            if seq % 4 < 2:
                old.close()
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        held = new.read()
        check = Conn(redis.port)
        check.call("PING")  # after the old connection's command, if any
        in_journal = check.call("HGET", "p:journal:a", 5000 + seq) is not None
        assert bool(held) == in_journal, (seq, held)
        assert resolve(check, seq) == held  # asked again: the same answer
        for c in (check, new, old):
            c.close()
        outcomes.add(held)
    print(f"outcomes seen: {sorted(outcomes)}")
    assert outcomes == {0, 1}


def test_move_counts_due_entries_once(conn):
    write(conn, 1, 1000, 3)
    write(conn, 2, 1001, 4)
    write(conn, 3, 1002, 5)
    assert move(conn, 1000, 1001, 999) == 7
    assert move(conn, 1000, 1001) == 0
    assert int(conn.call("GET", "counter")) == 7
    assert journal(conn) == {1002: 5}
    assert move(conn, 1002) == 5
    assert conn.call("EXISTS", "p:journal:a") == 0  # an empty journal goes


def test_a_write_moves_what_fell_due_whether_it_is_recorded_or_not(conn):
    write(conn, 1, 1000, 3)
    write(conn, 2, 1001, 4)
    # Recorded, and the due entries counted, in one step.
    assert write(conn, 3, 2000, 1, due=(1000, 999)) == [1, 3]
    assert int(conn.call("GET", "counter")) == 3
    assert journal(conn) == {1001: 4, 2000: 1}
    # A late copy records nothing; its moves, idempotent, still run.
    assert write(conn, 3, 2000, 1, due=(1000, 1001)) == [0, 4]
    assert write(conn, 3, 2000, 1, due=(1000, 1001)) == [0, 0]
    assert int(conn.call("GET", "counter")) == 7
    assert journal(conn) == {2000: 1}


@pytest.mark.parametrize("bad", [("RPUSH", "counter", "x"),
                                 ("SET", "counter", "x")])
def test_a_write_the_counter_could_never_count_records_nothing(conn, bad):
    """No 200 for an increment that cannot be counted, no journal growth:
    the write is refused whole, before its first write."""
    write(conn, 1, 1000, 3)
    conn.call(*bad)
    r = write(conn, 2, 2000, 5, due=(1000,))
    assert isinstance(r, RedisError) and r.startswith("WRONGTYPE counter")
    assert journal(conn) == {1000: 3}  # nothing lost, nothing added
    assert fence(conn) == 1


def test_move_refused_by_the_counter_keeps_the_journal(conn):
    write(conn, 1, 1000, 3)
    conn.call("SET", "counter", "x")
    assert isinstance(move(conn, 1000), RedisError)
    assert journal(conn) == {1000: 3}


def test_adopt_takes_lapsed_journals_by_redis_clock(conn):
    now = redis_ms(conn)
    # Replica a wrote an entry due 2 s from now by Redis's clock, one long
    # past due. Replica b lives on.
    write(conn, 1, now + 2000, 3, lease=60000, rid="a")
    write(conn, 2, now - 60000, 4, lease=60000, rid="a")
    write(conn, 1, now + 500, 1, lease=60000, rid="b")
    conn.call("ZADD", "p:replicas", 1, "a")  # as if a had not renewed in time
    # Replica c's clock is 1,000 s behind Redis's: deadlines follow Redis.
    mine = now - 1000000
    assert renew(conn, mine - 5000, rid="c", lease=60000) == [0, ["a"]]
    assert adopt(conn, "c", "b", mine) == ["b", 0, []]  # b's lease runs
    who, n, added = adopt(conn, "c", "a", mine)
    assert (who, n) == ("a", 7)
    entries = {int(added[i]): added[i + 1] for i in range(0, len(added), 2)}
    assert sum(entries.values()) == 7
    past_due = [d for d, n in entries.items() if n == 4]
    future = [d for d, n in entries.items() if n == 3]
    assert past_due == [mine]  # due at once
    assert len(future) == 1 and 1000 < future[0] - mine <= 2000
    assert journal(conn, "c") == entries
    assert conn.call("EXISTS", "p:journal:a") == 0
    assert sorted(conn.call("ZRANGE", "p:replicas", 0, -1)) == ["b", "c"]
    # Adopted already: a second call (a copy run late) adopts nothing.
    assert adopt(conn, "c", "a", mine) == ["a", 0, []]
    assert journal(conn, "b") == {now + 500: 1}
    # A replica whose own lease ran out adopts nothing.
    conn.call("ZADD", "p:replicas", 1, "b")
    conn.call("ZADD", "p:replicas", 1, "c")
    assert adopt(conn, "c", "b", mine) == ["b", 0, []]


def test_renew_moves_every_due_entry_the_journal_holds(conn):
    """Whatever the replica's queue knows: entries adopted by a reply that
    was lost move all the same, once."""
    write(conn, 1, 1000, 3)
    write(conn, 2, 1500, 4)
    write(conn, 3, 9000, 5)
    conn.call("HINCRBY", "p:journal:a", 1200, 6)  # adopted, reply lost
    assert renew(conn, 1499) == [9, []]
    assert int(conn.call("GET", "counter")) == 9
    assert journal(conn) == {1500: 4, 9000: 5}
    assert renew(conn, 1499) == [0, []]  # a copy run late moves nothing
    assert move(conn, 1000, 1200) == 0  # nor does the queue's own move
    assert 2000 < lease_left(conn) <= 3000
    # A counter that cannot count: the lease is renewed, the journal keeps
    # what is due.
    conn.call("SET", "counter", "x")
    moved, lapsed = renew(conn, 1500, lease=5000)
    assert isinstance(moved, RedisError)
    assert moved.startswith("WRONGTYPE counter")
    assert journal(conn) == {1500: 4, 9000: 5}
    assert 4000 < lease_left(conn) <= 5000


def test_renew_names_lapsed_replicas_not_itself(conn):
    write(conn, 1, 1000, 1, rid="b", lease=60000)
    conn.call("ZADD", "p:replicas", 0, "gone")
    moved, lapsed = renew(conn, 0, lease=100)
    assert (moved, lapsed) == (0, ["gone"])


@pytest.mark.parametrize("key,kind", [
    ("p:journal:a", "string"), ("p:replicas", "hash"),
    ("p:fences", "string"), ("p:fence_uses", "hash"),
    ("p:skips", "string"), (IDEM, "string"), (IDEM, "hash")])
def test_scripts_check_every_key_before_they_write(conn, key, kind):
    """A key of another kind (another program's, an operator's mistake): an
    error that names it, and nothing written anywhere, by every script that
    touches it."""
    if kind == "string":
        conn.call("SET", key, "x")
    else:
        conn.call("HSET", key, "f", "v")
    before = sorted(conn.call("KEYS", "*"))
    scripts = {
        "p:journal:a": [lambda: renew(conn, 0), lambda: adopt(conn, "a", "b", 0),
                        lambda: conn.eval("journal_leave",
                                          ["p:journal:a", "p:replicas"], "a")],
        "p:replicas": [lambda: renew(conn, 0), lambda: adopt(conn, "a", "b", 0),
                       lambda: conn.eval("journal_leave",
                                         ["p:journal:a", "p:replicas"], "a")],
        "p:fences": [lambda: resolve(conn, 1), lambda: batch(conn, 1, 1)],
        "p:fence_uses": [lambda: resolve(conn, 1), lambda: batch(conn, 1, 1)],
        "p:skips": [lambda: resolve(conn, 1), lambda: batch(conn, 1, 1)],
        IDEM: [lambda: renew(conn, 0),
               lambda: write(conn, 1, 1000, 3, idem=("k",)),
               lambda: batch(conn, 1, 1),
               lambda: batch(conn, 1, 1, idem=("k",))],
    }[key] + [lambda: write(conn, 1, 1000, 3),
              lambda: write(conn, 1, 1000, 3, age=0)]
    if key in ("p:fences", "p:fence_uses", "p:skips"):
        scripts.append(lambda: batch(conn, 1, 1, idem=("k",)))
    for run in scripts:
        r = run()
        assert isinstance(r, RedisError), r
        assert r.startswith("WRONGTYPE " + key), r
        assert sorted(conn.call("KEYS", "*")) == before
    assert conn.call("EXISTS", "counter") == 0


def test_leave_drops_the_lease_and_only_an_empty_journal(conn):
    write(conn, 1, 1000, 3)
    keys = ["p:journal:a", "p:replicas"]
    assert conn.eval("journal_leave", keys, "a") == 3
    # Left for adoption, at once: the lease ended with the leave.
    assert conn.call("ZRANGE", "p:replicas", 0, -1) == ["a"]
    assert lease_left(conn) < 0
    move(conn, 1000)
    write(conn, 2, 1001, 0)  # takes the lease again, records nothing
    conn.call("HDEL", "p:journal:a", 1001)
    assert conn.eval("journal_leave", keys, "a") == 0
    assert conn.call("ZRANGE", "p:replicas", 0, -1) == []
    assert sorted(conn.call("KEYS", "p:*")) == ["p:fence_uses", "p:fences"]


# ---- Idempotency-Keys ------------------------------------------------------

def test_a_key_counts_once_on_every_replica(conn):
    """A key recorded with its increment; the same key again, in a later
    write of this replica or of another, is a replay that records nothing;
    the flags say which, key by key."""
    assert write(conn, 1, 1000, 3, idem=("k1", "k2")) == [1, 0, "00"]
    assert journal(conn) == {1000: 3}
    assert write(conn, 2, 1001, 2, idem=("k2", "k3")) == [1, 0, "10"]
    assert journal(conn) == {1000: 3, 1001: 1}
    assert write(conn, 1, 1002, 2, rid="b", idem=("k1", "k3")) == [1, 0, "11"]
    assert journal(conn, "b") == {}  # both replays: nothing recorded
    # The same key twice in one write counts once.
    assert write(conn, 3, 1003, 2, idem=("k4", "k4")) == [1, 0, "01"]
    assert journal(conn)[1003] == 1
    assert sorted(conn.call("ZRANGE", IDEM, 0, -1)) == ["k1", "k2", "k3", "k4"]


def test_a_late_copy_records_no_key(conn):
    """A write run again (or late, after it was fenced off) records nothing,
    its keys included: the key stays free for the retry that does count."""
    write(conn, 2, 1000, 1)
    assert write(conn, 1, 1001, 1, idem=("late",)) == [0, 0, ""]
    assert conn.call("ZSCORE", IDEM, "late") is None
    assert write(conn, 3, 1002, 1, idem=("late",)) == [1, 0, "0"]


def test_keys_ride_with_moves(conn):
    write(conn, 1, 1000, 2)
    assert write(conn, 2, 2000, 1, idem=("m",), due=(1000,)) == [1, 2, "0"]
    assert int(conn.call("GET", "counter")) == 2
    assert journal(conn) == {2000: 1}


def test_keys_are_forgotten_after_the_ttl_without_redis_ttls(conn):
    """No Redis TTL (an eviction policy could take it early): a key counted
    longer ago than the TTL is pruned by the next write with keys or lease
    renewal, and counts again after that."""
    assert write(conn, 1, 1000, 1, idem=("old",), ttl=200) == [1, 0, "0"]
    assert conn.call("PTTL", IDEM) == -1
    # Within the TTL: a replay.
    assert write(conn, 2, 1001, 1, idem=("old",), ttl=60000) == [1, 0, "1"]
    recorded = int(float(conn.call("ZSCORE", IDEM, "old")))
    poll_until(lambda: redis_ms(conn) > recorded + 200, 5, "Redis's clock")
    renew(conn, 0, ttl=200)
    assert conn.call("EXISTS", IDEM) == 0  # the set is gone when empty
    assert write(conn, 3, 1002, 1, idem=("old",), ttl=200) == [1, 0, "0"]


# ---- Idempotency-Keys in memory mode's batches -------------------------------

def counter(conn):
    return int(conn.call("GET", "counter") or 0)


def test_a_batch_skips_keys_counted_before_by_any_replica(conn):
    """A batch records its keys with the INCRBY that counts them; a key
    already there (counted by a batch of any replica, or a journal write)
    is skipped, and so is a key given twice in one batch."""
    assert batch(conn, 1, 3, idem=("k1", "k2")) == 1  # two keyed, one plain
    assert counter(conn) == 3
    assert sorted(conn.call("ZRANGE", IDEM, 0, -1)) == ["k1", "k2"]
    assert batch(conn, 1, 2, rid="b", idem=("k1", "k3")) == 1
    assert counter(conn) == 4  # k1 skipped, k3 counted
    assert write(conn, 1, 1000, 1, rid="c", idem=("k3",)) == [1, 0, "1"]
    assert write(conn, 2, 1001, 1, rid="c", idem=("w",)) == [1, 0, "0"]
    assert batch(conn, 2, 3, idem=("w", "d", "d")) == 1
    assert counter(conn) == 5  # w counted by the journal, d once
    # Every key skipped: the batch applies (its number is used), counts 0.
    assert batch(conn, 3, 1, idem=("d",)) == 1
    assert fence(conn) == 3 and counter(conn) == 5
    assert conn.call("PTTL", IDEM) == -1  # no Redis TTL


def test_a_retried_batch_neither_counts_twice_nor_skips_itself(conn):
    """The reply to batch 1 was lost and it is sent again: had its first
    try run, the fence answers the copy 0 and its keys change nothing; had
    it not, the copy counts now, its keys free until then. The same for a
    batch refused for memory (no key recorded) and sent again."""
    # First try counted, its reply lost: the retry counts nothing.
    assert batch(conn, 1, 2, idem=("a", "b")) == 1
    assert batch(conn, 1, 2, idem=("a", "b")) == 0
    assert counter(conn) == 2
    # First try never ran: the retry counts, keys and all.
    assert batch(conn, 2, 2, idem=("c", "d")) == 1
    assert counter(conn) == 4
    # First try refused for memory: nothing recorded, the retry counts.
    conn.call("CONFIG", "SET", "maxmemory", "1")
    conn.call("CONFIG", "SET", "maxmemory-policy", "noeviction")
    r = batch(conn, 3, 1, idem=("e",))
    assert isinstance(r, RedisError) and r.startswith("OOM")
    conn.call("CONFIG", "SET", "maxmemory", "0")
    assert conn.call("ZSCORE", IDEM, "e") is None
    assert batch(conn, 3, 1, idem=("e",)) == 1
    assert batch(conn, 3, 1, idem=("e",)) == 0  # and its copy, nothing
    assert counter(conn) == 5
    # A batch out of order records nothing either.
    assert batch(conn, 5, 1, idem=("f",)) == -1
    assert conn.call("ZSCORE", IDEM, "f") is None
    assert batch(conn, 4, 1, idem=("f",)) == 1
    assert counter(conn) == 6


def test_a_batch_the_counter_refuses_records_no_key(conn):
    conn.call("SET", "counter", "not a number")
    r = batch(conn, 1, 1, idem=("k",))
    assert isinstance(r, RedisError) and "not an integer" in r
    assert conn.call("EXISTS", IDEM) == 0  # the key may count later


def test_a_batch_counts_a_key_older_than_the_ttl_again(conn):
    assert batch(conn, 1, 1, idem=("old",), ttl=200) == 1
    recorded = int(float(conn.call("ZSCORE", IDEM, "old")))
    assert batch(conn, 2, 1, idem=("old",), ttl=60000) == 1  # a replay
    assert counter(conn) == 1
    poll_until(lambda: redis_ms(conn) > recorded + 200, 5, "Redis's clock")
    assert batch(conn, 3, 1, idem=("old",), ttl=200) == 1
    assert counter(conn) == 2
    assert int(float(conn.call("ZSCORE", IDEM, "old"))) > recorded + 200
    # Pruned by a batch with keys: the set does not grow without them.
    assert batch(conn, 4, 1, idem=("new",), ttl=1) == 1
    new = int(float(conn.call("ZSCORE", IDEM, "new")))
    poll_until(lambda: redis_ms(conn) > new + 1, 5, "Redis's clock")
    assert batch(conn, 5, 1, idem=("newer",), ttl=1) == 1
    assert conn.call("ZRANGE", IDEM, 0, -1) == ["newer"]
