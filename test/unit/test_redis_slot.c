/* Redis Cluster's hash slot of a key: CRC16 of the key or of its hash tag,
 * as Redis computes it (the values are CLUSTER KEYSLOT's). */
#include <stdarg.h>
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_slot_is_crc16_of_the_key),
      cmocka_unit_test(test_slot_of_a_hash_tag_is_the_tag_s),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
