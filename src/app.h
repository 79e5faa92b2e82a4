/* The service: one loop, and everything on it wired together. The shutdown
 * state machine decides; this module performs each phase's effects. */
#ifndef GRACEFULD_APP_H
#define GRACEFULD_APP_H

#include <uv.h>

#include "config.h"
#include "incr/commit.h"
#include "incr/delivery.h"
#include "incr/incr_queue.h"
#include "metrics.h"
#include "redis/redis_link.h"
#include "http/routes.h"
#include "http/server.h"
#include "shutdown.h"

/* The app's end, after the shutdown phases (shutdown.h draws it whole):
 * running --wind_up--> winding up --the engine left--> wound up. */
enum app_state {
  APP_RUNNING,    /* serving, delaying, draining or flushing */
  APP_WINDING_UP, /* handles closed; journal mode: the leave sent */
  APP_WOUND_UP,   /* Redis link closed, summary logged: uv_run returns */
};

struct app {
  uv_loop_t *loop;
  const struct config *cfg;
  struct metrics metrics;
  struct server server;
  struct incr_queue queue;
  struct redis_link link;
  struct redis_tls tls; /* rediss://: the context every connection uses */
  struct delivery delivery;
  struct commit commit; /* journal mode: the held 200s */
  struct shutdown shutdown;
  uv_signal_t sigterm;
  uv_signal_t sigint;
  uv_signal_t sighup;
  uv_timer_t delay_timer;    /* the end of delaying */
  uv_timer_t deadline_timer; /* SHUTDOWN_TIMEOUT_MS after the first signal */
  uint64_t abandoned;        /* memory mode: pending when the process gave up */
  uint64_t handed_over;      /* journal mode: left in the journal at the end */
  enum app_state state;
  /* How an /incr is taken: queued and answered at once (memory mode), or
   * held for the turn's journal write (journal mode). */
  void (*take_incr)(struct app *app, struct route_result *r);
  int exit_code;
};

/* Builds the service on loop. Returns 0, or a negative UV_E* with *part
 * naming what could not be built; what was built is then closed, and
 * running the loop completes its closing. */
int app_init(struct app *app, uv_loop_t *loop, const struct config *cfg,
             const char **part);

/* Listens, connects to Redis and runs the loop until the service is done;
 * every handle is closed when it returns. Returns the exit status:
 * 0 drained, 1 failure, 3 increments abandoned, 4 increments failed. */
int app_run(struct app *app);

#endif
