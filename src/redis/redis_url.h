/* Where Redis is and how to log in to it: the REDIS_URL forms
 *
 *   redis://[[user][:password]@]host[:port][/db]
 *   rediss://[[user][:password]@]host[:port][/db]     (TLS)
 *   unix://[[user][:password]@]/path/to/redis.sock[?db=N]
 *
 * parsed into a struct redis_target, and the one way a target is written
 * into a log line (with the password as ***). Pure functions: no sockets,
 * no allocation. */
#ifndef GRACEFULD_REDIS_URL_H
#define GRACEFULD_REDIS_URL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REDIS_HOST_MAX 256
#define REDIS_SOCKET_MAX 108 /* sun_path */
#define REDIS_USER_MAX 256
#define REDIS_PASSWORD_MAX 512
#define REDIS_DB_MAX 2147483647u
#define REDIS_DEFAULT_PORT 6379
#define REDIS_SENTINEL_PORT 26379
#define REDIS_SENTINELS_MAX 8

enum redis_transport { REDIS_TCP, REDIS_UNIX };

struct redis_target {
  enum redis_transport transport;
  char host[REDIS_HOST_MAX]; /* REDIS_TCP: an IP literal or a host name */
  uint16_t port;
  bool tls;                    /* REDIS_TCP: rediss://, never plain text */
  char path[REDIS_SOCKET_MAX]; /* REDIS_UNIX */
  char user[REDIS_USER_MAX];   /* empty: AUTH with the password alone */
  char password[REDIS_PASSWORD_MAX];
  bool has_password; /* an empty password is still sent */
  uint32_t db;
};

/* A Sentinel to ask where the master is. */
struct redis_sentinel {
  char host[REDIS_HOST_MAX]; /* an IP literal or a host name */
  uint16_t port;
};

/* Parses url into *t (user, password and db included; fields the URL does
 * not give are zero, the port 6379). Returns 0, or UV_EINVAL with *why set
 * to a static message that never quotes the URL (it may hold a password). */
int redis_url_parse(const char *url, struct redis_target *t, const char **why);

/* Copies url into out (cap bytes, always terminated) with whatever could be
 * a password shown as ***: for quoting a URL that failed to parse. */
void redis_url_redact(const char *url, char *out, size_t cap);

/* Writes t as a log line shows it: host:port, or redis://user:***@host:port/db
 * when it has credentials or a database (rediss://... with TLS), or
 * unix:///path?db=N. Returns the length (snprintf's). */
int redis_target_format(const struct redis_target *t, char *out, size_t cap);

/* Splits the n bytes at v, "host:port" or "[v6]:port", into host (without
 * brackets, terminated, host_len bytes at most) and port (0 to 65535). With
 * no ":port", *port is default_port, or an error when that is 0. Returns
 * NULL or a static reason. */
const char *redis_split_host_port(const char *v, size_t n, char *host,
                                  size_t host_len, uint16_t default_port,
                                  uint16_t *port);

/* A host name (letters, digits, '-', '.', '_') or an IPv6 literal. */
bool redis_host_valid(const char *host);

#endif
