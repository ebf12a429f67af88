/*
 * luajson — moves values between Lua and jansson, the one JSON library of
 * the C core and the `json` module scripts see (lua-cjson is not in the
 * script sandbox — only the console preloads it — and its 2.1.0 limits,
 * every number a float, no empty array, %.14g, would corrupt ids and lists).
 *
 * JSON arrays become Lua tables carrying a marker metatable, so an empty
 * array read from JSON is written back as [] and not {}. When converting
 * Lua → JSON an optional JSON Schema guides the ambiguous cases: an empty
 * table where the schema says "array" is [], an integral float where it
 * says "integer" is an integer.
 */
#ifndef RAPPORT_LUAJSON_H
#define RAPPORT_LUAJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>
#include <lua.h>

/* Pushes the `json` module table (decode, encode, null, array, is_array)
 * and registers the array marker; call once per Lua state. */
int luajson_open(lua_State *L);

/* Pushes v as a Lua value (null → json.null, a NULL lightuserdata equal to
 * cjson.null). Raises a Lua error only on stack exhaustion. */
void luajson_push(lua_State *L, const json_t *v);

/* Like luajson_push, but takes ownership of v and frees it even when a Lua
 * error (memory cap) interrupts the push. */
void luajson_push_owned(lua_State *L, json_t *v);

/* Sets the array marker on the table at idx. */
void luajson_mark_array(lua_State *L, int idx);

/* Pushes the value of the JSON text (decoded by jansson, flags as for
 * json_loadb) and returns its json_type, or pushes nothing and returns -1
 * when the text is not JSON. The decoded tree is boxed before anything can
 * raise, so a memory error while it is pushed frees it. Raises when the
 * current meter (below) refused jansson memory for it. */
int luajson_push_text(lua_State *L, const char *text, size_t len, size_t flags);

/* Userdata that owns one jansson reference (freed by its __gc): pushes a
 * box holding NULL; store the value after the box exists. */
json_t **luajson_box(lua_State *L);

/* jansson's memory, charged to a script call. While a meter is current,
 * every jansson allocation counts in `used`, and one that would take
 * used + *also past cap is refused (jansson then fails as out of memory
 * and `refused` is set). Frees subtract what they return. Needs
 * luajson_init() first (it aborts otherwise: unmetered would mean no cap).
 * Returns the previous meter; NULL makes none current. */
struct luajson_meter {
	size_t used;
	size_t cap;
	const size_t *also;     /* the Lua state's own bytes, or NULL */
	bool refused;
};
struct luajson_meter *luajson_meter_use(struct luajson_meter *m);

/* Installs the metering allocation functions in jansson
 * (json_set_alloc_funcs, a process-wide setting): call once, first thing in
 * main() and in a test program that runs scripts, before any thread starts.
 * The functions are plain malloc/free underneath, the same pair as
 * jansson's default, so a value allocated before the call may be freed
 * after it; blocks are measured with malloc_usable_size. */
void luajson_init(void);

/* Converts the Lua value at idx; schema may be NULL. Returns a new
 * reference, or NULL with a message in err (functions, cycles, invalid
 * UTF-8, NaN, non-string keys). Never raises. */
json_t *luajson_from_lua(lua_State *L, int idx, const json_t *schema, char *err, size_t errlen);

#endif
