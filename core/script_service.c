/*
 * script_service — the "service queries" of scripts/lib/queries.lua: named
 * SQL that the server itself runs outside any analysis (warm_candidates for
 * warm jobs' "top N", contact_search for the panel's search), so a CRM
 * adapts them in Lua like the scripts' own queries.
 *
 * Data flow: script_registry_reload() → service_load() runs queries.lua in
 * a bare Lua state of its own (base and string libraries only: the file is
 * data, a table of name → "sql" or { sql = "…" }) → copies of every
 * name/SQL pair into the registry's table, which replaces the previous one
 * only when the file ran. Lookups read that copy; no file is read per
 * request. The registry owns the table; this file is the only one that
 * writes it.
 */
#include "script_int.h"
#include "log.h"
#include "util.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
script_service_free(struct script_service *sv)
{
	for (int i = 0; i < sv->n; i++) {
		free(sv->names[i]);
		free(sv->sql[i]);
	}
	free(sv->names);
	free(sv->sql);
	memset(sv, 0, sizeof *sv);
}

static void
service_add(struct script_service *sv, const char *name, const char *sql)
{
	sv->names = xrealloc(sv->names, sizeof(char *) * (size_t)(sv->n + 1));
	sv->sql = xrealloc(sv->sql, sizeof(char *) * (size_t)(sv->n + 1));
	sv->names[sv->n] = xstrdup(name);
	sv->sql[sv->n] = xstrdup(sql);
	sv->n++;
}

/* Runs <scripts>/lib/queries.lua and copies its entries into *out. A
 * missing file is an empty table (a CRM without service queries); a file
 * that fails leaves *out untouched and returns false. */
bool
script_service_load(const char *scripts_dir, struct script_service *out)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/lib/queries.lua", scripts_dir);
	FILE *probe = fopen(path, "r");
	if (!probe) {
		script_service_free(out);
		return true;
	}
	fclose(probe);
	lua_State *L = luaL_newstate();
	if (!L)
		return false;
	luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
	luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
	luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
	lua_settop(L, 0);
	bool ok = false;
	if (luaL_loadfilex(L, path, "t") != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
		log_event(LOG_ERROR, "service queries failed to load", LOG_S("path", path),
		          LOG_S("error", lua_tostring(L, -1)), LOG_END);
	} else if (!lua_istable(L, -1)) {
		log_event(LOG_ERROR, "service queries failed to load", LOG_S("path", path),
		          LOG_S("error", "scripts/lib/queries.lua must return a table"), LOG_END);
	} else {
		struct script_service sv = { 0 };
		lua_pushnil(L);
		while (lua_next(L, 1)) {
			if (lua_type(L, 2) == LUA_TSTRING) {
				const char *sql = NULL;
				if (lua_type(L, 3) == LUA_TSTRING)
					sql = lua_tostring(L, -1);
				else if (lua_istable(L, -1) && lua_getfield(L, -1, "sql") == LUA_TSTRING)
					sql = lua_tostring(L, -1);
				if (sql)
					service_add(&sv, lua_tostring(L, 2), sql);
			}
			lua_settop(L, 2);     /* the key stays for lua_next */
		}
		script_service_free(out);
		*out = sv;
		ok = true;
	}
	lua_close(L);
	return ok;
}

const char *
script_registry_named_query(const script_registry *r, const char *name)
{
	for (int i = 0; i < r->service.n; i++)
		if (strcmp(r->service.names[i], name) == 0)
			return r->service.sql[i];
	return NULL;
}
