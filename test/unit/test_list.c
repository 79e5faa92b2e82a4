/* The intrusive list the server keeps its connections in: order kept,
 * removal from the front, the middle and the back. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "base.h"
#include "http/list.h"

struct item {
  int id;
  struct list_link link;
};

/* Asserts that l holds exactly the ids given, in order, both ways. */
static void expect(const struct list *l, const int *ids, size_t n) {
  size_t i = 0;
  for (struct list_link *k = l->first; k; k = k->next, i++) {
    assert_true(i < n);
    assert_int_equal(container_of(k, struct item, link)->id, ids[i]);
  }
  assert_int_equal(i, n);
  for (struct list_link *k = l->last; k; k = k->prev) {
    assert_true(i > 0);
    assert_int_equal(container_of(k, struct item, link)->id, ids[--i]);
  }
  assert_int_equal(i, 0);
}

static void test_list_appends_in_order(void **state) {
  (void)state;
  struct list l = {0};
  struct item it[3] = {{.id = 1}, {.id = 2}, {.id = 3}};
  expect(&l, NULL, 0);
  for (int i = 0; i < 3; i++)
    list_append(&l, &it[i].link);
  expect(&l, (int[]){1, 2, 3}, 3);
}

static void test_list_removes_from_anywhere(void **state) {
  (void)state;
  struct list l = {0};
  struct item it[4] = {{.id = 1}, {.id = 2}, {.id = 3}, {.id = 4}};
  for (int i = 0; i < 4; i++)
    list_append(&l, &it[i].link);
  list_remove(&l, &it[1].link); /* the middle */
  expect(&l, (int[]){1, 3, 4}, 3);
  assert_null(it[1].link.prev);
  assert_null(it[1].link.next);
  list_remove(&l, &it[0].link); /* the front */
  expect(&l, (int[]){3, 4}, 2);
  list_remove(&l, &it[3].link); /* the back */
  expect(&l, (int[]){3}, 1);
  list_remove(&l, &it[2].link); /* the last one */
  expect(&l, NULL, 0);
  assert_null(l.first);
  assert_null(l.last);
}

static void test_list_takes_back_what_left_it(void **state) {
  (void)state;
  /* A connection leaves the index of those holding and comes back at its
   * end, behind those that held meanwhile. */
  struct list l = {0};
  struct item it[3] = {{.id = 1}, {.id = 2}, {.id = 3}};
  for (int i = 0; i < 3; i++)
    list_append(&l, &it[i].link);
  list_remove(&l, &it[0].link);
  list_append(&l, &it[0].link);
  expect(&l, (int[]){2, 3, 1}, 3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_list_appends_in_order),
      cmocka_unit_test(test_list_removes_from_anywhere),
      cmocka_unit_test(test_list_takes_back_what_left_it),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
