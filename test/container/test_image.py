"""The container image built from the Dockerfile, with podman.

What it is: FROM scratch, small, a numeric non-root user, no shell and no
package manager, nothing but the binary, its libraries and a few files in
/etc. What it does: run --read-only with every capability dropped, reach a
redis-server by host name (REDIS_ADDR=redis:PORT, the name from
--add-host, resolved through /etc/hosts), serve /incr on the published port,
and on `podman stop` (SIGTERM) drain to an exact counter and exit 0, with its
summary in the termination log.

The redis-server runs on the host's loopback (the `redis` fixture); the
container reaches it as 10.0.2.2 through slirp4netns (containers.conf).
"""

import http.client
import os
import stat

import pytest

from gracefuld_testlib import free_port
from podman import (HOST_LOOPBACK, UID, Logs, cleanup, image,  # noqa: F401
                    inspect, podman, proc_status, summary_fields, top,
                    unique_name)

MAX_IMAGE_BYTES = 15 * 1000 * 1000


def test_image_is_small_and_runs_as_a_numeric_non_root_user(image, capsys):
    info = inspect(image.ref, "image")
    size = info["Size"]
    with capsys.disabled():
        print(f"\n{image.ref} ({image.id[:12]}): {size} bytes "
              f"({size / 1e6:.2f} MB), built in {image.build_seconds:.1f} s")
    assert size < MAX_IMAGE_BYTES, f"image is {size} bytes"
    config = info["Config"]
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without
    # reading the image's /etc/passwd.
    assert config.get("User") == f"{UID}:{UID}"
    assert config.get("Entrypoint") == ["/gracefuld"]
    assert not config.get("Cmd"), f"Cmd {config.get('Cmd')}"
    assert "8080/tcp" in (config.get("ExposedPorts") or {})
    assert config.get("StopSignal") in ("SIGTERM", "15")
    # FROM scratch: one layer, the build stage's /out.
    assert len(info["RootFS"]["Layers"]) == 1, info["RootFS"]["Layers"]


def image_files(ref):
    """{path: stat} of every entry in the image's root file system."""
    mnt = podman("image", "mount", ref).stdout.strip()
    try:
        files = {}
        for root, dirs, names in os.walk(mnt):
            for n in dirs + names:
                path = os.path.join(root, n)
                files["/" + os.path.relpath(path, mnt)] = os.lstat(path)
        with open(os.path.join(mnt, "etc", "passwd")) as f:
            passwd = f.read()
        return files, passwd
    finally:
        podman("image", "unmount", ref)


SHELLS_AND_TOOLS = {"sh", "bash", "dash", "ash", "busybox", "apt", "apt-get",
                    "dpkg", "ps", "env", "ls", "cat", "curl", "wget"}


def test_image_holds_only_the_binary_its_libraries_and_etc(image):
    files, passwd = image_files(image.ref)
    assert "/gracefuld" in files
    for path, st in files.items():
        base = os.path.basename(path)
        assert base not in SHELLS_AND_TOOLS, f"{path} is in the image"
        assert not path.startswith(("/bin", "/sbin", "/usr/bin", "/usr/sbin",
                                    "/var/lib/dpkg", "/etc/apt",
                                    "/var/lib/apt")), f"{path} is in the image"
        if stat.S_ISDIR(st.st_mode):
            continue
        assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
        # Every file is the binary, a shared library (the dynamic loader
        # among them), one of the files glibc reads in /etc, or the CA
        # bundle OpenSSL reads for rediss://.
        assert (path == "/gracefuld" or ".so" in base or
                path in ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
                         "/usr/lib/ssl/cert.pem")), f"unexpected file {path}"
        if path != "/gracefuld" and st.st_mode & 0o111:
            assert ".so" in base, f"{path} is executable"
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), \
            f"{path} is setuid/setgid"
    assert stat.S_ISDIR(files["/tmp"].st_mode)
    users = {l.split(":")[0]: l.split(":")[2] for l in passwd.splitlines()}
    assert users.get("nonroot") == str(UID), passwd


def test_no_shell_to_run(image, cleanup):
    for shell in ("/bin/sh", "sh", "/bin/bash"):
        ctr = unique_name("sh")
        cleanup.container(ctr)
        out = podman("run", "--rm", "--name", ctr, "--network", "none",
                     "--entrypoint", shell, image.ref, "-c", "true",
                     check=False)
        assert out.returncode == 127, \
            f"{shell} ran: {out.returncode}\n{out.stdout}{out.stderr}"
        assert "no such file" in out.stderr or "not found" in out.stderr, \
            out.stderr


# ---- running it -------------------------------------------------------------

def get(port, path, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        if conn is None:
            c.close()


def termination_log_file(tmp_path):
    """A file for the container's /dev/termination-log, writable by the
    image's user (as the kubelet provides one)."""
    path = tmp_path / "termination-log"
    path.write_text("")
    os.chown(path, UID, UID)
    os.chmod(path, 0o644)
    return path


def run_hardened(image, redis, cleanup, tmp_path, name, incr_delay_ms):
    """Runs the image as the manifests do (read-only root, no
    capabilities), REDIS_ADDR a host name for the host's redis-server and a
    termination log file mounted; returns (container, published port,
    termination log, Logs) once it is started."""
    port = free_port()
    tlog = termination_log_file(tmp_path)
    ctr = unique_name(name)
    cleanup.container(ctr)
    podman("run", "--detach", "--name", ctr,
           "--read-only", "--cap-drop", "ALL",
           "--network", "slirp4netns",
           "--add-host", f"redis:{HOST_LOOPBACK}",
           "--env", f"REDIS_ADDR=redis:{redis.port}",
           "--env", f"INCR_DELAY_MS={incr_delay_ms}",
           "--volume", f"{tlog}:/dev/termination-log",
           "--publish", f"127.0.0.1:{port}:8080",
           image.ref)
    logs = Logs(ctr)
    cleanup.call("logs " + ctr, logs.close)
    return ctr, port, tlog, logs


@pytest.mark.slow
def test_read_only_without_capabilities_serves_and_drains(
        image, redis, cleanup, tmp_path):
    requests = 50
    ctr, port, tlog, logs = run_hardened(image, redis, cleanup, tmp_path,
                                         "run", 2000)

    start = logs.wait_event("start")
    assert start["redis"] == f"redis:{redis.port}"
    up = logs.wait_event("redis_up")
    assert up["addr"] == f"redis:{redis.port}"

    # The process: the image's user, no capabilities, read-only root.
    info = inspect(ctr)
    assert info["Config"]["User"] == f"{UID}:{UID}"
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    status = proc_status(info["State"]["Pid"])
    assert status["Uid"] == [str(UID)] * 4, status["Uid"]
    assert status["Gid"] == [str(UID)] * 4, status["Gid"]
    assert int(status["CapEff"][0], 16) == 0
    assert int(status["CapPrm"][0], 16) == 0
    assert int(status["CapBnd"][0], 16) == 0
    (proc,) = top(ctr, "huser", "capeff", "args")
    assert proc["huser"] == str(UID) and proc["capeff"] == "none"
    assert proc["args"].strip() == "/gracefuld"

    # Served through the published port.
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/readyz")[0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(requests):
        assert get(port, "/incr", conn) == (200, b"ok\n")
    conn.close()

    # SIGTERM; podman stop returns when the container has exited (SIGKILL
    # only after 30 s).
    stop = podman("stop", "--time", "30", ctr, timeout=60)
    assert stop.returncode == 0
    logs.wait_closed()
    assert inspect(ctr)["State"]["ExitCode"] == 0
    assert int(podman("wait", ctr).stdout.strip()) == 0

    signal = logs.wait_event("signal")
    # The drain had work to do: increments were pending at SIGTERM.
    assert signal["signal"] == "SIGTERM" and signal["pending"] > 0, signal
    exit_event = logs.wait_event("exit")
    assert exit_event["reason"] == "drained"
    assert exit_event["accepted"] == requests
    assert exit_event["done"] == requests
    assert exit_event["abandoned"] == 0
    assert redis.counter() == requests

    summary = summary_fields(tlog.read_text())
    assert summary.get("reason") == "drained", summary
    assert summary.get("exit_code") == "0"
    assert summary.get("accepted") == str(requests)
    assert summary.get("done") == str(requests)
    assert summary.get("abandoned") == "0"


def test_a_second_stop_signal_abandons_and_exits_3(image, redis, cleanup,
                                                  tmp_path):
    """The exit status the orchestrator sees when the drain is cut short:
    3, and the summary says how many increments were given up."""
    ctr, port, tlog, logs = run_hardened(image, redis, cleanup, tmp_path,
                                         "abandon", 600000)
    logs.wait_event("redis_up")
    for _ in range(3):
        assert get(port, "/incr")[0] == 200
    podman("kill", "--signal", "TERM", ctr)
    logs.wait_event("phase", phase="flushing")
    podman("kill", "--signal", "TERM", ctr)
    assert int(podman("wait", ctr, timeout=60).stdout.strip()) == 3
    logs.wait_closed()
    exit_event = logs.wait_event("exit")
    assert exit_event["abandoned"] == 3 and exit_event["done"] == 0
    summary = summary_fields(tlog.read_text())
    assert summary.get("exit_code") == "3" and summary.get("abandoned") == "3"
    assert redis.counter() == 0
