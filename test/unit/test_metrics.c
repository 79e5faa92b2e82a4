/* metrics_render and metrics_count_request: Prometheus text that a scraper
 * accepts, with the counters and gauges it was given. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

/* ---- A reader for the text format --------------------------------------- */

#define MAX_FAMILIES 32
#define MAX_SAMPLES 128

struct family {
  char name[96];
  char type[16];
  bool help;
};

struct sample {
  char series[192]; /* name and labels, as written */
  char value[64];
};

static struct family families[MAX_FAMILIES];
static int n_families;
static struct sample samples[MAX_SAMPLES];
static int n_samples;
static char *text;
static size_t text_len;

static bool valid_labels(const char *p, const char *end) {
  /* {name="value",name="value"} */
  if (p >= end || *p++ != '{')
    return false;
  while (p < end && *p != '}') {
    const char *name = p;
    while (p < end && ((*p >= 'a' && *p <= 'z') || *p == '_'))
      p++;
    if (p == name || p + 1 >= end || p[0] != '=' || p[1] != '"')
      return false;
    p += 2;
    while (p < end && *p != '"') {
      if (*p == '\n')
        return false;
      /* The three escapes of the text format: \\ \" \n */
      if (*p == '\\' && (p + 1 >= end || !strchr("\\\"n", p[1])))
        return false;
      p += *p == '\\' ? 2 : 1;
    }
    if (p >= end)
      return false;
    p++;
    if (p < end && *p == ',')
      p++;
  }
  return p + 1 == end && *p == '}';
}

/* Parses text; fails the test at the first line a scraper would refuse. */
static void read_exposition(void) {
  n_families = 0;
  n_samples = 0;
  assert_int_equal(strlen(text), text_len);
  assert_true(text_len > 0);
  assert_int_equal(text[text_len - 1], '\n');
  struct family *current = NULL;
  char *saveptr = NULL;
  static char copy[32768]; /* static: a failed assertion leaks nothing */
  assert_true(text_len < sizeof copy);
  memcpy(copy, text, text_len + 1);
  for (char *l = strtok_r(copy, "\n", &saveptr); l;
       l = strtok_r(NULL, "\n", &saveptr)) {
    char name[96];
    if (strncmp(l, "# HELP ", 7) == 0) {
      assert_int_equal(sscanf(l + 7, "%95s", name), 1);
      assert_true(n_families < MAX_FAMILIES);
      /* HELP opens a family; its TYPE must follow. */
      current = &families[n_families];
      memset(current, 0, sizeof *current);
      strcpy(current->name, name);
      current->help = true;
      continue;
    }
    if (strncmp(l, "# TYPE ", 7) == 0) {
      char type[16];
      assert_int_equal(sscanf(l + 7, "%95s %15s", name, type), 2);
      for (int i = 0; i < n_families; i++) {
        if (strcmp(families[i].name, name) == 0)
          fail_msg("family %s declared twice", name);
      }
      if (!current || strcmp(current->name, name) != 0) {
        current = &families[n_families];
        memset(current, 0, sizeof *current);
        strcpy(current->name, name);
      }
      if (strcmp(type, "counter") != 0 && strcmp(type, "gauge") != 0 &&
          strcmp(type, "histogram") != 0)
        fail_msg("family %s has type %s", name, type);
      strcpy(current->type, type);
      n_families++;
      continue;
    }
    if (l[0] == '#')
      fail_msg("unexpected comment: %s", l);

    /* A sample: name{labels} value */
    char *space = strrchr(l, ' ');
    if (!space)
      fail_msg("sample without value: %s", l);
    char *brace = memchr(l, '{', (size_t)(space - l));
    size_t name_len = (size_t)((brace ? brace : space) - l);
    /* Ours are prefixed; the one standard process metric is not. */
    if (strncmp(l, "gracefuld_", 10) != 0 &&
        strncmp(l, "process_start_time_seconds ", 27) != 0)
      fail_msg("metric without the gracefuld_ prefix: %s", l);
    if (brace && !valid_labels(brace, space))
      fail_msg("bad labels: %s", l);
    /* A histogram's samples are its name with _bucket, _sum or _count. */
    size_t own = current ? strlen(current->name) : 0;
    bool histogram = current && strcmp(current->type, "histogram") == 0;
    if (histogram && name_len > own &&
        (strncmp(l + own, "_bucket", name_len - own) == 0 ||
         strncmp(l + own, "_sum", name_len - own) == 0 ||
         strncmp(l + own, "_count", name_len - own) == 0))
      name_len = own;
    if (!current || !current->type[0] || own != name_len ||
        strncmp(current->name, l, name_len) != 0)
      fail_msg("sample not under its own # TYPE line: %s", l);
    char *end;
    double v = strtod(space + 1, &end);
    if (end == space + 1 || *end != '\0' || isnan(v) || v < 0)
      fail_msg("value is not a number: %s", l);
    assert_true(n_samples < MAX_SAMPLES);
    struct sample *s = &samples[n_samples++];
    assert_true((size_t)(space - l) < sizeof s->series);
    memcpy(s->series, l, (size_t)(space - l));
    s->series[space - l] = '\0';
    assert_true(strlen(space + 1) < sizeof s->value);
    strcpy(s->value, space + 1);
  }
}

static void render(const struct metrics *m, const struct metrics_view *g) {
  free(text);
  text = metrics_render(m, g, &text_len);
  assert_non_null(text);
  read_exposition();
}

static const char *value_of(const char *series) {
  for (int i = 0; i < n_samples; i++) {
    if (strcmp(samples[i].series, series) == 0)
      return samples[i].value;
  }
  fail_msg("no sample %s in:\n%s", series, text);
  return NULL;
}

static bool has_sample(const char *series) {
  for (int i = 0; i < n_samples; i++) {
    if (strcmp(samples[i].series, series) == 0)
      return true;
  }
  return false;
}

static void expect_sample(const char *series, const char *value) {
  const char *v = value_of(series);
  if (strcmp(v, value) != 0)
    fail_msg("%s is %s, expected %s", series, v, value);
}

static const char *request_series(const char *route, const char *code) {
  static char buf[128];
  snprintf(buf, sizeof buf,
           "gracefuld_http_requests_total{route=\"%s\",code=\"%s\"}", route,
           code);
  return buf;
}

static struct metrics m;
/* What the rooms count, as /metrics reads it. */
static struct server_stats srv;
static struct redis_link_stats link;
static struct counter_stats cs;
static struct metrics_view idle;

/* A view of the rooms' counts with these gauges. */
static struct metrics_view view(uint64_t pending, int redis_connected,
                                enum shutdown_phase phase) {
  return (struct metrics_view){.server = &srv,
                               .link = &link,
                               .counter = &cs,
                               .pending = pending,
                               .redis_connected = redis_connected,
                               .phase = phase,
                               .redis_node = "",
                               .redis_transport = ""};
}

static int setup(void **state) {
  (void)state;
  metrics_init(&m);
  memset(&srv, 0, sizeof srv);
  memset(&link, 0, sizeof link);
  memset(&cs, 0, sizeof cs);
  idle = view(0, 0, PHASE_RUNNING);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  free(text);
  text = NULL;
  return 0;
}

/* ---- Tests -------------------------------------------------------------- */

static void test_metrics_every_family_is_typed_and_named(void **state) {
  (void)state;
  static const struct {
    const char *name;
    const char *type;
  } expected[] = {
      {"gracefuld_http_requests_total", "counter"},
      {"gracefuld_increments_accepted_total", "counter"},
      {"gracefuld_increments_done_total", "counter"},
      {"gracefuld_increments_retried_total", "counter"},
      {"gracefuld_increments_failed_total", "counter"},
      {"gracefuld_redis_reconnects_total", "counter"},
      {"gracefuld_redis_asks_total", "counter"},
      {"gracefuld_redis_batches_total", "counter"},
      {"gracefuld_journal_writes_total", "counter"},
      {"gracefuld_journal_written_increments_total", "counter"},
      {"gracefuld_journal_refused_increments_total", "counter"},
      {"gracefuld_idempotency_replays_total", "counter"},
      {"gracefuld_idempotency_conflicts_total", "counter"},
      {"gracefuld_journal_resolutions_total", "counter"},
      {"gracefuld_journal_moves_total", "counter"},
      {"gracefuld_journal_adoptions_total", "counter"},
      {"gracefuld_journal_adopted_increments_total", "counter"},
      {"gracefuld_journal_swept_increments_total", "counter"},
      {"gracefuld_journal_write_size", "histogram"},
      {"gracefuld_connections_accepted_total", "counter"},
      {"gracefuld_connections_rejected_total", "counter"},
      {"gracefuld_increments_pending", "gauge"},
      {"gracefuld_open_connections", "gauge"},
      {"gracefuld_redis_connected", "gauge"},
      {"gracefuld_shutdown_phase", "gauge"},
      {"process_start_time_seconds", "gauge"},
  };
  metrics_count_request(&m, ROUTE_INCR, 200);
  render(&m, &idle);
  assert_int_equal(n_families, sizeof expected / sizeof expected[0]);
  for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
    bool found = false;
    for (int f = 0; f < n_families; f++) {
      if (strcmp(families[f].name, expected[i].name) == 0) {
        assert_string_equal(families[f].type, expected[i].type);
        assert_true(families[f].help);
        found = true;
      }
    }
    if (!found)
      fail_msg("no family %s", expected[i].name);
  }
}

static void test_metrics_counters_start_at_zero(void **state) {
  (void)state;
  render(&m, &idle);
  expect_sample("gracefuld_increments_accepted_total", "0");
  expect_sample("gracefuld_increments_done_total", "0");
  expect_sample("gracefuld_increments_retried_total", "0");
  expect_sample("gracefuld_increments_failed_total", "0");
  expect_sample("gracefuld_redis_reconnects_total", "0");
  expect_sample("gracefuld_redis_asks_total", "0");
  expect_sample("gracefuld_connections_accepted_total", "0");
  expect_sample("gracefuld_connections_rejected_total", "0");
  static const char *const routes[] = {"incr", "healthz", "readyz", "metrics",
                                       "other"};
  static const char *const codes[] = {"200", "400", "404", "405", "408",
                                      "413", "414", "431", "503", "other"};
  for (size_t r = 0; r < 5; r++) {
    for (size_t c = 0; c < 10; c++)
      expect_sample(request_series(routes[r], codes[c]), "0");
  }
}

static void test_metrics_counters_render_their_values(void **state) {
  (void)state;
  m.incr_accepted = 1001;
  cs.done = 1000;
  cs.retried = 7;
  cs.failed = 2;
  link.reconnects = 3;
  link.asks = 2;
  srv.accepted = 55;
  srv.rejected = 4;
  render(&m, &idle);
  expect_sample("gracefuld_increments_accepted_total", "1001");
  expect_sample("gracefuld_increments_done_total", "1000");
  expect_sample("gracefuld_increments_retried_total", "7");
  expect_sample("gracefuld_increments_failed_total", "2");
  expect_sample("gracefuld_redis_reconnects_total", "3");
  expect_sample("gracefuld_redis_asks_total", "2");
  expect_sample("gracefuld_connections_accepted_total", "55");
  expect_sample("gracefuld_connections_rejected_total", "4");
}

static void test_metrics_count_request_buckets_known_statuses(void **state) {
  (void)state;
  static const uint16_t known[] = {200, 400, 404, 405, 408, 413, 414, 431, 503};
  static const char *const routes[] = {"incr", "healthz", "readyz", "metrics",
                                       "other"};
  /* Each (route, status) pair a different count, so none can be mixed up. */
  for (int r = 0; r < ROUTE_COUNT; r++) {
    for (size_t s = 0; s < sizeof known / sizeof known[0]; s++) {
      for (size_t k = 0; k < (size_t)r * 10 + s + 1; k++)
        metrics_count_request(&m, (enum route)r, known[s]);
    }
  }
  render(&m, &idle);
  for (int r = 0; r < ROUTE_COUNT; r++) {
    for (size_t s = 0; s < sizeof known / sizeof known[0]; s++) {
      char code[8];
      char count[16];
      snprintf(code, sizeof code, "%u", known[s]);
      snprintf(count, sizeof count, "%zu", (size_t)r * 10 + s + 1);
      expect_sample(request_series(routes[r], code), count);
    }
    expect_sample(request_series(routes[r], "other"), "0");
  }
}

static void
test_metrics_count_request_buckets_unknown_statuses_as_other(void **state) {
  (void)state;
  metrics_count_request(&m, ROUTE_METRICS, 500);
  metrics_count_request(&m, ROUTE_METRICS, 302);
  metrics_count_request(&m, ROUTE_METRICS, 201);
  metrics_count_request(&m, ROUTE_METRICS, 0);
  metrics_count_request(&m, ROUTE_METRICS, 200);
  metrics_count_request(&m, ROUTE_OTHER, 599);
  render(&m, &idle);
  expect_sample(request_series("metrics", "other"), "4");
  expect_sample(request_series("metrics", "200"), "1");
  expect_sample(request_series("other", "other"), "1");
  assert_false(has_sample(request_series("metrics", "500")));
  expect_sample(request_series("incr", "other"), "0");
}

static void test_metrics_every_request_series_is_rendered(void **state) {
  (void)state;
  metrics_count_request(&m, ROUTE_INCR, 200);
  metrics_count_request(&m, ROUTE_INCR, 200);
  metrics_count_request(&m, ROUTE_READYZ, 503);
  render(&m, &idle);
  int requests = 0;
  for (int i = 0; i < n_samples; i++)
    requests += strstr(samples[i].series, "http_requests_total") != NULL;
  assert_int_equal(requests, ROUTE_COUNT * METRICS_STATUSES);
  expect_sample(request_series("incr", "200"), "2");
  expect_sample(request_series("incr", "503"), "0");
  expect_sample(request_series("readyz", "503"), "1");
}

static void test_metrics_gauges_reflect_values_passed_in(void **state) {
  (void)state;
  struct metrics_view g = view(123456, 1, PHASE_DRAINING);
  srv.open = 17;
  render(&m, &g);
  expect_sample("gracefuld_increments_pending", "123456");
  expect_sample("gracefuld_open_connections", "17");
  expect_sample("gracefuld_redis_connected", "1");

  g.pending = 0;
  srv.open = 0;
  g.redis_connected = 0;
  render(&m, &g);
  expect_sample("gracefuld_increments_pending", "0");
  expect_sample("gracefuld_open_connections", "0");
  expect_sample("gracefuld_redis_connected", "0");

  /* Any true value is 1. */
  g.redis_connected = 42;
  render(&m, &g);
  expect_sample("gracefuld_redis_connected", "1");
}

static void
test_metrics_shutdown_phase_marks_only_the_current_one(void **state) {
  (void)state;
  static const char *const names[] = {"running", "delaying", "draining",
                                      "flushing", "done"};
  for (int current = 0; current < PHASE_COUNT; current++) {
    struct metrics_view g = view(0, 1, (enum shutdown_phase)current);
    render(&m, &g);
    for (int p = 0; p < PHASE_COUNT; p++) {
      char series[96];
      snprintf(series, sizeof series, "gracefuld_shutdown_phase{phase=\"%s\"}",
               names[p]);
      expect_sample(series, p == current ? "1" : "0");
    }
  }
}

static void test_metrics_start_time_is_when_metrics_began(void **state) {
  (void)state;
  time_t before = time(NULL);
  metrics_init(&m);
  time_t after = time(NULL);
  render(&m, &idle);
  double start = strtod(value_of("process_start_time_seconds"), NULL);
  assert_true(start >= (double)before - 1);
  assert_true(start <= (double)after + 1);
}

static void test_metrics_largest_values_fit_the_buffer(void **state) {
  (void)state;
  for (int r = 0; r < ROUTE_COUNT; r++) {
    for (int s = 0; s < METRICS_STATUSES; s++)
      m.requests[r][s] = UINT64_MAX;
  }
  m.incr_accepted = cs.done = cs.retried = cs.failed = UINT64_MAX;
  m.idem_replays = m.idem_conflicts = UINT64_MAX;
  link.reconnects = link.asks = UINT64_MAX;
  srv.accepted = srv.rejected = srv.open = UINT64_MAX;
  struct metrics_view g = view(UINT64_MAX, 1, PHASE_FLUSHING);
  render(&m, &g);
  /* Nothing cut off: every series is there, through the last family. */
  assert_int_equal(n_samples, ROUTE_COUNT * METRICS_STATUSES + 19 +
                                  COUNTER_WRITE_BUCKETS + 2 + 3 + PHASE_COUNT +
                                  1);
  expect_sample(request_series("other", "other"), "18446744073709551615");
  expect_sample("gracefuld_increments_pending", "18446744073709551615");
  value_of("process_start_time_seconds");
}

#define METRICS_TEST(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

static void test_metrics_journal_write_sizes_are_a_histogram(void **state) {
  (void)state;
  uint64_t sizes[] = {1, 2, 4, 5, 1000, 5000};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    counter_stats_observe_write(&cs, sizes[i]);
  render(&m, &idle);
  /* Cumulative, as Prometheus reads them. */
  expect_sample("gracefuld_journal_write_size_bucket{le=\"1\"}", "1");
  expect_sample("gracefuld_journal_write_size_bucket{le=\"4\"}", "3");
  expect_sample("gracefuld_journal_write_size_bucket{le=\"16\"}", "4");
  expect_sample("gracefuld_journal_write_size_bucket{le=\"1024\"}", "5");
  expect_sample("gracefuld_journal_write_size_bucket{le=\"+Inf\"}", "6");
  expect_sample("gracefuld_journal_write_size_count", "6");
  expect_sample("gracefuld_journal_write_size_sum", "6012");
}

static void test_metrics_redis_node_names_server_and_transport(void **state) {
  (void)state;
  render(&m, &idle);
  assert_false(has_sample("gracefuld_redis_node_info"));
  struct metrics_view g = idle;
  g.redis_node = "redis.example:6380";
  g.redis_transport = "tls";
  render(&m, &g);
  expect_sample("gracefuld_redis_node_info{node=\"redis.example:6380\","
                "transport=\"tls\"}",
                "1");
  g.redis_node = "/run/a\"b\\c.sock";
  g.redis_transport = "unix";
  render(&m, &g);
  expect_sample("gracefuld_redis_node_info{node=\"/run/a\\\"b\\\\c.sock\","
                "transport=\"unix\"}",
                "1");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      METRICS_TEST(test_metrics_redis_node_names_server_and_transport),
      METRICS_TEST(test_metrics_journal_write_sizes_are_a_histogram),
      METRICS_TEST(test_metrics_every_family_is_typed_and_named),
      METRICS_TEST(test_metrics_counters_start_at_zero),
      METRICS_TEST(test_metrics_counters_render_their_values),
      METRICS_TEST(test_metrics_count_request_buckets_known_statuses),
      METRICS_TEST(
          test_metrics_count_request_buckets_unknown_statuses_as_other),
      METRICS_TEST(test_metrics_every_request_series_is_rendered),
      METRICS_TEST(test_metrics_gauges_reflect_values_passed_in),
      METRICS_TEST(test_metrics_shutdown_phase_marks_only_the_current_one),
      METRICS_TEST(test_metrics_start_time_is_when_metrics_began),
      METRICS_TEST(test_metrics_largest_values_fit_the_buffer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
