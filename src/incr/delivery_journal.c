/* Journal mode (DURABILITY=redis): the engine's entries are journal writes,
 * each recording the /incr of one or more loop turns before their 200s.
 * A write whose reply was lost is resolved (lua/journal_resolve.lua): held,
 * or fenced off for good. Written increments wait in the queue; due runs
 * are moved from the journal to the counter, riding with the next write or
 * alone at a turn's end. A lease keeps other replicas from adopting the
 * journal; its renewal adopts the journals of lapsed replicas; leaving
 * gives it up. */
#include <stdlib.h>

#include "base.h"
#include "incr/delivery_mode.h"
#include "log.h"

enum journal_tag {
  TAG_WRITE = 1, /* numbered by the write */
  TAG_RESOLVE,   /* numbered by the write */
  TAG_MOVE,      /* numbered by the absolute index past its last run */
  TAG_RENEW,
  TAG_ADOPT,
  TAG_LEAVE,
};

/* An entry of the ring: one journal write. */
struct write {
  struct entry e;
  uint64_t deadline;  /* monotonic ms */
  uint64_t moves_end; /* the moves it carries end here (or 0) */
  uint64_t replays;   /* increments of keys counted before: not recorded */
  bool resolving;     /* ENTRY_SENT: its resolution was, not the write */
  bool held;          /* applied: in the journal */
  bool notes_use;     /* it notes the fence's use (SCRIPTS_FENCE_NOTE_MS) */
};

/* Increments that fell due together, to be moved. */
struct run {
  uint64_t deadline; /* monotonic ms */
  uint64_t n;
};

/* Moves applied, up to end, that moved n increments (a renewal: no runs,
 * end as it was), waiting for a WAIT numbered `wait` or later. */
struct applied_move {
  uint64_t end;
  uint64_t wait;
  uint64_t n;
};

static struct delivery_journal *jm(struct delivery *d) { return &d->m.journal; }

static void on_lease_timer(uv_timer_t *timer);
static void sweep_for_a_while(struct delivery *d);

static int journal_mode_init(struct delivery *d,
                             const struct delivery_options *opts) {
  struct delivery_journal *j = jm(d);
  *j = (struct delivery_journal){.lease_ms = opts->lease_ms,
                                 .incr_delay_ms = opts->incr_delay_ms};
  int rc = delivery_ring_init(&j->moving, sizeof(struct run));
  if (rc)
    goto fail;
  rc = delivery_ring_init(&j->applied, sizeof(struct applied_move));
  if (rc)
    goto fail_applied;
  rc = uv_timer_init(d->loop, &j->lease_timer);
  if (rc)
    goto fail_timer;
  j->lease_timer.data = d;
  return 0;

fail_timer:
  delivery_ring_free(&j->applied);
fail_applied:
  delivery_ring_free(&j->moving);
fail:
  return rc;
}

static void journal_mode_close(struct delivery *d) {
  struct delivery_journal *j = jm(d);
  if (!uv_is_closing((uv_handle_t *)&j->lease_timer))
    uv_close((uv_handle_t *)&j->lease_timer, NULL);
  delivery_ring_free(&j->moving);
  delivery_ring_free(&j->applied);
}

static uint64_t journal_pending(const struct delivery *d) {
  return d->m.journal.in_moving;
}

/* ---- Writes and their resolution ---------------------------------------- */

/* The entry points below serve journal mode only; in memory mode they do
 * nothing (d->m holds memory mode's fields). */
static bool journal_mode(const struct delivery *d) {
  return d->mode == &delivery_journal_mode;
}

bool delivery_can_write(const struct delivery *d) {
  return journal_mode(d) && d->state == DELIVERY_READY &&
         d->in_flight < DELIVERY_WINDOW;
}

uint64_t delivery_unresolved(const struct delivery *d) {
  return journal_mode(d) ? d->m.journal.in_writes : 0;
}

/* The wall-clock deadlines of the moves not yet sent, up to
 * SCRIPTS_MOVE_MAX of them, in out; returns how many, and where they end. */
static size_t unsent_moves(struct delivery *d, uint64_t *out, uint64_t *end) {
  struct delivery_journal *j = jm(d);
  uint64_t last = j->moving_head + j->moving.len;
  uint64_t i = j->moving_sent;
  size_t k = 0;
  for (; i < last && k < SCRIPTS_MOVE_MAX; i++, k++) {
    const struct run *r = delivery_ring_at(&j->moving, i - j->moving_head);
    out[k] = scripts_wall(&d->scripts, r->deadline);
  }
  *end = i;
  return k;
}

uint64_t delivery_write(struct delivery *d, uint64_t deadline, uint64_t n,
                        const struct scripts_idem *keys, size_t n_keys) {
  struct delivery_journal *j = jm(d);
  if (!delivery_can_write(d))
    return 0;
  uint64_t seq = d->first_seq + d->entries.len;
  /* What fell due rides with the write (delivery_turn_end otherwise). */
  uint64_t due[SCRIPTS_MOVE_MAX], moves_end;
  size_t k = unsent_moves(d, due, &moves_end);
  bool note = j->use_noted == 0 ||
              uv_now(d->loop) - j->use_noted >= SCRIPTS_FENCE_NOTE_MS;
  /* Writes below first_seq all have a known outcome: the fenced-off ones
   * among them need not be remembered any more. */
  if (scripts_cmd_write(&d->cmd, &d->scripts, seq,
                        scripts_wall(&d->scripts, deadline), n,
                        d->first_seq - 1, j->lease_ms, note, keys, n_keys, due,
                        k))
    return 0;
  struct write *w = delivery_ring_push(&d->entries);
  if (!w)
    return 0;
  if (!delivery_send(d, TAG_WRITE, seq)) {
    delivery_ring_unpush(&d->entries);
    return 0;
  }
  *w = (struct write){
      .e = {.n = n, .wait = d->waits_sent + 1, .state = ENTRY_SENT},
      .deadline = deadline,
      .moves_end = k ? moves_end : 0,
      .notes_use = note};
  j->writes_in_flight++;
  if (k) {
    j->moving_sent = moves_end;
    d->stats.journal_moves++;
  }
  j->in_writes += n;
  d->stats.journal_writes++;
  counter_stats_observe_write(&d->stats, n);
  return seq;
}

/* A lost write: what settles it is asked for. */
static bool journal_resend(struct delivery *d, uint64_t seq, struct entry *e) {
  if (scripts_cmd_resolve(&d->cmd, &d->scripts, seq) ||
      !delivery_send(d, TAG_RESOLVE, seq))
    return false;
  struct write *w = (struct write *)e;
  e->state = ENTRY_SENT;
  e->wait = d->waits_sent + 1; /* the WAIT after it */
  w->resolving = true;
  d->stats.journal_resolutions++;
  return true;
}

/* A write left the ring, in write order: reported, and held ones join the
 * queue. */
static void journal_settled(struct delivery *d, uint64_t seq,
                            const struct entry *e) {
  const struct write *w = (const struct write *)e;
  uint64_t n = e->n - w->replays; /* what the journal holds */
  if (w->held && n > 0 && incr_queue_add(d->queue, w->deadline, n) != 0) {
    /* Held by Redis, but not by this process's queue: still a 200 (Redis
     * counts it once), moved by a renewal once due, or by whoever adopts
     * the journal. */
    log_error("queue_full", LOG_UINT("increments", n));
    sweep_for_a_while(d);
  }
  jm(d)->in_writes -= e->n;
  d->events->on_written(d, seq, w->held);
}

static void on_move_reply(struct delivery *d, uint64_t end,
                          const redisReply *reply);

/* A write Redis refused: one line for the first, then one per power of
 * two. */
static void refused(struct delivery *d, uint64_t n, const redisReply *reply) {
  uint64_t before = d->stats.journal_errors;
  d->stats.journal_errors += n;
  if (base_passed_power_of_two(before, d->stats.journal_errors))
    log_warn("journal_write_refused",
             LOG_UINT("increments", d->stats.journal_errors),
             LOG_STRN("reply", reply->str, reply->len));
}

/* A write recorded: which of its Idempotency-Keys were replays, whose
 * increments the journal does not hold. A resolution cannot tell: its
 * write's increments all count as held then (a move counts what Redis
 * moved, whatever the queue thought). */
static void note_replays(struct delivery *d, uint64_t seq, struct write *w,
                         const redisReply *reply) {
  const char *flags;
  size_t len;
  if (!scripts_write_replays(reply, &flags, &len))
    return;
  for (size_t i = 0; i < len; i++)
    w->replays += flags[i] == '1';
  if (w->replays > w->e.n)
    w->replays = w->e.n;
  if (d->events->on_replays)
    d->events->on_replays(d, seq, flags, len);
}

/* The reply to a write or to its resolution. Outcomes may come out of
 * order (a resolution asked again behind later writes): the scripts answer
 * each one exactly whatever the order, and the ring reports them in order
 * (journal_settled). */
static void on_write_reply(struct delivery *d, bool resolution, uint64_t seq,
                           const redisReply *reply) {
  struct delivery_journal *j = jm(d);
  if (!resolution && j->writes_in_flight > 0)
    j->writes_in_flight--;
  struct write *w = (struct write *)delivery_entry(d, seq);
  if (!w || w->e.state != ENTRY_SENT || w->resolving != resolution)
    return;
  enum scripts_outcome outcome =
      reply ? scripts_write_outcome(reply) : SCRIPTS_BAD_REPLY;
  if (!resolution && w->moves_end) {
    /* The moves it carried: done, refused, or (the script did not run, or
     * the reply is lost) sent again. */
    bool ran = outcome == SCRIPTS_APPLIED || outcome == SCRIPTS_NOT_APPLIED;
    on_move_reply(d, w->moves_end, ran ? scripts_write_moves(reply) : NULL);
    w->moves_end = 0;
  }
  w->resolving = false;
  if (!reply) {
    w->e.state = ENTRY_WAITING; /* resolved on the next connection */
    return;
  }
  switch (outcome) {
  case SCRIPTS_APPLIED:
    /* A WAIT sent after the write (or its resolution) confirms it. */
    w->held = true;
    if (!resolution)
      note_replays(d, seq, w, reply);
    if (!resolution && w->notes_use)
      j->use_noted = uv_now(d->loop);
    delivery_applied(d, &w->e, w->e.wait);
    break;
  case SCRIPTS_NOT_APPLIED:
    w->held = false;
    w->e.state = ENTRY_SETTLED;
    break;
  case SCRIPTS_ERROR:
    if (!resolution) {
      /* The script did not run, or refused before its first write (a key
       * of the wrong type, a counter that cannot count): its number is
       * passed over by the next write applied, its /incr answered 503. */
      refused(d, w->e.n, reply);
      delivery_on_error(d, reply);
      w->held = false;
      w->e.state = ENTRY_SETTLED;
      break;
    }
    /* Still unknown: asked again on a fresh connection. */
    log_warn("journal_resolve_failed", LOG_UINT("write", seq),
             LOG_STRN("reply", reply->str, reply->len));
    w->e.state = ENTRY_WAITING;
    d->transport->retire(d, reply->str, reply->len);
    break;
  default:
    w->e.state = ENTRY_WAITING;
    d->transport->retire(d, "unexpected reply", 16);
    break;
  }
  delivery_settle_head(d);
}

/* ---- Moves -------------------------------------------------------------- */

static void journal_due(struct delivery *d, uint64_t now) {
  struct delivery_journal *j = jm(d);
  uint64_t deadline, n;
  while (incr_queue_pop_run(d->queue, now, &deadline, &n)) {
    struct run *r = delivery_ring_push(&j->moving);
    if (!r) {
      /* Back where it was: moved on a later turn. */
      incr_queue_add(d->queue, deadline, n);
      break;
    }
    *r = (struct run){deadline, n};
    j->in_moving += n;
  }
}

/* Moves alone, when no write carried them. */
static void send_moves(struct delivery *d) {
  struct delivery_journal *j = jm(d);
  uint64_t deadlines[SCRIPTS_MOVE_MAX];
  while (j->moving_sent < j->moving_head + j->moving.len &&
         d->in_flight < DELIVERY_WINDOW) {
    uint64_t end;
    size_t k = unsent_moves(d, deadlines, &end);
    if (scripts_cmd_move(&d->cmd, &d->scripts, deadlines, k) ||
        !delivery_send(d, TAG_MOVE, end))
      return;
    j->moving_sent = end;
    d->stats.journal_moves++;
  }
}

void delivery_turn_end(struct delivery *d) {
  if (!journal_mode(d) || !delivery_sending(d))
    return;
  /* A write on its way: the next, sent when it is answered, carries them;
   * if none follows, that turn's end sends them. */
  if (jm(d)->writes_in_flight == 0)
    send_moves(d);
  delivery_wait_if_due(d);
}

/* The runs up to end leave the ring; returns their increments. */
static uint64_t runs_over(struct delivery *d, uint64_t end) {
  struct delivery_journal *j = jm(d);
  uint64_t n = 0;
  while (j->moving_head < end) {
    const struct run *r = delivery_ring_at(&j->moving, 0);
    n += r->n;
    delivery_ring_pop(&j->moving);
    j->moving_head++;
  }
  j->in_moving -= n;
  return n;
}

/* Redis moved n increments (a move of the runs up to end, or a renewal:
 * end at the ring's head): done once REDIS_MIN_REPLICAS's WAIT confirms
 * them, at once without it. Done counts what Redis says it moved. */
static void moved(struct delivery *d, uint64_t end, uint64_t n) {
  struct delivery_journal *j = jm(d);
  if (!d->min_replicas) {
    runs_over(d, end);
    d->stats.done += n;
    return;
  }
  struct applied_move *a = delivery_ring_push(&j->applied);
  if (a)
    *a = (struct applied_move){end, d->waits_sent, n};
  else
    j->moving_sent = j->moving_replied = j->moving_head; /* moved again */
}

static void on_move_reply(struct delivery *d, uint64_t end,
                          const redisReply *reply) {
  struct delivery_journal *j = jm(d);
  if (end <= j->moving_replied || end > j->moving_sent)
    return;
  if (!reply) {
    j->moving_sent = j->moving_replied; /* idempotent: sent again */
    return;
  }
  uint64_t n;
  if (!scripts_count_of(reply, &n)) {
    if (reply->type == REDIS_REPLY_ERROR && !delivery_on_error(d, reply)) {
      j->moving_sent = j->moving_replied;
      return;
    }
    /* Failed: what came before it and waits for a WAIT stays counted. */
    j->moving_replied = end;
    delivery_failed(d, runs_over(d, end), reply);
    return;
  }
  uint64_t expected = 0;
  for (uint64_t i = j->moving_replied; i < end; i++)
    expected +=
        ((const struct run *)delivery_ring_at(&j->moving, i - j->moving_head))
            ->n;
  if (n < expected) {
    /* Moved before: by a renewal of this replica, or by a replica that
     * adopted this journal while this one could not renew its lease. */
    d->stats.journal_moved_already += expected - n;
    log_debug("journal_moved_already", LOG_UINT("expected", expected),
              LOG_UINT("moved", n));
  }
  j->moving_replied = end;
  moved(d, end, n);
}

/* ---- REDIS_MIN_REPLICAS ------------------------------------------------- */

/* The writes the core settled are reported; the moves applied before WAIT
 * k are done. */
static void journal_confirmed(struct delivery *d, uint64_t k, uint64_t n) {
  (void)n;
  struct delivery_journal *j = jm(d);
  delivery_settle_head(d);
  while (j->applied.len > 0) {
    const struct applied_move *a = delivery_ring_at(&j->applied, 0);
    if (a->wait > k)
      break;
    runs_over(d, a->end);
    d->stats.done += a->n;
    delivery_ring_pop(&j->applied);
  }
}

/* Writes are resolved again (the core made them wait), moves moved again. */
static void journal_unconfirmed(struct delivery *d, uint64_t n) {
  (void)n;
  struct delivery_journal *j = jm(d);
  j->applied.len = 0;
  j->moving_sent = j->moving_replied = j->moving_head;
}

/* ---- Lease, adoption, leaving ------------------------------------------- */

/* A renewal that reads the whole journal costs Redis a moment per entry:
 * it sweeps while something may have escaped the queue, and now and then
 * whatever happens. */
#define SWEEP_EVERY 30

/* Something may have escaped the queue (a connection lost with an
 * adoption's reply, an adoption that failed, a queue push refused): the
 * renewals sweep until every entry that could have escaped has fallen due,
 * and a renewal period more. */
static void sweep_for_a_while(struct delivery *d) {
  struct delivery_journal *j = jm(d);
  uint64_t until = uv_now(d->loop) + j->incr_delay_ms +
                   2 * scripts_renew_period_ms(j->lease_ms);
  if (until > j->sweep_until)
    j->sweep_until = until;
}

static void renew(struct delivery *d) {
  struct delivery_journal *j = jm(d);
  if (d->state != DELIVERY_READY)
    return;
  /* Entries due a renewal period ago or more: the queue moves its own at
   * their deadline, the renewal whatever the queue missed. */
  uint64_t period = scripts_renew_period_ms(j->lease_ms);
  uint64_t now = uv_now(d->loop);
  bool sweep = now < j->sweep_until || ++j->renewals % SWEEP_EVERY == 0;
  uint64_t due = sweep ? scripts_wall(&d->scripts, now) - period : 0;
  if (scripts_cmd_renew(&d->cmd, &d->scripts, j->lease_ms, due) == 0)
    delivery_send(d, TAG_RENEW, 0);
}

static void on_lease_timer(uv_timer_t *timer) { renew(timer->data); }

/* A connection is ready: what was sent of the moves and not answered goes
 * again, and the lease is renewed at once, then every third of it. */
static void journal_ready(struct delivery *d) {
  struct delivery_journal *j = jm(d);
  j->moving_sent = j->moving_replied;
  sweep_for_a_while(d); /* replies lost with the last connection */
  renew(d);
  uint64_t period = scripts_renew_period_ms(j->lease_ms);
  uv_timer_start(&j->lease_timer, on_lease_timer, period, period);
}

static void journal_down(struct delivery *d) { jm(d)->writes_in_flight = 0; }

/* A reply that is not what the script answers: its error, if it is one. */
static void failed_reply(const char *event, const redisReply *reply) {
  bool error = reply->type == REDIS_REPLY_ERROR;
  log_warn(event,
           LOG_STRN("reply", error ? reply->str : "", error ? reply->len : 0));
}

/* A renewal's reply: what it moved, and whom to adopt. Lost, the next
 * renewal does it all again. */
static void on_renew_reply(struct delivery *d, const redisReply *reply) {
  struct scripts_renewal r;
  if (!reply)
    return;
  if (!scripts_renewal_of(reply, &r)) {
    failed_reply("journal_renew_failed", reply);
    return;
  }
  uint64_t n = 0;
  if (r.moved->type == REDIS_REPLY_ERROR) {
    /* The journal keeps them: the next renewal, or a move, tries again. */
    log_warn("journal_renew_move_failed",
             LOG_STRN("reply", r.moved->str, r.moved->len));
  } else if (scripts_count_of(r.moved, &n) && n > 0) {
    d->stats.journal_swept += n;
    log_info("journal_swept", LOG_UINT("increments", n));
    moved(d, jm(d)->moving_head, n);
  }
  uint64_t now = scripts_wall(&d->scripts, uv_now(d->loop));
  for (size_t i = 0; i < r.lapsed->elements; i++) {
    const redisReply *id = r.lapsed->element[i];
    if (scripts_cmd_adopt(&d->cmd, &d->scripts, id->str, id->len, now) == 0)
      delivery_send(d, TAG_ADOPT, 0);
    else
      log_warn("journal_adopt_skipped", LOG_STRN("replica", id->str, id->len));
  }
}

/* Lost, or failed: what the adoption added to this journal is moved by
 * this replica's renewals all the same. */
static void on_adopt_reply(struct delivery *d, const redisReply *reply) {
  struct scripts_adoption a;
  if (!reply)
    return;
  if (!scripts_adoption_of(reply, &a)) {
    failed_reply("journal_adopt_failed", reply);
    sweep_for_a_while(d);
    return;
  }
  uint64_t deadline_wall, n;
  for (size_t i = 0; scripts_adoption_entry(&a, i, &deadline_wall, &n); i++) {
    uint64_t deadline = deadline_wall - (uint64_t)d->scripts.clock_offset;
    if (incr_queue_add(d->queue, deadline, n) != 0) {
      /* In this journal: a renewal after it falls due moves it. */
      log_error("queue_full", LOG_UINT("increments", n));
      sweep_for_a_while(d);
    }
  }
  if (a.n == 0)
    return; /* adopted by another, left empty, or renewed meanwhile */
  d->stats.journal_adoptions++;
  d->stats.journal_adopted += a.n;
  log_info("journal_adopted", LOG_STRN("from", a.id, a.id_len),
           LOG_UINT("increments", a.n), LOG_UINT("lease_ms", jm(d)->lease_ms));
}

/* A lost leave is reported by the connection's loss (delivery.c). */
static void on_leave_reply(struct delivery *d, const redisReply *reply) {
  if (!reply)
    return;
  uint64_t n = 0;
  if (scripts_count_of(reply, &n) && n > 0)
    log_info("journal_handed_over", LOG_UINT("increments", n));
  delivery_left(d);
}

static bool journal_leave(struct delivery *d) {
  uv_timer_stop(&jm(d)->lease_timer);
  return scripts_cmd_leave(&d->cmd, &d->scripts) == 0 &&
         delivery_send(d, TAG_LEAVE, 0);
}

static void journal_reply(struct delivery *d, unsigned kind, uint64_t n,
                          const redisReply *reply) {
  switch ((enum journal_tag)kind) {
  case TAG_WRITE:
  case TAG_RESOLVE:
    on_write_reply(d, kind == TAG_RESOLVE, n, reply);
    break;
  case TAG_MOVE: /* a write numbered 0: only its moves' part counts */
    on_move_reply(d, n,
                  reply && reply->type != REDIS_REPLY_ERROR
                      ? scripts_write_moves(reply)
                      : reply);
    break;
  case TAG_ADOPT:
    on_adopt_reply(d, reply);
    break;
  case TAG_LEAVE:
    on_leave_reply(d, reply);
    break;
  case TAG_RENEW:
    on_renew_reply(d, reply);
    break;
  }
}

const struct delivery_mode delivery_journal_mode = {
    .entry_size = sizeof(struct write),
    .init = journal_mode_init,
    .close = journal_mode_close,
    .due = journal_due,
    .resend = journal_resend,
    .send = NULL, /* writes: delivery_write; moves: with them, or at the
                     turn's end */
    .ready = journal_ready,
    .down = journal_down,
    .reply = journal_reply,
    .confirmed = journal_confirmed,
    .unconfirmed = journal_unconfirmed,
    .settled = journal_settled,
    .pending = journal_pending,
    .leave = journal_leave,
    .hands_over = true,
};
