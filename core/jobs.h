/*
 * jobs — warm jobs: pre-generate analyses for a list of contacts or the
 * "top N" of the named query warm_candidates, in a background lane.
 *
 * A job and its items (contact × type) live in rapport's own schema
 * (state.h: rapport.jobs, rapport.job_items), so every instance on the same
 * state database shares them: each runner claims a few pending items at a
 * time with FOR UPDATE SKIP LOCKED and a lease it renews while it works, so
 * an item is done by one instance; an item whose lease lapsed (its instance
 * died) is claimed again, and a restart resumes what was left. A runner has
 * at most `slots` items out at once: ceil(RAPPORT_WARM_SHARE × the upstream
 * in-flight cap), at least 1, so warm items never hold more than their
 * share of the upstream. Each item is analysis_get(…, ANALYSIS_WARM, …):
 * "hit" → skipped fresh, "revalidated" → skipped revalidated,
 * "miss"/"coalesced" → done, an error → failed (its message kept).
 *
 * Data flow:
 *   POST /v1/warm (http_jobs.c), the periodic timer or `rapport warm
 *   --local` ─► jobs_start(): warm_candidates on the scripts' read-only
 *   pool when "top" ─► one INSERT of the job and its items ─► 202
 *   runner: claim (state db) ─► analysis_get per item ─► record its
 *   outcome ─► close the job when no item is open ─► claim again.
 *   GET/DELETE read or cancel a job through the state db.
 *
 * Owns the runner's items in flight, the operations (jobs_op) not yet
 * answered, and its timers. jobs_destroy() cancels all of it; items still
 * leased in the database are taken again once their lease lapses.
 */
#ifndef RAPPORT_JOBS_H
#define RAPPORT_JOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "analysis.h"
#include "db.h"
#include "metrics.h"
#include "script.h"
#include "state.h"

struct event_base;
typedef struct jobs jobs;
typedef struct jobs_op jobs_op;

/* Caps on one request (400 beyond them). */
#define JOBS_MAX_CONTACTS 1000     /* "contacts": ids in one request */
#define JOBS_MAX_TOP      10000    /* "top": N */
#define JOBS_MAX_TYPES    64
#define JOBS_MAX_ATTEMPTS 3        /* claims of one item before it is failed */
#define JOBS_LIST_MAX     100      /* GET /v1/jobs?limit= */

struct jobs_deps {
	struct event_base *base;
	state_db *state;
	analysis *analysis;
	script_registry *scripts;
	db_pool *db;                 /* the scripts' read-only pool: warm_candidates */
};

struct jobs_config {
	double share;                /* RAPPORT_WARM_SHARE (0.25) */
	int upstream_cap;            /* RAPPORT_LLM_MAX_IN_FLIGHT */
	int lease_s;                 /* RAPPORT_WARM_LEASE_S (30) */
	int poll_ms;                 /* how often an idle runner looks for items (1000) */
	int every_s;                 /* RAPPORT_WARM_EVERY (0 = no periodic job) */
	int top;                     /* RAPPORT_WARM_TOP: N of the periodic job */
	const char *owner;           /* this instance's name in leases; NULL = host:pid */
	bool own_jobs_only;          /* claim nothing until jobs_run_only() (`warm --local`) */
};

/* What a job is asked to do (the body of POST /v1/warm). */
struct jobs_spec {
	int64_t *contacts;           /* distinct ids, or NULL with top > 0 */
	int ncontacts;
	int top;
	char **types;                /* distinct, loaded; NULL = every loaded type */
	int ntypes;
	const char *origin;          /* "api", "cli", "periodic" (static string) */
};

/* Parses and checks a request body. known are the loaded type names.
 * false with *code ("invalid_body", "unknown_analysis_type") and msg set. */
bool jobs_spec_parse(const char *body, size_t len, const char *const *known, int nknown,
                     struct jobs_spec *out, const char **code, char *msg, size_t msglen);
void jobs_spec_free(struct jobs_spec *spec);

/* Pure helpers (unit tested). */
int jobs_slots(double share, int upstream_cap);
/* Seconds left at the rate so far: completed items in elapsed_s, `left`
 * still open. -1 when there is no rate yet; 0 when nothing is left. */
long jobs_eta_s(long completed, long left, double elapsed_s);

/* The answer to an operation. doc (borrowed, only during the call) is
 * {"job":{…}} or {"jobs":[…]} when status is 200 or 202. */
struct jobs_reply {
	int status;
	const char *code;            /* on errors */
	const char *message;
	json_t *doc;
	int64_t job_id;              /* the job's id, when there is one */
};
typedef void jobs_reply_cb(void *arg, const struct jobs_reply *r);

jobs *jobs_create(const struct jobs_deps *deps, const struct jobs_config *cfg);
/* Ops are dropped without their callbacks; items in flight are left to
 * their lease. NULL is a no-op. */
void jobs_destroy(jobs *j);

/* Each replies through cb exactly once: before returning (then the result
 * is NULL) or later through the loop (then until cb runs the op may be
 * cancelled with jobs_op_cancel, and cb will not run). */
jobs_op *jobs_start(jobs *j, struct jobs_spec *spec, jobs_reply_cb *cb, void *arg);  /* takes spec */
jobs_op *jobs_get(jobs *j, int64_t id, jobs_reply_cb *cb, void *arg);
jobs_op *jobs_list(jobs *j, int limit, jobs_reply_cb *cb, void *arg);
jobs_op *jobs_cancel(jobs *j, int64_t id, jobs_reply_cb *cb, void *arg);
void jobs_op_cancel(jobs_op *op);

/* The loaded types, for jobs_spec_parse (a NULL-terminated array the
 * caller frees with free(); names borrowed from the registry). */
const char **jobs_loaded_types(script_registry *r, int *n);

/* A graceful stop (SIGTERM): claim nothing more, and hand the items out
 * now back to the database at once (pending again, the attempt not
 * counted) so another server takes them without waiting for the lease. */
void jobs_drain(jobs *j);
/* Claims this job's items only, from now on (`rapport warm --local`). */
void jobs_run_only(jobs *j, int64_t id);
int jobs_slot_count(const jobs *j);
/* rapport_warm_* families for /metrics. */
void jobs_metrics(const jobs *j, metrics *m);

#endif
