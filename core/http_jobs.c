/*
 * http_jobs — the warm-job routes: POST /v1/warm, GET /v1/jobs,
 * GET /v1/jobs/{id}, DELETE /v1/jobs/{id} (auth as every /v1 route: checked
 * by route() before it gets here).
 *
 * Each request becomes a deferred http_call (http_api.c: it notices a
 * client that leaves and the shutdown) and one jobs op (jobs.c) that owns
 * the statements; struct hj ties the two and is freed by whichever ends
 * first: the op's answer (reply sent) or the call going away (op
 * cancelled). Bodies are parsed by jansson in jobs_spec_parse.
 */
#include "http_api.h"
#include "jobs.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

struct hj {
	http_call *call;
	jobs_op *op;
};

static void
on_gone(void *arg)
{
	struct hj *h = arg;
	jobs_op_cancel(h->op);
	free(h);
}

static void
on_reply(void *arg, const struct jobs_reply *r)
{
	struct hj *h = arg;
	h->op = NULL;
	if (r->status == 200 || r->status == 202) {
		char *text = json_dumps(r->doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
		char loc[48];
		snprintf(loc, sizeof loc, "/v1/jobs/%lld", (long long)r->job_id);
		const char *hdr[] = { "Location", loc, NULL };
		http_call_reply(h->call, r->status, text, strlen(text), r->status == 202 ? hdr : NULL);
		free(text);
	} else {
		const char *hdr[] = { "Retry-After", "5", NULL };
		http_call_error(h->call, r->status, r->code, r->message, r->status == 503 ? hdr : NULL);
	}
	free(h);
}

static void
method_not_allowed(http_call *c, struct evhttp_request *req, const char *allow)
{
	char msg[96];
	snprintf(msg, sizeof msg, "method not allowed here; allowed: %s", allow);
	const char *hdr[] = { "Allow", allow, NULL };
	if (evhttp_request_get_command(req) == EVHTTP_REQ_OPTIONS)
		http_call_reply(c, 204, NULL, 0, hdr);
	else
		http_call_error(c, 405, "method_not_allowed", msg, hdr);
}

static int
query_limit(struct evhttp_request *req)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *qs = uri ? evhttp_uri_get_query(uri) : NULL;
	struct evkeyvalq q;
	TAILQ_INIT(&q);
	int limit = 20;
	if (qs && evhttp_parse_query_str(qs, &q) == 0) {
		const char *v = evhttp_find_header(&q, "limit");
		int64_t n;
		if (v)
			limit = util_parse_i64(v, &n) && n >= 1 && n <= JOBS_LIST_MAX ? (int)n : -1;
	}
	evhttp_clear_headers(&q);
	return limit;
}

bool
http_jobs_route(http_server *s, const struct http_deps *d, struct evhttp_request *req,
                const char *req_id, const char *path, int nseg, char **seg)
{
	bool warm = nseg == 2 && strcmp(seg[1], "warm") == 0;
	bool list = nseg == 2 && strcmp(seg[1], "jobs") == 0;
	bool one = nseg == 3 && strcmp(seg[1], "jobs") == 0;
	if (!warm && !list && !one)
		return false;
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	bool get = m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD;
	struct hj *h = xcalloc(1, sizeof *h);
	h->call = http_call_defer(s, req, req_id, path, on_gone, h);
	http_call *c = h->call;
	if (warm && m != EVHTTP_REQ_POST) {
		method_not_allowed(c, req, "POST");
		free(h);
		return true;
	}
	if (list && !get) {
		method_not_allowed(c, req, "GET, HEAD");
		free(h);
		return true;
	}
	if (one && !get && m != EVHTTP_REQ_DELETE) {
		method_not_allowed(c, req, "GET, HEAD, DELETE");
		free(h);
		return true;
	}
	if (!d->jobs) {
		http_call_error(c, 503, "jobs_unavailable", "warm jobs are not running in this process",
		                NULL);
		free(h);
		return true;
	}
	jobs_op *op = NULL;
	if (warm) {
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		size_t len = evbuffer_get_length(in);
		const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
		int nknown;
		const char **known = jobs_loaded_types(d->scripts, &nknown);
		struct jobs_spec spec;
		const char *code;
		char msg[256];
		bool ok = jobs_spec_parse(body, len, known, nknown, &spec, &code, msg, sizeof msg);
		free(known);
		if (!ok) {
			http_call_error(c, 400, code, msg, NULL);
			free(h);
			return true;
		}
		spec.origin = "api";
		op = jobs_start(d->jobs, &spec, on_reply, h);
	} else if (list) {
		int limit = query_limit(req);
		if (limit < 0) {
			char msg[96];
			snprintf(msg, sizeof msg, "limit must be an integer from 1 to %d", JOBS_LIST_MAX);
			http_call_error(c, 400, "invalid_limit", msg, NULL);
			free(h);
			return true;
		}
		op = jobs_list(d->jobs, limit, on_reply, h);
	} else {
		int64_t id;
		if (!util_parse_i64(seg[2], &id) || id <= 0) {
			http_call_error(c, 400, "invalid_job_id", "the job id must be a positive integer",
			                NULL);
			free(h);
			return true;
		}
		op = get ? jobs_get(d->jobs, id, on_reply, h) : jobs_cancel(d->jobs, id, on_reply, h);
	}
	/* A NULL op has been answered already (and h freed). */
	if (op)
		h->op = op;
	return true;
}
