#include "app.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base.h"
#include "log.h"
#include "redis/redis_error.h"
#include "redis/redis_slot.h"

static void wind_up(struct app *app);

static struct app *app_of_link(const struct redis_link *link) {
  return (struct app *)((char *)link - offsetof(struct app, link));
}

/* Increments answered but not yet counted by Redis: queued, due, or in a
 * command not yet answered. */
static uint64_t pending(const struct app *app) {
  return app->queue.pending + delivery_pending(&app->delivery);
}

/* ---- Requests ----------------------------------------------------------- */

/* Memory mode: queued at once, answered 200 at once; a key pending or
 * counted here already is a replay, answered at once, nothing queued. */
static void take_now(struct app *app, struct route_result *r) {
  uint64_t deadline = uv_now(app->loop) + app->cfg->incr_delay_ms;
  enum delivery_keyed keyed = DELIVERY_KEYED_QUEUED;
  int rc = r->idem_len > 0 ? delivery_incr_keyed(&app->delivery, r->idem_key,
                                                 r->idem_len, deadline, &keyed)
                           : incr_queue_push(&app->queue, deadline);
  if (rc == 0 && keyed == DELIVERY_KEYED_REPLAY) {
    r->response = commit_replayed;
    app->metrics.idem_replays++;
  } else if (rc == 0) {
    app->metrics.incr_accepted++;
  } else {
    routes_error(503, r);
    r->route = ROUTE_INCR;
  }
}

/* Journal mode: held for the turn's journal write, or 503 at once when no
 * write can be sent. */
static void take_held(struct app *app, struct route_result *r) {
  switch (commit_take(&app->commit, &r->response, r->idem_key, r->idem_len)) {
  case COMMIT_REFUSED:
    app->metrics.journal_refused++;
    break;
  case COMMIT_CONFLICT:
    app->metrics.idem_conflicts++;
    break;
  default:
    break;
  }
}

/* The held /incr of ticket are answered: 200 when the journal holds them,
 * 503 when it does not. */
static void fill_held(struct commit *cm, uint64_t ticket, uint64_t n, bool held,
                      const struct http_response *resp) {
  struct app *app = container_of(cm, struct app, commit);
  uint64_t filled = server_fill(&app->server, ticket, resp);
  metrics_count_requests(&app->metrics, ROUTE_INCR, resp->status, filled);
  if (resp == &commit_replayed)
    app->metrics.idem_replays += filled;
  if (held) {
    app->metrics.incr_accepted += n;
    app->metrics.journal_written += n;
  } else {
    app->metrics.journal_refused += n;
  }
}

/* /readyz's answer, followed by the Redis it counts on and how it is
 * reached ("redis: 10.0.0.5:6380 tls, connected"). Unchanged when there is
 * no memory for it. */
static void name_redis(struct app *app, struct route_result *r) {
  const struct redis_link *link = &app->link;
  char line[512];
  int n = snprintf(line, sizeof line, "%.*sredis: %s %s, %s\n",
                   (int)r->response.body_len, r->response.body,
                   link->node[0] ? link->node : "(none yet)",
                   link->transport[0] ? link->transport : "-",
                   redis_link_connected(link) ? "connected" : "not connected");
  if (n < 0 || (size_t)n >= sizeof line)
    return;
  char *body = malloc((size_t)n);
  if (!body)
    return;
  memcpy(body, line, (size_t)n);
  r->response.body = body;
  r->response.body_len = (size_t)n;
  r->response.body_owned = !r->response.head;
  if (r->response.head) /* the length is announced, the body not sent */
    free(body);
}

static void respond(struct server *srv, const struct http_request *req,
                    uint16_t error_status, struct http_response *resp) {
  struct app *app = container_of(srv, struct app, server);
  struct route_result r;
  if (!req) {
    routes_error(error_status, &r);
  } else {
    struct routes_state state = {
        .ready = app->link.ever_ready && app->shutdown.phase == PHASE_RUNNING,
        .queue_full = pending(app) + commit_holding(&app->commit) >=
                      app->cfg->max_pending,
    };
    routes_handle(req, &state, &r);
    if (r.route == ROUTE_READYZ && r.response.status != 405)
      name_redis(app, &r);
    if (r.action == ACTION_INCR) {
      app->take_incr(app, &r);
    } else if (r.action == ACTION_METRICS) {
      struct metrics_view g = {
          .server = &app->server.stats,
          .link = &app->link.stats,
          .counter = &app->delivery.stats,
          .pending = pending(app),
          .redis_connected = redis_link_connected(&app->link),
          .redis_node = app->link.node,
          .redis_transport = app->link.transport,
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
  struct app *app = container_of(srv, struct app, server);
  perform(app, shutdown_connections_closed(&app->shutdown, uv_now(app->loop)));
}

static void on_due(struct incr_queue *q, uint64_t now) {
  delivery_due(&container_of(q, struct app, queue)->delivery, now);
}

/* ---- Redis: the link carries what the engine sends ---------------------- */

static struct app *app_of_delivery(struct delivery *d) {
  return container_of(d, struct app, delivery);
}

static int transport_send(struct delivery *d, const char *cmd, size_t len,
                          uint64_t tag) {
  return redis_link_send(&app_of_delivery(d)->link, cmd, len, tag);
}

static void transport_retire(struct delivery *d, const char *why, size_t len) {
  redis_link_retire(&app_of_delivery(d)->link, why, len);
}

static bool error_is_permanent(const char *err, size_t len) {
  return redis_error_classify(err, len) == REDIS_ERROR_PERMANENT;
}

static void on_written(struct delivery *d, uint64_t seq, bool held) {
  commit_written(&app_of_delivery(d)->commit, seq, held);
}

static void on_replays(struct delivery *d, uint64_t seq, const char *flags,
                       size_t len) {
  commit_replays(&app_of_delivery(d)->commit, seq, flags, len);
}

static void on_delivery_idle(struct delivery *d) {
  advance(app_of_delivery(d));
}

static void wound_up(struct app *app);

static void on_left(struct delivery *d) { wound_up(app_of_delivery(d)); }

static void on_link_ready(struct redis_link *link) {
  delivery_on_ready(&app_of_link(link)->delivery);
}

static void on_link_reply(struct redis_link *link, uint64_t tag,
                          const redisReply *reply) {
  delivery_on_reply(&app_of_link(link)->delivery, tag, reply);
}

static void on_link_down(struct redis_link *link) {
  delivery_on_down(&app_of_link(link)->delivery);
}

static const struct delivery_transport transport = {
    transport_send, transport_retire, error_is_permanent};
static const struct delivery_events delivery_events = {
    .on_written = on_written,
    .on_replays = on_replays,
    .on_idle = on_delivery_idle,
    .on_left = on_left,
};
static const struct redis_link_client link_client = {
    on_link_ready, on_link_reply, on_link_down};

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
  const struct counter_stats *cs = &app->delivery.stats;
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

/* ---- The wind-up: running -> winding up -> wound up ---------------------
 * Once the shutdown phases are over (done), or the process gives up, the
 * app winds up in two steps: every handle but the Redis link's is closed,
 * and the engine leaves (journal mode: the lease and an empty journal are
 * given up, so that another replica adopts what it still holds at once);
 * once it has left, the link is closed and the run summed up, and uv_run
 * returns. */

/* What is still pending is given up (memory mode) or left in the journal
 * for another replica (journal mode). */
static void count_leftovers(struct app *app) {
  const char *reason = shutdown_reason_name(app->shutdown.reason);
  uint64_t n = pending(app);
  if (delivery_hands_over(&app->delivery)) {
    /* Redis holds them: nothing is lost, whoever adopts the journal counts
     * them. */
    app->handed_over = n;
    if (n)
      log_warn("handed_over", LOG_UINT("increments", n),
               LOG_STR("reason", reason));
  } else {
    app->abandoned = n;
    if (n)
      log_warn("abandoned", LOG_UINT("increments", n),
               LOG_STR("reason", reason));
  }
}

/* running -> winding up. */
static void wind_up(struct app *app) {
  if (app->state != APP_RUNNING)
    return;
  app->state = APP_WINDING_UP;
  if (app->shutdown.phase != PHASE_DONE)
    shutdown_fail(&app->shutdown, uv_now(app->loop));
  count_leftovers(app);
  app->exit_code = shutdown_exit_code(&app->shutdown, app->abandoned,
                                      app->delivery.stats.failed);
  server_close(&app->server);
  incr_queue_close(&app->queue, NULL);
  close_signals(app);
  close_handle((uv_handle_t *)&app->delay_timer);
  close_handle((uv_handle_t *)&app->deadline_timer);
  commit_close(&app->commit);
  delivery_leave(&app->delivery); /* on_left: at once, or once answered */
}

/* winding up -> wound up: the engine has left. */
static void wound_up(struct app *app) {
  if (app->state != APP_WINDING_UP)
    return;
  app->state = APP_WOUND_UP;
  redis_link_close(&app->link);
  delivery_close(&app->delivery);
  log_summary(app);
}

/* ---- Construction ------------------------------------------------------- */

/* SIGTERM and SIGINT shut down; SIGHUP is logged and ignored. Returns 0, or
 * a negative UV_E* with the handles already opened closed. */
static int start_signals(struct app *app) {
  uv_signal_t *signals[] = {&app->sigterm, &app->sigint, &app->sighup};
  int signums[] = {SIGTERM, SIGINT, SIGHUP};
  int i, rc = 0;
  for (i = 0; i < 3; i++) {
    rc = uv_signal_init(app->loop, signals[i]);
    if (rc)
      goto fail;
    signals[i]->data = app;
    rc = uv_signal_start(signals[i], on_signal, signums[i]);
    if (rc) {
      i++; /* initialised: closed too */
      goto fail;
    }
  }
  return 0;

fail:
  while (i-- > 0)
    close_handle((uv_handle_t *)signals[i]);
  return rc;
}

static int timer_init(struct app *app, uv_timer_t *timer) {
  int rc = uv_timer_init(app->loop, timer);
  timer->data = app;
  return rc;
}

int app_init(struct app *app, uv_loop_t *loop, const struct config *cfg,
             const char **part) {
  memset(app, 0, sizeof *app);
  app->loop = loop;
  app->cfg = cfg;
  app->state = APP_RUNNING;
  /* A client that vanishes must cost an error code, not the process. */
  signal(SIGPIPE, SIG_IGN);
  metrics_init(&app->metrics);
  int rc;
  if (cfg->redis.tls) {
    *part = "Redis TLS settings";
    char why[512];
    rc = redis_tls_init(&app->tls,
                        &(struct redis_tls_options){
                            .ca_file = cfg->tls_ca_file,
                            .cert_file = cfg->tls_cert_file,
                            .key_file = cfg->tls_key_file,
                            .server_name = cfg->tls_server_name,
                        },
                        why, sizeof why);
    if (rc) {
      log_error("redis_tls_unusable", LOG_STR("error", why));
      return rc;
    }
  }
  *part = "queue";
  rc = incr_queue_init(&app->queue, loop, on_due);
  if (rc)
    goto fail;
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
  redis_link_init(
      &app->link, loop,
      &(struct redis_link_options){
          .target = cfg->redis,
          .sentinels = cfg->sentinels,
          .n_sentinels = cfg->n_sentinels,
          .master_name = cfg->master_name,
          .cluster_nodes = cfg->cluster_nodes,
          .n_cluster_nodes = cfg->n_cluster_nodes,
          .slot = redis_key_slot(cfg->counter_key, strlen(cfg->counter_key)),
          .sentinel_password =
              cfg->has_sentinel_password ? cfg->sentinel_password : NULL,
          .password_file =
              cfg->redis_password_file[0] ? cfg->redis_password_file : NULL,
          .sentinel_password_file = cfg->sentinel_password_file[0]
                                        ? cfg->sentinel_password_file
                                        : NULL,
          .timeout_ms = cfg->redis_timeout_ms,
          .reauth_ms = cfg->redis_reauth_ms,
          .tls = cfg->redis.tls ? &app->tls : NULL,
          .refuse_allkeys_eviction = cfg->refuse_allkeys_eviction},
      &link_client);
  uint64_t id;
  if (uv_random(NULL, NULL, &id, sizeof id, 0, NULL) != 0)
    id = uv_hrtime() ^ (uint64_t)getpid() << 32;
  struct delivery_options opts = {
      .durability = cfg->durability,
      .prefix = cfg->key_prefix,
      .counter_key = cfg->counter_key,
      .replica_id = id,
      .lease_ms = cfg->lease_ms,
      .incr_delay_ms = cfg->incr_delay_ms,
      .idem_ttl_ms = cfg->idempotency_ttl_ms,
      .min_replicas = cfg->min_replicas,
      /* WAIT's own timeout stays under the reply watchdog's. */
      .wait_timeout_ms =
          cfg->redis_timeout_ms / 2 ? cfg->redis_timeout_ms / 2 : 1,
      .queue = &app->queue,
      .transport = &transport,
      .events = &delivery_events,
  };
  rc = delivery_init(&app->delivery, loop, &opts);
  if (rc) {
    *part = rc == UV_EINVAL ? "Redis keys (KEY_PREFIX or COUNTER_KEY too long)"
                            : "delivery engine";
    goto fail_delivery;
  }
  /* Every connection checks the keys before it is used: no increment is
   * accepted on a Redis whose counter could never count it. */
  *part = "the check of the Redis keys";
  const struct scripts *keys = &app->delivery.scripts;
  const struct redis_key_check checks[] = {
      {keys->counter, REDIS_KEY_INTEGER}, {keys->fences, REDIS_KEY_HASH},
      {keys->fence_uses, REDIS_KEY_ZSET}, {keys->skips, REDIS_KEY_ZSET},
      {keys->journal, REDIS_KEY_HASH},    {keys->replicas, REDIS_KEY_ZSET},
      {keys->idem, REDIS_KEY_ZSET},
  };
  rc = redis_link_set_checks(&app->link, checks,
                             sizeof checks / sizeof checks[0]);
  /* And whether the user may run every command the scripts run. */
  struct scripts_cmd probe = {0};
  rc = rc ? rc
          : scripts_cmd_probe(&probe, &app->delivery.scripts,
                              cfg->durability == DURABILITY_REDIS,
                              cfg->min_replicas > 0);
  rc = rc ? rc : redis_link_set_probe(&app->link, probe.buf, probe.len);
  scripts_cmd_free(&probe);
  if (rc)
    goto fail_check;
  shutdown_init(&app->shutdown, cfg->shutdown_delay_ms,
                cfg->shutdown_timeout_ms, uv_now(loop));
  *part = "shutdown timers";
  rc = timer_init(app, &app->delay_timer);
  if (rc)
    goto fail_delay_timer;
  rc = timer_init(app, &app->deadline_timer);
  if (rc)
    goto fail_deadline_timer;
  *part = "journal commit";
  rc = commit_init(&app->commit, loop, &app->delivery, cfg->incr_delay_ms,
                   fill_held);
  if (rc)
    goto fail_commit;
  app->take_incr = take_now;
  if (cfg->durability == DURABILITY_REDIS) {
    app->take_incr = take_held;
    rc = commit_start(&app->commit);
    if (rc)
      goto fail_signals;
  }
  *part = "signal handlers";
  rc = start_signals(app);
  if (rc)
    goto fail_signals;
  return 0;

fail_signals:
  commit_close(&app->commit);
fail_commit:
  close_handle((uv_handle_t *)&app->deadline_timer);
fail_deadline_timer:
  close_handle((uv_handle_t *)&app->delay_timer);
fail_delay_timer:
fail_check:
  delivery_close(&app->delivery);
fail_delivery:
  redis_link_close(&app->link);
  server_close(&app->server);
  incr_queue_close(&app->queue, NULL);
fail:
  redis_tls_free(&app->tls); /* no connection was made */
  return rc;
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
  /* Every connection, and with it every TLS session, is closed. */
  redis_tls_free(&app->tls);
  return app->exit_code;
}
