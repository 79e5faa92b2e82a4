/* What every room uses and no room owns. */
#ifndef GRACEFULD_BASE_H
#define GRACEFULD_BASE_H

#include <stddef.h>

/* The struct of the given type that holds ptr as its member. */
#define container_of(ptr, type, member)                                        \
  ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

#endif
