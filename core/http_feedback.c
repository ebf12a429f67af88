/*
 * http_feedback — POST /v1/contacts/{id}/analyses/{type}/feedback (auth as
 * every /v1 route: checked by route() before it gets here; the body's size
 * too, RAPPORT_MAX_BODY).
 *
 * The checks that need nothing but the request come first (the id, the
 * type among the loaded ones, the body: feedback_parse, the script_version
 * one this process has loaded for the type), each answered at once; then
 * the vote becomes a deferred http_call (http_api.c: it notices a client
 * that leaves and the shutdown) and one feedback op (feedback.c) that owns
 * the statements. struct hf ties the two and is freed by
 * whichever ends first: the op's answer (reply sent) or the call going away
 * (op cancelled).
 */
#include "http_api.h"
#include "feedback.h"
#include "util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

struct hf {
	http_call *call;
	feedback_op *op;
};

static void
on_gone(void *arg)
{
	struct hf *h = arg;
	feedback_op_cancel(h->op);
	free(h);
}

static const char *const retry_5s[] = { "Retry-After", "5", NULL };

static void
on_reply(void *arg, const struct feedback_reply *r)
{
	struct hf *h = arg;
	h->op = NULL;
	if (r->status == 201) {
		char *text = json_dumps(r->doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
		http_call_reply(h->call, 201, text, strlen(text), NULL);
		free(text);
	} else {
		http_call_error(h->call, r->status, r->code, r->message,
		                r->status == 503 ? retry_5s : NULL);
	}
	free(h);
}

bool
http_feedback_route(http_server *s, const struct http_deps *d, struct evhttp_request *req,
                    const char *req_id, const char *path, const char *id_str, const char *type)
{
	struct hf *h = xcalloc(1, sizeof *h);
	h->call = http_call_defer(s, req, req_id, path, on_gone, h);
	http_call *c = h->call;
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	if (m != EVHTTP_REQ_POST) {
		const char *hdr[] = { "Allow", "POST", NULL };
		if (m == EVHTTP_REQ_OPTIONS)
			http_call_reply(c, 204, NULL, 0, hdr);
		else
			http_call_error(c, 405, "method_not_allowed", "method not allowed here; allowed: POST",
			                hdr);
		free(h);
		return true;
	}
	if (!d->feedback) {
		http_call_error(c, 503, "feedback_unavailable",
		                "feedback is not running in this process", NULL);
		free(h);
		return true;
	}
	int64_t id;
	if (!util_parse_i64(id_str, &id) || id <= 0) {
		feedback_note_rejected(d->feedback, FEEDBACK_BAD_REQUEST);
		http_call_error(c, 400, "invalid_contact_id", "the contact id must be a positive integer",
		                NULL);
		free(h);
		return true;
	}
	/* Only a type that serves has results to vote on. */
	if (!util_type_name_ok(type) || !script_registry_get(d->scripts, type)) {
		char msg[160];
		snprintf(msg, sizeof msg, "unknown analysis type '%.64s' (see /v1/analysis-types)",
		         util_type_name_ok(type) ? type : "?");
		feedback_note_rejected(d->feedback, FEEDBACK_UNKNOWN_TYPE);
		http_call_error(c, 404, "unknown_analysis_type", msg, NULL);
		free(h);
		return true;
	}
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
	struct feedback_vote v;
	json_t *doc;
	const char *code;
	char msg[300];
	int st = feedback_parse(body, len, &v, &doc, &code, msg, sizeof msg);
	if (st) {
		feedback_note_rejected(d->feedback, st == 413 ? FEEDBACK_TOO_LARGE : FEEDBACK_BAD_REQUEST);
		http_call_error(c, st, code, msg, NULL);
		free(h);
		return true;
	}
	/* Only a version this server produced results with: a made-up one
	 * would add a row to the counts per vote (and to every
	 * /v1/analysis-types answer). */
	if (!script_registry_knows_version(d->scripts, type, v.script_version)) {
		snprintf(msg, sizeof msg, "script_version %.8s is not a version of %s this server has "
		         "loaded (it serves %.8s): send the script_version of the result shown",
		         v.script_version, type, script_info(script_registry_get(d->scripts,
		                                                                  type))->version);
		json_decref(doc);
		feedback_note_rejected(d->feedback, FEEDBACK_BAD_REQUEST);
		http_call_error(c, 400, "invalid_script_version", msg, NULL);
		free(h);
		return true;
	}
	v.contact_id = id;
	v.type = type;
	v.request_id = req_id;
	struct feedback_reply now;
	h->op = feedback_submit(d->feedback, &v, on_reply, h, &now);
	json_decref(doc);          /* the op copied what it keeps */
	if (!h->op) {
		http_call_error(c, now.status, now.code, now.message, now.status == 503 ? retry_5s : NULL);
		free(h);
	}
	return true;
}
