/*
 * script_load — compiling one analysis file into a `struct script`: its
 * load-time functions (read_prompt, require), the validation of the table
 * it returns, and the version hash over every input that shapes its output.
 */
#include "script_int.h"
#include "jschema.h"
#include "log.h"
#include "luajson.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

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

/* Compiles a file's text into its factory: first alone, so a syntax error
 * reads as it would for the file, then as the body of
 * `function(_ENV, ...)`, whose every call runs the file's top level afresh
 * in the environment it is given (new locals, new tables, new closures).
 * The prefix sits on the file's first line, so line numbers stay the
 * file's; a text that compiles alone is a block without a stray `end`, so
 * as a body it means the same. Pushes the factory (LUA_OK) or the error
 * message. Does not raise. */
static int
load_factory(lua_State *L, const char *src, size_t len, const char *chunk)
{
	int rc = luaL_loadbufferx(L, src, len, chunk, "t");
	if (rc != LUA_OK)
		return rc;
	lua_pop(L, 1);
	static const char head[] = "return function(_ENV, ...) ", tail[] = "\nend";
	size_t nh = sizeof head - 1, nt = sizeof tail - 1;
	char *w = xmalloc(nh + len + nt);
	memcpy(w, head, nh);
	memcpy(w + nh, src, len);
	memcpy(w + nh + len, tail, nt);
	rc = luaL_loadbufferx(L, w, nh + len + nt, chunk, "t");
	free(w);
	if (rc != LUA_OK)
		return rc;
	return lua_pcall(L, 0, 1, 0);
}

/* read_prompt(name) → text of prompts/<name>; while the file's top level
 * runs. A request's fresh run gets the text read at load, so the version
 * hash covers everything a request can see. */
int
script_lua_read_prompt(lua_State *L)
{
	script *s = script_owner(L);
	const char *name = luaL_checkstring(L, 1);
	if (s->phase == SCRIPT_SERVING)
		return luaL_error(L, "read_prompt is only available while the script loads "
		                     "(call it at the top level of the file)");
	if (!safe_relpath(name))
		return luaL_error(L, "read_prompt: bad prompt name '%s'", name);
	lua_getfield(L, LUA_REGISTRYINDEX, "rapport.prompts");
	int cache = lua_gettop(L);
	if (s->phase == SCRIPT_REPLAYING) {
		if (lua_getfield(L, cache, name) != LUA_TSTRING)
			return luaL_error(L, "read_prompt: prompt '%s' was not read when the script loaded",
			                  name);
		return 1;
	}
	void **box = script_box_new(L);          /* before the file is taken */
	char *path = xasprintf("%s/%s", s->prompts_dir, name);
	size_t len;
	*box = util_read_file(path, &len);
	int saved = errno;
	free(path);
	if (!*box)
		return luaL_error(L, "read_prompt: cannot read prompt '%s': %s", name, strerror(saved));
	hash_input(s, name, *box, len);
	lua_pushlstring(L, *box, len);
	free(*box);
	*box = NULL;
	lua_pushvalue(L, -1);
	lua_setfield(L, cache, name);
	return 1;
}

/* require(name) → the module scripts/lib/<name>.lua, run once per run of
 * the file, in the same environment. At load the file is read and compiled
 * into a factory; a request's fresh run calls the factories again. Nothing
 * outside scripts/lib is reachable. */
int
script_lua_require(lua_State *L)
{
	script *s = script_owner(L);
	const char *name = luaL_checkstring(L, 1);
	for (const char *p = name; *p; p++)
		if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '_' && *p != '.')
			return luaL_error(L, "require: bad module name '%s' (modules live in scripts/lib)", name);
	if (s->phase == SCRIPT_SERVING)
		return luaL_error(L, "require is only available while the script loads");
	lua_rawgeti(L, LUA_REGISTRYINDEX, s->cur_modules_ref);
	int mods = lua_gettop(L);
	if (lua_getfield(L, mods, name) != LUA_TNIL)
		return 1;
	lua_pop(L, 1);
	lua_getfield(L, LUA_REGISTRYINDEX, "rapport.factories");
	int facs = lua_gettop(L);
	if (lua_getfield(L, facs, name) == LUA_TNIL) {
		if (s->phase == SCRIPT_REPLAYING)
			return luaL_error(L, "require: module '%s' was not loaded when the script loaded",
			                  name);
		lua_pop(L, 1);
		void **box = script_box_new(L);
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
		*box = util_read_file(path, &len);
		if (!*box)
			return luaL_error(L, "require: module '%s' not found in scripts/lib", name);
		hash_input(s, path, *box, len);
		/* Short chunk names: Lua cuts long ones to "...tail" in messages. */
		lua_pushfstring(L, "@scripts/lib/%s.lua", name);
		int rc = load_factory(L, *box, len, lua_tostring(L, -1));
		free(*box);
		*box = NULL;
		if (rc != LUA_OK) {
			const char *m = lua_tostring(L, -1);
			if (m && strncmp(m, "scripts/", 8) != 0)
				return luaL_error(L, "scripts/lib/%s.lua: %s", name, m);
			return lua_error(L);
		}
		lua_pushvalue(L, -1);
		lua_setfield(L, facs, name);
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, s->cur_env_ref);
	lua_call(L, 1, 1);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		lua_pushboolean(L, 1);
	}
	lua_pushvalue(L, -1);
	lua_setfield(L, mods, name);
	return 1;
}

/* ---- loading and validating ------------------------------------------- */

void
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
int
script_rawfield(lua_State *L, int t, const char *k)
{
	lua_pushstring(L, k);
	return lua_rawget(L, t);
}

const char *
script_query_lookup(lua_State *L, script *s, int decl, const char *name, bool *one, bool load)
{
	decl = lua_absindex(L, decl);
	int top = lua_gettop(L);
	int found = LUA_TNIL;
	if (script_rawfield(L, decl, "sql") == LUA_TTABLE)
		found = script_rawfield(L, lua_gettop(L), name);
	if (found == LUA_TNIL) {
		lua_settop(L, top);
		if (load) {
			lua_pushcfunction(L, script_lua_require);
			lua_pushstring(L, "queries");
			lua_call(L, 1, 1);
			if (!lua_istable(L, -1))
				luaL_error(L, "scripts/lib/queries.lua must return a table");
			found = script_rawfield(L, lua_gettop(L), name);
		} else {
			lua_rawgeti(L, LUA_REGISTRYINDEX, s->modules_ref);
			if (script_rawfield(L, lua_gettop(L), "queries") == LUA_TTABLE)
				found = script_rawfield(L, lua_gettop(L), name);
		}
	}
	const char *sql = NULL;
	*one = false;
	if (found == LUA_TSTRING) {
		sql = lua_tostring(L, -1);
	} else if (found == LUA_TTABLE) {
		int q = lua_gettop(L);
		if (script_rawfield(L, q, "sql") == LUA_TSTRING)
			sql = lua_tostring(L, -1);
		*one = script_rawfield(L, q, "one") == LUA_TBOOLEAN && lua_toboolean(L, -1);
	}
	lua_settop(L, top);
	return sql;
}

/* Adds one named query (decl is the script's table).
 * Runs under lua_pcall: errors are raised with luaL_error. */
static void
resolve_query(lua_State *L, script *s, int decl, const char *name)
{
	bool one = false;
	const char *sql = script_query_lookup(L, s, decl, name, &one, true);
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
}

/* ---- unknown top-level fields -------------------------------------------- */

/* Every field a script's table may have. A field not listed here is a typo
 * ("querys", "temprature") that would otherwise be ignored in silence: the
 * load fails and names the nearest of these. */
static const char *const script_known_fields[] = {
	"description", "prompt", "post", "run", "fallback", "ttl", "stale_ttl", "model",
	"temperature", "max_tokens", "queries", "sql", "schema", NULL,
};

/* Levenshtein distance of a and b (each cut at 63 bytes: field names). */
static int
edit_distance(const char *a, const char *b)
{
	int la = (int)strnlen(a, 63), lb = (int)strnlen(b, 63);
	int row[64];
	for (int j = 0; j <= lb; j++)
		row[j] = j;
	for (int i = 1; i <= la; i++) {
		int diag = row[0];
		row[0] = i;
		for (int j = 1; j <= lb; j++) {
			int up = row[j];
			int cost = a[i - 1] == b[j - 1] ? 0 : 1;
			int best = diag + cost;
			if (row[j] + 1 < best)
				best = row[j] + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

/* The line of the script where `name =` first appears (the field's
 * declaration, as far as a text search can tell), or 0. */
static int
field_line(const char *path, const char *name)
{
	size_t len, nlen = strlen(name);
	char *src = util_read_file(path, &len);
	if (!src)
		return 0;
	int line = 1, found = 0;
	for (const char *p = src; *p && !found; p++) {
		if (*p == '\n') {
			line++;
			continue;
		}
		bool start = p == src || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
		if (!start || strncmp(p, name, nlen) != 0)
			continue;
		const char *q = p + nlen;
		while (*q == ' ' || *q == '\t')
			q++;
		if (*q == '=' && q[1] != '=')
			found = line;
	}
	free(src);
	return found;
}

/* One unknown field's complaint: "file:line: unknown field 'x' (did you
 * mean 'y'?)", with the list of fields when none is close. */
static char *
unknown_field_message(const script *s, const char *key, int *line)
{
	const char *best = NULL;
	int best_d = 1 << 30;
	for (const char *const *f = script_known_fields; *f; f++) {
		int d = edit_distance(key, *f);
		if (d < best_d)
			best_d = d, best = *f;
	}
	char shown[80];
	snprintf(shown, sizeof shown, "%s", key);
	util_utf8_trim(shown);
	*line = field_line(s->path, key);
	char where[32] = "";
	if (*line > 0)
		snprintf(where, sizeof where, ":%d", *line);
	/* A suggestion only when it is plausibly the same word. */
	if (best && best_d <= (strlen(key) > 6 ? 3 : 2))
		return xasprintf("%s%s: unknown field '%s' (did you mean '%s'?)", s->path, where, shown,
		                 best);
	return xasprintf("%s%s: unknown field '%s'; a script may return description, prompt, post, "
	                 "run, fallback, ttl, stale_ttl, model, temperature, max_tokens, queries, sql "
	                 "and schema (docs/scripts.md)",
	                 s->path, where, shown);
}

/* Raises one error naming every key of the table at index t that no script
 * field has, in the order of their lines. Runs under lua_pcall, like
 * validate_decl (the messages are pushed before the raise, so nothing
 * malloc'd is left behind). */
static void
check_unknown_fields(lua_State *L, script *s, int t)
{
	enum { MAX_REPORTED = 8 };
	char *msg[MAX_REPORTED];
	int line[MAX_REPORTED], n = 0;
	lua_pushnil(L);
	while (lua_next(L, t)) {
		lua_pop(L, 1);
		if (lua_type(L, -1) != LUA_TSTRING) {
			for (int i = 0; i < n; i++)
				free(msg[i]);
			luaL_error(L, "%s: the returned table has an entry with a %s key; every entry must "
			              "be a named field (description = …, prompt = …)",
			           s->path, luaL_typename(L, -1));
		}
		const char *key = lua_tostring(L, -1);
		bool known = false;
		for (const char *const *f = script_known_fields; *f && !known; f++)
			known = strcmp(key, *f) == 0;
		if (known || n == MAX_REPORTED)
			continue;
		msg[n] = unknown_field_message(s, key, &line[n]);
		n++;
	}
	if (n == 0)
		return;
	/* Sorted by line (insertion sort: a handful at most). */
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && line[j] < line[j - 1]; j--) {
			char *m = msg[j];
			int l = line[j];
			msg[j] = msg[j - 1], line[j] = line[j - 1];
			msg[j - 1] = m, line[j - 1] = l;
		}
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	for (int i = 0; i < n; i++) {
		if (i)
			luaL_addstring(&b, "; ");
		luaL_addstring(&b, msg[i]);
	}
	for (int i = 0; i < n; i++)
		free(msg[i]);
	luaL_pushresult(&b);
	lua_error(L);
}

/* Checks the declaration table at index 1 (the factory at 2) and copies
 * what C needs.
 * Runs under lua_pcall: errors are raised with luaL_error. */
static int
validate_decl(lua_State *L)
{
	script *s = script_owner(L);
	if (!lua_istable(L, 1))
		return luaL_error(L, "%s: the script must return a table (got %s)", s->path,
		                  luaL_typename(L, 1));
	int t = 1;
	check_unknown_fields(L, s, t);
	if (script_rawfield(L, t, "description") != LUA_TSTRING)
		return luaL_error(L, "%s: 'description' must be a string", s->path);
	s->description = xstrdup(lua_tostring(L, -1));
	lua_pop(L, 1);

	int ty = script_rawfield(L, t, "run");
	if (ty != LUA_TNIL && ty != LUA_TFUNCTION)
		return luaL_error(L, "%s: 'run' must be a function(ctx) returning the result", s->path);
	s->has_run = ty == LUA_TFUNCTION;
	lua_pop(L, 1);
	ty = script_rawfield(L, t, "prompt");
	if (ty != LUA_TFUNCTION && !(ty == LUA_TNIL && s->has_run))
		return luaL_error(L, "%s: 'prompt' must be a function(ctx) returning messages "
		                     "(or define run(ctx))", s->path);
	lua_pop(L, 1);
	if (s->has_run) {
		/* run() may name queries at run time, when require is closed:
		 * load the shared ones now (it is fine if there are none). */
		lua_pushcfunction(L, script_lua_require);
		lua_pushstring(L, "queries");
		lua_pcall(L, 1, 0, 0) == LUA_OK ? (void)0 : lua_pop(L, 1);
	}
	ty = script_rawfield(L, t, "post");
	if (ty != LUA_TNIL && ty != LUA_TFUNCTION)
		return luaL_error(L, "%s: 'post' must be a function(reply, ctx)", s->path);
	s->has_post = ty == LUA_TFUNCTION;
	lua_pop(L, 1);
	ty = script_rawfield(L, t, "fallback");
	if (ty != LUA_TNIL && ty != LUA_TFUNCTION)
		return luaL_error(L, "%s: 'fallback' must be a function(ctx)", s->path);
	s->has_fallback = ty == LUA_TFUNCTION;
	lua_pop(L, 1);

	ty = script_rawfield(L, t, "ttl");
	if (ty == LUA_TNUMBER && lua_tonumber(L, -1) > 0 && lua_tonumber(L, -1) <= 30 * 86400)
		s->ttl_ms = lua_tonumber(L, -1) * 1000.0;
	else if (ty != LUA_TNIL)
		return luaL_error(L, "%s: 'ttl' must be a number of seconds from 1 to 2592000 (30 days)",
		                  s->path);
	lua_pop(L, 1);
	/* The grace after ttl in which the old result is served at once while
	 * one refresh runs. Default: as long as the ttl, so a type's results
	 * are refreshed in the background for as long again as the author
	 * found them fresh; 0 turns it off. */
	ty = script_rawfield(L, t, "stale_ttl");
	if (ty == LUA_TNUMBER && lua_tonumber(L, -1) >= 0 && lua_tonumber(L, -1) <= 30 * 86400)
		s->stale_ttl_ms = lua_tonumber(L, -1) * 1000.0;
	else if (ty == LUA_TNIL)
		s->stale_ttl_ms = s->ttl_ms;
	else
		return luaL_error(L, "%s: 'stale_ttl' must be a number of seconds from 0 to 2592000 "
		                  "(30 days)", s->path);
	lua_pop(L, 1);

	ty = script_rawfield(L, t, "model");
	if (ty == LUA_TSTRING) {
		free(s->model);
		s->model = xstrdup(lua_tostring(L, -1));
	} else if (ty != LUA_TNIL) {
		return luaL_error(L, "%s: 'model' must be a string", s->path);
	}
	lua_pop(L, 1);

	ty = script_rawfield(L, t, "temperature");
	if (ty == LUA_TNUMBER && lua_tonumber(L, -1) >= 0 && lua_tonumber(L, -1) <= 2)
		s->temperature = lua_tonumber(L, -1);
	else if (ty != LUA_TNIL)
		return luaL_error(L, "%s: 'temperature' must be a number from 0 to 2", s->path);
	lua_pop(L, 1);

	ty = script_rawfield(L, t, "max_tokens");
	if (ty == LUA_TNUMBER && lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0)
		s->max_tokens = (long)lua_tointeger(L, -1);
	else if (ty != LUA_TNIL)
		return luaL_error(L, "%s: 'max_tokens' must be a positive integer", s->path);
	lua_pop(L, 1);

	ty = script_rawfield(L, t, "schema");
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

	ty = script_rawfield(L, t, "queries");
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
	lua_pushvalue(L, 2);
	s->factory_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushvalue(L, t);
	s->table_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

/* Makes s->L: the capped allocator, s in its extra space, the sandbox.
 * False with err. */
static bool
state_open(script *s, char *err, size_t errlen)
{
	s->L = lua_newstate(script_alloc, s);
	if (!s->L) {
		snprintf(err, errlen, "%s: cannot create a Lua state", s->path);
		return false;
	}
	*(script **)lua_getextraspace(s->L) = s;
	lua_atpanic(s->L, script_panic);
	lua_setwarnf(s->L, script_warn, NULL);
	char lerr[512];
	lua_pushcfunction(s->L, script_sandbox_build);
	if (!script_pcall(s, 0, 0, lerr, sizeof lerr)) {
		snprintf(err, errlen, "%s: %s", s->path, lerr);
		return false;
	}
	return true;
}

script *
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
	s->factory_ref = LUA_NOREF;
	char err[1024];
	if (!state_open(s, err, sizeof err)) {
		*error = xstrdup(err);
		goto fail;
	}
	lua_State *L = s->L;

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
	int rc = load_factory(L, src, len, chunk);
	free(chunk);
	free(src);
	if (rc != LUA_OK) {
		const char *m = lua_tostring(L, -1) ? lua_tostring(L, -1) : "cannot load";
		/* Syntax errors carry "scripts/x.lua:LINE:" already; others
		 * (a binary chunk) get the file named. */
		*error = strncmp(m, "scripts/", 8) == 0 ? xstrdup(m) : xasprintf("scripts/%s.lua: %s", name, m);
		goto fail;
	}
	/* The factory is at 1: its first run, in the load-time environment. */
	lua_pushvalue(L, 1);
	lua_rawgeti(L, LUA_REGISTRYINDEX, s->env_ref);
	s->phase = SCRIPT_LOADING;
	bool ok = script_pcall(s, 1, 1, err, sizeof err);
	if (ok) {
		lua_pushcfunction(L, validate_decl);
		lua_pushvalue(L, -2);
		lua_pushvalue(L, 1);
		ok = script_pcall(s, 2, 0, err, sizeof err);
	}
	s->phase = SCRIPT_SERVING;
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
		.stale_ttl_ms = s->stale_ttl_ms,
		.temperature = s->temperature, .max_tokens = s->max_tokens,
		.queries = s->queries, .nqueries = s->nqueries, .schema = s->schema,
		.has_post = s->has_post, .has_fallback = s->has_fallback, .has_run = s->has_run,
	};
	return s;
fail:
	script_free(s);
	return NULL;
}

/* ---- fixture files ----------------------------------------------------- */

/* case{...}: returns its table with the line it was written on. */
static int
l_case(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_Debug ar;
	if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar)) {
		lua_pushinteger(L, ar.currentline);
		lua_setfield(L, 1, "_line");
	}
	lua_settop(L, 1);
	return 1;
}

static int
p_add_case(lua_State *L)
{
	script *f = script_owner(L);
	lua_rawgeti(L, LUA_REGISTRYINDEX, f->env_ref);
	lua_pushliteral(L, "case");
	lua_pushcfunction(L, l_case);
	lua_rawset(L, -3);
	return 0;
}

json_t *
script_read_fixtures(const script *s, const char *path, char *err, size_t errlen)
{
	/* Fixture files are data, but they are Lua and the server reads them
	 * at every reload: the same guards as a script's own state, so a bad
	 * fixture fails instead of hanging or reaching the system. */
	script *f = xcalloc(1, sizeof *f);
	f->refs = 1;
	f->name = xstrdup("fixtures");
	f->path = xstrdup(path);
	f->mem_cap = s->mem_cap;
	f->budget = s->budget;
	f->wall_ms = s->wall_ms;
	f->scripts_dir = s->scripts_dir;
	f->prompts_dir = s->prompts_dir;
	f->table_ref = f->factory_ref = LUA_NOREF;
	json_t *cases = NULL;
	if (!state_open(f, err, errlen))
		goto done;
	lua_State *L = f->L;
	lua_pushcfunction(L, p_add_case);
	if (!script_pcall(f, 0, 0, err, errlen))
		goto done;
	if (luaL_loadfilex(L, path, "t") != LUA_OK) {
		snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "cannot load");
		util_utf8_trim(err);
		goto done;
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, f->env_ref);
	lua_setupvalue(L, -2, 1);
	f->phase = SCRIPT_LOADING;
	bool ok = script_pcall(f, 0, 1, err, errlen);
	f->phase = SCRIPT_SERVING;
	if (ok) {
		char cerr[256];
		cases = luajson_from_lua(L, -1, NULL, cerr, sizeof cerr);
		if (!cases)
			snprintf(err, errlen, "%s: what the file returned is not data: %s", path, cerr);
	}
done:
	script_free(f);
	return cases;
}
