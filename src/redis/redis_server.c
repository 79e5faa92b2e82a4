#include "redis/redis_server.h"

#include <stdio.h>
#include <string.h>

#include "base.h"

bool redis_server_version(const char *info, size_t len, char *version,
                          size_t cap, unsigned *major) {
  static const char key[] = "redis_version:";
  const size_t klen = sizeof key - 1;
  for (size_t i = 0; i + klen <= len; i++) {
    /* At the start of a line only. */
    if ((i > 0 && info[i - 1] != '\n') || memcmp(info + i, key, klen) != 0)
      continue;
    const char *v = info + i + klen;
    size_t vlen = 0;
    while (v + vlen < info + len && v[vlen] != '\r' && v[vlen] != '\n')
      vlen++;
    size_t digits = 0;
    while (digits < vlen && v[digits] >= '0' && v[digits] <= '9')
      digits++;
    uint64_t m;
    if (digits == 0 || base_parse_u64(v, digits, 100000, &m) != 0)
      return false;
    snprintf(version, cap, "%.*s", (int)vlen, v);
    *major = (unsigned)m;
    return true;
  }
  return false;
}

bool redis_server_is_integer(const char *s, size_t len) {
  size_t i = len > 0 && s[0] == '-';
  if (i == len)
    return false;
  for (; i < len; i++)
    if (s[i] < '0' || s[i] > '9')
      return false;
  return true;
}

bool redis_server_evicts_any_key(const char *policy, size_t len) {
  return len >= 8 && memcmp(policy, "allkeys-", 8) == 0;
}
