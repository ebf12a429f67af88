/*
 * db — asynchronous PostgreSQL connection pool on the libevent loop.
 *
 * This unit owns:
 *   - `size` libpq connections (struct db_conn), each in one explicit state:
 *       BACKOFF     no socket; a timer starts the next connect attempt
 *       CONNECTING  PQconnectPoll loop on one-shot events, 2 s timer
 *       CHECKING    up, running the role check (conn_check_start); a role
 *                   that may write never gets past it (unless allowed)
 *       IDLE        up, persistent EV_READ armed, no query
 *       BUSY        up, running exactly one query
 *   - every query handle (struct db_query) from db_query_send() until its
 *     callback has returned or it was cancelled;
 *   - the FIFO of queries waiting for a connection (pool->queue) and the list
 *     of queries whose failure is reported on the next loop tick
 *     (pool->failing).
 *
 * Data flow of one query:
 *   db_query_send ─► queue (tail) ─► pool_dispatch: head → an IDLE connection
 *   ─► the walk in one pipeline (BEGIN READ ONLY … ROLLBACK, see enum
 *      conn_step) + PQflush (EV_WRITE only while PQflush says 1)
 *   ─► EV_READ: PQconsumeInput, each command's results in order, the
 *      statement's rows one by one (capped) into one result
 *   ─► the last Sync: callback with the statement's result ─► connection
 *      IDLE ─► next in queue.
 * Failures that are not a server answer (database down, lost connection,
 * timeouts) go through pool->failing and a zero timer, so a callback never
 * runs inside db_query_send() and never in the middle of our own bookkeeping.
 *
 * "Down" is a pool-level flag: set when a connect attempt fails while no
 * connection is up, cleared when any connection comes up. While down, new
 * queries fail at once (next tick) and the backoff timers keep probing, so
 * the pool heals by itself when the server is back. While merely nobody is
 * up yet (start-up, right after a restart broke everything) queries wait in
 * the queue, at most DB_WAIT_MS, for the attempt in progress to decide.
 *
 * Per-query timeout: one evtimer per query, from send to callback. If it
 * fires while the query runs, the connection is PQfinish()ed and reconnected
 * (PQcancel blocks in libpq 15). A server-side statement_timeout slightly
 * above it makes the orphaned backend stop too.
 *
 * Never blocks: no PQexec/PQconnectdb/PQcancel (db_role_check() does, and
 * is for start-up only, before the loop runs). One caveat from libpq: a host
 * name (not an address) in the conninfo is resolved with a blocking
 * getaddrinfo inside PQconnectPoll; use hostaddr= or a socket directory.
 */
#include "db.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "log.h"
#include "util.h"

#define DB_CONNECT_TIMEOUT_MS 2000   /* connect_timeout is ignored by PQconnectPoll */
#define DB_BACKOFF_MIN_MS      100
#define DB_BACKOFF_MAX_MS     2000
#define DB_WAIT_MS            1000   /* longest wait for a connection while none is up */
#define DB_STMT_TIMEOUT_SLACK_MS 1000

#define MSG_UNAVAILABLE "database unavailable"
#define MSG_TIMEOUT     "database query timed out"
#define MSG_LOST        "database connection lost"
#define MSG_SHUTDOWN    "database pool shut down"

enum conn_state { CONN_BACKOFF, CONN_CONNECTING, CONN_CHECKING, CONN_IDLE, CONN_BUSY, CONN_CLOSED };

/* What a session is reading. A query is a short walk, queued in one
 * pipeline (libpq pipeline mode, one round trip), so that the script's
 * statement never runs outside a READ ONLY transaction that ends in
 * ROLLBACK:
 *   BEGIN READ ONLY, [Parse], the statement, Sync, ROLLBACK, Sync,
 *   [DISCARD ALL, Sync]          (DISCARD ALL only after ad-hoc SQL)
 * The role check before it is a plain query, before pipeline mode. */
enum conn_step {
	STEP_NONE,
	STEP_CHECK,      /* the role check, once per session (CONN_CHECKING) */
	STEP_BEGIN,
	STEP_PREPARE,
	STEP_QUERY,
	STEP_END,
	STEP_RESET,
	STEP_SYNC,       /* a pipeline Sync: its own PGRES_PIPELINE_SYNC */
};

enum query_state {
	Q_QUEUED,    /* in pool->queue, waiting for a connection */
	Q_RUNNING,   /* sent on q->conn */
	Q_FAILING,   /* in pool->failing, callback on the next tick */
	Q_DONE,      /* callback running; freed when it returns */
};

struct db_conn {
	db_pool *pool;
	int idx;                     /* for logs */
	enum conn_state state;
	PGconn *pg;
	struct event *io;            /* one-shot connect step; recreated each poll */
	struct event *rd;            /* persistent EV_READ once up */
	struct event *wr;            /* EV_WRITE, armed only while PQflush returns 1 */
	struct event *timer;         /* connect timeout (CONNECTING) or retry (BACKOFF) */
	int backoff_ms;              /* delay before the next retry */
	bool flushing;
	db_query *q;                 /* in-flight query (BUSY) */
	PGresult *res;               /* result kept until PQgetResult returns NULL */
	PGresult *rows;              /* single-row mode: the rows so far, rebuilt as one result */
	long nrows;
	size_t nbytes;
	enum conn_step step;
	enum conn_step cmds[10];     /* the walk queued in the pipeline, in order */
	int ncmds, ci;               /* ... and the one being read */
	bool end_failed;             /* ROLLBACK/DISCARD failed: replace the session */
	/* Statements prepared on this session, by hash of their SQL: a named
	 * query is parsed and planned once per connection instead of on
	 * every request. The session owns them, so a reconnect forgets them. */
	uint64_t *prepared;
	int nprepared;
};

struct db_query {
	db_pool *pool;
	enum query_state state;
	char *sql;
	int nparams;
	char **params;               /* NULL entries are SQL NULLs */
	db_query_cb *cb;             /* NULL once cancelled */
	void *arg;
	struct event *timer;         /* wait cap while queued, deadline while running */
	bool timer_is_deadline;      /* the armed timer is the query timeout itself */
	bool adhoc;                  /* a script's own SQL: unnamed, session reset after */
	bool retried;                /* sent again once after its prepared statement vanished */
	double deadline_ms;          /* util_now_ms() based; 0 = no timeout */
	struct db_conn *conn;        /* Q_RUNNING */
	char *fail_msg;              /* Q_FAILING */
	bool fail_unavailable;
	unsigned fail_gen;
	TAILQ_ENTRY(db_query) link;
};

TAILQ_HEAD(query_list, db_query);

struct db_pool {
	struct event_base *base;
	const char *keys[8];         /* PQconnectStartParams arrays, NULL-terminated */
	const char *vals[8];
	char *conninfo;
	char *options;
	int size;
	int query_timeout_ms;
	bool prepare;                /* use named prepared statements */
	bool role_check;             /* check the role's privileges on every new session */
	bool allow_write;            /* ... and only warn when it may write */
	bool refused_logged;         /* the role's refusal is logged once, not per retry */
	bool write_warned;
	long max_rows;               /* per result; 0 = no cap */
	size_t max_bytes;
	struct db_conn *conns;
	struct query_list queue;
	int nqueued;
	struct query_list failing;
	struct event *fail_ev;       /* zero timer that reports pool->failing */
	unsigned fail_gen;
	bool down;
	char down_msg[640];          /* while down: why, with its class (db_error_class) */
	const char *down_class;
	bool destroying;
	bool dead;                   /* destroyed from inside a callback; free when it returns */
	int cb_depth;                /* callbacks currently running */
};

static void conn_start(struct db_conn *c);
static void pool_dispatch(db_pool *p);

/* ---- small helpers ------------------------------------------------------ */

/* libpq messages end in "\n" and may span lines ("\tIs the server running…");
 * logs and API errors want one line. */
void db_one_line(const char *s, char *buf, size_t len)
{
	size_t n = 0;
	if (!s)
		s = "";
	for (; *s && n + 1 < len; s++) {
		bool space = *s == '\n' || *s == '\t' || *s == '\r' || *s == ' ';
		if (space && (n == 0 || buf[n - 1] == ' '))
			continue;
		buf[n++] = space ? ' ' : *s;
	}
	while (n > 0 && buf[n - 1] == ' ')
		n--;
	buf[n] = '\0';
}

static bool conn_is_up(const struct db_conn *c)
{
	return c->state == CONN_IDLE || c->state == CONN_BUSY;
}

static bool pool_any_up(const db_pool *p)
{
	for (int i = 0; i < p->size; i++)
		if (conn_is_up(&p->conns[i]))
			return true;
	return false;
}

/* ---- query lifetime ----------------------------------------------------- */

static void query_free(db_query *q)
{
	if (q->timer)
		event_free(q->timer);
	for (int i = 0; i < q->nparams; i++)
		free(q->params[i]);
	free(q->params);
	free(q->sql);
	free(q->fail_msg);
	free(q);
}

static void pool_free(db_pool *p);

/* Runs the callback (unless cancelled) and frees q. Returns true when the
 * pool was destroyed from inside the callback: the caller must then return
 * without touching the pool or any connection. */
static bool query_finish(db_query *q, const PGresult *res, const struct db_error *err)
{
	db_pool *p = q->pool;
	q->state = Q_DONE;           /* db_query_cancel() from the callback is a no-op */
	if (q->timer)
		evtimer_del(q->timer);
	if (q->cb) {
		p->cb_depth++;
		q->cb(q->arg, res, err);
		p->cb_depth--;
	}
	query_free(q);
	if (p->dead && p->cb_depth == 0) {
		pool_free(p);
		return true;
	}
	return p->dead;
}

static bool query_fail(db_query *q, const char *msg, bool unavailable)
{
	struct db_error err = { .unavailable = unavailable, .message = msg, .sqlstate = NULL };
	return query_finish(q, NULL, &err);
}

/* Reported on the next loop tick: callers may be inside db_query_send() or
 * halfway through changing a connection's state. */
static void query_fail_later(db_query *q, const char *msg, bool unavailable)
{
	db_pool *p = q->pool;
	static const struct timeval now = { 0, 0 };

	if (q->timer)
		evtimer_del(q->timer);
	q->state = Q_FAILING;
	q->conn = NULL;
	free(q->fail_msg);
	q->fail_msg = xstrdup(msg);
	q->fail_unavailable = unavailable;
	q->fail_gen = p->fail_gen;
	TAILQ_INSERT_TAIL(&p->failing, q, link);
	/* A zero timer, not event_active(): an active event re-activated from
	 * its own callback runs again in the same pass, so a caller that
	 * resends on failure would starve the loop. */
	if (!p->destroying)
		evtimer_add(p->fail_ev, &now);
}

static void on_fail_tick(evutil_socket_t fd, short what, void *arg)
{
	db_pool *p = arg;
	unsigned gen = p->fail_gen++;
	db_query *q;

	/* Only what was there when the tick started; failures added by the
	 * callbacks below carry the new generation and wait for the next tick. */
	while ((q = TAILQ_FIRST(&p->failing)) && q->fail_gen == gen) {
		TAILQ_REMOVE(&p->failing, q, link);
		if (query_fail(q, q->fail_msg, q->fail_unavailable))
			return;
	}
}

/* Arms the query timer while q waits in the queue: the deadline, or
 * DB_WAIT_MS to re-check that some connection is still up. */
static void query_arm_wait(db_query *q)
{
	double now = util_now_ms();
	double wait = DB_WAIT_MS;

	q->timer_is_deadline = false;
	if (q->deadline_ms > 0 && q->deadline_ms - now <= wait) {
		wait = q->deadline_ms - now;
		if (wait < 0)
			wait = 0;
		q->timer_is_deadline = true;
	}
	struct timeval tv = { (time_t)(wait / 1000), (suseconds_t)((long)wait % 1000 * 1000) };
	evtimer_add(q->timer, &tv);
}

static void query_arm_deadline(db_query *q)
{
	if (q->deadline_ms <= 0) {
		evtimer_del(q->timer);
		return;
	}
	double wait = q->deadline_ms - util_now_ms();
	if (wait < 0)
		wait = 0;
	struct timeval tv = { (time_t)(wait / 1000), (suseconds_t)((long)wait % 1000 * 1000) };
	q->timer_is_deadline = true;
	evtimer_add(q->timer, &tv);
}

static void pool_enqueue_head(db_pool *p, db_query *q)
{
	q->state = Q_QUEUED;
	q->conn = NULL;
	TAILQ_INSERT_HEAD(&p->queue, q, link);
	p->nqueued++;
	query_arm_wait(q);
}

static void pool_dequeue(db_pool *p, db_query *q)
{
	TAILQ_REMOVE(&p->queue, q, link);
	p->nqueued--;
}

/* ---- pool up / down ----------------------------------------------------- */

/* ---- why the database cannot be reached (error classes) ----
 * libpq's messages are precise but long and differ by version; the class
 * is the part a person acts on, so it leads every message and /readyz. */
const char *db_error_class(const char *m)
{
	static const struct { const char *needle, *cls; } classes[] = {
		{ "Connection refused", "refused" },
		{ "No such file or directory", "refused" },   /* no server on that socket */
		{ "could not translate host name", "name_not_found" },
		{ "Name or service not known", "name_not_found" },
		{ "nodename nor servname", "name_not_found" },
		{ "Temporary failure in name resolution", "name_not_found" },
		{ "authentication failed", "authentication" },
		{ "no pg_hba.conf entry", "authentication" },
		{ "password", "authentication" },
		{ "role \"", "authentication" },             /* role "x" does not exist */
		{ "database \"", "database_missing" },       /* database "x" does not exist */
		{ "timeout expired", "timeout" },
		{ "timed out", "timeout" },
	};
	if (!m)
		return "unreachable";
	for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++)
		if (strstr(m, classes[i].needle))
			return classes[i].cls;
	return "unreachable";
}

static const char *db_class_hint(const char *cls)
{
	if (strcmp(cls, "refused") == 0)
		return "nothing accepts connections there: is PostgreSQL running, and are DATABASE_URL's "
		       "host and port right?";
	if (strcmp(cls, "name_not_found") == 0)
		return "the host name in DATABASE_URL does not resolve";
	if (strcmp(cls, "authentication") == 0)
		return "the server refused the login: check DATABASE_URL's user and password (and "
		       "pg_hba.conf)";
	if (strcmp(cls, "database_missing") == 0)
		return "the database named in DATABASE_URL does not exist: create it or fix dbname";
	if (strcmp(cls, "timeout") == 0)
		return "no answer in time: is the host reachable (firewall, network)?";
	return "see the server's log";
}

/* "database unreachable (refused): <libpq's line> — <what to check>" */
void db_describe_unreachable(const char *libpq_msg, char *buf, size_t len)
{
	/* libpq's first line is the fact; its second ("Is the server
	 * running…?") is a hint that the class's own would only repeat. */
	char one[384];
	const char *m = libpq_msg ? libpq_msg : "";
	size_t n = strcspn(m, "\n");
	const char *hint = strstr(m, " Is the server running");   /* already one line */
	if (hint && (size_t)(hint - m) < n)
		n = (size_t)(hint - m);
	snprintf(one, sizeof one, "%.*s", (int)n, m);
	const char *cls = db_error_class(m);
	snprintf(buf, len, "database unreachable (%s): %s — %s", cls, one, db_class_hint(cls));
}

const char *db_pool_down_cause(const db_pool *pool, const char **message)
{
	if (!pool || pool_any_up(pool) || !pool->down_class) {
		if (message)
			*message = NULL;
		return NULL;
	}
	if (message)
		*message = pool->down_msg;
	return pool->down_class;
}

/* A connect attempt failed. If nothing is up, the database is down: queued
 * queries would only wait for the backoff, so fail them now, and new ones
 * fail fast until a connection comes up again. */
static void pool_mark_down(db_pool *p, const char *why)
{
	db_query *q;

	if (p->destroying || pool_any_up(p))
		return;
	/* The latest cause wins (a database that comes back refusing logins
	 * is a different problem from one that is not there), but the log
	 * says it once per change, not once per retry. */
	const char *cls = db_error_class(why);
	bool changed = !p->down || !p->down_class || strcmp(cls, p->down_class) != 0;
	db_describe_unreachable(why, p->down_msg, sizeof p->down_msg);
	p->down_class = cls;
	if (changed)
		log_event(LOG_WARN, "db down", LOG_S("cause", cls), LOG_S("error", why), LOG_END);
	if (p->down)
		return;
	p->down = true;
	while ((q = TAILQ_FIRST(&p->queue))) {
		pool_dequeue(p, q);
		query_fail_later(q, p->down_msg, true);
	}
}

/* A connection came up. The others may sit in a long backoff: the server is
 * evidently back, so retry them now rather than in up to 2 s. */
static void pool_mark_up(db_pool *p)
{
	if (!p->down)
		return;
	p->down = false;
	log_event(LOG_INFO, "db up", LOG_END);
	for (int i = 0; i < p->size; i++) {
		struct db_conn *c = &p->conns[i];
		if (c->state == CONN_BACKOFF) {
			evtimer_del(c->timer);
			c->backoff_ms = DB_BACKOFF_MIN_MS;
			conn_start(c);
		}
	}
}

/* ---- connection lifetime ------------------------------------------------ */

static void conn_close(struct db_conn *c)
{
	if (c->io) {
		event_free(c->io);
		c->io = NULL;
	}
	if (c->rd) {
		event_free(c->rd);
		c->rd = NULL;
	}
	if (c->wr) {
		event_free(c->wr);
		c->wr = NULL;
	}
	if (c->timer)
		evtimer_del(c->timer);
	if (c->res) {
		PQclear(c->res);
		c->res = NULL;
	}
	if (c->rows) {
		PQclear(c->rows);
		c->rows = NULL;
	}
	if (c->pg) {
		PQfinish(c->pg);
		c->pg = NULL;
	}
	c->flushing = false;
	c->nprepared = 0;
	c->step = STEP_NONE;
	c->ncmds = c->ci = 0;
}

static void conn_backoff(struct db_conn *c)
{
	struct timeval tv = { c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000 };

	c->state = CONN_BACKOFF;
	evtimer_add(c->timer, &tv);
	c->backoff_ms *= 2;
	if (c->backoff_ms > DB_BACKOFF_MAX_MS)
		c->backoff_ms = DB_BACKOFF_MAX_MS;
}

static void conn_connect_failed(struct db_conn *c, const char *why)
{
	char msg[512];

	db_one_line(why, msg, sizeof msg);
	log_event(LOG_DEBUG, "db connect failed", LOG_I("conn", c->idx),
	          LOG_S("error", msg), LOG_I("retry_ms", c->backoff_ms), LOG_END);
	conn_close(c);
	conn_backoff(c);
	pool_mark_down(c->pool, msg);
}

/* An up connection stopped working (EOF, server restart, write error). Its
 * query may or may not have run, so it fails rather than being retried. */
static void conn_broken(struct db_conn *c, const char *why)
{
	char msg[512];
	db_query *q = c->q;

	db_one_line(why, msg, sizeof msg);
	log_event(LOG_WARN, "db connection lost", LOG_I("conn", c->idx),
	          LOG_S("error", msg), LOG_END);
	c->q = NULL;
	conn_close(c);
	conn_backoff(c);
	if (q) {
		if (q->cb)
			query_fail_later(q, MSG_LOST, true);
		else
			query_free(q);
	}
}

static void on_notice(void *arg, const PGresult *res)
{
	struct db_conn *c = arg;
	char msg[512];

	db_one_line(PQresultErrorMessage(res), msg, sizeof msg);
	log_event(LOG_DEBUG, "db notice", LOG_I("conn", c->idx), LOG_S("message", msg), LOG_END);
}

static void on_read(evutil_socket_t fd, short what, void *arg);
static void on_write(evutil_socket_t fd, short what, void *arg);
static void on_connect_io(evutil_socket_t fd, short what, void *arg);
static void conn_check_start(struct db_conn *c);
static void conn_check_done(struct db_conn *c);
static void conn_over_cap(struct db_conn *c, const char *msg);
static void conn_up(struct db_conn *c);

static void conn_ready(struct db_conn *c)
{
	db_pool *p = c->pool;
	int fd = PQsocket(c->pg);

	event_free(c->io);
	c->io = NULL;
	evtimer_del(c->timer);
	if (fd < 0 || PQsetnonblocking(c->pg, 1) != 0) {
		conn_connect_failed(c, PQerrorMessage(c->pg));
		return;
	}
	PQsetNoticeReceiver(c->pg, on_notice, c);
	/* The socket is fixed from here on: we never PQreset, a broken
	 * connection is finished and a new one started. */
	c->rd = event_new(p->base, fd, EV_READ | EV_PERSIST, on_read, c);
	c->wr = event_new(p->base, fd, EV_WRITE, on_write, c);
	if (!c->rd || !c->wr || event_add(c->rd, NULL) != 0) {
		conn_connect_failed(c, "cannot register socket with libevent");
		return;
	}
	if (p->role_check) {
		conn_check_start(c);
		return;
	}
	conn_up(c);
}

/* The session may serve queries now. */
static void conn_up(struct db_conn *c)
{
	db_pool *p = c->pool;
	/* Each query's walk goes out in one pipeline: one round trip. */
	if (PQenterPipelineMode(c->pg) != 1) {
		conn_connect_failed(c, PQerrorMessage(c->pg));
		return;
	}
	c->state = CONN_IDLE;
	c->step = STEP_NONE;
	c->backoff_ms = DB_BACKOFF_MIN_MS;
	log_event(LOG_DEBUG, "db connected", LOG_I("conn", c->idx), LOG_END);
	pool_mark_up(p);
	pool_dispatch(p);
}

/* Waits for the socket as PQconnectPoll asked. A fresh one-shot event each
 * step: the socket may be a different one after every poll (multi-host,
 * SSL/GSS fallback), and a closed fd silently drops out of epoll. */
static void conn_wait(struct db_conn *c, short what)
{
	int fd = PQsocket(c->pg);

	if (c->io) {
		event_free(c->io);
		c->io = NULL;
	}
	if (fd < 0) {
		conn_connect_failed(c, PQerrorMessage(c->pg));
		return;
	}
	c->io = event_new(c->pool->base, fd, what, on_connect_io, c);
	if (!c->io || event_add(c->io, NULL) != 0) {
		conn_connect_failed(c, "cannot register socket with libevent");
		return;
	}
}

static void on_connect_io(evutil_socket_t fd, short what, void *arg)
{
	struct db_conn *c = arg;

	switch (PQconnectPoll(c->pg)) {
	case PGRES_POLLING_READING:
		conn_wait(c, EV_READ);
		break;
	case PGRES_POLLING_WRITING:
		conn_wait(c, EV_WRITE);
		break;
	case PGRES_POLLING_OK:
		conn_ready(c);
		break;
	default:
		conn_connect_failed(c, PQerrorMessage(c->pg));
		break;
	}
}

static void conn_start(struct db_conn *c)
{
	db_pool *p = c->pool;
	struct timeval tv = { DB_CONNECT_TIMEOUT_MS / 1000, (DB_CONNECT_TIMEOUT_MS % 1000) * 1000 };

	c->state = CONN_CONNECTING;
	c->pg = PQconnectStartParams(p->keys, p->vals, 1);
	if (!c->pg) {
		conn_connect_failed(c, "out of memory");
		return;
	}
	if (PQstatus(c->pg) == CONNECTION_BAD) {
		conn_connect_failed(c, PQerrorMessage(c->pg));
		return;
	}
	evtimer_add(c->timer, &tv);
	/* As if PQconnectPoll had said WRITING (libpq docs). */
	conn_wait(c, EV_WRITE);
}

/* The connection's own timer: connect timeout or end of backoff. */
static void on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
	struct db_conn *c = arg;

	if (c->state == CONN_CONNECTING)
		conn_connect_failed(c, "timeout expired while connecting");
	else if (c->state == CONN_CHECKING)
		conn_connect_failed(c, "timeout expired while checking the role");
	else if (c->state == CONN_BACKOFF)
		conn_start(c);
}

/* The connection must go (timeout, COPY): drop it and connect again at once,
 * the server itself is fine. */
static void conn_restart(struct db_conn *c)
{
	c->q = NULL;
	conn_close(c);
	conn_start(c);
}

/* ---- running queries ---------------------------------------------------- */

static void conn_set_flushing(struct db_conn *c, bool pending)
{
	c->flushing = pending;
	if (pending)
		event_add(c->wr, NULL);
	else
		event_del(c->wr);
}

/* PQflush: 0 sent, 1 more to send (wait for EV_WRITE), -1 broken.
 * Returns false when the connection broke. */
static bool conn_flush(struct db_conn *c)
{
	int r = PQflush(c->pg);

	if (r < 0) {
		conn_broken(c, PQerrorMessage(c->pg));
		return false;
	}
	conn_set_flushing(c, r == 1);
	return true;
}

#define MAX_PREPARED 256          /* per connection; beyond, unnamed */

static uint64_t
sql_hash(const char *sql)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (const unsigned char *p = (const unsigned char *)sql; *p; p++)
		h = (h ^ *p) * 0x100000001b3ULL;
	return h;
}

static bool
conn_has_prepared(const struct db_conn *c, uint64_t h)
{
	for (int i = 0; i < c->nprepared; i++)
		if (c->prepared[i] == h)
			return true;
	return false;
}

static void
stmt_name(char *name, size_t len, const char *sql)
{
	snprintf(name, len, "r%016llx", (unsigned long long)sql_hash(sql));
}

static bool conn_walk_result(struct db_conn *c, PGresult *r);
static void conn_walk_finish(struct db_conn *c);

static bool caps_on(const db_pool *p)
{
	return p->max_rows > 0 || p->max_bytes > 0;
}

/* Queues one message of the walk (sent = what PQsend* returned). */
static bool walk_push(struct db_conn *c, int sent, enum conn_step step)
{
	if (!sent || c->ncmds >= (int)(sizeof c->cmds / sizeof c->cmds[0]))
		return false;
	c->cmds[c->ncmds++] = step;
	return true;
}

static bool walk_sql(struct db_conn *c, const char *sql, enum conn_step step)
{
	return walk_push(c, PQsendQueryParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0), step);
}

/* Queues the whole walk of q in one pipeline, sent in one go:
 *   BEGIN READ ONLY, [Parse], the statement, Sync, ROLLBACK, Sync,
 *   [DISCARD ALL, Sync]
 * The first Sync ends the statement's part: after an error the server
 * skips to it, and ROLLBACK (which also undoes any SET the statement made,
 * and is only a warning when the statement ended the transaction itself)
 * still runs. DISCARD ALL follows ad-hoc SQL, outside any transaction. */
static bool walk_queue(struct db_conn *c, db_query *q)
{
	db_pool *p = c->pool;
	const char *const *params = (const char *const *)q->params;
	char name[24];
	bool ok;

	stmt_name(name, sizeof name, q->sql);
	c->ncmds = 0;
	c->ci = 0;
	ok = walk_sql(c, "BEGIN READ ONLY", STEP_BEGIN);
	if (ok && p->prepare && !q->adhoc && conn_has_prepared(c, sql_hash(q->sql))) {
		ok = walk_push(c, PQsendQueryPrepared(c->pg, name, q->nparams, params, NULL, NULL, 0),
		               STEP_QUERY);
	} else if (ok && p->prepare && !q->adhoc && c->nprepared < MAX_PREPARED) {
		ok = walk_push(c, PQsendPrepare(c->pg, name, q->sql, q->nparams, NULL), STEP_PREPARE)
		     && walk_push(c, PQsendQueryPrepared(c->pg, name, q->nparams, params, NULL, NULL, 0),
		                  STEP_QUERY);
	} else if (ok) {
		ok = walk_push(c, PQsendQueryParams(c->pg, q->sql, q->nparams, NULL, params, NULL, NULL, 0),
		               STEP_QUERY);
	}
	ok = ok && walk_push(c, PQpipelineSync(c->pg), STEP_SYNC)
	     && walk_sql(c, "ROLLBACK", STEP_END) && walk_push(c, PQpipelineSync(c->pg), STEP_SYNC);
	if (ok && q->adhoc)
		ok = walk_sql(c, "DISCARD ALL", STEP_RESET) && walk_push(c, PQpipelineSync(c->pg), STEP_SYNC);
	return ok;
}

/* Sends q on the idle connection c. If the session turns out dead, q goes
 * back to the head of the queue (a read, at worst run twice) and false is
 * returned. */
static bool conn_dispatch(struct db_conn *c, db_query *q)
{
	db_pool *p = c->pool;
	char msg[512];
	int r = -1;

	q->state = Q_RUNNING;
	q->conn = c;
	c->q = q;
	c->state = CONN_BUSY;
	c->nrows = 0;
	c->nbytes = 0;
	c->end_failed = false;
	if (walk_queue(c, q))
		r = PQflush(c->pg);
	if (r >= 0) {
		query_arm_deadline(q);
		conn_set_flushing(c, r == 1);
		/* Single-row mode applies to the command being read: BEGIN's
		 * result comes first, so it is set when the statement's turn
		 * comes (conn_walk_next). */
		return true;
	}
	db_one_line(PQerrorMessage(c->pg), msg, sizeof msg);
	c->q = NULL;
	pool_enqueue_head(p, q);
	conn_broken(c, msg);
	return false;
}

/* Hands queued queries, oldest first, to idle connections. */
static void pool_dispatch(db_pool *p)
{
	for (int i = 0; i < p->size && !TAILQ_EMPTY(&p->queue); i++) {
		struct db_conn *c = &p->conns[i];
		if (c->state != CONN_IDLE)
			continue;
		db_query *q = TAILQ_FIRST(&p->queue);
		pool_dequeue(p, q);
		conn_dispatch(c, q);
	}
}

/* SQLSTATEs that mean "the database, not the query, failed". */
static bool sqlstate_unavailable(const char *st)
{
	if (!st)
		return false;
	return strncmp(st, "08", 2) == 0            /* connection exception */
	    || strncmp(st, "57P0", 4) == 0          /* admin/crash shutdown, cannot connect now */
	    || strcmp(st, "57014") == 0             /* statement_timeout */
	    || strcmp(st, "53300") == 0;            /* too many connections */
}

/* The walk is over: the session is idle again (or must be replaced, when
 * the transaction could not be ended). The connection is made idle (or
 * dropped) before the callback, so a callback may send the next query. */
static void conn_walk_finish(struct db_conn *c)
{
	db_pool *p = c->pool;
	db_query *q = c->q;
	PGresult *res = c->res;
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	bool replace = c->end_failed;

	c->q = NULL;
	c->res = NULL;
	c->state = CONN_IDLE;
	c->step = STEP_NONE;
	if (replace)
		conn_restart(c);

	if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
		if (query_finish(q, res, NULL)) {
			PQclear(res);
			return;
		}
	} else {
		char msg[1024];
		const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
		const char *sev = res ? PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED) : NULL;
		struct db_error err = { 0 };

		if (primary)
			snprintf(msg, sizeof msg, "%s", primary);
		else if (res && *PQresultErrorMessage(res))
			db_one_line(PQresultErrorMessage(res), msg, sizeof msg);
		else
			snprintf(msg, sizeof msg, "unexpected result: %s", PQresStatus(st));
		err.message = msg;
		err.sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
		err.unavailable = sqlstate_unavailable(err.sqlstate);
		/* Our prepared statement is gone (a statement ran DEALLOCATE):
		 * forget them all and run the query once more, prepared anew. */
		if (!replace && err.sqlstate && strcmp(err.sqlstate, "26000") == 0) {
			c->nprepared = 0;
			if (!q->retried) {
				q->retried = true;
				PQclear(res);
				pool_enqueue_head(p, q);
				pool_dispatch(p);
				return;
			}
		}
		/* A FATAL error ends the session (e.g. 57P01 on shutdown): the
		 * server closes the socket next. */
		if (!replace && (PQstatus(c->pg) == CONNECTION_BAD || (sev && strcmp(sev, "FATAL") == 0)
		                 || (sev && strcmp(sev, "PANIC") == 0))) {
			err.unavailable = true;
			conn_broken(c, msg);
		}
		if (query_finish(q, NULL, &err)) {
			PQclear(res);
			return;
		}
	}
	PQclear(res);
	pool_dispatch(p);
}

/* One more row in single-row mode, copied into c->rows (one PGresult, as
 * the callback expects). Over a cap, the rest is not read: the session is
 * dropped (PQcancel would block) and the query fails naming the cap.
 * Returns false when c no longer runs the query. */
static bool conn_take_row(struct db_conn *c, PGresult *r)
{
	db_pool *p = c->pool;
	int nf = PQnfields(r);
	size_t bytes = 0;
	char msg[256];

	for (int i = 0; i < nf; i++)
		bytes += (size_t)PQgetlength(r, 0, i);
	c->nrows++;
	c->nbytes += bytes;
	msg[0] = '\0';
	if (p->max_rows > 0 && c->nrows > p->max_rows)
		snprintf(msg, sizeof msg, "the result has more than %ld rows (RAPPORT_DB_MAX_ROWS)",
		         p->max_rows);
	else if (p->max_bytes > 0 && c->nbytes > p->max_bytes)
		snprintf(msg, sizeof msg, "the result has more than %zu bytes (RAPPORT_DB_MAX_BYTES)",
		         p->max_bytes);
	if (!msg[0] && c->q && !c->q->cb) {
		/* Cancelled while running: count (the caps still end a runaway
		 * result's session) but keep nothing for nobody. */
		PQclear(r);
		return true;
	}
	if (!msg[0] && !c->rows) {
		PGresAttDesc *att = xcalloc((size_t)(nf ? nf : 1), sizeof *att);
		for (int i = 0; i < nf; i++) {
			att[i].name = PQfname(r, i);
			att[i].tableid = PQftable(r, i);
			att[i].columnid = PQftablecol(r, i);
			att[i].format = PQfformat(r, i);
			att[i].typid = PQftype(r, i);
			att[i].typlen = PQfsize(r, i);
			att[i].atttypmod = PQfmod(r, i);
		}
		c->rows = PQmakeEmptyPGresult(c->pg, PGRES_TUPLES_OK);
		if (c->rows && !PQsetResultAttrs(c->rows, nf, att)) {
			PQclear(c->rows);
			c->rows = NULL;
		}
		free(att);
		if (!c->rows)
			snprintf(msg, sizeof msg, "out of memory for the result");
	}
	for (int i = 0; !msg[0] && i < nf; i++) {
		bool null = PQgetisnull(r, 0, i);
		if (!PQsetvalue(c->rows, (int)c->nrows - 1, i, null ? NULL : PQgetvalue(r, 0, i),
		                null ? -1 : PQgetlength(r, 0, i)))
			snprintf(msg, sizeof msg, "out of memory for the result");
	}
	PQclear(r);
	if (!msg[0])
		return true;
	conn_over_cap(c, msg);
	return false;
}

/* The query is failed now and its session replaced: the rest of the walk
 * (rows, ROLLBACK) is never read. */
static void conn_over_cap(struct db_conn *c, const char *msg)
{
	db_query *q = c->q;
	struct db_error err = { false, msg, NULL };
	log_event(LOG_WARN, "db result over the cap", LOG_I("conn", c->idx), LOG_S("error", msg),
	          LOG_END);
	conn_restart(c);
	query_finish(q, NULL, &err);
}

/* A result of the message being read. Returns false when c no longer runs
 * its query (it was replaced). */
static bool conn_walk_result(struct db_conn *c, PGresult *r)
{
	ExecStatusType st = PQresultStatus(r);

	if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
		/* PQgetResult would return COPY results forever; the session is
		 * unusable for us, so replace it. */
		db_query *q = c->q;
		struct db_error err = { false, "COPY is not supported", NULL };
		PQclear(r);
		if (c->state == CONN_CHECKING) {
			conn_connect_failed(c, "unexpected COPY from the role check");
			return false;
		}
		conn_restart(c);
		query_finish(q, NULL, &err);
		return false;
	}
	if (st == PGRES_PIPELINE_ABORTED) {
		PQclear(r);              /* skipped after an earlier error, which is kept */
		return true;
	}
	if (c->step == STEP_QUERY && st == PGRES_SINGLE_TUPLE)
		return conn_take_row(c, r);
	if (c->step == STEP_QUERY && st == PGRES_TUPLES_OK && c->rows) {
		PQclear(r);              /* the empty end of a single-row result */
		return true;
	}
	if (c->step == STEP_QUERY && st == PGRES_TUPLES_OK && caps_on(c->pool)
	    && (PQntuples(r) > c->pool->max_rows && c->pool->max_rows > 0)) {
		/* Single-row mode was refused by libpq: the cap still holds. */
		char msg[256];
		snprintf(msg, sizeof msg, "the result has more than %ld rows (RAPPORT_DB_MAX_ROWS)",
		         c->pool->max_rows);
		PQclear(r);
		conn_over_cap(c, msg);
		return false;
	}
	if (c->step == STEP_END || c->step == STEP_RESET) {
		if (st != PGRES_COMMAND_OK) {
			/* A session we cannot bring back to a clean state is not
			 * reused. */
			char msg[512];
			db_one_line(PQresultErrorMessage(r), msg, sizeof msg);
			log_event(LOG_WARN, "db session not reset", LOG_I("conn", c->idx),
			          LOG_S("error", msg), LOG_END);
			c->end_failed = true;
		}
		PQclear(r);
		return true;
	}
	/* One message gives one result; keep the first error if any, else
	 * the last result. */
	if (!c->res) {
		c->res = r;
	} else if (PQresultStatus(c->res) == PGRES_FATAL_ERROR) {
		PQclear(r);
	} else {
		PQclear(c->res);
		c->res = r;
	}
	return true;
}

static bool result_failed(const PGresult *r)
{
	ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
	return st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK;
}

/* PQgetResult returned NULL: the command being read is answered. BEGIN's
 * and Parse's own success is dropped (their error is kept as the query's);
 * the statement's rows become one result. Then the next command's turn. */
static void conn_walk_next(struct db_conn *c)
{
	db_query *q = c->q;

	switch (c->step) {
	case STEP_BEGIN:
	case STEP_PREPARE:
		if (c->res && !result_failed(c->res)) {
			if (c->step == STEP_PREPARE) {
				c->prepared = xrealloc(c->prepared,
				                       sizeof *c->prepared * (size_t)(c->nprepared + 1));
				c->prepared[c->nprepared++] = sql_hash(q->sql);
			}
			PQclear(c->res);
			c->res = NULL;
		}
		break;
	case STEP_QUERY:
		if (!c->res && c->rows) {
			c->res = c->rows;
			c->rows = NULL;
		} else if (c->rows) {        /* failed halfway: the error wins */
			PQclear(c->rows);
			c->rows = NULL;
		}
		break;
	case STEP_RESET:
		c->nprepared = 0;            /* DISCARD ALL deallocated them */
		break;
	default:
		break;
	}
	c->ci++;
	c->step = c->ci < c->ncmds ? c->cmds[c->ci] : STEP_NONE;
	if (c->step == STEP_QUERY && caps_on(c->pool))
		PQsetSingleRowMode(c->pg);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
	conn_flush(arg);
}

/* Reads the role check's answer (before pipeline mode). */
static void conn_read_check(struct db_conn *c)
{
	while (!PQisBusy(c->pg)) {
		PGresult *r = PQgetResult(c->pg);
		if (!r) {
			conn_check_done(c);
			return;
		}
		if (!conn_walk_result(c, r))
			return;
	}
}

/* Reads the walk's results in order: each command's results end with a
 * NULL, each Sync is one PGRES_PIPELINE_SYNC; the last Sync ends the walk. */
static void conn_read_walk(struct db_conn *c)
{
	while (!PQisBusy(c->pg)) {
		c->step = c->cmds[c->ci];
		PGresult *r = PQgetResult(c->pg);
		if (c->step == STEP_SYNC) {
			ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
			PQclear(r);
			if (st != PGRES_PIPELINE_SYNC) {
				conn_broken(c, "unexpected result in the pipeline");
				return;
			}
			if (++c->ci == c->ncmds) {
				conn_walk_finish(c);
				return;   /* c may be reused or gone: do not touch it */
			}
			/* A Sync is never followed by the statement (BEGIN or Parse
			 * comes first), so no single-row mode to set here. */
			c->step = c->cmds[c->ci];
			continue;
		}
		if (!r) {
			conn_walk_next(c);
			continue;
		}
		if (!conn_walk_result(c, r))
			return;
	}
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
	struct db_conn *c = arg;
	PGnotify *n;

	if (!PQconsumeInput(c->pg)) {
		if (c->state == CONN_CHECKING)
			conn_connect_failed(c, PQerrorMessage(c->pg));
		else
			conn_broken(c, PQerrorMessage(c->pg));
		return;
	}
	/* Nobody LISTENs on pool connections, but never let them pile up. */
	while ((n = PQnotifies(c->pg)))
		PQfreemem(n);
	/* The server may stop reading until we read (NOTICEs): retry the
	 * pending flush now that we have. */
	if (c->flushing && !conn_flush(c))
		return;
	if (c->state == CONN_CHECKING) {
		conn_read_check(c);
		return;
	}
	if (c->state != CONN_BUSY) {
		/* An idle session only talks when it is about to die (57P01
		 * arrives as a notice); the EOF that follows fails
		 * PQconsumeInput above. */
		if (PQstatus(c->pg) == CONNECTION_BAD)
			conn_broken(c, PQerrorMessage(c->pg));
		return;
	}
	conn_read_walk(c);
}

/* ---- the role check ------------------------------------------------------ */

/* What the session's role could change, as one row: user, database, the
 * problems ("" = none), the schemas it reads and the owners of what it
 * reads (both for the fix). Every role it may SET ROLE to counts as its
 * own; has_table_privilege already includes PUBLIC and pg_write_all_data. */
static const char role_check_sql[] =
	"with me as (\n"
	"  select oid, rolsuper, rolcreaterole from pg_roles\n"
	"  where pg_has_role(current_user, oid, 'MEMBER')\n"
	"), rels as (\n"
	"  select c.oid, n.nspname, c.relname, c.relkind, c.relowner\n"
	"  from pg_class c join pg_namespace n on n.oid = c.relnamespace\n"
	"  where c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')\n"
	"    and n.nspname <> 'information_schema' and n.nspname !~ '^pg_'\n"
	"    and has_schema_privilege(n.oid, 'USAGE')\n"
	"), writable as (\n"
	"  select format('%I.%I', r.nspname, r.relname) as name from rels r\n"
	"  where exists (select 1 from me where me.oid = r.relowner\n"
	"     or (r.relkind <> 'S' and has_table_privilege(me.oid, r.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER'))\n"
	"     or (r.relkind = 'S' and has_sequence_privilege(me.oid, r.oid, 'USAGE, UPDATE')))\n"
	"), creatable as (\n"
	"  select quote_ident(n.nspname) as name from pg_namespace n\n"
	"  where n.nspname <> 'information_schema' and n.nspname !~ '^pg_'\n"
	"    and has_schema_privilege(n.oid, 'CREATE')\n"
	")\n"
	"select quote_ident(current_user), quote_ident(current_database()),\n"
	"  concat_ws('; ',\n"
	"    case when exists (select 1 from me where rolsuper) then 'it is a superuser' end,\n"
	"    case when exists (select 1 from me where rolcreaterole) then 'it has CREATEROLE' end,\n"
	"    case when pg_has_role(current_user, 'pg_write_server_files', 'MEMBER')\n"
	"      then 'it may write files on the server (pg_write_server_files)' end,\n"
	"    case when pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER')\n"
	"      then 'it may run programs on the server (pg_execute_server_program)' end,\n"
	"    (select format('it owns or may write %s table(s): %s%s', count(*),\n"
	"                   array_to_string((array_agg(name order by name))[1:5], ', '),\n"
	"                   case when count(*) > 5 then ', ...' else '' end)\n"
	"       from writable having count(*) > 0),\n"
	"    (select 'it may create objects in schema ' || string_agg(name, ', ' order by name)\n"
	"       from creatable having count(*) > 0),\n"
	"    case when has_database_privilege(current_database(), 'CREATE')\n"
	"      then 'it may create schemas in the database' end),\n"
	"  coalesce((select string_agg(distinct quote_ident(nspname), ', ') from rels), 'public'),\n"
	"  coalesce((select string_agg(distinct quote_ident(pg_get_userbyid(relowner)), ', ') from rels),\n"
	"           quote_ident(current_user))\n";

/* Reads the check's row. Returns 1 read-only, 0 may write (*msg: why and
 * the SQL that fixes it), -1 the check itself failed (*msg: why). */
static int role_verdict(const PGresult *res, char **msg)
{
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1
	    || PQnfields(res) != 5) {
		char one[512];
		db_one_line(res ? PQresultErrorMessage(res) : "no result", one, sizeof one);
		*msg = xasprintf("the role check query failed: %s", one[0] ? one : "unexpected result");
		return -1;
	}
	const char *user = PQgetvalue(res, 0, 0), *dbname = PQgetvalue(res, 0, 1);
	const char *problems = PQgetvalue(res, 0, 2), *schemas = PQgetvalue(res, 0, 3);
	const char *owners = PQgetvalue(res, 0, 4);
	if (!*problems) {
		*msg = NULL;
		return 1;
	}
	*msg = xasprintf(
		"DATABASE_URL logs in as role %s, which can change the database: %s. Scripts' SQL "
		"runs on these connections, so rapport needs a role that can only read. As the "
		"owner of the tables, create one (or run sql/roles.sql):\n"
		"  CREATE ROLE rapport_reader LOGIN PASSWORD '...';\n"
		"  GRANT CONNECT ON DATABASE %s TO rapport_reader;\n"
		"  GRANT USAGE ON SCHEMA %s TO rapport_reader;\n"
		"  GRANT SELECT ON ALL TABLES IN SCHEMA %s TO rapport_reader;\n"
		"  ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA %s GRANT SELECT ON TABLES TO rapport_reader;\n"
		"%s"
		"then set DATABASE_URL to log in as rapport_reader. To run on this role anyway, set "
		"RAPPORT_DB_ALLOW_WRITE=1 (every script query still runs in a READ ONLY transaction). "
		"See docs/operations.md, \"The database role\".",
		user, problems, dbname, schemas, schemas, owners, schemas,
		strstr(problems, "may create objects")
			? "  REVOKE CREATE ON SCHEMA public FROM PUBLIC;  -- before PostgreSQL 15 everyone may create there\n"
			: "");
	return 0;
}

/* The check runs first on every new session: a role granted more after
 * start, or a database that was down at start, is caught too. */
static void conn_check_start(struct db_conn *c)
{
	struct timeval tv = { DB_CONNECT_TIMEOUT_MS / 1000, (DB_CONNECT_TIMEOUT_MS % 1000) * 1000 };
	c->state = CONN_CHECKING;
	c->step = STEP_CHECK;
	evtimer_add(c->timer, &tv);
	if (!PQsendQueryParams(c->pg, role_check_sql, 0, NULL, NULL, NULL, NULL, 0)) {
		conn_connect_failed(c, PQerrorMessage(c->pg));
		return;
	}
	int r = PQflush(c->pg);
	if (r < 0) {
		conn_connect_failed(c, PQerrorMessage(c->pg));
		return;
	}
	conn_set_flushing(c, r == 1);
}

static void conn_check_done(struct db_conn *c)
{
	db_pool *p = c->pool;
	char *msg = NULL;
	int v = role_verdict(c->res, &msg);

	PQclear(c->res);
	c->res = NULL;
	evtimer_del(c->timer);
	if (v == 1) {
		p->refused_logged = false;
		conn_up(c);
		return;
	}
	if (p->allow_write) {
		/* The operator said so; an unverifiable role is let in too. */
		if (!p->write_warned)
			log_event(LOG_WARN, "db role may write (RAPPORT_DB_ALLOW_WRITE=1)",
			          LOG_S("error", msg), LOG_END);
		p->write_warned = true;
		free(msg);
		conn_up(c);
		return;
	}
	/* Refused: the session never serves a query. Logged once, then the
	 * backoff keeps re-checking (the operator may fix the grants). */
	if (!p->refused_logged)
		log_event(LOG_ERROR, "db role refused", LOG_S("error", msg), LOG_END);
	p->refused_logged = true;
	c->backoff_ms = DB_BACKOFF_MAX_MS;
	conn_connect_failed(c, v == 0 ? "the database role may write (see the log)" : msg);
	free(msg);
}

enum db_role_status db_role_check(const char *conninfo, char **msg)
{
	const char *keys[] = { "connect_timeout", "dbname", "fallback_application_name", NULL };
	const char *vals[] = { "3", conninfo, "rapport-check", NULL };
	*msg = NULL;
	PGconn *pg = PQconnectdbParams(keys, vals, 1);
	if (!pg || PQstatus(pg) != CONNECTION_OK) {
		char one[512];
		db_one_line(pg ? PQerrorMessage(pg) : "out of memory", one, sizeof one);
		*msg = xstrdup(one);
		PQfinish(pg);
		return DB_ROLE_UNKNOWN;
	}
	PGresult *res = PQexecParams(pg, role_check_sql, 0, NULL, NULL, NULL, NULL, 0);
	int v = role_verdict(res, msg);
	PQclear(res);
	PQfinish(pg);
	/* Reachable but not checkable: as good as may-write (the pool would
	 * refuse every session anyway). */
	return v == 1 ? DB_ROLE_READ_ONLY : DB_ROLE_MAY_WRITE;
}

/* The query's own timer: deadline, or the periodic "is anything up" check
 * while queued. */
static void on_query_timer(evutil_socket_t fd, short what, void *arg)
{
	db_query *q = arg;
	db_pool *p = q->pool;

	if (q->state == Q_QUEUED) {
		if (q->timer_is_deadline) {
			pool_dequeue(p, q);
			query_fail(q, MSG_TIMEOUT, true);
		} else if (!pool_any_up(p)) {
			pool_dequeue(p, q);
			query_fail(q, p->down_class ? p->down_msg : MSG_UNAVAILABLE, true);
		} else {
			query_arm_wait(q);
		}
	} else if (q->state == Q_RUNNING) {
		struct db_conn *c = q->conn;
		log_event(LOG_WARN, "db query timed out", LOG_I("conn", c->idx),
		          LOG_I("timeout_ms", p->query_timeout_ms), LOG_END);
		/* No PQcancel (blocking in libpq 15): drop the session; the
		 * server-side statement_timeout stops the backend. */
		conn_restart(c);
		if (q->cb)
			query_fail(q, MSG_TIMEOUT, true);
		else
			query_free(q);
	}
}

/* ---- public API --------------------------------------------------------- */

/* Our settings are appended after the user's `options` from the conninfo so
 * that TimeZone/DateStyle, which rapport relies on, always win.
 * default_transaction_read_only is only a default (the same SQL can undo
 * it): the boundary is the role (checked on connect) and the READ ONLY
 * transaction each query runs in. */
static char *build_options(const char *conninfo, int query_timeout_ms)
{
	char *user = NULL;
	char *errmsg = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &errmsg);
	char *out;

	if (opts) {
		for (PQconninfoOption *o = opts; o->keyword; o++)
			if (strcmp(o->keyword, "options") == 0 && o->val && *o->val)
				user = xstrdup(o->val);
		PQconninfoFree(opts);
	}
	if (errmsg)
		PQfreemem(errmsg);
	if (query_timeout_ms > 0)
		out = xasprintf("-c statement_timeout=%d %s%s-c TimeZone=UTC -c DateStyle=ISO "
		                "-c default_transaction_read_only=on",
		                query_timeout_ms + DB_STMT_TIMEOUT_SLACK_MS,
		                user ? user : "", user ? " " : "");
	else
		out = xasprintf("%s%s-c TimeZone=UTC -c DateStyle=ISO -c default_transaction_read_only=on",
		                user ? user : "", user ? " " : "");
	free(user);
	return out;
}

/* A bare word is a database name to libpq; anything else must parse. */
bool db_conninfo_valid(const char *conninfo)
{
	char *errmsg = NULL;
	PQconninfoOption *opts;

	if (!strchr(conninfo, '=') && !strstr(conninfo, "://"))
		return true;
	opts = PQconninfoParse(conninfo, &errmsg);
	if (!opts) {
		char msg[512];
		db_one_line(errmsg ? errmsg : "out of memory", msg, sizeof msg);
		log_event(LOG_ERROR, "db bad conninfo", LOG_S("error", msg), LOG_END);
		if (errmsg)
			PQfreemem(errmsg);
		return false;
	}
	PQconninfoFree(opts);
	return true;
}

db_pool *db_pool_create(struct event_base *base, const char *conninfo,
                        int size, int query_timeout_ms)
{
	db_pool *p;
	int k = 0;

	if (!base || !conninfo || size < 1 || size > 1000 || !db_conninfo_valid(conninfo))
		return NULL;
	p = xcalloc(1, sizeof *p);
	p->base = base;
	p->size = size;
	p->query_timeout_ms = query_timeout_ms > 0 ? query_timeout_ms : 0;
	p->prepare = true;
	p->role_check = true;
	p->max_rows = DB_DEFAULT_MAX_ROWS;
	p->max_bytes = DB_DEFAULT_MAX_BYTES;
	p->conninfo = xstrdup(conninfo);
	p->options = build_options(conninfo, p->query_timeout_ms);
	TAILQ_INIT(&p->queue);
	TAILQ_INIT(&p->failing);

	/* Order matters: later keywords override earlier ones. Keepalives go
	 * before dbname so the conninfo may override them; options after, as
	 * it already contains the user's options. */
	p->keys[k] = "keepalives";          p->vals[k++] = "1";
	p->keys[k] = "keepalives_idle";     p->vals[k++] = "30";
	p->keys[k] = "keepalives_interval"; p->vals[k++] = "10";
	p->keys[k] = "dbname";              p->vals[k++] = p->conninfo;
	p->keys[k] = "options";             p->vals[k++] = p->options;
	p->keys[k] = "fallback_application_name"; p->vals[k++] = "rapport";
	p->keys[k] = NULL;                  p->vals[k] = NULL;

	p->fail_ev = evtimer_new(base, on_fail_tick, p);
	p->conns = xcalloc((size_t)size, sizeof *p->conns);
	if (!p->fail_ev) {
		pool_free(p);
		return NULL;
	}
	for (int i = 0; i < size; i++) {
		struct db_conn *c = &p->conns[i];
		c->pool = p;
		c->idx = i;
		c->backoff_ms = DB_BACKOFF_MIN_MS;
		c->state = CONN_BACKOFF;
		c->timer = evtimer_new(base, on_conn_timer, c);
		if (!c->timer) {
			pool_free(p);
			return NULL;
		}
	}
	for (int i = 0; i < size; i++)
		conn_start(&p->conns[i]);
	return p;
}

/* Frees memory only; connections are closed and queries gone by now. */
static void pool_free(db_pool *p)
{
	if (p->conns) {
		for (int i = 0; i < p->size; i++) {
			struct db_conn *c = &p->conns[i];
			if (c->pool)
				conn_close(c);
			if (c->timer)
				event_free(c->timer);
			free(c->prepared);
		}
		free(p->conns);
	}
	if (p->fail_ev)
		event_free(p->fail_ev);
	free(p->conninfo);
	free(p->options);
	free(p);
}

void db_pool_destroy(db_pool *p)
{
	db_query *q;

	if (!p || p->destroying)
		return;
	p->destroying = true;
	evtimer_del(p->fail_ev);
	for (int i = 0; i < p->size; i++) {
		struct db_conn *c = &p->conns[i];
		q = c->q;
		c->q = NULL;
		conn_close(c);
		c->state = CONN_CLOSED;
		if (q) {
			if (q->cb)
				query_fail_later(q, MSG_SHUTDOWN, true);
			else
				query_free(q);
		}
	}
	while ((q = TAILQ_FIRST(&p->queue))) {
		pool_dequeue(p, q);
		query_fail_later(q, MSG_SHUTDOWN, true);
	}
	/* Callbacks may send (they fail into this list) or cancel others. */
	while ((q = TAILQ_FIRST(&p->failing))) {
		TAILQ_REMOVE(&p->failing, q, link);
		p->cb_depth++;       /* keep query_finish from freeing the pool */
		query_fail(q, q->fail_msg, q->fail_unavailable);
		p->cb_depth--;
	}
	if (p->cb_depth > 0)
		p->dead = true;      /* called from a callback: freed when it returns */
	else
		pool_free(p);
}

static db_query *query_send(db_pool *pool, const char *sql, int nparams,
                            const char *const *params, db_query_cb *cb, void *arg, bool adhoc)
{
	db_query *q;

	if (!pool || !sql || nparams < 0 || (nparams > 0 && !params) || !cb)
		return NULL;
	q = xcalloc(1, sizeof *q);
	q->pool = pool;
	q->sql = xstrdup(sql);
	q->adhoc = adhoc;
	q->nparams = nparams;
	if (nparams > 0) {
		q->params = xcalloc((size_t)nparams, sizeof *q->params);
		for (int i = 0; i < nparams; i++)
			q->params[i] = params[i] ? xstrdup(params[i]) : NULL;
	}
	q->cb = cb;
	q->arg = arg;
	q->timer = evtimer_new(pool->base, on_query_timer, q);
	if (!q->timer) {
		query_free(q);
		return NULL;
	}
	if (pool->query_timeout_ms > 0)
		q->deadline_ms = util_now_ms() + pool->query_timeout_ms;

	/* libpq would refuse it halfway through a pipeline. */
	if (nparams > 65535) {
		query_fail_later(q, "number of parameters must be between 0 and 65535", false);
		return q;
	}
	if (pool->down || pool->destroying) {
		query_fail_later(q, pool->destroying ? MSG_SHUTDOWN
		                    : pool->down_class ? pool->down_msg : MSG_UNAVAILABLE, true);
		return q;
	}
	q->state = Q_QUEUED;
	TAILQ_INSERT_TAIL(&pool->queue, q, link);
	pool->nqueued++;
	query_arm_wait(q);
	pool_dispatch(pool);
	return q;
}

db_query *db_query_send(db_pool *pool, const char *sql, int nparams,
                        const char *const *params, db_query_cb *cb, void *arg)
{
	return query_send(pool, sql, nparams, params, cb, arg, false);
}

db_query *db_query_send_adhoc(db_pool *pool, const char *sql, int nparams,
                              const char *const *params, db_query_cb *cb, void *arg)
{
	return query_send(pool, sql, nparams, params, cb, arg, true);
}

void db_query_cancel(db_query *q)
{
	if (!q)
		return;
	switch (q->state) {
	case Q_QUEUED:
		pool_dequeue(q->pool, q);
		query_free(q);
		break;
	case Q_FAILING:
		TAILQ_REMOVE(&q->pool->failing, q, link);
		query_free(q);
		break;
	case Q_RUNNING:
		/* Let it finish and drop the result; its timer stays armed so
		 * a query that never ends still frees its connection. */
		q->cb = NULL;
		break;
	case Q_DONE:
		q->cb = NULL;
		break;
	}
}

bool db_pool_is_up(const db_pool *pool)
{
	return pool && pool_any_up(pool);
}

void db_pool_stats(const db_pool *pool, struct db_stats *out)
{
	memset(out, 0, sizeof *out);
	if (!pool)
		return;
	out->size = pool->size;
	out->queued = pool->nqueued;
	for (int i = 0; i < pool->size; i++) {
		const struct db_conn *c = &pool->conns[i];
		if (conn_is_up(c))
			out->connected++;
		if (c->state == CONN_BUSY)
			out->busy++;
	}
}

void
db_pool_set_prepare(db_pool *p, bool on)
{
	p->prepare = on;
}

void
db_pool_set_role_check(db_pool *p, bool on, bool allow_write)
{
	p->role_check = on;
	p->allow_write = allow_write;
}

void
db_pool_set_result_caps(db_pool *p, long max_rows, size_t max_bytes)
{
	p->max_rows = max_rows > 0 ? max_rows : 0;
	p->max_bytes = max_bytes;
}
