/* What each request gets: pure decisions from the request and a snapshot of
 * the service's state, no sockets and no side effects. The caller performs
 * the action a result names (queue an increment, render metrics). */
#ifndef GRACEFULD_ROUTES_H
#define GRACEFULD_ROUTES_H

#include <stdbool.h>

#include "http/http.h"

enum route {
  ROUTE_INCR,
  ROUTE_HEALTHZ,
  ROUTE_READYZ,
  ROUTE_METRICS,
  ROUTE_OTHER, /* unknown paths and requests that failed to parse */
  ROUTE_COUNT
};

enum route_action {
  ACTION_NONE,
  ACTION_INCR,    /* queue one increment; the response is the 200 */
  ACTION_METRICS, /* render the metrics into the response body */
};

struct routes_state {
  bool ready;      /* Redis reached once and no shutdown signal */
  bool queue_full; /* MAX_PENDING increments pending */
};

struct route_result {
  enum route route;
  enum route_action action;
  /* ACTION_INCR: the request's Idempotency-Key (idem_len 0: none), in the
   * request's memory: copy it to keep it. */
  const char *idem_key;
  size_t idem_len;
  struct http_response response;
};

/* Decides the answer to req. The response's strings are static. */
void routes_handle(const struct http_request *req,
                   const struct routes_state *state, struct route_result *out);

/* The answer to a request that could not be taken (400, 408, 413, 414, 431,
 * or 503 when the increment could not be queued). */
void routes_error(uint16_t status, struct route_result *out);

/* The route a path names. */
enum route routes_lookup(const char *path, size_t len);

const char *routes_name(enum route r);

#endif
