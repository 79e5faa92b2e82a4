/* What every room uses and no room owns. */
#ifndef GRACEFULD_BASE_H
#define GRACEFULD_BASE_H

#include <stddef.h>
#include <stdint.h>

/* The struct of the given type that holds ptr as its member. */
#define container_of(ptr, type, member)                                        \
  ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* The n bytes at v (no terminator needed) as a decimal number: digits only,
 * no sign, no spaces. Returns 0 with *out set; UV_EINVAL when v is empty or
 * holds anything but digits; UV_ERANGE when the number exceeds max. Bytes
 * are read in order and the first wrong one decides: "99…9x" past max is
 * UV_ERANGE. *out is left alone on error. */
int base_parse_u64(const char *v, size_t n, uint64_t max, uint64_t *out);

/* The most digits a uint64_t has in decimal. */
#define BASE_U64_DIGITS 20

/* v in decimal at out (room for BASE_U64_DIGITS; no terminator written):
 * returns the number of digits. What snprintf does, for the hot paths that
 * format numbers by the dozen. */
size_t base_format_u64(char *out, uint64_t v);

/* Whether a count that went from before to after has passed a power of
 * two (or left 0): a line logged at those steps says a growing count
 * without saying it at every step. */
static inline int base_passed_power_of_two(uint64_t before, uint64_t after) {
  return (before ^ after) > before;
}

#endif
