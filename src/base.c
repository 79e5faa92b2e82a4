#include "base.h"

#include <string.h>

#include <uv.h>

int base_parse_u64(const char *v, size_t n, uint64_t max, uint64_t *out) {
  uint64_t x = 0;
  if (n == 0)
    return UV_EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9')
      return UV_EINVAL;
    unsigned d = (unsigned)(v[i] - '0');
    /* x * 10 + d > max, asked without overflowing. */
    if (d > max || x > (max - d) / 10)
      return UV_ERANGE;
    x = x * 10 + d;
  }
  *out = x;
  return 0;
}

size_t base_format_u64(char *out, uint64_t v) {
  char digits[BASE_U64_DIGITS];
  size_t n = 0;
  do {
    digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  memcpy(out, digits + sizeof digits - n, n);
  return n;
}
