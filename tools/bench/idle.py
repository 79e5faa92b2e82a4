#!/usr/bin/env python3
"""Idle connections, gracefuld against nginx in the same run: what a
connection that never sends a request costs from its accept to its close.

    python3 tools/bench/idle.py --build build-release        # about 1 min
    python3 tools/bench/idle.py --build build-release --conns 2000 --rounds 1
    python3 tools/bench/idle.py --only gracefuld --rounds 1 \\
        --wrap 'strace -c -f -o /tmp/idle.strace'            # a profile

Each server in turn (nginx with one worker and `client_header_timeout` set
to the timeout; gracefuld in memory mode with HEADER_TIMEOUT_MS and
IDLE_TIMEOUT_MS set to it) gets --conns connections, opened one every
--gap-ms and never used, so that each is closed by its timeout while the
next ones are still opening. Measured on the server, from just before the
first connection until the last has timed out and gracefuld's linger after
it (1 s) has run out:

- CPU per idle connection: the server's CPU time (/proc/PID/schedstat, in
  nanoseconds, and /proc/PID/stat's clock ticks, as the issue measured it),
  less what the same server spent in a window of the same length with no
  connection at all, over the connections;
- memory per idle connection: the growth of the server's RSS from before
  the first connection to just before the first timeout, over the
  connections open then (user space only: the kernel's socket buffers are
  the same for both);
- how each connection ended, as its client saw it: a FIN (the read returns
  nothing) or a reset; both servers should close each with a FIN.

The servers are pinned to one CPU (--server-cpu, Redis beside them), the
client to the other. The rounds alternate which server goes first; the
table shows medians and each round's ratio. Not a pass/fail test: it prints
the figures and their ratios (and --json writes them). bench.py runs the
same measurement as its `idle` phase, beside the throughput table."""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "test", "lib"))

from gracefuld_testlib import LineReader, Redis, free_port  # noqa: E402
from proc import children_of, cpu_seconds, pinned, rss_kb  # noqa: E402

LINGER_S = 1.0  # gracefuld's wait for the client's FIN after its own
KINDS = ["nginx", "gracefuld"]

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {nofile}; }}
http {{
    access_log off;
    client_header_timeout {timeout_ms}ms;
    keepalive_timeout {timeout_ms}ms;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200; }}
    }}
}}
"""


def tasks(pids):
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                yield pid, tid
        except OSError:
            pass


def cpu_ns(pids):
    """On-CPU time of every thread of pids, in ns (schedstat)."""
    total = 0
    for pid, tid in tasks(pids):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return total


def wait_listening(port, proc, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.01)


class NginxServer:
    name = "nginx"

    def __init__(self, timeout_ms, conns, cpu):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gracefuld-idle-nginx-")
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.dir, port=self.port,
                                      timeout_ms=timeout_ms,
                                      nofile=conns + 1000))
        self.proc = subprocess.Popen(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-p", self.dir,
             "-c", conf, "-e", os.path.join(self.dir, "error.log")],
            preexec_fn=pinned(cpu), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, "nginx")
        # The worker is up once it answers; the probe's connection is gone.
        deadline = time.monotonic() + 10
        while not children_of(self.proc.pid):
            if time.monotonic() > deadline:
                raise RuntimeError("nginx started no worker")
            time.sleep(0.01)

    def pids(self):
        return [self.proc.pid, *children_of(self.proc.pid)]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class GracefuldServer:
    name = "gracefuld"

    def __init__(self, binary, redis, timeout_ms, conns, cpu, wrap=None):
        self.port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "REDIS_ADDR": redis.addr,
            "HEADER_TIMEOUT_MS": str(timeout_ms),
            "IDLE_TIMEOUT_MS": str(timeout_ms),
            "MAX_CONNECTIONS": str(conns + 1000),
            "LOG_FORMAT": "text",
            "TERMINATION_LOG": "",
        }
        cmd = [*(wrap.split() if wrap else []), binary]
        self.wrapped = bool(wrap)
        self.proc = subprocess.Popen(cmd, env=env, preexec_fn=pinned(cpu),
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.log = LineReader(self.proc.stderr)
        self.log.wait_for(lambda l: " redis_up " in l, 60)

    def pids(self):
        # Under a wrapper (valgrind, strace) the figures are the wrapper's.
        return [self.proc.pid]

    def stop(self):
        if self.proc.poll() is None:
            # A wrapper that forks (strace) writes its report once the
            # process it runs ends; one that does not (valgrind) is it.
            pids = children_of(self.proc.pid) if self.wrapped else []
            for pid in pids or [self.proc.pid]:
                os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.join()


def ended(sock):
    """How the server ended sock, as its client sees it: "fin", "reset" or
    "open"."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return "fin"
    except BlockingIOError:
        return "open"
    except ConnectionResetError:
        return "reset"


def one(srv, conns, gap_s, timeout_s):
    """Opens conns idle connections to srv, one every gap_s, and measures
    until the last has timed out and lingered. Returns the figures."""
    pids = srv.pids()
    time.sleep(0.3)
    # The same server with no connection, for a window of the same length.
    window = conns * gap_s + timeout_s + LINGER_S + 0.5
    ns0, t0 = cpu_ns(pids), time.monotonic()
    time.sleep(min(window, 3.0))
    quiet_ns = (cpu_ns(pids) - ns0) * window / (time.monotonic() - t0)

    rss0 = rss_kb(pids)
    ns0, ticks0 = cpu_ns(pids), cpu_seconds(pids)
    socks = []
    rss_peak = open_at_peak = None
    start = time.monotonic()
    for i in range(conns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect(("127.0.0.1", srv.port))
        socks.append(s)
        now = time.monotonic()
        if rss_peak is None and now - start >= timeout_s - 0.05:
            rss_peak, open_at_peak = rss_kb(pids), len(socks)
        delay = start + (i + 1) * gap_s - now
        if delay > 0:
            time.sleep(delay)
    if rss_peak is None:  # every connection opened before the first timeout
        rss_peak, open_at_peak = rss_kb(pids), len(socks)
    left = start + window - time.monotonic()
    if left > 0:
        time.sleep(left)
    ns = cpu_ns(pids) - ns0
    ticks = cpu_seconds(pids) - ticks0
    how = {"fin": 0, "reset": 0, "open": 0}
    for s in socks:
        how[ended(s)] += 1
        s.close()
    return {
        "connections": conns,
        "window_s": round(window, 2),
        "cpu_ms": round(ns / 1e6, 1),
        "cpu_quiet_ms": round(quiet_ns / 1e6, 1),
        "cpu_stat_s": round(ticks, 2),
        "cpu_us_per_conn": round((ns - quiet_ns) / 1e3 / conns, 2),
        "cpu_stat_us_per_conn": round(ticks * 1e6 / conns, 1),
        "rss_before_kb": rss0,
        "rss_peak_kb": rss_peak,
        "open_at_peak": open_at_peak,
        "rss_bytes_per_conn": round((rss_peak - rss0) * 1024 /
                                    max(open_at_peak, 1)),
        "ended": how,
    }


def rounds_of(binary, redis, conns, gap_ms, timeout_ms, rounds, server_cpu,
              kinds, wrap, log):
    rows = []
    for r in range(rounds):
        row = {"round": r + 1}
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
        for kind in order:
            if kind == "nginx":
                srv = NginxServer(timeout_ms, conns, server_cpu)
            else:
                srv = GracefuldServer(binary, redis, timeout_ms, conns,
                                      server_cpu, wrap)
            try:
                row[kind] = one(srv, conns, gap_ms / 1000, timeout_ms / 1000)
            finally:
                srv.stop()
            if log:
                x = row[kind]
                log(f"idle round {r + 1} {kind}: {x['cpu_us_per_conn']} µs "
                    f"CPU, {x['rss_bytes_per_conn']} B RSS per connection; "
                    f"ended {x['ended']}")
        if "nginx" in row and "gracefuld" in row:
            for k in ("cpu_us_per_conn", "rss_bytes_per_conn"):
                n = row["nginx"][k]
                row[k + "_ratio"] = round(row["gracefuld"][k] / n, 2) \
                    if n > 0 else None
        rows.append(row)
    return rows


def measure(binary, redis, conns=8000, gap_ms=1.0, timeout_ms=3000,
            rounds=2, server_cpu=0, client_cpu=1, only=None, wrap=None,
            log=None):
    """The idle measurement: rounds of each server in KINDS (or only),
    taking turns to go first. Returns {"rounds": [...], "median": {...},
    and the settings}."""
    need = conns + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        raise RuntimeError(f"idle: needs {need} file descriptors (ulimit -n)")
    affinity = os.sched_getaffinity(0)
    try:
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        rows = rounds_of(binary, redis, conns, gap_ms, timeout_ms, rounds,
                         server_cpu, only or KINDS, wrap, log)
    finally:
        os.sched_setaffinity(0, affinity)
    kinds = only or KINDS
    med = {}
    for kind in kinds:
        med[kind] = {k: statistics.median(r[kind][k] for r in rows)
                     for k in ("cpu_us_per_conn", "cpu_stat_us_per_conn",
                               "rss_bytes_per_conn", "cpu_ms",
                               "cpu_quiet_ms")}
        med[kind]["resets"] = sum(r[kind]["ended"]["reset"] for r in rows)
        med[kind]["open"] = sum(r[kind]["ended"]["open"] for r in rows)
    return {"connections": conns, "gap_ms": gap_ms, "timeout_ms": timeout_ms,
            "rounds": rows, "median": med}


def rows(res):
    """The idle measurement's rows for a table of (measure, gracefuld,
    nginx, ratio, target)."""
    m = res["median"]
    g, n = m.get("gracefuld"), m.get("nginx")
    what = (f"{res['connections']:,} idle connections, one every "
            f"{res['gap_ms']:g} ms, {res['timeout_ms']:,} ms timeout, "
            f"median of {len(res['rounds'])}")

    def ratio(k):
        per = [r.get(k + "_ratio") for r in res["rounds"]]
        per = [v for v in per if v is not None]
        if not g or not n or not n[k]:
            return ""
        return (f"**{g[k] / n[k]:.2f}×** (rounds: " +
                ", ".join(f"{v:.2f}" for v in per) + ")")

    def val(x, k, digits):
        return f"{x[k]:,.{digits}f}" if x else "–"

    out = [
        (f"CPU per idle connection, µs ({what}; schedstat, less a quiet "
         "window's)", val(g, "cpu_us_per_conn", 1),
         val(n, "cpu_us_per_conn", 1), ratio("cpu_us_per_conn"), "≤ 1.0×"),
        ("  … the same from /proc/PID/stat clock ticks, quiet window "
         "included, µs", val(g, "cpu_stat_us_per_conn", 0),
         val(n, "cpu_stat_us_per_conn", 0), "", ""),
        ("memory per idle connection, bytes (RSS growth over the "
         "connections open before the first timeout)",
         val(g, "rss_bytes_per_conn", 0), val(n, "rss_bytes_per_conn", 0),
         ratio("rss_bytes_per_conn"), ""),
        ("idle connections ended by a reset / still open at the end, all "
         "rounds", f"{g['resets']} / {g['open']}" if g else "–",
         f"{n['resets']} / {n['open']}" if n else "–", "", "0 / 0"),
    ]
    return out


def table(res):
    lines = ["| measure | gracefuld | nginx `return 200` | ratio | target |",
             "|---|---:|---:|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(res)]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"),
                    help="build directory holding gracefuld")
    ap.add_argument("--binary", help="the gracefuld binary (overrides "
                    "--build)")
    ap.add_argument("--conns", type=int, default=8000)
    ap.add_argument("--gap-ms", type=float, default=1.0,
                    help="between one connection and the next")
    ap.add_argument("--timeout-ms", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", help="nginx or gracefuld")
    ap.add_argument("--wrap", help="a command gracefuld runs under "
                    "(strace -c, valgrind --tool=callgrind); its figures "
                    "are then the wrapper's")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    binary = args.binary or os.path.join(args.build, "gracefuld")
    if os.cpu_count() < 2:
        args.client_cpu = args.server_cpu

    def log(msg):
        print(f"[idle {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
              flush=True)

    with Redis() as redis:
        os.sched_setaffinity(redis.proc.pid, {args.server_cpu})
        res = measure(binary, redis, args.conns, args.gap_ms,
                      args.timeout_ms, args.rounds, args.server_cpu,
                      args.client_cpu,
                      [args.only] if args.only else None, args.wrap, log)
    print(table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
