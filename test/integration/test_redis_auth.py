"""Redis as production runs it: a password (--requirepass), an ACL user
granted only what gracefuld needs, a unix socket, a non-zero database,
wrong credentials, a password added later, a master turned replica
(READONLY). Every case runs against a real redis-server, and no password
may ever reach a log line, --help, /metrics or the termination message."""

import os
import re
import subprocess
import time

import pytest

from gracefuld_testlib import (Certs, Gracefuld, Redis, poll_until,
                               require_binary)

PASSWORD = "s3cret-pw"


def no_password_in(g, *more):
    """The password appears nowhere gracefuld wrote."""
    text = "\n".join(g.log.lines)
    assert PASSWORD not in text, "the password reached the log"
    for extra in more:
        assert PASSWORD not in extra


def secret_file(tmp_path, value=PASSWORD + "\n"):
    path = tmp_path / "redis-password"
    path.write_text(value)
    return str(path)


def count_and_drain(g, redis, n, key="counter"):
    g.wait_event("redis_up")
    assert g.get("/readyz") == 200
    for _ in range(n):
        assert g.get("/incr") == 200
    metrics = g.request("/metrics")[2].decode()
    g.signal()
    assert g.wait(15) == 0
    summary = g.wait_event("exit")
    assert summary["done"] == n and summary["failed"] == 0
    assert redis.counter(key) == n
    return metrics


@pytest.fixture
def protected():
    r = Redis(args=["--requirepass", PASSWORD], password=PASSWORD).start()
    yield r
    r.cleanup()


def test_requirepass_with_the_password_in_the_url(protected, tmp_path):
    term = tmp_path / "termination-log"
    g = Gracefuld(env={
        "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{protected.port}",
        "INCR_DELAY_MS": "0", "TERMINATION_LOG": str(term)}).start()
    try:
        metrics = count_and_drain(g, protected, 3)
        start = g.wait_event("start")
        assert start["redis"] == f"redis://:***@127.0.0.1:{protected.port}/0"
        no_password_in(g, metrics, term.read_text())
    finally:
        g.stop()


def test_requirepass_with_the_password_from_a_file(protected, tmp_path):
    g = Gracefuld(redis=protected, env={
        "REDIS_PASSWORD_FILE": secret_file(tmp_path),
        "INCR_DELAY_MS": "0"}).start()
    try:
        count_and_drain(g, protected, 2)
        no_password_in(g)
    finally:
        g.stop()


# The commands gracefuld sends in the memory durability mode (EVAL and
# EVALSHA, and those its batch script calls), and the only ones the ACL user gets: the
# README's list. AUTH is always allowed.
MEMORY_MODE_COMMANDS = ["+eval", "+evalsha", "+type", "+get", "+incrby",
                        "+hget", "+hset", "+hdel", "+zadd", "+zrem",
                        "+zscore", "+zrangebyscore", "+zremrangebyscore",
                        "+time"]


# The same for journal mode (DURABILITY=redis): its scripts' commands.
JOURNAL_MODE_COMMANDS = [
    "+eval", "+evalsha", "+type", "+get", "+incrby", "+hincrby", "+hget",
    "+hset", "+hdel", "+hgetall", "+hvals", "+zadd", "+zrem", "+zscore",
    "+zrangebyscore", "+zremrangebyscore", "+del", "+time"]


def acl_user(redis, name, keys, commands=MEMORY_MODE_COMMANDS):
    redis.cli("ACL", "SETUSER", name, "reset", "on", ">" + PASSWORD,
              *["~" + k for k in keys], "resetchannels", "-@all",
              *commands)


def test_journal_mode_needs_only_its_listed_commands(protected, tmp_path):
    """Writes, moves alone and moves riding with writes, the lease, the
    adoption scan and the leave, all with the README's journal-mode list."""
    acl_user(protected, "gracefuld", ["counter", "gracefuld:*"],
             JOURNAL_MODE_COMMANDS)
    g = Gracefuld(env={
        "REDIS_URL": f"redis://gracefuld@127.0.0.1:{protected.port}",
        "REDIS_PASSWORD_FILE": secret_file(tmp_path),
        "DURABILITY": "redis", "INCR_DELAY_MS": "20",
        "LEASE_MS": "300"}).start()
    try:
        g.wait_event("redis_up")
        for _ in range(60):
            assert g.get("/incr") == 200
        # The first moves fall due 20 ms after the first write; the 60
        # requests may all be answered before: await one, bounded.
        deadline = time.monotonic() + 10
        while g.metric("gracefuld_journal_moves_total") == 0:
            assert time.monotonic() < deadline, "no move while running"
            time.sleep(0.01)
        g.signal()
        assert g.wait(15) == 0
        summary = g.wait_event("exit")
        assert summary["done"] == 60 and summary["failed"] == 0
        assert protected.counter() == 60
        assert not [e for e in g.events() if e.get("level") != "info"]
    finally:
        g.stop()


def test_a_user_without_a_command_it_needs_is_never_ready(protected,
                                                          tmp_path):
    """An ACL user without one command the journal scripts run (HVALS, which
    only a leave runs): the handshake's probe (redis.acl_check_cmd) finds it
    before anything is accepted, instead of at the end of the run. Never
    ready, one line naming the command; granted, the replica counts."""
    acl_user(protected, "gracefuld", ["counter", "gracefuld:*"],
             [c for c in JOURNAL_MODE_COMMANDS if c != "+hvals"])
    g = Gracefuld(env={
        "REDIS_URL": f"redis://gracefuld@127.0.0.1:{protected.port}",
        "REDIS_PASSWORD_FILE": secret_file(tmp_path),
        "DURABILITY": "redis", "INCR_DELAY_MS": "0"}).start()
    try:
        refused = g.wait_event("redis_keys_unusable")
        assert refused["reply"].startswith("NOPERM")
        assert "HVALS" in refused["reply"]
        assert g.get("/readyz") == 503
        assert g.get("/incr") == 503
        protected.cli("ACL", "SETUSER", "gracefuld", "+hvals")
        g.wait_event("redis_up", timeout=10)
        assert g.get("/incr") == 200
        g.signal()
        assert g.wait(15) == 0
        assert protected.counter() == 1
        no_password_in(g)
    finally:
        g.stop()


def test_an_acl_user_granted_only_what_gracefuld_needs(protected, tmp_path):
    acl_user(protected, "gracefuld", ["counter", "gracefuld:*"])
    g = Gracefuld(env={
        "REDIS_URL": f"redis://gracefuld@127.0.0.1:{protected.port}",
        "REDIS_PASSWORD_FILE": secret_file(tmp_path),
        "INCR_DELAY_MS": "0"}).start()
    try:
        count_and_drain(g, protected, 4)
        up = g.wait_event("redis_up")
        assert up["addr"] == f"redis://gracefuld:***@127.0.0.1:{protected.port}/0"
        no_password_in(g)
    finally:
        g.stop()
    # And the grant is tight: the same user on another key is refused
    # (NOPERM). The handshake's check finds it before anything is accepted:
    # never ready, one line that says why, and the password in none.
    g = Gracefuld(env={
        "REDIS_URL": f"redis://gracefuld:{PASSWORD}@127.0.0.1:{protected.port}",
        "COUNTER_KEY": "other", "INCR_DELAY_MS": "0"}).start()
    try:
        refused = g.wait_event("redis_keys_unusable")
        assert refused["reply"].startswith("NOPERM")
        assert g.get("/readyz") == 503
        g.signal()
        assert g.wait(10) == 0
        assert not [e for e in g.events() if e["event"] == "redis_up"]
        no_password_in(g)
    finally:
        g.stop()


def count_in_db(redis, url, db, n, addr=None):
    """n increments through url land in database db, none in database 0."""
    g = Gracefuld(env={"REDIS_URL": url, "INCR_DELAY_MS": "0"}).start()
    try:
        up = g.wait_event("redis_up")
        if addr:
            assert up["addr"] == addr
        assert g.get("/readyz") == 200
        for _ in range(n):
            assert g.get("/incr") == 200
        g.signal()
        assert g.wait(10) == 0
    finally:
        g.stop()
    assert redis.cli("-n", str(db), "GET", "counter") == str(n)
    assert redis.counter() == 0


def test_a_unix_socket_and_its_database(tmp_path):
    sock = str(tmp_path / "redis.sock")
    r = Redis(args=["--unixsocket", sock, "--unixsocketperm", "700"]).start()
    try:
        count_in_db(r, f"unix://{sock}?db=2", 2, 3,
                    addr=f"unix://{sock}?db=2")
    finally:
        r.cleanup()


def test_a_non_zero_database(protected):
    count_in_db(protected,
                f"redis://:{PASSWORD}@127.0.0.1:{protected.port}/7", 7, 5,
                addr=f"redis://:***@127.0.0.1:{protected.port}/7")


def test_a_wrong_password_is_logged_once_and_never_ready(protected, tmp_path):
    g = Gracefuld(redis=protected, env={
        "REDIS_PASSWORD_FILE": secret_file(tmp_path, "not-the-password"),
        "INCR_DELAY_MS": "0", "LOG_LEVEL": "debug",
        "SHUTDOWN_TIMEOUT_MS": "500"}).start()
    try:
        failed = g.wait_event("redis_auth_failed")
        assert failed["error"].startswith("WRONGPASS")
        # Several more attempts, each refused, none logged again.
        for _ in range(3):
            g.wait_event("redis_retry", start=g.mark())
        assert [e["event"] for e in g.events()].count("redis_auth_failed") == 1
        assert [e["event"] for e in g.events()].count("redis_down") == 1
        assert g.get("/readyz") == 503
        assert g.get("/incr") == 200  # buffered, not sent unauthenticated
        assert protected.cli("INFO", "commandstats").find("cmdstat_incr") < 0
        g.signal()
        assert g.wait(10) == 3  # abandoned at the shutdown timeout
        assert "not-the-password" not in "\n".join(g.log.lines)
    finally:
        g.stop()


def test_no_password_against_a_redis_that_wants_one(protected):
    g = Gracefuld(redis=protected, env={"INCR_DELAY_MS": "0"}).start()
    try:
        failed = g.wait_event("redis_auth_failed")
        assert failed["error"].startswith("NOAUTH")
        assert g.get("/readyz") == 503
    finally:
        g.stop()


def test_a_password_added_later(redis, tmp_path):
    """gracefuld holds the password before Redis asks for it; when Redis
    starts asking (CONFIG SET requirepass, connections killed), the next
    connection authenticates and the increments in between are counted."""
    g = Gracefuld(redis=redis, env={
        "REDIS_PASSWORD_FILE": secret_file(tmp_path),
        "INCR_DELAY_MS": "0"}).start()
    try:
        g.wait_event("redis_auth_unneeded")
        g.wait_event("redis_up")
        assert g.get("/incr") == 200
        redis.cli("CONFIG", "SET", "requirepass", PASSWORD)
        redis.password = PASSWORD
        mark = g.mark()
        redis.cli("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        g.wait_event("redis_up", start=mark)
        for _ in range(2):
            assert g.get("/incr") == 200
        g.signal()
        assert g.wait(10) == 0
        assert redis.counter() == 3
        no_password_in(g)
    finally:
        g.stop()


def drained_with_retries(g, redis, n):
    """After SIGTERM: a clean exit, n increments counted exactly, some of
    them retried and none failed."""
    g.signal()
    assert g.wait(15) == 0
    summary = g.wait_event("exit")
    assert summary["failed"] == 0 and summary["retried"] >= 1
    assert redis.counter() == n


class SecretVolume:
    """A password file as a Kubernetes Secret volume holds it: the file is a
    symlink through ..data to a dated folder, and an update swaps ..data
    atomically (a rename), so that a reader sees the old or the new file,
    never half of one."""

    def __init__(self, root, value):
        self.root = root
        self.n = 0
        self.set(value)
        os.symlink("..data/password", root / "password")
        self.path = str(root / "password")

    def set(self, value):
        self.n += 1
        folder = self.root / f"..v{self.n}"
        folder.mkdir()
        (folder / "password").write_text(value + "\n")
        os.symlink(folder.name, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", self.root / "..data")


NEW_PASSWORD = "rotated-" + PASSWORD[::-1]


@pytest.fixture(params=["tcp", "tls"])
def protected_any(request):
    """A Redis that wants PASSWORD, over plain TCP or over TLS only."""
    certs = Certs() if request.param == "tls" else None
    tls = (*certs.issue("server"), certs.ca) if certs else None
    r = Redis(args=["--requirepass", PASSWORD], password=PASSWORD,
              tls=tls).start()
    r.env = ({"REDIS_URL": f"rediss://localhost:{r.port}",
              "REDIS_TLS_CA_FILE": certs.ca} if certs
             else {"REDIS_ADDR": r.addr})
    yield r
    r.cleanup()
    if certs:
        certs.cleanup()


@pytest.mark.parametrize("order", ["file first", "redis first"])
def test_a_rotated_password_is_used_from_the_next_connection(protected_any,
                                                             tmp_path,
                                                             order):
    """The Secret rotates while gracefuld runs: the file is swapped, Redis
    asks for the new password (CONFIG SET requirepass) and the connections
    are cut. gracefuld reads the file again at every connection: with the
    file first it logs in at once; with Redis first it is refused
    (WRONGPASS, said once, retried with a backoff) until the file follows.
    Every 200 is counted once, exit 0, and neither password is written
    anywhere. Over plain TCP and over TLS."""
    protected = protected_any
    volume = SecretVolume(tmp_path, PASSWORD)
    g = Gracefuld(env={
        **protected.env, "REDIS_PASSWORD_FILE": volume.path,
        "INCR_DELAY_MS": "0"}).start()
    try:
        g.wait_event("redis_up")
        ok = sum(g.get("/incr") == 200 for _ in range(5))
        mark = g.mark()
        if order == "file first":
            volume.set(NEW_PASSWORD)
        protected.cli("CONFIG", "SET", "requirepass", NEW_PASSWORD)
        protected.password = NEW_PASSWORD
        protected.cli("CLIENT", "KILL", "TYPE", "normal")
        if order == "redis first":
            refused = g.wait_event("redis_auth_failed", start=mark)
            assert refused["error"].startswith("WRONGPASS")
            volume.set(NEW_PASSWORD)
        g.wait_event("redis_password_changed", start=mark)
        g.wait_event("redis_up", start=mark, timeout=15)
        ok += sum(g.get("/incr") == 200 for _ in range(5))
        g.signal()
        assert g.wait(15) == 0
        assert protected.counter() == ok == 10
        assert len([e for e in g.events(mark)
                    if e["event"] == "redis_auth_failed"]) <= 1
        no_password_in(g)
        assert NEW_PASSWORD not in "\n".join(g.log.lines)
    finally:
        g.stop()


def test_reauth_sends_auth_again_on_the_live_connection(protected,
                                                       tmp_path):
    """REDIS_REAUTH_MS: AUTH again on the live connection, with the file as
    it is then, as a token that expires wants. While the password holds,
    the connection lives on (one connection, AUTH counted again); once Redis
    no longer takes it, the next AUTH fails, the connection is retired and
    the replica waits for the file with the backoff; nothing is lost."""
    volume = SecretVolume(tmp_path, PASSWORD)
    g = Gracefuld(env={
        "REDIS_ADDR": protected.addr, "REDIS_PASSWORD_FILE": volume.path,
        "REDIS_REAUTH_MS": "100", "INCR_DELAY_MS": "0"}).start()

    def auth_calls():
        m = re.search(r"cmdstat_auth:calls=(\d+)",
                      protected.cli("INFO", "commandstats"))
        return int(m.group(1)) if m else 0
    try:
        g.wait_event("redis_up")
        before = auth_calls()
        poll_until(lambda: auth_calls() >= before + 3, 10,
                   "AUTH sent again three times")
        assert [e["event"] for e in g.events()].count("redis_up") == 1
        ok = sum(g.get("/incr") == 200 for _ in range(3))
        mark = g.mark()
        protected.cli("CONFIG", "SET", "requirepass", NEW_PASSWORD)
        protected.password = NEW_PASSWORD
        failed = g.wait_event("redis_reauth_failed", start=mark)
        assert failed["error"].startswith("WRONGPASS")
        g.wait_event("redis_auth_failed", start=mark)  # the reconnect
        volume.set(NEW_PASSWORD)
        g.wait_event("redis_up", start=mark, timeout=15)
        ok += sum(g.get("/incr") == 200 for _ in range(3))
        g.signal()
        assert g.wait(15) == 0
        assert protected.counter() == ok == 6
        no_password_in(g)
        assert NEW_PASSWORD not in "\n".join(g.log.lines)
    finally:
        g.stop()


def test_readonly_replies_are_retried_not_failed(redis):
    """A master demoted to a replica answers READONLY: the increments are
    sent again (retried) until it is a master again, none failed."""
    other = Redis().start()
    try:
        g = Gracefuld(redis=redis, env={"INCR_DELAY_MS": "0"}).start()
        g.wait_event("redis_up")
        redis.cli("REPLICAOF", "127.0.0.1", str(other.port))
        mark = g.mark()
        for _ in range(3):
            assert g.get("/incr") == 200
        retiring = g.wait_event("redis_retiring", start=mark)
        assert retiring["reply"].startswith("READONLY")
        redis.cli("REPLICAOF", "NO", "ONE")
        drained_with_retries(g, redis, 3)
    finally:
        g.stop()
        other.cleanup()


def run_config(env, *args):
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run([require_binary(), *args], env={**base, **env},
                          capture_output=True, text=True, timeout=10)


def test_bad_urls_exit_2_naming_the_setting_never_the_password():
    for url, needle in [
            (f"rediss://:{PASSWORD}@host:0", "port"),
            (f"redis://:{PASSWORD}@host:99999", "port"),
            (f"redis://:{PASSWORD}%zz@host", "percent-encoding"),
            (f"http://:{PASSWORD}@host", "expected redis://")]:
        out = run_config({"REDIS_URL": url})
        assert out.returncode == 2, url
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "REDIS_URL" in lines[0], out.stderr
        assert needle in lines[0]
        assert PASSWORD not in out.stderr + out.stdout
    out = run_config({"REDIS_URL": "redis://h", "REDIS_ADDR": "h:1"})
    assert out.returncode == 2
    assert "REDIS_URL" in out.stderr and "REDIS_ADDR" in out.stderr
    help_ = run_config({"REDIS_URL": f"redis://:{PASSWORD}@h"}, "--help")
    assert help_.returncode == 0 and PASSWORD not in help_.stdout


def test_busy_replies_are_retried_not_failed(redis):
    """A script that will not end makes Redis answer BUSY: the increment is
    retried after a backoff, and counted once the script is killed."""
    redis.cli("CONFIG", "SET", "busy-reply-threshold", "50")
    g = Gracefuld(redis=redis, env={"INCR_DELAY_MS": "0"}).start()
    script = None
    try:
        g.wait_event("redis_up")
        script = subprocess.Popen(
            ["redis-cli", "-p", str(redis.port), "EVAL", "while true do end",
             "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def busy():
            out = subprocess.run(["redis-cli", "-p", str(redis.port), "PING"],
                                 capture_output=True, text=True, timeout=10)
            return "BUSY" in out.stdout + out.stderr
        deadline = time.monotonic() + 10
        while not busy():  # another process's state: nothing to await
            assert time.monotonic() < deadline, "the script never ran"
            time.sleep(0.02)
        mark = g.mark()
        for _ in range(2):
            assert g.get("/incr") == 200
        retiring = g.wait_event("redis_retiring", start=mark)
        assert retiring["reply"].startswith("BUSY")
        redis.cli("SCRIPT", "KILL")
        script.wait(10)
        drained_with_retries(g, redis, 2)
    finally:
        g.stop()
        if script and script.poll() is None:
            script.kill()
            script.wait()
