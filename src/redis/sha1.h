/* SHA-1, for the one thing gracefuld needs it for: the names Redis gives
 * its cached scripts (EVALSHA). Not for anything that needs a secure hash. */
#ifndef GRACEFULD_SHA1_H
#define GRACEFULD_SHA1_H

#include <stddef.h>

#define SHA1_HEX_LEN 40

/* Writes the SHA-1 of len bytes at data into out as 40 lowercase hex digits
 * and a NUL. */
void sha1_hex(const void *data, size_t len, char out[SHA1_HEX_LEN + 1]);

#endif
