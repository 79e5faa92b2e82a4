#include "metrics.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const uint16_t statuses[METRICS_STATUSES - 1] = {200, 400, 404, 405, 408,
                                                        413, 414, 431, 503};

void metrics_init(struct metrics *m) {
  struct timespec ts;
  memset(m, 0, sizeof *m);
  clock_gettime(CLOCK_REALTIME, &ts);
  m->start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void metrics_count_requests(struct metrics *m, enum route r, uint16_t status,
                            uint64_t n) {
  int slot = 0;
  while (slot < METRICS_STATUSES - 1 && statuses[slot] != status)
    slot++;
  m->requests[r][slot] += n;
}

void metrics_count_request(struct metrics *m, enum route r, uint16_t status) {
  metrics_count_requests(m, r, status, 1);
}

/* The text being rendered: a buffer that grows; failed once memory ran
 * out, and then NULL when done. */
struct buf {
  char *p;
  size_t len;
  size_t cap;
  bool failed;
};

__attribute__((format(printf, 2, 3))) static void emit(struct buf *b,
                                                       const char *fmt, ...) {
  for (int tries = 0; !b->failed && tries < 2; tries++) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->failed = true;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = 2 * b->cap > b->len + (size_t)n + 1 ? 2 * b->cap
                                                     : b->len + (size_t)n + 1;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->failed = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
}

/* v as a label value: backslash, quote and newline escaped. */
static void label_value(const char *v, char *out, size_t cap) {
  size_t n = 0;
  for (; *v && n + 3 < cap; v++) {
    if (*v == '\\' || *v == '"' || *v == '\n')
      out[n++] = '\\';
    out[n++] = *v == '\n' ? 'n' : *v;
  }
  out[n] = '\0';
}

static void family(struct buf *b, const char *name, const char *type,
                   const char *help) {
  emit(b, "# HELP gracefuld_%s %s\n# TYPE gracefuld_%s %s\n", name, help, name,
       type);
}

static void counter(struct buf *b, const char *name, uint64_t v,
                    const char *help) {
  family(b, name, "counter", help);
  emit(b, "gracefuld_%s %llu\n", name, (unsigned long long)v);
}

/* The first allocation; the buffer doubles as the text needs (a render
 * takes about 9 KiB, so growing is the usual path, and the unit tests'). */
#define METRICS_BUF 4096

char *metrics_render(const struct metrics *m, const struct metrics_view *v,
                     size_t *len) {
  struct buf b = {malloc(METRICS_BUF), 0, METRICS_BUF, false};
  if (!b.p)
    return NULL;
  b.p[0] = '\0';

  family(&b, "http_requests_total", "counter",
         "HTTP responses sent, by route and status code (route other: "
         "unknown paths and requests that could not be parsed).");
  /* Every series from the start, at 0, so that rates and alerts see the
   * first request. */
  for (int r = 0; r < ROUTE_COUNT; r++) {
    for (int s = 0; s < METRICS_STATUSES; s++) {
      uint64_t n = m->requests[r][s];
      if (s < METRICS_STATUSES - 1)
        emit(&b,
             "gracefuld_http_requests_total{route=\"%s\",code=\"%u\"} %llu\n",
             routes_name((enum route)r), statuses[s], (unsigned long long)n);
      else
        emit(
            &b,
            "gracefuld_http_requests_total{route=\"%s\",code=\"other\"} %llu\n",
            routes_name((enum route)r), (unsigned long long)n);
    }
  }

  const struct counter_stats *cs = v->counter;
  counter(&b, "increments_accepted_total", m->incr_accepted,
          "Increments answered 200 and queued.");
  counter(&b, "increments_done_total", cs->done,
          "Increments Redis has counted, exactly once.");
  counter(&b, "increments_retried_total", cs->retried,
          "durability memory: increments in batches sent again after a lost "
          "reply (the batch's fence makes a copy count nothing).");
  counter(&b, "increments_failed_total", cs->failed,
          "Increments Redis refused with an error no retry can fix.");
  counter(&b, "redis_reconnects_total", v->link->reconnects,
          "Connections to Redis made after the first.");
  counter(&b, "redis_asks_total", v->link->asks,
          "Redis Cluster: ASK redirects followed, each with a connection to "
          "the node importing the slot and ASKING before each script.");
  counter(&b, "redis_batches_total", cs->batches,
          "durability memory: batches of due increments sent to Redis, each "
          "one fenced command (not counting sends again).");
  counter(&b, "journal_writes_total", cs->journal_writes,
          "durability redis: journal writes sent, one per loop turn with "
          "/incr.");
  counter(&b, "journal_written_increments_total", m->journal_written,
          "durability redis: increments the journal holds, answered 200.");
  counter(&b, "journal_refused_increments_total", m->journal_refused,
          "durability redis: increments the journal could not take, answered "
          "503.");
  counter(&b, "idempotency_replays_total", m->idem_replays,
          "Requests whose Idempotency-Key had counted already: answered 200 "
          "with Idempotency-Replayed, nothing counted.");
  counter(&b, "idempotency_conflicts_total", m->idem_conflicts,
          "Requests whose Idempotency-Key was still in progress: answered "
          "409.");
  counter(&b, "journal_resolutions_total", cs->journal_resolutions,
          "durability redis: journal writes whose lost reply was asked for.");
  counter(&b, "journal_moves_total", cs->journal_moves,
          "durability redis: moves of due increments from journal to "
          "counter.");
  counter(&b, "journal_adoptions_total", cs->journal_adoptions,
          "durability redis: journals of replicas whose lease lapsed, taken "
          "over.");
  counter(&b, "journal_adopted_increments_total", cs->journal_adopted,
          "durability redis: increments in the journals taken over.");
  counter(&b, "journal_swept_increments_total", cs->journal_swept,
          "durability redis: due increments a lease renewal moved, that no "
          "move had (an adoption whose reply was lost, a stall).");
  counter(&b, "connections_accepted_total", v->server->accepted,
          "TCP connections accepted, those then rejected included.");
  counter(&b, "connections_rejected_total", v->server->rejected,
          "TCP connections closed at once: past MAX_CONNECTIONS, or no memory "
          "for them.");

  family(&b, "journal_write_size", "histogram",
         "durability redis: increments per journal write (one write per loop "
         "turn with /incr).");
  uint64_t seen = 0, le = 1;
  for (int i = 0; i < COUNTER_WRITE_BUCKETS; i++, le *= 4) {
    seen += cs->write_sizes[i];
    if (i < COUNTER_WRITE_BUCKETS - 1)
      emit(&b, "gracefuld_journal_write_size_bucket{le=\"%llu\"} %llu\n",
           (unsigned long long)le, (unsigned long long)seen);
    else
      emit(&b, "gracefuld_journal_write_size_bucket{le=\"+Inf\"} %llu\n",
           (unsigned long long)seen);
  }
  emit(&b, "gracefuld_journal_write_size_sum %llu\n",
       (unsigned long long)cs->write_size_sum);
  emit(&b, "gracefuld_journal_write_size_count %llu\n",
       (unsigned long long)seen);

  family(&b, "increments_pending", "gauge",
         "Increments answered but not yet counted by Redis.");
  emit(&b, "gracefuld_increments_pending %llu\n",
       (unsigned long long)v->pending);
  family(&b, "open_connections", "gauge",
         "HTTP connections open, those closing included.");
  emit(&b, "gracefuld_open_connections %llu\n",
       (unsigned long long)v->server->open);
  family(&b, "redis_connected", "gauge", "1 while the Redis connection is up.");
  emit(&b, "gracefuld_redis_connected %d\n", v->redis_connected ? 1 : 0);
  if (v->redis_node && v->redis_node[0]) {
    char node[2 * 300];
    label_value(v->redis_node, node, sizeof node);
    family(&b, "redis_node_info", "gauge",
           "The Redis server of the last connection made (host:port or a "
           "socket), and how it is carried: tcp, tls or unix.");
    emit(&b, "gracefuld_redis_node_info{node=\"%s\",transport=\"%s\"} 1\n",
         node, v->redis_transport);
  }
  family(&b, "shutdown_phase", "gauge",
         "1 for the current phase of the shutdown state machine.");
  for (int p = 0; p < PHASE_COUNT; p++)
    emit(&b, "gracefuld_shutdown_phase{phase=\"%s\"} %d\n",
         shutdown_phase_name((enum shutdown_phase)p), p == (int)v->phase);
  /* The standard name (the Prometheus client libraries' process metrics),
   * without our prefix. */
  emit(&b,
       "# HELP process_start_time_seconds Start time of the process "
       "since unix epoch in seconds.\n"
       "# TYPE process_start_time_seconds gauge\n"
       "process_start_time_seconds %.3f\n",
       m->start_time);

  if (b.failed) {
    free(b.p);
    return NULL;
  }
  *len = b.len;
  return b.p;
}
