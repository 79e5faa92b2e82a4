/* gracefuld: configuration, construction, the loop, the exit status. */
#include <stdio.h>

#include <uv.h>

#include "app.h"
#include "config.h"
#include "log.h"

extern char **environ;

static void print_handle(uv_handle_t *handle, void *arg) {
  (void)arg;
  log_error("open_handle",
            LOG_STR("type", uv_handle_type_name(uv_handle_get_type(handle))),
            LOG_BOOL("closing", uv_is_closing(handle) != 0));
}

static int start_failed(const char *part, int rc) {
  log_error("start_failed", LOG_STR("part", part),
            LOG_STR("error", uv_strerror(rc)));
  return 1;
}

int main(int argc, char **argv) {
  struct config cfg;
  char err[512];
  switch (config_parse(&cfg, argc, argv, environ, stdout, err, sizeof err)) {
  case CONFIG_EXIT:
    return 0;
  case CONFIG_ERROR:
    fprintf(stderr, "gracefuld: %s\n", err);
    return 2;
  case CONFIG_OK:
    break;
  }
  log_setup(cfg.log_format, cfg.log_level);

  uv_loop_t loop;
  struct app app;
  int rc = uv_loop_init(&loop);
  if (rc)
    return start_failed("event loop", rc);
  const char *part;
  rc = app_init(&app, &loop, &cfg, &part);
  if (rc) {
    uv_run(&loop, UV_RUN_DEFAULT); /* what was built finishes closing */
    uv_loop_close(&loop);
    return start_failed(part, rc);
  }
  int code = app_run(&app);
  /* Every handle was closed before uv_run returned; prove it. */
  if (uv_loop_close(&loop) != 0) {
    uv_walk(&loop, print_handle, NULL);
    return 1;
  }
  return code;
}
