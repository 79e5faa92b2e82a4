#include "redis/redis_uv.h"

#include <stdbool.h>
#include <stdlib.h>

#include "base.h"
#include "log.h"

/* One per context, from redis_uv_attach until the close callback of its
 * handle, which runs after hiredis's cleanup hook. */
struct redis_poll {
  uv_poll_t handle;
  redisAsyncContext *ac;
  int events;
  bool closed; /* cleanup ran: the context is gone */
};

static void on_poll(uv_poll_t *handle, int status, int events);

/* Watches for (what it watched | add) & ~del; hiredis asks for each event
 * in turn, through the four hooks below. */
static void poll_update(struct redis_poll *p, int add, int del) {
  int events = (p->events | add) & ~del;
  if (p->closed || events == p->events)
    return;
  p->events = events;
  if (events)
    uv_poll_start(&p->handle, events, on_poll);
  else
    uv_poll_stop(&p->handle);
}

static void ev_add_read(void *data) { poll_update(data, UV_READABLE, 0); }
static void ev_del_read(void *data) { poll_update(data, 0, UV_READABLE); }
static void ev_add_write(void *data) { poll_update(data, UV_WRITABLE, 0); }
static void ev_del_write(void *data) { poll_update(data, 0, UV_WRITABLE); }

static void on_poll_close(uv_handle_t *handle) {
  free(container_of(handle, struct redis_poll, handle));
}

static void ev_cleanup(void *data) {
  struct redis_poll *p = data;
  if (p->closed)
    return;
  p->closed = true;
  p->ac->ev.data = NULL;
  uv_close((uv_handle_t *)&p->handle, on_poll_close);
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  struct redis_poll *p = container_of(handle, struct redis_poll, handle);
  redisAsyncContext *ac = p->ac;

  if (status < 0) {
    /* libuv has stopped watching. The error is on the socket: let hiredis
     * read it, through the event it is waiting for. */
    p->events = 0;
    if (!(ac->c.flags & REDIS_CONNECTED))
      redisAsyncHandleWrite(ac);
    else
      redisAsyncHandleRead(ac);
    if (!p->closed) {
      /* hiredis found nothing wrong; never leave a context unwatched. */
      log_debug("redis_poll", LOG_STR("status", uv_err_name(status)));
      redisAsyncFree(ac);
    }
    return;
  }
  if (events & UV_READABLE)
    redisAsyncHandleRead(ac);
  if (!p->closed && (events & UV_WRITABLE))
    redisAsyncHandleWrite(ac);
}

int redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  struct redis_poll *p = calloc(1, sizeof *p);
  if (!p)
    return UV_ENOMEM;
  int rc = uv_poll_init_socket(loop, &p->handle, ac->c.fd);
  if (rc)
    goto fail;
  p->ac = ac;
  ac->ev.data = p;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  return 0;

fail:
  free(p); /* the handle was never initialised: nothing to close */
  return rc;
}
