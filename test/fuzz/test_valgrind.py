"""A short session of the plain binary under valgrind's memcheck: every
route, the HTTP errors, a pipelined batch, a vanishing client, a Redis
reconnect with increments sent again, then an orderly SIGTERM. memcheck
must report no error and no definitely lost block (its exit status says
so: --error-exitcode), and the process must drain (exit 0)."""

import shutil
import signal
import socket
import subprocess

from gracefuld_testlib import Gracefuld, LineReader, read_http_responses, \
    read_to_end, require_binary

VALGRIND_STATUS = 99


class UnderValgrind(Gracefuld):
    def start(self, wait_listening=True, timeout=120.0):
        valgrind = shutil.which("valgrind")
        assert valgrind, "valgrind is not installed (scripts/bootstrap test)"
        self.proc = subprocess.Popen(
            [valgrind, "--tool=memcheck", "--leak-check=full",
             "--errors-for-leak-kinds=definite",
             "--show-leak-kinds=definite",
             f"--error-exitcode={VALGRIND_STATUS}",
             require_binary(), *self.args],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self.log = LineReader(self.proc.stderr)
        if wait_listening:
            self.wait_event("listening", timeout)
        return self


def exchange(g, data, timeout=30):
    s = g.raw(timeout=timeout)
    s.sendall(data)
    out, _ = read_to_end(s, timeout)
    s.close()
    return out


def test_short_session_under_memcheck_has_no_errors_and_no_definite_leaks(
        redis):
    g = UnderValgrind(redis=redis, env={
        "INCR_DELAY_MS": "50", "HEADER_TIMEOUT_MS": "300",
        "MAX_HEADERS": "10", "URL_MAX_BYTES": "64", "REDIS_TIMEOUT_MS": "2000",
    }).start()
    try:
        g.wait_event("redis_up", timeout=60)
        conn = g.connection(timeout=30)
        for path in ["/incr"] * 5 + ["/healthz", "/readyz", "/metrics",
                                     "/nope"]:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == (404 if path == "/nope" else 200)
        conn.request("HEAD", "/metrics")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        conn.request("DELETE", "/incr")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 405
        conn.close()

        for data, status in [
                (b"GET /incr HTTP/1.1\r\nX: a\r\n b\r\n\r\n", b" 400 "),
                (b"POST /incr HTTP/1.1\r\nHost: t\r\n"
                 b"Content-Length: 5000\r\n\r\n", b" 413 "),
                (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", b" 414 "),
                (b"GET /incr HTTP/1.1\r\n" + b"X: y\r\n" * 11 + b"\r\n",
                 b" 431 "),
                (b"GET /incr HTTP/1.1\r\n", b" 408 ")]:
            assert status in exchange(g, data)

        s = g.raw(timeout=30)
        s.sendall(b"GET /incr HTTP/1.1\r\nHost: t\r\n\r\n" * 50)
        assert all(r[0] == 200 for r in read_http_responses(s, 50,
                                                            timeout=30))
        s.close()
        s = g.raw(timeout=30)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n" * 20 +
                  b"GET /inc")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # a reset, mid-pipeline

        # A Redis connection killed with INCRs in flight: sent again.
        mark = g.mark()
        redis.cli("CLIENT", "PAUSE", "20000", "WRITE")
        conn = g.connection(timeout=30)
        for _ in range(5):
            conn.request("GET", "/incr")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        conn.close()
        g.wait_event("redis_timeout", start=mark, timeout=60)
        redis.cli("CLIENT", "UNPAUSE")
        g.wait_event("redis_up", start=mark, timeout=60)

        g.signal(signal.SIGTERM)
        rc = g.wait(120)
    finally:
        g.stop()
    report = "\n".join(l for l in g.log.lines if l.startswith("=="))
    assert rc == 0, f"exit status {rc}:\n{report}"
    assert "ERROR SUMMARY: 0 errors" in report, report
    assert "definitely lost: 0 bytes" in report or \
        "All heap blocks were freed" in report, report
    summary = g.wait_event("exit")
    assert summary["reason"] == "drained"
    assert summary["done"] == summary["accepted"] > 0
    assert summary["retried"] >= 5
    assert redis.counter() >= summary["accepted"]
