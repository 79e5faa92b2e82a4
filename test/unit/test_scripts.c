/* journal: key names, the clock, lease arithmetic, the commands as Redis
 * reads them, and the decoding of the scripts' replies. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include <uv.h>

#include "redis/scripts.h"
#include "redis/sha1.h"

static struct scripts j;
static struct scripts_cmd cmd;

static int setup(void **state) {
  (void)state;
  return scripts_init(&j, "gd:", "counter", 0xabcdef0123456789ull);
}

static int teardown(void **state) {
  (void)state;
  scripts_cmd_free(&cmd);
  return 0;
}

/* Parses cmd the way Redis does: an array of bulk strings. */
static redisReply *parsed(void) {
  redisReader *r = redisReaderCreate();
  assert_non_null(r);
  assert_int_equal(redisReaderFeed(r, cmd.buf, cmd.len), REDIS_OK);
  void *reply = NULL;
  assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
  assert_non_null(reply);
  void *more = NULL;
  assert_int_equal(redisReaderGetReply(r, &more), REDIS_OK);
  assert_null(more); /* exactly one command, nothing after it */
  redisReaderFree(r);
  redisReply *a = reply;
  assert_int_equal(a->type, REDIS_REPLY_ARRAY);
  for (size_t i = 0; i < a->elements; i++)
    assert_int_equal(a->element[i]->type, REDIS_REPLY_STRING);
  return a;
}

static void assert_arg(const redisReply *a, size_t i, const char *want) {
  assert_true(i < a->elements);
  assert_int_equal(a->element[i]->len, strlen(want));
  assert_memory_equal(a->element[i]->str, want, strlen(want));
}

/* EVAL <script> <nkeys> keys...: checks the keys, returns the first
 * argument's index. */
static size_t assert_eval(const redisReply *a, const char *script_start,
                          const char *const *keys, size_t nkeys) {
  assert_arg(a, 0, "EVAL");
  /* The prelude (lua/prelude.lua) comes first, then the script. */
  assert_true(strncmp(a->element[1]->str, "-- Prepended", 12) == 0);
  assert_non_null(strstr(a->element[1]->str, script_start));
  char n[8];
  snprintf(n, sizeof n, "%zu", nkeys);
  assert_arg(a, 2, n);
  for (size_t i = 0; i < nkeys; i++)
    assert_arg(a, 3 + i, keys[i]);
  return 3 + nkeys;
}

static void test_journal_names_every_key_under_the_prefix(void **state) {
  (void)state;
  assert_string_equal(j.id, "abcdef0123456789");
  assert_string_equal(j.counter, "counter");
  assert_string_equal(j.fences, "gd:{counter}:fences");
  assert_string_equal(j.fence_uses, "gd:{counter}:fence_uses");
  assert_string_equal(j.skips, "gd:{counter}:skips");
  assert_string_equal(j.journal, "gd:{counter}:journal:abcdef0123456789");
  assert_string_equal(j.replicas, "gd:{counter}:replicas");
}

/* Scoped to the counter: another counter, other keys; a counter with a hash
 * tag of its own lends it, so that every key shares the counter's slot. */
static void test_journal_keys_share_the_counters_hash_tag(void **state) {
  (void)state;
  struct scripts k;
  assert_int_equal(scripts_init(&k, "gd:", "app:{tenant7}:hits", 1), 0);
  assert_string_equal(k.replicas, "gd:{tenant7}:replicas");
  assert_int_equal(scripts_init(&k, "gd:", "odd{}name", 1), 0);
  assert_string_equal(k.replicas, "gd:{odd{}name}:replicas");
  /* A brace in the prefix would take the tag from the counter. */
  assert_int_equal(scripts_init(&k, "gd{x}:", "c", 1), UV_EINVAL);
  assert_int_equal(scripts_init(&k, "gd}", "c", 1), UV_EINVAL);
}

static void test_journal_refuses_a_prefix_too_long_for_its_keys(void **state) {
  (void)state;
  struct scripts k;
  char prefix[SCRIPTS_KEY_MAX];
  memset(prefix, 'p', sizeof prefix - 1);
  prefix[sizeof prefix - 1] = '\0';
  assert_int_equal(scripts_init(&k, prefix, "c", 1), UV_EINVAL);
  prefix[SCRIPTS_KEY_MAX - 30] = '\0';
  assert_int_equal(scripts_init(&k, prefix, "c", 1), 0);
}

static void
test_journal_clock_is_wall_time_that_follows_the_monotonic(void **state) {
  (void)state;
  struct scripts k = j;
  scripts_clock_set(&k, 1700000000000ull, 5000);
  assert_int_equal(scripts_wall(&k, 5000), 1700000000000ull);
  assert_int_equal(scripts_wall(&k, 8000), 1700000003000ull);
  /* The wall clock stepping back later changes nothing: only the monotonic
   * clock moves deadlines. */
  uint64_t before = scripts_wall(&k, 9000);
  assert_true(scripts_wall(&k, 9001) > before);
}

static void test_journal_lease_is_renewed_three_times_per_length(void **state) {
  (void)state;
  assert_int_equal(scripts_renew_period_ms(3000), 1000);
  assert_int_equal(scripts_adoption_bound_ms(3000), 4000);
  assert_int_equal(scripts_renew_period_ms(1), 1);
}

/* The probe is always sent whole, with no keys (it runs no command), and
 * asks for journal mode's commands and WAIT only where they are used. */
static void test_journal_probe_asks_for_what_the_mode_runs(void **state) {
  (void)state;
  size_t sizes[4];
  for (int i = 0; i < 4; i++) {
    assert_int_equal(scripts_cmd_probe(&cmd, &j, i & 1, i & 2), 0);
    redisReply *a = parsed();
    assert_arg(a, 0, "EVAL");
    assert_true(strncmp(a->element[1]->str, "#!lua flags=no-writes", 21) == 0);
    assert_arg(a, 2, "0");
    assert_arg(a, 3, "3"); /* EVALSHA <sha> 0 first */
    assert_arg(a, 4, "EVALSHA");
    sizes[i] = a->elements;
    bool has_hvals = false, has_wait = false;
    for (size_t k = 3; k < a->elements; k++) {
      has_hvals |= strcmp(a->element[k]->str, "HVALS") == 0;
      has_wait |= strcmp(a->element[k]->str, "WAIT") == 0;
    }
    assert_int_equal(has_hvals, (i & 1) != 0);
    assert_int_equal(has_wait, (i & 2) != 0);
    freeReplyObject(a);
  }
  assert_true(sizes[0] < sizes[1] && sizes[0] < sizes[2]);
}

static void test_journal_batch_is_one_fenced_eval(void **state) {
  (void)state;
  const struct scripts_idem idem[] = {{"k1", 2}, {"key two", 7}};
  assert_int_equal(scripts_cmd_batch(&cmd, &j, 42, 1000, 40, idem, 2), 0);
  redisReply *a = parsed();
  const char *keys[] = {"counter", "gd:{counter}:fences",
                        "gd:{counter}:fence_uses", "gd:{counter}:skips",
                        "gd:{counter}:idempotency"};
  size_t i = assert_eval(a, "-- Memory mode", keys, 5);
  assert_int_equal(a->elements, i + 8);
  assert_arg(a, i, "42");
  assert_arg(a, i + 1, "1000");
  assert_arg(a, i + 2, "86400000");
  assert_arg(a, i + 3, "40");
  assert_arg(a, i + 4, "abcdef0123456789");
  assert_arg(a, i + 5, "86400000"); /* IDEMPOTENCY_TTL_MS */
  assert_arg(a, i + 6, "k1");
  assert_arg(a, i + 7, "key two");
  freeReplyObject(a);
  /* More keys than increments, or than a batch carries: refused. */
  assert_int_equal(scripts_cmd_batch(&cmd, &j, 43, 1, 40, idem, 2), UV_EINVAL);
}

static void test_journal_write_names_replica_and_registry(void **state) {
  (void)state;
  assert_int_equal(scripts_cmd_write(&cmd, &j, 7, 1700000005000ull, 33, 6, 3000,
                                     true, NULL, 0, NULL, 0),
                   0);
  redisReply *a = parsed();
  const char *keys[] = {j.journal,  j.fences,  j.fence_uses, j.skips,
                        j.replicas, j.counter, j.idem};
  size_t i = assert_eval(a, "-- Journal mode: record", keys, 7);
  assert_int_equal(a->elements, i + 9);
  assert_arg(a, i, "7");
  assert_arg(a, i + 1, "1700000005000");
  assert_arg(a, i + 2, "33");
  assert_arg(a, i + 3, "6");
  assert_arg(a, i + 4, "3000");
  assert_arg(a, i + 5, "86400000"); /* SCRIPTS_FENCE_AGE_MS: notes the use */
  assert_arg(a, i + 6, "abcdef0123456789");
  assert_arg(a, i + 7, "86400000");
  assert_arg(a, i + 8, "0");
  freeReplyObject(a);
  /* A write that does not note the fence's use passes an age of 0. */
  assert_int_equal(scripts_cmd_write(&cmd, &j, 8, 1700000005000ull, 1, 7, 3000,
                                     false, NULL, 0, NULL, 0),
                   0);
  a = parsed(); /* EVALSHA now, the same nine arguments last */
  assert_arg(a, a->elements - 9 + 5, "0");
  freeReplyObject(a);
}

static void test_journal_write_carries_idempotency_keys(void **state) {
  (void)state;
  j.idem_ttl_ms = 5000;
  const struct scripts_idem keys_given[] = {{"k1", 2}, {"a\"b", 3}};
  uint64_t due[] = {1700000000001ull};
  assert_int_equal(scripts_cmd_write(&cmd, &j, 7, 1700000005000ull, 3, 6, 3000,
                                     false, keys_given, 2, due, 1),
                   0);
  redisReply *a = parsed();
  const char *keys[] = {j.journal,  j.fences,  j.fence_uses, j.skips,
                        j.replicas, j.counter, j.idem};
  size_t i = assert_eval(a, "-- Journal mode: record", keys, 7);
  assert_int_equal(a->elements, i + 12);
  assert_arg(a, i + 7, "5000");
  assert_arg(a, i + 8, "2");
  assert_arg(a, i + 9, "k1");
  assert_arg(a, i + 10, "a\"b");
  assert_arg(a, i + 11, "1700000000001");
  freeReplyObject(a);
  /* More keys than increments cannot be. */
  assert_int_equal(
      scripts_cmd_write(&cmd, &j, 8, 1, 1, 7, 3000, false, keys_given, 2, NULL,
                        0),
      UV_EINVAL);
  j.idem_ttl_ms = 86400000;
}

static void test_journal_write_carries_the_deadlines_due(void **state) {
  (void)state;
  uint64_t due[] = {1700000000001ull, 1700000000003ull};
  assert_int_equal(scripts_cmd_write(&cmd, &j, 8, 1700000005000ull, 2, 7, 3000,
                                     false, NULL, 0, due, 2),
                   0);
  redisReply *a = parsed();
  const char *keys[] = {j.journal,  j.fences,  j.fence_uses, j.skips,
                        j.replicas, j.counter, j.idem};
  size_t i = assert_eval(a, "-- Journal mode: record", keys, 7);
  assert_int_equal(a->elements, i + 11);
  assert_arg(a, i + 9, "1700000000001");
  assert_arg(a, i + 10, "1700000000003");
  freeReplyObject(a);
  uint64_t many[SCRIPTS_MOVE_MAX + 1] = {0};
  assert_int_equal(scripts_cmd_write(&cmd, &j, 9, 1, 1, 8, 3000, false, NULL, 0,
                                     many, SCRIPTS_MOVE_MAX + 1),
                   UV_EINVAL);
}

static void test_journal_commands_reuse_one_buffer(void **state) {
  (void)state;
  assert_int_equal(scripts_cmd_resolve(&cmd, &j, 9), 0);
  char *buf = cmd.buf;
  size_t len = cmd.len;
  scripts_scripts_forgotten(&j); /* whole again: the same length */
  assert_int_equal(scripts_cmd_resolve(&cmd, &j, 8), 0);
  assert_ptr_equal(cmd.buf, buf);
  assert_int_equal(cmd.len, len);
  redisReply *a = parsed();
  const char *keys[] = {j.fences, j.fence_uses, j.skips};
  size_t i = assert_eval(a, "-- Journal mode: settle", keys, 3);
  assert_arg(a, i, "8");
  assert_arg(a, i + 1, "86400000");
  assert_arg(a, i + 2, "abcdef0123456789");
  freeReplyObject(a);
}

static void test_journal_move_alone_is_a_write_numbered_0(void **state) {
  (void)state;
  uint64_t due[] = {1700000000001ull, 1700000000007ull};
  assert_int_equal(scripts_cmd_move(&cmd, &j, due, 2), 0);
  redisReply *a = parsed();
  const char *keys[] = {j.journal,  j.fences,  j.fence_uses, j.skips,
                        j.replicas, j.counter, j.idem};
  size_t i = assert_eval(a, "-- Journal mode: record", keys, 7);
  assert_int_equal(a->elements, i + 11);
  assert_arg(a, i, "0");
  assert_arg(a, i + 8, "0");
  assert_arg(a, i + 9, "1700000000001");
  assert_arg(a, i + 10, "1700000000007");
  freeReplyObject(a);
  assert_int_equal(scripts_cmd_move(&cmd, &j, due, SCRIPTS_MOVE_MAX + 1),
                   UV_EINVAL);
}

static void test_journal_renew_names_journal_registry_counter(void **state) {
  (void)state;
  assert_int_equal(scripts_cmd_renew(&cmd, &j, 3000, 1700000000000ull), 0);
  redisReply *a = parsed();
  const char *keys[] = {j.journal, j.replicas, j.counter, j.idem};
  size_t i = assert_eval(a, "-- Journal mode: the lease", keys, 4);
  assert_int_equal(a->elements, i + 4);
  assert_arg(a, i, j.id);
  assert_arg(a, i + 1, "3000");
  assert_arg(a, i + 2, "1700000000000");
  assert_arg(a, i + 3, "86400000");
  freeReplyObject(a);
}

static void test_journal_adopt_and_leave_declare_every_key(void **state) {
  (void)state;
  assert_int_equal(
      scripts_cmd_adopt(&cmd, &j, "0123456789abcdef", 16, 1700000000000ull), 0);
  redisReply *a = parsed();
  const char *keys[] = {j.journal, "gd:{counter}:journal:0123456789abcdef",
                        j.replicas};
  size_t i = assert_eval(a, "-- Journal mode: take over", keys, 3);
  assert_arg(a, i, j.id);
  assert_arg(a, i + 1, "0123456789abcdef");
  assert_arg(a, i + 2, "1700000000000");
  freeReplyObject(a);
  /* An id is this build's own: nothing else names a key. */
  assert_int_equal(scripts_cmd_adopt(&cmd, &j, "x:y", 3, 1), UV_EINVAL);
  assert_int_equal(scripts_cmd_adopt(&cmd, &j, "", 0, 1), UV_EINVAL);
  assert_int_equal(scripts_cmd_adopt(&cmd, &j, "0123456789abcdef0", 17, 1),
                   UV_EINVAL);
  assert_int_equal(scripts_cmd_leave(&cmd, &j), 0);
  a = parsed();
  const char *lkeys[] = {j.journal, j.replicas};
  i = assert_eval(a, "-- Journal mode: a replica stops", lkeys, 2);
  assert_arg(a, i, j.id);
  freeReplyObject(a);
}

/* The very bytes WAIT was written as by hand before the builder made it. */
static void test_journal_wait_is_a_plain_command(void **state) {
  (void)state;
  assert_int_equal(scripts_cmd_wait(&cmd, 2, 500), 0);
  const char want[] = "*3\r\n$4\r\nWAIT\r\n$1\r\n2\r\n$3\r\n500\r\n";
  assert_int_equal(cmd.len, sizeof want - 1);
  assert_memory_equal(cmd.buf, want, cmd.len);
}

static redisReply integer(long long v) {
  return (redisReply){.type = REDIS_REPLY_INTEGER, .integer = v};
}

static void test_journal_batch_replies_decode(void **state) {
  (void)state;
  redisReply r = integer(1);
  assert_int_equal(scripts_batch_outcome(&r), SCRIPTS_APPLIED);
  r = integer(0);
  assert_int_equal(scripts_batch_outcome(&r), SCRIPTS_DUPLICATE);
  r = integer(-1);
  assert_int_equal(scripts_batch_outcome(&r), SCRIPTS_OUT_OF_ORDER);
  r = integer(2);
  assert_int_equal(scripts_batch_outcome(&r), SCRIPTS_BAD_REPLY);
  r = (redisReply){.type = REDIS_REPLY_ERROR, .str = "OOM", .len = 3};
  assert_int_equal(scripts_batch_outcome(&r), SCRIPTS_ERROR);
  r = (redisReply){.type = REDIS_REPLY_NIL};
  assert_int_equal(scripts_batch_outcome(&r), SCRIPTS_BAD_REPLY);
}

static void test_journal_write_replies_decode(void **state) {
  (void)state;
  redisReply r = integer(1);
  assert_int_equal(scripts_write_outcome(&r), SCRIPTS_APPLIED);
  r = integer(0);
  assert_int_equal(scripts_write_outcome(&r), SCRIPTS_NOT_APPLIED);
  r = integer(-1);
  assert_int_equal(scripts_write_outcome(&r), SCRIPTS_BAD_REPLY);
  uint64_t n = 0;
  r = integer(12);
  assert_true(scripts_count_of(&r, &n));
  assert_int_equal(n, 12);
  r = integer(-3);
  assert_false(scripts_count_of(&r, &n));
  assert_null(scripts_write_moves(&r)); /* a write that carried none */
  /* A write that carried moves: its outcome, and what they moved. */
  redisReply applied = integer(1), moved = integer(40);
  redisReply *both[] = {&applied, &moved};
  r = (redisReply){.type = REDIS_REPLY_ARRAY, .elements = 2, .element = both};
  assert_int_equal(scripts_write_outcome(&r), SCRIPTS_APPLIED);
  assert_ptr_equal(scripts_write_moves(&r), &moved);
  applied = integer(0);
  assert_int_equal(scripts_write_outcome(&r), SCRIPTS_NOT_APPLIED);
  applied = integer(5);
  assert_int_equal(scripts_write_outcome(&r), SCRIPTS_BAD_REPLY);
}

static void test_journal_adoption_reply_names_who_and_entries(void **state) {
  (void)state;
  redisReply id = {.type = REDIS_REPLY_STRING, .str = "0123", .len = 4};
  redisReply n5 = integer(5), n3 = integer(3), n2 = integer(2);
  redisReply d1 = {
      .type = REDIS_REPLY_STRING, .str = "1700000000100", .len = 13};
  redisReply d2 = {
      .type = REDIS_REPLY_STRING, .str = "1700000000900", .len = 13};
  redisReply *added_e[] = {&d1, &n3, &d2, &n2};
  redisReply added = {
      .type = REDIS_REPLY_ARRAY, .elements = 4, .element = added_e};
  redisReply *top_e[] = {&id, &n5, &added};
  redisReply top = {.type = REDIS_REPLY_ARRAY, .elements = 3, .element = top_e};

  struct scripts_adoption a;
  uint64_t n, d;
  assert_true(scripts_adoption_of(&top, &a));
  assert_int_equal(a.id_len, 4);
  assert_memory_equal(a.id, "0123", 4);
  assert_int_equal(a.n, 5);
  assert_true(scripts_adoption_entry(&a, 1, &d, &n));
  assert_int_equal(d, 1700000000900ull);
  assert_int_equal(n, 2);
  assert_false(scripts_adoption_entry(&a, 2, &d, &n));

  /* Not an adoption: odd pairs, a count that is not an integer. */
  added.elements = 3;
  assert_false(scripts_adoption_of(&top, &a));
  added.elements = 4;
  added_e[1] = &d2;
  assert_false(scripts_adoption_of(&top, &a));
  top.elements = 2;
  assert_false(scripts_adoption_of(&top, &a));
}

static void test_journal_renewal_reply_is_moved_and_lapsed(void **state) {
  (void)state;
  redisReply n7 = integer(7);
  redisReply id = {.type = REDIS_REPLY_STRING, .str = "0123", .len = 4};
  redisReply *lapsed_e[] = {&id};
  redisReply lapsed = {
      .type = REDIS_REPLY_ARRAY, .elements = 1, .element = lapsed_e};
  redisReply *top_e[] = {&n7, &lapsed};
  redisReply top = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = top_e};
  struct scripts_renewal r;
  assert_true(scripts_renewal_of(&top, &r));
  assert_ptr_equal(r.moved, &n7);
  assert_ptr_equal(r.lapsed, &lapsed);
  /* The counter's error in place of the count is a renewal still. */
  redisReply oom = {.type = REDIS_REPLY_ERROR, .str = "OOM x", .len = 5};
  top_e[0] = &oom;
  assert_true(scripts_renewal_of(&top, &r));
  /* Not one: an id that is not a string, a missing part. */
  top_e[0] = &n7;
  lapsed_e[0] = &n7;
  assert_false(scripts_renewal_of(&top, &r));
  top.elements = 1;
  assert_false(scripts_renewal_of(&top, &r));
}

static int forget(void **state) {
  (void)state;
  scripts_scripts_forgotten(&j);
  return 0;
}

static void test_sha1_of_known_texts(void **state) {
  (void)state;
  char h[SHA1_HEX_LEN + 1];
  sha1_hex("", 0, h);
  assert_string_equal(h, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  sha1_hex("abc", 3, h);
  assert_string_equal(h, "a9993e364706816aba3e25717850c26c9cd0d89d");
  const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  sha1_hex(two, strlen(two), h); /* 56 bytes: the padding takes a block */
  assert_string_equal(h, "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
  static char million[1000000];
  memset(million, 'a', sizeof million);
  sha1_hex(million, sizeof million, h);
  assert_string_equal(h, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
}

static void
test_journal_sends_a_script_whole_once_then_by_its_sha(void **state) {
  (void)state;
  assert_int_equal(scripts_cmd_resolve(&cmd, &j, 1), 0);
  redisReply *a = parsed();
  assert_arg(a, 0, "EVAL");
  char sha[SHA1_HEX_LEN + 1];
  sha1_hex(a->element[1]->str, a->element[1]->len, sha);
  assert_string_equal(sha, j.sha[SCRIPTS_RESOLVE]);
  freeReplyObject(a);
  assert_int_equal(scripts_cmd_resolve(&cmd, &j, 2), 0);
  a = parsed();
  assert_arg(a, 0, "EVALSHA");
  assert_arg(a, 1, j.sha[SCRIPTS_RESOLVE]);
  assert_arg(a, 2, "3"); /* its keys */
  freeReplyObject(a);
  /* Another script is still sent whole the first time. */
  assert_int_equal(scripts_cmd_leave(&cmd, &j), 0);
  a = parsed();
  assert_arg(a, 0, "EVAL");
  freeReplyObject(a);
  scripts_scripts_forgotten(&j); /* a new connection, or NOSCRIPT */
  assert_int_equal(scripts_cmd_resolve(&cmd, &j, 3), 0);
  a = parsed();
  assert_arg(a, 0, "EVAL");
  freeReplyObject(a);
  redisReply noscript = {.type = REDIS_REPLY_ERROR,
                         .str = "NOSCRIPT No matching script.",
                         .len = 28};
  assert_true(scripts_noscript(&noscript));
  noscript.str = "ERR other";
  noscript.len = 9;
  assert_false(scripts_noscript(&noscript));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sha1_of_known_texts),
      cmocka_unit_test_setup(
          test_journal_sends_a_script_whole_once_then_by_its_sha, forget),
      cmocka_unit_test_setup(test_journal_names_every_key_under_the_prefix,
                             forget),
      cmocka_unit_test(test_journal_keys_share_the_counters_hash_tag),
      cmocka_unit_test_setup(
          test_journal_refuses_a_prefix_too_long_for_its_keys, forget),
      cmocka_unit_test(
          test_journal_clock_is_wall_time_that_follows_the_monotonic),
      cmocka_unit_test_setup(
          test_journal_lease_is_renewed_three_times_per_length, forget),
      cmocka_unit_test_setup(test_journal_probe_asks_for_what_the_mode_runs,
                             forget),
      cmocka_unit_test_setup(test_journal_batch_is_one_fenced_eval, forget),
      cmocka_unit_test_setup(test_journal_write_names_replica_and_registry,
                             forget),
      cmocka_unit_test_setup(test_journal_write_carries_the_deadlines_due,
                             forget),
      cmocka_unit_test_setup(test_journal_write_carries_idempotency_keys,
                             forget),
      cmocka_unit_test_setup(test_journal_commands_reuse_one_buffer, forget),
      cmocka_unit_test_setup(test_journal_move_alone_is_a_write_numbered_0,
                             forget),
      cmocka_unit_test_setup(test_journal_renew_names_journal_registry_counter,
                             forget),
      cmocka_unit_test_setup(test_journal_adopt_and_leave_declare_every_key,
                             forget),
      cmocka_unit_test_setup(test_journal_wait_is_a_plain_command, forget),
      cmocka_unit_test_setup(test_journal_batch_replies_decode, forget),
      cmocka_unit_test_setup(test_journal_write_replies_decode, forget),
      cmocka_unit_test_setup(test_journal_adoption_reply_names_who_and_entries,
                             forget),
      cmocka_unit_test(test_journal_renewal_reply_is_moved_and_lapsed),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
