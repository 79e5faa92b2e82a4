"""The experiment's load with --idempotent-retries: instead of hey, worker
threads that send every /incr with an Idempotency-Key of its own, at the
same constant rate hey would (rate = workers x q), and send a request
again, with the same key, on the Service until it is answered 200: after
an error (its outcome unseen), a 503, a 409 or any other status. A client
that does this has nothing of unknown outcome left, so the verdict is
strict: the counter equals the keys, exactly.

Its interface is the part of a Popen the experiment uses (wait, poll,
kill, returncode), and summary() is what parse_hey gives for hey, plus
the keys' own figures."""

import http.client
import subprocess
import threading
import time
import uuid

# Between the tries of one key: enough for HAProxy to route elsewhere, short
# against INCR_DELAY_MS. A 409's or 503's Retry-After (1 s) is not waited
# out in full: another replica may answer at once.
RETRY_PAUSE_S = 0.05


class KeyedLoad:
    """requests keys, workers threads, rate requests per second in all;
    each request on a connection of its own unless keep_alive. A key not
    answered 200 within give_up_s after the load's nominal end is left
    unanswered (counted as unknown: the verdict then fails)."""

    def __init__(self, port, requests, workers, rate, keep_alive, timeout,
                 give_up_s=60.0):
        self.port = port
        self.requests = requests
        self.workers = workers
        self.interval = workers / rate  # per worker
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.run_id = uuid.uuid4().hex[:12]
        self.deadline = None
        self.give_up_s = give_up_s
        self.returncode = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._threads = []
        self.answered = 0      # keys answered 200 (first or replayed)
        self.replayed = 0      # of them, answered with Idempotency-Replayed
        self.unanswered = 0    # keys given up on
        self.attempts = 0      # requests sent
        self.retried_keys = 0  # keys sent more than once
        self.statuses = {}     # of every attempt
        self.errors = {}       # of every attempt: message -> count
        self.t_start = self.t_end = None

    # -- the Popen part ---------------------------------------------------

    def start(self):
        self.t_start = time.monotonic()
        duration = self.requests / (self.workers / self.interval)
        self.deadline = self.t_start + duration + self.give_up_s
        per = self.requests // self.workers
        for w in range(self.workers):
            t = threading.Thread(target=self._worker, args=(w, per),
                                 daemon=True)
            self._threads.append(t)
            t.start()
        threading.Thread(target=self._join_all, daemon=True).start()
        return self

    def _join_all(self):
        for t in self._threads:
            t.join()
        self.t_end = time.monotonic()
        self.returncode = 0
        self._done.set()

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired("keyed load", timeout)
        return self.returncode

    def kill(self):
        self._stop.set()

    # -- the load ---------------------------------------------------------

    def _count(self, field, key):
        with self._lock:
            d = getattr(self, field)
            d[key] = d.get(key, 0) + 1

    def _connect(self):
        return http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=self.timeout)

    def _send(self, conn, key):
        """One try: (status or None, replayed, conn to use next)."""
        with self._lock:
            self.attempts += 1
        try:
            if conn is None:
                conn = self._connect()
            headers = {"Idempotency-Key": key}
            if not self.keep_alive:
                headers["Connection"] = "close"
            conn.request("GET", "/incr", headers=headers)
            r = conn.getresponse()
            r.read()
            self._count("statuses", r.status)
            replayed = r.getheader("Idempotency-Replayed") == "true"
            if not self.keep_alive or r.will_close:
                conn.close()
                conn = None
            return r.status, replayed, conn
        except (OSError, http.client.HTTPException) as e:
            self._count("errors", f"{type(e).__name__}: {e}")
            if conn is not None:
                conn.close()
            return None, False, None

    def _worker(self, w, n):
        conn = None
        next_at = time.monotonic()
        for i in range(n):
            if self._stop.is_set():
                break
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_at += self.interval
            key = f"{self.run_id}-{w}-{i}"
            tries = 0
            while True:
                status, replayed, conn = self._send(conn, key)
                tries += 1
                if status == 200:
                    with self._lock:
                        self.answered += 1
                        self.replayed += replayed
                    break
                if (self._stop.is_set() or time.monotonic() > self.deadline
                        or self._stop.wait(RETRY_PAUSE_S)):
                    with self._lock:
                        self.unanswered += 1
                    break
            if tries > 1:
                with self._lock:
                    self.retried_keys += 1
        if conn is not None:
            conn.close()

    def summary(self):
        """What parse_hey gives (statuses and errors of every try), and the
        keys': requests (keys), answered, replayed, unanswered, attempts,
        retried (keys sent more than once)."""
        total = ((self.t_end or time.monotonic()) - self.t_start
                 if self.t_start else None)
        return {
            "statuses": dict(self.statuses), "errors": dict(self.errors),
            "rps": self.attempts / total if total else None,
            "total_s": total,
            "keys": {"requests": self.requests, "answered": self.answered,
                     "replayed": self.replayed,
                     "unanswered": self.unanswered,
                     "attempts": self.attempts,
                     "retried": self.retried_keys},
        }
