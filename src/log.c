#include "log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

static enum log_format log_fmt = LOG_FORMAT_JSON;
static enum log_level log_min = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char hex[] = "0123456789abcdef";

void log_setup(enum log_format format, enum log_level level) {
  log_fmt = format;
  log_min = level;
}

bool log_enabled(enum log_level level) { return level >= log_min; }

const char *log_level_name(enum log_level level) { return level_names[level]; }

int log_level_parse(const char *name, enum log_level *level) {
  for (int i = LOG_DEBUG; i <= LOG_ERROR; i++) {
    if (strcmp(name, level_names[i]) == 0) {
      *level = (enum log_level)i;
      return 0;
    }
  }
  return UV_EINVAL;
}

struct log_field log_str_field(const char *key, const char *s) {
  struct log_field f = {.key = key, .type = LOG_TYPE_STR};
  f.v.str = s ? s : "";
  f.len = strlen(f.v.str);
  return f;
}

/* A small appender that never overflows. A piece is written whole or not
 * at all, and once one did not fit nothing more is added, so the output is
 * a prefix cut at a boundary the caller chose. */
struct out {
  char *buf;
  int len;
  int cap;
  bool full;
};

static bool put(struct out *o, const char *s, size_t n) {
  if (o->full || n > (size_t)(o->cap - o->len)) {
    o->full = true;
    return false;
  }
  memcpy(o->buf + o->len, s, n);
  o->len += (int)n;
  return true;
}

static bool puts_(struct out *o, const char *s) { return put(o, s, strlen(s)); }

/* Opens a quoted string and keeps room for its closing quote, so that a
 * value cut short still closes. False when not even both quotes fit: then
 * nothing more is written. */
static bool open_quote(struct out *o) {
  if (!put(o, "\"", 1))
    return false;
  if (o->len == o->cap) {
    o->full = true; /* no room to close it */
    return false;
  }
  o->cap--;
  return true;
}

/* Closes what open_quote opened, in the room it kept, even when the value
 * was cut short. */
static void close_quote(struct out *o) {
  o->cap++;
  o->full = false;
  put(o, "\"", 1);
}

/* Length of the well-formed UTF-8 sequence at s[0..n), or 0 if it is not
 * one (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0)
      lo = 0xa0;
    if (c == 0xed)
      hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0)
      lo = 0x90;
    if (c == 0xf4)
      hi = 0x8f;
  } else {
    return 0;
  }
  if (len > n || s[1] < lo || s[1] > hi)
    return 0;
  for (size_t i = 2; i < len; i++) {
    if (s[i] < 0x80 || s[i] > 0xbf)
      return 0;
  }
  return len;
}

/* A JSON string, closed even when cut short. Bytes that are not UTF-8
 * become U+FFFD, so every line is valid for strict JSON readers. */
static void put_json_string(struct out *o, const char *s, size_t n) {
  if (!open_quote(o))
    return;
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < n && !o->full;) {
    unsigned char ch = u[i];
    if (ch == '"' || ch == '\\') {
      char esc[2] = {'\\', (char)ch};
      put(o, esc, 2);
      i++;
    } else if (ch < 0x20 || ch == 0x7f) {
      char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
      put(o, esc, 6);
      i++;
    } else if (ch < 0x80) {
      put(o, s + i, 1);
      i++;
    } else {
      size_t len = utf8_len(u + i, n - i);
      if (len) {
        put(o, s + i, len);
        i += len;
      } else {
        put(o, "\\ufffd", 6);
        i++;
      }
    }
  }
  close_quote(o);
}

static void put_number(struct out *o, const struct log_field *f) {
  char num[32];
  int n;
  if (f->type == LOG_TYPE_INT)
    n = snprintf(num, sizeof num, "%lld", f->v.i);
  else if (f->type == LOG_TYPE_UINT)
    n = snprintf(num, sizeof num, "%llu", f->v.u);
  else
    n = snprintf(num, sizeof num, "%s", f->v.b ? "true" : "false");
  put(o, num, (size_t)n);
}

/* One field in either form: sep, the key, eq, the value, each string
 * written by put_string. A field whose key or number does not fit is
 * dropped whole. */
static void put_field(struct out *o, const struct log_field *f, const char *sep,
                      const char *eq,
                      void (*put_string)(struct out *, const char *, size_t)) {
  int mark = o->len;
  puts_(o, sep);
  put_string(o, f->key, strlen(f->key));
  puts_(o, eq);
  if (f->type == LOG_TYPE_STR)
    put_string(o, f->v.str, f->len);
  else
    put_number(o, f);
  if (o->full)
    o->len = mark;
}

/* Text: a string is written bare when it is one unambiguous word. */
static bool text_needs_quotes(const char *s, size_t n) {
  if (n == 0)
    return true;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch <= ' ' || ch == '"' || ch == '\\' || ch == '=' || ch == 0x7f)
      return true;
  }
  return false;
}

static void put_text_string(struct out *o, const char *s, size_t n) {
  bool quoted = text_needs_quotes(s, n);
  if (quoted && !open_quote(o))
    return;
  for (size_t i = 0; i < n && !o->full; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\') {
      char esc[2] = {'\\', (char)ch};
      put(o, esc, 2);
    } else if (ch < 0x20 || ch == 0x7f) {
      char esc[4] = {'\\', 'x', hex[ch >> 4], hex[ch & 15]};
      put(o, esc, 4);
    } else {
      put(o, s + i, 1);
    }
  }
  if (quoted)
    close_quote(o);
}

static void put_text_fields(struct out *o, const struct log_field *fields,
                            size_t n) {
  for (size_t i = 0; i < n && !o->full; i++)
    put_field(o, &fields[i], o->len > 0 ? " " : "", "=", put_text_string);
}

int log_format_fields(char *buf, int cap, const struct log_field *fields,
                      size_t n) {
  if (cap <= 0)
    return 0;
  struct out o = {buf, 0, cap - 1, false};
  put_text_fields(&o, fields, n);
  buf[o.len] = '\0';
  return o.len;
}

int log_format_line(char *buf, int cap, enum log_format format,
                    enum log_level level, const char *event,
                    const struct log_field *fields, size_t n) {
  /* Room is kept for the newline, and in JSON for the closing brace. */
  struct out o = {buf, 0, format == LOG_FORMAT_JSON ? cap - 2 : cap - 1, false};
  struct timespec ts;
  struct tm tm;
  char stamp[40];
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t sn = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(stamp + sn, sizeof stamp - sn, ".%03ldZ", ts.tv_nsec / 1000000);

  if (format == LOG_FORMAT_JSON) {
    puts_(&o, "{\"ts\":\"");
    puts_(&o, stamp);
    puts_(&o, "\",\"level\":\"");
    puts_(&o, log_level_name(level));
    puts_(&o, "\",\"event\":");
    put_json_string(&o, event, strlen(event));
    for (size_t i = 0; i < n && !o.full; i++)
      put_field(&o, &fields[i], ",", ":", put_json_string);
    buf[o.len++] = '}';
  } else {
    puts_(&o, stamp);
    puts_(&o, " ");
    puts_(&o, log_level_name(level));
    puts_(&o, " ");
    put_text_string(&o, event, strlen(event));
    if (n > 0 && put(&o, " ", 1)) {
      struct out rest = {o.buf + o.len, 0, o.cap - o.len, false};
      put_text_fields(&rest, fields, n);
      o.len += rest.len;
    }
  }
  buf[o.len++] = '\n';
  return o.len;
}

void log_write(enum log_level level, const char *event,
               const struct log_field *fields, size_t n) {
  char line[4096];
  int len =
      log_format_line(line, (int)sizeof line, log_fmt, level, event, fields, n);
  /* One write per line keeps lines whole when stderr is shared. */
  ssize_t rc = write(STDERR_FILENO, line, (size_t)len);
  (void)rc;
}
