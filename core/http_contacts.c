/*
 * http_contacts — contact search for the panel. See http_contacts.h.
 *
 * One struct search per request in flight: created when the query is sent,
 * freed in its callback (after the answer) or by abort_all.
 */
#include "http_contacts.h"
#include "http_int.h"
#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

/* PostgreSQL type OIDs (pg_type.h) turned into JSON numbers or booleans. */
#define OID_BOOL 16
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_FLOAT4 700
#define OID_FLOAT8 701

struct search {
	http_contacts *hc;
	struct evhttp_request *req;
	db_query *q;
	char req_id[24];
	char method[8];
	char *path;
	char *text;
	int limit;
	bool head;
	double t_start;
	LIST_ENTRY(search) link;
};

struct http_contacts {
	http_server *srv;
	db_pool *db;
	script_registry *scripts;
	LIST_HEAD(, search) pending;
};

http_contacts *
http_contacts_create(http_server *srv, db_pool *db, script_registry *scripts)
{
	http_contacts *hc = xcalloc(1, sizeof *hc);
	hc->srv = srv;
	hc->db = db;
	hc->scripts = scripts;
	LIST_INIT(&hc->pending);
	return hc;
}

static void
search_free(struct search *sr)
{
	LIST_REMOVE(sr, link);
	free(sr->path);
	free(sr->text);
	free(sr);
}

void
http_contacts_abort_all(http_contacts *hc)
{
	struct search *sr;
	while (hc && (sr = LIST_FIRST(&hc->pending))) {
		db_query_cancel(sr->q);
		struct evhttp_request *req = sr->req;
		http_api_send_error(hc->srv, req, sr->req_id, 503, "shutting_down",
		                    "the server is shutting down", sr->head);
		http_api_log_request(hc->srv, sr->req_id, sr->method, sr->path, 503, sr->t_start);
		search_free(sr);
	}
}

void
http_contacts_destroy(http_contacts *hc)
{
	if (!hc)
		return;
	http_contacts_abort_all(hc);
	free(hc);
}

static json_t *
cell(const PGresult *res, int row, int col)
{
	if (PQgetisnull(res, row, col))
		return json_null();
	const char *v = PQgetvalue(res, row, col);
	int64_t i;
	switch (PQftype(res, col)) {
	case OID_INT2: case OID_INT4: case OID_INT8:
		if (util_parse_i64(v, &i))
			return json_integer((json_int_t)i);
		break;
	case OID_BOOL:
		return json_boolean(v[0] == 't');
	case OID_FLOAT4: case OID_FLOAT8:
		return json_real(strtod(v, NULL));
	}
	json_t *s = json_string(v);
	return s ? s : json_null();    /* not UTF-8: the server encoding is */
}

static void
on_rows(void *arg, const PGresult *res, const struct db_error *err)
{
	struct search *sr = arg;
	http_server *s = sr->hc->srv;
	int status;
	if (err) {
		status = err->unavailable ? 503 : 500;
		char msg[512];
		snprintf(msg, sizeof msg, "%s: %s",
		         err->unavailable ? "the CRM database is unavailable"
		                          : "the contact_search query failed",
		         err->message);
		util_utf8_trim(msg);
		log_event(LOG_WARN, "contact search failed", LOG_S("req_id", sr->req_id),
		          LOG_S("error", err->message), LOG_S("sqlstate", err->sqlstate), LOG_END);
		http_api_send_error(s, sr->req, sr->req_id, status,
		                    err->unavailable ? "database_unavailable" : "query_failed", msg,
		                    sr->head);
	} else {
		json_t *list = json_array();
		int rows = PQntuples(res), cols = PQnfields(res);
		for (int r = 0; r < rows; r++) {
			json_t *o = json_object();
			for (int c = 0; c < cols; c++)
				json_object_set_new(o, PQfname(res, c), cell(res, r, c));
			json_array_append_new(list, o);
		}
		json_t *doc = json_pack("{s:o, s:s, s:i}", "contacts", list, "q", sr->text, "limit",
		                        sr->limit);
		char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		json_decref(doc);
		status = text ? 200 : 500;
		if (text)
			http_api_send_json(s, sr->req, sr->req_id, 200, text, strlen(text), sr->head);
		else
			http_api_send_error(s, sr->req, sr->req_id, 500, "internal_error",
			                    "cannot encode the search result", sr->head);
		free(text);
	}
	http_api_log_request(s, sr->req_id, sr->method, sr->path, status, sr->t_start);
	search_free(sr);
}

bool
http_contacts_search(http_contacts *hc, struct evhttp_request *req, const char *req_id,
                     const char *method, const char *path, struct evkeyvalq *query, bool head,
                     double t_start)
{
	http_server *s = hc->srv;
	const char *text = evhttp_find_header(query, "q");
	const char *lim = evhttp_find_header(query, "limit");
	int64_t limit = HTTP_CONTACTS_DEFAULT_LIMIT;
	if (lim && (!util_parse_i64(lim, &limit) || limit < 1 || limit > HTTP_CONTACTS_MAX_LIMIT)) {
		http_api_send_error(s, req, req_id, 400, "invalid_limit",
		                    "limit must be an integer from 1 to 100", head);
		return false;
	}
	if (!text)
		text = "";
	if (strlen(text) > HTTP_CONTACTS_MAX_Q) {
		http_api_send_error(s, req, req_id, 400, "invalid_query",
		                    "q is longer than 200 bytes", head);
		return false;
	}
	json_t *probe = json_string(text);   /* the text must be UTF-8 to search and echo it */
	if (!probe) {
		http_api_send_error(s, req, req_id, 400, "invalid_query", "q is not UTF-8", head);
		return false;
	}
	json_decref(probe);
	const char *sql = script_registry_named_query(hc->scripts, "contact_search");
	if (!sql) {
		http_api_send_error(s, req, req_id, 501, "not_implemented",
		                    "scripts/lib/queries.lua defines no contact_search query", head);
		return false;
	}
	struct search *sr = xcalloc(1, sizeof *sr);
	sr->hc = hc;
	sr->req = req;
	sr->head = head;
	sr->t_start = t_start;
	sr->limit = (int)limit;
	sr->path = xstrdup(path);
	sr->text = xstrdup(text);
	snprintf(sr->req_id, sizeof sr->req_id, "%s", req_id);
	snprintf(sr->method, sizeof sr->method, "%s", method);
	char nbuf[16];
	snprintf(nbuf, sizeof nbuf, "%d", sr->limit);
	const char *params[2] = { sr->text, nbuf };
	LIST_INSERT_HEAD(&hc->pending, sr, link);
	/* The callback never runs inside db_query_send (db.h). */
	sr->q = db_query_send(hc->db, sql, 2, params, on_rows, sr);
	return true;
}
