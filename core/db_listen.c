/*
 * db_listen — LISTEN on a dedicated libpq connection, on the libevent loop.
 *
 * This unit owns one libpq connection (never a pool one), its events and
 * the copies of the conninfo and channel name. The connection is in one
 * explicit state:
 *   BACKOFF     no socket; l->timer starts the next attempt
 *   CONNECTING  PQconnectPoll loop on one-shot events (l->io); l->timer is
 *               the 2 s budget for connecting and LISTENing
 *   LISTENING   connected, `LISTEN "<channel>"` sent, its result not yet read
 *   UP          LISTEN confirmed; only notifications arrive from here on
 *   CLOSED      destroyed from inside a callback, freed when it returns
 *
 * Data flow:
 *   PQconnectStartParams ─► PQconnectPoll steps ─► PQsendQuery(LISTEN)
 *   ─► persistent EV_READ: PQconsumeInput ─► PQgetResult until NULL
 *      (LISTENING only) ─► UP, on_reset() if we may have missed something
 *   ─► PQnotifies ─► on_notify(payload) ─► PQfreemem, for as long as it lives.
 *
 * A broken connection (EOF, FATAL from a shutting-down server, write error),
 * a failed connect or LISTEN and the 2 s timeout all end the same way: the
 * connection is PQfinish()ed and a new one started after the backoff (100 ms,
 * doubling to 5 s; back to 100 ms once a LISTEN succeeds). We never PQreset:
 * LISTEN is session state, a new session starts from scratch anyway.
 *
 * Missed notifications: PostgreSQL delivers only to sessions listening at
 * the sender's COMMIT. `missed` is set whenever a connection is lost or an
 * attempt fails (the server may be accepting writes we cannot hear), and the
 * next confirmed LISTEN calls on_reset() so the owner drops what it cannot
 * trust. A first attempt that succeeds has nothing to report.
 *
 * Never blocks: no PQexec/PQconnectdb/PQreset. Same libpq caveat as db.c: a
 * host name (not an address) in the conninfo is resolved with a blocking
 * getaddrinfo inside PQconnectPoll.
 */
#include "db_listen.h"
#include "db.h"

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define LISTEN_CONNECT_TIMEOUT_MS 2000   /* connect + LISTEN; connect_timeout is ignored by PQconnectPoll */
#define LISTEN_BACKOFF_MIN_MS      100
#define LISTEN_BACKOFF_MAX_MS     5000
#define LISTEN_CHANNEL_MAX          63   /* NAMEDATALEN - 1: longer names are truncated by LISTEN */

enum listen_state { L_BACKOFF, L_CONNECTING, L_LISTENING, L_UP, L_CLOSED };

struct db_listener {
	struct event_base *base;
	const char *keys[8];         /* PQconnectStartParams arrays, NULL-terminated */
	const char *vals[8];
	char *conninfo;
	char *channel;
	db_listen_cb *on_notify;
	db_listen_cb_reset *on_reset;
	void *arg;
	enum listen_state state;
	PGconn *pg;
	struct event *io;            /* one-shot connect step; recreated each poll */
	struct event *rd;            /* persistent EV_READ once connected */
	struct event *wr;            /* EV_WRITE, armed only while PQflush returns 1 */
	struct event *timer;         /* connect budget (CONNECTING, LISTENING) or retry (BACKOFF) */
	int backoff_ms;              /* delay before the next retry */
	int failures;                /* failed attempts in a row, to log the first at warn */
	bool flushing;
	bool missed;                 /* notifications may have been lost: on_reset when up */
	PGresult *res;               /* LISTEN result kept until PQgetResult returns NULL */
	int cb_depth;                /* callbacks currently running */
};

static void listener_start(db_listener *l);

/* ---- small helpers ------------------------------------------------------ */

/* ---- connection lifetime ------------------------------------------------ */

static void listener_close(db_listener *l)
{
	if (l->io) {
		event_free(l->io);
		l->io = NULL;
	}
	if (l->rd) {
		event_free(l->rd);
		l->rd = NULL;
	}
	if (l->wr) {
		event_free(l->wr);
		l->wr = NULL;
	}
	if (l->timer)
		evtimer_del(l->timer);
	if (l->res) {
		PQclear(l->res);
		l->res = NULL;
	}
	if (l->pg) {
		PQfinish(l->pg);
		l->pg = NULL;
	}
	l->flushing = false;
}

/* Frees memory only; the connection is closed by now. */
static void listener_free(db_listener *l)
{
	listener_close(l);
	if (l->timer)
		event_free(l->timer);
	free(l->conninfo);
	free(l->channel);
	free(l);
}

static void listener_backoff(db_listener *l)
{
	struct timeval tv = { l->backoff_ms / 1000, (l->backoff_ms % 1000) * 1000 };

	l->state = L_BACKOFF;
	evtimer_add(l->timer, &tv);
	l->backoff_ms *= 2;
	if (l->backoff_ms > LISTEN_BACKOFF_MAX_MS)
		l->backoff_ms = LISTEN_BACKOFF_MAX_MS;
}

/* An attempt (connect or LISTEN) failed: try again after the backoff. The
 * first failure of a streak is a warning, the retries are debug noise. */
static void listener_failed(db_listener *l, const char *why)
{
	char msg[512];

	db_one_line(why, msg, sizeof msg);
	log_event(l->failures == 0 ? LOG_WARN : LOG_DEBUG, "db listen connect failed",
	          LOG_S("channel", l->channel), LOG_S("error", msg),
	          LOG_I("retry_ms", l->backoff_ms), LOG_END);
	l->failures++;
	l->missed = true;
	listener_close(l);
	listener_backoff(l);
}

/* A confirmed LISTEN stopped working (EOF, server restart, write error). */
static void listener_lost(db_listener *l, const char *why)
{
	char msg[512];

	if (l->state != L_UP) {
		listener_failed(l, why);
		return;
	}
	db_one_line(why, msg, sizeof msg);
	log_event(LOG_WARN, "db listen lost", LOG_S("channel", l->channel),
	          LOG_S("error", msg), LOG_I("retry_ms", l->backoff_ms), LOG_END);
	l->missed = true;
	listener_close(l);
	listener_backoff(l);
}

static void on_notice(void *arg, const PGresult *res)
{
	db_listener *l = arg;
	char msg[512];

	db_one_line(PQresultErrorMessage(res), msg, sizeof msg);
	log_event(LOG_DEBUG, "db listen notice", LOG_S("channel", l->channel),
	          LOG_S("message", msg), LOG_END);
}

/* Runs a callback. Returns false when the listener was destroyed from
 * inside it (and freed here if this is the outermost callback): the caller
 * must then return without touching l. */
static bool listener_call(db_listener *l, const char *payload, bool reset)
{
	l->cb_depth++;
	if (reset)
		l->on_reset(l->arg);
	else
		l->on_notify(l->arg, payload);
	l->cb_depth--;
	if (l->state != L_CLOSED)
		return true;
	if (l->cb_depth == 0)
		listener_free(l);
	return false;
}

/* ---- connecting --------------------------------------------------------- */

static void on_read(evutil_socket_t fd, short what, void *arg);
static void on_write(evutil_socket_t fd, short what, void *arg);
static void on_connect_io(evutil_socket_t fd, short what, void *arg);

static void listener_set_flushing(db_listener *l, bool pending)
{
	l->flushing = pending;
	if (pending)
		event_add(l->wr, NULL);
	else
		event_del(l->wr);
}

/* PQflush: 0 sent, 1 more to send (wait for EV_WRITE), -1 broken.
 * Returns false when the connection broke. */
static bool listener_flush(db_listener *l)
{
	int r = PQflush(l->pg);

	if (r < 0) {
		listener_lost(l, PQerrorMessage(l->pg));
		return false;
	}
	listener_set_flushing(l, r == 1);
	return true;
}

/* PQconnectPoll said OK: register the socket for good and send LISTEN.
 * The connect timer keeps running until the server confirms it. */
static void listener_connected(db_listener *l)
{
	int fd = PQsocket(l->pg);
	char *id, *sql;
	int ok;

	event_free(l->io);
	l->io = NULL;
	if (fd < 0 || PQsetnonblocking(l->pg, 1) != 0) {
		listener_failed(l, PQerrorMessage(l->pg));
		return;
	}
	PQsetNoticeReceiver(l->pg, on_notice, l);
	l->rd = event_new(l->base, fd, EV_READ | EV_PERSIST, on_read, l);
	l->wr = event_new(l->base, fd, EV_WRITE, on_write, l);
	if (!l->rd || !l->wr || event_add(l->rd, NULL) != 0) {
		listener_failed(l, "cannot register socket with libevent");
		return;
	}
	/* Quoted with the connection's encoding, hence only now. */
	id = PQescapeIdentifier(l->pg, l->channel, strlen(l->channel));
	if (!id) {
		listener_failed(l, PQerrorMessage(l->pg));
		return;
	}
	sql = xasprintf("LISTEN %s", id);
	PQfreemem(id);
	ok = PQsendQuery(l->pg, sql);
	free(sql);
	if (!ok) {
		listener_failed(l, PQerrorMessage(l->pg));
		return;
	}
	l->state = L_LISTENING;
	listener_flush(l);
}

/* Waits for the socket as PQconnectPoll asked. A fresh one-shot event each
 * step: the socket may be a different one after every poll (multi-host,
 * SSL/GSS fallback), and a closed fd silently drops out of epoll. */
static void listener_wait(db_listener *l, short what)
{
	int fd = PQsocket(l->pg);

	if (l->io) {
		event_free(l->io);
		l->io = NULL;
	}
	if (fd < 0) {
		listener_failed(l, PQerrorMessage(l->pg));
		return;
	}
	l->io = event_new(l->base, fd, what, on_connect_io, l);
	if (!l->io || event_add(l->io, NULL) != 0)
		listener_failed(l, "cannot register socket with libevent");
}

static void on_connect_io(evutil_socket_t fd, short what, void *arg)
{
	db_listener *l = arg;

	switch (PQconnectPoll(l->pg)) {
	case PGRES_POLLING_READING:
		listener_wait(l, EV_READ);
		break;
	case PGRES_POLLING_WRITING:
		listener_wait(l, EV_WRITE);
		break;
	case PGRES_POLLING_OK:
		listener_connected(l);
		break;
	default:
		listener_failed(l, PQerrorMessage(l->pg));
		break;
	}
}

static void listener_start(db_listener *l)
{
	struct timeval tv = { LISTEN_CONNECT_TIMEOUT_MS / 1000,
	                      (LISTEN_CONNECT_TIMEOUT_MS % 1000) * 1000 };

	l->state = L_CONNECTING;
	l->pg = PQconnectStartParams(l->keys, l->vals, 1);
	if (!l->pg) {
		listener_failed(l, "out of memory");
		return;
	}
	if (PQstatus(l->pg) == CONNECTION_BAD) {
		listener_failed(l, PQerrorMessage(l->pg));
		return;
	}
	evtimer_add(l->timer, &tv);
	/* As if PQconnectPoll had said WRITING (libpq docs). */
	listener_wait(l, EV_WRITE);
}

/* The listener's own timer: connect/LISTEN budget or end of backoff. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	db_listener *l = arg;

	if (l->state == L_CONNECTING || l->state == L_LISTENING)
		listener_failed(l, "timeout expired while connecting");
	else if (l->state == L_BACKOFF)
		listener_start(l);
}

/* ---- up ----------------------------------------------------------------- */

/* PQgetResult returned NULL after LISTEN. Returns false when l must not be
 * touched any more (the attempt failed, or on_reset destroyed it). */
static bool listener_listen_done(db_listener *l)
{
	PGresult *res = l->res;
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	char msg[512];

	l->res = NULL;
	if (st != PGRES_COMMAND_OK) {
		/* E.g. "cannot execute LISTEN during recovery" on a standby. */
		if (res && *PQresultErrorMessage(res))
			snprintf(msg, sizeof msg, "LISTEN failed: %s", PQresultErrorMessage(res));
		else
			snprintf(msg, sizeof msg, "LISTEN failed: %s", PQresStatus(st));
		PQclear(res);
		listener_failed(l, msg);
		return false;
	}
	PQclear(res);
	evtimer_del(l->timer);
	l->state = L_UP;
	l->backoff_ms = LISTEN_BACKOFF_MIN_MS;
	l->failures = 0;
	log_event(LOG_INFO, "db listen up", LOG_S("channel", l->channel),
	          LOG_S("reset", l->missed ? "yes" : "no"), LOG_END);
	if (l->missed) {
		l->missed = false;
		if (l->on_reset && !listener_call(l, NULL, true))
			return false;
	}
	return true;
}

/* Reads the LISTEN result as far as it has arrived. Returns false when l
 * must not be touched any more. */
static bool listener_read_result(db_listener *l)
{
	while (!PQisBusy(l->pg)) {
		PGresult *r = PQgetResult(l->pg);
		if (!r)
			return listener_listen_done(l);
		/* Keep the first error if any, else the last result. */
		if (!l->res) {
			l->res = r;
		} else if (PQresultStatus(l->res) == PGRES_FATAL_ERROR) {
			PQclear(r);
		} else {
			PQclear(l->res);
			l->res = r;
		}
	}
	return true;
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
	listener_flush(arg);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
	db_listener *l = arg;
	PGnotify *n;

	if (!PQconsumeInput(l->pg)) {
		listener_lost(l, PQerrorMessage(l->pg));
		return;
	}
	/* The server may stop reading until we read: retry a pending flush. */
	if (l->flushing && !listener_flush(l))
		return;
	if (l->state == L_LISTENING && !listener_read_result(l))
		return;
	/* PQnotifies only parses what PQconsumeInput read; it never reads. */
	while ((n = PQnotifies(l->pg))) {
		bool alive = listener_call(l, n->extra ? n->extra : "", false);
		PQfreemem(n);
		if (!alive)
			return;
	}
	/* An idle session only talks when it is about to die (57P01 arrives as
	 * a notice); the EOF that follows fails PQconsumeInput above. */
	if (PQstatus(l->pg) == CONNECTION_BAD)
		listener_lost(l, PQerrorMessage(l->pg));
}

/* ---- public API --------------------------------------------------------- */

db_listener *db_listen_create(struct event_base *base, const char *conninfo,
                              const char *channel, db_listen_cb *on_notify,
                              db_listen_cb_reset *on_reset, void *arg)
{
	db_listener *l;
	int k = 0;

	if (!base || !conninfo || !channel || !*channel || strlen(channel) > LISTEN_CHANNEL_MAX
	    || !on_notify || !db_conninfo_valid(conninfo))
		return NULL;
	l = xcalloc(1, sizeof *l);
	l->base = base;
	l->conninfo = xstrdup(conninfo);
	l->channel = xstrdup(channel);
	l->on_notify = on_notify;
	l->on_reset = on_reset;
	l->arg = arg;
	l->backoff_ms = LISTEN_BACKOFF_MIN_MS;
	l->state = L_BACKOFF;

	/* Later keywords override earlier ones: keepalives before dbname so
	 * the conninfo may override them. A dead peer is noticed within about
	 * a minute even when no FIN ever arrives. */
	l->keys[k] = "keepalives";          l->vals[k++] = "1";
	l->keys[k] = "keepalives_idle";     l->vals[k++] = "30";
	l->keys[k] = "keepalives_interval"; l->vals[k++] = "10";
	l->keys[k] = "keepalives_count";    l->vals[k++] = "3";
	l->keys[k] = "dbname";              l->vals[k++] = l->conninfo;
	l->keys[k] = "fallback_application_name"; l->vals[k++] = "rapport-listen";
	l->keys[k] = NULL;                  l->vals[k] = NULL;

	l->timer = evtimer_new(base, on_timer, l);
	if (!l->timer) {
		listener_free(l);
		return NULL;
	}
	listener_start(l);
	return l;
}

void db_listen_destroy(db_listener *l)
{
	if (!l || l->state == L_CLOSED)
		return;
	listener_close(l);
	l->state = L_CLOSED;
	if (l->cb_depth == 0)
		listener_free(l);
	/* else called from a callback: listener_call() frees it on return */
}

bool db_listen_is_up(const db_listener *l)
{
	return l && l->state == L_UP;
}
