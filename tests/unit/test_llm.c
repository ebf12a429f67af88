/*
 * test_llm — core/llm.c against the fake upstream over real sockets, on its
 * own libevent loop. TAP output.
 *
 * Needs TEST_OPENAI_BASE_URL (e.g. http://127.0.0.1:PORT/v1) pointing at a
 * running build/fake_openai; exits 77 (skip) without it. The fake is steered
 * through its control endpoints on the same host (/_fake/reset, /_fake/config,
 * /_fake/stats), which this test calls with blocking curl_easy requests: the
 * loop is idle between cases, so that is fine here (never in the server).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "llm.h"
#include "log.h"
#include "util.h"
#include "fake_ctl.h"

static int failures, tests;
static struct event_base *base;
static const char *base_url;

static void
ok(int cond, const char *fmt, ...)
{
	va_list ap;

	tests++;
	if (!cond)
		failures++;
	printf("%sok %d - ", cond ? "" : "not ", tests);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* ---- driving calls ---- */

struct outcome {
	int done;
	enum llm_status status;
	long http_status;
	char *content, *finish_reason, *model, *error_message, *error_code, *request_id;
	long prompt_tokens, completion_tokens;
	int attempts;
	double elapsed_ms;
	struct limiter_signal rate;
	/* streaming */
	int ndeltas;
	char *deltas;              /* all delta texts concatenated */
	size_t deltas_len;
	int delta_after_done;      /* a delta came after on_done: must not happen */
	double first_delta_ms, done_ms, started_ms;
	/* behaviours under test */
	int cancel_self_at;        /* > 0: llm_cancel(own call) at that delta */
	llm_call *call;
	llm_call *cancel_on_done;  /* cancel this other call from on_done */
	llm_client *chain_client;  /* sequential calls: start the next from on_done */
	int chain_left;
};

static char *
dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static void
outcome_free(struct outcome *o)
{
	free(o->content);
	free(o->finish_reason);
	free(o->model);
	free(o->error_message);
	free(o->error_code);
	free(o->request_id);
	free(o->deltas);
	memset(o, 0, sizeof(*o));
}

static json_t *
make_request(void)
{
	return json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s}]}",
	    "model", "gpt-4o-mini",
	    "messages",
	    "role", "system", "content", "You are a test.",
	    "role", "user", "content", "Say hello.");
}

static void on_done(void *arg, const struct llm_result *r);

static void
on_delta(void *arg, const char *text, size_t len)
{
	struct outcome *o = arg;

	if (o->done)
		o->delta_after_done = 1;
	if (o->ndeltas == 0)
		o->first_delta_ms = util_now_ms();
	o->ndeltas++;
	o->deltas = realloc(o->deltas, o->deltas_len + len + 1);
	memcpy(o->deltas + o->deltas_len, text, len);
	o->deltas_len += len;
	o->deltas[o->deltas_len] = '\0';
	if (o->cancel_self_at && o->ndeltas == o->cancel_self_at) {
		llm_cancel(o->call);
		o->done = 2; /* "finished by cancel", for run_until */
	}
}

static void
on_done(void *arg, const struct llm_result *r)
{
	struct outcome *o = arg;

	o->done = 1;
	o->done_ms = util_now_ms();
	o->status = r->status;
	o->http_status = r->http_status;
	free(o->content);
	o->content = dup_or_null(r->content);
	free(o->finish_reason);
	o->finish_reason = dup_or_null(r->finish_reason);
	free(o->model);
	o->model = dup_or_null(r->model);
	free(o->error_message);
	o->error_message = dup_or_null(r->error_message);
	free(o->error_code);
	o->error_code = dup_or_null(r->error_code);
	free(o->request_id);
	o->request_id = dup_or_null(r->request_id);
	o->prompt_tokens = r->prompt_tokens;
	o->completion_tokens = r->completion_tokens;
	o->attempts = r->attempts;
	o->elapsed_ms = r->elapsed_ms;
	o->rate = r->rate;
	if (o->cancel_on_done) {
		llm_cancel(o->cancel_on_done);
		o->cancel_on_done = NULL;
	}
	if (o->chain_client && o->chain_left > 0) {
		json_t *req = make_request();
		o->chain_left--;
		o->done = 0;
		o->call = llm_chat(o->chain_client, req, 10000, NULL, on_done, o);
		json_decref(req);
	}
}

static void
on_wake(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until *flag is set or ms pass. */
static int
run_until(int *flag, double ms)
{
	double end = util_now_ms() + ms;
	struct event *wake = evtimer_new(base, on_wake, NULL);
	struct timeval tv = { 0, 20000 };

	while (!*flag && util_now_ms() < end) {
		evtimer_add(wake, &tv);
		event_base_loop(base, EVLOOP_ONCE);
	}
	event_free(wake);
	return *flag;
}

static void
run_for(double ms)
{
	int never = 0;
	run_until(&never, ms);
}

static llm_client *
new_client(const char *url, int max_retries)
{
	struct llm_config cfg = {
		.base_url = url,
		.api_key = "sk-test-0123456789abcdef",
		.connect_timeout_ms = 2000,
		.max_retries = max_retries,
	};
	return llm_client_create(base, &cfg);
}

static void
start(llm_client *c, struct outcome *o, long timeout_ms, int stream)
{
	json_t *req = make_request();

	o->started_ms = util_now_ms();
	o->call = llm_chat(c, req, timeout_ms, stream ? on_delta : NULL, on_done, o);
	json_decref(req);
}

/* ---- cases ---- */

static void
test_plain(llm_client *c)
{
	struct outcome o = { 0 };

	fake_reset();
	start(c, &o, 10000, 0);
	run_until(&o.done, 15000);
	ok(o.done && o.status == LLM_OK, "non-streamed: LLM_OK (%s)",
	   o.error_message ? o.error_message : "-");
	ok(o.content && strlen(o.content) > 0, "non-streamed: content (%zu bytes)",
	   o.content ? strlen(o.content) : 0);
	ok(o.prompt_tokens > 0 && o.completion_tokens > 0,
	   "non-streamed: usage %ld/%ld", o.prompt_tokens, o.completion_tokens);
	ok(o.http_status == 200 && o.attempts == 1 && o.finish_reason && o.model,
	   "non-streamed: http 200, 1 attempt, finish_reason %s, model %s",
	   o.finish_reason ? o.finish_reason : "-", o.model ? o.model : "-");
	ok(o.request_id != NULL, "non-streamed: x-request-id captured (%s)",
	   o.request_id ? o.request_id : "-");
	ok(o.ndeltas == 0, "non-streamed: no deltas");
	ok(fake_stat("chat_calls") == 1, "non-streamed: the fake saw one call");
	outcome_free(&o);
}

static void
test_stream(llm_client *c)
{
	struct outcome o = { 0 };

	fake_reset();
	fake_config("{\"chunk_delay_ms\": 30, \"chunks\": 6}");
	start(c, &o, 10000, 1);
	run_until(&o.done, 15000);
	ok(o.done && o.status == LLM_OK, "streamed: LLM_OK (%s)",
	   o.error_message ? o.error_message : "-");
	ok(o.ndeltas >= 2, "streamed: %d deltas arrived one by one", o.ndeltas);
	ok(!o.delta_after_done && o.ndeltas > 0 && o.first_delta_ms < o.done_ms - 50,
	   "streamed: deltas before on_done (first %.0f ms before it)",
	   o.done_ms - o.first_delta_ms);
	ok(o.content && o.deltas && strcmp(o.content, o.deltas) == 0,
	   "streamed: deltas reassemble the content");
	ok(o.prompt_tokens > 0 && o.completion_tokens > 0,
	   "streamed: usage from the final chunk %ld/%ld", o.prompt_tokens, o.completion_tokens);
	ok(o.finish_reason && strcmp(o.finish_reason, "stop") == 0 && o.model,
	   "streamed: finish_reason %s, model %s",
	   o.finish_reason ? o.finish_reason : "-", o.model ? o.model : "-");
	ok(fake_stat("stream_calls") == 1, "streamed: the fake saw a stream request");
	outcome_free(&o);
}

static void
test_retry_500(llm_client *c)
{
	struct outcome o = { 0 };

	fake_reset();
	fake_config("{\"fail\": [{\"status\": 500, \"retry_after\": \"0.2\"}]}");
	start(c, &o, 10000, 0);
	run_until(&o.done, 15000);
	ok(o.done && o.status == LLM_OK && o.attempts == 2,
	   "500 then success: one result, attempts == %d", o.attempts);
	ok(o.elapsed_ms >= 200, "500: retry-after 0.2 s honoured (%.0f ms)", o.elapsed_ms);
	ok(fake_stat("chat_calls") == 2, "500: the fake saw two calls");
	outcome_free(&o);

	/* Same through a stream: a failed first attempt delivered nothing. */
	fake_reset();
	fake_config("{\"fail\": [{\"status\": 503}]}");
	start(c, &o, 10000, 1);
	run_until(&o.done, 15000);
	ok(o.done && o.status == LLM_OK && o.attempts == 2 && o.content &&
	   o.deltas && strcmp(o.content, o.deltas) == 0,
	   "503 then success, streamed: attempts == %d, deltas intact", o.attempts);
	outcome_free(&o);
}

static void
test_retry_429(llm_client *c)
{
	struct outcome o = { 0 };

	fake_reset();
	fake_config("{\"fail\": [{\"status\": 429, \"retry_after\": \"0.6\"}]}");
	start(c, &o, 10000, 0);
	run_until(&o.done, 15000);
	ok(o.done && o.status == LLM_OK && o.attempts == 2,
	   "429 then success: attempts == %d", o.attempts);
	ok(o.elapsed_ms >= 600, "429: retry no earlier than retry-after 0.6 s (%.0f ms)",
	   o.elapsed_ms);
	outcome_free(&o);

	/* A retry-after that does not fit before the deadline: no retry,
	 * the 429 itself is reported (the deadline has not passed). */
	fake_reset();
	fake_config("{\"fail\": [{\"status\": 429, \"retry_after\": \"5\"}]}");
	start(c, &o, 1500, 0);
	run_until(&o.done, 5000);
	ok(o.done && o.status == LLM_ERR_HTTP && o.http_status == 429 && o.attempts == 1 &&
	   o.elapsed_ms < 1000,
	   "429 with retry-after past the deadline: LLM_ERR_HTTP at once (%.0f ms)",
	   o.elapsed_ms);
	outcome_free(&o);
}

static void
test_400(llm_client *c)
{
	struct outcome o = { 0 };

	fake_reset();
	fake_config("{\"fail\": [{\"status\": 400}]}");
	start(c, &o, 10000, 0);
	run_until(&o.done, 15000);
	ok(o.done && o.status == LLM_ERR_HTTP && o.http_status == 400 && o.attempts == 1,
	   "400: LLM_ERR_HTTP, not retried (attempts %d)", o.attempts);
	ok(o.error_message && strlen(o.error_message) > 0,
	   "400: error message from the body (%s)", o.error_message ? o.error_message : "-");
	ok(o.error_message && !strstr(o.error_message, "0123456789abcdef"),
	   "400: the key is not in the message");
	ok(fake_stat("chat_calls") == 1, "400: the fake saw one call");
	outcome_free(&o);

	/* A 400 to a stream request is a JSON body too. */
	fake_reset();
	fake_config("{\"fail\": [{\"status\": 400}]}");
	start(c, &o, 10000, 1);
	run_until(&o.done, 15000);
	ok(o.done && o.status == LLM_ERR_HTTP && o.http_status == 400 && o.ndeltas == 0 &&
	   o.error_message && strstr(o.error_message, "HTTP 400") == NULL,
	   "400 on a stream: parsed as a JSON error (%s)",
	   o.error_message ? o.error_message : "-");
	outcome_free(&o);
}

static void
test_deadline(llm_client *c)
{
	struct outcome o = { 0 };

	fake_reset();
	fake_config("{\"latency_ms\": 1500}");
	start(c, &o, 300, 0);
	run_until(&o.done, 5000);
	ok(o.done && o.status == LLM_ERR_TIMEOUT, "deadline shorter than latency: LLM_ERR_TIMEOUT (%s)",
	   o.error_message ? o.error_message : "-");
	ok(o.elapsed_ms >= 290 && o.elapsed_ms < 1000, "deadline: ended at %.0f ms (300)",
	   o.elapsed_ms);
	outcome_free(&o);

	/* Streamed, with text already out: still a timeout. */
	fake_reset();
	fake_config("{\"chunk_delay_ms\": 200, \"chunks\": 20}");
	start(c, &o, 700, 1);
	run_until(&o.done, 5000);
	ok(o.done && o.status == LLM_ERR_TIMEOUT && o.ndeltas > 0 && o.attempts == 1,
	   "deadline mid-stream: LLM_ERR_TIMEOUT after %d deltas", o.ndeltas);
	outcome_free(&o);
}

static void
test_cut(void)
{
	struct outcome o = { 0 };
	llm_client *c0 = new_client(base_url, 0), *c2 = new_client(base_url, 2);

	fake_reset();
	fake_config("{\"fail\": [{\"mode\": \"cut\", \"after_chunks\": 2}]}");
	start(c0, &o, 10000, 1);
	run_until(&o.done, 15000);
	ok(o.done && o.status == LLM_ERR_PROTOCOL && o.error_message &&
	   strstr(o.error_message, "cut"),
	   "cut stream: LLM_ERR_PROTOCOL (%s)", o.error_message ? o.error_message : "-");
	outcome_free(&o);

	/* With retries allowed, text already delivered still forbids one. */
	fake_reset();
	fake_config("{\"chunks\": 8, \"fail\": [{\"mode\": \"cut\", \"after_chunks\": 4}]}");
	start(c2, &o, 10000, 1);
	run_until(&o.done, 15000);
	ok(o.done && o.status == LLM_ERR_PROTOCOL && o.ndeltas > 0 && o.attempts == 1,
	   "cut after %d deltas: not retried (attempts %d)", o.ndeltas, o.attempts);
	outcome_free(&o);
	llm_client_destroy(c0);
	llm_client_destroy(c2);
}

static void
test_refused(void)
{
	struct outcome o = { 0 };
	struct llm_stats st;
	llm_client *c = new_client("http://127.0.0.1:1/v1/", 1);

	start(c, &o, 10000, 0);
	run_until(&o.done, 5000);
	ok(o.done && o.status == LLM_ERR_CONNECT && o.attempts == 2 && o.http_status == 0,
	   "connection refused: LLM_ERR_CONNECT after %d attempts (%s)", o.attempts,
	   o.error_message ? o.error_message : "-");
	ok(o.error_message && !strstr(o.error_message, "0123456789abcdef"),
	   "connection refused: the key is not in the message");
	llm_client_stats(c, &st);
	ok(st.calls == 1 && st.attempts == 2 && st.in_flight == 0,
	   "stats after refusal: calls %ld attempts %ld in_flight %ld",
	   st.calls, st.attempts, st.in_flight);
	outcome_free(&o);
	llm_client_destroy(c);
}

static void
test_reuse(void)
{
	struct outcome o = { 0 };
	struct llm_stats st;
	llm_client *c = new_client(base_url, 2);

	long before, after;

	fake_reset();
	/* The fake counts every TCP connection, our control requests too: each
	 * stats request is one, counted before it answers. */
	before = fake_stat("connections");
	o.chain_client = c;
	o.chain_left = 19;
	start(c, &o, 10000, 0);
	/* on_done starts the next call and clears done until the last one. */
	run_until(&o.done, 30000);
	llm_client_stats(c, &st);
	ok(o.done && o.status == LLM_OK && st.calls == 20 && st.attempts == 20,
	   "20 sequential calls done (calls %ld attempts %ld)", st.calls, st.attempts);
	ok(st.connections == 1, "20 sequential calls: llm opened %ld connection(s)",
	   st.connections);
	after = fake_stat("connections");
	ok(after - before - 1 == 1, "20 sequential calls: the fake accepted %ld connection(s)",
	   after - before - 1);
	outcome_free(&o);
	llm_client_destroy(c);
}

static void
test_cancel(llm_client *c)
{
	struct outcome o = { 0 }, a = { 0 }, b = { 0 };
	struct llm_stats st;

	/* A stalled call, cancelled from outside any callback. */
	fake_reset();
	fake_config("{\"fail\": [{\"mode\": \"stall\"}]}");
	start(c, &o, 10000, 0);
	run_for(300);
	llm_cancel(o.call);
	llm_client_stats(c, &st);
	ok(st.in_flight == 0, "cancel stalled: freed at once (in_flight %ld)", st.in_flight);
	run_for(200);
	ok(!o.done, "cancel stalled: no on_done");
	outcome_free(&o);

	/* Cancelled from its own on_delta: no more deltas, no on_done. */
	fake_reset();
	fake_config("{\"chunk_delay_ms\": 20, \"chunks\": 10}");
	o.cancel_self_at = 2;
	start(c, &o, 10000, 1);
	run_until(&o.done, 5000);
	run_for(300);
	llm_client_stats(c, &st);
	ok(o.done == 2 && o.ndeltas == 2 && st.in_flight == 0,
	   "cancel from on_delta: stopped after %d deltas, freed (in_flight %ld)",
	   o.ndeltas, st.in_flight);
	outcome_free(&o);

	/* Cancelled while waiting for a retry. */
	fake_reset();
	fake_config("{\"fail\": [{\"status\": 503, \"retry_after\": \"2\"}]}");
	start(c, &o, 10000, 0);
	run_for(400);
	llm_client_stats(c, &st);
	ok(st.in_flight == 1 && !o.done, "waiting for a retry: still in flight");
	llm_cancel(o.call);
	llm_client_stats(c, &st);
	run_for(100);
	ok(st.in_flight == 0 && !o.done && fake_stat("chat_calls") == 1,
	   "cancel during the retry wait: freed, no second attempt");
	outcome_free(&o);

	/* One call's on_done cancels another (stalled) one. */
	fake_reset();
	fake_config("{\"fail\": [{\"mode\": \"stall\"}]}");
	start(c, &b, 10000, 0);
	run_for(200);
	start(c, &a, 10000, 0);
	a.cancel_on_done = b.call;
	run_until(&a.done, 5000);
	run_for(100);
	llm_client_stats(c, &st);
	ok(a.done && a.status == LLM_OK && !b.done && st.in_flight == 0,
	   "on_done cancels another call: no callback for it, both freed");
	outcome_free(&a);
	outcome_free(&b);
}

static void
test_fake_modes(llm_client *c)
{
	struct outcome o = { 0 };
	json_t *st, *last;

	/* The request as the fake received it. */
	fake_reset();
	start(c, &o, 10000, 1);
	run_until(&o.done, 15000);
	st = fake_ctl("/_fake/stats", NULL);
	last = json_object_get(st, "last_request");
	ok(o.status == LLM_OK && json_is_true(json_object_get(st, "last_authorization_present")) &&
	   json_is_true(json_object_get(last, "stream")) &&
	   json_is_true(json_object_get(json_object_get(last, "stream_options"), "include_usage")),
	   "fake saw Authorization, stream and stream_options.include_usage");
	json_decref(st);
	outcome_free(&o);

	/* data: {"error":…} inside the 200 stream, after some text. */
	fake_reset();
	fake_config("{\"fail\": [{\"mode\": \"stream_error\", \"after_chunks\": 2, "
	            "\"message\": \"The model is overloaded\"}]}");
	start(c, &o, 10000, 1);
	run_until(&o.done, 15000);
	ok(o.status == LLM_ERR_HTTP && o.attempts == 1 && o.ndeltas == 2 && o.error_message &&
	   strstr(o.error_message, "overloaded"),
	   "stream_error after 2 chunks: LLM_ERR_HTTP (%s)", o.error_message ? o.error_message : "-");
	outcome_free(&o);

	/* A 200 that is not the API at all. */
	fake_reset();
	fake_config("{\"fail\": [{\"mode\": \"garbage\"}]}");
	start(c, &o, 10000, 0);
	run_until(&o.done, 15000);
	ok(o.status == LLM_ERR_PROTOCOL && o.attempts == 1, "garbage 200: LLM_ERR_PROTOCOL (%s)",
	   o.error_message ? o.error_message : "-");
	outcome_free(&o);

	/* A non-streamed reply cut mid-body is a connection failure: retried. */
	fake_reset();
	fake_config("{\"fail\": [{\"mode\": \"cut\"}]}");
	start(c, &o, 10000, 0);
	run_until(&o.done, 15000);
	ok(o.status == LLM_OK && o.attempts == 2, "non-streamed cut: retried, then LLM_OK (attempts %d)",
	   o.attempts);
	outcome_free(&o);
}

static void
test_parallel(llm_client *c)
{
	enum { N = 30 };
	struct outcome o[N];
	struct llm_stats st;
	int all_ok = 1, intact = 1, done;
	double end;

	memset(o, 0, sizeof o);
	fake_reset();
	fake_config("{\"latency_ms\": 100, \"chunk_delay_ms\": 10, \"chunks\": 5}");
	for (int i = 0; i < N; i++)
		start(c, &o[i], 15000, i % 2);
	llm_client_stats(c, &st);
	ok(st.in_flight == N, "parallel: %d calls in flight", (int)st.in_flight);
	end = util_now_ms() + 15000;
	do {
		done = 0;
		run_for(20);
		for (int i = 0; i < N; i++)
			done += o[i].done != 0;
	} while (done < N && util_now_ms() < end);
	for (int i = 0; i < N; i++) {
		all_ok &= o[i].done && o[i].status == LLM_OK;
		if (i % 2)
			intact &= o[i].deltas && o[i].content && strcmp(o[i].deltas, o[i].content) == 0;
	}
	ok(all_ok, "parallel: %d mixed streamed/plain calls all LLM_OK", N);
	ok(intact, "parallel: every stream reassembles its own content");
	ok(fake_stat("max_in_flight") > 1, "parallel: the fake served them concurrently (max %ld)",
	   fake_stat("max_in_flight"));
	for (int i = 0; i < N; i++)
		outcome_free(&o[i]);
}

static void
test_destroy_live(void)
{
	struct outcome o = { 0 }, w = { 0 };
	llm_client *c = new_client(base_url, 2);

	fake_reset();
	fake_config("{\"fail\": [{\"mode\": \"stall\"}, {\"status\": 500, \"retry_after\": \"5\"}]}");
	start(c, &o, 10000, 1);
	start(c, &w, 10000, 0);
	run_for(400);
	llm_client_destroy(c);
	run_for(100);
	ok(!o.done && !w.done, "destroy with a live and a retry-waiting call: no callbacks");
	outcome_free(&o);
	outcome_free(&w);
}

/* ---- an in-process upstream for replies the fake does not script ----
 *
 * An evhttp server on this same loop answers /v1/chat/completions from a
 * queue of canned replies (status, headers, body) and records what it was
 * sent: the exact headers and body llm produced, and the odd replies
 * (HTML error pages, x-should-retry, insufficient_quota, errors inside a
 * stream, oversized bodies) a real upstream or proxy can send. */

struct canned {
	int status;
	const char *ctype;
	const char *headers;      /* "name: value\n" lines, or NULL */
	const char *body;
	size_t body_len;          /* 0: strlen(body) */
};

static struct {
	struct evhttp *http;
	char url[128];            /* http://127.0.0.1:PORT/v1/ (trailing '/') */
	struct canned q[8];
	int n, pos;
	int calls;
	int auth_present;
	char auth[256], accept[128], path[256];
	char *body;
} edge;

static void
edge_handler(struct evhttp_request *req, void *arg)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct evbuffer *ib = evhttp_request_get_input_buffer(req);
	struct evbuffer *ob = evbuffer_new();
	const char *v;
	struct canned dflt = { 200, "application/json", NULL,
		"{\"choices\":[{\"message\":{\"content\":\"edge ok\"},\"finish_reason\":\"stop\"}],"
		"\"model\":\"edge\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}", 0 };
	static struct canned notfound = { 404, "text/plain", NULL, "wrong path", 0 };
	struct canned *c = edge.pos < edge.n ? &edge.q[edge.pos++] : &dflt;
	size_t n = evbuffer_get_length(ib);

	edge.calls++;
	snprintf(edge.path, sizeof edge.path, "%s", evhttp_request_get_uri(req));
	v = evhttp_find_header(in, "Authorization");
	edge.auth_present = v != NULL;
	snprintf(edge.auth, sizeof edge.auth, "%s", v ? v : "");
	v = evhttp_find_header(in, "Accept");
	snprintf(edge.accept, sizeof edge.accept, "%s", v ? v : "");
	free(edge.body);
	edge.body = malloc(n + 1);
	evbuffer_copyout(ib, edge.body, n);
	edge.body[n] = '\0';

	if (strcmp(edge.path, "/v1/chat/completions") != 0)
		c = &notfound;
	evhttp_add_header(out, "Content-Type", c->ctype);
	for (const char *h = c->headers; h && *h;) {
		const char *nl = strchr(h, '\n'), *colon = strchr(h, ':');
		char name[64], value[160];
		snprintf(name, sizeof name, "%.*s", (int)(colon - h), h);
		snprintf(value, sizeof value, "%.*s", (int)(nl - colon - 2), colon + 2);
		evhttp_add_header(out, name, value);
		h = nl + 1;
	}
	evbuffer_add(ob, c->body, c->body_len ? c->body_len : strlen(c->body));
	evhttp_send_reply(req, c->status, "Canned", ob);
	evbuffer_free(ob);
}

static int
edge_start(void)
{
	struct evhttp_bound_socket *bs;
	struct sockaddr_in sin;
	socklen_t len = sizeof sin;

	edge.http = evhttp_new(base);
	bs = evhttp_bind_socket_with_handle(edge.http, "127.0.0.1", 0);
	if (!bs)
		return -1;
	getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &len);
	snprintf(edge.url, sizeof edge.url, "http://127.0.0.1:%d/v1/", ntohs(sin.sin_port));
	evhttp_set_gencb(edge.http, edge_handler, NULL);
	return 0;
}

static void
edge_script(int n, const struct canned *q)
{
	if (n)
		memcpy(edge.q, q, (size_t)n * sizeof *q);
	edge.n = n;
	edge.pos = 0;
	edge.calls = 0;
}

static void
edge_run(llm_client *c, struct outcome *o, int stream, long timeout_ms)
{
	start(c, o, timeout_ms, stream);
	run_until(&o->done, timeout_ms + 5000);
}

#define ERR_JSON(msg, type, code) \
	"{\"error\":{\"message\":\"" msg "\",\"type\":\"" type "\",\"param\":null,\"code\":" code "}}"

static void
test_edge(void)
{
	struct outcome o = { 0 };
	struct llm_config nokey = { .base_url = edge.url, .connect_timeout_ms = 2000, .max_retries = 2 };
	llm_client *c = new_client(edge.url, 2), *c0 = new_client(edge.url, 0);
	llm_client *anon = llm_client_create(base, &nokey);
	json_t *sent;

	/* What goes on the wire. */
	edge_script(0, NULL);
	edge_run(c, &o, 0, 5000);
	sent = json_loads(edge.body ? edge.body : "", 0, NULL);
	ok(o.status == LLM_OK && o.content && strcmp(o.content, "edge ok") == 0 &&
	   strcmp(edge.path, "/v1/chat/completions") == 0,
	   "base_url trailing '/' stripped: POST /v1/chat/completions");
	ok(strcmp(edge.auth, "Bearer sk-test-0123456789abcdef") == 0,
	   "Authorization: Bearer <key> sent");
	ok(sent && !json_object_get(sent, "stream") && !json_object_get(sent, "stream_options") &&
	   json_is_array(json_object_get(sent, "messages")),
	   "non-streamed body: the request as given, no stream fields");
	json_decref(sent);
	outcome_free(&o);

	edge_script(1, (struct canned[]){ { 200, "text/event-stream", NULL,
		"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n", 0 } });
	edge_run(anon, &o, 1, 5000);
	sent = json_loads(edge.body ? edge.body : "", 0, NULL);
	ok(o.status == LLM_OK && !edge.auth_present, "no key configured: no Authorization header");
	ok(strcmp(edge.accept, "text/event-stream") == 0 && sent &&
	   json_is_true(json_object_get(sent, "stream")) &&
	   json_is_true(json_object_get(json_object_get(sent, "stream_options"), "include_usage")),
	   "streamed: Accept: text/event-stream, stream and include_usage in the body");
	ok(o.prompt_tokens == -1 && o.completion_tokens == -1,
	   "no usage chunk: token counts are -1");
	json_decref(sent);
	outcome_free(&o);

	/* Error bodies that are not OpenAI's. */
	edge_script(1, (struct canned[]){ { 502, "text/html", NULL, "<html>Bad Gateway</html>", 0 } });
	edge_run(c0, &o, 0, 5000);
	ok(o.status == LLM_ERR_HTTP && o.http_status == 502 && o.error_message &&
	   strcmp(o.error_message, "upstream returned HTTP 502") == 0,
	   "HTML 502: \"%s\"", o.error_message ? o.error_message : "-");
	outcome_free(&o);

	/* x-should-retry overrides the status table, both ways. */
	edge_script(1, (struct canned[]){ { 503, "application/json", "x-should-retry: false\n",
		ERR_JSON("busy", "server_error", "null"), 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_ERR_HTTP && o.attempts == 1 && edge.calls == 1,
	   "503 with x-should-retry: false: not retried");
	outcome_free(&o);
	edge_script(1, (struct canned[]){ { 400, "application/json", "x-should-retry: true\nretry-after-ms: 10\n",
		ERR_JSON("try again", "invalid_request_error", "null"), 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_OK && o.attempts == 2, "400 with x-should-retry: true: retried");
	outcome_free(&o);

	/* insufficient_quota: a 429 retrying cannot fix. */
	edge_script(1, (struct canned[]){ { 429, "application/json", "retry-after: 1\n",
		ERR_JSON("You exceeded your current quota", "insufficient_quota", "\"insufficient_quota\""), 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_ERR_HTTP && o.attempts == 1 && o.error_code &&
	   strcmp(o.error_code, "insufficient_quota") == 0,
	   "429 insufficient_quota: not retried, error_code %s", o.error_code ? o.error_code : "-");
	outcome_free(&o);

	/* retry-after-ms wins over retry-after. */
	edge_script(1, (struct canned[]){ { 429, "application/json",
		"retry-after: 0.01\nretry-after-ms: 300.5\n", ERR_JSON("slow down", "requests", "\"rate_limit_exceeded\""), 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_OK && o.attempts == 2 && o.elapsed_ms >= 300,
	   "retry-after-ms preferred over retry-after (%.0f ms)", o.elapsed_ms);
	outcome_free(&o);

	/* A hint over 60 s is ignored for the default backoff (0.375–0.5 s). */
	edge_script(1, (struct canned[]){ { 500, "application/json", "retry-after: 120\n",
		ERR_JSON("oops", "server_error", "null"), 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_OK && o.attempts == 2 && o.elapsed_ms >= 370 && o.elapsed_ms < 1500,
	   "retry-after over 60 s: default backoff instead (%.0f ms)", o.elapsed_ms);
	outcome_free(&o);

	/* Retries exhausted: the last error, attempts = 1 + max_retries. */
	edge_script(3, (struct canned[]){
		{ 500, "application/json", "retry-after-ms: 5\n", ERR_JSON("one", "server_error", "null"), 0 },
		{ 502, "application/json", "retry-after-ms: 5\n", ERR_JSON("two", "server_error", "null"), 0 },
		{ 504, "application/json", "retry-after-ms: 5\n", ERR_JSON("three", "server_error", "null"), 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_ERR_HTTP && o.attempts == 3 && o.http_status == 504 && o.error_message &&
	   strcmp(o.error_message, "three") == 0,
	   "retries exhausted: last error reported (HTTP %ld, %s)", o.http_status,
	   o.error_message ? o.error_message : "-");
	outcome_free(&o);

	/* An upstream echoing the key must not make us repeat it. */
	edge_script(1, (struct canned[]){ { 401, "application/json", NULL,
		ERR_JSON("Incorrect API key provided: sk-test-0123456789abcdef.", "invalid_request_error",
		         "\"invalid_api_key\""), 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_ERR_HTTP && o.attempts == 1 && o.error_message &&
	   !strstr(o.error_message, "sk-test-0123456789abcdef") && strstr(o.error_message, "***"),
	   "401 echoing the key: scrubbed (%s)", o.error_message ? o.error_message : "-");
	outcome_free(&o);

	/* 200s that are not completions. */
	edge_script(1, (struct canned[]){ { 200, "application/json", NULL, "{\"hello\":1}", 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_ERR_PROTOCOL && o.attempts == 1, "200 without choices: LLM_ERR_PROTOCOL");
	outcome_free(&o);
	edge_script(1, (struct canned[]){ { 200, "application/json", NULL, "not json at all", 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_ERR_PROTOCOL, "200 with a non-JSON body: LLM_ERR_PROTOCOL");
	outcome_free(&o);

	/* Streams. */
	edge_script(1, (struct canned[]){ { 200, "text/event-stream", NULL,
		"data: {\"choices\":[{\"delta\":{\"content\":\"par\"}}]}\n\n"
		"data: {\"error\":{\"message\":\"overloaded mid-stream\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n", 0 } });
	edge_run(c, &o, 1, 5000);
	ok(o.status == LLM_ERR_HTTP && o.attempts == 1 && o.ndeltas == 1 && o.error_message &&
	   strcmp(o.error_message, "overloaded mid-stream") == 0,
	   "error event inside a 200 stream: LLM_ERR_HTTP with its message");
	outcome_free(&o);
	edge_script(1, (struct canned[]){ { 200, "text/event-stream", NULL,
		"data: {\"choices\":[{\"delta\":{\"content\":\"par\"}}]}\n\ndata: {oops\n\n", 0 } });
	edge_run(c, &o, 1, 5000);
	ok(o.status == LLM_ERR_PROTOCOL && o.attempts == 1, "invalid JSON chunk: LLM_ERR_PROTOCOL");
	outcome_free(&o);
	edge_script(1, (struct canned[]){ { 200, "text/event-stream", NULL,
		"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n", 0 } });
	edge_run(c, &o, 1, 5000);
	ok(o.status == LLM_ERR_PROTOCOL && o.attempts == 1 && o.content && strcmp(o.content, "x") == 0,
	   "stream ending cleanly without [DONE]: cut, partial content kept, not retried");
	outcome_free(&o);
	edge_script(1, (struct canned[]){ { 200, "text/event-stream", NULL,
		"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n", 0 } });
	edge_run(c, &o, 1, 5000);
	ok(o.status == LLM_OK && o.attempts == 2,
	   "stream cut before any text: retried (attempts %d)", o.attempts);
	outcome_free(&o);
	edge_script(1, (struct canned[]){ { 200, "application/json", NULL,
		"{\"choices\":[{\"message\":{\"content\":\"whole\",\"refusal\":null},\"finish_reason\":\"stop\"}]}", 0 } });
	edge_run(c, &o, 1, 5000);
	ok(o.status == LLM_OK && o.ndeltas == 1 && o.deltas && strcmp(o.deltas, "whole") == 0,
	   "stream request answered with JSON: one delta with the whole text");
	outcome_free(&o);
	edge_script(1, (struct canned[]){ { 200, "text/event-stream", NULL,
		"data: {\"choices\":[{\"delta\":{\"refusal\":\"I can't\"}}]}\n\n"
		"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n", 0 } });
	edge_run(c, &o, 1, 5000);
	ok(o.status == LLM_OK && o.ndeltas == 0 && o.content && !*o.content,
	   "refusal stream: no deltas, empty content");
	outcome_free(&o);

	/* Size caps. */
	{
		size_t big = 9u * 1024 * 1024;
		char *b = malloc(big);
		memset(b, ' ', big);
		b[0] = '{';
		edge_script(1, (struct canned[]){ { 200, "application/json", NULL, b, big } });
		edge_run(c, &o, 0, 10000);
		ok(o.status == LLM_ERR_PROTOCOL && o.error_message && strstr(o.error_message, "8 MiB"),
		   "9 MiB reply: LLM_ERR_PROTOCOL (%s)", o.error_message ? o.error_message : "-");
		outcome_free(&o);
		memcpy(b, "data: \"", 7);
		edge_script(1, (struct canned[]){ { 200, "text/event-stream", NULL, b, 2u * 1024 * 1024 } });
		edge_run(c, &o, 1, 10000);
		ok(o.status == LLM_ERR_PROTOCOL && o.error_message && strstr(o.error_message, "1 MiB"),
		   "2 MiB SSE line: LLM_ERR_PROTOCOL (%s)", o.error_message ? o.error_message : "-");
		outcome_free(&o);
		free(b);
	}

	/* The provider's rate-limit headers, on a success and on errors. */
	edge_script(1, (struct canned[]){ { 200, "application/json",
		"x-ratelimit-limit-requests: 500\nx-ratelimit-limit-tokens: 30000\n"
		"x-ratelimit-remaining-requests: 499\nx-ratelimit-remaining-tokens: 29000\n"
		"x-ratelimit-reset-requests: 120ms\nx-ratelimit-reset-tokens: 1m2.5s\n",
		"{\"choices\":[{\"message\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}],"
		"\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5}}", 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_OK && o.rate.ok && o.rate.throttled == 0 && o.rate.tokens == 12,
	   "rate: ok, not throttled, 12 tokens used (%ld)", o.rate.tokens);
	ok(o.rate.sent_ms >= o.started_ms && o.rate.sent_ms <= o.done_ms,
	   "rate: sent_ms is when the request went out, between start and done");
	ok(o.rate.has_limit_requests && o.rate.limit_requests == 500 && o.rate.has_limit_tokens &&
	   o.rate.limit_tokens == 30000, "x-ratelimit-limit-* parsed");
	ok(o.rate.has_remaining_requests && o.rate.remaining_requests == 499 &&
	   o.rate.has_remaining_tokens && o.rate.remaining_tokens == 29000,
	   "x-ratelimit-remaining-* parsed");
	ok(o.rate.has_reset_requests && o.rate.reset_requests_ms == 120 && o.rate.has_reset_tokens &&
	   o.rate.reset_tokens_ms == 62500 && !o.rate.has_retry_after,
	   "x-ratelimit-reset-* in Go durations: 120ms, 1m2.5s (%.1f, %.1f)",
	   o.rate.reset_requests_ms, o.rate.reset_tokens_ms);
	outcome_free(&o);
	edge_script(2, (struct canned[]){
		{ 429, "application/json",
		  "retry-after-ms: 20\nx-ratelimit-remaining-requests: 0\nx-ratelimit-reset-requests: 20ms\n",
		  ERR_JSON("Rate limit reached", "requests", "\"rate_limit_exceeded\""), 0 },
		{ 429, "application/json",
		  "retry-after: 1\nx-ratelimit-remaining-requests: 0\nx-ratelimit-reset-requests: 6m0s\n"
		  "x-ratelimit-remaining-tokens: junk\n",
		  ERR_JSON("Rate limit reached", "requests", "\"rate_limit_exceeded\""), 0 } });
	edge_run(c0, &o, 0, 5000);
	ok(o.status == LLM_ERR_HTTP && !o.rate.ok && o.rate.throttled == 1 &&
	   o.rate.has_remaining_requests && o.rate.remaining_requests == 0 &&
	   o.rate.reset_requests_ms == 20 && o.rate.has_retry_after && o.rate.retry_after_ms == 20,
	   "a 429 carries its headers too: remaining 0, reset 20ms, retry-after-ms 20");
	outcome_free(&o);
	edge_script(1, (struct canned[]){
		{ 429, "application/json",
		  "retry-after: 1\nx-ratelimit-remaining-requests: 0\nx-ratelimit-reset-requests: 6m0s\n"
		  "x-ratelimit-remaining-tokens: junk\n",
		  ERR_JSON("Rate limit reached", "requests", "\"rate_limit_exceeded\""), 0 } });
	edge_run(c0, &o, 0, 5000);
	ok(o.rate.reset_requests_ms == 360000 && o.rate.retry_after_ms == 1000 &&
	   !o.rate.has_remaining_tokens,
	   "6m0s is 360 s, retry-after 1 is 1000 ms, a malformed count is left out");
	outcome_free(&o);
	edge_script(2, (struct canned[]){
		{ 429, "application/json", "retry-after-ms: 5\n",
		  ERR_JSON("Rate limit reached", "requests", "\"rate_limit_exceeded\""), 0 },
		{ 200, "application/json", "x-ratelimit-remaining-requests: 7\n",
		  "{\"choices\":[{\"message\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}", 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.status == LLM_OK && o.attempts == 2 && o.rate.ok && o.rate.throttled == 1 &&
	   o.rate.remaining_requests == 7 && !o.rate.has_retry_after,
	   "429 then success: throttled counts the 429, headers are the last attempt's");
	outcome_free(&o);
	edge_script(1, (struct canned[]){ { 429, "application/json", "x-ratelimit-remaining-requests: 3\n",
		ERR_JSON("You exceeded your current quota", "insufficient_quota", "\"insufficient_quota\""), 0 } });
	edge_run(c, &o, 0, 5000);
	ok(o.rate.throttled == 0 && o.rate.remaining_requests == 3,
	   "429 insufficient_quota is not a rate limit: throttled stays 0");
	outcome_free(&o);

	/* A deadline already over when a retry would start. */
	edge_script(1, (struct canned[]){ { 503, "application/json", "retry-after-ms: 400\n",
		ERR_JSON("busy", "server_error", "null"), 0 } });
	edge_run(c, &o, 0, 300);
	ok(o.status == LLM_ERR_HTTP && o.http_status == 503 && o.attempts == 1,
	   "retry delay past the deadline: the 503 is reported, not a timeout");
	outcome_free(&o);

	llm_client_destroy(c);
	llm_client_destroy(c0);
	llm_client_destroy(anon);
}

/* Go's duration format, as OpenAI writes x-ratelimit-reset-*. No fake
 * needed. */
static void
test_durations(void)
{
	static const struct { const char *s; double ms; } good[] = {
		{ "1s", 1000 }, { "6m0s", 360000 }, { "20ms", 20 }, { "1h2m3.5s", 3723500 },
		{ "0s", 0 }, { "0", 0 }, { "1.5", 1500 }, { "2.25ms", 2.25 }, { "500us", 0.5 },
		{ "500\xc2\xb5s", 0.5 }, { "1000000ns", 1 }, { "17m", 1020000 }, { ".5s", 500 },
	};
	static const char *bad[] = {
		"", "s", "1x", "-1s", "+1s", "1e3s", "0x10s", "1 s", "1s ", "1m30", "ms", "inf",
		"nan", "1..2s", "1h-2m",
	};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		double ms = -1;
		bool r = llm_parse_duration_ms(good[i].s, &ms);
		ok(r && fabs(ms - good[i].ms) < 1e-9, "duration \"%s\" = %g ms (%g)", good[i].s,
		   good[i].ms, ms);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		double ms = -7;
		ok(!llm_parse_duration_ms(bad[i], &ms) && ms == -7,
		   "duration \"%s\" refused, output untouched", bad[i]);
	}
	double ms = -7;
	ok(!llm_parse_duration_ms(NULL, &ms) && ms == -7, "NULL refused");
}

int
main(void)
{
	llm_client *c;

	base_url = getenv("TEST_OPENAI_BASE_URL");
	if (!base_url || !*base_url) {
		printf("1..0 # SKIP TEST_OPENAI_BASE_URL is not set (start build/fake_openai)\n");
		return 77;
	}
	fake_ctl_init(base_url);

	curl_global_init(CURL_GLOBAL_DEFAULT);
	log_set_level(getenv("TEST_VERBOSE") ? LOG_DEBUG : LOG_ERROR);
	base = util_event_base();

	json_t *probe = fake_ctl("/_fake/stats", NULL);
	if (!probe) {
		printf("1..0 # SKIP the fake upstream at %s does not answer\n", ctl_root);
		return 77;
	}
	json_decref(probe);

	test_durations();
	c = new_client(base_url, 2);
	test_plain(c);
	test_stream(c);
	test_retry_500(c);
	test_retry_429(c);
	test_400(c);
	test_deadline(c);
	test_cut();
	test_refused();
	test_reuse();
	test_cancel(c);
	test_fake_modes(c);
	test_parallel(c);
	test_destroy_live();
	llm_client_destroy(c);

	if (edge_start() == 0) {
		test_edge();
		evhttp_free(edge.http);
		free(edge.body);
	} else {
		ok(0, "could not start the in-process upstream");
	}

	fake_reset();
	event_base_free(base);
	curl_global_cleanup();
	printf("1..%d\n", tests);
	if (failures)
		printf("# %d of %d failed\n", failures, tests);
	return failures ? 1 : 0;
}
