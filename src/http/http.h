/* HTTP/1.x for one connection, without sockets: bytes in, one request out at
 * a time, and response bytes formatted into a caller's buffer.
 *
 * llhttp is paused in on_message_complete, so http_parse returns after each
 * complete request and reports how many bytes it used: pipelined requests
 * are taken one by one, in order, and whatever follows stays in the
 * caller's buffer. Limits on the request target, the header block (every
 * byte of it, from the method to the blank line) and the body are checked
 * as bytes arrive; nothing is copied but the first bytes of the path.
 * Beyond what llhttp's strict mode rejects, obsolete line folding,
 * versions other than HTTP/1.0 and 1.1, an HTTP/1.1 request without a Host
 * header and any request with several are parse errors (400), as RFC 9112
 * says. An absolute-form target (http://host/path) is routed by its path.
 * Chunk extensions count toward MAX_BODY_BYTES. */
#ifndef GRACEFULD_HTTP_H
#define GRACEFULD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#define HTTP_PATH_MAX 64
/* The longest Idempotency-Key taken (draft-ietf-httpapi-idempotency-key-
 * header): 1 to this many visible ASCII characters. */
#define HTTP_IDEM_KEY_MAX 255

struct http_limits {
  uint64_t header_max_bytes; /* request line and headers: 431 beyond */
  uint64_t max_headers;      /* header fields: 431 beyond */
  uint64_t url_max_bytes;    /* request target: 414 beyond */
  uint64_t max_body_bytes;   /* body: 413 beyond */
};

struct http_request {
  uint8_t method; /* llhttp_method_t: HTTP_GET, HTTP_HEAD, ... */
  uint8_t version_major;
  uint8_t version_minor;
  bool keep_alive; /* what the request asked for, by its version and headers */
  bool upgrade;    /* an Upgrade or CONNECT: the connection cannot go on */
  bool path_truncated; /* longer than HTTP_PATH_MAX: matches no route */
  uint16_t path_len;   /* bytes in path: the target up to '?' or '#' */
  char path[HTTP_PATH_MAX];
  /* Idempotency-Key: idem_len bytes of idem_key when present and valid;
   * idem_bad when present but empty, too long, not visible ASCII, or given
   * twice (a 400 on /incr; other routes ignore it). */
  bool idem_bad;
  uint16_t idem_len;
  char idem_key[HTTP_IDEM_KEY_MAX];
};

struct http_parser {
  llhttp_t llhttp;
  const struct http_limits *limits;
  struct http_request req;
  uint64_t url_bytes;
  uint64_t header_bytes; /* of the head so far: every byte from the method */
  uint64_t body_bytes;
  uint64_t headers;
  uint32_t begun;    /* requests begun on this connection, counting from 1 */
  uint8_t hosts;     /* Host header lines in this request (up to 2) */
  uint8_t idem_keys; /* Idempotency-Key header lines (up to 2) */
  uint8_t field_len; /* bytes of the header name so far (up to 16) */
  uint8_t field;     /* the names the header name so far is a prefix of */
  bool in_idem_key;  /* the value being read is an Idempotency-Key's */
  bool idem_ws;      /* whitespace after its key: the value must end */
  bool head_done;    /* the head is over: a trailer section may follow */
  uint8_t target;    /* where the walk through the request target stands */
  const char *head_from; /* the next byte of the head to walk */
  uint16_t error_status; /* set when a limit is crossed */
  uint8_t head;          /* where the walk through the head stands */
  bool after_lf;         /* the last byte walked was a LF */
  bool head_ended;       /* llhttp paused where the head ends */
  bool in_message;       /* a request has begun and is not complete */
  bool paused;
};

enum http_parse_result {
  HTTP_PARSE_MORE,    /* all bytes used, no complete request yet */
  HTTP_PARSE_REQUEST, /* p->req holds one complete request */
  HTTP_PARSE_ERROR,   /* p->error_status says what to answer; then close */
};

/* Prepares p for a new connection; limits must outlive it. */
void http_parser_init(struct http_parser *p, const struct http_limits *limits);

/* Parses data until one request is complete. *consumed receives the bytes
 * used; after HTTP_PARSE_REQUEST the rest belongs to the next request. After
 * HTTP_PARSE_ERROR the connection must not be parsed further. */
enum http_parse_result http_parse(struct http_parser *p, const char *data,
                                  size_t len, size_t *consumed);

/* True between requests: nothing of a next request has been seen. */
bool http_parser_idle(const struct http_parser *p);

enum http_connection {
  HTTP_CONN_DEFAULT,    /* HTTP/1.1 keep-alive: no header */
  HTTP_CONN_KEEP_ALIVE, /* HTTP/1.0 keep-alive: "Connection: keep-alive" */
  HTTP_CONN_CLOSE,      /* "Connection: close" */
};

struct http_response {
  /* Not ready yet: the handler fills it in later with server_fill and this
   * ticket; nothing else here is read. */
  bool held;
  uint64_t ticket;
  uint16_t status;
  bool head;                 /* a HEAD request: headers only */
  bool body_owned;           /* body was malloc'd: free it once written */
  const char *content_type;  /* NULL: text/plain */
  const char *extra_headers; /* whole lines ending in CRLF, or NULL */
  const char *body;
  size_t body_len;
};

/* The longest head http_format_head writes with extra headers up to
 * 128 bytes. */
#define HTTP_HEAD_MAX 384

/* Writes the status line and headers of resp into buf (at least
 * HTTP_HEAD_MAX bytes); returns their length. The body is not written. */
size_t http_format_head(char *buf, const struct http_response *resp,
                        enum http_connection conn);

const char *http_reason(uint16_t status);

#endif
