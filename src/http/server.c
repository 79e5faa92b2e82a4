/* accept4 and SO_ATTACH_FILTER are Linux interfaces. */
#define _GNU_SOURCE
#include "http/server.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/conn.h"
#include "log.h"

#define CONN_RBUF 4096
#define CONN_WBUF 4096
/* Bodies up to this size are copied into the write buffer; larger ones go
 * out as a second buffer of the same write. */
#define SMALL_BODY_MAX 256
/* Room kept free in the write buffer before the next request is parsed, so
 * that its response always fits. */
#define WBUF_RESERVE (HTTP_HEAD_MAX + SMALL_BODY_MAX)
/* Once the client has taken our FIN, how long to wait for its own. */
#define LINGER_MS 1000
/* How often a pending write is checked for progress, as a fraction of the
 * idle timeout: a stalled client is cut off within 1.25 idle timeouts. */
#define WRITE_CHECKS 4
/* Draining: how long the listener stays open, with new handshakes stopped,
 * for the handshakes already answered with a SYN-ACK to complete. */
#define HANDSHAKE_GRACE_MS 100
#define LISTEN_BACKLOG 4096
/* While the server closes connections, how much more a connection that
 * streams requests without pause is answered for. */
#define CLOSING_BUDGET (64 * 1024)

/* A response the handler will fill in later (see server_fill). */
enum slot {
  SLOT_NONE,
  SLOT_HELD,   /* asked for, not ready: the connection is holding */
  SLOT_FILLED, /* ready, to be queued once the connection reads again */
};

struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer; /* this connection's one deadline */
  uv_write_t write_req;
  uv_shutdown_t shutdown_req;
  struct server *srv;
  struct conn *prev;
  struct conn *next;
  struct conn *held_prev; /* the server's list of connections with a slot */
  struct conn *held_next;
  enum slot slot;
  uint64_t ticket;             /* SLOT_HELD */
  struct http_response filled; /* SLOT_FILLED */
  struct http_parser http;
  struct conn_life life;
  uint8_t handles;        /* tcp and timer until both are closed */
  uint32_t closing_bytes; /* read since the server began closing */
  uint32_t answered;      /* responses queued */
  uint32_t header_for;    /* the request whose header timeout is armed */
  size_t unsent;          /* bytes the client had not taken, last check */
  uint64_t moved;         /* uv_now when the last of them moved */
  uint64_t linger_from;   /* uv_now when the client had taken everything */
  uint32_t rpos;          /* rbuf[rpos, rlen) is not parsed yet */
  uint32_t rlen;
  uint32_t wlen;
  char *extra; /* a large body written after wbuf */
  size_t extra_len;
  bool extra_owned;
  char rbuf[CONN_RBUF];
  char wbuf[CONN_WBUF];
};

static void process(struct conn *c);
static void on_conn_timer(uv_timer_t *timer);
static void on_alloc(uv_handle_t *handle, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_write(uv_write_t *req, int status);
static void on_shutdown(uv_shutdown_t *req, int status);
static void step(struct conn *c, enum conn_event e);

static void close_now(struct conn *c) { step(c, CONN_FAILED); }

static struct conn *conn_of_timer(uv_timer_t *timer) {
  return (struct conn *)((char *)timer - offsetof(struct conn, timer));
}

static void drop_extra(struct conn *c) {
  if (c->extra_owned)
    free(c->extra);
  c->extra = NULL;
  c->extra_len = 0;
  c->extra_owned = false;
}

static void maybe_drained(struct server *srv) {
  if (srv->mode != SERVER_DRAINING || srv->listener_open || srv->stats.open > 0 ||
      srv->drained_reported)
    return;
  srv->drained_reported = true;
  srv->on_drained(srv);
}

/* Takes c off the server's list of connections with a held response. */
static void unhold(struct conn *c) {
  struct server *srv = c->srv;
  if (c->slot != SLOT_HELD) {
    c->slot = SLOT_NONE;
    return;
  }
  if (c->held_prev)
    c->held_prev->held_next = c->held_next;
  else if (srv->held == c)
    srv->held = c->held_next;
  if (c->held_next)
    c->held_next->held_prev = c->held_prev;
  else if (srv->held_last == c)
    srv->held_last = c->held_prev;
  c->held_prev = c->held_next = NULL;
  c->slot = SLOT_NONE;
}

static void on_conn_close(uv_handle_t *handle) {
  struct conn *c = handle->data;
  struct server *srv = c->srv;
  if (--c->handles > 0)
    return;
  unhold(c);
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  srv->stats.open--;
  drop_extra(c);
  free(c);
  maybe_drained(srv);
}

static void set_timer(struct conn *c, uint64_t ms) {
  uv_timer_start(&c->timer, on_conn_timer, ms, 0);
}

/* ---- The lifecycle: conn.h decides, this performs ---------------------- */

static void check_progress(struct conn *c);

/* Bytes written and not yet taken by the client: in libuv's queue, and
 * sent but not acknowledged in the kernel's (SIOCOUTQ). */
static size_t unsent(struct conn *c) {
  size_t n = c->tcp.write_queue_size;
  uv_os_fd_t fd;
  int queued = 0;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 &&
      ioctl(fd, SIOCOUTQ, &queued) == 0 && queued > 0)
    n += (size_t)queued;
  return n;
}

/* Starts watching what is left to send: writing, shutting and lingering
 * time out only when no byte has moved for the idle timeout. */
static void watch(struct conn *c) {
  c->unsent = unsent(c);
  c->moved = uv_now(c->srv->loop);
  c->linger_from = 0;
  check_progress(c);
}

/* Holding: what the client sends next goes to the buffer's free end,
 * unparsed, until the buffer is full. Reading stays on, so that a held
 * response costs no change to what the loop polls. */
static void read_ahead(struct conn *c) {
  if (c->rpos > 0) {
    memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  if (c->rlen == CONN_RBUF) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    return;
  }
  int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rc && rc != UV_EALREADY)
    close_now(c);
}

static void step(struct conn *c, enum conn_event e) {
  unsigned fx = conn_step(&c->life, e);
  if (fx & CONN_DO_READ)
    read_ahead(c);
  if (fx & CONN_DO_STOP_READING)
    uv_read_stop((uv_stream_t *)&c->tcp);
  if (fx & CONN_DO_DISCARD) {
    c->rpos = c->rlen = 0;
    /* Already reading is fine (UV_EALREADY); any other error is not. */
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc && rc != UV_EALREADY)
      fx |= CONN_DO_CLOSE;
  }
  if (fx & CONN_DO_PROCESS)
    process(c);
  if ((fx & CONN_DO_SHUTDOWN) && !(fx & CONN_DO_CLOSE)) {
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown)) {
      step(c, CONN_FAILED);
      return;
    }
  }
  if (fx & (CONN_DO_WATCH_WRITE | CONN_DO_LINGER))
    watch(c);
  if (fx & CONN_DO_CLOSE) {
    c->life.state = CONN_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_conn_close);
    uv_close((uv_handle_t *)&c->timer, on_conn_close);
  }
}

/* A write has stalled only when no byte has moved for the idle timeout.
 * Lingering, LINGER_MS for the client's FIN begins once the client has
 * taken everything, our FIN included: a slow reader still gets every
 * response, and anything it sends meanwhile is read, so the close that
 * follows is never a reset. */
static void check_progress(struct conn *c) {
  uint64_t now = uv_now(c->srv->loop);
  uint64_t limit = c->srv->cfg->idle_timeout_ms;
  size_t left = unsent(c);
  if (left < c->unsent) {
    c->unsent = left;
    c->moved = now;
  }
  if (c->life.state == CONN_LINGERING && left == 0) {
    if (!c->linger_from)
      c->linger_from = now ? now : 1;
    uint64_t waited = now - c->linger_from;
    if (waited >= LINGER_MS)
      step(c, CONN_EXPIRED);
    else
      set_timer(c, LINGER_MS - waited);
    return;
  }
  uint64_t still = now - c->moved;
  if (still >= limit) {
    step(c, CONN_EXPIRED);
    return;
  }
  uint64_t every = limit / WRITE_CHECKS;
  if (c->life.state == CONN_LINGERING && every > LINGER_MS / WRITE_CHECKS)
    every = LINGER_MS / WRITE_CHECKS;
  if (!every)
    every = 1;
  set_timer(c, limit - still < every ? limit - still : every);
}

/* ---- Writing ------------------------------------------------------------ */

static void on_shutdown(uv_shutdown_t *req, int status) {
  struct conn *c = req->data;
  step(c, status < 0 ? CONN_FAILED : CONN_SHUTDOWN_DONE);
}

static void on_write(uv_write_t *req, int status) {
  struct conn *c = req->data;
  c->wlen = 0;
  drop_extra(c);
  if (c->life.state == CONN_CLOSING)
    return;
  step(c, status < 0 ? CONN_FAILED : CONN_WRITE_DONE);
}

/* Sends wbuf (and extra): at once when the socket takes it all, else the
 * rest through uv_write, during which the connection stops reading. */
static void flush(struct conn *c) {
  if (c->life.state != CONN_READING || (c->wlen == 0 && !c->extra))
    return;
  uv_buf_t bufs[2] = {uv_buf_init(c->wbuf, c->wlen),
                      uv_buf_init(c->extra, (unsigned)c->extra_len)};
  unsigned nbufs = c->extra ? 2 : 1;
  size_t total = c->wlen + c->extra_len;
  int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
  if (n >= 0 && (size_t)n == total) {
    c->wlen = 0;
    drop_extra(c);
    return;
  }
  if (n < 0 && n != UV_EAGAIN) {
    close_now(c);
    return;
  }
  size_t skip = n > 0 ? (size_t)n : 0;
  uv_buf_t *b = bufs;
  while (skip >= b->len && skip > 0) {
    skip -= b->len;
    b++;
    nbufs--;
  }
  b->base += skip;
  b->len -= skip;
  c->write_req.data = c;
  if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, b, nbufs, on_write)) {
    close_now(c);
    return;
  }
  step(c, CONN_WRITE_BLOCKED);
}

/* Whether the client has sent bytes the kernel holds and we have not read. */
static bool input_waiting(struct conn *c) {
  uv_os_fd_t fd;
  int waiting = 0;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
    ioctl(fd, FIONREAD, &waiting);
  return waiting > 0;
}

/* Whether the response to req is the connection's last. While the server
 * closes connections (delaying, then draining), a connection answers every
 * request it has received, read or waiting in the kernel: the last is the
 * one with nothing after it, which is asked of the kernel (FIONREAD) only
 * when a response uses up what was read, so at most once per read. A client
 * that streams requests without pause always has something after; it is
 * cut at a bound instead: the first response once CLOSING_BUDGET bytes
 * have been read since closing began is the last. */
static bool is_last(struct conn *c, const struct http_request *req) {
  if (!req || !req->keep_alive || req->upgrade)
    return true;
  switch (c->srv->mode) {
  case SERVER_KEEP_ALIVE:
    return false;
  case SERVER_CLOSE_EACH:
  case SERVER_DRAINING:
    if (c->closing_bytes >= CLOSING_BUDGET)
      return true;
    return c->rpos == c->rlen && !input_waiting(c);
  default:
    return true;
  }
}

/* Queues resp, the response to req (NULL: a failed request), in wbuf,
 * which has WBUF_RESERVE bytes free. */
static void queue_response(struct conn *c, const struct http_request *req,
                           const struct http_response *resp) {
  bool last = is_last(c, req);
  enum http_connection hdr = HTTP_CONN_CLOSE;
  if (!last)
    hdr = req->version_minor == 0 ? HTTP_CONN_KEEP_ALIVE : HTTP_CONN_DEFAULT;
  c->answered++;
  c->wlen += (uint32_t)http_format_head(c->wbuf + c->wlen, resp, hdr);
  size_t body = resp->head ? 0 : resp->body_len;
  if (body <= SMALL_BODY_MAX) {
    if (body)
      memcpy(c->wbuf + c->wlen, resp->body, body);
    c->wlen += (uint32_t)body;
    if (resp->body_owned)
      free((char *)resp->body);
  } else {
    c->extra = (char *)resp->body;
    c->extra_len = body;
    c->extra_owned = resp->body_owned;
    flush(c);
  }
  if (last) {
    flush(c);
    step(c, CONN_LAST_QUEUED);
  }
}

/* Asks the handler for the response to req (or to a failed request) and
 * queues it; one that is not ready yet holds the connection, with what was
 * answered before it sent, until server_fill. */
static void answer(struct conn *c, const struct http_request *req,
                   uint16_t error_status) {
  struct server *srv = c->srv;
  struct http_response resp;
  srv->respond(srv, req, error_status, &resp);
  if (!resp.held || !req) {
    queue_response(c, req, &resp);
    return;
  }
  c->slot = SLOT_HELD;
  c->ticket = resp.ticket;
  c->held_prev = srv->held_last;
  c->held_next = NULL;
  if (srv->held_last)
    srv->held_last->held_next = c;
  else
    srv->held = c;
  srv->held_last = c;
  flush(c);
  if (c->life.state == CONN_READING)
    step(c, CONN_HELD);
  /* Writing: holding begins once the write is done (process). */
}

uint64_t server_fill(struct server *srv, uint64_t ticket,
                     const struct http_response *resp) {
  uint64_t n = 0;
  struct conn *next;
  for (struct conn *c = srv->held; c; c = next) {
    next = c->held_next;
    if (c->slot != SLOT_HELD || c->ticket != ticket)
      continue;
    unhold(c);
    if (c->life.state == CONN_CLOSING)
      continue; /* the client went away */
    n++;
    c->slot = SLOT_FILLED;
    c->filled = *resp;
    /* Holding: queued and the buffer processed at once. Writing: once the
     * write is done. */
    step(c, CONN_FILLED);
  }
  return n;
}

/* ---- Reading ------------------------------------------------------------ */

/* Reading, with the buffer used up: the deadline of what comes next. Each
 * request gets its own header timeout from the moment it begins, even when
 * it begins in the read that completed the one before. */
static void arm_reading(struct conn *c, bool answered) {
  const struct config *cfg = c->srv->cfg;
  if (!http_parser_idle(&c->http)) {
    if (c->header_for != c->http.begun) {
      c->header_for = c->http.begun;
      set_timer(c, cfg->header_timeout_ms);
    }
  } else if (answered) {
    set_timer(c, cfg->idle_timeout_ms);
  }
}

/* Answers every complete request in rbuf, in order, as long as responses
 * can be written; then reads again. */
static void process(struct conn *c) {
  bool answered = false;
  if (c->slot == SLOT_FILLED) {
    c->slot = SLOT_NONE;
    queue_response(c, &c->http.req, &c->filled);
    answered = true;
  } else if (c->slot == SLOT_HELD) {
    if (c->life.state == CONN_READING)
      step(c, CONN_HELD); /* its write is done: now it holds */
    return;
  }
  while (c->life.state == CONN_READING && c->rpos < c->rlen) {
    if (CONN_WBUF - c->wlen < WBUF_RESERVE) {
      flush(c);
      continue;
    }
    size_t used;
    enum http_parse_result r =
        http_parse(&c->http, c->rbuf + c->rpos, c->rlen - c->rpos, &used);
    c->rpos += (uint32_t)used;
    if (r == HTTP_PARSE_MORE)
      break;
    answered = true;
    answer(c, r == HTTP_PARSE_REQUEST ? &c->http.req : NULL,
           c->http.error_status);
  }
  flush(c);
  if (c->life.state != CONN_READING)
    return; /* writing (the rest of rbuf waits), or ending */
  c->rpos = c->rlen = 0;
  if (c->life.peer_eof) { /* it came while holding */
    step(c, CONN_PEER_EOF);
    return;
  }
  /* Draining: a connection that has been answered, has nothing begun and
   * nothing more sent is done. One that never sent a request waits for its
   * first. */
  if (c->srv->mode == SERVER_DRAINING && c->answered > 0 &&
      http_parser_idle(&c->http) && !input_waiting(c)) {
    step(c, CONN_LAST_QUEUED);
    return;
  }
  int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rc && rc != UV_EALREADY) {
    close_now(c);
    return;
  }
  arm_reading(c, answered);
}

static void on_alloc(uv_handle_t *handle, size_t hint, uv_buf_t *buf) {
  struct conn *c = handle->data;
  (void)hint;
  /* Holding reads ahead into the free end (read_ahead). Otherwise reading
   * is on only when rbuf holds nothing unparsed (or, once the last response
   * is queued, when input is thrown away): all of it is free. */
  if (c->life.state == CONN_HOLDING)
    *buf = uv_buf_init(c->rbuf + c->rlen, CONN_RBUF - c->rlen);
  else
    *buf = uv_buf_init(c->rbuf, CONN_RBUF);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  struct conn *c = stream->data;
  (void)buf;
  if (nread == 0)
    return;
  if (nread < 0) {
    step(c, nread == UV_EOF ? CONN_PEER_EOF : CONN_FAILED);
    return;
  }
  if (c->life.state != CONN_READING && c->life.state != CONN_HOLDING)
    return; /* after the last response: thrown away */
  if (c->srv->mode != SERVER_KEEP_ALIVE && c->closing_bytes < CLOSING_BUDGET)
    c->closing_bytes += (uint32_t)nread;
  if (c->life.state == CONN_HOLDING) { /* parsed once filled in */
    c->rlen += (uint32_t)nread;
    if (c->rlen == CONN_RBUF)
      uv_read_stop((uv_stream_t *)&c->tcp);
    return;
  }
  c->rpos = 0;
  c->rlen = (uint32_t)nread;
  process(c);
}

static void on_conn_timer(uv_timer_t *timer) {
  struct conn *c = conn_of_timer(timer);
  switch (c->life.state) {
  case CONN_READING:
    if (http_parser_idle(&c->http))
      step(c, CONN_LAST_QUEUED); /* idle: our FIN, no response */
    else
      answer(c, NULL, 408); /* always the last */
    return;
  case CONN_WRITING:
  case CONN_SHUTTING:
  case CONN_LINGERING:
    check_progress(c);
    return;
  default:
    return;
  }
}

/* ---- Accepting ---------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status);

static void on_rejected_close(uv_handle_t *handle) { free(handle); }

static void on_spare_close(uv_handle_t *handle) {
  struct server *srv = handle->data;
  srv->spare_busy = false;
  /* libuv holds back the listener until the waiting connection is taken. */
  if (srv->accept_waiting && !uv_is_closing((uv_handle_t *)&srv->listener)) {
    srv->accept_waiting = false;
    on_connection((uv_stream_t *)&srv->listener, 0);
  }
}

/* Accepts the next connection only to close it: answered 503 when
 * memory allows, else shed through the server's one spare handle. Never
 * left in the backlog: libuv stops accepting until it is taken. */
static void reject(struct server *srv, bool busy) {
  static const char text[] = "HTTP/1.1 503 Service Unavailable\r\n"
                             "Content-Type: text/plain\r\n"
                             "Content-Length: 21\r\n"
                             "Retry-After: 1\r\n"
                             "Connection: close\r\n\r\n"
                             "too many connections\n";
  uv_tcp_t *tcp = malloc(sizeof *tcp);
  uv_close_cb on_close = on_rejected_close;
  if (!tcp) {
    if (srv->spare_busy) {
      srv->accept_waiting = true;
      return;
    }
    srv->spare_busy = true;
    tcp = &srv->spare;
    tcp->data = srv;
    on_close = on_spare_close;
  }
  uv_tcp_init(srv->loop, tcp);
  if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)tcp) == 0) {
    srv->stats.accepted++;
    srv->stats.rejected++;
    if (busy) {
      uv_buf_t b = uv_buf_init((char *)text, sizeof text - 1);
      uv_try_write((uv_stream_t *)tcp, &b, 1);
    }
  }
  uv_close((uv_handle_t *)tcp, on_close);
}

/* Takes an accepted connection (through accept, or an fd the final sweep
 * accepted) and starts reading it. */
static void conn_start(struct server *srv, struct conn *c) {
  srv->stats.accepted++;
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->stats.open++;
  http_parser_init(&c->http, &srv->limits);
  uv_tcp_nodelay(&c->tcp, 1);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
    close_now(c);
    return;
  }
  /* The first request must begin within the header timeout. */
  set_timer(c, srv->cfg->header_timeout_ms);
}

static struct conn *conn_new(struct server *srv) {
  struct conn *c = malloc(sizeof *c);
  if (!c)
    return NULL;
  memset(c, 0, offsetof(struct conn, rbuf));
  c->srv = srv;
  conn_life_init(&c->life);
  uv_tcp_init(srv->loop, &c->tcp);
  c->tcp.data = c;
  uv_timer_init(srv->loop, &c->timer);
  c->timer.data = c;
  c->handles = 2;
  return c;
}

static void on_unaccepted_close(uv_handle_t *handle) {
  struct conn *c = handle->data;
  if (--c->handles == 0)
    free(c);
}

static void on_connection(uv_stream_t *listener, int status) {
  struct server *srv = listener->data;
  if (status < 0) {
    /* Out of descriptors, say: libuv has already shed the connection. Log
     * at most once a second. */
    uint64_t now = uv_now(srv->loop);
    if (now - srv->accept_error_logged >= 1000 || !srv->accept_error_logged) {
      srv->accept_error_logged = now ? now : 1;
      log_error("accept_failed", LOG_STR("error", uv_err_name(status)),
                LOG_UINT("open", srv->stats.open));
    }
    return;
  }
  if (srv->stats.open >= srv->cfg->max_connections) {
    reject(srv, true);
    return;
  }
  struct conn *c = conn_new(srv);
  if (!c) {
    reject(srv, false);
    return;
  }
  if (uv_accept(listener, (uv_stream_t *)&c->tcp)) {
    uv_close((uv_handle_t *)&c->tcp, on_unaccepted_close);
    uv_close((uv_handle_t *)&c->timer, on_unaccepted_close);
    return;
  }
  conn_start(srv, c);
}

/* Accepts, with accept4 directly, every connection still in the listen
 * queue: libuv accepts only when the loop polls, and whatever the queue
 * holds when the listener closes is reset. */
static void accept_queued(struct server *srv) {
  uv_os_fd_t lfd;
  if (uv_fileno((uv_handle_t *)&srv->listener, &lfd))
    return;
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return; /* EAGAIN: the queue is empty; anything else ends it too */
    struct conn *c =
        srv->stats.open < srv->cfg->max_connections ? conn_new(srv) : NULL;
    if (!c || uv_tcp_open(&c->tcp, fd)) {
      srv->stats.accepted++;
      srv->stats.rejected++;
      close(fd);
      if (c) {
        uv_close((uv_handle_t *)&c->tcp, on_unaccepted_close);
        uv_close((uv_handle_t *)&c->timer, on_unaccepted_close);
      }
      continue;
    }
    conn_start(srv, c);
  }
}

/* Stops new handshakes on the listener: a classic BPF socket filter that
 * drops every pure SYN (SYN without ACK), so a new client's SYN goes
 * unanswered, is sent again after a second, and by then meets a closed port:
 * a refusal, which it can retry safely. Every other packet passes: above
 * all the final ACK of a handshake the client already counts as complete
 * (the kernel runs a listener's filter on it too), and the data that may
 * come with it. For TCP the filter sees the TCP header at offset 0; byte 13
 * holds the flags. */
static int stop_handshakes(struct server *srv) {
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12), /* SYN | ACK */
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, 0),          /* a pure SYN: drop */
      BPF_STMT(BPF_RET | BPF_K, 0xffffffff), /* anything else: keep */
  };
  struct sock_fprog prog = {.len = sizeof code / sizeof code[0],
                            .filter = code};
  uv_os_fd_t fd;
  int rc = uv_fileno((uv_handle_t *)&srv->listener, &fd);
  if (rc)
    return rc;
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog))
    return -errno;
  return 0;
}

/* ---- The server --------------------------------------------------------- */

void server_init(struct server *srv, uv_loop_t *loop, const struct config *cfg,
                 server_respond_cb respond,
                 server_drained_cb on_drained) {
  memset(srv, 0, sizeof *srv);
  srv->loop = loop;
  srv->cfg = cfg;
  srv->respond = respond;
  srv->on_drained = on_drained;
  srv->mode = SERVER_KEEP_ALIVE;
  srv->limits = (struct http_limits){
      .header_max_bytes = cfg->header_max_bytes,
      .max_headers = cfg->max_headers,
      .url_max_bytes = cfg->url_max_bytes,
      .max_body_bytes = cfg->max_body_bytes,
  };
  uv_tcp_init(loop, &srv->listener);
  srv->listener.data = srv;
  uv_timer_init(loop, &srv->grace_timer);
  srv->grace_timer.data = srv;
}

int server_listen(struct server *srv) {
  int rc = uv_tcp_bind(&srv->listener,
                       (const struct sockaddr *)&srv->cfg->listen_addr, 0);
  if (rc == 0)
    rc =
        uv_listen((uv_stream_t *)&srv->listener, LISTEN_BACKLOG, on_connection);
  if (rc)
    return rc;
  srv->listener_open = true;
  struct sockaddr_storage addr;
  int len = sizeof addr;
  char ip[64] = "?";
  int port = 0;
  if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&addr, &len) == 0) {
    if (addr.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&addr, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    } else {
      uv_ip4_name((struct sockaddr_in *)&addr, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in *)&addr)->sin_port);
    }
  }
  log_info("listening", LOG_STR("addr", ip), LOG_INT("port", port));
  return 0;
}

static void on_listener_close(uv_handle_t *handle) {
  struct server *srv = handle->data;
  maybe_drained(srv);
}

static void close_listener(struct server *srv) {
  srv->listener_open = false;
  uv_timer_stop(&srv->grace_timer);
  if (!uv_is_closing((uv_handle_t *)&srv->listener))
    uv_close((uv_handle_t *)&srv->listener, on_listener_close);
}

/* The handshakes answered before new ones were stopped have had their
 * time: everything queued is accepted, then the listener closes. What can
 * still be reset is only a handshake whose final ACK took longer than
 * HANDSHAKE_GRACE_MS to arrive. */
static void on_grace_over(uv_timer_t *timer) {
  struct server *srv = timer->data;
  accept_queued(srv);
  close_listener(srv);
}

void server_close_each(struct server *srv) {
  if (srv->mode == SERVER_KEEP_ALIVE)
    srv->mode = SERVER_CLOSE_EACH;
}

void server_drain(struct server *srv) {
  if (srv->mode == SERVER_DRAINING || srv->mode == SERVER_CLOSED)
    return;
  srv->mode = SERVER_DRAINING;
  if (srv->listener_open && stop_handshakes(srv) == 0)
    uv_timer_start(&srv->grace_timer, on_grace_over, HANDSHAKE_GRACE_MS, 0);
  else
    close_listener(srv);
  /* Idle connections end now; the others once answered (process ends
   * those it finds idle). */
  struct conn *next;
  for (struct conn *c = srv->conns; c; c = next) {
    next = c->next;
    if (c->life.state == CONN_READING && c->rpos == c->rlen)
      process(c);
  }
}

void server_close(struct server *srv) {
  srv->mode = SERVER_CLOSED;
  close_listener(srv);
  for (struct conn *c = srv->conns; c; c = c->next)
    close_now(c);
  if (!uv_is_closing((uv_handle_t *)&srv->grace_timer))
    uv_close((uv_handle_t *)&srv->grace_timer, NULL);
}
