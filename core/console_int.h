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
 * Which functions a mode has, their usage and help text come from the one
 * command table (commands.h) the admin socket dispatches from; a mode file
 * adds only the handlers of rows that are not a plain run or send.
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

struct command;

/* A mode's own function for a row of the command table (commands.h), by
 * the row's console name. Rows with a run function need none: the
 * standalone console runs them here (console_local_run), the attached one
 * sends their words (console_attach_send). */
struct console_handler {
	const char *name;
	lua_CFunction fn;          /* NULL: defined by the prelude */
};

extern const struct console_handler console_local_handlers[];   /* ended by a NULL name */
extern const struct console_handler console_attach_handlers[];

/* The generic functions; upvalue 1 is the row (light userdata). */
int console_local_run(lua_State *L);
int console_attach_send(lua_State *L);

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
/* One admin word from a Lua argument: an integer or a plain word. */
const char *console_word(lua_State *L, int arg);
/* The arguments of a call of row r, counted against r's bounds (raising
 * with its usage) and made words (console_word), into words[]. Returns
 * how many; they live on the Lua stack. */
#define CONSOLE_MAX_WORDS 4
int console_words(lua_State *L, const struct command *r, char **words);
/* opts[name] of the table at arg as a boolean, dflt when absent. */
bool console_opt_bool(lua_State *L, int arg, const char *name, bool dflt);

/* ---- the attach client (console_attach.c) ---- */

bool console_conn_open(struct console *c, char *err, size_t errlen);
void console_conn_close(struct console *c);
/* ":cache list" at the prompt: the reply as the server wrote it. */
void console_raw_command(struct console *c, const char *line);

#endif
