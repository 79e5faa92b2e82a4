/* What the link's handshake learns of the server it connected to, before
 * anything is counted on it: its version (INFO server) and whether its
 * eviction policy may evict any key (CONFIG GET maxmemory-policy). Pure,
 * so that the unit tests judge every wording. */
#ifndef GRACEFULD_REDIS_SERVER_H
#define GRACEFULD_REDIS_SERVER_H

#include <stdbool.h>
#include <stddef.h>

/* The oldest major version counted on: the scripts' error wordings and
 * the ACL commands are those of Redis 6.0 and later (Valkey reports a
 * Redis version too). */
#define REDIS_SERVER_MIN_MAJOR 6

/* The redis_version line of an INFO reply (len bytes at info): copied into
 * version (cap bytes, NUL-terminated) and its major number into *major;
 * false when the reply says none, or the number is not one. */
bool redis_server_version(const char *info, size_t len, char *version,
                          size_t cap, unsigned *major);

/* Whether a maxmemory-policy may evict keys without a TTL: allkeys-*. */
bool redis_server_evicts_any_key(const char *policy, size_t len);

/* Whether a string value is one INCRBY counts on: an optional '-' and
 * digits (what the scripts' incrementable() accepts). */
bool redis_server_is_integer(const char *s, size_t len);

#endif
