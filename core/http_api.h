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
#include "llm.h"
#include "metrics.h"
#include "script.h"

struct event_base;
struct evbuffer;
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

#endif
