/* The connection to Redis: hiredis async on the loop through a small
 * adapter of our own, reconnecting with capped exponential backoff and
 * jitter, and tracking every increment from "due" to "replied".
 *
 * An increment handed over with redis_link_add_due waits in `due` until the
 * link is up and the in-flight window has room, then goes out as one INCR
 * (many per write when many are due together). A reply moves it to done (or
 * failed, for an error reply). When a connection breaks, the INCRs still in
 * flight go back to `due` and are sent again on the next connection: the
 * count is at least once, never lost while the process lives. */
#ifndef GRACEFULD_REDIS_LINK_H
#define GRACEFULD_REDIS_LINK_H

#include <stdbool.h>
#include <stdint.h>

#include <hiredis/async.h>
#include <uv.h>

#include "config.h"
#include "metrics.h"

enum redis_link_state {
  LINK_IDLE,       /* not started, or waiting out a backoff */
  LINK_RESOLVING,  /* uv_getaddrinfo in progress */
  LINK_CONNECTING, /* TCP connect in progress */
  LINK_CONNECTED,
  LINK_CLOSED, /* redis_link_close was called */
};

struct redis_link;
/* Called when nothing is due or in flight any more. */
typedef void (*redis_link_idle_cb)(struct redis_link *link);

struct redis_link {
  uv_loop_t *loop;
  const struct config *cfg;
  struct metrics *metrics;
  redisAsyncContext *ac;
  enum redis_link_state state;
  uv_timer_t timer; /* backoff, connect timeout or reply watchdog */
  uv_getaddrinfo_t resolver;
  uint64_t due;           /* increments waiting to be sent */
  uint64_t in_flight;     /* INCRs sent, reply not yet read */
  uint64_t last_progress; /* uv_now of the last reply (or first send) */
  uint64_t down_since;    /* uv_now when the link was last lost */
  unsigned failures;      /* consecutive failed attempts */
  bool ever_connected;
  bool down_logged;
  uint32_t rng;
  redis_link_idle_cb on_idle;
  size_t cmd_len;
  char cmd[CONFIG_KEY_MAX + 64]; /* INCR <key>, in protocol form */
};

/* Prepares the link (no connection yet). cfg and metrics must outlive it. */
void redis_link_init(struct redis_link *link, uv_loop_t *loop,
                     const struct config *cfg, struct metrics *metrics,
                     redis_link_idle_cb on_idle);

/* Starts connecting; the link keeps itself connected from then on. */
void redis_link_start(struct redis_link *link);

/* n more increments are due: send them now if the link is up. */
void redis_link_add_due(struct redis_link *link, uint64_t n);

/* Increments the link holds: due plus in flight. */
uint64_t redis_link_pending(const struct redis_link *link);

bool redis_link_connected(const struct redis_link *link);

/* Drops the connection and closes the link's handles; increments still held
 * are given up (the caller counts them first). No callback is called after
 * this. */
void redis_link_close(struct redis_link *link);

#endif
