/* Redis Cluster's hash slot of a key: CRC16 (XModem) of its hash tag (the
 * part between the first '{' and the next '}', when not empty) or of the
 * whole key, modulo 16384; and what a client needs to follow an ASK. Pure. */
#ifndef GRACEFULD_REDIS_SLOT_H
#define GRACEFULD_REDIS_SLOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REDIS_SLOTS 16384

uint16_t redis_key_slot(const char *key, size_t len);

/* An ASK error reply ("ASK <slot> <ip>:<port>", len bytes, without the
 * leading '-', as hiredis gives it): true with the node's address (an IPv4
 * or IPv6 literal, a name not accepted) in ip (cap bytes) and *port. */
bool redis_slot_parse_ask(const char *msg, size_t len, char *ip, size_t cap,
                          uint16_t *port);

/* Whether cmd (len bytes, Redis protocol) may be sent after ASKING to a
 * node importing the slot: a script (EVAL, EVALSHA, FCALL) of two keys or
 * more, which that node runs only if it holds every key, else answers
 * TRYAGAIN. A single key would be made there while it may still be on the
 * node migrating the slot: not sent after ASKING, nor is anything else. */
bool redis_slot_asking_safe(const char *cmd, size_t len);

#endif
