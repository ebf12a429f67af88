/*
 * script_steps — run(ctx): the script's own sequence of db.query() and
 * llm.chat() calls in a coroutine. Each call yields the one operation it
 * waits on; the caller does the I/O on the loop and resumes the coroutine
 * with the answer (script_run_resume_rows / script_run_resume_reply).
 */
#include "script_int.h"
#include "luajson.h"
#include "util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>

/* ---- run(ctx) ---------------------------------------------------------- */

/* The run whose coroutine is executing, or a Lua error when db/llm are used
 * anywhere else (prompt, post, the top level). */
static script_run *
running(lua_State *L, const char *what)
{
	script *s = script_owner(L);
	if (!s->active_run || s->active_run->co != L || !lua_isyieldable(L))
		luaL_error(L, "%s is only available inside run(ctx)", what);
	return s->active_run;
}

/* Finds a named query: the script's declared ones, then
 * script_query_lookup() (its own `sql` table, the loaded queries.lua).
 * Leaves nothing on the stack. */
static const char *
named_sql(lua_State *L, script *s, const char *name, bool *one)
{
	for (int i = 0; i < s->nqueries; i++)
		if (strcmp(s->queries[i].name, name) == 0) {
			*one = s->queries[i].one;
			return s->queries[i].sql;
		}
	lua_rawgeti(L, LUA_REGISTRYINDEX, s->table_ref);
	const char *sql = script_query_lookup(L, s, -1, name, one, false);
	lua_pop(L, 1);
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
int
script_lua_db_query(lua_State *L)
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
	script_pending_clear(run);
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
int
script_lua_llm_chat(lua_State *L)
{
	script_run *run = running(L, "llm.chat");
	script *s = run->s;
	char err[256];
	luaL_checktype(L, 1, LUA_TTABLE);
	/* The request is C memory until the yield hands it to the run: boxed
	 * first, so an error below (the memory cap, a bad option) frees it. */
	json_t **box = luajson_box(L);
	json_t *msgs = luajson_from_lua(L, 1, NULL, err, sizeof err);
	if (!msgs && s->meter.refused)
		return luaL_error(L, "llm.chat: script exceeded its memory cap");
	if (!msgs)
		return luaL_error(L, "llm.chat: messages are not JSON: %s", err);
	*box = json_object();
	if (!*box || json_object_set_new(*box, "messages", msgs) != 0) {
		if (!*box)
			json_decref(msgs);
		return luaL_error(L, "llm.chat: script exceeded its memory cap");
	}
	if (!script_valid_messages(msgs, err, sizeof err))
		return luaL_error(L, "llm.chat: %s", err);
	json_t *req = *box;
	const char *model = s->model;
	if (lua_istable(L, 2)) {
		if (script_rawfield(L, 2, "model") == LUA_TSTRING)
			model = lua_tostring(L, -1);
		if (script_rawfield(L, 2, "temperature") == LUA_TNUMBER)
			json_object_set_new(req, "temperature", json_real(lua_tonumber(L, -1)));
		if (script_rawfield(L, 2, "max_tokens") == LUA_TNUMBER)
			json_object_set_new(req, "max_completion_tokens",
			                    json_integer((json_int_t)lua_tointeger(L, -1)));
		if (script_rawfield(L, 2, "schema") == LUA_TTABLE) {
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
	if (s->meter.refused)
		return luaL_error(L, "llm.chat: script exceeded its memory cap");
	/* From here nothing raises before the yield; the run owns req. */
	script_pending_clear(run);
	run->p_request = req;
	*box = NULL;
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
	script_arm_limits(s, co);
	int nres = 0;
	struct luajson_meter *prev = luajson_meter_use(&s->meter);
	int rc = lua_resume(co, s->L, nargs, &nres);
	luajson_meter_use(prev);
	s->meter.used = 0;           /* what jansson still holds is no call's */
	lua_sethook(co, NULL, 0, 0);
	s->active_run = NULL;
	if (s->stopped) {
		char msg[400];
		script_stopped_message(s, msg, sizeof msg);
		snprintf(err, errlen, "script %s: run failed: %s", s->name, msg);
		script_log_error(s, co, err);
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
	const char *msg = script_error_text(co);
	if (rc == LUA_ERRMEM)
		msg = "script exceeded its memory cap (not enough memory)";
	if (!msg)
		msg = "error object is not a string";
	size_t first = strcspn(msg, "\n");
	snprintf(err, errlen, "script %s: run failed: %.*s", s->name, (int)first, msg);
	util_utf8_trim(err);
	script_log_error(s, co, err);
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
	script_push_decl_fn(L, run, "run");
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
	if (!script_run_prepare(run, err, errlen))
		return SCRIPT_ERROR;
	struct start_args a = { run };
	lua_pushcfunction(s->L, p_new_co);
	lua_pushlightuserdata(s->L, &a);
	if (!script_pcall(s, 1, 0, err, errlen))
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
			script_push_row(L, a->res, 0);
		else
			lua_pushnil(L);
		return 1;
	}
	lua_createtable(L, nrows, 0);
	for (int r = 0; r < nrows; r++) {
		script_push_row(L, a->res, r);
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

/* Resumes the run's coroutine with what its step waited for: the one value
 * push(arg) leaves (run in a protected call, since building it can raise),
 * or, when push is NULL, nil and the failure text. */
static enum script_step
resume(script_run *run, lua_CFunction push, void *arg, const char *failure,
       struct script_wait *wait, json_t **result, char *err, size_t errlen)
{
	script *s = run->s;
	lua_State *L = s->L;
	*result = NULL;
	int n;
	if (push) {
		lua_pushcfunction(L, push);
		lua_pushlightuserdata(L, arg);
		if (!script_pcall(s, 1, 1, err, errlen))
			return SCRIPT_ERROR;
		n = 1;
	} else {
		lua_pushnil(L);
		lua_pushstring(L, failure);
		n = 2;
	}
	script_pending_clear(run);
	if (!hand_over(run, n, err, errlen))
		return SCRIPT_ERROR;
	return step(run, n, wait, result, err, errlen);
}

enum script_step
script_run_resume_rows(script_run *run, const PGresult *res, const char *dberr,
                       struct script_wait *wait, json_t **result, char *err, size_t errlen)
{
	struct rows_args a = { run, res };
	return resume(run, res ? p_push_rows : NULL, &a, dberr ? dberr : "query failed", wait,
	              result, err, errlen);
}

struct reply_push_args {
	struct script_reply_args r;
	long prompt_tokens, completion_tokens;
};

static int
p_push_step_reply(lua_State *L)
{
	struct reply_push_args *a = lua_touserdata(L, 1);
	lua_pushcfunction(L, script_push_reply);
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
	struct reply_push_args a = {
		{ content ? content : "", finish_reason, model }, prompt_tokens, completion_tokens,
	};
	return resume(run, llmerr ? NULL : p_push_step_reply, &a, llmerr, wait, result, err,
	              errlen);
}
