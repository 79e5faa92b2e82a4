/* The counts of increments on their way to the Redis counter: kept by the
 * delivery engine (delivery.h), read by /metrics, which needs nothing else
 * of the engine. */
#ifndef GRACEFULD_COUNTER_H
#define GRACEFULD_COUNTER_H

#include <stdint.h>

/* Journal write sizes: up to 1, 4, 16, 64, 256, 1024 increments, more. */
#define COUNTER_WRITE_BUCKETS 7

struct counter_stats {
  uint64_t done;                  /* counted by Redis (and confirmed) */
  uint64_t retried;               /* memory: sent again after a lost reply */
  uint64_t failed;                /* Redis refused them for good */
  uint64_t batches;               /* memory: batches sent (first sends) */
  uint64_t journal_writes;        /* journal writes sent */
  uint64_t journal_resolutions;   /* writes whose lost reply was asked for */
  uint64_t journal_moves;         /* moves sent, alone or with a write */
  uint64_t journal_adoptions;     /* journals of lapsed replicas taken over */
  uint64_t journal_adopted;       /* increments in them */
  uint64_t journal_errors;        /* in writes Redis answered with an error */
  uint64_t journal_swept;         /* moved by a lease renewal, not a move */
  uint64_t journal_moved_already; /* a move found them moved (a renewal, or
                                     a replica that adopted them) */
  uint64_t write_sizes[COUNTER_WRITE_BUCKETS]; /* journal writes by size */
  uint64_t write_size_sum;
};

/* A journal write of n increments was sent: its size into the histogram. */
static inline void counter_stats_observe_write(struct counter_stats *s,
                                               uint64_t n) {
  int b = 0;
  for (uint64_t le = 1; b < COUNTER_WRITE_BUCKETS - 1 && n > le; le *= 4)
    b++;
  s->write_sizes[b]++;
  s->write_size_sum += n;
}

#endif
