/*
 * context — the named queries of one request, all out at once.
 *
 * A fetch holds one db_query per named query and counts the answers. The
 * first error ends it: the remaining queries are cancelled and the caller
 * hears that error (later answers would only describe a context nobody will
 * use). Each query's callback gets its own small argument (fetch, index),
 * kept in the fetch, so nothing is allocated per answer.
 */
#include "context.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>

struct ctx_fetch {
	const struct script_info *si;
	script_run *run;
	ctx_done_cb *cb;
	void *arg;
	double t0;
	int pending;                 /* queries not answered yet */
	struct ctx_query {
		struct ctx_fetch *cf;
		db_query *q;             /* NULL once answered or cancelled */
	} *queries;                  /* si->nqueries of them */
	int *rows;                   /* rows per answered query, handed to the callback */
};

static void
cancel_queries(struct ctx_fetch *cf)
{
	for (int i = 0; i < cf->si->nqueries; i++)
		if (cf->queries[i].q) {
			db_query_cancel(cf->queries[i].q);
			cf->queries[i].q = NULL;
		}
}

static void
fetch_free(struct ctx_fetch *cf)
{
	free(cf->queries);
	free(cf->rows);
	free(cf);
}

/* Ends the fetch with r; the fetch is gone when this returns. */
static void
complete(struct ctx_fetch *cf, struct ctx_result *r)
{
	cancel_queries(cf);
	r->rows = cf->rows;
	r->nqueries = cf->si->nqueries;
	r->ms = util_now_ms() - cf->t0;
	cf->cb(cf->arg, r);
	fetch_free(cf);
}

static void
on_rows(void *arg, const PGresult *res, const struct db_error *err)
{
	struct ctx_query *cq = arg;
	struct ctx_fetch *cf = cq->cf;
	const struct script_query *q = &cf->si->queries[cq - cf->queries];
	cq->q = NULL;
	cf->pending--;
	if (err) {
		struct ctx_result r = {
			.status = err->unavailable ? CTX_DB_UNAVAILABLE : CTX_QUERY_FAILED,
			.query = q, .message = err->message,
			.sqlstate = err->unavailable ? NULL : err->sqlstate,
		};
		complete(cf, &r);
		return;
	}
	cf->rows[cq - cf->queries] = PQntuples(res);
	char msg[1024];
	if (!script_run_add_rows(cf->run, q, res, msg, sizeof msg)) {
		struct ctx_result r = { .status = CTX_SCRIPT_ERROR, .query = q, .message = msg };
		complete(cf, &r);
		return;
	}
	if (cf->pending == 0) {
		struct ctx_result r = { .status = CTX_OK };
		complete(cf, &r);
	}
}

struct ctx_fetch *
ctx_fetch(db_pool *db, script *s, script_run *run, int64_t contact_id, ctx_done_cb *cb,
          void *arg)
{
	const struct script_info *si = script_info(s);
	if (si->nqueries == 0)
		return NULL;
	struct ctx_fetch *cf = xcalloc(1, sizeof *cf);
	cf->si = si;
	cf->run = run;
	cf->cb = cb;
	cf->arg = arg;
	cf->t0 = util_now_ms();
	cf->queries = xcalloc((size_t)si->nqueries, sizeof *cf->queries);
	cf->rows = xcalloc((size_t)si->nqueries, sizeof *cf->rows);
	char id[24];
	snprintf(id, sizeof id, "%lld", (long long)contact_id);
	const char *params[1] = { id };
	cf->pending = si->nqueries;
	/* The pool never calls back inside db_query_send, so the loop below
	 * always finishes before the first answer is counted. */
	for (int i = 0; i < si->nqueries; i++) {
		cf->queries[i].cf = cf;
		cf->queries[i].q = db_query_send(db, si->queries[i].sql, 1, params, on_rows,
		                                 &cf->queries[i]);
	}
	return cf;
}

void
ctx_cancel(struct ctx_fetch *cf)
{
	if (!cf)
		return;
	cancel_queries(cf);
	fetch_free(cf);
}
