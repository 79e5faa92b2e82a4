"""The point of the project: on SIGTERM nothing accepted is lost, clients
see orderly closes, and the process exits as soon as the work is done."""

import os
import signal
import socket
import threading
import time

import pytest

from gracefuld_testlib import parse_responses, read_http_responses


def incr_n(g, n):
    """n requests on one keep-alive connection; all must be 200."""
    conn = g.connection()
    for _ in range(n):
        conn.request("GET", "/incr")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    conn.close()


def test_sigterm_after_n_requests_counts_exactly_n_and_exits_promptly(
        redis, server):
    delay_s = 1.0
    g = server(env={"INCR_DELAY_MS": str(int(delay_s * 1000))})
    g.wait_event("redis_up")
    n = 200
    first = time.monotonic()
    incr_n(g, n)
    last = time.monotonic()
    g.signal(signal.SIGTERM)
    assert g.wait(30) == 0
    exited = time.monotonic()
    assert redis.counter() == n
    # It waited for the increments to fall due, and no longer than needed.
    assert exited >= first + delay_s
    assert exited - (last + delay_s) < 0.5
    summary = g.wait_event("exit")
    assert summary["reason"] == "drained" and summary["exit_code"] == 0
    assert summary["accepted"] == n and summary["done"] == n
    assert summary["abandoned"] == 0
    for phase in ("running", "delaying", "draining", "flushing"):
        assert isinstance(summary[f"{phase}_ms"], int)
    assert summary["flushing_ms"] > 0


def test_exit_follows_the_last_reply_without_polling(redis, server):
    """One increment due 300 ms after its 200: the exit comes right after
    the reply, not on the next tick of some timer."""
    g = server(env={"INCR_DELAY_MS": "300"})
    g.wait_event("redis_up")
    answered = time.monotonic()
    assert g.get("/incr") == 200
    g.signal()
    assert g.wait(10) == 0
    overshoot = time.monotonic() - (answered + 0.3)
    assert overshoot < 0.1, f"exit came {overshoot * 1000:.0f} ms after due"
    assert redis.counter() == 1


def test_nothing_pending_exits_0_at_once(server):
    g = server()
    g.wait_event("redis_up")
    start = time.monotonic()
    g.signal(signal.SIGINT)
    assert g.wait(10) == 0
    assert time.monotonic() - start < 0.5


def test_shutdown_delay_serves_unready_then_refuses_connections(redis, server):
    g = server(env={"INCR_DELAY_MS": "200", "SHUTDOWN_DELAY_MS": "2000"})
    g.wait_event("redis_up")
    assert g.get("/readyz") == 200
    mark = g.mark()
    g.signal()
    g.wait_event("phase", start=mark, phase="delaying")

    status, headers, _ = g.request("/readyz")
    assert status == 503 and headers["Connection"] == "close"
    assert g.get("/healthz") == 200
    # /incr is still served, and its keep-alive connection is closed.
    s = g.raw()
    s.sendall(b"GET /incr HTTP/1.1\r\nHost: t\r\n\r\n")
    (status, headers, _), = read_http_responses(s, 1)
    assert status == 200 and headers["connection"] == "close"
    assert s.recv(1) == b""
    s.close()

    g.wait_event("phase", start=mark, phase="draining")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", g.port), timeout=5)
    assert g.wait(10) == 0
    assert redis.counter() == 1
    assert g.wait_event("exit")["delaying_ms"] >= 2000


def test_idle_keep_alive_connection_sees_an_orderly_close(redis, server):
    g = server(env={"INCR_DELAY_MS": "100"})
    s = g.raw()
    s.sendall(b"GET /incr HTTP/1.1\r\nHost: t\r\n\r\n")
    (status, headers, _), = read_http_responses(s, 1)
    assert status == 200 and "connection" not in headers
    g.signal()
    # A FIN reads as b""; a reset would raise ConnectionResetError.
    assert s.recv(1) == b""
    s.close()
    assert g.wait(10) == 0
    assert redis.counter() == 1


def test_idle_connection_that_never_closes_does_not_hold_the_exit(server):
    g = server(env={"INCR_DELAY_MS": "0"})
    s = g.raw()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    read_http_responses(s, 1)
    start = time.monotonic()
    g.signal()
    assert g.wait(10) == 0
    # The linger after our FIN is short and bounded.
    assert time.monotonic() - start < 3
    s.close()


def test_pipelined_batch_streaming_into_a_drain_is_cut_at_a_bound(
        redis, server):
    """A client sends a pipelined batch larger than the socket buffers hold
    and reads nothing: the server answers until its socket is full and
    stops reading. SIGTERM comes while most of the batch is still unread.
    From the server's side the client streams requests without pause, so
    it must not be held open by them: the server answers at most 64 KiB
    more of requests (and the rest of the read that crosses it), every one
    of them in order, the last with Connection: close, then closes with a
    FIN. The counter in Redis
    equals the 200s the client got."""
    n = 60000
    req = b"GET /incr HTTP/1.1\r\nHost: t\r\n\r\n"
    g = server(env={"INCR_DELAY_MS": "200"})
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", g.port))
    sender = threading.Thread(target=s.sendall, args=(req * n,))
    sender.start()
    # The first response proves the server is working through the batch;
    # it stops once its socket is full, which the count shows by standing
    # still.
    first = read_http_responses(s, 1, timeout=30, exact=False)
    answered = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = g.metric("gracefuld_increments_accepted_total")
        if now == answered:
            break
        answered = now
        time.sleep(0.2)
    assert answered < n, "the server answered everything before the signal"

    mark = g.mark()
    g.signal()
    g.wait_event("phase", start=mark, phase="draining")
    rest = bytearray()
    s.settimeout(30)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest.extend(chunk)
    responses = first + parse_responses(bytes(rest))
    sender.join(30)
    assert all(r[0] == 200 for r in responses)
    assert responses[-1][1].get("connection") == "close"
    assert all("connection" not in r[1] for r in responses[:-1])
    bound = (64 * 1024 + 4096) // len(req) + 1
    assert len(responses) <= answered + bound, (len(responses), answered)
    s.close()
    assert g.wait(10) == 0
    assert redis.counter() == len(responses)


def test_shutdown_timeout_abandons_and_exits_3(redis, server):
    g = server(env={"INCR_DELAY_MS": "60000", "SHUTDOWN_TIMEOUT_MS": "500"})
    incr_n(g, 10)
    start = time.monotonic()
    g.signal()
    assert g.wait(10) == 3
    elapsed = time.monotonic() - start
    assert 0.45 <= elapsed < 2.0
    assert g.wait_event("abandoned")["increments"] == 10
    summary = g.wait_event("exit")
    assert summary["reason"] == "timeout" and summary["abandoned"] == 10
    assert summary["exit_code"] == 3
    assert redis.counter() == 0


def test_second_signal_forces_the_exit(redis, server):
    g = server(env={"INCR_DELAY_MS": "60000"})
    incr_n(g, 5)
    mark = g.mark()
    g.signal(signal.SIGTERM)
    g.wait_event("phase", start=mark, phase="flushing")
    start = time.monotonic()
    g.signal(signal.SIGINT)
    assert g.wait(10) == 3
    assert time.monotonic() - start < 1.0
    summary = g.wait_event("exit")
    assert summary["reason"] == "second-signal" and summary["abandoned"] == 5
    assert g.wait_event("abandoned")["increments"] == 5


def test_sighup_is_logged_and_ignored(server):
    g = server()
    g.signal(signal.SIGHUP)
    g.wait_event("signal", signal="SIGHUP", action="ignored")
    assert g.get("/healthz") == 200
    assert g.proc.poll() is None


def test_termination_log_receives_the_summary(redis, server, tmp_path):
    path = tmp_path / "termination-log"
    g = server(env={"INCR_DELAY_MS": "0", "TERMINATION_LOG": str(path)})
    incr_n(g, 3)
    g.signal()
    assert g.wait(10) == 0
    text = path.read_text()
    assert "reason=drained" in text and "accepted=3" in text
    assert "done=3" in text and "abandoned=0" in text


def test_unwritable_termination_log_is_not_an_error(redis, server, tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "log"
    g = server(env={"INCR_DELAY_MS": "0", "TERMINATION_LOG": str(missing)})
    incr_n(g, 1)
    g.signal()
    assert g.wait(10) == 0
    assert not os.path.exists(missing)
