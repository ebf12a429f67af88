/*
 * analysis — the request pipeline of DESIGN.md's "one request, end to end",
 * independent of HTTP so the API, the console and `rapport analyze` share it:
 *
 *   script registry (type → script, version) → cache key → L1 hit?
 *   → same key in flight? join it (singleflight)
 *   → context: the script's named queries, all sent at once on the pool
 *     (context.h, shared with the console)
 *   → script prompt(ctx) → model gate (breaker, limiter, first-token timer)
 *     → upstream chat completion → schema check / one repair → script post()
 *     (or run(ctx), whose own queries and model calls take the same gate)
 *   → store in cache → reply to every waiter.
 *
 * Owns the flights (one per key being generated) and their waiters. A
 * flight holds a reference on the script version it started with, its
 * queries and its upstream call; it lives until the upstream call ends even
 * when every waiter has gone (the tokens are paid for, so the result is
 * cached), and frees all of it on every path.
 */
#ifndef RAPPORT_ANALYSIS_H
#define RAPPORT_ANALYSIS_H

#include <stdbool.h>
#include <stdint.h>

#include "accounting.h"
#include "breaker.h"
#include "cache.h"
#include "db.h"
#include "l2.h"
#include "limiter.h"
#include "llm.h"
#include "script.h"

struct event_base;
typedef struct analysis analysis;
typedef struct analysis_wait analysis_wait;

struct analysis_deps {
	struct event_base *base;
	db_pool *db;
	llm_client *llm;
	cache *cache;
	script_registry *scripts;
	long llm_timeout_ms;
	long llm_first_token_ms;     /* no text by then: the stream is stalled (0 = off) */
	limiter *limiter;            /* cap on upstream calls in flight */
	breaker *breaker;            /* upstream circuit breaker */
	accounting *acct;            /* tokens and cost per type */
	bool cancel_orphans;         /* no one waits any more: cancel (else finish and cache) */
	bool ttl_only;               /* RAPPORT_FRESHNESS=ttl: no grace, no revalidation */
	double ttl_scale;            /* RAPPORT_TTL_SCALE: multiplies every ttl and stale_ttl (0 = 1) */
	l2 *l2;                      /* the shared cache in Redis, or NULL */
	bool refresh_warmed;         /* warm items' results count as viewed (refresh on change) */
};

/* What one caller gets. Strings live only during the callback. */
struct analysis_reply {
	int status;                 /* 200, or the HTTP status of the error */
	const char *error_code;     /* e.g. "contact_not_found"; NULL on 200 */
	const char *error_message;
	const char *body;           /* the JSON document, NUL-terminated (200 only) */
	size_t body_len;
	const char *etag;           /* quoted, 200 only */
	const char *cache_status;   /* "hit", "stale", "revalidated", "miss", "coalesced",
	                               "fallback" */
	const char *tier;           /* "l1" or "l2": which cache answered (hit, stale); else NULL */
	int64_t contact_id;
	const char *type;
	const char *version;        /* script version, or NULL */
	double age_ms;              /* since generation */
	double ttl_ms;              /* the type's TTL */
	double grace_ms;            /* the type's stale_ttl (0 when there is none) */
	double remaining_ms;        /* fresh: until its ttl ends; stale: until its grace ends */
	double db_ms, script_ms, llm_ms, total_ms;
	long prompt_tokens, completion_tokens;  /* -1 when unknown / cached */
	double cost_usd;            /* this generation's upstream cost */
	int retry_after_s;          /* > 0: when to try again (429, 503) */
};

typedef void analysis_reply_cb(void *arg, const struct analysis_reply *r);
/* Text as the model writes it, for streaming callers. Runs from inside the
 * upstream client's write path: copy or write the text out, nothing more
 * (analysis_wait_cancel of this very waiter is allowed). text NULL means
 * "discard what you have": the reply broke the schema and is regenerated. */
typedef void analysis_delta_cb(void *arg, const char *text, size_t len);

enum {
	ANALYSIS_REFRESH = 1,   /* skip the cache lookup, regenerate */
	/* A warm job's item (background lane): a fresh entry is left as it is
	 * (reply "hit"); otherwise it is refreshed as a stale one would be —
	 * "revalidated" when the inputs are unchanged (no model call), "miss"
	 * when the model was called; its model call yields to interactive
	 * ones. */
	ANALYSIS_WARM = 2,
	/* Only join the generation in flight for this key, if there is one:
	 * NULL and no reply otherwise (a stream that showed a stale result
	 * follows its refresh). */
	ANALYSIS_JOIN = 4,
};

analysis *analysis_create(const struct analysis_deps *deps);
/* Ends every flight; waiters get a 503 reply. */
void analysis_destroy(analysis *a);

/* Replies through cb exactly once. When the answer is ready at once (cache
 * hit, unknown type, bad request) cb runs before this returns and the
 * result is NULL; otherwise it returns a handle valid until cb runs.
 * on_delta (may be NULL) gets the model's text from now on; what was
 * written before this caller joined is in analysis_wait_text(). */
analysis_wait *analysis_get(analysis *a, int64_t contact_id, const char *type, int flags,
                            analysis_reply_cb *cb, analysis_delta_cb *on_delta, void *arg);
/* "miss" when this caller started the generation, "coalesced" when it
 * joined one in progress (here, or on another instance: its flight waits
 * for that instance's result). */
const char *analysis_wait_status(const analysis_wait *w);
/* The text the model has written so far for this waiter's generation. */
const char *analysis_wait_text(const analysis_wait *w, size_t *len);
/* The script version this waiter's generation runs on (16 hex digits). */
const char *analysis_wait_version(const analysis_wait *w);
/* The caller has gone: cb will not run. The generation goes on. */
void analysis_wait_cancel(analysis_wait *w);

/* The contact's data changed (NOTIFY): generations of it already in
 * progress read the old rows, so their results are served to their
 * waiters but not cached. contact_id < 0 means every contact. */
void analysis_contact_changed(analysis *a, int64_t contact_id);
/* The same, and its cached entries can no longer be served as fresh: they
 * become stale (served at once while a refresh checks their fingerprint),
 * or are dropped under RAPPORT_FRESHNESS=ttl. Returns how many entries. */
int analysis_invalidate(analysis *a, int64_t contact_id);
/* After a change (full policy): a background refresh for each of the
 * contact's entries a person was answered from within the last within_ms
 * and of its script's current version, unless one runs already. Returns
 * how many started (core/change_refresh.c debounces the NOTIFYs). */
int analysis_refresh_viewed(analysis *a, int64_t contact_id, double within_ms);
/* DELETE: the contact's entries (of one type, or all) go, here and, for
 * the whole contact, in the L2. Returns how many L1 entries. */
int analysis_drop(analysis *a, int64_t contact_id, const char *type);

struct analysis_stats {
	long flights;            /* in progress */
	long waiters;
	long generated, failed, coalesced;
	long stale_served;       /* replies from a stale entry */
	long refreshes;          /* background refreshes started by a stale reply */
	long change_refreshes;   /* background refreshes started by a change (viewed entries) */
	long refresh_failures;   /* of those, the ones that failed (the entry stays stale) */
	long revalidated;        /* refreshes whose inputs were unchanged: no model call */
	long saved_prompt_tokens, saved_completion_tokens;   /* what those calls would have cost */
	double saved_cost_usd;
	/* flights by what they wait on (together they are `flights`) */
	long starting;           /* created, not started yet */
	long l2_looking;         /* the L2 lookup is out */
	long l2_locking;         /* the key's lock is asked for, or another instance's result awaited */
	long fetching;           /* the context's named queries are out */
	long querying;           /* run(ctx): one of its own queries is out */
	long queued;             /* a model call waits for an upstream slot */
	long calling;            /* a model call is out */
};
void analysis_stats(const analysis *a, struct analysis_stats *out);
/* The L2 it uses, or NULL: for /readyz and /metrics. */
const l2 *analysis_l2(const analysis *a);

#endif
