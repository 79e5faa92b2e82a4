#include "redis/redis_secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const char *redis_secret_read(const char *path, char *out, size_t cap) {
  static char buf[128];
  const char *why;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(buf, sizeof buf, "cannot open: %s", strerror(errno));
    memset(out, 0, cap);
    return buf;
  }
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, out + len, cap - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      snprintf(buf, sizeof buf, "cannot read: %s", strerror(errno));
      why = buf;
      goto fail;
    }
    if (n == 0)
      break;
    len += (size_t)n;
    if (len == cap) {
      snprintf(buf, sizeof buf, "longer than %zu bytes", cap - 1);
      why = buf;
      goto fail;
    }
  }
  close(fd);
  if (len > 0 && out[len - 1] == '\n')
    len--;
  if (len > 0 && out[len - 1] == '\r')
    len--;
  out[len] = '\0';
  if (len == 0)
    return "the file is empty";
  if (memchr(out, '\0', len) || memchr(out, '\n', len)) {
    memset(out, 0, cap);
    return "the password holds a NUL byte or a newline";
  }
  return NULL;

fail:
  close(fd);
  memset(out, 0, cap); /* no part of a secret left behind */
  return why;
}
