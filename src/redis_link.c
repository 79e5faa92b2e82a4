#include "redis_link.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* INCRs in flight at most: bounds hiredis's buffers when a long outage ends
 * with millions due, and keeps the replies flowing. */
#define WINDOW 8192
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

/* ---- The adapter: hiredis's ev hooks on a uv_poll_t ------------------------
 *
 * hiredis's bundled libuv adapter drops poll errors, so a refused connect is
 * never reported. This one passes an error on to hiredis as the event it
 * waits for, letting it find the error on the socket itself. The poll handle
 * lives as long as the hiredis context: it is created on connect, closed in
 * the cleanup hook, and freed in its close callback. */

struct redis_poll {
  uv_poll_t handle;
  redisAsyncContext *ac;
  int events;
  bool closed; /* cleanup ran: the context is gone */
};

static void on_poll(uv_poll_t *handle, int status, int events);

static void poll_update(struct redis_poll *p, int events) {
  if (p->closed || events == p->events)
    return;
  p->events = events;
  if (events)
    uv_poll_start(&p->handle, events, on_poll);
  else
    uv_poll_stop(&p->handle);
}

static void ev_add_read(void *data) {
  struct redis_poll *p = data;
  poll_update(p, p->events | UV_READABLE);
}

static void ev_del_read(void *data) {
  struct redis_poll *p = data;
  poll_update(p, p->events & ~UV_READABLE);
}

static void ev_add_write(void *data) {
  struct redis_poll *p = data;
  poll_update(p, p->events | UV_WRITABLE);
}

static void ev_del_write(void *data) {
  struct redis_poll *p = data;
  poll_update(p, p->events & ~UV_WRITABLE);
}

static void on_poll_close(uv_handle_t *handle) { free(handle->data); }

static void ev_cleanup(void *data) {
  struct redis_poll *p = data;
  if (p->closed)
    return;
  p->closed = true;
  p->ac->ev.data = NULL;
  uv_close((uv_handle_t *)&p->handle, on_poll_close);
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  struct redis_poll *p = handle->data;
  redisAsyncContext *ac = p->ac;

  if (status < 0) {
    /* libuv has stopped watching. The error is on the socket: let hiredis
     * read it, through the event it is waiting for. */
    p->events = 0;
    if (!(ac->c.flags & REDIS_CONNECTED))
      redisAsyncHandleWrite(ac);
    else
      redisAsyncHandleRead(ac);
    if (!p->closed) {
      /* hiredis found nothing wrong; never leave a context unwatched. */
      log_debug("redis_poll", LOG_STR("status", uv_err_name(status)));
      redisAsyncFree(ac);
    }
    return;
  }
  if (events & UV_READABLE)
    redisAsyncHandleRead(ac);
  if (!p->closed && (events & UV_WRITABLE))
    redisAsyncHandleWrite(ac);
}

static int attach(redisAsyncContext *ac, uv_loop_t *loop) {
  struct redis_poll *p = calloc(1, sizeof *p);
  if (!p)
    return UV_ENOMEM;
  int rc = uv_poll_init_socket(loop, &p->handle, ac->c.fd);
  if (rc) {
    free(p);
    return rc;
  }
  p->handle.data = p;
  p->ac = ac;
  ac->ev.data = p;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  return 0;
}

/* ---- The link ---------------------------------------------------------------
 */

static void connect_now(struct redis_link *link);
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

static uint32_t next_random(struct redis_link *link) {
  /* xorshift32: jitter needs spread, not quality. */
  uint32_t x = link->rng;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return link->rng = x;
}

void redis_link_init(struct redis_link *link, uv_loop_t *loop,
                     const struct config *cfg, struct metrics *metrics,
                     redis_link_idle_cb on_idle) {
  memset(link, 0, sizeof *link);
  link->loop = loop;
  link->cfg = cfg;
  link->metrics = metrics;
  link->on_idle = on_idle;
  link->state = LINK_IDLE;
  link->rng = (uint32_t)uv_hrtime() | 1;
  uv_timer_init(loop, &link->timer);
  link->timer.data = link;
  link->resolver.data = link;
  size_t key_len = strlen(cfg->counter_key);
  int n = snprintf(link->cmd, sizeof link->cmd, "*2\r\n$4\r\nINCR\r\n$%zu\r\n",
                   key_len);
  memcpy(link->cmd + n, cfg->counter_key, key_len);
  memcpy(link->cmd + n + key_len, "\r\n", 2);
  link->cmd_len = (size_t)n + key_len + 2;
}

uint64_t redis_link_pending(const struct redis_link *link) {
  return link->due + link->in_flight;
}

bool redis_link_connected(const struct redis_link *link) {
  return link->state == LINK_CONNECTED;
}

static void on_backoff(uv_timer_t *timer) { connect_now(timer->data); }

/* A connect attempt failed or a connection was lost: try again after a
 * backoff. Only the change of state is logged, not every attempt. */
static void retry_later(struct redis_link *link, const char *why) {
  uint64_t now = uv_now(link->loop);
  link->ac = NULL;
  if (link->state == LINK_CLOSED)
    return;
  if (!link->down_logged) {
    link->down_logged = true;
    link->down_since = now;
    char addr[300];
    snprintf(addr, sizeof addr, "%s:%u", link->cfg->redis_host,
             link->cfg->redis_port);
    log_warn("redis_down", LOG_STR("addr", addr), LOG_STR("reason", why),
             LOG_UINT("pending", redis_link_pending(link)),
             LOG_STR("retrying", "backoff"));
  } else {
    log_debug("redis_retry", LOG_STR("reason", why),
              LOG_UINT("failures", link->failures));
  }
  link->state = LINK_IDLE;
  unsigned shift = link->failures < 5 ? link->failures : 5;
  uint64_t ceiling = (uint64_t)BACKOFF_MIN_MS << shift;
  if (ceiling > BACKOFF_MAX_MS)
    ceiling = BACKOFF_MAX_MS;
  /* Half fixed, half random: spread out, but never back to back. */
  uint64_t delay = ceiling / 2 + next_random(link) % (ceiling / 2 + 1);
  link->failures++;
  uv_timer_start(&link->timer, on_backoff, delay, 0);
}

static void on_connect_timeout(uv_timer_t *timer) {
  struct redis_link *link = timer->data;
  redisAsyncContext *ac = link->ac;
  /* Not connected yet, so freeing runs no callback of ours. */
  link->ac = NULL;
  redisAsyncFree(ac);
  retry_later(link, "connect timed out");
}

static void on_watchdog(uv_timer_t *timer);

static void arm_watchdog(struct redis_link *link) {
  uint64_t now = uv_now(link->loop);
  uint64_t due = link->last_progress + link->cfg->redis_timeout_ms;
  uv_timer_start(&link->timer, on_watchdog, due > now ? due - now : 0, 0);
}

static void on_watchdog(uv_timer_t *timer) {
  struct redis_link *link = timer->data;
  if (link->state != LINK_CONNECTED || link->in_flight == 0)
    return;
  uint64_t now = uv_now(link->loop);
  if (now - link->last_progress < link->cfg->redis_timeout_ms) {
    arm_watchdog(link);
    return;
  }
  log_warn("redis_timeout", LOG_UINT("in_flight", link->in_flight),
           LOG_UINT("waited_ms", now - link->last_progress));
  /* Outside any hiredis callback: this frees at once, hands the in-flight
   * INCRs back through on_reply(NULL) and calls on_disconnect. */
  redisAsyncFree(link->ac);
}

static void send_due(struct redis_link *link) {
  if (link->state != LINK_CONNECTED)
    return;
  bool was_idle = link->in_flight == 0;
  while (link->due > 0 && link->in_flight < WINDOW) {
    if (redisAsyncFormattedCommand(link->ac, on_reply, NULL, link->cmd,
                                   link->cmd_len) != REDIS_OK)
      break;
    link->due--;
    link->in_flight++;
  }
  if (was_idle && link->in_flight > 0) {
    link->last_progress = uv_now(link->loop);
    arm_watchdog(link);
  }
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata) {
  struct redis_link *link = ac->data;
  redisReply *reply = r;
  (void)privdata;
  link->in_flight--;
  if (!reply) {
    /* The connection broke before the reply: send it again later. */
    if (link->state != LINK_CLOSED) {
      link->due++;
      link->metrics->incr_retried++;
    }
    return;
  }
  link->last_progress = uv_now(link->loop);
  if (reply->type == REDIS_REPLY_INTEGER) {
    link->metrics->incr_done++;
  } else {
    uint64_t failed = ++link->metrics->incr_failed;
    /* One line for the first failures, then one per power of two. */
    if ((failed & (failed - 1)) == 0)
      log_error("incr_failed", LOG_UINT("failed", failed),
                LOG_STRN("reply",
                         reply->type == REDIS_REPLY_ERROR ? reply->str : "",
                         reply->type == REDIS_REPLY_ERROR ? reply->len : 0));
  }
  if (link->due > 0 && link->in_flight < WINDOW / 2)
    send_due(link);
  if (link->in_flight == 0 && link->state == LINK_CONNECTED)
    uv_timer_stop(&link->timer);
  if (link->due == 0 && link->in_flight == 0)
    link->on_idle(link);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  struct redis_link *link = ac->data;
  if (link->state == LINK_CLOSED)
    return;
  uv_timer_stop(&link->timer);
  if (status != REDIS_OK) {
    /* hiredis frees the context when this returns. */
    retry_later(link, ac->errstr);
    return;
  }
  uint64_t now = uv_now(link->loop);
  link->state = LINK_CONNECTED;
  if (link->ever_connected)
    link->metrics->redis_reconnects++;
  if (link->down_logged || !link->ever_connected) {
    char addr[300];
    snprintf(addr, sizeof addr, "%s:%u", link->cfg->redis_host,
             link->cfg->redis_port);
    log_info(
        "redis_up", LOG_STR("addr", addr),
        LOG_UINT("attempts", link->failures + 1),
        LOG_UINT("down_ms", link->down_logged ? now - link->down_since : 0),
        LOG_UINT("pending", redis_link_pending(link)));
  }
  link->ever_connected = true;
  link->down_logged = false;
  link->failures = 0;
  send_due(link);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  struct redis_link *link = ac->data;
  (void)status;
  uv_timer_stop(&link->timer);
  if (link->state == LINK_CLOSED) {
    link->ac = NULL;
    return;
  }
  /* errstr is empty when the watchdog freed the connection itself. */
  retry_later(link, ac->errstr[0] ? ac->errstr : "reply timed out");
  /* INCRs handed back by the broken connection are waiting now. */
}

static void connect_to(struct redis_link *link, const char *ip) {
  redisAsyncContext *ac = redisAsyncConnect(ip, link->cfg->redis_port);
  if (!ac) {
    retry_later(link, "out of memory");
    return;
  }
  if (ac->err) {
    char why[128];
    snprintf(why, sizeof why, "%s", ac->errstr);
    redisAsyncFree(ac);
    retry_later(link, why);
    return;
  }
  int rc = attach(ac, link->loop);
  if (rc) {
    redisAsyncFree(ac);
    retry_later(link, uv_strerror(rc));
    return;
  }
  ac->data = link;
  link->ac = ac;
  link->state = LINK_CONNECTING;
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  /* Registering the connect callback asks for the first write event, which
   * is how a non-blocking connect reports its outcome. */
  redisAsyncSetConnectCallback(ac, on_connect);
  uv_timer_start(&link->timer, on_connect_timeout, link->cfg->redis_timeout_ms,
                 0);
}

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  struct redis_link *link = req->data;
  char ip[64] = "";
  if (status == 0) {
    /* A name with several addresses (localhost: ::1 and 127.0.0.1): each
     * failed attempt moves on to the next one. */
    unsigned n = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
      n++;
    struct addrinfo *ai = res;
    for (unsigned skip = link->failures % n; skip > 0; skip--)
      ai = ai->ai_next;
    if (ai->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, ip, sizeof ip);
    else
      uv_ip4_name((struct sockaddr_in *)ai->ai_addr, ip, sizeof ip);
  }
  uv_freeaddrinfo(res);
  if (link->state == LINK_CLOSED)
    return;
  if (status != 0) {
    char why[CONFIG_HOST_MAX + 96];
    snprintf(why, sizeof why, "resolving %s: %s", link->cfg->redis_host,
             uv_strerror(status));
    retry_later(link, why);
    return;
  }
  connect_to(link, ip);
}

static void connect_now(struct redis_link *link) {
  const char *host = link->cfg->redis_host;
  struct sockaddr_in6 a6;
  struct sockaddr_in a4;
  if (uv_ip4_addr(host, 0, &a4) == 0 || uv_ip6_addr(host, 0, &a6) == 0) {
    connect_to(link, host);
    return;
  }
  /* A name: resolved again at every attempt, so a Service or a restarted
   * Redis with a new address is found. */
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  link->state = LINK_RESOLVING;
  int rc = uv_getaddrinfo(link->loop, &link->resolver, on_resolved, host, NULL,
                          &hints);
  if (rc)
    retry_later(link, uv_strerror(rc));
}

void redis_link_start(struct redis_link *link) {
  if (link->state == LINK_IDLE && !uv_is_active((uv_handle_t *)&link->timer))
    connect_now(link);
}

void redis_link_add_due(struct redis_link *link, uint64_t n) {
  link->due += n;
  send_due(link);
}

void redis_link_close(struct redis_link *link) {
  enum redis_link_state was = link->state;
  if (was == LINK_CLOSED)
    return;
  link->state = LINK_CLOSED;
  uv_timer_stop(&link->timer);
  if (was == LINK_RESOLVING)
    uv_cancel((uv_req_t *)&link->resolver);
  if (link->ac) {
    redisAsyncContext *ac = link->ac;
    if (was == LINK_CONNECTED && link->in_flight == 0) {
      /* Clean: deferred by hiredis if we are inside one of its callbacks. */
      redisAsyncDisconnect(ac);
    } else {
      link->ac = NULL;
      redisAsyncFree(ac);
    }
  }
  uv_close((uv_handle_t *)&link->timer, NULL);
}
