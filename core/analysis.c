/*
 * analysis — flights and waiters: the pipeline from cache lookup to the
 * reply, with singleflight. See analysis.h for the stages. This file reads
 * in the order a request lives: start → cache → flight → context fan-out →
 * prompt(ctx) or run(ctx) → model gate → model call → validate/repair →
 * post → result → reply; cancel, orphan and destroy at the end.
 *
 * A flight's state is what it waits on, and flight_set_state() is the only
 * place that changes it (the legal moves are asserted there, the time spent
 * in each state and the per-state counts are kept there):
 *
 *   FL_START    created, first waiter attached; starts on the next loop tick
 *   FL_L2       the shared cache (Redis) is asked first, within its deadline
 *   FL_LOCK     the key's cross-instance lock is asked for, or another
 *               instance holds it and its result is awaited (l2_coord.h)
 *   FL_CONTEXT  the named queries are out (context.c, all at once)
 *   FL_QUERY    run(ctx): one of the script's own queries is out
 *   FL_QUEUED   a model call waits for an upstream slot (the limiter's queue)
 *   FL_LLM      a model call is out (prompt's, its one schema repair, or one
 *               of run(ctx)'s)
 *   FL_DONE     every waiter has its reply (or none is left); being freed
 *
 *   START → L2 | LOCK | CONTEXT | QUERY | QUEUED | LLM | DONE
 *   L2 → LOCK | CONTEXT | QUERY | QUEUED | LLM | DONE
 *   LOCK → CONTEXT | QUERY | QUEUED | LLM | DONE
 *   CONTEXT → QUERY | QUEUED | LLM | DONE      (START/L2/LOCK/CONTEXT never again)
 *   QUERY | QUEUED | LLM → QUERY | QUEUED | LLM | DONE
 *   DONE → nothing
 *
 * Every model call, the pipeline's and run(ctx)'s, goes through one gate:
 * model_call() takes the limiter slot, then the breaker's permission (and
 * the half-open trial) at the moment the call goes out, then arms the
 * first-token timer; gate_release() gives all of it back on every path
 * (answered, refused, timed out, cancelled, orphaned, shut down). A call
 * that waits in the queue holds no breaker trial.
 *
 * A waiter is one caller. It is unlinked when it gets its reply or when
 * analysis_wait_cancel() says the caller has gone; neither frees the flight.
 *
 * Freshness (DESIGN.md, "Cache and freshness"). A cached entry is fresh for
 * the type's ttl, then stale for its stale_ttl (the grace), then expired
 * (cache.h). A fresh entry is a hit. A stale one is answered at once
 * ("stale") and starts one background flight for its key — a flight with
 * no waiter, which no orphan policy cancels. Every flight that replaces an
 * entry carries a copy of it (its `prior`): once the context is fetched
 * and the prompt rendered, the request's SHA-256 fingerprint is compared
 * with the prior's, and when they match the entry is re-armed without a
 * model call ("revalidated"). A refresh that fails leaves the entry stale
 * (never an error cached, never re-armed) and no new one starts for
 * REFRESH_RETRY_MS. run(ctx) types keep no fingerprint (their later model
 * calls depend on earlier replies), so they are always regenerated.
 * RAPPORT_FRESHNESS=ttl turns grace and fingerprints off (the seed's
 * policy, for comparison).
 *
 * With an L2 (REDIS_URL), a flight that is not a forced refresh asks it
 * first (FL_L2): a fresh entry there fills L1 and answers ("hit", tier
 * l2); a stale one fills L1, answers the waiters at once ("stale") and the
 * flight goes on as that entry's background refresh; an expired one is
 * the flight's prior. Every result stored in L1 is written to L2 too.
 *
 * With nothing usable there, the flight claims the key across instances
 * (FL_LOCK, l2_coord.h) before generating, forced refreshes included (one
 * call across instances for them too; they skip only the L2 lookup): the
 * owner generates, relays its text through Redis and, once its result is
 * stored, tells the others; a flight that waits on another instance hands
 * the relayed text to its streaming waiters like its own model's text and
 * answers with the other's result ("coalesced", tier l2); when the owner
 * ends without a result (failed, died, lease lapsed) a waiter takes the
 * lock over and generates. The owner's failure is not handed to the other
 * instances' waiters: the cause may be its own (its breaker, its limiter,
 * its database connection), so the next instance tries, one at a time.
 * Redis slow or down: no lock, at worst a duplicate call.
 */
#include "analysis.h"
#include "context.h"
#include "fmt.h"
#include "jschema.h"
#include "l2_coord.h"
#include "log.h"
#include "util.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <openssl/evp.h>

#define NBUCKETS 1024
#define REFRESH_RETRY_MS 5000   /* after a failed refresh, before the next one */

enum flight_state { FL_START, FL_L2, FL_LOCK, FL_CONTEXT, FL_QUERY, FL_QUEUED, FL_LLM, FL_DONE,
                    FL_NSTATES };

static const char *const state_names[FL_NSTATES] = {
	"start", "l2", "lock", "context", "query", "queued", "llm", "done",
};

#define ST(s) (1u << (s))
#define ST_WORK (ST(FL_QUERY) | ST(FL_QUEUED) | ST(FL_LLM) | ST(FL_DONE))
static const unsigned legal_next[FL_NSTATES] = {
	[FL_START] = ST(FL_L2) | ST(FL_LOCK) | ST(FL_CONTEXT) | ST_WORK,
	[FL_L2] = ST(FL_LOCK) | ST(FL_CONTEXT) | ST_WORK,
	[FL_LOCK] = ST(FL_CONTEXT) | ST_WORK,
	[FL_CONTEXT] = ST_WORK,
	[FL_QUERY] = ST_WORK,
	[FL_QUEUED] = ST_WORK,
	[FL_LLM] = ST_WORK,
	[FL_DONE] = 0,
};

struct analysis_wait {
	struct flight *f;
	analysis_reply_cb *cb;
	analysis_delta_cb *on_delta;
	void *arg;
	double t_start;
	const char *cache_status;     /* "miss" for the first, then "coalesced" */
	bool warm;                    /* a warm item: waits for the refresh, never served stale */
	TAILQ_ENTRY(analysis_wait) link;
};

/* The cached result a refresh may re-arm instead of calling the model: a
 * copy, since the entry itself may be evicted while the flight runs. */
struct prior {
	char *prefix;
	size_t len;
	char *etag;
	int64_t created_wall_ms;
	struct cache_meta meta;
};

struct flight {
	analysis *a;
	enum flight_state state;      /* only flight_set_state() writes it */
	double state_since;           /* when the current state began */
	double state_ms[FL_NSTATES];  /* time spent in each state so far */
	char *key;
	uint64_t hash;
	struct flight *chain;
	int64_t contact_id;
	bool stale;                   /* the data changed under us: don't cache */
	bool repaired;                /* the one schema repair attempt is used */
	bool background;              /* a stale entry's refresh: no orphan cancel */
	bool interactive;             /* someone waits at a screen: the front lane */
	bool forced;                  /* a forced refresh is among the waiters: no cache answers */
	l2_get *l2get;                /* FL_L2: the lookup */
	double l2_t0;                 /* when the L2 step began: the lock shares its deadline */
	l2_claim *claim;              /* FL_LOCK: the claim; later: the lock we own */
	struct prior *prior;          /* NULL: no revalidation, the model is called */
	unsigned char fp[CACHE_FP_LEN];   /* the fingerprint of the model request */
	bool has_fp;
	script *s;
	script_run *run;
	TAILQ_HEAD(, analysis_wait) waiters;
	struct event *start_ev;
	struct event *orphan_ev;      /* deferred cancel when no one waits */
	struct ctx_fetch *ctx;        /* FL_CONTEXT: the named queries */
	db_query *query;              /* FL_QUERY: run(ctx)'s query */
	/* The model call and what the gate holds for it. */
	json_t *request;              /* the chat request (kept for a repair) */
	limiter_waiter lw;            /* our place in the upstream limiter */
	bool probe;                   /* our call is the breaker's half-open trial */
	llm_call *llm;
	struct event *first_token_ev; /* armed until the first text arrives */
	double t_sent;
	char *text;                   /* the model's text so far, for joiners */
	size_t text_len, text_cap;
	double script_ms, llm_ms;
	char model[96];               /* run(ctx): the model of its last call */
	long prompt_tokens, completion_tokens;
	double cost_usd;
};

struct analysis {
	struct analysis_deps d;
	struct flight *buckets[NBUCKETS];
	struct analysis_stats st;
	long in_state[FL_NSTATES];
};

/* The outcome of a flight, shared by all its waiters. */
struct outcome {
	int status;
	const char *code;
	const char *message;
	const char *prefix;           /* body without cache/timings; 200 only */
	size_t prefix_len;
	const char *etag;
	int64_t created_wall_ms;
	double remaining_ms;
	const char *cache_status;     /* overrides the waiter's ("fallback", "revalidated", "hit") */
	const char *tier;             /* "l2" for an answer from the shared cache */
	int retry_after_s;
};

/* Why the gate sent no call. */
enum gate_refusal { GATE_BREAKER, GATE_FULL };
/* What a finished call tells the breaker. */
enum gate_verdict { GATE_NO_VERDICT, GATE_HEALTHY, GATE_FAILING };

static void flight_start(evutil_socket_t fd, short what, void *arg);
static void on_context(void *arg, const struct ctx_result *r);
static void context_ready(struct flight *f);
static void prompt_begin(struct flight *f);
static void run_begin(struct flight *f);
static void run_advance(struct flight *f, enum script_step st, const struct script_wait *w,
                        json_t *result, const char *err);
static void model_call(struct flight *f);
static void flight_promote(struct flight *f);
static void model_refused(struct flight *f, enum gate_refusal why);
static void gate_release(struct flight *f, enum gate_verdict v);
static void model_answered(struct flight *f, const struct llm_result *res);
static void prompt_reply(struct flight *f, const struct llm_result *res);
static void run_reply(struct flight *f, const struct llm_result *res);
static void succeed(struct flight *f, json_t *result, const char *model, bool fallback);
static void serve_fallback(struct flight *f, int retry_after_s, const char *why);
static void finish(struct flight *f, const struct outcome *o);
static void fail_retry(struct flight *f, int status, const char *code, const char *text,
                       int retry_after_s);
static void fail(struct flight *f, int status, const char *code, const char *message);
static void deliver(analysis_reply_cb *cb, void *arg, struct analysis_reply *r,
                    const char *prefix, size_t prefix_len);
static void reply_error(analysis_reply_cb *cb, void *arg, int64_t contact_id, const char *type,
                        int status, const char *code, const char *message);
static struct flight **flight_slot(analysis *a, const char *key, uint64_t h);
static void flight_free(struct flight *f);
static void revalidate(struct flight *f);
static void on_remote_drop(void *arg, int64_t contact_id, const char *type);

/* ---- the flight's state ------------------------------------------------- */

/* The one place a flight changes state (as PgBouncer's change_client_state):
 * the move is checked, the time in the old state and the per-state counts
 * are kept, and the move is logged at debug level. */
static void
flight_set_state(struct flight *f, enum flight_state to)
{
	analysis *a = f->a;
	enum flight_state from = f->state;
	assert(legal_next[from] & ST(to));
	assert(to != FL_QUERY || script_info(f->s)->has_run);
	double now = util_now_ms();
	double ms = now - f->state_since;
	f->state_ms[from] += ms;
	f->state = to;
	f->state_since = now;
	a->in_state[from]--;
	a->in_state[to]++;
	log_event(LOG_DEBUG, "flight state", LOG_S("type", script_info(f->s)->name),
	          LOG_I("contact", f->contact_id), LOG_S("from", state_names[from]),
	          LOG_S("to", state_names[to]), LOG_N("ms", ms), LOG_END);
}

/* ---- start: type, cache, flight ----------------------------------------- */

analysis *
analysis_create(const struct analysis_deps *deps)
{
	analysis *a = xcalloc(1, sizeof *a);
	a->d = *deps;
	if (!(a->d.ttl_scale > 0))
		a->d.ttl_scale = 1;
	if (a->d.l2)
		l2_set_drop_handler(a->d.l2, on_remote_drop, a);
	return a;
}

static struct flight *
flight_new(analysis *a, const char *key, uint64_t h, int64_t contact_id, script *s)
{
	struct flight *f = xcalloc(1, sizeof *f);
	f->a = a;
	f->state = FL_START;
	f->state_since = util_now_ms();
	f->key = xstrdup(key);
	f->hash = h;
	f->contact_id = contact_id;
	f->s = s;
	script_ref(s);
	f->prompt_tokens = f->completion_tokens = -1;
	TAILQ_INIT(&f->waiters);
	a->st.flights++;
	a->in_state[FL_START]++;
	/* Start on the next tick, so cb never runs inside analysis_get for a
	 * miss and the caller can keep the handle. */
	f->start_ev = evtimer_new(a->d.base, flight_start, f);
	struct timeval zero = { 0, 0 };
	evtimer_add(f->start_ev, &zero);
	return f;
}

/* The type's lifetimes as this server applies them. */
static double
type_ttl(const analysis *a, const struct script_info *si)
{
	return si->ttl_ms * a->d.ttl_scale;
}

static double
type_grace(const analysis *a, const struct script_info *si)
{
	return a->d.ttl_only ? 0 : si->stale_ttl_ms * a->d.ttl_scale;
}

/* The flight may re-arm e instead of calling the model, if its inputs
 * turn out unchanged. */
static void
flight_set_prior_from(struct flight *f, const char *body, size_t len, const char *etag,
                      int64_t created_wall_ms, const struct cache_meta *meta)
{
	if (f->a->d.ttl_only || !meta->has_fingerprint || f->prior || f->forced)
		return;
	struct prior *p = xcalloc(1, sizeof *p);
	p->prefix = xstrndup(body, len);
	p->len = len;
	p->etag = xstrdup(etag);
	p->created_wall_ms = created_wall_ms;
	p->meta = *meta;
	f->prior = p;
}

static void
flight_set_prior(struct flight *f, const struct cache_entry *e)
{
	flight_set_prior_from(f, e->body, e->body_len, e->etag, e->created_wall_ms, &e->meta);
}

static void
flight_drop_prior(struct flight *f)
{
	if (!f->prior)
		return;
	free(f->prior->prefix);
	free(f->prior->etag);
	free(f->prior);
	f->prior = NULL;
}

/* The entry a flight stored was made for a person (a click), or for a
 * warm item under refresh_warmed (the warm job's guess of who will look):
 * a change to its contact refreshes it (analysis_refresh_viewed). A stale
 * entry's own refresh keeps the mark the entry had. */
static void
note_view(struct flight *f, const struct cache_entry *e)
{
	if (e && (f->interactive || (f->a->d.refresh_warmed && !f->background)))
		cache_viewed(f->a->d.cache, e, util_now_ms());
}

/* An answer from the cache, at once: a hit or a stale entry. */
static void
reply_cached(analysis *a, const struct script_info *si, const struct cache_entry *e,
             bool stale, double t_start, analysis_reply_cb *cb, void *arg)
{
	double age = (double)(util_wall_ms() - e->created_wall_ms);
	struct analysis_reply r = {
		.status = 200, .etag = e->etag, .cache_status = stale ? "stale" : "hit", .tier = "l1",
		.contact_id = e->contact_id, .type = si->name, .version = si->version,
		.age_ms = age < 0 ? 0 : age, .ttl_ms = type_ttl(a, si), .grace_ms = type_grace(a, si),
		.remaining_ms = (stale ? e->expires_ms : e->fresh_until_ms) - t_start,
		.prompt_tokens = -1, .completion_tokens = -1,
	};
	r.total_ms = util_now_ms() - t_start;
	deliver(cb, arg, &r, e->body, e->body_len);
}

/* The cache key of (contact, type, current script version): "%lld:%s:%s"
 * without printf, since every hit builds it (see fmt.h). */
#define ANALYSIS_KEY_MAX 160
static void
analysis_key(char key[ANALYSIS_KEY_MAX], int64_t contact_id, const struct script_info *si)
{
	size_t nl = strlen(si->name), vl = strlen(si->version);
	if (nl + vl + 2 + FMT_NUM_MAX < ANALYSIS_KEY_MAX) {
		size_t k = fmt_i64(key, contact_id);
		key[k++] = ':';
		memcpy(key + k, si->name, nl);
		k += nl;
		key[k++] = ':';
		memcpy(key + k, si->version, vl + 1);
	} else {
		snprintf(key, ANALYSIS_KEY_MAX, "%lld:%s:%s", (long long)contact_id, si->name,
		         si->version);
	}
}

analysis_wait *
analysis_get(analysis *a, int64_t contact_id, const char *type, int flags,
             analysis_reply_cb *cb, analysis_delta_cb *on_delta, void *arg)
{
	double t_start = util_now_ms();
	script *s = script_registry_get(a->d.scripts, type);
	if (!s) {
		if (flags & ANALYSIS_JOIN)
			return NULL;
		char msg[160];
		snprintf(msg, sizeof msg, "unknown analysis type '%.64s' (see /v1/analysis-types)", type);
		reply_error(cb, arg, contact_id, type, 404, "unknown_analysis_type", msg);
		return NULL;
	}
	const struct script_info *si = script_info(s);
	char key[ANALYSIS_KEY_MAX];
	analysis_key(key, contact_id, si);

	uint64_t h = util_fnv1a(UTIL_FNV_SEED, key, strlen(key));
	struct flight **slot = flight_slot(a, key, h);
	struct flight *f = *slot;
	if ((flags & ANALYSIS_JOIN) && !f)
		return NULL;

	const struct cache_entry *e = NULL;
	enum cache_state st = CACHE_EXPIRED;
	if (!(flags & (ANALYSIS_REFRESH | ANALYSIS_JOIN)))
		e = cache_lookup(a->d.cache, key, t_start, &st);
	if (e && st == CACHE_FRESH) {
		if (!(flags & ANALYSIS_WARM))
			cache_viewed(a->d.cache, e, t_start);
		reply_cached(a, si, e, false, t_start, cb, arg);
		return NULL;
	}
	if (e && st == CACHE_STALE && !(flags & ANALYSIS_WARM)) {
		/* Answered at once; one refresh for the key, however many see
		 * it stale (a flight in progress is that refresh). */
		if (!f && t_start >= e->refresh_after_ms) {
			f = *slot = flight_new(a, key, h, contact_id, s);
			f->background = true;
			flight_set_prior(f, e);
			a->st.refreshes++;
		}
		a->st.stale_served++;
		cache_viewed(a->d.cache, e, t_start);
		reply_cached(a, si, e, true, t_start, cb, arg);
		return NULL;
	}

	struct analysis_wait *w = xcalloc(1, sizeof *w);
	w->cb = cb;
	w->on_delta = on_delta;
	w->arg = arg;
	w->t_start = t_start;
	bool promote = false;
	w->warm = flags & ANALYSIS_WARM;
	if (f) {
		w->cache_status = "coalesced";
		a->st.coalesced++;
		promote = !(flags & ANALYSIS_WARM) && !f->interactive;
	} else {
		f = *slot = flight_new(a, key, h, contact_id, s);
		f->interactive = !(flags & ANALYSIS_WARM);
		if (e)
			flight_set_prior(f, e);   /* stale (a warm item) or past its grace */
		w->cache_status = "miss";
	}
	/* A forced refresh wants a new result: not a re-armed one, not one
	 * from the L2. */
	if (flags & ANALYSIS_REFRESH) {
		f->forced = true;
		flight_drop_prior(f);
	}
	w->f = f;
	TAILQ_INSERT_TAIL(&f->waiters, w, link);
	a->st.waiters++;
	if (promote)
		flight_promote(f);       /* after w is in: gate_go may call back later */
	return w;
}

static struct flight **
flight_slot(analysis *a, const char *key, uint64_t h)
{
	struct flight **pp = &a->buckets[h % NBUCKETS];
	while (*pp && ((*pp)->hash != h || strcmp((*pp)->key, key) != 0))
		pp = &(*pp)->chain;
	return pp;
}

/* ---- context fan-out ---------------------------------------------------- */

static void flight_fetch(struct flight *f);
static void flight_claim(struct flight *f);
static void on_l2(void *arg, const struct l2_found *found);

static void
flight_start(evutil_socket_t fd, short what, void *arg)
{
	struct flight *f = arg;
	event_free(f->start_ev);
	f->start_ev = NULL;
	f->l2_t0 = util_now_ms();
	if (f->a->d.l2 && !f->forced) {
		f->l2get = l2_get_start(f->a->d.l2, f->key, f->contact_id, on_l2, f);
		if (f->l2get) {
			flight_set_state(f, FL_L2);
			return;
		}
	}
	flight_claim(f);
}

/* Text of this flight's generation (its model's, or relayed from the
 * instance that owns the key): kept for callers that join later and handed
 * to every streaming waiter. text NULL: what was written is void (a schema
 * repair, or another owner). The next waiter is taken before the callback,
 * which may cancel its own waiter. */
static void
flight_text(struct flight *f, const char *text, size_t len)
{
	if (!text) {
		f->text_len = 0;
	} else {
		if (f->text_len + len + 1 > f->text_cap) {
			f->text_cap = (f->text_len + len + 1) * 2;
			f->text = xrealloc(f->text, f->text_cap);
		}
		memcpy(f->text + f->text_len, text, len);
		f->text_len += len;
		f->text[f->text_len] = '\0';
	}
	struct analysis_wait *w, *next;
	for (w = TAILQ_FIRST(&f->waiters); w; w = next) {
		next = TAILQ_NEXT(w, link);
		if (w->on_delta)
			w->on_delta(w->arg, text, len);
	}
}

static void
on_relay(void *arg, const char *text, size_t len)
{
	flight_text(arg, text, len);
}

/* The claim's answer: generate (ours, or no lock to be had), or the other
 * instance's result. */
static void
on_claim(void *arg, enum l2_claim_outcome o, const struct l2_found *found)
{
	struct flight *f = arg;
	analysis *a = f->a;
	if (o != L2_CLAIM_OWNER)
		f->claim = NULL;         /* over: l2_coord frees it */
	if (o != L2_CLAIM_RESULT) {
		flight_fetch(f);
		return;
	}
	const struct script_info *si = script_info(f->s);
	const struct l2_value *v = &found->v;
	note_view(f, cache_put(a->d.cache, f->key, f->contact_id, si->name, v->body, v->body_len,
	                       v->etag, v->created_wall_ms, util_now_ms(), found->fresh_left_ms,
	                       v->grace_ms, &v->meta));
	struct outcome out = {
		.status = 200, .prefix = v->body, .prefix_len = v->body_len, .etag = v->etag,
		.created_wall_ms = v->created_wall_ms, .remaining_ms = found->fresh_left_ms,
		.cache_status = "coalesced", .tier = "l2",
	};
	finish(f, &out);
}

/* Nothing usable in the L2: claim the key across instances first. */
static void
flight_claim(struct flight *f)
{
	f->claim = l2_claim_start(f->a->d.l2, f->key, f->contact_id, f->forced, f->l2_t0,
	                          on_claim, on_relay, f);
	if (f->claim) {
		flight_set_state(f, FL_LOCK);
		return;
	}
	flight_fetch(f);
}

/* Replies "stale" to every waiter but warm items (they wait for the
 * refresh), without ending the flight, which goes on as the entry's
 * background refresh. */
static void
reply_waiters_stale(struct flight *f, const struct cache_entry *e)
{
	analysis *a = f->a;
	const struct script_info *si = script_info(f->s);
	/* Taken off first: a streaming caller joins this flight again from
	 * inside its callback, and must not be answered stale twice. */
	TAILQ_HEAD(, analysis_wait) answered = TAILQ_HEAD_INITIALIZER(answered);
	struct analysis_wait *w, *next;
	for (w = TAILQ_FIRST(&f->waiters); w; w = next) {
		next = TAILQ_NEXT(w, link);
		if (!w->warm) {
			TAILQ_REMOVE(&f->waiters, w, link);
			TAILQ_INSERT_TAIL(&answered, w, link);
		}
	}
	f->background = true;
	a->st.refreshes++;
	while ((w = TAILQ_FIRST(&answered))) {
		TAILQ_REMOVE(&answered, w, link);
		a->st.waiters--;
		a->st.stale_served++;
		double age = (double)(util_wall_ms() - e->created_wall_ms);
		struct analysis_reply r = {
			.status = 200, .etag = e->etag, .cache_status = "stale", .tier = "l2",
			.contact_id = f->contact_id, .type = si->name, .version = si->version,
			.age_ms = age > 0 ? age : 0, .ttl_ms = type_ttl(a, si),
			.grace_ms = type_grace(a, si), .remaining_ms = e->expires_ms - util_now_ms(),
			.prompt_tokens = -1, .completion_tokens = -1,
			.total_ms = util_now_ms() - w->t_start,
		};
		deliver(w->cb, w->arg, &r, e->body, e->body_len);
		free(w);
	}
}

/* What the shared cache has for the key, if anything, within its deadline. */
static void
on_l2(void *arg, const struct l2_found *found)
{
	struct flight *f = arg;
	analysis *a = f->a;
	const struct script_info *si = script_info(f->s);
	f->l2get = NULL;
	if (found && !f->forced) {
		const struct l2_value *v = &found->v;
		double now = util_now_ms();
		if (found->state == CACHE_FRESH) {
			note_view(f, cache_put(a->d.cache, f->key, f->contact_id, si->name, v->body,
			                       v->body_len, v->etag, v->created_wall_ms, now,
			                       found->fresh_left_ms, v->grace_ms, &v->meta));
			struct outcome o = {
				.status = 200, .prefix = v->body, .prefix_len = v->body_len, .etag = v->etag,
				.created_wall_ms = v->created_wall_ms, .remaining_ms = found->fresh_left_ms,
				.cache_status = "hit", .tier = "l2",
			};
			finish(f, &o);
			return;
		}
		if (found->state == CACHE_STALE) {
			const struct cache_entry *e =
			        cache_put(a->d.cache, f->key, f->contact_id, si->name, v->body, v->body_len,
			                  v->etag, v->created_wall_ms, now, 0, found->grace_left_ms, &v->meta);
			if (e) {
				note_view(f, e);
				flight_set_prior(f, e);
				reply_waiters_stale(f, e);
			}
		} else {
			flight_set_prior_from(f, v->body, v->body_len, v->etag, v->created_wall_ms,
			                      &v->meta);
		}
	}
	flight_claim(f);
}

/* The context: the script's named queries, all at once. */
static void
flight_fetch(struct flight *f)
{
	char now[40];
	util_iso8601(util_wall_ms(), now, sizeof now);
	double t0 = util_now_ms();
	f->run = script_run_new(f->s, f->contact_id, now);
	f->script_ms += util_now_ms() - t0;
	f->ctx = ctx_fetch(f->a->d.db, f->s, f->run, f->contact_id, on_context, f);
	if (!f->ctx) {
		context_ready(f);       /* the script has no queries */
		return;
	}
	flight_set_state(f, FL_CONTEXT);
}

static void
on_context(void *arg, const struct ctx_result *r)
{
	struct flight *f = arg;
	const struct script_info *si = script_info(f->s);
	f->ctx = NULL;            /* freed after this callback */
	char msg[1400];
	switch (r->status) {
	case CTX_OK:
		context_ready(f);
		return;
	case CTX_DB_UNAVAILABLE:
		/* The pool's message says it all ("database unreachable
		 * (refused): … — what to check"); wrapping it would repeat it. */
		snprintf(msg, sizeof msg, "%s", r->message);
		fail_retry(f, 503, "database_unavailable", msg, 1);
		return;
	case CTX_QUERY_FAILED:
		snprintf(msg, sizeof msg, "query '%s' of script %s failed: %s%s%s%s", r->query->name,
		         si->name, r->message, r->sqlstate ? " (SQLSTATE " : "",
		         r->sqlstate ? r->sqlstate : "", r->sqlstate ? ")" : "");
		fail(f, 500, "query_failed", msg);
		return;
	case CTX_SCRIPT_ERROR:
		fail(f, 500, "script_error", r->message);
		return;
	}
}

/* The context is complete: the script's prompt or its run takes over. */
static void
context_ready(struct flight *f)
{
	if (script_run_contact_missing(f->run)) {
		char msg[96];
		snprintf(msg, sizeof msg, "contact %lld not found", (long long)f->contact_id);
		fail(f, 404, "contact_not_found", msg);
		return;
	}
	if (script_info(f->s)->has_run)
		run_begin(f);
	else
		prompt_begin(f);
}

/* ---- prompt(ctx) -------------------------------------------------------- */

static void
prompt_begin(struct flight *f)
{
	char err[1024];
	double t0 = util_now_ms();
	json_t *req = script_run_request(f->run, err, sizeof err);
	f->script_ms += util_now_ms() - t0;
	if (!req) {
		fail(f, 500, "script_error", err);
		return;
	}
	f->request = req;
	/* What is sent to the model, exactly: messages, model, temperature,
	 * max tokens, the schema. Keys sorted, so the order a script builds
	 * its tables in does not matter. The ttl policy never compares
	 * fingerprints: no second encoding of the request then. */
	if (!f->a->d.ttl_only) {
		char *text = json_dumps(req, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
		f->has_fp = text &&
		            EVP_Digest(text, strlen(text), f->fp, NULL, EVP_sha256(), NULL) == 1;
		free(text);
	}
	if (f->has_fp && f->prior && !f->stale &&
	    memcmp(f->prior->meta.fingerprint, f->fp, CACHE_FP_LEN) == 0) {
		revalidate(f);
		return;
	}
	model_call(f);
}

/* The inputs are what they were: the prior result is fresh again, and the
 * call it would have cost is counted as saved. */
static void
revalidate(struct flight *f)
{
	analysis *a = f->a;
	const struct script_info *si = script_info(f->s);
	struct prior *p = f->prior;
	double now = util_now_ms(), ttl = type_ttl(a, si), grace = type_grace(a, si);
	const struct cache_entry *e = cache_rearm(a->d.cache, f->key, now, ttl, grace);
	if (!e)
		e = cache_put(a->d.cache, f->key, f->contact_id, si->name, p->prefix, p->len,
		              p->etag, p->created_wall_ms, now, ttl, grace, &p->meta);
	note_view(f, e);
	struct l2_value v = {
		.body = p->prefix, .body_len = p->len, .etag = p->etag,
		.created_wall_ms = p->created_wall_ms, .validated_wall_ms = util_wall_ms(),
		.ttl_ms = ttl, .grace_ms = grace, .meta = p->meta,
	};
	if (l2_put(a->d.l2, f->key, f->contact_id, &v))
		l2_claim_stored(f->claim);
	a->st.revalidated++;
	if (p->meta.prompt_tokens > 0)
		a->st.saved_prompt_tokens += p->meta.prompt_tokens;
	if (p->meta.completion_tokens > 0)
		a->st.saved_completion_tokens += p->meta.completion_tokens;
	a->st.saved_cost_usd += p->meta.cost_usd;
	log_event(LOG_INFO, "revalidated", LOG_S("type", si->name), LOG_I("contact", f->contact_id),
	          LOG_S("why", "the model request is unchanged"), LOG_END);
	struct outcome o = {
		.status = 200, .prefix = p->prefix, .prefix_len = p->len, .etag = p->etag,
		.created_wall_ms = p->created_wall_ms, .remaining_ms = ttl,
		.cache_status = "revalidated",
	};
	finish(f, &o);
}

/* ---- run(ctx): the script drives its own queries and model calls -------- */

static void
run_begin(struct flight *f)
{
	struct script_wait w;
	json_t *result;
	char e[1024];
	double t0 = util_now_ms();
	enum script_step st = script_run_start(f->run, &w, &result, e, sizeof e);
	f->script_ms += util_now_ms() - t0;
	run_advance(f, st, &w, result, e);
}

static void
on_run_query(void *arg, const PGresult *res, const struct db_error *err)
{
	struct flight *f = arg;
	f->query = NULL;
	struct script_wait w;
	json_t *result;
	char e[1024];
	double t0 = util_now_ms();
	enum script_step st = script_run_resume_rows(f->run, res, err ? err->message : NULL, &w,
	                                             &result, e, sizeof e);
	f->script_ms += util_now_ms() - t0;
	run_advance(f, st, &w, result, e);
}

/* Does what the script waits for, or finishes. Each step is one query or
 * one model call, on the loop like everything else; the model calls pass
 * the same gate as the pipeline's own. */
static void
run_advance(struct flight *f, enum script_step st, const struct script_wait *w,
            json_t *result, const char *err)
{
	switch (st) {
	case SCRIPT_DONE:
		succeed(f, result, f->model[0] ? f->model : NULL, false);
		return;
	case SCRIPT_ERROR:
		fail(f, 500, "script_error", err);
		return;
	case SCRIPT_WAIT_QUERY:
		flight_set_state(f, FL_QUERY);
		/* The script's own SQL: its session is reset before reuse. */
		f->query = db_query_send_adhoc(f->a->d.db, w->sql, w->nparams, w->params,
		                               on_run_query, f);
		return;
	case SCRIPT_WAIT_CHAT:
		json_decref(f->request);
		f->request = json_incref(w->request);
		model_call(f);
		return;
	}
}

/* ---- model gate ----------------------------------------------------------
 * In order, for every model call:
 *   1. the breaker is only asked (breaker_retry_after_ms, nothing taken):
 *      open, or half-open with its trial out, refuses at once rather than
 *      queueing a call that could not go;
 *   2. a limiter slot: at once, or a place in the queue, or refused (429);
 *   3. with the slot in hand, breaker_allow() for real, which takes the
 *      half-open trial (f->probe) the moment the call goes out, so a queued
 *      call never holds the trial and a verdict that came in meanwhile is
 *      heard;
 *   4. the call, with its first-token timer (model_send).
 * gate_release() undoes whichever of these were done, once per call. */

static void model_send(struct flight *f);

/* The slot is ours (at once, or from the queue inside limiter_release):
 * the breaker decides now. */
static void
gate_go(struct flight *f)
{
	analysis *a = f->a;
	double now = util_now_ms();
	bool half_open = breaker_state(a->d.breaker, now) == BREAKER_HALF_OPEN;
	if (!breaker_allow(a->d.breaker, now)) {
		gate_release(f, GATE_NO_VERDICT);
		model_refused(f, GATE_BREAKER);
		return;
	}
	f->probe = half_open;
	model_send(f);
}

static void
on_gate_slot(void *arg)
{
	gate_go(arg);
}

/* f->request goes to the model, through the gate. */
static void
model_call(struct flight *f)
{
	analysis *a = f->a;
	double now = util_now_ms();
	if (breaker_retry_after_ms(a->d.breaker, now) > 0) {
		model_refused(f, GATE_BREAKER);
		return;
	}
	/* Refreshes and warm items take the background lane, so a night's
	 * warm job never makes a click wait for a slot. */
	enum limiter_verdict v = f->interactive
		? limiter_acquire(a->d.limiter, &f->lw, on_gate_slot, f, now)
		: limiter_acquire_background(a->d.limiter, &f->lw, on_gate_slot, f, now);
	switch (v) {
	case LIMITER_GO:
		gate_go(f);
		return;
	case LIMITER_QUEUED:
		flight_set_state(f, FL_QUEUED);
		return;
	case LIMITER_FULL:
		model_refused(f, GATE_FULL);
		return;
	}
}

/* A click joined a flight queued in the background lane: it moves to the
 * front lane's tail. Should that queue be full it keeps its background
 * place instead (re-queued at that lane's tail, which has room since we
 * just left it), so a join never fails a flight others wait on. */
static void
flight_promote(struct flight *f)
{
	analysis *a = f->a;
	f->interactive = true;
	if (f->state != FL_QUEUED || !f->lw.background)
		return;
	double now = util_now_ms();
	limiter_cancel(a->d.limiter, &f->lw);
	switch (limiter_acquire(a->d.limiter, &f->lw, on_gate_slot, f, now)) {
	case LIMITER_GO:
		gate_go(f);
		return;
	case LIMITER_QUEUED:
		return;
	case LIMITER_FULL:
		if (limiter_acquire_background(a->d.limiter, &f->lw, on_gate_slot, f, now) == LIMITER_GO)
			gate_go(f);
		return;
	}
}

/* Gives back what the gate holds for f's call, wherever it stands: the
 * timer; the verdict to the breaker when the call was answered, or the
 * half-open trial when it never will be; the queue place or the slot. The
 * verdict goes first, so a queued call handed the slot below asks a
 * breaker that knows. A no-op when nothing is held. */
static void
gate_release(struct flight *f, enum gate_verdict v)
{
	analysis *a = f->a;
	double now = util_now_ms();
	if (f->first_token_ev) {
		event_free(f->first_token_ev);
		f->first_token_ev = NULL;
	}
	if (v != GATE_NO_VERDICT)
		breaker_record(a->d.breaker, v == GATE_HEALTHY, now);
	else if (f->probe)
		breaker_forget(a->d.breaker, now);
	f->probe = false;
	limiter_cancel(a->d.limiter, &f->lw);
	limiter_release(a->d.limiter, &f->lw, now);
}

/* No call went out (nothing is held any more). The pipeline answers with
 * the fallback or an error; run(ctx) hears it as llm.chat's error and may
 * have a plan B. */
static void
model_refused(struct flight *f, enum gate_refusal why)
{
	analysis *a = f->a;
	double now = util_now_ms();
	if (script_info(f->s)->has_run) {
		const char *refused = why == GATE_BREAKER
		        ? "upstream_unavailable: calls are paused (circuit breaker open)"
		        : "overloaded: too many model calls are waiting";
		struct script_wait w;
		json_t *result;
		char e[1024];
		double t0 = util_now_ms();
		enum script_step st = script_run_resume_reply(f->run, NULL, NULL, NULL, -1, -1, refused,
		                                              &w, &result, e, sizeof e);
		f->script_ms += util_now_ms() - t0;
		run_advance(f, st, &w, result, e);
		return;
	}
	if (why == GATE_FULL) {
		fail_retry(f, 429, "overloaded", "too many analyses are waiting for the model; retry later",
		           limiter_retry_after_s(a->d.limiter));
		return;
	}
	int ra = (int)((breaker_retry_after_ms(a->d.breaker, now) + 999) / 1000);
	serve_fallback(f, ra > 0 ? ra : 1,
	               "the model provider is failing; calls are paused (circuit breaker open)");
}

/* ---- model call --------------------------------------------------------- */

static void on_llm_delta(void *arg, const char *text, size_t len);
static void on_llm_done(void *arg, const struct llm_result *res);
static void on_first_token_timeout(evutil_socket_t fd, short what, void *arg);

/* Always streamed from upstream: a streaming caller may join at any moment
 * and must get the text written so far, then the rest live. */
static void
model_send(struct flight *f)
{
	analysis *a = f->a;
	flight_set_state(f, FL_LLM);
	f->t_sent = util_now_ms();
	f->llm = llm_chat(a->d.llm, f->request, a->d.llm_timeout_ms, on_llm_delta, on_llm_done, f);
	if (a->d.llm_first_token_ms > 0) {
		struct timeval tv = { a->d.llm_first_token_ms / 1000,
		                      (a->d.llm_first_token_ms % 1000) * 1000 };
		f->first_token_ev = evtimer_new(a->d.base, on_first_token_timeout, f);
		evtimer_add(f->first_token_ev, &tv);
	}
}

/* The model's text: to this instance's waiters and, when we own the key,
 * to the other instances' (flight_text). */
static void
on_llm_delta(void *arg, const char *text, size_t len)
{
	struct flight *f = arg;
	if (f->first_token_ev) {
		event_free(f->first_token_ev);
		f->first_token_ev = NULL;
	}
	l2_claim_delta(f->claim, text, len);    /* other instances' waiters */
	flight_text(f, text, len);
}

/* Whether this outcome says something about the upstream's health: a 4xx
 * other than 408/429 is our request's fault, not the provider's. */
static bool
upstream_healthy(const struct llm_result *res)
{
	if (res->status == LLM_OK)
		return true;
	if (res->status == LLM_ERR_HTTP && res->http_status >= 400 && res->http_status < 500)
		return res->http_status != 408 && res->http_status != 429;
	return false;
}

static void
on_llm_done(void *arg, const struct llm_result *res)
{
	struct flight *f = arg;
	f->llm = NULL;            /* the client frees the call after this */
	limiter_observe(f->a->d.limiter, &f->lw, &res->rate, util_now_ms());
	gate_release(f, upstream_healthy(res) ? GATE_HEALTHY : GATE_FAILING);
	model_answered(f, res);
}

/* The model has not written a word in time: a stalled stream is ended
 * early instead of holding every waiter until the overall deadline. It
 * counts as a timeout, for the breaker and for whoever asked. */
static void
on_first_token_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct flight *f = arg;
	event_free(f->first_token_ev);
	f->first_token_ev = NULL;
	llm_cancel(f->llm);
	f->llm = NULL;
	char msg[128];
	snprintf(msg, sizeof msg, "the model sent no text within %ld ms", f->a->d.llm_first_token_ms);
	struct llm_result res = {
		.status = LLM_ERR_TIMEOUT, .content = "", .prompt_tokens = -1,
		.completion_tokens = -1, .error_message = msg, .attempts = 1,
		.elapsed_ms = util_now_ms() - f->t_sent,
	};
	gate_release(f, GATE_FAILING);
	model_answered(f, &res);
}

static void
add_usage(struct flight *f, const struct llm_result *res)
{
	const struct script_info *si = script_info(f->s);
	if (res->prompt_tokens >= 0)
		f->prompt_tokens = (f->prompt_tokens > 0 ? f->prompt_tokens : 0) + res->prompt_tokens;
	if (res->completion_tokens >= 0)
		f->completion_tokens = (f->completion_tokens > 0 ? f->completion_tokens : 0) +
		                       res->completion_tokens;
	f->cost_usd += acct_record(f->a->d.acct, si->name, res->model ? res->model : si->model,
	                           res->prompt_tokens, res->completion_tokens);
}

/* The gate is released; the answer goes to whoever asked. */
static void
model_answered(struct flight *f, const struct llm_result *res)
{
	f->llm_ms += res->elapsed_ms;
	add_usage(f, res);
	if (script_info(f->s)->has_run)
		run_reply(f, res);
	else
		prompt_reply(f, res);
}

/* ---- validate / repair -------------------------------------------------- */

/* Asks the model once to fix a reply that broke the schema: the bad reply
 * and the validator's message go back as the next turns. */
static void
repair(struct flight *f, const char *content, const char *problem)
{
	json_t *req = json_deep_copy(f->request);
	json_t *msgs = json_object_get(req, "messages");
	json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "assistant", "content", content));
	char text[1400];
	snprintf(text, sizeof text,
	         "That reply does not match the required JSON schema: %s. Reply again with only "
	         "the complete, corrected JSON object.", problem);
	json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", text));
	json_decref(f->request);
	f->request = req;
	f->repaired = true;
	/* What was streamed so far is the rejected reply: streaming callers
	 * are told to drop it (a NULL delta), joiners start from nothing. */
	l2_claim_delta(f->claim, NULL, 0);
	flight_text(f, NULL, 0);
	log_event(LOG_INFO, "schema repair attempt", LOG_S("type", script_info(f->s)->name),
	          LOG_I("contact", f->contact_id), LOG_S("problem", problem), LOG_END);
	model_call(f);
}

static void prompt_post(struct flight *f, const struct llm_result *res);

/* The pipeline's model reply: an error status, a refusal or a reply that
 * breaks the schema ends here (after one repair attempt); a good one goes
 * to post(). */
static void
prompt_reply(struct flight *f, const struct llm_result *res)
{
	char msg[1400];
	switch (res->status) {
	case LLM_OK:
		break;
	case LLM_ERR_TIMEOUT:
		snprintf(msg, sizeof msg, "the model did not answer in time: %s",
		         res->error_message ? res->error_message : "deadline passed");
		fail(f, 504, "upstream_timeout", msg);
		return;
	case LLM_ERR_HTTP:
		snprintf(msg, sizeof msg, "the model provider returned HTTP %ld: %s", res->http_status,
		         res->error_message ? res->error_message : "no message");
		fail(f, 502, "upstream_error", msg);
		return;
	case LLM_ERR_CONNECT:
		snprintf(msg, sizeof msg, "cannot reach the model provider: %s",
		         res->error_message ? res->error_message : "connection failed");
		fail(f, 502, "upstream_unreachable", msg);
		return;
	case LLM_ERR_PROTOCOL:
		snprintf(msg, sizeof msg, "the model provider sent an unusable reply: %s",
		         res->error_message ? res->error_message : "unparseable");
		fail(f, 502, "upstream_bad_reply", msg);
		return;
	}
	const struct script_info *si = script_info(f->s);
	if (res->refusal && *res->refusal) {
		snprintf(msg, sizeof msg, "the model refused: %s", res->refusal);
		fail(f, 502, "upstream_refused", msg);
		return;
	}
	if (si->schema) {
		/* A schema-bound reply must be valid before it is ever served or
		 * cached: one repair attempt, then an error. */
		json_error_t je;
		json_t *reply = json_loads(res->content, 0, &je);
		char problem[900];
		bool ok = false;
		bool cut = res->finish_reason && strcmp(res->finish_reason, "length") == 0;
		if (!json_is_object(reply))
			snprintf(problem, sizeof problem, "it is not a JSON object (%s)%s",
			         reply ? "another JSON value" : je.text,
			         cut ? "; it was cut at max_tokens" : "");
		else
			ok = jschema_validate(si->schema, reply, problem, sizeof problem);
		json_decref(reply);
		if (!ok) {
			if (!f->repaired && !cut) {
				repair(f, res->content, problem);
				return;
			}
			snprintf(msg, sizeof msg, "the model's reply does not match the schema%s: %s",
			         f->repaired ? " (after one repair attempt)" : "", problem);
			fail(f, 502, "upstream_invalid_reply", msg);
			return;
		}
	}
	prompt_post(f, res);
}

/* ---- post --------------------------------------------------------------- */

static void
prompt_post(struct flight *f, const struct llm_result *res)
{
	char err[1024];
	double t0 = util_now_ms();
	json_t *result = script_run_post(f->run, res->content, res->finish_reason, res->model,
	                                 err, sizeof err);
	f->script_ms += util_now_ms() - t0;
	if (!result) {
		fail(f, 500, "script_error", err);
		return;
	}
	succeed(f, result, res->model, false);
}

/* run(ctx)'s model reply: whatever it is, the script gets it (nil, err on
 * failure) and decides. */
static void
run_reply(struct flight *f, const struct llm_result *res)
{
	if (res->model)
		snprintf(f->model, sizeof f->model, "%s", res->model);
	char lerr[1024];
	if (res->status != LLM_OK)
		snprintf(lerr, sizeof lerr, "%s: %s", llm_status_name(res->status),
		         res->error_message ? res->error_message : "failed");
	struct script_wait w;
	json_t *result;
	char e[1024];
	double t0 = util_now_ms();
	enum script_step st = script_run_resume_reply(f->run, res->content, res->finish_reason,
	                                              res->model, res->prompt_tokens,
	                                              res->completion_tokens,
	                                              res->status == LLM_OK ? NULL : lerr,
	                                              &w, &result, e, sizeof e);
	f->script_ms += util_now_ms() - t0;
	run_advance(f, st, &w, result, e);
}

/* ---- result ------------------------------------------------------------- */

/* Builds the stored body prefix from the result, caches it (unless it is a
 * fallback or the data changed meanwhile), replies. */
static void
succeed(struct flight *f, json_t *result, const char *model, bool fallback)
{
	analysis *a = f->a;
	const struct script_info *si = script_info(f->s);
	int64_t wall = util_wall_ms();
	char generated_at[40], version[9];
	util_iso8601(wall, generated_at, sizeof generated_at);
	snprintf(version, sizeof version, "%.8s", si->version);

	json_t *doc = json_object();
	json_object_set_new(doc, "contact_id", json_integer(f->contact_id));
	json_object_set_new(doc, "type", json_string(si->name));
	json_object_set_new(doc, "result", result);
	json_object_set_new(doc, "model", fallback ? json_null() : json_string(model ? model : si->model));
	json_object_set_new(doc, "script_version", json_string(version));
	json_object_set_new(doc, "generated_at", json_string(generated_at));
	if (fallback)
		json_object_set_new(doc, "fallback", json_true());
	json_t *usage = json_object();
	json_object_set_new(usage, "prompt_tokens",
	                    f->prompt_tokens >= 0 ? json_integer(f->prompt_tokens) : json_null());
	json_object_set_new(usage, "completion_tokens",
	                    f->completion_tokens >= 0 ? json_integer(f->completion_tokens) : json_null());
	json_object_set_new(usage, "cost_usd", json_real(f->cost_usd));
	json_object_set_new(doc, "usage", usage);
	char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
	json_decref(doc);
	if (!text) {
		fail(f, 500, "internal_error", "cannot encode the result");
		return;
	}
	size_t len = strlen(text) - 1;      /* drop the closing brace */
	char etag[48];
	snprintf(etag, sizeof etag, "\"%s-%016llx\"", version,
	         (unsigned long long)util_fnv1a(UTIL_FNV_SEED, text, len));
	double now = util_now_ms();
	if (!f->stale && !fallback) {
		struct cache_meta meta = {
			.has_fingerprint = f->has_fp,   /* only prompt() computes one, never run(ctx) */
			.prompt_tokens = f->prompt_tokens, .completion_tokens = f->completion_tokens,
			.cost_usd = f->cost_usd,
		};
		memcpy(meta.fingerprint, f->fp, CACHE_FP_LEN);
		note_view(f, cache_put(a->d.cache, f->key, f->contact_id, si->name, text, len, etag,
		                       wall, now, type_ttl(a, si), type_grace(a, si), &meta));
		struct l2_value v = {
			.body = text, .body_len = len, .etag = etag, .created_wall_ms = wall,
			.validated_wall_ms = wall, .ttl_ms = type_ttl(a, si), .grace_ms = type_grace(a, si),
			.meta = meta,
		};
		if (l2_put(a->d.l2, f->key, f->contact_id, &v))
			l2_claim_stored(f->claim);    /* else "over": nothing for the waiters to read */
	}
	struct outcome o = {
		.status = 200, .prefix = text, .prefix_len = len, .etag = etag,
		.created_wall_ms = wall, .remaining_ms = fallback ? 0 : type_ttl(a, si),
		.cache_status = fallback ? "fallback" : NULL,
	};
	finish(f, &o);
	free(text);
}

/* The upstream is not to be called (breaker open): the script's fallback
 * answers, marked as such and never cached; without one, 503. */
static void
serve_fallback(struct flight *f, int retry_after_s, const char *why)
{
	const struct script_info *si = script_info(f->s);
	char err[1024], msg[1200];
	if (si->has_fallback) {
		json_t *result = script_run_fallback(f->run, err, sizeof err);
		if (result) {
			log_event(LOG_INFO, "fallback served", LOG_S("type", si->name),
			          LOG_I("contact", f->contact_id), LOG_S("why", why), LOG_END);
			succeed(f, result, NULL, true);
			return;
		}
		snprintf(msg, sizeof msg, "%s; the fallback failed too: %s", why, err);
		fail_retry(f, 503, "upstream_unavailable", msg, retry_after_s);
		return;
	}
	fail_retry(f, 503, "upstream_unavailable", why, retry_after_s);
}

/* ---- reply -------------------------------------------------------------- */

/* Replies to every waiter with the outcome and frees the flight. The flight
 * leaves the table first, so a caller that asks again from inside its
 * callback starts a new flight instead of joining this one. */
static void
finish(struct flight *f, const struct outcome *o)
{
	analysis *a = f->a;
	const struct script_info *si = script_info(f->s);
	struct flight **pp = flight_slot(a, f->key, f->hash);
	if (*pp == f)
		*pp = f->chain;
	flight_set_state(f, FL_DONE);
	double now = util_now_ms();
	if (o->status == 200) {
		if (!o->cache_status || strcmp(o->cache_status, "fallback") == 0)
			a->st.generated++;
	} else {
		a->st.failed++;
		/* A stale entry keeps serving; its next refresh waits a while. */
		cache_refresh_failed(a->d.cache, f->key, now, REFRESH_RETRY_MS);
		if (f->background)
			a->st.refresh_failures++;
	}
	double age = o->status == 200 ? (double)(util_wall_ms() - o->created_wall_ms) : 0;
	double db_ms = f->state_ms[FL_CONTEXT] + f->state_ms[FL_QUERY];
	struct analysis_wait *w;
	while ((w = TAILQ_FIRST(&f->waiters))) {
		TAILQ_REMOVE(&f->waiters, w, link);
		a->st.waiters--;
		struct analysis_reply r = {
			.status = o->status, .error_code = o->code, .error_message = o->message,
			.etag = o->etag, .cache_status = o->cache_status ? o->cache_status : w->cache_status,
			.tier = o->tier,
			.contact_id = f->contact_id, .type = si->name, .version = si->version,
			.age_ms = age > 0 ? age : 0, .ttl_ms = type_ttl(a, si),
			.grace_ms = type_grace(a, si), .remaining_ms = o->remaining_ms,
			.db_ms = db_ms, .script_ms = f->script_ms, .llm_ms = f->llm_ms,
			.total_ms = now - w->t_start,
			.prompt_tokens = f->prompt_tokens, .completion_tokens = f->completion_tokens,
			.cost_usd = f->cost_usd, .retry_after_s = o->retry_after_s,
		};
		deliver(w->cb, w->arg, &r, o->prefix, o->prefix_len);
		free(w);
	}
	flight_free(f);
}

static void
fail_retry(struct flight *f, int status, const char *code, const char *text, int retry_after_s)
{
	/* Messages are assembled with snprintf from script, database and
	 * upstream text: a cut may leave half a UTF-8 character. */
	char message[1600];
	snprintf(message, sizeof message, "%s", text ? text : "");
	util_utf8_trim(message);
	struct outcome o = { .status = status, .code = code, .message = message,
	                     .retry_after_s = retry_after_s };
	log_event(LOG_WARN, "analysis failed", LOG_S("type", script_info(f->s)->name),
	          LOG_I("contact", f->contact_id), LOG_I("status", status), LOG_S("code", code),
	          LOG_S("error", message), LOG_END);
	finish(f, &o);
}

static void
fail(struct flight *f, int status, const char *code, const char *message)
{
	fail_retry(f, status, code, message, 0);
}

/* Appends the per-reply fields to the stored prefix and calls cb. The body
 * is a JSON object whose closing brace the suffix supplies. */
static void
deliver(analysis_reply_cb *cb, void *arg, struct analysis_reply *r, const char *prefix,
        size_t prefix_len)
{
	if (r->status != 200 || !prefix) {
		cb(arg, r);
		return;
	}
	/* ,"cache":{"status":…,"age_ms":%.0f,"ttl_ms":%.0f},"timings_ms":{"db":%.3f,
	 * "script":%.3f,"llm":%.3f,"total":%.3f}} — built with fmt.c, which gives
	 * printf's text without printf (a third of a cached hit's instructions
	 * were printf's). */
	char suffix[512];       /* 20 + 63 + 10 + 15 + 70 of names + 6 numbers of < FMT_NUM_MAX */
	size_t status_len = strlen(r->cache_status);
	int n = -1;
	if (status_len < 64 && (!r->tier || strlen(r->tier) < 16)) {
		struct { const char *text; double v; int decimals; } part[] = {
			{ "\",\"age_ms\":", r->age_ms, 0 }, { ",\"ttl_ms\":", r->ttl_ms, 0 },
			{ "},\"timings_ms\":{\"db\":", r->db_ms, 3 }, { ",\"script\":", r->script_ms, 3 },
			{ ",\"llm\":", r->llm_ms, 3 }, { ",\"total\":", r->total_ms, 3 },
		};
		size_t k = 0;
		memcpy(suffix, ",\"cache\":{\"status\":\"", 20);
		k = 20;
		memcpy(suffix + k, r->cache_status, status_len);
		k += status_len;
		if (r->tier) {         /* ,"tier":"l2" (a short fixed word) */
			size_t tl = strlen(r->tier);
			memcpy(suffix + k, "\",\"tier\":\"", 10);
			memcpy(suffix + k + 10, r->tier, tl);
			k += 10 + tl;
		}
		for (size_t i = 0; i < sizeof part / sizeof *part; i++) {
			size_t tl = strlen(part[i].text);
			memcpy(suffix + k, part[i].text, tl);
			k += tl;
			k += fmt_fixed(suffix + k, part[i].v, part[i].decimals);
		}
		memcpy(suffix + k, "}}", 2);
		n = (int)(k + 2);
	}
	if (n < 0 || (size_t)n >= sizeof suffix) {
		struct analysis_reply e = *r;
		e.status = 500;
		e.error_code = "internal_error";
		e.error_message = "cannot format the reply";
		cb(arg, &e);
		return;
	}
	char stackbuf[4096];
	size_t len = prefix_len + (size_t)n;
	char *body = len < sizeof stackbuf ? stackbuf : xmalloc(len + 1);
	memcpy(body, prefix, prefix_len);
	memcpy(body + prefix_len, suffix, (size_t)n);
	body[len] = '\0';
	r->body = body;
	r->body_len = len;
	cb(arg, r);
	if (body != stackbuf)
		free(body);
}

static void
reply_error(analysis_reply_cb *cb, void *arg, int64_t contact_id, const char *type,
            int status, const char *code, const char *message)
{
	struct analysis_reply r = {
		.status = status, .error_code = code, .error_message = message,
		.contact_id = contact_id, .type = type, .prompt_tokens = -1,
		.completion_tokens = -1, .cache_status = "miss",
	};
	cb(arg, &r);
}

/* ---- waiters: what a caller may ask, and cancel ------------------------- */

const char *
analysis_wait_status(const analysis_wait *w)
{
	/* Its flight waits for another instance's generation (it has text
	 * from there, or a claim that is not ours): joined, not started. */
	if (w->f->state == FL_LOCK)
		return "coalesced";
	return w->cache_status;
}

const char *
analysis_wait_text(const analysis_wait *w, size_t *len)
{
	*len = w->f->text_len;
	return w->f->text ? w->f->text : "";
}

const char *
analysis_wait_version(const analysis_wait *w)
{
	return script_info(w->f->s)->version;
}

/* No one waits any more and the policy is to cancel: the flight ends here,
 * whatever it was doing (flight_free gives back what the gate holds). */
static void
on_orphaned(evutil_socket_t fd, short what, void *arg)
{
	struct flight *f = arg;
	event_free(f->orphan_ev);
	f->orphan_ev = NULL;
	if (!TAILQ_EMPTY(&f->waiters))
		return;            /* someone joined meanwhile */
	log_event(LOG_INFO, "generation cancelled: no one is waiting",
	          LOG_S("type", script_info(f->s)->name), LOG_I("contact", f->contact_id),
	          LOG_S("state", state_names[f->state]), LOG_END);
	struct outcome o = { .status = 499, .code = "cancelled", .message = "no one is waiting" };
	finish(f, &o);
}

void
analysis_wait_cancel(analysis_wait *w)
{
	struct flight *f = w->f;
	analysis *a = f->a;
	TAILQ_REMOVE(&f->waiters, w, link);
	a->st.waiters--;
	free(w);
	/* By default the flight goes on: the tokens are paid for and the result
	 * will be cached for the next caller. With the cancel policy it ends,
	 * from the loop, since we may be inside its own delta callback. */
	if (a->d.cancel_orphans && !f->background && f->state != FL_DONE &&
	    TAILQ_EMPTY(&f->waiters) && !f->orphan_ev) {
		f->orphan_ev = evtimer_new(a->d.base, on_orphaned, f);
		struct timeval zero = { 0, 0 };
		evtimer_add(f->orphan_ev, &zero);
	}
}

/* ---- destroy ------------------------------------------------------------ */

/* Frees the flight and whatever it still has out, whatever it was doing
 * when finish() ended it. */
static void
flight_free(struct flight *f)
{
	analysis *a = f->a;
	assert(f->state == FL_DONE);
	struct flight **pp = flight_slot(a, f->key, f->hash);
	if (*pp == f)
		*pp = f->chain;
	ctx_cancel(f->ctx);
	l2_get_cancel(f->l2get);
	/* Owner: the lock goes and the waiters hear it (after the result's
	 * write, on the same connection); waiter: it stops waiting. */
	l2_claim_end(f->claim);
	if (f->query)
		db_query_cancel(f->query);
	if (f->llm)
		llm_cancel(f->llm);
	f->llm = NULL;
	gate_release(f, GATE_NO_VERDICT);
	if (f->start_ev)
		event_free(f->start_ev);
	if (f->orphan_ev)
		event_free(f->orphan_ev);
	a->in_state[f->state]--;
	json_decref(f->request);
	flight_drop_prior(f);
	script_run_free(f->run);
	script_unref(f->s);
	free(f->text);
	free(f->key);
	free(f);
	a->st.flights--;
}

void
analysis_destroy(analysis *a)
{
	if (!a)
		return;
	/* Queued calls leave first, so the slots the failing flights free are
	 * not handed to calls that would only be cancelled a moment later. */
	for (int i = 0; i < NBUCKETS; i++)
		for (struct flight *f = a->buckets[i]; f; f = f->chain)
			limiter_cancel(a->d.limiter, &f->lw);
	for (int i = 0; i < NBUCKETS; i++)
		while (a->buckets[i])
			fail(a->buckets[i], 503, "shutting_down", "the server is shutting down");
	if (a->d.l2)
		l2_set_drop_handler(a->d.l2, NULL, NULL);
	free(a);
}

void
analysis_contact_changed(analysis *a, int64_t contact_id)
{
	for (int i = 0; i < NBUCKETS; i++)
		for (struct flight *f = a->buckets[i]; f; f = f->chain)
			if (contact_id < 0 || f->contact_id == contact_id)
				f->stale = true;
}

int
analysis_invalidate(analysis *a, int64_t contact_id)
{
	analysis_contact_changed(a, contact_id);
	l2_contact_changed(a->d.l2, contact_id, util_wall_ms());
	if (!a->d.ttl_only)
		return cache_mark_stale(a->d.cache, contact_id, util_now_ms());
	if (contact_id >= 0)
		return cache_drop_contact(a->d.cache, contact_id, NULL);
	struct cache_stats st;
	cache_stats(a->d.cache, &st);
	cache_clear(a->d.cache);
	return (int)st.entries;
}

/* ---- refresh on change ------------------------------------------------------
 * A change to a contact someone looks at: refresh the entries a person saw
 * within the window now, in the background, so the next click is a hit
 * instead of a wait past the grace. The fingerprint keeps it cheap: types
 * whose inputs the change did not touch are re-armed without a model call. */

struct viewed_scan {
	analysis *a;
	double now, within_ms;
	int started;
};

static void
refresh_if_viewed(void *arg, const struct cache_entry *e)
{
	struct viewed_scan *vs = arg;
	analysis *a = vs->a;
	if (e->viewed_ms <= 0 || vs->now - e->viewed_ms > vs->within_ms)
		return;
	script *s = script_registry_get(a->d.scripts, e->type);
	if (!s)
		return;
	/* An entry of an older script version: its key is retired. */
	char key[ANALYSIS_KEY_MAX];
	analysis_key(key, e->contact_id, script_info(s));
	if (strcmp(key, e->key) != 0)
		return;
	uint64_t h = util_fnv1a(UTIL_FNV_SEED, e->key, strlen(e->key));
	struct flight **slot = flight_slot(a, e->key, h);
	if (*slot)
		return;                 /* one is running; it reads the new rows or is marked stale */
	struct flight *f = *slot = flight_new(a, e->key, h, e->contact_id, s);
	f->background = true;
	flight_set_prior(f, e);     /* copies: no call into the cache */
	a->st.change_refreshes++;
	vs->started++;
}

int
analysis_refresh_viewed(analysis *a, int64_t contact_id, double within_ms)
{
	if (a->d.ttl_only || contact_id < 0 || within_ms <= 0)
		return 0;
	struct viewed_scan vs = { .a = a, .now = util_now_ms(), .within_ms = within_ms };
	cache_each_contact(a->d.cache, contact_id, refresh_if_viewed, &vs);
	return vs.started;
}

int
analysis_drop(analysis *a, int64_t contact_id, const char *type)
{
	int n = cache_drop_contact(a->d.cache, contact_id, type);
	/* A generation already running read the old rows: not to be cached. */
	analysis_contact_changed(a, contact_id);
	l2_contact_dropped(a->d.l2, contact_id, util_wall_ms());
	l2_publish_drop(a->d.l2, contact_id, type);    /* every other instance's L1 */
	return n;
}

/* Another instance's DELETE: the same here (idempotent: dropping what is
 * not there is nothing). */
static void
on_remote_drop(void *arg, int64_t contact_id, const char *type)
{
	analysis *a = arg;
	int n = cache_drop_contact(a->d.cache, contact_id, type);
	analysis_contact_changed(a, contact_id);
	log_event(LOG_DEBUG, "dropped by another instance", LOG_I("contact", contact_id),
	          LOG_S("type", type ? type : "*"), LOG_I("entries", n), LOG_END);
}

const l2 *
analysis_l2(const analysis *a)
{
	return a->d.l2;
}

void
analysis_stats(const analysis *a, struct analysis_stats *out)
{
	*out = a->st;
	out->starting = a->in_state[FL_START];
	out->l2_looking = a->in_state[FL_L2];
	out->l2_locking = a->in_state[FL_LOCK];
	out->fetching = a->in_state[FL_CONTEXT];
	out->querying = a->in_state[FL_QUERY];
	out->queued = a->in_state[FL_QUEUED];
	out->calling = a->in_state[FL_LLM];
}
