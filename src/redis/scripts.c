#include "redis/scripts.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "scripts_lua.h" /* generated from src/redis/lua by CMakeLists.txt */
#include "base.h"
#include "redis/sha1.h"

static const struct {
  const char *text;
  size_t len;
} scripts[SCRIPTS_SCRIPTS] = {
    [SCRIPTS_BATCH] = {lua_batch, sizeof lua_batch - 1},
    [SCRIPTS_WRITE] = {lua_journal_write, sizeof lua_journal_write - 1},
    [SCRIPTS_RESOLVE] = {lua_journal_resolve, sizeof lua_journal_resolve - 1},
    [SCRIPTS_RENEW] = {lua_journal_renew, sizeof lua_journal_renew - 1},
    [SCRIPTS_ADOPT] = {lua_journal_adopt, sizeof lua_journal_adopt - 1},
    [SCRIPTS_LEAVE] = {lua_journal_leave, sizeof lua_journal_leave - 1},
    [SCRIPTS_PROBE] = {lua_probe, sizeof lua_probe - 1},
};

void scripts_cmd_free(struct scripts_cmd *cmd) {
  free(cmd->buf);
  memset(cmd, 0, sizeof *cmd);
}

static int key(char *dst, const char *scope, const char *what, const char *id) {
  int n = snprintf(dst, SCRIPTS_KEY_MAX, "%s%s%s%s", scope, what, id ? ":" : "",
                   id ? id : "");
  return n < 0 || n >= SCRIPTS_KEY_MAX ? UV_EINVAL : 0;
}

/* The part of key name that Redis Cluster hashes: what the first '{' and
 * the first '}' after it enclose, if that is not empty; else all of it. */
static void hash_tag(const char *name, const char **tag, size_t *len) {
  const char *open = strchr(name, '{');
  const char *close = open ? strchr(open + 1, '}') : NULL;
  if (close && close > open + 1) {
    *tag = open + 1;
    *len = (size_t)(close - open - 1);
  } else {
    *tag = name;
    *len = strlen(name);
  }
}

int scripts_init(struct scripts *j, const char *prefix, const char *counter,
                 uint64_t random) {
  memset(j, 0, sizeof *j);
  snprintf(j->id, sizeof j->id, "%016" PRIx64, random);
  if (strlen(counter) >= sizeof j->counter || strpbrk(prefix, "{}"))
    return UV_EINVAL;
  strcpy(j->counter, counter);
  const char *tag;
  size_t tag_len;
  hash_tag(counter, &tag, &tag_len);
  int n = snprintf(j->scope, sizeof j->scope, "%s{%.*s}:", prefix, (int)tag_len,
                   tag);
  if (n < 0 || (size_t)n >= sizeof j->scope)
    return UV_EINVAL;
  for (int i = 0; i < SCRIPTS_SCRIPTS; i++)
    sha1_hex(scripts[i].text, scripts[i].len, j->sha[i]);
  if (key(j->fences, j->scope, "fences", NULL) ||
      key(j->fence_uses, j->scope, "fence_uses", NULL) ||
      key(j->skips, j->scope, "skips", NULL) ||
      key(j->journal, j->scope, "journal", j->id) ||
      key(j->replicas, j->scope, "replicas", NULL) ||
      key(j->idem, j->scope, "idempotency", NULL))
    return UV_EINVAL;
  j->idem_ttl_ms = 24ull * 3600 * 1000;
  return 0;
}

void scripts_scripts_forgotten(struct scripts *j) { j->cached = 0; }

bool scripts_noscript(const redisReply *reply) {
  return reply->type == REDIS_REPLY_ERROR && reply->len >= 8 &&
         memcmp(reply->str, "NOSCRIPT", 8) == 0;
}

void scripts_clock_set(struct scripts *j, uint64_t wall_ms, uint64_t mono_ms) {
  j->clock_offset = (int64_t)wall_ms - (int64_t)mono_ms;
}

uint64_t scripts_wall(const struct scripts *j, uint64_t mono_ms) {
  return (uint64_t)((int64_t)mono_ms + j->clock_offset);
}

uint64_t scripts_renew_period_ms(uint64_t lease_ms) {
  uint64_t p = lease_ms / 3;
  return p > 0 ? p : 1;
}

uint64_t scripts_adoption_bound_ms(uint64_t lease_ms) {
  return lease_ms + scripts_renew_period_ms(lease_ms);
}

/* ---- Redis protocol, into a reused buffer ------------------------------- */

static int reserve(struct scripts_cmd *cmd, size_t more) {
  if (cmd->len + more <= cmd->cap)
    return 0;
  size_t cap = cmd->cap ? cmd->cap : 1024;
  while (cap < cmd->len + more)
    cap *= 2;
  char *buf = realloc(cmd->buf, cap);
  if (!buf)
    return UV_ENOMEM;
  cmd->buf = buf;
  cmd->cap = cap;
  return 0;
}

static int put(struct scripts_cmd *cmd, const char *s, size_t n) {
  if (reserve(cmd, n))
    return UV_ENOMEM;
  memcpy(cmd->buf + cmd->len, s, n);
  cmd->len += n;
  return 0;
}

static int head(struct scripts_cmd *cmd, char type, uint64_t n) {
  char h[1 + BASE_U64_DIGITS + 2];
  h[0] = type;
  size_t len = 1 + base_format_u64(h + 1, n);
  h[len++] = '\r';
  h[len++] = '\n';
  return put(cmd, h, len);
}

static int arg(struct scripts_cmd *cmd, const char *s, size_t n) {
  if (head(cmd, '$', n) || put(cmd, s, n) || put(cmd, "\r\n", 2))
    return UV_ENOMEM;
  return 0;
}

static int arg_str(struct scripts_cmd *cmd, const char *s) {
  return arg(cmd, s, strlen(s));
}

static int arg_u64(struct scripts_cmd *cmd, uint64_t v) {
  char d[BASE_U64_DIGITS];
  return arg(cmd, d, base_format_u64(d, v));
}

/* EVAL <script> or EVALSHA <sha1>, <nkeys> <keys...>, leaving the
 * arguments to the caller; nargs counts them. */
static int eval(struct scripts_cmd *cmd, struct scripts *j,
                enum scripts_script script, const char *const *keys,
                unsigned nkeys, size_t nargs) {
  cmd->len = 0;
  bool cached = j->cached & 1u << script;
  int rc = head(cmd, '*', 3 + nkeys + nargs);
  rc = rc ? rc : arg_str(cmd, cached ? "EVALSHA" : "EVAL");
  rc = rc       ? rc
       : cached ? arg(cmd, j->sha[script], SHA1_HEX_LEN)
                : arg(cmd, scripts[script].text, scripts[script].len);
  rc = rc ? rc : arg_u64(cmd, nkeys);
  for (unsigned i = 0; i < nkeys && !rc; i++)
    rc = arg_str(cmd, keys[i]);
  /* Redis caches it as it reads the EVAL, before anything sent after. */
  if (!rc)
    j->cached |= 1u << script;
  return rc;
}

#define EVAL(cmd, j, script, keys, nargs)                                      \
  eval(cmd, j, script, keys, sizeof keys / sizeof *keys, nargs)

/* A command the scripts run, as they run it. */
struct probe {
  unsigned n;
  const char *words[4];
};

int scripts_cmd_probe(struct scripts_cmd *cmd, struct scripts *j, bool journal,
                      bool wait) {
  const char *sha = j->sha[SCRIPTS_BATCH];
  /* Both durabilities: the counter, the fences, the Idempotency-Keys, the
   * script cache. */
  const struct probe both[] = {
      {3, {"EVALSHA", sha, "0"}},
      {2, {"TYPE", j->counter}},
      {2, {"GET", j->counter}},
      {3, {"INCRBY", j->counter, "1"}},
      {1, {"TIME"}},
      {3, {"HGET", j->fences, j->id}},
      {4, {"HSET", j->fences, j->id, "1"}},
      {3, {"HDEL", j->fences, j->id}},
      {4, {"ZADD", j->fence_uses, "1", j->id}},
      {3, {"ZREM", j->fence_uses, j->id}},
      {4, {"ZRANGEBYSCORE", j->fence_uses, "0", "1"}},
      {4, {"ZRANGEBYSCORE", j->skips, "0", "1"}},
      {3, {"ZREM", j->skips, j->id}},
      {3, {"ZSCORE", j->idem, "k"}},
      {4, {"ZADD", j->idem, "1", "k"}},
      {4, {"ZREMRANGEBYSCORE", j->idem, "0", "1"}},
  };
  /* Journal mode: the journal, the ranges, the registry. */
  const struct probe more[] = {
      {4, {"ZADD", j->skips, "1", j->id}},
      {4, {"HINCRBY", j->journal, "1", "1"}},
      {3, {"HGET", j->journal, "1"}},
      {3, {"HDEL", j->journal, "1"}},
      {2, {"HGETALL", j->journal}},
      {2, {"HVALS", j->journal}},
      {2, {"DEL", j->journal}},
      {4, {"ZADD", j->replicas, "1", j->id}},
      {3, {"ZREM", j->replicas, j->id}},
      {3, {"ZSCORE", j->replicas, j->id}},
      {4, {"ZRANGEBYSCORE", j->replicas, "0", "1"}},
  };
  const struct probe waits[] = {{3, {"WAIT", "0", "0"}}};
  const struct {
    const struct probe *p;
    size_t n;
  } parts[] = {
      {both, sizeof both / sizeof *both},
      {more, journal ? sizeof more / sizeof *more : 0},
      {waits, wait ? 1 : 0},
  };
  size_t nargs = 0;
  for (size_t k = 0; k < sizeof parts / sizeof *parts; k++)
    for (size_t i = 0; i < parts[k].n; i++)
      nargs += 1 + parts[k].p[i].n;
  const char *const keys[] = {NULL};
  j->cached &= ~(1u << SCRIPTS_PROBE); /* always whole */
  int rc = eval(cmd, j, SCRIPTS_PROBE, keys, 0, nargs);
  j->cached &= ~(1u << SCRIPTS_PROBE);
  for (size_t k = 0; k < sizeof parts / sizeof *parts; k++)
    for (size_t i = 0; i < parts[k].n && !rc; i++) {
      const struct probe *p = &parts[k].p[i];
      rc = arg_u64(cmd, p->n);
      for (unsigned w = 0; w < p->n && !rc; w++)
        rc = arg_str(cmd, p->words[w]);
    }
  return rc;
}

int scripts_cmd_batch(struct scripts_cmd *cmd, struct scripts *j, uint64_t seq,
                      uint64_t n, uint64_t floor,
                      const struct scripts_idem *idem, size_t n_keys) {
  if (n_keys > SCRIPTS_IDEM_MAX || n_keys > n)
    return UV_EINVAL;
  const char *keys[] = {j->counter, j->fences, j->fence_uses, j->skips,
                        j->idem};
  int rc = EVAL(cmd, j, SCRIPTS_BATCH, keys, 6 + n_keys);
  rc = rc ? rc : arg_u64(cmd, seq);
  rc = rc ? rc : arg_u64(cmd, n);
  rc = rc ? rc : arg_u64(cmd, SCRIPTS_FENCE_AGE_MS);
  rc = rc ? rc : arg_u64(cmd, floor);
  rc = rc ? rc : arg_str(cmd, j->id);
  rc = rc ? rc : arg_u64(cmd, j->idem_ttl_ms);
  for (size_t i = 0; i < n_keys && !rc; i++)
    rc = arg(cmd, idem[i].key, idem[i].len);
  return rc;
}

int scripts_cmd_write(struct scripts_cmd *cmd, struct scripts *j, uint64_t seq,
                      uint64_t deadline_wall, uint64_t n, uint64_t known,
                      uint64_t lease_ms, bool note_use,
                      const struct scripts_idem *idem, size_t n_keys,
                      const uint64_t *due_wall, size_t n_due) {
  if (n_due > SCRIPTS_MOVE_MAX || n_keys > SCRIPTS_IDEM_MAX || n_keys > n)
    return UV_EINVAL;
  const char *keys[] = {j->journal,  j->fences,  j->fence_uses, j->skips,
                        j->replicas, j->counter, j->idem};
  int rc = EVAL(cmd, j, SCRIPTS_WRITE, keys, 9 + n_keys + n_due);
  rc = rc ? rc : arg_u64(cmd, seq);
  rc = rc ? rc : arg_u64(cmd, deadline_wall);
  rc = rc ? rc : arg_u64(cmd, n);
  rc = rc ? rc : arg_u64(cmd, known);
  rc = rc ? rc : arg_u64(cmd, lease_ms);
  rc = rc ? rc : arg_u64(cmd, note_use ? SCRIPTS_FENCE_AGE_MS : 0);
  rc = rc ? rc : arg_str(cmd, j->id);
  rc = rc ? rc : arg_u64(cmd, j->idem_ttl_ms);
  rc = rc ? rc : arg_u64(cmd, n_keys);
  for (size_t i = 0; i < n_keys && !rc; i++)
    rc = arg(cmd, idem[i].key, idem[i].len);
  for (size_t i = 0; i < n_due && !rc; i++)
    rc = arg_u64(cmd, due_wall[i]);
  return rc;
}

int scripts_cmd_resolve(struct scripts_cmd *cmd, struct scripts *j,
                        uint64_t seq) {
  const char *keys[] = {j->fences, j->fence_uses, j->skips};
  int rc = EVAL(cmd, j, SCRIPTS_RESOLVE, keys, 3);
  rc = rc ? rc : arg_u64(cmd, seq);
  rc = rc ? rc : arg_u64(cmd, SCRIPTS_FENCE_AGE_MS);
  return rc ? rc : arg_str(cmd, j->id);
}

int scripts_cmd_move(struct scripts_cmd *cmd, struct scripts *j,
                     const uint64_t *deadlines_wall, size_t n) {
  /* Number 0: no fence lets it record anything, only its moves run. */
  return scripts_cmd_write(cmd, j, 0, 0, 0, 0, 0, false, NULL, 0,
                           deadlines_wall, n);
}

int scripts_cmd_renew(struct scripts_cmd *cmd, struct scripts *j,
                      uint64_t lease_ms, uint64_t due_wall) {
  const char *keys[] = {j->journal, j->replicas, j->counter, j->idem};
  int rc = EVAL(cmd, j, SCRIPTS_RENEW, keys, 4);
  rc = rc ? rc : arg_str(cmd, j->id);
  rc = rc ? rc : arg_u64(cmd, lease_ms);
  rc = rc ? rc : arg_u64(cmd, due_wall);
  return rc ? rc : arg_u64(cmd, j->idem_ttl_ms);
}

int scripts_cmd_adopt(struct scripts_cmd *cmd, struct scripts *j,
                      const char *id, size_t id_len, uint64_t wall_now) {
  /* Ids are this build's own: hex digits, and nothing a key could hide. */
  char other[SCRIPTS_ID_LEN + 1];
  if (id_len == 0 || id_len > SCRIPTS_ID_LEN)
    return UV_EINVAL;
  memcpy(other, id, id_len);
  other[id_len] = '\0';
  if (strspn(other, "0123456789abcdef") < id_len ||
      key(j->other, j->scope, "journal", other))
    return UV_EINVAL;
  const char *keys[] = {j->journal, j->other, j->replicas};
  int rc = EVAL(cmd, j, SCRIPTS_ADOPT, keys, 3);
  rc = rc ? rc : arg_str(cmd, j->id);
  rc = rc ? rc : arg_str(cmd, other);
  return rc ? rc : arg_u64(cmd, wall_now);
}

int scripts_cmd_leave(struct scripts_cmd *cmd, struct scripts *j) {
  const char *keys[] = {j->journal, j->replicas};
  int rc = EVAL(cmd, j, SCRIPTS_LEAVE, keys, 1);
  return rc ? rc : arg_str(cmd, j->id);
}

int scripts_cmd_wait(struct scripts_cmd *cmd, uint64_t min_replicas,
                     uint64_t timeout_ms) {
  cmd->len = 0;
  int rc = head(cmd, '*', 3);
  rc = rc ? rc : arg_str(cmd, "WAIT");
  rc = rc ? rc : arg_u64(cmd, min_replicas);
  return rc ? rc : arg_u64(cmd, timeout_ms);
}

/* ---- Replies ------------------------------------------------------------ */

enum scripts_outcome scripts_batch_outcome(const redisReply *reply) {
  if (reply->type == REDIS_REPLY_ERROR)
    return SCRIPTS_ERROR;
  if (reply->type != REDIS_REPLY_INTEGER)
    return SCRIPTS_BAD_REPLY;
  switch (reply->integer) {
  case 1:
    return SCRIPTS_APPLIED;
  case 0:
    return SCRIPTS_DUPLICATE;
  case -1:
    return SCRIPTS_OUT_OF_ORDER;
  default:
    return SCRIPTS_BAD_REPLY;
  }
}

enum scripts_outcome scripts_write_outcome(const redisReply *reply) {
  if (reply->type == REDIS_REPLY_ERROR)
    return SCRIPTS_ERROR;
  if (reply->type == REDIS_REPLY_ARRAY &&
      (reply->elements == 2 || reply->elements == 3))
    reply = reply->element[0]; /* the write, with moves (and keys) beside */
  if (reply->type != REDIS_REPLY_INTEGER ||
      (reply->integer != 0 && reply->integer != 1))
    return SCRIPTS_BAD_REPLY;
  return reply->integer ? SCRIPTS_APPLIED : SCRIPTS_NOT_APPLIED;
}

const redisReply *scripts_write_moves(const redisReply *reply) {
  if (reply->type != REDIS_REPLY_ARRAY ||
      (reply->elements != 2 && reply->elements != 3))
    return NULL;
  return reply->element[1];
}

bool scripts_write_replays(const redisReply *reply, const char **flags,
                           size_t *len) {
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
      reply->element[2]->type != REDIS_REPLY_STRING ||
      reply->element[2]->len == 0)
    return false;
  *flags = reply->element[2]->str;
  *len = reply->element[2]->len;
  return true;
}

bool scripts_count_of(const redisReply *reply, uint64_t *count) {
  if (reply->type != REDIS_REPLY_INTEGER || reply->integer < 0)
    return false;
  *count = (uint64_t)reply->integer;
  return true;
}

/* A flat array of (string, integer) pairs, as the adoption script builds. */
static bool pairs_ok(const redisReply *r) {
  if (r->type != REDIS_REPLY_ARRAY || r->elements % 2)
    return false;
  for (size_t i = 0; i < r->elements; i += 2)
    if (r->element[i]->type != REDIS_REPLY_STRING ||
        r->element[i + 1]->type != REDIS_REPLY_INTEGER ||
        r->element[i + 1]->integer < 0)
      return false;
  return true;
}

bool scripts_renewal_of(const redisReply *reply, struct scripts_renewal *r) {
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2)
    return false;
  const redisReply *moved = reply->element[0], *lapsed = reply->element[1];
  if ((moved->type != REDIS_REPLY_INTEGER || moved->integer < 0) &&
      moved->type != REDIS_REPLY_ERROR)
    return false;
  if (lapsed->type != REDIS_REPLY_ARRAY)
    return false;
  for (size_t i = 0; i < lapsed->elements; i++)
    if (lapsed->element[i]->type != REDIS_REPLY_STRING)
      return false;
  r->moved = moved;
  r->lapsed = lapsed;
  return true;
}

bool scripts_adoption_of(const redisReply *reply, struct scripts_adoption *a) {
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
      reply->element[0]->type != REDIS_REPLY_STRING ||
      reply->element[1]->type != REDIS_REPLY_INTEGER ||
      reply->element[1]->integer < 0 || !pairs_ok(reply->element[2]))
    return false;
  a->id = reply->element[0]->str;
  a->id_len = reply->element[0]->len;
  a->n = (uint64_t)reply->element[1]->integer;
  a->added = reply->element[2];
  return true;
}

bool scripts_adoption_entry(const struct scripts_adoption *a, size_t i,
                            uint64_t *deadline_wall, uint64_t *n) {
  if (2 * i >= a->added->elements)
    return false;
  const redisReply *d = a->added->element[2 * i];
  char digits[24];
  if (d->len == 0 || d->len >= sizeof digits)
    return false;
  memcpy(digits, d->str, d->len);
  digits[d->len] = '\0';
  char *end;
  unsigned long long v = strtoull(digits, &end, 10);
  if (*end)
    return false;
  *deadline_wall = v;
  *n = (uint64_t)a->added->element[2 * i + 1]->integer;
  return true;
}
