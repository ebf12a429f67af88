/*
 * script_sandbox — one script's Lua state and its guards: the capped
 * allocator, the count hook that enforces the instruction budget and the
 * wall-clock bound, the protected call every entry into Lua goes through
 * (script_pcall), and the allow-listed environment scripts run in.
 *
 * Every entry into Lua goes through script_pcall, so a Lua error (including
 * the budget and memory cap) becomes an error string here and never a
 * longjmp through C frames that own resources.
 */
#include "script_int.h"
#include "log.h"
#include "luajson.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua-cjson.h>
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
	if (nsize > osize && s->mem_used + (nsize - osize) > s->mem_cap)
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

/* Calls the function below nargs arguments on the main stack under the
 * limits, in the state's reusable call coroutine (see budget_hook). Returns
 * true with nresults on the main stack, or false with the first line of
 * the error (file:line: message) in err; the traceback goes to the log. */
bool
script_pcall(script *s, int nargs, int nresults, char *err, size_t errlen)
{
	lua_State *L = s->L;
	lua_State *co = s->call_thread;
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
	int rc = lua_resume(co, L, nargs, &nres);
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
		util_utf8_trim(err);
	}
	script_log_error(s, co, err);
	/* A coroutine stopped from inside a hook keeps its hooks off for
	 * good (Lua restores them only when the hook returns), so it is not
	 * reused: a fresh one replaces it. */
	lua_pushcfunction(L, p_new_call_thread);
	if (lua_pcall(L, 0, 0, 0) != LUA_OK)
		lua_pop(L, 1);             /* keep the old one; out of memory */
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

/* rawset, except on the globals table, whose writes go through the
 * request-time freeze below. */
static int
l_rawset(lua_State *L)
{
	lua_getfield(L, LUA_REGISTRYINDEX, "rapport.env");
	bool env = lua_rawequal(L, 1, -1);
	lua_pop(L, 1);
	if (env)
		return luaL_error(L, "rawset on the globals table is not allowed");
	lua_settop(L, 3);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, 3, 1);
	return 1;
}

/* Globals may be set while the file loads (its own helpers); afterwards a
 * write would carry state from one request to the next. */
static int
l_set_global(lua_State *L)
{
	if (!script_owner(L)->loading)
		return luaL_error(L, "cannot set global '%s' while serving a request (use a local)",
		                  luaL_optstring(L, 2, "?"));
	lua_rawset(L, 1);
	return 0;
}

/* The string functions that run a pattern do all their work inside C,
 * out of the count hook's reach; a pattern with many quantifiers over a
 * long subject can backtrack for hours. Refuse the combinations whose
 * worst case (length ^ quantifiers) is beyond reach. */
static int
l_pattern_guard(lua_State *L)
{
	size_t len;
	luaL_checklstring(L, 1, &len);
	const char *pat = lua_tostring(L, 2);
	if (pat && len > 64) {
		int k = 0;
		bool anchored = pat[0] == '^';
		for (const char *p = pat; *p; p++) {
			if (*p == '%' && p[1]) {
				p++;
				continue;
			}
			if (*p == '*' || *p == '-' || *p == '+')
				k++;
		}
		/* An unanchored pattern is also tried at every start position. */
		int exponent = k + (anchored ? 0 : 1);
		double digits = 0;
		for (size_t n = len; n >= 10; n /= 10)
			digits++;
		if (k > 0 && digits * exponent > 8)
			return luaL_error(L, "pattern too costly for a %d-byte subject (%d quantifiers): "
			                     "simplify it or shorten the text", (int)len, k);
	}
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
	return lua_gettop(L);
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

/* Copies the named fields of a library table into a new table. */
static void
copy_fields(lua_State *L, int from, const char *const *names)
{
	lua_newtable(L);
	for (; *names; names++) {
		lua_getfield(L, from, *names);
		lua_setfield(L, -2, *names);
	}
}

/* Opens the allowed libraries and builds the environment every chunk of
 * this state runs in, kept at registry["rapport.env"]. The state's real
 * globals are never reachable from scripts. */
int
script_sandbox_build(lua_State *L)
{
	luaL_requiref(L, LUA_GNAME, luaopen_base, 0);
	luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 0);
	luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 0);
	luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 0);
	luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 0);
	luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
	luaL_requiref(L, "cjson", luaopen_cjson, 0);
	int base = 1, str = 2, tab = 3, math = 4, utf8 = 5, os = 6, cjson = 7;

	/* string.dump would hand out bytecode; the shared string metatable
	 * points at this table, so remove it here, not just from the env. */
	lua_pushnil(L);
	lua_setfield(L, str, "dump");

	lua_newtable(L);                     /* env */
	int env = lua_gettop(L);
	static const char *const base_fns[] = {
		"assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select",
		"tonumber", "tostring", "type", "rawequal", "rawlen", "rawget", "rawset",
		"setmetatable", "getmetatable", NULL,
	};
	for (const char *const *f = base_fns; *f; f++) {
		lua_getfield(L, base, *f);
		lua_setfield(L, env, *f);
	}
	/* Guarded versions (see above) over the real functions. */
	lua_getfield(L, base, "setmetatable");
	lua_pushcclosure(L, l_setmetatable, 1);
	lua_setfield(L, env, "setmetatable");
	lua_getfield(L, base, "rawset");
	lua_pushcclosure(L, l_rawset, 1);
	lua_setfield(L, env, "rawset");
	static const char *const pattern_fns[] = { "find", "match", "gmatch", "gsub", NULL };
	for (const char *const *f = pattern_fns; *f; f++) {
		lua_getfield(L, str, *f);
		lua_pushcclosure(L, l_pattern_guard, 1);
		lua_setfield(L, str, *f);
	}
	lua_pushvalue(L, str);
	lua_setfield(L, env, "string");
	lua_pushvalue(L, tab);
	lua_setfield(L, env, "table");
	lua_pushvalue(L, math);
	lua_setfield(L, env, "math");
	lua_pushvalue(L, utf8);
	lua_setfield(L, env, "utf8");
	static const char *const os_fns[] = { "time", "clock", "date", NULL };
	copy_fields(L, os, os_fns);
	lua_setfield(L, env, "os");
	/* lua-cjson is not exposed: its settings are process-wide, its
	 * buffers live outside the memory cap and its decoder recurses as
	 * deep as told. The capped `json` module does the same job. */
	(void)cjson;
	luajson_open(L);
	lua_setfield(L, env, "json");
	lua_pushcfunction(L, l_print);
	lua_setfield(L, env, "print");
	lua_pushcfunction(L, script_lua_require);
	lua_setfield(L, env, "require");
	lua_pushcfunction(L, script_lua_read_prompt);
	lua_setfield(L, env, "read_prompt");
	lua_createtable(L, 0, 1);
	lua_pushcfunction(L, script_lua_db_query);
	lua_setfield(L, -2, "query");
	lua_setfield(L, env, "db");
	lua_createtable(L, 0, 1);
	lua_pushcfunction(L, script_lua_llm_chat);
	lua_setfield(L, -2, "chat");
	lua_setfield(L, env, "llm");
	lua_pushvalue(L, env);
	lua_setfield(L, env, "_G");

	lua_newtable(L);                     /* env's metatable */
	lua_pushcfunction(L, l_undefined_global);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, l_set_global);
	lua_setfield(L, -2, "__newindex");
	lua_pushstring(L, "sandbox");
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, env);

	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.env");
	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.modules");
	/* Every call into the script runs in this coroutine (see budget_hook),
	 * anchored in the registry for the life of the state. */
	script_owner(L)->call_thread = lua_newthread(L);
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.call_thread");
	return 0;
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
