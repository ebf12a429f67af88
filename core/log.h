/*
 * log — one line of JSON per event on stderr, so logs are machine-readable
 * (jq, Loki); on a terminal (or RAPPORT_LOG_FORMAT=text) a short text line
 * instead, for a person. Owns nothing but the level and the format. Fields
 * passed as NULL (LOG_S) or -1 (LOG_I, LOG_N) do not apply and are left out.
 *
 * log_event() takes key/value pairs built with the LOG_* macros so callers
 * never format JSON by hand and values are always escaped.
 */
#ifndef RAPPORT_LOG_H
#define RAPPORT_LOG_H

#include <stdint.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

enum log_kind { LOGV_STR, LOGV_INT, LOGV_NUM, LOGV_END };
struct log_kv {
	enum log_kind kind;
	const char *key;
	const char *s;
	int64_t i;
	double d;
};
#define LOG_S(k, v) ((struct log_kv){ LOGV_STR, (k), (v), 0, 0 })
#define LOG_I(k, v) ((struct log_kv){ LOGV_INT, (k), NULL, (int64_t)(v), 0 })
#define LOG_N(k, v) ((struct log_kv){ LOGV_NUM, (k), NULL, 0, (double)(v) })
#define LOG_END     ((struct log_kv){ LOGV_END, NULL, NULL, 0, 0 })

void log_set_level(enum log_level level);
/* log_event(LOG_INFO, "request", LOG_S("type", t), LOG_I("contact", id), LOG_END) */
void log_event(enum log_level level, const char *msg, ...);
/* printf-style message with no extra fields */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
