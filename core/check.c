/*
 * check — compile, lint, test every script; see check.h.
 *
 * Fixture files are trusted test data, not scripts: each is run in its own
 * plain Lua state (with `json` and a `case{…}` constructor that remembers
 * the line it was written on), and its cases cross into the script's
 * sandbox as JSON, exactly as a real context would.
 */
#include "check.h"
#include "luajson.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

/* The sandbox's globals, for luacheck: anything else a script touches is an
 * undefined global there, as it would be at run time. */
static const char *const sandbox_globals[] = {
	"assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select", "tonumber",
	"tostring", "type", "rawequal", "rawlen", "rawget", "rawset", "setmetatable",
	"getmetatable", "print", "require", "string", "table", "math", "utf8", "os.time",
	"os.clock", "os.date", "cjson", "json", "read_prompt", "db", "llm", "_G", NULL,
};

static int
lint(const char *dir)
{
	char *argv[64];
	int n = 0;
	argv[n++] = "luacheck";
	argv[n++] = "--no-config";
	argv[n++] = "--std";
	argv[n++] = "none";
	argv[n++] = "--formatter";
	argv[n++] = "plain";
	argv[n++] = "--codes";
	argv[n++] = "--no-max-line-length";
	argv[n++] = "--exclude-files";
	argv[n++] = "*/tests/*";
	argv[n++] = "--read-globals";
	for (const char *const *g = sandbox_globals; *g; g++)
		argv[n++] = (char *)*g;
	argv[n++] = "--";
	argv[n++] = (char *)dir;
	argv[n] = NULL;
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		dup2(STDOUT_FILENO, STDERR_FILENO);
		execvp(argv[0], argv);
		fprintf(stderr, "luacheck: %s (install Debian's lua-check)\n", strerror(errno));
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

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

/* Fixture files are data, but they are Lua and they are read by the
 * server at every reload: a state with only the pure libraries, a memory
 * cap and an instruction limit, so a bad fixture fails instead of hanging
 * or reaching the system. */
struct fixture_cap {
	size_t used, cap;
};

static void *
fixture_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct fixture_cap *c = ud;
	if (!ptr)
		osize = 0;
	if (nsize == 0) {
		free(ptr);
		c->used -= osize;
		return NULL;
	}
	if (nsize > osize && c->used + (nsize - osize) > c->cap)
		return NULL;
	void *p = realloc(ptr, nsize);
	if (p)
		c->used = c->used - osize + nsize;
	return p;
}

static void
fixture_hook(lua_State *L, lua_Debug *ar)
{
	lua_sethook(L, fixture_hook, LUA_MASKCOUNT, 1);
	luaL_error(L, "fixture file ran too long");
}

static lua_State *
fixture_state(struct fixture_cap *cap)
{
	lua_State *L = lua_newstate(fixture_alloc, cap);
	if (!L)
		return NULL;
	luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
	luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
	luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
	luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
	luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
	lua_pop(L, 5);
	static const char *const unsafe[] = { "dofile", "loadfile", "load", "collectgarbage", NULL };
	for (const char *const *u = unsafe; *u; u++) {
		lua_pushnil(L);
		lua_setglobal(L, *u);
	}
	luajson_open(L);
	lua_setglobal(L, "json");
	lua_pushcfunction(L, l_case);
	lua_setglobal(L, "case");
	lua_sethook(L, fixture_hook, LUA_MASKCOUNT, 10000000);
	return L;
}

/* Whether every key of want is in got with an equal (or, for objects,
 * recursively contained) value. path gets where they differ. */
static bool
subset(const json_t *want, const json_t *got, char *path, size_t len)
{
	if (json_is_object(want)) {
		if (!json_is_object(got))
			return false;
		const char *k;
		json_t *v;
		json_object_foreach((json_t *)want, k, v) {
			size_t n = strlen(path);
			snprintf(path + n, len - n, ".%s", k);
			if (!subset(v, json_object_get(got, k), path, len))
				return false;
			path[n] = '\0';
		}
		return true;
	}
	if (json_is_number(want) && json_is_number(got))
		return json_number_value(want) == json_number_value(got);
	return json_equal(want, got);
}

static char *
dump(const json_t *v)
{
	return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS) : xstrdup("(nothing)");
}

struct tally {
	int passed, failed;
};

/* One case: ctx → prompt → (reply → post) against the expectations. */
static void
run_case(script *s, const char *file, const json_t *c, struct tally *t)
{
	const char *name = json_string_value(json_object_get(c, "name"));
	int line = (int)json_integer_value(json_object_get(c, "_line"));
	char err[1024] = "", path[256] = "";
	char why[2048] = "";
	json_t *req = NULL, *result = NULL;
	const char *want_error = json_string_value(json_object_get(c, "error"));
	script_run *run = script_run_new(s, 1, "1970-01-01T00:00:00Z");
	const json_t *ctx = json_object_get(c, "ctx");
	if (!ctx || !script_run_set_ctx_json(run, ctx, err, sizeof err)) {
		snprintf(why, sizeof why, "bad ctx: %s", ctx ? err : "the case has no ctx");
		goto done;
	}
	req = script_run_request(run, err, sizeof err);
	if (!req)
		goto check_error;
	const json_t *msgs = json_object_get(req, "messages");
	const json_t *want_msgs = json_object_get(c, "messages");
	if (want_msgs && !json_equal(want_msgs, msgs)) {
		char *g = dump(msgs);
		snprintf(why, sizeof why, "messages differ; got %.1500s", g);
		free(g);
		goto done;
	}
	const json_t *contain = json_object_get(c, "messages_contain");
	size_t i;
	json_t *needle;
	json_array_foreach(contain, i, needle) {
		bool found = false;
		size_t k;
		json_t *m;
		json_array_foreach(msgs, k, m)
			if (strstr(json_string_value(json_object_get(m, "content")), json_string_value(needle)))
				found = true;
		if (!found) {
			snprintf(why, sizeof why, "no message contains \"%s\"", json_string_value(needle));
			goto done;
		}
	}
	const char *reply = json_string_value(json_object_get(c, "reply"));
	if (reply) {
		const char *fr = json_string_value(json_object_get(c, "finish_reason"));
		result = script_run_post(run, reply, fr ? fr : "stop", "fixture", err, sizeof err);
		if (!result)
			goto check_error;
		const json_t *want = json_object_get(c, "result");
		if (want && !subset(want, result, path, sizeof path)) {
			char *w = dump(json_object_get(c, "result")), *g = dump(result);
			snprintf(why, sizeof why, "result%s differs: expected %.600s, got %.900s", path, w, g);
			free(w);
			free(g);
		}
	}
	if (!why[0] && want_error)
		snprintf(why, sizeof why, "expected an error containing \"%s\", got none", want_error);
	goto done;
check_error:
	if (!want_error)
		snprintf(why, sizeof why, "%s", err);
	else if (!strstr(err, want_error))
		snprintf(why, sizeof why, "expected an error containing \"%s\", got: %s", want_error, err);
done:
	if (why[0]) {
		printf("FAIL %s:%d: %s: %s\n", file, line, name ? name : "(unnamed case)", why);
		t->failed++;
	} else {
		printf("ok   %s:%d: %s\n", file, line, name ? name : "(unnamed case)");
		t->passed++;
	}
	json_decref(req);
	json_decref(result);
	script_run_free(run);
}

/* Loads scripts/tests/<type>.lua (if any) and runs its cases. */
static void
run_fixtures(const char *scripts_dir, const char *type, script *s, struct tally *t)
{
	char *file = xasprintf("%s/tests/%s.lua", scripts_dir, type);
	struct stat st;
	if (stat(file, &st) != 0) {
		printf("note %s: no fixture tests (%s)\n", type, file);
		free(file);
		return;
	}
	struct fixture_cap cap = { 0, 64u << 20 };
	lua_State *L = fixture_state(&cap);
	if (!L) {
		printf("FAIL %s: cannot create a Lua state\n", file);
		t->failed++;
		free(file);
		return;
	}
	char err[512];
	json_t *cases = NULL;
	if (luaL_loadfilex(L, file, "t") != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
		printf("FAIL %s\n", lua_tostring(L, -1));
		t->failed++;
	} else if (!(cases = luajson_from_lua(L, -1, NULL, err, sizeof err)) || !json_is_array(cases)) {
		printf("FAIL %s: must return a list of case{...} (%s)\n", file, err[0] ? err : "not a list");
		t->failed++;
	} else {
		size_t i;
		json_t *c;
		json_array_foreach(cases, i, c)
			run_case(s, file, c, t);
	}
	json_decref(cases);
	lua_close(L);
	free(file);
}

int
check_run(const struct config *cfg, const struct script_limits *limits, bool do_lint)
{
	script_registry *r = script_registry_create(cfg->scripts_dir, cfg->prompts_dir, cfg->model,
	                                            limits);
	int failed = script_registry_reload(r);
	int n = script_registry_count(r);
	struct tally t = { 0, 0 };
	for (int i = 0; i < n; i++) {
		const char *name, *error;
		script *s;
		script_registry_entry(r, i, &name, &s, &error);
		if (error) {
			printf("FAIL %s\n", error);
			continue;
		}
		printf("ok   %s compiles (version %.8s)\n", name, script_info(s)->version);
		run_fixtures(cfg->scripts_dir, name, s, &t);
	}
	int lint_rc = 0;
	if (do_lint) {
		lint_rc = lint(cfg->scripts_dir);
		printf("%s luacheck %s\n", lint_rc == 0 ? "ok  " : "FAIL", cfg->scripts_dir);
	}
	printf("%d scripts, %d failed to compile; %d fixture cases passed, %d failed; lint %s\n",
	       n, failed, t.passed, t.failed, !do_lint ? "skipped" : lint_rc == 0 ? "clean" : "failed");
	script_registry_destroy(r);
	return failed || t.failed || lint_rc || n == 0 ? 1 : 0;
}

bool
check_prompt_smoke(void *arg, script *s, char **error)
{
	const struct script_info *si = script_info(s);
	char *file = xasprintf("%s/tests/%s.lua", script_registry_scripts_dir(arg), si->name);
	struct stat st;
	bool ok = true;
	if (si->has_run || stat(file, &st) != 0) {
		free(file);              /* nothing to render it with */
		return true;
	}
	struct fixture_cap cap = { 0, 64u << 20 };
	lua_State *L = fixture_state(&cap);
	if (!L) {
		free(file);
		return true;
	}
	char err[512] = "";
	json_t *cases = NULL;
	if (luaL_loadfilex(L, file, "t") == LUA_OK && lua_pcall(L, 0, 1, 0) == LUA_OK)
		cases = luajson_from_lua(L, -1, NULL, err, sizeof err);
	lua_close(L);
	const json_t *first = json_array_get(cases, 0);
	const json_t *ctx = json_object_get(first, "ctx");
	if (ctx && !json_object_get(first, "error")) {
		script_run *run = script_run_new(s, 1, "1970-01-01T00:00:00Z");
		json_t *req = NULL;
		if (!script_run_set_ctx_json(run, ctx, err, sizeof err) ||
		    !(req = script_run_request(run, err, sizeof err))) {
			*error = xasprintf("scripts/%s.lua: prompt(ctx) fails on its fixture %s:%d: %s", si->name, file,
			                   (int)json_integer_value(json_object_get(first, "_line")), err);
			ok = false;
		}
		json_decref(req);
		script_run_free(run);
	}
	json_decref(cases);
	free(file);
	return ok;
}
