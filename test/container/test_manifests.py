"""The Kubernetes manifests in k8s/, as `kubectl kustomize k8s` renders them.

Each invariant the shutdown design relies on is a check_* function over the
rendered objects, reading the numbers from the manifests themselves: the
grace-period sum, probes that the binary really serves on the port it really
listens on, the rollout strategy, the security context, resources, the image
set once through kustomize, Redis without persistence, Services and the
PodDisruptionBudget selecting the right pods.

test_a_broken_manifest_fails renders temporary copies of k8s/, each patched
to break one invariant, and expects its check to fail, so no check can
pass vacuously. k8s/ itself is never written to.

Where the binary is the authority (the paths it serves, the settings it
knows, how long its shutdown takes with the manifest's settings), the built
binary is started with the manifest's environment through the `server`
fixture.
"""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from gracefuld_testlib import free_port, require_binary

SOURCE_DIR = os.environ.get("GRACEFULD_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
K8S_DIR = os.path.join(SOURCE_DIR, "k8s")

APP = "gracefuld"
UID = 65532
# The binary's reconnect backoff ceiling (BACKOFF_MAX_MS in
# src/redis/redis_link.c): after an INCR went unanswered for REDIS_TIMEOUT_MS, the
# link waits at most this long before it connects again and resends.
RECONNECT_BACKOFF_MAX_MS = 2000
# Time the app needs after its own deadline to write the termination message
# and exit, before the kubelet's SIGKILL.
EXIT_SLACK_MS = 2000
# Settings the grace-period sum uses; the manifest must state each one rather
# than rely on a default (SHUTDOWN_DELAY_MS's default even changes inside a
# pod, where KUBERNETES_SERVICE_HOST is set).
TIMING_SETTINGS = ("SHUTDOWN_DELAY_MS", "HEADER_TIMEOUT_MS", "INCR_DELAY_MS",
                   "REDIS_TIMEOUT_MS", "SHUTDOWN_TIMEOUT_MS")


# ---- rendering -------------------------------------------------------------

def kubectl():
    """kubectl, for its built-in kustomize. k8s/ uses only what every
    kustomize knows (resources and images), so Debian 12's
    kubernetes-client (1.20) renders it as a current kubectl does."""
    path = shutil.which("kubectl")
    if not path:
        pytest.skip("kubectl (with its built-in kustomize) is not installed "
                    "(scripts/bootstrap test installs kubernetes-client)")
    return path


def kustomize(directory):
    """The objects `kubectl kustomize directory` renders."""
    out = subprocess.run([kubectl(), "kustomize", directory],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, \
        f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def copy_k8s(tmp_path):
    """A copy of k8s/ under tmp_path; returns its path."""
    base = os.path.join(str(tmp_path), "base")
    shutil.copytree(K8S_DIR, base)
    return base


def render_variant(tmp_path, patches=(), images=None):
    """Renders a copy of k8s/ with these patches (strategic-merge dicts,
    each naming its target by kind and metadata.name, or app_json_patch
    ones) and images entries
    merged into its kustomization.yaml. (In the copy itself rather than in
    an overlay: the kustomize in Debian's kubectl takes a directory only
    under `bases:`.)"""
    base = copy_k8s(tmp_path)
    path = os.path.join(base, "kustomization.yaml")
    with open(path) as f:
        kust = yaml.safe_load(f)
    # patchesStrategicMerge and patchesJson6902 (files), which every
    # kustomize knows; newer ones print a deprecation warning.
    for i, patch in enumerate(patches):
        name = f"patch-{i}.yaml"
        with open(os.path.join(base, name), "w") as f:
            yaml.safe_dump(patch.get("ops", patch), f)
        if "json6902" in patch:
            kust.setdefault("patchesJson6902", []).append(
                {"target": patch["json6902"], "path": name})
        else:
            kust.setdefault("patchesStrategicMerge", []).append(name)
    for entry in images or ():
        same = [e for e in kust.setdefault("images", [])
                if e["name"] == entry["name"]]
        if same:
            same[0].update(entry)
        else:
            kust["images"].append(entry)
    with open(path, "w") as f:
        yaml.safe_dump(kust, f)
    return kustomize(base)


@pytest.fixture(scope="module")
def rendered():
    return kustomize(K8S_DIR)


# ---- reading the objects ---------------------------------------------------

def find(objs, kind, name=None):
    found = [o for o in objs if o.get("kind") == kind and
             (name is None or o["metadata"]["name"] == name)]
    return found


def one(objs, kind, name):
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(objs, name=APP):
    return one(objs, "Deployment", name)["spec"]["template"]["spec"]


def container(objs, name=APP):
    cs = [c for c in pod_spec(objs, name)["containers"] if c["name"] == name]
    assert len(cs) == 1, f"Deployment {name} has no container named {name}"
    return cs[0]


def env_of(c):
    env = {}
    for e in c.get("env", []):
        assert "valueFrom" not in e, f"{e['name']} must be a plain value"
        env[e["name"]] = str(e.get("value", ""))
    return env


def env_ms(env, name):
    assert name in env, f"{name} must be set explicitly in the manifest"
    value = env[name]
    assert re.fullmatch(r"\d+", value), f"{name}={value!r} is not a number"
    return int(value)


def port_number(c, port):
    """A probe's or Service's port (number or name) as the container port
    number it means; fails when the container declares no such port."""
    for p in c.get("ports", []):
        if port == p.get("name") or port == p["containerPort"]:
            return p["containerPort"]
    raise AssertionError(f"port {port!r} is not a port of container "
                         f"{c['name']}: {c.get('ports')}")


def app_port(objs):
    ports = container(objs).get("ports", [])
    assert len(ports) == 1, f"expected one container port, got {ports}"
    return ports[0]["containerPort"]


def prestop_seconds(c):
    pre = c.get("lifecycle", {}).get("preStop")
    if not pre:
        return 0
    assert "sleep" in pre, f"preStop is not a sleep action: {pre}"
    return int(pre["sleep"]["seconds"])


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v
                                  for k, v in selector.items())


def quantity(q):
    """A Kubernetes resource quantity as a float (cores, bytes)."""
    m = re.fullmatch(r"([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(q))
    assert m, f"unreadable quantity {q!r}"
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return float(m.group(1)) * scale


# ---- the checks ------------------------------------------------------------

def check_grace_period(objs):
    """terminationGracePeriodSeconds covers preStop + shutdown delay + drain
    + INCR_DELAY_MS + flush margin, and SHUTDOWN_TIMEOUT_MS (counted from
    SIGTERM, after the preStop hook) runs out before the kubelet's SIGKILL,
    but not before a clean shutdown can have finished."""
    spec = pod_spec(objs)
    assert "terminationGracePeriodSeconds" in spec, \
        "terminationGracePeriodSeconds must be set explicitly"
    grace_ms = int(spec["terminationGracePeriodSeconds"]) * 1000
    c = container(objs)
    env = env_of(c)
    t = {name: env_ms(env, name) for name in TIMING_SETTINGS}
    prestop_ms = prestop_seconds(c) * 1000
    flush_margin_ms = t["REDIS_TIMEOUT_MS"] + RECONNECT_BACKOFF_MAX_MS
    # From SIGTERM: delaying, then the drain (a request begun before it is
    # done within HEADER_TIMEOUT_MS), then the last accepted increment's
    # delay, then its INCR's reply, with room for one lost reply.
    clean_ms = (t["SHUTDOWN_DELAY_MS"] + t["HEADER_TIMEOUT_MS"] +
                t["INCR_DELAY_MS"] + flush_margin_ms)
    assert prestop_ms + clean_ms <= grace_ms, (
        f"preStop {prestop_ms} + delay {t['SHUTDOWN_DELAY_MS']} + drain "
        f"{t['HEADER_TIMEOUT_MS']} + INCR delay {t['INCR_DELAY_MS']} + flush "
        f"{flush_margin_ms} = {prestop_ms + clean_ms} ms > grace "
        f"{grace_ms} ms")
    assert clean_ms <= t["SHUTDOWN_TIMEOUT_MS"], (
        f"SHUTDOWN_TIMEOUT_MS {t['SHUTDOWN_TIMEOUT_MS']} would abandon "
        f"increments of a clean shutdown that needs {clean_ms} ms")
    assert prestop_ms + t["SHUTDOWN_TIMEOUT_MS"] + EXIT_SLACK_MS <= grace_ms, (
        f"the app gives up {prestop_ms} + {t['SHUTDOWN_TIMEOUT_MS']} ms after "
        f"deletion, too close to SIGKILL at {grace_ms} ms (needs "
        f"{EXIT_SLACK_MS} ms to exit)")


def check_prestop_sleep(objs):
    """The preStop hook is the native sleep action (the image has no shell),
    and nothing in the container execs a command."""
    c = container(objs)
    pre = c.get("lifecycle", {}).get("preStop")
    assert pre, "gracefuld needs a preStop sleep to cover endpoint removal"
    assert set(pre) == {"sleep"}, f"preStop must be only a sleep: {pre}"
    assert int(pre["sleep"]["seconds"]) > 0
    for hook, handler in c.get("lifecycle", {}).items():
        assert "exec" not in handler, f"{hook} execs; the image has no shell"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert "exec" not in c.get(probe, {}), f"{probe} execs"


def check_probes(objs):
    """Readiness on /readyz every second, liveness on /healthz, both on the
    container port, which is the port LISTEN_ADDR names; the scrape
    annotations point at the same port and /metrics."""
    c = container(objs)
    port = app_port(objs)
    listen = env_of(c).get("LISTEN_ADDR", "0.0.0.0:8080")
    assert listen.rpartition(":")[2] == str(port), \
        f"LISTEN_ADDR {listen} is not the container port {port}"
    ready, live = c.get("readinessProbe"), c.get("livenessProbe")
    assert ready and live, "both readiness and liveness probes are needed"
    for probe, path in ((ready, "/readyz"), (live, "/healthz")):
        get = probe.get("httpGet")
        assert get, f"{path} probe must be httpGet: {probe}"
        assert get.get("path") == path, \
            f"probe path {get.get('path')} != {path}"
        assert get.get("scheme", "HTTP") == "HTTP"
        assert port_number(c, get["port"]) == port
    assert ready.get("periodSeconds") == 1, "readiness must probe every second"
    assert ready.get("failureThreshold", 3) <= 2, \
        "readiness must notice a 503 at once"
    ann = one(objs, "Deployment", APP)["spec"]["template"]["metadata"].get(
        "annotations", {})
    assert ann.get("prometheus.io/scrape") == "true"
    assert ann.get("prometheus.io/port") == str(port)
    assert ann.get("prometheus.io/path") == "/metrics"


def check_rollout(objs):
    d = one(objs, "Deployment", APP)["spec"]
    assert d.get("replicas") == 3
    assert d["strategy"]["type"] == "RollingUpdate"
    ru = d["strategy"]["rollingUpdate"]
    assert ru.get("maxSurge") == 1, f"maxSurge {ru.get('maxSurge')}"
    assert ru.get("maxUnavailable") == 0, \
        f"maxUnavailable {ru.get('maxUnavailable')}"


def effective_security(objs, name=APP):
    pod = pod_spec(objs, name).get("securityContext", {})
    ctr = container(objs, name).get("securityContext", {})
    merged = {k: pod[k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup",
                                  "seccompProfile") if k in pod}
    merged.update(ctr)
    return merged


def check_security(objs):
    sc = effective_security(objs)
    assert sc.get("runAsNonRoot") is True
    assert sc.get("runAsUser") == UID
    assert sc.get("runAsGroup") == UID
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("privileged", False) is False
    caps = sc.get("capabilities", {})
    assert "ALL" in caps.get("drop", []), f"capabilities {caps}"
    assert not caps.get("add"), f"capabilities {caps}"
    assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"


def check_resources(objs):
    """Every container of every workload has CPU and memory requests and
    limits, requests not above limits."""
    deployments = find(objs, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} >= {APP, "redis"}
    for d in deployments:
        for c in d["spec"]["template"]["spec"]["containers"]:
            res = c.get("resources", {})
            where = f"{d['metadata']['name']}/{c['name']}"
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    assert r in res.get(kind, {}), f"{where}: no {kind}.{r}"
            for r in ("cpu", "memory"):
                assert quantity(res["requests"][r]) <= \
                    quantity(res["limits"][r]), f"{where}: {r} request > limit"


def check_termination_message(objs):
    c = container(objs)
    assert c.get("terminationMessagePath") == "/dev/termination-log"
    assert c.get("terminationMessagePolicy") == "FallbackToLogsOnError"
    assert env_of(c).get("TERMINATION_LOG", "/dev/termination-log") == \
        c["terminationMessagePath"], "the app writes its summary elsewhere"


def kustomization_image(directory):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    entries = [i for i in kust.get("images", []) if i.get("name") == APP]
    assert len(entries) == 1, "k8s/kustomization.yaml must set the " \
        "gracefuld image once, in images:"
    return entries[0]


def expected_image(entry):
    ref = entry.get("newName", entry["name"])
    if "digest" in entry:
        return f"{ref}@{entry['digest']}"
    return f"{ref}:{entry['newTag']}" if "newTag" in entry else ref


def check_image(objs, directory=K8S_DIR):
    """The Deployment's image is the one kustomization.yaml's images: entry
    names."""
    c = container(objs)
    assert c["image"] == expected_image(kustomization_image(directory)), \
        f"image {c['image']} does not come from kustomization.yaml"
    assert c.get("imagePullPolicy") in ("IfNotPresent", "Never"), \
        "a locally loaded image must not be pulled"


def check_redis(objs):
    """Redis from the official redis:7 image, persistence off, probed and
    reachable at the REDIS_ADDR gracefuld uses."""
    c = container(objs, "redis")
    name, _, tag = c["image"].rpartition(":")
    assert name.split("/")[-1] == "redis" and tag.split(".")[0] == "7", \
        f"redis image {c['image']}"
    args = c.get("command", []) + c.get("args", [])
    pairs = list(zip(args, args[1:]))
    assert ("--save", "") in pairs, f"RDB snapshots not off: {args}"
    assert ("--appendonly", "no") in pairs, f"AOF not off: {args}"
    assert c.get("readinessProbe") and c.get("livenessProbe"), \
        "redis needs readiness and liveness probes"
    host, _, port = env_of(container(objs))["REDIS_ADDR"].rpartition(":")
    svc = one(objs, "Service", host)
    labels = one(objs, "Deployment", "redis")["spec"]["template"]["metadata"][
        "labels"]
    assert labels_match(svc["spec"]["selector"], labels), \
        f"Service {host} does not select the redis pods"
    ports = [p for p in svc["spec"]["ports"] if str(p["port"]) == port]
    assert ports, f"Service {host} has no port {port}"
    assert port_number(c, ports[0].get("targetPort", ports[0]["port"])) == 6379


def secret_key_of_env(c, name):
    """(secret name, key) that container c's env variable name comes from."""
    for e in c.get("env", []):
        if e["name"] == name:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            assert ref, f"{name} of {c['name']} is not from a Secret"
            return ref["name"], ref["key"]
    raise AssertionError(f"{c['name']} has no env {name}")


def check_redis_auth(objs):
    """Redis requires a password from a Secret that k8s/ does not ship, and
    gracefuld reads that same Secret key as a file through
    REDIS_PASSWORD_FILE, readable by its user, never from its environment."""
    assert not find(objs, "Secret"), "k8s/ must not ship a password"
    r = container(objs, "redis")
    args = r.get("command", []) + r.get("args", [])
    pairs = list(zip(args, args[1:]))
    ref = [v for k, v in pairs if k == "--requirepass"]
    assert len(ref) == 1, f"redis does not require a password: {args}"
    m = re.fullmatch(r"\$\(([A-Z_]+)\)", ref[0])
    assert m, f"--requirepass {ref[0]!r} is not from the environment"
    secret = secret_key_of_env(r, m.group(1))

    c = container(objs)
    env = env_of(c)
    assert "REDIS_URL" not in env or "@" not in env["REDIS_URL"], \
        "a password in REDIS_URL"
    path = env.get("REDIS_PASSWORD_FILE")
    assert path, "gracefuld has no REDIS_PASSWORD_FILE"
    spec = pod_spec(objs)
    found = None
    for mount in c.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        (vol,) = [v for v in spec.get("volumes", [])
                  if v["name"] == mount["name"]]
        sec = vol.get("secret")
        assert sec, f"{path} is not on a Secret volume"
        items = {i["path"]: i["key"] for i in sec.get("items", [])}
        rel = path[len(prefix):]
        key = items.get(rel, rel if not items else None)
        found = (sec["secretName"], key, sec.get("defaultMode", 0o644))
    assert found, f"REDIS_PASSWORD_FILE {path} is on no volume"
    assert found[:2] == secret, \
        f"gracefuld reads {found[:2]}, Redis requires {secret}"
    mode = found[2]
    group = spec.get("securityContext", {}).get("fsGroup")
    assert mode & 0o004 or (mode & 0o040 and group == UID), \
        f"mode {oct(mode)} with fsGroup {group}: unreadable for uid {UID}"


def check_network_policy(objs):
    """One NetworkPolicy selects the Redis pods for Ingress and lets in
    only the gracefuld pods, only on Redis's port."""
    redis_labels = one(objs, "Deployment", "redis")["spec"]["template"][
        "metadata"]["labels"]
    app_labels = one(objs, "Deployment", APP)["spec"]["template"][
        "metadata"]["labels"]
    pols = [p for p in find(objs, "NetworkPolicy")
            if labels_match(p["spec"]["podSelector"].get("matchLabels"),
                            redis_labels)]
    assert len(pols) == 1, "no NetworkPolicy selects the redis pods"
    spec = pols[0]["spec"]
    assert "Ingress" in spec.get("policyTypes", ["Ingress"])
    rules = spec.get("ingress", [])
    assert len(rules) == 1, f"expected one ingress rule: {rules}"
    peers = rules[0].get("from", [])
    assert peers, "an ingress rule without `from` admits every pod"
    for peer in peers:
        assert set(peer) == {"podSelector"}, f"peer {peer} is not only pods"
        assert labels_match(peer["podSelector"].get("matchLabels"),
                            app_labels), f"peer {peer} is not gracefuld"
        assert not labels_match(peer["podSelector"].get("matchLabels"),
                                redis_labels)
    ports = rules[0].get("ports", [])
    assert ports, "an ingress rule without ports admits every port"
    r = container(objs, "redis")
    assert [port_number(r, p["port"]) for p in ports] == [6379], ports


def selected_deployments(objs, selector):
    return [d["metadata"]["name"] for d in find(objs, "Deployment")
            if labels_match(selector,
                            d["spec"]["template"]["metadata"]["labels"])]


def check_services(objs):
    """The ClusterIP and NodePort Services select the gracefuld pods (and
    only them) and send to the container port; the NodePort is 30080."""
    c = container(objs)
    port = app_port(objs)
    for name, kind in ((APP, "ClusterIP"), (APP + "-nodeport", "NodePort")):
        svc = one(objs, "Service", name)["spec"]
        assert svc.get("type", "ClusterIP") == kind, f"{name} is not {kind}"
        assert selected_deployments(objs, svc.get("selector")) == [APP], \
            f"Service {name} selects {svc.get('selector')}"
        assert len(svc["ports"]) == 1
        p = svc["ports"][0]
        assert port_number(c, p.get("targetPort", p["port"])) == port, \
            f"Service {name} targets {p.get('targetPort')}"
        if kind == "NodePort":
            assert p.get("nodePort") == 30080
    for svc in find(objs, "Service"):
        assert selected_deployments(objs, svc["spec"].get("selector")), \
            f"Service {svc['metadata']['name']} selects no pods"


def check_pdb(objs):
    pdbs = find(objs, "PodDisruptionBudget")
    assert len(pdbs) == 1
    spec = pdbs[0]["spec"]
    dep = one(objs, "Deployment", APP)["spec"]
    assert spec["selector"] == dep["selector"] or selected_deployments(
        objs, spec["selector"].get("matchLabels")) == [APP], \
        f"PDB selector {spec['selector']} does not match the gracefuld pods"
    assert "matchExpressions" not in spec["selector"]
    replicas = dep["replicas"]
    if "maxUnavailable" in spec:
        assert 1 <= int(spec["maxUnavailable"]) < replicas
    else:
        assert 1 <= int(spec["minAvailable"]) <= replicas - 1


def check_labels(objs):
    for o in objs:
        labels = o["metadata"].get("labels", {})
        what = f"{o['kind']} {o['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == APP, what
        assert labels.get("app.kubernetes.io/name"), what


CHECKS = [check_grace_period, check_prestop_sleep, check_probes,
          check_rollout, check_security, check_resources,
          check_termination_message, check_image, check_redis,
          check_services, check_pdb, check_labels, check_redis_auth,
          check_network_policy]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_manifests_hold(rendered, check):
    check(rendered)


# ---- each check fails on a manifest that breaks its invariant --------------

def app_patch(pod=None, ctr=None, spec=None, template_meta=None):
    """A strategic-merge patch of the gracefuld Deployment."""
    template = {"spec": dict(pod or {})}
    if ctr is not None:
        template["spec"]["containers"] = [dict(ctr, name=APP)]
    if template_meta:
        template["metadata"] = template_meta
    body = dict(spec or {})
    body["template"] = template
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": APP}, "spec": body}


def env_patch(name, value):
    return app_patch(ctr={"env": [{"name": name, "value": value}]})


def app_json_patch(*ops):
    """A JSON patch (RFC 6902) of the gracefuld Deployment. Unlike a
    strategic merge, it needs no schema: the kustomize in Debian's kubectl
    (Kubernetes 1.20) does not know the preStop sleep action and refuses a
    strategic merge that names it."""
    return {"json6902": {"group": "apps", "version": "v1",
                         "kind": "Deployment", "name": APP},
            "ops": [dict(op=o, path=p, value=v) for o, p, v in ops]}


def app_json_patch_of(kind, name, group, version, *ops):
    """A JSON patch of any object."""
    return {"json6902": {"group": group, "version": version, "kind": kind,
                         "name": name},
            "ops": [dict(op=o, path=p, value=v) if v is not None
                    else dict(op=o, path=p) for o, p, v in ops]}


def redis_patch(ctr):
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "redis"},
            "spec": {"template": {"spec": {
                "containers": [dict(ctr, name="redis")]}}}}


def other_patch(kind, name, spec, api="v1"):
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name},
            "spec": spec}


BREAKAGES = [
    ("grace-too-short", check_grace_period,
     app_patch(pod={"terminationGracePeriodSeconds": 15})),
    ("incr-delay-beyond-grace", check_grace_period,
     env_patch("INCR_DELAY_MS", "20000")),
    ("drain-beyond-timeout", check_grace_period,
     env_patch("HEADER_TIMEOUT_MS", "12000")),
    ("timeout-past-sigkill", check_grace_period,
     env_patch("SHUTDOWN_TIMEOUT_MS", "25000")),
    ("timeout-too-short", check_grace_period,
     env_patch("SHUTDOWN_TIMEOUT_MS", "9000")),
    ("prestop-too-long", check_grace_period,
     app_json_patch(("replace", "/spec/template/spec/containers/0/lifecycle"
                     "/preStop/sleep/seconds", 12))),
    ("shutdown-delay-unset", check_grace_period,
     app_patch(ctr={"env": [{"name": "SHUTDOWN_DELAY_MS",
                             "$patch": "delete"}]})),
    ("prestop-exec", check_prestop_sleep,
     app_patch(ctr={"lifecycle": {"preStop": {
         "sleep": None, "exec": {"command": ["sleep", "5"]}}}})),
    ("prestop-missing", check_prestop_sleep,
     app_patch(ctr={"lifecycle": None})),
    ("readiness-on-healthz", check_probes,
     app_patch(ctr={"readinessProbe": {"httpGet": {"path": "/healthz"}}})),
    ("liveness-on-readyz", check_probes,
     app_patch(ctr={"livenessProbe": {"httpGet": {"path": "/readyz"}}})),
    ("readiness-wrong-port", check_probes,
     app_patch(ctr={"readinessProbe": {"httpGet": {"port": 9090}}})),
    ("readiness-slow", check_probes,
     app_patch(ctr={"readinessProbe": {"periodSeconds": 10}})),
    ("listen-elsewhere", check_probes,
     env_patch("LISTEN_ADDR", "0.0.0.0:9090")),
    ("scrape-port-wrong", check_probes,
     app_patch(template_meta={"annotations": {"prometheus.io/port": "9090"}})),
    ("max-unavailable-1", check_rollout,
     app_patch(spec={"strategy": {"rollingUpdate": {"maxUnavailable": 1}}})),
    ("max-surge-2", check_rollout,
     app_patch(spec={"strategy": {"rollingUpdate": {"maxSurge": 2}}})),
    ("two-replicas", check_rollout, app_patch(spec={"replicas": 2})),
    ("writable-root", check_security,
     app_patch(ctr={"securityContext": {"readOnlyRootFilesystem": False}})),
    ("privilege-escalation", check_security,
     app_patch(ctr={"securityContext": {"allowPrivilegeEscalation": True}})),
    ("root-user", check_security,
     app_patch(ctr={"securityContext": {"runAsUser": 0}})),
    ("other-group", check_security,
     app_patch(pod={"securityContext": {"runAsGroup": 0}})),
    ("caps-kept", check_security,
     app_patch(ctr={"securityContext": {"capabilities": {"drop": []}}})),
    ("seccomp-unconfined", check_security,
     app_patch(pod={"securityContext": {
         "seccompProfile": {"type": "Unconfined"}}})),
    ("no-limits", check_resources, app_patch(ctr={"resources": {
        "limits": None}})),
    ("redis-no-requests", check_resources, redis_patch({"resources": {
        "requests": None}})),
    ("request-over-limit", check_resources, app_patch(ctr={"resources": {
        "requests": {"memory": "1Gi"}}})),
    ("termination-policy-file", check_termination_message,
     app_patch(ctr={"terminationMessagePolicy": "File"})),
    ("termination-log-elsewhere", check_termination_message,
     env_patch("TERMINATION_LOG", "/tmp/summary")),
    ("image-pinned-in-deployment", check_image,
     app_patch(ctr={"image": "example.invalid/gracefuld:pinned"})),
    ("redis-saves", check_redis, redis_patch({"args": [
        "redis-server", "--save", "3600 1", "--appendonly", "no"]})),
    ("redis-aof", check_redis, redis_patch({"args": [
        "redis-server", "--save", "", "--appendonly", "yes"]})),
    ("redis-addr-unknown-service", check_redis,
     env_patch("REDIS_ADDR", "redis-master:6379")),
    ("redis-service-other-pods", check_redis,
     other_patch("Service", "redis", {"selector": {
         "app.kubernetes.io/name": APP}})),
    ("service-selects-redis", check_services,
     other_patch("Service", APP, {"selector": {
         "app.kubernetes.io/name": "redis"}})),
    ("nodeport-wrong-target", check_services,
     other_patch("Service", APP + "-nodeport", {"ports": [{
         "port": 8080, "protocol": "TCP", "targetPort": 9999,
         "nodePort": 30080}]})),
    ("nodeport-other-port", check_services,
     other_patch("Service", APP + "-nodeport", {"ports": [{
         "port": 8080, "protocol": "TCP", "targetPort": "http",
         "nodePort": 30081}]})),
    ("redis-without-password", check_redis_auth, redis_patch({"args": [
        "redis-server", "--save", "", "--appendonly", "no"]})),
    ("password-file-unset", check_redis_auth,
     app_patch(ctr={"env": [{"name": "REDIS_PASSWORD_FILE",
                             "$patch": "delete"}]})),
    ("password-file-elsewhere", check_redis_auth,
     env_patch("REDIS_PASSWORD_FILE", "/etc/redis-password")),
    ("other-secret", check_redis_auth,
     app_patch(pod={"volumes": [{"name": "redis-auth", "secret": {
         "secretName": "other", "items": [
             {"key": "password", "path": "password"}]}}]})),
    ("secret-unreadable", check_redis_auth,
     app_patch(pod={"securityContext": {"fsGroup": None}})),
    ("policy-admits-all", check_network_policy,
     other_patch("NetworkPolicy", "redis", {"ingress": [{"from": [{
         "podSelector": {}}], "ports": [{"protocol": "TCP", "port": 6379}]}]},
         api="networking.k8s.io/v1")),
    ("policy-any-port", check_network_policy,
     app_json_patch_of("NetworkPolicy", "redis", "networking.k8s.io", "v1",
                       ("remove", "/spec/ingress/0/ports", None))),
    ("policy-other-pods", check_network_policy,
     app_json_patch_of("NetworkPolicy", "redis", "networking.k8s.io", "v1",
                       ("replace", "/spec/podSelector/matchLabels",
                        {"app.kubernetes.io/name": APP}))),
    ("pdb-selects-nothing", check_pdb,
     other_patch("PodDisruptionBudget", APP, {"selector": {"matchLabels": {
         "app.kubernetes.io/name": "gracefuld-old"}}}, api="policy/v1")),
    ("pdb-blocks-drains", check_pdb,
     other_patch("PodDisruptionBudget", APP, {"maxUnavailable": 0},
                 api="policy/v1")),
]


@pytest.mark.parametrize("check,patch", [b[1:] for b in BREAKAGES],
                         ids=[b[0] for b in BREAKAGES])
def test_a_broken_manifest_fails(tmp_path, check, patch):
    broken = render_variant(tmp_path, patches=[patch])
    with pytest.raises(AssertionError):
        check(broken)


def test_a_shipped_secret_fails(rendered):
    """A Secret in k8s/ would be a password in the repository."""
    shipped = rendered + [{"apiVersion": "v1", "kind": "Secret",
                           "metadata": {"name": "redis-auth"},
                           "stringData": {"password": "x"}}]
    with pytest.raises(AssertionError):
        check_redis_auth(shipped)


def test_an_unpatched_copy_passes(tmp_path):
    """The patching machinery itself changes nothing: every check passes on
    a copy without patches, so the failures above are the patches'."""
    objs = render_variant(tmp_path)
    for check in CHECKS:
        if check is not check_image:
            check(objs)
    check_image(objs, os.path.join(str(tmp_path), "base"))


# ---- the image is set once, through kustomize ------------------------------

def test_the_image_is_set_by_kustomize_images(tmp_path):
    with open(os.path.join(K8S_DIR, "deployment.yaml")) as f:
        sources = [d for d in yaml.safe_load_all(f) if d]
    src = [c for d in sources if d["kind"] == "Deployment"
           for c in d["spec"]["template"]["spec"]["containers"]
           if c["name"] == APP]
    assert [c["image"] for c in src] == [APP], \
        "deployment.yaml names the image only as `gracefuld`"

    # As `kustomize edit set image gracefuld=...` would, in a copy of k8s/.
    base = copy_k8s(tmp_path)
    path = os.path.join(base, "kustomization.yaml")
    with open(path) as f:
        kust = yaml.safe_load(f)
    for entry in kust["images"]:
        if entry["name"] == APP:
            entry["newName"] = "registry.invalid/team/gracefuld"
            entry["newTag"] = "pr-1234"
    with open(path, "w") as f:
        yaml.safe_dump(kust, f)
    objs = kustomize(base)
    assert container(objs)["image"] == \
        "registry.invalid/team/gracefuld:pr-1234"
    assert container(objs, "redis")["image"] == \
        container(kustomize(K8S_DIR), "redis")["image"]

    # And an images: entry with only newTag keeps the name.
    (tmp_path / "base2").mkdir()
    objs = render_variant(tmp_path / "base2",
                          images=[{"name": APP, "newTag": "local-test"}])
    base_entry = kustomization_image(K8S_DIR)
    assert container(objs)["image"] == \
        f"{base_entry.get('newName', APP)}:local-test"


# ---- the documented alternative to the preStop sleep -----------------------

def documented_alternative():
    """The settings deployment.yaml's comment gives for clusters without the
    preStop sleep action."""
    with open(os.path.join(K8S_DIR, "deployment.yaml")) as f:
        text = f.read()
    at = text.find("without the preStop sleep")
    assert at >= 0, "deployment.yaml documents no alternative to preStop"
    at = text.rfind("\n", 0, at) + 1
    settings = {}
    for line in text[at:].splitlines():
        if not line.startswith("#"):
            break
        m = re.match(r"#\s+([A-Z_]+_MS)\s*=\s*(\d+)", line)
        if m:
            settings[m.group(1)] = m.group(2)
    assert "SHUTDOWN_DELAY_MS" in settings, settings
    return settings


def test_the_documented_alternative_also_fits_the_grace_period(tmp_path):
    settings = documented_alternative()
    patch = app_patch(ctr={"lifecycle": None, "env": [
        {"name": k, "value": v} for k, v in settings.items()]})
    objs = render_variant(tmp_path, patches=[patch])
    c = container(objs)
    assert "lifecycle" not in c
    # It covers at least the endpoint propagation the preStop sleep covered.
    base = kustomize(K8S_DIR)
    assert int(settings["SHUTDOWN_DELAY_MS"]) >= \
        prestop_seconds(container(base)) * 1000
    check_grace_period(objs)


# ---- the binary serves what the manifest probes -----------------------------

def help_settings():
    out = subprocess.run([require_binary(), "--help"], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"^\s+--\S+(?: \S+)?\s+([A-Z][A-Z_]+)\s",
                          out.stdout + out.stderr, re.M))


def test_every_setting_in_the_manifest_is_one_the_binary_knows(rendered):
    known = help_settings()
    assert "SHUTDOWN_DELAY_MS" in known, known
    unknown = set(env_of(container(rendered))) - known
    assert not unknown, f"settings gracefuld does not read: {unknown}"


def pod_env(objs, tmp_path):
    """The manifest's environment as the pod sees it, with the addresses and
    the termination log made local to the test."""
    env = env_of(container(objs))
    for k in ("LISTEN_ADDR", "REDIS_ADDR"):
        env.pop(k)
    env["TERMINATION_LOG"] = str(tmp_path / "termination-log")
    # The Secret volume, as a local file: the test's Redis has no password,
    # which gracefuld notes (redis_auth_unneeded) and works with.
    secret = tmp_path / "redis-password"
    secret.write_text("not-a-real-password\n")
    env["REDIS_PASSWORD_FILE"] = str(secret)
    # What the kubelet adds to every pod; it changes SHUTDOWN_DELAY_MS's
    # default, which the manifest must override.
    env["KUBERNETES_SERVICE_HOST"] = "10.96.0.1"
    env["KUBERNETES_SERVICE_PORT"] = "443"
    return env


def probe_paths(objs):
    c = container(objs)
    ann = one(objs, "Deployment", APP)["spec"]["template"]["metadata"][
        "annotations"]
    return (c["readinessProbe"]["httpGet"]["path"],
            c["livenessProbe"]["httpGet"]["path"],
            ann["prometheus.io/path"])


def test_the_probed_paths_are_served(rendered, server, tmp_path):
    ready, live, metrics = probe_paths(rendered)
    g = server(env=pod_env(rendered, tmp_path))
    start = g.wait_event("start")
    env = env_of(container(rendered))
    assert start["shutdown_delay_ms"] == env_ms(env, "SHUTDOWN_DELAY_MS")
    assert start["shutdown_timeout_ms"] == env_ms(env, "SHUTDOWN_TIMEOUT_MS")
    assert start["incr_delay_ms"] == env_ms(env, "INCR_DELAY_MS")
    g.wait_event("redis_up")
    assert g.get(ready) == 200
    assert g.get(live) == 200
    status, headers, body = g.request(metrics)
    assert status == 200
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers.get("content-type", "").startswith("text/plain")
    assert b"gracefuld_" in body


def test_readiness_fails_while_redis_is_unreachable(rendered, server,
                                                    tmp_path):
    ready, live, _ = probe_paths(rendered)
    env = pod_env(rendered, tmp_path)
    env["REDIS_ADDR"] = f"127.0.0.1:{free_port()}"
    g = server(env=env)
    g.wait_event("redis_down")
    assert g.get(ready) == 503
    assert g.get(live) == 200


@pytest.mark.slow
def test_a_pod_shutdown_with_the_manifest_settings_fits_its_budget(
        rendered, server, redis, tmp_path):
    """SIGTERM (what the kubelet sends after the preStop sleep) with the
    manifest's settings: unready but serving for SHUTDOWN_DELAY_MS, then a
    clean exit 0 with the accepted increment counted, well inside
    SHUTDOWN_TIMEOUT_MS, the summary in the termination log."""
    ready, live, _ = probe_paths(rendered)
    env = env_of(container(rendered))
    delay = env_ms(env, "SHUTDOWN_DELAY_MS")
    g = server(env=pod_env(rendered, tmp_path))
    g.wait_event("redis_up")
    assert g.get("/incr") == 200
    mark = g.mark()
    t0 = time.monotonic()
    g.signal(signal.SIGTERM)
    if delay:
        g.wait_event("phase", start=mark, phase="delaying")
        assert g.get(ready) == 503
        assert g.get(live) == 200
        assert g.get("/incr") == 200
    rc = g.wait(timeout=env_ms(env, "SHUTDOWN_TIMEOUT_MS") / 1000 + 10)
    elapsed_ms = (time.monotonic() - t0) * 1000
    assert rc == 0
    assert elapsed_ms < env_ms(env, "SHUTDOWN_TIMEOUT_MS")
    exit_event = g.wait_event("exit")
    assert exit_event["reason"] == "drained"
    assert exit_event["abandoned"] == 0
    assert delay <= exit_event["delaying_ms"] < delay + 1000
    assert redis.counter() == (2 if delay else 1)
    with open(tmp_path / "termination-log") as f:
        summary = f.read()
    assert "reason=drained" in summary and "abandoned=0" in summary


# ---- the managed-redis-tls component -----------------------------------------

def render_with_component(tmp_path, component):
    """k8s/ with one of its components, through an overlay beside a copy
    (kustomize refuses an overlay inside the directory it builds on)."""
    copy_k8s(tmp_path)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization", "resources": ["../base"],
        "components": [f"../base/components/{component}"]}))
    return kustomize(str(overlay))


def test_the_managed_redis_tls_component(tmp_path, rendered):
    """The in-cluster Redis is gone; gracefuld reads a rediss:// URL (and,
    in cluster mode, the seed nodes) from a ConfigMap, verifies against a CA bundle mounted where REDIS_TLS_CA_FILE
    says, keeps the password in the Secret's file, and every setting is
    one the binary knows. The base's invariants still hold."""
    objs = render_with_component(tmp_path, "managed-redis-tls")
    for kind in ("Deployment", "Service", "NetworkPolicy"):
        assert not find(objs, kind, "redis"), f"{kind} redis still there"
    c = container(objs)
    env = {e["name"]: e for e in c["env"]}
    assert "REDIS_ADDR" not in env
    assert env["REDIS_URL"]["valueFrom"]["configMapKeyRef"] == {
        "name": "redis-endpoint", "key": "url"}
    # Cluster mode from the same ConfigMap; without the key, one endpoint.
    assert env["REDIS_CLUSTER_NODES"]["valueFrom"]["configMapKeyRef"] == {
        "name": "redis-endpoint", "key": "cluster-nodes", "optional": True}
    ca = env["REDIS_TLS_CA_FILE"]["value"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
    mount = mounts["redis-ca"]
    assert mount["readOnly"] is True
    item = os.path.relpath(ca, mount["mountPath"])
    assert volumes["redis-ca"]["configMap"]["name"] == "redis-ca"
    assert {"key": "ca.crt", "path": item} in \
        volumes["redis-ca"]["configMap"]["items"]
    assert env["REDIS_PASSWORD_FILE"] == next(
        e for e in container(rendered)["env"]
        if e["name"] == "REDIS_PASSWORD_FILE")
    assert "secret" in volumes["redis-auth"]
    known = help_settings()
    assert not set(env) - known, set(env) - known
    # Everything else, the shutdown budget included, is the base's (but
    # for the resources of a Redis it no longer runs).
    plain = [o for o in objs if o is not None]
    for d in plain:
        for e in (d.get("spec", {}).get("template", {}).get("spec", {})
                  .get("containers", [{}])[0].get("env", [])):
            if "valueFrom" in e:
                e.pop("valueFrom")
                e["value"] = "rediss://cache.example:6380/0"
    for check in (check_grace_period, check_prestop_sleep, check_probes,
                  check_rollout, check_security, check_termination_message):
        check(plain)
