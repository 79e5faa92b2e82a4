#include "http/http.h"

#include <string.h>

#include "base.h"

static struct http_parser *parser_of(llhttp_t *l) {
  return container_of(l, struct http_parser, llhttp);
}

static int refuse(struct http_parser *p, uint16_t status) {
  p->error_status = status;
  return HPE_USER;
}

/* Every byte of a head, from the method to the blank line, passes through
 * walk_head once, in order: at the end of each span llhttp reports, at the
 * end of each buffer, and where the head ends (llhttp pauses there). So the
 * whole head counts toward HEADER_MAX_BYTES, the whitespace llhttp leaves
 * out of its spans included, wherever the reads split it. The walk also
 * rejects obsolete line folding (a header line that begins with SP or HT
 * continues the one before), which llhttp 8 accepts even in strict mode and
 * which is request-smuggling material. A trailer section is walked the same
 * way, and counts toward the same limit. */
enum target_walk {
  TARGET_START,
  TARGET_SCHEME,     /* absolute-form: "http" */
  TARGET_SLASH1,     /* "http:" */
  TARGET_SLASH2,     /* "http:/" */
  TARGET_AUTHORITY,  /* "http://host" */
  TARGET_PATH,       /* copying the path */
  TARGET_QUERY,      /* past '?' or '#': the rest is not routed on */
  TARGET_UNROUTABLE, /* not a form we route */
};

enum head_walk {
  HEAD_OFF,       /* in a body, or between requests */
  HEAD_NEXT_SPAN, /* a head began: walk from its first span on */
  HEAD_ON,        /* every byte before head_from has been walked */
};

/* Walks the head from head_from (or, for its first span, from at) up to
 * end; at is NULL where no span is reported. Returns 0, or HPE_USER with
 * error_status set. */
static int walk_head(struct http_parser *p, const char *at, const char *end) {
  if (p->head == HEAD_OFF || (p->head == HEAD_NEXT_SPAN && !at))
    return 0;
  if (p->head == HEAD_NEXT_SPAN) {
    p->head = HEAD_ON;
    p->head_from = at;
  }
  const char *q = p->head_from;
  if (q < end) {
    /* A line that begins with SP or HT: after each LF, and at the start of
     * this span when the last one ended with a LF. */
    if (p->after_lf && (*q == ' ' || *q == '\t'))
      return refuse(p, 400);
    while ((q = memchr(q, '\n', (size_t)(end - q))) && ++q < end)
      if (*q == ' ' || *q == '\t')
        return refuse(p, 400);
    p->after_lf = end[-1] == '\n';
  }
  p->header_bytes += (uint64_t)(end - p->head_from);
  p->head_from = end;
  return p->header_bytes > p->limits->header_max_bytes ? refuse(p, 431) : 0;
}

/* The header names the parser looks for, as bits of p->field: those the
 * name read so far is still a prefix of. */
enum field_bits {
  FIELD_HOST = 1,
  FIELD_IDEM_KEY = 2,
  FIELD_ANY = FIELD_HOST | FIELD_IDEM_KEY,
};

static const char *const field_names[] = {"host", "idempotency-key"};

static int on_message_begin(llhttp_t *l) {
  struct http_parser *p = parser_of(l);
  memset(&p->req, 0, sizeof p->req);
  p->url_bytes = p->header_bytes = p->body_bytes = p->headers = 0;
  p->in_message = true;
  p->begun++;
  p->hosts = 0;
  p->idem_keys = 0;
  p->field_len = 0;
  p->field = FIELD_ANY;
  p->in_idem_key = false;
  p->head_done = false;
  p->target = TARGET_START;
  p->head = HEAD_NEXT_SPAN;
  p->after_lf = false;
  return 0;
}

static int on_head_bytes(llhttp_t *l, const char *at, size_t len) {
  return walk_head(parser_of(l), at, at + len);
}

static bool scheme_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
}

/* The path of the request target, byte by byte wherever the reads split
 * it: origin-form (/path?query) as it is, absolute-form
 * (http://authority/path?query) from the slash after its authority. */
static void walk_target(struct http_parser *p, char c) {
  struct http_request *r = &p->req;
  switch (p->target) {
  case TARGET_START:
    p->target = TARGET_PATH;
    if (c != '/' && c != '*' && scheme_char(c)) {
      p->target = TARGET_SCHEME;
      return;
    }
    break;
  case TARGET_SCHEME:
    if (c == ':')
      p->target = TARGET_SLASH1;
    else if (!scheme_char(c))
      p->target = TARGET_UNROUTABLE;
    return;
  case TARGET_SLASH1:
  case TARGET_SLASH2:
    p->target = c == '/' ? p->target + 1 : TARGET_UNROUTABLE;
    return;
  case TARGET_AUTHORITY:
    if (c == '/')
      break;
    if (c == '?' || c == '#') {
      /* http://host?q: the path is empty, which means "/". */
      r->path[r->path_len++] = '/';
      p->target = TARGET_QUERY;
    }
    return;
  case TARGET_PATH:
    break;
  default:
    return;
  }
  if (p->target == TARGET_AUTHORITY)
    p->target = TARGET_PATH;
  if (c == '?' || c == '#') {
    p->target = TARGET_QUERY;
  } else if (r->path_len < HTTP_PATH_MAX) {
    r->path[r->path_len++] = c;
  } else {
    r->path_truncated = true;
  }
}

static int on_url(llhttp_t *l, const char *at, size_t len) {
  struct http_parser *p = parser_of(l);
  p->url_bytes += len;
  if (p->url_bytes > p->limits->url_max_bytes)
    return refuse(p, 414);
  if (walk_head(p, at, at + len))
    return HPE_USER;
  for (size_t i = 0; i < len && p->target < TARGET_QUERY; i++)
    walk_target(p, at[i]);
  return 0;
}

static int on_url_complete(llhttp_t *l) {
  struct http_parser *p = parser_of(l);
  /* A target that never reached its path (http://host, or no scheme after
   * all) matches no route. */
  if (p->target != TARGET_PATH && p->target != TARGET_QUERY)
    p->req.path_truncated = true;
  return 0;
}

/* Recognises the Host and Idempotency-Key headers by their names, whatever
 * the case, wherever the reads split them. */
static int on_header_field(llhttp_t *l, const char *at, size_t len) {
  struct http_parser *p = parser_of(l);
  for (size_t i = 0; i < len && p->field; i++) {
    char c = at[i];
    if (c >= 'A' && c <= 'Z')
      c = (char)(c - 'A' + 'a');
    for (unsigned b = 0; b < 2; b++) {
      const char *name = field_names[b];
      if ((p->field & (1u << b)) &&
          (p->field_len >= strlen(name) || c != name[p->field_len]))
        p->field &= (uint8_t) ~(1u << b);
    }
    p->field_len++;
  }
  return walk_head(p, at, at + len);
}

static int on_header_field_complete(llhttp_t *l) {
  struct http_parser *p = parser_of(l);
  if ((p->field & FIELD_HOST) && p->field_len == 4 && p->hosts < 2)
    p->hosts++;
  /* Not in a trailer section: only the head says what a request is. */
  p->in_idem_key =
      (p->field & FIELD_IDEM_KEY) && p->field_len == 15 && !p->head_done;
  if (p->in_idem_key) {
    p->idem_ws = false;
    if (p->idem_keys < 2)
      p->idem_keys++;
    p->req.idem_bad = p->idem_keys > 1;
    p->req.idem_len = 0;
  }
  p->field_len = 0;
  p->field = FIELD_ANY;
  return ++p->headers > p->limits->max_headers ? refuse(p, 431) : 0;
}

/* An Idempotency-Key's value: 1 to HTTP_IDEM_KEY_MAX visible ASCII
 * characters, copied as it arrives; whitespace around it is not part of
 * the value (RFC 9110 5.5), whitespace within it is refused. */
static int on_header_value(llhttp_t *l, const char *at, size_t len) {
  struct http_parser *p = parser_of(l);
  struct http_request *r = &p->req;
  for (size_t i = 0; p->in_idem_key && !r->idem_bad && i < len; i++) {
    if (at[i] == ' ' || at[i] == '\t')
      p->idem_ws = r->idem_len > 0;
    else if (at[i] < 0x21 || at[i] > 0x7e || p->idem_ws ||
             r->idem_len >= HTTP_IDEM_KEY_MAX)
      r->idem_bad = true;
    else
      r->idem_key[r->idem_len++] = at[i];
  }
  return walk_head(p, at, at + len);
}

static int on_header_value_complete(llhttp_t *l) {
  struct http_parser *p = parser_of(l);
  if (p->in_idem_key && p->req.idem_len == 0)
    p->req.idem_bad = true;
  if (p->req.idem_bad)
    p->req.idem_len = 0;
  p->in_idem_key = false;
  return 0;
}

static int on_headers_complete(llhttp_t *l) {
  struct http_parser *p = parser_of(l);
  /* llhttp also takes HTTP/0.9 (no version) and HTTP/2.0 request lines;
   * this port speaks HTTP/1.0 and 1.1 only. */
  if (l->http_major != 1 || l->http_minor > 1)
    return refuse(p, 400);
  /* RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one in 1.0. A
   * trailer section (walked as a head) does not pass here. */
  if (p->hosts > 1 || (l->http_minor == 1 && p->hosts == 0))
    return refuse(p, 400);
  if ((l->flags & F_CONTENT_LENGTH) &&
      l->content_length > p->limits->max_body_bytes) {
    p->error_status = 413;
    return -1;
  }
  p->head_done = true;
  /* A pause tells http_parse where the head ends: its last line ends are
   * walked there. */
  p->head_ended = true;
  return HPE_PAUSED;
}

static int on_chunk_header(llhttp_t *l) {
  struct http_parser *p = parser_of(l);
  /* The last chunk: a trailer section follows, walked as a head. */
  if (l->content_length == 0) {
    p->head = HEAD_NEXT_SPAN;
    p->after_lf = false;
  }
  return 0;
}

/* Chunk extensions (";name=value" after a chunk size) are read and thrown
 * away, but they are bytes the client sends: they count as body. */
static int on_chunk_extension(llhttp_t *l, const char *at, size_t len) {
  struct http_parser *p = parser_of(l);
  (void)at;
  p->body_bytes += len;
  return p->body_bytes > p->limits->max_body_bytes ? refuse(p, 413) : 0;
}

static int on_body(llhttp_t *l, const char *at, size_t len) {
  struct http_parser *p = parser_of(l);
  (void)at;
  p->body_bytes += len;
  return p->body_bytes > p->limits->max_body_bytes ? refuse(p, 413) : 0;
}

static int on_message_complete(llhttp_t *l) {
  struct http_parser *p = parser_of(l);
  struct http_request *r = &p->req;
  r->method = llhttp_get_method(l);
  r->version_major = llhttp_get_http_major(l);
  r->version_minor = llhttp_get_http_minor(l);
  /* Read here: once llhttp moves on to the next message it is reset. */
  r->keep_alive = llhttp_should_keep_alive(l);
  r->upgrade = llhttp_get_upgrade(l) != 0;
  p->in_message = false;
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_method = on_head_bytes,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_header_field_complete = on_header_field_complete,
    .on_headers_complete = on_headers_complete,
    .on_chunk_header = on_chunk_header,
    .on_chunk_extension_name = on_chunk_extension,
    .on_chunk_extension_value = on_chunk_extension,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void http_parser_init(struct http_parser *p, const struct http_limits *limits) {
  memset(p, 0, sizeof *p);
  llhttp_init(&p->llhttp, HTTP_REQUEST, &settings);
  p->limits = limits;
}

enum http_parse_result http_parse(struct http_parser *p, const char *data,
                                  size_t len, size_t *consumed) {
  if (p->paused) {
    llhttp_resume(&p->llhttp);
    p->paused = false;
  }
  /* A head that goes on from the last buffer goes on from this one. */
  if (p->head == HEAD_ON)
    p->head_from = data;
  const char *from = data;
  const char *end = data + len;
  llhttp_errno_t err;
  for (;;) {
    err = llhttp_execute(&p->llhttp, from, (size_t)(end - from));
    if (err != HPE_PAUSED)
      break;
    /* Paused where a head (or a trailer section) ends, or where the
     * message does: the rest of the head is walked up to there. */
    const char *pos = llhttp_get_error_pos(&p->llhttp);
    if (walk_head(p, NULL, pos)) {
      err = HPE_USER;
      break;
    }
    p->head = HEAD_OFF;
    if (!p->head_ended)
      break; /* a complete request */
    p->head_ended = false;
    llhttp_resume(&p->llhttp);
    from = pos;
  }
  /* The rest of the buffer too, so that what a head has used so far counts
   * at once, and a LF at its end is known when the next one begins with SP
   * or HT. */
  if (err == HPE_OK && walk_head(p, NULL, end))
    err = HPE_USER;
  switch (err) {
  case HPE_OK:
    *consumed = len;
    return HTTP_PARSE_MORE;
  case HPE_PAUSED:
    *consumed = (size_t)(llhttp_get_error_pos(&p->llhttp) - data);
    p->paused = true;
    return HTTP_PARSE_REQUEST;
  default:
    /* Parse errors, limits crossed, an HTTP/2 preface: one answer, then the
     * connection ends, so nothing after the error is read as a request. */
    *consumed = len;
    if (!p->error_status)
      p->error_status = 400;
    return HTTP_PARSE_ERROR;
  }
}

bool http_parser_idle(const struct http_parser *p) { return !p->in_message; }

const char *http_reason(uint16_t status) {
  switch (status) {
  case 200:
    return "OK";
  case 400:
    return "Bad Request";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 413:
    return "Content Too Large";
  case 414:
    return "URI Too Long";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 503:
    return "Service Unavailable";
  default:
    return "Unknown";
  }
}

static char *emit(char *out, const char *s, size_t n) {
  memcpy(out, s, n);
  return out + n;
}

#define PUT_LIT(out, lit) emit(out, lit, sizeof(lit) - 1)

static char *put_uint(char *out, uint64_t v) {
  return out + base_format_u64(out, v);
}

size_t http_format_head(char *buf, const struct http_response *resp,
                        enum http_connection conn) {
  char *o = buf;
  const char *reason = http_reason(resp->status);
  const char *type = resp->content_type ? resp->content_type : "text/plain";
  o = PUT_LIT(o, "HTTP/1.1 ");
  o = put_uint(o, resp->status);
  *o++ = ' ';
  o = emit(o, reason, strlen(reason));
  o = PUT_LIT(o, "\r\nContent-Type: ");
  o = emit(o, type, strlen(type));
  o = PUT_LIT(o, "\r\nContent-Length: ");
  o = put_uint(o, resp->body_len);
  o = PUT_LIT(o, "\r\n");
  if (conn == HTTP_CONN_CLOSE)
    o = PUT_LIT(o, "Connection: close\r\n");
  else if (conn == HTTP_CONN_KEEP_ALIVE)
    o = PUT_LIT(o, "Connection: keep-alive\r\n");
  if (resp->extra_headers)
    o = emit(o, resp->extra_headers, strlen(resp->extra_headers));
  o = PUT_LIT(o, "\r\n");
  return (size_t)(o - buf);
}
