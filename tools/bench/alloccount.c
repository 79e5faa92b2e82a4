/* alloccount: an LD_PRELOAD shim that counts heap calls by who made them.
 *
 *   ALLOCCOUNT_OUT=/tmp/counts.json LD_PRELOAD=./alloccount.so gracefuld
 *
 * Counts malloc, calloc, realloc (and posix_memalign, aligned_alloc) and
 * free, each by the object its caller lives in: the main executable
 * (gracefuld's own code), libhiredis, libuv, libc, or anything else. The
 * caller is the return address of the call, matched against the objects'
 * address ranges read once at load. At exit the counts are written to
 * ALLOCCOUNT_OUT (or stderr) as one JSON object.
 *
 * The real functions are glibc's __libc_* entry points, so no dlsym (which
 * itself allocates) is needed. */
#define _GNU_SOURCE
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

enum region { R_EXE, R_HIREDIS, R_UV, R_LIBC, R_OTHER, R_COUNT };
static const char *const region_names[R_COUNT] = {"gracefuld", "hiredis",
                                                  "libuv", "libc", "other"};
enum op { OP_MALLOC, OP_CALLOC, OP_REALLOC, OP_MEMALIGN, OP_FREE, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"malloc", "calloc", "realloc",
                                               "memalign", "free"};

struct range {
  uintptr_t lo, hi;
  enum region region;
};
static struct range ranges[64];
static int nranges;
static unsigned long long counts[R_COUNT][OP_COUNT];
static unsigned long long bytes[R_COUNT];

static enum region region_of_name(const char *name, int first) {
  if (first || !name || !*name)
    return R_EXE;
  if (strstr(name, "libhiredis"))
    return R_HIREDIS;
  if (strstr(name, "libuv"))
    return R_UV;
  if (strstr(name, "/libc.so") || strstr(name, "/libc-"))
    return R_LIBC;
  return R_OTHER;
}

static int on_object(struct dl_phdr_info *info, size_t size, void *data) {
  int *index = data;
  (void)size;
  enum region r = region_of_name(info->dlpi_name, *index == 0);
  (*index)++;
  for (int i = 0; i < info->dlpi_phnum && nranges < 64; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
      continue;
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    ranges[nranges++] = (struct range){lo, lo + ph->p_memsz, r};
  }
  return 0;
}

static int ready;

static enum region who(const void *ret) {
  uintptr_t a = (uintptr_t)ret;
  for (int i = 0; i < nranges; i++) {
    if (a >= ranges[i].lo && a < ranges[i].hi)
      return ranges[i].region;
  }
  return R_OTHER;
}

#define COUNT(op, n)                                                           \
  do {                                                                         \
    if (ready) {                                                               \
      enum region r_ = who(__builtin_return_address(0));                       \
      counts[r_][op]++;                                                        \
      bytes[r_] += (n);                                                        \
    }                                                                          \
  } while (0)

void *malloc(size_t n) {
  COUNT(OP_MALLOC, n);
  return __libc_malloc(n);
}

void *calloc(size_t k, size_t n) {
  COUNT(OP_CALLOC, k * n);
  return __libc_calloc(k, n);
}

void *realloc(void *p, size_t n) {
  COUNT(OP_REALLOC, n);
  return __libc_realloc(p, n);
}

int posix_memalign(void **out, size_t align, size_t n) {
  COUNT(OP_MEMALIGN, n);
  void *p = __libc_memalign(align, n);
  if (!p)
    return 12; /* ENOMEM */
  *out = p;
  return 0;
}

void *aligned_alloc(size_t align, size_t n) {
  COUNT(OP_MEMALIGN, n);
  return __libc_memalign(align, n);
}

void free(void *p) {
  if (p)
    COUNT(OP_FREE, 0);
  __libc_free(p);
}

static void report(void) {
  ready = 0;
  char buf[4096];
  int len = snprintf(buf, sizeof buf, "{");
  for (int r = 0; r < R_COUNT; r++) {
    len += snprintf(buf + len, sizeof buf - (size_t)len, "%s\"%s\": {",
                    r ? ", " : "", region_names[r]);
    for (int o = 0; o < OP_COUNT; o++)
      len += snprintf(buf + len, sizeof buf - (size_t)len, "\"%s\": %llu, ",
                      op_names[o], counts[r][o]);
    len += snprintf(buf + len, sizeof buf - (size_t)len, "\"bytes\": %llu}",
                    bytes[r]);
  }
  len += snprintf(buf + len, sizeof buf - (size_t)len, "}\n");
  const char *path = getenv("ALLOCCOUNT_OUT");
  FILE *f = path ? fopen(path, "w") : NULL;
  if (f) {
    fwrite(buf, 1, (size_t)len, f);
    fclose(f);
  } else {
    ssize_t w = write(2, buf, (size_t)len);
    (void)w;
  }
}

__attribute__((constructor)) static void setup(void) {
  int index = 0;
  dl_iterate_phdr(on_object, &index);
  atexit(report);
  ready = 1;
}
