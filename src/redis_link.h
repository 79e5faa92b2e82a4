/* The connection to Redis: hiredis async on the loop through a small
 * adapter of our own, reconnecting with capped exponential backoff and
 * jitter, and tracking every increment from "due" to "replied".
 *
 * An increment handed over with redis_link_add_due waits in `due` until the
 * link is up and the in-flight window has room, then goes out as one INCR
 * (many per write when many are due together). A reply moves it to done (or
 * failed, for an error reply no retry can fix). When a connection breaks,
 * or a reply says this connection or server cannot take it now (NOAUTH,
 * LOADING, READONLY, BUSY, OOM...: see redis_error.h), the INCRs go back to
 * `due` and are sent again on the next connection: the count is at least
 * once, never lost while the process lives.
 *
 * Every connection is made fit before it counts: the handshake (AUTH,
 * SELECT) is one concern, the due work sent once it is done another. */
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
  LINK_CONNECTING, /* TCP or unix socket connect in progress */
  LINK_ASKING,     /* connected to a Sentinel, the master's address asked */
  LINK_ASKED,      /* the address is known; the Sentinel connection closes
                      and the master is connected to next */
  LINK_HANDSHAKE,  /* AUTH / SELECT / ROLE (or PING) sent, replies awaited */
  LINK_READY,      /* authenticated, database selected: due work goes out */
  LINK_RETIRING,   /* a transient error reply: no more sends; closed and
                      reconnected once the last reply is in */
  LINK_CLOSED,     /* redis_link_close was called */
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
  uint64_t due;            /* increments waiting to be sent */
  uint64_t in_flight;      /* INCRs sent, reply not yet read */
  uint64_t unconfirmed;    /* REDIS_MIN_REPLICAS: INCRs executed, not yet
                              confirmed on enough replicas by a WAIT */
  unsigned waits;          /* WAITs sent, reply not yet read */
  uint64_t last_progress;  /* uv_now of the last reply (or first send) */
  uint64_t down_since;     /* uv_now when the link was last lost */
  unsigned failures;       /* consecutive failed attempts */
  unsigned handshake_left; /* handshake replies still awaited */
  bool ever_ready;         /* a handshake has completed once */
  bool down_logged;
  bool auth_failed_logged; /* since the last successful handshake */
  bool auth_unneeded_logged;
  bool wait_short_logged; /* since the last WAIT that was satisfied */
  bool retiring_logged;   /* since the last reply to due work that counted */
  /* Sentinel: the master's address, when known, is in target; the
   * Sentinel asked next is sentinels[sentinel]. */
  bool master_known;
  bool asking; /* the connection being made is to a Sentinel */
  size_t sentinel;
  struct redis_target target; /* where the next connection goes, and how it
                                 logs in: cfg->redis, or the master */
  const char *host;           /* of the connection being made: target's or a
                                 Sentinel's */
  uint16_t port;
  uint32_t rng;
  redis_link_idle_cb on_idle;
  char addr[REDIS_HOST_MAX + REDIS_USER_MAX + 64]; /* as logged: no password */
  char why[256]; /* why the current connection is being dropped */
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

/* True while the link is ready: connected, authenticated, database
 * selected. */
bool redis_link_connected(const struct redis_link *link);

/* Drops the connection and closes the link's handles; increments still held
 * are given up (the caller counts them first). No callback is called after
 * this. */
void redis_link_close(struct redis_link *link);

#endif
