/*
 * script_sandbox — one script's Lua state and its guards: the capped
 * allocator, the count hook that enforces the instruction budget and the
 * wall-clock bound, the protected call every entry into Lua goes through
 * (script_pcall), and the allow-listed environment scripts run in: the
 * one list of globals (script_sandbox_globals) from which every environment
 * is made, the load-time one and each request's fresh one, out of the
 * catalog of values the state opened once.
 *
 * Every entry into Lua goes through script_pcall, so a Lua error (including
 * the budget and memory cap) becomes an error string here and never a
 * longjmp through C frames that own resources.
 */
#include "script_int.h"
#include "log.h"
#include "luajson.h"
#include "util.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

/* ---- the state: allocator, budget, sandbox ---------------------------- */

void *
script_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	script *s = ud;
	if (!ptr)
		osize = 0;     /* osize is a type tag when ptr is NULL */
	if (nsize == 0) {
		free(ptr);
		s->mem_used -= osize;
		return NULL;
	}
	/* What jansson holds for the running call counts too (s->meter). */
	if (nsize > osize && s->mem_used + s->meter.used + (nsize - osize) > s->mem_cap)
		return NULL;   /* Lua raises "not enough memory" */
	void *p = realloc(ptr, nsize);
	if (p)
		s->mem_used = s->mem_used - osize + nsize;
	return p;
}

script *
script_owner(lua_State *L)
{
	return *(script **)lua_getextraspace(L);
}

/* The count hook. Past the instruction budget or the wall-clock bound of
 * the call it stops the script: by yielding when it can — a yield from a
 * hook cannot be caught by pcall/xpcall and no message handler runs, so the
 * host gets control back for sure — and otherwise (inside a C call such as
 * a sort comparator) by raising an error at every instruction until the
 * code is back where it can yield. */
static void
budget_hook(lua_State *L, lua_Debug *ar)
{
	script *s = script_owner(L);
	s->spent += HOOK_EVERY;
	if (s->spent <= s->budget && !(s->deadline_ms > 0 && util_now_ms() > s->deadline_ms))
		return;
	if (!s->stopped) {
		s->stopped = true;
		if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
			snprintf(s->stop_where, sizeof s->stop_where, "%s:%d: ", ar->short_src,
			         ar->currentline);
		else
			snprintf(s->stop_where, sizeof s->stop_where, "%s: ", s->path);
		snprintf(s->stop_why, sizeof s->stop_why, "%s",
		         s->spent > s->budget ? "its instruction budget" : "its time limit");
	}
	if (lua_isyieldable(L)) {
		lua_yield(L, 0);
		return;
	}
	lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
	luaL_error(L, "script exceeded %s", s->stop_why);
}

/* The error object on top of co as text, without converting anything: a
 * number's tostring allocates, and the state may be at its memory cap. */
const char *
script_error_text(lua_State *co)
{
	return lua_type(co, -1) == LUA_TSTRING ? lua_tostring(co, -1)
	                                       : "error object is not a string";
}

void
script_arm_limits(script *s, lua_State *co)
{
	s->spent = 0;
	s->stopped = false;
	s->deadline_ms = s->wall_ms > 0 ? util_now_ms() + s->wall_ms : 0;
	s->meter = (struct luajson_meter){ .cap = s->mem_cap, .also = &s->mem_used };
	lua_sethook(co, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

/* The message for a stopped script, naming where it was. */
void
script_stopped_message(script *s, char *err, size_t errlen)
{
	snprintf(err, errlen, "%sscript exceeded %s (%lld instructions, %ld ms per call)",
	         s->stop_where, s->stop_why, (long long)s->budget, s->wall_ms);
}

struct tb_args {
	lua_State *co;
	const char *msg;
};

static int
p_traceback(lua_State *L)
{
	struct tb_args *a = lua_touserdata(L, 1);
	luaL_traceback(L, a->co, a->msg, 0);
	return 1;
}

/* Logs the error with the dead coroutine's traceback (built under
 * protection: the state may be at its memory cap). */
void
script_log_error(script *s, lua_State *co, const char *err)
{
	struct tb_args a = { co, err };
	lua_State *L = s->L;
	lua_pushcfunction(L, p_traceback);
	lua_pushlightuserdata(L, &a);
	bool tb = lua_pcall(L, 1, 1, 0) == LUA_OK;
	log_event(LOG_WARN, "script error", LOG_S("script", s->name), LOG_S("error", err),
	          LOG_S("traceback", tb ? lua_tostring(L, -1) : NULL), LOG_END);
	lua_pop(L, 1);
}

static int
p_new_call_thread(lua_State *L)
{
	script_owner(L)->call_thread = lua_newthread(L);
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.call_thread");
	return 0;
}

/* error("text", 0), error(table) and errors raised from C name no place:
 * the innermost Lua frame of the dead coroutine (its stack is intact) gives
 * the file:line the author needs, in the reply as well as the log. */
static void
script_error_position(lua_State *co, char *err, size_t errlen)
{
	const char *colon = strchr(err, ':');
	if (colon && colon[1] >= '0' && colon[1] <= '9' && strchr(colon + 1, ':'))
		return;                  /* "file:line: …" already */
	lua_Debug ar;
	for (int level = 0; lua_getstack(co, level, &ar); level++) {
		if (!lua_getinfo(co, "Sl", &ar) || ar.currentline <= 0 || *ar.what == 'C')
			continue;
		size_t n = strlen(err);
		char *copy = malloc(n + 1);
		if (!copy)
			return;
		memcpy(copy, err, n + 1);
		snprintf(err, errlen, "%s:%d: %s", ar.short_src, ar.currentline, copy);
		free(copy);
		return;
	}
}

/* Calls the function below nargs arguments on the main stack under the
 * limits, in the state's reusable call coroutine (see budget_hook). Returns
 * true with nresults on the main stack, or false with the first line of
 * the error (file:line: message) in err; the traceback goes to the log. */
bool
script_pcall(script *s, int nargs, int nresults, char *err, size_t errlen)
{
	lua_State *L = s->L;
	lua_State *co = s->call_thread;
	if (s->call_thread_broken) {
		lua_pop(L, nargs + 1);
		snprintf(err, errlen, "%s: script disabled: it ran out of memory and its limits "
		         "could not be restored (it is rebuilt on the next reload)", s->path);
		return false;
	}
	if (!co) {
		/* Only while the sandbox itself is being built. */
		if (lua_pcall(L, nargs, nresults, 0) == LUA_OK)
			return true;
		snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "cannot build the sandbox");
		lua_pop(L, 1);
		return false;
	}
	if (!lua_checkstack(co, nargs + LUA_MINSTACK)) {
		lua_pop(L, nargs + 1);
		snprintf(err, errlen, "%s: Lua stack exhausted", s->path);
		return false;
	}
	lua_xmove(L, co, nargs + 1);
	script_arm_limits(s, co);
	int nres = 0;
	struct luajson_meter *prev = luajson_meter_use(&s->meter);
	int rc = lua_resume(co, L, nargs, &nres);
	luajson_meter_use(prev);
	s->meter.used = 0;           /* what jansson still holds is no call's */
	lua_sethook(co, NULL, 0, 0);
	if (rc == LUA_OK && !s->stopped) {
		if (nres > nresults)
			lua_pop(co, nres - nresults);
		for (; nres < nresults; nres++)
			lua_pushnil(co);
		lua_xmove(co, L, nresults);
		return true;
	}
	if (s->stopped) {
		script_stopped_message(s, err, errlen);
	} else {
		const char *msg = rc == LUA_ERRMEM ? "not enough memory" : script_error_text(co);
		if (rc == LUA_ERRMEM)
			snprintf(err, errlen, "%s: script exceeded its memory cap (not enough memory)", s->path);
		else
			snprintf(err, errlen, "%.*s", (int)strcspn(msg ? msg : "error object is not a string", "\n"),
			         msg ? msg : "error object is not a string");
		script_error_position(co, err, errlen);
		util_utf8_trim(err);
	}
	script_log_error(s, co, err);
	/* A coroutine stopped from inside a hook keeps its hooks off for
	 * good (Lua restores them only when the hook returns), so it is not
	 * reused: a fresh one replaces it. */
	lua_pushcfunction(L, p_new_call_thread);
	if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
		/* Out of memory: the old coroutine's hooks are off, so running
		 * anything more in it would run without limits. The state is
		 * done; every later call fails (a reload builds a new one). */
		lua_pop(L, 1);
		s->call_thread_broken = true;
	}
	return false;
}

/* setmetatable without __gc: Lua runs finalizers with hooks off, so a
 * finalizer could loop beyond any budget. */
static int
l_setmetatable(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	if (lua_istable(L, 2)) {
		lua_pushstring(L, "__gc");
		if (lua_rawget(L, 2) != LUA_TNIL)
			return luaL_error(L, "setmetatable: __gc metamethods are not allowed in scripts");
		lua_pop(L, 1);
	}
	/* Said here, not by the real setmetatable, so the message carries the
	 * script's file:line. */
	if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
		return luaL_error(L, "cannot change a protected metatable");
	lua_settop(L, 2);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, 2, 1);
	return 1;
}

/* rawset, except on a globals table (any env: they share one metatable),
 * whose writes go through the request-time freeze below. */
static int
l_rawset(lua_State *L)
{
	bool env = false;
	if (lua_getmetatable(L, 1)) {
		lua_getfield(L, LUA_REGISTRYINDEX, "rapport.env_mt");
		env = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
	}
	if (env)
		return luaL_error(L, "rawset on the globals table is not allowed");
	lua_settop(L, 3);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, 3, 1);
	return 1;
}

/* Globals may be set while the file's top level runs (its own helpers, at
 * load and when a request runs it afresh); from prompt, post and the rest
 * a write is refused, so a request's data has nowhere to go but locals. */
static int
l_set_global(lua_State *L)
{
	if (script_owner(L)->phase == SCRIPT_SERVING)
		return luaL_error(L, "cannot set global '%s' while serving a request (use a local)",
		                  luaL_optstring(L, 2, "?"));
	lua_rawset(L, 1);
	return 0;
}

/* Writes to the string library that every string's methods share. */
static int
l_read_only(lua_State *L)
{
	return luaL_error(L, "the string library is read-only");
}

/* string.rep, Lua 5.4's answers (and its "resulting string too large")
 * with the copying done by doubling. Lua's own loops n times, one memcpy
 * per copy: ("").rep("", 2^62) held the loop with nothing to allocate, and
 * ("x"):rep(2^20) is a million memcpy calls, all inside one C call that
 * neither the count hook nor the clock can interrupt — slow enough that a
 * loop of them reached the wall bound before the memory cap (several times
 * slower again under AddressSanitizer, which checks each memcpy). Here the
 * first copy (and separator) is written once and the filled prefix copied
 * onto the rest: about log2(n) memcpy calls, the time of the bytes alone. */
#define REP_MAXSIZE ((size_t)INT_MAX)   /* lstrlib.c's MAXSIZE on 64 bits */

static int
l_rep(lua_State *L)
{
	size_t l, lsep;
	const char *str = luaL_checklstring(L, 1, &l);
	lua_Integer n = luaL_checkinteger(L, 2);
	const char *sep = luaL_optlstring(L, 3, "", &lsep);
	if (n <= 0 || l + lsep == 0) {
		lua_pushliteral(L, "");
		return 1;
	}
	if (l + lsep < l || l + lsep > REP_MAXSIZE / (size_t)n)
		return luaL_error(L, "resulting string too large");
	size_t total = (size_t)n * l + (size_t)(n - 1) * lsep;
	luaL_Buffer b;
	char *p = luaL_buffinitsize(L, &b, total);   /* the memory cap applies */
	memcpy(p, str, l);
	size_t filled = l;
	if (n > 1) {
		memcpy(p + filled, sep, lsep);
		filled += lsep;
	}
	/* p[0, filled) is whole periods of str..sep: copying a prefix of it
	 * onto its end continues the period. */
	while (filled < total) {
		size_t chunk = filled < total - filled ? filled : total - filled;
		memcpy(p + filled, p, chunk);
		filled += chunk;
	}
	luaL_pushresultsize(&b, total);
	return 1;
}

/* table.move copies element by element inside C, out of the count hook's
 * reach, and needs no memory to move nils: each element is charged to the
 * call's instruction budget first. */
static int
l_move(lua_State *L)
{
	script *s = script_owner(L);
	lua_Integer f = luaL_checkinteger(L, 2);
	lua_Integer e = luaL_checkinteger(L, 3);
	if (e >= f) {
		lua_Unsigned n = (lua_Unsigned)e - (lua_Unsigned)f + 1;
		lua_Unsigned left = s->spent < s->budget ? (lua_Unsigned)(s->budget - s->spent) : 0;
		if (n > left)
			return luaL_error(L, "table.move: %I elements are more than the call's "
			                     "instruction budget allows", (lua_Integer)n);
		s->spent += (long)n;
	}
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, 1);
	return 1;
}

static int
l_undefined_global(lua_State *L)
{
	return luaL_error(L, "undefined global '%s'", luaL_optstring(L, 2, "?"));
}

static int
l_print(lua_State *L)
{
	luaL_Buffer b;
	int n = lua_gettop(L);
	luaL_buffinit(L, &b);
	for (int i = 1; i <= n; i++) {
		if (i > 1)
			luaL_addchar(&b, '\t');
		luaL_tolstring(L, i, NULL);
		luaL_addvalue(&b);
	}
	luaL_pushresult(&b);
	log_event(LOG_INFO, "script print", LOG_S("script", script_owner(L)->name),
	          LOG_S("text", lua_tostring(L, -1)), LOG_END);
	return 0;
}

/* A box for malloc'd memory: the userdata exists before the memory is
 * taken, and its __gc (or __close) frees it, so a Lua error raised while C
 * holds the memory (the cap, in a push) cannot leak it. */
static const char CBOX_MT[] = "rapport.cbox";

static int
cbox_free(lua_State *L)
{
	void **box = lua_touserdata(L, 1);
	if (box) {
		free(*box);
		*box = NULL;
	}
	return 0;
}

void **
script_box_new(lua_State *L)
{
	void **box = lua_newuserdatauv(L, sizeof *box, 0);
	*box = NULL;
	luaL_setmetatable(L, CBOX_MT);
	return box;
}

/* ---- the one definition of the sandbox ------------------------------------ */

static const char *const string_fields[] = {
	"byte", "char", "find", "format", "gmatch", "gsub", "len", "lower", "match", "pack",
	"packsize", "rep", "reverse", "sub", "unpack", "upper", NULL,
};
static const char *const table_fields[] = {
	"concat", "insert", "move", "pack", "remove", "sort", "unpack", NULL,
};
static const char *const math_fields[] = {
	"abs", "acos", "asin", "atan", "ceil", "cos", "deg", "exp", "floor", "fmod", "huge",
	"log", "max", "maxinteger", "min", "mininteger", "modf", "pi", "rad", "random",
	"randomseed", "sin", "sqrt", "tan", "tointeger", "type", "ult", NULL,
};
static const char *const utf8_fields[] = {
	"char", "charpattern", "codepoint", "codes", "len", "offset", NULL,
};
static const char *const os_fields[] = { "clock", "date", "time", NULL };
static const char *const json_fields[] = { "array", "decode", "encode", "is_array", "null", NULL };
static const char *const db_fields[] = { "query", NULL };
static const char *const llm_fields[] = { "chat", NULL };

const struct script_global script_sandbox_globals[] = {
	{ "_G", NULL },
	{ "assert", NULL },
	{ "error", NULL },
	{ "getmetatable", NULL },
	{ "ipairs", NULL },
	{ "next", NULL },
	{ "pairs", NULL },
	{ "pcall", NULL },
	{ "print", NULL },
	{ "rawequal", NULL },
	{ "rawget", NULL },
	{ "rawlen", NULL },
	{ "rawset", NULL },
	{ "read_prompt", NULL },
	{ "require", NULL },
	{ "select", NULL },
	{ "setmetatable", NULL },
	{ "tonumber", NULL },
	{ "tostring", NULL },
	{ "type", NULL },
	{ "xpcall", NULL },
	{ "db", db_fields },
	{ "json", json_fields },
	{ "llm", llm_fields },
	{ "math", math_fields },
	{ "os", os_fields },
	{ "string", string_fields },
	{ "table", table_fields },
	{ "utf8", utf8_fields },
	{ NULL, NULL },
};

/* Pushes a new environment built from script_sandbox_globals, taking each
 * value from registry["rapport.catalog"]: fresh copies of the library
 * tables, the shared metatable that refuses undefined reads and run-time
 * writes, and _G pointing at itself. Raises (memory, or a name the catalog
 * lacks, which is a bug here). */
void
script_sandbox_new_env(lua_State *L)
{
	lua_getfield(L, LUA_REGISTRYINDEX, "rapport.catalog");
	int catalog = lua_gettop(L);
	lua_createtable(L, 0, 32);
	int env = lua_gettop(L);
	for (const struct script_global *g = script_sandbox_globals; g->name; g++) {
		if (strcmp(g->name, "_G") == 0) {
			lua_pushvalue(L, env);
		} else if (lua_getfield(L, catalog, g->name) == LUA_TNIL) {
			luaL_error(L, "sandbox: no global '%s' to offer", g->name);
		} else if (g->fields) {
			int lib = lua_gettop(L);
			lua_createtable(L, 0, 16);
			for (const char *const *f = g->fields; *f; f++) {
				if (lua_getfield(L, lib, *f) == LUA_TNIL)
					luaL_error(L, "sandbox: no field '%s.%s' to offer", g->name, *f);
				lua_setfield(L, -2, *f);
			}
			lua_remove(L, lib);
		}
		lua_setfield(L, env, g->name);
	}
	lua_getfield(L, LUA_REGISTRYINDEX, "rapport.env_mt");
	lua_setmetatable(L, env);
	lua_remove(L, catalog);
}

/* Opens the allowed libraries into registry["rapport.catalog"] (the
 * values script_sandbox_globals names), builds the load-time environment
 * and the tables loading fills: the modules' values and factories, the
 * prompt texts. The state's real globals are never reachable from scripts. */
int
script_sandbox_build(lua_State *L)
{
	script *s = script_owner(L);
	luaL_requiref(L, LUA_GNAME, luaopen_base, 0);
	luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 0);
	luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 0);
	luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 0);
	luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 0);
	luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
	int base = 1, str = 2, tab = 3;

	/* string.dump would hand out bytecode; the shared string metatable
	 * points at this table, so remove it here, not just from the env. */
	lua_pushnil(L);
	lua_setfield(L, str, "dump");
	/* Patterns, repetition and moves whose work is bounded. */
	script_pattern_install(L, str);
	lua_pushcfunction(L, l_rep);
	lua_setfield(L, str, "rep");
	lua_getfield(L, tab, "move");
	lua_pushcclosure(L, l_move, 1);
	lua_setfield(L, tab, "move");
	/* Every string's methods come from one table shared by all requests:
	 * its metatable's __index becomes a read-only view of it. */
	lua_pushliteral(L, "");
	lua_getmetatable(L, -1);
	lua_newtable(L);                     /* the view */
	lua_createtable(L, 0, 3);
	lua_pushvalue(L, str);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, l_read_only);
	lua_setfield(L, -2, "__newindex");
	lua_pushliteral(L, "string library");
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
	lua_setfield(L, -2, "__index");
	lua_pop(L, 2);

	lua_newtable(L);                     /* the catalog */
	int catalog = lua_gettop(L);
	for (const struct script_global *g = script_sandbox_globals; g->name; g++) {
		lua_getfield(L, base, g->name);  /* the base functions; nil for the rest */
		lua_setfield(L, catalog, g->name);
	}
	/* Guarded versions (see above) over the real functions. */
	lua_getfield(L, base, "setmetatable");
	lua_pushcclosure(L, l_setmetatable, 1);
	lua_setfield(L, catalog, "setmetatable");
	lua_getfield(L, base, "rawset");
	lua_pushcclosure(L, l_rawset, 1);
	lua_setfield(L, catalog, "rawset");
	lua_pushcfunction(L, l_print);
	lua_setfield(L, catalog, "print");
	lua_pushcfunction(L, script_lua_require);
	lua_setfield(L, catalog, "require");
	lua_pushcfunction(L, script_lua_read_prompt);
	lua_setfield(L, catalog, "read_prompt");
	static const char *const libs[] = { LUA_STRLIBNAME, LUA_TABLIBNAME, LUA_MATHLIBNAME,
	                                    LUA_UTF8LIBNAME, LUA_OSLIBNAME, NULL };
	for (int i = 0; libs[i]; i++) {
		lua_pushvalue(L, str + i);
		lua_setfield(L, catalog, libs[i]);
	}
	/* lua-cjson is not offered: its settings are process-wide, its
	 * buffers live outside the memory cap and its decoder recurses as
	 * deep as told. The capped `json` module does the same job. */
	luajson_open(L);
	lua_setfield(L, catalog, "json");
	lua_createtable(L, 0, 1);
	lua_pushcfunction(L, script_lua_db_query);
	lua_setfield(L, -2, "query");
	lua_setfield(L, catalog, "db");
	lua_createtable(L, 0, 1);
	lua_pushcfunction(L, script_lua_llm_chat);
	lua_setfield(L, -2, "chat");
	lua_setfield(L, catalog, "llm");
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.catalog");

	lua_newtable(L);                     /* every env's metatable */
	lua_pushcfunction(L, l_undefined_global);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, l_set_global);
	lua_setfield(L, -2, "__newindex");
	lua_pushstring(L, "sandbox");
	lua_setfield(L, -2, "__metatable");
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.env_mt");

	script_sandbox_new_env(L);
	s->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_newtable(L);
	s->modules_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	s->cur_env_ref = s->env_ref;
	s->cur_modules_ref = s->modules_ref;
	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.factories");
	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.prompts");
	luaL_newmetatable(L, CBOX_MT);
	lua_pushcfunction(L, cbox_free);
	lua_setfield(L, -2, "__gc");
	lua_pushcfunction(L, cbox_free);
	lua_setfield(L, -2, "__close");
	lua_pushliteral(L, "box");
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 1);
	/* Every call into the script runs in this coroutine (see budget_hook),
	 * anchored in the registry for the life of the state. */
	return p_new_call_thread(L);
}

int
script_panic(lua_State *L)
{
	log_msg(LOG_ERROR, "unprotected Lua error: %s", lua_tostring(L, -1));
	abort();
}

void
script_warn(void *ud, const char *msg, int tocont)
{
	(void)ud;
	(void)tocont;
	log_event(LOG_WARN, "lua warning", LOG_S("text", msg), LOG_END);
}
