/* The HTTP side: the listener, each connection from accept to close, keep-
 * alive, and the drain of connections at shutdown.
 *
 * Each connection owns a read buffer and a write buffer. Requests are taken
 * from the read buffer one at a time (pipelining in order) and their
 * responses gathered in the write buffer, which goes out with one
 * uv_try_write (or uv_write when the socket is full, during which the
 * connection stops reading). Its lifecycle is the state machine of conn.h.
 * Each connection has its own timer (libuv keeps timers in a min-heap, so a
 * deadline costs O(log n)): the header timeout of each request, the idle
 * timeout, a write that makes no progress, and the linger after our FIN. */
#ifndef GRACEFULD_SERVER_H
#define GRACEFULD_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "http/http.h"

struct server;
/* Fills resp for a complete request, or (req NULL) for one that failed with
 * error_status. A body_owned body is freed once written. */
typedef void (*server_respond_cb)(struct server *srv,
                                  const struct http_request *req,
                                  uint16_t error_status,
                                  struct http_response *resp);
/* Draining is over: the listener and every connection are closed. */
typedef void (*server_drained_cb)(struct server *srv);

enum server_mode {
  SERVER_KEEP_ALIVE, /* running */
  SERVER_CLOSE_EACH, /* delaying: each connection closes after what it sent */
  SERVER_DRAINING,   /* no new handshakes; close each once it is answered */
  SERVER_CLOSED,
};

struct conn;

/* The server's own counts, which /metrics reads. */
struct server_stats {
  uint64_t accepted; /* connections accepted, those then rejected included */
  uint64_t rejected; /* closed at once: past MAX_CONNECTIONS, or no memory */
  uint64_t open;     /* open now, those closing included */
};

struct server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  uv_timer_t grace_timer; /* draining: the last handshakes complete */
  const struct config *cfg;
  struct server_stats stats;
  struct http_limits limits;
  server_respond_cb respond;
  server_drained_cb on_drained;
  struct conn *conns; /* every open connection, in a list */
  struct conn *held; /* connections holding a response, oldest first */
  struct conn *held_last;
  enum server_mode mode;
  bool listener_open;
  bool drained_reported;
  uint64_t accept_error_logged; /* uv_now of the last accept error line */
  uv_tcp_t spare;               /* sheds a connection when memory runs out */
  bool spare_busy;              /* spare is closing */
  bool accept_waiting;          /* a connection waits for spare */
};

void server_init(struct server *srv, uv_loop_t *loop, const struct config *cfg,
                 server_respond_cb respond,
                 server_drained_cb on_drained);

/* Binds and listens on cfg->listen_addr. Returns 0 or a negative UV_E*. */
int server_listen(struct server *srv);

/* Delaying: keep serving, but close every connection after its response. */
void server_close_each(struct server *srv);

/* Draining: stop new handshakes, accept those already complete, then close
 * the listener; close idle connections, answer the requests already
 * received (the last with Connection: close), and call on_drained when the
 * last connection is gone. */
void server_drain(struct server *srv);

/* Fills in resp (which must own nothing) as the response of every
 * connection holding one with ticket: each goes on, in pipeline order, as
 * if its handler had answered at once. Returns how many were filled (those
 * whose client went away meanwhile are not). */
uint64_t server_fill(struct server *srv, uint64_t ticket,
                     const struct http_response *resp);

/* Closes the listener, the timer and every connection at once. */
void server_close(struct server *srv);

#endif
