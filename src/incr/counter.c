#include "incr/counter.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Commands in flight at most: bounds hiredis's buffers when a long outage
 * ends with much due, and keeps the replies flowing. */
#define WINDOW 1024
/* Increments in one memory batch at most: an INCRBY of any size is one
 * command, but a bound keeps a batch's loss or failure bounded too. */
#define BATCH_MAX (1ull << 32)

/* What a reply is for: the kind in the low bits, a number above them. */
enum tag_kind {
  TAG_BATCH,   /* memory: batch number */
  TAG_WRITE,   /* journal: write number */
  TAG_RESOLVE, /* journal: write number */
  TAG_MOVE,    /* journal: absolute index past the move's last run */
  TAG_RENEW,
  TAG_ADOPT,
  TAG_LEAVE,
  TAG_WAIT, /* REDIS_MIN_REPLICAS: the WAIT's number */
};
#define TAG_BITS 3

static uint64_t tag(enum tag_kind kind, uint64_t n) {
  return n << TAG_BITS | kind;
}

/* A memory batch, or a journal write. Its number is its place in the ring
 * plus first_seq. */
enum entry_state {
  ENTRY_WAITING,    /* to be sent (again), or a lost write to resolve */
  ENTRY_SENT,       /* sent on this connection, reply awaited */
  ENTRY_RESOLVING,  /* journal: its resolution sent, reply awaited */
  ENTRY_CONFIRMING, /* applied; REDIS_MIN_REPLICAS: a WAIT must confirm */
  ENTRY_DONE,       /* memory: applied (or failed) out of order */
  ENTRY_HELD,       /* journal: in the journal, reported in write order */
  ENTRY_REFUSED,    /* journal: not in the journal, nor ever will be */
};

struct entry {
  uint64_t n;
  uint64_t deadline;  /* journal: monotonic ms */
  uint64_t moves_end; /* journal: the moves a write carries end here (or 0) */
  uint64_t wait;     /* ENTRY_CONFIRMING: a WAIT numbered this or later */
  enum entry_state state;
};

/* Moves applied, up to end, waiting for a WAIT numbered `wait` or later. */
struct applied_move {
  uint64_t end;
  uint64_t wait;
};

struct run {
  uint64_t deadline; /* monotonic ms */
  uint64_t n;
};

/* ---- Rings -------------------------------------------------------------- */

static int ring_init(struct counter_ring *r, size_t elem) {
  r->elem = elem;
  r->cap = 64;
  r->head = r->len = 0;
  r->buf = malloc(r->cap * elem);
  return r->buf ? 0 : UV_ENOMEM;
}

static void *ring_at(const struct counter_ring *r, uint64_t i) {
  return r->buf + ((r->head + i) & (r->cap - 1)) * r->elem;
}

/* A new slot at the end, or NULL when out of memory. */
static void *ring_push(struct counter_ring *r) {
  if (r->len == r->cap) {
    char *buf = malloc(2 * r->cap * r->elem);
    if (!buf)
      return NULL;
    for (uint64_t i = 0; i < r->len; i++)
      memcpy(buf + i * r->elem, ring_at(r, i), r->elem);
    free(r->buf);
    r->buf = buf;
    r->head = 0;
    r->cap *= 2;
  }
  r->len++;
  return ring_at(r, r->len - 1);
}

static void ring_pop(struct counter_ring *r) {
  r->head = (r->head + 1) & (r->cap - 1);
  r->len--;
}

/* ---- Common ------------------------------------------------------------- */

static void pump(struct counter *c);
static void on_lease_timer(uv_timer_t *timer);
static void on_move_reply(struct counter *c, uint64_t end,
                          const redisReply *reply);
static void send_wait(struct counter *c);

int counter_init(struct counter *c, uv_loop_t *loop, enum durability d,
                 const char *prefix, const char *counter_key,
                 uint64_t replica_id, uint64_t lease_ms, uint64_t min_replicas,
                 uint64_t wait_timeout_ms, struct incr_queue *queue,
                 const struct counter_transport *transport,
                 const struct counter_events *events) {
  memset(c, 0, sizeof *c);
  int rc = journal_init(&c->journal, prefix, counter_key, replica_id);
  if (rc)
    return rc;
  if (ring_init(&c->batches, sizeof(struct entry)) ||
      ring_init(&c->moving, sizeof(struct run)) ||
      ring_init(&c->applied, sizeof(struct applied_move))) {
    free(c->batches.buf);
    free(c->moving.buf);
    return UV_ENOMEM;
  }
  c->durability = d;
  c->min_replicas = min_replicas;
  c->wait_timeout_ms = wait_timeout_ms;
  c->lease_ms = lease_ms;
  c->queue = queue;
  c->transport = transport;
  c->events = events;
  c->loop = loop;
  c->first_seq = 1;
  if (loop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    journal_clock_set(&c->journal,
                      (uint64_t)ts.tv_sec * 1000 +
                          (uint64_t)ts.tv_nsec / 1000000,
                      uv_now(loop));
    uv_timer_init(loop, &c->lease_timer);
    c->lease_timer.data = c;
  }
  return 0;
}

static bool send_cmd(struct counter *c, enum tag_kind kind, uint64_t n) {
  if (!c->ready || c->transport->send(c, c->cmd.buf, c->cmd.len, tag(kind, n)))
    return false;
  c->in_flight++;
  c->sends++;
  return true;
}

static struct entry *entry_of(struct counter *c, uint64_t seq) {
  if (seq < c->first_seq || seq - c->first_seq >= c->batches.len)
    return NULL;
  return ring_at(&c->batches, seq - c->first_seq);
}

uint64_t counter_pending(const struct counter *c) {
  return c->due + c->in_batches + c->in_moving;
}

static void maybe_idle(struct counter *c) {
  if (!c->closed && counter_pending(c) == 0 && c->batches.len == 0 &&
      c->events->on_idle)
    c->events->on_idle(c);
}

/* An error reply: a fresh connection is asked for unless no retry can help.
 * Returns true when the error is permanent. */
static bool on_error(struct counter *c, const redisReply *reply) {
  if (journal_noscript(reply)) {
    /* Redis has lost its script cache (SCRIPT FLUSH): not run, sent again
     * whole on this connection. */
    journal_scripts_forgotten(&c->journal);
    c->resend_from = 0;
    return false;
  }
  if (c->transport->permanent(reply->str, reply->len))
    return true;
  c->transport->retire(c, reply->str, reply->len);
  return false;
}

/* ---- Memory mode: numbered batches -------------------------------------- */

/* Sends what waits from resend_from on, in order: memory batches again
 * with their numbers, lost journal writes as their resolution. Returns
 * false when it had to stop (the window is full, or no connection). */
static bool send_waiting(struct counter *c) {
  bool memory = c->durability == DURABILITY_MEMORY;
  for (; c->resend_from < c->batches.len; c->resend_from++) {
    struct entry *e = ring_at(&c->batches, c->resend_from);
    if (e->state != ENTRY_WAITING)
      continue;
    uint64_t seq = c->first_seq + c->resend_from;
    int rc = memory ? journal_cmd_batch(&c->cmd, &c->journal, seq, e->n,
                                        c->first_seq)
                    : journal_cmd_resolve(&c->cmd, &c->journal, seq);
    if (c->in_flight >= WINDOW || rc ||
        !send_cmd(c, memory ? TAG_BATCH : TAG_RESOLVE, seq))
      return false;
    e->state = memory ? ENTRY_SENT : ENTRY_RESOLVING;
    if (!memory) {
      e->wait = c->waits_sent + 1; /* the WAIT after it */
      c->stats.journal_resolutions++;
    }
  }
  return true;
}

static void send_batches(struct counter *c) {
  if (!send_waiting(c))
    return;
  while (c->due > 0 && c->in_flight < WINDOW) {
    uint64_t n = c->due < BATCH_MAX ? c->due : BATCH_MAX;
    uint64_t seq = c->first_seq + c->batches.len;
    struct entry *e = ring_push(&c->batches);
    if (!e)
      return; /* sent on a later turn */
    if (journal_cmd_batch(&c->cmd, &c->journal, seq, n, c->first_seq) ||
        !send_cmd(c, TAG_BATCH, seq)) {
      c->batches.len--;
      return;
    }
    *e = (struct entry){.n = n, .state = ENTRY_SENT};
    c->resend_from = c->batches.len;
    c->due -= n;
    c->in_batches += n;
    c->stats.batches++;
  }
}

static void batch_finished(struct counter *c, struct entry *e) {
  e->state = ENTRY_DONE;
  c->in_batches -= e->n;
  while (c->batches.len > 0) {
    struct entry *head = ring_at(&c->batches, 0);
    if (head->state != ENTRY_DONE)
      break;
    ring_pop(&c->batches);
    c->first_seq++;
    if (c->resend_from > 0)
      c->resend_from--;
  }
}

static void count_failed(struct counter *c, uint64_t n,
                         const redisReply *reply) {
  uint64_t before = c->stats.failed;
  c->stats.failed += n;
  /* One line for the first failures, then one per power of two. */
  if ((before ^ c->stats.failed) > before)
    log_error("incr_failed", LOG_UINT("failed", c->stats.failed),
              LOG_STRN("reply",
                       reply->type == REDIS_REPLY_ERROR ? reply->str : "",
                       reply->type == REDIS_REPLY_ERROR ? reply->len : 0));
}

void counter_stats_observe_write(struct counter_stats *s, uint64_t n) {
  int b = 0;
  for (uint64_t le = 1; b < COUNTER_WRITE_BUCKETS - 1 && n > le; le *= 4)
    b++;
  s->write_sizes[b]++;
  s->write_size_sum += n;
}

static void on_batch_reply(struct counter *c, uint64_t seq,
                           const redisReply *reply) {
  struct entry *e = entry_of(c, seq);
  if (!e || e->state != ENTRY_SENT)
    return;
  if (!reply) {
    e->state = ENTRY_WAITING;
    c->stats.retried += e->n;
    return;
  }
  switch (journal_batch_outcome(reply)) {
  case JOURNAL_APPLIED:
  case JOURNAL_DUPLICATE:
    if (c->min_replicas) {
      e->state = ENTRY_CONFIRMING;
      e->wait = c->waits_sent;
      break;
    }
    c->stats.done += e->n;
    batch_finished(c, e);
    break;
  case JOURNAL_OUT_OF_ORDER:
    /* An earlier batch was not applied: both go again, in order. */
    e->state = ENTRY_WAITING;
    c->transport->retire(c, "batch out of order", 18);
    break;
  case JOURNAL_ERROR:
    if (!on_error(c, reply)) {
      e->state = ENTRY_WAITING;
      c->stats.retried += e->n;
      break;
    }
    count_failed(c, e->n, reply);
    batch_finished(c, e);
    break;
  default:
    count_failed(c, e->n, reply);
    batch_finished(c, e);
    break;
  }
}

void counter_add_due(struct counter *c, uint64_t n) {
  c->due += n;
  pump(c);
}

/* ---- Journal mode: writes and their resolution -------------------------- */

bool counter_can_write(const struct counter *c) {
  return c->ready && !c->leaving && !c->closed && c->in_flight < WINDOW;
}

uint64_t counter_unresolved_increments(const struct counter *c) {
  return c->in_writes;
}

/* The wall-clock deadlines of the moves not yet sent, up to
 * JOURNAL_MOVE_MAX of them, in out; returns how many, and where they end. */
static size_t unsent_moves(const struct counter *c, uint64_t *out,
                           uint64_t *end) {
  uint64_t last = c->moving_head + c->moving.len;
  uint64_t i = c->moving_sent;
  size_t k = 0;
  for (; i < last && k < JOURNAL_MOVE_MAX; i++, k++) {
    const struct run *r = ring_at(&c->moving, i - c->moving_head);
    out[k] = journal_wall(&c->journal, r->deadline);
  }
  *end = i;
  return k;
}

uint64_t counter_write(struct counter *c, uint64_t deadline, uint64_t n) {
  if (!counter_can_write(c))
    return 0;
  uint64_t seq = c->first_seq + c->batches.len;
  /* What fell due rides with the write (counter_turn_end otherwise). */
  uint64_t due[JOURNAL_MOVE_MAX], moves_end;
  size_t k = unsent_moves(c, due, &moves_end);
  /* Writes below first_seq all have a known outcome: the fenced-off ones
   * among them need not be remembered any more. */
  if (journal_cmd_write(&c->cmd, &c->journal, seq,
                        journal_wall(&c->journal, deadline), n,
                        c->first_seq - 1, c->lease_ms, due, k))
    return 0;
  struct entry *e = ring_push(&c->batches);
  if (!e)
    return 0;
  if (!send_cmd(c, TAG_WRITE, seq)) {
    c->batches.len--;
    return 0;
  }
  *e = (struct entry){.n = n,
                      .deadline = deadline,
                      .moves_end = k ? moves_end : 0,
                      .wait = c->waits_sent + 1,
                      .state = ENTRY_SENT};
  c->writes_in_flight++;
  if (k) {
    c->moving_sent = moves_end;
    c->stats.journal_moves++;
  }
  c->in_writes += n;
  c->stats.journal_writes++;
  counter_stats_observe_write(&c->stats, n);
  return seq;
}

/* Reports settled writes from the head on, in write order. Held ones join
 * the queue. */
static void report_writes(struct counter *c) {
  while (c->batches.len > 0) {
    struct entry *e = ring_at(&c->batches, 0);
    if (e->state != ENTRY_HELD && e->state != ENTRY_REFUSED)
      return;
    bool held = e->state == ENTRY_HELD;
    if (held && incr_queue_add(c->queue, e->deadline, e->n) != 0) {
      /* Held by Redis, but not by this process: the journal keeps them,
       * and whoever adopts it counts them. Answered 503 here. */
      log_error("queue_full", LOG_UINT("increments", e->n));
      held = false;
    }
    uint64_t seq = c->first_seq;
    c->in_writes -= e->n;
    ring_pop(&c->batches);
    c->first_seq++;
    if (c->resend_from > 0)
      c->resend_from--;
    c->events->on_written(c, seq, held);
  }
}

/* The reply to a write or to its resolution. Outcomes may come out of
 * order (a resolution asked again behind later writes): the scripts answer
 * each one exactly whatever the order, and report_writes keeps the order
 * for the owner. */
static void on_write_reply(struct counter *c, enum tag_kind kind, uint64_t seq,
                           const redisReply *reply) {
  if (kind == TAG_WRITE && c->writes_in_flight > 0)
    c->writes_in_flight--;
  struct entry *e = entry_of(c, seq);
  enum entry_state expect = kind == TAG_WRITE ? ENTRY_SENT : ENTRY_RESOLVING;
  if (!e || e->state != expect)
    return;
  enum journal_outcome outcome =
      reply ? journal_write_outcome(reply) : JOURNAL_BAD_REPLY;
  if (kind == TAG_WRITE && e->moves_end) {
    /* The moves it carried: done, refused, or (the script did not run, or
     * the reply is lost) sent again. */
    bool ran = outcome == JOURNAL_APPLIED || outcome == JOURNAL_NOT_APPLIED;
    on_move_reply(c, e->moves_end, ran ? journal_write_moves(reply) : NULL);
    e->moves_end = 0;
  }
  if (!reply) {
    e->state = ENTRY_WAITING; /* resolved on the next connection */
    return;
  }
  switch (outcome) {
  case JOURNAL_APPLIED:
    /* A WAIT sent after the write (or its resolution) confirms it. */
    e->state = c->min_replicas ? ENTRY_CONFIRMING : ENTRY_HELD;
    break;
  case JOURNAL_NOT_APPLIED:
    e->state = ENTRY_REFUSED;
    break;
  case JOURNAL_ERROR:
    if (kind == TAG_WRITE) {
      /* The script did not run, or stopped before its first write; its
       * number is passed over by the next write applied. */
      on_error(c, reply);
      e->state = ENTRY_REFUSED;
      break;
    }
    /* Still unknown: asked again on a fresh connection. */
    log_warn("journal_resolve_failed", LOG_UINT("write", seq),
             LOG_STRN("reply", reply->str, reply->len));
    e->state = ENTRY_WAITING;
    c->transport->retire(c, reply->str, reply->len);
    break;
  default:
    e->state = ENTRY_WAITING;
    c->transport->retire(c, "unexpected reply", 16);
    break;
  }
  report_writes(c);
}

/* ---- Journal mode: moves ------------------------------------------------ */

void counter_due(struct counter *c, uint64_t now) {
  uint64_t deadline, n;
  while (incr_queue_pop_run(c->queue, now, &deadline, &n)) {
    struct run *r = ring_push(&c->moving);
    if (!r) {
      /* Back where it was: moved on a later turn. */
      incr_queue_add(c->queue, deadline, n);
      break;
    }
    *r = (struct run){deadline, n};
    c->in_moving += n;
  }
  pump(c);
}

/* Moves alone, when no write carried them. */
static void send_moves(struct counter *c) {
  uint64_t deadlines[JOURNAL_MOVE_MAX];
  while (c->moving_sent < c->moving_head + c->moving.len &&
         c->in_flight < WINDOW) {
    uint64_t end;
    size_t k = unsent_moves(c, deadlines, &end);
    if (journal_cmd_move(&c->cmd, &c->journal, deadlines, k) ||
        !send_cmd(c, TAG_MOVE, end))
      return;
    c->moving_sent = end;
    c->stats.journal_moves++;
  }
}

void counter_turn_end(struct counter *c) {
  if (c->durability != DURABILITY_REDIS || !c->ready || c->closed)
    return;
  /* A write on its way: the next, sent when it is answered, carries them;
   * if none follows, that turn's end sends them. */
  if (c->writes_in_flight == 0)
    send_moves(c);
  if (c->min_replicas && c->sends != c->sends_waited)
    send_wait(c);
}

/* The moves up to end are over: done, or failed. */
static void moves_finished(struct counter *c, uint64_t end, bool failed,
                           const redisReply *reply) {
  uint64_t n = 0;
  while (c->moving_head < end) {
    const struct run *r = ring_at(&c->moving, 0);
    n += r->n;
    ring_pop(&c->moving);
    c->moving_head++;
  }
  c->in_moving -= n;
  if (failed)
    count_failed(c, n, reply);
  else
    c->stats.done += n;
}

static void on_move_reply(struct counter *c, uint64_t end,
                          const redisReply *reply) {
  if (end <= c->moving_replied || end > c->moving_sent)
    return;
  if (!reply) {
    c->moving_sent = c->moving_replied; /* idempotent: sent again */
    return;
  }
  uint64_t moved;
  if (!journal_count_of(reply, &moved)) {
    if (reply->type == REDIS_REPLY_ERROR && !on_error(c, reply)) {
      c->moving_sent = c->moving_replied;
      return;
    }
    /* Failed: what came before it and waits for a WAIT stays counted. */
    c->moving_replied = end;
    moves_finished(c, end, true, reply);
    return;
  }
  uint64_t expected = 0;
  for (uint64_t i = c->moving_replied; i < end; i++)
    expected +=
        ((const struct run *)ring_at(&c->moving, i - c->moving_head))->n;
  if (moved != expected)
    /* Fewer: another replica adopted part of this journal while this one
     * could not renew its lease, and moves them itself. */
    log_warn("journal_moved_elsewhere", LOG_UINT("expected", expected),
             LOG_UINT("moved", moved));
  c->moving_replied = end;
  if (!c->min_replicas) {
    moves_finished(c, end, false, NULL);
    return;
  }
  struct applied_move *a = ring_push(&c->applied);
  if (a)
    *a = (struct applied_move){end, c->waits_sent};
  else
    c->moving_sent = c->moving_replied = c->moving_head; /* moved again */
}

/* ---- Journal mode: lease, adoption, leaving ----------------------------- */

static void renew(struct counter *c) {
  if (c->leaving)
    return;
  if (journal_cmd_renew(&c->cmd, &c->journal, c->lease_ms) == 0)
    send_cmd(c, TAG_RENEW, 0);
  uint64_t now = c->loop ? uv_now(c->loop) : 0;
  if (journal_cmd_adopt(&c->cmd, &c->journal, journal_wall(&c->journal, now)) ==
      0)
    send_cmd(c, TAG_ADOPT, 0);
}

static void on_lease_timer(uv_timer_t *timer) { renew(timer->data); }

static void on_adopt_reply(struct counter *c, const redisReply *reply) {
  struct journal_adoption a;
  if (!reply)
    return;
  if (!journal_adoption_of(reply, &a)) {
    log_warn("journal_adopt_failed",
             LOG_STRN("reply",
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "",
                      reply->type == REDIS_REPLY_ERROR ? reply->len : 0));
    return;
  }
  uint64_t deadline_wall, n;
  for (size_t i = 0; journal_adoption_entry(&a, i, &deadline_wall, &n); i++) {
    uint64_t deadline = deadline_wall - (uint64_t)c->journal.clock_offset;
    if (incr_queue_add(c->queue, deadline, n) != 0)
      /* In this journal now, moved by whoever adopts it next. */
      log_error("queue_full", LOG_UINT("increments", n));
  }
  const char *id;
  size_t id_len;
  for (size_t i = 0; journal_adoption_replica(&a, i, &id, &id_len, &n); i++) {
    c->stats.journal_adoptions++;
    c->stats.journal_adopted += n;
    log_info("journal_adopted", LOG_STRN("from", id, id_len),
             LOG_UINT("increments", n), LOG_UINT("lease_ms", c->lease_ms));
  }
}

/* The end of leaving: reported once, whether the leave was answered, lost
 * or never sent (then the lease lapses by itself). */
static void left(struct counter *c) {
  if (c->left)
    return;
  c->left = true;
  c->events->on_left(c);
}

static void on_leave_reply(struct counter *c, const redisReply *reply) {
  uint64_t n = 0;
  if (journal_count_of(reply, &n) && n > 0)
    log_info("journal_handed_over", LOG_UINT("increments", n));
  left(c);
}

void counter_leave(struct counter *c) {
  if (c->leaving)
    return;
  c->leaving = true;
  if (c->loop)
    uv_timer_stop(&c->lease_timer);
  if (c->durability == DURABILITY_REDIS &&
      journal_cmd_leave(&c->cmd, &c->journal) == 0 && send_cmd(c, TAG_LEAVE, 0))
    return;
  left(c);
}

/* ---- REDIS_MIN_REPLICAS: a WAIT after what each turn sent --------------- */

static void send_wait(struct counter *c) {
  char timeout[24], min[24];
  int tn = snprintf(timeout, sizeof timeout, "%llu",
                    (unsigned long long)c->wait_timeout_ms);
  int mn =
      snprintf(min, sizeof min, "%llu", (unsigned long long)c->min_replicas);
  char cmd[96];
  int len = snprintf(cmd, sizeof cmd,
                     "*3\r\n$4\r\nWAIT\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", mn, min,
                     tn, timeout);
  uint64_t k = c->waits_sent + 1;
  if (c->ready &&
      c->transport->send(c, cmd, (size_t)len, tag(TAG_WAIT, k)) == 0) {
    c->in_flight++;
    c->waits_sent = k;
    c->sends_waited = c->sends;
  }
}

/* What a WAIT numbered k or later confirms is done. */
static void confirm(struct counter *c, uint64_t k) {
  for (uint64_t i = 0; i < c->batches.len; i++) {
    struct entry *e = ring_at(&c->batches, i);
    if (e->state != ENTRY_CONFIRMING || e->wait > k)
      continue;
    if (c->durability == DURABILITY_REDIS) {
      e->state = ENTRY_HELD;
    } else {
      c->stats.done += e->n;
      batch_finished(c, e);
      i = (uint64_t)-1; /* the ring may have moved on: look again */
    }
  }
  if (c->durability == DURABILITY_REDIS)
    report_writes(c);
  while (c->applied.len > 0) {
    const struct applied_move *a = ring_at(&c->applied, 0);
    if (a->wait > k)
      break;
    moves_finished(c, a->end, false, NULL);
    ring_pop(&c->applied);
  }
}

/* Nothing applied and not yet confirmed counts: batches are sent again
 * (the fence makes a copy the master has a no-op), writes resolved again,
 * moves moved again. */
static void unconfirm(struct counter *c) {
  for (uint64_t i = 0; i < c->batches.len; i++) {
    struct entry *e = ring_at(&c->batches, i);
    if (e->state != ENTRY_CONFIRMING)
      continue;
    e->state = ENTRY_WAITING;
    if (c->durability == DURABILITY_MEMORY)
      c->stats.retried += e->n;
  }
  c->resend_from = 0;
  c->applied.len = 0;
  c->moving_sent = c->moving_replied = c->moving_head;
}

static void on_wait_reply(struct counter *c, uint64_t k,
                          const redisReply *reply) {
  if (!reply)
    return; /* counter_on_down follows */
  if (reply->type != REDIS_REPLY_INTEGER) {
    log_warn("redis_wait_refused", LOG_STRN("reply", reply->str, reply->len));
    unconfirm(c);
    c->transport->retire(c, reply->str, reply->len);
    return;
  }
  if ((uint64_t)reply->integer >= c->min_replicas) {
    c->wait_short_logged = false;
    confirm(c, k);
    return;
  }
  if (k < c->waits_sent)
    return; /* a later WAIT is on its way */
  /* Not on enough replicas yet (a replica resyncing after a failover):
   * wait again, on this connection. */
  if (!c->wait_short_logged)
    log_warn("redis_wait_short", LOG_INT("replicas", reply->integer),
             LOG_UINT("wanted", c->min_replicas));
  c->wait_short_logged = true;
  uint64_t before = c->waits_sent;
  send_wait(c);
  if (c->waits_sent == before)
    unconfirm(c);
}

/* ---- The connection ----------------------------------------------------- */

static void pump(struct counter *c) {
  if (!c->ready || c->closed)
    return;
  if (c->durability == DURABILITY_MEMORY)
    send_batches(c);
  else
    send_waiting(c); /* moves: at the turn's end, or with its write */
  if (c->min_replicas && c->sends != c->sends_waited)
    send_wait(c);
}

void counter_on_ready(struct counter *c) {
  c->ready = true;
  journal_scripts_forgotten(&c->journal); /* perhaps another Redis */
  c->resend_from = 0;
  c->moving_sent = c->moving_replied;
  if (c->durability == DURABILITY_REDIS && !c->leaving) {
    renew(c);
    if (c->loop) {
      uint64_t period = journal_renew_period_ms(c->lease_ms);
      uv_timer_start(&c->lease_timer, on_lease_timer, period, period);
    }
  }
  pump(c);
  maybe_idle(c);
}

void counter_on_down(struct counter *c) {
  c->ready = false;
  c->in_flight = 0;
  c->writes_in_flight = 0;
  unconfirm(c);
  if (c->leaving)
    left(c); /* the leave, if sent, was lost with the connection */
}

void counter_on_reply(struct counter *c, uint64_t t, const redisReply *reply) {
  if (c->closed)
    return;
  if (reply && journal_noscript(reply))
    journal_scripts_forgotten(&c->journal); /* whole scripts from now on */
  if (c->in_flight > 0)
    c->in_flight--;
  uint64_t n = t >> TAG_BITS;
  switch ((enum tag_kind)(t & ((1u << TAG_BITS) - 1))) {
  case TAG_BATCH:
    on_batch_reply(c, n, reply);
    break;
  case TAG_WRITE:
  case TAG_RESOLVE:
    on_write_reply(c, (enum tag_kind)(t & ((1u << TAG_BITS) - 1)), n, reply);
    break;
  case TAG_MOVE: /* a write numbered 0: only its moves' part counts */
    on_move_reply(c, n,
                  reply && reply->type != REDIS_REPLY_ERROR
                      ? journal_write_moves(reply)
                      : reply);
    break;
  case TAG_ADOPT:
    on_adopt_reply(c, reply);
    break;
  case TAG_LEAVE:
    if (reply)
      on_leave_reply(c, reply);
    return; /* on_down reports a lost one */
  case TAG_WAIT:
    on_wait_reply(c, n, reply);
    break;
  case TAG_RENEW:
    if (reply && reply->type == REDIS_REPLY_ERROR)
      log_warn("journal_renew_failed",
               LOG_STRN("reply", reply->str, reply->len));
    break;
  }
  if (reply)
    pump(c);
  maybe_idle(c);
}

void counter_close(struct counter *c) {
  if (c->closed)
    return;
  c->closed = true;
  c->ready = false;
  if (c->loop && !uv_is_closing((uv_handle_t *)&c->lease_timer))
    uv_close((uv_handle_t *)&c->lease_timer, NULL);
  free(c->batches.buf);
  free(c->moving.buf);
  free(c->applied.buf);
  c->batches.buf = c->moving.buf = c->applied.buf = NULL;
  journal_cmd_free(&c->cmd);
}
