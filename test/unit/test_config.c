/* config_parse: defaults, environment over defaults, flags over the
 * environment, and every validation error naming the setting and the value. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

#define MAX_ARGS 32

/* A NULL-terminated list of strings, for argv (after argv[0]) and envp. */
#define LIST(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NONE ((const char *const[]){NULL})

static struct config cfg;
static char err[4096];
static char printed[16384];

/* Runs config_parse on "gracefuld" + args over env; what it prints to its
 * FILE* lands in printed. */
static enum config_result parse(const char *const *args,
                                const char *const *env) {
  char *argv[MAX_ARGS];
  char *envp[MAX_ARGS];
  int argc = 0;
  argv[argc++] = "gracefuld";
  for (; *args; args++) {
    assert_true(argc < MAX_ARGS - 1);
    argv[argc++] = (char *)*args;
  }
  argv[argc] = NULL;
  int n = 0;
  for (; *env; env++) {
    assert_true(n < MAX_ARGS - 1);
    envp[n++] = (char *)*env;
  }
  envp[n] = NULL;

  char *buf = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&buf, &len);
  assert_non_null(out);
  memset(err, 0, sizeof err);
  enum config_result rc =
      config_parse(&cfg, argc, argv, envp, out, err, sizeof err);
  fclose(out);
  size_t kept = len < sizeof printed ? len : sizeof printed - 1;
  memcpy(printed, buf, kept);
  printed[kept] = '\0';
  free(buf);
  assert_true(len < sizeof printed);
  return rc;
}

static void expect_ok(const char *const *args, const char *const *env) {
  enum config_result rc = parse(args, env);
  if (rc != CONFIG_OK)
    fail_msg("expected CONFIG_OK, got %d: %s", rc, err);
  assert_string_equal(printed, "");
}

/* The parse fails with one line that holds every one of the needles. */
static void expect_error(const char *const *args, const char *const *env,
                         const char *const *needles) {
  enum config_result rc = parse(args, env);
  if (rc != CONFIG_ERROR)
    fail_msg("expected CONFIG_ERROR, got %d", rc);
  assert_true(strlen(err) > 0);
  assert_null(strchr(err, '\n'));
  for (; *needles; needles++) {
    if (!strstr(err, *needles))
      fail_msg("error message '%s' does not name '%s'", err, *needles);
  }
}

/* The value of a setting, given as an environment variable, is rejected
 * with a message that names the variable and the value. */
static void expect_env_rejected(const char *env, const char *value) {
  char assignment[2048];
  snprintf(assignment, sizeof assignment, "%s=%s", env, value);
  expect_error(NONE, LIST(assignment), LIST(env, value));
}

/* The same value given as --flag=value is rejected the same way. */
static void expect_flag_rejected(const char *flag, const char *env,
                                 const char *value) {
  char arg[2048];
  snprintf(arg, sizeof arg, "--%s=%s", flag, value);
  expect_error(LIST(arg), NONE, LIST(env, value));
}

static void expect_rejected(const char *flag, const char *env,
                            const char *value) {
  expect_env_rejected(env, value);
  expect_flag_rejected(flag, env, value);
}

/* ---- Defaults and precedence ------------------------------------------ */

static void test_config_defaults_without_flags_or_environment(void **state) {
  (void)state;
  expect_ok(NONE, NONE);
  assert_string_equal(cfg.listen_host, "0.0.0.0");
  assert_int_equal(cfg.listen_port, 8080);
  const struct sockaddr_in *sin = (const struct sockaddr_in *)&cfg.listen_addr;
  assert_int_equal(sin->sin_family, AF_INET);
  assert_int_equal(ntohs(sin->sin_port), 8080);
  assert_int_equal(ntohl(sin->sin_addr.s_addr), INADDR_ANY);
  assert_string_equal(cfg.redis.host, "127.0.0.1");
  assert_int_equal(cfg.redis.port, 6379);
  assert_int_equal(cfg.incr_delay_ms, 5000);
  assert_string_equal(cfg.counter_key, "counter");
  assert_int_equal(cfg.shutdown_delay_ms, 0);
  assert_int_equal(cfg.shutdown_timeout_ms, 25000);
  assert_int_equal(cfg.max_pending, 1000000);
  assert_int_equal(cfg.log_format, LOG_FORMAT_JSON);
  assert_int_equal(cfg.log_level, LOG_INFO);
  assert_int_equal(cfg.redis_timeout_ms, 5000);
  assert_int_equal(cfg.header_max_bytes, 8192);
  assert_int_equal(cfg.max_headers, 100);
  assert_int_equal(cfg.url_max_bytes, 2048);
  assert_int_equal(cfg.max_body_bytes, 1024);
  assert_int_equal(cfg.header_timeout_ms, 10000);
  assert_int_equal(cfg.idle_timeout_ms, 60000);
  assert_int_equal(cfg.max_connections, 10000);
  assert_string_equal(cfg.termination_log, "/dev/termination-log");
}

static void
test_config_shutdown_delay_defaults_to_5000_under_kubernetes(void **state) {
  (void)state;
  expect_ok(NONE, LIST("KUBERNETES_SERVICE_HOST=10.96.0.1"));
  assert_int_equal(cfg.shutdown_delay_ms, 5000);
  /* Nothing else changes under Kubernetes. */
  assert_int_equal(cfg.shutdown_timeout_ms, 25000);
  assert_int_equal(cfg.incr_delay_ms, 5000);
}

static void
test_config_shutdown_delay_setting_wins_over_kubernetes_default(void **state) {
  (void)state;
  expect_ok(NONE,
            LIST("KUBERNETES_SERVICE_HOST=10.96.0.1", "SHUTDOWN_DELAY_MS=0"));
  assert_int_equal(cfg.shutdown_delay_ms, 0);
  expect_ok(LIST("--shutdown-delay-ms=1500"),
            LIST("KUBERNETES_SERVICE_HOST=10.96.0.1"));
  assert_int_equal(cfg.shutdown_delay_ms, 1500);
}

static const char *const every_env[] = {
    "LISTEN_ADDR=127.0.0.1:9001",
    "REDIS_ADDR=redis.example:6390",
    "INCR_DELAY_MS=250",
    "COUNTER_KEY=env:key",
    "SHUTDOWN_DELAY_MS=1200",
    "SHUTDOWN_TIMEOUT_MS=30000",
    "MAX_PENDING=77",
    "LOG_FORMAT=text",
    "LOG_LEVEL=debug",
    "REDIS_TIMEOUT_MS=700",
    "HEADER_MAX_BYTES=4096",
    "MAX_HEADERS=20",
    "URL_MAX_BYTES=512",
    "MAX_BODY_BYTES=64",
    "HEADER_TIMEOUT_MS=3000",
    "IDLE_TIMEOUT_MS=4000",
    "MAX_CONNECTIONS=50",
    "TERMINATION_LOG=/tmp/env-termination",
    NULL,
};

static void test_config_environment_overrides_every_default(void **state) {
  (void)state;
  expect_ok(NONE, every_env);
  assert_string_equal(cfg.listen_host, "127.0.0.1");
  assert_int_equal(cfg.listen_port, 9001);
  assert_string_equal(cfg.redis.host, "redis.example");
  assert_int_equal(cfg.redis.port, 6390);
  assert_int_equal(cfg.incr_delay_ms, 250);
  assert_string_equal(cfg.counter_key, "env:key");
  assert_int_equal(cfg.shutdown_delay_ms, 1200);
  assert_int_equal(cfg.shutdown_timeout_ms, 30000);
  assert_int_equal(cfg.max_pending, 77);
  assert_int_equal(cfg.log_format, LOG_FORMAT_TEXT);
  assert_int_equal(cfg.log_level, LOG_DEBUG);
  assert_int_equal(cfg.redis_timeout_ms, 700);
  assert_int_equal(cfg.header_max_bytes, 4096);
  assert_int_equal(cfg.max_headers, 20);
  assert_int_equal(cfg.url_max_bytes, 512);
  assert_int_equal(cfg.max_body_bytes, 64);
  assert_int_equal(cfg.header_timeout_ms, 3000);
  assert_int_equal(cfg.idle_timeout_ms, 4000);
  assert_int_equal(cfg.max_connections, 50);
  assert_string_equal(cfg.termination_log, "/tmp/env-termination");
}

static void
test_config_flags_override_every_environment_variable(void **state) {
  (void)state;
  expect_ok(LIST("--listen=127.0.0.2:9002", "--redis=10.1.2.3:6391",
                 "--incr-delay-ms=1", "--counter-key=flag:key",
                 "--shutdown-delay-ms=2", "--shutdown-timeout-ms=3",
                 "--max-pending=4", "--log-format=json", "--log-level=error",
                 "--redis-timeout-ms=10", "--header-max-bytes=256",
                 "--max-headers=1", "--url-max-bytes=16", "--max-body-bytes=0",
                 "--header-timeout-ms=5", "--idle-timeout-ms=6",
                 "--max-connections=7", "--termination-log=/tmp/flag"),
            every_env);
  assert_string_equal(cfg.listen_host, "127.0.0.2");
  assert_int_equal(cfg.listen_port, 9002);
  assert_string_equal(cfg.redis.host, "10.1.2.3");
  assert_int_equal(cfg.redis.port, 6391);
  assert_int_equal(cfg.incr_delay_ms, 1);
  assert_string_equal(cfg.counter_key, "flag:key");
  assert_int_equal(cfg.shutdown_delay_ms, 2);
  assert_int_equal(cfg.shutdown_timeout_ms, 3);
  assert_int_equal(cfg.max_pending, 4);
  assert_int_equal(cfg.log_format, LOG_FORMAT_JSON);
  assert_int_equal(cfg.log_level, LOG_ERROR);
  assert_int_equal(cfg.redis_timeout_ms, 10);
  assert_int_equal(cfg.header_max_bytes, 256);
  assert_int_equal(cfg.max_headers, 1);
  assert_int_equal(cfg.url_max_bytes, 16);
  assert_int_equal(cfg.max_body_bytes, 0);
  assert_int_equal(cfg.header_timeout_ms, 5);
  assert_int_equal(cfg.idle_timeout_ms, 6);
  assert_int_equal(cfg.max_connections, 7);
  assert_string_equal(cfg.termination_log, "/tmp/flag");
}

static void test_config_flag_overrides_invalid_environment_value(void **state) {
  (void)state;
  /* The environment is not consulted for a setting given as a flag. */
  expect_ok(LIST("--incr-delay-ms=10"), LIST("INCR_DELAY_MS=soon"));
  assert_int_equal(cfg.incr_delay_ms, 10);
}

static void test_config_flag_takes_value_after_equals_sign(void **state) {
  (void)state;
  expect_ok(LIST("--incr-delay-ms=250", "--counter-key=a=b"), NONE);
  assert_int_equal(cfg.incr_delay_ms, 250);
  /* Only the first '=' separates the name from the value. */
  assert_string_equal(cfg.counter_key, "a=b");
}

static void test_config_flag_takes_value_from_next_argument(void **state) {
  (void)state;
  expect_ok(LIST("--incr-delay-ms", "250", "--listen", "[::1]:9090",
                 "--log-level", "warn"),
            NONE);
  assert_int_equal(cfg.incr_delay_ms, 250);
  assert_string_equal(cfg.listen_host, "::1");
  assert_int_equal(cfg.listen_port, 9090);
  assert_int_equal(cfg.log_level, LOG_WARN);
}

static void test_config_environment_name_must_match_exactly(void **state) {
  (void)state;
  expect_ok(NONE,
            LIST("INCR_DELAY_MS_OLD=1", "XINCR_DELAY_MS=2", "INCR_DELAY=3"));
  assert_int_equal(cfg.incr_delay_ms, 5000);
}

static void
test_config_empty_environment_variable_counts_as_unset(void **state) {
  (void)state;
  expect_ok(NONE, LIST("INCR_DELAY_MS=", "COUNTER_KEY=", "LISTEN_ADDR="));
  assert_int_equal(cfg.incr_delay_ms, 5000);
  assert_string_equal(cfg.counter_key, "counter");
  assert_int_equal(cfg.listen_port, 8080);
}

static void test_config_empty_termination_log_disables_it(void **state) {
  (void)state;
  expect_ok(NONE, LIST("TERMINATION_LOG="));
  assert_string_equal(cfg.termination_log, "");
  expect_ok(LIST("--termination-log="), NONE);
  assert_string_equal(cfg.termination_log, "");
}

/* ---- Addresses ---------------------------------------------------------- */

static void test_config_listen_accepts_ipv4_address(void **state) {
  (void)state;
  expect_ok(NONE, LIST("LISTEN_ADDR=127.0.0.1:9000"));
  assert_string_equal(cfg.listen_host, "127.0.0.1");
  assert_int_equal(cfg.listen_port, 9000);
  const struct sockaddr_in *sin = (const struct sockaddr_in *)&cfg.listen_addr;
  assert_int_equal(sin->sin_family, AF_INET);
  assert_int_equal(ntohs(sin->sin_port), 9000);
  assert_int_equal(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
}

static void test_config_listen_accepts_bracketed_ipv6_address(void **state) {
  (void)state;
  expect_ok(LIST("--listen", "[::]:8080"), NONE);
  assert_string_equal(cfg.listen_host, "::");
  assert_int_equal(cfg.listen_port, 8080);
  const struct sockaddr_in6 *sin6 =
      (const struct sockaddr_in6 *)&cfg.listen_addr;
  assert_int_equal(sin6->sin6_family, AF_INET6);
  assert_int_equal(ntohs(sin6->sin6_port), 8080);
  assert_memory_equal(&sin6->sin6_addr, &in6addr_any, sizeof in6addr_any);

  expect_ok(NONE, LIST("LISTEN_ADDR=[::1]:8081"));
  sin6 = (const struct sockaddr_in6 *)&cfg.listen_addr;
  assert_int_equal(sin6->sin6_family, AF_INET6);
  assert_memory_equal(&sin6->sin6_addr, &in6addr_loopback,
                      sizeof in6addr_loopback);
}

static void test_config_redis_accepts_host_name_and_ip_literals(void **state) {
  (void)state;
  expect_ok(NONE, LIST("REDIS_ADDR=redis.default.svc.cluster.local:6380"));
  assert_string_equal(cfg.redis.host, "redis.default.svc.cluster.local");
  assert_int_equal(cfg.redis.port, 6380);
  expect_ok(NONE, LIST("REDIS_ADDR=10.0.0.7:6379"));
  assert_string_equal(cfg.redis.host, "10.0.0.7");
  expect_ok(NONE, LIST("REDIS_ADDR=[::1]:6379"));
  assert_string_equal(cfg.redis.host, "::1");
  assert_int_equal(cfg.redis.port, 6379);
  expect_ok(NONE, LIST("REDIS_ADDR=redis:65535"));
  assert_int_equal(cfg.redis.port, 65535);
}

static void test_config_rejects_address_without_port(void **state) {
  (void)state;
  expect_rejected("listen", "LISTEN_ADDR", "0.0.0.0");
  expect_rejected("listen", "LISTEN_ADDR", "0.0.0.0:");
  expect_rejected("listen", "LISTEN_ADDR", "[::]");
  expect_rejected("listen", "LISTEN_ADDR", "[::]8080");
  expect_rejected("redis", "REDIS_ADDR", "redis");
  expect_rejected("redis", "REDIS_ADDR", "redis:");
}

static void test_config_rejects_address_without_host(void **state) {
  (void)state;
  expect_rejected("listen", "LISTEN_ADDR", ":8080");
  expect_rejected("redis", "REDIS_ADDR", ":6379");
  expect_rejected("redis", "REDIS_ADDR", "[]:6379");
}

static void test_config_rejects_port_above_65535_or_not_a_number(void **state) {
  (void)state;
  expect_rejected("listen", "LISTEN_ADDR", "0.0.0.0:65536");
  expect_rejected("listen", "LISTEN_ADDR", "0.0.0.0:99999999999999999999999");
  expect_rejected("listen", "LISTEN_ADDR", "0.0.0.0:http");
  expect_rejected("listen", "LISTEN_ADDR", "0.0.0.0:-1");
  expect_rejected("redis", "REDIS_ADDR", "redis:65536");
  expect_rejected("redis", "REDIS_ADDR", "redis:6379x");
}

static void test_config_rejects_ipv6_without_brackets(void **state) {
  (void)state;
  expect_rejected("listen", "LISTEN_ADDR", "::1:8080");
  expect_rejected("listen", "LISTEN_ADDR", ":::8080");
  expect_rejected("redis", "REDIS_ADDR", "::1:6379");
  expect_rejected("redis", "REDIS_ADDR", "fe80::1:6379");
}

static void test_config_rejects_listen_host_that_is_not_an_ip(void **state) {
  (void)state;
  expect_rejected("listen", "LISTEN_ADDR", "localhost:8080");
  expect_rejected("listen", "LISTEN_ADDR", "256.0.0.1:8080");
  expect_rejected("listen", "LISTEN_ADDR", "[::g]:8080");
}

static void test_config_rejects_redis_port_0(void **state) {
  (void)state;
  expect_rejected("redis", "REDIS_ADDR", "redis:0");
  expect_rejected("redis", "REDIS_ADDR", "[::1]:0");
}

static void test_config_rejects_bad_redis_host_name(void **state) {
  (void)state;
  expect_rejected("redis", "REDIS_ADDR", "red is:6379");
  expect_rejected("redis", "REDIS_ADDR", "-redis:6379");
  expect_rejected("redis", "REDIS_ADDR", ".redis:6379");
  expect_rejected("redis", "REDIS_ADDR", "red!s:6379");
  expect_rejected("redis", "REDIS_ADDR", "redis/0:6379");
  expect_rejected("redis", "REDIS_ADDR", "[::g]:6379");
}

/* ---- Numbers ------------------------------------------------------------ */

struct bounded {
  const char *flag;
  const char *env;
  uint64_t min;
  uint64_t max;
  size_t offset;
};

#define BOUNDED(flag, env, min, max, field)                                    \
  { flag, env, min, max, offsetof(struct config, field) }

static const struct bounded bounded[] = {
    BOUNDED("incr-delay-ms", "INCR_DELAY_MS", 0, 86400000, incr_delay_ms),
    BOUNDED("shutdown-delay-ms", "SHUTDOWN_DELAY_MS", 0, 86400000,
            shutdown_delay_ms),
    BOUNDED("shutdown-timeout-ms", "SHUTDOWN_TIMEOUT_MS", 0, 86400000,
            shutdown_timeout_ms),
    BOUNDED("max-pending", "MAX_PENDING", 1, 1000000000, max_pending),
    BOUNDED("redis-timeout-ms", "REDIS_TIMEOUT_MS", 10, 86400000,
            redis_timeout_ms),
    BOUNDED("header-max-bytes", "HEADER_MAX_BYTES", 256, 1048576,
            header_max_bytes),
    BOUNDED("max-headers", "MAX_HEADERS", 1, 10000, max_headers),
    BOUNDED("url-max-bytes", "URL_MAX_BYTES", 16, 1048576, url_max_bytes),
    BOUNDED("max-body-bytes", "MAX_BODY_BYTES", 0, 1073741824, max_body_bytes),
    BOUNDED("header-timeout-ms", "HEADER_TIMEOUT_MS", 1, 86400000,
            header_timeout_ms),
    BOUNDED("idle-timeout-ms", "IDLE_TIMEOUT_MS", 1, 86400000, idle_timeout_ms),
    BOUNDED("max-connections", "MAX_CONNECTIONS", 1, 1000000, max_connections),
};

#define N_BOUNDED (sizeof bounded / sizeof bounded[0])

static uint64_t field_of(const struct bounded *b) {
  uint64_t v;
  memcpy(&v, (const char *)&cfg + b->offset, sizeof v);
  return v;
}

static void test_config_rejects_values_that_are_not_numbers(void **state) {
  (void)state;
  static const char *const bad[] = {"abc", "5s",  "-1",   "+5", " 5",
                                    "5 ",  "1e3", "0x10", "1.5"};
  for (size_t i = 0; i < N_BOUNDED; i++) {
    for (size_t j = 0; j < sizeof bad / sizeof bad[0]; j++)
      expect_rejected(bounded[i].flag, bounded[i].env, bad[j]);
    /* An empty flag value is not a number (an empty variable is unset). */
    expect_flag_rejected(bounded[i].flag, bounded[i].env, "");
  }
}

static void test_config_accepts_each_bound_and_rejects_beyond(void **state) {
  (void)state;
  char arg[128];
  char value[32];
  for (size_t i = 0; i < N_BOUNDED; i++) {
    const struct bounded *b = &bounded[i];
    snprintf(arg, sizeof arg, "--%s=%llu", b->flag, (unsigned long long)b->min);
    expect_ok(LIST(arg), NONE);
    assert_int_equal(field_of(b), b->min);
    snprintf(arg, sizeof arg, "--%s=%llu", b->flag, (unsigned long long)b->max);
    expect_ok(LIST(arg), NONE);
    assert_int_equal(field_of(b), b->max);

    snprintf(value, sizeof value, "%llu", (unsigned long long)b->max + 1);
    expect_rejected(b->flag, b->env, value);
    if (b->min > 0) {
      snprintf(value, sizeof value, "%llu", (unsigned long long)b->min - 1);
      expect_rejected(b->flag, b->env, value);
    }
    /* Past UINT64_MAX: overflow is out of range, not a wrapped value. */
    expect_rejected(b->flag, b->env, "18446744073709551616");
    expect_rejected(b->flag, b->env, "99999999999999999999999999");
  }
}

static void test_config_out_of_range_message_gives_the_range(void **state) {
  (void)state;
  expect_error(LIST("--max-headers=10001"), NONE,
               LIST("MAX_HEADERS", "10001", "1", "10000"));
}

/* ---- Strings and enumerations ---------------------------------------- */

static void test_config_rejects_empty_counter_key(void **state) {
  (void)state;
  expect_flag_rejected("counter-key", "COUNTER_KEY", "");
  expect_error(LIST("--counter-key", ""), NONE, LIST("COUNTER_KEY"));
}

static void test_config_rejects_too_long_strings(void **state) {
  (void)state;
  char key[CONFIG_KEY_MAX + 1];
  memset(key, 'k', CONFIG_KEY_MAX);
  key[CONFIG_KEY_MAX] = '\0';
  expect_rejected("counter-key", "COUNTER_KEY", key);
  key[CONFIG_KEY_MAX - 1] = '\0';
  expect_ok(LIST("--counter-key", key), NONE);
  assert_string_equal(cfg.counter_key, key);

  char path[CONFIG_PATH_MAX + 1];
  memset(path, 'p', CONFIG_PATH_MAX);
  path[0] = '/';
  path[CONFIG_PATH_MAX] = '\0';
  expect_rejected("termination-log", "TERMINATION_LOG", path);
}

static void test_config_rejects_bad_log_format(void **state) {
  (void)state;
  expect_rejected("log-format", "LOG_FORMAT", "yaml");
  expect_rejected("log-format", "LOG_FORMAT", "JSON");
  expect_flag_rejected("log-format", "LOG_FORMAT", "");
}

static void test_config_rejects_bad_log_level(void **state) {
  (void)state;
  expect_rejected("log-level", "LOG_LEVEL", "verbose");
  expect_rejected("log-level", "LOG_LEVEL", "warning");
  expect_rejected("log-level", "LOG_LEVEL", "INFO");
  expect_flag_rejected("log-level", "LOG_LEVEL", "");
}

static void test_config_accepts_every_log_level_and_format(void **state) {
  (void)state;
  static const struct {
    const char *name;
    enum log_level level;
  } levels[] = {{"debug", LOG_DEBUG},
                {"info", LOG_INFO},
                {"warn", LOG_WARN},
                {"error", LOG_ERROR}};
  char arg[64];
  for (size_t i = 0; i < 4; i++) {
    snprintf(arg, sizeof arg, "--log-level=%s", levels[i].name);
    expect_ok(LIST(arg), NONE);
    assert_int_equal(cfg.log_level, levels[i].level);
  }
  expect_ok(NONE, LIST("LOG_FORMAT=text"));
  assert_int_equal(cfg.log_format, LOG_FORMAT_TEXT);
  expect_ok(NONE, LIST("LOG_FORMAT=json"));
  assert_int_equal(cfg.log_format, LOG_FORMAT_JSON);
}

/* ---- The command line --------------------------------------------------- */

static void test_config_rejects_unknown_option(void **state) {
  (void)state;
  expect_error(LIST("--nope"), NONE, LIST("--nope"));
  expect_error(LIST("--nope=1"), NONE, LIST("--nope"));
  /* A prefix of a flag is not the flag. */
  expect_error(LIST("--incr=5"), NONE, LIST("--incr"));
  expect_error(LIST("--incr-delay-ms-x=5"), NONE, LIST("--incr-delay-ms-x"));
}

static void test_config_rejects_flag_without_value(void **state) {
  (void)state;
  expect_error(LIST("--incr-delay-ms"), NONE,
               LIST("--incr-delay-ms", "INCR_DELAY_MS"));
  expect_error(LIST("--counter-key=x", "--listen"), NONE,
               LIST("--listen", "LISTEN_ADDR"));
}

static void test_config_rejects_positional_argument(void **state) {
  (void)state;
  expect_error(LIST("serve"), NONE, LIST("serve"));
  expect_error(LIST("--incr-delay-ms=1", "extra"), NONE, LIST("extra"));
  expect_error(LIST("-v"), NONE, LIST("-v"));
}

static void test_config_help_prints_every_setting_and_exits(void **state) {
  (void)state;
  static const char *const names[] = {
      "--listen",
      "LISTEN_ADDR",
      "--redis",
      "REDIS_ADDR",
      "--incr-delay-ms",
      "INCR_DELAY_MS",
      "--counter-key",
      "COUNTER_KEY",
      "--shutdown-delay-ms",
      "SHUTDOWN_DELAY_MS",
      "KUBERNETES_SERVICE_HOST",
      "--shutdown-timeout-ms",
      "SHUTDOWN_TIMEOUT_MS",
      "--max-pending",
      "MAX_PENDING",
      "--log-format",
      "LOG_FORMAT",
      "--log-level",
      "LOG_LEVEL",
      "--redis-timeout-ms",
      "REDIS_TIMEOUT_MS",
      "--header-max-bytes",
      "HEADER_MAX_BYTES",
      "--max-headers",
      "MAX_HEADERS",
      "--url-max-bytes",
      "URL_MAX_BYTES",
      "--max-body-bytes",
      "MAX_BODY_BYTES",
      "--header-timeout-ms",
      "HEADER_TIMEOUT_MS",
      "--idle-timeout-ms",
      "IDLE_TIMEOUT_MS",
      "--max-connections",
      "MAX_CONNECTIONS",
      "--termination-log",
      "TERMINATION_LOG",
      "--help",
      "--version",
  };
  assert_int_equal(parse(LIST("--help"), NONE), CONFIG_EXIT);
  assert_non_null(strstr(printed, "Usage: gracefuld"));
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (!strstr(printed, names[i]))
      fail_msg("--help does not mention %s", names[i]);
  }
  /* --help wins over arguments that would fail after it. */
  assert_int_equal(parse(LIST("--help", "--nope"), LIST("INCR_DELAY_MS=x")),
                   CONFIG_EXIT);
  assert_int_equal(parse(LIST("-h"), NONE), CONFIG_EXIT);
  assert_non_null(strstr(printed, "Usage: gracefuld"));
}

static void test_config_version_prints_version_and_exits(void **state) {
  (void)state;
  assert_int_equal(parse(LIST("--version"), NONE), CONFIG_EXIT);
  assert_string_equal(printed, "gracefuld " GRACEFULD_VERSION "\n");
}

/* ---- Redis URL, user and password -------------------------------------- */

static void test_config_redis_url_sets_target_user_password_db(void **state) {
  (void)state;
  expect_ok(NONE, LIST("REDIS_URL=redis://app:pw%40x@redis.example:6390/4"));
  assert_int_equal(cfg.redis.transport, REDIS_TCP);
  assert_string_equal(cfg.redis.host, "redis.example");
  assert_int_equal(cfg.redis.port, 6390);
  assert_int_equal(cfg.redis.db, 4);
  assert_string_equal(cfg.redis.user, "app");
  assert_string_equal(cfg.redis.password, "pw@x");
  expect_ok(LIST("--redis-url", "unix:///tmp/r.sock?db=1"), NONE);
  assert_int_equal(cfg.redis.transport, REDIS_UNIX);
  assert_string_equal(cfg.redis.path, "/tmp/r.sock");
  assert_int_equal(cfg.redis.db, 1);
}

static void test_config_redis_url_and_addr_together_name_both(void **state) {
  (void)state;
  expect_error(NONE, LIST("REDIS_URL=redis://h", "REDIS_ADDR=h:1"),
               LIST("REDIS_URL", "REDIS_ADDR"));
  expect_error(LIST("--redis", "h:1"), LIST("REDIS_URL=redis://h"),
               LIST("REDIS_URL", "REDIS_ADDR"));
}

static void test_config_bad_redis_url_never_echoes_the_password(void **state) {
  (void)state;
  expect_error(NONE, LIST("REDIS_URL=rediss://:hunter2@h:0"),
               LIST("REDIS_URL", "rediss://:***@h:0", "port"));
  assert_null(strstr(err, "hunter2"));
  expect_error(NONE, LIST("REDIS_URL=redis://u:hunter2@h:0"),
               LIST("REDIS_URL", "port"));
  assert_null(strstr(err, "hunter2"));
}

static const char *write_file(const char *text) {
  static char path[] = "/tmp/gracefuld-test-secret-XXXXXX";
  memcpy(path + strlen(path) - 6, "XXXXXX", 6);
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static void test_config_password_file_drops_one_trailing_newline(void **state) {
  (void)state;
  char env[128];
  const char *path = write_file("pa ss\n");
  snprintf(env, sizeof env, "REDIS_PASSWORD_FILE=%s", path);
  expect_ok(NONE, LIST(env, "REDIS_USERNAME=app"));
  unlink(path);
  assert_string_equal(cfg.redis.password, "pa ss");
  assert_true(cfg.redis.has_password);
  assert_string_equal(cfg.redis.user, "app");
}

static void test_config_password_file_errors_name_the_file_only(void **state) {
  (void)state;
  char env[128];
  expect_error(NONE, LIST("REDIS_PASSWORD_FILE=/nonexistent/pw"),
               LIST("REDIS_PASSWORD_FILE", "/nonexistent/pw", "cannot open"));
  const char *path = write_file("\n");
  snprintf(env, sizeof env, "REDIS_PASSWORD_FILE=%s", path);
  expect_error(NONE, LIST(env), LIST("REDIS_PASSWORD_FILE", "empty"));
  unlink(path);
  path = write_file("hunter2");
  snprintf(env, sizeof env, "REDIS_PASSWORD_FILE=%s", path);
  expect_error(NONE, LIST(env, "REDIS_URL=redis://:other@h"),
               LIST("REDIS_PASSWORD_FILE", "one place"));
  unlink(path);
  assert_null(strstr(err, "hunter2"));
  expect_error(NONE, LIST("REDIS_URL=redis://a@h", "REDIS_USERNAME=b"),
               LIST("REDIS_USERNAME", "one place"));
  expect_error(NONE, LIST("REDIS_USERNAME=app"),
               LIST("REDIS_USERNAME", "needs a password"));
  expect_error(NONE, LIST("REDIS_URL=redis://app@h"),
               LIST("REDIS_URL", "needs a password"));
}

static void
test_config_sentinels_with_default_port_and_master_name(void **state) {
  (void)state;
  expect_ok(NONE, LIST("REDIS_SENTINELS=s1:26380,10.0.0.2,[::1]:5",
                       "REDIS_MASTER_NAME=mymaster", "REDIS_MIN_REPLICAS=1"));
  assert_int_equal(cfg.n_sentinels, 3);
  assert_string_equal(cfg.sentinels[0].host, "s1");
  assert_int_equal(cfg.sentinels[0].port, 26380);
  assert_string_equal(cfg.sentinels[1].host, "10.0.0.2");
  assert_int_equal(cfg.sentinels[1].port, 26379);
  assert_string_equal(cfg.sentinels[2].host, "::1");
  assert_int_equal(cfg.sentinels[2].port, 5);
  assert_string_equal(cfg.master_name, "mymaster");
  assert_int_equal(cfg.min_replicas, 1);
}

static void test_config_sentinel_settings_go_together(void **state) {
  (void)state;
  expect_error(NONE, LIST("REDIS_SENTINELS=s1"),
               LIST("REDIS_SENTINELS", "REDIS_MASTER_NAME"));
  expect_error(NONE, LIST("REDIS_MASTER_NAME=m"),
               LIST("REDIS_MASTER_NAME", "REDIS_SENTINELS"));
  expect_error(
      NONE, LIST("REDIS_SENTINELS=s1", "REDIS_MASTER_NAME=m", "REDIS_ADDR=h:1"),
      LIST("REDIS_SENTINELS", "REDIS_ADDR"));
  expect_error(NONE,
               LIST("REDIS_SENTINELS=s1", "REDIS_MASTER_NAME=m",
                    "REDIS_URL=unix:///tmp/r.sock"),
               LIST("REDIS_SENTINELS", "unix"));
  expect_rejected("redis-sentinels", "REDIS_SENTINELS", "s1,,s2");
  expect_rejected("redis-sentinels", "REDIS_SENTINELS", "s1:0");
  expect_rejected("redis-sentinels", "REDIS_SENTINELS", "a,b,c,d,e,f,g,h,i");
  expect_rejected("redis-min-replicas", "REDIS_MIN_REPLICAS", "17");
}

static void test_config_cluster_nodes_and_what_they_exclude(void **state) {
  (void)state;
  expect_ok(NONE, LIST("REDIS_CLUSTER_NODES=n1:7000,10.0.0.2",
                       "REDIS_URL=rediss://app:pw@ignored"));
  assert_int_equal(cfg.n_cluster_nodes, 2);
  assert_string_equal(cfg.cluster_nodes[0].host, "n1");
  assert_int_equal(cfg.cluster_nodes[0].port, 7000);
  assert_int_equal(cfg.cluster_nodes[1].port, 6379);
  assert_true(cfg.redis.tls);
  assert_int_equal(cfg.n_sentinels, 0);
  expect_error(NONE, LIST("REDIS_CLUSTER_NODES=n1", "REDIS_ADDR=h:1"),
               LIST("REDIS_CLUSTER_NODES", "REDIS_ADDR"));
  expect_error(NONE,
               LIST("REDIS_CLUSTER_NODES=n1", "REDIS_SENTINELS=s1",
                    "REDIS_MASTER_NAME=m"),
               LIST("REDIS_CLUSTER_NODES", "REDIS_SENTINELS"));
  expect_error(NONE, LIST("REDIS_CLUSTER_NODES=n1", "REDIS_URL=redis://h/2"),
               LIST("REDIS_CLUSTER_NODES", "database 0"));
  expect_rejected("redis-cluster-nodes", "REDIS_CLUSTER_NODES", "n1:0");
  expect_rejected("redis-cluster-nodes", "REDIS_CLUSTER_NODES", "n1,,n2");
}

static void
test_config_warns_when_delays_exceed_the_shutdown_timeout(void **state) {
  (void)state;
  assert_int_equal(
      parse(NONE, LIST("SHUTDOWN_DELAY_MS=3000", "INCR_DELAY_MS=3000",
                       "SHUTDOWN_TIMEOUT_MS=5000")),
      CONFIG_OK);
  const char *w = config_warning(&cfg);
  assert_non_null(w);
  assert_non_null(strstr(w, "SHUTDOWN_DELAY_MS"));
  assert_non_null(strstr(w, "INCR_DELAY_MS"));
  assert_non_null(strstr(w, "SHUTDOWN_TIMEOUT_MS"));
  /* Exactly fitting, and the defaults, are fine. */
  assert_int_equal(
      parse(NONE, LIST("SHUTDOWN_DELAY_MS=2000", "INCR_DELAY_MS=3000",
                       "SHUTDOWN_TIMEOUT_MS=5000")),
      CONFIG_OK);
  assert_null(config_warning(&cfg));
  assert_int_equal(parse(NONE, NONE), CONFIG_OK);
  assert_null(config_warning(&cfg));
}

static void test_config_durability_prefix_and_lease(void **state) {
  (void)state;
  expect_ok(NONE, NONE);
  assert_int_equal(cfg.durability, DURABILITY_MEMORY);
  assert_string_equal(cfg.key_prefix, "gracefuld:");
  assert_int_equal(cfg.lease_ms, 3000);
  expect_ok(LIST("--durability", "redis", "--lease-ms", "1500"),
            LIST("KEY_PREFIX=app1:"));
  assert_int_equal(cfg.durability, DURABILITY_REDIS);
  assert_string_equal(cfg.key_prefix, "app1:");
  assert_int_equal(cfg.lease_ms, 1500);
  expect_rejected("durability", "DURABILITY", "disk");
  expect_rejected("lease-ms", "LEASE_MS", "299");
  expect_rejected("lease-ms", "LEASE_MS", "soon");
  /* Keys carry the counter's hash tag: the prefix may not bring its own. */
  expect_rejected("key-prefix", "KEY_PREFIX", "app{1}:");
  expect_rejected("key-prefix", "KEY_PREFIX", "app}");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config_durability_prefix_and_lease),
      cmocka_unit_test(test_config_sentinels_with_default_port_and_master_name),
      cmocka_unit_test(test_config_sentinel_settings_go_together),
      cmocka_unit_test(test_config_cluster_nodes_and_what_they_exclude),
      cmocka_unit_test(test_config_redis_url_sets_target_user_password_db),
      cmocka_unit_test(test_config_redis_url_and_addr_together_name_both),
      cmocka_unit_test(test_config_bad_redis_url_never_echoes_the_password),
      cmocka_unit_test(test_config_password_file_drops_one_trailing_newline),
      cmocka_unit_test(test_config_password_file_errors_name_the_file_only),
      cmocka_unit_test(test_config_defaults_without_flags_or_environment),
      cmocka_unit_test(
          test_config_shutdown_delay_defaults_to_5000_under_kubernetes),
      cmocka_unit_test(
          test_config_shutdown_delay_setting_wins_over_kubernetes_default),
      cmocka_unit_test(test_config_environment_overrides_every_default),
      cmocka_unit_test(test_config_flags_override_every_environment_variable),
      cmocka_unit_test(test_config_flag_overrides_invalid_environment_value),
      cmocka_unit_test(test_config_flag_takes_value_after_equals_sign),
      cmocka_unit_test(test_config_flag_takes_value_from_next_argument),
      cmocka_unit_test(test_config_environment_name_must_match_exactly),
      cmocka_unit_test(test_config_empty_environment_variable_counts_as_unset),
      cmocka_unit_test(test_config_empty_termination_log_disables_it),
      cmocka_unit_test(test_config_listen_accepts_ipv4_address),
      cmocka_unit_test(test_config_listen_accepts_bracketed_ipv6_address),
      cmocka_unit_test(test_config_redis_accepts_host_name_and_ip_literals),
      cmocka_unit_test(test_config_rejects_address_without_port),
      cmocka_unit_test(test_config_rejects_address_without_host),
      cmocka_unit_test(test_config_rejects_port_above_65535_or_not_a_number),
      cmocka_unit_test(test_config_rejects_ipv6_without_brackets),
      cmocka_unit_test(test_config_rejects_listen_host_that_is_not_an_ip),
      cmocka_unit_test(test_config_rejects_redis_port_0),
      cmocka_unit_test(test_config_rejects_bad_redis_host_name),
      cmocka_unit_test(test_config_rejects_values_that_are_not_numbers),
      cmocka_unit_test(test_config_accepts_each_bound_and_rejects_beyond),
      cmocka_unit_test(test_config_out_of_range_message_gives_the_range),
      cmocka_unit_test(test_config_rejects_empty_counter_key),
      cmocka_unit_test(test_config_rejects_too_long_strings),
      cmocka_unit_test(test_config_rejects_bad_log_format),
      cmocka_unit_test(test_config_rejects_bad_log_level),
      cmocka_unit_test(test_config_accepts_every_log_level_and_format),
      cmocka_unit_test(test_config_rejects_unknown_option),
      cmocka_unit_test(test_config_rejects_flag_without_value),
      cmocka_unit_test(test_config_rejects_positional_argument),
      cmocka_unit_test(test_config_help_prints_every_setting_and_exits),
      cmocka_unit_test(test_config_version_prints_version_and_exits),
      cmocka_unit_test(
          test_config_warns_when_delays_exceed_the_shutdown_timeout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
