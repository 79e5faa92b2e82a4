/* One line per event on stderr: a JSON object (the default, for log
 * pipelines) or plain text (for people).
 *
 *   log_info("drain", LOG_UINT("pending", n), LOG_STR("reason", why));
 *
 * The caller names each field and gives its type, so nothing is formatted
 * and then parsed again: a string value is escaped as a string whatever it
 * holds (quotes, backslashes, control bytes, bytes that are not UTF-8), and a
 * number is always a number. Every event has at least one field. The level
 * is checked before the fields are even evaluated.
 *
 * JSON:  {"ts":"…","level":"info","event":"drain","pending":3,"reason":"a b"}
 * Text:  2026-01-01T00:00:00.000Z info drain pending=3 reason="a b"
 *
 * In text a string value is written bare when that reads unambiguously, and
 * otherwise in double quotes with \" and \\ escaped; control bytes are \xHH
 * in either form, so a line stays one line. */
#ifndef GRACEFULD_LOG_H
#define GRACEFULD_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_FORMAT_JSON, LOG_FORMAT_TEXT };

enum log_type { LOG_TYPE_STR, LOG_TYPE_INT, LOG_TYPE_UINT, LOG_TYPE_BOOL };

/* One key and its typed value. The key is a literal in the code; a string
 * value is borrowed for the duration of the call only. */
struct log_field {
  const char *key;
  enum log_type type;
  size_t len; /* LOG_TYPE_STR: bytes of str */
  union {
    const char *str;
    long long i;
    unsigned long long u;
    bool b;
  } v;
};

/* A NUL-terminated string; NULL logs as "". */
#define LOG_STR(k, s) log_str_field((k), (s))
/* n bytes of s, which need not be NUL-terminated (a Redis reply, a header). */
#define LOG_STRN(k, s, n)                                                      \
  ((struct log_field){                                                         \
      .key = (k), .type = LOG_TYPE_STR, .len = (n), .v.str = (s)})
#define LOG_INT(k, x)                                                          \
  ((struct log_field){.key = (k), .type = LOG_TYPE_INT, .v.i = (long long)(x)})
#define LOG_UINT(k, x)                                                         \
  ((struct log_field){                                                         \
      .key = (k), .type = LOG_TYPE_UINT, .v.u = (unsigned long long)(x)})
#define LOG_BOOL(k, x)                                                         \
  ((struct log_field){.key = (k), .type = LOG_TYPE_BOOL, .v.b = (x)})

struct log_field log_str_field(const char *key, const char *s);

/* The level's name as lines and LOG_LEVEL write it: "debug", "info", "warn"
 * or "error". */
const char *log_level_name(enum log_level level);

/* Sets *level to the level named name (exactly, lower case). Returns 0, or
 * UV_EINVAL for any other name (*level untouched). */
int log_level_parse(const char *name, enum log_level *level);

void log_setup(enum log_format format, enum log_level level);
bool log_enabled(enum log_level level);
void log_write(enum log_level level, const char *event,
               const struct log_field *fields, size_t n);

/* Formats one line, newline included, into buf (without writing it) and
 * returns its length, at most cap. A line that does not fit is cut between
 * fields, or inside a long string value that is then closed, so it stays
 * one valid JSON object. Used by log_write and by the unit tests. */
int log_format_line(char *buf, int cap, enum log_format format,
                    enum log_level level, const char *event,
                    const struct log_field *fields, size_t n);

/* Formats only the fields, as the text form writes them ("a=1 b=x"), into
 * buf with a terminating NUL; returns the length without it. For messages
 * outside the log, such as the termination message. */
int log_format_fields(char *buf, int cap, const struct log_field *fields,
                      size_t n);

#define LOG_AT(level, event, ...)                                              \
  do {                                                                         \
    if (log_enabled(level)) {                                                  \
      const struct log_field log_fields_[] = {__VA_ARGS__};                    \
      log_write(level, event, log_fields_,                                     \
                sizeof log_fields_ / sizeof log_fields_[0]);                   \
    }                                                                          \
  } while (0)
#define log_debug(event, ...) LOG_AT(LOG_DEBUG, event, __VA_ARGS__)
#define log_info(event, ...) LOG_AT(LOG_INFO, event, __VA_ARGS__)
#define log_warn(event, ...) LOG_AT(LOG_WARN, event, __VA_ARGS__)
#define log_error(event, ...) LOG_AT(LOG_ERROR, event, __VA_ARGS__)

#endif
