#!/usr/bin/env python3
"""gracefuld's benchmark, side by side with nginx answering `return 200`.

    python3 tools/bench/bench.py --build build-release          # about 10 min
    python3 tools/bench/bench.py --build build-release --quick  # about 3 min
    python3 tools/bench/bench.py --build build-release --only drain,allocs
    python3 tools/bench/bench.py --build build-release --only profile
    python3 tools/bench/bench.py --build build-release --only idempotency

Not part of the pass/fail suite: it measures, prints a table and writes a
JSON file (tools/bench/results/bench-<time>.json, with a .md table and an
.html page charting each round beside it); after a full run, the table also
goes to docs/bench/latest.md, the one the documentation links to.
It starts its own redis-server, nginx (one worker) and gracefuld, in memory
mode (the default durability) and in journal mode (DURABILITY=redis), pins the
servers (and Redis, which works for them) to one CPU and the load
generators to the other, and runs the reference and gracefuld alternately,
several rounds, reporting medians and the per-round ratios.
docs/performance.md says what each figure means and how it is measured.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "test", "lib"))

from gracefuld_testlib import (Certs, LineReader, Redis,  # noqa: E402
                               free_port, scrape_metrics, wait_event)
from proc import (TICK, children_of, cpu_seconds, pinned,  # noqa: E402
                  rss_kb)
from bench_table import (LATEST, profile_text, table,  # noqa: E402
                         write_latest)

PHASES = ["throughput", "idle", "tls", "latency", "memory", "drain", "startup",
          "redis", "allocs", "syscalls", "profile", "idempotency"]
DEFAULT_PHASES = [p for p in PHASES if p not in ("profile", "idempotency")]
# The servers measured side by side: the reference, gracefuld in memory
# mode (the default durability; "gracefuld" in the results) and in journal
# mode (DURABILITY=redis).
KINDS = ["nginx", "gracefuld", "journal"]

# wrk's request hook for the idempotency phase: every request a header
# with a value of its own (one thread: the counter is the thread's). The
# runs without a key send the same bytes under a name gracefuld ignores,
# so that both cost wrk the same and the ratio is the server's.
KEYED_WRK = """
local prefix = string.format("%%x-", math.floor(os.time() * 1000 %% 2^31))
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["%s"] = prefix .. n})
end
"""
KEY_HEADER, PLAIN_HEADER = "Idempotency-Key", "Idempotency-Kex"

# wrk's request hook for the pipelined window: PIPELINE requests in one
# write, as TechEmpower's plaintext test sends them. wrk counts each
# response, so the figure is requests per second as without the hook.
PIPELINE = 16
PIPELINED_WRK = """
init = function(args)
  local r = {}
  for i = 1, %d do r[i] = wrk.format(nil, "/incr") end
  req = table.concat(r)
end
request = function() return req end
""" % PIPELINE

_children = []  # every process this script started, killed at exit


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


# ---- processes ---------------------------------------------------------------

def pin_all_threads(pid, cpu):
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass


def spawn(cmd, cpu=None, **kw):
    p = subprocess.Popen(cmd, preexec_fn=pinned(cpu), **kw)
    _children.append(p)
    return p


def kill_children():
    for p in _children:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(5)
            except Exception:
                pass


def steal_seconds():
    """CPU time the hypervisor gave to others while this machine's CPUs
    wanted it (steal in /proc/stat, all CPUs), in seconds: on a shared host
    it is the noise behind a slow round, measured rather than guessed."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def steal_pct(steal0, t0):
    """Steal since steal_seconds() gave steal0 at time.monotonic() t0, as a
    percentage of one CPU."""
    wall = max(time.monotonic() - t0, 1e-9)
    return round(100 * (steal_seconds() - steal0) / wall, 1)


def run_rusage(cmd, cpu, timeout=600):
    """Runs cmd to its end; returns (output, exit code, CPU seconds used)."""
    p = spawn(cmd, cpu, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        out = p.stdout.read().decode("utf-8", "replace")
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    return out, p.returncode, ru.ru_utime + ru.ru_stime


def http_status(port, path, timeout=2.0):
    """One GET on a new connection; the status, or None when refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\n"
                      "Connection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return int(data.split()[1]) if data else None
    except OSError:
        return None


def metric(port, name):
    samples = scrape_metrics(port)
    return samples.get(name) if samples else None


# ---- the servers -------------------------------------------------------------

class Nginx:
    name = "nginx"

    def __init__(self, cpu):
        self.cpu = cpu
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gracefuld-bench-nginx-")
        with open(os.path.join(HERE, "nginx.conf.in")) as f:
            conf = f.read().replace("@DIR@", self.dir).replace(
                "@PORT@", str(self.port))
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = None
        self.started = None

    def start(self):
        self.started = time.monotonic()
        self.proc = spawn([shutil.which("nginx") or "/usr/sbin/nginx", "-p",
                           self.dir, "-c", self.conf, "-e",
                           os.path.join(self.dir, "error.log")],
                          self.cpu, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while http_status(self.port, "/incr") != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start: " + self.error_log())
            time.sleep(0.0005)
        self.ready_s = time.monotonic() - self.started
        return self

    def error_log(self):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def pids(self):
        return [self.proc.pid, *children_of(self.proc.pid)]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Gracefuld:
    name = "gracefuld"

    def __init__(self, binary, redis, cpu, env=None, preload=None):
        self.binary = binary
        self.cpu = cpu
        self.port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "REDIS_ADDR": redis.addr,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            "TERMINATION_LOG": "",
        }
        self.env.update(env or {})
        if preload:
            self.env["LD_PRELOAD"] = preload
        self.proc = None
        self.log = None
        self.cmd = [binary]
        self.after_stop = None  # called once the process is gone

    def start(self, wait_ready=True):
        self.started = time.monotonic()
        self.proc = spawn(self.cmd, self.cpu, env=self.env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
        self.log = LineReader(self.proc.stderr)
        if wait_ready:
            self.wait_event("redis_up", 30)
        return self

    def wait_event(self, event, timeout=10.0):
        return wait_event(self.log, event, timeout)

    def pids(self):
        return [self.proc.pid]

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def drain(self, timeout=60):
        """SIGTERM and wait for the drained exit; returns the exit summary."""
        self.signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.log.join()
        summary = self.wait_event("exit", 1)
        summary["rc"] = rc
        self.stopped()
        return summary

    def stopped(self):
        if self.after_stop:
            self.after_stop()
            self.after_stop = None

    def stop(self):
        """Ends it quickly: two signals abandon what is pending (exit 3;
        journal mode hands it over in its journal, exit 0)."""
        if self.proc and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            time.sleep(0.05)
            if self.proc.poll() is None:
                self.signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.join()
        self.stopped()


# ---- load generators ---------------------------------------------------------

def parse_wrk(text):
    def dur(v, unit):
        return float(v) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[unit]
    out = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        raise RuntimeError("wrk said:\n" + text)
    out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    lat = {}
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if m:
            lat["p" + pct] = round(dur(*m.groups()), 1)
    out["lat_us"] = lat
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                  r"timeout (\d+)", text)
    out["socket_errors"] = sum(map(int, m.groups())) if m else 0
    return out


class Bench:
    def __init__(self, args):
        self.a = args
        self.binary = os.path.join(args.build, "gracefuld")
        if not os.access(self.binary, os.X_OK):
            sys.exit(f"bench: no gracefuld binary at {self.binary}; build "
                     "with cmake -S . -B build-release -DCMAKE_BUILD_TYPE="
                     "Release && cmake --build build-release")
        self.tools = os.path.join(args.build, "bench")
        os.makedirs(self.tools, exist_ok=True)
        self.loadgen = os.path.join(self.tools, "loadgen")
        self.shim = os.path.join(self.tools, "alloccount.so")
        cc = shutil.which("cc") or "gcc"
        subprocess.run([cc, "-O2", "-Wall", "-o", self.loadgen,
                        os.path.join(HERE, "loadgen.c")], check=True)
        subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", "-o",
                        self.shim, os.path.join(HERE, "alloccount.c")],
                       check=True)
        self.perf = shutil.which("perf")
        if self.perf and subprocess.run(
                [self.perf, "stat", "-e", "raw_syscalls:sys_enter", "true"],
                capture_output=True).returncode != 0:
            self.perf = None
        self.redis = Redis().start()
        pin_all_threads(self.redis.proc.pid, args.redis_cpu)
        self.results = {}
        self.instances = 0  # journal-mode gracefulds started

    def close(self):
        self.redis.cleanup()

    # -- helpers --

    def gracefuld(self, delay_ms, env=None, preload=None, journal=False):
        """A started gracefuld; journal: DURABILITY=redis, named "journal",
        with keys under a prefix of its own that are deleted once it has
        stopped, so that no later instance adopts (and waits out) what a
        cut-short run left in its journal."""
        e = {"INCR_DELAY_MS": str(delay_ms)}
        if journal:
            self.instances += 1
            prefix = f"bench{self.instances}:"
            e.update({"DURABILITY": "redis", "KEY_PREFIX": prefix})
        e.update(env or {})
        g = Gracefuld(self.binary, self.redis, self.a.server_cpu, e, preload)
        if journal:
            g.name = "journal"
            g.prefix = prefix
            g.after_stop = lambda: self.delete_keys(prefix)
        return g.start()

    def delete_keys(self, prefix):
        self.redis.cli("EVAL", "for _, k in ipairs(redis.call('KEYS', "
                       "ARGV[1])) do redis.call('DEL', k) end", "0",
                       prefix + "*")

    def nginx(self):
        return Nginx(self.a.server_cpu).start()

    def server(self, kind, delay_ms, env=None):
        """A started server of a kind of KINDS (gracefuld with INCR_DELAY_MS
        delay_ms, and env)."""
        if kind == "nginx":
            return self.nginx()
        return self.gracefuld(delay_ms, env, journal=kind == "journal")

    @staticmethod
    def round_order(r):
        """Which server goes first in round r: they take turns, so that
        none always runs on a machine another has just warmed."""
        return KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)]

    def wrk(self, port, seconds, latency=False, pipelined=False):
        # wrk takes whole seconds.
        cmd = ["wrk", "-t1", f"-c{self.a.conns}",
               f"-d{max(1, round(seconds))}s"]
        if latency:
            cmd.append("--latency")
        if pipelined:
            script = os.path.join(self.tools, "pipelined.lua")
            with open(script, "w") as f:
                f.write(PIPELINED_WRK)
            cmd += ["-s", script]
        cmd.append(f"http://127.0.0.1:{port}/incr")
        out, rc, cpu = run_rusage(cmd, self.a.client_cpu)
        if rc != 0:
            raise RuntimeError("wrk failed:\n" + out)
        res = parse_wrk(out)
        res["client_cpu_s"] = cpu
        return res

    def loadgen_args(self, port, *extra):
        return [self.loadgen, "--port", str(port), *map(str, extra)]

    def run_loadgen(self, port, *extra):
        out, rc, cpu = run_rusage(self.loadgen_args(port, *extra),
                                  self.a.client_cpu)
        lines = [l for l in out.splitlines() if l.startswith("{")]
        if not lines:
            raise RuntimeError("loadgen failed:\n" + out)
        res = json.loads(lines[-1])
        res["client_cpu_s"] = cpu
        res["rc"] = rc
        return res

    def staged_loadgen(self, port, *extra):
        """A loadgen that connects and warms up, then waits: returns the
        process once it is ready."""
        p = spawn(self.loadgen_args(port, *extra, "--wait-go"),
                  self.a.client_cpu, stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError("loadgen did not get ready: " + line)
        return p

    @staticmethod
    def go(p):
        p.stdin.write("go\n")
        p.stdin.flush()
        out = p.stdout.read()
        p.wait()
        return json.loads(out.strip().splitlines()[-1])

    # -- phases --

    def measured_wrk(self, srv, seconds, latency=True, pipelined=False):
        """One wrk run, with the CPU the server and Redis used meanwhile."""
        cpu0 = cpu_seconds(srv.pids())
        redis0 = cpu_seconds([self.redis.proc.pid])
        t0 = time.monotonic()
        res = self.wrk(srv.port, seconds, latency, pipelined)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(srv.pids()) - cpu0
        res["server_cpu_pct"] = round(100 * cpu / wall, 1)
        res["server_cpu_us_per_req"] = round(
            cpu * 1e6 / max(res["requests"], 1), 2)
        res["client_cpu_pct"] = round(100 * res.pop("client_cpu_s") / wall,
                                      1)
        res["redis_cpu_pct"] = round(100 * (cpu_seconds(
            [self.redis.proc.pid]) - redis0) / wall, 1)
        if res["non2xx"] and res["requests"]:
            # Throughput is of 200s: what was refused is not counted.
            res["all_rps"] = res["rps"]
            res["rps"] = round(res["rps"] * (res["requests"] - res["non2xx"])
                               / res["requests"], 1)
        return res

    def idle(self):
        """Idle connections, gracefuld against nginx in the same run
        (idle.py): CPU and memory per connection that never sends a
        request, from its accept to its timeout and close."""
        import idle  # beside this file
        a = self.a
        self.results["idle"] = idle.measure(
            self.binary, self.redis, a.idle_conns, 1.0, a.idle_timeout_ms,
            a.idle_rounds, a.server_cpu, a.client_cpu, log=log)

    # The TLS phase's servers: nginx, and each mode with Redis over plain
    # TCP and over TLS.
    TLS_KINDS = {"nginx": None, "memory-tcp": (False, False),
                 "memory-tls": (False, True), "journal-tcp": (True, False),
                 "journal-tls": (True, True)}

    def tls(self):
        """Memory and journal mode with Redis over TLS beside plain TCP, in
        the same rounds: the steady-state throughput (after INCR_DELAY_MS of
        load, increments falling due all through the window) against
        nginx's, and the CPU of the server and of Redis. The TLS Redis is a
        second redis-server, TLS only, on the same CPU as the first."""
        a = self.a
        certs = Certs()
        key, crt = certs.issue("server")
        tls_redis = Redis(tls=(key, crt, certs.ca)).start()
        pin_all_threads(tls_redis.proc.pid, a.redis_cpu)
        delay_s = a.incr_delay_ms / 1000
        names = list(self.TLS_KINDS)
        rounds = []
        instructions, per_script = {}, {}
        try:
            # What TLS costs the process, in instructions per request
            # (libssl and libcrypto included): a count, not a time.
            for name, kind in self.TLS_KINDS.items():
                if kind is None:
                    continue
                journal, tls = kind
                env = {"INCR_DELAY_MS": "20"}
                if journal:
                    env["DURABILITY"] = "redis"
                if tls:
                    env["REDIS_URL"] = f"rediss://127.0.0.1:{tls_redis.port}"
                    env["REDIS_TLS_CA_FILE"] = certs.ca
                redis = tls_redis if tls else self.redis
                redis.cli("CONFIG", "RESETSTAT")
                per_fn = self.callgrind_per_request(env, redis)
                if per_fn is None:
                    break
                # How many requests share a script (a batch, a journal
                # write), and with it a TLS record each way.
                scripts = sum(int(m) for m in re.findall(
                    r"cmdstat_eval(?:sha)?:calls=(\d+)",
                    redis.cli("INFO", "commandstats")))
                instructions[name] = round(sum(per_fn.values()))
                per_script[name] = round(
                    (a.profile_requests // 5 + a.profile_requests) /
                    max(scripts, 1), 1)
                log(f"tls {name}: {instructions[name]} instructions per "
                    f"request (callgrind), {per_script[name]} requests per "
                    "script")
                for rd in (self.redis, tls_redis):
                    rd.cli("FLUSHALL")
            for r in range(a.rounds):
                row = {"round": r + 1}
                for name in names[r % len(names):] + names[:r % len(names)]:
                    kind = self.TLS_KINDS[name]
                    redis = self.redis
                    if kind is None:
                        srv = self.nginx()
                    else:
                        journal, tls = kind
                        env = {"INCR_DELAY_MS": str(a.incr_delay_ms)}
                        if journal:
                            env["DURABILITY"] = "redis"
                        srv = Gracefuld(self.binary, self.redis, a.server_cpu,
                                        env)
                        if tls:
                            redis = tls_redis
                            del srv.env["REDIS_ADDR"]
                            srv.env["REDIS_URL"] = \
                                f"rediss://127.0.0.1:{tls_redis.port}"
                            srv.env["REDIS_TLS_CA_FILE"] = certs.ca
                        srv.start()
                    try:
                        if kind is not None:
                            self.wrk(srv.port, delay_s + 0.5)
                        redis0 = cpu_seconds([redis.proc.pid])
                        t0 = time.monotonic()
                        res = self.measured_wrk(srv, a.duration)
                        res["redis_cpu_pct"] = round(100 * (cpu_seconds(
                            [redis.proc.pid]) - redis0) /
                            (time.monotonic() - t0), 1)
                    finally:
                        srv.stop()
                        for rd in (self.redis, tls_redis):
                            rd.cli("FLUSHALL")
                    row[name] = res
                    log(f"tls round {r + 1} {name}: {res['rps']:.0f} req/s "
                        f"(server CPU {res['server_cpu_pct']}%, redis "
                        f"{res['redis_cpu_pct']}%)")
                rounds.append(row)
        finally:
            tls_redis.cleanup()
            certs.cleanup()

        def med(name, f):
            return statistics.median(f(r[name]) for r in rounds)
        out = {"conns": a.conns, "incr_delay_ms": a.incr_delay_ms,
               "seconds": a.duration, "rounds": rounds, "median": {
                   n: {k: med(n, lambda x, k=k: x[k])
                       for k in ("rps", "server_cpu_pct", "redis_cpu_pct")}
                   for n in names}}
        if instructions:
            out["instructions_per_request"] = instructions
            out["requests_per_script"] = per_script
            out["requests_counted"] = [a.profile_requests // 5,
                                       a.profile_requests]
            for mode in ("memory", "journal"):
                out[mode + "_tls_instructions_over_tcp"] = round(
                    instructions[mode + "-tls"] / instructions[mode + "-tcp"],
                    3)
        for mode in ("memory", "journal"):
            out[mode + "_tls_over_tcp"] = [
                round(r[mode + "-tls"]["rps"] / r[mode + "-tcp"]["rps"], 3)
                for r in rounds]
            out[mode + "_tls_cpu_over_tcp"] = [
                round((r[mode + "-tls"]["server_cpu_pct"] /
                       r[mode + "-tls"]["rps"]) /
                      (r[mode + "-tcp"]["server_cpu_pct"] /
                       r[mode + "-tcp"]["rps"]), 3)
                for r in rounds]
            out[mode + "_tls_vs_nginx"] = [
                round(r[mode + "-tls"]["rps"] / r["nginx"]["rps"], 3)
                for r in rounds]
        self.results["tls"] = out

    def throughput(self):
        """Three windows on each fresh server. http_only: the first seconds,
        before any increment falls due (gracefuld does HTTP and queues).
        steady: after INCR_DELAY_MS of load, so that increments fall due
        (INCRs go out, Redis works) all through the window: the state the
        service runs in. pipelined: then PIPELINE requests to a write, as
        TechEmpower's plaintext test sends them, which costs wrk so much
        less per request that the server, not wrk, is what saturates (in
        the other two windows wrk's core is the limit for either server).
        MAX_PENDING is raised so that no increment is refused at that
        rate; throughput counts 200s only."""
        a = self.a
        delay_s = a.incr_delay_ms / 1000
        first = max(min(a.duration, delay_s - 1), 1)
        windows = ("http_only", "steady", "pipelined")
        rounds = []
        for r in range(a.rounds):
            row = {"round": r + 1, "loadavg": os.getloadavg()[0]}
            steal0, t0 = steal_seconds(), time.monotonic()
            for kind in self.round_order(r):
                srv = self.server(kind, a.incr_delay_ms,
                                  {"MAX_PENDING": "100000000"})
                res = {}
                try:
                    res["http_only"] = self.measured_wrk(srv, first)
                    # The load goes on until the first increments fall due.
                    self.wrk(srv.port, max(delay_s - first, 0) + 0.5)
                    res["steady"] = self.measured_wrk(srv, a.duration)
                    res["pipelined"] = self.measured_wrk(srv, a.duration,
                                                         pipelined=True)
                    if kind != "nginx":
                        res["rss_kb"] = rss_kb([srv.proc.pid])
                finally:
                    srv.stop()
                row[srv.name] = res
                log(f"throughput round {r + 1} {srv.name}: " + "; ".join(
                    f"{w} {res[w]['rps']:.0f} req/s (server CPU "
                    f"{res[w]['server_cpu_pct']}%, wrk "
                    f"{res[w]['client_cpu_pct']}%, redis "
                    f"{res[w]['redis_cpu_pct']}%)" for w in windows))
            row["steal_pct"] = steal_pct(steal0, t0)
            log(f"throughput round {r + 1}: CPU steal {row['steal_pct']}% "
                "of one CPU")
            for w in windows:
                row[w + "_ratio"] = round(row["gracefuld"][w]["rps"] /
                                          row["nginx"][w]["rps"], 3)
                row["journal_" + w + "_ratio"] = round(
                    row["journal"][w]["rps"] / row["nginx"][w]["rps"], 3)
            rounds.append(row)

        def med(k, w, f):
            return statistics.median(f(r[k][w]) for r in rounds)
        summary = {}
        for w in windows:
            summary[w] = {
                "seconds": first if w == "http_only" else a.duration,
                "median": {
                    k: {"rps": med(k, w, lambda x: x["rps"]),
                        "p50_us": med(k, w, lambda x: x["lat_us"].get("p50",
                                                                      0)),
                        "p99_us": med(k, w, lambda x: x["lat_us"].get("p99",
                                                                      0)),
                        "server_cpu_pct": med(k, w, lambda x:
                                              x["server_cpu_pct"]),
                        "client_cpu_pct": med(k, w, lambda x:
                                              x["client_cpu_pct"]),
                        "redis_cpu_pct": med(k, w, lambda x:
                                             x["redis_cpu_pct"]),
                        "server_cpu_us_per_req":
                            med(k, w, lambda x: x["server_cpu_us_per_req"]),
                        "non2xx": sum(r[k][w]["non2xx"] for r in rounds)}
                    for k in KINDS},
                "ratio_median": statistics.median(r[w + "_ratio"]
                                                  for r in rounds),
                "ratios": [r[w + "_ratio"] for r in rounds],
                "journal_ratio_median": statistics.median(
                    r["journal_" + w + "_ratio"] for r in rounds),
                "journal_ratios": [r["journal_" + w + "_ratio"]
                                   for r in rounds],
            }
        self.results["throughput"] = {
            "conns": a.conns, "incr_delay_ms": a.incr_delay_ms,
            "pipeline": PIPELINE, "rounds": rounds, **summary}

    def latency(self):
        a = self.a
        rounds = []
        for r in range(a.rounds):
            row = {"round": r + 1, "loadavg": os.getloadavg()[0]}
            steal0, t0 = steal_seconds(), time.monotonic()
            for kind in self.round_order(r):
                srv = self.server(kind, a.incr_delay_ms)
                try:
                    warm = a.lat_warmup
                    cpu0 = cpu_seconds(srv.pids())
                    t0 = time.monotonic()
                    res = self.run_loadgen(
                        srv.port, "--rate", a.rate, "--duration",
                        warm + a.duration, "--skip", warm, "--conns",
                        a.conns)
                    res["server_cpu_pct"] = round(100 * (
                        cpu_seconds(srv.pids()) - cpu0) /
                        (time.monotonic() - t0), 1)
                finally:
                    srv.stop()
                row[srv.name] = res
                log(f"latency round {r + 1} {srv.name}: p50 "
                    f"{res['lat_us']['p50']} p99 {res['lat_us']['p99']} "
                    f"p99.9 {res['lat_us']['p99_9']} us")
            row["steal_pct"] = steal_pct(steal0, t0)
            log(f"latency round {r + 1}: CPU steal {row['steal_pct']}% of "
                "one CPU")
            row["p99_ratio"] = round(row["gracefuld"]["lat_us"]["p99"] /
                                     row["nginx"]["lat_us"]["p99"], 3)
            # Journal mode's target is against memory mode's.
            row["journal_p99_ratio"] = round(
                row["journal"]["lat_us"]["p99"] /
                row["gracefuld"]["lat_us"]["p99"], 3)
            rounds.append(row)
        keys = ("mean", "p50", "p90", "p99", "p99_9", "max")
        self.results["latency"] = {
            "rate": a.rate, "conns": a.conns, "seconds": a.duration,
            "warmup": a.lat_warmup, "incr_delay_ms": a.incr_delay_ms,
            "rounds": rounds,
            "median": {
                k: {q: statistics.median(r[k]["lat_us"][q] for r in rounds)
                    for q in keys} for k in KINDS},
            "p99_ratio_median": statistics.median(r["p99_ratio"]
                                                  for r in rounds),
            "p99_ratios": [r["p99_ratio"] for r in rounds],
            "journal_p99_ratio_median": statistics.median(
                r["journal_p99_ratio"] for r in rounds),
            "journal_p99_ratios": [r["journal_p99_ratio"] for r in rounds],
        }

    def memory(self):
        a = self.a
        out = {}
        cases = [("full_speed", ["--count", a.pending, "--conns", a.conns]),
                 ("constant_rate", ["--rate", a.slow_rate, "--duration",
                                    a.slow_seconds, "--conns", 10])]
        for name, lg_args in cases:
            g = self.gracefuld(600000, {"MAX_PENDING": "100000000"})
            try:
                idle_kb = rss_kb([g.proc.pid])
                p = self.staged_loadgen(g.port, *lg_args)
                time.sleep(0.2)
                before = rss_kb([g.proc.pid])
                res = self.go(p)
                time.sleep(0.2)
                after = rss_kb([g.proc.pid])
                pending = metric(g.port, "gracefuld_increments_pending")
            finally:
                g.stop()
            accepted = res["ok"]
            out[name] = {
                "accepted": accepted, "pending": pending,
                "rate": round(res["rate"]),
                "rss_idle_kb": idle_kb, "rss_before_kb": before,
                "rss_after_kb": after,
                "bytes_per_pending": round((after - before) * 1024 /
                                           max(accepted, 1), 3),
            }
            log(f"memory {name}: {accepted} pending at {res['rate']:.0f}/s, "
                f"RSS {before} -> {after} kB: "
                f"{out[name]['bytes_per_pending']} B/pending")
        for name, lg_args in cases:
            out["journal_" + name] = self.journal_memory(name, lg_args)
        self.results["memory"] = out

    def used_memory(self):
        info = self.redis.cli("INFO", "memory")
        return int(re.search(r"^used_memory:(\d+)", info, re.M).group(1))

    def journal_memory(self, name, lg_args):
        """Journal mode: Redis's used_memory growth over the increments its
        journal holds, with a delay long enough that none falls due (and
        MEMORY USAGE of the journal itself, which no buffer blurs)."""
        g = self.gracefuld(600000, {"MAX_PENDING": "100000000"},
                           journal=True)
        try:
            p = self.staged_loadgen(g.port, *lg_args)
            time.sleep(0.2)
            written0 = metric(g.port,
                              "gracefuld_journal_written_increments_total")
            before = self.used_memory()
            res = self.go(p)
            time.sleep(0.3)
            after = self.used_memory()
            written = metric(g.port,
                             "gracefuld_journal_written_increments_total")
            keys = self.redis.cli("KEYS", g.prefix + "*:journal:*").split()
            entries = sum(int(self.redis.cli("HLEN", k)) for k in keys)
            usage = sum(int(self.redis.cli("MEMORY", "USAGE", k, "SAMPLES",
                                           "0") or 0) for k in keys)
            encoding = [self.redis.cli("OBJECT", "ENCODING", k) for k in keys]
        finally:
            g.stop()
        held = int(written - written0)
        x = {
            "accepted": res["ok"], "journal_held": held,
            "rate": round(res["rate"]), "used_memory_before": before,
            "used_memory_after": after, "journal_entries": entries,
            "journal_memory_usage": usage, "journal_encoding": encoding,
            "bytes_per_pending": round((after - before) / max(held, 1), 3),
            "journal_bytes_per_pending": round(usage / max(held, 1), 3),
            "journal_bytes_per_entry": round(usage / max(entries, 1), 1),
        }
        log(f"memory journal {name}: {held} in the journal at "
            f"{res['rate']:.0f}/s ({entries} entries, {encoding}), "
            f"used_memory {before} -> {after}: {x['bytes_per_pending']} "
            f"B/pending; MEMORY USAGE {usage} B")
        return x

    def keyed_wrk(self, port, seconds, header=KEY_HEADER):
        """wrk with a header (an Idempotency-Key) of a value of its own on
        every request."""
        script = os.path.join(self.tools, f"{header}.lua")
        with open(script, "w") as f:
            f.write(KEYED_WRK % header)
        cmd = ["wrk", "-t1", f"-c{self.a.conns}",
               f"-d{max(1, round(seconds))}s", "-s", script,
               f"http://127.0.0.1:{port}/incr"]
        out, rc, _ = run_rusage(cmd, self.a.client_cpu)
        if rc != 0:
            raise RuntimeError("wrk failed:\n" + out)
        res = parse_wrk(out)
        if res["non2xx"] or res["socket_errors"]:
            log(f"idempotency: {res['non2xx']} answers not 200, "
                f"{res['socket_errors']} socket errors: the figure is "
                "not of 200s alone")
        return res

    def idempotency(self):
        """Throughput with a key on every request against without, in both
        modes, in the same rounds (the order alternating); then Redis's
        memory per key counted (INFO memory's used_memory before and after,
        and MEMORY USAGE of the set), and the process's RSS per key it
        keeps. Each run: a fresh server, INCR_DELAY_MS 500 and a second of
        load before the window, so that batches (or moves) run through
        it."""
        a = self.a
        delay_ms = 500
        rounds = []
        for r in range(a.rounds):
            row = {}
            for kind in ("gracefuld", "journal"):
                order = [False, True] if r % 2 == 0 else [True, False]
                for keyed in order:
                    self.redis.cli("DEL", "counter", "gracefuld:{counter}:"
                                   "idempotency")
                    srv = self.gracefuld(delay_ms,
                                         journal=kind == "journal")
                    header = KEY_HEADER if keyed else PLAIN_HEADER
                    try:
                        self.keyed_wrk(srv.port, 1, header)
                        res = self.keyed_wrk(srv.port, a.duration, header)
                    finally:
                        srv.stop()
                    row[f"{kind}_{'keyed' if keyed else 'plain'}"] = \
                        res["rps"]
                    log(f"idempotency round {r + 1} {srv.name} "
                        f"{'with' if keyed else 'without'} a key: "
                        f"{res['rps']:.0f} req/s")
            rounds.append(row)
        out = {"rounds": rounds, "throughput": {}, "memory": {}}
        for kind in ("gracefuld", "journal"):
            plain = [row[kind + "_plain"] for row in rounds]
            keyed = [row[kind + "_keyed"] for row in rounds]
            out["throughput"][kind] = {
                "plain_rps": statistics.median(plain),
                "keyed_rps": statistics.median(keyed),
                "ratio": round(statistics.median(keyed) /
                               statistics.median(plain), 3),
                "ratios": [round(k / p, 3) for k, p in zip(keyed, plain)],
            }
        for kind in ("gracefuld", "journal"):
            out["memory"][kind] = self.key_memory(kind)
        self.results["idempotency"] = out
        text = idempotency_text(out)
        for line in text.splitlines():
            log(line)

    def key_memory(self, kind):
        """Redis's memory per Idempotency-Key: keyed requests for a few
        seconds, then, once every one is counted, used_memory's growth and
        the set's MEMORY USAGE over the keys it holds; and the process's
        RSS growth over them (memory mode keeps counted keys, at most
        65536)."""
        idem = "gracefuld:{counter}:idempotency"
        self.redis.cli("DEL", "counter", idem)
        g = self.gracefuld(200, {"MAX_PENDING": "100000000"},
                           journal=kind == "journal")
        try:
            if kind == "journal":
                idem = g.prefix + "{counter}:idempotency"
            rss0 = rss_kb([g.proc.pid])
            before = self.used_memory()
            self.keyed_wrk(g.port, min(self.a.duration, 3))
            deadline = time.monotonic() + 60
            while (metric(g.port, "gracefuld_increments_pending") > 0
                   and time.monotonic() < deadline):
                time.sleep(0.1)
            after = self.used_memory()
            rss1 = rss_kb([g.proc.pid])
            keys = int(self.redis.cli("ZCARD", idem))
            usage = int(self.redis.cli("MEMORY", "USAGE", idem, "SAMPLES",
                                       "0") or 0)
        finally:
            g.stop()
        kept = min(keys, 65536) if kind == "gracefuld" else 0
        x = {
            "keys": keys, "used_memory_before": before,
            "used_memory_after": after, "set_memory_usage": usage,
            "used_memory_per_key": round((after - before) / max(keys, 1), 1),
            "set_bytes_per_key": round(usage / max(keys, 1), 1),
            "rss_bytes_per_key": (round((rss1 - rss0) * 1024 / kept, 1)
                                  if kept else None),
        }
        log(f"idempotency memory {kind}: {keys} keys, used_memory {before} "
            f"-> {after}: {x['used_memory_per_key']} B/key; MEMORY USAGE "
            f"{usage} B: {x['set_bytes_per_key']} B/key")
        return x

    def redis_fd(self, pid):
        """The descriptor of gracefuld's connection to Redis."""
        inodes = set()
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if int(parts[2].split(":")[1], 16) == self.redis.port:
                    inodes.add(parts[9])
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            m = re.match(r"socket:\[(\d+)\]", target)
            if m and m.group(1) in inodes:
                return int(fd)
        return None

    def drain(self):
        a = self.a
        rounds = []
        for r in range(a.drain_rounds):
            rounds.append(self.drain_round(r))
        keys = ["overhead_external_us", "overhead_trace_us",
                "exit_after_last_deadline_ms", "sigterm_to_exit_ms"]
        med = {}
        for k in keys:
            vals = [x[k] for x in rounds if x.get(k) is not None]
            med[k] = round(statistics.median(vals), 3) if vals else None
        self.results["drain"] = {"incr_delay_ms": a.drain_delay_ms,
                                 "burst": a.drain_burst, "rounds": rounds,
                                 "median": med}

    def drain_round(self, r):
        a = self.a
        delay = a.drain_delay_ms
        monitor = Monitor(self.redis.port)
        g = self.gracefuld(delay)
        trace = None
        trace_out = os.path.join(self.tools, "drain-trace.txt")
        try:
            fd = self.redis_fd(g.proc.pid)
            if self.perf:
                trace = spawn([self.perf, "trace", "-p", str(g.proc.pid),
                               "-e", "read,exit_group", "-o", trace_out],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # perf trace attaches
            counter0 = self.redis.counter()
            burst = self.run_loadgen(g.port, "--count", a.drain_burst,
                                     "--conns", a.conns)
            # The last request: its 200 is the last deadline's start.
            with socket.create_connection(("127.0.0.1", g.port), 5) as s:
                s.sendall(b"GET /incr HTTP/1.1\r\nHost: b\r\n\r\n")
                data = b""
                while b"ok\n" not in data:
                    data += s.recv(4096)
                t_last_200 = time.time()
            pidfd = os.pidfd_open(g.proc.pid)
            t_sig = time.time()
            g.signal(signal.SIGTERM)
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            poller.poll(60000)
            t_exit = time.time()
            os.close(pidfd)
            rc = g.proc.wait(10)
            g.log.join()
            summary = g.wait_event("exit", 1)
        finally:
            g.stop()
            if trace and trace.poll() is None:
                time.sleep(0.2)
                trace.send_signal(signal.SIGINT)
                try:
                    trace.wait(10)
                except subprocess.TimeoutExpired:
                    trace.kill()
        monitor.wait_quiet()
        monitor.close()
        counted = self.redis.counter() - counter0
        row = {
            "round": r + 1, "rc": rc,
            "accepted": summary.get("accepted"), "counted": counted,
            "burst_rate": round(burst["rate"]),
            "flushing_ms": summary.get("flushing_ms"),
            "sigterm_to_exit_ms": round((t_exit - t_sig) * 1e3, 3),
            "last_deadline_after_sigterm_ms": round(
                (t_last_200 + delay / 1e3 - t_sig) * 1e3, 3),
            "exit_after_last_deadline_ms": round(
                (t_exit - t_last_200 - delay / 1e3) * 1e3, 3),
            "overhead_external_us": (round((t_exit - monitor.last_incr) * 1e6,
                                           1) if monitor.last_incr else None),
            "overhead_trace_us": None,
        }
        if trace:
            row["overhead_trace_us"] = trace_overhead(trace_out, fd)
        log(f"drain round {r + 1}: rc {rc}, {row['accepted']} accepted, "
            f"{counted} counted; last INCR at Redis -> exit "
            f"{row['overhead_external_us']} us; last reply read -> "
            f"exit_group {row['overhead_trace_us']} us (perf trace); exit "
            f"{row['exit_after_last_deadline_ms']} ms after the last deadline")
        return row

    def startup(self):
        a = self.a
        out = {}
        for kind in ("gracefuld", "nginx"):
            times = []
            for _ in range(a.startup_runs):
                if kind == "nginx":
                    srv = Nginx(a.server_cpu)
                    try:
                        srv.start()
                        times.append(srv.ready_s * 1e3)
                    finally:
                        srv.stop()
                    continue
                g = Gracefuld(self.binary, self.redis, a.server_cpu,
                              {"INCR_DELAY_MS": "1000"})
                t0 = time.monotonic()
                g.start(wait_ready=False)
                try:
                    while http_status(g.port, "/readyz") != 200:
                        if time.monotonic() - t0 > 10:
                            raise RuntimeError("gracefuld never got ready")
                        time.sleep(0.0002)
                    times.append((time.monotonic() - t0) * 1e3)
                finally:
                    g.drain()
            out[kind] = {"runs": len(times),
                         "median_ms": round(statistics.median(times), 3),
                         "min_ms": round(min(times), 3),
                         "max_ms": round(max(times), 3)}
            log(f"startup {kind}: median {out[kind]['median_ms']} ms")
        out["what"] = ("exec to the first 200 (gracefuld: /readyz, i.e. "
                       "listening and Redis reached; nginx: /incr)")
        self.results["startup"] = out

    def redis_stats(self):
        info = {}
        for section in ("commandstats", "stats"):
            for line in self.redis.cli("INFO", section).splitlines():
                if ":" in line:
                    k, v = line.split(":", 1)
                    info[k] = v.strip()
        calls = {}
        for k, v in info.items():
            if k.startswith("cmdstat_"):
                calls[k[8:]] = int(re.search(r"calls=(\d+)", v).group(1))
        return calls, int(info.get("total_reads_processed", 0))

    # What each mode sends per due batch (or loop turn); everything else
    # gracefuld sends is "other" (the handshake, lease renewals, adoption
    # scans, resolutions, the leave).
    PER_BATCH = {"gracefuld": ("eval:batch",),
                 "journal": ("eval:journal_write",)}

    def redis_commands(self):
        """Redis commands per accepted increment at saturation, in both
        modes: INFO commandstats (which counts the commands scripts run as
        well as those clients send) over a full-speed run, drained; MONITOR
        tells the commands gracefuld sent from those its scripts ran."""
        out = {}
        for kind in ("gracefuld", "journal"):
            out[kind] = self.redis_commands_of(kind)
        self.results["redis"] = out

    def redis_commands_of(self, kind):
        a = self.a
        g = self.gracefuld(100, journal=kind == "journal")
        # The keys go after the second count, not as the drain ends.
        cleanup, g.after_stop = g.after_stop, None
        try:
            monitor = Monitor(self.redis.port)
            calls0, reads0 = self.redis_stats()
            res = self.run_loadgen(g.port, "--count", a.redis_requests,
                                   "--conns", a.conns)
            summary = g.drain()
            calls1, reads1 = self.redis_stats()
            monitor.wait_quiet()
            monitor.close()
        finally:
            g.stop()
            if cleanup:
                cleanup()
        # Our own INFO (and MONITOR) calls are not gracefuld's.
        ours = ("info", "monitor")
        delta = {k: v - calls0.get(k, 0) for k, v in calls1.items()
                 if v - calls0.get(k, 0) and k not in ours}
        sent = {k: v for k, v in monitor.sent.items() if k not in ours}
        accepted = summary["accepted"]
        total = sum(delta.values())
        per_batch = sum(sent.get(k, 0) for k in self.PER_BATCH[kind])
        other = {k: v for k, v in sent.items()
                 if k not in self.PER_BATCH[kind]}
        # Our own INFO connections read once each; they are a handful.
        reads = reads1 - reads0
        x = {
            "requests": res["ok"], "rate": round(res["rate"]),
            "accepted": accepted, "done": summary.get("done"),
            "rc": summary["rc"],
            "commandstats": delta, "sent": sent,
            "scripted": monitor.scripted,
            "commands": total, "commands_sent": sum(sent.values()),
            "commands_per_request": round(total / max(accepted, 1), 4),
            "sent_per_request": round(sum(sent.values()) / max(accepted, 1),
                                      4),
            "per_batch_commands": per_batch,
            "increments_per_batch": round(accepted / max(per_batch, 1), 1),
            "other_commands": sum(other.values()), "other": other,
            "redis_reads": reads,
            "increments_per_redis_read": round(accepted / max(reads, 1), 1),
        }
        log(f"redis {kind}: {total} commands ({x['commands_sent']} sent, "
            f"{per_batch} per batch, other {other}) for {accepted} "
            f"accepted at {x['rate']}/s: {x['commands_per_request']} per "
            "request")
        return x

    def allocs(self):
        a = self.a
        runs = []
        for n in (a.alloc_requests // 6, a.alloc_requests):
            out = os.path.join(self.tools, f"alloccount-{n}.json")
            if os.path.exists(out):
                os.unlink(out)
            g = self.gracefuld(20, {"ALLOCCOUNT_OUT": out}, preload=self.shim)
            try:
                res = self.run_loadgen(g.port, "--count", n, "--conns",
                                       a.conns)
                summary = g.drain()
            finally:
                g.stop()
            with open(out) as f:
                counts = json.load(f)
            runs.append((summary["accepted"], summary["rc"], counts))
        (n1, rc1, c1), (n2, rc2, c2) = runs
        per = {}
        for region in c2:
            per[region] = {}
            for op in ("malloc", "calloc", "realloc", "memalign", "free"):
                per[region][op] = round((c2[region][op] - c1[region][op]) /
                                        (n2 - n1), 4)
            per[region]["allocations"] = round(sum(
                per[region][op] for op in
                ("malloc", "calloc", "realloc", "memalign")), 4)
        fixed = {region: sum(c1[region][op] for op in
                             ("malloc", "calloc", "realloc", "memalign"))
                 for region in c1}
        self.results["allocs"] = {
            "requests": [n1, n2], "rc": [rc1, rc2],
            "per_request": per, "total_small_run": fixed,
            "how": ("LD_PRELOAD counter by calling object; (run with "
                    f"{n2} requests - run with {n1}) / {n2 - n1}; every "
                    "increment fell due and was INCRed in both runs"),
        }
        log("allocs per request: " + ", ".join(
            f"{k} {v['allocations']}" for k, v in per.items()))

    def syscalls(self):
        """Syscalls per request at saturation, counted by perf's tracepoints
        (no ptrace stop: the servers run at full speed)."""
        if not self.perf:
            self.results["syscalls"] = {"skipped": "perf not usable"}
            return
        a = self.a
        names = ["read", "readv", "recvfrom", "write", "writev", "sendto",
                 "sendmsg", "epoll_wait", "epoll_pwait", "epoll_ctl",
                 "accept4", "ioctl", "setsockopt", "clock_gettime"]
        events = ["raw_syscalls:sys_enter"] + [
            f"syscalls:sys_enter_{n}" for n in names]
        events += ["context-switches", "task-clock"]
        out = {}
        for kind in ("nginx", "gracefuld"):
            srv = self.server(kind, a.syscall_delay_ms)
            try:
                self.wrk(srv.port, 2)
                pids = ",".join(map(str, srv.pids()))
                stat_out = os.path.join(self.tools, "perf-stat.txt")
                perf = spawn([self.perf, "stat", "-x", ",", "-o", stat_out,
                              "-e", ",".join(events), "-p", pids],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
                time.sleep(0.3)
                res = self.wrk(srv.port, a.syscall_seconds)
                perf.send_signal(signal.SIGINT)
                perf.wait(10)
            finally:
                srv.stop()
            counts = {}
            with open(stat_out) as f:
                for line in f:
                    parts = line.strip().split(",")
                    if len(parts) < 3 or line.startswith("#"):
                        continue
                    try:
                        value = float(parts[0])
                    except ValueError:
                        continue
                    ev = parts[2].replace("syscalls:sys_enter_", "").replace(
                        "raw_syscalls:sys_enter", "all")
                    counts[ev] = value
            reqs = max(res["requests"], 1)
            per = {k: round(v / reqs, 3) for k, v in counts.items()
                   if v and k != "task-clock"}
            per["cpu_us"] = round(counts.get("task-clock", 0) * 1e3 / reqs,
                                  2)
            out[srv.name] = {"requests": res["requests"], "rps": res["rps"],
                             "per_request": per}
            log(f"syscalls {srv.name}: {per.get('all')} per request")
        out["incr_delay_ms"] = a.syscall_delay_ms
        self.results["syscalls"] = out

    def callgrind_per_request(self, env, redis=None):
        """gracefuld's instructions per request under callgrind, by
        (function, object): two fixed-count runs (a fifth of
        --profile-requests, then all of them), the difference divided by
        the difference in requests, so that start-up and exit cancel out.
        Stable on a busy machine, unlike time. None without valgrind."""
        a = self.a
        valgrind = shutil.which("valgrind")
        if not valgrind:
            return None
        runs = []
        for n in (a.profile_requests // 5, a.profile_requests):
            cg = os.path.join(self.tools, f"callgrind-{n}.out")
            g = Gracefuld(self.binary, redis or self.redis, a.server_cpu,
                          dict(env))
            if "REDIS_URL" in env:
                del g.env["REDIS_ADDR"]
            g.cmd = [valgrind, "--tool=callgrind",
                     f"--callgrind-out-file={cg}", self.binary]
            g.start()
            try:
                self.run_loadgen(g.port, "--count", n, "--conns", a.conns)
                summary = g.drain(120)
            finally:
                g.stop()
            runs.append((summary["accepted"], callgrind_functions(cg)))
        (n1, f1), (n2, f2) = runs
        return {k: (v - f1.get(k, 0)) / (n2 - n1) for k, v in f2.items()}

    def profile(self):
        """Where gracefuld's instructions go per request (callgrind, two
        fixed-count runs, the difference divided by the difference in
        requests), and where its time goes at saturation (perf record)."""
        a = self.a
        out = {}
        per_fn = self.callgrind_per_request({"INCR_DELAY_MS": "20"})
        if per_fn is not None:
            by_obj = {}
            for (fn, obj), v in per_fn.items():
                by_obj[obj] = by_obj.get(obj, 0) + v
            total = sum(by_obj.values())
            top = sorted(per_fn.items(), key=lambda kv: -kv[1])[:30]
            out["callgrind"] = {
                "requests": [a.profile_requests // 5, a.profile_requests],
                "instructions_per_request": round(total),
                "by_object": {k: round(v) for k, v in sorted(
                    by_obj.items(), key=lambda kv: -kv[1]) if v >= 1},
                "top_functions": [
                    {"function": fn, "object": obj, "ir": round(v)}
                    for (fn, obj), v in top],
            }
            log(f"callgrind: {round(total)} instructions per request")
        if self.perf:
            g = self.gracefuld(a.incr_delay_ms)
            data = os.path.join(self.tools, "perf.data")
            try:
                load = spawn(["wrk", "-t1", f"-c{a.conns}",
                              f"-d{a.incr_delay_ms / 1000 + 8:.0f}s",
                              f"http://127.0.0.1:{g.port}/incr"],
                             a.client_cpu, stdout=subprocess.DEVNULL)
                time.sleep(a.incr_delay_ms / 1000 + 0.5)
                subprocess.run([self.perf, "record", "-e", "cpu-clock",
                                "-F", "4000", "-g", "-o", data, "-p",
                                str(g.proc.pid), "--", "sleep", "5"],
                               capture_output=True, check=True)
                load.wait(30)
            finally:
                g.stop()
            out["perf"] = {
                "by_dso": perf_report(self.perf, data, "dso"),
                "top_symbols": perf_report(self.perf, data, "dso,sym")[:40],
                "data": data,
            }
            log("perf: " + ", ".join(f"{x['name']} {x['pct']}%"
                                     for x in out["perf"]["by_dso"][:6]))
        self.results["profile"] = out


def idempotency_text(x):
    """The idempotency phase's figures, for people."""
    lines = ["Idempotency-Key: throughput with a key on every request "
             "against without (wrk, median of the rounds)", "",
             "| mode | without a key | with a key | ratio |",
             "|---|---|---|---|"]
    for kind in ("gracefuld", "journal"):
        t = x["throughput"][kind]
        lines.append(f"| {'memory' if kind == 'gracefuld' else 'journal'} "
                     f"| {t['plain_rps']:.0f} req/s | {t['keyed_rps']:.0f} "
                     f"req/s | {t['ratio']:.3f} (rounds "
                     f"{', '.join(f'{r:.3f}' for r in t['ratios'])}) |")
    lines.append("")
    lines.append("| mode | keys counted | Redis used_memory per key | "
                 "MEMORY USAGE of the set per key | process RSS per key |")
    lines.append("|---|---|---|---|---|")
    for kind in ("gracefuld", "journal"):
        m = x["memory"][kind]
        rss = ("-" if m["rss_bytes_per_key"] is None
               else f"{m['rss_bytes_per_key']:.0f} B")
        lines.append(f"| {'memory' if kind == 'gracefuld' else 'journal'} | "
                     f"{m['keys']} | {m['used_memory_per_key']:.0f} B | "
                     f"{m['set_bytes_per_key']:.0f} B | {rss} |")
    return "\n".join(lines)


def lua_scripts():
    """{script name: (the start of its text, its SHA-1)}, to tell gracefuld's
    EVALSHAs apart in MONITOR's lines, as the binary sends them: prelude.lua
    first, except before a script that opens with a shebang. A script sent
    whole opens with the prelude, so its start tells only that it was sent
    whole ("prelude": once per script and connection)."""
    d = os.path.join(ROOT, "src", "redis", "lua")
    with open(os.path.join(d, "prelude.lua"), "rb") as fh:
        prelude = fh.read()
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".lua"):
            with open(os.path.join(d, f), "rb") as fh:
                text = fh.read()
            if f != "prelude.lua" and not text.startswith(b"#!"):
                text = prelude + text
            out[f[:-4]] = (text.split(b"\n", 1)[0].strip()[:40],
                           hashlib.sha1(text).hexdigest().encode())
    return out


class Monitor:
    """Redis MONITOR on its own connection: the time Redis ran the last
    command that counts (INCR, or INCRBY inside a script; its wall clock,
    seconds), and how many commands clients sent (EVALs by script name,
    "eval:<name>") and scripts ran, by name."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), 5)
        self.sock.sendall(b"MONITOR\r\n")
        buf = b""
        while b"\r\n" not in buf:
            buf += self.sock.recv(4096)
        self.last_incr = None
        self.last_line = time.monotonic()
        self.incrs = 0
        self.sent = {}     # by clients: {command: calls}
        self.scripted = {}  # inside scripts: {command: calls}
        self.scripts = lua_scripts()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        buf = b""
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            lines = buf.split(b"\r\n")
            buf = lines.pop()
            for line in lines:
                self._count(line)
            self.last_line = time.monotonic()

    def _count(self, line):
        # +<time> [<db> <client>] "<COMMAND>" "<arg>" ...
        m = re.match(rb'\+([\d.]+) \[\d+ (\S+)\] "([^"]*)"(?: "(.{0,40}))?',
                     line)
        if not m:
            return
        at, who, cmd, arg = m.groups()
        cmd = cmd.decode().lower()
        if cmd in ("incr", "incrby"):
            self.last_incr = float(at)
            self.incrs += 1
        if who == b"lua":
            self.scripted[cmd] = self.scripted.get(cmd, 0) + 1
            return
        if cmd in ("eval", "evalsha") and arg:
            cmd = "eval:" + next((n for n, (head, sha) in self.scripts.items()
                                  if arg.startswith(head) or arg == sha),
                                 "other")
        self.sent[cmd] = self.sent.get(cmd, 0) + 1

    def wait_quiet(self, quiet=0.3, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() - self.last_line < quiet and \
                time.monotonic() < end:
            time.sleep(0.05)

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def trace_overhead(path, fd):
    """From perf trace's log: microseconds from the end of the last read
    that returned bytes on the Redis descriptor to exit_group."""
    last_end = None
    exit_at = None
    pat = re.compile(r"^\s*([\d.]+) \(\s*([\d.]*)(?: ms)?\s*\): .*?"
                     r"(read|exit_group)"
                     r"\((?:fd: (\d+))?.*?\)\s+= (\S+)")
    try:
        with open(path) as f:
            for line in f:
                m = pat.match(line)
                if not m:
                    continue
                ts, dur, call, lfd, ret = m.groups()
                if call == "exit_group":
                    exit_at = float(ts)
                elif (fd is None or lfd == str(fd)) and ret.isdigit() \
                        and int(ret) > 0:
                    last_end = float(ts) + float(dur or 0)
    except OSError:
        return None
    if last_end is None or exit_at is None:
        return None
    return round((exit_at - last_end) * 1e3, 1)


def callgrind_functions(path):
    """{(function, object): Ir} from callgrind_annotate (self cost)."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    funcs = {}
    pat = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(.*?)\s+\[(.*)\]\s*$")
    for line in out.splitlines():
        m = pat.match(line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        ir = int(m.group(1).replace(",", ""))
        name = m.group(2)
        fn = name.split(":", 1)[1] if ":" in name else name
        obj = os.path.basename(m.group(3))
        funcs[(fn, obj)] = funcs.get((fn, obj), 0) + ir
    return funcs


def perf_report(perf, data, sort):
    out = subprocess.run([perf, "report", "-i", data, "--stdio",
                          "--no-children", "--sort", sort, "-g", "none",
                          "--percent-limit", "0.5"],
                         capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(.*\S)\s*$", line)
        if m:
            rows.append({"pct": float(m.group(1)),
                         "name": re.sub(r"\s+", " ", m.group(2))})
    return rows


def meta(args):
    def cmd(*c):
        try:
            r = subprocess.run(c, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f
                         if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain",
                            "src"], capture_output=True, text=True).stdout
    return {
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": cmd("git", "-C", ROOT, "rev-parse", "--short", "HEAD"),
        "src_modified": bool(dirty.strip()),
        "binary": os.path.abspath(os.path.join(args.build, "gracefuld")),
        "cpus": os.cpu_count(), "cpu_model": model,
        "kernel": platform.release(),
        "nginx": cmd("nginx", "-v"), "wrk": cmd("wrk", "-v"),
        "redis": cmd("redis-server", "--version"),
        "loadavg_start": os.getloadavg(),
        "server_cpu": args.server_cpu, "client_cpu": args.client_cpu,
        "redis_cpu": args.redis_cpu,
        "args": vars(args),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"),
                    help="build directory holding gracefuld (Release)")
    ap.add_argument("--only", default=",".join(DEFAULT_PHASES),
                    help="comma-separated phases: " + ",".join(PHASES) +
                    " (default: all but profile and idempotency)")
    ap.add_argument("--quick", action="store_true",
                    help="2 rounds of 3 s: a smoke run, not a measurement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=10,
                    help="seconds measured per run")
    ap.add_argument("--lat-warmup", type=float, default=5)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--incr-delay-ms", type=int, default=5000)
    ap.add_argument("--rate", type=int, default=10000,
                    help="constant request rate of the latency runs")
    ap.add_argument("--pending", type=int, default=300000,
                    help="increments sent at full speed for the memory run")
    ap.add_argument("--slow-rate", type=int, default=1000)
    ap.add_argument("--slow-seconds", type=float, default=30)
    ap.add_argument("--drain-rounds", type=int, default=5)
    ap.add_argument("--drain-delay-ms", type=int, default=1000)
    ap.add_argument("--drain-burst", type=int, default=50000)
    ap.add_argument("--startup-runs", type=int, default=10)
    ap.add_argument("--redis-requests", type=int, default=200000)
    ap.add_argument("--alloc-requests", type=int, default=120000)
    ap.add_argument("--syscall-seconds", type=float, default=4)
    ap.add_argument("--syscall-delay-ms", type=int, default=1000)
    ap.add_argument("--profile-requests", type=int, default=25000)
    ap.add_argument("--idle-conns", type=int, default=8000,
                    help="idle connections, one a millisecond")
    ap.add_argument("--idle-timeout-ms", type=int, default=3000)
    ap.add_argument("--idle-rounds", type=int, default=2)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1,
                    help="CPU of wrk and loadgen")
    ap.add_argument("--redis-cpu", type=int,
                    help="CPU of redis-server (default: the servers'). "
                    "Beside the load generator it would take that CPU "
                    "from it, and slow the load rather than the server; "
                    "beside the servers its CPU counts against the one "
                    "it works for")
    ap.add_argument("--out", help="JSON file to write, the table beside it "
                    "as .md and .html (default: "
                    "tools/bench/results/bench-<time>.json)")
    ap.add_argument("--latest", help="Markdown file for the table "
                    "(default: docs/bench/latest.md after a full run of "
                    "the default phases, none after --quick or --only)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.lat_warmup = 2, 3, 2
        args.incr_delay_ms = 2000
        args.slow_seconds, args.drain_rounds, args.startup_runs = 10, 2, 3
        args.pending, args.redis_requests = 100000, 50000
        args.alloc_requests, args.profile_requests = 30000, 10000
    if args.out and os.path.splitext(args.out)[1] in (".md", ".html"):
        ap.error("--out names the JSON file; the table is written beside "
                 "it, as .md and .html")
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    for p in phases:
        if p not in PHASES:
            ap.error(f"unknown phase {p!r}")
    if os.cpu_count() < 2:
        log("fewer than 2 CPUs: server and load share one, figures suffer")
        args.client_cpu = args.server_cpu
    if args.redis_cpu is None:
        args.redis_cpu = args.server_cpu
    for tool in ("wrk", "nginx", "redis-server", "cc"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"bench: {tool} is not installed (scripts/bench "
                     "installs what it needs)")

    results = {"meta": meta(args)}
    bench = Bench(args)
    bench.results = results
    try:
        for p in phases:
            log(f"phase {p}")
            getattr(bench, "redis_commands" if p == "redis" else p)()
    finally:
        bench.close()
        kill_children()

    out = args.out or os.path.join(
        HERE, "results",
        "bench-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") +
        ".json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    text = table(results)
    latest = args.latest
    if latest is None and not args.quick and phases == DEFAULT_PHASES:
        latest = LATEST
    if latest:
        write_latest(latest, results, text)
    if "profile" in results:
        text += "\n\n```\n" + profile_text(results["profile"]) + "\n```"
    if "idempotency" in results:
        text += "\n\n" + idempotency_text(results["idempotency"])
    m = results["meta"]
    head = (f"gracefuld {m['commit']}{' (src modified)' if m['src_modified'] else ''}"
            f" on {m['cpus']} × {m['cpu_model']}, {m['kernel']}; "
            f"{m['nginx']}; load average at start {m['loadavg_start'][0]:.2f}")
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(head + "\n\n" + text + "\n")
    import bench_html  # beside this file: the table and each round, charted
    with open(os.path.splitext(out)[0] + ".html", "w") as f:
        f.write(bench_html.page(results, head, text))
    print(head + "\n")
    print(text)
    print(f"\nwritten: {out}")
    if latest:
        print(f"written: {latest}")


if __name__ == "__main__":
    try:
        main()
    finally:
        kill_children()
