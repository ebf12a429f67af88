/*
 * analysis — flights and waiters: the pipeline from cache lookup to the
 * reply, with singleflight. See analysis.h for the stages.
 *
 * Lifecycle of a flight (state = what it is waiting on):
 *   FL_START   created, first waiter attached; starts on the next loop tick
 *   FL_DB      the named queries are out, one per pool connection
 *   FL_QUEUED  waiting for an upstream slot (the limiter's queue)
 *   FL_LLM     the chat request is out (a second time when the reply broke
 *              the schema and gets one repair attempt)
 *   then finish(): reply to every waiter, unlink, free.
 * While the breaker is open no request goes upstream: the script's
 * fallback(ctx) answers (never cached), or 503.
 * A waiter is one caller. It is unlinked when it gets its reply or when
 * analysis_wait_cancel() says the caller has gone; neither frees the flight.
 */
#include "analysis.h"
#include "jschema.h"
#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>

#define MAX_QUERIES 32
#define NBUCKETS 1024

enum flight_state { FL_START, FL_DB, FL_QUEUED, FL_LLM, FL_DONE };

struct analysis_wait {
	struct flight *f;
	analysis_reply_cb *cb;
	analysis_delta_cb *on_delta;
	void *arg;
	double t_start;
	const char *cache_status;     /* "miss" for the first, then "coalesced" */
	TAILQ_ENTRY(analysis_wait) link;
};

struct flight {
	analysis *a;
	enum flight_state state;
	char *key;
	uint64_t hash;
	struct flight *chain;
	int64_t contact_id;
	bool stale;                   /* the data changed under us: don't cache */
	bool repaired;                /* the one schema repair attempt is used */
	bool probe;                   /* our call is the breaker's half-open trial */
	json_t *request;              /* the chat request (kept for a repair) */
	limiter_waiter lw;            /* our place in the upstream limiter */
	struct event *orphan_ev;      /* deferred cancel when no one waits */
	double cost_usd;
	script *s;
	script_run *run;
	TAILQ_HEAD(, analysis_wait) waiters;
	db_query *queries[MAX_QUERIES];
	struct query_arg {            /* what each query's callback gets */
		struct flight *f;
		int index;
	} qargs[MAX_QUERIES];
	int pending;                  /* queries not answered yet */
	llm_call *llm;
	struct event *start_ev;
	struct event *first_token_ev;     /* armed until the first text arrives */
	char *text;                   /* the model's text so far, for joiners */
	size_t text_len, text_cap;
	double t_db, db_ms, script_ms, llm_ms;
	double t_step;                /* run(ctx): when the current step began */
	char model[96];               /* run(ctx): the model of its last call */
	long prompt_tokens, completion_tokens;
};

struct analysis {
	struct analysis_deps d;
	struct flight *buckets[NBUCKETS];
	struct analysis_stats st;
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
	const char *cache_status;     /* overrides the waiter's ("fallback") */
	int retry_after_s;
};

analysis *
analysis_create(const struct analysis_deps *deps)
{
	analysis *a = xcalloc(1, sizeof *a);
	a->d = *deps;
	return a;
}

/* ---- replies ------------------------------------------------------------ */

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
	char suffix[384];
	int n = snprintf(suffix, sizeof suffix,
	                 ",\"cache\":{\"status\":\"%s\",\"age_ms\":%.0f,\"ttl_ms\":%.0f},"
	                 "\"timings_ms\":{\"db\":%.3f,\"script\":%.3f,\"llm\":%.3f,\"total\":%.3f}}",
	                 r->cache_status, r->age_ms, r->ttl_ms, r->db_ms, r->script_ms,
	                 r->llm_ms, r->total_ms);
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

/* ---- flight table ------------------------------------------------------- */

static struct flight **
flight_slot(analysis *a, const char *key, uint64_t h)
{
	struct flight **pp = &a->buckets[h % NBUCKETS];
	while (*pp && ((*pp)->hash != h || strcmp((*pp)->key, key) != 0))
		pp = &(*pp)->chain;
	return pp;
}

static void
flight_free(struct flight *f)
{
	analysis *a = f->a;
	struct flight **pp = flight_slot(a, f->key, f->hash);
	if (*pp == f)
		*pp = f->chain;
	for (int i = 0; i < MAX_QUERIES; i++)
		if (f->queries[i])
			db_query_cancel(f->queries[i]);
	if (f->llm)
		llm_cancel(f->llm);
	if (f->start_ev)
		event_free(f->start_ev);
	if (f->first_token_ev)
		event_free(f->first_token_ev);
	if (f->orphan_ev)
		event_free(f->orphan_ev);
	if (f->probe)
		breaker_forget(a->d.breaker, util_now_ms());
	/* Both are no-ops unless we are queued / hold a slot. */
	limiter_cancel(a->d.limiter, &f->lw);
	limiter_release(a->d.limiter, &f->lw, util_now_ms());
	json_decref(f->request);
	script_run_free(f->run);
	script_unref(f->s);
	free(f->text);
	free(f->key);
	free(f);
	a->st.flights--;
}

/* Replies to every waiter with the outcome and frees the flight. */
static void
finish(struct flight *f, const struct outcome *o)
{
	analysis *a = f->a;
	const struct script_info *si = script_info(f->s);
	double now = util_now_ms();
	f->state = FL_DONE;
	if (o->status == 200)
		a->st.generated++;
	else
		a->st.failed++;
	struct analysis_wait *w;
	while ((w = TAILQ_FIRST(&f->waiters))) {
		TAILQ_REMOVE(&f->waiters, w, link);
		a->st.waiters--;
		struct analysis_reply r = {
			.status = o->status, .error_code = o->code, .error_message = o->message,
			.etag = o->etag, .cache_status = o->cache_status ? o->cache_status : w->cache_status,
			.contact_id = f->contact_id, .type = si->name, .version = si->version,
			.age_ms = 0, .ttl_ms = si->ttl_ms, .remaining_ms = o->remaining_ms,
			.db_ms = f->db_ms, .script_ms = f->script_ms, .llm_ms = f->llm_ms,
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

/* ---- stage 4: the result ------------------------------------------------ */

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
	if (!f->stale && !fallback)
		cache_put(a->d.cache, f->key, f->contact_id, si->name, text, len, etag, wall, now,
		          si->ttl_ms);
	struct outcome o = {
		.status = 200, .prefix = text, .prefix_len = len, .etag = etag,
		.created_wall_ms = wall, .remaining_ms = fallback ? 0 : si->ttl_ms,
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

/* ---- stage 3: the model ------------------------------------------------- */

/* Keeps the text for callers that join later and hands it to every
 * streaming waiter. The next waiter is taken before the callback, which may
 * cancel its own waiter. */
static void
on_llm_delta(void *arg, const char *text, size_t len)
{
	struct flight *f = arg;
	if (f->first_token_ev) {
		event_free(f->first_token_ev);
		f->first_token_ev = NULL;
	}
	if (f->text_len + len + 1 > f->text_cap) {
		f->text_cap = (f->text_len + len + 1) * 2;
		f->text = xrealloc(f->text, f->text_cap);
	}
	memcpy(f->text + f->text_len, text, len);
	f->text_len += len;
	f->text[f->text_len] = '\0';
	struct analysis_wait *w, *next;
	for (w = TAILQ_FIRST(&f->waiters); w; w = next) {
		next = TAILQ_NEXT(w, link);
		if (w->on_delta)
			w->on_delta(w->arg, text, len);
	}
}

/* The model has not written a word in time: a stalled stream is ended
 * early instead of holding every waiter until the overall deadline. */
static void
on_first_token_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct flight *f = arg;
	char msg[128];
	event_free(f->first_token_ev);
	f->first_token_ev = NULL;
	llm_cancel(f->llm);
	f->llm = NULL;
	breaker_record(f->a->d.breaker, false, util_now_ms());
	f->probe = false;
	snprintf(msg, sizeof msg, "the model sent no text within %ld ms", f->a->d.llm_first_token_ms);
	fail(f, 504, "upstream_timeout", msg);
}

static void upstream_begin(struct flight *f);

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
	f->text_len = 0;
	struct analysis_wait *w, *next;
	for (w = TAILQ_FIRST(&f->waiters); w; w = next) {
		next = TAILQ_NEXT(w, link);
		if (w->on_delta)
			w->on_delta(w->arg, NULL, 0);
	}
	log_event(LOG_INFO, "schema repair attempt", LOG_S("type", script_info(f->s)->name),
	          LOG_I("contact", f->contact_id), LOG_S("problem", problem), LOG_END);
	upstream_begin(f);
}

static void
on_llm_done(void *arg, const struct llm_result *res)
{
	struct flight *f = arg;
	analysis *a = f->a;
	double now = util_now_ms();
	f->llm = NULL;            /* the client frees the call after this */
	if (f->first_token_ev) {
		event_free(f->first_token_ev);
		f->first_token_ev = NULL;
	}
	limiter_release(a->d.limiter, &f->lw, now);
	breaker_record(a->d.breaker, upstream_healthy(res), now);
	f->probe = false;
	f->llm_ms += res->elapsed_ms;
	add_usage(f, res);
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
		if (!json_is_object(reply))
			snprintf(problem, sizeof problem, "it is not a JSON object (%s)%s",
			         reply ? "another JSON value" : je.text,
			         res->finish_reason && strcmp(res->finish_reason, "length") == 0
			                 ? "; it was cut at max_tokens" : "");
		else
			ok = jschema_validate(si->schema, reply, problem, sizeof problem);
		json_decref(reply);
		if (!ok) {
			bool cut = res->finish_reason && strcmp(res->finish_reason, "length") == 0;
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

/* A slot is ours: the request goes out (streamed, see on_llm_delta). */
static void
upstream_send(struct flight *f)
{
	analysis *a = f->a;
	f->state = FL_LLM;
	/* Always streamed from upstream: a streaming caller may join at any
	 * moment and must get the text written so far, then the rest live. */
	f->llm = llm_chat(a->d.llm, f->request, a->d.llm_timeout_ms, on_llm_delta, on_llm_done, f);
	if (a->d.llm_first_token_ms > 0) {
		struct timeval tv = { a->d.llm_first_token_ms / 1000, (a->d.llm_first_token_ms % 1000) * 1000 };
		f->first_token_ev = evtimer_new(a->d.base, on_first_token_timeout, f);
		evtimer_add(f->first_token_ev, &tv);
	}
}

static void
on_slot(void *arg)
{
	upstream_send(arg);
}

/* Breaker, then limiter, then the call. */
static void
upstream_begin(struct flight *f)
{
	analysis *a = f->a;
	double now = util_now_ms();
	bool half_open = breaker_state(a->d.breaker, now) == BREAKER_HALF_OPEN;
	if (!breaker_allow(a->d.breaker, now)) {
		int ra = (int)((breaker_retry_after_ms(a->d.breaker, now) + 999) / 1000);
		serve_fallback(f, ra > 0 ? ra : 1,
		               "the model provider is failing; calls are paused (circuit breaker open)");
		return;
	}
	f->probe = half_open;
	switch (limiter_acquire(a->d.limiter, &f->lw, on_slot, f, now)) {
	case LIMITER_GO:
		upstream_send(f);
		break;
	case LIMITER_QUEUED:
		f->state = FL_QUEUED;
		break;
	case LIMITER_FULL: {
		/* No call, so no verdict: a half-open trial slot goes back. */
		if (f->probe)
			breaker_forget(a->d.breaker, now);
		f->probe = false;
		fail_retry(f, 429, "overloaded", "too many analyses are waiting for the model; retry later",
		           limiter_retry_after_s(a->d.limiter));
		break;
	}
	}
}

/* ---- run(ctx): the script drives its own queries and model calls -------- */

static void run_advance(struct flight *f, enum script_step st, const struct script_wait *w,
                        json_t *result, const char *err);
static void run_send(struct flight *f);
static void on_run_slot(void *arg);

static void
on_run_query(void *arg, const PGresult *res, const struct db_error *err)
{
	struct flight *f = arg;
	f->queries[0] = NULL;
	double t0 = util_now_ms();
	f->db_ms += t0 - f->t_step;
	struct script_wait w;
	json_t *result;
	char e[1024];
	enum script_step st = script_run_resume_rows(f->run, res, err ? err->message : NULL, &w,
	                                             &result, e, sizeof e);
	f->script_ms += util_now_ms() - t0;
	run_advance(f, st, &w, result, e);
}

static void
on_run_llm_done(void *arg, const struct llm_result *res)
{
	struct flight *f = arg;
	analysis *a = f->a;
	double t0 = util_now_ms();
	f->llm = NULL;
	if (f->first_token_ev) {
		event_free(f->first_token_ev);
		f->first_token_ev = NULL;
	}
	limiter_release(a->d.limiter, &f->lw, t0);
	breaker_record(a->d.breaker, upstream_healthy(res), t0);
	f->llm_ms += res->elapsed_ms;
	add_usage(f, res);
	if (res->model)
		snprintf(f->model, sizeof f->model, "%s", res->model);
	char lerr[1024];
	if (res->status != LLM_OK)
		snprintf(lerr, sizeof lerr, "%s: %s", llm_status_name(res->status),
		         res->error_message ? res->error_message : "failed");
	struct script_wait w;
	json_t *result;
	char e[1024];
	enum script_step st = script_run_resume_reply(f->run, res->content, res->finish_reason,
	                                              res->model, res->prompt_tokens,
	                                              res->completion_tokens,
	                                              res->status == LLM_OK ? NULL : lerr,
	                                              &w, &result, e, sizeof e);
	f->script_ms += util_now_ms() - t0;
	run_advance(f, st, &w, result, e);
}

/* Does what the script waits for, or finishes. Each step is one query or
 * one model call, on the loop like everything else. */
static void
run_advance(struct flight *f, enum script_step st, const struct script_wait *w,
            json_t *result, const char *err)
{
	analysis *a = f->a;
	switch (st) {
	case SCRIPT_DONE:
		succeed(f, result, f->model[0] ? f->model : NULL, false);
		return;
	case SCRIPT_ERROR:
		fail(f, 500, "script_error", err);
		return;
	case SCRIPT_WAIT_QUERY:
		f->state = FL_DB;
		f->t_step = util_now_ms();
		/* The script's own SQL: its session is reset before reuse. */
		f->queries[0] = db_query_send_adhoc(a->d.db, w->sql, w->nparams, w->params,
		                                    on_run_query, f);
		return;
	case SCRIPT_WAIT_CHAT: {
		double now = util_now_ms();
		const char *refused = NULL;
		if (!breaker_allow(a->d.breaker, now)) {
			refused = "upstream_unavailable: calls are paused (circuit breaker open)";
		} else {
			/* The script's calls obey the same cap as everyone's. */
			json_decref(f->request);
			f->request = json_incref(w->request);
			switch (limiter_acquire(a->d.limiter, &f->lw, on_run_slot, f, now)) {
			case LIMITER_GO:
				run_send(f);
				return;
			case LIMITER_QUEUED:
				f->state = FL_QUEUED;
				return;
			case LIMITER_FULL:
				refused = "overloaded: too many model calls are waiting";
				break;
			}
		}
		/* Answer the script at once: it may have a plan B. */
		struct script_wait w2;
		json_t *r2;
		char e[1024];
		enum script_step st2 = script_run_resume_reply(f->run, NULL, NULL, NULL, -1, -1,
		                                               refused, &w2, &r2, e, sizeof e);
		run_advance(f, st2, &w2, r2, e);
		return;
	}
	}
}

/* A slot is ours: the script's model call goes out, with the same
 * first-token deadline as the pipeline's own calls. */
static void
run_send(struct flight *f)
{
	analysis *a = f->a;
	f->state = FL_LLM;
	f->llm = llm_chat(a->d.llm, f->request, a->d.llm_timeout_ms, on_llm_delta,
	                  on_run_llm_done, f);
	if (a->d.llm_first_token_ms > 0) {
		struct timeval tv = { a->d.llm_first_token_ms / 1000, (a->d.llm_first_token_ms % 1000) * 1000 };
		f->first_token_ev = evtimer_new(a->d.base, on_first_token_timeout, f);
		evtimer_add(f->first_token_ev, &tv);
	}
}

static void
on_run_slot(void *arg)
{
	run_send(arg);
}

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

/* ---- stage 2: the context is complete ----------------------------------- */

static void
context_ready(struct flight *f)
{
	f->db_ms = f->t_db > 0 ? util_now_ms() - f->t_db : 0;
	if (script_run_contact_missing(f->run)) {
		char msg[96];
		snprintf(msg, sizeof msg, "contact %lld not found", (long long)f->contact_id);
		fail(f, 404, "contact_not_found", msg);
		return;
	}
	if (script_info(f->s)->has_run) {
		run_begin(f);
		return;
	}
	char err[1024];
	double t0 = util_now_ms();
	json_t *req = script_run_request(f->run, err, sizeof err);
	f->script_ms += util_now_ms() - t0;
	if (!req) {
		fail(f, 500, "script_error", err);
		return;
	}
	f->request = req;
	upstream_begin(f);
}

static void
on_query(void *arg, const PGresult *res, const struct db_error *err)
{
	struct query_arg *qa = arg;
	struct flight *f = qa->f;
	int i = qa->index;
	f->queries[i] = NULL;
	f->pending--;
	const struct script_info *si = script_info(f->s);
	const struct script_query *q = &si->queries[i];
	char msg[1024];
	if (err) {
		if (err->unavailable) {
			snprintf(msg, sizeof msg, "the database is unavailable (%s)", err->message);
			fail_retry(f, 503, "database_unavailable", msg, 1);
		} else {
			snprintf(msg, sizeof msg, "query '%s' of script %s failed: %s%s%s%s", q->name,
			         si->name, err->message, err->sqlstate ? " (SQLSTATE " : "",
			         err->sqlstate ? err->sqlstate : "", err->sqlstate ? ")" : "");
			fail(f, 500, "query_failed", msg);
		}
		return;
	}
	double t0 = util_now_ms();
	bool ok = script_run_add_rows(f->run, q, res, msg, sizeof msg);
	f->script_ms += util_now_ms() - t0;
	if (!ok) {
		fail(f, 500, "script_error", msg);
		return;
	}
	if (f->pending == 0)
		context_ready(f);
}

/* ---- stage 1: start ----------------------------------------------------- */

static void
flight_start(evutil_socket_t fd, short what, void *arg)
{
	struct flight *f = arg;
	analysis *a = f->a;
	const struct script_info *si = script_info(f->s);
	event_free(f->start_ev);
	f->start_ev = NULL;

	char now[40], id[24];
	util_iso8601(util_wall_ms(), now, sizeof now);
	double t0 = util_now_ms();
	f->run = script_run_new(f->s, f->contact_id, now);
	f->script_ms += util_now_ms() - t0;
	if (si->nqueries == 0) {
		context_ready(f);
		return;
	}
	snprintf(id, sizeof id, "%lld", (long long)f->contact_id);
	const char *params[1] = { id };
	f->state = FL_DB;
	f->t_db = util_now_ms();
	f->pending = si->nqueries;
	/* All at once: the pool gives each its own connection, so the context
	 * is ready when the slowest query returns, not after the sum. */
	for (int i = 0; i < si->nqueries; i++) {
		f->qargs[i] = (struct query_arg){ f, i };
		f->queries[i] = db_query_send(a->d.db, si->queries[i].sql, 1, params, on_query,
		                              &f->qargs[i]);
	}
}

analysis_wait *
analysis_get(analysis *a, int64_t contact_id, const char *type, int flags,
             analysis_reply_cb *cb, analysis_delta_cb *on_delta, void *arg)
{
	double t_start = util_now_ms();
	script *s = script_registry_get(a->d.scripts, type);
	if (!s) {
		char msg[160];
		snprintf(msg, sizeof msg, "unknown analysis type '%.64s' (see /v1/analysis-types)", type);
		reply_error(cb, arg, contact_id, type, 404, "unknown_analysis_type", msg);
		return NULL;
	}
	const struct script_info *si = script_info(s);
	char key[160];
	snprintf(key, sizeof key, "%lld:%s:%s", (long long)contact_id, si->name, si->version);

	if (!(flags & ANALYSIS_REFRESH)) {
		const struct cache_entry *e = cache_get(a->d.cache, key, t_start);
		if (e) {
			double age = (double)(util_wall_ms() - e->created_wall_ms);
			struct analysis_reply r = {
				.status = 200, .etag = e->etag, .cache_status = "hit",
				.contact_id = contact_id, .type = si->name, .version = si->version,
				.age_ms = age < 0 ? 0 : age, .ttl_ms = si->ttl_ms,
				.remaining_ms = e->expires_ms - t_start,
				.prompt_tokens = -1, .completion_tokens = -1,
			};
			r.total_ms = util_now_ms() - t_start;
			deliver(cb, arg, &r, e->body, e->body_len);
			return NULL;
		}
	}

	uint64_t h = util_fnv1a(UTIL_FNV_SEED, key, strlen(key));
	struct flight **slot = flight_slot(a, key, h);
	struct flight *f = *slot;
	struct analysis_wait *w = xcalloc(1, sizeof *w);
	w->cb = cb;
	w->on_delta = on_delta;
	w->arg = arg;
	w->t_start = t_start;
	if (f) {
		w->cache_status = "coalesced";
		a->st.coalesced++;
	} else {
		f = xcalloc(1, sizeof *f);
		f->a = a;
		f->key = xstrdup(key);
		f->hash = h;
		f->contact_id = contact_id;
		f->s = s;
		script_ref(s);
		f->prompt_tokens = f->completion_tokens = -1;
		TAILQ_INIT(&f->waiters);
		*slot = f;
		a->st.flights++;
		/* Start on the next tick, so cb never runs inside this call for
		 * a miss and the caller can keep the handle. */
		f->start_ev = evtimer_new(a->d.base, flight_start, f);
		struct timeval zero = { 0, 0 };
		evtimer_add(f->start_ev, &zero);
		w->cache_status = "miss";
	}
	w->f = f;
	TAILQ_INSERT_TAIL(&f->waiters, w, link);
	a->st.waiters++;
	return w;
}

const char *
analysis_wait_status(const analysis_wait *w)
{
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

static void
on_orphaned(evutil_socket_t fd, short what, void *arg)
{
	struct flight *f = arg;
	event_free(f->orphan_ev);
	f->orphan_ev = NULL;
	if (!TAILQ_EMPTY(&f->waiters))
		return;            /* someone joined meanwhile */
	log_event(LOG_INFO, "generation cancelled: no one is waiting",
	          LOG_S("type", script_info(f->s)->name), LOG_I("contact", f->contact_id), LOG_END);
	f->a->st.failed++;
	flight_free(f);
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
	if (a->d.cancel_orphans && TAILQ_EMPTY(&f->waiters) && !f->orphan_ev) {
		f->orphan_ev = evtimer_new(a->d.base, on_orphaned, f);
		struct timeval zero = { 0, 0 };
		evtimer_add(f->orphan_ev, &zero);
	}
}

void
analysis_destroy(analysis *a)
{
	if (!a)
		return;
	for (int i = 0; i < NBUCKETS; i++)
		while (a->buckets[i]) {
			fail(a->buckets[i], 503, "shutting_down", "the server is shutting down");
		}
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

void
analysis_stats(const analysis *a, struct analysis_stats *out)
{
	*out = a->st;
}
