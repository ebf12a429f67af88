/*
 * feedback — users' verdicts on the insights they were shown, so a prompt
 * author can tell whether a script's version B does better than version A.
 *
 * A vote (POST /v1/contacts/{id}/analyses/{type}/feedback, http_feedback.c)
 * is a verdict "up" or "down", an optional reason (at most
 * FEEDBACK_REASON_MAX bytes), the script_version of the result shown and
 * its generated_at. It is stored in rapport.feedback on the state
 * connection (state.h: RAPPORT_STATE_URL, schema rapport, migration 2),
 * never on the scripts' read-only pool; a trigger keeps
 * rapport.feedback_counts (type, script_version, up, down, last_at) in the
 * same transaction.
 *
 * Data flow of a vote:
 *   feedback_parse(body) ─► the script_version one this process loaded
 *   for the type (script_registry_knows_version, in http_feedback.c: else
 *   400, so no caller adds a row to the counts per vote) ─►
 *   feedback_submit: the state must be up (else 503 at once) ─► the
 *   `contact` named query (scripts/lib/queries.lua) on the scripts' pool:
 *   no row → 404 ─► INSERT … RETURNING on the state connection ─► the row
 *   as JSON, 201; this instance's counts and metrics bumped, and a refresh
 *   of the counts asked for.
 *
 * The counts: a copy in memory of rapport.feedback_counts, at most 50
 * versions per type (those with the latest votes) and each type's totals
 * summed in SQL, so one type's versions never push another's out; read
 * again after each vote and every FEEDBACK_REFRESH_MS (other instances'
 * votes), so GET /v1/analysis-types answers from memory and never waits
 * on the state database (when it is down the last copy stands, marked
 * with its age).
 *
 * feedback_latest() reads the latest reasons of a type, for the console's
 * feedback("smart_tips"[, n]) and the admin socket's `feedback`.
 *
 * Owns its ops (each until its callback or cancel), the counts copy and the
 * refresh timer. Callbacks run from the event loop, never inside the call
 * that started them.
 */
#ifndef RAPPORT_FEEDBACK_H
#define RAPPORT_FEEDBACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "db.h"
#include "metrics.h"
#include "script.h"
#include "state.h"

struct event_base;
typedef struct feedback feedback;
typedef struct feedback_op feedback_op;

/* A reason longer than this (bytes of UTF-8) is refused with 413. */
#define FEEDBACK_REASON_MAX 2000
/* The counts are read again at least this often while the state is up. */
#define FEEDBACK_REFRESH_MS 10000
/* feedback_latest()'s n: default and bound. */
#define FEEDBACK_LATEST_DEFAULT 10
#define FEEDBACK_LATEST_MAX 100

struct feedback_deps {
	struct event_base *base;
	state_db *state;             /* where votes go (required) */
	db_pool *db;                 /* the scripts' pool: does the contact exist? (may be NULL) */
	script_registry *scripts;    /* its `contact` query */
};

feedback *feedback_create(const struct feedback_deps *d);
/* Cancels every op without its callback. NULL is a no-op. */
void feedback_destroy(feedback *f);

/* A vote as the body gives it; the strings belong to the parsed document
 * (feedback_parse's *doc), reason and generated_at may be NULL. */
struct feedback_vote {
	int64_t contact_id;
	const char *type;
	const char *verdict;          /* "up" | "down" */
	const char *reason;
	const char *script_version;
	const char *generated_at;
	const char *request_id;
};

/* Checks a POST body: a JSON object with verdict, script_version and
 * optionally reason and generated_at, nothing else. 0 with v filled and
 * *doc to json_decref after; else the HTTP status (400, or 413 for a
 * reason over FEEDBACK_REASON_MAX) with *code and msg. */
int feedback_parse(const char *body, size_t len, struct feedback_vote *v, json_t **doc,
                   const char **code, char *msg, size_t msglen);

/* The outcome of an op: status 201 (submit) or 200 (latest) with doc (a
 * borrowed JSON value, valid during the callback), or an error. */
struct feedback_reply {
	int status;
	const char *code;
	const char *message;
	json_t *doc;
};
typedef void feedback_reply_cb(void *arg, const struct feedback_reply *r);

/* Stores v (all of it is copied). NULL when it is refused at once (the
 * state database not up, its queue full): *now has the 503, and cb will
 * not run. Otherwise cb runs exactly once, later, unless cancelled. */
feedback_op *feedback_submit(feedback *f, const struct feedback_vote *v, feedback_reply_cb *cb,
                             void *arg, struct feedback_reply *now);
/* The latest n votes with a reason for type, newest first, and the type's
 * counts read from the database (not the copy: a console's may not be read
 * yet): {"type", "up", "down", "acceptance_rate", "versions": [...] as in
 * feedback_annotate_types, "latest": [{verdict, script_version, reason,
 * contact_id, created_at}]}. Same contract as feedback_submit. */
feedback_op *feedback_latest(feedback *f, const char *type, int n, feedback_reply_cb *cb,
                             void *arg, struct feedback_reply *now);
/* cb will not run. Safe until it has run. */
void feedback_op_cancel(feedback_op *op);

/* Adds "feedback" to each type object of list (script_registry_describe's
 * array): {"up", "down", "acceptance_rate", "versions": [{"script_version",
 * "current", "up", "down", "acceptance_rate", "last_at"}]}, the serving
 * version first (there even without votes), the rate null without votes.
 * From memory. */
void feedback_annotate_types(const feedback *f, json_t *list);
/* {"state": "up"|…, "as_of": the last read of the counts or null}. */
json_t *feedback_counts_status(const feedback *f);

/* Why a vote was refused, for rapport_feedback_rejected_total. */
enum feedback_reject {
	FEEDBACK_BAD_REQUEST, FEEDBACK_TOO_LARGE, FEEDBACK_UNKNOWN_TYPE, FEEDBACK_UNKNOWN_CONTACT,
	FEEDBACK_UNAVAILABLE, FEEDBACK_ERROR, FEEDBACK_NREJECT
};
void feedback_note_rejected(feedback *f, enum feedback_reject why);

/* rapport_feedback_total{type,verdict}, rapport_feedback_rejected_total
 * {reason}. NULL adds nothing. */
void feedback_metrics(const feedback *f, metrics *m);

/* True when the state database is up, or has failed at least once since
 * the start (the console stops waiting for it then). */
bool feedback_state_settled(const feedback *f);

#endif
