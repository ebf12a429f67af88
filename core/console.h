/*
 * console — `rapport console`, the REPL for developers on call (DESIGN.md,
 * "Who uses it" 3.): for a real contact, every stage of an analysis — the
 * rows, the exact messages, the raw reply as it streams, the result, the
 * timings — and what the cache holds.
 *
 *   rapport console [options] [-e CODE]... [-i] [FILE]
 *   rapport console --attach [SOCKET] [-e CODE]... [-i]
 *
 * Standalone, it runs on the subsystems main builds for `analyze` (the
 * same config, scripts, database pool, upstream client, cache and
 * pipeline) in this process; attached, it talks to a running server's
 * admin socket (admin.h). `help()` in the REPL lists the functions.
 */
#ifndef RAPPORT_CONSOLE_H
#define RAPPORT_CONSOLE_H

#include <stdbool.h>

#include "analysis.h"
#include "cache.h"
#include "config.h"
#include "db.h"
#include "feedback.h"
#include "llm.h"
#include "script.h"

struct event_base;

struct console_opts {
	bool attach;              /* --attach */
	const char *socket;       /* --attach SOCKET; NULL: cfg->admin_socket */
};

/* What a standalone console runs on (all NULL but cfg when attached). */
struct console_deps {
	const struct config *cfg;
	struct event_base *base;
	script_registry *scripts;
	db_pool *db;
	llm_client *llm;
	cache *cache;
	analysis *analysis;
	limiter *limiter;         /* for metrics() */
	breaker *breaker;
	accounting *acct;
	/* feedback(): on a state connection of the console's own, opened (and
	 * migrated) by the first call, so a console that never asks opens none.
	 * Returns the same feedback each time, NULL when there is no state
	 * database to open; open_arg's owner destroys it. NULL: no feedback(). */
	feedback *(*open_feedback)(void *open_arg);
	void *open_arg;
};

/* Takes the console's own flags (--attach [SOCKET], --attach=SOCKET) out
 * of argv, which keeps the rest in order, before the settings parser sees
 * it. Returns the new argc. */
int console_take_flags(int argc, char **argv, struct console_opts *o);

/* Checks the console's own arguments (-e CODE, -i, FILE) before anything
 * is built; prints the usage and returns false on a mistake. */
bool console_args_ok(const struct console_opts *o, char **args, int nargs);

/* Runs the session: the -e chunks and FILE in args, else the REPL on
 * stdin (readline on a terminal, plain lines otherwise). Returns the exit
 * status: 0, 1 when a -e chunk, FILE or a piped chunk failed, 2 on bad
 * usage, or what quit(n) asked for. */
int console_main(const struct console_deps *d, const struct console_opts *o, char **args,
                 int nargs);

#endif
