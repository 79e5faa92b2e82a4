/* commit: journal mode's held 200s. The /incr of a loop turn are held under
 * one ticket and go to Redis as one journal write at the turn's end; one
 * write is in flight at a time and the turns during its round trip join the
 * next. A real engine on a real loop, with a fake transport: each test runs
 * one loop iteration per turn and answers the writes as Redis would. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "base.h"
#include "incr/commit.h"

#define MAX_SENT 16
#define MAX_FILLS 8

struct fill {
  uint64_t ticket, n;
  bool held;
  uint16_t status;
  bool replayed;
};

struct fixture {
  uv_loop_t loop;
  struct incr_queue q;
  struct delivery d;
  struct commit cm;
  uint64_t tags[MAX_SENT];
  uint64_t write_n[MAX_SENT]; /* a journal write's increments, else 0 */
  size_t nsent, next_reply;
  struct fill fills[MAX_FILLS];
  size_t nfills;
};

static struct fixture *of_delivery(struct delivery *d) {
  return container_of(d, struct fixture, d);
}

/* Records the tag, and the increments of a journal write (its ARGV[3]). */
static int fake_send(struct delivery *d, const char *cmd, size_t len,
                     uint64_t tag) {
  struct fixture *f = of_delivery(d);
  assert_true(f->nsent < MAX_SENT);
  redisReader *r = redisReaderCreate();
  void *parsed = NULL;
  assert_int_equal(redisReaderFeed(r, cmd, len), REDIS_OK);
  assert_int_equal(redisReaderGetReply(r, &parsed), REDIS_OK);
  redisReaderFree(r);
  const redisReply *a = parsed;
  uint64_t n = 0;
  if (a->elements > 3 && strncmp(a->element[0]->str, "EVAL", 4) == 0) {
    size_t nkeys = strtoull(a->element[2]->str, NULL, 10);
    if (nkeys == 7) /* the write script's keys */
      n = strtoull(a->element[3 + nkeys + 2]->str, NULL, 10);
  }
  freeReplyObject(parsed);
  f->write_n[f->nsent] = n;
  f->tags[f->nsent++] = tag;
  return 0;
}

static void fake_retire(struct delivery *d, const char *why, size_t len) {
  (void)d;
  (void)why;
  (void)len;
}

static bool fake_permanent(const char *err, size_t len) {
  (void)err;
  (void)len;
  return false;
}

static void on_written(struct delivery *d, uint64_t seq, bool held) {
  commit_written(&of_delivery(d)->cm, seq, held);
}

static void on_replays(struct delivery *d, uint64_t seq, const char *flags,
                       size_t len) {
  commit_replays(&of_delivery(d)->cm, seq, flags, len);
}

static void on_left(struct delivery *d) { (void)d; }

static const struct delivery_transport transport = {fake_send, fake_retire,
                                                    fake_permanent};
static const struct delivery_events events = {
    .on_written = on_written,
    .on_replays = on_replays,
    .on_left = on_left,
};

static void fill(struct commit *cm, uint64_t ticket, uint64_t n, bool held,
                 const struct http_response *resp) {
  struct fixture *f = container_of(cm, struct fixture, cm);
  assert_true(f->nfills < MAX_FILLS);
  f->fills[f->nfills++] =
      (struct fill){ticket, n, held, resp->status, resp == &commit_replayed};
}

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  assert_int_equal(incr_queue_init(&f->q, &f->loop, NULL), 0);
  struct delivery_options opts = {
      .durability = DURABILITY_REDIS,
      .prefix = "gd:",
      .counter_key = "counter",
      .replica_id = 1,
      .lease_ms = 3000,
      .queue = &f->q,
      .transport = &transport,
      .events = &events,
  };
  assert_int_equal(delivery_init(&f->d, &f->loop, &opts), 0);
  assert_int_equal(commit_init(&f->cm, &f->loop, &f->d, 1000, fill), 0);
  assert_int_equal(commit_start(&f->cm), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  commit_close(&f->cm);
  delivery_close(&f->d);
  incr_queue_close(&f->q, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  free(f);
  return 0;
}

static void reply_int(struct fixture *f, long long v) {
  assert_true(f->next_reply < f->nsent);
  redisReply r = {.type = REDIS_REPLY_INTEGER, .integer = v};
  delivery_on_reply(&f->d, f->tags[f->next_reply++], &r);
}

/* A connection is ready; the lease's renewal (naming one lapsed replica)
 * and that replica's adoption (of nothing) are answered. */
static void ready(struct fixture *f) {
  delivery_on_ready(&f->d);
  redisReply zero = {.type = REDIS_REPLY_INTEGER, .integer = 0};
  redisReply id = {.type = REDIS_REPLY_STRING, .str = "ab", .len = 2};
  redisReply *ids[] = {&id};
  redisReply lapsed = {
      .type = REDIS_REPLY_ARRAY, .elements = 1, .element = ids};
  redisReply *two[] = {&zero, &lapsed};
  redisReply renewal = {
      .type = REDIS_REPLY_ARRAY, .elements = 2, .element = two};
  delivery_on_reply(&f->d, f->tags[f->next_reply++], &renewal);
  redisReply empty = {.type = REDIS_REPLY_ARRAY, .elements = 0};
  redisReply *three[] = {&id, &zero, &empty};
  redisReply adopt = {
      .type = REDIS_REPLY_ARRAY, .elements = 3, .element = three};
  delivery_on_reply(&f->d, f->tags[f->next_reply++], &adopt);
}

/* An /incr answered 200 by its route, taken by the commit. */
static struct http_response take(struct fixture *f) {
  struct http_response resp = {.status = 200, .body = "ok\n", .body_len = 3};
  commit_take(&f->cm, &resp, NULL, 0);
  return resp;
}

/* The loop runs one turn (the lease timer keeps it alive). */
static void turn(struct fixture *f) { uv_run(&f->loop, UV_RUN_NOWAIT); }

static void test_commit_holds_a_turn_under_one_ticket(void **state) {
  struct fixture *f = *state;
  ready(f);
  struct http_response a = take(f), b = take(f), c = take(f);
  assert_true(a.held && b.held && c.held);
  assert_int_equal(a.ticket, b.ticket);
  assert_int_equal(b.ticket, c.ticket);
  assert_int_equal(f->nsent, 2); /* nothing before the turn's end */
  assert_int_equal(commit_holding(&f->cm), 3);
  turn(f);
  assert_int_equal(f->nsent, 3);
  assert_int_equal(f->write_n[2], 3); /* one write for the three */
  assert_int_equal(f->nfills, 0);
  assert_int_equal(commit_holding(&f->cm), 3);
  reply_int(f, 1);
  assert_int_equal(f->nfills, 1);
  assert_int_equal(f->fills[0].ticket, a.ticket);
  assert_int_equal(f->fills[0].n, 3);
  assert_true(f->fills[0].held);
  assert_int_equal(f->fills[0].status, 200);
  assert_int_equal(commit_holding(&f->cm), 0);
  assert_int_equal(f->q.pending, 3); /* the journal holds them */
}

static void test_commit_turns_during_a_write_join_the_next(void **state) {
  struct fixture *f = *state;
  ready(f);
  struct http_response first = take(f);
  turn(f);
  assert_int_equal(f->nsent, 3);
  struct http_response second = take(f);
  turn(f);
  struct http_response third = take(f);
  take(f);
  turn(f);
  assert_int_equal(f->nsent, 3); /* one write in flight at a time */
  assert_int_not_equal(second.ticket, first.ticket);
  assert_int_equal(third.ticket, second.ticket);
  assert_int_equal(commit_holding(&f->cm), 4);
  reply_int(f, 1);
  assert_int_equal(f->nfills, 1);
  assert_int_equal(f->fills[0].ticket, first.ticket);
  turn(f);
  assert_int_equal(f->nsent, 4);
  assert_int_equal(f->write_n[3], 3); /* the two turns, one write */
  reply_int(f, 1);
  assert_int_equal(f->nfills, 2);
  assert_int_equal(f->fills[1].ticket, second.ticket);
  assert_int_equal(f->fills[1].n, 3);
}

static void test_commit_answers_503_at_once_with_no_connection(void **state) {
  struct fixture *f = *state;
  struct http_response resp = take(f);
  assert_false(resp.held);
  assert_int_equal(resp.status, 503);
  assert_string_equal(resp.extra_headers, "Retry-After: 1\r\n");
  assert_int_equal(commit_holding(&f->cm), 0);
  assert_int_equal(f->nsent, 0);
}

static void test_commit_answers_503_when_the_write_is_refused(void **state) {
  struct fixture *f = *state;
  ready(f);
  struct http_response resp = take(f);
  turn(f);
  reply_int(f, 0); /* fenced off: not in the journal */
  assert_int_equal(f->nfills, 1);
  assert_int_equal(f->fills[0].ticket, resp.ticket);
  assert_false(f->fills[0].held);
  assert_int_equal(f->fills[0].status, 503);
  assert_int_equal(f->q.pending, 0);
}

static void
test_commit_answers_503_when_the_connection_is_gone_at_the_turn(void **state) {
  struct fixture *f = *state;
  ready(f);
  struct http_response resp = take(f);
  delivery_on_down(&f->d);
  turn(f);
  assert_int_equal(f->nfills, 1);
  assert_int_equal(f->fills[0].ticket, resp.ticket);
  assert_false(f->fills[0].held);
}

/* An /incr with an Idempotency-Key. */
static struct http_response take_keyed(struct fixture *f, const char *key) {
  struct http_response resp = {.status = 200, .body = "ok\n", .body_len = 3};
  commit_take(&f->cm, &resp, key, strlen(key));
  return resp;
}

static void
test_commit_keys_ride_with_the_write_each_answered_alone(void **state) {
  struct fixture *f = *state;
  ready(f);
  struct http_response plain = take(f), k1 = take_keyed(f, "k1"),
                       k2 = take_keyed(f, "k2"), again = take_keyed(f, "k1");
  assert_true(plain.held && k1.held && k2.held);
  /* The same key in the open turn: still in progress here. */
  assert_false(again.held);
  assert_int_equal(again.status, 409);
  assert_true(plain.ticket != k1.ticket && k1.ticket != k2.ticket);
  turn(f);
  assert_int_equal(f->write_n[2], 3);
  /* ... and while its write is in flight. */
  assert_int_equal(take_keyed(f, "k2").status, 409);
  assert_int_equal(commit_holding(&f->cm), 3);
  /* Redis: k1 counted now, k2 counted before (a replay). */
  redisReply one = {.type = REDIS_REPLY_INTEGER, .integer = 1};
  redisReply zero = {.type = REDIS_REPLY_INTEGER, .integer = 0};
  redisReply flags = {.type = REDIS_REPLY_STRING, .str = "01", .len = 2};
  redisReply *three[] = {&one, &zero, &flags};
  redisReply r = {.type = REDIS_REPLY_ARRAY, .elements = 3, .element = three};
  delivery_on_reply(&f->d, f->tags[f->next_reply++], &r);
  assert_int_equal(f->nfills, 3);
  assert_int_equal(f->fills[0].ticket, plain.ticket);
  assert_int_equal(f->fills[0].n, 1);
  assert_int_equal(f->fills[1].ticket, k1.ticket);
  assert_true(f->fills[1].n == 1 && !f->fills[1].replayed);
  assert_int_equal(f->fills[2].ticket, k2.ticket);
  assert_true(f->fills[2].n == 0 && f->fills[2].replayed);
  assert_int_equal(f->fills[2].status, 200);
  assert_int_equal(f->q.pending, 2); /* the journal holds two */
  /* Answered: the key is free here again (Redis says what it is). */
  assert_true(take_keyed(f, "k2").held);
}

static void test_commit_keys_of_a_refused_write_are_503(void **state) {
  struct fixture *f = *state;
  ready(f);
  struct http_response k = take_keyed(f, "k");
  turn(f);
  redisReply err = {.type = REDIS_REPLY_ERROR, .str = "WRONGTYPE x", .len = 11};
  delivery_on_reply(&f->d, f->tags[f->next_reply++], &err);
  assert_int_equal(f->nfills, 1);
  assert_int_equal(f->fills[0].ticket, k.ticket);
  assert_int_equal(f->fills[0].status, 503);
  assert_int_equal(f->q.pending, 0);
  assert_true(take_keyed(f, "k").held); /* free to be tried again */
}

#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      TEST(test_commit_holds_a_turn_under_one_ticket),
      TEST(test_commit_turns_during_a_write_join_the_next),
      TEST(test_commit_answers_503_at_once_with_no_connection),
      TEST(test_commit_answers_503_when_the_write_is_refused),
      TEST(test_commit_answers_503_when_the_connection_is_gone_at_the_turn),
      TEST(test_commit_keys_ride_with_the_write_each_answered_alone),
      TEST(test_commit_keys_of_a_refused_write_are_503),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
