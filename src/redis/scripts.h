/* The Redis side of exactly once: the keys a replica owns, the commands
 * that run the scripts of src/redis/lua, and the decoding of their replies.
 * Pure: no sockets, no loop, so the unit tests drive all of it.
 *
 * Memory mode sends each batch of increments that fell due together as one
 * numbered, fenced INCRBY (lua/batch.lua). Journal mode records a loop
 * turn's increments in the replica's journal before their 200s
 * (journal_write.lua), settles a write whose reply was lost
 * (journal_resolve.lua), moves due entries to the counter (with a write, or
 * alone as a write that records nothing), renews its lease and moves every
 * due entry its journal holds (journal_renew.lua), adopts the journals of
 * replicas whose lease ran out, one by one (journal_adopt.lua), and leaves
 * (journal_leave.lua). Every key a script touches is one of its KEYS.
 *
 * Keys, all under KEY_PREFIX but the counter, and all scoped to the counter
 * through a hash tag: replicas counting into another counter never touch
 * them, and on Redis Cluster they share the counter's slot. With the
 * counter "c" (tag: the counter's own hash tag if it has one, else its
 * name):
 *   <prefix>{c}:fences        id -> the last batch or write number applied
 *   <prefix>{c}:fence_uses    id -> when its fence last moved (Redis's
 *                             clock, ms): unused for SCRIPTS_FENCE_AGE_MS,
 *                             it is forgotten
 *   <prefix>{c}:skips         journal writes fenced off while their outcome
 *                             was being asked for, "id:first-last" (a sorted
 *                             set, usually empty)
 *   <prefix>{c}:journal:<id>  deadline (wall-clock ms) -> increments
 *   <prefix>{c}:replicas      id -> the end of its lease (Redis's clock, ms),
 *                             for every replica that may hold a journal
 *   <prefix>{c}:idempotency   the Idempotency-Keys counted (both modes),
 *                             key -> when (Redis's clock, ms); those older
 *                             than IDEMPOTENCY_TTL_MS are pruned by the
 *                             scripts
 * None has a TTL: no eviction policy but allkeys-* can take one. */
#ifndef GRACEFULD_SCRIPTS_H
#define GRACEFULD_SCRIPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define SCRIPTS_ID_LEN 16 /* hex digits of a 64-bit random id */
#define SCRIPTS_KEY_MAX 600
/* How long a fence outlives the last batch or write it fenced: longer than
 * any pause after which a command from a broken connection could still be
 * executed. Not a TTL, which an eviction policy could cut short: a fence
 * unused this long is forgotten by the next script that moves one. */
#define SCRIPTS_FENCE_AGE_MS (24ull * 3600 * 1000)
/* A replica that writes often notes its fence's use (and looks for stale
 * fences) with one journal write in this many ms, not with every one: two
 * commands fewer for Redis per write, and a use noted a second late
 * against an age of a day. */
#define SCRIPTS_FENCE_NOTE_MS 1000
/* Deadlines moved by one command at most (Lua's unpack has a limit). */
#define SCRIPTS_MOVE_MAX 1000
/* Idempotency-Keys one journal write or batch carries at most (the rest
 * wait for the next one). */
#define SCRIPTS_IDEM_MAX 1000

/* A command in Redis protocol form, in a buffer that grows and is reused. */
struct scripts_cmd {
  char *buf;
  size_t len;
  size_t cap;
};

void scripts_cmd_free(struct scripts_cmd *cmd);

/* The scripts of src/redis/lua. */
enum scripts_script {
  SCRIPTS_BATCH,
  SCRIPTS_WRITE,
  SCRIPTS_RESOLVE,
  SCRIPTS_RENEW,
  SCRIPTS_ADOPT,
  SCRIPTS_LEAVE,
  SCRIPTS_PROBE,
  SCRIPTS_SCRIPTS
};

struct scripts {
  char id[SCRIPTS_ID_LEN + 1];
  /* Each script is sent whole (EVAL) the first time on a connection, which
   * has Redis cache it, and by its SHA-1 (EVALSHA) after that. */
  char sha[SCRIPTS_SCRIPTS][41];
  unsigned cached; /* bit per script: sent whole on this connection */
  char counter[SCRIPTS_KEY_MAX];
  char fences[SCRIPTS_KEY_MAX];
  char fence_uses[SCRIPTS_KEY_MAX];
  char skips[SCRIPTS_KEY_MAX];
  char journal[SCRIPTS_KEY_MAX];
  char replicas[SCRIPTS_KEY_MAX];
  char idem[SCRIPTS_KEY_MAX];
  uint64_t idem_ttl_ms;        /* IDEMPOTENCY_TTL_MS (scripts_init: a day) */
  char scope[SCRIPTS_KEY_MAX]; /* <prefix>{tag}: */
  char other[SCRIPTS_KEY_MAX]; /* another replica's journal, to adopt */
  /* wall-clock ms at monotonic 0: deadlines are monotonic time plus this, a
   * wall clock that never runs backwards within the process */
  int64_t clock_offset;
};

/* Names the keys of replica `random` (its id is the hex of it). Returns 0,
 * or UV_EINVAL when a key would not fit or the prefix holds a brace (it
 * would take the hash tag from the counter). */
int scripts_init(struct scripts *j, const char *prefix, const char *counter,
                 uint64_t random);

/* A new connection, or a NOSCRIPT reply (Redis restarted, SCRIPT FLUSH):
 * every script is sent whole again, once. */
void scripts_scripts_forgotten(struct scripts *j);

/* Whether an error reply is NOSCRIPT: not run, to be sent again. */
bool scripts_noscript(const redisReply *reply);

/* Fixes the clock: wall_ms is the wall clock when the monotonic clock read
 * mono_ms. */
void scripts_clock_set(struct scripts *j, uint64_t wall_ms, uint64_t mono_ms);

/* The wall-clock ms of monotonic time mono_ms. */
uint64_t scripts_wall(const struct scripts *j, uint64_t mono_ms);

/* ---- Leases -------------------------------------------------------------
 * A lease is renewed every third of its length, and each renewal also names
 * the lapsed leases to adopt: a replica that dies is adopted at most
 * lease + renewal period after its last renewal. Each renewal also moves
 * every entry of the journal that fell due a renewal period ago or more:
 * whatever the replica's queue missed (an adoption whose reply was lost)
 * moves at most two renewal periods after it fell due. */
uint64_t scripts_renew_period_ms(uint64_t lease_ms);
uint64_t scripts_adoption_bound_ms(uint64_t lease_ms);

/* ---- Commands: each fills cmd (reusing its buffer); 0 or UV_ENOMEM ------ */

/* Whether this connection's user may run every command the scripts of
 * this durability run (lua/probe.lua; journal: journal mode's too; wait:
 * WAIT, for REDIS_MIN_REPLICAS), always sent whole. */
int scripts_cmd_probe(struct scripts_cmd *cmd, struct scripts *j, bool journal,
                      bool wait);
/* An Idempotency-Key, as a journal write or a batch carries it. */
struct scripts_idem {
  const char *key;
  size_t len;
};

/* floor: the lowest batch not yet settled (applied or failed). keys: the
 * Idempotency-Keys of n_keys of the n increments (at most
 * SCRIPTS_IDEM_MAX); a key counted already is skipped, the others are
 * recorded as the batch counts them. The same keys go with every copy of
 * a batch. */
int scripts_cmd_batch(struct scripts_cmd *cmd, struct scripts *j, uint64_t seq,
                      uint64_t n, uint64_t floor,
                      const struct scripts_idem *keys, size_t n_keys);

/* With due_wall: the deadlines that fell due (at most SCRIPTS_MOVE_MAX),
 * moved in the same step whether the write is recorded or not. keys: the
 * Idempotency-Keys of n_keys of the n increments (at most
 * SCRIPTS_IDEM_MAX), recorded with them; a key counted already is a
 * replay and its increment is not recorded. note_use: the write notes when
 * the fence was used and forgets stale fences (SCRIPTS_FENCE_NOTE_MS). */
int scripts_cmd_write(struct scripts_cmd *cmd, struct scripts *j, uint64_t seq,
                      uint64_t deadline_wall, uint64_t n, uint64_t known,
                      uint64_t lease_ms, bool note_use,
                      const struct scripts_idem *keys,
                      size_t n_keys, const uint64_t *due_wall, size_t n_due);
int scripts_cmd_resolve(struct scripts_cmd *cmd, struct scripts *j,
                        uint64_t seq);
/* Moves the entries at the given wall-clock deadlines (at most
 * SCRIPTS_MOVE_MAX). */
int scripts_cmd_move(struct scripts_cmd *cmd, struct scripts *j,
                     const uint64_t *deadlines_wall, size_t n);
/* due_wall: entries due at or before it move. */
int scripts_cmd_renew(struct scripts_cmd *cmd, struct scripts *j,
                      uint64_t lease_ms, uint64_t due_wall);
/* Adopts the journal of the replica named id (UV_EINVAL: not an id). */
int scripts_cmd_adopt(struct scripts_cmd *cmd, struct scripts *j,
                      const char *id, size_t id_len, uint64_t wall_now);
int scripts_cmd_leave(struct scripts_cmd *cmd, struct scripts *j);
/* WAIT min_replicas timeout_ms: REDIS_MIN_REPLICAS's confirmation of what
 * was sent before it (no script). */
int scripts_cmd_wait(struct scripts_cmd *cmd, uint64_t min_replicas,
                     uint64_t timeout_ms);

/* ---- Replies ------------------------------------------------------------ */

enum scripts_outcome {
  SCRIPTS_APPLIED,      /* counted, or recorded in the journal */
  SCRIPTS_DUPLICATE,    /* a batch applied before: done, not counted again */
  SCRIPTS_NOT_APPLIED,  /* a write fenced off, or resolved as not written */
  SCRIPTS_OUT_OF_ORDER, /* a batch whose predecessor is missing: send both */
  SCRIPTS_ERROR,        /* an error reply: the caller classifies it */
  SCRIPTS_BAD_REPLY,    /* a reply of a kind the script never sends */
};

/* Decodes the reply to a batch (lua/batch.lua). */
enum scripts_outcome scripts_batch_outcome(const redisReply *reply);

/* Decodes the reply to a journal write or resolve: applied or not. */
enum scripts_outcome scripts_write_outcome(const redisReply *reply);

/* The part of a write's reply that answers the moves it carried, as a
 * move's reply would (scripts_count_of, or an error); NULL when it carried
 * none. */
const redisReply *scripts_write_moves(const redisReply *reply);

/* The replays among the keys a write carried: one character per key, '1'
 * a replay, '0' counted by this write; false when the reply says nothing
 * of keys (none carried, or not recorded). */
bool scripts_write_replays(const redisReply *reply, const char **flags,
                           size_t *len);

/* The integer a move or leave answers; false for anything else. */
bool scripts_count_of(const redisReply *reply, uint64_t *count);

/* A renewal's reply: what it moved (an integer, or the counter's error)
 * and the replicas whose lease ran out (strings). */
struct scripts_renewal {
  const redisReply *moved;
  const redisReply *lapsed;
};

/* Checks the shape of a renewal reply; false if it is not one. */
bool scripts_renewal_of(const redisReply *reply, struct scripts_renewal *r);

/* An adoption's reply: who, how many, and the entries added. */
struct scripts_adoption {
  const char *id;
  size_t id_len;
  uint64_t n;
  const redisReply *added; /* deadline (wall ms, this clock), increments ... */
};

/* Checks the shape of an adoption reply; false if it is not one. */
bool scripts_adoption_of(const redisReply *reply, struct scripts_adoption *a);

/* The i-th entry added to this journal; false past the end. */
bool scripts_adoption_entry(const struct scripts_adoption *a, size_t i,
                            uint64_t *deadline_wall, uint64_t *n);

#endif
