#!/usr/bin/env python3
"""Idle connections timing out: the cost of gracefuld's connection timers.

    python3 tools/bench/idle.py --build build-release            # about 50 s
    python3 tools/bench/idle.py --build build-release --conns 2000 --spread 3

Opens --conns connections that never send a request, one every
spread/conns seconds, so that their first-request timeouts
(HEADER_TIMEOUT_MS = spread) fall due one after another over the next
--spread seconds. Over that window it measures the server's CPU time and
the latency of a probe (GET /healthz on its own keep-alive connection,
every 5 ms). The reference is the same binary in the same run, with the
same probe over a window of the same length and no idle connections.
Not a pass/fail test: it prints the figures and their ratios (and --json
writes them)."""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "test", "lib"))

from gracefuld_testlib import LineReader, Redis, free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PROBE = b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Server:
    def __init__(self, binary, redis, timeout_ms, max_conns):
        self.port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "REDIS_ADDR": redis.addr,
            "HEADER_TIMEOUT_MS": str(timeout_ms),
            "IDLE_TIMEOUT_MS": str(timeout_ms * 10),
            "MAX_CONNECTIONS": str(max_conns),
            "LOG_FORMAT": "text",
            "TERMINATION_LOG": "",
        }
        self.proc = subprocess.Popen([binary], env=env,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.log = LineReader(self.proc.stderr)
        self.log.wait_for(lambda l: " listening " in l, 10)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Probe(threading.Thread):
    """GET /healthz every 5 ms on one keep-alive connection, recording the
    latency of each answer while `recording` is set."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.recording = threading.Event()
        self.done = threading.Event()
        self.latencies = []

    def run(self):
        buf = b""
        while not self.done.is_set():
            start = time.perf_counter()
            self.sock.sendall(PROBE)
            while b"\r\n\r\nok\n" not in buf:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return
                buf += chunk
            buf = buf.split(b"\r\n\r\nok\n", 1)[1]
            if self.recording.is_set():
                self.latencies.append(time.perf_counter() - start)
            time.sleep(0.005)


def p99(values):
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else 0


def run(binary, redis, conns, spread, idle):
    """One window of `spread` seconds; with idle, conns connections open
    beforehand time out during it. Returns the figures."""
    timeout_ms = int(spread * 1000)
    srv = Server(binary, redis, timeout_ms, conns + 100)
    socks = []
    probe = Probe(srv.port)
    probe.start()
    try:
        if idle:
            gap = spread / conns
            t0 = time.monotonic()
            for i in range(conns):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.connect(("127.0.0.1", srv.port))
                socks.append(s)
                delay = t0 + (i + 1) * gap - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            # The first deadline falls due now: spread after the first one.
            wait = t0 + spread - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        cpu0 = cpu_seconds(srv.proc.pid)
        open0 = open_fds(srv.proc.pid)
        probe.recording.set()
        time.sleep(spread)
        probe.recording.clear()
        cpu1 = cpu_seconds(srv.proc.pid)
    finally:
        probe.done.set()
        probe.join(5)
        for s in socks:
            s.close()
        srv.stop()
    lat = probe.latencies
    return {
        "idle_connections": conns if idle else 0,
        "window_s": spread,
        "server_cpu_s": round(cpu1 - cpu0, 3),
        "fds_at_window_start": open0,
        "probes": len(lat),
        "probe_p50_us": round(statistics.median(lat) * 1e6, 1) if lat else 0,
        "probe_p99_us": round(p99(lat) * 1e6, 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"),
                    help="build directory holding gracefuld")
    ap.add_argument("--binary", help="the gracefuld binary (overrides "
                    "--build)")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--spread", type=float, default=10.0,
                    help="seconds over which the connections time out")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    binary = args.binary or os.path.join(args.build, "gracefuld")
    need = args.conns + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        sys.exit(f"idle: needs {need} file descriptors (ulimit -n)")
    with Redis() as redis:
        ref = run(binary, redis, args.conns, args.spread, idle=False)
        idle = run(binary, redis, args.conns, args.spread, idle=True)
    res = {"reference": ref, "idle": idle}
    print(f"{args.conns} idle connections timing out over {args.spread:g} s "
          f"(reference: the same server, no idle connections)")
    print("| measure | idle | reference | ratio |")
    print("|---|---:|---:|---:|")
    for key, name in (("server_cpu_s", "server CPU time, s"),
                      ("probe_p50_us", "probe p50, µs"),
                      ("probe_p99_us", "probe p99, µs")):
        r = ref[key]
        ratio = f"{idle[key] / r:.2f}×" if r else ""
        print(f"| {name} | {idle[key]} | {r} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
