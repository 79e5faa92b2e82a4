/* Pending increments, in deadline order.
 *
 * The delay is one constant, so deadlines arrive in non-decreasing order and a
 * FIFO is a priority queue. Equal deadlines (every request within one loop
 * tick shares uv_now) are stored as one run { deadline, count }, in a ring
 * buffer that doubles when full: 8 bytes per run, and a run holds as many
 * increments as arrive within the same millisecond. One uv_timer is armed for
 * the head run; nothing is allocated per increment. */
#ifndef GRACEFULD_INCR_QUEUE_H
#define GRACEFULD_INCR_QUEUE_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

/* A run keeps the low 32 bits of its deadline: all pending deadlines lie
 * within INCR_DELAY_MS (at most a day) of one another, so each is known
 * from its distance to the newest, whose full value the queue keeps. */
struct incr_run {
  uint32_t deadline; /* uv_now() milliseconds, modulo 2^32 */
  uint32_t count;
};

struct incr_queue;
/* Called from the queue's timer when the earliest deadline has come: the
 * owner takes what is due at now (incr_queue_pop_due, or run by run with
 * incr_queue_pop_run); the timer is armed again for what is left. */
typedef void (*incr_queue_due_cb)(struct incr_queue *q, uint64_t now);

struct incr_queue {
  struct incr_run *runs; /* ring buffer, capacity a power of two */
  uint64_t cap;
  uint64_t head;    /* index of the oldest run */
  uint64_t len;     /* runs in use */
  uint64_t pending; /* increments in all runs */
  uint64_t last;    /* the newest run's deadline, in full */
  uv_timer_t timer;
  uv_loop_t *loop;
  incr_queue_due_cb on_due;
  void (*on_close)(struct incr_queue *q);
};

/* Initialises an empty queue, its timer on loop. Returns 0 or a negative
 * UV_E* (UV_ENOMEM). */
int incr_queue_init(struct incr_queue *q, uv_loop_t *loop,
                    incr_queue_due_cb on_due);

/* Adds one increment due at deadline, which must not be earlier than the
 * last one pushed. Arms the timer when the queue was empty. Returns 0 or
 * UV_ENOMEM (the queue is unchanged then). */
int incr_queue_push(struct incr_queue *q, uint64_t deadline);

/* Adds count increments due at deadline, which may be earlier than the last
 * one pushed (increments adopted from another replica): in order this costs
 * what a push costs, out of order the ring is rebuilt. Returns 0 or
 * UV_ENOMEM; on UV_ENOMEM part of count may have been added, never more. */
int incr_queue_add(struct incr_queue *q, uint64_t deadline, uint64_t count);

/* Removes the earliest run if it is due at or before now: its deadline and
 * count go to *deadline and *count. Returns false when nothing is due. */
bool incr_queue_pop_run(struct incr_queue *q, uint64_t now, uint64_t *deadline,
                        uint64_t *count);

/* Removes every increment due at or before now; returns how many. */
uint64_t incr_queue_pop_due(struct incr_queue *q, uint64_t now);

/* The earliest deadline; only meaningful when pending > 0. */
uint64_t incr_queue_next_deadline(const struct incr_queue *q);

/* Empties the queue, returning how many increments it held. */
uint64_t incr_queue_clear(struct incr_queue *q);

/* Closes the timer; the memory is released in its close callback, after
 * which cb (if not NULL) is called with q. The loop must run for that. */
void incr_queue_close(struct incr_queue *q, void (*cb)(struct incr_queue *q));

#endif
