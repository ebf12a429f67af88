/*
 * script_int — the script host's private header, shared by its parts (as
 * Lua keeps lstate.h): the structs behind the opaque types of script.h and
 * the functions one part calls in another. Nothing outside core/script_*.c
 * includes it.
 *
 *   script_sandbox.c   the state, its allocator and guards, script_pcall,
 *                      the sandbox environment
 *   script_pattern.c   string.find/match/gmatch/gsub with bounded work
 *   script_load.c      compiling one file: read_prompt, require, the
 *                      declaration table, the version hash
 *   script_registry.c  type names → serving scripts, reload
 *   script_run.c       one request: ctx, rows, prompt, post, fallback
 *   script_steps.c     run(ctx): the coroutine, db.query, llm.chat
 */
#ifndef RAPPORT_SCRIPT_INT_H
#define RAPPORT_SCRIPT_INT_H

#include "script.h"
#include "luajson.h"

#include <lua.h>

#define HOOK_EVERY 1000          /* instructions between budget checks */
#define MAX_QUERIES 32

enum script_phase {
	SCRIPT_SERVING,              /* prompt, post, …: no globals, no require */
	SCRIPT_LOADING,              /* the file's first run: reads files */
	SCRIPT_REPLAYING,            /* a request runs the top level afresh */
};

struct script {
	int refs;
	lua_State *L;
	char *name, *path, *description, *model, *version;
	double ttl_ms, stale_ttl_ms, temperature;
	long max_tokens;
	struct script_query queries[MAX_QUERIES];
	int nqueries;
	json_t *schema;
	int table_ref;               /* the table the file returned */
	bool has_post, has_fallback, has_run;
	struct script_info info;
	script_run *active_run;      /* whose coroutine is running, for db/llm */

	/* Limits, enforced by the allocator and the count hook. */
	size_t mem_used, mem_cap;
	struct luajson_meter meter;  /* jansson's bytes for the running call */
	long budget, spent;
	long wall_ms;                /* per call into Lua */
	int max_steps;               /* run(ctx) I/O calls */
	double deadline_ms;
	bool stopped;                /* the hook stopped the current call */
	char stop_where[160], stop_why[48];
	lua_State *call_thread;      /* reusable coroutine every call runs in */
	bool call_thread_broken;     /* it could not be replaced: no call may run */

	/* Load-time state: read_prompt() works only while loading, and every
	 * input read feeds the version hash. */
	enum script_phase phase;
	int factory_ref;             /* function(_ENV): runs the file afresh */
	int env_ref, modules_ref;    /* the load-time environment and modules */
	int cur_env_ref, cur_modules_ref;   /* the ones require uses now */
	uint64_t hash;
	const char *scripts_dir, *prompts_dir;
};

/* Versions a type served before its current one, kept so a vote on a
 * result an earlier version produced (still on a page, or cached) is
 * known: bounded, so edits never grow it. */
#define REG_RETIRED_MAX 8

struct reg_entry {
	char *name;
	script *current;
	char *error;
	char retired[REG_RETIRED_MAX][17];   /* full versions, newest first */
	int nretired;
};

/* The name → SQL pairs of scripts/lib/queries.lua, for the server's own
 * queries (script_service.c). */
struct script_service {
	char **names, **sql;
	int n;
};

struct script_registry {
	char *scripts_dir, *prompts_dir, *default_model;
	struct script_service service;
	struct script_limits limits;
	struct reg_entry *entries;
	int n;
	script_validator *validate;  /* runs before a new version may serve */
	void *validate_arg;
};

struct script_run {
	script *s;
	int64_t contact_id;
	int ctx_ref;
	int decl_ref;                /* this request's own run of the file */
	char *prep_error;            /* why that run failed */
	bool contact_missing;

	/* run(ctx): the coroutine and the one operation it waits on. */
	lua_State *co;
	int co_ref;
	int steps;                   /* resumes so far, against max_steps */
	enum script_step pending;
	char *p_sql;
	char **p_params;
	int p_nparams;
	bool p_one;
	json_t *p_request;
};

/* ---- script_sandbox.c ---- */
/* The lua_Alloc of every script state: realloc under s->mem_cap. */
void *script_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* The script a state belongs to (kept in its extra space). */
script *script_owner(lua_State *L);
int script_panic(lua_State *L);
void script_warn(void *ud, const char *msg, int tocont);
/* lua_CFunction: opens the libraries, the catalog the environments are
 * made from and the load-time environment (s->env_ref). */
int script_sandbox_build(lua_State *L);
/* Pushes a fresh environment (see script_sandbox_globals); raises. */
void script_sandbox_new_env(lua_State *L);
/* Pushes a box that frees what *box points to when collected; raises. */
void **script_box_new(lua_State *L);
/* Calls the function below nargs arguments on the main stack under the
 * limits. True with nresults on the main stack, or false with the first
 * line of the error (file:line: message) in err. */
bool script_pcall(script *s, int nargs, int nresults, char *err, size_t errlen);
void script_arm_limits(script *s, lua_State *co);
void script_stopped_message(script *s, char *err, size_t errlen);
const char *script_error_text(lua_State *co);
void script_log_error(script *s, lua_State *co, const char *err);

/* ---- script_pattern.c ---- */
/* Sets find, match, gmatch and gsub of the string table at strtab to the
 * bounded versions, which charge their steps to script_owner(L)'s budget. */
void script_pattern_install(lua_State *L, int strtab);

/* ---- script_service.c ---- */
bool script_service_load(const char *scripts_dir, struct script_service *out);
void script_service_free(struct script_service *sv);

/* ---- script_load.c ---- */
script *script_load(script_registry *r, const char *name, char **error);
void script_free(script *s);
int script_rawfield(lua_State *L, int t, const char *k);
int script_lua_require(lua_State *L);
int script_lua_read_prompt(lua_State *L);
/* A named query: the script's own `sql` table (decl: the index of the table
 * the file returned), else scripts/lib/queries.lua. With load, queries.lua
 * is required (loaded if need be; raises if it returns no table), as while
 * the script loads; without, only an already loaded copy is looked in (a
 * request must not read files). An entry is a string or a table
 * { sql = "…", one = true }. Returns the SQL, NULL if the name is not
 * defined, and sets *one. The string stays alive while the tables holding
 * it do (the script's table and modules live as long as the script). Leaves
 * the stack as it was. */
const char *script_query_lookup(lua_State *L, script *s, int decl, const char *name, bool *one,
                                bool load);

/* ---- script_run.c ---- */
struct script_reply_args {
	const char *content, *finish_reason, *model;
};
/* lua_CFunction: reply = {text, data, finish_reason, model} from a
 * struct script_reply_args (light userdata at 1). */
int script_push_reply(lua_State *L);
void script_push_row(lua_State *L, const PGresult *res, int row);
bool script_valid_messages(const json_t *m, char *err, size_t errlen);
void script_pending_clear(script_run *run);
/* Runs the file's top level afresh for this request (once); false with
 * err when that run fails. */
bool script_run_prepare(script_run *run, char *err, size_t errlen);
/* Pushes the function `name` of this request's run of the file. */
void script_push_decl_fn(lua_State *L, script_run *run, const char *name);

/* ---- script_steps.c ---- */
int script_lua_db_query(lua_State *L);
int script_lua_llm_chat(lua_State *L);

#endif
