"""podman for the container tests.

- `podman(...)` runs one podman command with the repository's
  containers.conf (CONTAINERS_CONF; see that file for why this machine needs
  it) and returns the completed process.
- `image` (a fixture, once per test file): the base image from
  base-image.sh, then `podman build` of the Dockerfile as IMAGE. Builds are
  cheap when the layer cache holds the steps. Afterwards the untagged images
  the build left behind are removed: only those that appeared during this
  test file, so that no other user's build cache (test/e2e builds images
  concurrently) is pulled from under it.
- `cleanup` (a fixture): registers what a test starts (containers, pods,
  kube play files) and removes it at the end of the test, also on failure.
- `Logs`: `podman logs -f` of a container, waited on line by line like
  gracefuld_testlib's Gracefuld.wait_event, with no sleeps.
- `unique_name(what)`: a unique name under the `gracefuld-ct-` prefix, which is
  this suite's and nobody else's.

Import the fixtures into a test module: `from podman import cleanup, image`.
"""

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time

import pytest

from gracefuld_testlib import LineReader, stop_process

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("GRACEFULD_SOURCE_DIR") or os.path.abspath(
    os.path.join(HERE, "..", ".."))
CONF = os.path.join(SOURCE_DIR, "test", "container", "containers.conf")
BASE_IMAGE_SCRIPT = os.path.join(SOURCE_DIR, "test", "container",
                                 "base-image.sh")
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
# The project image's tag (test/e2e uses gracefuld:e2e).
IMAGE = "localhost/gracefuld:test"
PREFIX = "gracefuld-ct-"
# The image's user (Dockerfile: USER 65532:65532).
UID = 65532
# Inside a container on slirp4netns, the host's loopback (containers.conf:
# allow_host_loopback), where the tests' redis-server listens.
HOST_LOOPBACK = "10.0.2.2"

_bin = []


def podman_bin():
    """The podman to use; skips the test (a failure under CI=true, see
    test/conftest.py) when there is none."""
    if not _bin:
        path = shutil.which("podman")
        if not path:
            pytest.skip("podman is not installed (scripts/bootstrap test)")
        _bin.append(path)
    return _bin[0]


# What podman says when its runtime cannot start any container on this
# machine (inside an unprivileged container, say, where mounting /proc or a
# cgroup fails), as opposed to a failure of the test's own container.
RUNTIME_FAILURES = ("OCI runtime", "runc create failed",
                    "error during container init")


def runtime_failure(output):
    """The line of podman's output that says it cannot run containers here,
    or None."""
    for line in output.splitlines():
        if any(m in line for m in RUNTIME_FAILURES):
            return line.strip()
    return None


def env():
    e = dict(os.environ)
    # As base-image.sh: the caller's CONTAINERS_CONF wins.
    e.setdefault("CONTAINERS_CONF", CONF)
    return e


def podman(*args, check=True, timeout=120, input=None, cwd=None):
    """Runs podman with args; returns the CompletedProcess (text). With
    check, a non-zero exit fails the test with podman's output."""
    cmd = [podman_bin(), *map(str, args)]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True,
                         cwd=cwd,
                         timeout=timeout, input=input,
                         stdin=None if input is not None else
                         subprocess.DEVNULL)
    if check and out.returncode != 0:
        why = runtime_failure(out.stdout + out.stderr)
        if why:
            pytest.skip(f"podman cannot run containers here: {why}")
        raise AssertionError(
            f"{' '.join(cmd)} exited {out.returncode}:\n"
            f"{out.stdout[-4000:]}{out.stderr[-4000:]}")
    return out


def popen(*args, **kw):
    """podman as a child process (for commands that block: stop, logs -f)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen([podman_bin(), *map(str, args)], env=env(), **kw)


def unique_name(what):
    """A name for a container or pod that no concurrent run shares."""
    return f"{PREFIX}{what}-{os.getpid()}-{secrets.token_hex(3)}"


def inspect(obj, kind="container"):
    """`podman inspect` of one container (or image, pod) as a dict."""
    cmd = {"container": ("container", "inspect"),
           "image": ("image", "inspect"),
           "pod": ("pod", "inspect")}[kind]
    data = json.loads(podman(*cmd, obj).stdout)
    return data[0] if isinstance(data, list) else data


def proc_status(pid):
    """/proc/PID/status of a container's process, seen from the host
    (rootful podman: no user namespace, host and container ids agree)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields


def top(container, *descriptors):
    """`podman top` with these descriptors (ones podman reads from /proc
    itself: the image has no ps); a list of rows, each a dict."""
    out = podman("top", container, *descriptors).stdout.splitlines()
    rows = []
    for line in out[1:]:
        values = line.split(None, len(descriptors) - 1)
        rows.append(dict(zip(descriptors, values)))
    return rows


def summary_fields(text):
    """The key=value pairs of gracefuld's termination summary."""
    return dict(re.findall(r"(\w+)=(\S+)", text))


class Logs:
    """`podman logs -f CONTAINER`: every line the container wrote to its
    stdout and stderr, gracefuld's JSON lines waited for like
    Gracefuld.wait_event. The follower ends by itself when the container
    exits; close() ends it earlier."""

    def __init__(self, container):
        self.container = container
        self.proc = popen("logs", "-f", container, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
        self.reader = LineReader(self.proc.stdout)

    @property
    def lines(self):
        return self.reader.lines

    def events(self):
        out = []
        for line in self.reader.lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def mark(self):
        return len(self.reader.lines)

    def wait_event(self, event, timeout=30.0, start=0, **fields):
        """The first JSON line from index start on with this event (and
        these field values), parsed; TimeoutError when none comes, also
        when the container exits without writing one."""
        def match(line):
            try:
                obj = json.loads(line)
            except ValueError:
                return False
            return isinstance(obj, dict) and obj.get("event") == event and \
                all(obj.get(k) == v for k, v in fields.items())
        return json.loads(self.reader.wait_for(match, timeout, start))

    def wait_closed(self, timeout=30.0):
        """Waits for the follower to end, which it does once the container
        has exited and every line has been read."""
        self.proc.wait(timeout)
        self.reader.join(timeout)

    def close(self):
        stop_process(self.proc)
        self.reader.join()


# ---- the images -------------------------------------------------------------

def image_ids():
    """Every image in the store, intermediate ones too: {id: [names]}."""
    data = json.loads(podman("images", "--all", "--format", "json").stdout)
    return {i["Id"]: list(i.get("Names") or []) for i in data}


def remove_new_untagged(before):
    """Removes the untagged images that are not in before, children before
    parents (a parent cannot go while a child is there), skipping any that
    something else uses. Returns the ids removed."""
    removed = []
    while True:
        now = image_ids()
        candidates = [i for i, names in now.items()
                      if i not in before and not names]
        progress = False
        for i in candidates:
            if podman("rmi", i, check=False).returncode == 0:
                removed.append(i)
                progress = True
        if not progress:
            return removed


def ensure_base_image():
    """Makes the Dockerfile's base image without a registry; base-image.sh
    returns at once when it exists."""
    out = subprocess.run(["bash", BASE_IMAGE_SCRIPT], env=env(),
                         capture_output=True, text=True, timeout=1800,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, \
        f"base-image.sh exited {out.returncode}:\n{out.stdout}{out.stderr}"
    assert podman("image", "exists", BASE_IMAGE, check=False).returncode == 0


class Image:
    def __init__(self, ref, image_id, build_seconds):
        self.ref = ref
        self.id = image_id
        self.build_seconds = build_seconds


@pytest.fixture(scope="session")
def image():
    """The project image, built from the Dockerfile as IMAGE (once per test
    file: ctest runs one pytest process per file)."""
    podman_bin()
    ensure_base_image()
    before = image_ids()
    old = [i for i, names in before.items() if IMAGE in names]
    tmp = tempfile.mkdtemp(prefix="gracefuld-ct-build-")
    iidfile = os.path.join(tmp, "iid")
    t0 = time.monotonic()
    try:
        # --pull=never: the base image is the local one base-image.sh made.
        podman("build", "--pull=never", "--layers", "--force-rm",
               "--iidfile", iidfile, "-t", IMAGE,
               "-f", os.path.join(SOURCE_DIR, "Dockerfile"), SOURCE_DIR,
               timeout=1800)
        with open(iidfile) as f:
            image_id = f.read().strip().removeprefix("sha256:")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    built = Image(IMAGE, image_id, time.monotonic() - t0)
    try:
        yield built
    finally:
        # What the tag named before this build, when this build moved the
        # tag away from it and nothing else names it, is left over too.
        for i in old:
            if i != image_id and not image_ids().get(i, ["?"]):
                podman("rmi", i, check=False)
        remove_new_untagged(before)


# ---- what a test starts -----------------------------------------------------

class Cleanup:
    """Things to undo at the end of a test, newest first."""

    def __init__(self):
        self._undo = []

    def container(self, ctr):
        self._undo.append(("container " + ctr, lambda: podman(
            "rm", "--force", "--time", "0", "--ignore", ctr)))

    def pod(self, pod):
        self._undo.append(("pod " + pod, lambda: podman(
            "pod", "rm", "--force", "--ignore", pod)))

    def kube(self, path):
        # kube down kills the pods at once (no grace); a test stops them in
        # order first, this only guarantees they are gone.
        self._undo.append(("kube " + path, lambda: podman(
            "kube", "down", path, check=False)))

    def call(self, what, fn):
        self._undo.append((what, fn))

    def run(self):
        errors = []
        while self._undo:
            what, fn = self._undo.pop()
            try:
                fn()
            except Exception as e:  # every undo runs; report them all
                errors.append(f"{what}: {e!r}")
        return errors


@pytest.fixture
def cleanup():
    c = Cleanup()
    yield c
    errors = c.run()
    assert not errors, "cleanup failed:\n" + "\n".join(errors)
