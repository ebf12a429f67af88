/*
 * script — the Lua host: sandboxed states, loading and validating analysis
 * scripts, the registry of types, and one request's calls into Lua.
 *
 * Data flow of a request: script_run_new() makes a ctx table in the type's
 * state → script_run_add_rows() turns each PGresult into typed Lua rows →
 * script_run_request() calls prompt(ctx) and builds the chat request as
 * jansson JSON → (the model answers) → script_run_post() calls post(reply,
 * ctx) and converts the result back to JSON, guided by the schema.
 *
 * Every entry into Lua goes through lua_pcall, so a Lua error (including
 * the budget and memory cap) becomes an error string here and never a
 * longjmp through C frames that own resources.
 */
#include "script.h"
#include "jschema.h"
#include "log.h"
#include "luajson.h"
#include "util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lua-cjson.h>
#include <lualib.h>

#define HOOK_EVERY 1000          /* instructions between budget checks */
#define MAX_QUERIES 32

struct script {
	int refs;
	lua_State *L;
	char *name, *path, *description, *model, *version;
	double ttl_ms, temperature;
	long max_tokens;
	struct script_query queries[MAX_QUERIES];
	int nqueries;
	json_t *schema;
	int table_ref;               /* the table the file returned */
	bool has_post, has_fallback, has_run;
	struct script_info info;
	script_run *active_run;      /* whose coroutine is running, for db/llm */

	/* Limits, enforced by the allocator and the count hook. */
	size_t mem_used, mem_cap;
	long budget, spent;
	long wall_ms;                /* per call into Lua */
	int max_steps;               /* run(ctx) I/O calls */
	double deadline_ms;
	bool stopped;                /* the hook stopped the current call */
	char stop_where[160], stop_why[48];
	lua_State *call_thread;      /* reusable coroutine every call runs in */

	/* Load-time state: read_prompt() works only while loading, and every
	 * input read feeds the version hash. */
	bool loading;
	uint64_t hash;
	const char *scripts_dir, *prompts_dir;
};

struct reg_entry {
	char *name;
	script *current;
	char *error;
};

struct script_registry {
	char *scripts_dir, *prompts_dir, *default_model;
	struct script_limits limits;
	struct reg_entry *entries;
	int n;
	script_validator *validate;  /* runs before a new version may serve */
	void *validate_arg;
};

struct script_run {
	script *s;
	int64_t contact_id;
	int ctx_ref;
	bool contact_missing;

	/* run(ctx): the coroutine and the one operation it waits on. */
	lua_State *co;
	int co_ref;
	int steps;                   /* resumes so far, against max_steps */
	enum script_step pending;
	char *p_sql;
	char **p_params;
	int p_nparams;
	bool p_one;
	json_t *p_request;
};

/* ---- the state: allocator, budget, sandbox ---------------------------- */

static void *
capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
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

static script *
owner(lua_State *L)
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
	script *s = owner(L);
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
static const char *
error_text(lua_State *co)
{
	return lua_type(co, -1) == LUA_TSTRING ? lua_tostring(co, -1)
	                                       : "error object is not a string";
}

static void
arm_limits(script *s, lua_State *co)
{
	s->spent = 0;
	s->stopped = false;
	s->deadline_ms = s->wall_ms > 0 ? util_now_ms() + s->wall_ms : 0;
	lua_sethook(co, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

/* The message for a stopped script, naming where it was. */
static void
stopped_message(script *s, char *err, size_t errlen)
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
static void
log_script_error(script *s, lua_State *co, const char *err)
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
	owner(L)->call_thread = lua_newthread(L);
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.call_thread");
	return 0;
}

/* Calls the function below nargs arguments on the main stack under the
 * limits, in the state's reusable call coroutine (see budget_hook). Returns
 * true with nresults on the main stack, or false with the first line of
 * the error (file:line: message) in err; the traceback goes to the log. */
static bool
pcall_budget(script *s, int nargs, int nresults, char *err, size_t errlen)
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
	arm_limits(s, co);
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
		stopped_message(s, err, errlen);
	} else {
		const char *msg = rc == LUA_ERRMEM ? "not enough memory" : error_text(co);
		if (rc == LUA_ERRMEM)
			snprintf(err, errlen, "%s: script exceeded its memory cap (not enough memory)", s->path);
		else
			snprintf(err, errlen, "%.*s", (int)strcspn(msg ? msg : "error object is not a string", "\n"),
			         msg ? msg : "error object is not a string");
		util_utf8_trim(err);
	}
	log_script_error(s, co, err);
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
	if (!owner(L)->loading)
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
	log_event(LOG_INFO, "script print", LOG_S("script", owner(L)->name),
	          LOG_S("text", lua_tostring(L, -1)), LOG_END);
	return 0;
}

/* A path component a script may name: no "..", no absolute paths. */
static bool
safe_relpath(const char *p)
{
	if (!*p || *p == '/' || strstr(p, ".."))
		return false;
	for (; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr("_-./", *p))
			return false;
	return true;
}

static void
hash_input(script *s, const char *label, const char *data, size_t len)
{
	s->hash = util_fnv1a(s->hash, label, strlen(label) + 1);
	s->hash = util_fnv1a(s->hash, data, len);
}

/* read_prompt(name) → text of prompts/<name>; load time only. */
static int
l_read_prompt(lua_State *L)
{
	script *s = owner(L);
	const char *name = luaL_checkstring(L, 1);
	if (!s->loading)
		return luaL_error(L, "read_prompt is only available while the script loads "
		                     "(call it at the top level of the file)");
	if (!safe_relpath(name))
		return luaL_error(L, "read_prompt: bad prompt name '%s'", name);
	char *path = xasprintf("%s/%s", s->prompts_dir, name);
	size_t len;
	char *text = util_read_file(path, &len);
	int saved = errno;
	free(path);
	if (!text)
		return luaL_error(L, "read_prompt: cannot read prompt '%s': %s", name, strerror(saved));
	hash_input(s, name, text, len);
	lua_pushlstring(L, text, len);   /* may raise: copy first, then free */
	free(text);
	return 1;
}

/* require(name) → the module scripts/lib/<name>.lua, loaded once per state
 * into the same sandbox. Nothing outside scripts/lib is reachable. */
static int
l_require(lua_State *L)
{
	script *s = owner(L);
	const char *name = luaL_checkstring(L, 1);
	lua_getfield(L, LUA_REGISTRYINDEX, "rapport.modules");
	if (lua_getfield(L, -1, name) != LUA_TNIL)
		return 1;
	lua_pop(L, 1);
	for (const char *p = name; *p; p++)
		if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '_' && *p != '.')
			return luaL_error(L, "require: bad module name '%s' (modules live in scripts/lib)", name);
	if (!s->loading)
		return luaL_error(L, "require is only available while the script loads");
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	luaL_addstring(&b, s->scripts_dir);
	luaL_addstring(&b, "/lib/");
	for (const char *p = name; *p; p++)
		luaL_addchar(&b, *p == '.' ? '/' : *p);
	luaL_addstring(&b, ".lua");
	luaL_pushresult(&b);
	const char *path = lua_tostring(L, -1);
	size_t len;
	char *src = util_read_file(path, &len);
	if (!src)
		return luaL_error(L, "require: module '%s' not found in scripts/lib", name);
	hash_input(s, path, src, len);
	/* Short chunk names: Lua cuts long ones to "...tail" in messages. */
	lua_pushfstring(L, "@scripts/lib/%s.lua", name);
	int rc = luaL_loadbufferx(L, src, len, lua_tostring(L, -1), "t");
	free(src);
	if (rc != LUA_OK) {
		const char *m = lua_tostring(L, -1);
		if (m && strncmp(m, "scripts/", 8) != 0)
			return luaL_error(L, "scripts/lib/%s.lua: %s", name, m);
		return lua_error(L);
	}
	lua_getfield(L, LUA_REGISTRYINDEX, "rapport.env");
	lua_setupvalue(L, -2, 1);
	lua_call(L, 0, 1);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		lua_pushboolean(L, 1);
	}
	lua_pushvalue(L, -1);
	lua_setfield(L, -5, name);     /* rapport.modules[name] */
	return 1;
}

static int l_db_query(lua_State *L);
static int l_llm_chat(lua_State *L);

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
static int
build_sandbox(lua_State *L)
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
	lua_pushcfunction(L, l_require);
	lua_setfield(L, env, "require");
	lua_pushcfunction(L, l_read_prompt);
	lua_setfield(L, env, "read_prompt");
	lua_createtable(L, 0, 1);
	lua_pushcfunction(L, l_db_query);
	lua_setfield(L, -2, "query");
	lua_setfield(L, env, "db");
	lua_createtable(L, 0, 1);
	lua_pushcfunction(L, l_llm_chat);
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
	owner(L)->call_thread = lua_newthread(L);
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.call_thread");
	return 0;
}

static int
l_panic(lua_State *L)
{
	log_msg(LOG_ERROR, "unprotected Lua error: %s", lua_tostring(L, -1));
	abort();
}

static void
l_warn(void *ud, const char *msg, int tocont)
{
	(void)ud;
	(void)tocont;
	log_event(LOG_WARN, "lua warning", LOG_S("text", msg), LOG_END);
}

/* ---- loading and validating ------------------------------------------- */

static void
script_free(script *s)
{
	if (s->L)
		lua_close(s->L);
	for (int i = 0; i < s->nqueries; i++) {
		free(s->queries[i].name);
		free(s->queries[i].sql);
	}
	json_decref(s->schema);
	free(s->name);
	free(s->path);
	free(s->description);
	free(s->model);
	free(s->version);
	free(s);
}

void
script_ref(script *s)
{
	s->refs++;
}

void
script_unref(script *s)
{
	if (s && --s->refs == 0)
		script_free(s);
}

const struct script_info *
script_info(const script *s)
{
	return &s->info;
}

/* Raw field access: a script's table may carry metamethods, and reading
 * its declaration must not run its code. */
static int
rawfield(lua_State *L, int t, const char *k)
{
	lua_pushstring(L, k);
	return lua_rawget(L, t);
}

/* Adds one named query, resolving the name against the script's own `sql`
 * table (decl is the script's table), then scripts/lib/queries.lua. */
static void
resolve_query(lua_State *L, script *s, int decl, const char *name)
{
	int top = lua_gettop(L);
	int found = LUA_TNIL;
	if (rawfield(L, decl, "sql") == LUA_TTABLE)
		found = rawfield(L, lua_gettop(L), name);
	if (found == LUA_TNIL) {
		lua_settop(L, top);
		lua_pushcfunction(L, l_require);
		lua_pushstring(L, "queries");
		lua_call(L, 1, 1);
		if (!lua_istable(L, -1))
			luaL_error(L, "scripts/lib/queries.lua must return a table");
		found = rawfield(L, lua_gettop(L), name);
	}
	const char *sql = NULL;
	bool one = false;
	if (found == LUA_TSTRING) {
		sql = lua_tostring(L, -1);
	} else if (found == LUA_TTABLE) {
		int q = lua_gettop(L);
		if (rawfield(L, q, "sql") == LUA_TSTRING)
			sql = lua_tostring(L, -1);
		one = rawfield(L, q, "one") == LUA_TBOOLEAN && lua_toboolean(L, -1);
		lua_pop(L, 1);
	}
	if (!sql)
		luaL_error(L, "%s: query '%s' is not defined (neither in this script's sql table "
		              "nor in scripts/lib/queries.lua)", s->path, name);
	if (s->nqueries == MAX_QUERIES)
		luaL_error(L, "too many queries (at most %d)", MAX_QUERIES);
	struct script_query *sq = &s->queries[s->nqueries++];
	sq->name = xstrdup(name);
	sq->sql = xstrdup(sql);
	sq->one = one;
	hash_input(s, name, sql, strlen(sql));
	hash_input(s, "one", one ? "1" : "0", 1);
	lua_settop(L, top);
}

static bool
valid_type_name(const char *n)
{
	if (!*n)
		return false;
	for (; *n; n++)
		if (!islower((unsigned char)*n) && !isdigit((unsigned char)*n) && *n != '_')
			return false;
	return true;
}

/* Checks the declaration table at index 1 and copies what C needs.
 * Runs under lua_pcall: errors are raised with luaL_error. */
static int
validate_decl(lua_State *L)
{
	script *s = owner(L);
	if (!lua_istable(L, 1))
		return luaL_error(L, "%s: the script must return a table (got %s)", s->path,
		                  luaL_typename(L, 1));
	int t = 1;
	if (rawfield(L, t, "description") != LUA_TSTRING)
		return luaL_error(L, "%s: 'description' must be a string", s->path);
	s->description = xstrdup(lua_tostring(L, -1));
	lua_pop(L, 1);

	int ty = rawfield(L, t, "run");
	if (ty != LUA_TNIL && ty != LUA_TFUNCTION)
		return luaL_error(L, "%s: 'run' must be a function(ctx) returning the result", s->path);
	s->has_run = ty == LUA_TFUNCTION;
	lua_pop(L, 1);
	ty = rawfield(L, t, "prompt");
	if (ty != LUA_TFUNCTION && !(ty == LUA_TNIL && s->has_run))
		return luaL_error(L, "%s: 'prompt' must be a function(ctx) returning messages "
		                     "(or define run(ctx))", s->path);
	lua_pop(L, 1);
	if (s->has_run) {
		/* run() may name queries at run time, when require is closed:
		 * load the shared ones now (it is fine if there are none). */
		lua_pushcfunction(L, l_require);
		lua_pushstring(L, "queries");
		lua_pcall(L, 1, 0, 0) == LUA_OK ? (void)0 : lua_pop(L, 1);
	}
	ty = rawfield(L, t, "post");
	if (ty != LUA_TNIL && ty != LUA_TFUNCTION)
		return luaL_error(L, "%s: 'post' must be a function(reply, ctx)", s->path);
	s->has_post = ty == LUA_TFUNCTION;
	lua_pop(L, 1);
	ty = rawfield(L, t, "fallback");
	if (ty != LUA_TNIL && ty != LUA_TFUNCTION)
		return luaL_error(L, "%s: 'fallback' must be a function(ctx)", s->path);
	s->has_fallback = ty == LUA_TFUNCTION;
	lua_pop(L, 1);

	ty = rawfield(L, t, "ttl");
	if (ty == LUA_TNUMBER && lua_tonumber(L, -1) > 0 && lua_tonumber(L, -1) <= 30 * 86400)
		s->ttl_ms = lua_tonumber(L, -1) * 1000.0;
	else if (ty != LUA_TNIL)
		return luaL_error(L, "%s: 'ttl' must be a number of seconds from 1 to 2592000 (30 days)",
		                  s->path);
	lua_pop(L, 1);

	ty = rawfield(L, t, "model");
	if (ty == LUA_TSTRING) {
		free(s->model);
		s->model = xstrdup(lua_tostring(L, -1));
	} else if (ty != LUA_TNIL) {
		return luaL_error(L, "%s: 'model' must be a string", s->path);
	}
	lua_pop(L, 1);

	ty = rawfield(L, t, "temperature");
	if (ty == LUA_TNUMBER && lua_tonumber(L, -1) >= 0 && lua_tonumber(L, -1) <= 2)
		s->temperature = lua_tonumber(L, -1);
	else if (ty != LUA_TNIL)
		return luaL_error(L, "%s: 'temperature' must be a number from 0 to 2", s->path);
	lua_pop(L, 1);

	ty = rawfield(L, t, "max_tokens");
	if (ty == LUA_TNUMBER && lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0)
		s->max_tokens = (long)lua_tointeger(L, -1);
	else if (ty != LUA_TNIL)
		return luaL_error(L, "%s: 'max_tokens' must be a positive integer", s->path);
	lua_pop(L, 1);

	ty = rawfield(L, t, "schema");
	if (ty == LUA_TTABLE) {
		char err[256];
		s->schema = luajson_from_lua(L, -1, NULL, err, sizeof err);
		if (!s->schema)
			return luaL_error(L, "%s: 'schema' is not valid JSON: %s", s->path, err);
		if (!json_is_object(s->schema))
			return luaL_error(L, "%s: 'schema' must be a JSON Schema object", s->path);
		/* OpenAI refuses a strict schema that breaks its rules; say so
		 * at load, with the place, not at the first request. */
		char serr[512];
		if (!jschema_check_strict(s->schema, serr, sizeof serr))
			return luaL_error(L, "%s: 'schema' is not valid for strict structured outputs: %s",
			                  s->path, serr);
		char *dump = json_dumps(s->schema, JSON_COMPACT | JSON_SORT_KEYS);
		hash_input(s, "schema", dump, strlen(dump));
		free(dump);
	} else if (ty != LUA_TNIL) {
		return luaL_error(L, "%s: 'schema' must be a table", s->path);
	}
	lua_pop(L, 1);

	ty = rawfield(L, t, "queries");
	if (ty == LUA_TTABLE) {
		int q = lua_gettop(L);
		lua_Integer n = (lua_Integer)lua_rawlen(L, q);
		for (lua_Integer i = 1; i <= n; i++) {
			if (lua_rawgeti(L, q, i) != LUA_TSTRING)
				return luaL_error(L, "%s: 'queries' must be a list of query names", s->path);
			char name[128];
			snprintf(name, sizeof name, "%s", lua_tostring(L, -1));
			lua_pop(L, 1);
			resolve_query(L, s, t, name);
		}
	} else if (ty != LUA_TNIL) {
		return luaL_error(L, "%s: 'queries' must be a list of query names", s->path);
	}
	/* Anchored here, under protection, because luaL_ref may allocate. */
	lua_pushvalue(L, t);
	s->table_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

static script *
script_load(script_registry *r, const char *name, char **error)
{
	script *s = xcalloc(1, sizeof *s);
	s->refs = 1;
	s->name = xstrdup(name);
	s->path = xasprintf("%s/%s.lua", r->scripts_dir, name);
	s->model = xstrdup(r->default_model);
	s->ttl_ms = 300000;
	s->temperature = -1;
	s->mem_cap = r->limits.memory_bytes;
	s->budget = r->limits.instructions;
	s->wall_ms = r->limits.wall_ms;
	s->max_steps = r->limits.max_steps > 0 ? r->limits.max_steps : 32;
	s->scripts_dir = r->scripts_dir;
	s->prompts_dir = r->prompts_dir;
	s->hash = UTIL_FNV_SEED;
	s->table_ref = LUA_NOREF;
	char err[1024];

	s->L = lua_newstate(capped_alloc, s);
	if (!s->L) {
		*error = xasprintf("%s: cannot create a Lua state", s->path);
		goto fail;
	}
	*(script **)lua_getextraspace(s->L) = s;
	lua_atpanic(s->L, l_panic);
	lua_setwarnf(s->L, l_warn, NULL);
	lua_State *L = s->L;

	lua_pushcfunction(L, build_sandbox);
	if (!pcall_budget(s, 0, 0, err, sizeof err)) {
		*error = xasprintf("%s: %s", s->path, err);
		goto fail;
	}

	size_t len;
	char *src = util_read_file(s->path, &len);
	if (!src) {
		*error = xasprintf("%s: %s", s->path, strerror(errno));
		goto fail;
	}
	hash_input(s, "script", src, len);
	/* Messages say "scripts/<type>.lua:LINE:", whatever the folder's real
	 * path: Lua cuts long chunk names to "...tail". */
	char *chunk = xasprintf("@scripts/%s.lua", name);
	int rc = luaL_loadbufferx(L, src, len, chunk, "t");
	free(chunk);
	free(src);
	if (rc != LUA_OK) {
		const char *m = lua_tostring(L, -1) ? lua_tostring(L, -1) : "cannot load";
		/* Syntax errors carry "scripts/x.lua:LINE:" already; others
		 * (a binary chunk) get the file named. */
		*error = strncmp(m, "scripts/", 8) == 0 ? xstrdup(m) : xasprintf("scripts/%s.lua: %s", name, m);
		goto fail;
	}
	lua_getfield(L, LUA_REGISTRYINDEX, "rapport.env");
	lua_setupvalue(L, -2, 1);
	s->loading = true;
	bool ok = pcall_budget(s, 0, 1, err, sizeof err);
	if (ok) {
		lua_pushcfunction(L, validate_decl);
		lua_pushvalue(L, -2);
		ok = pcall_budget(s, 1, 0, err, sizeof err);
	}
	s->loading = false;
	if (!ok) {
		*error = xstrdup(err);
		goto fail;
	}
	lua_settop(L, 0);
	lua_gc(L, LUA_GCCOLLECT);
	/* Requests make many short-lived tables in a long-lived state: the
	 * generational collector handles that with less work per request. */
	lua_gc(L, LUA_GCGEN, 0, 0);

	s->version = xasprintf("%016llx", (unsigned long long)s->hash);
	s->info = (struct script_info){
		.name = s->name, .description = s->description, .version = s->version,
		.path = s->path, .model = s->model, .ttl_ms = s->ttl_ms,
		.temperature = s->temperature, .max_tokens = s->max_tokens,
		.queries = s->queries, .nqueries = s->nqueries, .schema = s->schema,
		.has_post = s->has_post, .has_fallback = s->has_fallback, .has_run = s->has_run,
	};
	return s;
fail:
	script_free(s);
	return NULL;
}

/* ---- the registry ----------------------------------------------------- */

script_registry *
script_registry_create(const char *scripts_dir, const char *prompts_dir,
                       const char *default_model, const struct script_limits *limits)
{
	script_registry *r = xcalloc(1, sizeof *r);
	r->scripts_dir = xstrdup(scripts_dir);
	r->prompts_dir = xstrdup(prompts_dir);
	r->default_model = xstrdup(default_model);
	r->limits = *limits;
	return r;
}

static void
entry_clear(struct reg_entry *e)
{
	free(e->name);
	free(e->error);
	script_unref(e->current);
}

void
script_registry_destroy(script_registry *r)
{
	if (!r)
		return;
	for (int i = 0; i < r->n; i++)
		entry_clear(&r->entries[i]);
	free(r->entries);
	free(r->scripts_dir);
	free(r->prompts_dir);
	free(r->default_model);
	free(r);
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static struct reg_entry *
find_entry(const script_registry *r, const char *name)
{
	for (int i = 0; i < r->n; i++)
		if (strcmp(r->entries[i].name, name) == 0)
			return &r->entries[i];
	return NULL;
}

int
script_registry_reload(script_registry *r)
{
	DIR *d = opendir(r->scripts_dir);
	if (!d) {
		log_event(LOG_ERROR, "cannot open scripts folder", LOG_S("path", r->scripts_dir),
		          LOG_S("error", strerror(errno)), LOG_END);
		return 1;
	}
	char **names = NULL;
	int nnames = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);
		if (len <= 4 || strcmp(de->d_name + len - 4, ".lua") != 0 || de->d_name[0] == '.')
			continue;
		names = xrealloc(names, sizeof(char *) * (size_t)(nnames + 1));
		names[nnames++] = xstrndup(de->d_name, len - 4);
	}
	closedir(d);
	if (nnames > 1)
		qsort(names, (size_t)nnames, sizeof(char *), cmp_names);

	struct reg_entry *next = xcalloc((size_t)nnames + 1, sizeof *next);
	int failures = 0;
	for (int i = 0; i < nnames; i++) {
		struct reg_entry *old = find_entry(r, names[i]);
		struct reg_entry *e = &next[i];
		e->name = names[i];
		char *error = NULL;
		script *s = NULL;
		if (!valid_type_name(names[i]))
			error = xasprintf("%s/%s.lua: type names may only use a-z, 0-9 and _",
			                  r->scripts_dir, names[i]);
		else
			s = script_load(r, names[i], &error);
		/* Compiled is not enough: a version that cannot render its own
		 * fixture's prompt must not replace one that can. */
		if (s && r->validate && !r->validate(r->validate_arg, s, &error)) {
			script_unref(s);
			s = NULL;
		}
		if (s) {
			e->current = s;
			if (!old || !old->current || strcmp(old->current->version, s->version) != 0)
				log_event(LOG_INFO, "script loaded", LOG_S("type", e->name),
				          LOG_S("version", s->version), LOG_END);
		} else {
			failures++;
			e->error = error;
			/* The previous version keeps serving until a good edit. */
			if (old && old->current) {
				e->current = old->current;
				script_ref(e->current);
			}
			log_event(LOG_ERROR, "script failed to load", LOG_S("type", e->name),
			          LOG_S("error", error),
			          LOG_S("serving", e->current ? e->current->version : NULL), LOG_END);
		}
	}
	for (int i = 0; i < r->n; i++) {
		if (!find_entry(&(script_registry){ .entries = next, .n = nnames }, r->entries[i].name))
			log_event(LOG_INFO, "script removed", LOG_S("type", r->entries[i].name), LOG_END);
		entry_clear(&r->entries[i]);
	}
	free(r->entries);
	free(names);
	r->entries = next;
	r->n = nnames;
	return failures;
}

void
script_registry_set_validator(script_registry *r, script_validator *fn, void *arg)
{
	r->validate = fn;
	r->validate_arg = arg;
}

const char *
script_registry_scripts_dir(const script_registry *r)
{
	return r->scripts_dir;
}

script *
script_registry_get(script_registry *r, const char *type)
{
	struct reg_entry *e = find_entry(r, type);
	return e ? e->current : NULL;
}

json_t *
script_registry_describe(const script_registry *r)
{
	json_t *list = json_array();
	int n = script_registry_count(r);
	for (int i = 0; i < n; i++) {
		const char *name, *error;
		script *cur;
		script_registry_entry(r, i, &name, &cur, &error);
		json_t *t = json_object();
		json_object_set_new(t, "name", json_string(name));
		if (cur) {
			const struct script_info *si = script_info(cur);
			json_object_set_new(t, "version", json_stringn(si->version, 8));
			json_object_set_new(t, "description", json_string(si->description));
			json_object_set_new(t, "model", json_string(si->model));
			json_object_set_new(t, "ttl", json_real(si->ttl_ms / 1000.0));
			json_t *qs = json_array();
			for (int k = 0; k < si->nqueries; k++)
				json_array_append_new(qs, json_string(si->queries[k].name));
			json_object_set_new(t, "queries", qs);
			json_object_set_new(t, "structured", json_boolean(si->schema != NULL));
			json_object_set_new(t, "has_fallback", json_boolean(si->has_fallback));
		}
		json_object_set_new(t, "loaded", json_boolean(cur != NULL));
		json_object_set_new(t, "error", error ? json_string(error) : json_null());
		json_array_append_new(list, t);
	}
	return list;
}

int
script_registry_count(const script_registry *r)
{
	return r->n;
}

void
script_registry_entry(const script_registry *r, int i, const char **name, script **current,
                      const char **error)
{
	*name = r->entries[i].name;
	*current = r->entries[i].current;
	*error = r->entries[i].error;
}

/* ---- one request ------------------------------------------------------- */

struct new_ctx_args {
	int64_t contact_id;
	const char *type, *now;
	int ref;
};

static int
p_new_ctx(lua_State *L)
{
	struct new_ctx_args *a = lua_touserdata(L, 1);
	lua_createtable(L, 0, 8);
	lua_pushinteger(L, (lua_Integer)a->contact_id);
	lua_setfield(L, -2, "contact_id");
	lua_pushstring(L, a->type);
	lua_setfield(L, -2, "type");
	lua_pushstring(L, a->now);
	lua_setfield(L, -2, "now");
	a->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

script_run *
script_run_new(script *s, int64_t contact_id, const char *now_iso)
{
	script_run *run = xcalloc(1, sizeof *run);
	script_ref(s);
	run->s = s;
	run->contact_id = contact_id;
	run->ctx_ref = LUA_NOREF;
	run->co_ref = LUA_NOREF;
	struct new_ctx_args a = { contact_id, s->name, now_iso, LUA_NOREF };
	char err[256];
	lua_pushcfunction(s->L, p_new_ctx);
	lua_pushlightuserdata(s->L, &a);
	if (pcall_budget(s, 1, 0, err, sizeof err))
		run->ctx_ref = a.ref;
	return run;
}

static void
pending_clear(script_run *run)
{
	free(run->p_sql);
	for (int i = 0; i < run->p_nparams; i++)
		free(run->p_params[i]);
	free(run->p_params);
	json_decref(run->p_request);
	run->p_sql = NULL;
	run->p_params = NULL;
	run->p_nparams = 0;
	run->p_request = NULL;
}

void
script_run_free(script_run *run)
{
	if (!run)
		return;
	pending_clear(run);
	/* A suspended coroutine is just garbage once unanchored. */
	luaL_unref(run->s->L, LUA_REGISTRYINDEX, run->co_ref);
	luaL_unref(run->s->L, LUA_REGISTRYINDEX, run->ctx_ref);
	script_unref(run->s);
	free(run);
}

/* Postgres text output → "2026-11-25T21:00:00Z". With TimeZone=UTC and
 * DateStyle=ISO a timestamptz reads "2026-11-25 21:00:00.123+00". */
static void
push_timestamp(lua_State *L, const char *v, bool tz)
{
	char buf[64];
	size_t n = strlen(v);
	if (n >= sizeof buf - 2) {
		lua_pushstring(L, v);
		return;
	}
	memcpy(buf, v, n + 1);
	char *sp = strchr(buf, ' ');
	if (sp)
		*sp = 'T';
	if (tz && n >= 3 && strcmp(buf + n - 3, "+00") == 0)
		strcpy(buf + n - 3, "Z");
	lua_pushstring(L, buf);
}

/* Oids of the built-in types that get a Lua type other than string. */
enum {
	OID_BOOL = 16, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_OID = 26,
	OID_JSON = 114, OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_DATE = 1082,
	OID_TIMESTAMP = 1114, OID_TIMESTAMPTZ = 1184, OID_NUMERIC = 1700, OID_JSONB = 3802,
};

static void
push_cell(lua_State *L, const PGresult *res, int row, int col)
{
	const char *v = PQgetvalue(res, row, col);
	switch (PQftype(res, col)) {
	case OID_BOOL:
		lua_pushboolean(L, v[0] == 't');
		break;
	case OID_INT2: case OID_INT4: case OID_INT8: case OID_OID:
		lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
		break;
	case OID_FLOAT4: case OID_FLOAT8: case OID_NUMERIC:
		lua_pushnumber(L, strtod(v, NULL));
		break;
	case OID_TIMESTAMP:
		push_timestamp(L, v, false);
		break;
	case OID_TIMESTAMPTZ:
		push_timestamp(L, v, true);
		break;
	case OID_JSON: case OID_JSONB: {
		json_t *j = json_loads(v, JSON_DECODE_ANY, NULL);
		if (j)
			luajson_push_owned(L, j);
		else
			lua_pushstring(L, v);
		break;
	}
	default:
		lua_pushlstring(L, v, (size_t)PQgetlength(res, row, col));
	}
}

static void
push_row(lua_State *L, const PGresult *res, int row)
{
	int ncols = PQnfields(res);
	lua_createtable(L, 0, ncols);
	for (int c = 0; c < ncols; c++) {
		if (PQgetisnull(res, row, c))
			continue;    /* NULL → nil: the key is simply absent */
		push_cell(L, res, row, c);
		lua_setfield(L, -2, PQfname(res, c));
	}
}

struct add_rows_args {
	script_run *run;
	const struct script_query *q;
	const PGresult *res;
};

static int
p_add_rows(lua_State *L)
{
	struct add_rows_args *a = lua_touserdata(L, 1);
	int nrows = PQntuples(a->res);
	lua_rawgeti(L, LUA_REGISTRYINDEX, a->run->ctx_ref);
	if (a->q->one) {
		if (nrows > 0)
			push_row(L, a->res, 0);
		else
			lua_pushnil(L);
	} else {
		lua_createtable(L, nrows, 0);
		for (int r = 0; r < nrows; r++) {
			push_row(L, a->res, r);
			lua_rawseti(L, -2, r + 1);
		}
		luajson_mark_array(L, -1);
	}
	lua_setfield(L, -2, a->q->name);
	return 0;
}

bool
script_run_add_rows(script_run *run, const struct script_query *q, const PGresult *res,
                    char *err, size_t errlen)
{
	if (run->ctx_ref == LUA_NOREF) {
		snprintf(err, errlen, "script %s: no context (out of memory)", run->s->name);
		return false;
	}
	if (q->one && PQntuples(res) == 0 && strcmp(q->name, "contact") == 0)
		run->contact_missing = true;
	struct add_rows_args a = { run, q, res };
	lua_pushcfunction(run->s->L, p_add_rows);
	lua_pushlightuserdata(run->s->L, &a);
	return pcall_budget(run->s, 1, 0, err, errlen);
}

bool
script_run_contact_missing(const script_run *run)
{
	return run->contact_missing;
}

/* Checks prompt()'s messages: a non-empty list of {role, content}. */
static bool
valid_messages(const json_t *m, char *err, size_t errlen)
{
	if (!json_is_array(m) || json_array_size(m) == 0) {
		snprintf(err, errlen, "prompt(ctx) must return a non-empty list of messages");
		return false;
	}
	size_t i;
	json_t *msg;
	json_array_foreach(m, i, msg) {
		if (!json_is_string(json_object_get(msg, "role")) ||
		    !json_is_string(json_object_get(msg, "content"))) {
			snprintf(err, errlen, "message %zu must have string 'role' and 'content'", i + 1);
			return false;
		}
	}
	return true;
}

json_t *
script_run_request(script_run *run, char *err, size_t errlen)
{
	script *s = run->s;
	lua_State *L = s->L;
	lua_rawgeti(L, LUA_REGISTRYINDEX, s->table_ref);
	lua_pushstring(L, "prompt");
	lua_rawget(L, -2);
	lua_remove(L, -2);
	lua_rawgeti(L, LUA_REGISTRYINDEX, run->ctx_ref);
	char lerr[512];
	if (!pcall_budget(s, 1, 1, lerr, sizeof lerr)) {
		snprintf(err, errlen, "script %s: prompt failed: %s", s->name, lerr);
		return NULL;
	}
	json_t *messages = luajson_from_lua(L, -1, NULL, lerr, sizeof lerr);
	lua_pop(L, 1);
	if (!messages) {
		snprintf(err, errlen, "script %s: prompt returned bad messages: %s", s->name, lerr);
		return NULL;
	}
	if (!valid_messages(messages, lerr, sizeof lerr)) {
		snprintf(err, errlen, "script %s: %s", s->name, lerr);
		json_decref(messages);
		return NULL;
	}
	json_t *req = json_object();
	json_object_set_new(req, "model", json_string(s->model));
	json_object_set_new(req, "messages", messages);
	if (s->temperature >= 0)
		json_object_set_new(req, "temperature", json_real(s->temperature));
	if (s->max_tokens > 0)
		json_object_set_new(req, "max_completion_tokens", json_integer(s->max_tokens));
	if (s->schema) {
		json_t *rf = json_pack("{s:s, s:{s:s, s:O, s:b}}", "type", "json_schema",
		                       "json_schema", "name", s->name, "schema", s->schema,
		                       "strict", 1);
		json_object_set_new(req, "response_format", rf);
	}
	return req;
}

/* Turns the Lua value on top into the result object (popping it). */
static json_t *
take_result(script *s, const char *what, char *err, size_t errlen)
{
	lua_State *L = s->L;
	char lerr[512];
	if (!lua_istable(L, -1)) {
		snprintf(err, errlen, "script %s: %s must return a table, got %s", s->name, what,
		         luaL_typename(L, -1));
		lua_pop(L, 1);
		return NULL;
	}
	json_t *result = luajson_from_lua(L, -1, s->schema, lerr, sizeof lerr);
	lua_pop(L, 1);
	if (!result) {
		snprintf(err, errlen, "script %s: %s returned a value that is not JSON: %s",
		         s->name, what, lerr);
		return NULL;
	}
	if (!json_is_object(result)) {
		snprintf(err, errlen, "script %s: %s must return an object-like table", s->name, what);
		json_decref(result);
		return NULL;
	}
	return result;
}

struct reply_args {
	const char *content, *finish_reason, *model;
};

/* Without post(): the decoded JSON object, else {text = reply.text}. */
static int
p_default_post(lua_State *L)
{
	if (lua_getfield(L, 1, "data") != LUA_TNIL)
		return 1;
	lua_createtable(L, 0, 1);
	lua_getfield(L, 1, "text");
	lua_setfield(L, -2, "text");
	return 1;
}

/* Builds reply = {text, data, finish_reason, model}. */
static int
p_push_reply(lua_State *L)
{
	struct reply_args *a = lua_touserdata(L, 1);
	lua_createtable(L, 0, 4);
	lua_pushstring(L, a->content);
	lua_setfield(L, -2, "text");
	json_t *data = json_loads(a->content, 0, NULL);
	if (json_is_object(data))
		luajson_push_owned(L, data);
	else {
		json_decref(data);
		lua_pushnil(L);
	}
	lua_setfield(L, -2, "data");
	if (a->finish_reason) {
		lua_pushstring(L, a->finish_reason);
		lua_setfield(L, -2, "finish_reason");
	}
	if (a->model) {
		lua_pushstring(L, a->model);
		lua_setfield(L, -2, "model");
	}
	return 1;
}

json_t *
script_run_post(script_run *run, const char *content, const char *finish_reason,
                const char *model, char *err, size_t errlen)
{
	script *s = run->s;
	lua_State *L = s->L;
	char lerr[512];
	struct reply_args a = { content ? content : "", finish_reason, model };
	lua_pushcfunction(L, p_push_reply);
	lua_pushlightuserdata(L, &a);
	if (!pcall_budget(s, 1, 1, lerr, sizeof lerr)) {
		snprintf(err, errlen, "script %s: %s", s->name, lerr);
		return NULL;
	}
	int reply = lua_gettop(L);
	if (!s->has_post) {
		lua_pushcfunction(L, p_default_post);
		lua_insert(L, reply);
		if (!pcall_budget(s, 1, 1, lerr, sizeof lerr)) {
			snprintf(err, errlen, "script %s: %s", s->name, lerr);
			return NULL;
		}
		return take_result(s, "the default post", err, errlen);
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, s->table_ref);
	lua_pushstring(L, "post");
	lua_rawget(L, -2);
	lua_remove(L, -2);
	lua_insert(L, reply);                    /* post, reply */
	lua_rawgeti(L, LUA_REGISTRYINDEX, run->ctx_ref);
	if (!pcall_budget(s, 2, 1, lerr, sizeof lerr)) {
		snprintf(err, errlen, "script %s: post failed: %s", s->name, lerr);
		return NULL;
	}
	return take_result(s, "post(reply, ctx)", err, errlen);
}

json_t *
script_run_ctx_json(script_run *run, char *err, size_t errlen)
{
	lua_State *L = run->s->L;
	if (run->ctx_ref == LUA_NOREF) {
		snprintf(err, errlen, "no context");
		return NULL;
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, run->ctx_ref);
	json_t *v = luajson_from_lua(L, -1, NULL, err, errlen);
	lua_pop(L, 1);
	return v;
}

static int
p_set_ctx(lua_State *L)
{
	script_run *run = lua_touserdata(L, 1);
	const json_t *ctx = lua_touserdata(L, 2);
	luajson_push(L, ctx);
	run->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

bool
script_run_set_ctx_json(script_run *run, const json_t *ctx, char *err, size_t errlen)
{
	if (!json_is_object(ctx)) {
		snprintf(err, errlen, "the context must be an object");
		return false;
	}
	lua_State *L = run->s->L;
	int old = run->ctx_ref;
	lua_pushcfunction(L, p_set_ctx);
	lua_pushlightuserdata(L, run);
	lua_pushlightuserdata(L, (void *)ctx);
	if (!pcall_budget(run->s, 2, 0, err, errlen)) {
		run->ctx_ref = old;
		return false;
	}
	luaL_unref(L, LUA_REGISTRYINDEX, old);
	run->contact_missing = false;
	return true;
}

json_t *
script_run_fallback(script_run *run, char *err, size_t errlen)
{
	script *s = run->s;
	err[0] = '\0';
	if (!s->has_fallback)
		return NULL;
	lua_State *L = s->L;
	char lerr[512];
	lua_rawgeti(L, LUA_REGISTRYINDEX, s->table_ref);
	lua_pushstring(L, "fallback");
	lua_rawget(L, -2);
	lua_remove(L, -2);
	lua_rawgeti(L, LUA_REGISTRYINDEX, run->ctx_ref);
	if (!pcall_budget(s, 1, 1, lerr, sizeof lerr)) {
		snprintf(err, errlen, "script %s: fallback failed: %s", s->name, lerr);
		return NULL;
	}
	return take_result(s, "fallback(ctx)", err, errlen);
}

/* ---- run(ctx) ---------------------------------------------------------- */

/* The run whose coroutine is executing, or a Lua error when db/llm are used
 * anywhere else (prompt, post, the top level). */
static script_run *
running(lua_State *L, const char *what)
{
	script *s = owner(L);
	if (!s->active_run || s->active_run->co != L || !lua_isyieldable(L))
		luaL_error(L, "%s is only available inside run(ctx)", what);
	return s->active_run;
}

/* Finds a named query: the script's declared ones, its own `sql` table,
 * then scripts/lib/queries.lua. Leaves nothing on the stack. */
static const char *
named_sql(lua_State *L, script *s, const char *name, bool *one)
{
	for (int i = 0; i < s->nqueries; i++)
		if (strcmp(s->queries[i].name, name) == 0) {
			*one = s->queries[i].one;
			return s->queries[i].sql;
		}
	const char *sql = NULL;
	int top = lua_gettop(L);
	int found = LUA_TNIL;
	lua_rawgeti(L, LUA_REGISTRYINDEX, s->table_ref);
	if (rawfield(L, lua_gettop(L), "sql") == LUA_TTABLE)
		found = rawfield(L, lua_gettop(L), name);
	if (found == LUA_TNIL) {
		lua_getfield(L, LUA_REGISTRYINDEX, "rapport.modules");
		if (rawfield(L, lua_gettop(L), "queries") == LUA_TTABLE)
			found = rawfield(L, lua_gettop(L), name);
	}
	*one = false;
	if (found == LUA_TSTRING) {
		sql = lua_tostring(L, -1);
	} else if (found == LUA_TTABLE) {
		int q = lua_gettop(L);
		if (rawfield(L, q, "sql") == LUA_TSTRING)
			sql = lua_tostring(L, -1);
		*one = rawfield(L, q, "one") == LUA_TBOOLEAN && lua_toboolean(L, -1);
	}
	/* The string stays alive: it is held by a table that outlives us. */
	lua_settop(L, top);
	return sql;
}

/* Whether ad-hoc SQL starts like a query (comments and blanks skipped).
 * The sessions are read-only besides; this also keeps out statements a
 * read-only session still allows, such as COPY … TO PROGRAM. */
static bool
reads_only(const char *sql)
{
	for (;;) {
		while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '\r' || *sql == '(')
			sql++;
		if (sql[0] == '-' && sql[1] == '-') {
			sql += strcspn(sql, "\n");
			continue;
		}
		if (sql[0] == '/' && sql[1] == '*') {
			const char *end = strstr(sql + 2, "*/");
			if (!end)
				return false;
			sql = end + 2;
			continue;
		}
		break;
	}
	static const char *const ok[] = { "select", "with", "values", "table", NULL };
	for (const char *const *w = ok; *w; w++) {
		size_t n = strlen(*w);
		if (strncasecmp(sql, *w, n) == 0 && !isalnum((unsigned char)sql[n]) && sql[n] != '_')
			return true;
	}
	return false;
}

/* db.query(name_or_sql [, params]) → rows | row | nil, err  (yields) */
static int
l_db_query(lua_State *L)
{
	script_run *run = running(L, "db.query");
	script *s = run->s;
	const char *what = luaL_checkstring(L, 1);
	bool one = false;
	const char *sql = named_sql(L, s, what, &one);
	bool named = sql != NULL;
	if (!sql) {
		if (!strpbrk(what, " \t\n"))
			return luaL_error(L, "db.query: no query named '%s'", what);
		if (!reads_only(what))
			return luaL_error(L, "db.query: only SELECT, WITH, VALUES or TABLE statements "
			                     "may be run from a script");
		sql = what;
	}
	/* Parameters as text, converted on the Lua stack first: nothing C
	 * allocates may be live while a conversion can raise. */
	int base = lua_gettop(L) + 1;
	int n = 0;
	if (lua_istable(L, 2)) {
		n = (int)lua_rawlen(L, 2);
		if (n > 64)
			return luaL_error(L, "db.query: at most 64 parameters");
		luaL_checkstack(L, n, "db.query parameters");
		for (int i = 1; i <= n; i++) {
			lua_rawgeti(L, 2, i);
			if (lua_isboolean(L, -1)) {
				lua_pushstring(L, lua_toboolean(L, -1) ? "true" : "false");
				lua_remove(L, -2);
			} else if (!lua_isstring(L, -1)) {
				return luaL_error(L, "db.query: parameter %d must be a string, number or boolean", i);
			} else {
				luaL_tolstring(L, -1, NULL);
				lua_remove(L, -2);
			}
		}
	} else if (!lua_isnoneornil(L, 2)) {
		return luaL_error(L, "db.query: parameters must be a list");
	} else if (named) {
		lua_pushinteger(L, (lua_Integer)run->contact_id);   /* $1 = the contact */
		luaL_tolstring(L, -1, NULL);
		lua_remove(L, -2);
		n = 1;
	}
	pending_clear(run);
	run->p_sql = xstrdup(sql);
	run->p_one = one && named;
	run->p_params = xcalloc((size_t)(n ? n : 1), sizeof(char *));
	for (int i = 0; i < n; i++)
		run->p_params[i] = xstrdup(lua_tostring(L, base + i));
	run->p_nparams = n;
	run->pending = SCRIPT_WAIT_QUERY;
	return lua_yield(L, 0);
}

/* llm.chat(messages [, {model, temperature, max_tokens, schema}])
 * → reply | nil, err  (yields) */
static int
l_llm_chat(lua_State *L)
{
	script_run *run = running(L, "llm.chat");
	script *s = run->s;
	char err[256];
	luaL_checktype(L, 1, LUA_TTABLE);
	json_t *msgs = luajson_from_lua(L, 1, NULL, err, sizeof err);
	if (!msgs)
		return luaL_error(L, "llm.chat: messages are not JSON: %s", err);
	if (!valid_messages(msgs, err, sizeof err)) {
		json_decref(msgs);
		return luaL_error(L, "llm.chat: %s", err);
	}
	json_t *req = json_object();
	json_object_set_new(req, "messages", msgs);
	const char *model = s->model;
	if (lua_istable(L, 2)) {
		if (rawfield(L, 2, "model") == LUA_TSTRING)
			model = lua_tostring(L, -1);
		if (rawfield(L, 2, "temperature") == LUA_TNUMBER)
			json_object_set_new(req, "temperature", json_real(lua_tonumber(L, -1)));
		if (rawfield(L, 2, "max_tokens") == LUA_TNUMBER)
			json_object_set_new(req, "max_completion_tokens",
			                    json_integer((json_int_t)lua_tointeger(L, -1)));
		if (rawfield(L, 2, "schema") == LUA_TTABLE) {
			json_t *schema = luajson_from_lua(L, -1, NULL, err, sizeof err);
			if (schema) {
				char name[80];
				snprintf(name, sizeof name, "%s_step", s->name);
				json_object_set_new(req, "response_format",
				                    json_pack("{s:s, s:{s:s, s:o, s:b}}", "type", "json_schema",
				                              "json_schema", "name", name, "schema", schema,
				                              "strict", 1));
			}
		}
	}
	json_object_set_new(req, "model", json_string(model));
	/* From here nothing may raise before the yield: req is C-owned. */
	pending_clear(run);
	run->p_request = req;
	run->pending = SCRIPT_WAIT_CHAT;
	return lua_yield(L, 0);
}

/* Resumes the coroutine with nargs values on its stack and reports what
 * happened next. */
static enum script_step
step(script_run *run, int nargs, struct script_wait *wait, json_t **result,
     char *err, size_t errlen)
{
	script *s = run->s;
	lua_State *co = run->co;
	*result = NULL;
	s->active_run = run;
	if (++run->steps > s->max_steps + 1) {
		s->active_run = NULL;
		snprintf(err, errlen, "script %s: run(ctx) made more than %d db.query/llm.chat calls",
		         s->name, s->max_steps);
		return SCRIPT_ERROR;
	}
	arm_limits(s, co);
	int nres = 0;
	int rc = lua_resume(co, s->L, nargs, &nres);
	lua_sethook(co, NULL, 0, 0);
	s->active_run = NULL;
	if (s->stopped) {
		char msg[400];
		stopped_message(s, msg, sizeof msg);
		snprintf(err, errlen, "script %s: run failed: %s", s->name, msg);
		log_script_error(s, co, err);
		return SCRIPT_ERROR;
	}
	if (rc == LUA_YIELD) {
		lua_pop(co, nres);
		memset(wait, 0, sizeof *wait);
		if (run->pending == SCRIPT_WAIT_QUERY) {
			wait->sql = run->p_sql;
			wait->nparams = run->p_nparams;
			wait->params = (const char *const *)run->p_params;
		} else {
			wait->request = run->p_request;
		}
		return run->pending;
	}
	if (rc == LUA_OK) {
		if (nres < 1 || !lua_istable(co, -1)) {
			snprintf(err, errlen, "script %s: run(ctx) must return a table", s->name);
			lua_settop(co, 0);
			return SCRIPT_ERROR;
		}
		char lerr[256];
		*result = luajson_from_lua(co, -1, s->schema, lerr, sizeof lerr);
		lua_settop(co, 0);
		if (!*result || !json_is_object(*result)) {
			json_decref(*result);
			*result = NULL;
			snprintf(err, errlen, "script %s: run(ctx) returned a value that is not a JSON object%s%s",
			         s->name, lerr[0] ? ": " : "", lerr);
			return SCRIPT_ERROR;
		}
		return SCRIPT_DONE;
	}
	const char *msg = error_text(co);
	if (rc == LUA_ERRMEM)
		msg = "script exceeded its memory cap (not enough memory)";
	if (!msg)
		msg = "error object is not a string";
	size_t first = strcspn(msg, "\n");
	snprintf(err, errlen, "script %s: run failed: %.*s", s->name, (int)first, msg);
	util_utf8_trim(err);
	log_script_error(s, co, err);
	return SCRIPT_ERROR;
}

struct start_args {
	script_run *run;
};

/* Makes the coroutine with run and ctx on its stack, anchored. */
static int
p_new_co(lua_State *L)
{
	struct start_args *a = lua_touserdata(L, 1);
	script_run *run = a->run;
	lua_State *co = lua_newthread(L);
	lua_rawgeti(L, LUA_REGISTRYINDEX, run->s->table_ref);
	lua_pushstring(L, "run");
	lua_rawget(L, -2);
	lua_remove(L, -2);
	lua_rawgeti(L, LUA_REGISTRYINDEX, run->ctx_ref);
	lua_xmove(L, co, 2);
	run->co = co;
	run->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);    /* pops the thread */
	return 0;
}

enum script_step
script_run_start(script_run *run, struct script_wait *wait, json_t **result,
                 char *err, size_t errlen)
{
	script *s = run->s;
	*result = NULL;
	if (!s->has_run) {
		snprintf(err, errlen, "script %s has no run(ctx)", s->name);
		return SCRIPT_ERROR;
	}
	struct start_args a = { run };
	lua_pushcfunction(s->L, p_new_co);
	lua_pushlightuserdata(s->L, &a);
	if (!pcall_budget(s, 1, 0, err, errlen))
		return SCRIPT_ERROR;
	return step(run, 1, wait, result, err, errlen);
}

struct rows_args {
	script_run *run;
	const PGresult *res;
};

/* Builds the rows value on the main thread (where a memory error is
 * caught), to be moved to the coroutine. */
static int
p_push_rows(lua_State *L)
{
	struct rows_args *a = lua_touserdata(L, 1);
	int nrows = PQntuples(a->res);
	if (a->run->p_one) {
		if (nrows > 0)
			push_row(L, a->res, 0);
		else
			lua_pushnil(L);
		return 1;
	}
	lua_createtable(L, nrows, 0);
	for (int r = 0; r < nrows; r++) {
		push_row(L, a->res, r);
		lua_rawseti(L, -2, r + 1);
	}
	luajson_mark_array(L, -1);
	return 1;
}

/* Moves the top n values of the main stack to the coroutine. */
static bool
hand_over(script_run *run, int n, char *err, size_t errlen)
{
	if (!lua_checkstack(run->co, n + 2)) {
		lua_pop(run->s->L, n);
		snprintf(err, errlen, "script %s: Lua stack exhausted", run->s->name);
		return false;
	}
	lua_xmove(run->s->L, run->co, n);
	return true;
}

enum script_step
script_run_resume_rows(script_run *run, const PGresult *res, const char *dberr,
                       struct script_wait *wait, json_t **result, char *err, size_t errlen)
{
	script *s = run->s;
	lua_State *L = s->L;
	*result = NULL;
	int n;
	if (res) {
		struct rows_args a = { run, res };
		lua_pushcfunction(L, p_push_rows);
		lua_pushlightuserdata(L, &a);
		if (!pcall_budget(s, 1, 1, err, errlen))
			return SCRIPT_ERROR;
		n = 1;
	} else {
		lua_pushnil(L);
		lua_pushstring(L, dberr ? dberr : "query failed");
		n = 2;
	}
	pending_clear(run);
	if (!hand_over(run, n, err, errlen))
		return SCRIPT_ERROR;
	return step(run, n, wait, result, err, errlen);
}

struct reply_push_args {
	struct reply_args r;
	long prompt_tokens, completion_tokens;
};

static int
p_push_step_reply(lua_State *L)
{
	struct reply_push_args *a = lua_touserdata(L, 1);
	lua_pushcfunction(L, p_push_reply);
	lua_pushlightuserdata(L, &a->r);
	lua_call(L, 1, 1);
	lua_createtable(L, 0, 2);
	lua_pushinteger(L, a->prompt_tokens);
	lua_setfield(L, -2, "prompt_tokens");
	lua_pushinteger(L, a->completion_tokens);
	lua_setfield(L, -2, "completion_tokens");
	lua_setfield(L, -2, "usage");
	return 1;
}

enum script_step
script_run_resume_reply(script_run *run, const char *content, const char *finish_reason,
                        const char *model, long prompt_tokens, long completion_tokens,
                        const char *llmerr, struct script_wait *wait, json_t **result,
                        char *err, size_t errlen)
{
	script *s = run->s;
	lua_State *L = s->L;
	*result = NULL;
	int n;
	if (!llmerr) {
		struct reply_push_args a = {
			{ content ? content : "", finish_reason, model }, prompt_tokens, completion_tokens,
		};
		lua_pushcfunction(L, p_push_step_reply);
		lua_pushlightuserdata(L, &a);
		if (!pcall_budget(s, 1, 1, err, errlen))
			return SCRIPT_ERROR;
		n = 1;
	} else {
		lua_pushnil(L);
		lua_pushstring(L, llmerr);
		n = 2;
	}
	pending_clear(run);
	if (!hand_over(run, n, err, errlen))
		return SCRIPT_ERROR;
	return step(run, n, wait, result, err, errlen);
}
