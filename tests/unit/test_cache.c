/*
 * test_cache — the L1 cache: TTL, LRU eviction by bytes, replacement,
 * per-contact drops and the accounting behind the bound.
 */
#include "cache.h"
#include "tap.h"

#include <string.h>

static const struct cache_entry *
put(cache *c, const char *key, int64_t contact, const char *type, const char *body,
    double now, double ttl)
{
	return cache_put(c, key, contact, type, body, strlen(body), "\"etag\"", 1000, now, ttl, 0,
	                 NULL);
}

static void
test_get_returns_what_was_put_until_ttl(void)
{
	cache *c = cache_create(1 << 20, false);
	put(c, "1:a:v1", 1, "a", "{\"x\":1", 0, 100);
	const struct cache_entry *e = cache_get(c, "1:a:v1", 50);
	ok(e && e->body_len == 6 && memcmp(e->body, "{\"x\":1", 6) == 0, "a stored entry is returned before its TTL");
	ok(e && strcmp(e->etag, "\"etag\"") == 0 && e->contact_id == 1 && strcmp(e->type, "a") == 0,
	   "the entry keeps its etag, contact and type");
	ok(cache_get(c, "1:a:v1", 100) == NULL, "an entry is not returned once its TTL has passed");
	struct cache_stats st;
	cache_stats(c, &st);
	ok(st.entries == 0 && st.bytes == 0 && st.expired == 1, "an expired entry is removed and counted");
	ok(cache_get(c, "nope", 0) == NULL, "a missing key is a miss");
	cache_destroy(c);
}

static void
test_lru_eviction_keeps_the_byte_bound(void)
{
	char body[1000];
	memset(body, 'x', sizeof body - 1);
	body[sizeof body - 1] = '\0';
	cache *c = cache_create(4000, false);       /* room for three entries, not four */
	put(c, "k1", 1, "t", body, 0, 1e9);
	put(c, "k2", 2, "t", body, 0, 1e9);
	put(c, "k3", 3, "t", body, 0, 1e9);
	ok(cache_get(c, "k1", 1) != NULL, "k1 touched, so k2 is now least recently used");
	put(c, "k4", 4, "t", body, 2, 1e9);
	struct cache_stats st;
	cache_stats(c, &st);
	ok(st.bytes <= st.max_bytes, "bytes (%zu) stay within the bound (%zu)", st.bytes, st.max_bytes);
	ok(cache_get(c, "k2", 3) == NULL, "the least recently used entry was evicted");
	ok(cache_get(c, "k1", 3) && cache_get(c, "k3", 3) && cache_get(c, "k4", 3),
	   "the others survive");
	ok(st.evictions == 1, "one eviction counted (%ld)", st.evictions);
	char big[5000];
	memset(big, 'y', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	ok(put(c, "huge", 5, "t", big, 4, 1e9) == NULL, "an entry larger than the whole bound is refused");
	ok(cache_get(c, "k1", 5) != NULL, "refusing it evicted nothing");
	cache_destroy(c);
}

static void
test_put_replaces_and_drop_by_contact(void)
{
	cache *c = cache_create(1 << 20, false);
	put(c, "1:a:v", 1, "a", "old", 0, 1e9);
	put(c, "1:a:v", 1, "a", "new!", 0, 1e9);
	const struct cache_entry *e = cache_get(c, "1:a:v", 1);
	ok(e && e->body_len == 4 && memcmp(e->body, "new!", 4) == 0, "a second put replaces the first");
	struct cache_stats st;
	cache_stats(c, &st);
	ok(st.entries == 1, "replacing does not duplicate");
	put(c, "1:b:v", 1, "b", "x", 0, 1e9);
	put(c, "2:a:v", 2, "a", "x", 0, 1e9);
	ok(cache_drop_contact(c, 1, "b") == 1, "dropping one type of a contact drops one entry");
	ok(cache_get(c, "1:a:v", 1) != NULL, "the contact's other types stay");
	ok(cache_drop_contact(c, 1, NULL) == 1, "dropping all types of a contact");
	ok(cache_get(c, "2:a:v", 1) != NULL, "other contacts stay");
	cache_destroy(c);
}

static void
test_many_entries_stay_reachable(void)
{
	cache *c = cache_create(64 << 20, false);
	char key[32];
	for (int i = 0; i < 20000; i++) {
		snprintf(key, sizeof key, "%d:t:v", i);
		put(c, key, i, "t", "body", 0, 1e9);
	}
	int found = 0;
	for (int i = 0; i < 20000; i++) {
		snprintf(key, sizeof key, "%d:t:v", i);
		found += cache_get(c, key, 1) != NULL;
	}
	ok(found == 20000, "all 20000 entries are found after the table grew (%d)", found);
	int dropped = 0;
	for (int i = 0; i < 20000; i += 2)
		dropped += cache_drop_contact(c, i, NULL);
	struct cache_stats st;
	cache_stats(c, &st);
	ok(dropped == 10000 && st.entries == 10000, "dropping by contact after growth finds each entry (%d)", dropped);
	snprintf(key, sizeof key, "%d:t:v", 1);
	ok(cache_get(c, key, 1) != NULL, "odd contacts stay");
	cache_clear(c);
	cache_stats(c, &st);
	ok(st.entries == 0 && st.bytes == 0, "cache_clear empties the cache and its byte count");
	cache_destroy(c);
}

/* The three states: fresh for the ttl, stale for the grace, then expired
 * (kept for its fingerprint only when the cache keeps expired entries). */
static void
test_fresh_then_stale_then_expired(void)
{
	cache *c = cache_create(1 << 20, true);
	struct cache_meta m = { .has_fingerprint = true, .prompt_tokens = 10, .completion_tokens = 5,
	                        .cost_usd = 0.25 };
	memset(m.fingerprint, 7, sizeof m.fingerprint);
	cache_put(c, "1:a:v", 1, "a", "{\"x\":1", 6, "\"e\"", 1000, 0, 100, 50, &m);
	enum cache_state st;
	const struct cache_entry *e = cache_lookup(c, "1:a:v", 99, &st);
	ok(e && st == CACHE_FRESH, "fresh before its ttl ends");
	e = cache_lookup(c, "1:a:v", 100, &st);
	ok(e && st == CACHE_STALE && !cache_get(c, "1:a:v", 100),
	   "stale from the end of its ttl, and cache_get does not return it");
	e = cache_lookup(c, "1:a:v", 150, &st);
	ok(e && st == CACHE_EXPIRED && e->meta.has_fingerprint && e->meta.fingerprint[0] == 7 &&
	   e->meta.prompt_tokens == 10 && e->meta.cost_usd == 0.25,
	   "expired past its grace, kept with its fingerprint and usage");
	e = cache_rearm(c, "1:a:v", 200, 100, 50);
	ok(e && cache_lookup(c, "1:a:v", 250, &st) && st == CACHE_FRESH &&
	   strcmp(e->etag, "\"e\"") == 0 && e->created_wall_ms == 1000,
	   "a re-armed entry is fresh again with the same etag and generation time");
	struct cache_stats cs;
	cache_stats(c, &cs);
	ok(cs.hits == 2 && cs.stale_hits == 2 && cs.expired == 1 && cs.rearms == 1,
	   "hits, stale hits, expiries and re-arms are counted (%ld %ld %ld %ld)", cs.hits,
	   cs.stale_hits, cs.expired, cs.rearms);
	cache_destroy(c);

	c = cache_create(1 << 20, false);
	cache_put(c, "1:a:v", 1, "a", "{", 1, "\"e\"", 1000, 0, 100, 50, NULL);
	ok(!cache_lookup(c, "1:a:v", 150, &st),
	   "without keep_expired an expired entry is removed at lookup");
	cache_destroy(c);
}

/* A data change: never fresh again, stale for at most its grace from the
 * change; other contacts untouched. */
static void
test_mark_stale_bounds_the_grace_from_the_change(void)
{
	cache *c = cache_create(1 << 20, true);
	cache_put(c, "1:a:v", 1, "a", "{", 1, "\"e\"", 1000, 0, 1000, 300, NULL);
	cache_put(c, "1:b:v", 1, "b", "{", 1, "\"e\"", 1000, 0, 1000, 0, NULL);
	cache_put(c, "2:a:v", 2, "a", "{", 1, "\"e\"", 1000, 0, 1000, 300, NULL);
	ok(cache_mark_stale(c, 1, 10) == 2, "both entries of contact 1 are marked");
	enum cache_state st;
	ok(cache_lookup(c, "1:a:v", 11, &st) && st == CACHE_STALE, "marked: stale at once");
	ok(cache_lookup(c, "1:a:v", 310, &st) && st == CACHE_EXPIRED,
	   "expired once its grace from the change has passed, though its ttl has not");
	ok(cache_lookup(c, "1:b:v", 11, &st) && st == CACHE_EXPIRED,
	   "an entry without grace is expired by the change");
	ok(cache_lookup(c, "2:a:v", 11, &st) && st == CACHE_FRESH, "another contact stays fresh");
	cache_rearm(c, "1:a:v", 400, 1000, 300);
	ok(cache_lookup(c, "1:a:v", 401, &st) && st == CACHE_FRESH,
	   "a re-arm after the refresh clears the mark");
	ok(cache_mark_stale(c, -1, 500) == 2, "-1 marks every live entry");
	cache_destroy(c);
}

int
main(void)
{
	test_fresh_then_stale_then_expired();
	test_mark_stale_bounds_the_grace_from_the_change();
	test_get_returns_what_was_put_until_ttl();
	test_lru_eviction_keeps_the_byte_bound();
	test_put_replaces_and_drop_by_contact();
	test_many_entries_stay_reachable();
	return tap_done();
}
