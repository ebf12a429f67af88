/*
 * ratelimit — token buckets by client key, for the forced regenerations
 * (?refresh=1, Cache-Control: no-cache) that cost an upstream call each.
 *
 * Each key has a bucket of `burst` tokens refilled at `per_min` a minute;
 * a take spends one or says when the next one is due. Owns its entries
 * (at most max_keys: a bucket that has refilled holds no state and is
 * dropped first, then the one idle longest), freed by ratelimit_destroy().
 * Time comes from the caller, so tests drive it.
 */
#ifndef RAPPORT_RATELIMIT_H
#define RAPPORT_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ratelimit ratelimit;

/* per_min <= 0: no limit (every take succeeds). */
ratelimit *ratelimit_create(double per_min, double burst, size_t max_keys);
void ratelimit_destroy(ratelimit *r);
/* Spends a token of key's bucket at now_ms: true if there was one; false
 * with *retry_after_s (>= 1) the seconds until there is. */
bool ratelimit_take(ratelimit *r, const char *key, double now_ms, int *retry_after_s);
/* Keys currently held (for tests and metrics). */
size_t ratelimit_keys(const ratelimit *r);

#endif
