/* accept4 and SO_ATTACH_FILTER are Linux interfaces. */
#define _GNU_SOURCE
#include "http/server.h"

#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <linux/filter.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base.h"
#include "http/conn_io.h"
#include "log.h"

/* Draining: how long the listener stays open, with new handshakes stopped,
 * for the handshakes already answered with a SYN-ACK to complete. */
#define HANDSHAKE_GRACE_MS 100
#define LISTEN_BACKLOG 4096

/* The answer of a connection past max_connections, before it is closed. */
#define TOO_MANY "too many connections\n"
static const struct http_response too_many = {
    .status = 503,
    .extra_headers = "Retry-After: 1\r\n",
    .body = TOO_MANY,
    .body_len = sizeof TOO_MANY - 1,
};
_Static_assert(sizeof TOO_MANY - 1 <=
                   sizeof((struct server *)0)->busy_reply - HTTP_HEAD_MAX,
               "busy_reply holds the head and the body of too_many");

static void maybe_drained(struct server *srv) {
  if (srv->mode != SERVER_DRAINING || srv->listener_open ||
      srv->stats.open > 0 || srv->drained_reported)
    return;
  srv->drained_reported = true;
  srv->on_drained(srv);
}

void server_conn_gone(struct server *srv, struct conn *c) {
  list_remove(&srv->conns, &c->in_server);
  srv->stats.open--;
  maybe_drained(srv);
}

/* ---- Accepting ---------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status);

static void on_rejected_close(uv_handle_t *handle) { free(handle); }

static void on_spare_close(uv_handle_t *handle) {
  struct server *srv = container_of(handle, struct server, spare);
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
  uv_tcp_t *tcp = malloc(sizeof *tcp);
  uv_close_cb on_close = on_rejected_close;
  if (!tcp) {
    if (srv->spare_busy) {
      srv->accept_waiting = true;
      return;
    }
    srv->spare_busy = true;
    tcp = &srv->spare;
    on_close = on_spare_close;
  }
  uv_tcp_init(srv->loop, tcp);
  if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)tcp) == 0) {
    srv->stats.accepted++;
    srv->stats.rejected++;
    if (busy) {
      uv_buf_t b = uv_buf_init(srv->busy_reply, (unsigned)srv->busy_reply_len);
      uv_try_write((uv_stream_t *)tcp, &b, 1);
    }
  }
  uv_close((uv_handle_t *)tcp, on_close);
}

/* Takes an accepted connection (through accept, or an fd the final sweep
 * accepted) into the list, and starts it. */
static void start_conn(struct server *srv, struct conn *c) {
  srv->stats.accepted++;
  list_append(&srv->conns, &c->in_server);
  srv->stats.open++;
  conn_io_start(c);
}

static void on_connection(uv_stream_t *listener, int status) {
  struct server *srv = container_of(listener, struct server, listener);
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
  if (srv->stats.open >= srv->opts.max_connections) {
    reject(srv, true);
    return;
  }
  struct conn *c = conn_io_new(srv);
  if (!c) {
    reject(srv, false);
    return;
  }
  if (uv_accept(listener, (uv_stream_t *)&c->tcp)) {
    conn_io_discard(c);
    return;
  }
  start_conn(srv, c);
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
        srv->stats.open < srv->opts.max_connections ? conn_io_new(srv) : NULL;
    if (!c || uv_tcp_open(&c->tcp, fd)) {
      srv->stats.accepted++;
      srv->stats.rejected++;
      close(fd);
      if (c)
        conn_io_discard(c);
      continue;
    }
    start_conn(srv, c);
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

void server_init(struct server *srv, uv_loop_t *loop,
                 const struct server_options *opts, server_respond_cb respond,
                 server_drained_cb on_drained) {
  memset(srv, 0, sizeof *srv);
  srv->loop = loop;
  srv->opts = *opts;
  srv->respond = respond;
  srv->on_drained = on_drained;
  srv->mode = SERVER_KEEP_ALIVE;
  /* Formatted once here, so that refusing costs the loop no work. */
  size_t head = http_format_head(srv->busy_reply, &too_many, HTTP_CONN_CLOSE);
  memcpy(srv->busy_reply + head, too_many.body, too_many.body_len);
  srv->busy_reply_len = head + too_many.body_len;
  uv_tcp_init(loop, &srv->listener);
  uv_timer_init(loop, &srv->grace_timer);
}

int server_listen(struct server *srv) {
  int rc = uv_tcp_bind(&srv->listener,
                       (const struct sockaddr *)&srv->opts.listen_addr, 0);
  /* Set once here, every accepted socket inherits it (Linux), which spares
   * each connection a setsockopt. */
  if (rc == 0)
    rc = uv_tcp_nodelay(&srv->listener, 1);
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
  struct server *srv = container_of(handle, struct server, listener);
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
  struct server *srv = container_of(timer, struct server, grace_timer);
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
  for (struct list_link *k = srv->conns.first; k; k = k->next)
    conn_io_drain(container_of(k, struct conn, in_server));
}

uint64_t server_fill(struct server *srv, uint64_t ticket,
                     const struct http_response *resp) {
  uint64_t n = 0;
  struct list_link *next;
  for (struct list_link *k = srv->held.first; k; k = next) {
    next = k->next; /* filled in, c leaves the index */
    struct conn *c = container_of(k, struct conn, in_held);
    if (c->ticket != ticket)
      continue;
    n++;
    conn_io_fill(c, resp);
  }
  return n;
}

void server_close(struct server *srv) {
  srv->mode = SERVER_CLOSED;
  close_listener(srv);
  for (struct list_link *k = srv->conns.first; k; k = k->next)
    conn_io_close(container_of(k, struct conn, in_server));
  if (!uv_is_closing((uv_handle_t *)&srv->grace_timer))
    uv_close((uv_handle_t *)&srv->grace_timer, NULL);
}
