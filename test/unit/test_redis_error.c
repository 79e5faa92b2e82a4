/* redis_error_classify: which error replies are retried (on a fresh
 * connection or after a wait) and which count as failed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "redis/redis_error.h"

static enum redis_error_class classify(const char *msg) {
  return redis_error_classify(msg, strlen(msg));
}

static void test_errors_a_fresh_connection_can_fix_reconnect(void **state) {
  (void)state;
  assert_int_equal(classify("NOAUTH Authentication required."),
                   REDIS_ERROR_RECONNECT);
  assert_int_equal(classify("LOADING Redis is loading the dataset in memory"),
                   REDIS_ERROR_RECONNECT);
  assert_int_equal(classify("READONLY You can't write against a read only "
                            "replica."),
                   REDIS_ERROR_RECONNECT);
  assert_int_equal(classify("MASTERDOWN Link with MASTER is down and "
                            "replica-serve-stale-data is set to 'no'."),
                   REDIS_ERROR_RECONNECT);
}

static void test_errors_that_pass_with_time_retry(void **state) {
  (void)state;
  assert_int_equal(classify("BUSY Redis is busy running a script."),
                   REDIS_ERROR_RETRY);
  assert_int_equal(classify("TRYAGAIN Multiple keys request during "
                            "rehashing of slot"),
                   REDIS_ERROR_RETRY);
  assert_int_equal(classify("OOM command not allowed when used memory > "
                            "'maxmemory'."),
                   REDIS_ERROR_RETRY);
  assert_int_equal(classify("BUSY"), REDIS_ERROR_RETRY);
}

static void test_errors_no_retry_can_fix_are_permanent(void **state) {
  (void)state;
  assert_int_equal(classify("WRONGTYPE Operation against a key holding the "
                            "wrong kind of value"),
                   REDIS_ERROR_PERMANENT);
  assert_int_equal(classify("ERR value is not an integer or out of range"),
                   REDIS_ERROR_PERMANENT);
  assert_int_equal(classify("NOPERM this user has no permissions to run the "
                            "'incr' command"),
                   REDIS_ERROR_PERMANENT);
  assert_int_equal(classify(""), REDIS_ERROR_PERMANENT);
}

static void test_only_the_whole_first_word_counts(void **state) {
  (void)state;
  /* A prefix of another word, or a word later in the text, is not it. */
  assert_int_equal(classify("BUSYKEY Target key name already exists."),
                   REDIS_ERROR_PERMANENT);
  assert_int_equal(classify("ERR LOADING"), REDIS_ERROR_PERMANENT);
  assert_int_equal(classify("OOMX"), REDIS_ERROR_PERMANENT);
  assert_int_equal(redis_error_classify("NOAUTH", 4), REDIS_ERROR_PERMANENT);
  assert_int_equal(redis_error_classify("NOAUTHX", 6), REDIS_ERROR_RECONNECT);
}

static void test_auth_errors_are_recognised(void **state) {
  (void)state;
  const char *wrongpass =
      "WRONGPASS invalid username-password pair or user is disabled.";
  assert_true(redis_error_is_auth(wrongpass, strlen(wrongpass)));
  assert_true(redis_error_is_auth("NOAUTH Authentication required.", 31));
  assert_true(redis_error_is_auth("ERR invalid password", 20));
  assert_false(redis_error_is_auth("ERR unknown command", 19));
  assert_false(redis_error_is_auth("LOADING", 7));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_errors_a_fresh_connection_can_fix_reconnect),
      cmocka_unit_test(test_errors_that_pass_with_time_retry),
      cmocka_unit_test(test_errors_no_retry_can_fix_are_permanent),
      cmocka_unit_test(test_only_the_whole_first_word_counts),
      cmocka_unit_test(test_auth_errors_are_recognised),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
