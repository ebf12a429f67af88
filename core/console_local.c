/*
 * console_local — `rapport console` standalone: the functions that run on
 * the subsystems main built for it (the same config, scripts, database
 * pool, upstream client, cache and pipeline as `serve`) in this process.
 *
 * Data flow:
 *   context(id, type)  script_run_new, ctx_fetch (the pipeline's fan-out,
 *                      context.h), then the ctx as JSON
 *   messages(ctx)      JSON → script_run_set_ctx_json → script_run_request
 *   chat(request)      llm_chat, streamed: the text is printed as it comes
 *   post(reply, ctx)   script_run_post;  analyze(id, type) analysis_get
 * Values cross between a script's lua_State and the console's as JSON
 * (jansson), never as shared Lua values: the console's state is the
 * user's to play with, the script's stays sandboxed and budgeted.
 *
 * No C allocation lives across a Lua error: the work is done and freed in
 * C, and only then is a result pushed (luajson_push_owned) or an error
 * raised.
 */
#include "console_int.h"
#include "commands.h"
#include "context.h"
#include "luajson.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>


/* The engine's note, under the short name the stages use. */
static void note(struct console *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
note(struct console *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	console_vnote(c, fmt, ap);
	va_end(ap);
}

/* ---- argument helpers (they may raise: call them before allocating) ------------ */

static script *
check_script(lua_State *L, const char *type)
{
	script *s = script_registry_get(console_cur->d.scripts, type);
	if (!s)
		luaL_error(L, "unknown analysis type '%s' (types() lists them)", type);
	return s;
}

/* The type: the string at arg, else ctx.type of the table at ctx_arg. The
 * string stays on the stack. */
static const char *
type_arg(lua_State *L, int arg, int ctx_arg)
{
	if (lua_type(L, arg) == LUA_TSTRING)
		return lua_tostring(L, arg);
	if (!lua_isnoneornil(L, arg))
		luaL_typeerror(L, arg, "string");
	if (lua_type(L, ctx_arg) == LUA_TTABLE && lua_getfield(L, ctx_arg, "type") == LUA_TSTRING)
		return lua_tostring(L, -1);
	luaL_error(L, "which analysis type? pass it, or a ctx that has ctx.type");
	return NULL;
}

/* ---- standalone: the context ---------------------------------------------------- */

struct fetch {
	const struct script_info *si;
	bool done, failed;
	char err[1024];
	char list[512];            /* "name rows, ..." for the note */
	double ms;
};

/* What a person at the console does about a database that is down. */
#define CONSOLE_DB_HINT \
	" (for the demo's database, start 'make run': the console reads its var/run/env when " \
	"DATABASE_URL is not set; or set DATABASE_URL)"

static void
on_fetched(void *arg, const struct ctx_result *r)
{
	struct fetch *f = arg;
	f->done = true;
	f->ms = r->ms;
	if (r->status == CTX_SCRIPT_ERROR) {
		f->failed = true;
		snprintf(f->err, sizeof f->err, "%s", r->message);
		return;
	}
	if (r->status != CTX_OK) {
		f->failed = true;
		snprintf(f->err, sizeof f->err, "query '%s' failed: %s%s%s%s%s", r->query->name,
		         r->message, r->sqlstate ? " (SQLSTATE " : "", r->sqlstate ? r->sqlstate : "",
		         r->sqlstate ? ")" : "", r->status == CTX_DB_UNAVAILABLE ? CONSOLE_DB_HINT : "");
		return;
	}
	size_t off = 0;
	for (int i = 0; i < r->nqueries && off < sizeof f->list; i++)
		off += (size_t)snprintf(f->list + off, sizeof f->list - off, "%s%s %d", i ? ", " : "",
		                        f->si->queries[i].name, r->rows[i]);
}

static bool
fetch_done(void *arg)
{
	return ((struct fetch *)arg)->done;
}

/* Every named query of s for the contact, through the same fan-out as the
 * pipeline (context.h), into a new run. NULL with err on failure or Ctrl-C. */
static script_run *
fetch_context(struct console *c, script *s, int64_t id, char *err, size_t errlen)
{
	struct fetch f = { .si = script_info(s) };
	char now[40];
	util_iso8601(util_wall_ms(), now, sizeof now);
	script_run *run = script_run_new(s, id, now);
	struct ctx_fetch *cf = ctx_fetch(c->d.db, s, run, id, on_fetched, &f);
	if (!cf)
		f.done = true;          /* no queries: the context is complete */
	else if (!console_wait(c, fetch_done, &f)) {
		ctx_cancel(cf);
		snprintf(err, errlen, "interrupted: the queries were cancelled");
		script_run_free(run);
		return NULL;
	}
	if (f.failed) {
		snprintf(err, errlen, "%s", f.err);
		script_run_free(run);
		return NULL;
	}
	note(c, "db %.1f ms, %d queries at once (rows: %s)", f.ms, f.si->nqueries,
	     f.si->nqueries ? f.list : "none");
	return run;
}

/* A run whose ctx is the given JSON (a ctx table the user may have edited). */
static script_run *
run_with_ctx(script *s, const json_t *ctx, char *err, size_t errlen)
{
	json_t *id = json_object_get(ctx, "contact_id");
	json_t *now = json_object_get(ctx, "now");
	char nowbuf[40];
	util_iso8601(util_wall_ms(), nowbuf, sizeof nowbuf);
	script_run *run = script_run_new(s, json_is_integer(id) ? json_integer_value(id) : 0,
	                                 json_is_string(now) ? json_string_value(now) : nowbuf);
	if (!script_run_set_ctx_json(run, ctx, err, errlen)) {
		script_run_free(run);
		return NULL;
	}
	return run;
}

/* The table at arg as a run's ctx. NULL with err. */
static script_run *
run_from_table(lua_State *L, int arg, script *s, char *err, size_t errlen)
{
	char jerr[256];
	json_t *ctx = luajson_from_lua(L, arg, NULL, jerr, sizeof jerr);
	if (!ctx) {
		snprintf(err, errlen, "the ctx is not JSON-like: %s", jerr);
		return NULL;
	}
	script_run *run = run_with_ctx(s, ctx, err, errlen);
	json_decref(ctx);
	return run;
}

static int
l_context(lua_State *L)
{
	struct console *c = console_cur;
	int64_t id = console_check_contact(L, 1);
	script *s = check_script(L, luaL_checkstring(L, 2));
	char err[1024];
	script_run *run = fetch_context(c, s, id, err, sizeof err);
	if (!run)
		return luaL_error(L, "%s", err);
	if (script_run_contact_missing(run))
		note(c, "contact %lld not found: the API answers 404 contact_not_found and calls "
		     "no model", (long long)id);
	json_t *ctx = script_run_ctx_json(run, err, sizeof err);
	script_run_free(run);
	if (!ctx)
		return luaL_error(L, "%s", err);
	luajson_push_owned(L, ctx);
	return 1;
}

static int
l_messages(lua_State *L)
{
	struct console *c = console_cur;
	lua_settop(L, 2);
	const char *type = type_arg(L, 2, 1);
	script *s = check_script(L, type);
	char err[1024];
	script_run *run;
	if (lua_type(L, 1) == LUA_TNUMBER) {
		int64_t id = console_check_contact(L, 1);
		run = fetch_context(c, s, id, err, sizeof err);
		if (run && script_run_contact_missing(run)) {
			snprintf(err, sizeof err, "contact %lld not found (the API answers 404 "
			         "contact_not_found)", (long long)id);
			script_run_free(run);
			run = NULL;
		}
	} else {
		luaL_checktype(L, 1, LUA_TTABLE);
		run = run_from_table(L, 1, s, err, sizeof err);
	}
	if (!run)
		return luaL_error(L, "%s", err);
	double t0 = util_now_ms();
	json_t *req = script_run_request(run, err, sizeof err);
	double ms = util_now_ms() - t0;
	script_run_free(run);
	if (!req)
		return luaL_error(L, "%s", err);
	note(c, "prompt(ctx) %.1f ms: %zu messages for %s", ms,
	     json_array_size(json_object_get(req, "messages")),
	     json_string_value(json_object_get(req, "model")));
	luajson_push_owned(L, req);
	return 1;
}

/* reply (the table chat() returned, or the text) and ctx → post(). */
static int
l_post(lua_State *L)
{
	struct console *c = console_cur;
	lua_settop(L, 3);
	const char *text, *finish = NULL, *model = NULL;
	if (lua_type(L, 1) == LUA_TSTRING) {
		text = lua_tostring(L, 1);
	} else {
		luaL_checktype(L, 1, LUA_TTABLE);
		if (lua_getfield(L, 1, "text") != LUA_TSTRING)
			return luaL_error(L, "reply.text must be a string (pass what chat() returned)");
		text = lua_tostring(L, -1);
		if (lua_getfield(L, 1, "finish_reason") == LUA_TSTRING)
			finish = lua_tostring(L, -1);
		if (lua_getfield(L, 1, "model") == LUA_TSTRING)
			model = lua_tostring(L, -1);
	}
	luaL_checktype(L, 2, LUA_TTABLE);
	script *s = check_script(L, type_arg(L, 3, 2));
	char err[1024];
	script_run *run = run_from_table(L, 2, s, err, sizeof err);
	if (!run)
		return luaL_error(L, "%s", err);
	double t0 = util_now_ms();
	json_t *res = script_run_post(run, text, finish, model, err, sizeof err);
	double ms = util_now_ms() - t0;
	script_run_free(run);
	if (!res)
		return luaL_error(L, "%s", err);
	note(c, "post(reply, ctx) %.1f ms", ms);
	luajson_push_owned(L, res);
	return 1;
}

static int
l_fallback(lua_State *L)
{
	struct console *c = console_cur;
	lua_settop(L, 2);
	luaL_checktype(L, 1, LUA_TTABLE);
	script *s = check_script(L, type_arg(L, 2, 1));
	if (!script_info(s)->has_fallback)
		return luaL_error(L, "script %s has no fallback(ctx)", script_info(s)->name);
	char err[1024];
	script_run *run = run_from_table(L, 1, s, err, sizeof err);
	if (!run)
		return luaL_error(L, "%s", err);
	double t0 = util_now_ms();
	json_t *res = script_run_fallback(run, err, sizeof err);
	double ms = util_now_ms() - t0;
	script_run_free(run);
	if (!res)
		return luaL_error(L, "%s", err);
	note(c, "fallback(ctx) %.1f ms", ms);
	luajson_push_owned(L, res);
	return 1;
}

/* ---- standalone: the model ------------------------------------------------------ */

struct chat_job {
	struct console *c;
	llm_call *call;
	bool done;
	enum llm_status status;
	long http_status, prompt_tokens, completion_tokens;
	int attempts;
	double ms;
	char *content, *finish_reason, *model, *refusal, *error, *request_id;
};

static char *
dup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

static void
on_chat_delta(void *arg, const char *text, size_t len)
{
	struct chat_job *j = arg;
	console_print_stream(j->c, text, len);
}

/* res lives only during the callback: copy it. */
static void
on_chat_done(void *arg, const struct llm_result *res)
{
	struct chat_job *j = arg;
	j->call = NULL;
	j->done = true;
	j->status = res->status;
	j->http_status = res->http_status;
	j->prompt_tokens = res->prompt_tokens;
	j->completion_tokens = res->completion_tokens;
	j->attempts = res->attempts;
	j->ms = res->elapsed_ms;
	j->content = xstrdup(res->content ? res->content : "");
	j->finish_reason = dup_or_null(res->finish_reason);
	j->model = dup_or_null(res->model);
	j->refusal = dup_or_null(res->refusal);
	j->error = dup_or_null(res->error_message);
	j->request_id = dup_or_null(res->request_id);
}

static bool
chat_done(void *arg)
{
	return ((struct chat_job *)arg)->done;
}

static void
chat_job_free(struct chat_job *j)
{
	free(j->content);
	free(j->finish_reason);
	free(j->model);
	free(j->refusal);
	free(j->error);
	free(j->request_id);
}

/* {text, data, finish_reason, model, usage, ms, attempts, request_id}. */
static json_t *
chat_result(const struct chat_job *j)
{
	json_t *o = json_object();
	json_object_set_new(o, "text", json_string(j->content));
	json_t *data = json_loads(j->content, JSON_DECODE_ANY, NULL);
	if (json_is_object(data) || json_is_array(data))
		json_object_set_new(o, "data", data);
	else
		json_decref(data);
	if (j->finish_reason)
		json_object_set_new(o, "finish_reason", json_string(j->finish_reason));
	if (j->model)
		json_object_set_new(o, "model", json_string(j->model));
	if (j->refusal)
		json_object_set_new(o, "refusal", json_string(j->refusal));
	json_t *usage = json_object();
	if (j->prompt_tokens >= 0)
		json_object_set_new(usage, "prompt_tokens", json_integer(j->prompt_tokens));
	if (j->completion_tokens >= 0)
		json_object_set_new(usage, "completion_tokens", json_integer(j->completion_tokens));
	json_object_set_new(o, "usage", usage);
	json_object_set_new(o, "ms", json_real(j->ms));
	json_object_set_new(o, "attempts", json_integer(j->attempts));
	if (j->request_id)
		json_object_set_new(o, "request_id", json_string(j->request_id));
	return o;
}

/* The request as chat() takes it: the table messages() returned, or a bare
 * list of messages for the default model. NULL with err. */
static json_t *
chat_request(lua_State *L, struct console *c, char *err, size_t errlen)
{
	char jerr[256];
	json_t *req = luajson_from_lua(L, 1, NULL, jerr, sizeof jerr);
	if (!req) {
		snprintf(err, errlen, "the request is not JSON-like: %s", jerr);
		return NULL;
	}
	if (json_is_array(req))
		req = json_pack("{s:s,s:o}", "model", c->d.cfg->model, "messages", req);
	if (!json_is_object(req) || !json_is_array(json_object_get(req, "messages"))) {
		snprintf(err, errlen, "chat(request): request.messages must be a list (pass what "
		         "messages() returned)");
		json_decref(req);
		return NULL;
	}
	if (!json_object_get(req, "model"))
		json_object_set_new(req, "model", json_string(c->d.cfg->model));
	return req;
}

static int
l_chat(lua_State *L)
{
	struct console *c = console_cur;
	luaL_checktype(L, 1, LUA_TTABLE);
	char err[1024];
	json_t *req = chat_request(L, c, err, sizeof err);
	if (!req)
		return luaL_error(L, "%s", err);
	struct chat_job j = { .c = c };
	/* Serialised at once and not kept. */
	j.call = llm_chat(c->d.llm, req, c->d.cfg->llm_timeout_ms, on_chat_delta, on_chat_done, &j);
	json_decref(req);
	c->at_line_start = true;
	if (!console_wait(c, chat_done, &j)) {
		llm_cancel(j.call);
		console_end_stream(c);
		return luaL_error(L, "interrupted: the upstream call was cancelled");
	}
	console_end_stream(c);
	if (j.status != LLM_OK) {
		snprintf(err, sizeof err, "%s: %s (HTTP %ld, %d attempt%s, %.0f ms)",
		         llm_status_name(j.status), j.error ? j.error : "no message", j.http_status,
		         j.attempts, j.attempts == 1 ? "" : "s", j.ms);
		chat_job_free(&j);
		return luaL_error(L, "%s", err);
	}
	note(c, "llm %.1f ms, %d attempt%s, tokens %ld in / %ld out, finish %s, model %s", j.ms,
	     j.attempts, j.attempts == 1 ? "" : "s", j.prompt_tokens, j.completion_tokens,
	     j.finish_reason ? j.finish_reason : "?", j.model ? j.model : "?");
	json_t *out = chat_result(&j);
	chat_job_free(&j);
	luajson_push_owned(L, out);
	return 1;
}

/* ---- standalone: the whole pipeline --------------------------------------------- */

struct analyze_job {
	struct console *c;
	bool done;
	int status;
	char *body, *message;
	size_t body_len;
	char code[64], cache_status[16];
	double age_ms, remaining_ms, db_ms, script_ms, llm_ms, total_ms;
	long prompt_tokens, completion_tokens;
};

static void
on_analyze_reply(void *arg, const struct analysis_reply *r)
{
	struct analyze_job *j = arg;
	j->done = true;
	j->status = r->status;
	snprintf(j->cache_status, sizeof j->cache_status, "%s",
	         r->cache_status ? r->cache_status : "?");
	if (r->status == 200) {
		j->body = xstrndup(r->body, r->body_len);
		j->body_len = r->body_len;
	} else {
		snprintf(j->code, sizeof j->code, "%s", r->error_code ? r->error_code : "error");
		j->message = xasprintf("%s%s", r->error_message ? r->error_message : "",
		                       r->status == 503 && r->error_code &&
		                       strcmp(r->error_code, "database_unavailable") == 0
		                       ? CONSOLE_DB_HINT : "");
	}
	j->age_ms = r->age_ms;
	j->remaining_ms = r->remaining_ms;
	j->db_ms = r->db_ms;
	j->script_ms = r->script_ms;
	j->llm_ms = r->llm_ms;
	j->total_ms = r->total_ms;
	j->prompt_tokens = r->prompt_tokens;
	j->completion_tokens = r->completion_tokens;
}

static void
on_analyze_delta(void *arg, const char *text, size_t len)
{
	struct analyze_job *j = arg;
	console_print_stream(j->c, text, len);
}

static bool
analyze_done(void *arg)
{
	return ((struct analyze_job *)arg)->done;
}

static int
l_analyze(lua_State *L)
{
	struct console *c = console_cur;
	int64_t id = console_check_contact(L, 1);
	const char *type = luaL_checkstring(L, 2);
	if (!lua_isnoneornil(L, 3))
		luaL_checktype(L, 3, LUA_TTABLE);
	bool use_cache = console_opt_bool(L, 3, "cache", true);
	bool stream = console_opt_bool(L, 3, "stream", true);
	struct analyze_job j = { .c = c };
	c->at_line_start = true;
	analysis_wait *w = analysis_get(c->d.analysis, id, type, use_cache ? 0 : ANALYSIS_REFRESH,
	                                on_analyze_reply, stream ? on_analyze_delta : NULL, &j);
	if (w && !console_wait(c, analyze_done, &j)) {
		analysis_wait_cancel(w);
		console_end_stream(c);
		/* The flight itself follows the server's orphan policy. */
		return luaL_error(L, "interrupted: stopped waiting for the analysis");
	}
	console_end_stream(c);
	char err[1200];
	if (j.status != 200) {
		snprintf(err, sizeof err, "%d %s: %s", j.status, j.code, j.message);
		free(j.message);
		return luaL_error(L, "%s", err);
	}
	if (strcmp(j.cache_status, "hit") == 0)
		note(c, "hit: age %.1f s, ttl left %.1f s, total %.2f ms", j.age_ms / 1000,
		     j.remaining_ms / 1000, j.total_ms);
	else
		note(c, "%s: db %.1f ms, script %.1f ms, llm %.1f ms, total %.1f ms, tokens %ld in "
		     "/ %ld out", j.cache_status, j.db_ms, j.script_ms, j.llm_ms, j.total_ms,
		     j.prompt_tokens, j.completion_tokens);
	json_t *doc = json_loadb(j.body, j.body_len, 0, NULL);
	free(j.body);
	if (!doc)
		return luaL_error(L, "the pipeline's document is not JSON");
	luajson_push_owned(L, doc);
	return 1;
}

/* ---- feedback ------------------------------------------------------------------------ */

struct fb_job {
	bool done;
	int status;
	char code[48];
	char message[640];
	json_t *doc;
};

static void
on_feedback(void *arg, const struct feedback_reply *r)
{
	struct fb_job *j = arg;
	j->done = true;
	j->status = r->status;
	snprintf(j->code, sizeof j->code, "%s", r->code ? r->code : "");
	snprintf(j->message, sizeof j->message, "%s", r->message ? r->message : "");
	j->doc = r->doc ? json_incref(r->doc) : NULL;
}

static bool
fb_done(void *arg)
{
	return ((struct fb_job *)arg)->done;
}

static bool
fb_settled(void *arg)
{
	return feedback_state_settled(arg);
}

/* feedback(type [, n]): as the admin socket's `feedback`, on this console's
 * own state connection, opened by the first call (it may still be
 * connecting: wait for it). */
static int
l_feedback(lua_State *L)
{
	struct console *c = console_cur;
	char *words[CONSOLE_MAX_WORDS];
	const struct command *r = lua_touserdata(L, lua_upvalueindex(1));
	int nw = console_words(L, r, words);
	int n;
	struct cmd_error e = { 0 };
	if (!cmd_arg_feedback(nw, words, &n, &e))
		return luaL_error(L, "%s: %s", e.code, e.message);
	feedback *fb = c->d.open_feedback ? c->d.open_feedback(c->d.open_arg) : NULL;
	if (!fb)
		return luaL_error(L, "feedback_unavailable: no state connection (check RAPPORT_STATE_URL)");
	if (!feedback_state_settled(fb) && !console_wait(c, fb_settled, fb))
		return luaL_error(L, "interrupted: stopped waiting for the state database");
	struct fb_job j = { 0 };
	struct feedback_reply now;
	feedback_op *op = feedback_latest(fb, words[0], n, on_feedback, &j, &now);
	if (!op)
		return luaL_error(L, "%s: %s", now.code, now.message);
	if (!console_wait(c, fb_done, &j)) {
		feedback_op_cancel(op);
		return luaL_error(L, "interrupted: the query was cancelled");
	}
	if (j.status != 200)
		return luaL_error(L, "%s: %s", j.code, j.message);
	luajson_push_owned(L, j.doc);
	return 1;
}

/* ---- the rows that run the same on the admin socket ------------------------------ */

/* A row of the command table with a run function (upvalue 1), on this
 * process's parts: types(), cache_list(42) … answer as the admin socket
 * does, errors included. */
int
console_local_run(lua_State *L)
{
	const struct command *r = lua_touserdata(L, lua_upvalueindex(1));
	struct console *c = console_cur;
	char *words[CONSOLE_MAX_WORDS];
	int n = console_words(L, r, words);
	struct cmd_parts p = {
		.scripts = c->d.scripts, .cache = c->d.cache, .analysis = c->d.analysis,
		.db = c->d.db, .llm = c->d.llm, .limiter = c->d.limiter, .breaker = c->d.breaker,
		.acct = c->d.acct, .who = "console",
	};
	struct cmd_error e = { 0 };
	json_t *result = r->run(&p, n, words, &e);
	if (!result)
		return luaL_error(L, "%s: %s", e.code, e.message);
	luajson_push_owned(L, result);
	return 1;
}

/* The standalone console's own functions for rows without a run. */
const struct console_handler console_local_handlers[] = {
	{ "context", l_context },
	{ "messages", l_messages },
	{ "chat", l_chat },
	{ "post", l_post },
	{ "fallback", l_fallback },
	{ "analyze", l_analyze },
	{ "feedback", l_feedback },
	{ NULL, NULL },
};
