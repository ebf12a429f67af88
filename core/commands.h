/*
 * commands — the one table of what an operator can ask a rapport process:
 * the admin socket's commands, the console's functions in both modes, and
 * which of them are remote. admin.c dispatches its lines from it, the
 * console registers its Lua functions and prints help() from it, and the
 * attach client sends to the socket exactly the rows the socket serves.
 *
 * A row is one operation under its two spellings: the admin words
 * ("cache list 42") and the console function (cache_list(42)). Most rows
 * have a `run`: a synchronous function on the parts it is given (the
 * server's on the admin socket, the standalone console's own), returning
 * the result as JSON; the admin socket replies with it, the standalone
 * console pushes it, and the attached console sends the words to the
 * socket, so all three give the same shapes and the same errors. A row
 * without `run` is served by a handler of the mode's own, looked up by
 * name (analyze, which waits on the pipeline; the console's stages).
 *
 * Owns nothing: the table is static, results are new references.
 */
#ifndef RAPPORT_COMMANDS_H
#define RAPPORT_COMMANDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "analysis.h"
#include "cache.h"
#include "db.h"
#include "http_api.h"
#include "llm.h"
#include "metrics.h"
#include "script.h"

enum cmd_where {
	CMD_ADMIN  = 1 << 0,   /* the admin socket serves it: an attached console sends it */
	CMD_LOCAL  = 1 << 1,   /* a function of the standalone console */
	CMD_ATTACH = 1 << 2,   /* a function of the attached console only (admin(line)) */
	CMD_REPL   = 1 << 3,   /* the REPL's own, both console modes, never sent */
};

/* What a command runs on; NULL members are parts the process does not have. */
struct cmd_parts {
	script_registry *scripts;
	cache *cache;
	analysis *analysis;
	db_pool *db;
	llm_client *llm;
	limiter *limiter;           /* these three: metrics without an HTTP server */
	breaker *breaker;
	accounting *acct;
	http_server *http;          /* metrics: the HTTP API's list, its counters included */
	const char *who;            /* in the reload log line: "admin socket", "console" */
	double started_ms;          /* status's admin_uptime_s; 0: not shown */
};

/* Why a command failed: the HTTP-like status, a code and a message, as the
 * admin socket's {"ok": false, …} carries them. */
struct cmd_error {
	int status;
	char code[48];
	char message[512];
};

/* A positive contact id, or false with a 400 invalid_contact_id in e. */
bool cmd_arg_contact(const char *s, int64_t *id, struct cmd_error *e);
/* feedback's arguments: a type name (argv[0]) and an optional count
 * (argv[1], 1..FEEDBACK_LATEST_MAX, default FEEDBACK_LATEST_DEFAULT) into
 * *n; false with a 400 in e. */
bool cmd_arg_feedback(int argc, char **argv, int *n, struct cmd_error *e);

typedef json_t *cmd_run_fn(const struct cmd_parts *p, int argc, char **argv,
                           struct cmd_error *e);

struct command {
	const char *words;          /* the admin command ("cache list"); NULL: console only */
	const char *fn;             /* the console function ("cache_list"); NULL: socket only */
	int min, max;               /* arguments after the words, or of the function */
	unsigned where;             /* enum cmd_where bits */
	cmd_run_fn *run;            /* NULL: the mode's own handler, by name */
	const char *usage;          /* the admin usage: "cache list [contact]" */
	const char *fn_usage;       /* the console usage: "cache_list([id])" */
	const char *does;
};

/* The rows, in the order help lists them, ended by a row of NULLs. */
extern const struct command cmd_table[];

/* The admin row the words of a line name, with *skip set to how many of
 * argv they took, and its argument count checked; NULL with e filled
 * (unknown_command, or bad_command with the usage). */
const struct command *cmd_match(int argc, char **argv, int *skip, struct cmd_error *e);

/* Fills e and returns NULL, for a run function's failures. */
json_t *cmd_fail(struct cmd_error *e, int status, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* The admin socket's `help`: [{command, does}] for every CMD_ADMIN row. */
json_t *cmd_help_json(void);

#endif
