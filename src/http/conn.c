#include "http/conn.h"

void conn_life_init(struct conn_life *l) {
  l->state = CONN_READING;
  l->peer_eof = false;
}

static unsigned go(struct conn_life *l, enum conn_state s, unsigned effects) {
  l->state = s;
  return effects;
}

/* Holding begins: what follows the request is read ahead, and parsed in
 * pipeline order once the response is filled in; after the client's FIN
 * there is nothing more to read. */
static unsigned hold(struct conn_life *l) {
  return go(l, CONN_HOLDING, l->peer_eof ? CONN_DO_NOTHING : CONN_DO_READ);
}

unsigned conn_step(struct conn_life *l, enum conn_event e) {
  if (l->state == CONN_CLOSING)
    return CONN_DO_NOTHING;
  if (e == CONN_FAILED)
    return go(l, CONN_CLOSING, CONN_DO_CLOSE);
  switch (l->state) {
  case CONN_READING:
    switch (e) {
    case CONN_WRITE_BLOCKED:
      return go(l, CONN_WRITING, CONN_DO_STOP_READING | CONN_DO_WATCH_WRITE);
    case CONN_LAST_QUEUED:
      return go(l, CONN_SHUTTING,
                CONN_DO_DISCARD | CONN_DO_SHUTDOWN | CONN_DO_WATCH_WRITE);
    case CONN_HELD:
      return hold(l);
    case CONN_PEER_EOF:
      /* A request the client began and never finished is not answered. */
      l->peer_eof = true;
      return go(l, CONN_SHUTTING,
                CONN_DO_STOP_READING | CONN_DO_SHUTDOWN | CONN_DO_WATCH_WRITE);
    default:
      return CONN_DO_NOTHING;
    }
  case CONN_WRITING:
    switch (e) {
    case CONN_WRITE_DONE:
      /* The rest of the buffer first; reading resumes once it is used. */
      return go(l, CONN_READING, CONN_DO_PROCESS);
    case CONN_LAST_QUEUED:
      return go(l, CONN_SHUTTING, CONN_DO_DISCARD | CONN_DO_SHUTDOWN);
    case CONN_HELD:
      /* What was answered before it goes out first. */
      return go(l, CONN_WRITING_HELD, CONN_DO_NOTHING);
    case CONN_EXPIRED:
      return go(l, CONN_CLOSING, CONN_DO_CLOSE);
    default:
      return CONN_DO_NOTHING;
    }
  case CONN_WRITING_HELD:
    switch (e) {
    case CONN_WRITE_DONE:
      return hold(l);
    case CONN_FILLED:
      return go(l, CONN_WRITING_FILLED, CONN_DO_NOTHING);
    case CONN_EXPIRED:
      return go(l, CONN_CLOSING, CONN_DO_CLOSE);
    default:
      return CONN_DO_NOTHING;
    }
  case CONN_WRITING_FILLED:
    switch (e) {
    case CONN_WRITE_DONE:
      return go(l, CONN_READING, CONN_DO_QUEUE_FILLED | CONN_DO_PROCESS);
    case CONN_EXPIRED:
      return go(l, CONN_CLOSING, CONN_DO_CLOSE);
    default:
      return CONN_DO_NOTHING;
    }
  case CONN_HOLDING:
    switch (e) {
    case CONN_FILLED:
      /* Queued like any response, then the buffer as after a write; the
       * client's FIN, if it came, once the buffer is used up. */
      return go(l, CONN_READING, CONN_DO_QUEUE_FILLED | CONN_DO_PROCESS);
    case CONN_PEER_EOF:
      /* The requests it sent before are still answered. */
      l->peer_eof = true;
      return CONN_DO_STOP_READING;
    default:
      return CONN_DO_NOTHING;
    }
  case CONN_SHUTTING:
    switch (e) {
    case CONN_PEER_EOF:
      l->peer_eof = true;
      return CONN_DO_STOP_READING;
    case CONN_SHUTDOWN_DONE:
      if (l->peer_eof)
        return go(l, CONN_CLOSING, CONN_DO_CLOSE);
      return go(l, CONN_LINGERING, CONN_DO_LINGER);
    case CONN_EXPIRED:
      return go(l, CONN_CLOSING, CONN_DO_CLOSE);
    default:
      return CONN_DO_NOTHING;
    }
  case CONN_LINGERING:
    switch (e) {
    case CONN_PEER_EOF:
      l->peer_eof = true;
      return go(l, CONN_CLOSING, CONN_DO_CLOSE);
    case CONN_EXPIRED:
      return go(l, CONN_CLOSING, CONN_DO_CLOSE);
    default:
      return CONN_DO_NOTHING;
    }
  default:
    return CONN_DO_NOTHING;
  }
}

bool conn_holds(const struct conn_life *l) {
  return l->state == CONN_HOLDING || l->state == CONN_WRITING_HELD;
}

const char *conn_state_name(enum conn_state s) {
  static const char *const names[CONN_STATE_COUNT] = {
      "reading", "writing",  "writing held", "writing filled",
      "holding", "shutting", "lingering",    "closing"};
  return (unsigned)s < CONN_STATE_COUNT ? names[s] : "?";
}
