/*
 * cache — L1: a hash table of entries threaded on one LRU list.
 *
 * Data flow: analysis stores a finished response with cache_put(); the HTTP
 * path asks cache_get() on every request. The table owns a copy of every
 * byte it holds; `bytes` counts those copies plus the entry struct, so the
 * configured bound is what the cache really costs. Lookups move an entry to
 * the LRU head; stores evict from the tail until the bound holds.
 * A second index by contact id makes an invalidation cost the contact's
 * entries, not a walk of the whole cache (a bulk update NOTIFYs per row).
 * An entry's state (cache.h) is computed at lookup from its times and its
 * stale mark; only cache_rearm() and cache_mark_stale() change those.
 */
#include "cache.h"
#include "util.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct entry {
	struct cache_entry pub;
	uint64_t hash;
	struct entry *chain;           /* next in the same bucket */
	struct entry *prev, *next;     /* LRU: head = most recent */
	struct entry *cprev, *cnext;   /* same contact bucket */
};

struct cache {
	struct entry **buckets;
	struct entry **cbuckets;       /* by contact id, for invalidation */
	size_t nbuckets;               /* power of two, both tables */
	struct entry *head, *tail;
	bool keep_expired;
	struct cache_stats st;
};

static uint64_t
key_hash(const char *key)
{
	return util_fnv1a(UTIL_FNV_SEED, key, strlen(key));
}

cache *
cache_create(size_t max_bytes, bool keep_expired)
{
	cache *c = xcalloc(1, sizeof *c);
	c->keep_expired = keep_expired;
	c->nbuckets = 1024;
	c->buckets = xcalloc(c->nbuckets, sizeof *c->buckets);
	c->cbuckets = xcalloc(c->nbuckets, sizeof *c->cbuckets);
	c->st.max_bytes = max_bytes;
	return c;
}

static void
lru_unlink(cache *c, struct entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		c->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		c->tail = e->prev;
	e->prev = e->next = NULL;
}

static void
lru_push_front(cache *c, struct entry *e)
{
	e->prev = NULL;
	e->next = c->head;
	if (c->head)
		c->head->prev = e;
	c->head = e;
	if (!c->tail)
		c->tail = e;
}

static size_t
contact_bucket(const cache *c, int64_t id)
{
	uint64_t h = (uint64_t)id * 0x9e3779b97f4a7c15ULL;
	return (size_t)(h >> 32) & (c->nbuckets - 1);
}

static void
contact_link(cache *c, struct entry *e)
{
	struct entry **head = &c->cbuckets[contact_bucket(c, e->pub.contact_id)];
	e->cprev = NULL;
	e->cnext = *head;
	if (*head)
		(*head)->cprev = e;
	*head = e;
}

static void
contact_unlink(cache *c, struct entry *e)
{
	if (e->cprev)
		e->cprev->cnext = e->cnext;
	else
		c->cbuckets[contact_bucket(c, e->pub.contact_id)] = e->cnext;
	if (e->cnext)
		e->cnext->cprev = e->cprev;
	e->cprev = e->cnext = NULL;
}

static struct entry **
bucket_slot(cache *c, const char *key, uint64_t h)
{
	struct entry **pp = &c->buckets[h & (c->nbuckets - 1)];
	while (*pp && ((*pp)->hash != h || strcmp((*pp)->pub.key, key) != 0))
		pp = &(*pp)->chain;
	return pp;
}

/* Unlinks e from its bucket and the LRU and frees it. */
static void
entry_remove(cache *c, struct entry *e)
{
	struct entry **pp = bucket_slot(c, e->pub.key, e->hash);
	*pp = e->chain;
	lru_unlink(c, e);
	contact_unlink(c, e);
	c->st.bytes -= e->pub.bytes;
	c->st.entries--;
	free((char *)e->pub.key);
	free((char *)e->pub.type);
	free((char *)e->pub.body);
	free((char *)e->pub.etag);
	free(e);
}

/* Doubles the table when it averages more than one entry per bucket, so
 * chains stay short however large the byte bound is. */
static void
maybe_grow(cache *c)
{
	if ((size_t)c->st.entries <= c->nbuckets)
		return;
	size_t n = c->nbuckets * 2;
	struct entry **b = xcalloc(n, sizeof *b);
	for (size_t i = 0; i < c->nbuckets; i++) {
		struct entry *e = c->buckets[i], *next;
		for (; e; e = next) {
			next = e->chain;
			e->chain = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(c->buckets);
	free(c->cbuckets);
	c->buckets = b;
	c->nbuckets = n;
	c->cbuckets = xcalloc(n, sizeof *c->cbuckets);
	for (struct entry *e = c->head; e; e = e->next)
		contact_link(c, e);
}

void
cache_destroy(cache *c)
{
	if (!c)
		return;
	while (c->head)
		entry_remove(c, c->head);
	free(c->buckets);
	free(c->cbuckets);
	free(c);
}

static enum cache_state
entry_state(const struct entry *e, double now_ms)
{
	if (now_ms >= e->pub.expires_ms)
		return CACHE_EXPIRED;
	if (e->pub.stale || now_ms >= e->pub.fresh_until_ms)
		return CACHE_STALE;
	return CACHE_FRESH;
}

const struct cache_entry *
cache_lookup(cache *c, const char *key, double now_ms, enum cache_state *st)
{
	uint64_t h = key_hash(key);
	struct entry *e = *bucket_slot(c, key, h);
	if (!e) {
		c->st.misses++;
		return NULL;
	}
	*st = entry_state(e, now_ms);
	switch (*st) {
	case CACHE_EXPIRED:
		c->st.expired++;
		c->st.misses++;
		if (!c->keep_expired) {
			entry_remove(c, e);
			return NULL;
		}
		break;
	case CACHE_STALE:
		c->st.stale_hits++;
		break;
	case CACHE_FRESH:
		c->st.hits++;
		break;
	}
	lru_unlink(c, e);
	lru_push_front(c, e);
	return &e->pub;
}

const struct cache_entry *
cache_get(cache *c, const char *key, double now_ms)
{
	enum cache_state st;
	const struct cache_entry *e = cache_lookup(c, key, now_ms, &st);
	return e && st == CACHE_FRESH ? e : NULL;
}

const struct cache_entry *
cache_put(cache *c, const char *key, int64_t contact_id, const char *type,
          const char *body, size_t body_len, const char *etag,
          int64_t created_wall_ms, double now_ms, double ttl_ms, double grace_ms,
          const struct cache_meta *meta)
{
	uint64_t h = key_hash(key);
	struct entry *old = *bucket_slot(c, key, h);
	double viewed_ms = 0;
	if (old) {
		viewed_ms = old->pub.viewed_ms;
		entry_remove(c, old);
	}

	size_t bytes = sizeof(struct entry) + strlen(key) + 1 + strlen(type) + 1 +
	               body_len + 1 + strlen(etag) + 1;
	if (bytes > c->st.max_bytes)
		return NULL;
	while (c->tail && c->st.bytes + bytes > c->st.max_bytes) {
		entry_remove(c, c->tail);
		c->st.evictions++;
	}

	struct entry *e = xcalloc(1, sizeof *e);
	e->hash = h;
	e->pub.key = xstrdup(key);
	e->pub.contact_id = contact_id;
	e->pub.type = xstrdup(type);
	e->pub.body = xstrndup(body, body_len);
	e->pub.body_len = body_len;
	e->pub.etag = xstrdup(etag);
	e->pub.created_wall_ms = created_wall_ms;
	e->pub.created_ms = now_ms;
	e->pub.fresh_until_ms = now_ms + ttl_ms;
	e->pub.expires_ms = now_ms + ttl_ms + (grace_ms > 0 ? grace_ms : 0);
	e->pub.grace_ms = grace_ms > 0 ? grace_ms : 0;
	if (meta)
		e->pub.meta = *meta;
	else
		e->pub.meta.prompt_tokens = e->pub.meta.completion_tokens = -1;
	e->pub.bytes = bytes;
	e->pub.viewed_ms = viewed_ms;

	struct entry **slot = &c->buckets[h & (c->nbuckets - 1)];
	e->chain = *slot;
	*slot = e;
	lru_push_front(c, e);
	contact_link(c, e);
	c->st.bytes += bytes;
	c->st.entries++;
	c->st.stores++;
	maybe_grow(c);
	return &e->pub;
}

const struct cache_entry *
cache_rearm(cache *c, const char *key, double now_ms, double ttl_ms, double grace_ms)
{
	struct entry *e = *bucket_slot(c, key, key_hash(key));
	if (!e)
		return NULL;
	e->pub.created_ms = now_ms;
	e->pub.fresh_until_ms = now_ms + ttl_ms;
	e->pub.grace_ms = grace_ms > 0 ? grace_ms : 0;
	e->pub.expires_ms = now_ms + ttl_ms + e->pub.grace_ms;
	e->pub.refresh_after_ms = 0;
	e->pub.stale = false;
	c->st.rearms++;
	return &e->pub;
}

void
cache_refresh_failed(cache *c, const char *key, double now_ms, double after_ms)
{
	struct entry *e = *bucket_slot(c, key, key_hash(key));
	if (e)
		e->pub.refresh_after_ms = now_ms + after_ms;
}

static bool
mark_stale(cache *c, struct entry *e, double now_ms)
{
	if (entry_state(e, now_ms) == CACHE_EXPIRED)
		return false;
	e->pub.stale = true;
	/* Served stale for at most its grace from the change, however much
	 * of its ttl was left. */
	if (e->pub.expires_ms > now_ms + e->pub.grace_ms)
		e->pub.expires_ms = now_ms + e->pub.grace_ms;
	e->pub.refresh_after_ms = 0;   /* the change is news: refresh at once */
	c->st.marked_stale++;
	return true;
}

int
cache_mark_stale(cache *c, int64_t contact_id, double now_ms)
{
	int n = 0;
	if (contact_id < 0) {
		for (struct entry *e = c->head; e; e = e->next)
			n += mark_stale(c, e, now_ms);
		return n;
	}
	for (struct entry *e = c->cbuckets[contact_bucket(c, contact_id)]; e; e = e->cnext)
		if (e->pub.contact_id == contact_id)
			n += mark_stale(c, e, now_ms);
	return n;
}

int
cache_drop_contact(cache *c, int64_t contact_id, const char *type)
{
	int n = 0;
	struct entry *e = c->cbuckets[contact_bucket(c, contact_id)], *next;
	for (; e; e = next) {
		next = e->cnext;
		if (e->pub.contact_id == contact_id &&
		    (!type || strcmp(type, e->pub.type) == 0)) {
			entry_remove(c, e);
			n++;
		}
	}
	c->st.drops += n;
	return n;
}

void
cache_clear(cache *c)
{
	while (c->head) {
		entry_remove(c, c->head);
		c->st.drops++;
	}
}

void
cache_each(cache *c, void (*fn)(void *arg, const struct cache_entry *e), void *arg)
{
	for (struct entry *e = c->head; e; e = e->next)
		fn(arg, &e->pub);
}

void
cache_each_contact(cache *c, int64_t contact_id,
                   void (*fn)(void *arg, const struct cache_entry *e), void *arg)
{
	for (struct entry *e = c->cbuckets[contact_bucket(c, contact_id)]; e; e = e->cnext)
		if (e->pub.contact_id == contact_id)
			fn(arg, &e->pub);
}

void
cache_viewed(cache *c, const struct cache_entry *pub, double now_ms)
{
	(void)c;
	/* pub is the first member of an entry this cache owns. */
	((struct entry *)(void *)pub)->pub.viewed_ms = now_ms;
}

void
cache_stats(const cache *c, struct cache_stats *out)
{
	*out = c->st;
}
