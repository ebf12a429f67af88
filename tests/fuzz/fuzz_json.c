/*
 * fuzz_json — libFuzzer target for core/luajson.c (jansson ⇄ Lua) and
 * core/jschema.c (the reply validator).
 *
 * The input is parsed by jansson exactly as json.decode() parses (any value,
 * NUL allowed in strings). When it parses:
 *
 *  1. luajson_push (under pcall), then luajson_from_lua with no schema gives
 *     back a json_equal value: integers exact, arrays stay arrays (also
 *     empty ones, through the marker), empty objects stay objects. Values
 *     nested deeper than luajson's limit (100) must fail with a message.
 *     luajson_from_lua is called unprotected: it must never raise.
 *  2. The same with a small fixed schema: the result must equal a model of
 *     what the schema is documented to change (an empty table the schema
 *     calls an array becomes [], an integral float it calls an integer
 *     becomes an integer).
 *  3. luajson_push_owned and the Lua-facing json.decode / json.encode give
 *     the same values.
 *  4. jschema_validate against fixed schemas (a script's real strict schema,
 *     one with anyOf/$ref/enum/const/bounds, the boolean schemas, broken
 *     ones; an anyOf $ref loop once per process, at start-up), the value
 *     used as a schema over fixed values and over itself, and
 *     jschema_check_strict of the value: never a crash; on
 *     failure a non-empty, NUL-terminated, valid UTF-8 message within the
 *     buffer, the same with any buffer size (a prefix, cut at a character
 *     boundary) and the same answer with no buffer at all.
 *
 * Any mismatch prints what differed and abort()s, so libFuzzer records the
 * input. Reproduce with build/fuzz/fuzz_json crash-<sha1>.
 */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>

#include "jschema.h"
#include "luajson.h"

#define LUAJSON_MAX_DEPTH 100   /* MAX_DEPTH in core/luajson.c */

static void __attribute__((noreturn, format(printf, 1, 2)))
die(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "fuzz_json: INVARIANT FAILED: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	abort();
}

#define CHECK(cond, ...) do { if (!(cond)) die(__VA_ARGS__); } while (0)

static void
show(const char *what, const json_t *v)
{
	char *s = v ? json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY) : NULL;
	fprintf(stderr, "  %s: %.2000s\n", what, s ? s : "(NULL)");
	free(s);
}

static void
same_json(const json_t *want, const json_t *got, const char *what)
{
	if (want && got && json_equal(want, got))
		return;
	fprintf(stderr, "fuzz_json: %s: values differ\n", what);
	show("want", want);
	show("got", got);
	die("%s: values differ", what);
}

/* ---- fixed schemas ----------------------------------------------------------- */

/* For luajson_from_lua: settles empty tables and integral floats. */
static const char CONVERT_SCHEMA[] =
	"{\"type\": [\"object\", \"array\"],"
	" \"properties\": {"
	"   \"id\": {\"type\": \"integer\"},"
	"   \"n\": {\"type\": [\"number\", \"integer\", \"null\"]},"
	"   \"tags\": {\"type\": \"array\", \"items\": {\"type\": [\"integer\", \"string\"]}},"
	"   \"meta\": {\"type\": \"object\", \"properties\": {"
	"       \"list\": {\"type\": [\"array\", \"null\"], \"items\": {\"type\": \"array\"}},"
	"       \"obj\": {\"type\": \"object\"}}},"
	"   \"\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}}},"
	" \"items\": {\"type\": [\"array\", \"integer\", \"object\"],"
	"   \"items\": {\"type\": \"integer\"},"
	"   \"properties\": {\"a\": {\"type\": \"array\"}}}}";

/* For jschema_validate. */
static const char *const VALIDATE_SCHEMAS[] = {
	/* smart_tips.lua's schema, as the script loader builds it */
	"{\"type\": \"object\", \"additionalProperties\": false, \"required\": [\"tips\"],"
	" \"properties\": {\"tips\": {\"type\": \"array\", \"minItems\": 3, \"maxItems\": 5,"
	"  \"items\": {\"type\": \"object\", \"additionalProperties\": false,"
	"   \"required\": [\"title\", \"action\", \"why\", \"channel\", \"timing\"],"
	"   \"properties\": {\"title\": {\"type\": \"string\"}, \"action\": {\"type\": \"string\"},"
	"    \"why\": {\"type\": \"string\"},"
	"    \"channel\": {\"type\": \"string\", \"enum\": [\"email\", \"call\", \"meeting\", \"message\"]},"
	"    \"timing\": {\"type\": \"string\"}}}}}}",
	/* most keywords, $ref recursion, anyOf */
	"{\"$defs\": {\"node\": {\"anyOf\": [{\"type\": \"null\"},"
	"   {\"type\": \"object\", \"required\": [\"v\"], \"additionalProperties\": false,"
	"    \"properties\": {\"v\": {\"type\": \"integer\", \"minimum\": -5, \"maximum\": 1e6,"
	"                           \"multipleOf\": 3},"
	"                    \"next\": {\"$ref\": \"#/$defs/node\"}}}]}},"
	" \"anyOf\": [{\"$ref\": \"#/$defs/node\"},"
	"   {\"type\": \"array\", \"minItems\": 1, \"maxItems\": 8, \"items\": {\"anyOf\": ["
	"     {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 5},"
	"     {\"enum\": [1, \"two\", [3], {\"four\": 4}, null, 2.5]},"
	"     {\"$ref\": \"#\"}]}},"
	"   {\"type\": \"number\", \"exclusiveMinimum\": 0, \"exclusiveMaximum\": 1.5,"
	"    \"multipleOf\": 0.25},"
	"   {\"type\": \"object\", \"additionalProperties\": {\"type\": [\"string\", \"boolean\"]},"
	"    \"properties\": {\"k\": {\"const\": {\"a\": [1, 2.0, \"\\u00e9\"]}}}},"
	"   {\"type\": [\"boolean\", \"string\"], \"maxLength\": 3}]}",
	"true",
	"false",
	"{}",
	"{\"type\": \"integer\"}",
	/* anyOf branches that $ref back: bounded by the work budget */
	"{\"anyOf\": [{\"$ref\": \"#\"}, {\"$ref\": \"#/anyOf/0\"}]}",
	/* broken schemas: must fail with "schema error", not crash */
	"{\"type\": \"nope\"}",
	"{\"$ref\": \"#/$defs/missing\"}",
	"{\"anyOf\": []}",
	"{\"type\": []}",
	"{\"enum\": 3}",
};
#define NSCHEMAS (sizeof VALIDATE_SCHEMAS / sizeof *VALIDATE_SCHEMAS)
#define LOOP_SCHEMA 6           /* index of the expensive one */

/* Values validated against the input when the input is used as a schema. */
static const char *const VALUES[] = {
	"null", "0", "-1.5", "\"\"", "\"h\\u00e9llo\"", "[]", "{}", "[1, [2, {\"a\": null}]]",
	"{\"tips\": [{\"title\": \"t\", \"channel\": \"fax\"}], \"v\": 3, \"next\": null}",
	"true",
};
#define NVALUES (sizeof VALUES / sizeof *VALUES)

static json_t *convert_schema, *validate_schemas[NSCHEMAS], *values[NVALUES];

static bool validate(const json_t *schema, const json_t *value, size_t small, const char *what);

static json_t *
load_fixed(const char *text)
{
	json_error_t e;
	json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
	if (!v)
		die("fixed JSON does not parse: %s: %s", e.text, text);
	return v;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	convert_schema = load_fixed(CONVERT_SCHEMA);
	for (size_t i = 0; i < NSCHEMAS; i++)
		validate_schemas[i] = load_fixed(VALIDATE_SCHEMAS[i]);
	for (size_t i = 0; i < NVALUES; i++)
		values[i] = load_fixed(VALUES[i]);
	/* The $ref loop costs the whole work budget: once per process, not per
	 * input. It must end in the budget error, not a stack overflow. */
	CHECK(validate(validate_schemas[LOOP_SCHEMA], values[0], 40, "the anyOf $ref loop"),
	      "the anyOf $ref loop did not run out of its work budget");
	return 0;
}

/* ---- the model of luajson_from_lua -------------------------------------------- */

static int
max_depth(const json_t *v, int depth)
{
	int m = depth;
	const char *k;
	json_t *x;
	size_t i;
	if (json_is_object(v)) {
		json_object_foreach((json_t *)v, k, x) {
			int d = max_depth(x, depth + 1);
			if (d > m)
				m = d;
		}
	} else if (json_is_array(v)) {
		json_array_foreach(v, i, x) {
			int d = max_depth(x, depth + 1);
			if (d > m)
				m = d;
		}
	}
	return m;
}

static bool
allows(const json_t *schema, const char *type)
{
	const json_t *t = json_object_get(schema, "type");
	size_t i;
	json_t *x;
	if (json_is_string(t))
		return strcmp(json_string_value(t), type) == 0;
	json_array_foreach(t, i, x)
		if (json_is_string(x) && strcmp(json_string_value(x), type) == 0)
			return true;
	return false;
}

/* What the value should look like after a trip through Lua under schema. */
static json_t *
expected(const json_t *v, const json_t *schema)
{
	const char *k;
	json_t *x;
	size_t i;

	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		if (json_object_size(v) == 0 && allows(schema, "array"))
			return json_array();
		json_t *o = json_object();
		const json_t *props = json_object_get(schema, "properties");
		json_object_foreach((json_t *)v, k, x)
			json_object_set_new(o, k, expected(x, json_object_get(props, k)));
		return o;
	}
	case JSON_ARRAY: {
		json_t *a = json_array();
		const json_t *items = json_object_get(schema, "items");
		json_array_foreach(v, i, x)
			json_array_append_new(a, expected(x, items));
		return a;
	}
	case JSON_REAL: {
		double d = json_real_value(v);
		if (allows(schema, "integer") && d == floor(d) && fabs(d) < 9.0e15)
			return json_integer((json_int_t)d);
		return json_real(d);
	}
	default:
		return json_incref((json_t *)v);
	}
}

/* ---- Lua ------------------------------------------------------------------- */

static int
on_panic(lua_State *L)
{
	die("Lua panic (an error raised outside pcall): %s",
	    lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
}

static int
do_push(lua_State *L)
{
	luajson_push(L, lua_touserdata(L, 1));
	return 1;
}

static int
do_push_owned(lua_State *L)
{
	luajson_push_owned(L, lua_touserdata(L, 1));
	return 1;
}

/* Pushes v through fn under pcall; false (nothing pushed) when it raised. */
static bool
push_protected(lua_State *L, lua_CFunction fn, json_t *v)
{
	lua_pushcfunction(L, fn);
	lua_pushlightuserdata(L, v);
	if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
		const char *msg = lua_tostring(L, -1);
		CHECK(msg && strstr(msg, "nested"), "luajson_push raised: %s", msg ? msg : "?");
		lua_pop(L, 1);
		return false;
	}
	return true;
}

/* luajson_from_lua on the top value, checked against want (NULL: must fail). */
static void
check_from_lua(lua_State *L, const json_t *schema, const json_t *want, const char *what)
{
	char err[256];
	int top = lua_gettop(L);
	memset(err, 'x', sizeof err);
	json_t *got = luajson_from_lua(L, -1, schema, err, sizeof err);
	CHECK(lua_gettop(L) == top, "%s: stack %d → %d", what, top, lua_gettop(L));
	CHECK(memchr(err, '\0', sizeof err), "%s: err not NUL-terminated", what);
	if (!want) {
		CHECK(!got, "%s: a value nested deeper than %d converted", what, LUAJSON_MAX_DEPTH);
		CHECK(strstr(err, "nested deeper"), "%s: unexpected message: %s", what, err);
		return;
	}
	if (!got)
		die("%s: luajson_from_lua failed: %s", what, err);
	CHECK(err[0] == '\0', "%s: message on success: %s", what, err);
	same_json(want, got, what);     /* json_equal: 1 never equals 1.0 */
	json_decref(got);
}

static void
lua_checks(const uint8_t *data, size_t size, json_t *v)
{
	lua_State *L = luaL_newstate();
	if (!L)
		abort();
	lua_atpanic(L, on_panic);
	luajson_open(L);                /* the json module table, at index 1 */
	int module = lua_gettop(L);

	bool deep = max_depth(v, 0) > LUAJSON_MAX_DEPTH;
	json_t *want_schema = deep ? NULL : expected(v, convert_schema);

	/* 1, 2 */
	if (push_protected(L, do_push, v)) {
		check_from_lua(L, NULL, deep ? NULL : v, "push → from_lua (no schema)");
		check_from_lua(L, convert_schema, want_schema, "push → from_lua (schema)");
		/* The array marker is read-only to scripts, and survives a second trip. */
		check_from_lua(L, NULL, deep ? NULL : v, "push → from_lua, again");
		lua_pop(L, 1);
	}

	/* 3. push_owned takes its reference. */
	if (push_protected(L, do_push_owned, json_incref(v))) {
		check_from_lua(L, NULL, deep ? NULL : v, "push_owned → from_lua");
		lua_pop(L, 1);
	}

	/* json.encode(json.decode(input)) parses back to the same value. */
	lua_getfield(L, module, "encode");
	lua_getfield(L, module, "decode");
	lua_pushlstring(L, (const char *)data, size);
	if (lua_pcall(L, 1, 1, 0) != LUA_OK)
		die("json.decode raised on JSON jansson accepts: %s", lua_tostring(L, -1));
	if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
		const char *msg = lua_tostring(L, -1);
		CHECK(deep, "json.encode raised: %s", msg ? msg : "?");
		CHECK(msg && strstr(msg, "nested deeper"), "json.encode raised: %s", msg ? msg : "?");
	} else {
		CHECK(!deep, "json.encode accepted a value nested deeper than %d", LUAJSON_MAX_DEPTH);
		size_t n;
		const char *s = lua_tolstring(L, -1, &n);
		json_error_t e;
		json_t *back = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
		if (!back)
			die("json.encode wrote JSON that does not parse: %s: %.*s", e.text, (int)n, s);
		same_json(v, back, "json.encode(json.decode(input))");
		json_decref(back);
	}
	lua_pop(L, 1);

	json_decref(want_schema);
	lua_close(L);
}

/* ---- jschema ----------------------------------------------------------------- */

static bool
valid_utf8(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		size_t len;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xC2 && c <= 0xDF) {
			len = 2; cp = c & 0x1F;
		} else if (c >= 0xE0 && c <= 0xEF) {
			len = 3; cp = c & 0x0F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			len = 4; cp = c & 0x07;
		} else {
			return false;
		}
		if (i + len > n)
			return false;
		for (size_t j = 1; j < len; j++) {
			if ((s[i + j] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + j] & 0x3F);
		}
		if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
		    (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
			return false;
		i += len;
	}
	return true;
}

static void
check_message(const char *err, size_t errlen, bool ok, const char *what)
{
	size_t n = strnlen(err, errlen);
	CHECK(n < errlen, "%s: message not NUL-terminated within %zu bytes", what, errlen);
	CHECK(valid_utf8((const unsigned char *)err, n), "%s: message is not valid UTF-8: %s",
	      what, err);
	if (!ok)
		CHECK(errlen == 1 || n > 0, "%s: failed with an empty message", what);
}

/* One validation three ways: a big buffer, a small one, none. Returns
 * true when the call ran out of its work budget. */
static bool
validate(const json_t *schema, const json_t *value, size_t small, const char *what)
{
	static char full[8192], cut[8192];
	memset(full, 'x', sizeof full);
	bool ok = jschema_validate(schema, value, full, sizeof full);
	check_message(full, sizeof full, ok, what);

	memset(cut, 'x', sizeof cut);
	bool ok2 = jschema_validate(schema, value, cut, small);
	CHECK(ok2 == ok, "%s: answer depends on the message buffer size", what);
	check_message(cut, small, ok2, what);
	size_t nf = strlen(full), nc = strlen(cut);
	CHECK(nc <= nf && memcmp(full, cut, nc) == 0,
	      "%s: message with %zu bytes is not a prefix: \"%s\" vs \"%s\"", what, small, cut, full);
	if (nf >= small)
		CHECK(nc + 4 >= small, "%s: message cut too short (%zu of %zu)", what, nc, small);
	else
		CHECK(nc == nf, "%s: message cut though it fits", what);
	CHECK(cut[small] == 'x', "%s: wrote past the %zu-byte buffer", what, small);

	CHECK(jschema_validate(schema, value, NULL, 0) == ok, "%s: answer differs with no buffer",
	      what);
	return !ok && strstr(full, "too much work") != NULL;
}

static void
schema_checks(const uint8_t *data, size_t size, const json_t *v)
{
	size_t small = 1 + (size ? data[size - 1] % 64 : 0);
	char what[96];

	for (size_t i = 0; i < NSCHEMAS; i++) {
		if (i == LOOP_SCHEMA)
			continue;       /* checked once, in LLVMFuzzerInitialize */
		snprintf(what, sizeof what, "validate against fixed schema #%zu", i);
		validate(validate_schemas[i], v, small, what);
	}
	/* The input as a schema. One that spends the whole work budget (an
	 * anyOf $ref loop: ~40 ms a call under ASan and coverage, 9 ms in
	 * a release build) is run once, not for every value. */
	if (validate(v, v, small, "input as schema over itself"))
		return;
	for (size_t i = 0; i < NVALUES; i++) {
		snprintf(what, sizeof what, "input as schema over fixed value #%zu", i);
		if (validate(v, values[i], small, what))
			return;
	}

	static char err[4096];
	memset(err, 'x', sizeof err);
	bool ok = jschema_check_strict(v, err, sizeof err);
	check_message(err, sizeof err, ok, "jschema_check_strict");
	if (ok) {
		/* A schema strict mode takes must also be one the validator can
		 * run without a "schema error" — except the work budget: strict
		 * mode does not look for $ref cycles with no way out (anyOf of
		 * two $refs back to itself), which spend it on every reply
		 * (reported, not treated as a finding here). */
		static char verr[8192];
		for (size_t i = 0; i < NVALUES; i++) {
			jschema_validate(v, values[i], verr, sizeof verr);
			if (strstr(verr, "too much work"))
				break;
			CHECK(!strstr(verr, "schema error"),
			      "strict-mode schema gives a schema error: %s", verr);
		}
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_error_t e;
	json_t *v = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
	if (!v) {
		/* json.decode must refuse it too, with a message, not crash. */
		lua_State *L = luaL_newstate();
		lua_atpanic(L, on_panic);
		luajson_open(L);
		lua_getfield(L, -1, "decode");
		lua_pushlstring(L, (const char *)data, size);
		CHECK(lua_pcall(L, 1, 1, 0) != LUA_OK, "json.decode accepted what jansson refuses");
		CHECK(lua_tostring(L, -1) && strstr(lua_tostring(L, -1), "json.decode"),
		      "json.decode error without a message");
		lua_close(L);
		return 0;
	}
	lua_checks(data, size, v);
	schema_checks(data, size, v);
	json_decref(v);
	return 0;
}
