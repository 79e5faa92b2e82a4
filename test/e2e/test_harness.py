"""The harness itself, on a clean machine: its readiness probe period is the
manifests', it sizes HAProxy to the file limit it has, its verdicts, and
the keyed load of --idempotent-retries."""

import collections
import http.server
import os
import resource
import subprocess
import sys
import threading

import pytest
import yaml

from conftest import ROLLOUT, SOURCE_DIR

import keyed
import rollout


def test_the_default_probe_period_is_the_manifests():
    with open(os.path.join(SOURCE_DIR, "k8s", "deployment.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    deploy = next(d for d in docs if d.get("kind") == "Deployment")
    c = next(c for c in deploy["spec"]["template"]["spec"]["containers"]
             if c.get("readinessProbe"))
    assert rollout.MANIFEST_PROBE_PERIOD == \
        c["readinessProbe"]["periodSeconds"]
    assert rollout.Params().probe_period == rollout.MANIFEST_PROBE_PERIOD


def hard_nofile(limit):
    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return lower


def test_runs_where_the_hard_file_limit_is_4096(tmp_path):
    """HAProxy's maxconn comes from the limit; with today's fixed 4000 it
    would need 8026 descriptors and not start."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096:
        pytest.skip("the hard file limit is below 4096 already")
    cmd = [sys.executable, ROLLOUT, "--workdir", str(tmp_path / "logs"),
           "--requests", 100, "--rate", 25, "--workers", 5,
           "--first-rollout", 1, "--incr-delay-ms", 500,
           "--shutdown-delay-ms", 1000, "--probe-period", 0]
    out = subprocess.run(list(map(str, cmd)), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=300,
                         preexec_fn=hard_nofile(4096))
    print(out.stdout + out.stderr)
    assert out.returncode == 0, out.stderr
    assert "haproxy: maxconn 2016 (hard file limit 4096)" in out.stderr
    assert "PASS" in out.stdout


def test_says_when_the_file_limit_is_too_small_for_the_load(tmp_path):
    cmd = [sys.executable, ROLLOUT, "--workdir", str(tmp_path / "logs"),
           "--requests", 500, "--rate", 500, "--workers", 500]
    out = subprocess.run(list(map(str, cmd)), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=120,
                         preexec_fn=hard_nofile(1024))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "the hard limit on open files is 1024" in out.stderr
    assert "ulimit -Hn" in out.stderr


# hey's summary as it prints it, errors and all: what the harness reads.
HEY_OUTPUT = """
Summary:
  Total:\t6.0123 secs
  Requests/sec:\t99.7950

Status code distribution:
  [200]\t581 responses
  [503]\t4 responses

Error distribution:
  [6]\tGet "http://127.0.0.1:20000/incr": EOF
  [3]\tGet "http://127.0.0.1:20000/incr": read tcp 127.0.0.1:41234->127.0.0.1:20000: read: connection reset by peer
  [2]\tGet "http://127.0.0.1:20000/incr": dial tcp 127.0.0.1:20000: connect: connection refused
  [1]\tGet "http://127.0.0.1:20000/incr": context deadline exceeded (Client.Timeout exceeded while awaiting headers)
  [1]\tGet "http://127.0.0.1:20000/incr": dial tcp 127.0.0.1:20000: i/o timeout
  [2]\tGet "http://127.0.0.1:20000/incr": http: server closed idle connection
"""


def test_hey_errors_after_sending_have_an_unknown_outcome():
    hey = rollout.parse_hey(HEY_OUTPUT)
    assert hey["statuses"] == {200: 581, 503: 4}
    assert sum(hey["errors"].values()) == 15
    # EOF, reset, the response timeout, the closed idle connection: sent,
    # no response read. The two dial errors never left the client.
    assert rollout.count_unknown(hey["errors"]) == 12
    assert not rollout.unknown_outcome(
        "dial tcp 127.0.0.1:1: connect: connection refused")
    assert rollout.unknown_outcome('Get "http://x/incr": EOF')


def test_the_strict_rule_where_no_replica_was_killed():
    rule, lost, extra, problems = rollout.verdict(
        ok=100, failed=0, counter=100, unknown=0, killed=False)
    assert rule == rollout.STRICT_RULE and problems == []
    assert (lost, extra) == (0, 0)
    # Unknown outcomes do not excuse extra where nothing was killed.
    _, _, extra, problems = rollout.verdict(
        ok=100, failed=3, counter=101, unknown=3, killed=False)
    assert extra == 1
    assert problems == ["3 requests failed", "1 increments counted twice"]
    _, lost, _, problems = rollout.verdict(
        ok=100, failed=0, counter=98, unknown=0, killed=False)
    assert lost == 2 and problems == ["2 increments lost"]


def test_killed_replicas_allow_extra_up_to_the_unknown_outcomes():
    rule, lost, extra, problems = rollout.verdict(
        ok=100, failed=7, counter=104, unknown=5, killed=True)
    assert rule == rollout.KILLED_RULE
    assert (lost, extra, problems) == (0, 4, [])
    _, _, _, problems = rollout.verdict(
        ok=100, failed=7, counter=106, unknown=5, killed=True)
    assert problems == ["6 increments counted more than the 5 requests of "
                        "unknown outcome"]
    # Nothing excuses a loss.
    _, lost, _, problems = rollout.verdict(
        ok=100, failed=7, counter=99, unknown=5, killed=True)
    assert lost == 1 and problems == ["1 increments lost"]


def test_durability_reaches_replicas_only_when_not_memory():
    assert "DURABILITY" not in rollout.Params().gracefuld_env()
    env = rollout.Params(durability="redis", lease_ms=1500,
                         redis_timeout_ms=500).gracefuld_env()
    assert env["DURABILITY"] == "redis"
    assert env["LEASE_MS"] == "1500" and env["REDIS_TIMEOUT_MS"] == "500"


def test_fault_flags():
    _, p = rollout.parse_args(["--redis-pause", "2@1.5", "--crash", "2",
                               "--requests", "900", "--rate", "100"])
    assert (p.redis_pause_s, p.redis_pause_at) == (2.0, 1.5)
    assert p.crash_times() == [3.0, 6.0]
    with pytest.raises(SystemExit):
        rollout.parse_args(["--redis-pause", "2"])
    p = rollout.Params(redis_restart_at=2.0)
    with pytest.raises(rollout.HarnessError, match="appendfsync"):
        p.validate()


def test_the_keyed_rule_leaves_nothing_unknown():
    rule, lost, extra, problems = rollout.keyed_verdict(
        answered=100, counter=100, unanswered=0)
    assert rule == rollout.KEYED_RULE and problems == []
    assert (lost, extra) == (0, 0)
    # Killed replicas excuse nothing: every outcome was seen.
    _, _, extra, problems = rollout.keyed_verdict(
        answered=100, counter=101, unanswered=0)
    assert extra == 1 and problems == ["1 increments counted twice"]
    _, lost, _, problems = rollout.keyed_verdict(
        answered=100, counter=97, unanswered=2)
    assert lost == 3
    assert problems == ["2 keys never answered 200 (unknown)",
                        "3 increments lost"]
    _, p = rollout.parse_args(["--idempotent-retries"])
    assert p.idempotent_retries
    assert not rollout.parse_args([])[1].idempotent_retries


class FlakyService(http.server.BaseHTTPRequestHandler):
    """Answers each key's first try with a closed connection (the outcome
    unseen), its second with a 503, and the third with 200; counts every
    key it got, and every key seen with another's header."""
    protocol_version = "HTTP/1.1"
    tries = collections.Counter()
    lock = threading.Lock()

    def do_GET(self):
        key = self.headers.get("Idempotency-Key")
        with self.lock:
            self.tries[key] += 1
            n = self.tries[key]
        if n == 1:
            self.close_connection = True
            return  # no response at all
        status = 503 if n == 2 else 200
        self.send_response(status)
        self.send_header("Content-Length", "3")
        if n > 3:
            self.send_header("Idempotency-Replayed", "true")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("keep_alive", [False, True])
def test_keyed_load_retries_every_key_until_it_is_answered(keep_alive):
    """Every key has a fresh Idempotency-Key, and each is sent again, with
    the same key, after a lost answer or a 503, until a 200."""
    FlakyService.tries = collections.Counter()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyService)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        load = keyed.KeyedLoad(server.server_address[1], requests=40,
                               workers=4, rate=400, keep_alive=keep_alive,
                               timeout=5).start()
        assert load.wait(30) == 0
    finally:
        server.shutdown()
        server.server_close()
    s = load.summary()
    assert s["keys"] == {"requests": 40, "answered": 40, "replayed": 0,
                         "unanswered": 0, "attempts": 120, "retried": 40}
    assert len(FlakyService.tries) == 40  # one key per request
    assert set(FlakyService.tries.values()) == {3}
    assert s["statuses"] == {503: 40, 200: 40}
    assert sum(s["errors"].values()) == 40
