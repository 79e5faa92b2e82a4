"""What every part of the rolling-update experiment uses: where the
source tree is, the experiment's errors, stop signals held while a process
is started, free ports, and a replica's log kept with the harness's clock."""

import contextlib
import os
import random
import socket
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = (os.environ.get("GRACEFULD_SOURCE_DIR")
              or os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(SOURCE_DIR, "test", "lib"))

from gracefuld_testlib import parse_event  # noqa: E402

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


def defer_signal(name):
    """Within held_signals(): keeps the signal for the end of the outermost
    block and returns True; outside any, returns False."""
    if _held["depth"]:
        _held["pending"] = name
        return True
    return False


class HarnessError(Exception):
    """The experiment could not be run (as opposed to: it ran and failed)."""


class Aborted(Exception):
    """A signal asked the experiment to stop."""


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


def release_ports(ports):
    """Gives back ports that pick_port handed out."""
    with _ports_lock:
        for port in ports:
            _ports_taken.discard(port)


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
