/*
 * llm — the upstream client: OpenAI chat completions over libcurl's
 * multi-socket API on the server's libevent loop.
 *
 * What it owns
 *   llm_client: one CURLM for its whole life (the connection cache is what
 *   gives keep-alive and HTTP/2 multiplexing), curl's timer event, one
 *   EV_PERSIST event per socket curl asks us to watch, and every live call.
 *   llm_call: the serialised request body (kept for retries), the current
 *   attempt's easy handle and header list, the timer that starts the next
 *   attempt, and the reply being parsed.
 *
 * How data flows (the curl docs/examples/multi-event.c pattern)
 *   llm_chat() arms the call's timer at 0 ms; start_attempt() builds an easy
 *   handle and adds it to the multi. curl tells us which sockets to watch
 *   (sock_cb) and when to wake it (timer_cb); our event callbacks call
 *   curl_multi_socket_action() and then drain curl_multi_info_read().
 *   Reply bytes arrive in write_cb: a streamed 200 goes through sse_reader
 *   (each "data:" JSON chunk → on_delta at once), anything else is collected
 *   and parsed with jansson when the transfer ends. attempt_done() classifies
 *   the finished attempt, then either arms the retry timer or calls on_done
 *   and frees the call.
 *
 * Re-entrancy rules, and why things are deferred
 *   curl refuses add/remove_handle from inside its own callbacks
 *   (CURLM_RECURSIVE_API_CALL). So attempts, including the first, start from
 *   the call's timer, never from where llm_chat() or a failure was noticed;
 *   and llm_cancel() from inside on_delta (which runs inside write_cb) only
 *   marks the call: write_cb then aborts the transfer and the reaper event
 *   removes it once curl has returned. on_done always runs outside curl
 *   callbacks (after socket_action returned, or from a timer).
 *
 * Retries: 408/409/429/5xx (not 429 insufficient_quota) and transport
 * failures, x-should-retry overriding; delay from retry-after-ms/retry-after
 * when 0 < x <= 60 s, else min(500·2^n, 8000) ms less up to 25 % jitter;
 * never past the deadline and never once text reached on_delta.
 *
 * The API key only ever goes into the Authorization header; every message we
 * hand out or log is scrubbed of it in case an upstream echoes it back.
 *
 * Known blocking point: with Debian's threaded resolver, removing a transfer
 * whose DNS lookup is still running joins the resolver thread (curl's
 * Curl_resolver_kill). Cancels and deadlines during a slow lookup can block
 * the loop until DNS answers; warm connections make that rare.
 */
#include "llm.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "log.h"
#include "sse.h"
#include "sse_chunk.h"
#include "util.h"

#define BODY_MAX          (8u * 1024 * 1024) /* non-streamed or error reply */
#define SSE_MAX           (1024 * 1024)      /* one unfinished SSE line/event */
#define CONTENT_MAX       (8u * 1024 * 1024) /* streamed content, reassembled */
#define RETRY_AFTER_MAX   60000.0            /* ms; longer hints → backoff */
#define BACKOFF_FIRST     500.0              /* ms, doubled per retry */
#define BACKOFF_MAX       8000.0
#define DEFAULT_TIMEOUT   600000L            /* when llm_chat gets <= 0 */
#define DEFAULT_CONNECT   5000L
/* curl's own timeout fires at ms granularity on its clock: treat a timeout
 * this close to the deadline as the deadline, not a connect timeout. */
#define DEADLINE_SLACK_MS 5.0

struct buf {
	char *p;
	size_t len, cap;
};

/* One watched socket; curl keeps the pointer for us (curl_multi_assign). */
struct sock_ctx {
	llm_client *c;
	curl_socket_t fd;
	struct event *ev;
	struct sock_ctx *prev, *next;
};

struct llm_client {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;       /* curl's timeout (timer_cb) */
	struct event *reaper;      /* frees calls cancelled inside callbacks */
	char *url;                 /* {base_url}/chat/completions */
	char *auth_header;         /* "Authorization: Bearer …" or NULL: secret */
	char *api_key;             /* only to scrub messages; never printed */
	char *ca_file;             /* CURLOPT_CAINFO, when set */
	long connect_timeout_ms;
	bool pipewait;             /* https: wait for ALPN before a 2nd connection */
	int max_retries;
	int in_user_cb;            /* > 0 while on_delta runs */
	llm_call *calls;           /* every live call, for destroy and reaper */
	struct sock_ctx *socks;    /* every watched socket, for destroy */
	struct llm_stats stats;
	uint64_t rng;              /* backoff jitter */
	sse_chunk_decoder *chunks; /* plain stream chunks (NULL: jansson for all) */
};

struct llm_call {
	llm_client *c;
	llm_call *prev, *next;

	char *body;                /* serialised request, NULL if it failed */
	double start_ms, deadline_ms;
	llm_delta_cb *on_delta;
	llm_done_cb *on_done;
	void *arg;
	bool stream;               /* asked for a stream (on_delta was given) */
	bool delivered;            /* a delta reached on_delta: never retry */
	bool cancelled;            /* llm_cancel() ran; no more callbacks */
	bool in_done;              /* on_done is running for this call */
	int attempts;
	long last_http;            /* last non-zero HTTP status */
	struct event *timer;       /* starts the next attempt */

	/* The current attempt. */
	CURL *easy;
	struct curl_slist *headers;
	char errbuf[CURL_ERROR_SIZE];
	long http_status;
	bool got_status;           /* write_cb has decided how to read the body */
	bool sse_mode;             /* this body is parsed as SSE */
	bool done_seen;            /* "data: [DONE]" arrived */
	double retry_after_ms;     /* server's hint, < 0 when none */
	struct limiter_signal rate; /* this attempt's x-ratelimit-* */
	int throttled;             /* attempts refused with 429 (not quota) */
	bool retrying;             /* counted in stats.retrying until freed */
	double attempt_start_ms;   /* when this attempt was added to the multi */
	double sent_ms;            /* when the last attempt's request went out */
	int should_retry;          /* x-should-retry: -1 absent, 0, 1 */
	char *request_id;
	struct buf body_in;        /* non-SSE reply bytes */
	sse_reader sse;
	struct buf content, refusal;
	char *finish_reason, *model;
	long prompt_tokens, completion_tokens;

	/* The current attempt's failure, when one was decided. */
	enum llm_status err;       /* LLM_OK = none yet */
	char *err_msg, *err_code;
	bool quota_exhausted;      /* 429 insufficient_quota: retry is useless */
};

/* ---- small helpers ---------------------------------------------------- */

static void
buf_append(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

static void
set_str(char **dst, const char *s)
{
	free(*dst);
	*dst = s ? xstrdup(s) : NULL;
}

const char *
llm_status_name(enum llm_status st)
{
	switch (st) {
	case LLM_OK: return "ok";
	case LLM_ERR_HTTP: return "upstream_error";
	case LLM_ERR_TIMEOUT: return "upstream_timeout";
	case LLM_ERR_CONNECT: return "upstream_unreachable";
	case LLM_ERR_PROTOCOL: return "upstream_bad_reply";
	}
	return "unknown";
}

/* Records the attempt's failure; the first one decided wins, because later
 * symptoms (curl's CURLE_WRITE_ERROR after we aborted) are consequences. */
static void __attribute__((format(printf, 4, 5)))
set_error(llm_call *call, enum llm_status st, const char *code, const char *fmt, ...)
{
	va_list ap;
	char msg[512];

	if (call->err != LLM_OK)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	call->err = st;
	set_str(&call->err_msg, msg);
	set_str(&call->err_code, code);
}

/* A copy of msg with every occurrence of the API key replaced by "***". An
 * upstream that echoes the key in an error must not make us leak it. */
static char *
scrub(const llm_client *c, const char *msg)
{
	struct buf out = { 0 };
	size_t klen;
	const char *p, *hit;

	if (!msg)
		return NULL;
	if (!c->api_key || (klen = strlen(c->api_key)) < 4)
		return xstrdup(msg);
	for (p = msg; (hit = strstr(p, c->api_key)) != NULL; p = hit + klen) {
		buf_append(&out, p, (size_t)(hit - p));
		buf_append(&out, "***", 3);
	}
	buf_append(&out, p, strlen(p));
	return out.p;
}

/* ---- curl ↔ libevent glue (docs/examples/multi-event.c) --------------- */

static void check_multi_info(llm_client *c);

static void
on_socket(evutil_socket_t fd, short what, void *arg)
{
	/* Read c first: socket_action may free this sock_ctx (CURL_POLL_REMOVE). */
	llm_client *c = ((struct sock_ctx *)arg)->c;
	int flags = 0, running;

	if (what & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	curl_multi_socket_action(c->multi, fd, flags, &running);
	check_multi_info(c);
}

static void
on_curl_timeout(evutil_socket_t fd, short what, void *arg)
{
	llm_client *c = arg;
	int running;

	curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_multi_info(c);
}

static void
sock_ctx_free(llm_client *c, struct sock_ctx *sc)
{
	event_free(sc->ev);
	if (sc->prev)
		sc->prev->next = sc->next;
	else
		c->socks = sc->next;
	if (sc->next)
		sc->next->prev = sc->prev;
	free(sc);
}

/* CURLMOPT_SOCKETFUNCTION: keep one persistent event per socket in step
 * with what curl wants to wait for. Returning -1 would abort every transfer
 * on the multi, so this never fails. */
static int
sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	llm_client *c = userp;
	struct sock_ctx *sc = socketp;
	short events = EV_PERSIST;

	if (what == CURL_POLL_REMOVE) {
		if (sc) {
			sock_ctx_free(c, sc);
			curl_multi_assign(c->multi, s, NULL);
		}
		return 0;
	}
	if (!sc) {
		sc = xcalloc(1, sizeof(*sc));
		sc->c = c;
		sc->fd = s;
		sc->ev = event_new(c->base, s, 0, on_socket, sc);
		if (!sc->ev) {
			log_msg(LOG_ERROR, "llm: event_new failed for a curl socket");
			free(sc);
			return 0;
		}
		sc->next = c->socks;
		if (c->socks)
			c->socks->prev = sc;
		c->socks = sc;
		curl_multi_assign(c->multi, s, sc);
	}
	if (what & CURL_POLL_IN)
		events |= EV_READ;
	if (what & CURL_POLL_OUT)
		events |= EV_WRITE;
	event_del(sc->ev);
	event_assign(sc->ev, c->base, s, events, on_socket, sc);
	event_add(sc->ev, NULL);
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: only (re)arm our timer. curl calls this from
 * inside add_handle and socket_action, so acting on it here would recurse. */
static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	llm_client *c = userp;
	struct timeval tv;

	if (timeout_ms < 0) {
		evtimer_del(c->timer);
		return 0;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	evtimer_add(c->timer, &tv);
	return 0;
}

/* ---- per-call lifecycle ----------------------------------------------- */

/* Takes the easy handle out of the multi. Never from inside a curl callback.
 * Cancelled attempts count their connections too. */
static void
release_easy(llm_call *call)
{
	long connects = 0;

	if (call->easy) {
		long version = 0;
		curl_easy_getinfo(call->easy, CURLINFO_NUM_CONNECTS, &connects);
		call->c->stats.connections += connects;
		/* HTTP/2 is negotiated by ALPN over TLS (curl's default); count
		 * it so multiplexing can be seen, not assumed. */
		if (curl_easy_getinfo(call->easy, CURLINFO_HTTP_VERSION, &version) == CURLE_OK &&
		    version == CURL_HTTP_VERSION_2_0)
			call->c->stats.http2++;
		curl_multi_remove_handle(call->c->multi, call->easy);
		curl_easy_cleanup(call->easy);
		call->easy = NULL;
	}
	curl_slist_free_all(call->headers);
	call->headers = NULL;
}

/* Forget everything the previous attempt learnt about its reply. */
static void
reset_attempt(llm_call *call)
{
	call->http_status = 0;
	call->got_status = false;
	call->sse_mode = false;
	call->done_seen = false;
	call->retry_after_ms = -1;
	memset(&call->rate, 0, sizeof call->rate);
	call->should_retry = -1;
	set_str(&call->request_id, NULL);
	call->body_in.len = 0;
	sse_reader_reset(&call->sse);
	call->content.len = 0;
	call->refusal.len = 0;
	set_str(&call->finish_reason, NULL);
	set_str(&call->model, NULL);
	call->prompt_tokens = call->completion_tokens = -1;
	call->err = LLM_OK;
	set_str(&call->err_msg, NULL);
	set_str(&call->err_code, NULL);
	call->quota_exhausted = false;
	call->errbuf[0] = '\0';
}

static void
free_call(llm_call *call)
{
	llm_client *c = call->c;

	release_easy(call);
	if (call->prev)
		call->prev->next = call->next;
	else
		c->calls = call->next;
	if (call->next)
		call->next->prev = call->prev;
	event_free(call->timer);
	if (call->retrying)
		c->stats.retrying--;
	sse_reader_free(&call->sse);
	buf_free(&call->body_in);
	buf_free(&call->content);
	buf_free(&call->refusal);
	free(call->body);
	free(call->request_id);
	free(call->finish_reason);
	free(call->model);
	free(call->err_msg);
	free(call->err_code);
	c->stats.in_flight--;
	free(call);
}

/* Hands one chunk of text to the caller. in_user_cb makes llm_cancel() from
 * in there defer instead of removing handles under curl's feet. */
static void
deliver(llm_call *call, const char *text, size_t len)
{
	if (!call->on_delta || call->cancelled || len == 0)
		return;
	call->delivered = true;
	call->c->in_user_cb++;
	call->on_delta(call->arg, text, len);
	call->c->in_user_cb--;
}

/* The end of a call: on_done once, then free. */
static void
finish(llm_call *call, enum llm_status st)
{
	llm_client *c = call->c;
	struct llm_result res;
	char *msg = st != LLM_OK ? scrub(c, call->err_msg) : NULL;

	if (st != LLM_OK && !msg)
		msg = xstrdup(llm_status_name(st));
	memset(&res, 0, sizeof res);
	res.status = st;
	res.http_status = call->last_http;
	res.content = call->content.len ? call->content.p : "";
	res.refusal = call->refusal.len ? call->refusal.p : NULL;
	res.finish_reason = call->finish_reason;
	res.model = call->model;
	res.prompt_tokens = call->prompt_tokens;
	res.completion_tokens = call->completion_tokens;
	res.error_message = msg;
	res.error_code = st != LLM_OK ? call->err_code : NULL;
	res.request_id = call->request_id;
	res.attempts = call->attempts;
	res.elapsed_ms = util_now_ms() - call->start_ms;
	res.rate = call->rate;
	res.rate.ok = st == LLM_OK;
	res.rate.throttled = call->throttled;
	res.rate.sent_ms = call->sent_ms;
	res.rate.tokens = (call->prompt_tokens > 0 ? call->prompt_tokens : 0) +
	                  (call->completion_tokens > 0 ? call->completion_tokens : 0);
	if (call->retry_after_ms >= 0) {
		res.rate.has_retry_after = true;
		res.rate.retry_after_ms = call->retry_after_ms;
	}

	log_event(st == LLM_OK ? LOG_INFO : LOG_WARN, "llm call",
	          LOG_S("status", llm_status_name(st)),
	          LOG_I("http_status", res.http_status),
	          LOG_I("attempts", res.attempts),
	          LOG_N("elapsed_ms", res.elapsed_ms),
	          LOG_S("request_id", res.request_id),
	          LOG_S("model", res.model),
	          LOG_I("prompt_tokens", res.prompt_tokens),
	          LOG_I("completion_tokens", res.completion_tokens),
	          LOG_S("error", msg),
	          LOG_END);

	call->in_done = true;
	if (call->on_done && !call->cancelled)
		call->on_done(call->arg, &res);
	free(msg);
	free_call(call);
}

/* ---- reply parsing ---------------------------------------------------- */

static long
json_count(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	return json_is_integer(v) ? (long)json_integer_value(v) : -1;
}

static void
take_usage(llm_call *call, json_t *usage)
{
	if (!json_is_object(usage))
		return;
	call->prompt_tokens = json_count(usage, "prompt_tokens");
	call->completion_tokens = json_count(usage, "completion_tokens");
}

/* {"error":{"message","type","param","code"}} → err_msg / err_code. */
static void
take_error_object(llm_call *call, json_t *err, enum llm_status st, long http)
{
	const char *msg = NULL, *code, *type;

	if (json_is_object(err)) {
		msg = json_string_value(json_object_get(err, "message"));
		code = json_string_value(json_object_get(err, "code"));
		type = json_string_value(json_object_get(err, "type"));
		if ((code && strcmp(code, "insufficient_quota") == 0) ||
		    (type && strcmp(type, "insufficient_quota") == 0))
			call->quota_exhausted = true;
		if (!code)
			code = type;
	} else {
		/* Some compatible servers send {"error": "text"}. */
		msg = json_string_value(err);
		code = NULL;
	}
	if (msg && *msg)
		set_error(call, st, code, "%s", msg);
	else if (http)
		set_error(call, st, code, "upstream returned HTTP %ld", http);
	else
		set_error(call, st, code, "upstream reported an error in the stream");
}

/* An error status: the body should be OpenAI's error JSON, but proxies in
 * between answer with HTML, so anything else gets a generic message. */
static void
take_http_error(llm_call *call, long http)
{
	json_t *root = call->body_in.len
	    ? json_loadb(call->body_in.p, call->body_in.len, 0, NULL) : NULL;
	json_t *err = json_object_get(root, "error");

	if (err)
		take_error_object(call, err, LLM_ERR_HTTP, http);
	else
		set_error(call, LLM_ERR_HTTP, NULL, "upstream returned HTTP %ld", http);
	json_decref(root);
}

/* A whole (non-streamed) chat completion. False when it is not one. */
static bool
take_completion(llm_call *call)
{
	json_t *root, *choice, *msg, *content, *refusal;
	bool ok = false;

	root = json_loadb(call->body_in.p ? call->body_in.p : "", call->body_in.len, 0, NULL);
	choice = json_array_get(json_object_get(root, "choices"), 0);
	msg = json_object_get(choice, "message");
	if (!json_is_object(msg))
		goto out;
	content = json_object_get(msg, "content");
	if (content && !json_is_string(content) && !json_is_null(content))
		goto out;
	call->content.len = 0;
	if (json_is_string(content))
		buf_append(&call->content, json_string_value(content), json_string_length(content));
	refusal = json_object_get(msg, "refusal");
	call->refusal.len = 0;
	if (json_is_string(refusal))
		buf_append(&call->refusal, json_string_value(refusal), json_string_length(refusal));
	set_str(&call->finish_reason, json_string_value(json_object_get(choice, "finish_reason")));
	set_str(&call->model, json_string_value(json_object_get(root, "model")));
	take_usage(call, json_object_get(root, "usage"));
	ok = true;
out:
	json_decref(root);
	return ok;
}

/* One SSE event of a streamed reply. Returning non-zero stops the reader,
 * and write_cb then aborts the transfer. */
static int
on_sse_event(void *arg, const struct sse_event *ev)
{
	llm_call *call = arg;
	json_t *root, *choice, *delta, *v;
	int stop = 0;

	if (call->done_seen)
		return 0; /* nothing is expected after [DONE]; ignore it */
	if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0) {
		call->done_seen = true;
		return 0;
	}
	/* A plain chunk (nearly all of them) through cjson: see sse_chunk.h. */
	struct sse_chunk ch;
	if (call->c->chunks && sse_chunk_decode(call->c->chunks, ev->data, ev->data_len, &ch)) {
		if (!call->model && ch.model)
			set_str(&call->model, ch.model);
		if (ch.refusal)
			buf_append(&call->refusal, ch.refusal, ch.refusal_len);
		if (ch.finish_reason)
			set_str(&call->finish_reason, ch.finish_reason);
		if (ch.content && ch.content_len > 0) {
			if (call->content.len + ch.content_len > CONTENT_MAX) {
				set_error(call, LLM_ERR_PROTOCOL, NULL, "upstream reply larger than 8 MiB");
				stop = 1;
			} else {
				buf_append(&call->content, ch.content, ch.content_len);
				deliver(call, ch.content, ch.content_len);
			}
		}
		sse_chunk_release(call->c->chunks);
		return stop || call->cancelled;
	}
	root = json_loadb(ev->data, ev->data_len, 0, NULL);
	if (!json_is_object(root)) {
		set_error(call, LLM_ERR_PROTOCOL, NULL, "upstream sent a stream chunk that is not JSON");
		json_decref(root);
		return 1;
	}
	if ((v = json_object_get(root, "error")) != NULL && !json_is_null(v)) {
		take_error_object(call, v, LLM_ERR_HTTP, 0);
		json_decref(root);
		return 1;
	}
	if (!call->model)
		set_str(&call->model, json_string_value(json_object_get(root, "model")));
	take_usage(call, json_object_get(root, "usage"));

	/* The final usage chunk has "choices": []: nothing more to take. */
	choice = json_array_get(json_object_get(root, "choices"), 0);
	delta = json_object_get(choice, "delta");
	if ((v = json_object_get(delta, "refusal")) && json_is_string(v))
		buf_append(&call->refusal, json_string_value(v), json_string_length(v));
	if ((v = json_object_get(choice, "finish_reason")) && json_is_string(v))
		set_str(&call->finish_reason, json_string_value(v));
	if ((v = json_object_get(delta, "content")) && json_is_string(v) &&
	    json_string_length(v) > 0) {
		if (call->content.len + json_string_length(v) > CONTENT_MAX) {
			set_error(call, LLM_ERR_PROTOCOL, NULL, "upstream reply larger than 8 MiB");
			stop = 1;
		} else {
			buf_append(&call->content, json_string_value(v), json_string_length(v));
			deliver(call, json_string_value(v), json_string_length(v));
		}
	}
	json_decref(root);
	/* on_delta may have cancelled this call: stop reading it. */
	return stop || call->cancelled;
}

bool
llm_parse_duration_ms(const char *s, double *ms)
{
	static const struct { const char *unit; double ms; } units[] = {
		/* longest first: "ms" before "m" and "s" */
		{ "ms", 1 }, { "us", 1e-3 }, { "\xc2\xb5s", 1e-3 }, { "ns", 1e-6 },
		{ "h", 3600e3 }, { "m", 60e3 }, { "s", 1e3 },
	};
	double total = 0;
	const char *p = s;

	if (!s || !*s)
		return false;
	while (*p) {
		/* digits[.digits]: no sign, exponent or hex (strtod takes those) */
		const char *num = p;
		double v = 0, scale = 1;
		bool digits = false;
		for (; *p >= '0' && *p <= '9'; p++, digits = true)
			v = v * 10 + (*p - '0');
		if (*p == '.')
			for (p++; *p >= '0' && *p <= '9'; p++, digits = true)
				v += (*p - '0') * (scale /= 10);
		if (!digits)
			return false;
		if (!*p && num == s) {
			total = v * 1e3;       /* a bare number: seconds */
			break;
		}
		size_t i, n = sizeof units / sizeof units[0];
		for (i = 0; i < n; i++) {
			size_t ul = strlen(units[i].unit);
			if (strncmp(p, units[i].unit, ul) == 0) {
				total += v * units[i].ms;
				p += ul;
				break;
			}
		}
		if (i == n)
			return false;
	}
	if (!isfinite(total))
		return false;
	*ms = total;
	return true;
}

static bool
parse_count(const char *value, long *out)
{
	char *e;
	long v;

	if (*value < '0' || *value > '9')
		return false;
	v = strtol(value, &e, 10);
	if (*e != '\0' || v < 0)
		return false;
	*out = v;
	return true;
}

/* x-ratelimit-<rest>: value into the attempt's rate-limit fields. */
static void
take_ratelimit(struct limiter_signal *r, const char *rest, size_t n, const char *value)
{
#define R(name) (n == sizeof(name) - 1 && strncasecmp(rest, name, n) == 0)
	if (R("limit-requests"))
		r->has_limit_requests = parse_count(value, &r->limit_requests);
	else if (R("limit-tokens"))
		r->has_limit_tokens = parse_count(value, &r->limit_tokens);
	else if (R("remaining-requests"))
		r->has_remaining_requests = parse_count(value, &r->remaining_requests);
	else if (R("remaining-tokens"))
		r->has_remaining_tokens = parse_count(value, &r->remaining_tokens);
	else if (R("reset-requests"))
		r->has_reset_requests = llm_parse_duration_ms(value, &r->reset_requests_ms);
	else if (R("reset-tokens"))
		r->has_reset_tokens = llm_parse_duration_ms(value, &r->reset_tokens_ms);
#undef R
}

/* CURLOPT_HEADERFUNCTION: one header line at a time, including the status
 * line of every response (1xx too), which starts a fresh set. */
static size_t
header_cb(char *line, size_t size, size_t n, void *arg)
{
	llm_call *call = arg;
	size_t len = size * n, nlen;
	const char *colon, *v, *end;
	char value[256];

	if (call->cancelled)
		return 0; /* aborts the transfer */
	if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
		call->retry_after_ms = -1;
		memset(&call->rate, 0, sizeof call->rate);
		call->should_retry = -1;
		set_str(&call->request_id, NULL);
		return len;
	}
	colon = memchr(line, ':', len);
	if (!colon)
		return len;
	nlen = (size_t)(colon - line);
	v = colon + 1;
	end = line + len;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if ((size_t)(end - v) >= sizeof value)
		return len; /* none of ours is that long */
	memcpy(value, v, (size_t)(end - v));
	value[end - v] = '\0';

#define IS(name) (nlen == sizeof(name) - 1 && strncasecmp(line, name, nlen) == 0)
	if (nlen > 12 && strncasecmp(line, "x-ratelimit-", 12) == 0) {
		take_ratelimit(&call->rate, line + 12, nlen - 12, value);
	} else if (IS("x-request-id")) {
		set_str(&call->request_id, value);
	} else if (IS("x-should-retry")) {
		if (strcasecmp(value, "true") == 0)
			call->should_retry = 1;
		else if (strcasecmp(value, "false") == 0)
			call->should_retry = 0;
	} else if (IS("retry-after-ms")) {
		char *e;
		double ms = strtod(value, &e);
		if (e != value && *e == '\0' && isfinite(ms))
			call->retry_after_ms = ms; /* wins over retry-after */
	} else if (IS("retry-after") && call->retry_after_ms < 0) {
		char *e;
		double s = strtod(value, &e);
		if (e != value && *e == '\0' && isfinite(s)) {
			call->retry_after_ms = s * 1000.0;
		} else {
			/* An HTTP date. */
			time_t t = curl_getdate(value, NULL);
			if (t != -1)
				call->retry_after_ms = difftime(t, time(NULL)) * 1000.0;
		}
	}
#undef IS
	return len;
}

/* Once the headers are in: the status, and how to read the body. A non-2xx
 * reply to a stream request is a JSON error body, and a server that ignored
 * "stream" answers application/json, so only a 2xx that is not JSON is read
 * as SSE. */
static void
decide_mode(llm_call *call)
{
	const char *ctype = NULL;

	curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &call->http_status);
	curl_easy_getinfo(call->easy, CURLINFO_CONTENT_TYPE, &ctype);
	call->got_status = true;
	call->sse_mode = call->stream && call->http_status / 100 == 2 &&
	    !(ctype && strncasecmp(ctype, "application/json", 16) == 0);
}

/* CURLOPT_WRITEFUNCTION. Anything but len back aborts the transfer. */
static size_t
write_cb(char *data, size_t size, size_t n, void *arg)
{
	llm_call *call = arg;
	size_t len = size * n;
	enum sse_rc rc;

	if (call->cancelled)
		return CURL_WRITEFUNC_ERROR;
	if (!call->got_status)
		decide_mode(call);
	if (call->sse_mode) {
		rc = sse_reader_feed(&call->sse, data, len);
		if (rc == SSE_TOO_LARGE)
			set_error(call, LLM_ERR_PROTOCOL, NULL, "upstream stream event larger than 1 MiB");
		return rc == SSE_OK ? len : CURL_WRITEFUNC_ERROR;
	}
	if (call->body_in.len + len > BODY_MAX) {
		set_error(call, LLM_ERR_PROTOCOL, NULL, "upstream reply larger than 8 MiB");
		return CURL_WRITEFUNC_ERROR;
	}
	buf_append(&call->body_in, data, len);
	return len;
}

/* ---- attempts, retries ------------------------------------------------ */

/* Jitter only needs to differ between processes and calls; a private
 * xorshift keeps us off the process-wide rand() state. */
static double
rng_unit(llm_client *c)
{
	c->rng ^= c->rng << 13;
	c->rng ^= c->rng >> 7;
	c->rng ^= c->rng << 17;
	return (double)(c->rng >> 11) / (double)(1ULL << 53);
}

static bool
status_retryable(long http)
{
	switch (http) {
	case 408: case 409: case 429:
	case 500: case 502: case 503: case 504:
		return true;
	}
	return false;
}

/* Transport failures: nothing (or not all) of a reply came back. */
static bool
transport_error(CURLcode res)
{
	switch (res) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_CONNECT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return true;
	default:
		return false;
	}
}

/* Decides what the finished attempt amounts to: sets call->err (unless it
 * succeeded) and returns whether another attempt could fix it. */
static bool
classify(llm_call *call, CURLcode res)
{
	long http = call->http_status;
	bool retry = false;

	if (call->err != LLM_OK) {
		/* Our parsers already decided (bad JSON, error in the stream,
		 * size caps); the CURLE_WRITE_ERROR that followed says nothing. */
		return false;
	}
	if (res == CURLE_OK) {
		if (http / 100 != 2) {
			take_http_error(call, http);
			retry = status_retryable(http) &&
			    !(http == 429 && call->quota_exhausted);
			if (call->should_retry >= 0)
				retry = call->should_retry; /* the server knows best */
		} else if (call->sse_mode) {
			if (!call->done_seen) {
				set_error(call, LLM_ERR_PROTOCOL, NULL, "upstream stream was cut");
				retry = true;
			}
		} else if (!take_completion(call)) {
			set_error(call, LLM_ERR_PROTOCOL, NULL, "upstream reply is not a chat completion");
		}
		return retry;
	}
	if (res == CURLE_OPERATION_TIMEDOUT) {
		if (util_now_ms() >= call->deadline_ms - DEADLINE_SLACK_MS) {
			set_error(call, LLM_ERR_TIMEOUT, NULL, "upstream did not answer within %.0f ms",
			          call->deadline_ms - call->start_ms);
			return false;
		}
		/* Before the deadline it can only be the connect timeout. */
		set_error(call, LLM_ERR_CONNECT, NULL, "connecting to upstream timed out");
		return true;
	}
	if (transport_error(res)) {
		if (call->sse_mode)
			set_error(call, LLM_ERR_PROTOCOL, NULL, "upstream stream was cut");
		else
			set_error(call, LLM_ERR_CONNECT, NULL, "upstream connection failed: %s",
			          call->errbuf[0] ? call->errbuf : curl_easy_strerror(res));
		return true;
	}
	/* TLS verification, bad URL, …: configuration, not bad luck. */
	set_error(call, LLM_ERR_CONNECT, NULL, "upstream request failed: %s",
	          call->errbuf[0] ? call->errbuf : curl_easy_strerror(res));
	return false;
}

/* min(500·2^n, 8000) ms minus up to 25 % jitter, unless the server said. */
static double
retry_delay(const llm_call *call)
{
	double d;
	int n = call->attempts - 1;

	if (call->retry_after_ms > 0 && call->retry_after_ms <= RETRY_AFTER_MAX)
		return call->retry_after_ms;
	d = BACKOFF_FIRST * pow(2.0, n);
	if (d > BACKOFF_MAX)
		d = BACKOFF_MAX;
	return d * (1.0 - 0.25 * rng_unit(call->c));
}

static void
arm_timer(struct event *ev, double ms)
{
	struct timeval tv;

	if (ms < 0)
		ms = 0;
	tv.tv_sec = (time_t)(ms / 1000.0);
	tv.tv_usec = (suseconds_t)(fmod(ms, 1000.0) * 1000.0);
	/* Timers count from the loop's cached time, taken when this
	 * iteration began; refresh it so a retry-after is honoured in full. */
	event_base_update_cache_time(event_get_base(ev));
	evtimer_add(ev, &tv);
}

/* A transfer ended (from check_multi_info, outside curl callbacks). */
static void
attempt_done(llm_call *call, CURLcode res)
{
	llm_client *c = call->c;
	bool retry;
	double delay, now;
	char *reason;

	if (!call->got_status)
		decide_mode(call); /* no body came: write_cb never ran */
	if (call->http_status)
		call->last_http = call->http_status;
	/* When the request went out (connect and TLS done): the provider's
	 * window counts from about then, not from when we asked for it. */
	curl_off_t pre_us = 0;
	if (call->easy &&
	    curl_easy_getinfo(call->easy, CURLINFO_PRETRANSFER_TIME_T, &pre_us) == CURLE_OK &&
	    pre_us > 0)
		call->sent_ms = call->attempt_start_ms + (double)pre_us / 1000.0;
	else
		call->sent_ms = call->attempt_start_ms;
	release_easy(call);

	if (call->cancelled) {
		free_call(call);
		return;
	}
	retry = classify(call, res);
	if (call->http_status == 429 && !call->quota_exhausted)
		call->throttled++;
	if (call->err == LLM_OK) {
		if (call->stream && !call->sse_mode) {
			/* Asked for a stream, got a whole completion: the caller
			 * still gets its text through on_delta, in one piece. */
			deliver(call, call->content.p, call->content.len);
			if (call->cancelled) {
				free_call(call);
				return;
			}
		}
		finish(call, LLM_OK);
		return;
	}
	if (retry && !call->delivered && call->attempts <= c->max_retries) {
		delay = retry_delay(call);
		now = util_now_ms();
		if (now + delay < call->deadline_ms) {
			reason = scrub(c, call->err_msg);
			log_event(LOG_INFO, "llm retry",
			          LOG_S("error", llm_status_name(call->err)),
			          LOG_I("http_status", call->http_status),
			          LOG_I("attempt", call->attempts),
			          LOG_N("delay_ms", delay),
			          LOG_S("request_id", call->request_id),
			          LOG_S("reason", reason),
			          LOG_END);
			free(reason);
			arm_timer(call->timer, delay);
			if (!call->retrying) {
				call->retrying = true;
				c->stats.retrying++;
			}
			return;
		}
		/* The retry could not finish in time: report what happened,
		 * unless the deadline itself is what ended us. */
		if (now >= call->deadline_ms) {
			call->err = LLM_OK;
			set_error(call, LLM_ERR_TIMEOUT, NULL, "upstream did not answer within %.0f ms",
			          call->deadline_ms - call->start_ms);
		}
	}
	finish(call, call->err);
}

static void
check_multi_info(llm_client *c)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
		char *priv = NULL;
		CURL *easy;
		CURLcode res;

		if (msg->msg != CURLMSG_DONE)
			continue;
		/* msg dies with remove_handle: copy what we need first. */
		easy = msg->easy_handle;
		res = msg->data.result;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
		attempt_done((llm_call *)priv, res);
	}
}

static bool
start_attempt(llm_call *call)
{
	llm_client *c = call->c;
	double remaining = call->deadline_ms - util_now_ms();
	CURL *e;

	reset_attempt(call);
	e = curl_easy_init();
	if (!e)
		return false;
	call->easy = e;
	call->headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (c->auth_header)
		call->headers = curl_slist_append(call->headers, c->auth_header);
	if (call->stream)
		call->headers = curl_slist_append(call->headers, "Accept: text/event-stream");
	else
		call->headers = curl_slist_append(call->headers, "Accept: application/json");
	/* Over HTTP/1.1 curl would wait up to a second for "100 Continue" on
	 * large bodies; the upstream always takes the body. */
	call->headers = curl_slist_append(call->headers, "Expect:");
	if (!call->headers)
		return false;

	curl_easy_setopt(e, CURLOPT_URL, c->url);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_POST, 1L);
	/* The call owns body until after release_easy(): no copy per attempt. */
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->body);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(call->body));
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, call->headers);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "rapport");
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, call);
	curl_easy_setopt(e, CURLOPT_PRIVATE, call);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	/* Over TLS, a second call waits for the first connection's ALPN (one
	 * handshake) and then multiplexes on it if h2 was agreed. Over plain
	 * http we never get h2, but curl only learns that from the first
	 * reply's status line: with PIPEWAIT every call of a cold client would
	 * queue behind the first one's whole upstream latency. */
	if (c->pipewait)
		curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
	if (c->ca_file)
		curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
	/* The whole attempt, queueing included, must end by the deadline. */
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, remaining < 1 ? 1L : (long)ceil(remaining));
	/* Compression buffers; a stream must reach on_delta as it comes. */
	if (!call->stream)
		curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");

	if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
		release_easy(call);
		return false;
	}
	call->attempts++;
	c->stats.attempts++;
	call->attempt_start_ms = util_now_ms();
	return true;
}

/* The call's timer: time for an attempt (the first one, or a retry). */
static void
on_attempt_timer(evutil_socket_t fd, short what, void *arg)
{
	llm_call *call = arg;

	if (!call->body) {
		set_error(call, LLM_ERR_PROTOCOL, NULL, "request could not be serialised");
		finish(call, LLM_ERR_PROTOCOL);
		return;
	}
	if (util_now_ms() >= call->deadline_ms) {
		/* The timer fired late (a busy loop): this is a timeout now,
		 * but say what the last attempt ran into. */
		char *last = call->err_msg;

		call->err_msg = NULL;
		call->err = LLM_OK;
		set_error(call, LLM_ERR_TIMEOUT, NULL, "upstream did not answer within %.0f ms%s%s%s",
		          call->deadline_ms - call->start_ms, last ? " (last error: " : "",
		          last ? last : "", last ? ")" : "");
		free(last);
		finish(call, LLM_ERR_TIMEOUT);
		return;
	}
	if (!start_attempt(call)) {
		call->err = LLM_OK;
		set_error(call, LLM_ERR_CONNECT, NULL, "could not start the upstream request");
		finish(call, LLM_ERR_CONNECT);
	}
}

/* Frees calls that llm_cancel() could only mark (it ran inside on_delta). */
static void
on_reap(evutil_socket_t fd, short what, void *arg)
{
	llm_client *c = arg;
	llm_call *call, *next;

	for (call = c->calls; call; call = next) {
		next = call->next;
		if (call->cancelled)
			free_call(call);
	}
}

/* ---- public API ------------------------------------------------------- */

llm_client *
llm_client_create(struct event_base *base, const struct llm_config *cfg)
{
	llm_client *c = xcalloc(1, sizeof(*c));
	c->chunks = sse_chunk_decoder_create();
	const char *bu = cfg->base_url && *cfg->base_url ? cfg->base_url : "https://api.openai.com/v1";
	size_t n = strlen(bu);

	while (n > 0 && bu[n - 1] == '/')
		n--;
	c->base = base;
	c->rng = (uint64_t)util_wall_ms() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)c;
	if (!c->rng)
		c->rng = 0x9E3779B97F4A7C15ULL;
	c->url = xasprintf("%.*s/chat/completions", (int)n, bu);
	c->pipewait = strncasecmp(c->url, "https://", 8) == 0;
	if (cfg->api_key && *cfg->api_key) {
		c->api_key = xstrdup(cfg->api_key);
		c->auth_header = xasprintf("Authorization: Bearer %s", cfg->api_key);
	}
	c->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : DEFAULT_CONNECT;
	c->ca_file = cfg->ca_file && *cfg->ca_file ? xstrdup(cfg->ca_file) : NULL;
	c->max_retries = cfg->max_retries >= 0 ? cfg->max_retries : 2;
	c->multi = curl_multi_init();
	c->timer = evtimer_new(base, on_curl_timeout, c);
	c->reaper = evtimer_new(base, on_reap, c);
	if (!c->multi || !c->timer || !c->reaper) {
		llm_client_destroy(c);
		return NULL;
	}
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	return c;
}

static void
free_secret(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

void
llm_client_destroy(llm_client *c)
{
	if (!c)
		return;
	while (c->calls)
		free_call(c->calls);
	/* Closing cached connections makes curl report CURL_POLL_REMOVE through
	 * sock_cb, so the multi goes before our events and list. */
	if (c->multi)
		curl_multi_cleanup(c->multi);
	while (c->socks)
		sock_ctx_free(c, c->socks);
	if (c->timer)
		event_free(c->timer);
	if (c->reaper)
		event_free(c->reaper);
	free(c->url);
	free_secret(c->auth_header);
	free_secret(c->api_key);
	free(c->ca_file);
	sse_chunk_decoder_destroy(c->chunks);
	free(c);
}

llm_call *
llm_chat(llm_client *c, json_t *request, long timeout_ms,
         llm_delta_cb *on_delta, llm_done_cb *on_done, void *arg)
{
	llm_call *call = xcalloc(1, sizeof(*call));
	json_t *req;

	call->c = c;
	call->start_ms = util_now_ms();
	call->deadline_ms = call->start_ms + (timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT);
	call->on_delta = on_delta;
	call->on_done = on_done;
	call->arg = arg;
	call->stream = on_delta != NULL;
	call->prompt_tokens = call->completion_tokens = -1;
	sse_reader_init(&call->sse, SSE_MAX, on_sse_event, call);

	/* A shallow copy: the caller's object is not touched. */
	req = json_is_object(request) ? json_copy(request) : NULL;
	if (req) {
		json_object_del(req, "stream");
		json_object_del(req, "stream_options");
		if (call->stream) {
			json_object_set_new(req, "stream", json_true());
			json_object_set_new(req, "stream_options",
			                    json_pack("{s:b}", "include_usage", 1));
		}
		call->body = json_dumps(req, JSON_COMPACT);
		json_decref(req);
	}

	call->next = c->calls;
	if (c->calls)
		c->calls->prev = call;
	c->calls = call;
	c->stats.calls++;
	c->stats.in_flight++;

	/* Start from the loop, not from here: llm_chat may be called from
	 * inside on_delta, where curl refuses add_handle, and on_done must
	 * never run before llm_chat has returned the handle. */
	call->timer = evtimer_new(c->base, on_attempt_timer, call);
	if (!call->timer) {
		log_msg(LOG_ERROR, "llm: evtimer_new failed");
		abort();
	}
	arm_timer(call->timer, 0);
	return call;
}

void
llm_cancel(llm_call *call)
{
	llm_client *c;

	if (!call || call->in_done || call->cancelled)
		return; /* in on_done: it is freed when on_done returns */
	c = call->c;
	call->on_delta = NULL;
	call->on_done = NULL;
	call->arg = NULL;
	if (c->in_user_cb == 0) {
		free_call(call);
		return;
	}
	/* Inside on_delta, i.e. inside curl's write callback: removing a
	 * handle now would fail. write_cb aborts this call's transfer at its
	 * next byte and the reaper frees it once curl has returned. */
	call->cancelled = true;
	evtimer_del(call->timer);
	arm_timer(c->reaper, 0);
}

void
llm_client_stats(const llm_client *c, struct llm_stats *out)
{
	*out = c->stats;
}
