/*
 * console_int — what the console's files share, private to them (as Lua's
 * lstate.h is to Lua's): the session struct and the engine's services.
 *
 *   console.c         the REPL engine: the Lua state, line input (readline
 *                     or plain lines), history, multi-line chunks, the
 *                     printer, tracebacks, signals and the event-loop waits
 *   console_local.c   standalone: the functions on this process's own
 *                     database pool, upstream client, cache and pipeline
 *   console_attach.c  attached: the admin-socket client and the functions
 *                     that send admin commands
 *
 * A mode function starts its work, then runs the loop (console_wait) until
 * the work is done or a signal comes. The one console of the process is
 * console_cur: signal handlers and readline's callbacks take no argument.
 */
#ifndef RAPPORT_CONSOLE_INT_H
#define RAPPORT_CONSOLE_INT_H

#include "console.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

struct bufferevent;
struct event;

enum input { IN_LINE, IN_EOF, IN_INTERRUPT };

struct console {
	struct console_deps d;
	lua_State *L;
	bool attached;
	const char *sock_path;
	struct bufferevent *conn;     /* attached: the admin connection, or NULL */
	bool conn_dead;
	bool tty;
	struct event *sig_ev[3];      /* SIGINT, SIGTERM, SIGHUP: in waits, at the prompt */
	struct event *winch_ev, *stdin_ev;
	bool at_prompt;
	bool interrupted;             /* a signal ended the current wait */
	bool quit;                    /* quit(), SIGTERM or SIGHUP: the session ends */
	int exit_code;
	int failures;                 /* chunks that raised */
	bool at_line_start;           /* stdout ends with a newline */
	bool rl_done;                 /* readline callback → read_tty */
	enum input rl_result;
	char *rl_line;
	char *history;
};

extern struct console *console_cur;

/* A function of the REPL: its name, C function (NULL: defined by the
 * prelude), the admin command it sends (attached), usage and help line. */
struct fn {
	const char *name;
	lua_CFunction fn;          /* NULL: defined by the prelude */
	const char *command;       /* attached: the admin command it sends */
	const char *usage, *does;
};

/* Each mode's functions, ended by a row with a NULL name. */
extern const struct fn console_local_fns[];
extern const struct fn console_attach_fns[];

/* ---- output (console.c) ---- */

/* Streamed text (a model reply) as it comes. */
void console_print_stream(struct console *c, const char *text, size_t len);
/* A note after streamed text starts on its own line. */
void console_end_stream(struct console *c);
/* "-- …" lines: timings and remarks, a Lua comment if pasted back. */
void console_vnote(struct console *c, const char *fmt, va_list ap);
/* An error message on stderr. */
void console_report(struct console *c, const char *msg);

/* ---- waits (console.c) ---- */

/* Runs the loop until done(arg) or a signal. Returns done(arg): false
 * means interrupted, and the caller cancels its work. */
bool console_wait(struct console *c, bool (*done)(void *), void *arg);

/* ---- argument helpers (console.c; they may raise: call them before
 * allocating) ---- */

int64_t console_check_contact(lua_State *L, int arg);
/* opts[name] of the table at arg as a boolean, dflt when absent. */
bool console_opt_bool(lua_State *L, int arg, const char *name, bool dflt);

/* ---- the attach client (console_attach.c) ---- */

bool console_conn_open(struct console *c, char *err, size_t errlen);
void console_conn_close(struct console *c);
/* ":cache list" at the prompt: the reply as the server wrote it. */
void console_raw_command(struct console *c, const char *line);

#endif
