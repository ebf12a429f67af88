/*
 * test_luajson — Lua ⇄ JSON conversion: integers stay integers, empty
 * arrays stay [], the schema settles ambiguous tables, bad values are
 * refused with a message instead of raising.
 */
#include "luajson.h"
#include "tap.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

static lua_State *
new_state(void)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	luajson_open(L);
	lua_setglobal(L, "json");
	return L;
}

/* Runs `return <expr>` and converts the value with the given schema. */
static char *
encode(lua_State *L, const char *expr, const char *schema_text, char *err, size_t errlen)
{
	char code[1024];
	snprintf(code, sizeof code, "return %s", expr);
	if (luaL_dostring(L, code) != LUA_OK) {
		snprintf(err, errlen, "lua: %s", lua_tostring(L, -1));
		lua_pop(L, 1);
		return NULL;
	}
	json_t *schema = schema_text ? json_loads(schema_text, 0, NULL) : NULL;
	json_t *v = luajson_from_lua(L, -1, schema, err, errlen);
	lua_pop(L, 1);
	json_decref(schema);
	if (!v)
		return NULL;
	char *s = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
	json_decref(v);
	return s;
}

static void
check(lua_State *L, const char *expr, const char *schema, const char *want, const char *name)
{
	char err[256] = "";
	char *got = encode(L, expr, schema, err, sizeof err);
	ok(got && strcmp(got, want) == 0, "%s (got %s%s)", name, got ? got : "NULL", err);
	free(got);
}

/* luajson_init() at start means every later jansson block is counted, and
 * a value made before a meter was current may be freed under it. */
static void
test_meter_counts_after_init_and_never_goes_below_zero(void)
{
	json_t *before = json_string("made with no meter current");
	struct luajson_meter m = { .cap = 1 << 20 };
	struct luajson_meter *prev = luajson_meter_use(&m);
	json_t *during = json_pack("{s:s}", "k", "a value made under the meter");
	size_t counted = m.used;
	json_decref(during);
	size_t after_free = m.used;
	json_decref(before);
	luajson_meter_use(prev);
	ok(counted > 0 && after_free < counted && m.used == 0,
	   "jansson's blocks are counted under a meter (%zu), freed ones subtracted, an older "
	   "value's free does not go below zero", counted);
}

int
main(void)
{
	luajson_init();
	test_meter_counts_after_init_and_never_goes_below_zero();
	lua_State *L = new_state();
	check(L, "{id = 9007199254740993}", NULL, "{\"id\":9007199254740993}",
	      "integers beyond 2^53 are exact");
	check(L, "json.decode('{\"a\":[],\"n\":12345678901234567}')", NULL,
	      "{\"a\":[],\"n\":12345678901234567}", "decode then encode keeps [] and big integers");
	check(L, "json.array({})", NULL, "[]", "json.array marks an empty table as []");
	check(L, "{tips = {}}", "{\"type\":\"object\",\"properties\":{\"tips\":{\"type\":\"array\"}}}",
	      "{\"tips\":[]}", "an empty table the schema calls an array is []");
	check(L, "{tips = {}}", NULL, "{\"tips\":{}}", "without a schema an empty table is {}");
	check(L, "{score = 72.0}",
	      "{\"type\":\"object\",\"properties\":{\"score\":{\"type\":\"integer\"}}}",
	      "{\"score\":72}", "an integral float the schema calls integer becomes an integer");
	check(L, "{score = 72.5}", NULL, "{\"score\":72.5}", "a real stays real");
	check(L, "{1, 2, 'x'}", NULL, "[1,2,\"x\"]", "a sequence is an array");
	check(L, "{[1] = 'a', [3] = 'c'}", NULL, "{\"1\":\"a\",\"3\":\"c\"}",
	      "a sparse table becomes an object with string keys");
	check(L, "{a = json.null}", NULL, "{\"a\":null}", "json.null is null");
	check(L, "json.decode('[1, 2.5, true, null, \"s\"]')", NULL, "[1,2.5,true,null,\"s\"]",
	      "every JSON scalar round-trips");

	char err[256];
	char *s = encode(L, "{f = print}", NULL, err, sizeof err);
	ok(!s && strstr(err, "function"), "a function is refused with a message (%s)", err);
	free(s);
	s = encode(L, "(function() local t = {} t.t = t return t end)()", NULL, err, sizeof err);
	ok(!s && strstr(err, "deeper"), "a cycle is refused, not looped on (%s)", err);
	free(s);
	s = encode(L, "{s = '\\xff\\xfe'}", NULL, err, sizeof err);
	ok(!s && strstr(err, "UTF-8"), "invalid UTF-8 is refused (%s)", err);
	free(s);
	s = encode(L, "{x = 0/0}", NULL, err, sizeof err);
	ok(!s && strstr(err, "JSON"), "NaN is refused (%s)", err);
	free(s);

	{
		(void)!luaL_dostring(L, "return {zeta = 1, alpha = 2, mid = {b = 1, a = 2}, [7] = 'x'}");
		json_t *v = luajson_from_lua(L, -1, NULL, err, sizeof err);
		lua_pop(L, 1);
		char *text = v ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		ok(text && strcmp(text, "{\"7\":\"x\",\"alpha\":2,\"mid\":{\"a\":2,\"b\":1},\"zeta\":1}") == 0,
		   "object keys are written sorted, so the same result is the same bytes (%s)", text);
		free(text);
		json_decref(v);
	}
	s = encode(L, "{[1] = 'a', ['1'] = 'b', x = 1}", NULL, err, sizeof err);
	ok(!s && strstr(err, "both"), "a key present as number and string is refused (%s)", err);
	free(s);

	int rc = luaL_dostring(L, "local t = json.decode('[]'); return json.is_array(t), #t");
	ok(rc == LUA_OK && lua_toboolean(L, -2) && lua_tointeger(L, -1) == 0,
	   "a decoded [] is a marked, empty Lua table");
	lua_settop(L, 0);
	rc = luaL_dostring(L, "return math.type(json.decode('{\"id\":42}').id)");
	ok(rc == LUA_OK && strcmp(lua_tostring(L, -1), "integer") == 0,
	   "decoded integers are Lua integers (not cjson's floats)");
	lua_settop(L, 0);
	rc = luaL_dostring(L, "return pcall(json.decode, '{bad')");
	ok(rc == LUA_OK && !lua_toboolean(L, -2) && strstr(lua_tostring(L, -1), "json.decode"),
	   "invalid JSON raises a catchable error naming json.decode");
	lua_settop(L, 0);
	rc = luaL_dostring(L, "return getmetatable(json.array({}))");
	ok(rc == LUA_OK && lua_type(L, -1) == LUA_TSTRING,
	   "the array marker is protected from getmetatable/setmetatable");
	lua_close(L);
	return tap_done();
}
