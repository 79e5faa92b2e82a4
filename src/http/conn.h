/* The lifecycle of one HTTP connection, from accept to close. Pure: the
 * connection (conn_io.c) feeds it events and performs the effects each step
 * names, so the whole lifecycle reads here, on one screen:
 *
 *   reading --socket full--> writing --write done--> reading
 *   reading --response not ready--> holding --filled in--> reading
 *   writing --response not ready--> writing held --write done--> holding
 *   writing held --filled in--> writing filled --write done--> reading
 *   reading|writing --last response queued--> shutting
 *   reading --the client's FIN--> shutting
 *   shutting --our FIN is out--> lingering (closing if the client's FIN came)
 *   lingering --the client's FIN, or LINGER_MS once it took all--> closing
 *   any --error, or no byte moved for IDLE_TIMEOUT_MS--> closing
 *
 * Responses go out strictly in request order: a connection parses and
 * answers only in reading, so a response the socket cannot take holds every
 * later pipelined request behind it, unread in the buffer. A response that
 * is not ready yet (a 200 held until Redis acknowledges a write) fits the
 * same way: a state beside writing, entered from reading when the handler
 * has no answer yet, and left for reading once the response is filled in,
 * exactly as a completed write is. When the response before it is still
 * being written, the hold begins once that write is done (writing held),
 * and a response filled in meanwhile goes out then (writing filled).
 * Holding goes on reading, into the buffer's free end and without parsing,
 * so that a client waiting for its response costs no change to what the
 * loop polls; the client's FIN while holding is kept for when the buffer is
 * used up.
 *
 * "Held" is this one notion: a connection holds a response exactly in
 * holding and writing held (conn_holds); the server finds those by ticket
 * to fill them in.
 *
 * Once the last response is queued the connection never stops reading: what the
 * client still sends is read and thrown away until its FIN, so the close that
 * follows is a FIN, never a reset. */
#ifndef GRACEFULD_CONN_H
#define GRACEFULD_CONN_H

#include <stdbool.h>

enum conn_state {
  CONN_READING,        /* reading and answering requests; nothing waits */
  CONN_WRITING,        /* the socket is full: a write is pending, no reading */
  CONN_WRITING_HELD,   /* writing, and the next response is not ready yet */
  CONN_WRITING_FILLED, /* writing, and the next response was filled in */
  CONN_HOLDING,        /* a response is not ready yet: reading ahead */
  CONN_SHUTTING,       /* the last response is queued, our FIN behind it */
  CONN_LINGERING,      /* our FIN is out; waiting for the client's */
  CONN_CLOSING,        /* the handles are closing */
  CONN_STATE_COUNT
};

enum conn_event {
  CONN_WRITE_BLOCKED, /* the socket did not take a whole response */
  CONN_WRITE_DONE,    /* the pending write completed */
  CONN_LAST_QUEUED,   /* the response that ends the connection is queued */
  CONN_PEER_EOF,      /* the client's FIN: it sends nothing more */
  CONN_SHUTDOWN_DONE, /* our FIN is out, after every response */
  CONN_EXPIRED,       /* the write stalled or the linger ran out */
  CONN_FAILED,        /* a socket error */
  CONN_HELD,          /* the handler has no response yet for a request */
  CONN_FILLED,        /* the held response has been filled in */
  CONN_EVENT_COUNT
};

/* What the connection does on a step, a set of these bits. */
enum conn_effect {
  CONN_DO_NOTHING = 0,
  CONN_DO_READ = 1 << 0, /* (keep) reading; holding: into the free end */
  CONN_DO_STOP_READING = 1 << 1,
  CONN_DO_DISCARD = 1 << 2,      /* read, throwing input away */
  CONN_DO_QUEUE_FILLED = 1 << 3, /* queue the filled-in response */
  CONN_DO_PROCESS = 1 << 4,      /* answer what the buffer holds */
  CONN_DO_SHUTDOWN = 1 << 5,     /* queue our FIN after the last write */
  CONN_DO_WATCH_WRITE = 1 << 6,  /* time out a write that makes no progress */
  CONN_DO_LINGER = 1 << 7,       /* time out the wait for the client's FIN */
  CONN_DO_CLOSE = 1 << 8,
};

struct conn_life {
  enum conn_state state;
  bool peer_eof; /* the client's FIN has come */
};

void conn_life_init(struct conn_life *l);

/* Moves l on by e; returns the effects to perform, in the order the bits
 * are listed above. An event that does not apply in a state changes nothing
 * and returns CONN_DO_NOTHING. */
unsigned conn_step(struct conn_life *l, enum conn_event e);

/* Whether the connection holds a response: asked for, not filled in yet. */
bool conn_holds(const struct conn_life *l);

const char *conn_state_name(enum conn_state s);

#endif
