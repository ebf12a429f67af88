/*
 * test_script — the script host through its public API (script.h): load
 * errors, sandbox denials, the instruction budget and wall bound, bounded
 * patterns (and that they match exactly as Lua's own), the memory cap
 * counting jansson's memory, run(ctx) steps, a fresh top-level run per
 * request, guarded fixture files, and the one list of sandbox globals that
 * .luacheckrc, tests/scripts/harness.lua and docs/scripts.md must agree
 * with. Scripts are written to a temporary folder; no database or network.
 */
#include "script.h"
#include "log.h"
#include "luajson.h"
#include "tap.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua-cjson.h>
#include <lualib.h>

static char root[64];
static char scripts[128], prompts[128];

static const struct script_limits default_limits = {
	.memory_bytes = 128u << 20, .instructions = 50000000, .wall_ms = 1000, .max_steps = 4,
};

/* Budget cases get a wall bound far away, so a loaded machine cannot turn
 * "stopped by the budget" into "stopped by the clock". */
static const struct script_limits budget_limits = {
	.memory_bytes = 128u << 20, .instructions = 50000000, .wall_ms = 600000, .max_steps = 4,
};

static void
write_file(const char *dir, const char *name, const char *text)
{
	char path[512];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	if (!f) {
		perror(path);
		exit(2);
	}
	fputs(text, f);
	fclose(f);
}

static void
remove_script(const char *name)
{
	char path[512];
	snprintf(path, sizeof path, "%s/%s.lua", scripts, name);
	unlink(path);
}

/* Loads scripts/<name>.lua (text) alone in a new registry. Returns the
 * registry (to destroy); *s the script or NULL, *error its load error. */
static script_registry *
load(const char *name, const char *text, const struct script_limits *limits, script **s,
     char *error, size_t errlen)
{
	char file[160];
	snprintf(file, sizeof file, "%s.lua", name);
	write_file(scripts, file, text);
	script_registry *r = script_registry_create(scripts, prompts, "test-model",
	                                            limits ? limits : &default_limits);
	script_registry_reload(r);
	*s = script_registry_get(r, name);
	error[0] = '\0';
	for (int i = 0; i < script_registry_count(r); i++) {
		const char *n, *e;
		script *cur;
		script_registry_entry(r, i, &n, &cur, &e);
		if (strcmp(n, name) == 0 && e)
			snprintf(error, errlen, "%s", e);
	}
	remove_script(name);
	return r;
}

/* A script whose prompt(ctx) returns one message with the text body
 * evaluates to (a Lua expression using ctx). */
static char *
prompt_script(const char *body)
{
	return xasprintf("return {\n  description = \"t\",\n"
	                 "  prompt = function(ctx)\n    local text = (function() %s end)()\n"
	                 "    return { { role = \"user\", content = tostring(text) } }\n  end,\n}\n",
	                 body);
}

/* Runs prompt(ctx) for a contact; the first message's content (malloc'd)
 * or NULL with err. */
static char *
prompt_of(script *s, int64_t contact, char *err, size_t errlen)
{
	script_run *run = script_run_new(s, contact, "2026-01-01T00:00:00Z");
	json_t *req = script_run_request(run, err, errlen);
	char *text = NULL;
	if (req) {
		json_t *m = json_array_get(json_object_get(req, "messages"), 0);
		text = xstrdup(json_string_value(json_object_get(m, "content")));
	}
	json_decref(req);
	script_run_free(run);
	return text;
}

/* Loads a prompt script with body and runs it once: content or NULL + err. */
static char *
run_body(const char *name, const char *body, const struct script_limits *limits, char *err,
         size_t errlen)
{
	char *src = prompt_script(body);
	script *s;
	char lerr[900];
	script_registry *r = load(name, src, limits, &s, lerr, sizeof lerr);
	free(src);
	char *text = NULL;
	if (!s)
		snprintf(err, errlen, "load failed: %s", lerr);
	else
		text = prompt_of(s, 1, err, errlen);
	script_registry_destroy(r);
	return text;
}

static bool
contains(const char *hay, const char *needle)
{
	return hay && strstr(hay, needle);
}

/* ---- load errors --------------------------------------------------------- */

static void
test_load_errors(void)
{
	script *s;
	char err[1024];
	script_registry *r = load("bad_syntax", "return {\n  description = \n", NULL, &s, err, sizeof err);
	ok(!s && contains(err, "scripts/bad_syntax.lua:3:"), "a syntax error fails the load with file:line: %s", err);
	script_registry_destroy(r);

	r = load("top_error", "local x = 1\nerror(\"boom\")\nreturn {}\n", NULL, &s, err, sizeof err);
	ok(!s && contains(err, "scripts/top_error.lua:2: boom"), "an error at the top level names its line: %s", err);
	script_registry_destroy(r);

	r = load("no_desc", "return { prompt = function() end }\n", NULL, &s, err, sizeof err);
	ok(!s && contains(err, "'description' must be a string"), "a missing description is a load error: %s", err);
	script_registry_destroy(r);

	r = load("not_table", "return 42\n", NULL, &s, err, sizeof err);
	ok(!s && contains(err, "must return a table"), "a file that returns no table is refused: %s", err);
	script_registry_destroy(r);

	r = load("stray_end", "end\nreturn { description = \"x\", prompt = function() end }\n", NULL, &s,
	         err, sizeof err);
	ok(!s && contains(err, "scripts/stray_end.lua:1:"),
	   "a stray 'end' cannot close the host's wrapper function: %s", err);
	script_registry_destroy(r);

	r = load("Bad-Name", "return {}\n", NULL, &s, err, sizeof err);
	ok(!s && contains(err, "type names may only use"), "a file name that is no type name is refused: %s", err);
	script_registry_destroy(r);
}

/* The admin errors list: only failed types, and whether an older version
 * still serves. */
static void
test_errors_list_names_failed_types(void)
{
	write_file(scripts, "fine.lua", "return { description = \"ok\", prompt = function() end }\n");
	write_file(scripts, "broken.lua", "return 42\n");
	script_registry *r = script_registry_create(scripts, prompts, "test-model", &default_limits);
	script_registry_reload(r);
	json_t *e = script_registry_errors(r);
	json_t *first = json_array_get(e, 0);
	ok(json_array_size(e) == 1 &&
	   strcmp(json_string_value(json_object_get(first, "type")), "broken") == 0 &&
	   contains(json_string_value(json_object_get(first, "error")), "must return a table") &&
	   json_is_false(json_object_get(first, "serving_old_version")),
	   "errors lists the failed type only, with its error, nothing old serving");
	json_decref(e);

	write_file(scripts, "fine.lua", "return {\n");
	script_registry_reload(r);
	e = script_registry_errors(r);
	bool old_serves = false;
	for (size_t i = 0; i < json_array_size(e); i++) {
		json_t *x = json_array_get(e, i);
		if (strcmp(json_string_value(json_object_get(x, "type")), "fine") == 0)
			old_serves = json_is_true(json_object_get(x, "serving_old_version"));
	}
	ok(json_array_size(e) == 2 && old_serves,
	   "a type broken by a reload is listed with serving_old_version true");
	json_decref(e);
	script_registry_destroy(r);
	remove_script("fine");
	remove_script("broken");
}

/* Service queries: the server's own named SQL from lib/queries.lua, as of
 * the last reload that could run the file. */
static void
test_service_queries_come_from_lib_queries(void)
{
	char lib[600];
	snprintf(lib, sizeof lib, "%s/lib", scripts);
	mkdir(lib, 0700);
	write_file(lib, "queries.lua",
	           "return { warm_candidates = { sql = 'SELECT 1 LIMIT $1' },\n"
	           "         contact_search = 'SELECT 2', odd = { one = true } }\n");
	script_registry *r = script_registry_create(scripts, prompts, "test-model", &default_limits);
	script_registry_reload(r);
	const char *w = script_registry_named_query(r, "warm_candidates");
	const char *c = script_registry_named_query(r, "contact_search");
	ok(w && strcmp(w, "SELECT 1 LIMIT $1") == 0 && c && strcmp(c, "SELECT 2") == 0,
	   "named queries are found by name, as a table with sql or a plain string");
	ok(!script_registry_named_query(r, "odd") && !script_registry_named_query(r, "nope"),
	   "an entry without sql and an unknown name are NULL");
	write_file(lib, "queries.lua", "return {\n");
	script_registry_reload(r);
	w = script_registry_named_query(r, "warm_candidates");
	ok(w && strcmp(w, "SELECT 1 LIMIT $1") == 0,
	   "a queries.lua that fails to run keeps the previous service queries");
	script_registry_destroy(r);
	char path[700];
	snprintf(path, sizeof path, "%s/queries.lua", lib);
	unlink(path);
	rmdir(lib);
}

/* ---- sandbox denials ------------------------------------------------------ */

static void
test_sandbox_denials(void)
{
	static const struct { const char *body, *want, *what; } cases[] = {
		{ "return io.open('/etc/passwd')", "undefined global 'io'", "io is absent" },
		{ "return cjson.encode({})", "undefined global 'cjson'", "lua-cjson is not offered" },
		{ "return load('return 1')", "undefined global 'load'", "load is absent" },
		{ "return os.getenv('HOME')", "field 'getenv'", "os has only time, clock and date" },
		{ "return string.dump(print)", "field 'dump'", "string.dump is absent" },
		{ "return setmetatable({}, { __gc = function() end })", "__gc metamethods are not allowed",
		  "setmetatable refuses __gc" },
		{ "LEAK = ctx.contact_id; return 1", "cannot set global 'LEAK'", "a request cannot set a global" },
		{ "rawset(_G, 'x', 1); return 1", "rawset on the globals table", "rawset on _G is refused" },
		{ "getmetatable('').__index.leak = 1; return 1", "the string library is read-only",
		  "the string methods' table cannot be written" },
		{ "setmetatable(_G, nil); return 1", "cannot change a protected metatable", "_G's metatable is protected" },
		{ "return require('fmt')", "require is only available while the script loads",
		  "require is load-time only" },
		{ "return db.query('contact')", "only available inside run(ctx)", "db.query outside run" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		char err[1024] = "";
		char *text = run_body("deny", cases[i].body, NULL, err, sizeof err);
		ok(!text && contains(err, cases[i].want), "%s: %s", cases[i].what, err);
		free(text);
	}
}

/* ---- budget and wall bound ------------------------------------------------- */

static void
test_budget(void)
{
	char err[1024] = "";
	char *text = run_body("spin", "while true do end", &budget_limits, err, sizeof err);
	ok(!text && contains(err, "instruction budget"), "an endless loop stops at the instruction budget: %s", err);
	free(text);

	text = run_body("spin_pcall", "while true do pcall(function() while true do end end) end",
	                &budget_limits, err, sizeof err);
	ok(!text && contains(err, "instruction budget"), "pcall cannot outlast the budget: %s", err);
	free(text);

	struct script_limits wall = default_limits;
	wall.instructions = 1000000000000L;
	wall.wall_ms = 200;
	double t0 = util_now_ms();
	text = run_body("slow", "while true do end", &wall, err, sizeof err);
	double took = util_now_ms() - t0;
	ok(!text && contains(err, "time limit"), "with a huge budget the wall bound stops it: %s", err);
	ok(took < 20000, "and it stopped (%.0f ms for a 200 ms bound)", took);
	free(text);
}

/* ---- patterns --------------------------------------------------------------- */

static void
test_pattern_bound(void)
{
	static const struct { const char *body, *what; } bombs[] = {
		{ "return (('a'):rep(40)):find(('a?'):rep(40) .. ('a'):rep(40))",
		  "exponential backtracking with '?' (no *, + or -)" },
		{ "return (('a'):rep(200000)):find('.-.-.-.-.-b')", "nested lazy quantifiers over 200 kB" },
		{ "return select(2, (('a'):rep(3000)):gsub('(.-)(.-)(.-)(.-)x', '%2'))",
		  "a gsub with nested backtracking" },
		{ "local n = 0 for _ in (('a'):rep(30000)):gmatch('a-a-a-a-b') do n = n + 1 end return n",
		  "gmatch" },
		{ "local s = ('a'):rep(100000) .. 'b' return s:find(('a'):rep(50000) .. 'c', 1, true)",
		  "a long plain find" },
	};
	struct script_limits wall = default_limits;
	wall.instructions = 1000000000000L;   /* only the clock can stop these */
	for (size_t i = 0; i < sizeof bombs / sizeof *bombs; i++) {
		char err[1024] = "";
		char *text = run_body("bomb", bombs[i].body, &budget_limits, err, sizeof err);
		ok(!text && contains(err, "pattern too expensive"), "%s stops at the budget: %s", bombs[i].what, err);
		free(text);
		if (strstr(bombs[i].body, "true)"))
			continue;     /* a plain find's worst case fits in the wall bound */
		err[0] = '\0';
		text = run_body("bomb", bombs[i].body, &wall, err, sizeof err);
		ok(!text && (contains(err, "pattern too expensive") || contains(err, "time limit")),
		   "%s stops at the wall bound: %s", bombs[i].what, err);
		free(text);
	}
	char err[1024] = "";
	char *text = run_body("rep", "return #string.rep('', 1 << 62) .. '/' .. #(''):rep(1 << 62, '')", NULL,
	                      err, sizeof err);
	ok(text && strcmp(text, "0/0") == 0, "string.rep of an empty string is at once empty (%s%s)",
	   text ? text : "", err);
	free(text);
	text = run_body("move", "return #table.move({}, 1, 1 << 40, 2)", NULL, err, sizeof err);
	ok(!text && contains(err, "table.move"), "a table.move of 2^40 nils is refused: %s", err);
	free(text);
	text = run_body("move_after_pcall",
	                "pcall(string.find, ('a'):rep(40), ('a?'):rep(40) .. ('a'):rep(40)) "
	                "return #table.move({}, 1, 1 << 40, 2)", &budget_limits, err, sizeof err);
	ok(!text && contains(err, "table.move"),
	   "and so is one after the budget is spent (by a caught pattern error): %s", err);
	free(text);
	text = run_body("pcall_bomb",
	                "for i = 1, 1000 do pcall(string.find, ('a'):rep(40), ('a?'):rep(40) .. ('a'):rep(40)) end "
	                "return 'done'", &budget_limits, err, sizeof err);
	ok(!text && (contains(err, "instruction budget") || contains(err, "pattern too expensive")),
	   "catching the pattern error does not buy more budget: %s", err);
	free(text);
}

/* The same calls in a stock Lua state and in the sandbox give the same
 * answers (captures, positions, errors). */
static const char PATTERN_CORPUS[] =
	"local cases = {\n"
	"  {'find', 'hello world', 'o w'}, {'find', 'hello world', 'l+'}, {'find', 'hello', 'l', 1, true},\n"
	"  {'find', 'hello', ''}, {'find', 'hello', '', 10}, {'find', 'hello', 'l', -2},\n"
	"  {'find', 'a.b', '.', 1, true}, {'find', 'x = 12', '(%w+)%s*=%s*(%d+)'}, {'find', 'abc', '()b()'},\n"
	"  {'match', 'key=val', '(%w+)=(%w+)'}, {'match', '  trim  ', '^%s*(.-)%s*$'}, {'match', 'f(a(b)c)d', '%b()'},\n"
	"  {'match', 'THE (quick) fox', '%f[%a]%a+'}, {'match', 'abc', '^(a)(b)(c)$'}, {'match', 'aaa', 'a-'},\n"
	"  {'match', 'aaab', 'a-b'}, {'match', 'x', '[%]]'}, {'match', ']', '[]]'}, {'match', 'a-z', '[a%-z]+'},\n"
	"  {'match', '2024-01-05', '(%d+)-(%d+)-(%d+)'}, {'match', 'hello', '(h)(e)%2'}, {'match', 'abab', '(ab)%1'},\n"
	"  {'match', 'x', '[^%s]'}, {'match', '\\0a\\0', '%z'}, {'match', 'CamelCase', '%u%l+$'}, {'match', 'a.b', '%.'},\n"
	"  {'match', 'end$', 'd$'}, {'match', 'a$b', '$b'}, {'match', 'abc', 'b', -1}, {'match', 'abc', '.', 10},\n"
	"  {'match', 'x', '%'}, {'match', 'x', '[a'}, {'match', 'x', '(x'}, {'match', 'x', 'x)'}, {'match', 'x', '%b'},\n"
	"  {'match', 'x', '%f'}, {'match', 'x', '%1'}, {'match', 'aaa', ('(a)'):rep(33)}, {'match', 'a?', 'a?%?'},\n"
	"  {'gsub', 'hello world', 'o', '0'}, {'gsub', 'hello world', '(%w+)', '<%1>'}, {'gsub', 'abc', '', '-'},\n"
	"  {'gsub', 'abc', '%w', '%0%0'}, {'gsub', 'abc', '%w', '%%'}, {'gsub', 'abc', '%w', '%2'}, {'gsub', 'abc', '%w', '%x'},\n"
	"  {'gsub', 'hello', 'l', 'L', 1}, {'gsub', 'hello', '^h', 'H'}, {'gsub', 'a,b,,c', ',', ';'},\n"
	"  {'gsub', '$name is $age', '%$(%w+)', {name = 'Ann', age = 3}}, {'gsub', 'abc', '%w', {a = false, b = 'B'}},\n"
	"  {'gsub', 'abc', '()', '%1'}, {'gsub', 'one two', '(%w+) (%w+)', '%2 %1'}, {'gsub', 'x', 'x', 1.5},\n"
	"  {'gmatch', 'one two  three', '%a+'}, {'gmatch', 'k1=v1, k2=v2', '(%w+)=(%w+)'}, {'gmatch', 'abc', ''},\n"
	"  {'gmatch', 'aaa', 'a*'}, {'gmatch', 'hello', 'l', 4}, {'gmatch', '^a^a', '^a'},\n"
	"}\n"
	"local function show(...)\n"
	"  local n, out = select('#', ...), {}\n"
	"  for i = 1, n do local v = select(i, ...) out[i] = type(v) .. ':' .. tostring(v) end\n"
	"  return '[' .. table.concat(out, ',') .. ']'\n"
	"end\n"
	"local out = {}\n"
	"for i, c in ipairs(cases) do\n"
	"  local fn, s, p, a, b = c[1], c[2], c[3], c[4], c[5]\n"
	"  local r\n"
	"  if fn == 'gmatch' then\n"
	"    local got = {}\n"
	"    local okk, e = pcall(function() for x, y in string.gmatch(s, p, a) do got[#got + 1] = show(x, y) end end)\n"
	"    r = okk and table.concat(got, ';') or ('error:' .. e)\n"
	"  elseif fn == 'gsub' then\n"
	"    r = show(pcall(string.gsub, s, p, a, b))\n"
	"  else\n"
	"    r = show(pcall(string[fn], s, p, a, b))\n"
	"  end\n"
	"  out[i] = i .. ' ' .. r .. ' ' .. show(pcall(function() return (s):len(), ('x'):rep(2) end))\n"
	"end\n"
	"return table.concat(out, '\\n')\n";

static void
test_pattern_same_as_lua(void)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	const char *stock = NULL;
	if (luaL_dostring(L, PATTERN_CORPUS) == LUA_OK)
		stock = lua_tostring(L, -1);
	char err[1024] = "";
	char *body = xasprintf("%s", PATTERN_CORPUS);
	/* The corpus is a chunk; as a prompt body it runs inside a function. */
	char *text = run_body("same", body, NULL, err, sizeof err);
	ok(stock && text, "the corpus runs in both states (%s)", err);
	if (stock && text) {
		bool same = strcmp(stock, text) == 0;
		ok(same, "find, match, gmatch and gsub answer as Lua's own on %d cases", 62);
		if (!same) {
			/* Show the first line that differs. */
			const char *a = stock, *b = text;
			while (*a && *a == *b) {
				a++;
				b++;
			}
			while (a > stock && a[-1] != '\n')
				a--, b--;
			printf("# lua:     %.*s\n# sandbox: %.*s\n", (int)strcspn(a, "\n"), a, (int)strcspn(b, "\n"), b);
		}
	}
	free(text);
	free(body);
	lua_close(L);
}

/* string.rep is rapport's own (copies by doubling): the same answers as
 * Lua's, errors included. */
static const char REP_CORPUS[] =
	"local cases = {\n"
	"  {'x', 1}, {'x', 5}, {'ab', 3}, {'ab', 3, ', '}, {'', 4, '-'}, {'', 1, '-'}, {'abc', 1, ';'},\n"
	"  {'abc', 0}, {'abc', -3}, {'', 7}, {'xyz', 1000, '|'}, {'a', 4097}, {'ab', 100, ''},\n"
	"  {'x', 1 << 31}, {'xy', 1 << 30, 'z'}, {'x', math.maxinteger}, {'x', 2.0}, {'x', 2.5}, {'x', 'n'},\n"
	"}\n"
	"local out = {}\n"
	"for i, c in ipairs(cases) do\n"
	"  local okk, r = pcall(string.rep, c[1], c[2], c[3])\n"
	"  out[i] = i .. ' ' .. tostring(okk) .. ' ' .. (okk and (#r .. ':' .. r:sub(1, 40) .. ':' .. r:sub(-40)) or tostring(r))\n"
	"end\n"
	"return table.concat(out, '\\n')\n";

static void
test_rep(void)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	const char *stock = NULL;
	if (luaL_dostring(L, REP_CORPUS) == LUA_OK)
		stock = lua_tostring(L, -1);
	char err[1024] = "";
	char *text = run_body("rep_same", REP_CORPUS, NULL, err, sizeof err);
	ok(stock && text && strcmp(stock, text) == 0,
	   "string.rep answers as Lua's own, errors included (%s)", err);
	if (stock && text && strcmp(stock, text) != 0)
		printf("# lua:\n%s\n# sandbox:\n%s\n", stock, text);
	free(text);
	lua_close(L);

	/* Hundreds of millions of one-byte copies inside string.rep, 64 KiB
	 * at a time: Lua's own makes one memcpy call per byte, seconds of one
	 * C call, so the first check after it (the loop of plain instructions
	 * reaches the count hook) finds the 1 s time limit past; copied by
	 * doubling it is tens of milliseconds. AddressSanitizer slows both
	 * (each memcpy and allocation is checked), so it gets a quarter of the
	 * work: Lua's own still takes seconds there, ours about 150 ms. */
#if defined(__SANITIZE_ADDRESS__)
	const char *rep_body = "local n = 0 for i = 1, 2048 do n = n + #string.rep('x', 1 << 16) end "
	                       "for i = 1, 10000 do n = n + 0 end return tostring(n)";
	const char *rep_want = "134217728";
#else
	const char *rep_body = "local n = 0 for i = 1, 8192 do n = n + #string.rep('x', 1 << 16) end "
	                       "for i = 1, 10000 do n = n + 0 end return tostring(n)";
	const char *rep_want = "536870912";
#endif
	err[0] = '\0';
	text = run_body("rep_fast", rep_body, NULL, err, sizeof err);
	ok(text && strcmp(text, rep_want) == 0,
	   "string.rep of a one-byte string, %s bytes in all, ends inside the 1 s time limit (%s%s)", rep_want,
	   text ? text : "", err);
	free(text);
}

/* ---- memory cap --------------------------------------------------------------- */

static void
test_memory_cap(void)
{
	char err[1024] = "";
	/* 10 MB of JSON: a small string in Lua, several times that in
	 * jansson's tree, which now counts. */
	char *text = run_body("big_json", "local s = '[' .. string.rep('1,', 5000000) .. '1]' "
	                      "local t = json.decode(s) return #t", NULL, err, sizeof err);
	ok(!text && contains(err, "json.decode") && contains(err, "memory cap"),
	   "a 10 MB json.decode fails at the memory cap: %s", err);
	free(text);

	text = run_body("big_json_pcall", "local s = '[' .. string.rep('1,', 5000000) .. '1]' "
	                "local okk, e = pcall(json.decode, s) return tostring(okk) .. ' ' .. tostring(e)",
	                NULL, err, sizeof err);
	ok(text && contains(text, "false") && contains(text, "memory cap"),
	   "and the script can catch it and go on: %s%s", text ? text : "", err);
	free(text);

	text = run_body("big_string", "return #string.rep('x', 200 << 20)", NULL, err, sizeof err);
	ok(!text && contains(err, "memory cap"), "a 200 MB string fails at the cap: %s", err);
	free(text);

	text = run_body("small_json", "return json.encode(json.decode('{\"a\":[1,2,{\"b\":null}]}'))", NULL, err,
	                sizeof err);
	ok(text && strcmp(text, "{\"a\":[1,2,{\"b\":null}]}") == 0, "small JSON round-trips under the meter (%s%s)",
	   text ? text : "", err);
	free(text);
}

/* ---- a fresh top level per request ------------------------------------------- */

static void
test_fresh_top_level(void)
{
	script *s;
	char err[1024];
	script_registry *r = load("remember",
	                          "local seen = {}\n"
	                          "CACHE = {}\n"
	                          "return {\n  description = \"keeps contacts in module state\",\n"
	                          "  prompt = function(ctx)\n"
	                          "    seen[#seen + 1] = ctx.contact_id\n"
	                          "    CACHE[#CACHE + 1] = ctx.contact_id\n"
	                          "    string.leak = (string.leak or '') .. ctx.contact_id\n"
	                          "    return { { role = \"user\", content = table.concat(seen, ',') .. '|' ..\n"
	                          "             table.concat(CACHE, ',') .. '|' .. string.leak } }\n"
	                          "  end,\n}\n", NULL, &s, err, sizeof err);
	ok(s != NULL, "a script with module-level tables loads (%s)", err);
	if (s) {
		char *a = prompt_of(s, 11, err, sizeof err);
		char *b = prompt_of(s, 22, err, sizeof err);
		ok(a && strcmp(a, "11|11|11") == 0, "the first request sees its own contact (%s)", a ? a : err);
		ok(b && strcmp(b, "22|22|22") == 0,
		   "the next contact's request sees none of the first one's data (%s)", b ? b : err);
		free(a);
		free(b);
	}
	script_registry_destroy(r);
}

/* ---- run(ctx) steps ------------------------------------------------------------ */

static PGresult *
one_row(const char *col, const char *value)
{
	PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	PGresAttDesc attr = { .name = (char *)col, .typid = 25, .typlen = -1, .atttypmod = -1 };
	PQsetResultAttrs(res, 1, &attr);
	PQsetvalue(res, 0, 0, (char *)value, (int)strlen(value));
	return res;
}

static void
test_run_steps(void)
{
	script *s;
	char err[1024];
	script_registry *r = load("steps",
	                          "return {\n  description = \"two steps\",\n"
	                          "  sql = { who = \"SELECT name FROM people WHERE id = $1\" },\n"
	                          "  run = function(ctx)\n"
	                          "    local rows = assert(db.query('who'))\n"
	                          "    local reply = assert(llm.chat({ { role = 'user', content = 'hi ' .. rows[1].name } }))\n"
	                          "    return { name = rows[1].name, said = reply.text, tokens = reply.usage.completion_tokens }\n"
	                          "  end,\n}\n", NULL, &s, err, sizeof err);
	ok(s && script_info(s)->has_run, "a run(ctx) script loads (%s)", err);
	if (s) {
		script_run *run = script_run_new(s, 7, "2026-01-01T00:00:00Z");
		struct script_wait w;
		json_t *result = NULL;
		enum script_step st = script_run_start(run, &w, &result, err, sizeof err);
		ok(st == SCRIPT_WAIT_QUERY && w.sql && strstr(w.sql, "FROM people") && w.nparams == 1 &&
		   strcmp(w.params[0], "7") == 0, "db.query yields its SQL with $1 = the contact");
		PGresult *res = one_row("name", "Ada");
		st = script_run_resume_rows(run, res, NULL, &w, &result, err, sizeof err);
		PQclear(res);
		const char *content = st == SCRIPT_WAIT_CHAT ?
			json_string_value(json_object_get(json_array_get(json_object_get(w.request, "messages"), 0),
			                                  "content")) : NULL;
		ok(content && strcmp(content, "hi Ada") == 0, "the rows reach the script, llm.chat yields its request");
		st = script_run_resume_reply(run, "hello", "stop", "m", 3, 5, NULL, &w, &result, err, sizeof err);
		ok(st == SCRIPT_DONE && result &&
		   strcmp(json_string_value(json_object_get(result, "said")), "hello") == 0 &&
		   json_integer_value(json_object_get(result, "tokens")) == 5,
		   "the reply reaches the script and run's table is the result");
		json_decref(result);
		script_run_free(run);
	}
	script_registry_destroy(r);

	r = load("many_steps",
	         "return {\n  description = \"too many steps\",\n"
	         "  run = function(ctx) while true do db.query('SELECT 1') end end,\n}\n", NULL, &s, err,
	         sizeof err);
	if (s) {
		script_run *run = script_run_new(s, 1, "2026-01-01T00:00:00Z");
		struct script_wait w;
		json_t *result = NULL;
		enum script_step st = script_run_start(run, &w, &result, err, sizeof err);
		int n = 0;
		while (st == SCRIPT_WAIT_QUERY && n++ < 100) {
			PGresult *res = one_row("x", "1");
			st = script_run_resume_rows(run, res, NULL, &w, &result, err, sizeof err);
			PQclear(res);
		}
		ok(st == SCRIPT_ERROR && contains(err, "more than 4"), "run(ctx) stops after max_steps calls: %s", err);
		script_run_free(run);
	}
	script_registry_destroy(r);

	r = load("raw_write",
	         "return {\n  description = \"writes\",\n"
	         "  run = function(ctx) return { r = db.query('DELETE FROM people WHERE true', {}) } end,\n}\n",
	         NULL, &s, err, sizeof err);
	if (s) {
		script_run *run = script_run_new(s, 1, "2026-01-01T00:00:00Z");
		struct script_wait w;
		json_t *result = NULL;
		enum script_step st = script_run_start(run, &w, &result, err, sizeof err);
		ok(st == SCRIPT_ERROR && contains(err, "only SELECT"), "ad-hoc SQL that is not a query is refused: %s", err);
		script_run_free(run);
	}
	script_registry_destroy(r);
}

/* ---- fixture files --------------------------------------------------------------- */

static void
test_fixtures_guarded(void)
{
	script *s;
	char err[1024];
	script_registry *r = load("fx", "return { description = \"x\", prompt = function() return {} end }\n", &budget_limits,
	                          &s, err, sizeof err);
	static const struct { const char *text, *want, *what; } cases[] = {
		{ "local t = setmetatable({}, { __gc = function() while true do end end })\nreturn {}\n",
		  "__gc metamethods are not allowed", "a looping __gc is refused" },
		{ "local x = ('a'):rep(40):find(('a?'):rep(40) .. ('a'):rep(40))\nreturn {}\n",
		  "pattern too expensive", "a pattern bomb is bounded" },
		{ "while true do end\n", "instruction budget", "an endless loop is bounded" },
		{ "return { io.open('/etc/passwd') }\n", "undefined global 'io'", "no io" },
		{ "return { case{ name = 'a', ctx = {} } }\n", "", "a good fixture reads" },
	};
	for (size_t i = 0; s && i < sizeof cases / sizeof *cases; i++) {
		char path[256];
		snprintf(path, sizeof path, "%s/fixture.lua", root);
		write_file(root, "fixture.lua", cases[i].text);
		json_t *v = script_read_fixtures(s, path, err, sizeof err);
		if (!cases[i].want[0])
			ok(v && json_integer_value(json_object_get(json_array_get(v, 0), "_line")) == 1,
			   "%s, case{} keeps its line (%s)", cases[i].what, err);
		else
			ok(!v && contains(err, cases[i].want) && contains(err, "fixture.lua:"), "%s: %s",
			   cases[i].what, err);
		json_decref(v);
	}
	script_registry_destroy(r);
}

/* ---- one definition of the sandbox ------------------------------------------------ */

/* "name" or "name.field" for every global, sorted, one per line. */
static char *
c_globals(void)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	lua_newtable(L);
	int n = 0;
	for (const struct script_global *g = script_sandbox_globals; g->name; g++) {
		if (!g->fields) {
			lua_pushstring(L, g->name);
			lua_rawseti(L, 1, ++n);
		}
		for (const char *const *f = g->fields; f && *f; f++) {
			lua_pushfstring(L, "%s.%s", g->name, *f);
			lua_rawseti(L, 1, ++n);
		}
	}
	lua_getglobal(L, "table");
	lua_getfield(L, -1, "sort");
	lua_pushvalue(L, 1);
	lua_call(L, 1, 0);
	lua_getfield(L, -1, "concat");
	lua_pushvalue(L, 1);
	lua_pushliteral(L, "\n");
	lua_call(L, 2, 1);
	char *out = xstrdup(lua_tostring(L, -1));
	lua_close(L);
	return out;
}

/* Runs Lua code (with cjson preloaded) that returns the same listing. */
static char *
lua_listing(const char *code, char *err, size_t errlen)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "preload");
	lua_pushcfunction(L, luaopen_cjson);
	lua_setfield(L, -2, "cjson");
	lua_settop(L, 0);
	char *out = NULL;
	if (luaL_dostring(L, code) == LUA_OK && lua_isstring(L, -1))
		out = xstrdup(lua_tostring(L, -1));
	else
		snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "no listing");
	lua_close(L);
	return out;
}

static const char LISTING[] =
	"local function listing(g)\n"
	"  local out = {}\n"
	"  for k, v in pairs(g) do\n"
	"    if type(k) == 'number' then out[#out + 1] = v\n"
	"    elseif v == true or (type(v) == 'table' and next(v) == nil) then out[#out + 1] = k\n"
	"    else for _, f in ipairs(v.fields or v) do out[#out + 1] = k .. '.' .. f end end\n"
	"  end\n"
	"  table.sort(out)\n"
	"  return table.concat(out, '\\n')\n"
	"end\n";

static void
test_one_sandbox_definition(void)
{
	char *want = c_globals();
	ok(strstr(want, "string.find") && !strstr(want, "cjson") && !strstr(want, "string.dump"),
	   "the C list offers string.find and neither cjson nor string.dump");
	char err[1024] = "";

	char *code = xasprintf("%s local env = { files = {} }\n"
	                       "local chunk = assert(loadfile('.luacheckrc', 't', env))\n"
	                       "env.stds = {} chunk()\n"
	                       "return listing(env.stds.rapport_sandbox.read_globals)", LISTING);
	char *got = lua_listing(code, err, sizeof err);
	ok(got && strcmp(got, want) == 0, ".luacheckrc's rapport_sandbox globals are the C list%s%s",
	   got ? "" : ": ", err);
	if (got && strcmp(got, want) != 0)
		printf("# .luacheckrc:\n# %s\n# C:\n# %s\n", got, want);
	free(code);
	free(got);

	code = xasprintf("%s local H = dofile('tests/scripts/harness.lua')\n"
	                 "return listing(H.sandbox_globals())", LISTING);
	got = lua_listing(code, err, sizeof err);
	ok(got && strcmp(got, want) == 0, "tests/scripts/harness.lua's sandbox is the C list%s%s",
	   got ? "" : ": ", err);
	if (got && strcmp(got, want) != 0)
		printf("# harness:\n# %s\n", got);
	free(code);
	free(got);

	/* docs/scripts.md: between the markers, a line "- `lib`: `f` `g`"
	 * gives lib.f and lib.g; any other `word` is a global. */
	size_t len;
	char *doc = util_read_file("docs/scripts.md", &len);
	const char *a = doc ? strstr(doc, "<!-- sandbox-globals -->") : NULL;
	const char *b = a ? strstr(a, "<!-- /sandbox-globals -->") : NULL;
	got = NULL;
	if (a && b) {
		char *section = xstrndup(a, (size_t)(b - a));
		lua_State *L = luaL_newstate();
		luaL_openlibs(L);
		luaL_loadstring(L, "local text = ... local out = {}\n"
		                   "for line in text:gmatch('[^\\n]+') do\n"
		                   "  local lib, rest = line:match('^%- `([%w_]+)`: (.*)$')\n"
		                   "  if lib then for f in rest:gmatch('`([%w_]+)`') do out[#out + 1] = lib .. '.' .. f end\n"
		                   "  else for w in line:gmatch('`([%w_]+)`') do out[#out + 1] = w end end\n"
		                   "end\n"
		                   "table.sort(out) return table.concat(out, '\\n')");
		lua_pushstring(L, section);
		if (lua_pcall(L, 1, 1, 0) == LUA_OK)
			got = xstrdup(lua_tostring(L, -1));
		lua_close(L);
		free(section);
	}
	ok(got && strcmp(got, want) == 0, "docs/scripts.md lists exactly the C list");
	if (got && strcmp(got, want) != 0)
		printf("# docs:\n# %s\n", got);
	free(got);
	free(doc);
	free(want);
}

int
main(void)
{
	luajson_init();
	snprintf(root, sizeof root, "/tmp/rapport-test-script-XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(scripts, sizeof scripts, "%s/scripts", root);
	snprintf(prompts, sizeof prompts, "%s/prompts", root);
	mkdir(scripts, 0700);
	mkdir(prompts, 0700);
	log_set_level(getenv("TEST_VERBOSE") ? LOG_DEBUG : LOG_ERROR);

	test_load_errors();
	test_errors_list_names_failed_types();
	test_service_queries_come_from_lib_queries();
	test_sandbox_denials();
	test_budget();
	test_pattern_bound();
	test_pattern_same_as_lua();
	test_rep();
	test_memory_cap();
	test_fresh_top_level();
	test_run_steps();
	test_fixtures_guarded();
	test_one_sandbox_definition();

	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", root);
	if (system(cmd) != 0)
		fprintf(stderr, "# could not remove %s\n", root);
	return tap_done();
}
