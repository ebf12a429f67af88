/*
 * query_columns — see query_columns.h. A catalog of SQL text → the
 * PGresult of its description (attributes only), and sample rows made with
 * libpq's own PQcopyResult/PQsetvalue, so the rows cross into Lua through
 * script_run_add_rows exactly as real ones do.
 */
#include "query_columns.h"
#include "db.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct qcol_entry {
	char *sql;
	PGresult *desc;      /* NULL when the database refused the SQL */
	char *error;         /* then why */
};

struct qcols {
	char *conninfo;
	char **pending;      /* SQL met while blocking was off: to learn on the pool */
	int npending;
	int in_flight;       /* background descriptions not answered yet */
	bool learnt;         /* ... and whether one of them taught something */
	void (*on_learnt)(void *);
	void *on_learnt_arg;
	PGconn *conn;
	bool may_block;
	bool tried;          /* a connection was attempted (and failed: unreachable) */
	char *unreachable;
	struct qcol_entry *e;
	int n;
};

qcols *
qcols_create(const char *conninfo)
{
	qcols *qc = xcalloc(1, sizeof *qc);
	qc->conninfo = xstrdup(conninfo);
	qc->may_block = true;
	return qc;
}

void
qcols_destroy(qcols *qc)
{
	if (!qc)
		return;
	if (qc->conn)
		PQfinish(qc->conn);
	for (int i = 0; i < qc->n; i++) {
		free(qc->e[i].sql);
		PQclear(qc->e[i].desc);
		free(qc->e[i].error);
	}
	free(qc->e);
	for (int i = 0; i < qc->npending; i++)
		free(qc->pending[i]);
	free(qc->pending);
	free(qc->unreachable);
	free(qc->conninfo);
	free(qc);
}

void
qcols_allow_blocking(qcols *qc, bool on)
{
	qc->may_block = on;
	if (!on && qc->conn) {
		PQfinish(qc->conn);
		qc->conn = NULL;
	}
}

const char *
qcols_unreachable(const qcols *qc)
{
	return qc->unreachable;
}

/* The one connection, opened on first need; NULL when it cannot be. */
static PGconn *
conn_get(qcols *qc)
{
	if (qc->conn)
		return qc->conn;
	if (!qc->may_block || qc->tried)
		return NULL;
	qc->tried = true;
	/* expand_dbname: conninfo may be a URI or key=value pairs; the
	 * later keys win, so the timeout holds whatever it says. */
	const char *keys[] = { "dbname", "connect_timeout", "application_name", NULL };
	const char *vals[] = { qc->conninfo, "3", "rapport-check", NULL };
	PGconn *c = PQconnectdbParams(keys, vals, 1);
	if (!c || PQstatus(c) != CONNECTION_OK) {
		char line[512];
		db_one_line(c ? PQerrorMessage(c) : "out of memory", line, sizeof line);
		qc->unreachable = xstrdup(line);
		PQfinish(c);
		return NULL;
	}
	qc->conn = c;
	return c;
}

static void
add_entry(qcols *qc, struct qcol_entry e)
{
	qc->e = xrealloc(qc->e, sizeof *qc->e * (size_t)(qc->n + 1));
	qc->e[qc->n++] = e;
}

/* SQL to describe later, on the pool (qcols_learn_pending). */
static void
remember_pending(qcols *qc, const char *sql)
{
	for (int i = 0; i < qc->npending; i++)
		if (strcmp(qc->pending[i], sql) == 0)
			return;
	qc->pending = xrealloc(qc->pending, sizeof *qc->pending * (size_t)(qc->npending + 1));
	qc->pending[qc->npending++] = xstrdup(sql);
}

static struct qcol_entry *
lookup(qcols *qc, const char *sql)
{
	for (int i = 0; i < qc->n; i++)
		if (strcmp(qc->e[i].sql, sql) == 0)
			return &qc->e[i];
	PGconn *c = conn_get(qc);
	if (!c) {
		if (!qc->may_block)
			remember_pending(qc, sql);
		return NULL;
	}
	/* The unnamed statement: prepared (parsed, planned), never executed. */
	PGresult *p = PQprepare(c, "", sql, 0, NULL);
	struct qcol_entry e = { xstrdup(sql), NULL, NULL };
	if (PQresultStatus(p) == PGRES_COMMAND_OK) {
		PQclear(p);
		p = PQdescribePrepared(c, "");
		if (PQresultStatus(p) == PGRES_COMMAND_OK)
			e.desc = p, p = NULL;
	}
	if (!e.desc) {
		char line[512];
		db_one_line(PQresultErrorMessage(p)[0] ? PQresultErrorMessage(p) : PQerrorMessage(c), line,
		            sizeof line);
		e.error = xstrdup(line);
	}
	PQclear(p);
	if (PQstatus(c) != CONNECTION_OK) {       /* lost meanwhile: ask no more */
		PQfinish(c);
		qc->conn = NULL;
	}
	add_entry(qc, e);
	return &qc->e[qc->n - 1];
}

/* ---- learning in the background, on the server's pool ----------------- */

struct learn {
	qcols *qc;
	char *sql;
};

static void
on_learnt(void *arg, const PGresult *res, const struct db_error *err)
{
	struct learn *l = arg;
	qcols *qc = l->qc;
	bool known = false;
	for (int i = 0; i < qc->n && !known; i++)
		known = strcmp(qc->e[i].sql, l->sql) == 0;
	if (!known && res) {
		PGresult *desc = PQcopyResult(res, PG_COPYRES_ATTRS);
		if (desc) {
			add_entry(qc, (struct qcol_entry){ xstrdup(l->sql), desc, NULL });
			qc->learnt = true;
		}
	} else if (!known && err && !err->unavailable) {
		/* The database refused the SQL: the check reports why. */
		add_entry(qc, (struct qcol_entry){ xstrdup(l->sql), NULL, xstrdup(err->message) });
		qc->learnt = true;
	}
	free(l->sql);
	free(l);
	if (--qc->in_flight == 0 && qc->learnt) {
		qc->learnt = false;
		if (qc->on_learnt)
			qc->on_learnt(qc->on_learnt_arg);
	}
}

int
qcols_learn_pending(qcols *qc, db_pool *pool, void (*done)(void *), void *arg)
{
	qc->on_learnt = done;
	qc->on_learnt_arg = arg;
	int sent = 0;
	/* The queries run as a request's would, with contact id 0 (no such
	 * contact: no rows, but every column named and typed), read-only. */
	static const char *const params[] = { "0" };
	for (int i = 0; i < qc->npending; i++) {
		struct learn *l = xcalloc(1, sizeof *l);
		l->qc = qc;
		l->sql = qc->pending[i];
		qc->in_flight++;
		if (db_query_send(pool, l->sql, 1, params, on_learnt, l))
			sent++;
		else {
			qc->in_flight--;
			free(l->sql);
			free(l);
		}
	}
	free(qc->pending);
	qc->pending = NULL;
	qc->npending = 0;
	return sent;
}

/* A sample value in PostgreSQL's text form for a column of type oid (ISO
 * dates: rapport's sessions run with DateStyle=ISO, TimeZone=UTC). */
static const char *
sample_value(Oid oid)
{
	switch (oid) {
	case 16: return "t";                                    /* bool */
	case 20: case 21: case 23: case 26: return "3";         /* integers, oid */
	case 700: case 701: case 1700: return "1250.5";         /* float, numeric */
	case 1082: return "2026-01-15";                         /* date */
	case 1114: return "2026-01-15 10:30:00";                /* timestamp */
	case 1184: return "2026-01-15 10:30:00+00";             /* timestamptz */
	case 1186: return "3 days";                             /* interval */
	case 114: case 3802: return "{}";                       /* json, jsonb */
	case 2950: return "00000000-0000-0000-0000-000000000001";
	case 1000: case 1005: case 1007: case 1016: case 1009: case 1015: return "{}";
	default: return "sample";
	}
}

int
qcols_sample_ctx(qcols *qc, const script *s, script_run *run, char **why)
{
	const struct script_info *si = script_info(s);
	for (int i = 0; i < si->nqueries; i++) {
		const struct script_query *q = &si->queries[i];
		struct qcol_entry *e = lookup(qc, q->sql);
		if (!e) {
			*why = xasprintf("the columns of query '%s' are not known (%s)", q->name,
			                 qc->unreachable ? qc->unreachable : "not described yet");
			return 0;
		}
		if (!e->desc) {
			*why = xasprintf("query '%s' is not valid SQL here: %s", q->name, e->error);
			return -1;
		}
		PGresult *rows = PQcopyResult(e->desc, PG_COPYRES_ATTRS);
		if (!rows) {
			*why = xstrdup("out of memory");
			return -1;
		}
		int ncols = PQnfields(rows);
		for (int c = 0; c < ncols; c++) {
			const char *v = sample_value(PQftype(rows, c));
			/* A text column gets its name, so a prompt shows what came
			 * from where when someone looks at it. */
			if (strcmp(v, "sample") == 0)
				v = PQfname(rows, c);
			PQsetvalue(rows, 0, c, (char *)v, (int)strlen(v));
		}
		char err[512];
		bool ok = script_run_add_rows(run, q, rows, err, sizeof err);
		PQclear(rows);
		if (!ok) {
			*why = xasprintf("query '%s': %s", q->name, err);
			return -1;
		}
	}
	return 1;
}
