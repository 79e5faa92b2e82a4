#include "redis/redis_slot.h"

#include <string.h>

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
