/*
 * ratelimit — a flat array of buckets searched by hash, then by string:
 * takes are rare (only forced regenerations), so a linear pass over a few
 * thousand entries costs less than the upstream call it may save. A bucket
 * is refilled lazily on each take from the time since its last one.
 */
#include "ratelimit.h"
#include "util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct bucket {
	uint64_t hash;
	char *key;
	double tokens;
	double last_ms;
};

struct ratelimit {
	double per_ms;           /* refill rate */
	double burst;
	size_t max_keys;
	size_t n;
	struct bucket *b;
};

ratelimit *
ratelimit_create(double per_min, double burst, size_t max_keys)
{
	ratelimit *r = xcalloc(1, sizeof *r);
	r->per_ms = per_min > 0 ? per_min / 60000.0 : 0;
	r->burst = burst >= 1 ? burst : 1;
	r->max_keys = max_keys ? max_keys : 1;
	r->b = xcalloc(r->max_keys, sizeof *r->b);
	return r;
}

void
ratelimit_destroy(ratelimit *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n; i++)
		free(r->b[i].key);
	free(r->b);
	free(r);
}

static void
refill(const ratelimit *r, struct bucket *b, double now_ms)
{
	double dt = now_ms - b->last_ms;
	if (dt > 0)
		b->tokens = fmin(r->burst, b->tokens + dt * r->per_ms);
	b->last_ms = now_ms;
}

static void
drop(ratelimit *r, size_t i)
{
	free(r->b[i].key);
	r->b[i] = r->b[--r->n];
}

/* Room for one more: first the buckets that have refilled (a fresh one
 * would be the same), else the one idle longest. */
static void
make_room(ratelimit *r, double now_ms)
{
	for (size_t i = 0; i < r->n;) {
		refill(r, &r->b[i], now_ms);
		if (r->b[i].tokens >= r->burst)
			drop(r, i);
		else
			i++;
	}
	if (r->n < r->max_keys)
		return;
	size_t oldest = 0;
	for (size_t i = 1; i < r->n; i++)
		if (r->b[i].last_ms < r->b[oldest].last_ms)
			oldest = i;
	drop(r, oldest);
}

bool
ratelimit_take(ratelimit *r, const char *key, double now_ms, int *retry_after_s)
{
	if (r->per_ms <= 0)
		return true;
	uint64_t h = util_fnv1a(0, key, strlen(key));
	struct bucket *b = NULL;
	for (size_t i = 0; i < r->n && !b; i++)
		if (r->b[i].hash == h && strcmp(r->b[i].key, key) == 0)
			b = &r->b[i];
	if (!b) {
		if (r->n == r->max_keys)
			make_room(r, now_ms);
		b = &r->b[r->n++];
		b->hash = h;
		b->key = xstrdup(key);
		b->tokens = r->burst;
		b->last_ms = now_ms;
	}
	refill(r, b, now_ms);
	if (b->tokens >= 1) {
		b->tokens -= 1;
		return true;
	}
	double wait_s = (1 - b->tokens) / r->per_ms / 1000.0;
	*retry_after_s = wait_s < 1 ? 1 : (int)ceil(wait_s);
	return false;
}

size_t
ratelimit_keys(const ratelimit *r)
{
	return r->n;
}
