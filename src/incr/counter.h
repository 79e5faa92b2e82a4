/* How increments reach the counter in Redis, exactly once, in either
 * durability. The link (or a unit test's fake) carries the commands; this
 * module decides what they are, and what a reply, a lost reply or an error
 * means for the increments they carry.
 *
 * memory: increments that fell due together go out as one numbered batch
 *   (lua/batch.lua). Batches apply strictly in order, so a batch whose reply
 *   was lost is simply sent again, with its number, on the next connection:
 *   a copy that Redis still executes late changes nothing.
 * redis (journal): the /incr of one loop turn are recorded with one journal
 *   write before their 200s (counter_write). A write whose reply was lost is
 *   resolved on the next connection: held, or fenced off for good. Written
 *   increments wait in the queue like memory mode's; when they fall due
 *   (counter_due) one move per due batch takes them from the journal to the
 *   counter. A lease, renewed every third of LEASE_MS, keeps other replicas
 *   from adopting the journal; each renewal also adopts the journals of
 *   replicas whose lease lapsed, into the queue. */
#ifndef GRACEFULD_COUNTER_H
#define GRACEFULD_COUNTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "config.h"
#include "incr/incr_queue.h"
#include "redis/journal.h"

struct counter;

/* Journal write sizes: up to 1, 4, 16, 64, 256, 1024 increments, more. */
#define COUNTER_WRITE_BUCKETS 7

/* The counter's own counts, which /metrics reads. */
struct counter_stats {
  uint64_t done;                /* counted by Redis (and confirmed) */
  uint64_t retried;             /* memory: sent again after a lost reply */
  uint64_t failed;              /* Redis refused them for good */
  uint64_t batches;             /* memory: batches sent (first sends) */
  uint64_t journal_writes;      /* journal writes sent */
  uint64_t journal_resolutions; /* writes whose lost reply was asked for */
  uint64_t journal_moves;       /* moves sent, alone or with a write */
  uint64_t journal_adoptions;   /* journals of lapsed replicas taken over */
  uint64_t journal_adopted;     /* increments in them */
  uint64_t write_sizes[COUNTER_WRITE_BUCKETS]; /* journal writes by size */
  uint64_t write_size_sum;
};

/* A journal write of n increments was sent: its size into the histogram. */
void counter_stats_observe_write(struct counter_stats *s, uint64_t n);

/* What the counter needs of a Redis connection. */
struct counter_transport {
  /* Queues cmd (copied) on the ready connection. Its reply comes to
   * counter_on_reply with tag, in the order sent; NULL when the connection
   * broke first. Returns 0, or a negative error when no connection is ready
   * (nothing is queued then). */
  int (*send)(struct counter *c, const char *cmd, size_t len, uint64_t tag);
  /* Asks for a fresh connection once the replies in flight are in: an error
   * reply that another connection may not get. why is Redis's text. */
  void (*retire)(struct counter *c, const char *why, size_t len);
  /* Tells an error reply that no retry can fix from one that a retry can. */
  bool (*permanent)(const char *err, size_t len);
};

/* What the counter tells its owner. */
struct counter_events {
  /* Journal mode: the outcome of write `seq`, in write order: held (the
   * 200s may go) or not (answer 503). */
  void (*on_written)(struct counter *c, uint64_t seq, bool held);
  /* Nothing is waiting to be sent or answered (see counter_pending). */
  void (*on_idle)(struct counter *c);
  /* Journal mode: the leave that counter_leave sent has been answered, or
   * could not be sent. */
  void (*on_left)(struct counter *c);
};

/* A ring of fixed-size entries, for the counter's own lists. */
struct counter_ring {
  char *buf;
  size_t elem;
  uint64_t cap; /* a power of two */
  uint64_t head;
  uint64_t len;
};

struct counter {
  enum durability durability;
  struct journal journal;
  struct journal_cmd cmd;
  struct incr_queue *queue; /* the owner's; written increments go there */
  struct counter_stats stats;
  const struct counter_transport *transport;
  const struct counter_events *events;
  uv_loop_t *loop;        /* NULL in unit tests: no lease timer */
  uv_timer_t lease_timer; /* journal mode: renew and adopt */
  uint64_t lease_ms;
  bool ready;   /* a connection is ready: commands can be sent */
  bool leaving; /* counter_leave was called */
  bool left;    /* on_left was called */
  bool closed;
  /* memory: batches not yet applied, numbered first_seq, first_seq+1, ...
   * journal: writes not yet resolved, numbered the same way */
  struct counter_ring batches;
  uint64_t first_seq;
  uint64_t resend_from; /* batches from this index on go (again) when ready */
  uint64_t due;         /* memory: fallen due, not yet in a batch */
  uint64_t in_batches;  /* memory: increments in batches */
  uint64_t in_writes;   /* journal: increments in unresolved writes */
  /* journal: due runs not yet moved; moves cover them in order */
  struct counter_ring moving;
  uint64_t moving_head;        /* absolute index of moving's first run */
  uint64_t moving_sent;        /* absolute index past the last run sent */
  uint64_t moving_replied;     /* ... past the last run whose move replied */
  struct counter_ring applied; /* moves applied, a WAIT to confirm them */
  uint64_t in_moving;          /* increments in moving */
  uint64_t in_flight;          /* commands sent, reply not yet read */
  uint64_t writes_in_flight;   /* journal writes among them */
  uint64_t sends;              /* commands sent, ever */
  uint64_t sends_waited;       /* sends when the last WAIT went */
  /* REDIS_MIN_REPLICAS: what was applied counts once a WAIT says that many
   * replicas have it; WAITs are numbered */
  uint64_t min_replicas;
  uint64_t wait_timeout_ms;
  uint64_t waits_sent;
  bool wait_short_logged;
};

/* Prepares the counter; its lease timer (journal mode) runs on loop when
 * loop is not NULL. replica_id names this replica's keys. With
 * min_replicas, what Redis applied counts only once a WAIT (with
 * wait_timeout_ms) says that many replicas have it. Returns 0 or a
 * negative error (UV_EINVAL: a key would be too long). */
int counter_init(struct counter *c, uv_loop_t *loop, enum durability d,
                 const char *prefix, const char *counter_key,
                 uint64_t replica_id, uint64_t lease_ms, uint64_t min_replicas,
                 uint64_t wait_timeout_ms, struct incr_queue *queue,
                 const struct counter_transport *transport,
                 const struct counter_events *events);

/* A connection is ready (authenticated, database selected): what was lost
 * is sent again or resolved, then whatever waits, and in journal mode the
 * lease is renewed at once. */
void counter_on_ready(struct counter *c);

/* The connection is gone (its lost replies have been delivered). */
void counter_on_down(struct counter *c);

/* The reply (NULL: lost) to the command sent with tag. */
void counter_on_reply(struct counter *c, uint64_t tag, const redisReply *reply);

/* Memory mode: n more increments fell due. */
void counter_add_due(struct counter *c, uint64_t n);

/* Journal mode: moves whatever the queue holds that is due at now. */
void counter_due(struct counter *c, uint64_t now);

/* Journal mode: records n increments due at deadline (monotonic ms) in the
 * journal. Returns the write's number, whose outcome on_written tells; 0
 * when no connection is ready, and nothing was sent (answer 503 at once). */
uint64_t counter_write(struct counter *c, uint64_t deadline, uint64_t n);

/* Increments this module holds: due or in batches (memory), falling due
 * and not yet moved (journal). The queue's are the owner's to count. */
uint64_t counter_pending(const struct counter *c);

/* Increments in journal writes whose outcome is not known yet. */
uint64_t counter_unresolved_increments(const struct counter *c);

/* Journal mode: the end of a loop turn, after its write (if any). Moves
 * that fell due ride with the next write; with none on its way they go
 * alone now. REDIS_MIN_REPLICAS: a WAIT follows what was sent. */
void counter_turn_end(struct counter *c);

/* Journal mode: whether counter_write can send now. */
bool counter_can_write(const struct counter *c);

/* Journal mode: gives up the lease (and an empty journal). on_left follows.
 * Memory mode: on_left at once. */
void counter_leave(struct counter *c);

/* Stops the lease timer and releases memory; replies that still come are
 * ignored. */
void counter_close(struct counter *c);

#endif
