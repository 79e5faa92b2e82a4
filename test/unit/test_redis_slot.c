/* Redis Cluster's hash slot of a key: CRC16 of the key or of its hash tag,
 * as Redis computes it (the values are CLUSTER KEYSLOT's). */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "redis/redis_slot.h"

static uint16_t slot(const char *key) {
  return redis_key_slot(key, strlen(key));
}

static void test_slot_is_crc16_of_the_key(void **state) {
  (void)state;
  assert_int_equal(slot("123456789"), 0x31C3 % REDIS_SLOTS);
  assert_int_equal(slot("foo"), 12182);
  assert_int_equal(slot("bar"), 5061);
  assert_int_equal(slot("hello"), 866);
  assert_int_equal(slot(""), 0);
}

static void test_slot_of_a_hash_tag_is_the_tag_s(void **state) {
  (void)state;
  /* Every gracefuld key carries the counter's name as its tag. */
  assert_int_equal(slot("gracefuld:{counter}:fences"), slot("counter"));
  assert_int_equal(slot("{foo}.x"), 12182);
  /* The first { and the next }: an empty tag hashes the whole key. */
  assert_int_equal(slot("{}foo"), redis_key_slot("{}foo", 5));
  assert_int_equal(slot("a{{b}}"), slot("{b"));
  assert_int_equal(slot("no{close"), redis_key_slot("no{close", 8));
  /* A counter with a tag of its own lends it to gracefuld's keys. */
  assert_int_equal(slot("p{b}:fences"), slot("a{b}c"));
}

static bool ask(const char *msg, char *ip, uint16_t *port) {
  return redis_slot_parse_ask(msg, strlen(msg), ip, 64, port);
}

static void test_ask_names_the_node_to_ask(void **state) {
  (void)state;
  char ip[64];
  uint16_t port = 0;
  assert_true(ask("ASK 3999 127.0.0.1:6381", ip, &port));
  assert_string_equal(ip, "127.0.0.1");
  assert_int_equal(port, 6381);
  /* IPv6: the port after the last colon. */
  assert_true(ask("ASK 1 ::1:7000", ip, &port));
  assert_string_equal(ip, "::1");
  assert_int_equal(port, 7000);
  /* Not an ASK, or no usable address: nothing to follow. */
  assert_false(ask("MOVED 3999 127.0.0.1:6381", ip, &port));
  assert_false(ask("ASK 3999", ip, &port));
  assert_false(ask("ASK 3999 127.0.0.1", ip, &port));
  assert_false(ask("ASK 3999 127.0.0.1:0", ip, &port));
  assert_false(ask("ASK 3999 127.0.0.1:70000", ip, &port));
  assert_false(ask("ASK 3999 :6381", ip, &port));
  /* A host name (cluster-preferred-endpoint-type hostname) is not
   * followed: the redirect would need a resolver of its own. */
  assert_false(ask("ASK 3999 redis-2.example:6381", ip, &port));
}

static bool safe(const char *cmd) {
  return redis_slot_asking_safe(cmd, strlen(cmd));
}

static void test_only_scripts_of_several_keys_follow_asking(void **state) {
  (void)state;
  assert_true(safe("*5\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n2\r\n"
                   "$1\r\na\r\n$1\r\nb\r\n"));
  assert_true(safe("*5\r\n$4\r\neval\r\n$6\r\nreturn\r\n$2\r\n12\r\n"
                   "$1\r\na\r\n$1\r\nb\r\n"));
  assert_true(safe("*5\r\n$5\r\nFCALL\r\n$1\r\nf\r\n$1\r\n2\r\n"
                   "$1\r\na\r\n$1\r\nb\r\n"));
  /* One key would be made on the importing node: refused there, as are
   * commands that are not scripts and anything malformed. */
  assert_false(safe("*4\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n"
                    "$1\r\na\r\n"));
  assert_false(safe("*3\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n0\r\n"));
  assert_false(safe("*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n100\r\n"));
  assert_false(safe("*3\r\n$6\r\nINCRBY\r\n$1\r\na\r\n$1\r\n2\r\n"));
  assert_false(safe("*5\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\nx\r\n"));
  assert_false(safe("*5\r\n$7\r\nEVALSHA\r\n$30\r\nabc\r\n$1\r\n2\r\n"));
  assert_false(safe(""));
  assert_false(safe("PING\r\n"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_slot_is_crc16_of_the_key),
      cmocka_unit_test(test_slot_of_a_hash_tag_is_the_tag_s),
      cmocka_unit_test(test_ask_names_the_node_to_ask),
      cmocka_unit_test(test_only_scripts_of_several_keys_follow_asking),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
