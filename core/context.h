/*
 * context — the fan-out that fills one request's ctx: every named query of
 * the script, sent at once on the pool with the contact id as $1, each
 * answer's rows added to the script_run as it comes, and one callback when
 * all are in or at the first error (the others are cancelled then). The
 * pool gives each query its own connection, so the context is ready when
 * the slowest query returns, not after the sum of them.
 *
 * The pipeline (analysis.c) and the console's context() both use it, so
 * what a console user inspects is what a request would have seen.
 *
 * Owns the fetch and its queries, nothing else: the script and the run are
 * the caller's and must outlive the fetch (until its callback or
 * ctx_cancel).
 */
#ifndef RAPPORT_CONTEXT_H
#define RAPPORT_CONTEXT_H

#include <stdint.h>

#include "db.h"
#include "script.h"

struct ctx_fetch;

enum ctx_status {
	CTX_OK,
	CTX_DB_UNAVAILABLE,   /* the database is down or timed out (→ 503) */
	CTX_QUERY_FAILED,     /* the database refused a query (→ 500) */
	CTX_SCRIPT_ERROR,     /* the rows could not be put into ctx (→ 500) */
};

/* Lives only during the callback. */
struct ctx_result {
	enum ctx_status status;
	const struct script_query *query;   /* the one that failed; NULL on CTX_OK */
	const char *message;                /* the database's or the script's words */
	const char *sqlstate;               /* CTX_QUERY_FAILED only, else NULL */
	const int *rows;                    /* rows per query, in the script's order */
	int nqueries;
	double ms;                          /* from ctx_fetch() to this callback */
};

typedef void ctx_done_cb(void *arg, const struct ctx_result *r);

/* Sends every named query of s for contact_id, rows into run. When the
 * script has no queries the context is complete at once: NULL, and cb never
 * runs. Otherwise cb runs exactly once, never inside this call, unless
 * ctx_cancel() comes first; the fetch is freed after cb returns. */
struct ctx_fetch *ctx_fetch(db_pool *db, script *s, script_run *run, int64_t contact_id,
                            ctx_done_cb *cb, void *arg);
/* Cancels the queries still out; cb will not run. Frees the fetch. */
void ctx_cancel(struct ctx_fetch *cf);

#endif
