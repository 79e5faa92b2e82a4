"""Shared pieces of the Python test suites and of the tools (the experiment,
the benchmark): free ports, a private redis-server, gracefuld's JSON log
lines and /metrics parsed, and the gracefuld binary run as a child process.

Nothing here sleeps to wait for something: processes are awaited through
what they print (redis-server's "Ready to accept connections", gracefuld's
JSON log lines) or through their exit.
"""

import contextlib
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

BIN = os.environ.get("GRACEFULD_BIN", "")


def free_port(host="127.0.0.1"):
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(proc, timeout=10.0):
    """SIGTERM, then SIGKILL if proc has not exited within timeout."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def require_binary():
    if not BIN or not os.access(BIN, os.X_OK):
        raise RuntimeError(
            "GRACEFULD_BIN must name the built gracefuld binary "
            f"(got {BIN!r}); run the tests through ctest")
    return BIN


# -- the JSON log and /metrics, for the tests and the tools alike ------------

def parse_event(line):
    """One of gracefuld's JSON log lines, parsed; None for any other line
    (text, a sanitizer's report, a broken line)."""
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def events(lines):
    """Every JSON log line among lines, parsed, in order."""
    return [e for e in map(parse_event, lines) if e is not None]


def is_event(line, event, **fields):
    """Whether line is a JSON log line with this event and field values."""
    obj = parse_event(line)
    return obj is not None and obj.get("event") == event and all(
        obj.get(k) == v for k, v in fields.items())


def wait_event(reader, event, timeout=10.0, start=0, **fields):
    """Waits for a log line of reader (a LineReader) with this event (and
    these field values), from index start on; returns it parsed."""
    return parse_event(reader.wait_for(
        lambda line: is_event(line, event, **fields), timeout, start))


def parse_metrics(text):
    """Prometheus text as {sample name with its labels: value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def scrape_metrics(port, host="127.0.0.1", timeout=5.0):
    """GET /metrics on a connection of its own; its samples, or None when
    the server does not answer 200 (its listener closed while it drains,
    say)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return parse_metrics(body) if resp.status == 200 else None


def poll_until(cond, timeout, what):
    """Polls cond (a state of Redis's, which no event says) until true."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


class LineReader:
    """Drains a pipe in a thread, keeping every line and letting a test wait
    for the first line that satisfies a predicate."""

    def __init__(self, pipe, sink=None):
        self.lines = []
        self._cond = threading.Condition()
        self._closed = False
        self._sink = sink
        self._thread = threading.Thread(target=self._run, args=(pipe,),
                                        daemon=True)
        self._thread.start()

    def _run(self, pipe):
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self._sink:
                self._sink.write(line + "\n")
                self._sink.flush()
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, predicate, timeout=10.0, start=0):
        """Returns the first line from index start on that matches, or
        raises TimeoutError (also when the pipe closed without one)."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    if predicate(self.lines[i]):
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise TimeoutError(
                        "no matching line; got:\n" + "\n".join(self.lines[-40:]))
                self._cond.wait(left)

    def join(self, timeout=5.0):
        self._thread.join(timeout)


class Certs:
    """A test CA and certificates made with the openssl command in a
    temporary directory: server certificates for names and addresses,
    client certificates, and other CAs, all signed on demand."""

    def __init__(self, directory=None):
        self.dir = directory or tempfile.mkdtemp(prefix="gracefuld-certs-")
        self.ca_key, self.ca = self.make_ca("ca")

    def _openssl(self, *args):
        subprocess.run(["openssl", *args], check=True, capture_output=True,
                       timeout=60)

    def make_ca(self, name):
        """A self-signed CA; returns (key path, certificate path)."""
        key = os.path.join(self.dir, f"{name}.key")
        crt = os.path.join(self.dir, f"{name}.crt")
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                      key, "-out", crt, "-days", "2", "-subj",
                      f"/CN=gracefuld test {name}")
        return key, crt

    def issue(self, name, sans=("DNS:localhost", "IP:127.0.0.1"),
              client=False, ca=None):
        """A certificate signed by ca (default: self.ca) for the given
        subjectAltNames; returns (key path, certificate path)."""
        ca_key, ca_crt = ca or (self.ca_key, self.ca)
        key = os.path.join(self.dir, f"{name}.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        crt = os.path.join(self.dir, f"{name}.crt")
        ext = os.path.join(self.dir, f"{name}.ext")
        with open(ext, "w") as f:
            if sans:
                f.write("subjectAltName=" + ",".join(sans) + "\n")
            f.write("extendedKeyUsage=" +
                    ("clientAuth" if client else "serverAuth") + "\n")
        self._openssl("req", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                      key, "-out", csr, "-subj", f"/CN={name}")
        self._openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey",
                      ca_key, "-CAcreateserial", "-out", crt, "-days", "2",
                      "-extfile", ext)
        return key, crt

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """A private redis-server on a free port in a temporary directory,
    without persistence unless args (extra redis-server options, which win
    over the defaults) ask for it.

    With tls=(key, certificate, CA certificate) it speaks TLS only (no
    plain port); port is then its TLS port, and cli() speaks TLS too."""

    def __init__(self, port=None, args=(), password=None, tls=None):
        self.port = port or free_port()
        self.dir = None
        self.proc = None
        self.args = list(args)  # more redis-server options
        self.password = password  # for cli(), when Redis requires one
        self.tls = tls

    def start(self, timeout=10.0):
        server = shutil.which("redis-server")
        if not server:
            raise RuntimeError("redis-server is not installed "
                               "(scripts/bootstrap test installs it)")
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="gracefuld-redis-")
        ports = ["--port", str(self.port)]
        if self.tls:
            key, crt, ca = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port),
                     "--tls-key-file", key, "--tls-cert-file", crt,
                     "--tls-ca-cert-file", ca, "--tls-auth-clients", "no",
                     "--tls-replication", "yes"]
        self.proc = subprocess.Popen(
            [server, *ports, "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--logfile", "", "--daemonize", "no", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = LineReader(self.proc.stdout)
        self.out.wait_for(lambda l: "Ready to accept connections" in l,
                          timeout)
        return self

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def cleanup(self):
        self.stop()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def cli(self, *args):
        auth = ["--no-auth-warning", "-a", self.password] \
            if self.password else []
        if self.tls:
            key, crt, ca = self.tls
            # A client certificate too, for --tls-auth-clients yes.
            auth += ["--tls", "--cacert", ca, "--cert", crt, "--key", key]
        out = subprocess.run(["redis-cli", "-p", str(self.port), *auth,
                              *args],
                             check=True, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip()

    def counter(self, key="counter"):
        value = self.cli("GET", key)
        return int(value) if value else 0

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


class Gracefuld:
    """The built binary as a child process with JSON logs on a pipe.

    env adds to (and overrides) a clean environment; args are extra flags.
    """

    def __init__(self, redis=None, env=None, args=(), port=None,
                 listen_host="127.0.0.1", log_path=None):
        self.port = port or free_port()
        self.listen_host = listen_host
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LISTEN_ADDR": (f"[{listen_host}]:{self.port}" if ":" in listen_host
                            else f"{listen_host}:{self.port}"),
            "LOG_FORMAT": "json",
            "TERMINATION_LOG": "",
        }
        if "ASAN_OPTIONS" in os.environ:
            self.env["ASAN_OPTIONS"] = os.environ["ASAN_OPTIONS"]
        if "UBSAN_OPTIONS" in os.environ:
            self.env["UBSAN_OPTIONS"] = os.environ["UBSAN_OPTIONS"]
        if redis is not None:
            self.env["REDIS_ADDR"] = redis.addr
        self.env.update(env or {})
        self.args = list(args)
        self.proc = None
        self.log = None
        self.log_path = log_path

    def start(self, wait_listening=True, timeout=10.0):
        sink = open(self.log_path, "a") if self.log_path else None
        self.proc = subprocess.Popen([require_binary(), *self.args],
                                     env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.log = LineReader(self.proc.stderr, sink)
        if wait_listening:
            self.wait_event("listening", timeout)
        return self

    # -- logs ---------------------------------------------------------------

    def events(self, start=0):
        """Every JSON log line so far (from index start on), parsed."""
        return events(self.log.lines[start:])

    def wait_event(self, event, timeout=10.0, start=0, **fields):
        """Waits for a log line with this event (and these field values);
        returns it parsed."""
        return wait_event(self.log, event, timeout, start, **fields)

    def mark(self):
        """A position in the log: wait_event(start=mark) looks after it."""
        return len(self.log.lines)

    # -- the process --------------------------------------------------------

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait(self, timeout=30.0):
        rc = self.proc.wait(timeout)
        self.log.join()
        return rc

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.log:
            self.log.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- HTTP ---------------------------------------------------------------

    def connection(self, timeout=10.0):
        return http.client.HTTPConnection(self.listen_host, self.port,
                                          timeout=timeout)

    def request(self, path, method="GET", headers=None, body=None):
        """One request on a new connection; returns (status, headers, body)."""
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def get(self, path):
        return self.request(path)[0]

    def incrs(self, n):
        """n /incr on one keep-alive connection, each answered 200; returns
        the slowest answer's time in seconds."""
        conn = self.connection()
        worst = 0.0
        try:
            for _ in range(n):
                t0 = time.monotonic()
                conn.request("GET", "/incr")
                resp = conn.getresponse()
                resp.read()
                worst = max(worst, time.monotonic() - t0)
                assert resp.status == 200
        finally:
            conn.close()
        return worst

    def metrics(self):
        """/metrics as {sample name with its labels: value}."""
        _, _, body = self.request("/metrics")
        return parse_metrics(body.decode())

    def metric(self, name):
        """One sample of /metrics; KeyError when it is not there."""
        return self.metrics()[name]

    def raw(self, timeout=10.0):
        """A plain TCP socket to the server."""
        s = socket.create_connection((self.listen_host, self.port),
                                     timeout=timeout)
        return s


class IncrLoad:
    """GET /incr in a loop on one keep-alive connection to each port, a few
    ms apart, counting the 200s; any other status is kept in other."""

    def __init__(self, ports, timeout=30):
        self.ok = 0
        self.other = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.timeout = timeout
        self.threads = [threading.Thread(target=self.run, args=(p,),
                                         daemon=True) for p in ports]
        for t in self.threads:
            t.start()

    def run(self, port):
        conn = http.client.HTTPConnection("127.0.0.1", port,
                                          timeout=self.timeout)
        while not self.stop.is_set():
            conn.request("GET", "/incr")
            resp = conn.getresponse()
            resp.read()
            with self.lock:
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.other.append(resp.status)
            time.sleep(0.002)
        conn.close()

    def wait_for(self, n, timeout=60):
        poll_until(lambda: self.ok >= n, timeout, f"{n} 200s")

    def finish(self):
        """Stops the load; the number of 200s."""
        self.stop.set()
        for t in self.threads:
            t.join(self.timeout)
            assert not t.is_alive()
        return self.ok


def read_to_end(sock, timeout=10.0):
    """Reads until the server ends the connection; returns (data, end), end
    being "eof" (a FIN: orderly) or "reset". Raises socket.timeout when the
    server neither answers nor closes in time."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data), "reset"
        if not chunk:
            return bytes(data), "eof"
        data.extend(chunk)


def parse_responses(data):
    """Splits bytes into (status, headers with lower-case names, body)
    responses framed by Content-Length; every byte must belong to one, and
    the last response must be whole."""
    out = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\r\n\r\n", pos)
        lines = data[pos:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        out.append((status, headers, data[end + 4:end + 4 + length]))
        pos = end + 4 + length
        assert pos <= len(data), "a response was cut short"
    return out


def read_http_responses(sock, count, timeout=10.0, exact=True):
    """Reads count HTTP responses (with Content-Length bodies) from a raw
    socket; returns a list of (status, headers dict with lower-case names,
    body). Raises ConnectionError if the connection ends first. With exact,
    bytes after the last response are an error; without, the socket must
    be read one byte at a time so that nothing past it is consumed."""
    sock.settimeout(timeout)
    buf = bytearray()
    pos = 0
    out = []

    def fill():
        chunk = sock.recv(1 << 20 if exact else 1)
        if not chunk:
            raise ConnectionError(
                f"connection closed after {len(out)} responses")
        buf.extend(chunk)

    while len(out) < count:
        end = buf.find(b"\r\n\r\n", pos)
        while end < 0:
            fill()
            end = buf.find(b"\r\n\r\n", pos)
        lines = bytes(buf[pos:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(buf) < end + 4 + length:
            fill()
        out.append((status, headers, bytes(buf[end + 4:end + 4 + length])))
        pos = end + 4 + length
        if pos > (1 << 20):
            del buf[:pos]
            pos = 0
    if exact and pos < len(buf):
        raise AssertionError(f"{len(buf) - pos} unexpected bytes after "
                             f"{count} responses")
    return out


def connected(redis, env):
    """A gracefuld on redis with env, started, its Redis connection up."""
    g = Gracefuld(redis=redis, env=env).start()
    g.wait_event("redis_up")
    return g


@contextlib.contextmanager
def running(redis=None, **kw):
    g = Gracefuld(redis=redis, **kw).start()
    try:
        yield g
    finally:
        g.stop()
