/* http_parse and http_format_head: requests one at a time, keep-alive as the
 * request asked, every limit, and the exact bytes of a response head. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"

static const struct http_limits defaults = {
    .header_max_bytes = 8192,
    .max_headers = 100,
    .url_max_bytes = 2048,
    .max_body_bytes = 1024,
};

static struct http_parser parser;

/* Feeds s to a parser and expects exactly one complete request using all
 * of it. */
static void parse_one(const struct http_limits *limits, const char *s) {
  size_t used = 0;
  http_parser_init(&parser, limits);
  enum http_parse_result r = http_parse(&parser, s, strlen(s), &used);
  if (r != HTTP_PARSE_REQUEST)
    fail_msg("expected a request, got %d (status %u) for: %s", r,
             parser.error_status, s);
  assert_int_equal(used, strlen(s));
}

/* Feeds s to a fresh parser and expects it to be refused with status. */
static void expect_refused(const struct http_limits *limits, const char *s,
                           uint16_t status) {
  size_t used = 0;
  http_parser_init(&parser, limits);
  enum http_parse_result r = http_parse(&parser, s, strlen(s), &used);
  if (r != HTTP_PARSE_ERROR)
    fail_msg("expected an error, got %d for: %.200s", r, s);
  assert_int_equal(parser.error_status, status);
}

static void expect_path(const char *path) {
  assert_int_equal(parser.req.path_len, strlen(path));
  assert_memory_equal(parser.req.path, path, strlen(path));
}

/* ---- Parsing ------------------------------------------------------------ */

static void test_http_parses_simple_get(void **state) {
  (void)state;
  parse_one(&defaults, "GET /incr HTTP/1.1\r\nHost: localhost\r\n\r\n");
  assert_int_equal(parser.req.method, HTTP_GET);
  assert_int_equal(parser.req.version_major, 1);
  assert_int_equal(parser.req.version_minor, 1);
  assert_true(parser.req.keep_alive);
  assert_false(parser.req.upgrade);
  assert_false(parser.req.path_truncated);
  expect_path("/incr");
  assert_true(http_parser_idle(&parser));
}

static void test_http_reads_method_of_each_request(void **state) {
  (void)state;
  parse_one(&defaults,
            "POST /incr HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
  assert_int_equal(parser.req.method, HTTP_POST);
  parse_one(&defaults, "HEAD /healthz HTTP/1.1\r\nHost: h\r\n\r\n");
  assert_int_equal(parser.req.method, HTTP_HEAD);
  expect_path("/healthz");
  parse_one(&defaults, "DELETE /incr HTTP/1.1\r\nHost: h\r\n\r\n");
  assert_int_equal(parser.req.method, HTTP_DELETE);
}

static void test_http_returns_pipelined_requests_one_at_a_time(void **state) {
  (void)state;
  static const char r1[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
  static const char r2[] =
      "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
  static const char r3[] =
      "HEAD /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
  char buf[256];
  snprintf(buf, sizeof buf, "%s%s%s", r1, r2, r3);
  size_t len = strlen(buf);
  size_t pos = 0;
  size_t used;

  http_parser_init(&parser, &defaults);
  assert_int_equal(http_parse(&parser, buf + pos, len - pos, &used),
                   HTTP_PARSE_REQUEST);
  assert_int_equal(used, strlen(r1));
  assert_int_equal(parser.req.method, HTTP_GET);
  expect_path("/a");
  assert_true(parser.req.keep_alive);
  pos += used;

  assert_int_equal(http_parse(&parser, buf + pos, len - pos, &used),
                   HTTP_PARSE_REQUEST);
  assert_int_equal(used, strlen(r2));
  assert_int_equal(parser.req.method, HTTP_POST);
  expect_path("/b");
  pos += used;

  assert_int_equal(http_parse(&parser, buf + pos, len - pos, &used),
                   HTTP_PARSE_REQUEST);
  assert_int_equal(used, strlen(r3));
  assert_int_equal(parser.req.method, HTTP_HEAD);
  expect_path("/c");
  assert_false(parser.req.keep_alive);
  pos += used;
  assert_int_equal(pos, len);
  assert_true(http_parser_idle(&parser));
}

/* ---- Idempotency-Key ----------------------------------------------------- */

static void expect_key(const char *key) {
  assert_false(parser.req.idem_bad);
  assert_int_equal(parser.req.idem_len, strlen(key));
  assert_memory_equal(parser.req.idem_key, key, strlen(key));
}

static void
test_http_takes_the_idempotency_key_whatever_its_case(void **state) {
  (void)state;
  parse_one(&defaults, "POST /incr HTTP/1.1\r\nHost: h\r\n"
                       "iDEMPOTENCY-kEY:   \"8e03-40d5\" \t \r\n\r\n");
  expect_key("\"8e03-40d5\"");
  /* Names that only begin or end like it are other headers. */
  parse_one(&defaults, "GET /incr HTTP/1.1\r\nHost: h\r\n"
                       "Idempotency-Keys: a\r\nX-Idempotency-Key: b\r\n"
                       "Idempotency: c\r\n\r\n");
  assert_int_equal(parser.req.idem_len, 0);
  assert_false(parser.req.idem_bad);
  /* Each request of a connection has its own. */
  size_t used;
  static const char two[] = "GET /incr HTTP/1.1\r\nHost: h\r\n"
                            "Idempotency-Key: first\r\n\r\n"
                            "GET /incr HTTP/1.1\r\nHost: h\r\n\r\n";
  http_parser_init(&parser, &defaults);
  assert_int_equal(http_parse(&parser, two, strlen(two), &used),
                   HTTP_PARSE_REQUEST);
  expect_key("first");
  assert_int_equal(http_parse(&parser, two + used, strlen(two) - used, &used),
                   HTTP_PARSE_REQUEST);
  assert_int_equal(parser.req.idem_len, 0);
}

static void test_http_takes_a_key_split_across_reads(void **state) {
  (void)state;
  static const char req[] = "GET /incr HTTP/1.1\r\nHost: h\r\n"
                            "Idempotency-Key: abc-123\r\n\r\n";
  size_t used;
  http_parser_init(&parser, &defaults);
  for (size_t i = 0; i < strlen(req); i++) {
    enum http_parse_result r = http_parse(&parser, req + i, 1, &used);
    assert_int_equal(r, i + 1 < strlen(req) ? HTTP_PARSE_MORE
                                            : HTTP_PARSE_REQUEST);
  }
  expect_key("abc-123");
}

static void test_http_flags_a_bad_key_and_goes_on(void **state) {
  (void)state;
  char long_key[400];
  const char *const bad[] = {
      "Idempotency-Key: \r\n",
      "Idempotency-Key: a b\r\n",
      "Idempotency-Key: caf\xc3\xa9\r\n",
      "Idempotency-Key: a\r\nIdempotency-Key: a\r\n",
      long_key,
  };
  memset(long_key, 'k', sizeof long_key);
  memcpy(long_key, "Idempotency-Key: ", 17);
  strcpy(long_key + 17 + HTTP_IDEM_KEY_MAX + 1, "\r\n");
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char req[600];
    snprintf(req, sizeof req, "GET /incr HTTP/1.1\r\nHost: h\r\n%s\r\n",
             bad[i]);
    parse_one(&defaults, req); /* a request all the same: routes say 400 */
    assert_true(parser.req.idem_bad);
    assert_int_equal(parser.req.idem_len, 0);
  }
  /* The longest key taken. */
  long_key[17 + HTTP_IDEM_KEY_MAX] = '\0';
  char req[600];
  snprintf(req, sizeof req, "GET /incr HTTP/1.1\r\nHost: h\r\n%s\r\n\r\n",
           long_key);
  parse_one(&defaults, req);
  expect_key(long_key + 17);
}

static void test_http_a_key_in_a_trailer_is_not_the_requests(void **state) {
  (void)state;
  parse_one(&defaults, "POST /incr HTTP/1.1\r\nHost: h\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n"
                       "1\r\nx\r\n0\r\nIdempotency-Key: late\r\n\r\n");
  assert_int_equal(parser.req.idem_len, 0);
  assert_false(parser.req.idem_bad);
}

static void test_http_assembles_request_fed_one_byte_at_a_time(void **state) {
  (void)state;
  static const char reqs[] =
      "GET /incr?x=1 HTTP/1.1\r\nHost: localhost\r\nX-A: b\r\n\r\n"
      "POST /readyz HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody";
  size_t len = strlen(reqs);
  size_t used;
  int requests = 0;

  http_parser_init(&parser, &defaults);
  for (size_t i = 0; i < len; i++) {
    enum http_parse_result r = http_parse(&parser, reqs + i, 1, &used);
    assert_int_equal(used, 1);
    if (r == HTTP_PARSE_MORE) {
      assert_false(http_parser_idle(&parser));
      continue;
    }
    assert_int_equal(r, HTTP_PARSE_REQUEST);
    requests++;
    if (requests == 1) {
      assert_int_equal(i, strlen("GET /incr?x=1 HTTP/1.1\r\nHost: "
                                 "localhost\r\nX-A: b\r\n\r\n") -
                              1);
      assert_int_equal(parser.req.method, HTTP_GET);
      expect_path("/incr");
    } else {
      assert_int_equal(i, len - 1);
      assert_int_equal(parser.req.method, HTTP_POST);
      expect_path("/readyz");
    }
    assert_true(http_parser_idle(&parser));
  }
  assert_int_equal(requests, 2);
}

static void test_http_keeps_remainder_after_a_split_request(void **state) {
  (void)state;
  static const char r1[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  static const char r2[] = "GET /readyz HTTP/1.1\r\nHost: h\r\n\r\n";
  char buf[128];
  snprintf(buf, sizeof buf, "%s%s", r1, r2);
  size_t used;

  http_parser_init(&parser, &defaults);
  assert_int_equal(http_parse(&parser, buf, 10, &used), HTTP_PARSE_MORE);
  assert_int_equal(used, 10);
  assert_false(http_parser_idle(&parser));
  /* The rest of the first request and all of the second arrive together. */
  assert_int_equal(http_parse(&parser, buf + 10, strlen(buf) - 10, &used),
                   HTTP_PARSE_REQUEST);
  assert_int_equal(used, strlen(r1) - 10);
  expect_path("/healthz");
  size_t pos = strlen(r1);
  assert_int_equal(http_parse(&parser, buf + pos, strlen(buf) - pos, &used),
                   HTTP_PARSE_REQUEST);
  assert_int_equal(used, strlen(r2));
  expect_path("/readyz");
}

static void test_http_1_1_keeps_alive_by_default(void **state) {
  (void)state;
  parse_one(&defaults, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_true(parser.req.keep_alive);
  assert_int_equal(parser.req.version_minor, 1);
}

static void test_http_1_1_connection_close_ends_keep_alive(void **state) {
  (void)state;
  parse_one(&defaults,
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
  assert_false(parser.req.keep_alive);
  parse_one(&defaults,
            "GET / HTTP/1.1\r\nHost: h\r\nconnection: Close\r\n\r\n");
  assert_false(parser.req.keep_alive);
}

static void test_http_1_0_closes_by_default(void **state) {
  (void)state;
  parse_one(&defaults, "GET / HTTP/1.0\r\n\r\n");
  assert_false(parser.req.keep_alive);
  assert_int_equal(parser.req.version_major, 1);
  assert_int_equal(parser.req.version_minor, 0);
}

static void test_http_1_0_keep_alive_header_keeps_alive(void **state) {
  (void)state;
  parse_one(&defaults, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  assert_true(parser.req.keep_alive);
  assert_int_equal(parser.req.version_minor, 0);
}

static void test_http_keep_alive_is_read_per_pipelined_request(void **state) {
  (void)state;
  static const char buf[] = "GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                            "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
                            "GET /3 HTTP/1.0\r\n\r\n";
  static const bool expected[] = {true, true, false};
  size_t pos = 0;
  size_t used;
  http_parser_init(&parser, &defaults);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(http_parse(&parser, buf + pos, strlen(buf) - pos, &used),
                     HTTP_PARSE_REQUEST);
    assert_int_equal(parser.req.keep_alive, expected[i]);
    assert_int_equal(parser.req.path[1], '1' + i);
    pos += used;
  }
  assert_int_equal(pos, strlen(buf));
}

static void test_http_flags_upgrade_and_connect(void **state) {
  (void)state;
  parse_one(&defaults,
            "GET /incr HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\n\r\n");
  assert_true(parser.req.upgrade);
  parse_one(&defaults, "CONNECT example.com:443 HTTP/1.1\r\nHost: h\r\n\r\n");
  assert_true(parser.req.upgrade);
  parse_one(&defaults, "GET /incr HTTP/1.1\r\nHost: h\r\n\r\n");
  assert_false(parser.req.upgrade);
}

static void test_http_strips_query_string_from_path(void **state) {
  (void)state;
  parse_one(&defaults, "GET /incr?n=1&m=2 HTTP/1.1\r\nHost: h\r\n\r\n");
  expect_path("/incr");
  parse_one(&defaults, "GET /healthz? HTTP/1.1\r\nHost: h\r\n\r\n");
  expect_path("/healthz");
  parse_one(&defaults, "GET /metrics#frag HTTP/1.1\r\nHost: h\r\n\r\n");
  expect_path("/metrics");
  parse_one(&defaults, "GET /readyz?a=/b?c HTTP/1.1\r\nHost: h\r\n\r\n");
  expect_path("/readyz");
}

static void test_http_strips_query_string_split_across_feeds(void **state) {
  (void)state;
  static const char req[] =
      "GET /incr?x=/long/looking/path HTTP/1.1\r\nHost: h\r\n\r\n";
  size_t used;
  http_parser_init(&parser, &defaults);
  for (size_t i = 0; i < strlen(req) - 1; i++)
    assert_int_equal(http_parse(&parser, req + i, 1, &used), HTTP_PARSE_MORE);
  assert_int_equal(http_parse(&parser, req + strlen(req) - 1, 1, &used),
                   HTTP_PARSE_REQUEST);
  expect_path("/incr");
}

static void test_http_flags_long_path_as_truncated(void **state) {
  (void)state;
  char path[HTTP_PATH_MAX + 2];
  char req[256];
  memset(path, 'a', sizeof path);
  path[0] = '/';

  path[HTTP_PATH_MAX] = '\0'; /* exactly HTTP_PATH_MAX bytes: kept whole */
  snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", path);
  parse_one(&defaults, req);
  assert_false(parser.req.path_truncated);
  assert_int_equal(parser.req.path_len, HTTP_PATH_MAX);

  path[HTTP_PATH_MAX] = 'a'; /* one more */
  path[HTTP_PATH_MAX + 1] = '\0';
  snprintf(req, sizeof req, "GET %s?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", path);
  parse_one(&defaults, req);
  assert_true(parser.req.path_truncated);
  assert_int_equal(parser.req.path_len, HTTP_PATH_MAX);

  /* A long query string does not truncate a short path. */
  snprintf(req, sizeof req, "GET /incr?%s HTTP/1.1\r\nHost: h\r\n\r\n", path);
  parse_one(&defaults, req);
  assert_false(parser.req.path_truncated);
  expect_path("/incr");
}

/* ---- Limits ------------------------------------------------------------- */

#define REQ_MAX 4096

/* Writes "GET " + a target of n bytes + " HTTP/1.1\r\nHost: h\r\n\r\n" into s,
 * which holds REQ_MAX bytes (static buffers: a failed assertion leaks nothing).
 */
static char *request_with_target(char *s, size_t n) {
  assert_true(n + 64 <= REQ_MAX);
  memcpy(s, "GET /", 5);
  memset(s + 5, 'u', n - 1);
  strcpy(s + 4 + n, " HTTP/1.1\r\nHost: h\r\n\r\n");
  return s;
}

static void test_http_refuses_long_target_with_414(void **state) {
  (void)state;
  struct http_limits limits = defaults;
  limits.url_max_bytes = 100;
  static char ok[REQ_MAX];
  static char over[REQ_MAX];
  parse_one(&limits, request_with_target(ok, 100));
  expect_refused(&limits, request_with_target(over, 101), 414);
  /* The query string counts: it is part of the target. */
  expect_refused(&limits,
                 "GET /incr?aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa "
                 "HTTP/1.1\r\nHost: h\r\n\r\n",
                 414);
}

static void test_http_refuses_long_target_fed_in_pieces_with_414(void **state) {
  (void)state;
  struct http_limits limits = defaults;
  limits.url_max_bytes = 100;
  static char over[REQ_MAX];
  request_with_target(over, 101);
  size_t used;
  enum http_parse_result r = HTTP_PARSE_MORE;
  http_parser_init(&parser, &limits);
  /* The limit is enforced across feeds, before the target is complete. */
  for (size_t i = 0; i < 4 + 101 && r == HTTP_PARSE_MORE; i += 10)
    r = http_parse(&parser, over + i, i + 10 <= 105 ? 10 : 105 - i, &used);
  assert_int_equal(r, HTTP_PARSE_ERROR);
  assert_int_equal(parser.error_status, 414);
}

/* Writes a request with one header "X-Big: " + n bytes of value into s. */
static char *request_with_header_value(char *s, size_t n) {
  assert_true(n + 64 <= REQ_MAX);
  strcpy(s, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ");
  size_t len = strlen(s);
  memset(s + len, 'v', n);
  strcpy(s + len + n, "\r\n\r\n");
  return s;
}

static void test_http_refuses_large_header_block_with_431(void **state) {
  (void)state;
  struct http_limits limits = defaults;
  limits.header_max_bytes = 256;
  static char small[REQ_MAX];
  static char big[REQ_MAX];
  parse_one(&limits, request_with_header_value(small, 100));
  expect_refused(&limits, request_with_header_value(big, 300), 431);
}

static void
test_http_refuses_many_small_headers_over_byte_limit_with_431(void **state) {
  (void)state;
  struct http_limits limits = defaults;
  limits.header_max_bytes = 256;
  char req[2048] = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (int i = 0; i < 40; i++) {
    char line[32];
    snprintf(line, sizeof line, "X-%02d: v\r\n", i);
    strcat(req, line);
  }
  strcat(req, "\r\n");
  expect_refused(&limits, req, 431);
}

static void test_http_counts_header_value_padding_toward_limit(void **state) {
  (void)state;
  /* Whitespace before a header value is part of the header block, even
   * though llhttp does not report it as part of the value. */
  struct http_limits limits = defaults;
  limits.header_max_bytes = 256;
  static char req[16384];
  strcpy(req, "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ");
  size_t len = strlen(req);
  memset(req + len, ' ', 10000);
  strcpy(req + len + 10000, "v\r\n\r\n");
  expect_refused(&limits, req, 431);
}

static void test_http_counts_request_line_toward_header_limit(void **state) {
  (void)state;
  /* A target within URL_MAX_BYTES still makes the header block too large,
   * with or without header fields after it. */
  struct http_limits limits = defaults;
  limits.header_max_bytes = 256;
  limits.url_max_bytes = 2048;
  static char req[REQ_MAX];
  static char with_header[REQ_MAX];
  request_with_target(with_header, 600);
  strcpy(strstr(with_header, "\r\n") + 2, "Host: x\r\n\r\n");
  expect_refused(&limits, with_header, 431);
  expect_refused(&limits, request_with_target(req, 600), 431);
}

static void test_http_refuses_too_many_headers_with_431(void **state) {
  (void)state;
  struct http_limits limits = defaults;
  limits.max_headers = 3;
  parse_one(&limits, "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n");
  expect_refused(&limits,
                 "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
                 431);
}

static void test_http_refuses_content_length_over_limit_with_413(void **state) {
  (void)state;
  struct http_limits limits = defaults;
  limits.max_body_bytes = 10;
  parse_one(&limits,
            "POST /incr HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n"
            "0123456789");
  /* Refused on the header alone, before any of the body arrives. */
  expect_refused(&limits,
                 "POST /incr HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n",
                 413);
  expect_refused(
      &limits,
      "POST /incr HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999\r\n\r\n",
      413);
}

static void test_http_refuses_chunked_body_over_limit_with_413(void **state) {
  (void)state;
  struct http_limits limits = defaults;
  limits.max_body_bytes = 10;
  parse_one(
      &limits,
      "POST /incr HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nabcde\r\n5\r\nfghij\r\n0\r\n\r\n");
  expect_refused(
      &limits,
      "POST /incr HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n",
      413);
}

static void test_http_refuses_any_body_when_limit_is_zero(void **state) {
  (void)state;
  struct http_limits limits = defaults;
  limits.max_body_bytes = 0;
  parse_one(&limits,
            "POST /incr HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
  expect_refused(&limits,
                 "POST /incr HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
                 413);
}

static void test_http_consumes_body_within_limit(void **state) {
  (void)state;
  static const char r1[] =
      "POST /incr HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
  static const char r2[] = "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n";
  char buf[128];
  snprintf(buf, sizeof buf, "%s%s", r1, r2);
  size_t used;
  http_parser_init(&parser, &defaults);
  assert_int_equal(http_parse(&parser, buf, strlen(buf), &used),
                   HTTP_PARSE_REQUEST);
  /* The body belongs to the first request, not to the next. */
  assert_int_equal(used, strlen(r1));
  assert_int_equal(parser.req.method, HTTP_POST);
  assert_int_equal(http_parse(&parser, buf + used, strlen(buf) - used, &used),
                   HTTP_PARSE_REQUEST);
  assert_int_equal(used, strlen(r2));
  expect_path("/healthz");
}

static void test_http_limits_reset_for_each_request(void **state) {
  (void)state;
  struct http_limits limits = defaults;
  limits.max_headers = 3;
  limits.max_body_bytes = 4;
  static const char one[] =
      "POST /a HTTP/1.1\r\nHost: h\r\nA: 1\r\nContent-Length: 4\r\n\r\nabcd";
  char buf[512] = "";
  for (int i = 0; i < 5; i++)
    strcat(buf, one);
  size_t pos = 0;
  size_t used;
  http_parser_init(&parser, &limits);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(http_parse(&parser, buf + pos, strlen(buf) - pos, &used),
                     HTTP_PARSE_REQUEST);
    pos += used;
  }
  assert_int_equal(pos, strlen(buf));
}

static void test_http_refuses_garbage_with_400(void **state) {
  (void)state;
  expect_refused(&defaults, "HELLO\r\n\r\n", 400);
  expect_refused(&defaults, "GET\r\n\r\n", 400);
  expect_refused(&defaults, "GET / FTP/1.1\r\n\r\n", 400);
  expect_refused(&defaults,
                 "GET / HTTP/1.1\r\nHost: h\r\nNo colon here\r\n\r\n", 400);
  expect_refused(&defaults, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                 400);
}

static void test_http_refuses_http2_preface(void **state) {
  (void)state;
  expect_refused(&defaults, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400);
}

static void
test_http_refuses_content_length_with_transfer_encoding(void **state) {
  (void)state;
  expect_refused(&defaults,
                 "POST /incr HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                 400);
  expect_refused(
      &defaults,
      "POST /incr HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
      "Content-Length: 5\r\n\r\n0\r\n\r\n",
      400);
}

static void test_http_refuses_conflicting_content_lengths(void **state) {
  (void)state;
  expect_refused(&defaults,
                 "POST /incr HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
                 "Content-Length: 2\r\n\r\nab",
                 400);
}

static void test_http_error_after_good_request_is_reported(void **state) {
  (void)state;
  static const char buf[] = "GET /a HTTP/1.1\r\nHost: h\r\n\r\nBOGUS\r\n\r\n";
  size_t used;
  http_parser_init(&parser, &defaults);
  assert_int_equal(http_parse(&parser, buf, strlen(buf), &used),
                   HTTP_PARSE_REQUEST);
  assert_int_equal(parser.error_status, 0);
  size_t pos = used;
  assert_int_equal(http_parse(&parser, buf + pos, strlen(buf) - pos, &used),
                   HTTP_PARSE_ERROR);
  assert_int_equal(parser.error_status, 400);
}

/* ---- Response heads ----------------------------------------------------- */

static char head[HTTP_HEAD_MAX];

static void expect_head(const struct http_response *resp,
                        enum http_connection conn, const char *expected) {
  memset(head, 0, sizeof head);
  size_t n = http_format_head(head, resp, conn);
  assert_int_equal(n, strlen(expected));
  assert_memory_equal(head, expected, n);
}

static const struct http_response ok = {
    .status = 200, .body = "ok\n", .body_len = 3};

static void test_http_formats_200_with_default_connection(void **state) {
  (void)state;
  expect_head(&ok, HTTP_CONN_DEFAULT,
              "HTTP/1.1 200 OK\r\n"
              "Content-Type: text/plain\r\n"
              "Content-Length: 3\r\n"
              "\r\n");
}

static void test_http_formats_200_with_keep_alive(void **state) {
  (void)state;
  expect_head(&ok, HTTP_CONN_KEEP_ALIVE,
              "HTTP/1.1 200 OK\r\n"
              "Content-Type: text/plain\r\n"
              "Content-Length: 3\r\n"
              "Connection: keep-alive\r\n"
              "\r\n");
}

static void test_http_formats_200_with_connection_close(void **state) {
  (void)state;
  expect_head(&ok, HTTP_CONN_CLOSE,
              "HTTP/1.1 200 OK\r\n"
              "Content-Type: text/plain\r\n"
              "Content-Length: 3\r\n"
              "Connection: close\r\n"
              "\r\n");
}

static void test_http_head_response_keeps_content_length(void **state) {
  (void)state;
  struct http_response resp = ok;
  resp.head = true;
  resp.body = "ready\n";
  resp.body_len = 6;
  expect_head(&resp, HTTP_CONN_DEFAULT,
              "HTTP/1.1 200 OK\r\n"
              "Content-Type: text/plain\r\n"
              "Content-Length: 6\r\n"
              "\r\n");
}

static void test_http_appends_extra_headers_and_content_type(void **state) {
  (void)state;
  struct http_response resp = {.status = 405,
                               .extra_headers = "Allow: GET, POST\r\n",
                               .body = "method not allowed\n",
                               .body_len = 19};
  expect_head(&resp, HTTP_CONN_CLOSE,
              "HTTP/1.1 405 Method Not Allowed\r\n"
              "Content-Type: text/plain\r\n"
              "Content-Length: 19\r\n"
              "Connection: close\r\n"
              "Allow: GET, POST\r\n"
              "\r\n");
  struct http_response metrics = {
      .status = 200,
      .content_type = "text/plain; version=0.0.4; charset=utf-8",
      .body_len = 0};
  expect_head(&metrics, HTTP_CONN_DEFAULT,
              "HTTP/1.1 200 OK\r\n"
              "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
              "Content-Length: 0\r\n"
              "\r\n");
}

static void test_http_formats_reason_of_each_status(void **state) {
  (void)state;
  static const struct {
    uint16_t status;
    const char *line;
  } cases[] = {
      {400, "HTTP/1.1 400 Bad Request\r\n"},
      {404, "HTTP/1.1 404 Not Found\r\n"},
      {408, "HTTP/1.1 408 Request Timeout\r\n"},
      {413, "HTTP/1.1 413 Content Too Large\r\n"},
      {414, "HTTP/1.1 414 URI Too Long\r\n"},
      {431, "HTTP/1.1 431 Request Header Fields Too Large\r\n"},
      {500, "HTTP/1.1 500 Internal Server Error\r\n"},
      {503, "HTTP/1.1 503 Service Unavailable\r\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct http_response resp = {.status = cases[i].status};
    size_t n = http_format_head(head, &resp, HTTP_CONN_CLOSE);
    assert_true(n > strlen(cases[i].line));
    assert_memory_equal(head, cases[i].line, strlen(cases[i].line));
  }
}

static void test_http_longest_head_fits_in_head_max(void **state) {
  (void)state;
  char extra[129];
  memset(extra, 'x', 126);
  extra[126] = '\r';
  extra[127] = '\n';
  extra[128] = '\0';
  struct http_response resp = {.status = 431,
                               .content_type =
                                   "text/plain; version=0.0.4; charset=utf-8",
                               .extra_headers = extra,
                               .body_len = UINT64_MAX};
  /* Exactly HTTP_HEAD_MAX bytes on the heap: ASan sees any overrun. */
  char *buf = malloc(HTTP_HEAD_MAX);
  assert_non_null(buf);
  size_t n = http_format_head(buf, &resp, HTTP_CONN_KEEP_ALIVE);
  char end[4];
  memcpy(end, buf + (n >= 4 && n <= HTTP_HEAD_MAX ? n - 4 : 0), 4);
  free(buf);
  assert_true(n <= HTTP_HEAD_MAX);
  assert_memory_equal(end, "\r\n\r\n", 4);
}

/* ---- RFC 9112: Host, absolute-form, chunk extensions --------------------- */

static void test_http_1_1_without_host_is_refused_with_400(void **state) {
  (void)state;
  expect_refused(&defaults, "GET /incr HTTP/1.1\r\n\r\n", 400);
  expect_refused(&defaults, "GET /incr HTTP/1.1\r\nHostname: x\r\n\r\n", 400);
  expect_refused(&defaults, "GET /incr HTTP/1.1\r\nHos: x\r\n\r\n", 400);
  /* HTTP/1.0 predates Host. */
  parse_one(&defaults, "GET /incr HTTP/1.0\r\n\r\n");
  parse_one(&defaults, "GET /incr HTTP/1.1\r\nhOsT: x\r\n\r\n");
}

static void test_http_several_hosts_are_refused_with_400(void **state) {
  (void)state;
  expect_refused(&defaults, "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                 400);
  expect_refused(&defaults,
                 "GET / HTTP/1.0\r\nHOST: a\r\nX: 1\r\nhost: b\r\n\r\n", 400);
}

static void
test_http_host_is_counted_per_request_and_across_feeds(void **state) {
  (void)state;
  static const char two[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                            "GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
  size_t used;
  http_parser_init(&parser, &defaults);
  assert_int_equal(http_parse(&parser, two, strlen(two), &used),
                   HTTP_PARSE_REQUEST);
  assert_int_equal(http_parse(&parser, two + used, strlen(two) - used, &used),
                   HTTP_PARSE_REQUEST);
  /* "Ho" + "st" in two feeds is one Host. */
  static const char *const parts[] = {"GET /c HTTP/1.1\r\nHo", "st: x\r\n\r\n"};
  http_parser_init(&parser, &defaults);
  assert_int_equal(http_parse(&parser, parts[0], strlen(parts[0]), &used),
                   HTTP_PARSE_MORE);
  assert_int_equal(http_parse(&parser, parts[1], strlen(parts[1]), &used),
                   HTTP_PARSE_REQUEST);
}

static void test_http_absolute_form_is_routed_by_its_path(void **state) {
  (void)state;
  parse_one(&defaults, "GET http://host/incr HTTP/1.1\r\nHost: host\r\n\r\n");
  expect_path("/incr");
  assert_false(parser.req.path_truncated);
  parse_one(&defaults,
            "GET HTTPS://u@h:8080/metrics?x=/y HTTP/1.1\r\nHost: h\r\n\r\n");
  expect_path("/metrics");
  parse_one(&defaults, "GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n");
  expect_path("/");
  /* No path at all, or not a URI: routed nowhere. */
  parse_one(&defaults, "GET http://h HTTP/1.1\r\nHost: h\r\n\r\n");
  assert_true(parser.req.path_truncated);
  parse_one(&defaults, "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
  expect_path("*");
}

static void test_http_absolute_form_split_across_feeds(void **state) {
  (void)state;
  static const char req[] =
      "GET http://host/healthz HTTP/1.1\r\nHost: h\r\n\r\n";
  for (size_t cut = 1; cut < 24; cut++) {
    size_t used;
    http_parser_init(&parser, &defaults);
    assert_int_equal(http_parse(&parser, req, cut, &used), HTTP_PARSE_MORE);
    assert_int_equal(http_parse(&parser, req + cut, strlen(req) - cut, &used),
                     HTTP_PARSE_REQUEST);
    expect_path("/healthz");
  }
}

static void
test_http_chunk_extensions_count_toward_the_body_limit(void **state) {
  (void)state;
  struct http_limits limits = defaults;
  limits.max_body_bytes = 1024;
  size_t ext = 10 * 1024 * 1024;
  static const char prefix[] =
      "POST /incr HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "1;x=";
  char *req = malloc(sizeof prefix - 1 + ext + 32);
  assert_non_null(req);
  memcpy(req, prefix, sizeof prefix - 1);
  memset(req + sizeof prefix - 1, 'v', ext);
  strcpy(req + sizeof prefix - 1 + ext, "\r\na\r\n0\r\n\r\n");
  size_t used;
  http_parser_init(&parser, &limits);
  enum http_parse_result r = http_parse(&parser, req, strlen(req), &used);
  free(req);
  assert_int_equal(r, HTTP_PARSE_ERROR);
  assert_int_equal(parser.error_status, 413);
  /* Small extensions within the limit are fine. */
  parse_one(&limits, "POST /incr HTTP/1.1\r\nHost: h\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n"
                     "1;a=b\r\nx\r\n0\r\n\r\n");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_http_parses_simple_get),
      cmocka_unit_test(test_http_reads_method_of_each_request),
      cmocka_unit_test(test_http_returns_pipelined_requests_one_at_a_time),
      cmocka_unit_test(test_http_assembles_request_fed_one_byte_at_a_time),
      cmocka_unit_test(test_http_keeps_remainder_after_a_split_request),
      cmocka_unit_test(test_http_1_1_keeps_alive_by_default),
      cmocka_unit_test(test_http_1_1_connection_close_ends_keep_alive),
      cmocka_unit_test(test_http_1_0_closes_by_default),
      cmocka_unit_test(test_http_1_0_keep_alive_header_keeps_alive),
      cmocka_unit_test(test_http_keep_alive_is_read_per_pipelined_request),
      cmocka_unit_test(test_http_flags_upgrade_and_connect),
      cmocka_unit_test(test_http_strips_query_string_from_path),
      cmocka_unit_test(test_http_strips_query_string_split_across_feeds),
      cmocka_unit_test(test_http_flags_long_path_as_truncated),
      cmocka_unit_test(test_http_refuses_long_target_with_414),
      cmocka_unit_test(test_http_refuses_long_target_fed_in_pieces_with_414),
      cmocka_unit_test(test_http_refuses_large_header_block_with_431),
      cmocka_unit_test(
          test_http_refuses_many_small_headers_over_byte_limit_with_431),
      cmocka_unit_test(test_http_counts_header_value_padding_toward_limit),
      cmocka_unit_test(test_http_counts_request_line_toward_header_limit),
      cmocka_unit_test(test_http_refuses_too_many_headers_with_431),
      cmocka_unit_test(test_http_refuses_content_length_over_limit_with_413),
      cmocka_unit_test(test_http_refuses_chunked_body_over_limit_with_413),
      cmocka_unit_test(test_http_refuses_any_body_when_limit_is_zero),
      cmocka_unit_test(test_http_consumes_body_within_limit),
      cmocka_unit_test(test_http_limits_reset_for_each_request),
      cmocka_unit_test(test_http_refuses_garbage_with_400),
      cmocka_unit_test(test_http_refuses_http2_preface),
      cmocka_unit_test(test_http_refuses_content_length_with_transfer_encoding),
      cmocka_unit_test(test_http_refuses_conflicting_content_lengths),
      cmocka_unit_test(test_http_error_after_good_request_is_reported),
      cmocka_unit_test(test_http_formats_200_with_default_connection),
      cmocka_unit_test(test_http_formats_200_with_keep_alive),
      cmocka_unit_test(test_http_formats_200_with_connection_close),
      cmocka_unit_test(test_http_head_response_keeps_content_length),
      cmocka_unit_test(test_http_appends_extra_headers_and_content_type),
      cmocka_unit_test(test_http_formats_reason_of_each_status),
      cmocka_unit_test(test_http_longest_head_fits_in_head_max),
      cmocka_unit_test(test_http_1_1_without_host_is_refused_with_400),
      cmocka_unit_test(test_http_several_hosts_are_refused_with_400),
      cmocka_unit_test(test_http_host_is_counted_per_request_and_across_feeds),
      cmocka_unit_test(test_http_absolute_form_is_routed_by_its_path),
      cmocka_unit_test(test_http_absolute_form_split_across_feeds),
      cmocka_unit_test(test_http_chunk_extensions_count_toward_the_body_limit),
      cmocka_unit_test(test_http_takes_the_idempotency_key_whatever_its_case),
      cmocka_unit_test(test_http_takes_a_key_split_across_reads),
      cmocka_unit_test(test_http_flags_a_bad_key_and_goes_on),
      cmocka_unit_test(test_http_a_key_in_a_trailer_is_not_the_requests),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
