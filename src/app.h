/* The service: one loop, and everything on it wired together. The shutdown
 * state machine decides; this module performs each phase's effects. */
#ifndef GRACEFULD_APP_H
#define GRACEFULD_APP_H

#include <uv.h>

#include "config.h"
#include "counter.h"
#include "incr_queue.h"
#include "metrics.h"
#include "redis_link.h"
#include "server.h"
#include "shutdown.h"

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
  uint64_t abandoned;
  int exit_code;
};

/* Builds the service on loop. Returns 0 or UV_ENOMEM. */
int app_init(struct app *app, uv_loop_t *loop, const struct config *cfg);

/* Listens, connects to Redis and runs the loop until the service is done;
 * every handle is closed when it returns. Returns the exit status:
 * 0 drained, 1 failure, 3 increments abandoned, 4 increments failed. */
int app_run(struct app *app);

#endif
