/* What an error reply from Redis means for the command that got it: one
 * pure function, so that every command the link sends (a batch script,
 * a journal write, a WAIT) is judged the same way. */
#ifndef GRACEFULD_REDIS_ERROR_H
#define GRACEFULD_REDIS_ERROR_H

#include <stddef.h>

enum redis_error_class {
  /* Send it again on a fresh connection, after a backoff: this connection,
   * or the server behind it, cannot take it now (NOAUTH: Redis restarted
   * with a password; LOADING; READONLY: a demoted master; MASTERDOWN;
   * MOVED: the slot has another owner). */
  REDIS_ERROR_RECONNECT,
  /* Send it again after a backoff; the server refuses for now (TRYAGAIN,
   * BUSY: a script runs; OOM: maxmemory; MISCONF: a snapshot failed;
   * NOREPLICAS: min-replicas-to-write; CLUSTERDOWN; ASK: the slot is
   * migrating). */
  REDIS_ERROR_RETRY,
  /* No retry can fix it (WRONGTYPE, ERR, NOPERM, ...): count it failed. */
  REDIS_ERROR_PERMANENT,
};

/* Classifies an error reply by its first word (len bytes at msg, as hiredis
 * gives them, without the leading '-'); an error raised inside a script,
 * which Redis 6 wraps in "ERR Error running script ...", by the script's
 * own error. */
enum redis_error_class redis_error_classify(const char *msg, size_t len);

/* Whether the error is one of wrong or missing credentials (WRONGPASS,
 * NOAUTH, and the ERR Redis before 6 answers to a bad AUTH). */
int redis_error_is_auth(const char *msg, size_t len);

/* Whether the error says a key cannot be used as it is, whatever the
 * retries (WRONGTYPE; NOPERM: the ACL user may not touch it). */
int redis_error_refuses_keys(const char *msg, size_t len);

#endif
