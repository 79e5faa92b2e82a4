"""Fixtures and rules shared by every Python test suite.

- `redis`: a private redis-server on a free port, stopped afterwards.
- `server`: a factory that starts gracefuld against it; every process it
  started is killed at the end of the test, and its log is checked for
  sanitizer reports.
- Under CI=true nothing may skip: a skip is turned into a failure.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))

from gracefuld_testlib import Gracefuld, Redis  # noqa: E402

SANITIZER_MARKS = ("Sanitizer", "runtime error:", "LeakSanitizer")


@pytest.fixture
def redis():
    r = Redis().start()
    yield r
    r.cleanup()


@pytest.fixture
def server(redis):
    """server(**kw) starts gracefuld against the test's redis; keywords as
    Gracefuld (env, args, ...)."""
    started = []

    def start(wait_listening=True, **kw):
        kw.setdefault("redis", redis)
        g = Gracefuld(**kw)
        started.append(g)
        return g.start(wait_listening=wait_listening)

    yield start
    for g in started:
        g.stop()
    for g in started:
        if g.log is None:
            continue
        reports = [l for l in g.log.lines
                   if any(m in l for m in SANITIZER_MARKS)]
        assert not reports, "sanitizer report:\n" + "\n".join(g.log.lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which allows no skips: " \
                          f"{report.longrepr}"
