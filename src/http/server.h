/* The HTTP side: the listener, accepting (and refusing past
 * max_connections), keep-alive, and the drain of connections at shutdown.
 * Each connection, from accept to close, is a struct conn (conn_io.h),
 * whose lifecycle is the state machine of conn.h. */
#ifndef GRACEFULD_SERVER_H
#define GRACEFULD_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "http/http.h"
#include "http/list.h"

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

/* What the server is told at init; the server keeps its own copy. */
struct server_options {
  struct sockaddr_storage listen_addr;
  uint64_t max_connections;   /* open at once; past it, 503 and close */
  uint64_t header_timeout_ms; /* for each request's head, from its start */
  uint64_t idle_timeout_ms;   /* between requests; a write without progress */
  struct http_limits limits;
};

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
  struct server_options opts;
  struct server_stats stats;
  server_respond_cb respond;
  server_drained_cb on_drained;
  struct list conns; /* every open connection, oldest first */
  /* An index of the connections that hold a response (conn_holds), oldest
   * first, to find them by ticket; conn_io.c keeps it in step with their
   * states. */
  struct list held;
  enum server_mode mode;
  bool listener_open;
  bool drained_reported;
  uint64_t accept_error_logged; /* uv_now of the last accept error line */
  uv_tcp_t spare;               /* sheds a connection when memory runs out */
  bool spare_busy;              /* spare is closing */
  bool accept_waiting;          /* a connection waits for spare */
  /* The 503 a connection past max_connections gets, formatted once. */
  char busy_reply[HTTP_HEAD_MAX + 32];
  size_t busy_reply_len;
};

/* Copies opts. */
void server_init(struct server *srv, uv_loop_t *loop,
                 const struct server_options *opts, server_respond_cb respond,
                 server_drained_cb on_drained);

/* Binds and listens on opts.listen_addr. Returns 0 or a negative UV_E*. */
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

/* For the connections (conn_io.c), not the app: c, whose handles are
 * closed, leaves the server's list; it is freed after. Draining, the last
 * to go ends the drain. */
void server_conn_gone(struct server *srv, struct conn *c);

#endif
