/* The delivery engine's core: the lifecycle, the ring of entries, the tags,
 * the window of commands in flight and REDIS_MIN_REPLICAS's WAIT. The
 * mode (delivery_mode.h) decides what the commands are. */
#include "incr/delivery.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base.h"
#include "incr/delivery_mode.h"
#include "log.h"

/* ---- Rings -------------------------------------------------------------- */

int delivery_ring_init(struct delivery_ring *r, size_t elem) {
  r->elem = elem;
  r->cap = 64;
  r->head = r->len = 0;
  r->buf = malloc(r->cap * elem);
  return r->buf ? 0 : UV_ENOMEM;
}

void *delivery_ring_at(const struct delivery_ring *r, uint64_t i) {
  return r->buf + ((r->head + i) & (r->cap - 1)) * r->elem;
}

void *delivery_ring_push(struct delivery_ring *r) {
  if (r->len == r->cap) {
    char *buf = malloc(2 * r->cap * r->elem);
    if (!buf)
      return NULL;
    for (uint64_t i = 0; i < r->len; i++)
      memcpy(buf + i * r->elem, delivery_ring_at(r, i), r->elem);
    free(r->buf);
    r->buf = buf;
    r->head = 0;
    r->cap *= 2;
  }
  r->len++;
  return delivery_ring_at(r, r->len - 1);
}

void delivery_ring_pop(struct delivery_ring *r) {
  r->head = (r->head + 1) & (r->cap - 1);
  r->len--;
}

void delivery_ring_unpush(struct delivery_ring *r) { r->len--; }

void delivery_ring_free(struct delivery_ring *r) {
  free(r->buf);
  r->buf = NULL;
  r->len = 0;
}

/* ---- The lifecycle ------------------------------------------------------ */

enum lifecycle_event {
  EV_READY,      /* a connection is ready */
  EV_DOWN,       /* it is gone, with the replies it owed */
  EV_LEAVE_SENT, /* the leave went on the ready connection */
  EV_LEFT,       /* the leave was answered, or there was none to send */
  EV_CLOSE,
};

/* Every transition of delivery.h's diagram; anything else stays put. */
static enum delivery_state next_state(enum delivery_state s,
                                      enum lifecycle_event ev) {
  switch (ev) {
  case EV_READY:
    return s == DELIVERY_DOWN ? DELIVERY_READY : s;
  case EV_DOWN:
    if (s == DELIVERY_READY)
      return DELIVERY_DOWN;
    /* The leave, sent, was lost with the connection: the lease lapses by
     * itself. */
    return s == DELIVERY_LEAVING ? DELIVERY_LEFT : s;
  case EV_LEAVE_SENT:
    return s == DELIVERY_READY ? DELIVERY_LEAVING : s;
  case EV_LEFT:
    return s < DELIVERY_LEFT ? DELIVERY_LEFT : s;
  case EV_CLOSE:
    return DELIVERY_CLOSED;
  }
  return s;
}

/* Moves the lifecycle on; entering left is reported once. */
static void enter(struct delivery *d, enum lifecycle_event ev) {
  enum delivery_state was = d->state;
  d->state = next_state(was, ev);
  if (d->state == DELIVERY_LEFT && was != DELIVERY_LEFT)
    d->events->on_left(d);
}

bool delivery_sending(const struct delivery *d) {
  return d->state == DELIVERY_READY || d->state == DELIVERY_LEAVING;
}

/* ---- Construction ------------------------------------------------------- */

int delivery_init(struct delivery *d, uv_loop_t *loop,
                  const struct delivery_options *opts) {
  memset(d, 0, sizeof *d);
  d->mode = opts->durability == DURABILITY_REDIS ? &delivery_journal_mode
                                                 : &delivery_memory_mode;
  d->state = DELIVERY_DOWN;
  d->min_replicas = opts->min_replicas;
  d->wait_timeout_ms = opts->wait_timeout_ms;
  d->queue = opts->queue;
  d->transport = opts->transport;
  d->events = opts->events;
  d->loop = loop;
  d->first_seq = 1;
  int rc = scripts_init(&d->scripts, opts->prefix, opts->counter_key,
                        opts->replica_id);
  if (rc)
    return rc;
  if (opts->idem_ttl_ms)
    d->scripts.idem_ttl_ms = opts->idem_ttl_ms;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  scripts_clock_set(&d->scripts,
                    (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000,
                    uv_now(loop));
  rc = delivery_ring_init(&d->entries, d->mode->entry_size);
  if (rc)
    goto fail;
  rc = d->mode->init(d, opts);
  if (rc)
    goto fail_mode;
  return 0;

fail_mode:
  delivery_ring_free(&d->entries);
fail:
  return rc;
}

void delivery_close(struct delivery *d) {
  if (d->state == DELIVERY_CLOSED)
    return;
  enter(d, EV_CLOSE);
  d->mode->close(d);
  delivery_ring_free(&d->entries);
  scripts_cmd_free(&d->cmd);
}

/* ---- Sending ------------------------------------------------------------ */

static uint64_t tag_of(unsigned kind, uint64_t n) {
  return n << TAG_BITS | kind;
}

bool delivery_send(struct delivery *d, unsigned kind, uint64_t n) {
  if (!delivery_sending(d) ||
      d->transport->send(d, d->cmd.buf, d->cmd.len, tag_of(kind, n)))
    return false;
  d->in_flight++;
  d->sends++;
  return true;
}

struct entry *delivery_entry(struct delivery *d, uint64_t seq) {
  if (seq < d->first_seq || seq - d->first_seq >= d->entries.len)
    return NULL;
  return delivery_ring_at(&d->entries, seq - d->first_seq);
}

/* Sends what waits from resend_from on, in order. Returns false when it
 * had to stop (the window is full, or no connection). */
static bool resend(struct delivery *d) {
  for (; d->resend_from < d->entries.len; d->resend_from++) {
    struct entry *e = delivery_ring_at(&d->entries, d->resend_from);
    if (e->state != ENTRY_WAITING)
      continue;
    if (d->in_flight >= DELIVERY_WINDOW ||
        !d->mode->resend(d, d->first_seq + d->resend_from, e))
      return false;
  }
  return true;
}

static void pump(struct delivery *d) {
  if (!delivery_sending(d))
    return;
  if (resend(d) && d->mode->send)
    d->mode->send(d);
  delivery_wait_if_due(d);
}

uint64_t delivery_pending(const struct delivery *d) {
  return d->mode->pending(d);
}

bool delivery_hands_over(const struct delivery *d) {
  return d->mode->hands_over;
}

static void maybe_idle(struct delivery *d) {
  if (d->state != DELIVERY_CLOSED && delivery_pending(d) == 0 &&
      d->entries.len == 0 && d->events->on_idle)
    d->events->on_idle(d);
}

void delivery_due(struct delivery *d, uint64_t now) {
  d->mode->due(d, now);
  pump(d);
}

/* ---- Settling ----------------------------------------------------------- */

bool delivery_applied(struct delivery *d, struct entry *e, uint64_t wait) {
  if (d->min_replicas) {
    e->state = ENTRY_CONFIRMING;
    e->wait = wait;
    return false;
  }
  e->state = ENTRY_SETTLED;
  return true;
}

void delivery_settle_head(struct delivery *d) {
  while (d->entries.len > 0) {
    struct entry *head = delivery_ring_at(&d->entries, 0);
    if (head->state != ENTRY_SETTLED)
      return;
    uint64_t seq = d->first_seq;
    delivery_ring_pop(&d->entries);
    d->first_seq++;
    if (d->resend_from > 0)
      d->resend_from--;
    /* Still in the ring's memory: nothing is pushed before the hook. */
    if (d->mode->settled)
      d->mode->settled(d, seq, head);
  }
}

bool delivery_on_error(struct delivery *d, const redisReply *reply) {
  if (scripts_noscript(reply)) {
    /* Redis has lost its script cache (SCRIPT FLUSH): not run, sent again
     * whole on this connection. */
    scripts_scripts_forgotten(&d->scripts);
    d->resend_from = 0;
    return false;
  }
  if (d->transport->permanent(reply->str, reply->len))
    return true;
  d->transport->retire(d, reply->str, reply->len);
  return false;
}

void delivery_failed(struct delivery *d, uint64_t n, const redisReply *reply) {
  uint64_t before = d->stats.failed;
  d->stats.failed += n;
  /* One line for the first failures, then one per power of two. */
  if (base_passed_power_of_two(before, d->stats.failed))
    log_error("incr_failed", LOG_UINT("failed", d->stats.failed),
              LOG_STRN("reply",
                       reply->type == REDIS_REPLY_ERROR ? reply->str : "",
                       reply->type == REDIS_REPLY_ERROR ? reply->len : 0));
}

/* ---- REDIS_MIN_REPLICAS: a WAIT after what was sent --------------------- */

static void send_wait(struct delivery *d) {
  uint64_t k = d->waits_sent + 1;
  if (scripts_cmd_wait(&d->cmd, d->min_replicas, d->wait_timeout_ms) == 0 &&
      delivery_send(d, TAG_WAIT, k)) {
    d->waits_sent = k;
    d->sends_waited = d->sends;
  }
}

void delivery_wait_if_due(struct delivery *d) {
  if (d->min_replicas && d->sends != d->sends_waited)
    send_wait(d);
}

/* What a WAIT numbered k or later confirms is done. */
static void confirm(struct delivery *d, uint64_t k) {
  uint64_t n = 0;
  for (uint64_t i = 0; i < d->entries.len; i++) {
    struct entry *e = delivery_ring_at(&d->entries, i);
    if (e->state != ENTRY_CONFIRMING || e->wait > k)
      continue;
    e->state = ENTRY_SETTLED;
    n += e->n;
  }
  d->mode->confirmed(d, k, n);
}

/* Nothing applied and not yet confirmed counts: batches are sent again
 * (the fence makes a copy the master has a no-op), writes resolved again,
 * moves moved again. */
static void unconfirm(struct delivery *d) {
  uint64_t n = 0;
  for (uint64_t i = 0; i < d->entries.len; i++) {
    struct entry *e = delivery_ring_at(&d->entries, i);
    if (e->state != ENTRY_CONFIRMING)
      continue;
    e->state = ENTRY_WAITING;
    n += e->n;
  }
  d->resend_from = 0;
  d->mode->unconfirmed(d, n);
}

static void on_wait_reply(struct delivery *d, uint64_t k,
                          const redisReply *reply) {
  if (!reply)
    return; /* delivery_on_down follows */
  if (reply->type != REDIS_REPLY_INTEGER) {
    log_warn("redis_wait_refused", LOG_STRN("reply", reply->str, reply->len));
    unconfirm(d);
    d->transport->retire(d, reply->str, reply->len);
    return;
  }
  if ((uint64_t)reply->integer >= d->min_replicas) {
    d->wait_short_logged = false;
    confirm(d, k);
    return;
  }
  if (k < d->waits_sent)
    return; /* a later WAIT is on its way */
  /* Not on enough replicas yet (a replica resyncing after a failover):
   * wait again, on this connection. */
  if (!d->wait_short_logged)
    log_warn("redis_wait_short", LOG_INT("replicas", reply->integer),
             LOG_UINT("wanted", d->min_replicas));
  d->wait_short_logged = true;
  uint64_t before = d->waits_sent;
  send_wait(d);
  if (d->waits_sent == before)
    unconfirm(d);
}

/* ---- The connection ----------------------------------------------------- */

void delivery_on_ready(struct delivery *d) {
  enter(d, EV_READY);
  scripts_scripts_forgotten(&d->scripts); /* perhaps another Redis */
  d->resend_from = 0;
  if (d->state == DELIVERY_READY)
    d->mode->ready(d);
  pump(d);
  maybe_idle(d);
}

void delivery_on_down(struct delivery *d) {
  if (d->state == DELIVERY_CLOSED)
    return;
  d->in_flight = 0;
  d->mode->down(d);
  unconfirm(d);
  enter(d, EV_DOWN);
}

void delivery_on_reply(struct delivery *d, uint64_t tag,
                       const redisReply *reply) {
  if (d->state == DELIVERY_CLOSED)
    return;
  if (reply && scripts_noscript(reply))
    scripts_scripts_forgotten(&d->scripts); /* whole scripts from now on */
  if (d->in_flight > 0)
    d->in_flight--;
  unsigned kind = (unsigned)(tag & ((1u << TAG_BITS) - 1));
  if (kind == TAG_WAIT)
    on_wait_reply(d, tag >> TAG_BITS, reply);
  else
    d->mode->reply(d, kind, tag >> TAG_BITS, reply);
  if (d->state >= DELIVERY_LEFT)
    return; /* the leave's reply: nothing more to send or report */
  if (reply)
    pump(d);
  maybe_idle(d);
}

/* ---- Leaving ------------------------------------------------------------ */

void delivery_leave(struct delivery *d) {
  if (d->state >= DELIVERY_LEAVING)
    return;
  if (d->mode->leave(d))
    enter(d, EV_LEAVE_SENT);
  else
    enter(d, EV_LEFT);
}

/* Called by the mode when its leave was answered. */
void delivery_left(struct delivery *d) { enter(d, EV_LEFT); }
