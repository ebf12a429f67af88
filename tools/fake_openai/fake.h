/*
 * fake.h — shared state of fake_openai, the stand-in for OpenAI's chat
 * completions API used by the integration tests, the benchmarks and the
 * no-key demo.
 *
 * The program is three units on one libevent loop:
 *   fake_openai.c  process, listener, routing, control endpoints (/_fake/...),
 *                  the scripted failure queue and the JSON/error reply helpers;
 *   fake_chat.c    POST /v1/chat/completions: validation, the per-request
 *                  context, latency and chunk timers, streaming, failure modes;
 *   fake_content.c what the "model" says: plain text, json_object, and JSON
 *                  shaped by a json_schema, deterministic per prompt;
 *   fake_ratelimit.c the rate-limit mode: requests and tokens per window,
 *                  x-ratelimit-* headers, 429 rate_limit_exceeded.
 */
#ifndef FAKE_OPENAI_H
#define FAKE_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct event_base;
struct evhttp;
struct evhttp_request;
struct chat;

/* The knobs a test can turn at run time; `defaults` keeps the command line
 * values so /_fake/reset can put them back. */
struct fake_settings {
	int latency_ms;		/* time to first byte of a chat reply */
	int chunk_delay_ms;	/* gap between streamed chunks */
	int chunks;		/* content pieces per streamed reply */
	char *content;		/* fixed reply text, NULL = generated; owned */
	/* Rate-limit mode (fake_ratelimit.c): 0 = no limit on that count;
	 * both 0 = mode off. */
	int rl_requests;	/* calls per window */
	int rl_tokens;		/* tokens (prompt + completion) per window */
	int rl_window_ms;	/* the window's length */
};

/* The x-ratelimit-* values of one reply, as of its call's admission. */
struct fake_rl_view {
	bool on;
	int limit_requests, limit_tokens;
	long remaining_requests, remaining_tokens;
	long reset_requests_ms, reset_tokens_ms;
};

/* Why a call was refused, for OpenAI's message. */
struct fake_rl_refusal {
	const char *kind;	/* "requests" | "tokens"; NULL = admitted */
	const char *unit;	/* "requests per min (RPM)" … */
	long limit, used, requested;
	long retry_ms;		/* until the window resets */
};

struct fake {
	struct event_base *base;
	struct evhttp *http;
	struct fake_settings defaults;
	struct fake_settings live;
	const char *require_key;	/* NULL = any key; points into argv */
	bool quiet;
	int timeout_sec;		/* evhttp read/write timeout */

	/* Scripted failures, head first; each call pops (or uses) the head. */
	json_t *fail_queue;
	int fail_head_used;		/* calls already served by the head */

	/* What /_fake/stats reports. */
	uint64_t chat_calls;
	uint64_t stream_calls;
	uint64_t rl_refused;		/* 429s of the rate-limit mode */
	double rl_window_start;		/* CLOCK_MONOTONIC ms */
	long rl_used_requests, rl_used_tokens;
	uint64_t connections;
	int in_flight;
	int max_in_flight;
	json_t *last_request;		/* last chat body that parsed, or NULL */
	bool last_auth_present;
	double last_first_content_ms;	/* CLOCK_MONOTONIC ms of the last stream's first content chunk */

	uint64_t id_seq;		/* makes response ids unique */
	struct chat *chats;		/* every live chat context, for shutdown */
};

/* ---- fake_openai.c: replies and the failure queue ---------------------- */

void fake_log(struct fake *f, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* An OpenAI error object: {"error":{"message","type","param","code"}}.
 * NULL param/code become JSON null, as the API sends them. */
json_t *fake_error_body(const char *message, const char *type,
    const char *param, const char *code);
/* Sends `body` (reference stolen) as application/json with `status`. */
void fake_reply_json(struct evhttp_request *req, int status, json_t *body);
void fake_reply_error(struct evhttp_request *req, int status,
    const char *message, const char *type, const char *param,
    const char *code);
/* Adds the headers every OpenAI reply carries (x-request-id and friends,
 * x-ratelimit-* as of `rl`, or as of now when rl is NULL). */
void fake_add_openai_headers(struct fake *f, struct evhttp_request *req,
    const char *req_id, long processing_ms, const struct fake_rl_view *rl);
/* Parses a request body as a JSON object; NULL (and err->text set) if it is
 * not one. */
json_t *fake_body_json(struct evhttp_request *req, json_error_t *err);
const char *fake_method_name(struct evhttp_request *req);
/* The failure entry this chat call must follow (new reference), or NULL. */
json_t *fake_fail_next(struct fake *f);

/* ---- fake_chat.c ------------------------------------------------------- */

void chat_handle(struct fake *f, struct evhttp_request *req);
/* Frees every live chat context at shutdown, before evhttp_free. */
void chat_shutdown_all(struct fake *f);
/* Validates one failure-queue entry; false with a message in err. */
bool chat_fail_entry_valid(json_t *entry, char *err, size_t errlen);

/* ---- fake_ratelimit.c -------------------------------------------------- */

bool fake_rl_on(const struct fake *f);
/* Counts a call of `tokens` tokens into the window and fills *v (true), or
 * refuses it (false) with *why; *v is the state either way. */
bool fake_rl_admit(struct fake *f, long tokens, struct fake_rl_view *v,
    struct fake_rl_refusal *why);
void fake_rl_headers(struct fake *f, struct evhttp_request *req,
    const struct fake_rl_view *snapshot);
/* Go's duration format, as OpenAI writes resets: "20ms", "1.5s", "1m0s". */
void fake_rl_format_duration(long ms, char *out, size_t n);

/* ---- fake_content.c ---------------------------------------------------- */

/* Hash of the roles and texts of `messages` (stable across runs), and the
 * total number of characters of their text contents in *chars. */
uint64_t content_hash_messages(json_t *messages, size_t *chars);
/* The reply text for a request with this response_format (may be NULL) and
 * seed. Returns a malloc'd NUL-terminated string; *len is its length. */
char *content_generate(json_t *response_format, uint64_t seed, size_t *len);

/* ---- fake_insight.c ---------------------------------------------------- */

/* content_generate, then the schema's score/trend and text fields follow the
 * CRM facts of the last user message (rapport's shipped prompts), when it
 * has any. Same ownership as content_generate. */
char *content_insight(json_t *messages, json_t *response_format, uint64_t seed, size_t *len);
/* UTF-8 helpers: code points in s[0..len), and the byte length of the first
 * n code points (never ends inside a sequence). */
size_t utf8_count(const char *s, size_t len);
size_t utf8_prefix(const char *s, size_t len, size_t n);

/* Allocation that aborts on exhaustion: a test tool out of memory has
 * nothing useful left to do, and checks at every call would bury the real
 * error paths. */
void *xmalloc(size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#endif
