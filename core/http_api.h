/*
 * http_api — the HTTP API on libevent's evhttp: routing, auth, JSON errors,
 * cache headers, the per-request log line, and noticing clients that leave
 * while their answer is being prepared.
 *
 * Owns the evhttp instance, its listener, the connection subsystem
 * (http_conn: cap, timeouts, accept pause) and every in-progress request
 * (struct http_call). Analyses are handed to the analysis pipeline; the
 * reply comes back through a callback and is written here.
 */
#ifndef RAPPORT_HTTP_API_H
#define RAPPORT_HTTP_API_H

#include "analysis.h"
#include "cache.h"
#include "config.h"
#include "db.h"
#include "feedback.h"
#include "llm.h"
#include "metrics.h"
#include "script.h"
#include "state.h"

struct event_base;
typedef struct jobs jobs;
struct evbuffer;
struct evhttp_request;
typedef struct http_server http_server;

struct http_deps {
	struct event_base *base;
	const struct config *cfg;
	analysis *analysis;
	script_registry *scripts;
	db_pool *db;
	llm_client *llm;
	cache *cache;
	limiter *limiter;
	breaker *breaker;
	accounting *acct;
	state_db *state;             /* rapport's own state (may be NULL) */
	jobs *jobs;                  /* warm jobs (http_jobs.c; may be NULL) */
	feedback *feedback;          /* votes on insights (http_feedback.c; may be NULL) */
};

/* Binds cfg->listen; NULL with *err set (caller frees) on failure. */
http_server *http_server_create(const struct http_deps *deps, char **err);
/* Graceful stop, first step: stops accepting and answers 503 (or an SSE
 * error event) to every request still waiting. The loop must run a little
 * longer for those replies to be written. */
void http_server_drain(http_server *s);
/* Stops accepting, answers 503 to requests still waiting, frees all. */
void http_server_destroy(http_server *s);
/* Adds the numbers of /metrics to m (metrics.h): the server's request
 * counters and those of the parts it was built with. GET /metrics prints
 * them as Prometheus text, the admin socket's `metrics` as JSON. */
void http_server_metrics(http_server *s, metrics *m);

/* For routes answered later by other files (http_jobs.c): a deferred call
 * notices a client that leaves and a shutdown, and then runs gone(arg) and
 * frees itself (the owner must not answer it after that). Answering sends
 * the reply, logs the request line and frees the call. headers: NULL or
 * name, value pairs ended by NULL. */
typedef struct http_call http_call;
typedef void http_call_gone_cb(void *arg);
http_call *http_call_defer(http_server *s, struct evhttp_request *req, const char *req_id,
                           const char *path, http_call_gone_cb *gone, void *arg);
void http_call_reply(http_call *c, int status, const char *body, size_t len,
                     const char *const *headers);
void http_call_error(http_call *c, int status, const char *code, const char *message,
                     const char *const *headers);

/* http_jobs.c: POST /v1/warm, GET /v1/jobs[/{id}], DELETE /v1/jobs/{id}.
 * True when the path is one of them (the request is then answered, now or
 * later, and its line logged by the answer). */
bool http_jobs_route(http_server *s, const struct http_deps *d, struct evhttp_request *req,
                     const char *req_id, const char *path, int nseg, char **seg);

/* http_feedback.c: POST /v1/contacts/{id}/analyses/{type}/feedback (any
 * other method gets its 405 there). Always answers, now or later, and the
 * answer logs the request line. */
bool http_feedback_route(http_server *s, const struct http_deps *d, struct evhttp_request *req,
                         const char *req_id, const char *path, const char *id_str,
                         const char *type);

#endif
