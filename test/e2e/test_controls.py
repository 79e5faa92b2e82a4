"""Negative controls: the harness must see the failures it exists to catch.
Each run takes one protection away and asserts that rollout.py reports the
damage (exit status 1, a FAIL verdict, and numbers of the expected size),
so that a passing test_rollout.py means something.

The runs are shorter than the classic one: 300 requests at 25/s (12 s),
one rollout at 6 s, INCR_DELAY_MS 2000. Last, the harness itself: when
interrupted, it leaves nothing running."""

import os
import signal
import subprocess
import sys

from conftest import ROLLOUT

RATE = 25
REQUESTS = 300
INCR_DELAY_S = 2.0
LAG_S = 1.0
COMMON = ("--requests", REQUESTS, "--rate", RATE, "--workers", 5,
          "--first-rollout", 6, "--endpoint-lag", LAG_S,
          "--incr-delay-ms", int(INCR_DELAY_S * 1000))


def assert_detected(run):
    assert run.returncode == 1, run.result["problems"]
    assert run["verdict"] == "fail"
    assert run["sent"] == REQUESTS
    assert run["ok"] + run["failed"] == REQUESTS


def test_no_delay_no_prestop_fails_requests_during_the_endpoint_lag(
        experiment):
    """SIGTERM at the deletion closes the listener at once, while HAProxy
    still sends new connections there for the 1 s lag: those are refused
    and, with retries 0, their clients see the connection closed. Half the
    endpoints are old ones during the lag, so about rate x lag / 2 = 12
    requests fail. Nothing accepted is lost: the harness tells failures
    from losses."""
    run = experiment(*COMMON, "--keep-alive", "off", "--prestop", 0,
                     "--shutdown-delay-ms", 0, "--grace", 30)
    assert_detected(run)
    assert run["failed"] >= 4, run["failures"]
    # The client's view of a refused backend behind a TCP proxy.
    assert set(run["failures"]) <= {"closed", "reset"}, run["failures"]
    assert run["lost"] == 0 and run["extra"] == 0
    assert run["counter"] == run["ok"]
    assert any("requests failed" in p for p in run["problems"])
    for rep in run.old_replicas():
        assert rep["status"] == "exit 0"
        assert rep["sigterm"] < rep["unrouted"]


def test_keep_alive_on_without_protection_fails_too(experiment):
    """The control for test_keep_alive_on_prestop_sleep_covers_the_endpoint
    _lag: keep-alive clients whose idle connections are closed reconnect
    through HAProxy, which still routes some of them to the closed
    listener. 25 workers, as there: each old replica holds about eight
    connections, and a quarter of their reconnects meet a closed listener
    (with 5 workers, two or three requests failed a run, and a run with
    none was possible)."""
    run = experiment(*COMMON, "--workers", 25, "--keep-alive", "on",
                     "--prestop", 0, "--shutdown-delay-ms", 0, "--grace", 30)
    assert_detected(run)
    assert run["failed"] >= 1, run["failures"]
    assert run["lost"] == 0 and run["counter"] == run["ok"]


def test_zero_grace_period_loses_the_pending_increments(experiment):
    """SIGKILL at the deletion: every increment an old replica answered in
    the last INCR_DELAY_MS is gone. All traffic went to the old replicas
    before the rollout, so about rate x INCR delay = 50 are lost."""
    run = experiment(*COMMON, "--keep-alive", "off", "--prestop", 0,
                     "--shutdown-delay-ms", 2000, "--grace", 0)
    assert_detected(run)
    expected = RATE * INCR_DELAY_S
    assert run["lost"] >= expected / 2, run.result
    assert run["lost"] <= run["ok"]
    assert run["counter"] == run["ok"] - run["lost"]
    assert any("increments lost" in p for p in run["problems"])
    for rep in run.old_replicas():
        assert rep["status"] == "SIGKILL" and rep["killed"]


def children_of(pid):
    """The processes whose parent is pid."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The field after the parenthesised name, which may hold spaces.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_interrupted_it_stops_everything_it_started(tmp_path):
    """Ctrl+C in the middle of a rollout: rollout.py exits 130 and leaves
    no process behind (Redis, HAProxy, hey, every replica, old and new)."""
    cmd = [sys.executable, ROLLOUT, "--workdir", str(tmp_path / "logs"),
           *map(str, COMMON), "--prestop", "3"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            # An old replica is in its preStop sleep, a new one serves.
            if ": deleted" in line:
                break
        started = children_of(proc.pid)
        # redis-server, haproxy, hey, three old and one new replica at least.
        assert len(started) >= 7, "".join(seen)
        proc.send_signal(signal.SIGINT)
        seen.extend(proc.stderr)
        assert proc.wait(timeout=60) == 130, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any("interrupted" in line for line in seen), "".join(seen)
    left = [pid for pid in started if alive(pid)]
    assert left == [], f"still running after the harness: {left}"
    # Nor a replica it started as the signal came (e2e tests run alone).
    binary = os.path.realpath(os.environ["GRACEFULD_BIN"])
    assert running(binary) == []


def running(exe):
    """Live processes of the executable exe."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(int(entry)):
            try:
                if os.readlink(f"/proc/{entry}/exe") == exe:
                    out.append(int(entry))
            except OSError:
                pass
    return out
