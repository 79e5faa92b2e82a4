/* A password kept in a file (a Kubernetes Secret volume): read at start by
 * the settings, and again by the link at every connection, so that a
 * rotated password (the file swapped in place) is used from the next one
 * on. */
#ifndef GRACEFULD_REDIS_SECRET_H
#define GRACEFULD_REDIS_SECRET_H

#include <stddef.h>

/* Reads the secret at path into out (cap bytes, terminated), dropping one
 * trailing newline. Returns NULL, or a reason that never quotes the file;
 * out is then cleared. */
const char *redis_secret_read(const char *path, char *out, size_t cap);

#endif
