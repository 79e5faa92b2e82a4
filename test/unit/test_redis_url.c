/* REDIS_URL parsing (userinfo, percent-decoding, port, database, unix
 * sockets, errors, rediss:// for TLS), redaction of a URL that failed, and
 * the form a target takes in a log line (never with its password). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "redis/redis_url.h"

static struct redis_target t;
static const char *why;

static void parse_ok(const char *url) {
  if (redis_url_parse(url, &t, &why) != 0)
    fail_msg("'%s' rejected: %s", url, why);
}

/* Rejected, with a reason holding needle and never the password. */
static void parse_fails(const char *url, const char *needle) {
  assert_int_not_equal(redis_url_parse(url, &t, &why), 0);
  assert_non_null(why);
  if (!strstr(why, needle))
    fail_msg("reason '%s' for '%s' does not say '%s'", why, url, needle);
  assert_null(strstr(why, "s3cret"));
  assert_string_equal(t.password, "");
}

static void test_url_host_alone_gets_port_6379_db_0(void **state) {
  (void)state;
  parse_ok("redis://redis.example");
  assert_int_equal(t.transport, REDIS_TCP);
  assert_string_equal(t.host, "redis.example");
  assert_int_equal(t.port, 6379);
  assert_int_equal(t.db, 0);
  assert_string_equal(t.user, "");
  assert_false(t.has_password);
}

static void test_url_with_user_password_port_and_db(void **state) {
  (void)state;
  parse_ok("redis://app:s3cret@10.0.0.7:6380/5");
  assert_string_equal(t.host, "10.0.0.7");
  assert_int_equal(t.port, 6380);
  assert_int_equal(t.db, 5);
  assert_string_equal(t.user, "app");
  assert_string_equal(t.password, "s3cret");
  assert_true(t.has_password);
}

static void test_url_password_alone_and_user_alone(void **state) {
  (void)state;
  parse_ok("redis://:s3cret@host/");
  assert_string_equal(t.user, "");
  assert_string_equal(t.password, "s3cret");
  assert_true(t.has_password);
  assert_int_equal(t.db, 0);
  parse_ok("redis://app@host");
  assert_string_equal(t.user, "app");
  assert_false(t.has_password);
  /* An empty password is still a password (AUTH ""), not none. */
  parse_ok("redis://app:@host");
  assert_true(t.has_password);
  assert_string_equal(t.password, "");
}

static void
test_url_percent_encoding_is_decoded_in_user_and_password(void **state) {
  (void)state;
  parse_ok("redis://us%40er:p%3Aa%2Fs%40s%25@host");
  assert_string_equal(t.user, "us@er");
  assert_string_equal(t.password, "p:a/s@s%");
  /* The last '@' ends the userinfo. */
  parse_ok("redis://:a@b@host:1");
  assert_string_equal(t.password, "a@b");
  assert_string_equal(t.host, "host");
}

static void test_url_bad_percent_encoding_is_rejected(void **state) {
  (void)state;
  parse_fails("redis://:s3cret%4@host", "percent-encoding in the password");
  parse_fails("redis://:s3cret%zz@host", "percent-encoding in the password");
  parse_fails("redis://:s3cret%00@host", "percent-encoding in the password");
  parse_fails("redis://u%g1:s3cret@host", "percent-encoding in the user");
}

static void test_url_ipv6_host_needs_brackets(void **state) {
  (void)state;
  parse_ok("redis://[::1]:6390/2");
  assert_string_equal(t.host, "::1");
  assert_int_equal(t.port, 6390);
  assert_int_equal(t.db, 2);
  parse_ok("redis://[::1]");
  assert_int_equal(t.port, 6379);
  parse_fails("redis://::1:6379", "brackets");
  parse_fails("redis://[::g]:6379", "not a host name or IP address");
}

static void test_url_bad_port_db_or_host_is_rejected(void **state) {
  (void)state;
  parse_fails("redis://host:0", "port must be from 1");
  parse_fails("redis://host:65536", "port");
  parse_fails("redis://host:63x", "port");
  parse_fails("redis://host:", "port");
  parse_fails("redis://:s3cret@:6379", "missing host");
  parse_fails("redis://", "missing host");
  parse_fails("redis://ho$t", "not a host name");
  parse_fails("redis://host/x", "database number");
  parse_fails("redis://host/1/2", "database number");
  parse_fails("redis://host/2147483648", "database number");
  parse_fails("redis://host/1?db=2", "query");
  parse_fails("redis://host#x", "fragment");
  parse_ok("redis://host/2147483647");
  assert_int_equal(t.db, 2147483647u);
}

static void test_url_unix_socket_with_and_without_db(void **state) {
  (void)state;
  parse_ok("unix:///run/redis/redis.sock");
  assert_int_equal(t.transport, REDIS_UNIX);
  assert_string_equal(t.path, "/run/redis/redis.sock");
  assert_int_equal(t.db, 0);
  parse_ok("unix:///tmp/r.sock?db=3");
  assert_string_equal(t.path, "/tmp/r.sock");
  assert_int_equal(t.db, 3);
  parse_ok("unix://app:s3cret@/tmp/r.sock");
  assert_string_equal(t.user, "app");
  assert_string_equal(t.password, "s3cret");
  assert_string_equal(t.path, "/tmp/r.sock");
}

static void test_url_unix_socket_errors(void **state) {
  (void)state;
  parse_fails("unix://relative.sock", "unix:///absolute");
  parse_fails("unix:///", "missing socket path");
  parse_fails("unix:///tmp/r.sock?db=x", "db must be a number");
  parse_fails("unix:///tmp/r.sock?timeout=3", "only query parameter");
  char long_path[200] = "unix:///";
  memset(long_path + 8, 'a', 150);
  parse_fails(long_path, "too long");
}

static void test_url_rediss_is_tls_and_redis_is_not(void **state) {
  (void)state;
  parse_ok("rediss://app:s3cret@host:6380/3");
  assert_true(t.tls);
  assert_int_equal(t.transport, REDIS_TCP);
  assert_string_equal(t.host, "host");
  assert_int_equal(t.port, 6380);
  assert_int_equal(t.db, 3);
  assert_string_equal(t.password, "s3cret");
  parse_ok("redis://host");
  assert_false(t.tls);
  parse_fails("rediss://:s3cret@host:0", "port");
  parse_fails("rediss:///tmp/r.sock", "host");
}

static void test_url_other_schemes_are_rejected(void **state) {
  (void)state;
  parse_fails("host:6379", "expected redis://");
  parse_fails("http://host", "expected redis://");
  parse_fails("", "expected redis://");
}

static void test_redact_masks_the_password_of_any_url(void **state) {
  (void)state;
  char out[256];
  redis_url_redact("redis://app:s3cret@host:1/2", out, sizeof out);
  assert_string_equal(out, "redis://app:***@host:1/2");
  redis_url_redact("redis://:s3/cr?et@host", out, sizeof out);
  assert_string_equal(out, "redis://:***@host");
  redis_url_redact("redis://host:1", out, sizeof out);
  assert_string_equal(out, "redis://host:1");
  redis_url_redact("redis://app@host", out, sizeof out);
  assert_string_equal(out, "redis://app@host");
  redis_url_redact("rediss://u:s3cret@h", out, 12);
  assert_string_equal(out, "rediss://u:");
}

/* url, parsed, is logged as want. */
static void expect_format(const char *url, const char *want) {
  char out[512];
  parse_ok(url);
  redis_target_format(&t, out, sizeof out);
  assert_string_equal(out, want);
}

static void test_format_shows_password_as_stars(void **state) {
  (void)state;
  expect_format("redis://app:s3cret@host:6380/5",
                "redis://app:***@host:6380/5");
  expect_format("redis://:s3cret@[::1]", "redis://:***@[::1]:6379/0");
  expect_format("redis://host:6380", "host:6380");
  expect_format("redis://[::1]:7", "[::1]:7");
  expect_format("unix://:s3cret@/tmp/r.sock?db=2",
                "unix://:***@/tmp/r.sock?db=2");
  expect_format("unix:///tmp/r.sock", "unix:///tmp/r.sock");
  expect_format("rediss://host:6380", "rediss://host:6380/0");
  expect_format("rediss://:s3cret@host", "rediss://:***@host:6379/0");
}

static void test_split_host_port_with_and_without_default(void **state) {
  (void)state;
  char host[16];
  uint16_t port = 1;
  assert_null(redis_split_host_port("h:0", 3, host, sizeof host, 0, &port));
  assert_int_equal(port, 0);
  assert_non_null(redis_split_host_port("h", 1, host, sizeof host, 0, &port));
  assert_null(redis_split_host_port("h", 1, host, sizeof host, 26379, &port));
  assert_int_equal(port, 26379);
  assert_string_equal(host, "h");
  /* n bytes, not the whole string. */
  assert_null(redis_split_host_port("a:1,b:2", 3, host, sizeof host, 0, &port));
  assert_string_equal(host, "a");
  assert_int_equal(port, 1);
  assert_non_null(redis_split_host_port("a-very-long-host-name:1", 23, host,
                                        sizeof host, 0, &port));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_url_host_alone_gets_port_6379_db_0),
      cmocka_unit_test(test_url_with_user_password_port_and_db),
      cmocka_unit_test(test_url_password_alone_and_user_alone),
      cmocka_unit_test(
          test_url_percent_encoding_is_decoded_in_user_and_password),
      cmocka_unit_test(test_url_bad_percent_encoding_is_rejected),
      cmocka_unit_test(test_url_ipv6_host_needs_brackets),
      cmocka_unit_test(test_url_bad_port_db_or_host_is_rejected),
      cmocka_unit_test(test_url_unix_socket_with_and_without_db),
      cmocka_unit_test(test_url_unix_socket_errors),
      cmocka_unit_test(test_url_rediss_is_tls_and_redis_is_not),
      cmocka_unit_test(test_url_other_schemes_are_rejected),
      cmocka_unit_test(test_redact_masks_the_password_of_any_url),
      cmocka_unit_test(test_format_shows_password_as_stars),
      cmocka_unit_test(test_split_host_port_with_and_without_default),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
