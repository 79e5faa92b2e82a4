#include "shutdown.h"

#include <string.h>

static enum shutdown_phase enter(struct shutdown *s, enum shutdown_phase p,
                                 uint64_t now) {
  s->phase = p;
  /* 0 marks "never entered"; a loop that starts at time 0 still counts. */
  s->entered[p] = now ? now : 1;
  return p;
}

void shutdown_init(struct shutdown *s, uint64_t delay_ms, uint64_t timeout_ms,
                   uint64_t now) {
  memset(s, 0, sizeof *s);
  s->delay_ms = delay_ms;
  s->timeout_ms = timeout_ms;
  enter(s, PHASE_RUNNING, now);
}

static enum shutdown_phase end_shutdown(struct shutdown *s,
                                        enum shutdown_reason r, uint64_t now) {
  if (s->phase == PHASE_DONE)
    return PHASE_DONE;
  s->reason = r;
  return enter(s, PHASE_DONE, now);
}

enum shutdown_phase shutdown_signal(struct shutdown *s, uint64_t now) {
  s->signals++;
  if (s->phase != PHASE_RUNNING)
    return end_shutdown(s, REASON_SECOND_SIGNAL, now);
  return enter(s, s->delay_ms ? PHASE_DELAYING : PHASE_DRAINING, now);
}

enum shutdown_phase shutdown_delay_elapsed(struct shutdown *s, uint64_t now) {
  if (s->phase == PHASE_DELAYING)
    enter(s, PHASE_DRAINING, now);
  return s->phase;
}

enum shutdown_phase shutdown_connections_closed(struct shutdown *s,
                                                uint64_t now) {
  if (s->phase == PHASE_DRAINING)
    enter(s, PHASE_FLUSHING, now);
  return s->phase;
}

enum shutdown_phase shutdown_flushed(struct shutdown *s, uint64_t now) {
  if (s->phase == PHASE_FLUSHING)
    return end_shutdown(s, REASON_DRAINED, now);
  return s->phase;
}

enum shutdown_phase shutdown_deadline_passed(struct shutdown *s, uint64_t now) {
  if (s->phase == PHASE_RUNNING)
    return s->phase;
  return end_shutdown(s, REASON_TIMEOUT, now);
}

enum shutdown_phase shutdown_fail(struct shutdown *s, uint64_t now) {
  return end_shutdown(s, REASON_FAILURE, now);
}

uint64_t shutdown_deadline(const struct shutdown *s) {
  uint64_t first = s->entered[PHASE_DELAYING] ? s->entered[PHASE_DELAYING]
                                              : s->entered[PHASE_DRAINING];
  return first ? first + s->timeout_ms : UINT64_MAX;
}

uint64_t shutdown_phase_ms(const struct shutdown *s, enum shutdown_phase p,
                           uint64_t now) {
  if (!s->entered[p])
    return 0;
  uint64_t end = now;
  for (int next = p + 1; next < PHASE_COUNT; next++) {
    if (s->entered[next]) {
      end = s->entered[next];
      break;
    }
  }
  return end > s->entered[p] ? end - s->entered[p] : 0;
}

const char *shutdown_phase_name(enum shutdown_phase p) {
  static const char *const names[PHASE_COUNT] = {
      "running", "delaying", "draining", "flushing", "done"};
  return (unsigned)p < PHASE_COUNT ? names[p] : "unknown";
}

const char *shutdown_reason_name(enum shutdown_reason r) {
  switch (r) {
  case REASON_NONE:
    return "none";
  case REASON_DRAINED:
    return "drained";
  case REASON_TIMEOUT:
    return "timeout";
  case REASON_SECOND_SIGNAL:
    return "second-signal";
  case REASON_FAILURE:
    return "failure";
  }
  return "unknown";
}

int shutdown_exit_code(const struct shutdown *s, uint64_t abandoned,
                       uint64_t failed) {
  if (s->reason == REASON_FAILURE)
    return 1;
  return abandoned ? 3 : failed ? 4 : 0;
}
