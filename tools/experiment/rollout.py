#!/usr/bin/env python3
"""The rolling-update experiment: constant-rate load through a Service while
a Deployment rolls, then the verdict: the Redis counter must equal the number
of 200 responses, and no request may have failed.

Real parts only:
  - a private redis-server;
  - HAProxy in TCP mode as the Service (`retries 0`, no redispatch: like
    kube-proxy's DNAT, a refused connection is the client's error), driven
    through its runtime API socket; servers are added and taken out the way
    the endpoint controller adds and removes endpoints, with no health checks;
  - `hey` as the constant-rate client (its -q is per worker: rate = workers
    x q);
  - replicas of gracefuld as processes of the built binary, or as podman
    containers of the project's image (`--containers`).

The rollout mirrors a Deployment with maxSurge 1, maxUnavailable 0, and the
kubelet: for each old replica, start a new one; once its /readyz is 200, add
it to HAProxy; then, concurrently, (a) after ENDPOINT_LAG take the old one
out of HAProxy (`set server ... state maint`: established connections live
on, as conntrack flows do), and (b) run its preStop sleep, send SIGTERM
(`podman stop -t` for containers) and SIGKILL when the grace period, counted
from the deletion as Kubernetes does, runs out. Then the next replica.

After the load, the surviving replicas are stopped gracefully (with no
deadline but their own SHUTDOWN_TIMEOUT_MS) so that everything they accepted
reaches Redis, and the counter is read.

    tools/experiment/rollout.py --bin build/gracefuld            # the classic run
    tools/experiment/rollout.py --containers --image gracefuld:dev
    tools/experiment/rollout.py --help

Prints a table for people and, last, one JSON line. Exit status: 0 when
nothing was lost and nothing failed, 1 when something was, 2 when the
experiment could not be run. Every process and container it started is
stopped on the way out, also on SIGINT, SIGTERM or SIGHUP.
"""

import argparse
import contextlib
import dataclasses
import http.client
import json
import math
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = (os.environ.get("GRACEFULD_SOURCE_DIR")
              or os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(SOURCE_DIR, "test", "lib"))
sys.path.insert(0, HERE)

from gracefuld_testlib import (LineReader, Redis, events, parse_event,  # noqa: E402
                               scrape_metrics, stop_process, wait_event)

CONTAINERS_CONF = os.path.join(SOURCE_DIR, "test", "container",
                               "containers.conf")
SANITIZER_MARKS = ("Sanitizer", "runtime error:", "LeakSanitizer")
# The readiness probe's periodSeconds in k8s/deployment.yaml (a test keeps
# the two in step).
MANIFEST_PROBE_PERIOD = 1.0
# The report's time buckets and the sampling of /metrics and the counter.
BUCKET_S = 0.1
SAMPLE_S = 0.25
DURABILITIES = ("memory", "redis")
# gracefuld's LEASE_MS default: a killed replica's journal is adopted once
# its lease lapsed.
DEFAULT_LEASE_MS = 3000


# A stop signal raises KeyboardInterrupt in the main thread, which then
# stops everything it started. Between starting a process and recording it
# where the cleanup looks, the signal is held, or the process would be
# missed; _held counts the main thread's open held_signals() blocks.
_held = {"depth": 0, "pending": None}


@contextlib.contextmanager
def held_signals():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if _held["depth"] == 0 and _held["pending"]:
            name, _held["pending"] = _held["pending"], None
            raise KeyboardInterrupt(name)


class HarnessError(Exception):
    """The experiment could not be run (as opposed to: it ran and failed)."""


class Aborted(Exception):
    """A signal asked the experiment to stop."""


# -- parameters --------------------------------------------------------------

@dataclasses.dataclass
class Params:
    """One experiment. The defaults are the classic one: 1000 requests at 25
    per second (40 s), keep-alive off, three replicas rolled once, halfway,
    with a 1 s endpoint lag covered by a 2 s SHUTDOWN_DELAY_MS."""

    requests: int = 1000
    rate: float = 25.0
    workers: int = 5
    keep_alive: bool = False
    replicas: int = 3
    rollouts: int = 1
    first_rollout: float = None  # s after the load starts; None: centred
    spacing: float = 5.0         # s between rollout starts
    endpoint_lag: float = 1.0    # s from deletion to removal from HAProxy
    prestop: float = 0.0         # s of preStop sleep before SIGTERM
    grace: float = 30.0          # terminationGracePeriodSeconds
    incr_delay_ms: int = 5000
    shutdown_delay_ms: int = 2000
    shutdown_timeout_ms: int = None  # None: gracefuld's default
    containers: bool = False
    image: str = "localhost/gracefuld:e2e"
    binary: str = None           # None: $GRACEFULD_BIN
    request_timeout: float = 10.0  # hey -t
    ready_timeout: float = 30.0
    # The kubelet's readiness probe period: a new replica is ready at the
    # first probe after its /readyz turned 200. 0: as soon as it is.
    probe_period: float = MANIFEST_PROBE_PERIOD
    # gracefuld's DURABILITY: memory (its default, not passed) or redis.
    durability: str = "memory"
    lease_ms: int = None          # LEASE_MS; None: gracefuld's default
    redis_timeout_ms: int = None  # REDIS_TIMEOUT_MS; None: its default
    # Faults while the load runs. crash: replicas SIGKILLed outside any
    # rollout, each replaced as a ReplicaSet would.
    crash: int = 0
    redis_kill_every: float = 0.0   # s between CLIENT KILL TYPE normal
    redis_pause_s: float = 0.0      # SIGSTOP the redis-server this long,
    redis_pause_at: float = None    # from this many s into the load
    redis_restart_at: float = None  # SIGKILL and restart it then
    redis_appendfsync: str = None   # appendonly yes with this fsync policy

    @property
    def duration(self):
        return self.requests / self.rate

    def schedule(self):
        """When each rollout starts, in seconds after the load starts."""
        first = self.first_rollout
        if first is None:
            first = max(1.0, (self.duration
                              - (self.rollouts - 1) * self.spacing) / 2)
        return [first + i * self.spacing for i in range(self.rollouts)]

    def validate(self):
        if self.requests < 1 or self.rate <= 0 or self.workers < 1:
            raise HarnessError("requests, rate and workers must be positive")
        if self.requests % self.workers:
            raise HarnessError(
                f"requests ({self.requests}) must be a multiple of workers "
                f"({self.workers}): hey gives each worker requests/workers")
        if self.requests < self.workers:
            raise HarnessError("fewer requests than workers")
        if self.replicas < 1 or self.rollouts < 0:
            raise HarnessError("replicas >= 1 and rollouts >= 0 please")
        if self.durability not in DURABILITIES:
            raise HarnessError(f"durability is one of {DURABILITIES}")
        if self.crash < 0:
            raise HarnessError("crash must not be negative")
        if self.redis_restart_at is not None and not self.redis_appendfsync:
            raise HarnessError(
                "--redis-restart-at needs --redis-appendfsync: without "
                "persistence a restarted Redis has lost the counter")
        for name in ("endpoint_lag", "prestop", "grace", "spacing",
                     "probe_period", "redis_kill_every", "redis_pause_s"):
            if getattr(self, name) < 0:
                raise HarnessError(f"{name} must not be negative")
        if not self.containers:
            self.binary = self.binary or os.environ.get("GRACEFULD_BIN")
            if not self.binary or not os.access(self.binary, os.X_OK):
                raise HarnessError(
                    "process replicas need the gracefuld binary: --bin PATH "
                    f"or GRACEFULD_BIN (got {self.binary!r})")
        tools = ["haproxy", "hey", "redis-server", "redis-cli"]
        if self.containers:
            tools.append("podman")
        missing = [t for t in tools if not shutil.which(t)]
        if missing:
            raise HarnessError(f"missing {', '.join(missing)} "
                               "(scripts/bootstrap test installs them)")

    def gracefuld_env(self):
        env = {
            "INCR_DELAY_MS": str(self.incr_delay_ms),
            "SHUTDOWN_DELAY_MS": str(self.shutdown_delay_ms),
            "LOG_FORMAT": "json",
            "TERMINATION_LOG": "",
        }
        if self.shutdown_timeout_ms is not None:
            env["SHUTDOWN_TIMEOUT_MS"] = str(self.shutdown_timeout_ms)
        # Only when asked: a binary without the setting runs memory mode.
        if self.durability != "memory":
            env["DURABILITY"] = self.durability
        if self.lease_ms is not None:
            env["LEASE_MS"] = str(self.lease_ms)
        if self.redis_timeout_ms is not None:
            env["REDIS_TIMEOUT_MS"] = str(self.redis_timeout_ms)
        return env

    def lease_s(self):
        return (self.lease_ms if self.lease_ms is not None
                else DEFAULT_LEASE_MS) / 1000

    def crash_times(self):
        """When each crash comes, s after the load started: spread evenly
        over the load (a crash due during a rollout waits for its end)."""
        return [self.duration * (i + 1) / (self.crash + 1)
                for i in range(self.crash)]


# -- small helpers -----------------------------------------------------------

_ports_taken = set()
_ports_lock = threading.Lock()


def pick_port():
    """A free port below the ephemeral range. A port from bind(0) comes from
    that range, where the load's own client connections (hey to HAProxy,
    HAProxy to the replicas) take their source ports: one of them could
    take it between our check and the replica's bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(2048, min(low, 32768))
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(1024 + (low - 1024) // 4, low)
        with _ports_lock:
            if port in _ports_taken:
                continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        with _ports_lock:
            _ports_taken.add(port)
        return port
    raise HarnessError("no free port below the ephemeral range")


def redis_get(sock, key):
    """GET key over an open RESP connection: an int (0 when unset)."""
    k = key.encode()
    sock.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k))
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("redis closed the connection")
        data += chunk
        if data.startswith(b"$-1\r\n"):
            return 0
        head, sep, rest = data.partition(b"\r\n")
        if not head.startswith(b"$"):
            raise ValueError(f"redis: {data[:80]!r}")
        if sep and len(rest) >= int(head[1:]) + 2:
            return int(rest[:int(head[1:])] or 0)


def fmt_t(t):
    return "-" if t is None else f"{t:6.2f}"


class TimedSink:
    """A replica's log file that also keeps each line with the harness time
    it arrived at, for the report's phases (the log's own stamps are wall
    clock, and their format is the service's business)."""

    def __init__(self, path, clock):
        self._f = open(path, "a")
        self._clock = clock
        self.lines = []  # (t, line)

    def write(self, text):
        self.lines.append((round(self._clock(), 3), text.rstrip("\n")))
        self._f.write(text)

    def flush(self):
        self._f.flush()

    def close(self):
        self._f.close()


def log_events(timed_lines):
    """(t, event) for each JSON object line, event the parsed object."""
    out = []
    for t, line in timed_lines:
        obj = parse_event(line)
        if obj is not None:
            out.append((t, obj))
    return out


METRIC_PENDING = "gracefuld_increments_pending"


# -- the Service -------------------------------------------------------------

class HAProxy:
    """HAProxy in TCP mode with one empty backend; the harness adds and
    removes servers through the runtime API."""

    CONFIG = """\
global
    stats socket {sock} mode 600 level admin
    nbthread 1
    maxconn {maxconn}
    # One line per connection, for the report: when it was accepted, the
    # server, the timers, the bytes, how it ended and the status line's code.
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    log-format "conn %Ts.%ms %s %Tw/%Tc/%Tt %B %U %ts %[var(txn.status)]"
    # As kube-proxy's DNAT: one backend per connection, no second try, a
    # refused connection is the client's problem.
    retries 0
    no option redispatch
    timeout connect 5s
    timeout client 10m
    timeout server 10m

frontend service
    bind 127.0.0.1:{port}
    default_backend endpoints

backend endpoints
    balance roundrobin
    # Reads the status code of the first response on each connection; the
    # response waits for nothing but its own first 12 bytes.
    tcp-response inspect-delay 10s
    tcp-response content set-var(txn.status) res.payload(9,3) if {{ res.len ge 12 }}
    tcp-response content accept if {{ res.len ge 12 }}
"""
    # What HAProxy needs besides two descriptors per connection.
    FD_OVERHEAD = 64
    MAXCONN_CAP = 4000

    def __init__(self, workdir, connections_needed=0):
        self.dir = workdir
        self.maxconn, self.nofile = self.size(connections_needed)
        self.port = pick_port()
        self.sock = os.path.join(workdir, "haproxy.sock")
        self.cfg = os.path.join(workdir, "haproxy.cfg")
        self.log = os.path.join(workdir, "haproxy.log")
        self.proc = None
        self._lock = threading.Lock()

    @classmethod
    def size(cls, needed):
        """maxconn from the hard limit on open files that HAProxy will
        inherit (it raises its soft limit to 2 x maxconn + a few itself, and
        refuses to start when the hard one is lower); HarnessError when that
        leaves fewer connections than the load needs."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard == resource.RLIM_INFINITY:
            return cls.MAXCONN_CAP, hard
        maxconn = min(cls.MAXCONN_CAP, (hard - cls.FD_OVERHEAD) // 2)
        if maxconn < needed:
            raise HarnessError(
                f"the hard limit on open files is {hard}, which lets HAProxy "
                f"hold {max(maxconn, 0)} connections; the load asks for "
                f"{needed}: raise it (ulimit -Hn) or use fewer --workers")
        return maxconn, hard

    def start(self, timeout=30):
        with open(self.cfg, "w") as f:
            f.write(self.CONFIG.format(sock=self.sock, port=self.port,
                                       maxconn=self.maxconn))
        # Master-worker mode with systemd's readiness protocol: the master,
        # our child, sends READY=1 once the listener and the admin socket
        # are bound, which is the event we wait for.
        notify_path = os.path.join(self.dir, "haproxy.notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            notify.bind(notify_path)
            env = dict(os.environ, NOTIFY_SOCKET=notify_path)
            with open(self.log, "ab") as log, held_signals():
                self.proc = subprocess.Popen(
                    ["haproxy", "-Ws", "-f", self.cfg], env=env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True)
            exited = os.pidfd_open(self.proc.pid)
            try:
                deadline = time.monotonic() + timeout
                while True:
                    left = deadline - time.monotonic()
                    r, _, _ = select.select([notify, exited], [], [],
                                            max(0, left))
                    if notify in r and b"READY=1" in notify.recv(4096):
                        return self
                    if exited in r or left <= 0:
                        break
            finally:
                os.close(exited)
        finally:
            notify.close()
        self.stop()
        with open(self.log) as f:
            raise HarnessError(f"haproxy did not start:\n{f.read()}")

    def command(self, line):
        with self._lock:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(self.sock)
                s.sendall(line.encode() + b"\n")
                out = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
        return out.decode("utf-8", "replace").strip()

    def add(self, name, port):
        out = self.command(f"add server endpoints/{name} 127.0.0.1:{port}")
        if "New server registered" not in out:
            raise HarnessError(f"haproxy add server {name}: {out}")
        # Dynamic servers start in maintenance.
        out = self.command(f"enable server endpoints/{name}")
        if out:
            raise HarnessError(f"haproxy enable server {name}: {out}")

    def maint(self, name):
        """Out of the rotation; established sessions go on."""
        out = self.command(f"set server endpoints/{name} state maint")
        if out:
            raise HarnessError(f"haproxy maint {name}: {out}")

    def delete(self, name):
        """Drops a server in maintenance once it has no sessions left;
        returns whether it did."""
        return "Server deleted" in self.command(
            f"del server endpoints/{name}")

    def stop(self):
        stop_process(self.proc)  # the master stops its worker, then exits

    def connections(self, wall_t0):
        """The connections HAProxy logged: (t, server, outcome), t in s
        after wall_t0 (the load's start, time.time()), by acceptance."""
        out = []
        try:
            with open(self.log, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return out
        for line in lines:
            m = CONN_LINE.match(line)
            if m:
                out.append((float(m.group("ts")) - wall_t0, m.group("srv"),
                            connection_outcome(m.group("status"),
                                               m.group("term"))))
        return out


CONN_LINE = re.compile(
    r"conn (?P<ts>\d+\.\d+) (?P<srv>\S+) (?P<timers>\S+) (?P<bytes>-?\d+) "
    r"(?P<up>-?\d+) (?P<term>\S+) (?P<status>\S+)\s*$")
# The outcomes the report stacks, in order.
OUTCOMES = ("200", "refused", "reset", "timeout", "5xx", "other")


def connection_outcome(status, term):
    """A connection as the Service saw it: the status code of its first
    response, or, without one, how it ended (HAProxy's termination state:
    S? the server refused or aborted it, C/c/s? a side gave up waiting)."""
    if status.isdigit():
        code = int(status)
        if code == 200:
            return "200"
        return "5xx" if 500 <= code < 600 else "other"
    if term.startswith("SC"):
        return "refused"
    if term[:1] == "S":
        return "reset"
    if term[:1] in ("C", "c", "s"):
        return "timeout"
    return "other"


# -- replicas ----------------------------------------------------------------

class Replica:
    """One pod's container: a gracefuld, its log, and its timeline (seconds
    after the load started)."""

    def __init__(self, exp, name, role):
        self.exp = exp
        self.name = name
        self.role = role
        self.port = pick_port()
        self.proc = None
        self.log = None
        self.log_path = os.path.join(exp.workdir, f"{name}.log")
        self.started_at = self.ready_at = None
        self.deleted_at = self.unrouted_at = None
        self.sigterm_at = self.exited_at = None
        self.returncode = None
        self.pending = []            # (t, increments pending) from /metrics
        self.killed = False          # SIGKILL at the end of the grace period
        self.crashed_at = None       # SIGKILL outside any rollout
        self.stopped_at_end = False  # survivor, stopped after the load
        self.early_exit = False      # exited before anyone asked it to

    # subclasses: _popen(), _sigterm(), _sigkill(), _stop_with_grace(secs)

    def env(self):
        env = self.exp.p.gracefuld_env()
        env["LISTEN_ADDR"] = f"127.0.0.1:{self.port}"
        env["REDIS_ADDR"] = self.exp.redis.addr
        return env

    def mark(self, kind, detail="", t=None):
        """One lifecycle event of this replica, for the report."""
        self.exp.lifecycle.append(
            (round(self.exp.now() if t is None else t, 3), self.name, kind,
             detail))

    def start(self):
        self.started_at = self.exp.now()
        with held_signals():
            self.proc = self._popen()
        self._sink = TimedSink(self.log_path, self.exp.now)
        self.log = LineReader(self.proc.stderr, self._sink)
        self.mark("started", t=self.started_at)
        return self

    def running(self):
        return (self.proc is not None and self.exited_at is None
                and self.proc.poll() is None)

    def sample(self):
        """Increments pending now, from /metrics; None when it does not
        answer (its listener is closed while it drains)."""
        samples = scrape_metrics(self.port, timeout=0.5)
        pending = samples.get(METRIC_PENDING) if samples else None
        if pending is None:
            return None
        self.pending.append((round(self.exp.now(), 3), int(pending)))
        return self.pending[-1][1]

    def lifecycle_from_log(self):
        """The shutdown phases and signals it logged, as lifecycle events;
        read by event name and field, whatever else the line holds."""
        out = []
        for t, ev in log_events(self._sink.lines if self.log else []):
            name = ev.get("event")
            if name == "phase":
                phase = ev.get("phase") or ev.get("to") or ev.get("name")
                if phase:
                    out.append((t, self.name, "phase", str(phase)))
                if isinstance(ev.get("pending"), int):
                    self.pending.append((t, ev["pending"]))
            elif name == "signal" and isinstance(ev.get("pending"), int):
                self.pending.append((t, ev["pending"]))
        return out

    def wait_event(self, event, timeout):
        return wait_event(self.log, event, timeout)

    def wait_ready(self, timeout):
        """Ready as the kubelet sees it: /readyz answers 200. gracefuld
        logs redis_up at the moment that starts to be true, so we await the
        line, then probe to confirm (and probe on, kubelet-like, if not)."""
        deadline = time.monotonic() + timeout
        period = self.exp.p.probe_period
        if period <= 0:
            try:
                self.wait_event("redis_up", timeout)
            except TimeoutError as e:
                raise HarnessError(f"{self.name} did not reach Redis:\n{e}")
        probes = 0
        while True:
            if period > 0:
                # The kubelet's probe worker starts with the pod, before its
                # container runs, and ticks every period: the first probe of
                # a running container comes within a period of its start
                # (taken here as the whole period), whatever its log says.
                probes += 1
                self.exp.pause_until(self.started_at + probes * period)
            status = self.probe("/readyz")
            if status == 200:
                self.ready_at = self.exp.now()
                self.mark("ready", f"/readyz 200 at probe {probes}"
                          if period > 0 else "/readyz 200")
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise HarnessError(
                    f"{self.name} not ready (/readyz {status}); log:\n"
                    + "\n".join(self.log.lines[-20:]))
            if period <= 0:
                self.exp.pause(0.1)

    def probe(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except OSError as e:
            return f"{type(e).__name__}"
        finally:
            conn.close()

    def _reap(self):
        self.returncode = self.proc.wait()
        self.exited_at = self.exp.now()
        self.log.join()
        self._sink.close()
        s = self.summary() or {}
        report = " ".join(f"{k}={s[k]}" for k in
                          ("reason", "accepted", "done", "abandoned",
                           "handed_over")
                          if k in s)
        if not self.killed and isinstance(s.get("abandoned"), int):
            # What it left pending when it exited: what it abandoned.
            self.pending.append((round(self.exited_at, 3), s["abandoned"]))
        if self.crashed_at is not None:
            self.mark("sigkill", "crash", t=self.exited_at)
        elif self.killed:
            self.mark("sigkill", "grace period over" if self.sigterm_at
                      is not None else "no grace period", t=self.exited_at)
        self.mark("exit", f"{self.status_text()} {report}".strip(),
                  t=self.exited_at)

    def terminate_pod(self, deleted_at):
        """The kubelet's part after the deletion: preStop, SIGTERM, SIGKILL
        when the grace period (counted from the deletion) is over."""
        p = self.exp.p
        if self.proc.poll() is not None:
            self.early_exit = True
            self._reap()
            return
        self.exp.pause_until(deleted_at + p.prestop)
        remaining = p.grace - (self.exp.now() - deleted_at)
        self._stop_with_grace(remaining)

    def stop_gracefully(self, timeout):
        """After the experiment: SIGTERM and wait for the drain."""
        if self.proc.poll() is not None:
            self.early_exit = True
            self._reap()
            return
        self.stopped_at_end = True
        self._stop_with_grace(timeout)

    def crash(self):
        """SIGKILL now, as an OOM kill or a node loss would."""
        self.crashed_at = self.exp.now()
        self.killed = True
        self._sigkill()
        self._reap()

    def force_stop(self):
        """Cleanup on the way out: nothing graceful."""
        if self.proc is not None and self.proc.poll() is None:
            self._sigkill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    # -- what the run saw --------------------------------------------------

    def summary(self):
        for ev in reversed(events(self.log.lines if self.log else [])):
            if ev.get("event") == "exit":
                return ev
        return None

    def status_text(self):
        rc = self.returncode
        if rc is None:
            return "running"
        if self.killed or rc in (-signal.SIGKILL, 128 + signal.SIGKILL):
            return "SIGKILL"
        if rc < 0:
            return signal.Signals(-rc).name
        return f"exit {rc}"

    def sanitizer_reports(self):
        return [line for line in (self.log.lines if self.log else [])
                if any(m in line for m in SANITIZER_MARKS)]

    def report(self):
        s = self.summary() or {}
        drain = (None if self.sigterm_at is None or self.exited_at is None
                 else round(self.exited_at - self.sigterm_at, 3))
        r3 = (lambda t: None if t is None else round(t, 3))
        return {
            "name": self.name, "role": self.role, "port": self.port,
            "started": r3(self.started_at), "ready": r3(self.ready_at),
            "deleted": r3(self.deleted_at),
            "unrouted": r3(self.unrouted_at),
            "crashed": r3(self.crashed_at),
            "sigterm": r3(self.sigterm_at), "exited": r3(self.exited_at),
            "status": self.status_text(), "exit_code": self.returncode,
            "killed": self.killed, "stopped_after_load": self.stopped_at_end,
            "early_exit": self.early_exit, "drain_s": drain,
            "accepted": s.get("accepted"), "done": s.get("done"),
            "abandoned": s.get("abandoned"), "reason": s.get("reason"),
            "handed_over": s.get("handed_over"),
            "adopted": sum(ev.get("increments", 0) for ev in events(
                self.log.lines if self.log else [])
                if ev.get("event") == "journal_adopted"
                and isinstance(ev.get("increments"), int)),
        }


class ProcessReplica(Replica):
    kind = "process"

    def _popen(self):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                env[k] = os.environ[k]
        env.update(self.env())
        # A session of its own: a Ctrl+C at the terminal reaches the harness,
        # which stops everything in order, and not every replica at once.
        return subprocess.Popen([self.exp.p.binary], env=env,
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE,
                                start_new_session=True)

    def _sigkill(self):
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass

    def _stop_with_grace(self, remaining):
        if remaining > 0:
            self.sigterm_at = self.exp.now()
            self.proc.send_signal(signal.SIGTERM)
            self.mark("sigterm", t=self.sigterm_at)
            try:
                self.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                self.killed = True
                self._sigkill()
        else:
            self.killed = True  # no grace left: SIGKILL at once
            self._sigkill()
        self._reap()


class ContainerReplica(Replica):
    """`podman run` attached: the container's stderr is our log and the
    client's exit status is the container's."""

    kind = "container"

    def __init__(self, exp, name, role):
        super().__init__(exp, name, role)
        self.cname = f"{exp.container_prefix}{name}"

    def _popen(self):
        args = ["podman", "run", "--rm", "--name", self.cname,
                "--network", "host", "--read-only", "--cap-drop", "ALL",
                "--stop-signal", "SIGTERM", "--log-driver", "none"]
        for k, v in self.env().items():
            args += ["-e", f"{k}={v}"]
        args.append(self.exp.p.image)
        return subprocess.Popen(args, env=self.exp.podman_env(),
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE,
                                start_new_session=True)

    def _podman(self, *args, timeout=120):
        return subprocess.run(["podman", *args], env=self.exp.podman_env(),
                              stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def _sigkill(self):
        self._podman("rm", "-f", "-t", "0", self.cname)

    def _stop_with_grace(self, remaining):
        # podman stop -t N: the image's STOPSIGNAL (SIGTERM), then SIGKILL
        # after N whole seconds; it returns once the container is gone.
        secs = max(0, math.ceil(remaining))
        self.sigterm_at = self.exp.now()
        self.mark("sigterm", f"podman stop -t {secs}", t=self.sigterm_at)
        out = self._podman("stop", "-t", str(secs), self.cname,
                           timeout=secs + 60)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.cname}: podman run did not return "
                               f"after podman stop: {out.stderr}")
        self.killed = self.proc.returncode == 128 + signal.SIGKILL
        self._reap()


# -- the load ----------------------------------------------------------------

ERROR_KINDS = (
    ("refused", re.compile(r"connection refused")),
    ("reset", re.compile(r"connection reset")),
    ("timeout", re.compile(r"Timeout|timeout|deadline exceeded")),
    # The connection closed before a response: what a client of HAProxy
    # (or of kube-proxy) sees when the backend refused or vanished.
    ("closed", re.compile(r"EOF|server closed|broken pipe")),
)


def error_kind(message):
    for kind, rx in ERROR_KINDS:
        if rx.search(message):
            return kind
    return "other"


# hey's errors that happened before the request was sent: the connection
# to the Service was never made. Every other error (EOF, a reset, a timeout
# awaiting the response, a closed idle connection) came after the request
# may have been written, with no response read: Redis may hold it.
UNSENT = re.compile(r"\bdial tcp\b|connect: ")


def unknown_outcome(message):
    return not UNSENT.search(message)


def count_unknown(errors):
    """Requests whose outcome the client cannot know, from hey's errors."""
    return sum(n for msg, n in errors.items() if unknown_outcome(msg))


# The verdict's rules, as the JSON result and the report state them.
STRICT_RULE = "lost == 0 and extra == 0 and failed == 0"
KILLED_RULE = "lost == 0 and extra <= unknown"


def verdict(ok, failed, counter, unknown, killed):
    """(rule, lost, extra, problems) of the counts. Where a replica was
    SIGKILLed, requests it held broke with no response (unknown, which
    Redis may hold): nothing may be lost, and at most those may count
    more. Elsewhere the counter equals the 200s and nothing failed."""
    lost, extra = max(0, ok - counter), max(0, counter - ok)
    rule = KILLED_RULE if killed else STRICT_RULE
    problems = []
    if failed and not killed:
        problems.append(f"{failed} requests failed")
    if lost:
        problems.append(f"{lost} increments lost")
    if extra and not killed:
        problems.append(f"{extra} increments counted twice")
    elif extra > unknown:
        problems.append(f"{extra} increments counted more than the "
                        f"{unknown} requests of unknown outcome")
    return rule, lost, extra, problems


def parse_hey(text):
    """Status codes and errors from hey's summary (its CSV output lists
    successful requests only)."""
    statuses, errors = {}, {}
    section = None
    for line in text.splitlines():
        if line.startswith("Status code distribution:"):
            section = "status"
            continue
        if line.startswith("Error distribution:"):
            section = "error"
            continue
        if not line.startswith(" "):
            section = None if line.strip() else section
            continue
        m = re.match(r"\s*\[(\d+)\]\s+(.*)$", line)
        if not m:
            continue
        if section == "status":
            n = re.match(r"(\d+) responses", m.group(2))
            if n:
                statuses[int(m.group(1))] = int(n.group(1))
        elif section == "error":
            errors[m.group(2).strip()] = int(m.group(1))
    rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
    total = re.search(r"Total:\s*([\d.]+) secs", text)
    return {
        "statuses": statuses, "errors": errors,
        "rps": float(rps.group(1)) if rps else None,
        "total_s": float(total.group(1)) if total else None,
    }


# -- the experiment ----------------------------------------------------------

class Experiment:
    def __init__(self, params, workdir=None, out=None):
        self.p = params
        self.out = out
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="gracefuld-e2e-")
        os.makedirs(self.workdir, exist_ok=True)
        self.container_prefix = f"gracefuld-e2e-{os.getpid()}-"
        self.t0 = time.monotonic()
        self.abort = threading.Event()
        self.redis = None
        self.lb = None
        self.hey = None
        self.replicas = []     # every replica ever started
        self.serving = []      # the Deployment's current replicas
        self.terminations = []
        self.rollout_times = []
        # (t, replica, kind, detail): started, ready, deleted, unrouted,
        # sigterm, phase, sigkill, exit; the report draws every kind.
        self.lifecycle = []
        self.counter_samples = []  # (t, the Redis counter)
        self.redis_events = []     # (t, kind, detail): the Redis faults
        self.load_done = threading.Event()
        self.redis_stopped = False  # SIGSTOPped, to be continued
        self.wall_t0 = time.time()
        self.errors = []       # exceptions from background threads
        self._seq = 0
        self._lock = threading.Lock()

    # -- time ------------------------------------------------------------

    def now(self):
        return time.monotonic() - self.t0

    def pause(self, secs):
        if secs > 0 and self.abort.wait(secs):
            raise Aborted()
        if self.abort.is_set():
            raise Aborted()

    def pause_until(self, t):
        self.pause(t - self.now())

    def say(self, msg):
        if self.out:
            print(f"[{self.now():7.2f}] {msg}", file=self.out, flush=True)

    def podman_env(self):
        env = dict(os.environ)
        env.setdefault("CONTAINERS_CONF", CONTAINERS_CONF)
        return env

    # -- the pieces ------------------------------------------------------

    def new_replica(self, role, wait=True):
        with self._lock:
            self._seq += 1
            name = f"r{self._seq}"
        cls = ContainerReplica if self.p.containers else ProcessReplica
        r = cls(self, name, role)
        self.replicas.append(r)
        r.start()
        if wait:
            r.wait_ready(self.p.ready_timeout)
        return r

    def _background(self, target, *args):
        def run():
            try:
                target(*args)
            except Aborted:
                pass
            except BaseException as e:  # reported, and fails the run
                self.errors.append(f"{target.__name__}: {e!r}")
                self.abort.set()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def delete_pod(self, r):
        """A Deployment scaling down: the endpoint goes after the lag,
        the kubelet stops the container at the same time."""
        r.deleted_at = self.now()
        r.mark("deleted", t=r.deleted_at)
        self.say(f"{r.name}: deleted (endpoint out in {self.p.endpoint_lag}s"
                 f", preStop {self.p.prestop}s, grace {self.p.grace}s)")

        def kubelet():
            r.terminate_pod(r.deleted_at)
            self.say(f"{r.name}: {r.status_text()}"
                     + (f" after {r.exited_at - r.sigterm_at:.2f}s"
                        if r.sigterm_at is not None else ""))

        self.unroute_later(r, r.deleted_at)
        self.terminations.append(self._background(kubelet))

    def unroute_later(self, r, since):
        """The endpoint controller: r leaves the Service one endpoint lag
        after since (its deletion, or its death)."""
        def unroute():
            self.pause_until(since + self.p.endpoint_lag)
            self.lb.maint(r.name)
            r.unrouted_at = self.now()
            r.mark("unrouted", "out of the Service", t=r.unrouted_at)
            self.say(f"{r.name}: out of the Service")
        self.terminations.append(self._background(unroute))

    def rollout(self, number):
        start = self.now()
        self.say(f"rollout {number}: begins")
        for old in list(self.serving):
            new = self.new_replica(f"rollout {number}")
            self.lb.add(new.name, new.port)
            self.say(f"{new.name}: ready on :{new.port} after "
                     f"{new.ready_at - new.started_at:.2f}s, in the Service")
            self.serving[self.serving.index(old)] = new
            self.delete_pod(old)
        self.rollout_times.append((round(start, 3), round(self.now(), 3)))
        self.say(f"rollout {number}: all replicas replaced")

    def crash(self, number):
        """A replica dies (an OOM kill, a node loss): SIGKILL, and, as a
        ReplicaSet would, a replacement that joins the Service once it is
        ready; the endpoint goes one endpoint lag after the death."""
        old = random.choice(self.serving)
        self.say(f"crash {number}: SIGKILL {old.name}")
        old.crash()
        self.unroute_later(old, old.crashed_at)
        new = self.new_replica(f"crash {number}")
        new.mark("replacement", f"for {old.name}", t=new.started_at)
        self.lb.add(new.name, new.port)
        self.serving[self.serving.index(old)] = new
        self.say(f"{new.name}: replaces {old.name}, ready on :{new.port} "
                 f"after {new.ready_at - new.started_at:.2f}s, in the "
                 "Service")

    def await_adoptions(self):
        """Journal mode: what a killed replica held reaches the counter
        only once a live replica adopted its journal, after its lease
        lapsed. Before the last replicas are stopped, await one adoption
        per killed replica (a `journal_adopted` line naming it); a replica
        killed with an empty journal leaves none to adopt, hence the
        bound: two leases after the last kill."""
        p = self.p
        killed = [r for r in self.replicas if r.killed]
        if p.durability == "memory" or not killed:
            return
        deadline = (max(r.exited_at for r in killed)
                    + 2 * p.lease_s() + 2.0)
        self.say(f"journals: awaiting the adoption of {len(killed)} "
                 "killed replicas' journals")
        while True:
            seen = {json.dumps(ev.get("from")) for r in self.replicas
                    for ev in events(r.log.lines if r.log else [])
                    if ev.get("event") == "journal_adopted"}
            if len(seen) >= len(killed):
                self.say(f"journals: {len(seen)} adopted")
                return
            if self.now() >= deadline:
                self.say(f"journals: {len(seen)} adopted by "
                         f"{p.lease_s() * 2 + 2:g}s after the last kill")
                return
            self.pause(0.1)

    # -- Redis faults ----------------------------------------------------

    def start_redis_faults(self):
        p = self.p
        steps = []
        if p.redis_kill_every > 0:
            steps.append(self._kill_redis_clients)
        if p.redis_pause_at is not None and p.redis_pause_s > 0:
            steps.append(self._pause_redis)
        if p.redis_restart_at is not None:
            steps.append(self._restart_redis)
        return [self._background(step) for step in steps]

    def _in_load_at(self, t):
        """Waits until t (s after the load started); False when the load
        ended first."""
        while not self.load_done.is_set():
            left = t - self.now()
            if left <= 0:
                return True
            self.load_done.wait(min(left, 0.5))
            if self.abort.is_set():
                raise Aborted()
        return False

    def redis_fault(self, kind, detail=""):
        self.redis_events.append((round(self.now(), 3), kind, detail))
        self.say(f"redis: {kind} {detail}".rstrip())

    def _kill_redis_clients(self):
        n = 1
        while self._in_load_at(n * self.p.redis_kill_every):
            try:
                out = subprocess.run(
                    ["redis-cli", "-p", str(self.redis.port), "CLIENT",
                     "KILL", "TYPE", "normal"], stdin=subprocess.DEVNULL,
                    capture_output=True, text=True, timeout=5)
                detail = (out.stdout.strip() or out.stderr.strip()
                          ) + " killed"
            except subprocess.TimeoutExpired:
                # A paused Redis (--redis-pause) does not answer.
                detail = "no answer"
            self.redis_fault("client_kill", detail)
            n += 1

    def _pause_redis(self):
        p = self.p
        if not self._in_load_at(p.redis_pause_at):
            return
        os.kill(self.redis.proc.pid, signal.SIGSTOP)
        self.redis_stopped = True
        self.redis_fault("sigstop", f"for {p.redis_pause_s:g}s")
        # The outage's length is the fault asked for; an abort ends it
        # early (the cleanup resumes Redis before it stops it).
        self.abort.wait(p.redis_pause_s)
        os.kill(self.redis.proc.pid, signal.SIGCONT)
        self.redis_stopped = False
        self.redis_fault("sigcont")

    def _restart_redis(self):
        if not self._in_load_at(self.p.redis_restart_at):
            return
        proc = self.redis.proc
        proc.kill()
        proc.wait()
        self.redis_fault("sigkill", f"appendfsync {self.p.redis_appendfsync}")
        # The same port and directory: its append-only file comes back.
        self.redis.start()
        self.redis_fault("restarted", "ready to accept connections")

    def start_load(self):
        p = self.p
        q = p.rate / p.workers
        args = ["hey", "-n", str(p.requests), "-c", str(p.workers),
                "-q", f"{q:g}", "-t", f"{p.request_timeout:g}"]
        if not p.keep_alive:
            args.append("-disable-keepalive")
        args.append(f"http://127.0.0.1:{self.lb.port}/incr")
        self.hey_out = os.path.join(self.workdir, "hey.txt")
        self._hey_file = open(self.hey_out, "w")
        with held_signals():
            self.hey = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=self._hey_file,
                                        stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.hey_args = args

    # -- the run ---------------------------------------------------------

    def run(self):
        try:
            return self._run()
        except Aborted:
            # Only a failed background step (or the cleanup) sets abort.
            raise HarnessError("; ".join(self.errors) or "aborted")

    def _run(self):
        p = self.p
        p.validate()
        redis_args = []
        if p.redis_appendfsync:
            redis_args = ["--appendonly", "yes",
                          "--appendfsync", p.redis_appendfsync]
        with held_signals():
            self.redis = Redis(args=redis_args).start()
        # Known to the cleanup before it starts: it may be interrupted
        # while waiting for HAProxy to be ready.
        # Each hey worker holds one connection at a time, and one closing.
        self.lb = HAProxy(self.workdir, 2 * p.workers + 16)
        self.say(f"haproxy: maxconn {self.lb.maxconn} (hard file limit "
                 f"{self.lb.nofile})")
        self.lb.start()
        # The Deployment's first replicas start together, as a new
        # Deployment's pods do, and are probed side by side.
        for _ in range(p.replicas):
            self.serving.append(self.new_replica("initial", wait=False))
        for r in self.serving:
            r.wait_ready(p.ready_timeout)
            self.lb.add(r.name, r.port)
        self.t0 = time.monotonic()  # t = 0: the load starts
        self.wall_t0 = time.time()
        self.lifecycle.clear()
        for r in self.replicas:
            r.started_at = r.ready_at = 0.0
            r.mark("started", "before the load", t=0.0)
            r.mark("ready", "before the load", t=0.0)
        sampling = threading.Event()
        sampler = threading.Thread(target=self._sample, args=(sampling,),
                                   daemon=True)
        sampler.start()
        self.say(f"load: {p.requests} requests at {p.rate:g}/s "
                 f"({p.workers} workers), keep-alive "
                 f"{'on' if p.keep_alive else 'off'}, "
                 f"{p.replicas} {'containers' if p.containers else 'processes'}"
                 f" on :{self.lb.port}")
        self.start_load()
        faults = self.start_redis_faults()
        # Rollouts and crashes in time order, one at a time: a crash due
        # while a rollout runs comes after it, as outside any rollout.
        steps = ([(at, "rollout", i) for i, at in
                  enumerate(p.schedule(), 1)]
                 + [(at, "crash", i) for i, at in
                    enumerate(p.crash_times(), 1)])
        for at, kind, i in sorted(steps):
            self.pause_until(at)
            if kind == "rollout":
                self.rollout(i)
            else:
                self.crash(i)
        while True:
            # The load runs its course; a failing background step ends it.
            try:
                self.hey.wait(1.0)
                break
            except subprocess.TimeoutExpired:
                if self.errors:
                    raise HarnessError("; ".join(self.errors))
        self._hey_file.close()
        load_end = self.now()
        self.load_done.set()
        self.say(f"load: done (hey exit {self.hey.returncode})")
        for t in self.terminations + faults:
            t.join()
        if self.errors:
            raise HarnessError("; ".join(self.errors))
        self.await_adoptions()
        # Survivors drain in parallel so that everything reaches Redis.
        stop_timeout = ((p.shutdown_timeout_ms or 25000) / 1000
                        + p.shutdown_delay_ms / 1000 + 10)
        for r in self.serving:
            self.lb.maint(r.name)
        stops = [self._background(r.stop_gracefully, stop_timeout)
                 for r in self.serving]
        for t in stops:
            t.join()
        if self.errors:
            raise HarnessError("; ".join(self.errors))
        self.say("replicas: all stopped")
        sampling.set()
        sampler.join()
        for r in self.replicas:
            self.lb.delete(r.name)
        counter = self.redis.counter()
        self.counter_samples.append((round(self.now(), 3), counter))
        with open(self.hey_out) as f:
            hey_text = f.read()
        if self.hey.returncode != 0:
            raise HarnessError(f"hey failed ({self.hey.returncode}):\n"
                               f"{hey_text}")
        return self.result(parse_hey(hey_text), counter, load_end)

    def _sample(self, stop):
        """A few times a second: each running replica's pending increments
        and the Redis counter, for the report."""
        redis = None
        while not stop.is_set() and not self.abort.is_set():
            for r in list(self.replicas):
                if r.running():
                    r.sample()
            try:
                if redis is None:
                    redis = socket.create_connection(
                        ("127.0.0.1", self.redis.port), timeout=1)
                self.counter_samples.append(
                    (round(self.now(), 3), redis_get(redis, "counter")))
            except (OSError, ValueError):
                if redis is not None:
                    redis.close()
                redis = None
            stop.wait(SAMPLE_S)
        if redis is not None:
            redis.close()

    def timeline(self):
        """What the report draws: outcomes per bucket (by the time
        HAProxy accepted the connection), the lifecycle events, pending
        increments per replica and the counter over time."""
        conns = self.lb.connections(self.wall_t0)
        end = max([self.now()] + [t for t, _, _ in conns])
        buckets = [{} for _ in range(int(math.ceil(end / BUCKET_S)) + 1)]
        for t, _, outcome in conns:
            b = buckets[min(len(buckets) - 1, max(0, int(t / BUCKET_S)))]
            b[outcome] = b.get(outcome, 0) + 1
        while len(buckets) > 1 and not buckets[-1]:
            buckets.pop()
        events = list(self.lifecycle)
        for r in self.replicas:
            events += r.lifecycle_from_log()
        events.sort(key=lambda e: (e[0], e[1]))
        return {
            "bucket_s": BUCKET_S,
            "outcomes": list(OUTCOMES),
            # Without keep-alive one connection is one request.
            "per_request": not self.p.keep_alive,
            "buckets": buckets,
            "lifecycle": [list(e) for e in events],
            "pending": {r.name: [list(x) for x in sorted(r.pending)]
                        for r in self.replicas},
            "counter": [list(x) for x in self.counter_samples],
        }

    def result(self, hey, counter, load_end):
        p = self.p
        ok = hey["statuses"].get(200, 0)
        failures = {}
        for code, n in hey["statuses"].items():
            if code != 200:
                failures[f"http_{code}"] = failures.get(f"http_{code}", 0) + n
        for msg, n in hey["errors"].items():
            kind = error_kind(msg)
            failures[kind] = failures.get(kind, 0) + n
        failed = sum(failures.values())
        sent = ok + failed
        expected = p.workers * (p.requests // p.workers)
        reports = [r.report() for r in self.replicas]
        sanitizer = {r.name: r.sanitizer_reports() for r in self.replicas
                     if r.sanitizer_reports()}
        accepted = [x["accepted"] for x in reports]
        unknown = count_unknown(hey["errors"])
        killed = any(r.killed for r in self.replicas)
        rule, lost, extra, problems = verdict(ok, failed, counter, unknown,
                                              killed)
        if sent != expected:
            problems.append(f"hey sent {sent} requests, not {expected}")
        for r in self.replicas:
            if r.early_exit:
                problems.append(f"{r.name} exited on its own "
                                f"({r.status_text()})")
        if sanitizer:
            problems.append("sanitizer reports from "
                            + ", ".join(sorted(sanitizer)))
        return {
            "verdict": "fail" if problems else "pass",
            "problems": problems,
            "sent": sent, "ok": ok, "failed": failed, "failures": failures,
            "counter": counter, "lost": lost, "extra": extra,
            "unknown": unknown, "replicas_killed": killed,
            "verdict_rule": rule,
            "redis_events": [list(e) for e in self.redis_events],
            "accepted_by_replicas": (sum(accepted)
                                     if None not in accepted else None),
            "errors": hey["errors"],
            "achieved_rps": hey["rps"], "load_s": round(load_end, 3),
            "rollouts": self.rollout_times,
            "params": dataclasses.asdict(p),
            "replicas": reports,
            "sanitizer": sanitizer,
            "workdir": self.workdir,
            "timeline": self.timeline(),
        }

    # -- the way out -----------------------------------------------------

    def cleanup(self):
        self.abort.set()
        if self.hey is not None and self.hey.poll() is None:
            self.hey.kill()
            self.hey.wait()
        for r in self.replicas:
            r.force_stop()
        if self.p.containers:
            self._remove_containers()
        for r in self.replicas:
            if r.log is not None:
                r.log.join(2)
        if self.lb is not None:
            self.lb.stop()
        if self.redis is not None:
            if self.redis_stopped and self.redis.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.redis.proc.pid, signal.SIGCONT)
            self.redis.cleanup()
        with _ports_lock:
            for r in self.replicas:
                _ports_taken.discard(r.port)
            if self.lb is not None:
                _ports_taken.discard(self.lb.port)

    def _remove_containers(self):
        """Whatever still carries our prefix, even a container whose podman
        run we never saw start."""
        try:
            out = subprocess.run(
                ["podman", "ps", "-a", "--format", "{{.Names}}",
                 "--filter", f"name=^{self.container_prefix}"],
                env=self.podman_env(), capture_output=True, text=True,
                timeout=60).stdout.split()
            if out:
                subprocess.run(["podman", "rm", "-f", "-t", "0", *out],
                               env=self.podman_env(), capture_output=True,
                               timeout=120)
        except (OSError, subprocess.SubprocessError):
            pass

    def remove_workdir(self):
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run(params, workdir=None, out=None):
    """Runs one experiment; returns its result (a dict, see README), or
    raises HarnessError when it could not be run."""
    exp = Experiment(params, workdir, out)
    try:
        return exp.run()
    finally:
        exp.cleanup()


# -- output ------------------------------------------------------------------

def table(res):
    p = res["params"]
    lines = []
    kind = "containers" if p["containers"] else "processes"
    lines.append(
        f"rolling update: {p['replicas']} {kind}, {p['rollouts']} rollout(s)"
        f", {p['requests']} requests at {p['rate']:g}/s, keep-alive "
        f"{'on' if p['keep_alive'] else 'off'}")
    lines.append(
        f"  endpoint lag {p['endpoint_lag']:g}s, preStop {p['prestop']:g}s, "
        f"grace {p['grace']:g}s, INCR_DELAY_MS {p['incr_delay_ms']}, "
        f"SHUTDOWN_DELAY_MS {p['shutdown_delay_ms']}, probe period "
        f"{p.get('probe_period', 0):g}s")
    faults = fault_text(p)
    lines.append(f"  durability {p.get('durability', 'memory')}"
                 + (f", {faults}" if faults else ""))
    lines.append(f"  verdict rule: {res.get('verdict_rule', STRICT_RULE)}")
    lines.append("")
    fails = ", ".join(f"{k} {v}" for k, v in sorted(res["failures"].items()))
    rows = [
        ("sent", res["sent"]),
        ("200 OK", res["ok"]),
        ("failed", f"{res['failed']}" + (f"  ({fails})" if fails else "")),
        ("counter", res["counter"]),
        ("lost", res["lost"]),
        ("extra", res["extra"]),
        ("unknown", f"{res.get('unknown', 0)}  (broke after sending, no "
         "response)"),
        ("achieved rate", f"{res['achieved_rps']:.1f}/s"
         if res["achieved_rps"] else "-"),
    ]
    for k, v in rows:
        lines.append(f"  {k:<14} {v}")
    lines.append("")
    lines.append("  replica  role         ready  deleted  unrouted  SIGTERM"
                 "   exited  status    drain  accepted")
    for r in res["replicas"]:
        drain = "-" if r["drain_s"] is None else f"{r['drain_s']:5.2f}s"
        role = r["role"] + (" *" if r["stopped_after_load"] else "")
        lines.append(
            f"  {r['name']:<8} {role:<12} {fmt_t(r['ready'])} "
            f"{fmt_t(r['deleted']):>8} {fmt_t(r['unrouted']):>9} "
            f"{fmt_t(r['sigterm']):>8} {fmt_t(r['exited']):>8}  "
            f"{r['status']:<9} {drain:>6}  "
            f"{'-' if r['accepted'] is None else r['accepted']:>8}")
    lines.append("  (times in s after the load started; * stopped after the "
                 "load)")
    lines.append("")
    if res["verdict"] != "pass":
        verdict = "FAIL: " + "; ".join(res["problems"])
    elif res.get("verdict_rule") == KILLED_RULE:
        verdict = ("PASS: nothing lost, and no more extra than requests of "
                   "unknown outcome")
    else:
        verdict = "PASS: nothing lost, nothing failed"
    lines.append(verdict)
    return "\n".join(lines)


def fault_text(p):
    """The faults of a run's parameters, for people."""
    out = []
    if p.get("crash"):
        out.append(f"{p['crash']} crash(es)")
    if p.get("redis_kill_every"):
        out.append(f"Redis clients killed every {p['redis_kill_every']:g}s")
    if p.get("redis_pause_at") is not None:
        out.append(f"Redis paused {p['redis_pause_s']:g}s at "
                   f"{p['redis_pause_at']:g}s")
    if p.get("redis_restart_at") is not None:
        out.append(f"Redis killed and restarted at {p['redis_restart_at']:g}s")
    if p.get("redis_appendfsync"):
        out.append(f"appendfsync {p['redis_appendfsync']}")
    return ", ".join(out)


def parse_args(argv):
    d = Params()
    ap = argparse.ArgumentParser(
        description="The rolling-update experiment: constant-rate load "
        "through HAProxy (the Service) while gracefuld replicas roll as a "
        "Deployment with maxSurge 1, maxUnavailable 0; the Redis counter "
        "must equal the 200s and no request may fail. Exit 0: pass, 1: "
        "something was lost or failed, 2: could not run. The defaults are "
        "the classic experiment.")
    ap.add_argument("--requests", type=int, default=d.requests,
                    help="requests in all (default %(default)s)")
    ap.add_argument("--rate", type=float, default=d.rate,
                    help="requests per second, all workers together "
                    "(default %(default)g)")
    ap.add_argument("--workers", type=int, default=d.workers,
                    help="hey -c; each sends rate/workers per second and "
                    "requests/workers in all (default %(default)s)")
    ap.add_argument("--keep-alive", choices=("on", "off"), default="off",
                    help="reuse connections (default %(default)s)")
    ap.add_argument("--replicas", type=int, default=d.replicas,
                    help="the Deployment's replicas (default %(default)s)")
    ap.add_argument("--rollouts", type=int, default=d.rollouts,
                    help="rolling updates during the load "
                    "(default %(default)s)")
    ap.add_argument("--first-rollout", type=float, default=None,
                    metavar="SECONDS", help="when the first one starts, "
                    "after the load started (default: the rollouts centred "
                    "in the load)")
    ap.add_argument("--spacing", type=float, default=d.spacing,
                    metavar="SECONDS", help="between rollout starts "
                    "(default %(default)g)")
    ap.add_argument("--endpoint-lag", type=float, default=d.endpoint_lag,
                    metavar="SECONDS", help="from a pod's deletion to its "
                    "removal from the Service (default %(default)g)")
    ap.add_argument("--prestop", type=float, default=d.prestop,
                    metavar="SECONDS", help="preStop sleep before SIGTERM "
                    "(default %(default)g)")
    ap.add_argument("--grace", type=float, default=d.grace,
                    metavar="SECONDS", help="terminationGracePeriodSeconds, "
                    "counted from the deletion; SIGKILL after it "
                    "(default %(default)g)")
    ap.add_argument("--incr-delay-ms", type=int, default=d.incr_delay_ms,
                    help="gracefuld's INCR_DELAY_MS (default %(default)s)")
    ap.add_argument("--shutdown-delay-ms", type=int,
                    default=d.shutdown_delay_ms,
                    help="gracefuld's SHUTDOWN_DELAY_MS (default %(default)s)")
    ap.add_argument("--shutdown-timeout-ms", type=int, default=None,
                    help="gracefuld's SHUTDOWN_TIMEOUT_MS (default: its own)")
    ap.add_argument("--probe-period", type=float, default=d.probe_period,
                    metavar="SECONDS", help="the readiness probe's "
                    "periodSeconds: a new replica is ready at the first probe "
                    "after its /readyz is 200; 0: at once (default "
                    "%(default)g, as in k8s/)")
    ap.add_argument("--durability", choices=DURABILITIES,
                    default=d.durability,
                    help="gracefuld's DURABILITY for every replica: memory "
                    "(its default, then not passed) or redis, the journal "
                    "mode (default %(default)s)")
    ap.add_argument("--lease-ms", type=int, default=None,
                    help="gracefuld's LEASE_MS (default: its own, "
                    f"{DEFAULT_LEASE_MS})")
    ap.add_argument("--redis-timeout-ms", type=int, default=None,
                    help="gracefuld's REDIS_TIMEOUT_MS (default: its own)")
    ap.add_argument("--crash", type=int, default=d.crash, metavar="N",
                    help="SIGKILL N random replicas while the load runs, "
                    "outside any rollout, spread evenly over the load; each "
                    "is replaced as a ReplicaSet would, and its endpoint goes "
                    "one endpoint lag later (default %(default)s)")
    ap.add_argument("--redis-kill-every", type=float,
                    default=d.redis_kill_every, metavar="SECONDS",
                    help="CLIENT KILL TYPE normal (every replica's Redis "
                    "connection) this often while the load runs; 0: never "
                    "(default %(default)g)")
    ap.add_argument("--redis-pause", type=pause_arg, default=None,
                    metavar="S@T", help="SIGSTOP the redis-server T seconds "
                    "into the load, and SIGCONT it S seconds later")
    ap.add_argument("--redis-restart-at", type=float, default=None,
                    metavar="SECONDS", help="SIGKILL the redis-server this "
                    "long into the load and start it again on the same port "
                    "and directory (needs --redis-appendfsync)")
    ap.add_argument("--redis-appendfsync", choices=("always", "everysec",
                                                    "no"),
                    default=None, help="run the redis-server with appendonly "
                    "yes and this appendfsync policy (default: no "
                    "persistence)")
    ap.add_argument("--containers", action="store_true",
                    help="replicas are podman containers of --image "
                    "(default: processes of --bin)")
    ap.add_argument("--image", default=d.image,
                    help="the image for --containers (default %(default)s)")
    ap.add_argument("--bin", default=None,
                    help="the gracefuld binary (default: $GRACEFULD_BIN)")
    ap.add_argument("--workdir", default=None,
                    help="keep the logs here (default: a temporary "
                    "directory, removed after a pass)")
    ap.add_argument("--json", default=None, metavar="FILE",
                    help="also write the JSON result to FILE")
    ap.add_argument("--report", default=None, metavar="FILE.html",
                    help="write the HTML report (one self-contained file) "
                    "to FILE.html")
    ap.add_argument("--compare", action="store_true",
                    help="run the negative control (see --control) first, "
                    "then this configuration, and report them side by side; "
                    "exit 0 when this one passed and the control failed")
    ap.add_argument("--control", choices=sorted(CONTROLS), default="both",
                    help="the negative control of --compare: no-delay (no "
                    "SHUTDOWN_DELAY_MS, no preStop), zero-grace (SIGKILL at "
                    "the deletion) or both (default %(default)s)")
    ap.add_argument("--quiet", action="store_true",
                    help="no timeline on stderr while it runs")
    a = ap.parse_args(argv)
    return a, Params(
        requests=a.requests, rate=a.rate, workers=a.workers,
        keep_alive=a.keep_alive == "on", replicas=a.replicas,
        rollouts=a.rollouts, first_rollout=a.first_rollout,
        spacing=a.spacing, endpoint_lag=a.endpoint_lag, prestop=a.prestop,
        grace=a.grace, incr_delay_ms=a.incr_delay_ms,
        shutdown_delay_ms=a.shutdown_delay_ms,
        shutdown_timeout_ms=a.shutdown_timeout_ms, containers=a.containers,
        image=a.image, binary=a.bin, probe_period=a.probe_period,
        durability=a.durability, lease_ms=a.lease_ms,
        redis_timeout_ms=a.redis_timeout_ms, crash=a.crash,
        redis_kill_every=a.redis_kill_every,
        redis_pause_s=a.redis_pause[0] if a.redis_pause else 0.0,
        redis_pause_at=a.redis_pause[1] if a.redis_pause else None,
        redis_restart_at=a.redis_restart_at,
        redis_appendfsync=a.redis_appendfsync)


def pause_arg(text):
    """S@T: (S, T), seconds."""
    try:
        secs, at = (float(x) for x in text.split("@"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: SECONDS@AT, e.g. 2@1.5 (2 s, 1.5 s into the load)")
    if secs <= 0 or at < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: S > 0 and T >= 0")
    return secs, at


# The negative controls of --compare: what each takes away.
CONTROLS = {
    "no-delay": {"shutdown_delay_ms": 0, "prestop": 0.0},
    "zero-grace": {"grace": 0.0},
    "both": {"shutdown_delay_ms": 0, "prestop": 0.0, "grace": 0.0},
}


def control_of(params, control):
    return dataclasses.replace(params, **CONTROLS[control])


def main(argv=None):
    args, params = parse_args(argv if argv is not None else sys.argv[1:])

    def on_signal(signum, frame):
        # Once: a second signal must not cut the cleanup short.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        name = signal.Signals(signum).name
        if _held["depth"]:
            _held["pending"] = name
            return
        raise KeyboardInterrupt(name)
    # Installed explicitly: a shell starts a background job with SIGINT
    # ignored, and Python then leaves it so.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    runs = [("", params)]
    if args.compare:
        runs = [(f"negative control ({args.control})",
                 control_of(params, args.control)),
                ("recommended", params)]
    results, exps = [], []
    for i, (title, p) in enumerate(runs):
        workdir = args.workdir
        if workdir and len(runs) > 1:
            workdir = os.path.join(workdir, f"run{i + 1}")
        exp = Experiment(p, workdir, None if args.quiet else sys.stderr)
        exps.append(exp)
        if title:
            exp.say(f"experiment {i + 1} of {len(runs)}: {title}")
        try:
            res = exp.run()
        except HarnessError as e:
            print(f"rollout: could not run the experiment: {e}",
                  file=sys.stderr)
            print(f"rollout: logs in {exp.workdir}", file=sys.stderr)
            exp.cleanup()
            return 2
        except KeyboardInterrupt:
            print("rollout: interrupted; stopping everything it started",
                  file=sys.stderr)
            exp.cleanup()
            for e in exps:
                e.remove_workdir()
            return 130
        except BaseException:
            exp.cleanup()
            raise
        exp.cleanup()
        res["title"] = title
        results.append(res)
        if title:
            print(f"== {title}")
        print(table(res))
    if args.compare:
        control, recommended = results
        ok = control["verdict"] == "fail" and recommended["verdict"] == "pass"
        out = {"verdict": "pass" if ok else "fail", "runs": results}
    else:
        out = results[0]
        ok = out["verdict"] == "pass"
    if args.report:
        import report  # tools/experiment/report.py, beside this file
        with open(args.report, "w") as f:
            f.write(report.render(results))
        print(f"rollout: report in {args.report}", file=sys.stderr)
    line = json.dumps(out, sort_keys=True)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    for exp, res in zip(exps, results):
        if res["verdict"] == "pass" or (args.compare and ok):
            exp.remove_workdir()
        else:
            print(f"rollout: logs in {exp.workdir}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
