/*
 * http_conn — the client connections of the HTTP server: how many there
 * are, how many may be, how long one may sit idle or take to send its
 * request, and what happens when the process runs out of descriptors.
 *
 * evhttp (libevent 2.1) has no connection limit and no per-connection
 * hooks, so this subsystem hooks in at the two places it offers:
 *   - evhttp_set_bevcb: each accepted connection's bufferevent is made here.
 *     Right after the accept callback returns, the connection is "adopted":
 *     the evhttp_connection is read back from the bufferevent's callback
 *     argument, an entry (struct conn, indexed by descriptor) is made, and
 *     the connection's close callback is taken so the count drops exactly
 *     when evhttp frees it. http_api's own close callbacks are chained
 *     through http_conn_set_closecb() instead of evhttp's setter.
 *   - the listener's error callback: accept(2) failing (EMFILE, ENFILE, …)
 *     pauses accepting; a timer resumes it (nginx's accept pause), so a full
 *     descriptor table never spins the loop or floods the log.
 * Beyond RAPPORT_MAX_CONNECTIONS a new connection gets a canned 503 JSON
 * reply written on it at once, its write side shut, and what the client
 * sends read and dropped until it closes (or 2 s): no request is parsed
 * for it and it holds its descriptor only briefly.
 * A one-second sweep closes connections idle between requests for longer
 * than RAPPORT_KEEPALIVE_TIMEOUT and connections still sending a request
 * RAPPORT_HEADER_TIMEOUT after it began (after accept for the first one),
 * however slowly its bytes trickle in. A connection whose request is being
 * answered, a stream included, is never cut by the sweep.
 */
#ifndef RAPPORT_HTTP_CONN_H
#define RAPPORT_HTTP_CONN_H

#include "config.h"

struct event_base;
struct evhttp;
struct evhttp_connection;
struct evconnlistener;
typedef struct http_conns http_conns;

struct http_conn_stats {
	int max;                 /* the cap in force */
	int open;                /* admitted connections now */
	int refusing;            /* over the cap, being answered 503 now */
	long long accepted;      /* admitted since start */
	long long refused;       /* answered 503 for the cap since start */
	long long closed_idle;   /* cut by the keep-alive timeout */
	long long closed_slow;   /* cut by the header timeout */
	long long accept_pauses; /* accept(2) failures that paused accepting */
	bool paused;             /* accepting is paused right now */
};

/* Hooks into http (bevcb) and listener (error callback). The listener and
 * http stay the caller's; destroy after evhttp_free(http). */
http_conns *http_conn_create(struct event_base *base, const struct config *cfg,
                             struct evhttp *http, struct evconnlistener *listener);
/* Shutting down: accepting is never resumed again. */
void http_conn_drain(http_conns *m);
void http_conn_destroy(http_conns *m);

/* evhttp_connection_set_closecb for a connection whose close callback this
 * subsystem holds: cb(evcon, arg) is called when it closes; NULL clears. */
void http_conn_set_closecb(http_conns *m, struct evhttp_connection *evcon,
                           void (*cb)(struct evhttp_connection *, void *), void *arg);

void http_conn_stats(const http_conns *m, struct http_conn_stats *out);

#endif
