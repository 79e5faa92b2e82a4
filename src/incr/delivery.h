/* The delivery engine: how increments reach the counter in Redis, exactly
 * once, in either durability. The link (or a unit test's fake) carries the
 * commands; this module decides what they are, and what a reply, a lost
 * reply or an error means for the increments they carry.
 *
 * The engine's core (delivery.c) keeps what both durabilities share: a ring
 * of numbered entries, the tags that tie a reply to what it answers, the
 * window of commands in flight, REDIS_MIN_REPLICAS's WAIT, and the
 * lifecycle. What differs is one mode (delivery_mode.h), chosen at init:
 *
 * memory (delivery_memory.c): increments that fell due together go out as
 *   one numbered, fenced batch (lua/batch.lua). Batches apply strictly in
 *   order, so a batch whose reply was lost is simply sent again, with its
 *   number, on the next connection: a copy that Redis still executes late
 *   changes nothing.
 * redis, the journal (delivery_journal.c): the /incr of one loop turn are
 *   recorded with one journal write before their 200s (delivery_write,
 *   which commit.h drives). A write whose reply was lost is resolved on the
 *   next connection: held, or fenced off for good. Written increments wait
 *   in the queue like memory mode's; when they fall due one move per due
 *   batch takes them from the journal to the counter. A lease, renewed
 *   every third of LEASE_MS, keeps other replicas from adopting the
 *   journal; each renewal also adopts the journals of replicas whose lease
 *   lapsed, into the queue.
 *
 * The lifecycle (one state, every transition in delivery.c's next_state):
 *   down --connection ready--> ready --connection lost--> down
 *   ready --leave sent (journal)--> leaving --answered or lost--> left
 *   down|ready --leave, nothing to send--> left
 *   any --delivery_close--> closed */
#ifndef GRACEFULD_DELIVERY_H
#define GRACEFULD_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "config.h"
#include "incr/counter.h"
#include "incr/incr_queue.h"
#include "redis/scripts.h"

struct delivery;

/* What the engine needs of a Redis connection. */
struct delivery_transport {
  /* Queues cmd (copied) on the ready connection. Its reply comes to
   * delivery_on_reply with tag, in the order sent; NULL when the connection
   * broke first. Returns 0, or a negative error when no connection is ready
   * (nothing is queued then). */
  int (*send)(struct delivery *d, const char *cmd, size_t len, uint64_t tag);
  /* Asks for a fresh connection once the replies in flight are in: an error
   * reply that another connection may not get. why is Redis's text. */
  void (*retire)(struct delivery *d, const char *why, size_t len);
  /* Tells an error reply that no retry can fix from one that a retry can. */
  bool (*permanent)(const char *err, size_t len);
};

/* What the engine tells its owner. */
struct delivery_events {
  /* Journal mode: the outcome of write `seq`, in write order: held (the
   * 200s may go) or not (answer 503). */
  void (*on_written)(struct delivery *d, uint64_t seq, bool held);
  /* Journal mode: Redis recorded write `seq`, which carried Idempotency-
   * Keys; flags has one character per key, in the order given to
   * delivery_write: '1' a replay (counted before, not counted again), '0'
   * counted by this write. Only while the reply lives: copy what is kept.
   * on_written follows (later, with REDIS_MIN_REPLICAS). Never called for
   * a write whose reply was lost: its keys counted, replays or not. */
  void (*on_replays)(struct delivery *d, uint64_t seq, const char *flags,
                     size_t len);
  /* Nothing is waiting to be sent or answered (see delivery_pending). */
  void (*on_idle)(struct delivery *d);
  /* The leave that delivery_leave began is over: answered, lost, or (memory
   * mode, or no connection) nothing to say. */
  void (*on_left)(struct delivery *d);
};

struct delivery_options {
  enum durability durability;
  const char *prefix;      /* KEY_PREFIX */
  const char *counter_key; /* COUNTER_KEY */
  uint64_t replica_id;     /* names this replica's keys */
  uint64_t lease_ms;       /* journal mode */
  uint64_t incr_delay_ms;  /* journal mode: how far ahead entries fall due */
  uint64_t idem_ttl_ms;    /* IDEMPOTENCY_TTL_MS (0: a day) */
  /* REDIS_MIN_REPLICAS: what Redis applied counts only once a WAIT (with
   * wait_timeout_ms) says that many replicas have it; 0: at once. */
  uint64_t min_replicas;
  uint64_t wait_timeout_ms;
  struct incr_queue *queue; /* the owner's; written increments go there */
  const struct delivery_transport *transport;
  const struct delivery_events *events;
};

/* A ring of fixed-size elements, for the engine's own lists. */
struct delivery_ring {
  char *buf;
  size_t elem;
  uint64_t cap; /* a power of two */
  uint64_t head;
  uint64_t len;
};

enum delivery_state {
  DELIVERY_DOWN,    /* no connection ready: what falls due waits */
  DELIVERY_READY,   /* a connection is ready: commands go */
  DELIVERY_LEAVING, /* the leave is sent, its reply awaited */
  DELIVERY_LEFT,    /* on_left reported: nothing more is sent */
  DELIVERY_CLOSED,  /* memory released; replies are ignored */
};

/* Memory mode: counted Idempotency-Keys kept in the process at most (for
 * IDEMPOTENCY_TTL_MS at most): a repeat of one forgotten here is still
 * skipped by Redis, only without its Idempotency-Replayed. */
#define DELIVERY_COUNTED_MAX 65536

/* Memory mode's Idempotency-Key (delivery_memory.c). */
struct delivery_key;

/* A list of keys, oldest first. */
struct delivery_keys {
  struct delivery_key *head;
  struct delivery_key *tail;
  uint64_t len;
};

/* Memory mode's own: increments between the queue and their batch, and
 * the Idempotency-Keys this replica answered, in a hash table. A key is
 * in exactly one of: queued (its increment in the queue), due (fallen due,
 * not yet in a batch), a batch's (sent, not settled), counted (its batch
 * applied; kept for IDEMPOTENCY_TTL_MS, at most DELIVERY_COUNTED_MAX). */
struct delivery_memory {
  uint64_t due;        /* fallen due, not yet in a batch (keyed ones too) */
  uint64_t in_batches; /* in batches not yet settled */
  struct delivery_key **buckets; /* chained; a power of two of them */
  uint64_t n_buckets;
  uint64_t n_keys; /* in the table: every list's and every batch's */
  uint64_t seed[2];
  struct delivery_keys queued;   /* by deadline */
  struct delivery_keys due_keys; /* fallen due, in that order */
  struct delivery_keys counted;  /* by when their batch settled */
  struct scripts_idem *scratch;  /* a batch's keys, as the command takes them */
  uint64_t ttl_ms;
};

/* Journal mode's own: the moves, the lease. */
struct delivery_journal {
  /* Due runs not yet moved; moves cover them in order. */
  struct delivery_ring moving;
  uint64_t moving_head;         /* absolute index of moving's first run */
  uint64_t moving_sent;         /* absolute index past the last run sent */
  uint64_t moving_replied;      /* ... past the last run whose move replied */
  struct delivery_ring applied; /* moves applied, a WAIT to confirm them */
  uint64_t in_moving;           /* increments in moving */
  uint64_t in_writes;           /* increments in unresolved writes */
  uint64_t writes_in_flight;    /* journal writes among the sends */
  /* When a write that noted the fence's use was last applied (monotonic
   * ms; 0: none yet, so every write notes it until one is). */
  uint64_t use_noted;
  uv_timer_t lease_timer;       /* renew (and adopt what it names) */
  uint64_t lease_ms;
  uint64_t incr_delay_ms;
  /* Renewals move what the queue may have missed (they read the whole
   * journal) until then (monotonic ms), and every SWEEP_EVERY-th one. */
  uint64_t sweep_until;
  uint64_t renewals;
};

struct delivery {
  const struct delivery_mode *mode; /* the seam: memory or journal */
  enum delivery_state state;
  struct scripts scripts; /* the keys and scripts */
  struct scripts_cmd cmd; /* the command being built */
  struct incr_queue *queue;
  struct counter_stats stats;
  const struct delivery_transport *transport;
  const struct delivery_events *events;
  uv_loop_t *loop;
  /* The mode's entries (memory: batches, journal: writes) not yet settled,
   * numbered first_seq, first_seq+1, ... */
  struct delivery_ring entries;
  uint64_t first_seq;
  uint64_t resend_from;  /* entries from this index on go (again) when ready */
  uint64_t in_flight;    /* commands sent, reply not yet read */
  uint64_t sends;        /* commands sent, ever */
  uint64_t sends_waited; /* sends when the last WAIT went */
  /* REDIS_MIN_REPLICAS: what was applied counts once a WAIT says that many
   * replicas have it; WAITs are numbered */
  uint64_t min_replicas;
  uint64_t wait_timeout_ms;
  uint64_t waits_sent;
  bool wait_short_logged;
  union {
    struct delivery_memory memory;
    struct delivery_journal journal;
  } m;
};

/* Prepares the engine on loop (journal mode: its lease timer). opts and
 * what it points to must outlive the engine. Returns 0 or a negative error
 * (UV_EINVAL: a key would be too long; UV_ENOMEM). */
int delivery_init(struct delivery *d, uv_loop_t *loop,
                  const struct delivery_options *opts);

/* A connection is ready (authenticated, database selected): what was lost
 * is sent again or resolved, then whatever waits, and in journal mode the
 * lease is renewed at once. */
void delivery_on_ready(struct delivery *d);

/* The connection is gone (its lost replies have been delivered). */
void delivery_on_down(struct delivery *d);

/* The reply (NULL: lost) to the command sent with tag. */
void delivery_on_reply(struct delivery *d, uint64_t tag,
                       const redisReply *reply);

/* The queue's timer: takes what is due at now (monotonic ms) from the
 * queue, as the mode's batches (memory) or moves (journal). */
void delivery_due(struct delivery *d, uint64_t now);

/* Increments the engine holds: taken from the queue and not yet counted.
 * The queue's are the owner's to count. */
uint64_t delivery_pending(const struct delivery *d);

/* Whether what is still pending when the process ends is kept by Redis
 * (journal mode: handed over to whoever adopts the journal) rather than
 * lost with the process (memory mode: abandoned). */
bool delivery_hands_over(const struct delivery *d);

/* Memory mode: what delivery_incr_keyed did. */
enum delivery_keyed {
  DELIVERY_KEYED_QUEUED, /* a new key: its increment is in the queue */
  DELIVERY_KEYED_REPLAY, /* pending or counted here already: nothing queued */
};

/* Memory mode: one /incr with the Idempotency-Key key (len bytes, copied),
 * due at deadline (monotonic ms): queued with its key unless the key is
 * pending here or was counted here within IDEMPOTENCY_TTL_MS (a replay).
 * The batch that carries it records the key in Redis as it counts it, and
 * skips it when another replica (or this one, longer ago than the process
 * remembers) counted it first. Returns 0 and what it did in *out, or
 * UV_ENOMEM (nothing queued). */
int delivery_incr_keyed(struct delivery *d, const char *key, size_t len,
                        uint64_t deadline, enum delivery_keyed *out);

/* Journal mode: records n increments due at deadline (monotonic ms) in the
 * journal, n_keys of them with the Idempotency-Keys keys (copied; at most
 * SCRIPTS_IDEM_MAX), each counted once. Returns the write's number, whose
 * outcome on_written tells (and on_replays which keys were replays); 0
 * when no write could be sent (answer 503 at once). */
uint64_t delivery_write(struct delivery *d, uint64_t deadline, uint64_t n,
                        const struct scripts_idem *keys, size_t n_keys);

/* Journal mode: whether delivery_write can send now. */
bool delivery_can_write(const struct delivery *d);

/* Journal mode: increments in writes whose outcome is not known yet. */
uint64_t delivery_unresolved(const struct delivery *d);

/* Journal mode: the end of a loop turn, after its write (if any). Moves
 * that fell due ride with the next write; with none on its way they go
 * alone now. REDIS_MIN_REPLICAS: a WAIT follows what was sent. */
void delivery_turn_end(struct delivery *d);

/* Journal mode: gives up the lease (and an empty journal). Memory mode:
 * nothing to say. on_left follows, at once when nothing was sent. */
void delivery_leave(struct delivery *d);

/* Stops the lease timer and releases memory; replies that still come are
 * ignored. */
void delivery_close(struct delivery *d);

#endif
