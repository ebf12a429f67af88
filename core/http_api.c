/*
 * http_api — routes, replies and the lifecycle of a waiting request.
 *
 * A request that can be answered at once (health, listings, errors, cache
 * hits) is answered inside the evhttp callback. One that must wait gets a
 * struct http_call, linked on the server's list, which owns:
 *   - the analysis_wait handle (cancelled if the client leaves),
 *   - a one-shot "peek" watcher on the socket: evhttp stops reading while
 *     a request is being handled, so without it a client that hangs up
 *     would go unnoticed until the reply is written (libevent #78),
 *   - the connection's close callback, cleared before the reply is sent
 *     because the callback belongs to the connection and would otherwise
 *     fire later, for another request on the same keep-alive connection
 *     (set through http_conn, which holds evhttp's to count connections).
 * Every exit (reply, client gone, shutdown) goes through call_free().
 */
#include "http_api.h"
#include "http_auth_token.h"
#include "http_conn.h"
#include "fmt.h"
#include "http_contacts.h"
#include "http_cors.h"
#include "http_guard.h"
#include "http_int.h"
#include "http_static.h"
#include "jobs.h"
#include "log.h"
#include "ratelimit.h"
#include "sse.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>

/* http_conn holds every connection's close callback (it counts connections
 * when they close); set ours with http_conn_set_closecb, never directly. */
#pragma GCC poison evhttp_connection_set_closecb

struct http_call {
	http_server *srv;
	struct evhttp_request *req;
	struct event *peek;
	analysis_wait *wait;
	http_call_gone_cb *gone;      /* a deferred call's owner (http_call_defer) */
	void *gone_arg;
	bool sse;                     /* answering as Server-Sent Events */
	bool error_events;            /* ?errors=event: a failure before any content is
	                               * a 200 stream's error event too (EventSource
	                               * shows no status or body) */
	bool streaming;               /* the 200 and headers are out */
	bool following;               /* showed a stale result; now waits for its refresh */
	/* The meta event of a stream not yet started: the 200 waits for the
	 * first content, so a failure before it keeps its own status. */
	char meta_cache[16];
	char meta_version[17];
	int64_t contact_id;
	char type[72];
	unsigned seq;                 /* SSE event id */
	long deltas_skipped;          /* dropped for a slow reader */
	struct event *heartbeat;
	char req_id[24];
	char method[8];
	char *path;
	char *if_none_match;
	bool head;
	double t_start;
	LIST_ENTRY(http_call) link;
};

struct http_server {
	struct http_deps d;
	struct evhttp *http;
	struct evconnlistener *listener;
	http_conns *conns;               /* count, cap, timers, accept pause */
	LIST_HEAD(, http_call) calls;
	unsigned long long next_id;
	unsigned id_salt;
	long requests;
	long responses_by_class[6];      /* 1xx..5xx */
	int last_status;                 /* of the last reply sent, for its log line */
	bool draining;                   /* shutting down: no new work */
	ratelimit *refresh;              /* forced regenerations per client key */
	http_cors *cors;                 /* RAPPORT_CORS_ORIGINS; NULL = off */
	http_static *web;                /* the panel's files; NULL = none */
	http_contacts *contacts;         /* GET /v1/contacts searches in flight */
	http_tokens *tokens;             /* stream tokens for EventSource */
};

/* ---- small helpers ------------------------------------------------------ */

static const char *
method_name(enum evhttp_cmd_type m)
{
	switch (m) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	case EVHTTP_REQ_PATCH: return "PATCH";
	case EVHTTP_REQ_TRACE: return "TRACE";
	case EVHTTP_REQ_CONNECT: return "CONNECT";
	default: return "OTHER";
	}
}

static const char *
reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 501: return "Not Implemented";
	case 505: return "HTTP Version Not Supported";
	case 413: return "Payload Too Large";
	case 429: return "Too Many Requests";
	case 499: return "Client Closed Request";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Unknown";
	}
}

/* snprintf(dst, cap, "%s", src) without printf: the per-request copies
 * of ids and names (the cached hit's profile). */
static void
copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strnlen(src, cap - 1);
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static void
new_request_id(http_server *s, struct evhttp_request *req, char *out, size_t len)
{
	/* Keep a caller's id if it is short and printable, so logs can be
	 * joined across services. */
	const char *given = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-Id");
	if (given && strlen(given) > 0 && strlen(given) < len) {
		bool ok = true;
		for (const char *p = given; *p; p++)
			if (!isalnum((unsigned char)*p) && !strchr("-_.:", *p))
				ok = false;
		if (ok) {
			copy_str(out, len, given);
			return;
		}
	}
	char id[FMT_NUM_MAX];
	id[fmt_hex_id(id, s->id_salt, ++s->next_id)] = '\0';     /* "%08x%08llx" */
	copy_str(out, len, id);
}

/* Sends status + JSON body (or none for HEAD / 304) with the common headers. */
static void
send_json(http_server *s, struct evhttp_request *req, const char *req_id, int status,
          const char *body, size_t len, bool head)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "X-Request-Id", req_id);
	struct evbuffer *buf = NULL;
	if (status != 304 && status != 204) {
		evhttp_add_header(h, "Content-Type", "application/json; charset=utf-8");
		buf = evbuffer_new();
		if (head) {
			/* HEAD: the length GET would have, no body. */
			char n[24];
			snprintf(n, sizeof n, "%zu", len);
			evhttp_add_header(h, "Content-Length", n);
		} else {
			evbuffer_add(buf, body, len);
			/* evhttp leaves the length out of any answer to CONNECT
			 * (it expects a tunnel); ours is an error with a body. */
			if (evhttp_request_get_command(req) == EVHTTP_REQ_CONNECT) {
				char n[24];
				snprintf(n, sizeof n, "%zu", len);
				evhttp_add_header(h, "Content-Length", n);
			}
		}
	}
	if (status >= 100 && status < 600)
		s->responses_by_class[status / 100]++;
	s->last_status = status;
	evhttp_send_reply(req, status, reason(status), buf);
	if (buf)
		evbuffer_free(buf);
}

/* {"error":{"code":…,"message":…},"request_id":…} */
static void
send_error(http_server *s, struct evhttp_request *req, const char *req_id, int status,
           const char *code, const char *message, bool head)
{
	json_t *doc = json_pack("{s:{s:s, s:s}, s:s}", "error", "code", code, "message",
	                        message ? message : reason(status), "request_id", req_id);
	if (!doc)   /* a message cut inside a UTF-8 character, or not UTF-8 at all */
		doc = json_pack("{s:{s:s, s:s}, s:s}", "error", "code", code, "message",
		                "(the error message was not valid UTF-8; see the server log)",
		                "request_id", req_id);
	char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(doc);
	if (!text)
		text = xstrdup("{\"error\":{\"code\":\"internal_error\",\"message\":\"cannot encode error\"}}");
	send_json(s, req, req_id, status, text, strlen(text), head);
	free(text);
}

static void
log_simple(http_server *s, const char *req_id, const char *method, const char *path,
           int status, double t_start)
{
	bool probe = strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0 ||
	             strcmp(path, "/metrics") == 0;
	log_event(probe ? LOG_DEBUG : LOG_INFO, "request", LOG_S("req_id", req_id),
	          LOG_S("method", method), LOG_S("path", path), LOG_I("status", status),
	          LOG_N("total_ms", util_now_ms() - t_start), LOG_END);
}

/* Constant-time comparison: the time taken must not tell how much of a
 * guessed key was right. */
static bool
key_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char diff = la != lb;
	for (size_t i = 0; i < la; i++)
		diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
	return diff == 0;
}

/* The position of the API key the request carries among RAPPORT_API_KEYS,
 * or -1. Every key is compared, whichever matches. */
static int
matched_key(http_server *s, struct evhttp_request *req)
{
	const struct config *cfg = s->d.cfg;
	const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
		return -1;
	const char *key = auth + 7;
	while (*key == ' ')
		key++;
	int found = -1;
	for (int i = 0; i < cfg->n_api_keys; i++)
		if (key_equal(key, cfg->api_keys[i]))
			found = i;
	return found;
}

static bool
authorized(http_server *s, struct evhttp_request *req)
{
	return s->d.cfg->n_api_keys == 0 || matched_key(s, req) >= 0;
}

/* Who a forced regeneration is counted against: the API key that let the
 * request in (by its position, so no key is copied), or, with auth off,
 * the peer address. */
static void
client_key(http_server *s, struct evhttp_request *req, char *out, size_t len)
{
	int k = s->d.cfg->n_api_keys ? matched_key(s, req) : -1;
	if (k >= 0) {
		snprintf(out, len, "key:%d", k);
		return;
	}
	char *addr = NULL;
	ev_uint16_t port = 0;
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	if (evcon)
		evhttp_connection_get_peer(evcon, &addr, &port);
	snprintf(out, len, "addr:%s", addr ? addr : "?");
}

/* ---- waiting requests ---------------------------------------------------- */

static void
call_free(struct http_call *c)
{
	LIST_REMOVE(c, link);
	if (c->peek)
		event_free(c->peek);
	if (c->heartbeat)
		event_free(c->heartbeat);
	struct evhttp_connection *evcon = c->req ? evhttp_request_get_connection(c->req) : NULL;
	if (evcon)
		http_conn_set_closecb(c->srv->conns, evcon, NULL, NULL);
	free(c->path);
	free(c->if_none_match);
	free(c);
}

/* The client left while we waited: stop waiting and let evhttp tear the
 * connection down by answering into it (the write fails, evhttp frees the
 * request and the connection). */
static void
call_client_gone(struct http_call *c, const char *how)
{
	log_event(LOG_INFO, "client gone", LOG_S("req_id", c->req_id), LOG_S("path", c->path),
	          LOG_S("how", how), LOG_N("waited_ms", util_now_ms() - c->t_start), LOG_END);
	if (c->wait)
		analysis_wait_cancel(c->wait);
	c->wait = NULL;
	if (c->gone)
		c->gone(c->gone_arg);
	c->gone = NULL;
	struct evhttp_request *req = c->req;
	http_server *s = c->srv;
	char id[24];
	copy_str(id, sizeof id, c->req_id);
	call_free(c);
	if (req) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
		send_error(s, req, id, 499, "client_closed_request", "the client closed the connection", false);
	}
}

static void
on_peek(evutil_socket_t fd, short what, void *arg)
{
	struct http_call *c = arg;
	char byte;
	ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
		call_client_gone(c, n == 0 ? "eof" : "error");
		return;
	}
	if (n > 0) {
		/* A pipelined request: the client is still there. Stop
		 * watching; evhttp reads it after our reply. */
		event_del(c->peek);
	}
}

/* Deferred free of a request whose connection died under it: evhttp left
 * it to us (req->evcon is NULL) and reply_end releases it. */
static void
free_orphan(evutil_socket_t fd, short what, void *arg)
{
	evhttp_send_reply_end(arg);
}

static void
on_conn_close_cb(struct evhttp_connection *evcon, void *arg)
{
	struct http_call *c = arg;
	struct evhttp_request *req = c->req;
	bool orphaned = req && evhttp_request_get_connection(req) == NULL;
	if (c->wait)
		analysis_wait_cancel(c->wait);
	c->wait = NULL;
	if (c->gone)
		c->gone(c->gone_arg);
	c->gone = NULL;
	c->req = NULL;
	log_event(LOG_INFO, "client gone", LOG_S("req_id", c->req_id), LOG_S("path", c->path),
	          LOG_S("how", "connection closed"), LOG_END);
	struct event_base *base = c->srv->d.base;
	call_free(c);
	if (orphaned)
		event_base_once(base, -1, EV_TIMEOUT, free_orphan, req, NULL);
}

static struct http_call *
call_new(http_server *s, struct evhttp_request *req, const char *req_id, const char *path)
{
	struct http_call *c = xcalloc(1, sizeof *c);
	c->srv = s;
	c->req = req;
	c->t_start = util_now_ms();
	c->path = xstrdup(path);
	c->head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
	copy_str(c->method, sizeof c->method, method_name(evhttp_request_get_command(req)));
	copy_str(c->req_id, sizeof c->req_id, req_id);
	const char *inm = evhttp_find_header(evhttp_request_get_input_headers(req), "If-None-Match");
	if (inm)
		c->if_none_match = xstrdup(inm);
	LIST_INSERT_HEAD(&s->calls, c, link);
	return c;
}

/* Starts watching for the client leaving while we wait. */
static void
call_watch(struct http_call *c)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(c->req);
	if (!evcon)
		return;
	http_conn_set_closecb(c->srv->conns, evcon, on_conn_close_cb, c);
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	if (fd >= 0) {
		c->peek = event_new(c->srv->d.base, fd, EV_READ | EV_PERSIST, on_peek, c);
		event_add(c->peek, NULL);
	}
}

/* ---- Server-Sent Events ---------------------------------------------------- */

static const char *
x_cache(const char *status)
{
	if (strcmp(status, "hit") == 0)
		return "HIT";
	if (strcmp(status, "coalesced") == 0)
		return "COALESCED";
	if (strcmp(status, "fallback") == 0)
		return "FALLBACK";
	if (strcmp(status, "stale") == 0)
		return "STALE";
	if (strcmp(status, "revalidated") == 0)
		return "REVALIDATED";
	return "MISS";
}

/* Past this much unsent output a slow reader stops getting deltas (the
 * result event still carries the whole text), so memory stays bounded. */
#define SSE_HIGH_WATER (256 * 1024)

static size_t
pending_output(struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
	return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

/* One event: "event: <name>", "id: <seq>", "data: <json>". */
static void
sse_send(struct http_call *c, const char *event, const char *data)
{
	if (!c->req || !evhttp_request_get_connection(c->req))
		return;
	char id[16];
	snprintf(id, sizeof id, "%u", ++c->seq);
	struct evbuffer *b = evbuffer_new();
	sse_format_event(b, event, id, data);
	evhttp_send_reply_chunk(c->req, b);
	evbuffer_free(b);
}

static void
on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
	struct http_call *c = arg;
	if (!c->req || !evhttp_request_get_connection(c->req))
		return;
	/* A comment: ignored by EventSource, keeps proxies and our own
	 * write timeout from taking a silent stream for a dead one. */
	struct evbuffer *b = evbuffer_new();
	evbuffer_add(b, ": ping\n\n", 8);
	evhttp_send_reply_chunk(c->req, b);
	evbuffer_free(b);
}

/* Sends the 200 with SSE headers and the meta event: called with the first
 * content (text, a reset, or the result), never before, so that a stream
 * that fails first answers with the error's own status and an EventSource
 * stops instead of reconnecting. */
static void
sse_start(struct http_call *c, const char *cache_status, const char *version,
          int64_t contact_id, const char *type)
{
	http_server *s = c->srv;
	struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
	evhttp_add_header(h, "Content-Type", "text/event-stream; charset=utf-8");
	evhttp_add_header(h, "Cache-Control", "no-cache");
	evhttp_add_header(h, "X-Accel-Buffering", "no");
	evhttp_add_header(h, "X-Request-Id", c->req_id);
	evhttp_add_header(h, "X-Cache", x_cache(cache_status));
	s->responses_by_class[2]++;
	evhttp_send_reply_start(c->req, 200, "OK");
	c->streaming = true;
	struct evhttp_connection *evcon = evhttp_request_get_connection(c->req);
	if (evcon) {
		/* While streaming, evhttp reads to notice a hang-up; its read
		 * timeout would then kill a quiet stream (libevent #715), so
		 * keep only the write timeout. The close callback now tells us
		 * when the client leaves. */
		struct timeval wt = { s->d.cfg->http_timeout_s, 0 };
		bufferevent_set_timeouts(evhttp_connection_get_bufferevent(evcon), NULL, &wt);
		http_conn_set_closecb(s->conns, evcon, on_conn_close_cb, c);
	}
	if (c->peek) {
		event_free(c->peek);
		c->peek = NULL;
	}
	int hb_ms = s->d.cfg->sse_heartbeat_ms > 0 ? s->d.cfg->sse_heartbeat_ms : 15000;
	struct timeval hb = { hb_ms / 1000, (hb_ms % 1000) * 1000 };
	c->heartbeat = event_new(s->d.base, -1, EV_PERSIST, on_heartbeat, c);
	event_add(c->heartbeat, &hb);
	char version8[9] = "";
	if (version)
		snprintf(version8, sizeof version8, "%.8s", version);
	json_t *meta = json_pack("{s:I, s:s, s:s, s:s, s:s}", "contact_id", (json_int_t)contact_id,
	                         "type", type, "script_version", version8, "cache", cache_status,
	                         "request_id", c->req_id);
	char *text = json_dumps(meta, JSON_COMPACT | JSON_PRESERVE_ORDER);
	sse_send(c, "meta", text);
	free(text);
	json_decref(meta);
}

static void
on_analysis_delta(void *arg, const char *text, size_t len)
{
	struct http_call *c = arg;
	if (!c->req || !c->sse)
		return;
	if (!c->streaming) {
		/* Known now, not when the request came: a generation this
		 * instance waits for on another one is "coalesced". */
		if (c->wait)
			snprintf(c->meta_cache, sizeof c->meta_cache, "%s", analysis_wait_status(c->wait));
		sse_start(c, c->meta_cache, c->meta_version, c->contact_id, c->type);
	}
	if (!text) {
		sse_send(c, "reset", "{\"reason\":\"the reply did not match the schema; it is "
		                     "being regenerated: discard the text so far\"}");
		return;
	}
	if (pending_output(c->req) > SSE_HIGH_WATER) {
		c->deltas_skipped++;
		return;
	}
	json_t *d = json_pack("{s:s%}", "text", text, len);
	if (!d)
		return;            /* not UTF-8: the result event has the text */
	char *data = json_dumps(d, JSON_COMPACT);
	sse_send(c, "delta", data);
	free(data);
	json_decref(d);
}

/* ---- analyses ------------------------------------------------------------ */

static bool
etag_matches(const char *inm, const char *etag)
{
	if (!inm || !etag)
		return false;
	if (strcmp(inm, "*") == 0)
		return true;
	/* A list of tags, possibly weak (W/"…"): a plain substring test on the
	 * quoted tag is exact enough since tags contain no commas. */
	return strstr(inm, etag) != NULL;
}

static void
log_analysis(struct http_call *c, const struct analysis_reply *r, int status)
{
	log_event(status >= 500 ? LOG_WARN : LOG_INFO, "request", LOG_S("req_id", c->req_id),
	          LOG_S("method", c->method), LOG_S("path", c->path), LOG_I("status", status),
	          LOG_I("contact", r->contact_id), LOG_S("type", r->type),
	          LOG_S("cache", r->cache_status), LOG_N("age_ms", r->age_ms),
	          LOG_N("db_ms", r->db_ms), LOG_N("script_ms", r->script_ms),
	          LOG_N("llm_ms", r->llm_ms), LOG_N("total_ms", r->total_ms),
	          LOG_I("prompt_tokens", r->prompt_tokens),
	          LOG_I("completion_tokens", r->completion_tokens), LOG_N("cost_usd", r->cost_usd),
	          LOG_S("error", r->error_code), LOG_I("stream", c->sse), LOG_END);
}

static void sse_end(struct http_call *c, const struct analysis_reply *r, int status);

/* The end of a streamed answer: a result or error event, then the end of
 * the chunked body. A stream that already showed a stale result ends
 * without an error event when its refresh fails: the stale result stands,
 * as it does for every other reader. */
static void
sse_finish(struct http_call *c, const struct analysis_reply *r)
{
	if (!c->streaming)
		sse_start(c, r->cache_status, r->version, r->contact_id, r->type);
	if (c->following && r->status != 200) {
		sse_end(c, r, 200);
		return;
	}
	if (r->status == 200) {
		sse_send(c, "result", r->body);
	} else {
		json_t *e = json_pack("{s:{s:s, s:s, s:i}, s:s}", "error", "code", r->error_code,
		                      "message", r->error_message ? r->error_message : "",
		                      "status", r->status, "request_id", c->req_id);
		if (!e)
			e = json_pack("{s:{s:s, s:s, s:i}, s:s}", "error", "code", r->error_code,
			              "message", "(the error message was not valid UTF-8; see the server log)",
			              "status", r->status, "request_id", c->req_id);
		if (r->retry_after_s > 0)   /* no header to carry it on a stream */
			json_object_set_new(json_object_get(e, "error"), "retry_after",
			                    json_integer(r->retry_after_s));
		char *text = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER);
		sse_send(c, "error", text);
		free(text);
		json_decref(e);
	}
	sse_end(c, r, r->status);
}

/* The stream's log line, then the end of the chunked body. */
static void
sse_end(struct http_call *c, const struct analysis_reply *r, int status)
{
	log_analysis(c, r, status);
	if (c->deltas_skipped)
		log_event(LOG_INFO, "slow stream reader", LOG_S("req_id", c->req_id),
		          LOG_I("deltas_skipped", c->deltas_skipped), LOG_END);
	struct evhttp_request *req = c->req;
	int timeout_s = c->srv->d.cfg->http_timeout_s;
	call_free(c);
	/* The stream switched the read timeout off; the connection may go
	 * on (keep-alive) and must time out again when idle. */
	struct evhttp_connection *evcon = req ? evhttp_request_get_connection(req) : NULL;
	if (evcon) {
		struct timeval tv = { timeout_s, 0 };
		bufferevent_set_timeouts(evhttp_connection_get_bufferevent(evcon), &tv, &tv);
	}
	evhttp_send_reply_end(req);
}

/* Appends the literal s at v + k; returns the new length (callers size v). */
static size_t
hdr_put(char *v, size_t k, const char *s)
{
	size_t n = strlen(s);
	memcpy(v + k, s, n);
	return k + n;
}

static void
on_analysis_reply(void *arg, const struct analysis_reply *r)
{
	struct http_call *c = arg;
	http_server *s = c->srv;
	struct evhttp_request *req = c->req;
	c->wait = NULL;
	if (c->sse && r->status == 200 && !c->following && strcmp(r->cache_status, "stale") == 0) {
		/* The stale result at once, then the refreshed one when it comes
		 * (text as the model writes it, or a revalidated result). */
		if (!c->streaming)
			sse_start(c, r->cache_status, r->version, r->contact_id, r->type);
		sse_send(c, "result", r->body);
		c->following = true;
		c->wait = analysis_get(s->d.analysis, r->contact_id, r->type, ANALYSIS_JOIN,
		                       on_analysis_reply, on_analysis_delta, c);
		if (!c->wait)          /* no refresh runs (one failed a moment ago) */
			sse_end(c, r, 200);
		return;
	}
	if (c->sse && (c->streaming || r->status == 200 || c->error_events)) {
		sse_finish(c, r);
		return;
	}
	/* An error known before the stream began keeps its HTTP status, so an
	 * EventSource gives up instead of reconnecting to a 404 forever. */
	if (r->status != 200) {
		log_analysis(c, r, r->status);
		char id[24];
		copy_str(id, sizeof id, c->req_id);
		bool head = c->head;
		call_free(c);
		if (r->retry_after_s > 0) {
			char ra[16];
			snprintf(ra, sizeof ra, "%d", r->retry_after_s);
			evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
		}
		send_error(s, req, id, r->status, r->error_code, r->error_message, head);
		return;
	}
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	char v[256];
	evhttp_add_header(h, "ETag", r->etag);
	/* The numbers through fmt.c: printf's text, without printf (the
	 * cached hit's profile). v has room: short words and four numbers. */
	bool stale = strcmp(r->cache_status, "stale") == 0;
	long left_s = r->remaining_ms > 0 ? (long)(r->remaining_ms / 1000) : 0;
	long age_s = (long)(r->age_ms / 1000);
	size_t k = hdr_put(v, 0, "private, max-age=");
	if (stale) {           /* past its freshness; usable for the grace left */
		k = hdr_put(v, k, "0, stale-while-revalidate=");
		k += fmt_i64(v + k, left_s);
	} else if (r->grace_ms > 0 && left_s > 0) {
		/* max-age counts from generation, as Age does: age + what is left */
		k += fmt_i64(v + k, age_s + left_s);
		k = hdr_put(v, k, ", stale-while-revalidate=");
		k += fmt_i64(v + k, (long)(r->grace_ms / 1000));
	} else {
		k += fmt_i64(v + k, left_s > 0 ? age_s + left_s : 0);
	}
	v[k] = '\0';
	evhttp_add_header(h, "Cache-Control", v);
	v[fmt_i64(v, age_s)] = '\0';
	evhttp_add_header(h, "Age", v);
	evhttp_add_header(h, "X-Cache", x_cache(r->cache_status));
	if (strcmp(r->cache_status, "hit") == 0 || stale) {
		k = hdr_put(v, 0, "cache;desc=\"");
		k = hdr_put(v, k, r->cache_status);
		k = hdr_put(v, k, "\", total;dur=");
		v[k + fmt_fixed(v + k, r->total_ms, 3)] = '\0';
	} else
		snprintf(v, sizeof v, "db;dur=%.3f, script;dur=%.3f, llm;dur=%.3f, total;dur=%.3f",
		         r->db_ms, r->script_ms, r->llm_ms, r->total_ms);
	evhttp_add_header(h, "Server-Timing", v);
	int status = etag_matches(c->if_none_match, r->etag) ? 304 : 200;
	log_analysis(c, r, status);
	char id[24];
	copy_str(id, sizeof id, c->req_id);
	bool head = c->head;
	call_free(c);
	send_json(s, req, id, status, r->body, r->body_len, head);
}

/* Query flag set to 1/true/yes. */
static bool
query_flag(struct evkeyvalq *q, const char *name)
{
	const char *v = evhttp_find_header(q, name);
	return v && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0);
}

static bool wants_sse(struct evhttp_request *req, struct evkeyvalq *q);

static bool
wants_refresh(struct evhttp_request *req, struct evkeyvalq *q)
{
	/* A browser's EventSource sends Cache-Control: no-cache on every
	 * stream it opens (the HTML standard says so): for a stream only
	 * ?refresh=1 forces a regeneration, or every panel view would. */
	if (wants_sse(req, q))
		return query_flag(q, "refresh");
	const char *cc = evhttp_find_header(evhttp_request_get_input_headers(req), "Cache-Control");
	if (cc && (strstr(cc, "no-cache") || strstr(cc, "max-age=0")))
		return true;
	const char *pragma = evhttp_find_header(evhttp_request_get_input_headers(req), "Pragma");
	if (pragma && strstr(pragma, "no-cache"))
		return true;
	return query_flag(q, "refresh");
}

static bool
wants_sse(struct evhttp_request *req, struct evkeyvalq *q)
{
	const char *accept = evhttp_find_header(evhttp_request_get_input_headers(req), "Accept");
	return query_flag(q, "stream") || (accept && strstr(accept, "text/event-stream"));
}

/* A forced regeneration costs an upstream call: each client key gets
 * RAPPORT_REFRESH_PER_MIN a minute (RAPPORT_REFRESH_BURST at once); past
 * that a JSON 429 with Retry-After, and the cache is not bypassed. */
static bool
refresh_allowed(http_server *s, struct evhttp_request *req, const char *req_id, bool head)
{
	const struct config *cfg = s->d.cfg;
	if (cfg->refresh_per_min <= 0)
		return true;
	if (!s->refresh)     /* made on first use; freed with the server */
		s->refresh = ratelimit_create(cfg->refresh_per_min, cfg->refresh_burst, 4096);
	char key[80];
	client_key(s, req, key, sizeof key);
	int retry_after = 1;
	if (ratelimit_take(s->refresh, key, util_now_ms(), &retry_after))
		return true;
	char ra[16], msg[160];
	snprintf(ra, sizeof ra, "%d", retry_after);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
	snprintf(msg, sizeof msg, "too many forced regenerations (refresh / no-cache) from this "
	         "client: %d a minute; try again in %d s, or ask without refresh", cfg->refresh_per_min,
	         retry_after);
	send_error(s, req, req_id, 429, "refresh_rate_limited", msg, head);
	return false;
}

/* The type as sent (non-printable bytes as \xNN, cut at 64), and the
 * lowercase name when that is a type: names are case-sensitive. */
static void
http_unknown_type_message(script_registry *scripts, const char *type, char *buf, size_t len)
{
	char shown[64 * 4 + 1], lower[65];
	size_t n = 0, k = 0;
	for (const unsigned char *p = (const unsigned char *)type; *p && k < 64; p++, k++) {
		if (*p >= 0x20 && *p < 0x7f && *p != '\'')
			shown[n++] = (char)*p;
		else
			n += (size_t)snprintf(shown + n, sizeof shown - n, "\\x%02x", *p);
		lower[k] = (char)tolower(*p);
	}
	shown[n] = '\0';
	lower[k] = '\0';
	if (type[k] == '\0' && strcmp(lower, type) != 0 && script_registry_get(scripts, lower))
		snprintf(buf, len, "unknown analysis type '%s%s' (type names are lowercase: did you mean "
		         "'%s'?)", shown, type[k] ? "…" : "", lower);
	else
		snprintf(buf, len, "unknown analysis type '%s%s' (see /v1/analysis-types)", shown,
		         type[k] ? "…" : "");
}

/* True when the answer is (or will be) logged by the call it started;
 * false when it was answered here and the caller logs it. */
static bool
handle_analysis(http_server *s, struct evhttp_request *req, const char *req_id,
                const char *path, const char *id_str, const char *type, struct evkeyvalq *q)
{
	bool head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
	int64_t id;
	if (!util_parse_i64(id_str, &id) || id <= 0) {
		send_error(s, req, req_id, 400, "invalid_contact_id",
		           "the contact id must be a positive integer", head);
		return false;
	}
	if (!util_type_name_ok(type)) {
		char msg[400];
		http_unknown_type_message(s->d.scripts, type, msg, sizeof msg);
		send_error(s, req, req_id, 404, "unknown_analysis_type", msg, head);
		return false;
	}
	bool refresh = wants_refresh(req, q);
	if (refresh && !refresh_allowed(s, req, req_id, head))
		return false;
	struct http_call *c = call_new(s, req, req_id, path);
	c->sse = wants_sse(req, q);
	const char *ev = evhttp_find_header(q, "errors");
	c->error_events = c->sse && ev && strcmp(ev, "event") == 0;
	int flags = refresh ? ANALYSIS_REFRESH : 0;
	analysis_wait *w = analysis_get(s->d.analysis, id, type, flags, on_analysis_reply,
	                                c->sse ? on_analysis_delta : NULL, c);
	if (!w)
		return true;       /* on_analysis_reply has already run and freed c */
	c->wait = w;
	call_watch(c);     /* still waiting: notice if the client leaves */
	if (!c->sse)
		return true;
	/* Streaming: the 200 and meta wait for the first content. A joiner
	 * of a generation that has already written text starts at once,
	 * with that text, then live deltas. */
	snprintf(c->meta_cache, sizeof c->meta_cache, "%s", analysis_wait_status(w));
	const char *version = analysis_wait_version(w);
	snprintf(c->meta_version, sizeof c->meta_version, "%s", version ? version : "");
	c->contact_id = id;
	snprintf(c->type, sizeof c->type, "%s", type);
	size_t len;
	const char *text = analysis_wait_text(w, &len);
	if (len)
		on_analysis_delta(c, text, len);
	return true;
}

static void
handle_drop(http_server *s, struct evhttp_request *req, const char *req_id, const char *id_str,
            const char *type)
{
	int64_t id;
	if (!util_parse_i64(id_str, &id) || id <= 0) {
		send_error(s, req, req_id, 400, "invalid_contact_id",
		           "the contact id must be a positive integer", false);
		return;
	}
	/* Checked like a GET's: the name also goes to the other instances
	 * in a space-separated message, where "x y" or "*" would mean
	 * another type, or every type. A well-formed name that is not
	 * loaded (a type since removed) still drops what is cached. */
	if (type && !util_type_name_ok(type)) {
		send_error(s, req, req_id, 400, "invalid_type",
		           "the type must be an analysis type name: a-z, 0-9 and _, at most 64", false);
		return;
	}
	int n = analysis_drop(s->d.analysis, id, type);
	char body[128];
	int len = snprintf(body, sizeof body, "{\"contact_id\":%lld,\"dropped\":%d}", (long long)id, n);
	send_json(s, req, req_id, 200, body, (size_t)len, false);
}

/* ---- other endpoints ---------------------------------------------------- */

static void
handle_types(http_server *s, struct evhttp_request *req, const char *req_id, bool head)
{
	json_t *list = script_registry_describe(s->d.scripts);
	/* The votes per type and script version, from feedback.c's copy in
	 * memory: this never waits on the state database. */
	feedback_annotate_types(s->d.feedback, list);
	json_t *doc = json_pack("{s:o}", "types", list);
	if (s->d.feedback)
		json_object_set_new(doc, "feedback", feedback_counts_status(s->d.feedback));
	char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(doc);
	send_json(s, req, req_id, 200, text, strlen(text), head);
	free(text);
}

static int
loaded_scripts(http_server *s, int *errors)
{
	int n = script_registry_count(s->d.scripts), loaded = 0;
	*errors = 0;
	for (int i = 0; i < n; i++) {
		const char *name, *error;
		script *cur;
		script_registry_entry(s->d.scripts, i, &name, &cur, &error);
		loaded += cur != NULL;
		*errors += error != NULL;
	}
	return loaded;
}

static void
handle_ready(http_server *s, struct evhttp_request *req, const char *req_id, bool head)
{
	int errors;
	int loaded = loaded_scripts(s, &errors);
	bool db_up = db_pool_is_up(s->d.db);
	bool ready = db_up && loaded > 0;
	/* rapport's own state only carries warm jobs and feedback, neither on
	 * an analysis's path: its status is shown, and a state database that
	 * is down (or still connecting) never makes the server unready. */
	const char *state_err = "";
	const char *state = state_status(s->d.state, &state_err);
	/* Redis down is degraded, not unready: requests go on from L1 and
	 * the model. */
	const l2 *l2 = analysis_l2(s->d.analysis);
	bool degraded = l2 && !l2_up(l2);
	json_t *doc = json_pack("{s:s, s:s}",
	                        "status", !ready ? "not_ready" : degraded ? "degraded" : "ready",
	                        "database", db_up ? "up" : "down");
	/* Down: why, as a class (one of db_error_class's fixed words). */
	if (!db_up)
		json_object_set_new(doc, "database_cause",
		                    json_string(db_pool_down_cause(s->d.db, NULL)));
	json_object_set_new(doc, "scripts_loaded", json_integer(loaded));
	json_object_set_new(doc, "script_errors", json_integer(errors));
	json_object_set_new(doc, "state", json_string(state));
	if (*state_err)
		json_object_set_new(doc, "state_error", json_string(state_err));
	if (l2)
		json_object_set_new(doc, "l2", json_string(l2_state_name(l2)));
	char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(doc);
	send_json(s, req, req_id, ready ? 200 : 503, text, strlen(text), head);
	free(text);
}

/* The numbers of /metrics: this server's counters and the parts it was
 * built with, gathered by metrics.c. */
void
http_server_metrics(http_server *s, metrics *m)
{
	struct http_conn_stats hc;
	http_conn_stats(s->conns, &hc);
	struct metrics_http h = { .requests = s->requests, .conns = &hc };
	memcpy(h.responses_by_class, s->responses_by_class, sizeof h.responses_by_class);
	struct metrics_sources src = {
		.http = &h, .cache = s->d.cache, .db = s->d.db, .llm = s->d.llm,
		.limiter = s->d.limiter, .breaker = s->d.breaker, .acct = s->d.acct,
		.analysis = s->d.analysis,
	};
	metrics_gather(m, &src);
	jobs_metrics(s->d.jobs, m);
	feedback_metrics(s->d.feedback, m);
}

static void
handle_metrics(http_server *s, struct evhttp_request *req, const char *req_id)
{
	struct evbuffer *b = evbuffer_new();
	metrics *m = metrics_new();
	http_server_metrics(s, m);
	metrics_prometheus(m, b);
	metrics_free(m);
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	evhttp_add_header(h, "X-Request-Id", req_id);
	s->responses_by_class[2]++;
	s->last_status = 200;
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

/* ---- routing ------------------------------------------------------------- */

static void
method_not_allowed(http_server *s, struct evhttp_request *req, const char *req_id,
                   const char *allow)
{
	evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
	if (evhttp_request_get_command(req) == EVHTTP_REQ_OPTIONS) {
		send_json(s, req, req_id, 204, NULL, 0, false);
		return;
	}
	char msg[96];
	snprintf(msg, sizeof msg, "method not allowed here; allowed: %s", allow);
	send_error(s, req, req_id, 405, "method_not_allowed", msg, false);
}

static void
unauthorized(http_server *s, struct evhttp_request *req, const char *req_id, bool head)
{
	evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
	                  "Bearer realm=\"rapport\"");
	send_error(s, req, req_id, 401, "unauthorized",
	           "missing or wrong API key (Authorization: Bearer <key>)", head);
}

static bool
seg_is(const struct http_path *p, int i, const char *name)
{
	return i < p->n && strcmp(p->seg[i], name) == 0;
}

/* A browser's EventSource cannot send Authorization: an analysis stream may
 * instead carry ?token= from POST /v1/stream-tokens, made for this contact
 * and type. 0: no token here (or not a stream); 1: valid; -1: refused, with
 * *why. */
static int
stream_token_check(http_server *s, struct evhttp_request *req, const struct http_path *p,
                   struct evkeyvalq *q, const char **why)
{
	const char *token = evhttp_find_header(q, "token");
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	if (!token || p->n != 5 || strcmp(p->seg[1], "contacts") != 0 ||
	    strcmp(p->seg[3], "analyses") != 0 || (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) ||
	    !wants_sse(req, q))
		return 0;
	int64_t id;
	if (!util_parse_i64(p->seg[2], &id) || id <= 0 || !util_type_name_ok(p->seg[4]))
		return 0;
	enum http_token_verdict v = http_tokens_verify(s->tokens, token, id, p->seg[4],
	                                               util_wall_ms() / 1000);
	*why = http_token_verdict_message(v);
	return v == HTTP_TOKEN_OK ? 1 : -1;
}

static void
route(struct evhttp_request *req, void *arg)
{
	http_server *s = arg;
	char req_id[24];
	double t_start = util_now_ms();
	s->requests++;
	new_request_id(s, req, req_id, sizeof req_id);
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	bool get = m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD;
	bool head = m == EVHTTP_REQ_HEAD;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *raw_path = uri ? evhttp_uri_get_path(uri) : NULL;
	/* Logged as sent (still encoded): one spelling per request, and no
	 * decoded byte can change what the line says. */
	const char *path = raw_path && *raw_path ? raw_path : "-";
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	/* CORS headers go on every answer to an allowed origin, errors and
	 * streams included, or the browser hides them from the page. */
	http_cors_apply(s->cors, req);

	/* Our own, JSON, limit on the body (evhttp's hard cap sits above it);
	 * the body is already read, and the connection ends with this. */
	size_t body_len = evbuffer_get_length(evhttp_request_get_input_buffer(req));
	if (body_len > s->d.cfg->max_body_bytes) {
		char msg[96];
		snprintf(msg, sizeof msg, "request body larger than %zu bytes", s->d.cfg->max_body_bytes);
		evhttp_add_header(out, "Connection", "close");
		send_error(s, req, req_id, 413, "payload_too_large", msg, head);
		log_simple(s, req_id, method_name(m), path, 413, t_start);
		return;
	}
	/* Then framing: nothing else may read a request whose headers or
	 * body length are in doubt. */
	struct http_guard_verdict v;
	http_guard_check(req, &v);
	if (v.status) {
		if (v.close)
			evhttp_add_header(out, "Connection", "close");
		if (v.status == 405)
			evhttp_add_header(out, "Allow", "GET, HEAD, DELETE, OPTIONS");
		send_error(s, req, req_id, v.status, v.code, v.message, head);
		log_simple(s, req_id, method_name(m), path, v.status, t_start);
		return;
	}

	struct http_path segs;
	int split = http_path_split(raw_path, &segs);
	if (split == HTTP_PATH_BAD) {
		send_error(s, req, req_id, 400, "bad_request",
		           "malformed request path (a control character, a space or a bad "
		           "escape in it)", head);
		log_simple(s, req_id, method_name(m), path, 400, t_start);
		return;
	}
	struct evkeyvalq query;
	TAILQ_INIT(&query);
	const char *qs = uri ? evhttp_uri_get_query(uri) : NULL;
	int status_logged = 0;
	if (qs && evhttp_parse_query_str(qs, &query) != 0) {
		send_error(s, req, req_id, 400, "bad_request", "malformed query string", head);
		goto logged;
	}

	if (s->draining) {
		/* Shutting down: no new work, and no keep-alive to come back on. */
		evhttp_add_header(out, "Connection", "close");
		send_error(s, req, req_id, 503, "shutting_down", "the server is shutting down", head);
		goto done;
	}

	int n = split == HTTP_PATH_TOO_DEEP ? -1 : segs.n;
	char **seg = segs.seg;
	if (http_cors_preflight(s->cors, req)) {
		/* Before auth: a preflight never carries the key. */
		send_json(s, req, req_id, 204, NULL, 0, false);
		goto logged;
	}
	if (n == 1 && seg_is(&segs, 0, "healthz")) {
		if (!get)
			method_not_allowed(s, req, req_id, "GET, HEAD");
		else
			send_json(s, req, req_id, 200, "{\"status\":\"ok\"}", 15, head);
		goto logged;
	}
	if (n == 1 && seg_is(&segs, 0, "readyz")) {
		if (!get)
			method_not_allowed(s, req, req_id, "GET, HEAD");
		else
			handle_ready(s, req, req_id, head);
		goto logged;
	}
	if (n == 1 && seg_is(&segs, 0, "metrics")) {
		/* The counters tell an outsider what traffic and spend look
		 * like: behind the API keys unless the operator says public. */
		if (!get)
			method_not_allowed(s, req, req_id, "GET, HEAD");
		else if (!s->d.cfg->metrics_public && !authorized(s, req))
			unauthorized(s, req, req_id, head);
		else
			handle_metrics(s, req, req_id);
		goto logged;
	}

	bool v1 = n >= 2 && strcmp(seg[0], "v1") == 0;
	const char *token_why = NULL;
	int token = v1 && s->d.cfg->n_api_keys ?
	            stream_token_check(s, req, &segs, &query, &token_why) : 0;
	if (token < 0) {
		send_error(s, req, req_id, 401, "invalid_stream_token", token_why, head);
	} else if (v1 && token == 0 && !authorized(s, req)) {
		unauthorized(s, req, req_id, head);
	} else if (v1 && http_jobs_route(s, &s->d, req, req_id, path, n, seg)) {
		status_logged = 1;    /* logged by its answer */
	} else if (v1 && n == 2 && strcmp(seg[1], "contacts") == 0) {
		if (!get)
			method_not_allowed(s, req, req_id, "GET, HEAD");
		else
			status_logged = http_contacts_search(s->contacts, req, req_id, method_name(m),
			                                     path, &query, head, t_start);
	} else if (v1 && n == 2 && strcmp(seg[1], "stream-tokens") == 0) {
		if (m != EVHTTP_REQ_POST)
			method_not_allowed(s, req, req_id, "POST");
		else
			http_tokens_handle_issue(s->tokens, s, req, req_id);
	} else if (v1 && n == 2 && strcmp(seg[1], "analysis-types") == 0) {
		if (!get)
			method_not_allowed(s, req, req_id, "GET, HEAD");
		else
			handle_types(s, req, req_id, head);
	} else if (v1 && n == 5 && strcmp(seg[1], "contacts") == 0 && strcmp(seg[3], "analyses") == 0) {
		if (get) {
			/* A call logs its line when its answer is sent. */
			status_logged = handle_analysis(s, req, req_id, path, seg[2], seg[4], &query);
		} else if (m == EVHTTP_REQ_DELETE) {
			handle_drop(s, req, req_id, seg[2], seg[4]);
		} else {
			method_not_allowed(s, req, req_id, "GET, HEAD, DELETE");
		}
	} else if (v1 && n == 6 && strcmp(seg[1], "contacts") == 0 && strcmp(seg[3], "analyses") == 0 &&
	           strcmp(seg[5], "feedback") == 0) {
		http_feedback_route(s, &s->d, req, req_id, path, seg[2], seg[4]);
		status_logged = 1;    /* logged by its answer */
	} else if (v1 && n == 4 && strcmp(seg[1], "contacts") == 0 && strcmp(seg[3], "analyses") == 0) {
		if (m == EVHTTP_REQ_DELETE)
			handle_drop(s, req, req_id, seg[2], NULL);
		else
			method_not_allowed(s, req, req_id, "DELETE");
	} else {
		/* Not an API path: a file of the panel, when there is one. */
		int st = !v1 && get && split == HTTP_PATH_OK ?
		         http_static_serve(s->web, req, &segs, req_id, head) : 0;
		if (st) {
			s->responses_by_class[st / 100]++;
			s->last_status = st;
		} else {
			send_error(s, req, req_id, 404, "not_found", "no such endpoint", head);
		}
	}
	if (status_logged)
		goto done;
logged:
	log_simple(s, req_id, method_name(m), path, s->last_status, t_start);
done:
	evhttp_clear_headers(&query);
	http_path_clear(&segs);
}

/* ---- deferred calls (http_jobs.c) ---------------------------------------- */

http_call *
http_call_defer(http_server *s, struct evhttp_request *req, const char *req_id, const char *path,
                http_call_gone_cb *gone, void *arg)
{
	struct http_call *c = call_new(s, req, req_id, path);
	c->gone = gone;
	c->gone_arg = arg;
	call_watch(c);
	return c;
}

void
http_call_reply(http_call *c, int status, const char *body, size_t len,
                const char *const *headers)
{
	http_server *s = c->srv;
	struct evhttp_request *req = c->req;
	char id[24], method[8];
	snprintf(id, sizeof id, "%s", c->req_id);
	snprintf(method, sizeof method, "%s", c->method);
	char *path = c->path;
	c->path = NULL;
	double t_start = c->t_start;
	bool head = c->head;
	c->gone = NULL;
	call_free(c);
	for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2)
		evhttp_add_header(evhttp_request_get_output_headers(req), headers[i], headers[i + 1]);
	send_json(s, req, id, status, body, len, head);
	log_simple(s, id, method, path, status, t_start);
	free(path);
}

void
http_call_error(http_call *c, int status, const char *code, const char *message,
                const char *const *headers)
{
	json_t *doc = json_pack("{s:{s:s, s:s}, s:s}", "error", "code", code, "message",
	                        message ? message : reason(status), "request_id", c->req_id);
	char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(doc);
	if (!text)
		text = xstrdup("{\"error\":{\"code\":\"internal_error\",\"message\":\"cannot encode error\"}}");
	http_call_reply(c, status, text, strlen(text), headers);
	free(text);
}

/* ---- lifecycle ----------------------------------------------------------- */

http_server *
http_server_create(const struct http_deps *deps, char **err)
{
	const struct config *cfg = deps->cfg;
	struct sockaddr_storage ss;
	int sslen = sizeof ss;
	if (evutil_parse_sockaddr_port(cfg->listen, (struct sockaddr *)&ss, &sslen) != 0) {
		*err = xasprintf("RAPPORT_LISTEN: cannot parse \"%s\" (expected host:port)", cfg->listen);
		return NULL;
	}
	char *perr = NULL;
	http_cors *cors = http_cors_create(cfg->cors_origins, &perr);
	http_tokens *tokens = perr ? NULL : http_tokens_create(cfg->stream_secret,
	                                                      cfg->stream_token_ttl_s, &perr);
	if (perr) {
		http_cors_destroy(cors);
		*err = perr;
		return NULL;
	}
	http_server *s = xcalloc(1, sizeof *s);
	s->d = *deps;
	s->cors = cors;
	s->tokens = tokens;
	s->web = http_static_create(cfg->web_dir);
	s->contacts = http_contacts_create(s, deps->db, deps->scripts);
	LIST_INIT(&s->calls);
	s->id_salt = (unsigned)getpid() * 2654435761u ^ (unsigned)util_wall_ms();
	/* Our own listener: evhttp's bind hard-codes a backlog of 128. */
	s->listener = evconnlistener_new_bind(deps->base, NULL, NULL,
	                                      LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE |
	                                      LEV_OPT_CLOSE_ON_EXEC,
	                                      1024, (struct sockaddr *)&ss, sslen);
	if (!s->listener) {
		*err = xasprintf("cannot listen on %s: %s", cfg->listen,
		                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		http_contacts_destroy(s->contacts);
		http_static_destroy(s->web);
		http_tokens_destroy(s->tokens);
		http_cors_destroy(s->cors);
		free(s);
		return NULL;
	}
	s->http = evhttp_new(deps->base);
	/* Every method evhttp knows reaches route(), so TRACE and CONNECT
	 * get a 405 with the path's Allow rather than evhttp's 501. */
	evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
	                                    EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	                                    EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH |
	                                    EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
	evhttp_set_default_content_type(s->http, "application/json; charset=utf-8");
	evhttp_set_max_headers_size(s->http, (ev_ssize_t)cfg->max_header_bytes);
	/* evhttp's cap answers 413 and closes (through http_guard.c's
	 * evhttp_send_error); keep it well above ours so ordinary oversized
	 * bodies get route()'s answer on a connection that stays usable, while
	 * a huge one still cannot make us buffer without bound. */
	size_t hard = cfg->max_body_bytes * 16;
	evhttp_set_max_body_size(s->http, (ev_ssize_t)(hard < (1u << 20) ? (1u << 20) : hard));
	evhttp_set_timeout(s->http, cfg->http_timeout_s);
	evhttp_set_gencb(s->http, route, s);
	evhttp_bind_listener(s->http, s->listener);
	/* After the bind: it takes the listener's error callback (accept
	 * failures pause accepting) and evhttp's bufferevent callback. */
	s->conns = http_conn_create(deps->base, cfg, s->http, s->listener);
	return s;
}

/* Ends one waiting request with an error: a JSON reply, or, when its
 * stream has begun, an error event and the end of the stream. */
static void
call_abort(struct http_call *c, int status, const char *code, const char *message)
{
	http_server *s = c->srv;
	if (c->wait)
		analysis_wait_cancel(c->wait);
	c->wait = NULL;
	if (c->gone)
		c->gone(c->gone_arg);
	c->gone = NULL;
	if (c->streaming && c->req) {
		struct analysis_reply r = {
			.status = status, .error_code = code, .error_message = message,
			.cache_status = "miss", .prompt_tokens = -1, .completion_tokens = -1,
		};
		sse_finish(c, &r);
		return;
	}
	struct evhttp_request *req = c->req;
	char id[24];
	copy_str(id, sizeof id, c->req_id);
	call_free(c);
	if (req) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
		send_error(s, req, id, status, code, message, false);
	}
}

void
http_server_drain(http_server *s)
{
	if (s->draining)
		return;
	s->draining = true;
	http_conn_drain(s->conns);
	evconnlistener_disable(s->listener);
	struct http_call *c;
	while ((c = LIST_FIRST(&s->calls)))
		call_abort(c, 503, "shutting_down", "the server is shutting down");
	http_contacts_abort_all(s->contacts);
}

void
http_server_destroy(http_server *s)
{
	if (!s)
		return;
	/* Answer the waiting requests first: evhttp_free would otherwise free
	 * them under our feet. */
	struct http_call *c;
	while ((c = LIST_FIRST(&s->calls)))
		call_abort(c, 503, "shutting_down", "the server is shutting down");
	http_contacts_destroy(s->contacts);
	evhttp_free(s->http);     /* also frees the bound listener */
	ratelimit_destroy(s->refresh);
	http_conn_destroy(s->conns);
	http_static_destroy(s->web);
	http_tokens_destroy(s->tokens);
	http_cors_destroy(s->cors);
	free(s);
}

/* ---- for the route modules beside this one (http_int.h) ------------------ */

void
http_api_send_json(http_server *s, struct evhttp_request *req, const char *req_id, int status,
                   const char *body, size_t len, bool head)
{
	send_json(s, req, req_id, status, body, len, head);
}

void
http_api_send_error(http_server *s, struct evhttp_request *req, const char *req_id, int status,
                    const char *code, const char *message, bool head)
{
	send_error(s, req, req_id, status, code, message, head);
}

void
http_api_log_request(http_server *s, const char *req_id, const char *method, const char *path,
                     int status, double t_start)
{
	log_simple(s, req_id, method, path, status, t_start);
}
