/*
 * console — the REPL engine of `rapport console`: its own Lua state, line
 * input, history, multi-line chunks, the printer, tracebacks, signals and
 * the event-loop waits. The functions that reach the server's parts are a
 * mode's: console_local.c (standalone) and console_attach.c (--attach);
 * console_int.h is what the three share.
 *
 * A function starts its work, then runs the loop (console_wait) until the
 * work is done or a signal comes; Ctrl-C cancels the work (queries,
 * upstream call, pipeline waiter, admin request) and raises "interrupted".
 *
 * The Lua state has the standard libraries minus whatever could read the
 * OpenAI key or a file holding it (io, os.getenv/execute, package, debug,
 * loadfile, dofile), and load() only for text.
 *
 * Input: on a terminal, readline's callback interface driven by the same
 * loop, so Ctrl-C clears the line and background work (a flight left by an
 * interrupted analyze) goes on at the prompt; history in ~/.rapport_history.
 * Otherwise plain lines and no prompt. A chunk continues while incomplete
 * (its load error ends in "<eof>", as in lua.c); "=expr" and bare
 * expressions print their values.
 */
#include "console_int.h"
#include "commands.h"
#include "log.h"
#include "luajson.h"
#include "util.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <lauxlib.h>
#include <lua-cjson.h>
#include <lualib.h>
#include <readline/history.h>
#include <readline/readline.h>

#define HISTORY_MAX   1000
#define PROMPT        "rapport> "
#define PROMPT_ATT    "rapport(attached)> "
#define PROMPT_MORE   ">> "

enum eval { EVAL_OK, EVAL_INCOMPLETE, EVAL_FAILED };

/* The one console of the process: signal handlers and readline's
 * callbacks take no argument (lua.c keeps its globalL for the same
 * reason). */
struct console *console_cur;
/* Set by the plain handler: Lua code is running (so a hook can stop
 * it), a SIGINT came outside the loop (the next wait stops at once), a
 * SIGTERM or SIGHUP came (the session ends). */
static volatile sig_atomic_t lua_running, pending_int, quit_signal;
static const int session_signals[3] = { SIGINT, SIGTERM, SIGHUP };
static struct sigaction saved_actions[3];

/* ---- output ------------------------------------------------------------------ */

void
console_print_stream(struct console *c, const char *text, size_t len)
{
	if (!len)
		return;
	fwrite(text, 1, len, stdout);
	fflush(stdout);
	c->at_line_start = text[len - 1] == '\n';
}

void
console_end_stream(struct console *c)
{
	if (!c->at_line_start)
		fputc('\n', stdout);
	c->at_line_start = true;
}

void
console_vnote(struct console *c, const char *fmt, va_list ap)
{
	console_end_stream(c);
	fputs("-- ", stdout);
	vfprintf(stdout, fmt, ap);
	fputc('\n', stdout);
	fflush(stdout);
}

void
console_report(struct console *c, const char *msg)
{
	console_end_stream(c);
	fflush(stdout);
	fprintf(stderr, "%s\n", msg);
	fflush(stderr);
}

/* ---- signals and waits -------------------------------------------------------- */

static void
on_lua_stop(lua_State *L, lua_Debug *ar)
{
	lua_sethook(L, NULL, 0, 0);
	luaL_error(L, "interrupted");
}

/* Outside the loop (Lua code running, C work between waits, a blocking
 * read of piped input): stop the Lua code at its next instruction, as
 * lua.c does, and remember it for a wait about to start. */
static void
on_signal_direct(int sig)
{
	if (sig == SIGINT)
		pending_int = 1;
	else
		quit_signal = 1;
	if (lua_running)
		lua_sethook(console_cur->L, on_lua_stop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void
prompt_drop(struct console *c, enum input why)
{
	/* What was typed goes, as in a shell. */
	rl_free_line_state();
	rl_callback_sigcleanup();
	rl_replace_line("", 0);
	rl_callback_handler_remove();
	fputc('\n', stdout);
	fflush(stdout);
	c->rl_result = why;
	c->rl_done = true;
}

/* While the loop runs (a wait, the terminal prompt) signals come here. */
static void
on_signal_loop(evutil_socket_t sig, short what, void *arg)
{
	struct console *c = arg;
	if (sig != SIGINT)
		c->quit = true;
	if (c->at_prompt)
		prompt_drop(c, sig == SIGINT ? IN_INTERRUPT : IN_EOF);
	else
		c->interrupted = true;
	event_base_loopbreak(c->d.base);
}

/* libevent saves the handler in place (on_signal_direct) when a signal
 * event is added and puts it back when the last one is deleted. */
static void
signals_on(struct console *c)
{
	for (int i = 0; i < 3; i++)
		event_add(c->sig_ev[i], NULL);
}

static void
signals_off(struct console *c)
{
	for (int i = 0; i < 3; i++)
		event_del(c->sig_ev[i]);
}

bool
console_wait(struct console *c, bool (*done)(void *), void *arg)
{
	c->interrupted = pending_int || quit_signal;
	pending_int = 0;
	signals_on(c);
	while (!done(arg) && !c->interrupted)
		if (event_base_loop(c->d.base, EVLOOP_ONCE) < 0)
			break;
	signals_off(c);
	return done(arg);
}

/* ---- argument helpers (they may raise: call them before allocating) ------------ */

int64_t
console_check_contact(lua_State *L, int arg)
{
	lua_Integer id = luaL_checkinteger(L, arg);
	luaL_argcheck(L, id > 0, arg, "a contact id is a positive integer");
	return (int64_t)id;
}

bool
console_opt_bool(lua_State *L, int arg, const char *name, bool dflt)
{
	if (lua_type(L, arg) != LUA_TTABLE)
		return dflt;
	int t = lua_getfield(L, arg, name);
	bool v = t == LUA_TNIL ? dflt : lua_toboolean(L, -1);
	lua_pop(L, 1);
	return v;
}

const char *
console_word(lua_State *L, int arg)
{
	if (lua_type(L, arg) == LUA_TNUMBER)
		return lua_pushfstring(L, "%I", (LUAI_UACINT)luaL_checkinteger(L, arg));
	const char *w = luaL_checkstring(L, arg);
	luaL_argcheck(L, *w && !w[strcspn(w, " \t\r\n")], arg, "one word expected");
	return w;
}

int
console_words(lua_State *L, const struct command *r, char **words)
{
	int n = lua_gettop(L);
	if (n < r->min || n > r->max || n > CONSOLE_MAX_WORDS)
		luaL_error(L, "usage: %s", r->fn_usage);
	for (int i = 1; i <= n; i++)
		words[i - 1] = (char *)console_word(L, i);
	return n;
}

/* ---- both modes ---------------------------------------------------------------- */

static int
l_now_ms(lua_State *L)
{
	lua_pushnumber(L, util_now_ms());
	return 1;
}

/* The error object quit() raises: it unwinds the chunk at once and the
 * REPL ends without reporting it. */
static char quit_sentinel;

static bool
is_quit(lua_State *L)
{
	return lua_touserdata(L, -1) == &quit_sentinel;
}

static int
l_quit(lua_State *L)
{
	console_cur->exit_code = (int)luaL_optinteger(L, 1, 0);
	console_cur->quit = true;
	lua_pushlightuserdata(L, &quit_sentinel);
	return lua_error(L);
}

/* load() for text chunks only: bytecode can break the VM. */
static int
l_load_text(lua_State *L)
{
	int n = lua_gettop(L);
	lua_settop(L, 4);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_pushvalue(L, 1);
	lua_pushvalue(L, 2);
	lua_pushliteral(L, "t");
	if (n >= 4)
		lua_pushvalue(L, 4);     /* an explicit nil env stays explicit */
	lua_call(L, n >= 4 ? 4 : 3, LUA_MULTRET);
	return lua_gettop(L) - 4;
}

static int l_help(lua_State *L);

/* The REPL's own functions (CMD_REPL rows). */
static const struct console_handler repl_handlers[] = {
	{ "time", NULL },
	{ "pp", NULL },
	{ "now_ms", l_now_ms },
	{ "help", l_help },
	{ "quit", l_quit },
	{ NULL, NULL },
};

/* Whether row r is a function of this mode: standalone, the local and
 * REPL rows; attached, the rows the socket serves, attach-only and REPL. */
static bool
in_mode(const struct console *c, const struct command *r)
{
	if (!r->fn)
		return false;
	if (c->attached)
		return r->where & (CMD_ADMIN | CMD_ATTACH | CMD_REPL);
	return r->where & (CMD_LOCAL | CMD_REPL);
}

static bool
find_handler(const struct console_handler *h, const char *name, lua_CFunction *fn)
{
	for (; h->name; h++)
		if (strcmp(h->name, name) == 0) {
			*fn = h->fn;
			return true;
		}
	return false;
}

/* The C function of row r in this mode; false when it has none (a table
 * row no mode file serves: a bug, reported at start). *fn NULL: the
 * prelude defines it. */
static bool
row_handler(const struct console *c, const struct command *r, lua_CFunction *fn)
{
	if (r->where & CMD_REPL)
		return find_handler(repl_handlers, r->fn, fn);
	if (find_handler(c->attached ? console_attach_handlers : console_local_handlers, r->fn, fn))
		return true;
	*fn = c->attached && (r->where & CMD_ADMIN) ? console_attach_send
	    : !c->attached && r->run               ? console_local_run
	                                           : NULL;
	return *fn != NULL;
}

static int
l_help(lua_State *L)
{
	struct console *c = console_cur;
	printf("%s\n", c->attached ? "attached to a running server; functions (:<the admin command> "
	                             "each sends):"
	                           : "standalone (this process's own pool, upstream client and cache); functions:");
	for (const struct command *r = cmd_table; r->fn || r->words; r++) {
		if (!in_mode(c, r))
			continue;
		if (c->attached && (r->where & CMD_ADMIN))
			printf("  %-52s %s (:%s)\n", r->fn_usage, r->does, r->usage);
		else
			printf("  %-52s %s\n", r->fn_usage, r->does);
	}
	printf("%s",
	       "input: `=expr` or a bare expression prints its value; an unfinished chunk continues\n"
	       "on the next line (>>); Ctrl-C clears the line or stops a wait; Ctrl-D quits.\n");
	if (c->attached)
		printf("  :<command>  sends an admin command as is (`:help` lists them)\n");
	else
		printf("a session: ctx = context(42, \"relationship_health\"); req = messages(ctx);\n"
		       "           reply = chat(req); post(reply, ctx); analyze(42, \"relationship_health\")\n");
	fflush(stdout);
	return 0;
}

/* ---- the Lua state ---------------------------------------------------------------- */

/* The printer and time(), in Lua: pp() sorts keys, indents, shows json.null
 * as null and sequences as lists, marks cycles. Returns the printer the
 * REPL uses for results. */
static const char prelude[] =
	"local null, fmt, concat, sort, mtype = json.null, string.format, table.concat, table.sort, math.type\n"
	"local now_ms, pack, unpack = now_ms, table.pack, table.unpack\n"
	"local KEYWORDS = {}\n"
	"for w in ('and break do else elseif end false for function goto if in local nil not or '\n"
	"  .. 'repeat return then true until while'):gmatch('%a+') do KEYWORDS[w] = true end\n"
	"local NL = string.char(10)\n"
	"local function quote(s)\n"
	"  if s:find(NL, 1, true) and not s:gsub('%s', ' '):find('%c') then\n"
	"    local eq = ''\n"
	"    while (s .. ']'):find(']' .. eq .. ']', 1, true) do eq = eq .. '=' end\n"
	"    return '[' .. eq .. '[' .. NL .. s .. ']' .. eq .. ']'\n"
	"  end\n"
	"  return fmt('%q', s)\n"
	"end\n"
	"local function scalar(v)\n"
	"  if v == null then return 'null' end\n"
	"  if type(v) == 'string' then return quote(v) end\n"
	"  return tostring(v)\n"
	"end\n"
	"local function keyorder(a, b)\n"
	"  local ta, tb = type(a), type(b)\n"
	"  if ta ~= tb then\n"
	"    if ta == 'number' then return true elseif tb == 'number' then return false end\n"
	"    return ta < tb\n"
	"  end\n"
	"  if ta == 'number' or ta == 'string' then return a < b end\n"
	"  return tostring(a) < tostring(b)\n"
	"end\n"
	"local function seqlen(t)\n"
	"  local n = 0\n"
	"  for k in next, t do\n"
	"    if mtype(k) ~= 'integer' or k < 1 then return nil end\n"
	"    n = n + 1\n"
	"  end\n"
	"  for i = 1, n do if rawget(t, i) == nil then return nil end end\n"
	"  return n\n"
	"end\n"
	"local function dump(v, indent, path, out, depth)\n"
	"  if type(v) ~= 'table' then out[#out + 1] = scalar(v) return end\n"
	"  if path[v] then out[#out + 1] = '<cycle>' return end\n"
	"  if next(v) == nil then out[#out + 1] = '{}' return end\n"
	"  if depth >= 32 then out[#out + 1] = '{...}' return end\n"
	"  path[v] = true\n"
	"  local inner = indent .. '  '\n"
	"  local n = seqlen(v)\n"
	"  if n then\n"
	"    local parts = {}\n"
	"    for i = 1, n do\n"
	"      local e = rawget(v, i)\n"
	"      local s = type(e) ~= 'table' and scalar(e)\n"
	"      if not s or #s > 60 or s:find(NL, 1, true) or n > 16 then parts = nil break end\n"
	"      parts[i] = s\n"
	"    end\n"
	"    if parts then\n"
	"      out[#out + 1] = '{ ' .. concat(parts, ', ') .. ' }'\n"
	"    else\n"
	"      out[#out + 1] = '{' .. NL\n"
	"      for i = 1, n do\n"
	"        out[#out + 1] = inner\n"
	"        dump(rawget(v, i), inner, path, out, depth + 1)\n"
	"        out[#out + 1] = ',' .. NL\n"
	"      end\n"
	"      out[#out + 1] = indent .. '}'\n"
	"    end\n"
	"  else\n"
	"    local keys = {}\n"
	"    for k in next, v do keys[#keys + 1] = k end\n"
	"    sort(keys, keyorder)\n"
	"    out[#out + 1] = '{' .. NL\n"
	"    for _, k in ipairs(keys) do\n"
	"      local ks = k\n"
	"      if type(k) ~= 'string' or not k:match('^[%a_][%w_]*$') or KEYWORDS[k] then\n"
	"        ks = '[' .. scalar(k) .. ']'\n"
	"      end\n"
	"      out[#out + 1] = inner .. ks .. ' = '\n"
	"      dump(rawget(v, k), inner, path, out, depth + 1)\n"
	"      out[#out + 1] = ',' .. NL\n"
	"    end\n"
	"    out[#out + 1] = indent .. '}'\n"
	"  end\n"
	"  path[v] = nil\n"
	"end\n"
	"function pp(v)\n"
	"  local out = {}\n"
	"  dump(v, '', {}, out, 0)\n"
	"  return concat(out)\n"
	"end\n"
	"local pp = pp\n"
	"function time(fn, ...)\n"
	"  if type(fn) ~= 'function' then error('time(fn, ...): fn must be a function', 2) end\n"
	"  local t0 = now_ms()\n"
	"  local r = pack(fn(...))\n"
	"  print(fmt('-- %.1f ms', now_ms() - t0))\n"
	"  return unpack(r, 1, r.n)\n"
	"end\n"
	"return function(...)\n"
	"  for i = 1, select('#', ...) do print(pp((select(i, ...)))) end\n"
	"end\n";

/* Every function of this mode from the command table, each a closure
 * over its row. Raises for a row without a handler. */
static void
register_fns(lua_State *L, const struct console *c)
{
	for (const struct command *r = cmd_table; r->fn || r->words; r++) {
		lua_CFunction fn;
		if (!in_mode(c, r))
			continue;
		if (!row_handler(c, r, &fn))
			luaL_error(L, "the command table's %s() has no handler in this mode", r->fn);
		if (!fn)
			continue;
		lua_pushlightuserdata(L, (void *)r);
		lua_pushcclosure(L, fn, 1);
		lua_setglobal(L, r->fn);
	}
}

/* The standard libraries, then out with what could reach the key. */
static int
p_setup(lua_State *L)
{
	struct console *c = lua_touserdata(L, 1);
	luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
	luaL_requiref(L, LUA_COLIBNAME, luaopen_coroutine, 1);
	luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
	luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
	luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
	luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
	luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
	luaL_requiref(L, "cjson", luaopen_cjson, 1);
	int os = lua_gettop(L) - 1;
	lua_settop(L, os);
	lua_createtable(L, 0, 4);
	static const char *const os_fns[] = { "clock", "date", "difftime", "time", NULL };
	for (const char *const *n = os_fns; *n; n++) {
		lua_getfield(L, os, *n);
		lua_setfield(L, -2, *n);
	}
	lua_setglobal(L, "os");
	lua_pushnil(L);
	lua_setglobal(L, "dofile");
	lua_pushnil(L);
	lua_setglobal(L, "loadfile");
	lua_getglobal(L, "load");
	lua_pushcclosure(L, l_load_text, 1);
	lua_setglobal(L, "load");
	lua_getglobal(L, "string");
	lua_pushnil(L);
	lua_setfield(L, -2, "dump");
	luajson_open(L);
	lua_setglobal(L, "json");
	register_fns(L, c);
	if (luaL_loadbuffer(L, prelude, sizeof prelude - 1, "=prelude") != LUA_OK)
		return lua_error(L);
	lua_call(L, 0, 1);
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.console.show");
	return 0;
}

static int
on_panic(lua_State *L)
{
	fprintf(stderr, "rapport console: unprotected Lua error: %s\n", lua_tostring(L, -1));
	abort();
}

static lua_State *
new_state(struct console *c)
{
	lua_State *L = luaL_newstate();
	if (!L)
		return NULL;
	lua_atpanic(L, on_panic);
	lua_pushcfunction(L, p_setup);
	lua_pushlightuserdata(L, c);
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		fprintf(stderr, "rapport console: %s\n", lua_tostring(L, -1));
		lua_close(L);
		return NULL;
	}
	return L;
}

/* ---- evaluation ------------------------------------------------------------------- */

static int
msghandler(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	if (lua_touserdata(L, 1) == &quit_sentinel)
		return 1;
	if (!msg) {
		if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
			return 1;
		msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	}
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/* lua_pcall with a traceback, interruptible by Ctrl-C. */
static int
docall(struct console *c, int narg, int nres)
{
	lua_State *L = c->L;
	int fn = lua_gettop(L) - narg;
	lua_pushcfunction(L, msghandler);
	lua_insert(L, fn);
	lua_running = 1;
	int st = lua_pcall(L, narg, nres, fn);
	lua_running = 0;
	lua_sethook(L, NULL, 0, 0);   /* a signal after the last instruction */
	lua_remove(L, fn);
	return st;
}

/* "=expr", then "return <chunk>;", then the chunk itself (lua.c's order). */
static int
load_chunk(lua_State *L, const char *chunk, const char *name)
{
	const char *code = lua_pushfstring(L, chunk[0] == '=' ? "return %s" : "return %s;",
	                                   chunk[0] == '=' ? chunk + 1 : chunk);
	int st = luaL_loadbuffer(L, code, strlen(code), name);
	lua_remove(L, -2);
	if (st == LUA_OK || chunk[0] == '=')
		return st;
	lua_pop(L, 1);
	return luaL_loadbuffer(L, chunk, strlen(chunk), name);
}

static bool
incomplete(lua_State *L, int st)
{
	size_t len;
	const char *msg = lua_tolstring(L, -1, &len);
	return st == LUA_ERRSYNTAX && msg && len >= 5 && strcmp(msg + len - 5, "<eof>") == 0;
}

static void
show_results(struct console *c, int base)
{
	lua_State *L = c->L;
	int n = lua_gettop(L) - base;
	if (n <= 0)
		return;
	lua_getfield(L, LUA_REGISTRYINDEX, "rapport.console.show");
	lua_insert(L, base + 1);
	console_end_stream(c);
	if (docall(c, n, 0) != LUA_OK && !is_quit(L)) {
		console_report(c, lua_tostring(L, -1));
		c->failures++;
	}
	fflush(stdout);
}

static enum eval
eval_chunk(struct console *c, const char *chunk, const char *name)
{
	lua_State *L = c->L;
	int base = lua_gettop(L);
	int st = load_chunk(L, chunk, name);
	if (incomplete(L, st)) {
		lua_settop(L, base);
		return EVAL_INCOMPLETE;
	}
	if (st == LUA_OK)
		st = docall(c, 0, LUA_MULTRET);
	if (st == LUA_OK) {
		show_results(c, base);
		lua_settop(L, base);
		return EVAL_OK;
	}
	if (is_quit(L)) {
		lua_settop(L, base);
		return EVAL_OK;
	}
	console_report(c, lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error)");
	c->failures++;
	lua_settop(L, base);
	return EVAL_FAILED;
}

static bool
run_file(struct console *c, const char *path)
{
	lua_State *L = c->L;
	int base = lua_gettop(L);
	int st = luaL_loadfilex(L, path, "t");
	if (st == LUA_OK)
		st = docall(c, 0, 0);
	bool ok = st == LUA_OK || is_quit(L);
	if (!ok) {
		console_report(c, lua_tostring(L, -1));
		c->failures++;
	}
	lua_settop(L, base);
	return ok;
}

/* ---- input -------------------------------------------------------------------------- */

static void
on_rl_line(char *line)
{
	console_cur->rl_line = line;
	console_cur->rl_result = line ? IN_LINE : IN_EOF;
	console_cur->rl_done = true;
	rl_callback_handler_remove();
}

static void
on_stdin(evutil_socket_t fd, short what, void *arg)
{
	rl_callback_read_char();
}

static void
on_winch(evutil_socket_t fd, short what, void *arg)
{
	rl_resize_terminal();
}

static enum input
read_tty(struct console *c, const char *prompt, char **line)
{
	c->rl_done = false;
	c->rl_line = NULL;
	c->at_prompt = true;
	/* Ours before the prompt shows: a Ctrl-C typed as soon as it does
	 * must reach the loop. One that came earlier stopped what ran then. */
	signals_on(c);
	pending_int = 0;
	if (quit_signal) {
		signals_off(c);
		c->at_prompt = false;
		*line = NULL;
		return IN_EOF;
	}
	event_add(c->stdin_ev, NULL);
	event_add(c->winch_ev, NULL);
	rl_callback_handler_install(prompt, on_rl_line);
	while (!c->rl_done)
		if (event_base_loop(c->d.base, EVLOOP_ONCE) < 0) {
			prompt_drop(c, IN_EOF);
			break;
		}
	signals_off(c);
	event_del(c->winch_ev);
	event_del(c->stdin_ev);
	c->at_prompt = false;
	*line = c->rl_line;
	if (c->rl_result == IN_EOF && !c->quit)
		fputc('\n', stdout);
	return c->rl_result;
}

static enum input
read_plain(char **line)
{
	size_t cap = 0;
	char *buf = NULL;
	ssize_t n = getline(&buf, &cap, stdin);
	if (n < 0) {
		free(buf);
		return IN_EOF;
	}
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	*line = buf;
	return IN_LINE;
}

/* ---- completion of globals and their fields ------------------------------------------------ */

static char **comp;
static size_t ncomp, icomp;

static void
comp_reset(void)
{
	for (size_t i = icomp; i < ncomp; i++)
		free(comp[i]);
	free(comp);
	comp = NULL;
	ncomp = icomp = 0;
}

static int
p_complete(lua_State *L)
{
	const char *word = lua_touserdata(L, 1);
	const char *dot = strrchr(word, '.');
	lua_pushglobaltable(L);
	for (const char *p = word; dot && p < dot;) {
		const char *e = memchr(p, '.', (size_t)(dot - p) + 1);
		lua_pushlstring(L, p, (size_t)(e - p));
		lua_rawget(L, -2);
		if (!lua_istable(L, -1))
			return 0;
		p = e + 1;
	}
	const char *prefix = dot ? dot + 1 : word;
	size_t plen = strlen(prefix);
	int blen = (int)(prefix - word);
	lua_pushnil(L);
	while (lua_next(L, -2)) {
		if (lua_type(L, -2) == LUA_TSTRING && strncmp(lua_tostring(L, -2), prefix, plen) == 0) {
			comp = xrealloc(comp, (ncomp + 1) * sizeof *comp);
			comp[ncomp++] = xasprintf("%.*s%s", blen, word, lua_tostring(L, -2));
		}
		lua_pop(L, 1);
	}
	return 0;
}

/* readline's generator: state 0 collects, the next calls hand out (readline
 * frees what it gets). */
static char *
complete_next(const char *text, int state)
{
	if (state == 0) {
		comp_reset();
		lua_pushcfunction(console_cur->L, p_complete);
		lua_pushlightuserdata(console_cur->L, (void *)text);
		if (lua_pcall(console_cur->L, 1, 0, 0) != LUA_OK)
			lua_pop(console_cur->L, 1);
	}
	return icomp < ncomp ? comp[icomp++] : NULL;
}

static char **
on_complete(const char *text, int start, int end)
{
	rl_completion_append_character = '\0';
	rl_attempted_completion_over = 1;     /* no file names */
	return rl_completion_matches(text, complete_next);
}

static void
tty_start(struct console *c)
{
	rl_readline_name = "rapport";
	rl_catch_signals = 0;                 /* ours come through the loop */
	rl_catch_sigwinch = 0;
	rl_attempted_completion_function = on_complete;
	rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,)[]+-*/%^~#";
	c->stdin_ev = event_new(c->d.base, STDIN_FILENO, EV_READ | EV_PERSIST, on_stdin, c);
	c->winch_ev = evsignal_new(c->d.base, SIGWINCH, on_winch, c);
	using_history();
	stifle_history(HISTORY_MAX);
	/* A multi-line chunk is one entry: the timestamp lines mark where
	 * each entry starts in the file. */
	history_comment_char = '#';
	history_write_timestamps = 1;
	history_multiline_entries = 1;
	const char *home = getenv("HOME");
	if (home && *home) {
		c->history = xasprintf("%s/.rapport_history", home);
		read_history(c->history);
	}
}

static void
tty_stop(struct console *c)
{
	if (c->history) {
		if (write_history(c->history) != 0)
			fprintf(stderr, "rapport console: cannot write %s\n", c->history);
		free(c->history);
	}
	clear_history();
	comp_reset();
	if (c->stdin_ev)
		event_free(c->stdin_ev);
	if (c->winch_ev)
		event_free(c->winch_ev);
}

/* ---- the session -------------------------------------------------------------------- */

static bool
is_blank(const char *s)
{
	return s[strspn(s, " \t\r\n")] == '\0';
}

static void
repl(struct console *c)
{
	char *chunk = NULL;
	while (!c->quit && !quit_signal) {
		char *line = NULL;
		const char *prompt = chunk ? PROMPT_MORE : c->attached ? PROMPT_ATT : PROMPT;
		if (!c->tty)
			pending_int = 0;      /* what it would have stopped has ended */
		enum input in = c->tty ? read_tty(c, prompt, &line) : read_plain(&line);
		if (in == IN_EOF) {
			if (chunk && !c->tty) {
				console_report(c, "stdin: the last chunk is unfinished at the end of input");
				c->failures++;
			}
			break;
		}
		if (in == IN_INTERRUPT) {
			free(chunk);
			chunk = NULL;
			continue;
		}
		if (!chunk && is_blank(line)) {
			free(line);
			continue;
		}
		char *joined = chunk ? xasprintf("%s\n%s", chunk, line) : xstrdup(line);
		free(chunk);
		free(line);
		chunk = joined;
		if (chunk[0] == ':') {
			if (c->tty)
				add_history(chunk);
			if (c->attached)
				console_raw_command(c, chunk + 1);
			else {
				console_report(c, ":command lines need --attach (a running server)");
				c->failures++;
			}
		} else {
			if (eval_chunk(c, chunk, "=stdin") == EVAL_INCOMPLETE)
				continue;
			if (c->tty)
				add_history(chunk);
		}
		free(chunk);
		chunk = NULL;
	}
	free(chunk);
}

static void
banner(struct console *c)
{
	if (c->attached) {
		printf("rapport console, attached to %s\nhelp() lists the functions, :help the "
		       "server's commands; Ctrl-D quits.\n", c->sock_path);
		return;
	}
	int n = script_registry_count(c->d.scripts), failed = 0;
	for (int i = 0; i < n; i++) {
		const char *name, *error;
		script *s;
		script_registry_entry(c->d.scripts, i, &name, &s, &error);
		failed += error != NULL;
	}
	/* The key is never shown, only whether there is one. */
	printf("rapport console: %d analysis types (%d with load errors), upstream %s (key %s)\n"
	       "help() lists the functions; Ctrl-D quits.\n", n, failed, c->d.cfg->openai_base_url,
	       c->d.cfg->openai_api_key && *c->d.cfg->openai_api_key ? "set" : "unset");
}

static void
direct_signals(bool on)
{
	for (int i = 0; i < 3; i++) {
		if (on) {
			struct sigaction sa = { .sa_handler = on_signal_direct };
			sigemptyset(&sa.sa_mask);
			sigaction(session_signals[i], &sa, &saved_actions[i]);
		} else {
			sigaction(session_signals[i], &saved_actions[i], NULL);
		}
	}
}

int
console_take_flags(int argc, char **argv, struct console_opts *o)
{
	int out = 0;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--attach") == 0) {
			o->attach = true;
			if (i + 1 < argc && argv[i + 1][0] != '-')
				o->socket = argv[++i];
		} else if (strncmp(argv[i], "--attach=", 9) == 0) {
			o->attach = true;
			o->socket = argv[i] + 9;
		} else {
			argv[out++] = argv[i];
		}
	}
	return out;
}

static const char console_usage[] =
	"usage: rapport console [options] [-e CODE]... [-i] [FILE]\n"
	"       rapport console --attach [SOCKET] [-e CODE]... [-i]\n";

/* -e chunks in order, then FILE; false at the first failure. */
static bool
run_args(struct console *c, char **args, int nargs, const char *file)
{
	for (int i = 0; i < nargs && !c->quit; i++) {
		if (strcmp(args[i], "-e") != 0)
			continue;
		enum eval e = eval_chunk(c, args[++i], "=(command line)");
		if (e == EVAL_INCOMPLETE)
			console_report(c, "(command line): the chunk is unfinished");
		if (e != EVAL_OK)
			return false;
	}
	if (file && !c->quit && !run_file(c, file))
		return false;
	return true;
}

struct args {
	const char *file;         /* FILE: a Lua script to run */
	bool have_e;              /* -e CODE given */
	bool interactive;         /* -i: the REPL after -e / FILE */
};

static bool
parse_args(char **args, int nargs, bool attach, struct args *a)
{
	for (int i = 0; i < nargs; i++) {
		if (strcmp(args[i], "-e") == 0 && i + 1 < nargs)
			a->have_e = true, i++;
		else if (strcmp(args[i], "-i") == 0)
			a->interactive = true;
		else if (strcmp(args[i], "--") == 0)
			continue;
		else if (args[i][0] != '-' && !a->file && !attach)
			a->file = args[i];
		else {
			fprintf(stderr, "rapport console: unexpected argument %s\n%s", args[i], console_usage);
			return false;
		}
	}
	return true;
}

bool
console_args_ok(const struct console_opts *o, char **args, int nargs)
{
	struct args a = { 0 };
	return parse_args(args, nargs, o->attach, &a);
}

int
console_main(const struct console_deps *d, const struct console_opts *o, char **args, int nargs)
{
	struct console c = { .d = *d, .at_line_start = true, .attached = o->attach };
	struct args a = { 0 };
	if (!parse_args(args, nargs, o->attach, &a))
		return 2;
	if (o->attach) {
		c.sock_path = o->socket ? o->socket : d->cfg->admin_socket;
		if (!c.sock_path || !*c.sock_path) {
			fprintf(stderr, "rapport console: no admin socket (RAPPORT_ADMIN_SOCKET is off)\n");
			return 2;
		}
		c.d.base = util_event_base();
		if (!c.d.base)
			return 1;
	}
	console_cur = &c;
	int rc = 1;
	c.L = new_state(&c);
	for (int i = 0; i < 3; i++)
		c.sig_ev[i] = evsignal_new(c.d.base, session_signals[i], on_signal_loop, &c);
	direct_signals(true);
	char err[1024];
	if (!c.L)
		goto out;
	if (o->attach && !console_conn_open(&c, err, sizeof err)) {
		fprintf(stderr, "rapport console: %s\n", err);
		goto out;
	}
	if (!run_args(&c, args, nargs, a.file)) {
		rc = c.exit_code ? c.exit_code : 1;
		goto out;
	}
	if ((!a.have_e && !a.file) || a.interactive) {
		c.tty = isatty(STDIN_FILENO);
		if (c.tty) {
			tty_start(&c);
			banner(&c);
		}
		repl(&c);
		if (c.tty)
			tty_stop(&c);
	}
	rc = c.exit_code ? c.exit_code : !c.tty && c.failures ? 1 : 0;
out:
	direct_signals(false);
	console_conn_close(&c);
	for (int i = 0; i < 3; i++)
		if (c.sig_ev[i])
			event_free(c.sig_ev[i]);
	if (c.L)
		lua_close(c.L);
	if (o->attach && c.d.base)
		event_base_free(c.d.base);
	console_cur = NULL;
	fflush(stdout);
	return rc;
}

