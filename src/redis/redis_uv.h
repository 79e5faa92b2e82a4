/* hiredis on a libuv loop: the adapter that plugs a redisAsyncContext's
 * event hooks (ac->ev: addRead, delRead, addWrite, delWrite, cleanup) into
 * a uv_poll_t, and nothing else. What is sent, the handshake and the
 * reconnects are the link's (redis_link.h).
 *
 * hiredis's bundled libuv adapter drops poll errors, so a refused connect is
 * never reported. This one passes an error on to hiredis as the event it
 * waits for, letting it find the error on the socket itself. */
#ifndef GRACEFULD_REDIS_UV_H
#define GRACEFULD_REDIS_UV_H

#include <hiredis/async.h>
#include <uv.h>

/* Watches ac's socket on loop from now on. The poll handle belongs to ac:
 * it lives as long as the context, is closed by hiredis's cleanup hook when
 * the context is freed, and frees itself in its close callback, so the
 * caller never closes it. Returns 0, or UV_ENOMEM or uv_poll_init_socket's
 * error, with ac untouched (the caller still owns and frees it). */
int redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
