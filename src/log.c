#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_format log_fmt = LOG_FORMAT_JSON;
static enum log_level log_min = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_setup(enum log_format format, enum log_level level) {
  log_fmt = format;
  log_min = level;
}

bool log_enabled(enum log_level level) { return level >= log_min; }

/* A small appender that never overflows: once full it drops the rest and
 * the line ends truncated rather than torn. */
struct out {
  char *buf;
  int len;
  int cap;
};

static void put(struct out *o, const char *s, size_t n) {
  size_t room = (size_t)(o->cap - o->len);
  if (n > room)
    n = room;
  memcpy(o->buf + o->len, s, n);
  o->len += (int)n;
}

static void puts_(struct out *o, const char *s) { put(o, s, strlen(s)); }

static void put_json_string(struct out *o, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  put(o, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\') {
      char esc[2] = {'\\', (char)ch};
      put(o, esc, 2);
    } else if (ch < 0x20) {
      char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
      put(o, esc, 6);
    } else {
      put(o, (const char *)&s[i], 1);
    }
  }
  put(o, "\"", 1);
}

static bool is_number(const char *s, size_t n) {
  size_t i = 0;
  if (i < n && s[i] == '-')
    i++;
  if (i == n || s[i] < '0' || s[i] > '9')
    return false;
  if (s[i] == '0' && i + 1 < n && s[i + 1] != '.')
    return false; /* no leading zeros in JSON */
  bool dot = false;
  for (; i < n; i++) {
    if (s[i] == '.' && !dot && i + 1 < n) {
      dot = true;
    } else if (s[i] < '0' || s[i] > '9') {
      return false;
    }
  }
  return true;
}

static bool is_key(const char *s, size_t n) {
  if (n == 0)
    return false;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_'))
      return false;
  }
  return true;
}

/* Splits msg into key=value pairs and loose words; pairs become fields. */
static void put_json_fields(struct out *o, const char *msg) {
  char loose[512];
  size_t loose_len = 0;
  const char *p = msg;
  while (*p) {
    while (*p == ' ')
      p++;
    if (!*p)
      break;
    const char *tok = p;
    const char *eq = NULL;
    while (*p && *p != ' ' && *p != '=')
      p++;
    if (*p == '=' && is_key(tok, (size_t)(p - tok))) {
      eq = p++;
      const char *val = p;
      size_t val_len;
      bool quoted = *p == '"';
      if (quoted) {
        val = ++p;
        while (*p && *p != '"')
          p++;
        val_len = (size_t)(p - val);
        if (*p == '"')
          p++;
      } else {
        while (*p && *p != ' ')
          p++;
        val_len = (size_t)(p - val);
      }
      int mark = o->len;
      put(o, ",", 1);
      put_json_string(o, tok, (size_t)(eq - tok));
      put(o, ":", 1);
      if (!quoted && is_number(val, val_len))
        put(o, val, val_len);
      else
        put_json_string(o, val, val_len);
      if (o->len == o->cap) {
        /* Did not fit: drop the whole field, not half of it. */
        o->len = mark;
        return;
      }
      continue;
    }
    while (*p && *p != ' ')
      p++;
    size_t n = (size_t)(p - tok);
    if (loose_len + n + 1 < sizeof loose) {
      if (loose_len)
        loose[loose_len++] = ' ';
      memcpy(loose + loose_len, tok, n);
      loose_len += n;
    }
  }
  if (loose_len) {
    int mark = o->len;
    puts_(o, ",\"msg\":");
    put_json_string(o, loose, loose_len);
    if (o->len == o->cap)
      o->len = mark;
  }
}

/* Text lines stay one line: control bytes are written as \xHH. */
static void put_text(struct out *o, const char *s) {
  static const char hex[] = "0123456789abcdef";
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch < 0x20 || ch == 0x7f) {
      char esc[4] = {'\\', 'x', hex[ch >> 4], hex[ch & 15]};
      put(o, esc, 4);
    } else {
      put(o, s, 1);
    }
  }
}

int log_format_line(char *buf, int cap, enum log_format format,
                    enum log_level level, const char *event, const char *msg) {
  /* Room is kept for the newline, and in JSON for the closing brace. */
  struct out o = {buf, 0, format == LOG_FORMAT_JSON ? cap - 2 : cap - 1};
  struct timespec ts;
  struct tm tm;
  char stamp[40];
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(stamp + n, sizeof stamp - n, ".%03ldZ", ts.tv_nsec / 1000000);

  if (format == LOG_FORMAT_JSON) {
    puts_(&o, "{\"ts\":\"");
    puts_(&o, stamp);
    puts_(&o, "\",\"level\":\"");
    puts_(&o, level_names[level]);
    puts_(&o, "\",\"event\":");
    put_json_string(&o, event, strlen(event));
    put_json_fields(&o, msg);
    buf[o.len++] = '}';
  } else {
    puts_(&o, stamp);
    puts_(&o, " ");
    puts_(&o, level_names[level]);
    puts_(&o, " ");
    puts_(&o, event);
    if (*msg) {
      puts_(&o, " ");
      put_text(&o, msg);
    }
  }
  buf[o.len++] = '\n';
  return o.len;
}

void log_write(enum log_level level, const char *event, const char *fmt, ...) {
  char msg[1024];
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  int len = log_format_line(line, (int)sizeof line, log_fmt, level, event, msg);
  /* One write per line keeps lines whole when stderr is shared. */
  ssize_t rc = write(STDERR_FILENO, line, (size_t)len);
  (void)rc;
}
