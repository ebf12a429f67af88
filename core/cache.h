/*
 * cache — the in-process (L1) cache of finished analyses.
 *
 * Owns every entry: key (contact, type, script version), the response body,
 * its ETag and times. Bounded by bytes with LRU eviction; each entry has its
 * own TTL and an expired entry is never returned. Single-threaded: pointers
 * returned by cache_get()/cache_put() stay valid only until the next call
 * into the cache, so callers copy what they need at once.
 */
#ifndef RAPPORT_CACHE_H
#define RAPPORT_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct cache cache;

struct cache_entry {
	const char *key;
	int64_t contact_id;
	const char *type;
	const char *body;        /* opaque bytes stored by the caller */
	size_t body_len;
	const char *etag;        /* opaque, NUL-terminated */
	int64_t created_wall_ms; /* wall clock at generation, for Age */
	double created_ms;       /* monotonic at store */
	double expires_ms;       /* monotonic */
	size_t bytes;            /* what this entry counts against the bound */
};

struct cache_stats {
	size_t bytes, max_bytes;
	long entries;
	long hits, misses, expired, evictions, stores, drops;
};

cache *cache_create(size_t max_bytes);
void cache_destroy(cache *c);

/* A live entry, moved to the front of the LRU, or NULL (counted as a miss;
 * an expired entry is removed and counted). */
const struct cache_entry *cache_get(cache *c, const char *key, double now_ms);
/* Stores a copy of key, type, body and etag, replacing any entry with that
 * key, then evicts least-recently-used entries until the bound holds. An
 * entry larger than the whole bound is not stored (returns NULL). */
const struct cache_entry *cache_put(cache *c, const char *key, int64_t contact_id,
                                    const char *type, const char *body, size_t body_len,
                                    const char *etag, int64_t created_wall_ms,
                                    double now_ms, double ttl_ms);
/* Drops the entries of one contact, of one type or all types (type NULL).
 * Returns how many were dropped. */
int cache_drop_contact(cache *c, int64_t contact_id, const char *type);
/* Drops every entry; each counts in drops. */
void cache_clear(cache *c);
/* Calls fn for every entry, most recently used first, expired ones
 * included (they go at their next lookup). For listings (the admin socket,
 * the console): fn must not call into the cache. */
void cache_each(cache *c, void (*fn)(void *arg, const struct cache_entry *e), void *arg);
void cache_stats(const cache *c, struct cache_stats *out);

#endif
