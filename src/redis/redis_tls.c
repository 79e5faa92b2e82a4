#include "redis/redis_tls.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <uv.h>

/* OpenSSL's last error as text, the queue emptied. */
static void last_error(char *out, size_t cap) {
  unsigned long e = ERR_peek_last_error();
  if (e)
    ERR_error_string_n(e, out, cap);
  else
    snprintf(out, cap, "unknown error");
  ERR_clear_error();
}

static int fail(char *why, size_t cap, const char *what, const char *file) {
  char reason[256];
  last_error(reason, sizeof reason);
  snprintf(why, cap, "%s %s: %s", what, file, reason);
  return UV_EINVAL;
}

int redis_tls_init(struct redis_tls *tls, const struct redis_tls_options *o,
                   char *why, size_t cap) {
  memset(tls, 0, sizeof *tls);
  bool has_cert = o->cert_file && o->cert_file[0];
  bool has_key = o->key_file && o->key_file[0];
  if (has_cert != has_key) {
    snprintf(why, cap,
             "a client certificate needs both REDIS_TLS_CERT_FILE "
             "and REDIS_TLS_KEY_FILE");
    return UV_EINVAL;
  }
  if (o->server_name && strlen(o->server_name) >= sizeof tls->server_name) {
    snprintf(why, cap, "REDIS_TLS_SERVER_NAME is too long");
    return UV_EINVAL;
  }
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    snprintf(why, cap, "out of memory");
    return UV_EINVAL;
  }
  int rc = UV_EINVAL;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (o->ca_file && o->ca_file[0]) {
    if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1) {
      rc = fail(why, cap, "CA bundle", o->ca_file);
      goto fail;
    }
  } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
    rc = fail(why, cap, "CA bundle", "(the system's)");
    goto fail;
  }
  if (has_cert) {
    if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
      rc = fail(why, cap, "client certificate", o->cert_file);
      goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) != 1) {
      rc = fail(why, cap, "client key", o->key_file);
      goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      rc = fail(why, cap, "client key does not match the certificate",
                o->key_file);
      goto fail;
    }
  }
  if (o->server_name)
    snprintf(tls->server_name, sizeof tls->server_name, "%s", o->server_name);
  tls->ctx = ctx;
  return 0;

fail:
  SSL_CTX_free(ctx);
  return rc;
}

static bool is_ip_literal(const char *name) {
  struct sockaddr_in a4;
  struct sockaddr_in6 a6;
  return uv_ip4_addr(name, 0, &a4) == 0 || uv_ip6_addr(name, 0, &a6) == 0;
}

SSL *redis_tls_session(const struct redis_tls *tls, const char *host) {
  SSL *ssl = SSL_new(tls->ctx);
  BIO *rbio = BIO_new(BIO_s_mem());
  BIO *wbio = BIO_new(BIO_s_mem());
  if (!ssl || !rbio || !wbio)
    goto fail;
  SSL_set_bio(ssl, rbio, wbio); /* the session owns them from here */
  rbio = wbio = NULL;
  SSL_set_connect_state(ssl);
  const char *name = tls->server_name[0] ? tls->server_name : host;
  if (is_ip_literal(name)) {
    if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) != 1)
      goto fail;
  } else if (SSL_set_tlsext_host_name(ssl, name) != 1 ||
             SSL_set1_host(ssl, name) != 1) {
    goto fail;
  }
  return ssl;

fail:
  ERR_clear_error();
  BIO_free(rbio);
  BIO_free(wbio);
  SSL_free(ssl);
  return NULL;
}

void redis_tls_error(SSL *ssl, const char *what, char *out, size_t cap) {
  long verdict = SSL_get_verify_result(ssl);
  if (verdict != X509_V_OK) {
    ERR_clear_error();
    snprintf(out, cap, "%s: certificate verify failed: %s", what,
             X509_verify_cert_error_string(verdict));
    return;
  }
  char reason[256];
  last_error(reason, sizeof reason);
  snprintf(out, cap, "%s: %s", what, reason);
}

void redis_tls_free(struct redis_tls *tls) {
  SSL_CTX_free(tls->ctx);
  tls->ctx = NULL;
}
