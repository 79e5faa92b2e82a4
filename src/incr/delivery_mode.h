/* The seam between the delivery engine's core (delivery.c) and its two
 * modes (delivery_memory.c, delivery_journal.c): what a mode provides, and
 * what the core lends it. Private to src/incr/delivery*.c. */
#ifndef GRACEFULD_DELIVERY_MODE_H
#define GRACEFULD_DELIVERY_MODE_H

#include "incr/delivery.h"

/* Commands in flight at most: bounds hiredis's buffers when a long outage
 * ends with much due, and keeps the replies flowing. */
#define DELIVERY_WINDOW 1024

/* A tag is what a reply is for: a kind in its low bits, a number above.
 * Kind 0 is the core's WAIT; each mode numbers its own kinds from 1. */
#define TAG_BITS 3
#define TAG_WAIT 0

/* The state of an entry of the ring (a memory batch, a journal write). */
enum entry_state {
  ENTRY_WAITING,    /* to be sent again, or a lost write to resolve */
  ENTRY_SENT,       /* sent on this connection, its reply awaited */
  ENTRY_CONFIRMING, /* applied; REDIS_MIN_REPLICAS: a WAIT must confirm */
  ENTRY_SETTLED,    /* its outcome known: leaves the ring from the head */
};

/* The head of each of a mode's entries; the mode's own fields follow it. */
struct entry {
  uint64_t n;    /* increments */
  uint64_t wait; /* ENTRY_CONFIRMING: a WAIT numbered this or later */
  enum entry_state state;
};

/* What a mode is. Every hook but close is called with the engine open. */
struct delivery_mode {
  size_t entry_size; /* a struct entry first */
  /* Fills the mode's part of d at init (0 or a negative error) and
   * releases it at close. */
  int (*init)(struct delivery *d, const struct delivery_options *opts);
  void (*close)(struct delivery *d);
  /* What a due batch is: takes what fell due at now from the queue. */
  void (*due)(struct delivery *d, uint64_t now);
  /* Sends entry seq again (memory) or what settles it (journal); false
   * when it could not be sent. */
  bool (*resend)(struct delivery *d, uint64_t seq, struct entry *e);
  /* Sends new work once nothing waits to go again, as far as the window
   * allows (NULL: the mode's new work goes at other times). */
  void (*send)(struct delivery *d);
  /* A connection is ready, before anything is sent on it; gone. */
  void (*ready)(struct delivery *d);
  void (*down)(struct delivery *d);
  /* The reply (NULL: lost) to a command of the mode's kind, numbered n. */
  void (*reply)(struct delivery *d, unsigned kind, uint64_t n,
                const redisReply *reply);
  /* WAIT k confirmed what was applied before it: the core settled entries
   * of n increments; the mode counts them and confirms its own. */
  void (*confirmed)(struct delivery *d, uint64_t k, uint64_t n);
  /* Nothing applied and not yet confirmed counts any more: the core made
   * entries of n increments wait again; the mode undoes its own. */
  void (*unconfirmed)(struct delivery *d, uint64_t n);
  /* The settled entry seq has left the head of the ring (NULL: no need). */
  void (*settled)(struct delivery *d, uint64_t seq, const struct entry *e);
  /* Increments the mode holds (delivery_pending). */
  uint64_t (*pending)(const struct delivery *d);
  /* Sends the leave; false when there is none to send. */
  bool (*leave)(struct delivery *d);
  /* What is pending at the end stays in Redis (delivery_hands_over). */
  bool hands_over;
};

extern const struct delivery_mode delivery_memory_mode;
extern const struct delivery_mode delivery_journal_mode;

/* ---- What the core lends the modes -------------------------------------- */

int delivery_ring_init(struct delivery_ring *r, size_t elem);
void *delivery_ring_at(const struct delivery_ring *r, uint64_t i);
/* A new slot at the end, or NULL when out of memory. */
void *delivery_ring_push(struct delivery_ring *r);
void delivery_ring_pop(struct delivery_ring *r);
/* Takes back the slot delivery_ring_push just gave (nothing was sent). */
void delivery_ring_unpush(struct delivery_ring *r);
void delivery_ring_free(struct delivery_ring *r);

/* Whether commands can be sent: a connection is ready, not yet left. */
bool delivery_sending(const struct delivery *d);

/* Sends d->cmd with tag (kind, n), counted in the window. False when no
 * connection took it. */
bool delivery_send(struct delivery *d, unsigned kind, uint64_t n);

/* The entry numbered seq, or NULL when it is not in the ring. */
struct entry *delivery_entry(struct delivery *d, uint64_t seq);

/* e was applied: settled now, or (REDIS_MIN_REPLICAS) once a WAIT numbered
 * `wait` or later confirms it. Returns true when settled now (the mode
 * counts it). delivery_settle_head follows. */
bool delivery_applied(struct delivery *d, struct entry *e, uint64_t wait);

/* Takes settled entries off the head of the ring, in order. */
void delivery_settle_head(struct delivery *d);

/* An error reply: a fresh connection is asked for unless no retry can help.
 * Returns true when the error is permanent. */
bool delivery_on_error(struct delivery *d, const redisReply *reply);

/* n increments Redis refused for good: counted, and logged sparingly. */
void delivery_failed(struct delivery *d, uint64_t n, const redisReply *reply);

/* The mode's leave was answered: the engine has left. */
void delivery_left(struct delivery *d);

/* REDIS_MIN_REPLICAS: a WAIT after what was sent since the last one. */
void delivery_wait_if_due(struct delivery *d);

#endif
