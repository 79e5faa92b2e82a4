#include "http/routes.h"

#include <string.h>

#define BODY(s) s, sizeof(s) - 1

static const struct {
  const char *path;
  size_t len;
  const char *allow; /* the Allow header of a 405 */
} paths[ROUTE_OTHER] = {
    [ROUTE_INCR] = {"/incr", 5, "Allow: GET, POST\r\n"},
    [ROUTE_HEALTHZ] = {"/healthz", 8, "Allow: GET, HEAD\r\n"},
    [ROUTE_READYZ] = {"/readyz", 7, "Allow: GET, HEAD\r\n"},
    [ROUTE_METRICS] = {"/metrics", 8, "Allow: GET, HEAD\r\n"},
};

enum route routes_lookup(const char *path, size_t len) {
  for (int r = 0; r < ROUTE_OTHER; r++) {
    if (len == paths[r].len && memcmp(path, paths[r].path, len) == 0)
      return (enum route)r;
  }
  return ROUTE_OTHER;
}

const char *routes_name(enum route r) {
  static const char *const names[ROUTE_COUNT] = {"incr", "healthz", "readyz",
                                                 "metrics", "other"};
  return (unsigned)r < ROUTE_COUNT ? names[r] : "other";
}

static void set_response(struct route_result *out, uint16_t status,
                         const char *body, size_t body_len) {
  out->response.status = status;
  out->response.body = body;
  out->response.body_len = body_len;
}

void routes_error(uint16_t status, struct route_result *out) {
  memset(out, 0, sizeof *out);
  out->route = ROUTE_OTHER;
  switch (status) {
  case 408:
    set_response(out, status, BODY("request timeout\n"));
    break;
  case 413:
    set_response(out, status, BODY("body too large\n"));
    break;
  case 414:
    set_response(out, status, BODY("request target too long\n"));
    break;
  case 431:
    set_response(out, status, BODY("header block too large\n"));
    break;
  case 503:
    set_response(out, status, BODY("too many pending increments\n"));
    out->response.extra_headers = "Retry-After: 1\r\n";
    break;
  default:
    set_response(out, 400, BODY("bad request\n"));
    break;
  }
}

void routes_handle(const struct http_request *req,
                   const struct routes_state *state, struct route_result *out) {
  memset(out, 0, sizeof *out);
  out->route = req->path_truncated ? ROUTE_OTHER
                                   : routes_lookup(req->path, req->path_len);
  bool get = req->method == HTTP_GET;
  bool head = req->method == HTTP_HEAD;

  /* A HEAD request gets no body, whatever the answer. */
  out->response.head = head;
  if (out->route == ROUTE_OTHER) {
    set_response(out, 404, BODY("not found\n"));
    return;
  }
  if (out->route == ROUTE_INCR ? !(get || req->method == HTTP_POST)
                               : !(get || head)) {
    set_response(out, 405, BODY("method not allowed\n"));
    out->response.extra_headers = paths[out->route].allow;
    return;
  }
  switch (out->route) {
  case ROUTE_INCR:
    if (req->idem_bad) {
      set_response(out, 400,
                   BODY("Idempotency-Key must be one header of 1 to 255 "
                        "visible ASCII characters\n"));
      return;
    }
    if (state->queue_full) {
      routes_error(503, out);
      out->route = ROUTE_INCR;
      return;
    }
    out->action = ACTION_INCR;
    out->idem_key = req->idem_key;
    out->idem_len = req->idem_len;
    set_response(out, 200, BODY("ok\n"));
    return;
  case ROUTE_HEALTHZ:
    set_response(out, 200, BODY("ok\n"));
    return;
  case ROUTE_READYZ:
    if (state->ready)
      set_response(out, 200, BODY("ready\n"));
    else
      set_response(out, 503, BODY("not ready\n"));
    return;
  case ROUTE_METRICS:
    out->action = ACTION_METRICS;
    set_response(out, 200, NULL, 0);
    out->response.content_type = "text/plain; version=0.0.4; charset=utf-8";
    return;
  default:
    return;
  }
}
