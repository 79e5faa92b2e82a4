"""--shared-prefix: a second deployment on the experiment's Redis and
KEY_PREFIX, counting into a counter of its own (COUNTER_KEY "neighbour"),
as staging and production, or two services, share a managed Redis.

Before the load, one neighbour replica answers REQUESTS /incr in journal
mode (INCR_DELAY_MS 1 s) and is SIGKILLed at once: its journal stays in
Redis, due a second later, its lease runs out while the experiment's replicas
renew theirs beside it. They must never adopt it: what they adopt goes
into their counter, which the verdict would find as extra. After the
experiment, a new neighbour replica adopts it, and the neighbour's counter
must equal its own 200s."""

import signal
import time

import gracefuld_testlib
from gracefuld_testlib import Gracefuld

COUNTER = "neighbour"
REQUESTS = 25


class Neighbour:
    def __init__(self, redis, binary, lease_ms, say):
        self.redis = redis
        self.lease_ms = lease_ms
        self.say = say
        self.ok = 0
        gracefuld_testlib.BIN = binary

    def replica(self, incr_delay_ms):
        env = {"DURABILITY": "redis", "COUNTER_KEY": COUNTER,
               "INCR_DELAY_MS": str(incr_delay_ms)}
        if self.lease_ms:
            env["LEASE_MS"] = str(self.lease_ms)
        g = Gracefuld(redis=self.redis, env=env).start()
        g.wait_event("redis_up")
        return g

    def leave_a_journal(self):
        g = self.replica(1000)
        try:
            self.ok = sum(g.get("/incr") == 200 for _ in range(REQUESTS))
            g.signal(signal.SIGKILL)
            g.wait(10)
        finally:
            g.stop()
        self.say(f"neighbour: {self.ok} x 200 in its journal, replica "
                 "SIGKILLed")

    def adopt(self, timeout):
        """A new neighbour replica adopts the journal; returns the result
        and the problems."""
        g = self.replica(0)
        counter = 0
        try:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                counter = self.redis.counter(COUNTER)
                if counter >= self.ok:
                    break
                time.sleep(0.1)
            g.signal()
            status = g.wait(30)
            counter = self.redis.counter(COUNTER)
        finally:
            g.stop()
        self.say(f"neighbour: counter {counter} for {self.ok} x 200 "
                 f"(its own replica exited {status})")
        problems = []
        if counter != self.ok:
            problems.append(f"neighbour: counter {counter} for {self.ok} "
                            "x 200 (another deployment took or left them)")
        if status != 0:
            problems.append(f"neighbour: its replica exited {status}")
        return {"ok": self.ok, "counter": counter, "exit": status}, problems
