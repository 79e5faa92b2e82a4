"""/metrics: valid Prometheus text, and counters that follow what happens."""

import re
import time

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*)\})?'
    r' (?P<value>\S+)$')


def parse(text):
    """Parses Prometheus text format 0.0.4 strictly enough to catch what a
    scraper would reject; returns ({family: type}, {(name, labels): value})."""
    types, helps, samples = {}, set(), {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert NAME.match(name), line
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert NAME.match(name), line
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name = m.group("name")
            # A histogram's samples are its name with _bucket, _sum, _count.
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            owner = family if types.get(family) == "histogram" else name
            assert owner in types, f"{name} has no TYPE line before it"
            assert (name.startswith("gracefuld_") or
                    name == "process_start_time_seconds")
            value = float(m.group("value"))
            key = (name, m.group("labels") or "")
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = value
    assert set(types) <= helps | set(types)
    return types, samples


def scrape(g):
    status, headers, body = g.request("/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(body.decode())


def test_metrics_is_valid_prometheus_text(server):
    g = server()
    types, samples = scrape(g)
    for family in ("increments_accepted_total", "increments_done_total",
                   "increments_retried_total",
                   "increments_failed_total", "redis_reconnects_total",
                   "http_requests_total"):
        assert types["gracefuld_" + family] == "counter"
    for family in ("increments_pending", "open_connections",
                   "redis_connected", "shutdown_phase"):
        assert types["gracefuld_" + family] == "gauge"
    assert types["process_start_time_seconds"] == "gauge"
    assert types["gracefuld_journal_write_size"] == "histogram"
    assert samples[("gracefuld_journal_write_size_bucket", 'le="+Inf"')] == 0
    # Given up on only as the process ends: not a series anyone can scrape.
    assert "gracefuld_increments_abandoned_total" not in types
    assert samples[("gracefuld_shutdown_phase", 'phase="running"')] == 1
    assert samples[("gracefuld_shutdown_phase", 'phase="draining"')] == 0
    assert samples[("process_start_time_seconds", "")] > 1.6e9
    # Request series exist before any request, at 0.
    assert samples[("gracefuld_http_requests_total",
                    'route="incr",code="200"')] == 0
    assert samples[("gracefuld_http_requests_total",
                    'route="other",code="400"')] == 0


def test_counters_move_as_requests_are_made(redis, server):
    g = server(env={"INCR_DELAY_MS": "0"})
    g.wait_event("redis_up")
    _, before = scrape(g)
    assert before[("gracefuld_redis_connected", "")] == 1
    for _ in range(4):
        assert g.get("/incr") == 200
    assert g.get("/nope") == 404
    _, after = scrape(g)
    assert after[("gracefuld_increments_accepted_total", "")] == 4
    incr_200 = ("gracefuld_http_requests_total", 'route="incr",code="200"')
    other_404 = ("gracefuld_http_requests_total", 'route="other",code="404"')
    assert after[incr_200] == 4 and after[other_404] == 1
    metrics_200 = ("gracefuld_http_requests_total",
                   'route="metrics",code="200"')
    assert after[metrics_200] == before.get(metrics_200, 0) + 1
    assert after[("gracefuld_open_connections", "")] >= 1
    for key, value in before.items():
        if key[0].endswith("_total"):
            assert after.get(key, 0) >= value, f"{key} went backwards"


def test_done_follows_redis_replies(redis, server):
    g = server(env={"INCR_DELAY_MS": "0"})
    g.wait_event("redis_up")
    for _ in range(3):
        assert g.get("/incr") == 200
    # No event announces a reply; scrape until it shows, within 10 s.
    deadline = time.monotonic() + 10
    done = 0
    while done < 3 and time.monotonic() < deadline:
        _, samples = scrape(g)
        done = samples[("gracefuld_increments_done_total", "")]
    assert done == 3
    assert samples[("gracefuld_increments_pending", "")] == 0
    assert redis.counter() == 3
