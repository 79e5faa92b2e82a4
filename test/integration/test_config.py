"""Configuration at start-up: every setting as a variable and a flag, the
flag winning, and every bad value ending the process with status 2 and one
line that names the setting and the value."""

import subprocess

import pytest

from gracefuld_testlib import Gracefuld, require_binary

SETTINGS = [
    "LISTEN_ADDR", "REDIS_ADDR", "INCR_DELAY_MS", "COUNTER_KEY",
    "SHUTDOWN_DELAY_MS", "SHUTDOWN_TIMEOUT_MS", "MAX_PENDING", "LOG_FORMAT",
]


def run(args=(), env=None):
    return subprocess.run([require_binary(), *args], env=env or {},
                          capture_output=True, text=True, timeout=10)


def test_help_lists_every_setting_with_its_flag_and_default():
    out = run(["--help"])
    assert out.returncode == 0
    for name in SETTINGS:
        assert name in out.stdout
    for flag in ["--listen", "--redis", "--incr-delay-ms", "--counter-key",
                 "--shutdown-delay-ms", "--shutdown-timeout-ms",
                 "--max-pending", "--log-format"]:
        assert flag in out.stdout
    assert "0.0.0.0:8080" in out.stdout and "25000" in out.stdout


def test_version_prints_the_version():
    out = run(["--version"])
    assert out.returncode == 0
    assert out.stdout.startswith("gracefuld ")


INVALID = [
    # (variable, flag, value, words the message must hold)
    ("INCR_DELAY_MS", "--incr-delay-ms", "abc", "not a number"),
    ("INCR_DELAY_MS", "--incr-delay-ms", "-5", "not a number"),
    ("INCR_DELAY_MS", "--incr-delay-ms", "99999999999", "out of range"),
    ("SHUTDOWN_DELAY_MS", "--shutdown-delay-ms", "1.5", "not a number"),
    ("SHUTDOWN_TIMEOUT_MS", "--shutdown-timeout-ms", "x", "not a number"),
    ("MAX_PENDING", "--max-pending", "0", "out of range"),
    ("LISTEN_ADDR", "--listen", "8080", "HOST:PORT"),
    ("LISTEN_ADDR", "--listen", "0.0.0.0:70000", "port"),
    ("LISTEN_ADDR", "--listen", "example:8080", "IP address"),
    ("LISTEN_ADDR", "--listen", "::1:8080", "brackets"),
    ("REDIS_ADDR", "--redis", "redis", "HOST:PORT"),
    ("REDIS_ADDR", "--redis", "redis:0", "port"),
    ("REDIS_ADDR", "--redis", "bad host:6379", "host name"),
    ("REDIS_ADDR", "--redis", "redis:port", "port"),
    ("LOG_FORMAT", "--log-format", "xml", "json or text"),
]


@pytest.mark.parametrize("variable,flag,value,why", INVALID)
def test_invalid_variable_exits_2_naming_setting_and_value(variable, flag,
                                                            value, why):
    out = run(env={variable: value})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert variable in lines[0] and f"'{value}'" in lines[0]
    assert why in lines[0]


@pytest.mark.parametrize("variable,flag,value,why", INVALID)
def test_invalid_flag_exits_2_naming_setting_and_value(variable, flag, value,
                                                        why):
    out = run([flag, value])
    assert out.returncode == 2
    line = out.stderr.strip()
    assert "\n" not in line
    assert flag in line and f"'{value}'" in line and why in line


def test_empty_counter_key_flag_is_rejected():
    out = run(["--counter-key="])
    assert out.returncode == 2
    assert "COUNTER_KEY" in out.stderr


def test_unknown_option_and_missing_value_exit_2():
    out = run(["--no-such-thing"])
    assert out.returncode == 2 and "--no-such-thing" in out.stderr
    out = run(["--listen"])
    assert out.returncode == 2 and "--listen" in out.stderr


def test_flag_wins_over_variable(redis, server):
    g = server(env={"COUNTER_KEY": "from_env"},
               args=["--counter-key", "from_flag", "--incr-delay-ms", "0"])
    assert g.get("/incr") == 200
    g.signal()
    assert g.wait() == 0
    assert redis.counter("from_flag") == 1
    assert redis.counter("from_env") == 0


def test_variable_wins_over_default(redis, server):
    g = server(env={"COUNTER_KEY": "from_env", "INCR_DELAY_MS": "0"})
    assert g.get("/incr") == 200
    g.signal()
    assert g.wait() == 0
    assert redis.counter("from_env") == 1


def test_ipv6_listen_address_is_served(redis):
    g = Gracefuld(redis=redis, listen_host="::1").start()
    try:
        assert g.get("/healthz") == 200
    finally:
        g.stop()


def test_address_in_use_exits_1_with_a_clear_line(redis, server):
    first = server()
    second = Gracefuld(redis=redis, port=first.port).start(
        wait_listening=False)
    try:
        assert second.wait(10) == 1
        line = second.wait_event("listen_failed")
        assert "address already in use" in line["error"]
    finally:
        second.stop()


def test_text_log_format_is_for_people(redis, server):
    g = server(env={"LOG_FORMAT": "text"}, wait_listening=False)
    g.log.wait_for(lambda l: " info listening " in l)
    g.signal()
    assert g.wait() == 0
    assert not any(l.startswith("{") for l in g.log.lines)


def test_delays_that_cannot_fit_the_shutdown_timeout_are_a_warning(redis,
                                                                    server):
    g = server(env={"SHUTDOWN_DELAY_MS": "3000", "INCR_DELAY_MS": "3000",
                    "SHUTDOWN_TIMEOUT_MS": "5000"})
    w = g.wait_event("config_warning")
    assert w["level"] == "warn"
    for name in ("SHUTDOWN_DELAY_MS", "INCR_DELAY_MS", "SHUTDOWN_TIMEOUT_MS"):
        assert name in w["warning"]
    assert g.get("/healthz") == 200
