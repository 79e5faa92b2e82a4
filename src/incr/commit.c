#include "incr/commit.h"

#include <stdlib.h>
#include <string.h>

#include "base.h"

const struct http_response commit_not_recorded = {
    .status = 503,
    .extra_headers = "Retry-After: 1\r\n",
    .body = "not recorded, try again\n",
    .body_len = sizeof "not recorded, try again\n" - 1,
};

const struct http_response commit_replayed = {
    .status = 200,
    .extra_headers = "Idempotency-Replayed: true\r\n",
    .body = "ok\n",
    .body_len = sizeof "ok\n" - 1,
};

const struct http_response commit_in_progress = {
    .status = 409,
    .extra_headers = "Retry-After: 1\r\n",
    .body = "a request with this Idempotency-Key is in progress\n",
    .body_len =
        sizeof "a request with this Idempotency-Key is in progress\n" - 1,
};

static void on_turn_end(uv_check_t *check);

/* ---- Keys --------------------------------------------------------------- */

static bool keys_find(const struct commit_keys *k, const char *key,
                      size_t len) {
  /* Linear: a turn holds few keys, and a write at most SCRIPTS_IDEM_MAX. */
  for (size_t i = 0; i < k->len; i++)
    if (k->ids[i].len == len && memcmp(k->ids[i].key, key, len) == 0)
      return true;
  return false;
}

static int keys_push(struct commit_keys *k, const char *key, size_t len,
                     uint64_t ticket) {
  if (k->len == k->cap) {
    size_t cap = k->cap ? k->cap * 2 : 16;
    struct scripts_idem *ids = realloc(k->ids, cap * sizeof *ids);
    if (ids)
      k->ids = ids;
    uint64_t *tickets = realloc(k->tickets, cap * sizeof *tickets);
    if (tickets)
      k->tickets = tickets;
    char *replayed = realloc(k->replayed, cap);
    if (replayed)
      k->replayed = replayed;
    if (!ids || !tickets || !replayed)
      return UV_ENOMEM;
    k->cap = cap;
  }
  char *copy = malloc(len);
  if (!copy)
    return UV_ENOMEM;
  memcpy(copy, key, len);
  k->ids[k->len] = (struct scripts_idem){copy, len};
  k->tickets[k->len] = ticket;
  k->replayed[k->len] = '0';
  k->len++;
  return 0;
}

/* Forgets the keys, keeping the arrays. */
static void keys_clear(struct commit_keys *k) {
  for (size_t i = 0; i < k->len; i++)
    free((char *)k->ids[i].key);
  k->len = 0;
}

static void keys_free(struct commit_keys *k) {
  keys_clear(k);
  free(k->ids);
  free(k->tickets);
  free(k->replayed);
  memset(k, 0, sizeof *k);
}

int commit_init(struct commit *cm, uv_loop_t *loop, struct delivery *delivery,
                uint64_t delay_ms, commit_fill_cb fill) {
  memset(cm, 0, sizeof *cm);
  cm->loop = loop;
  cm->delivery = delivery;
  cm->delay_ms = delay_ms;
  cm->fill = fill;
  return uv_check_init(loop, &cm->turn_end);
}

int commit_start(struct commit *cm) {
  int rc = uv_check_start(&cm->turn_end, on_turn_end);
  if (rc == 0)
    uv_unref((uv_handle_t *)&cm->turn_end); /* it keeps nothing alive */
  return rc;
}

enum commit_taken commit_take(struct commit *cm, struct http_response *resp,
                              const char *key, size_t key_len) {
  if (!delivery_can_write(cm->delivery)) {
    *resp = commit_not_recorded;
    return COMMIT_REFUSED;
  }
  cm->ok = *resp;
  if (key_len > 0) {
    if (keys_find(&cm->turn_keys, key, key_len) ||
        (cm->writing && keys_find(&cm->write.keys, key, key_len))) {
      *resp = commit_in_progress;
      return COMMIT_CONFLICT;
    }
    if (cm->turn_keys.len >= SCRIPTS_IDEM_MAX ||
        keys_push(&cm->turn_keys, key, key_len, cm->tickets + 1)) {
      *resp = commit_not_recorded;
      return COMMIT_REFUSED;
    }
    resp->ticket = ++cm->tickets;
  } else {
    if (cm->turn_plain++ == 0)
      cm->turn = ++cm->tickets;
    resp->ticket = cm->turn;
  }
  cm->turn_n++;
  resp->held = true;
  return COMMIT_HELD;
}

/* The /incr of a write (or of a turn no write could take) are answered:
 * those without a key together, each keyed one alone. */
static void answer(struct commit *cm, uint64_t ticket, uint64_t plain,
                   struct commit_keys *keys, bool held) {
  if (plain > 0)
    cm->fill(cm, ticket, plain, held, held ? &cm->ok : &commit_not_recorded);
  for (size_t i = 0; i < keys->len; i++) {
    bool replay = held && keys->replayed[i] == '1';
    cm->fill(cm, keys->tickets[i], replay ? 0 : 1, held,
             !held    ? &commit_not_recorded
             : replay ? &commit_replayed
                      : &cm->ok);
  }
  keys_clear(keys);
}

/* The open turn's /incr go to Redis as one journal write. While a write is
 * in flight the turn stays open, and the /incr of the turns that follow
 * join it: one write carries all that came during the round trip. With no
 * connection ready they are answered 503 at once, which lets their
 * connections parse what follows; that may open a new turn, written (or
 * answered) too. */
static void write_turn(struct commit *cm) {
  while (cm->turn_n > 0) {
    bool can = delivery_can_write(cm->delivery);
    if (can && cm->writing)
      return; /* joined by the next turns, written when it is answered */
    uint64_t ticket = cm->turn, plain = cm->turn_plain, n = cm->turn_n;
    cm->turn_n = cm->turn_plain = 0;
    /* The turn's keys go with its write; the write's (empty) arrays are
     * the next turn's. */
    struct commit_keys keys = cm->turn_keys;
    cm->turn_keys = cm->write.keys;
    cm->write.keys = keys;
    uint64_t deadline = uv_now(cm->loop) + cm->delay_ms;
    uint64_t seq = can ? delivery_write(cm->delivery, deadline, n,
                                        cm->write.keys.ids, cm->write.keys.len)
                       : 0;
    if (!seq) {
      answer(cm, ticket, plain, &cm->write.keys, false);
      continue;
    }
    cm->writing = true;
    cm->write.seq = seq;
    cm->write.ticket = ticket;
    cm->write.plain = plain;
    cm->write.n = n;
  }
}

/* After the loop has run every callback of this turn. Moves that fell due
 * ride with the turn's write, or go alone after it. */
static void on_turn_end(uv_check_t *check) {
  struct commit *cm = container_of(check, struct commit, turn_end);
  write_turn(cm);
  delivery_turn_end(cm->delivery);
}

void commit_written(struct commit *cm, uint64_t seq, bool held) {
  /* In write order, one for each write sent (delivery.h). */
  if (!cm->writing || cm->write.seq != seq)
    return;
  cm->writing = false;
  answer(cm, cm->write.ticket, cm->write.plain, &cm->write.keys, held);
}

void commit_replays(struct commit *cm, uint64_t seq, const char *flags,
                    size_t len) {
  if (!cm->writing || cm->write.seq != seq || len != cm->write.keys.len)
    return;
  memcpy(cm->write.keys.replayed, flags, len);
}

uint64_t commit_holding(const struct commit *cm) {
  return cm->turn_n + (cm->writing ? cm->write.n : 0);
}

void commit_close(struct commit *cm) {
  if (!uv_is_closing((uv_handle_t *)&cm->turn_end))
    uv_close((uv_handle_t *)&cm->turn_end, NULL);
  cm->writing = false; /* replies that still come find nothing held */
  cm->turn_n = cm->turn_plain = 0;
  keys_free(&cm->turn_keys);
  keys_free(&cm->write.keys);
}
