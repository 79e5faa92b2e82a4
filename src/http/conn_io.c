#include "http/conn_io.h"

#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "base.h"

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
/* While the server closes connections, how much more a connection that
 * streams requests without pause is answered for. */
#define CLOSING_BUDGET (64 * 1024)
/* Deadlines this far off or more are rounded up to a slot of TIMER_SLOT_MS
 * (a power of two): connections that began within one slot time out in one
 * loop turn, at most 1.6% late, never early. */
#define TIMER_ROUND_FROM_MS 1000
#define TIMER_SLOT_MS 16

/* Input read after the last response is thrown away (on_read): it goes
 * here, one buffer for every connection of the loop's one thread, so that
 * a connection that sent nothing before its FIN never takes buffers. */
static char discard_buf[CONN_RBUF];

/* The last head formatted for a response with neither a content type nor
 * extra headers of its own, and what it was formatted from: answering
 * /incr, every response is the same 200, so its head is copied rather than
 * formatted again. */
static struct {
  uint16_t status;
  enum http_connection conn;
  size_t body_len;
  size_t len; /* 0: none yet */
  char head[HTTP_HEAD_MAX];
} plain_head;

static void process(struct conn *c, bool filled);
static void on_conn_timer(uv_timer_t *timer);
static void on_alloc(uv_handle_t *handle, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_write(uv_write_t *req, int status);
static void on_shutdown(uv_shutdown_t *req, int status);
static void step(struct conn *c, enum conn_event e);

static void close_now(struct conn *c) { step(c, CONN_FAILED); }

static void drop_extra(struct conn *c) {
  if (c->extra_owned)
    free(c->extra);
  c->extra = NULL;
  c->extra_len = 0;
  c->extra_owned = false;
}

/* Both handles close with this; the second to close frees c. */
static void on_conn_close(uv_handle_t *handle) {
  struct conn *c = handle->data;
  if (--c->handles > 0)
    return;
  drop_extra(c);
  server_conn_gone(c->srv, c);
  free(c->w);
  free(c);
}

/* Sets c's one deadline ms from now. A deadline later than the one the
 * timer is armed for leaves the timer as it is: firing early, it arms
 * itself again for the rest (on_conn_timer). So a connection answering
 * request after request moves its idle timeout without taking its timer
 * out of libuv's heap and putting it back each time. */
static void set_timer(struct conn *c, uint64_t ms) {
  uint64_t now = uv_now(c->srv->loop);
  uint64_t due = now + ms;
  if (ms >= TIMER_ROUND_FROM_MS)
    due = (due + TIMER_SLOT_MS - 1) & ~(uint64_t)(TIMER_SLOT_MS - 1);
  c->due = due;
  if (uv_is_active((uv_handle_t *)&c->timer) &&
      uv_timer_get_due_in(&c->timer) <= due - now)
    return;
  uv_timer_start(&c->timer, on_conn_timer, due - now, 0);
}

/* ---- The lifecycle: conn.h decides, this performs ---------------------- */

static void check_progress(struct conn *c, size_t left);

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
  size_t left = unsent(c);
  c->unsent = left;
  c->moved = uv_now(c->srv->loop);
  c->linger_from = 0;
  check_progress(c, left);
}

/* Our FIN, now: reading, every write is done and libuv holds nothing, so
 * it needs no loop turn of uv_shutdown's (two epoll_ctl and a wake-up).
 * Returns 0 or a negative UV_E*. */
static int shutdown_now(struct conn *c) {
  uv_os_fd_t fd;
  int rc = uv_fileno((uv_handle_t *)&c->tcp, &fd);
  if (rc == 0 && shutdown(fd, SHUT_WR))
    rc = UV_ENOTCONN;
  return rc;
}

/* Holding: what the client sends next goes to the buffer's free end,
 * unparsed, until the buffer is full. Reading stays on, so that a held
 * response costs no change to what the loop polls. */
static void read_ahead(struct conn *c) {
  if (c->rpos > 0) {
    memmove(c->w->rbuf, c->w->rbuf + c->rpos, c->rlen - c->rpos);
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
  bool held = conn_holds(&c->life);
  bool was_reading = c->life.state == CONN_READING;
  unsigned fx = conn_step(&c->life, e);
  bool shut = false;
  /* The server's index of the connections that hold a response follows
   * the state: c is in it exactly while conn_holds. */
  if (conn_holds(&c->life) != held) {
    if (held)
      list_remove(&c->srv->held, &c->in_held);
    else
      list_append(&c->srv->held, &c->in_held);
  }
  if (fx & CONN_DO_READ)
    read_ahead(c);
  if (fx & CONN_DO_STOP_READING)
    uv_read_stop((uv_stream_t *)&c->tcp);
  if (fx & CONN_DO_DISCARD) {
    c->rpos = c->rlen = 0;
    /* Already reading is fine (UV_EALREADY); any other error is not. */
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc && rc != UV_EALREADY) {
      close_now(c);
      return;
    }
  }
  if (fx & CONN_DO_PROCESS)
    process(c, fx & CONN_DO_QUEUE_FILLED);
  if (fx & CONN_DO_SHUTDOWN) {
    if (!c->w || (was_reading && c->tcp.write_queue_size == 0))
      shut = true;
    if (shut ? shutdown_now(c)
             : uv_shutdown(&c->w->shutdown_req, (uv_stream_t *)&c->tcp,
                           on_shutdown)) {
      close_now(c);
      return;
    }
  }
  /* Shut at once, the watch begins with the step that follows. */
  if ((fx & (CONN_DO_WATCH_WRITE | CONN_DO_LINGER)) && !shut)
    watch(c);
  if (fx & CONN_DO_CLOSE) {
    uv_close((uv_handle_t *)&c->tcp, on_conn_close);
    uv_close((uv_handle_t *)&c->timer, on_conn_close);
  }
  if (shut)
    step(c, CONN_SHUTDOWN_DONE);
}

/* A write has stalled only when no byte has moved for the idle timeout.
 * Lingering, LINGER_MS for the client's FIN begins once the client has
 * taken everything, our FIN included: a slow reader still gets every
 * response, and anything it sends meanwhile is read, so the close that
 * follows is never a reset. */
static void check_progress(struct conn *c, size_t left) {
  uint64_t now = uv_now(c->srv->loop);
  uint64_t limit = c->srv->opts.idle_timeout_ms;
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
  uv_buf_t bufs[2] = {uv_buf_init(c->w->wbuf, c->wlen),
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
  if (uv_write(&c->w->write_req, (uv_stream_t *)&c->tcp, b, nbufs, on_write)) {
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

/* http_format_head, through plain_head for the responses it can hold. */
static size_t format_head(char *buf, const struct http_response *resp,
                          enum http_connection conn) {
  if (resp->content_type || resp->extra_headers)
    return http_format_head(buf, resp, conn);
  if (plain_head.len == 0 || plain_head.status != resp->status ||
      plain_head.conn != conn || plain_head.body_len != resp->body_len) {
    plain_head.status = resp->status;
    plain_head.conn = conn;
    plain_head.body_len = resp->body_len;
    plain_head.len = http_format_head(plain_head.head, resp, conn);
  }
  memcpy(buf, plain_head.head, plain_head.len);
  return plain_head.len;
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
  c->wlen += (uint32_t)format_head(c->w->wbuf + c->wlen, resp, hdr);
  size_t body = resp->head ? 0 : resp->body_len;
  if (body <= SMALL_BODY_MAX) {
    if (body)
      memcpy(c->w->wbuf + c->wlen, resp->body, body);
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
 * answered before it sent, until conn_io_fill. */
static void answer(struct conn *c, const struct http_request *req,
                   uint16_t error_status) {
  struct server *srv = c->srv;
  struct http_response resp;
  srv->respond(srv, req, error_status, &resp);
  if (!resp.held || !req) {
    queue_response(c, req, &resp);
    return;
  }
  c->ticket = resp.ticket;
  flush(c);
  step(c, CONN_HELD);
}

void conn_io_fill(struct conn *c, const struct http_response *resp) {
  c->w->filled = *resp;
  /* Holding: queued and the buffer processed at once. Writing: once the
   * write is done. */
  step(c, CONN_FILLED);
}

/* ---- Reading ------------------------------------------------------------ */

/* The client's first byte: c takes its parser and buffers. Returns 0 or
 * UV_ENOMEM. */
static int work_begins(struct conn *c) {
  struct conn_work *w = malloc(sizeof *w);
  if (!w)
    return UV_ENOMEM;
  http_parser_init(&w->http, &c->srv->opts.limits);
  w->write_req.data = c;
  w->shutdown_req.data = c;
  c->w = w;
  return 0;
}

/* Whether no request has begun: none ever has before the first byte. */
static bool parser_idle(const struct conn *c) {
  return !c->w || http_parser_idle(&c->w->http);
}

/* Reading, with the buffer used up: the deadline of what comes next. Each
 * request gets its own header timeout from the moment it begins, even when
 * it begins in the read that completed the one before. */
static void arm_reading(struct conn *c, bool answered) {
  const struct server_options *opts = &c->srv->opts;
  if (!parser_idle(c)) {
    if (c->header_for != c->w->http.begun) {
      c->header_for = c->w->http.begun;
      set_timer(c, opts->header_timeout_ms);
    }
  } else if (answered) {
    c->unsent = 0; /* not asked yet: the timer asks (still_taking) */
    set_timer(c, opts->idle_timeout_ms);
  }
}

/* Reading, nothing begun, the idle timeout up: whether the client is still
 * taking what was answered. A write is done once the kernel holds it; a
 * slow reader may take it long after, and is idle only once it has taken
 * it all and an idle timeout has passed since it was last seen taking any.
 * One that takes nothing for an idle timeout has stalled. */
static bool still_taking(struct conn *c) {
  if (c->answered == 0)
    return false; /* nothing was written: nothing to ask the kernel */
  size_t left = unsent(c);
  bool moving = left < c->unsent || (left > 0 && c->unsent == 0);
  c->unsent = left;
  return moving;
}

/* Answers every complete request in rbuf, in order, as long as responses
 * can be written, the filled-in response first if there is one; then reads
 * again. */
static void process(struct conn *c, bool filled) {
  bool answered = filled;
  if (filled)
    queue_response(c, &c->w->http.req, &c->w->filled);
  while (c->life.state == CONN_READING && c->rpos < c->rlen) {
    if (CONN_WBUF - c->wlen < WBUF_RESERVE) {
      flush(c);
      continue;
    }
    size_t used;
    enum http_parse_result r =
        http_parse(&c->w->http, c->w->rbuf + c->rpos, c->rlen - c->rpos, &used);
    c->rpos += (uint32_t)used;
    if (r == HTTP_PARSE_MORE)
      break;
    answered = true;
    answer(c, r == HTTP_PARSE_REQUEST ? &c->w->http.req : NULL,
           c->w->http.error_status);
  }
  flush(c);
  if (c->life.state != CONN_READING)
    return; /* writing (the rest of rbuf waits), holding, or ending */
  c->rpos = c->rlen = 0;
  if (c->life.peer_eof) { /* it came while holding */
    step(c, CONN_PEER_EOF);
    return;
  }
  /* Draining: a connection that has been answered, has nothing begun and
   * nothing more sent is done. One that never sent a request waits for its
   * first. */
  if (c->srv->mode == SERVER_DRAINING && c->answered > 0 && parser_idle(c) &&
      !input_waiting(c)) {
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
  if (c->life.state != CONN_READING && c->life.state != CONN_HOLDING) {
    *buf = uv_buf_init(discard_buf, sizeof discard_buf);
    return;
  }
  if (!c->w && work_begins(c)) {
    /* Out of memory: a zero-length buffer, which libuv reports as
     * UV_ENOBUFS (on_read closes). */
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  /* Holding reads ahead into the free end (read_ahead). Otherwise reading
   * is on only when rbuf holds nothing unparsed: all of it is free. */
  if (c->life.state == CONN_HOLDING)
    *buf = uv_buf_init(c->w->rbuf + c->rlen, CONN_RBUF - c->rlen);
  else
    *buf = uv_buf_init(c->w->rbuf, CONN_RBUF);
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
  process(c, false);
}

static void on_conn_timer(uv_timer_t *timer) {
  struct conn *c = container_of(timer, struct conn, timer);
  uint64_t now = uv_now(c->srv->loop);
  if (now < c->due) { /* moved later since the timer was armed */
    uv_timer_start(&c->timer, on_conn_timer, c->due - now, 0);
    return;
  }
  switch (c->life.state) {
  case CONN_READING:
    if (parser_idle(c) && still_taking(c))
      set_timer(c, c->srv->opts.idle_timeout_ms);
    else if (parser_idle(c))
      step(c, CONN_LAST_QUEUED); /* idle: our FIN, no response */
    else
      answer(c, NULL, 408); /* always the last */
    return;
  case CONN_WRITING:
  case CONN_WRITING_HELD:
  case CONN_WRITING_FILLED:
  case CONN_SHUTTING:
  case CONN_LINGERING:
    check_progress(c, unsent(c));
    return;
  default:
    return; /* holding waits for its response, closing for nothing */
  }
}

/* ---- From accept to close ----------------------------------------------- */

struct conn *conn_io_new(struct server *srv) {
  struct conn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
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

void conn_io_discard(struct conn *c) {
  uv_close((uv_handle_t *)&c->tcp, on_unaccepted_close);
  uv_close((uv_handle_t *)&c->timer, on_unaccepted_close);
}

void conn_io_start(struct conn *c) {
  struct server *srv = c->srv;
  /* TCP_NODELAY is the listener's, which Linux passes on at accept. */
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
    close_now(c);
    return;
  }
  /* The first request must begin within the header timeout. */
  set_timer(c, srv->opts.header_timeout_ms);
}

void conn_io_drain(struct conn *c) {
  if (c->life.state == CONN_READING && c->rpos == c->rlen)
    process(c, false);
}

void conn_io_close(struct conn *c) { close_now(c); }
