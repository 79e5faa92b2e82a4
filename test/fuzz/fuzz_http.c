/* libFuzzer target: arbitrary bytes through one connection's parse-and-route
 * path (http.c, routes.c, metrics.c and llhttp in strict mode), the way
 * server.c drives it, without sockets.
 *
 * Input layout: byte 0 seeds how the rest is cut into reads, byte 1 picks a
 * set of limits, the rest is what the client sent. The bytes are parsed
 * twice, in one read and cut into small reads, and both runs must give the
 * same requests, and an error at the same place, in the same order: what a
 * client sends must not mean something else because of how TCP split it.
 * (Which status an error gets may differ when a request breaks two rules:
 * llhttp reports a bad byte in a span at once, a limit on the span's length
 * when the span, or the read, ends.) Every response head is
 * formatted and checked against HTTP_HEAD_MAX. Any crash, sanitizer report
 * or broken assertion is a finding. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"
#include "metrics.h"
#include "http/routes.h"

#define MAX_OUTCOMES 4096

/* What one step of the connection produced: a request or an error. */
struct outcome {
  uint8_t kind; /* HTTP_PARSE_REQUEST or HTTP_PARSE_ERROR */
  uint8_t method;
  uint8_t version_major;
  uint8_t version_minor;
  bool keep_alive;
  bool upgrade;
  bool path_truncated;
  uint16_t path_len;
  char path[HTTP_PATH_MAX];
};

struct run {
  struct outcome out[MAX_OUTCOMES];
  size_t n;
  bool closed; /* the connection would be closed: nothing more is parsed */
};

static const struct http_limits limit_sets[] = {
    {8192, 100, 2048, 1024}, /* the defaults */
    {256, 4, 16, 0},         /* the smallest the settings allow */
    {300, 8, 40, 16},
    {1048576, 10000, 1048576, 1073741824},
};

static struct metrics metrics;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_http: check failed at %s:%d: %s\n", __FILE__,      \
              __LINE__, #cond);                                                \
      abort();                                                                 \
    }                                                                          \
  } while (0)

/* Formats the head of resp as server.c would and checks its bound. */
static void format(const struct http_response *resp, bool keep_alive) {
  char head[HTTP_HEAD_MAX + 64];
  enum http_connection conn = keep_alive ? HTTP_CONN_DEFAULT : HTTP_CONN_CLOSE;
  size_t n = http_format_head(head, resp, conn);
  CHECK(n <= HTTP_HEAD_MAX);
  CHECK(memcmp(head, "HTTP/1.1 ", 9) == 0);
  CHECK(n >= 4 && memcmp(head + n - 4, "\r\n\r\n", 4) == 0);
}

static void route(struct run *run, const struct http_request *req) {
  struct routes_state state = {.ready = run->n % 2 == 0,
                               .queue_full = run->n % 3 == 2};
  struct route_result r;
  routes_handle(req, &state, &r);
  CHECK(r.route < ROUTE_COUNT);
  if (r.action == ACTION_METRICS) {
    struct server_stats srv = {0};
    struct redis_link_stats link = {0};
    struct counter_stats cs = {0};
    struct metrics_view g = {.server = &srv,
                             .link = &link,
                             .counter = &cs,
                             .pending = run->n,
                             .redis_node = "127.0.0.1:6379",
                             .redis_transport = "tls",
                             .phase = PHASE_RUNNING};
    size_t len;
    char *body = metrics_render(&metrics, &g, &len);
    CHECK(body != NULL && len > 0 && strlen(body) == len);
    r.response.body = body;
    r.response.body_len = len;
    format(&r.response, req->keep_alive && !req->upgrade);
    free(body);
  } else {
    format(&r.response, req->keep_alive && !req->upgrade);
  }
  metrics_count_request(&metrics, r.route, r.response.status);
}

static void record(struct run *run, enum http_parse_result kind,
                   const struct http_parser *p) {
  if (run->n == MAX_OUTCOMES) {
    run->closed = true; /* enough: both runs stop at the same request */
    return;
  }
  struct outcome *o = &run->out[run->n];
  memset(o, 0, sizeof *o);
  o->kind = (uint8_t)kind;
  if (kind == HTTP_PARSE_ERROR) {
    uint16_t status = p->error_status;
    CHECK(status == 400 || status == 413 || status == 414 || status == 431);
    struct route_result r;
    routes_error(status, &r);
    CHECK(r.response.status == status);
    format(&r.response, false);
    metrics_count_request(&metrics, r.route, r.response.status);
    run->closed = true;
  } else {
    const struct http_request *req = &p->req;
    CHECK(req->path_len <= HTTP_PATH_MAX);
    CHECK(req->version_major == 1 && req->version_minor <= 1);
    o->method = req->method;
    o->version_major = req->version_major;
    o->version_minor = req->version_minor;
    o->keep_alive = req->keep_alive;
    o->upgrade = req->upgrade;
    o->path_truncated = req->path_truncated;
    o->path_len = req->path_len;
    memcpy(o->path, req->path, req->path_len);
    route(run, req);
    /* server.c answers with Connection: close and parses no further. */
    if (!req->keep_alive || req->upgrade)
      run->closed = true;
  }
  run->n++;
}

/* One read's bytes, parsed as server.c's process() does: request after
 * request until the bytes are used up or the connection must close. */
static void feed(struct run *run, struct http_parser *p, const char *data,
                 size_t len) {
  size_t pos = 0;
  while (!run->closed && pos < len) {
    size_t used = (size_t)-1;
    enum http_parse_result r = http_parse(p, data + pos, len - pos, &used);
    CHECK(used <= len - pos);
    pos += used;
    if (r == HTTP_PARSE_MORE) {
      CHECK(pos == len);
      break;
    }
    record(run, r, p);
  }
}

static struct run whole, pieces;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  uint32_t rng = (uint32_t)data[0] * 2654435761u + 1;
  const struct http_limits *limits =
      &limit_sets[data[1] % (sizeof limit_sets / sizeof limit_sets[0])];
  const char *msg = (const char *)data + 2;
  size_t len = size - 2;
  /* A copy exactly as long as the message, so that ASan sees any read
   * past its end. */
  char *copy = malloc(len ? len : 1);
  CHECK(copy != NULL);
  memcpy(copy, msg, len);

  struct http_parser p;
  memset(&whole, 0, sizeof whole);
  http_parser_init(&p, limits);
  feed(&whole, &p, copy, len);

  memset(&pieces, 0, sizeof pieces);
  http_parser_init(&p, limits);
  size_t pos = 0;
  while (pos < len && !pieces.closed) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    size_t n = 1 + rng % 17;
    if (n > len - pos)
      n = len - pos;
    /* Each read in a buffer of its own, as exact as the copy above. */
    char *piece = malloc(n);
    CHECK(piece != NULL);
    memcpy(piece, copy + pos, n);
    feed(&pieces, &p, piece, n);
    free(piece);
    pos += n;
  }
  free(copy);

  if (whole.n != pieces.n) {
    fprintf(stderr, "fuzz_http: %zu outcomes in one read, %zu in pieces\n",
            whole.n, pieces.n);
    abort();
  }
  for (size_t i = 0; i < whole.n; i++) {
    if (memcmp(&whole.out[i], &pieces.out[i], sizeof whole.out[i]) != 0) {
      fprintf(stderr, "fuzz_http: outcome %zu differs: kind %u/%u\n", i,
              whole.out[i].kind, pieces.out[i].kind);
      abort();
    }
  }
  return 0;
}
