/* The connection lifecycle: every event in every state (with and without
 * the client's FIN), against a table of the expected next state and
 * effects. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>

#include "http/conn.h"

struct step {
  enum conn_state from;
  bool peer_eof;
  enum conn_event event;
  enum conn_state to;
  unsigned effects;
};

#define R CONN_READING
#define W CONN_WRITING
#define WH CONN_WRITING_HELD
#define WF CONN_WRITING_FILLED
#define H CONN_HOLDING
#define S CONN_SHUTTING
#define L CONN_LINGERING
#define C CONN_CLOSING

/* Every pair (state, event) that changes anything. The test below checks
 * that every pair not listed changes nothing. */
static const struct step steps[] = {
    {R, false, CONN_WRITE_BLOCKED, W,
     CONN_DO_STOP_READING | CONN_DO_WATCH_WRITE},
    {R, false, CONN_LAST_QUEUED, S,
     CONN_DO_DISCARD | CONN_DO_SHUTDOWN | CONN_DO_WATCH_WRITE},
    {R, false, CONN_PEER_EOF, S,
     CONN_DO_STOP_READING | CONN_DO_SHUTDOWN | CONN_DO_WATCH_WRITE},
    {R, false, CONN_FAILED, C, CONN_DO_CLOSE},
    {R, false, CONN_HELD, H, CONN_DO_READ},
    {R, true, CONN_HELD, H, CONN_DO_NOTHING},
    {H, false, CONN_FILLED, R, CONN_DO_QUEUE_FILLED | CONN_DO_PROCESS},
    {H, false, CONN_PEER_EOF, H, CONN_DO_STOP_READING},
    {H, false, CONN_FAILED, C, CONN_DO_CLOSE},
    {W, false, CONN_WRITE_DONE, R, CONN_DO_PROCESS},
    {W, false, CONN_LAST_QUEUED, S, CONN_DO_DISCARD | CONN_DO_SHUTDOWN},
    {W, false, CONN_HELD, WH, CONN_DO_NOTHING},
    {W, false, CONN_EXPIRED, C, CONN_DO_CLOSE},
    {W, false, CONN_FAILED, C, CONN_DO_CLOSE},
    {WH, false, CONN_WRITE_DONE, H, CONN_DO_READ},
    {WH, true, CONN_WRITE_DONE, H, CONN_DO_NOTHING},
    {WH, false, CONN_FILLED, WF, CONN_DO_NOTHING},
    {WH, false, CONN_EXPIRED, C, CONN_DO_CLOSE},
    {WH, false, CONN_FAILED, C, CONN_DO_CLOSE},
    {WF, false, CONN_WRITE_DONE, R, CONN_DO_QUEUE_FILLED | CONN_DO_PROCESS},
    {WF, false, CONN_EXPIRED, C, CONN_DO_CLOSE},
    {WF, false, CONN_FAILED, C, CONN_DO_CLOSE},
    {S, false, CONN_PEER_EOF, S, CONN_DO_STOP_READING},
    {S, false, CONN_SHUTDOWN_DONE, L, CONN_DO_LINGER},
    {S, true, CONN_SHUTDOWN_DONE, C, CONN_DO_CLOSE},
    {S, false, CONN_EXPIRED, C, CONN_DO_CLOSE},
    {S, false, CONN_FAILED, C, CONN_DO_CLOSE},
    {L, false, CONN_PEER_EOF, C, CONN_DO_CLOSE},
    {L, false, CONN_EXPIRED, C, CONN_DO_CLOSE},
    {L, false, CONN_FAILED, C, CONN_DO_CLOSE},
};

/* The step for (s, eof, e): the entry for that peer_eof if there is one,
 * else the one without (the client's FIN changes only where it is listed). */
static const struct step *find(enum conn_state s, bool eof, enum conn_event e) {
  const struct step *fallback = NULL;
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    if (steps[i].from != s || steps[i].event != e)
      continue;
    if (steps[i].peer_eof == eof)
      return &steps[i];
    if (!steps[i].peer_eof)
      fallback = &steps[i];
  }
  return fallback;
}

static void test_conn_starts_reading(void **state) {
  (void)state;
  struct conn_life l;
  conn_life_init(&l);
  assert_int_equal(l.state, CONN_READING);
  assert_false(l.peer_eof);
}

static void test_conn_every_event_in_every_state(void **state) {
  (void)state;
  for (int s = 0; s < CONN_STATE_COUNT; s++) {
    for (int eof = 0; eof <= 1; eof++) {
      for (int e = 0; e < CONN_EVENT_COUNT; e++) {
        struct conn_life l = {(enum conn_state)s, eof};
        unsigned got = conn_step(&l, (enum conn_event)e);
        const struct step *want =
            find((enum conn_state)s, eof, (enum conn_event)e);
        if (!want) {
          if (got != CONN_DO_NOTHING || l.state != (enum conn_state)s)
            fail_msg("%s + event %d should change nothing, went to %s (%#x)",
                     conn_state_name((enum conn_state)s), e,
                     conn_state_name(l.state), got);
          continue;
        }
        if (l.state != want->to || got != want->effects)
          fail_msg("%s%s + event %d: %s (%#x), expected %s (%#x)",
                   conn_state_name((enum conn_state)s),
                   eof ? " (peer eof)" : "", e, conn_state_name(l.state), got,
                   conn_state_name(want->to), want->effects);
      }
    }
  }
}

static void test_conn_closing_ignores_everything(void **state) {
  (void)state;
  for (int e = 0; e < CONN_EVENT_COUNT; e++) {
    struct conn_life l = {CONN_CLOSING, false};
    assert_int_equal(conn_step(&l, (enum conn_event)e), CONN_DO_NOTHING);
    assert_int_equal(l.state, CONN_CLOSING);
  }
}

static void
test_conn_keeps_reading_until_the_peer_fin_after_the_last(void **state) {
  (void)state;
  /* The reset of a stalled write: the last response goes out behind a
   * pending write, and the connection must read again (discarding) so the
   * client's FIN and later bytes are taken, never left to cause a reset. */
  struct conn_life l;
  conn_life_init(&l);
  assert_int_equal(conn_step(&l, CONN_WRITE_BLOCKED),
                   CONN_DO_STOP_READING | CONN_DO_WATCH_WRITE);
  unsigned fx = conn_step(&l, CONN_LAST_QUEUED);
  assert_true(fx & CONN_DO_DISCARD);
  assert_true(fx & CONN_DO_SHUTDOWN);
  assert_false(fx & CONN_DO_CLOSE);
  assert_int_equal(conn_step(&l, CONN_WRITE_DONE), CONN_DO_NOTHING);
  assert_int_equal(conn_step(&l, CONN_SHUTDOWN_DONE), CONN_DO_LINGER);
  assert_int_equal(l.state, CONN_LINGERING);
  assert_int_equal(conn_step(&l, CONN_PEER_EOF), CONN_DO_CLOSE);
  assert_int_equal(l.state, CONN_CLOSING);
}

static void test_conn_peer_fin_first_closes_once_our_fin_is_out(void **state) {
  (void)state;
  struct conn_life l;
  conn_life_init(&l);
  conn_step(&l, CONN_PEER_EOF);
  assert_int_equal(l.state, CONN_SHUTTING);
  assert_true(l.peer_eof);
  assert_int_equal(conn_step(&l, CONN_SHUTDOWN_DONE), CONN_DO_CLOSE);
}

static void
test_conn_peer_fin_while_holding_is_kept_for_after_the_answer(void **state) {
  (void)state;
  /* A client that sends its request and its FIN at once still gets the
   * held response, and then ours. */
  struct conn_life l;
  conn_life_init(&l);
  assert_int_equal(conn_step(&l, CONN_HELD), CONN_DO_READ);
  assert_int_equal(conn_step(&l, CONN_PEER_EOF), CONN_DO_STOP_READING);
  assert_int_equal(l.state, CONN_HOLDING);
  assert_int_equal(conn_step(&l, CONN_FILLED),
                   CONN_DO_QUEUE_FILLED | CONN_DO_PROCESS);
  assert_int_equal(l.state, CONN_READING);
  assert_true(l.peer_eof);
  /* A second held request in the buffer: no reading after the FIN. */
  assert_int_equal(conn_step(&l, CONN_HELD), CONN_DO_NOTHING);
  assert_int_equal(conn_step(&l, CONN_FILLED),
                   CONN_DO_QUEUE_FILLED | CONN_DO_PROCESS);
  /* The buffer used up: the FIN is taken as it would have been. */
  unsigned fx = conn_step(&l, CONN_PEER_EOF);
  assert_int_equal(l.state, CONN_SHUTTING);
  assert_true(fx & CONN_DO_SHUTDOWN);
}

static void
test_conn_held_behind_a_write_holds_once_the_write_is_done(void **state) {
  (void)state;
  /* The response before the held one is still going out: the hold, and
   * reading ahead, begin only once it has. */
  struct conn_life l;
  conn_life_init(&l);
  conn_step(&l, CONN_WRITE_BLOCKED);
  assert_int_equal(conn_step(&l, CONN_HELD), CONN_DO_NOTHING);
  assert_int_equal(l.state, CONN_WRITING_HELD);
  assert_true(conn_holds(&l));
  assert_int_equal(conn_step(&l, CONN_WRITE_DONE), CONN_DO_READ);
  assert_int_equal(l.state, CONN_HOLDING);
  assert_true(conn_holds(&l));
  assert_int_equal(conn_step(&l, CONN_FILLED),
                   CONN_DO_QUEUE_FILLED | CONN_DO_PROCESS);
  assert_false(conn_holds(&l));
}

static void
test_conn_filled_behind_a_write_is_queued_once_the_write_is_done(void **state) {
  (void)state;
  struct conn_life l;
  conn_life_init(&l);
  conn_step(&l, CONN_WRITE_BLOCKED);
  conn_step(&l, CONN_HELD);
  assert_int_equal(conn_step(&l, CONN_FILLED), CONN_DO_NOTHING);
  assert_int_equal(l.state, CONN_WRITING_FILLED);
  assert_false(conn_holds(&l));
  /* Queued before anything after it in the buffer is parsed. */
  assert_int_equal(conn_step(&l, CONN_WRITE_DONE),
                   CONN_DO_QUEUE_FILLED | CONN_DO_PROCESS);
  assert_int_equal(l.state, CONN_READING);
}

static void test_conn_holds_only_in_holding_and_writing_held(void **state) {
  (void)state;
  for (int s = 0; s < CONN_STATE_COUNT; s++) {
    struct conn_life l = {(enum conn_state)s, false};
    assert_int_equal(conn_holds(&l),
                     s == CONN_HOLDING || s == CONN_WRITING_HELD);
  }
}

static void test_conn_state_names(void **state) {
  (void)state;
  assert_string_equal(conn_state_name(CONN_READING), "reading");
  assert_string_equal(conn_state_name(CONN_WRITING), "writing");
  assert_string_equal(conn_state_name(CONN_WRITING_HELD), "writing held");
  assert_string_equal(conn_state_name(CONN_WRITING_FILLED), "writing filled");
  assert_string_equal(conn_state_name(CONN_HOLDING), "holding");
  assert_string_equal(conn_state_name(CONN_SHUTTING), "shutting");
  assert_string_equal(conn_state_name(CONN_LINGERING), "lingering");
  assert_string_equal(conn_state_name(CONN_CLOSING), "closing");
  assert_string_equal(conn_state_name(CONN_STATE_COUNT), "?");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_conn_starts_reading),
      cmocka_unit_test(test_conn_every_event_in_every_state),
      cmocka_unit_test(test_conn_closing_ignores_everything),
      cmocka_unit_test(
          test_conn_keeps_reading_until_the_peer_fin_after_the_last),
      cmocka_unit_test(test_conn_peer_fin_first_closes_once_our_fin_is_out),
      cmocka_unit_test(
          test_conn_peer_fin_while_holding_is_kept_for_after_the_answer),
      cmocka_unit_test(
          test_conn_held_behind_a_write_holds_once_the_write_is_done),
      cmocka_unit_test(
          test_conn_filled_behind_a_write_is_queued_once_the_write_is_done),
      cmocka_unit_test(test_conn_holds_only_in_holding_and_writing_held),
      cmocka_unit_test(test_conn_state_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
