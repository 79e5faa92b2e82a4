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

static void test_refused_writes_are_retried_not_failed(void **state) {
  (void)state;
  assert_int_equal(classify("NOREPLICAS Not enough good replicas to write."),
                   REDIS_ERROR_RETRY);
  assert_int_equal(classify("MISCONF Redis is configured to save RDB "
                            "snapshots, but it's currently unable to persist "
                            "to disk."),
                   REDIS_ERROR_RETRY);
  assert_int_equal(classify("CLUSTERDOWN The cluster is down"),
                   REDIS_ERROR_RETRY);
}

/* Redis Cluster's redirections: MOVED asks where the slot went (a fresh
 * connection, after the cluster is asked again), ASK waits for the slot
 * to finish migrating; neither ran the command. */
static void test_cluster_redirections_are_followed_not_failed(void **state) {
  (void)state;
  assert_int_equal(classify("MOVED 866 127.0.0.1:7002"), REDIS_ERROR_RECONNECT);
  assert_int_equal(classify("ASK 866 127.0.0.1:7002"), REDIS_ERROR_RETRY);
  assert_int_equal(classify("ASKING is not a reply"), REDIS_ERROR_PERMANENT);
  assert_int_equal(classify("TRYAGAIN Multiple keys request during "
                            "rehashing of slot"),
                   REDIS_ERROR_RETRY);
}

/* What a script's redis.call raised, as Redis 7 and Redis 6 word it. */
static void
test_errors_raised_in_scripts_are_judged_by_their_own_code(void **state) {
  (void)state;
  /* Redis 7: the code first, the script named at the end. */
  assert_int_equal(classify("NOREPLICAS Not enough good replicas to write. "
                            "script: 2dc6a2806cfbef84960e763005eb136b02ebea15,"
                            " on @user_script:1."),
                   REDIS_ERROR_RETRY);
  assert_int_equal(classify("READONLY You can't write against a read only "
                            "replica. script: 2dc6a2806cfbef84960e763005eb136b"
                            "02ebea15, on @user_script:23."),
                   REDIS_ERROR_RECONNECT);
  /* Redis 6.2: wrapped in an ERR. */
  assert_int_equal(
      classify("ERR Error running script (call to f_2dc6a2806cfbef84960e763005"
               "eb136b02ebea15): @user_script:23: -NOREPLICAS Not enough good "
               "replicas to write."),
      REDIS_ERROR_RETRY);
  assert_int_equal(
      classify("ERR Error running script (call to f_2dc6a2806cfbef84960e763005"
               "eb136b02ebea15): @user_script:5: READONLY You can't write "
               "against a read only replica."),
      REDIS_ERROR_RECONNECT);
  /* Redis 6.0: the place twice. */
  assert_int_equal(
      classify("ERR Error running script (call to f_2dc6a2806cfbef84960e763005"
               "eb136b02ebea15): @user_script:1: @user_script: 1: -MISCONF "
               "Redis is configured to save RDB snapshots"),
      REDIS_ERROR_RETRY);
  assert_int_equal(
      classify("ERR Error running script (call to f_2dc6a2806cfbef84960e763005"
               "eb136b02ebea15): @user_script:1: -OOM command not allowed"),
      REDIS_ERROR_RETRY);
  /* What no retry fixes stays permanent, wrapped or not. */
  assert_int_equal(
      classify("ERR Error running script (call to f_2dc6a2806cfbef84960e763005"
               "eb136b02ebea15): @user_script:1: WRONGTYPE Operation against "
               "a key holding the wrong kind of value"),
      REDIS_ERROR_PERMANENT);
  assert_int_equal(classify("ERR Error running script (call to f_x): "
                            "@user_script:1: user_script:1: Script attempted "
                            "to access nonexistent global variable 'x'"),
                   REDIS_ERROR_PERMANENT);
  assert_int_equal(classify("ERR Error running script BUSY"),
                   REDIS_ERROR_PERMANENT);
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
      cmocka_unit_test(test_refused_writes_are_retried_not_failed),
      cmocka_unit_test(test_cluster_redirections_are_followed_not_failed),
      cmocka_unit_test(
          test_errors_raised_in_scripts_are_judged_by_their_own_code),
      cmocka_unit_test(test_auth_errors_are_recognised),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
