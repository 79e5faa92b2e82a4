#include "redis/redis_error.h"

#include <string.h>

/* msg starts with word, followed by a space or nothing. */
static int first_word_is(const char *msg, size_t len, const char *word) {
  size_t n = strlen(word);
  return len >= n && memcmp(msg, word, n) == 0 && (len == n || msg[n] == ' ');
}

enum redis_error_class redis_error_classify(const char *msg, size_t len) {
  static const char *const reconnect[] = {"NOAUTH", "LOADING", "READONLY",
                                          "MASTERDOWN"};
  static const char *const retry[] = {"TRYAGAIN", "BUSY", "OOM"};
  for (size_t i = 0; i < sizeof reconnect / sizeof reconnect[0]; i++)
    if (first_word_is(msg, len, reconnect[i]))
      return REDIS_ERROR_RECONNECT;
  for (size_t i = 0; i < sizeof retry / sizeof retry[0]; i++)
    if (first_word_is(msg, len, retry[i]))
      return REDIS_ERROR_RETRY;
  return REDIS_ERROR_PERMANENT;
}

int redis_error_is_auth(const char *msg, size_t len) {
  static const char old_auth[] = "ERR invalid password";
  return first_word_is(msg, len, "WRONGPASS") ||
         first_word_is(msg, len, "NOAUTH") ||
         (len >= sizeof old_auth - 1 &&
          memcmp(msg, old_auth, sizeof old_auth - 1) == 0);
}
