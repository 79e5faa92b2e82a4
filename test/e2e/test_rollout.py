"""The rolling-update experiment with process replicas: requests at a
constant rate through HAProxy (the Service) while three replicas roll with
maxSurge 1 / maxUnavailable 0; afterwards the Redis counter equals the
number of 200s and no request failed.

Each test runs tools/experiment/rollout.py, the command people run; see
test_controls.py for the runs that must fail."""

import pytest

REQUESTS = 1000


def assert_clean(run, requests):
    """Nothing lost, nothing failed, and every replica drained cleanly."""
    r = run.result
    assert run.returncode == 0, r["problems"]
    assert r["verdict"] == "pass"
    assert r["sent"] == requests
    assert r["ok"] == requests
    assert r["failed"] == 0, r["failures"]
    assert r["counter"] == requests
    assert r["lost"] == 0 and r["extra"] == 0
    # The replicas' own exit summaries account for every 200.
    assert r["accepted_by_replicas"] == requests
    for rep in r["replicas"]:
        assert rep["status"] == "exit 0", rep
        assert rep["reason"] == "drained" and rep["abandoned"] == 0, rep


def assert_rolled(run, rollouts, replicas=3):
    r = run.result
    assert len(r["rollouts"]) == rollouts
    old = run.old_replicas()
    assert len(old) == rollouts * replicas
    assert len(r["replicas"]) == (rollouts + 1) * replicas
    lag = r["params"]["endpoint_lag"]
    for rep in old:
        # Taken out of the Service one endpoint lag after its deletion,
        # while the load was running.
        assert rep["unrouted"] - rep["deleted"] == pytest.approx(lag, abs=0.3)
        assert rep["deleted"] < r["load_s"]
        # It served through the lag: SIGTERM did not come before the
        # preStop sleep was over.
        assert rep["sigterm"] - rep["deleted"] >= r["params"]["prestop"] - 0.05


def test_classic_keep_alive_off_shutdown_delay_covers_the_endpoint_lag(
        experiment):
    """1000 requests at 25/s for 40 s, one rollout at 20 s; a new
    connection per request. SHUTDOWN_DELAY_MS (2 s) keeps each old replica
    serving while its endpoint removal (1 s) propagates."""
    run = experiment("--requests", REQUESTS, "--rate", 25, "--workers", 5,
                     "--keep-alive", "off", "--endpoint-lag", 1,
                     "--prestop", 0, "--shutdown-delay-ms", 2000,
                     "--incr-delay-ms", 5000, "--grace", 30)
    assert_clean(run, REQUESTS)
    assert_rolled(run, 1)
    for rep in run.old_replicas():
        # SIGTERM at once; the drain took the delay and the last INCR.
        assert rep["sigterm"] - rep["deleted"] < 0.1
        assert rep["drain_s"] >= 2.0


def test_keep_alive_on_prestop_sleep_covers_the_endpoint_lag(experiment):
    """The same with keep-alive connections, and the lag covered by a 2 s
    preStop sleep instead of the app's delay (SHUTDOWN_DELAY_MS 0): SIGTERM
    closes the listener at once, which is safe only because the endpoint
    is gone by then, and closes idle keep-alive connections with a FIN.
    25 workers, one connection each, for 1 request/s: many connections to
    reconnect, as in its control."""
    run = experiment("--requests", REQUESTS, "--rate", 25, "--workers", 25,
                     "--keep-alive", "on", "--endpoint-lag", 1,
                     "--prestop", 2, "--shutdown-delay-ms", 0,
                     "--incr-delay-ms", 5000, "--grace", 30)
    assert_clean(run, REQUESTS)
    assert_rolled(run, 1)
    for rep in run.old_replicas():
        assert rep["unrouted"] < rep["sigterm"]


def test_stress_420_per_second_three_rollouts_keep_alive_on(experiment):
    """420 requests per second on keep-alive connections for 16 s, three
    rollouts 4 s apart (nine replicas replaced, nine drains overlapping
    the load), preStop 1.5 s and SHUTDOWN_DELAY_MS 1000 as in k8s/. New
    replicas count as ready at once (--probe-period 0), so each rollout
    replaces its three replicas within milliseconds and their drains
    overlap."""
    requests = 6720
    run = experiment("--requests", requests, "--rate", 420, "--workers", 20,
                     "--probe-period", 0,
                     "--keep-alive", "on", "--rollouts", 3, "--spacing", 4,
                     "--endpoint-lag", 1, "--prestop", 1.5,
                     "--shutdown-delay-ms", 1000, "--incr-delay-ms", 2000,
                     "--grace", 30)
    assert_clean(run, requests)
    assert_rolled(run, 3)
    # The rate held: hey's -q only slows workers down, never speeds them up
    # to catch up, so a stall would show here.
    assert run["achieved_rps"] >= 400
    # Every rolled replica served a share of the load.
    assert all(rep["accepted"] > 0 for rep in run.result["replicas"])
