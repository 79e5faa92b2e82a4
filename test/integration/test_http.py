"""The HTTP surface: routes, methods, keep-alive and pipelining, as real
clients see them."""

import socket

from gracefuld_testlib import read_http_responses


def test_incr_answers_200_at_once_for_get_and_post(server):
    g = server()
    status, headers, body = g.request("/incr")
    assert status == 200 and body == b"ok\n"
    status, _, _ = g.request("/incr", method="POST", body=b"ignored")
    assert status == 200


def test_unknown_path_is_404(server):
    g = server()
    assert g.get("/nope") == 404
    assert g.get("/incrx") == 404


def test_known_path_with_other_method_is_405_with_allow(server):
    g = server()
    status, headers, _ = g.request("/incr", method="DELETE")
    assert status == 405 and headers["Allow"] == "GET, POST"
    status, headers, _ = g.request("/healthz", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_head_on_health_endpoints_has_no_body(server):
    g = server()
    g.wait_event("redis_up")  # /readyz is 200 only from then on
    for path in ("/healthz", "/readyz"):
        status, headers, body = g.request(path, method="HEAD")
        assert status == 200
        assert body == b""
        assert int(headers["Content-Length"]) > 0


def test_query_string_does_not_change_the_route(server):
    g = server()
    assert g.get("/incr?source=test") == 200
    assert g.get("/healthz?x=1") == 200


def test_http11_keeps_the_connection_alive(server):
    g = server()
    s = g.raw()
    for _ in range(3):
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        (status, headers, _), = read_http_responses(s, 1)
        assert status == 200 and "connection" not in headers
    s.close()


def test_connection_close_is_honoured(server):
    g = server()
    s = g.raw()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    (status, headers, _), = read_http_responses(s, 1)
    assert headers["connection"] == "close"
    assert s.recv(1) == b""  # an orderly end, not a reset
    s.close()


def test_http10_closes_unless_it_asks_for_keep_alive(server):
    g = server()
    s = g.raw()
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    (status, headers, _), = read_http_responses(s, 1)
    assert status == 200 and headers["connection"] == "close"
    assert s.recv(1) == b""
    s.close()

    s = g.raw()
    for _ in range(2):
        s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        (status, headers, _), = read_http_responses(s, 1)
        assert headers["connection"] == "keep-alive"
    s.close()


def test_pipelined_requests_are_answered_in_order(server):
    g = server()
    g.wait_event("redis_up")  # for the /readyz at the end
    s = g.raw()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
              b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
              b"DELETE /incr HTTP/1.1\r\nHost: t\r\n\r\n"
              b"GET /incr HTTP/1.1\r\nHost: t\r\n\r\n"
              b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    responses = read_http_responses(s, 5)
    assert [r[0] for r in responses] == [200, 404, 405, 200, 200]
    assert responses[1][2] == b"not found\n"
    assert responses[4][1]["connection"] == "close"
    assert s.recv(1) == b""
    s.close()


def test_a_large_pipelined_batch_is_answered_completely(server):
    """More responses than one write buffer holds, with the client reading
    only after it has sent everything."""
    g = server(env={"INCR_DELAY_MS": "60000"})
    s = g.raw()
    n = 3000
    s.sendall(b"GET /incr HTTP/1.1\r\nHost: t\r\n\r\n" * n)
    responses = read_http_responses(s, n, timeout=30)
    assert all(r[0] == 200 for r in responses)
    s.close()


def test_metrics_count_requests(server):
    g = server()
    for _ in range(3):
        assert g.get("/incr") == 200
    status, headers, body = g.request("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'gracefuld_http_requests_total{route="incr",code="200"} 3' in text
    assert "gracefuld_increments_accepted_total 3" in text


def test_readyz_is_200_once_redis_is_reached(server):
    g = server()
    g.wait_event("redis_up")
    assert g.get("/readyz") == 200
    assert g.get("/healthz") == 200


def test_bad_request_is_400_and_closes(server):
    g = server()
    s = g.raw()
    s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    (status, headers, _), = read_http_responses(s, 1)
    assert status == 400 and headers["connection"] == "close"
    assert s.recv(1) == b""
    s.close()


def test_max_pending_answers_503_with_retry_after(server):
    g = server(env={"MAX_PENDING": "2", "INCR_DELAY_MS": "60000"})
    assert g.get("/incr") == 200
    assert g.get("/incr") == 200
    status, headers, _ = g.request("/incr")
    assert status == 503 and headers["Retry-After"] == "1"
    assert g.get("/healthz") == 200
