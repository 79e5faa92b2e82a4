/* /metrics: counters and gauges, rendered as Prometheus text (version
 * 0.0.4). The frame counts what it answers here; each room keeps its own
 * counts (server_stats, redis_link_stats, counter_stats), read only when
 * rendering. Counting is a plain increment on the hot path. */
#ifndef GRACEFULD_METRICS_H
#define GRACEFULD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "http/routes.h"
#include "http/server.h"
#include "incr/counter.h"
#include "redis/redis_link.h"
#include "shutdown.h"

/* The status codes counted one by one; any other lands in the last slot. */
#define METRICS_STATUSES 10

struct metrics {
  uint64_t requests[ROUTE_COUNT][METRICS_STATUSES];
  uint64_t incr_accepted;   /* answered 200 */
  uint64_t journal_written; /* increments held by the journal: 200 */
  uint64_t journal_refused; /* increments not written: 503 */
  uint64_t idem_replays;    /* Idempotency-Key counted before: 200, no count */
  uint64_t idem_conflicts;  /* Idempotency-Key still in progress: 409 */
  double start_time;        /* Unix seconds */
};

/* What the rooms hold, read at the moment of rendering. */
struct metrics_view {
  const struct server_stats *server;
  const struct redis_link_stats *link;
  const struct counter_stats *counter;
  uint64_t pending;
  int redis_connected;
  const char *redis_node;      /* "" before the first connection */
  const char *redis_transport; /* tcp, tls or unix */
  enum shutdown_phase phase;
};

void metrics_init(struct metrics *m);

void metrics_count_request(struct metrics *m, enum route r, uint16_t status);

/* n requests answered alike (held responses filled in together). */
void metrics_count_requests(struct metrics *m, enum route r, uint16_t status,
                            uint64_t n);

/* Renders everything into a malloc'd buffer, which the caller frees; *len
 * receives its length. Returns NULL when out of memory. */
char *metrics_render(const struct metrics *m, const struct metrics_view *v,
                     size_t *len);

#endif
