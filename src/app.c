#include "app.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "redis/redis_error.h"
#include "http/routes.h"

static void wind_up(struct app *app);

static struct app *app_of_queue(struct incr_queue *q) {
  return (struct app *)((char *)q - offsetof(struct app, queue));
}

static struct app *app_of_link(const struct redis_link *link) {
  return (struct app *)((char *)link - offsetof(struct app, link));
}

static struct app *app_of_counter(struct counter *c) {
  return (struct app *)((char *)c - offsetof(struct app, counter));
}

/* Increments answered but not yet counted by Redis: queued, due, or in a
 * command not yet answered. */
static uint64_t pending(const struct app *app) {
  return app->queue.pending + counter_pending(&app->counter);
}

/* ---- Requests ----------------------------------------------------------- */

static struct app *app_of_server(struct server *srv) {
  return (struct app *)((char *)srv - offsetof(struct app, server));
}

/* The answer to an /incr the journal could not take: nothing was
 * recorded, and a retry may succeed. */
static const struct http_response not_recorded = {
    .status = 503,
    .extra_headers = "Retry-After: 1\r\n",
    .body = "not recorded, try again\n",
    .body_len = sizeof "not recorded, try again\n" - 1,
};

/* Memory mode: queued at once, answered 200 at once. Journal mode: held
 * for the next journal write (see on_turn_end), or 503 at once when no
 * write can be sent. */
static void take_incr(struct app *app, struct route_result *r) {
  if (app->cfg->durability == DURABILITY_REDIS) {
    if (!counter_can_write(&app->counter)) {
      r->response = not_recorded;
      app->metrics.journal_refused++;
      return;
    }
    app->incr_ok = r->response;
    if (app->turn_n++ == 0)
      app->turn = ++app->tickets;
    r->response.held = true;
    r->response.ticket = app->turn;
    return;
  }
  uint64_t deadline = uv_now(app->loop) + app->cfg->incr_delay_ms;
  if (incr_queue_push(&app->queue, deadline) == 0) {
    app->metrics.incr_accepted++;
  } else {
    routes_error(503, r);
    r->route = ROUTE_INCR;
  }
}

static void respond(struct server *srv, const struct http_request *req,
                    uint16_t error_status, struct http_response *resp) {
  struct app *app = app_of_server(srv);
  struct route_result r;
  if (!req) {
    routes_error(error_status, &r);
  } else {
    struct routes_state state = {
        .ready = app->link.ever_ready && app->shutdown.phase == PHASE_RUNNING,
        .queue_full = pending(app) + app->turn_n +
                          counter_unresolved_increments(&app->counter) >=
                      app->cfg->max_pending,
    };
    routes_handle(req, &state, &r);
    if (r.action == ACTION_INCR) {
      take_incr(app, &r);
    } else if (r.action == ACTION_METRICS) {
      struct metrics_view g = {
          .server = &app->server.stats,
          .link = &app->link.stats,
          .counter = &app->counter.stats,
          .pending = pending(app),
          .redis_connected = redis_link_connected(&app->link),
          .phase = app->shutdown.phase,
      };
      size_t len;
      char *body = metrics_render(&app->metrics, &g, &len);
      if (body) {
        r.response.body = body;
        r.response.body_len = len;
        r.response.body_owned = !r.response.head;
        if (r.response.head) /* the length is announced, the body not sent */
          free(body);
      } else {
        routes_error(503, &r);
        r.route = ROUTE_METRICS;
      }
    }
  }
  if (!r.response.held) /* counted when filled in */
    metrics_count_request(&app->metrics, r.route, r.response.status);
  *resp = r.response;
}

/* ---- Journal mode: a group commit of each loop turn's /incr -------------- */

/* A slot for one more write in flight; the caller checked there is one. */
static struct app_write *app_write_push(struct app *app) {
  uint64_t i = (app->writes_head + app->writes_len++) % APP_WRITES_MAX;
  return &app->writes[i];
}

/* Answers the held /incr of ticket: 200 when the journal holds them, 503
 * when it does not. */
static void fill_turn(struct app *app, uint64_t ticket, uint64_t n, bool held) {
  const struct http_response *resp = held ? &app->incr_ok : &not_recorded;
  uint64_t filled = server_fill(&app->server, ticket, resp);
  metrics_count_requests(&app->metrics, ROUTE_INCR, resp->status, filled);
  if (held) {
    app->metrics.incr_accepted += n;
    app->metrics.journal_written += n;
  } else {
    app->metrics.journal_refused += n;
  }
}

/* After the loop has run every callback of this turn: the /incr it held go
 * to Redis as one journal write. While APP_WRITES_MAX writes are in flight
 * the turn stays open, and the /incr of the turns that follow join it: one
 * write carries all that came during the round trip (a group commit), so
 * that under load writes grow rather than multiply. With no connection
 * ready they are answered 503 at once, which lets their connections parse
 * what follows; that may open a new turn, written (or answered) too. */
static void write_turn(struct app *app) {
  while (app->turn_n > 0) {
    bool can = counter_can_write(&app->counter);
    if (can && app->writes_len >= APP_WRITES_MAX)
      return; /* joined by the next turns, written when one is answered */
    uint64_t ticket = app->turn, n = app->turn_n;
    app->turn_n = 0;
    uint64_t deadline = uv_now(app->loop) + app->cfg->incr_delay_ms;
    uint64_t seq = can ? counter_write(&app->counter, deadline, n) : 0;
    if (!seq) {
      fill_turn(app, ticket, n, false);
      continue;
    }
    *app_write_push(app) = (struct app_write){seq, ticket, n};
  }
}

/* Moves that fell due ride with the turn's write, or go alone after it. */
static void on_turn_end(uv_check_t *check) {
  struct app *app = check->data;
  write_turn(app);
  counter_turn_end(&app->counter);
}

static void on_written(struct counter *c, uint64_t seq, bool held) {
  struct app *app = app_of_counter(c);
  if (app->writes_len == 0)
    return;
  struct app_write w = app->writes[app->writes_head];
  /* In write order, one for each write sent (counter.h). */
  if (w.seq != seq)
    return;
  app->writes_head = (app->writes_head + 1) % APP_WRITES_MAX;
  app->writes_len--;
  fill_turn(app, w.ticket, w.n, held);
}

/* ---- Shutdown phases ---------------------------------------------------- */

static void advance(struct app *app) {
  if (app->shutdown.phase == PHASE_FLUSHING && pending(app) == 0) {
    shutdown_flushed(&app->shutdown, uv_now(app->loop));
    wind_up(app);
  }
}

static void on_delay_elapsed(uv_timer_t *timer);

static void log_phase(const struct app *app, enum shutdown_phase phase) {
  log_info("phase", LOG_STR("phase", shutdown_phase_name(phase)),
           LOG_UINT("pending", pending(app)),
           LOG_UINT("connections", app->server.stats.open));
}

/* Performs the effects of the phase the state machine has just entered. */
static void perform(struct app *app, enum shutdown_phase phase) {
  /* Logged once the phase's effects are in place: a client that reads
   * "draining" finds the listener closed. */
  switch (phase) {
  case PHASE_DELAYING:
    server_close_each(&app->server);
    uv_timer_start(&app->delay_timer, on_delay_elapsed, app->shutdown.delay_ms,
                   0);
    log_phase(app, phase);
    break;
  case PHASE_DRAINING:
    server_drain(&app->server);
    log_phase(app, phase);
    break;
  case PHASE_FLUSHING:
    log_phase(app, phase);
    advance(app);
    break;
  case PHASE_DONE:
    wind_up(app);
    break;
  default:
    break;
  }
}

static void on_delay_elapsed(uv_timer_t *timer) {
  struct app *app = timer->data;
  perform(app, shutdown_delay_elapsed(&app->shutdown, uv_now(app->loop)));
}

static void on_deadline(uv_timer_t *timer) {
  struct app *app = timer->data;
  log_warn("shutdown_timeout", LOG_UINT("timeout_ms", app->shutdown.timeout_ms),
           LOG_UINT("pending", pending(app)));
  shutdown_deadline_passed(&app->shutdown, uv_now(app->loop));
  wind_up(app);
}

static void on_drained(struct server *srv) {
  struct app *app = app_of_server(srv);
  perform(app, shutdown_connections_closed(&app->shutdown, uv_now(app->loop)));
}

static void on_due(struct incr_queue *q, uint64_t now) {
  struct counter *c = &app_of_queue(q)->counter;
  if (c->durability == DURABILITY_MEMORY)
    counter_add_due(c, incr_queue_pop_due(q, now));
  else
    counter_due(c, now);
}

/* ---- Redis: the link carries what the counter sends --------------------- */

static int transport_send(struct counter *c, const char *cmd, size_t len,
                          uint64_t tag) {
  return redis_link_send(&app_of_counter(c)->link, cmd, len, tag);
}

static void transport_retire(struct counter *c, const char *why, size_t len) {
  redis_link_retire(&app_of_counter(c)->link, why, len);
}

static bool error_is_permanent(const char *err, size_t len) {
  return redis_error_classify(err, len) == REDIS_ERROR_PERMANENT;
}

static void on_counter_idle(struct counter *c) { advance(app_of_counter(c)); }

static void wind_up_done(struct app *app);

static void on_left(struct counter *c) { wind_up_done(app_of_counter(c)); }

static void on_link_ready(struct redis_link *link) {
  counter_on_ready(&app_of_link(link)->counter);
}

static void on_link_reply(struct redis_link *link, uint64_t tag,
                          const redisReply *reply) {
  counter_on_reply(&app_of_link(link)->counter, tag, reply);
}

static void on_link_down(struct redis_link *link) {
  counter_on_down(&app_of_link(link)->counter);
}

static uint64_t link_pending(const struct redis_link *link) {
  return pending(app_of_link(link));
}

static const struct counter_transport transport = {
    transport_send, transport_retire, error_is_permanent};
static const struct counter_events counter_events = {on_written,
                                                     on_counter_idle, on_left};
static const struct redis_link_client link_client = {
    on_link_ready, on_link_reply, on_link_down, link_pending};

static void on_signal(uv_signal_t *handle, int signum) {
  struct app *app = handle->data;
  const char *name = signum == SIGTERM  ? "SIGTERM"
                     : signum == SIGINT ? "SIGINT"
                                        : "SIGHUP";
  if (signum == SIGHUP) {
    log_info("signal", LOG_STR("signal", "SIGHUP"),
             LOG_STR("action", "ignored"));
    return;
  }
  enum shutdown_phase was = app->shutdown.phase;
  if (was == PHASE_DONE)
    return;
  log_info("signal", LOG_STR("signal", name),
           LOG_STR("phase", shutdown_phase_name(was)),
           LOG_UINT("pending", pending(app)));
  enum shutdown_phase phase =
      shutdown_signal(&app->shutdown, uv_now(app->loop));
  if (was == PHASE_RUNNING)
    uv_timer_start(&app->deadline_timer, on_deadline, app->shutdown.timeout_ms,
                   0);
  perform(app, phase);
}

/* ---- The end ------------------------------------------------------------ */

/* Kubernetes shows this file's content as the container's termination
 * message. Its absence, or a read-only filesystem, is not an error. */
static void write_termination_log(const struct app *app, const char *text,
                                  int len) {
  const char *path = app->cfg->termination_log;
  if (!*path)
    return;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    log_debug("termination_log", LOG_STR("path", path),
              LOG_STR("error", strerror(errno)));
    return;
  }
  ssize_t n = write(fd, text, (size_t)len);
  (void)n;
  close(fd);
}

/* The summary of the run: the last log line and the termination message. */
static void log_summary(const struct app *app) {
  const struct shutdown *s = &app->shutdown;
  const struct metrics *m = &app->metrics;
  const struct counter_stats *cs = &app->counter.stats;
  uint64_t now = uv_now(app->loop);
  uint64_t first_signal = s->entered[PHASE_DELAYING]
                              ? s->entered[PHASE_DELAYING]
                              : s->entered[PHASE_DRAINING];
  const struct log_field fields[] = {
      LOG_STR("reason", shutdown_reason_name(s->reason)),
      LOG_INT("exit_code", app->exit_code),
      LOG_UINT("accepted", m->incr_accepted),
      LOG_UINT("done", cs->done),
      LOG_UINT("retried", cs->retried),
      LOG_UINT("failed", cs->failed),
      LOG_UINT("abandoned", app->abandoned),
      LOG_UINT("handed_over", app->handed_over),
      LOG_UINT("adopted", cs->journal_adopted),
      LOG_UINT("running_ms", shutdown_phase_ms(s, PHASE_RUNNING, now)),
      LOG_UINT("delaying_ms", shutdown_phase_ms(s, PHASE_DELAYING, now)),
      LOG_UINT("draining_ms", shutdown_phase_ms(s, PHASE_DRAINING, now)),
      LOG_UINT("flushing_ms", shutdown_phase_ms(s, PHASE_FLUSHING, now)),
      LOG_UINT("shutdown_ms", first_signal ? now - first_signal : 0),
  };
  size_t n = sizeof fields / sizeof fields[0];
  if (log_enabled(LOG_INFO))
    log_write(LOG_INFO, "exit", fields, n);
  char line[512];
  int len = log_format_fields(line, (int)sizeof line - 1, fields, n);
  line[len++] = '\n';
  write_termination_log(app, line, len);
}

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* Closing its last uv_signal handle puts a signal back to its default
 * action, which for SIGTERM, SIGINT and SIGHUP ends the process: a storm
 * of signals would then kill it before it reports. They are blocked while
 * the handles close and ignored from then on (which also discards any that
 * arrived while blocked). */
static void close_signals(struct app *app) {
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigprocmask(SIG_BLOCK, &set, &old);
  close_handle((uv_handle_t *)&app->sigterm);
  close_handle((uv_handle_t *)&app->sigint);
  close_handle((uv_handle_t *)&app->sighup);
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  sigprocmask(SIG_SETMASK, &old, NULL);
}

/* Gives up what is still pending (memory mode) or leaves it in the journal
 * for another replica (journal mode), closes every handle so that uv_run
 * returns, and reports. */
static void wind_up(struct app *app) {
  if (uv_is_closing((uv_handle_t *)&app->sigterm))
    return;
  uint64_t now = uv_now(app->loop);
  if (app->shutdown.phase != PHASE_DONE)
    shutdown_fail(&app->shutdown, now);
  const char *reason = shutdown_reason_name(app->shutdown.reason);
  if (app->cfg->durability == DURABILITY_REDIS) {
    /* Redis holds them: nothing is lost, whoever adopts the journal counts
     * them. */
    app->handed_over = pending(app);
    if (app->handed_over)
      log_warn("handed_over", LOG_UINT("increments", app->handed_over),
               LOG_STR("reason", reason));
  } else {
    app->abandoned = pending(app);
    if (app->abandoned)
      log_warn("abandoned", LOG_UINT("increments", app->abandoned),
               LOG_STR("reason", reason));
  }
  app->exit_code = shutdown_exit_code(&app->shutdown, app->abandoned,
                                      app->counter.stats.failed);

  server_close(&app->server);
  incr_queue_close(&app->queue, NULL);
  close_signals(app);
  close_handle((uv_handle_t *)&app->delay_timer);
  close_handle((uv_handle_t *)&app->deadline_timer);
  close_handle((uv_handle_t *)&app->turn_check);
  /* Journal mode: the lease goes first (on_left), so that what the journal
   * still holds is adopted at once; memory mode has nothing to say. */
  counter_leave(&app->counter);
}

static void wind_up_done(struct app *app) {
  if (app->wound_up)
    return;
  app->wound_up = true;
  redis_link_close(&app->link);
  counter_close(&app->counter);
  log_summary(app);
}

/* ---- Construction ------------------------------------------------------- */

int app_init(struct app *app, uv_loop_t *loop, const struct config *cfg) {
  memset(app, 0, sizeof *app);
  app->loop = loop;
  app->cfg = cfg;
  /* A client that vanishes must cost an error code, not the process. */
  signal(SIGPIPE, SIG_IGN);
  metrics_init(&app->metrics);
  if (incr_queue_init(&app->queue, loop, on_due) != 0)
    return UV_ENOMEM;
  server_init(&app->server, loop,
              &(struct server_options){
                  .listen_addr = cfg->listen_addr,
                  .max_connections = cfg->max_connections,
                  .header_timeout_ms = cfg->header_timeout_ms,
                  .idle_timeout_ms = cfg->idle_timeout_ms,
                  .limits = {.header_max_bytes = cfg->header_max_bytes,
                             .max_headers = cfg->max_headers,
                             .url_max_bytes = cfg->url_max_bytes,
                             .max_body_bytes = cfg->max_body_bytes},
              },
              respond, on_drained);
  redis_link_init(&app->link, loop, cfg, &link_client);
  uint64_t id;
  if (uv_random(NULL, NULL, &id, sizeof id, 0, NULL) != 0)
    id = uv_hrtime() ^ (uint64_t)getpid() << 32;
  /* WAIT's own timeout stays under the reply watchdog's. */
  uint64_t wait_ms = cfg->redis_timeout_ms / 2 ? cfg->redis_timeout_ms / 2 : 1;
  int rc = counter_init(&app->counter, loop, cfg->durability, cfg->key_prefix,
                        cfg->counter_key, id, cfg->lease_ms, cfg->min_replicas,
                        wait_ms, &app->queue, &transport,
                        &counter_events);
  if (rc)
    return rc;
  shutdown_init(&app->shutdown, cfg->shutdown_delay_ms,
                cfg->shutdown_timeout_ms, uv_now(loop));
  uv_signal_t *signals[] = {&app->sigterm, &app->sigint, &app->sighup};
  int signums[] = {SIGTERM, SIGINT, SIGHUP};
  for (int i = 0; i < 3; i++) {
    uv_signal_init(loop, signals[i]);
    signals[i]->data = app;
    uv_signal_start(signals[i], on_signal, signums[i]);
  }
  uv_timer_init(loop, &app->delay_timer);
  app->delay_timer.data = app;
  uv_timer_init(loop, &app->deadline_timer);
  app->deadline_timer.data = app;
  uv_check_init(loop, &app->turn_check);
  app->turn_check.data = app;
  if (cfg->durability == DURABILITY_REDIS) {
    uv_check_start(&app->turn_check, on_turn_end);
    uv_unref((uv_handle_t *)&app->turn_check); /* it keeps nothing alive */
  }
  return 0;
}

int app_run(struct app *app) {
  const struct config *cfg = app->cfg;
  log_info("start", LOG_STR("version", GRACEFULD_VERSION),
           LOG_STR("redis", app->link.addr),
           LOG_UINT("incr_delay_ms", cfg->incr_delay_ms),
           LOG_UINT("shutdown_delay_ms", cfg->shutdown_delay_ms),
           LOG_UINT("shutdown_timeout_ms", cfg->shutdown_timeout_ms),
           LOG_UINT("max_pending", cfg->max_pending));
  const char *warning = config_warning(cfg);
  if (warning)
    log_warn("config_warning", LOG_STR("warning", warning),
             LOG_UINT("shutdown_delay_ms", cfg->shutdown_delay_ms),
             LOG_UINT("incr_delay_ms", cfg->incr_delay_ms),
             LOG_UINT("shutdown_timeout_ms", cfg->shutdown_timeout_ms));
  int rc = server_listen(&app->server);
  if (rc) {
    log_error("listen_failed", LOG_STR("addr", cfg->listen_host),
              LOG_UINT("port", cfg->listen_port),
              LOG_STR("error", uv_strerror(rc)));
    wind_up(app);
  } else {
    redis_link_start(&app->link);
  }
  uv_run(app->loop, UV_RUN_DEFAULT);
  return app->exit_code;
}
