/* One line per event on stderr: a JSON object (the default, for log
 * pipelines) or plain text (for people).
 *
 *   log_info("drain", "pending=%zu conns=%u", n, c);
 *
 * The message is a list of key=value pairs; in JSON each pair becomes a field
 * (numbers stay numbers), words that are not pairs are gathered under "msg".
 * A value holding spaces is written in double quotes: reason="a b".
 * The level is checked before anything is formatted. */
#ifndef GRACEFULD_LOG_H
#define GRACEFULD_LOG_H

#include <stdbool.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_FORMAT_JSON, LOG_FORMAT_TEXT };

void log_setup(enum log_format format, enum log_level level);
bool log_enabled(enum log_level level);
void log_write(enum log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Formats one line into buf (without writing it); returns its length. Used by
 * log_write and by the unit tests. */
int log_format_line(char *buf, int cap, enum log_format format,
                    enum log_level level, const char *event, const char *msg);

#define LOG_AT(level, event, ...)                                              \
  do {                                                                         \
    if (log_enabled(level))                                                    \
      log_write(level, event, __VA_ARGS__);                                    \
  } while (0)
#define log_debug(event, ...) LOG_AT(LOG_DEBUG, event, __VA_ARGS__)
#define log_info(event, ...) LOG_AT(LOG_INFO, event, __VA_ARGS__)
#define log_warn(event, ...) LOG_AT(LOG_WARN, event, __VA_ARGS__)
#define log_error(event, ...) LOG_AT(LOG_ERROR, event, __VA_ARGS__)

#endif
