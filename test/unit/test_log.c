/* log_format_line and the log_* macros: one line per event, a JSON object
 * whose fields come from key=value pairs, or plain text. Every JSON line is
 * checked by a small parser for flat objects of strings and numbers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* ---- A JSON reader for one flat object ---------------------------------- */

#define MAX_FIELDS 32
#define MAX_VALUE 8192

struct field {
  char key[64];
  char value[MAX_VALUE]; /* decoded string, or the number as written */
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

/* Reads a JSON number, kept as written. */
static int read_number(struct reader *r, char *out, size_t cap) {
  const char *start = r->p;
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

/* Formats one line of at most cap bytes and checks it is one line. */
static void format_line(enum log_format fmt, enum log_level level,
                        const char *event, const char *msg, int cap) {
  assert_true(cap <= (int)sizeof line);
  /* Exactly cap bytes on the heap, so that ASan sees any overrun. */
  char *buf = malloc((size_t)cap);
  assert_non_null(buf);
  line_len = log_format_line(buf, cap, fmt, level, event, msg);
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
                            const char *msg, int cap) {
  format_line(LOG_FORMAT_JSON, level, event, msg, cap);
  if (parse_object(line, (size_t)line_len - 1, &obj) != 0)
    fail_msg("not one JSON object: %.*s", line_len, line);
}

static void format_json(enum log_level level, const char *event,
                        const char *msg) {
  format_json_cap(level, event, msg, 2048);
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
    fail_msg("%s is a number, expected the string \"%s\": %.*s", key, value,
             line_len, line);
  assert_string_equal(f->value, value);
}

static void expect_number_field(const char *key, const char *value) {
  const struct field *f = field(key);
  if (f->is_string)
    fail_msg("%s is a string, expected the number %s: %.*s", key, value,
             line_len, line);
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

/* ---- JSON --------------------------------------------------------------- */

static void test_log_json_line_has_ts_level_and_event(void **state) {
  (void)state;
  format_json(LOG_INFO, "start", "");
  assert_int_equal(obj.n, 3);
  assert_string_equal(obj.fields[0].key, "ts");
  assert_string_equal(obj.fields[1].key, "level");
  assert_string_equal(obj.fields[2].key, "event");
  assert_true(obj.fields[0].is_string);
  expect_timestamp(obj.fields[0].value, strlen(obj.fields[0].value));
  expect_text_field("level", "info");
  expect_text_field("event", "start");
}

static void test_log_json_names_each_level(void **state) {
  (void)state;
  static const char *const names[] = {"debug", "info", "warn", "error"};
  for (int l = LOG_DEBUG; l <= LOG_ERROR; l++) {
    format_json((enum log_level)l, "e", "");
    expect_text_field("level", names[l]);
  }
}

static void test_log_json_pairs_become_fields(void **state) {
  (void)state;
  format_json(LOG_INFO, "phase", "phase=draining pending=12 connections=3");
  assert_int_equal(obj.n, 6);
  expect_text_field("phase", "draining");
  expect_number_field("pending", "12");
  expect_number_field("connections", "3");
  assert_false(has_field("msg"));
}

static void test_log_json_numbers_stay_unquoted(void **state) {
  (void)state;
  format_json(LOG_INFO, "n",
              "a=42 b=-3 c=0 d=0.25 e=18446744073709551615 f=-0.5 g=10.0");
  expect_number_field("a", "42");
  expect_number_field("b", "-3");
  expect_number_field("c", "0");
  expect_number_field("d", "0.25");
  expect_number_field("e", "18446744073709551615");
  expect_number_field("f", "-0.5");
  expect_number_field("g", "10.0");
}

static void test_log_json_non_numbers_are_quoted(void **state) {
  (void)state;
  /* Anything JSON would not read as a number stays a string. */
  format_json(LOG_INFO, "n",
              "a=007 b=1. c=1.2.3 d=0x1f e=- f=abc g= h=1e5 i=.5 j=+1 k=12ab "
              "l=127.0.0.1:6379 m=-");
  expect_text_field("a", "007");
  expect_text_field("b", "1.");
  expect_text_field("c", "1.2.3");
  expect_text_field("d", "0x1f");
  expect_text_field("e", "-");
  expect_text_field("f", "abc");
  expect_text_field("g", "");
  expect_text_field("h", "1e5");
  expect_text_field("i", ".5");
  expect_text_field("j", "+1");
  expect_text_field("k", "12ab");
  expect_text_field("l", "127.0.0.1:6379");
  expect_text_field("m", "-");
}

static void test_log_json_quoted_values_keep_spaces(void **state) {
  (void)state;
  format_json(LOG_WARN, "redis_down",
              "addr=redis:6379 reason=\"Connection refused by peer\" "
              "pending=4 error=\"\"");
  expect_text_field("addr", "redis:6379");
  expect_text_field("reason", "Connection refused by peer");
  expect_number_field("pending", "4");
  expect_text_field("error", "");
  assert_false(has_field("msg"));
}

static void test_log_json_quoted_number_stays_a_string(void **state) {
  (void)state;
  format_json(LOG_INFO, "e", "id=\"42\"");
  expect_text_field("id", "42");
}

static void test_log_json_loose_words_go_under_msg(void **state) {
  (void)state;
  format_json(LOG_INFO, "hello", "listening on all interfaces");
  expect_text_field("msg", "listening on all interfaces");
  format_json(LOG_INFO, "mixed", "hello n=1 big world  x=y");
  expect_text_field("msg", "hello big world");
  expect_number_field("n", "1");
  expect_text_field("x", "y");
}

static void test_log_json_keys_are_lowercase_words(void **state) {
  (void)state;
  /* Not a key: upper case, dashes, an empty name. Those are loose words. */
  format_json(LOG_INFO, "k", "Key=1 x-y=2 =3 a_b9=4");
  expect_number_field("a_b9", "4");
  expect_text_field("msg", "Key=1 x-y=2 =3");
  assert_false(has_field("Key"));
  assert_false(has_field("x-y"));
}

static void test_log_json_escapes_quotes_and_control_characters(void **state) {
  (void)state;
  format_json(LOG_ERROR, "ev\"il\n",
              "q=a\"b back=C:\\dir tab=x\ty nl=one\ntwo cr=a\rb bell=\a "
              "esc=\x1b[31m us=\x1f loose\x01word");
  expect_text_field("event", "ev\"il\n");
  expect_text_field("q", "a\"b");
  expect_text_field("back", "C:\\dir");
  expect_text_field("tab", "x\ty");
  expect_text_field("nl", "one\ntwo");
  expect_text_field("cr", "a\rb");
  expect_text_field("bell", "\a");
  expect_text_field("esc", "\x1b[31m");
  expect_text_field("us", "\x1f");
  expect_text_field("msg", "loose\x01word");
  /* Raw control bytes never reach the line. */
  for (int i = 0; i < line_len - 1; i++)
    assert_true((unsigned char)line[i] >= 0x20);
}

static void test_log_json_keeps_utf8_as_is(void **state) {
  (void)state;
  format_json(LOG_INFO, "e", "name=caf\xc3\xa9");
  expect_text_field("name", "caf\xc3\xa9");
}

static void test_log_json_truncated_line_stays_one_valid_object(void **state) {
  (void)state;
  /* log_write formats at most 1023 bytes of message into 2048 bytes of
   * line; escaping can make the message six times longer. */
  char msg[1024];
  strcpy(msg, "reply=");
  memset(msg + 6, '\x01', sizeof msg - 7);
  msg[sizeof msg - 1] = '\0';
  format_json_cap(LOG_ERROR, "incr_failed", msg, 2048);
  expect_text_field("event", "incr_failed");

  /* Room for the fixed fields, then cut inside a key, a value, a loose word
   * (72 bytes hold ts, level and event="truncation"). */
  static const int caps[] = {72, 80, 90, 96, 100, 110, 128};
  for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
    format_json_cap(LOG_INFO, "truncation",
                    "key_one=value_one key_two=12345 loose words here",
                    caps[i]);
  }
}

/* ---- Text --------------------------------------------------------------- */

static void test_log_text_line_reads_ts_level_event_message(void **state) {
  (void)state;
  static const char rest[] = " info drain pending=5 reason=\"a b\"\n";
  format_line(LOG_FORMAT_TEXT, LOG_INFO, "drain", "pending=5 reason=\"a b\"",
              2048);
  assert_int_equal(line_len, 24 + strlen(rest));
  expect_timestamp(line, 24);
  assert_memory_equal(line + 24, rest, strlen(rest));
}

static void test_log_text_line_without_message(void **state) {
  (void)state;
  static const char rest[] = " warn start\n";
  format_line(LOG_FORMAT_TEXT, LOG_WARN, "start", "", 2048);
  assert_int_equal(line_len, 24 + strlen(rest));
  expect_timestamp(line, 24);
  assert_memory_equal(line + 24, rest, strlen(rest));
}

static void test_log_text_line_stays_one_line(void **state) {
  (void)state;
  /* format_line() fails on any newline but the last. */
  format_line(LOG_FORMAT_TEXT, LOG_ERROR, "incr_failed",
              "reply=\"ERR one\ntwo\" key=a\r\nb", 2048);
  char long_msg[1024];
  memset(long_msg, 'x', sizeof long_msg - 1);
  long_msg[sizeof long_msg - 1] = '\0';
  format_line(LOG_FORMAT_TEXT, LOG_INFO, "long", long_msg, 128);
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
  log_debug("hidden", "n=%d", count_formatting());
  log_info("shown", "n=%d name=%s", 7, "x y");
  log_warn("also", "reason=\"%s\"", "a b");
  log_setup(LOG_FORMAT_TEXT, LOG_ERROR);
  log_warn("hidden_too", "n=%d", count_formatting());
  log_error("text", "n=%d", 9);
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
  expect_text_field("name", "x");
  expect_text_field("msg", "y");

  line_len = (int)(third - second);
  memcpy(line, second, (size_t)line_len);
  assert_int_equal(parse_object(line, (size_t)line_len - 1, &obj), 0);
  expect_text_field("level", "warn");
  expect_text_field("reason", "a b");

  assert_non_null(strstr(third, " error text n=9\n"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_log_json_line_has_ts_level_and_event),
      cmocka_unit_test(test_log_json_names_each_level),
      cmocka_unit_test(test_log_json_pairs_become_fields),
      cmocka_unit_test(test_log_json_numbers_stay_unquoted),
      cmocka_unit_test(test_log_json_non_numbers_are_quoted),
      cmocka_unit_test(test_log_json_quoted_values_keep_spaces),
      cmocka_unit_test(test_log_json_quoted_number_stays_a_string),
      cmocka_unit_test(test_log_json_loose_words_go_under_msg),
      cmocka_unit_test(test_log_json_keys_are_lowercase_words),
      cmocka_unit_test(test_log_json_escapes_quotes_and_control_characters),
      cmocka_unit_test(test_log_json_keeps_utf8_as_is),
      cmocka_unit_test(test_log_json_truncated_line_stays_one_valid_object),
      cmocka_unit_test(test_log_text_line_reads_ts_level_event_message),
      cmocka_unit_test(test_log_text_line_without_message),
      cmocka_unit_test(test_log_text_line_stays_one_line),
      cmocka_unit_test(test_log_enabled_follows_the_minimum_level),
      cmocka_unit_test(test_log_write_emits_enabled_lines_to_stderr),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
