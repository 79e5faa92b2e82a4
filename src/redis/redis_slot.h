/* Redis Cluster's hash slot of a key: CRC16 (XModem) of its hash tag (the
 * part between the first '{' and the next '}', when not empty) or of the
 * whole key, modulo 16384. Pure. */
#ifndef GRACEFULD_REDIS_SLOT_H
#define GRACEFULD_REDIS_SLOT_H

#include <stddef.h>
#include <stdint.h>

#define REDIS_SLOTS 16384

uint16_t redis_key_slot(const char *key, size_t len);

#endif
