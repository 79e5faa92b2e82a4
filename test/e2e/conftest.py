"""Fixtures of the rolling-update tests.

- `experiment(*args)`: runs tools/experiment/rollout.py as the command
  people run, with the built binary (GRACEFULD_BIN), and returns its exit
  status and JSON result. The table it prints is shown when a test fails, and its logs
  are kept in the test's tmp_path.
- `e2e_image`: the project's image built from the Dockerfile with podman,
  as localhost/gracefuld:e2e (the base image first, via
  test/container/base-image.sh).
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("GRACEFULD_SOURCE_DIR") or os.path.abspath(
    os.path.join(HERE, "..", ".."))
# The experiment is a tool (tools/experiment/); these tests import its
# modules (rollout, report, browser) from there.
TOOLS = os.path.join(SOURCE_DIR, "tools", "experiment")
ROLLOUT = os.path.join(TOOLS, "rollout.py")
IMAGE = "localhost/gracefuld:e2e"
CONTAINERS_CONF = os.path.join(SOURCE_DIR, "test", "container",
                               "containers.conf")
sys.path.insert(0, os.path.join(SOURCE_DIR, "test", "container"))
sys.path.insert(0, TOOLS)

# Skips (fails under CI=true) when podman is missing or cannot run a
# container on this machine.
from podman import podman_bin as require_podman  # noqa: E402


class Run:
    def __init__(self, returncode, result, output):
        self.returncode = returncode
        self.result = result
        self.output = output

    def __getitem__(self, key):
        return self.result[key]

    def old_replicas(self):
        return [r for r in self.result["replicas"] if r["deleted"] is not None]


@pytest.fixture
def experiment(tmp_path):
    def run(*args, timeout=300):
        out_json = tmp_path / "result.json"
        cmd = [sys.executable, ROLLOUT, "--json", str(out_json),
               "--workdir", str(tmp_path / "logs"), *map(str, args)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True,
                              timeout=timeout)
        output = proc.stdout + proc.stderr
        # Shown by pytest when the test fails.
        print(output)
        assert proc.returncode in (0, 1), \
            f"the experiment could not run (exit {proc.returncode}):\n{output}"
        result = json.loads(out_json.read_text())
        # The JSON line on stdout is the same result.
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
        return Run(proc.returncode, result, output)
    return run


def podman_env():
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", CONTAINERS_CONF)
    return env


def podman(*args, timeout=900, check=True):
    out = subprocess.run(["podman", *args], env=podman_env(),
                         stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, \
            f"podman {' '.join(args)} exited {out.returncode}:\n" \
            f"{out.stdout}{out.stderr}"
    return out


def images():
    """Every image in the store, intermediate ones too: {id: [names]}."""
    data = json.loads(podman("images", "--all", "--format", "json").stdout)
    return {i["Id"]: list(i.get("Names") or []) for i in data}


def remove_new_untagged(before):
    """The build's leftovers: untagged images that were not there before
    (the moved tag's old image, this build's intermediate stages), children
    before parents, skipping any that something else still uses. The layer
    cache that existed before the build stays."""
    while True:
        gone = [i for i, names in images().items()
                if i not in before and not names
                and podman("rmi", i, check=False).returncode == 0]
        if not gone:
            return


@pytest.fixture(scope="module")
def e2e_image():
    require_podman()
    base = subprocess.run(
        ["bash", os.path.join(SOURCE_DIR, "test", "container",
                              "base-image.sh")],
        env=podman_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=1800)
    assert base.returncode == 0, f"base-image.sh failed:\n{base.stderr}"
    before = images()
    old = [i for i, names in before.items() if IMAGE in names]
    # --pull=never: the base image is the local one base-image.sh made.
    podman("build", "--pull=never", "--layers", "--force-rm", "--quiet",
           "-t", IMAGE, "-f", os.path.join(SOURCE_DIR, "Dockerfile"),
           SOURCE_DIR, timeout=1800)
    yield IMAGE
    for i in old:
        before.pop(i, None)  # untagged now, unless the build was a no-op
    remove_new_untagged(before)
