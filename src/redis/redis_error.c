#include "redis/redis_error.h"

#include <stdbool.h>
#include <string.h>

/* msg starts with word, followed by a space or nothing. */
static int first_word_is(const char *msg, size_t len, const char *word) {
  size_t n = strlen(word);
  return len >= n && memcmp(msg, word, n) == 0 && (len == n || msg[n] == ' ');
}

/* Redis 6 wraps an error raised inside a script as
 * "ERR Error running script (call to f_<sha>): @user_script:<line>: <error>";
 * Redis 7 passes the error on with its own code, adding " script: ..." at
 * the end. Returns where the script's own error starts, or NULL. */
static const char *script_error(const char *msg, size_t len, size_t *rest) {
  static const char wrapped[] = "ERR Error running script";
  static const char at[] = "@user_script:";
  const size_t at_len = sizeof at - 1;
  size_t j = sizeof wrapped - 1;
  if (len < j || memcmp(msg, wrapped, j) != 0)
    return NULL;
  bool found = false;
  /* Past each "@user_script:<line>: " (Redis 6.0 writes two). */
  for (size_t i = j; i + at_len <= len; i++) {
    if (memcmp(msg + i, at, at_len) != 0)
      continue;
    found = true;
    j = i + at_len;
    while (j < len &&
           (msg[j] == ' ' || msg[j] == ':' || (msg[j] >= '0' && msg[j] <= '9')))
      j++;
    i = j - 1;
  }
  if (!found)
    return NULL;
  if (j < len && msg[j] == '-') /* raised by redis.call, as Redis sent it */
    j++;
  *rest = len - j;
  return msg + j;
}

enum redis_error_class redis_error_classify(const char *msg, size_t len) {
  /* A fresh connection (to another server, perhaps) can take it: this one
   * is not authenticated, is loading, is a replica, has lost its master, or
   * no longer owns the slot (MOVED: the next connection asks the cluster
   * where it went). */
  static const char *const reconnect[] = {"NOAUTH", "LOADING", "READONLY",
                                          "MASTERDOWN", "MOVED"};
  /* Redis will take it again, later: it is busy, full, cannot persist, has
   * too few replicas, or its cluster is moving or down (ASK: the slot is
   * migrating and this command's keys are gone, or going, to the importing
   * node; nothing ran, and once the slot has moved the retry gets MOVED). */
  static const char *const retry[] = {
      "TRYAGAIN", "BUSY", "OOM", "MISCONF", "NOREPLICAS", "CLUSTERDOWN", "ASK"};
  size_t inner_len;
  const char *inner = script_error(msg, len, &inner_len);
  if (inner) {
    msg = inner;
    len = inner_len;
  }
  for (size_t i = 0; i < sizeof reconnect / sizeof reconnect[0]; i++)
    if (first_word_is(msg, len, reconnect[i]))
      return REDIS_ERROR_RECONNECT;
  for (size_t i = 0; i < sizeof retry / sizeof retry[0]; i++)
    if (first_word_is(msg, len, retry[i]))
      return REDIS_ERROR_RETRY;
  return REDIS_ERROR_PERMANENT;
}

int redis_error_refuses_keys(const char *msg, size_t len) {
  return first_word_is(msg, len, "WRONGTYPE") ||
         first_word_is(msg, len, "NOPERM");
}

int redis_error_is_auth(const char *msg, size_t len) {
  static const char old_auth[] = "ERR invalid password";
  return first_word_is(msg, len, "WRONGPASS") ||
         first_word_is(msg, len, "NOAUTH") ||
         (len >= sizeof old_auth - 1 &&
          memcmp(msg, old_auth, sizeof old_auth - 1) == 0);
}
