/* incr_queue: deadline order, runs, the ring's growth, and the timer on a
 * real loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "incr/incr_queue.h"

#define MAX_FIRES 8

struct fires {
  int calls;
  uint64_t n[MAX_FIRES];
  uint64_t at[MAX_FIRES];
  int closed;
};

/* A queue on a real loop, with a record of what its timer did. */
struct timed {
  uv_loop_t loop;
  struct incr_queue q;
  struct fires f;
};

/* The owner of q, as every owner finds itself from its queue's callback. */
static struct fires *fires_of(struct incr_queue *q) {
  return &container_of(q, struct timed, q)->f;
}

static void on_due(struct incr_queue *q, uint64_t now) {
  struct fires *f = fires_of(q);
  assert_true(f->calls < MAX_FIRES);
  assert_int_equal(now, uv_now(q->loop));
  f->n[f->calls] = incr_queue_pop_due(q, now);
  assert_true(f->n[f->calls] > 0); /* it fires only when something is due */
  f->at[f->calls] = now;
  f->calls++;
}

static void on_closed(struct incr_queue *q) { fires_of(q)->closed++; }

static int setup_timed(void **state) {
  struct timed *t = calloc(1, sizeof *t);
  assert_non_null(t);
  assert_int_equal(uv_loop_init(&t->loop), 0);
  assert_int_equal(incr_queue_init(&t->q, &t->loop, on_due), 0);
  *state = t;
  return 0;
}

/* Closes the queue (a test may have done so already) and asserts that
 * nothing is left on the loop. */
static int teardown_timed(void **state) {
  struct timed *t = *state;
  incr_queue_close(&t->q, NULL);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&t->loop), 0);
  free(t);
  return 0;
}

/* A queue whose timer is never run: push and pop only. */
static int setup_queue(void **state) {
  void *t;
  setup_timed(&t);
  *state = &((struct timed *)t)->q;
  return 0;
}

static int teardown_queue(void **state) {
  struct timed *t = container_of(*state, struct timed, q);
  *state = t;
  return teardown_timed(state);
}

/* How many increments the test pushes at deadline d, so that runs of
 * different sizes cannot be confused with each other. */
static uint64_t count_at(uint64_t d) { return d % 3 + 1; }

static void push_run(struct incr_queue *q, uint64_t deadline) {
  for (uint64_t i = 0; i < count_at(deadline); i++)
    assert_int_equal(incr_queue_push(q, deadline), 0);
}

static void test_queue_run_fits_in_8_bytes(void **state) {
  (void)state;
  assert_true(sizeof(struct incr_run) <= 8);
}

static void test_queue_deadlines_cross_2_to_the_32_ms(void **state) {
  struct incr_queue *q = *state;
  /* uv_now passes 2^32 ms after 49.7 days: a run keeps only the low bits. */
  const uint64_t wrap = UINT64_C(1) << 32;
  for (uint64_t d = wrap - 3; d <= wrap + 3; d++) {
    assert_int_equal(incr_queue_push(q, d), 0);
    assert_int_equal(incr_queue_push(q, d), 0);
  }
  assert_int_equal(q->len, 7);
  for (uint64_t d = wrap - 3; d <= wrap + 3; d++) {
    assert_int_equal(incr_queue_next_deadline(q), d);
    assert_int_equal(incr_queue_pop_due(q, d - 1), 0);
    assert_int_equal(incr_queue_pop_due(q, d), 2);
  }
  assert_int_equal(q->pending, 0);
  assert_int_equal(incr_queue_next_deadline(q), UINT64_MAX);
}

static void test_queue_starts_empty(void **state) {
  struct incr_queue *q = *state;
  assert_int_equal(q->pending, 0);
  assert_int_equal(incr_queue_pop_due(q, UINT64_MAX), 0);
  assert_int_equal(q->pending, 0);
}

static void test_queue_pops_due_in_deadline_order(void **state) {
  struct incr_queue *q = *state;
  assert_int_equal(incr_queue_push(q, 10), 0);
  assert_int_equal(incr_queue_push(q, 20), 0);
  assert_int_equal(incr_queue_push(q, 30), 0);
  assert_int_equal(q->pending, 3);
  assert_int_equal(incr_queue_next_deadline(q), 10);

  assert_int_equal(incr_queue_pop_due(q, 15), 1);
  assert_int_equal(q->pending, 2);
  assert_int_equal(incr_queue_next_deadline(q), 20);

  assert_int_equal(incr_queue_pop_due(q, 30), 2);
  assert_int_equal(q->pending, 0);
}

static void test_queue_merges_equal_deadlines_into_one_run(void **state) {
  struct incr_queue *q = *state;
  for (int i = 0; i < 1000; i++)
    assert_int_equal(incr_queue_push(q, 100), 0);
  assert_int_equal(incr_queue_push(q, 101), 0);
  assert_int_equal(incr_queue_push(q, 101), 0);
  assert_int_equal(q->pending, 1002);
  /* 1002 increments in two runs: memory does not grow per increment. */
  assert_int_equal(q->len, 2);
  assert_int_equal(q->runs[q->head].deadline, 100);
  assert_int_equal(q->runs[q->head].count, 1000);

  assert_int_equal(incr_queue_pop_due(q, 100), 1000);
  assert_int_equal(q->pending, 2);
  assert_int_equal(incr_queue_next_deadline(q), 101);
  assert_int_equal(incr_queue_pop_due(q, 101), 2);
  assert_int_equal(q->len, 0);
}

static void test_queue_pops_exactly_due_but_not_yet_due(void **state) {
  struct incr_queue *q = *state;
  assert_int_equal(incr_queue_push(q, 500), 0);
  assert_int_equal(incr_queue_push(q, 501), 0);
  assert_int_equal(incr_queue_pop_due(q, 0), 0);
  assert_int_equal(incr_queue_pop_due(q, 499), 0);
  assert_int_equal(q->pending, 2);
  assert_int_equal(incr_queue_pop_due(q, 500), 1);
  assert_int_equal(q->pending, 1);
  assert_int_equal(incr_queue_pop_due(q, 500), 0);
  assert_int_equal(incr_queue_next_deadline(q), 501);
  assert_int_equal(incr_queue_pop_due(q, 501), 1);
  assert_int_equal(q->pending, 0);
}

static void test_queue_next_deadline_is_the_earliest(void **state) {
  struct incr_queue *q = *state;
  assert_int_equal(incr_queue_push(q, 7), 0);
  assert_int_equal(incr_queue_next_deadline(q), 7);
  assert_int_equal(incr_queue_push(q, 9), 0);
  assert_int_equal(incr_queue_next_deadline(q), 7);
  assert_int_equal(incr_queue_pop_due(q, 8), 1);
  assert_int_equal(incr_queue_next_deadline(q), 9);
}

/* Pops d, d+1, ... last one millisecond at a time, checking that each run
 * comes out whole and in order. */
static void expect_runs(struct incr_queue *q, uint64_t first, uint64_t last) {
  uint64_t left = q->pending;
  for (uint64_t d = first; d <= last; d++) {
    assert_int_equal(incr_queue_next_deadline(q), d);
    assert_int_equal(incr_queue_pop_due(q, d - 1), 0);
    assert_int_equal(incr_queue_pop_due(q, d), count_at(d));
    left -= count_at(d);
    assert_int_equal(q->pending, left);
  }
  assert_int_equal(q->pending, 0);
  assert_int_equal(q->len, 0);
}

static void test_queue_grows_past_initial_capacity(void **state) {
  struct incr_queue *q = *state;
  uint64_t initial = q->cap;
  uint64_t pushed = 0;
  for (uint64_t d = 1; d <= 5 * initial; d++) {
    push_run(q, d);
    pushed += count_at(d);
  }
  assert_true(q->cap >= 5 * initial);
  assert_int_equal(q->len, 5 * initial);
  assert_int_equal(q->pending, pushed);
  expect_runs(q, 1, 5 * initial);
}

static void test_queue_grows_when_ring_has_wrapped(void **state) {
  struct incr_queue *q = *state;
  uint64_t cap = q->cap;
  uint64_t d = 1;
  /* Fill the ring, then free its first 40 slots. */
  for (; d <= cap; d++)
    push_run(q, d);
  assert_int_equal(q->cap, cap);
  uint64_t popped = 0;
  for (uint64_t i = 1; i <= 40; i++)
    popped += count_at(i);
  assert_int_equal(incr_queue_pop_due(q, 40), popped);
  assert_int_equal(q->head, 40);
  /* Refill: the new runs wrap around to the front of the buffer. */
  for (; d <= cap + 40; d++)
    push_run(q, d);
  assert_int_equal(q->cap, cap);
  assert_int_equal(q->len, cap);
  assert_true(q->head + q->len > q->cap);
  /* One more run grows the ring while it is wrapped, then again. */
  for (; d <= 3 * cap + 40; d++)
    push_run(q, d);
  assert_true(q->cap >= 3 * cap);
  assert_int_equal(q->len, 3 * cap);
  expect_runs(q, 41, 3 * cap + 40);
}

static void test_queue_keeps_order_across_many_wraps(void **state) {
  struct incr_queue *q = *state;
  /* A steady state: push ahead, pop behind, the ring wraps many times. */
  uint64_t next_push = 1;
  uint64_t next_pop = 1;
  for (int round = 0; round < 50; round++) {
    for (int i = 0; i < 37; i++)
      push_run(q, next_push++);
    for (int i = 0; i < 30; i++) {
      assert_int_equal(incr_queue_next_deadline(q), next_pop);
      assert_int_equal(incr_queue_pop_due(q, next_pop), count_at(next_pop));
      next_pop++;
    }
  }
  expect_runs(q, next_pop, next_push - 1);
}

static void test_queue_clear_returns_pending_and_empties(void **state) {
  struct incr_queue *q = *state;
  push_run(q, 10);
  push_run(q, 11);
  push_run(q, 12);
  uint64_t n = count_at(10) + count_at(11) + count_at(12);
  assert_int_equal(q->pending, n);
  assert_int_equal(incr_queue_clear(q), n);
  assert_int_equal(q->pending, 0);
  assert_int_equal(incr_queue_pop_due(q, UINT64_MAX), 0);
  assert_int_equal(incr_queue_clear(q), 0);
  /* Still usable afterwards. */
  assert_int_equal(incr_queue_push(q, 20), 0);
  assert_int_equal(incr_queue_next_deadline(q), 20);
  assert_int_equal(incr_queue_pop_due(q, 20), 1);
}

static void test_queue_pending_counts_every_increment(void **state) {
  struct incr_queue *q = *state;
  uint64_t n = 0;
  for (uint64_t d = 1; d <= 200; d++) {
    push_run(q, d);
    n += count_at(d);
    assert_int_equal(q->pending, n);
  }
  for (uint64_t d = 1; d <= 200; d += 10) {
    uint64_t expected = 0;
    for (uint64_t i = d; i < d + 10; i++)
      expected += count_at(i);
    assert_int_equal(incr_queue_pop_due(q, d + 9), expected);
    n -= expected;
    assert_int_equal(q->pending, n);
  }
  assert_int_equal(n, 0);
}

/* ---- The timer, on a real loop ---------------------------------------- */

static void test_queue_timer_fires_on_due_at_each_deadline(void **state) {
  struct timed *t = *state;

  uint64_t start = uv_now(&t->loop);
  for (int i = 0; i < 3; i++)
    assert_int_equal(incr_queue_push(&t->q, start + 30), 0);
  assert_int_equal(incr_queue_push(&t->q, start + 60), 0);
  assert_int_equal(incr_queue_push(&t->q, start + 60), 0);
  /* The timer is the only thing keeping the loop alive; once the queue is
   * empty it stops and uv_run returns. */
  uv_run(&t->loop, UV_RUN_DEFAULT);

  assert_int_equal(t->f.calls, 2);
  assert_int_equal(t->f.n[0], 3);
  assert_true(t->f.at[0] >= start + 30);
  assert_true(t->f.at[0] < start + 30 + 2000);
  assert_int_equal(t->f.n[1], 2);
  assert_true(t->f.at[1] >= start + 60);
  assert_true(t->f.at[1] < start + 60 + 2000);
  assert_int_equal(t->q.pending, 0);
  assert_false(uv_is_active((uv_handle_t *)&t->q.timer));

  incr_queue_close(&t->q, on_closed);
  assert_int_equal(t->f.closed, 0);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  assert_int_equal(t->f.closed, 1);
  assert_null(t->q.runs);
}

static void test_queue_timer_rearms_when_pushed_after_draining(void **state) {
  struct timed *t = *state;

  assert_int_equal(incr_queue_push(&t->q, uv_now(&t->loop) + 10), 0);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  assert_int_equal(t->f.calls, 1);
  assert_int_equal(t->f.n[0], 1);

  uv_update_time(&t->loop);
  uint64_t again = uv_now(&t->loop) + 10;
  assert_int_equal(incr_queue_push(&t->q, again), 0);
  assert_int_equal(incr_queue_push(&t->q, again), 0);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  assert_int_equal(t->f.calls, 2);
  assert_int_equal(t->f.n[1], 2);
  assert_true(t->f.at[1] >= again);
}

static void test_queue_close_discards_pending_and_frees_the_loop(void **state) {
  struct timed *t = *state;

  for (uint64_t d = 1; d <= 100; d++)
    assert_int_equal(incr_queue_push(&t->q, uv_now(&t->loop) + 1000 + d), 0);
  incr_queue_close(&t->q, on_closed);
  assert_int_equal(t->q.pending, 0);
  /* Closing twice is harmless. */
  incr_queue_close(&t->q, on_closed);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  assert_int_equal(t->f.calls, 0);
  assert_int_equal(t->f.closed, 1);
}

static void test_queue_clear_stops_the_timer(void **state) {
  struct timed *t = *state;

  assert_int_equal(incr_queue_push(&t->q, uv_now(&t->loop) + 5), 0);
  assert_true(uv_is_active((uv_handle_t *)&t->q.timer));
  assert_int_equal(incr_queue_clear(&t->q), 1);
  /* Nothing is armed: the loop has nothing to wait for. */
  assert_false(uv_is_active((uv_handle_t *)&t->q.timer));
  assert_int_equal(uv_run(&t->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(t->f.calls, 0);
}

static void test_queue_pop_run_gives_each_deadline_and_count(void **state) {
  struct incr_queue *q = *state;
  push_run(q, 10);
  push_run(q, 12);
  uint64_t d, n;
  assert_false(incr_queue_pop_run(q, 9, &d, &n));
  assert_true(incr_queue_pop_run(q, 12, &d, &n));
  assert_int_equal(d, 10);
  assert_int_equal(n, count_at(10));
  assert_true(incr_queue_pop_run(q, 12, &d, &n));
  assert_int_equal(d, 12);
  assert_int_equal(n, count_at(12));
  assert_false(incr_queue_pop_run(q, 1000, &d, &n));
  assert_int_equal(q->pending, 0);
}

static void test_queue_add_in_order_joins_or_opens_a_run(void **state) {
  struct incr_queue *q = *state;
  assert_int_equal(incr_queue_add(q, 100, 40), 0);
  assert_int_equal(incr_queue_add(q, 100, 2), 0);
  assert_int_equal(incr_queue_add(q, 105, 7), 0);
  assert_int_equal(q->len, 2);
  assert_int_equal(q->pending, 49);
  uint64_t d, n;
  assert_true(incr_queue_pop_run(q, 200, &d, &n));
  assert_int_equal(d, 100);
  assert_int_equal(n, 42);
}

static void test_queue_add_out_of_order_keeps_deadline_order(void **state) {
  struct incr_queue *q = *state;
  /* A wrapped ring, so the rebuild has to follow head around. */
  for (uint64_t d = 1; d <= 60; d++)
    push_run(q, d);
  incr_queue_pop_due(q, 50);
  for (uint64_t d = 61; d <= 100; d++)
    push_run(q, d);
  assert_int_equal(incr_queue_add(q, 70, 1000), 0); /* joins run 70 */
  assert_int_equal(incr_queue_add(q, 3, 5), 0);     /* past due: first */
  assert_int_equal(incr_queue_add(q, 99, 0), 0);    /* nothing */
  uint64_t expect_pending = 5 + 1000;
  for (uint64_t d = 51; d <= 100; d++)
    expect_pending += count_at(d);
  assert_int_equal(q->pending, expect_pending);
  uint64_t d, n, prev = 0, total = 0;
  while (incr_queue_pop_run(q, UINT64_MAX - 1, &d, &n)) {
    assert_true(d >= prev);
    if (d == 3)
      assert_int_equal(n, 5);
    if (d == 70)
      assert_int_equal(n, count_at(70) + 1000);
    prev = d;
    total += n;
  }
  assert_int_equal(total, expect_pending);
  assert_int_equal(q->pending, 0);
}

#define QUEUE_TEST(f)                                                          \
  cmocka_unit_test_setup_teardown(f, setup_queue, teardown_queue)
#define TIMED_TEST(f)                                                          \
  cmocka_unit_test_setup_teardown(f, setup_timed, teardown_timed)

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_queue_run_fits_in_8_bytes),
      QUEUE_TEST(test_queue_deadlines_cross_2_to_the_32_ms),
      QUEUE_TEST(test_queue_starts_empty),
      QUEUE_TEST(test_queue_pops_due_in_deadline_order),
      QUEUE_TEST(test_queue_merges_equal_deadlines_into_one_run),
      QUEUE_TEST(test_queue_pops_exactly_due_but_not_yet_due),
      QUEUE_TEST(test_queue_next_deadline_is_the_earliest),
      QUEUE_TEST(test_queue_grows_past_initial_capacity),
      QUEUE_TEST(test_queue_grows_when_ring_has_wrapped),
      QUEUE_TEST(test_queue_keeps_order_across_many_wraps),
      QUEUE_TEST(test_queue_clear_returns_pending_and_empties),
      QUEUE_TEST(test_queue_pending_counts_every_increment),
      QUEUE_TEST(test_queue_pop_run_gives_each_deadline_and_count),
      QUEUE_TEST(test_queue_add_in_order_joins_or_opens_a_run),
      QUEUE_TEST(test_queue_add_out_of_order_keeps_deadline_order),
      TIMED_TEST(test_queue_timer_fires_on_due_at_each_deadline),
      TIMED_TEST(test_queue_timer_rearms_when_pushed_after_draining),
      TIMED_TEST(test_queue_close_discards_pending_and_frees_the_loop),
      TIMED_TEST(test_queue_clear_stops_the_timer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
