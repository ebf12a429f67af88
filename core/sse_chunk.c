/*
 * sse_chunk — streamed chunks through lua-cjson (see sse_chunk.h).
 * cjson.decode runs under lua_pcall (it raises on bad JSON); its result
 * table stays on the private state's stack until released, which keeps the
 * strings handed out alive. The state's memory is bounded by one chunk's
 * table at a time (the SSE reader bounds an event's size) plus what Lua's
 * incremental collector has not yet reclaimed.
 */
#include "sse_chunk.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <lua-cjson.h>

struct sse_chunk_decoder {
	lua_State *L;
	int decode_ref;              /* cjson.decode in the registry */
};

sse_chunk_decoder *
sse_chunk_decoder_create(void)
{
	sse_chunk_decoder *d = calloc(1, sizeof *d);
	if (!d)
		return NULL;
	d->L = luaL_newstate();
	if (!d->L) {
		free(d);
		return NULL;
	}
	lua_State *L = d->L;
	luaL_requiref(L, "cjson", luaopen_cjson, 0);
	/* Numbers as JSON has them, as jansson reads them: no hex, no NaN. */
	lua_getfield(L, -1, "decode_invalid_numbers");
	lua_pushboolean(L, 0);
	lua_call(L, 1, 0);
	lua_getfield(L, -1, "decode");
	d->decode_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_settop(L, 0);
	return d;
}

void
sse_chunk_decoder_destroy(sse_chunk_decoder *d)
{
	if (!d)
		return;
	lua_close(d->L);
	free(d);
}

/* jansson refuses a document that is not UTF-8 and cjson does not look;
 * a \u0000 (jansson refuses it, cjson makes a NUL) or a \uD800-\uDFFF
 * escape (a surrogate, paired or not: rare) is left to jansson's rules
 * too. One pass: true when none of these is there. */
static bool
cjson_safe(const unsigned char *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned c = p[i];
		if (c < 0x80) {
			if (c == 0)
				return false;
			if (c == '\\' && i + 1 < n && p[i + 1] == 'u' && i + 5 < n &&
			    ((p[i + 2] | 0x20) == 'd' ||
			     (p[i + 2] == '0' && p[i + 3] == '0' && p[i + 4] == '0' && p[i + 5] == '0')))
				return false;   /* an escaped backslash before "u…" only costs the fast path */
			i++;
			continue;
		}
		size_t len;
		unsigned min, cp;
		if (c >= 0xc2 && c <= 0xdf)
			len = 2, min = 0x80, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			len = 3, min = 0x800, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			len = 4, min = 0x10000, cp = c & 0x07;
		else
			return false;
		if (i + len > n)
			return false;
		for (size_t k = 1; k < len; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

/* The string at the top of the stack, or NULL (nil, cjson.null, a table,
 * a number: anything that is not a Lua string). Leaves it there. */
static const char *
top_string(lua_State *L, size_t *len)
{
	if (lua_type(L, -1) != LUA_TSTRING) {
		if (len)
			*len = 0;
		return NULL;
	}
	return lua_tolstring(L, -1, len);
}

static bool
absent(lua_State *L, int table, const char *key)
{
	lua_getfield(L, table, key);
	/* cjson.null is a light userdata */
	bool none = lua_isnil(L, -1) || lua_type(L, -1) == LUA_TLIGHTUSERDATA;
	lua_pop(L, 1);
	return none;
}

bool
sse_chunk_decode(sse_chunk_decoder *d, const char *data, size_t len, struct sse_chunk *out)
{
	lua_State *L = d->L;
	memset(out, 0, sizeof *out);
	lua_settop(L, 0);
	/* What jansson refuses and cjson takes goes the full path: not an
	 * object (cjson makes a table of an array too), or not cjson_safe. */
	size_t i = 0;
	while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n'))
		i++;
	if (i == len || data[i] != '{' || !cjson_safe((const unsigned char *)data, len))
		return false;
	lua_rawgeti(L, LUA_REGISTRYINDEX, d->decode_ref);
	lua_pushlstring(L, data, len);
	if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_type(L, 1) != LUA_TTABLE) {
		lua_settop(L, 0);
		return false;
	}
	if (!absent(L, 1, "error") || !absent(L, 1, "usage")) {
		lua_settop(L, 0);
		return false;
	}
	lua_getfield(L, 1, "model");                         /* 2 */
	out->model = top_string(L, NULL);
	lua_getfield(L, 1, "choices");                       /* 3 */
	if (lua_type(L, 3) != LUA_TTABLE)
		return true;
	lua_rawgeti(L, 3, 1);                                /* 4: choices[0] */
	if (lua_type(L, 4) != LUA_TTABLE)
		return true;
	lua_getfield(L, 4, "finish_reason");                 /* 5 */
	out->finish_reason = top_string(L, NULL);
	lua_getfield(L, 4, "delta");                         /* 6 */
	if (lua_type(L, 6) != LUA_TTABLE)
		return true;
	lua_getfield(L, 6, "content");                       /* 7 */
	out->content = top_string(L, &out->content_len);
	lua_getfield(L, 6, "refusal");                       /* 8 */
	out->refusal = top_string(L, &out->refusal_len);
	return true;
}

void
sse_chunk_release(sse_chunk_decoder *d)
{
	lua_settop(d->L, 0);
}
