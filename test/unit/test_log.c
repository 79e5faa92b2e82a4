/* log_format_line, log_format_fields and the log_* macros: one line per
 * event, a JSON object of typed fields or plain text. Every JSON line is
 * checked by a small parser for flat objects of strings, numbers and
 * booleans. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <unistd.h>

#include <uv.h>

#include "log.h"

/* ---- A JSON reader for one flat object ---------------------------------- */

#define MAX_FIELDS 32
#define MAX_VALUE 8192

struct field {
  char key[64];
  char value[MAX_VALUE]; /* decoded string, or the number or bool as written */
  bool is_string;
};

struct object {
  int n;
  struct field fields[MAX_FIELDS];
};

struct reader {
  const char *p;
  const char *end;
};

static void skip_ws(struct reader *r) {
  while (r->p < r->end &&
         (*r->p == ' ' || *r->p == '\t' || *r->p == '\r' || *r->p == '\n'))
    r->p++;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Reads a string into out (decoded; \u escapes above 0xff become '?'). */
static int read_string(struct reader *r, char *out, size_t cap) {
  size_t n = 0;
  if (r->p >= r->end || *r->p != '"')
    return -1;
  r->p++;
  while (r->p < r->end && *r->p != '"') {
    unsigned char c = (unsigned char)*r->p++;
    if (c < 0x20)
      return -1; /* raw control characters are not allowed */
    if (c == '\\') {
      if (r->p >= r->end)
        return -1;
      char e = *r->p++;
      switch (e) {
      case '"':
      case '\\':
      case '/':
        c = (unsigned char)e;
        break;
      case 'b':
        c = '\b';
        break;
      case 'f':
        c = '\f';
        break;
      case 'n':
        c = '\n';
        break;
      case 'r':
        c = '\r';
        break;
      case 't':
        c = '\t';
        break;
      case 'u': {
        int v = 0;
        for (int i = 0; i < 4; i++) {
          if (r->p >= r->end || hex_digit(*r->p) < 0)
            return -1;
          v = v * 16 + hex_digit(*r->p++);
        }
        c = v < 0x100 ? (unsigned char)v : '?';
        break;
      }
      default:
        return -1;
      }
    }
    if (n + 1 >= cap)
      return -1;
    out[n++] = (char)c;
  }
  if (r->p >= r->end)
    return -1; /* unterminated */
  r->p++;
  out[n] = '\0';
  return 0;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Reads a JSON number (or true/false), kept as written. */
static int read_number(struct reader *r, char *out, size_t cap) {
  const char *start = r->p;
  static const char *const words[] = {"true", "false"};
  for (int i = 0; i < 2; i++) {
    size_t wn = strlen(words[i]);
    if ((size_t)(r->end - r->p) >= wn && memcmp(r->p, words[i], wn) == 0) {
      if (wn + 1 > cap)
        return -1;
      memcpy(out, words[i], wn + 1);
      r->p += wn;
      return 0;
    }
  }
  if (r->p < r->end && *r->p == '-')
    r->p++;
  if (r->p >= r->end || !is_digit(*r->p))
    return -1;
  if (*r->p == '0') {
    r->p++;
  } else {
    while (r->p < r->end && is_digit(*r->p))
      r->p++;
  }
  if (r->p < r->end && *r->p == '.') {
    r->p++;
    if (r->p >= r->end || !is_digit(*r->p))
      return -1;
    while (r->p < r->end && is_digit(*r->p))
      r->p++;
  }
  if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
    r->p++;
    if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
      r->p++;
    if (r->p >= r->end || !is_digit(*r->p))
      return -1;
    while (r->p < r->end && is_digit(*r->p))
      r->p++;
  }
  size_t n = (size_t)(r->p - start);
  if (n + 1 > cap)
    return -1;
  memcpy(out, start, n);
  out[n] = '\0';
  return 0;
}

/* Parses s[0..len) as exactly one object of string and number values. */
static int parse_object(const char *s, size_t len, struct object *o) {
  struct reader r = {s, s + len};
  o->n = 0;
  skip_ws(&r);
  if (r.p >= r.end || *r.p++ != '{')
    return -1;
  skip_ws(&r);
  if (r.p < r.end && *r.p == '}') {
    r.p++;
  } else {
    for (;;) {
      if (o->n == MAX_FIELDS)
        return -1;
      struct field *f = &o->fields[o->n++];
      skip_ws(&r);
      if (read_string(&r, f->key, sizeof f->key) != 0)
        return -1;
      skip_ws(&r);
      if (r.p >= r.end || *r.p++ != ':')
        return -1;
      skip_ws(&r);
      if (r.p < r.end && *r.p == '"') {
        f->is_string = true;
        if (read_string(&r, f->value, sizeof f->value) != 0)
          return -1;
      } else {
        f->is_string = false;
        if (read_number(&r, f->value, sizeof f->value) != 0)
          return -1;
      }
      skip_ws(&r);
      if (r.p >= r.end)
        return -1;
      char c = *r.p++;
      if (c == '}')
        break;
      if (c != ',')
        return -1;
    }
  }
  skip_ws(&r);
  return r.p == r.end ? 0 : -1;
}

/* ---- Helpers ------------------------------------------------------------ */

static char line[8192];
static int line_len;
static struct object obj;

#define NFIELDS(a) (sizeof(a) / sizeof((a)[0]))

/* Formats one line of at most cap bytes and checks it is one line. */
static void format_line(enum log_format fmt, enum log_level level,
                        const char *event, const struct log_field *fields,
                        size_t n, int cap) {
  assert_true(cap <= (int)sizeof line);
  /* Exactly cap bytes on the heap, so that ASan sees any overrun. */
  char *buf = malloc((size_t)cap);
  assert_non_null(buf);
  line_len = log_format_line(buf, cap, fmt, level, event, fields, n);
  memset(line, 0, sizeof line);
  memcpy(line, buf, line_len > 0 && line_len <= cap ? (size_t)line_len : 0);
  free(buf);
  assert_true(line_len > 0);
  assert_true(line_len <= cap);
  if (line[line_len - 1] != '\n')
    fail_msg("line does not end with a newline: %.*s", line_len, line);
  const char *nl = memchr(line, '\n', (size_t)line_len);
  if (nl != line + line_len - 1)
    fail_msg("more than one line: %.*s", line_len, line);
}

static void format_json_cap(enum log_level level, const char *event,
                            const struct log_field *fields, size_t n, int cap) {
  format_line(LOG_FORMAT_JSON, level, event, fields, n, cap);
  if (parse_object(line, (size_t)line_len - 1, &obj) != 0)
    fail_msg("not one JSON object: %.*s", line_len, line);
}

static void format_json(enum log_level level, const char *event,
                        const struct log_field *fields, size_t n) {
  format_json_cap(level, event, fields, n, 2048);
}

static const struct field *field(const char *key) {
  const struct field *found = NULL;
  for (int i = 0; i < obj.n; i++) {
    if (strcmp(obj.fields[i].key, key) == 0) {
      if (found)
        fail_msg("field %s appears twice in %.*s", key, line_len, line);
      found = &obj.fields[i];
    }
  }
  if (!found)
    fail_msg("no field %s in %.*s", key, line_len, line);
  return found;
}

static bool has_field(const char *key) {
  for (int i = 0; i < obj.n; i++) {
    if (strcmp(obj.fields[i].key, key) == 0)
      return true;
  }
  return false;
}

static void expect_text_field(const char *key, const char *value) {
  const struct field *f = field(key);
  if (!f->is_string)
    fail_msg("%s is not a string, expected \"%s\": %.*s", key, value, line_len,
             line);
  assert_string_equal(f->value, value);
}

static void expect_number_field(const char *key, const char *value) {
  const struct field *f = field(key);
  if (f->is_string)
    fail_msg("%s is a string, expected %s: %.*s", key, value, line_len, line);
  assert_string_equal(f->value, value);
}

/* "2025-11-24T16:07:00.123Z" */
static void expect_timestamp(const char *ts, size_t len) {
  static const char pattern[] = "dddd-dd-ddTdd:dd:dd.dddZ";
  assert_int_equal(len, strlen(pattern));
  for (size_t i = 0; i < len; i++) {
    if (pattern[i] == 'd' ? !is_digit(ts[i]) : ts[i] != pattern[i])
      fail_msg("timestamp %.*s does not read like %s", (int)len, ts, pattern);
  }
}

/* The text line after its timestamp. */
static void expect_text_rest(const char *rest) {
  expect_timestamp(line, 24);
  assert_int_equal(line_len, 24 + strlen(rest));
  assert_memory_equal(line + 24, rest, strlen(rest));
}

/* ---- JSON --------------------------------------------------------------- */

static void test_log_json_line_has_ts_level_event_then_fields(void **state) {
  (void)state;
  const struct log_field f[] = {LOG_STR("phase", "draining")};
  format_json(LOG_INFO, "start", f, NFIELDS(f));
  assert_int_equal(obj.n, 4);
  assert_string_equal(obj.fields[0].key, "ts");
  assert_string_equal(obj.fields[1].key, "level");
  assert_string_equal(obj.fields[2].key, "event");
  assert_string_equal(obj.fields[3].key, "phase");
  assert_true(obj.fields[0].is_string);
  expect_timestamp(obj.fields[0].value, strlen(obj.fields[0].value));
  expect_text_field("level", "info");
  expect_text_field("event", "start");
  expect_text_field("phase", "draining");
}

static void test_log_json_names_each_level(void **state) {
  (void)state;
  static const char *const names[] = {"debug", "info", "warn", "error"};
  const struct log_field f[] = {LOG_INT("n", 1)};
  for (int l = LOG_DEBUG; l <= LOG_ERROR; l++) {
    format_json((enum log_level)l, "e", f, NFIELDS(f));
    expect_text_field("level", names[l]);
  }
}

static void test_log_level_names_parse_back_and_nothing_else(void **state) {
  (void)state;
  static const char *const names[] = {"debug", "info", "warn", "error"};
  for (int l = LOG_DEBUG; l <= LOG_ERROR; l++) {
    enum log_level got = LOG_ERROR;
    assert_string_equal(log_level_name((enum log_level)l), names[l]);
    assert_int_equal(log_level_parse(names[l], &got), 0);
    assert_int_equal(got, l);
  }
  enum log_level kept = LOG_WARN;
  assert_int_equal(log_level_parse("INFO", &kept), UV_EINVAL);
  assert_int_equal(log_level_parse("warning", &kept), UV_EINVAL);
  assert_int_equal(log_level_parse("", &kept), UV_EINVAL);
  assert_int_equal(kept, LOG_WARN);
}

static void test_log_json_writes_each_type_as_its_json_type(void **state) {
  (void)state;
  const struct log_field f[] = {
      LOG_INT("a", 42),          LOG_INT("b", -3),
      LOG_INT("min", LLONG_MIN), LOG_UINT("max", ULLONG_MAX),
      LOG_UINT("zero", 0),       LOG_BOOL("yes", true),
      LOG_BOOL("no", false),     LOG_STR("s", "127.0.0.1:6379"),
  };
  format_json(LOG_INFO, "n", f, NFIELDS(f));
  assert_int_equal(obj.n, 3 + (int)NFIELDS(f));
  expect_number_field("a", "42");
  expect_number_field("b", "-3");
  expect_number_field("min", "-9223372036854775808");
  expect_number_field("max", "18446744073709551615");
  expect_number_field("zero", "0");
  expect_number_field("yes", "true");
  expect_number_field("no", "false");
  expect_text_field("s", "127.0.0.1:6379");
}

static void
test_log_json_string_that_looks_like_a_number_stays_a_string(void **state) {
  (void)state;
  const struct log_field f[] = {LOG_STR("id", "42"), LOG_STR("t", "true"),
                                LOG_STR("e", "")};
  format_json(LOG_INFO, "e", f, NFIELDS(f));
  expect_text_field("id", "42");
  expect_text_field("t", "true");
  expect_text_field("e", "");
}

static void test_log_json_value_cannot_add_or_break_fields(void **state) {
  (void)state;
  /* Under the old printf-then-parse API, this value ended the string. */
  const struct log_field f[] = {
      LOG_STR("reason", "a\" ,\"level\":\"debug"),
      LOG_STR("spaced", "reason=\"x y\" pending=4"),
  };
  format_json(LOG_WARN, "redis_down", f, NFIELDS(f));
  assert_int_equal(obj.n, 5);
  expect_text_field("level", "warn");
  expect_text_field("reason", "a\" ,\"level\":\"debug");
  expect_text_field("spaced", "reason=\"x y\" pending=4");
  assert_false(has_field("pending"));
}

static void
test_log_json_escapes_quotes_backslashes_and_controls(void **state) {
  (void)state;
  const struct log_field f[] = {
      LOG_STR("q", "a\"b"),        LOG_STR("back", "C:\\dir"),
      LOG_STR("tab", "x\ty"),      LOG_STR("nl", "one\ntwo"),
      LOG_STR("cr", "a\rb"),       LOG_STR("bell", "\a"),
      LOG_STR("esc", "\x1b[31m"),  LOG_STR("del", "\x7f"),
      LOG_STR("k\"e\ny", "value"),
  };
  format_json(LOG_ERROR, "ev\"il\n", f, NFIELDS(f));
  expect_text_field("event", "ev\"il\n");
  expect_text_field("q", "a\"b");
  expect_text_field("back", "C:\\dir");
  expect_text_field("tab", "x\ty");
  expect_text_field("nl", "one\ntwo");
  expect_text_field("cr", "a\rb");
  expect_text_field("bell", "\a");
  expect_text_field("esc", "\x1b[31m");
  expect_text_field("del", "\x7f");
  expect_text_field("k\"e\ny", "value");
  /* Raw control bytes never reach the line. */
  for (int i = 0; i < line_len - 1; i++)
    assert_true((unsigned char)line[i] >= 0x20 &&
                (unsigned char)line[i] != 0x7f);
}

static void test_log_json_strn_takes_exactly_n_bytes(void **state) {
  (void)state;
  static const char reply[] = {'E', 'R', 'R', '\0', 'x', 'y', 'z'};
  const struct log_field f[] = {LOG_STRN("reply", reply, 5),
                                LOG_STRN("none", "ignored", 0),
                                LOG_STR("null", NULL)};
  format_json(LOG_ERROR, "incr_failed", f, NFIELDS(f));
  /* The NUL inside is escaped, and nothing past n is read. */
  assert_non_null(strstr(line, "\"reply\":\"ERR\\u0000x\""));
  expect_text_field("none", "");
  expect_text_field("null", "");
}

static void test_log_json_keeps_utf8_and_replaces_other_bytes(void **state) {
  (void)state;
  const struct log_field f[] = {
      LOG_STR("name", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
      LOG_STR("bad", "a\xff"
                     "b\xc3(\xed\xa0\x80\xc0\xaf\xe2\x82"),
  };
  format_json(LOG_INFO, "e", f, NFIELDS(f));
  expect_text_field("name", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  /* Each byte that is not part of a well-formed sequence is one U+FFFD. */
  assert_non_null(strstr(line, "\"bad\":\"a\\ufffdb\\ufffd(\\ufffd\\ufffd"
                               "\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\""));
}

static void test_log_json_truncated_line_stays_one_valid_object(void **state) {
  (void)state;
  /* A value far longer than the line: cut inside, then closed. */
  static char big[3000];
  memset(big, '\x01', sizeof big - 1);
  const struct log_field f1[] = {LOG_UINT("failed", 1), LOG_STR("reply", big),
                                 LOG_UINT("after", 7)};
  format_json_cap(LOG_ERROR, "incr_failed", f1, NFIELDS(f1), 2048);
  expect_text_field("event", "incr_failed");
  expect_number_field("failed", "1");
  assert_true(strlen(field("reply")->value) > 100);
  assert_false(has_field("after"));

  /* Every cut, from the fixed fields on, stays one object. */
  const struct log_field f2[] = {LOG_STR("key_one", "value \"one\""),
                                 LOG_UINT("key_two", 12345),
                                 LOG_BOOL("key_three", true)};
  for (int cap = 72; cap <= 160; cap++)
    format_json_cap(LOG_INFO, "truncation", f2, NFIELDS(f2), cap);
}

/* ---- Text --------------------------------------------------------------- */

static void test_log_text_line_reads_ts_level_event_fields(void **state) {
  (void)state;
  const struct log_field f[] = {LOG_UINT("pending", 5),
                                LOG_STR("reason", "a b"),
                                LOG_BOOL("closing", false)};
  format_line(LOG_FORMAT_TEXT, LOG_INFO, "drain", f, NFIELDS(f), 2048);
  expect_text_rest(" info drain pending=5 reason=\"a b\" closing=false\n");
}

static void test_log_text_quotes_only_what_needs_it(void **state) {
  (void)state;
  const struct log_field f[] = {
      LOG_STR("addr", "127.0.0.1:6379"),
      LOG_STR("empty", ""),
      LOG_STR("eq", "a=b"),
      LOG_STR("q", "say \"hi\""),
      LOG_STR("back", "C:\\dir"),
      LOG_INT("neg", -4),
  };
  format_line(LOG_FORMAT_TEXT, LOG_WARN, "e", f, NFIELDS(f), 2048);
  expect_text_rest(" warn e addr=127.0.0.1:6379 empty=\"\" eq=\"a=b\" "
                   "q=\"say \\\"hi\\\"\" back=\"C:\\\\dir\" neg=-4\n");
}

static void test_log_text_line_stays_one_line(void **state) {
  (void)state;
  const struct log_field f[] = {LOG_STR("reply", "ERR one\ntwo"),
                                LOG_STR("key", "a\r\nb")};
  format_line(LOG_FORMAT_TEXT, LOG_ERROR, "incr_failed", f, NFIELDS(f), 2048);
  expect_text_rest(" error incr_failed reply=\"ERR one\\x0atwo\" "
                   "key=\"a\\x0d\\x0ab\"\n");
  static char long_value[1024];
  memset(long_value, 'x', sizeof long_value - 1);
  const struct log_field g[] = {LOG_STR("v", long_value)};
  for (int cap = 40; cap <= 140; cap++)
    format_line(LOG_FORMAT_TEXT, LOG_INFO, "long", g, NFIELDS(g), cap);
}

static void test_log_format_fields_writes_pairs_only(void **state) {
  (void)state;
  const struct log_field f[] = {LOG_STR("reason", "drained"),
                                LOG_INT("exit_code", 0), LOG_UINT("done", 3)};
  char buf[64];
  int n = log_format_fields(buf, (int)sizeof buf, f, NFIELDS(f));
  assert_string_equal(buf, "reason=drained exit_code=0 done=3");
  assert_int_equal(n, (int)strlen(buf));
  /* Cut between pairs, and always NUL-terminated within cap. */
  n = log_format_fields(buf, 27, f, NFIELDS(f));
  assert_string_equal(buf, "reason=drained exit_code=0");
  assert_int_equal(n, 26);
}

/* ---- Levels and log_write ----------------------------------------------- */

static void test_log_enabled_follows_the_minimum_level(void **state) {
  (void)state;
  log_setup(LOG_FORMAT_JSON, LOG_WARN);
  assert_false(log_enabled(LOG_DEBUG));
  assert_false(log_enabled(LOG_INFO));
  assert_true(log_enabled(LOG_WARN));
  assert_true(log_enabled(LOG_ERROR));
  log_setup(LOG_FORMAT_JSON, LOG_DEBUG);
  assert_true(log_enabled(LOG_DEBUG));
  log_setup(LOG_FORMAT_JSON, LOG_ERROR);
  assert_false(log_enabled(LOG_WARN));
  assert_true(log_enabled(LOG_ERROR));
  log_setup(LOG_FORMAT_JSON, LOG_INFO);
}

static int formatted;

static int count_formatting(void) { return ++formatted; }

/* Runs the log calls of body with stderr sent to a temporary file, and
 * returns what they wrote. */
static char *capture_stderr(void (*body)(void)) {
  FILE *tmp = tmpfile();
  assert_non_null(tmp);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  assert_true(saved >= 0);
  assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
  body();
  assert_true(dup2(saved, STDERR_FILENO) >= 0);
  close(saved);
  fseek(tmp, 0, SEEK_END);
  long size = ftell(tmp);
  rewind(tmp);
  static char text[16384]; /* static: a failed assertion leaks nothing */
  size_t got = fread(text, 1, sizeof text - 1, tmp);
  text[got] = '\0';
  fclose(tmp);
  assert_int_equal(got, (size_t)size);
  return text;
}

static void log_some(void) {
  log_setup(LOG_FORMAT_JSON, LOG_INFO);
  log_debug("hidden", LOG_INT("n", count_formatting()));
  log_info("shown", LOG_INT("n", 7), LOG_STR("name", "x y"));
  log_warn("also", LOG_STR("reason", "a b"));
  log_setup(LOG_FORMAT_TEXT, LOG_ERROR);
  log_warn("hidden_too", LOG_INT("n", count_formatting()));
  log_error("text", LOG_INT("n", 9));
  log_setup(LOG_FORMAT_JSON, LOG_INFO);
}

static void test_log_write_emits_enabled_lines_to_stderr(void **state) {
  (void)state;
  formatted = 0;
  char *text = capture_stderr(log_some);
  /* Arguments of a disabled level are not even evaluated. */
  assert_int_equal(formatted, 0);
  assert_null(strstr(text, "hidden"));

  char *first = text;
  char *second = strchr(first, '\n');
  assert_non_null(second);
  second++;
  char *third = strchr(second, '\n');
  assert_non_null(third);
  third++;
  char *end = strchr(third, '\n');
  assert_non_null(end);
  assert_int_equal(end[1], '\0');

  line_len = (int)(second - first);
  memcpy(line, first, (size_t)line_len);
  assert_int_equal(parse_object(line, (size_t)line_len - 1, &obj), 0);
  expect_text_field("event", "shown");
  expect_number_field("n", "7");
  expect_text_field("name", "x y");

  line_len = (int)(third - second);
  memcpy(line, second, (size_t)line_len);
  assert_int_equal(parse_object(line, (size_t)line_len - 1, &obj), 0);
  expect_text_field("level", "warn");
  expect_text_field("reason", "a b");

  assert_non_null(strstr(third, " error text n=9\n"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_log_json_line_has_ts_level_event_then_fields),
      cmocka_unit_test(test_log_json_names_each_level),
      cmocka_unit_test(test_log_level_names_parse_back_and_nothing_else),
      cmocka_unit_test(test_log_json_writes_each_type_as_its_json_type),
      cmocka_unit_test(
          test_log_json_string_that_looks_like_a_number_stays_a_string),
      cmocka_unit_test(test_log_json_value_cannot_add_or_break_fields),
      cmocka_unit_test(test_log_json_escapes_quotes_backslashes_and_controls),
      cmocka_unit_test(test_log_json_strn_takes_exactly_n_bytes),
      cmocka_unit_test(test_log_json_keeps_utf8_and_replaces_other_bytes),
      cmocka_unit_test(test_log_json_truncated_line_stays_one_valid_object),
      cmocka_unit_test(test_log_text_line_reads_ts_level_event_fields),
      cmocka_unit_test(test_log_text_quotes_only_what_needs_it),
      cmocka_unit_test(test_log_text_line_stays_one_line),
      cmocka_unit_test(test_log_format_fields_writes_pairs_only),
      cmocka_unit_test(test_log_enabled_follows_the_minimum_level),
      cmocka_unit_test(test_log_write_emits_enabled_lines_to_stderr),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
