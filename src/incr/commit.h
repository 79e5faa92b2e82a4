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
 * An /incr with an Idempotency-Key has a ticket of its own, and its key
 * rides with the write: Redis records it with the increment, or finds it
 * counted already (a replay: 200 with Idempotency-Replayed, nothing
 * counted). A key already in the open turn or in the write in flight is a
 * request still in progress here: 409 at once.
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

/* Keyed /incr, each under its own ticket: parallel arrays. */
struct commit_keys {
  struct scripts_idem *ids; /* the keys (each malloc'd) */
  uint64_t *tickets;
  char *replayed; /* '1': the write found it counted already */
  size_t len;
  size_t cap;
};

/* A journal write in flight and the /incr it holds. */
struct commit_write {
  uint64_t seq;    /* the engine's write number */
  uint64_t ticket; /* the held responses' without a key ... */
  uint64_t plain;  /* ... and how many */
  uint64_t n;      /* all it holds, keyed ones too */
  struct commit_keys keys;
};

enum commit_taken {
  COMMIT_HELD,     /* held for the turn's write */
  COMMIT_REFUSED,  /* no write can be sent: 503 */
  COMMIT_CONFLICT, /* its Idempotency-Key is in progress here: 409 */
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
  uint64_t turn_plain;     /* ... and the /incr without a key it holds */
  uint64_t turn_n;         /* /incr in the open turn, keyed ones too */
  struct commit_keys turn_keys;
  bool writing; /* a write is in flight: */
  struct commit_write write;
};

/* The 200 of a replay: the key counted before, nothing counted now. */
extern const struct http_response commit_replayed;

/* The 409 of a key whose request is still in progress here. */
extern const struct http_response commit_in_progress;

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

/* Takes an /incr whose response is resp (the route's 200), with the
 * Idempotency-Key key (key_len 0: none; copied): held under a ticket; or
 * answered at once, 503 commit_not_recorded when no write can be sent (or
 * memory runs out), 409 commit_in_progress when the key is held already. */
enum commit_taken commit_take(struct commit *cm, struct http_response *resp,
                              const char *key, size_t key_len);

/* The engine's on_written: write seq's outcome fills the responses it
 * held. */
void commit_written(struct commit *cm, uint64_t seq, bool held);

/* The engine's on_replays: which keys of write seq were replays. */
void commit_replays(struct commit *cm, uint64_t seq, const char *flags,
                    size_t len);

/* /incr held, in the open turn and in the write in flight. */
uint64_t commit_holding(const struct commit *cm);

/* Closes the handle and frees the keys; held responses are the server's
 * to drop. */
void commit_close(struct commit *cm);

#endif
