/* routes_handle and routes_error: the answer each request gets, from the
 * request and a snapshot of the service's state. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "http/routes.h"

static const struct routes_state ready = {.ready = true, .queue_full = false};
static const struct routes_state unready = {.ready = false,
                                            .queue_full = false};
static const struct routes_state full = {.ready = true, .queue_full = true};

static struct route_result result;

static void handle(uint8_t method, const char *path,
                   const struct routes_state *state) {
  struct http_request req;
  memset(&req, 0, sizeof req);
  req.method = method;
  req.version_major = 1;
  req.version_minor = 1;
  req.keep_alive = true;
  req.path_len = (uint16_t)strlen(path);
  assert_true(req.path_len <= HTTP_PATH_MAX);
  memcpy(req.path, path, req.path_len);
  memset(&result, 0xa5, sizeof result); /* no field is left as it was */
  routes_handle(&req, state, &result);
}

/* Handles a request given as the bytes a client sends, through http_parse,
 * so that the path is exactly what the parser makes of the target. */
static void handle_raw(const char *raw, const struct routes_state *state) {
  static const struct http_limits limits = {8192, 100, 2048, 1024};
  struct http_parser p;
  size_t used;
  http_parser_init(&p, &limits);
  assert_int_equal(http_parse(&p, raw, strlen(raw), &used), HTTP_PARSE_REQUEST);
  memset(&result, 0xa5, sizeof result);
  routes_handle(&p.req, state, &result);
}

static void expect_body(const char *body) {
  assert_int_equal(result.response.body_len, strlen(body));
  assert_memory_equal(result.response.body, body, strlen(body));
}

static void expect_plain(uint16_t status, const char *body) {
  assert_int_equal(result.response.status, status);
  expect_body(body);
  assert_null(result.response.content_type);
  assert_false(result.response.body_owned);
}

/* ---- /incr -------------------------------------------------------------- */

static void test_routes_incr_get_queues_an_increment(void **state) {
  (void)state;
  handle(HTTP_GET, "/incr", &ready);
  assert_int_equal(result.route, ROUTE_INCR);
  assert_int_equal(result.action, ACTION_INCR);
  expect_plain(200, "ok\n");
  assert_false(result.response.head);
  assert_null(result.response.extra_headers);
}

static void test_routes_incr_post_queues_an_increment(void **state) {
  (void)state;
  handle(HTTP_POST, "/incr", &ready);
  assert_int_equal(result.route, ROUTE_INCR);
  assert_int_equal(result.action, ACTION_INCR);
  expect_plain(200, "ok\n");
  assert_null(result.response.extra_headers);
}

static void test_routes_incr_is_served_while_not_ready(void **state) {
  (void)state;
  /* Unready (delaying, or Redis not reached yet) still takes increments. */
  handle(HTTP_GET, "/incr", &unready);
  assert_int_equal(result.action, ACTION_INCR);
  assert_int_equal(result.response.status, 200);
}

static void test_routes_incr_refuses_other_methods_with_405(void **state) {
  (void)state;
  static const uint8_t methods[] = {HTTP_HEAD, HTTP_DELETE, HTTP_PUT,
                                    HTTP_OPTIONS, HTTP_PATCH};
  for (size_t i = 0; i < sizeof methods; i++) {
    handle(methods[i], "/incr", &ready);
    assert_int_equal(result.route, ROUTE_INCR);
    assert_int_equal(result.action, ACTION_NONE);
    expect_plain(405, "method not allowed\n");
    assert_string_equal(result.response.extra_headers, "Allow: GET, POST\r\n");
  }
}

static void test_routes_405_to_head_request_has_no_body(void **state) {
  (void)state;
  /* A response to HEAD never carries a body, whatever its status. */
  handle(HTTP_HEAD, "/incr", &ready);
  assert_int_equal(result.response.status, 405);
  assert_true(result.response.head);
  handle(HTTP_DELETE, "/incr", &ready);
  assert_false(result.response.head);
}

static void test_routes_incr_refuses_with_503_when_queue_is_full(void **state) {
  (void)state;
  handle(HTTP_GET, "/incr", &full);
  assert_int_equal(result.route, ROUTE_INCR);
  assert_int_equal(result.action, ACTION_NONE);
  expect_plain(503, "too many pending increments\n");
  assert_string_equal(result.response.extra_headers, "Retry-After: 1\r\n");
  handle(HTTP_POST, "/incr", &full);
  assert_int_equal(result.action, ACTION_NONE);
  assert_int_equal(result.response.status, 503);
}

static void test_routes_incr_passes_its_idempotency_key_on(void **state) {
  (void)state;
  handle_raw("GET /incr HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-1\r\n\r\n",
             &ready);
  assert_int_equal(result.route, ROUTE_INCR);
  assert_int_equal(result.action, ACTION_INCR);
  expect_plain(200, "ok\n");
  assert_int_equal(result.idem_len, 3);
  assert_memory_equal(result.idem_key, "k-1", 3);
  handle(HTTP_GET, "/incr", &ready);
  assert_int_equal(result.idem_len, 0);
}

static void
test_routes_incr_refuses_a_bad_idempotency_key_with_400(void **state) {
  (void)state;
  handle_raw("GET /incr HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\r\n"
             "Idempotency-Key: b\r\n\r\n",
             &ready);
  assert_int_equal(result.route, ROUTE_INCR);
  assert_int_equal(result.action, ACTION_NONE);
  assert_int_equal(result.response.status, 400);
}

/* ---- Probes and metrics ------------------------------------------------- */

static void test_routes_healthz_answers_get_and_head(void **state) {
  (void)state;
  handle(HTTP_GET, "/healthz", &ready);
  assert_int_equal(result.route, ROUTE_HEALTHZ);
  assert_int_equal(result.action, ACTION_NONE);
  expect_plain(200, "ok\n");
  assert_false(result.response.head);
  handle(HTTP_HEAD, "/healthz", &unready);
  assert_int_equal(result.route, ROUTE_HEALTHZ);
  expect_plain(200, "ok\n");
  assert_true(result.response.head);
  /* Liveness does not depend on readiness or the queue. */
  handle(HTTP_GET, "/healthz", &full);
  assert_int_equal(result.response.status, 200);
}

static void test_routes_readyz_answers_200_when_ready(void **state) {
  (void)state;
  handle(HTTP_GET, "/readyz", &ready);
  assert_int_equal(result.route, ROUTE_READYZ);
  assert_int_equal(result.action, ACTION_NONE);
  expect_plain(200, "ready\n");
  assert_false(result.response.head);
  handle(HTTP_HEAD, "/readyz", &ready);
  expect_plain(200, "ready\n");
  assert_true(result.response.head);
}

static void test_routes_readyz_answers_503_when_not_ready(void **state) {
  (void)state;
  handle(HTTP_GET, "/readyz", &unready);
  assert_int_equal(result.route, ROUTE_READYZ);
  expect_plain(503, "not ready\n");
  assert_false(result.response.head);
  handle(HTTP_HEAD, "/readyz", &unready);
  expect_plain(503, "not ready\n");
  assert_true(result.response.head);
}

static void test_routes_metrics_answers_get_and_head(void **state) {
  (void)state;
  handle(HTTP_GET, "/metrics", &ready);
  assert_int_equal(result.route, ROUTE_METRICS);
  assert_int_equal(result.action, ACTION_METRICS);
  assert_int_equal(result.response.status, 200);
  assert_string_equal(result.response.content_type,
                      "text/plain; version=0.0.4; charset=utf-8");
  assert_false(result.response.head);
  handle(HTTP_HEAD, "/metrics", &unready);
  assert_int_equal(result.action, ACTION_METRICS);
  assert_int_equal(result.response.status, 200);
  assert_true(result.response.head);
}

static void test_routes_probes_refuse_post_with_405(void **state) {
  (void)state;
  static const char *const paths[] = {"/healthz", "/readyz", "/metrics"};
  static const enum route routes[] = {ROUTE_HEALTHZ, ROUTE_READYZ,
                                      ROUTE_METRICS};
  for (size_t i = 0; i < 3; i++) {
    handle(HTTP_POST, paths[i], &ready);
    assert_int_equal(result.route, routes[i]);
    assert_int_equal(result.action, ACTION_NONE);
    expect_plain(405, "method not allowed\n");
    assert_string_equal(result.response.extra_headers, "Allow: GET, HEAD\r\n");
    handle(HTTP_DELETE, paths[i], &ready);
    assert_int_equal(result.response.status, 405);
    assert_string_equal(result.response.extra_headers, "Allow: GET, HEAD\r\n");
  }
}

/* ---- Paths -------------------------------------------------------------- */

static void test_routes_unknown_path_is_404(void **state) {
  (void)state;
  static const char *const paths[] = {
      "/",      "/incr/", "/incrx",    "/INCR",     "/inc",
      "//incr", "incr",   "/healthz/", "/metricsz", "/readyz.json"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    handle(HTTP_GET, paths[i], &ready);
    assert_int_equal(result.route, ROUTE_OTHER);
    assert_int_equal(result.action, ACTION_NONE);
    expect_plain(404, "not found\n");
  }
  /* Any method: an unknown path is not found, rather than not allowed. */
  handle(HTTP_POST, "/nope", &ready);
  assert_int_equal(result.response.status, 404);
  handle(HTTP_HEAD, "/nope", &ready);
  assert_int_equal(result.response.status, 404);
  assert_true(result.response.head);
}

static void test_routes_truncated_path_is_404(void **state) {
  (void)state;
  struct http_request req;
  memset(&req, 0, sizeof req);
  req.method = HTTP_GET;
  memcpy(req.path, "/incr", 5);
  req.path_len = 5;
  req.path_truncated = true; /* the first bytes match, the rest did not fit */
  routes_handle(&req, &ready, &result);
  assert_int_equal(result.route, ROUTE_OTHER);
  assert_int_equal(result.action, ACTION_NONE);
  assert_int_equal(result.response.status, 404);
}

static void test_routes_ignore_query_string(void **state) {
  (void)state;
  handle_raw("GET /incr?n=1 HTTP/1.1\r\nHost: h\r\n\r\n", &ready);
  assert_int_equal(result.action, ACTION_INCR);
  handle_raw("POST /incr? HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
             &ready);
  assert_int_equal(result.action, ACTION_INCR);
  handle_raw("GET /incr#top HTTP/1.1\r\nHost: h\r\n\r\n", &ready);
  assert_int_equal(result.action, ACTION_INCR);
  handle_raw("GET /readyz?verbose=1 HTTP/1.1\r\nHost: h\r\n\r\n", &unready);
  assert_int_equal(result.route, ROUTE_READYZ);
  assert_int_equal(result.response.status, 503);
  handle_raw("HEAD /healthz?x HTTP/1.1\r\nHost: h\r\n\r\n", &ready);
  assert_int_equal(result.route, ROUTE_HEALTHZ);
  assert_true(result.response.head);
  handle_raw("GET /metrics?name[]=x HTTP/1.1\r\nHost: h\r\n\r\n", &ready);
  assert_int_equal(result.action, ACTION_METRICS);
  /* The path itself still has to match. */
  handle_raw("GET /incr/?n=1 HTTP/1.1\r\nHost: h\r\n\r\n", &ready);
  assert_int_equal(result.response.status, 404);
  handle_raw("GET /?/incr HTTP/1.1\r\nHost: h\r\n\r\n", &ready);
  assert_int_equal(result.response.status, 404);
}

static void test_routes_absolute_form_goes_by_its_path(void **state) {
  (void)state;
  handle_raw("GET http://gracefuld:8080/incr HTTP/1.1\r\nHost: g\r\n\r\n",
             &ready);
  assert_int_equal(result.route, ROUTE_INCR);
  assert_int_equal(result.action, ACTION_INCR);
  handle_raw("GET http://h/readyz?x HTTP/1.1\r\nHost: h\r\n\r\n", &ready);
  assert_int_equal(result.route, ROUTE_READYZ);
  handle_raw("GET http://incr HTTP/1.1\r\nHost: h\r\n\r\n", &ready);
  assert_int_equal(result.route, ROUTE_OTHER);
}

static void test_routes_lookup_and_names(void **state) {
  (void)state;
  assert_int_equal(routes_lookup("/incr", 5), ROUTE_INCR);
  assert_int_equal(routes_lookup("/healthz", 8), ROUTE_HEALTHZ);
  assert_int_equal(routes_lookup("/readyz", 7), ROUTE_READYZ);
  assert_int_equal(routes_lookup("/metrics", 8), ROUTE_METRICS);
  assert_int_equal(routes_lookup("/metrics", 7), ROUTE_OTHER);
  assert_int_equal(routes_lookup("/incrx", 6), ROUTE_OTHER);
  assert_int_equal(routes_lookup("", 0), ROUTE_OTHER);
  assert_string_equal(routes_name(ROUTE_INCR), "incr");
  assert_string_equal(routes_name(ROUTE_HEALTHZ), "healthz");
  assert_string_equal(routes_name(ROUTE_READYZ), "readyz");
  assert_string_equal(routes_name(ROUTE_METRICS), "metrics");
  assert_string_equal(routes_name(ROUTE_OTHER), "other");
  assert_string_equal(routes_name(ROUTE_COUNT), "other");
}

/* ---- Errors ------------------------------------------------------------- */

static void answer_error(uint16_t status) {
  memset(&result, 0xa5, sizeof result);
  routes_error(status, &result);
  assert_int_equal(result.route, ROUTE_OTHER);
  assert_int_equal(result.action, ACTION_NONE);
  assert_false(result.response.head);
}

static void test_routes_error_answers_each_status(void **state) {
  (void)state;
  answer_error(400);
  expect_plain(400, "bad request\n");
  assert_null(result.response.extra_headers);
  answer_error(408);
  expect_plain(408, "request timeout\n");
  assert_null(result.response.extra_headers);
  answer_error(413);
  expect_plain(413, "body too large\n");
  answer_error(414);
  expect_plain(414, "request target too long\n");
  answer_error(431);
  expect_plain(431, "header block too large\n");
  assert_null(result.response.extra_headers);
  answer_error(503);
  expect_plain(503, "too many pending increments\n");
  assert_string_equal(result.response.extra_headers, "Retry-After: 1\r\n");
}

static void test_routes_error_answers_unknown_status_with_400(void **state) {
  (void)state;
  answer_error(0);
  expect_plain(400, "bad request\n");
  answer_error(418);
  expect_plain(400, "bad request\n");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_routes_incr_get_queues_an_increment),
      cmocka_unit_test(test_routes_incr_post_queues_an_increment),
      cmocka_unit_test(test_routes_incr_is_served_while_not_ready),
      cmocka_unit_test(test_routes_incr_refuses_other_methods_with_405),
      cmocka_unit_test(test_routes_405_to_head_request_has_no_body),
      cmocka_unit_test(test_routes_incr_refuses_with_503_when_queue_is_full),
      cmocka_unit_test(test_routes_incr_passes_its_idempotency_key_on),
      cmocka_unit_test(test_routes_incr_refuses_a_bad_idempotency_key_with_400),
      cmocka_unit_test(test_routes_healthz_answers_get_and_head),
      cmocka_unit_test(test_routes_readyz_answers_200_when_ready),
      cmocka_unit_test(test_routes_readyz_answers_503_when_not_ready),
      cmocka_unit_test(test_routes_metrics_answers_get_and_head),
      cmocka_unit_test(test_routes_probes_refuse_post_with_405),
      cmocka_unit_test(test_routes_unknown_path_is_404),
      cmocka_unit_test(test_routes_truncated_path_is_404),
      cmocka_unit_test(test_routes_ignore_query_string),
      cmocka_unit_test(test_routes_absolute_form_goes_by_its_path),
      cmocka_unit_test(test_routes_lookup_and_names),
      cmocka_unit_test(test_routes_error_answers_each_status),
      cmocka_unit_test(test_routes_error_answers_unknown_status_with_400),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
