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
    x q); or, with --idempotent-retries, keyed.py's client at the same
    rate, every request with an Idempotency-Key of its own, retried on the
    Service until answered 200 (the verdict is then strict: 0 lost, 0
    extra, 0 unknown, whatever was killed);
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

    tools/experiment/rollout.py --bin build/gracefuld   # the classic run
    tools/experiment/rollout.py --containers --image gracefuld:dev
    tools/experiment/rollout.py --help

The parts live beside this file: harness.py (paths, errors, ports, held
signals), service.py (HAProxy), replicas.py (process and container
replicas), verdict.py (hey's output and the verdict) and report.py (the
HTML report).

Prints a table for people and, last, one JSON line. Exit status: 0 when
nothing was lost and nothing failed, 1 when something was, 2 when the
experiment could not be run. Every process and container it started is
stopped on the way out, also on SIGINT, SIGTERM or SIGHUP.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

# The parts, each in a module beside this one. The tests read the harness
# through this module (rollout.verdict, rollout.parse_hey, ...).
from harness import (BUCKET_S, CONTAINERS_CONF, DEFAULT_LEASE_MS,  # noqa: E402
                     DURABILITIES, MANIFEST_PROBE_PERIOD, SAMPLE_S, Aborted,
                     HarnessError, defer_signal, fmt_t, held_signals,
                     redis_get, release_ports)
from gracefuld_testlib import Redis, events  # noqa: E402
from keyed import KeyedLoad  # noqa: E402
from neighbour import Neighbour  # noqa: E402
from replicas import ContainerReplica, ProcessReplica  # noqa: E402
from service import OUTCOMES, HAProxy  # noqa: E402
from verdict import (KEYED_RULE, KILLED_RULE,  # noqa: E402,F401
                     STRICT_RULE, count_unknown, error_kind, keyed_verdict,
                     parse_hey, unknown_outcome, verdict)


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
    # A second deployment on the same Redis and KEY_PREFIX (neighbour.py).
    shared_prefix: bool = False
    # Every request keyed and retried until answered (keyed.py).
    idempotent_retries: bool = False

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
        if self.shared_prefix and (self.durability != "redis" or
                                   self.containers):
            raise HarnessError(
                "--shared-prefix needs --durability redis (the neighbour's "
                "journal is what must not be taken) and processes")
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
        tools = ["haproxy", "redis-server", "redis-cli"]
        if not self.idempotent_retries:
            tools.append("hey")
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
        if p.idempotent_retries:
            self.hey = KeyedLoad(self.lb.port, p.requests, p.workers, p.rate,
                                 p.keep_alive, p.request_timeout).start()
            self.hey_args = ["keyed", f"{p.requests} keys",
                             f"{p.workers} workers", f"{p.rate:g}/s"]
            self._hey_file = None
            return
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
        neighbour = None
        if p.shared_prefix:
            neighbour = Neighbour(self.redis, p.binary, p.lease_ms, self.say)
            neighbour.leave_a_journal()
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
        if self._hey_file is not None:
            self._hey_file.close()
        load_end = self.now()
        self.load_done.set()
        self.say(f"load: done ({self.hey_args[0]} exit "
                 f"{self.hey.returncode})")
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
        if p.idempotent_retries:
            res = self.result(self.hey.summary(), counter, load_end)
        else:
            with open(self.hey_out) as f:
                hey_text = f.read()
            if self.hey.returncode != 0:
                raise HarnessError(f"hey failed ({self.hey.returncode}):\n"
                                   f"{hey_text}")
            res = self.result(parse_hey(hey_text), counter, load_end)
        if neighbour:
            res["neighbour"], problems = neighbour.adopt(
                timeout=2 * p.lease_s() + 10)
            res["problems"] += problems
            res["verdict"] = "fail" if res["problems"] else "pass"
        return res

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
        keys = hey.get("keys")
        if keys:
            # Each key is one request, answered 200 in the end or not at
            # all; the tries' errors and statuses were retried, not failed.
            ok, unknown = keys["answered"], keys["unanswered"]
            failures = {"unanswered": unknown} if unknown else {}
            failed, sent = unknown, ok + unknown
            rule, lost, extra, problems = keyed_verdict(ok, counter, unknown)
        else:
            rule, lost, extra, problems = verdict(ok, failed, counter,
                                                  unknown, killed)
        if sent != expected:
            problems.append(f"the load sent {sent} requests, not "
                            f"{expected}")
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
            "keyed": keys,
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
        release_ports([r.port for r in self.replicas]
                      + ([self.lb.port] if self.lb is not None else []))

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
    """Runs one experiment; returns its result (a dict, see
    docs/experiment.md), or raises HarnessError when it could not be run."""
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
    keys = res.get("keyed")
    if keys:
        rows[6] = ("unknown", f"{res['unknown']}  (keys never answered 200)")
        rows.append(("keyed tries", f"{keys['attempts']} for "
                     f"{keys['requests']} keys; {keys['retried']} keys sent "
                     f"again, {keys['replayed']} answered as replays"))
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
    elif res.get("verdict_rule") == KEYED_RULE:
        verdict = ("PASS: every key retried until answered, counted exactly "
                   "once: nothing lost, nothing extra, nothing unknown")
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
    if p.get("idempotent_retries"):
        out.append("keyed requests retried until answered")
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
    ap.add_argument("--redis-stall", type=float, default=None,
                    metavar="SECONDS", help="a stall longer than a lease: "
                    "SIGSTOP the redis-server a third into the load for "
                    "SECONDS, which must exceed both --lease-ms and "
                    "--redis-timeout-ms (not with --redis-pause)")
    ap.add_argument("--shared-prefix", action="store_true",
                    help="a second deployment (COUNTER_KEY neighbour) on the "
                    "same Redis and KEY_PREFIX leaves a journal before the "
                    "load (its replica SIGKILLed); the experiment's replicas "
                    "must not adopt it, and a new neighbour replica counts it "
                    "after (journal mode, processes)")
    ap.add_argument("--idempotent-retries", action="store_true",
                    help="every request carries an Idempotency-Key of its "
                    "own and is sent again, on the Service, until answered "
                    "200 (instead of hey, at the same rate); the verdict is "
                    "then strict whatever was killed: 0 lost, 0 extra, 0 "
                    "unknown")
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
    if a.redis_stall is not None:
        if a.redis_pause:
            ap.error("--redis-stall and --redis-pause are one fault each")
        # gracefuld's own defaults where not given: LEASE_MS 3000,
        # REDIS_TIMEOUT_MS 5000.
        longest = max(a.lease_ms or DEFAULT_LEASE_MS,
                      a.redis_timeout_ms or 5000) / 1000
        if a.redis_stall <= longest:
            ap.error(f"--redis-stall {a.redis_stall:g} must exceed the lease "
                     f"and the Redis timeout ({longest:g} s)")
        a.redis_pause = (a.redis_stall, a.requests / a.rate / 3)
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
        shared_prefix=a.shared_prefix,
        idempotent_retries=a.idempotent_retries,
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
        if defer_signal(name):
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
