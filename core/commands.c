/*
 * commands — the table and the commands that run the same everywhere.
 *
 * Data flow: a caller (admin.c for a socket line, console_local.c for a
 * standalone function call) has the words of a call as strings, finds the
 * row (cmd_match, or the row it registered the function from), and calls
 * row->run with its own parts. The run function checks its arguments
 * (a contact id is a positive integer), does the work on the parts and
 * returns a new JSON value, or NULL with the error.
 */
#include "commands.h"
#include "feedback.h"
#include "log.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LIST_MAX      1000      /* cache list entries per reply */

json_t *
cmd_fail(struct cmd_error *e, int status, const char *code, const char *fmt, ...)
{
	va_list ap;
	e->status = status;
	snprintf(e->code, sizeof e->code, "%s", code);
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof e->message, fmt, ap);
	va_end(ap);
	util_utf8_trim(e->message);
	return NULL;
}

bool
cmd_arg_contact(const char *s, int64_t *id, struct cmd_error *e)
{
	if (util_parse_i64(s, id) && *id > 0)
		return true;
	cmd_fail(e, 400, "invalid_contact_id",
	         "the contact id must be a positive integer, got '%.40s'", s);
	return false;
}

bool
cmd_arg_feedback(int argc, char **argv, int *n, struct cmd_error *e)
{
	const char *t = argv[0];
	if (!util_type_name_ok(t)) {
		cmd_fail(e, 400, "invalid_type", "'%.40s' is not an analysis type name", t);
		return false;
	}
	*n = FEEDBACK_LATEST_DEFAULT;
	int64_t v;
	if (argc > 1) {
		if (!util_parse_i64(argv[1], &v) || v < 1 || v > FEEDBACK_LATEST_MAX) {
			cmd_fail(e, 400, "invalid_count", "how many: an integer from 1 to %d, got '%.20s'",
			         FEEDBACK_LATEST_MAX, argv[1]);
			return false;
		}
		*n = (int)v;
	}
	return true;
}

/* ---- scripts ---------------------------------------------------------------- */

static json_t *
run_help(const struct cmd_parts *p, int argc, char **argv, struct cmd_error *e)
{
	return cmd_help_json();
}

static json_t *
run_types(const struct cmd_parts *p, int argc, char **argv, struct cmd_error *e)
{
	return script_registry_describe(p->scripts);
}

static json_t *
run_errors(const struct cmd_parts *p, int argc, char **argv, struct cmd_error *e)
{
	return script_registry_errors(p->scripts);
}

static json_t *
run_reload(const struct cmd_parts *p, int argc, char **argv, struct cmd_error *e)
{
	int failed = script_registry_reload(p->scripts);
	int n = script_registry_count(p->scripts);
	log_event(failed ? LOG_WARN : LOG_INFO, "scripts reloaded", LOG_S("by", p->who),
	          LOG_I("types", n), LOG_I("failed", failed), LOG_END);
	return json_pack("{s:i,s:i,s:o}", "types", n, "failed", failed, "errors",
	                 script_registry_errors(p->scripts));
}

/* ---- the cache ---------------------------------------------------------------- */

struct cache_walk {
	json_t *entries;
	int64_t contact_id;
	size_t max, total;
	double now_ms;
};

static void
cache_walk_one(void *arg, const struct cache_entry *e)
{
	struct cache_walk *w = arg;
	if (w->contact_id > 0 && e->contact_id != w->contact_id)
		return;
	if (w->total++ >= w->max)
		return;
	/* The key is contact:type:version. */
	const char *version = strrchr(e->key, ':');
	double left = e->fresh_until_ms - w->now_ms, grace_left = e->expires_ms - w->now_ms;
	const char *state = grace_left <= 0 ? "expired" : e->stale || left <= 0 ? "stale" : "fresh";
	json_t *o = json_object();
	json_object_set_new(o, "key", json_string(e->key));
	json_object_set_new(o, "contact_id", json_integer(e->contact_id));
	json_object_set_new(o, "type", json_string(e->type));
	json_object_set_new(o, "version", json_string(version ? version + 1 : ""));
	json_object_set_new(o, "age_ms", json_integer((json_int_t)(w->now_ms - e->created_ms)));
	json_object_set_new(o, "ttl_left_ms", json_integer(left > 0 ? (json_int_t)left : 0));
	json_object_set_new(o, "grace_left_ms",
	                    json_integer(grace_left > 0 && left <= 0 ? (json_int_t)grace_left : 0));
	json_object_set_new(o, "state", json_string(state));
	json_object_set_new(o, "bytes", json_integer((json_int_t)e->bytes));
	if (grace_left <= 0)
		json_object_set_new(o, "expired", json_true());
	json_array_append_new(w->entries, o);
}

/* Entries most recently used first, of one contact or all: {entries:
 * [{key, contact_id, type, version, age_ms, ttl_left_ms, bytes}], total}. */
static json_t *
run_cache_list(const struct cmd_parts *p, int argc, char **argv, struct cmd_error *e)
{
	int64_t id = 0;
	if (argc > 0 && !cmd_arg_contact(argv[0], &id, e))
		return NULL;
	struct cache_walk w = { json_array(), id, LIST_MAX, 0, util_now_ms() };
	cache_each(p->cache, cache_walk_one, &w);
	return json_pack("{s:o,s:I}", "entries", w.entries, "total", (json_int_t)w.total);
}

/* A manual drop is an invalidation: generations of the contact already in
 * progress read the old rows, so they must not store their result. */
static json_t *
run_cache_drop(const struct cmd_parts *p, int argc, char **argv, struct cmd_error *e)
{
	int64_t id;
	if (!cmd_arg_contact(argv[0], &id, e))
		return NULL;
	/* As over HTTP: the name goes to the other instances too. */
	const char *type = argc > 1 ? argv[1] : NULL;
	if (type && !util_type_name_ok(type)) {
		cmd_fail(e, 400, "invalid_type", "'%.40s' is not an analysis type name", type);
		return NULL;
	}
	int n = analysis_drop(p->analysis, id, type);
	return json_pack("{s:I,s:i}", "contact_id", (json_int_t)id, "dropped", n);
}

static json_t *
run_cache_clear(const struct cmd_parts *p, int argc, char **argv, struct cmd_error *e)
{
	struct cache_stats st;
	cache_stats(p->cache, &st);
	cache_clear(p->cache);
	analysis_contact_changed(p->analysis, -1);
	return json_pack("{s:I}", "dropped", (json_int_t)st.entries);
}

/* ---- the process now ------------------------------------------------------------ */

/* The numbers of GET /metrics as JSON: on the admin socket the HTTP
 * server's own list (its counters included), in the standalone console the
 * same families from its own parts. */
static json_t *
run_metrics(const struct cmd_parts *p, int argc, char **argv, struct cmd_error *e)
{
	metrics *m = metrics_new();
	if (p->http) {
		http_server_metrics(p->http, m);
	} else {
		struct metrics_sources src = {
			.cache = p->cache, .db = p->db, .llm = p->llm, .limiter = p->limiter,
			.breaker = p->breaker, .acct = p->acct, .analysis = p->analysis,
		};
		metrics_gather(m, &src);
	}
	json_t *o = metrics_json(m);
	metrics_free(m);
	return o;
}

static json_t *
run_status(const struct cmd_parts *p, int argc, char **argv, struct cmd_error *e)
{
	struct db_stats ds;
	struct llm_stats ls;
	struct cache_stats cs;
	struct analysis_stats as;
	db_pool_stats(p->db, &ds);
	llm_client_stats(p->llm, &ls);
	cache_stats(p->cache, &cs);
	analysis_stats(p->analysis, &as);
	json_t *o = json_pack("{s:i}", "pid", (int)getpid());
	if (p->started_ms > 0)
		json_object_set_new(o, "admin_uptime_s",
		                    json_real((util_now_ms() - p->started_ms) / 1000.0));
	json_object_set_new(o, "database",
	                    json_pack("{s:s,s:i,s:i,s:i}", "state",
	                              db_pool_is_up(p->db) ? "up" : "down", "connected",
	                              ds.connected, "busy", ds.busy, "queued", ds.queued));
	json_object_set_new(o, "upstream", json_pack("{s:I,s:I}", "in_flight",
	                                             (json_int_t)ls.in_flight, "calls",
	                                             (json_int_t)ls.calls));
	json_object_set_new(o, "cache", json_pack("{s:I,s:I,s:I}", "entries",
	                                          (json_int_t)cs.entries, "bytes",
	                                          (json_int_t)cs.bytes, "max_bytes",
	                                          (json_int_t)cs.max_bytes));
	json_object_set_new(o, "analysis", json_pack("{s:I,s:I}", "flights",
	                                             (json_int_t)as.flights, "waiters",
	                                             (json_int_t)as.waiters));
	return o;
}

/* ---- the table ---------------------------------------------------------------------- */

#define ADMIN  CMD_ADMIN
#define LOCAL  CMD_LOCAL
#define ATTACH CMD_ATTACH
#define REPL   CMD_REPL

const struct command cmd_table[] = {
	{ "help", "help", 0, 0, ADMIN | REPL, run_help, "help", "help()", "this list" },
	{ "types", "types", 0, 0, ADMIN | LOCAL, run_types, "types", "types()",
	  "the analysis types: version, model, ttl, queries, load error" },
	{ "errors", "errors", 0, 0, ADMIN | LOCAL, run_errors, "errors", "errors()",
	  "script load errors (file:line)" },
	{ "reload", "reload", 0, 0, ADMIN | LOCAL, run_reload, "reload", "reload()",
	  "recompile every script now" },
	{ NULL, "context", 2, 2, LOCAL, NULL, NULL, "ctx = context(id, type)",
	  "run the type's named queries (all at once) → the ctx table; prints db time and rows" },
	{ NULL, "messages", 1, 2, LOCAL, NULL, NULL, "req = messages(ctx | id [, type])",
	  "the exact chat request prompt(ctx) builds: model, messages, response_format …" },
	{ NULL, "chat", 1, 1, LOCAL, NULL, NULL, "reply = chat(req)",
	  "send it upstream, printing the text as it streams → {text, data, finish_reason, model, usage, ms}" },
	{ NULL, "post", 2, 3, LOCAL, NULL, NULL, "result = post(reply, ctx [, type])",
	  "the script's post(reply, ctx) → the result" },
	{ NULL, "fallback", 1, 2, LOCAL, NULL, NULL, "fallback(ctx [, type])",
	  "the script's fallback(ctx): the result served when the model is down" },
	{ "analyze", "analyze", 2, 3, ADMIN | LOCAL, NULL, "analyze <contact> <type> [refresh]",
	  "analyze(id, type [, {cache = false, stream = false}])",
	  "the whole pipeline (cache first unless refresh / cache = false) → the API's JSON document; "
	  "stream: standalone only" },
	{ "cache list", "cache_list", 0, 1, ADMIN | LOCAL, run_cache_list, "cache list [contact]",
	  "cache_list([id])", "cached analyses: key, type, age, ttl left, bytes (most recent first)" },
	{ "cache drop", "cache_drop", 1, 2, ADMIN | LOCAL, run_cache_drop,
	  "cache drop <contact> [type]", "cache_drop(id [, type])",
	  "drop a contact's cached analyses (all types, or one)" },
	{ "cache clear", "cache_clear", 0, 0, ADMIN | LOCAL, run_cache_clear, "cache clear",
	  "cache_clear()", "drop every cached analysis" },
	{ "metrics", "metrics", 0, 0, ADMIN | LOCAL, run_metrics, "metrics", "metrics()",
	  "the numbers of GET /metrics: {\"name{labels}\": value}" },
	{ "status", "status", 0, 0, ADMIN | LOCAL, run_status, "status", "status()",
	  "database, upstream, cache and flights now" },
	{ "feedback", "feedback", 1, 2, ADMIN | LOCAL, NULL, "feedback <type> [n]",
	  "feedback(type [, n])",
	  "users' votes on a type: up/down per script version, and the latest n (10) reasons" },
	{ NULL, "admin", 1, 1, ATTACH, NULL, NULL, "admin(line)",
	  "send one admin command → the whole reply {ok, result | error}" },
	{ NULL, "time", 1, -1, REPL, NULL, NULL, "time(fn, ...)",
	  "call fn(...), print how long it took, return its results" },
	{ NULL, "pp", 1, 1, REPL, NULL, NULL, "pp(value)",
	  "the pretty-printed text of a value (what the prompt prints)" },
	{ NULL, "now_ms", 0, 0, REPL, NULL, NULL, "now_ms()", "a monotonic clock in milliseconds" },
	{ NULL, "quit", 0, 1, REPL, NULL, NULL, "quit([status])", "leave now (so does Ctrl-D)" },
	{ NULL, NULL, 0, 0, 0, NULL, NULL, NULL, NULL },
};

/* ---- lookup ---------------------------------------------------------------------- */

/* How many of argv the row's words take (they all match), else 0; *prefix
 * tells that the first word matched. */
static int
words_match(const char *words, int argc, char **argv, bool *prefix)
{
	int n = 0;
	for (const char *w = words; *w; n++) {
		size_t len = strcspn(w, " ");
		if (n >= argc || strlen(argv[n]) != len || strncmp(argv[n], w, len) != 0)
			return 0;
		if (n == 0)
			*prefix = true;
		w += len;
		w += strspn(w, " ");
	}
	return n;
}

const struct command *
cmd_match(int argc, char **argv, int *skip, struct cmd_error *e)
{
	bool known = false;
	for (const struct command *c = cmd_table; c->fn || c->words; c++) {
		if (!(c->where & CMD_ADMIN))
			continue;
		int n = words_match(c->words, argc, argv, &known);
		if (!n)
			continue;
		int nargs = argc - n;
		if (nargs < c->min || (c->max >= 0 && nargs > c->max)) {
			cmd_fail(e, 400, "bad_command", "usage: %s", c->usage);
			return NULL;
		}
		*skip = n;
		return c;
	}
	if (known)
		cmd_fail(e, 400, "bad_command", "'%.40s' needs a subcommand (see help)", argv[0]);
	else
		cmd_fail(e, 400, "unknown_command", "unknown command '%.40s' (see help)", argv[0]);
	return NULL;
}

json_t *
cmd_help_json(void)
{
	json_t *list = json_array();
	for (const struct command *c = cmd_table; c->fn || c->words; c++)
		if (c->where & CMD_ADMIN)
			json_array_append_new(list, json_pack("{s:s,s:s}", "command", c->usage, "does",
			                                      c->does));
	return list;
}
