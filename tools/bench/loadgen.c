/* loadgen: the benchmark's HTTP/1.1 client, for what wrk cannot do.
 *
 *   loadgen --port P [--host 127.0.0.1] [--path /incr] [--conns C]
 *           (--count N | --rate R --duration S [--skip S])
 *           [--wait-go] [--max-seconds S]
 *
 * Closed loop (--count N): every connection keeps one request outstanding
 * and sends the next as soon as the answer is in, until N answers came. The
 * count is exact, which wrk's duration-bound runs are not.
 *
 * Open loop (--rate R --duration S): request i is due at t0 + i/R and goes
 * out on an idle connection as soon as it is due; when every connection is
 * busy it waits, and its latency still counts from its due time (as wrk2
 * does, so a server that stalls cannot hide the stall by slowing the
 * client down). Requests due in the first --skip seconds are not counted.
 *
 * --wait-go: connect, send one request per connection and read its answer,
 * print "ready <C>" and wait for a line on standard input before the run:
 * the caller measures the server in between, connections already open.
 *
 * Prints one JSON object: ok (2xx answers counted), non2xx, errors,
 * elapsed_s, rate, and latency percentiles in microseconds. Keep-alive
 * only, no pipelining; a connection the server closes is reopened and
 * counted as an error. Exits 0 when every answer was a 2xx. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

struct conn {
  int fd;
  bool busy;
  uint64_t due; /* ns: when its outstanding request was due (or sent) */
  bool counted; /* the outstanding request counts toward the statistics */
  size_t len;
  char buf[8192];
};

static struct sockaddr_in addr;
static char request[512];
static size_t request_len;
static struct conn *conns;
static int nconns = 50;
static int ep;
static int *idle;
static int nidle;
static uint64_t *lat; /* ns */
static size_t nlat, cap_lat;
static uint64_t ok, non2xx, errors, done_total;
static bool warming; /* the --wait-go requests: not counted */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
  exit(2);
}

static void conn_open(int i) {
  struct conn *c = &conns[i];
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0)
    die("socket");
  if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0)
    die("connect");
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
    die("epoll_ctl");
  c->busy = false;
  c->len = 0;
}

static void conn_reopen(int i) {
  close(conns[i].fd);
  conn_open(i);
}

static void send_on(int i, uint64_t due, bool counted) {
  struct conn *c = &conns[i];
  ssize_t n = write(c->fd, request, request_len);
  c->busy = true;
  c->due = due;
  c->counted = counted;
  if (n != (ssize_t)request_len) {
    /* 40 bytes into an empty socket buffer: anything else is an error, and
     * the request is done with. */
    errors++;
    conn_reopen(i);
    if (!warming)
      done_total++;
    idle[nidle++] = i;
  }
}

/* One complete response in c->buf? Returns its length and status, or 0. */
static size_t parse(struct conn *c, int *status) {
  c->buf[c->len] = '\0';
  char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
  if (!end)
    return 0;
  size_t head = (size_t)(end - c->buf) + 4;
  *status = (c->len > 12) ? atoi(c->buf + 9) : 0;
  size_t body = 0;
  for (char *p = c->buf; p && p < end; p = strstr(p, "\r\n")) {
    p += 2;
    if (strncasecmp(p, "content-length:", 15) == 0) {
      body = (size_t)strtoul(p + 15, NULL, 10);
      break;
    }
  }
  return c->len >= head + body ? head + body : 0;
}

/* Reads from connection i; returns true when a response completed. */
static bool on_readable(int i, uint64_t *completed_due, bool *counted) {
  struct conn *c = &conns[i];
  ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
  if (n <= 0) {
    if (n < 0 && errno == EAGAIN)
      return false;
    /* Closed by the server, with or without an answer. */
    errors++;
    bool was_busy = c->busy;
    *completed_due = c->due;
    *counted = false;
    conn_reopen(i);
    return was_busy;
  }
  c->len += (size_t)n;
  int status;
  size_t used = parse(c, &status);
  if (!used)
    return false;
  memmove(c->buf, c->buf + used, c->len - used);
  c->len -= used;
  if (status >= 200 && status < 300)
    ok += !warming;
  else
    non2xx++;
  *completed_due = c->due;
  *counted = c->counted;
  c->busy = false;
  return true;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(double p) {
  if (nlat == 0)
    return 0;
  size_t k = (size_t)(p / 100.0 * (double)(nlat - 1) + 0.5);
  return (double)lat[k] / 1000.0;
}

static void record(uint64_t due, uint64_t t) {
  if (nlat < cap_lat)
    lat[nlat++] = t - due;
}

static void usage(void) {
  fprintf(stderr, "usage: loadgen --port P [--host IP] [--path /incr] "
                  "[--conns C] (--count N | --rate R --duration S "
                  "[--skip S]) [--wait-go] [--max-seconds S]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1", *path = "/incr";
  int port = 0;
  uint64_t count = 0;
  double rate = 0, duration = 0, skip = 0, max_seconds = 300;
  bool wait_go = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--wait-go")) {
      wait_go = true;
      continue;
    }
    if (!v)
      usage();
    i++;
    if (!strcmp(a, "--host"))
      host = v;
    else if (!strcmp(a, "--port"))
      port = atoi(v);
    else if (!strcmp(a, "--path"))
      path = v;
    else if (!strcmp(a, "--conns"))
      nconns = atoi(v);
    else if (!strcmp(a, "--count"))
      count = strtoull(v, NULL, 10);
    else if (!strcmp(a, "--rate"))
      rate = atof(v);
    else if (!strcmp(a, "--duration"))
      duration = atof(v);
    else if (!strcmp(a, "--skip"))
      skip = atof(v);
    else if (!strcmp(a, "--max-seconds"))
      max_seconds = atof(v);
    else
      usage();
  }
  bool open_loop = rate > 0;
  if (!port || nconns < 1 || (open_loop ? duration <= 0 : count == 0))
    usage();
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
    usage();
  request_len = (size_t)snprintf(request, sizeof request,
                                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", path,
                                 host, port);

  uint64_t total = open_loop ? (uint64_t)(rate * duration) : count;
  uint64_t skipped = open_loop ? (uint64_t)(rate * skip) : 0;
  if (skipped >= total)
    usage();
  cap_lat = total;
  lat = malloc(cap_lat * sizeof *lat);
  conns = calloc((size_t)nconns, sizeof *conns);
  idle = malloc((size_t)nconns * sizeof *idle);
  ep = epoll_create1(EPOLL_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (!lat || !conns || !idle || ep < 0 || tfd < 0)
    die("setup");
  struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);
  for (int i = 0; i < nconns; i++)
    conn_open(i);

  struct epoll_event evs[256];
  if (wait_go) {
    /* One request per connection, answered, before the caller measures. */
    warming = true;
    for (int i = 0; i < nconns; i++)
      send_on(i, now_ns(), false);
    int pending = nconns;
    while (pending > 0) {
      int n = epoll_wait(ep, evs, 256, 10000);
      if (n <= 0)
        die("warm-up timed out");
      for (int k = 0; k < n; k++) {
        uint64_t due;
        bool counted;
        if (evs[k].data.u32 != UINT32_MAX &&
            on_readable((int)evs[k].data.u32, &due, &counted))
          pending--;
      }
    }
    warming = false;
    nidle = 0;
    non2xx = errors = 0;
    printf("ready %d\n", nconns);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
      return 2;
  }

  for (int i = 0; i < nconns; i++)
    idle[nidle++] = i;
  uint64_t t0 = now_ns();
  uint64_t limit = t0 + (uint64_t)(max_seconds * 1e9);
  uint64_t next = 0; /* index of the next request to send */
  double step = open_loop ? 1e9 / rate : 0;
  uint64_t last_done = t0;
  while (done_total < total) {
    uint64_t now = now_ns();
    if (now > limit) {
      fprintf(stderr, "loadgen: --max-seconds reached\n");
      break;
    }
    /* Send what is due, on idle connections. */
    while (next < total && nidle > 0) {
      uint64_t due = open_loop ? t0 + (uint64_t)((double)next * step) : now;
      if (due > now)
        break;
      send_on(idle[--nidle], due, next >= skipped);
      next++;
    }
    if (open_loop && next < total && nidle > 0) {
      uint64_t due = t0 + (uint64_t)((double)next * step);
      struct itimerspec its = {
          .it_value = {.tv_sec = (time_t)(due / 1000000000u),
                       .tv_nsec = (long)(due % 1000000000u)}};
      timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
    }
    int n = epoll_wait(ep, evs, 256, 1000);
    if (n < 0 && errno != EINTR)
      die("epoll_wait");
    uint64_t t = now_ns();
    for (int k = 0; k < n; k++) {
      if (evs[k].data.u32 == UINT32_MAX) {
        uint64_t exp;
        ssize_t r = read(tfd, &exp, sizeof exp);
        (void)r;
        continue;
      }
      int i = (int)evs[k].data.u32;
      uint64_t due;
      bool counted;
      if (on_readable(i, &due, &counted)) {
        if (counted)
          record(due, t);
        done_total++;
        last_done = t;
        idle[nidle++] = i;
      }
    }
  }
  double elapsed = (double)(last_done - t0) / 1e9;
  uint64_t measured = nlat;
  double sum = 0;
  for (size_t i = 0; i < nlat; i++)
    sum += (double)lat[i] / 1000.0;
  qsort(lat, nlat, sizeof *lat, cmp_u64);
  printf("{\"mode\": \"%s\", \"conns\": %d, \"requests\": %llu, "
         "\"ok\": %llu, \"non2xx\": %llu, \"errors\": %llu, "
         "\"elapsed_s\": %.6f, \"rate\": %.1f, \"measured\": %llu, "
         "\"lat_us\": {\"mean\": %.1f, \"p50\": %.1f, \"p90\": %.1f, "
         "\"p99\": %.1f, \"p99_9\": %.1f, \"p99_99\": %.1f, \"max\": %.1f}}\n",
         open_loop ? "open" : "closed", nconns, (unsigned long long)done_total,
         (unsigned long long)ok, (unsigned long long)non2xx,
         (unsigned long long)errors, elapsed,
         elapsed > 0 ? (double)done_total / elapsed : 0.0,
         (unsigned long long)measured, measured ? sum / (double)measured : 0.0,
         pct(50), pct(90), pct(99), pct(99.9), pct(99.99),
         nlat ? (double)lat[nlat - 1] / 1000.0 : 0.0);
  return (non2xx || errors || done_total < total) ? 1 : 0;
}
