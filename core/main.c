/*
 * main — the rapport command: `serve`, `check`, `analyze`, `console`, `--help`.
 *
 * Builds the subsystems in dependency order on one event loop (scripts,
 * database pool, upstream client, cache, pipeline, HTTP API, file watch),
 * runs the loop, and tears them down in reverse on SIGINT/SIGTERM. SIGHUP
 * reloads every script; until that handler is installed it is ignored, so a
 * reload sent right after start never kills the process.
 *
 * The database: DATABASE_URL is where scripts' SQL runs, so its role must
 * only read; app_start_core checks it (db_role_check) and refuses a role that
 * may write unless RAPPORT_DB_ALLOW_WRITE=1, and the pool checks every new
 * session again. rapport's own writes (warm jobs, feedback) go to RAPPORT_STATE_URL, on
 * the state connection of its own (state.h), never through app->db.
 */
#include "admin.h"
#include "analysis.h"
#include "change_refresh.h"
#include "cache.h"
#include "check.h"
#include "config.h"
#include "console.h"
#include "db.h"
#include "db_listen.h"
#include "http_api.h"
#include "feedback.h"
#include "jobs.h"
#include "l2_coord.h"
#include "llm.h"
#include "log.h"
#include "luajson.h"
#include "query_columns.h"
#include "run_env.h"
#include "script.h"
#include "state.h"
#include "util.h"
#include "warm_cli.h"
#include "watch.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>

static const char usage[] =
	"usage: rapport <command> [options]\n"
	"\n"
	"commands:\n"
	"  serve                     run the HTTP API\n"
	"  check [--no-lint]        compile, lint (luacheck) and run the fixture tests of every script\n"
	"  analyze <contact> <type>  run one analysis now and print its JSON\n"
	"  console [-e CODE] [FILE]  Lua REPL on this process's pool, upstream and cache\n"
	"  console --attach [SOCKET] the same, on a running server's admin socket\n"
	"  warm --top N | --contacts 1,2,3 [--types a,b] [--url URL] [--key KEY] [--local]\n"
	"                            start a warm job on the running server and show its progress\n"
	"  --help                    this text\n"
	"\n"
	"options (each also an environment variable; flags win):\n"
	"  --listen HOST:PORT        RAPPORT_LISTEN      (127.0.0.1:8080)\n"
	"  --database-url URL        DATABASE_URL        (dbname=rapport)\n"
	"  --openai-base-url URL     OPENAI_BASE_URL     (https://api.openai.com/v1)\n"
	"  --model NAME              RAPPORT_MODEL       (gpt-4o-mini)\n"
	"  --scripts DIR             RAPPORT_SCRIPTS     (./scripts)\n"
	"  --prompts DIR             RAPPORT_PROMPTS     (./prompts)\n"
	"  --cache-bytes N           RAPPORT_CACHE_BYTES (256MiB)\n"
	"  --db-pool N               RAPPORT_DB_POOL     (8)\n"
	"  --log-level LEVEL         RAPPORT_LOG_LEVEL   (info)\n"
	"  --admin-socket PATH       RAPPORT_ADMIN_SOCKET (./var/run/rapport-<port>.sock; off)\n"
	"  --config FILE             RAPPORT_CONFIG: NAME = value lines\n"
	"environment only: OPENAI_API_KEY (never logged), RAPPORT_API_KEYS (comma-separated\n"
	"client keys; empty = no auth), RAPPORT_LLM_TIMEOUT_MS, RAPPORT_DB_TIMEOUT_MS,\n"
	"RAPPORT_HTTP_TIMEOUT, RAPPORT_MAX_BODY, RAPPORT_LLM_RETRIES, RAPPORT_DB_ALLOW_WRITE,\n"
	"RAPPORT_DB_MAX_ROWS, RAPPORT_DB_MAX_BYTES, RAPPORT_STATE_URL, RAPPORT_WARM_SHARE,\n"
	"RAPPORT_WARM_EVERY, RAPPORT_WARM_TOP, RAPPORT_WARM_LEASE_S, RAPPORT_REFRESH_ON_CHANGE_S.\n";

/* Everything one process runs, in creation order. */
struct app {
	struct config cfg;
	struct event_base *base;
	script_registry *scripts;
	db_pool *db;
	db_listener *listener;   /* cache invalidation (serve only) */
	llm_client *llm;
	limiter *limiter;        /* upstream calls in flight */
	struct event *limiter_wake; /* ends the limiter's rate-limit holds */
	breaker *breaker;        /* upstream health */
	accounting *acct;        /* tokens and cost */
	cache *cache;
	l2 *l2;                  /* the shared cache in Redis (REDIS_URL), or NULL */
	analysis *analysis;
	change_refresh *change_refresh; /* viewed entries refreshed on a change, or NULL */
	state_db *state;         /* rapport's own schema (serve, warm --local) */
	jobs *jobs;              /* warm jobs' runner */
	feedback *feedback;      /* votes on insights (serve, console) */
	http_server *http;
	admin *admin;            /* admin socket (serve only) */
	watch *watch;
	struct check_validator validator;  /* what a new script version must pass */
	struct event *sig_int, *sig_term, *sig_hup;
	bool stopping;
	bool tearing_down;       /* app_stop has begun: no more reloads */
	int exit_code;
};

static const struct script_limits default_limits = {
	.memory_bytes = 128u << 20,
	.instructions = 50000000,
	.wall_ms = 1000,
	.max_steps = 32,
};

static void reload_scripts(void *arg);

/* The pool described queries a reload brought: check again with them. */
static void
on_columns_learnt(void *arg)
{
	struct app *app = arg;
	if (app->tearing_down)
		return;        /* answered by the pool's own shutdown */
	log_event(LOG_DEBUG, "new query columns known: checking the scripts again", LOG_END);
	reload_scripts(app);
}

static void
reload_scripts(void *arg)
{
	struct app *app = arg;
	int failed = script_registry_reload(app->scripts);
	log_event(failed ? LOG_WARN : LOG_INFO, "scripts reloaded",
	          LOG_I("types", script_registry_count(app->scripts)), LOG_I("failed", failed),
	          LOG_END);
	/* Queries first seen now: described in the background (never
	 * blocking the loop), then checked by the reload that follows. */
	if (app->db && app->validator.columns && !app->tearing_down)
		qcols_learn_pending(app->validator.columns, app->db, on_columns_learnt, app);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct app *app = arg;
	if (sig == SIGHUP) {
		reload_scripts(app);
		return;
	}
	if (app->stopping) {
		event_base_loopbreak(app->base);       /* a second signal: now */
		return;
	}
	app->stopping = true;
	log_event(LOG_INFO, "shutting down", LOG_S("signal", sig == SIGINT ? "SIGINT" : "SIGTERM"),
	          LOG_END);
	/* Answer what is waiting, then give the loop a moment to write it. */
	if (app->http)
		http_server_drain(app->http);
	jobs_drain(app->jobs);
	/* Locks this instance holds go now, while the loop can still send
	 * the release: other instances waiting on them take over at once. */
	l2_coord_shutdown(app->l2);
	struct timeval grace = { 0, 300 * 1000 };
	event_base_loopexit(app->base, &grace);
}

/* Scripts' SQL runs on DATABASE_URL: a role that may write is refused
 * before anything starts (the message carries the SQL of the fix). A
 * database that is down now is checked by the pool when it comes up. */
static bool
check_db_role(const struct config *cfg)
{
	char *msg = NULL;
	bool ok = true;
	switch (db_role_check(cfg->database_url, &msg)) {
	case DB_ROLE_READ_ONLY:
		break;
	case DB_ROLE_MAY_WRITE:
		if (cfg->db_allow_write) {
			log_event(LOG_WARN, "RAPPORT_DB_ALLOW_WRITE=1: the database role may write; "
			          "every script query still runs in a READ ONLY transaction",
			          LOG_S("error", msg), LOG_END);
			break;
		}
		log_event(LOG_ERROR, "db role refused", LOG_S("error", msg), LOG_END);
		fprintf(stderr, "rapport: %s\n", msg);
		ok = false;
		break;
	case DB_ROLE_UNKNOWN:
		log_event(LOG_WARN, "cannot check the database role now; every new connection checks it",
		          LOG_S("error", msg), LOG_END);
		break;
	}
	free(msg);
	return ok;
}

/* Creates the parts every command that runs analyses needs. */
/* The limiter asks to be ticked when a hold for the provider's window
 * ends; it has no clock of its own. */
static void
on_limiter_wake(evutil_socket_t fd, short what, void *arg)
{
	struct app *app = arg;
	limiter_tick(app->limiter, util_now_ms());
}

static void
limiter_wake(void *arg, double delay_ms)
{
	struct app *app = arg;
	long us = delay_ms > 0 ? (long)(delay_ms * 1000.0) + 1000 : 0;
	struct timeval tv = { us / 1000000, us % 1000000 };
	evtimer_add(app->limiter_wake, &tv);
}

/* Retries waiting in the upstream client will take room in the provider's
 * window that the limiter granted nothing for. */
static long
limiter_pending(void *arg)
{
	struct llm_stats st;
	llm_client_stats(arg, &st);
	return st.retrying;
}

static bool
app_start_core(struct app *app)
{
	struct config *cfg = &app->cfg;
	app->base = util_event_base();
	if (!app->base) {
		fprintf(stderr, "rapport: cannot create the event loop\n");
		return false;
	}
	app->scripts = script_registry_create(cfg->scripts_dir, cfg->prompts_dir, cfg->model,
	                                      &default_limits);
	/* Before the loop runs, the validator may ask the database for the
	 * queries' columns (a blocking describe); afterwards it never blocks. */
	app->validator.scripts = app->scripts;
	app->validator.columns = qcols_create(cfg->database_url);
	script_registry_set_validator(app->scripts, check_prompt, &app->validator);
	reload_scripts(app);
	qcols_allow_blocking(app->validator.columns, false);
	if (!check_db_role(cfg))
		return false;
	app->db = db_pool_create(app->base, cfg->database_url, cfg->db_pool_size, cfg->db_timeout_ms);
	if (!app->db) {
		fprintf(stderr, "rapport: cannot create the database pool: check DATABASE_URL and "
		                "RAPPORT_DB_POOL (1 to 1000 connections)\n");
		return false;
	}
	db_pool_set_prepare(app->db, cfg->db_prepare != 0);
	db_pool_set_role_check(app->db, true, cfg->db_allow_write != 0);
	db_pool_set_result_caps(app->db, cfg->db_max_rows, cfg->db_max_bytes);
	struct llm_config lc = {
		.base_url = cfg->openai_base_url,
		.api_key = cfg->openai_api_key,
		.connect_timeout_ms = cfg->llm_connect_timeout_ms,
		.max_retries = cfg->llm_max_retries,
		.ca_file = cfg->upstream_ca_file,
	};
	app->llm = llm_client_create(app->base, &lc);
	if (!app->llm) {
		fprintf(stderr, "rapport: cannot create the upstream client\n");
		return false;
	}
	app->limiter = limiter_create(cfg->llm_max_in_flight, cfg->llm_max_queue);
	limiter_set_ceiling(app->limiter, cfg->llm_max_in_flight_ceiling);
	limiter_set_background_share(app->limiter, cfg->llm_background_pct / 100.0);
	app->limiter_wake = evtimer_new(app->base, on_limiter_wake, app);
	limiter_set_wake(app->limiter, limiter_wake, app);
	limiter_set_pending(app->limiter, limiter_pending, app->llm);
	struct breaker_config bc = {
		.name = "upstream", .failure_threshold = cfg->breaker_failures,
		.open_ms = cfg->breaker_open_ms, .max_open_ms = 120000, .half_open_probes = 1,
		.probe_timeout_ms = cfg->llm_timeout_ms,
	};
	app->breaker = breaker_create(&bc);
	app->acct = acct_create();
	char err[256];
	if (cfg->prices && !acct_set_prices(app->acct, cfg->prices, err, sizeof err)) {
		fprintf(stderr, "rapport: RAPPORT_PRICES: %s\n", err);
		return false;
	}
	bool cancel_orphans = strcmp(cfg->orphan_policy, "cancel") == 0;
	if (!cancel_orphans && strcmp(cfg->orphan_policy, "finish") != 0) {
		fprintf(stderr, "rapport: RAPPORT_ORPHAN_POLICY must be finish or cancel\n");
		return false;
	}
	bool ttl_only = strcmp(cfg->freshness, "ttl") == 0;
	if (!ttl_only && strcmp(cfg->freshness, "full") != 0) {
		fprintf(stderr, "rapport: RAPPORT_FRESHNESS must be full (grace and fingerprints) or "
		        "ttl (ttl only)\n");
		return false;
	}
	char *end;
	double ttl_scale = strtod(cfg->ttl_scale, &end);
	if (end == cfg->ttl_scale || *end || !(ttl_scale > 0) || ttl_scale > 1000) {
		fprintf(stderr, "rapport: RAPPORT_TTL_SCALE must be a number above 0 and at most 1000 "
		        "(got '%s')\n", cfg->ttl_scale);
		return false;
	}
	/* Under the full policy entries past their grace stay (until evicted)
	 * for their fingerprint: a refresh can still re-arm them. */
	app->cache = cache_create(cfg->cache_bytes, !ttl_only);
	if (cfg->redis_url && *cfg->redis_url) {
		struct l2_config lc = {
			.url = cfg->redis_url, .prefix = cfg->redis_prefix,
			.timeout_ms = cfg->l2_timeout_ms, .max_value_bytes = cfg->l2_max_bytes,
			.lock_lease_ms = cfg->l2_lock_lease_ms, .lock_poll_ms = cfg->l2_lock_poll_ms,
		};
		app->l2 = l2_create(app->base, &lc, err, sizeof err);
		if (!app->l2) {
			fprintf(stderr, "rapport: %s\n", err);
			return false;
		}
	}
	struct analysis_deps ad = {
		.base = app->base, .db = app->db, .llm = app->llm, .cache = app->cache,
		.scripts = app->scripts, .llm_timeout_ms = cfg->llm_timeout_ms,
		.llm_first_token_ms = cfg->llm_first_token_ms, .limiter = app->limiter,
		.breaker = app->breaker, .acct = app->acct, .cancel_orphans = cancel_orphans,
		.ttl_only = ttl_only, .ttl_scale = ttl_scale, .l2 = app->l2,
		.refresh_warmed = cfg->refresh_warmed,
	};
	app->analysis = analysis_create(&ad);
	/* The window is a lifetime like ttl: the scale shortens it too. */
	if (!ttl_only && cfg->refresh_on_change_s > 0)
		app->change_refresh = change_refresh_create(app->base, app->analysis,
		                                            cfg->refresh_on_change_s * 1000.0 * ttl_scale,
		                                            CHANGE_REFRESH_QUIET_MS);
	return true;
}

static void
app_stop(struct app *app)
{
	app->tearing_down = true;
	admin_destroy(app->admin);
	http_server_destroy(app->http);
	feedback_destroy(app->feedback);  /* its ops hold state statements */
	jobs_destroy(app->jobs);          /* its items wait on the pipeline */
	state_destroy(app->state);
	change_refresh_destroy(app->change_refresh);
	analysis_destroy(app->analysis);
	l2_destroy(app->l2);
	watch_destroy(app->watch);
	if (app->sig_int)
		event_free(app->sig_int);
	if (app->sig_term)
		event_free(app->sig_term);
	if (app->sig_hup)
		event_free(app->sig_hup);
	if (app->llm)
		llm_client_destroy(app->llm);
	if (app->limiter)
		limiter_destroy(app->limiter);
	if (app->limiter_wake)
		event_free(app->limiter_wake);
	if (app->breaker)
		breaker_destroy(app->breaker);
	if (app->acct)
		acct_destroy(app->acct);
	db_listen_destroy(app->listener);
	if (app->db)
		db_pool_destroy(app->db);
	cache_destroy(app->cache);
	script_registry_destroy(app->scripts);
	qcols_destroy(app->validator.columns);
	if (app->base)
		event_base_free(app->base);
}

/* A trigger NOTIFYed that this contact's rows changed: its analyses are
 * stale. A payload that is not an id is logged and ignored: anyone who can
 * NOTIFY on the channel (every role can) must not be able to empty the
 * cache, and a forced regeneration of everything costs money. */
static void
on_contact_changed(void *arg, const char *payload)
{
	struct app *app = arg;
	int64_t id;
	if (!util_parse_i64(payload, &id) || id <= 0) {
		/* At most BAD_NOTIFY_LINES lines per 10 s: a flood of garbage must
		 * not flood the log either; the next line counts what was left
		 * out. */
		enum { BAD_NOTIFY_LINES = 20 };
		static double window_ms;
		static int lines;
		static long suppressed;
		double now = util_now_ms();
		if (now - window_ms >= 10000) {
			window_ms = now;
			lines = 0;
		}
		if (lines >= BAD_NOTIFY_LINES) {
			suppressed++;
			return;
		}
		lines++;
		char shown[128];
		snprintf(shown, sizeof shown, "%s", payload);
		log_event(LOG_WARN, "bad invalidation payload ignored", LOG_S("payload", shown),
		          LOG_I("bytes", (long long)strlen(payload)), LOG_I("suppressed", suppressed),
		          LOG_END);
		suppressed = 0;
		return;
	}
	int n = analysis_invalidate(app->analysis, id);
	change_refresh_note(app->change_refresh, id);
	log_event(LOG_DEBUG, "invalidated", LOG_I("contact", id), LOG_I("entries", n), LOG_END);
}

/* The listener was not listening for a while: changes made meanwhile went
 * unheard, so nothing cached can be trusted. */
static void
on_listen_reset(void *arg)
{
	struct app *app = arg;
	int n = analysis_invalidate(app->analysis, -1);
	log_event(LOG_INFO, "cache reset", LOG_S("reason", "invalidation listener reconnected"),
	          LOG_I("entries", n), LOG_END);
}

/* rapport's own state connection and the warm-job runner. The server
 * starts without the state database (jobs answer 503 until it is up). */
static bool
app_start_jobs(struct app *app, bool local)
{
	struct config *cfg = &app->cfg;
	app->state = state_create(app->base, cfg->state_url, cfg->db_timeout_ms);
	if (!app->state) {
		fprintf(stderr, "rapport: cannot create the state connection: check RAPPORT_STATE_URL\n");
		return false;
	}
	struct jobs_deps jd = {
		.base = app->base, .state = app->state, .analysis = app->analysis,
		.scripts = app->scripts, .db = app->db,
	};
	struct jobs_config jc = {
		.share = cfg->warm_share, .upstream_cap = cfg->llm_max_in_flight,
		.lease_s = cfg->warm_lease_s, .poll_ms = 1000,
		.every_s = local ? 0 : cfg->warm_every_s, .top = cfg->warm_top,
		.own_jobs_only = local,
	};
	app->jobs = jobs_create(&jd, &jc);
	return true;
}

/* Votes on insights, on the state connection (made first). */
static void
app_start_feedback(struct app *app)
{
	struct feedback_deps fd = {
		.base = app->base, .state = app->state, .db = app->db, .scripts = app->scripts,
	};
	app->feedback = feedback_create(&fd);
}

/* The console's state connection and feedback, on its first feedback(). */
static feedback *
console_open_feedback(void *arg)
{
	struct app *app = arg;
	if (!app->state)
		app->state = state_create(app->base, app->cfg.state_url, app->cfg.db_timeout_ms);
	if (app->state && !app->feedback)
		app_start_feedback(app);
	return app->feedback;
}

static int
cmd_serve(struct app *app)
{
	struct config *cfg = &app->cfg;
	if (!app_start_core(app))
		return 1;
	/* sql/schema.sql's triggers NOTIFY the id of every contact whose rows
	 * change. */
	app->listener = db_listen_create(app->base, cfg->database_url, "rapport_contact_changed",
	                                 on_contact_changed, on_listen_reset, app);
	if (!app->listener) {
		fprintf(stderr, "rapport: cannot create the invalidation listener\n");
		return 1;
	}
	if (!app_start_jobs(app, false))
		return 1;
	app_start_feedback(app);
	struct http_deps hd = {
		.base = app->base, .cfg = cfg, .analysis = app->analysis, .scripts = app->scripts,
		.db = app->db, .llm = app->llm, .cache = app->cache, .limiter = app->limiter,
		.breaker = app->breaker, .acct = app->acct, .state = app->state, .jobs = app->jobs,
		.feedback = app->feedback,
	};
	char *err = NULL;
	app->http = http_server_create(&hd, &err);
	if (!app->http) {
		log_event(LOG_ERROR, "cannot start the HTTP API", LOG_S("error", err), LOG_END);
		fprintf(stderr, "rapport: %s\n", err);
		free(err);
		return 1;
	}
	struct admin_deps dd = {
		.base = app->base, .path = cfg->admin_socket, .cache = app->cache,
		.scripts = app->scripts, .analysis = app->analysis, .db = app->db, .llm = app->llm,
		.http = app->http, .feedback = app->feedback,
	};
	if (*cfg->admin_socket && !(app->admin = admin_create(&dd, &err))) {
		log_event(LOG_ERROR, "cannot open the admin socket", LOG_S("error", err), LOG_END);
		fprintf(stderr, "rapport: %s\n", err);
		free(err);
		return 1;
	}
	char lib[4096];
	snprintf(lib, sizeof lib, "%s/lib", cfg->scripts_dir);
	const char *dirs[] = { cfg->scripts_dir, lib, cfg->prompts_dir, NULL };
	app->watch = watch_create(app->base, dirs, reload_scripts, app);
	app->sig_int = evsignal_new(app->base, SIGINT, on_signal, app);
	app->sig_term = evsignal_new(app->base, SIGTERM, on_signal, app);
	app->sig_hup = evsignal_new(app->base, SIGHUP, on_signal, app);
	event_add(app->sig_int, NULL);
	event_add(app->sig_term, NULL);
	event_add(app->sig_hup, NULL);

	if (cfg->n_api_keys == 0)
		log_event(LOG_WARN, "RAPPORT_API_KEYS is empty: the API accepts every client", LOG_END);
	/* The key itself is never logged, only whether there is one. */
	log_event(LOG_INFO, "rapport serving", LOG_S("listen", cfg->listen),
	          LOG_S("upstream", cfg->openai_base_url),
	          LOG_S("upstream_key", cfg->openai_api_key && *cfg->openai_api_key ? "set" : "unset"),
	          LOG_S("model", cfg->model), LOG_S("scripts", cfg->scripts_dir),
	          LOG_S("prompts", cfg->prompts_dir), LOG_I("cache_bytes", cfg->cache_bytes),
	          LOG_I("db_pool", cfg->db_pool_size), LOG_END);
	event_base_dispatch(app->base);
	return 0;
}

/* The commands a person runs by hand next to `make run` take its database
 * and upstream (var/run/env) when nothing names a database: no
 * DATABASE_URL, no --database-url, no config file. */
static void
use_run_env(const char *cmd, int nargs, char **args)
{
	if (strcmp(cmd, "console") != 0 && strcmp(cmd, "analyze") != 0 && strcmp(cmd, "check") != 0)
		return;
	if (getenv("DATABASE_URL") || getenv("RAPPORT_CONFIG"))
		return;
	for (int i = 0; i < nargs; i++)
		if (strncmp(args[i], "--database-url", 14) == 0 || strncmp(args[i], "--config", 8) == 0)
			return;
	char *note = NULL;
	if (run_env_apply(RUN_ENV_FILE, &note) && note)
		fprintf(stderr, "%s\n", note);
	free(note);
}

/* libpq takes a string that is neither a URI nor key=value pairs as a
 * database name and falls back to the default socket: "localhost:5432/crm"
 * would then fail later with a confusing message about /var/run/postgresql.
 * Refuse it at start. */
static bool
database_url_ok(const char *url)
{
	if (strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0)
		return true;
	if (strchr(url, '=')) {
		char *perr = NULL;
		PQconninfoOption *o = PQconninfoParse(url, &perr);
		PQconninfoFree(o);
		if (o) {
			PQfreemem(perr);
			return true;
		}
		fprintf(stderr, "rapport: DATABASE_URL does not parse: %s", perr ? perr : "invalid\n");
		PQfreemem(perr);
		return false;
	}
	fprintf(stderr, "rapport: DATABASE_URL is neither a URI nor key=value pairs: \"%s\".\n"
	                "  Use postgresql://USER@HOST:PORT/DBNAME or host=HOST port=PORT dbname=DBNAME "
	                "user=USER\n",
	        url);
	return false;
}

/* Removes a command's own boolean flag from args (before config_load sees
 * it as unknown); *on becomes false when it was there. */
static int
take_flag(int nargs, char **args, const char *flag, bool *on)
{
	int n = 0;
	for (int i = 0; i < nargs; i++) {
		if (strcmp(args[i], flag) == 0)
			*on = false;
		else
			args[n++] = args[i];
	}
	return n;
}

struct analyze_ctx {
	struct app *app;
	int status;
};

static void
on_analyze_reply(void *arg, const struct analysis_reply *r)
{
	struct analyze_ctx *ac = arg;
	ac->status = r->status;
	if (r->status == 200) {
		fwrite(r->body, 1, r->body_len, stdout);
		fputc('\n', stdout);
	} else {
		json_t *e = json_pack("{s:{s:s,s:s,s:i}}", "error", "code", r->error_code, "message",
		                      r->error_message ? r->error_message : "", "status", r->status);
		char *t = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER);
		puts(t);
		free(t);
		json_decref(e);
		if (r->error_code && strcmp(r->error_code, "database_unavailable") == 0)
			fprintf(stderr, "rapport: for the demo's database, start 'make run' (analyze reads its "
			                "var/run/env when DATABASE_URL is not set), or set DATABASE_URL\n");
	}
	event_base_loopbreak(ac->app->base);
}

static int
cmd_analyze(struct app *app, char **args, int nargs)
{
	int64_t id;
	if (nargs != 2 || !util_parse_i64(args[0], &id) || id <= 0) {
		fprintf(stderr, "usage: rapport analyze <contact id> <type>\n");
		return 2;
	}
	if (!app_start_core(app))
		return 1;
	struct analyze_ctx ac = { app, 0 };
	if (analysis_get(app->analysis, id, args[1], ANALYSIS_REFRESH, on_analyze_reply, NULL, &ac))
		event_base_dispatch(app->base);
	return ac.status == 200 ? 0 : 1;
}

/* Standalone, the console runs on what `analyze` builds; attached, on
 * nothing of this process but its settings. */
static int
cmd_console(struct app *app, const struct console_opts *co, char **args, int nargs)
{
	/* The REPL is the interface: log lines would only interleave with it,
	 * and its own messages carry every error (a database that is down
	 * once, with its cause, not once per retry). */
	if (app->cfg.log_level == LOG_INFO)
		log_set_level(LOG_ERROR);
	if (!console_args_ok(co, args, nargs))
		return 2;
	struct console_deps cd = { .cfg = &app->cfg };
	if (!co->attach) {
		if (!app_start_core(app))
			return 1;
		cd.base = app->base;
		cd.scripts = app->scripts;
		cd.db = app->db;
		cd.llm = app->llm;
		cd.cache = app->cache;
		cd.analysis = app->analysis;
		cd.limiter = app->limiter;
		cd.breaker = app->breaker;
		cd.acct = app->acct;
		/* feedback() reads rapport's own schema on a state connection of
		 * the console's own: opened by its first call, not for every
		 * `rapport console -e …`. app_stop destroys it. */
		cd.open_feedback = console_open_feedback;
		cd.open_arg = app;
	}
	return console_main(&cd, co, args, nargs);
}

/* Remote: nothing of this process but its settings. --local: the pipeline,
 * the state connection and a runner that takes only this job's items. */
static int
cmd_warm(struct app *app, const struct warm_opts *wo, int nrest)
{
	if (nrest != 0) {
		fprintf(stderr, "usage: rapport warm --top N | --contacts 1,2,3 [--types a,b] "
		                "[--url URL] [--key KEY] [--local]\n");
		return 2;
	}
	if (app->cfg.log_level == LOG_INFO)
		log_set_level(LOG_WARN);    /* the progress is the interface */
	if (!wo->local)
		return warm_main(&app->cfg, wo, NULL);
	if (!app_start_core(app) || !app_start_jobs(app, true))
		return 1;
	struct warm_local wl = {
		.base = app->base, .jobs = app->jobs, .state = app->state, .scripts = app->scripts,
	};
	return warm_main(&app->cfg, wo, &wl);
}

int
main(int argc, char **argv)
{
	/* SIGHUP means "reload" (systemd's ExecReload, right after start too):
	 * until serve installs that handler, ignore it rather than die. */
	signal(SIGHUP, SIG_IGN);
	/* Before any jansson use: the script host's meter counts its bytes. */
	luajson_init();
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	const char *cmd = argv[1];
	/* A peer resetting a socket must be an error return, not a signal. */
	signal(SIGPIPE, SIG_IGN);

	struct app app = { 0 };
	char **rest = NULL, *err = NULL;
	int nrest = 0, nargs = argc - 2;
	struct console_opts copts = { 0 };
	bool lint = true;
	struct warm_opts wopts = { 0 };
	if (strcmp(cmd, "warm") == 0 && !warm_take_flags(&nargs, argv + 2, &wopts, &err)) {
		fprintf(stderr, "rapport warm: %s\n", err);
		free(err);
		warm_opts_free(&wopts);
		return 2;
	}
	if (strcmp(cmd, "console") == 0)
		nargs = console_take_flags(nargs, argv + 2, &copts);
	if (strcmp(cmd, "check") == 0)
		nargs = take_flag(nargs, argv + 2, "--no-lint", &lint);
	use_run_env(cmd, nargs, argv + 2);
	if (!config_load(&app.cfg, nargs, argv + 2, &rest, &nrest, &err)) {
		fprintf(stderr, "rapport: %s\n", err);
		free(err);
		config_free(&app.cfg);
		return 2;
	}
	const char *lf = getenv("RAPPORT_LOG_FORMAT");
	if (lf && *lf && strcmp(lf, "json") != 0 && strcmp(lf, "text") != 0) {
		fprintf(stderr, "rapport: RAPPORT_LOG_FORMAT must be json or text, got \"%s\" (unset: text "
		                "on a terminal, JSON otherwise)\n", lf);
		free(rest);
		config_free(&app.cfg);
		return 2;
	}
	if (!database_url_ok(app.cfg.database_url)) {
		free(rest);
		config_free(&app.cfg);
		return 2;
	}
	log_set_level((enum log_level)app.cfg.log_level);
	/* The tools print their own report (check) or JSON (analyze): the
	 * server's info lines, and the script errors fixtures expect, would
	 * only bury it. RAPPORT_LOG_LEVEL=debug still shows everything. */
	if (app.cfg.log_level == LOG_INFO && strcmp(cmd, "check") == 0)
		log_set_level((enum log_level)(LOG_ERROR + 1));
	else if (app.cfg.log_level == LOG_INFO && strcmp(cmd, "analyze") == 0)
		log_set_level(LOG_ERROR);   /* its JSON carries the error */
	curl_global_init(CURL_GLOBAL_DEFAULT);

	int rc;
	if (strcmp(cmd, "serve") == 0 && nrest == 0)
		rc = cmd_serve(&app);
	else if (strcmp(cmd, "check") == 0 && nrest == 0)
		rc = check_run(&app.cfg, &default_limits, lint);
	else if (strcmp(cmd, "analyze") == 0)
		rc = cmd_analyze(&app, rest, nrest);
	else if (strcmp(cmd, "console") == 0)
		rc = cmd_console(&app, &copts, rest, nrest);
	else if (strcmp(cmd, "warm") == 0)
		rc = cmd_warm(&app, &wopts, nrest);
	else {
		fprintf(stderr, "rapport: unknown command or extra arguments: %s\n%s", cmd, usage);
		rc = 2;
	}
	app_stop(&app);
	curl_global_cleanup();
	free(rest);
	warm_opts_free(&wopts);
	config_free(&app.cfg);
	return rc;
}
