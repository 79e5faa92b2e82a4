"""Negative controls: the harness must see the failures it exists to catch.
Each run takes one protection away and asserts that rollout.py reports the
damage (exit status 1, a FAIL verdict, and numbers of the expected size),
so that a passing test_rollout.py means something.

The runs are shorter than the classic one: 300 requests at 25/s (12 s),
one rollout at 6 s, INCR_DELAY_MS 2000."""

RATE = 25
REQUESTS = 300
INCR_DELAY_S = 2.0
LAG_S = 1.0
COMMON = ("--requests", REQUESTS, "--rate", RATE, "--workers", 5,
          "--first-rollout", 6, "--endpoint-lag", LAG_S,
          "--incr-delay-ms", int(INCR_DELAY_S * 1000))


def assert_detected(run):
    assert run.returncode == 1, run.result["problems"]
    assert run["verdict"] == "fail"
    assert run["sent"] == REQUESTS
    assert run["ok"] + run["failed"] == REQUESTS


def test_no_delay_no_prestop_fails_requests_during_the_endpoint_lag(
        experiment):
    """SIGTERM at the deletion closes the listener at once, while HAProxy
    still sends new connections there for the 1 s lag: those are refused
    and, with retries 0, their clients see the connection closed. Half the
    endpoints are old ones during the lag, so about rate x lag / 2 = 12
    requests fail. Nothing accepted is lost: the harness tells failures
    from losses."""
    run = experiment(*COMMON, "--keep-alive", "off", "--prestop", 0,
                     "--shutdown-delay-ms", 0, "--grace", 30)
    assert_detected(run)
    assert run["failed"] >= 4, run["failures"]
    # The client's view of a refused backend behind a TCP proxy.
    assert set(run["failures"]) <= {"closed", "reset"}, run["failures"]
    assert run["lost"] == 0 and run["extra"] == 0
    assert run["counter"] == run["ok"]
    assert any("requests failed" in p for p in run["problems"])
    for rep in run.old_replicas():
        assert rep["status"] == "exit 0"
        assert rep["sigterm"] < rep["unrouted"]


def test_keep_alive_on_without_protection_fails_too(experiment):
    """The control for test_keep_alive_on_prestop_sleep_covers_the_endpoint
    _lag: keep-alive clients whose idle connections are closed reconnect
    through HAProxy, which still routes some of them to the closed
    listener."""
    run = experiment(*COMMON, "--keep-alive", "on", "--prestop", 0,
                     "--shutdown-delay-ms", 0, "--grace", 30)
    assert_detected(run)
    assert run["failed"] >= 1, run["failures"]
    assert run["lost"] == 0 and run["counter"] == run["ok"]


def test_zero_grace_period_loses_the_pending_increments(experiment):
    """SIGKILL at the deletion: every increment an old replica answered in
    the last INCR_DELAY_MS is gone. All traffic went to the old replicas
    before the rollout, so about rate x INCR delay = 50 are lost."""
    run = experiment(*COMMON, "--keep-alive", "off", "--prestop", 0,
                     "--shutdown-delay-ms", 2000, "--grace", 0)
    assert_detected(run)
    expected = RATE * INCR_DELAY_S
    assert run["lost"] >= expected / 2, run.result
    assert run["lost"] <= run["ok"]
    assert run["counter"] == run["ok"] - run["lost"]
    assert any("increments lost" in p for p in run["problems"])
    for rep in run.old_replicas():
        assert rep["status"] == "SIGKILL" and rep["killed"]
