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
 * Every query runs alone in a READ ONLY transaction that ends in ROLLBACK
 * (so a SET it makes is undone too); ad-hoc SQL (db_query_send_adhoc) is
 * followed by DISCARD ALL before the session serves anyone else. Results are
 * read row by row and capped in rows and bytes. Every new session first
 * checks that its role can only read (db_role_check's query): a role that
 * may write is refused unless the pool allows it (it then only warns).
 * These are the scripts' connections (DATABASE_URL); rapport's own writes,
 * when there are any, belong on a pool of their own on RAPPORT_STATE_URL
 * with the role check off.
 *
 * Broken connections reconnect by themselves with backoff. While no
 * connection is up, new queries fail quickly with `unavailable` set (the
 * API turns that into 503), so a stopped database never makes a request hang.
 */
#ifndef RAPPORT_DB_H
#define RAPPORT_DB_H

#include <stdbool.h>
#include <stddef.h>
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
/* The same for a script's own SQL (run(ctx)'s db.query): never prepared,
 * and the session is reset (DISCARD ALL) after it. */
db_query *db_query_send_adhoc(db_pool *pool, const char *sql, int nparams,
                              const char *const *params, db_query_cb *cb, void *arg);
/* The callback will not run. Safe until the callback has run. */
void db_query_cancel(db_query *q);

/* Named prepared statements (on by default): each SQL text is parsed and
 * planned once per connection. Turn off behind PgBouncer in transaction
 * mode, which does not keep them (before 1.21). */
void db_pool_set_prepare(db_pool *pool, bool on);

/* On (the default): each new session checks its role's privileges and a
 * role that may write is refused (logged once, retried with backoff);
 * allow_write only warns. */
void db_pool_set_role_check(db_pool *pool, bool on, bool allow_write);

/* Caps on one result (0 = none): beyond them the query fails with an error
 * naming the cap and the session is replaced, without reading the rest. */
#define DB_DEFAULT_MAX_ROWS  10000L
#define DB_DEFAULT_MAX_BYTES ((size_t)8 << 20)
void db_pool_set_result_caps(db_pool *pool, long max_rows, size_t max_bytes);

bool db_pool_is_up(const db_pool *pool);

/* The role check, once and blocking (for start-up, before the loop runs):
 * READ_ONLY, MAY_WRITE (*msg says why and gives the SQL of the fix; also
 * when the check query itself fails) or UNKNOWN (not reachable now; *msg
 * says why). *msg is malloc'd or NULL. */
enum db_role_status { DB_ROLE_READ_ONLY, DB_ROLE_MAY_WRITE, DB_ROLE_UNKNOWN };
enum db_role_status db_role_check(const char *conninfo, char **msg);

/* Helpers the listener shares: a libpq message on one line (they end in
 * "\n" and may span lines), and whether a conninfo parses (logged if not). */
void db_one_line(const char *s, char *buf, size_t len);
bool db_conninfo_valid(const char *conninfo);
void db_pool_stats(const db_pool *pool, struct db_stats *out);

/* Why a database cannot be reached, as a class a person acts on:
 * "refused", "name_not_found", "authentication", "database_missing",
 * "timeout" or "unreachable" (anything else), from libpq's message. */
const char *db_error_class(const char *libpq_message);
/* "database unreachable (<class>): <libpq's message, one line> — <what to
 * check>", into buf. */
void db_describe_unreachable(const char *libpq_message, char *buf, size_t len);
/* While no connection is up: the class of the last failure (and *message,
 * the whole line, owned by the pool); NULL when up or not tried yet. */
const char *db_pool_down_cause(const db_pool *pool, const char **message);

#endif
