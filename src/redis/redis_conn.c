#include "redis/redis_conn.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <openssl/err.h>

#include "base.h"

#define READ_CHUNK 16384

enum conn_state {
  CONN_CONNECTING,    /* the TCP or unix connect is in progress */
  CONN_HANDSHAKING,   /* TLS: connected, the handshake in progress */
  CONN_UP,            /* on_connect said so: commands go out */
  CONN_DISCONNECTING, /* no more commands; closes once every reply is in */
  CONN_GONE,          /* torn down: the handles are closing */
};

struct pending {
  redis_conn_reply_fn *fn;
  void *privdata;
};

/* A growing byte buffer. */
struct bytes {
  char *data;
  size_t len, cap;
};

struct redis_conn {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } io;
  uv_prepare_t flusher; /* started while there is output to write */
  uv_connect_t connect_req;
  uv_write_t write_req;
  enum conn_state state;
  const struct redis_conn_handlers *handlers;
  void *data;
  const char *transport;
  SSL *ssl; /* NULL: plain text */
  redisReader *reader;
  /* Commands waiting for their replies, oldest at head: a ring. */
  struct pending *queue;
  size_t head, count, cap;
  struct bytes out;     /* queued by the caller, not yet written */
  struct bytes writing; /* handed to uv_write, until its callback */
  bool write_in_flight;
  int closes_pending;
  /* Inside one of our callbacks: a free asked for then waits for it to
   * return (free_asked), as hiredis's REDIS_IN_CALLBACK does. */
  unsigned depth;
  bool free_asked;
  char rbuf[READ_CHUNK];  /* what the socket gave */
  char plain[READ_CHUNK]; /* TLS: what it decrypted to */
};

static void teardown(struct redis_conn *conn, const char *err);

void *redis_conn_data(const struct redis_conn *conn) { return conn->data; }

const char *redis_conn_transport(const struct redis_conn *conn) {
  return conn->transport;
}

static int reserve(struct bytes *b, size_t more) {
  if (b->cap - b->len >= more)
    return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap - b->len < more)
    cap *= 2;
  char *data = realloc(b->data, cap);
  if (!data)
    return UV_ENOMEM;
  b->data = data;
  b->cap = cap;
  return 0;
}

static int push_pending(struct redis_conn *conn, redis_conn_reply_fn *fn,
                        void *privdata) {
  if (conn->count == conn->cap) {
    size_t cap = conn->cap ? conn->cap * 2 : 64;
    struct pending *q = malloc(cap * sizeof *q);
    if (!q)
      return UV_ENOMEM;
    for (size_t i = 0; i < conn->count; i++)
      q[i] = conn->queue[(conn->head + i) % conn->cap];
    free(conn->queue);
    conn->queue = q;
    conn->head = 0;
    conn->cap = cap;
  }
  conn->queue[(conn->head + conn->count) % conn->cap] =
      (struct pending){fn, privdata};
  conn->count++;
  return 0;
}

static struct pending pop_pending(struct redis_conn *conn) {
  struct pending p = conn->queue[conn->head];
  conn->head = (conn->head + 1) % conn->cap;
  conn->count--;
  return p;
}

/* ---- Closing: the memory goes in the last handle's close callback ------- */

static void on_close(uv_handle_t *handle) {
  struct redis_conn *conn = handle->data;
  if (--conn->closes_pending > 0)
    return;
  SSL_free(conn->ssl);
  redisReaderFree(conn->reader);
  free(conn->queue);
  free(conn->out.data);
  free(conn->writing.data);
  free(conn);
}

static void close_handles(struct redis_conn *conn) {
  conn->closes_pending = 2;
  uv_close(&conn->io.handle, on_close);
  uv_close((uv_handle_t *)&conn->flusher, on_close);
}

/* After one of our callbacks returned: what it asked for, now. */
static void after_callback(struct redis_conn *conn) {
  if (conn->depth > 0 || conn->state == CONN_GONE)
    return;
  if (conn->free_asked ||
      (conn->state == CONN_DISCONNECTING && conn->count == 0))
    teardown(conn, NULL);
}

/* ---- Writing ------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status);

/* Moves what TLS has made ready to send into writing. */
static int drain_tls(struct redis_conn *conn) {
  BIO *wbio = SSL_get_wbio(conn->ssl);
  size_t n = BIO_ctrl_pending(wbio);
  if (n == 0)
    return 0;
  if (reserve(&conn->writing, n) != 0)
    return UV_ENOMEM;
  int got = BIO_read(wbio, conn->writing.data + conn->writing.len, (int)n);
  if (got > 0)
    conn->writing.len += (size_t)got;
  return 0;
}

/* Hands everything queued to one uv_write, unless one is in flight (its
 * callback comes back here). */
static void flush(struct redis_conn *conn) {
  if (conn->state == CONN_GONE || conn->write_in_flight)
    return;
  uv_prepare_stop(&conn->flusher);
  int rc = 0;
  if (conn->ssl) {
    if (conn->out.len > 0 && conn->state != CONN_HANDSHAKING) {
      if (SSL_write(conn->ssl, conn->out.data, (int)conn->out.len) <= 0) {
        char why[320];
        redis_tls_error(conn->ssl, "TLS write", why, sizeof why);
        teardown(conn, why);
        return;
      }
      conn->out.len = 0;
    }
    rc = drain_tls(conn);
  } else if (conn->out.len > 0) {
    struct bytes b = conn->writing; /* empty: no write in flight */
    conn->writing = conn->out;
    conn->out = b;
    conn->out.len = 0;
  }
  if (rc != 0) {
    teardown(conn, "out of memory");
    return;
  }
  if (conn->writing.len == 0)
    return;
  uv_buf_t buf = uv_buf_init(conn->writing.data, (unsigned)conn->writing.len);
  rc = uv_write(&conn->write_req, &conn->io.stream, &buf, 1, on_write);
  if (rc != 0) {
    teardown(conn, uv_strerror(rc));
    return;
  }
  conn->write_in_flight = true;
}

static void on_write(uv_write_t *req, int status) {
  struct redis_conn *conn = container_of(req, struct redis_conn, write_req);
  conn->write_in_flight = false;
  if (conn->state == CONN_GONE)
    return; /* cancelled by the close */
  conn->writing.len = 0;
  if (status < 0) {
    teardown(conn, uv_strerror(status));
    return;
  }
  if (conn->out.len > 0 ||
      (conn->ssl && BIO_ctrl_pending(SSL_get_wbio(conn->ssl)) > 0))
    flush(conn);
}

static void on_flush(uv_prepare_t *prepare) {
  flush(container_of(prepare, struct redis_conn, flusher));
}

/* Output is waiting: written before the loop next waits for events. */
static void want_flush(struct redis_conn *conn) {
  if (!conn->write_in_flight)
    uv_prepare_start(&conn->flusher, on_flush);
}

int redis_conn_send(struct redis_conn *conn, redis_conn_reply_fn *fn,
                    void *privdata, const char *cmd, size_t len) {
  if (conn->state != CONN_UP || conn->free_asked)
    return UV_ENOTCONN;
  if (reserve(&conn->out, len) != 0 || push_pending(conn, fn, privdata) != 0)
    return UV_ENOMEM;
  memcpy(conn->out.data + conn->out.len, cmd, len);
  conn->out.len += len;
  want_flush(conn);
  return 0;
}

int redis_conn_send_argv(struct redis_conn *conn, redis_conn_reply_fn *fn,
                         void *privdata, int argc, const char **argv) {
  char *cmd;
  int len = redisFormatCommandArgv(&cmd, argc, argv, NULL);
  if (len < 0)
    return UV_ENOMEM;
  int rc = redis_conn_send(conn, fn, privdata, cmd, (size_t)len);
  redisFreeCommand(cmd);
  return rc;
}

/* ---- Reading ------------------------------------------------------------- */

/* Hands every whole reply in the reader to its command's callback. */
static void dispatch(struct redis_conn *conn) {
  while (conn->state != CONN_GONE && !conn->free_asked) {
    void *reply = NULL;
    if (redisReaderGetReply(conn->reader, &reply) != REDIS_OK) {
      char why[160];
      snprintf(why, sizeof why, "protocol error: %s", conn->reader->errstr);
      teardown(conn, why);
      return;
    }
    if (!reply)
      return;
    if (conn->count == 0) {
      freeReplyObject(reply);
      teardown(conn, "protocol error: a reply to no command");
      return;
    }
    struct pending p = pop_pending(conn);
    conn->depth++;
    p.fn(conn, reply, p.privdata);
    conn->depth--;
    freeReplyObject(reply);
    after_callback(conn);
  }
}

static void feed(struct redis_conn *conn, const char *data, size_t len) {
  if (redisReaderFeed(conn->reader, data, len) != REDIS_OK) {
    teardown(conn, "out of memory");
    return;
  }
  dispatch(conn);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  struct redis_conn *conn = handle->data;
  (void)suggested;
  *buf = uv_buf_init(conn->rbuf, sizeof conn->rbuf);
}

static void connected(struct redis_conn *conn) {
  conn->state = CONN_UP;
  conn->depth++;
  conn->handlers->on_connect(conn, NULL);
  conn->depth--;
  after_callback(conn);
}

/* A connect that did not come up: said once through on_connect. */
static void connect_failed(struct redis_conn *conn, const char *why) {
  conn->state = CONN_GONE;
  conn->depth++;
  conn->handlers->on_connect(conn, why);
  conn->depth--;
  close_handles(conn);
}

/* Steps the TLS handshake on; then decrypts what came after it. */
static void tls_read(struct redis_conn *conn) {
  char why[320];
  if (conn->state == CONN_HANDSHAKING) {
    int r = SSL_do_handshake(conn->ssl);
    if (r != 1) {
      if (SSL_get_error(conn->ssl, r) != SSL_ERROR_WANT_READ) {
        redis_tls_error(conn->ssl, "TLS handshake", why, sizeof why);
        connect_failed(conn, why);
        return;
      }
      flush(conn);
      return;
    }
    flush(conn);
    if (conn->state == CONN_GONE)
      return;
    connected(conn);
  }
  BIO *rbio = SSL_get_rbio(conn->ssl);
  /* Only while there is something to decrypt: an SSL_read that can only
   * say SSL_ERROR_WANT_READ costs as much as a small record. */
  while (conn->state != CONN_GONE && !conn->free_asked &&
         (BIO_ctrl_pending(rbio) > 0 || SSL_has_pending(conn->ssl))) {
    int n = SSL_read(conn->ssl, conn->plain, sizeof conn->plain);
    if (n <= 0) {
      int e = SSL_get_error(conn->ssl, n);
      if (e == SSL_ERROR_WANT_READ)
        break;
      if (e == SSL_ERROR_ZERO_RETURN)
        teardown(conn, "the server closed the TLS session");
      else {
        redis_tls_error(conn->ssl, "TLS read", why, sizeof why);
        teardown(conn, why);
      }
      return;
    }
    feed(conn, conn->plain, (size_t)n);
  }
  /* Reading may have made TLS want to write (a key update). */
  if (conn->state != CONN_GONE && BIO_ctrl_pending(SSL_get_wbio(conn->ssl)))
    want_flush(conn);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  struct redis_conn *conn = stream->data;
  if (conn->state == CONN_GONE || nread == 0)
    return;
  if (nread < 0) {
    const char *why = nread == UV_EOF ? "the server closed the connection"
                                      : uv_strerror((int)nread);
    if (conn->state == CONN_HANDSHAKING)
      connect_failed(conn, why);
    else
      teardown(conn, why);
    return;
  }
  if (!conn->ssl) {
    feed(conn, buf->base, (size_t)nread);
    return;
  }
  if (BIO_write(SSL_get_rbio(conn->ssl), buf->base, (int)nread) != nread) {
    teardown(conn, "out of memory");
    return;
  }
  tls_read(conn);
}

static void on_connected(uv_connect_t *req, int status) {
  struct redis_conn *conn = container_of(req, struct redis_conn, connect_req);
  if (conn->state == CONN_GONE)
    return; /* freed while connecting: the close cancelled this */
  if (status < 0) {
    connect_failed(conn, uv_strerror(status));
    return;
  }
  int rc = uv_read_start(&conn->io.stream, on_alloc, on_read);
  if (rc != 0) {
    connect_failed(conn, uv_strerror(rc));
    return;
  }
  if (!conn->ssl) {
    connected(conn);
    return;
  }
  conn->state = CONN_HANDSHAKING;
  int r = SSL_do_handshake(conn->ssl); /* the ClientHello */
  if (r != 1 && SSL_get_error(conn->ssl, r) != SSL_ERROR_WANT_READ) {
    char why[320];
    redis_tls_error(conn->ssl, "TLS handshake", why, sizeof why);
    connect_failed(conn, why);
    return;
  }
  flush(conn);
}

/* ---- Opening and closing ------------------------------------------------- */

int redis_conn_open(uv_loop_t *loop, const struct redis_conn_target *target,
                    const struct redis_conn_handlers *handlers, void *data,
                    struct redis_conn **out) {
  struct sockaddr_storage addr;
  int rc = 0;
  if (!target->path &&
      uv_ip4_addr(target->ip, target->port, (struct sockaddr_in *)&addr) != 0)
    rc = uv_ip6_addr(target->ip, target->port, (struct sockaddr_in6 *)&addr);
  if (rc != 0)
    return rc;
  struct redis_conn *conn = calloc(1, sizeof *conn);
  if (!conn)
    return UV_ENOMEM;
  conn->handlers = handlers;
  conn->data = data;
  conn->reader = redisReaderCreate();
  if (!conn->reader) {
    rc = UV_ENOMEM;
    goto fail;
  }
  if (target->tls && !target->path) {
    conn->ssl = redis_tls_session(target->tls, target->host);
    if (!conn->ssl) {
      rc = UV_ENOMEM;
      goto fail;
    }
  }
  if (target->path) {
    conn->transport = "unix";
    uv_pipe_init(loop, &conn->io.pipe, 0);
  } else {
    conn->transport = conn->ssl ? "tls" : "tcp";
    uv_tcp_init(loop, &conn->io.tcp);
    uv_tcp_nodelay(&conn->io.tcp, 1);
  }
  uv_prepare_init(loop, &conn->flusher);
  conn->io.handle.data = conn;
  conn->flusher.data = conn;
  conn->state = CONN_CONNECTING;
  if (target->path) {
    uv_pipe_connect(&conn->connect_req, &conn->io.pipe, target->path,
                    on_connected);
  } else {
    rc = uv_tcp_connect(&conn->connect_req, &conn->io.tcp,
                        (const struct sockaddr *)&addr, on_connected);
    if (rc != 0) {
      conn->state = CONN_GONE;
      close_handles(conn); /* frees conn; no callback of the caller's */
      return rc;
    }
  }
  *out = conn;
  return 0;

fail:
  SSL_free(conn->ssl);
  redisReaderFree(conn->reader);
  free(conn);
  return rc;
}

/* Says goodbye to TLS, best effort and without waiting: the close_notify
 * goes if the socket takes it now. */
static void tls_goodbye(struct redis_conn *conn) {
  if (SSL_shutdown(conn->ssl) < 0) {
    ERR_clear_error();
    return;
  }
  conn->writing.len = 0; /* nothing in flight here: see teardown */
  if (drain_tls(conn) == 0 && conn->writing.len > 0) {
    uv_buf_t buf = uv_buf_init(conn->writing.data, (unsigned)conn->writing.len);
    uv_try_write(&conn->io.stream, &buf, 1);
  }
}

/* The end, at once (or once the callback we are in returns): replies owed
 * come as NULL, on_disconnect is told, the handles close. */
static void teardown(struct redis_conn *conn, const char *err) {
  if (conn->state == CONN_GONE)
    return;
  if (conn->depth > 0) {
    conn->free_asked = true; /* after_callback comes back here */
    return;
  }
  enum conn_state was = conn->state;
  conn->state = CONN_GONE;
  uv_prepare_stop(&conn->flusher);
  if (was == CONN_UP || was == CONN_DISCONNECTING) {
    if (conn->ssl && !err && !conn->write_in_flight)
      tls_goodbye(conn);
    conn->depth++;
    while (conn->count > 0) {
      struct pending p = pop_pending(conn);
      p.fn(conn, NULL, p.privdata);
    }
    conn->handlers->on_disconnect(conn, err);
    conn->depth--;
  }
  close_handles(conn);
}

void redis_conn_disconnect(struct redis_conn *conn) {
  if (conn->state != CONN_UP) {
    if (conn->state != CONN_DISCONNECTING)
      redis_conn_free(conn);
    return;
  }
  conn->state = CONN_DISCONNECTING;
  after_callback(conn);
}

void redis_conn_free(struct redis_conn *conn) { teardown(conn, NULL); }
