/*
 * l2 — the shared second-level cache in Redis (REDIS_URL): finished
 * analyses that every instance reads and that survive a restart.
 *
 * Owns two hiredis async connections on the server's libevent loop (one for
 * commands, one subscribed to the instances' events channel; see
 * l2_coord.h for what travels on it), their reconnect timers and the
 * lookups in flight. Nothing blocks: a lookup has
 * its own deadline (RAPPORT_L2_TIMEOUT_MS) and answers "nothing" when Redis
 * is down, slow or restarting, so a request never waits on Redis for longer
 * than that; writes are fire and forget.
 *
 * Times are wall-clock milliseconds, since instances share them. An entry
 * is stored with the time it was last validated (generated, or re-armed by
 * its fingerprint), its ttl and its grace; a contact's data change is one
 * key per contact holding the change's time (idempotent, whichever
 * instance writes it), and an explicit drop another. A lookup reads the
 * entry and both times in one MGET and says what the entry is now.
 */
#ifndef RAPPORT_L2_H
#define RAPPORT_L2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"

struct event_base;
typedef struct l2 l2;
typedef struct l2_get l2_get;

struct l2_config {
	const char *url;             /* redis://[user:pass@]host[:port][/db], unix:///path */
	const char *prefix;          /* key namespace (RAPPORT_REDIS_PREFIX) */
	long timeout_ms;             /* a lookup's deadline */
	size_t max_value_bytes;      /* larger values are not stored */
	long lock_lease_ms;          /* the cross-instance lock's lease; 0: no locks (l2_coord.h) */
	long lock_poll_ms;           /* a waiter's safety-net poll */
};

/* A finished analysis as stored: the body prefix and what cache.h keeps. */
struct l2_value {
	const char *body;
	size_t body_len;
	const char *etag;
	int64_t created_wall_ms;     /* generation */
	int64_t validated_wall_ms;   /* generation or the last re-arm */
	double ttl_ms, grace_ms;
	struct cache_meta meta;
};

/* What a lookup found, evaluated at the lookup's time. */
struct l2_found {
	struct l2_value v;
	enum cache_state state;
	double fresh_left_ms;        /* > 0 only when FRESH */
	double grace_left_ms;        /* > 0 when FRESH or STALE */
};

/* NULL with err for a URL it cannot use. Connects at once (and again with
 * backoff whenever the connection is lost). */
l2 *l2_create(struct event_base *base, const struct l2_config *cfg, char *err, size_t errlen);
void l2_destroy(l2 *l);
bool l2_up(const l2 *l);
/* "up", "connecting" or "down", for /readyz. */
const char *l2_state_name(const l2 *l);

/* found NULL: absent, dropped, unreadable, Redis down or past the deadline. */
typedef void l2_get_cb(void *arg, const struct l2_found *found);
/* Starts a lookup and returns its handle; cb runs once, later, never from
 * here. NULL (and no callback) when Redis is not up: go on without it. */
l2_get *l2_get_start(l2 *l, const char *key, int64_t contact_id, l2_get_cb *cb, void *arg);
/* The caller is gone: cb will not run. */
void l2_get_cancel(l2_get *g);

/* Stores v under key, to expire with its grace. Dropped when Redis is not up
 * or the value is over the cap: false, so an owner of the key's lock says
 * "over", not "done" (l2_claim_stored), and its waiters go on at once
 * instead of looking for a value that is not there. */
bool l2_put(l2 *l, const char *key, int64_t contact_id, const struct l2_value *v);
/* The contact's data changed at wall_ms (contact_id < 0: everyone's): its
 * entries are stale from now on, on every instance. */
void l2_contact_changed(l2 *l, int64_t contact_id, int64_t wall_ms);
/* The contact's entries were dropped (DELETE): absent on every instance. */
void l2_contact_dropped(l2 *l, int64_t contact_id, int64_t wall_ms);

/* Another instance dropped a contact's entries (DELETE): type NULL = all. */
typedef void l2_drop_cb(void *arg, int64_t contact_id, const char *type);

struct l2_stats {
	bool up;
	long hits, stale_hits, misses;     /* lookups answered */
	long errors;                       /* error replies, unreadable values */
	long timeouts;                     /* lookups past their deadline */
	long skipped;                      /* lookups and writes not tried: Redis not up */
	long stores, too_large;
	long connects, disconnects;
	/* coordination (l2_coord.h) */
	bool pubsub_up;                    /* the subscriber connection */
	long lock_acquired;                /* claims that took the lock and generated */
	long lock_waits;                   /* claims that found it held and waited */
	long lock_results;                 /* waits answered by the other instance's result */
	long lock_takeovers;               /* waits that took the lock over (owner gone) */
	long lock_skipped;                 /* claims that went on without a lock (Redis not up, slow) */
	long lock_lost;                    /* renewals that found the lock no longer ours */
	long relay_published;              /* deltas written for other instances */
	long relay_deltas;                 /* deltas read from another instance's generation */
	long remote_drops;                 /* DELETEs heard from other instances */
	/* Lookup latency, milliseconds: counts per bucket (<= 1, 2, 5, 10, 25, 50,
	 * 100, +inf) and the sum, for a Prometheus histogram. */
	long lat_buckets[8];
	double lat_sum_ms;
};
extern const double l2_latency_bounds_ms[7];
void l2_stats(const l2 *l, struct l2_stats *out);

#endif
