/*
 * log — JSON lines on stderr. Each line: {"ts":…,"level":…,"msg":…, fields…}.
 * Strings are escaped here, once, so no caller can break the framing with a
 * quote or a newline coming from a script, the database or the upstream;
 * bytes that are not UTF-8 become \ufffd, so the line is JSON whatever a
 * client put in a path. A line has a fixed maximum: long values are cut
 * and the line is still closed (see struct line).
 */
#include "log.h"
#include "fmt.h"
#include "util.h"

#include <math.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
static const char *level_names[] = { "debug", "info", "warn", "error" };

void
log_set_level(enum log_level level)
{
	min_level = level;
}

/* One line is at most LOG_LINE_MAX bytes and always closed: a string value
 * longer than LOG_VALUE_MAX is cut (ending in "…"), fields that no longer
 * fit are left out, and either way the line says "truncated":true. The
 * tail reserve keeps room for that, the closing brace and the newline. */
#define LOG_LINE_MAX 8192
#define LOG_VALUE_MAX 2048
#define LOG_TAIL_RESERVE 24          /* ,"truncated":true}\n */
#define LOG_CONTENT_MAX (LOG_LINE_MAX - LOG_TAIL_RESERVE)

struct line {
	char buf[LOG_LINE_MAX];
	size_t n;
	bool full;                   /* no more fields fit */
	bool cut;                    /* something was cut or left out */
};

/* Length of the well-formed UTF-8 sequence at p (1-4), or 0 when the bytes
 * there are not one (stray continuation, overlong form, surrogate, past
 * U+10FFFF, cut short). The NUL terminator is never a continuation byte,
 * so this never reads past the string. */
static size_t
utf8_seq(const unsigned char *p)
{
	unsigned c = p[0];
	if (c < 0x80)
		return 1;
	size_t len;
	unsigned min, cp;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2, min = 0x80, cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3, min = 0x800, cp = c & 0x0f;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4, min = 0x10000, cp = c & 0x07;
	else
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* The JSON form of the character at *p: an escape, the character itself,
 * or \ufffd for a byte that is not UTF-8. Advances *p. */
static size_t
json_piece(const unsigned char **p, char out[8])
{
	unsigned char c = **p;
	switch (c) {
	case '"': (*p)++; memcpy(out, "\\\"", 2); return 2;
	case '\\': (*p)++; memcpy(out, "\\\\", 2); return 2;
	case '\n': (*p)++; memcpy(out, "\\n", 2); return 2;
	case '\r': (*p)++; memcpy(out, "\\r", 2); return 2;
	case '\t': (*p)++; memcpy(out, "\\t", 2); return 2;
	default: break;
	}
	if (c < 0x20 || c == 0x7f) {
		(*p)++;
		snprintf(out, 8, "\\u%04x", c);
		return 6;
	}
	size_t len = utf8_seq(*p);
	if (len == 0) {
		(*p)++;
		memcpy(out, "\\ufffd", 6);
		return 6;
	}
	memcpy(out, *p, len);
	*p += len;
	return len;
}

/* Appends s as a JSON string of at most limit bytes between its quotes;
 * false (and the line full) when not even a cut form fits. */
static bool
put_str(struct line *l, const char *s, size_t limit)
{
	static const char ellipsis[] = "\\u2026";
	const size_t ell = sizeof ellipsis - 1;
	if (l->n + 2 + ell > LOG_CONTENT_MAX) {
		l->full = l->cut = true;
		return false;
	}
	size_t room = LOG_CONTENT_MAX - l->n - 2;
	if (room > limit)
		room = limit;
	l->buf[l->n++] = '"';
	size_t used = 0;
	const unsigned char *p = (const unsigned char *)(s ? s : "");
	while (*p) {
		/* A run of printable ASCII that needs no escape is copied at
		 * once (paths, ids, names: nearly every byte logged) when it
		 * fits with the ellipsis' room still spare, which is what the
		 * byte-by-byte test below would have found for each byte. */
		size_t run = 0;
		while (p[run] >= 0x20 && p[run] < 0x7f && p[run] != '"' && p[run] != '\\')
			run++;
		if (run && used + run + ell <= room) {
			memcpy(l->buf + l->n, p, run);
			l->n += run;
			used += run;
			p += run;
			continue;
		}
		char piece[8];
		const unsigned char *next = p;
		size_t k = json_piece(&next, piece);
		/* Keep room for the ellipsis unless this is the last piece. */
		size_t need = used + k + (*next ? ell : 0);
		if (need > room) {
			memcpy(l->buf + l->n, ellipsis, ell);
			l->n += ell;
			l->cut = true;
			if (room < limit)
				l->full = true;
			break;
		}
		memcpy(l->buf + l->n, piece, k);
		l->n += k;
		used += k;
		p = next;
	}
	l->buf[l->n++] = '"';
	return true;
}

static void
put_raw(struct line *l, const char *text)
{
	size_t k = strlen(text);
	if (l->n + k > LOG_CONTENT_MAX) {
		l->full = l->cut = true;
		return;
	}
	memcpy(l->buf + l->n, text, k);
	l->n += k;
}

/* ,"key":<value> — all of it or none of it. */
static void
put_field(struct line *l, const struct log_kv *kv)
{
	char num[64];
	const char *raw = NULL;
	switch (kv->kind) {
	case LOGV_STR:
		raw = kv->s ? NULL : "null";
		break;
	case LOGV_INT:   /* fmt: printf's text without printf (see fmt.h) */
		num[fmt_i64(num, kv->i)] = '\0';
		raw = num;
		break;
	case LOGV_NUM:
		if (isfinite(kv->d))
			num[fmt_g6(num, kv->d)] = '\0';
		else
			snprintf(num, sizeof num, "null");
		raw = num;
		break;
	case LOGV_END:
		return;
	}
	/* The key, its quotes, the comma and colon, and the shortest value
	 * (a number, null, or a cut string) must fit, or the field is left out. */
	size_t klen = strlen(kv->key ? kv->key : "");
	size_t min_value = raw ? strlen(raw) : 8;
	if (l->full || l->n + klen + 4 + min_value > LOG_CONTENT_MAX || klen > 64) {
		l->full = l->cut = true;
		return;
	}
	size_t mark = l->n;
	put_raw(l, ",");
	if (!put_str(l, kv->key, 64)) {
		l->n = mark;
		return;
	}
	put_raw(l, ":");
	if (raw)
		put_raw(l, raw);
	else if (!put_str(l, kv->s, LOG_VALUE_MAX))
		l->n = mark;
	if (l->n > mark && l->buf[l->n - 1] == ':')
		l->n = mark;          /* the value did not fit after all */
}

/* {"ts":"<ISO 8601, ms>","level":"<level>","msg": — the date part kept
 * from the last line of the same second (util_iso8601's strftime was the
 * line's dearest part after the values). */
static void
json_head(char out[96], enum log_level level)
{
	static int64_t cached_sec = -1;
	static char cached[32];          /* YYYY-MM-DDTHH:MM:SS */
	static size_t cached_len;
	int64_t wall = util_wall_ms();
	int64_t sec = wall / 1000;
	if (sec != cached_sec) {
		time_t t = (time_t)sec;
		struct tm tm;
		gmtime_r(&t, &tm);
		cached_len = strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
		cached_sec = sec;
	}
	size_t n = 0;
	memcpy(out, "{\"ts\":\"", 7);
	n = 7;
	memcpy(out + n, cached, cached_len);
	n += cached_len;
	int ms = (int)(wall % 1000);
	out[n++] = '.';
	out[n++] = (char)('0' + ms / 100);
	out[n++] = (char)('0' + ms / 10 % 10);
	out[n++] = (char)('0' + ms % 10);
	const char *lv = level_names[level];
	size_t lvn = strlen(lv);
	memcpy(out + n, "Z\",\"level\":\"", 12);
	n += 12;
	memcpy(out + n, lv, lvn);
	n += lvn;
	memcpy(out + n, "\",\"msg\":", 8);
	n += 8;
	out[n] = '\0';
}

/* Fields that do not apply are left out rather than written as -1 or
 * null: callers pass NULL (LOG_S) or -1 (LOG_I, LOG_N: "not known") for
 * them. */
static bool
field_applies(const struct log_kv *kv)
{
	switch (kv->kind) {
	case LOGV_STR: return kv->s != NULL;
	case LOGV_INT: return kv->i != -1;
	case LOGV_NUM: return kv->d != -1;
	case LOGV_END: return false;
	}
	return true;
}

static void
emit(enum log_level level, const char *msg, va_list ap)
{
	struct line l;
	l.n = 0;
	l.full = l.cut = false;
	char head[96];
	json_head(head, level);
	put_raw(&l, head);
	put_str(&l, msg, LOG_VALUE_MAX);
	for (;;) {
		struct log_kv kv = va_arg(ap, struct log_kv);
		if (kv.kind == LOGV_END)
			break;
		if (field_applies(&kv))
			put_field(&l, &kv);
	}
	/* The reserve always holds this tail. */
	if (l.cut) {
		memcpy(l.buf + l.n, ",\"truncated\":true", 17);
		l.n += 17;
	}
	l.buf[l.n++] = '}';
	l.buf[l.n++] = '\n';
	fwrite(l.buf, 1, l.n, stderr);
}

/* ---- the text form, for a person at a terminal ----------------------------
 * "08:31:31.479 INFO  request method=GET path=/v1/… status=200 total_ms=86.4"
 * One line per event as well: control bytes are escaped, a value with a
 * space or a quote is quoted, and values are cut shorter than in JSON (the
 * JSON form is the one for keeping). Bytes that are not UTF-8 pass as "?". */
#define LOG_TEXT_VALUE_MAX 400

static void
text_put(FILE *f, const char *v, bool quote_if_needed)
{
	const unsigned char *p = (const unsigned char *)(v ? v : "");
	bool quote = quote_if_needed && (!*p || strpbrk((const char *)p, " \"=") != NULL);
	if (quote)
		fputc('"', f);
	size_t used = 0;
	while (*p) {
		if (used >= LOG_TEXT_VALUE_MAX) {
			fputs("…", f);
			break;
		}
		size_t len = utf8_seq(p);
		if (*p == '\n') {
			fputs("\\n", f), p++, used += 2;
		} else if (*p == '"' && quote) {
			fputs("\\\"", f), p++, used += 2;
		} else if (*p == '\t') {
			fputc(' ', f), p++, used++;
		} else if (*p < 0x20 || *p == 0x7f) {
			fprintf(f, "\\x%02x", *p), p++, used += 4;
		} else if (len == 0) {
			fputc('?', f), p++, used++;
		} else {
			fwrite(p, 1, len, f), p += len, used += len;
		}
	}
	if (quote)
		fputc('"', f);
}

static void
emit_text(enum log_level level, const char *msg, va_list ap, bool color)
{
	static const char *names[] = { "DEBUG", "INFO ", "WARN ", "ERROR" };
	static const char *colors[] = { "\033[2m", "", "\033[33m", "\033[31;1m" };
	char ts[40];
	util_iso8601(util_wall_ms(), ts, sizeof ts);
	/* The time of day is enough on a terminal: "2026-…T08:31:31.479Z". */
	const char *t = strchr(ts, 'T');
	char tod[16];
	snprintf(tod, sizeof tod, "%.12s", t ? t + 1 : ts);
	FILE *f = stderr;
	flockfile(f);
	fprintf(f, "%s %s%s%s ", tod, color ? colors[level] : "", names[level],
	        color && *colors[level] ? "\033[0m" : "");
	text_put(f, msg, false);
	for (;;) {
		struct log_kv kv = va_arg(ap, struct log_kv);
		if (kv.kind == LOGV_END)
			break;
		if (!field_applies(&kv))
			continue;
		fputc(' ', f);
		text_put(f, kv.key, false);
		fputc('=', f);
		char num[64];
		switch (kv.kind) {
		case LOGV_STR:
			text_put(f, kv.s, true);
			break;
		case LOGV_INT:
			fprintf(f, "%lld", (long long)kv.i);
			break;
		case LOGV_NUM:
			snprintf(num, sizeof num, "%.4g", kv.d);
			fputs(num, f);
			break;
		case LOGV_END:
			break;
		}
	}
	fputc('\n', f);
	funlockfile(f);
}

/* JSON, or text: RAPPORT_LOG_FORMAT=json|text, else text on a terminal and
 * JSON otherwise (a file, journald, a pipe to jq). Decided at the first
 * line. */
enum log_format { LOGF_UNSET, LOGF_JSON, LOGF_TEXT };
static enum log_format format;
static bool text_color;

static enum log_format
log_format(void)
{
	if (format != LOGF_UNSET)
		return format;
	const char *v = getenv("RAPPORT_LOG_FORMAT");
	bool tty = isatty(STDERR_FILENO) == 1;
	if (v && strcmp(v, "text") == 0)
		format = LOGF_TEXT;
	else if (v && strcmp(v, "json") == 0)
		format = LOGF_JSON;
	else
		format = tty ? LOGF_TEXT : LOGF_JSON;
	const char *term = getenv("TERM");
	text_color = format == LOGF_TEXT && tty && !getenv("NO_COLOR") && !(term && strcmp(term, "dumb") == 0);
	return format;
}

void
log_event(enum log_level level, const char *msg, ...)
{
	if (level < min_level)
		return;
	va_list ap;
	va_start(ap, msg);
	if (log_format() == LOGF_TEXT)
		emit_text(level, msg, ap, text_color);
	else
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
