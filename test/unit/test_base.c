/* base_parse_u64: the one decimal parser behind settings, Redis URLs and
 * the journal's deadlines. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include <uv.h>

#include "base.h"

static int parse(const char *v, uint64_t max, uint64_t *out) {
  return base_parse_u64(v, strlen(v), max, out);
}

static void test_parse_u64_reads_digits_up_to_max(void **state) {
  (void)state;
  uint64_t x = 7;
  assert_int_equal(parse("0", 10, &x), 0);
  assert_int_equal(x, 0);
  assert_int_equal(parse("10", 10, &x), 0);
  assert_int_equal(x, 10);
  assert_int_equal(parse("0065535", 65535, &x), 0);
  assert_int_equal(x, 65535);
  assert_int_equal(parse("18446744073709551615", UINT64_MAX, &x), 0);
  assert_true(x == UINT64_MAX);
}

static void test_parse_u64_refuses_past_max_as_range(void **state) {
  (void)state;
  uint64_t x = 7;
  assert_int_equal(parse("11", 10, &x), UV_ERANGE);
  assert_int_equal(parse("65536", 65535, &x), UV_ERANGE);
  assert_int_equal(parse("2147483648", 2147483647u, &x), UV_ERANGE);
  assert_int_equal(parse("18446744073709551616", UINT64_MAX, &x), UV_ERANGE);
  assert_int_equal(parse("99999999999999999999999", UINT64_MAX, &x), UV_ERANGE);
  assert_int_equal(parse("1", 0, &x), UV_ERANGE);
  /* The first wrong byte decides. */
  assert_int_equal(parse("99999999999999999999999x", UINT64_MAX, &x),
                   UV_ERANGE);
  assert_int_equal(x, 7); /* untouched on error */
}

static void test_parse_u64_refuses_anything_but_digits(void **state) {
  (void)state;
  uint64_t x = 7;
  assert_int_equal(parse("", UINT64_MAX, &x), UV_EINVAL);
  assert_int_equal(parse(" 1", UINT64_MAX, &x), UV_EINVAL);
  assert_int_equal(parse("1 ", UINT64_MAX, &x), UV_EINVAL);
  assert_int_equal(parse("+1", UINT64_MAX, &x), UV_EINVAL);
  assert_int_equal(parse("-1", UINT64_MAX, &x), UV_EINVAL);
  assert_int_equal(parse("0x10", UINT64_MAX, &x), UV_EINVAL);
  assert_int_equal(parse("12a", UINT64_MAX, &x), UV_EINVAL);
  assert_int_equal(parse("5000000000000x", 86400000, &x), UV_ERANGE);
  assert_int_equal(x, 7);
}

static void test_parse_u64_reads_only_the_n_bytes_given(void **state) {
  (void)state;
  uint64_t x = 7;
  assert_int_equal(base_parse_u64("6379/0", 4, 65535, &x), 0);
  assert_int_equal(x, 6379);
  assert_int_equal(base_parse_u64("12", 0, 65535, &x), UV_EINVAL);
  assert_int_equal(x, 6379);
}

static void expect_format(uint64_t v, const char *text) {
  char out[BASE_U64_DIGITS + 1];
  memset(out, 'x', sizeof out);
  size_t n = base_format_u64(out, v);
  assert_int_equal(n, strlen(text));
  assert_memory_equal(out, text, n);
  assert_int_equal(out[n], 'x'); /* nothing written past the digits */
}

static void test_format_u64_writes_the_digits_only(void **state) {
  (void)state;
  expect_format(0, "0");
  expect_format(7, "7");
  expect_format(10, "10");
  expect_format(4096, "4096");
  expect_format(1000000007, "1000000007");
  expect_format(UINT64_MAX, "18446744073709551615");
  /* What it writes base_parse_u64 reads back. */
  char out[BASE_U64_DIGITS];
  uint64_t back = 0;
  for (uint64_t v = 1; v < UINT64_MAX / 3; v = v * 3 + 1) {
    assert_int_equal(
        base_parse_u64(out, base_format_u64(out, v), UINT64_MAX, &back), 0);
    assert_int_equal(back, v);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_u64_reads_digits_up_to_max),
      cmocka_unit_test(test_parse_u64_refuses_past_max_as_range),
      cmocka_unit_test(test_parse_u64_refuses_anything_but_digits),
      cmocka_unit_test(test_parse_u64_reads_only_the_n_bytes_given),
      cmocka_unit_test(test_format_u64_writes_the_digits_only),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
