/*
 * log — JSON lines on stderr. Each line: {"ts":…,"level":…,"msg":…, fields…}.
 * Strings are escaped here, once, so no caller can break the framing with a
 * quote or a newline coming from a script, the database or the upstream.
 */
#include "log.h"
#include "util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static enum log_level min_level = LOG_INFO;
static const char *level_names[] = { "debug", "info", "warn", "error" };

void
log_set_level(enum log_level level)
{
	min_level = level;
}

/* Appends s as a JSON string (with quotes) to the line buffer. */
static void
put_str(char *buf, size_t cap, size_t *n, const char *s)
{
#define PUT(c) do { if (*n + 1 < cap) buf[(*n)++] = (c); } while (0)
	PUT('"');
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		switch (*p) {
		case '"': PUT('\\'); PUT('"'); break;
		case '\\': PUT('\\'); PUT('\\'); break;
		case '\n': PUT('\\'); PUT('n'); break;
		case '\r': PUT('\\'); PUT('r'); break;
		case '\t': PUT('\\'); PUT('t'); break;
		default:
			if (*p < 0x20) {
				if (*n + 7 < cap)
					*n += (size_t)snprintf(buf + *n, cap - *n, "\\u%04x", *p);
			} else {
				PUT((char)*p);
			}
		}
	}
	PUT('"');
#undef PUT
}

static void
put_raw(char *buf, size_t cap, size_t *n, const char *fmt, ...)
{
	if (*n >= cap - 1)
		return;
	va_list ap;
	va_start(ap, fmt);
	int w = vsnprintf(buf + *n, cap - *n, fmt, ap);
	va_end(ap);
	if (w > 0)
		*n = (*n + (size_t)w < cap) ? *n + (size_t)w : cap - 1;
}

static void
emit(enum log_level level, const char *msg, va_list ap)
{
	char buf[8192];
	size_t n = 0, cap = sizeof buf - 2;
	char ts[40];
	util_iso8601(util_wall_ms(), ts, sizeof ts);
	put_raw(buf, cap, &n, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts, level_names[level]);
	put_str(buf, cap, &n, msg);
	for (;;) {
		struct log_kv kv = va_arg(ap, struct log_kv);
		if (kv.kind == LOGV_END)
			break;
		put_raw(buf, cap, &n, ",");
		put_str(buf, cap, &n, kv.key);
		put_raw(buf, cap, &n, ":");
		switch (kv.kind) {
		case LOGV_STR:
			if (kv.s)
				put_str(buf, cap, &n, kv.s);
			else
				put_raw(buf, cap, &n, "null");
			break;
		case LOGV_INT:
			put_raw(buf, cap, &n, "%lld", (long long)kv.i);
			break;
		case LOGV_NUM:
			if (isfinite(kv.d))
				put_raw(buf, cap, &n, "%.6g", kv.d);
			else
				put_raw(buf, cap, &n, "null");
			break;
		case LOGV_END:
			break;
		}
	}
	buf[n++] = '}';
	buf[n++] = '\n';
	fwrite(buf, 1, n, stderr);
}

void
log_event(enum log_level level, const char *msg, ...)
{
	if (level < min_level)
		return;
	va_list ap;
	va_start(ap, msg);
	emit(level, msg, ap);
	va_end(ap);
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
	if (level < min_level)
		return;
	char text[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	log_event(level, text, LOG_END);
}
