/* One connection to a Redis server or a Sentinel, on the loop: a libuv
 * stream (TCP, or a unix socket), TLS over TCP through OpenSSL's memory
 * BIOs when asked (redis_tls.h), and hiredis's reader and command
 * formatter for the protocol. One code path carries every connection.
 *
 * Commands are sent with a callback and get their replies in order; a
 * reply lives only for the duration of its callback. Commands sent in one
 * turn of the loop go out in one write, just before the loop next waits.
 * Nothing blocks: the connect and the TLS handshake run on the loop, and
 * their time is the caller's to bound (redis_conn_free).
 *
 * As with hiredis's async context, a connection cannot be destroyed under
 * its own feet: redis_conn_free or a disconnect asked for from inside one
 * of its callbacks takes effect when that callback returns. */
#ifndef GRACEFULD_REDIS_CONN_H
#define GRACEFULD_REDIS_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "redis/redis_tls.h"

struct redis_conn;

/* The reply to a command; NULL: lost with its connection. */
typedef void redis_conn_reply_fn(struct redis_conn *conn, redisReply *reply,
                                 void *privdata);

struct redis_conn_handlers {
  /* err NULL: connected (TLS handshake done) and commands may be sent.
   * Else why the connect failed; the connection is gone once this returns
   * (no on_disconnect follows). */
  void (*on_connect)(struct redis_conn *conn, const char *err);
  /* A connection that was up is gone; every reply it owed has come as
   * NULL just before. err: why, or NULL after redis_conn_disconnect or
   * redis_conn_free. The connection is freed when this returns. */
  void (*on_disconnect)(struct redis_conn *conn, const char *err);
};

/* Where to connect. */
struct redis_conn_target {
  const char *ip; /* TCP: an IPv4 or IPv6 literal, and port */
  uint16_t port;
  const char *path; /* else: a unix socket */
  /* TCP only: TLS with this context (NULL: plain text), verifying host (the
   * name asked for, before it was resolved to ip). */
  const struct redis_tls *tls;
  const char *host;
};

/* Starts connecting; handlers (which must outlive the connection) and data
 * are given back through redis_conn_data. Returns 0 with *out set, the
 * outcome to come to on_connect; or a UV_E* error, with no callback and
 * nothing to free. */
int redis_conn_open(uv_loop_t *loop, const struct redis_conn_target *target,
                    const struct redis_conn_handlers *handlers, void *data,
                    struct redis_conn **out);

void *redis_conn_data(const struct redis_conn *conn);

/* "tcp", "tls" or "unix": how this connection carries its bytes. */
const char *redis_conn_transport(const struct redis_conn *conn);

/* Queues cmd (len bytes, Redis protocol; copied), its reply to fn with
 * privdata. Returns 0; UV_ENOTCONN before on_connect said it was up, or
 * after a disconnect was asked for; UV_ENOMEM. */
int redis_conn_send(struct redis_conn *conn, redis_conn_reply_fn *fn,
                    void *privdata, const char *cmd, size_t len);

/* As redis_conn_send, for argc strings (none holding a NUL). */
int redis_conn_send_argv(struct redis_conn *conn, redis_conn_reply_fn *fn,
                         void *privdata, int argc, const char **argv);

/* Takes no more commands; once every reply owed is in, closes (TLS: after
 * a close_notify) and calls on_disconnect(NULL). Before the connection is
 * up, the same as redis_conn_free. */
void redis_conn_disconnect(struct redis_conn *conn);

/* Closes now: every reply owed comes as NULL, then on_disconnect(NULL), if
 * the connection was up; before that, no callback at all. */
void redis_conn_free(struct redis_conn *conn);

#endif
