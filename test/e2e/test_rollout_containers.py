"""The classic rolling-update experiment with container replicas: the
project's image (built from the Dockerfile with podman), run read-only
without capabilities on the host network, each on its own port, stopped
with `podman stop -t <grace>` as a kubelet would."""

from test_rollout import REQUESTS, assert_clean, assert_rolled


def test_classic_with_container_replicas(experiment, e2e_image):
    run = experiment("--containers", "--image", e2e_image,
                     "--requests", REQUESTS, "--rate", 25, "--workers", 5,
                     "--keep-alive", "off", "--endpoint-lag", 1,
                     "--prestop", 0, "--shutdown-delay-ms", 2000,
                     "--incr-delay-ms", 5000, "--grace", 30)
    assert_clean(run, REQUESTS)
    assert_rolled(run, 1)
    assert run["params"]["containers"] is True
    for rep in run.old_replicas():
        assert rep["drain_s"] >= 2.0
