/*
 * test_analysis — core/analysis.c driven on a real libevent loop with its
 * real parts: the cache, limiter, breaker and accounting, the PostgreSQL
 * pool (TEST_DATABASE_URL), the upstream client pointed at the fake
 * (TEST_OPENAI_BASE_URL) and a scripts folder of tiny scripts written here.
 * Exits 77 (skip) without the two URLs. TAP output.
 *
 * What it pins down: hit / miss / coalesced; the model gate gives its slot
 * and breaker trial back on every path (success, failure, refused, queued
 * then cancelled, cancelled mid-call, first-token timeout, shutdown); the
 * flight's states as analysis_stats() reports them; the orphan policies.
 *
 * The fake is steered with blocking curl_easy calls to its control
 * endpoints (tests/unit/fake_ctl.h), between steps, when the loop has
 * nothing of ours to do.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <jansson.h>

#include "analysis.h"
#include "log.h"
#include "util.h"
#include "luajson.h"
#include "fake_ctl.h"
#include "tap.h"

static struct event_base *base;
static db_pool *db;
static llm_client *llm;
static script_registry *scripts;

/* ---- the loop ------------------------------------------------------------- */

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until expr holds or ms pass. A 5 ms ticker keeps
 * EVLOOP_ONCE from blocking on sockets where nothing happens. */
#define WAIT_FOR(expr, ms) do { \
	double until_ = util_now_ms() + (ms); \
	while (!(expr) && util_now_ms() < until_) \
		event_base_loop(base, EVLOOP_ONCE); \
} while (0)

static void
spin(double ms)
{
	double until = util_now_ms() + ms;
	while (util_now_ms() < until)
		event_base_loop(base, EVLOOP_ONCE);
}

/* ---- one analysis with fresh parts ---------------------------------------- */

struct opts {
	int max_in_flight, max_queue;
	int breaker_failures;
	double breaker_open_ms;
	long first_token_ms;
	bool cancel_orphans;
};

struct env {
	cache *cache;
	limiter *limiter;
	breaker *breaker;
	accounting *acct;
	analysis *a;
};

static void
env_open(struct env *e, const struct opts *o)
{
	e->cache = cache_create(1 << 20, true);
	e->limiter = limiter_create(o->max_in_flight ? o->max_in_flight : 4, o->max_queue);
	struct breaker_config bc = {
		.failure_threshold = o->breaker_failures ? o->breaker_failures : 5,
		.open_ms = o->breaker_open_ms ? o->breaker_open_ms : 5000,
		.half_open_probes = 1, .probe_timeout_ms = 60000,
	};
	e->breaker = breaker_create(&bc);
	e->acct = acct_create();
	struct analysis_deps d = {
		.base = base, .db = db, .llm = llm, .cache = e->cache, .scripts = scripts,
		.llm_timeout_ms = 20000, .llm_first_token_ms = o->first_token_ms,
		.limiter = e->limiter, .breaker = e->breaker, .acct = e->acct,
		.cancel_orphans = o->cancel_orphans,
	};
	e->a = analysis_create(&d);
	fake_reset();
}

static void
env_close(struct env *e)
{
	analysis_destroy(e->a);
	spin(20);                 /* cancelled transfers finish from the loop */
	acct_destroy(e->acct);
	breaker_destroy(e->breaker);
	limiter_destroy(e->limiter);
	cache_destroy(e->cache);
}

static struct analysis_stats
stats(const struct env *e)
{
	struct analysis_stats s;
	analysis_stats(e->a, &s);
	return s;
}

static struct limiter_stats
lstats(const struct env *e)
{
	struct limiter_stats s;
	limiter_stats(e->limiter, &s);
	return s;
}

static struct breaker_stats
bstats(const struct env *e)
{
	struct breaker_stats s;
	breaker_stats(e->breaker, util_now_ms(), &s);
	return s;
}

/* The gate holds nothing: no slot, no queue place, no breaker trial. */
static bool
gate_idle(const struct env *e)
{
	struct limiter_stats l = lstats(e);
	return l.in_flight == 0 && l.queued == 0 && bstats(e).probes_in_flight == 0;
}

/* Opens the breaker (threshold 1) and waits out its open period. */
static void
half_open(struct env *e, double open_ms)
{
	breaker_allow(e->breaker, util_now_ms());
	breaker_record(e->breaker, false, util_now_ms());
	spin(open_ms + 50);
}

/* ---- one caller ---------------------------------------------------------- */

struct rep {
	int done;
	int status;
	char code[64];
	char cache[16];
	char body[4096];           /* the start of it: enough for these checks */
	double db_ms;
};

static void
on_reply(void *arg, const struct analysis_reply *r)
{
	struct rep *p = arg;
	p->done++;
	p->status = r->status;
	snprintf(p->code, sizeof p->code, "%s", r->error_code ? r->error_code : "");
	snprintf(p->cache, sizeof p->cache, "%s", r->cache_status ? r->cache_status : "");
	snprintf(p->body, sizeof p->body, "%s", r->body ? r->body : "");
	p->db_ms = r->db_ms;
}

static analysis_wait *
ask(struct env *e, int64_t id, const char *type, int flags, struct rep *p)
{
	memset(p, 0, sizeof *p);
	return analysis_get(e->a, id, type, flags, on_reply, NULL, p);
}

static bool
body_has(const struct rep *p, const char *s)
{
	return strstr(p->body, s) != NULL;
}

/* ---- cases --------------------------------------------------------------- */

static void
test_miss_then_hit(void)
{
	struct env e;
	env_open(&e, &(struct opts){ 0 });
	struct rep r;
	analysis_wait *w = ask(&e, 1, "plain", 0, &r);
	ok(w && !r.done && strcmp(analysis_wait_status(w), "miss") == 0,
	   "a miss returns a handle and does not reply inside analysis_get");
	ok(stats(&e).flights == 1 && stats(&e).starting == 1, "the new flight is in its start state");
	WAIT_FOR(r.done, 10000);
	ok(r.done == 1 && r.status == 200 && strcmp(r.cache, "miss") == 0,
	   "the miss is generated: 200, cache miss (%d %s)", r.status, r.code);
	ok(stats(&e).flights == 0 && stats(&e).generated == 1, "the flight is gone, counted generated");
	ok(gate_idle(&e) && bstats(&e).successes_total == 1,
	   "success: the slot is released and the breaker heard a success");
	w = ask(&e, 1, "plain", 0, &r);
	ok(!w && r.done == 1 && r.status == 200 && strcmp(r.cache, "hit") == 0,
	   "the second ask is a hit, answered inside analysis_get");
	ok(fake_stat("chat_calls") == 1, "one upstream call for miss + hit");
	w = ask(&e, 1, "plain", ANALYSIS_REFRESH, &r);
	WAIT_FOR(r.done, 10000);
	ok(w && r.status == 200 && strcmp(r.cache, "miss") == 0 && fake_stat("chat_calls") == 2,
	   "ANALYSIS_REFRESH skips the cache");
	env_close(&e);
}

static void
test_coalesced(void)
{
	struct env e;
	env_open(&e, &(struct opts){ 0 });
	struct rep r1, r2;
	analysis_wait *w1 = ask(&e, 2, "plain", 0, &r1);
	analysis_wait *w2 = ask(&e, 2, "plain", 0, &r2);
	ok(w1 && w2 && strcmp(analysis_wait_status(w2), "coalesced") == 0 &&
	   stats(&e).flights == 1 && stats(&e).waiters == 2,
	   "a second caller for the same key joins the flight");
	WAIT_FOR(r1.done && r2.done, 10000);
	ok(r1.status == 200 && r2.status == 200 && strcmp(r2.cache, "coalesced") == 0,
	   "both get the result, the joiner marked coalesced");
	ok(fake_stat("chat_calls") == 1 && stats(&e).coalesced == 1, "one upstream call for both");
	env_close(&e);
}

static void
test_unknown_type(void)
{
	struct env e;
	env_open(&e, &(struct opts){ 0 });
	struct rep r;
	analysis_wait *w = ask(&e, 1, "no_such_type", 0, &r);
	ok(!w && r.done == 1 && r.status == 404 && strcmp(r.code, "unknown_analysis_type") == 0,
	   "an unknown type is a 404 at once");
	env_close(&e);
}

static void
test_states_and_context(void)
{
	struct env e;
	env_open(&e, &(struct opts){ 0 });
	fake_config("{\"latency_ms\": 400}");
	struct rep r;
	ask(&e, 3, "withq", 0, &r);
	ok(stats(&e).starting == 1, "state: start");
	WAIT_FOR(stats(&e).fetching == 1 || r.done, 5000);
	ok(stats(&e).fetching == 1, "state: context (the named queries are out)");
	WAIT_FOR(stats(&e).calling == 1 || r.done, 5000);
	ok(stats(&e).calling == 1 && stats(&e).fetching == 0, "state: llm (the model call is out)");
	WAIT_FOR(r.done, 10000);
	ok(r.status == 200 && body_has(&r, "\"result\""), "the result after context → prompt → model → post");
	ok(r.db_ms >= 250, "db time is the context's time (pg_sleep 0.3 s): %.0f ms", r.db_ms);
	struct analysis_stats s = stats(&e);
	ok(s.flights == 0 && s.starting + s.fetching + s.querying + s.queued + s.calling == 0,
	   "no flight left in any state");

	ask(&e, 5000, "withq", 0, &r);
	WAIT_FOR(r.done, 10000);
	ok(r.status == 404 && strcmp(r.code, "contact_not_found") == 0,
	   "no contact row: 404 contact_not_found");
	ask(&e, 3, "badq", 0, &r);
	WAIT_FOR(r.done, 10000);
	ok(r.status == 500 && strcmp(r.code, "query_failed") == 0,
	   "a failing named query: 500 query_failed (%d %s)", r.status, r.code);
	ok(gate_idle(&e) && fake_stat("chat_calls") == 1, "no model call for a context that failed");
	env_close(&e);
}

static void
test_failure_releases(void)
{
	struct env e;
	env_open(&e, &(struct opts){ .breaker_failures = 3 });
	fake_config("{\"fail\": [{\"status\": 500, \"message\": \"boom\"}]}");
	struct rep r;
	ask(&e, 4, "plain", 0, &r);
	WAIT_FOR(r.done, 10000);
	ok(r.status == 502 && strcmp(r.code, "upstream_error") == 0, "an upstream 500 is a 502");
	ok(gate_idle(&e) && bstats(&e).consecutive_failures == 1,
	   "failure: the slot is released and the breaker heard a failure");
	ok(stats(&e).failed == 1 && stats(&e).flights == 0, "counted failed");
	env_close(&e);
}

static void
test_refused_by_limiter(void)
{
	struct env e;
	env_open(&e, &(struct opts){ .max_in_flight = 1, .max_queue = 0 });
	limiter_waiter hog = { 0 };
	limiter_acquire(e.limiter, &hog, NULL, NULL, util_now_ms());
	struct rep r;
	ask(&e, 5, "plain", 0, &r);
	WAIT_FOR(r.done, 5000);
	ok(r.status == 429 && strcmp(r.code, "overloaded") == 0, "limiter full: 429 overloaded");
	ask(&e, 5, "runner", 0, &r);
	WAIT_FOR(r.done, 5000);
	ok(r.status == 200 && body_has(&r, "overloaded"),
	   "run(ctx): llm.chat returns the refusal and the script answers");
	limiter_release(e.limiter, &hog, util_now_ms());
	ok(gate_idle(&e) && fake_stat("chat_calls") == 0, "refused: nothing held, no upstream call");
	env_close(&e);
}

static void
test_breaker_open(void)
{
	struct env e;
	env_open(&e, &(struct opts){ .breaker_failures = 1, .breaker_open_ms = 30000 });
	breaker_allow(e.breaker, util_now_ms());
	breaker_record(e.breaker, false, util_now_ms());
	struct rep r;
	ask(&e, 6, "withfb", 0, &r);
	WAIT_FOR(r.done, 5000);
	ok(r.status == 200 && strcmp(r.cache, "fallback") == 0 && body_has(&r, "\"fallback\":true"),
	   "breaker open: the script's fallback answers");
	ask(&e, 6, "plain", 0, &r);
	WAIT_FOR(r.done, 5000);
	ok(r.status == 503 && strcmp(r.code, "upstream_unavailable") == 0,
	   "breaker open, no fallback: 503");
	ask(&e, 6, "runner", 0, &r);
	WAIT_FOR(r.done, 5000);
	ok(r.status == 200 && body_has(&r, "circuit breaker open"),
	   "run(ctx): llm.chat hears the breaker is open");
	ok(gate_idle(&e) && fake_stat("chat_calls") == 0, "no upstream call, nothing held");
	env_close(&e);
}

/* The bug: run(ctx)'s call took the half-open trial, was refused
 * by the full limiter, and never gave the trial back. */
static void
test_refused_run_call_returns_the_trial(void)
{
	struct env e;
	env_open(&e, &(struct opts){ .max_in_flight = 1, .max_queue = 0, .breaker_failures = 1,
	                             .breaker_open_ms = 150 });
	half_open(&e, 150);
	ok(breaker_state(e.breaker, util_now_ms()) == BREAKER_HALF_OPEN, "the breaker is half-open");
	limiter_waiter hog = { 0 };
	limiter_acquire(e.limiter, &hog, NULL, NULL, util_now_ms());
	struct rep r;
	ask(&e, 7, "runner", 0, &r);
	WAIT_FOR(r.done, 5000);
	ok(r.status == 200 && body_has(&r, "overloaded"), "the run(ctx) call is refused (limiter full)");
	ok(bstats(&e).probes_in_flight == 0 && breaker_retry_after_ms(e.breaker, util_now_ms()) == 0,
	   "refused: the breaker's trial is free again");
	limiter_release(e.limiter, &hog, util_now_ms());
	ask(&e, 8, "plain", 0, &r);
	WAIT_FOR(r.done, 10000);
	ok(r.status == 200 && strcmp(r.cache, "miss") == 0,
	   "the next call is allowed as the trial (%d %s)", r.status, r.code);
	ok(breaker_state(e.breaker, util_now_ms()) == BREAKER_CLOSED, "its success closes the breaker");
	env_close(&e);
}

static void
test_queued_then_orphaned(void)
{
	struct env e;
	env_open(&e, &(struct opts){ .max_in_flight = 1, .max_queue = 4, .breaker_failures = 1,
	                             .breaker_open_ms = 150, .cancel_orphans = true });
	half_open(&e, 150);
	limiter_waiter hog = { 0 };
	limiter_acquire(e.limiter, &hog, NULL, NULL, util_now_ms());
	struct rep r1, r2;
	analysis_wait *w1 = ask(&e, 9, "runner", 0, &r1);
	analysis_wait *w2 = ask(&e, 10, "plain", 0, &r2);
	WAIT_FOR(stats(&e).queued == 2, 5000);
	ok(stats(&e).queued == 2 && lstats(&e).queued == 2, "state: queued (run(ctx)'s and prompt's)");
	ok(bstats(&e).probes_in_flight == 0, "a queued call holds no breaker trial");
	analysis_wait_cancel(w1);
	analysis_wait_cancel(w2);
	WAIT_FOR(stats(&e).flights == 0, 5000);
	ok(stats(&e).flights == 0 && !r1.done && !r2.done,
	   "cancel policy: both flights end, no callback for the gone callers");
	ok(lstats(&e).queued == 0 && lstats(&e).in_flight == 1 && bstats(&e).probes_in_flight == 0,
	   "the queue places are given back, no trial taken (the hog keeps its slot)");
	limiter_release(e.limiter, &hog, util_now_ms());
	struct rep r;
	ask(&e, 11, "plain", 0, &r);
	WAIT_FOR(r.done, 10000);
	ok(r.status == 200 && breaker_state(e.breaker, util_now_ms()) == BREAKER_CLOSED,
	   "the next call is the trial and closes the breaker");
	ok(fake_stat("chat_calls") == 1, "the cancelled calls never reached the upstream");
	env_close(&e);
}

static void
test_cancelled_mid_call(void)
{
	struct env e;
	env_open(&e, &(struct opts){ .breaker_failures = 1, .breaker_open_ms = 150,
	                             .cancel_orphans = true });
	half_open(&e, 150);
	fake_config("{\"latency_ms\": 2000}");
	struct rep r;
	analysis_wait *w = ask(&e, 12, "plain", 0, &r);
	WAIT_FOR(stats(&e).calling == 1, 5000);
	ok(stats(&e).calling == 1 && bstats(&e).probes_in_flight == 1 && lstats(&e).in_flight == 1,
	   "the call is out as the half-open trial, holding a slot");
	analysis_wait_cancel(w);
	WAIT_FOR(stats(&e).flights == 0, 5000);
	ok(stats(&e).flights == 0 && !r.done, "cancel policy: the flight ends when its caller leaves");
	ok(gate_idle(&e) && breaker_state(e.breaker, util_now_ms()) == BREAKER_HALF_OPEN,
	   "the slot and the trial are given back with no verdict");
	env_close(&e);
}

static void
test_orphaned_before_the_model(void)
{
	struct env e;
	env_open(&e, &(struct opts){ .cancel_orphans = true });
	struct rep r;
	analysis_wait *w = ask(&e, 20, "plain", 0, &r);
	analysis_wait_cancel(w);
	WAIT_FOR(stats(&e).flights == 0, 5000);
	ok(stats(&e).flights == 0 && !r.done && stats(&e).failed == 1,
	   "cancelled before it started: the flight ends, counted failed, no callback");
	w = ask(&e, 21, "withq", 0, &r);
	WAIT_FOR(stats(&e).fetching == 1, 5000);
	analysis_wait_cancel(w);
	WAIT_FOR(stats(&e).flights == 0, 5000);
	ok(stats(&e).flights == 0 && !r.done, "cancelled while the context is fetched: it ends");
	spin(400);                /* past the pg_sleep: a late answer would crash here */
	ok(fake_stat("chat_calls") == 0 && gate_idle(&e), "no model call, nothing held");
	env_close(&e);
}

static void
test_finish_policy_caches_for_the_next(void)
{
	struct env e;
	env_open(&e, &(struct opts){ 0 });
	fake_config("{\"latency_ms\": 300}");
	struct rep r;
	analysis_wait *w = ask(&e, 13, "plain", 0, &r);
	WAIT_FOR(stats(&e).calling == 1, 5000);
	analysis_wait_cancel(w);
	WAIT_FOR(stats(&e).generated == 1, 10000);
	ok(stats(&e).generated == 1 && !r.done, "finish policy: the flight goes on without its caller");
	ask(&e, 13, "plain", 0, &r);
	ok(r.done && strcmp(r.cache, "hit") == 0, "and its result is cached for the next caller");
	ok(gate_idle(&e), "the gate is released");
	env_close(&e);
}

static void
test_first_token_timeout(void)
{
	struct env e;
	env_open(&e, &(struct opts){ .first_token_ms = 300 });
	fake_config("{\"fail\": [{\"mode\": \"stall\"}, {\"mode\": \"stall\"}]}");
	struct rep r;
	ask(&e, 14, "plain", 0, &r);
	WAIT_FOR(r.done, 10000);
	ok(r.status == 504 && strcmp(r.code, "upstream_timeout") == 0, "a stalled stream: 504");
	ok(gate_idle(&e) && bstats(&e).failures_total == 1,
	   "the slot is released and the breaker heard a failure");
	ask(&e, 14, "runner", 0, &r);
	WAIT_FOR(r.done, 10000);
	ok(r.status == 200 && body_has(&r, "upstream_timeout"),
	   "run(ctx): llm.chat returns the first-token timeout as its error");
	ok(gate_idle(&e) && bstats(&e).failures_total == 2, "released again, second failure heard");
	env_close(&e);
}

static void
test_destroy_answers_503(void)
{
	struct env e;
	env_open(&e, &(struct opts){ .max_in_flight = 1, .max_queue = 4 });
	fake_config("{\"latency_ms\": 2000}");
	/* Three queued behind one call. destroy meets flights in bucket order
	 * (fixed by the keys); here it fails the call before a queued one, so
	 * without the early cancel the freed slot would go to that one (checked
	 * by taking the cancel out). */
	struct rep r, rq[3];
	ask(&e, 15, "plain", 0, &r);
	for (int i = 0; i < 3; i++)
		ask(&e, 16 + i, "plain", 0, &rq[i]);
	WAIT_FOR(stats(&e).calling == 1 && stats(&e).queued == 3, 5000);
	struct limiter_stats before = lstats(&e);
	struct llm_stats calls_before, calls_after;
	llm_client_stats(llm, &calls_before);
	analysis_destroy(e.a);
	llm_client_stats(llm, &calls_after);
	ok(r.done == 1 && r.status == 503 && strcmp(r.code, "shutting_down") == 0 &&
	   rq[0].done == 1 && rq[0].status == 503 && rq[2].done == 1 && rq[2].status == 503,
	   "destroy: the calling and the queued waiters get 503 shutting_down");
	ok(before.in_flight == 1 && before.queued == 3 && gate_idle(&e),
	   "and the slot and the queue places are released");
	ok(calls_after.calls == calls_before.calls, "the queued call was not started on the way out");
	e.a = NULL;               /* destroyed already */
	env_close(&e);
}

/* ---- set-up ---------------------------------------------------------------- */

static const char *const script_files[][2] = {
	{ "lib/queries.lua", "return {}\n" },
	{ "plain.lua",
	  "return {\n"
	  "  description = 'no queries',\n"
	  "  prompt = function(ctx) return { { role = 'user', content = 'plain' } } end,\n"
	  "}\n" },
	{ "withfb.lua",
	  "return {\n"
	  "  description = 'with a fallback',\n"
	  "  prompt = function(ctx) return { { role = 'user', content = 'fb' } } end,\n"
	  "  fallback = function(ctx) return { fb = true } end,\n"
	  "}\n" },
	{ "withq.lua",
	  "return {\n"
	  "  description = 'two named queries',\n"
	  "  queries = { 'contact', 'nap' },\n"
	  "  sql = {\n"
	  "    contact = { sql = [[SELECT $1::bigint AS id WHERE $1::bigint < 1000]], one = true },\n"
	  "    nap = [[SELECT $1::bigint AS id FROM pg_sleep(0.3)]],\n"
	  "  },\n"
	  "  prompt = function(ctx) return { { role = 'user', content = 'q ' .. ctx.contact.id } } end,\n"
	  "}\n" },
	{ "badq.lua",
	  "return {\n"
	  "  description = 'a query that fails',\n"
	  "  queries = { 'broken' },\n"
	  "  sql = { broken = [[SELECT * FROM no_such_table_for_test WHERE $1::bigint > 0]] },\n"
	  "  prompt = function(ctx) return { { role = 'user', content = 'x' } } end,\n"
	  "}\n" },
	{ "runner.lua",
	  "return {\n"
	  "  description = 'run(ctx) with one model call',\n"
	  "  run = function(ctx)\n"
	  "    local r, err = llm.chat({ { role = 'user', content = 'from run' } })\n"
	  "    return { ok = r ~= nil, err = err or '' }\n"
	  "  end,\n"
	  "}\n" },
};

static int
mkdir_p(const char *path)
{
	return mkdir(path, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

static bool
write_scripts(const char *root, char *sdir, size_t slen, char *pdir, size_t plen)
{
	char path[600];
	snprintf(sdir, slen, "%s/scripts", root);
	snprintf(pdir, plen, "%s/prompts", root);
	snprintf(path, sizeof path, "%s/lib", sdir);
	if (mkdir_p(sdir) || mkdir_p(path) || mkdir_p(pdir))
		return false;
	for (size_t i = 0; i < sizeof script_files / sizeof script_files[0]; i++) {
		snprintf(path, sizeof path, "%s/%s", sdir, script_files[i][0]);
		FILE *f = fopen(path, "w");
		if (!f)
			return false;
		fputs(script_files[i][1], f);
		fclose(f);
	}
	return true;
}

int
main(void)
{
	luajson_init();
	const char *url = getenv("TEST_OPENAI_BASE_URL");
	const char *dburl = getenv("TEST_DATABASE_URL");
	if (!url || !*url || !dburl || !*dburl) {
		printf("1..0 # SKIP TEST_OPENAI_BASE_URL and TEST_DATABASE_URL are needed\n");
		return 77;
	}
	fake_ctl_init(url);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	log_set_level(getenv("TEST_VERBOSE") ? LOG_DEBUG : LOG_ERROR);
	base = util_event_base();
	struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
	struct timeval five = { 0, 5000 };
	event_add(tick, &five);

	char root[] = "/tmp/test_analysis.XXXXXX";
	char sdir[300], pdir[300];
	if (!mkdtemp(root) || !write_scripts(root, sdir, sizeof sdir, pdir, sizeof pdir)) {
		printf("not ok 1 - cannot write the scripts folder\n1..1\n");
		return 1;
	}
	struct script_limits lim = { .memory_bytes = 64u << 20, .instructions = 10000000,
	                             .wall_ms = 1000, .max_steps = 8 };
	scripts = script_registry_create(sdir, pdir, "gpt-4o-mini", &lim);
	int bad = script_registry_reload(scripts);
	ok(bad == 0 && script_registry_count(scripts) == 5, "the test scripts compile (%d failed)", bad);
	db = db_pool_create(base, dburl, 4, 10000);
	WAIT_FOR(db_pool_is_up(db), 10000);
	ok(db_pool_is_up(db), "the database pool is up");
	llm = llm_client_create(base, &(struct llm_config){ .base_url = url, .max_retries = 0,
	                                                    .connect_timeout_ms = 2000 });

	test_miss_then_hit();
	test_coalesced();
	test_unknown_type();
	test_states_and_context();
	test_failure_releases();
	test_refused_by_limiter();
	test_breaker_open();
	test_refused_run_call_returns_the_trial();
	test_queued_then_orphaned();
	test_cancelled_mid_call();
	test_orphaned_before_the_model();
	test_finish_policy_caches_for_the_next();
	test_first_token_timeout();
	test_destroy_answers_503();

	llm_client_destroy(llm);
	db_pool_destroy(db);
	script_registry_destroy(scripts);
	event_free(tick);
	event_base_free(base);
	curl_global_cleanup();
	char cmd[400];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
	if (system(cmd) != 0)
		printf("# could not remove %s\n", root);
	return tap_done();
}
