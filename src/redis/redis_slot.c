#include "redis/redis_slot.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

#include "base.h"

/* CRC16-CCITT (XModem): polynomial 0x1021, initial value 0, bit by bit;
 * a key is hashed once per connection, not per command. */
static uint16_t crc16(const char *p, size_t len) {
  uint16_t crc = 0;
  for (size_t i = 0; i < len; i++) {
    crc ^= (uint16_t)((unsigned char)p[i] << 8);
    for (int b = 0; b < 8; b++)
      crc = crc & 0x8000 ? (uint16_t)(crc << 1 ^ 0x1021) : (uint16_t)(crc << 1);
  }
  return crc;
}

uint16_t redis_key_slot(const char *key, size_t len) {
  const char *open = memchr(key, '{', len);
  if (open) {
    size_t rest = len - (size_t)(open + 1 - key);
    const char *close = memchr(open + 1, '}', rest);
    if (close && close > open + 1)
      return crc16(open + 1, (size_t)(close - open - 1)) % REDIS_SLOTS;
  }
  return crc16(key, len) % REDIS_SLOTS;
}

bool redis_slot_parse_ask(const char *msg, size_t len, char *ip, size_t cap,
                          uint16_t *port) {
  if (len < 4 || memcmp(msg, "ASK ", 4) != 0)
    return false;
  const char *addr = memchr(msg + 4, ' ', len - 4);
  if (!addr)
    return false;
  addr++;
  size_t n = len - (size_t)(addr - msg);
  const char *colon = NULL;
  for (const char *p = addr; p < addr + n; p++)
    if (*p == ':')
      colon = p;
  if (!colon || colon == addr || (size_t)(colon - addr) >= cap)
    return false;
  uint64_t value = 0;
  if (base_parse_u64(colon + 1, (size_t)(addr + n - colon - 1), 65535,
                     &value) != 0 ||
      value == 0)
    return false;
  char host[64];
  if ((size_t)(colon - addr) >= sizeof host)
    return false;
  memcpy(host, addr, (size_t)(colon - addr));
  host[colon - addr] = '\0';
  unsigned char bin[16];
  if (inet_pton(AF_INET, host, bin) != 1 && inet_pton(AF_INET6, host, bin) != 1)
    return false;
  memcpy(ip, host, (size_t)(colon - addr) + 1);
  *port = (uint16_t)value;
  return true;
}

/* The next bulk string of a command in Redis protocol ("$<n>\r\n<n
 * bytes>\r\n") from *at: its bytes and length, *at moved past it; false
 * when there is none. */
static bool next_bulk(const char **at, const char *end, const char **s,
                      size_t *n) {
  const char *p = *at;
  if (p >= end || *p != '$')
    return false;
  const char *crlf = memchr(p, '\r', (size_t)(end - p));
  uint64_t len = 0;
  if (!crlf ||
      base_parse_u64(p + 1, (size_t)(crlf - p - 1), UINT32_MAX, &len) != 0 ||
      (size_t)(end - crlf) < len + 4)
    return false;
  *s = crlf + 2;
  *n = (size_t)len;
  *at = crlf + 2 + len + 2;
  return true;
}

static bool word_is(const char *s, size_t n, const char *word) {
  return n == strlen(word) && strncasecmp(s, word, n) == 0;
}

bool redis_slot_asking_safe(const char *cmd, size_t len) {
  const char *at = cmd, *end = cmd + len;
  const char *crlf = memchr(at, '\r', len);
  if (len == 0 || *at != '*' || !crlf)
    return false;
  at = crlf + 2;
  const char *name, *body, *numkeys;
  size_t name_n, body_n, numkeys_n;
  if (!next_bulk(&at, end, &name, &name_n) ||
      !(word_is(name, name_n, "EVAL") || word_is(name, name_n, "EVALSHA") ||
        word_is(name, name_n, "FCALL")) ||
      !next_bulk(&at, end, &body, &body_n) ||
      !next_bulk(&at, end, &numkeys, &numkeys_n))
    return false;
  uint64_t keys = 0;
  return base_parse_u64(numkeys, numkeys_n, UINT32_MAX, &keys) == 0 &&
         keys >= 2;
}
