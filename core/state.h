/*
 * state — rapport's own state in PostgreSQL (RAPPORT_STATE_URL, schema
 * `rapport`): one connection of its own, never one of the scripts'
 * read-only pool, on the libevent loop, never blocking.
 *
 * On every (re)connect it first migrates the schema: the schema rapport if
 * it does not exist, the table rapport.schema_migrations(version, name,
 * applied_at), then every numbered migration newer than the highest version
 * recorded, in order, all in one transaction under pg_advisory_xact_lock, so
 * several instances starting at once apply each migration once. The
 * migrations are a table in state.c: adding one is appending one entry.
 *
 * Only then is it "up" and accepts statements: a small FIFO of
 * parameterised statements, run one at a time, each with a callback. While
 * it is not up (connecting, migrating, database down, migration failed)
 * state_send() refuses at once, so a caller answers 503 instead of waiting.
 * A lost connection fails every queued statement (callbacks run with an
 * error) and reconnects with backoff (100 ms doubling to 5 s).
 *
 * Callbacks run from the event loop, never inside state_send(). They may
 * send and cancel statements, not destroy the state_db.
 */
#ifndef RAPPORT_STATE_H
#define RAPPORT_STATE_H

#include <stdbool.h>
#include <libpq-fe.h>

struct event_base;
typedef struct state_db state_db;
typedef struct state_stmt state_stmt;

/* On success res is the statement's PGRES_TUPLES_OK / PGRES_COMMAND_OK
 * result and err NULL; on failure res is NULL and err says why (one line).
 * Both live only during the call. */
typedef void state_cb(void *arg, const PGresult *res, const char *err);
/* The state became up (connected and migrated), after start or a loss. */
typedef void state_up_cb(void *arg);

/* The queue's bound: beyond it state_send() refuses (the caller says 503). */
#define STATE_MAX_QUEUE 512

/* conninfo: a libpq connection string or URI. timeout_ms bounds each
 * statement (server-side statement_timeout, and a client-side watchdog
 * that drops the connection a little later). NULL only on bad arguments. */
state_db *state_create(struct event_base *base, const char *conninfo, int timeout_ms);
/* Closes the connection; queued statements are dropped without their
 * callbacks (their owners are gone by then). NULL is a no-op. */
void state_destroy(state_db *s);
void state_set_on_up(state_db *s, state_up_cb *cb, void *arg);

bool state_is_up(const state_db *s);
/* "up", "connecting", "migrating" or "down"; *error (may be NULL) gets the
 * last error ("" when none), valid until the next loop turn. */
const char *state_status(const state_db *s, const char **error);
/* The schema version recorded (0 before the first migration ran). */
int state_schema_version(const state_db *s);
/* The newest migration this binary knows. */
int state_latest_version(void);

/* Parameterised statement ($1..$n, text values, copied). NULL when the
 * state is not up or the queue is full: cb will not run. Otherwise cb runs
 * exactly once, later, unless state_cancel() comes first. */
state_stmt *state_send(state_db *s, const char *sql, int nparams, const char *const *params,
                       state_cb *cb, void *arg);
/* cb will not run. Safe until cb has run. A statement already sent still
 * runs on the server (its result is read and dropped). */
void state_cancel(state_stmt *st);

#endif
