/*
 * luajson — Lua ⇄ jansson conversion and the `json` module scripts see.
 */
#include "luajson.h"
#include "util.h"

#include <malloc.h>
#include <math.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#define MAX_DEPTH 100
static const char ARRAY_MT[] = "rapport.json.array";
static const char BOX_MT[] = "rapport.json.box";

void
luajson_mark_array(lua_State *L, int idx)
{
	idx = lua_absindex(L, idx);
	luaL_getmetatable(L, ARRAY_MT);
	lua_setmetatable(L, idx);
}

static bool
is_marked_array(lua_State *L, int idx)
{
	if (!lua_getmetatable(L, idx))
		return false;
	luaL_getmetatable(L, ARRAY_MT);
	bool same = lua_rawequal(L, -1, -2);
	lua_pop(L, 2);
	return same;
}

static void
push_value(lua_State *L, const json_t *v, int depth)
{
	luaL_checkstack(L, 4, "JSON too deeply nested");
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *k;
		json_t *item;
		lua_createtable(L, 0, (int)json_object_size(v));
		json_object_foreach((json_t *)v, k, item) {
			push_value(L, item, depth + 1);
			lua_setfield(L, -2, k);
		}
		break;
	}
	case JSON_ARRAY: {
		size_t i;
		json_t *item;
		lua_createtable(L, (int)json_array_size(v), 0);
		json_array_foreach(v, i, item) {
			push_value(L, item, depth + 1);
			lua_rawseti(L, -2, (lua_Integer)i + 1);
		}
		luajson_mark_array(L, -1);
		break;
	}
	case JSON_STRING:
		lua_pushlstring(L, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		lua_pushinteger(L, (lua_Integer)json_integer_value(v));
		break;
	case JSON_REAL:
		lua_pushnumber(L, json_real_value(v));
		break;
	case JSON_TRUE:
		lua_pushboolean(L, 1);
		break;
	case JSON_FALSE:
		lua_pushboolean(L, 0);
		break;
	case JSON_NULL:
		lua_pushlightuserdata(L, NULL);
		break;
	}
}

void
luajson_push(lua_State *L, const json_t *v)
{
	push_value(L, v, 0);
}

/* The schema for one property / item, or NULL when the schema is silent. */
static const json_t *
schema_child(const json_t *schema, const char *key)
{
	if (!schema)
		return NULL;
	if (!key)
		return json_object_get(schema, "items");
	return json_object_get(json_object_get(schema, "properties"), key);
}

static bool
schema_allows(const json_t *schema, const char *type)
{
	const json_t *t = schema ? json_object_get(schema, "type") : NULL;
	if (json_is_string(t))
		return strcmp(json_string_value(t), type) == 0;
	if (json_is_array(t)) {
		size_t i;
		json_t *x;
		json_array_foreach(t, i, x)
			if (json_is_string(x) && strcmp(json_string_value(x), type) == 0)
				return true;
	}
	return false;
}

struct conv {
	lua_State *L;
	char *err;
	size_t errlen;
};

static json_t *convert(struct conv *c, int idx, const json_t *schema, int depth);

/* A table with keys exactly 1..n (n > 0) reads as an array. */
static bool
looks_like_array(lua_State *L, int idx, size_t *n_out)
{
	size_t n = (size_t)lua_rawlen(L, idx);
	size_t count = 0;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		if (!lua_isinteger(L, -1)) {
			lua_pop(L, 1);
			return false;
		}
		lua_Integer k = lua_tointeger(L, -1);
		if (k < 1 || (size_t)k > n) {
			lua_pop(L, 1);
			return false;
		}
		count++;
	}
	*n_out = n;
	return n > 0 && count == n;
}

static json_t *
convert_array(struct conv *c, int idx, size_t n, const json_t *schema, int depth)
{
	json_t *arr = json_array();
	const json_t *items = schema_child(schema, NULL);
	for (size_t i = 1; i <= n; i++) {
		lua_rawgeti(c->L, idx, (lua_Integer)i);
		json_t *v = convert(c, lua_gettop(c->L), items, depth + 1);
		lua_pop(c->L, 1);
		if (!v) {
			json_decref(arr);
			return NULL;
		}
		json_array_append_new(arr, v);
	}
	return arr;
}

/* One key of a Lua table being written as a JSON object. */
struct okey {
	char *name;             /* the JSON key */
	bool is_int;            /* came from an integer Lua key */
	lua_Integer i;
};

static int
cmp_keys(const void *a, const void *b)
{
	return strcmp(((const struct okey *)a)->name, ((const struct okey *)b)->name);
}

/* Collects the keys of the table at idx; false with c->err on a key that
 * cannot be JSON. */
static bool
collect_keys(struct conv *c, int idx, struct okey **out, size_t *n)
{
	lua_State *L = c->L;
	size_t cap = 16;
	struct okey *keys = xmalloc(cap * sizeof *keys);
	*n = 0;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		if (*n == cap)
			keys = xrealloc(keys, (cap *= 2) * sizeof *keys);
		struct okey *k = &keys[*n];
		if (lua_type(L, -1) == LUA_TSTRING) {
			*k = (struct okey){ xstrdup(lua_tostring(L, -1)), false, 0 };
		} else if (lua_isinteger(L, -1)) {
			char buf[32];
			snprintf(buf, sizeof buf, "%lld", (long long)lua_tointeger(L, -1));
			*k = (struct okey){ xstrdup(buf), true, lua_tointeger(L, -1) };
		} else {
			snprintf(c->err, c->errlen, "table key of type %s cannot be a JSON key",
			         luaL_typename(L, -1));
			lua_pop(L, 1);
			*out = keys;
			return false;
		}
		(*n)++;
	}
	*out = keys;
	return true;
}

/* Keys are written sorted: Lua's table order is a hash order, and a
 * document whose bytes change from one run to the next would defeat ETags
 * and make results impossible to diff. The values are converted in a second
 * lua_next pass (no key is pushed anew, so nothing here can raise). */
static json_t *
convert_object(struct conv *c, int idx, const json_t *schema, int depth)
{
	lua_State *L = c->L;
	struct okey *keys;
	size_t n;
	bool ok = collect_keys(c, idx, &keys, &n);
	json_t **values = xcalloc(n ? n : 1, sizeof *values);
	if (ok)
		qsort(keys, n, sizeof *keys, cmp_keys);
	lua_pushnil(L);
	while (ok && lua_next(L, idx)) {
		char buf[32];
		const char *name = buf;
		if (lua_type(L, -2) == LUA_TSTRING)
			name = lua_tostring(L, -2);
		else
			snprintf(buf, sizeof buf, "%lld", (long long)lua_tointeger(L, -2));
		struct okey probe = { (char *)name, false, 0 };
		struct okey *k = bsearch(&probe, keys, n, sizeof *keys, cmp_keys);
		size_t j = (size_t)(k - keys);
		json_t *v = convert(c, lua_gettop(L), schema_child(schema, name), depth + 1);
		lua_pop(L, 1);
		if (!v) {
			lua_pop(L, 1);
			ok = false;
		} else if (values[j]) {
			/* both 1 and "1": the same JSON key twice */
			json_decref(v);
			snprintf(c->err, c->errlen, "key \"%s\" appears as both a number and a string", name);
			lua_pop(L, 1);
			ok = false;
		} else {
			values[j] = v;
		}
	}
	json_t *obj = json_object();
	for (size_t i = 0; i < n; i++) {
		if (ok && json_object_set_new(obj, keys[i].name, values[i]) != 0) {
			snprintf(c->err, c->errlen, "key is not valid UTF-8");
			ok = false;
		} else if (!ok) {
			json_decref(values[i]);
		}
		free(keys[i].name);
	}
	free(keys);
	free(values);
	if (!ok) {
		json_decref(obj);
		return NULL;
	}
	return obj;
}

static json_t *
convert(struct conv *c, int idx, const json_t *schema, int depth)
{
	lua_State *L = c->L;
	if (depth > MAX_DEPTH) {
		snprintf(c->err, c->errlen, "value nested deeper than %d levels (a cycle?)", MAX_DEPTH);
		return NULL;
	}
	if (!lua_checkstack(L, 4)) {
		snprintf(c->err, c->errlen, "Lua stack exhausted");
		return NULL;
	}
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		return json_null();
	case LUA_TBOOLEAN:
		return json_boolean(lua_toboolean(L, idx));
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx))
			return json_integer((json_int_t)lua_tointeger(L, idx));
		{
			double d = lua_tonumber(L, idx);
			if (!isfinite(d)) {
				snprintf(c->err, c->errlen, "number %g cannot be JSON", d);
				return NULL;
			}
			if (schema_allows(schema, "integer") && d == floor(d) && fabs(d) < 9.0e15)
				return json_integer((json_int_t)d);
			return json_real(d);
		}
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		json_t *v = json_stringn(s, len);
		if (!v)
			snprintf(c->err, c->errlen, "string is not valid UTF-8");
		return v;
	}
	case LUA_TLIGHTUSERDATA:
		if (lua_touserdata(L, idx) == NULL)
			return json_null();
		break;
	case LUA_TTABLE: {
		size_t n = 0;
		if (is_marked_array(L, idx))
			return convert_array(c, idx, (size_t)lua_rawlen(L, idx), schema, depth);
		bool arr = looks_like_array(L, idx, &n);
		if (!arr && n == 0 && schema_allows(schema, "array")) {
			/* An empty table the schema calls an array: [] not {}. */
			lua_pushnil(L);
			bool empty = lua_next(L, idx) == 0;
			if (!empty)
				lua_pop(L, 2);
			if (empty)
				return json_array();
		}
		return arr ? convert_array(c, idx, n, schema, depth)
		           : convert_object(c, idx, schema, depth);
	}
	default:
		break;
	}
	snprintf(c->err, c->errlen, "a %s cannot be converted to JSON", luaL_typename(L, idx));
	return NULL;
}

json_t *
luajson_from_lua(lua_State *L, int idx, const json_t *schema, char *err, size_t errlen)
{
	struct conv c = { L, err, errlen };
	err[0] = '\0';
	return convert(&c, lua_absindex(L, idx), schema, 0);
}

/* A userdata owning one jansson reference, so a Lua error (out of memory
 * under the state's cap) while the value is being pushed cannot leak it:
 * the box becomes garbage and its __gc drops the reference. */
static int
box_gc(lua_State *L)
{
	json_t **box = luaL_checkudata(L, 1, BOX_MT);
	json_decref(*box);
	*box = NULL;
	return 0;
}

void
luajson_push_owned(lua_State *L, json_t *v)
{
	/* v leaks if making the box itself raises: callers that decode text
	 * use luajson_push_text, which boxes before decoding. */
	json_t **box = luajson_box(L);
	*box = v;
	push_value(L, v, 0);
	json_decref(v);
	*box = NULL;
	lua_remove(L, -2);
}

json_t **
luajson_box(lua_State *L)
{
	json_t **box = lua_newuserdatauv(L, sizeof *box, 0);
	*box = NULL;
	luaL_setmetatable(L, BOX_MT);
	return box;
}

/* ---- the meter: jansson memory charged to the script call running ---- */

static _Thread_local struct luajson_meter *meter;

static void *
metered_malloc(size_t size)
{
	struct luajson_meter *m = meter;
	if (m) {
		size_t also = m->also ? *m->also : 0;
		if (m->used + also + size > m->cap) {
			m->refused = true;
			return NULL;
		}
	}
	void *p = malloc(size);
	if (p && m)
		m->used += malloc_usable_size(p);
	return p;
}

static void
metered_free(void *p)
{
	struct luajson_meter *m = meter;
	if (p && m) {
		/* A block from before this meter was current may be freed
		 * under it: never below zero. */
		size_t n = malloc_usable_size(p);
		m->used = n < m->used ? m->used - n : 0;
	}
	free(p);
}

static bool installed;

/* Once, at start rather than at the first meter: json_set_alloc_funcs
 * changes every later jansson allocation in the process, so it belongs
 * with the process's start-up, not inside a per-call function. Nothing is
 * at stake for values made before it: jansson needs each value freed by
 * the allocator that made it, and metered_malloc/metered_free are
 * malloc/free plus counting, the same pair as jansson's defaults, so a
 * value from before the switch may be freed through metered_free (which
 * never counts below zero) and vice versa. Calling it first anyway keeps
 * that property from ever being needed. */
void
luajson_init(void)
{
	if (installed)
		return;
	json_set_alloc_funcs(metered_malloc, metered_free);
	installed = true;
}

struct luajson_meter *
luajson_meter_use(struct luajson_meter *m)
{
	if (!installed) {
		/* A meter that would see nothing would let a script past its cap. */
		fputs("luajson_meter_use: luajson_init() was not called\n", stderr);
		abort();
	}
	struct luajson_meter *prev = meter;
	meter = m;
	return prev;
}

static int
raise_if_refused(lua_State *L, const char *what)
{
	if (meter && meter->refused)
		return luaL_error(L, "%s: script exceeded its memory cap (%I bytes, counting "
		                     "what the JSON library holds)", what, (lua_Integer)meter->cap);
	return 0;
}

int
luajson_push_text(lua_State *L, const char *text, size_t len, size_t flags)
{
	json_t **box = luajson_box(L);
	*box = json_loadb(text, len, flags, NULL);
	if (!*box) {
		raise_if_refused(L, "json");
		lua_pop(L, 1);
		return -1;
	}
	int type = json_typeof(*box);
	push_value(L, *box, 0);
	json_decref(*box);
	*box = NULL;
	lua_remove(L, -2);
	return type;
}

/* json.decode(s) → value; raises on invalid JSON (use pcall to handle). */
static int
l_decode(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	json_t **box = luajson_box(L);
	json_error_t e;
	*box = json_loadb(s, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
	if (!*box) {
		raise_if_refused(L, "json.decode");
		return luaL_error(L, "json.decode: %s at line %d column %d", e.text, e.line, e.column);
	}
	push_value(L, *box, 0);
	json_decref(*box);
	*box = NULL;
	return 1;
}

static int
dump_to_buffer(const char *buf, size_t size, void *data)
{
	luaL_addlstring(data, buf, size);
	return 0;
}

/* json.encode(v) → string; raises when v cannot be JSON. The value is boxed
 * before the output buffer grows, since growing may raise. */
static int
l_encode(lua_State *L)
{
	char err[256];
	luaL_checkany(L, 1);
	lua_settop(L, 1);
	json_t **box = luajson_box(L);
	*box = luajson_from_lua(L, 1, NULL, err, sizeof err);
	if (!*box) {
		raise_if_refused(L, "json.encode");
		return luaL_error(L, "json.encode: %s", err);
	}
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	json_dump_callback(*box, dump_to_buffer, &b, JSON_COMPACT | JSON_ENCODE_ANY);
	luaL_pushresult(&b);
	return 1;
}

static int
l_array(lua_State *L)
{
	if (lua_isnoneornil(L, 1))
		lua_newtable(L);
	else
		luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	luajson_mark_array(L, 1);
	return 1;
}

static int
l_is_array(lua_State *L)
{
	lua_pushboolean(L, lua_type(L, 1) == LUA_TTABLE && is_marked_array(L, 1));
	return 1;
}

int
luajson_open(lua_State *L)
{
	if (luaL_newmetatable(L, ARRAY_MT)) {
		/* Scripts must not be able to change or remove the marker. */
		lua_pushstring(L, "json.array");
		lua_setfield(L, -2, "__metatable");
	}
	lua_pop(L, 1);
	if (luaL_newmetatable(L, BOX_MT)) {
		lua_pushcfunction(L, box_gc);
		lua_setfield(L, -2, "__gc");
		lua_pushstring(L, "json.box");
		lua_setfield(L, -2, "__metatable");
	}
	lua_pop(L, 1);
	static const luaL_Reg fns[] = {
		{ "decode", l_decode },
		{ "encode", l_encode },
		{ "array", l_array },
		{ "is_array", l_is_array },
		{ NULL, NULL },
	};
	luaL_newlib(L, fns);
	lua_pushlightuserdata(L, NULL);
	lua_setfield(L, -2, "null");
	return 1;
}
