/* The HTTP side: the listener, each connection from accept to close, keep-
 * alive, and the drain of connections at shutdown.
 *
 * Each connection owns a read buffer and a write buffer. Requests are taken
 * from the read buffer one at a time (pipelining in order) and their
 * responses gathered in the write buffer, which goes out with one
 * uv_try_write (or uv_write when the socket is full, during which the
 * connection stops reading). One timer serves every connection's deadline:
 * the header timeout, the idle timeout, a stalled write, and the linger
 * after a half-close. */
#ifndef GRACEFULD_SERVER_H
#define GRACEFULD_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "http.h"
#include "metrics.h"

struct server_handler {
  /* Fills resp for a complete request, or (req NULL) for one that failed
   * with error_status. A body_owned body is freed once written. */
  void (*respond)(void *data, const struct http_request *req,
                  uint16_t error_status, struct http_response *resp);
  /* Draining is over: the listener and every connection are closed. */
  void (*on_drained)(void *data);
};

enum server_mode {
  SERVER_KEEP_ALIVE, /* running */
  SERVER_CLOSE_EACH, /* delaying: every response closes its connection */
  SERVER_DRAINING,   /* no new connections; close each once it is idle */
  SERVER_CLOSED,
};

struct conn;

struct server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  uv_timer_t timer; /* the earliest connection deadline */
  uint64_t timer_due;
  const struct config *cfg;
  struct metrics *metrics;
  struct http_limits limits;
  struct server_handler handler;
  void *data;
  struct conn *conns; /* every open connection, in a list */
  uint64_t open;
  enum server_mode mode;
  bool listener_open;
  bool drained_reported;
  uint64_t accept_error_logged; /* uv_now of the last accept error line */
  uv_tcp_t spare;               /* sheds a connection when memory runs out */
  bool spare_busy;              /* spare is closing */
  bool accept_waiting;          /* a connection waits for spare */
};

void server_init(struct server *srv, uv_loop_t *loop, const struct config *cfg,
                 struct metrics *metrics, struct server_handler handler,
                 void *data);

/* Binds and listens on cfg->listen_addr. Returns 0 or a negative UV_E*. */
int server_listen(struct server *srv);

/* Delaying: keep serving, but close every connection after its response. */
void server_close_each(struct server *srv);

/* Draining: close the listener at once, half-close idle connections, let
 * requests already received be answered (with Connection: close), and call
 * on_drained when the last connection is gone. */
void server_drain(struct server *srv);

/* Closes the listener, the timer and every connection at once. */
void server_close(struct server *srv);

#endif
