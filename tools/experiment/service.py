"""The Service of the rolling-update experiment: HAProxy in TCP mode, its
servers added and taken out as endpoints are, and each connection's
outcome read from its log."""

import os
import re
import resource
import select
import socket
import subprocess
import threading
import time

from gracefuld_testlib import stop_process
from harness import HarnessError, held_signals, pick_port


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
