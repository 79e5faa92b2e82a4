/* Memory mode: what fell due goes out as numbered, fenced batches
 * (lua/batch.lua), strictly in order. A batch whose reply was lost is sent
 * again with its number; Redis applies each number once. */
#include <stdlib.h>

#include "incr/delivery_mode.h"

/* Increments in one batch at most: an INCRBY of any size is one command,
 * but a bound keeps a batch's loss or failure bounded too. */
#define BATCH_MAX (1ull << 32)

enum { TAG_BATCH = 1 }; /* numbered by the batch */

static struct delivery_memory *memory(struct delivery *d) {
  return &d->m.memory;
}

static int memory_init(struct delivery *d,
                       const struct delivery_options *opts) {
  (void)opts;
  d->m.memory = (struct delivery_memory){0};
  return 0;
}

static void memory_due(struct delivery *d, uint64_t now) {
  memory(d)->due += incr_queue_pop_due(d->queue, now);
}

static bool send_batch(struct delivery *d, uint64_t seq, uint64_t n) {
  return scripts_cmd_batch(&d->cmd, &d->scripts, seq, n, d->first_seq) == 0 &&
         delivery_send(d, TAG_BATCH, seq);
}

static bool memory_resend(struct delivery *d, uint64_t seq, struct entry *e) {
  if (!send_batch(d, seq, e->n))
    return false;
  e->state = ENTRY_SENT;
  return true;
}

/* New batches of what fell due. */
static void memory_send(struct delivery *d) {
  struct delivery_memory *m = memory(d);
  while (m->due > 0 && d->in_flight < DELIVERY_WINDOW) {
    uint64_t n = m->due < BATCH_MAX ? m->due : BATCH_MAX;
    uint64_t seq = d->first_seq + d->entries.len;
    struct entry *e = delivery_ring_push(&d->entries);
    if (!e)
      return; /* sent on a later turn */
    if (!send_batch(d, seq, n)) {
      delivery_ring_unpush(&d->entries);
      return;
    }
    *e = (struct entry){.n = n, .state = ENTRY_SENT};
    d->resend_from = d->entries.len;
    m->due -= n;
    m->in_batches += n;
    d->stats.batches++;
  }
}

/* Nothing of its own to open, close or reset. */
static void memory_noop(struct delivery *d) { (void)d; }

/* The batch's outcome is known: it leaves the ring once those before it
 * have (delivery_settle_head). */
static void finish(struct delivery *d, struct entry *e) {
  memory(d)->in_batches -= e->n;
  e->state = ENTRY_SETTLED;
}

static void sent_again(struct delivery *d, struct entry *e) {
  e->state = ENTRY_WAITING;
  d->stats.retried += e->n;
}

static void memory_reply(struct delivery *d, unsigned kind, uint64_t seq,
                         const redisReply *reply) {
  (void)kind; /* TAG_BATCH, the only one */
  struct entry *e = delivery_entry(d, seq);
  if (!e || e->state != ENTRY_SENT)
    return;
  if (!reply) {
    sent_again(d, e);
    return;
  }
  switch (scripts_batch_outcome(reply)) {
  case SCRIPTS_APPLIED:
  case SCRIPTS_DUPLICATE:
    if (delivery_applied(d, e, d->waits_sent)) {
      d->stats.done += e->n;
      finish(d, e);
    }
    break;
  case SCRIPTS_OUT_OF_ORDER:
    /* An earlier batch was not applied: both go again, in order. */
    e->state = ENTRY_WAITING;
    d->transport->retire(d, "batch out of order", 18);
    break;
  case SCRIPTS_ERROR:
    if (!delivery_on_error(d, reply)) {
      sent_again(d, e);
      break;
    }
    delivery_failed(d, e->n, reply);
    finish(d, e);
    break;
  default:
    delivery_failed(d, e->n, reply);
    finish(d, e);
    break;
  }
  delivery_settle_head(d);
}

static void memory_confirmed(struct delivery *d, uint64_t k, uint64_t n) {
  (void)k;
  d->stats.done += n;
  memory(d)->in_batches -= n;
  delivery_settle_head(d);
}

/* Sent again with their numbers: a copy the master has is a no-op. */
static void memory_unconfirmed(struct delivery *d, uint64_t n) {
  d->stats.retried += n;
}

static uint64_t memory_pending(const struct delivery *d) {
  return d->m.memory.due + d->m.memory.in_batches;
}

/* Nothing of this replica stays in Redis. */
static bool memory_leave(struct delivery *d) {
  (void)d;
  return false;
}

const struct delivery_mode delivery_memory_mode = {
    .entry_size = sizeof(struct entry),
    .init = memory_init,
    .close = memory_noop,
    .due = memory_due,
    .resend = memory_resend,
    .send = memory_send,
    .ready = memory_noop,
    .down = memory_noop,
    .reply = memory_reply,
    .confirmed = memory_confirmed,
    .unconfirmed = memory_unconfirmed,
    .settled = NULL,
    .pending = memory_pending,
    .leave = memory_leave,
    .hands_over = false,
};
