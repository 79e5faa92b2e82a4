#include "incr/incr_queue.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define INITIAL_RUNS 64

static void on_timer(uv_timer_t *timer);

int incr_queue_init(struct incr_queue *q, uv_loop_t *loop,
                    incr_queue_due_cb on_due) {
  memset(q, 0, sizeof *q);
  q->runs = malloc(INITIAL_RUNS * sizeof *q->runs);
  if (!q->runs)
    return UV_ENOMEM;
  q->cap = INITIAL_RUNS;
  q->loop = loop;
  q->on_due = on_due;
  int rc = uv_timer_init(loop, &q->timer);
  if (rc) {
    free(q->runs);
    q->runs = NULL;
    return rc;
  }
  q->timer.data = q;
  return 0;
}

/* The full deadline of the run at index i. */
static uint64_t deadline_of(const struct incr_queue *q, uint64_t i) {
  uint32_t newest = q->runs[(q->head + q->len - 1) & (q->cap - 1)].deadline;
  return q->last - (uint32_t)(newest - q->runs[i].deadline);
}

static void arm(struct incr_queue *q) {
  if (q->len == 0) {
    uv_timer_stop(&q->timer);
    return;
  }
  uint64_t now = uv_now(q->loop);
  uint64_t deadline = deadline_of(q, q->head);
  uv_timer_start(&q->timer, on_timer, deadline > now ? deadline - now : 0, 0);
}

/* Doubles the ring; runs that had wrapped around to the front move to just
 * after the old end, so the sequence from head stays contiguous. */
static int grow(struct incr_queue *q) {
  uint64_t cap = q->cap * 2;
  struct incr_run *runs = realloc(q->runs, cap * sizeof *runs);
  if (!runs)
    return UV_ENOMEM;
  uint64_t wrapped = q->head + q->len - q->cap;
  if (q->head + q->len > q->cap)
    memcpy(runs + q->cap, runs, wrapped * sizeof *runs);
  q->runs = runs;
  q->cap = cap;
  return 0;
}

int incr_queue_push(struct incr_queue *q, uint64_t deadline) {
  if (q->len > 0) {
    struct incr_run *tail = &q->runs[(q->head + q->len - 1) & (q->cap - 1)];
    if (q->last >= deadline && tail->count < UINT32_MAX) {
      /* Same millisecond (or a clock that did not move): join the run. */
      tail->count++;
      q->pending++;
      return 0;
    }
  }
  if (q->len == q->cap && grow(q) != 0)
    return UV_ENOMEM;
  struct incr_run *run = &q->runs[(q->head + q->len) & (q->cap - 1)];
  if (q->len == 0 || deadline > q->last)
    q->last = deadline;
  run->deadline = (uint32_t)q->last;
  run->count = 1;
  q->len++;
  q->pending++;
  if (q->len == 1)
    arm(q);
  return 0;
}

/* Rebuilds the ring with count more increments at an earlier deadline than
 * the newest, in its place: the rare path of incr_queue_add, taken only by
 * increments adopted from another replica. */
static int insert(struct incr_queue *q, uint64_t deadline, uint32_t count) {
  uint64_t cap = q->cap;
  while (cap < q->len + 1)
    cap *= 2;
  struct incr_run *runs = malloc(cap * sizeof *runs);
  if (!runs)
    return UV_ENOMEM;
  uint64_t len = 0;
  bool placed = false;
  for (uint64_t k = 0; k < q->len; k++) {
    uint64_t i = (q->head + k) & (q->cap - 1);
    uint64_t d = deadline_of(q, i);
    if (!placed && d >= deadline) {
      placed = true;
      if (d == deadline && q->runs[i].count <= UINT32_MAX - count) {
        runs[len] = q->runs[i];
        runs[len++].count += count;
        continue;
      }
      runs[len++] = (struct incr_run){(uint32_t)deadline, count};
    }
    runs[len++] = q->runs[i];
  }
  free(q->runs);
  q->runs = runs;
  q->cap = cap;
  q->head = 0;
  q->len = len;
  q->pending += count;
  arm(q);
  return 0;
}

int incr_queue_add(struct incr_queue *q, uint64_t deadline, uint64_t count) {
  while (count > 0) {
    uint32_t part = count > UINT32_MAX ? UINT32_MAX : (uint32_t)count;
    int rc;
    if (q->len > 0 && deadline < q->last) {
      rc = insert(q, deadline, part);
    } else {
      rc = incr_queue_push(q, deadline);
      if (rc == 0) {
        /* push joined or opened the newest run with one; add the rest */
        struct incr_run *tail = &q->runs[(q->head + q->len - 1) & (q->cap - 1)];
        if (tail->count <= UINT32_MAX - (part - 1)) {
          tail->count += part - 1;
          q->pending += part - 1;
        } else {
          part = 1;
        }
      }
    }
    if (rc)
      return rc;
    count -= part;
  }
  return 0;
}

bool incr_queue_pop_run(struct incr_queue *q, uint64_t now, uint64_t *deadline,
                        uint64_t *count) {
  if (q->len == 0 || deadline_of(q, q->head) > now)
    return false;
  *deadline = deadline_of(q, q->head);
  *count = q->runs[q->head].count;
  q->pending -= *count;
  q->head = (q->head + 1) & (q->cap - 1);
  if (--q->len == 0)
    q->head = 0;
  return true;
}

uint64_t incr_queue_pop_due(struct incr_queue *q, uint64_t now) {
  uint64_t n = 0;
  while (q->len > 0 && deadline_of(q, q->head) <= now) {
    n += q->runs[q->head].count;
    q->head = (q->head + 1) & (q->cap - 1);
    q->len--;
  }
  if (q->len == 0)
    q->head = 0;
  q->pending -= n;
  return n;
}

uint64_t incr_queue_next_deadline(const struct incr_queue *q) {
  return q->len ? deadline_of(q, q->head) : UINT64_MAX;
}

uint64_t incr_queue_clear(struct incr_queue *q) {
  uint64_t n = q->pending;
  q->head = q->len = q->pending = 0;
  uv_timer_stop(&q->timer);
  return n;
}

static void on_timer(uv_timer_t *timer) {
  struct incr_queue *q = timer->data;
  q->on_due(q, uv_now(q->loop));
  arm(q);
}

static void on_close(uv_handle_t *handle) {
  struct incr_queue *q = handle->data;
  free(q->runs);
  q->runs = NULL;
  q->cap = q->len = q->head = q->pending = 0;
  if (q->on_close)
    q->on_close(q);
}

void incr_queue_close(struct incr_queue *q, void (*cb)(struct incr_queue *q)) {
  incr_queue_clear(q);
  if (uv_is_closing((uv_handle_t *)&q->timer))
    return;
  q->on_close = cb;
  uv_close((uv_handle_t *)&q->timer, on_close);
}
