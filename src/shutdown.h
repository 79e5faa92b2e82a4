/* The shutdown state machine: which phase the process is in, how it moves
 * on, and when the deadline ends it. Pure: the caller feeds it events with
 * the current time (uv_now) and performs the effects of each new phase.
 *
 *   running --signal--> delaying --delay elapsed--> draining
 *   running --signal, no delay-----------------------> draining
 *   draining --no connections left--> flushing --nothing pending--> done
 *   delaying|draining|flushing --deadline or second signal--> done
 *   any --the process cannot go on (listen failed)--> done
 *
 * After done the app winds up (app.h's enum app_state): every handle but
 * the Redis link's closes, and the delivery engine leaves; in journal mode
 * that is a leave script giving up the lease and an empty journal, so that
 * another replica adopts at once what this one still holds. Its reply (or
 * the connection's loss) ends the wind-up: the link closes, the summary is
 * logged, uv_run returns.
 *
 *   done --handles closed, leave sent--> winding up --left--> wound up
 */
#ifndef GRACEFULD_SHUTDOWN_H
#define GRACEFULD_SHUTDOWN_H

#include <stdbool.h>
#include <stdint.h>

enum shutdown_phase {
  PHASE_RUNNING,
  PHASE_DELAYING,
  PHASE_DRAINING,
  PHASE_FLUSHING,
  PHASE_DONE,
  PHASE_COUNT
};

enum shutdown_reason {
  REASON_NONE,          /* still running */
  REASON_DRAINED,       /* everything pending was done */
  REASON_TIMEOUT,       /* SHUTDOWN_TIMEOUT_MS ran out */
  REASON_SECOND_SIGNAL, /* a second SIGTERM or SIGINT */
  REASON_FAILURE,       /* the process could not go on (e.g. listen failed) */
};

struct shutdown {
  enum shutdown_phase phase;
  enum shutdown_reason reason;
  uint64_t delay_ms;
  uint64_t timeout_ms;
  uint64_t entered[PHASE_COUNT]; /* when each phase began (0: never) */
  unsigned signals;
};

/* Starts in running at now (uv_now). */
void shutdown_init(struct shutdown *s, uint64_t delay_ms, uint64_t timeout_ms,
                   uint64_t now);

/* A SIGTERM or SIGINT. The first moves running to delaying (or straight to
 * draining when there is no delay); a later one ends the process at once. */
enum shutdown_phase shutdown_signal(struct shutdown *s, uint64_t now);

/* The shutdown delay ran out: delaying moves to draining. */
enum shutdown_phase shutdown_delay_elapsed(struct shutdown *s, uint64_t now);

/* The listener and every connection are closed: draining moves to flushing. */
enum shutdown_phase shutdown_connections_closed(struct shutdown *s,
                                                uint64_t now);

/* No increment is pending: flushing moves to done. */
enum shutdown_phase shutdown_flushed(struct shutdown *s, uint64_t now);

/* The deadline (first signal + timeout) passed: any shutdown phase ends. */
enum shutdown_phase shutdown_deadline_passed(struct shutdown *s, uint64_t now);

/* The process cannot go on: ends at once from any phase. */
enum shutdown_phase shutdown_fail(struct shutdown *s, uint64_t now);

/* When the first signal's deadline falls, in uv_now milliseconds. */
uint64_t shutdown_deadline(const struct shutdown *s);

/* How long a phase lasted (so far, if it is the current one); 0 if the
 * process never entered it. */
uint64_t shutdown_phase_ms(const struct shutdown *s, enum shutdown_phase p,
                           uint64_t now);

const char *shutdown_phase_name(enum shutdown_phase p);
const char *shutdown_reason_name(enum shutdown_reason r);

/* The exit status: 0 when drained, 1 on a failure, 3 when increments were
 * abandoned, 4 when Redis answered some with an error no retry could fix
 * (failed): an increment lost either way must not look like a clean exit. */
int shutdown_exit_code(const struct shutdown *s, uint64_t abandoned,
                       uint64_t failed);

#endif
