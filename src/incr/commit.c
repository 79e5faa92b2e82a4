#include "incr/commit.h"

#include <string.h>

#include "base.h"

const struct http_response commit_not_recorded = {
    .status = 503,
    .extra_headers = "Retry-After: 1\r\n",
    .body = "not recorded, try again\n",
    .body_len = sizeof "not recorded, try again\n" - 1,
};

static void on_turn_end(uv_check_t *check);

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

bool commit_take(struct commit *cm, struct http_response *resp) {
  if (!delivery_can_write(cm->delivery)) {
    *resp = commit_not_recorded;
    return false;
  }
  cm->ok = *resp;
  if (cm->turn_n++ == 0)
    cm->turn = ++cm->tickets;
  resp->held = true;
  resp->ticket = cm->turn;
  return true;
}

static void answer(struct commit *cm, uint64_t ticket, uint64_t n, bool held) {
  cm->fill(cm, ticket, n, held, held ? &cm->ok : &commit_not_recorded);
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
    uint64_t ticket = cm->turn, n = cm->turn_n;
    cm->turn_n = 0;
    uint64_t deadline = uv_now(cm->loop) + cm->delay_ms;
    uint64_t seq = can ? delivery_write(cm->delivery, deadline, n) : 0;
    if (!seq) {
      answer(cm, ticket, n, false);
      continue;
    }
    cm->writing = true;
    cm->write = (struct commit_write){seq, ticket, n};
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
  answer(cm, cm->write.ticket, cm->write.n, held);
}

uint64_t commit_holding(const struct commit *cm) {
  return cm->turn_n + (cm->writing ? cm->write.n : 0);
}

void commit_close(struct commit *cm) {
  if (!uv_is_closing((uv_handle_t *)&cm->turn_end))
    uv_close((uv_handle_t *)&cm->turn_end, NULL);
}
