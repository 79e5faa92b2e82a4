/* TLS for the connections to Redis and the Sentinels: one OpenSSL context
 * made at start from the settings (CA bundle, optional client certificate,
 * optional name to verify), and the one way a connection's session is set
 * up from it. The certificate chain and the server's name (or IP address)
 * are always verified; there is no switch to turn that off.
 *
 * The bytes themselves go through memory BIOs on the loop (redis_conn.c):
 * OpenSSL never touches a socket here. */
#ifndef GRACEFULD_REDIS_TLS_H
#define GRACEFULD_REDIS_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#define REDIS_TLS_NAME_MAX 256

struct redis_tls {
  SSL_CTX *ctx;
  /* Verified instead of the host connected to (and sent as SNI); empty:
   * the host. */
  char server_name[REDIS_TLS_NAME_MAX];
};

/* What the settings name; NULL or "" for what is not set. */
struct redis_tls_options {
  const char *ca_file;   /* NULL: the system's bundle */
  const char *cert_file; /* client certificate (with key_file), or NULL */
  const char *key_file;
  const char *server_name;
};

/* Makes the context: loads the CA bundle and the client certificate and
 * key, and checks that they match. Returns 0, or UV_EINVAL with why (cap
 * bytes) naming the file and OpenSSL's reason; *tls then holds nothing to
 * free. */
int redis_tls_init(struct redis_tls *tls, const struct redis_tls_options *o,
                   char *why, size_t cap);

/* A client session for a connection to host (the name or IP literal it was
 * asked for, not the address it resolved to): SNI and the name verified
 * are tls->server_name, or else host; an IP literal is verified against the
 * certificate's IP addresses and sent no SNI. Returns the session (the
 * caller frees it with SSL_free), or NULL when out of memory. */
SSL *redis_tls_session(const struct redis_tls *tls, const char *host);

/* Writes into out (cap bytes) why the TLS session failed: the certificate
 * verification's verdict when it failed, else OpenSSL's error queue (which
 * this empties), else what. */
void redis_tls_error(SSL *ssl, const char *what, char *out, size_t cap);

void redis_tls_free(struct redis_tls *tls);

#endif
