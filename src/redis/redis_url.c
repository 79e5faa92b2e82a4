#include "redis/redis_url.h"

#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "base.h"

#define PASSWORD_MASK "***"

bool redis_host_valid(const char *h) {
  size_t n = strlen(h);
  if (strchr(h, ':')) {
    struct sockaddr_in6 a6;
    return uv_ip6_addr(h, 0, &a6) == 0;
  }
  if (n == 0 || n > 253 || h[0] == '-' || h[0] == '.')
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = h[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
    if (!ok)
      return false;
  }
  return true;
}

const char *redis_split_host_port(const char *v, size_t n, char *host,
                                  size_t host_len, uint16_t default_port,
                                  uint16_t *port) {
  const char *end = v + n;
  const char *h = v;
  const char *colon;
  size_t hn;
  if (n > 0 && v[0] == '[') {
    const char *close = memchr(v, ']', n);
    if (!close || (close + 1 < end && close[1] != ':'))
      return "expected [IPv6]:PORT";
    h = v + 1;
    hn = (size_t)(close - h);
    colon = close + 1 < end ? close + 1 : NULL;
  } else {
    colon = NULL;
    for (const char *p = v; p < end; p++)
      if (*p == ':')
        colon = p;
    hn = colon ? (size_t)(colon - v) : n;
    if (memchr(v, ':', hn))
      return "an IPv6 address needs brackets: [::1]:PORT";
  }
  if (hn == 0)
    return "missing host";
  if (hn >= host_len)
    return "host too long";
  memcpy(host, h, hn);
  host[hn] = '\0';
  if (!colon) {
    if (!default_port)
      return "expected HOST:PORT";
    *port = default_port;
    return NULL;
  }
  uint64_t p;
  if (base_parse_u64(colon + 1, (size_t)(end - colon - 1), 65535, &p) != 0)
    return "port must be a number from 0 to 65535";
  *port = (uint16_t)p;
  return NULL;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Percent-decodes the n bytes at v into out (cap bytes, terminated).
 * Returns 0, -1 for a bad escape or a NUL byte, -2 when it does not fit. */
static int percent_decode(const char *v, size_t n, char *out, size_t cap) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    char c = v[i];
    if (c == '%') {
      if (n - i < 3)
        return -1;
      int a = hex_value(v[i + 1]), b = hex_value(v[i + 2]);
      if (a < 0 || b < 0 || (a == 0 && b == 0))
        return -1;
      c = (char)(a * 16 + b);
      i += 2;
    }
    if (len + 1 >= cap)
      return -2;
    out[len++] = c;
  }
  out[len] = '\0';
  return 0;
}

/* userinfo: "user", "user:password", ":password". */
static const char *parse_userinfo(const char *v, size_t n,
                                  struct redis_target *t) {
  const char *colon = memchr(v, ':', n);
  size_t un = colon ? (size_t)(colon - v) : n;
  int rc = percent_decode(v, un, t->user, sizeof t->user);
  if (rc == -1)
    return "bad percent-encoding in the user name";
  if (rc == -2)
    return "user name too long";
  if (!colon)
    return NULL;
  rc = percent_decode(colon + 1, n - un - 1, t->password, sizeof t->password);
  if (rc == -1)
    return "bad percent-encoding in the password";
  if (rc == -2)
    return "password too long";
  t->has_password = true;
  return NULL;
}

/* "db=N", the only query parameter. */
static const char *parse_query(const char *q, struct redis_target *t) {
  uint64_t db;
  if (strncmp(q, "db=", 3) != 0 || strchr(q, '&'))
    return "the only query parameter is db=N";
  if (base_parse_u64(q + 3, strlen(q + 3), REDIS_DB_MAX, &db) != 0)
    return "db must be a number from 0 to 2147483647";
  t->db = (uint32_t)db;
  return NULL;
}

static const char *parse_tcp(const char *rest, struct redis_target *t) {
  size_t auth_len = strcspn(rest, "/?#");
  const char *at = NULL;
  for (const char *p = rest; p < rest + auth_len; p++)
    if (*p == '@')
      at = p;
  const char *hp = rest;
  const char *why;
  if (at) {
    why = parse_userinfo(rest, (size_t)(at - rest), t);
    if (why)
      return why;
    hp = at + 1;
  }
  why = redis_split_host_port(hp, (size_t)(rest + auth_len - hp), t->host,
                              sizeof t->host, REDIS_DEFAULT_PORT, &t->port);
  if (why)
    return why;
  if (t->port == 0)
    return "port must be from 1 to 65535";
  if (!redis_host_valid(t->host))
    return "not a host name or IP address";
  const char *p = rest + auth_len;
  if (*p == '#')
    return "a fragment (#) is not allowed; percent-encode it as %23";
  if (*p == '/') {
    p++;
    size_t dn = strcspn(p, "?#");
    uint64_t db = 0;
    if (dn > 0 && base_parse_u64(p, dn, REDIS_DB_MAX, &db) != 0)
      return "the path must be a database number from 0 to 2147483647";
    t->db = (uint32_t)db;
    p += dn;
  }
  if (*p == '#')
    return "a fragment (#) is not allowed; percent-encode it as %23";
  if (*p == '?')
    return "query parameters are not supported in redis:// URLs; the "
           "database is the path, /N";
  return NULL;
}

static const char *parse_unix(const char *rest, struct redis_target *t) {
  const char *why;
  if (*rest != '/') {
    const char *slash = strchr(rest, '/');
    const char *at = NULL;
    for (const char *p = rest; slash && p < slash; p++)
      if (*p == '@')
        at = p;
    if (!at || at + 1 != slash)
      return "expected unix:///absolute/path.sock";
    why = parse_userinfo(rest, (size_t)(at - rest), t);
    if (why)
      return why;
    rest = slash;
  }
  size_t pn = strcspn(rest, "?#");
  if (rest[pn] == '#')
    return "a fragment (#) is not allowed";
  if (pn == 1)
    return "missing socket path";
  if (pn >= sizeof t->path)
    return "socket path too long (107 bytes at most)";
  memcpy(t->path, rest, pn);
  t->path[pn] = '\0';
  if (rest[pn] == '?')
    return parse_query(rest + pn + 1, t);
  return NULL;
}

int redis_url_parse(const char *url, struct redis_target *t, const char **why) {
  memset(t, 0, sizeof *t);
  *why = NULL;
  if (strncmp(url, "redis://", 8) == 0) {
    t->transport = REDIS_TCP;
    *why = parse_tcp(url + 8, t);
  } else if (strncmp(url, "unix://", 7) == 0) {
    t->transport = REDIS_UNIX;
    *why = parse_unix(url + 7, t);
  } else if (strncmp(url, "rediss://", 9) == 0) {
    t->transport = REDIS_TCP;
    t->tls = true;
    *why = parse_tcp(url + 9, t);
  } else {
    *why = "expected redis://[[user][:password]@]host[:port][/db], "
           "rediss://... (TLS) or unix:///path.sock[?db=N]";
  }
  if (*why) {
    memset(t, 0, sizeof *t);
    return UV_EINVAL;
  }
  return 0;
}

void redis_url_redact(const char *url, char *out, size_t cap) {
  if (cap == 0)
    return;
  const char *scheme = strstr(url, "://");
  const char *start = scheme ? scheme + 3 : url;
  /* The last '@' ends the userinfo, even when an unencoded '/' or '?' in
   * the password has confused the parser. */
  const char *at = strrchr(start, '@');
  const char *colon = at ? memchr(start, ':', (size_t)(at - start)) : NULL;
  if (!colon) {
    snprintf(out, cap, "%s", url);
    return;
  }
  snprintf(out, cap, "%.*s" PASSWORD_MASK "%s", (int)(colon + 1 - url), url,
           at);
}

int redis_target_format(const struct redis_target *t, char *out, size_t cap) {
  char auth[REDIS_USER_MAX + 8] = "";
  if (t->user[0] || t->has_password)
    snprintf(auth, sizeof auth, "%s%s@", t->user,
             t->has_password ? ":" PASSWORD_MASK : "");
  if (t->transport == REDIS_UNIX) {
    if (t->db)
      return snprintf(out, cap, "unix://%s%s?db=%u", auth, t->path, t->db);
    return snprintf(out, cap, "unix://%s%s", auth, t->path);
  }
  bool v6 = strchr(t->host, ':') != NULL;
  if (!auth[0] && !t->db && !t->tls)
    return snprintf(out, cap, v6 ? "[%s]:%u" : "%s:%u", t->host, t->port);
  return snprintf(out, cap, v6 ? "%s://%s[%s]:%u/%u" : "%s://%s%s:%u/%u",
                  t->tls ? "rediss" : "redis", auth, t->host, t->port, t->db);
}
