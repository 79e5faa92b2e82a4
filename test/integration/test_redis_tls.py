"""TLS to Redis: Debian's redis-server listening on TLS only (--port 0
--tls-port), with certificates this test makes with the openssl command.
Both durabilities count every 200 over rediss://; a CA that did not sign
the server's certificate, a certificate for another host name, a missing
client certificate and a server that never finishes the handshake each
keep gracefuld unready, saying why; REDIS_TLS_SERVER_NAME verifies another
name; a password sent over TLS never reaches the logs or /metrics."""

import socket
import subprocess

import pytest

from gracefuld_testlib import Certs, Gracefuld, Redis, require_binary

PASSWORD = "tls-s3cret-pw"


@pytest.fixture(scope="module")
def certs():
    c = Certs()
    c.server = c.issue("server")  # localhost and 127.0.0.1
    c.elsewhere = c.issue("elsewhere", sans=("DNS:elsewhere.test",))
    c.client = c.issue("client", sans=(), client=True)
    c.other_ca = c.make_ca("other-ca")
    yield c
    c.cleanup()


def env_for(redis, certs, host="localhost", **more):
    env = {"REDIS_URL": f"rediss://{host}:{redis.port}",
           "REDIS_TLS_CA_FILE": certs.ca, "INCR_DELAY_MS": "0",
           "REDIS_TIMEOUT_MS": "2000"}
    env.update(more)
    return env


def counter(redis, certs, password=None):
    """The counter, read with redis-cli over TLS with the test's client
    certificate."""
    key, crt = certs.client
    auth = ["--no-auth-warning", "-a", password] if password else []
    value = subprocess.run(
        ["redis-cli", "-p", str(redis.port), "--tls", "--cacert", certs.ca,
         "--cert", crt, "--key", key, *auth, "GET", "counter"],
        check=True, capture_output=True, text=True, timeout=10).stdout.strip()
    return int(value) if value else 0


@pytest.mark.parametrize("durability", ["memory", "redis"])
def test_every_200_counts_over_tls(certs, durability):
    with Redis(tls=(*certs.server, certs.ca),
               args=["--requirepass", PASSWORD]) as redis:
        # 127.0.0.1 is verified against the certificate's IP address;
        # journal mode goes by name, memory mode by address.
        host = "localhost" if durability == "redis" else "127.0.0.1"
        g = Gracefuld(env=env_for(
            redis, certs, host=host, DURABILITY=durability,
            REDIS_URL=f"rediss://:{PASSWORD}@{host}:{redis.port}")).start()
        try:
            up = g.wait_event("redis_up")
            assert up["transport"] == "tls"
            assert up["node"] == f"{host}:{redis.port}"
            assert up["addr"].startswith("rediss://")
            status, _, body = g.request("/readyz")
            assert status == 200
            assert body.decode() == (f"ready\nredis: {host}:{redis.port} "
                                     "tls, connected\n")
            g.incrs(300)
            metrics = g.metrics()
            assert metrics[
                f'gracefuld_redis_node_info{{node="{host}:{redis.port}",'
                f'transport="tls"}}'] == 1
            g.signal()
            assert g.wait(30) == 0
            assert counter(redis, certs, PASSWORD) == 300
            text = "\n".join(g.log.lines)
            assert PASSWORD not in text
        finally:
            g.stop()


def never_ready(g, *needles):
    """gracefuld says why it cannot use the server (one of needles), and
    stays unready."""
    down = g.wait_event("redis_down", timeout=15)
    assert any(n in down["reason"] for n in needles), down
    assert down["transport"] == "tls"
    status, _, body = g.request("/readyz")
    assert status == 503
    assert body.decode().startswith("not ready\nredis: ")
    assert body.decode().endswith(" tls, not connected\n")
    assert not [e for e in g.events() if e["event"] == "redis_up"]
    return down


def test_a_ca_that_did_not_sign_the_server_never_becomes_ready(certs):
    with Redis(tls=(*certs.server, certs.ca)) as redis:
        g = Gracefuld(env=env_for(redis, certs,
                                  REDIS_TLS_CA_FILE=certs.other_ca[1])).start()
        try:
            never_ready(g, "certificate verify failed")
            g.signal()
            assert g.wait(15) == 0
        finally:
            g.stop()


def test_a_certificate_for_another_name_is_refused_unless_named(certs):
    with Redis(tls=(*certs.elsewhere, certs.ca)) as redis:
        g = Gracefuld(env=env_for(redis, certs)).start()
        try:
            never_ready(g, "hostname mismatch")
        finally:
            g.stop()
        # The name the certificate holds, verified instead of the host.
        g = Gracefuld(env=env_for(
            redis, certs, REDIS_TLS_SERVER_NAME="elsewhere.test")).start()
        try:
            g.wait_event("redis_up")
            assert g.get("/incr") == 200
            g.signal()
            assert g.wait(15) == 0
            assert counter(redis, certs) == 1
        finally:
            g.stop()


def test_client_certificates(certs):
    with Redis(tls=(*certs.server, certs.ca),
               args=["--tls-auth-clients", "yes"]) as redis:
        g = Gracefuld(env=env_for(redis, certs)).start()
        try:
            # TLS 1.3: the server asks for the certificate after the
            # handshake, and refuses with an alert the first read meets,
            # unless the reset of its close, with our handshake unread,
            # overtakes it.
            never_ready(g, "certificate required", "connection reset")
        finally:
            g.stop()
        key, crt = certs.client
        g = Gracefuld(env=env_for(redis, certs, REDIS_TLS_CERT_FILE=crt,
                                  REDIS_TLS_KEY_FILE=key)).start()
        try:
            g.wait_event("redis_up")
            for _ in range(5):
                assert g.get("/incr") == 200
            g.signal()
            assert g.wait(15) == 0
            assert counter(redis, certs) == 5
        finally:
            g.stop()


def test_a_handshake_that_never_finishes_is_bounded_by_the_timeout(certs):
    """A server that accepts and says nothing: the loop goes on serving,
    and REDIS_TIMEOUT_MS ends the attempt."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    g = Gracefuld(env={"REDIS_URL": f"rediss://localhost:{port}",
                       "REDIS_TLS_CA_FILE": certs.ca,
                       "REDIS_TIMEOUT_MS": "300"}).start()
    try:
        down = g.wait_event("redis_down", timeout=10)
        assert down["reason"] == "connect timed out"
        assert g.get("/healthz") == 200
        g.signal()
        assert g.wait(15) == 0
    finally:
        g.stop()
        silent.close()


def run_config(env):
    return subprocess.run([require_binary()], env={"PATH": "/usr/bin:/bin",
                                                   "TERMINATION_LOG": "",
                                                   **env},
                          capture_output=True, text=True, timeout=10)


def test_tls_settings_that_cannot_work_stop_the_start(certs, tmp_path):
    out = run_config({"REDIS_URL": "redis://localhost",
                      "REDIS_TLS_CA_FILE": certs.ca})
    assert out.returncode == 2
    assert "rediss://" in out.stderr and "plain text" in out.stderr
    missing = str(tmp_path / "no-such-ca.pem")
    out = run_config({"REDIS_URL": f"rediss://:{PASSWORD}@localhost",
                      "REDIS_TLS_CA_FILE": missing})
    assert out.returncode == 1
    assert "redis_tls_unusable" in out.stderr and missing in out.stderr
    assert PASSWORD not in out.stderr + out.stdout
    key, crt = certs.client
    out = run_config({"REDIS_URL": "rediss://localhost",
                      "REDIS_TLS_CERT_FILE": crt,
                      "REDIS_TLS_KEY_FILE": certs.server[0]})
    assert out.returncode == 1
    assert "client key" in out.stderr and "mismatch" in out.stderr
