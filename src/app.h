/* The service: one loop, and everything on it wired together. The shutdown
 * state machine decides; this module performs each phase's effects. */
#ifndef GRACEFULD_APP_H
#define GRACEFULD_APP_H

#include <uv.h>

#include "config.h"
#include "incr/counter.h"
#include "incr/incr_queue.h"
#include "metrics.h"
#include "redis/redis_link.h"
#include "http/server.h"
#include "shutdown.h"

/* Journal writes in flight at most: the /incr that come meanwhile wait for
 * the next one, which carries them all (see on_turn_end). */
#define APP_WRITES_MAX 1

/* A journal write in flight and the /incr it holds. */
struct app_write {
  uint64_t seq;    /* the counter's write number */
  uint64_t ticket; /* the held responses' (server_fill) */
  uint64_t n;
};

struct app {
  uv_loop_t *loop;
  const struct config *cfg;
  struct metrics metrics;
  struct server server;
  struct incr_queue queue;
  struct redis_link link;
  struct counter counter;
  struct shutdown shutdown;
  uv_signal_t sigterm;
  uv_signal_t sigint;
  uv_signal_t sighup;
  uv_timer_t delay_timer;    /* the end of delaying */
  uv_timer_t deadline_timer; /* SHUTDOWN_TIMEOUT_MS after the first signal */
  uint64_t abandoned;        /* memory mode: pending when the process gave up */
  uint64_t handed_over;      /* journal mode: left in the journal at the end */
  bool wound_up;
  /* Journal mode: the /incr of the loop turn under way, held for one
   * write (turn_n of them, ticket turn), and the writes in flight. */
  uv_check_t turn_check;
  uint64_t turn;
  uint64_t turn_n;
  uint64_t tickets;
  struct http_response incr_ok;
  struct app_write writes[APP_WRITES_MAX];
  uint64_t writes_head;
  uint64_t writes_len;
  int exit_code;
};

/* Builds the service on loop. Returns 0 or UV_ENOMEM. */
int app_init(struct app *app, uv_loop_t *loop, const struct config *cfg);

/* Listens, connects to Redis and runs the loop until the service is done;
 * every handle is closed when it returns. Returns the exit status:
 * 0 drained, 1 failure, 3 increments abandoned, 4 increments failed. */
int app_run(struct app *app);

#endif
