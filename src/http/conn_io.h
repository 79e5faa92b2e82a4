/* One HTTP connection on its socket, from accept to close: it performs on
 * the socket each step conn.h decides (reading, writing, its timer, holding
 * a response and filling it in), parses requests with http.h and asks the
 * server's respond callback for each answer. The server (server.c) accepts
 * it, keeps it in its list and counts it.
 *
 * Each connection owns a read buffer and a write buffer, from the first
 * byte its client sends until it closes. Requests are taken
 * from the read buffer one at a time (pipelining in order) and their
 * responses gathered in the write buffer, which goes out with one
 * uv_try_write (or uv_write when the socket is full, during which the
 * connection stops reading). Each connection has its own timer (libuv keeps
 * timers in a min-heap, so a deadline costs O(log n)): the header timeout
 * of each request, the idle timeout, a write that makes no progress, and
 * the linger after our FIN. A deadline of a second or more is rounded up
 * to a slot of at most 16 ms, so that connections opened within one slot
 * time out in one loop turn. A deadline moved later (the idle timeout,
 * after each request) leaves the timer where it is until it fires. */
#ifndef GRACEFULD_CONN_IO_H
#define GRACEFULD_CONN_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "http/conn.h"
#include "http/http.h"
#include "http/list.h"
#include "http/server.h"

#define CONN_RBUF 4096
#define CONN_WBUF 4096

/* What a connection needs once its client has sent a byte: taken then,
 * freed at its close, so that a connection that never sends (a health
 * checker, a scanner, a keep-alive connection opened ahead) costs only its
 * struct conn. */
struct conn_work {
  struct http_parser http;
  uv_write_t write_req; /* data: the connection */
  uv_shutdown_t shutdown_req;
  struct http_response filled; /* writing filled: to queue after the write */
  char rbuf[CONN_RBUF];
  char wbuf[CONN_WBUF];
};

struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer;    /* this connection's one deadline */
  struct conn_work *w; /* NULL until the client's first byte */
  struct server *srv;
  struct list_link in_server; /* the server's list of connections */
  struct list_link in_held;   /* the server's index of those holding */
  uint64_t ticket;            /* holding: the held response's */
  struct conn_life life;
  uint8_t handles;        /* tcp and timer until both are closed */
  uint32_t closing_bytes; /* read since the server began closing */
  uint32_t answered;      /* responses queued */
  uint32_t header_for;    /* the request whose header timeout is armed */
  size_t unsent;          /* bytes the client had not taken, last check */
  uint64_t moved;         /* uv_now when the last of them moved */
  uint64_t linger_from;   /* uv_now when the client had taken everything */
  uint64_t due;           /* uv_now of the deadline; the timer may be earlier */
  uint32_t rpos;          /* rbuf[rpos, rlen) is not parsed yet */
  uint32_t rlen;
  uint32_t wlen;
  char *extra; /* a large body written after wbuf */
  size_t extra_len;
  bool extra_owned;
};

/* A connection of srv with its handles initialized, for the caller to
 * accept into c->tcp; NULL when memory runs out. The caller then either
 * starts it (conn_io_start) or gives it up (conn_io_discard). */
struct conn *conn_io_new(struct server *srv);

/* Gives up c, never started: closes its handles, then frees it. */
void conn_io_discard(struct conn *c);

/* Starts c, accepted and in the server's list: it reads, and its first
 * request must begin within the header timeout. */
void conn_io_start(struct conn *c);

/* Fills in resp (which must own nothing) as c's held response: c goes on
 * as if its handler had answered at once. c must hold (conn_holds). */
void conn_io_fill(struct conn *c, const struct http_response *resp);

/* The server has begun draining: c ends now if it is idle, answered and
 * with nothing more sent; otherwise once it is. */
void conn_io_drain(struct conn *c);

/* Closes c at once; it leaves the server once its handles are closed. */
void conn_io_close(struct conn *c);

#endif
