#include "redis/redis_link.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "log.h"
#include "redis/redis_error.h"
#include "redis/redis_secret.h"
#include "redis/redis_conn.h"
#include "redis/redis_server.h"
#include "redis/redis_slot.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

static void connect_now(struct redis_link *link);

/* Where the master's address is asked: the Sentinels, or the cluster's
 * seeds; *n is 0 when the target is connected to directly. */
static const struct redis_sentinel *seeds(const struct redis_link *link,
                                          size_t *n) {
  if (link->opts.n_sentinels) {
    *n = link->opts.n_sentinels;
    return link->opts.sentinels;
  }
  *n = link->opts.n_cluster_nodes;
  return link->opts.cluster_nodes;
}

static void on_reply(struct redis_conn *conn, redisReply *reply,
                     void *privdata);

static uint32_t next_random(struct redis_link *link) {
  /* xorshift32: jitter needs spread, not quality. */
  uint32_t x = link->rng;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return link->rng = x;
}

void redis_link_init(struct redis_link *link, uv_loop_t *loop,
                     const struct redis_link_options *opts,
                     const struct redis_link_client *client) {
  memset(link, 0, sizeof *link);
  link->loop = loop;
  link->opts = *opts;
  link->client = client;
  link->state = LINK_IDLE;
  link->transport = "";
  link->rng = (uint32_t)uv_hrtime() | 1;
  uv_timer_init(loop, &link->timer);
  uv_timer_init(loop, &link->reauth_timer);
  link->target = opts->target;
  if (opts->sentinel_password) {
    snprintf(link->sentinel_password, sizeof link->sentinel_password, "%s",
             opts->sentinel_password);
    link->has_sentinel_password = true;
  }
  if (opts->n_sentinels)
    snprintf(link->addr, sizeof link->addr, "sentinel:%s", opts->master_name);
  else if (opts->n_cluster_nodes)
    snprintf(link->addr, sizeof link->addr, "cluster:slot %u", opts->slot);
  else
    redis_target_format(&link->target, link->addr, sizeof link->addr);
}

static void free_checks(struct redis_link *link) {
  for (size_t i = 0; i < link->n_checks; i++)
    free((char *)link->checks[i].key);
  link->n_checks = 0;
}

int redis_link_set_checks(struct redis_link *link,
                          const struct redis_key_check *checks, size_t n) {
  if (n > REDIS_LINK_CHECKS_MAX)
    return UV_EINVAL;
  free_checks(link);
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(checks[i].key);
    char *key = malloc(len + 1);
    if (!key) {
      free_checks(link);
      return UV_ENOMEM;
    }
    memcpy(key, checks[i].key, len + 1);
    link->checks[link->n_checks++] =
        (struct redis_key_check){key, checks[i].kind};
  }
  return 0;
}

int redis_link_set_probe(struct redis_link *link, const char *cmd, size_t len) {
  char *copy = malloc(len);
  if (!copy)
    return UV_ENOMEM;
  memcpy(copy, cmd, len);
  free(link->probe);
  link->probe = copy;
  link->probe_len = len;
  return 0;
}

bool redis_link_connected(const struct redis_link *link) {
  return link->state == LINK_READY;
}

static void on_backoff(uv_timer_t *timer) {
  connect_now(container_of(timer, struct redis_link, timer));
}

/* Keeps the reason for the retry that follows, as Redis or hiredis gave it. */
static void set_why(struct redis_link *link, const char *why, size_t len) {
  if (len >= sizeof link->why)
    len = sizeof link->why - 1;
  memcpy(link->why, why, len);
  link->why[len] = '\0';
}

/* A connect attempt failed or a connection was lost: try again after a
 * backoff. Only the change of state is logged, not every attempt. */
static void retry_later(struct redis_link *link, const char *why) {
  uint64_t now = uv_now(link->loop);
  link->conn = NULL;
  if (link->state == LINK_CLOSED)
    return;
  char sentinel_why[sizeof link->why + REDIS_HOST_MAX + 32];
  size_t n_seeds;
  const struct redis_sentinel *seed = seeds(link, &n_seeds);
  if (n_seeds) {
    if (link->asking) {
      /* This Sentinel (seed) failed us: the next attempt asks the next
       * one. */
      const struct redis_sentinel *sn = &seed[link->sentinel];
      snprintf(sentinel_why, sizeof sentinel_why, "%s %s:%u: %s",
               link->opts.n_sentinels ? "sentinel" : "cluster seed", sn->host,
               sn->port, why);
      why = sentinel_why;
      link->sentinel = (link->sentinel + 1) % n_seeds;
    } else {
      /* The master may have moved: ask again. */
      link->master_known = false;
    }
  }
  if (!link->down_logged) {
    link->down_logged = true;
    link->down_since = now;
    log_warn("redis_down", LOG_STR("addr", link->addr),
             LOG_STR("node", link->node), LOG_STR("transport", link->transport),
             LOG_STR("reason", why), LOG_STR("retrying", "backoff"));
  } else {
    log_debug("redis_retry", LOG_STR("reason", why),
              LOG_UINT("failures", link->failures));
  }
  link->why[0] = '\0';
  link->state = LINK_IDLE;
  unsigned shift = link->failures < 5 ? link->failures : 5;
  uint64_t ceiling = (uint64_t)BACKOFF_MIN_MS << shift;
  if (ceiling > BACKOFF_MAX_MS)
    ceiling = BACKOFF_MAX_MS;
  /* Half fixed, half random: spread out, but never back to back. */
  uint64_t delay = ceiling / 2 + next_random(link) % (ceiling / 2 + 1);
  link->failures++;
  uv_timer_start(&link->timer, on_backoff, delay, 0);
}

static void on_connect_timeout(uv_timer_t *timer) {
  struct redis_link *link = container_of(timer, struct redis_link, timer);
  struct redis_conn *conn = link->conn;
  if (link->state == LINK_HANDSHAKE || link->state == LINK_ASKING) {
    /* Connected: freeing calls on_disconnect, which retries. */
    snprintf(link->why, sizeof link->why, "no answer to the handshake");
    redis_conn_free(conn);
    return;
  }
  /* Not connected yet (a TLS handshake included), so freeing runs no
   * callback of ours. */
  link->conn = NULL;
  redis_conn_free(conn);
  retry_later(link, "connect timed out");
}

static void on_watchdog(uv_timer_t *timer);

static void arm_watchdog(struct redis_link *link) {
  uint64_t now = uv_now(link->loop);
  uint64_t due = link->last_progress + link->opts.timeout_ms;
  uv_timer_start(&link->timer, on_watchdog, due > now ? due - now : 0, 0);
}

static void on_watchdog(uv_timer_t *timer) {
  struct redis_link *link = container_of(timer, struct redis_link, timer);
  if ((link->state != LINK_READY && link->state != LINK_RETIRING) ||
      link->in_flight == 0)
    return;
  uint64_t now = uv_now(link->loop);
  if (now - link->last_progress < link->opts.timeout_ms) {
    arm_watchdog(link);
    return;
  }
  log_warn("redis_timeout", LOG_UINT("in_flight", link->in_flight),
           LOG_UINT("waited_ms", now - link->last_progress));
  snprintf(link->why, sizeof link->why, "no reply for %llu ms",
           (unsigned long long)(now - link->last_progress));
  /* Outside any callback of the connection's: this frees at once, hands
   * the replies still owed back through on_reply(NULL) and calls
   * on_disconnect. */
  redis_conn_free(link->conn);
}

/* This connection takes no more work: once its last reply is in, it is
 * closed and a fresh one made after a backoff (through on_disconnect). */
void redis_link_retire(struct redis_link *link, const char *why, size_t len) {
  if (link->state != LINK_READY)
    return;
  link->state = LINK_RETIRING;
  set_why(link, why, len);
  /* Once until a command succeeds again, not at every reconnect. */
  if (!link->retiring_logged)
    log_warn("redis_retiring", LOG_STR("addr", link->addr),
             LOG_STR("reply", link->why),
             LOG_UINT("in_flight", link->in_flight));
  link->retiring_logged = true;
  if (link->in_flight == 0)
    redis_conn_disconnect(link->conn); /* deferred inside a callback */
}

static void on_reply(struct redis_conn *conn, redisReply *reply,
                     void *privdata) {
  struct redis_link *link = redis_conn_data(conn);
  link->in_flight--;
  if (link->state == LINK_CLOSED)
    return;
  if (reply) {
    link->last_progress = uv_now(link->loop);
    if (reply->type != REDIS_REPLY_ERROR)
      link->retiring_logged = false;
    else if (link->opts.n_cluster_nodes && !link->ask_mode && !link->ask_next)
      /* The slot is migrating and this command's keys have gone: the
       * client retires this connection, and the next one follows the
       * ASK. */
      link->ask_next =
          redis_slot_parse_ask(reply->str, reply->len, link->ask_ip,
                               sizeof link->ask_ip, &link->ask_port);
  }
  link->client->on_reply(link, (uint64_t)(uintptr_t)privdata, reply);
  if (!reply)
    return; /* on_disconnect follows */
  if (link->state == LINK_RETIRING && link->in_flight == 0)
    redis_conn_disconnect(conn); /* deferred until this callback returns */
  else if (link->in_flight == 0 && link->state == LINK_READY)
    uv_timer_stop(&link->timer);
}

/* ASKING's reply: an error only if the node imports the slot no more, in
 * which case the command after it gets MOVED, which the client acts on. */
static void on_asking_reply(struct redis_conn *conn, redisReply *reply,
                            void *privdata) {
  (void)conn;
  (void)reply;
  (void)privdata;
}

int redis_link_send(struct redis_link *link, const char *cmd, size_t len,
                    uint64_t tag) {
  if (link->state != LINK_READY)
    return UV_ENOTCONN;
  if (link->ask_mode && redis_slot_asking_safe(cmd, len)) {
    int rc = redis_conn_send_argv(link->conn, on_asking_reply, NULL, 1,
                                  (const char *[]){"ASKING"});
    if (rc != 0)
      return rc;
  }
  int rc =
      redis_conn_send(link->conn, on_reply, (void *)(uintptr_t)tag, cmd, len);
  if (rc != 0)
    return rc;
  if (link->in_flight++ == 0) {
    link->last_progress = uv_now(link->loop);
    arm_watchdog(link);
  }
  return 0;
}

/* ---- The handshake: AUTH, SELECT, before anything is counted ------------- */

/* The AUTH of a password to a Redis that has none: Redis 6+ and Redis 5
 * word it differently. The connection is usable; only a warning is due. */
static bool auth_unneeded(const redisReply *reply) {
  return strstr(reply->str, "without any password configured") ||
         strstr(reply->str, "no password is set");
}

static void reread_password(const char *path, const char *which, char *password,
                            bool *has, bool *unreadable);
static int send_auth_with(struct redis_link *link, redis_conn_reply_fn *fn,
                          void *tag);

/* The reply to an AUTH sent again on a live connection. Refused (the
 * password expired, or changed without the file following), the
 * connection is retired: the next one logs in with the file as it is then,
 * or waits for it with the backoff. */
static void on_reauth_reply(struct redis_conn *conn, redisReply *reply,
                            void *privdata) {
  struct redis_link *link = redis_conn_data(conn);
  (void)privdata;
  if (!reply || link->state != LINK_READY)
    return;
  if (reply->type == REDIS_REPLY_ERROR) {
    log_warn("redis_reauth_failed", LOG_STR("addr", link->addr),
             LOG_STRN("error", reply->str, reply->len));
    redis_link_retire(link, reply->str, reply->len);
    return;
  }
  log_debug("redis_reauth", LOG_STR("addr", link->addr));
}

static void on_reauth(uv_timer_t *timer) {
  struct redis_link *link =
      container_of(timer, struct redis_link, reauth_timer);
  if (link->state != LINK_READY)
    return;
  struct redis_target *t = &link->target;
  reread_password(link->opts.password_file, "redis", t->password,
                  &t->has_password, &link->password_unreadable_logged);
  send_auth_with(link, on_reauth_reply, NULL);
}

static void handshake_done(struct redis_link *link) {
  uint64_t now = uv_now(link->loop);
  uv_timer_stop(&link->timer);
  link->state = LINK_READY;
  if (link->ever_ready)
    link->stats.reconnects++;
  if (link->down_logged || !link->ever_ready)
    log_info(
        "redis_up", LOG_STR("addr", link->addr), LOG_STR("node", link->node),
        LOG_STR("transport", link->transport),
        LOG_UINT("attempts", link->failures + 1),
        LOG_UINT("down_ms", link->down_logged ? now - link->down_since : 0));
  if (link->checked_keys[0])
    log_info("redis_keys_usable", LOG_STR("addr", link->addr));
  link->checked_keys[0] = '\0';
  link->ever_ready = true;
  link->down_logged = false;
  link->auth_failed_logged = false;
  link->failures = 0;
  if (link->opts.reauth_ms && link->target.has_password)
    uv_timer_start(&link->reauth_timer, on_reauth, link->opts.reauth_ms,
                   link->opts.reauth_ms);
  link->client->on_ready(link);
}

/* Tags telling on_handshake_reply which command a reply answers. */
static const char tag_auth = 'a', tag_role = 'r', tag_master = 'm',
                  tag_slots = 's', tag_info = 'i', tag_policy = 'p',
                  tag_probe = 'c';

/* A check the server does not let us make (INFO or CONFIG renamed or
 * denied, as managed offerings do): said once per change. */
static void check_skipped(struct redis_link *link, char *last, size_t cap,
                          const char *what, const redisReply *reply) {
  if (strcmp(last, "?") == 0)
    return;
  snprintf(last, cap, "?");
  log_info("redis_check_skipped", LOG_STR("addr", link->addr),
           LOG_STR("check", what), LOG_STRN("reply", reply->str, reply->len));
}

/* INFO server's redis_version: too old to count on is unusable. */
static const char *check_version(struct redis_link *link,
                                 const redisReply *reply) {
  if (reply->type != REDIS_REPLY_STRING)
    return "unexpected reply to INFO server";
  char version[sizeof link->checked_version];
  unsigned major;
  if (!redis_server_version(reply->str, reply->len, version, sizeof version,
                            &major))
    return NULL; /* not said: nothing to judge by */
  bool old = major < REDIS_SERVER_MIN_MAJOR;
  if (strcmp(link->checked_version, version) != 0) {
    snprintf(link->checked_version, sizeof link->checked_version, "%s",
             version);
    if (old)
      log_error("redis_version_unsupported", LOG_STR("addr", link->addr),
                LOG_STR("version", version),
                LOG_UINT("minimum_major", REDIS_SERVER_MIN_MAJOR));
  }
  return old ? "Redis older than 6.0" : NULL;
}

/* A key the client cannot count on (WRONGTYPE, or NOPERM: the ACL user
 * may not touch it): said once, until a handshake passes again; anything
 * else (BUSY, LOADING) is the reason of the retry, as any handshake
 * error. */
static void keys_unusable(struct redis_link *link, const char *msg,
                          size_t len) {
  if (!redis_error_refuses_keys(msg, len))
    return;
  char said[sizeof link->checked_keys];
  snprintf(said, sizeof said, "%.*s", (int)len, msg);
  if (strcmp(said, link->checked_keys) == 0)
    return;
  memcpy(link->checked_keys, said, sizeof said);
  log_error("redis_keys_unusable", LOG_STR("addr", link->addr),
            LOG_STRN("reply", msg, len),
            LOG_STR("until", "the key is fixed or deleted; retried"));
}

static const char *const kind_names[] = {
    [REDIS_KEY_INTEGER] = "string",
    [REDIS_KEY_HASH] = "hash",
    [REDIS_KEY_ZSET] = "zset",
};

/* TYPE of check i: absent, or of its kind. */
static const char *check_type(struct redis_link *link, size_t i,
                              const redisReply *reply) {
  const struct redis_key_check *c = &link->checks[i];
  if (reply->type != REDIS_REPLY_STATUS)
    return "unexpected reply to TYPE";
  if (strcmp(reply->str, "none") == 0 ||
      strcmp(reply->str, kind_names[c->kind]) == 0)
    return NULL;
  snprintf(link->why, sizeof link->why, "WRONGTYPE %s holds a %s, not a %s",
           c->key, reply->str, kind_names[c->kind]);
  keys_unusable(link, link->why, strlen(link->why));
  return link->why;
}

/* GET of an integer check i: absent, or a number INCRBY takes. */
static const char *check_value(struct redis_link *link, size_t i,
                               const redisReply *reply) {
  if (reply->type == REDIS_REPLY_NIL ||
      (reply->type == REDIS_REPLY_STRING &&
       redis_server_is_integer(reply->str, reply->len)))
    return NULL;
  snprintf(link->why, sizeof link->why, "WRONGTYPE %s holds no integer",
           link->checks[i].key);
  keys_unusable(link, link->why, strlen(link->why));
  return link->why;
}

/* CONFIG GET maxmemory-policy: under allkeys-* Redis may evict any key,
 * the counter and the journals included. */
static const char *check_policy(struct redis_link *link,
                                const redisReply *reply) {
  if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 0)
    return NULL; /* CONFIG GET of nothing: no such setting here */
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
      reply->element[1]->type != REDIS_REPLY_STRING)
    return "unexpected reply to CONFIG GET maxmemory-policy";
  const redisReply *p = reply->element[1];
  bool allkeys = redis_server_evicts_any_key(p->str, p->len);
  char policy[sizeof link->checked_policy];
  snprintf(policy, sizeof policy, "%.*s", (int)p->len, p->str);
  if (strcmp(link->checked_policy, policy) != 0) {
    snprintf(link->checked_policy, sizeof link->checked_policy, "%s", policy);
    if (allkeys)
      log_warn("redis_eviction_policy", LOG_STR("addr", link->addr),
               LOG_STR("maxmemory_policy", policy),
               LOG_STR("risk", "under memory pressure Redis may evict the "
                               "counter, journals and fences: increments "
                               "lost or counted twice"),
               LOG_STR("refused",
                       link->opts.refuse_allkeys_eviction ? "yes" : "no"));
  }
  return allkeys && link->opts.refuse_allkeys_eviction
             ? "maxmemory-policy allkeys-* refused (REDIS_ALLKEYS_EVICTION)"
             : NULL;
}

static void set_master(struct redis_link *link, const char *host,
                       uint16_t port);

/* The Sentinel's answer to get-master-addr-by-name: [host, port], or nil
 * for a name it does not know. Returns NULL or why it is unusable. */
static const char *take_master(struct redis_link *link,
                               const redisReply *reply) {
  if (reply->type == REDIS_REPLY_NIL)
    return "the sentinel knows no such master";
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
      reply->element[0]->type != REDIS_REPLY_STRING ||
      reply->element[1]->type != REDIS_REPLY_STRING)
    return "unexpected reply to SENTINEL get-master-addr-by-name";
  const redisReply *h = reply->element[0], *p = reply->element[1];
  char host[REDIS_HOST_MAX];
  uint64_t port = 0;
  if (h->len == 0 || h->len >= sizeof host ||
      base_parse_u64(p->str, p->len, 65535, &port) != 0 || port == 0)
    return "unusable master address from the sentinel";
  memcpy(host, h->str, h->len);
  host[h->len] = '\0';
  set_master(link, host, (uint16_t)port);
  return NULL;
}

/* The master (the slot's owner) is at host:port from now on: said once
 * per change, naming who said so. */
static void set_master(struct redis_link *link, const char *host,
                       uint16_t port) {
  struct redis_target *t = &link->target;
  if (strcmp(t->host, host) != 0 || t->port != (uint16_t)port ||
      !link->ever_ready) {
    char was[sizeof link->addr];
    memcpy(was, link->addr, sizeof was);
    snprintf(t->host, sizeof t->host, "%s", host);
    t->port = (uint16_t)port;
    redis_target_format(t, link->addr, sizeof link->addr);
    if (strcmp(was, link->addr) != 0) {
      size_t n;
      const struct redis_sentinel *sn = &seeds(link, &n)[link->sentinel];
      char from[REDIS_HOST_MAX + 8];
      snprintf(from, sizeof from, "%s:%u", sn->host, sn->port);
      if (link->opts.n_sentinels)
        log_info("redis_master", LOG_STR("from", was),
                 LOG_STR("to", link->addr),
                 LOG_STR("master_name", link->opts.master_name),
                 LOG_STR("sentinel", from));
      else
        log_info("redis_master", LOG_STR("from", was),
                 LOG_STR("to", link->addr), LOG_UINT("slot", link->opts.slot),
                 LOG_STR("seed", from));
    }
  }
}

/* CLUSTER SLOTS: [[first, last, [ip, port, ...], replicas...], ...]; the
 * master of the range holding our slot. An empty ip means the node asked.
 * Returns NULL or why it is unusable. */
static const char *take_slot_owner(struct redis_link *link,
                                   const redisReply *reply) {
  if (reply->type != REDIS_REPLY_ARRAY)
    return "unexpected reply to CLUSTER SLOTS";
  for (size_t i = 0; i < reply->elements; i++) {
    const redisReply *r = reply->element[i];
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_INTEGER ||
        r->element[1]->type != REDIS_REPLY_INTEGER ||
        r->element[2]->type != REDIS_REPLY_ARRAY)
      return "unexpected reply to CLUSTER SLOTS";
    if (link->opts.slot < r->element[0]->integer ||
        link->opts.slot > r->element[1]->integer)
      continue;
    const redisReply *m = r->element[2];
    if (m->elements < 2 || m->element[0]->type != REDIS_REPLY_STRING ||
        m->element[1]->type != REDIS_REPLY_INTEGER ||
        m->element[1]->integer <= 0 || m->element[1]->integer > 65535 ||
        m->element[0]->len >= REDIS_HOST_MAX)
      return "unusable slot owner in CLUSTER SLOTS";
    char host[REDIS_HOST_MAX];
    if (m->element[0]->len == 0 || strcmp(m->element[0]->str, "?") == 0)
      snprintf(host, sizeof host, "%s", link->host);
    else
      snprintf(host, sizeof host, "%s", m->element[0]->str);
    set_master(link, host, (uint16_t)m->element[1]->integer);
    return NULL;
  }
  return "no node serves the counter's slot (CLUSTERDOWN)";
}

/* ROLE's first element says what the server is now. */
static const char *check_role(const redisReply *reply) {
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0 ||
      reply->element[0]->type != REDIS_REPLY_STRING)
    return "unexpected reply to ROLE";
  if (strcmp(reply->element[0]->str, "master") != 0)
    return "ROLE: not a master (any more); asking where it is again";
  return NULL;
}

static bool is_type_tag(const struct redis_link *link, const char *tag) {
  return tag >= link->type_tags && tag < link->type_tags + link->n_checks;
}

static bool is_get_tag(const struct redis_link *link, const char *tag) {
  return tag >= link->get_tags && tag < link->get_tags + link->n_checks;
}

static bool is_check(const struct redis_link *link, const void *privdata) {
  return is_type_tag(link, privdata) || is_get_tag(link, privdata);
}

static void on_handshake_reply(struct redis_conn *conn, redisReply *reply,
                               void *privdata) {
  struct redis_link *link = redis_conn_data(conn);
  link->handshake_left--;
  if (!reply || (link->state != LINK_HANDSHAKE && link->state != LINK_ASKING))
    return; /* the connection is going; on_disconnect retries */
  if (reply->type == REDIS_REPLY_ERROR && is_check(link, privdata) &&
      reply->len >= 4 && memcmp(reply->str, "ASK ", 4) == 0) {
    /* The key has gone to the node importing the slot, where it cannot be
     * read without ASKING: checked at a later handshake (and the scripts
     * check each key's type before they write). */
  } else if (reply->type == REDIS_REPLY_ERROR && !link->why[0] &&
             (privdata == &tag_info || privdata == &tag_policy ||
              (privdata == &tag_probe &&
               !redis_error_refuses_keys(reply->str, reply->len))) &&
             !redis_error_is_auth(reply->str, reply->len)) {
    if (privdata == &tag_info)
      check_skipped(link, link->checked_version, sizeof link->checked_version,
                    "version", reply);
    else if (privdata == &tag_policy)
      check_skipped(link, link->checked_policy, sizeof link->checked_policy,
                    "maxmemory-policy", reply);
    else
      check_skipped(link, link->checked_commands, sizeof link->checked_commands,
                    "commands", reply);
  } else if (reply->type == REDIS_REPLY_ERROR && !link->why[0] &&
             (is_check(link, privdata) || privdata == &tag_probe)) {
    keys_unusable(link, reply->str, reply->len);
    set_why(link, reply->str, reply->len);
  } else if (reply->type == REDIS_REPLY_ERROR && !link->why[0]) {
    if (privdata == &tag_auth && auth_unneeded(reply)) {
      if (!link->auth_unneeded_logged)
        log_warn("redis_auth_unneeded", LOG_STR("addr", link->addr),
                 LOG_STRN("reply", reply->str, reply->len));
      link->auth_unneeded_logged = true;
    } else {
      set_why(link, reply->str, reply->len);
      if (redis_error_is_auth(reply->str, reply->len) &&
          !link->auth_failed_logged) {
        link->auth_failed_logged = true;
        log_error("redis_auth_failed",
                  LOG_STR("addr", link->asking ? "sentinel" : link->addr),
                  LOG_STR("error", link->why));
      }
    }
  } else if (reply->type != REDIS_REPLY_ERROR && !link->why[0]) {
    const char *tag = privdata;
    const char *why =
        tag == &tag_master   ? take_master(link, reply)
        : tag == &tag_slots  ? take_slot_owner(link, reply)
        : tag == &tag_role   ? check_role(reply)
        : tag == &tag_info   ? check_version(link, reply)
        : tag == &tag_policy ? check_policy(link, reply)
        : is_type_tag(link, tag)
            ? check_type(link, (size_t)(tag - link->type_tags), reply)
        : is_get_tag(link, tag)
            ? check_value(link, (size_t)(tag - link->get_tags), reply)
            : NULL;
    if (why && why != link->why)
      set_why(link, why, strlen(why));
  }
  if (link->handshake_left > 0)
    return;
  if (link->why[0]) {
    redis_conn_disconnect(conn); /* on_disconnect retries after a backoff */
  } else if (link->state == LINK_ASKING) {
    link->master_known = true;
    link->state = LINK_ASKED;
    redis_conn_disconnect(conn); /* on_disconnect connects to the master */
  } else {
    handshake_done(link);
  }
}

/* Queues one command of the handshake (argc strings, none holding a NUL),
 * its reply to come to on_handshake_reply with tag; returns 0 or
 * redis_conn_send's error. */
static int send_step(struct redis_link *link, const char *tag, int argc,
                     const char **argv) {
  int rc = redis_conn_send_argv(link->conn, on_handshake_reply, (void *)tag,
                                argc, argv);
  link->handshake_left += rc == 0;
  return rc;
}

/* Queues AUTH of the target's user and password (the password alone
 * without a user), its reply to fn with tag; no password, nothing. */
static int send_auth_with(struct redis_link *link, redis_conn_reply_fn *fn,
                          void *tag) {
  const struct redis_target *t = &link->target;
  if (!t->has_password)
    return 0;
  if (t->user[0])
    return redis_conn_send_argv(link->conn, fn, tag, 3,
                                (const char *[]){"AUTH", t->user, t->password});
  return redis_conn_send_argv(link->conn, fn, tag, 2,
                              (const char *[]){"AUTH", t->password});
}

/* Queues AUTH when there is a password (NULL: none): user and password,
 * or the password alone. */
static int send_auth(struct redis_link *link, const char *user,
                     const char *password) {
  if (!password)
    return 0;
  if (user[0])
    return send_step(link, &tag_auth, 3,
                     (const char *[]){"AUTH", user, password});
  return send_step(link, &tag_auth, 2, (const char *[]){"AUTH", password});
}

/* A password file is read again at every connection: a Secret rotated in
 * place is used from the next one on (said once per change, never the
 * password). Unreadable for a moment (a Secret volume swaps it), the last
 * password is kept, said once. */
static void reread_password(const char *path, const char *which, char *password,
                            bool *has, bool *unreadable) {
  if (!path)
    return;
  char now[REDIS_PASSWORD_MAX];
  const char *why = redis_secret_read(path, now, sizeof now);
  if (why) {
    if (!*unreadable)
      log_warn("redis_password_unreadable", LOG_STR("password", which),
               LOG_STR("file", path), LOG_STR("error", why),
               LOG_STR("using", "the last one read"));
    *unreadable = true;
    return;
  }
  *unreadable = false;
  if (*has && strcmp(now, password) != 0)
    log_info("redis_password_changed", LOG_STR("password", which),
             LOG_STR("file", path));
  memcpy(password, now, sizeof now);
  *has = true;
  memset(now, 0, sizeof now);
}

/* Queues the commands that make a fresh connection fit to count on: AUTH
 * and SELECT db; ROLE behind Sentinel, to be sure it is the master; INFO
 * server and CONFIG GET maxmemory-policy, to check the version and the
 * eviction policy (where they are allowed); a Redis that wants a password
 * says so (NOAUTH) before the link is ready. Their replies arrive before
 * any reply to due work. */
static int send_handshake(struct redis_link *link) {
  struct redis_target *t = &link->target;
  reread_password(link->opts.password_file, "redis", t->password,
                  &t->has_password, &link->password_unreadable_logged);
  int rc = send_auth(link, t->user, t->has_password ? t->password : NULL);
  if (rc == 0 && t->db) {
    char db[16];
    snprintf(db, sizeof db, "%u", t->db);
    rc = send_step(link, NULL, 2, (const char *[]){"SELECT", db});
  }
  size_t n_seeds;
  seeds(link, &n_seeds);
  if (rc == 0 && n_seeds)
    rc = send_step(link, &tag_role, 1, (const char *[]){"ROLE"});
  if (rc == 0)
    rc = send_step(link, &tag_info, 2, (const char *[]){"INFO", "server"});
  if (rc == 0)
    rc = send_step(link, &tag_policy, 3,
                   (const char *[]){"CONFIG", "GET", "maxmemory-policy"});
  /* Following an ASK, the keys are split between two nodes: neither can
   * read them all (nor run the probe, which names them). */
  if (rc == 0 && link->probe && !link->ask_mode) {
    rc = redis_conn_send(link->conn, on_handshake_reply, (void *)&tag_probe,
                         link->probe, link->probe_len);
    link->handshake_left += rc == 0;
  }
  for (size_t i = 0; rc == 0 && !link->ask_mode && i < link->n_checks; i++) {
    const struct redis_key_check *c = &link->checks[i];
    rc = send_step(link, &link->type_tags[i], 2,
                   (const char *[]){"TYPE", c->key});
    if (rc == 0 && c->kind == REDIS_KEY_INTEGER)
      rc = send_step(link, &link->get_tags[i], 2,
                     (const char *[]){"GET", c->key});
  }
  return rc;
}

/* Asks a Sentinel where the master is (after its AUTH, if it has one). */
static int send_sentinel_query(struct redis_link *link) {
  const struct redis_link_options *opts = &link->opts;
  if (!opts->n_sentinels) {
    /* A cluster seed: logged in to as the master would be. */
    struct redis_target *t = &link->target;
    reread_password(opts->password_file, "redis", t->password, &t->has_password,
                    &link->password_unreadable_logged);
    int rc = send_auth(link, t->user, t->has_password ? t->password : NULL);
    if (rc == 0)
      rc = send_step(link, &tag_slots, 2, (const char *[]){"CLUSTER", "SLOTS"});
    return rc;
  }
  reread_password(opts->sentinel_password_file, "sentinel",
                  link->sentinel_password, &link->has_sentinel_password,
                  &link->sentinel_password_unreadable_logged);
  int rc = send_auth(
      link, "", link->has_sentinel_password ? link->sentinel_password : NULL);
  if (rc == 0)
    rc = send_step(link, &tag_master, 3,
                   (const char *[]){"SENTINEL", "get-master-addr-by-name",
                                    opts->master_name});
  return rc;
}

static void on_connect(struct redis_conn *conn, const char *err) {
  struct redis_link *link = redis_conn_data(conn);
  if (link->state == LINK_CLOSED)
    return;
  if (err) {
    uv_timer_stop(&link->timer);
    retry_later(link, err); /* the connection is gone when this returns */
    return;
  }
  /* The connect timeout keeps running: it bounds the handshake too. */
  link->state = link->asking ? LINK_ASKING : LINK_HANDSHAKE;
  link->handshake_left = 0;
  link->why[0] = '\0';
  int rc = link->asking ? send_sentinel_query(link) : send_handshake(link);
  if (rc != 0) {
    snprintf(link->why, sizeof link->why, "%s", uv_strerror(rc));
    redis_conn_disconnect(conn);
  }
}

static void on_disconnect(struct redis_conn *conn, const char *err) {
  struct redis_link *link = redis_conn_data(conn);
  uv_timer_stop(&link->timer);
  link->conn = NULL;
  if (link->state == LINK_CLOSED)
    return;
  if (link->state == LINK_ASKED) {
    /* The Sentinel has answered: the master next, at once (from the loop,
     * once this connection is let go). */
    link->state = LINK_IDLE;
    uv_timer_start(&link->timer, on_backoff, 0, 0);
    return;
  }
  char why[sizeof link->why];
  snprintf(why, sizeof why, "%s",
           err            ? err
           : link->why[0] ? link->why
                          : "disconnected");
  uv_timer_stop(&link->reauth_timer);
  bool was_ready = link->state == LINK_READY || link->state == LINK_RETIRING;
  if (was_ready && link->ask_next) {
    /* Not down: redirected. The node the ASK named next, at once. */
    log_debug("redis_ask", LOG_STR("from", link->node),
              LOG_STR("to", link->ask_ip), LOG_UINT("port", link->ask_port));
    link->stats.asks++;
    link->why[0] = '\0';
    link->state = LINK_IDLE;
    uv_timer_start(&link->timer, on_backoff, 0, 0);
    link->client->on_down(link);
    return;
  }
  retry_later(link, why);
  /* The replies it still owed have been handed back, as lost. */
  if (was_ready)
    link->client->on_down(link);
}

static const struct redis_conn_handlers conn_handlers = {
    .on_connect = on_connect,
    .on_disconnect = on_disconnect,
};

/* Connects to ip (an address literal) and port, or to the unix socket at
 * path, and waits for the outcome, or retries later. TLS, when the link
 * has it, verifies link->host, the name asked for. */
static void open_conn(struct redis_link *link, const char *ip,
                      const char *path) {
  struct redis_conn_target target = {
      .ip = ip,
      .port = link->port,
      .path = path,
      .tls = link->opts.tls,
      .host = link->host,
  };
  int rc =
      redis_conn_open(link->loop, &target, &conn_handlers, link, &link->conn);
  if (rc != 0) {
    char why[128];
    snprintf(why, sizeof why, "connecting: %s", uv_strerror(rc));
    retry_later(link, why);
    return;
  }
  link->state = LINK_CONNECTING;
  link->transport = redis_conn_transport(link->conn);
  if (path)
    snprintf(link->node, sizeof link->node, "%s", path);
  else
    snprintf(link->node, sizeof link->node,
             strchr(link->host, ':') ? "[%s]:%u" : "%s:%u", link->host,
             link->port);
  uv_timer_start(&link->timer, on_connect_timeout, link->opts.timeout_ms, 0);
}

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  struct redis_link *link = container_of(req, struct redis_link, resolver);
  char ip[64] = "";
  if (status == 0) {
    /* A name with several addresses (localhost: ::1 and 127.0.0.1): each
     * failed attempt moves on to the next one. */
    unsigned n = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
      n++;
    struct addrinfo *ai = res;
    for (unsigned skip = link->failures % n; skip > 0; skip--)
      ai = ai->ai_next;
    if (ai->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, ip, sizeof ip);
    else
      uv_ip4_name((struct sockaddr_in *)ai->ai_addr, ip, sizeof ip);
  }
  uv_freeaddrinfo(res);
  if (link->state == LINK_CLOSED)
    return;
  if (status != 0) {
    char why[REDIS_HOST_MAX + 96];
    snprintf(why, sizeof why, "resolving %s: %s", link->host,
             uv_strerror(status));
    retry_later(link, why);
    return;
  }
  open_conn(link, ip, NULL);
}

static void connect_now(struct redis_link *link) {
  const struct redis_target *t = &link->target;
  size_t n_seeds;
  const struct redis_sentinel *seed = seeds(link, &n_seeds);
  link->ask_mode = link->ask_next;
  link->ask_next = false;
  link->asking = n_seeds && !link->master_known && !link->ask_mode;
  if (link->ask_mode) {
    /* Once: after this connection, the seeds are asked again. */
    link->host = link->ask_ip;
    link->port = link->ask_port;
    link->master_known = false;
  } else if (link->asking) {
    link->host = seed[link->sentinel].host;
    link->port = seed[link->sentinel].port;
  } else if (t->transport == REDIS_UNIX) {
    open_conn(link, NULL, t->path);
    return;
  } else {
    link->host = t->host;
    link->port = t->port;
  }
  struct sockaddr_in6 a6;
  struct sockaddr_in a4;
  if (uv_ip4_addr(link->host, 0, &a4) == 0 ||
      uv_ip6_addr(link->host, 0, &a6) == 0) {
    open_conn(link, link->host, NULL);
    return;
  }
  /* A name: resolved again at every attempt, so a Service or a restarted
   * Redis with a new address is found. */
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  link->state = LINK_RESOLVING;
  int rc = uv_getaddrinfo(link->loop, &link->resolver, on_resolved, link->host,
                          NULL, &hints);
  if (rc)
    retry_later(link, uv_strerror(rc));
}

void redis_link_start(struct redis_link *link) {
  if (link->state == LINK_IDLE && !uv_is_active((uv_handle_t *)&link->timer))
    connect_now(link);
}

void redis_link_close(struct redis_link *link) {
  enum redis_link_state was = link->state;
  if (was == LINK_CLOSED)
    return;
  link->state = LINK_CLOSED;
  uv_timer_stop(&link->timer);
  if (was == LINK_RESOLVING)
    uv_cancel((uv_req_t *)&link->resolver);
  if (link->conn) {
    struct redis_conn *conn = link->conn;
    if (was == LINK_READY && link->in_flight == 0) {
      /* Clean: deferred if we are inside one of the connection's
       * callbacks. */
      redis_conn_disconnect(conn);
    } else {
      link->conn = NULL;
      redis_conn_free(conn);
    }
  }
  uv_close((uv_handle_t *)&link->timer, NULL);
  uv_close((uv_handle_t *)&link->reauth_timer, NULL);
  free_checks(link);
  free(link->probe);
  link->probe = NULL;
}
