/* An intrusive doubly linked list: each element embeds one struct
 * list_link per list it can be in (container_of finds the element), so
 * adding and removing cost no allocation and O(1). The server keeps its
 * connections in one and the connections that hold a response in
 * another. */
#ifndef GRACEFULD_LIST_H
#define GRACEFULD_LIST_H

#include <stddef.h>

struct list_link {
  struct list_link *prev;
  struct list_link *next;
};

struct list {
  struct list_link *first;
  struct list_link *last;
};

/* Adds k, in no list, at the end of l. */
static inline void list_append(struct list *l, struct list_link *k) {
  k->prev = l->last;
  k->next = NULL;
  if (l->last)
    l->last->next = k;
  else
    l->first = k;
  l->last = k;
}

/* Takes k, which is in l, out of it. */
static inline void list_remove(struct list *l, struct list_link *k) {
  if (k->prev)
    k->prev->next = k->next;
  else
    l->first = k->next;
  if (k->next)
    k->next->prev = k->prev;
  else
    l->last = k->prev;
  k->prev = k->next = NULL;
}

#endif
