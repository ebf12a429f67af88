/*
 * db_listen — one dedicated PostgreSQL connection that LISTENs on a channel
 * and reports every notification payload, on the event loop, never blocking.
 *
 * The connection is its own, never part of the pool (LISTEN is session
 * state; it does not work through PgBouncer transaction pooling either). It
 * reconnects by itself with backoff and LISTENs again. Notifications sent
 * while it was not listening are lost, so after every successful LISTEN that
 * follows a lost connection or a failed connect attempt, on_reset() runs:
 * the owner must then assume anything may have changed. The first LISTEN of
 * a listener whose first attempt succeeded does not call it.
 *
 * Callbacks run from the event loop, never inside db_listen_create(). They
 * may call db_listen_destroy().
 */
#ifndef RAPPORT_DB_LISTEN_H
#define RAPPORT_DB_LISTEN_H

#include <stdbool.h>

struct event_base;
typedef struct db_listener db_listener;

/* payload is the NOTIFY payload ("" when none), valid during the call. */
typedef void db_listen_cb(void *arg, const char *payload);
typedef void db_listen_cb_reset(void *arg);

/* conninfo is a libpq connection string or URI, channel the name to LISTEN
 * on (quoted as an identifier, so case is kept). on_reset may be NULL.
 * Starts connecting at once; returns NULL only on bad arguments. */
db_listener *db_listen_create(struct event_base *base, const char *conninfo,
                              const char *channel, db_listen_cb *on_notify,
                              db_listen_cb_reset *on_reset, void *arg);
/* Closes the connection; no callback runs afterwards. NULL is a no-op. */
void db_listen_destroy(db_listener *l);

/* Connected and the LISTEN confirmed by the server. */
bool db_listen_is_up(const db_listener *l);

#endif
