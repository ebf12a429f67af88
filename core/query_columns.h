/*
 * query_columns — what each query of the scripts returns (column names and
 * types), learnt without running it, and the one-row sample context built
 * from it.
 *
 * A prompt's {{placeholders}} are filled from vars the script computes from
 * ctx. A type with no fixture file never rendered its prompt before its
 * first live request, so a typo ({{contact.titel}}) reached production. With
 * the columns of its queries a sample ctx can be built (one row per query,
 * each column a sample value of its type) and prompt(ctx) rendered at check
 * and at load time.
 *
 * Columns come from PQdescribePrepared on one short-lived blocking
 * connection: `rapport check` uses it freely; the server only before its
 * loop runs (start-up), so a slow database never stalls serving. SQL first
 * seen in a later reload is remembered and described on the server's pool
 * afterwards (qcols_learn_pending: the query runs read-only for contact id
 * 0, which has no rows but all the columns); once learnt, the caller
 * reloads and the check runs. The catalog owns its PGresults.
 */
#ifndef RAPPORT_QUERY_COLUMNS_H
#define RAPPORT_QUERY_COLUMNS_H

#include <stdbool.h>
#include <libpq-fe.h>

#include "script.h"

typedef struct qcols qcols;

/* conninfo: where the queries would run (DATABASE_URL). */
qcols *qcols_create(const char *conninfo);
void qcols_destroy(qcols *qc);
/* May the catalog open a (blocking) connection to learn new SQL? On for
 * `rapport check` and at start-up; off once the server's loop runs (and
 * then its connection is closed). */
void qcols_allow_blocking(qcols *qc, bool on);
/* Why the database could not be asked (NULL when it could or was not
 * tried): the first failure, one line. */
const char *qcols_unreachable(const qcols *qc);

/* A ctx for s built from its queries' columns, in run. 1 when built, 0 when
 * some query's columns are unknown (then nothing is checked; *why says
 * which, malloc'd), -1 with *why when a query cannot be described (its SQL
 * is wrong: the database says why). */
int qcols_sample_ctx(qcols *qc, const script *s, script_run *run, char **why);

/* Describes, on the pool and without blocking, the SQL met since the last
 * call while blocking was off; done(arg) runs once (on the loop) after
 * they are answered, if they taught anything. Returns how many were sent.
 * Destroy the pool before the catalog (its callbacks then still find it). */
struct db_pool;
int qcols_learn_pending(qcols *qc, struct db_pool *pool, void (*done)(void *), void *arg);

#endif
