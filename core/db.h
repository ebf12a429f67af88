/*
 * db — asynchronous PostgreSQL connection pool on the libevent loop.
 *
 * Owns `size` libpq connections, each running at most one query at a time
 * (separate connections, because a pipeline on one connection still runs its
 * queries one after another on the server). A query goes to an idle
 * connection at once or waits in a FIFO. Every query sent with db_query_send()
 * gets exactly one callback — rows or an error — unless it is cancelled first;
 * the callback never runs inside db_query_send().
 *
 * Broken connections reconnect by themselves with backoff. While no
 * connection is up, new queries fail quickly with `unavailable` set (the
 * API turns that into 503), so a stopped database never makes a request hang.
 */
#ifndef RAPPORT_DB_H
#define RAPPORT_DB_H

#include <stdbool.h>
#include <libpq-fe.h>

struct event_base;
typedef struct db_pool db_pool;
typedef struct db_query db_query;

struct db_error {
	bool unavailable;        /* database down/unreachable, or timed out */
	const char *message;     /* human-readable, never NULL */
	const char *sqlstate;    /* five-char SQLSTATE or NULL */
};

/* On success res is the PGRES_TUPLES_OK / PGRES_COMMAND_OK result and err is
 * NULL; on failure res is NULL. res and err belong to the pool and live only
 * during the callback. The query handle is freed after the callback. */
typedef void db_query_cb(void *arg, const PGresult *res, const struct db_error *err);

struct db_stats {
	int size;        /* configured connections */
	int connected;   /* up (idle or busy) */
	int busy;        /* running a query */
	int queued;      /* queries waiting for a connection */
};

/* conninfo is a libpq connection string or URI. Session settings rapport
 * relies on (TimeZone=UTC, DateStyle=ISO) are set on every connection.
 * query_timeout_ms bounds each query from db_query_send() to its callback,
 * queue wait included (0 = no limit).
 * Starts connecting at once; returns NULL only on bad arguments. */
db_pool *db_pool_create(struct event_base *base, const char *conninfo,
                        int size, int query_timeout_ms);
/* Fails every pending query (callbacks run with unavailable) and closes all
 * connections. */
void db_pool_destroy(db_pool *pool);

/* Parameterised query: params are text values ($1..$n), copied. */
db_query *db_query_send(db_pool *pool, const char *sql, int nparams,
                        const char *const *params, db_query_cb *cb, void *arg);
/* The callback will not run. Safe until the callback has run. */
void db_query_cancel(db_query *q);

/* Named prepared statements (on by default): each SQL text is parsed and
 * planned once per connection. Turn off behind PgBouncer in transaction
 * mode, which does not keep them (before 1.21). */
void db_pool_set_prepare(db_pool *pool, bool on);

bool db_pool_is_up(const db_pool *pool);

/* Helpers the listener shares: a libpq message on one line (they end in
 * "\n" and may span lines), and whether a conninfo parses (logged if not). */
void db_one_line(const char *s, char *buf, size_t len);
bool db_conninfo_valid(const char *conninfo);
void db_pool_stats(const db_pool *pool, struct db_stats *out);

#endif
