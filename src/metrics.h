/* Counters and gauges, rendered as Prometheus text (version 0.0.4). Counting
 * is a plain increment on the hot path; rendering fills one buffer. */
#ifndef GRACEFULD_METRICS_H
#define GRACEFULD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "http/routes.h"
#include "shutdown.h"

/* The status codes counted one by one; any other lands in the last slot. */
#define METRICS_STATUSES 10
/* Journal write sizes: up to 1, 4, 16, 64, 256, 1024 increments, more. */
#define METRICS_WRITE_BUCKETS 7

struct metrics {
  uint64_t requests[ROUTE_COUNT][METRICS_STATUSES];
  uint64_t incr_accepted; /* answered 200 and queued */
  uint64_t incr_done;     /* Redis replied to the INCR */
  uint64_t incr_retried;  /* sent again after a connection broke */
  uint64_t incr_failed;   /* Redis answered with an error */
  uint64_t redis_reconnects;
  uint64_t batches;             /* memory: batches sent (first sends) */
  uint64_t journal_writes;      /* journal writes sent */
  uint64_t journal_written;     /* increments held by the journal: 200 */
  uint64_t journal_refused;     /* increments not written: 503 */
  uint64_t journal_resolutions; /* writes whose lost reply was asked for */
  uint64_t journal_moves;       /* moves sent, alone or with a write */
  uint64_t journal_adoptions;   /* journals of lapsed replicas taken over */
  uint64_t journal_adopted;     /* increments in them */
  uint64_t write_sizes[METRICS_WRITE_BUCKETS]; /* journal writes by size */
  uint64_t write_size_sum;
  uint64_t connections_accepted;
  uint64_t connections_rejected; /* over MAX_CONNECTIONS */
  double start_time;             /* Unix seconds */
};

/* Values read at the moment of rendering. */
struct metrics_gauges {
  uint64_t pending;
  uint64_t open_connections;
  int redis_connected;
  enum shutdown_phase phase;
};

void metrics_init(struct metrics *m);

void metrics_count_request(struct metrics *m, enum route r, uint16_t status);

/* A journal write of n increments was sent. */
void metrics_observe_write(struct metrics *m, uint64_t n);

/* n requests answered alike (held responses filled in together). */
void metrics_count_requests(struct metrics *m, enum route r, uint16_t status,
                            uint64_t n);

/* Renders everything into a malloc'd buffer, which the caller frees; *len
 * receives its length. Returns NULL when out of memory. */
char *metrics_render(const struct metrics *m, const struct metrics_gauges *g,
                     size_t *len);

#endif
