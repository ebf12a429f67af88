/*
 * cache — the in-process (L1) cache of finished analyses.
 *
 * Owns every entry: key (contact, type, script version), the response body,
 * its ETag, its times and the fingerprint of the model request that made
 * it. Bounded by bytes with LRU eviction. Each entry lives through three
 * states, by the clock and by invalidation:
 *
 *   FRESH    until its ttl ends and while its data is not known to have
 *            changed: served as a hit
 *   STALE    its ttl ended (or cache_mark_stale() said its contact's data
 *            changed) but its grace (stale_ttl) has not: served at once
 *            while one refresh runs
 *   EXPIRED  past its grace: never served; kept (until LRU eviction) only
 *            when the cache was made with keep_expired, so that a refresh
 *            can compare fingerprints and re-arm it without a model call
 *
 * cache_rearm() makes an entry FRESH again (its inputs were unchanged).
 * Single-threaded: pointers returned by cache_lookup()/cache_put() stay
 * valid only until the next call into the cache, so callers copy what they
 * need at once.
 */
#ifndef RAPPORT_CACHE_H
#define RAPPORT_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cache cache;

enum cache_state { CACHE_FRESH, CACHE_STALE, CACHE_EXPIRED };

#define CACHE_FP_LEN 32          /* SHA-256 of the model request */

/* What the generation cost and what it was made from, kept with the body. */
struct cache_meta {
	unsigned char fingerprint[CACHE_FP_LEN];
	bool has_fingerprint;    /* false: cannot be revalidated (run(ctx), fallback) */
	long prompt_tokens, completion_tokens;   /* -1 when unknown */
	double cost_usd;
};

struct cache_entry {
	const char *key;
	int64_t contact_id;
	const char *type;
	const char *body;        /* opaque bytes stored by the caller */
	size_t body_len;
	const char *etag;        /* opaque, NUL-terminated */
	int64_t created_wall_ms; /* wall clock at generation, for Age */
	double created_ms;       /* monotonic at store (or at the last re-arm) */
	double fresh_until_ms;   /* monotonic: the end of the ttl */
	double expires_ms;       /* monotonic: the end of the grace */
	double grace_ms;         /* the stale_ttl it was stored with */
	double refresh_after_ms; /* no background refresh before (after a failed one) */
	bool stale;              /* its data changed: never FRESH again */
	double viewed_ms;        /* monotonic: last answer to a person (not a warm
	                            item) from it or its key; 0 = never */
	struct cache_meta meta;
	size_t bytes;            /* what this entry counts against the bound */
};

struct cache_stats {
	size_t bytes, max_bytes;
	long entries;
	long hits, misses, expired, evictions, stores, drops;
	long stale_hits;         /* lookups that found a STALE entry */
	long rearms;             /* entries made fresh again without a new body */
	long marked_stale;       /* entries made stale by a data change */
};

/* keep_expired: keep entries past their grace (see EXPIRED above). */
cache *cache_create(size_t max_bytes, bool keep_expired);
void cache_destroy(cache *c);

/* The entry and its state (*st), moved to the front of the LRU, or NULL.
 * FRESH counts as a hit, STALE as a stale hit, EXPIRED and NULL as misses;
 * an expired entry is removed (and NULL returned) unless keep_expired. */
const struct cache_entry *cache_lookup(cache *c, const char *key, double now_ms,
                                       enum cache_state *st);
/* cache_lookup() that returns only a FRESH entry. */
const struct cache_entry *cache_get(cache *c, const char *key, double now_ms);
/* Stores a copy of key, type, body, etag and meta (NULL: none), FRESH for
 * ttl_ms then STALE for grace_ms, replacing any entry with that key, then
 * evicts least-recently-used entries until the bound holds. An entry
 * larger than the whole bound is not stored (returns NULL). */
const struct cache_entry *cache_put(cache *c, const char *key, int64_t contact_id,
                                    const char *type, const char *body, size_t body_len,
                                    const char *etag, int64_t created_wall_ms,
                                    double now_ms, double ttl_ms, double grace_ms,
                                    const struct cache_meta *meta);
/* The entry's inputs are unchanged: FRESH again for ttl_ms, then STALE for
 * grace_ms, same body and ETag. NULL when the key is not cached. */
const struct cache_entry *cache_rearm(cache *c, const char *key, double now_ms, double ttl_ms,
                                      double grace_ms);
/* A refresh of the key failed: no new one before now + after_ms. */
void cache_refresh_failed(cache *c, const char *key, double now_ms, double after_ms);
/* The contact's data changed (contact_id < 0: anyone's): its entries are
 * never FRESH again; each may be served STALE for at most its grace from
 * now. Returns how many entries were marked. */
int cache_mark_stale(cache *c, int64_t contact_id, double now_ms);
/* Drops the entries of one contact, of one type or all types (type NULL).
 * Returns how many were dropped. */
int cache_drop_contact(cache *c, int64_t contact_id, const char *type);
/* Drops every entry; each counts in drops. */
void cache_clear(cache *c);
/* Calls fn for every entry, most recently used first, expired ones
 * included (they go at their next lookup). For listings (the admin socket,
 * the console): fn must not call into the cache. */
void cache_each(cache *c, void (*fn)(void *arg, const struct cache_entry *e), void *arg);
/* cache_each() over one contact's entries (in no particular order). */
void cache_each_contact(cache *c, int64_t contact_id,
                        void (*fn)(void *arg, const struct cache_entry *e), void *arg);
/* A person was answered from e (or from a generation that stored it) at
 * now_ms; kept when the key's entry is replaced. */
void cache_viewed(cache *c, const struct cache_entry *e, double now_ms);
void cache_stats(const cache *c, struct cache_stats *out);

#endif
