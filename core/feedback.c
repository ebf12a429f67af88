/*
 * feedback — votes on insights, their counts and their reasons (see
 * feedback.h).
 *
 * One struct feedback_op per submit or latest in progress, linked on the
 * feedback's list: it holds a copy of what it needs and at most one
 * statement out (the contact query on the scripts' pool, or one statement
 * on the state connection), and is freed by its callback or its cancel.
 *
 * The counts copy is an array of rows (type, version, up, down, last_at),
 * replaced whole by each read of rapport.feedback_counts. Statements on the
 * state connection run one at a time in order, so a read sent before a
 * vote answers before the vote's INSERT does: bumping the copy when the
 * INSERT answers, then reading again, never loses the vote.
 */
#include "feedback.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "util.h"

#define TICK_MS 1000
#define COUNTS_PER_TYPE 50        /* versions kept in memory per type */
#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

static const char sql_insert[] =
	"INSERT INTO rapport.feedback (contact_id, type, script_version, verdict, reason,"
	"                              generated_at, request_id, instance)"
	" VALUES ($1::bigint, $2, $3, $4, $5, $6::timestamptz, $7, $8)"
	" RETURNING id, contact_id, type, script_version, verdict, reason, "
	TS("generated_at") ", " TS("created_at") ", request_id";

/* The counts, bounded per type so no type can push another's out: the
 * COUNTS_PER_TYPE versions with the latest votes, each row with its type's
 * totals over all its versions (summed here, not from the rows kept). */
#define COUNTS_SQL(where)                                                                   \
	"SELECT type, script_version, up, down, " TS("last_at") ", type_up, type_down"         \
	"  FROM (SELECT type, script_version, up, down, last_at,"                                 \
	"               row_number() OVER (PARTITION BY type"                                     \
	"                                  ORDER BY last_at DESC NULLS LAST, script_version) AS n," \
	"               sum(up) OVER (PARTITION BY type) AS type_up,"                             \
	"               sum(down) OVER (PARTITION BY type) AS type_down"                          \
	"          FROM rapport.feedback_counts WHERE (up > 0 OR down > 0)" where ") c"           \
	" WHERE n <= " STR(COUNTS_PER_TYPE) " ORDER BY type, n"
#define STR_(x) #x
#define STR(x) STR_(x)

static const char sql_counts[] = COUNTS_SQL("");

static const char sql_type_counts[] = COUNTS_SQL(" AND type = $1");

static const char sql_latest[] =
	"SELECT verdict, script_version, reason, contact_id, " TS("created_at")
	"  FROM rapport.feedback WHERE type = $1 AND reason IS NOT NULL"
	" ORDER BY created_at DESC, id DESC LIMIT $2::int";

static const char *const reject_names[FEEDBACK_NREJECT] = {
	"bad_request", "too_large", "unknown_type", "unknown_contact", "unavailable", "error",
};

struct count_row {
	char type[65];
	char version[17];
	long long up, down;
	char last_at[32];
};

struct tally {                    /* up and down of a type */
	char type[65];
	long long up, down;
};

enum op_kind { OP_SUBMIT, OP_LATEST };

struct feedback_op {
	feedback *f;
	enum op_kind kind;
	feedback_reply_cb *cb;
	void *arg;
	db_query *q;
	state_stmt *st;
	char contact[24];
	char type[65];
	char verdict[8];
	char version[17];
	char *reason;
	char *generated_at;
	char *request_id;
	int n;
	json_t *latest;               /* latest: the reasons, while the counts are read */
	LIST_ENTRY(feedback_op) link;
};

struct feedback {
	struct feedback_deps d;
	struct event *tick;
	state_stmt *refresh_st;
	bool refresh_again;           /* a vote came while a read was out */
	bool loaded;
	double refreshed_ms;          /* monotonic, of the last read */
	int64_t as_of_wall;
	struct count_row *rows;       /* at most COUNTS_PER_TYPE per type, as read */
	int nrows;
	struct tally *totals;         /* each type's over all its versions */
	int ntotals;
	struct tally *votes;          /* this instance's stored votes, for metrics */
	int nvotes;
	long long rejected[FEEDBACK_NREJECT];
	char instance[128];
	LIST_HEAD(, feedback_op) ops;
};

/* ---- the counts ----------------------------------------------------------- */

static void counts_refresh(feedback *f);

/* The tally of type in *arr, added (zero) when create and not there. */
static struct tally *
tally_of(struct tally **arr, int *n, const char *type, bool create)
{
	for (int i = 0; i < *n; i++)
		if (strcmp((*arr)[i].type, type) == 0)
			return &(*arr)[i];
	if (!create)
		return NULL;
	*arr = xrealloc(*arr, (size_t)(*n + 1) * sizeof **arr);
	struct tally *t = &(*arr)[(*n)++];
	memset(t, 0, sizeof *t);
	snprintf(t->type, sizeof t->type, "%s", type);
	return t;
}

/* COUNTS_SQL's rows (type, script_version, up, down, last_at, type_up,
 * type_down): the rows, and each type's totals in *totals. */
static struct count_row *
count_rows(const PGresult *res, int *nrows, struct tally **totals, int *ntotals)
{
	int n = PQntuples(res);
	struct count_row *rows = n ? xcalloc((size_t)n, sizeof *rows) : NULL;
	*totals = NULL;
	*ntotals = 0;
	for (int i = 0; i < n; i++) {
		struct count_row *r = &rows[i];
		snprintf(r->type, sizeof r->type, "%s", PQgetvalue(res, i, 0));
		snprintf(r->version, sizeof r->version, "%s", PQgetvalue(res, i, 1));
		int64_t v;
		r->up = util_parse_i64(PQgetvalue(res, i, 2), &v) ? v : 0;
		r->down = util_parse_i64(PQgetvalue(res, i, 3), &v) ? v : 0;
		snprintf(r->last_at, sizeof r->last_at, "%s", PQgetvalue(res, i, 4));
		struct tally *t = tally_of(totals, ntotals, r->type, false);
		if (!t) {
			t = tally_of(totals, ntotals, r->type, true);
			t->up = util_parse_i64(PQgetvalue(res, i, 5), &v) ? v : 0;
			t->down = util_parse_i64(PQgetvalue(res, i, 6), &v) ? v : 0;
		}
	}
	*nrows = n;
	return rows;
}

static void
on_counts(void *arg, const PGresult *res, const char *err)
{
	feedback *f = arg;
	f->refresh_st = NULL;
	if (err) {
		log_event(LOG_WARN, "feedback counts not read", LOG_S("error", err), LOG_END);
	} else {
		int n, nt;
		struct tally *totals;
		struct count_row *rows = count_rows(res, &n, &totals, &nt);
		free(f->rows);
		f->rows = rows;
		f->nrows = n;
		free(f->totals);
		f->totals = totals;
		f->ntotals = nt;
		f->loaded = true;
		f->refreshed_ms = util_now_ms();
		f->as_of_wall = util_wall_ms();
	}
	if (f->refresh_again) {
		f->refresh_again = false;
		counts_refresh(f);
	}
}

/* Reads the counts again, or once more after the read that is out. */
static void
counts_refresh(feedback *f)
{
	if (f->refresh_st) {
		f->refresh_again = true;
		return;
	}
	f->refresh_st = state_send(f->d.state, sql_counts, 0, NULL, on_counts, f);
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	feedback *f = arg;
	if (!state_is_up(f->d.state) || f->refresh_st)
		return;
	if (!f->loaded || util_now_ms() - f->refreshed_ms >= FEEDBACK_REFRESH_MS)
		counts_refresh(f);
}

static struct count_row *
count_row(feedback *f, const char *type, const char *version)
{
	for (int i = 0; i < f->nrows; i++)
		if (strcmp(f->rows[i].type, type) == 0 && strcmp(f->rows[i].version, version) == 0)
			return &f->rows[i];
	/* A vote on a version not in the copy: added until the read that
	 * follows every vote trims the type to COUNTS_PER_TYPE again. */
	int of_type = 0;
	for (int i = 0; i < f->nrows; i++)
		of_type += strcmp(f->rows[i].type, type) == 0;
	if (of_type >= COUNTS_PER_TYPE + 16)
		return NULL;
	f->rows = xrealloc(f->rows, (size_t)(f->nrows + 1) * sizeof *f->rows);
	struct count_row *r = &f->rows[f->nrows++];
	memset(r, 0, sizeof *r);
	snprintf(r->type, sizeof r->type, "%s", type);
	snprintf(r->version, sizeof r->version, "%s", version);
	return r;
}

static json_t *
rate(long long up, long long down)
{
	return up + down ? json_real((double)up / (double)(up + down)) : json_null();
}

static json_t *
version_json(const char *version, bool current, long long up, long long down, const char *last_at)
{
	json_t *o = json_pack("{s:s, s:b, s:I, s:I}", "script_version", version, "current", current,
	                      "up", (json_int_t)up, "down", (json_int_t)down);
	json_object_set_new(o, "acceptance_rate", rate(up, down));
	json_object_set_new(o, "last_at", last_at && *last_at ? json_string(last_at) : json_null());
	return o;
}

/* The counts of one type: its totals, then the versions, the serving
 * one (may be NULL) first. */
static json_t *
type_counts(const struct count_row *rows, int nrows, const struct tally *total, const char *type,
            const char *current)
{
	json_t *versions = json_array();
	long long up = total ? total->up : 0, down = total ? total->down : 0;
	bool seen_current = false;
	if (current) {
		for (int i = 0; i < nrows; i++) {
			const struct count_row *r = &rows[i];
			if (strcmp(r->type, type) == 0 && strcmp(r->version, current) == 0) {
				json_array_append_new(versions, version_json(r->version, true, r->up, r->down,
				                                             r->last_at));
				seen_current = true;
			}
		}
		if (!seen_current)
			json_array_append_new(versions, version_json(current, true, 0, 0, NULL));
	}
	/* The rest in the order read: newest vote first. */
	for (int i = 0; i < nrows; i++) {
		const struct count_row *r = &rows[i];
		if (strcmp(r->type, type) != 0)
			continue;
		if (!current || strcmp(r->version, current) != 0)
			json_array_append_new(versions, version_json(r->version, false, r->up, r->down,
			                                             r->last_at));
	}
	json_t *o = json_pack("{s:I, s:I}", "up", (json_int_t)up, "down", (json_int_t)down);
	json_object_set_new(o, "acceptance_rate", rate(up, down));
	json_object_set_new(o, "versions", versions);
	return o;
}

void
feedback_annotate_types(const feedback *f, json_t *list)
{
	if (!f)
		return;
	size_t i;
	json_t *t;
	json_array_foreach(list, i, t) {
		const char *name = json_string_value(json_object_get(t, "name"));
		if (!name)
			continue;
		const char *version = json_string_value(json_object_get(t, "version"));
		struct tally *totals = f->totals;
		int ntotals = f->ntotals;
		json_object_set_new(t, "feedback", type_counts(f->rows, f->nrows,
		                                               tally_of(&totals, &ntotals, name, false),
		                                               name, version));
	}
}

json_t *
feedback_counts_status(const feedback *f)
{
	if (!f)
		return json_null();
	char as_of[40] = "";
	if (f->loaded)
		util_iso8601(f->as_of_wall, as_of, sizeof as_of);
	return json_pack("{s:s, s:o}", "state", state_status(f->d.state, NULL), "as_of",
	                 f->loaded ? json_string(as_of) : json_null());
}

/* ---- ops -------------------------------------------------------------------- */

static void
op_free(feedback_op *op)
{
	LIST_REMOVE(op, link);
	free(op->reason);
	free(op->generated_at);
	free(op->request_id);
	json_decref(op->latest);
	free(op);
}

static void
op_finish(feedback_op *op, int status, const char *code, const char *message, json_t *doc)
{
	struct feedback_reply r = { status, code, message, doc };
	feedback_reply_cb *cb = op->cb;
	void *arg = op->arg;
	op_free(op);
	cb(arg, &r);
}

void
feedback_op_cancel(feedback_op *op)
{
	if (!op)
		return;
	if (op->q)
		db_query_cancel(op->q);
	if (op->st)
		state_cancel(op->st);
	op_free(op);
}

void
feedback_note_rejected(feedback *f, enum feedback_reject why)
{
	if (f && (unsigned)why < FEEDBACK_NREJECT)
		f->rejected[why]++;
}

/* The answer when the state database cannot take a statement now. */
static void
state_down_reply(feedback *f, struct feedback_reply *r, char *buf, size_t len)
{
	const char *err = "";
	const char *st = state_status(f->d.state, &err);
	if (state_is_up(f->d.state))
		snprintf(buf, len, "rapport's state database (RAPPORT_STATE_URL) is busy: its queue "
		         "is full; try again shortly");
	else
		snprintf(buf, len, "rapport's state database (RAPPORT_STATE_URL) is %s%s%s; feedback "
		         "cannot be stored or read now", st, *err ? ": " : "", err);
	util_utf8_trim(buf);
	r->status = 503;
	r->code = "state_unavailable";
	r->message = buf;
	r->doc = NULL;
}

static feedback_op *
op_new(feedback *f, enum op_kind kind, feedback_reply_cb *cb, void *arg)
{
	feedback_op *op = xcalloc(1, sizeof *op);
	op->f = f;
	op->kind = kind;
	op->cb = cb;
	op->arg = arg;
	LIST_INSERT_HEAD(&f->ops, op, link);
	return op;
}

static json_t *
text_or_null(const PGresult *res, int row, int col)
{
	if (PQgetisnull(res, row, col))
		return json_null();
	json_t *s = json_string(PQgetvalue(res, row, col));
	return s ? s : json_null();
}

static void
bump(feedback *f, const char *type, const char *version, bool up, const char *at)
{
	struct count_row *r = count_row(f, type, version);
	if (r) {
		if (up)
			r->up++;
		else
			r->down++;
		snprintf(r->last_at, sizeof r->last_at, "%s", at);
	}
	struct tally *ts[] = { tally_of(&f->totals, &f->ntotals, type, true),
	                       tally_of(&f->votes, &f->nvotes, type, true) };
	for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) {
		if (up)
			ts[k]->up++;
		else
			ts[k]->down++;
	}
}

static void
on_inserted(void *arg, const PGresult *res, const char *err)
{
	feedback_op *op = arg;
	feedback *f = op->f;
	op->st = NULL;
	if (err || PQntuples(res) != 1) {
		bool down = !state_is_up(f->d.state);
		/* libpq's text (SQL, names of tables) is for the log, not for
		 * API clients. */
		log_event(LOG_WARN, "feedback not stored", LOG_S("type", op->type),
		          LOG_S("error", err ? err : "no row"), LOG_END);
		feedback_note_rejected(f, down ? FEEDBACK_UNAVAILABLE : FEEDBACK_ERROR);
		op_finish(op, down ? 503 : 500, down ? "state_unavailable" : "feedback_store_failed",
		          down ? "rapport's state database (RAPPORT_STATE_URL) is unavailable"
		               : "the feedback could not be stored (the server's log has the cause)",
		          NULL);
		return;
	}
	int64_t id = 0, cid = 0;
	util_parse_i64(PQgetvalue(res, 0, 0), &id);
	util_parse_i64(PQgetvalue(res, 0, 1), &cid);
	json_t *doc = json_pack("{s:I, s:I}", "id", (json_int_t)id, "contact_id", (json_int_t)cid);
	json_object_set_new(doc, "type", text_or_null(res, 0, 2));
	json_object_set_new(doc, "script_version", text_or_null(res, 0, 3));
	json_object_set_new(doc, "verdict", text_or_null(res, 0, 4));
	json_object_set_new(doc, "reason", text_or_null(res, 0, 5));
	json_object_set_new(doc, "generated_at", text_or_null(res, 0, 6));
	json_object_set_new(doc, "created_at", text_or_null(res, 0, 7));
	json_object_set_new(doc, "request_id", text_or_null(res, 0, 8));
	bump(f, op->type, op->version, strcmp(op->verdict, "up") == 0, PQgetvalue(res, 0, 7));
	log_event(LOG_INFO, "feedback", LOG_I("id", id), LOG_I("contact", cid),
	          LOG_S("type", op->type), LOG_S("script_version", op->version),
	          LOG_S("verdict", op->verdict), LOG_I("reason_bytes",
	          op->reason ? (long long)strlen(op->reason) : 0), LOG_END);
	counts_refresh(f);
	op_finish(op, 201, NULL, NULL, doc);
	json_decref(doc);
}

/* Sends the INSERT; false (and *now filled) when the state cannot take it. */
static bool
op_insert(feedback_op *op, struct feedback_reply *now, char *buf, size_t len)
{
	const char *p[] = { op->contact, op->type, op->version, op->verdict, op->reason,
	                    op->generated_at, op->request_id, op->f->instance };
	op->st = state_send(op->f->d.state, sql_insert, 8, p, on_inserted, op);
	if (op->st)
		return true;
	state_down_reply(op->f, now, buf, len);
	feedback_note_rejected(op->f, FEEDBACK_UNAVAILABLE);
	return false;
}

static void
on_contact(void *arg, const PGresult *res, const struct db_error *err)
{
	feedback_op *op = arg;
	op->q = NULL;
	char msg[600];
	if (err) {
		log_event(LOG_WARN, "feedback contact query failed", LOG_S("contact", op->contact),
		          LOG_S("error", err->message), LOG_END);
		feedback_note_rejected(op->f, err->unavailable ? FEEDBACK_UNAVAILABLE : FEEDBACK_ERROR);
		op_finish(op, err->unavailable ? 503 : 500,
		          err->unavailable ? "database_unavailable" : "query_failed",
		          err->unavailable ? "the CRM database is unavailable"
		                           : "the contact query failed (the server's log has the cause)",
		          NULL);
		return;
	}
	if (PQntuples(res) == 0) {
		snprintf(msg, sizeof msg, "contact %s not found", op->contact);
		feedback_note_rejected(op->f, FEEDBACK_UNKNOWN_CONTACT);
		op_finish(op, 404, "contact_not_found", msg, NULL);
		return;
	}
	struct feedback_reply now;
	if (!op_insert(op, &now, msg, sizeof msg))
		op_finish(op, now.status, now.code, now.message, NULL);
}

feedback_op *
feedback_submit(feedback *f, const struct feedback_vote *v, feedback_reply_cb *cb, void *arg,
                struct feedback_reply *now)
{
	static char buf[600];     /* *now's message: read before the next call */
	if (!state_is_up(f->d.state)) {
		state_down_reply(f, now, buf, sizeof buf);
		feedback_note_rejected(f, FEEDBACK_UNAVAILABLE);
		return NULL;
	}
	feedback_op *op = op_new(f, OP_SUBMIT, cb, arg);
	snprintf(op->contact, sizeof op->contact, "%lld", (long long)v->contact_id);
	snprintf(op->type, sizeof op->type, "%s", v->type);
	snprintf(op->verdict, sizeof op->verdict, "%s", v->verdict);
	snprintf(op->version, sizeof op->version, "%s", v->script_version);
	op->reason = v->reason ? xstrdup(v->reason) : NULL;
	op->generated_at = v->generated_at ? xstrdup(v->generated_at) : NULL;
	op->request_id = v->request_id ? xstrdup(v->request_id) : NULL;
	/* The contact must exist, as it must for an analysis: the scripts'
	 * own `contact` query says so (a CRM adapts it in Lua). */
	const char *sql = f->d.db ? script_registry_named_query(f->d.scripts, "contact") : NULL;
	if (sql) {
		const char *p[] = { op->contact };
		op->q = db_query_send(f->d.db, sql, 1, p, on_contact, op);
		return op;
	}
	if (op_insert(op, now, buf, sizeof buf))
		return op;
	op_free(op);
	return NULL;
}

static void
latest_failed(feedback_op *op, const char *err)
{
	/* libpq's text goes to the log (at error: a console shows only those). */
	log_event(LOG_ERROR, "feedback not read", LOG_S("type", op->type), LOG_S("error", err),
	          LOG_END);
	bool down = !state_is_up(op->f->d.state);
	op_finish(op, down ? 503 : 500, down ? "state_unavailable" : "query_failed",
	          down ? "cannot read the feedback: the state database (RAPPORT_STATE_URL) is "
	                 "unavailable"
	               : "cannot read the feedback: the query failed (the log has the cause)", NULL);
}

/* The second statement: the type's counts, read now rather than taken
 * from the copy in memory (a console's copy may not be read yet). */
static void
on_latest_counts(void *arg, const PGresult *res, const char *err)
{
	feedback_op *op = arg;
	feedback *f = op->f;
	op->st = NULL;
	if (err) {
		latest_failed(op, err);
		return;
	}
	int n, nt;
	struct tally *totals;
	struct count_row *rows = count_rows(res, &n, &totals, &nt);
	const char *current = NULL;
	script *s = f->d.scripts ? script_registry_get(f->d.scripts, op->type) : NULL;
	char version8[9] = "";
	if (s) {
		snprintf(version8, sizeof version8, "%.8s", script_info(s)->version);
		current = version8;
	}
	json_t *doc = json_pack("{s:s}", "type", op->type);
	json_t *counts = type_counts(rows, n, tally_of(&totals, &nt, op->type, false), op->type,
	                             current);
	free(rows);
	free(totals);
	json_object_update(doc, counts);     /* up, down, acceptance_rate, versions */
	json_decref(counts);
	json_object_set(doc, "latest", op->latest);
	op_finish(op, 200, NULL, NULL, doc);
	json_decref(doc);
}

static void
on_latest(void *arg, const PGresult *res, const char *err)
{
	feedback_op *op = arg;
	op->st = NULL;
	if (err) {
		latest_failed(op, err);
		return;
	}
	json_t *latest = json_array();
	for (int i = 0; i < PQntuples(res); i++) {
		int64_t cid = 0;
		util_parse_i64(PQgetvalue(res, i, 3), &cid);
		json_t *o = json_object();
		json_object_set_new(o, "verdict", text_or_null(res, i, 0));
		json_object_set_new(o, "script_version", text_or_null(res, i, 1));
		json_object_set_new(o, "reason", text_or_null(res, i, 2));
		json_object_set_new(o, "contact_id", json_integer((json_int_t)cid));
		json_object_set_new(o, "created_at", text_or_null(res, i, 4));
		json_array_append_new(latest, o);
	}
	op->latest = latest;
	const char *p[] = { op->type };
	op->st = state_send(op->f->d.state, sql_type_counts, 1, p, on_latest_counts, op);
	if (!op->st)
		latest_failed(op, "the state database went away");
}

feedback_op *
feedback_latest(feedback *f, const char *type, int n, feedback_reply_cb *cb, void *arg,
                struct feedback_reply *now)
{
	static char buf[600];
	feedback_op *op = op_new(f, OP_LATEST, cb, arg);
	snprintf(op->type, sizeof op->type, "%s", type);
	op->n = n;
	char nbuf[16];
	snprintf(nbuf, sizeof nbuf, "%d", n);
	const char *p[] = { op->type, nbuf };
	op->st = state_send(f->d.state, sql_latest, 2, p, on_latest, op);
	if (op->st)
		return op;
	op_free(op);
	state_down_reply(f, now, buf, sizeof buf);
	return NULL;
}

/* ---- the body ------------------------------------------------------------------ */

static bool
all_digits(const char *p, int n)
{
	for (int i = 0; i < n; i++)
		if (!isdigit((unsigned char)p[i]))
			return false;
	return true;
}

/* An RFC 3339 date-time: 2026-11-25T21:00:00[.fff]Z (or +hh:mm), a real
 * date and time (timegm and back give the same fields). */
static bool
valid_timestamp(const char *s)
{
	size_t len = strlen(s);
	if (len < 20 || len > 40 || !all_digits(s, 4) || s[4] != '-' || !all_digits(s + 5, 2) ||
	    s[7] != '-' || !all_digits(s + 8, 2) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
	    !all_digits(s + 11, 2) || s[13] != ':' || !all_digits(s + 14, 2) || s[16] != ':' ||
	    !all_digits(s + 17, 2))
		return false;
	const char *p = s + 19;
	if (*p == '.') {
		int k = 0;
		for (p++; isdigit((unsigned char)*p); p++)
			k++;
		if (k == 0 || k > 9)
			return false;
	}
	if ((*p == 'Z' || *p == 'z') && p[1] == '\0') {
		/* UTC */
	} else if ((*p == '+' || *p == '-') && strlen(p) == 6 && all_digits(p + 1, 2) &&
	           p[3] == ':' && all_digits(p + 4, 2)) {
		if (atoi(p + 1) > 23 || atoi(p + 4) > 59)
			return false;
	} else {
		return false;
	}
	struct tm tm = { 0 };
	tm.tm_year = atoi(s) - 1900;
	tm.tm_mon = atoi(s + 5) - 1;
	tm.tm_mday = atoi(s + 8);
	tm.tm_hour = atoi(s + 11);
	tm.tm_min = atoi(s + 14);
	tm.tm_sec = atoi(s + 17);
	if (tm.tm_year < 0 || tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_hour > 23 ||
	    tm.tm_min > 59 || tm.tm_sec > 59)
		return false;
	struct tm want = tm;
	time_t t = timegm(&tm);
	struct tm back;
	gmtime_r(&t, &back);
	return back.tm_year == want.tm_year && back.tm_mon == want.tm_mon &&
	       back.tm_mday == want.tm_mday;
}

/* As a result carries it (analysis.c): the first 8 hex digits of the
 * script's version. Whether this server knows it is http_feedback's check. */
static bool
valid_version(const char *v)
{
	if (strlen(v) != 8)
		return false;
	for (; *v; v++)
		if (!isdigit((unsigned char)*v) && !(*v >= 'a' && *v <= 'f'))
			return false;
	return true;
}

int
feedback_parse(const char *body, size_t len, struct feedback_vote *v, json_t **doc,
               const char **code, char *msg, size_t msglen)
{
	*doc = NULL;
	*code = "invalid_feedback";
	json_error_t je;
	json_t *d = len ? json_loadb(body, len, JSON_REJECT_DUPLICATES, &je) : NULL;
	if (!d) {
		*code = "invalid_json";
		if (len)
			snprintf(msg, msglen, "the body is not JSON: %s (line %d)", je.text, je.line);
		else
			snprintf(msg, msglen, "the body is empty: send {\"verdict\": \"up\"|\"down\", "
			         "\"script_version\": …, \"reason\": … (optional)}");
		util_utf8_trim(msg);
		return 400;
	}
	if (!json_is_object(d)) {
		snprintf(msg, msglen, "the body must be a JSON object");
		json_decref(d);
		return 400;
	}
	const char *key;
	json_t *val;
	json_object_foreach(d, key, val) {
		if (strcmp(key, "verdict") && strcmp(key, "reason") && strcmp(key, "script_version") &&
		    strcmp(key, "generated_at")) {
			snprintf(msg, msglen, "unknown field '%.40s' (fields: verdict, reason, "
			         "script_version, generated_at)", key);
			util_utf8_trim(msg);
			json_decref(d);
			return 400;
		}
	}
	memset(v, 0, sizeof *v);
	json_t *verdict = json_object_get(d, "verdict");
	v->verdict = json_string_value(verdict);
	if (!v->verdict || (strcmp(v->verdict, "up") != 0 && strcmp(v->verdict, "down") != 0)) {
		*code = "invalid_verdict";
		snprintf(msg, msglen, "verdict must be \"up\" or \"down\"");
		json_decref(d);
		return 400;
	}
	json_t *version = json_object_get(d, "script_version");
	v->script_version = json_string_value(version);
	if (!v->script_version || !valid_version(v->script_version)) {
		*code = "invalid_script_version";
		snprintf(msg, msglen, "script_version must be the result's script_version (8 "
		         "lowercase hex digits)");
		json_decref(d);
		return 400;
	}
	json_t *reason = json_object_get(d, "reason");
	if (reason && !json_is_null(reason)) {
		if (!json_is_string(reason)) {
			snprintf(msg, msglen, "reason must be a string (or null)");
			json_decref(d);
			return 400;
		}
		if (json_string_length(reason) > FEEDBACK_REASON_MAX) {
			*code = "reason_too_long";
			snprintf(msg, msglen, "reason is %zu bytes; at most %d", json_string_length(reason),
			         FEEDBACK_REASON_MAX);
			json_decref(d);
			return 413;
		}
		/* Only blanks: no reason. */
		const char *r = json_string_value(reason);
		for (const char *p = r; *p; p++)
			if (!isspace((unsigned char)*p)) {
				v->reason = r;
				break;
			}
	}
	json_t *gen = json_object_get(d, "generated_at");
	if (gen && !json_is_null(gen)) {
		v->generated_at = json_string_value(gen);
		if (!v->generated_at || !valid_timestamp(v->generated_at)) {
			snprintf(msg, msglen, "generated_at must be the result's generated_at, an RFC 3339 "
			         "time such as 2026-11-25T21:00:00.000Z");
			json_decref(d);
			return 400;
		}
	}
	*doc = d;
	return 0;
}

/* ---- lifecycle, metrics ----------------------------------------------------- */

feedback *
feedback_create(const struct feedback_deps *d)
{
	if (!d || !d->base || !d->state)
		return NULL;
	feedback *f = xcalloc(1, sizeof *f);
	f->d = *d;
	LIST_INIT(&f->ops);
	char host[96] = "";
	gethostname(host, sizeof host - 1);
	snprintf(f->instance, sizeof f->instance, "%s:%d", host, (int)getpid());
	f->tick = event_new(d->base, -1, EV_PERSIST, on_tick, f);
	struct timeval tv = { TICK_MS / 1000, (TICK_MS % 1000) * 1000 };
	event_add(f->tick, &tv);
	return f;
}

void
feedback_destroy(feedback *f)
{
	if (!f)
		return;
	feedback_op *op;
	while ((op = LIST_FIRST(&f->ops)))
		feedback_op_cancel(op);
	if (f->refresh_st)
		state_cancel(f->refresh_st);
	event_free(f->tick);
	free(f->rows);
	free(f->totals);
	free(f->votes);
	free(f);
}

void
feedback_metrics(const feedback *f, metrics *m)
{
	if (!f)
		return;
	metrics_family(m, "rapport_feedback_total",
	               "Votes on insights this instance stored, by type and verdict.",
	               METRICS_COUNTER);
	for (int i = 0; i < f->nvotes; i++) {
		metrics_int(m, f->votes[i].up, "type", f->votes[i].type, "verdict", "up", NULL);
		metrics_int(m, f->votes[i].down, "type", f->votes[i].type, "verdict", "down", NULL);
	}
	metrics_family(m, "rapport_feedback_rejected_total",
	               "Votes this instance refused or could not store, by reason.", METRICS_COUNTER);
	for (int k = 0; k < FEEDBACK_NREJECT; k++)
		metrics_int(m, f->rejected[k], "reason", reject_names[k], NULL);
}

bool
feedback_state_settled(const feedback *f)
{
	const char *st = state_status(f->d.state, NULL);
	return strcmp(st, "up") == 0 || strcmp(st, "down") == 0;
}
