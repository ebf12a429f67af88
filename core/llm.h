/*
 * llm — OpenAI-compatible chat completions over libcurl's multi-socket API,
 * driven by the same libevent loop as everything else (no thread blocks, no
 * curl_easy_perform).
 *
 * Owns one CURLM for the life of the process (its connection cache gives
 * connection reuse and HTTP/2 multiplexing) and one easy handle per attempt.
 * llm_chat() serialises the request, sends it (streamed or not), parses the
 * reply incrementally, retries what may be retried, and calls on_done exactly
 * once unless llm_cancel() came first. The API key is only ever put in the
 * Authorization header; it is never logged or returned.
 */
#ifndef RAPPORT_LLM_H
#define RAPPORT_LLM_H

#include <stdbool.h>
#include <jansson.h>

#include "limiter.h"   /* struct limiter_signal: what we tell the limiter */

struct event_base;
typedef struct llm_client llm_client;
typedef struct llm_call llm_call;

struct llm_config {
	const char *base_url;        /* e.g. "https://api.openai.com/v1" */
	const char *api_key;         /* may be NULL (fake upstream) */
	long connect_timeout_ms;     /* per connect (5000) */
	int max_retries;             /* retries after the first attempt (2) */
	const char *ca_file;         /* extra CA bundle (a private upstream), or NULL */
};

enum llm_status {
	LLM_OK = 0,
	LLM_ERR_HTTP,       /* upstream answered with an error status */
	LLM_ERR_TIMEOUT,    /* deadline passed (→ 504) */
	LLM_ERR_CONNECT,    /* could not connect / connection failed (→ 502) */
	LLM_ERR_PROTOCOL,   /* unparseable or cut reply (→ 502) */
};

struct llm_result {
	enum llm_status status;
	long http_status;          /* last HTTP status seen, 0 if none */
	const char *content;       /* assistant content, "" if none (never NULL) */
	const char *refusal;       /* message.refusal or NULL */
	const char *finish_reason; /* or NULL */
	const char *model;         /* model the upstream says it used, or NULL */
	long prompt_tokens;        /* -1 when the upstream did not say */
	long completion_tokens;
	const char *error_message; /* upstream error.message or transport error */
	const char *error_code;    /* upstream error.code / type, or NULL */
	const char *request_id;    /* x-request-id, or NULL */
	int attempts;              /* HTTP attempts made (1 = no retry) */
	double elapsed_ms;         /* from llm_chat() to on_done */
	/* The provider's rate-limit word, from the last attempt's headers
	 * (x-ratelimit-{limit,remaining,reset}-{requests,tokens},
	 * retry-after-ms / retry-after), for every outcome, errors included;
	 * plus ok, the 429s over all attempts and the tokens used. Ready to
	 * hand to limiter_observe(). */
	struct limiter_signal rate;
};

/* Streamed text as it arrives: each call carries one upstream chunk's
 * delta.content, whole (text is also NUL-terminated). It runs from inside
 * curl's write callback. In there the caller may copy the text, write to its
 * own client (evhttp), start new calls with llm_chat(), and llm_cancel() any
 * call, this one included (the cancel is then finished from the loop a moment
 * later; no callback of a cancelled call runs again). It must not call
 * llm_client_destroy() or any other curl API on llm's multi handle. */
typedef void llm_delta_cb(void *arg, const char *text, size_t len);
/* res and its strings live only during the callback. It runs from the loop,
 * outside curl callbacks: the caller may llm_chat() and llm_cancel() other
 * calls; llm_cancel() on this same call is a harmless no-op (it is freed when
 * on_done returns). Not llm_client_destroy(). */
typedef void llm_done_cb(void *arg, const struct llm_result *res);

/* curl_global_init() must have run (main does it). NULL on failure. */
llm_client *llm_client_create(struct event_base *base, const struct llm_config *cfg);
/* Cancels (without callbacks) every call still running. Not from inside an
 * llm callback. */
void llm_client_destroy(llm_client *c);

/* request is the chat completions body without stream fields ({"model",
 * "messages", "temperature", "max_completion_tokens", "response_format"...});
 * it is serialised at once and not kept. With on_delta non-NULL the call is
 * streamed ("stream": true, stream_options.include_usage) and on_delta runs
 * for each content chunk; once a delta has been delivered the call is never
 * retried. timeout_ms is the overall deadline for all attempts (<= 0: 600 s).
 * Never calls back before it returns: the first attempt starts from the loop,
 * so it is also safe from inside on_delta/on_done. */
llm_call *llm_chat(llm_client *c, json_t *request, long timeout_ms,
                   llm_delta_cb *on_delta, llm_done_cb *on_done, void *arg);
/* on_done (and on_delta) will not run again; frees the call and its
 * transfer. Safe anywhere on the loop thread, including inside on_delta and
 * on_done (see above). The handle is invalid afterwards. */
void llm_cancel(llm_call *call);

/* Short stable name of a status for logs and error codes: "ok",
 * "upstream_error", "upstream_timeout", "upstream_unreachable",
 * "upstream_bad_reply". */
const char *llm_status_name(enum llm_status st);

/* A duration as OpenAI writes x-ratelimit-reset-*: Go's format, one or
 * more <number><unit> with units h, m, s, ms, us (µs), ns ("1s", "6m0s",
 * "20ms", "1h2m3.5s"); a bare number is seconds (as retry-after). False,
 * *ms untouched, for anything else. */
bool llm_parse_duration_ms(const char *s, double *ms);

struct llm_stats {
	long calls;          /* llm_chat() calls */
	long attempts;       /* HTTP requests sent */
	long in_flight;
	long connections;    /* new connections opened (curl's num_connects) */
	long http2;          /* attempts that ran over HTTP/2 */
	long retrying;       /* live calls that are retrying (armed or sent) */
};
void llm_client_stats(const llm_client *c, struct llm_stats *out);

#endif
