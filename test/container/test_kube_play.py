"""The k8s/ gracefuld Deployment, as `kubectl kustomize` renders it, run by
`podman kube play` with the image built from the Dockerfile.

The manifests go through kustomize with an overlay whose `images:` entry
points `gracefuld` at the local tag, as a cluster user would point it at
their build. The rendered objects are then adapted to what podman 4.3's
kube play can do on one host without a cluster; every change is listed in
for_podman() with its reason. Everything else (the container's environment,
its securityContext, the port) is the manifest's own, and the test checks
the pod honours it: user and group 65532, no capabilities, no privilege
escalation, the RuntimeDefault seccomp filter, a read-only root; the
probes' paths served on the container port; SHUTDOWN_DELAY_MS making
/readyz 503 while the pod still serves; and on stop an exact Redis counter,
exit status 0 and the summary in the termination message file.

Redis: the manifests' Redis Deployment runs the official redis:7 image,
which this machine cannot pull (no registry). A stand-in built from the base
image with Debian's redis-server would prove little about that Deployment
(another entrypoint, another file layout: exactly where the official image's
runAsUser/readOnlyRootFilesystem questions lie), would need the Debian
mirror at test time, and kube play has no Services, so gracefuld would
still reach it through a host alias and a host port. The Redis objects are
therefore replaced by what the gracefuld pod needs from them: the host name
`redis`, as a hostAliases entry pointing at the host's loopback (10.0.2.2
through slirp4netns), where the test's redis-server listens. REDIS_ADDR
keeps the manifest's host name; only its port becomes the test server's.
The Redis Deployment itself is checked statically in test_manifests.py.
"""

import copy
import http.client
import os
import re
import shutil
import subprocess

import pytest
import yaml

from gracefuld_testlib import free_port
from podman import (HOST_LOOPBACK, UID, Logs, cleanup, image,  # noqa: F401
                    inspect, podman, popen, proc_status, summary_fields,
                    unique_name)
from podman import SOURCE_DIR

K8S_DIR = os.path.join(SOURCE_DIR, "k8s")
APP = "gracefuld"


# ---- rendering --------------------------------------------------------------

def kubectl():
    path = shutil.which("kubectl")
    if not path:
        pytest.skip("kubectl (with its built-in kustomize) is not installed "
                    "(scripts/bootstrap test installs kubernetes-client)")
    return path


def render(tmp_path, image_ref):
    """`kubectl kustomize` of a copy of k8s/ whose images: entry names
    image_ref (NAME:TAG), as `kustomize edit set image` would; the objects,
    parsed."""
    base = tmp_path / "base"
    shutil.copytree(K8S_DIR, base)
    path = base / "kustomization.yaml"
    kust = yaml.safe_load(path.read_text())
    new_name, _, new_tag = image_ref.rpartition(":")
    (entry,) = [e for e in kust["images"] if e["name"] == APP]
    entry.update(newName=new_name, newTag=new_tag)
    path.write_text(yaml.safe_dump(kust))
    out = subprocess.run([kubectl(), "kustomize", str(base)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def app_container(deployment):
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
            if c["name"] == APP]
    return c


def env_value(c, name):
    (value,) = [e["value"] for e in c["env"] if e["name"] == name]
    return value


def for_podman(objs, deployment_name, redis_port, host_port, tlog_path,
               secret_dir):
    """The rendered objects as podman kube play runs them on this host.
    Returns (objects, the original gracefuld Deployment)."""
    (orig,) = [o for o in objs if o["kind"] == "Deployment" and
               o["metadata"]["name"] == APP]
    objs = copy.deepcopy(objs)
    out = []
    for o in objs:
        labels = o["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/name") == "redis":
            # The Redis Deployment and Service: see the module docstring.
            continue
        # Services and the PodDisruptionBudget stay: kube play ignores kinds
        # it does not know, so they show the rendered set is accepted as is.
        out.append(o)
        if o["kind"] != "Deployment":
            continue
        assert o["metadata"]["name"] == APP
        # A name of this suite's: kube play names the pods NAME-pod-N and
        # test/e2e may play the same manifests at the same time.
        o["metadata"]["name"] = deployment_name
        # One replica: every replica would bind the same host port, and on
        # slirp4netns a pod is reachable from the host only through one.
        o["spec"]["replicas"] = 1
        spec = o["spec"]["template"]["spec"]
        c = app_container(o)
        # No Services: the name `redis` comes from /etc/hosts (the image's
        # nsswitch.conf puts files before dns), pointing at the host.
        spec["hostAliases"] = [{"ip": HOST_LOOPBACK, "hostnames": ["redis"]}]
        for e in c["env"]:
            if e["name"] == "REDIS_ADDR":
                host, _, _ = e["value"].rpartition(":")
                assert host == "redis", e["value"]
                e["value"] = f"{host}:{redis_port}"
        # No Service or NodePort: publish the container port on the host's
        # loopback.
        (port,) = c["ports"]
        port["hostPort"] = host_port
        port["hostIP"] = "127.0.0.1"
        # Probes: podman 4.3 turns an httpGet liveness probe into a `curl`
        # health check run inside the container (the image has no curl and
        # no shell; a named port even becomes port 0) and needs systemd to
        # schedule it; readiness probes it ignores. The test requests the
        # probes' paths itself, through the published port.
        c.pop("livenessProbe", None)
        c.pop("readinessProbe", None)
        # The Secret volume (redis-auth, which k8s/ does not ship) as a host
        # directory holding the same key, for the test's password.
        for v in spec.get("volumes", []):
            if "secret" in v:
                v.pop("secret")
                v["hostPath"] = {"path": str(secret_dir),
                                 "type": "Directory"}
        # The kubelet bind-mounts a file at terminationMessagePath; kube play
        # does not (and /dev is not writable for uid 65532), so mount one.
        spec.setdefault("volumes", []).append({
            "name": "termination-log",
            "hostPath": {"path": str(tlog_path), "type": "File"}})
        c.setdefault("volumeMounts", []).append({
            "name": "termination-log",
            "mountPath": c["terminationMessagePath"]})
        # Left as rendered and not honoured by kube play 4.3:
        # terminationGracePeriodSeconds (the test stops with -t 30, the
        # manifest's value) and the preStop sleep (the test sends SIGTERM
        # itself).
    return out, orig


# ---- HTTP -------------------------------------------------------------------

def request(port, path, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        if conn is None:
            c.close()


# ---- the test ---------------------------------------------------------------

@pytest.mark.slow
def test_the_deployment_under_kube_play_serves_and_drains(
        image, redis, cleanup, tmp_path):
    requests = 20
    host_port = free_port()
    tlog = tmp_path / "termination-log"
    tlog.write_text("")
    os.chown(tlog, UID, UID)

    rendered = render(tmp_path, image.ref)
    deployment_name = unique_name("kube")
    # Redis requires the password the pod reads from its Secret volume.
    password = "kube-play-" + unique_name("pw")
    secret_dir = tmp_path / "redis-auth"
    secret_dir.mkdir()
    (secret_dir / "password").write_text(password + "\n")
    os.chmod(secret_dir, 0o755)
    os.chmod(secret_dir / "password", 0o644)
    redis.cli("CONFIG", "SET", "requirepass", password)
    redis.password = password
    objs, orig = for_podman(rendered, deployment_name, redis.port, host_port,
                            tlog, secret_dir)
    orig_c = app_container(orig)
    assert orig_c["image"] == image.ref
    settings = {e["name"]: e["value"] for e in orig_c["env"]}
    delay_ms = int(settings["SHUTDOWN_DELAY_MS"])
    grace_s = int(orig["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"])
    play = tmp_path / "play.yaml"
    play.write_text(yaml.safe_dump_all(objs))

    pod = f"{deployment_name}-pod-0"
    ctr = f"{pod}-{APP}"
    cleanup.kube(str(play))
    cleanup.pod(pod)
    # In tmp_path: kube play looks for a directory named after the image
    # (gracefuld/, with a Containerfile) in its working directory to build
    # the image from, and fails when a file has that name, as in the build
    # tree where ctest runs, next to the gracefuld binary. In podman 4.3.1
    # --build=false does not stop the lookup, and --context-dir needs
    # --build.
    podman("kube", "play", "--network", "slirp4netns", play, cwd=tmp_path,
           timeout=120)
    logs = Logs(ctr)
    cleanup.call("logs " + ctr, logs.close)

    start = logs.wait_event("start")
    # The manifest's settings reached the process.
    assert start["incr_delay_ms"] == int(settings["INCR_DELAY_MS"])
    assert start["shutdown_delay_ms"] == delay_ms
    assert start["shutdown_timeout_ms"] == int(settings["SHUTDOWN_TIMEOUT_MS"])
    up = logs.wait_event("redis_up")
    assert up["addr"] == f"redis://:***@redis:{redis.port}/0"

    # The pod runs the image built here, as the securityContext says.
    info = inspect(ctr)
    assert info["Image"].removeprefix("sha256:") == image.id
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    status = proc_status(info["State"]["Pid"])
    assert status["Uid"] == [str(UID)] * 4, status["Uid"]
    assert status["Gid"] == [str(UID)] * 4, status["Gid"]
    assert int(status["CapEff"][0], 16) == 0
    assert int(status["CapBnd"][0], 16) == 0
    assert status["NoNewPrivs"] == ["1"]  # allowPrivilegeEscalation: false
    assert status["Seccomp"] == ["2"]  # RuntimeDefault: a filter

    # Published where for_podman() put it.
    ports = podman("port", ctr).stdout
    assert re.search(rf"8080/tcp -> 127\.0\.0\.1:{host_port}\b", ports), ports

    # What the probes ask for, on the container port.
    assert request(host_port, orig_c["readinessProbe"]["httpGet"]["path"])[
        0] == 200
    assert request(host_port, orig_c["livenessProbe"]["httpGet"]["path"])[
        0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", host_port, timeout=10)
    for _ in range(requests):
        status_code, _, body = request(host_port, "/incr", conn)
        assert (status_code, body) == (200, b"ok\n")
    conn.close()

    # Stop as the kubelet does after the preStop hook: SIGTERM to the app
    # container, SIGKILL after the grace period. Not `podman pod stop`: in
    # podman 4.3 it stops the infra container at the same time, which tears
    # down slirp4netns, so the draining app loses Redis and exits 3 with
    # every pending increment abandoned.
    mark = logs.mark()
    stop = popen("stop", "--time", grace_s, ctr, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT)
    try:
        if delay_ms:
            logs.wait_event("phase", start=mark, phase="delaying")
            # Unready, still serving, and telling keep-alive clients to go.
            assert request(host_port, "/readyz")[0] == 503
            assert request(host_port, "/healthz")[0] == 200
            status_code, headers, _ = request(host_port, "/incr")
            assert status_code == 200
            assert headers.get("connection") == "close"
            requests += 1
        stop_out, _ = stop.communicate(timeout=grace_s + 30)
    finally:
        if stop.poll() is None:
            stop.kill()
            stop.wait()
    assert stop.returncode == 0, stop_out
    logs.wait_closed()
    assert inspect(ctr)["State"]["ExitCode"] == 0

    signal = logs.wait_event("signal", start=mark)
    assert signal["pending"] > 0, signal
    exit_event = logs.wait_event("exit", start=mark)
    assert exit_event["reason"] == "drained"
    assert exit_event["accepted"] == requests
    assert exit_event["done"] == requests
    assert exit_event["abandoned"] == 0
    if delay_ms:
        assert exit_event["delaying_ms"] >= delay_ms
    assert redis.counter() == requests

    summary = summary_fields(tlog.read_text())
    assert summary.get("reason") == "drained", summary
    assert summary.get("accepted") == str(requests)
    assert summary.get("done") == str(requests)
    assert summary.get("abandoned") == "0"

    # Then the rest of the pod, and kube down removes it.
    podman("pod", "stop", "--time", grace_s, pod, timeout=grace_s + 30)
    podman("kube", "down", play)
    assert podman("pod", "exists", pod, check=False).returncode == 1
    assert podman("container", "exists", ctr, check=False).returncode == 1
