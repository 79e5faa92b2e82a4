"""Sentinel: Debian's redis-sentinel watching one master and one replica,
three sentinels, all on free loopback ports in a temporary directory.
gracefuld asks the sentinels for the master, confirms it with ROLE, and
follows a failover under load, once by `SENTINEL failover` and once by
SIGKILL of the master, and once more with every server and Sentinel
speaking TLS only. With REDIS_MIN_REPLICAS=1 an increment is done only
once the replica has it, so the counter on the new master is at least the
number of 200s; the test prints by how much it exceeds it."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from gracefuld_testlib import (Certs, Gracefuld, IncrLoad, LineReader,
                               Redis, free_port, read_http_responses, running,
                               stop_process)

MASTER = "counter-master"


class Sentinel:
    """tls: (key, certificate, CA certificate) to speak TLS only, to
    clients and to the servers and Sentinels it watches."""

    def __init__(self, directory, master_port, tls=None):
        self.port = free_port()
        self.tls = tls
        self.conf = os.path.join(directory, f"sentinel-{self.port}.conf")
        ports = f"port {self.port}\n"
        if tls:
            ports = (f"port 0\ntls-port {self.port}\ntls-key-file {tls[0]}\n"
                     f"tls-cert-file {tls[1]}\ntls-ca-cert-file {tls[2]}\n"
                     "tls-auth-clients no\ntls-replication yes\n")
        with open(self.conf, "w") as f:
            f.write(f"{ports}bind 127.0.0.1\n"
                    f"dir {directory}\ndaemonize no\nlogfile \"\"\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\n"
                    f"sentinel failover-timeout {MASTER} 10000\n"
                    f"sentinel parallel-syncs {MASTER} 1\n")
        binary = shutil.which("redis-sentinel")
        if not binary:
            raise RuntimeError("redis-sentinel is not installed "
                               "(scripts/bootstrap test installs it)")
        self.proc = subprocess.Popen([binary, self.conf],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.out = LineReader(self.proc.stdout)

    def cli(self, *args):
        tls = ["--tls", "--cacert", self.tls[2], "--cert", self.tls[1],
               "--key", self.tls[0]] if self.tls else []
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *tls, *args], check=True,
            capture_output=True, text=True, timeout=10).stdout.split()

    def stop(self):
        stop_process(self.proc)


def wait_until(what, predicate, timeout=30.0):
    """Polls a condition of another process that sends no event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.05)
    raise TimeoutError(what)


def replication(redis):
    out = redis.cli("INFO", "replication")
    return dict(l.split(":", 1) for l in out.splitlines() if ":" in l)


@contextlib.contextmanager
def watched(tls=None):
    """A master, its replica and three Sentinels watching them."""
    directory = tempfile.mkdtemp(prefix="gracefuld-sentinel-")
    master = Redis(tls=tls).start()
    replica = Redis(args=["--replicaof", "127.0.0.1", str(master.port)],
                    tls=tls)
    replica.start()
    sentinels = []
    try:
        wait_until("replica in sync", lambda: replication(replica).get(
            "master_link_status", "").strip() == "up")
        sentinels = [Sentinel(directory, master.port, tls) for _ in range(3)]
        for s in sentinels:
            # Each knows the replica and the two other sentinels: a
            # failover can be agreed on.
            wait_until("sentinel ready", lambda s=s: (
                s.cli("SENTINEL", "replicas", MASTER).count("ip") == 1 and
                s.cli("SENTINEL", "sentinels", MASTER).count("ip") == 2))
        yield master, replica, sentinels
    finally:
        for s in sentinels:
            s.stop()
        master.cleanup()
        replica.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cluster():
    with watched() as servers:
        yield servers


@pytest.fixture
def tls_cluster():
    certs = Certs()
    try:
        key, crt = certs.issue("server")  # localhost and 127.0.0.1
        certs.env = {"REDIS_URL": "rediss://127.0.0.1",
                     "REDIS_TLS_CA_FILE": certs.ca}
        with watched(tls=(key, crt, certs.ca)) as servers:
            yield (*servers, certs)
    finally:
        certs.cleanup()


@pytest.mark.parametrize("how", ["sentinel-failover", "sigkill"])
def test_failover_under_load_loses_no_acknowledged_increment(cluster, how):
    failover_under_load(*cluster, how)


def test_tls_failover_under_load_loses_no_acknowledged_increment(tls_cluster):
    """Master, replica and Sentinels on TLS only: gracefuld asks the
    Sentinels over TLS and verifies each master's certificate."""
    master, replica, sentinels, certs = tls_cluster
    g = failover_under_load(master, replica, sentinels, "sentinel-failover",
                            certs.env)
    ups = [e for e in g.events() if e["event"] == "redis_up"]
    assert ups and all(e["transport"] == "tls" for e in ups)


def failover_under_load(master, replica, sentinels, how, env=None):
    """Load on gracefuld while the master fails over: no 200 is lost.
    Returns the stopped gracefuld."""
    tls = bool(env)
    addr = ("rediss://127.0.0.1:{}/0" if tls else "127.0.0.1:{}").format
    g = Gracefuld(env={
        "REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in sentinels),
        "REDIS_MASTER_NAME": MASTER, "REDIS_MIN_REPLICAS": "1",
        "REDIS_TIMEOUT_MS": "2000", "INCR_DELAY_MS": "0",
        "SHUTDOWN_TIMEOUT_MS": "60000", **(env or {})}).start()
    restarted = None
    try:
        g.wait_event("redis_up", addr=addr(master.port), timeout=20)
        assert g.get("/readyz") == 200
        load = IncrLoad([g.port], timeout=10)
        load.wait_for(200)
        mark = g.mark()
        if how == "sentinel-failover":
            assert sentinels[0].cli("SENTINEL", "failover", MASTER) == ["OK"]
        else:
            os.kill(master.proc.pid, signal.SIGKILL)
            master.proc.wait()
        new = addr(replica.port)
        g.wait_event("redis_master", start=mark, to=new, timeout=60)
        if how == "sigkill":
            # Back on its port as a replica of the new master, as an
            # operator brings it back: WAIT can be satisfied again. (Left to
            # the sentinels, the reconfiguration waits for their own quiet
            # periods, and a loaded machine stretches those past a minute.)
            restarted = Redis(port=master.port, args=[
                "--replicaof", "127.0.0.1", str(replica.port)]).start()
            wait_until("old master rejoined as a replica", lambda: replication(
                restarted).get("master_link_status", "").strip() == "up",
                timeout=60)
        g.wait_event("redis_up", start=mark, addr=new, timeout=60)
        at_failover = load.ok
        load.wait_for(at_failover + 200)
        ok = load.finish()
        assert load.other == []
        g.signal()
        assert g.wait(60) == 0
        summary = g.wait_event("exit")
        assert summary["failed"] == 0 and summary["abandoned"] == 0
        assert replication(replica)["role"].strip() == "master"
        counter = replica.counter()
        print(f"\n{how}: {ok} x 200, counter {counter} on the new master, "
              f"excess {counter - ok}, retried {summary['retried']}")
        assert counter >= ok
        # One line per change of address, never one for no change.
        moves = [e for e in g.events() if e["event"] == "redis_master"]
        assert all(m["from"] != m["to"] for m in moves)
        assert moves[-1]["to"] == new
        return g
    finally:
        g.stop()
        if restarted:
            restarted.cleanup()


def test_sentinels_are_asked_in_turn(cluster):
    """The first sentinel named is down: the next one answers, and the
    master it names is the one counted on."""
    master, replica, sentinels = cluster
    dead = free_port()
    g = Gracefuld(env={
        "REDIS_SENTINELS": f"127.0.0.1:{dead},127.0.0.1:{sentinels[1].port}",
        "REDIS_MASTER_NAME": MASTER, "INCR_DELAY_MS": "0"}).start()
    try:
        down = g.wait_event("redis_down")
        assert f"sentinel 127.0.0.1:{dead}" in down["reason"]
        g.wait_event("redis_up", addr=f"127.0.0.1:{master.port}")
        assert g.get("/incr") == 200
        g.signal()
        assert g.wait(10) == 0
        assert master.counter() == 1
    finally:
        g.stop()


@contextlib.contextmanager
def master_and_replica():
    """A master and its replica, in sync; both gone afterwards."""
    master = Redis().start()
    replica = Redis(args=["--replicaof", "127.0.0.1", str(master.port)])
    try:
        replica.start()
        wait_until("replica in sync", lambda: replication(replica).get(
            "master_link_status", "").strip() == "up")
        yield master, replica
    finally:
        master.cleanup()
        replica.cleanup()


def test_min_replicas_holds_increments_until_a_replica_has_them():
    """REDIS_MIN_REPLICAS=1 against a master whose replica is away: the
    increments are executed but stay pending (WAIT says 0 replicas), are
    not sent again on the same master, and are done once the replica is
    back: the counter is exact."""
    env = {"REDIS_MIN_REPLICAS": "1", "REDIS_TIMEOUT_MS": "1000",
           "INCR_DELAY_MS": "0"}
    with master_and_replica() as (master, replica), \
            running(redis=master, env=env) as g:
        g.wait_event("redis_up")
        assert g.get("/incr") == 200
        wait_until("first increment done",
                   lambda: g.metric("gracefuld_increments_done_total") == 1)
        replica.stop()
        mark = g.mark()
        for _ in range(3):
            assert g.get("/incr") == 200
        short = g.wait_event("redis_wait_short", start=mark)
        assert short["replicas"] == 0 and short["wanted"] == 1
        # Executed (the later ones behind the first WAIT), not confirmed.
        wait_until("all executed", lambda: master.counter() == 4)
        assert g.metric("gracefuld_increments_pending") == 3
        replica.start()
        g.signal()
        assert g.wait(30) == 0
        summary = g.wait_event("exit")
        assert summary["done"] == 4 and summary["retried"] == 0
        assert master.counter() == 4


def test_journal_mode_sends_a_200_only_once_a_replica_has_the_write():
    """DURABILITY=redis with REDIS_MIN_REPLICAS=1: a 200 means the journal
    write is on a replica too. With the replica away the 200 waits (the
    master has the write already), and comes once the replica is back."""
    env = {"DURABILITY": "redis", "REDIS_MIN_REPLICAS": "1",
           "REDIS_TIMEOUT_MS": "1000", "INCR_DELAY_MS": "100"}
    with master_and_replica() as (master, replica), \
            running(redis=master, env=env) as g:
        g.wait_event("redis_up")
        assert g.get("/incr") == 200
        wait_until("first increment done",
                   lambda: g.metric("gracefuld_increments_done_total") == 1)
        replica.stop()
        mark = g.mark()
        s = g.raw()
        s.sendall(b"GET /incr HTTP/1.1\r\nHost: t\r\n\r\n")
        short = g.wait_event("redis_wait_short", start=mark)
        assert short["replicas"] == 0 and short["wanted"] == 1
        # The master holds it; no 200 yet.
        assert int(master.cli(
            "EVAL", "local n = 0 for _, k in ipairs(redis.call('KEYS', "
            "'gracefuld:{counter}:journal:*')) do for _, v in ipairs(redis.call("
            "'HVALS', k)) do n = n + v end end return n", "0")) == 1
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(1)
        replica.start()
        assert read_http_responses(s, 1, timeout=30)[0][0] == 200
        s.close()
        g.signal()
        assert g.wait(30) == 0
        summary = g.wait_event("exit")
        assert summary["done"] == 2 and summary["failed"] == 0
        assert master.counter() == 2


def test_an_address_that_is_not_a_master_is_refused_by_role(cluster):
    """A sentinel that names a replica as the master (here: told to
    monitor the replica under another name) is not believed: ROLE says
    replica, the link stays unready, and nothing is sent there."""
    master, replica, sentinels = cluster
    assert sentinels[0].cli("SENTINEL", "MONITOR", "not-a-master",
                            "127.0.0.1", str(replica.port), "1") == ["OK"]
    g = Gracefuld(env={
        "REDIS_SENTINELS": f"127.0.0.1:{sentinels[0].port}",
        "REDIS_MASTER_NAME": "not-a-master", "INCR_DELAY_MS": "0",
        "SHUTDOWN_TIMEOUT_MS": "500"}).start()
    try:
        down = g.wait_event("redis_down")
        assert "ROLE: not a master" in down["reason"], down
        assert g.get("/readyz") == 503
        assert g.get("/incr") == 200
        assert "cmdstat_incr" not in replica.cli("INFO", "commandstats")
        g.signal()
        assert g.wait(10) == 3  # abandoned: no master to count on
    finally:
        g.stop()
