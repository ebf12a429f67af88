/*
 * admin — the admin socket of `rapport serve`: a local unix socket (mode
 * 0600, owner only; never a TCP port) for `rapport console --attach` and for
 * people with socat. It sees the live server: its cache, its scripts, its
 * counters, and can run an analysis through the real pipeline.
 *
 * Protocol, one command per line (at most 4 KiB), answered in order:
 *
 *   → cache drop 42 relationship_health\n
 *   ← {"ok": true, "result": {"dropped": 1}}\n\n
 *
 * Every reply is one JSON document, pretty-printed, followed by an empty
 * line: JSON text never contains "\n\n", so a reader splits replies there.
 * A failure is {"ok": false, "error": {"code": …, "message": …}} (plus
 * "status", the HTTP status, for `analyze`). Empty lines get no reply.
 * `help` lists the commands; they are the rows of the command table
 * (commands.h) the console shares.
 *
 * Owns the listener, the socket file (created at start, a stale one from a
 * crash replaced, removed at stop) and every connected client, including
 * the analysis a client is waiting on: a client that leaves mid-command has
 * its wait cancelled.
 */
#ifndef RAPPORT_ADMIN_H
#define RAPPORT_ADMIN_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "analysis.h"
#include "cache.h"
#include "db.h"
#include "feedback.h"
#include "http_api.h"
#include "llm.h"
#include "script.h"

struct event_base;
typedef struct admin admin;

struct admin_deps {
	struct event_base *base;
	const char *path;            /* the socket file (RAPPORT_ADMIN_SOCKET) */
	cache *cache;
	script_registry *scripts;
	analysis *analysis;
	db_pool *db;                 /* for `status` */
	llm_client *llm;             /* for `status` */
	http_server *http;           /* for `metrics`; may be NULL */
	feedback *feedback;          /* for `feedback`; may be NULL */
};

/* Binds the socket (creating its folder 0700 when missing) and starts
 * accepting. NULL with *err (caller frees) when the path is taken by a
 * live server or by something that is not a socket, or cannot be bound. */
admin *admin_create(const struct admin_deps *deps, char **err);
/* Disconnects every client (cancelling their waits), closes the listener
 * and removes the socket file if it is still ours. NULL is fine. */
void admin_destroy(admin *a);

#endif
