/*
 * console — the REPL: its own Lua state, line input, the event-loop waits
 * and the functions that reach the server's parts.
 *
 * Data flow, standalone (the subsystems main built, in this process):
 *   context(id, type)  script_run_new, ctx_fetch (the pipeline's fan-out,
 *                      context.h), then the ctx as JSON
 *   messages(ctx)      JSON → script_run_set_ctx_json → script_run_request
 *   chat(request)      llm_chat, streamed: the text is printed as it comes
 *   post(reply, ctx)   script_run_post;  analyze(id, type) analysis_get
 * Values cross between a script's lua_State and the console's as JSON
 * (jansson), never as shared Lua values: the console's state is the
 * user's to play with, the script's stays sandboxed and budgeted.
 * Attached, the functions send admin commands (admin.h) over the unix
 * socket and return the reply's result.
 *
 * A function starts its work, then runs the loop (console_wait) until the
 * work is done or a signal comes; Ctrl-C cancels the work (queries,
 * upstream call, pipeline waiter, admin request) and raises "interrupted".
 * No C allocation lives across a Lua error: the work is done and freed in
 * C, and only then is a result pushed (luajson_push_owned) or an error
 * raised.
 *
 * The Lua state has the standard libraries minus whatever could read the
 * OpenAI key or a file holding it (io, os.getenv/execute, package, debug,
 * loadfile, dofile), and load() only for text.
 *
 * Input: on a terminal, readline's callback interface driven by the same
 * loop, so Ctrl-C clears the line and background work (a flight left by an
 * interrupted analyze) goes on at the prompt; history in ~/.rapport_history.
 * Otherwise plain lines and no prompt. A chunk continues while incomplete
 * (its load error ends in "<eof>", as in lua.c); "=expr" and bare
 * expressions print their values.
 */
#include "console.h"
#include "context.h"
#include "admin.h"
#include "log.h"
#include "luajson.h"
#include "util.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <lua-cjson.h>
#include <lualib.h>
#include <readline/history.h>
#include <readline/readline.h>

#define MAX_QUERIES   32
#define HISTORY_MAX   1000
#define LIST_MAX      1000
#define MAX_WORDS     4         /* arguments of an admin command */
#define PROMPT        "rapport> "
#define PROMPT_ATT    "rapport(attached)> "
#define PROMPT_MORE   ">> "

enum input { IN_LINE, IN_EOF, IN_INTERRUPT };
enum eval { EVAL_OK, EVAL_INCOMPLETE, EVAL_FAILED };

struct console {
	struct console_deps d;
	lua_State *L;
	bool attached;
	const char *sock_path;
	struct bufferevent *conn;     /* attached: the admin connection, or NULL */
	bool conn_dead;
	bool tty;
	struct event *sig_ev[3];      /* SIGINT, SIGTERM, SIGHUP: in waits, at the prompt */
	struct event *winch_ev, *stdin_ev;
	bool at_prompt;
	bool interrupted;             /* a signal ended the current wait */
	bool quit;                    /* quit(), SIGTERM or SIGHUP: the session ends */
	int exit_code;
	int failures;                 /* chunks that raised */
	bool at_line_start;           /* stdout ends with a newline */
	bool rl_done;                 /* readline callback → read_tty */
	enum input rl_result;
	char *rl_line;
	char *history;
};

/* The one console of the process: signal handlers and readline's
 * callbacks take no argument (lua.c keeps its globalL for the same
 * reason). */
static struct console *C;
/* Set by the plain handler: Lua code is running (so a hook can stop
 * it), a SIGINT came outside the loop (the next wait stops at once), a
 * SIGTERM or SIGHUP came (the session ends). */
static volatile sig_atomic_t lua_running, pending_int, quit_signal;
static const int session_signals[3] = { SIGINT, SIGTERM, SIGHUP };
static struct sigaction saved_actions[3];

/* ---- output ------------------------------------------------------------------ */

static void
print_stream(struct console *c, const char *text, size_t len)
{
	if (!len)
		return;
	fwrite(text, 1, len, stdout);
	fflush(stdout);
	c->at_line_start = text[len - 1] == '\n';
}

/* A note after streamed text starts on its own line. */
static void
end_stream(struct console *c)
{
	if (!c->at_line_start)
		fputc('\n', stdout);
	c->at_line_start = true;
}

/* "-- …" lines: timings and remarks, a Lua comment if pasted back. */
static void note(struct console *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
note(struct console *c, const char *fmt, ...)
{
	va_list ap;
	end_stream(c);
	fputs("-- ", stdout);
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
}

static void
report(struct console *c, const char *msg)
{
	end_stream(c);
	fflush(stdout);
	fprintf(stderr, "%s\n", msg);
	fflush(stderr);
}

/* ---- signals and waits -------------------------------------------------------- */

static void
on_lua_stop(lua_State *L, lua_Debug *ar)
{
	lua_sethook(L, NULL, 0, 0);
	luaL_error(L, "interrupted");
}

/* Outside the loop (Lua code running, C work between waits, a blocking
 * read of piped input): stop the Lua code at its next instruction, as
 * lua.c does, and remember it for a wait about to start. */
static void
on_signal_direct(int sig)
{
	if (sig == SIGINT)
		pending_int = 1;
	else
		quit_signal = 1;
	if (lua_running)
		lua_sethook(C->L, on_lua_stop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void
prompt_drop(struct console *c, enum input why)
{
	/* What was typed goes, as in a shell. */
	rl_free_line_state();
	rl_callback_sigcleanup();
	rl_replace_line("", 0);
	rl_callback_handler_remove();
	fputc('\n', stdout);
	fflush(stdout);
	c->rl_result = why;
	c->rl_done = true;
}

/* While the loop runs (a wait, the terminal prompt) signals come here. */
static void
on_signal_loop(evutil_socket_t sig, short what, void *arg)
{
	struct console *c = arg;
	if (sig != SIGINT)
		c->quit = true;
	if (c->at_prompt)
		prompt_drop(c, sig == SIGINT ? IN_INTERRUPT : IN_EOF);
	else
		c->interrupted = true;
	event_base_loopbreak(c->d.base);
}

/* libevent saves the handler in place (on_signal_direct) when a signal
 * event is added and puts it back when the last one is deleted. */
static void
signals_on(struct console *c)
{
	for (int i = 0; i < 3; i++)
		event_add(c->sig_ev[i], NULL);
}

static void
signals_off(struct console *c)
{
	for (int i = 0; i < 3; i++)
		event_del(c->sig_ev[i]);
}

/* Runs the loop until done(arg) or a signal. Returns done(arg): false
 * means interrupted, and the caller cancels its work. */
static bool
console_wait(struct console *c, bool (*done)(void *), void *arg)
{
	c->interrupted = pending_int || quit_signal;
	pending_int = 0;
	signals_on(c);
	while (!done(arg) && !c->interrupted)
		if (event_base_loop(c->d.base, EVLOOP_ONCE) < 0)
			break;
	signals_off(c);
	return done(arg);
}

/* ---- argument helpers (they may raise: call them before allocating) ------------ */

static int64_t
check_contact(lua_State *L, int arg)
{
	lua_Integer id = luaL_checkinteger(L, arg);
	luaL_argcheck(L, id > 0, arg, "a contact id is a positive integer");
	return (int64_t)id;
}

static script *
check_script(lua_State *L, const char *type)
{
	script *s = script_registry_get(C->d.scripts, type);
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
		snprintf(f->err, sizeof f->err, "query '%s' failed: %s%s%s%s", r->query->name,
		         r->message, r->sqlstate ? " (SQLSTATE " : "", r->sqlstate ? r->sqlstate : "",
		         r->sqlstate ? ")" : "");
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
	struct console *c = C;
	int64_t id = check_contact(L, 1);
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
	struct console *c = C;
	lua_settop(L, 2);
	const char *type = type_arg(L, 2, 1);
	script *s = check_script(L, type);
	char err[1024];
	script_run *run;
	if (lua_type(L, 1) == LUA_TNUMBER) {
		int64_t id = check_contact(L, 1);
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
	struct console *c = C;
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
	struct console *c = C;
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
	print_stream(j->c, text, len);
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
	struct console *c = C;
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
		end_stream(c);
		return luaL_error(L, "interrupted: the upstream call was cancelled");
	}
	end_stream(c);
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
		j->message = xstrdup(r->error_message ? r->error_message : "");
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
	print_stream(j->c, text, len);
}

static bool
analyze_done(void *arg)
{
	return ((struct analyze_job *)arg)->done;
}

static bool
opt_bool(lua_State *L, int arg, const char *name, bool dflt)
{
	if (lua_type(L, arg) != LUA_TTABLE)
		return dflt;
	int t = lua_getfield(L, arg, name);
	bool v = t == LUA_TNIL ? dflt : lua_toboolean(L, -1);
	lua_pop(L, 1);
	return v;
}

static int
l_analyze(lua_State *L)
{
	struct console *c = C;
	int64_t id = check_contact(L, 1);
	const char *type = luaL_checkstring(L, 2);
	if (!lua_isnoneornil(L, 3))
		luaL_checktype(L, 3, LUA_TTABLE);
	bool use_cache = opt_bool(L, 3, "cache", true);
	bool stream = opt_bool(L, 3, "stream", true);
	struct analyze_job j = { .c = c };
	c->at_line_start = true;
	analysis_wait *w = analysis_get(c->d.analysis, id, type, use_cache ? 0 : ANALYSIS_REFRESH,
	                                on_analyze_reply, stream ? on_analyze_delta : NULL, &j);
	if (w && !console_wait(c, analyze_done, &j)) {
		analysis_wait_cancel(w);
		end_stream(c);
		/* The flight itself follows the server's orphan policy. */
		return luaL_error(L, "interrupted: stopped waiting for the analysis");
	}
	end_stream(c);
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

/* ---- standalone: scripts and this process's cache ------------------------------------ */

static int
l_types(lua_State *L)
{
	luajson_push_owned(L, admin_types_json(C->d.scripts));
	return 1;
}

static int
l_errors(lua_State *L)
{
	luajson_push_owned(L, admin_errors_json(C->d.scripts));
	return 1;
}

static int
l_reload(lua_State *L)
{
	luajson_push_owned(L, admin_reload(C->d.scripts, "console"));
	return 1;
}

static int
l_cache_list(lua_State *L)
{
	int64_t id = lua_isnoneornil(L, 1) ? 0 : check_contact(L, 1);
	luajson_push_owned(L, admin_cache_json(C->d.cache, id, LIST_MAX));
	return 1;
}

static int
l_cache_drop(lua_State *L)
{
	int64_t id = check_contact(L, 1);
	const char *type = luaL_optstring(L, 2, NULL);
	int n = cache_drop_contact(C->d.cache, id, type);
	analysis_contact_changed(C->d.analysis, id);
	lua_createtable(L, 0, 2);
	lua_pushinteger(L, (lua_Integer)id);
	lua_setfield(L, -2, "contact_id");
	lua_pushinteger(L, n);
	lua_setfield(L, -2, "dropped");
	return 1;
}

static int
l_cache_clear(lua_State *L)
{
	struct cache_stats st;
	cache_stats(C->d.cache, &st);
	cache_clear(C->d.cache);
	analysis_contact_changed(C->d.analysis, -1);
	lua_createtable(L, 0, 1);
	lua_pushinteger(L, st.entries);
	lua_setfield(L, -2, "dropped");
	return 1;
}

/* ---- attached: the admin socket ------------------------------------------------------ */

static void
on_conn_event(struct bufferevent *bev, short what, void *arg)
{
	struct console *c = arg;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		c->conn_dead = true;
}

static void
conn_close(struct console *c)
{
	if (c->conn)
		bufferevent_free(c->conn);
	c->conn = NULL;
	c->conn_dead = false;
}

static bool
conn_open(struct console *c, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(c->sock_path) >= sizeof sa.sun_path) {
		snprintf(err, errlen, "socket path too long: %s", c->sock_path);
		return false;
	}
	memcpy(sa.sun_path, c->sock_path, strlen(c->sock_path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		snprintf(err, errlen, "cannot connect to %s: %s (is `rapport serve` running with the "
		         "same RAPPORT_LISTEN or RAPPORT_ADMIN_SOCKET?)", c->sock_path, strerror(e));
		return false;
	}
	evutil_make_socket_nonblocking(fd);
	c->conn = bufferevent_socket_new(c->d.base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(c->conn, NULL, NULL, on_conn_event, c);
	bufferevent_enable(c->conn, EV_READ | EV_WRITE);
	c->conn_dead = false;
	return true;
}

static bool
reply_ready(void *arg)
{
	struct console *c = arg;
	struct evbuffer *in = bufferevent_get_input(c->conn);
	return c->conn_dead || evbuffer_search(in, "\n\n", 2, NULL).pos >= 0;
}

/* Sends one command line and waits for its reply: the reply text (without
 * the blank line, caller frees), or NULL with err. A connection closed by
 * the server (restart) is reopened on the next request. */
static char *
admin_request(struct console *c, const char *line, char *err, size_t errlen)
{
	if (c->conn && c->conn_dead)
		conn_close(c);
	if (!c->conn && !conn_open(c, err, errlen))
		return NULL;
	bufferevent_write(c->conn, line, strlen(line));
	bufferevent_write(c->conn, "\n", 1);
	if (!console_wait(c, reply_ready, c)) {
		/* The reply would arrive for the next request: start afresh. */
		conn_close(c);
		snprintf(err, errlen, "interrupted: stopped waiting for the server");
		return NULL;
	}
	struct evbuffer *in = bufferevent_get_input(c->conn);
	ev_ssize_t pos = evbuffer_search(in, "\n\n", 2, NULL).pos;
	if (pos < 0) {
		conn_close(c);
		snprintf(err, errlen, "the server closed the connection");
		return NULL;
	}
	char *text = xmalloc((size_t)pos + 1);
	evbuffer_remove(in, text, (size_t)pos);
	text[pos] = '\0';
	evbuffer_drain(in, 2);
	return text;
}

/* Parses a reply; on ok:false fills err with "code: message". */
static json_t *
admin_reply_doc(const char *text, char *err, size_t errlen)
{
	json_t *doc = json_loads(text, 0, NULL);
	if (!json_is_object(doc)) {
		json_decref(doc);
		snprintf(err, errlen, "the server's reply is not a JSON object");
		return NULL;
	}
	return doc;
}

/* Pushes reply.result, or raises with reply.error. */
static int
push_admin_result(lua_State *L, struct console *c, const char *line)
{
	char err[1024];
	char *text = admin_request(c, line, err, sizeof err);
	json_t *doc = text ? admin_reply_doc(text, err, sizeof err) : NULL;
	free(text);
	if (!doc)
		return luaL_error(L, "%s", err);
	if (!json_is_true(json_object_get(doc, "ok"))) {
		json_t *e = json_object_get(doc, "error");
		snprintf(err, sizeof err, "%s: %s", json_string_value(json_object_get(e, "code")),
		         json_string_value(json_object_get(e, "message")));
		json_decref(doc);
		return luaL_error(L, "%s", err);
	}
	json_t *result = json_incref(json_object_get(doc, "result"));
	json_decref(doc);
	luajson_push_owned(L, result ? result : json_null());
	return 1;
}

/* One admin word from a Lua argument: an integer or a plain word. */
static const char *
admin_word(lua_State *L, int arg)
{
	if (lua_type(L, arg) == LUA_TNUMBER)
		return lua_pushfstring(L, "%I", (LUAI_UACINT)luaL_checkinteger(L, arg));
	const char *w = luaL_checkstring(L, arg);
	luaL_argcheck(L, *w && !w[strcspn(w, " \t\r\n")], arg, "one word expected");
	return w;
}

/* The command in upvalue 1, with the arguments appended as words. */
static int
l_admin_command(lua_State *L)
{
	int n = lua_gettop(L);
	luaL_Buffer b;
	const char *words[MAX_WORDS];
	luaL_argcheck(L, n <= MAX_WORDS, MAX_WORDS + 1, "too many arguments");
	for (int i = 1; i <= n; i++)
		words[i - 1] = admin_word(L, i);
	luaL_buffinit(L, &b);
	luaL_addstring(&b, lua_tostring(L, lua_upvalueindex(1)));
	for (int i = 0; i < n; i++) {
		luaL_addchar(&b, ' ');
		luaL_addstring(&b, words[i]);
	}
	luaL_pushresult(&b);
	return push_admin_result(L, C, lua_tostring(L, -1));
}

static int
l_att_analyze(lua_State *L)
{
	int64_t id = check_contact(L, 1);
	const char *type = admin_word(L, 2);
	if (!lua_isnoneornil(L, 3))
		luaL_checktype(L, 3, LUA_TTABLE);
	bool use_cache = opt_bool(L, 3, "cache", true);
	const char *line = lua_pushfstring(L, "analyze %I %s%s", (LUAI_UACINT)id, type,
	                                   use_cache ? "" : " refresh");
	return push_admin_result(L, C, line);
}

/* admin("cache list 42") → the whole reply {ok, result | error}. */
static int
l_admin(lua_State *L)
{
	const char *line = luaL_checkstring(L, 1);
	luaL_argcheck(L, !strchr(line, '\n'), 1, "one line expected");
	char err[1024];
	char *text = admin_request(C, line, err, sizeof err);
	json_t *doc = text ? admin_reply_doc(text, err, sizeof err) : NULL;
	free(text);
	if (!doc)
		return luaL_error(L, "%s", err);
	luajson_push_owned(L, doc);
	return 1;
}

/* ":cache list" at the prompt: the reply as the server wrote it. */
static void
raw_command(struct console *c, const char *line)
{
	char err[1024];
	char *text = admin_request(c, line, err, sizeof err);
	if (!text) {
		report(c, err);
		c->failures++;
		return;
	}
	puts(text);
	fflush(stdout);
	free(text);
}

/* ---- both modes ---------------------------------------------------------------- */

static int
l_now_ms(lua_State *L)
{
	lua_pushnumber(L, util_now_ms());
	return 1;
}

/* The error object quit() raises: it unwinds the chunk at once and the
 * REPL ends without reporting it. */
static char quit_sentinel;

static bool
is_quit(lua_State *L)
{
	return lua_touserdata(L, -1) == &quit_sentinel;
}

static int
l_quit(lua_State *L)
{
	C->exit_code = (int)luaL_optinteger(L, 1, 0);
	C->quit = true;
	lua_pushlightuserdata(L, &quit_sentinel);
	return lua_error(L);
}

/* load() for text chunks only: bytecode can break the VM. */
static int
l_load_text(lua_State *L)
{
	int n = lua_gettop(L);
	lua_settop(L, 4);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_pushvalue(L, 1);
	lua_pushvalue(L, 2);
	lua_pushliteral(L, "t");
	if (n >= 4)
		lua_pushvalue(L, 4);     /* an explicit nil env stays explicit */
	lua_call(L, n >= 4 ? 4 : 3, LUA_MULTRET);
	return lua_gettop(L) - 4;
}

struct fn {
	const char *name;
	lua_CFunction fn;          /* NULL: defined by the prelude */
	const char *command;       /* attached: the admin command it sends */
	const char *usage, *does;
};

static int l_help(lua_State *L);

static const struct fn standalone_fns[] = {
	{ "types", l_types, NULL, "types()", "the analysis types: version, model, ttl, queries, load error" },
	{ "context", l_context, NULL, "ctx = context(id, type)",
	  "run the type's named queries (all at once) → the ctx table; prints db time and rows" },
	{ "messages", l_messages, NULL, "req = messages(ctx | id [, type])",
	  "the exact chat request prompt(ctx) builds: model, messages, response_format …" },
	{ "chat", l_chat, NULL, "reply = chat(req)",
	  "send it upstream, printing the text as it streams → {text, data, finish_reason, model, usage, ms}" },
	{ "post", l_post, NULL, "result = post(reply, ctx [, type])", "the script's post(reply, ctx) → the result" },
	{ "fallback", l_fallback, NULL, "fallback(ctx [, type])",
	  "the script's fallback(ctx): the result served when the model is down" },
	{ "analyze", l_analyze, NULL, "analyze(id, type [, {cache = false, stream = false}])",
	  "the whole pipeline (cache first unless cache = false) → the API's JSON document" },
	{ "cache_list", l_cache_list, NULL, "cache_list([id])",
	  "this console's cache (analyze() fills it): key, type, age, ttl left, bytes" },
	{ "cache_drop", l_cache_drop, NULL, "cache_drop(id [, type])", "drop a contact's cached analyses" },
	{ "cache_clear", l_cache_clear, NULL, "cache_clear()", "drop every cached analysis" },
	{ "reload", l_reload, NULL, "reload()", "recompile scripts/ and prompts/ now" },
	{ "errors", l_errors, NULL, "errors()", "script load errors (file:line)" },
	{ "time", NULL, NULL, "time(fn, ...)", "call fn(...), print how long it took, return its results" },
	{ "pp", NULL, NULL, "pp(value)", "the pretty-printed text of a value (what the prompt prints)" },
	{ "now_ms", l_now_ms, NULL, "now_ms()", "a monotonic clock in milliseconds" },
	{ "help", l_help, NULL, "help()", "this list" },
	{ "quit", l_quit, NULL, "quit([status])", "leave now (so does Ctrl-D)" },
	{ NULL, NULL, NULL, NULL, NULL },
};

static const struct fn attached_fns[] = {
	{ "types", l_admin_command, "types", "types()", "the server's analysis types, load errors included" },
	{ "errors", l_admin_command, "errors", "errors()", "script load errors (file:line)" },
	{ "reload", l_admin_command, "reload", "reload()", "recompile every script on the server now" },
	{ "metrics", l_admin_command, "metrics", "metrics()", "the counters of GET /metrics" },
	{ "status", l_admin_command, "status", "status()", "database, upstream, cache and flights now" },
	{ "cache_list", l_admin_command, "cache list", "cache_list([id])",
	  "the server's cached analyses: key, type, age, ttl left, bytes" },
	{ "cache_drop", l_admin_command, "cache drop", "cache_drop(id [, type])",
	  "drop a contact's cached analyses on the server" },
	{ "cache_clear", l_admin_command, "cache clear", "cache_clear()", "drop every cached analysis" },
	{ "analyze", l_att_analyze, NULL, "analyze(id, type [, {cache = false}])",
	  "run the server's pipeline → the API's JSON document" },
	{ "admin", l_admin, NULL, "admin(line)", "send one admin command → the whole reply {ok, result | error}" },
	{ "time", NULL, NULL, "time(fn, ...)", "call fn(...), print how long it took, return its results" },
	{ "pp", NULL, NULL, "pp(value)", "the pretty-printed text of a value (what the prompt prints)" },
	{ "now_ms", l_now_ms, NULL, "now_ms()", "a monotonic clock in milliseconds" },
	{ "help", l_help, NULL, "help()", "this list" },
	{ "quit", l_quit, NULL, "quit([status])", "leave now (so does Ctrl-D)" },
	{ NULL, NULL, NULL, NULL, NULL },
};

static int
l_help(lua_State *L)
{
	struct console *c = C;
	const struct fn *f = c->attached ? attached_fns : standalone_fns;
	printf("%s\n", c->attached ? "attached to a running server; functions:"
	                           : "standalone (this process's own pool, upstream client and cache); functions:");
	for (; f->name; f++)
		printf("  %-52s %s\n", f->usage, f->does);
	printf("%s",
	       "input: `=expr` or a bare expression prints its value; an unfinished chunk continues\n"
	       "on the next line (>>); Ctrl-C clears the line or stops a wait; Ctrl-D quits.\n");
	if (c->attached)
		printf("  :<command>  sends an admin command as is (`:help` lists them)\n");
	else
		printf("a session: ctx = context(42, \"relationship_health\"); req = messages(ctx);\n"
		       "           reply = chat(req); post(reply, ctx); analyze(42, \"relationship_health\")\n");
	fflush(stdout);
	return 0;
}

/* ---- the Lua state ---------------------------------------------------------------- */

/* The printer and time(), in Lua: pp() sorts keys, indents, shows json.null
 * as null and sequences as lists, marks cycles. Returns the printer the
 * REPL uses for results. */
static const char prelude[] =
	"local null, fmt, concat, sort, mtype = json.null, string.format, table.concat, table.sort, math.type\n"
	"local now_ms, pack, unpack = now_ms, table.pack, table.unpack\n"
	"local KEYWORDS = {}\n"
	"for w in ('and break do else elseif end false for function goto if in local nil not or '\n"
	"  .. 'repeat return then true until while'):gmatch('%a+') do KEYWORDS[w] = true end\n"
	"local NL = string.char(10)\n"
	"local function quote(s)\n"
	"  if s:find(NL, 1, true) and not s:gsub('%s', ' '):find('%c') then\n"
	"    local eq = ''\n"
	"    while (s .. ']'):find(']' .. eq .. ']', 1, true) do eq = eq .. '=' end\n"
	"    return '[' .. eq .. '[' .. NL .. s .. ']' .. eq .. ']'\n"
	"  end\n"
	"  return fmt('%q', s)\n"
	"end\n"
	"local function scalar(v)\n"
	"  if v == null then return 'null' end\n"
	"  if type(v) == 'string' then return quote(v) end\n"
	"  return tostring(v)\n"
	"end\n"
	"local function keyorder(a, b)\n"
	"  local ta, tb = type(a), type(b)\n"
	"  if ta ~= tb then\n"
	"    if ta == 'number' then return true elseif tb == 'number' then return false end\n"
	"    return ta < tb\n"
	"  end\n"
	"  if ta == 'number' or ta == 'string' then return a < b end\n"
	"  return tostring(a) < tostring(b)\n"
	"end\n"
	"local function seqlen(t)\n"
	"  local n = 0\n"
	"  for k in next, t do\n"
	"    if mtype(k) ~= 'integer' or k < 1 then return nil end\n"
	"    n = n + 1\n"
	"  end\n"
	"  for i = 1, n do if rawget(t, i) == nil then return nil end end\n"
	"  return n\n"
	"end\n"
	"local function dump(v, indent, path, out, depth)\n"
	"  if type(v) ~= 'table' then out[#out + 1] = scalar(v) return end\n"
	"  if path[v] then out[#out + 1] = '<cycle>' return end\n"
	"  if next(v) == nil then out[#out + 1] = '{}' return end\n"
	"  if depth >= 32 then out[#out + 1] = '{...}' return end\n"
	"  path[v] = true\n"
	"  local inner = indent .. '  '\n"
	"  local n = seqlen(v)\n"
	"  if n then\n"
	"    local parts = {}\n"
	"    for i = 1, n do\n"
	"      local e = rawget(v, i)\n"
	"      local s = type(e) ~= 'table' and scalar(e)\n"
	"      if not s or #s > 60 or s:find(NL, 1, true) or n > 16 then parts = nil break end\n"
	"      parts[i] = s\n"
	"    end\n"
	"    if parts then\n"
	"      out[#out + 1] = '{ ' .. concat(parts, ', ') .. ' }'\n"
	"    else\n"
	"      out[#out + 1] = '{' .. NL\n"
	"      for i = 1, n do\n"
	"        out[#out + 1] = inner\n"
	"        dump(rawget(v, i), inner, path, out, depth + 1)\n"
	"        out[#out + 1] = ',' .. NL\n"
	"      end\n"
	"      out[#out + 1] = indent .. '}'\n"
	"    end\n"
	"  else\n"
	"    local keys = {}\n"
	"    for k in next, v do keys[#keys + 1] = k end\n"
	"    sort(keys, keyorder)\n"
	"    out[#out + 1] = '{' .. NL\n"
	"    for _, k in ipairs(keys) do\n"
	"      local ks = k\n"
	"      if type(k) ~= 'string' or not k:match('^[%a_][%w_]*$') or KEYWORDS[k] then\n"
	"        ks = '[' .. scalar(k) .. ']'\n"
	"      end\n"
	"      out[#out + 1] = inner .. ks .. ' = '\n"
	"      dump(rawget(v, k), inner, path, out, depth + 1)\n"
	"      out[#out + 1] = ',' .. NL\n"
	"    end\n"
	"    out[#out + 1] = indent .. '}'\n"
	"  end\n"
	"  path[v] = nil\n"
	"end\n"
	"function pp(v)\n"
	"  local out = {}\n"
	"  dump(v, '', {}, out, 0)\n"
	"  return concat(out)\n"
	"end\n"
	"local pp = pp\n"
	"function time(fn, ...)\n"
	"  if type(fn) ~= 'function' then error('time(fn, ...): fn must be a function', 2) end\n"
	"  local t0 = now_ms()\n"
	"  local r = pack(fn(...))\n"
	"  print(fmt('-- %.1f ms', now_ms() - t0))\n"
	"  return unpack(r, 1, r.n)\n"
	"end\n"
	"return function(...)\n"
	"  for i = 1, select('#', ...) do print(pp((select(i, ...)))) end\n"
	"end\n";

static void
register_fns(lua_State *L, const struct fn *f)
{
	for (; f->name; f++) {
		if (!f->fn)
			continue;
		if (f->command) {
			lua_pushstring(L, f->command);
			lua_pushcclosure(L, f->fn, 1);
		} else {
			lua_pushcfunction(L, f->fn);
		}
		lua_setglobal(L, f->name);
	}
}

/* The standard libraries, then out with what could reach the key. */
static int
p_setup(lua_State *L)
{
	struct console *c = lua_touserdata(L, 1);
	luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
	luaL_requiref(L, LUA_COLIBNAME, luaopen_coroutine, 1);
	luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
	luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
	luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
	luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
	luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
	luaL_requiref(L, "cjson", luaopen_cjson, 1);
	int os = lua_gettop(L) - 1;
	lua_settop(L, os);
	lua_createtable(L, 0, 4);
	static const char *const os_fns[] = { "clock", "date", "difftime", "time", NULL };
	for (const char *const *n = os_fns; *n; n++) {
		lua_getfield(L, os, *n);
		lua_setfield(L, -2, *n);
	}
	lua_setglobal(L, "os");
	lua_pushnil(L);
	lua_setglobal(L, "dofile");
	lua_pushnil(L);
	lua_setglobal(L, "loadfile");
	lua_getglobal(L, "load");
	lua_pushcclosure(L, l_load_text, 1);
	lua_setglobal(L, "load");
	lua_getglobal(L, "string");
	lua_pushnil(L);
	lua_setfield(L, -2, "dump");
	luajson_open(L);
	lua_setglobal(L, "json");
	register_fns(L, c->attached ? attached_fns : standalone_fns);
	if (luaL_loadbuffer(L, prelude, sizeof prelude - 1, "=prelude") != LUA_OK)
		return lua_error(L);
	lua_call(L, 0, 1);
	lua_setfield(L, LUA_REGISTRYINDEX, "rapport.console.show");
	return 0;
}

static int
on_panic(lua_State *L)
{
	fprintf(stderr, "rapport console: unprotected Lua error: %s\n", lua_tostring(L, -1));
	abort();
}

static lua_State *
new_state(struct console *c)
{
	lua_State *L = luaL_newstate();
	if (!L)
		return NULL;
	lua_atpanic(L, on_panic);
	lua_pushcfunction(L, p_setup);
	lua_pushlightuserdata(L, c);
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		fprintf(stderr, "rapport console: %s\n", lua_tostring(L, -1));
		lua_close(L);
		return NULL;
	}
	return L;
}

/* ---- evaluation ------------------------------------------------------------------- */

static int
msghandler(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	if (lua_touserdata(L, 1) == &quit_sentinel)
		return 1;
	if (!msg) {
		if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
			return 1;
		msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	}
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/* lua_pcall with a traceback, interruptible by Ctrl-C. */
static int
docall(struct console *c, int narg, int nres)
{
	lua_State *L = c->L;
	int fn = lua_gettop(L) - narg;
	lua_pushcfunction(L, msghandler);
	lua_insert(L, fn);
	lua_running = 1;
	int st = lua_pcall(L, narg, nres, fn);
	lua_running = 0;
	lua_sethook(L, NULL, 0, 0);   /* a signal after the last instruction */
	lua_remove(L, fn);
	return st;
}

/* "=expr", then "return <chunk>;", then the chunk itself (lua.c's order). */
static int
load_chunk(lua_State *L, const char *chunk, const char *name)
{
	const char *code = lua_pushfstring(L, chunk[0] == '=' ? "return %s" : "return %s;",
	                                   chunk[0] == '=' ? chunk + 1 : chunk);
	int st = luaL_loadbuffer(L, code, strlen(code), name);
	lua_remove(L, -2);
	if (st == LUA_OK || chunk[0] == '=')
		return st;
	lua_pop(L, 1);
	return luaL_loadbuffer(L, chunk, strlen(chunk), name);
}

static bool
incomplete(lua_State *L, int st)
{
	size_t len;
	const char *msg = lua_tolstring(L, -1, &len);
	return st == LUA_ERRSYNTAX && msg && len >= 5 && strcmp(msg + len - 5, "<eof>") == 0;
}

static void
show_results(struct console *c, int base)
{
	lua_State *L = c->L;
	int n = lua_gettop(L) - base;
	if (n <= 0)
		return;
	lua_getfield(L, LUA_REGISTRYINDEX, "rapport.console.show");
	lua_insert(L, base + 1);
	end_stream(c);
	if (docall(c, n, 0) != LUA_OK && !is_quit(L)) {
		report(c, lua_tostring(L, -1));
		c->failures++;
	}
	fflush(stdout);
}

static enum eval
eval_chunk(struct console *c, const char *chunk, const char *name)
{
	lua_State *L = c->L;
	int base = lua_gettop(L);
	int st = load_chunk(L, chunk, name);
	if (incomplete(L, st)) {
		lua_settop(L, base);
		return EVAL_INCOMPLETE;
	}
	if (st == LUA_OK)
		st = docall(c, 0, LUA_MULTRET);
	if (st == LUA_OK) {
		show_results(c, base);
		lua_settop(L, base);
		return EVAL_OK;
	}
	if (is_quit(L)) {
		lua_settop(L, base);
		return EVAL_OK;
	}
	report(c, lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error)");
	c->failures++;
	lua_settop(L, base);
	return EVAL_FAILED;
}

static bool
run_file(struct console *c, const char *path)
{
	lua_State *L = c->L;
	int base = lua_gettop(L);
	int st = luaL_loadfilex(L, path, "t");
	if (st == LUA_OK)
		st = docall(c, 0, 0);
	bool ok = st == LUA_OK || is_quit(L);
	if (!ok) {
		report(c, lua_tostring(L, -1));
		c->failures++;
	}
	lua_settop(L, base);
	return ok;
}

/* ---- input -------------------------------------------------------------------------- */

static void
on_rl_line(char *line)
{
	C->rl_line = line;
	C->rl_result = line ? IN_LINE : IN_EOF;
	C->rl_done = true;
	rl_callback_handler_remove();
}

static void
on_stdin(evutil_socket_t fd, short what, void *arg)
{
	rl_callback_read_char();
}

static void
on_winch(evutil_socket_t fd, short what, void *arg)
{
	rl_resize_terminal();
}

static enum input
read_tty(struct console *c, const char *prompt, char **line)
{
	c->rl_done = false;
	c->rl_line = NULL;
	c->at_prompt = true;
	/* Ours before the prompt shows: a Ctrl-C typed as soon as it does
	 * must reach the loop. One that came earlier stopped what ran then. */
	signals_on(c);
	pending_int = 0;
	if (quit_signal) {
		signals_off(c);
		c->at_prompt = false;
		*line = NULL;
		return IN_EOF;
	}
	event_add(c->stdin_ev, NULL);
	event_add(c->winch_ev, NULL);
	rl_callback_handler_install(prompt, on_rl_line);
	while (!c->rl_done)
		if (event_base_loop(c->d.base, EVLOOP_ONCE) < 0) {
			prompt_drop(c, IN_EOF);
			break;
		}
	signals_off(c);
	event_del(c->winch_ev);
	event_del(c->stdin_ev);
	c->at_prompt = false;
	*line = c->rl_line;
	if (c->rl_result == IN_EOF && !c->quit)
		fputc('\n', stdout);
	return c->rl_result;
}

static enum input
read_plain(char **line)
{
	size_t cap = 0;
	char *buf = NULL;
	ssize_t n = getline(&buf, &cap, stdin);
	if (n < 0) {
		free(buf);
		return IN_EOF;
	}
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	*line = buf;
	return IN_LINE;
}

/* ---- completion of globals and their fields ------------------------------------------------ */

static char **comp;
static size_t ncomp, icomp;

static void
comp_reset(void)
{
	for (size_t i = icomp; i < ncomp; i++)
		free(comp[i]);
	free(comp);
	comp = NULL;
	ncomp = icomp = 0;
}

static int
p_complete(lua_State *L)
{
	const char *word = lua_touserdata(L, 1);
	const char *dot = strrchr(word, '.');
	lua_pushglobaltable(L);
	for (const char *p = word; dot && p < dot;) {
		const char *e = memchr(p, '.', (size_t)(dot - p) + 1);
		lua_pushlstring(L, p, (size_t)(e - p));
		lua_rawget(L, -2);
		if (!lua_istable(L, -1))
			return 0;
		p = e + 1;
	}
	const char *prefix = dot ? dot + 1 : word;
	size_t plen = strlen(prefix);
	int blen = (int)(prefix - word);
	lua_pushnil(L);
	while (lua_next(L, -2)) {
		if (lua_type(L, -2) == LUA_TSTRING && strncmp(lua_tostring(L, -2), prefix, plen) == 0) {
			comp = xrealloc(comp, (ncomp + 1) * sizeof *comp);
			comp[ncomp++] = xasprintf("%.*s%s", blen, word, lua_tostring(L, -2));
		}
		lua_pop(L, 1);
	}
	return 0;
}

/* readline's generator: state 0 collects, the next calls hand out (readline
 * frees what it gets). */
static char *
complete_next(const char *text, int state)
{
	if (state == 0) {
		comp_reset();
		lua_pushcfunction(C->L, p_complete);
		lua_pushlightuserdata(C->L, (void *)text);
		if (lua_pcall(C->L, 1, 0, 0) != LUA_OK)
			lua_pop(C->L, 1);
	}
	return icomp < ncomp ? comp[icomp++] : NULL;
}

static char **
on_complete(const char *text, int start, int end)
{
	rl_completion_append_character = '\0';
	rl_attempted_completion_over = 1;     /* no file names */
	return rl_completion_matches(text, complete_next);
}

static void
tty_start(struct console *c)
{
	rl_readline_name = "rapport";
	rl_catch_signals = 0;                 /* ours come through the loop */
	rl_catch_sigwinch = 0;
	rl_attempted_completion_function = on_complete;
	rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,)[]+-*/%^~#";
	c->stdin_ev = event_new(c->d.base, STDIN_FILENO, EV_READ | EV_PERSIST, on_stdin, c);
	c->winch_ev = evsignal_new(c->d.base, SIGWINCH, on_winch, c);
	using_history();
	stifle_history(HISTORY_MAX);
	/* A multi-line chunk is one entry: the timestamp lines mark where
	 * each entry starts in the file. */
	history_comment_char = '#';
	history_write_timestamps = 1;
	history_multiline_entries = 1;
	const char *home = getenv("HOME");
	if (home && *home) {
		c->history = xasprintf("%s/.rapport_history", home);
		read_history(c->history);
	}
}

static void
tty_stop(struct console *c)
{
	if (c->history) {
		if (write_history(c->history) != 0)
			fprintf(stderr, "rapport console: cannot write %s\n", c->history);
		free(c->history);
	}
	clear_history();
	comp_reset();
	if (c->stdin_ev)
		event_free(c->stdin_ev);
	if (c->winch_ev)
		event_free(c->winch_ev);
}

/* ---- the session -------------------------------------------------------------------- */

static bool
is_blank(const char *s)
{
	return s[strspn(s, " \t\r\n")] == '\0';
}

static void
repl(struct console *c)
{
	char *chunk = NULL;
	while (!c->quit && !quit_signal) {
		char *line = NULL;
		const char *prompt = chunk ? PROMPT_MORE : c->attached ? PROMPT_ATT : PROMPT;
		if (!c->tty)
			pending_int = 0;      /* what it would have stopped has ended */
		enum input in = c->tty ? read_tty(c, prompt, &line) : read_plain(&line);
		if (in == IN_EOF) {
			if (chunk && !c->tty) {
				report(c, "stdin: the last chunk is unfinished at the end of input");
				c->failures++;
			}
			break;
		}
		if (in == IN_INTERRUPT) {
			free(chunk);
			chunk = NULL;
			continue;
		}
		if (!chunk && is_blank(line)) {
			free(line);
			continue;
		}
		char *joined = chunk ? xasprintf("%s\n%s", chunk, line) : xstrdup(line);
		free(chunk);
		free(line);
		chunk = joined;
		if (chunk[0] == ':') {
			if (c->tty)
				add_history(chunk);
			if (c->attached)
				raw_command(c, chunk + 1);
			else {
				report(c, ":command lines need --attach (a running server)");
				c->failures++;
			}
		} else {
			if (eval_chunk(c, chunk, "=stdin") == EVAL_INCOMPLETE)
				continue;
			if (c->tty)
				add_history(chunk);
		}
		free(chunk);
		chunk = NULL;
	}
	free(chunk);
}

static void
banner(struct console *c)
{
	if (c->attached) {
		printf("rapport console, attached to %s\nhelp() lists the functions, :help the "
		       "server's commands; Ctrl-D quits.\n", c->sock_path);
		return;
	}
	int n = script_registry_count(c->d.scripts), failed = 0;
	for (int i = 0; i < n; i++) {
		const char *name, *error;
		script *s;
		script_registry_entry(c->d.scripts, i, &name, &s, &error);
		failed += error != NULL;
	}
	/* The key is never shown, only whether there is one. */
	printf("rapport console: %d analysis types (%d with load errors), upstream %s (key %s)\n"
	       "help() lists the functions; Ctrl-D quits.\n", n, failed, c->d.cfg->openai_base_url,
	       c->d.cfg->openai_api_key && *c->d.cfg->openai_api_key ? "set" : "unset");
}

static void
direct_signals(bool on)
{
	for (int i = 0; i < 3; i++) {
		if (on) {
			struct sigaction sa = { .sa_handler = on_signal_direct };
			sigemptyset(&sa.sa_mask);
			sigaction(session_signals[i], &sa, &saved_actions[i]);
		} else {
			sigaction(session_signals[i], &saved_actions[i], NULL);
		}
	}
}

int
console_take_flags(int argc, char **argv, struct console_opts *o)
{
	int out = 0;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--attach") == 0) {
			o->attach = true;
			if (i + 1 < argc && argv[i + 1][0] != '-')
				o->socket = argv[++i];
		} else if (strncmp(argv[i], "--attach=", 9) == 0) {
			o->attach = true;
			o->socket = argv[i] + 9;
		} else {
			argv[out++] = argv[i];
		}
	}
	return out;
}

static const char console_usage[] =
	"usage: rapport console [options] [-e CODE]... [-i] [FILE]\n"
	"       rapport console --attach [SOCKET] [-e CODE]... [-i]\n";

/* -e chunks in order, then FILE; false at the first failure. */
static bool
run_args(struct console *c, char **args, int nargs, const char *file)
{
	for (int i = 0; i < nargs && !c->quit; i++) {
		if (strcmp(args[i], "-e") != 0)
			continue;
		enum eval e = eval_chunk(c, args[++i], "=(command line)");
		if (e == EVAL_INCOMPLETE)
			report(c, "(command line): the chunk is unfinished");
		if (e != EVAL_OK)
			return false;
	}
	if (file && !c->quit && !run_file(c, file))
		return false;
	return true;
}

struct args {
	const char *file;         /* FILE: a Lua script to run */
	bool have_e;              /* -e CODE given */
	bool interactive;         /* -i: the REPL after -e / FILE */
};

static bool
parse_args(char **args, int nargs, bool attach, struct args *a)
{
	for (int i = 0; i < nargs; i++) {
		if (strcmp(args[i], "-e") == 0 && i + 1 < nargs)
			a->have_e = true, i++;
		else if (strcmp(args[i], "-i") == 0)
			a->interactive = true;
		else if (strcmp(args[i], "--") == 0)
			continue;
		else if (args[i][0] != '-' && !a->file && !attach)
			a->file = args[i];
		else {
			fprintf(stderr, "rapport console: unexpected argument %s\n%s", args[i], console_usage);
			return false;
		}
	}
	return true;
}

bool
console_args_ok(const struct console_opts *o, char **args, int nargs)
{
	struct args a = { 0 };
	return parse_args(args, nargs, o->attach, &a);
}

int
console_main(const struct console_deps *d, const struct console_opts *o, char **args, int nargs)
{
	struct console c = { .d = *d, .at_line_start = true, .attached = o->attach };
	struct args a = { 0 };
	if (!parse_args(args, nargs, o->attach, &a))
		return 2;
	if (o->attach) {
		c.sock_path = o->socket ? o->socket : d->cfg->admin_socket;
		if (!c.sock_path || !*c.sock_path) {
			fprintf(stderr, "rapport console: no admin socket (RAPPORT_ADMIN_SOCKET is off)\n");
			return 2;
		}
		c.d.base = util_event_base();
		if (!c.d.base)
			return 1;
	}
	C = &c;
	int rc = 1;
	c.L = new_state(&c);
	for (int i = 0; i < 3; i++)
		c.sig_ev[i] = evsignal_new(c.d.base, session_signals[i], on_signal_loop, &c);
	direct_signals(true);
	char err[1024];
	if (!c.L)
		goto out;
	if (o->attach && !conn_open(&c, err, sizeof err)) {
		fprintf(stderr, "rapport console: %s\n", err);
		goto out;
	}
	if (!run_args(&c, args, nargs, a.file)) {
		rc = c.exit_code ? c.exit_code : 1;
		goto out;
	}
	if ((!a.have_e && !a.file) || a.interactive) {
		c.tty = isatty(STDIN_FILENO);
		if (c.tty) {
			tty_start(&c);
			banner(&c);
		}
		repl(&c);
		if (c.tty)
			tty_stop(&c);
	}
	rc = c.exit_code ? c.exit_code : !c.tty && c.failures ? 1 : 0;
out:
	direct_signals(false);
	conn_close(&c);
	for (int i = 0; i < 3; i++)
		if (c.sig_ev[i])
			event_free(c.sig_ev[i]);
	if (c.L)
		lua_close(c.L);
	if (o->attach && c.d.base)
		event_base_free(c.d.base);
	C = NULL;
	fflush(stdout);
	return rc;
}
