/* redis_server: the version in an INFO reply, the eviction policies that
 * may evict any key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "redis/redis_server.h"

static bool version_of(const char *info, char *v, unsigned *major) {
  return redis_server_version(info, strlen(info), v, 32, major);
}

static void test_redis_server_reads_the_version_line(void **state) {
  (void)state;
  char v[32];
  unsigned major = 0;
  assert_true(version_of("# Server\r\nredis_version:7.0.15\r\n"
                         "redis_git_sha1:00000000\r\n",
                         v, &major));
  assert_string_equal(v, "7.0.15");
  assert_int_equal(major, 7);
  /* Valkey says its Redis version on the same line. */
  assert_true(version_of("# Server\r\nredis_version:7.2.4\r\n"
                         "server_name:valkey\r\nvalkey_version:8.0.1\r\n",
                         v, &major));
  assert_int_equal(major, 7);
  assert_true(version_of("redis_version:5.0.14\n", v, &major));
  assert_int_equal(major, 5);
  assert_true(major < REDIS_SERVER_MIN_MAJOR);
  assert_true(version_of("redis_version:10.1", v, &major)); /* no CRLF */
  assert_int_equal(major, 10);
}

static void test_redis_server_finds_no_version_where_none_is(void **state) {
  (void)state;
  char v[32];
  unsigned major = 0;
  assert_false(version_of("", v, &major));
  assert_false(version_of("# Server\r\nos:Linux\r\n", v, &major));
  /* Only at the start of a line, and only a number. */
  assert_false(version_of("x_redis_version:7.0.0\r\n", v, &major));
  assert_false(version_of("redis_version:unknown\r\n", v, &major));
  assert_false(version_of("redis_version:\r\n", v, &major));
}

static void test_redis_server_allkeys_policies_evict_any_key(void **state) {
  (void)state;
  const char *any[] = {"allkeys-lru", "allkeys-lfu", "allkeys-random"};
  const char *ttl_only[] = {"noeviction",      "volatile-lru", "volatile-lfu",
                            "volatile-random", "volatile-ttl", "allkeys"};
  for (size_t i = 0; i < sizeof any / sizeof *any; i++)
    assert_true(redis_server_evicts_any_key(any[i], strlen(any[i])));
  for (size_t i = 0; i < sizeof ttl_only / sizeof *ttl_only; i++)
    assert_false(redis_server_evicts_any_key(ttl_only[i], strlen(ttl_only[i])));
}

static void test_redis_server_integers_incrby_counts_on(void **state) {
  (void)state;
  const char *yes[] = {"0", "42", "-7", "9223372036854775807"};
  const char *no[] = {"", "-", "4.2", "x", " 1", "1 ", "--1", "0x10"};
  for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
    assert_true(redis_server_is_integer(yes[i], strlen(yes[i])));
  for (size_t i = 0; i < sizeof no / sizeof *no; i++)
    assert_false(redis_server_is_integer(no[i], strlen(no[i])));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_redis_server_reads_the_version_line),
      cmocka_unit_test(test_redis_server_finds_no_version_where_none_is),
      cmocka_unit_test(test_redis_server_allkeys_policies_evict_any_key),
      cmocka_unit_test(test_redis_server_integers_incrby_counts_on),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
