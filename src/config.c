#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "base.h"
#include "redis/redis_secret.h"

enum kind {
  K_ADDR_LISTEN,
  K_ADDR_REDIS,
  K_REDIS_URL,
  K_REDIS_USER,
  K_SECRET_FILE,
  K_SENTINELS,
  K_CLUSTER_NODES,
  K_UINT,
  K_STRING,
  K_PATH,
  K_LOG_FORMAT,
  K_LOG_LEVEL,
  K_DURABILITY,
  K_EVICTION
};

struct setting {
  const char *env;
  const char *flag; /* without the leading dashes */
  const char *metavar;
  const char *def;
  const char *help;
  enum kind kind;
  size_t offset; /* of the field in struct config */
  uint64_t min;  /* K_UINT: inclusive range */
  uint64_t max;
};

#define FIELD(f) offsetof(struct config, f)
#define DAY_MS UINT64_C(86400000)

static const struct setting settings[] = {
    {"LISTEN_ADDR", "listen", "HOST:PORT", "0.0.0.0:8080",
     "address to serve HTTP on; [::]:8080 for IPv6", K_ADDR_LISTEN, 0, 0, 0},
    {"REDIS_ADDR", "redis", "HOST:PORT", "127.0.0.1:6379",
     "Redis server; a host name is resolved again at every reconnect",
     K_ADDR_REDIS, 0, 0, 0},
    {"REDIS_URL", "redis-url", "URL", "(none)",
     "redis://[[user][:password]@]host[:port][/db], rediss://... (TLS, to "
     "the Sentinels too) or unix:///path.sock[?db=N]; not with REDIS_ADDR",
     K_REDIS_URL, 0, 0, 0},
    {"REDIS_TLS_CA_FILE", "redis-tls-ca-file", "PATH", "(the system's bundle)",
     "rediss://: the CA certificates (PEM) that the server's certificate "
     "must chain to; the certificate and host name are always verified",
     K_PATH, FIELD(tls_ca_file), 0, 0},
    {"REDIS_TLS_CERT_FILE", "redis-tls-cert-file", "PATH", "(none)",
     "rediss://: a client certificate (PEM chain), with REDIS_TLS_KEY_FILE",
     K_PATH, FIELD(tls_cert_file), 0, 0},
    {"REDIS_TLS_KEY_FILE", "redis-tls-key-file", "PATH", "(none)",
     "rediss://: the client certificate's private key (PEM)", K_PATH,
     FIELD(tls_key_file), 0, 0},
    {"REDIS_TLS_SERVER_NAME", "redis-tls-server-name", "NAME", "(the host)",
     "rediss://: the name sent as SNI and verified in the certificate, "
     "instead of the host connected to (an IP literal: its IP address)",
     K_PATH, FIELD(tls_server_name), 0, 0},
    {"REDIS_USERNAME", "redis-username", "USER", "(none)",
     "ACL user to AUTH as (with the password)", K_REDIS_USER, 0, 0, 0},
    {"REDIS_PASSWORD_FILE", "redis-password-file", "PATH", "(none)",
     "file holding the Redis password, read at start and again at every "
     "connection, so that a rotated Secret is used (a trailing newline is "
     "dropped)",
     K_SECRET_FILE, FIELD(redis.password), 0, 0},
    {"REDIS_SENTINELS", "redis-sentinels", "HOST:PORT,...", "(none)",
     "ask these Sentinels for the master (with REDIS_MASTER_NAME); the "
     "port defaults to 26379",
     K_SENTINELS, 0, 0, 0},
    {"REDIS_CLUSTER_NODES", "redis-cluster-nodes", "HOST:PORT,...", "(none)",
     "Redis Cluster: seed nodes asked for the slot map (CLUSTER SLOTS); the "
     "counter's slot is followed through MOVED and failovers; the port "
     "defaults to 6379; credentials and rediss:// from REDIS_URL",
     K_CLUSTER_NODES, 0, 0, 0},
    {"REDIS_MASTER_NAME", "redis-master-name", "NAME", "(none)",
     "the master's name in Sentinel (with REDIS_SENTINELS)", K_STRING,
     FIELD(master_name), 0, 0},
    {"REDIS_SENTINEL_PASSWORD_FILE", "redis-sentinel-password-file", "PATH",
     "(none)",
     "file holding the Sentinels' password (requirepass), read again at "
     "every connection",
     K_SECRET_FILE, FIELD(sentinel_password), 0, 0},
    {"REDIS_MIN_REPLICAS", "redis-min-replicas", "N", "0",
     "an increment is done only once N replicas have it (WAIT, batched)",
     K_UINT, FIELD(min_replicas), 0, 16},
    {"INCR_DELAY_MS", "incr-delay-ms", "MS", "5000",
     "delay between answering /incr and sending its increment to Redis", K_UINT,
     FIELD(incr_delay_ms), 0, DAY_MS},
    {"COUNTER_KEY", "counter-key", "KEY", "counter",
     "Redis key that /incr increments", K_STRING, FIELD(counter_key), 0, 0},
    {"DURABILITY", "durability", "memory|redis", "memory",
     "memory: the 200 goes at once, an increment lives in the process until "
     "Redis counts it; redis: the 200 waits until Redis holds it in this "
     "replica's journal, which survives SIGKILL",
     K_DURABILITY, 0, 0, 0},
    {"KEY_PREFIX", "key-prefix", "PREFIX", "gracefuld:",
     "prefix of every Redis key but the counter (fences, journals, leases); "
     "no { or }",
     K_STRING, FIELD(key_prefix), 0, 0},
    {"REDIS_ALLKEYS_EVICTION", "redis-allkeys-eviction", "warn|refuse", "warn",
     "a Redis whose maxmemory-policy is allkeys-* may evict the counter and "
     "journals: warn (one log line), or refuse (never ready on it)",
     K_EVICTION, 0, 0, 0},
    {"LEASE_MS", "lease-ms", "MS", "3000",
     "durability redis: a replica whose lease has not been renewed for this "
     "long has its journal adopted by the others",
     K_UINT, FIELD(lease_ms), 300, DAY_MS},
    {"IDEMPOTENCY_TTL_MS", "idempotency-ttl-ms", "MS", "86400000",
     "an Idempotency-Key counts once for this long, across the deployment's "
     "replicas; then Redis forgets it",
     K_UINT, FIELD(idempotency_ttl_ms), 1, 30 * DAY_MS},
    {"SHUTDOWN_DELAY_MS", "shutdown-delay-ms", "MS",
     "0 (5000 when KUBERNETES_SERVICE_HOST is set)",
     "after the first signal, keep serving (unready) this long", K_UINT,
     FIELD(shutdown_delay_ms), 0, DAY_MS},
    {"SHUTDOWN_TIMEOUT_MS", "shutdown-timeout-ms", "MS", "25000",
     "from the first signal, give up on pending increments after this long",
     K_UINT, FIELD(shutdown_timeout_ms), 0, DAY_MS},
    {"MAX_PENDING", "max-pending", "N", "1000000",
     "pending increments past which /incr answers 503", K_UINT,
     FIELD(max_pending), 1, UINT64_C(1000000000)},
    {"LOG_FORMAT", "log-format", "json|text", "json",
     "one JSON object per line, or text for people", K_LOG_FORMAT, 0, 0, 0},
    {"LOG_LEVEL", "log-level", "LEVEL", "info", "debug, info, warn or error",
     K_LOG_LEVEL, 0, 0, 0},
    {"REDIS_REAUTH_MS", "redis-reauth-ms", "MS", "0",
     "send AUTH again on a live connection this often (a password that "
     "expires, an IAM token), read from the password file; 0: never",
     K_UINT, FIELD(redis_reauth_ms), 0, DAY_MS},
    {"REDIS_TIMEOUT_MS", "redis-timeout-ms", "MS", "5000",
     "Redis connect timeout, and how long a command may go unanswered", K_UINT,
     FIELD(redis_timeout_ms), 10, DAY_MS},
    {"HEADER_MAX_BYTES", "header-max-bytes", "N", "8192",
     "request line and headers larger than this: 431", K_UINT,
     FIELD(header_max_bytes), 256, UINT64_C(1048576)},
    {"MAX_HEADERS", "max-headers", "N", "100",
     "more header fields than this: 431", K_UINT, FIELD(max_headers), 1, 10000},
    {"URL_MAX_BYTES", "url-max-bytes", "N", "2048",
     "request target longer than this: 414", K_UINT, FIELD(url_max_bytes), 16,
     UINT64_C(1048576)},
    {"MAX_BODY_BYTES", "max-body-bytes", "N", "1024",
     "request body larger than this: 413", K_UINT, FIELD(max_body_bytes), 0,
     UINT64_C(1073741824)},
    {"HEADER_TIMEOUT_MS", "header-timeout-ms", "MS", "10000",
     "a request not complete this long after it began: 408", K_UINT,
     FIELD(header_timeout_ms), 1, DAY_MS},
    {"IDLE_TIMEOUT_MS", "idle-timeout-ms", "MS", "60000",
     "an idle keep-alive connection is closed after this long", K_UINT,
     FIELD(idle_timeout_ms), 1, DAY_MS},
    {"MAX_CONNECTIONS", "max-connections", "N", "10000",
     "connections past this are accepted and closed at once", K_UINT,
     FIELD(max_connections), 1, UINT64_C(1000000)},
    {"TERMINATION_LOG", "termination-log", "PATH", "/dev/termination-log",
     "file that receives the exit summary; empty for none", K_PATH,
     FIELD(termination_log), 0, 0},
};

#define N_SETTINGS (sizeof settings / sizeof settings[0])

void config_usage(FILE *out) {
  fprintf(out,
          "Usage: gracefuld [--flag VALUE]...\n"
          "\n"
          "Answers GET /incr at once and increments a Redis counter a delay\n"
          "later; on SIGTERM it drains without losing an increment.\n"
          "Every setting is a flag or an environment variable; the flag "
          "wins.\n\n");
  for (size_t i = 0; i < N_SETTINGS; i++) {
    const struct setting *s = &settings[i];
    char lhs[64];
    snprintf(lhs, sizeof lhs, "--%s %s", s->flag, s->metavar);
    fprintf(out, "  %-28s %-20s default: %s\n      %s\n", lhs, s->env, s->def,
            s->help);
  }
  fprintf(out,
          "  %-28s print this and exit\n  %-28s print the version and exit\n",
          "--help", "--version");
}

static void fail(char *err, size_t err_len, const struct setting *s,
                 const char *value, const char *why) {
  snprintf(err, err_len, "invalid %s (--%s) '%s': %s", s->env, s->flag, value,
           why);
}

/* Splits "host:port" or "[v6]:port" into host (without brackets) and port. */
static const char *split_host_port(const char *v, char *host, size_t host_len,
                                   uint64_t *port) {
  uint16_t p = 0;
  const char *why = redis_split_host_port(v, strlen(v), host, host_len, 0, &p);
  *port = p;
  return why;
}

/* The values of a setting that names one of a few, each at its enum's. */
static const char *const log_formats[] = {
    [LOG_FORMAT_JSON] = "json", [LOG_FORMAT_TEXT] = "text", NULL};
static const char *const durabilities[] = {
    [DURABILITY_MEMORY] = "memory", [DURABILITY_REDIS] = "redis", NULL};
static const char *const evictions[] = {"warn", "refuse", NULL};

/* The index of v in names (NULL-terminated), or -1. */
static int name_index(const char *v, const char *const *names) {
  for (int i = 0; names[i]; i++)
    if (strcmp(v, names[i]) == 0)
      return i;
  return -1;
}

static int apply(struct config *cfg, const struct setting *s, const char *v,
                 char *err, size_t err_len) {
  char host[CONFIG_HOST_MAX];
  uint64_t n;
  int i;
  const char *why;

  switch (s->kind) {
  case K_ADDR_LISTEN:
    why = split_host_port(v, host, sizeof host, &n);
    if (why)
      return fail(err, err_len, s, v, why), -1;
    if (uv_ip4_addr(host, (int)n, (struct sockaddr_in *)&cfg->listen_addr) &&
        uv_ip6_addr(host, (int)n, (struct sockaddr_in6 *)&cfg->listen_addr))
      return fail(err, err_len, s, v, "host must be an IP address"), -1;
    memcpy(cfg->listen_host, host, sizeof host);
    cfg->listen_port = (uint16_t)n;
    return 0;
  case K_ADDR_REDIS:
    why = split_host_port(v, host, sizeof host, &n);
    if (why)
      return fail(err, err_len, s, v, why), -1;
    if (n == 0)
      return fail(err, err_len, s, v, "port must be from 1 to 65535"), -1;
    if (!redis_host_valid(host))
      return fail(err, err_len, s, v,
                  strchr(host, ':') ? "not an IPv6 address"
                                    : "not a host name or IP address"),
             -1;
    memset(&cfg->redis, 0, sizeof cfg->redis);
    cfg->redis.transport = REDIS_TCP;
    memcpy(cfg->redis.host, host, sizeof host);
    cfg->redis.port = (uint16_t)n;
    return 0;
  case K_REDIS_URL: {
    char shown[CONFIG_PATH_MAX];
    redis_url_redact(v, shown, sizeof shown);
    if (redis_url_parse(v, &cfg->redis, &why) != 0)
      return fail(err, err_len, s, shown, why), -1;
    return 0;
  }
  case K_REDIS_USER:
    if (cfg->redis.user[0])
      return fail(err, err_len, s, v,
                  "REDIS_URL names a user already; set it in one place"),
             -1;
    if (strlen(v) >= sizeof cfg->redis.user)
      return fail(err, err_len, s, v, "too long"), -1;
    memcpy(cfg->redis.user, v, strlen(v) + 1);
    return 0;
  case K_SECRET_FILE: {
    bool sentinel = s->offset == FIELD(sentinel_password);
    bool *has =
        sentinel ? &cfg->has_sentinel_password : &cfg->redis.has_password;
    if (*has)
      return fail(err, err_len, s, v,
                  "REDIS_URL holds a password already; set it in one place"),
             -1;
    why = redis_secret_read(v, (char *)cfg + s->offset, REDIS_PASSWORD_MAX);
    if (!why && strlen(v) >= CONFIG_PATH_MAX)
      why = "path too long";
    if (why)
      return fail(err, err_len, s, v, why), -1;
    *has = true;
    strcpy(sentinel ? cfg->sentinel_password_file : cfg->redis_password_file,
           v);
    return 0;
  }
  case K_SENTINELS:
  case K_CLUSTER_NODES: {
    bool sentinels = s->kind == K_SENTINELS;
    struct redis_sentinel *nodes =
        sentinels ? cfg->sentinels : cfg->cluster_nodes;
    size_t *count = sentinels ? &cfg->n_sentinels : &cfg->n_cluster_nodes;
    *count = 0;
    for (const char *p = v;;) {
      size_t len = strcspn(p, ",");
      struct redis_sentinel *sn = &nodes[*count];
      if (*count == REDIS_SENTINELS_MAX)
        return fail(err, err_len, s, v, "at most 8 addresses"), -1;
      why = redis_split_host_port(
          p, len, sn->host, sizeof sn->host,
          sentinels ? REDIS_SENTINEL_PORT : REDIS_DEFAULT_PORT, &sn->port);
      if (!why && sn->port == 0)
        why = "port must be from 1 to 65535";
      if (!why && !redis_host_valid(sn->host))
        why = "not a host name or IP address";
      if (why)
        return fail(err, err_len, s, v, why), -1;
      (*count)++;
      if (p[len] == '\0')
        break;
      p += len + 1;
    }
    return 0;
  }
  case K_UINT: {
    int rc = base_parse_u64(v, strlen(v), UINT64_MAX, &n);
    if (rc == UV_EINVAL)
      return fail(err, err_len, s, v, "not a number"), -1;
    if (rc == UV_ERANGE || n < s->min || n > s->max) {
      char why_buf[96];
      snprintf(why_buf, sizeof why_buf, "out of range %llu..%llu",
               (unsigned long long)s->min, (unsigned long long)s->max);
      return fail(err, err_len, s, v, why_buf), -1;
    }
    memcpy((char *)cfg + s->offset, &n, sizeof n);
    return 0;
  }
  case K_STRING:
  case K_PATH: {
    size_t cap = s->kind == K_STRING ? CONFIG_KEY_MAX : CONFIG_PATH_MAX;
    size_t len = strlen(v);
    if (s->kind == K_STRING && len == 0)
      return fail(err, err_len, s, v, "must not be empty"), -1;
    if (len >= cap)
      return fail(err, err_len, s, v, "too long"), -1;
    /* Every key carries the counter's hash tag: a brace in the prefix
     * would take its place. */
    if (s->offset == offsetof(struct config, key_prefix) && strpbrk(v, "{}"))
      return fail(err, err_len, s, v, "must not hold { or }"), -1;
    memcpy((char *)cfg + s->offset, v, len + 1);
    return 0;
  }
  case K_LOG_FORMAT:
    i = name_index(v, log_formats);
    if (i < 0)
      return fail(err, err_len, s, v, "must be json or text"), -1;
    cfg->log_format = (enum log_format)i;
    return 0;
  case K_DURABILITY:
    i = name_index(v, durabilities);
    if (i < 0)
      return fail(err, err_len, s, v, "must be memory or redis"), -1;
    cfg->durability = (enum durability)i;
    return 0;
  case K_EVICTION:
    i = name_index(v, evictions);
    if (i < 0)
      return fail(err, err_len, s, v, "must be warn or refuse"), -1;
    cfg->refuse_allkeys_eviction = i == 1;
    return 0;
  case K_LOG_LEVEL:
    if (log_level_parse(v, &cfg->log_level) != 0)
      return fail(err, err_len, s, v, "must be debug, info, warn or error"), -1;
    return 0;
  }
  return -1;
}

static const char *env_lookup(char *const *envp, const char *name) {
  size_t n = strlen(name);
  for (; envp && *envp; envp++) {
    if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
      return *envp + n + 1;
  }
  return NULL;
}

static bool given(const char *const *values, enum kind kind) {
  for (size_t k = 0; k < N_SETTINGS; k++)
    if (settings[k].kind == kind)
      return values[k] != NULL;
  return false;
}

enum config_result config_parse(struct config *cfg, int argc, char *const *argv,
                                char *const *envp, FILE *out, char *err,
                                size_t err_len) {
  const char *flag_values[N_SETTINGS] = {0};
  memset(cfg, 0, sizeof *cfg);

  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      config_usage(out);
      return CONFIG_EXIT;
    }
    if (strcmp(arg, "--version") == 0) {
      fprintf(out, "gracefuld %s\n", GRACEFULD_VERSION);
      return CONFIG_EXIT;
    }
    if (strncmp(arg, "--", 2) != 0) {
      snprintf(err, err_len, "unexpected argument '%s' (see --help)", arg);
      return CONFIG_ERROR;
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
    size_t k = 0;
    while (k < N_SETTINGS && !(strlen(settings[k].flag) == name_len &&
                               strncmp(settings[k].flag, name, name_len) == 0))
      k++;
    if (k == N_SETTINGS) {
      snprintf(err, err_len, "unknown option '%s' (see --help)", arg);
      return CONFIG_ERROR;
    }
    if (eq) {
      flag_values[k] = eq + 1;
    } else if (i + 1 < argc) {
      flag_values[k] = argv[++i];
    } else {
      snprintf(err, err_len, "option '--%s' needs a value (%s, like %s)",
               settings[k].flag, settings[k].metavar, settings[k].env);
      return CONFIG_ERROR;
    }
  }

  const char *kube = env_lookup(envp, "KUBERNETES_SERVICE_HOST");
  for (size_t k = 0; k < N_SETTINGS; k++) {
    const struct setting *s = &settings[k];
    if (!flag_values[k]) {
      flag_values[k] = env_lookup(envp, s->env);
      if (flag_values[k] && *flag_values[k] == '\0' && s->kind != K_PATH)
        flag_values[k] = NULL; /* an empty variable counts as unset */
    }
  }
  if (given(flag_values, K_ADDR_REDIS) && given(flag_values, K_REDIS_URL)) {
    snprintf(err, err_len,
             "REDIS_URL (--redis-url) and REDIS_ADDR (--redis) are both "
             "set: use one of them");
    return CONFIG_ERROR;
  }
  if (given(flag_values, K_SENTINELS) && given(flag_values, K_ADDR_REDIS)) {
    snprintf(err, err_len,
             "REDIS_SENTINELS (--redis-sentinels) and REDIS_ADDR (--redis) "
             "are both set: the Sentinels name the master");
    return CONFIG_ERROR;
  }
  for (size_t k = 0; k < N_SETTINGS; k++) {
    const struct setting *s = &settings[k];
    const char *v = flag_values[k];
    if (!v && s->def[0] == '(')
      continue; /* "(none)": no default */
    if (!v) {
      v = s->def;
      if (s->offset == FIELD(shutdown_delay_ms) && s->kind == K_UINT)
        v = kube && *kube ? "5000" : "0";
    }
    if (apply(cfg, s, v, err, err_len) != 0)
      return CONFIG_ERROR;
  }
  if (cfg->redis.user[0] && !cfg->redis.has_password) {
    /* AUTH takes a password; without one the connection would silently
     * be the default user. */
    snprintf(err, err_len,
             "a Redis user (REDIS_USERNAME or REDIS_URL) needs a password: "
             "REDIS_PASSWORD_FILE (--redis-password-file) or the URL's");
    return CONFIG_ERROR;
  }
  if (cfg->n_sentinels > 0 && !cfg->master_name[0]) {
    snprintf(err, err_len,
             "REDIS_SENTINELS (--redis-sentinels) needs REDIS_MASTER_NAME "
             "(--redis-master-name)");
    return CONFIG_ERROR;
  }
  if (cfg->master_name[0] && cfg->n_sentinels == 0) {
    snprintf(err, err_len,
             "REDIS_MASTER_NAME (--redis-master-name) needs REDIS_SENTINELS "
             "(--redis-sentinels)");
    return CONFIG_ERROR;
  }
  if (!cfg->redis.tls && (cfg->tls_ca_file[0] || cfg->tls_cert_file[0] ||
                          cfg->tls_key_file[0] || cfg->tls_server_name[0])) {
    snprintf(err, err_len,
             "REDIS_TLS_* settings need a rediss:// REDIS_URL (--redis-url): "
             "without it the connection would be plain text");
    return CONFIG_ERROR;
  }
  if (cfg->n_cluster_nodes > 0 &&
      (given(flag_values, K_ADDR_REDIS) || cfg->n_sentinels > 0)) {
    snprintf(err, err_len,
             "REDIS_CLUSTER_NODES (--redis-cluster-nodes) names the cluster: "
             "not with REDIS_ADDR or REDIS_SENTINELS");
    return CONFIG_ERROR;
  }
  if (cfg->n_cluster_nodes > 0 &&
      (cfg->redis.transport == REDIS_UNIX || cfg->redis.db != 0)) {
    snprintf(err, err_len,
             "REDIS_CLUSTER_NODES (--redis-cluster-nodes): a cluster has "
             "database 0 only and TCP nodes; REDIS_URL may give credentials "
             "and rediss:// only");
    return CONFIG_ERROR;
  }
  if (cfg->n_sentinels > 0 && cfg->redis.transport == REDIS_UNIX) {
    snprintf(err, err_len,
             "REDIS_SENTINELS (--redis-sentinels) with a unix:// REDIS_URL: "
             "Sentinels name TCP addresses");
    return CONFIG_ERROR;
  }
  return CONFIG_OK;
}

const char *config_warning(const struct config *cfg) {
  /* An /incr answered at the end of the delay has its increment due
   * INCR_DELAY_MS later: past the shutdown timeout it is abandoned. */
  if (cfg->shutdown_delay_ms + cfg->incr_delay_ms > cfg->shutdown_timeout_ms)
    return "SHUTDOWN_DELAY_MS + INCR_DELAY_MS exceeds SHUTDOWN_TIMEOUT_MS: "
           "increments answered late in the delay will be abandoned";
  return NULL;
}
