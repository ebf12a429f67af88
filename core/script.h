/*
 * script — the Lua host. One `struct script` is one compiled analysis type:
 * its own sandboxed lua_State, the table the file returned, the resolved
 * named queries, the JSON schema and a version hash over everything that
 * shapes its output (the file, the lib modules it required, the prompt files
 * it read, the SQL of its queries).
 *
 * The registry maps type names to their current script. Reloading compiles
 * every file into a new script and swaps it in; a file that fails keeps its
 * previous version serving and records the error. Scripts are refcounted,
 * so a request finishes on the version it started with.
 *
 * A `script_run` is one request's use of a script: its ctx table (rows from
 * the database), then prompt(ctx) → chat request, then post(reply, ctx) →
 * result. Before its first call a run executes the file's top level afresh
 * (compiled once, at load) in a fresh environment, so no module-level table
 * carries one request's data into another's. Every call into Lua is
 * protected, runs under an instruction budget (which pattern matching is
 * charged to), a wall-clock bound and the state's memory cap (which counts
 * what jansson holds for the call), and never raises into C.
 */
#ifndef RAPPORT_SCRIPT_H
#define RAPPORT_SCRIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <libpq-fe.h>

typedef struct script script;
typedef struct script_registry script_registry;
typedef struct script_run script_run;

struct script_query {
	char *name;
	char *sql;
	bool one;          /* at most one row: ctx.<name> is a row or nil */
};

struct script_limits {
	size_t memory_bytes;    /* cap per Lua state */
	long instructions;      /* budget per call into Lua */
	long wall_ms;           /* wall-clock bound per call into Lua (0 = none) */
	int max_steps;          /* run(ctx): db.query + llm.chat calls at most */
};

/* What a script declared, for callers and /v1/analysis-types. */
struct script_info {
	const char *name;
	const char *description;
	const char *version;         /* 16 hex digits */
	const char *path;
	const char *model;
	double ttl_ms;
	double stale_ttl_ms;         /* grace after ttl (default: the ttl) */
	double temperature;          /* < 0 when not set */
	long max_tokens;             /* 0 when not set */
	const struct script_query *queries;
	int nqueries;
	const json_t *schema;        /* NULL when none */
	bool has_post, has_fallback;
	bool has_run;                /* run(ctx) replaces prompt → model → post */
};

script_registry *script_registry_create(const char *scripts_dir, const char *prompts_dir,
                                        const char *default_model,
                                        const struct script_limits *limits);
void script_registry_destroy(script_registry *r);
/* Compiles every <type>.lua of the scripts folder (lib/ excluded) and swaps
 * in what compiled; returns how many files failed. Errors are logged and
 * kept for script_registry_entry(). */
int script_registry_reload(script_registry *r);
/* A check every newly compiled version must pass before it serves: false
 * with *error (malloc'd, file:line first) keeps the previous version. */
typedef bool script_validator(void *arg, script *s, char **error);
void script_registry_set_validator(script_registry *r, script_validator *fn, void *arg);
const char *script_registry_scripts_dir(const script_registry *r);

/* The serving version of a type (borrowed: script_ref() to keep it), or
 * NULL when the type is unknown or has never compiled. */
script *script_registry_get(script_registry *r, const char *type);
/* True when version8 (the 8 hex digits a result carries as its
 * script_version) is the serving version of type or one of the last
 * REG_RETIRED_MAX (script_int.h) it served in this process. */
bool script_registry_knows_version(const script_registry *r, const char *type,
                                   const char *version8);
/* The SQL of a named query of scripts/lib/queries.lua, for the server's
 * own use outside any analysis (warm_candidates, contact_search), as of
 * the last reload; NULL when the file does not define it. Borrowed: valid
 * until the next reload. */
const char *script_registry_named_query(const script_registry *r, const char *name);
/* Entries in name order, for listings: the serving script (may be NULL)
 * and the last load error (NULL when the last load succeeded). */
int script_registry_count(const script_registry *r);
void script_registry_entry(const script_registry *r, int i, const char **name,
                           script **current, const char **error);

/* The list /v1/analysis-types, the admin socket and the console show:
 * name, version (8 hex), description, model, ttl, queries, load error. */
json_t *script_registry_describe(const script_registry *r);
/* The types whose last load failed, for the admin errors and reload
 * commands: [{type, error, serving_old_version}], the last true when an
 * older version still serves. */
json_t *script_registry_errors(const script_registry *r);

void script_ref(script *s);
void script_unref(script *s);
const struct script_info *script_info(const script *s);

/* One request. now_iso is the request's time, given to Lua as ctx.now. */
script_run *script_run_new(script *s, int64_t contact_id, const char *now_iso);
void script_run_free(script_run *run);
/* Puts a query's rows into ctx (typed values). False with err on failure. */
bool script_run_add_rows(script_run *run, const struct script_query *q, const PGresult *res,
                         char *err, size_t errlen);
/* True when the script asked for the `contact` query and it had no row. */
bool script_run_contact_missing(const script_run *run);
/* prompt(ctx) → the chat completions request (model, messages,
 * temperature, max_completion_tokens, response_format). New reference or
 * NULL with err. */
json_t *script_run_request(script_run *run, char *err, size_t errlen);
/* post(reply, ctx) (or the default) → the result object. */
json_t *script_run_post(script_run *run, const char *content, const char *finish_reason,
                        const char *model, char *err, size_t errlen);
/* The ctx table as JSON (for the console and debugging). New reference, or
 * NULL with err. */
json_t *script_run_ctx_json(script_run *run, char *err, size_t errlen);
/* Replaces the ctx with the given JSON object (a console user editing the
 * context before rendering the prompt). contact_id, type and now are kept
 * from the object when present. False with err on failure. */
bool script_run_set_ctx_json(script_run *run, const json_t *ctx, char *err, size_t errlen);
/* ---- run(ctx): a script's own sequence of queries and model calls ----
 * run(ctx) runs in a coroutine. When it calls db.query() or llm.chat() it
 * yields, and the step functions return what it waits for; the caller does
 * the I/O on the loop and resumes it with the answer. Nothing here blocks
 * and nothing calls back into the caller. */
enum script_step {
	SCRIPT_DONE,          /* *result is the run's result object */
	SCRIPT_WAIT_QUERY,    /* run the query in *wait, then script_run_resume_rows */
	SCRIPT_WAIT_CHAT,     /* send wait->request, then script_run_resume_reply */
	SCRIPT_ERROR,         /* err says why (file:line) */
};
struct script_wait {      /* valid until the next call on this run */
	const char *sql;
	int nparams;
	const char *const *params;
	json_t *request;      /* borrowed */
};
enum script_step script_run_start(script_run *run, struct script_wait *wait, json_t **result,
                                  char *err, size_t errlen);
/* res on success, else dberr (the script sees nil, dberr). */
enum script_step script_run_resume_rows(script_run *run, const PGresult *res, const char *dberr,
                                        struct script_wait *wait, json_t **result,
                                        char *err, size_t errlen);
/* content etc. on success, else llmerr (the script sees nil, llmerr). */
enum script_step script_run_resume_reply(script_run *run, const char *content,
                                         const char *finish_reason, const char *model,
                                         long prompt_tokens, long completion_tokens,
                                         const char *llmerr, struct script_wait *wait,
                                         json_t **result, char *err, size_t errlen);

/* fallback(ctx) → result, or NULL (err empty when the script has none). */
json_t *script_run_fallback(script_run *run, char *err, size_t errlen);

/* ---- the sandbox: the one definition of what a script sees ----
 * The sandbox is built from this list (ending with a NULL name); `rapport
 * check` lints against it; tests hold .luacheckrc, the Lua test harness and
 * docs/scripts.md to it. fields lists a library table's fields (NULL for a
 * function or _G). */
struct script_global {
	const char *name;
	const char *const *fields;
};
extern const struct script_global script_sandbox_globals[];

/* Reads a fixture file (scripts/tests/<type>.lua) in a state of its own
 * with the guards of s: its memory cap, its instruction budget and wall
 * bound, no __gc, bounded patterns, the sandbox's globals plus case{…}
 * (which records the line it was written on in `_line`). Returns what the
 * file returned as JSON (new reference), or NULL with err (file:line). */
json_t *script_read_fixtures(const script *s, const char *path, char *err, size_t errlen);

#endif
