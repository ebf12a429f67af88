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
	return cache_put(c, key, contact, type, body, strlen(body), "\"etag\"", 1000, now, ttl);
}

static void
test_get_returns_what_was_put_until_ttl(void)
{
	cache *c = cache_create(1 << 20);
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
	cache *c = cache_create(4000);       /* room for three entries, not four */
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
	cache *c = cache_create(1 << 20);
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
	cache *c = cache_create(64 << 20);
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

int
main(void)
{
	test_get_returns_what_was_put_until_ttl();
	test_lru_eviction_keeps_the_byte_bound();
	test_put_replaces_and_drop_by_contact();
	test_many_entries_stay_reachable();
	return tap_done();
}
