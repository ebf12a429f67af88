/*
 * state — rapport's own schema on a connection of its own (see state.h).
 *
 * This unit owns one libpq connection, its events, the statement queue and
 * the migration table below. The connection is in one explicit state, in
 * the style of db_listen.c:
 *   BACKOFF     no socket; s->timer starts the next attempt
 *   CONNECTING  PQconnectPoll loop on one-shot events (s->io); s->timer is
 *               the connect budget
 *   MIGRATING   connected; the migration steps run one after another
 *   UP          migrated; the queue's head statement runs, the rest wait
 *
 * Data flow:
 *   PQconnectStartParams ─► PQconnectPoll steps ─► migrate: settings,
 *   BEGIN + advisory lock + schema + version table ─► each newer migration
 *   and its schema_migrations row ─► COMMIT ─► UP, on_up()
 *   ─► state_send() appends ─► PQsendQueryParams(head) ─► persistent
 *   EV_READ: PQconsumeInput, PQgetResult until NULL ─► head's callback
 *   ─► next head.
 *
 * Any failure (connect, a migration step, a broken socket, the statement
 * watchdog) ends the same way: PQfinish, every queued statement's callback
 * with the error, a new attempt after the backoff. We never PQreset, and
 * nothing here blocks (same host-name caveat as db.c).
 */
#include "state.h"
#include "db.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "log.h"
#include "util.h"

#define STATE_CONNECT_TIMEOUT_MS 5000
#define STATE_BACKOFF_MIN_MS      100
#define STATE_BACKOFF_MAX_MS     5000
/* Any constant will do, as long as it is always the same one: every
 * instance migrating the schema takes this transaction-level lock first. */
#define STATE_MIGRATION_LOCK "7467201948253"

/* rapport's schema, one numbered step at a time. Append; never edit an
 * entry that has shipped (instances compare version numbers only). Each
 * runs inside the migration transaction, as one simple-protocol string. */
static const struct state_migration {
	int version;
	const char *name;
	const char *sql;
} migrations[] = {
	{ 1, "warm jobs and their items",
	  "CREATE TABLE rapport.jobs ("
	  "  id          bigserial PRIMARY KEY,"
	  "  state       text NOT NULL DEFAULT 'queued'"
	  "              CHECK (state IN ('queued','running','done','cancelled','failed')),"
	  "  origin      text NOT NULL DEFAULT 'api',"
	  "  spec        jsonb NOT NULL,"
	  "  types       text[] NOT NULL,"
	  "  total       integer NOT NULL DEFAULT 0,"
	  "  period_slot bigint,"
	  "  error       text,"
	  "  created_at  timestamptz NOT NULL DEFAULT now(),"
	  "  started_at  timestamptz,"
	  "  finished_at timestamptz);"
	  "CREATE UNIQUE INDEX jobs_period_slot_key ON rapport.jobs (period_slot)"
	  "  WHERE period_slot IS NOT NULL;"
	  "CREATE INDEX jobs_open_idx ON rapport.jobs (id) WHERE state IN ('queued','running');"
	  "CREATE TABLE rapport.job_items ("
	  "  job         bigint NOT NULL REFERENCES rapport.jobs (id) ON DELETE CASCADE,"
	  "  contact     bigint NOT NULL,"
	  "  type        text NOT NULL,"
	  "  state       text NOT NULL DEFAULT 'pending' CHECK (state IN"
	  "              ('pending','running','done','fresh','revalidated','failed','cancelled')),"
	  "  attempts    integer NOT NULL DEFAULT 0,"
	  "  lease_owner text,"
	  "  lease_until timestamptz,"
	  "  outcome     text,"
	  "  done_by     text,"
	  "  finished_at timestamptz,"
	  "  PRIMARY KEY (job, contact, type));"
	  "CREATE INDEX job_items_open_idx ON rapport.job_items (job, contact, type)"
	  "  WHERE state IN ('pending','running');" },
	/* Votes on insights (feedback.c). feedback_counts is kept by a
	 * trigger in the voting transaction, so it is never behind the
	 * votes and /v1/analysis-types reads one row per (type, version)
	 * however many votes there are; a vote deleted by hand (spam) is
	 * taken off too, and one changed by hand (its verdict, type or
	 * version) moves (the old counted off, the new on). TRUNCATE fires
	 * no row trigger: docs/operations.md gives the recount. */
	{ 2, "feedback on insights and its counts per script version",
	  "CREATE TABLE rapport.feedback ("
	  "  id             bigserial PRIMARY KEY,"
	  "  contact_id     bigint NOT NULL,"
	  "  type           text NOT NULL,"
	  "  script_version text NOT NULL,"
	  "  verdict        text NOT NULL CHECK (verdict IN ('up','down')),"
	  "  reason         text,"
	  "  generated_at   timestamptz,"
	  "  request_id     text,"
	  "  instance       text,"
	  "  created_at     timestamptz NOT NULL DEFAULT now());"
	  "CREATE INDEX feedback_type_latest_idx ON rapport.feedback (type, created_at DESC, id DESC);"
	  "CREATE TABLE rapport.feedback_counts ("
	  "  type           text NOT NULL,"
	  "  script_version text NOT NULL,"
	  "  up             bigint NOT NULL DEFAULT 0,"
	  "  down           bigint NOT NULL DEFAULT 0,"
	  "  last_at        timestamptz,"
	  "  PRIMARY KEY (type, script_version));"
	  "CREATE FUNCTION rapport.feedback_count() RETURNS trigger LANGUAGE plpgsql AS $f$"
	  " BEGIN"
	  "  IF TG_OP IN ('UPDATE', 'DELETE') THEN"
	  "   UPDATE rapport.feedback_counts"
	  "      SET up = up - (OLD.verdict = 'up')::int, down = down - (OLD.verdict = 'down')::int"
	  "    WHERE type = OLD.type AND script_version = OLD.script_version;"
	  "  END IF;"
	  "  IF TG_OP IN ('INSERT', 'UPDATE') THEN"
	  "   INSERT INTO rapport.feedback_counts AS c (type, script_version, up, down, last_at)"
	  "   VALUES (NEW.type, NEW.script_version, (NEW.verdict = 'up')::int,"
	  "           (NEW.verdict = 'down')::int, NEW.created_at)"
	  "   ON CONFLICT (type, script_version) DO UPDATE"
	  "     SET up = c.up + EXCLUDED.up, down = c.down + EXCLUDED.down,"
	  "         last_at = greatest(c.last_at, EXCLUDED.last_at);"
	  "  END IF;"
	  "  RETURN NULL;"
	  " END $f$;"
	  "CREATE TRIGGER feedback_count"
	  "  AFTER INSERT OR UPDATE OF type, script_version, verdict OR DELETE ON rapport.feedback"
	  "  FOR EACH ROW EXECUTE FUNCTION rapport.feedback_count();" },
};
#define NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

enum conn_state { S_BACKOFF, S_CONNECTING, S_MIGRATING, S_UP };

/* Migration steps, in order; M_APPLY and M_RECORD repeat per migration. */
enum mig_step { M_SETTINGS, M_LOCK, M_APPLY, M_RECORD, M_COMMIT };

struct state_stmt {
	TAILQ_ENTRY(state_stmt) link;
	state_db *db;
	char *sql;
	int nparams;
	char **params;
	state_cb *cb;
	void *arg;
	bool cancelled;     /* sent, then cancelled: its result is dropped */
};
TAILQ_HEAD(stmt_list, state_stmt);

struct state_db {
	struct event_base *base;
	const char *keys[8];
	const char *vals[8];
	char *conninfo;
	int timeout_ms;
	enum conn_state state;
	PGconn *pg;
	struct event *io;         /* one-shot connect step */
	struct event *rd;         /* persistent EV_READ once connected */
	struct event *wr;         /* EV_WRITE while PQflush has more to send */
	struct event *timer;      /* connect budget, backoff, or statement watchdog */
	struct event *kick;       /* zero-delay: send the head outside state_send() */
	int backoff_ms;
	int failures;
	bool busy;                /* a statement (or migration step) is out */
	PGresult *res;            /* its result, kept until PQgetResult says NULL */
	struct stmt_list queue;   /* head is the one out when busy && UP */
	int queued;
	enum mig_step step;
	int mig_index;            /* next entry of migrations[] to apply */
	int version;              /* recorded in schema_migrations */
	char error[512];          /* last failure, for /readyz */
	state_up_cb *on_up;
	void *on_up_arg;
};

static void conn_start(state_db *s);
static void pump(state_db *s);

/* ---- statements --------------------------------------------------------- */

static void
stmt_free(state_stmt *st)
{
	for (int i = 0; i < st->nparams; i++)
		free(st->params[i]);
	free(st->params);
	free(st->sql);
	free(st);
}

/* Unlinks the head and runs its callback (unless cancelled). */
static void
stmt_finish(state_db *s, state_stmt *st, const PGresult *res, const char *err)
{
	TAILQ_REMOVE(&s->queue, st, link);
	s->queued--;
	if (!st->cancelled)
		st->cb(st->arg, res, err);
	stmt_free(st);
}

/* ---- connection lifetime ------------------------------------------------ */

static void
conn_close(state_db *s)
{
	if (s->io) {
		event_free(s->io);
		s->io = NULL;
	}
	if (s->rd) {
		event_free(s->rd);
		s->rd = NULL;
	}
	if (s->wr) {
		event_free(s->wr);
		s->wr = NULL;
	}
	if (s->timer)
		evtimer_del(s->timer);
	if (s->res) {
		PQclear(s->res);
		s->res = NULL;
	}
	if (s->pg) {
		PQfinish(s->pg);
		s->pg = NULL;
	}
	s->busy = false;
}

/* Every failure: close, fail the queue, retry after the backoff. The first
 * failure of a streak is a warning, the retries are debug noise. */
static void
conn_failed(state_db *s, const char *what, const char *why)
{
	char msg[480];
	db_one_line(why, msg, sizeof msg);
	snprintf(s->error, sizeof s->error, "%s: %s", what, msg);
	bool was_up = s->state == S_UP;
	log_event(was_up || s->failures == 0 ? LOG_WARN : LOG_DEBUG,
	          was_up ? "state db lost" : "state db unavailable", LOG_S("error", s->error),
	          LOG_I("retry_ms", s->backoff_ms), LOG_END);
	s->failures++;
	conn_close(s);
	s->state = S_BACKOFF;
	struct timeval tv = { s->backoff_ms / 1000, (s->backoff_ms % 1000) * 1000 };
	evtimer_add(s->timer, &tv);
	s->backoff_ms *= 2;
	if (s->backoff_ms > STATE_BACKOFF_MAX_MS)
		s->backoff_ms = STATE_BACKOFF_MAX_MS;
	/* Callbacks may send again: refused now, since we are not up. */
	state_stmt *st;
	while ((st = TAILQ_FIRST(&s->queue)))
		stmt_finish(s, st, NULL, s->error);
}

static void on_read(evutil_socket_t fd, short what, void *arg);
static void on_write(evutil_socket_t fd, short what, void *arg);
static void on_connect_io(evutil_socket_t fd, short what, void *arg);

static bool
conn_flush(state_db *s)
{
	int r = PQflush(s->pg);
	if (r < 0) {
		conn_failed(s, "write", PQerrorMessage(s->pg));
		return false;
	}
	if (r == 1)
		event_add(s->wr, NULL);
	else
		event_del(s->wr);
	return true;
}

/* Sends one statement (simple protocol when nparams < 0, for the
 * multi-statement migration strings) and arms the watchdog. */
static bool
conn_send(state_db *s, const char *sql, int nparams, const char *const *params)
{
	int ok = nparams < 0 ? PQsendQuery(s->pg, sql)
	                     : PQsendQueryParams(s->pg, sql, nparams, NULL, params, NULL, NULL, 0);
	if (!ok) {
		conn_failed(s, "send", PQerrorMessage(s->pg));
		return false;
	}
	s->busy = true;
	/* The server's statement_timeout ends a slow statement first; this
	 * catches a server that stopped answering at all. */
	int ms = s->timeout_ms + 2000;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(s->timer, &tv);
	return conn_flush(s);
}

/* ---- migrations --------------------------------------------------------- */

static void
migrate_send(state_db *s)
{
	char v[16], ms[16];
	switch (s->step) {
	case M_SETTINGS: {
		snprintf(ms, sizeof ms, "%d", s->timeout_ms);
		const char *p[] = { ms };
		conn_send(s, "SELECT set_config('statement_timeout', $1, false),"
		             " set_config('TimeZone', 'UTC', false)", 1, p);
		return;
	}
	case M_LOCK:
		conn_send(s, "BEGIN;"
		             "SELECT pg_advisory_xact_lock(" STATE_MIGRATION_LOCK ");"
		             "SET LOCAL client_min_messages = warning;"
		             /* Not CREATE SCHEMA IF NOT EXISTS: that needs CREATE on
		              * the database even when the schema exists, and a role
		              * given only its own schema has not. */
		             "DO $$ BEGIN"
		             "  IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'rapport')"
		             "  THEN CREATE SCHEMA rapport; END IF;"
		             " END $$;"
		             "CREATE TABLE IF NOT EXISTS rapport.schema_migrations ("
		             "  version    integer PRIMARY KEY,"
		             "  name       text NOT NULL,"
		             "  applied_at timestamptz NOT NULL DEFAULT now());"
		             "SELECT coalesce(max(version), 0) FROM rapport.schema_migrations",
		          -1, NULL);
		return;
	case M_APPLY:
		conn_send(s, migrations[s->mig_index].sql, -1, NULL);
		return;
	case M_RECORD: {
		snprintf(v, sizeof v, "%d", migrations[s->mig_index].version);
		const char *p[] = { v, migrations[s->mig_index].name };
		conn_send(s, "INSERT INTO rapport.schema_migrations (version, name) VALUES ($1, $2)", 2, p);
		return;
	}
	case M_COMMIT:
		conn_send(s, "COMMIT", -1, NULL);
		return;
	}
}

/* The next migration newer than the recorded version, or M_COMMIT. */
static void
migrate_next_apply(state_db *s)
{
	while (s->mig_index < NMIGRATIONS && migrations[s->mig_index].version <= s->version)
		s->mig_index++;
	s->step = s->mig_index < NMIGRATIONS ? M_APPLY : M_COMMIT;
}

/* One migration step's result arrived. Returns false when the connection
 * was given up. */
static bool
migrate_result(state_db *s, const PGresult *res)
{
	ExecStatusType st = PQresultStatus(res);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		char what[96];
		snprintf(what, sizeof what, "migration step %d%s%s", (int)s->step,
		         s->step == M_APPLY || s->step == M_RECORD ? " of migration " : "",
		         s->step == M_APPLY || s->step == M_RECORD ? migrations[s->mig_index].name : "");
		conn_failed(s, what, PQresultErrorMessage(res));
		return false;
	}
	switch (s->step) {
	case M_SETTINGS:
		s->step = M_LOCK;
		break;
	case M_LOCK: {
		int64_t v = 0;
		if (PQntuples(res) == 1)
			util_parse_i64(PQgetvalue(res, 0, 0), &v);
		s->version = (int)v;
		if (s->version > state_latest_version())
			log_event(LOG_WARN, "state schema is newer than this binary",
			          LOG_I("schema_version", s->version),
			          LOG_I("known_version", state_latest_version()), LOG_END);
		s->mig_index = 0;
		migrate_next_apply(s);
		break;
	}
	case M_APPLY:
		s->step = M_RECORD;
		break;
	case M_RECORD:
		log_event(LOG_INFO, "state migration applied",
		          LOG_I("version", migrations[s->mig_index].version),
		          LOG_S("name", migrations[s->mig_index].name), LOG_END);
		s->version = migrations[s->mig_index].version;
		s->mig_index++;
		migrate_next_apply(s);
		break;
	case M_COMMIT:
		s->state = S_UP;
		s->backoff_ms = STATE_BACKOFF_MIN_MS;
		s->failures = 0;
		s->error[0] = '\0';
		log_event(LOG_INFO, "state db up", LOG_I("schema_version", s->version), LOG_END);
		if (s->on_up)
			s->on_up(s->on_up_arg);
		return s->state == S_UP;
	}
	migrate_send(s);
	return s->state == S_MIGRATING;
}

/* ---- connecting --------------------------------------------------------- */

/* libpq would print notices on stderr, where only JSON log lines belong. */
static void
on_notice(void *arg, const PGresult *res)
{
	char msg[512];
	db_one_line(PQresultErrorMessage(res), msg, sizeof msg);
	log_event(LOG_DEBUG, "state db notice", LOG_S("message", msg), LOG_END);
}

static void
conn_connected(state_db *s)
{
	int fd = PQsocket(s->pg);
	event_free(s->io);
	s->io = NULL;
	evtimer_del(s->timer);
	if (fd < 0 || PQsetnonblocking(s->pg, 1) != 0) {
		conn_failed(s, "connect", PQerrorMessage(s->pg));
		return;
	}
	PQsetNoticeReceiver(s->pg, on_notice, s);
	s->rd = event_new(s->base, fd, EV_READ | EV_PERSIST, on_read, s);
	s->wr = event_new(s->base, fd, EV_WRITE, on_write, s);
	if (!s->rd || !s->wr || event_add(s->rd, NULL) != 0) {
		conn_failed(s, "connect", "cannot register socket with libevent");
		return;
	}
	s->state = S_MIGRATING;
	s->step = M_SETTINGS;
	migrate_send(s);
}

static void
conn_wait(state_db *s, short what)
{
	int fd = PQsocket(s->pg);
	if (s->io) {
		event_free(s->io);
		s->io = NULL;
	}
	if (fd < 0) {
		conn_failed(s, "connect", PQerrorMessage(s->pg));
		return;
	}
	s->io = event_new(s->base, fd, what, on_connect_io, s);
	if (!s->io || event_add(s->io, NULL) != 0)
		conn_failed(s, "connect", "cannot register socket with libevent");
}

static void
on_connect_io(evutil_socket_t fd, short what, void *arg)
{
	state_db *s = arg;
	switch (PQconnectPoll(s->pg)) {
	case PGRES_POLLING_READING:
		conn_wait(s, EV_READ);
		break;
	case PGRES_POLLING_WRITING:
		conn_wait(s, EV_WRITE);
		break;
	case PGRES_POLLING_OK:
		conn_connected(s);
		break;
	default:
		conn_failed(s, "connect", PQerrorMessage(s->pg));
		break;
	}
}

static void
conn_start(state_db *s)
{
	struct timeval tv = { STATE_CONNECT_TIMEOUT_MS / 1000, (STATE_CONNECT_TIMEOUT_MS % 1000) * 1000 };
	s->state = S_CONNECTING;
	s->pg = PQconnectStartParams(s->keys, s->vals, 1);
	if (!s->pg) {
		conn_failed(s, "connect", "out of memory");
		return;
	}
	if (PQstatus(s->pg) == CONNECTION_BAD) {
		conn_failed(s, "connect", PQerrorMessage(s->pg));
		return;
	}
	evtimer_add(s->timer, &tv);
	conn_wait(s, EV_WRITE);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	state_db *s = arg;
	if (s->state == S_BACKOFF)
		conn_start(s);
	else if (s->state == S_CONNECTING)
		conn_failed(s, "connect", "timeout expired while connecting");
	else if (s->busy)
		conn_failed(s, "statement", "no answer from the state database in time");
}

/* ---- up ----------------------------------------------------------------- */

/* Sends the queue's head if nothing is out. */
static void
pump(state_db *s)
{
	state_stmt *st = TAILQ_FIRST(&s->queue);
	if (s->state != S_UP || s->busy || !st)
		return;
	conn_send(s, st->sql, st->nparams, (const char *const *)st->params);
}

/* PQgetResult said NULL: the statement (or step) out is complete. */
static void
conn_result_done(state_db *s)
{
	PGresult *res = s->res;
	s->res = NULL;
	s->busy = false;
	evtimer_del(s->timer);
	if (s->state == S_MIGRATING) {
		if (res) {
			migrate_result(s, res);
		} else {
			conn_failed(s, "migration", "no result");
		}
		PQclear(res);
		return;
	}
	state_stmt *st = TAILQ_FIRST(&s->queue);
	ExecStatusType rs = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	if (st) {
		if (rs == PGRES_TUPLES_OK || rs == PGRES_COMMAND_OK) {
			stmt_finish(s, st, res, NULL);
		} else {
			char msg[480];
			db_one_line(res ? PQresultErrorMessage(res) : "no result", msg, sizeof msg);
			stmt_finish(s, st, NULL, msg);
		}
	}
	PQclear(res);
}

static void
on_write(evutil_socket_t fd, short what, void *arg)
{
	conn_flush(arg);
}

static void
on_kick(evutil_socket_t fd, short what, void *arg)
{
	pump(arg);
}

static void
on_read(evutil_socket_t fd, short what, void *arg)
{
	state_db *s = arg;
	if (!PQconsumeInput(s->pg)) {
		conn_failed(s, "read", PQerrorMessage(s->pg));
		return;
	}
	while (s->busy && !PQisBusy(s->pg)) {
		PGresult *r = PQgetResult(s->pg);
		if (!r) {
			conn_result_done(s);
			if (s->state == S_BACKOFF)
				return;      /* a migration step failed */
			continue;
		}
		/* Keep the first error, else the last result. */
		if (!s->res) {
			s->res = r;
		} else if (PQresultStatus(s->res) == PGRES_FATAL_ERROR) {
			PQclear(r);
		} else {
			PQclear(s->res);
			s->res = r;
		}
	}
	if (s->state == S_BACKOFF)
		return;
	PGnotify *n;
	while ((n = PQnotifies(s->pg)))
		PQfreemem(n);
	if (PQstatus(s->pg) == CONNECTION_BAD) {
		conn_failed(s, "read", PQerrorMessage(s->pg));
		return;
	}
	pump(s);
}

/* ---- public API --------------------------------------------------------- */

int
state_latest_version(void)
{
	return migrations[NMIGRATIONS - 1].version;
}

state_db *
state_create(struct event_base *base, const char *conninfo, int timeout_ms)
{
	if (!base || !conninfo || !db_conninfo_valid(conninfo))
		return NULL;
	state_db *s = xcalloc(1, sizeof *s);
	s->base = base;
	s->conninfo = xstrdup(conninfo);
	s->timeout_ms = timeout_ms > 0 ? timeout_ms : 10000;
	s->backoff_ms = STATE_BACKOFF_MIN_MS;
	s->state = S_BACKOFF;
	TAILQ_INIT(&s->queue);
	int k = 0;
	s->keys[k] = "keepalives";          s->vals[k++] = "1";
	s->keys[k] = "keepalives_idle";     s->vals[k++] = "30";
	s->keys[k] = "keepalives_interval"; s->vals[k++] = "10";
	s->keys[k] = "keepalives_count";    s->vals[k++] = "3";
	s->keys[k] = "dbname";              s->vals[k++] = s->conninfo;
	s->keys[k] = "fallback_application_name"; s->vals[k++] = "rapport-state";
	s->keys[k] = NULL;                  s->vals[k] = NULL;
	s->timer = evtimer_new(base, on_timer, s);
	s->kick = evtimer_new(base, on_kick, s);
	if (!s->timer || !s->kick) {
		if (s->timer)
			event_free(s->timer);
		if (s->kick)
			event_free(s->kick);
		free(s->conninfo);
		free(s);
		return NULL;
	}
	conn_start(s);
	return s;
}

void
state_destroy(state_db *s)
{
	if (!s)
		return;
	conn_close(s);
	state_stmt *st;
	while ((st = TAILQ_FIRST(&s->queue))) {
		TAILQ_REMOVE(&s->queue, st, link);
		stmt_free(st);
	}
	event_free(s->timer);
	event_free(s->kick);
	free(s->conninfo);
	free(s);
}

void
state_set_on_up(state_db *s, state_up_cb *cb, void *arg)
{
	s->on_up = cb;
	s->on_up_arg = arg;
}

bool
state_is_up(const state_db *s)
{
	return s && s->state == S_UP;
}

const char *
state_status(const state_db *s, const char **error)
{
	if (error)
		*error = s ? s->error : "";
	if (!s)
		return "down";
	switch (s->state) {
	case S_UP: return "up";
	case S_MIGRATING: return "migrating";
	case S_CONNECTING: return s->failures ? "down" : "connecting";
	default: return "down";
	}
}

int
state_schema_version(const state_db *s)
{
	return s ? s->version : 0;
}

state_stmt *
state_send(state_db *s, const char *sql, int nparams, const char *const *params, state_cb *cb,
           void *arg)
{
	if (!state_is_up(s) || s->queued >= STATE_MAX_QUEUE || !cb)
		return NULL;
	state_stmt *st = xcalloc(1, sizeof *st);
	st->db = s;
	st->sql = xstrdup(sql);
	st->nparams = nparams;
	if (nparams > 0) {
		st->params = xcalloc((size_t)nparams, sizeof(char *));
		for (int i = 0; i < nparams; i++)
			st->params[i] = params[i] ? xstrdup(params[i]) : NULL;
	}
	st->cb = cb;
	st->arg = arg;
	TAILQ_INSERT_TAIL(&s->queue, st, link);
	s->queued++;
	/* Sent from the loop, so cb (even a failure's) never runs inside
	 * this call. */
	if (!s->busy) {
		struct timeval zero = { 0, 0 };
		evtimer_add(s->kick, &zero);
	}
	return st;
}

void
state_cancel(state_stmt *st)
{
	if (!st)
		return;
	state_db *s = st->db;
	if (st == TAILQ_FIRST(&s->queue) && s->busy) {
		st->cancelled = true;     /* out on the wire: drop its result */
		return;
	}
	TAILQ_REMOVE(&s->queue, st, link);
	s->queued--;
	stmt_free(st);
}
