"""The harness itself, on a clean machine: its readiness probe period is the
manifests', and it sizes HAProxy to the file limit it has."""

import os
import resource
import subprocess
import sys

import pytest
import yaml

from conftest import ROLLOUT, SOURCE_DIR

import rollout


def test_the_default_probe_period_is_the_manifests():
    with open(os.path.join(SOURCE_DIR, "k8s", "deployment.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    deploy = next(d for d in docs if d.get("kind") == "Deployment")
    c = next(c for c in deploy["spec"]["template"]["spec"]["containers"]
             if c.get("readinessProbe"))
    assert rollout.MANIFEST_PROBE_PERIOD == \
        c["readinessProbe"]["periodSeconds"]
    assert rollout.Params().probe_period == rollout.MANIFEST_PROBE_PERIOD


def hard_nofile(limit):
    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return lower


def test_runs_where_the_hard_file_limit_is_4096(tmp_path):
    """HAProxy's maxconn comes from the limit; with today's fixed 4000 it
    would need 8026 descriptors and not start."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096:
        pytest.skip("the hard file limit is below 4096 already")
    cmd = [sys.executable, ROLLOUT, "--workdir", str(tmp_path / "logs"),
           "--requests", 100, "--rate", 25, "--workers", 5,
           "--first-rollout", 1, "--incr-delay-ms", 500,
           "--shutdown-delay-ms", 1000, "--probe-period", 0]
    out = subprocess.run(list(map(str, cmd)), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=300,
                         preexec_fn=hard_nofile(4096))
    print(out.stdout + out.stderr)
    assert out.returncode == 0, out.stderr
    assert "haproxy: maxconn 2016 (hard file limit 4096)" in out.stderr
    assert "PASS" in out.stdout


def test_says_when_the_file_limit_is_too_small_for_the_load(tmp_path):
    cmd = [sys.executable, ROLLOUT, "--workdir", str(tmp_path / "logs"),
           "--requests", 500, "--rate", 500, "--workers", 500]
    out = subprocess.run(list(map(str, cmd)), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=120,
                         preexec_fn=hard_nofile(1024))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "the hard limit on open files is 1024" in out.stderr
    assert "ulimit -Hn" in out.stderr
