/* The shutdown state machine: every transition, the deadline, how long each
 * phase lasted and the exit status. Times start at 1000 (0 means "never
 * entered"). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "shutdown.h"

#define T0 1000
#define DELAY 5000
#define TIMEOUT 25000

static struct shutdown s;

static void start(uint64_t delay_ms) {
  shutdown_init(&s, delay_ms, TIMEOUT, T0);
  assert_int_equal(s.phase, PHASE_RUNNING);
  assert_int_equal(s.reason, REASON_NONE);
}

/* Brings a fresh machine (with a delay) to phase p, one event per second. */
static void reach(enum shutdown_phase p) {
  start(DELAY);
  if (p >= PHASE_DELAYING)
    assert_int_equal(shutdown_signal(&s, T0 + 1000), PHASE_DELAYING);
  if (p >= PHASE_DRAINING)
    assert_int_equal(shutdown_delay_elapsed(&s, T0 + 2000), PHASE_DRAINING);
  if (p >= PHASE_FLUSHING)
    assert_int_equal(shutdown_connections_closed(&s, T0 + 3000),
                     PHASE_FLUSHING);
  if (p >= PHASE_DONE)
    assert_int_equal(shutdown_flushed(&s, T0 + 4000), PHASE_DONE);
  assert_int_equal(s.phase, p);
}

/* ---- Transitions -------------------------------------------------------- */

static void test_shutdown_starts_running(void **state) {
  (void)state;
  start(DELAY);
  assert_int_equal(s.entered[PHASE_RUNNING], T0);
  for (int p = PHASE_DELAYING; p < PHASE_COUNT; p++)
    assert_int_equal(s.entered[p], 0);
  assert_int_equal(s.signals, 0);
}

static void test_shutdown_signal_with_delay_enters_delaying(void **state) {
  (void)state;
  start(DELAY);
  assert_int_equal(shutdown_signal(&s, T0 + 10), PHASE_DELAYING);
  assert_int_equal(s.phase, PHASE_DELAYING);
  assert_int_equal(s.entered[PHASE_DELAYING], T0 + 10);
  assert_int_equal(s.entered[PHASE_DRAINING], 0);
  assert_int_equal(s.reason, REASON_NONE);
  assert_int_equal(s.signals, 1);
}

static void test_shutdown_signal_without_delay_enters_draining(void **state) {
  (void)state;
  start(0);
  assert_int_equal(shutdown_signal(&s, T0 + 10), PHASE_DRAINING);
  assert_int_equal(s.entered[PHASE_DELAYING], 0);
  assert_int_equal(s.entered[PHASE_DRAINING], T0 + 10);
  assert_int_equal(s.reason, REASON_NONE);
}

static void test_shutdown_delay_elapsed_enters_draining(void **state) {
  (void)state;
  reach(PHASE_DELAYING);
  assert_int_equal(shutdown_delay_elapsed(&s, T0 + 6000), PHASE_DRAINING);
  assert_int_equal(s.entered[PHASE_DRAINING], T0 + 6000);
  assert_int_equal(s.reason, REASON_NONE);
}

static void
test_shutdown_delay_elapsed_is_ignored_outside_delaying(void **state) {
  (void)state;
  static const enum shutdown_phase others[] = {PHASE_RUNNING, PHASE_DRAINING,
                                               PHASE_FLUSHING, PHASE_DONE};
  for (size_t i = 0; i < 4; i++) {
    reach(others[i]);
    struct shutdown before = s;
    assert_int_equal(shutdown_delay_elapsed(&s, T0 + 9000), others[i]);
    assert_memory_equal(&s, &before, sizeof s);
  }
}

static void test_shutdown_connections_closed_enters_flushing(void **state) {
  (void)state;
  reach(PHASE_DRAINING);
  assert_int_equal(shutdown_connections_closed(&s, T0 + 7000), PHASE_FLUSHING);
  assert_int_equal(s.entered[PHASE_FLUSHING], T0 + 7000);
  assert_int_equal(s.reason, REASON_NONE);
}

static void
test_shutdown_connections_closed_is_ignored_outside_draining(void **state) {
  (void)state;
  static const enum shutdown_phase others[] = {PHASE_RUNNING, PHASE_DELAYING,
                                               PHASE_FLUSHING, PHASE_DONE};
  for (size_t i = 0; i < 4; i++) {
    reach(others[i]);
    struct shutdown before = s;
    assert_int_equal(shutdown_connections_closed(&s, T0 + 9000), others[i]);
    assert_memory_equal(&s, &before, sizeof s);
  }
}

static void test_shutdown_flushed_ends_with_drained(void **state) {
  (void)state;
  reach(PHASE_FLUSHING);
  assert_int_equal(shutdown_flushed(&s, T0 + 8000), PHASE_DONE);
  assert_int_equal(s.reason, REASON_DRAINED);
  assert_int_equal(s.entered[PHASE_DONE], T0 + 8000);
}

static void test_shutdown_flushed_is_ignored_outside_flushing(void **state) {
  (void)state;
  /* An empty queue while running, delaying or draining ends nothing. */
  static const enum shutdown_phase others[] = {PHASE_RUNNING, PHASE_DELAYING,
                                               PHASE_DRAINING, PHASE_DONE};
  for (size_t i = 0; i < 4; i++) {
    reach(others[i]);
    struct shutdown before = s;
    assert_int_equal(shutdown_flushed(&s, T0 + 9000), others[i]);
    assert_memory_equal(&s, &before, sizeof s);
  }
}

static void test_shutdown_deadline_ends_each_shutdown_phase(void **state) {
  (void)state;
  static const enum shutdown_phase phases[] = {PHASE_DELAYING, PHASE_DRAINING,
                                               PHASE_FLUSHING};
  for (size_t i = 0; i < 3; i++) {
    reach(phases[i]);
    assert_int_equal(shutdown_deadline_passed(&s, T0 + 26000), PHASE_DONE);
    assert_int_equal(s.reason, REASON_TIMEOUT);
    assert_int_equal(s.entered[PHASE_DONE], T0 + 26000);
  }
}

static void test_shutdown_deadline_is_ignored_while_running(void **state) {
  (void)state;
  reach(PHASE_RUNNING);
  struct shutdown before = s;
  assert_int_equal(shutdown_deadline_passed(&s, T0 + 99000), PHASE_RUNNING);
  assert_memory_equal(&s, &before, sizeof s);
}

static void test_shutdown_deadline_after_done_keeps_reason(void **state) {
  (void)state;
  reach(PHASE_DONE);
  assert_int_equal(shutdown_deadline_passed(&s, T0 + 26000), PHASE_DONE);
  assert_int_equal(s.reason, REASON_DRAINED);
  assert_int_equal(s.entered[PHASE_DONE], T0 + 4000);
}

static void test_shutdown_second_signal_ends_each_shutdown_phase(void **state) {
  (void)state;
  static const enum shutdown_phase phases[] = {PHASE_DELAYING, PHASE_DRAINING,
                                               PHASE_FLUSHING};
  for (size_t i = 0; i < 3; i++) {
    reach(phases[i]);
    assert_int_equal(shutdown_signal(&s, T0 + 5000), PHASE_DONE);
    assert_int_equal(s.reason, REASON_SECOND_SIGNAL);
    assert_int_equal(s.entered[PHASE_DONE], T0 + 5000);
    assert_int_equal(s.signals, 2);
  }
}

static void
test_shutdown_second_signal_without_delay_ends_draining(void **state) {
  (void)state;
  start(0);
  assert_int_equal(shutdown_signal(&s, T0 + 1), PHASE_DRAINING);
  assert_int_equal(shutdown_signal(&s, T0 + 2), PHASE_DONE);
  assert_int_equal(s.reason, REASON_SECOND_SIGNAL);
}

static void test_shutdown_signal_after_done_keeps_reason(void **state) {
  (void)state;
  reach(PHASE_DONE);
  assert_int_equal(shutdown_signal(&s, T0 + 9000), PHASE_DONE);
  assert_int_equal(s.reason, REASON_DRAINED);
  assert_int_equal(s.entered[PHASE_DONE], T0 + 4000);
  assert_int_equal(s.signals, 2);
}

static void test_shutdown_failure_ends_every_phase(void **state) {
  (void)state;
  for (int p = PHASE_RUNNING; p < PHASE_DONE; p++) {
    reach((enum shutdown_phase)p);
    assert_int_equal(shutdown_fail(&s, T0 + 9000), PHASE_DONE);
    assert_int_equal(s.reason, REASON_FAILURE);
    assert_int_equal(s.entered[PHASE_DONE], T0 + 9000);
  }
}

static void test_shutdown_failure_after_done_keeps_reason(void **state) {
  (void)state;
  reach(PHASE_DONE);
  assert_int_equal(shutdown_fail(&s, T0 + 9000), PHASE_DONE);
  assert_int_equal(s.reason, REASON_DRAINED);
}

/* ---- The deadline ------------------------------------------------------- */

static void test_shutdown_deadline_is_never_while_running(void **state) {
  (void)state;
  start(DELAY);
  assert_int_equal(shutdown_deadline(&s), UINT64_MAX);
}

static void test_shutdown_deadline_counts_from_first_signal(void **state) {
  (void)state;
  start(DELAY);
  shutdown_signal(&s, T0 + 500);
  assert_int_equal(shutdown_deadline(&s), T0 + 500 + TIMEOUT);
  /* Moving on does not move the deadline. */
  shutdown_delay_elapsed(&s, T0 + 500 + DELAY);
  assert_int_equal(shutdown_deadline(&s), T0 + 500 + TIMEOUT);
  shutdown_connections_closed(&s, T0 + 500 + DELAY + 100);
  assert_int_equal(shutdown_deadline(&s), T0 + 500 + TIMEOUT);
}

static void
test_shutdown_deadline_without_delay_counts_from_signal(void **state) {
  (void)state;
  start(0);
  shutdown_signal(&s, T0 + 700);
  assert_int_equal(shutdown_deadline(&s), T0 + 700 + TIMEOUT);
  shutdown_connections_closed(&s, T0 + 800);
  assert_int_equal(shutdown_deadline(&s), T0 + 700 + TIMEOUT);
}

/* ---- Durations ---------------------------------------------------------- */

static void test_shutdown_phase_ms_measures_each_phase(void **state) {
  (void)state;
  start(DELAY);
  shutdown_signal(&s, T0 + 100);              /* running 100 */
  shutdown_delay_elapsed(&s, T0 + 5100);      /* delaying 5000 */
  shutdown_connections_closed(&s, T0 + 5350); /* draining 250 */
  shutdown_flushed(&s, T0 + 7350);            /* flushing 2000 */
  assert_int_equal(shutdown_phase_ms(&s, PHASE_RUNNING, T0 + 9000), 100);
  assert_int_equal(shutdown_phase_ms(&s, PHASE_DELAYING, T0 + 9000), 5000);
  assert_int_equal(shutdown_phase_ms(&s, PHASE_DRAINING, T0 + 9000), 250);
  assert_int_equal(shutdown_phase_ms(&s, PHASE_FLUSHING, T0 + 9000), 2000);
  /* The current phase lasts until now. */
  assert_int_equal(shutdown_phase_ms(&s, PHASE_DONE, T0 + 9000), 1650);
}

static void test_shutdown_phase_ms_of_current_phase_runs_to_now(void **state) {
  (void)state;
  reach(PHASE_DRAINING); /* entered at T0 + 2000 */
  assert_int_equal(shutdown_phase_ms(&s, PHASE_DRAINING, T0 + 2000), 0);
  assert_int_equal(shutdown_phase_ms(&s, PHASE_DRAINING, T0 + 2750), 750);
  assert_int_equal(shutdown_phase_ms(&s, PHASE_DELAYING, T0 + 2750), 1000);
}

static void test_shutdown_phase_ms_is_0_for_skipped_phases(void **state) {
  (void)state;
  start(0);
  shutdown_signal(&s, T0 + 100);            /* straight to draining */
  shutdown_deadline_passed(&s, T0 + 25100); /* flushing never reached */
  assert_int_equal(shutdown_phase_ms(&s, PHASE_RUNNING, T0 + 30000), 100);
  assert_int_equal(shutdown_phase_ms(&s, PHASE_DELAYING, T0 + 30000), 0);
  /* Draining lasts until the phase that followed it: done, not flushing. */
  assert_int_equal(shutdown_phase_ms(&s, PHASE_DRAINING, T0 + 30000), 25000);
  assert_int_equal(shutdown_phase_ms(&s, PHASE_FLUSHING, T0 + 30000), 0);
  assert_int_equal(shutdown_phase_ms(&s, PHASE_DONE, T0 + 30000), 4900);
}

static void test_shutdown_phase_ms_after_failure_while_running(void **state) {
  (void)state;
  start(DELAY);
  shutdown_fail(&s, T0 + 40);
  assert_int_equal(shutdown_phase_ms(&s, PHASE_RUNNING, T0 + 100), 40);
  for (int p = PHASE_DELAYING; p < PHASE_DONE; p++)
    assert_int_equal(shutdown_phase_ms(&s, (enum shutdown_phase)p, T0 + 100),
                     0);
}

/* ---- Names and exit codes ----------------------------------------------- */

static void test_shutdown_names_phases_and_reasons(void **state) {
  (void)state;
  assert_string_equal(shutdown_phase_name(PHASE_RUNNING), "running");
  assert_string_equal(shutdown_phase_name(PHASE_DELAYING), "delaying");
  assert_string_equal(shutdown_phase_name(PHASE_DRAINING), "draining");
  assert_string_equal(shutdown_phase_name(PHASE_FLUSHING), "flushing");
  assert_string_equal(shutdown_phase_name(PHASE_DONE), "done");
  assert_string_equal(shutdown_phase_name(PHASE_COUNT), "unknown");
  assert_string_equal(shutdown_reason_name(REASON_NONE), "none");
  assert_string_equal(shutdown_reason_name(REASON_DRAINED), "drained");
  assert_string_equal(shutdown_reason_name(REASON_TIMEOUT), "timeout");
  assert_string_equal(shutdown_reason_name(REASON_SECOND_SIGNAL),
                      "second-signal");
  assert_string_equal(shutdown_reason_name(REASON_FAILURE), "failure");
}

static void test_shutdown_exit_code_is_0_when_drained(void **state) {
  (void)state;
  reach(PHASE_DONE);
  assert_int_equal(shutdown_exit_code(&s, 0, 0), 0);
  /* Cut short with nothing pending: nothing was lost, so still 0. */
  reach(PHASE_DRAINING);
  shutdown_deadline_passed(&s, T0 + 26000);
  assert_int_equal(s.reason, REASON_TIMEOUT);
  assert_int_equal(shutdown_exit_code(&s, 0, 0), 0);
}

static void
test_shutdown_exit_code_is_3_when_increments_abandoned(void **state) {
  (void)state;
  reach(PHASE_FLUSHING);
  shutdown_deadline_passed(&s, T0 + 26000);
  assert_int_equal(shutdown_exit_code(&s, 12, 0), 3);
  reach(PHASE_DRAINING);
  shutdown_signal(&s, T0 + 3000);
  assert_int_equal(shutdown_exit_code(&s, 1, 0), 3);
}

static void test_shutdown_exit_code_is_1_on_failure(void **state) {
  (void)state;
  reach(PHASE_RUNNING);
  shutdown_fail(&s, T0 + 1);
  assert_int_equal(shutdown_exit_code(&s, 0, 0), 1);
  /* A failure is a failure, however much was abandoned with it. */
  assert_int_equal(shutdown_exit_code(&s, 5, 0), 1);
}

static void test_shutdown_exit_code_is_4_when_increments_failed(void **state) {
  (void)state;
  reach(PHASE_DONE);
  assert_int_equal(shutdown_exit_code(&s, 0, 3), 4);
  /* Abandoned says more (the shutdown was cut short): it wins. */
  assert_int_equal(shutdown_exit_code(&s, 2, 3), 3);
  reach(PHASE_RUNNING);
  shutdown_fail(&s, T0 + 1);
  assert_int_equal(shutdown_exit_code(&s, 0, 3), 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shutdown_starts_running),
      cmocka_unit_test(test_shutdown_signal_with_delay_enters_delaying),
      cmocka_unit_test(test_shutdown_signal_without_delay_enters_draining),
      cmocka_unit_test(test_shutdown_delay_elapsed_enters_draining),
      cmocka_unit_test(test_shutdown_delay_elapsed_is_ignored_outside_delaying),
      cmocka_unit_test(test_shutdown_connections_closed_enters_flushing),
      cmocka_unit_test(
          test_shutdown_connections_closed_is_ignored_outside_draining),
      cmocka_unit_test(test_shutdown_flushed_ends_with_drained),
      cmocka_unit_test(test_shutdown_flushed_is_ignored_outside_flushing),
      cmocka_unit_test(test_shutdown_deadline_ends_each_shutdown_phase),
      cmocka_unit_test(test_shutdown_deadline_is_ignored_while_running),
      cmocka_unit_test(test_shutdown_deadline_after_done_keeps_reason),
      cmocka_unit_test(test_shutdown_second_signal_ends_each_shutdown_phase),
      cmocka_unit_test(test_shutdown_second_signal_without_delay_ends_draining),
      cmocka_unit_test(test_shutdown_signal_after_done_keeps_reason),
      cmocka_unit_test(test_shutdown_failure_ends_every_phase),
      cmocka_unit_test(test_shutdown_failure_after_done_keeps_reason),
      cmocka_unit_test(test_shutdown_deadline_is_never_while_running),
      cmocka_unit_test(test_shutdown_deadline_counts_from_first_signal),
      cmocka_unit_test(test_shutdown_deadline_without_delay_counts_from_signal),
      cmocka_unit_test(test_shutdown_phase_ms_measures_each_phase),
      cmocka_unit_test(test_shutdown_phase_ms_of_current_phase_runs_to_now),
      cmocka_unit_test(test_shutdown_phase_ms_is_0_for_skipped_phases),
      cmocka_unit_test(test_shutdown_phase_ms_after_failure_while_running),
      cmocka_unit_test(test_shutdown_names_phases_and_reasons),
      cmocka_unit_test(test_shutdown_exit_code_is_0_when_drained),
      cmocka_unit_test(test_shutdown_exit_code_is_3_when_increments_abandoned),
      cmocka_unit_test(test_shutdown_exit_code_is_1_on_failure),
      cmocka_unit_test(test_shutdown_exit_code_is_4_when_increments_failed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
