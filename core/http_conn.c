/*
 * http_conn — connection count, cap, idle/slow-request timers and the
 * accept pause (see http_conn.h for the hooks into evhttp).
 *
 * Life of one connection:
 *   accept → bevcb (we make the bufferevent, keep a reference, queue it)
 *   → adopt (same loop turn: entry made, close callback taken; over the
 *     cap → refused: 503 written, write side shut, input dropped)
 *   → sweeps (phase REQUEST / IDLE / BUSY decided from what evhttp is
 *     doing with the bufferevent and from bytes seen in and out)
 *   → evhttp frees it (or we do, from a sweep) → on_close: entry gone.
 * The sweep reads evhttp's state instead of being told: a connection is
 * "reading" when its bufferevent reads with evhttp's read callback set; it
 * is busy when evhttp stopped reading (a request being answered) or is
 * writing a reply (evhttp clears the read callback while it writes, for a
 * stream too). Bytes are seen through evbuffer callbacks, which cost one
 * call per read or write, no copy.
 */
#include "http_conn.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <jansson.h>

#define SWEEP_MS        1000   /* timer resolution of the two timeouts */
#define ACCEPT_PAUSE_MS 500    /* nginx waits 500 ms (accept_mutex_delay) */
#define PAUSE_LOG_MS    10000  /* a long pause logs again at most this often */
#define REFUSE_LINGER_MS 2000  /* a refused client gets this long to read the 503 */
#define AUTO_MAX_CONNS  10000
#define MIN_AUTO_CONNS  16

enum phase {
	PH_REQUEST,   /* the client is sending a request (or has not begun one on a new connection) */
	PH_IDLE,      /* between requests on a keep-alive connection */
	PH_BUSY,      /* evhttp is answering a request or writing a reply */
	PH_REFUSED,   /* over the cap: the 503 is going out, input dropped */
};

struct conn {
	http_conns *m;
	struct bufferevent *bev;
	struct evhttp_connection *evcon;
	evutil_socket_t fd;
	struct evbuffer_cb_entry *in_cb, *out_cb;
	unsigned rx, tx;              /* bumped on each read / write */
	unsigned seen_rx, seen_tx;    /* as the last sweep saw them */
	enum phase phase;
	double since;                 /* start of the phase, ms (monotonic) */
	bool fin_sent;                /* refused: write side shut */
	void (*user_cb)(struct evhttp_connection *, void *);
	void *user_arg;
	TAILQ_ENTRY(conn) link;
};

struct http_conns {
	struct event_base *base;
	struct evconnlistener *listener;
	int max;
	int64_t keepalive_ms, header_ms;
	TAILQ_HEAD(, conn) conns;
	struct conn **by_fd;          /* descriptor → entry, for http_conn_set_closecb */
	size_t n_by_fd;
	struct bufferevent **pending; /* made by bevcb, not adopted yet */
	size_t n_pending, cap_pending;
	struct event *adopt_ev, *sweep_ev, *resume_ev;
	char *reply;                  /* the canned 503 */
	size_t reply_len;
	int open, refusing;
	long long accepted, refused, closed_idle, closed_slow, accept_pauses;
	long long sweep_refused, sweep_idle, sweep_slow;   /* since the last summary line */
	bool paused, draining;
	bool pause_episode;           /* paused at least once since the last good accept */
	double episode_start, pause_logged;
	long long episode_pauses;
	TAILQ_ENTRY(http_conns) link;
};

/* The listener's error callback gets the accept callback's argument, which
 * evhttp owns (its struct evhttp); the subsystem finds itself by listener. */
static TAILQ_HEAD(, http_conns) instances = TAILQ_HEAD_INITIALIZER(instances);

static http_conns *
find_by_listener(struct evconnlistener *l)
{
	http_conns *m;
	TAILQ_FOREACH(m, &instances, link)
		if (m->listener == l)
			return m;
	return NULL;
}

/* ---- entries ------------------------------------------------------------- */

static struct conn *
lookup_fd(http_conns *m, evutil_socket_t fd)
{
	return fd >= 0 && (size_t)fd < m->n_by_fd ? m->by_fd[fd] : NULL;
}

static void
on_input(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	struct conn *c = arg;
	if (info->n_added)
		c->rx++;
}

static void
on_output(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	struct conn *c = arg;
	if (info->n_deleted)
		c->tx++;
}

/* Drops the entry; the connection itself is evhttp's to free. */
static void
conn_forget(struct conn *c)
{
	http_conns *m = c->m;
	if (c->in_cb)
		evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->in_cb);
	if (c->out_cb)
		evbuffer_remove_cb_entry(bufferevent_get_output(c->bev), c->out_cb);
	if (lookup_fd(m, c->fd) == c)
		m->by_fd[c->fd] = NULL;
	TAILQ_REMOVE(&m->conns, c, link);
	if (c->phase == PH_REFUSED)
		m->refusing--;
	else
		m->open--;
	free(c);
}

/* evhttp's close callback, called once when the connection goes down
 * (freed, or its socket closed on a reset). */
static void
on_close(struct evhttp_connection *evcon, void *arg)
{
	struct conn *c = arg;
	void (*cb)(struct evhttp_connection *, void *) = c->user_cb;
	void *cb_arg = c->user_arg;
	c->user_cb = NULL;
	if (cb)
		cb(evcon, cb_arg);
	conn_forget(c);
}

void
http_conn_set_closecb(http_conns *m, struct evhttp_connection *evcon,
                      void (*cb)(struct evhttp_connection *, void *), void *arg)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
	struct conn *c = m && bev ? lookup_fd(m, bufferevent_getfd(bev)) : NULL;
	if (c && c->evcon == evcon) {
		c->user_cb = cb;
		c->user_arg = arg;
		return;
	}
	/* Not one of ours (its bufferevent could not be made, or it is
	 * already closing): nothing of ours to chain. */
	evhttp_connection_set_closecb(evcon, cb, arg);
}

/* ---- over the cap --------------------------------------------------------- */

static void
refuse_read(struct bufferevent *bev, void *arg)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	evbuffer_drain(in, evbuffer_get_length(in));
}

static void
refuse_write(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	if (!c->fin_sent && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		/* The reply is out: FIN, then keep reading so that closing does
		 * not reset a request still in flight (which could destroy the
		 * 503 before the client reads it). */
		shutdown(c->fd, SHUT_WR);
		c->fin_sent = true;
		bufferevent_disable(bev, EV_WRITE);
	}
}

static void
refuse_event(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	evhttp_connection_free(c->evcon);    /* → on_close → entry gone */
}

/* evhttp has read nothing yet and runs nothing on this connection until it
 * is freed, so its bufferevent can be taken over for the canned reply. */
static void
conn_refuse(struct conn *c)
{
	http_conns *m = c->m;
	c->phase = PH_REFUSED;
	c->since = util_now_ms();
	m->refusing++;
	m->refused++;
	m->sweep_refused++;
	bufferevent_set_timeouts(c->bev, NULL, NULL);
	bufferevent_setcb(c->bev, refuse_read, refuse_write, refuse_event, c);
	evbuffer_add(bufferevent_get_output(c->bev), m->reply, m->reply_len);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* ---- accept ---------------------------------------------------------------- */

static struct bufferevent *
make_bev(struct event_base *base, void *arg)
{
	http_conns *m = arg;
	/* Options 0, as evhttp's own: evhttp closes the socket itself. */
	struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
	if (!bev)
		return NULL;      /* evhttp makes one; that connection goes uncounted */
	/* Our reference keeps the pointer valid until adopt, even if evhttp
	 * drops the connection at once. */
	bufferevent_incref(bev);
	if (m->n_pending == m->cap_pending) {
		m->cap_pending = m->cap_pending ? m->cap_pending * 2 : 16;
		m->pending = xrealloc(m->pending, m->cap_pending * sizeof *m->pending);
	}
	m->pending[m->n_pending++] = bev;
	event_active(m->adopt_ev, EV_TIMEOUT, 0);
	return bev;
}

static void
end_pause_episode(http_conns *m)
{
	if (!m->pause_episode)
		return;
	m->pause_episode = false;
	log_event(LOG_INFO, "accept resumed", LOG_N("paused_ms", util_now_ms() - m->episode_start),
	          LOG_I("pauses", m->episode_pauses), LOG_I("connections", m->open), LOG_END);
}

static void
adopt_one(http_conns *m, struct bufferevent *bev)
{
	bufferevent_data_cb rcb, wcb;
	bufferevent_event_cb ecb;
	void *arg = NULL;
	bufferevent_getcb(bev, &rcb, &wcb, &ecb, &arg);
	evutil_socket_t fd = bufferevent_getfd(bev);
	if (!ecb || !arg || fd < 0)
		return;           /* evhttp already dropped it */
	if ((size_t)fd >= m->n_by_fd) {
		size_t n = m->n_by_fd ? m->n_by_fd : 256;
		while (n <= (size_t)fd)
			n *= 2;
		m->by_fd = xrealloc(m->by_fd, n * sizeof *m->by_fd);
		memset(m->by_fd + m->n_by_fd, 0, (n - m->n_by_fd) * sizeof *m->by_fd);
		m->n_by_fd = n;
	}
	struct conn *c = xcalloc(1, sizeof *c);
	c->m = m;
	c->bev = bev;
	c->evcon = arg;       /* evhttp's callback argument is its connection */
	c->fd = fd;
	c->phase = PH_REQUEST;
	c->since = util_now_ms();
	m->by_fd[fd] = c;
	TAILQ_INSERT_TAIL(&m->conns, c, link);
	evhttp_connection_set_closecb(c->evcon, on_close, c);
	c->in_cb = evbuffer_add_cb(bufferevent_get_input(bev), on_input, c);
	c->out_cb = evbuffer_add_cb(bufferevent_get_output(bev), on_output, c);
	end_pause_episode(m);
	if (m->max > 0 && m->open >= m->max) {
		conn_refuse(c);
		return;
	}
	m->open++;
	m->accepted++;
}

static void
on_adopt(evutil_socket_t fd, short what, void *arg)
{
	http_conns *m = arg;
	for (size_t i = 0; i < m->n_pending; i++) {
		adopt_one(m, m->pending[i]);
		bufferevent_decref(m->pending[i]);
	}
	m->n_pending = 0;
}

static void
on_resume(evutil_socket_t fd, short what, void *arg)
{
	http_conns *m = arg;
	m->paused = false;
	if (!m->draining)
		evconnlistener_enable(m->listener);
}

/* accept(2) failed with an error libevent does not retry by itself
 * (EMFILE, ENFILE, ENOBUFS, ENOMEM…): the pending connection stays in the
 * backlog and the listener would be ready again at once, so stop listening
 * for a moment instead of spinning, and log once per episode. */
static void
on_accept_error(struct evconnlistener *l, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();
	http_conns *m = find_by_listener(l);
	if (!m) {
		log_event(LOG_ERROR, "accept failed", LOG_S("error", evutil_socket_error_to_string(err)),
		          LOG_END);
		return;
	}
	evconnlistener_disable(l);
	m->paused = true;
	m->accept_pauses++;
	double now = util_now_ms();
	if (!m->pause_episode) {
		m->pause_episode = true;
		m->episode_start = m->pause_logged = now;
		m->episode_pauses = 1;
		log_event(LOG_WARN, "accept paused", LOG_S("error", evutil_socket_error_to_string(err)),
		          LOG_I("connections", m->open), LOG_I("retry_ms", ACCEPT_PAUSE_MS), LOG_END);
	} else {
		m->episode_pauses++;
		if (now - m->pause_logged >= PAUSE_LOG_MS) {
			m->pause_logged = now;
			log_event(LOG_WARN, "accept still paused",
			          LOG_S("error", evutil_socket_error_to_string(err)),
			          LOG_N("paused_ms", now - m->episode_start),
			          LOG_I("pauses", m->episode_pauses), LOG_I("connections", m->open), LOG_END);
		}
	}
	struct timeval tv = { 0, ACCEPT_PAUSE_MS * 1000 };
	evtimer_add(m->resume_ev, &tv);
}

/* ---- the sweep -------------------------------------------------------------- */

static bool
evhttp_reading(struct bufferevent *bev)
{
	bufferevent_data_cb rcb, wcb;
	bufferevent_event_cb ecb;
	void *arg;
	bufferevent_getcb(bev, &rcb, &wcb, &ecb, &arg);
	return rcb && (bufferevent_get_enabled(bev) & EV_READ);
}

/* true: the connection was closed (c is gone) */
static bool
sweep_one(http_conns *m, struct conn *c, double now)
{
	if (c->phase == PH_REFUSED) {
		if (now - c->since < REFUSE_LINGER_MS)
			return false;
		evhttp_connection_free(c->evcon);
		return true;
	}
	if (c->tx != c->seen_tx) {
		/* Reply bytes went out: whatever comes next is a new request. */
		c->seen_tx = c->tx;
		c->seen_rx = c->rx;
		c->phase = PH_IDLE;
		c->since = now;
	}
	if (!evhttp_reading(c->bev)) {
		c->phase = PH_BUSY;
		return false;
	}
	if (c->phase == PH_BUSY) {
		c->phase = PH_IDLE;
		c->since = now;
		c->seen_rx = c->rx;
	}
	if (c->phase == PH_IDLE && c->rx != c->seen_rx) {
		c->phase = PH_REQUEST;    /* the next request has begun */
		c->since = now;
	}
	int64_t limit = c->phase == PH_IDLE ? m->keepalive_ms : m->header_ms;
	if (limit <= 0 || now - c->since < limit)
		return false;
	if (c->phase == PH_IDLE) {
		m->closed_idle++;
		m->sweep_idle++;
	} else {
		m->closed_slow++;
		m->sweep_slow++;
	}
	/* Safe here, unlike on a connection whose request the API holds
	 * (libevent#997): the entry exists, so evhttp has not freed the
	 * connection, and while evhttp reads, the only request on it is one
	 * it has not handed out; its own read timeout frees it the same way. */
	evhttp_connection_free(c->evcon);
	return true;
}

static void
on_sweep(evutil_socket_t fd, short what, void *arg)
{
	http_conns *m = arg;
	double now = util_now_ms();
	struct conn *c = TAILQ_FIRST(&m->conns);
	while (c) {
		struct conn *next = TAILQ_NEXT(c, link);
		sweep_one(m, c, now);
		c = next;
	}
	/* One line per sweep at most, however many were closed. */
	if (m->sweep_refused || m->sweep_idle || m->sweep_slow) {
		log_event(LOG_INFO, "connections closed", LOG_I("refused_over_cap", m->sweep_refused),
		          LOG_I("idle_keepalive", m->sweep_idle), LOG_I("slow_request", m->sweep_slow),
		          LOG_I("open", m->open), LOG_I("max", m->max), LOG_END);
		m->sweep_refused = m->sweep_idle = m->sweep_slow = 0;
	}
}

/* ---- lifecycle -------------------------------------------------------------- */

/* Descriptors the process needs besides client connections: stdio, the
 * loop, the listener, the admin socket, logs and script files (32), the
 * database pool and one upstream socket per allowed model call. */
static int
fd_reserve(const struct config *cfg)
{
	int upstream = cfg->llm_max_in_flight_ceiling > cfg->llm_max_in_flight
	        ? cfg->llm_max_in_flight_ceiling : cfg->llm_max_in_flight;
	return 32 + cfg->db_pool_size + upstream;
}

static void
build_reply(http_conns *m)
{
	json_t *doc = json_pack("{s:{s:s, s:s}}", "error", "code", "too_many_connections",
	                        "message", "the server has too many open connections; retry later");
	char *body = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(doc);
	if (!body)
		body = xstrdup("{}");
	m->reply = xasprintf("HTTP/1.1 503 Service Unavailable\r\n"
	                     "Content-Type: application/json; charset=utf-8\r\n"
	                     "Content-Length: %zu\r\n"
	                     "Retry-After: 1\r\n"
	                     "Cache-Control: no-store\r\n"
	                     "Connection: close\r\n\r\n%s", strlen(body), body);
	m->reply_len = strlen(m->reply);
	free(body);
}

http_conns *
http_conn_create(struct event_base *base, const struct config *cfg, struct evhttp *http,
                 struct evconnlistener *listener)
{
	http_conns *m = xcalloc(1, sizeof *m);
	m->base = base;
	m->listener = listener;
	/* In 64 bits: config bounds the seconds (≤ 86400), this keeps the
	 * product safe whatever the bound becomes. */
	m->keepalive_ms = (int64_t)cfg->keepalive_timeout_s * 1000;
	m->header_ms = (int64_t)cfg->header_timeout_s * 1000;
	TAILQ_INIT(&m->conns);
	build_reply(m);

	struct rlimit rl = { 0, 0 };
	long nofile = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
	              ? (long)rl.rlim_cur : -1;
	int reserve = fd_reserve(cfg);
	const char *source = "RAPPORT_MAX_CONNECTIONS";
	m->max = cfg->max_connections;
	if (m->max <= 0) {
		source = "descriptor limit";
		long n = nofile < 0 ? AUTO_MAX_CONNS : nofile - reserve;
		m->max = (int)(n > AUTO_MAX_CONNS ? AUTO_MAX_CONNS : n < MIN_AUTO_CONNS ? MIN_AUTO_CONNS : n);
	}
	log_event(LOG_INFO, "connections", LOG_I("max", m->max), LOG_S("max_from", source),
	          LOG_I("nofile", nofile), LOG_I("reserve", reserve),
	          LOG_I("keepalive_timeout_s", cfg->keepalive_timeout_s),
	          LOG_I("header_timeout_s", cfg->header_timeout_s), LOG_END);
	if (nofile >= 0 && (long)m->max + reserve > nofile)
		log_event(LOG_WARN, "connection cap above what the descriptor limit leaves",
		          LOG_I("max", m->max), LOG_I("nofile", nofile), LOG_I("reserve", reserve),
		          LOG_S("fix", "raise ulimit -n (LimitNOFILE=) or lower RAPPORT_MAX_CONNECTIONS"),
		          LOG_END);

	m->adopt_ev = event_new(base, -1, 0, on_adopt, m);
	m->resume_ev = evtimer_new(base, on_resume, m);
	m->sweep_ev = event_new(base, -1, EV_PERSIST, on_sweep, m);
	struct timeval tv = { SWEEP_MS / 1000, (SWEEP_MS % 1000) * 1000 };
	event_add(m->sweep_ev, &tv);
	TAILQ_INSERT_TAIL(&instances, m, link);
	evhttp_set_bevcb(http, make_bev, m);
	evconnlistener_set_error_cb(listener, on_accept_error);
	return m;
}

void
http_conn_drain(http_conns *m)
{
	if (!m)
		return;
	m->draining = true;
	evtimer_del(m->resume_ev);
}

void
http_conn_destroy(http_conns *m)
{
	if (!m)
		return;
	/* evhttp_free has run: every adopted connection was freed, and its
	 * close callback dropped its entry. */
	struct conn *c;
	while ((c = TAILQ_FIRST(&m->conns))) {
		TAILQ_REMOVE(&m->conns, c, link);
		free(c);
	}
	for (size_t i = 0; i < m->n_pending; i++)
		bufferevent_decref(m->pending[i]);
	TAILQ_REMOVE(&instances, m, link);
	event_free(m->adopt_ev);
	event_free(m->resume_ev);
	event_free(m->sweep_ev);
	free(m->pending);
	free(m->by_fd);
	free(m->reply);
	free(m);
}

void
http_conn_stats(const http_conns *m, struct http_conn_stats *out)
{
	memset(out, 0, sizeof *out);
	if (!m)
		return;
	out->max = m->max;
	out->open = m->open;
	out->refusing = m->refusing;
	out->accepted = m->accepted;
	out->refused = m->refused;
	out->closed_idle = m->closed_idle;
	out->closed_slow = m->closed_slow;
	out->accept_pauses = m->accept_pauses;
	out->paused = m->paused;
}
