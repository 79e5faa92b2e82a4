/* Memory mode: what fell due goes out as numbered, fenced batches
 * (lua/batch.lua), strictly in order. A batch whose reply was lost is sent
 * again with its number; Redis applies each number once.
 *
 * Idempotency-Keys: each keyed increment's key waits beside the queue in
 * deadline order (the queue keeps counts, not keys), goes with the batch
 * its increment falls due into, with every copy of that batch, and is
 * kept, once counted, for IDEMPOTENCY_TTL_MS or until DELIVERY_COUNTED_MAX
 * newer ones were counted. A hash table finds any of them in O(1): a key
 * found is a replay. Memory: every key pending here (each one a pending
 * increment, so at most MAX_PENDING) plus at most DELIVERY_COUNTED_MAX
 * counted ones, each about 48 bytes beside its own length. */
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "incr/delivery_mode.h"

/* Increments in one batch at most: an INCRBY of any size is one command,
 * but a bound keeps a batch's loss or failure bounded too. */
#define BATCH_MAX (1ull << 32)

enum { TAG_BATCH = 1 }; /* numbered by the batch */

struct delivery_key {
  struct delivery_key *chain; /* the bucket's next */
  struct delivery_key *next;  /* the next in its list, or its batch's */
  uint64_t at; /* queued: its deadline; counted: when (monotonic ms) */
  uint64_t hash;
  size_t len;
  char key[];
};

/* A batch: the core's entry, and the keys of n_keys of its increments. */
struct batch {
  struct entry e;
  struct delivery_key *keys;
  uint64_t n_keys;
  bool failed; /* refused for good: its keys did not count */
};

static struct delivery_memory *memory(struct delivery *d) {
  return &d->m.memory;
}

/* ---- The keys ----------------------------------------------------------- */

/* SipHash-2-4 with a key drawn at start: a client cannot choose keys that
 * all fall into one bucket. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                               \
  do {                                                                         \
    v0 += v1;                                                                  \
    v1 = ROTL(v1, 13);                                                         \
    v1 ^= v0;                                                                  \
    v0 = ROTL(v0, 32);                                                         \
    v2 += v3;                                                                  \
    v3 = ROTL(v3, 16);                                                         \
    v3 ^= v2;                                                                  \
    v0 += v3;                                                                  \
    v3 = ROTL(v3, 21);                                                         \
    v3 ^= v0;                                                                  \
    v2 += v1;                                                                  \
    v1 = ROTL(v1, 17);                                                         \
    v1 ^= v2;                                                                  \
    v2 = ROTL(v2, 32);                                                         \
  } while (0)

static uint64_t siphash(const uint64_t k[2], const char *in, size_t len) {
  uint64_t v0 = k[0] ^ 0x736f6d6570736575ull, v1 = k[1] ^ 0x646f72616e646f6dull;
  uint64_t v2 = k[0] ^ 0x6c7967656e657261ull, v3 = k[1] ^ 0x7465646279746573ull;
  const unsigned char *p = (const unsigned char *)in;
  size_t whole = len - len % 8;
  for (size_t i = 0; i < whole; i += 8) {
    uint64_t m = 0;
    for (int b = 0; b < 8; b++)
      m |= (uint64_t)p[i + b] << (8 * b);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t last = (uint64_t)len << 56;
  for (size_t b = 0; b < len % 8; b++)
    last |= (uint64_t)p[whole + b] << (8 * b);
  v3 ^= last;
  SIPROUND;
  SIPROUND;
  v0 ^= last;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

static struct delivery_key **bucket_of(struct delivery_memory *m,
                                       uint64_t hash) {
  return &m->buckets[hash & (m->n_buckets - 1)];
}

static struct delivery_key *keys_find(struct delivery_memory *m,
                                      const char *key, size_t len,
                                      uint64_t hash) {
  for (struct delivery_key *k = *bucket_of(m, hash); k; k = k->chain)
    if (k->hash == hash && k->len == len && memcmp(k->key, key, len) == 0)
      return k;
  return NULL;
}

/* Doubles the buckets once there are more keys than buckets; a table that
 * cannot grow still works, with longer chains. */
static void keys_grow(struct delivery_memory *m) {
  if (m->n_keys < m->n_buckets)
    return;
  uint64_t n = m->n_buckets * 2;
  struct delivery_key **b = calloc(n, sizeof *b);
  if (!b)
    return;
  for (uint64_t i = 0; i < m->n_buckets; i++) {
    for (struct delivery_key *k = m->buckets[i], *next; k; k = next) {
      next = k->chain;
      k->chain = b[k->hash & (n - 1)];
      b[k->hash & (n - 1)] = k;
    }
  }
  free(m->buckets);
  m->buckets = b;
  m->n_buckets = n;
}

/* Takes k out of the table and frees it (it is in no list any more). */
static void keys_remove(struct delivery_memory *m, struct delivery_key *k) {
  struct delivery_key **p = bucket_of(m, k->hash);
  while (*p != k)
    p = &(*p)->chain;
  *p = k->chain;
  m->n_keys--;
  free(k);
}

static void list_append(struct delivery_keys *l, struct delivery_key *k) {
  k->next = NULL;
  if (l->tail)
    l->tail->next = k;
  else
    l->head = k;
  l->tail = k;
  l->len++;
}

static struct delivery_key *list_shift(struct delivery_keys *l) {
  struct delivery_key *k = l->head;
  l->head = k->next;
  if (!l->head)
    l->tail = NULL;
  l->len--;
  return k;
}

/* Counted keys older than the TTL, or beyond DELIVERY_COUNTED_MAX, are
 * forgotten here: Redis still knows them (within its TTL), so a request
 * that repeats one is queued and its batch skips it. */
static void keys_prune(struct delivery_memory *m, uint64_t now) {
  while (m->counted.head && (m->counted.len > DELIVERY_COUNTED_MAX ||
                             m->counted.head->at + m->ttl_ms <= now))
    keys_remove(m, list_shift(&m->counted));
}

int delivery_incr_keyed(struct delivery *d, const char *key, size_t len,
                        uint64_t deadline, enum delivery_keyed *out) {
  if (d->mode != &delivery_memory_mode)
    return UV_EINVAL;
  struct delivery_memory *m = memory(d);
  keys_prune(m, uv_now(d->loop));
  uint64_t hash = siphash(m->seed, key, len);
  if (keys_find(m, key, len, hash)) {
    *out = DELIVERY_KEYED_REPLAY;
    return 0;
  }
  struct delivery_key *k = malloc(sizeof *k + len);
  if (!k)
    return UV_ENOMEM;
  int rc = incr_queue_push(d->queue, deadline);
  if (rc) {
    free(k);
    return rc;
  }
  /* Where the queue put it: the key falls due with its increment. */
  *k = (struct delivery_key){.at = d->queue->last, .hash = hash, .len = len};
  memcpy(k->key, key, len);
  struct delivery_key **b = bucket_of(m, hash);
  k->chain = *b;
  *b = k;
  m->n_keys++;
  list_append(&m->queued, k);
  keys_grow(m);
  *out = DELIVERY_KEYED_QUEUED;
  return 0;
}

/* ---- The mode ----------------------------------------------------------- */

static int memory_init(struct delivery *d,
                       const struct delivery_options *opts) {
  (void)opts;
  struct delivery_memory *m = memory(d);
  *m = (struct delivery_memory){.n_buckets = 64,
                                .ttl_ms = d->scripts.idem_ttl_ms};
  if (uv_random(NULL, NULL, m->seed, sizeof m->seed, 0, NULL) != 0) {
    /* No entropy at hand: the clock still keeps the seed unknown to a
     * client that never saw this process start. */
    m->seed[0] = uv_hrtime();
    m->seed[1] = (uint64_t)(uintptr_t)m ^ uv_hrtime() << 17;
  }
  m->buckets = calloc(m->n_buckets, sizeof *m->buckets);
  m->scratch = malloc(SCRIPTS_IDEM_MAX * sizeof *m->scratch);
  if (!m->buckets || !m->scratch) {
    free(m->buckets);
    free(m->scratch);
    return UV_ENOMEM;
  }
  return 0;
}

/* Every key is in the table, whatever list or batch holds it. */
static void memory_close(struct delivery *d) {
  struct delivery_memory *m = memory(d);
  for (uint64_t i = 0; i < m->n_buckets; i++) {
    for (struct delivery_key *k = m->buckets[i], *next; k; k = next) {
      next = k->chain;
      free(k);
    }
  }
  free(m->buckets);
  free(m->scratch);
  *m = (struct delivery_memory){0};
}

static void memory_due(struct delivery *d, uint64_t now) {
  struct delivery_memory *m = memory(d);
  m->due += incr_queue_pop_due(d->queue, now);
  while (m->queued.head && m->queued.head->at <= now)
    list_append(&m->due_keys, list_shift(&m->queued));
  keys_prune(m, now);
}

static bool send_batch(struct delivery *d, uint64_t seq, uint64_t n,
                       struct delivery_key *keys, uint64_t n_keys) {
  struct delivery_memory *m = memory(d);
  struct delivery_key *k = keys;
  for (uint64_t i = 0; i < n_keys; i++, k = k->next)
    m->scratch[i] = (struct scripts_idem){k->key, k->len};
  return scripts_cmd_batch(&d->cmd, &d->scripts, seq, n, d->first_seq,
                           m->scratch, n_keys) == 0 &&
         delivery_send(d, TAG_BATCH, seq);
}

static bool memory_resend(struct delivery *d, uint64_t seq, struct entry *e) {
  struct batch *b = (struct batch *)e;
  if (!send_batch(d, seq, e->n, b->keys, b->n_keys))
    return false;
  e->state = ENTRY_SENT;
  return true;
}

/* New batches of what fell due: the keys due first (at most
 * SCRIPTS_IDEM_MAX a batch), then increments without a key. */
static void memory_send(struct delivery *d) {
  struct delivery_memory *m = memory(d);
  while (m->due > 0 && d->in_flight < DELIVERY_WINDOW) {
    /* Each key due is one of the increments due: they fall due together
     * (delivery_incr_keyed), so the counts cannot disagree; were they to,
     * keys would go without increments rather than a count wrap. */
    uint64_t k =
        m->due_keys.len < SCRIPTS_IDEM_MAX ? m->due_keys.len : SCRIPTS_IDEM_MAX;
    if (k > m->due)
      k = m->due;
    uint64_t plain = m->due > m->due_keys.len ? m->due - m->due_keys.len : 0;
    uint64_t n = k + (plain < BATCH_MAX - k ? plain : BATCH_MAX - k);
    uint64_t seq = d->first_seq + d->entries.len;
    struct batch *b = delivery_ring_push(&d->entries);
    if (!b)
      return; /* sent on a later turn */
    if (!send_batch(d, seq, n, m->due_keys.head, k)) {
      delivery_ring_unpush(&d->entries);
      return;
    }
    *b = (struct batch){.e = {.n = n, .state = ENTRY_SENT},
                        .keys = m->due_keys.head,
                        .n_keys = k};
    /* The batch's keys leave the due list, still linked among
     * themselves. */
    for (uint64_t i = 0; i < k; i++)
      list_shift(&m->due_keys);
    d->resend_from = d->entries.len;
    m->due -= n;
    m->in_batches += n;
    d->stats.batches++;
  }
}

/* Nothing of its own to open or reset. */
static void memory_noop(struct delivery *d) { (void)d; }

/* The batch's outcome is known: it leaves the ring once those before it
 * have (delivery_settle_head). */
static void finish(struct delivery *d, struct entry *e) {
  memory(d)->in_batches -= e->n;
  e->state = ENTRY_SETTLED;
}

static void fail(struct delivery *d, struct entry *e, const redisReply *reply) {
  delivery_failed(d, e->n, reply);
  ((struct batch *)e)->failed = true;
  finish(d, e);
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
    fail(d, e, reply);
    break;
  default:
    fail(d, e, reply);
    break;
  }
  delivery_settle_head(d);
}

/* A batch left the ring: its keys counted (kept a while, so that a
 * repeat here is a replay at once), or, refused for good, did not (a
 * repeat may count them now). */
static void memory_settled(struct delivery *d, uint64_t seq,
                           const struct entry *e) {
  (void)seq;
  struct delivery_memory *m = memory(d);
  const struct batch *b = (const struct batch *)e;
  uint64_t now = uv_now(d->loop);
  struct delivery_key *k = b->keys;
  for (uint64_t i = 0; i < b->n_keys; i++) {
    struct delivery_key *next = k->next;
    if (b->failed) {
      keys_remove(m, k);
    } else {
      k->at = now;
      list_append(&m->counted, k);
    }
    k = next;
  }
  keys_prune(m, now);
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
    .entry_size = sizeof(struct batch),
    .init = memory_init,
    .close = memory_close,
    .due = memory_due,
    .resend = memory_resend,
    .send = memory_send,
    .ready = memory_noop,
    .down = memory_noop,
    .reply = memory_reply,
    .confirmed = memory_confirmed,
    .unconfirmed = memory_unconfirmed,
    .settled = memory_settled,
    .pending = memory_pending,
    .leave = memory_leave,
    .hands_over = false,
};
