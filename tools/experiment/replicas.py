"""The replicas of the rolling-update experiment: gracefuld as processes
of the built binary or as podman containers, each with its lifecycle as
the experiment saw it and as its log tells it."""

import http.client
import math
import os
import signal
import subprocess
import time

from gracefuld_testlib import LineReader, events, scrape_metrics, wait_event
from harness import (METRIC_PENDING, SANITIZER_MARKS, HarnessError,
                     TimedSink, held_signals, log_events, pick_port)


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
