/*
 * jobs — warm jobs on rapport's state database (see jobs.h).
 *
 * Three kinds of work live here, each owning what it sends:
 *   - ops (struct jobs_op): one request's statements — start (candidates
 *     on the scripts' pool, then the INSERT, then the document), get, list,
 *     cancel — answered through the caller's callback exactly once;
 *   - items (struct run_item): one claimed contact × type, from the
 *     analysis call through recording its outcome to closing its job;
 *   - the runner's own statements: claim, and the beat (renew our leases,
 *     fail items whose lease lapsed too often, close finished jobs, count
 *     jobs by state for /metrics), plus the periodic job's op.
 *
 * Exactly once: an item is claimed FOR UPDATE SKIP LOCKED by one runner,
 * which holds its lease (renewed every lease/3) while the analysis runs;
 * its outcome is recorded only `WHERE lease_owner = us AND state =
 * 'running'`, so a runner that lost its lease (stalled past it) cannot
 * record over the one that took the item again. A job is closed by
 * whichever runner records its last open item (the statement that checks
 * runs after that runner's own record committed, so the last one sees all).
 *
 * The state database down mid-job: the item's outcome cannot be recorded;
 * the item is freed here and, its lease lapsing, claimed again later (then
 * usually a cache hit, so "fresh").
 */
#include "jobs.h"
#include "log.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include <event2/event.h>

/* ---- SQL ------------------------------------------------------------------ */

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* One job document per row; the caller adds WHERE/GROUP BY. */
#define DOC_SELECT \
	"SELECT j.id, j.state, j.origin, j.total, array_to_json(j.types)::text, j.spec::text," \
	"       j.error, " TS("j.created_at") ", " TS("j.started_at") ", " TS("j.finished_at") "," \
	"       count(i.job) FILTER (WHERE i.state = 'done')," \
	"       count(i.job) FILTER (WHERE i.state = 'fresh')," \
	"       count(i.job) FILTER (WHERE i.state = 'revalidated')," \
	"       count(i.job) FILTER (WHERE i.state = 'failed')," \
	"       count(i.job) FILTER (WHERE i.state = 'cancelled')," \
	"       count(i.job) FILTER (WHERE i.state = 'running')," \
	"       count(i.job) FILTER (WHERE i.state = 'pending')," \
	"       extract(epoch FROM coalesce(j.finished_at, now()) - j.started_at)::float8,"

static const char sql_get[] =
	DOC_SELECT
	"       (SELECT coalesce(json_agg(json_build_object('contact', f.contact, 'type', f.type,"
	"                                 'error', f.outcome) ORDER BY f.contact, f.type), '[]')::text"
	"          FROM (SELECT contact, type, outcome FROM rapport.job_items"
	"                 WHERE job = j.id AND state = 'failed'"
	"                 ORDER BY contact, type LIMIT 20) f)"
	"  FROM rapport.jobs j LEFT JOIN rapport.job_items i ON i.job = j.id"
	" WHERE j.id = $1 GROUP BY j.id";

static const char sql_list[] =
	DOC_SELECT " NULL"
	"  FROM rapport.jobs j LEFT JOIN rapport.job_items i ON i.job = j.id"
	" WHERE j.id IN (SELECT id FROM rapport.jobs ORDER BY id DESC LIMIT $1)"
	" GROUP BY j.id ORDER BY j.id DESC";

/* $1 origin, $2 spec, $3 types[], $4 total, $5 contacts[], $6 period slot.
 * A periodic job whose slot exists already inserts nothing. */
static const char sql_insert[] =
	"WITH j AS ("
	"  INSERT INTO rapport.jobs (state, origin, spec, types, total, period_slot, started_at,"
	"                            finished_at)"
	"  SELECT CASE WHEN $4::int = 0 THEN 'done' ELSE 'queued' END, $1, $2::jsonb, $3::text[],"
	"         $4::int, $6::bigint, CASE WHEN $4::int = 0 THEN now() END,"
	"         CASE WHEN $4::int = 0 THEN now() END"
	"  ON CONFLICT (period_slot) WHERE period_slot IS NOT NULL DO NOTHING"
	"  RETURNING id),"
	" i AS (INSERT INTO rapport.job_items (job, contact, type)"
	"       SELECT j.id, c, t FROM j, unnest($5::bigint[]) c, unnest($3::text[]) t)"
	"SELECT id FROM j";

/* $1 owner, $2 how many, $3 max attempts, $4 lease seconds, $5 only this
 * job (NULL: any). */
static const char sql_claim[] =
	"WITH c AS ("
	"  SELECT i.job, i.contact, i.type FROM rapport.job_items i"
	"    JOIN rapport.jobs j ON j.id = i.job AND j.state IN ('queued', 'running')"
	"   WHERE (i.state = 'pending' OR (i.state = 'running' AND i.lease_until < now()))"
	"     AND i.attempts < $3::int AND ($5::bigint IS NULL OR i.job = $5::bigint)"
	"   ORDER BY i.job, i.contact, i.type"
	"   LIMIT $2::int"
	"   FOR UPDATE OF i SKIP LOCKED),"
	" s AS (UPDATE rapport.jobs SET state = 'running', started_at = coalesce(started_at, now())"
	"        WHERE state = 'queued' AND id IN (SELECT job FROM c))"
	"UPDATE rapport.job_items i SET state = 'running', attempts = i.attempts + 1,"
	"       lease_owner = $1, lease_until = now() + make_interval(secs => $4::int)"
	"  FROM c WHERE i.job = c.job AND i.contact = c.contact AND i.type = c.type"
	" RETURNING i.job, i.contact, i.type";

/* $1 job, $2 contact, $3 type, $4 state, $5 outcome, $6 owner. */
static const char sql_record[] =
	"UPDATE rapport.job_items SET state = $4, outcome = $5, lease_owner = NULL,"
	"       lease_until = NULL, done_by = $6, finished_at = now()"
	" WHERE job = $1 AND contact = $2 AND type = $3 AND lease_owner = $6 AND state = 'running'";

/* $1 a job, or NULL for every open one: closes jobs with no open item. */
static const char sql_close[] =
	"UPDATE rapport.jobs j SET"
	"       state = CASE WHEN j.total > 0 AND NOT EXISTS (SELECT 1 FROM rapport.job_items x"
	"                     WHERE x.job = j.id AND x.state <> 'failed') THEN 'failed' ELSE 'done' END,"
	"       finished_at = now(), started_at = coalesce(j.started_at, now())"
	" WHERE j.state IN ('queued', 'running') AND ($1::bigint IS NULL OR j.id = $1::bigint)"
	"   AND NOT EXISTS (SELECT 1 FROM rapport.job_items i"
	"                    WHERE i.job = j.id AND i.state IN ('pending', 'running'))"
	" RETURNING j.id, j.state";

/* $1 job: cancels it and its open items; says whether it did. */
static const char sql_cancel[] =
	"WITH j AS (UPDATE rapport.jobs SET state = 'cancelled', finished_at = now()"
	"            WHERE id = $1 AND state IN ('queued', 'running') RETURNING id),"
	" i AS (UPDATE rapport.job_items SET state = 'cancelled', lease_owner = NULL,"
	"              lease_until = NULL, finished_at = now()"
	"        WHERE job IN (SELECT id FROM j) AND state IN ('pending', 'running'))"
	"SELECT (SELECT count(*) FROM j), (SELECT state FROM rapport.jobs WHERE id = $1)";

/* $1 owner, $2 lease seconds, $3 jobs[], $4 contacts[], $5 types[]: the
 * items this runner has out now, and only those. An item whose claim or
 * record was lost with the connection is ours in the table but not here:
 * its lease must lapse so that it is claimed again. */
static const char sql_renew[] =
	"UPDATE rapport.job_items i SET lease_until = now() + make_interval(secs => $2::int)"
	"  FROM unnest($3::bigint[], $4::bigint[], $5::text[]) AS k(job, contact, type)"
	" WHERE i.job = k.job AND i.contact = k.contact AND i.type = k.type"
	"   AND i.lease_owner = $1 AND i.state = 'running'";

/* $1 owner, $2 jobs[], $3 contacts[], $4 types[]: hands the items this
 * runner has out back (a graceful stop), without counting the attempt. */
static const char sql_release[] =
	"UPDATE rapport.job_items i SET state = 'pending', lease_owner = NULL, lease_until = NULL,"
	"       attempts = greatest(i.attempts - 1, 0)"
	"  FROM unnest($2::bigint[], $3::bigint[], $4::text[]) AS k(job, contact, type)"
	" WHERE i.job = k.job AND i.contact = k.contact AND i.type = k.type"
	"   AND i.lease_owner = $1 AND i.state = 'running'";

/* $1 max attempts. */
static const char sql_give_up[] =
	"UPDATE rapport.job_items SET state = 'failed',"
	"       outcome = 'abandoned after ' || attempts || ' attempts: the instance running it "
	"stopped each time (its lease lapsed)',"
	"       lease_owner = NULL, lease_until = NULL, finished_at = now()"
	" WHERE state = 'running' AND lease_until < now() AND attempts >= $1::int";

static const char sql_stats[] = "SELECT state, count(*) FROM rapport.jobs GROUP BY state";

/* ---- structures ----------------------------------------------------------- */

enum op_kind { OP_START, OP_GET, OP_LIST, OP_CANCEL };

struct jobs_op {
	jobs *j;
	enum op_kind kind;
	jobs_reply_cb *cb;
	void *arg;
	struct jobs_spec spec;
	int64_t id;
	int limit;
	int64_t period_slot;         /* > 0: the periodic job of this slot */
	db_query *q;
	state_stmt *st;
	LIST_ENTRY(jobs_op) link;
};

enum item_phase { I_RUNNING, I_RECORDING, I_CLOSING };

struct run_item {
	jobs *j;
	int64_t job, contact;
	char type[72];
	enum item_phase phase;
	analysis_wait *w;
	state_stmt *st;
	LIST_ENTRY(run_item) link;
};

enum { OUT_DONE, OUT_FRESH, OUT_REVALIDATED, OUT_FAILED, OUT_CANCELLED, OUT_UNRECORDED, OUT_N };
static const char *const out_names[OUT_N] = {
	"done", "fresh", "revalidated", "failed", "cancelled", "unrecorded",
};
static const char *const job_states[] = { "queued", "running", "done", "cancelled", "failed" };
#define NJOB_STATES 5

enum beat_step { B_RENEW, B_GIVE_UP, B_CLOSE, B_STATS, B_IDLE };

struct jobs {
	struct jobs_deps d;
	struct jobs_config c;
	char owner[160];
	int slots;
	int active;                  /* items whose analysis is out */
	bool more;                   /* the last claim was full: claim again soon */
	int claim_asked;             /* items the claim out asked for */
	int64_t only_job;            /* > 0: claim this job's items only; < 0: none; 0: any */
	bool draining;               /* stopping: claim nothing more */
	state_stmt *release_st;      /* the drain's hand-back */
	LIST_HEAD(, jobs_op) ops;
	LIST_HEAD(, run_item) items;
	state_stmt *claim_st;
	state_stmt *beat_st;
	enum beat_step beat;
	struct event *kick;          /* zero-delay claim */
	struct event *poll;          /* persistent: claim when idle */
	struct event *beat_timer;    /* persistent: lease renewal and upkeep */
	struct event *period_timer;  /* persistent, when every_s > 0 */
	int64_t period_done;         /* last slot this instance tried */
	bool period_running;
	long items_by_outcome[OUT_N];
	long jobs_started;
	long jobs_by_state[NJOB_STATES];
	bool stats_known;
};

static void claim(jobs *j);

/* ---- pure helpers --------------------------------------------------------- */

int
jobs_slots(double share, int upstream_cap)
{
	if (!(share > 0))
		return 1;
	if (share > 1)
		share = 1;
	double k = ceil(share * (upstream_cap > 0 ? upstream_cap : 1) - 1e-9);
	return k < 1 ? 1 : (int)k;
}

long
jobs_eta_s(long completed, long left, double elapsed_s)
{
	if (left <= 0)
		return 0;
	if (completed <= 0 || !(elapsed_s > 0))
		return -1;
	return (long)ceil(elapsed_s / (double)completed * (double)left);
}

static int
cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

void
jobs_spec_free(struct jobs_spec *s)
{
	free(s->contacts);
	for (int i = 0; i < s->ntypes; i++)
		free(s->types[i]);
	free(s->types);
	memset(s, 0, sizeof *s);
}

bool
jobs_spec_parse(const char *body, size_t len, const char *const *known, int nknown,
                struct jobs_spec *out, const char **code, char *msg, size_t msglen)
{
	memset(out, 0, sizeof *out);
	*code = "invalid_body";
	json_error_t e;
	json_t *doc = len ? json_loadb(body, len, JSON_REJECT_DUPLICATES, &e) : NULL;
	if (!doc || !json_is_object(doc)) {
		if (!len)
			snprintf(msg, msglen, "the body must be a JSON object such as {\"top\":100} or "
			         "{\"contacts\":[1,2,3]}, with optional \"types\":[…]");
		else if (!doc)
			snprintf(msg, msglen, "the body is not valid JSON: %s (line %d, column %d)", e.text,
			         e.line, e.column);
		else
			snprintf(msg, msglen, "the body must be a JSON object such as {\"top\":100} or "
			         "{\"contacts\":[1,2,3]}");
		json_decref(doc);
		return false;
	}
	const char *key;
	json_t *v;
	json_object_foreach(doc, key, v) {
		if (strcmp(key, "contacts") && strcmp(key, "top") && strcmp(key, "types")) {
			snprintf(msg, msglen, "unknown field \"%.64s\" (expected \"contacts\" or \"top\", "
			         "and optionally \"types\")", key);
			goto bad;
		}
	}
	json_t *contacts = json_object_get(doc, "contacts"), *top = json_object_get(doc, "top");
	json_t *types = json_object_get(doc, "types");
	if (!!contacts == !!top) {
		snprintf(msg, msglen, contacts ? "give either \"contacts\" or \"top\", not both"
		                               : "give \"contacts\" (a list of ids) or \"top\" (N)");
		goto bad;
	}
	if (top) {
		json_int_t n = json_is_integer(top) ? json_integer_value(top) : 0;
		if (!json_is_integer(top) || n < 1 || n > JOBS_MAX_TOP) {
			snprintf(msg, msglen, "\"top\" must be an integer from 1 to %d", JOBS_MAX_TOP);
			goto bad;
		}
		out->top = (int)n;
	} else {
		size_t n = json_is_array(contacts) ? json_array_size(contacts) : 0;
		if (!json_is_array(contacts) || n == 0) {
			snprintf(msg, msglen, "\"contacts\" must be a non-empty list of contact ids");
			goto bad;
		}
		if (n > JOBS_MAX_CONTACTS) {
			snprintf(msg, msglen, "too many contacts: %zu (at most %d a job; use \"top\" or "
			         "several jobs)", n, JOBS_MAX_CONTACTS);
			goto bad;
		}
		out->contacts = xcalloc(n, sizeof(int64_t));
		for (size_t i = 0; i < n; i++) {
			json_t *c = json_array_get(contacts, i);
			if (!json_is_integer(c) || json_integer_value(c) < 1) {
				snprintf(msg, msglen, "\"contacts\"[%zu] is not a positive integer contact id",
				         i);
				goto bad;
			}
			out->contacts[i] = json_integer_value(c);
		}
		qsort(out->contacts, n, sizeof(int64_t), cmp_i64);
		size_t k = 0;
		for (size_t i = 0; i < n; i++)
			if (k == 0 || out->contacts[k - 1] != out->contacts[i])
				out->contacts[k++] = out->contacts[i];
		out->ncontacts = (int)k;
	}
	if (types) {
		size_t n = json_is_array(types) ? json_array_size(types) : 0;
		if (!json_is_array(types) || n == 0 || n > JOBS_MAX_TYPES) {
			snprintf(msg, msglen, "\"types\" must be a list of 1 to %d analysis type names "
			         "(leave it out for every loaded type)", JOBS_MAX_TYPES);
			goto bad;
		}
		out->types = xcalloc(n, sizeof(char *));
		for (size_t i = 0; i < n; i++) {
			json_t *t = json_array_get(types, i);
			if (!json_is_string(t)) {
				snprintf(msg, msglen, "\"types\"[%zu] is not a string", i);
				goto bad;
			}
			const char *name = json_string_value(t);
			bool found = false;
			for (int k = 0; k < nknown && !found; k++)
				found = strcmp(known[k], name) == 0;
			if (!found) {
				*code = "unknown_analysis_type";
				snprintf(msg, msglen, "unknown analysis type \"%.64s\" (see /v1/analysis-types)",
				         name);
				goto bad;
			}
			bool dup = false;
			for (int k = 0; k < out->ntypes && !dup; k++)
				dup = strcmp(out->types[k], name) == 0;
			if (!dup)
				out->types[out->ntypes++] = xstrdup(name);
		}
	}
	json_decref(doc);
	return true;
bad:
	json_decref(doc);
	jobs_spec_free(out);
	return false;
}

const char **
jobs_loaded_types(script_registry *r, int *n)
{
	int count = script_registry_count(r);
	const char **names = xcalloc((size_t)count + 1, sizeof(char *));
	*n = 0;
	for (int i = 0; i < count; i++) {
		const char *name, *error;
		script *cur;
		script_registry_entry(r, i, &name, &cur, &error);
		if (cur)
			names[(*n)++] = name;
	}
	return names;
}

/* ---- job documents -------------------------------------------------------- */

static json_t *
col_str(const PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? json_null() : json_string(PQgetvalue(res, row, col));
}

static long
col_long(const PGresult *res, int row, int col)
{
	int64_t v = 0;
	if (!PQgetisnull(res, row, col))
		util_parse_i64(PQgetvalue(res, row, col), &v);
	return (long)v;
}

static json_t *
col_json(const PGresult *res, int row, int col)
{
	if (PQgetisnull(res, row, col))
		return json_null();
	json_t *v = json_loads(PQgetvalue(res, row, col), 0, NULL);
	return v ? v : json_null();
}

/* One row of DOC_SELECT as the API's job object. */
static json_t *
doc_from_row(const PGresult *res, int row)
{
	long total = col_long(res, row, 3);
	long done = col_long(res, row, 10), fresh = col_long(res, row, 11);
	long reval = col_long(res, row, 12), failed = col_long(res, row, 13);
	long cancelled = col_long(res, row, 14), running = col_long(res, row, 15);
	long pending = col_long(res, row, 16);
	const char *state = PQgetvalue(res, row, 1);
	bool open = strcmp(state, "queued") == 0 || strcmp(state, "running") == 0;
	long completed = done + fresh + reval + failed;
	double elapsed = PQgetisnull(res, row, 17) ? 0 : atof(PQgetvalue(res, row, 17));
	long eta = open ? jobs_eta_s(completed, pending + running, elapsed) : 0;
	json_t *job = json_pack("{s:I, s:s, s:o, s:o, s:o, s:I, s:I, s:I, s:{s:I, s:I}, s:I, s:I,"
	                        " s:I, s:I, s:o, s:o, s:o, s:o, s:o}",
	                        "id", (json_int_t)col_long(res, row, 0), "state", state,
	                        "origin", col_str(res, row, 2), "types", col_json(res, row, 4),
	                        "request", col_json(res, row, 5),
	                        "total", (json_int_t)total, "completed", (json_int_t)completed,
	                        "done", (json_int_t)done,
	                        "skipped", "fresh", (json_int_t)fresh, "revalidated", (json_int_t)reval,
	                        "failed", (json_int_t)failed, "cancelled", (json_int_t)cancelled,
	                        "running", (json_int_t)running, "pending", (json_int_t)pending,
	                        "eta_s", eta >= 0 ? json_integer(eta) : json_null(),
	                        "created_at", col_str(res, row, 7), "started_at", col_str(res, row, 8),
	                        "finished_at", col_str(res, row, 9), "error", col_str(res, row, 6));
	if (job && PQnfields(res) > 18 && !PQgetisnull(res, row, 18))
		json_object_set_new(job, "errors", col_json(res, row, 18));
	return job;
}

/* ---- ops -------------------------------------------------------------------- */

static jobs_op *
op_new(jobs *j, enum op_kind kind, jobs_reply_cb *cb, void *arg)
{
	jobs_op *op = xcalloc(1, sizeof *op);
	op->j = j;
	op->kind = kind;
	op->cb = cb;
	op->arg = arg;
	LIST_INSERT_HEAD(&j->ops, op, link);
	return op;
}

static void
op_free(jobs_op *op)
{
	LIST_REMOVE(op, link);
	if (op->q)
		db_query_cancel(op->q);
	if (op->st)
		state_cancel(op->st);
	jobs_spec_free(&op->spec);
	free(op);
}

static void
op_reply(jobs_op *op, int status, const char *code, const char *message, json_t *doc,
         int64_t id)
{
	struct jobs_reply r = { status, code, message, doc, id };
	jobs_reply_cb *cb = op->cb;
	void *arg = op->arg;
	op->q = NULL;
	op->st = NULL;
	op_free(op);
	if (cb)
		cb(arg, &r);
}

static void
op_state_down(jobs_op *op, const char *err)
{
	char msg[600];
	snprintf(msg, sizeof msg, "rapport's state database (RAPPORT_STATE_URL) is not available%s%s; "
	         "warm jobs wait for it, analyses are still served", err && *err ? ": " : "",
	         err ? err : "");
	op_reply(op, 503, "state_unavailable", msg, NULL, op->id);
}

/* Sends on the state db; on refusal answers 503 and returns false (op freed). */
static bool
op_send(jobs_op *op, const char *sql, int n, const char *const *params, state_cb *cb)
{
	op->st = state_send(op->j->d.state, sql, n, params, cb, op);
	if (op->st)
		return true;
	const char *err = "";
	state_status(op->j->d.state, &err);
	op_state_down(op, state_is_up(op->j->d.state) ? "its queue is full" : err);
	return false;
}

static void
on_doc(void *arg, const PGresult *res, const char *err)
{
	jobs_op *op = arg;
	op->st = NULL;
	if (!res) {
		op_state_down(op, err);
		return;
	}
	if (op->kind == OP_LIST) {
		json_t *list = json_array();
		for (int r = 0; r < PQntuples(res); r++)
			json_array_append_new(list, doc_from_row(res, r));
		json_t *doc = json_pack("{s:o}", "jobs", list);
		op_reply(op, 200, NULL, NULL, doc, 0);
		json_decref(doc);
		return;
	}
	if (PQntuples(res) != 1) {
		op_reply(op, 404, "job_not_found", "no such job", NULL, op->id);
		return;
	}
	json_t *doc = json_pack("{s:o}", "job", doc_from_row(res, 0));
	op_reply(op, op->kind == OP_START ? 202 : 200, NULL, NULL, doc, op->id);
	json_decref(doc);
}

static void
op_send_doc(jobs_op *op)
{
	char id[24];
	snprintf(id, sizeof id, "%lld", (long long)op->id);
	const char *p[] = { id };
	op_send(op, sql_get, 1, p, on_doc);
}

/* {"a","b"} with each element quoted, for a text[] parameter. */
static char *
text_array(char *const *v, int n)
{
	size_t cap = 3;
	for (int i = 0; i < n; i++)
		cap += 2 * strlen(v[i]) + 3;
	char *out = xcalloc(cap, 1), *p = out;
	*p++ = '{';
	for (int i = 0; i < n; i++) {
		if (i)
			*p++ = ',';
		*p++ = '"';
		for (const char *c = v[i]; *c; c++) {
			if (*c == '"' || *c == '\\')
				*p++ = '\\';
			*p++ = *c;
		}
		*p++ = '"';
	}
	*p++ = '}';
	return out;
}

static char *
int_array(const int64_t *v, int n)
{
	size_t cap = 3 + (size_t)n * 21;
	char *out = xcalloc(cap, 1), *p = out;
	*p++ = '{';
	for (int i = 0; i < n; i++)
		p += snprintf(p, cap - (size_t)(p - out), "%s%lld", i ? "," : "", (long long)v[i]);
	*p++ = '}';
	return out;
}

static void
on_inserted(void *arg, const PGresult *res, const char *err)
{
	jobs_op *op = arg;
	op->st = NULL;
	if (!res) {
		char msg[600];
		snprintf(msg, sizeof msg, "cannot create the job in the state database: %s", err);
		op_reply(op, 503, "state_unavailable", msg, NULL, 0);
		return;
	}
	if (PQntuples(res) != 1) {
		op_reply(op, 409, "job_exists", "this period's job was created by another instance",
		         NULL, 0);
		return;
	}
	op->id = col_long(res, 0, 0);
	op->j->jobs_started++;
	log_event(LOG_INFO, "warm job created", LOG_I("job", op->id), LOG_S("origin", op->spec.origin),
	          LOG_I("contacts", op->spec.ncontacts), LOG_I("types", op->spec.ntypes), LOG_END);
	struct timeval zero = { 0, 0 };
	evtimer_add(op->j->kick, &zero);
	op_send_doc(op);
}

/* The contacts are known: one INSERT of the job and its items. False when
 * the state db refused it (op answered and freed). */
static bool
op_insert(jobs_op *op)
{
	struct jobs_spec *s = &op->spec;
	json_t *spec = s->top ? json_pack("{s:i}", "top", s->top) : json_pack("{s:[]}", "contacts");
	if (!s->top) {
		json_t *list = json_object_get(spec, "contacts");
		for (int i = 0; i < s->ncontacts; i++)
			json_array_append_new(list, json_integer(s->contacts[i]));
	}
	char *spec_text = json_dumps(spec, JSON_COMPACT);
	json_decref(spec);
	char *types = text_array(s->types, s->ntypes);
	char *contacts = int_array(s->contacts, s->ncontacts);
	char total[24], slot[24];
	snprintf(total, sizeof total, "%lld", (long long)s->ncontacts * s->ntypes);
	snprintf(slot, sizeof slot, "%lld", (long long)op->period_slot);
	const char *p[] = { s->origin, spec_text, types, total, contacts,
	                    op->period_slot > 0 ? slot : NULL };
	bool sent = op_send(op, sql_insert, 6, p, on_inserted);
	free(spec_text);
	free(types);
	free(contacts);
	return sent;
}

static void
on_candidates(void *arg, const PGresult *res, const struct db_error *err)
{
	jobs_op *op = arg;
	op->q = NULL;
	if (!res) {
		char msg[600];
		snprintf(msg, sizeof msg, "the warm_candidates query failed: %s", err->message);
		op_reply(op, err->unavailable ? 503 : 500,
		         err->unavailable ? "database_unavailable" : "warm_candidates_failed", msg, NULL, 0);
		return;
	}
	int n = PQntuples(res);
	op->spec.contacts = xcalloc((size_t)n + 1, sizeof(int64_t));
	for (int r = 0; r < n; r++) {
		int64_t id;
		if (PQnfields(res) >= 1 && !PQgetisnull(res, r, 0) &&
		    util_parse_i64(PQgetvalue(res, r, 0), &id) && id > 0)
			op->spec.contacts[op->spec.ncontacts++] = id;
	}
	qsort(op->spec.contacts, (size_t)op->spec.ncontacts, sizeof(int64_t), cmp_i64);
	int k = 0;
	for (int i = 0; i < op->spec.ncontacts; i++)
		if (k == 0 || op->spec.contacts[k - 1] != op->spec.contacts[i])
			op->spec.contacts[k++] = op->spec.contacts[i];
	op->spec.ncontacts = k;
	op_insert(op);
}

/* jobs_start(), and the periodic job with its slot (> 0). */
static jobs_op *
start_op(jobs *j, struct jobs_spec *spec, int64_t period_slot, jobs_reply_cb *cb, void *arg)
{
	jobs_op *op = op_new(j, OP_START, cb, arg);
	op->spec = *spec;
	memset(spec, 0, sizeof *spec);
	op->period_slot = period_slot;
	if (!op->spec.origin)
		op->spec.origin = "api";
	if (!state_is_up(j->d.state)) {
		const char *err = "";
		state_status(j->d.state, &err);
		op_state_down(op, err);
		return NULL;
	}
	if (!op->spec.types) {
		int n;
		const char **names = jobs_loaded_types(j->d.scripts, &n);
		op->spec.types = xcalloc((size_t)n + 1, sizeof(char *));
		for (int i = 0; i < n; i++)
			op->spec.types[i] = xstrdup(names[i]);
		op->spec.ntypes = n;
		free(names);
		if (n == 0) {
			op_reply(op, 503, "no_analysis_types", "no analysis type is loaded", NULL, 0);
			return NULL;
		}
	}
	if (op->spec.top > 0) {
		const char *sql = script_registry_named_query(j->d.scripts, "warm_candidates");
		if (!sql) {
			op_reply(op, 500, "no_warm_candidates",
			         "scripts/lib/queries.lua has no warm_candidates query for \"top\"", NULL, 0);
			return NULL;
		}
		char n[16];
		snprintf(n, sizeof n, "%d", op->spec.top);
		const char *p[] = { n };
		op->q = db_query_send(j->d.db, sql, 1, p, on_candidates, op);
		if (!op->q) {
			op_reply(op, 503, "database_unavailable", "cannot send the warm_candidates query",
			         NULL, 0);
			return NULL;
		}
		return op;
	}
	return op_insert(op) ? op : NULL;
}

jobs_op *
jobs_start(jobs *j, struct jobs_spec *spec, jobs_reply_cb *cb, void *arg)
{
	return start_op(j, spec, 0, cb, arg);
}

/* Sends the op's first statement; NULL when that was refused (answered). */
static jobs_op *
op_first(jobs_op *op, const char *sql, int n, const char *const *p, state_cb *cb)
{
	return op_send(op, sql, n, p, cb) ? op : NULL;
}

jobs_op *
jobs_get(jobs *j, int64_t id, jobs_reply_cb *cb, void *arg)
{
	jobs_op *op = op_new(j, OP_GET, cb, arg);
	op->id = id;
	char s[24];
	snprintf(s, sizeof s, "%lld", (long long)id);
	const char *p[] = { s };
	return op_first(op, sql_get, 1, p, on_doc);
}

jobs_op *
jobs_list(jobs *j, int limit, jobs_reply_cb *cb, void *arg)
{
	jobs_op *op = op_new(j, OP_LIST, cb, arg);
	if (limit < 1 || limit > JOBS_LIST_MAX)
		limit = 20;
	char s[16];
	snprintf(s, sizeof s, "%d", limit);
	const char *p[] = { s };
	return op_first(op, sql_list, 1, p, on_doc);
}

static void item_drop(struct run_item *it, int outcome);

static void
on_cancelled(void *arg, const PGresult *res, const char *err)
{
	jobs_op *op = arg;
	op->st = NULL;
	if (!res) {
		op_state_down(op, err);
		return;
	}
	long did = PQntuples(res) == 1 ? col_long(res, 0, 0) : 0;
	const char *was = PQntuples(res) == 1 && !PQgetisnull(res, 0, 1) ? PQgetvalue(res, 0, 1) : NULL;
	if (!did && !was) {
		op_reply(op, 404, "job_not_found", "no such job", NULL, op->id);
		return;
	}
	if (!did && strcmp(was, "cancelled") != 0) {
		char msg[96];
		snprintf(msg, sizeof msg, "the job has already finished (%s)", was);
		op_reply(op, 409, "job_finished", msg, NULL, op->id);
		return;
	}
	if (did) {
		log_event(LOG_INFO, "warm job cancelled", LOG_I("job", op->id), LOG_END);
		/* Our items of it: their analyses go on (and are cached), but
		 * nothing more is recorded or claimed for the job. */
		struct run_item *it, *next;
		for (it = LIST_FIRST(&op->j->items); it; it = next) {
			next = LIST_NEXT(it, link);
			if (it->job == op->id && it->phase == I_RUNNING)
				item_drop(it, OUT_CANCELLED);
		}
	}
	op->kind = OP_GET;
	op_send_doc(op);
}

jobs_op *
jobs_cancel(jobs *j, int64_t id, jobs_reply_cb *cb, void *arg)
{
	jobs_op *op = op_new(j, OP_CANCEL, cb, arg);
	op->id = id;
	char s[24];
	snprintf(s, sizeof s, "%lld", (long long)id);
	const char *p[] = { s };
	return op_first(op, sql_cancel, 1, p, on_cancelled);
}

void
jobs_op_cancel(jobs_op *op)
{
	if (op)
		op_free(op);
}

/* ---- the runner: items ----------------------------------------------------- */

static void
kick(jobs *j)
{
	struct timeval zero = { 0, 0 };
	evtimer_add(j->kick, &zero);
}

static void
item_free(struct run_item *it)
{
	if (it->w)
		analysis_wait_cancel(it->w);
	if (it->st)
		state_cancel(it->st);
	if (it->phase == I_RUNNING)
		it->j->active--;
	LIST_REMOVE(it, link);
	free(it);
}

/* Ends an item here (its slot freed); outcome is counted. */
static void
item_drop(struct run_item *it, int outcome)
{
	jobs *j = it->j;
	j->items_by_outcome[outcome]++;
	item_free(it);
	kick(j);
}

static void
on_item_closed(void *arg, const PGresult *res, const char *err)
{
	struct run_item *it = arg;
	it->st = NULL;
	for (int r = 0; res && r < PQntuples(res); r++)
		log_event(LOG_INFO, "warm job finished", LOG_I("job", col_long(res, r, 0)),
		          LOG_S("state", PQgetvalue(res, r, 1)), LOG_END);
	item_free(it);
}

static void
on_item_recorded(void *arg, const PGresult *res, const char *err)
{
	struct run_item *it = arg;
	jobs *j = it->j;
	it->st = NULL;
	if (!res) {
		log_event(LOG_WARN, "warm item not recorded", LOG_I("job", it->job),
		          LOG_I("contact", it->contact), LOG_S("type", it->type), LOG_S("error", err),
		          LOG_END);
		j->items_by_outcome[OUT_UNRECORDED]++;
		item_free(it);
		return;
	}
	it->phase = I_CLOSING;
	char job[24];
	snprintf(job, sizeof job, "%lld", (long long)it->job);
	const char *p[] = { job };
	it->st = state_send(j->d.state, sql_close, 1, p, on_item_closed, it);
	if (!it->st)
		item_free(it);    /* the beat's sweep closes the job later */
}

static void
on_item_reply(void *arg, const struct analysis_reply *r)
{
	struct run_item *it = arg;
	jobs *j = it->j;
	it->w = NULL;
	it->phase = I_RECORDING;
	j->active--;
	int out;
	char outcome[600];
	if (r->status != 200) {
		out = OUT_FAILED;
		snprintf(outcome, sizeof outcome, "%d %s: %s", r->status,
		         r->error_code ? r->error_code : "error",
		         r->error_message ? r->error_message : "");
	} else if (r->cache_status && strcmp(r->cache_status, "fallback") == 0) {
		/* A fallback answer is not the analysis, and is not cached. */
		out = OUT_FAILED;
		snprintf(outcome, sizeof outcome, "fallback: the upstream was unavailable");
	} else {
		const char *cs = r->cache_status ? r->cache_status : "miss";
		out = strcmp(cs, "hit") == 0 ? OUT_FRESH
		    : strcmp(cs, "revalidated") == 0 ? OUT_REVALIDATED : OUT_DONE;
		snprintf(outcome, sizeof outcome, "%s", cs);
	}
	j->items_by_outcome[out]++;
	char job[24], contact[24];
	snprintf(job, sizeof job, "%lld", (long long)it->job);
	snprintf(contact, sizeof contact, "%lld", (long long)it->contact);
	const char *p[] = { job, contact, it->type, out_names[out], outcome, j->owner };
	it->st = state_send(j->d.state, sql_record, 6, p, on_item_recorded, it);
	if (!it->st) {
		j->items_by_outcome[OUT_UNRECORDED]++;
		item_free(it);
	}
	kick(j);
}

static void
item_start(jobs *j, int64_t job, int64_t contact, const char *type)
{
	struct run_item *it = xcalloc(1, sizeof *it);
	it->j = j;
	it->job = job;
	it->contact = contact;
	snprintf(it->type, sizeof it->type, "%s", type);
	it->phase = I_RUNNING;
	j->active++;
	LIST_INSERT_HEAD(&j->items, it, link);
	/* A hit replies inside the call (and may free it by then). */
	analysis_wait *w = analysis_get(j->d.analysis, contact, type, ANALYSIS_WARM, on_item_reply,
	                                NULL, it);
	if (w)
		it->w = w;
}

static void
on_claimed(void *arg, const PGresult *res, const char *err)
{
	jobs *j = arg;
	j->claim_st = NULL;
	if (!res) {
		log_event(LOG_WARN, "warm claim failed", LOG_S("error", err), LOG_END);
		j->more = false;
		return;
	}
	int n = PQntuples(res);
	j->more = n > 0 && n >= j->claim_asked;
	for (int r = 0; r < n; r++)
		item_start(j, col_long(res, r, 0), col_long(res, r, 1), PQgetvalue(res, r, 2));
	if (j->more)
		kick(j);
}

static void
claim(jobs *j)
{
	if (j->claim_st || j->active >= j->slots || !state_is_up(j->d.state) || j->only_job < 0 ||
	    j->draining)
		return;
	char owner_n[16], attempts[16], lease[16], only[24];
	snprintf(only, sizeof only, "%lld", (long long)j->only_job);
	j->claim_asked = j->slots - j->active;
	snprintf(owner_n, sizeof owner_n, "%d", j->claim_asked);
	snprintf(attempts, sizeof attempts, "%d", JOBS_MAX_ATTEMPTS);
	snprintf(lease, sizeof lease, "%d", j->c.lease_s);
	const char *p[] = { j->owner, owner_n, attempts, lease, j->only_job ? only : NULL };
	j->claim_st = state_send(j->d.state, sql_claim, 5, p, on_claimed, j);
}

static void
on_kick(evutil_socket_t fd, short what, void *arg)
{
	claim(arg);
}

static void
on_poll(evutil_socket_t fd, short what, void *arg)
{
	claim(arg);
}

/* ---- the beat: leases, abandoned items, closing, stats --------------------- */

static void beat_next(jobs *j);

/* The keys of the items out now, as three array parameters; false when
 * there are none. The caller frees the three strings. */
static bool
running_keys(jobs *j, char **jobs_a, char **contacts_a, char **types_a)
{
	int n = 0;
	struct run_item *it;
	LIST_FOREACH(it, &j->items, link)
		n += it->phase == I_RUNNING;
	if (n == 0)
		return false;
	int64_t *jv = xcalloc((size_t)n, sizeof(int64_t));
	int64_t *cv = xcalloc((size_t)n, sizeof(int64_t));
	char **tv = xcalloc((size_t)n, sizeof(char *));
	int k = 0;
	LIST_FOREACH(it, &j->items, link) {
		if (it->phase != I_RUNNING)
			continue;
		jv[k] = it->job;
		cv[k] = it->contact;
		tv[k++] = it->type;
	}
	*jobs_a = int_array(jv, n);
	*contacts_a = int_array(cv, n);
	*types_a = text_array(tv, n);
	free(jv);
	free(cv);
	free(tv);
	return true;
}

static void
on_beat(void *arg, const PGresult *res, const char *err)
{
	jobs *j = arg;
	j->beat_st = NULL;
	if (!res) {
		j->beat = B_IDLE;
		return;
	}
	if (j->beat == B_CLOSE) {
		for (int r = 0; r < PQntuples(res); r++)
			log_event(LOG_INFO, "warm job finished", LOG_I("job", col_long(res, r, 0)),
			          LOG_S("state", PQgetvalue(res, r, 1)), LOG_END);
	} else if (j->beat == B_STATS) {
		memset(j->jobs_by_state, 0, sizeof j->jobs_by_state);
		for (int r = 0; r < PQntuples(res); r++)
			for (int k = 0; k < NJOB_STATES; k++)
				if (strcmp(PQgetvalue(res, r, 0), job_states[k]) == 0)
					j->jobs_by_state[k] = col_long(res, r, 1);
		j->stats_known = true;
	}
	j->beat++;
	beat_next(j);
}

static void
beat_next(jobs *j)
{
	char lease[16], attempts[16];
	snprintf(lease, sizeof lease, "%d", j->c.lease_s);
	snprintf(attempts, sizeof attempts, "%d", JOBS_MAX_ATTEMPTS);
	const char *give_up[] = { attempts }, *close[] = { NULL };
	switch (j->beat) {
	case B_RENEW: {
		char *ja, *ca, *ta;
		if (!running_keys(j, &ja, &ca, &ta)) {
			j->beat = B_GIVE_UP;
			beat_next(j);
			return;
		}
		const char *renew[] = { j->owner, lease, ja, ca, ta };
		j->beat_st = state_send(j->d.state, sql_renew, 5, renew, on_beat, j);
		free(ja);
		free(ca);
		free(ta);
		break;
	}
	case B_GIVE_UP:
		j->beat_st = state_send(j->d.state, sql_give_up, 1, give_up, on_beat, j);
		break;
	case B_CLOSE:
		j->beat_st = state_send(j->d.state, sql_close, 1, close, on_beat, j);
		break;
	case B_STATS:
		j->beat_st = state_send(j->d.state, sql_stats, 0, NULL, on_beat, j);
		break;
	case B_IDLE:
		return;
	}
	if (!j->beat_st)
		j->beat = B_IDLE;
}

static void
on_beat_timer(evutil_socket_t fd, short what, void *arg)
{
	jobs *j = arg;
	if (j->beat_st || !state_is_up(j->d.state))
		return;
	j->beat = B_RENEW;
	beat_next(j);
	claim(j);
}

/* The state db is up again (or for the first time): look for work now. */
static void
on_state_up(void *arg)
{
	jobs *j = arg;
	kick(j);
	if (!j->beat_st) {
		j->beat = B_RENEW;
		beat_next(j);
	}
}

/* ---- the periodic job -------------------------------------------------------- */

static void
on_period_reply(void *arg, const struct jobs_reply *r)
{
	jobs *j = arg;
	j->period_running = false;
	if (r->status == 202 || r->status == 409)
		return;         /* created, or another instance did */
	log_event(LOG_WARN, "periodic warm job not created", LOG_I("status", r->status),
	          LOG_S("error", r->message ? r->message : ""), LOG_END);
	j->period_done = 0; /* try this slot again at the next tick */
}

static void
on_period_timer(evutil_socket_t fd, short what, void *arg)
{
	jobs *j = arg;
	int64_t slot = util_wall_ms() / 1000 / j->c.every_s + 1;
	if (j->period_running || slot == j->period_done || !state_is_up(j->d.state))
		return;
	j->period_done = slot;
	j->period_running = true;
	/* The slot makes the INSERT a no-op on every instance but the first. */
	struct jobs_spec spec = { .top = j->c.top > 0 ? j->c.top : 100, .origin = "periodic" };
	start_op(j, &spec, slot, on_period_reply, j);
}

/* ---- lifecycle ----------------------------------------------------------------- */

jobs *
jobs_create(const struct jobs_deps *deps, const struct jobs_config *cfg)
{
	jobs *j = xcalloc(1, sizeof *j);
	j->d = *deps;
	j->c = *cfg;
	if (j->c.lease_s < 1)
		j->c.lease_s = 30;
	if (j->c.poll_ms < 10)
		j->c.poll_ms = 1000;
	j->slots = jobs_slots(cfg->share, cfg->upstream_cap);
	j->only_job = cfg->own_jobs_only ? -1 : 0;
	if (cfg->owner && *cfg->owner) {
		snprintf(j->owner, sizeof j->owner, "%s", cfg->owner);
	} else {
		char host[96] = "";
		gethostname(host, sizeof host - 1);
		snprintf(j->owner, sizeof j->owner, "%s:%d:%llx", host, (int)getpid(),
		         (unsigned long long)util_wall_ms());
	}
	LIST_INIT(&j->ops);
	LIST_INIT(&j->items);
	j->kick = evtimer_new(deps->base, on_kick, j);
	j->poll = event_new(deps->base, -1, EV_PERSIST, on_poll, j);
	j->beat_timer = event_new(deps->base, -1, EV_PERSIST, on_beat_timer, j);
	struct timeval poll = { j->c.poll_ms / 1000, (j->c.poll_ms % 1000) * 1000 };
	event_add(j->poll, &poll);
	int beat_ms = j->c.lease_s * 1000 / 3;
	struct timeval beat = { beat_ms / 1000, (beat_ms % 1000) * 1000 };
	event_add(j->beat_timer, &beat);
	if (j->c.every_s > 0) {
		j->period_timer = event_new(deps->base, -1, EV_PERSIST, on_period_timer, j);
		/* Ticks more often than the period: the first job comes soon after
		 * start, and the slot number keeps it to one a period. */
		int tick_s = j->c.every_s < 8 ? 1 : j->c.every_s / 4;
		if (tick_s > 60)
			tick_s = 60;
		struct timeval tick = { tick_s, 0 };
		event_add(j->period_timer, &tick);
	}
	if (deps->state)
		state_set_on_up(deps->state, on_state_up, j);
	if (state_is_up(deps->state))
		on_state_up(j);
	return j;
}

void
jobs_destroy(jobs *j)
{
	if (!j)
		return;
	if (j->d.state)
		state_set_on_up(j->d.state, NULL, NULL);
	jobs_op *op;
	while ((op = LIST_FIRST(&j->ops)))
		op_free(op);
	struct run_item *it;
	while ((it = LIST_FIRST(&j->items)))
		item_free(it);
	if (j->claim_st)
		state_cancel(j->claim_st);
	if (j->beat_st)
		state_cancel(j->beat_st);
	if (j->release_st)
		state_cancel(j->release_st);
	event_free(j->kick);
	event_free(j->poll);
	event_free(j->beat_timer);
	if (j->period_timer)
		event_free(j->period_timer);
	free(j);
}

static void
on_released(void *arg, const PGresult *res, const char *err)
{
	jobs *j = arg;
	j->release_st = NULL;
	log_event(res ? LOG_INFO : LOG_WARN, "warm items handed back",
	          LOG_S("count", res ? PQcmdTuples((PGresult *)res) : "0"),
	          LOG_S("error", err ? err : ""), LOG_END);
}

void
jobs_drain(jobs *j)
{
	if (!j || j->draining)
		return;
	j->draining = true;
	char *ja, *ca, *ta;
	if (running_keys(j, &ja, &ca, &ta)) {
		const char *p[] = { j->owner, ja, ca, ta };
		j->release_st = state_send(j->d.state, sql_release, 4, p, on_released, j);
		free(ja);
		free(ca);
		free(ta);
	}
	/* Their analyses go on to the end of the process (and are not
	 * recorded): another server takes the items now. */
	struct run_item *it, *next;
	for (it = LIST_FIRST(&j->items); it; it = next) {
		next = LIST_NEXT(it, link);
		if (it->phase == I_RUNNING)
			item_free(it);
	}
}

void
jobs_run_only(jobs *j, int64_t id)
{
	j->only_job = id;
	kick(j);
}

int
jobs_slot_count(const jobs *j)
{
	return j ? j->slots : 0;
}

void
jobs_metrics(const jobs *j, metrics *m)
{
	if (!j)
		return;
	metrics_family(m, "rapport_state_up",
	               "1 while rapport's state database is connected and migrated.", METRICS_GAUGE);
	metrics_int(m, state_is_up(j->d.state) ? 1 : 0, NULL);
	metrics_family(m, "rapport_warm_jobs",
	               "Warm jobs in the state database by state (as of the last beat).",
	               METRICS_GAUGE);
	for (int k = 0; k < NJOB_STATES; k++)
		metrics_int(m, j->jobs_by_state[k], "state", job_states[k], NULL);
	metrics_family(m, "rapport_warm_jobs_created_total", "Warm jobs this instance created.",
	               METRICS_COUNTER);
	metrics_int(m, j->jobs_started, NULL);
	metrics_family(m, "rapport_warm_items_total",
	               "Warm items this instance ran, by outcome (unrecorded: the state database "
	               "could not take the outcome).", METRICS_COUNTER);
	for (int k = 0; k < OUT_N; k++)
		metrics_int(m, j->items_by_outcome[k], "outcome", out_names[k], NULL);
	metrics_family(m, "rapport_warm_items_running", "Warm items whose analysis is out now.",
	               METRICS_GAUGE);
	metrics_int(m, j->active, NULL);
	metrics_family(m, "rapport_warm_slots",
	               "Warm items at most at once (RAPPORT_WARM_SHARE of the upstream cap).",
	               METRICS_GAUGE);
	metrics_int(m, j->slots, NULL);
}
