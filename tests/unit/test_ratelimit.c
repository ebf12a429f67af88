/*
 * test_ratelimit — token buckets per key: the burst, the refill rate, the
 * Retry-After hint, keys kept apart, and the bound on how many keys are held.
 */
#include "ratelimit.h"
#include "tap.h"

#include <stdio.h>

int
main(void)
{
	ratelimit *r = ratelimit_create(10, 3, 4);   /* 10 a minute, 3 at once */
	int ra = 0, granted = 0;
	for (int i = 0; i < 5; i++)
		granted += ratelimit_take(r, "k1", 0, &ra);
	ok(granted == 3, "a burst of 3, then refused (%d granted)", granted);
	ok(ra == 6, "Retry-After is the time to the next token: 6 s (%d)", ra);
	ok(ratelimit_take(r, "k2", 0, &ra), "another key has its own bucket");
	ok(!ratelimit_take(r, "k1", 5999, &ra), "not yet after 5.999 s");
	ok(ratelimit_take(r, "k1", 6000, &ra), "one token after 6 s");
	ok(!ratelimit_take(r, "k1", 6001, &ra), "and only one");
	granted = 0;
	for (int i = 0; i < 5; i++)
		granted += ratelimit_take(r, "k1", 10.0 * 60000, &ra);
	ok(granted == 3, "after a long idle, the bucket holds the burst, not more");

	/* Bound: 4 keys; refilled buckets are dropped first, then the oldest. */
	for (int i = 0; i < 20; i++) {
		char key[16];
		snprintf(key, sizeof key, "c%d", i);
		ratelimit_take(r, key, 700000 + i, &ra);
	}
	ok(ratelimit_keys(r) <= 4, "never more than max_keys held (%zu)", ratelimit_keys(r));
	ratelimit_destroy(r);

	r = ratelimit_create(0, 1, 4);
	granted = 0;
	for (int i = 0; i < 100; i++)
		granted += ratelimit_take(r, "k", 0, &ra);
	ok(granted == 100 && ratelimit_keys(r) == 0, "per_min 0: no limit, nothing held");
	ratelimit_destroy(r);
	return tap_done();
}
