/*
 * script_run — one request's use of a script: script_run_new() makes a ctx
 * table in the type's state → script_run_add_rows() turns each PGresult
 * into typed Lua rows → script_run_request() calls prompt(ctx) and builds
 * the chat request as jansson JSON → (the model answers) →
 * script_run_post() calls post(reply, ctx) and converts the result back to
 * JSON, guided by the schema.
 */
#include "script_int.h"
#include "luajson.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

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
	run->decl_ref = LUA_NOREF;
	struct new_ctx_args a = { contact_id, s->name, now_iso, LUA_NOREF };
	char err[256];
	lua_pushcfunction(s->L, p_new_ctx);
	lua_pushlightuserdata(s->L, &a);
	if (script_pcall(s, 1, 0, err, sizeof err))
		run->ctx_ref = a.ref;
	return run;
}

void
script_pending_clear(script_run *run)
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
	script_pending_clear(run);
	/* A suspended coroutine is just garbage once unanchored. */
	luaL_unref(run->s->L, LUA_REGISTRYINDEX, run->co_ref);
	luaL_unref(run->s->L, LUA_REGISTRYINDEX, run->ctx_ref);
	luaL_unref(run->s->L, LUA_REGISTRYINDEX, run->decl_ref);
	free(run->prep_error);
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
	case OID_JSON: case OID_JSONB:
		if (luajson_push_text(L, v, (size_t)PQgetlength(res, row, col), JSON_DECODE_ANY) < 0)
			lua_pushstring(L, v);
		break;
	default:
		lua_pushlstring(L, v, (size_t)PQgetlength(res, row, col));
	}
}

void
script_push_row(lua_State *L, const PGresult *res, int row)
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
			script_push_row(L, a->res, 0);
		else
			lua_pushnil(L);
	} else {
		lua_createtable(L, nrows, 0);
		for (int r = 0; r < nrows; r++) {
			script_push_row(L, a->res, r);
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
	return script_pcall(run->s, 1, 0, err, errlen);
}

bool
script_run_contact_missing(const script_run *run)
{
	return run->contact_missing;
}

/* ---- this request's own run of the file --------------------------------- */

/* Module-level state must not carry one contact's data into another's
 * request. So a request does not call the functions of the load-time run:
 * before its first call into the script it runs the file's top level
 * afresh (the factory, see load_factory) in a fresh environment, with
 * fresh modules; prompt, post, fallback and run come from what that run
 * returned. Locals, tables and closures of the file are its own; only the
 * prompt texts read at load and the compiled code are shared. */

struct env_args {
	int env_ref, modules_ref;
};

static int
p_new_env(lua_State *L)
{
	struct env_args *a = lua_touserdata(L, 1);
	script_sandbox_new_env(L);
	a->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_newtable(L);
	a->modules_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

static int
p_keep_decl(lua_State *L)
{
	script_run *run = lua_touserdata(L, 2);
	if (!lua_istable(L, 1))
		return luaL_error(L, "%s: the script must return a table (got %s)", run->s->path,
		                  luaL_typename(L, 1));
	lua_settop(L, 1);
	run->decl_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

bool
script_run_prepare(script_run *run, char *err, size_t errlen)
{
	script *s = run->s;
	lua_State *L = s->L;
	if (run->decl_ref != LUA_NOREF)
		return true;
	char lerr[512];
	if (!run->prep_error) {
		struct env_args a = { LUA_NOREF, LUA_NOREF };
		lua_pushcfunction(L, p_new_env);
		lua_pushlightuserdata(L, &a);
		bool ok = script_pcall(s, 1, 0, lerr, sizeof lerr);
		if (ok) {
			lua_rawgeti(L, LUA_REGISTRYINDEX, s->factory_ref);
			lua_rawgeti(L, LUA_REGISTRYINDEX, a.env_ref);
			s->cur_env_ref = a.env_ref;
			s->cur_modules_ref = a.modules_ref;
			s->phase = SCRIPT_REPLAYING;
			ok = script_pcall(s, 1, 1, lerr, sizeof lerr);
			s->phase = SCRIPT_SERVING;
			s->cur_env_ref = s->env_ref;
			s->cur_modules_ref = s->modules_ref;
		}
		if (ok) {
			lua_pushcfunction(L, p_keep_decl);
			lua_insert(L, -2);
			lua_pushlightuserdata(L, run);
			ok = script_pcall(s, 2, 0, lerr, sizeof lerr);
		}
		/* The closures keep what they use; the anchors are not needed. */
		luaL_unref(L, LUA_REGISTRYINDEX, a.env_ref);
		luaL_unref(L, LUA_REGISTRYINDEX, a.modules_ref);
		if (ok)
			return true;
		run->prep_error = xasprintf("script %s: the file's top level failed for this request: %s",
		                            s->name, lerr);
	}
	snprintf(err, errlen, "%s", run->prep_error);
	return false;
}

/* Pushes the function `name` of this request's run of the file (nil when
 * it has none). */
void
script_push_decl_fn(lua_State *L, script_run *run, const char *name)
{
	lua_rawgeti(L, LUA_REGISTRYINDEX, run->decl_ref);
	if (lua_istable(L, -1)) {
		lua_pushstring(L, name);
		lua_rawget(L, -2);
		lua_remove(L, -2);
	}
}


/* Checks prompt()'s messages: a non-empty list of {role, content}. */
bool
script_valid_messages(const json_t *m, char *err, size_t errlen)
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
	if (!script_run_prepare(run, err, errlen))
		return NULL;
	script_push_decl_fn(L, run, "prompt");
	lua_rawgeti(L, LUA_REGISTRYINDEX, run->ctx_ref);
	char lerr[512];
	if (!script_pcall(s, 1, 1, lerr, sizeof lerr)) {
		snprintf(err, errlen, "script %s: prompt failed: %s", s->name, lerr);
		return NULL;
	}
	json_t *messages = luajson_from_lua(L, -1, NULL, lerr, sizeof lerr);
	lua_pop(L, 1);
	if (!messages) {
		snprintf(err, errlen, "script %s: prompt returned bad messages: %s", s->name, lerr);
		return NULL;
	}
	if (!script_valid_messages(messages, lerr, sizeof lerr)) {
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
int
script_push_reply(lua_State *L)
{
	struct script_reply_args *a = lua_touserdata(L, 1);
	lua_createtable(L, 0, 4);
	lua_pushstring(L, a->content);
	lua_setfield(L, -2, "text");
	int type = luajson_push_text(L, a->content, strlen(a->content), 0);
	if (type != JSON_OBJECT) {
		if (type >= 0)
			lua_pop(L, 1);
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
	if (s->has_post && !script_run_prepare(run, err, errlen))
		return NULL;
	struct script_reply_args a = { content ? content : "", finish_reason, model };
	lua_pushcfunction(L, script_push_reply);
	lua_pushlightuserdata(L, &a);
	if (!script_pcall(s, 1, 1, lerr, sizeof lerr)) {
		snprintf(err, errlen, "script %s: %s", s->name, lerr);
		return NULL;
	}
	int reply = lua_gettop(L);
	if (!s->has_post) {
		lua_pushcfunction(L, p_default_post);
		lua_insert(L, reply);
		if (!script_pcall(s, 1, 1, lerr, sizeof lerr)) {
			snprintf(err, errlen, "script %s: %s", s->name, lerr);
			return NULL;
		}
		return take_result(s, "the default post", err, errlen);
	}
	script_push_decl_fn(L, run, "post");
	lua_insert(L, reply);                    /* post, reply */
	lua_rawgeti(L, LUA_REGISTRYINDEX, run->ctx_ref);
	if (!script_pcall(s, 2, 1, lerr, sizeof lerr)) {
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
	if (!script_pcall(run->s, 2, 0, err, errlen)) {
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
	if (!script_run_prepare(run, err, errlen))
		return NULL;
	script_push_decl_fn(L, run, "fallback");
	lua_rawgeti(L, LUA_REGISTRYINDEX, run->ctx_ref);
	if (!script_pcall(s, 1, 1, lerr, sizeof lerr)) {
		snprintf(err, errlen, "script %s: fallback failed: %s", s->name, lerr);
		return NULL;
	}
	return take_result(s, "fallback(ctx)", err, errlen);
}
