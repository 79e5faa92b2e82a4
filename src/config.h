/* Settings: each has an environment variable and a long flag; the flag wins
 * over the variable, the variable over the default. Every value is checked at
 * start-up, and a bad one is reported in one line that names the setting and
 * the value. */
#ifndef GRACEFULD_CONFIG_H
#define GRACEFULD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "log.h"
#include "redis/redis_url.h"

#define CONFIG_HOST_MAX 256
#define CONFIG_KEY_MAX 512
#define CONFIG_PATH_MAX 1024

/* Where an accepted increment lives until Redis has counted it. */
enum durability {
  DURABILITY_MEMORY, /* in the process: the 200 goes at once */
  DURABILITY_REDIS,  /* in this replica's journal in Redis, before the 200 */
};

struct config {
  char listen_host[CONFIG_HOST_MAX]; /* an IP literal, no brackets */
  uint16_t listen_port;
  struct sockaddr_storage listen_addr;
  /* REDIS_ADDR or REDIS_URL, with REDIS_USERNAME and the password of
   * REDIS_PASSWORD_FILE folded in. */
  struct redis_target redis;
  /* REDIS_SENTINELS: when n_sentinels > 0, the master's address comes from
   * them (redis.host and redis.port are then only its first guess). */
  struct redis_sentinel sentinels[REDIS_SENTINELS_MAX];
  size_t n_sentinels;
  /* REDIS_CLUSTER_NODES: seeds asked for the counter slot's owner. */
  struct redis_sentinel cluster_nodes[REDIS_SENTINELS_MAX];
  size_t n_cluster_nodes;
  char master_name[CONFIG_KEY_MAX];
  char sentinel_password[REDIS_PASSWORD_MAX];
  bool has_sentinel_password;
  /* The files the passwords came from (empty: none), read again by the
   * link at every connection. */
  char redis_password_file[CONFIG_PATH_MAX];
  char sentinel_password_file[CONFIG_PATH_MAX];
  /* rediss://: REDIS_TLS_* (empty: not set) */
  char tls_ca_file[CONFIG_PATH_MAX];
  char tls_cert_file[CONFIG_PATH_MAX];
  char tls_key_file[CONFIG_PATH_MAX];
  char tls_server_name[CONFIG_PATH_MAX];
  uint64_t min_replicas; /* REDIS_MIN_REPLICAS: WAIT for this many */
  uint64_t incr_delay_ms;
  char counter_key[CONFIG_KEY_MAX];
  enum durability durability;
  char key_prefix[CONFIG_KEY_MAX]; /* every key but the counter */
  uint64_t lease_ms;
  uint64_t idempotency_ttl_ms;  /* an Idempotency-Key counts once this long */
  bool refuse_allkeys_eviction; /* REDIS_ALLKEYS_EVICTION=refuse */
  uint64_t shutdown_delay_ms;
  uint64_t shutdown_timeout_ms;
  uint64_t max_pending;
  enum log_format log_format;
  enum log_level log_level;
  uint64_t redis_timeout_ms;
  uint64_t redis_reauth_ms; /* REDIS_REAUTH_MS: 0, never */
  uint64_t header_max_bytes;
  uint64_t max_headers;
  uint64_t url_max_bytes;
  uint64_t max_body_bytes;
  uint64_t header_timeout_ms;
  uint64_t idle_timeout_ms;
  uint64_t max_connections;
  char termination_log[CONFIG_PATH_MAX]; /* empty: do not write one */
};

enum config_result {
  CONFIG_OK = 0,    /* run with *cfg */
  CONFIG_EXIT = 1,  /* --help or --version was printed: exit 0 */
  CONFIG_ERROR = 2, /* err holds one line naming the setting: exit 2 */
};

/* Fills *cfg from argv (argv[0] is skipped) over envp (a NULL-terminated
 * list of "NAME=value", as environ) over the defaults. --help and --version
 * print to out. On CONFIG_ERROR, err receives a message without newline. */
enum config_result config_parse(struct config *cfg, int argc, char *const *argv,
                                char *const *envp, FILE *out, char *err,
                                size_t err_len);

/* Writes the settings table, as --help shows it, to out. */
void config_usage(FILE *out);

/* A start-up warning about cfg (valid, but likely not what was meant), or
 * NULL. The text names the settings involved. */
const char *config_warning(const struct config *cfg);

#endif
