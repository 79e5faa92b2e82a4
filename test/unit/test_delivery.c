/* delivery: what goes to Redis, and what each reply, lost reply or error
 * means for the increments, in both durabilities. A fake transport records
 * the commands; the test answers them as Redis would. The engine and its
 * queue live on a real loop that the tests never run: time stands still,
 * and the teardown proves that closing leaves nothing on it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "base.h"
#include "incr/delivery.h"
#include "redis/sha1.h"

#define MAX_SENT 64

struct sent {
  uint64_t tag;
  redisReply *args; /* the command as Redis parses it */
};

struct fixture {
  uv_loop_t loop;
  struct delivery c;
  struct incr_queue q;
  struct sent sent[MAX_SENT];
  size_t nsent;
  size_t next_reply; /* the oldest sent command not answered yet */
  bool refuse;       /* send fails: no connection ready */
  unsigned retired;
  uint64_t written[MAX_SENT];
  bool held[MAX_SENT];
  size_t nwritten;
  unsigned idle, left;
};

static struct fixture *fixture_of(struct delivery *c) {
  return container_of(c, struct fixture, c);
}

static int fake_send(struct delivery *c, const char *cmd, size_t len,
                     uint64_t tag) {
  struct fixture *f = fixture_of(c);
  if (f->refuse)
    return UV_ENOTCONN;
  assert_true(f->nsent < MAX_SENT);
  redisReader *r = redisReaderCreate();
  void *reply = NULL;
  assert_int_equal(redisReaderFeed(r, cmd, len), REDIS_OK);
  assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
  assert_non_null(reply);
  redisReaderFree(r);
  f->sent[f->nsent++] = (struct sent){tag, reply};
  return 0;
}

static void fake_retire(struct delivery *c, const char *why, size_t len) {
  (void)why;
  (void)len;
  fixture_of(c)->retired++;
}

static bool fake_permanent(const char *err, size_t len) {
  return len >= 9 && strncmp(err, "WRONGTYPE", 9) == 0;
}

static void on_written(struct delivery *c, uint64_t seq, bool held) {
  struct fixture *f = fixture_of(c);
  f->written[f->nwritten] = seq;
  f->held[f->nwritten++] = held;
}

static void on_idle(struct delivery *c) { fixture_of(c)->idle++; }
static void on_left(struct delivery *c) { fixture_of(c)->left++; }

static const struct delivery_transport transport = {fake_send, fake_retire,
                                                    fake_permanent};
static const struct delivery_events events = {
    .on_written = on_written, .on_idle = on_idle, .on_left = on_left};

static int setup(void **state, enum durability d) {
  struct fixture *f = calloc(1, sizeof *f);
  if (!f || uv_loop_init(&f->loop) != 0 ||
      incr_queue_init(&f->q, &f->loop, NULL) != 0)
    return -1;
  struct delivery_options opts = {
      .durability = d,
      .prefix = "gd:",
      .counter_key = "counter",
      .replica_id = 0x1234,
      .lease_ms = 3000,
      .queue = &f->q,
      .transport = &transport,
      .events = &events,
  };
  if (delivery_init(&f->c, &f->loop, &opts) != 0)
    return -1;
  *state = f;
  return 0;
}

static int setup_memory(void **state) {
  return setup(state, DURABILITY_MEMORY);
}
static int setup_journal(void **state) {
  return setup(state, DURABILITY_REDIS);
}

static int teardown(void **state) {
  struct fixture *f = *state;
  for (size_t i = 0; i < f->nsent; i++)
    freeReplyObject(f->sent[i].args);
  delivery_close(&f->c);
  incr_queue_close(&f->q, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  free(f);
  return 0;
}

/* ---- Helpers ------------------------------------------------------------ */

/* Whether a sent EVAL or EVALSHA runs script js. */
static bool runs(const struct fixture *f, const struct sent *s,
                 enum scripts_script js) {
  const redisReply *a = s->args;
  if (a->elements < 2)
    return false;
  char sha[SHA1_HEX_LEN + 1];
  if (strcmp(a->element[0]->str, "EVALSHA") == 0)
    snprintf(sha, sizeof sha, "%s", a->element[1]->str);
  else if (strcmp(a->element[0]->str, "EVAL") == 0)
    sha1_hex(a->element[1]->str, a->element[1]->len, sha);
  else
    return false;
  return strcmp(sha, f->c.scripts.sha[js]) == 0;
}

/* The i-th argument after the keys of a sent EVAL, as a number. */
static uint64_t argv_u64(const struct sent *s, size_t i) {
  size_t nkeys = strtoull(s->args->element[2]->str, NULL, 10);
  return strtoull(s->args->element[3 + nkeys + i]->str, NULL, 10);
}

static void reply_with(struct fixture *f, const redisReply *r) {
  assert_true(f->next_reply < f->nsent);
  delivery_on_reply(&f->c, f->sent[f->next_reply++].tag, r);
}

static void reply_int(struct fixture *f, long long v) {
  redisReply r = {.type = REDIS_REPLY_INTEGER, .integer = v};
  reply_with(f, &r);
}

static void reply_error(struct fixture *f, const char *err) {
  redisReply r = {
      .type = REDIS_REPLY_ERROR, .str = (char *)err, .len = strlen(err)};
  reply_with(f, &r);
}

static void reply_write_and_moves(struct fixture *f, long long recorded,
                                  long long moved) {
  redisReply w = {.type = REDIS_REPLY_INTEGER, .integer = recorded};
  redisReply m = {.type = REDIS_REPLY_INTEGER, .integer = moved};
  redisReply *both[] = {&w, &m};
  redisReply r = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = both};
  reply_with(f, &r);
}

/* Memory mode: n more increments fall due, as the queue's timer finds them. */
static void fall_due(struct fixture *f, uint64_t n) {
  uint64_t now = uv_now(&f->loop);
  assert_int_equal(incr_queue_add(&f->q, now, n), 0);
  delivery_due(&f->c, now);
  assert_int_equal(f->q.pending, 0);
}

/* A move alone: a journal write numbered 0, which records nothing. */
static bool moves_alone(const struct fixture *f, const struct sent *s) {
  return runs(f, s, SCRIPTS_WRITE) && argv_u64(s, 0) == 0;
}

/* The connection breaks: every reply in flight is lost, in order. */
static void connection_breaks(struct fixture *f) {
  while (f->next_reply < f->nsent)
    reply_with(f, NULL);
  delivery_on_down(&f->c);
}

/* ---- Memory mode -------------------------------------------------------- */

static void test_delivery_sends_what_fell_due_as_one_batch(void **state) {
  struct fixture *f = *state;
  delivery_on_ready(&f->c);
  fall_due(f, 5);
  assert_int_equal(f->nsent, 1);
  assert_true(runs(f, &f->sent[0], SCRIPTS_BATCH));
  assert_int_equal(argv_u64(&f->sent[0], 0), 1); /* batch number */
  assert_int_equal(argv_u64(&f->sent[0], 1), 5); /* increments */
  assert_int_equal(delivery_pending(&f->c), 5);
  reply_int(f, 1);
  assert_int_equal(f->c.stats.done, 5);
  assert_int_equal(delivery_pending(&f->c), 0);
  assert_true(f->idle > 0);
}

static void test_delivery_gathers_what_fell_due_while_down(void **state) {
  struct fixture *f = *state;
  fall_due(f, 1);
  fall_due(f, 2);
  fall_due(f, 3);
  assert_int_equal(f->nsent, 0);
  delivery_on_ready(&f->c);
  assert_int_equal(f->nsent, 1);
  assert_int_equal(argv_u64(&f->sent[0], 1), 6);
}

static void
test_delivery_sends_a_lost_batch_again_with_its_number(void **state) {
  struct fixture *f = *state;
  delivery_on_ready(&f->c);
  fall_due(f, 3);
  fall_due(f, 4);
  connection_breaks(f);
  assert_int_equal(f->c.stats.retried, 7);
  fall_due(f, 1); /* while down: a batch of its own later */
  delivery_on_ready(&f->c);
  assert_int_equal(f->nsent, 5);
  assert_int_equal(argv_u64(&f->sent[2], 0), 1);
  assert_int_equal(argv_u64(&f->sent[2], 1), 3);
  assert_int_equal(argv_u64(&f->sent[3], 0), 2);
  assert_int_equal(argv_u64(&f->sent[4], 0), 3);
  assert_int_equal(argv_u64(&f->sent[4], 1), 1);
  reply_int(f, 0); /* applied before the break: done, not counted again */
  reply_int(f, 1);
  reply_int(f, 1);
  assert_int_equal(f->c.stats.done, 8);
  assert_int_equal(delivery_pending(&f->c), 0);
}

static void
test_delivery_resends_in_order_after_a_transient_error(void **state) {
  struct fixture *f = *state;
  delivery_on_ready(&f->c);
  fall_due(f, 2);
  fall_due(f, 3);
  reply_error(f, "BUSY Redis is busy running a script");
  reply_int(f, -1); /* its predecessor is missing: nothing applied */
  assert_true(f->retired > 0);
  assert_int_equal(f->c.stats.done, 0);
  assert_int_equal(f->c.stats.failed, 0);
  delivery_on_down(&f->c);
  delivery_on_ready(&f->c);
  assert_int_equal(f->nsent, 4);
  assert_int_equal(argv_u64(&f->sent[2], 0), 1);
  assert_int_equal(argv_u64(&f->sent[3], 0), 2);
  reply_int(f, 1);
  reply_int(f, 1);
  assert_int_equal(f->c.stats.done, 5);
}

static void test_delivery_fails_a_batch_no_retry_can_fix(void **state) {
  struct fixture *f = *state;
  delivery_on_ready(&f->c);
  fall_due(f, 2);
  fall_due(f, 3);
  reply_error(f, "WRONGTYPE Operation against a key holding the wrong kind");
  reply_int(f, 1);
  assert_int_equal(f->c.stats.failed, 2);
  assert_int_equal(f->c.stats.done, 3);
  assert_int_equal(f->retired, 0);
  assert_int_equal(delivery_pending(&f->c), 0);
  fall_due(f, 1);
  assert_int_equal(argv_u64(&f->sent[2], 0), 3); /* numbers go on */
}

/* ---- Memory mode: Idempotency-Keys -------------------------------------- */

/* One keyed /incr due now: what the engine did with it. */
static enum delivery_keyed keyed(struct fixture *f, const char *key) {
  enum delivery_keyed out = DELIVERY_KEYED_REPLAY;
  assert_int_equal(
      delivery_incr_keyed(&f->c, key, strlen(key), uv_now(&f->loop), &out), 0);
  return out;
}

/* The keys a sent batch carries: its arguments after the TTL. */
static size_t batch_keys(const struct sent *s) {
  size_t nkeys = strtoull(s->args->element[2]->str, NULL, 10);
  return s->args->elements - (3 + nkeys + 6);
}

static const char *batch_key(const struct sent *s, size_t i) {
  size_t nkeys = strtoull(s->args->element[2]->str, NULL, 10);
  return s->args->element[3 + nkeys + 6 + i]->str;
}

static void
test_delivery_a_key_pending_or_counted_here_is_a_replay(void **state) {
  struct fixture *f = *state;
  delivery_on_ready(&f->c);
  assert_int_equal(keyed(f, "k1"), DELIVERY_KEYED_QUEUED);
  assert_int_equal(keyed(f, "k1"), DELIVERY_KEYED_REPLAY); /* queued */
  assert_int_equal(keyed(f, "k2"), DELIVERY_KEYED_QUEUED);
  assert_int_equal(incr_queue_push(&f->q, uv_now(&f->loop)), 0);
  assert_int_equal(f->q.pending, 3); /* the replay queued nothing */
  delivery_due(&f->c, uv_now(&f->loop));
  assert_int_equal(f->nsent, 1);
  assert_int_equal(argv_u64(&f->sent[0], 1), 3); /* keyed ones too */
  assert_int_equal(batch_keys(&f->sent[0]), 2);
  assert_string_equal(batch_key(&f->sent[0], 0), "k1");
  assert_string_equal(batch_key(&f->sent[0], 1), "k2");
  assert_int_equal(keyed(f, "k2"), DELIVERY_KEYED_REPLAY); /* in a batch */
  reply_int(f, 1);
  assert_int_equal(keyed(f, "k1"), DELIVERY_KEYED_REPLAY); /* counted */
  assert_int_equal(f->q.pending, 0);
  assert_int_equal(f->c.stats.done, 3);
}

static void test_delivery_sends_a_lost_batch_again_with_its_keys(void **state) {
  struct fixture *f = *state;
  delivery_on_ready(&f->c);
  keyed(f, "a");
  delivery_due(&f->c, uv_now(&f->loop));
  keyed(f, "b");
  assert_int_equal(incr_queue_push(&f->q, uv_now(&f->loop)), 0);
  delivery_due(&f->c, uv_now(&f->loop));
  connection_breaks(f);
  delivery_on_ready(&f->c);
  assert_int_equal(f->nsent, 4);
  /* Every copy carries the keys of its first send, and only those. */
  assert_int_equal(argv_u64(&f->sent[2], 0), 1);
  assert_int_equal(batch_keys(&f->sent[2]), 1);
  assert_string_equal(batch_key(&f->sent[2], 0), "a");
  assert_int_equal(argv_u64(&f->sent[3], 0), 2);
  assert_int_equal(argv_u64(&f->sent[3], 1), 2);
  assert_int_equal(batch_keys(&f->sent[3]), 1);
  assert_string_equal(batch_key(&f->sent[3], 0), "b");
  reply_int(f, 0); /* applied before the break */
  reply_int(f, 1);
  assert_int_equal(keyed(f, "a"), DELIVERY_KEYED_REPLAY);
  assert_int_equal(keyed(f, "b"), DELIVERY_KEYED_REPLAY);
}

static void test_delivery_forgets_the_keys_of_a_failed_batch(void **state) {
  struct fixture *f = *state;
  delivery_on_ready(&f->c);
  keyed(f, "lost");
  delivery_due(&f->c, uv_now(&f->loop));
  reply_error(f, "WRONGTYPE Operation against a key holding the wrong kind");
  assert_int_equal(f->c.stats.failed, 1);
  /* Never counted: a repeat may count it now. */
  assert_int_equal(keyed(f, "lost"), DELIVERY_KEYED_QUEUED);
}

static void test_delivery_batches_carry_a_bounded_number_of_keys(void **state) {
  struct fixture *f = *state;
  delivery_on_ready(&f->c);
  char key[16];
  for (int i = 0; i <= SCRIPTS_IDEM_MAX; i++) {
    snprintf(key, sizeof key, "k%d", i);
    assert_int_equal(keyed(f, key), DELIVERY_KEYED_QUEUED);
  }
  assert_int_equal(incr_queue_push(&f->q, uv_now(&f->loop)), 0);
  delivery_due(&f->c, uv_now(&f->loop));
  assert_int_equal(f->nsent, 2);
  assert_int_equal(batch_keys(&f->sent[0]), SCRIPTS_IDEM_MAX);
  assert_int_equal(argv_u64(&f->sent[0], 1), SCRIPTS_IDEM_MAX + 1);
  assert_int_equal(batch_keys(&f->sent[1]), 1);
  assert_int_equal(argv_u64(&f->sent[1], 1), 1);
  assert_string_equal(batch_key(&f->sent[1], 0), "k1000");
}

static void test_delivery_forgets_counted_keys_after_the_ttl(void **state) {
  struct fixture *f = *state;
  f->c.m.memory.ttl_ms = 1;
  delivery_on_ready(&f->c);
  keyed(f, "t");
  delivery_due(&f->c, uv_now(&f->loop));
  reply_int(f, 1);
  assert_int_equal(keyed(f, "t"), DELIVERY_KEYED_REPLAY);
  uint64_t counted = uv_now(&f->loop);
  while (uv_now(&f->loop) < counted + 1)
    uv_update_time(&f->loop); /* the loop never runs: time is read */
  assert_int_equal(keyed(f, "t"), DELIVERY_KEYED_QUEUED);
  assert_int_equal(f->c.m.memory.n_keys, 1);
}

static void test_delivery_refuses_keys_in_journal_mode(void **state) {
  struct fixture *f = *state;
  enum delivery_keyed out;
  assert_int_equal(delivery_incr_keyed(&f->c, "k", 1, 0, &out), UV_EINVAL);
}

/* ---- Journal mode ------------------------------------------------------- */

/* A renewal's reply: n moved, and the lapsed replicas named. */
static void reply_renewal(struct fixture *f, long long n, const char *lapsed) {
  redisReply moved = {.type = REDIS_REPLY_INTEGER, .integer = n};
  redisReply id = {.type = REDIS_REPLY_STRING,
                   .str = (char *)lapsed,
                   .len = lapsed ? strlen(lapsed) : 0};
  redisReply *ids[] = {&id};
  redisReply named = {
      .type = REDIS_REPLY_ARRAY, .elements = lapsed ? 1 : 0, .element = ids};
  redisReply *two[] = {&moved, &named};
  redisReply r = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = two};
  reply_with(f, &r);
}

/* Answers the lease renewal sent when a connection is ready: nothing due,
 * no one to adopt. */
static void ready_with_lease(struct fixture *f) {
  delivery_on_ready(&f->c);
  reply_renewal(f, 0, NULL);
}

static void test_delivery_renews_its_lease_when_ready(void **state) {
  struct fixture *f = *state;
  delivery_on_ready(&f->c);
  assert_int_equal(f->nsent, 1);
  assert_true(runs(f, &f->sent[0], SCRIPTS_RENEW));
  assert_string_equal(f->sent[0].args->element[3]->str,
                      "gd:{counter}:journal:0000000000001234");
  /* Entries due a renewal period (lease / 3) ago or more are its to move. */
  uint64_t now = scripts_wall(&f->c.scripts, uv_now(&f->loop));
  assert_int_equal(argv_u64(&f->sent[0], 2), now - 1000);
  /* Each lapsed replica it names is adopted, one script each. */
  reply_renewal(f, 0, "00000000000000ab");
  assert_int_equal(f->nsent, 2);
  assert_true(runs(f, &f->sent[1], SCRIPTS_ADOPT));
  assert_string_equal(f->sent[1].args->element[4]->str,
                      "gd:{counter}:journal:00000000000000ab");
}

/* What a renewal moved (entries the queue never knew of: an adoption whose
 * reply was lost) is done; a move that then finds its entry gone counts
 * nothing twice. */
static void test_delivery_counts_what_redis_moved(void **state) {
  struct fixture *f = *state;
  ready_with_lease(f);
  delivery_write(&f->c, 5000, 4, NULL, 0);
  reply_int(f, 1);
  delivery_due(&f->c, 5000);
  delivery_turn_end(&f->c);
  assert_true(moves_alone(f, &f->sent[2]));
  reply_write_and_moves(f, 0, 1); /* 3 moved before, by a renewal */
  assert_int_equal(f->c.stats.done, 1);
  assert_int_equal(f->c.stats.journal_moved_already, 3);
  assert_int_equal(delivery_pending(&f->c), 0);
  uv_timer_t *lease = &f->c.m.journal.lease_timer;
  lease->timer_cb(lease); /* the next renewal */
  assert_true(runs(f, &f->sent[3], SCRIPTS_RENEW));
  reply_renewal(f, 6, NULL);
  assert_int_equal(f->c.stats.done, 7);
  assert_int_equal(f->c.stats.journal_swept, 6);
}

/* A renewal reads the whole journal only while something may have escaped
 * the queue (after a reconnect, a failed adoption, a full queue), and every
 * 30th renewal whatever happens. */
static void test_delivery_sweeps_only_when_it_may_be_needed(void **state) {
  struct fixture *f = *state;
  ready_with_lease(f);
  assert_true(argv_u64(&f->sent[0], 2) > 0); /* after a (re)connect */
  f->c.m.journal.sweep_until = 0;            /* that while is over */
  f->c.m.journal.renewals = 0;
  uv_timer_t *lease = &f->c.m.journal.lease_timer;
  for (int i = 1; i <= 30; i++) {
    lease->timer_cb(lease);
    const struct sent *r = &f->sent[f->nsent - 1];
    assert_true(runs(f, r, SCRIPTS_RENEW));
    if (i < 30)
      assert_int_equal(argv_u64(r, 2), 0);
    else
      assert_true(argv_u64(r, 2) > 0);
    reply_renewal(f, 0, NULL);
  }
  /* An adoption that failed: sweeping again, at once. */
  lease->timer_cb(lease);
  reply_renewal(f, 0, "00000000000000ab");
  reply_error(f, "OOM command not allowed");
  lease->timer_cb(lease);
  assert_true(argv_u64(&f->sent[f->nsent - 1], 2) > 0);
}

static void test_delivery_holds_a_write_until_redis_has_it(void **state) {
  struct fixture *f = *state;
  ready_with_lease(f);
  uint64_t seq = delivery_write(&f->c, 5000, 7, NULL, 0);
  assert_int_equal(seq, 1);
  assert_true(runs(f, &f->sent[1], SCRIPTS_WRITE));
  assert_int_equal(argv_u64(&f->sent[1], 0), 1);
  assert_int_equal(argv_u64(&f->sent[1], 2), 7);
  assert_int_equal(f->nwritten, 0);
  assert_int_equal(f->q.pending, 0);
  reply_int(f, 1);
  assert_int_equal(f->nwritten, 1);
  assert_int_equal(f->written[0], 1);
  assert_true(f->held[0]);
  assert_int_equal(f->q.pending, 7); /* now pending, due at its deadline */
  assert_int_equal(incr_queue_next_deadline(&f->q), 5000);
}

static void test_delivery_refuses_a_write_with_no_connection(void **state) {
  struct fixture *f = *state;
  assert_int_equal(delivery_write(&f->c, 5000, 7, NULL, 0), 0);
  assert_int_equal(f->nsent, 0);
  assert_int_equal(f->nwritten, 0);
}

static void
test_delivery_resolves_lost_writes_and_reports_in_order(void **state) {
  struct fixture *f = *state;
  ready_with_lease(f);
  delivery_write(&f->c, 5000, 1, NULL, 0);
  delivery_write(&f->c, 5001, 2, NULL, 0);
  connection_breaks(f);
  assert_int_equal(f->nwritten, 0); /* their 200s wait */
  assert_int_equal(delivery_unresolved(&f->c), 3);
  ready_with_lease(f); /* lease + adopt went first: resolutions follow */
  assert_int_equal(f->nsent, 6);
  assert_true(runs(f, &f->sent[4], SCRIPTS_RESOLVE));
  assert_int_equal(argv_u64(&f->sent[4], 0), 1);
  assert_int_equal(argv_u64(&f->sent[5], 0), 2);
  reply_int(f, 1); /* write 1 had been applied */
  reply_int(f, 0); /* write 2 had not: fenced off now */
  assert_int_equal(f->nwritten, 2);
  assert_true(f->held[0]);
  assert_false(f->held[1]);
  assert_int_equal(f->q.pending, 1);
  assert_int_equal(delivery_unresolved(&f->c), 0);
}

static void
test_delivery_reports_writes_in_order_when_outcomes_are_not(void **state) {
  struct fixture *f = *state;
  ready_with_lease(f);
  delivery_write(&f->c, 5000, 1, NULL, 0);
  connection_breaks(f);
  ready_with_lease(f);
  /* The resolution fails; a write sent behind it succeeds. */
  uint64_t later = delivery_write(&f->c, 5001, 3, NULL, 0);
  assert_int_equal(later, 2);
  reply_error(f, "BUSY Redis is busy running a script");
  reply_int(f, 1);
  assert_int_equal(f->nwritten, 0); /* write 2 waits for write 1 */
  delivery_on_down(&f->c);
  ready_with_lease(f);
  reply_int(f, 0);
  assert_int_equal(f->nwritten, 2);
  assert_int_equal(f->written[0], 1);
  assert_false(f->held[0]);
  assert_int_equal(f->written[1], 2);
  assert_true(f->held[1]);
}

static void test_delivery_moves_due_runs_and_again_if_lost(void **state) {
  struct fixture *f = *state;
  ready_with_lease(f);
  delivery_write(&f->c, 5000, 2, NULL, 0);
  delivery_write(&f->c, 5003, 3, NULL, 0);
  reply_int(f, 1);
  reply_int(f, 1);
  delivery_due(&f->c, 4999);
  delivery_turn_end(&f->c);
  assert_int_equal(f->nsent, 3); /* nothing due yet */
  delivery_due(&f->c, 5003);
  assert_int_equal(f->nsent, 3); /* at the turn's end, with no write */
  delivery_turn_end(&f->c);
  assert_int_equal(f->nsent, 4);
  assert_true(moves_alone(f, &f->sent[3]));
  uint64_t wall = argv_u64(&f->sent[3], 9);
  assert_int_equal(argv_u64(&f->sent[3], 10), wall + 3); /* both deadlines */
  assert_int_equal(delivery_pending(&f->c), 5);
  connection_breaks(f);
  ready_with_lease(f);
  delivery_turn_end(&f->c);
  assert_true(moves_alone(f, &f->sent[5]));
  reply_write_and_moves(f, 0, 5);
  assert_int_equal(f->c.stats.done, 5);
  assert_int_equal(delivery_pending(&f->c), 0);
  assert_int_equal(f->q.pending, 0);
}

static void test_delivery_moves_ride_with_the_next_write(void **state) {
  struct fixture *f = *state;
  ready_with_lease(f);
  delivery_write(&f->c, 5000, 2, NULL, 0);
  reply_int(f, 1);
  delivery_write(&f->c, 9000, 1, NULL, 0); /* on its way */
  delivery_due(&f->c, 5000);
  delivery_turn_end(&f->c);
  assert_int_equal(f->nsent, 3); /* the next write will carry them */
  reply_int(f, 1);
  uint64_t seq = delivery_write(&f->c, 9001, 4, NULL, 0);
  delivery_turn_end(&f->c);
  assert_int_equal(f->nsent, 4);
  const struct sent *w = &f->sent[3];
  assert_true(runs(f, w, SCRIPTS_WRITE));
  assert_int_equal(argv_u64(w, 0), seq);
  assert_int_equal(argv_u64(w, 9), argv_u64(&f->sent[1], 1)); /* 5000 */
  assert_int_equal(f->c.stats.journal_moves, 1);
  reply_write_and_moves(f, 1, 2);
  assert_int_equal(f->c.stats.done, 2);
  assert_int_equal(f->nwritten, 3);
  assert_true(f->held[2]);
  assert_int_equal(delivery_pending(&f->c), 0);
  assert_int_equal(f->q.pending, 5); /* the two later writes */
}

static void test_delivery_moves_of_a_lost_write_go_again_alone(void **state) {
  struct fixture *f = *state;
  ready_with_lease(f);
  delivery_write(&f->c, 5000, 2, NULL, 0);
  reply_int(f, 1);
  delivery_due(&f->c, 5000);
  delivery_write(&f->c, 9000, 1, NULL, 0); /* carries the move */
  connection_breaks(f);
  ready_with_lease(f);
  delivery_turn_end(&f->c); /* the write is resolved, the move sent again */
  assert_true(runs(f, &f->sent[4], SCRIPTS_RESOLVE));
  assert_true(moves_alone(f, &f->sent[5]));
  reply_int(f, 1);
  reply_write_and_moves(f, 0, 2);
  assert_int_equal(f->c.stats.done, 2);
  assert_int_equal(f->nwritten, 2);
  assert_true(f->held[1]);
}

static void
test_delivery_moves_refused_beside_a_recorded_write_fail_alone(void **state) {
  struct fixture *f = *state;
  ready_with_lease(f);
  delivery_write(&f->c, 5000, 2, NULL, 0);
  reply_int(f, 1);
  delivery_due(&f->c, 5000);
  delivery_write(&f->c, 9000, 1, NULL, 0);
  redisReply w = {.type = REDIS_REPLY_INTEGER, .integer = 1};
  const char *err = "WRONGTYPE Operation against a key holding the wrong kind";
  redisReply m = {
      .type = REDIS_REPLY_ERROR, .str = (char *)err, .len = strlen(err)};
  redisReply *both[] = {&w, &m};
  redisReply r = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = both};
  reply_with(f, &r);
  assert_int_equal(f->c.stats.failed, 2);
  assert_int_equal(f->c.stats.done, 0);
  assert_true(f->held[1]); /* the write itself is in the journal */
  assert_int_equal(f->q.pending, 1);
}

static void test_delivery_queues_adopted_entries_at_their_time(void **state) {
  struct fixture *f = *state;
  delivery_on_ready(&f->c);
  reply_renewal(f, 0, "dead");
  uint64_t mine = argv_u64(&f->sent[1], 2); /* this clock, when asked */
  char d1[24], d2[24];
  snprintf(d1, sizeof d1, "%llu", (unsigned long long)mine);
  snprintf(d2, sizeof d2, "%llu", (unsigned long long)mine + 1500);
  redisReply id = {.type = REDIS_REPLY_STRING, .str = "dead", .len = 4};
  redisReply n9 = {.type = REDIS_REPLY_INTEGER, .integer = 9};
  redisReply e1 = {.type = REDIS_REPLY_STRING, .str = d1, .len = strlen(d1)};
  redisReply e2 = {.type = REDIS_REPLY_STRING, .str = d2, .len = strlen(d2)};
  redisReply n4 = {.type = REDIS_REPLY_INTEGER, .integer = 4};
  redisReply n5 = {.type = REDIS_REPLY_INTEGER, .integer = 5};
  redisReply *added_e[] = {&e2, &n5, &e1, &n4};
  redisReply added = {
      .type = REDIS_REPLY_ARRAY, .elements = 4, .element = added_e};
  redisReply *top_e[] = {&id, &n9, &added};
  redisReply top = {.type = REDIS_REPLY_ARRAY, .elements = 3, .element = top_e};
  reply_with(f, &top);
  assert_int_equal(f->c.stats.journal_adoptions, 1);
  assert_int_equal(f->c.stats.journal_adopted, 9);
  assert_int_equal(f->q.pending, 9);
  /* The loop's clock stands still: one entry due at the adoption, the
   * other 1.5 s later. */
  uint64_t now = uv_now(&f->loop), deadline, n;
  assert_true(incr_queue_pop_run(&f->q, now, &deadline, &n));
  assert_int_equal(n, 4);
  assert_false(incr_queue_pop_run(&f->q, now + 1499, &deadline, &n));
  assert_true(incr_queue_pop_run(&f->q, now + 1500, &deadline, &n));
  assert_int_equal(n, 5);
}

static void test_delivery_leaves_once_even_if_the_reply_is_lost(void **state) {
  struct fixture *f = *state;
  ready_with_lease(f);
  delivery_leave(&f->c);
  assert_true(runs(f, &f->sent[1], SCRIPTS_LEAVE));
  assert_int_equal(f->left, 0);
  connection_breaks(f);
  assert_int_equal(f->left, 1);
  delivery_on_ready(&f->c);
  assert_int_equal(f->nsent, 2); /* no lease taken again */
  delivery_on_down(&f->c);
  assert_int_equal(f->left, 1);
  assert_int_equal(delivery_write(&f->c, 1, 1, NULL, 0), 0);
}

#define MEMORY(t) cmocka_unit_test_setup_teardown(t, setup_memory, teardown)
#define JOURNAL(t) cmocka_unit_test_setup_teardown(t, setup_journal, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      MEMORY(test_delivery_sends_what_fell_due_as_one_batch),
      MEMORY(test_delivery_gathers_what_fell_due_while_down),
      MEMORY(test_delivery_sends_a_lost_batch_again_with_its_number),
      MEMORY(test_delivery_resends_in_order_after_a_transient_error),
      MEMORY(test_delivery_fails_a_batch_no_retry_can_fix),
      MEMORY(test_delivery_a_key_pending_or_counted_here_is_a_replay),
      MEMORY(test_delivery_sends_a_lost_batch_again_with_its_keys),
      MEMORY(test_delivery_forgets_the_keys_of_a_failed_batch),
      MEMORY(test_delivery_batches_carry_a_bounded_number_of_keys),
      MEMORY(test_delivery_forgets_counted_keys_after_the_ttl),
      JOURNAL(test_delivery_renews_its_lease_when_ready),
      JOURNAL(test_delivery_counts_what_redis_moved),
      JOURNAL(test_delivery_sweeps_only_when_it_may_be_needed),
      JOURNAL(test_delivery_holds_a_write_until_redis_has_it),
      JOURNAL(test_delivery_refuses_a_write_with_no_connection),
      JOURNAL(test_delivery_resolves_lost_writes_and_reports_in_order),
      JOURNAL(test_delivery_reports_writes_in_order_when_outcomes_are_not),
      JOURNAL(test_delivery_moves_due_runs_and_again_if_lost),
      JOURNAL(test_delivery_moves_ride_with_the_next_write),
      JOURNAL(test_delivery_moves_of_a_lost_write_go_again_alone),
      JOURNAL(test_delivery_moves_refused_beside_a_recorded_write_fail_alone),
      JOURNAL(test_delivery_queues_adopted_entries_at_their_time),
      JOURNAL(test_delivery_leaves_once_even_if_the_reply_is_lost),
      JOURNAL(test_delivery_refuses_keys_in_journal_mode),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
