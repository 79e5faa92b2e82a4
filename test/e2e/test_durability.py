"""Durability under faults: replicas SIGKILLed (a zero grace period, crashes
outside any rollout) and Redis misbehaving (connections killed, a pause, a
kill and restart) while the load runs. In journal mode (--durability redis)
nothing a client got a 200 for is lost, and the counter exceeds the 200s by
at most the requests that broke after they were sent, with no response
(their outcome is unknown to the client: Redis may hold them). Where no
replica is killed, the counter equals the 200s exactly. Memory mode's
exactly-once batches keep a paused Redis from counting twice.

Short runs (a few seconds of load each), run in the plain and the
sanitizer passes alike. The negative control (memory mode, zero grace
period: increments lost) is in test_controls.py."""

import rollout

# What every run here shares: no readiness-probe stagger, a short
# SHUTDOWN_DELAY_MS, INCR_DELAY_MS long enough that killed replicas hold
# pending increments.
FAST = ("--probe-period", 0, "--endpoint-lag", 0.5, "--prestop", 0,
        "--shutdown-delay-ms", 500, "--incr-delay-ms", 1500)
JOURNAL = ("--durability", "redis")


def adopted(run):
    return sum(rep["adopted"] for rep in run.result["replicas"])


def assert_nothing_lost(run):
    """The rule where replicas were killed: 0 lost, extra <= unknown, and
    the survivors adopted what the killed ones held."""
    r = run.result
    assert r["replicas_killed"]
    assert r["verdict_rule"] == rollout.KILLED_RULE
    assert run.returncode == 0, r["problems"]
    assert r["verdict"] == "pass"
    assert r["lost"] == 0, r["problems"]
    assert r["extra"] <= r["unknown"], r["problems"]
    assert r["counter"] >= r["ok"] > 0
    # Killed replicas held pending increments; a survivor counted them.
    assert adopted(run) > 0, "no journal_adopted in any replica's log"
    for rep in r["replicas"]:
        if not rep["killed"]:
            assert rep["status"] == "exit 0", rep
            assert rep["reason"] == "drained", rep


def assert_exact(run):
    """Redis misbehaved, no replica was killed: the counter is the 200s,
    exactly; 503s (with nothing counted) are the only failures allowed."""
    r = run.result
    assert not r["replicas_killed"]
    assert r["counter"] == r["ok"] > 0, r["problems"]
    assert r["lost"] == 0 and r["extra"] == 0
    assert set(r["failures"]) <= {"http_503"}, r["failures"]
    for rep in r["replicas"]:
        assert rep["status"] == "exit 0", rep


def test_journal_zero_grace_rollout_keep_alive_loses_nothing(experiment):
    """One rollout at 2 s of 6, each old replica SIGKILLed at its deletion
    with 1.5 s of increments pending: the new replicas adopt them."""
    run = experiment(*FAST, *JOURNAL, "--requests", 600, "--rate", 100,
                     "--workers", 10, "--keep-alive", "on",
                     "--first-rollout", 2, "--grace", 0)
    assert_nothing_lost(run)
    old = run.old_replicas()
    assert len(old) == 3
    assert all(rep["status"] == "SIGKILL" for rep in old)


def test_journal_two_crashes_mid_load_lose_nothing(experiment):
    """No rollout; two replicas SIGKILLed at 2.7 s and 5.3 s of 8, each
    replaced as a ReplicaSet would."""
    run = experiment(*FAST, *JOURNAL, "--requests", 800, "--rate", 100,
                     "--workers", 10, "--keep-alive", "on",
                     "--rollouts", 0, "--crash", 2)
    assert_nothing_lost(run)
    reps = run.result["replicas"]
    crashed = [rep for rep in reps if rep["crashed"] is not None]
    assert len(crashed) == 2
    assert all(rep["status"] == "SIGKILL" for rep in crashed)
    assert sorted(rep["role"] for rep in reps
                  if rep["role"].startswith("crash")) == ["crash 1",
                                                          "crash 2"]
    kinds = [e[2] for e in run.result["timeline"]["lifecycle"]]
    assert kinds.count("replacement") == 2
    for rep in crashed:
        # Out of the Service one endpoint lag after the kill.
        assert 0.4 <= rep["unrouted"] - rep["crashed"] <= 0.8, rep


def test_journal_shared_prefix_adopts_only_its_own(experiment):
    """Another deployment (COUNTER_KEY neighbour) on the same Redis and
    KEY_PREFIX left 25 increments in a journal, its replica SIGKILLed, while
    this one runs two replicas with a crash: the survivors adopt the crashed
    replica's journal and never the neighbour's (no extra here), and the
    neighbour's next replica counts its own 25."""
    run = experiment(*FAST, *JOURNAL, "--requests", 600, "--rate", 100,
                     "--workers", 10, "--keep-alive", "on", "--rollouts", 0,
                     "--crash", 1, "--lease-ms", 600, "--shared-prefix")
    assert_nothing_lost(run)
    n = run.result["neighbour"]
    assert n["ok"] == 25 and n["counter"] == 25 and n["exit"] == 0, n


def test_journal_redis_connections_killed_every_half_second(experiment):
    """400 requests per second on keep-alive connections for 8 s, three
    rollouts, and every replica's Redis connection killed every 0.5 s:
    each journal write or move whose reply was lost is resolved, never
    applied twice."""
    run = experiment(*FAST, *JOURNAL, "--requests", 3200, "--rate", 400,
                     "--workers", 20, "--keep-alive", "on",
                     "--rollouts", 3, "--first-rollout", 1, "--spacing", 2,
                     "--grace", 30, "--redis-kill-every", 0.5)
    assert_exact(run)
    kills = [e for e in run.result["redis_events"] if e[1] == "client_kill"]
    assert len(kills) >= 12, run.result["redis_events"]
    assert len(run.result["rollouts"]) == 3


def test_journal_redis_paused_two_seconds(experiment):
    """SIGSTOP for 2 s at 2 s of 6, REDIS_TIMEOUT_MS 500: the writes that
    time out are resolved once it resumes, with their commands still in its
    socket buffer; none counts twice, none answered 503 counts."""
    run = experiment(*FAST, *JOURNAL, "--requests", 600, "--rate", 100,
                     "--workers", 10, "--keep-alive", "on", "--rollouts", 0,
                     "--redis-timeout-ms", 500, "--redis-pause", "2@2")
    assert_exact(run)
    kinds = [e[1] for e in run.result["redis_events"]]
    assert kinds == ["sigstop", "sigcont"]


def test_journal_redis_stall_longer_than_a_lease_under_three_replicas(
        experiment):
    """Three replicas with the k8s/ timeouts (REDIS_TIMEOUT_MS 2000, the
    default 3 s lease), increments held 6 s, so that those answered before
    the stall are still in the journals after it; Redis stopped for 4.5 s a
    third into the load: every connection drops with commands buffered in
    Redis, and every lease runs out. The journal in Redis is the truth: the
    counter is the 200s, exactly."""
    run = experiment(*FAST, *JOURNAL, "--requests", 900, "--rate", 100,
                     "--workers", 20, "--keep-alive", "on", "--rollouts", 0,
                     "--replicas", 3, "--redis-timeout-ms", 2000,
                     "--incr-delay-ms", 6000, "--redis-stall", 4.5)
    assert_exact(run)
    kinds = [e[1] for e in run.result["redis_events"]]
    assert kinds == ["sigstop", "sigcont"]


def test_journal_redis_killed_and_restarted_appendfsync_always(experiment):
    """Redis with appendfsync always, SIGKILLed at 2 s of 6 and started
    again on its port and directory: what it acknowledged was on disk."""
    run = experiment(*FAST, *JOURNAL, "--requests", 600, "--rate", 100,
                     "--workers", 10, "--keep-alive", "on", "--rollouts", 0,
                     "--redis-timeout-ms", 500, "--redis-appendfsync",
                     "always", "--redis-restart-at", 2)
    assert_exact(run)
    kinds = [e[1] for e in run.result["redis_events"]]
    assert kinds == ["sigkill", "restarted"]


def test_memory_redis_paused_two_seconds_counts_once(experiment):
    """The case of the issue: one replica, 200 per second, REDIS_TIMEOUT_MS
    500, Redis paused for 2 s. Memory mode answers at once; the batches
    sent again after the timeout are fenced, so those Redis finds in its
    socket buffer when it resumes count once."""
    run = experiment("--probe-period", 0, "--shutdown-delay-ms", 500,
                     "--incr-delay-ms", 500, "--requests", 1000,
                     "--rate", 200, "--workers", 10, "--replicas", 1,
                     "--rollouts", 0, "--redis-timeout-ms", 500,
                     "--redis-pause", "2@1.5")
    r = run.result
    assert r["verdict_rule"] == rollout.STRICT_RULE
    assert r["ok"] == 1000 and r["failed"] == 0, r["failures"]
    assert r["counter"] == r["ok"], r["problems"]
    assert run.returncode == 0 and r["verdict"] == "pass"


# ---- Idempotency-Keys: every request keyed and retried until answered -------

KEYED = ("--idempotent-retries",)


def test_journal_crash_with_idempotent_retries_counts_every_key_once(
        experiment):
    """Journal mode, a replica SIGKILLed at 2 s of 4 with keyed requests in
    flight: every request whose answer broke is sent again with its key
    until answered. Nothing is left unknown, so the rule is strict: the
    counter equals the keys, exactly, although requests were cut short."""
    run = experiment(*FAST, *JOURNAL, *KEYED, "--requests", 400, "--rate",
                     100, "--workers", 10, "--keep-alive", "on",
                     "--rollouts", 0, "--crash", 1)
    r = run.result
    assert r["replicas_killed"]
    assert r["verdict_rule"] == rollout.KEYED_RULE
    assert run.returncode == 0 and r["verdict"] == "pass", r["problems"]
    assert r["counter"] == r["ok"] == 400
    assert (r["lost"], r["extra"], r["unknown"]) == (0, 0, 0)
    keys = r["keyed"]
    assert keys["retried"] > 0, "the crash cut no request short"
    assert keys["attempts"] > 400 and keys["unanswered"] == 0
    assert adopted(run) > 0


def test_memory_crash_with_idempotent_retries_shows_the_loss(experiment):
    """The control: memory mode, the same crash. A memory-mode 200 whose
    replica dies before its batch is lost, and its client, answered, does
    not retry: the strict rule reports the loss (exit 1)."""
    run = experiment(*FAST, *KEYED, "--requests", 400, "--rate", 100,
                     "--workers", 10, "--keep-alive", "on", "--rollouts", 0,
                     "--crash", 1)
    r = run.result
    assert r["verdict_rule"] == rollout.KEYED_RULE
    assert run.returncode == 1 and r["verdict"] == "fail"
    assert r["ok"] == 400 and r["unknown"] == 0
    # About 50 (1.5 s of INCR_DELAY_MS at 100/s, a third of it there).
    assert r["lost"] >= 10, r["problems"]
    assert r["extra"] == 0
