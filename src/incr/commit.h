/* Journal mode's group commit and its held 200s. An /incr is answered 200
 * only once Redis holds it in this replica's journal, so its response is
 * held: the /incr of one loop turn share one ticket and go to Redis as one
 * journal write (delivery_write) at the turn's end. One write is in flight
 * at a time; the turns that come during its round trip join the next one,
 * so that under load writes grow rather than multiply (a group commit).
 * When the write's outcome is known the held responses are filled in
 * together: 200 when the journal holds them, 503 when it does not. With no
 * write possible an /incr is answered 503 at once.
 *
 * Memory mode has no use for it: its 200 goes out at once. */
#ifndef GRACEFULD_COMMIT_H
#define GRACEFULD_COMMIT_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "http/http.h"
#include "incr/delivery.h"

struct commit;

/* Fills in resp as the response of the n /incr held under ticket (the
 * owner's server_fill). held: the journal holds them (resp is the 200). */
typedef void (*commit_fill_cb)(struct commit *cm, uint64_t ticket, uint64_t n,
                               bool held, const struct http_response *resp);

/* A journal write in flight and the /incr it holds. */
struct commit_write {
  uint64_t seq;    /* the engine's write number */
  uint64_t ticket; /* the held responses' */
  uint64_t n;
};

struct commit {
  uv_loop_t *loop;
  struct delivery *delivery;
  uint64_t delay_ms; /* INCR_DELAY_MS: the written increments' deadline */
  commit_fill_cb fill;
  uv_check_t turn_end;     /* after the callbacks of each loop turn */
  struct http_response ok; /* the route's 200, for every held /incr */
  uint64_t tickets;        /* the last ticket given */
  uint64_t turn;           /* the open turn's ticket ... */
  uint64_t turn_n;         /* ... and the /incr it holds (0: none open) */
  bool writing;            /* a write is in flight: */
  struct commit_write write;
};

/* The 503 of an /incr the journal could not take: nothing was recorded,
 * and a retry may succeed. */
extern const struct http_response commit_not_recorded;

/* Prepares the commit of delivery's writes (its turn_end handle on loop,
 * not started). Returns 0 or a negative UV_E*. */
int commit_init(struct commit *cm, uv_loop_t *loop, struct delivery *delivery,
                uint64_t delay_ms, commit_fill_cb fill);

/* Journal mode: writes at the end of each loop turn from now on. The
 * handle keeps nothing alive. Returns 0 or a negative UV_E*. */
int commit_start(struct commit *cm);

/* Takes an /incr whose response is resp (the route's 200): held under the
 * open turn's ticket, and true; or, when no write can be sent, the 503
 * commit_not_recorded at once, and false. */
bool commit_take(struct commit *cm, struct http_response *resp);

/* The engine's on_written: write seq's outcome fills the responses it
 * held. */
void commit_written(struct commit *cm, uint64_t seq, bool held);

/* /incr held, in the open turn and in the write in flight. */
uint64_t commit_holding(const struct commit *cm);

/* Closes the handle; held responses are the server's to drop. */
void commit_close(struct commit *cm);

#endif
