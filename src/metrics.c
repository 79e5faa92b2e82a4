#include "metrics.h"

#include <stdarg.h>
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

void metrics_observe_write(struct metrics *m, uint64_t n) {
  int b = 0;
  for (uint64_t le = 1; b < METRICS_WRITE_BUCKETS - 1 && n > le; le *= 4)
    b++;
  m->write_sizes[b]++;
  m->write_size_sum += n;
}

void metrics_count_request(struct metrics *m, enum route r, uint16_t status) {
  metrics_count_requests(m, r, status, 1);
}

struct buf {
  char *p;
  size_t len;
  size_t cap;
};

__attribute__((format(printf, 2, 3))) static void emit(struct buf *b,
                                                       const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  if (n > 0)
    b->len += (size_t)n < b->cap - b->len ? (size_t)n : b->cap - b->len - 1;
}

static void family(struct buf *b, const char *name, const char *type,
                   const char *help) {
  emit(b, "# HELP gracefuld_%s %s\n# TYPE gracefuld_%s %s\n", name, help, name,
       type);
}

#define METRICS_BUF 16384

char *metrics_render(const struct metrics *m, const struct metrics_gauges *g,
                     size_t *len) {
  struct buf b = {malloc(METRICS_BUF), 0, METRICS_BUF};
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
      uint64_t v = m->requests[r][s];
      if (s < METRICS_STATUSES - 1)
        emit(&b,
             "gracefuld_http_requests_total{route=\"%s\",code=\"%u\"} %llu\n",
             routes_name((enum route)r), statuses[s], (unsigned long long)v);
      else
        emit(
            &b,
            "gracefuld_http_requests_total{route=\"%s\",code=\"other\"} %llu\n",
            routes_name((enum route)r), (unsigned long long)v);
    }
  }

  static const struct {
    const char *name;
    size_t offset;
    const char *help;
  } counters[] = {
      {"increments_accepted_total", offsetof(struct metrics, incr_accepted),
       "Increments answered 200 and queued."},
      {"increments_done_total", offsetof(struct metrics, incr_done),
       "INCRs Redis has answered with the new count."},
      {"increments_retried_total", offsetof(struct metrics, incr_retried),
       "INCRs sent again after their connection broke (at-least-once)."},
      {"increments_failed_total", offsetof(struct metrics, incr_failed),
       "INCRs Redis answered with an error."},
      {"redis_reconnects_total", offsetof(struct metrics, redis_reconnects),
       "Connections to Redis made after the first."},
      {"redis_batches_total", offsetof(struct metrics, batches),
       "durability memory: batches of due increments sent to Redis, each one "
       "fenced command (not counting sends again)."},
      {"journal_writes_total", offsetof(struct metrics, journal_writes),
       "durability redis: journal writes sent, one per loop turn with /incr."},
      {"journal_written_increments_total",
       offsetof(struct metrics, journal_written),
       "durability redis: increments the journal holds, answered 200."},
      {"journal_refused_increments_total",
       offsetof(struct metrics, journal_refused),
       "durability redis: increments the journal could not take, answered "
       "503."},
      {"journal_resolutions_total",
       offsetof(struct metrics, journal_resolutions),
       "durability redis: journal writes whose lost reply was asked for."},
      {"journal_moves_total", offsetof(struct metrics, journal_moves),
       "durability redis: moves of due increments from journal to counter."},
      {"journal_adoptions_total", offsetof(struct metrics, journal_adoptions),
       "durability redis: journals of replicas whose lease lapsed, taken "
       "over."},
      {"journal_adopted_increments_total",
       offsetof(struct metrics, journal_adopted),
       "durability redis: increments in the journals taken over."},
      {"connections_accepted_total",
       offsetof(struct metrics, connections_accepted),
       "TCP connections accepted, those then rejected included."},
      {"connections_rejected_total",
       offsetof(struct metrics, connections_rejected),
       "TCP connections closed at once: past MAX_CONNECTIONS, or no memory "
       "for them."},
  };
  for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
    uint64_t v;
    memcpy(&v, (const char *)m + counters[i].offset, sizeof v);
    family(&b, counters[i].name, "counter", counters[i].help);
    emit(&b, "gracefuld_%s %llu\n", counters[i].name, (unsigned long long)v);
  }

  family(&b, "journal_write_size", "histogram",
         "durability redis: increments per journal write (one write per loop "
         "turn with /incr).");
  uint64_t seen = 0, le = 1;
  for (int i = 0; i < METRICS_WRITE_BUCKETS; i++, le *= 4) {
    seen += m->write_sizes[i];
    if (i < METRICS_WRITE_BUCKETS - 1)
      emit(&b, "gracefuld_journal_write_size_bucket{le=\"%llu\"} %llu\n",
           (unsigned long long)le, (unsigned long long)seen);
    else
      emit(&b, "gracefuld_journal_write_size_bucket{le=\"+Inf\"} %llu\n",
           (unsigned long long)seen);
  }
  emit(&b, "gracefuld_journal_write_size_sum %llu\n",
       (unsigned long long)m->write_size_sum);
  emit(&b, "gracefuld_journal_write_size_count %llu\n",
       (unsigned long long)seen);

  family(&b, "increments_pending", "gauge",
         "Increments answered but not yet replied to by Redis.");
  emit(&b, "gracefuld_increments_pending %llu\n",
       (unsigned long long)g->pending);
  family(&b, "open_connections", "gauge",
         "HTTP connections open, those closing included.");
  emit(&b, "gracefuld_open_connections %llu\n",
       (unsigned long long)g->open_connections);
  family(&b, "redis_connected", "gauge", "1 while the Redis connection is up.");
  emit(&b, "gracefuld_redis_connected %d\n", g->redis_connected ? 1 : 0);
  family(&b, "shutdown_phase", "gauge",
         "1 for the current phase of the shutdown state machine.");
  for (int p = 0; p < PHASE_COUNT; p++)
    emit(&b, "gracefuld_shutdown_phase{phase=\"%s\"} %d\n",
         shutdown_phase_name((enum shutdown_phase)p), p == (int)g->phase);
  /* The standard name (the Prometheus client libraries' process metrics),
   * without our prefix. */
  emit(&b,
       "# HELP process_start_time_seconds Start time of the process "
       "since unix epoch in seconds.\n"
       "# TYPE process_start_time_seconds gauge\n"
       "process_start_time_seconds %.3f\n",
       m->start_time);

  *len = b.len;
  return b.p;
}
