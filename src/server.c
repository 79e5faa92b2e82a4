#include "server.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "log.h"

#define CONN_RBUF 4096
#define CONN_WBUF 4096
/* Bodies up to this size are copied into the write buffer; larger ones go
 * out as a second buffer of the same write. */
#define SMALL_BODY_MAX 256
/* Room kept free in the write buffer before the next request is parsed, so
 * that its response always fits. */
#define WBUF_RESERVE (HTTP_HEAD_MAX + SMALL_BODY_MAX)
/* After a half-close, how long to wait for the client's FIN. */
#define LINGER_MS 1000
#define LISTEN_BACKLOG 4096

enum conn_timeout {
  TIMEOUT_IDLE,   /* between requests: close gracefully */
  TIMEOUT_HEADER, /* a request began and is not complete: 408 */
  TIMEOUT_WRITE,  /* the client does not read its responses: close */
  TIMEOUT_LINGER, /* half-closed, the client's FIN has not come: close */
};

struct conn {
  uv_tcp_t tcp;
  uv_write_t write_req;
  uv_shutdown_t shutdown_req;
  struct server *srv;
  struct conn *prev;
  struct conn *next;
  struct http_parser http;
  uint64_t deadline;
  enum conn_timeout timeout;
  bool reading;
  bool writing;     /* a uv_write is pending on wbuf (and extra) */
  bool close_after; /* the last response is in wbuf: no more requests */
  bool lingering;   /* half-closed: discarding input until EOF */
  bool closing;     /* uv_close was called */
  bool peer_eof;    /* the client will send nothing more */
  uint32_t rpos;    /* rbuf[rpos, rlen) is not parsed yet */
  uint32_t rlen;
  uint32_t wlen;
  char *extra; /* a large body written after wbuf */
  size_t extra_len;
  bool extra_owned;
  char rbuf[CONN_RBUF];
  char wbuf[CONN_WBUF];
};

static void process(struct conn *c);
static void on_timer(uv_timer_t *timer);
static void on_alloc(uv_handle_t *handle, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* ---- Deadlines ---------------------------------------------------------- */

static void set_deadline(struct conn *c, enum conn_timeout kind,
                         uint64_t in_ms) {
  struct server *srv = c->srv;
  uint64_t at = uv_now(srv->loop) + in_ms;
  c->timeout = kind;
  c->deadline = at;
  if (!uv_is_active((uv_handle_t *)&srv->timer) || at < srv->timer_due) {
    srv->timer_due = at;
    uv_timer_start(&srv->timer, on_timer, in_ms, 0);
  }
}

/* ---- Closing ------------------------------------------------------------ */

static void drop_extra(struct conn *c) {
  if (c->extra_owned)
    free(c->extra);
  c->extra = NULL;
  c->extra_len = 0;
  c->extra_owned = false;
}

static void maybe_drained(struct server *srv) {
  if (srv->mode != SERVER_DRAINING || srv->listener_open || srv->open > 0 ||
      srv->drained_reported)
    return;
  srv->drained_reported = true;
  uv_timer_stop(&srv->timer);
  srv->handler.on_drained(srv->data);
}

static void on_conn_close(uv_handle_t *handle) {
  struct conn *c = handle->data;
  struct server *srv = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  srv->open--;
  drop_extra(c);
  free(c);
  maybe_drained(srv);
}

static void conn_close(struct conn *c) {
  if (c->closing)
    return;
  c->closing = true;
  uv_close((uv_handle_t *)&c->tcp, on_conn_close);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  struct conn *c = req->data;
  /* Our FIN is out. If the client's came already, nothing is left. */
  if (status < 0 || c->peer_eof)
    conn_close(c);
}

/* No more requests on this connection: send FIN after the last response and
 * read (discarding) until the client's FIN, so the close is orderly and
 * never a reset. */
static void finish(struct conn *c) {
  if (c->lingering || c->closing)
    return;
  c->lingering = true;
  c->rpos = c->rlen = 0;
  c->shutdown_req.data = c;
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown)) {
    conn_close(c);
    return;
  }
  set_deadline(c, TIMEOUT_LINGER, LINGER_MS);
}

/* ---- Writing ------------------------------------------------------------ */

static void on_write(uv_write_t *req, int status) {
  struct conn *c = req->data;
  c->writing = false;
  c->wlen = 0;
  drop_extra(c);
  if (status < 0 || c->closing) {
    conn_close(c);
    return;
  }
  process(c);
}

/* Sends wbuf (and extra): at once when the socket takes it all, else the
 * rest through uv_write, during which the connection stops reading. */
static void flush(struct conn *c) {
  if (c->writing || c->closing || (c->wlen == 0 && !c->extra))
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
    conn_close(c);
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
    conn_close(c);
    return;
  }
  c->writing = true;
}

/* Bytes the client has sent that we have not parsed yet, here or in the
 * kernel's receive queue. */
static bool more_input(struct conn *c) {
  if (c->rpos < c->rlen)
    return true;
  uv_os_fd_t fd;
  int waiting = 0;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
    ioctl(fd, FIONREAD, &waiting);
  return waiting > 0;
}

static enum http_connection connection_header(struct conn *c,
                                              const struct http_request *req) {
  if (!req || !req->keep_alive || req->upgrade)
    return HTTP_CONN_CLOSE;
  switch (c->srv->mode) {
  case SERVER_KEEP_ALIVE:
    break;
  case SERVER_DRAINING:
    /* Requests already received are all answered; the last closes. */
    if (!more_input(c))
      return HTTP_CONN_CLOSE;
    break;
  default:
    return HTTP_CONN_CLOSE;
  }
  return req->version_major == 1 && req->version_minor == 0
             ? HTTP_CONN_KEEP_ALIVE
             : HTTP_CONN_DEFAULT;
}

/* Asks the handler for the response to req (or to a failed request) and
 * queues it in wbuf, which has WBUF_RESERVE bytes free. */
static void answer(struct conn *c, const struct http_request *req,
                   uint16_t error_status) {
  struct server *srv = c->srv;
  struct http_response resp;
  srv->handler.respond(srv->data, req, error_status, &resp);
  enum http_connection hdr = connection_header(c, req);
  if (hdr == HTTP_CONN_CLOSE)
    c->close_after = true;
  c->wlen += (uint32_t)http_format_head(c->wbuf + c->wlen, &resp, hdr);
  size_t body = resp.head ? 0 : resp.body_len;
  if (body <= SMALL_BODY_MAX) {
    if (body)
      memcpy(c->wbuf + c->wlen, resp.body, body);
    c->wlen += (uint32_t)body;
    if (resp.body_owned)
      free((char *)resp.body);
    return;
  }
  c->extra = (char *)resp.body;
  c->extra_len = body;
  c->extra_owned = resp.body_owned;
  flush(c);
}

/* ---- Reading ------------------------------------------------------------ */

/* Decides what the connection waits for next, once its input is parsed. */
static void settle(struct conn *c, bool answered) {
  struct server *srv = c->srv;
  if (c->closing || c->lingering)
    return;
  if (c->writing) {
    if (c->reading) {
      uv_read_stop((uv_stream_t *)&c->tcp);
      c->reading = false;
    }
    if (c->timeout != TIMEOUT_WRITE)
      set_deadline(c, TIMEOUT_WRITE, srv->cfg->idle_timeout_ms);
    return;
  }
  bool idle = http_parser_idle(&c->http);
  if (c->close_after || c->peer_eof ||
      (srv->mode == SERVER_DRAINING && idle && !more_input(c))) {
    finish(c);
    return;
  }
  if (!c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
      c->reading = true;
  }
  if (!idle) {
    if (c->timeout != TIMEOUT_HEADER)
      set_deadline(c, TIMEOUT_HEADER, srv->cfg->header_timeout_ms);
  } else if (answered || c->timeout != TIMEOUT_IDLE) {
    set_deadline(c, TIMEOUT_IDLE, srv->cfg->idle_timeout_ms);
  }
}

/* Answers every complete request in rbuf, in order, as long as responses
 * can be written. */
static void process(struct conn *c) {
  bool answered = false;
  while (!c->writing && !c->close_after && !c->closing && c->rpos < c->rlen) {
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
    if (r == HTTP_PARSE_REQUEST)
      answer(c, &c->http.req, 0);
    else
      answer(c, NULL, c->http.error_status);
  }
  if (c->rpos == c->rlen || c->close_after)
    c->rpos = c->rlen = 0;
  flush(c);
  settle(c, answered);
}

static void on_alloc(uv_handle_t *handle, size_t hint, uv_buf_t *buf) {
  struct conn *c = handle->data;
  (void)hint;
  /* Reading is on only when rbuf holds nothing unparsed (or, lingering,
   * when input is thrown away): the whole buffer is free. */
  *buf = uv_buf_init(c->rbuf, CONN_RBUF);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  struct conn *c = stream->data;
  (void)buf;
  if (nread == 0)
    return;
  if (nread < 0) {
    if (nread != UV_EOF || c->lingering) {
      conn_close(c);
      return;
    }
    /* The client has sent all it will; what it sent is still answered. */
    c->peer_eof = true;
    c->reading = false;
    uv_read_stop(stream);
    if (!c->writing)
      process(c);
    return;
  }
  if (c->lingering)
    return;
  c->rpos = 0;
  c->rlen = (uint32_t)nread;
  process(c);
}

static void expire(struct conn *c) {
  switch (c->timeout) {
  case TIMEOUT_IDLE:
    finish(c);
    return;
  case TIMEOUT_HEADER:
    answer(c, NULL, 408);
    c->close_after = true;
    flush(c);
    settle(c, true);
    return;
  case TIMEOUT_WRITE:
  case TIMEOUT_LINGER:
    conn_close(c);
    return;
  }
}

static void on_timer(uv_timer_t *timer) {
  struct server *srv = timer->data;
  uint64_t now = uv_now(srv->loop);
  uint64_t next = UINT64_MAX;
  for (struct conn *c = srv->conns; c; c = c->next) {
    if (c->closing)
      continue;
    if (c->deadline <= now)
      expire(c);
    if (!c->closing && c->deadline > now && c->deadline < next)
      next = c->deadline;
  }
  if (next != UINT64_MAX) {
    srv->timer_due = next;
    uv_timer_start(&srv->timer, on_timer, next - now, 0);
  }
}

/* ---- Accepting ---------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status);

static void on_rejected_close(uv_handle_t *handle) { free(handle); }

static void on_unaccepted_close(uv_handle_t *handle) { free(handle->data); }

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
    srv->metrics->connections_accepted++;
    srv->metrics->connections_rejected++;
    if (busy) {
      uv_buf_t b = uv_buf_init((char *)text, sizeof text - 1);
      uv_try_write((uv_stream_t *)tcp, &b, 1);
    }
  }
  uv_close((uv_handle_t *)tcp, on_close);
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
                LOG_UINT("open", srv->open));
    }
    return;
  }
  if (srv->open >= srv->cfg->max_connections) {
    reject(srv, true);
    return;
  }
  struct conn *c = malloc(sizeof *c);
  if (!c) {
    reject(srv, false);
    return;
  }
  memset(c, 0, offsetof(struct conn, rbuf));
  c->srv = srv;
  uv_tcp_init(srv->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp)) {
    uv_close((uv_handle_t *)&c->tcp, on_unaccepted_close);
    return;
  }
  srv->metrics->connections_accepted++;
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->open++;
  http_parser_init(&c->http, &srv->limits);
  uv_tcp_nodelay(&c->tcp, 1);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
    conn_close(c);
    return;
  }
  c->reading = true;
  /* The first request must begin within the header timeout. */
  set_deadline(c, TIMEOUT_IDLE, srv->cfg->header_timeout_ms);
}

/* ---- The server --------------------------------------------------------- */

void server_init(struct server *srv, uv_loop_t *loop, const struct config *cfg,
                 struct metrics *metrics, struct server_handler handler,
                 void *data) {
  memset(srv, 0, sizeof *srv);
  srv->loop = loop;
  srv->cfg = cfg;
  srv->metrics = metrics;
  srv->handler = handler;
  srv->data = data;
  srv->mode = SERVER_KEEP_ALIVE;
  srv->limits = (struct http_limits){
      .header_max_bytes = cfg->header_max_bytes,
      .max_headers = cfg->max_headers,
      .url_max_bytes = cfg->url_max_bytes,
      .max_body_bytes = cfg->max_body_bytes,
  };
  uv_tcp_init(loop, &srv->listener);
  srv->listener.data = srv;
  uv_timer_init(loop, &srv->timer);
  srv->timer.data = srv;
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
  if (!uv_is_closing((uv_handle_t *)&srv->listener))
    uv_close((uv_handle_t *)&srv->listener, on_listener_close);
}

void server_close_each(struct server *srv) {
  if (srv->mode == SERVER_KEEP_ALIVE)
    srv->mode = SERVER_CLOSE_EACH;
}

void server_drain(struct server *srv) {
  if (srv->mode == SERVER_DRAINING || srv->mode == SERVER_CLOSED)
    return;
  srv->mode = SERVER_DRAINING;
  close_listener(srv);
  for (struct conn *c = srv->conns; c; c = c->next) {
    if (!c->closing && !c->writing)
      settle(c, false);
  }
}

void server_close(struct server *srv) {
  srv->mode = SERVER_CLOSED;
  close_listener(srv);
  for (struct conn *c = srv->conns; c; c = c->next)
    conn_close(c);
  if (!uv_is_closing((uv_handle_t *)&srv->timer))
    uv_close((uv_handle_t *)&srv->timer, NULL);
}
