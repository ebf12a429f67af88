/*
 * util — small helpers every subsystem uses: clocks, checked allocation,
 * string building. No state of its own.
 */
#ifndef RAPPORT_UTIL_H
#define RAPPORT_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Monotonic time, for durations and deadlines. */
double util_now_ms(void);
/* Wall-clock milliseconds since the epoch, for generated_at and ages. */
int64_t util_wall_ms(void);
/* ISO-8601 UTC with milliseconds ("2026-11-25T21:00:00.123Z") into buf (>= 32). */
void util_iso8601(int64_t wall_ms, char *buf, size_t len);

/* Allocation that aborts on exhaustion: rapport cannot serve without memory,
 * and checking every small allocation would hide the real error paths. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* 64-bit FNV-1a, chainable: pass the previous hash as seed (start with
 * UTIL_FNV_SEED). Used for script versions and ETags, not for security. */
#define UTIL_FNV_SEED 0xcbf29ce484222325ULL
uint64_t util_fnv1a(uint64_t seed, const void *data, size_t len);

/* Drops an incomplete UTF-8 sequence from the end of s (what a byte-count
 * truncation such as snprintf's can leave), so the text stays valid. */
void util_utf8_trim(char *s);

/* Parse a decimal int64 that must fill the whole string; false otherwise. */
bool util_parse_i64(const char *s, int64_t *out);

/* An analysis type's name as URLs, stream tokens, the admin socket and the
 * instances' events carry it: [a-z0-9_]{1,64}. Checked wherever a name comes
 * in, so one with a space or a "*" never means another type, or all. */
bool util_type_name_ok(const char *name);

/* The event loop every command runs on: with precise timers (timerfd
 * rather than the coarse clock), so a retry-after or a deadline is never
 * cut short by a few milliseconds. NULL on failure. */
struct event_base *util_event_base(void);

/* Read a whole file; NULL with errno set on failure. *len gets the size. */
char *util_read_file(const char *path, size_t *len);

#endif
